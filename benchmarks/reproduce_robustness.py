"""Does hidden-state noise help, against what a user would do instead? Paired, tuned, many seeds.

For every data set (``benchmarks/evidence_data.py``) and every *arm*:

* ``plain``: LSTM, no regularisation;
* ``noise``: hidden-state noise (``NoiseConfig(additive, multiplicative)``, Euler-Maruyama);
* ``regularizer``: the explicit regularizer instead of injection (``mode="regularizer"``, level searched);
* ``dropout``: dropout on the last hidden state before the head;
* ``input_noise``: Gaussian noise added to the (standardised) inputs in training;
* ``weight_decay``: AdamW's decoupled weight decay;

the strength is chosen on validation data by the same tuner (:func:`nrnn_plugin.tuning.tune`: trial 0 is
``plain``; objectives: the clean validation metric and the mean validation metric under white noise 0.4 and
salt and pepper 0.05; rule: the most robust trial whose clean metric is within the tolerance of the
baseline's). Then every arm is trained with its chosen strength for each evaluation seed (weights, batch
order and noise seeded alike across arms) and scored on the test split, clean and under each perturbation
(:mod:`nrnn_plugin.robustness`). The report gives, per arm, the paired per-seed difference against ``plain``
with its t-based 95% interval and the number of seeds that improved (:mod:`nrnn_plugin.app.stats`).

::

    .venv/bin/python benchmarks/reproduce_robustness.py --quick                 # smoke test (minutes)
    .venv/bin/python benchmarks/reproduce_robustness.py                         # the study (see docs/reproduction.md)

Stages ``--stage tune|evaluate|report|all``; every finished trial and run is cached under ``--work``
(default ``outputs/evidence``), so an interrupted study continues where it stopped. Small results go to
``benchmarks/results/evidence_*.csv`` and ``benchmarks/results/evidence_summary.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evidence_data as data_sets  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("plain", "noise", "regularizer", "dropout", "input_noise", "weight_decay")
#: Search spaces (nrnn_plugin.tuning.Param specs); trial 0 of each study is ``plain`` (every value 0).
SPACES: dict[str, dict[str, Any]] = {
    "noise": {"additive": {"low": 0.02, "high": 1.0, "log": True}, "multiplicative": {"low": 0.0, "high": 0.3}},
    "regularizer": {"additive": {"low": 0.02, "high": 1.0, "log": True}},
    "dropout": {"dropout": {"low": 0.05, "high": 0.6}},
    "input_noise": {"input_noise": {"low": 0.02, "high": 1.0, "log": True}},
    "weight_decay": {"weight_decay": {"low": 1e-4, "high": 0.5, "log": True}},
}
#: Validation perturbation mix of the tuner's second objective (mean metric over these).
TUNE_MIX = {"white_noise": 0.4, "salt_and_pepper": 0.05}
#: Test grid (strength 0 = clean). PGD: 5 steps.
GRID = {
    "white_noise": (0.0, 0.2, 0.4, 0.8),
    "salt_and_pepper": (0.05, 0.1),
    "fgsm": (0.05, 0.2),
    "pgd": (0.2,),
}
PGD_STEPS = 5
#: Per data set: hidden size, max epochs, batch size, early-stopping patience, learning rate.
BUDGET = {
    "ECG5000": dict(hidden=32, epochs=80, batch=64, patience=15, lr=3e-3),
    "FaceAll": dict(hidden=64, epochs=60, batch=64, patience=12, lr=3e-3),
    "ItalyPowerDemand": dict(hidden=32, epochs=80, batch=16, patience=20, lr=3e-3),
    "digits": dict(hidden=32, epochs=80, batch=64, patience=10, lr=3e-3),
    "M3quarterly": dict(hidden=32, epochs=40, batch=128, patience=8, lr=3e-3),
    "Tourismquarterly": dict(hidden=32, epochs=40, batch=128, patience=8, lr=3e-3),
}
TUNE_SEED = 1000  # tuning runs use a seed no evaluation run uses


# ---------------------------------------------------------------------------------------------- model


class Net(nn.Module):
    """LSTM (batch first) -> last hidden state -> dropout -> linear (logits or ``h`` forecasts)."""

    def __init__(self, features: int, hidden: int, outputs: int, dropout: float) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.rnn(x)
        return self.head(self.drop(h[-1]))


def _settings(arm: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Turn an arm's searched values into the training settings of one run."""
    import nrnn_plugin as nrnn

    noise = None
    additive = float(params.get("additive", 0.0))
    multiplicative = float(params.get("multiplicative", 0.0))
    if arm == "noise" and (additive > 0 or multiplicative > 0):
        noise = nrnn.NoiseConfig(additive=additive, multiplicative=multiplicative, seed=seed)
    if arm == "regularizer" and additive > 0:
        noise = nrnn.NoiseConfig(additive=additive, mode="regularizer", seed=seed)
    return {
        "noise": noise,
        "dropout": float(params.get("dropout", 0.0)),
        "input_noise": float(params.get("input_noise", 0.0)),
        "weight_decay": float(params.get("weight_decay", 0.0)),
    }


