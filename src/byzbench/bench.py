"""Time every registered defense against the floor of one read of its input.

For n client rows of d coordinates (f of them Byzantine), each aggregator and each
pre-aggregator of the registries is built with its default parameters and timed on one
fixed, seeded input: the h = n − f honest rows are standard normal, the f Byzantine rows
are standard normal shifted by +5. A rule gets a warm-up call, then up to ``reps`` timed
calls, stopping early (after at least three) once its time budget is spent; its time is
the median. The **floor** is the median time of ``x.sum()``, one read of the n×d input,
sampled at the start and again before every rule so that load from other processes
shifts it as it shifts the rules; each rule is reported as a multiple of it.

Targets, as multiples of the floor (`TARGETS`): mean, CM, TM, RBTM, signSGD, MeaMed,
bucketing, clipping, ARC and FLTrust ≤ 10×; Krum, Multi-Krum, CC, RFA, NNM, Bulyan,
Aksel, GAS, CAF, MoNNA, LS and CMLS ≤ 30×; DnC ≤ 50×; MDA ≤ 200×; SMEA ≤ 1500×;
MixTailor is reported without one. Targets are looked up through a rule's canonical name
and aliases; a rule outside the table is reported without a target, and a rule that
raises is reported as an error row. Pre-aggregators are timed as that step alone. Rules
that need a server gradient (FLTrust) get a fixed one through
``AggregationContext.server_gradient``; randomised rules get a generator seeded 0.

Options: ``sortnet`` picks the sorting-network backend of `byzbench.ops.sortnet` for the
run (its compilation, or the native kernels' build, falls in the untimed warm-up);
``clock="cpu"`` times the process's CPU time instead of wall time, steadier with one
thread on a shared machine.

``bench_sizes`` times the rules over several d and reports nanoseconds per coordinate,
which shows where a rule's working set stops fitting in the caches (`cache_sizes`).
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from byzbench.errors import ConfigError
from byzbench.ops.sortnet import check_backend, use_backend

#: Literature name → target multiple of the floor (None: reported without a target).
TARGETS: dict[str, float | None] = {
    **dict.fromkeys(("mean", "median", "cm", "trmean", "tm", "rbtm", "signsgd", "meamed",
                     "bucketing", "clipping", "arc", "fltrust"), 10.0),
    **dict.fromkeys(("krum", "multikrum", "cc", "rfa", "gm", "nnm", "bulyan", "aksel", "gas",
                     "caf", "monna", "ls", "cmls"), 30.0),
    "dnc": 50.0,
    "mda": 200.0,
    "smea": 1500.0,
    "mixtailor": None,
}
#: How a call is timed: wall time, or the CPU time of the whole process (for runs with
#: ``--threads 1`` on a machine other processes share: time spent descheduled is not
#: counted; with several threads it sums their CPU time, spin-waits included).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "float16": torch.float16, "bfloat16": torch.bfloat16}
KINDS = ("aggregator", "pre-aggregator")
MIN_REPS = 3
BYZANTINE_SHIFT = 5.0


@dataclass(frozen=True)
class RuleSpec:
    """One rule to time: its registry kind, canonical name and constructor parameters."""

    kind: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in sorted(self.params.items()))})"

    @property
    def target(self) -> float | None:
        return target_of(self.name, self.aliases)


@dataclass
class Row:
    """The timing of one rule; ``seconds`` is the median per call (None on error)."""

    rule: str
    kind: str
    target: float | None
    seconds: float | None
    ratio: float | None
    reps: int
    error: str | None = None
    #: Wall time of the untimed warm-up call (includes any compilation).
    first_s: float | None = None

    @property
    def group(self) -> str:
        return group_label(self.target)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        if self.target is None or self.ratio is None:
            return "-"
        return "pass" if self.ratio <= self.target else "FAIL"


@dataclass
class BenchResult:
    """A `bench_defenses` run: the setting, the floor and one row per rule."""

    n: int
    d: int
    f: int
    dtype: str
    device: str
    threads: int
    floor_s: float
    rows: list[Row]
    machine: dict[str, Any]
    sortnet: str = "eager"
    clock: str = "wall"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = [{**asdict(r), "group": r.group, "status": r.status} for r in self.rows]
        return out


@dataclass
class SizesResult:
    """A `bench_sizes` run: per size, the floor and each rule's seconds per call."""

    n: int
    f: int
    sizes: list[int]
    dtype: str
    device: str
    threads: int
    results: list[BenchResult]
    machine: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "f": self.f, "sizes": self.sizes, "dtype": self.dtype,
                "device": self.device, "threads": self.threads, "machine": self.machine,
                "results": [r.to_dict() for r in self.results]}


