"""Attack masks over a model's flat parameters: the random, layer-wise and ERK policies.

The hybrid sparse attack of Özfatura, Özfatura, Küpçü and Gündüz ("Aggressive or
Imperceptible, or Both: Network Pruning Assisted Hybrid Byzantines in Federated Learning",
seed 004; ALGORITHMS.md §4.13) attacks the coordinates marked by a binary mask
c ∈ {0,1}^d, which a pruning policy Π(δ) draws once; δ is the fraction of attacked
(c = 1) weights. Every policy here is a function ``(model, layout, δ, generator) → bool[d]``
aligned with the model's `ParamLayout` (``model.parameters()`` order; BatchNorm running
statistics are buffers and are not in it):

- ``random`` Π_r: ⌊δ·d⌋ coordinates uniformly at random over the flattened parameters;
- ``random_plus`` Π_r⁺: Π_r OR the critical mask;
- ``layerwise`` Π_lr: in every parameter tensor (normalisation and biases included),
  min(numel, ⌊δ·numel⌋ + 1) random ones;
- ``layerwise_plus`` Π_lr⁺: the same in every weight tensor, the critical tensors all ones;
- ``erk_plus`` Π_ERK⁺: Erdős–Rényi-Kernel densities (Evci, Gale, Menick, Castro, Elsen,
  "Rigging the Lottery", ICML 2020; see `erk_densities`), Bernoulli entries.

**Critical parameters** (c = 1 in every "+" policy) are all weights and biases of
normalisation layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm, RMSNorm) and every
other parameter named ``bias`` (the Conv/Linear bias vectors). This follows the authors'
code (``CRYPTO-KU/FL-Byzantine-Library``, ``pruners/``); the paper only calls them layers
"excluded from pruning as highly sensitive" (UNSETTLED, §9 item 12). Every other
parameter is a *weight* (in this library's models: the Conv/Linear weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from byzbench.checks import check_real
from byzbench.models.layout import ParamLayout, ParamSlot

_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
KINDS = ("weight", "bias", "norm")


@dataclass(frozen=True)
class ParamTensor:
    """One parameter tensor of the layout: its slot, kind and owning module type."""

    slot: ParamSlot
    kind: str  # "weight" | "bias" | "norm"
    module: type[nn.Module]

    @property
    def critical(self) -> bool:
        return self.kind != "weight"


def tensors(model: nn.Module, layout: ParamLayout) -> list[ParamTensor]:
    """The layout's tensors in flat order, each classified as weight, bias or norm.

    Raises ``ValueError`` if the layout does not describe ``model``'s parameters.
    """
    owner: dict[str, tuple[nn.Module, str]] = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = (module, p_name)
    out = []
    for slot in layout.slots:
        if slot.name not in owner:
            raise ValueError(f"layout parameter {slot.name!r} is not a parameter of the model")
        module, p_name = owner[slot.name]
        kind = "norm" if isinstance(module, _NORMS) else "bias" if p_name == "bias" else "weight"
        out.append(ParamTensor(slot, kind, type(module)))
    return out


def check_density(density: float, name: str = "density") -> float:
    """δ ∈ (0, 1], the fraction of attacked weights."""
    return check_real(density, name, 0.0, 1.0, low_open=True)


def _empty(layout: ParamLayout, generator: torch.Generator) -> torch.Tensor:
    return torch.zeros(layout.dim, dtype=torch.bool, device=generator.device)


def critical_mask(model: nn.Module, layout: ParamLayout, device: torch.device | str = "cpu") -> torch.Tensor:
    """bool[d]: True on every normalisation parameter and every bias vector."""
    mask = torch.zeros(layout.dim, dtype=torch.bool, device=device)
    for t in tensors(model, layout):
        if t.critical:
            mask[t.slot.offset : t.slot.stop] = True
    return mask


def random_mask(model: nn.Module, layout: ParamLayout, density: float, generator: torch.Generator) -> torch.Tensor:
    """Π_r(δ): ⌊δ·d⌋ coordinates drawn uniformly without replacement."""
    density = check_density(density)
    mask = _empty(layout, generator)
    k = math.floor(density * layout.dim)
    mask[torch.randperm(layout.dim, generator=generator, device=generator.device)[:k]] = True
    return mask


def random_plus_mask(model: nn.Module, layout: ParamLayout, density: float, generator: torch.Generator) -> torch.Tensor:
    """Π_r⁺(δ): Π_r(δ) OR the critical mask."""
    return random_mask(model, layout, density, generator) | critical_mask(model, layout, generator.device)


def layer_count(numel: int, density: float) -> int:
    """Ones per tensor in the layer-wise policies: min(numel, ⌊δ·numel⌋ + 1)."""
    return min(numel, math.floor(density * numel) + 1)


def _layerwise(model: nn.Module, layout: ParamLayout, density: float, generator: torch.Generator,
               critical_dense: bool) -> torch.Tensor:
    """``layer_count`` random ones per tensor (one uniform key per coordinate, the
    smallest keys of each tensor win); critical tensors all ones if ``critical_dense``."""
    density = check_density(density)
    mask = _empty(layout, generator)
    keys = torch.rand(layout.dim, generator=generator, device=generator.device)
    for t in tensors(model, layout):
        s = t.slot
        if critical_dense and t.critical:
            mask[s.offset : s.stop] = True
            continue
        chosen = torch.topk(keys[s.offset : s.stop], layer_count(s.numel, density), largest=False).indices
        mask[s.offset + chosen] = True
    return mask


def layerwise_mask(model: nn.Module, layout: ParamLayout, density: float, generator: torch.Generator) -> torch.Tensor:
    """Π_lr(δ): ⌊δ·numel⌋ + 1 random ones in every parameter tensor (``layer_wise_random_no_crits``)."""
    return _layerwise(model, layout, density, generator, critical_dense=False)


def layerwise_plus_mask(model: nn.Module, layout: ParamLayout, density: float,
                        generator: torch.Generator) -> torch.Tensor:
    """Π_lr⁺(δ): ⌊δ·numel⌋ + 1 random ones per weight tensor, critical tensors all ones."""
    return _layerwise(model, layout, density, generator, critical_dense=True)


def erk_densities(shapes: list[tuple[int, ...]], density: float) -> list[float]:
    """Per-tensor ERK densities whose expected kept total is δ·Σ numel (Evci et al. 2020).

    Tensor l gets p_l = ε·r_l with r_l = Σ dims / Π dims; ε solves Σ_l p_l·N_l = δ·Σ_l N_l.
    While some p_l would exceed 1, the tensors with the largest r_l become dense (p = 1)
    and ε is solved again over the others, Σ_{sparse} ε·r_l·N_l = δ·Σ_all N_l − Σ_{dense} N_l
    (the ``googleAI_ERK`` procedure of ``pruners/erk.py``, power scale 1).
    """
    density = check_density(density)
    numel = [math.prod(s) for s in shapes]
    raw = [sum(s) / n for s, n in zip(shapes, numel)]
    dense: set[int] = set()
    target = density * sum(numel)
    while len(dense) < len(shapes):
        sparse = [i for i in range(len(shapes)) if i not in dense]
        eps = (target - sum(numel[i] for i in dense)) / sum(raw[i] * numel[i] for i in sparse)
        top = max(raw[i] for i in sparse)
        if eps * top <= 1.0:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.update(i for i in sparse if raw[i] == top)
    return [1.0] * len(shapes)


def erk_eligible(model: nn.Module, layout: ParamLayout) -> list[ParamTensor]:
    """Tensors ERK sparsifies: the weights, except the first parameter tensor (kept dense)."""
    return [t for i, t in enumerate(tensors(model, layout)) if i > 0 and not t.critical]


def erk_plus_mask(model: nn.Module, layout: ParamLayout, density: float, generator: torch.Generator) -> torch.Tensor:
    """Π_ERK⁺(δ): Bernoulli(p_l) entries on the eligible tensors (`erk_densities`), every
    other tensor (the first one, biases, normalisation) all ones. A model whose only weight
    is its first tensor (``logistic``) gets the all-ones mask."""
    density = check_density(density)
    mask = torch.ones(layout.dim, dtype=torch.bool, device=generator.device)
    eligible = erk_eligible(model, layout)
    if not eligible:
        return mask
    probs = erk_densities([t.slot.shape for t in eligible], density)
    draws = torch.rand(layout.dim, generator=generator, device=generator.device)
    for t, p in zip(eligible, probs):
        s = t.slot
        mask[s.offset : s.stop] = draws[s.offset : s.stop] < p
    return mask


MaskPolicy = Callable[[nn.Module, ParamLayout, float, torch.Generator], torch.Tensor]

POLICIES: dict[str, MaskPolicy] = {
    "random": random_mask,
    "random_plus": random_plus_mask,
    "layerwise": layerwise_mask,
    "layerwise_plus": layerwise_plus_mask,
    "erk_plus": erk_plus_mask,
}


__all__ = [
    "KINDS",
    "POLICIES",
    "MaskPolicy",
    "ParamTensor",
    "check_density",
    "critical_mask",
    "erk_densities",
    "erk_eligible",
    "erk_plus_mask",
    "layer_count",
    "layerwise_mask",
    "layerwise_plus_mask",
    "random_mask",
    "random_plus_mask",
    "tensors",
]
