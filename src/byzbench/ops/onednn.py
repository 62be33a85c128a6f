"""Row Gram products X Xᵀ through oneDNN's matrix kernels where they are the faster ones.

On x86 CPUs torch sends float32 matrix products to MKL, which on AMD processors runs
its AVX2 kernels; oneDNN, bundled with torch's CPU builds (``torch.ops.mkldnn``),
generates AVX-512 code for the processor it runs on. For the tall products X Xᵀ of
n ≪ d rows that distance-based rules (Krum, Bulyan, NNM, MDA, SMEA, CAF, …) need, its
``linear`` kernel measured about 2× faster than ``x @ x.T`` on the 2-core AMD EPYC of
docs/performance.md (n = 25: 4.4 ms against 9.0 at d = 500,000 on 2 threads, 1.0 ms
against 2.2 at d = 100,000), and 0.3–0.9× below about 250,000 elements, where its
per-call set-up dominates.

`row_gram` uses it for 2-D float32 CPU inputs of at least `MIN_ELEMENTS` entries outside
autograd, and ``x @ x.T`` otherwise. The oneDNN product is checked once per process on
a small input against ``torch.mm``; when the op is missing (a build without oneDNN) or
the check fails, and when ``BYZBENCH_ONEDNN=0`` is set, every call takes ``x @ x.T``.
Both compute the same sums in float32; only the rounding (the order of accumulation)
differs, and oneDNN's was the smaller in our measurements (relative error 4e-7 against
2e-6 at d = 500,000).
"""

from __future__ import annotations

import os

import torch

#: Inputs with fewer entries use ``x @ x.T`` (oneDNN's per-call set-up dominates there).
MIN_ELEMENTS = 1 << 18
#: Environment variable; ``0`` turns the oneDNN path off.
ENV = "BYZBENCH_ONEDNN"

_state: dict[str, bool] = {}


def available() -> bool:
    """Whether the oneDNN product is usable here (op present, self-check passed, not
    turned off by ``BYZBENCH_ONEDNN=0``); probed once per process."""
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    if "ok" not in _state:
        _state["ok"] = _probe()
    return _state["ok"]


def _probe() -> bool:
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x = torch.randn(7, 300, generator=g)
        with torch.no_grad():
            got = _linear(x, x)
        return got.shape == (7, 7) and bool(torch.allclose(got, x @ x.T, rtol=1e-5, atol=1e-4))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _linear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a bᵀ`` by oneDNN's linear kernel (no bias, no fused activation)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def use_onednn(x: torch.Tensor) -> bool:
    """Whether `row_gram` takes the oneDNN path for ``x``."""
    return (x.dim() == 2 and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.numel() >= MIN_ELEMENTS and x.stride(-1) == 1
            and not (x.requires_grad and torch.is_grad_enabled()) and available())


def row_gram(x: torch.Tensor) -> torch.Tensor:
    """``x @ x.T`` for ``x[n, d]`` (any dtype and device), by oneDNN where `use_onednn`."""
    if use_onednn(x):
        return _linear(x, x)
    return x @ x.mT


__all__ = ["ENV", "MIN_ELEMENTS", "available", "row_gram", "use_onednn"]
