"""Integrations with training frameworks (each module imports its framework; import them lazily).

* :mod:`.lightning`: :class:`~nrnn_plugin.integrations.lightning.NoisyRNNCallback` for any LightningModule, on
  either Lightning distribution (:mod:`.distributions`);
* :mod:`.steps`: the regularizer's loss closures and the training step's RNG (imports no Lightning).
"""
