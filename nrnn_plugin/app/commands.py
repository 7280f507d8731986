"""The handlers of the ``nrnn`` commands: each checks its input, imports what it needs and runs an engine.

Each handler takes the parsed arguments and returns the exit status; errors in the user's input are raised as
:class:`~nrnn_plugin.app.errors.InputError` (one line, exit 2, printed by :func:`nrnn_plugin.app.cli.main`).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nrnn_plugin.app.errors import InputError
from nrnn_plugin.app.progress import StderrReporter
from nrnn_plugin.app.quiet import DEBUG_VAR, quiet_frameworks

__all__ = [
    "cmd_plugins",
    "cmd_train",
    "cmd_predict",
    "cmd_tune",
    "cmd_robustness",
    "cmd_demo",
    "cmd_bench",
    "cmd_schema",
    "format_plugin_report",
    "DEBUG_VAR",
    "THREAD_DEFAULTS",
]

EXIT_OK = 0

#: PyTorch CPU threads per command when ``--threads`` is not given (measured: ``docs/cli.md``, "Threads"). The
#: recurrent models these commands train and evaluate are small: their matrix products are too small to split
#: across cores, and OpenMP workers spinning on a shared or oversubscribed machine cost more than they give.
THREAD_DEFAULTS = {"train": 1, "predict": 1, "robustness": 1, "demo": 1}


def set_threads(threads: int | None, command: str | None = None) -> int:
    """``torch.set_num_threads`` for this run: ``threads``, else the command's default (:data:`THREAD_DEFAULTS`;
    PyTorch's own default for commands not listed). Returns the thread count in use."""
    import torch

    chosen = threads if threads is not None else THREAD_DEFAULTS.get(command or "")
    if chosen is not None:
        torch.set_num_threads(chosen)
    return int(torch.get_num_threads())


def require(command: str, modules: Sequence[str], extra: str) -> None:
    """Refuse to start ``command`` (one line, exit 2) when an optional dependency is not installed."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(
            f"'nrnn {command}' needs {', '.join(missing)}, which is not installed: pip install 'nrnn-plugin[{extra}]'"
        )


FORECASTING = ("lightning", "pytorch_forecasting")


def _finish(reporter: StderrReporter, text: str, files: Sequence[Path]) -> int:
    """A command's last step: the result on stdout, each written file as a note on stderr; the exit status."""
    print(text)
    for path in files:
        reporter.note(f"wrote {path}")
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    import warnings

    from nrnn_plugin.plugins import ALLOWLIST_VAR, DISABLE_AUTOLOAD_VAR, ENTRY_POINT_GROUP, plugin_report

    with warnings.catch_warnings():  # a broken plugin's warning: its reason is in the report below
        warnings.simplefilter("ignore", RuntimeWarning)
        report = plugin_report()
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return EXIT_OK
    print(format_plugin_report(report, ENTRY_POINT_GROUP))
    switches = [f"{var}={os.environ[var]}" for var in (DISABLE_AUTOLOAD_VAR, ALLOWLIST_VAR) if var in os.environ]
    if switches:
        print("environment: " + ", ".join(switches))
    return EXIT_OK


def format_plugin_report(report: Sequence[dict[str, Any]], group: str) -> str:
    """The plugin report as a fixed-width table: name, source, status, and what it handles or why it was skipped."""
    rows = []
    for entry in report:
        adapter = entry.get("adapter") or {}
        if not entry["loaded"]:
            status, detail = "skipped", entry.get("reason", "")
        elif adapter and not adapter.get("available", True):
            status, detail = "unavailable", adapter.get("reason", "")
        else:
            status = "loaded"
            handles = adapter.get("handles") or []
            detail = ("handles " + ", ".join(_short(h) for h in handles)) if handles else ""
        rows.append((entry["name"], entry["source"], status, detail))
    from tabulate import tabulate

    table = tabulate(rows, headers=("plugin", "source", "status", "details"), tablefmt="plain")
    lines = [f"nrnn-plugin plugins (entry-point group {group!r}):"] + ["  " + line for line in table.splitlines()]
    return "\n".join(line.rstrip() for line in lines)


def _short(qualified: str) -> str:
    """``pytorch_forecasting.models.nn.rnn.LSTM`` -> ``pytorch_forecasting...rnn.LSTM`` (readable in a table)."""
    parts = qualified.split(".")
    return qualified if len(parts) <= 3 else f"{parts[0]}...{parts[-2]}.{parts[-1]}"


