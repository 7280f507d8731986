"""The opt-in divergence watch: one warning, with the noise levels, when a noisy forward turns non-finite."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.divergence import FiniteWatch

STRONG = nrnn.NoiseConfig(multiplicative=5.0, seed=0)  # compounds over the steps: inf/nan within a few hundred


def _diverging_lstm() -> nn.LSTM:
    return nrnn.register_noise(nn.LSTM(2, 8), STRONG.replace(target="c")).train()


def test_warns_once_with_the_levels_and_the_sequence_length():
    model = _diverging_lstm()
    watch = FiniteWatch(model, lambda: "step 3")
    x = torch.randn(2000, 4, 2)
    with pytest.warns(
        RuntimeWarning,
        match=r"<root> \(NoisyLSTM\) returned non-finite values at step 3: "
        r"additive=0, multiplicative=5 \(schedule level 1\), dt=1, 2000 time steps",
    ) as caught:
        model(x)
        model(x)
    assert len([w for w in caught if "non-finite" in str(w.message)]) == 1 and watch.fired
    assert not model._forward_hooks  # the watch removed its hook


def test_silent_when_finite_in_eval_and_after_close():
    model = nrnn.register_noise(nn.GRU(2, 3), nrnn.NoiseConfig(additive=0.1, seed=0)).train()
    watch = FiniteWatch(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(5, 2, 2))  # finite
        strong = _diverging_lstm()
        eval_watch = FiniteWatch(strong)
        strong.eval()(torch.randn(2000, 4, 2))  # eval: the fused noise-free forward, not watched
    assert not watch.fired and not eval_watch.fired
    watch.close()
    assert not model._forward_hooks


def test_callback_check_finite_is_opt_in_and_pickles():
    callback = nrnn.NoisyRNNCallback(STRONG, check_finite=True)
    clone = pickle.loads(pickle.dumps(callback))
    assert clone.check_finite and clone.config == callback.config
    assert not pickle.loads(pickle.dumps(nrnn.NoisyRNNCallback(STRONG))).check_finite
    with pytest.raises(TypeError, match=r"check_finite: expected True or False, got 'yes'"):
        nrnn.NoisyRNNCallback(STRONG, check_finite="yes")


def test_callback_warns_during_fit():
    pl = pytest.importorskip("lightning.pytorch")
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(2, 8)
            self.head = nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            out, _ = self.lstm(x.transpose(0, 1))
            return nn.functional.mse_loss(self.head(out[-1]).squeeze(-1), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = DataLoader(TensorDataset(torch.randn(8, 1500, 2), torch.randn(8)), batch_size=4)
    trainer = pl.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[nrnn.NoisyRNNCallback(STRONG.replace(target="c"), check_finite=True)],
    )
    with pytest.warns(RuntimeWarning, match=r"lstm \(NoisyLSTM\) returned non-finite values at global step 0"):
        trainer.fit(Module(), data)
