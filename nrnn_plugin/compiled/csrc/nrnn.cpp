// The NRNN recursion (nrnn_plugin/layers/nrnn.py), one layer and direction, from the projected input xw = U x + b:
//   z = h_prev K^T  (K = [alpha A; W] with the linear term, else W),
//   u = tanh(z_W + xw),  f = z_A + u,  Psi = h_prev + d f  (d: a float or a learned [H] step),
//   h = gate Psi + mult h_prev + add
// Saved for backward: u, and f when the step is a tensor (its gradient is sum(dPsi f)).
#include "common.h"
#include "kernels.h"

namespace nrnn {
namespace {

// LINEAR: the alpha A h term; LEARNED: save the drift (forward) / dPsi (backward) for the step's gradient. Template
// parameters, and the step always an [H] array: no branches in the vectorised loops.
template <typename T, bool LINEAR, bool LEARNED>
void forward_loop(const Plan& p, const NoiseSpec<T>& nz, const T* XW, const T* K, int64_t KH, const T* step,
                  const T* h0, T* out, T* ACT, T* DRIFT, int64_t H) {
  constexpr bool linear = LINEAR;
  std::vector<T> scratch, Z;
  const int64_t grain = grain_rows(H, 4);
  for (int64_t t : p.order) {
    const int64_t size = p.sizes[t], r0 = p.offs[t];
    const T* hprev = entering<T>(p, t, out, h0, H, scratch);
    Z.resize(size * KH);
    mm_nt<T>(size, KH, H, hprev, H, K, H, Z.data(), KH, T(0));
    at::parallel_for(0, size, grain, [&](int64_t b0, int64_t b1) {
      RowNoise<T> nh(nz, 0);
      nh.prepare(r0 + b0, b1 - b0, false);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = r0 + b;
        nh.fill(row);
        const T* __restrict z = Z.data() + b * KH;
        const T* __restrict zw = linear ? z + H : z;
        const T* __restrict xw = XW + row * H;
        const T* __restrict hp = hprev + b * H;
        T* __restrict u = ACT + row * H;
        T* __restrict h = out + row * H;
        T* __restrict f = LEARNED ? DRIFT + row * H : nullptr;
        const T *gate = nh.gate, *mult = nh.mult, *add = nh.add;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const T a = tanh_(zw[j] + xw[j]);
          const T drift = linear ? z[j] + a : a;
          const T d = step[j];
          u[j] = a;
          if (LEARNED) f[j] = drift;
          h[j] = gate[j] * (hp[j] + d * drift) + mult[j] * hp[j] + add[j];
        }
      }
    });
  }
}

