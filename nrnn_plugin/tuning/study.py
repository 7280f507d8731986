"""Run a noise-level study with Optuna: trial 0 is the noise-free baseline, every trial a full training run.

::

    from nrnn_plugin.tuning import SearchSpace, tune

    def train_and_evaluate(candidate):            # candidate.noise: the trial's NoiseConfig
        model = build()
        register_noise(model, candidate.noise)    # or NoisyRNNCallback(candidate.noise) in Lightning
        fit(model)                                # select the epoch on validation data only
        return {"clean": val_loss(model), "perturbed": val_loss(model, perturbed=True)}

    result = tune(train_and_evaluate, SearchSpace.from_dict(None), n_trials=20, out_dir="tune")
    result.chosen.noise                           # the NoiseConfig picked by the rule

Objectives (``objective=``):

* ``"pareto"`` (default): a two-objective study (clean and perturbed validation metric). Optuna does not prune
  multi-objective studies, so every trial runs to the end.
* ``"constrained"``: one objective, the perturbed metric, under the constraint that the clean metric stays
  within ``tolerance`` of the baseline's (``Trial.set_constraint``, read by the TPE sampler). It can prune: Lightning
  users add :func:`nrnn_plugin.integrations.tuning.pruning_callback`, plain loops call
  :meth:`Candidate.report` once per epoch.

Both store the two metrics of every trial, so the Pareto front and the choice
(:func:`nrnn_plugin.tuning.selection.choose`) are the same computation.

Storage: ``storage=None`` is the SQLite file ``<out_dir>/study.db``; any Optuna storage URL
(``postgresql://...``) lets many workers on many machines share one study. ``n_trials`` is the study's total:
running again continues an interrupted study up to ``n_trials``, and several workers started with the same
storage split the trials between them.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nrnn_plugin.tuning.selection import Choice, choose, trials_frame
from nrnn_plugin.tuning.space import Candidate, SearchSpace
from nrnn_plugin.validation import check_choice, check_int, check_real

__all__ = ["tune", "TuneResult", "OBJECTIVES", "DIRECTIONS", "default_storage"]

OBJECTIVES = ("pareto", "constrained")
DIRECTIONS = ("minimize", "maximize")
Metrics = Mapping[str, float]
TrainAndEvaluate = Callable[[Candidate], Any]
_BASELINE = "nrnn_baseline"


@dataclass
class TuneResult:
    """What a study produced: every trial (a ``pandas.DataFrame``), the choice, and the files written."""

    trials: Any
    chosen: Choice
    study: Any
    files: list[Path]


def default_storage(out_dir: str | os.PathLike[str]) -> str:
    """The SQLite URL of ``<out_dir>/study.db``."""
    return "sqlite:///" + str((Path(out_dir) / "study.db").resolve())


def _sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """Serialise study creation between processes sharing one SQLite file (one baseline trial, not two)."""
    path = _sqlite_path(url)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _storage(url: str) -> Any:
    """Optuna's RDB storage with a heartbeat (stale trials of killed workers are failed after 120 s); SQLite
    waits up to 60 s for a lock held by another worker. A first connection that races another worker creating
    the schema of a new database (a server, where no file lock serialises them) is retried once."""
    import optuna

    engine: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(2):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30, grace_period=120)
        except Exception:  # sqlalchemy's IntegrityError while another worker initialises the schema
            if attempt == 1:
                raise
            time.sleep(2.0)
    raise AssertionError("unreachable")


def _metrics(value: Any) -> dict[str, float]:
    if isinstance(value, Mapping):
        missing = [k for k in ("clean", "perturbed") if k not in value]
        if missing:
            raise KeyError(f"train_and_evaluate must return a mapping with 'clean' and 'perturbed'; missing {missing}")
        return {str(k): float(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return {"clean": float(value[0]), "perturbed": float(value[1])}
    raise TypeError(
        "train_and_evaluate must return {'clean': float, 'perturbed': float} or a pair (clean, perturbed), got "
        f"{type(value).__name__}"
    )


def _baseline_clean(study: Any) -> float | None:
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get(_BASELINE):
            return float(t.user_attrs["clean"])
    return None


def tune(
    train_and_evaluate: TrainAndEvaluate,
    space: SearchSpace | Mapping[str, Any] | None = None,
    *,
    n_trials: int = 20,
    out_dir: str | os.PathLike[str] = "tune",
    storage: str | None = None,
    study_name: str = "nrnn-tune",
    direction: str = "minimize",
    objective: str = "pareto",
    tolerance: float = 0.02,
    seed: int | None = 0,
    pruner: Any = None,
    run_file: Mapping[str, Any] | None = None,
    plot: bool = True,
    verbose: bool = False,
) -> TuneResult:
    """Search the noise settings; write ``trials.csv``, ``best.yaml`` and ``front.png`` to ``out_dir``.

    Args:
        train_and_evaluate: ``f(candidate) -> {"clean": float, "perturbed": float, ...}`` (or a pair): one full
            training run with model selection on validation data, then the validation metric on clean and on
            perturbed inputs (a mix from :mod:`nrnn_plugin.robustness`). Extra keys are stored with the trial.
        space: a :class:`SearchSpace`, a mapping (``SearchSpace.from_dict``) or ``None`` (the default space:
            additive and multiplicative levels).
        n_trials: total number of trials of the study, the baseline included (>= 1).
        out_dir: folder of the outputs (and of the default SQLite storage).
        storage: an Optuna storage URL; ``None``: ``sqlite:///<out_dir>/study.db``.
        direction: ``"minimize"`` (losses, MAE) or ``"maximize"`` (accuracy) for both metrics.
        objective: ``"pareto"`` or ``"constrained"`` (see the module docstring).
        tolerance: the rule's allowance: a trial qualifies when its clean metric is at most
            ``tolerance * |baseline clean|`` worse than the baseline's.
        seed: seed of the sampler (``None``: random). With several workers the order of trials varies anyway.
        pruner: an Optuna pruner for ``objective="constrained"`` (default: ``MedianPruner(n_startup_trials=3)``).
        run_file: a run-file mapping; ``best.yaml`` is it with the chosen ``noise:`` section (else only the
            ``noise:`` and ``params:`` sections).
        plot: write ``front.png`` (needs matplotlib).
        verbose: keep Optuna's one log line per trial (default: warnings only).
    """
    import optuna

    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    from nrnn_plugin.tuning.outputs import write_outputs

    n_trials = check_int("tune.n_trials", n_trials, minimum=1)
    check_choice("tune.direction", direction, DIRECTIONS)
    check_choice("tune.objective", objective, OBJECTIVES)
    tolerance = check_real("tune.tolerance", tolerance, minimum=0.0)
    if not isinstance(space, SearchSpace):
        space = SearchSpace.from_dict(space)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    sign = -1.0 if direction == "maximize" else 1.0

    sampler = optuna.samplers.TPESampler(seed=seed)  # constrained: trial.set_constraint (Optuna >= 5)
    if objective == "pareto":
        kwargs: dict[str, Any] = {"directions": [direction, direction]}
    else:
        kwargs = {"direction": "minimize", "pruner": pruner or optuna.pruners.MedianPruner(n_startup_trials=3)}
    with _creation_lock(url):  # the schema, the study and its baseline are created by one process at a time
        rdb = _storage(url)
        study = optuna.create_study(storage=rdb, study_name=study_name, sampler=sampler, load_if_exists=True, **kwargs)
        _check_study(study, objective, direction, space)
        if not study.get_trials(deepcopy=False):
            study.set_user_attr("objective", objective)
            study.set_user_attr("direction", direction)
            study.set_user_attr("space", space.to_dict())
            study.enqueue_trial({}, user_attrs={_BASELINE: True})

    def run(trial: Any) -> Any:
        baseline = bool(trial.user_attrs.get(_BASELINE))
        values = space.baseline_values() if baseline else space.suggest(trial)
        candidate = Candidate(
            number=trial.number,
            noise=space.noise_config(values),
            params=values,
            baseline=baseline,
            trial=trial,
            prunable=objective == "constrained",
        )
        for name, value in values.items():
            trial.set_user_attr(f"param.{name}", value)
        started = time.perf_counter()
        metrics = _metrics(train_and_evaluate(candidate))
        trial.set_user_attr("seconds", time.perf_counter() - started)
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        clean, perturbed = metrics["clean"], metrics["perturbed"]
        if not (math.isfinite(clean) and math.isfinite(perturbed)):
            return float("nan")  # Optuna records the trial as failed
        if objective == "pareto":
            return clean, perturbed
        reference = clean if baseline else _baseline_clean(study)
        limit = math.inf if reference is None else sign * reference + tolerance * abs(reference)
        trial.set_constraint("clean", sign * clean - limit)
        return sign * perturbed

    states = optuna.trial.TrialState
    active = (states.COMPLETE, states.PRUNED, states.RUNNING)
    attempts = 0  # trials that fail (non-finite metrics) do not count; this bounds the retries
    while attempts <= 2 * n_trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a killed worker's trials, after the heartbeat's grace period
        if len(study.get_trials(deepcopy=False, states=active)) >= n_trials and not _waiting(study):
            break
        study.optimize(run, n_trials=1, catch=())
        attempts += 1
    frame = trials_frame(study)
    chosen = choose(frame, direction=direction, tolerance=tolerance, space=space)
    files = write_outputs(frame, chosen, out, run_file=run_file, plot=plot, direction=direction)
    return TuneResult(trials=frame, chosen=chosen, study=study, files=files)


def _waiting(study: Any) -> bool:
    import optuna

    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def _check_study(study: Any, objective: str, direction: str, space: SearchSpace) -> None:
    """An existing study must have been made with the same objective, direction and space."""
    attrs = study.user_attrs
    if not attrs:
        return
    for key, value in (("objective", objective), ("direction", direction), ("space", space.to_dict())):
        if key in attrs and attrs[key] != value:
            raise ValueError(
                f"tune: the study {study.study_name!r} in this storage was made with {key}={attrs[key]!r}, not "
                f"{value!r}; use another study name or output folder"
            )
