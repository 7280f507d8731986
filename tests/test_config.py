"""NoiseConfig: validation of every field, (de)serialisation round trips, environment activation."""

from __future__ import annotations

import contextlib
import math

import pytest

from nrnn_plugin import NoiseConfig, Schedule


def test_defaults_are_valid_and_noise_free():
    cfg = NoiseConfig()
    assert cfg.additive == 0.0 and cfg.multiplicative == 0.0
    assert cfg.scheme == "euler_maruyama" and cfg.target == "h" and cfg.mode == "noise"
    assert not cfg.has_noise and not cfg.injects_in_training


def test_config_is_frozen():
    cfg = NoiseConfig(additive=0.1)
    with pytest.raises(AttributeError):
        cfg.additive = 0.2  # type: ignore[misc]


@pytest.mark.parametrize(
    "field, value, exc, fragment",
    [
        ("additive", -0.1, ValueError, "additive: expected a finite number >= 0.0, got -0.1"),
        ("additive", "0.1", TypeError, "additive: expected a finite number >= 0.0, got '0.1'"),
        ("additive", True, TypeError, "additive"),
        ("additive", math.nan, ValueError, "additive"),
        ("multiplicative", -1, ValueError, "multiplicative: expected a finite number >= 0.0, got -1"),
        ("multiplicative", math.inf, ValueError, "multiplicative"),
        ("dt", 0.0, ValueError, "dt: expected a finite number > 0.0, got 0.0"),
        ("dt", -1.0, ValueError, "dt"),
        ("dt", None, TypeError, "dt"),
        (
            "scheme",
            "euler",
            ValueError,
            "scheme: expected one of 'euler_maruyama', 'milstein', 'reference', got 'euler'",
        ),
        ("scheme", 3, TypeError, "scheme"),
        ("target", "x", ValueError, "target: expected one of 'h', 'c', 'both', got 'x'"),
        ("shared_multiplicative", 1, TypeError, "shared_multiplicative: expected True or False, got 1"),
        ("seed", -3, ValueError, "seed: expected an integer >= 0, got -3"),
        ("seed", 1.5, TypeError, "seed"),
        ("enabled", "yes", TypeError, "enabled: expected True or False, got 'yes'"),
        ("include", 3, TypeError, "include"),
        ("include", ["ok", ""], TypeError, "include"),
        ("exclude", [1], TypeError, "exclude"),
        ("mode", "train", ValueError, "mode: expected one of 'noise', 'regularizer', 'both', got 'train'"),
        ("regularizer_weight", -0.5, ValueError, "regularizer_weight"),
        ("estimator", "mc", ValueError, "estimator: expected one of 'fd', 'jet', 'exact', got 'mc'"),
        ("probes", 0, ValueError, "probes: expected an integer >= 1, got 0"),
        ("probes", 2.0, TypeError, "probes"),
        ("schedule", "cosine", TypeError, "schedule"),
    ],
)
def test_every_invalid_value_names_field_allowed_and_received(field, value, exc, fragment):
    with pytest.raises(exc) as info:
        NoiseConfig(**{field: value})
    assert fragment in str(info.value)
    assert f"NoiseConfig.{field}" in str(info.value)


@pytest.mark.parametrize(
    "schedule, fragment",
    [
        ({"kind": "exp"}, "NoiseConfig.schedule.kind: expected one of 'constant', 'linear', 'cosine', got 'exp'"),
        ({"kind": "linear", "warmup": -1}, "NoiseConfig.schedule.warmup: expected an integer >= 0, got -1"),
        ({"kind": "linear", "decay": 5, "final": 1.5}, "NoiseConfig.schedule.final"),
        ({"interval": "batch"}, "NoiseConfig.schedule.interval: expected one of 'step', 'epoch', got 'batch'"),
        ({"kind": "constant", "warmup": 10}, "kind 'constant' takes no warmup or decay"),
        ({"kind": "linear", "warmpu": 10}, "unknown key(s) ['warmpu']"),
    ],
)
def test_schedule_errors(schedule, fragment):
    with pytest.raises((ValueError, TypeError)) as info:
        NoiseConfig(schedule=schedule)
    assert fragment in str(info.value)


def test_milstein_with_shared_factor_is_rejected():
    with pytest.raises(ValueError, match="shared_multiplicative.*milstein"):
        NoiseConfig(multiplicative=0.1, scheme="milstein", shared_multiplicative=True)


