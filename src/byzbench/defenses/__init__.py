"""Defenses: a chain of pre-aggregators followed by one aggregator.

Build one from a spec string such as ``"nnm > trmean"`` or ``"bucketing(s=2) > rfa"``::

    defense = Defense.from_spec("trmean(b=2)")
    aggregate = defense(messages, f, ctx)
"""

from __future__ import annotations

from typing import Any

import torch

from byzbench.defenses.base import (
    AGGREGATORS,
    PREAGGREGATORS,
    AggregationContext,
    Aggregator,
    PreAggregator,
)
from byzbench.errors import ConfigError
from byzbench.spec import ComponentSpec, chain_to_str, parse_chain


class Defense:
    """Pre-aggregators applied in order, then the aggregator; f is passed on explicitly."""

    def __init__(self, pre: list[PreAggregator], aggregator: Aggregator, spec: str = "") -> None:
        self.pre = list(pre)
        self.aggregator = aggregator
        self.spec = spec or " > ".join([*(p.name for p in pre), aggregator.name])

    @classmethod
    def from_spec(cls, spec: Any, key: str = "defense") -> "Defense":
        chain = validate_defense(spec, key)
        pre = [PREAGGREGATORS.create(c.name, key, **c.params) for c in chain[:-1]]
        agg = AGGREGATORS.create(chain[-1].name, key, **chain[-1].params)
        return cls(pre, agg, chain_to_str(chain))

    def __call__(self, x: torch.Tensor, f: int, ctx: AggregationContext | None = None) -> torch.Tensor:
        ctx = ctx or AggregationContext()
        for stage in self.pre:
            x, f = stage(x, f, ctx)
            ctx.rows_finite = False  # a stage's output may overflow; let the next one scan
        out = self.aggregator(x, f, ctx)
        screened = ctx.diagnostics.pop("_screened", None)
        kept = ctx.diagnostics.get("kept")
        if not self.rowwise_pre:
            ctx.diagnostics.pop("kept", None)  # indexes mixed rows, not clients
        elif screened is not None and isinstance(kept, torch.Tensor) and kept.numel() == int(screened.sum()):
            full = torch.zeros(screened.shape[0], dtype=torch.bool, device=kept.device)
            full[screened.to(kept.device)] = kept.to(torch.bool)
            ctx.diagnostics["kept"] = full
        return out

    def check(self, n: int, f: int) -> None:
        """Raise `InfeasibleError` if the chain cannot run with n rows and f Byzantine."""
        if self.pre:
            return  # row counts after pre-aggregation depend on the stage; checked at run time
        self.aggregator.check(n, f)

    def reset(self) -> None:
        for stage in (*self.pre, self.aggregator):
            stage.reset()

    @property
    def robust(self) -> bool:
        return self.aggregator.robust

    @property
    def rowwise_pre(self) -> bool:
        """Whether every pre-aggregator maps row i to row i alone (clipping, ARC), so the
        aggregator's rows still stand for the clients."""
        return all(getattr(p, "rowwise", False) for p in self.pre)

    @property
    def order_invariant(self) -> bool:
        """Whether the chain's output ignores row order: row-wise pre-stages only, and an
        order-invariant aggregator."""
        return self.rowwise_pre and self.aggregator.order_invariant

    @property
    def needs_server_gradient(self) -> bool:
        return self.aggregator.needs_server_gradient


def validate_defense(spec: Any, key: str = "defense") -> list[ComponentSpec]:
    """Parse a defense spec and check every stage name and parameter name."""
    chain = parse_chain(spec, key)
    for stage in chain[:-1]:
        if stage.name in AGGREGATORS.names() and stage.name not in PREAGGREGATORS.names():
            raise ConfigError(
                f"{stage.name!r} is an aggregator and must come last; "
                f"pre-aggregators: {', '.join(PREAGGREGATORS.names()) or '(none yet)'}",
                key,
            )
        PREAGGREGATORS.check_params(stage.name, stage.params, key)
    AGGREGATORS.check_params(chain[-1].name, chain[-1].params, key)
    return chain


__all__ = [
    "AGGREGATORS",
    "PREAGGREGATORS",
    "AggregationContext",
    "Aggregator",
    "Defense",
    "PreAggregator",
    "validate_defense",
]
