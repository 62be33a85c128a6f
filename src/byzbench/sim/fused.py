"""The ``fused`` client-gradient strategy: one pass over all n·B samples, per-client sums.

For a model whose parameters all live in ``nn.Linear`` (and ``nn.Conv2d``) layers, client
c's gradient of its mean cross-entropy over its B samples is, per layer with input rows
a_s and output gradients δ_s = ∂ℓ_s/∂z_s of its samples s ∈ c,

    ∇W = (1/B) Σ_{s∈c} δ_s a_sᵀ = (1/B) δ_cᵀ a_c,      ∇b = (1/B) Σ_{s∈c} δ_s,

(for a convolution, the same sum of each sample's weight gradient), so one forward and
one backward pass over the whole batch give every δ_s and a_s, and one batched matmul —
or one grouped convolution with the clients as groups — per layer sums them per client
(the per-example gradient trick).

Two implementations:

- `FeatureMajorMLP` (flat ``nn.Sequential`` of Flatten, Linear, elementwise activations
  and Dropout): activations are kept feature-major, ``[features, n·B]``, so every layer
  is one ``addmm(b, W, aᵀ)`` (on this CPU's BLAS about 1.6× faster than the sample-major
  ``addmm(b, a, Wᵀ)`` of ``nn.Linear`` when a layer has few outputs), the cross-entropy
  and its gradient are computed directly (softmax − one-hot, reduced over the short class
  dimension in contiguous rows), and backpropagation is written out with the activations'
  own backward kernels: no autograd graph is built.
- `HookedLayers` (any other such model, e.g. CNNs, nested containers, a LogSoftmax
  layer): the model's own forward with hooks that capture each layer's input and
  output, and autograd for the δ's.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from byzbench.models.layout import ParamLayout

#: Per-client weight gradients with at least this many entries in all are written by
#: ``bmm`` directly into the strided output rows; smaller ones go through a temporary
#: and a copy. With one thread the direct write wins above ~10⁵ entries (25 × 30 × 784:
#: 0.48 ms against 0.58 ms). With several threads ``bmm`` into strided rows does not
#: share out small batches (25 × 10 × 784 on 2 threads: 0.25 ms direct, 0.12 ms through
#: a temporary), while for large ones the copy costs more than it saves (an 8 MB copy
#: inside the MLP's round), hence a higher limit.
DIRECT_BMM_MIN = 100_000
DIRECT_BMM_MIN_THREADED = 1_000_000

Backward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _elementwise_backward(module: nn.Module) -> Backward | None:
    """``backward(grad, z, a)`` → ∂ℓ/∂z for an elementwise layer a = act(z); None if unknown."""
    aten = torch.ops.aten
    kind = type(module)
    if kind is nn.ReLU:
        return lambda g, z, a: aten.threshold_backward(g, a, 0)
    if kind is nn.LeakyReLU:
        slope = module.negative_slope
        return lambda g, z, a: aten.leaky_relu_backward(g, z, slope, False)
    if kind is nn.Tanh:
        return lambda g, z, a: aten.tanh_backward(g, a)
    if kind is nn.Sigmoid:
        return lambda g, z, a: aten.sigmoid_backward(g, a)
    if kind is nn.GELU:
        approximate = module.approximate
        return lambda g, z, a: aten.gelu_backward(g, z, approximate=approximate)
    if kind is nn.SiLU:
        return lambda g, z, a: aten.silu_backward(g, z)
    if kind is nn.Identity:
        return lambda g, z, a: g
    return None


def feature_major_supported(model: nn.Module) -> bool:
    """Whether `FeatureMajorMLP` handles ``model``: a flat ``nn.Sequential`` of Linear layers,
    known elementwise activations and Dropout, with at most a leading ``Flatten``."""
    if type(model) is not nn.Sequential or not len(model):
        return False
    for i, module in enumerate(model):
        if isinstance(module, nn.Flatten):
            if i or module.start_dim != 1 or module.end_dim != -1:
                return False
        elif getattr(module, "inplace", False):
            return False
        elif not (type(module) in (nn.Linear, nn.Dropout) or _elementwise_backward(module) is not None):
            return False
    return type(model[-1]) is nn.Linear


def _client_weight_grads(delta_t: torch.Tensor, a_rows: torch.Tensor, target: torch.Tensor) -> None:
    """``target[c] = δ_cᵀ a_c`` for δᵀ ``[out, n·B]`` and ``a_rows[n, B, in]`` (any strides)."""
    n = target.shape[0]
    d3 = delta_t.view(delta_t.shape[0], n, -1).transpose(0, 1)  # [n, out, B]
    limit = DIRECT_BMM_MIN if torch.get_num_threads() == 1 else DIRECT_BMM_MIN_THREADED
    if target.numel() >= limit:
        torch.bmm(d3, a_rows, out=target)
    else:
        target.copy_(torch.bmm(d3, a_rows))


def _slots(model: nn.Module, layout: ParamLayout, m: nn.Module) -> tuple[slice, slice | None]:
    """The ``out`` columns of layer m's weight and bias (None without a bias)."""
    names = {id(p): name for name, p in model.named_parameters()}
    w = layout[names[id(m.weight)]]
    b = layout[names[id(m.bias)]] if m.bias is not None else None
    return slice(w.offset, w.stop), (slice(b.offset, b.stop) if b else None)


