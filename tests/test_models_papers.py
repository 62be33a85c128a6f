"""The seed papers' models: parameter counts, layer shapes, flags, per-client gradients
under every strategy (vmap = loop = a plain per-client reference), dropout under vmap,
and the per-client batch normalisation with its evaluation modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from byzbench.errors import ConfigError
from byzbench.models import MODELS, bind_flat, build_model
from byzbench.models.papers import (
    BasicBlock,
    ClientBatchNorm2d,
    _Norm,
    update_norm_stats,
)
from byzbench.sim.clients import ClientGradients, choose_strategy, fused_supported
from helpers import reference_grads

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster


def build(name: str, params: dict | None = None, shape=MNIST, classes: int = 10, seed: int = 0) -> nn.Module:
    return build_model(name, params or {}, shape, classes, seed=seed)


def dim(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- parameter counts
COUNTS = [
    ("lenet5", {}, MNIST, 10, 61_706),  # §6.3
    ("mnist_cnn", {}, MNIST, 10, 1_199_882),  # §6.2
    ("mnist_cnn", {"conv2_relu": True}, MNIST, 10, 1_199_882),
    ("mlp2", {}, MNIST, 10, 407_050),  # §6.4 MLP_big
    ("mlp2", {"variant": "small"}, MNIST, 10, 52_650),  # §6.4 MLP_small
    ("cnn2", {}, MNIST, 10, 431_080),  # §6.4 MNIST_NET
    ("alexnet", {}, CIFAR, 10, 2_472_266),  # §6.5
    ("resnet20", {}, CIFAR, 10, 269_722),  # §6.6 canonical
    ("resnet20", {"norm": "group"}, CIFAR, 10, 269_722),
    ("resnet20", {"variant": "cku"}, CIFAR, 10, 696_618),  # §6.6 CRYPTO-KU
    ("resnet20_cku", {}, CIFAR, 10, 696_618),
    ("resnet18", {}, CIFAR, 1000, 11_689_512),  # torchvision's count
    ("resnet18", {}, CIFAR, 12, 11_182_668),  # STRIKE ImageNet-12
    ("femnist_cnn", {}, MNIST, 62, 848_382),  # §6.7
    ("mixtailor_cnn", {}, CIFAR, 10, 3_420_802),  # §6.7
    ("mixtailor_mnist", {}, MNIST, 10, 21_840),  # §6.7 MNISTNet
    ("mixtailor_mnist", {"arch": "mlp"}, MNIST, 10, 79_510),  # §6.7 the code's "cnn"
]


@pytest.mark.parametrize("name,params,shape,classes,d", COUNTS)
def test_parameter_count_matches_the_spec(name, params, shape, classes, d):
    model = build(name, params, shape, classes)
    assert dim(model) == d
    assert model(torch.zeros(2, *shape)).shape == (2, classes)


def test_layer_shapes_of_the_small_models():
    shapes = lambda m: [tuple(p.shape) for p in m.parameters()]
    assert shapes(build("mnist_cnn")) == [(32, 1, 3, 3), (32,), (64, 32, 3, 3), (64,), (128, 9216), (128,), (10, 128), (10,)]
    assert shapes(build("cnn2")) == [(20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,), (10, 500), (10,)]
    assert shapes(build("femnist_cnn", classes=62)) == [
        (16, 1, 5, 5), (16,), (32, 16, 5, 5), (32,), (512, 1568), (512,), (62, 512), (62,)]
    assert shapes(build("mixtailor_mnist")) == [(10, 1, 5, 5), (10,), (20, 10, 5, 5), (20,), (50, 320), (50,), (10, 50), (10,)]
    assert shapes(build("mixtailor_cnn", shape=CIFAR)) == [
        (64, 3, 5, 5), (64,), (128, 64, 5, 5), (128,), (1000, 3200), (1000,), (10, 1000), (10,)]
    convs = [m for m in build("alexnet", shape=CIFAR).modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]) for m in convs] == [
        (3, 64, 11, 4, 5), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]


def test_resnet20_layouts():
    canon, cku = build("resnet20", shape=CIFAR), build("resnet20_cku", shape=CIFAR)
    for model, widths, blocks in ((canon, (16, 32, 64), 3), (cku, (32, 64, 128), 2)):
        stages = [model.layer1, model.layer2, model.layer3]
        assert [len(s) for s in stages] == [blocks] * 3
        assert [s[0].conv2.out_channels for s in stages] == list(widths)
        assert [s[0].conv1.stride[0] for s in stages] == [1, 2, 2]
        assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
        assert model.linear.in_features == widths[-1]
        assert sum(isinstance(m, ClientBatchNorm2d) for m in model.modules()) == 1 + 6 * blocks + (
            0 if model is canon else 2)
    # option A: no shortcut parameters; option B: 1×1 conv + norm on stages 2 and 3
    assert not list(canon.layer2[0].shortcut.parameters())
    assert [tuple(p.shape) for p in cku.layer2[0].shortcut.parameters()] == [(64, 32, 1, 1), (64,), (64,)]


def test_resnet20_shortcut_flag_both_settings():
    # canonical widths with option B: + (16·32 + 2·32) + (32·64 + 2·64) parameters
    assert dim(build("resnet20", {"shortcut": "B"}, CIFAR)) == 269_722 + 576 + 2_176
    assert dim(build("resnet20_cku", {"shortcut": "A"}, CIFAR)) == 696_618 - 2_176 - 8_448


def test_option_a_shortcut_is_zero_padded_subsampling():
    block = BasicBlock(4, 8, 2, "A", _Norm("none", 32, "batch", 0.1))
    for conv in (block.conv1, block.conv2):
        nn.init.zeros_(conv.weight)
    x = torch.randn(2, 4, 6, 6)
    expected = torch.zeros(2, 8, 3, 3)
    expected[:, 2:6] = x[:, :, ::2, ::2]
    assert torch.equal(block(x), F.relu(expected))


def test_init_flag_both_settings():
    torch.manual_seed(0)
    kaiming = build("resnet20", shape=CIFAR).layer3[1].conv1.weight.detach()  # fan_in 576
    assert abs(float(kaiming.std()) / (2 / 576) ** 0.5 - 1) < 0.03
    default = build("resnet20", {"init": "torch"}, CIFAR).layer3[1].conv1.weight.detach()
    assert float(default.abs().max()) <= 1 / 576**0.5  # torch's uniform(±1/√fan_in)
    cku = build("resnet20_cku", shape=CIFAR).layer3[1].conv1.weight.detach()  # fan_in 1152
    assert float(cku.abs().max()) <= 1 / 1152**0.5
    assert abs(float(build("resnet20_cku", {"init": "kaiming"}, CIFAR).layer3[1].conv1.weight.detach().std())
               / (2 / 1152) ** 0.5 - 1) < 0.03


def test_mnist_cnn_conv2_relu_flag_both_settings():
    plain, relu = build("mnist_cnn"), build("mnist_cnn", {"conv2_relu": True})
    kinds = lambda m: [type(x).__name__ for x in m][:5]
    assert kinds(plain) == ["Conv2d", "ReLU", "Conv2d", "MaxPool2d", "Dropout"]
    assert kinds(relu) == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    with torch.no_grad():
        for a, b in zip(relu.parameters(), plain.parameters()):
            a.copy_(b)
    plain.eval(), relu.eval()
    x = torch.randn(3, *MNIST)
    assert (plain[:3](x) < 0).any() and torch.equal(F.relu(plain[:3](x)), relu[:4](x))
    assert not torch.allclose(plain(x), relu(x))


def test_dropout_settings_and_variants():
    assert [m.p for m in build("mnist_cnn").modules() if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    assert [m.p for m in build("mlp2").modules() if isinstance(m, nn.Dropout)] == [0.2]
    assert not [m for m in build("mlp2", {"variant": "small"}).modules() if isinstance(m, nn.Dropout)]
    assert [m.p for m in build("mlp2", {"variant": "small", "dropout": 0.1}).modules()
            if isinstance(m, nn.Dropout)] == [0.1, 0.1]
    tailor = [type(m).__name__ for m in build("mixtailor_cnn", shape=CIFAR) if "Dropout" in type(m).__name__]
    assert tailor == ["Dropout2d", "Dropout", "Dropout"]
    assert build("mixtailor_cnn", shape=CIFAR)[0].p == 0.2
    mnist = [type(m).__name__ for m in build("mixtailor_mnist") if "Dropout" in type(m).__name__]
    assert mnist == ["Dropout2d", "Dropout"]
    assert not [m for m in build("mnist_cnn", {"dropout1": 0.0, "dropout2": 0.0}).modules()
                if isinstance(m, nn.Dropout)]


def test_group_norm_groups_are_capped_at_the_width():
    model = build("resnet20", {"norm": "group"}, CIFAR)
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(gns) == 19 and not [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {(m.num_channels, m.num_groups) for m in gns} == {(16, 16), (32, 32), (64, 32)}
    assert {m.num_groups for m in build("resnet20_cku", {"norm": "group", "groups": 4}, CIFAR).modules()
            if isinstance(m, nn.GroupNorm)} == {4}
    none = build("resnet20", {"norm": "none"}, CIFAR)
    assert dim(none) == 269_722 - 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    assert not [m for m in none.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert len([m for m in build("alexnet", {"norm": "batch"}, CIFAR) if isinstance(m, ClientBatchNorm2d)]) == 5


def test_names_and_aliases():
    assert MODELS.canonical("mlp_big") == "mlp2"
    assert MODELS.canonical("mnistnet") == MODELS.canonical("mnist_net") == "cnn2"
    assert MODELS.canonical("alexnet_cifar") == "alexnet"
    assert MODELS.canonical("femnistnet") == "femnist_cnn"
    assert MODELS.canonical("mixtailor_cifar_cnn") == "mixtailor_cnn"
    assert MODELS.canonical("cnn_seed001") == "mnist_cnn"
    assert MODELS.create("resnet20_cku").variant == "cku"
    assert {p.name for p in MODELS.entry("resnet20_cku").params} >= {"variant", "norm", "groups", "bn_eval", "shortcut"}


# ---------------------------------------------------------------- validation
BAD = [
    ("mnist_cnn", {"dropout1": 1.0}, "dropout1"),
    ("mnist_cnn", {"dropout2": -0.1}, "dropout2"),
    ("mnist_cnn", {"conv2_relu": 1}, "conv2_relu"),
    ("mlp2", {"variant": "huge"}, "variant"),
    ("mlp2", {"dropout": "0.2"}, "dropout"),
    ("alexnet", {"norm": "layer"}, "norm"),
    ("alexnet", {"norm": "group", "groups": 5}, "groups"),
    ("resnet20", {"groups": 0}, "groups"),
    ("resnet20", {"norm": "group", "groups": 3}, "groups"),
    ("resnet20", {"bn_eval": "mean"}, "bn_eval"),
    ("resnet20", {"bn_momentum": 0.0}, "bn_momentum"),
    ("resnet20", {"variant": "resnet32"}, "variant"),
    ("resnet20", {"shortcut": "C"}, "shortcut"),
    ("resnet20", {"init": "xavier"}, "init"),
    ("resnet20_cku", {"bn_momentum": 1.5}, "bn_momentum"),
    ("resnet18", {"norm": "instance"}, "norm"),
    ("mixtailor_cnn", {"input_dropout": 1}, "input_dropout"),
    ("mixtailor_mnist", {"arch": "lenet"}, "arch"),
]


@pytest.mark.parametrize("name,params,param", BAD)
def test_bad_parameters_name_the_parameter(name, params, param):
    with pytest.raises(ConfigError) as err:
        MODELS.create(name, "model", **params)
    assert err.value.key == f"model.{param}"
    assert param in str(err.value)


@pytest.mark.parametrize("name", ["mnist_cnn", "cnn2", "alexnet", "resnet20", "resnet18", "femnist_cnn",
                                  "mixtailor_cnn", "mixtailor_mnist"])
def test_image_models_refuse_flat_inputs(name):
    with pytest.raises(ValueError, match=name):
        build(name, shape=(784,))


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="too small"):
        build("cnn2", shape=(1, 10, 10))


# ---------------------------------------------------------------- per-client gradients
NO_DROPOUT = [
    ("lenet5", {}, MNIST),
    ("mnist_cnn", {"dropout1": 0.0, "dropout2": 0.0}, MNIST),
    ("mnist_cnn", {"dropout1": 0.0, "dropout2": 0.0, "conv2_relu": True}, MNIST),
    ("mlp2", {"dropout": 0.0}, MNIST),
    ("mlp2", {"variant": "small"}, MNIST),
    ("cnn2", {}, MNIST),
    ("alexnet", {}, CIFAR),
    ("alexnet", {"norm": "batch"}, CIFAR),
    ("resnet20", {}, CIFAR),
    ("resnet20", {"norm": "group"}, CIFAR),
    ("resnet20", {"norm": "none"}, CIFAR),
    ("resnet20", {"bn_eval": "running"}, CIFAR),
    ("resnet20_cku", {}, CIFAR),
    ("resnet20_cku", {"norm": "group"}, CIFAR),
    ("femnist_cnn", {}, MNIST),
    ("mixtailor_cnn", {"input_dropout": 0.0, "dropout": 0.0}, CIFAR),
    ("mixtailor_mnist", {"dropout": 0.0}, MNIST),
    ("mixtailor_mnist", {"arch": "mlp"}, MNIST),
]



def client_batches(shape, n=3, batch=2, classes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n * batch, *shape, generator=gen), torch.randint(0, classes, (n * batch,), generator=gen)


def strategy_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    _, layout = bind_flat(model)
    grads = {}
    for strategy in ["vmap", "loop"] + (["fused"] if fused_supported(model) else []):
        out = torch.full((n, layout.dim), float("nan"), dtype=x.dtype)
        ClientGradients(model, layout, n, strategy)(x, y, out)
        grads[strategy] = out
    return grads


@pytest.mark.parametrize("name,params,shape", NO_DROPOUT)
def test_vmap_and_loop_give_the_reference_per_client_gradients(name, params, shape):
    """In float64, so that the comparison tests the strategies and not float32 rounding
    (a pre-activation within rounding of a ReLU kink, or a norm over few values, can move
    one float32 gradient by 1e-3); the float32 runs are checked below."""
    n = 3
    model = build(name, params, shape, seed=1).double()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x, y = client_batches(shape, n)
    x = x.double()
    grads = strategy_grads(model, x, y, n)
    expected = reference_grads(model, x, y, n)
    scale = max(1.0, float(expected.abs().max()))
    for strategy, out in grads.items():
        assert float((out - expected).abs().max()) <= 1e-5 * scale, strategy
        assert float((out - grads["loop"]).abs().max()) <= 1e-5 * scale, strategy
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())  # no running-stat drift
    # fused: plain stacks of Linear/Conv2d and per-sample layers (no normalisation, no residual blocks)
    assert fused_supported(model) == (not name.startswith("resnet") and params.get("norm") is None)


FLOAT32 = ["lenet5", "cnn2", "alexnet", "resnet20", "resnet20_cku", "femnist_cnn", "mixtailor_mnist"]


@pytest.mark.parametrize("name", FLOAT32)
def test_float32_strategies_agree_on_the_default_models(name):
    shape = CIFAR if name.startswith(("alexnet", "resnet")) else MNIST
    n = 3
    model = build(name, {"dropout": 0.0} if name == "mixtailor_mnist" else {}, shape, seed=1)
    x, y = client_batches(shape, n)
    grads = strategy_grads(model, x, y, n)
    assert float((grads["vmap"] - grads["loop"]).abs().max()) <= 1e-5


def test_resnet18_strategies_agree():
    """11.7M parameters: float32 only, on 48×48 images so that the last stage keeps 2×2
    positions (on 32×32 it normalises 2 values per channel and the gradients reach 10³)."""
    n, shape = 3, (3, 48, 48)
    model = build("resnet18", {}, shape, seed=1)
    x, y = client_batches(shape, n)
    grads = strategy_grads(model, x, y, n)
    assert float(grads["loop"].abs().max()) < 100
    assert float((grads["vmap"] - grads["loop"]).abs().max()) <= 1e-5


DROPOUT = [
    ("mnist_cnn", {}, {"dropout1": 0.0, "dropout2": 0.0}, MNIST),
    ("mlp2", {}, {"dropout": 0.0}, MNIST),
    ("mixtailor_cnn", {}, {"input_dropout": 0.0, "dropout": 0.0}, CIFAR),
    ("mixtailor_mnist", {}, {"dropout": 0.0}, MNIST),
]


@pytest.mark.parametrize("name,with_dropout,without,shape", DROPOUT)
def test_vmap_draws_different_dropout_masks_per_client(name, with_dropout, without, shape):
    n = 3
    x1, y1 = client_batches(shape, n=1, batch=4)
    x, y = x1.repeat(n, *[1] * len(shape)), y1.repeat(n)  # identical client batches
    for params, differ in ((with_dropout, True), (without, False)):
        model = build(name, params, shape, seed=2)
        _, layout = bind_flat(model)
        out = torch.empty(n, layout.dim)
        torch.manual_seed(0)
        ClientGradients(model, layout, n, "vmap")(x, y, out)
        gaps = [float((out[i] - out[0]).abs().max()) for i in range(1, n)]
        if differ:
            assert min(gaps) > 1e-4, params
        else:
            assert max(gaps) <= 1e-6, params


def test_auto_strategy_for_paper_models():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_strategy("auto", build("mlp2"), cpu) == "fused"
    assert choose_strategy("auto", build("resnet20", shape=CIFAR), cpu) == "loop"  # batch norm
    assert choose_strategy("auto", build("lenet5"), cpu) == "fused"
    assert choose_strategy("auto", build("resnet20", shape=CIFAR), cuda) == "vmap"


# ---------------------------------------------------------------- batch normalisation
def torch_bn(layer: ClientBatchNorm2d) -> nn.BatchNorm2d:
    ref = nn.BatchNorm2d(layer.num_features, momentum=layer.momentum).double()
    with torch.no_grad():
        ref.weight.copy_(layer.weight)
        ref.bias.copy_(layer.bias)
    return ref


def randomise(layer: nn.BatchNorm2d, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.num_features, generator=gen) + 0.5)
        layer.bias.copy_(torch.randn(layer.num_features, generator=gen))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), batch=st.integers(1, 3), channels=st.integers(1, 4), side=st.integers(2, 4),
       seed=st.integers(0, 1000), shift=st.floats(-100, 100))
def test_client_batch_norm_matches_torch_per_client(n, batch, channels, side, seed, shift):
    layer = ClientBatchNorm2d(channels, "running")
    randomise(layer, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n * batch, channels, side, side, generator=gen) * 3 + shift
    # training forward = torch's training BatchNorm on the batch given; no buffer written
    ref = torch_bn(layer)
    assert torch.allclose(layer(x).double(), ref(x.double()), atol=1e-4)
    assert int(layer.num_batches_tracked) == 0 and torch.equal(layer.running_mean, torch.zeros(channels))
    # grouped (update) forward = each client's slice normalised on its own
    model = nn.Sequential(layer)
    layer.record_groups = n
    grouped = layer(x)
    layer.record_groups = 0
    per_client = torch.cat([layer(xc) for xc in x.view(n, batch, *x.shape[1:])])
    assert torch.allclose(grouped, per_client, atol=1e-4)
    layer.num_batches_tracked.zero_()
    layer.running_mean.zero_()
    layer.running_var.fill_(1)
    assert update_norm_stats(model, x, n) == 1
    # running statistics = one torch-style update with the clients' mean statistics
    refs = [torch_bn(layer) for _ in range(n)]
    for r, xc in zip(refs, x.double().view(n, batch, *x.shape[1:])):
        r(xc)
    mean = torch.stack([r.running_mean for r in refs]).mean(0)
    var = torch.stack([r.running_var for r in refs]).mean(0)
    assert torch.allclose(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
    assert torch.allclose(layer.running_var.double(), var, rtol=1e-5, atol=1e-5)
    assert int(layer.num_batches_tracked) == 1


def test_bn_eval_batch_normalises_the_evaluated_batch():
    model = build("resnet20", {}, CIFAR, seed=5)
    x, _ = client_batches(CIFAR, n=1, batch=4)
    train = model.train()(x)
    assert torch.allclose(model.eval()(x), train, atol=1e-6)
    assert update_norm_stats(model, x, 1) == 0  # nothing to maintain
    assert all(m.running_mean is None for m in model.modules() if isinstance(m, ClientBatchNorm2d))


def hooked_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Inputs of every norm layer in a plain training forward of ``x``."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().double()))
             for m in model.modules() if isinstance(m, ClientBatchNorm2d)]
    model.train()(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("name", ["resnet20", "resnet20_cku"])
def test_running_stats_follow_the_clients_mean_statistics(name):
    n, momentum = 3, 0.25
    model = build(name, {"bn_eval": "running", "bn_momentum": momentum}, CIFAR, seed=6)
    layers = [m for m in model.modules() if isinstance(m, ClientBatchNorm2d)]
    x, y = client_batches(CIFAR, n, batch=3)
    before = model.eval()(x)  # torch's initial running statistics (0, 1) before any update
    assert torch.isfinite(before).all()
    # reference: each client's own training forward, statistics per layer, mean over clients
    per_client = [hooked_inputs(model, xc) for xc in x.view(n, 3, *CIFAR)]
    assert update_norm_stats(model, x, n) == len(layers)
    assert model.training  # mode restored
    for k, layer in enumerate(layers):
        inputs = [pc[k] for pc in per_client]
        mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in inputs]).mean(0)
        var = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in inputs]).mean(0)
        assert torch.allclose(layer.running_mean.double(), momentum * mean, rtol=1e-4, atol=1e-5)
        assert torch.allclose(layer.running_var.double(), (1 - momentum) + momentum * var, rtol=1e-4, atol=1e-5)
    # evaluation now uses the running statistics, not the batch's
    out = model.eval()(x[:2])
    first = layers[0]
    stem = F.batch_norm(model.conv1(x[:2]), first.running_mean, first.running_var, first.weight, first.bias, False, 0.0,
                        first.eps)
    assert torch.allclose(first(model.conv1(x[:2])), stem)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # training gradients are unchanged by the running statistics
    _, layout = bind_flat(model)
    a = torch.empty(n, layout.dim)
    ClientGradients(model, layout, n, "loop")(x, y, a)
    fresh = build(name, {"bn_eval": "batch"}, CIFAR, seed=6)
    _, layout2 = bind_flat(fresh)
    b = torch.empty(n, layout2.dim)
    ClientGradients(fresh, layout2, n, "loop")(x, y, b)
    assert torch.allclose(a, b, atol=1e-6)


def test_update_norm_stats_leaves_the_dropout_stream_alone():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), ClientBatchNorm2d(2, "running"), nn.Dropout(0.5), nn.Flatten())
    x = torch.randn(4, 1, 5, 5)
    torch.manual_seed(3)
    update_norm_stats(model, x, 2)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))


def test_update_norm_stats_checks_its_arguments():
    model = build("resnet20", {"bn_eval": "running"}, CIFAR)
    x = torch.randn(5, *CIFAR)
    with pytest.raises(ValueError, match="multiple of n"):
        update_norm_stats(model, x, 2)
    with pytest.raises(ValueError, match="n"):
        update_norm_stats(model, x, 0)


# ---------------------------------------------------------------- engine
def test_resnet20_trains_in_the_engine_with_vmap_and_loop():
    from byzbench.config import ExperimentConfig
    from byzbench.sim.engine import Simulation

    base = ExperimentConfig(rounds=3, eval_every=3, partition=ExperimentConfig().partition)
    losses = {}
    for strategy in ("vmap", "loop"):
        cfg = base.override(["model=resnet20", "n_clients=5", "n_byzantine=1", "batch_size=8", "attack=signflip",
                             "defense=median", f"strategy={strategy}"])
        result = Simulation(cfg).run()
        assert result.status == "finished" and 0.0 <= result.final_accuracy <= 1.0
        losses[strategy] = result.series("train_loss")
    assert losses["vmap"] == pytest.approx(losses["loop"], rel=1e-4)
    assert losses["loop"][-1] < losses["loop"][0]


# ---------------------------------------------------------------- LeNet-5 variants (§6.3, §9.13)
@pytest.mark.parametrize("params,shape,d", [
    ({}, (1, 28, 28), 61_706),
    ({"activation": "tanh", "pool": "avg"}, (1, 28, 28), 61_706),
    ({"padding": 0}, (1, 32, 32), 61_706),
    ({"padding": 0}, (3, 32, 32), 62_006),
])
def test_lenet5_variants(params, shape, d):
    from byzbench.models import build_model

    model = build_model("lenet5", params, shape, 10, seed=0)
    assert sum(p.numel() for p in model.parameters()) == d
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("Tanh" in kinds) == (params.get("activation") == "tanh")
    assert ("AvgPool2d" in kinds) == (params.get("pool") == "avg")
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_lenet5_rejects_the_wrong_image_size_and_bad_options():
    from byzbench.errors import ConfigError
    from byzbench.models import build_model

    with pytest.raises((ValueError, ConfigError), match="32×32"):
        build_model("lenet5", {"padding": 0}, (1, 28, 28), 10, seed=0)
    with pytest.raises(ConfigError) as err:
        build_model("lenet5", {"pool": "median"}, (1, 28, 28), 10, seed=0)
    assert "pool" in str(err.value)
