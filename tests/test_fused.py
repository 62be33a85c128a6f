"""The fused client-gradient strategy: its feature-major and hooked implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byzbench.models import bind_flat
from byzbench.sim.fused import FeatureMajorMLP, HookedLayers, feature_major_supported
from helpers import reference_grads

N, BATCH, IN, CLASSES = 6, 5, 12, 4


def stack(*layers: nn.Module) -> nn.Sequential:
    torch.manual_seed(7)
    return nn.Sequential(*layers)


FLAT = {
    "logistic": lambda: stack(nn.Flatten(), nn.Linear(IN, CLASSES)),
    "relu": lambda: stack(nn.Flatten(), nn.Linear(IN, 9), nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, CLASSES)),
    "tanh": lambda: stack(nn.Linear(IN, 9), nn.Tanh(), nn.Linear(9, CLASSES)),
    "sigmoid": lambda: stack(nn.Linear(IN, 9), nn.Sigmoid(), nn.Linear(9, CLASSES)),
    "gelu": lambda: stack(nn.Linear(IN, 9), nn.GELU(), nn.Linear(9, CLASSES)),
    "gelu_tanh": lambda: stack(nn.Linear(IN, 9), nn.GELU(approximate="tanh"), nn.Linear(9, CLASSES)),
    "silu": lambda: stack(nn.Linear(IN, 9), nn.SiLU(), nn.Linear(9, CLASSES)),
    "leaky": lambda: stack(nn.Linear(IN, 9), nn.LeakyReLU(0.2), nn.Linear(9, CLASSES)),
    "no_bias": lambda: stack(nn.Linear(IN, 9, bias=False), nn.ReLU(), nn.Identity(), nn.Linear(9, CLASSES, bias=False)),
    "dropout_eval_like": lambda: stack(nn.Linear(IN, 9), nn.Dropout(0.0), nn.ReLU(), nn.Linear(9, CLASSES)),
}


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N * BATCH, 1, 3, 4, generator=gen) * 2
    y = torch.randint(0, CLASSES, (N * BATCH,), generator=gen)
    return x, y


def flat_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`data` with each sample as one row of IN features."""
    x, y = data(seed)
    return x.reshape(N * BATCH, IN), y