class FeatureMajorMLP:
    """Per-client gradients of a flat Linear/activation ``nn.Sequential``, written out by hand.

    Forward, feature-major: zᵀ = W aᵀ + b 1ᵀ per Linear, aᵀ = act(zᵀ) per activation, and
    for Dropout(p) aᵀ = zᵀ ⊙ m/(1 − p) with m ~ Bernoulli(1 − p) drawn from torch's
    global generator, like ``nn.Dropout``. Loss per sample: ℓ_s = logsumexp(z_s) − z_{s,y_s}.
    Backward: δ_L = (softmax(z_s) − e_{y_s}) / B; through a Linear gᵀ = Wᵀ δᵀ (not for the
    first layer), through an activation its backward kernel, through Dropout g ⊙ m/(1 − p).
    """

    def __init__(self, model: nn.Sequential, layout: ParamLayout, n: int) -> None:
        self.model, self.layout, self.n = model, layout, n
        self.flattens = isinstance(model[0], nn.Flatten)
        self.layers: list[tuple[nn.Module, object]] = [
            (m, _slots(model, layout, m) if type(m) is nn.Linear else _elementwise_backward(m))
            for m in model if not isinstance(m, nn.Flatten)
        ]
        self._hooked: HookedLayers | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out[n, d]``; return the ``[n]`` per-client mean losses."""
        if x.dim() != 2 and not self.flattens:
            # nn.Linear would act on the last axis of each sample: leave that to the model.
            self._hooked = self._hooked or HookedLayers(self.model, self.layout, self.n)
            return self._hooked(x, y, out)
        nb = x.shape[0]
        with torch.no_grad():
            a_t = x.reshape(nb, -1).t()
            saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input, output or dropout scale)
            for module, _ in self.layers:
                if type(module) is nn.Linear:
                    w, b = module.weight, module.bias
                    z_t = torch.mm(w, a_t) if b is None else torch.addmm(b.unsqueeze(1), w, a_t)
                    saved.append((a_t, z_t))
                elif type(module) is nn.Dropout:
                    scale = _dropout_scale(module, a_t)
                    z_t = a_t * scale
                    saved.append((a_t, scale))
                else:
                    z_t = module(a_t)
                    saved.append((a_t, z_t))
                a_t = z_t
            losses, delta_t = _cross_entropy_t(a_t, y, nb // self.n)
            for i in range(len(self.layers) - 1, -1, -1):
                delta_t = self._back(i, delta_t, *saved[i], out)
        return losses

    def _back(self, i: int, delta_t: torch.Tensor, a_in: torch.Tensor, z_out: torch.Tensor,
              out: torch.Tensor) -> torch.Tensor:
        """Layer i's share of the backward pass: its parameters' per-client gradients into
        ``out`` (a Linear), and ∂ℓ/∂(its input), feature-major (not for the first layer)."""
        module, extra = self.layers[i]
        if type(module) is nn.Dropout:
            return delta_t.mul_(z_out)
        if type(module) is not nn.Linear:
            return extra(delta_t, a_in, z_out)
        n = self.n
        ws, bs = extra
        fan_in = module.in_features
        rows = a_in.t()  # [n·B, in] sample-major: contiguous for the input, strided after
        rows = rows.view(n, -1, fan_in) if rows.is_contiguous() else a_in.view(fan_in, n, -1).permute(1, 2, 0)
        _client_weight_grads(delta_t, rows, out[:, ws].view(n, module.out_features, fan_in))
        if bs is not None:
            out[:, bs].copy_(delta_t.view(delta_t.shape[0], n, -1).sum(dim=2).t())
        return torch.mm(module.weight.t(), delta_t) if i else delta_t


def _dropout_scale(module: nn.Dropout, a_t: torch.Tensor) -> torch.Tensor:
    """m/(1 − p), m ~ Bernoulli(1 − p) from torch's global generator (zeros when p = 1)."""
    p = module.p if module.training else 0.0
    if p <= 0:
        return torch.ones_like(a_t)
    if p >= 1:
        return torch.zeros_like(a_t)
    return torch.empty_like(a_t).bernoulli_(1 - p).div_(1 - p)


