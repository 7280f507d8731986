// Noisy LSTM, one layer and direction (PyTorch's gate order i, f, g, o; optional projection h = W_hr m).
//
// Forward per step: one GEMM G_t += h_prev W_hh^T into the gate buffer (G starts as x W_ih^T), then
// one loop over the rows that generates the rows' Gaussians and does the cell maths in place:
//   c = gate_c (f c_prev + i g) + mult_c c_prev + add_c,   m = o tanh(c),
//   h = gate_h m + mult_h h_prev + add_h          (with a projection: h = gate_h (W_hr m) + ..., one more GEMM)
// Saved for backward: the activated gates, the cells and (projection) m. No noise is saved: backward regenerates
// the planes gate and mult depend on (none for additive noise).
#include "common.h"
#include "kernels.h"

namespace nrnn {
namespace {

// PROJ: with a projection (a template parameter: no branch inside the vectorised loops)
template <typename T, bool PROJ>
void forward_loop(const Plan& p, const NoiseSpec<T>& nz, T* G, const T* bias, const T* Whh, const T* Whr, const T* h0,
                  const T* c0, T* out, T* cells, T* M, int64_t H, int64_t P) {
  const int64_t G4 = 4 * H;
  std::vector<T> scratch;
  const int64_t grain = grain_rows(H, 8);
  for (int64_t t : p.order) {
    const int64_t size = p.sizes[t], r0 = p.offs[t];
    const T* hprev = entering<T>(p, t, out, h0, P, scratch);
    mm_nt<T>(size, G4, P, hprev, P, Whh, P, G + r0 * G4, G4, T(1));
    at::parallel_for(0, size, grain, [&](int64_t b0, int64_t b1) {
      RowNoise<T> nc(nz, 1), nh(nz, 0);
      nc.prepare(r0 + b0, b1 - b0, false);
      if (!PROJ) nh.prepare(r0 + b0, b1 - b0, false);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = r0 + b;
        nc.fill(row);
        if (!PROJ) nh.fill(row);
        T* __restrict g = G + row * G4;
        const T* __restrict cp = prev_row<const T>(p, t, b, cells, c0, H);
        T* __restrict c = cells + row * H;
        const T* __restrict hp = hprev + b * P;
        T* __restrict h = PROJ ? M + row * H : out + row * P;
        const T *gc = nc.gate, *mc = nc.mult, *ac = nc.add, *gh = nh.gate, *mh = nh.mult, *ah = nh.add;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const T i = sigm(g[j] + bias[j]), f = sigm(g[H + j] + bias[H + j]);
          const T gg = tanh_(g[2 * H + j] + bias[2 * H + j]), o = sigm(g[3 * H + j] + bias[3 * H + j]);
          g[j] = i;
          g[H + j] = f;
          g[2 * H + j] = gg;
          g[3 * H + j] = o;
          const T cn = gc[j] * (f * cp[j] + i * gg) + mc[j] * cp[j] + ac[j];
          c[j] = cn;
          const T m = o * tanh_(cn);
          h[j] = PROJ ? m : gh[j] * m + mh[j] * hp[j] + ah[j];
        }
      }
    });
    if (!PROJ) continue;
    mm_nt<T>(size, P, H, M + r0 * H, H, Whr, H, out + r0 * P, P, T(0));
    at::parallel_for(0, size, grain_rows(P, 2), [&](int64_t b0, int64_t b1) {
      RowNoise<T> nh(nz, 0);
      nh.prepare(r0 + b0, b1 - b0, false);
      for (int64_t b = b0; b < b1; ++b) {
        nh.fill(r0 + b);
        T* __restrict h = out + (r0 + b) * P;
        const T* __restrict hp = hprev + b * P;
        for (int64_t j = 0; j < P; ++j) h[j] = nh.gate[j] * h[j] + nh.mult[j] * hp[j] + nh.add[j];
      }
    });
  }
}

