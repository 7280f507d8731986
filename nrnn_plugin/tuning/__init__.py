"""Choosing the noise level on validation data: an Optuna study over the noise settings (``docs/tuning.md``).

>>> from nrnn_plugin.tuning import SearchSpace, tune
>>> result = tune(train_and_evaluate, SearchSpace.from_dict(None), n_trials=20, out_dir="tune")  # doctest: +SKIP
>>> result.chosen.noise                                                                          # doctest: +SKIP

Needs Optuna (extra ``tune``); ``import nrnn_plugin`` never imports this package. Lightning users prune
trials with :func:`nrnn_plugin.integrations.tuning.pruning_callback`.
"""

from nrnn_plugin.tuning.selection import RULE, Choice, choose, pareto_mask, trials_frame
from nrnn_plugin.tuning.space import DEFAULT_SPACE, Candidate, Param, SearchSpace
from nrnn_plugin.tuning.study import DIRECTIONS, OBJECTIVES, TuneResult, default_storage, tune

__all__ = [
    "tune",
    "TuneResult",
    "SearchSpace",
    "Param",
    "Candidate",
    "Choice",
    "DEFAULT_SPACE",
    "OBJECTIVES",
    "DIRECTIONS",
    "RULE",
    "choose",
    "pareto_mask",
    "trials_frame",
    "default_storage",
]
