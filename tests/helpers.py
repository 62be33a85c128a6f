"""Shared test helpers (imported by test modules as ``from helpers import …``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byzbench.attacks import AttackerView
from byzbench.ops import native
from byzbench.models.layout import ParamLayout


def attacker_view(honest: torch.Tensor, f: int, n: int | None = None, own: torch.Tensor | None = None,
                  knowledge: str = "omniscient", prev: torch.Tensor | None = None, defense=None,
                  seed: int = 0, round: int = 0, generator: torch.Generator | None = None) -> AttackerView:
    """An attacker's view over ``d``-dimensional rows (the layout of a tiny Linear)."""
    d = honest.shape[1]
    return AttackerView(
        honest=honest,
        own=honest[:f] if own is None else own,
        n=honest.shape[0] + f if n is None else n,
        f=f,
        round=round,
        params=torch.zeros(d, dtype=honest.dtype),
        layout=ParamLayout.of(nn.Linear(d, 1, bias=False)),
        generator=torch.Generator().manual_seed(seed) if generator is None else generator,
        knowledge=knowledge,
        prev_aggregate=prev,
        defense=defense,
    )


def reference_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """Plain per-client loop (zero_grad, backward, read .grad): what every strategy must equal."""
    rows = []
    for xc, yc in zip(x.view(n, -1, *x.shape[1:]), y.view(n, -1)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xc), yc).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


@contextlib.contextmanager
def fresh_native_build(cache: Path, name: str) -> Iterator[None]:
    """Native kernel ``name`` built into the empty cache folder ``cache`` for the duration
    of the block (a build failure fails the test); the process forgets it afterwards."""
    mp = pytest.MonkeyPatch()
    mp.setenv(native.CACHE_ENV, str(cache))
    native.forget(name)
    try:
        assert native.load(name) is not None
        yield
    finally:
        native.forget(name)
        mp.undo()
