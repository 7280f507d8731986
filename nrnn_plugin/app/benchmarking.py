"""Speed of noisy recurrent layers relative to PyTorch's fused modules (reusable timing code, no output).

The yardstick is the plain fused module (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``: oneDNN on CPU, cuDNN on GPU)
with the same weights, or, for the cases with a ``baseline`` mode, a fused module of that mode and the same sizes
(PyTorch's CPU ``nn.GRU`` and ``nn.RNN`` have no oneDNN path, so a noisy GRU is also timed against a fused LSTM).
A *training step* is forward + backward of ``mean(out ** 2)`` with the input not requiring grad (the common
first-layer case); the *eval* case is a forward pass under ``torch.no_grad`` of a module in eval mode with noise
registered (it must cost what the fused module costs).

Timing is paired and interleaved (:func:`time_pair`: the median of per-round ratios); memory is counted exactly
(:func:`saved_bytes`). Tables and files: :mod:`nrnn_plugin.app.benchmark_tables`. Used by ``benchmarks/`` and the CLI.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nrnn_plugin.app.benchmark_tables import format_markdown, format_memory_markdown, read_csv, write_csv
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.swap import register_noise

__all__ = [
    "LayerCase",
    "LayerSize",
    "CASES",
    "FULL_GRID",
    "QUICK_GRID",
    "TARGET_SIZE",
    "PairTiming",
    "time_pair",
    "run_layer_benchmark",
    "format_markdown",
    "format_memory_markdown",
    "saved_bytes",
    "write_csv",
    "read_csv",
]

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


@dataclass(frozen=True)
class LayerCase:
    """A noisy layer to time against its fused module.

    Attributes:
        name: short identifier (CSV column value, ``--cases`` argument).
        mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
        noise: keyword arguments of :class:`NoiseConfig`.
        train: time a training step (``True``) or an eval-mode forward with noise registered (``False``).
        description: one line for tables.
        baseline: the mode of the fused module timed against (default: ``mode``).
    """

    name: str
    mode: str
    noise: dict[str, Any] = field(default_factory=dict)
    train: bool = True
    description: str = ""
    baseline: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"LayerCase.mode: expected one of {MODES}, got {self.mode!r}")
        if self.baseline and self.baseline not in MODES:
            raise ValueError(f"LayerCase.baseline: expected '' or one of {MODES}, got {self.baseline!r}")

    @property
    def baseline_mode(self) -> str:
        """The mode of the fused module this case is timed against."""
        return self.baseline or self.mode

    def config(self) -> NoiseConfig:
        return NoiseConfig(**self.noise)


@dataclass(frozen=True)
class LayerSize:
    """Shape of one benchmark point: batch ``B``, steps ``T``, hidden ``H``, input ``I``, stacked layers."""

    batch: int
    steps: int
    hidden: int
    input_size: int = 8
    layers: int = 1


CASES: dict[str, LayerCase] = {
    case.name: case
    for case in (
        LayerCase(
            "lstm_additive", "LSTM", {"additive": 0.05}, description="LSTM, additive noise on h (fused fast path)"
        ),
        LayerCase("lstm_mult", "LSTM", {"multiplicative": 0.05}, description="LSTM, multiplicative noise on h"),
        LayerCase(
            "lstm_add_mult",
            "LSTM",
            {"additive": 0.05, "multiplicative": 0.02},
            description="LSTM, additive + multiplicative",
        ),
        LayerCase(
            "gru_add_mult",
            "GRU",
            {"additive": 0.05, "multiplicative": 0.02},
            description="GRU, additive + multiplicative",
        ),
        LayerCase(
            "gru_add_mult_vs_lstm",
            "GRU",
            {"additive": 0.05, "multiplicative": 0.02},
            description="GRU, additive + multiplicative, against a fused LSTM",
            baseline="LSTM",
        ),
        LayerCase(
            "rnn_tanh_add_mult",
            "RNN_TANH",
            {"additive": 0.05, "multiplicative": 0.02},
            description="RNN (tanh), additive + multiplicative",
        ),
        LayerCase(
            "rnn_tanh_add_mult_vs_lstm",
            "RNN_TANH",
            {"additive": 0.05, "multiplicative": 0.02},
            description="RNN (tanh), additive + multiplicative, against a fused LSTM",
            baseline="LSTM",
        ),
        LayerCase(
            "eval_registered",
            "LSTM",
            {"additive": 0.05, "multiplicative": 0.02},
            train=False,
            description="LSTM in eval mode with noise registered (forward)",
        ),
    )
}

TARGET_SIZE = LayerSize(batch=64, steps=96, hidden=64, input_size=8, layers=1)

FULL_GRID: tuple[LayerSize, ...] = tuple(
    LayerSize(batch, steps, hidden, 8, layers)
    for batch in (64, 256)
    for steps in (24, 96, 336)
    for hidden in (32, 64, 128)
    for layers in (1, 2)
)

QUICK_GRID: tuple[LayerSize, ...] = (TARGET_SIZE, LayerSize(64, 24, 32, 8, 2))


def make_module(mode: str, size: LayerSize) -> nn.RNNBase:
    """The fused PyTorch module for ``mode`` (time-major input ``[T, B, I]``)."""
    if mode == "LSTM":
        return nn.LSTM(size.input_size, size.hidden, num_layers=size.layers)
    if mode == "GRU":
        return nn.GRU(size.input_size, size.hidden, num_layers=size.layers)
    if mode in ("RNN_TANH", "RNN_RELU"):
        nonlinearity = "tanh" if mode == "RNN_TANH" else "relu"
        return nn.RNN(size.input_size, size.hidden, num_layers=size.layers, nonlinearity=nonlinearity)
    raise ValueError(f"make_module: mode must be one of {MODES}, got {mode!r}")


@dataclass
class PairTiming:
    """Result of :func:`time_pair`: median step times (seconds) and the median of per-round ratios."""

    base_s: float
    other_s: float
    ratio: float
    ratio_min: float
    ratio_max: float
    rounds: int
    inner: int


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _time_steps(step: Callable[[], None], count: int, sync: Callable[[], None], clock: Callable[[], float]) -> float:
    sync()
    start = clock()
    for _ in range(count):
        step()
    sync()
    return (clock() - start) / count


def time_pair(
    base_step: Callable[[], None],
    other_step: Callable[[], None],
    *,
    device: torch.device | str = "cpu",
    min_rounds: int = 5,
    max_rounds: int = 25,
    budget_s: float = 3.0,
    min_interval_s: float = 0.05,
    warmup: int = 2,
    clock: str = "wall",
) -> PairTiming:
    """Time two step functions paired and interleaved; ``ratio`` = median over rounds of ``other / base``.

    Args:
        base_step, other_step: run one step each (include whatever synchronisation the step needs itself;
            CUDA devices are synchronised around every timed block here).
        min_rounds, max_rounds: bounds on the number of rounds; within them the rounds fill ``budget_s``.
        min_interval_s: each timed block runs ``inner`` steps so that it lasts at least this long.
        warmup: untimed steps of each function first (allocations, lazy initialisation).
        clock: ``"wall"`` (``time.perf_counter``, default) or ``"cpu"`` (``time.process_time``: CPU time of the
            process, insensitive to being descheduled on a shared machine; meaningful on CPU with one thread
            only, since idle-spinning worker threads count too).
    """
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"time_pair: need 1 <= min_rounds <= max_rounds, got {min_rounds} and {max_rounds}")
    if clock not in CLOCKS:
        raise ValueError(f"time_pair: clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    device = torch.device(device)
    if clock == "cpu" and device.type != "cpu":
        raise ValueError(f"time_pair: clock='cpu' measures host CPU time and cannot time device {device}; use 'wall'")
    sync = _synchronizer(device)
    timer = CLOCKS[clock]
    for _ in range(warmup):
        base_step()
        other_step()
    probe = _time_steps(base_step, 1, sync, timer) + _time_steps(other_step, 1, sync, timer)
    inner = max(1, math.ceil(min_interval_s / max(probe / 2, 1e-9)))
    rounds = min(max_rounds, max(min_rounds, math.ceil(budget_s / max(probe * inner, 1e-9))))
    base_times, other_times, ratios = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            base = _time_steps(base_step, inner, sync, timer)
            other = _time_steps(other_step, inner, sync, timer)
        else:
            other = _time_steps(other_step, inner, sync, timer)
            base = _time_steps(base_step, inner, sync, timer)
        base_times.append(base)
        other_times.append(other)
        ratios.append(other / base)
    return PairTiming(
        base_s=statistics.median(base_times),
        other_s=statistics.median(other_times),
        ratio=statistics.median(ratios),
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        rounds=rounds,
        inner=inner,
    )


def _training_step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    params = list(module.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        out, _ = module(x)
        out.float().square().mean().backward()

    return step


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes a training forward of ``module`` on ``x`` (``[T, B, I]``) keeps for backward: the distinct storages of
    every tensor autograd saves (``torch.autograd.graph.saved_tensors_hooks``), the module's parameters and ``x``
    itself excluded (they exist anyway). Deterministic: the training-memory measure of the benchmarks."""
    existing = {p.untyped_storage().data_ptr() for p in module.parameters()} | {x.untyped_storage().data_ptr()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in existing:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor.detach()  # keeps the storage alive, but no reference cycle through a saved output's grad_fn

    module.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out, _ = module(x)
        out.float().square().mean()
    return sum(storages.values())


def _eval_step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            module(x)

    return step


def benchmark_case(
    case: LayerCase,
    size: LayerSize,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **timing: Any,
) -> dict[str, Any]:
    """Time one case at one size; returns one result row (see :func:`run_layer_benchmark`)."""

    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        plain = make_module(case.mode, size).to(device=device, dtype=dtype)
        torch.manual_seed(seed)
        base = plain if case.baseline_mode == case.mode else make_module(case.baseline_mode, size)
    base = base.to(device=device, dtype=dtype)
    noisy = register_noise(copy.deepcopy(plain), case.config().replace(seed=seed))
    x = torch.randn(size.steps, size.batch, size.input_size, generator=generator).to(device=device, dtype=dtype)
    memory: dict[str, Any] = {"plain_saved_mib": None, "noisy_saved_mib": None, "memory_ratio": None}
    if case.train:
        plain_bytes, noisy_bytes = saved_bytes(plain, x), saved_bytes(noisy, x)
        memory = {
            "plain_saved_mib": round(plain_bytes / 2**20, 3),
            "noisy_saved_mib": round(noisy_bytes / 2**20, 3),
            "memory_ratio": round(noisy_bytes / max(plain_bytes, 1), 3),
        }
    base.train(case.train)
    noisy.train(case.train)
    make_step = _training_step if case.train else _eval_step
    result = time_pair(make_step(base, x), make_step(noisy, x), device=device, **timing)
    return {
        "clock": timing.get("clock", "wall"),
        "case": case.name,
        "mode": case.mode,
        "baseline": case.baseline_mode,
        "train": case.train,
        **asdict(size),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "base_ms": round(result.base_s * 1e3, 3),
        "noisy_ms": round(result.other_s * 1e3, 3),
        "ratio": round(result.ratio, 3),
        "ratio_min": round(result.ratio_min, 3),
        "ratio_max": round(result.ratio_max, 3),
        "rounds": result.rounds,
        "inner": result.inner,
        **memory,
    }


def run_layer_benchmark(
    grid: Iterable[LayerSize] | None = None,
    quick: bool = False,
    device: torch.device | str = "cpu",
    cases: Sequence[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    **timing: Any,
) -> list[dict[str, Any]]:
    """Training-step ratios of noisy layers against the fused modules over a grid of sizes.

    Args:
        grid: sizes to run; default :data:`QUICK_GRID` if ``quick`` else :data:`FULL_GRID`.
        quick: small grid and a short time budget per pair (finishes in well under a minute on CPU).
        device: ``"cpu"`` or ``"cuda"`` (CUDA is synchronised around every timed block).
        cases: names from :data:`CASES` (default: all).
        on_result: called with each row as soon as it is measured (progress output, incremental CSV).
        timing: forwarded to :func:`time_pair` (``min_rounds``, ``max_rounds``, ``budget_s``, ...).

    Returns:
        One dict per (size, case): ``clock, case, mode, baseline, train, batch, steps, hidden, input_size, layers,
        device, dtype, threads, base_ms, noisy_ms, ratio, ratio_min, ratio_max, rounds, inner, plain_saved_mib,
        noisy_saved_mib, memory_ratio``; ``ratio`` is the median over rounds of noisy / fused step time (the fused
        module of mode ``baseline``); the memory columns (training cases only, else None) compare what one
        training forward saves for backward, noisy against the plain module of the same mode.
    """
    names = list(CASES) if cases is None else list(cases)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"run_layer_benchmark: unknown cases {unknown}; expected names from {list(CASES)}")
    sizes = list(grid) if grid is not None else list(QUICK_GRID if quick else FULL_GRID)
    if quick:
        timing = {"min_rounds": 5, "max_rounds": 9, "budget_s": 0.8, "min_interval_s": 0.02, **timing}
    rows = []
    for size in sizes:
        for name in names:
            row = benchmark_case(CASES[name], size, device=device, dtype=dtype, seed=seed, **timing)
            rows.append(row)
            if on_result is not None:
                on_result(row)
    return rows
