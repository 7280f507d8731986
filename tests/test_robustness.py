"""Robustness suite: each perturbation against its definition, attacks, evaluate() schema, plots."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.robustness import (
    COLUMNS,
    evaluate,
    fgsm,
    multiplicative_noise,
    pgd,
    plot_robustness,
    salt_and_pepper,
    summarize,
    white_noise,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- random perturbations


def test_white_noise_is_x_plus_sigma_z_with_the_given_generator():
    x = torch.randn(50, 40, 2, generator=_gen(1))
    state = torch.random.get_rng_state()
    out = white_noise(x, 0.3, generator=_gen(5))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    torch.testing.assert_close(out, x + 0.3 * torch.randn(x.shape, generator=_gen(5)), rtol=0, atol=0)
    z = (out - x) / 0.3
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.std().item() - 1) < 5 / math.sqrt(2 * n)
    assert torch.equal(white_noise(x, 0.3, generator=_gen(5)), out)
    assert not torch.equal(white_noise(x, 0.3, generator=_gen(6)), out)


def test_multiplicative_noise_is_x_times_one_plus_sigma_z():
    x = torch.rand(50, 40, 2, generator=_gen(1)) + 0.5
    out = multiplicative_noise(x, 0.2, generator=_gen(5))
    torch.testing.assert_close(out, x * (1 + 0.2 * torch.randn(x.shape, generator=_gen(5))), rtol=0, atol=0)
    z = (out / x - 1) / 0.2
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.std().item() - 1) < 5 / math.sqrt(2 * n)
    assert torch.equal(multiplicative_noise(torch.zeros(3, 4), 0.5, generator=_gen()), torch.zeros(3, 4))


@pytest.mark.parametrize("alpha", [0.05, 0.3])
def test_salt_and_pepper_fraction_and_values(alpha):
    x = torch.rand(100, 50, 4, generator=_gen(1)) * 2 - 0.5  # values in [-0.5, 1.5)
    out = salt_and_pepper(x, alpha, generator=_gen(2))
    changed = out != x
    n = x.numel()
    frac = changed.float().mean().item()
    assert abs(frac - alpha) < 5 * math.sqrt(alpha * (1 - alpha) / n)
    lo, hi = x.min(), x.max()
    values = out[changed]
    assert ((values == lo) | (values == hi)).all()
    salt = (values == hi).float().mean().item()
    assert abs(salt - 0.5) < 5 * math.sqrt(0.25 / values.numel())
    assert torch.equal(out[~changed], x[~changed])
    # explicit per-feature values
    low, high = torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = salt_and_pepper(x, alpha, generator=_gen(2), low=low, high=high)
    changed = out != x
    feature = torch.arange(4).expand_as(x)[changed]
    assert (out[changed].abs() == (feature + 1).float()).all()


def test_strength_zero_is_identity_and_bad_arguments_are_named():
    x = torch.randn(2, 3, 1)
    for fn in (white_noise, multiplicative_noise, salt_and_pepper):
        assert fn(x, 0.0, generator=_gen()) is x
    with pytest.raises(ValueError, match="sigma"):
        white_noise(x, -0.1, generator=_gen())
    with pytest.raises(ValueError, match="alpha"):
        salt_and_pepper(x, 1.5, generator=_gen())
    with pytest.raises(TypeError, match="generator"):
        white_noise(x, 0.1, generator=0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- attacks


def _binary_linear_problem():
    """Logistic loss of a linear score: its L-inf-ball maximiser is the FGSM corner ``x - y eps sign(w)``."""
    w = torch.randn(12, generator=_gen(3))
    x = torch.randn(8, 12, generator=_gen(4))
    y = torch.where(torch.rand(8, generator=_gen(5)) < 0.5, -1.0, 1.0)
    loss = lambda v: F.softplus(-y * (v @ w)).mean()  # noqa: E731
    return w, x, y, loss


def test_fgsm_is_the_signed_gradient_step():
    w, x, y, loss = _binary_linear_problem()
    eps = 0.1
    adv = fgsm(loss, x, eps)
    torch.testing.assert_close(adv, x - eps * y[:, None] * w.sign()[None, :], rtol=0, atol=1e-7)
    assert loss(adv) > loss(x)
    assert (adv - x).abs().max() <= eps + 1e-7


def test_pgd_reaches_the_box_corner_on_a_linear_problem():
    w, x, y, loss = _binary_linear_problem()
    eps = 0.2
    adv = pgd(loss, x, eps, steps=20, generator=_gen(0))
    torch.testing.assert_close(adv, fgsm(loss, x, eps), rtol=0, atol=1e-6)
    no_start = pgd(loss, x, eps, steps=20, random_start=False)
    torch.testing.assert_close(no_start, adv, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="generator"):
        pgd(loss, x, eps, random_start=True)


class _GRUClassifier(nn.Module):
    def __init__(self, features: int = 1, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.rnn = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.head(h[-1])


def _classification_data(n: int = 64, steps: int = 10, seed: int = 0):
    g = _gen(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, steps, 1, generator=g) * 0.5 + y[:, None, None].float() - 1.0
    return x, y


def test_fgsm_and_pgd_increase_a_recurrent_classifiers_loss_within_the_ball():
    torch.manual_seed(0)
    model = _GRUClassifier().eval()
    x, y = _classification_data()
    loss = lambda v: F.cross_entropy(model(v), y)  # noqa: E731
    clean = loss(x).item()
    for eps in (0.05, 0.2):
        adv_f = fgsm(loss, x, eps)
        adv_p = pgd(loss, x, eps, steps=10, generator=_gen(1))
        for adv in (adv_f, adv_p):
            assert (adv - x).abs().max().item() <= eps * (1 + 1e-6)
            assert loss(adv).item() > clean
        assert loss(adv_p).item() >= loss(adv_f).item() - 1e-3  # PGD is at least as strong as FGSM here
    assert all(p.grad is None for p in model.parameters())  # attacks do not touch parameter gradients


# ---------------------------------------------------------------------------------------------- evaluate


def _trained_models():
    x, y = _classification_data(n=96, seed=1)
    models = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = _GRUClassifier()
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(15):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        models[name] = model
    return models


GRID = {
    "white_noise": [0.0, 0.5],
    "multiplicative_noise": [0.0, 0.5],
    "salt_and_pepper": [0.0, 0.2],
    "fgsm": [0.0, 0.3],
    "pgd": [0.0, 0.3],
}


def test_evaluate_classification_schema_and_values():
    models = _trained_models()
    x, y = _classification_data(n=80, seed=2)
    results = evaluate(models, (x, y), perturbations=GRID, seeds=[0, 1], batch_size=32, pgd_steps=5)
    assert list(results.columns) == list(COLUMNS)
    assert len(results) == 2 * 5 * 2 * 2  # models x perturbations x strengths x seeds (one metric)
    assert set(results["metric"]) == {"accuracy"}
    assert results["value"].between(0, 1).all()
    assert results["seed"].dtype.kind == "i" and results["strength"].dtype.kind == "f"
    for name, model in models.items():
        with torch.no_grad():
            accuracy = (model(x).argmax(1) == y).float().mean().item()
        clean = results[(results.model == name) & (results.strength == 0.0)]["value"]
        assert len(clean) == 5 * 2 and (clean - accuracy).abs().max() < 1e-12
        # deterministic attacks give one value for all seeds; random perturbations differ by seed
        fgsm_values = results[(results.model == name) & (results.perturbation == "fgsm") & (results.strength > 0)][
            "value"
        ]
        assert fgsm_values.nunique() == 1
        adv = results[(results.model == name) & (results.strength > 0) & results.perturbation.isin(["fgsm", "pgd"])]
        assert (adv["value"] < accuracy).all()


def test_evaluate_uses_the_noise_free_model_and_restores_its_mode():
    models = _trained_models()
    x, y = _classification_data(n=40, seed=2)
    grid = {"white_noise": [0.5], "fgsm": [0.3]}
    plain = evaluate(models["a"], (x, y), perturbations=grid)
    noisy = nrnn.register_noise(models["a"], nrnn.NoiseConfig(additive=1.0, seed=0)).train()
    results = evaluate(noisy, (x, y), perturbations=grid)
    pd.testing.assert_frame_equal(results, plain)
    assert noisy.training and nrnn.is_noisy(noisy)


def test_evaluate_rejects_bad_arguments():
    x, y = _classification_data(n=8)
    model = _GRUClassifier()
    with pytest.raises(ValueError, match="unknown perturbation"):
        evaluate(model, (x, y), perturbations={"blur": [0.1]})
    with pytest.raises(ValueError, match="task"):
        evaluate(model, (x, y), task="regression")
    with pytest.raises(ValueError, match="seeds"):
        evaluate(model, (x, y), seeds=[-1])


def _ar_windows():
    """Synthetic AR series (fine for unit tests) as pytorch-forecasting windows: 10 steps in, 3 out."""
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data.examples import generate_ar_data

    data = generate_ar_data(seasonality=10.0, timesteps=40, n_series=3, seed=0)
    dataset = TimeSeriesDataSet(
        data,
        time_idx="time_idx",
        target="value",
        group_ids=["series"],
        time_varying_unknown_reals=["value"],
        max_encoder_length=10,
        max_prediction_length=3,
    )
    return dataset, dataset.to_dataloader(train=False, batch_size=32, num_workers=0)


@pytest.mark.filterwarnings("ignore:Attribute '(loss|logging_metrics)' is an instance")
def test_evaluate_forecasting_metrics_on_the_prediction_window():
    pytest.importorskip("pytorch_forecasting")
    from pytorch_forecasting import RecurrentNetwork

    dataset, loader = _ar_windows()
    torch.manual_seed(0)
    model = RecurrentNetwork.from_dataset(dataset, cell_type="GRU", hidden_size=6, rnn_layers=1)
    grid = {"white_noise": [0.0, 1.0], "salt_and_pepper": [0.3], "fgsm": [0.5], "pgd": [0.5]}
    results = evaluate({"rnn": model}, loader, perturbations=grid, seeds=[0, 1], pgd_steps=3)
    assert list(results.columns) == list(COLUMNS)
    assert set(results["metric"]) == {"mae", "smape"}
    # the clean MAE equals a direct computation over the prediction window
    errors = []
    model.eval()
    with torch.no_grad():
        for x, (y, _) in loader:
            errors.append((model.to_prediction(model(x)) - y).abs().flatten())
    direct = torch.cat(errors).mean().item()
    mae = results[results.metric == "mae"].set_index(["perturbation", "strength", "seed"])["value"]
    assert abs(mae[("white_noise", 0.0, 0)] - direct) < 1e-6
    for key in (("white_noise", 1.0, 0), ("fgsm", 0.5, 0), ("pgd", 0.5, 1)):
        assert mae[key] > direct


@pytest.mark.filterwarnings("ignore:Attribute '(loss|logging_metrics)' is an instance")
def test_deepar_is_scored_on_its_median_path_without_future_targets():
    """DeepAR: no teacher forcing (future targets in x are ignored), deterministic, and attackable."""
    pytest.importorskip("pytorch_forecasting")
    from pytorch_forecasting import DeepAR

    from nrnn_plugin.adapters.forecasting.decoding import median_path_decoding

    dataset, loader = _ar_windows()
    torch.manual_seed(0)
    model = DeepAR.from_dataset(dataset, hidden_size=6, rnn_layers=1).eval()
    x, (y, _) = next(iter(loader))
    with torch.no_grad(), median_path_decoding(model):
        path = model(x, n_samples=2)["prediction"]
        leaked = dict(x, decoder_cont=x["decoder_cont"] + 100.0)  # future targets must not matter
        assert torch.equal(model(leaked, n_samples=2)["prediction"][..., 0], path[..., 0])
    assert torch.equal(path[..., 0], path[..., 1])  # deterministic: every "sample" is the median path
    assert "sample" not in vars(model.loss)  # the loss's own sampler is back
    grid = {"white_noise": [0.0, 1.0], "fgsm": [0.5], "pgd": [0.5]}
    results = evaluate({"deepar": model}, loader, perturbations=grid, seeds=[0], pgd_steps=3)
    mae = results[results.metric == "mae"].set_index(["perturbation", "strength"])["value"]
    errors = []
    with torch.no_grad(), median_path_decoding(model):
        for xb, (yb, _) in loader:
            errors.append((model(xb, n_samples=2)["prediction"][..., 0] - yb).abs().flatten())
    assert abs(mae[("white_noise", 0.0)] - torch.cat(errors).mean().item()) < 1e-5
    assert mae[("fgsm", 0.5)] > mae[("white_noise", 0.0)] and mae[("pgd", 0.5)] > mae[("white_noise", 0.0)]


# ---------------------------------------------------------------------------------------------- summaries and plots


def _fake_results() -> pd.DataFrame:
    rows = []
    for model, base in (("lstm", 0.9), ("nrnn", 0.85)):
        for pert in ("white_noise", "fgsm"):
            for strength in (0.0, 0.1, 0.2):
                for seed in (0, 1, 2):
                    rows.append((model, pert, strength, "accuracy", base - strength - 0.01 * seed, seed))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_summarize_mean_and_std_over_seeds():
    table = summarize(_fake_results())
    row = table[(table.model == "lstm") & (table.perturbation == "fgsm") & (table.strength == 0.2)].iloc[0]
    assert row["n"] == 3
    assert abs(row["mean"] - (0.9 - 0.2 - 0.01)) < 1e-12
    assert abs(row["std"] - 0.01) < 1e-12


def test_plot_writes_a_png(tmp_path):
    path = plot_robustness(_fake_results(), tmp_path / "sub" / "robustness.png", title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_rejects_mixed_settings_and_ambiguous_metrics(tmp_path):
    results = _fake_results()
    mixed = pd.concat([results.assign(dataset="a"), results.assign(dataset="b")])
    with pytest.raises(ValueError, match="dataset"):
        plot_robustness(mixed, tmp_path / "x.png")
    two_metrics = pd.concat([results, results.assign(metric="loss")])
    with pytest.raises(ValueError, match="metric"):
        plot_robustness(two_metrics, tmp_path / "x.png")
    plot_robustness(two_metrics, tmp_path / "x.png", metric="loss")
