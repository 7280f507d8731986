"""The plugin system: entry-point loading, disabling, allow-lists, broken plugins, third-party adapters, hooks."""

from __future__ import annotations

import textwrap
import warnings

import pytest
import torch
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin import hookimpl
from nrnn_plugin.plugins import hook, plugin_report, register, unregister
from nrnn_plugin.runtime import runtime_of

# A third-party package, outside nrnn_plugin: a tiny custom recurrent module and an adapter that makes it
# noisy through the hooks. Its noisy class uses the public runtime API (one draw per sequence).
THIRD_PARTY_MODULE = '''
import torch
from torch import nn

from nrnn_plugin import hookimpl
from nrnn_plugin.runtime import runtime_of


class TinyRNN(nn.Module):
    """h_{t+1} = tanh(W h_t + U x_t); input [T, B, I] -> states [T, B, H]."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.U = nn.Linear(input_size, hidden_size)
        self.W = nn.Linear(hidden_size, hidden_size, bias=False)

    def step(self, x, h):
        return torch.tanh(self.W(h) + self.U(x))

    def forward(self, x):
        h = x.new_zeros(x.shape[1], self.hidden_size)
        out = []
        for x_t in x.unbind(0):
            h = self.step(x_t, h)
            out.append(h)
        return torch.stack(out)


class NoisyTinyRNN(TinyRNN):
    nrnn_original_class = TinyRNN

    @classmethod
    def nrnn_validate(cls, module, config):
        if config.target == "c":
            raise ValueError("NoiseConfig.target: expected 'h' or 'both' for TinyRNN, got 'c'")

    def forward(self, x):
        runtime = runtime_of(self)
        if not runtime.injecting(self.training):
            return super().forward(x)
        steps, batch = x.shape[:2]
        noise = runtime.draw(steps * batch, self.hidden_size, ("h",), device=x.device, dtype=x.dtype)[0]["h"]
        per_step = noise.split([batch] * steps)
        h = x.new_zeros(batch, self.hidden_size)
        out = []
        for x_t, n_t in zip(x.unbind(0), per_step):
            h = n_t.apply(self.step(x_t, h), h)
            out.append(h)
        return torch.stack(out)


@hookimpl
def nrnn_noisy_class(module, config):
    if type(module) in (TinyRNN, NoisyTinyRNN):
        return NoisyTinyRNN
    return None


@hookimpl
def nrnn_adapter_info():
    return {"name": "tiny", "available": True, "reason": "", "handles": ["TinyRNN"]}
'''


def _install_fake_distribution(root, dist: str, module: str, entry_name: str, source: str) -> None:
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[nrnn_plugin]\n{entry_name} = {module}\n")