# ---------------------------------------------------------------------------- targets


def target_of(name: str, aliases: Sequence[str] = ()) -> float | None:
    """The target of a rule known by ``name`` or one of its ``aliases`` (None if none)."""
    for key in (name, *aliases):
        if key.lower() in TARGETS:
            return TARGETS[key.lower()]
    return None


def group_label(target: float | None) -> str:
    return "no target" if target is None else f"<= {target:g}x"


def _sort_key(row: Row) -> tuple:
    return (math.inf if row.target is None else row.target, KINDS.index(row.kind), row.rule)


# ---------------------------------------------------------------------------- machine


def cache_sizes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> list[dict[str, str]]:
    """The CPU's caches as ``[{"level": "L2", "type": "Unified", "size": "1024K"}, ...]``."""
    out = []
    for index in sorted(Path(root).glob("index*")):
        try:
            level, kind, size = ((index / k).read_text().strip() for k in ("level", "type", "size"))
        except OSError:
            continue
        out.append({"level": f"L{level}", "type": kind, "size": size})
    return out


def format_caches(caches: list[dict[str, str]]) -> str:
    short = {"Data": "d", "Instruction": "i", "Unified": ""}
    parts = [f"{c['level']}{short.get(c['type'], c['type'])} {c['size']}" for c in caches]
    return ", ".join(parts) or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor(),
                            "torch": torch.__version__, "caches": cache_sizes()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------- rules


def registered_rules() -> list[RuleSpec]:
    """Every public aggregator and pre-aggregator, with default parameters."""
    from byzbench.defenses import AGGREGATORS, PREAGGREGATORS

    return [RuleSpec(kind, e.name, {}, e.aliases)
            for kind, reg in zip(KINDS, (AGGREGATORS, PREAGGREGATORS)) for e in reg.entries()]


def resolve_rules(names: Sequence[str] | None) -> list[RuleSpec]:
    """The rules named (canonical names, aliases or specs such as ``median(mode=lower)``).

    None means every registered rule. An unknown name raises `ConfigError` naming it.
    """
    if names is None:
        return registered_rules()
    from byzbench.defenses import AGGREGATORS, PREAGGREGATORS
    from byzbench.spec import parse_component

    out: list[RuleSpec] = []
    for text in names:
        spec = parse_component(text, "--rules")
        found = [RuleSpec(kind, reg.entry(spec.name).name, dict(spec.params), reg.entry(spec.name).aliases)
                 for kind, reg in zip(KINDS, (AGGREGATORS, PREAGGREGATORS))
                 if _known(reg, spec.name)]
        if not found:
            valid = ", ".join(AGGREGATORS.names() + PREAGGREGATORS.names())
            raise ConfigError(f"unknown rule {spec.name!r}; valid names: {valid}", "--rules")
        for rule in found:
            if rule.params:  # a bad value the user wrote is a user error, not an error row
                _registry(rule.kind).create(rule.name, "--rules", **rule.params)
        out.extend(found)
    return out


