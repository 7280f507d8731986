"""``nrnn tune --config run.yaml --trials N --out DIR [--storage URL]``: choose the noise settings on validation data.

Every trial trains the run file's model with one candidate ``noise:`` section (trial 0: none), keeps the epoch
with the best validation loss, and scores it on the *validation* windows: the clean MAE and the mean MAE under
the perturbation mix of the ``tune:`` section. :func:`nrnn_plugin.tuning.tune` runs the Optuna study (SQLite
``DIR/study.db`` by default; ``--storage`` for a shared database) and writes ``trials.csv``, ``best.yaml`` (the
run file with the chosen ``noise:`` section, for ``nrnn train --config DIR/best.yaml``) and ``front.png``.

The ``tune:`` section (every key optional; ``examples/tune.yaml``)::

    tune:
      trials: 20                 # total trials of the study, trial 0 (no noise) included; --trials overrides
      objective: pareto          # pareto (two objectives) | constrained (one objective; prunes bad trials)
      tolerance: 0.02            # the rule: most robust trial within 2% of the baseline's clean MAE
      metric: mae                # mae | smape
      perturbations: {white_noise: 0.4, salt_and_pepper: 0.05}   # the mix: mean metric over these
      seeds: [0]                 # perturbation seeds
      train_seeds: 1             # training seeds per trial; the study scores their mean (steadier choices)
      study_name: nrnn-tune
      space:                     # nrnn_plugin.tuning.SearchSpace.from_dict; default: additive, multiplicative
        additive: {low: 0.02, high: 1.0, log: true}
        multiplicative: {low: 0.0, high: 0.3}

The section is part of the run-file schema (:class:`nrnn_plugin.app.tune_schema.TuneSpec`; ``nrnn train``
ignores it), so a run file with a ``tune:`` section still trains as it is, and ``best.yaml`` is that file
without the section and with the chosen ``noise:`` section.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nrnn_plugin.app.errors import ConfigError
from nrnn_plugin.app.progress import NullReporter, Reporter

__all__ = ["run_tune", "format_summary"]


def run_tune(
    config_path: str | Path,
    *,
    out_dir: str | Path,
    trials: int | None = None,
    storage: str | None = None,
    data_path: str | None = None,
    max_epochs: int | None = None,
    reporter: Reporter | None = None,
) -> Any:
    """Validate the run file and its ``tune:`` section, load the data, run the study; returns the TuneResult."""
    from nrnn_plugin.app.data import load_training_data
    from nrnn_plugin.app.run_config import load_run_config
    from nrnn_plugin.app.tune_schema import TuneSpec
    from nrnn_plugin.config import NoiseConfig

    reporter = reporter or NullReporter()
    config = load_run_config(config_path)
    spec = config.tune or TuneSpec()
    base = config.noise or NoiseConfig(seed=config.trainer.seed)
    from nrnn_plugin.tuning import SearchSpace

    try:
        space = SearchSpace.from_dict(spec.space, base=base)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tune.space: {exc}") from None
    if max_epochs is not None:
        config = config.model_copy(update={"trainer": config.trainer.replace(max_epochs=max_epochs)})
    config, prepared, split = load_training_data(config, data_path)
    from nrnn_plugin.app import report, training
    from nrnn_plugin.app.datasets import build_datasets
    from nrnn_plugin.integrations.tuning import pruning_callback
    from nrnn_plugin.tuning import tune

    datasets = build_datasets(prepared, split, source=Path(str(config.data.path)).name)
    grid = {name: (0.0, strength) for name, strength in spec.perturbations.items()}  # clean and perturbed
    reporter.progress(
        f"study: {spec.objective}, up to {trials or spec.trials} trials; validation windows "
        f"{len(datasets.validation)}; perturbation mix {dict(spec.perturbations)}"
    )

    def train_once(candidate: Any, offset: int, label: str, prune: bool) -> dict[str, float]:
        """One training run of ``candidate`` scored on validation: training seed ``trainer.seed + offset``, the
        noise seed (when the noise section sets one) shifted by ``offset`` too; offset 0 is the run file as is."""
        import lightning.pytorch as pl

        seed = config.trainer.seed + offset
        pl.seed_everything(seed, verbose=False)
        model = training.build_model(config.model, datasets.training)
        noise = None
        if not candidate.baseline:
            noise = candidate.noise
            if noise.seed is not None and offset:
                noise = noise.replace(seed=noise.seed + offset)
        trained = training.fit_model(
            model,
            datasets,
            config.trainer.replace(seed=seed),
            noise,
            out_dir=None,
            label=label,
            reporter=reporter,
            callbacks=pruning_callback(candidate, monitor="val_loss") if prune else [],
        )
        scores = report.evaluate_robustness({"m": trained.model}, datasets.validation, grid, seeds=spec.seeds)
        scores = scores[scores["metric"] == spec.metric]
        clean = float(scores[scores["strength"] == 0.0]["value"].mean())
        perturbed = float(scores[scores["strength"] > 0.0].groupby("perturbation")["value"].mean().mean())
        reporter.progress(f"{label}: validation {spec.metric} clean {clean:.4g}, perturbed {perturbed:.4g}")
        return {"clean": clean, "perturbed": perturbed, "best_val_loss": trained.best_val_loss}

    def train_and_evaluate(candidate: Any) -> dict[str, float]:
        """The mean over ``tune.train_seeds`` training seeds; only the first seed's run reports to the pruner."""
        label = f"trial {candidate.number}" + ("" if candidate.baseline else f" ({_describe(candidate.params)})")
        seeds = [config.trainer.seed + i for i in range(spec.train_seeds)]
        runs = [
            train_once(candidate, i, label if len(seeds) == 1 else f"{label} seed {seed}", prune=i == 0)
            for i, seed in enumerate(seeds)
        ]
        metrics = {key: float(sum(run[key] for run in runs) / len(runs)) for key in runs[0]}
        if len(seeds) > 1:
            reporter.progress(
                f"{label}: validation {spec.metric} clean {metrics['clean']:.4g}, perturbed "
                f"{metrics['perturbed']:.4g} (mean over {len(seeds)} training seeds)"
            )
        return metrics

    run_file = {key: value for key, value in config.to_dict().items() if key != "tune"}
    run_file["noise"] = None  # best.yaml: this run file with the chosen noise section
    return tune(
        train_and_evaluate,
        space,
        n_trials=trials or spec.trials,
        out_dir=out_dir,
        storage=storage,
        study_name=spec.study_name,
        direction="minimize",
        objective=spec.objective,
        tolerance=spec.tolerance,
        run_file=run_file,
    )


def _describe(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def format_summary(result: Any, out_dir: str | Path) -> str:
    """What ``nrnn tune`` prints: the trials, the front, the choice and the next command."""
    frame = result.trials
    chosen = result.chosen
    params = [c for c in frame.columns if c.startswith("param.")]
    shown = frame[["number", "state", *params, "clean", "perturbed", "seconds", "pareto", "chosen"]].copy()
    shown.columns = [c.removeprefix("param.") for c in shown.columns]
    lines = [
        shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"),
        "",
        f"rule: {chosen.rule}",
        f"chosen: trial {chosen.number}"
        + (" (no noise)" if chosen.is_baseline else f" ({_describe(chosen.params)})")
        + f"; validation clean {chosen.clean:.4g} (baseline {chosen.baseline_clean:.4g}), perturbed "
        f"{chosen.perturbed:.4g} (baseline {chosen.baseline_perturbed:.4g})",
        f"next: nrnn train --config {Path(out_dir) / 'best.yaml'}",
    ]
    return "\n".join(lines)
