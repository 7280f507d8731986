"""LightningCLI: Noisy RNN training switched on in the YAML config, not in code.

    .venv/bin/python examples/lightning_cli.py fit --config examples/lightning_cli.yaml
    NRNN_ENABLED=0 .venv/bin/python examples/lightning_cli.py fit --config examples/lightning_cli.yaml   # plain run
    NRNN_ADDITIVE=0.2 .venv/bin/python examples/lightning_cli.py fit --config examples/lightning_cli.yaml

The YAML declares ``nrnn_plugin.NoisyRNNCallback`` under ``trainer.callbacks`` with its ``config`` (every
``NoiseConfig`` field) and ``use_env: true``, so ``NRNN_*`` environment variables override it.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI
from lightning_sunspots import SunspotData, SunspotForecaster


def main() -> None:
    LightningCLI(SunspotForecaster, SunspotData, save_config_callback=None)


if __name__ == "__main__":
    main()