def split_names(text: str) -> list[str]:
    """``"a,b(k=1, j=2),c"`` → ``["a", "b(k=1, j=2)", "c"]`` (commas inside brackets kept)."""
    from byzbench.spec import _split_top

    return [p for p in _split_top(text, ",") if p]


def _known(registry, name: str) -> bool:
    try:
        registry.canonical(name)
    except ConfigError:
        return False
    return True


def _registry(kind: str):
    from byzbench.defenses import AGGREGATORS, PREAGGREGATORS

    return AGGREGATORS if kind == "aggregator" else PREAGGREGATORS


# ---------------------------------------------------------------------------- inputs


def make_input(n: int, d: int, f: int, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", seed: int = 0) -> torch.Tensor:
    """``[n, d]``: n − f standard-normal honest rows, then f rows shifted by +5 (seeded)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[n - f:] += BYZANTINE_SHIFT
    return x.to(device=device, dtype=dtype)


def server_gradient_of(x: torch.Tensor, f: int, seed: int = 1) -> torch.Tensor:
    """A fixed server gradient: the honest mean plus small seeded noise."""
    g = torch.Generator().manual_seed(seed)
    noise = 0.1 * torch.randn(x.shape[1], generator=g).to(device=x.device, dtype=x.dtype)
    return x[: x.shape[0] - f].mean(dim=0) + noise


# ---------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(call: Callable[[], Any], reps: int, budget_s: float,
               sync: Callable[[], None] = lambda: None, clock: str = "wall") -> list[float]:
    """Times of one warm-up call, then of up to ``reps`` timed calls (stopping after at
    least 3 once ``budget_s`` of wall time is spent); the warm-up time comes first.

    ``clock="cpu"`` measures the process's CPU time instead of wall time (see `CLOCKS`).
    """
    now = CLOCKS[clock]
    sync()
    t0 = now()
    call()
    sync()
    first = now() - t0
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps:
        t0 = now()
        call()
        sync()
        times.append(now() - t0)
        if len(times) >= MIN_REPS and time.perf_counter() - start > budget_s:
            break
    return [first, *times]


def _rule_call(rule: RuleSpec, x: torch.Tensor, f: int, server_grad: torch.Tensor) -> Callable[[], Any]:
    """A no-argument function calling the built rule once on ``x`` with a fresh context."""
    from byzbench.defenses import AggregationContext

    obj = _registry(rule.kind).create(rule.name, "--rules", **rule.params)
    obj.reset()
    device = x.device

    def call() -> Any:
        ctx = AggregationContext(generator=torch.Generator(device=device).manual_seed(0),
                                 server_gradient=lambda: server_grad)
        return obj(x, f, ctx)

    return call


def time_rule(rule: RuleSpec, x: torch.Tensor, f: int, reps: int, budget_s: float,
              server_grad: torch.Tensor, clock: str = "wall") -> Row:
    """Time one rule (ratio left unset); any exception it raises becomes an error row."""
    try:
        call = _rule_call(rule, x, f, server_grad)
        times = time_calls(call, reps, budget_s, _sync(x.device), clock)
    except Exception as exc:  # noqa: BLE001 - a failing rule is reported, not fatal
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        return Row(rule.label, rule.kind, rule.target, None, None, 0, message)
    first, times = times[0], times[1:]
    return Row(rule.label, rule.kind, rule.target, statistics.median(times), None, len(times), None, first)


def _floor_samples(x: torch.Tensor, k: int, clock: str = "wall") -> list[float]:
    sync, now = _sync(x.device), CLOCKS[clock]
    out = []
    for _ in range(k):
        sync()
        t0 = now()
        x.sum()
        sync()
        out.append(now() - t0)
    return out


# ---------------------------------------------------------------------------- runs


def check_setting(n: int, d: int, f: int, reps: int, device: str, dtype: str,
                  clock: str = "wall") -> torch.device:
    """Validate the command's arguments (`ConfigError` naming the option) and the device."""
    if clock not in CLOCKS:
        raise ConfigError(f"must be one of {', '.join(CLOCKS)}, got {clock!r}", "--clock")
    for key, value, low in (("--n", n, 1), ("--d", d, 1), ("--reps", reps, MIN_REPS)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"must be an integer ≥ {low}, got {value!r}", key)
    if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < n:
        raise ConfigError(f"must be an integer with 0 ≤ f < n = {n}, got {f!r}", "--f")
    if dtype not in DTYPES:
        raise ConfigError(f"must be one of {', '.join(DTYPES)}, got {dtype!r}", "--dtype")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {device!r}", "--device") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine", "--device")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"must be cpu or cuda, got {device!r}", "--device")
    return dev


