"""NoisyRNNCallback on either Lightning distribution, its pickled and copied forms, and the regularizer's RNG.

* The callback is a real ``Callback`` of every installed distribution (``lightning.pytorch`` and
  ``pytorch_lightning``): both Trainers take it, even as a single callback outside a list.
* Environments with one distribution (what a Darts-only or NeuralForecast-only install has: no ``lightning``)
  or none are simulated in a subprocess by blocking the other package's import (``sys.modules[name] = None``).
* Pickles hold the class and the plain-data config only (one global to allow-list); deep copies keep the noise
  streams and never the module of a running fit.
* Regularizer passes replay the global RNG of the step: a ``training_step`` that samples random windows (as
  NeuralForecast's does) gets the same windows in the probes, and the run's random stream is not shifted.
"""

from __future__ import annotations

import copy
import io
import pickle
import pickletools
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning.pytorch")
pytest.importorskip("pytorch_lightning")
import lightning.pytorch as L  # noqa: E402
import pytorch_lightning as PL  # noqa: E402

import nrnn_plugin as nrnn  # noqa: E402
from nrnn_plugin.integrations.lightning import REG_METRIC, NoisyRNNCallback  # noqa: E402

CONFIG = nrnn.NoiseConfig(additive=0.1, seed=0)
TRAINER = dict(
    max_epochs=1,
    accelerator="cpu",
    logger=False,
    enable_progress_bar=False,
    enable_checkpointing=False,
    enable_model_summary=False,
)


def _module_class(base):
    class Windows(base):
        """A GRU whose training_step draws a random subset of the batch (like NeuralForecast's windows)."""

        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(2, 4, batch_first=True)
            self.head = nn.Linear(4, 1)
            self.seen: list[str] = []
            self.subsets: list[list[int]] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.seen.append(type(self.rnn).__name__)
            pick = torch.randint(0, x.shape[0], (3,))
            self.subsets.append(pick.tolist())
            loss = nn.functional.mse_loss(self.head(self.rnn(x[pick])[0][:, -1]), y[pick])
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Windows


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(16, 6, 2, generator=g), torch.randn(16, 1, generator=g)), batch_size=8)


@pytest.mark.parametrize("dist", [L, PL], ids=["lightning.pytorch", "pytorch_lightning"])
def test_a_real_callback_of_both_distributions(dist, tmp_path):
    callback = NoisyRNNCallback(CONFIG)
    assert isinstance(callback, L.Callback) and isinstance(callback, PL.Callback)
    module = _module_class(dist.LightningModule)()
    dist.Trainer(callbacks=callback, default_root_dir=tmp_path, **TRAINER).fit(module, _loader())  # not in a list
    assert module.seen == ["NoisyGRU", "NoisyGRU"] and type(module.rnn) is nn.GRU


SIMULATED = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # what an environment without that distribution gives: ImportError on import
import torch
import nrnn_plugin as nrnn
model = nrnn.register_noise(torch.nn.GRU(2, 3), nrnn.NoiseConfig(additive=0.1))
assert nrnn.is_noisy(model)
try:
    Callback = nrnn.NoisyRNNCallback
except ImportError as error:
    print("IMPORT-ERROR", error)
    raise SystemExit(0)
import importlib
print("BASES", sorted(c.__module__.rsplit(".callbacks", 1)[0] for c in Callback.__mro__ if c.__name__ == "Callback"))
dist = importlib.import_module({dist!r})
class Module(dist.LightningModule):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(2, 3, batch_first=True)
        self.seen = []
    def training_step(self, batch, batch_idx):
        self.seen.append(type(self.rnn).__name__)
        return self.rnn(batch[0])[0].pow(2).mean()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 5, 2)), batch_size=2)
module = Module()
dist.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
             enable_model_summary=False, default_root_dir={root!r},
             callbacks=[Callback(nrnn.NoiseConfig(additive=0.1, seed=0))]).fit(module, data)