def _loss(task: Any, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y) if isinstance(task, data_sets.Classification) else (out - y).abs().mean()


def _split(task: Any, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(task, data_sets.Classification):
        return getattr(task, part)
    return getattr(task, f"x_{part}"), getattr(task, f"y_{part}")


def _score(task: Any, model: nn.Module, x: torch.Tensor, part: str) -> float:
    """Accuracy (classification) or, forecasting, MASE on test and the scaled MAE on validation.

    Validation windows end 8 points before the in-sample end, so short M3 series leave 8 points of history:
    their seasonal-naive scale can be near 0 and a few series dominate a mean MASE. The tuner therefore scores
    validation windows by the window-scaled MAE (the training loss); the test MASE uses the full history.
    """
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(chunk) for chunk in x.split(1024)])
    if isinstance(task, data_sets.Classification):
        return float((out.argmax(1) == _split(task, part)[1]).float().mean())
    y = _split(task, part)[1]
    if part == "val":
        return float((out - y).abs().mean())
    return float(((out - y).abs().mean(1) / getattr(task, f"mase_{part}")).mean())


def train(task: Any, arm: str, params: dict[str, Any], seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """Train with early stopping on the validation loss; the best epoch's weights are restored."""
    import nrnn_plugin as nrnn
    from nrnn_plugin.regularizer import regularized_loss

    budget = BUDGET[task.name]
    settings = _settings(arm, params, seed)
    x, y = _split(task, "train")
    xv, yv = _split(task, "val")
    outputs = task.classes if isinstance(task, data_sets.Classification) else task.horizon
    torch.manual_seed(seed)
    model = Net(x.shape[2], budget["hidden"], outputs, settings["dropout"])
    if settings["noise"] is not None:
        nrnn.register_noise(model, settings["noise"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget["lr"], weight_decay=settings["weight_decay"])
    generator = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, started = math.inf, copy.deepcopy(model.state_dict()), 0, time.perf_counter()
    for epoch in range(budget["epochs"]):
        model.train()
        for idx in torch.randperm(len(x), generator=generator).split(budget["batch"]):
            xb, yb = x[idx], y[idx]
            if settings["input_noise"] > 0:
                xb = xb + settings["input_noise"] * torch.randn(xb.shape, generator=generator)

            def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
                return _loss(task, model(xb), yb)

            optimizer.zero_grad(set_to_none=True)
            loss = regularized_loss(model, closure)[0] if settings["noise"] is not None else closure()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val = float(_loss(task, torch.cat([model(c) for c in xv.split(1024)]), yv))
        if val < best:
            best, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch + 1
        elif epoch + 1 - best_epoch >= budget["patience"]:
            break
    model.load_state_dict(best_state)
    if settings["noise"] is not None:
        nrnn.remove_noise(model)
    info = {
        "best_epoch": best_epoch,
        "epochs_run": epoch + 1,
        "val_loss": best,
        "seconds": time.perf_counter() - started,
    }
    return model.eval(), info


def perturbed_scores(
    task: Any, model: nn.Module, part: str, grid: dict[str, tuple[float, ...]], seed: int
) -> list[tuple[str, float, float]]:
    """``(perturbation, strength, metric)`` on ``part`` for every grid point (strength 0: clean)."""
    from nrnn_plugin.robustness import PERTURBATIONS

    x, y = _split(task, part)
    flat = x.reshape(-1, x.shape[-1])
    low, high = flat.amin(0), flat.amax(0)
    rows = []
    for name, strengths in grid.items():
        for strength in strengths:
            if strength == 0:
                rows.append((name, 0.0, _score(task, model, x, part)))
                continue
            perturbation = PERTURBATIONS[name]
            generator = torch.Generator().manual_seed(seed)
            chunks = []
            for xc, yc in zip(x.split(1024), y.split(1024)):

                def loss_fn(z: torch.Tensor, yc: torch.Tensor = yc) -> torch.Tensor:
                    return _loss(task, model(z), yc)

                with torch.enable_grad():
                    chunks.append(
                        perturbation.apply(
                            xc,
                            strength,
                            generator=generator,
                            loss_fn=loss_fn if perturbation.adversarial else None,
                            low=low,
                            high=high,
                            steps=PGD_STEPS,
                        ).detach()
                    )
            rows.append((name, float(strength), _score(task, model, torch.cat(chunks), part)))
    return rows


# ---------------------------------------------------------------------------------------------- jobs


def _cached(path: Path, compute: Any) -> Any:
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
    return value


def _tag(name: str) -> str:
    """Cache folder of a data set: its name and training budget (a changed budget never reuses old runs)."""
    budget = BUDGET[name]
    return f"{name}_h{budget['hidden']}_e{budget['epochs']}_p{budget['patience']}"


def _direction(name: str) -> str:
    return "maximize" if name in data_sets.CLASSIFICATION else "minimize"


def tune_job(job: tuple[str, str, int, str, float, int]) -> dict[str, Any]:
    """One arm's study on one data set; returns the chosen values.

    Each trial is trained with ``tune_seeds`` seeds (``TUNE_SEED``, ``TUNE_SEED + 1``, ...) and scored by the mean
    of its validation metrics over them, the plain trial 0 alike: one seed's validation metric moves with the
    machine's rounding as much as with the noise level, and the rule's choice with it.
    """
    name, arm, trials, work, tolerance, tune_seeds = job
    torch.set_num_threads(1)
    from nrnn_plugin.tuning import tune

    task = data_sets.load(name)
    cache = Path(work) / "trials"

    def train_and_evaluate(candidate: Any) -> dict[str, float]:
        key = (
            "plain"
            if candidate.baseline
            else f"{arm}_" + "_".join(f"{k}{v:.6g}" for k, v in sorted(candidate.params.items()))
        )

        def run(seed: int) -> dict[str, float]:
            model, info = train(task, arm, dict(candidate.params), seed)
            rows = perturbed_scores(
                task, model, "val", {"white_noise": (0.0,), **{k: (v,) for k, v in TUNE_MIX.items()}}, seed
            )
            clean = rows[0][2]
            perturbed = float(np.mean([r[2] for r in rows[1:]]))
            return {
                "clean": clean,
                "perturbed": perturbed,
                "best_epoch": info["best_epoch"],
                "train_seconds": info["seconds"],
            }

        runs = []
        for i in range(tune_seeds):
            seed = TUNE_SEED + i
            suffix = "" if i == 0 else f"_seed{seed}"  # the first seed's file is the one-seed study's
            runs.append(_cached(cache / _tag(name) / f"{key}{suffix}.json", lambda seed=seed: run(seed)))
        return {
            "clean": float(np.mean([r["clean"] for r in runs])),
            "perturbed": float(np.mean([r["perturbed"] for r in runs])),
            "best_epoch": float(np.mean([r["best_epoch"] for r in runs])),
            "train_seconds": float(np.sum([r["train_seconds"] for r in runs])),
        }

    out = Path(work) / "studies" / f"{_tag(name)}_{arm}"
    result = tune(
        train_and_evaluate,
        SPACES[arm],
        n_trials=trials,
        out_dir=out,
        direction=_direction(name),
        tolerance=tolerance,
        seed=0,
        plot=False,
    )
    frame = result.trials.assign(dataset=name, arm=arm)
    frame.to_csv(out / "trials_with_arm.csv", index=False)
    return {
        "dataset": name,
        "arm": arm,
        "trial": result.chosen.number,
        **{k: float(v) for k, v in result.chosen.params.items()},
        "val_clean": result.chosen.clean,
        "val_perturbed": result.chosen.perturbed,
        "val_clean_plain": result.chosen.baseline_clean,
        "val_perturbed_plain": result.chosen.baseline_perturbed,
    }


def evaluate_job(job: tuple[str, str, dict[str, Any], int, str, str]) -> list[dict[str, Any]]:
    name, arm, params, seed, work, label = job
    torch.set_num_threads(1)
    key = "_".join(f"{k}{v:.6g}" for k, v in sorted(params.items())) or "none"

    def run() -> list[dict[str, Any]]:
        task = data_sets.load(name)
        model, info = train(task, arm, params, seed)
        started = time.perf_counter()
        rows = perturbed_scores(task, model, "test", GRID, seed)
        return [
            {
                "dataset": name,
                "arm": arm,
                "seed": seed,
                "perturbation": p,
                "strength": s,
                "value": v,
                **info,
                "eval_seconds": time.perf_counter() - started,
            }
            for p, s, v in rows
        ]

    path = Path(work) / "runs" / _tag(name) / f"{arm}_{key}_seed{seed}.json"
    if os.environ.get("EVIDENCE_CACHED_ONLY") and not path.exists():
        return []  # --cached-only: report what has finished
    rows = _cached(path, run)
    return [{**row, "arm": label} for row in rows]


# ---------------------------------------------------------------------------------------------- report


def paired_table(raw: pd.DataFrame) -> pd.DataFrame:
    """Per data set, perturbation and strength: every arm against plain (``control == "plain"``), and noise
    against every other arm (``arm == "noise"``, ``control`` the alternative): the paired difference over seeds."""
    from nrnn_plugin.app.stats import detectable_difference, paired_difference

    rows = []
    for (name, p, s), part in raw.groupby(["dataset", "perturbation", "strength"]):
        pivot = part.pivot_table(index="seed", columns="arm", values="value")
        lower = name not in data_sets.CLASSIFICATION
        pairs = [("plain", arm) for arm in ARMS[1:]] + [(alt, "noise") for alt in ARMS[2:]]
        for control, arm in pairs:
            if control not in pivot or arm not in pivot:
                continue
            both = pivot[[control, arm]].dropna()
            if len(both) < 2:
                continue
            d = paired_difference(both[control].tolist(), both[arm].tolist(), lower_is_better=lower)
            rows.append(
                {
                    "dataset": name,
                    "arm": arm,
                    "control": control,
                    "perturbation": p,
                    "strength": s,
                    "n": d.n,
                    "control_mean": d.control_mean,
                    "arm_mean": d.treated_mean,
                    "diff": d.mean,
                    "low": d.low,
                    "high": d.high,
                    "improved": d.improved,
                    "clear": d.clear,
                    "better": d.better,
                    "detectable": detectable_difference(d.sd, d.n),
                }
            )
    return pd.DataFrame(rows)


#: The conditions of the head-to-head table (one per perturbation kind, its strongest grid point).
HEADLINE = (("white_noise", 0.0), ("white_noise", 0.8), ("salt_and_pepper", 0.1), ("fgsm", 0.2), ("pgd", 0.2))


def verdict_table(paired: pd.DataFrame, scale: float = 100.0) -> str:
    """Noise against plain and against each alternative: win / tie / loss with the paired difference."""
    header = ["data set", "test inputs"] + [f"noise vs {c}" for c in ("plain", *ARMS[2:])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in paired.dataset.unique():
        for p, strength in HEADLINE:
            cells = []
            for control in ("plain", *ARMS[2:]):
                row = paired[
                    (paired.dataset == name)
                    & (paired.arm == "noise")
                    & (paired.control == control)
                    & (paired.perturbation == p)
                    & (paired.strength == strength)
                ]
                if row.empty:
                    cells.append("n/a")
                    continue
                r = row.iloc[0]
                word = "tie" if not r.clear else ("**win**" if r.better else "**loss**")
                cells.append(f"{word} {r['diff'] * scale:+.2f} [{r.low * scale:+.2f}, {r.high * scale:+.2f}]")
            label = "clean" if strength == 0.0 else f"{p} {strength:g}"
            lines.append("| " + " | ".join([name, label, *cells]) + " |")
    return "\n".join(lines)


def _cell(row: pd.Series, scale: float) -> str:
    mark = "**" if row.clear else ""
    return (
        f"{mark}{row['diff'] * scale:+.2f} [{row.low * scale:+.2f}, {row.high * scale:+.2f}]{mark} "
        f"{int(row.improved)}/{int(row.n)}"
    )


def markdown(paired: pd.DataFrame, chosen: pd.DataFrame, info: pd.DataFrame, command: str, wall: float) -> str:
    lines = [
        "# Reproduction study (generated by `benchmarks/reproduce_robustness.py`)",
        "",
        f"Command: `{command}`; wall time of this invocation {wall / 60:.1f} min; torch {torch.__version__}, "
        f"`ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset (AVX-512 here)')}`.",
        "",
        "Cells: paired difference arm - plain over seeds, mean [95% t interval], then seeds improved / seeds. "
        "Accuracy in points (classification), MASE x 100 (forecasting: lower is better). **Bold**: the interval "
        "excludes 0.",
    ]
    lines += [
        "",
        "## Hidden-state noise against each alternative",
        "",
        "Win: the interval of noise minus the alternative excludes 0 in noise's favour; loss: in the "
        "alternative's; tie: it contains 0. Same units as below; strongest grid point of each perturbation.",
        "",
        verdict_table(paired),
    ]
    against_plain = paired[paired.control == "plain"]
    for name in against_plain.dataset.unique():
        part = against_plain[against_plain.dataset == name]
        scale = 100.0
        order = [(p, s) for p, strengths in GRID.items() for s in strengths]
        present = set(part[["perturbation", "strength"]].itertuples(index=False, name=None))
        columns = [c for c in order if c in present]
        lines += ["", f"## {name}", ""]
        sel = chosen[chosen.dataset == name]
        lines.append(
            "Chosen on validation: "
            + "; ".join(
                f"{r.arm}: "
                + (
                    ", ".join(
                        f"{k}={getattr(r, k):.3g}"
                        for k in ("additive", "multiplicative", "dropout", "input_noise", "weight_decay")
                        if k in sel and not pd.isna(getattr(r, k))
                    )
                    or "-"
                )
                + (" (= plain)" if r.trial == 0 else "")
                for r in sel.itertuples()
            )
            + "."
        )
        base = part[(part.perturbation == "white_noise") & (part.strength == 0.0)]
        if len(base):
            lines.append(
                f"Plain clean test metric: {base.iloc[0]['control_mean'] * scale:.2f} (mean over {int(base.iloc[0]['n'])} seeds); "
                f"smallest clean difference detectable with 80% power: "
                + ", ".join(f"{r.arm} {r.detectable * scale:.2f}" for r in base.itertuples())
                + "."
            )
        header = ["arm"] + [("clean" if s == 0 else f"{p} {s:g}") for p, s in columns]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for arm in [a for a in ARMS[1:] if a in set(part.arm)]:
            if (sel[sel.arm == arm].trial == 0).all():
                lines.append("| " + " | ".join([arm] + ["= plain"] * len(columns)) + " |")
                continue
            cells = []
            for p, s in columns:
                row = part[(part.arm == arm) & (part.perturbation == p) & (part.strength == s)]
                cells.append(_cell(row.iloc[0], scale) if len(row) else "n/a")
            lines.append("| " + " | ".join([arm] + cells) + " |")
        sub = info[info.dataset == name].groupby("arm")[["best_epoch", "epochs_run", "seconds"]].mean()
        lines += [
            "",
            "Mean best epoch / epochs run / training seconds: "
            + ", ".join(f"{a} {r.best_epoch:.0f}/{r.epochs_run:.0f}/{r.seconds:.0f}s" for a, r in sub.iterrows())
            + ".",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ItalyPowerDemand", "digits", "ECG5000", "M3quarterly"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--seeds", type=int, default=12, help="evaluation seeds per arm (0..N-1)")
    parser.add_argument("--trials", type=int, default=12, help="trials per tuned arm, the plain trial 0 included")
    parser.add_argument("--tolerance", type=float, default=0.01, help="rule: allowed relative clean loss")
    parser.add_argument(
        "--tune-seeds", type=int, default=3, help="training seeds per trial; the study scores their mean"
    )
    parser.add_argument("--stage", choices=("tune", "evaluate", "report", "all"), default="all")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument("--work", type=Path, default=Path("outputs/evidence"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, 3 trials, 3 epochs")
    parser.add_argument(
        "--cached-only", action="store_true", help="evaluate: use finished runs only (report a partial study)"
    )
    args = parser.parse_args(argv)
    if args.cached_only:
        os.environ["EVIDENCE_CACHED_ONLY"] = "1"
    if args.quick:
        args.seeds, args.trials, args.tune_seeds = 2, 3, min(args.tune_seeds, 2)
        for budget in BUDGET.values():
            budget.update(epochs=3, patience=2)
        args.work = args.work / "quick"
        if args.out == RESULTS:  # smoke-test results never land in benchmarks/results
            args.out = args.work / "results"
    command = "python benchmarks/reproduce_robustness.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    tuned = [a for a in args.arms if a != "plain"]
    chosen_path = args.out / ("evidence_chosen_quick.csv" if args.quick else "evidence_chosen.csv")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        if args.stage in ("tune", "all"):
            # the plain trial 0 is shared by every arm's study (cached): compute it once per data set first
            list(
                pool.map(
                    tune_job,
                    [(d, tuned[0], 1, str(args.work), args.tolerance, args.tune_seeds) for d in args.datasets],
                )
            )
            jobs = [
                (d, a, args.trials, str(args.work), args.tolerance, args.tune_seeds)
                for d in args.datasets
                for a in tuned
            ]
            chosen = []
            for result in pool.map(tune_job, jobs):
                chosen.append(result)
                print(
                    f"[{time.perf_counter() - start:6.0f}s] tuned {result['dataset']} {result['arm']}: trial {result['trial']}",
                    flush=True,
                )
            args.out.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(chosen).round(6).to_csv(chosen_path, index=False)
        if args.stage in ("evaluate", "all"):
            chosen_frame = pd.read_csv(chosen_path)
            jobs_e: list[tuple[str, str, dict[str, Any], int, str, str]] = []
            for d in args.datasets:
                for a in args.arms:
                    params: dict[str, Any] = {}
                    if a != "plain":
                        row = chosen_frame[(chosen_frame.dataset == d) & (chosen_frame.arm == a)].iloc[0]
                        params = {k: float(row[k]) for k in SPACES[a]}
                    # an arm whose study chose trial 0 is plain: its runs are plain's (relabelled in the report)
                    run_arm = "plain" if not any(params.values()) else a
                    jobs_e += [
                        (d, run_arm, params if run_arm != "plain" else {}, s, str(args.work), a)
                        for s in range(args.seeds)
                    ]
            jobs_e.sort(key=lambda j: j[3])  # seed by seed: a study stopped early still has complete pairs
            rows = []
            for runs in pool.map(evaluate_job, jobs_e):
                if not runs:
                    continue
                r = runs[0]
                rows.extend(runs)
                print(
                    f"[{time.perf_counter() - start:6.0f}s] {r['dataset']} {r['arm']} seed {r['seed']}: clean {r['value']:.4f} "
                    f"(epoch {r['best_epoch']}/{r['epochs_run']}, {r['seconds']:.0f}s + {r['eval_seconds']:.0f}s)",
                    flush=True,
                )
            raw = pd.DataFrame(rows)
            suffix = "_quick" if args.quick else ""
            raw[["dataset", "arm", "seed", "perturbation", "strength", "value"]].round(5).to_csv(
                args.out / f"evidence_raw{suffix}.csv", index=False
            )
            info = raw.drop_duplicates(["dataset", "arm", "seed"])[
                ["dataset", "arm", "seed", "best_epoch", "epochs_run", "val_loss", "seconds", "eval_seconds"]
            ]
            info.round(4).to_csv(args.out / f"evidence_training{suffix}.csv", index=False)
    if args.stage in ("report", "all"):
        suffix = "_quick" if args.quick else ""
        raw = pd.read_csv(args.out / f"evidence_raw{suffix}.csv")
        info = pd.read_csv(args.out / f"evidence_training{suffix}.csv")
        paired = paired_table(raw)
        paired.round(5).to_csv(args.out / f"evidence_paired{suffix}.csv", index=False)
        report = markdown(paired, pd.read_csv(chosen_path), info, command, time.perf_counter() - start)
        (args.out / f"evidence_summary{suffix}.md").write_text(report)
        print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
