"""`ExperimentConfig`: one typed, validated, serialisable experiment description.

Load it from YAML, TOML or JSON, override keys with ``key=value`` strings (the CLI's
``--set``), and validate it before any work::

    cfg = ExperimentConfig.from_file("exp.yaml").override(["attack.z=8", "partition.beta=0.1"])
    cfg.validate()
    cfg.run_id            # hash of the canonical config: same config ⇒ same id

Components (``data``, ``partition``, ``model``, ``attack``, ``lr_schedule``, ``local``) are specs:
a name, ``"name(k=v)"`` or a mapping with ``name`` and parameters; ``attack.z=8`` sets one
parameter, ``attack=ipm`` replaces the component. ``defense`` is a chain such as
``"nnm > trmean"``. ``local`` is the clients' procedure: ``none`` (one gradient per
round, the default) or ``sgd(steps=K, lr=…, momentum=…)`` (local training, §1.3).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from byzbench.errors import ConfigError, InfeasibleError
from byzbench.spec import ComponentSpec, chain_to_str, load_yaml, parse_chain, parse_component, parse_value

STRATEGIES = ("auto", "vmap", "loop", "fused")
COMPONENT_KEYS = ("data", "partition", "model", "attack", "lr_schedule", "local")


def _spec(text: str) -> Any:
    return field(default_factory=lambda: parse_component(text, "default"))


@dataclass
class ExperimentConfig:
    """Every setting of one simulated training run (defaults: the embedded demo)."""

    seed: int = 0
    device: str = "cpu"
    data: ComponentSpec = _spec("digits")
    partition: ComponentSpec = _spec("dirichlet(beta=0.5)")
    model: ComponentSpec = _spec("mlp")
    n_clients: int = 25
    n_byzantine: int = 5
    rounds: int = 300
    batch_size: int = 32
    lr: float = 0.1
    lr_schedule: ComponentSpec = _spec("constant")
    weight_decay: float = 0.0
    clip_norm: float | None = None
    momentum: float = 0.0
    momentum_dampening: bool = True
    local: ComponentSpec = _spec("none")
    attack: ComponentSpec = _spec("alie")
    defense: str = "trmean"
    eval_every: int = 25
    strategy: str = "auto"
    name: str = ""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ExperimentConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"a config must be a mapping of keys, got {type(raw).__name__}")
        valid = {f.name for f in fields(cls)}
        for key in raw:
            if key not in valid:
                raise ConfigError(f"unknown config key; valid keys: {', '.join(sorted(valid))}", key)
        cfg = cls()
        for key, value in raw.items():
            cfg._assign(key, value)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "ExperimentConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text = path.read_text()
        try:
            if path.suffix == ".json":
                raw = json.loads(text)
            elif path.suffix == ".toml":
                raw = _load_toml(text)
            else:
                raw = load_yaml(text) or {}
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot parse {path}: {exc}") from exc
        return cls.from_dict(raw)

    def override(self, assignments: list[str]) -> "ExperimentConfig":
        """A copy with ``key=value`` assignments applied (dotted keys reach parameters)."""
        cfg = self.copy()
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must be written key=value")
            key, value = (part.strip() for part in item.split("=", 1))
            raw_text = key in COMPONENT_KEYS or key == "defense" or key.endswith(".name")
            cfg._set_dotted(key, value if raw_text else parse_value(value))
        return cfg

    def copy(self) -> "ExperimentConfig":
        return ExperimentConfig.from_dict(self.to_dict())

    def _set_dotted(self, key: str, value: Any) -> None:
        head, _, rest = key.partition(".")
        if head not in {f.name for f in fields(self)}:
            raise ConfigError(f"unknown config key; valid keys: {', '.join(sorted(f.name for f in fields(self)))}", key)
        if not rest:
            self._assign(head, value)
            return
        if head not in COMPONENT_KEYS:
            raise ConfigError(f"{head!r} has no sub-keys", key)
        spec: ComponentSpec = getattr(self, head)
        params = dict(spec.params)
        if "." in rest:
            raise ConfigError("nested parameter keys are not supported", key)
        if rest == "name":
            setattr(self, head, ComponentSpec(str(value).lower(), {}))
            return
        params[rest] = value
        setattr(self, head, ComponentSpec(spec.name, params))

    def _assign(self, key: str, value: Any) -> None:
        if key in COMPONENT_KEYS:
            setattr(self, key, parse_component(value, key))
        elif key == "defense":
            self.defense = chain_to_str(parse_chain(value, key))
        else:
            setattr(self, key, value)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, ComponentSpec) else v
        return out

    def canonical(self) -> dict[str, Any]:
        """The dict that identifies the run: everything but the free-form ``name``."""
        out = self.to_dict()
        out.pop("name")
        if out.get("local") == {"name": "none"} or out.get("local") == "none":
            out.pop("local")  # the gradient mode: ids of configs predating ``local`` stay valid
        return out

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ validation
    def validate(self) -> "ExperimentConfig":
        """Check every key; raise `ConfigError` naming the key and the rule broken."""
        _int(self.seed, "seed", 0)
        n = _int(self.n_clients, "n_clients", 1)
        f = _int(self.n_byzantine, "n_byzantine", 0)
        if 2 * f >= n:
            raise ConfigError(
                f"needs 2·n_byzantine < n_clients (a Byzantine minority); got n_byzantine = {f}, "
                f"n_clients = {n}",
                "n_byzantine",
            )
        _int(self.rounds, "rounds", 1)
        _int(self.batch_size, "batch_size", 1)
        _int(self.eval_every, "eval_every", 1)
        _num(self.lr, "lr", lo=0.0, lo_open=True)
        _num(self.weight_decay, "weight_decay", lo=0.0)
        _num(self.momentum, "momentum", lo=0.0, hi=1.0)
        if self.clip_norm is not None:
            _num(self.clip_norm, "clip_norm", lo=0.0, lo_open=True)
        if not isinstance(self.momentum_dampening, bool):
            raise ConfigError(f"must be true or false, got {self.momentum_dampening!r}", "momentum_dampening")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}", "strategy")
        _check_device(self.device)
        self._validate_components(n, f)
        return self

    def _validate_components(self, n: int, f: int) -> None:
        from byzbench.attacks import ATTACKS, KNOWLEDGE_LEVELS
        from byzbench.data import DATASETS, PARTITIONERS
        from byzbench.defenses import Defense
        from byzbench.models import MODELS
        from byzbench.sim.local import LOCAL_PROCEDURES
        from byzbench.sim.schedule import SCHEDULES

        LOCAL_PROCEDURES.create(self.local.name, "local", **self.local.params)
        DATASETS.create(self.data.name, "data", **self.data.params)
        PARTITIONERS.create(self.partition.name, "partition", **self.partition.params)
        MODELS.create(self.model.name, "model", **self.model.params)
        SCHEDULES.create(self.lr_schedule.name, "lr_schedule", **self.lr_schedule.params)
        params = dict(self.attack.params)
        knowledge = params.pop("knowledge", None)
        check_until(params.pop("until", None))
        attack = ATTACKS.create(self.attack.name, "attack", **params)
        if knowledge is not None:
            if knowledge not in KNOWLEDGE_LEVELS:
                raise ConfigError(f"must be one of {', '.join(KNOWLEDGE_LEVELS)}, got {knowledge!r}", "attack.knowledge")
            if knowledge not in attack.supported_knowledge:
                raise ConfigError(
                    f"attack {attack.name!r} is not defined for knowledge {knowledge!r}; "
                    f"it supports: {', '.join(attack.supported_knowledge)}",
                    "attack.knowledge",
                )
        defense = Defense.from_spec(self.defense, "defense")
        try:
            defense.check(n, f)
        except InfeasibleError as exc:
            raise InfeasibleError(str(exc), "defense") from exc
        self._canonicalise(ATTACKS, DATASETS, PARTITIONERS, MODELS, SCHEDULES, LOCAL_PROCEDURES, defense)

    def _canonicalise(self, attacks, datasets, partitioners, models, schedules, local, defense) -> None:
        """Aliases → canonical names, numbers → floats, so equal configs hash equally."""
        for key, registry in (("data", datasets), ("partition", partitioners), ("model", models),
                              ("attack", attacks), ("lr_schedule", schedules), ("local", local)):
            spec = getattr(self, key)
            setattr(self, key, ComponentSpec(registry.canonical(spec.name, key), spec.params))
        chain = parse_chain(self.defense, "defense")
        names = [*(p.name for p in defense.pre), defense.aggregator.name]
        self.defense = chain_to_str([ComponentSpec(nm, c.params) for nm, c in zip(names, chain)])
        for key in ("lr", "weight_decay", "momentum"):
            setattr(self, key, float(getattr(self, key)))
        if self.clip_norm is not None:
            self.clip_norm = float(self.clip_norm)


def check_until(value: Any) -> int | None:
    """``attack.until`` (an engine-level key of every attack, like ``knowledge``): None
    (attack every round) or the first round T1 ≥ 0 at which the Byzantine clients stop
    attacking and send their own honest messages (seed 001, App. A)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"must be an integer ≥ 0 (the first round without attack) or null, got {value!r}",
                          "attack.until")
    return value


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"must be an integer, got {value!r}", key)
    if value < minimum:
        raise ConfigError(f"must be ≥ {minimum}, got {value}", key)
    return value


def _num(value: Any, key: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value!r}", key)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(f"must be {'>' if lo_open else '≥'} {lo}, got {value}", key)
    if hi is not None and value >= hi:
        raise ConfigError(f"must be < {hi}, got {value}", key)
    return float(value)


def _check_device(device: Any) -> None:
    import torch

    if not isinstance(device, str):
        raise ConfigError(f"must be a string such as 'cpu', 'cuda' or 'auto', got {device!r}", "device")
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}", "device") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but is not available on this machine", "device")


def _load_toml(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def resolve_device(device: str) -> "Any":
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


__all__ = ["ExperimentConfig", "STRATEGIES", "resolve_device"]
