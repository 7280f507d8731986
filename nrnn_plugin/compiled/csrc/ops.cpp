// Operator registrations (namespace nrnn): schemas and CPU kernels. Fake implementations, autograd and the
// implementations for other devices are registered from Python (nrnn_plugin/compiled/ops.py).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"
#include "kernels.h"

namespace nrnn {

// Gaussians g = start .. start + count - 1 of stream (seed, offset) as float32 [count]; int64 arguments carry
// the uint64 bit patterns. Parallel over chunks of 64K elements (independent ranges of the same stream).
Tensor gaussian(int64_t seed, int64_t offset, int64_t start, int64_t count) {
  TORCH_CHECK(count >= 0, "gaussian: count must be >= 0");
  Tensor z = at::empty({count}, at::kFloat);
  float* zp = z.data_ptr<float>();
  const int64_t chunk = 1 << 16;
  at::parallel_for(0, (count + chunk - 1) / chunk, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t s = c * chunk, n = std::min(chunk, count - s);
      nrnn_noise::gaussians<10>((uint64_t)seed, (uint64_t)offset, (uint64_t)start + (uint64_t)s, n, zp + s);
    }
  });
  return z;
}

}  // namespace nrnn

#define NRNN_NOISE_ARGS \
  "Tensor rng, int scheme, float sigma_add, float sigma_mult, float dt, bool shared, float scale, int keyed"

TORCH_LIBRARY(nrnn, m) {
  m.def("gaussian(int seed, int offset, int start, int count) -> Tensor");
  m.def("lstm_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor h0, "
        "Tensor c0, Tensor batch_sizes, bool reverse, " NRNN_NOISE_ARGS ", Tensor? gate_h, Tensor? mult_h, "
        "Tensor? add_h, Tensor? gate_c, Tensor? mult_c, Tensor? add_c) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("lstm_backward(Tensor? grad_out, Tensor? grad_h_n, Tensor? grad_c_n, Tensor x, Tensor w_ih, Tensor w_hh, "
        "Tensor? w_hr, Tensor h0, Tensor c0, Tensor out, Tensor gates, Tensor cells, Tensor m, Tensor batch_sizes, "
        "bool reverse, " NRNN_NOISE_ARGS ", Tensor? gate_h, Tensor? mult_h, Tensor? gate_c, Tensor? mult_c, "
        "int needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0, Tensor batch_sizes, "
        "bool reverse, " NRNN_NOISE_ARGS ", Tensor? gate, Tensor? mult, Tensor? add) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_backward(Tensor? grad_out, Tensor? grad_h_n, Tensor x, Tensor w_ih, Tensor w_hh, Tensor h0, "
        "Tensor out, Tensor hidden_gates, Tensor new_gate, Tensor batch_sizes, bool reverse, " NRNN_NOISE_ARGS
        ", Tensor? gate, Tensor? mult, int needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("elman_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0, "
        "Tensor batch_sizes, bool reverse, bool relu, " NRNN_NOISE_ARGS ", Tensor? gate, Tensor? mult, "
        "Tensor? add) -> (Tensor, Tensor, Tensor)");
  m.def("elman_backward(Tensor? grad_out, Tensor? grad_h_n, Tensor x, Tensor w_ih, Tensor w_hh, Tensor h0, "
        "Tensor out, Tensor act, Tensor batch_sizes, bool reverse, bool relu, " NRNN_NOISE_ARGS
        ", Tensor? gate, Tensor? mult, int needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("nrnn_forward(Tensor xw, Tensor kernel, Tensor? step, float step_value, Tensor h0, Tensor batch_sizes, "
        "bool reverse, " NRNN_NOISE_ARGS ", Tensor? gate, Tensor? mult, Tensor? add) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("nrnn_backward(Tensor? grad_out, Tensor? grad_h_n, Tensor kernel, Tensor? step, float step_value, "
        "Tensor h0, Tensor out, Tensor act, Tensor drift, Tensor batch_sizes, bool reverse, " NRNN_NOISE_ARGS
        ", Tensor? gate, Tensor? mult, int needs) -> (Tensor, Tensor, Tensor, Tensor)");
}

// no tensor arguments: one implementation for every dispatch key except Meta/fake (registered from Python)
TORCH_LIBRARY_IMPL(nrnn, CompositeExplicitAutograd, m) { m.impl("gaussian", &nrnn::gaussian); }

TORCH_LIBRARY_IMPL(nrnn, CPU, m) {
  m.impl("lstm_forward", &nrnn::lstm_forward);
  m.impl("lstm_backward", &nrnn::lstm_backward);
  m.impl("gru_forward", &nrnn::gru_forward);
  m.impl("gru_backward", &nrnn::gru_backward);
  m.impl("elman_forward", &nrnn::elman_forward);
  m.impl("elman_backward", &nrnn::elman_backward);
  m.impl("nrnn_forward", &nrnn::nrnn_forward);
  m.impl("nrnn_backward", &nrnn::nrnn_backward);
}
