"""The one definition of the noise (``nrnn_plugin/philox.py``): Philox answers, statistics, the stream layout of keys,
and what a counter-based stream means for users (streams per module and rank, plain-int state, replay by key).

The compiled generator's bit identity with this definition is in ``tests/test_compiled_kernels.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin import philox
from nrnn_plugin.counter_noise import CounterNoise, key_tensor
from nrnn_plugin.noise import NoiseKey, NoiseSource, derive_seed
from nrnn_plugin.runtime import recording, replaying, runtime_of

# Random123's known-answer vectors for philox4x32_10: (counter, key, result)
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def test_philox_gives_the_published_answers_in_python_and_in_tensor_ops():
    for counter, key, expected in KNOWN_ANSWERS:
        assert philox.philox4x32_reference(counter, key) == expected
        block = counter[0] | (counter[1] << 32)
        block = block - (1 << 64) if block >= (1 << 63) else block  # int64 bit pattern
        words = philox._philox(torch.tensor([block]), counter[2] | (counter[3] << 32), key[0] | (key[1] << 32))
        assert tuple(int(w) & 0xFFFFFFFF for w in words) == expected


def _exact_box_muller(seed: int, offset: int, count: int) -> torch.Tensor:
    """Float64 Box-Muller of the same uniforms (what the float32 polynomials approximate)."""
    blocks = torch.arange(0, count // 4, dtype=torch.int64)
    r = [w.long() & 0xFFFFFFFF for w in philox._philox(blocks, offset, seed)]
    ra = torch.stack([r[0], r[2]], 1).reshape(-1).double()
    rb = torch.stack([r[1], r[3]], 1).reshape(-1).double()
    u = (torch.floor(ra / 256) + 1) * 2.0**-24
    v = torch.floor(rb / 256)
    theta = math.pi / 2 * (torch.floor(v / 2**22) + ((v % 2**22) * 2 + 1) * 2.0**-23 - 0.5)
    radius = torch.sqrt(-2 * torch.log(u))
    return torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], 1).reshape(-1)


def test_the_float32_transform_is_within_5e_7_of_an_exact_box_muller():
    z = philox.gaussian(123, 7, 0, 1 << 16)
    assert z.dtype == torch.float32
    assert (z.double() - _exact_box_muller(123, 7, 1 << 16)).abs().max() < 5e-7


def test_any_range_of_a_stream_is_the_same_numbers():
    full = philox.gaussian(9, 9, 0, 4096)
    for start, count in ((1, 5), (3, 130), (1027, 65), (4000, 96)):
        assert torch.equal(philox.gaussian(9, 9, start, count), full[start : start + count])
    # far indices (the block counter's high word) and the largest keys are valid
    assert philox.gaussian((1 << 64) - 1, (1 << 64) - 1, (1 << 34) - 7, 64).isfinite().all()


def test_statistics_of_a_million_draws():
    """Moments, tails, the Kolmogorov-Smirnov distance and lag correlations within 5 standard errors (fixed key)."""
    n = 1 << 20
    z = philox.gaussian(2024, 0, 0, n).double()
    se = 1.0 / math.sqrt(n)
    centred = z - z.mean()
    var = centred.square().mean()
    assert abs(z.mean()) < 5 * se
    assert abs(var - 1.0) < 5 * math.sqrt(2.0) * se
    assert abs((centred**3).mean() / var**1.5) < 5 * math.sqrt(6.0) * se
    assert abs((centred**4).mean() / var**2 - 3.0) < 5 * math.sqrt(24.0) * se
    for lag in (1, 2, 3, 4, 64):
        assert abs((centred[:-lag] * centred[lag:]).mean() / var) < 5 * se
    tail = (z.abs() > 3).double().mean()
    assert abs(tail - 2.6998e-3) < 5 * math.sqrt(2.7e-3 / n)
    ordered = z.sort().values
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert (grid - torch.special.ndtr(ordered)).abs().max() < 1.95 / math.sqrt(n)  # KS at 0.1 %
    # neighbouring offsets and seeds are independent streams
    for other in (philox.gaussian(2024, 1, 0, n), philox.gaussian(2025, 0, 0, n)):
        assert abs((z * other.double()).mean()) < 5 * se


def test_key_layout_is_planar_and_the_same_in_every_dtype():
    key = NoiseKey(seed=5, offset=3, shape=(2, 6, 7), planes=(4, 3))
    assert key.starts() == [[0, 24], [42, 66]]  # direction-major, then plane; each plane rows x width
    draw = key_tensor(key, "cpu", torch.float64)
    assert draw.shape == (2, 6, 7)
    assert torch.equal(draw[1, :, 4:], philox.gaussian(5, 3, 66, 18).view(6, 3).double())
    assert torch.equal(key_tensor(key, "cpu", torch.float32).double(), draw)


def test_counter_noise_materialises_what_the_runtime_would_give():
    cfg = nrnn.NoiseConfig(additive=0.2, multiplicative=0.1, seed=0)
    lstm = nrnn.register_noise(nn.LSTM(3, 5, bidirectional=True), cfg)
    runtime = runtime_of(lstm)
    assert runtime is not None
    with recording(lstm) as tapes:
        lazy = runtime.draw_lazy(12, 5, ("h",), directions=2, device=torch.device("cpu"), dtype=torch.float64)
    assert all(isinstance(d["h"], CounterNoise) for d in lazy)
    with replaying(lstm, tapes):
        eager = runtime.draw(12, 5, ("h",), directions=2, device=torch.device("cpu"), dtype=torch.float64)
    for d in range(2):
        noise = lazy[d]["h"]
        assert isinstance(noise, CounterNoise)
        made = noise.coefficients("cpu", torch.float64)
        assert torch.equal(made.add, eager[d]["h"].add) and torch.equal(made.mult, eager[d]["h"].mult)


def test_streams_per_module_and_rank_reproducible_with_plain_int_state():
    a, b = NoiseSource("encoder", seed=1), NoiseSource("decoder", seed=1)
    assert a.stream_seed == derive_seed(1, "encoder", 0) != b.stream_seed
    rank1 = NoiseSource("encoder", seed=1)
    rank1._rank = 1
    assert rank1.stream_seed != a.stream_seed
    first = a.draw((3, 4), device="cpu", dtype=torch.float32)
    second = a.draw((3, 4), device="cpu", dtype=torch.float32)
    assert isinstance(first, NoiseKey) and (first.offset, second.offset) == (0, 1)
    state = a.state_dict()
    assert state == {"name": "encoder", "seed": 1, "offset": 2, "generators": {}}
    fresh = NoiseSource("encoder", seed=None)
    fresh.load_state_dict(state)
    assert fresh.draw((3, 4), device="cpu", dtype=torch.float32) == NoiseKey(a.stream_seed, 2, (3, 4), (4,))


def test_replay_is_by_key_and_stores_no_numbers():
    lstm = nrnn.register_noise(nn.GRU(3, 4), nrnn.NoiseConfig(additive=0.1, multiplicative=0.1, seed=3)).train()
    x = torch.randn(6, 2, 3)
    with recording(lstm) as tapes:
        out, _ = lstm(x)
    assert all(isinstance(d, NoiseKey) for d in tapes[""].draws)
    with replaying(lstm, tapes):
        again, _ = lstm(x)
    assert torch.equal(out, again)
    assert not torch.equal(lstm(x)[0], out)  # outside the replay the stream goes on
