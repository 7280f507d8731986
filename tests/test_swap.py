"""register_noise / remove_noise: identity of parameters and state, reversibility, selection, errors."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.layers import NoisyGRU, NoisyGRUCell, NoisyLSTM, NoisyLSTMCell, NoisyRNN, NoisyRNNCell
from nrnn_plugin.runtime import runtime_of

NOISE = nrnn.NoiseConfig(additive=0.1, multiplicative=0.05, seed=0)


class Forecaster(nn.Module):
    """A small model with several recurrent modules and a non-recurrent head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(3, 8, num_layers=2, batch_first=True)
        self.decoder = nn.GRU(3, 8, batch_first=True)
        self.cell = nn.RNNCell(8, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc, (h, _) = self.encoder(x)
        dec, _ = self.decoder(x, h[-1:].contiguous())
        state = self.cell(dec[:, -1], enc[:, -1])
        return self.head(state)


@pytest.mark.parametrize(
    "module, noisy_class",
    [
        (nn.RNN(3, 4), NoisyRNN),
        (nn.RNN(3, 4, nonlinearity="relu"), NoisyRNN),
        (nn.LSTM(3, 4), NoisyLSTM),
        (nn.GRU(3, 4), NoisyGRU),
        (nn.RNNCell(3, 4), NoisyRNNCell),
        (nn.LSTMCell(3, 4), NoisyLSTMCell),
        (nn.GRUCell(3, 4), NoisyGRUCell),
    ],
)
def test_each_torch_module_swaps_and_restores(module, noisy_class):
    original = type(module)
    state = copy.deepcopy(module.state_dict())
    params = list(module.parameters())
    assert nrnn.register_noise(module, NOISE) is module
    assert type(module) is noisy_class and isinstance(module, original)
    assert nrnn.is_noisy(module) and [n for n, _ in nrnn.noisy_modules(module)] == [""]
    assert list(module.parameters()) == params  # same Parameter objects: optimizers stay valid
    assert nrnn.remove_noise(module) is module
    assert type(module) is original and not nrnn.is_noisy(module)
    assert not hasattr(module, "_nrnn_runtime")
    for key, value in module.state_dict().items():
        assert torch.equal(value, state[key])


def test_state_dict_keys_values_and_strict_loading_both_ways():
    torch.manual_seed(0)
    plain = Forecaster()
    noisy = nrnn.register_noise(copy.deepcopy(plain), NOISE)
    assert list(noisy.state_dict()) == list(plain.state_dict())
    for key, value in noisy.state_dict().items():
        assert torch.equal(value, plain.state_dict()[key])
    # train the noisy model a little, then load its weights into a fresh plain model and back
    optimizer = torch.optim.SGD(noisy.parameters(), lr=0.1)
    x = torch.randn(4, 5, 3)
    noisy.train()
    for _ in range(2):
        optimizer.zero_grad()
        noisy(x).pow(2).mean().backward()
        optimizer.step()
    fresh = Forecaster()
    fresh.load_state_dict(noisy.state_dict(), strict=True)
    noisy2 = nrnn.register_noise(Forecaster(), NOISE)
    noisy2.load_state_dict(fresh.state_dict(), strict=True)
    noisy.eval(), fresh.eval(), noisy2.eval()
    assert torch.equal(fresh(x), noisy(x)) and torch.equal(noisy2(x), noisy(x))


def test_all_recurrent_modules_of_a_model_are_selected_and_patterns_narrow_it():
    model = nrnn.register_noise(Forecaster(), NOISE)
    assert [n for n, _ in nrnn.noisy_modules(model)] == ["encoder", "decoder", "cell"]
    model = nrnn.register_noise(Forecaster(), NOISE.replace(include=("enc*", "cell")))
    assert [n for n, _ in nrnn.noisy_modules(model)] == ["encoder", "cell"]
    model = nrnn.register_noise(Forecaster(), NOISE.replace(exclude=("decoder",)))
    assert [n for n, _ in nrnn.noisy_modules(model)] == ["encoder", "cell"]


def test_overrides_and_disabled_config():
    model = nrnn.register_noise(nn.GRU(2, 3), additive=0.2)
    assert runtime_of(model).config.additive == 0.2
    untouched = nrnn.register_noise(nn.GRU(2, 3), NOISE.replace(enabled=False))
    assert type(untouched) is nn.GRU and not nrnn.is_noisy(untouched)


def test_registering_twice_is_an_error_that_keeps_the_stream():
    """A second registration would silently restart the noise stream (the first draws would repeat): refused."""
    model = nrnn.register_noise(nn.LSTM(2, 3), NOISE)
    runtime = runtime_of(model)
    model.train()
    model(torch.randn(4, 1, 2))  # advance the stream
    state = runtime.source.state_dict()
    with pytest.raises(ValueError, match=r"already noisy.*remove_noise"):
        nrnn.register_noise(model, NOISE.replace(additive=0.3))
    assert runtime_of(model) is runtime and runtime.config.additive == NOISE.additive
    assert state["offset"] == 1 and runtime.source.state_dict() == state
    nrnn.remove_noise(model)
    assert type(nrnn.register_noise(model, NOISE.replace(additive=0.3))) is NoisyLSTM  # explicit restart


def test_hooks_device_and_dtype_are_kept():
    module = nn.GRU(2, 3).double()
    calls = []
    handle = module.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    nrnn.register_noise(module, NOISE)
    module(torch.randn(4, 1, 2, dtype=torch.float64))
    assert calls == ["NoisyGRU"] and module.weight_hh_l0.dtype == torch.float64
    handle.remove()


def test_deepcopy_pickle_and_torch_save_keep_noise_and_stream():
    model = nrnn.register_noise(Forecaster(), NOISE)
    x = torch.randn(2, 6, 3)
    model.train()
    model(x)  # create the generators, advance the streams
    buffer = io.BytesIO()
    torch.save(model, buffer)
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    buffer.seek(0)
    copies.append(torch.load(buffer, weights_only=False))
    expected = model(x)
    for other in copies:
        assert [n for n, _ in nrnn.noisy_modules(other)] == ["encoder", "decoder", "cell"]
        assert torch.equal(other(x), expected)  # the noise streams continue identically
        nrnn.remove_noise(other)
        assert type(other.encoder) is nn.LSTM


def test_eval_forward_is_the_original_forward_bit_for_bit():
    torch.manual_seed(1)
    plain = Forecaster().eval()
    noisy = nrnn.register_noise(copy.deepcopy(plain), NOISE).eval()
    x = torch.randn(3, 7, 3)
    assert torch.equal(plain(x), noisy(x))
    noisy.train()
    assert not torch.equal(plain(x), noisy(x))


def test_unsupported_recurrent_subclass_is_an_error_naming_class_and_hook():
    class MyLSTM(nn.LSTM):
        pass

    model = nn.Sequential(nn.Linear(2, 2))
    model.add_module("rnn", MyLSTM(2, 3))
    with pytest.raises(TypeError) as info:
        nrnn.register_noise(model, NOISE)
    message = str(info.value)
    assert "'rnn'" in message and "MyLSTM" in message and "nrnn_noisy_class" in message
    assert not nrnn.is_noisy(model)


def test_validation_happens_before_any_swap():
    model = nn.ModuleDict({"ok": nn.LSTM(2, 3), "gru": nn.GRU(2, 4)})
    with pytest.raises(ValueError, match="expected 'h' or 'both' for GRU"):
        nrnn.register_noise(model, NOISE.replace(target="c"))
    assert type(model["ok"]) is nn.LSTM  # the LSTM (first in order) was not swapped either


def test_lstm_with_projection_is_registered_and_removed():
    """proj_size > 0: noise on the projected h; parameters and state_dict keys untouched; removal restores."""
    torch.manual_seed(0)
    plain = nn.LSTM(2, 4, proj_size=2)
    keys = list(plain.state_dict())
    noisy = nrnn.register_noise(copy.deepcopy(plain), NOISE.replace(target="both"))
    assert type(noisy).__name__ == "NoisyLSTM" and list(noisy.state_dict()) == keys
    x = torch.randn(5, 3, 2)
    out, (h_n, c_n) = noisy.train()(x)
    assert out.shape == (5, 3, 2) and h_n.shape == (1, 3, 2) and c_n.shape == (1, 3, 4)
    assert not torch.allclose(out, plain(x)[0])
    assert torch.equal(noisy.eval()(x)[0], plain(x)[0])
    assert type(nrnn.remove_noise(noisy)) is nn.LSTM


def test_cell_state_target_on_a_gru_is_rejected():
    with pytest.raises(ValueError, match="NoiseConfig.target: expected 'h' or 'both' for GRU"):
        nrnn.register_noise(nn.GRU(2, 3), NOISE.replace(target="c"))
    with pytest.raises(ValueError, match="GRUCell"):
        nrnn.register_noise(nn.GRUCell(2, 3), NOISE.replace(target="c"))
    both = nrnn.register_noise(nn.GRU(2, 3), NOISE.replace(target="both"))
    assert runtime_of(both).targets(has_cell_state=False) == ("h",)


def test_a_model_without_recurrent_layers_is_an_error():
    with pytest.raises(ValueError, match="no supported recurrent module found in Sequential"):
        nrnn.register_noise(nn.Sequential(nn.Linear(2, 2)), NOISE)
    with pytest.raises(ValueError, match=r"include=\['nothing'\]"):
        nrnn.register_noise(Forecaster(), NOISE.replace(include=("nothing",)))


def test_config_type_is_checked():
    with pytest.raises(TypeError, match="config must be a NoiseConfig, got dict"):
        nrnn.register_noise(nn.GRU(2, 3), {"additive": 0.1})  # type: ignore[arg-type]