def cmd_train(args: argparse.Namespace) -> int:
    from nrnn_plugin.app.outputs import check_output_folder
    from nrnn_plugin.app.run_config import load_run_config

    set_threads(args.threads, "train")
    reporter = StderrReporter(quiet=args.quiet)
    config = load_run_config(args.config)  # the run file, the output folder and the data before the slow imports
    if args.no_noise:
        config = config.replace(noise=None)
    check_output_folder(args.out or config.output.dir, overwrite=args.overwrite)
    from nrnn_plugin.app.data import load_training_data

    config, prepared, split = load_training_data(config, args.data)
    require("train", FORECASTING, "forecasting")
    from nrnn_plugin.app.tracking import check_logger

    check_logger(config.trainer.logger)
    reporter.progress(f"{args.config}: valid; importing pytorch-forecasting")
    from nrnn_plugin.app import training

    quiet_frameworks()
    overrides: dict[str, Any] = {}
    if args.max_epochs is not None:
        overrides["max_epochs"] = args.max_epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    result = training.run_training(
        config,
        prepared,
        split,
        out_dir=args.out,
        overwrite=args.overwrite,
        trainer_overrides=overrides,
        reporter=reporter,
    )
    print(training.format_training_summary(result))
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from nrnn_plugin.app.outputs import check_output_folder

    set_threads(args.threads, "predict")
    reporter = StderrReporter(quiet=args.quiet)
    out = Path(args.out) if args.out else Path(args.run) / "predictions"
    check_output_folder(out, overwrite=args.overwrite)
    require("predict", FORECASTING, "forecasting")
    from nrnn_plugin.app import predict

    quiet_frameworks()
    result = predict.run_predict(
        run=args.run,
        data_path=args.data,
        out_dir=out,
        overwrite=args.overwrite,
        samples=args.samples,
        noise=args.sample_noise,
        seed=args.seed,
        reporter=reporter,
    )
    return _finish(reporter, result.summary, result.files)


def cmd_robustness(args: argparse.Namespace) -> int:
    from nrnn_plugin.app.outputs import check_output_folder

    set_threads(args.threads, "robustness")
    reporter = StderrReporter(quiet=args.quiet)
    from nrnn_plugin.app.variants import parse_variants

    variants = parse_variants(args.checkpoint)  # names and globs checked before the slow imports
    out = Path(args.out) if args.out else variants[0].checkpoints[0].parent / "robustness"
    check_output_folder(out, overwrite=args.overwrite)
    require("robustness", (*FORECASTING, "matplotlib"), "forecasting,data")
    from nrnn_plugin.app import report as report_engine

    quiet_frameworks()
    report = report_engine.run_robustness_report(
        variants=variants,
        data_path=args.data,
        out_dir=out,
        overwrite=args.overwrite,
        perturbations=args.perturbations,
        strengths=args.strengths,
        seeds=args.seeds,
        windows=args.windows,
        metric=args.metric,
        reporter=reporter,
    )
    return _finish(reporter, report.table, report.files)


def cmd_schema(args: argparse.Namespace) -> int:
    from nrnn_plugin.app import schema_doc

    print(schema_doc.markdown_reference() if args.markdown else schema_doc.schema_json(), end="")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from nrnn_plugin.app.outputs import check_output_folder

    set_threads(args.threads, "demo")
    check_output_folder(args.out, overwrite=args.overwrite)
    reporter = StderrReporter(quiet=args.quiet)
    require("demo", (*FORECASTING, "statsmodels", "matplotlib"), "forecasting,data")
    from nrnn_plugin.app import demo

    quiet_frameworks()

    result = demo.run_demo(
        out_dir=args.out,
        quick=args.quick,
        dataset=args.dataset,
        epochs=args.epochs,
        seed=args.seed,
        noise=args.noise,
        seeds=args.seeds,
        jobs=args.jobs if args.jobs is not None else default_jobs(),
        overwrite=args.overwrite,
        reporter=reporter,
    )
    return _finish(reporter, result.table, result.files)


def default_jobs(limit: int = 4) -> int:
    """Worker processes for the demo's seeds: the CPU cores this process may use, at most ``limit``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(limit, cores))


def cmd_bench(args: argparse.Namespace) -> int:
    from nrnn_plugin.app.outputs import check_output_folder

    set_threads(args.threads, "bench")
    if args.out is not None:
        check_output_folder(args.out, overwrite=args.overwrite)
    reporter = StderrReporter(quiet=args.quiet)
    from nrnn_plugin.app import bench

    quiet_frameworks()

    result = bench.run_bench(
        quick=args.quick,
        tiny=args.tiny,
        clock=args.clock,
        out_dir=args.out,
        overwrite=args.overwrite,
        reporter=reporter,
    )
    return _finish(reporter, result.table, result.files)


def cmd_tune(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    reporter = StderrReporter(quiet=args.quiet)
    require("tune", (*FORECASTING, "optuna", "optuna_integration"), "forecasting,tune")
    from nrnn_plugin.app import training, tune  # noqa: F401 (Lightning imported before it is quietened)

    quiet_frameworks()
    result = tune.run_tune(
        args.config,
        out_dir=args.out,
        trials=args.trials,
        storage=args.storage,
        data_path=args.data,
        max_epochs=args.max_epochs,
        reporter=reporter,
    )
    return _finish(reporter, tune.format_summary(result, args.out), result.files)
