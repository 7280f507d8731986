"""``python -m nrnn_plugin.compiled``: build (or find in the cache) the compiled kernels now; one line of output."""

import sys

from nrnn_plugin.compiled.build import main

sys.exit(main())
