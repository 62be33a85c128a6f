"""Per-client gradients for all n clients in one go — three interchangeable strategies.

Each client's gradient is that of the mean cross-entropy over its own B samples, at the
shared parameters θ. The result is written into one preallocated ``[n, d]`` buffer.

- ``fused``: one forward and one backward pass over all n·B samples as a single batch,
  then per-client weight gradients ``G_c = δ_cᵀ a_c`` by one batched matmul per Linear
  layer (one grouped convolution per Conv2d layer, the clients as groups) from the
  layer inputs ``a`` and output gradients ``δ`` (the per-example gradient trick, summed
  per client). Exact for models whose parameters all live in ``nn.Linear`` and
  ``nn.Conv2d`` layers and whose other layers act per sample (activations, pooling,
  dropout, flatten); no normalisation layers or residual blocks. See
  `byzbench.sim.fused`: a flat Linear/activation stack runs feature-major with the
  backward written out by hand.
- ``vmap``: ``torch.func`` — ``functional_call`` + ``grad`` + ``vmap`` over clients with
  ``randomness="different"``, so dropout draws differ per client. Any model.
- ``loop``: a tight loop over clients, each backward writing into its row of the buffer.
  Any model.

``auto`` picks ``fused`` when the model allows it (on a GPU only for Linear-only models:
convolutional ones take ``vmap`` there, not measured against ``fused``), else ``vmap``
on a GPU and ``loop`` on a CPU. All three give the same gradients (tested to 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from byzbench.errors import ConfigError
from byzbench.models.layout import ParamLayout
from byzbench.sim.fused import FeatureMajorMLP, HookedLayers, feature_major_supported

#: Parameter-free modules that act on each sample independently.
PER_SAMPLE_MODULES = (
    nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout2d, nn.ReLU, nn.LeakyReLU, nn.ELU,
    nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.LogSoftmax, nn.Softmax,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
CONTAINERS = (nn.Sequential, nn.ModuleList)


def _fused_layer(module: nn.Module) -> bool:
    """A layer whose per-client gradients the fused strategy forms: Linear, or Conv2d
    with zero padding given as numbers (other padding modes pad before the hooks see)."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def fused_supported(model: nn.Module) -> bool:
    """Whether every parameter sits in an ``nn.Linear`` or ``nn.Conv2d`` (zero padding) and
    every other layer is per-sample (activations, pooling, dropout, flatten)."""
    for module in model.modules():
        if _fused_layer(module) or isinstance(module, CONTAINERS):
            continue
        if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
            return False
        if not isinstance(module, PER_SAMPLE_MODULES):
            return False
    return True


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def choose_strategy(requested: str, model: nn.Module, device: torch.device) -> str:
    """Resolve ``auto``; refuse ``fused`` for a model it cannot handle."""
    if requested == "fused" and not fused_supported(model):
        raise ConfigError(
            "the fused strategy needs a model made of nn.Linear / nn.Conv2d layers and "
            "per-sample layers only (no normalisation layers); use vmap or loop",
            "strategy",
        )
    if requested != "auto":
        return requested
    if fused_supported(model) and (device.type != "cuda" or not _has_conv(model)):
        return "fused"
    return "vmap" if device.type == "cuda" else "loop"


class ClientGradients:
    """Computes the ``[n, d]`` per-client gradients of one round with a chosen strategy."""

    def __init__(self, model: nn.Module, layout: ParamLayout, n: int, strategy: str) -> None:
        self.model, self.layout, self.n, self.strategy = model, layout, n, strategy
        self._params = [p for _, p in model.named_parameters()]
        if strategy == "fused":
            self._fused = (FeatureMajorMLP(model, layout, n) if feature_major_supported(model)
                           else HookedLayers(model, layout, n))
        elif strategy == "vmap":
            self._vgrad = vmap(grad_and_value(self._loss), in_dims=(None, 0, 0), randomness="different")
        elif strategy != "loop":
            raise ConfigError(f"unknown strategy {strategy!r}", "strategy")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out[n, d]`` with the gradients; return the ``[n]`` per-client mean losses."""
        self.model.train()
        return getattr(self, f"_{self.strategy}")(x, y, out)

    # ------------------------------------------------------------------ vmap
    def _loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.model, params, (x,)), y)

    def _vmap(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        n = self.n
        params = {name: p.detach() for name, p in self.model.named_parameters()}
        grads, losses = self._vgrad(params, x.view(n, -1, *x.shape[1:]), y.view(n, -1))
        self.layout.flatten(grads, out=out)
        return losses.detach()

    # ------------------------------------------------------------------ loop
    def _loop(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        n = self.n
        xs, ys = x.view(n, -1, *x.shape[1:]), y.view(n, -1)
        losses = out.new_empty(n)
        for c in range(n):
            loss = F.cross_entropy(self.model(xs[c]), ys[c])
            grads = torch.autograd.grad(loss, self._params)
            torch.cat([g.reshape(-1) for g in grads], out=out[c])
            losses[c] = loss.detach()
        return losses


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            logits = model(x[start : start + chunk])
            yy = y[start : start + chunk]
            loss_sum += float(F.cross_entropy(logits, yy, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yy).sum())
    model.train()
    return loss_sum / x.shape[0], correct / x.shape[0]
