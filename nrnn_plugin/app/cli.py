"""The ``nrnn`` command line (also ``python -m nrnn_plugin``); the commands are described in ``docs/cli.md``.

Subcommands::

    nrnn demo         train a forecaster on real data with and without hidden-state noise; compare robustness
    nrnn train        config-driven pytorch-forecasting training (``--config run.yaml``)
    nrnn predict      forecasts of a trained run on the latest history, with real dates (``forecasts.csv``)
    nrnn tune         choose the noise settings on validation data (an Optuna study over a run file)
    nrnn robustness   the robustness report of trained runs on a data file (named variants over seeds)
    nrnn bench        speed of the noisy layers against PyTorch's fused kernels; cost of the regularizer
    nrnn schema       the run file's JSON Schema (or its reference page, ``--markdown``)
    nrnn plugins      the loaded adapters and plugins, and why any was skipped

This module stays light: it imports argparse and the standard library only. Each subcommand imports what it
needs (pandas, Lightning, pytorch-forecasting) when it runs, so ``nrnn --help`` and ``nrnn plugins`` start fast.

Errors in the user's input (files, columns, configuration) print one line on stderr and exit with status 2;
anything unexpected prints one line too, with exit status 1 (``NRNN_DEBUG=1`` shows the traceback). SIGINT
(Ctrl-C) and SIGTERM stop a command with one line and exit status 130 / 143; outputs are written into a
staging folder and moved into place only when complete, so a stopped command leaves them as they were.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nrnn_plugin.app.commands import (
    cmd_bench,
    cmd_demo,
    cmd_plugins,
    cmd_predict,
    cmd_robustness,
    cmd_schema,
    cmd_train,
    cmd_tune,
)
from nrnn_plugin.app.errors import InputError
from nrnn_plugin.app.outputs import Interrupted, stop_on_signals
from nrnn_plugin.app.quiet import DEBUG_VAR, debug

__all__ = ["main", "build_parser"]

PROG = "nrnn"
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


# ---------------------------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _float_list(text: str) -> tuple[float, ...]:
    values = tuple(_non_negative_float(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= 0, got {text!r}")
    return values


def _name_list(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


_THREADS = (
    "PyTorch CPU threads (default: 1 for train, predict, robustness and demo, measured fastest for small "
    "recurrent models; PyTorch's default for bench)"
)
_OVERWRITE = "replace an existing non-empty output folder (only once the new one is complete)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``nrnn train: error: ...``) and exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_INPUT, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from nrnn_plugin import __version__

    parser = _Parser(
        prog=PROG,
        description="Train existing RNN/LSTM/GRU forecasters as Noisy RNNs and measure what it buys.",
        epilog="Start with 'nrnn demo'. NRNN_DEBUG=1 shows tracebacks and framework warnings.",
    )
    parser.add_argument("--version", action="version", version=f"nrnn-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    Handler = Callable[[argparse.Namespace], int]

    def add(name: str, handler: Handler, help_: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description)
        p.set_defaults(handler=handler)
        return p

    demo = add(
        "demo",
        cmd_demo,
        "train on real data with and without hidden-state noise, compare under input perturbations",
        "Train the same pytorch-forecasting LSTM twice on a real series that ships offline (Mauna Loa CO2 weekly "
        "from statsmodels), with and without Noisy RNN hidden-state noise (same seed, same budget), then compare "
        "both on held-out windows, clean and with perturbed encoder inputs. Prints the table; writes a CSV and a "
        "PNG plot to --out.",
    )
    demo.add_argument("--out", default="outputs/demo", help="output folder (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="a smaller run that finishes in under a minute")
    demo.add_argument("--dataset", choices=("co2", "sunspots"), default="co2", help="data set (default: %(default)s)")
    demo.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (default: by --quick)")
    demo.add_argument("--seed", type=int, default=0, help="seed of weights, batches and noise (default: 0)")
    demo.add_argument(
        "--noise", type=_non_negative_float, default=None, help="additive noise level sigma (default: the demo's)"
    )
    demo.add_argument("--seeds", type=_positive_int, default=None, help="training seeds (default: 64; 2 with --quick)")
    demo.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="seeds trained at a time, each in its own process (default: the CPU cores available, at most 4)",
    )
    demo.add_argument("--threads", type=_positive_int, default=None, help=_THREADS)
    demo.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
    demo.add_argument("--quiet", action="store_true", help="no progress lines")

    train = add(
        "train",
        cmd_train,
        "config-driven pytorch-forecasting training (--config run.yaml)",
        "Train a pytorch-forecasting model on a CSV or parquet file as described by a run file (see "
        "examples/run.yaml, docs/run-file.md). A 'noise:' section switches Noisy RNN training on. Writes the run "
        "folder: model.ckpt (loads into the vanilla model class with load_from_checkpoint), its sidecar "
        "model.nrnn.json (configuration, time axis, split; plain JSON), run.yaml and logs/.",
    )
    train.add_argument("--config", required=True, help="the run file (YAML)")
    train.add_argument("--data", default=None, help="data file; overrides data.path")
    train.add_argument("--out", default=None, help="output folder; overrides output.dir")
    train.add_argument("--max-epochs", type=_positive_int, default=None, help="overrides trainer.max_epochs")
    train.add_argument(
        "--seed", type=_non_negative_int, default=None, help="overrides trainer.seed (train variants over seeds)"
    )
    train.add_argument(
        "--no-noise", action="store_true", help="ignore the noise section: the plain baseline of the same run file"
    )
    train.add_argument("--threads", type=_positive_int, default=None, help=_THREADS)
    train.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
    train.add_argument("--quiet", action="store_true", help="no progress lines")

    predict = add(
        "predict",
        cmd_predict,
        "forecasts of a trained run on the latest history, with real dates (forecasts.csv)",
        "Forecast the next max_prediction_length steps of every series in a data file with the latest history "
        "(the columns of training; rows for future times with their known covariates may follow, target empty). "
        "Writes forecasts.csv: group ids, time (the real dates), horizon, forecast and quantiles when the model "
        "has them (QuantileLoss, DeepAR) or when --samples asks for hidden-noise Monte Carlo sampling.",
    )
    predict.add_argument("--run", required=True, help="the run folder written by 'nrnn train' (or its model.ckpt)")
    predict.add_argument("--data", required=True, help="CSV or parquet file with the latest history")
    predict.add_argument("--out", default=None, help="output folder (default: RUN/predictions)")
    predict.add_argument(
        "--samples",
        type=_positive_int,
        default=None,
        help="hidden-state noise Monte Carlo paths per series (quantiles from them; DeepAR: its own samples)",
    )
    predict.add_argument(
        "--sample-noise",
        type=_non_negative_float,
        default=None,
        help="additive sigma for --samples (default: the run's training noise level)",
    )
    predict.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default: 0)")
    predict.add_argument("--threads", type=_positive_int, default=None, help=_THREADS)
    predict.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
    predict.add_argument("--quiet", action="store_true", help="no progress lines")

    _add_tune(add, cmd_tune)

    robust = add(
        "robustness",
        cmd_robustness,
        "robustness report of trained runs: named variants over training seeds (table, CSVs, PNG)",
        "Evaluate runs written by 'nrnn train' on a data file with the same columns: the forecast error (MAE, "
        "sMAPE, MASE; pooled and per series) on the held-out windows, clean and with perturbed encoder inputs, "
        "over a grid of strengths. Name variants over several runs (--checkpoint plain='runs/plain_*' "
        "--checkpoint noisy='runs/noisy_*'): each is reported as mean and spread over its training seeds, with "
        "the paired per-seed change against the first variant (confidence interval, seeds improved) and each "
        "model's sensitivity to the perturbations.",
    )
    robust.add_argument(
        "--checkpoint",
        required=True,
        action="append",
        metavar="[NAME=]PATH",
        help="a model.ckpt or run folder, or NAME=GLOB naming a variant over several runs (quote globs); repeat",
    )
    robust.add_argument("--data", required=True, help="CSV or parquet file with the training columns")
    robust.add_argument("--out", default=None, help="output folder (default: FIRST_RUN/robustness)")
    robust.add_argument(
        "--perturbations", type=_name_list, default=None, help="comma-separated perturbation names (default: all)"
    )
    robust.add_argument("--strengths", type=_float_list, default=None, help="comma-separated strengths")
    robust.add_argument("--seeds", type=_positive_int, default=3, help="perturbation seeds (default: 3)")
    robust.add_argument(
        "--metric",
        choices=("mase", "smape", "mae"),
        default="mase",
        help="metric of the table and plot (default: mase, scale-free; mae is in the target's units)",
    )
    robust.add_argument(
        "--windows",
        choices=("test", "all"),
        default="test",
        help="evaluate the run's held-out test windows (default) or every window in the file",
    )
    robust.add_argument("--threads", type=_positive_int, default=None, help=_THREADS)
    robust.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
    robust.add_argument("--quiet", action="store_true", help="no progress lines")

    bench = add(
        "bench",
        cmd_bench,
        "speed table: noisy layers against the fused kernels; regularizer cost",
        "Time a training step (forward + backward) of the noisy LSTM/GRU/RNN layers as ratios against PyTorch's "
        "fused kernels, and the explicit regularizer's cost against a plain loss, in one process.",
    )
    bench.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke test for the test suite
    bench.add_argument("--out", default=None, help="also write every measurement as CSV into this folder")
    bench.add_argument("--threads", type=_positive_int, default=None, help="PyTorch CPU threads (default: PyTorch's)")
    bench.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time (default) or process CPU time (steadier on a busy machine; use with --threads 1)",
    )
    bench.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
    bench.add_argument("--quiet", action="store_true", help="no progress lines")

    schema = add(
        "schema",
        cmd_schema,
        "the run file's JSON Schema (editors complete and check run files with it)",
        "Print the JSON Schema of a run file (nrnn schema > run-file.schema.json), or with --markdown the "
        "reference page docs/run-file.md. Both are generated from the one schema in nrnn_plugin/app/run_config.py.",
    )
    schema.add_argument("--markdown", action="store_true", help="the reference page (Markdown) instead")

    plugins = add(
        "plugins",
        cmd_plugins,
        "list loaded adapters and plugins, and why any was skipped",
        "List the plugins nrnn-plugin loaded (built-in hooks, its adapters, third-party entry points in group "
        "'nrnn_plugin') and the reason for any that was skipped or is unavailable.",
    )
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(_subparsers=sub.choices)
    return parser


def _add_tune(add: Callable[..., argparse.ArgumentParser], handler: Callable[[argparse.Namespace], int]) -> None:
    """``nrnn tune`` (its engine is :mod:`nrnn_plugin.app.tune`)."""
    tune = add(
        "tune",
        handler,
        "choose the noise settings on validation data (Optuna study over a run file)",
        "Train the run file's model once per trial with candidate noise settings (trial 0: none), score each on "
        "the validation windows clean and under the tune section's perturbation mix, and pick the most robust "
        "trial whose clean error is within the tolerance of trial 0's. Writes trials.csv, best.yaml (the run file "
        "with the chosen noise section) and front.png to --out; the study lives in --out/study.db (running again "
        "continues it) or in --storage.",
    )
    tune.add_argument("--config", required=True, help="the run file (YAML) with an optional 'tune:' section")
    tune.add_argument("--trials", type=_positive_int, default=None, help="total trials (default: tune.trials or 20)")
    tune.add_argument("--out", required=True, help="output folder (trials.csv, best.yaml, front.png, study.db)")
    tune.add_argument(
        "--storage", default=None, help="Optuna storage URL shared by several workers (default: sqlite in --out)"
    )
    tune.add_argument("--data", default=None, help="data file; overrides data.path")
    tune.add_argument("--max-epochs", type=_positive_int, default=None, help="overrides trainer.max_epochs")
    tune.add_argument("--threads", type=_positive_int, default=None, help="PyTorch CPU threads (default: PyTorch's)")
    tune.add_argument("--quiet", action="store_true", help="no progress lines")


# ---------------------------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script passes it to ``sys.exit``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so the message says which command and its --help
        owner = args._subparsers.get(args.command, parser) if getattr(args, "command", None) else parser
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    prefix = f"{PROG} {args.command}"

    try:
        with stop_on_signals():
            return int(args.handler(args))
    except Interrupted as exc:
        print(f"{prefix}: stopped by {exc.name}; outputs left as they were", file=sys.stderr)
        return exc.exit_status
    except InputError as exc:
        if debug():
            raise
        print(f"{prefix}: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (nrnn plugins | head): stop quietly, as the Python docs advise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_INTERNAL
    except Exception as exc:  # never a traceback for the user; NRNN_DEBUG=1 shows it
        if debug():
            raise
        print(
            f"{prefix}: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            f"(rerun with {DEBUG_VAR}=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
