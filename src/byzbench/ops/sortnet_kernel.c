/*
 * Interpreter of byzbench.ops.sortnet programs: the "native" backend.
 *
 * A program is a straight-line list of element-wise steps (op, a, b, o) over slots:
 * [0, n) the input rows, then `scratch` work rows, then `outputs` result rows, then the
 * program's scalar constants (second operand of SCALE and DIVIDE). The input x[n, d] is
 * cut into blocks of `block` columns; for each block every step runs as one tight loop
 * over the block's columns, so that all rows of the block stay in the L1/L2 cache while
 * the few hundred steps of a network (Batcher, ACM SJCC 1968; Parberry, Parallel
 * Process. Lett. 1992) run over them. Input slots point into x, output slots into the
 * result, scratch slots into one buffer per thread. Blocks are shared among OpenMP
 * threads (static schedule); every column is computed the same way whatever the block
 * size or thread count.
 *
 * Each step gives the bits NumPy's ufunc gives on the same operands (the eager backend):
 *   MIN, MAX      np.minimum / np.maximum: a if a is NaN, else a if a < b (a > b), else b
 *                 (NaN if either is NaN; of +0 and -0, the second operand);
 *   FMIN, FMAX    np.fmin / np.fmax as NumPy's vector loop computes them: a if b is NaN,
 *                 else a if a < b (a > b), else b (NaN only if both are). NumPy's scalar
 *                 remainder loop returns the first operand instead on a tie of +0 and -0
 *                 and the second of two NaNs, so those two cases may differ in the sign
 *                 of the zero or the NaN's payload (never in value);
 *   ADD, SUB      a + b, a - b;  SCALE, DIVIDE  a * c, a / c with the constant c rounded
 *                 to the rows' type (NumPy 2 casts a Python float so);
 *   GREATER       1 if a > b else 0 (0 when either is NaN);  COPY  a.
 * Plain IEEE arithmetic in the rows' type: built with -ffp-contract=off and without
 * -ffast-math, so no product and sum fuse and nothing is reassociated.
 *
 * Return codes: 0 success, -1 out of memory, -2 invalid program or arguments (checked
 * before any work: every slot in range, outputs never into an input).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { OP_MIN, OP_MAX, OP_ADD, OP_COPY, OP_SUB, OP_SCALE, OP_DIVIDE, OP_GREATER, OP_FMIN, OP_FMAX, OP_COUNT };

/* Layout of the int64 configuration array passed by byzbench.ops.sortnet. */
enum { CFG_DTYPE, CFG_N, CFG_SCRATCH, CFG_OUTPUTS, CFG_STEPS, CFG_CONSTANTS, CFG_D, CFG_X_STRIDE,
       CFG_OUT_STRIDE, CFG_BLOCK, CFG_THREADS, CFG_LEN };

enum { DTYPE_FLOAT32, DTYPE_FLOAT64 };
/* ALIGN: bytes of alignment of the scratch rows; GROUP: columns of one unrolled group. */
enum { ALIGN = 64, GROUP = 64 };

static void *aligned(size_t bytes) {
    size_t size = (bytes + ALIGN - 1) / ALIGN * ALIGN;
    return aligned_alloc(ALIGN, size ? size : ALIGN);
}

/* The element rules, with u = a[i] and v = b[i] (c: the step's constant). */
#define RULE_MIN (u < v || u != u) ? u : v
#define RULE_MAX (u > v || u != u) ? u : v
#define RULE_FMIN (u < v || v != v) ? u : v
#define RULE_FMAX (u > v || v != v) ? u : v

/* o[i] = RULE for i in [0, len): whole groups of GROUP columns (a fixed trip count,
 * compiled into whole vectors without peeling), then the remainder one by one. The
 * output row is an operand row or disjoint from both, so vectorising is safe. */
#define LOOP(T, RULE)                                                                            \
    do {                                                                                         \
        int64_t full = len - len % GROUP;                                                        \
        for (int64_t j = 0; j < full; j += GROUP) {                                              \
            _Pragma("omp simd") for (int64_t i = j; i < j + GROUP; i++) {                        \
                T u = a[i], v = b[i];                                                            \
                (void)v;                                                                         \
                o[i] = RULE;                                                                     \
            }                                                                                    \
        }                                                                                        \
        for (int64_t i = full; i < len; i++) {                                                   \
            T u = a[i], v = b[i];                                                                \
            (void)v;                                                                             \
            o[i] = RULE;                                                                         \
        }                                                                                        \
    } while (0)

/* One step over len columns, for a rows' type T. */
#define DEFINE_STEP(T, SUFFIX)                                                                   \
    static void step_##SUFFIX(int op, T *o, const T *a, const T *b, T c, int64_t len) {         \
        switch (op) {                                                                            \
        case OP_MIN: LOOP(T, RULE_MIN); break;                                                   \
        case OP_MAX: LOOP(T, RULE_MAX); break;                                                   \
        case OP_ADD: LOOP(T, u + v); break;                                                      \
        case OP_COPY:                                                                            \
            if (o != a)                                                                          \
                memcpy(o, a, sizeof(T) * (size_t)len);                                           \
            break;                                                                               \
        case OP_SUB: LOOP(T, u - v); break;                                                      \
        case OP_SCALE: LOOP(T, u * c); break;                                                    \
        case OP_DIVIDE: LOOP(T, u / c); break;                                                   \
        case OP_GREATER: LOOP(T, u > v ? (T)1 : (T)0); break;                                    \
        case OP_FMIN: LOOP(T, RULE_FMIN); break;                                                 \
        case OP_FMAX: LOOP(T, RULE_FMAX); break;                                                 \
        }                                                                                        \
    }

