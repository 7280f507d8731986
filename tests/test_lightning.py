"""NoisyRNNCallback with plain LightningModules: lifecycle, noise-free validation, schedules, regularizer,
checkpoint state and resume, config-flag activation (LightningCLI YAML, environment, ``enabled: false``)."""

from __future__ import annotations

import copy
import textwrap

import pytest
import torch
from torch import nn

lightning = pytest.importorskip("lightning")
import lightning.pytorch as pl  # noqa: E402
from nrnn_testing import runtimes  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import nrnn_plugin as nrnn  # noqa: E402
from nrnn_plugin.integrations.lightning import LEVEL_METRIC, REG_METRIC, SIGMA_METRICS, NoisyRNNCallback  # noqa: E402
from nrnn_plugin.layers import NoisyLSTM  # noqa: E402
from nrnn_plugin.noise import gaussian_sampler
from nrnn_plugin.plugins import (  # noqa: E402
    hookimpl,  # noqa: E402
    register,
    unregister,
)
from nrnn_plugin.runtime import runtime_of  # noqa: E402

CONFIG = nrnn.NoiseConfig(additive=0.1, seed=0)


class TinyForecaster(pl.LightningModule):
    """One LSTM and a linear head predicting the next value of a univariate series."""

    def __init__(self, hidden_size: int = 6, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lstm = nn.LSTM(1, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, 1] -> [B, 1]
        out, _ = self.lstm(x)
        return self.head(out[:, -1])

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _series_loader(n: int = 24, steps: int = 7, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(n + steps + 1, dtype=torch.float32)
    series = torch.sin(0.4 * t) + 0.05 * torch.randn(t.shape, generator=g)
    x = torch.stack([series[i : i + steps] for i in range(n)]).unsqueeze(-1)
    y = torch.stack([series[i + steps : i + steps + 1] for i in range(n)])
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class TinyData(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return _series_loader()

    def val_dataloader(self) -> DataLoader:
        return _series_loader(n=8)


def _trainer(tmp_path, callbacks, max_epochs: int = 1, **kwargs) -> pl.Trainer:
    options = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


class RecordingLogger(pl.loggers.Logger):
    """Keeps every ``log_metrics`` call in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append({**metrics, "step": step})


class PhaseSpy(pl.Callback):
    """Records, per training/validation phase, how many noise draws happened (through the sampling hook)."""

    def __init__(self) -> None:
        self.phase = "idle"
        self.draws: dict[str, int] = {}
        self.noisy_in_training: list[bool] = []
        self.levels: list[tuple[int, float]] = []

    @hookimpl
    def nrnn_sampler(self, name, module, config):
        def counting(source, shape, device, dtype):
            self.draws[self.phase] = self.draws.get(self.phase, 0) + 1
            return gaussian_sampler(source, shape, device, dtype)

        return counting

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.phase = "train"
        self.noisy_in_training.append(nrnn.is_noisy(pl_module))
        self.levels.append((trainer.global_step, [rt.level for rt in runtimes(pl_module)]))

    def on_validation_start(self, trainer, pl_module):
        self.phase = "val"

    def on_validation_end(self, trainer, pl_module):
        self.phase = "idle"


@pytest.fixture
def spy(fresh_plugins):
    spy = PhaseSpy()
    register(spy, name="phase-spy")
    yield spy
    unregister(name="phase-spy")


def test_fit_registers_noise_in_training_only_and_restores_the_model(tmp_path, spy):
    torch.manual_seed(0)
    model = TinyForecaster()
    callback = NoisyRNNCallback(CONFIG)
    trainer = _trainer(tmp_path, [callback, spy], max_epochs=2, limit_val_batches=1)
    trainer.fit(model, datamodule=TinyData())
    assert spy.noisy_in_training and all(spy.noisy_in_training)
    assert spy.draws.get("train", 0) == 2 * 3  # one draw per layer and sequence, 3 batches x 2 epochs
    assert spy.draws.get("val", 0) == 0  # validation inside fit is noise-free
    assert type(model.lstm) is nn.LSTM and not nrnn.is_noisy(model)
    assert "training_step" not in model.__dict__
    # test and predict after fit are noise-free too
    spy.phase = "test"
    trainer.test(model, dataloaders=_series_loader(n=8), verbose=False)
    spy.phase = "predict"
    trainer.predict(model, dataloaders=DataLoader(_series_loader(n=8).dataset.tensors[0]))
    assert spy.draws.get("test", 0) == 0 and spy.draws.get("predict", 0) == 0


def test_training_forward_is_noisy_and_eval_forward_is_bit_identical():
    torch.manual_seed(0)
    model = TinyForecaster()
    plain = copy.deepcopy(model)
    nrnn.register_noise(model, CONFIG)
    x = _series_loader().dataset.tensors[0][:8]
    model.train()
    first, second = model(x), model(x)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, plain.train()(x))
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))


@pytest.mark.parametrize(
    "schedule",
    [
        {"kind": "linear", "warmup": 4},
        {"kind": "cosine", "warmup": 2, "decay": 3, "final": 0.25},
        {"kind": "linear", "warmup": 2, "interval": "epoch"},
    ],
)
def test_schedule_sets_the_level_of_every_step(tmp_path, spy, schedule):
    config = CONFIG.replace(schedule=schedule)
    trainer = _trainer(tmp_path, [NoisyRNNCallback(config), spy], max_epochs=3, limit_val_batches=0)
    trainer.fit(TinyForecaster(), datamodule=TinyData())
    assert len(spy.levels) == 9
    for index, (step, levels) in enumerate(spy.levels):
        progress = step if config.schedule.interval == "step" else index // 3
        assert levels == [pytest.approx(config.schedule.factor(progress))]
    assert trainer.callback_metrics[LEVEL_METRIC] == pytest.approx(spy.levels[-1][1][0])
    # the level reaches the noise: no draws while the level is 0 (first step / first epoch of a warm-up)
    zero_level_steps = sum(1 for _, levels in spy.levels if levels[0] == 0.0)
    assert zero_level_steps >= 1 and spy.draws["train"] == 9 - zero_level_steps


def test_levels_and_sigmas_are_logged_through_the_logger(tmp_path):
    config = CONFIG.replace(multiplicative=0.04, schedule={"kind": "linear", "warmup": 2})
    logger = pl.loggers.CSVLogger(tmp_path, name="run")
    trainer = _trainer(tmp_path, [NoisyRNNCallback(config)], logger=logger, log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(TinyForecaster(), datamodule=TinyData())
    import csv

    with open(f"{logger.log_dir}/metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get(LEVEL_METRIC)]
    assert [float(r[LEVEL_METRIC]) for r in rows] == [0.0, 0.5, 1.0]
    # the sigmas in effect: the configured levels times the schedule's factor
    assert [float(r[SIGMA_METRICS["additive"]]) for r in rows] == pytest.approx([0.0, 0.05, 0.1])
    assert [float(r[SIGMA_METRICS["multiplicative"]]) for r in rows] == pytest.approx([0.0, 0.02, 0.04])


def test_disabled_or_zero_noise_config_is_a_no_op(tmp_path, spy):
    for config in (CONFIG.replace(enabled=False), nrnn.NoiseConfig()):
        callback = NoisyRNNCallback(config)
        model = TinyForecaster()
        trainer = _trainer(tmp_path, [callback, spy], limit_val_batches=0)
        trainer.fit(model, datamodule=TinyData())
        assert not any(spy.noisy_in_training)
        assert callback.state_dict() == {}
    assert spy.draws.get("train", 0) == 0


def test_mapping_config_and_environment_activation(monkeypatch):
    assert NoisyRNNCallback({"additive": 0.2, "seed": 3}).config == nrnn.NoiseConfig(additive=0.2, seed=3)
    monkeypatch.setenv("NRNN_ADDITIVE", "0.05")
    monkeypatch.setenv("NRNN_SEED", "7")
    assert NoisyRNNCallback().config == nrnn.NoiseConfig(additive=0.05, seed=7)
    # use_env: environment variables override the given config; NRNN_ENABLED=0 switches a pipeline off
    monkeypatch.setenv("NRNN_ENABLED", "0")
    callback = NoisyRNNCallback(CONFIG, use_env=True)
    assert not callback.active and callback.config.additive == 0.05
    assert NoisyRNNCallback(CONFIG).active  # without use_env the environment is ignored
    with pytest.raises(TypeError, match="config must be a NoiseConfig"):
        NoisyRNNCallback(0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown key"):
        NoisyRNNCallback({"additve": 0.1})


def test_prenoised_model_keeps_its_registration(tmp_path):
    model = nrnn.register_noise(TinyForecaster(), CONFIG.replace(additive=0.3))
    runtime_before = runtime_of(model.lstm)
    trainer = _trainer(tmp_path, [NoisyRNNCallback(CONFIG.replace(schedule={"kind": "linear", "warmup": 100}))])
    trainer.fit(model, datamodule=TinyData())
    assert type(model.lstm) is NoisyLSTM and runtime_of(model.lstm) is runtime_before
    assert runtime_before.level == 1.0  # the schedule's level is reset when the callback lets go


def test_exception_during_fit_restores_the_model(tmp_path):
    class Failing(TinyForecaster):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    model = Failing()
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(tmp_path, [NoisyRNNCallback(CONFIG)]).fit(model, datamodule=TinyData())
    assert type(model.lstm) is nn.LSTM


# ---------------------------------------------------------------------------------------------- checkpoints


def _fit(tmp_path, callback, max_epochs, ckpt_path=None, model=None, **kwargs):
    pl.seed_everything(0, verbose=False)
    model = model or TinyForecaster()
    trainer = _trainer(tmp_path, [callback], max_epochs=max_epochs, limit_val_batches=0, **kwargs)
    trainer.fit(model, datamodule=TinyData(), ckpt_path=ckpt_path)
    return model, trainer


def test_checkpoint_loads_into_vanilla_class_and_predicts_identically(tmp_path):
    model, trainer = _fit(tmp_path, NoisyRNNCallback(CONFIG), max_epochs=1)
    path = tmp_path / "after.ckpt"
    trainer.save_checkpoint(path)
    loaded = TinyForecaster.load_from_checkpoint(path)
    assert type(loaded.lstm) is nn.LSTM and dict(loaded.hparams) == dict(model.hparams)
    assert list(loaded.state_dict()) == list(TinyForecaster().state_dict())
    checkpoint = torch.load(path, weights_only=True)
    TinyForecaster().load_state_dict(checkpoint["state_dict"], strict=True)
    assert "NoisyRNNCallback" in checkpoint["callbacks"]
    x = _series_loader().dataset.tensors[0]
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))


def test_resume_continues_the_same_noise_stream(tmp_path):
    reference, _ = _fit(tmp_path / "a", NoisyRNNCallback(CONFIG), max_epochs=2)
    first, trainer = _fit(tmp_path / "b", NoisyRNNCallback(CONFIG), max_epochs=1)
    path = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(path)
    resumed_callback = NoisyRNNCallback(CONFIG)
    resumed, _ = _fit(tmp_path / "c", resumed_callback, max_epochs=2, ckpt_path=path)
    for a, b in zip(reference.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

    # control: the same resume with the callback state dropped restarts the noise streams and diverges
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["callbacks"]
    torch.save(checkpoint, tmp_path / "no_state.ckpt")
    restarted, _ = _fit(tmp_path / "d", NoisyRNNCallback(CONFIG), max_epochs=2, ckpt_path=tmp_path / "no_state.ckpt")
    assert any(not torch.equal(a, b) for a, b in zip(reference.parameters(), restarted.parameters()))


def test_resume_with_other_config_or_rank_warns(tmp_path):
    _, trainer = _fit(tmp_path, NoisyRNNCallback(CONFIG), max_epochs=1)
    state = trainer.callbacks[0].state_dict()
    assert set(state) == {"version", "config", "sources"} and list(state["sources"]) == [0]
    assert set(state["sources"][0]) == {"lstm"}
    other = NoisyRNNCallback(CONFIG.replace(additive=0.2))
    with pytest.warns(UserWarning, match="different noise config"):
        other.load_state_dict(state)
    foreign = dict(state, sources={1: state["sources"][0]})
    with pytest.warns(UserWarning, match="rank 0"):
        NoisyRNNCallback(CONFIG).load_state_dict(foreign)


# ---------------------------------------------------------------------------------------------- regularizer


@pytest.fixture
def regularizer():
    return pytest.importorskip("nrnn_plugin.regularizer")


@pytest.mark.parametrize("mode", ["regularizer", "both"])
def test_regularizer_term_is_added_and_logged(tmp_path, regularizer, mode):
    config = CONFIG.replace(mode=mode, regularizer_weight=2.0)
    totals: list[float] = []

    class Check(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            totals.append(float(outputs["loss"]))

    logger = RecordingLogger()
    trainer = _trainer(
        tmp_path, [NoisyRNNCallback(config), Check()], limit_val_batches=0, logger=logger, log_every_n_steps=1
    )
    model = TinyForecaster()
    trainer.fit(model, datamodule=TinyData())
    rows = [row for row in logger.rows if "train_loss" in row]
    assert len(totals) == len(rows) == 3
    for total, row in zip(totals, rows):
        reg = row[REG_METRIC + "_step"]
        assert reg > 0.0  # a convex loss of a small-noise model: R + Q is dominated by R >= 0 here
        assert total == pytest.approx(row["train_loss"] + 2.0 * reg, rel=1e-5, abs=1e-7)
    assert REG_METRIC + "_epoch" in logger.rows[-1]
    assert "training_step" not in model.__dict__  # the wrapper is removed after fit


def test_regularizer_needs_a_loss_from_training_step(tmp_path, regularizer):
    class NoLoss(TinyForecaster):
        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(TypeError, match="training_step must return a loss"):
        _trainer(tmp_path, [NoisyRNNCallback(CONFIG.replace(mode="regularizer"))]).fit(NoLoss(), datamodule=TinyData())


# ---------------------------------------------------------------------------------------------- LightningCLI


CLI_YAML = textwrap.dedent(
    """
    trainer:
      max_epochs: 1
      accelerator: cpu
      devices: 1
      logger: false
      enable_checkpointing: false
      enable_progress_bar: false
      enable_model_summary: false
      limit_val_batches: 0
      callbacks:
        - class_path: nrnn_plugin.NoisyRNNCallback
          init_args:
            config:
              additive: 0.05
              multiplicative: 0.01
              seed: 1
              schedule: {kind: linear, warmup: 2}
            use_env: true
    model:
      hidden_size: 4
    """
)


def _run_cli(tmp_path, monkeypatch, env):
    from lightning.pytorch.cli import LightningCLI

    for name in list(__import__("os").environ):
        if name.startswith("NRNN_") and not name.startswith("NRNN_PLUGIN_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "config.yaml"
    config.write_text(CLI_YAML)
    cli = LightningCLI(
        TinyForecaster,
        TinyData,
        args=["fit", "--config", str(config)],
        save_config_callback=None,
        seed_everything_default=0,
    )
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, NoisyRNNCallback)]
    assert len(callbacks) == 1
    return cli, callbacks[0]


def test_callback_declared_in_lightning_cli_yaml(tmp_path, monkeypatch):
    cli, callback = _run_cli(tmp_path, monkeypatch, {})
    assert callback.config == nrnn.NoiseConfig(
        additive=0.05, multiplicative=0.01, seed=1, schedule=nrnn.Schedule(kind="linear", warmup=2)
    )
    assert callback.active and list(callback.state_dict()["sources"][0]) == ["lstm"]
    assert cli.model.hparams.hidden_size == 4 and type(cli.model.lstm) is nn.LSTM
    # the same YAML, switched off by the environment (use_env: true)
    _, off = _run_cli(tmp_path, monkeypatch, {"NRNN_ENABLED": "0"})
    assert not off.active and off.state_dict() == {}


def test_streams_of_an_unavailable_device_restart_with_a_warning(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    _, trainer = _fit(tmp_path, NoisyRNNCallback(CONFIG), max_epochs=1)
    state = trainer.callbacks[0].state_dict()
    offset = state["sources"][0]["lstm"]["offset"]
    assert offset > 0 and state["sources"][0]["lstm"]["generators"] == {}  # the built-in stream: keys only
    # a plugin sampler's generator saved on a GPU
    state["sources"][0]["lstm"]["generators"]["cuda:0"] = torch.zeros(16, dtype=torch.uint8)
    callback = NoisyRNNCallback(CONFIG)
    model = TinyForecaster()
    callback.setup(trainer, model, "fit")
    with pytest.warns(UserWarning, match=r"\['cuda:0'\] cannot be restored"):
        callback.load_state_dict(state)
    restored = runtime_of(model.lstm).source.state_dict()
    assert restored["generators"] == {} and restored["offset"] == offset
    callback.teardown(trainer, model, "fit")
