"""The Noisy RNN paper's own recurrent layer (THEORY.md section 2), with an ``nn.RNN``-compatible interface.

Deterministic step (explicit Euler with a step ``d``, fixed or learned per unit)::

    Psi(h, x) = h + d * f(h, x),        f(h, x) = alpha * A h + tanh(W h + U x + b)
    A = beta (B - B^T) + (1 - beta) (B + B^T) - gamma_A I
    W = beta (C - C^T) + (1 - beta) (C + C^T) - gamma_W I

``B, C`` are free ``[H, H]`` parameters initialised ``N(0, (init_std / H)^2)`` (std divided by ``H``, not
``sqrt(H)``); ``U x + b`` is a linear encoder of the input. ``beta`` trades the skew-symmetric part against
the symmetric part, ``gamma`` shifts the spectrum left (contraction).

Named settings (see :meth:`NRNN.lipschitz`, :meth:`NRNN.antisymmetric`):

* no noise registered: the **Lipschitz RNN**;
* ``alpha=0, beta=1``: the **Antisymmetric RNN** ``h + d * tanh((C - C^T - gamma_W I) h + U x + b)``;
* :func:`nrnn_plugin.register_noise` on the module: the **Noisy RNN**. Noise goes through the same machinery as
  every other noisy layer (:class:`~nrnn_plugin.runtime.NoiseRuntime` and
  :class:`~nrnn_plugin.diffusion.AffineNoise`): ``h_next = gate * Psi(h, x) + mult * h + add``, one draw per
  layer and sequence, Ito convention (multiplicative noise uses the state before the step). Eval, or any
  forward the runtime declares noise-free, is the deterministic recursion.

Which step scales the noise (a choice, documented here): the diffusion is scaled by ``NoiseConfig.dt``, the
SDE time step of the *noise*, exactly as for LSTM/GRU; the layer's own step ``d`` scales the *drift* only.

* Euler-Maruyama: ``h_next = h + d * f + sqrt(cfg.dt) * (sigma_add * xi + sigma_mult * h * xi')``. The default
  ``cfg.dt = 1`` injects ``sigma`` per step, the magnitude of the research code's additive noise; the textbook
  discretisation of ``dh = f dt + sigma dB`` is ``NoiseConfig(dt=layer.dt)`` for a fixed step. Tying the noise
  to a *learned* ``d`` instead would let the optimizer turn the noise down by shrinking the step.
* ``scheme="reference"`` with ``cfg.dt = 1`` is the research code's update exactly:
  ``h + d * m * f + sigma_add * xi``, ``m ~ U[1 - sigma_mult, 1]`` (the core scheme computes
  ``h + cfg.dt * m * (Psi - h)`` and ``Psi - h = d * f``). A ``cfg.dt != 1`` multiplies the drift step.

Kernels: padded (uniform-length) input runs a sequence kernel with a hand-written backward
(:class:`NRNNSequence`: no autograd graph in the loop, one recurrent GEMM per step in each direction, the weight
gradient as one GEMM over all steps); packed input, noise coefficients that require grad, ``torch.func``
transforms, forward-mode AD and ``nrnn_plugin.layers.use_kernel("reference")`` (needed for double backward)
run the plain autograd unroll (:func:`unroll`). Both compute the same recursion.

Shapes follow ``nn.RNN``: input ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``), ``[T, I]`` unbatched, or a
``PackedSequence`` (sorted or not); ``h_0`` and ``h_n`` are ``[num_layers * D, B, H]``; the output is
``[T, B, D * H]`` (``D = 2`` if bidirectional).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from torch.autograd.function import once_differentiable

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.diffusion import AffineNoise
from nrnn_plugin.layers.functions import needs_reference
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.recurrent import current_kernel
from nrnn_plugin.runtime import NoiseRuntime

__all__ = ["NRNN", "NRNNCell", "NoisyNRNN", "NoisyNRNNCell", "NRNNSequence", "structured_matrix", "nrnn_step", "unroll"]


def _check_sizes(owner: str, **sizes: Any) -> None:
    """Each size must be an ``int >= 1``: ``TypeError`` for another type, ``ValueError`` below 1."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
        if value < 1:
            raise ValueError(f"{owner}: {name} must be an integer >= 1, got {value!r}")


