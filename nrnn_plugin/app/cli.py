"""The ``nrnn`` command line (also ``python -m nrnn_plugin``); the commands are described in ``docs/cli.md``.

Subcommands::

    nrnn demo         train a forecaster on real data with and without hidden-state noise; compare robustness
    nrnn train        config-driven pytorch-forecasting training (``--config run.yaml``)
    nrnn tune         choose the noise settings on validation data (an Optuna study over a run file)
    nrnn robustness   the robustness report of a trained checkpoint on a data file
    nrnn bench        speed of the noisy layers against PyTorch's fused kernels; cost of the regularizer
    nrnn plugins      the loaded adapters and plugins, and why any was skipped

This module stays light: it imports argparse and the standard library only. Each subcommand imports what it
needs (pandas, Lightning, pytorch-forecasting) when it runs, so ``nrnn --help`` and ``nrnn plugins`` start fast.

Errors in the user's input (files, columns, configuration) print one line on stderr and exit with status 2;
anything unexpected prints one line too, with exit status 1 (``NRNN_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nrnn_plugin.app.commands import (
    DEBUG_VAR,
    cmd_bench,
    cmd_demo,
    cmd_plugins,
    cmd_robustness,
    cmd_train,
    cmd_tune,
    debug,
)
from nrnn_plugin.app.errors import InputError

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
    demo.add_argument(
        "--threads", type=_positive_int, default=1, help="PyTorch CPU threads (default: 1, fastest for this model size)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress lines")

    train = add(
        "train",
        cmd_train,
        "config-driven pytorch-forecasting training (--config run.yaml)",
        "Train a pytorch-forecasting model on a CSV or parquet file as described by a run file (see "
        "examples/run.yaml). A 'noise:' section switches Noisy RNN training on. Writes model.ckpt (loads into the "
        "vanilla model class with load_from_checkpoint), its sidecar model.nrnn.pt (dataset parameters, split, "
        "config; read by 'nrnn robustness') and run.yaml.",
    )
    train.add_argument("--config", required=True, help="the run file (YAML)")
    train.add_argument("--data", default=None, help="data file; overrides data.path")
    train.add_argument("--out", default=None, help="output folder; overrides output.dir")
    train.add_argument("--max-epochs", type=_positive_int, default=None, help="overrides trainer.max_epochs")
    train.add_argument(
        "--no-noise", action="store_true", help="ignore the noise section: the plain baseline of the same run file"
    )
    train.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="PyTorch CPU threads (default: PyTorch's; 1 is often fastest for small recurrent models)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress lines")

    _add_tune(add, cmd_tune)

    robust = add(
        "robustness",
        cmd_robustness,
        "robustness report of a trained checkpoint (table, CSV, PNG)",
        "Evaluate checkpoints written by 'nrnn train' on a data file with the same columns: the forecast error "
        "on the held-out windows, clean and with perturbed encoder inputs, over a grid of strengths. Several "
        "--checkpoint options are compared in one table.",
    )
    robust.add_argument(
        "--checkpoint",
        required=True,
        action="append",
        help="model.ckpt written by 'nrnn train'; repeat to compare runs in one table (e.g. with and without noise)",
    )
    robust.add_argument("--data", required=True, help="CSV or parquet file with the training columns")
    robust.add_argument("--out", default=None, help="output folder (default: the first checkpoint's folder)")
    robust.add_argument(
        "--perturbations", type=_name_list, default=None, help="comma-separated perturbation names (default: all)"
    )
    robust.add_argument("--strengths", type=_float_list, default=None, help="comma-separated strengths")
    robust.add_argument("--seeds", type=_positive_int, default=3, help="perturbation seeds (default: 3)")
    robust.add_argument(
        "--windows",
        choices=("test", "all"),
        default="test",
        help="evaluate the run's held-out test windows (default) or every window in the file",
    )
    robust.add_argument("--threads", type=_positive_int, default=None, help="PyTorch CPU threads (default: PyTorch's)")
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
    bench.add_argument("--quiet", action="store_true", help="no progress lines")

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
        return args.handler(args)
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
