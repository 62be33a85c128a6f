/*
 * GAS scores with a Krum-family base rule, in one cache-blocked pass over the chunks.
 *
 * GAS (Liu, Chen, Lyu, Wu, Wu, Chen, ICML 2023) cuts a random permutation of the d
 * coordinates into chunks P_q of `size` coordinates, applies a base rule to every chunk
 * of sub-vectors, a_q = BASE(X[:, P_q]), and scores each row by
 * score_i = sum_q ||X[i, P_q] - a_q||_2. This file computes those scores over the full
 * chunks for the bases Krum, Multi-Krum (Blanchard et al., NeurIPS 2017) and Bulyan
 * (El Mhamdi, Guerraoui, Rouault, ICML 2018) with Krum selection.
 *
 *   1. Gather X[:, P_q] of every chunk into one [chunks, n, sp] float buffer (sp = size
 *      rounded up to 16, zero padded), one row of X at a time (threads share the rows),
 *      prefetching `PREFETCH_AHEAD` positions ahead. Going through one row at a time keeps
 *      that row's cache lines (2 MB at d = 500 000) in cache while each of them is read
 *      about 16 times, and its pages in the TLB: chunk by chunk, every read would be a
 *      miss to memory, at about twice the cost.
 *
 * Then per chunk, on its [n, sp] tile of the buffer (in cache), threads sharing the chunks:
 *
 *   2. the Gram matrix G of the sub-vectors in float32, as the eager path computes it
 *      (byzbench.ops.distances: float32 products), in 16-lane vectors, each entry's
 *      lanes added in float64; if an entry is not finite (rows beyond about 1e19
 *      overflow float32 products), that chunk's G is recomputed in float64, where every
 *      float32 product and sum is finite (rows up to +-3.4e38 never overflow). Then the
 *      squared distances D_ij = max(G_ii + G_jj - 2 G_ij, 0) in float64, exactly
 *      symmetric (the lower triangle of G is mirrored), zero diagonal (plain distances:
 *      their square roots). While a chunk is computed, the next chunk's tile is
 *      prefetched;
 *   3. Krum selection on D, as byzbench.defenses.krum does it: every row's distances to
 *      the others sorted by a comparator network (+inf on the diagonal), the k smallest
 *      summed in ascending order in float64; one shot (the `count` best scores, ties to
 *      the lowest index) or iterative (argmin, ties to the lowest index, then the
 *      winner's distance deleted from every sorted list, k_t from `ks` per step);
 *   4. the aggregate: the float64 mean of the selected rows (Krum, Multi-Krum), or
 *      Bulyan's phase 2 in float32 (per coordinate, the beta values of the selected rows
 *      closest to their median, ties to the lower value, summed as sum_q (v_q / beta));
 *   5. the float64 l2 distance of every row to the aggregate, one value per chunk and row.
 *
 * The chunks are split into contiguous runs, one per OpenMP thread; every chunk is
 * computed the same way whatever the thread count, and the per-chunk distances are
 * summed in chunk order, so the scores are bitwise independent of the thread count.
 * Inputs are finite (the caller screens non-finite rows); NaN would give meaningless
 * scores but no out-of-range access.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef float v8f __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
typedef float v16f __attribute__((vector_size(64)));
typedef double v4d __attribute__((vector_size(32)));
typedef double v2d __attribute__((vector_size(16)));

/* Side of the float32 Gram tiles: 5 x 5 accumulators (25 of the 32 AVX-512 registers;
 * n = 25 splits evenly), 2 x 2 where 16-lane vectors take two or four registers. */
#ifdef __AVX512F__
#define TILE32 5
#else
#define TILE32 2
#endif

enum { LANES = 8, FLANES = 16, PAD = 16, TILE = 4, ALIGN = 64, PREFETCH_AHEAD = 256 };

/* Layout of the int64 configuration array passed by byzbench.defenses.gas. */
enum {
    CFG_N, CFG_D, CFG_SIZE, CFG_CHUNKS, CFG_THREADS, CFG_SQUARED, CFG_ITERATIVE, CFG_STEPS,
    CFG_DEPTH, CFG_DNET, CFG_WINDOW, CFG_BETA, CFG_LOWER, CFG_WNET, CFG_PREFETCH, CFG_STRIDE, CFG_GRAM32, CFG_TILE_PREFETCH, CFG_LEN
};