template <typename T, bool LINEAR, bool LEARNED>
void backward_loop(const Plan& p, const NoiseSpec<T>& nz, const T* ACT, const T* K, int64_t KH, const T* step,
                   T* dH, T* dh0, T* DZ, T* DPSI, int64_t H) {
  constexpr bool linear = LINEAR;
  const int64_t grain = grain_rows(H, 4);
  for (auto it = p.order.rbegin(); it != p.order.rend(); ++it) {
    const int64_t t = *it, size = p.sizes[t], r0 = p.offs[t];
    at::parallel_for(0, size, grain, [&](int64_t b0, int64_t b1) {
      RowNoise<T> nh(nz, 0);
      nh.prepare(r0 + b0, b1 - b0, true);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = r0 + b;
        nh.fill(row);
        const T* __restrict u = ACT + row * H;
        const T* __restrict dh = dH + row * H;
        T* __restrict dz = DZ + row * KH;
        T* __restrict dzw = linear ? dz + H : dz;
        T* __restrict dpsi_out = LEARNED ? DPSI + row * H : nullptr;
        T* __restrict dhp = prev_row<T>(p, t, b, dH, dh0, H);
        const T *gate = nh.gate, *mult = nh.mult;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const T dpsi = dh[j] * gate[j];
          const T d = step[j];
          if (linear) dz[j] = dpsi * d;
          dzw[j] = dpsi * d * (T(1) - u[j] * u[j]);
          if (LEARNED) dpsi_out[j] = dpsi;
          dhp[j] += dpsi + dh[j] * mult[j];
        }
      }
    });
    backprop_gemm<T>(p, t, DZ, KH, K, dH, dh0, H);
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> nrnn_forward(
    const Tensor& xw, const Tensor& kernel, const OptTensor& step, double step_value, const Tensor& h0,
    const Tensor& batch_sizes, bool reverse, const Tensor& rng, int64_t scheme, double sa, double sm, double dt,
    bool shared, double scale, int64_t keyed, const OptTensor& gate, const OptTensor& mult, const OptTensor& add) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const Plan p = make_plan(batch_sizes, reverse);
  const int64_t H = kernel.size(1), KH = kernel.size(0);
  TORCH_CHECK(KH == H || KH == 2 * H, "nrnn_forward: kernel must be [H, H] or [2H, H]");
  TORCH_CHECK(xw.dim() == 2 && xw.size(0) == p.N && xw.size(1) == H, "nrnn_forward: xw must be [N, H]");
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({p.B, H}), "nrnn_forward: h0 must be [B, H]");
  TORCH_CHECK(!given(step) || step->numel() == H, "nrnn_forward: step must have H elements");
  Tensor xwc = xw.contiguous(), k = kernel.contiguous(), h0c = h0.contiguous();
  Tensor st = given(step) ? step->contiguous() : at::full({H}, step_value, xw.options());
  Tensor out = at::empty({p.N, H}, xw.options()), act = at::empty({p.N, H}, xw.options());
  Tensor drift = at::empty({given(step) ? p.N : 0, H}, xw.options());
  const int64_t units[2] = {H, 0};
  const std::vector<OptTensor> coefs = {gate, mult, add, c10::nullopt, c10::nullopt, c10::nullopt};
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "nrnn_forward", [&] {
    const auto nz = make_noise<scalar_t>(rng, scheme, sa, sm, dt, shared, scale, keyed, coefs, p.N, units);
    const bool learned = given(step);
    auto run = KH == 2 * H ? (learned ? forward_loop<scalar_t, true, true> : forward_loop<scalar_t, true, false>)
                           : (learned ? forward_loop<scalar_t, false, true> : forward_loop<scalar_t, false, false>);
    run(p, nz, xwc.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), KH,
        st.data_ptr<scalar_t>(), h0c.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), act.data_ptr<scalar_t>(),
        learned ? drift.data_ptr<scalar_t>() : nullptr, H);
  });
  return std::make_tuple(out, final_rows(p, out), act, drift);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> nrnn_backward(
    const OptTensor& grad_out, const OptTensor& grad_h_n, const Tensor& kernel, const OptTensor& step,
    double step_value, const Tensor& h0, const Tensor& out, const Tensor& act, const Tensor& drift,
    const Tensor& batch_sizes, bool reverse, const Tensor& rng, int64_t scheme, double sa, double sm, double dt,
    bool shared, double scale, int64_t keyed, const OptTensor& gate, const OptTensor& mult, int64_t needs) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const Plan p = make_plan(batch_sizes, reverse);
  const int64_t H = kernel.size(1), KH = kernel.size(0);
  const bool step_grad = given(step) && (needs & 4);
  Tensor dH = initial_grad(p, grad_out, grad_h_n, out);
  Tensor dh0 = at::zeros_like(h0, at::MemoryFormat::Contiguous);
  Tensor DZ = at::empty({p.N, KH}, out.options());
  Tensor DPSI = at::empty({step_grad ? p.N : 0, H}, out.options());
  Tensor k = kernel.contiguous();
  Tensor st = given(step) ? step->contiguous() : at::full({H}, step_value, out.options());
  const int64_t units[2] = {H, 0};
  const std::vector<OptTensor> coefs = {gate, mult, c10::nullopt, c10::nullopt, c10::nullopt, c10::nullopt};
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "nrnn_backward", [&] {
    const auto nz = make_noise<scalar_t>(rng, scheme, sa, sm, dt, shared, scale, keyed, coefs, p.N, units);
    auto run = KH == 2 * H ? (step_grad ? backward_loop<scalar_t, true, true> : backward_loop<scalar_t, true, false>)
                           : (step_grad ? backward_loop<scalar_t, false, true> : backward_loop<scalar_t, false, false>);
    run(p, nz, act.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), KH,
        st.data_ptr<scalar_t>(), dH.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(), DZ.data_ptr<scalar_t>(),
                            step_grad ? DPSI.data_ptr<scalar_t>() : nullptr, H);
  });
  const Tensor none = at::empty({0}, out.options());
  Tensor dxw = (needs & 1) ? DZ.narrow(1, KH - H, H).contiguous() : none;
  Tensor dk = (needs & 2) ? grad_w_hh(p, DZ, out, h0) : none;
  Tensor dstep = step_grad ? (DPSI * drift).sum(0).view(step->sizes()) : none;
  return std::make_tuple(dxw, dk, dstep, (needs & 8) ? dh0 : none);
}

}  // namespace nrnn
