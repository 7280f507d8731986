"""NoiseConfig: validation of every field, (de)serialisation round trips, environment activation."""

from __future__ import annotations

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
    path.write_text("additive: !!python/object/apply:os.system ['echo pwned']\n")
    import yaml

    with pytest.raises(yaml.YAMLError):
        NoiseConfig.from_yaml(path)


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