print("SEEN", module.seen, type(module.rnn).__name__)
print("LOADED", sorted(name for name in ("lightning", "pytorch_lightning") if sys.modules.get(name) is not None))
"""


def _simulate(tmp_path, blocked: tuple[str, ...], dist: str = "") -> str:
    code = SIMULATED.format(blocked=blocked, dist=dist, root=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_only_pytorch_lightning_installed(tmp_path):
    """Darts-only / NeuralForecast-only environments: no ``lightning`` package at all."""
    out = _simulate(tmp_path, ("lightning",), "pytorch_lightning")
    assert "BASES ['pytorch_lightning']" in out
    assert "SEEN ['NoisyLSTM', 'NoisyLSTM'] LSTM" in out
    assert "LOADED ['pytorch_lightning']" in out


def test_only_lightning_installed(tmp_path):
    out = _simulate(tmp_path, ("pytorch_lightning",), "lightning.pytorch")
    assert "BASES ['lightning.pytorch']" in out
    assert "SEEN ['NoisyLSTM', 'NoisyLSTM'] LSTM" in out
    assert "LOADED ['lightning']" in out


def test_no_lightning_installed(tmp_path):
    """``import nrnn_plugin`` and ``register_noise`` need no Lightning; the callback says what to install."""
    out = _simulate(tmp_path, ("lightning", "pytorch_lightning"))
    assert "IMPORT-ERROR NoisyRNNCallback needs Lightning" in out and "pip install lightning" in out


# ---------------------------------------------------------------------------------------------- pickles, copies


def _globals(data: bytes) -> list[str]:
    """Every global a pickle refers to (``module.qualname``)."""
    found, strings = [], []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            found.append(".".join(strings[-2:]))
        elif opcode.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
    return found


class OnlyTheCallback(pickle.Unpickler):
    """A restricted unpickler (as Darts' is) that allows exactly one global: the callback class."""

    def find_class(self, module, name):
        if (module, name) == ("nrnn_plugin.integrations.lightning", "NoisyRNNCallback"):
            return NoisyRNNCallback
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def test_pickle_is_the_class_and_the_config_as_plain_data():
    config = nrnn.NoiseConfig(additive=0.1, multiplicative=0.05, seed=3, schedule={"kind": "linear", "warmup": 4})
    data = pickle.dumps(NoisyRNNCallback(config))
    assert _globals(data) == ["nrnn_plugin.integrations.lightning.NoisyRNNCallback"]
    restored = OnlyTheCallback(io.BytesIO(data)).load()
    assert isinstance(restored, NoisyRNNCallback) and restored.config == config and restored.loss_closure is None


def test_pickled_state_accepts_only_a_loss_closure():
    callback = NoisyRNNCallback(CONFIG)
    with pytest.raises(ValueError, match=r"unexpected pickled state \['_module'\]"):
        callback.__setstate__({"_module": "anything"})
    with_closure = pickle.loads(pickle.dumps(NoisyRNNCallback(CONFIG, loss_closure=_closure)))
    assert with_closure.loss_closure is _closure


def _closure(module, batch, batch_idx):
    return module.training_step(batch, batch_idx)


def test_copies_keep_the_noise_streams_and_drop_a_running_fit(tmp_path):
    callback = NoisyRNNCallback(CONFIG)
    module = _module_class(L.LightningModule)()
    copies = {}

    class CopyDuringFit(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            copies[batch_idx] = copy.deepcopy(callback)

    L.Trainer(callbacks=[callback, CopyDuringFit()], default_root_dir=tmp_path, **TRAINER).fit(module, _loader())
    during = copies[1]
    assert during._module is None and not during._wrapped_step  # not attached to the fit it was copied from
    assert _same(during.state_dict(), callback.state_dict())  # the streams as they were after the last batch
    assert not _same(copies[0].state_dict(), callback.state_dict())  # (the streams did advance in between)
    after = copy.deepcopy(callback)
    assert _same(after.state_dict(), callback.state_dict()) and after.config == callback.config
    assert _same(copy.copy(callback).state_dict(), callback.state_dict())


def _same(a, b) -> bool:
    """Equality of nested dicts / lists of tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------------------------------------- regularizer RNG


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.reg: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.reg.append(float(trainer.callback_metrics[REG_METRIC + "_step"]))


def test_regularizer_passes_see_the_steps_random_windows(tmp_path):
    """With a negligible noise level the regularizer ``(L(+1) + L(-1)) / 2 - L(0)`` is ~0 only if its passes
    use the windows the step's own (reused, clean) loss used; and the subsets drawn over the run are those of a
    run without the callback (the regularizer does not shift the training's random stream)."""
    config = nrnn.NoiseConfig(additive=1e-6, mode="regularizer", seed=0)
    torch.manual_seed(7)
    plain = _module_class(L.LightningModule)()
    L.Trainer(default_root_dir=tmp_path, **TRAINER).fit(plain, _loader())
    torch.manual_seed(7)
    regularized = _module_class(L.LightningModule)()
    recorder = Recorder()
    L.Trainer(callbacks=[NoisyRNNCallback(config), recorder], default_root_dir=tmp_path, **TRAINER).fit(
        regularized, _loader()
    )
    assert regularized.subsets[0::3] == plain.subsets  # each regularized step: the step, then two probe passes
    assert regularized.subsets[1::3] == plain.subsets and regularized.subsets[2::3] == plain.subsets
    # ~0: float32 rounding only (the clean loss runs PyTorch's fused kernel, the probes the noisy kernels); passes
    # on other windows would differ by the loss's spread over windows, orders of magnitude more
    assert len(recorder.reg) == 2 and all(abs(value) < 1e-5 for value in recorder.reg), recorder.reg
