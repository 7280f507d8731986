"""The definition of the noise: counter-based Gaussians keyed by ``(seed, offset)``, in plain PyTorch ops.

Every Gaussian the built-in noise source produces is element ``g`` of the stream keyed by ``(seed, offset)``
(both unsigned 64-bit). The compiled kernels (``nrnn_plugin/compiled/csrc/philox.h``) compute the same numbers
bit for bit inside their loops; this module is the readable definition and the fallback where no compiler
exists (``tests/test_philox.py`` checks both against each other and against the published Philox answers).

Definition of element ``g`` (integers modulo ``2**32`` unless stated; float operations are IEEE binary32 with
round-to-nearest-even, one rounding per operation, no fused multiply-add, in the order written):

1. block ``b = g >> 2``, lane ``j = g & 3``;
2. ``(r0, r1, r2, r3) = Philox4x32-10(counter=(b mod 2^32, b >> 32, offset mod 2^32, offset >> 32),
   key=(seed mod 2^32, seed >> 32))`` (Salmon et al. 2011, Random123's ``philox4x32_10``);
3. lanes 0 and 1 take the pair ``(ra, rb) = (r0, r1)``, lanes 2 and 3 take ``(r2, r3)``;
4. radius ``R = sqrt(-2 ln u)`` with ``u = ((ra >> 8) + 1) 2^-24`` in ``(0, 1]`` (exact) and the ``ln`` of
   :func:`_log_u` (a degree-7 ``atanh`` series on the reduced mantissa); ``sqrt`` correctly rounded;
5. angle ``theta = pi/2 (q + x)`` with ``v = rb >> 8``, quadrant ``q = v >> 22``,
   ``x = (2 (v mod 2^22) + 1) 2^-23 - 0.5`` (exact), ``sin``/``cos`` of ``y = x pi/2`` by short polynomials,
   rotated by ``q`` quarter turns;
6. lane ``j`` even: ``R cos(theta)``, odd: ``R sin(theta)``.

The values are float32 (float64 layers use them converted exactly, so one seed gives the same noise in every
dtype and on every device). Their error against an exact Box-Muller of the same uniforms is below 5e-7;
``|z| <= sqrt(48 ln 2) = 5.77``. Cost: about 4x ``torch.randn`` on 2 threads for the same count (the compiled
generator is faster than ``torch.randn``).

This module imports nothing from the package.
"""

from __future__ import annotations

import struct

import torch
from torch import Tensor

__all__ = ["gaussian", "philox4x32_reference", "CONSTANTS", "MASK64"]

MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # key increments (Weyl sequence)
_ROUNDS = 10


def _f32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


#: Float32 constants of the transforms (relative least-squares fits on ``[sqrt(1/2), sqrt(2)]`` for ``ln`` and
#: ``|y| <= pi/4`` for ``sin``/``cos``), written as the exact decimal values of the float32 numbers.
CONSTANTS = {
    "L1": 0.3333338797092438,
    "L2": 0.19988688826560974,
    "L3": 0.14937655627727509,
    "S1": -0.16666653752326965,
    "S2": 0.00833214819431305,
    "S3": -0.00019513930601533502,
    "C1": -0.5,
    "C2": 0.04166661947965622,
    "C3": -0.0013886665692552924,
    "C4": 2.4382299670833163e-05,
    "LN2_HI": 0.693359375,  # 355/512: e * LN2_HI is exact
    "LN2_LO": _f32(0.6931471805599453 - 0.693359375),
    "SQRT2": _f32(1.4142135623730951),
    "PIO2": _f32(1.5707963267948966),
}


