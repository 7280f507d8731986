"""Reproduce the Noisy RNN robustness claim (``docs/robustness.md``) on offline real data, on CPU.

One command, results under ``benchmarks/results/`` (small CSV / PNG / Markdown)::

    .venv/bin/python benchmarks/reproduce_robustness.py            # full run (about 25 min on 2 cores)
    .venv/bin/python benchmarks/reproduce_robustness.py --quick    # smoke test (1 seed, few epochs)

Classification: scikit-learn digits read pixel by pixel (64 steps, 1 feature; the stand-in for pixel MNIST),
sktime ItalyPowerDemand (24 steps) and GunPoint (150 steps). Models: LSTM, GRU, both with Euler-Maruyama
noise through ``register_noise`` at a small and a large level, Lipschitz RNN, Antisymmetric RNN, and the NRNN
with the research code's scheme at the paper's "small" and "high" noise (rescaled to our sequence lengths,
see ``nrnn_settings``). Every model is trained with early stopping on a validation split carved from the
*training* data; the test split is touched only by the final evaluation, clean and under each perturbation.

Forecasting: pytorch-forecasting ``RecurrentNetwork`` on the Mauna Loa CO2 series (statsmodels, monthly
means), LSTM and NRNN layers, with and without noise (``NoisyRNNCallback``), MAE / sMAPE on the prediction
window with perturbed encoder inputs.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.layers.nrnn import NRNN
from nrnn_plugin.robustness import evaluate, plot_robustness, summarize

RESULTS = Path(__file__).resolve().parent / "results"

#: Perturbation grids on normalised inputs (strength 0 = clean).
GRID = {
    "white_noise": (0.0, 0.1, 0.2, 0.4, 0.8),
    "multiplicative_noise": (0.0, 0.1, 0.2, 0.4, 0.8),
    "salt_and_pepper": (0.0, 0.01, 0.02, 0.05, 0.1),
    "fgsm": (0.0, 0.01, 0.02, 0.05, 0.1),
    "pgd": (0.0, 0.01, 0.02, 0.05, 0.1),
}
#: PGD iterations (step size 2.5 eps / steps, random start); 5 keeps the run inside its CPU budget.
PGD_STEPS = 5
#: Strength shown per perturbation in the summary tables (a mid point of each grid).
TABLE_STRENGTH = {"white_noise": 0.4, "multiplicative_noise": 0.4, "salt_and_pepper": 0.05, "fgsm": 0.05, "pgd": 0.05}

MODELS = (
    "LSTM",
    "LSTM+noise(small)",
    "LSTM+noise(large)",
    "GRU",
    "GRU+noise(small)",
    "GRU+noise(large)",
    "LipschitzRNN",
    "AntisymmetricRNN",
    "NRNN(small noise)",
    "NRNN(high noise)",
)

# ---------------------------------------------------------------------------------------------- data


@dataclass
class Dataset:
    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    classes: int
    epochs: int
    batch_size: int
    patience: int
    min_epochs: int = 0

    @property
    def steps(self) -> int:
        return self.train[0].shape[1]


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with ``fraction`` of every class held out (at least one per class)."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_held = max(1, int(round(fraction * len(idx))))
        held.extend(idx[:n_held])
        keep.extend(idx[n_held:])
    return np.sort(np.array(keep)), np.sort(np.array(held))


def _tensors(X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def load_digits_dataset(quick: bool) -> Dataset:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 64, 1) / 16.0
    trainval, test = _stratified_split(y, 0.3, seed=0)
    train_rel, val_rel = _stratified_split(y[trainval], 0.2, seed=1)
    train, val = trainval[train_rel], trainval[val_rel]
    mean, std = X[train].mean(), X[train].std()  # normalisation from the training split only
    X = (X - mean) / std
    return Dataset(
        "digits",
        _tensors(X[train], y[train]),
        _tensors(X[val], y[val]),
        _tensors(X[test], y[test]),
        10,
        epochs=3 if quick else 30,
        batch_size=128,
        patience=3 if quick else 8,
    )


def load_ucr_dataset(name: str, quick: bool) -> Dataset:
    """ItalyPowerDemand / GunPoint with their official train/test split; validation carved from train.

    UCR series are z-normalised per series already.
    """
    from sktime import datasets

    loader = {"ItalyPowerDemand": datasets.load_italy_power_demand, "GunPoint": datasets.load_gunpoint}[name]
    X_tr, y_tr = loader(split="train", return_X_y=True, return_type="numpy3D")
    X_te, y_te = loader(split="test", return_X_y=True, return_type="numpy3D")
    labels = {label: k for k, label in enumerate(sorted(set(y_tr)))}
    y_tr = np.array([labels[v] for v in y_tr])
    y_te = np.array([labels[v] for v in y_te])
    X_tr, X_te = X_tr.transpose(0, 2, 1), X_te.transpose(0, 2, 1)  # [N, T, C]
    train, val = _stratified_split(y_tr, 0.2, seed=1)
    return Dataset(
        name,
        _tensors(X_tr[train], y_tr[train]),
        _tensors(X_tr[val], y_tr[val]),
        _tensors(X_te, y_te),
        len(labels),
        epochs=5 if quick else 80,
        batch_size=8,
        patience=3 if quick else 15,
        min_epochs=0 if quick else 40,
    )


def load_dataset(name: str, quick: bool) -> Dataset:
    return load_digits_dataset(quick) if name == "digits" else load_ucr_dataset(name, quick)


# ---------------------------------------------------------------------------------------------- models

HIDDEN = 32
LR = 1e-2
PAPER_STEPS, PAPER_DT = 784, 0.01  # pixel MNIST in the reference settings: total time 7.84
PAPER_NOISE = {"small": (0.02, 0.02), "high": (0.05, 0.02)}  # (additive, multiplicative) per step


def nrnn_settings(steps: int) -> dict[str, float]:
    """The reference settings rescaled to a sequence of ``steps`` steps.

    The Euler step keeps the reference's total time ``T * dt = 784 * 0.01``; the additive noise per step is
    scaled by ``sqrt(dt / 0.01)`` so that the diffusion coefficient of the underlying SDE equals the
    reference's (its noise per step is ``sigma * sqrt(step)``). The multiplicative factor ``m ~ U[1 - s, 1]``
    is a relative perturbation of the step and is kept.
    """
    dt = PAPER_STEPS * PAPER_DT / steps
    scale = math.sqrt(dt / PAPER_DT)
    return {
        "dt": dt,
        "add_small": PAPER_NOISE["small"][0] * scale,
        "add_high": PAPER_NOISE["high"][0] * scale,
        "mult": PAPER_NOISE["small"][1],
    }


class SequenceClassifier(nn.Module):
    """``rnn`` (batch first) -> last hidden state of the top layer -> linear logits."""

    def __init__(self, rnn: nn.Module, classes: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state
        return self.head(h[-1])


def noise_configs(steps: int, seed: int) -> dict[str, nrnn.NoiseConfig]:
    s = nrnn_settings(steps)
    # LSTM/GRU: unbiased Euler-Maruyama (dt = 1: the level is the noise per step), the same per-step levels as
    # the NRNN's so that every noisy model sees the same injected noise.
    em = dict(multiplicative=s["mult"], seed=seed)
    ref = dict(multiplicative=s["mult"], scheme="reference", seed=seed)
    return {
        "small": nrnn.NoiseConfig(additive=s["add_small"], **em),
        "large": nrnn.NoiseConfig(additive=s["add_high"], **em),
        "nrnn_small": nrnn.NoiseConfig(additive=s["add_small"], **ref),
        "nrnn_high": nrnn.NoiseConfig(additive=s["add_high"], **ref),
    }


def build_model(kind: str, data: Dataset, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    features, steps = data.train[0].shape[2], data.steps
    s = nrnn_settings(steps)
    configs = noise_configs(steps, seed)
    family = kind.split("+")[0]
    if family in ("LSTM", "GRU"):
        rnn: nn.Module = getattr(nn, family)(features, HIDDEN, batch_first=True)
    elif kind == "AntisymmetricRNN":
        rnn = NRNN.antisymmetric(features, HIDDEN, batch_first=True, dt=s["dt"], gamma=0.001, init_std=0.1)
    elif kind == "LipschitzRNN":
        rnn = NRNN.lipschitz(features, HIDDEN, batch_first=True, dt=s["dt"], init_std=0.1)
    elif kind.startswith("NRNN"):
        rnn = NRNN(features, HIDDEN, batch_first=True, dt=s["dt"], learn_dt=True, init_std=0.1)
    else:
        raise ValueError(f"unknown model {kind!r}; known: {MODELS}")
    model = SequenceClassifier(rnn, data.classes)
    level = {
        "+noise(small)": "small",
        "+noise(large)": "large",
        "(small noise)": "nrnn_small",
        "(high noise)": "nrnn_high",
    }
    for suffix, key in level.items():
        if kind.endswith(suffix):
            nrnn.register_noise(model, configs[key])
    return model


# ---------------------------------------------------------------------------------------------- training


def _accuracy_and_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x in X.split(512)])
    return (logits.argmax(1) == y).float().mean().item(), F.cross_entropy(logits, y).item()


def train_classifier(model: nn.Module, data: Dataset, seed: int, patience: int) -> dict[str, float]:
    """Adam with early stopping on the validation loss: the weights of the best validation epoch are kept.

    Training stops after ``data.patience`` epochs without a better validation loss, but not before
    ``data.min_epochs`` epochs (on the tiny UCR training sets an LSTM can sit on a plateau for tens of epochs).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    X, y = data.train
    best_loss, best_acc, best_state, best_epoch = math.inf, 0.0, copy.deepcopy(model.state_dict()), -1
    start = time.perf_counter()
    for epoch in range(data.epochs):
        model.train()
        for idx in torch.randperm(X.shape[0], generator=generator).split(data.batch_size):
            loss = F.cross_entropy(model(X[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        val_acc, val_loss = _accuracy_and_loss(model, *data.val)
        if val_loss < best_loss:
            best_loss, best_acc, best_state, best_epoch = val_loss, val_acc, copy.deepcopy(model.state_dict()), epoch
        elif epoch - best_epoch >= patience and epoch + 1 >= data.min_epochs:
            break
    model.load_state_dict(best_state)
    train_acc, _ = _accuracy_and_loss(model, *data.train)
    return {
        "best_epoch": best_epoch + 1,
        "epochs_run": epoch + 1,
        "train_accuracy": train_acc,
        "val_accuracy": best_acc,
        "val_loss": best_loss,
        "train_seconds": time.perf_counter() - start,
    }


def classification_job(job: tuple[str, str, int, bool]) -> tuple[pd.DataFrame, dict]:
    """Train one (dataset, model, seed) and evaluate it on the test split: (tidy results, training info)."""
    dataset_name, kind, seed, quick = job
    torch.set_num_threads(1)
    cpu_start = time.process_time()
    data = load_dataset(dataset_name, quick)
    model = build_model(kind, data, seed)
    info = train_classifier(model, data, seed, patience=data.patience)
    start = time.perf_counter()
    grid = {k: v[:2] for k, v in GRID.items()} if quick else GRID
    results = evaluate({kind: model}, data.test, perturbations=grid, seeds=[seed], pgd_steps=PGD_STEPS, batch_size=2048)
    info.update(
        dataset=dataset_name,
        model=kind,
        seed=seed,
        eval_seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
    )
    return results.assign(dataset=dataset_name), info


# ---------------------------------------------------------------------------------------------- forecasting

FORECAST_MODELS = ("LSTM", "LSTM+noise", "NRNN", "NRNN+noise")


def co2_monthly():
    import statsmodels.api as sm

    weekly = sm.datasets.co2.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean().interpolate()
    frame = pd.DataFrame({"co2": monthly.to_numpy(dtype=np.float64)})
    frame["time_idx"] = np.arange(len(frame))
    frame["series"] = "mauna_loa"
    return frame


def forecasting_datasets(encoder: int = 36, horizon: int = 12):
    """Chronological split: train on the first 70 %, validate on the next 15 %, test on the last 15 %."""
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data import EncoderNormalizer

    frame = co2_monthly()
    n = len(frame)
    val_start, test_start = int(0.7 * n), int(0.85 * n)
    training = TimeSeriesDataSet(
        frame[frame.time_idx < val_start],
        time_idx="time_idx",
        target="co2",
        group_ids=["series"],
        time_varying_unknown_reals=["co2"],
        max_encoder_length=encoder,
        max_prediction_length=horizon,
        target_normalizer=EncoderNormalizer(),
    )
    # windows whose prediction starts in the validation / test range; their encoders may reach back
    validation = TimeSeriesDataSet.from_dataset(
        training, frame[frame.time_idx < test_start], min_prediction_idx=val_start, stop_randomization=True
    )
    test = TimeSeriesDataSet.from_dataset(training, frame, min_prediction_idx=test_start, stop_randomization=True)
    return training, validation, test


def best_state_callback():
    """A Lightning callback keeping (in memory) the weights of the epoch with the lowest validation loss."""
    import lightning.pytorch as pl

    class BestState(pl.Callback):
        def __init__(self) -> None:
            self.best, self.state, self.epoch = math.inf, None, -1

        def on_validation_end(self, trainer, pl_module) -> None:
            loss = trainer.callback_metrics.get("val_loss")
            if not trainer.sanity_checking and loss is not None and float(loss) < self.best:
                self.best, self.epoch = float(loss), trainer.current_epoch
                self.state = copy.deepcopy(pl_module.state_dict())

    return BestState()


def forecasting_job(job: tuple[str, int, bool]) -> tuple[pd.DataFrame, dict]:
    kind, seed, quick = job
    torch.set_num_threads(1)
    cpu_start = time.process_time()
    import logging

    import lightning.pytorch as pl
    from pytorch_forecasting import RecurrentNetwork

    from nrnn_plugin import NoisyRNNCallback
    from nrnn_plugin.adapters.forecasting.nrnn import use_nrnn

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    training, validation, test = forecasting_datasets()
    pl.seed_everything(seed, verbose=False)
    model = RecurrentNetwork.from_dataset(training, cell_type="LSTM", hidden_size=32, rnn_layers=1, learning_rate=LR)
    steps = training.max_encoder_length
    s = nrnn_settings(steps)
    if kind.startswith("NRNN"):
        use_nrnn(model, dt=s["dt"], learn_dt=True, init_std=1.0)  # init_std chosen on the validation loss
    best = best_state_callback()
    callbacks = [best, pl.callbacks.EarlyStopping("val_loss", patience=6)]
    if kind.endswith("+noise"):
        scheme = "reference" if kind.startswith("NRNN") else "euler_maruyama"
        callbacks.append(
            NoisyRNNCallback(
                nrnn.NoiseConfig(additive=s["add_high"], multiplicative=s["mult"], scheme=scheme, seed=seed)
            )
        )
    trainer = pl.Trainer(
        max_epochs=2 if quick else 25,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(
            model,
            train_dataloaders=training.to_dataloader(train=True, batch_size=32, num_workers=0),
            val_dataloaders=validation.to_dataloader(train=False, batch_size=256, num_workers=0),
        )
    train_seconds = time.perf_counter() - start
    if best.state is not None:
        model.load_state_dict(best.state)
    assert not nrnn.is_noisy(model)  # the callback removed the noise after fit
    start = time.perf_counter()
    grid = {k: v[:2] for k, v in GRID.items()} if quick else GRID
    loader = test.to_dataloader(train=False, batch_size=256, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = evaluate({kind: model}, loader, perturbations=grid, seeds=[seed], pgd_steps=PGD_STEPS)
    info = {
        "dataset": "co2",
        "model": kind,
        "seed": seed,
        "best_epoch": best.epoch + 1,
        "val_loss": best.best,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
    }
    return results.assign(dataset="co2"), info


# ---------------------------------------------------------------------------------------------- reporting


def _fmt(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def robustness_table(results: pd.DataFrame, metric: str, models: list[str], scale: float, digits: int) -> str:
    """Rows: models; columns: clean, each perturbation at its table strength, and the mean over the grid."""
    table = summarize(results.drop(columns=["dataset"], errors="ignore"))
    table = table[table.metric == metric]
    header = ["model", "clean"] + [f"{p} {TABLE_STRENGTH[p]:g}" for p in GRID] + ["mean over all perturbed"]
    rows = []
    for model in models:
        part = table[table.model == model]
        if part.empty:
            continue
        clean = part[part.strength == 0.0].iloc[0]
        row = [model, _fmt(clean["mean"], clean["std"], scale, digits)]
        for p, s in TABLE_STRENGTH.items():
            cell = part[(part.perturbation == p) & np.isclose(part.strength, s)]
            row.append(_fmt(cell.iloc[0]["mean"], cell.iloc[0]["std"], scale, digits) if len(cell) else "n/a")
        # mean over every perturbed point, per seed, then mean ± std over seeds
        raw = results[(results.model == model) & (results.metric == metric) & (results.strength > 0)]
        per_seed = raw.groupby("seed")["value"].mean()
        row.append(_fmt(per_seed.mean(), per_seed.std(ddof=1) if len(per_seed) > 1 else 0.0, scale, digits))
        rows.append(row)
    return markdown_table(header, rows)


def write_report(
    classification: pd.DataFrame,
    infos: pd.DataFrame,
    forecasting: pd.DataFrame | None,
    f_infos: pd.DataFrame | None,
    command: str,
    wall: float,
    seeds: list[int],
    forecast_note: str,
    jobs: int,
) -> str:
    parts = [
        "# Robustness reproduction (generated by `benchmarks/reproduce_robustness.py`)",
        "",
        f"Command: `{command}`; wall time {wall / 60:.1f} min with {jobs} worker processes on {os.cpu_count()} CPU cores "
        f"(torch {torch.__version__}); seeds {seeds}.",
        "",
        "Numbers are mean ± std over seeds (training seed = perturbation seed). Accuracy in %. Perturbations act on "
        "normalised test inputs; adversarial ones (L-inf FGSM, PGD with random start) go through the noise-free "
        f"model. Model selection: best validation epoch (validation carved from the training split). PGD: {PGD_STEPS} steps.",
    ]
    settings = []
    for dataset in classification["dataset"].unique():
        steps = {"digits": 64, "ItalyPowerDemand": 24, "GunPoint": 150}.get(dataset)
        if steps is not None:
            ns = nrnn_settings(steps)
            settings.append(
                f"{dataset} (T={steps}): dt={ns['dt']:.4g}, additive small/large={ns['add_small']:.3g}/{ns['add_high']:.3g}, "
                f"multiplicative={ns['mult']:g}"
            )
    parts += [
        "",
        f"Settings: hidden size {HIDDEN}, one layer, Adam lr {LR:g}, gradient clipping 1.0, last hidden state -> linear "
        "head. LSTM/GRU noise: Euler-Maruyama, `NoiseConfig(additive=a, multiplicative=0.02)` with the per-step levels "
        'below (small / large). NRNN: learned step, `scheme="reference"` (the research code\'s update), the same '
        "levels as the paper's small (0.02, 0.02) / high (0.05, 0.02) noise rescaled to the sequence length "
        "(`nrnn_settings`). Lipschitz and Antisymmetric RNN: fixed step dt, no noise; beta=0.75 (Lipschitz), gamma=0.001, "
        "init_std=0.1. Per data set: " + "; ".join(settings) + ".",
    ]
    for dataset in classification["dataset"].unique():
        part = classification[classification.dataset == dataset]
        info = infos[infos.dataset == dataset]
        models = [m for m in MODELS if m in set(part.model)]
        parts += ["", f"## {dataset}", "", robustness_table(part, "accuracy", models, 100.0, 1), ""]
        timing = info.groupby("model")[["best_epoch", "train_seconds"]].mean().reindex(models)
        parts.append(
            "Mean best epoch / training seconds per run: "
            + ", ".join(f"{m} {r.best_epoch:.0f}/{r.train_seconds:.0f}s" for m, r in timing.iterrows())
            + f". Plot: `robustness_{dataset}.png`."
        )
    parts += ["", "## Forecasting: Mauna Loa CO2 (monthly), RecurrentNetwork, horizon 12, encoder 36", ""]
    if forecasting is None or forecasting.empty:
        parts.append(forecast_note)
    else:
        models = [m for m in FORECAST_MODELS if m in set(forecasting.model)]
        parts += ["MAE (ppm; lower is better):", "", robustness_table(forecasting, "mae", models, 1.0, 3), ""]
        parts += ["sMAPE (%):", "", robustness_table(forecasting, "smape", models, 100.0, 3), ""]
        parts.append("Plot: `robustness_co2.png`. " + forecast_note)
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- main


def _forecasting_available() -> tuple[bool, str]:
    try:
        import lightning.pytorch  # noqa: F401
        import pytorch_forecasting  # noqa: F401

        from nrnn_plugin import NoisyRNNCallback  # noqa: F401
        from nrnn_plugin.plugins import plugin_report

        names = {r["name"] for r in plugin_report() if r.get("loaded")}
    except ImportError as exc:
        return False, f"Forecasting part skipped: {exc}."
    if "forecasting" not in names:
        return (
            False,
            "Forecasting part skipped: the pytorch-forecasting adapter (entry point 'forecasting') is not loaded.",
        )
    return (
        True,
        "Noise in training via `NoisyRNNCallback` (pytorch-forecasting adapter for the LSTM, nrnn adapter for the NRNN).",
    )


def _expected_cost(dataset: str, model: str) -> float:
    """Rough relative cost of a classification job (unrolled noisy/NRNN layers are slower than fused ones)."""
    unrolled = "noise" in model or "RNN" in model and model not in ("LSTM", "GRU")
    return {"digits": 3.0, "GunPoint": 2.0}.get(dataset, 1.0) * (3.0 if unrolled else 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, few epochs, short grids")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2)")
    parser.add_argument("--datasets", nargs="+", default=["digits", "ItalyPowerDemand", "GunPoint"])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--no-forecasting", action="store_true")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    command = "python benchmarks/reproduce_robustness.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()

    jobs_c = [(d, m, s, args.quick) for d in args.datasets for m in args.models for s in seeds]
    jobs_c.sort(key=lambda job: -_expected_cost(job[0], job[1]))  # longest first: better load balance
    ok, forecast_note = (
        (False, "Forecasting part skipped (--no-forecasting).") if args.no_forecasting else _forecasting_available()
    )
    jobs_f = [(m, s, args.quick) for m in FORECAST_MODELS for s in seeds] if ok else []

    frames, infos, f_frames, f_infos = [], [], [], []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        f_futures = [pool.submit(forecasting_job, j) for j in jobs_f]
        for frame, info in pool.map(classification_job, jobs_c):
            frames.append(frame)
            infos.append(info)
            print(
                f"[{time.perf_counter() - start:6.0f}s] {info['dataset']:>16} {info['model']:<20} seed {info['seed']} "
                f"val {info['val_accuracy']:.3f} epoch {info['best_epoch']} ({info['train_seconds']:.0f}s + "
                f"{info['eval_seconds']:.0f}s)",
                flush=True,
            )
        for future in f_futures:
            frame, info = future.result()
            f_frames.append(frame)
            f_infos.append(info)
            print(
                f"[{time.perf_counter() - start:6.0f}s] co2 {info['model']:<12} seed {info['seed']} "
                f"({info['train_seconds']:.0f}s + {info['eval_seconds']:.0f}s)",
                flush=True,
            )
    wall = time.perf_counter() - start

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    classification = pd.concat(frames, ignore_index=True)
    info_frame = pd.DataFrame(infos)
    forecasting = pd.concat(f_frames, ignore_index=True) if f_frames else None
    f_info = pd.DataFrame(f_infos) if f_infos else None
    for dataset in classification["dataset"].unique():
        part = classification[classification.dataset == dataset]
        part.drop(columns="dataset").round({"value": 4}).to_csv(out / f"robustness_raw_{dataset}.csv", index=False)
        models = [m for m in MODELS if m in set(part.model)]
        plot_robustness(
            part.drop(columns="dataset"),
            out / f"robustness_{dataset}.png",
            models=models,
            title=f"{dataset}: test accuracy under input perturbations (mean ± std over {len(seeds)} seeds)",
        )
    info_frame.round(4).to_csv(out / "robustness_training.csv", index=False)
    if forecasting is not None:
        forecasting.drop(columns="dataset").round({"value": 5}).to_csv(out / "robustness_raw_co2.csv", index=False)
        f_info.round(4).to_csv(out / "robustness_training_co2.csv", index=False)
        plot_robustness(
            forecasting.drop(columns="dataset"),
            out / "robustness_co2.png",
            metric="mae",
            models=[m for m in FORECAST_MODELS if m in set(forecasting.model)],
            title=f"CO2 forecasting: test MAE under encoder-input perturbations ({len(seeds)} seeds)",
        )
    report = write_report(
        classification, info_frame, forecasting, f_info, command, wall, seeds, forecast_note, args.jobs
    )
    (out / "robustness_summary.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
