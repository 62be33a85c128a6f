"""Behaviour of component specs (byzbench.spec) and name registries (byzbench.registry)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.defenses import AGGREGATORS
from byzbench.errors import ConfigError
from byzbench.registry import Registry
from byzbench.spec import ComponentSpec, chain_to_str, parse_chain, parse_component, parse_value

# --------------------------------------------------------------------------- parse_value


@pytest.mark.parametrize(
    "text, expected",
    [("3", 3), ("0.5", 0.5), ("[64, 32]", [64, 32]), ("none", None), ("Null", None), ("~", None),
     ("true", True), ("relu", "relu"), (" 7 ", 7), ("'none'", "none")],
)
def test_parse_value_reads_yaml_flow_scalars(text, expected):
    got = parse_value(text)
    assert got == expected
    assert type(got) is type(expected)


# --------------------------------------------------------------------------- parse_component


def test_parse_component_bare_name_is_lowercased_with_no_params():
    spec = parse_component("  TrMean ", "defense")
    assert spec == ComponentSpec("trmean", {})
    assert spec.params == {}


def test_parse_component_inline_params_are_typed():
    spec = parse_component("name(k=v, k2=[1, 2])", "attack")
    assert spec.name == "name"
    assert spec.params == {"k": "v", "k2": [1, 2]}


def test_parse_component_numbers_none_and_nested_brackets():
    spec = parse_component("alie(z=1.5, sign=-1, extra={a: 1, b: [2, 3]}, m=none)", "attack")
    assert spec.params == {"z": 1.5, "sign": -1, "extra": {"a": 1, "b": [2, 3]}, "m": None}
    assert isinstance(spec.params["z"], float) and isinstance(spec.params["sign"], int)


def test_parse_component_empty_parentheses_and_spaces():
    assert parse_component("mlp()", "model") == ComponentSpec("mlp", {})
    assert parse_component(" mlp ( hidden = [8] ) ", "model") == ComponentSpec("mlp", {"hidden": [8]})


def test_parse_component_mapping_with_inline_params():
    spec = parse_component({"name": "ALIE", "z": 2, "sign": 1}, "attack")
    assert spec == ComponentSpec("alie", {"z": 2, "sign": 1})


def test_parse_component_mapping_with_params_submapping():
    spec = parse_component({"name": "dirichlet", "params": {"beta": 0.1}}, "partition")
    assert spec == ComponentSpec("dirichlet", {"beta": 0.1})


def test_parse_component_passes_specs_through():
    spec = ComponentSpec("ipm", {"epsilon": 0.4})
    assert parse_component(spec, "attack") is spec


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "alie(z=1", "alie(z)", "alie(z=1, 2)", "alie(z=1) extra", None, 3, 1.5, ["alie"],
     {"z": 1}],
)
def test_parse_component_malformed_raises_config_error_with_key(bad):
    with pytest.raises(ConfigError) as exc:
        parse_component(bad, "attack")
    assert exc.value.key == "attack"
    assert str(exc.value).startswith("attack: ")


def test_parse_component_rejects_empty_name():
    with pytest.raises(ConfigError):
        parse_component("(k=1)", "attack")


def test_parse_component_rejects_trailing_call():
    with pytest.raises(ConfigError):
        parse_component("a(z=1)(y=2)", "attack")


# --------------------------------------------------------------------------- parse_chain


def test_parse_chain_splits_on_top_level_gt():
    chain = parse_chain("a > b(k=1) > c", "defense")
    assert chain == [ComponentSpec("a"), ComponentSpec("b", {"k": 1}), ComponentSpec("c")]


def test_parse_chain_single_and_list_forms():
    assert parse_chain("trmean", "defense") == [ComponentSpec("trmean")]
    assert parse_chain(["nnm", {"name": "trmean", "b": 3}], "defense") == [
        ComponentSpec("nnm"), ComponentSpec("trmean", {"b": 3})]
    assert parse_chain({"name": "median"}, "defense") == [ComponentSpec("median")]


def test_parse_chain_gt_inside_brackets_is_not_a_separator():
    chain = parse_chain("a(k=[1, 2]) > b", "defense")
    assert chain == [ComponentSpec("a", {"k": [1, 2]}), ComponentSpec("b")]


@pytest.mark.parametrize("bad", ["", "a > > b", ">", "a >", "> a", []])
def test_parse_chain_empty_stage_raises(bad):
    with pytest.raises(ConfigError) as exc:
        parse_chain(bad, "defense")
    assert exc.value.key == "defense"


def test_chain_to_str_round_trips():
    text = "bucketing(s=2) > nnm > trmean(b=3)"
    chain = parse_chain(text, "defense")
    assert chain_to_str(chain) == text
    assert parse_chain(chain_to_str(chain), "defense") == chain


# --------------------------------------------------------------------------- ComponentSpec


def test_spec_str_and_to_dict_sort_params():
    spec = ComponentSpec("alie", {"z": 1.5, "sign": -1})
    assert str(spec) == "alie(sign=-1, z=1.5)"
    assert str(ComponentSpec("mean")) == "mean"
    assert spec.to_dict() == {"name": "alie", "sign": -1, "z": 1.5}
    assert list(spec.to_dict()) == ["name", "sign", "z"]


@pytest.mark.parametrize(
    "params",
    [{}, {"z": 1.5}, {"hidden": [32, 16]}, {"m": None}, {"flag": True}, {"eps": 1e-5},
     {"s": "relu"}, {"s": "1"}, {"s": ""}, {"s": "null"}, {"d": {"a": 1, "b": [2]}},
     {"s": "x=y"}, {"big": 10**12}, {"neg": -3}],
)
def test_spec_str_round_trips_through_parse(params):
    spec = ComponentSpec("comp", params)
    assert parse_component(str(spec), "k") == spec


_keys = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=3))


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=4))
def test_spec_str_round_trip_property(params):
    params = {k: v for k, v in params.items() if v != "none"}  # see the xfail below
    spec = ComponentSpec("comp", params)
    assert parse_component(str(spec), "k") == spec


def test_spec_str_round_trips_string_none():
    spec = ComponentSpec("comp", {"norm": "none"})
    assert parse_component(str(spec), "k") == spec


def test_spec_str_round_trips_string_with_comma():
    spec = ComponentSpec("comp", {"label": "a, b"})
    assert parse_component(str(spec), "k") == spec


# --------------------------------------------------------------------------- Registry


def _fresh() -> Registry:
    reg: Registry = Registry("widget")

    @reg.register("alpha", aliases=("a", "first"))
    class Alpha:
        """Alpha widget: the first one.

        More text that is not the summary.
        """

        def __init__(self, size: int = 3, label: str = "x") -> None:
            if size < 0:
                raise ValueError(f"size must be ≥ 0, got {size}")
            self.size, self.label = size, label

    @reg.register("beta")
    class Beta:
        def __init__(self, ratio: float) -> None:
            self.ratio = ratio

    return reg


def test_registry_register_names_aliases_and_summary():
    reg = _fresh()
    assert reg.names() == ["alpha", "beta"]
    alpha = reg.entry("alpha")
    assert alpha.aliases == ("a", "first")
    assert alpha.summary == "Alpha widget: the first one."
    assert reg.entry("beta").summary == ""
    assert reg.get("first") is alpha.cls
    assert alpha.cls.registry_name == "alpha"


@pytest.mark.parametrize("name", ["alpha", "a", "first", "ALPHA", "First"])
def test_registry_canonical_resolves_aliases_case_insensitively(name):
    assert _fresh().canonical(name) == "alpha"


def test_registry_canonical_unknown_lists_valid_names():
    with pytest.raises(ConfigError) as exc:
        _fresh().canonical("gamma", "thing")
    assert exc.value.key == "thing"
    assert "unknown widget 'gamma'" in str(exc.value)
    assert "valid names: alpha, beta" in str(exc.value)


def test_registry_canonical_non_string_raises():
    with pytest.raises(ConfigError):
        _fresh().canonical(3)  # type: ignore[arg-type]


def test_registry_create_builds_with_params():
    obj = _fresh().create("a", "thing", size=5, label="y")
    assert (obj.size, obj.label) == (5, "y")
    assert _fresh().create("alpha").size == 3


def test_registry_create_wraps_constructor_value_error():
    with pytest.raises(ConfigError) as exc:
        _fresh().create("alpha", "thing", size=-1)
    assert exc.value.key == "thing"
    assert "size must be ≥ 0" in str(exc.value)
    assert isinstance(exc.value.__cause__, ValueError)


def test_registry_create_missing_required_param_is_config_error():
    with pytest.raises(ConfigError) as exc:
        _fresh().create("beta", "thing")
    assert exc.value.key == "thing"


def test_registry_check_params_names_the_key_and_lists_valid_ones():
    reg = _fresh()
    reg.check_params("alpha", {"size": 1, "label": "z"}, "thing")
    with pytest.raises(ConfigError) as exc:
        reg.check_params("alpha", {"sise": 1}, "thing")
    assert exc.value.key == "thing.sise"
    assert "no parameter 'sise'" in str(exc.value)
    assert "label, size" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        reg.create("alpha", None, colour=1)
    assert exc.value.key == "colour"


def test_registry_entry_params_describe_signature():
    params = {p.name: p for p in _fresh().entry("alpha").params}
    assert list(params) == ["size", "label"]
    assert params["size"].default == 3 and not params["size"].required
    assert params["size"].annotation == "int"
    beta = _fresh().entry("beta").params
    assert [(p.name, p.required, p.default) for p in beta] == [("ratio", True, None)]


def test_registry_entry_params_follow_kwargs_to_base_class():
    names = [p.name for p in AGGREGATORS.entry("trmean").params]
    assert names[0] == "b"
    assert set(names) == {"b", "nonfinite", "infeasible"}
    median = {p.name: p.default for p in AGGREGATORS.entry("median").params}
    assert median == {"mode": "midpoint", "nonfinite": None, "infeasible": "raise"}
    # Mean defines no __init__ of its own: it takes the base-class policies only.
    assert {p.name for p in AGGREGATORS.entry("mean").params} == {"nonfinite", "infeasible"}


def test_registry_entry_params_stop_without_kwargs():
    reg: Registry = Registry("widget")

    class Base:
        def __init__(self, hidden: int = 1) -> None:
            self.hidden = hidden

    @reg.register("child")
    class Child(Base):
        def __init__(self, own: int = 2) -> None:
            super().__init__()

    assert [p.name for p in reg.entry("child").params] == ["own"]
    with pytest.raises(ConfigError):
        reg.check_params("child", {"hidden": 1})


def test_registry_alias_collision_raises():
    reg = _fresh()
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("gamma", aliases=("a",))(type("Gamma", (), {}))
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("first")(type("Gamma", (), {}))
    # A failed registration leaves the registry unchanged.
    assert reg.names() == ["alpha", "beta"]
    assert reg.canonical("a") == "alpha"


def test_registry_same_name_twice_raises():
    reg = _fresh()
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("alpha")(type("Other", (), {}))
