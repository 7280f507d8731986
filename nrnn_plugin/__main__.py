"""``python -m nrnn_plugin``: the ``nrnn`` command line (see :mod:`nrnn_plugin.app.cli`)."""

import sys

from nrnn_plugin.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