def test_include_accepts_single_string_and_lists():
    assert NoiseConfig(include="encoder.*").include == ("encoder.*",)
    assert NoiseConfig(exclude=["a", "b"]).exclude == ("a", "b")


def test_derived_properties():
    assert NoiseConfig(additive=0.1).injects_in_training
    assert not NoiseConfig(additive=0.1, enabled=False).has_noise
    reg = NoiseConfig(additive=0.1, mode="regularizer")
    assert reg.uses_regularizer and not reg.injects_in_training
    both = NoiseConfig(additive=0.1, mode="both", regularizer_weight=0.5)
    assert both.uses_regularizer and both.injects_in_training
    assert not NoiseConfig(additive=0.1, mode="both", regularizer_weight=0.0).uses_regularizer


def test_schedule_factors():
    linear = Schedule(kind="linear", warmup=10, decay=20, final=0.5)
    assert [linear.factor(p) for p in (0, 5, 10, 20, 30, 100)] == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.5])
    cosine = Schedule(kind="cosine", warmup=4)
    assert [cosine.factor(p) for p in (0, 2, 4, 50)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert Schedule().factor(123) == 1.0


def _full_config() -> NoiseConfig:
    return NoiseConfig(
        additive=0.05,
        multiplicative=0.02,
        dt=0.5,
        scheme="milstein",
        target="both",
        seed=7,
        include=("encoder*",),
        exclude=("decoder",),
        mode="both",
        regularizer_weight=0.3,
        estimator="jet",
        probes=2,
        schedule=Schedule(kind="cosine", warmup=3, decay=4, final=0.25, interval="epoch"),
    )


def test_dict_round_trip():
    cfg = _full_config()
    data = cfg.to_dict()
    assert data["include"] == ["encoder*"] and data["schedule"]["kind"] == "cosine"
    assert NoiseConfig.from_dict(data) == cfg
    assert NoiseConfig.from_dict({}) == NoiseConfig()


def test_from_dict_rejects_unknown_keys_and_non_mappings():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['additiv'\]"):
        NoiseConfig.from_dict({"additiv": 0.1})
    with pytest.raises(TypeError, match="expected a mapping"):
        NoiseConfig.from_dict([("additive", 0.1)])  # type: ignore[arg-type]


def test_yaml_round_trip_and_section(tmp_path):
    import yaml

    cfg = _full_config()
    path = tmp_path / "noise.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert NoiseConfig.from_yaml(path) == cfg
    run = tmp_path / "run.yaml"
    run.write_text("data: {path: x.csv}\nnoise:\n  additive: 1e-3\n  multiplicative: 2.5E-2\n")
    loaded = NoiseConfig.from_yaml(run, key="noise")
    assert loaded.additive == 1e-3 and loaded.multiplicative == 0.025
    with pytest.raises(ValueError, match="no top-level section 'model'"):
        NoiseConfig.from_yaml(run, key="model")


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    path.write_text(f"additive: !!python/object/apply:os.system ['touch {marker}']\n")
    refused = r"evil.yaml: not valid YAML \(line 1, column 11\): could not determine a constructor"
    with pytest.raises(ValueError, match=refused):
        NoiseConfig.from_yaml(path)
    assert not marker.exists()


def test_yaml_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "noise.yaml"
    path.write_text("additive: 0.1\nsigma: 0.2\n")
    with pytest.raises(ValueError, match="sigma"):
        NoiseConfig.from_yaml(path)


def test_from_env_parses_every_kind_of_field(tmp_path):
    env = {
        "NRNN_ADDITIVE": "0.05",
        "NRNN_MULTIPLICATIVE": "1e-2",
        "NRNN_SCHEME": "reference",
        "NRNN_SHARED_MULTIPLICATIVE": "yes",
        "NRNN_SEED": "11",
        "NRNN_ENABLED": "on",
        "NRNN_INCLUDE": "encoder*, decoder",
        "NRNN_PROBES": "3",
        "NRNN_SCHEDULE_KIND": "linear",
        "NRNN_SCHEDULE_WARMUP": "100",
        "NRNN_PLUGIN_DISABLE_AUTOLOAD": "1",  # belongs to the plugin loader, ignored here
        "HOME": "/root",
    }
    cfg = NoiseConfig.from_env(env)
    assert cfg.additive == 0.05 and cfg.multiplicative == 0.01 and cfg.scheme == "reference"
    assert cfg.shared_multiplicative is True and cfg.seed == 11 and cfg.enabled is True
    assert cfg.include == ("encoder*", "decoder") and cfg.probes == 3
    assert cfg.schedule == Schedule(kind="linear", warmup=100)


def test_from_env_switches_noise_off_over_a_base_and_a_file(tmp_path):
    path = tmp_path / "noise.yaml"
    path.write_text("additive: 0.2\nseed: 3\n")
    cfg = NoiseConfig.from_env({"NRNN_CONFIG": str(path), "NRNN_ENABLED": "0"}, base=NoiseConfig(dt=0.5))
    assert cfg.additive == 0.2 and cfg.seed == 3 and cfg.dt == 0.5 and cfg.enabled is False
    assert NoiseConfig.from_env({}) == NoiseConfig()


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"NRNN_ADITIVE": "0.1"}, "unknown variable NRNN_ADITIVE"),
        ({"NRNN_ADDITIVE": "lots"}, "NRNN_ADDITIVE: expected a number, got 'lots'"),
        ({"NRNN_ENABLED": "maybe"}, "NRNN_ENABLED: expected one of"),
        ({"NRNN_PROBES": "two"}, "NRNN_PROBES: expected an integer, got 'two'"),
        ({"NRNN_ADDITIVE": "-1"}, "NoiseConfig.additive"),
    ],
)
def test_from_env_errors(env, fragment):
    with pytest.raises(ValueError) as info:
        NoiseConfig.from_env(env)
    assert fragment in str(info.value)


