"""`ParamLayout`: the map between a model's named parameters and one flat vector.

Server and attacker exchange flat rows of length ``d``; layer-aware code (GAS splits,
sparse attack masks, critical layers) maps flat indices back to layers through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
from torch import nn


@dataclass(frozen=True)
class ParamSlot:
    """One named parameter: its shape and where it sits in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.numel


class ParamLayout:
    """Names, shapes and offsets of a model's parameters in one flat vector of size `dim`."""

    def __init__(self, slots: list[ParamSlot]) -> None:
        self.slots = tuple(slots)
        self.dim = slots[-1].stop if slots else 0
        self._by_name = {s.name: s for s in slots}

    @classmethod
    def of(cls, model: nn.Module) -> "ParamLayout":
        slots, offset = [], 0
        for name, p in model.named_parameters():
            slots.append(ParamSlot(name, tuple(p.shape), offset))
            offset += p.numel()
        return cls(slots)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def __getitem__(self, name: str) -> ParamSlot:
        return self._by_name[name]

    def __len__(self) -> int:
        return len(self.slots)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat[..., d]`` shaped like each parameter (leading dims kept)."""
        lead = flat.shape[:-1]
        return {s.name: flat[..., s.offset : s.stop].view(*lead, *s.shape) for s in self.slots}

    def flatten(self, tensors: dict[str, torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
        """Concatenate ``tensors[name]`` (shape ``[..., *shape]``) into ``[..., d]``."""
        first = tensors[self.slots[0].name]
        lead = first.shape[: first.dim() - len(self.slots[0].shape)]
        if out is None:
            out = first.new_empty(*lead, self.dim)
        for s in self.slots:
            out[..., s.offset : s.stop].copy_(tensors[s.name].reshape(*lead, s.numel))
        return out

    def layer_of(self, index: int) -> str:
        """Name of the parameter holding flat coordinate ``index``."""
        for s in self.slots:
            if s.offset <= index < s.stop:
                return s.name
        raise IndexError(f"flat index {index} outside [0, {self.dim})")


def bind_flat(model: nn.Module, flat: torch.Tensor | None = None) -> tuple[torch.Tensor, ParamLayout]:
    """Make every parameter of ``model`` a view of one flat tensor and return it.

    After binding, an in-place update of the flat vector is seen by the model, so the
    server can step all parameters with one vector operation.
    """
    layout = ParamLayout.of(model)
    if flat is None:
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    views = layout.unflatten(flat)
    for name, p in model.named_parameters():
        p.data = views[name]
    return flat, layout
