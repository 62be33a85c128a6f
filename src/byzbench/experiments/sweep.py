"""Sweeps: one base config, a grid over config keys, zipped and conditional entries, seeds.

A sweep file (YAML, TOML or JSON)::

    name: alie-z-beta                # optional; default: the file name without suffix
    base: ../exp.yaml                # a config file (relative to this file) or a mapping
    grid:                            # config key → list of values; Cartesian product
      defense: [trmean, median]
      partition.beta: [0.1, 1.0]
    zip:                             # one mapping or a list of them; the lists of one
      - {lr: [0.1, 0.01], rounds: [100, 300]}   # mapping have equal lengths, vary together
    conditional:                     # sub-grids for the points that match ``where``
      - where: {attack: alie}        # config key → value, or a list of accepted values
        grid: {attack.z: [0.5, 2.5]}
      - where: {attack: ipm}
        grid: {attack.epsilon: [0.1, 100]}
    seeds: 2                         # a count (seeds 0..n−1) or a list such as [0, 7]

Keys are those of `ExperimentConfig.override`: ``attack`` replaces the component,
``attack.z`` sets one parameter, ``attack.name`` renames it, ``defense`` is a chain.
Values are typed (``0.5`` is a number, ``"nnm > trmean"`` a string, ``[64, 32]`` a list).

**Expansion** (deterministic): the grid's keys in the order written (the first varies
slowest), then each ``zip`` mapping as one more axis, form the points of a Cartesian
product. For each point, every ``conditional`` entry whose ``where`` matches the config
of base + point (a component key such as ``attack`` matches its name, aliases resolved; a
parameter key such as ``attack.z`` its value, None when unset; ``defense`` the whole
chain) multiplies the point by its own ``grid``/``zip``; conditions see the base and the
main grid, not other conditionals. Points are ordered seed-major: every point for the
first seed, then every point for the next, so that an interrupted sweep already covers the
whole grid for its first seeds. Within a point, whole-component keys are applied before
parameter keys. Configs are validated and deduplicated by run id (the first occurrence
is kept). Every error — an unknown key, an empty list, unequal zip lengths, a key set
twice, an invalid run — is a `ConfigError` naming the sweep key (``grid.attack.z``,
``zip[0]``, ``conditional[1].where.attack``, ``seeds``, ``base``) and the value, raised
by `Sweep.runs` before any run starts.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from byzbench.config import COMPONENT_KEYS, ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.spec import chain_to_str, load_yaml, parse_chain, parse_component

SWEEP_KEYS = ("name", "base", "grid", "zip", "conditional", "seeds")
CONDITIONAL_KEYS = ("where", "grid", "zip")
CONFIG_KEYS = tuple(f.name for f in fields(ExperimentConfig))

Grid = dict[str, list[Any]]
#: One assignment of a point: (config key, value, sweep location that set it).
Entry = tuple[str, Any, str]


@dataclass(frozen=True)
class Conditional:
    """A sub-grid (``grid`` × ``zip`` axes) applied to the points matching ``where``."""

    where: dict[str, list[Any]]
    grid: Grid = field(default_factory=dict)
    zips: tuple[Grid, ...] = ()


@dataclass(frozen=True)
class SweepRun:
    """One expanded, validated run and the keys the sweep set for it (seed last)."""

    config: ExperimentConfig
    varied: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.config.run_id

    def describe(self) -> str:
        """``key=value`` pairs of the varied keys, space-separated."""
        return " ".join(f"{k}={format_value(v)}" for k, v in self.varied.items())


@dataclass
class Sweep:
    """A base config, grid, zip groups, conditionals and seeds (see the module docs)."""

    name: str
    base: ExperimentConfig = field(default_factory=ExperimentConfig)
    grid: Grid = field(default_factory=dict)
    zips: list[Grid] = field(default_factory=list)
    conditionals: list[Conditional] = field(default_factory=list)
    seeds: list[int] | int | None = None

    def __post_init__(self) -> None:
        """Normalise (a base mapping or path, a seed count, zip as one mapping) and check."""
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"must be a non-empty string, got {self.name!r}", "name")
        self.base = _parse_base(self.base, Path.cwd())
        self.grid = _parse_grid(self.grid, "grid")
        self.zips = _parse_zips(self.zips, "zip")
        self.seeds = None if self.seeds is None else _parse_seeds(self.seeds)
        taken: dict[str, str] = {}
        _check_axes(self.grid, self.zips, "", taken)
        claimed = dict(taken)
        self.conditionals = [Conditional(_parse_where(c.where, f"conditional[{i}].where"), c.grid, tuple(c.zips))
                             for i, c in enumerate(self.conditionals)]
        for i, cond in enumerate(self.conditionals):
            loc = f"conditional[{i}]"
            own = dict(taken)
            _check_axes(cond.grid, cond.zips, f"{loc}.", own)
            claimed.update({k: v for k, v in own.items() if k not in claimed})
        if self.seeds is not None and "seed" in claimed:
            raise ConfigError("set seeds either with 'seeds' or as a grid key, not both", claimed["seed"])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], root: str | Path | None = None,
                  default_name: str | None = None) -> Sweep:
        """Parse a sweep mapping; a ``base`` path is relative to ``root`` (default: cwd)."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a sweep must be a mapping of keys, got {type(raw).__name__}")
        for key in raw:
            if key not in SWEEP_KEYS:
                raise ConfigError(f"unknown sweep key; valid keys: {', '.join(SWEEP_KEYS)}", str(key))
        base = _parse_base(raw.get("base"), Path(root) if root is not None else Path.cwd())
        grid = _parse_grid(raw.get("grid", {}), "grid")
        zips = _parse_zips(raw.get("zip", []), "zip")
        conditionals = _parse_conditionals(raw.get("conditional", []))
        seeds = _parse_seeds(raw["seeds"]) if raw.get("seeds") is not None else None
        name = raw.get("name", default_name)
        if name is None:
            name = "sweep-" + _digest([base.to_dict(), grid, zips, raw.get("conditional"), seeds])
        return cls(name=name, base=base, grid=grid, zips=zips, conditionals=conditionals, seeds=seeds)

    @classmethod
    def from_file(cls, path: str | Path) -> Sweep:
        """Load a YAML, TOML or JSON sweep file; its name defaults to the file's stem."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep file not found: {path}")
        return cls.from_dict(_read_mapping(path), root=path.parent, default_name=path.stem)

    # ------------------------------------------------------------------ expansion
    def varied_keys(self) -> list[str]:
        """The config keys the sweep sets, in expansion order (``seed`` last)."""
        keys = list(self.grid) + [k for z in self.zips for k in z]
        for cond in self.conditionals:
            keys += [k for k in [*cond.grid, *(k for z in cond.zips for k in z)] if k not in keys]
        return keys + (["seed"] if self.seeds is not None else [])

    def points(self) -> list[list[Entry]]:
        """Every assignment list, in expansion order, before validation and dedup."""
        base = self.base.to_dict()
        out: list[list[Entry]] = []
        for point in _product(_axes(self.grid, self.zips, "")):
            cfg = _build(base, point, strict=False)
            extra = [
                _axes(c.grid, c.zips, f"conditional[{i}].")
                for i, c in enumerate(self.conditionals) if _matches(cfg, c.where)
            ]
            for sub in _product([axis for axes in extra for axis in axes]):
                _check_unique(point + sub)
                out.append(point + sub)
        if self.seeds is None:
            return out
        return [point + [("seed", s, "seeds")] for s in self.seeds for point in out]

    def runs(self) -> list[SweepRun]:
        """The validated runs, deduplicated by run id; raises `ConfigError` naming the key."""
        base = self.base.to_dict()
        seen: dict[str, SweepRun] = {}
        for point in self.points():
            cfg = _build(base, point, strict=True)
            if cfg.run_id not in seen:
                seen[cfg.run_id] = SweepRun(cfg, {k: v for k, v, _ in point})
        return list(seen.values())

    def configs(self) -> list[ExperimentConfig]:
        """The validated configs of `runs`, in order."""
        return [run.config for run in self.runs()]


# ---------------------------------------------------------------------- parsing
def _read_mapping(path: Path) -> Any:
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            return tomllib.loads(text)
        return load_yaml(text) or {}
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc


def _parse_base(raw: Any, root: Path) -> ExperimentConfig:
    if raw is None:
        return ExperimentConfig()
    if isinstance(raw, ExperimentConfig):
        return raw.copy()
    try:
        if isinstance(raw, (str, Path)):
            path = Path(raw) if Path(raw).is_absolute() else root / raw
            return ExperimentConfig.from_file(path)
        if isinstance(raw, Mapping):
            return ExperimentConfig.from_dict(dict(raw))
    except ConfigError as exc:
        raise ConfigError(str(exc), "base") from exc
    raise ConfigError(f"must be a config file path or a mapping of config keys, got {raw!r}", "base")


def _parse_grid(raw: Any, where: str) -> Grid:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"must be a mapping of config key → list of values, got {raw!r}", where)
    return {str(k): v for k, v in raw.items()}


def _parse_zips(raw: Any, where: str) -> list[Grid]:
    groups = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(groups, list):
        raise ConfigError(f"must be a mapping of equal-length lists or a list of them, got {raw!r}", where)
    return [_parse_grid(g, f"{where}[{i}]") for i, g in enumerate(groups)]


def _parse_conditionals(raw: Any) -> list[Conditional]:
    items = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(items, list):
        raise ConfigError(f"must be a list of {{where, grid, zip}} entries, got {raw!r}", "conditional")
    out = []
    for i, item in enumerate(items):
        loc = f"conditional[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"must be a mapping with 'where' and 'grid' or 'zip', got {item!r}", loc)
        for key in item:
            if key not in CONDITIONAL_KEYS:
                raise ConfigError(f"unknown key; valid keys: {', '.join(CONDITIONAL_KEYS)}", f"{loc}.{key}")
        if "grid" not in item and "zip" not in item:
            raise ConfigError("needs a 'grid' or a 'zip' to apply", loc)
        out.append(Conditional(where=_parse_where(item.get("where"), f"{loc}.where"),
                               grid=_parse_grid(item.get("grid", {}), f"{loc}.grid"),
                               zips=tuple(_parse_zips(item.get("zip", []), f"{loc}.zip"))))
    return out


def _parse_where(raw: Any, loc: str) -> dict[str, list[Any]]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"must be a non-empty mapping of config key → value(s), got {raw!r}", loc)
    out = {}
    for key, value in raw.items():
        key = str(key)
        _check_key(key, f"{loc}.{key}")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        out[key] = [_normalise(key, v, f"{loc}.{key}") for v in values]
    return out


def _parse_seeds(raw: Any) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise ConfigError(f"a seed count must be ≥ 1, got {raw}", "seeds")
        return list(range(raw))
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"must be a count ≥ 1 or a non-empty list of seeds, got {raw!r}", "seeds")
    for s in raw:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"every seed must be an integer ≥ 0, got {s!r}", "seeds")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"seeds must be distinct, got {raw}", "seeds")
    return list(raw)


# ---------------------------------------------------------------------- checks
def _check_key(key: str, loc: str) -> None:
    """``key`` is a config key `ExperimentConfig.override` accepts."""
    head, _, rest = key.partition(".")
    if head not in CONFIG_KEYS:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(CONFIG_KEYS))}", loc)
    if rest and head not in COMPONENT_KEYS:
        raise ConfigError(f"{head!r} has no sub-keys (only {', '.join(COMPONENT_KEYS)} do)", loc)
    if "." in rest or key.endswith("."):
        raise ConfigError(f"write 'component.param'; nested or empty parameter keys are not supported, "
                          f"got {key!r}", loc)


def _check_axes(grid: Grid, zips: Sequence[Grid], prefix: str, taken: dict[str, str]) -> None:
    """Keys valid and set once, value lists non-empty, zip lists of equal length."""
    for key, values in grid.items():
        _claim(key, values, f"{prefix}grid.{key}", taken)
    for i, group in enumerate(zips):
        loc = f"{prefix}zip[{i}]"
        if not group:
            raise ConfigError("an empty zip group", loc)
        for key, values in group.items():
            _claim(key, values, f"{loc}.{key}", taken)
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ConfigError(f"lists must have equal lengths; got {detail}", loc)


def _claim(key: str, values: Any, loc: str, taken: dict[str, str]) -> None:
    _check_key(key, loc)
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"must be a non-empty list of values, got {values!r}", loc)
    if key in taken:
        raise ConfigError(f"key also set by {taken[key]}", loc)
    taken[key] = loc


def _check_unique(point: list[Entry]) -> None:
    seen: dict[str, str] = {}
    for key, _, loc in point:
        if key in seen:
            raise ConfigError(f"key also set by {seen[key]} for the same run (two conditionals match it)", loc)
        seen[key] = loc


# ---------------------------------------------------------------------- expansion
def _axes(grid: Grid, zips: Sequence[Grid], prefix: str) -> list[list[list[Entry]]]:
    """One axis per grid key and per zip group; an axis is a list of entry lists."""
    axes = [[[(k, v, f"{prefix}grid.{k}")] for v in values] for k, values in grid.items()]
    for i, group in enumerate(zips):
        length = len(next(iter(group.values())))
        axes.append([[(k, vals[j], f"{prefix}zip[{i}].{k}") for k, vals in group.items()]
                     for j in range(length)])
    return axes


def _product(axes: list[list[list[Entry]]]) -> list[list[Entry]]:
    return [[e for part in combo for e in part] for combo in itertools.product(*axes)]


def _apply(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (as `ExperimentConfig.override` reads it) to a typed value in a config dict."""
    head, _, rest = key.partition(".")
    if not rest:
        raw[head] = value
    elif rest == "name":
        raw[head] = {"name": str(value).lower()}
    else:
        raw[head] = {**parse_component(raw[head], head).to_dict(), rest: value}


