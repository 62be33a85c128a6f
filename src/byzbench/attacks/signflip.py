"""Sign flip (SF / bit flip)."""

from __future__ import annotations

import math

import torch

from byzbench.attacks.base import ATTACKS, Attack, AttackerView


@ATTACKS.register("signflip", aliases=("sf", "bitflip", "bf"))
class SignFlip(Attack):
    """Sign flip: g_b = −κ ∇L_b(θ) (Allen-Zhu et al., ICLR 2021; Yin et al. 2018 "BF").

    Each Byzantine client computes its own honest gradient on its own data and sends it
    negated and scaled by κ (default 1). It acts on gradients: under worker momentum the
    flipped gradient goes through the client's normal momentum update (§4.3).
    """

    knowledge = "own"
    level = "gradient"

    def __init__(self, scale: float = 1.0) -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.scale = float(scale)

    def craft(self, view: AttackerView) -> torch.Tensor:
        return view.own * (-self.scale)