def test_replace_revalidates():
    cfg = NoiseConfig(additive=0.1)
    assert cfg.replace(additive=0.2).additive == 0.2
    with pytest.raises(ValueError, match="NoiseConfig.dt"):
        cfg.replace(dt=0)


# ---------------------------------------------------------------------------------------------- boundaries


@pytest.mark.parametrize(
    "field, value",
    [
        ("additive", 10**400),
        ("multiplicative", -(10**400)),
        ("dt", 10**400),
        ("regularizer_weight", 10**400),
        ("additive", float("inf")),
        ("dt", float("nan")),
    ],
)
def test_huge_and_non_finite_numbers_are_range_errors(field, value):
    with pytest.raises(ValueError, match=rf"NoiseConfig.{field}: expected a finite number"):
        NoiseConfig(**{field: value})


def test_schedule_final_overflow_is_a_range_error():
    with pytest.raises(ValueError, match=r"NoiseConfig.schedule.final: expected a finite number >= 0.0 and <= 1.0"):
        NoiseConfig(schedule={"kind": "linear", "warmup": 2, "final": 10**400})


def test_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    cfg = NoiseConfig(additive=np.float32(0.25), probes=np.int64(3), seed=np.int64(7), enabled=np.bool_(True))
    assert cfg.additive == 0.25 and type(cfg.additive) is float
    assert cfg.probes == 3 and type(cfg.probes) is int and cfg.seed == 7 and cfg.enabled is True


def test_unknown_keys_of_mixed_types_are_listed():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \[1, 'zz'\]") as info:
        NoiseConfig.from_dict({1: 0, "zz": 1, "additive": 0.1})
    assert "allowed keys are" in str(info.value)


