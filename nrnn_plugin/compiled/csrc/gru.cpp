// Noisy GRU, one layer and direction (PyTorch's formulation: reset gate applied after the hidden projection).
//
// Forward per step: two GEMMs HG_t = h_prev W_hh^T and GI_t = x_t W_ih^T, then one loop over the rows:
//   r = sig(gi_r + gh_r + b_hr), z = sig(gi_z + gh_z + b_hz), n = tanh(gi_n + r (gh_n + b_hn)),
//   h = gate (n + z (h_prev - n)) + mult h_prev + add
// Saved for backward: HG = (r, z, gh_n + b_hn) and n.
#include "common.h"
#include "kernels.h"

namespace nrnn {
namespace {

// The input projection of each step is computed into a small scratch (not an [N, 3H] buffer: the backward does not
// need it, and writing and reading it costs more than the per-step GEMM).
template <typename T>
void forward_loop(const Plan& p, const NoiseSpec<T>& nz, const T* X, int64_t I, const T* Wih, const T* bih, T* HG,
                  T* NEW, const T* Whh, const T* bhh, const T* h0, T* out, int64_t H) {
  const int64_t G3 = 3 * H;
  std::vector<T> scratch, gi_step;
  const int64_t grain = grain_rows(H, 8);
  for (int64_t t : p.order) {
    const int64_t size = p.sizes[t], r0 = p.offs[t];
    const T* hprev = entering<T>(p, t, out, h0, H, scratch);
    mm_nt<T>(size, G3, H, hprev, H, Whh, H, HG + r0 * G3, G3, T(0));
    gi_step.resize(size * G3);
    mm_nt<T>(size, G3, I, X + r0 * I, I, Wih, I, gi_step.data(), G3, T(0));
    at::parallel_for(0, size, grain, [&](int64_t b0, int64_t b1) {
      RowNoise<T> nh(nz, 0);
      nh.prepare(r0 + b0, b1 - b0, false);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = r0 + b;
        nh.fill(row);
        const T* __restrict gi = gi_step.data() + b * G3;
        T* __restrict hg = HG + row * G3;
        T* __restrict nw = NEW + row * H;
        const T* __restrict hp = hprev + b * H;
        T* __restrict h = out + row * H;
        const T *gate = nh.gate, *mult = nh.mult, *add = nh.add;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const T r = sigm(gi[j] + bih[j] + hg[j] + bhh[j]);
          const T z = sigm(gi[H + j] + bih[H + j] + hg[H + j] + bhh[H + j]);
          const T ghn = hg[2 * H + j] + bhh[2 * H + j];
          const T n = tanh_(gi[2 * H + j] + bih[2 * H + j] + r * ghn);
          hg[j] = r;
          hg[H + j] = z;
          hg[2 * H + j] = ghn;
          nw[j] = n;
          h[j] = gate[j] * (n + z * (hp[j] - n)) + mult[j] * hp[j] + add[j];
        }
      }
    });
  }
}

