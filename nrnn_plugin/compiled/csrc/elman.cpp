// Noisy Elman RNN (tanh or relu), one layer and direction:
//   a = act(x W_ih^T + b_ih + b_hh + h_prev W_hh^T),   h = gate a + mult h_prev + add
// Saved for backward: the activations a.
#include "common.h"
#include "kernels.h"

namespace nrnn {
namespace {

template <typename T, bool RELU>
void forward_loop(const Plan& p, const NoiseSpec<T>& nz, T* A, const T* bias, const T* Whh, const T* h0, T* out,
                  int64_t H) {
  std::vector<T> scratch;
  const int64_t grain = grain_rows(H, 4);
  for (int64_t t : p.order) {
    const int64_t size = p.sizes[t], r0 = p.offs[t];
    const T* hprev = entering<T>(p, t, out, h0, H, scratch);
    mm_nt<T>(size, H, H, hprev, H, Whh, H, A + r0 * H, H, T(1));
    at::parallel_for(0, size, grain, [&](int64_t b0, int64_t b1) {
      RowNoise<T> nh(nz, 0);
      nh.prepare(r0 + b0, b1 - b0, false);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = r0 + b;
        nh.fill(row);
        T* __restrict a = A + row * H;
        const T* __restrict hp = hprev + b * H;
        T* __restrict h = out + row * H;
        const T *gate = nh.gate, *mult = nh.mult, *add = nh.add;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const T u = a[j] + bias[j];
          const T v = RELU ? (u > T(0) ? u : T(0)) : tanh_(u);
          a[j] = v;
          h[j] = gate[j] * v + mult[j] * hp[j] + add[j];
        }
      }
    });
  }
}

template <typename T, bool RELU>
void backward_loop(const Plan& p, const NoiseSpec<T>& nz, const T* A, const T* Whh, T* dH, T* dh0, T* dA, int64_t H) {
  const int64_t grain = grain_rows(H, 4);
  for (auto it = p.order.rbegin(); it != p.order.rend(); ++it) {
    const int64_t t = *it, size = p.sizes[t], r0 = p.offs[t];
    at::parallel_for(0, size, grain, [&](int64_t b0, int64_t b1) {
      RowNoise<T> nh(nz, 0);
      nh.prepare(r0 + b0, b1 - b0, true);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = r0 + b;
        nh.fill(row);
        const T* __restrict a = A + row * H;
        const T* __restrict dh = dH + row * H;
        T* __restrict da = dA + row * H;
        T* __restrict dhp = prev_row<T>(p, t, b, dH, dh0, H);
        const T *gate = nh.gate, *mult = nh.mult;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const T slope = RELU ? (a[j] > T(0) ? T(1) : T(0)) : T(1) - a[j] * a[j];
          da[j] = dh[j] * gate[j] * slope;
          dhp[j] += dh[j] * mult[j];
        }
      }
    });
    backprop_gemm<T>(p, t, dA, H, Whh, dH, dh0, H);
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> elman_forward(
    const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const Tensor& h0, const Tensor& batch_sizes, bool reverse, bool relu, const Tensor& rng, int64_t scheme,
    double sa, double sm, double dt, bool shared, double scale, int64_t keyed, const OptTensor& gate,
    const OptTensor& mult, const OptTensor& add) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const Plan p = make_plan(batch_sizes, reverse);
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(x.dim() == 2 && x.size(0) == p.N, "elman_forward: x must be [N, I] with N = sum(batch_sizes)");
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({p.B, H}), "elman_forward: h0 must be [B, H]");
  Tensor A = at::mm(x.contiguous(), w_ih.t()).contiguous();
  Tensor bias = bias_sum(b_ih, b_hh, H, x.options());
  Tensor whh = w_hh.contiguous(), h0c = h0.contiguous();
  Tensor out = at::empty({p.N, H}, x.options());
  const int64_t units[2] = {H, 0};
  const std::vector<OptTensor> coefs = {gate, mult, add, c10::nullopt, c10::nullopt, c10::nullopt};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "elman_forward", [&] {
    const auto nz = make_noise<scalar_t>(rng, scheme, sa, sm, dt, shared, scale, keyed, coefs, p.N, units);
    auto* a = A.data_ptr<scalar_t>();
    if (relu)
      forward_loop<scalar_t, true>(p, nz, a, bias.data_ptr<scalar_t>(), whh.data_ptr<scalar_t>(), h0c.data_ptr<scalar_t>(),
                                   out.data_ptr<scalar_t>(), H);
    else
      forward_loop<scalar_t, false>(p, nz, a, bias.data_ptr<scalar_t>(), whh.data_ptr<scalar_t>(), h0c.data_ptr<scalar_t>(),
                                    out.data_ptr<scalar_t>(), H);
  });
  return std::make_tuple(out, final_rows(p, out), A);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> elman_backward(
    const OptTensor& grad_out, const OptTensor& grad_h_n, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& h0, const Tensor& out, const Tensor& act, const Tensor& batch_sizes, bool reverse, bool relu,
    const Tensor& rng, int64_t scheme, double sa, double sm, double dt, bool shared, double scale, int64_t keyed,
    const OptTensor& gate, const OptTensor& mult, int64_t needs) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const Plan p = make_plan(batch_sizes, reverse);
  const int64_t H = w_hh.size(1);
  Tensor dH = initial_grad(p, grad_out, grad_h_n, out);
  Tensor dh0 = at::zeros_like(h0, at::MemoryFormat::Contiguous);
  Tensor dA = at::empty({p.N, H}, x.options());
  Tensor whh = w_hh.contiguous();
  const int64_t units[2] = {H, 0};
  const std::vector<OptTensor> coefs = {gate, mult, c10::nullopt, c10::nullopt, c10::nullopt, c10::nullopt};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "elman_backward", [&] {
    const auto nz = make_noise<scalar_t>(rng, scheme, sa, sm, dt, shared, scale, keyed, coefs, p.N, units);
    if (relu)
      backward_loop<scalar_t, true>(p, nz, act.data_ptr<scalar_t>(), whh.data_ptr<scalar_t>(),
                                    dH.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(), dA.data_ptr<scalar_t>(), H);
    else
      backward_loop<scalar_t, false>(p, nz, act.data_ptr<scalar_t>(), whh.data_ptr<scalar_t>(),
                                     dH.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(), dA.data_ptr<scalar_t>(), H);
  });
  const Tensor none = at::empty({0}, x.options());
  Tensor dx = (needs & 1) ? at::mm(dA, w_ih) : none;
  Tensor dw_ih = (needs & 2) ? at::mm(x.t(), dA).t().contiguous() : none;
  Tensor dw_hh = (needs & 4) ? grad_w_hh(p, dA, out, h0) : none;
  Tensor db = (needs & 24) ? dA.sum(0) : none;  // the gradient of b_ih and of b_hh
  return std::make_tuple(dx, dw_ih, dw_hh, db, (needs & 32) ? dh0 : none);
}

}  // namespace nrnn
