"""Sequence kernels with a hand-written backward: one ``torch.autograd.Function`` per layer and direction.

Each kernel runs the whole noisy recurrence of one layer and one direction, for the modes of
``nn.RNNBase``: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` and ``"RNN_RELU"``. The contract is that of
:func:`~nrnn_plugin.layers.reference.reference_unroll` (same arguments, same results, same gradients)::

    function_kernel(mode, LayerPass(x [N, I], layout, weights, h0 [B, P], c0 [B, H] | None,
                    noise_h, noise_c, reverse)) -> (out [N, P], h_n [B, P], c_n [B, H] | None)

(``P = H`` except for an LSTM with a projection ``weights.w_hr [P, H]``, ``nn.LSTM(proj_size=P)``.)

Why it is fast (the autograd unroll pays autograd's per-op overhead at every step, forward and backward):

* the forward runs without an autograd graph and writes into buffers allocated once per call (``out=``
  variants and in-place ops); per-step views come from one ``torch.split`` per buffer, never from slicing
  inside the loop;
* ``tanh(u) = 2 * sigmoid(2u) - 1``: the rows of the weights that feed a ``tanh`` are scaled by 2 once per
  call, so one ``sigmoid`` covers all gates of a step (ATen's CPU ``tanh`` is several times slower than
  ``sigmoid`` and, from 2048 elements on, multi-threaded);
* the backward (BPTT) does one recurrent GEMM and two or three element-wise ops per step: everything that
  does not depend on the incoming gradient (gate derivatives times noise coefficients) is computed for all
  steps at once before the loop; the gradients of the weights, of the input and of the biases are each one
  large GEMM (or sum) over all rows after the loop; the input-weight gradient is formed as ``(X^T dG)^T``.

Noise enters as in the reference: ``state = gate * Psi + mult * prev + add`` (:class:`AffineNoise`), on ``h``
(``noise_h``) and, for LSTM, on the cell ``c`` before ``h = o * tanh(c)`` (``noise_c``); with a projection
``noise_h`` enters the projected ``h = W_hr (o * tanh(c))``. The coefficients
are treated as constants (no gradient flows to them).

Fallback to :func:`reference_unroll` (plain autograd), decided per call:

* a noise coefficient requires grad (the kernels would not differentiate through it);
* ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``, ...) or forward-mode AD are active.

Double backward (``create_graph=True``) recomputes the layer-direction through the reference with the same noise
(:mod:`.double_backward`); the biases and additive coefficients are saved for that.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from nrnn_plugin.counter_noise import CounterNoise, StateNoise, as_coefficients
from nrnn_plugin.diffusion import AffineNoise
from nrnn_plugin.layers.double_backward import recompute_sequence_grads, reference_noise, wants_graph
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.reference import reference_unroll
from nrnn_plugin.layers.signature import MODES, LayerPass

__all__ = ["function_kernel", "needs_reference", "LSTMSequence", "GRUSequence", "ElmanSequence"]

# A noise coefficient after normalisation: a tensor of shape [N, H], [N, 1] or [1, 1] (a number), or None.
_Coef = Tensor | None
# The state entering a step: a view, or (rows carried from the previous step, rows from the initial state).
_Prev = Tensor | tuple[Tensor, Tensor]


# ---------------------------------------------------------------------------------------------- step plan


class _StepPlan:
    """How the rows of one direction chain from step to step (pure Python, cached per layout and direction).

    Attributes:
        order: time steps in processing order.
        prev: per step ``(source, carried, size)``: the first ``carried`` rows of the state entering step ``t``
            are the first rows of step ``source``'s outputs, the remaining ``size - carried`` rows are rows
            ``carried:size`` of the initial state.
        contiguous_prev: for padded input, the ``[N, H]`` states entering every row are one concatenation
            of the initial state and the outputs shifted by one step (no gather needed).
    """

    def __init__(self, layout: SequenceLayout, reverse: bool) -> None:
        self.layout = layout
        self.reverse = reverse
        self.sizes = list(layout.sizes)
        self.rows = layout.rows
        self.batch = layout.batch
        self.order = list(layout.order(reverse))
        carried = layout.carried_rows(reverse)
        self.prev: list[tuple[int, int, int]] = [(-1, 0, 0)] * layout.steps
        previous = -1
        for t in self.order:
            self.prev[t] = (previous, carried[t], self.sizes[t])
            previous = t
        self.contiguous_prev = layout.uniform
        self._prev_index: dict[str, Tensor] = {}

    def prev_index(self, device: torch.device) -> Tensor:
        """Index into ``cat([out, h0])`` (``[N + B, H]``) of the state entering every row: ``LongTensor[N]``."""
        key = str(device)
        index = self._prev_index.get(key)
        if index is None:
            offsets = self.layout.offsets
            rows = self.rows
            parts = []
            for source, carried, size in self.prev:
                if carried:
                    parts.append(torch.arange(offsets[source], offsets[source] + carried))
                if carried < size:
                    parts.append(torch.arange(rows + carried, rows + size))
            # parts were appended in time order, matching the row order of the packed layout
            index = torch.cat(parts).to(device)
            self._prev_index[key] = index
        return index

    def state_views(self, out: Tensor, init: Tensor) -> tuple[list[Tensor], list[_Prev]]:
        """Per-step views of a state: ``outs[t]`` (rows of step ``t`` in ``out [N, ...]``) and ``prevs[t]``.

        ``prevs[t]`` is the state entering step ``t``: a view into ``out`` or ``init [B, ...]``, or a pair of
        views (carried rows, initial rows) when a reverse pass over a packed batch picks up new samples.
        Used for the forward states and, with the same structure, for their gradient buffers.
        """
        outs = list(out.split(self.sizes))
        prevs: list[_Prev] = []
        for source, carried, size in self.prev:
            if carried == size:
                view = outs[source]
                prevs.append(view if view.shape[0] == size else view[:size])
            elif carried == 0:
                prevs.append(init if init.shape[0] == size else init[:size])
            else:
                prevs.append((outs[source][:carried], init[carried:size]))
        return outs, prevs

    def prev_parts(self, out: Tensor, init: Tensor) -> list[tuple[slice, Tensor]]:
        """The state entering every row, as ``(rows, state [len(rows), H])`` pieces that cover all ``N`` rows.

        Padded input needs no copy: the initial state for the first processed step and the outputs shifted
        by one step (views) for the others. Packed input: one gathered ``[N, H]`` tensor.
        """
        batch, rows = self.batch, self.rows
        if self.contiguous_prev:
            if self.reverse:
                parts = [(slice(0, rows - batch), out[batch:]), (slice(rows - batch, rows), init)]
            else:
                parts = [(slice(0, batch), init), (slice(batch, rows), out[: rows - batch])]
            return [(r, state) for r, state in parts if state.shape[0] > 0]
        return [(slice(0, rows), torch.cat([out, init]).index_select(0, self.prev_index(out.device)))]

    def final(self, out: Tensor) -> Tensor:
        """Final state of every sample, ``[B, H]`` (a new tensor, never a view of ``out``)."""
        final = self.layout.final_rows(out, self.reverse)
        return final.clone() if final._base is not None else final

    def add_final(self, grad_out: Tensor, grad_final: Tensor) -> None:
        """``grad_out[final rows] += grad_final`` (the gradient of :meth:`final`)."""
        layout = self.layout
        if self.reverse:
            grad_out[: self.batch].add_(grad_final)
        elif layout.uniform:
            grad_out[layout.offsets[-1] :].add_(grad_final)
        else:
            grad_out.index_add_(0, layout.last_rows(grad_out.device), grad_final)


_PLANS: weakref.WeakKeyDictionary[SequenceLayout, dict[bool, _StepPlan]] = weakref.WeakKeyDictionary()


def _plan(layout: SequenceLayout, reverse: bool) -> _StepPlan:
    plans = _PLANS.setdefault(layout, {})
    plan = plans.get(reverse)
    if plan is None:
        plan = plans[reverse] = _StepPlan(layout, reverse)
    return plan


# ---------------------------------------------------------------------------------------------- helpers


def _steps(tensor: Tensor | None, plan: _StepPlan) -> list[Tensor] | None:
    """Per-step views of a per-row tensor ``[N, ...]``; a broadcast coefficient ``[1, ...]`` is repeated."""
    if tensor is None:
        return None
    if tensor.shape[0] == 1 and plan.rows != 1:
        return [tensor] * len(plan.sizes)
    return list(tensor.split(plan.sizes))


def _initial_grad(grad_out: Tensor | None, grad_final: Tensor | None, plan: _StepPlan, like: Tensor) -> Tensor:
    """The gradient buffer of a state's per-row outputs: ``grad_out`` plus ``grad_final`` at the final rows."""
    buffer = torch.empty_like(like)
    if grad_out is None:
        buffer.zero_()
    else:
        buffer.copy_(grad_out)
    if grad_final is not None:
        plan.add_final(buffer, grad_final)
    return buffer