template <typename T>
void backward_loop(const Plan& p, const NoiseSpec<T>& nz, const T* HG, const T* NEW, const T* out, const T* h0,
                   const T* Whh, T* dH, T* dh0, T* dGH, T* dGIn, int64_t H) {
  const int64_t G3 = 3 * H;
  const int64_t grain = grain_rows(H, 8);
  for (auto it = p.order.rbegin(); it != p.order.rend(); ++it) {
    const int64_t t = *it, size = p.sizes[t], r0 = p.offs[t];
    at::parallel_for(0, size, grain, [&](int64_t b0, int64_t b1) {
      RowNoise<T> nh(nz, 0);
      nh.prepare(r0 + b0, b1 - b0, true);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = r0 + b;
        nh.fill(row);
        const T* __restrict hg = HG + row * G3;
        const T* __restrict nw = NEW + row * H;
        const T* __restrict hp = prev_row<const T>(p, t, b, out, h0, H);
        const T* __restrict dh = dH + row * H;
        T* __restrict dg = dGH + row * G3;
        T* __restrict dgin = dGIn + row * H;
        T* __restrict dhp = prev_row<T>(p, t, b, dH, dh0, H);
        const T *gate = nh.gate, *mult = nh.mult;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const T r = hg[j], z = hg[H + j], ghn = hg[2 * H + j], n = nw[j];
          const T dpsi = dh[j] * gate[j];
          const T dAn = dpsi * (T(1) - z) * (T(1) - n * n);
          dg[j] = dAn * ghn * r * (T(1) - r);
          dg[H + j] = dpsi * (hp[j] - n) * z * (T(1) - z);
          dg[2 * H + j] = dAn * r;
          dgin[j] = dAn;
          dhp[j] += dpsi * z + dh[j] * mult[j];
        }
      }
    });
    backprop_gemm<T>(p, t, dGH, G3, Whh, dH, dh0, H);
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(
    const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const Tensor& h0, const Tensor& batch_sizes, bool reverse, const Tensor& rng, int64_t scheme, double sa,
    double sm, double dt, bool shared, double scale, int64_t keyed, const OptTensor& gate, const OptTensor& mult,
    const OptTensor& add) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const Plan p = make_plan(batch_sizes, reverse);
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(x.dim() == 2 && x.size(0) == p.N, "gru_forward: x must be [N, I] with N = sum(batch_sizes)");
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({p.B, H}), "gru_forward: h0 must be [B, H]");
  Tensor xc = x.contiguous(), wih = w_ih.contiguous();
  Tensor bih = bias_sum(b_ih, c10::nullopt, 3 * H, x.options()), bhh = bias_sum(b_hh, c10::nullopt, 3 * H, x.options());
  Tensor whh = w_hh.contiguous(), h0c = h0.contiguous();
  Tensor HG = at::empty({p.N, 3 * H}, x.options()), NEW = at::empty({p.N, H}, x.options());
  Tensor out = at::empty({p.N, H}, x.options());
  const int64_t units[2] = {H, 0};
  const std::vector<OptTensor> coefs = {gate, mult, add, c10::nullopt, c10::nullopt, c10::nullopt};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_forward", [&] {
    const auto nz = make_noise<scalar_t>(rng, scheme, sa, sm, dt, shared, scale, keyed, coefs, p.N, units);
    forward_loop<scalar_t>(p, nz, xc.data_ptr<scalar_t>(), x.size(1), wih.data_ptr<scalar_t>(),
                           bih.data_ptr<scalar_t>(), HG.data_ptr<scalar_t>(), NEW.data_ptr<scalar_t>(),
                           whh.data_ptr<scalar_t>(), bhh.data_ptr<scalar_t>(),
                           h0c.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), H);
  });
  return std::make_tuple(out, final_rows(p, out), HG, NEW);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const OptTensor& grad_out, const OptTensor& grad_h_n, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& h0, const Tensor& out, const Tensor& hidden_gates, const Tensor& new_gate,
    const Tensor& batch_sizes, bool reverse, const Tensor& rng, int64_t scheme, double sa, double sm, double dt,
    bool shared, double scale, int64_t keyed, const OptTensor& gate, const OptTensor& mult, int64_t needs) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const Plan p = make_plan(batch_sizes, reverse);
  const int64_t H = w_hh.size(1);
  Tensor dH = initial_grad(p, grad_out, grad_h_n, out);
  Tensor dh0 = at::zeros_like(h0, at::MemoryFormat::Contiguous);
  Tensor dGH = at::empty({p.N, 3 * H}, x.options()), dGIn = at::empty({p.N, H}, x.options());
  Tensor whh = w_hh.contiguous(), h0c = h0.contiguous();
  const int64_t units[2] = {H, 0};
  const std::vector<OptTensor> coefs = {gate, mult, c10::nullopt, c10::nullopt, c10::nullopt, c10::nullopt};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_backward", [&] {
    const auto nz = make_noise<scalar_t>(rng, scheme, sa, sm, dt, shared, scale, keyed, coefs, p.N, units);
    backward_loop<scalar_t>(p, nz, hidden_gates.data_ptr<scalar_t>(), new_gate.data_ptr<scalar_t>(),
                            out.data_ptr<scalar_t>(), h0c.data_ptr<scalar_t>(), whh.data_ptr<scalar_t>(),
                            dH.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(), dGH.data_ptr<scalar_t>(),
                            dGIn.data_ptr<scalar_t>(), H);
  });
  const Tensor none = at::empty({0}, x.options());
  Tensor rz = dGH.narrow(1, 0, 2 * H);
  Tensor dx = (needs & 1) ? at::mm(rz, w_ih.narrow(0, 0, 2 * H)).addmm_(dGIn, w_ih.narrow(0, 2 * H, H)) : none;
  Tensor dw_ih = (needs & 2) ? at::cat({at::mm(x.t(), rz), at::mm(x.t(), dGIn)}, 1).t().contiguous() : none;
  Tensor dw_hh = (needs & 4) ? grad_w_hh(p, dGH, out, h0) : none;
  Tensor db_hh = (needs & 24) ? dGH.sum(0) : none;
  Tensor db_ih = (needs & 8) ? at::cat({db_hh.narrow(0, 0, 2 * H), dGIn.sum(0)}, 0) : none;  // r, z: as db_hh
  return std::make_tuple(dx, dw_ih, dw_hh, db_ih, (needs & 16) ? db_hh : none, (needs & 32) ? dh0 : none);
}

}  // namespace nrnn
