"""Every trial of a study as a table, its Pareto front, and the rule that picks one trial.

The rule (:func:`choose`): among the finished trials whose clean validation metric is at most
``tolerance * |baseline|`` worse than the noise-free baseline's (trial 0), take the one with the best metric
under perturbation; ties go to the lower trial number. The baseline always qualifies, so the rule returns the
noise-free model when no noise setting is more robust at an acceptable clean cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.tuning.space import SearchSpace

__all__ = ["trials_frame", "pareto_mask", "choose", "Choice", "RULE"]

RULE = (
    "the most robust trial (best validation metric under perturbation) among those whose clean validation "
    "metric is within {tolerance:g} x |baseline| of the noise-free baseline (trial 0)"
)
_BASELINE = "nrnn_baseline"


def trials_frame(study: Any) -> Any:
    """One row per trial: number, state, baseline, every searched value, clean and perturbed metrics, seconds.

    Metric columns come from what ``train_and_evaluate`` returned (``clean``, ``perturbed`` and any extra key).
    """
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = dict(t.user_attrs)
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "baseline": bool(attrs.pop(_BASELINE, False)),
        }
        params = {k: v for k, v in attrs.items() if k.startswith("param.")}
        row.update(params)
        row.update({k: v for k, v in attrs.items() if not k.startswith("param.")})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for column in ("clean", "perturbed", "seconds"):
        if column not in frame:
            frame[column] = float("nan")
    return frame.sort_values("number").reset_index(drop=True)


def pareto_mask(clean: Any, perturbed: Any, *, direction: str = "minimize") -> list[bool]:
    """True for the points not dominated by another (no worse in both metrics, better in one)."""
    sign = -1.0 if direction == "maximize" else 1.0
    points = [(sign * float(a), sign * float(b)) for a, b in zip(clean, perturbed)]
    mask = []
    for i, (a, b) in enumerate(points):
        dominated = any((c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i)
        mask.append(not dominated)
    return mask


@dataclass(frozen=True)
class Choice:
    """The trial the rule picked, with the noise config and the user parameters to train with."""

    number: int
    noise: NoiseConfig
    params: Mapping[str, Any]
    clean: float
    perturbed: float
    baseline_clean: float
    baseline_perturbed: float
    rule: str
    is_baseline: bool


def choose(frame: Any, *, direction: str, tolerance: float, space: SearchSpace) -> Choice:
    """Apply the rule to a :func:`trials_frame`; marks the ``pareto`` and ``chosen`` columns in place."""
    done = frame[(frame["state"] == "COMPLETE") & frame["clean"].notna() & frame["perturbed"].notna()]
    if done.empty:
        raise RuntimeError("tune: no trial finished, so none can be chosen")
    base_rows = done[done["baseline"]]
    if base_rows.empty:
        raise RuntimeError("tune: the noise-free baseline trial (trial 0) has not finished; run the study again")
    base = base_rows.iloc[0]
    sign = -1.0 if direction == "maximize" else 1.0
    limit = sign * base["clean"] + tolerance * abs(base["clean"])
    qualified = done[sign * done["clean"] <= limit + 1e-12]
    best = qualified.assign(_key=sign * qualified["perturbed"]).sort_values(["_key", "number"]).iloc[0]
    frame["pareto"] = False
    frame.loc[done.index, "pareto"] = pareto_mask(done["clean"], done["perturbed"], direction=direction)
    frame["chosen"] = frame["number"] == best["number"]
    params = {p.name: _plain(best.get(f"param.{p.name}", p.baseline)) for p in space.params}
    return Choice(
        number=int(best["number"]),
        noise=space.noise_config(params),
        params=params,
        clean=float(best["clean"]),
        perturbed=float(best["perturbed"]),
        baseline_clean=float(base["clean"]),
        baseline_perturbed=float(base["perturbed"]),
        rule=RULE.format(tolerance=tolerance),
        is_baseline=bool(best["baseline"]),
    )


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (for NoiseConfig and YAML)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value
