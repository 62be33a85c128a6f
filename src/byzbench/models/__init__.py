"""Models: registered `nn.Module` builders, all parameters bound to one flat vector."""

from __future__ import annotations

from byzbench.models.base import MODELS, build_model
from byzbench.models.layout import ParamLayout, ParamSlot, bind_flat

__all__ = ["MODELS", "ParamLayout", "ParamSlot", "bind_flat", "build_model"]
