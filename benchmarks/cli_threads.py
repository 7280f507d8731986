"""Wall time of ``nrnn train``, ``nrnn predict`` and ``nrnn robustness`` against the PyTorch thread count.

The defaults of ``--threads`` (``nrnn_plugin.app.commands.THREAD_DEFAULTS``) come from this script: every
command runs as a user runs it (a subprocess, real data from statsmodels), alternating thread counts so that
a change in the machine's load hits every setting alike; the median over ``--repeats`` rounds is reported,
with the machine's load average (the numbers depend on it).

    python benchmarks/cli_threads.py --threads 1,2 --repeats 3 --out benchmarks/results/cli_threads.csv
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

RUN = """\
data:
  path: macro.csv
  time: quarter
  target: value
  group_ids: [series]
  static_categoricals: [series]
  max_encoder_length: 16
  max_prediction_length: 4
  validation: 24
  test: 24
model:
  class: RecurrentNetwork
  hidden_size: {hidden}
  loss: MAE
trainer:
  max_epochs: {epochs}
  seed: 0
noise:
  additive: 0.1
  seed: 0
output:
  dir: runs/macro
"""


def macro(path: Path) -> None:
    """statsmodels macrodata: eight quarterly series, 1959-2009, stacked with a group id."""
    import statsmodels.api as sm

    data = sm.datasets.macrodata.load_pandas().data
    quarters = pd.date_range("1959-01-01", periods=len(data), freq="QS-OCT").strftime("%Y-%m-%d")
    columns = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate"]
    frame = pd.concat([pd.DataFrame({"quarter": quarters, "series": c, "value": data[c]}) for c in columns])
    frame.to_csv(path, index=False)


def timed(argv: list[str], cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "nrnn_plugin", *argv], cwd=cwd, env=env, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode()[-2000:])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default=None, help="CSV of every measurement")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        macro(work / "macro.csv")
        (work / "run.yaml").write_text(RUN.format(hidden=args.hidden, epochs=args.epochs))
        timed(["train", "--config", "run.yaml", "--quiet"], work)  # warm caches; the run the others read
        commands = {
            "train": ["train", "--config", "run.yaml", "--out", "runs/t", "--overwrite", "--quiet"],
            "predict": [
                "predict",
                "--run",
                "runs/macro",
                "--data",
                "macro.csv",
                "--samples",
                "100",
                "--out",
                "p",
                "--overwrite",
                "--quiet",
            ],
            "robustness": [
                "robustness",
                "--checkpoint",
                "runs/macro",
                "--data",
                "macro.csv",
                "--out",
                "r",
                "--overwrite",
                "--quiet",
            ],
        }
        for repeat in range(args.repeats):
            for command, argv in commands.items():
                for count in threads if repeat % 2 == 0 else threads[::-1]:
                    seconds = timed([*argv, "--threads", str(count)], work)
                    load = os.getloadavg()[0]
                    rows.append(
                        {"command": command, "threads": count, "repeat": repeat, "seconds": seconds, "load": load}
                    )
                    print(f"{command:<11} threads {count}: {seconds:6.1f} s (load {load:.1f})", flush=True)
    frame = pd.DataFrame(rows)
    summary = frame.groupby(["command", "threads"])["seconds"].agg(["median", "min", "max"]).reset_index()
    print(summary.to_string(index=False))
    print(f"cpus {os.cpu_count()}, load average during the runs {statistics.mean(frame['load']):.1f}")
    if args.out:
        frame.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