def _resolve(base: dict[str, Any], point: list[Entry], strict: bool) -> ExperimentConfig:
    """base + point as a config: whole-component keys first, then parameter keys."""
    raw = copy.deepcopy(base)
    for key, value, _ in sorted(point, key=lambda e: "." in e[0]):
        _apply(raw, key, value)
    cfg = ExperimentConfig.from_dict(raw)
    return cfg.validate() if strict else cfg


def _build(base: dict[str, Any], point: list[Entry], strict: bool) -> ExperimentConfig:
    """The (``strict``: validated) config of a point; errors name the sweep key at fault."""
    try:
        return _resolve(base, point, strict)
    except ConfigError as exc:
        _, value, loc = _culprit(point, exc.key)
        run = " ".join(f"{k}={format_value(v)}" for k, v, _ in point) or "the base config alone"
        what = f"value {format_value(value)} is invalid" if loc != "base" else "the base config is invalid"
        raise ConfigError(f"{what} (run: {run}): {exc}", loc) from exc


def _culprit(point: list[Entry], key: str | None) -> tuple[str | None, Any, str]:
    """The entry that set the config key an error names (exact, else same component)."""
    if key:
        for match in (lambda k: k == key, lambda k: k.split(".")[0] == key.split(".")[0]):
            for entry in reversed(point):
                if match(entry[0]):
                    return entry
    return None, None, "base"


