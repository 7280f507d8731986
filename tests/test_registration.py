"""Registration at the boundary: all-or-nothing, hook results checked and attributed to the plugin that gave
them, broken plugins skipped, stable noise-stream names, and inputs where the plain module works."""

from __future__ import annotations

import textwrap
import warnings

import pytest
import torch
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin import hookimpl
from nrnn_plugin.diffusion import EulerMaruyama
from nrnn_plugin.layers import NoisyGRU, NoisyLSTM
from nrnn_plugin.plugins import PluginError, plugin_report, register, unregister
from nrnn_plugin.runtime import runtime_of

CONFIG = nrnn.NoiseConfig(additive=0.1, seed=0)


class _Registered:
    """Register ``plugin`` as ``name`` for the block (later registrations answer first)."""

    def __init__(self, plugin: object, name: str) -> None:
        self.plugin, self.name = plugin, name

    def __enter__(self) -> object:
        register(self.plugin, name=self.name)
        return self.plugin

    def __exit__(self, *exc: object) -> None:
        unregister(name=self.name)


class SlottedLSTM(NoisyLSTM):
    """A noisy class whose object layout does not fit (``__slots__``): ``__class__`` assignment fails."""

    __slots__ = ("extra",)
    nrnn_original_class = nn.LSTM


class SecondModuleBreaks:
    """Answers correctly for the first LSTM and with an unassignable class for the second."""

    def __init__(self) -> None:
        self.seen = 0

    @hookimpl
    def nrnn_noisy_class(self, module, config):
        if type(module) is not nn.LSTM:
            return None
        self.seen += 1
        return NoisyLSTM if self.seen == 1 else SlottedLSTM