@pytest.mark.parametrize("text", ["additive: [0.1,\n", "additive: {a: 1\n", "a: 1\na: 2\n", "\tadditive: 1\n"])
def test_malformed_yaml_is_a_value_error_with_the_place(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad.yaml: not valid YAML \(line \d+, column \d+\)"):
        NoiseConfig.from_yaml(path)


def test_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("additive: 0.1\nadditive: 0.5\n")
    with pytest.raises(ValueError, match=r"duplicate key 'additive' \(first at line 1\)"):
        NoiseConfig.from_yaml(path)


@pytest.mark.parametrize("value", ["false", "0", "[]", "''", "1", "additive"])
def test_a_section_that_is_not_a_mapping_is_an_error(tmp_path, value):
    path = tmp_path / "run.yaml"
    path.write_text(f"noise: {value}\n")
    with pytest.raises(TypeError, match=r"section 'noise' .*expected a mapping of config fields"):
        NoiseConfig.from_yaml(path, key="noise")


@pytest.mark.parametrize("text", ["", "noise:\n", "noise: null\n", "noise: {}\n"])
def test_an_empty_document_or_section_means_the_defaults(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    key = "noise" if text else None
    assert NoiseConfig.from_yaml(path, key=key) == NoiseConfig()


def test_a_document_that_is_not_a_mapping_is_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("- additive\n")
    with pytest.raises(TypeError, match=r"expected a mapping of config fields"):
        NoiseConfig.from_yaml(path)


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("dt: 1:30", "NoiseConfig.dt: expected a finite number > 0.0, got '1:30'"),
        ("seed: 010", "NoiseConfig.seed: expected an integer >= 0, got '010'"),
        ("seed: 0x1f", "NoiseConfig.seed: expected an integer >= 0, got '0x1f'"),
        ("enabled: yes", "NoiseConfig.enabled: expected True or False, got 'yes'"),
        ("probes: 1_000", "NoiseConfig.probes: expected an integer >= 1, got '1_000'"),
    ],
)
def test_yaml_1_1_forms_are_strings_and_so_rejected(tmp_path, line, fragment):
    """YAML 1.1 would read 1:30 as 90, 010 as 8, 0x1f as 31 and yes as True: refused instead of guessed."""
    path = tmp_path / "c.yaml"
    path.write_text(line + "\n")
    with pytest.raises((TypeError, ValueError)) as info:
        NoiseConfig.from_yaml(path)
    assert fragment in str(info.value)


def test_yaml_round_trip_keeps_strings_that_look_like_numbers(tmp_path):
    cfg = NoiseConfig(additive=1e-3, include=["1e3", "true", "010", "null", "enc*"], seed=12)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert NoiseConfig.from_yaml(path) == cfg


def test_from_env_rejects_non_string_values_and_ignores_the_cli_switches():
    with pytest.raises(TypeError, match=r"NRNN_ADDITIVE: expected a string .*got 0.1"):
        NoiseConfig.from_env({"NRNN_ADDITIVE": 0.1})
    cfg = NoiseConfig.from_env({"NRNN_DEBUG": "1", "NRNN_PLUGIN_DISABLE_AUTOLOAD": "1", "NRNN_ADDITIVE": "0.2"})
    assert cfg.additive == 0.2
    kernels = {"NRNN_KERNELS": "python", "NRNN_KERNELS_ISA": "native", "NRNN_KERNELS_CACHE": "/tmp/k"}
    assert NoiseConfig.from_env({**kernels, "NRNN_ADDITIVE": "0.2"}) == cfg  # the compiled kernels' switches
    with pytest.raises(ValueError, match="unknown variable NRNN_KERNEL;"):
        NoiseConfig.from_env({"NRNN_KERNEL": "python"})  # a typo is still an error


# ---------------------------------------------------------------------------------------------- properties

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

# values a user can put anywhere: numbers of every size, strings, booleans, null, containers
ANY_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
FIELDS = list(NoiseConfig.__dataclass_fields__)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6) | st.integers(), ANY_VALUE, max_size=4))
def test_any_mapping_gives_a_config_or_a_clear_error(data):
    """Never OverflowError, AttributeError, comparison errors...: only ValueError or TypeError naming a field."""
    try:
        cfg = NoiseConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        assert str(exc).startswith("NoiseConfig"), str(exc)
    else:
        assert NoiseConfig.from_dict(cfg.to_dict()) == cfg


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.text(max_size=60))
def test_any_yaml_text_gives_a_config_or_a_clear_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text(text)
    with contextlib.suppress(ValueError, TypeError):  # anything else fails the test
        NoiseConfig.from_yaml(path)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.dictionaries(st.sampled_from(FIELDS), ANY_VALUE, max_size=4))
def test_yaml_round_trip_of_valid_configs(tmp_path_factory, data):
    try:
        cfg = NoiseConfig.from_dict(data)
    except (ValueError, TypeError):
        return
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert NoiseConfig.from_yaml(path) == cfg


ENV_NAMES = [f"NRNN_{f.upper()}" for f in FIELDS if f != "schedule"] + ["NRNN_SCHEDULE_KIND", "NRNN_XYZ"]


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.dictionaries(st.sampled_from(ENV_NAMES), st.text(max_size=10), max_size=4))
def test_any_environment_gives_a_config_or_a_clear_error(env):
    try:
        NoiseConfig.from_env(env)
    except (ValueError, TypeError) as exc:
        assert "NRNN_" in str(exc) or str(exc).startswith("NoiseConfig"), str(exc)
