"""Aggregator and pre-aggregator interfaces, with the policies of ALGORITHMS.md §0.

Every rule receives the ``[n, d]`` matrix of client messages and the number ``f`` of
Byzantine rows it must tolerate, and works on whatever device and dtype it is given.
The base class applies, before the rule itself:

- the **non-finite policy** (``nonfinite``): ``"as_byzantine"`` (default) removes rows
  holding NaN/±Inf and lowers f by their count, raising if more than f rows are
  non-finite; ``"drop"`` removes them and keeps f; ``"raise"`` refuses them;
  ``"propagate"`` (the plain mean's default) leaves them in, as the textbook rule does;
- the **feasibility policy** (``infeasible``): ``"raise"`` (default) when the rule's
  requirement on n and f fails, or ``"clamp"`` to lower f to the largest feasible value,
  as reference codes silently do.

Rules report what they did through ``ctx.diagnostics``: scalar values (name → float or
0-dim tensor) are recorded by the engine each round as ``defense.<name>``; a rule that
selects or keeps whole rows (Krum, Multi-Krum, Bulyan, DnC, CC's unclipped rows, …)
writes ``ctx.diagnostics["kept"]``, a boolean ``[n]`` mask over the rows it was given,
from which the engine derives the fraction of Byzantine rows kept. The base class maps
the mask back to the caller's rows when the non-finite policy removed some.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from byzbench.errors import ConfigError, InfeasibleError, NonFiniteInputError
from byzbench.registry import Registry

AGGREGATORS: Registry = Registry("aggregator", package="byzbench.defenses")
PREAGGREGATORS: Registry = Registry("pre-aggregator", package="byzbench.defenses")

NONFINITE_POLICIES = ("as_byzantine", "drop", "raise", "propagate")
INFEASIBLE_POLICIES = ("raise", "clamp")


@dataclass
class AggregationContext:
    """What a rule may use besides its input: the round and its own random generator.

    ``server_gradient`` is set by the engine for rules with ``needs_server_gradient``
    (FLTrust): it returns the server's own update g_0 at the current model, computed on
    its clean root data with the clients' procedure.
    """

    round: int = 0
    generator: torch.Generator | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    server_gradient: Callable[[], torch.Tensor] | None = None
    #: Set by a caller that has already verified every row is finite; the first stage
    #: then skips its own non-finite scan (the chain clears it after that stage).
    rows_finite: bool = False
    #: Set by a caller that already holds Σ_i x_i of the rows the first stage receives:
    #: returns it as a fresh ``[d]`` tensor (the mean then needs no pass over the rows).
    #: Cleared by every pre-aggregator (its output rows are new) and whenever the
    #: non-finite screen drops rows.
    column_sum: Callable[[], torch.Tensor] | None = None


def finite_rows(x: torch.Tensor) -> torch.Tensor | None:
    """Boolean mask of rows of ``x`` whose entries are all finite, or None if all are.

    A row with a finite sum has no NaN/±Inf entry, so the exact element-wise test runs
    only when some row sum is not finite (a NaN/Inf entry, or a huge finite row whose
    sum overflows).
    """
    if bool(torch.isfinite(x.sum(dim=1)).all()):
        return None
    mask = torch.isfinite(x).all(dim=1)
    return None if bool(mask.all()) else mask


class _Rule(abc.ABC):
    """Shared policy handling of aggregators and pre-aggregators."""

    #: The rule's requirement on (n, f), written for error messages.
    requirement: str = "n > 2f"
    #: Default non-finite policy of the class.
    default_nonfinite: str = "as_byzantine"
    #: True if the output does not depend on the order of the rows (up to floating-point
    #: summation order); the engine then skips shuffling the rows before this rule.
    order_invariant: bool = False

    def __init__(self, *, nonfinite: str | None = None, infeasible: str = "raise") -> None:
        nonfinite = nonfinite or self.default_nonfinite
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if infeasible not in INFEASIBLE_POLICIES:
            raise ValueError(f"infeasible must be one of {INFEASIBLE_POLICIES}, got {infeasible!r}")
        self.nonfinite = nonfinite
        self.infeasible = infeasible

    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__)

    def feasible(self, n: int, f: int) -> bool:
        """Whether the rule's guarantee holds for n rows with f Byzantine (default n > 2f)."""
        return n > 2 * f

    def check(self, n: int, f: int) -> int:
        """The f to use: f itself, or the clamped value; raise `InfeasibleError` otherwise."""
        if f < 0:
            raise InfeasibleError(f"{self.name}: f must be ≥ 0, got {f}")
        if self.feasible(n, f):
            return f
        if self.infeasible == "clamp":
            while f > 0 and not self.feasible(n, f):
                f -= 1
            if self.feasible(n, f):
                return f
        raise InfeasibleError(f"{self.name} requires {self.requirement}; got n = {n}, f = {f}")

    def screen(self, x: torch.Tensor, f: int) -> tuple[torch.Tensor, int]:
        """Apply the non-finite policy: the rows to aggregate and the f that remains."""
        x, f, _ = self._screen(x, f)
        return x, f

    def _screen(self, x: torch.Tensor, f: int, known_finite: bool = False) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """`screen`, also returning the mask of kept rows (None when all are kept)."""
        if x.dim() != 2:
            raise ValueError(f"{self.name} expects a 2-D [n, d] input, got shape {tuple(x.shape)}")
        if self.nonfinite == "propagate" or known_finite:
            return x, f, None
        mask = finite_rows(x)
        if mask is None:
            return x, f, None
        bad = int((~mask).sum())
        if self.nonfinite == "raise":
            raise NonFiniteInputError(f"{self.name}: {bad} row(s) hold NaN or ±Inf")
        if self.nonfinite == "as_byzantine":
            if bad > f:
                raise NonFiniteInputError(
                    f"{self.name}: {bad} non-finite rows exceed f = {f} (policy as_byzantine)"
                )
            f -= bad
        return x[mask], f, mask

    def reset(self) -> None:
        """Forget any state kept between rounds (a new run starts)."""