def structured_matrix(free: Tensor, beta: float, gamma: float) -> Tensor:
    """``beta (M - M^T) + (1 - beta) (M + M^T) - gamma I`` for a square ``free = M`` (``[H, H]``).

    Computed as ``M + (1 - 2 beta) M^T - gamma I``. Its symmetric part is ``(1 - beta)(M + M^T) - gamma I``:
    exactly ``-gamma I`` when ``beta = 1``.
    """
    eye = torch.eye(free.shape[0], dtype=free.dtype, device=free.device)
    return free + (1.0 - 2.0 * beta) * free.transpose(0, 1) - gamma * eye


def nrnn_step(xw: Tensor, h: Tensor, kernel: Tensor, step: Tensor | float, linear_part: bool) -> Tensor:
    """One deterministic step ``Psi(h, x) = h + d * (alpha A h + tanh(W h + U x + b))``.

    Args:
        xw: the projected input ``U x + b``, ``[B, H]``.
        h: the state entering the step, ``[B, H]``.
        kernel: ``[alpha A; W]`` stacked as ``[2H, H]`` when ``linear_part``, else ``W`` as ``[H, H]``.
        step: ``d``, a float or a ``[H]`` tensor.
        linear_part: whether the ``alpha A h`` term is present (``alpha != 0``).
    """
    z = F.linear(h, kernel)
    if linear_part:
        linear, pre = z.chunk(2, dim=1)
        drift = linear + torch.tanh(pre + xw)
    else:
        drift = torch.tanh(z + xw)
    return h + step * drift


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


def _check_positive(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_real(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)


class _DriftParameters(nn.Module):
    """Hyper-parameters and parameter helpers shared by :class:`NRNN` and :class:`NRNNCell`."""

    def _init_hyper(
        self, owner: str, *, alpha: float, beta: float, gamma_A: float, gamma_W: float, dt: float, learn_dt: bool, init_std: float
    ) -> None:
        self.alpha = _check_real(owner, "alpha", alpha)
        self.beta = _check_real(owner, "beta", beta)
        self.gamma_A = _check_real(owner, "gamma_A", gamma_A)
        self.gamma_W = _check_real(owner, "gamma_W", gamma_W)
        self.dt = _check_positive(owner, "dt", dt)
        if not isinstance(learn_dt, bool):
            raise TypeError(f"{owner}: learn_dt must be True or False, got {learn_dt!r}")
        self.learn_dt = learn_dt
        self.init_std = _check_positive(owner, "init_std", init_std)

    def _make_parameters(self, suffix: str, input_size: int, factory: dict[str, Any]) -> None:
        H = self.hidden_size
        self.register_parameter("weight_ih" + suffix, nn.Parameter(torch.empty(H, input_size, **factory)))
        if self.bias:
            self.register_parameter("bias_ih" + suffix, nn.Parameter(torch.empty(H, **factory)))
        self.register_parameter("weight_B" + suffix, nn.Parameter(torch.empty(H, H, **factory)))
        self.register_parameter("weight_C" + suffix, nn.Parameter(torch.empty(H, H, **factory)))
        if self.learn_dt:
            self.register_parameter("step_raw" + suffix, nn.Parameter(torch.empty(H, **factory)))

    def _reset_suffix(self, suffix: str) -> None:
        H = self.hidden_size
        with torch.no_grad():
            weight_ih = getattr(self, "weight_ih" + suffix)
            bound = 1.0 / math.sqrt(weight_ih.shape[1]) if weight_ih.shape[1] > 0 else 0.0
            weight_ih.uniform_(-bound, bound)  # nn.Linear's default range
            if self.bias:
                getattr(self, "bias_ih" + suffix).uniform_(-bound, bound)
            getattr(self, "weight_B" + suffix).normal_(0.0, self.init_std / H)
            getattr(self, "weight_C" + suffix).normal_(0.0, self.init_std / H)
            if self.learn_dt:
                getattr(self, "step_raw" + suffix).fill_(_inverse_softplus(self.dt))

    def _matrices(self, suffix: str) -> tuple[Tensor, Tensor]:
        return (
            structured_matrix(getattr(self, "weight_B" + suffix), self.beta, self.gamma_A),
            structured_matrix(getattr(self, "weight_C" + suffix), self.beta, self.gamma_W),
        )

    def _kernel(self, suffix: str) -> Tensor:
        A, W = self._matrices(suffix)
        if self.alpha == 0.0:
            return W
        return torch.cat([self.alpha * A, W], dim=0)

    def _step(self, suffix: str) -> Tensor | float:
        if self.learn_dt:
            return F.softplus(getattr(self, "step_raw" + suffix))
        return self.dt

    def _drift_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, gamma_A={self.gamma_A}, gamma_W={self.gamma_W}, "
            f"dt={self.dt}, learn_dt={self.learn_dt}, init_std={self.init_std}"
        )


