"""Distributed training with NoisyRNNCallback: ``Trainer(strategy="ddp", accelerator="cpu", devices=2)`` (gloo).

Lightning's ``ddp`` strategy launches the other rank by re-running the *script* (``sys.argv``); under pytest
that would re-run pytest, so the test writes a small training script and runs it in a subprocess, which is
exactly how users launch DDP. Each rank writes what it saw; the test then checks that

* training completes on both ranks and the DDP-synchronised parameters agree,
* each rank draws different noise, and each rank's first draw is the one its seed
  ``derive_seed(config.seed, module name, rank)`` predicts (reproducible from the seed, no run-to-run state),
* the checkpoint holds the noise streams of *both* ranks (gathered on save), and a callback restored from
  it on each rank continues that rank's own stream,
* mode "regularizer" (the fd probes inside the training step) keeps the ranks in sync too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("lightning")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from nrnn_plugin.noise import derive_seed  # noqa: E402

SEED = 123

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import lightning.pytorch as pl
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import nrnn_plugin as nrnn
    from nrnn_plugin.plugins import hookimpl
    from nrnn_plugin.plugins import register
    from nrnn_plugin.runtime import runtime_of

    OUT = sys.argv[1]
    CONFIG = nrnn.NoiseConfig(additive=0.1, seed=SEED)


    class Recorder:
        def __init__(self):
            self.first = {}
            self.count = 0

        @hookimpl
        def nrnn_sampler(self, name, module, config):
            def recording(source, shape, device, dtype):
                draw = torch.randn(shape, generator=source.generator(device), device=device, dtype=dtype)
                self.first.setdefault(source.name, draw.clone())
                self.count += 1
                return draw

            return recording


    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(1, 4, batch_first=True)
            self.head = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            out, _ = self.lstm(x)
            return nn.functional.mse_loss(self.head(out[:, -1]), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


    def main():
        recorder = Recorder()
        register(recorder, name="recorder")
        pl.seed_everything(0, verbose=False)
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(16, 5, 1, generator=g), torch.randn(16, 1, generator=g))
        model = Tiny()
        callback = nrnn.NoisyRNNCallback(CONFIG)
        saver = pl.callbacks.ModelCheckpoint(dirpath=OUT, filename="last", save_top_k=1, monitor=None)
        trainer = pl.Trainer(
            strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, callbacks=[callback, saver],
            logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=OUT,
        )
        trainer.fit(model, DataLoader(data, batch_size=4, shuffle=False))
        rank = trainer.global_rank
        final_state = callback.state_dict()["sources"][rank]["lstm"]["generators"]["cpu"]

        # resume on this rank from the checkpoint rank 0 wrote: a fresh callback continues this rank's stream
        checkpoint = torch.load(saver.best_model_path, weights_only=True)
        resumed = nrnn.NoisyRNNCallback(CONFIG)
        resumed.setup(trainer, model, "fit")
        resumed.load_state_dict(checkpoint["callbacks"][resumed.state_key])
        resumed_state = runtime_of(model.lstm).source.state_dict()["generators"]["cpu"]
        resumed.teardown(trainer, model, "fit")

        torch.save(
            {
                "rank": rank,
                "world_size": trainer.world_size,
                "global_step": trainer.global_step,
                "draws": recorder.count,
                "first_draw": recorder.first["lstm"],
                "final_state": final_state,
                "resumed_state": resumed_state,
                "checkpoint_ranks": sorted(checkpoint["callbacks"][resumed.state_key]["sources"]),
                "checkpoint_states": {
                    r: s["lstm"]["generators"]["cpu"]
                    for r, s in checkpoint["callbacks"][resumed.state_key]["sources"].items()
                },
                "params": [p.detach().clone() for p in model.parameters()],
                "vanilla": type(model.lstm) is nn.LSTM,
            },
            f"{OUT}/rank{rank}.pt",
        )


    if __name__ == "__main__":
        main()
    """
).replace("SEED", str(SEED))


def run_ddp(out, script_text: str) -> list[dict]:
    script = out / "train_ddp.py"
    script.write_text(script_text)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NRNN_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_"))
    }
    env.update(OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
    result = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, env=env, cwd=out, timeout=420
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    return run_ddp(tmp_path_factory.mktemp("ddp"), SCRIPT)


def test_ddp_in_regularizer_mode_keeps_the_ranks_in_sync(tmp_path):
    """Mode "regularizer" (fd, weight 1: the clean forward is left out of the backward): the probes' gradients
    are all-reduced like any other, one recorded draw per step and rank."""
    config = f"nrnn.NoiseConfig(additive=0.1, seed={SEED})"
    assert config in SCRIPT
    results = run_ddp(
        tmp_path, SCRIPT.replace(config, f"nrnn.NoiseConfig(additive=0.1, seed={SEED}, mode='regularizer')")
    )
    for rank, result in enumerate(results):
        assert result["rank"] == rank and result["global_step"] == 2 * 2 and result["draws"] == 4
    for a, b in zip(results[0]["params"], results[1]["params"]):
        assert torch.equal(a, b)


def test_ddp_training_completes_on_both_ranks(ddp_results):
    for rank, result in enumerate(ddp_results):
        assert result["rank"] == rank and result["world_size"] == 2
        assert result["global_step"] == 2 * 2  # 16 samples / 2 ranks / batch 4 = 2 steps per epoch, 2 epochs
        assert result["draws"] == 4 and result["vanilla"]
    for a, b in zip(ddp_results[0]["params"], ddp_results[1]["params"]):
        assert torch.equal(a, b)  # gradients were all-reduced


def test_each_rank_draws_its_own_noise_reproducibly_from_the_seed(ddp_results):
    first = [r["first_draw"] for r in ddp_results]
    assert first[0].shape == first[1].shape == (1, 5 * 4, 4)  # [directions, T x B, H] for one layer
    assert not torch.allclose(first[0], first[1])
    for rank, draw in enumerate(first):
        generator = torch.Generator().manual_seed(derive_seed(SEED, "lstm", rank))
        assert torch.equal(draw, torch.randn(draw.shape, generator=generator))


def test_checkpoint_holds_every_ranks_stream_and_each_rank_resumes_its_own(ddp_results):
    for rank, result in enumerate(ddp_results):
        assert result["checkpoint_ranks"] == [0, 1]
        # the last checkpoint was written at the end of training: the streams are the final ones
        assert torch.equal(result["checkpoint_states"][rank], result["final_state"])
        assert torch.equal(result["resumed_state"], result["final_state"])
    assert not torch.equal(ddp_results[0]["final_state"], ddp_results[1]["final_state"])
