"""``nrnn demo``: the same pytorch-forecasting LSTM trained with and without hidden-state noise, on real data.

Recipe (every number is in :data:`DEFAULT` / :data:`QUICK`):

1. Data that ships offline: Mauna Loa CO2, weekly 1958-2001 (statsmodels, public domain; 2284 weeks, 59 missing
   values interpolated), or yearly sunspots 1700-2008 (24 years in, 6 out, 20% validation, 20% test). Time
   split: the last 15% of the weeks are the test windows, never used for training or model selection; the
   15% before them select the best epoch.
2. ``RecurrentNetwork`` (one LSTM layer) from ``TimeSeriesDataSet``: 52 weeks in, 13 weeks out (decoded
   autoregressively in evaluation: a real 13-week forecast), MAE loss.
3. For every training seed, the *same* model is trained twice with the same seed, data order and epoch
   budget: once plainly, once with :class:`~nrnn_plugin.integrations.lightning.NoisyRNNCallback` (additive
   hidden-state noise; the noise stream is seeded by the training seed). Nothing else differs.
4. Both are evaluated noise-free on the test windows, clean and with perturbed (normalised) encoder inputs:
   white noise, salt and pepper, FGSM and PGD (:func:`nrnn_plugin.robustness.evaluate`).
5. Output: the comparison table on stdout: per grid point both models' MAE (mean ± std over training seeds, each
   averaged over the perturbation seeds), the paired per-seed change of the noisy model against the plain one
   with its t-based 95% interval (:mod:`nrnn_plugin.app.stats`) and the number of seeds that improved; the
   conclusion states a difference only where the interval excludes 0. Also
   ``demo_results.csv`` (tidy, one row per model/seed/perturbation/strength/metric), ``demo_robustness.png``
   and the data as ``co2_weekly.csv`` (input of ``examples/run.yaml``) in the output folder.

Imports Lightning and pytorch-forecasting (through :mod:`nrnn_plugin.app.training`): import this module lazily.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from nrnn_plugin.app import report, training
from nrnn_plugin.app.data import prepare_frame, split_and_check
from nrnn_plugin.app.datasets import build_datasets
from nrnn_plugin.app.demo_table import comparison_report
from nrnn_plugin.app.outputs import OutputFolder
from nrnn_plugin.app.progress import NullReporter, Reporter
from nrnn_plugin.app.run_config import DataSpec, ModelSpec, TrainerSpec
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.validation import check_int

__all__ = ["DemoSettings", "DEFAULT", "QUICK", "DemoResult", "run_demo", "load_dataset"]


@dataclass(frozen=True)
class DemoSettings:
    """Budget and grid of one demo run."""

    epochs: int
    seeds: tuple[int, ...]
    hidden_size: int
    noise: float
    perturbation_seeds: tuple[int, ...]
    grid: dict[str, tuple[float, ...]]
    limit_train_batches: int | None = None


DEFAULT = DemoSettings(
    epochs=15,
    seeds=tuple(range(64)),
    hidden_size=32,
    noise=0.3,
    perturbation_seeds=(0, 1),
    grid={
        "white_noise": (0.0, 0.2, 0.4, 0.8),
        "salt_and_pepper": (0.0, 0.05, 0.1),
        "fgsm": (0.0, 0.05, 0.1),
        "pgd": (0.0, 0.1),
    },
)

QUICK = DemoSettings(
    epochs=4,
    seeds=(0, 1),
    hidden_size=16,
    noise=0.3,
    perturbation_seeds=(0,),
    grid={"white_noise": (0.0, 0.4, 0.8), "salt_and_pepper": (0.0, 0.1), "fgsm": (0.0, 0.1)},
    limit_train_batches=12,
)

DATASETS = ("co2", "sunspots")

#: Per data set: (default settings, --quick settings). Sunspots has 156 training windows (3 batches an epoch)
#: against CO2's 1534, so it gets more epochs for a comparable number of optimizer steps.
SETTINGS: dict[str, tuple[DemoSettings, DemoSettings]] = {
    "co2": (DEFAULT, QUICK),
    "sunspots": (replace(DEFAULT, epochs=60), replace(QUICK, epochs=20, limit_train_batches=None)),
}


def load_dataset(name: str) -> tuple[pd.DataFrame, DataSpec, str]:
    """A real series that ships with statsmodels, its ``data`` section, and the CSV file name to write it to."""
    import statsmodels.api as sm

    if name == "co2":
        frame = sm.datasets.co2.load_pandas().data.reset_index(names="date")
        frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
        spec = DataSpec.from_dict(
            {"time": "date", "freq": "W-SAT", "target": "co2", "max_encoder_length": 52, "max_prediction_length": 13}
        )
        return frame, spec, "co2_weekly.csv"
    if name == "sunspots":
        frame = sm.datasets.sunspots.load_pandas().data.rename(columns={"YEAR": "year", "SUNACTIVITY": "sunspots"})
        frame["year"] = frame["year"].astype(int)
        spec = DataSpec.from_dict(
            {
                "time": "year",
                "target": "sunspots",
                "max_encoder_length": 24,
                "max_prediction_length": 6,
                "normalizer": "group",
                "validation": 0.2,
                "test": 0.2,
            }
        )
        return frame, spec, "sunspots_yearly.csv"
    raise ValueError(f"run_demo: dataset must be one of {DATASETS}, got {name!r}")


@dataclass
class DemoResult:
    results: pd.DataFrame
    table: str
    files: list[Path]


def run_demo(
    *,
    out_dir: str | Path = "outputs/demo",
    quick: bool = False,
    dataset: str = "co2",
    epochs: int | None = None,
    seed: int = 0,
    noise: float | None = None,
    seeds: int | None = None,
    jobs: int = 1,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> DemoResult:
    """Train, evaluate and compare; write CSV and PNG into ``out_dir`` (all or nothing; an existing non-empty
    folder only with ``overwrite``). ``seed`` offsets the training seeds; ``seeds`` replaces their number (default:
    the settings'); ``jobs`` trains that many seeds at a time in worker processes (same numbers as ``jobs=1``)."""
    reporter = reporter or NullReporter()
    if dataset not in SETTINGS:
        raise ValueError(f"run_demo: dataset must be one of {DATASETS}, got {dataset!r}")
    settings = SETTINGS[dataset][1 if quick else 0]
    if epochs is not None:
        settings = replace(settings, epochs=epochs)
    if noise is not None:
        settings = replace(settings, noise=noise)
    if seeds is not None:
        settings = replace(settings, seeds=tuple(range(check_int("run_demo: seeds", seeds, minimum=1))))
    check_int("run_demo: jobs", jobs, minimum=1)
    train_seeds = tuple(seed + s for s in settings.seeds)
    folder = OutputFolder(out_dir, overwrite=overwrite)
    with folder as staging:
        result = _run(staging, settings, train_seeds, dataset, jobs, reporter)
    out = folder.target
    return DemoResult(results=result.results, table=result.table, files=[out / f.name for f in result.files])


class _Prepared(NamedTuple):
    """A demo data set: the raw frame, its prepared frame and split, its windows and the CSV file name."""

    raw: pd.DataFrame
    prepared: Any
    split: Any
    datasets: Any
    csv_name: str


def _prepare(dataset: str) -> _Prepared:
    """Load the bundled data set and build its training/validation/test windows."""
    raw, spec, csv_name = load_dataset(dataset)
    prepared, split = split_and_check(prepare_frame(raw, spec, source=csv_name), source=csv_name)
    return _Prepared(raw, prepared, split, build_datasets(prepared, split, source=csv_name), csv_name)


def _arms(settings: DemoSettings) -> dict[str, float | None]:
    """Model label -> additive noise level (``None``: the plain model)."""
    return {"LSTM": None, f"LSTM + noise {settings.noise:g}": settings.noise}


def _one_seed(
    datasets: Any, settings: DemoSettings, train_seed: int, reporter: Reporter
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Train both models with ``train_seed`` and score them on the test windows.

    Returns the scores (one row per model, perturbation seed, perturbation, strength and metric; column
    ``train_seed`` added) and each model's training seconds. Depends on nothing but its arguments and the thread
    count, so a seed gives the same numbers in any process.
    """
    import lightning.pytorch as pl

    model_spec = ModelSpec.from_dict(
        {
            "class": "RecurrentNetwork",
            "cell_type": "LSTM",
            "hidden_size": settings.hidden_size,
            "rnn_layers": 1,
            "dropout": 0.0,
            "learning_rate": 0.01,
            "loss": "MAE",
        }
    )
    models, fit_seconds = {}, {}
    for name, sigma in _arms(settings).items():
        trainer_spec = TrainerSpec(
            max_epochs=settings.epochs,
            batch_size=64,
            seed=train_seed,
            gradient_clip_val=1.0,
            limit_train_batches=settings.limit_train_batches,
        )
        pl.seed_everything(train_seed, verbose=False)
        model = training.build_model(model_spec, datasets.training)
        config = None if sigma is None else NoiseConfig(additive=sigma, seed=train_seed)
        trained = training.fit_model(
            model, datasets, trainer_spec, config, out_dir=None, label=f"{name} (seed {train_seed})", reporter=reporter
        )
        fit_seconds[name] = trained.seconds
        models[name] = trained.model
    scores = report.evaluate_robustness(models, datasets.test, settings.grid, seeds=settings.perturbation_seeds)
    scores.insert(1, "train_seed", train_seed)
    return scores, fit_seconds


def _one_seed_in_worker(
    task: tuple[str, DemoSettings, int, int],
) -> tuple[int, tuple[pd.DataFrame, dict[str, float]]]:
    """:func:`_one_seed` in a worker process for ``(dataset, settings, train_seed, threads)``: the same data
    (rebuilt from the bundled set) and the same thread count as the parent; returns the seed with the result."""
    import torch

    from nrnn_plugin.app.quiet import quiet_frameworks

    dataset, settings, train_seed, threads = task
    torch.set_num_threads(threads)
    quiet_frameworks()
    return train_seed, _one_seed(_prepare(dataset).datasets, settings, train_seed, NullReporter())


def _all_seeds(
    dataset: str, datasets: Any, settings: DemoSettings, seeds: tuple[int, ...], jobs: int, reporter: Reporter
) -> tuple[list[pd.DataFrame], dict[str, float]]:
    """Every seed's scores in seed order, and the training seconds per model summed over seeds.

    ``jobs > 1`` runs seeds in that many spawned worker processes, each with this process's thread count; the
    numbers are the same as with ``jobs=1`` (tested), only the progress lines are one per seed.
    """
    import torch

    frames: dict[int, pd.DataFrame] = {}
    fit_seconds = dict.fromkeys(_arms(settings), 0.0)

    def done(seed: int, scores: pd.DataFrame, seconds: dict[str, float], started: float) -> None:
        frames[seed] = scores
        for name, value in seconds.items():
            fit_seconds[name] += value
        reporter.progress(
            f"seed {seed}: both models trained and evaluated on {len(datasets.test)} test windows "
            f"({len(frames)}/{len(seeds)}, {time.perf_counter() - started:.0f}s)"
        )

    started = time.perf_counter()
    if jobs == 1:
        for seed in seeds:
            done(seed, *_one_seed(datasets, settings, seed, reporter), started)
    else:
        import multiprocessing

        threads = torch.get_num_threads()
        tasks = [(dataset, settings, s, threads) for s in seeds]
        # Pool.__exit__ terminates the workers: an error or a signal in this process never waits for a seed
        with multiprocessing.get_context("spawn").Pool(min(jobs, len(seeds))) as pool:
            for seed, (scores, seconds) in pool.imap_unordered(_one_seed_in_worker, tasks):
                done(seed, scores, seconds, started)
    return [frames[s] for s in seeds], fit_seconds


def _run(
    out: Path, settings: DemoSettings, seeds: tuple[int, ...], dataset: str, jobs: int, reporter: Reporter
) -> DemoResult:
    from nrnn_plugin.robustness import plot_robustness

    raw, prepared, split, datasets, csv_name = _prepare(dataset)
    data_file = out / csv_name
    raw.to_csv(data_file, index=False)
    test = datasets.test
    if test is None:
        raise RuntimeError("the demo's split has no test windows")
    reporter.progress(
        f"{csv_name}: {len(prepared.frame)} steps ({'; '.join(prepared.notes) or 'complete'}); windows: train "
        f"{len(datasets.training)}, validation {len(datasets.validation)}, test {len(test)} "
        f"(time steps >= {split.test_start}, never trained or selected on)"
    )
    plain_name, noisy_name = _arms(settings)
    reporter.progress(
        f"training 2 x {len(seeds)} RecurrentNetwork(LSTM, hidden {settings.hidden_size}) for "
        f"{settings.epochs} epochs each in {jobs} process(es); '{noisy_name}' = additive hidden-state noise sigma "
        f"{settings.noise:g}"
    )
    frames, fit_seconds = _all_seeds(dataset, datasets, settings, seeds, jobs, reporter)

    results = pd.concat(frames, ignore_index=True)
    results = results.rename(columns={"seed": "perturbation_seed"})
    csv_path = out / "demo_results.csv"
    results.to_csv(csv_path, index=False)

    folded = _fold_seeds(results)
    png_path = out / "demo_robustness.png"
    plot_robustness(
        folded[folded["metric"] == "mae"],
        png_path,
        metric="mae",
        ncols=len(settings.grid),
        title=f"{dataset}: test MAE under perturbed encoder inputs (bands: ± std over seeds)",
    )
    table = comparison_report(settings, seeds, fit_seconds, plain_name, noisy_name, dataset, results, len(test))
    return DemoResult(results=results, table=table, files=[csv_path, png_path, data_file])


def _fold_seeds(results: pd.DataFrame) -> pd.DataFrame:
    """One ``seed`` column for the summaries: every (training seed, perturbation seed) pair is one sample."""
    folded = results.copy()
    folded["seed"] = folded["train_seed"] * 1000 + folded["perturbation_seed"]
    return folded.drop(columns=["train_seed", "perturbation_seed"])