def _cat_prev(prev: _Prev) -> Tensor:
    return torch.cat(prev) if isinstance(prev, tuple) else prev


def _accumulate_prev(prev: _Prev, grad_gates: Tensor, weight: Tensor, grad: Tensor, coef: Tensor | None) -> None:
    """``prev += grad_gates @ weight (+ grad * coef)`` where ``prev`` may be split into (carried, initial) rows."""
    if isinstance(prev, Tensor):
        prev.addmm_(grad_gates, weight)
        if coef is not None:
            prev.addcmul_(grad, coef)
        return
    carried = prev[0].shape[0]
    for part, rows in ((prev[0], slice(0, carried)), (prev[1], slice(carried, None))):
        part.addmm_(grad_gates[rows], weight)
        if coef is not None:
            part.addcmul_(grad[rows], coef if coef.shape[0] == 1 else coef[rows])


def _accumulate_mul(prev: _Prev, grad: Tensor, coef: Tensor) -> None:
    """``prev += grad * coef`` where ``prev`` may be split into (carried, initial) rows."""
    if isinstance(prev, Tensor):
        prev.addcmul_(grad, coef)
        return
    carried = prev[0].shape[0]
    prev[0].addcmul_(grad[:carried], coef if coef.shape[0] == 1 else coef[:carried])
    prev[1].addcmul_(grad[carried:], coef if coef.shape[0] == 1 else coef[carried:])


def _scaled_rows(weight: Tensor, rows: slice, factor: float) -> Tensor:
    """A copy of ``weight`` (``[G*H, ...]`` or ``[G*H]``) with ``weight[rows]`` multiplied by ``factor``."""
    scaled = weight.clone()
    scaled[rows].mul_(factor)
    return scaled