def philox4x32_reference(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    """Philox4x32-10 of one block on Python ints (the readable definition; known-answer tests)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(_ROUNDS):
        if r:
            k0, k1 = (k0 + _W0) & MASK32, (k1 + _W1) & MASK32
        p0, p1 = _M0 * c0, _M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & MASK32, p1 & MASK32, ((p0 >> 32) ^ c3 ^ k1) & MASK32, p0 & MASK32
    return c0, c1, c2, c3


def _signed32(value: int) -> int:
    value &= MASK32
    return value - (1 << 32) if value >= (1 << 31) else value


def _mulhilo(word: Tensor, multiplier: int) -> tuple[Tensor, Tensor]:
    """``(hi, lo)`` 32-bit halves (int32 bit patterns) of ``word * multiplier`` for uint32 values in int64.

    The product is below ``2**64``; ATen's int64 multiplication wraps modulo ``2**64``, so the bits are those
    of the unsigned product (only reinterpreted, never compared). Little-endian: word 0 is the low half.
    """
    halves = (word * multiplier).view(torch.int32)
    return halves[1::2], halves[0::2]


def _widen(word: Tensor) -> Tensor:
    """An int32 bit pattern as the int64 value in ``[0, 2**32)``."""
    return word.view(torch.uint32).to(torch.int64)


def _philox(blocks: Tensor, offset: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10 of the int64 block indices ``blocks``: four int32 tensors (uint32 bit patterns)."""
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    o0, o1 = offset & MASK32, (offset >> 32) & MASK32
    c0 = blocks & MASK32
    high = blocks >> 32
    # round 0: the offset words are Python ints
    p1 = _M1 * o0
    hi0, lo0 = _mulhilo(c0, _M0)
    x0 = high.to(torch.int32).bitwise_xor_(_signed32((p1 >> 32) ^ k0))
    x1: Tensor | int = _signed32(p1 & MASK32)  # the same for every block until round 1
    x2 = hi0.bitwise_xor(_signed32(o1 ^ k1))
    x3 = lo0
    for _ in range(1, _ROUNDS):
        k0, k1 = (k0 + _W0) & MASK32, (k1 + _W1) & MASK32
        hi0, lo0 = _mulhilo(_widen(x0), _M0)
        hi1, lo1 = _mulhilo(_widen(x2), _M1)
        n0 = hi1.bitwise_xor(x1).bitwise_xor_(_signed32(k0))
        n2 = hi0.bitwise_xor(x3).bitwise_xor_(_signed32(k1))
        x0, x1, x2, x3 = n0, lo1, n2, lo0
    assert isinstance(x1, Tensor)
    return x0, x1, x2, x3


def _log_u(m: Tensor) -> Tensor:
    """``ln(m 2^-24)`` in float32 for int32 ``m`` in ``[1, 2^24]`` (step 4 of the definition)."""
    K = CONSTANTS
    bits = m.to(torch.float32).view(torch.int32)  # exact conversion
    e = (bits >> 23) - (127 + 24)
    f = ((bits & 0x007FFFFF) | 0x3F800000).view(torch.float32)  # u = f 2^e, f in [1, 2)
    big = f > K["SQRT2"]
    f = f * (1.0 - 0.5 * big.to(torch.float32))  # exact select of f or f / 2 (torch.where is slower on CPU)
    ef = (e + big.to(torch.int32)).to(torch.float32)
    s = (f - 1.0) / (f + 1.0)
    s2 = s * s
    p = s2 * K["L3"]
    p += K["L2"]
    p *= s2
    p += K["L1"]
    p *= s2
    p *= s
    t = s + p
    t += t  # 2 atanh(s) = ln f
    low = ef * K["LN2_LO"]
    low += t
    ef *= K["LN2_HI"]
    return low.add_(ef)


def _box_muller(ra: Tensor, rb: Tensor) -> tuple[Tensor, Tensor]:
    """Two float32 Gaussians per pair of uint32 words (steps 4 to 6)."""
    K = CONSTANTS
    m = (ra >> 8).bitwise_and_(0x00FFFFFF).add_(1)  # logical shift of the uint32 pattern
    # ATen's CPU float sqrt is not always correctly rounded: a float64 sqrt rounded once to float32 is
    # (the double-rounding argument holds for sqrt), matching the compiled kernels' std::sqrt(float).
    radius = _log_u(m).mul_(-2.0).double().sqrt_().float()
    v = (rb >> 8).bitwise_and_(0x00FFFFFF)
    q = v >> 22
    y = v.bitwise_and_(0x3FFFFF).mul_(2).add_(1).to(torch.float32)
    y *= 2.0**-23
    y -= 0.5
    y *= K["PIO2"]
    y2 = y * y
    sin = y2 * K["S3"]
    sin += K["S2"]
    sin *= y2
    sin += K["S1"]
    sin *= y2
    sin *= y
    sin += y
    cos = y2 * K["C4"]
    cos += K["C3"]
    cos *= y2
    cos += K["C2"]
    cos *= y2
    cos += K["C1"]
    cos *= y2
    cos += 1.0
    # rotate by q quarter turns: exact selects written as products with 0/1 and +-1
    swap = (q & 1).to(torch.float32)
    keep = 1.0 - swap
    sign_c = 1.0 - 2.0 * ((q == 1) | (q == 2)).to(torch.float32)
    sign_s = 1.0 - 2.0 * (q >= 2).to(torch.float32)
    c = sin * swap
    c += cos * keep
    s = cos * swap
    s += sin * keep
    c *= sign_c
    s *= sign_s
    return c.mul_(radius), s.mul_(radius)


def gaussian(seed: int, offset: int, start: int, count: int, *, device: torch.device | str = "cpu") -> Tensor:
    """Elements ``start .. start + count - 1`` of the stream ``(seed, offset)``: float32 ``Tensor[count]``.

    ``seed`` and ``offset`` are taken modulo ``2**64``; ``start + count`` must not exceed ``2**64``.
    """
    if count < 0 or start < 0 or start + count > MASK64 + 1:
        raise ValueError(f"gaussian: need 0 <= start and 0 <= count with start + count <= 2**64, got {start}, {count}")
    if count == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    first, last = start >> 2, (start + count - 1) >> 2
    blocks = torch.arange(first, last + 1, dtype=torch.int64, device=device)  # < 2**62: no sign trouble
    r0, r1, r2, r3 = _philox(blocks, offset & MASK64, seed & MASK64)
    z0, z1 = _box_muller(r0, r1)
    z2, z3 = _box_muller(r2, r3)
    z = torch.stack([z0, z1, z2, z3], dim=1).reshape(-1)
    lead = start - (first << 2)
    return z[lead : lead + count]
