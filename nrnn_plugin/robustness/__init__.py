"""Robustness evaluation (``docs/robustness.md``): test-time input perturbations, tidy results, plots.

>>> from nrnn_plugin.robustness import evaluate, plot_robustness, summarize
>>> results = evaluate({"lstm": lstm, "nrnn": nrnn_model}, (X_test, y_test), seeds=[0, 1, 2])  # doctest: +SKIP
>>> plot_robustness(results, "robustness.png")                                               # doctest: +SKIP

Needs pandas (a core dependency) and, for plots, matplotlib (extra ``data``).
"""

from nrnn_plugin.robustness.evaluate import COLUMNS, ClassificationTask, Task, evaluate
from nrnn_plugin.robustness.perturbations import (
    DEFAULT_STRENGTHS,
    PERTURBATIONS,
    Perturbation,
    fgsm,
    input_gradient,
    multiplicative_noise,
    pgd,
    salt_and_pepper,
    white_noise,
)
from nrnn_plugin.robustness.plotting import plot_robustness, summarize

__all__ = [
    "evaluate",
    "Task",
    "ClassificationTask",
    "summarize",
    "plot_robustness",
    "white_noise",
    "multiplicative_noise",
    "salt_and_pepper",
    "fgsm",
    "pgd",
    "input_gradient",
    "Perturbation",
    "PERTURBATIONS",
    "DEFAULT_STRENGTHS",
    "COLUMNS",
]
