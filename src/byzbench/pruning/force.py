"""FORCE pruning saliency as an attack mask Π_F⁺(δ) (hybrid sparse attack, ALGORITHMS.md §4.13).

FORCE ("Progressive Skeletonization: Trimming More Fat from a Network at Initialization",
de Jorge, Sanyal, Behl, Torr, Rogez, Dokania, ICLR 2021) prunes at initialisation by
iterating, for t = 1..T, with c_0 = 1 on the weights W (the non-critical parameters,
`byzbench.pruning.masks`, i.e. the Conv/Linear weights; |W| = d_W):

    ḡ_t = mean over B mini-batches of ∇_θ L(c_{t−1} ⊙ θ₀)      (cross-entropy = NLL of log-softmax)
    s_t = |θ₀ ⊙ ḡ_t|  on W                                      (dense θ₀: pruned weights may return)
    κ_t = exp((t/T)·log κ + (1 − t/T)·log d_W),  κ = δ·d_W       (Eq. B1 of seed 004, 'exp' mode)
    c_t = the global top-round(κ_t) of s_t over W

and the attack mask is c_T on W, ones on the critical parameters (normalisation and
biases). ``fc_max`` = δ_FC^max caps the last Linear layer's kept fraction at
min(1, (δ_FC^max/δ)·κ_t/d_W) along the schedule (δ_FC^max at t = T): that layer keeps at
most ⌊cap_t·numel⌋ of its best weights and the rest of the budget goes to the other
layers (the ``last_layer_constraint`` of the authors' ``pruners/force.py``). Tie order
among equal saliencies is `torch.topk`'s.

Data (Özfatura et al., seed 004, App. B): the saliency is averaged over the clients the
attacker prunes with. Each of the B mini-batches takes ``batch_size`` samples from every
one of those clients (without replacement within a client, cycling when a client has
fewer) and the loss is their mean, so ḡ_t is the clients' average mini-batch gradient.
This pools the clients' gradients before the absolute value (as FORCE pools its
mini-batches); whether seed 004 averages gradients or saliencies across clients is not
stated (UNSETTLED, this is the reading used). Models whose normalisation uses batch
statistics see the pooled batch's statistics. Cost: T·B forward/backward passes of
``batch_size × clients`` samples through ``loss_and_grad``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from byzbench.checks import check_int, check_real
from byzbench.errors import ParamError
from byzbench.models.layout import ParamLayout, ParamSlot
from byzbench.pruning.masks import check_density, critical_mask, tensors

LossAndGrad = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class PooledBatches:
    """Mini-batches of ``batch_size`` samples from each client, drawn from ``generator``.

    ``indices`` are the clients' training-set indices (empty clients are skipped). Each
    draw permutes every client's samples at random (one float64 key per sample, sorted
    within the client) and takes the first ``batch_size`` of the permutation, cycling
    through it when the client holds fewer samples.
    """

    def __init__(self, indices: list[np.ndarray], batch_size: int, generator: torch.Generator) -> None:
        self.batch_size = check_int(batch_size, "force_batch_size", low=1)
        kept = [np.asarray(i, dtype=np.int64) for i in indices if len(i)]
        if not kept:
            raise ValueError("no client holds any training sample to prune with")
        dev = generator.device
        self.generator = generator
        self.pool = torch.as_tensor(np.concatenate(kept), device=dev)
        sizes = torch.tensor([len(i) for i in kept], device=dev)
        self.client = torch.repeat_interleave(torch.arange(len(kept), device=dev), sizes).double()
        slot = torch.arange(self.batch_size, device=dev)
        self.positions = (torch.cumsum(sizes, 0) - sizes).unsqueeze(1) + slot.unsqueeze(0) % sizes.unsqueeze(1)

    def __call__(self) -> torch.Tensor:
        """``[clients · batch_size]`` training-set indices, client by client."""
        keys = torch.rand(self.pool.numel(), generator=self.generator, device=self.pool.device, dtype=torch.float64)
        order = torch.argsort(self.client + keys)  # a random permutation inside each client's segment
        return self.pool[order[self.positions.reshape(-1)]]


def pruning_clients(n: int, f: int, omniscient: bool) -> range:
    """Client ids whose data FORCE uses: the h = n − f honest clients when ``omniscient``
    (``omniscient_pruning=True``, the default of §4.13), else the f Byzantine ones (the last f)."""
    return range(0, n - f) if omniscient else range(n - f, n)


def kept_fraction(t: int, iters: int, density: float) -> float:
    """κ_t / d_W = exp((t/T)·log δ) = δ^{t/T} (Eq. B1, 'exp' mode)."""
    return math.exp((t / iters) * math.log(density))


def fc_cap(fraction: float, density: float, fc_max: float) -> float:
    """The last FC layer's cap at a step keeping ``fraction`` = κ_t/d_W: min(1, (δ_FC^max/δ)·κ_t/d_W)."""
    return min(1.0, fc_max / density * fraction)


