"""Adapter plugins shipped with nrnn-plugin (installed as ``nrnn_plugin.adapters``).

Each adapter is a plugin module, registered by module path as a default plugin of the manager
(:data:`nrnn_plugin.plugins.DEFAULT_PLUGINS`), so they work without installed package metadata. An adapter is
the only place that knows its framework; it reaches the core through the public API and the hooks.

* :mod:`.torch_adapter`: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` and their cells;
* :mod:`.nrnn_adapter`: the paper's NRNN layer and cell;
* :mod:`.forecasting`: pytorch-forecasting.
"""
