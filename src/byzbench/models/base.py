"""The model registry and `build_model`.

A registered model class takes its hyperparameters in ``__init__`` and builds an
``nn.Module`` for a given input shape and class count with `build`.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

from byzbench.registry import Registry

MODELS: Registry = Registry("model", package="byzbench.models")


class ModelSpec(abc.ABC):
    """Base of registered model builders."""

    @abc.abstractmethod
    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """A fresh module for inputs of ``input_shape`` and ``num_classes`` outputs."""


def build_model(
    name: str,
    params: dict[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    key: str = "model",
) -> nn.Module:
    """Build model ``name`` with its weights initialised from ``seed`` alone."""
    spec = MODELS.create(name, key, **params)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(tuple(input_shape), num_classes)