class _Threads:
    """Context manager setting torch's intra-op thread count, restored on exit."""

    def __init__(self, threads: int | None) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"must be an integer ≥ 1, got {threads!r}", "--threads")
        self.threads = threads
        self.saved = torch.get_num_threads()

    def __enter__(self) -> int:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        return torch.get_num_threads()

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.saved)


def bench_defenses(n: int = 25, d: int = 500_000, f: int = 5, reps: int = 20,
                   rules: Sequence[str] | None = None, threads: int | None = None,
                   device: str = "cpu", dtype: str = "float32", budget_s: float = 2.0,
                   seed: int = 0, progress: Callable[[str], None] | None = None,
                   sortnet: str | None = None, clock: str = "wall") -> BenchResult:
    """Time every rule (or those of ``rules``) on one ``[n, d]`` input; see the module doc.

    ``sortnet`` runs the coordinate-wise sorting networks on that backend of
    `byzbench.ops.sortnet` (default: the process default); compilation happens in the
    untimed warm-up call. ``clock`` is ``"wall"`` or ``"cpu"`` (`CLOCKS`).
    """
    dev = check_setting(n, d, f, reps, device, dtype, clock)
    specs = resolve_rules(rules)
    backend = _sortnet_backend(sortnet)
    with _Threads(threads) as used, use_backend(backend):
        x = make_input(n, d, f, DTYPES[dtype], dev, seed)
        floor_times, rows = _floor_samples(x, max(reps, 11), clock), []
        sg = server_gradient_of(x, f)
        for spec in specs:
            if progress:
                progress(spec.label)
            floor_times += _floor_samples(x, 3, clock)
            rows.append(time_rule(spec, x, f, reps, budget_s, sg, clock))
        floor = max(statistics.median(floor_times), 1e-9)  # a coarse clock may read 0
    for row in rows:  # ratios against the floor of the whole run
        row.ratio = None if row.seconds is None else row.seconds / floor
    rows.sort(key=_sort_key)
    return BenchResult(n, d, f, dtype, str(dev), used, floor, rows, machine_info(dev), backend, clock)


def _sortnet_backend(sortnet: str | None) -> str:
    try:
        return check_backend(sortnet, "--sortnet")
    except ValueError as exc:
        if sortnet is None:  # an invalid $BYZBENCH_SORTNET_BACKEND
            raise ConfigError(str(exc)) from exc
        raise ConfigError(str(exc).removeprefix("--sortnet "), "--sortnet") from exc


def bench_sizes(sizes: Sequence[int], n: int = 25, f: int = 5, reps: int = 20,
                rules: Sequence[str] | None = None, threads: int | None = None,
                device: str = "cpu", dtype: str = "float32", budget_s: float = 1.0,
                seed: int = 0, progress: Callable[[str], None] | None = None,
                sortnet: str | None = None, clock: str = "wall") -> SizesResult:
    """`bench_defenses` at each d of ``sizes`` (time per coordinate shows cache effects)."""
    if not sizes or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in sizes):
        raise ConfigError(f"needs one or more integers ≥ 1, got {list(sizes)!r}", "--sizes")
    dev = check_setting(n, min(sizes), f, reps, device, dtype, clock)
    results = []
    for d in sizes:
        results.append(bench_defenses(n, d, f, reps, rules, threads, device, dtype, budget_s, seed,
                                      (lambda s, d=d: progress(f"d={d} {s}")) if progress else None,
                                      sortnet, clock))
    return SizesResult(n, f, list(sizes), dtype, str(dev), results[0].threads, results, machine_info(dev))


