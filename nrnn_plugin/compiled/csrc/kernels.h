// The operators of the extension (registered in ops.cpp; schemas and Python registrations in
// nrnn_plugin/compiled/ops.py). One layer and one direction per call, over the packed rows of `batch_sizes`.
//
// Noise arguments, the same in every op: rng [2, 4] int64 (seed, offset, plane starts of h and of c), the scheme
// (0 none, 1 euler_maruyama, 2 milstein, 3 reference) with sigma_add, sigma_mult, dt, shared and the probe scale,
// `keyed` (bit 0: h, bit 1: c: generated from rng) and, for states that are not keyed, coefficient tensors.
// Backward ops take a bit mask of the gradients to compute and return empty tensors for the others.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace nrnn {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0, const Tensor& batch_sizes, bool reverse,
    const Tensor& rng, int64_t scheme, double sa, double sm, double dt, bool shared, double scale, int64_t keyed,
    const OptTensor& gate_h, const OptTensor& mult_h, const OptTensor& add_h, const OptTensor& gate_c,
    const OptTensor& mult_c, const OptTensor& add_c);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const OptTensor& grad_out, const OptTensor& grad_h_n, const OptTensor& grad_c_n, const Tensor& x,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const Tensor& out, const Tensor& gates, const Tensor& cells, const Tensor& m, const Tensor& batch_sizes,
    bool reverse, const Tensor& rng, int64_t scheme, double sa, double sm, double dt, bool shared, double scale,
    int64_t keyed, const OptTensor& gate_h, const OptTensor& mult_h, const OptTensor& gate_c,
    const OptTensor& mult_c, int64_t needs);

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(
    const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const Tensor& h0, const Tensor& batch_sizes, bool reverse, const Tensor& rng, int64_t scheme, double sa,
    double sm, double dt, bool shared, double scale, int64_t keyed, const OptTensor& gate, const OptTensor& mult,
    const OptTensor& add);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const OptTensor& grad_out, const OptTensor& grad_h_n, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& h0, const Tensor& out, const Tensor& hidden_gates, const Tensor& new_gate,
    const Tensor& batch_sizes, bool reverse, const Tensor& rng, int64_t scheme, double sa, double sm, double dt,
    bool shared, double scale, int64_t keyed, const OptTensor& gate, const OptTensor& mult, int64_t needs);

std::tuple<Tensor, Tensor, Tensor> elman_forward(
    const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const Tensor& h0, const Tensor& batch_sizes, bool reverse, bool relu, const Tensor& rng, int64_t scheme,
    double sa, double sm, double dt, bool shared, double scale, int64_t keyed, const OptTensor& gate,
    const OptTensor& mult, const OptTensor& add);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> elman_backward(
    const OptTensor& grad_out, const OptTensor& grad_h_n, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& h0, const Tensor& out, const Tensor& act, const Tensor& batch_sizes, bool reverse, bool relu,
    const Tensor& rng, int64_t scheme, double sa, double sm, double dt, bool shared, double scale, int64_t keyed,
    const OptTensor& gate, const OptTensor& mult, int64_t needs);

std::tuple<Tensor, Tensor, Tensor, Tensor> nrnn_forward(
    const Tensor& xw, const Tensor& kernel, const OptTensor& step, double step_value, const Tensor& h0,
    const Tensor& batch_sizes, bool reverse, const Tensor& rng, int64_t scheme, double sa, double sm, double dt,
    bool shared, double scale, int64_t keyed, const OptTensor& gate, const OptTensor& mult, const OptTensor& add);

std::tuple<Tensor, Tensor, Tensor, Tensor> nrnn_backward(
    const OptTensor& grad_out, const OptTensor& grad_h_n, const Tensor& kernel, const OptTensor& step,
    double step_value, const Tensor& h0, const Tensor& out, const Tensor& act, const Tensor& drift,
    const Tensor& batch_sizes, bool reverse, const Tensor& rng, int64_t scheme, double sa, double sm, double dt,
    bool shared, double scale, int64_t keyed, const OptTensor& gate, const OptTensor& mult, int64_t needs);

Tensor gaussian(int64_t seed, int64_t offset, int64_t start, int64_t count);

}  // namespace nrnn