template <typename T, bool PROJ>
void backward_loop(const Plan& p, const NoiseSpec<T>& nz, const T* G, const T* cells, const T* c0, const T* Whh,
                   const T* Whr, T* dH, T* dC, T* dh0, T* dc0, T* dG, T* DPH, int64_t H, int64_t P) {
  const int64_t G4 = 4 * H;
  const int64_t grain = grain_rows(H, 10);
  std::vector<T> dm;
  for (auto it = p.order.rbegin(); it != p.order.rend(); ++it) {
    const int64_t t = *it, size = p.sizes[t], r0 = p.offs[t];
    if (PROJ) {  // dpsi_h = dh * gate_h, then dm = dpsi_h W_hr
      at::parallel_for(0, size, grain_rows(P, 2), [&](int64_t b0, int64_t b1) {
        RowNoise<T> nh(nz, 0);
        nh.prepare(r0 + b0, b1 - b0, true);
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t row = r0 + b;
          nh.fill(row);
          const T* __restrict dh = dH + row * P;
          T* __restrict dph = DPH + row * P;
          T* __restrict dhp = prev_row<T>(p, t, b, dH, dh0, P);
          for (int64_t j = 0; j < P; ++j) {
            dph[j] = dh[j] * nh.gate[j];
            dhp[j] += dh[j] * nh.mult[j];
          }
        }
      });
      dm.resize(size * H);
      mm_nn<T>(size, H, P, DPH + r0 * P, P, Whr, H, dm.data(), H, T(0));
    }
    at::parallel_for(0, size, grain, [&](int64_t b0, int64_t b1) {
      RowNoise<T> nc(nz, 1), nh(nz, 0);
      nc.prepare(r0 + b0, b1 - b0, true);
      if (!PROJ) nh.prepare(r0 + b0, b1 - b0, true);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = r0 + b;
        nc.fill(row);
        if (!PROJ) nh.fill(row);
        const T* __restrict g = G + row * G4;
        const T* __restrict c = cells + row * H;
        const T* __restrict cp = prev_row<const T>(p, t, b, cells, c0, H);
        const T* __restrict dcin = dC + row * H;
        T* __restrict dg = dG + row * G4;
        T* __restrict dcp = prev_row<T>(p, t, b, dC, dc0, H);
        const T* __restrict dh = PROJ ? dm.data() + b * H : dH + row * P;
        T* __restrict dhp = PROJ ? dh0 : prev_row<T>(p, t, b, dH, dh0, P);  // unused with PROJ
        const T *gc = nc.gate, *mc = nc.mult, *gh = nh.gate, *mh = nh.mult;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const T i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j];
          const T tc = tanh_(c[j]);
          const T dmj = PROJ ? dh[j] : dh[j] * gh[j];
          const T dcell = dcin[j] + dmj * o * (T(1) - tc * tc);
          const T dpsi_c = dcell * gc[j];
          dg[j] = dpsi_c * gg * i * (T(1) - i);
          dg[H + j] = dpsi_c * cp[j] * f * (T(1) - f);
          dg[2 * H + j] = dpsi_c * i * (T(1) - gg * gg);
          dg[3 * H + j] = dmj * tc * o * (T(1) - o);
          dcp[j] += dpsi_c * f + dcell * mc[j];
          if (!PROJ) dhp[j] += dh[j] * mh[j];
        }
      }
    });
    backprop_gemm<T>(p, t, dG, G4, Whh, dH, dh0, P);
  }
}