# ---------------------------------------------------------------------------- formatting


def _table(header: list[str], body: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i in right else c.ljust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in body)]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def format_result(res: BenchResult) -> str:
    """The aligned table of a `bench_defenses` run, grouped by target, with a floor row."""
    lines = [
        f"byzbench bench defenses: n = {res.n}, d = {res.d}, f = {res.f}, {res.dtype} on {res.device}, "
        f"{res.threads} thread(s), sorting networks: {res.sortnet}, {res.clock} clock, "
        f"torch {res.machine.get('torch')}",
        f"caches: {format_caches(res.machine.get('caches', []))}",
        "",
    ]
    header = ["group", "rule", "kind", "ms/call", "x floor", "target", "result", "reps"]
    body = [["floor", "x.sum()", "read n x d", _ms(res.floor_s), "1.0", "", "", ""]]
    for r in res.rows:
        target = "none" if r.target is None else f"<= {r.target:g}x"
        ratio = "-" if r.ratio is None else f"{r.ratio:.1f}"
        body.append([r.group, r.rule, r.kind, _ms(r.seconds), ratio, target, r.status, str(r.reps)])
    lines += _table(header, body, {3, 4, 7})
    errors = [r for r in res.rows if r.error]
    if errors:
        lines += ["", "errors:"] + [f"  {r.rule}: {r.error}" for r in errors]
    passed = sum(r.status == "pass" for r in res.rows)
    judged = sum(r.status in ("pass", "FAIL") for r in res.rows)
    lines += ["", f"{passed}/{judged} rules within target"]
    return "\n".join(lines)


def format_sizes(res: SizesResult) -> str:
    """Nanoseconds per coordinate of every rule at every size, with the floor's."""
    first = res.results[0]
    lines = [
        f"byzbench bench defenses --sizes: n = {res.n}, f = {res.f}, {res.dtype} on {res.device}, "
        f"{res.threads} thread(s), sorting networks: {first.sortnet}, {first.clock} clock, "
        f"torch {res.machine.get('torch')}",
        f"caches: {format_caches(res.machine.get('caches', []))}",
        "ns per coordinate (input size n x d x itemsize in the second header line)",
        "",
    ]
    itemsize = torch.empty(0, dtype=DTYPES[res.dtype]).element_size()
    header = ["rule", "kind", *(f"d={d}" for d in res.sizes)]
    sizes_line = ["", "input", *(_bytes(res.n * d * itemsize) for d in res.sizes)]
    body = [sizes_line, ["floor", "x.sum()", *(_ns(r.floor_s, r.d) for r in res.results)]]
    for i, row in enumerate(first.rows):
        cells = []
        for r in res.results:
            match = next((x for x in r.rows if x.rule == row.rule and x.kind == row.kind), None)
            cells.append("error" if match is None or match.seconds is None else _ns(match.seconds, r.d))
        body.append([row.rule, row.kind, *cells])
    lines += _table(header, body, set(range(2, 2 + len(res.sizes))))
    return "\n".join(lines)


def _ns(seconds: float, d: int) -> str:
    return f"{seconds * 1e9 / d:.2f}"


def _bytes(b: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return str(b)


__all__ = [
    "TARGETS",
    "BenchResult",
    "Row",
    "RuleSpec",
    "SizesResult",
    "bench_defenses",
    "bench_sizes",
    "cache_sizes",
    "format_result",
    "format_sizes",
    "make_input",
    "resolve_rules",
    "split_names",
    "target_of",
]
