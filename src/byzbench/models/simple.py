"""Logistic regression, MLP and CNNs for small images."""

from __future__ import annotations

from math import prod

from torch import nn

from byzbench.models.base import MODELS, ModelSpec


@MODELS.register("logistic", aliases=("logreg",))
class Logistic(ModelSpec):
    """Multinomial logistic regression: one Linear layer on the flattened input (seed 001 §6.1)."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(prod(input_shape), num_classes))


@MODELS.register("mlp")
class MLP(ModelSpec):
    """Fully connected network: Linear → activation (→ dropout) per hidden size, then Linear."""

    def __init__(self, hidden: list[int] | tuple[int, ...] = (64,), activation: str = "relu", dropout: float = 0.0) -> None:
        if isinstance(hidden, int):
            hidden = (hidden,)
        if not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ValueError(f"hidden must be a list of positive integers, got {hidden!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.hidden, self.activation, self.dropout = tuple(hidden), activation, dropout

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = prod(input_shape)
        for h in self.hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[self.activation]()]
            if self.dropout:
                layers.append(nn.Dropout(self.dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)


@MODELS.register("cnn")
class SmallCNN(ModelSpec):
    """Small CNN: two 3×3 conv (pad 1) + ReLU + 2×2 max-pool blocks, then Linear."""

    def __init__(self, channels: list[int] | tuple[int, ...] = (16, 32)) -> None:
        if len(channels) != 2 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be two positive integers, got {channels!r}")
        self.channels = tuple(channels)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs image inputs (C, H, W), got shape {input_shape}")
        c, h, w = input_shape
        c1, c2 = self.channels
        return nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), num_classes),
        )


@MODELS.register("lenet5")
class LeNet5(ModelSpec):
    """LeNet-5 for 28×28 inputs (LeCun et al. 1998; ALGORITHMS.md §6.3 default, d = 61,706)."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if tuple(input_shape[1:]) != (28, 28):
            raise ValueError(f"lenet5 expects 28×28 images, got shape {input_shape}")
        return nn.Sequential(
            nn.Conv2d(input_shape[0], 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
