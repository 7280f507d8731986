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

import pandas as pd

from nrnn_plugin.app import report, training
from nrnn_plugin.app.data import prepare_frame, split_and_check
from nrnn_plugin.app.datasets import build_datasets
from nrnn_plugin.app.outputs import OutputFolder
from nrnn_plugin.app.progress import NullReporter, Reporter
from nrnn_plugin.app.run_config import DataSpec, ModelSpec, TrainerSpec
from nrnn_plugin.config import NoiseConfig

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
    seeds=tuple(range(32)),
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
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> DemoResult:
    """Train, evaluate and compare; write CSV and PNG into ``out_dir`` (all or nothing; an existing non-empty
    folder only with ``overwrite``). ``seed`` offsets the training seeds."""
    reporter = reporter or NullReporter()
    if dataset not in SETTINGS:
        raise ValueError(f"run_demo: dataset must be one of {DATASETS}, got {dataset!r}")
    settings = SETTINGS[dataset][1 if quick else 0]
    if epochs is not None:
        settings = replace(settings, epochs=epochs)
    if noise is not None:
        settings = replace(settings, noise=noise)
    seeds = tuple(seed + s for s in settings.seeds)
    folder = OutputFolder(out_dir, overwrite=overwrite)
    with folder as staging:
        result = _run(staging, settings, seeds, dataset, reporter)
    out = folder.target
    return DemoResult(results=result.results, table=result.table, files=[out / f.name for f in result.files])


def _run(out: Path, settings: DemoSettings, seeds: tuple[int, ...], dataset: str, reporter: Reporter) -> DemoResult:
    from nrnn_plugin.robustness import plot_robustness

    raw, spec, csv_name = load_dataset(dataset)
    data_file = out / csv_name
    raw.to_csv(data_file, index=False)
    prepared, split = split_and_check(prepare_frame(raw, spec, source=csv_name), source=csv_name)
    datasets = build_datasets(prepared, split, source=csv_name)
    test = datasets.test
    if test is None:
        raise RuntimeError("the demo's split has no test windows")
    reporter.progress(
        f"{csv_name}: {len(prepared.frame)} steps ({'; '.join(prepared.notes) or 'complete'}); windows: train "
        f"{len(datasets.training)}, validation {len(datasets.validation)}, test {len(test)} "
        f"(time steps >= {split.test_start}, never trained or selected on)"
    )
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
    plain_name, noisy_name = "LSTM", f"LSTM + noise {settings.noise:g}"
    arms = {plain_name: None, noisy_name: settings.noise}
    reporter.progress(
        f"training {len(arms)} x {len(seeds)} RecurrentNetwork(LSTM, hidden {settings.hidden_size}) for "
        f"{settings.epochs} epochs each; '{noisy_name}' = additive hidden-state noise sigma {settings.noise:g}"
    )

    frames, fit_seconds = [], dict.fromkeys(arms, 0.0)
    for train_seed in seeds:
        models = {}
        for name, sigma in arms.items():
            trainer_spec = TrainerSpec(
                max_epochs=settings.epochs,
                batch_size=64,
                seed=train_seed,
                gradient_clip_val=1.0,
                limit_train_batches=settings.limit_train_batches,
            )
            import lightning.pytorch as pl

            pl.seed_everything(train_seed, verbose=False)
            model = training.build_model(model_spec, datasets.training)
            config = None if sigma is None else NoiseConfig(additive=sigma, seed=train_seed)
            trained = training.fit_model(
                model,
                datasets,
                trainer_spec,
                config,
                out_dir=None,
                label=f"{name} (seed {train_seed})",
                reporter=reporter,
            )
            fit_seconds[name] += trained.seconds
            models[name] = trained.model
        started = time.perf_counter()
        scores = report.evaluate_robustness(models, test, settings.grid, seeds=settings.perturbation_seeds)
        seconds = time.perf_counter() - started
        reporter.progress(f"evaluated seed {train_seed} on {len(test)} test windows ({seconds:.1f}s)")
        scores.insert(1, "train_seed", train_seed)
        frames.append(scores)

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
    table = _report(settings, seeds, fit_seconds, plain_name, noisy_name, dataset, results, len(test))
    return DemoResult(results=results, table=table, files=[csv_path, png_path, data_file])


def _fold_seeds(results: pd.DataFrame) -> pd.DataFrame:
    """One ``seed`` column for the summaries: every (training seed, perturbation seed) pair is one sample."""
    folded = results.copy()
    folded["seed"] = folded["train_seed"] * 1000 + folded["perturbation_seed"]
    return folded.drop(columns=["train_seed", "perturbation_seed"])


_VERDICTS = {"better": "lower MAE with noise", "worse": "higher MAE with noise"}


def _mean_sd(mean: float, sd: float) -> str:
    """``0.5028 ± 0.035`` (the spread over training seeds; only the mean for one seed)."""
    return f"{mean:.4g} ± {sd:.2g}" if sd == sd else f"{mean:.4g}"