DEFINE_STEP(float, f32)
DEFINE_STEP(double, f64)

/* The program on every block of columns, rows of type T, threads sharing the blocks;
 * each thread has its own scratch rows and slot pointers. Returns 0, or -1 if a
 * thread's memory could not be allocated. */
#define DEFINE_RUN(T, SUFFIX)                                                                    \
    static int run_##SUFFIX(const int64_t *cfg, const int32_t *steps, const double *constants,   \
                            const T *x, T *out, int threads) {                                   \
        int64_t n = cfg[CFG_N], scratch = cfg[CFG_SCRATCH], outputs = cfg[CFG_OUTPUTS];          \
        int64_t rows = n + scratch + outputs, block = cfg[CFG_BLOCK], d = cfg[CFG_D];            \
        int64_t blocks = (d + block - 1) / block;                                                \
        int failed = 0;                                                                          \
        _Pragma("omp parallel num_threads(threads)") {                                          \
            T *work = aligned(sizeof(T) * (size_t)(scratch * block));                            \
            T **slot = malloc(sizeof(T *) * (size_t)rows);                                       \
            int ok = work != NULL && slot != NULL;                                               \
            if (!ok) {                                                                           \
                _Pragma("omp atomic write") failed = 1;                                          \
            }                                                                                    \
            _Pragma("omp for schedule(static)") for (int64_t q = 0; q < blocks; q++) {           \
                if (!ok)                                                                         \
                    continue;                                                                    \
                int64_t s = q * block, len = d - s < block ? d - s : block;                      \
                for (int64_t r = 0; r < n; r++)                                                  \
                    slot[r] = (T *)(x + r * cfg[CFG_X_STRIDE] + s);                              \
                for (int64_t r = 0; r < scratch; r++)                                            \
                    slot[n + r] = work + r * block;                                              \
                for (int64_t r = 0; r < outputs; r++)                                            \
                    slot[n + scratch + r] = out + r * cfg[CFG_OUT_STRIDE] + s;                   \
                for (int64_t k = 0; k < cfg[CFG_STEPS]; k++) {                                   \
                    const int32_t *st = steps + 4 * k;                                           \
                    int constant = st[0] == OP_SCALE || st[0] == OP_DIVIDE;                      \
                    T c = constant ? (T)constants[st[2] - rows] : (T)0;                          \
                    step_##SUFFIX(st[0], slot[st[3]], slot[st[1]], slot[constant ? st[1] : st[2]], c, len); \
                }                                                                                \
            }                                                                                    \
            free(work);                                                                          \
            free(slot);                                                                          \
        }                                                                                        \
        return failed ? -1 : 0;                                                                  \
    }

DEFINE_RUN(float, f32)
DEFINE_RUN(double, f64)

/* Whether every step names valid slots: operands in [0, rows) (a constant in
 * [rows, rows + constants) for SCALE/DIVIDE), outputs in [n, rows), a known op. */
static int valid(const int64_t *cfg, const int32_t *steps) {
    int64_t n = cfg[CFG_N], rows = n + cfg[CFG_SCRATCH] + cfg[CFG_OUTPUTS];
    for (int64_t k = 0; k < cfg[CFG_STEPS]; k++) {
        const int32_t *st = steps + 4 * k;
        int op = st[0];
        int constant = op == OP_SCALE || op == OP_DIVIDE;
        if (op < 0 || op >= OP_COUNT || st[1] < 0 || st[1] >= rows || st[3] < n || st[3] >= rows)
            return 0;
        if (constant ? (st[2] < rows || st[2] >= rows + cfg[CFG_CONSTANTS]) : (st[2] < 0 || st[2] >= rows))
            return 0;
    }
    return 1;
}

/* Run the program on x[n, d] (row stride cfg[CFG_X_STRIDE] elements, unit column
 * stride) into out[outputs, d] (row stride cfg[CFG_OUT_STRIDE]). `steps` holds the
 * [steps, 4] int32 steps, `constants` the program's constants as doubles. */
int byzbench_sortnet_run(const void *x, void *out, const int64_t *cfg, const int32_t *steps,
                         const double *constants) {
    int64_t n = cfg[CFG_N], d = cfg[CFG_D], block = cfg[CFG_BLOCK];
    int64_t rows = n + cfg[CFG_SCRATCH] + cfg[CFG_OUTPUTS];
    if ((cfg[CFG_DTYPE] != DTYPE_FLOAT32 && cfg[CFG_DTYPE] != DTYPE_FLOAT64) || n < 1 || cfg[CFG_SCRATCH] < 0
        || cfg[CFG_OUTPUTS] < 1 || cfg[CFG_STEPS] < 0 || cfg[CFG_CONSTANTS] < 0 || d < 0 || block < 1
        || cfg[CFG_X_STRIDE] < d || cfg[CFG_OUT_STRIDE] < d || rows + cfg[CFG_CONSTANTS] > INT32_MAX
        || !valid(cfg, steps))
        return -2;
    int64_t blocks = (d + block - 1) / block;
    int threads = (int)(cfg[CFG_THREADS] < 1 ? 1 : cfg[CFG_THREADS]);
    if (threads > blocks)
        threads = blocks > 0 ? (int)blocks : 1;
    if (cfg[CFG_DTYPE] == DTYPE_FLOAT32)
        return run_f32(cfg, steps, constants, (const float *)x, (float *)out, threads);
    return run_f64(cfg, steps, constants, (const double *)x, (double *)out, threads);
}