def _combined_bias(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    """``b_ih + b_hh`` where either may be absent (both enter the gates additively)."""
    if b_ih is None:
        return b_hh
    return b_ih if b_hh is None else b_ih + b_hh


def _mul(a: Tensor, b: Tensor | None) -> Tensor:
    """``a * b`` with ``None`` meaning 1 (a fresh tensor either way)."""
    return a.clone() if b is None else a * b


def _weight_grads(
    needs: Sequence[bool],
    x: Tensor,
    w_ih: Tensor,
    prev_parts: list[tuple[slice, Tensor]] | None,
    grad_x_gates: list[Tensor],
    grad_h_gates: Tensor,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``x, w_ih, w_hh, b_ih, b_hh`` from the gate gradients of all rows (one GEMM or sum each).

    Args:
        needs: ``ctx.needs_input_grad`` of ``x, w_ih, w_hh, b_ih, b_hh``.
        prev_parts: the states entering the rows (:meth:`_StepPlan.prev_parts`); needed for ``w_hh``.
        grad_x_gates: gradient of the input projection ``x W_ih^T + b_ih`` as column blocks ``[N, cols]`` in
            gate order (one block when it equals ``grad_h_gates``).
        grad_h_gates: gradient of the hidden projection ``h_prev W_hh^T + b_hh``, ``[N, G*H]``.
    """
    grad_x = grad_w_ih = grad_w_hh = grad_b_ih = grad_b_hh = None
    if needs[0]:
        start = 0
        for block in grad_x_gates:
            columns = slice(start, start + block.shape[1])
            grad_x = torch.mm(block, w_ih[columns]) if grad_x is None else grad_x.addmm_(block, w_ih[columns])
            start = columns.stop
    if needs[1]:
        # (X^T dG)^T: several times faster than dG^T X when the input size is small
        grad_w_ih = torch.cat([torch.mm(x.t(), block) for block in grad_x_gates], dim=1).t()
    if needs[2] and prev_parts is not None:
        for rows, state in prev_parts:
            if grad_w_hh is None:
                grad_w_hh = torch.mm(state.t(), grad_h_gates[rows])
            else:
                grad_w_hh.addmm_(state.t(), grad_h_gates[rows])
        grad_w_hh = grad_w_hh.t() if grad_w_hh is not None else None
    if needs[3]:
        grad_b_ih = torch.cat([block.sum(0) for block in grad_x_gates])
    if needs[4]:
        same = len(grad_x_gates) == 1 and grad_x_gates[0] is grad_h_gates
        grad_b_hh = grad_b_ih.clone() if same and grad_b_ih is not None else grad_h_gates.sum(0)
    return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


# ---------------------------------------------------------------------------------------------- LSTM


class LSTMSequence(torch.autograd.Function):
    """Noisy LSTM over a whole sequence (one layer, one direction). Gate order of PyTorch: ``i, f, g, o``.

    Forward per step (``u_g`` rows pre-scaled by 2, so ``g = 2 s_g - 1``)::

        [i, f, s_g, o] = sigmoid(XW_t + h_prev W_hh'^T)              one addmm + one sigmoid, in place
        c = gate_c * (f * c_prev + i * (2 s_g - 1)) + mult_c * c_prev + add_c
        m = o * (2 sigmoid(2c) - 1)                                   o * tanh(c), [B, H]
        h = gate_h * m W_hr^T + mult_h * h_prev + add_h               without a projection: m W_hr^T = m

    With a projection (``w_hr [P, H]``, ``nn.LSTM(proj_size=P)``) ``h``, ``h0`` and the ``h`` coefficients have
    ``P`` units, ``c`` keeps ``H``; the backward adds one ``[B, P] x [P, H]`` GEMM per step (the gradient of
    ``m``) and one GEMM for the gradient of ``w_hr`` after the loop.
    """

    @staticmethod
    def forward(
        ctx: Any,
        plan: _StepPlan,
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        w_hr: Tensor | None,
        h0: Tensor,
        c0: Tensor,
        gate_h: _Coef,
        mult_h: _Coef,
        add_h: _Coef,
        gate_c: _Coef,
        mult_c: _Coef,
        add_c: _Coef,
    ) -> tuple[Tensor, Tensor, Tensor]:
        rows, hidden, state = plan.rows, w_hh.shape[0] // 4, w_hh.shape[1]
        g_rows = slice(2 * hidden, 3 * hidden)
        w_hh_t = _scaled_rows(w_hh, g_rows, 2.0).t()
        w_ih_scaled = _scaled_rows(w_ih, g_rows, 2.0)
        bias = _combined_bias(b_ih, b_hh)
        if bias is not None:
            gates = torch.addmm(_scaled_rows(bias, g_rows, 2.0), x, w_ih_scaled.t())  # [N, 4H], activated in place
        else:
            gates = torch.mm(x, w_ih_scaled.t())
        out = x.new_empty(rows, state)
        cells = x.new_empty(rows, hidden)
        cell_sigmoid = x.new_empty(rows, hidden)  # sigmoid(2c), i.e. (tanh(c) + 1) / 2

        gate_steps = gates.split(plan.sizes)
        i_steps, f_steps, g_steps, o_steps = (_steps(part, plan) for part in gates.view(rows, 4, hidden).unbind(1))
        sc_steps = cell_sigmoid.split(plan.sizes)
        h_outs, h_prevs = plan.state_views(out, h0)
        c_outs, c_prevs = plan.state_views(cells, c0)
        gh, mh, ah = _steps(gate_h, plan), _steps(mult_h, plan), _steps(add_h, plan)
        gc, mc, ac = _steps(gate_c, plan), _steps(mult_c, plan), _steps(add_c, plan)
        fold_add_c = ac is not None and gc is None
        fold_add_h = ah is not None and gh is None
        w_hr_t = None if w_hr is None else w_hr.t()
        m_steps = None if w_hr is None else x.new_empty(rows, hidden).split(plan.sizes)  # o * tanh(c)

        for t in plan.order:
            h_prev, c_prev = _cat_prev(h_prevs[t]), _cat_prev(c_prevs[t])
            step = gate_steps[t]
            step.addmm_(h_prev, w_hh_t)
            step.sigmoid_()
            i, f, o = i_steps[t], f_steps[t], o_steps[t]  # type: ignore[index]
            c = c_outs[t]
            if fold_add_c:
                torch.addcmul(ac[t], f, c_prev, out=c)  # type: ignore[index]
            else:
                torch.mul(f, c_prev, out=c)
            c.sub_(i)
            c.addcmul_(i, g_steps[t], value=2.0)  # type: ignore[index]
            if gc is not None:
                c.mul_(gc[t])
                if ac is not None:
                    c.add_(ac[t])
            if mc is not None:
                c.addcmul_(mc[t], c_prev)
            sc = sc_steps[t]
            torch.add(c, c, out=sc)
            sc.sigmoid_()
            h = h_outs[t]
            if m_steps is None:
                if fold_add_h:
                    torch.sub(ah[t], o, out=h)  # type: ignore[index]
                else:
                    torch.neg(o, out=h)
                h.addcmul_(o, sc, value=2.0)
            else:
                m = m_steps[t]
                torch.neg(o, out=m)
                m.addcmul_(o, sc, value=2.0)
                if fold_add_h:
                    torch.addmm(ah[t], m, w_hr_t, out=h)  # type: ignore[index, arg-type]
                else:
                    torch.mm(m, w_hr_t, out=h)  # type: ignore[arg-type]
            if gh is not None:
                h.mul_(gh[t])
                if ah is not None:
                    h.add_(ah[t])
            if mh is not None:
                h.addcmul_(mh[t], h_prev)

        ctx.plan = plan
        saved = (x, w_ih, w_hh, w_hr, h0, c0, out, cells, gates, cell_sigmoid, gate_h, mult_h, gate_c, mult_c)
        ctx.save_for_backward(*saved, b_ih, b_hh, add_h, add_c)  # the last four: for double backward only
        return out, plan.final(out), plan.final(cells)

    @staticmethod
    def backward(
        ctx: Any, grad_out: Tensor | None, grad_h_n: Tensor | None, grad_c_n: Tensor | None
    ) -> tuple[Any, ...]:
        plan: _StepPlan = ctx.plan
        saved = ctx.saved_tensors
        x, w_ih, w_hh, w_hr, h0, c0, out, cells, gates, cell_sigmoid, gate_h, mult_h, gate_c, mult_c = saved[:14]
        if wants_graph():  # create_graph=True: differentiable gradients through the reference recomputation
            b_ih, b_hh, add_h, add_c = saved[14:]
            grads = recompute_sequence_grads(
                "LSTM",
                plan.layout,
                plan.reverse,
                (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0),
                reference_noise(gate_h, mult_h, add_h, plan.rows),
                reference_noise(gate_c, mult_c, add_c, plan.rows),
                (grad_out, grad_h_n, grad_c_n),
                ctx.needs_input_grad[1:9],
            )
            return (None, *grads) + (None,) * 6
        rows, hidden = plan.rows, w_hh.shape[0] // 4
        projected = w_hr is not None

        # ---- everything that does not depend on the incoming gradient, for all rows at once:
        # dG = coef * [dc, dc, dc, dm] with dc the total gradient of the cell state and dm that of
        # m = o * tanh(c) (dm = dh without a projection, (gate_h * dh) W_hr with one)
        i, f, s_g, o = gates.view(rows, 4, hidden).unbind(1)
        minus_one = x.new_full((1, 1), -1.0)
        coef = x.new_empty(rows, 4, hidden)
        c_i, c_f, c_g, c_o = coef.unbind(1)
        g = torch.add(minus_one, s_g, alpha=2.0)
        torch.mul(i, g, out=c_i)
        torch.addcmul(i, c_i, g, value=-1.0, out=c_g)  # i (1 - g^2)
        c_i.addcmul_(c_i, i, value=-1.0)  # g i (1 - i)
        for part_rows, c_prev in plan.prev_parts(cells, c0):
            torch.mul(f[part_rows], c_prev, out=c_f[part_rows])
        c_f.addcmul_(c_f, f, value=-1.0)  # c_prev f (1 - f)
        tanh_c = torch.add(minus_one, cell_sigmoid, alpha=2.0, out=g)
        torch.mul(tanh_c, o, out=c_o)
        unprojected = c_o.clone() if projected and ctx.needs_input_grad[6] else None  # m, for the grad of w_hr
        dc_from_h = torch.addcmul(o, c_o, tanh_c, value=-1.0)  # o (1 - tanh(c)^2): d c_total / d m
        c_o.addcmul_(c_o, o, value=-1.0)  # tanh(c) o (1 - o)
        if gate_c is not None:
            coef[:, :3].mul_(gate_c.unsqueeze(1))
        if gate_h is not None and not projected:
            c_o.mul_(gate_h)
            dc_from_h.mul_(gate_h)
        dc_to_prev = f  # d c / d c_prev
        if gate_c is not None or mult_c is not None:
            dc_to_prev = _mul(f, gate_c)
            if mult_c is not None:
                dc_to_prev.add_(mult_c)
        del g, tanh_c

        grad_h = _initial_grad(grad_out, grad_h_n, plan, out)
        grad_c = _initial_grad(None, grad_c_n, plan, cells)
        grad_h0 = torch.zeros_like(h0)
        grad_c0 = torch.zeros_like(c0)
        grad_gates = x.new_empty(rows, 4 * hidden)
        grad_gates4 = grad_gates.view(rows, 4, hidden)

        dh_outs, dh_prevs = plan.state_views(grad_h, grad_h0)
        dc_outs, dc_prevs = plan.state_views(grad_c, grad_c0)
        dc3_outs = grad_c.unsqueeze(1).split(plan.sizes)
        dg_steps = grad_gates.split(plan.sizes)
        dg3_steps = grad_gates4[:, :3].split(plan.sizes)
        dgo_steps = grad_gates4[:, 3].split(plan.sizes)
        coef3_steps = coef[:, :3].split(plan.sizes)
        coefo_steps = coef[:, 3].split(plan.sizes)
        from_h_steps = dc_from_h.split(plan.sizes)
        to_prev_steps = _steps(dc_to_prev, plan)
        mh = _steps(mult_h, plan)
        w_hh_c = w_hh.contiguous()
        # with a projection: the gradient of the projected value (gate_h * dh) and of m, per step
        grad_proj = grad_h if gate_h is None or not projected else torch.empty_like(grad_h)
        dp_steps = grad_proj.split(plan.sizes)
        gh = _steps(gate_h, plan) if projected else None
        dm_steps = x.new_empty(rows, hidden).split(plan.sizes) if projected else None
        w_hr_c = w_hr.contiguous() if projected else None

        for t in reversed(plan.order):
            dh, dc = dh_outs[t], dc_outs[t]
            dm = dh
            if dm_steps is not None:
                if gh is not None:
                    torch.mul(dh, gh[t], out=dp_steps[t])
                dm = torch.mm(dp_steps[t], w_hr_c, out=dm_steps[t])  # type: ignore[arg-type]
            dc.addcmul_(dm, from_h_steps[t])
            torch.mul(coef3_steps[t], dc3_outs[t], out=dg3_steps[t])
            torch.mul(coefo_steps[t], dm, out=dgo_steps[t])
            _accumulate_mul(dc_prevs[t], dc, to_prev_steps[t])  # type: ignore[index]
            _accumulate_prev(dh_prevs[t], dg_steps[t], w_hh_c, dh, None if mh is None else mh[t])

        needs = ctx.needs_input_grad
        prev_h = plan.prev_parts(out, h0) if needs[3] else None
        gx, gw_ih, gw_hh, gb_ih, gb_hh = _weight_grads(needs[1:6], x, w_ih, prev_h, [grad_gates], grad_gates)
        gw_hr = None if unprojected is None else torch.mm(grad_proj.t(), unprojected)  # [P, H]
        return (None, gx, gw_ih, gw_hh, gb_ih, gb_hh, gw_hr, grad_h0, grad_c0) + (None,) * 6


# ---------------------------------------------------------------------------------------------- GRU


class GRUSequence(torch.autograd.Function):
    """Noisy GRU over a whole sequence (PyTorch's formulation: ``r``, ``z``, ``n``; reset after the projection).

    Forward per step (``n`` rows of both weights pre-scaled by 2, so ``n = 2 sigmoid(.) - 1``)::

        [u_r, u_z, 2 gh_n] = XH_t + h_prev W_hh'^T       (XH holds x W_ih^T + b_ih + b_hh for r, z; 2 b_hh_n)
        r, z = sigmoid(u_r), sigmoid(u_z)
        n = 2 sigmoid(2 (x_n + r * gh_n)) - 1
        h = gate * (n + z * (h_prev - n)) + mult * h_prev + add
    """

    @staticmethod
    def forward(
        ctx: Any,
        plan: _StepPlan,
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        h0: Tensor,
        gate: _Coef,
        mult: _Coef,
        add: _Coef,
    ) -> tuple[Tensor, Tensor]:
        rows, hidden = plan.rows, w_hh.shape[1]
        n_rows, rz_rows = slice(2 * hidden, 3 * hidden), slice(0, 2 * hidden)
        w_hh_t = _scaled_rows(w_hh, n_rows, 2.0).t()
        w_ih_scaled = _scaled_rows(w_ih, n_rows, 2.0)
        if b_ih is not None:
            projected = torch.addmm(_scaled_rows(b_ih, n_rows, 2.0), x, w_ih_scaled.t())  # [N, 3H]
        else:
            projected = torch.mm(x, w_ih_scaled.t())
        hidden_gates = x.new_empty(rows, 3 * hidden)  # [r, z, 2 gh_n] after the loop
        if b_hh is not None:
            torch.add(projected[:, rz_rows], b_hh[rz_rows], out=hidden_gates[:, rz_rows])
            hidden_gates[:, n_rows].copy_(b_hh[n_rows] * 2.0)
        else:
            hidden_gates[:, rz_rows].copy_(projected[:, rz_rows])
            hidden_gates[:, n_rows].zero_()
        x_n = projected[:, n_rows]  # 2 (x W_in^T + b_in)
        new = x.new_empty(rows, hidden)  # the candidate n
        out = x.new_empty(rows, hidden)
        minus_one = x.new_full((1, 1), -1.0)

        hg_steps = hidden_gates.split(plan.sizes)
        r_all, z_all, ghn_all = hidden_gates.view(rows, 3, hidden).unbind(1)
        rz_steps = hidden_gates[:, rz_rows].split(plan.sizes)
        r_steps, z_steps, ghn_steps = _steps(r_all, plan), _steps(z_all, plan), _steps(ghn_all, plan)
        xn_steps = x_n.split(plan.sizes)
        n_steps = new.split(plan.sizes)
        h_outs, h_prevs = plan.state_views(out, h0)
        gs, ms, as_ = _steps(gate, plan), _steps(mult, plan), _steps(add, plan)

        for t in plan.order:
            h_prev = _cat_prev(h_prevs[t])
            step = hg_steps[t]
            step.addmm_(h_prev, w_hh_t)
            rz_steps[t].sigmoid_()
            z = z_steps[t]  # type: ignore[index]
            n = n_steps[t]
            torch.addcmul(xn_steps[t], r_steps[t], ghn_steps[t], out=n)  # type: ignore[index]
            n.sigmoid_()
            torch.add(minus_one, n, alpha=2.0, out=n)
            h = h_outs[t]
            if gs is None:
                if as_ is not None:
                    torch.addcmul(as_[t], z, h_prev, out=h)
                else:
                    torch.mul(z, h_prev, out=h)
                h.add_(n)
                h.addcmul_(z, n, value=-1.0)
            else:
                torch.sub(h_prev, n, out=h)
                h.mul_(z)
                h.add_(n)
                h.mul_(gs[t])
                if as_ is not None:
                    h.add_(as_[t])
            if ms is not None:
                h.addcmul_(ms[t], h_prev)

        ctx.plan = plan
        ctx.save_for_backward(x, w_ih, w_hh, h0, out, hidden_gates, new, gate, mult, b_ih, b_hh, add)
        return out, plan.final(out)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, grad_h_n: Tensor | None) -> tuple[Any, ...]:
        plan: _StepPlan = ctx.plan
        x, w_ih, w_hh, h0, out, hidden_gates, new, gate, mult = ctx.saved_tensors[:9]
        if wants_graph():
            return (None, *_single_state_double_backward(ctx, "GRU", 1, grad_out, grad_h_n)) + (None,) * 3
        rows, hidden = plan.rows, w_hh.shape[1]

        # ---- everything that does not depend on the incoming gradient, for all rows at once:
        # dGH = coef * dh (gradient of the hidden projection), d_new = d h / d (pre-activation of n)
        r, z, ghn2 = hidden_gates.view(rows, 3, hidden).unbind(1)
        prev_h = plan.prev_parts(out, h0)
        coef = x.new_empty(rows, 3, hidden)
        c_r, c_z, c_n = coef.unbind(1)
        d_new = torch.addcmul(x.new_ones((1, 1)), new, new, value=-1.0)  # 1 - n^2
        d_new.addcmul_(d_new, z, value=-1.0)  # (1 - z) (1 - n^2)
        if gate is not None:
            d_new.mul_(gate)
        torch.mul(d_new, r, out=c_n)
        torch.mul(c_n, ghn2, out=c_r)
        c_r.addcmul_(c_r, r, value=-1.0)
        c_r.mul_(0.5)  # d_new r (1 - r) gh_n  (ghn2 holds 2 gh_n)
        for part_rows, state in prev_h:
            torch.sub(state, new[part_rows], out=c_z[part_rows])
        c_z.mul_(z)
        c_z.addcmul_(c_z, z, value=-1.0)  # (h_prev - n) z (1 - z)
        if gate is not None:
            c_z.mul_(gate)
        direct = z  # d h / d h_prev outside the recurrent GEMM
        if gate is not None or mult is not None:
            direct = _mul(z, gate)
            if mult is not None:
                direct.add_(mult)
        del r, ghn2

        grad_h = _initial_grad(grad_out, grad_h_n, plan, out)
        grad_h0 = torch.zeros_like(h0)
        grad_hidden = x.new_empty(rows, 3 * hidden)
        dh_outs, dh_prevs = plan.state_views(grad_h, grad_h0)
        dh3_outs = grad_h.unsqueeze(1).split(plan.sizes)
        dgh_steps = grad_hidden.split(plan.sizes)
        dgh3_steps = grad_hidden.view(rows, 3, hidden).split(plan.sizes)
        coef_steps = coef.split(plan.sizes)
        direct_steps = _steps(direct, plan)
        w_hh_c = w_hh.contiguous()

        for t in reversed(plan.order):
            torch.mul(coef_steps[t], dh3_outs[t], out=dgh3_steps[t])
            _accumulate_prev(dh_prevs[t], dgh_steps[t], w_hh_c, dh_outs[t], direct_steps[t])  # type: ignore[index]

        needs = ctx.needs_input_grad
        grad_input_gates = [grad_hidden[:, : 2 * hidden], d_new.mul_(grad_h)]  # r, z as above; n: dh * d_new
        gx, gw_ih, gw_hh, gb_ih, gb_hh = _weight_grads(needs[1:6], x, w_ih, prev_h, grad_input_gates, grad_hidden)
        return (None, gx, gw_ih, gw_hh, gb_ih, gb_hh, grad_h0) + (None,) * 3


def _single_state_double_backward(
    ctx: Any, mode: str, first: int, grad_out: Tensor | None, grad_h_n: Tensor | None
) -> list[Tensor | None]:
    """Differentiable gradients of ``x, w_ih, w_hh, b_ih, b_hh, h0`` of a GRU or Elman kernel (the saved tensors
    start ``x, w_ih, w_hh, h0`` and end ``gate, mult, b_ih, b_hh, add``; ``first``: index of ``x`` among the
    Function's inputs)."""
    plan: _StepPlan = ctx.plan
    saved = ctx.saved_tensors
    x, w_ih, w_hh, h0 = saved[:4]
    gate, mult, b_ih, b_hh, add = saved[-5:]
    needs = ctx.needs_input_grad[first : first + 6]
    grads = recompute_sequence_grads(
        mode,
        plan.layout,
        plan.reverse,
        (x, w_ih, w_hh, b_ih, b_hh, None, h0, None),
        reference_noise(gate, mult, add, plan.rows),
        None,
        (grad_out, grad_h_n, None),
        (*needs[:5], False, needs[5], False),
    )
    return [*grads[:5], grads[6]]


# ---------------------------------------------------------------------------------------------- Elman RNN


class ElmanSequence(torch.autograd.Function):
    """Noisy Elman RNN over a whole sequence: ``h = gate * act(XW_t + h_prev W_hh^T) + mult * h_prev + add``.

    ``act`` is ``tanh`` (computed as ``2 sigmoid(2u) - 1`` with pre-scaled weights) or ``relu``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        plan: _StepPlan,
        relu: bool,
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        h0: Tensor,
        gate: _Coef,
        mult: _Coef,
        add: _Coef,
    ) -> tuple[Tensor, Tensor]:
        rows, hidden = plan.rows, w_hh.shape[1]
        scale = 1.0 if relu else 2.0
        w_hh_t = (w_hh * scale).t()
        w_ih_t = (w_ih * scale).t()
        bias = _combined_bias(b_ih, b_hh)
        if bias is not None:
            act = torch.addmm(bias * scale, x, w_ih_t)  # pre-activations, then activations in place
        else:
            act = torch.mm(x, w_ih_t)
        out = x.new_empty(rows, hidden)
        # h = base + slope * a: the noise folded around the activation a (sigmoid(2u) for tanh, relu(u))
        if relu:
            base = add
            slope = gate
        else:
            offset = (add if add is not None else 0.0) - (gate if gate is not None else 1.0)
            base = offset if isinstance(offset, Tensor) else x.new_full((1, 1), offset)
            slope = 2.0 * gate if gate is not None else None
        act_steps = act.split(plan.sizes)
        h_outs, h_prevs = plan.state_views(out, h0)
        base_steps, slope_steps, ms = _steps(base, plan), _steps(slope, plan), _steps(mult, plan)
        two = 1.0 if relu else 2.0

        for t in plan.order:
            h_prev = _cat_prev(h_prevs[t])
            a = act_steps[t]
            a.addmm_(h_prev, w_hh_t)
            if relu:
                a.relu_()
            else:
                a.sigmoid_()
            h = h_outs[t]
            if slope_steps is not None:
                if base_steps is not None:
                    torch.addcmul(base_steps[t], slope_steps[t], a, out=h)
                else:
                    torch.mul(slope_steps[t], a, out=h)
            elif base_steps is not None:
                torch.add(base_steps[t], a, alpha=two, out=h)
            else:
                h.copy_(a)
            if ms is not None:
                h.addcmul_(ms[t], h_prev)

        ctx.plan = plan
        ctx.relu = relu
        ctx.save_for_backward(x, w_ih, w_hh, h0, out, act, gate, mult, b_ih, b_hh, add)
        return out, plan.final(out)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, grad_h_n: Tensor | None) -> tuple[Any, ...]:
        plan: _StepPlan = ctx.plan
        if wants_graph():
            mode = "RNN_RELU" if ctx.relu else "RNN_TANH"
            return (None, None, *_single_state_double_backward(ctx, mode, 2, grad_out, grad_h_n)) + (None,) * 3
        x, w_ih, w_hh, h0, out, act, gate, mult, _, _, _ = ctx.saved_tensors
        if ctx.relu:
            slope = torch.sign(act)  # act = relu(u) >= 0: 1 where u > 0, else 0
            if gate is not None:
                slope.mul_(gate)
        else:
            slope = torch.addcmul(act, act, act, value=-1.0)  # s (1 - s); tanh'(u) = 1 - (2s - 1)^2 = 4 s (1 - s)
            slope.mul_(4.0 * gate if gate is not None else 4.0)

        grad_h = _initial_grad(grad_out, grad_h_n, plan, out)
        grad_h0 = torch.zeros_like(h0)
        grad_pre = torch.empty_like(act)
        dh_outs, dh_prevs = plan.state_views(grad_h, grad_h0)
        dp_steps = grad_pre.split(plan.sizes)
        slope_steps = slope.split(plan.sizes)
        ms = _steps(mult, plan)
        w_hh_c = w_hh.contiguous()

        for t in reversed(plan.order):
            dh = dh_outs[t]
            torch.mul(dh, slope_steps[t], out=dp_steps[t])
            _accumulate_prev(dh_prevs[t], dp_steps[t], w_hh_c, dh, None if ms is None else ms[t])

        needs = ctx.needs_input_grad
        prev_h = plan.prev_parts(out, h0) if needs[4] else None
        gx, gw_ih, gw_hh, gb_ih, gb_hh = _weight_grads(needs[2:7], x, w_ih, prev_h, [grad_pre], grad_pre)
        return (None, None, gx, gw_ih, gw_hh, gb_ih, gb_hh, grad_h0) + (None,) * 3


# ---------------------------------------------------------------------------------------------- entry points


def needs_reference(*noises: StateNoise) -> bool:
    """True when these kernels must hand over to :func:`reference_unroll` (see the module docstring)."""
    if torch._C._are_functorch_transforms_active():
        return True
    if getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0:
        return True
    for noise in noises:
        if noise is None:
            continue
        coefs = (noise.scale,) if isinstance(noise, CounterNoise) else (noise.gate, noise.mult, noise.add)
        for coef in coefs:
            if isinstance(coef, Tensor) and coef.requires_grad:
                return True
    return False


def coefficient_tensors(
    noise: AffineNoise | None, rows: int, hidden: int, like: Tensor, argument: str
) -> tuple[_Coef, _Coef, _Coef]:
    """``(gate, mult, add)`` as tensors ``[N, H]``, ``[N, 1]`` or ``[1, 1]`` (numbers) in ``like``'s dtype, or ``None``.

    Accepted per coefficient: a tensor ``[N, H]`` or ``[N, 1]``, a 0-dim tensor or a Python number (broadcast
    to every row), or ``None``.
    """
    if noise is None:
        return None, None, None
    result: list[_Coef] = []
    for name, coef, neutral in (("gate", noise.gate, 1.0), ("mult", noise.mult, 0.0), ("add", noise.add, 0.0)):
        if coef is None:
            result.append(None)
        elif isinstance(coef, Tensor):
            if coef.dim() == 0:  # a number held in a tensor (e.g. a float scaled by a tensor probe scale)
                coef = coef.reshape(1, 1)
            elif coef.dim() != 2 or coef.shape[0] != rows or coef.shape[1] not in (1, hidden):
                raise ValueError(
                    f"{argument}.{name}: expected a tensor of shape [{rows}, {hidden}] or [{rows}, 1] (rows x "
                    f"hidden units), a 0-dim tensor, a float or None, got shape {list(coef.shape)}"
                )
            result.append(coef.to(device=like.device, dtype=like.dtype))
        elif isinstance(coef, (int, float)):
            result.append(None if float(coef) == neutral else like.new_full((1, 1), float(coef)))
        else:
            raise TypeError(f"{argument}.{name}: expected a Tensor, a float or None, got {type(coef).__name__}")
    return result[0], result[1], result[2]


def _check(mode: str, p: LayerPass) -> None:
    w = p.weights
    rows, batch, state = p.layout.rows, p.layout.batch, w.state_size
    if p.x.dim() != 2 or p.x.shape[0] != rows:
        raise ValueError(f"{mode} kernel: x must have shape [{rows}, input_size], got {list(p.x.shape)}")
    if p.h0.shape != (batch, state):
        raise ValueError(f"{mode} kernel: h0 must have shape [{batch}, {state}], got {list(p.h0.shape)}")
    if w.w_hr is not None and mode != "LSTM":
        raise ValueError(f"{mode} kernel: weights.w_hr (a projection of h) exists for LSTM only, got one for {mode}")
    if mode == "LSTM":
        if p.c0 is None:
            raise ValueError("LSTM kernel: c0 (the initial cell state, [B, H]) is required, got None")
        if p.c0.shape != (batch, w.hidden_size):
            raise ValueError(f"LSTM kernel: c0 must have shape [{batch}, {w.hidden_size}], got {list(p.c0.shape)}")


def function_kernel(mode: str, p: LayerPass) -> tuple[Tensor, Tensor, Tensor | None]:
    """Noisy layer-direction with a hand-written backward; contract of :func:`reference_unroll`.

    Hands over to :func:`reference_unroll` where :func:`needs_reference` says so (module docstring).
    """
    if mode not in MODES:
        raise ValueError(f"function_kernel: mode must be one of {MODES}, got {mode!r}")
    _check(mode, p)
    if needs_reference(p.noise_h, p.noise_c if mode == "LSTM" else None):
        return reference_unroll(mode, p)
    layout, w = p.layout, p.weights
    plan = _plan(layout, p.reverse)
    x = p.x.contiguous()
    coef_h = coefficient_tensors(as_coefficients(p.noise_h, x), layout.rows, w.state_size, x, "noise_h")
    if mode == "LSTM":
        assert p.c0 is not None
        coef_c = coefficient_tensors(as_coefficients(p.noise_c, x), layout.rows, w.hidden_size, x, "noise_c")
        out, h_n, c_n = LSTMSequence.apply(
            plan, x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, p.h0, p.c0, *coef_h, *coef_c
        )
        return out, h_n, c_n
    if mode == "GRU":
        out, h_n = GRUSequence.apply(plan, x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, p.h0, *coef_h)
        return out, h_n, None
    relu = mode == "RNN_RELU"
    out, h_n = ElmanSequence.apply(plan, relu, x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, p.h0, *coef_h)
    return out, h_n, None