def test_a_failing_swap_rolls_back_the_modules_already_switched(fresh_plugins):
    model = nn.ModuleDict({"a": nn.LSTM(2, 3), "b": nn.LSTM(2, 3)})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with _Registered(SecondModuleBreaks(), "breaks"), pytest.raises(TypeError, match="layout"):
        nrnn.register_noise(model, CONFIG)
    assert type(model["a"]) is nn.LSTM and type(model["b"]) is nn.LSTM
    assert runtime_of(model["a"]) is None and not nrnn.is_noisy(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


class WrongFamily:
    @hookimpl
    def nrnn_noisy_class(self, module, config):
        return NoisyGRU if type(module) is nn.LSTM else None


class AnswersForEverything:
    @hookimpl
    def nrnn_noisy_class(self, module, config):
        return NoisyLSTM


class WrongOriginal:
    class Noisy(nn.LSTM):
        nrnn_original_class = nn.GRU

        @classmethod
        def nrnn_validate(cls, module, config):
            pass

    @hookimpl
    def nrnn_noisy_class(self, module, config):
        return self.Noisy if type(module) is nn.LSTM else None


class NoContract:
    class Noisy(nn.LSTM):
        pass

    @hookimpl
    def nrnn_noisy_class(self, module, config):
        return self.Noisy if type(module) is nn.LSTM else None


class Raises:
    @hookimpl
    def nrnn_noisy_class(self, module, config):
        raise RuntimeError("adapter bug")


@pytest.mark.parametrize(
    "plugin, model, message",
    [
        (WrongFamily(), nn.LSTM(2, 3), r"plugin 'bad' answered nrnn_noisy_class .*NoisyGRU, which is not a subclass"),
        (AnswersForEverything(), nn.Sequential(nn.Linear(2, 2)), r"plugin 'bad' .*<root> .*not a subclass"),
        (WrongOriginal(), nn.LSTM(2, 3), r"plugin 'bad' .*nrnn_original_class is torch.nn.modules.rnn.GRU"),
        (NoContract(), nn.LSTM(2, 3), r"plugin 'bad' .*lacks nrnn_original_class or nrnn_validate"),
        (Raises(), nn.LSTM(2, 3), r"plugin 'bad' raised RuntimeError in hook nrnn_noisy_class: adapter bug"),
    ],
    ids=["wrong-family", "answers-for-everything", "wrong-original", "no-contract", "raises"],
)
def test_a_wrong_hook_answer_is_an_error_naming_the_plugin_and_changes_nothing(fresh_plugins, plugin, model, message):
    with _Registered(plugin, "bad"), pytest.raises(PluginError, match=message):
        nrnn.register_noise(model, CONFIG)
    assert not nrnn.is_noisy(model) and all(type(m).__module__.startswith("torch") for m in model.modules())


class JunkDiffusion:
    @hookimpl
    def nrnn_diffusion(self, config):
        return "euler"


class BrokenDiffusion:
    class Scheme(EulerMaruyama):
        def coefficients(self, draws, hidden_size):
            raise IndexError("bad slicing")

    @hookimpl
    def nrnn_diffusion(self, config):
        return self.Scheme(config)


class WrongShapeSampler:
    @hookimpl
    def nrnn_sampler(self, name, module, config):
        return lambda source, shape, device, dtype: torch.zeros(3, device=device, dtype=dtype)


def test_diffusion_results_are_checked_at_registration(fresh_plugins):
    with (
        _Registered(JunkDiffusion(), "junk"),
        pytest.raises(PluginError, match=r"plugin 'junk' answered nrnn_diffusion .*str"),
    ):
        nrnn.register_noise(nn.GRU(2, 3), CONFIG)
    with (
        _Registered(BrokenDiffusion(), "broken"),
        pytest.raises(PluginError, match=r"plugin 'broken'.*unusable: bad slicing"),
    ):
        nrnn.register_noise(nn.GRU(2, 3), CONFIG)


def test_a_sampler_that_returns_a_wrong_draw_is_named_at_the_draw(fresh_plugins):
    with _Registered(WrongShapeSampler(), "sampler"):
        model = nrnn.register_noise(nn.GRU(2, 3), CONFIG).train()
    with pytest.raises(RuntimeError, match=r"the sampler of plugin 'sampler' returned .*shape \(3,\), expected"):
        model(torch.randn(4, 2, 2))


class BadTerm:
    @hookimpl
    def nrnn_regularizer_terms(self, model, config, closure):
        return torch.ones(3)


def test_regularizer_terms_must_be_scalars(fresh_plugins):
    model = nrnn.register_noise(nn.GRU(2, 3), CONFIG)
    x = torch.randn(4, 2, 2)
    with _Registered(BadTerm(), "term"), pytest.raises(PluginError, match=r"plugin 'term' .*shape \(3,\)"):
        nrnn.explicit_regularizer(model, lambda: model(x)[0].pow(2).mean())


def _fake_distribution(root, module: str, source: str) -> None:
    (root / f"{module}.py").write_text(source)
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[nrnn_plugin]\n{module} = {module}\n")


def test_a_plugin_calling_sys_exit_at_import_is_skipped_and_reported(tmp_path, monkeypatch, fresh_plugins):
    _fake_distribution(tmp_path, "exits_plugin", "import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = nrnn.register_noise(nn.LSTM(2, 3), CONFIG)
    assert type(model) is NoisyLSTM
    report = {entry["name"]: entry for entry in plugin_report()}
    assert not report["exits_plugin"]["loaded"] and report["exits_plugin"]["reason"] == "SystemExit: 3"
    assert any("'exits_plugin'" in str(w.message) and "skipped" in str(w.message) for w in caught)


def test_keyboard_interrupt_in_a_plugin_is_never_swallowed(tmp_path, monkeypatch, fresh_plugins):
    _fake_distribution(tmp_path, "interrupts_plugin", "raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        nrnn.register_noise(nn.LSTM(2, 3), CONFIG)


def test_a_sys_exit_plugin_does_not_kill_the_command_line(tmp_path):
    import os
    import subprocess
    import sys

    _fake_distribution(tmp_path, "exits_plugin", "import sys\nsys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    code = textwrap.dedent(
        """
        import sys
        from nrnn_plugin.app.cli import main
        sys.exit(main(["plugins"]))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "exits_plugin" in result.stdout and "SystemExit: 3" in result.stdout


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def test_data_parallel_wrapping_keeps_the_noise_stream_names():
    plain = nrnn.register_noise(Tagger(), CONFIG)
    wrapped = nrnn.register_noise(nn.DataParallel(Tagger()), CONFIG)
    assert runtime_of(plain.rnn).source.name == runtime_of(wrapped.module.rnn).source.name == "rnn"
    x = torch.randn(4, 2, 2)
    wrapped.module.load_state_dict(plain.state_dict())
    assert torch.equal(plain.train()(x), wrapped.train()(x))  # same seed, same name: the same noise


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_an_empty_batch_in_training_behaves_like_the_plain_module(cls):
    plain = cls(3, 4)
    noisy = nrnn.register_noise(cls(3, 4), CONFIG.replace(multiplicative=0.1)).train()
    noisy.load_state_dict(plain.state_dict())
    out, _ = noisy(torch.randn(5, 0, 3))
    expected, _ = plain.train()(torch.randn(5, 0, 3))
    assert out.shape == expected.shape == (5, 0, 4)


@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.GRUCell])
def test_an_empty_batch_through_a_noisy_cell(cls):
    cell = nrnn.register_noise(cls(3, 4), CONFIG).train()
    out = cell(torch.randn(0, 3))
    assert (out[0] if isinstance(out, tuple) else out).shape == (0, 4)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_the_meta_device_runs_the_noisy_training_forward(cls):
    """Shape inference on ``meta`` (e.g. for memory planning) goes through the noisy path without autocast."""
    module = nrnn.register_noise(cls(3, 4, device="meta"), CONFIG.replace(multiplicative=0.1)).train()
    out, _ = module(torch.randn(5, 2, 3, device="meta"))
    assert out.shape == (5, 2, 4) and out.device.type == "meta"


def test_a_compiled_wrapper_keeps_the_noise_stream_names():
    compiled = torch.compile(Tagger())
    nrnn.register_noise(compiled, CONFIG)
    assert runtime_of(compiled._orig_mod.rnn).source.name == "rnn"