std::vector<OptTensor> six(const OptTensor& a, const OptTensor& b, const OptTensor& c, const OptTensor& d,
                           const OptTensor& e, const OptTensor& f) {
  return {a, b, c, d, e, f};
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0, const Tensor& batch_sizes, bool reverse,
    const Tensor& rng, int64_t scheme, double sa, double sm, double dt, bool shared, double scale, int64_t keyed,
    const OptTensor& gate_h, const OptTensor& mult_h, const OptTensor& add_h, const OptTensor& gate_c,
    const OptTensor& mult_c, const OptTensor& add_c) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const Plan p = make_plan(batch_sizes, reverse);
  const int64_t H = w_hh.size(0) / 4, P = w_hh.size(1);
  const bool proj = given(w_hr);
  TORCH_CHECK(x.dim() == 2 && x.size(0) == p.N, "lstm_forward: x must be [N, I] with N = sum(batch_sizes)");
  TORCH_CHECK(proj || P == H, "lstm_forward: w_hh must be [4H, H] without a projection");
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({p.B, P}) && c0.sizes() == at::IntArrayRef({p.B, H}),
              "lstm_forward: h0 must be [B, P] and c0 [B, H]");
  Tensor G = at::mm(x.contiguous(), w_ih.t()).contiguous();
  Tensor bias = bias_sum(b_ih, b_hh, 4 * H, x.options());
  Tensor whh = w_hh.contiguous(), h0c = h0.contiguous(), c0c = c0.contiguous();
  Tensor whr = proj ? w_hr->contiguous() : Tensor();
  Tensor out = at::empty({p.N, P}, x.options()), cells = at::empty({p.N, H}, x.options());
  Tensor M = at::empty({proj ? p.N : 0, H}, x.options());
  const int64_t units[2] = {P, H};
  const auto coefs = six(gate_h, mult_h, add_h, gate_c, mult_c, add_c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_forward", [&] {
    const auto nz = make_noise<scalar_t>(rng, scheme, sa, sm, dt, shared, scale, keyed, coefs, p.N, units);
    auto run = proj ? forward_loop<scalar_t, true> : forward_loop<scalar_t, false>;
    run(p, nz, G.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), whh.data_ptr<scalar_t>(),
        proj ? whr.data_ptr<scalar_t>() : nullptr,
        h0c.data_ptr<scalar_t>(), c0c.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), cells.data_ptr<scalar_t>(),
        proj ? M.data_ptr<scalar_t>() : nullptr, H, P);
  });
  return std::make_tuple(out, final_rows(p, out), final_rows(p, cells), G, cells, M);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const OptTensor& grad_out, const OptTensor& grad_h_n, const OptTensor& grad_c_n, const Tensor& x,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const Tensor& out, const Tensor& gates, const Tensor& cells, const Tensor& m, const Tensor& batch_sizes,
    bool reverse, const Tensor& rng, int64_t scheme, double sa, double sm, double dt, bool shared, double scale,
    int64_t keyed, const OptTensor& gate_h, const OptTensor& mult_h, const OptTensor& gate_c,
    const OptTensor& mult_c, int64_t needs) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const Plan p = make_plan(batch_sizes, reverse);
  const int64_t H = w_hh.size(0) / 4, P = w_hh.size(1);
  const bool proj = given(w_hr);
  Tensor dH = initial_grad(p, grad_out, grad_h_n, out);
  Tensor dC = initial_grad(p, c10::nullopt, grad_c_n, cells);
  Tensor dh0 = at::zeros_like(h0, at::MemoryFormat::Contiguous), dc0 = at::zeros_like(c0, at::MemoryFormat::Contiguous);
  Tensor dG = at::empty({p.N, 4 * H}, x.options());
  Tensor DPH = at::empty({proj ? p.N : 0, P}, x.options());
  Tensor whh = w_hh.contiguous(), c0c = c0.contiguous();
  Tensor whr = proj ? w_hr->contiguous() : Tensor();
  const int64_t units[2] = {P, H};
  const auto coefs = six(gate_h, mult_h, c10::nullopt, gate_c, mult_c, c10::nullopt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_backward", [&] {
    const auto nz = make_noise<scalar_t>(rng, scheme, sa, sm, dt, shared, scale, keyed, coefs, p.N, units);
    auto run = proj ? backward_loop<scalar_t, true> : backward_loop<scalar_t, false>;
    run(p, nz, gates.data_ptr<scalar_t>(), cells.data_ptr<scalar_t>(), c0c.data_ptr<scalar_t>(),
        whh.data_ptr<scalar_t>(), proj ? whr.data_ptr<scalar_t>() : nullptr, dH.data_ptr<scalar_t>(),
        dC.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(), dc0.data_ptr<scalar_t>(), dG.data_ptr<scalar_t>(),
        proj ? DPH.data_ptr<scalar_t>() : nullptr, H, P);
  });
  const Tensor none = at::empty({0}, x.options());
  Tensor dx = (needs & 1) ? at::mm(dG, w_ih) : none;
  Tensor dw_ih = (needs & 2) ? at::mm(x.t(), dG).t().contiguous() : none;
  Tensor dw_hh = (needs & 4) ? grad_w_hh(p, dG, out, h0) : none;
  Tensor db = (needs & 8) ? dG.sum(0) : none;
  Tensor dw_hr = (proj && (needs & 16)) ? at::mm(DPH.t(), m).contiguous() : none;
  return std::make_tuple(dx, dw_ih, dw_hh, db, dw_hr, (needs & 32) ? dh0 : none, (needs & 64) ? dc0 : none);
}

}  // namespace nrnn