def last_linear(model: nn.Module, layout: ParamLayout) -> ParamSlot:
    """The slot of the last ``nn.Linear`` weight in flat order (the "last FC layer")."""
    found = [t.slot for t in tensors(model, layout) if t.kind == "weight" and issubclass(t.module, nn.Linear)]
    if not found:
        raise ParamError("fc_max", "fc_max needs a model with a Linear layer; this model has none")
    return found[-1]


def top_keep(scores: torch.Tensor, k: int, fc: slice | None = None, k_fc: int | None = None) -> torch.Tensor:
    """bool mask of the global top-``k`` of ``scores``; the ``fc`` range may hold at most
    ``k_fc`` of them (its best), and the budget it cannot take goes to the others."""
    if fc is not None and k_fc is not None:
        scores = scores.clone()
        part = scores[fc]
        if k_fc < part.numel():
            drop = torch.ones_like(part, dtype=torch.bool)
            drop[torch.topk(part, k_fc).indices] = False
            part[drop] = -math.inf
        k = min(k, int(torch.isfinite(scores).sum()))
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[torch.topk(scores, k).indices] = True
    return keep


def average_gradient(loss_and_grad: LossAndGrad, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     draw: Callable[[], torch.Tensor], batches: int) -> torch.Tensor:
    """Mean of ∇L(θ) over ``batches`` pooled mini-batches ``(x[idx], y[idx])``, idx = ``draw()``."""
    total = torch.zeros_like(theta)
    for _ in range(batches):
        idx = draw()
        total += loss_and_grad(theta, x[idx], y[idx])[1]
    return total.div_(batches)


def force_mask(model: nn.Module, layout: ParamLayout, theta0: torch.Tensor, loss_and_grad: LossAndGrad,
               x: torch.Tensor, y: torch.Tensor, draw: Callable[[], torch.Tensor], density: float,
               iters: int = 100, batches: int = 3, fc_max: float | None = None) -> torch.Tensor:
    """Π_F⁺(δ): bool[d], FORCE's top-κ weights (at most ⌊δ_FC^max·numel⌋ in the last FC layer)
    OR the critical parameters. ``draw()`` gives the training-set indices of one mini-batch."""
    density = check_density(density)
    iters = check_int(iters, "force_iters", low=1)
    batches = check_int(batches, "force_batches", low=1)
    critical = critical_mask(model, layout, theta0.device)
    weights = (~critical).nonzero().squeeze(1)
    fc = k_fc = None
    if fc_max is not None:
        fc_max = check_real(fc_max, "fc_max", 0.0, 1.0, low_open=True)
        slot = last_linear(model, layout)
        first = int(torch.searchsorted(weights, slot.offset))
        fc = slice(first, first + slot.numel)  # weight indices are sorted: the slot is contiguous
    w0 = theta0[weights]
    keep = torch.ones(weights.numel(), dtype=torch.bool, device=theta0.device)
    for t in range(1, iters + 1):
        theta = theta0.clone()
        theta[weights] = torch.where(keep, w0, torch.zeros_like(w0))
        grad = average_gradient(loss_and_grad, theta, x, y, draw, batches)
        scores = torch.nan_to_num((w0 * grad[weights]).abs(), nan=0.0, posinf=0.0)
        fraction = kept_fraction(t, iters, density)
        if fc is not None:
            k_fc = math.floor(fc_cap(fraction, density, fc_max) * slot.numel)
        keep = top_keep(scores, max(1, round(fraction * weights.numel())), fc, k_fc)
    mask = critical.clone()
    mask[weights[keep]] = True
    return mask


__all__ = [
    "LossAndGrad",
    "PooledBatches",
    "average_gradient",
    "fc_cap",
    "force_mask",
    "kept_fraction",
    "last_linear",
    "pruning_clients",
    "top_keep",
]