def _lookup(cfg: ExperimentConfig, key: str) -> Any:
    head, _, rest = key.partition(".")
    value = getattr(cfg, head)
    if not rest:
        return value.name if head in COMPONENT_KEYS else value
    return value.name if rest == "name" else value.params.get(rest)


def _matches(cfg: ExperimentConfig, where: dict[str, list[Any]]) -> bool:
    for key, accepted in where.items():
        value = _lookup(cfg, key)
        try:
            value = _normalise(key, value, key)
        except ConfigError:
            pass  # an unknown name matches nothing here; validation reports it later
        if not any(value == a for a in accepted):
            return False
    return True


def _normalise(key: str, value: Any, loc: str) -> Any:
    """Canonical form for matching: component names and defense chains resolved."""
    head, _, rest = key.partition(".")
    if head == "defense":
        return _canonical_chain(value, loc)
    if head in COMPONENT_KEYS and rest in ("", "name"):
        name = parse_component(value, loc).name
        return _registry(head).canonical(name, loc)
    return value


def _canonical_chain(value: Any, loc: str) -> str:
    from byzbench.defenses import AGGREGATORS, PREAGGREGATORS

    chain = parse_chain(value, loc)
    regs = [PREAGGREGATORS] * (len(chain) - 1) + [AGGREGATORS]
    return chain_to_str([type(c)(reg.canonical(c.name, loc), c.params) for reg, c in zip(regs, chain)])


def _registry(head: str):
    from byzbench.attacks import ATTACKS
    from byzbench.data import DATASETS, PARTITIONERS
    from byzbench.models import MODELS
    from byzbench.sim.local import LOCAL_PROCEDURES
    from byzbench.sim.schedule import SCHEDULES

    return {"data": DATASETS, "partition": PARTITIONERS, "model": MODELS, "attack": ATTACKS,
            "lr_schedule": SCHEDULES, "local": LOCAL_PROCEDURES}[head]


def format_value(value: Any) -> str:
    """A compact text form of a sweep value (strings bare, others JSON)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


__all__ = ["Conditional", "Sweep", "SweepRun", "format_value"]
