"""Behaviour of the attacks: ALIE (and its z_max table), IPM, sign flip, no attack.

References: ALGORITHMS.md §4.3 (sign flip), §4.5 (ALIE), §4.6 (IPM).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.attacks import ATTACKS, KNOWLEDGE_LEVELS, AttackerView
from byzbench.attacks.alie import ALIE, alie_zmax, mean_std
from byzbench.attacks.ipm import IPM
from byzbench.attacks.none import NoAttack
from byzbench.attacks.signflip import SignFlip
from byzbench.attacks.base import LEVELS
from byzbench.errors import ConfigError
from helpers import attacker_view

F64 = torch.float64
ZMAX_TABLE = [
    ((25, 5), 0.2533), ((17, 3), 0.1800), ((12, 5), 0.5659), ((8, 3), 0.2533), ((15, 4), 0.3488),
    ((50, 10), 0.2533), ((14, 5), 0.4307), ((12, 2), 0.0), ((10, 2), 0.0),
]


view = attacker_view


# --------------------------------------------------------------------------- ALIE z_max


@pytest.mark.parametrize("nf, expected", ZMAX_TABLE)
def test_alie_zmax_table(nf, expected):
    assert alie_zmax(*nf) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("nf, expected", ZMAX_TABLE)
def test_alie_zmax_matches_scipy(nf, expected):
    norm = pytest.importorskip("scipy.stats").norm
    n, f = nf
    s = math.floor(n / 2 + 1) - f
    assert alie_zmax(n, f) == pytest.approx(float(norm.ppf((n - f - s) / (n - f))), abs=1e-9)


def test_alie_zmax_paper_alt():
    assert alie_zmax(25, 5, "paper_alt") == pytest.approx(0.4677, abs=1e-3)
    assert alie_zmax(25, 5, "paper_alt") > alie_zmax(25, 5)


def test_alie_zmax_clips_the_probability():
    z = alie_zmax(2, 1)  # s = 1, p = 0 → clipped to (0, 1)
    assert math.isfinite(z) and z < -5


@pytest.mark.parametrize("args", [(10, 10), (10, -1), (5, 7), (25, 5, "exact")])
def test_alie_zmax_invalid_arguments(args):
    with pytest.raises(ValueError):
        alie_zmax(*args)


def test_alie_default_z_is_zmax_of_the_view():
    honest = torch.randn(20, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    mu, sd = honest.mean(0), honest.std(0)
    out = ALIE().craft(view(honest, 5))  # n = 20 + 5 = 25
    torch.testing.assert_close(out[0], mu - alie_zmax(25, 5) * sd)
    out_alt = ALIE(zmax_mode="paper_alt").craft(view(honest, 5))
    torch.testing.assert_close(out_alt[0], mu - alie_zmax(25, 5, "paper_alt") * sd)


# --------------------------------------------------------------------------- ALIE crafting


def test_alie_verify_line():
    honest = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)
    assert ALIE(z=1.5).craft(view(honest, 2)).tolist() == [[0.5], [0.5]]
    assert ALIE(z=1.5, sign=1).craft(view(honest, 2)).tolist() == [[3.5], [3.5]]


def test_alie_population_std():
    honest = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)
    out = ALIE(z=1.5, std_ddof=0).craft(view(honest, 1))
    assert out.item() == pytest.approx(2 - 1.5 * math.sqrt(2 / 3), rel=1e-12)
    assert out.item() > 0.5  # the population σ is smaller, so the row is closer to μ


def test_alie_zero_sigma_coordinate_gives_mu():
    honest = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]], dtype=F64)
    out = ALIE(z=4.0).craft(view(honest, 3))
    assert out.tolist() == [[-2.0, 5.0]] * 3


@pytest.mark.parametrize("ddof", [0, 1])
def test_alie_single_honest_row_gives_mu(ddof):
    honest = torch.tensor([[1.5, -2.0, 0.0]], dtype=F64)
    out = ALIE(z=3.0, std_ddof=ddof).craft(view(honest, 2))
    assert out.tolist() == [[1.5, -2.0, 0.0]] * 2
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("f", [1, 4])
def test_alie_output_shape_and_dtype(f, dtype):
    honest = torch.randn(7, 11, generator=torch.Generator().manual_seed(f)).to(dtype)
    out = ALIE(z=0.7).craft(view(honest, f))
    assert out.shape == (f, 11) and out.dtype == dtype
    assert all(torch.equal(out[i], out[0]) for i in range(f))
    ref = honest.to(F64).mean(0) - 0.7 * honest.to(F64).std(0, correction=1)
    torch.testing.assert_close(out[0].to(F64), ref, rtol=1e-5, atol=1e-5)


def test_alie_does_not_modify_honest_rows():
    honest = torch.randn(5, 4, dtype=F64)
    before = honest.clone()
    ALIE(z=1.0).craft(view(honest, 2))
    assert torch.equal(honest, before)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [13, 40_000])  # one block, and several with a partial last one
def test_mean_std_matches_torch(ddof, dtype, d):
    x = (torch.randn(9, d, dtype=F64, generator=torch.Generator().manual_seed(ddof)) * 3 + 5).to(dtype)
    mu, sd = mean_std(x, ddof)
    assert mu.dtype == sd.dtype == dtype
    tol = {F64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(mu, x.double().mean(0).to(dtype), rtol=tol, atol=tol)
    torch.testing.assert_close(sd, x.double().std(0, correction=ddof).to(dtype), rtol=tol, atol=tol)


def test_mean_std_of_one_row_with_ddof_one_is_zero():
    mu, sd = mean_std(torch.tensor([[1.0, -2.0]]), 1)
    assert mu.tolist() == [1.0, -2.0] and sd.tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- IPM


_finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_ipm_inner_product_property(data):
    h = data.draw(st.integers(1, 8))
    d = data.draw(st.integers(1, 6))
    f = data.draw(st.integers(1, 4))
    eps = data.draw(st.floats(0, 10))
    honest = torch.tensor(data.draw(st.lists(_finite, min_size=h * d, max_size=h * d)),
                          dtype=F64).reshape(h, d)
    out = IPM(epsilon=eps).craft(view(honest, f))
    mu = honest.mean(0)
    assert out.shape == (f, d)
    for row in out:
        lhs, rhs = float(row @ mu), -eps * float(mu @ mu)
        assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-9)
        torch.testing.assert_close(row, -eps * mu)


def test_ipm_zero_mean_gives_zero():
    honest = torch.tensor([[1.0, -2.0], [-1.0, 2.0]], dtype=F64)
    out = IPM(epsilon=2.5).craft(view(honest, 3))
    assert out.tolist() == [[0.0, 0.0]] * 3


def test_ipm_default_epsilon():
    assert IPM().epsilon == 0.1
    honest = torch.tensor([[1.0], [3.0]], dtype=F64)
    assert IPM().craft(view(honest, 1)).item() == pytest.approx(-0.2)


# --------------------------------------------------------------------------- sign flip, none


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_signflip_inner_product_with_own_gradient(data):
    f = data.draw(st.integers(1, 5))
    d = data.draw(st.integers(1, 6))
    kappa = data.draw(st.floats(1e-3, 10))
    own = torch.tensor(data.draw(st.lists(_finite, min_size=f * d, max_size=f * d)),
                       dtype=F64).reshape(f, d)
    honest = torch.randn(3, d, dtype=F64)
    out = SignFlip(scale=kappa).craft(view(honest, f, own=own, knowledge="own"))
    assert out.shape == (f, d)
    for g_b, g in zip(out, own):
        assert float(g_b @ g) == pytest.approx(-kappa * float(g @ g), rel=1e-9, abs=1e-9)


def test_signflip_uses_own_rows_not_honest_mean():
    own = torch.tensor([[1.0, 2.0], [-3.0, 0.5]], dtype=F64)
    honest = torch.full((4, 2), 100.0, dtype=F64)
    assert SignFlip().craft(view(honest, 2, own=own)).tolist() == [[-1.0, -2.0], [3.0, -0.5]]


def test_no_attack_sends_own_rows():
    own = torch.tensor([[1.0, 2.0], [-3.0, 0.5]], dtype=F64)
    assert torch.equal(NoAttack().craft(view(torch.zeros(3, 2, dtype=F64), 2, own=own)), own)


# --------------------------------------------------------------------------- declarations


def test_levels_and_knowledge_declared():
    assert SignFlip.level == "gradient"
    assert ALIE.level == IPM.level == NoAttack.level == "message"
    assert {name: ATTACKS.get(name).knowledge for name in ("none", "signflip", "alie", "ipm")} == {
        "none": "own", "signflip": "own", "alie": "omniscient", "ipm": "omniscient"}
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        assert cls.knowledge in KNOWLEDGE_LEVELS
        assert cls.knowledge in cls.supported_knowledge
        assert set(cls.supported_knowledge) <= set(KNOWLEDGE_LEVELS)
        assert cls.level in LEVELS


@pytest.mark.parametrize("alias, name", [("lie", "alie"), ("sf", "signflip"), ("bf", "signflip"),
                                         ("honest", "none"), ("IPM", "ipm")])
def test_attack_aliases(alias, name):
    assert ATTACKS.canonical(alias) == name
    assert ATTACKS.create(alias, "attack").name == name


# --------------------------------------------------------------------------- invalid parameters


@pytest.mark.parametrize(
    "name, params, fragment",
    [("alie", {"sign": 0}, "sign"), ("alie", {"std_ddof": 2}, "std_ddof"),
     ("alie", {"z": "big"}, "z must be"), ("alie", {"zmax_mode": "x"}, "zmax_mode"),
     ("ipm", {"epsilon": -1}, "epsilon"), ("ipm", {"epsilon": "x"}, "epsilon"),
     ("signflip", {"scale": 0}, "scale"), ("signflip", {"scale": -2.0}, "scale")],
)
def test_invalid_attack_params_raise_config_error(name, params, fragment):
    with pytest.raises(ConfigError) as exc:
        ATTACKS.create(name, "attack", **params)
    assert exc.value.key == "attack"
    assert fragment in str(exc.value)


def test_unknown_attack_param_names_the_key():
    with pytest.raises(ConfigError) as exc:
        ATTACKS.create("ipm", "attack", eps=1)
    assert exc.value.key == "attack.eps"
    with pytest.raises(ConfigError) as exc:
        ATTACKS.create("signflip", "attack", z=1)
    assert exc.value.key == "attack.z"


@pytest.mark.parametrize("name, params", [("ipm", {"epsilon": math.nan}),
                                          ("signflip", {"scale": math.nan})])
def test_nan_strength_is_rejected(name, params):
    with pytest.raises(ConfigError):
        ATTACKS.create(name, "attack", **params)


@given(st.integers(5, 30), st.data())
@settings(max_examples=40, deadline=None)
def test_ipm_beyond_h_over_f_turns_the_mean_against_the_honest_mean(n, data):
    """ε > (n − f)/f ⇒ ⟨mean of all n rows, μ⟩ = (h − εf)/n · ‖μ‖² < 0 (Xie et al. 2019)."""
    f = data.draw(st.integers(1, (n - 1) // 2))
    h = n - f
    eps = h / f * data.draw(st.floats(1.01, 3.0))
    seed = data.draw(st.integers(0, 10_000))
    honest = torch.randn(h, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 1.0
    view = AttackerView(honest=honest, own=honest[:f], n=n, f=f, round=0, params=torch.zeros(7),
                        layout=None, generator=torch.Generator(), knowledge="omniscient")
    byz = IPM(epsilon=eps).craft(view)
    mean_all = torch.cat([honest, byz]).mean(dim=0)
    mu = honest.mean(dim=0)
    assert float(mean_all @ mu) < 0
    eps_ok = h / f * 0.9
    byz_ok = IPM(epsilon=eps_ok).craft(view)
    assert float(torch.cat([honest, byz_ok]).mean(dim=0) @ mu) > 0