def _cross_entropy_t(z_t: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-client mean cross-entropy ``[n]`` and δᵀ = (softmax − one-hot)/B ``[C, n·B]`` from
    feature-major logits zᵀ ``[C, n·B]``: with log-probabilities ℓ = log_softmax(zᵀ) (over
    the classes, axis 0), loss_s = −ℓ[y_s, s] and δᵀ = (exp ℓ − e_y)/B."""
    log_p = torch.log_softmax(z_t, dim=0)
    picked = y.unsqueeze(0)
    losses = log_p.gather(0, picked).view(-1, batch).mean(dim=1).neg_()
    delta = log_p.exp_()
    delta.scatter_add_(0, picked, torch.full(picked.shape, -1.0, dtype=delta.dtype, device=delta.device))
    return losses, delta.div_(batch)


def _client_conv_grads(m: nn.Conv2d, a: torch.Tensor, delta: torch.Tensor, n: int,
                       out_w: torch.Tensor, out_b: torch.Tensor | None) -> None:
    """Per-client weight and bias gradients of a Conv2d from its inputs ``a[n·B, C, H, W]``
    and output gradients ``δ[n·B, O, H', W']``, summed over each client's B samples.

    The clients become groups: with the batch laid out ``[B, n·C, H, W]`` and
    ``[B, n·O, H', W']``, the weight gradient of one convolution with n·g groups (g the
    layer's own groups) is the n clients' gradients side by side, ``[n·O, C/g, kh, kw]``.
    """
    batch = a.shape[0] // n
    c, h, w = a.shape[1:]
    o, ho, wo = delta.shape[1:]
    a_g = a.view(n, batch, c, h, w).transpose(0, 1).reshape(batch, n * c, h, w)
    d_g = delta.reshape(n, batch, o, ho, wo).transpose(0, 1).reshape(batch, n * o, ho, wo)
    weight = m.weight.detach().repeat(n, 1, 1, 1)  # the grouped layer's weight shape
    _, grad_w, _ = torch.ops.aten.convolution_backward(
        d_g, a_g, weight, None, m.stride, m.padding, m.dilation, False, [0, 0], n * m.groups,
        [False, True, False])
    out_w.copy_(grad_w.view(n, -1))
    if out_b is not None:
        out_b.copy_(delta.reshape(n, batch, o, -1).sum(dim=(1, 3)))


class HookedLayers:
    """Per-client gradients of any model whose parameters all sit in Linear and Conv2d
    layers, through its own forward: hooks capture each layer's input a and output z,
    autograd gives δ = ∂(Σ_s ℓ_s / B)/∂z, and each layer sums δ_s ⊗ a_s per client (one
    batched matmul for a Linear, one grouped weight-gradient convolution for a Conv2d)."""

    LAYERS = (nn.Linear, nn.Conv2d)

    def __init__(self, model: nn.Module, layout: ParamLayout, n: int) -> None:
        self.model, self.n = model, n
        self._layers = [m for m in model.modules() if isinstance(m, self.LAYERS)]
        self._slots = [_slots(model, layout, m) for m in self._layers]
        self._captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        for m in self._layers:
            m.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            self._captured.append((inputs[0], output))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out[n, d]``; return the ``[n]`` per-client mean losses."""
        n = self.n
        self._captured.clear()
        per_sample = F.cross_entropy(self.model(x), y, reduction="none")
        captured, self._captured = self._captured, []
        if len(captured) != len(self._layers):
            raise RuntimeError("fused strategy: a layer with parameters ran more than once per forward")
        batch = per_sample.shape[0] // n
        deltas = torch.autograd.grad(per_sample.sum() / batch, [o for _, o in captured])
        for (a, _), delta, m, (ws, bs) in zip(captured, deltas, self._layers, self._slots):
            a = a.detach()
            if isinstance(m, nn.Conv2d):
                _client_conv_grads(m, a, delta, n, out[:, ws], None if bs is None else out[:, bs])
                continue
            delta_t = delta.reshape(-1, m.out_features).t()
            _client_weight_grads(delta_t, a.reshape(n, -1, m.in_features),
                                 out[:, ws].view(n, m.out_features, m.in_features))
            if bs is not None:
                torch.sum(delta.reshape(n, -1, m.out_features), dim=1, out=out[:, bs])
        return per_sample.detach().view(n, -1).mean(dim=1)