class NRNN(_DriftParameters):
    """Multi-layer Noisy-RNN / Lipschitz-RNN layer with the interface of ``nn.RNN``.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as in ``nn.RNN``
            (``bias`` is the encoder bias ``b``; ``dropout`` acts between layers, in training only).
        alpha: weight of the linear term ``A h`` (``0`` removes it: Antisymmetric RNN).
        beta: skew-symmetry of ``A`` and ``W`` (``1``: skew-symmetric up to ``-gamma I``).
        gamma_A, gamma_W: diagonal shifts of ``A`` and ``W``.
        dt: the Euler step ``d`` (initial value when ``learn_dt``).
        learn_dt: learn a positive step per unit, ``d = softplus(step_raw)`` (the research code's ``d``).
        init_std: ``B`` and ``C`` start ``N(0, (init_std / hidden_size)^2)``.

    Parameters of layer ``k`` (suffix ``_l{k}``, plus ``_reverse`` for the backward direction):
    ``weight_ih`` ``[H, I_k]`` (``U``), ``bias_ih`` ``[H]`` (``b``), ``weight_B`` / ``weight_C`` ``[H, H]`` (the free
    matrices of ``A`` / ``W``), ``step_raw`` ``[H]`` (only with ``learn_dt``).

    ``forward(input, hx=None) -> (output, h_n)`` exactly like ``nn.RNN``. Plain ``NRNN`` is deterministic;
    :func:`nrnn_plugin.register_noise` switches it to :class:`NoisyNRNN` (same parameters and state_dict).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        alpha: float = 1.0,
        beta: float = 0.75,
        gamma_A: float = 0.001,
        gamma_W: float = 0.001,
        dt: float = 0.01,
        learn_dt: bool = False,
        init_std: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_sizes(owner, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{owner}: dropout must be a number in [0, 1], got {dropout!r}")
        for name, value in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            if not isinstance(value, bool):
                raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self._init_hyper(
            owner, alpha=alpha, beta=beta, gamma_A=gamma_A, gamma_W=gamma_W, dt=dt, learn_dt=learn_dt, init_std=init_std
        )
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                self._make_parameters(self._suffix(layer, direction), layer_input, factory)
        self.reset_parameters()

    # ------------------------------------------------------------------ named settings
    @classmethod
    def lipschitz(cls, input_size: int, hidden_size: int, **kwargs: Any) -> NRNN:
        """The Lipschitz RNN: the NRNN drift without noise (defaults ``beta=0.75``, ``gamma=0.001``)."""
        return cls(input_size, hidden_size, **kwargs)

    @classmethod
    def antisymmetric(cls, input_size: int, hidden_size: int, *, gamma: float = 0.001, **kwargs: Any) -> NRNN:
        """The Antisymmetric RNN: ``alpha=0, beta=1``, so ``W = C - C^T - gamma I`` and no ``A h`` term."""
        for key in ("alpha", "beta", "gamma_W"):
            if key in kwargs:
                raise TypeError(f"NRNN.antisymmetric: {key} is fixed by the antisymmetric setting, got {key}={kwargs[key]!r}")
        kwargs.setdefault("gamma_A", gamma)
        return cls(input_size, hidden_size, alpha=0.0, beta=1.0, gamma_W=gamma, **kwargs)

    # ------------------------------------------------------------------ parameters
    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def _check_layer(self, layer: int, direction: int) -> str:
        directions = 2 if self.bidirectional else 1
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"{type(self).__name__}: layer must be in [0, {self.num_layers - 1}], got {layer}")
        if not 0 <= direction < directions:
            raise ValueError(f"{type(self).__name__}: direction must be in [0, {directions - 1}], got {direction}")
        return self._suffix(layer, direction)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (``U, b`` like ``nn.Linear``; ``B, C`` ``N(0, (init_std/H)^2)``; step = dt)."""
        directions = 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            for direction in range(directions):
                self._reset_suffix(self._suffix(layer, direction))

    def matrices(self, layer: int = 0, direction: int = 0) -> tuple[Tensor, Tensor]:
        """The structured ``(A, W)`` of a layer, each ``[H, H]`` (``A`` without the factor ``alpha``)."""
        return self._matrices(self._check_layer(layer, direction))

    def step_size(self, layer: int = 0, direction: int = 0) -> Tensor:
        """The Euler step ``d`` of a layer as a ``[H]`` tensor (``softplus(step_raw)`` when learned)."""
        suffix = self._check_layer(layer, direction)
        step = self._step(suffix)
        if isinstance(step, Tensor):
            return step
        weight = getattr(self, "weight_B" + suffix)
        return torch.full((self.hidden_size,), step, dtype=weight.dtype, device=weight.device)

    def flatten_parameters(self) -> None:
        """No-op, for code written against ``nn.RNNBase`` (e.g. ``DataParallel`` users)."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + ", " + self._drift_repr()

    # ------------------------------------------------------------------ forward
    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None) -> tuple[Tensor | PackedSequence, Tensor]:  # noqa: A002
        """Deterministic forward; same contract as ``nn.RNN.forward``."""
        return self._forward(input, hx, None)

    def _forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None, runtime: NoiseRuntime | None  # noqa: A002
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        owner = type(self).__name__
        directions = 2 if self.bidirectional else 1
        H = self.hidden_size
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            layout = SequenceLayout.from_batch_sizes(batch_sizes)
            batched = True
            if hx is not None and sorted_indices is not None:
                hx = hx.index_select(1, sorted_indices)
        else:
            if not isinstance(input, Tensor) or input.dim() not in (2, 3):
                shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
                raise ValueError(f"{owner}: input must be a 2-D (unbatched) or 3-D tensor or a PackedSequence, got {shape}")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            if hx is not None and not batched:
                if hx.dim() != 2:
                    raise ValueError(f"{owner}: for unbatched input hx must be 2-D [num_layers * D, H], got {tuple(hx.shape)}")
                hx = hx.unsqueeze(1)
            layout = SequenceLayout.padded(x.shape[0], x.shape[1])
            data = x.reshape(x.shape[0] * x.shape[1], x.shape[2])
            sorted_indices = unsorted_indices = None
        if data.shape[-1] != self.input_size:
            raise ValueError(f"{owner}: input.size(-1) must equal input_size={self.input_size}, got {data.shape[-1]}")
        expected = (self.num_layers * directions, layout.batch, H)
        if hx is None:
            hx = data.new_zeros(expected)
        elif tuple(hx.shape) != expected:
            raise ValueError(f"{owner}: expected hx of shape {expected}, got {tuple(hx.shape)}")

        output, h_n = self._run_layers(data, layout, hx, runtime)

        if isinstance(input, PackedSequence):
            out: Tensor | PackedSequence = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
            return out, h_n
        output = output.view(layout.steps, layout.batch, output.shape[1])
        if not batched:
            return output.squeeze(1), h_n.squeeze(1)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, h_n

    def _run_layers(
        self, data: Tensor, layout: SequenceLayout, hx: Tensor, runtime: NoiseRuntime | None
    ) -> tuple[Tensor, Tensor]:
        directions = 2 if self.bidirectional else 1
        layer_input = data
        finals: list[Tensor] = []
        for layer in range(self.num_layers):
            noise: list[AffineNoise | None] = [None] * directions
            if runtime is not None:
                draws = runtime.draw(
                    layout.rows, self.hidden_size, ("h",), directions=directions, device=data.device, dtype=data.dtype
                )
                noise = [d["h"] for d in draws]
            outs = []
            for direction in range(directions):
                suffix = self._suffix(layer, direction)
                out, h_last = unroll(
                    F.linear(layer_input, getattr(self, "weight_ih" + suffix), getattr(self, "bias_ih" + suffix, None)),
                    layout,
                    self._kernel(suffix),
                    self._step(suffix),
                    self.alpha != 0.0,
                    hx[layer * directions + direction],
                    noise[direction],
                    reverse=direction == 1,
                )
                outs.append(out)
                finals.append(h_last)
            layer_input = outs[0] if directions == 1 else torch.cat(outs, dim=1)
            if layer < self.num_layers - 1 and self.dropout > 0.0 and self.training:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(finals)


def _entering_state(previous: Tensor | None, init: Tensor, size: int, carried: int) -> Tensor:
    """The state entering a step: ``carried`` rows continue the previous step, the rest start from ``init``."""
    if carried == 0:
        return init[:size]
    assert previous is not None
    if carried == size:
        return previous[:size]
    return torch.cat([previous[:carried], init[carried:size]])


def unroll(
    xw: Tensor,
    layout: SequenceLayout,
    kernel: Tensor,
    step: Tensor | float,
    linear_part: bool,
    h0: Tensor,
    noise: AffineNoise | None,
    *,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """One NRNN layer and direction over a sequence in the packed row layout, with optional noise.

    Args:
        xw: projected inputs ``U x + b`` ``[N, H]`` in ``layout``'s row order.
        kernel, step, linear_part: see :func:`nrnn_step`.
        h0: initial states ``[B, H]`` (samples sorted by length, as the layout).
        noise: per-row coefficients ``[N, H]`` (``h_next = gate * Psi + mult * h + add``) or ``None``.
        reverse: process the steps last to first (backward direction).

    Returns:
        ``out`` ``[N, H]`` (the state after every step, noise included) and ``h_n`` ``[B, H]``.
    """
    if layout.uniform and current_kernel() != "reference" and not needs_reference(noise):
        return _sequence_kernel(xw, layout, kernel, step, linear_part, h0, noise, reverse)
    sizes = layout.sizes
    xw_steps = torch.split(xw, sizes)
    noise_steps = noise.split(sizes) if noise is not None and not noise.is_zero else None
    carried = layout.carried_rows(reverse)
    outputs: list[Tensor] = [xw.new_empty(0)] * layout.steps
    previous: Tensor | None = None
    for t in layout.order(reverse):
        h = _entering_state(previous, h0, sizes[t], carried[t])
        h_new = nrnn_step(xw_steps[t], h, kernel, step, linear_part)
        if noise_steps is not None:
            h_new = noise_steps[t].apply(h_new, h)
        outputs[t] = previous = h_new
    out = torch.cat(outputs)
    return out, layout.final_rows(out, reverse)


def _step_coefficient(coef: Tensor | float | None, steps: int, batch: int) -> Tensor | float | None:
    """A noise coefficient as ``[T, B, H or 1]`` (per-row tensors) or unchanged (numbers, 0-dim tensors)."""
    if isinstance(coef, Tensor) and coef.dim() == 2:
        return coef.view(steps, batch, coef.shape[1])
    return coef


def _sequence_kernel(
    xw: Tensor,
    layout: SequenceLayout,
    kernel: Tensor,
    step: Tensor | float,
    linear_part: bool,
    h0: Tensor,
    noise: AffineNoise | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """:func:`unroll` for a uniform layout through :class:`NRNNSequence` (time reversed for ``reverse``)."""
    steps, batch = layout.steps, layout.batch
    x = xw.view(steps, batch, xw.shape[1])
    coefs = [None, None, None] if noise is None else [_step_coefficient(c, steps, batch) for c in (noise.gate, noise.mult, noise.add)]
    if reverse:
        x = x.flip(0)
        coefs = [c.flip(0) if isinstance(c, Tensor) and c.dim() == 3 else c for c in coefs]
    out = NRNNSequence.apply(x, h0, kernel, step, linear_part, *coefs)
    h_n = out[-1]
    if reverse:
        out = out.flip(0)
    return out.reshape(steps * batch, out.shape[2]), h_n


def _at(coef: Tensor | float | None, t: int) -> Tensor | float | None:
    return coef[t] if isinstance(coef, Tensor) and coef.dim() == 3 else coef


class NRNNSequence(torch.autograd.Function):
    """The NRNN recursion over a whole padded sequence with a hand-written backward (BPTT).

    ``forward(xw [T, B, H], h0 [B, H], kernel [K H, H], step (float or [H]), linear_part, gate, mult, add)``
    returns the states after every step ``[T, B, H]``: ``h_{t+1} = gate_t * Psi(h_t) + mult_t * h_t + add_t``
    with ``Psi`` from :func:`nrnn_step`. Noise coefficients are ``None``, numbers, 0-dim tensors or
    ``[T, B, H or 1]`` tensors, treated as constants. Gradients flow to ``xw``, ``h0``, ``kernel`` and a tensor
    ``step``. The backward is not differentiable again (use the reference kernel for double backward).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        xw: Tensor,
        h0: Tensor,
        kernel: Tensor,
        step: Tensor | float,
        linear_part: bool,
        gate: Tensor | float | None,
        mult: Tensor | float | None,
        add: Tensor | float | None,
    ) -> Tensor:
        steps, _, hidden = xw.shape
        out = xw.new_empty(xw.shape)
        acts = xw.new_empty(xw.shape)  # tanh(W h + U x + b) per step
        learn_step = isinstance(step, Tensor) and step.requires_grad
        drifts = xw.new_empty(xw.shape) if learn_step else None
        kernel_t = kernel.t()
        h = h0
        for t in range(steps):
            z = torch.mm(h, kernel_t)
            if linear_part:
                u = torch.tanh(torch.add(z[:, hidden:], xw[t]), out=acts[t])
                if drifts is not None:
                    f = torch.add(z[:, :hidden], u, out=drifts[t])
                else:
                    f = z[:, :hidden].add_(u)
            else:
                u = torch.tanh(z.add_(xw[t]), out=acts[t])
                f = u
                if drifts is not None:
                    drifts[t].copy_(u)
            g, m, a = _at(gate, t), _at(mult, t), _at(add, t)
            h_next = out[t]
            if isinstance(step, Tensor):
                torch.addcmul(h, f, step, out=h_next)
            else:
                torch.add(h, f, alpha=step, out=h_next)
            if g is not None:
                h_next.mul_(g)
            if isinstance(m, Tensor):
                h_next.addcmul_(h, m)
            elif m is not None:
                h_next.add_(h, alpha=m)
            if a is not None:
                h_next.add_(a)
            h = h_next
        ctx.linear_part = linear_part
        ctx.step_value = step if not isinstance(step, Tensor) else None
        ctx.coefs = (gate, mult, add)
        ctx.save_for_backward(h0, kernel, out, acts, drifts, step if isinstance(step, Tensor) else None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        h0, kernel, out, acts, drifts, step_tensor = ctx.saved_tensors
        gate, mult, _ = ctx.coefs
        step = step_tensor if step_tensor is not None else ctx.step_value
        steps, batch, hidden = out.shape
        width = kernel.shape[0]
        grad_z = out.new_empty(steps, batch, width)  # d loss / d (h_t K^T), per step
        grad_psi = out.new_empty(out.shape) if drifts is not None else None
        # d Psi / d pre = step * tanh'(pre) = step * (1 - u^2), for all steps at once
        act_grad = torch.mul(acts, acts).neg_().add_(1.0).mul_(step)
        g_state = torch.zeros_like(h0)  # d loss / d h_{t+1} flowing from later steps
        linear_part = ctx.linear_part
        for t in range(steps - 1, -1, -1):
            g_total = g_state + grad_out[t]
            g_coef = _at(gate, t)
            dpsi = g_total * g_coef if g_coef is not None else g_total
            if grad_psi is not None:
                grad_psi[t] = dpsi
            if linear_part:
                torch.mul(dpsi, step, out=grad_z[t, :, :hidden])
                torch.mul(dpsi, act_grad[t], out=grad_z[t, :, hidden:])
            else:
                torch.mul(dpsi, act_grad[t], out=grad_z[t])
            g_state = torch.addmm(dpsi, grad_z[t], kernel)
            m_coef = _at(mult, t)
            if m_coef is not None:
                g_state.add_(g_total * m_coef)
        grad_x = grad_z[:, :, hidden:] if linear_part else grad_z
        grad_h0 = g_state if ctx.needs_input_grad[1] else None
        grad_kernel = None
        if ctx.needs_input_grad[2]:
            h_in = torch.cat([h0.unsqueeze(0), out[:-1]]).reshape(steps * batch, hidden)
            grad_kernel = torch.mm(grad_z.reshape(steps * batch, width).t(), h_in)
        grad_step = None
        if step_tensor is not None and ctx.needs_input_grad[3]:
            grad_step = (grad_psi * drifts).sum(dim=(0, 1))
        return grad_x.contiguous() if ctx.needs_input_grad[0] else None, grad_h0, grad_kernel, grad_step, None, None, None, None


class NRNNCell(_DriftParameters):
    """One step of the NRNN: ``h' = h + d * (alpha A h + tanh(W h + U x + b))``, like ``nn.RNNCell``.

    Args: as :class:`NRNN` (``input_size``, ``hidden_size``, ``bias`` and the drift settings). Parameters:
    ``weight_ih`` ``[H, I]``, ``bias_ih`` ``[H]``, ``weight_B``, ``weight_C`` ``[H, H]``, ``step_raw`` ``[H]`` (if
    ``learn_dt``). ``forward(input [B, I] or [I], hx [B, H] or [H] or None) -> h' [B, H]`` (``[H]`` unbatched).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        alpha: float = 1.0,
        beta: float = 0.75,
        gamma_A: float = 0.001,
        gamma_W: float = 0.001,
        dt: float = 0.01,
        learn_dt: bool = False,
        init_std: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_sizes(owner, input_size=input_size, hidden_size=hidden_size)
        if not isinstance(bias, bool):
            raise TypeError(f"{owner}: bias must be True or False, got {bias!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self._init_hyper(
            owner, alpha=alpha, beta=beta, gamma_A=gamma_A, gamma_W=gamma_W, dt=dt, learn_dt=learn_dt, init_std=init_std
        )
        self._make_parameters("", input_size, {"device": device, "dtype": dtype})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_suffix("")

    def matrices(self) -> tuple[Tensor, Tensor]:
        """The structured ``(A, W)``, each ``[H, H]``."""
        return self._matrices("")

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False") + ", " + self._drift_repr()

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:  # noqa: A002
        return self._forward(input, hx, None)

    def _forward(self, input: Tensor, hx: Tensor | None, runtime: NoiseRuntime | None) -> Tensor:  # noqa: A002
        owner = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{owner}: input must be 1-D [I] or 2-D [B, I], got {tuple(input.shape)}")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if x.shape[1] != self.input_size:
            raise ValueError(f"{owner}: input.size(-1) must equal input_size={self.input_size}, got {x.shape[1]}")
        if hx is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        else:
            h = hx if batched else hx.unsqueeze(0)
            if tuple(h.shape) != (x.shape[0], self.hidden_size):
                raise ValueError(f"{owner}: expected hx of shape {(x.shape[0], self.hidden_size)}, got {tuple(hx.shape)}")
        xw = F.linear(x, self.weight_ih, getattr(self, "bias_ih", None))
        h_new = nrnn_step(xw, h, self._kernel(""), self._step(""), self.alpha != 0.0)
        if runtime is not None:
            noise = runtime.draw(x.shape[0], self.hidden_size, ("h",), directions=0, device=x.device, dtype=x.dtype)[0]["h"]
            h_new = noise.apply(h_new, h)
        return h_new if batched else h_new.squeeze(0)


# ---------------------------------------------------------------------------------------------- noisy classes


def _validate(module: nn.Module, config: NoiseConfig) -> None:
    if config.target == "c":
        raise ValueError(
            f"NoiseConfig.target: expected 'h' or 'both' for {type(module).__name__} (it has no cell state), got 'c'"
        )


class NoisyNRNN(NRNN):
    """:class:`NRNN` with SDE noise on the hidden state while its runtime injects (training by default).

    Switched to by :func:`nrnn_plugin.register_noise` (class reassignment, no new parameters). Without an
    injecting runtime the forward is :class:`NRNN`'s deterministic forward.
    """

    nrnn_original_class: ClassVar[type[nn.Module]] = NRNN
    _nrnn_runtime: NoiseRuntime

    @classmethod
    def nrnn_validate(cls, module: nn.Module, config: NoiseConfig) -> None:
        """Reject ``target='c'`` (the NRNN has a hidden state only)."""
        _validate(module, config)

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None) -> tuple[Tensor | PackedSequence, Tensor]:  # noqa: A002
        runtime = getattr(self, "_nrnn_runtime", None)
        if runtime is None or not runtime.injecting(self.training):
            return self._forward(input, hx, None)
        return self._forward(input, hx, runtime)


class NoisyNRNNCell(NRNNCell):
    """:class:`NRNNCell` with SDE noise on the returned state while its runtime injects (training by default)."""

    nrnn_original_class: ClassVar[type[nn.Module]] = NRNNCell
    _nrnn_runtime: NoiseRuntime

    @classmethod
    def nrnn_validate(cls, module: nn.Module, config: NoiseConfig) -> None:
        """Reject ``target='c'`` (the NRNN has a hidden state only)."""
        _validate(module, config)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:  # noqa: A002
        runtime = getattr(self, "_nrnn_runtime", None)
        if runtime is None or not runtime.injecting(self.training):
            return self._forward(input, hx, None)
        return self._forward(input, hx, runtime)