def reference_error(impl: type, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest |difference| between ``impl``'s per-client gradients and the plain loop's."""
    _, layout = bind_flat(model)
    out = torch.full((N, layout.dim), float("nan"))
    impl(model, layout, N)(x, y, out)
    return float((out - reference_grads(model, x, y, N)).abs().max())


def per_client_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([F.cross_entropy(model(xc), yc) for xc, yc in
                        zip(x.view(N, -1, *x.shape[1:]), y.view(N, -1))]).detach()


@pytest.mark.parametrize("name", sorted(FLAT))
@pytest.mark.parametrize("impl", [FeatureMajorMLP, HookedLayers])
def test_both_implementations_match_the_per_client_reference(name, impl):
    model = FLAT[name]()
    assert feature_major_supported(model)
    _, layout = bind_flat(model)
    x, y = data()
    x = x if isinstance(model[0], nn.Flatten) else x.reshape(N * BATCH, IN)
    expected = reference_grads(model, x, y, N)
    out = torch.full((N, layout.dim), float("nan"))
    losses = impl(model, layout, N)(x, y, out)
    assert (out - expected).abs().max() <= 1e-5
    assert torch.allclose(losses, per_client_losses(model, x, y), atol=1e-6)


@pytest.mark.parametrize("model, reason", [
    (nn.Sequential(nn.Linear(IN, 5), nn.Sequential(nn.ReLU(), nn.Linear(5, CLASSES))), "nested"),
    (nn.Sequential(nn.Linear(IN, CLASSES), nn.LogSoftmax(dim=1)), "not elementwise"),
    (nn.Sequential(nn.Linear(IN, 5), nn.ReLU(inplace=True), nn.Linear(5, CLASSES)), "in place"),
    (nn.Sequential(nn.Linear(IN, 5), nn.Flatten(), nn.Linear(5, CLASSES)), "flatten not first"),
    (nn.Sequential(nn.Linear(IN, 5), nn.ReLU()), "last layer not linear"),
    (nn.Sequential(nn.Linear(IN, 5), nn.Softplus(), nn.Linear(5, CLASSES)), "activation without a kernel here"),
])
def test_other_linear_models_take_the_hooked_path(model, reason):
    assert not feature_major_supported(model), reason


def test_hooked_path_on_a_nested_model_matches_the_reference():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(IN, 5), nn.Sequential(nn.Softplus(), nn.Linear(5, CLASSES)))
    assert reference_error(HookedLayers, model, *flat_data(1)) <= 1e-5


def test_dropout_mask_is_applied_in_forward_and_backward():
    """With Dropout(p) the gradients are those of the network whose hidden units are
    multiplied by the drawn mask m/(1 − p): replay the draw from the same global seed."""
    p, hidden = 0.4, 9
    model = stack(nn.Linear(IN, hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, CLASSES)).train()
    _, layout = bind_flat(model)
    x, y = flat_data(2)
    out = torch.empty(N, layout.dim)
    torch.manual_seed(11)
    losses = FeatureMajorMLP(model, layout, N)(x, y, out)
    torch.manual_seed(11)
    scale = torch.empty(hidden, N * BATCH).bernoulli_(1 - p).div_(1 - p).t()  # the same draw, sample-major
    assert (scale == 0).any() and (scale > 0).any()
    lin1, lin2 = model[0], model[3]
    rows, ref_losses = [], []
    for c in range(N):
        part = slice(c * BATCH, (c + 1) * BATCH)
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(lin2(torch.relu(lin1(x[part])) * scale[part]), y[part])
        loss.backward()
        rows.append(torch.cat([q.grad.reshape(-1) for q in model.parameters()]))
        ref_losses.append(loss.detach())
    assert (out - torch.stack(rows)).abs().max() <= 1e-5
    assert torch.allclose(losses, torch.stack(ref_losses), atol=1e-6)


def test_dropout_in_eval_mode_is_the_identity():
    model = stack(nn.Linear(IN, 9), nn.Dropout(0.9), nn.ReLU(), nn.Linear(9, CLASSES)).eval()
    assert reference_error(FeatureMajorMLP, model, *flat_data(3)) <= 1e-5


def test_extreme_logits_give_finite_gradients_and_the_exact_loss():
    """The loss is computed as logsumexp − z_y: logits of ±1e4 neither overflow nor lose it."""
    model = stack(nn.Linear(IN, CLASSES))
    with torch.no_grad():
        model[0].weight.mul_(3e3)
    _, layout = bind_flat(model)
    x, y = flat_data(4)
    out = torch.empty(N, layout.dim)
    losses = FeatureMajorMLP(model, layout, N)(x, y, out)
    assert torch.isfinite(out).all() and torch.isfinite(losses).all()
    assert torch.allclose(losses, per_client_losses(model, x, y), rtol=1e-5)
    assert (out - reference_grads(model, x, y, N)).abs().max() <= 1e-3 * out.abs().max()


def test_a_stack_without_flatten_leaves_multi_axis_samples_to_the_model():
    """Without a leading Flatten, nn.Linear acts on the last axis of a [N·B, 3, 4] batch:
    Linear(12, ·) cannot take it. The feature-major path must not flatten it silently
    into a model the user did not write; it defers to the model, which refuses it."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(12, CLASSES))
    assert feature_major_supported(model)
    _, layout = bind_flat(model)
    x, y = data(5)
    x = x.reshape(N * BATCH, 3, 4)
    with pytest.raises(RuntimeError):
        model(x)
    with pytest.raises(RuntimeError):
        FeatureMajorMLP(model, layout, N)(x, y, torch.empty(N, layout.dim))
    flat = x.reshape(N * BATCH, 12)  # the same samples as rows: fine
    out = torch.empty(N, layout.dim)
    FeatureMajorMLP(model, layout, N)(flat, y, out)
    assert (out - reference_grads(model, flat, y, N)).abs().max() <= 1e-5


@pytest.mark.parametrize("conv", [
    dict(in_channels=2, out_channels=4, kernel_size=3),
    dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 3), dilation=(1, 2), padding=(1, 0), groups=2),
])
def test_convolutions_match_the_per_client_reference(conv):
    """Per-client Conv2d gradients from one grouped weight-gradient convolution (clients
    as groups), with strides, padding, dilation, layer groups and no bias."""
    torch.manual_seed(8)
    layer = nn.Conv2d(**conv)
    model = nn.Sequential(layer, nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.LazyLinear(CLASSES))
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(N * BATCH, conv["in_channels"], 9, 10, generator=gen)
    y = torch.randint(0, CLASSES, (N * BATCH,), generator=gen)
    model(x)  # materialise the lazy layer
    _, layout = bind_flat(model)
    out = torch.full((N, layout.dim), float("nan"))
    losses = HookedLayers(model, layout, N)(x, y, out)
    assert (out - reference_grads(model, x, y, N)).abs().max() <= 1e-5
    assert torch.allclose(losses, per_client_losses(model, x, y), atol=1e-6)


@pytest.mark.parametrize("direct", [True, False])
def test_weight_gradients_written_directly_or_through_a_temporary_agree(direct, monkeypatch):
    """Both ways of placing the per-client products in the [n, d] rows (bmm into the
    strided rows with one thread, a temporary and a copy otherwise) give the reference."""
    import byzbench.sim.fused as fused

    monkeypatch.setattr(fused, "DIRECT_BMM_MIN", 0 if direct else 10**12)
    monkeypatch.setattr(fused, "DIRECT_BMM_MIN_THREADED", 0 if direct else 10**12)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert reference_error(FeatureMajorMLP, FLAT["relu"](), *data(6)) <= 1e-5
    finally:
        torch.set_num_threads(threads)