@dataclass(frozen=True)
class PairedRow:
    """One grid point: both models' mean MAE (and spread over seeds) and the paired change in % of plain's."""

    perturbation: str
    strength: float
    plain: float
    plain_sd: float
    noisy: float
    noisy_sd: float
    change: float
    low: float
    high: float
    improved: int
    n: int
    verdict: str

    @property
    def label(self) -> str:
        return "clean" if self.strength == 0.0 else f"{self.perturbation} {self.strength:g}"


def _per_seed(mae: pd.DataFrame) -> pd.DataFrame:
    """MAE per (model, perturbation, strength, training seed), averaged over the perturbation seeds."""
    return mae.groupby(["model", "perturbation", "strength", "train_seed"], as_index=False, sort=False)["value"].mean()


def paired_rows(results: pd.DataFrame, plain: str, noisy: str) -> list[PairedRow]:
    """Per grid point: both models' mean MAE and the paired per-seed change of ``noisy`` against ``plain``."""
    from nrnn_plugin.app.stats import paired_difference, verdict

    per_seed = _per_seed(results[results["metric"] == "mae"])
    rows: list[PairedRow] = []
    clean_done = False
    for (perturbation, strength), part in per_seed.groupby(["perturbation", "strength"], sort=False):
        if strength == 0.0:
            if clean_done:
                continue
            clean_done = True
        pivot = part.pivot_table(index="train_seed", columns="model", values="value")
        d = paired_difference(pivot[plain].tolist(), pivot[noisy].tolist(), lower_is_better=True)
        scale = 100.0 / d.control_mean
        rows.append(
            PairedRow(
                perturbation="clean" if strength == 0.0 else str(perturbation),
                strength=float(strength),
                plain=d.control_mean,
                plain_sd=float(pivot[plain].std(ddof=1)) if d.n > 1 else float("nan"),
                noisy=d.treated_mean,
                noisy_sd=float(pivot[noisy].std(ddof=1)) if d.n > 1 else float("nan"),
                change=d.mean * scale,
                low=d.low * scale,
                high=d.high * scale,
                improved=d.improved,
                n=d.n,
                verdict=verdict(d) if d.n > 1 else "one seed: no interval",
            )
        )
    return rows


def _report(
    settings: DemoSettings,
    seeds: tuple[int, ...],
    fit_seconds: dict[str, float],
    plain: str,
    noisy: str,
    dataset: str,
    results: pd.DataFrame,
    windows: int,
) -> str:
    rows = paired_rows(results, plain, noisy)
    table = [
        [
            "perturbation",
            "strength",
            f"{plain} MAE",
            f"{noisy} MAE",
            "change",
            "95% CI",
            "improved",
            "verdict (noise vs plain)",
        ]
    ]
    for r in rows:
        table.append(
            [
                r.perturbation,
                "-" if r.strength == 0.0 else f"{r.strength:g}",
                _mean_sd(r.plain, r.plain_sd),
                _mean_sd(r.noisy, r.noisy_sd),
                f"{r.change:+.1f}%",
                f"[{r.low:+.1f}%, {r.high:+.1f}%]" if r.n > 1 else "-",
                f"{r.improved}/{r.n}",
                _VERDICTS.get(r.verdict, r.verdict),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    text = [
        "  ".join(c.ljust(w) if i in (0, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
        for line in table
    ]
    text.insert(1, "  ".join("-" * w for w in widths))

    def listed(kind: str) -> str:
        chosen = [r for r in rows if r.verdict == kind]
        return (
            ", ".join(
                f"{r.label} ({r.change:+.1f}% [{r.low:+.1f}%, {r.high:+.1f}%], {r.improved}/{r.n} seeds)"
                for r in chosen
            )
            or "none"
        )

    lines = [
        f"nrnn demo: {dataset}, {windows} test windows; MAE in the target's units (lower is better), mean ± std over "
        f"{len(seeds)} training seed(s) (each averaged over {len(settings.perturbation_seeds)} perturbation seed(s)); "
        f"change = {noisy} minus {plain}, paired by training seed, in % of the {plain} MAE, with its t-based 95% "
        f"interval; improved = seeds where noise lowered the MAE",
        "",
        *text,
        "",
        f"training time ({settings.epochs} epochs x {len(seeds)} seed(s)): "
        + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in fit_seconds.items()),
    ]
    if len(seeds) > 1:
        lines += [
            "conclusion (a difference is stated only where its 95% interval excludes 0):",
            f"  lower MAE with noise:  {listed('better')}",
            f"  higher MAE with noise: {listed('worse')}",
            f"  no clear difference:   {listed('no clear difference')}",
        ]
    else:
        lines.append("conclusion: none (one training seed gives no uncertainty; run without --quick)")
    return "\n".join(lines)
