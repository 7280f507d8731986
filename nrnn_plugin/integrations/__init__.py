"""Integrations with training frameworks (each module imports its framework; import them lazily).

* :mod:`.lightning`: :class:`~nrnn_plugin.integrations.lightning.NoisyRNNCallback` for any LightningModule.
"""