typedef struct {
    int64_t n, d, stride, size, sp, np, chunks;
    int squared, iterative, window, lower, prefetch, gram32, tile_prefetch;
    int64_t steps, depth, dnet_len, beta, wnet_len;
    const int64_t *ks;      /* neighbour count of each selection step (one shot: ks[0]) */
    const int32_t *dnet;    /* kept comparators (i, j, min_used, max_used) on n wires */
    const int32_t *wnet;    /* the same on the theta = steps wires of Bulyan's phase 2 */
} plan_t;

typedef struct {
    const float *rows; /* [n, sp] the chunk's gathered sub-vectors (a tile of the buffer) */
    float *sel;      /* [steps, sp] Bulyan: the selected sub-vectors, sorted in place */
    double *gram;    /* [n, n] */
    double *dist;    /* [n, n] */
    double *wires;   /* [n, np] sorted distances of each row (column) to the others */
    double *scores;  /* [np] */
    double *agg;     /* [sp] the aggregate in float64 */
    float *aggf;     /* [sp] Bulyan's float32 aggregate */
    int64_t *chosen; /* [steps] */
    char *taken;     /* [n] rows selected so far */
} work_t;

static void *aligned(size_t bytes) {
    size_t rounded = (bytes + ALIGN - 1) / ALIGN * ALIGN;
    return aligned_alloc(ALIGN, rounded ? rounded : ALIGN);
}

static void work_free(work_t *w) {
    free(w->sel); free(w->gram); free(w->dist); free(w->wires);
    free(w->scores); free(w->agg); free(w->aggf); free(w->chosen); free(w->taken);
}