@pytest.fixture
def third_party(tmp_path, monkeypatch, fresh_plugins):
    _install_fake_distribution(tmp_path, "tiny_adapter", "tiny_adapter_mod", "tiny", THIRD_PARTY_MODULE)
    _install_fake_distribution(
        tmp_path, "broken_plugin", "broken_plugin_mod", "broken", "raise ImportError('needs libfoo >= 2')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.invalidate_caches()
    return tmp_path


def _load_all():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = {entry["name"]: entry for entry in plugin_report()}
    return report, [str(w.message) for w in caught]


def test_shipped_adapters_are_default_plugins_registered_by_module_path(fresh_plugins):
    report, _ = _load_all()
    for name in ("torch", "nrnn", "forecasting"):
        assert report[name]["loaded"] and report[name]["source"] == "shipped"
    assert "torch.nn.LSTM" in report["torch"]["adapter"]["handles"]
    assert report["builtin"]["loaded"]


def test_register_noise_works_without_installed_metadata(fresh_plugins, monkeypatch):
    """A source tree on PYTHONPATH, a zipapp or a vendored copy has no entry points: the adapters still load."""
    from importlib import metadata

    from nrnn_plugin.plugins import manager

    calls = []

    def no_entry_points(**kwargs):
        calls.append(kwargs)
        return []

    monkeypatch.setattr(metadata, "entry_points", no_entry_points)
    model = nrnn.register_noise(nn.LSTM(2, 3), additive=0.1)
    assert type(model).__name__ == "NoisyLSTM" and calls == [{"group": manager.ENTRY_POINT_GROUP}]
    assert type(nrnn.register_noise(nrnn.NRNN(2, 3), additive=0.1)).__name__ == "NoisyNRNN"


def test_third_party_adapter_makes_its_custom_module_noisy(third_party):
    import tiny_adapter_mod

    report, messages = _load_all()
    assert report["tiny"]["loaded"] and report["tiny"]["adapter"]["handles"] == ["TinyRNN"]
    model = nn.Sequential(tiny_adapter_mod.TinyRNN(2, 4), nn.Linear(4, 1))
    plain_state = {k: v.clone() for k, v in model.state_dict().items()}
    nrnn.register_noise(model, nrnn.NoiseConfig(additive=0.3, seed=0))
    assert type(model[0]) is tiny_adapter_mod.NoisyTinyRNN and nrnn.is_noisy(model)
    x = torch.randn(5, 3, 2)
    train_a, train_b = model(x), model(x)
    assert not torch.allclose(train_a, train_b)  # noise reaches the custom recurrence
    model.eval()
    eval_out = model(x)
    nrnn.remove_noise(model)
    assert type(model[0]) is tiny_adapter_mod.TinyRNN
    assert torch.equal(model(x), eval_out)
    assert all(torch.equal(v, plain_state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="TinyRNN"):
        nrnn.register_noise(model, nrnn.NoiseConfig(additive=0.1, target="c"))


def test_a_broken_plugin_is_reported_by_name_and_skipped(third_party):
    report, messages = _load_all()
    assert not report["broken"]["loaded"]
    assert report["broken"]["reason"] == "ImportError: needs libfoo >= 2"
    assert any("plugin 'broken'" in m and "broken_plugin" in m and "skipped" in m for m in messages)
    assert report["tiny"]["loaded"] and report["torch"]["loaded"]  # the others still work
    assert type(nrnn.register_noise(nn.GRU(2, 3), additive=0.1)).__name__ == "NoisyGRU"


def test_disable_autoload_skips_third_party_but_keeps_the_shipped_adapters(third_party, monkeypatch):
    monkeypatch.setenv("NRNN_PLUGIN_DISABLE_AUTOLOAD", "1")
    report, messages = _load_all()
    assert not report["tiny"]["loaded"] and "NRNN_PLUGIN_DISABLE_AUTOLOAD" in report["tiny"]["reason"]
    assert not report["broken"]["loaded"] and not messages  # never imported, so no warning
    assert report["torch"]["loaded"]
    import tiny_adapter_mod

    with pytest.raises(ValueError, match="no supported recurrent module"):
        nrnn.register_noise(tiny_adapter_mod.TinyRNN(2, 3), additive=0.1)
    # explicit registration still works
    register(tiny_adapter_mod, name="tiny-explicit")
    try:
        assert nrnn.is_noisy(nrnn.register_noise(tiny_adapter_mod.TinyRNN(2, 3), additive=0.1))
    finally:
        unregister(name="tiny-explicit")


def test_allowlist_narrows_autoload(third_party, monkeypatch):
    monkeypatch.setenv("NRNN_PLUGIN_ALLOWLIST", "tiny")
    report, messages = _load_all()
    assert report["tiny"]["loaded"]
    assert not report["broken"]["loaded"] and report["broken"]["reason"] == "not in NRNN_PLUGIN_ALLOWLIST"
    assert not messages


def _ones(source, shape, device, dtype):
    return torch.ones(shape, device=device, dtype=dtype)


class OnesSampler:
    """A plugin replacing the Gaussian sampler (must use the source's generator in real use)."""

    @hookimpl
    def nrnn_sampler(self, name, module, config):
        return _ones


class DecoderOnlyNoise:
    """A plugin resolving per-module configs: noise on the decoder only, doubled."""

    @hookimpl
    def nrnn_resolve_config(self, name, module, config):
        if name == "decoder":
            return config.replace(additive=2 * config.additive)
        return config.replace(additive=0.0)


class HalfStepScheme:
    """A plugin overriding the diffusion form for every config."""

    @hookimpl
    def nrnn_diffusion(self, config):
        from nrnn_plugin.diffusion import EulerMaruyama

        return EulerMaruyama(config.replace(dt=config.dt / 4))


def test_sampling_hook_replaces_the_sampler(fresh_plugins):
    plugin = OnesSampler()
    register(plugin)
    try:
        module = nrnn.register_noise(nn.GRU(2, 3).double(), nrnn.NoiseConfig(additive=0.5))
        x = torch.randn(4, 2, 2, dtype=torch.float64)
        noisy = module(x)[0]
        module.eval()
        # one step only: the first output is the clean step plus sqrt(dt) * 0.5 * 1
        torch.testing.assert_close(noisy[0], module(x)[0][0] + 0.5)
    finally:
        unregister(plugin)
    assert all(impl.plugin is not plugin for impl in hook().nrnn_sampler.get_hookimpls())


def test_config_resolution_and_diffusion_hooks(fresh_plugins):
    register(DecoderOnlyNoise())
    register(HalfStepScheme())
    model = nn.ModuleDict({"encoder": nn.GRU(2, 3), "decoder": nn.GRU(2, 3)})
    nrnn.register_noise(model, nrnn.NoiseConfig(additive=0.1))
    assert runtime_of(model["decoder"]).config.additive == pytest.approx(0.2)
    assert not runtime_of(model["encoder"]).injecting(True)
    assert runtime_of(model["decoder"]).diffusion().dt == pytest.approx(0.25)


def test_explicit_registration_twice_is_an_error(fresh_plugins):
    plugin = OnesSampler()
    register(plugin, name="ones")
    try:
        with pytest.raises(ValueError, match="already registered"):
            register(plugin, name="ones")
    finally:
        unregister(name="ones")


def test_importing_nrnn_plugin_does_not_import_optional_frameworks():
    import subprocess
    import sys

    code = textwrap.dedent(
        """
        import sys, torch, nrnn_plugin as nrnn
        nrnn.register_noise(torch.nn.LSTM(2, 3), additive=0.1)
        optional = ("lightning", "pytorch_lightning", "pytorch_forecasting", "darts", "neuralforecast", "gluonts")
        heavy = [m for m in optional if m in sys.modules]
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
