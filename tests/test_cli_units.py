"""In-process checks of the pieces behind the ``nrnn`` command line: the run-file schema, data preparation,
the time split, argument parsing and one-line errors. The end-to-end commands are in ``test_cli.py``."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nrnn_plugin.app.cli import EXIT_INPUT, main
from nrnn_plugin.app.commands import format_plugin_report
from nrnn_plugin.app.data import (
    SERIES_COLUMN,
    TimeAxis,
    compute_split,
    minimum_series_length,
    prepare_frame,
    read_table,
    split_and_check,
)
from nrnn_plugin.app.run_config import (
    ConfigError,
    DataError,
    DataSpec,
    InputError,
    RunConfig,
    TrainerSpec,
    load_run_config,
    noise_from_dict,
)
from nrnn_plugin.config import NoiseConfig


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit:
            code = exit.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def co2() -> pd.DataFrame:
    """Mauna Loa CO2, weekly (statsmodels): ``date`` strings and ``co2`` with 59 missing values."""
    sm = pytest.importorskip("statsmodels.api")
    frame = sm.datasets.co2.load_pandas().data.reset_index(names="date")
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    return frame


@pytest.fixture(scope="module")
def grunfeld() -> pd.DataFrame:
    """The grunfeld panel (statsmodels): 11 firms x 20 years."""
    sm = pytest.importorskip("statsmodels.api")
    frame = sm.datasets.grunfeld.load_pandas().data
    return frame.astype({"year": int})


# ---------------------------------------------------------------------------------------------- schema


def test_example_run_file_is_valid_and_complete():
    config = load_run_config("examples/run.yaml")
    assert config.model.name == "RecurrentNetwork"
    assert config.noise == NoiseConfig(additive=0.2, seed=0)
    # Every key of every section is spelled out in the example.
    import yaml

    raw = yaml.safe_load(Path("examples/run.yaml").read_text())
    assert set(raw) == set(RunConfig.SECTIONS) - {"tune"}  # the tune section's example is examples/tune.yaml
    assert set(raw["data"]) == set(DataSpec.model_fields)
    assert set(raw["trainer"]) == set(TrainerSpec.model_fields)
    assert set(raw["noise"]) == set(NoiseConfig.__dataclass_fields__)
    assert set(raw["noise"]["schedule"]) == {"kind", "warmup", "decay", "final", "interval"}
    # relative paths are relative to the run file's folder
    assert config.data.path == str(Path("outputs/demo/co2_weekly.csv").resolve())
    assert config.output.dir == str(Path("runs/co2").resolve())


def _example_values() -> dict[str, tuple[object, bool]]:
    """``section.key -> (value, marked "(not the default")`` for every key line of examples/run.yaml."""
    import yaml

    values: dict[str, tuple[object, bool]] = {}
    path: list[str] = []
    for line in Path("examples/run.yaml").read_text().splitlines():
        body, _, comment = line.partition("#")
        if not body.strip() or ":" not in body:
            continue
        indent = (len(body) - len(body.lstrip())) // 2
        key, _, value = body.strip().partition(":")
        path = path[:indent] + [key]
        if value.strip():
            values[".".join(path)] = (yaml.safe_load(value), "(not the default" in comment)
    return values


def test_example_run_file_and_the_reference_agree_on_every_default():
    from nrnn_plugin.app.schema_doc import section_defaults

    defaults = section_defaults()
    checked = 0
    for dotted, (value, marked) in _example_values().items():
        section, key = dotted.split(".", 1)
        if key not in defaults.get(section, {}):
            continue  # required keys (data.time, data.target) and model keyword arguments
        if marked:
            assert value != defaults[section][key], f"{dotted} is marked '(not the default)' but is the default"
        else:
            assert value == defaults[section][key], (
                f"examples/run.yaml {dotted}: {value!r}, schema default {defaults[section][key]!r}"
            )
        checked += 1
    assert checked >= 40


def test_the_reference_page_is_generated_from_the_schema():
    from nrnn_plugin.app.schema_doc import markdown_reference

    assert Path("docs/run-file.md").read_text() == markdown_reference(), (
        "regenerate: nrnn schema --markdown > docs/run-file.md"
    )


def test_the_json_schema_describes_every_section():
    from nrnn_plugin.app.schema_doc import run_file_schema

    schema = run_file_schema()
    assert schema["required"] == ["data"] and set(schema["properties"]) == set(RunConfig.SECTIONS)
    noise = schema["properties"]["noise"]
    assert set(noise["properties"]) == set(NoiseConfig.__dataclass_fields__)
    assert noise["properties"]["scheme"]["enum"] == ["euler_maruyama", "milstein", "reference"]
    assert noise["additionalProperties"] is False
    data = schema["$defs"]["DataSpec"]
    assert data["properties"]["normalizer"]["enum"] == ["encoder", "group", "none"]
    assert data["additionalProperties"] is False and set(data["required"]) == {"time", "target"}


def test_run_config_round_trips_and_defaults():
    config = RunConfig.from_dict({"data": {"time": "t", "target": "y"}})
    assert config.noise is None and config.model.name == "RecurrentNetwork"
    assert config.trainer.max_epochs == 20 and config.data.validation == 0.15
    again = RunConfig.from_dict(config.to_dict())
    assert again == config


@pytest.mark.parametrize(
    "data, message",
    [
        ({"data": {"time": "t", "target": "y"}, "extras": 1}, "the run file: unknown key(s) ['extras']"),
        ({"model": {}}, "data: required, but missing"),
        ({"data": {"target": "y"}}, "data.time: required, but missing"),
        (
            {"data": {"time": "t", "target": "y", "tagret": 1}},
            "section 'data': unknown key(s) ['tagret']; allowed keys are ['path', 'time', 'target',",
        ),
        ({"data": {"time": "t", "target": "t"}}, "data.target: column 't' is already used as data.time"),
        (
            {"data": {"time": "t", "target": "y", "group_ids": "g", "known_reals": ["g"]}},
            "data.known_reals: column 'g'",
        ),
        ({"data": {"time": "t", "target": "y", "validation": 0.6, "test": 0.5}}, "sum to less than 1"),
        ({"data": {"time": "t", "target": "y", "validation": 0}}, "data.validation: expected a number of time steps"),
        ({"data": {"time": "t", "target": "y", "test": -3}}, "data.test: expected"),
        (
            {"data": {"time": "t", "target": "y", "max_encoder_length": 0}},
            "data.max_encoder_length: expected a value >= 1, got 0",
        ),
        (
            {"data": {"time": "t", "target": "y", "normalizer": "minmax"}},
            "data.normalizer: expected one of 'encoder', 'group' or 'none', got 'minmax'",
        ),
        (
            {"data": {"time": "t", "target": "y"}, "trainer": {"epochs": 3}},
            "section 'trainer': unknown key(s) ['epochs']",
        ),
        (
            {"data": {"time": "t", "target": "y"}, "trainer": {"max_epochs": 1.5}},
            "trainer.max_epochs: expected an integer, got 1.5",
        ),
        (
            {"data": {"time": "t", "target": "y"}, "trainer": {"seed": True}},
            "trainer.seed: expected an integer, got True",
        ),
        (
            {"data": {"time": "t", "target": "y", "group_ids": ["g", "g"]}},
            "data.group_ids: expected a list of distinct column names, got ['g', 'g']",
        ),
        (
            {"data": {"time": "t", "target": "y", "unknown_reals": ["x"]}},
            "data.unknown_reals: RecurrentNetwork decodes autoregressively, so it can read only reals known for "
            "the forecast horizon (and the target); move ['x'] to data.known_reals",
        ),
        (
            {"data": {"time": "t", "target": "y"}, "trainer": {"logger": "wandb"}},
            "trainer.logger: expected one of 'csv', 'tensorboard', 'mlflow' or 'none', got 'wandb'",
        ),
        (
            {"data": {"time": "t", "target": "y"}, "output": {"folder": "x"}},
            "section 'output': unknown key(s) ['folder']",
        ),
        ({"data": {"time": "t", "target": "y"}, "model": {"class": "NHiTS"}}, "got 'NHiTS'"),
        (
            {"data": {"time": "t", "target": "y"}, "noise": {"sheme": "milstein"}},
            "noise: NoiseConfig: unknown key(s) ['sheme']",
        ),
        (
            {"data": {"time": "t", "target": "y"}, "noise": {"scheme": "heun"}},
            "noise: NoiseConfig.scheme: expected one of",
        ),
        ({"data": {"time": "t", "target": "y"}, "noise": [0.1]}, "noise: expected a mapping"),
        ({"data": "x"}, "data: expected a mapping (a YAML section of 'name: value' lines), got 'x'"),
    ],
)
def test_run_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_group_id_may_also_be_a_static_categorical():
    spec = DataSpec.from_dict({"time": "t", "target": "y", "group_ids": ["g"], "static_categoricals": ["g"]})
    assert spec.columns == ("t", "y", "g")
    frame = pd.DataFrame({"t": [0, 1, 0, 1], "y": [1.0, 2.0, 3.0, 4.0], "g": ["a", "a", "b", "b"]})
    assert list(prepare_frame(frame, spec).frame.columns) == ["t", "y", "g"]


def test_a_folder_given_as_config_and_data_paths_relative_to_the_run_file(tmp_path):
    with pytest.raises(InputError, match=r"--config: '.*' is a folder; expected a run file \(YAML\)"):
        load_run_config(tmp_path)
    (tmp_path / "conf").mkdir()
    run = tmp_path / "conf" / "run.yaml"
    run.write_text("data: {path: data/x.csv, time: t, target: y}\noutput: {dir: ../runs/a}\n")
    config = load_run_config(run)
    assert config.data.path == str(tmp_path / "conf" / "data" / "x.csv")
    assert config.output.dir == str(tmp_path / "runs" / "a")


def test_noise_section_absent_empty_or_disabled():
    assert noise_from_dict(None) is None and noise_from_dict({}) is None
    assert noise_from_dict({"enabled": False}).has_noise is False
    assert noise_from_dict({"additive": 0.1, "schedule": {"kind": "linear", "warmup": 5}}).schedule.warmup == 5


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  time: [year\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d+, column \d+\)"):
        load_run_config(path)
    path.write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_run_config(path)


# ---------------------------------------------------------------------------------------------- data


def test_dates_become_weekly_steps_and_missing_values_are_interpolated(co2):
    spec = DataSpec.from_dict({"time": "date", "target": "co2"})
    prepared = prepare_frame(co2, spec, source="co2.csv")
    frame = prepared.frame
    assert prepared.time_axis == TimeAxis("date", freq="W-SAT", origin="1958-03-29T00:00:00")  # inferred
    np.testing.assert_array_equal(frame["date"].to_numpy(), np.arange(len(co2)))
    assert frame["co2"].notna().all() and prepared.notes == ["interpolated missing values ('co2': 59)"]
    # A missing week is linear between its neighbours.
    i = int(np.flatnonzero(co2["co2"].isna().to_numpy())[0])
    assert (
        co2["co2"].iloc[i - 1] <= frame["co2"].iloc[i] <= co2["co2"].iloc[i + 1]
        or co2["co2"].iloc[i + 1] <= frame["co2"].iloc[i]
    )
    assert set(frame[SERIES_COLUMN]) == {"0"}

    # Evaluation data maps through the training run's time axis (a later slice keeps its step numbers).
    later = prepare_frame(co2.iloc[1000:], spec, time_axis=prepared.time_axis)
    assert int(later.frame["date"].iloc[0]) == 1000


def test_missing_value_policies(co2):
    dropped = prepare_frame(
        co2, DataSpec.from_dict({"time": "date", "target": "co2", "missing": "drop", "allow_missing_timesteps": True})
    )
    assert len(dropped.frame) == len(co2) - 59
    with pytest.raises(DataError, match=r"missing values \('co2': 59\)"):
        prepare_frame(co2, DataSpec.from_dict({"time": "date", "target": "co2", "missing": "error"}))
    with pytest.raises(DataError, match=r"time steps are missing \(e.g. \d+ -> \d+\).*allow_missing_timesteps"):
        prepare_frame(co2, DataSpec.from_dict({"time": "date", "target": "co2", "missing": "drop"}))


def test_panel_with_group_ids_and_covariates(grunfeld):
    spec = DataSpec.from_dict(
        {
            "time": "year",
            "target": "invest",
            "group_ids": ["firm"],
            "unknown_reals": ["value", "capital"],
            "max_encoder_length": 5,
            "max_prediction_length": 2,
            "validation": 3,
            "test": 3,
        }
    )
    prepared, split = split_and_check(prepare_frame(grunfeld, spec))
    assert prepared.group_ids == ("firm",) and prepared.frame["firm"].nunique() == 11
    assert (split.first, split.last, split.val_start, split.test_start) == (1935, 1954, 1949, 1952)
    with pytest.raises(DataError, match=r"duplicate time step\(s\).*set data.group_ids"):
        prepare_frame(grunfeld, DataSpec.from_dict({"time": "year", "target": "invest"}))


def test_wrong_columns_list_missing_and_existing(grunfeld):
    spec = DataSpec.from_dict({"time": "year", "target": "investment", "known_reals": ["capitol"]})
    with pytest.raises(DataError) as info:
        prepare_frame(grunfeld, spec, source="grunfeld.csv")
    assert "grunfeld.csv: column(s) ['investment', 'capitol'] not found" in str(info.value)
    assert "['invest', 'value', 'capital', 'firm', 'year']" in str(info.value)


def test_non_numeric_columns():
    frame = pd.DataFrame({"t": range(5), "y": ["1", "2", "x", "4", "5"], "c": [True] * 5})
    with pytest.raises(
        DataError, match=r"target column 'y' must be numeric, but 1 value\(s\) are not \(first at row 2: 'x'\)"
    ):
        prepare_frame(frame, DataSpec.from_dict({"time": "t", "target": "y"}))
    frame["y"] = [1.0, 2, 3, 4, 5]
    with pytest.raises(DataError, match="real covariate column 'c' must be numeric, got dtype bool"):
        prepare_frame(frame, DataSpec.from_dict({"time": "t", "target": "y", "known_reals": ["c"]}))
    frame = pd.DataFrame({"t": ["a", "b", "c"], "y": [1.0, 2, 3]})
    with pytest.raises(DataError, match="time column 't' must hold integer steps or dates"):
        prepare_frame(frame, DataSpec.from_dict({"time": "t", "target": "y"}))


@pytest.mark.parametrize(
    "section, expected",
    [
        # training window (enc + pred) + validation + test steps, with integer split sizes: exact sum.
        ({"max_encoder_length": 12, "max_prediction_length": 4, "validation": 30, "test": 30}, 12 + 4 + 30 + 30),
        ({"max_encoder_length": 12, "max_prediction_length": 4, "validation": 30, "test": 0}, 12 + 4 + 30),
        # fractions: n - round(0.15 n) - round(0.15 n) >= 65 and round(0.15 n) >= 13 -> n = 93 (93 - 14 - 14 = 65).
        ({"max_encoder_length": 52, "max_prediction_length": 13}, 93),
    ],
)
def test_minimum_series_length(section, expected):
    spec = DataSpec.from_dict({"time": "t", "target": "y", **section})
    assert minimum_series_length(spec) == expected
    frame = pd.DataFrame({"t": range(expected), "y": np.sin(np.arange(expected, dtype=float))})
    split_and_check(prepare_frame(frame, spec))  # exactly long enough
    with pytest.raises(DataError, match=f"the minimum length is {expected}"):
        split_and_check(prepare_frame(frame.iloc[1:], spec))


def test_split_is_by_time():
    spec = DataSpec.from_dict({"time": "t", "target": "y", "validation": 0.2, "test": 10})
    split = compute_split(spec, 0, 99)
    assert (split.val_start, split.test_start, split.has_test) == (70, 90, True)


def test_short_series_of_a_panel_are_left_out_with_a_note(grunfeld):
    spec = DataSpec.from_dict(
        {
            "time": "year",
            "target": "invest",
            "group_ids": ["firm"],
            "max_encoder_length": 5,
            "max_prediction_length": 2,
            "validation": 3,
            "test": 3,
        }
    )
    short_firm = grunfeld["firm"].iloc[0]
    trimmed = grunfeld[~((grunfeld["firm"] == short_firm) & (grunfeld["year"] < 1944))]  # 5 training steps (1944-1948)
    prepared, _ = split_and_check(prepare_frame(trimmed, spec))
    assert short_firm not in set(prepared.frame["firm"])
    assert any("left out 1 series with fewer than 7 training steps" in note for note in prepared.notes)


def test_read_table_formats_and_errors(tmp_path):
    frame = pd.DataFrame({"t": [0, 1], "y": [1.0, 2.0]})
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_csv(tmp_path / "a.tsv", index=False, sep="\t")
    pd.testing.assert_frame_equal(read_table(tmp_path / "a.csv"), frame)
    pd.testing.assert_frame_equal(read_table(tmp_path / "a.tsv"), frame)
    with pytest.raises(InputError, match="data file not found"):
        read_table(tmp_path / "b.csv")
    with pytest.raises(InputError, match="expected one of the suffixes"):
        (tmp_path / "a.xlsx").write_bytes(b"PK")
        read_table(tmp_path / "a.xlsx")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "a.parquet").write_bytes(b"PAR1")
        with pytest.raises(InputError, match="reading parquet needs pyarrow"):
            read_table(tmp_path / "a.parquet")
    else:
        frame.to_parquet(tmp_path / "a.parquet")
        pd.testing.assert_frame_equal(read_table(tmp_path / "a.parquet"), frame)


# ---------------------------------------------------------------------------------------------- argument parsing


@pytest.mark.parametrize(
    "argv, message",
    [
        ((), "usage: nrnn"),
        (("train", "--config", "x.yaml", "--epochs", "3"), "nrnn train: error: unrecognized arguments: --epochs 3"),
        (("demo", "--epochs", "0"), "expected a positive integer, got '0'"),
        (("demo", "--dataset", "mnist"), "invalid choice: 'mnist'"),
        (("robustness", "--checkpoint", "m.ckpt"), "the following arguments are required: --data"),
        (
            ("robustness", "--checkpoint", "m.ckpt", "--data", "d.csv", "--strengths", "0.1,-1"),
            "expected a finite number >= 0",
        ),
        (
            ("train", "--config", "does/not/exist.yaml"),
            "nrnn train: error: config file not found: 'does/not/exist.yaml' (no such folder)",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message):
    code, out, err = run_main(*argv)
    assert code == EXIT_INPUT
    assert message in err
    assert "Traceback" not in err
    if argv:
        assert len(err.strip().splitlines()) == 1


def test_unexpected_errors_are_one_line_with_a_hint(monkeypatch):
    import nrnn_plugin.app.cli as cli

    def boom(args):
        raise RuntimeError("something broke\nover two lines")

    monkeypatch.setattr(cli, "cmd_plugins", boom)
    parser = cli.build_parser  # handlers are bound when the parser is built
    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), "plugins", boom))
    code, _, err = run_main("plugins")
    assert code == 1
    assert (
        err.strip() == "nrnn plugins: internal error: RuntimeError: something broke over two lines "
        "(rerun with NRNN_DEBUG=1 for the traceback)"
    )
    monkeypatch.setenv("NRNN_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["plugins"])


def _with_handler(parser, command, handler):
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices[command].set_defaults(handler=handler)
    return parser


def test_plugin_table_shows_reasons():
    report = [
        {"name": "builtin", "source": "builtin", "loaded": True},
        {"name": "x", "source": "entry point x-dist", "loaded": False, "reason": "ImportError: no y"},
        {
            "name": "f",
            "source": "entry point nrnn-plugin",
            "loaded": True,
            "adapter": {"available": False, "reason": "pytorch-forecasting is not installed", "handles": []},
        },
    ]
    text = format_plugin_report(report, "nrnn_plugin")
    lines = text.splitlines()
    assert lines[1].split() == ["plugin", "source", "status", "details"]
    assert lines[3].split()[0] == "x" and lines[3].endswith("skipped      ImportError: no y")
    assert "unavailable  pytorch-forecasting is not installed" in lines[4]


# ---------------------------------------------------------------------------------------------- model and run files


@pytest.fixture(scope="module")
def sunspot_datasets():
    pytest.importorskip("pytorch_forecasting")
    sm = pytest.importorskip("statsmodels.api")
    from nrnn_plugin.app import datasets

    frame = sm.datasets.sunspots.load_pandas().data.astype({"YEAR": int})
    spec = DataSpec.from_dict(
        {
            "time": "YEAR",
            "target": "SUNACTIVITY",
            "max_encoder_length": 12,
            "max_prediction_length": 4,
            "normalizer": "group",
            "validation": 30,
            "test": 30,
        }
    )
    prepared, split = split_and_check(prepare_frame(frame, spec))
    return datasets.build_datasets(prepared, split)


@pytest.mark.filterwarnings("ignore:Attribute .* is an instance of `nn.Module`")
def test_model_arguments_are_checked_against_the_class(sunspot_datasets):
    from nrnn_plugin.app.run_config import ModelSpec
    from nrnn_plugin.app.training import build_model

    training = sunspot_datasets.training
    with pytest.raises(ConfigError) as info:
        build_model(ModelSpec.from_dict({"class": "RecurrentNetwork", "hiden_size": 8}), training)
    assert "unknown key(s) ['hiden_size'] for RecurrentNetwork" in str(info.value)
    assert "'hidden_size'" in str(info.value) and "'learning_rate'" in str(info.value)
    with pytest.raises(ConfigError, match=r"\['x_reals'\] come from the data section"):
        build_model(ModelSpec.from_dict({"x_reals": ["a"]}), training)
    with pytest.raises(ConfigError, match=r"model.loss: expected one of \[.*'MAE'.*\], got 'Huber'"):
        build_model(ModelSpec.from_dict({"loss": "Huber"}), training)

    model = build_model(ModelSpec.from_dict({"hidden_size": 8, "rnn_layers": 1, "loss": "RMSE"}), training)
    assert type(model).__name__ == "RecurrentNetwork" and model.hparams.hidden_size == 8
    assert type(model.loss).__name__ == "RMSE"


def test_split_windows_do_not_overlap_in_prediction_time(sunspot_datasets):
    """Validation windows predict only validation steps, test windows only test steps (no leakage)."""
    split = sunspot_datasets.split

    def predicted_steps(dataset):
        index = dataset.index  # one row per window: its first time step and length
        first = index["time"] + dataset.max_encoder_length
        last = index["time"] + index["sequence_length"] - 1
        return int(first.min()), int(last.max())

    assert predicted_steps(sunspot_datasets.training)[1] == split.val_start - 1
    assert predicted_steps(sunspot_datasets.validation) == (split.val_start, split.test_start - 1)
    assert predicted_steps(sunspot_datasets.test) == (split.test_start, split.last)
    assert (split.val_start, split.test_start, split.last) == (1949, 1979, 2008)


def test_load_run_refuses_a_checkpoint_without_its_sidecar(tmp_path):
    pytest.importorskip("pytorch_forecasting")
    from nrnn_plugin.app import runs

    with pytest.raises(InputError, match="checkpoint not found"):
        runs.load_run(tmp_path / "model.ckpt")
    (tmp_path / "model.ckpt").write_bytes(b"")
    with pytest.raises(InputError, match=r"sidecar not found: .*model.nrnn.json"):
        runs.load_run(tmp_path / "model.ckpt")
    (tmp_path / "model.nrnn.pt").write_bytes(b"an old pickled sidecar")
    with pytest.raises(
        InputError, match=r"model.nrnn.pt is the pickled sidecar of an older nrnn-plugin, which is never read"
    ):
        runs.load_run(tmp_path)
    (tmp_path / "model.nrnn.json").write_bytes(b"\x80\x04not json")
    with pytest.raises(InputError, match=r"is not an nrnn-plugin run sidecar \(expected JSON\)"):
        runs.load_run(tmp_path / "model.ckpt")
    (tmp_path / "model.nrnn.json").write_text('{"format": "nrnn-run", "version": 1}')
    with pytest.raises(InputError, match="sidecar version 1 is not supported"):
        runs.load_run(tmp_path / "model.ckpt")


# ---------------------------------------------------------------------------------------------- outputs, variants


def test_output_folder_is_all_or_nothing(tmp_path):
    from nrnn_plugin.app.outputs import OutputFolder

    target = tmp_path / "run"
    with OutputFolder(target) as staging:
        (staging / "a.txt").write_text("1")
        assert not target.exists() and staging.parent == tmp_path
    assert (target / "a.txt").read_text() == "1"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's private 0o700
    with pytest.raises(InputError, match="exists and is not empty; pass --overwrite"):
        OutputFolder(target)
    with pytest.raises(RuntimeError), OutputFolder(target, overwrite=True) as staging:
        (staging / "b.txt").write_text("half")
        raise RuntimeError("stopped half-way")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]  # the previous contents, untouched
    with OutputFolder(target, overwrite=True) as staging:
        (staging / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging or old folder left
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        OutputFolder(tmp_path / "file")
    with pytest.raises(InputError, match="cannot create .* is a file"):
        OutputFolder(tmp_path / "file" / "sub")


def test_variants_are_named_globs_of_run_folders(tmp_path):
    from nrnn_plugin.app.variants import parse_variants

    for name in ("plain_1", "plain_0", "noisy_0"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.ckpt").write_bytes(b"")
    plain, noisy = parse_variants([f"plain={tmp_path}/plain_*", f"noisy={tmp_path}/noisy_0/model.ckpt"])
    assert plain.name == "plain" and [p.parent.name for p in plain.checkpoints] == ["plain_0", "plain_1"]
    assert noisy.checkpoints == (tmp_path / "noisy_0" / "model.ckpt",)
    (single,) = parse_variants([str(tmp_path / "plain_0")])
    assert single.name is None and single.checkpoints == (tmp_path / "plain_0" / "model.ckpt",)
    with pytest.raises(InputError, match="variant names must be distinct"):
        parse_variants([f"a={tmp_path}/plain_0", f"a={tmp_path}/plain_1"])
    with pytest.raises(InputError, match="no run folder or checkpoint matches"):
        parse_variants([f"a={tmp_path}/other_*"])
    with pytest.raises(InputError, match="name every variant"):
        parse_variants([f"a={tmp_path}/plain_0", str(tmp_path / "plain_1")])


def test_progress_bars_only_on_a_terminal():
    from nrnn_plugin.app.progress import StderrReporter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain = StderrReporter(io.StringIO())
    assert not plain.interactive and plain.bar(3, "x") is None
    plain.progress("one line")
    assert plain.stream.getvalue().endswith("] one line\n")
    terminal = StderrReporter(Terminal())
    assert terminal.interactive and not StderrReporter(Terminal(), quiet=True).interactive
    bar = terminal.bar(3, "robustness")
    bar.update(1)
    terminal.progress("above the bar")
    bar.close()
    assert "robustness" in terminal.stream.getvalue() and "above the bar" in terminal.stream.getvalue()


def test_a_logger_whose_package_is_missing_is_refused_before_training(monkeypatch):
    pytest.importorskip("lightning")
    import importlib.util

    from nrnn_plugin.app import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"trainer.logger: 'tensorboard' needs the tensorboard package.*pip install"):
        tracking.check_logger("tensorboard")
    tracking.check_logger("csv")
    assert tracking.make_logger("none", Path(".")) is None
