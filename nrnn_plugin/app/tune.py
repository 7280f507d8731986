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
      study_name: nrnn-tune
      space:                     # nrnn_plugin.tuning.SearchSpace.from_dict; default: additive, multiplicative
        additive: {low: 0.02, high: 1.0, log: true}
        multiplicative: {low: 0.0, high: 0.3}

The section is read here and removed before the rest of the file is validated as a run file, so the run-file
schema (:mod:`nrnn_plugin.app.run_config`) does not know it; ``nrnn train`` refuses a file with a ``tune:``
section (train with ``DIR/best.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nrnn_plugin.app.errors import ConfigError, InputError
from nrnn_plugin.app.progress import NullReporter, Reporter
from nrnn_plugin.validation import check_choice, check_int, check_real, expected, reject_unknown

__all__ = ["TuneSpec", "split_run_file", "run_tune", "format_summary"]

_KEYS = ("trials", "objective", "tolerance", "metric", "perturbations", "seeds", "study_name", "space")


@dataclass(frozen=True)
class TuneSpec:
    """The validated ``tune:`` section."""

    trials: int = 20
    objective: str = "pareto"
    tolerance: float = 0.02
    metric: str = "mae"
    perturbations: Mapping[str, float] = field(default_factory=lambda: {"white_noise": 0.4, "salt_and_pepper": 0.05})
    seeds: tuple[int, ...] = (0,)
    study_name: str = "nrnn-tune"
    space: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Any) -> TuneSpec:
        from nrnn_plugin.robustness import PERTURBATIONS
        from nrnn_plugin.tuning import OBJECTIVES

        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise expected("tune", "a mapping (a YAML section of 'name: value' lines)", data, ConfigError)
        reject_unknown("section 'tune'", data, _KEYS, error=ConfigError)
        errors: dict[str, Any] = {"value_error": ConfigError, "type_error": ConfigError}
        perturbations = data.get("perturbations", cls().perturbations)
        if not isinstance(perturbations, Mapping) or not perturbations:
            raise expected("tune.perturbations", "a mapping perturbation -> strength", perturbations, ConfigError)
        for name, strength in perturbations.items():
            check_choice(f"tune.perturbations.{name}", name, sorted(PERTURBATIONS), **errors)
            check_real(f"tune.perturbations.{name}", strength, minimum=0.0, strict=True, **errors)
        seeds = data.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds:
            raise expected("tune.seeds", "a non-empty list of integers >= 0", seeds, ConfigError)
        study_name = data.get("study_name", "nrnn-tune")
        if not isinstance(study_name, str) or not study_name:
            raise expected("tune.study_name", "a non-empty string", study_name, ConfigError)
        return cls(
            trials=check_int("tune.trials", data.get("trials", 20), minimum=1, **errors),
            objective=check_choice("tune.objective", data.get("objective", "pareto"), OBJECTIVES, **errors),
            tolerance=check_real("tune.tolerance", data.get("tolerance", 0.02), minimum=0.0, **errors),
            metric=check_choice("tune.metric", data.get("metric", "mae"), ("mae", "smape"), **errors),
            perturbations={str(k): float(v) for k, v in perturbations.items()},
            seeds=tuple(check_int("tune.seeds", s, minimum=0, **errors) for s in seeds),
            study_name=study_name,
            space=data.get("space"),
        )


def split_run_file(path: str | Path) -> tuple[dict[str, Any], TuneSpec]:
    """The run file's mapping without ``tune:``, and the validated ``tune:`` section."""
    from nrnn_plugin.yaml_io import read_yaml

    file = Path(path)
    if not file.is_file():
        raise InputError(f"config file not found: {str(file)!r}")
    try:
        document = read_yaml(file)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(document, Mapping):
        raise ConfigError(f"{file}: expected a run file (a mapping with a 'data' section), got {document!r}")
    run = {k: v for k, v in document.items() if k != "tune"}
    return run, TuneSpec.from_dict(document.get("tune"))


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
    from nrnn_plugin.app.run_config import RunConfig
    from nrnn_plugin.config import NoiseConfig

    reporter = reporter or NullReporter()
    run, spec = split_run_file(config_path)
    config = RunConfig.from_dict(run)
    base = config.noise or NoiseConfig(seed=config.trainer.seed)
    from nrnn_plugin.tuning import SearchSpace

    try:
        space = SearchSpace.from_dict(spec.space, base=base)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tune.space: {exc}") from None
    if max_epochs is not None:
        config = replace(config, trainer=replace(config.trainer, max_epochs=max_epochs))
    config, prepared, split = load_training_data(config, data_path)
    from nrnn_plugin.app import report, training
    from nrnn_plugin.app.datasets import build_datasets
    from nrnn_plugin.integrations.tuning import pruning_callback
    from nrnn_plugin.tuning import tune

    datasets = build_datasets(prepared, split, source=Path(str(config.data.path)).name)
    grid = {name: (0.0, strength) for name, strength in spec.perturbations.items()}
    reporter.progress(
        f"study: {spec.objective}, up to {trials or spec.trials} trials; validation windows "
        f"{len(datasets.validation)}; perturbation mix {dict(spec.perturbations)}"
    )

    def train_and_evaluate(candidate: Any) -> dict[str, float]:
        import lightning.pytorch as pl

        pl.seed_everything(config.trainer.seed, verbose=False)
        model = training.build_model(config.model, datasets.training)
        noise = None if candidate.baseline else candidate.noise
        label = f"trial {candidate.number}" + ("" if noise is None else f" ({_describe(candidate.params)})")
        trained = training.fit_model(
            model,
            datasets,
            config.trainer,
            noise,
            out_dir=None,
            label=label,
            reporter=reporter,
            callbacks=pruning_callback(candidate, monitor="val_loss"),
        )
        scores = report.evaluate_robustness({"m": trained.model}, datasets.validation, grid, seeds=spec.seeds)
        scores = scores[scores["metric"] == spec.metric]
        clean = float(scores[scores["strength"] == 0.0]["value"].mean())
        perturbed = float(scores[scores["strength"] > 0.0].groupby("perturbation")["value"].mean().mean())
        reporter.progress(f"{label}: validation {spec.metric} clean {clean:.4g}, perturbed {perturbed:.4g}")
        return {"clean": clean, "perturbed": perturbed, "best_val_loss": trained.best_val_loss}

    run_file = {**run, "noise": None}  # best.yaml: this run file with the chosen noise section
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
