"""The compiled CPU kernels: a C++ extension with the noise generated inside its loops.

* :mod:`.build` - build, cache and load the extension (or say why it is off); imports nothing from the package;
* :mod:`.ops` - the ``torch.library`` registrations of its operators (fake implementations, autograd, double
  backward, non-CPU devices);
* :mod:`.kernels` - the noisy layers' entry point: a :class:`~nrnn_plugin.layers.signature.LayerPass` to the ops.

Sources: ``csrc/philox.h`` (the noise, bit-identical to :mod:`nrnn_plugin.philox`), ``csrc/common.h`` and one
``.cpp`` per cell type.
"""
