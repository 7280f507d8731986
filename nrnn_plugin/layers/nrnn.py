"""The Noisy RNN paper's own recurrent layer (``docs/method.md``, "the NRNN cell"), with an ``nn.RNN`` interface.

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

Kernels: :mod:`nrnn_plugin.layers.nrnn_kernel` (a sequence kernel with a hand-written backward for padded
input, the autograd unroll otherwise).

Shapes follow ``nn.RNN``: input ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``), ``[T, I]`` unbatched, or a
``PackedSequence`` (sorted or not); ``h_0`` and ``h_n`` are ``[num_layers * D, B, H]``; the output is
``[T, B, D * H]`` (``D = 2`` if bidirectional).
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.counter_noise import StateNoise
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.nrnn_drift import DriftParameters, structured_matrix
from nrnn_plugin.layers.nrnn_kernel import nrnn_step, unroll
from nrnn_plugin.layers.sequence_io import batched_state, flatten_input, prepare_state, restore_output, restore_state
from nrnn_plugin.runtime import NoiseRuntime, refuse_scripting, runtime_of
from nrnn_plugin.validation import check_bool, check_int, check_real

__all__ = ["NRNN", "NRNNCell", "NoisyNRNN", "NoisyNRNNCell", "structured_matrix"]


def _check_sizes(owner: str, **sizes: Any) -> None:
    """Each size must be an integer ``>= 1`` (``TypeError`` for another type, ``ValueError`` below 1)."""
    for name, value in sizes.items():
        check_int(f"{owner}.{name}", value, minimum=1)


class NRNN(DriftParameters):
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
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = check_bool(f"{owner}.bias", bias)
        self.batch_first = check_bool(f"{owner}.batch_first", batch_first)
        self.dropout = check_real(f"{owner}.dropout", dropout, minimum=0.0, maximum=1.0)
        self.bidirectional = check_bool(f"{owner}.bidirectional", bidirectional)
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
                raise TypeError(
                    f"NRNN.antisymmetric: {key} is fixed by the antisymmetric setting, got {key}={kwargs[key]!r}"
                )
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
    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:  # noqa: A002
        """Deterministic forward; same contract as ``nn.RNN.forward``."""
        return self._forward(input, hx, None)

    def _forward(
        self,
        input: Tensor | PackedSequence,
        hx: Tensor | None,
        runtime: NoiseRuntime | None,  # noqa: A002
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        owner = type(self).__name__
        directions = 2 if self.bidirectional else 1
        flat = flatten_input(input, batch_first=self.batch_first, owner=owner)
        if flat.data.shape[-1] != self.input_size:
            raise ValueError(
                f"{owner}: input.size(-1) must equal input_size={self.input_size}, got {flat.data.shape[-1]}"
            )
        expected = (self.num_layers * directions, flat.layout.batch, self.hidden_size)
        if hx is None:
            state = flat.data.new_zeros(expected)
        else:
            if not flat.batched and hx.dim() != 2:
                raise ValueError(
                    f"{owner}: for unbatched input hx must be 2-D [num_layers * D, H], got {tuple(hx.shape)}"
                )
            state = prepare_state(flat, batched_state(flat, hx))
            if tuple(state.shape) != expected:
                raise ValueError(f"{owner}: expected hx of shape {expected}, got {tuple(hx.shape)}")
        output, h_n = self._run_layers(flat.data, flat.layout, state, runtime)
        return restore_output(flat, output), restore_state(flat, h_n)

    def _run_layers(
        self, data: Tensor, layout: SequenceLayout, hx: Tensor, runtime: NoiseRuntime | None
    ) -> tuple[Tensor, Tensor]:
        directions = 2 if self.bidirectional else 1
        layer_input = data
        finals: list[Tensor] = []
        for layer in range(self.num_layers):
            noise: list[StateNoise] = [None] * directions
            if runtime is not None:
                draws = runtime.draw_lazy(
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


class NRNNCell(DriftParameters):
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
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.bias = check_bool(f"{owner}.bias", bias)
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
        return (
            f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False") + ", " + self._drift_repr()
        )

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
                raise ValueError(
                    f"{owner}: expected hx of shape {(x.shape[0], self.hidden_size)}, got {tuple(hx.shape)}"
                )
        xw = F.linear(x, getattr(self, "weight_ih"), getattr(self, "bias_ih", None))  # noqa: B009 (typed as Tensor)
        h_new = nrnn_step(xw, h, self._kernel(""), self._step(""), self.alpha != 0.0)
        if runtime is not None:
            noise = runtime.draw(x.shape[0], self.hidden_size, ("h",), directions=0, device=x.device, dtype=x.dtype)[0][
                "h"
            ]
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

    @classmethod
    def nrnn_validate(cls, module: nn.Module, config: NoiseConfig) -> None:
        """Reject ``target='c'`` (the NRNN has a hidden state only)."""
        _validate(module, config)

    def __prepare_scriptable__(self) -> NoReturn:
        refuse_scripting(self)

    @torch.compiler.disable  # torch.compile: runs eagerly (a graph break), as the noisy RNN modules do
    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:  # noqa: A002
        runtime = runtime_of(self)
        if runtime is None or not runtime.injecting(self.training):
            return self._forward(input, hx, None)
        return self._forward(input, hx, runtime)


class NoisyNRNNCell(NRNNCell):
    """:class:`NRNNCell` with SDE noise on the returned state while its runtime injects (training by default)."""

    nrnn_original_class: ClassVar[type[nn.Module]] = NRNNCell

    @classmethod
    def nrnn_validate(cls, module: nn.Module, config: NoiseConfig) -> None:
        """Reject ``target='c'`` (the NRNN has a hidden state only)."""
        _validate(module, config)

    def __prepare_scriptable__(self) -> NoReturn:
        refuse_scripting(self)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:  # noqa: A002
        runtime = runtime_of(self)
        if runtime is None or not runtime.injecting(self.training):
            return self._forward(input, hx, None)
        return self._forward(input, hx, runtime)
