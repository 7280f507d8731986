"""Double backward through the noisy layers wherever the plain module supports it (issue: "works wherever the user's
model already works"): gradient penalties, ``autograd.grad(..., create_graph=True)``.

The fast kernels recompute through the autograd reference with the same noise when a graph is requested
(``nrnn_plugin/layers/double_backward.py``); gradgradcheck in float64 on both kernel back-ends, and
pytorch-forecasting's TemporalFusionTransformer with ``monotone_constraints`` (its loss differentiates the
prediction with ``create_graph=True`` through the LSTMs) trained with NoisyRNNCallback.
"""

from __future__ import annotations

import pytest
import torch
from nrnn_testing import compiled_backward
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.runtime import recording, replaying

DTYPE = torch.float64
MODULES = {
    "LSTM": lambda: nn.LSTM(2, 3, bidirectional=True),
    "LSTM_PROJ": lambda: nn.LSTM(2, 3, proj_size=2),
    "GRU": lambda: nn.GRU(2, 3),
    "RNN_TANH": lambda: nn.RNN(2, 3),
    "NRNN": lambda: nrnn.NRNN(2, 3, learn_dt=True),
}


@pytest.mark.parametrize("mode", list(MODULES))
def test_gradgradcheck_through_noisy_layers(mode, kernel_backend):
    torch.manual_seed(0)
    model = MODULES[mode]().to(DTYPE)
    multiplicative = 0.0 if mode == "LSTM" and kernel_backend == "python" else 0.2  # python LSTM: the fused path
    nrnn.register_noise(model, nrnn.NoiseConfig(additive=0.2, multiplicative=multiplicative, seed=0)).train()
    x = torch.randn(4, 2, 2, dtype=DTYPE, requires_grad=True)
    with recording(model) as tapes:
        out, _ = model(x)
    assert compiled_backward(out) == (kernel_backend == "compiled")

    def run(inputs: torch.Tensor) -> torch.Tensor:
        with replaying(model, tapes):
            return model(inputs)[0]

    assert torch.autograd.gradcheck(run, (x,))
    assert torch.autograd.gradgradcheck(run, (x,))


def test_a_gradient_penalty_trains_on_the_compiled_kernels():
    """The most common user case: loss + |d loss / d x|^2, backward through both."""
    torch.manual_seed(0)
    model = nrnn.register_noise(nn.GRU(3, 4), nrnn.NoiseConfig(additive=0.1, multiplicative=0.1, seed=0)).train()
    x = torch.randn(5, 2, 3, requires_grad=True)
    out, _ = model(x)
    loss = out.square().mean()
    (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
    (loss + grad_x.square().sum()).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_tft_with_monotone_constraints_trains_with_the_callback(tmp_path, kernel_backend, monkeypatch):
    pytest.importorskip("pytorch_forecasting")
    import lightning.pytorch as pl
    import numpy as np
    from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
    from pytorch_forecasting.data.examples import generate_ar_data

    from nrnn_plugin.layers import double_backward

    recomputed: list[int] = []
    original = double_backward.differentiable_grads
    monkeypatch.setattr(double_backward, "differentiable_grads", lambda *a: recomputed.append(1) or original(*a))
    from nrnn_plugin.compiled import ops

    monkeypatch.setattr(ops, "differentiable_grads", lambda *a: recomputed.append(1) or original(*a))

    data = generate_ar_data(seasonality=10.0, timesteps=30, n_series=4, seed=0)
    data["known"] = np.sin(data["time_idx"] / 3.0).astype("float32")
    dataset = TimeSeriesDataSet(
        data,
        time_idx="time_idx",
        target="value",
        group_ids=["series"],
        max_encoder_length=8,
        min_encoder_length=4,
        max_prediction_length=4,
        time_varying_unknown_reals=["value"],
        time_varying_known_reals=["known"],
    )
    loader = dataset.to_dataloader(train=True, batch_size=8, num_workers=0)
    pl.seed_everything(0, verbose=False)
    model = TemporalFusionTransformer.from_dataset(
        dataset, hidden_size=8, hidden_continuous_size=4, attention_head_size=1, monotone_constraints={"known": 1}
    )
    config = nrnn.NoiseConfig(additive=0.1, multiplicative=0.05, seed=0)  # the hand-written kernels on both back-ends
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[nrnn.NoisyRNNCallback(config)],
    )
    with torch.backends.cudnn.flags(enabled=False):  # as pytorch-forecasting's own test of this option does
        trainer.fit(model, train_dataloaders=loader)
    assert trainer.global_step == 2
    assert all(p.isfinite().all() for p in model.parameters())
    assert recomputed  # the fast kernels recomputed through the reference for the double backward