static int work_alloc(work_t *w, const plan_t *p) {
    int64_t n = p->n;
    memset(w, 0, sizeof *w);
    w->sel = aligned(sizeof(float) * (p->window ? p->steps : 1) * p->sp);
    w->gram = aligned(sizeof(double) * n * n);
    w->dist = aligned(sizeof(double) * n * n);
    w->wires = aligned(sizeof(double) * n * p->np);
    w->scores = aligned(sizeof(double) * p->np);
    w->agg = aligned(sizeof(double) * p->sp);
    w->aggf = aligned(sizeof(float) * p->sp);
    w->chosen = aligned(sizeof(int64_t) * (p->steps ? p->steps : 1));
    w->taken = aligned((size_t)n);
    if (!w->sel || !w->gram || !w->dist || !w->wires || !w->scores || !w->agg
        || !w->aggf || !w->chosen || !w->taken) {
        work_free(w);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ 1. gather */

/* Row i of every chunk: buf[q, i, :size] = x[i, perm[q * size + k]], zero padding. */
static void gather_row(const float *x, const int32_t *perm, const plan_t *p, int64_t i, float *buf) {
    const float *row = x + i * p->stride;
    int64_t s = p->size, total = p->chunks * s;
    for (int64_t q = 0; q < p->chunks; q++) {
        const int32_t *cols = perm + q * s;
        float *dst = buf + (q * p->n + i) * p->sp;
        if (p->prefetch && (q + 1) * s + PREFETCH_AHEAD <= total) {
            for (int64_t k = 0; k < s; k++) {
                __builtin_prefetch(row + cols[k + PREFETCH_AHEAD], 0, 3);
                dst[k] = row[cols[k]];
            }
        } else {
            for (int64_t k = 0; k < s; k++)
                dst[k] = row[cols[k]];
        }
        for (int64_t k = s; k < p->sp; k++)
            dst[k] = 0.0f;
    }
}

/* ------------------------------------------------------------------ 2. distances */

/* Eight floats from src as doubles (one instruction with AVX-512). */
static inline v8d widen(const float *src) {
#ifdef __AVX512F__
    return (v8d)_mm512_cvtps_pd(_mm256_loadu_ps(src));
#else
    v8f v;
    memcpy(&v, src, sizeof v);
    return __builtin_convertvector(v, v8d);
#endif
}

static inline double lane_sum(v8d v) {
    double t = v[0];
    for (int l = 1; l < LANES; l++)
        t += v[l];
    return t;
}

/* The lanes of a float32 accumulator summed in float64, halves first (a fixed order). */
static inline double lane_sum16(v16f v) {
    v8f lo = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
    v8f hi = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    v8d s = __builtin_convertvector(lo, v8d) + __builtin_convertvector(hi, v8d);
    v4d q = __builtin_shufflevector(s, s, 0, 1, 2, 3) + __builtin_shufflevector(s, s, 4, 5, 6, 7);
    v2d h = __builtin_shufflevector(q, q, 0, 1) + __builtin_shufflevector(q, q, 2, 3);
    return h[0] + h[1];
}

static inline v16f load16(const float *src) {
    v16f v;
    memcpy(&v, src, sizeof v);
    return v;
}

/* Row pointers of the tile at rows bi.. and columns bj.. (rows past n repeat row n-1). */
static inline void tile_rows(const float *rows, int64_t n, int64_t sp, int64_t bi, int64_t bj, int tile,
                             const float **a, const float **b) {
    for (int r = 0; r < tile; r++) {
        a[r] = rows + (bi + r < n ? bi + r : n - 1) * sp;
        b[r] = rows + (bj + r < n ? bj + r : n - 1) * sp;
    }
}

/* Store the entries of tile t (row stride `tile`) on and below the diagonal into g and
 * mirror them: G exactly symmetric. Returns whether they are all finite. */
static inline int put_tile(double *g, int64_t n, int64_t bi, int64_t bj, int64_t rcount, int tile, const double *t) {
    int finite = 1;
    for (int r = 0; r < rcount; r++)
        for (int c = 0; c < tile && bj + c <= bi + r; c++) {
            double v = t[r * tile + c];
            finite &= isfinite(v) != 0;
            g[(bi + r) * n + bj + c] = v;
            g[(bj + c) * n + bi + r] = v;
        }
    return finite;
}

/* out[r][c] = <row a[r], row b[c]> over sp coordinates in float64 (products and sums),
 * for r < R (a compile-time constant at every call: the accumulators stay in registers). */
static inline __attribute__((always_inline)) void gram_tile64(const float *const a[TILE], const float *const b[TILE],
                                                              int64_t sp, double out[TILE][TILE], const int R) {
    v8d acc[TILE][TILE];
    memset(acc, 0, sizeof acc);
    for (int64_t k = 0; k < sp; k += LANES) {
        v8d va[TILE], vb[TILE];
        for (int c = 0; c < TILE; c++)
            vb[c] = widen(b[c] + k);
        for (int r = 0; r < R; r++) {
            va[r] = widen(a[r] + k);
            for (int c = 0; c < TILE; c++)
                acc[r][c] += va[r] * vb[c];
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < TILE; c++)
            out[r][c] = lane_sum(acc[r][c]);
}

/* The same with float32 products and sums in 16 lanes (lanes added in float64 at the end). */
static inline __attribute__((always_inline)) void gram_tile32(const float *const a[TILE32], const float *const b[TILE32],
                                                              int64_t sp, double out[TILE32][TILE32], const int R) {
    v16f acc[TILE32][TILE32];
    memset(acc, 0, sizeof acc);
    for (int64_t k = 0; k < sp; k += FLANES) {
        v16f vb[TILE32];
        for (int c = 0; c < TILE32; c++)
            vb[c] = load16(b[c] + k);
        for (int r = 0; r < R; r++) {
            v16f va = load16(a[r] + k);
            for (int c = 0; c < TILE32; c++)
                acc[r][c] += va * vb[c];
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < TILE32; c++)
            out[r][c] = lane_sum16(acc[r][c]);
}

/* The Gram matrix in float64, its lower triangle tile by tile, mirrored. */
static void gram64(const float *rows, int64_t n, int64_t sp, double *g) {
    double t[TILE][TILE];
    const float *a[TILE], *b[TILE];
    for (int64_t bi = 0; bi < n; bi += TILE) {
        int64_t rcount = n - bi < TILE ? n - bi : TILE;
        for (int64_t bj = 0; bj <= bi; bj += TILE) {
            tile_rows(rows, n, sp, bi, bj, TILE, a, b);
            switch (rcount) {
            case 1: gram_tile64(a, b, sp, t, 1); break;
            case 2: gram_tile64(a, b, sp, t, 2); break;
            case 3: gram_tile64(a, b, sp, t, 3); break;
            default: gram_tile64(a, b, sp, t, TILE); break;
            }
            put_tile(g, n, bi, bj, rcount, TILE, &t[0][0]);
        }
    }
}

/* The Gram matrix in float32 (TILE32 x TILE32 tiles); returns whether it is all finite. */
static int gram32(const float *rows, int64_t n, int64_t sp, double *g) {
    double t[TILE32][TILE32];
    const float *a[TILE32], *b[TILE32];
    int finite = 1;
    for (int64_t bi = 0; bi < n; bi += TILE32) {
        int64_t rcount = n - bi < TILE32 ? n - bi : TILE32;
        for (int64_t bj = 0; bj <= bi; bj += TILE32) {
            tile_rows(rows, n, sp, bi, bj, TILE32, a, b);
            switch (rcount) {
#if TILE32 > 2
            case 2: gram_tile32(a, b, sp, t, 2); break;
            case 3: gram_tile32(a, b, sp, t, 3); break;
            case 4: gram_tile32(a, b, sp, t, 4); break;
#endif
            case 1: gram_tile32(a, b, sp, t, 1); break;
            default: gram_tile32(a, b, sp, t, TILE32); break;
            }
            finite &= put_tile(g, n, bi, bj, rcount, TILE32, &t[0][0]);
        }
    }
    return finite;
}

/* D_ij = max(G_ii + G_jj - 2 G_ij, 0) (its square root for plain distances), zero
 * diagonal. G is first computed as the eager path does (byzbench.ops.distances: float32
 * products), and recomputed in float64 when an entry is not finite (rows beyond about
 * 1e19 overflow float32 products; every float32 product is finite in float64). */
static void distances(const work_t *w, const plan_t *p) {
    int64_t n = p->n;
    if (!p->gram32 || !gram32(w->rows, n, p->sp, w->gram))
        gram64(w->rows, n, p->sp, w->gram);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double v = (w->gram[i * n + i] + w->gram[j * n + j]) - 2.0 * w->gram[i * n + j];
            v = v > 0.0 ? v : 0.0;
            w->dist[i * n + j] = i == j ? 0.0 : (p->squared ? v : sqrt(v));
        }
}

/* ------------------------------------------------------------------ 3. Krum selection */

/* Comparators (i, j, min_used, max_used) over rows of `width` values: row i gets the
 * minimum and row j the maximum, each only where used later. */
#define NETWORK(T, rows, width, net, len)                                                   \
    for (int64_t c_ = 0; c_ < (len); c_++) {                                                \
        T *lo_ = (rows) + (int64_t)(net)[4 * c_] * (width);                                  \
        T *hi_ = (rows) + (int64_t)(net)[4 * c_ + 1] * (width);                              \
        int min_used_ = (net)[4 * c_ + 2], max_used_ = (net)[4 * c_ + 3];                    \
        if (min_used_ && max_used_) {                                                        \
            for (int64_t k_ = 0; k_ < (width); k_++) {                                       \
                T u_ = lo_[k_], v_ = hi_[k_];                                                \
                lo_[k_] = v_ < u_ ? v_ : u_;                                                 \
                hi_[k_] = v_ < u_ ? u_ : v_;                                                 \
            }                                                                                \
        } else if (min_used_) {                                                              \
            for (int64_t k_ = 0; k_ < (width); k_++)                                         \
                lo_[k_] = hi_[k_] < lo_[k_] ? hi_[k_] : lo_[k_];                             \
        } else {                                                                             \
            for (int64_t k_ = 0; k_ < (width); k_++)                                         \
                hi_[k_] = hi_[k_] < lo_[k_] ? lo_[k_] : hi_[k_];                             \
        }                                                                                    \
    }

static void sorted_neighbours(const work_t *w, const plan_t *p) {
    int64_t n = p->n, np = p->np;
    for (int64_t j = 0; j < n; j++) {
        double *wire = w->wires + j * np;
        for (int64_t i = 0; i < n; i++)
            wire[i] = i == j ? INFINITY : w->dist[j * n + i];
        for (int64_t i = n; i < np; i++)
            wire[i] = INFINITY;
    }
    NETWORK(double, w->wires, np, p->dnet, p->dnet_len)
}

/* scores[i] = sum of the k smallest distances of row i to the others, ascending. */
static void krum_scores(const work_t *w, const plan_t *p, int64_t k) {
    int64_t np = p->np;
    for (int64_t i = 0; i < np; i++)
        w->scores[i] = k > 0 ? w->wires[i] : 0.0;
    for (int64_t r = 1; r < k; r++)
        for (int64_t i = 0; i < np; i++)
            w->scores[i] += w->wires[r * np + i];
}

/* The first row not yet taken with the smallest score. */
static int64_t best_row(const work_t *w, int64_t n) {
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++)
        if (!w->taken[i] && (best < 0 || w->scores[i] < w->scores[best]))
            best = i;
    return best < 0 ? 0 : best;
}

/* Delete the value v_i = D[i, w] from each sorted column i (rows 0..len-1): new_t is
 * s_t where s_t < v_i, else s_{t+1}; in place, front to back. */
static void drop_value(const work_t *w, const plan_t *p, int64_t len, int64_t winner) {
    int64_t n = p->n, np = p->np;
    const double *v = w->dist + winner * n;
    for (int64_t t = 0; t + 1 < len; t++) {
        double *cur = w->wires + t * np;
        const double *nxt = cur + np;
        for (int64_t i = 0; i < n; i++)
            cur[i] = cur[i] < v[i] ? cur[i] : nxt[i];
    }
}

static void select_rows(const work_t *w, const plan_t *p) {
    sorted_neighbours(w, p);
    memset(w->taken, 0, (size_t)p->n);
    int64_t len = p->depth;
    if (!p->iterative)
        krum_scores(w, p, p->ks[0]);
    for (int64_t t = 0; t < p->steps; t++) {
        if (p->iterative)
            krum_scores(w, p, p->ks[t]);
        int64_t win = best_row(w, p->n);
        w->chosen[t] = win;
        w->taken[win] = 1;
        if (p->iterative && t + 1 < p->steps && len > 1) {
            drop_value(w, p, len, win);
            len--;
        }
    }
}

/* ------------------------------------------------------------------ 4. the aggregate */

static void mean_of_selected(const work_t *w, const plan_t *p) {
    int64_t sp = p->sp, count = 0;
    for (int64_t k = 0; k < sp; k++)
        w->agg[k] = 0.0;
    for (int64_t i = 0; i < p->n; i++) {
        if (!w->taken[i])
            continue;
        const float *row = w->rows + i * sp;
        for (int64_t k = 0; k < sp; k++)
            w->agg[k] += (double)row[k];
        count++;
    }
    for (int64_t k = 0; k < sp; k++)
        w->agg[k] /= (double)count;
}

/* Bulyan's phase 2 on the theta selected rows: the pruned network leaves the needed
 * order statistics s_r in rows r; then, with c = (theta - 1) / 2 and the median m,
 * for q = 1..beta the lower l = s_{c+1-q} or upper u = s_{c+beta+1-q} value, whichever
 * is closer to m (u only if m - l > u - m; a missing one counts as infinitely far),
 * each divided by beta and added in order q = 1..beta. */
static void window_mean(const work_t *w, const plan_t *p) {
    int64_t sp = p->sp, theta = p->steps, beta = p->beta, c = (theta - 1) / 2;
    for (int64_t t = 0; t < theta; t++)
        memcpy(w->sel + t * sp, w->rows + w->chosen[t] * sp, sizeof(float) * sp);
    NETWORK(float, w->sel, sp, p->wnet, p->wnet_len)
    const float *lo_med = w->sel + c * sp;
    const float *hi_med = w->sel + (c + 1 < theta ? c + 1 : c) * sp;
    int midpoint = theta % 2 == 0 && !p->lower;
    float fb = (float)beta;
    float *out = w->aggf;
    for (int64_t q = 1; q <= beta; q++) {
        int64_t li = c + 1 - q, ui = c + beta + 1 - q;
        const float *l = li >= 0 ? w->sel + li * sp : NULL;
        const float *u = ui < theta ? w->sel + ui * sp : NULL;
        for (int64_t k = 0; k < sp; k++) {
            float pick;
            if (!l) {
                pick = u[k];
            } else if (!u) {
                pick = l[k];
            } else {
                float m = midpoint ? lo_med[k] * 0.5f + hi_med[k] * 0.5f : lo_med[k];
                pick = m - l[k] > u[k] - m ? u[k] : l[k];
            }
            pick = pick / fb;
            out[k] = q == 1 ? pick : out[k] + pick;
        }
    }
    for (int64_t k = 0; k < sp; k++)
        w->agg[k] = (double)out[k];
}

/* ------------------------------------------------------------------ 5. distances to it */

static void distances_to_aggregate(const work_t *w, const plan_t *p, double *out) {
    int64_t sp = p->sp;
    for (int64_t i = 0; i < p->n; i++) {
        const float *row = w->rows + i * sp;
        v8d acc = {0};
        for (int64_t k = 0; k < sp; k += LANES) {
            v8d a;
            memcpy(&a, w->agg + k, sizeof a);
            v8d diff = widen(row + k) - a;
            acc += diff * diff;
        }
        out[i] = sqrt(lane_sum(acc));
    }
}

/* Ask for every cache line of the next chunk's tile (while this chunk is computed, it
 * comes from memory into cache: its Gram matrix would otherwise wait on each line). */
static void prefetch_tile(const plan_t *p, const float *next) {
    int64_t len = p->n * p->sp;
    for (int64_t k = 0; k < len; k += ALIGN / (int64_t)sizeof(float))
        __builtin_prefetch(next + k, 0, 3);
}

static void one_chunk(const plan_t *p, work_t *w, const float *tile, double *out, const float *next) {
    w->rows = tile;
    if (p->tile_prefetch && next)
        prefetch_tile(p, next);
    distances(w, p);
    select_rows(w, p);
    if (p->window)
        window_mean(w, p);
    else
        mean_of_selected(w, p);
    distances_to_aggregate(w, p, out);
}

/*
 * Entry point. x: [n, d] float32, row i at x + i * stride; perm: [d] int32 permutation; cfg: CFG_LEN
 * int64 values (see the enum); ks: the neighbour counts (steps values if iterative, else
 * one); dnet: dnet_len kept comparators of the network sorting the `depth` smallest of n
 * wires; wnet: wnet_len comparators of the phase-2 network on theta wires (window only);
 * partial: [chunks, n] float64 per-chunk distances (written); scores: [n] float64, their
 * sums over the chunks in chunk order (written). Returns 0, or -1 if memory ran out,
 * -2 for an invalid configuration.
 */
int byzbench_gas_krum_scores(const float *x, const int32_t *perm, const int64_t *cfg,
                             const int64_t *ks, const int32_t *dnet, const int32_t *wnet,
                             double *partial, double *scores) {
    plan_t p = {
        .n = cfg[CFG_N], .d = cfg[CFG_D], .size = cfg[CFG_SIZE], .chunks = cfg[CFG_CHUNKS],
        .squared = (int)cfg[CFG_SQUARED], .iterative = (int)cfg[CFG_ITERATIVE],
        .steps = cfg[CFG_STEPS], .depth = cfg[CFG_DEPTH], .dnet_len = cfg[CFG_DNET],
        .window = (int)cfg[CFG_WINDOW], .beta = cfg[CFG_BETA], .lower = (int)cfg[CFG_LOWER],
        .wnet_len = cfg[CFG_WNET], .prefetch = (int)cfg[CFG_PREFETCH], .stride = cfg[CFG_STRIDE],
        .gram32 = (int)cfg[CFG_GRAM32], .tile_prefetch = (int)cfg[CFG_TILE_PREFETCH],
        .ks = ks, .dnet = dnet, .wnet = wnet,
    };
    if (p.n < 1 || p.size < 1 || p.stride < p.d || p.chunks < 0 || p.chunks * p.size > p.d || p.steps < 1
        || p.steps > p.n || p.depth < 1 || p.depth > p.n || (p.window && (p.beta < 1 || p.beta > p.steps)))
        return -2;
    p.sp = (p.size + PAD - 1) / PAD * PAD;
    p.np = (p.n + LANES - 1) / LANES * LANES;
    int threads = (int)(cfg[CFG_THREADS] < 1 ? 1 : cfg[CFG_THREADS]);
    if (threads > p.chunks)
        threads = p.chunks > 0 ? (int)p.chunks : 1;
    float *buf = aligned(sizeof(float) * p.chunks * p.n * p.sp);
    if (!buf)
        return -1;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < p.n; i++)
            gather_row(x, perm, &p, i, buf);
        work_t w;
        int ok = work_alloc(&w, &p) == 0;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t q = 0; q < p.chunks; q++)
            if (ok)
                one_chunk(&p, &w, buf + q * p.n * p.sp, partial + q * p.n,
                          q + 1 < p.chunks ? buf + (q + 1) * p.n * p.sp : NULL);
        if (ok)
            work_free(&w);
    }
    free(buf);
    if (failed)
        return -1;
    for (int64_t i = 0; i < p.n; i++)
        scores[i] = 0.0;
    for (int64_t q = 0; q < p.chunks; q++)
        for (int64_t i = 0; i < p.n; i++)
            scores[i] += partial[q * p.n + i];
    return 0;
}
