"""Name → class registries, so that adding an aggregator or attack is one file.

Each component family (datasets, partitioners, models, attacks, aggregators,
pre-aggregators) owns one `Registry`. A class registers itself with a decorator::

    @AGGREGATORS.register("trmean", aliases=("tm",))
    class TrimmedMean(Aggregator):
        '''Coordinate-wise trimmed mean (Yin et al., ICML 2018).'''
        def __init__(self, b: int | None = None): ...

The first docstring line is the one-line description shown by ``byzbench list``; the
``__init__`` signature (names, defaults, annotations) is the parameter list. `create`
checks parameter names before building, so a misspelt key fails with the valid ones.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from byzbench.errors import ConfigError, ParamError

T = TypeVar("T")


@dataclass(frozen=True)
class ParamInfo:
    """One constructor parameter of a registered component."""

    name: str
    default: Any
    annotation: str
    required: bool


@dataclass(frozen=True)
class Entry:
    """A registered component: its canonical name, class and description."""

    name: str
    cls: type
    aliases: tuple[str, ...]

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @property
    def params(self) -> list[ParamInfo]:
        """Constructor parameters; ``**kwargs`` forwarded to a base class adds its own."""
        out: list[ParamInfo] = []
        seen: set[str] = set()
        for klass in self.cls.__mro__:
            if "__init__" not in vars(klass) or klass is object:
                continue
            params = list(inspect.signature(klass.__init__).parameters.values())[1:]
            for p in params:
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in seen:
                    continue
                seen.add(p.name)
                ann = p.annotation
                ann_s = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
                required = p.default is inspect.Parameter.empty
                out.append(ParamInfo(p.name, None if required else p.default, str(ann_s), required))
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
        return out


class Registry(Generic[T]):
    """A named collection of component classes of one kind (``kind`` is for messages)."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self._package = package
        self._loaded = package is None
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[type[T]], type[T]]:
        """Class decorator registering ``cls`` under ``name`` (and ``aliases``)."""

        def deco(cls: type[T]) -> type[T]:
            for key in (name, *aliases):
                if key in self._aliases:
                    raise ValueError(f"{self.kind} name {key!r} registered twice")
            self._entries[name] = Entry(name, cls, tuple(aliases))
            for key in (name, *aliases):
                self._aliases[key] = name
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def _load(self) -> None:
        """Import every module of the family's package so that all classes register."""
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self._package)  # type: ignore[arg-type]
        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{self._package}.{mod.name}")

    def names(self) -> list[str]:
        """Public canonical names, sorted (names starting with ``_`` are private, e.g. test doubles)."""
        self._load()
        return sorted(k for k in self._entries if not k.startswith("_"))

    def entries(self) -> list[Entry]:
        return [self._entries[k] for k in self.names()]

    def canonical(self, name: str, key: str | None = None) -> str:
        """The canonical name for ``name`` or an alias; `ConfigError` listing valid names."""
        self._load()
        if not isinstance(name, str) or name.lower() not in self._aliases:
            valid = ", ".join(self.names())
            raise ConfigError(f"unknown {self.kind} {name!r}; valid names: {valid}", key)
        return self._aliases[name.lower()]

    def get(self, name: str, key: str | None = None) -> type[T]:
        return self._entries[self.canonical(name, key)].cls

    def entry(self, name: str, key: str | None = None) -> Entry:
        return self._entries[self.canonical(name, key)]

    def check_params(self, name: str, params: dict[str, Any], key: str | None = None) -> None:
        """Raise `ConfigError` if ``params`` holds a name the class does not take."""
        entry = self.entry(name, key)
        known = {p.name for p in entry.params}
        for p in params:
            if p not in known:
                where = f"{key}.{p}" if key else p
                raise ConfigError(
                    f"{self.kind} {entry.name!r} has no parameter {p!r}; "
                    f"its parameters: {', '.join(sorted(known)) or '(none)'}",
                    where,
                )

    def create(self, name: str, key: str | None = None, /, **params: Any) -> T:
        """Instantiate ``name`` with ``params`` after checking the parameter names.

        A `ParamError` raised by the constructor becomes a `ConfigError` on ``key.param``;
        any other ``ValueError``/``TypeError`` one naming ``key``.
        """
        self.check_params(name, params, key)
        cls = self.get(name, key)
        try:
            return cls(**params)
        except ParamError as exc:
            raise exc.keyed(key or self.kind) from exc
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.kind} {self.canonical(name)!r}: {exc}", key) from exc
