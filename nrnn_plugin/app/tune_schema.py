"""The ``tune:`` section of a run file (``nrnn tune``): the study's budget, objective, rule and search space.

One more :class:`~nrnn_plugin.app.run_config.Section` of the run-file schema, so ``nrnn schema`` documents it
and its errors read like every other section's. ``nrnn train`` ignores the section; ``nrnn tune`` reads it
(:mod:`nrnn_plugin.app.tune`). The search space is checked by :meth:`nrnn_plugin.tuning.SearchSpace.from_dict`
when the study starts (its own messages, prefixed ``tune.space``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PlainValidator, WithJsonSchema

from nrnn_plugin.app.schema_types import Count, Text, fail
from nrnn_plugin.app.section import Section
from nrnn_plugin.validation import check_real

__all__ = ["TuneSpec", "PERTURBATION_NAMES", "OBJECTIVE_NAMES"]

#: The robustness suite's perturbations (``nrnn_plugin.robustness.PERTURBATIONS``; a test keeps them equal).
PERTURBATION_NAMES = ("white_noise", "multiplicative_noise", "salt_and_pepper", "fgsm", "pgd")
#: ``nrnn_plugin.tuning.OBJECTIVES`` (a test keeps them equal).
OBJECTIVE_NAMES = ("pareto", "constrained")

Seed = Annotated[int, Field(ge=0, strict=True)]
#: The robustness objective's default perturbation mix.
DEFAULT_MIX = {"white_noise": 0.4, "salt_and_pepper": 0.05}


def _mix(value: Any) -> dict[str, float]:
    """A mapping perturbation name -> strength > 0; errors name the entry (``tune.perturbations.<name>``)."""
    if not isinstance(value, Mapping) or not value:
        raise fail(f"tune.perturbations: expected a non-empty mapping perturbation -> strength, got {value!r}")
    mix: dict[str, float] = {}
    for name, strength in value.items():
        key = f"tune.perturbations.{name}"
        if name not in PERTURBATION_NAMES:
            raise fail(f"{key}: expected one of {', '.join(map(repr, PERTURBATION_NAMES))}, got {name!r}")
        try:
            mix[name] = check_real(key, strength, minimum=0.0, strict=True)
        except (TypeError, ValueError) as exc:
            raise fail(str(exc)) from None
    return mix


Mix = Annotated[
    dict[str, float],
    PlainValidator(_mix),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"enum": list(PERTURBATION_NAMES)},
            "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
            "minProperties": 1,
        }
    ),
]


class TuneSpec(Section):
    """Section ``tune``: how ``nrnn tune`` searches the noise settings (every key optional)."""

    SECTION: ClassVar[str] = "tune"

    trials: Count = Field(
        20, description="trials of the study in total, trial 0 (no noise) included; `--trials` overrides it"
    )
    objective: Literal["pareto", "constrained"] = Field(
        "pareto",
        description="pareto: two objectives (clean, perturbed); constrained: the perturbed metric under a clean "
        "constraint (prunes bad trials)",
    )
    tolerance: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        0.02, description="the rule: the most robust trial within this fraction of the baseline's clean metric"
    )
    metric: Literal["mae", "smape"] = Field("mae", description="the validation metric")
    perturbations: Mix = Field(
        default_factory=lambda: dict(DEFAULT_MIX),
        description="the perturbation mix of the robustness objective: perturbation -> strength",
        json_schema_extra={"default": dict[str, Any](DEFAULT_MIX)},
    )
    seeds: tuple[Seed, ...] = Field((0,), min_length=1, description="perturbation seeds")
    train_seeds: Count = Field(
        1,
        description="training seeds per trial (trainer.seed, trainer.seed + 1, ...; a noise seed shifted alike): the "
        "study scores their mean, trial 0 too. One seed's validation metric moves with the seed and the machine's "
        "rounding, and the rule's choice with it",
    )
    study_name: Text = Field("nrnn-tune", description="the study's name in its storage")
    space: dict[str, Any] | None = Field(
        None, description="the search space (nrnn_plugin.tuning.SearchSpace); null: additive and multiplicative"
    )
