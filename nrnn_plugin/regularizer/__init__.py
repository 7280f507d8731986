"""The explicit regularizer: noise injection's small-noise expansion as a differentiable loss term.

* :mod:`.api`: :func:`explicit_regularizer`, :func:`regularized_loss`, :func:`training_step`,
  :func:`model_config` (the estimators' accuracy and cost are described there);
* :mod:`.closures`: what a closure returns; :mod:`.guards`: what is held fixed around the probes;
* :mod:`.estimators`: ``fd`` and ``jet``; :mod:`.exact`: the exact oracle for tiny models.
"""

from nrnn_plugin.regularizer.api import TERMS, explicit_regularizer, model_config, regularized_loss, training_step

__all__ = ["TERMS", "explicit_regularizer", "regularized_loss", "training_step", "model_config"]