class Aggregator(_Rule):
    """A robust aggregation rule: ``[n, d]`` messages → one ``[d]`` vector."""

    #: False for rules that give no Byzantine guarantee (the plain mean).
    robust: bool = True
    #: True for rules that need ``ctx.server_gradient`` (server-side root data, FLTrust).
    needs_server_gradient: bool = False
    #: True if output coordinate j depends on column j of the input alone (CM, TM, …):
    #: such a rule can run on any split of the coordinates (GAS uses this).
    coordinatewise: bool = False

    def __call__(self, x: torch.Tensor, f: int, ctx: AggregationContext | None = None) -> torch.Tensor:
        ctx = ctx or AggregationContext()
        x, f, mask = self._screen(x, f, ctx.rows_finite)
        if mask is not None:
            ctx.column_sum = None
        if x.shape[0] == 0:
            raise NonFiniteInputError(f"{self.name}: no row left to aggregate")
        f = self.check(x.shape[0], f)
        out = self.aggregate(x, f, ctx)
        kept = ctx.diagnostics.get("kept")
        if mask is not None and isinstance(kept, torch.Tensor) and kept.numel() == x.shape[0]:
            full = torch.zeros(mask.shape[0], dtype=torch.bool, device=kept.device)
            full[mask.to(kept.device)] = kept.to(torch.bool)
            ctx.diagnostics["kept"] = full
        return out

    @abc.abstractmethod
    def aggregate(self, x: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        """The rule on finite rows with a feasible f."""


class PreAggregator(_Rule):
    """A pre-aggregation step: ``[n, d]`` → ``[n', d]`` and the f' it passes on."""

    #: True if output row i is input row i transformed alone, given statistics that ignore
    #: row order (clipping; ARC's threshold): the rows still stand for the clients and the
    #: step commutes with any reordering of the rows.
    rowwise: bool = False

    def __call__(
        self, x: torch.Tensor, f: int, ctx: AggregationContext | None = None
    ) -> tuple[torch.Tensor, int]:
        ctx = ctx or AggregationContext()
        x, f, mask = self._screen(x, f, ctx.rows_finite)
        ctx.column_sum = None  # a pre-aggregator's output rows are new
        if mask is not None:
            # Rows were dropped: later stages index the survivors; remember how to map back.
            prior = ctx.diagnostics.get("_screened")
            if prior is not None:
                full = prior.clone()
                full[prior.nonzero().view(-1)] = mask.to(prior.device)
                mask = full
            ctx.diagnostics["_screened"] = mask
        f = self.check(x.shape[0], f)
        return self.transform(x, f, ctx)

    @abc.abstractmethod
    def transform(self, x: torch.Tensor, f: int, ctx: AggregationContext) -> tuple[torch.Tensor, int]:
        """The step on finite rows: the new rows and the f for the next stage."""


__all__ = [
    "AGGREGATORS",
    "PREAGGREGATORS",
    "AggregationContext",
    "Aggregator",
    "ConfigError",
    "PreAggregator",
    "finite_rows",
]
