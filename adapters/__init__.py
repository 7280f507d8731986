"""Adapter plugins shipped with nrnn-plugin (installed as ``nrnn_plugin.adapters``).

Each adapter is a plugin module registered through the ``nrnn_plugin`` entry-point group, exactly like a
third-party adapter would be.
"""
