"""Pruning masks for the hybrid sparse attack (ALGORITHMS.md §4.13).

`masks` holds the critical-parameter mask and the random, layer-wise and ERK policies;
`force` the FORCE saliency policy. Every mask is a bool tensor over the model's flat
parameters, in `ParamLayout` order.
"""

from __future__ import annotations

from byzbench.pruning.force import PooledBatches, force_mask, pruning_clients
from byzbench.pruning.masks import POLICIES, critical_mask, erk_densities, tensors

__all__ = ["POLICIES", "PooledBatches", "critical_mask", "erk_densities", "force_mask", "pruning_clients", "tensors"]
