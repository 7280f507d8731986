// Shared pieces of the noisy sequence kernels: BLAS, activations, the step plan of the packed row layout and the
// noise of one state (generated from its counter-based key, or read from coefficient tensors).
//
// Row layout: the packed, time-major rows of nrnn_plugin/layers/layout.py (rows of step t are offs[t] ..
// offs[t] + sizes[t]; padded input is sizes = [B] * T). Noise: h_next = gate * Psi + mult * h_prev + add
// (nrnn_plugin/diffusion.py), per state (h, and c for an LSTM).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "philox.h"

// Fortran BLAS of the BLAS torch links (MKL, OpenBLAS); weak, so that a torch without them still loads this
// library and the GEMMs go through at::mm (a little dispatcher overhead per call).
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha, const float* a,
            const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc)
    __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace nrnn {

using at::Tensor;

// ------------------------------------------------------------------------------------------------ BLAS
template <typename T>
inline at::ScalarType scalar_type_of();
template <>
inline at::ScalarType scalar_type_of<float>() { return at::kFloat; }
template <>
inline at::ScalarType scalar_type_of<double>() { return at::kDouble; }

// Row-major C[M, N] = beta C + op(A) op(B) through column-major BLAS. ta / tb: 'N' or 'T' for row-major A, B.
template <typename T>
inline void gemm(char ta, char tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
                 T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const T one = T(1);
  const int m = (int)N, n = (int)M, k = (int)K, la = (int)ldb, lb = (int)lda, lc = (int)ldc;
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_) { sgemm_(&tb, &ta, &m, &n, &k, &one, B, &la, A, &lb, &beta, C, &lc); return; }
  } else {
    if (dgemm_) { dgemm_(&tb, &ta, &m, &n, &k, &one, B, &la, A, &lb, &beta, C, &lc); return; }
  }
  const auto opts = at::TensorOptions().dtype(scalar_type_of<T>());
  const int64_t ar = ta == 'N' ? M : K, ac = ta == 'N' ? K : M, br = tb == 'N' ? K : N, bc = tb == 'N' ? N : K;
  Tensor a = at::from_blob(const_cast<T*>(A), {ar, ac}, {lda, 1}, opts);
  Tensor b = at::from_blob(const_cast<T*>(B), {br, bc}, {ldb, 1}, opts);
  Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  at::addmm_out(c, c, ta == 'N' ? a : a.t(), tb == 'N' ? b : b.t(), beta, 1);
}
// C[M,N] = beta C + A[M,K] B[N,K]^T
template <typename T>
inline void mm_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                  T beta) {
  gemm<T>('N', 'T', M, N, K, A, lda, B, ldb, beta, C, ldc);
}
// C[M,N] = beta C + A[M,K] B[K,N]
template <typename T>
inline void mm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                  T beta) {
  gemm<T>('N', 'N', M, N, K, A, lda, B, ldb, beta, C, ldc);
}

// ------------------------------------------------------------------------------------------------ activations
// float: a branch-free, vectorisable exp (Cody-Waite reduction, degree-6 Taylor, relative error < 3e-7);
// double: libm. The loops vectorise with -fno-trapping-math (float compares may then be if-converted).
inline float fexp(float x) {
  x = x < -87.0f ? -87.0f : x;  // values, not std::min's references: if-converted without mask registers (AVX2)
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t e = ((int32_t)n + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, 4);  // (not nrnn_noise::as_float: other fp options, it would not inline)
  return p * scale;
}
inline float sigm(float x) { return 1.0f / (1.0f + fexp(-x)); }
inline float tanh_(float x) { return 2.0f / (1.0f + fexp(-2.0f * x)) - 1.0f; }
inline double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }
inline float ndtr(float x) { return (1.0f + std::erf(x * 0.70710678118654752f)) * 0.5f; }
inline double ndtr(double x) { return (1.0 + std::erf(x * 0.70710678118654752)) * 0.5; }

// ------------------------------------------------------------------------------------------------ step plan
struct Plan {
  int64_t T = 0, B = 0, N = 0;
  std::vector<int64_t> sizes, offs, order, prev, carried, final_row;
};

inline Plan make_plan(const Tensor& batch_sizes, bool reverse) {
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.numel() > 0, "batch_sizes must be a non-empty 1-D tensor");
  Tensor bs = batch_sizes.to(at::kCPU, at::kLong).contiguous();
  Plan p;
  p.T = bs.numel();
  const int64_t* s = bs.data_ptr<int64_t>();
  p.sizes.assign(s, s + p.T);
  p.B = p.sizes[0];
  p.offs.resize(p.T);
  for (int64_t t = 0; t < p.T; ++t) {
    TORCH_CHECK(p.sizes[t] > 0 && (t == 0 || p.sizes[t] <= p.sizes[t - 1]),
                "batch sizes must be positive and non-increasing");
    p.offs[t] = p.N;
    p.N += p.sizes[t];
  }
  p.prev.assign(p.T, -1);
  p.carried.assign(p.T, 0);
  int64_t previous = -1;
  for (int64_t i = 0; i < p.T; ++i) {
    const int64_t t = reverse ? p.T - 1 - i : i;
    p.order.push_back(t);
    p.prev[t] = previous;
    p.carried[t] = previous < 0 ? 0 : std::min(p.sizes[t], p.sizes[previous]);
    previous = t;
  }
  p.final_row.resize(p.B);
  for (int64_t b = 0; b < p.B; ++b) {
    if (reverse) {
      p.final_row[b] = b;
    } else {
      int64_t last = 0;
      while (last + 1 < p.T && p.sizes[last + 1] > b) ++last;
      p.final_row[b] = p.offs[last] + b;
    }
  }
  return p;
}

// (destination rows, source rows, length, source is the initial state): every row paired with the state entering
// it, merged where both sides continue contiguously (padded input: two pieces).
struct Piece {
  int64_t dst, src, len;
  bool init;
};
inline std::vector<Piece> prev_pieces(const Plan& p) {
  std::vector<Piece> raw;
  for (int64_t t = 0; t < p.T; ++t) {
    const int64_t c = p.carried[t];
    if (c > 0) raw.push_back({p.offs[t], p.offs[p.prev[t]], c, false});
    if (c < p.sizes[t]) raw.push_back({p.offs[t] + c, c, p.sizes[t] - c, true});
  }
  std::sort(raw.begin(), raw.end(), [](const Piece& a, const Piece& b) { return a.dst < b.dst; });
  std::vector<Piece> merged;
  for (const Piece& q : raw) {
    if (!merged.empty()) {
      Piece& m = merged.back();
      if (m.init == q.init && m.dst + m.len == q.dst && m.src + m.len == q.src) {
        m.len += q.len;
        continue;
      }
    }
    merged.push_back(q);
  }
  return merged;
}

// The state entering step t as a contiguous [size, H] matrix (a view, or rows copied into scratch).
template <typename T>
const T* entering(const Plan& p, int64_t t, const T* out, const T* init, int64_t H, std::vector<T>& scratch) {
  const int64_t size = p.sizes[t], c = p.carried[t];
  if (c == size) return out + p.offs[p.prev[t]] * H;
  if (c == 0) return init;
  scratch.resize(size * H);
  std::copy(out + p.offs[p.prev[t]] * H, out + (p.offs[p.prev[t]] + c) * H, scratch.data());
  std::copy(init + c * H, init + size * H, scratch.data() + c * H);
  return scratch.data();
}
template <typename T>
inline T* prev_row(const Plan& p, int64_t t, int64_t b, T* buf, T* init, int64_t H) {
  return b < p.carried[t] ? buf + (p.offs[p.prev[t]] + b) * H : init + b * H;
}
// dst(rows entering step t) += dG_t[size, GH] @ W[GH, H]
template <typename T>
void backprop_gemm(const Plan& p, int64_t t, const T* dG, int64_t GH, const T* W, T* dbuf, T* dinit, int64_t H) {
  const int64_t size = p.sizes[t], c = p.carried[t];
  const T* dGt = dG + p.offs[t] * GH;
  if (c > 0) mm_nn<T>(c, H, GH, dGt, GH, W, H, dbuf + p.offs[p.prev[t]] * H, H, T(1));
  if (c < size) mm_nn<T>(size - c, H, GH, dGt + c * GH, GH, W, H, dinit + c * H, H, T(1));
}

inline Tensor final_index(const Plan& p) {
  Tensor idx = at::empty({p.B}, at::kLong);
  std::copy(p.final_row.begin(), p.final_row.end(), idx.data_ptr<int64_t>());
  return idx;
}
inline Tensor final_rows(const Plan& p, const Tensor& buf) { return buf.index_select(0, final_index(p)); }
// The gradient buffer of a state's per-row outputs: grad_out plus grad_final at the final rows (one copy).
inline Tensor initial_grad(const Plan& p, const c10::optional<Tensor>& g_out, const c10::optional<Tensor>& g_final,
                           const Tensor& like) {
  Tensor g;
  if (g_out.has_value() && g_out->defined()) {
    g = at::empty_like(like, at::MemoryFormat::Contiguous);
    g.copy_(*g_out);
  } else {
    g = at::zeros_like(like, at::MemoryFormat::Contiguous);
  }
  if (g_final.has_value() && g_final->defined()) g.index_add_(0, final_index(p), *g_final);
  return g;
}
// d loss / d W_hh from the gate gradients dGh [N, G] and the states entering every row: [G, H] (contiguous).
inline Tensor grad_w_hh(const Plan& p, const Tensor& dGh, const Tensor& out, const Tensor& h0) {
  Tensor g = at::zeros({out.size(1), dGh.size(1)}, dGh.options());
  for (const Piece& q : prev_pieces(p)) {
    const Tensor& src = q.init ? h0 : out;
    g.addmm_(src.narrow(0, q.src, q.len).t(), dGh.narrow(0, q.dst, q.len));
  }
  return g.t().contiguous();
}
inline bool given(const c10::optional<Tensor>& t) { return t.has_value() && t->defined(); }
// b_ih + b_hh, or zeros [G] without biases (added per element inside the loops: no broadcast pass over [N, G])
inline Tensor bias_sum(const c10::optional<Tensor>& a, const c10::optional<Tensor>& b, int64_t G,
                       const at::TensorOptions& options) {
  if (given(a) && given(b)) return (*a + *b).contiguous();
  if (given(a)) return a->contiguous();
  if (given(b)) return b->contiguous();
  return at::zeros({G}, options);
}
inline int64_t grain_rows(int64_t H, int64_t factor) {
  static const int64_t min_elems = [] {
    const char* v = std::getenv("NRNN_PAR_MIN");
    return v ? std::atoll(v) : (int64_t)4096;
  }();
  if (min_elems <= 0) return 1;
  return std::max<int64_t>(1, min_elems / std::max<int64_t>(1, H * factor));
}

// ------------------------------------------------------------------------------------------------ noise
enum Scheme { NONE = 0, EULER = 1, MILSTEIN = 2, REFERENCE = 3 };

// The scheme's parameters (shared by the states of a layer) and, per state, its key or its coefficient tensors.
// Keyed states: planes (additive, multiplicative) of widths Wa, Wm at stream indices start[0], start[1]
// (Milstein: one driving plane). Tensor states: gate / mult / add of shape [N, units], [N, 1] or [1, 1].
struct Scheme_ {
  int scheme = NONE;
  double sa = 0, sm = 0, dt = 1, scale = 1;
  bool shared = false;
};

template <typename T>
struct StateNoise {
  int64_t units = 0;
  bool keyed = false;
  uint64_t seed = 0, offset = 0, start[2] = {0, 0};
  int64_t width[2] = {0, 0};
  const T* coef[3] = {nullptr, nullptr, nullptr};  // gate, mult, add
  int64_t rows_of[3] = {0, 0, 0}, cols_of[3] = {0, 0, 0};
  bool active() const { return keyed || coef[0] || coef[1] || coef[2]; }
};

template <typename T>
struct NoiseSpec {
  Scheme_ s;
  StateNoise<T> state[2];  // 0 = h, 1 = c
  // backward needs gate and mult only: generated draws are needed unless the noise is additive
  bool backward_needs_draws(int i) const {
    const StateNoise<T>& st = state[i];
    if (!st.keyed) return false;
    return s.scheme == MILSTEIN ? s.sm > 0.0 : st.width[1] > 0;
  }
};

// Parse the noise arguments shared by every op: rng [2, 4] int64 (seed, offset, start0, start1 per state), the
// scheme, a bit mask of keyed states (1 = h, 2 = c) and the coefficient tensors (gate, mult, add per state).
template <typename T>
NoiseSpec<T> make_noise(const Tensor& rng, int64_t scheme, double sa, double sm, double dt, bool shared, double scale,
                        int64_t keyed, const std::vector<c10::optional<Tensor>>& coefs, int64_t N,
                        const int64_t units[2]) {
  NoiseSpec<T> nz;
  TORCH_CHECK(scheme >= 0 && scheme <= 3, "scheme must be 0 (none), 1 (euler_maruyama), 2 (milstein), 3 (reference)");
  nz.s.scheme = (int)scheme;
  nz.s.sa = sa; nz.s.sm = sm; nz.s.dt = dt; nz.s.shared = shared; nz.s.scale = scale;
  Tensor r;
  if (keyed) {
    TORCH_CHECK(rng.scalar_type() == at::kLong && rng.numel() == 8, "rng must be an int64 tensor [2, 4]");
    r = rng.to(at::kCPU).contiguous();
  }
  for (int i = 0; i < 2; ++i) {
    StateNoise<T>& st = nz.state[i];
    st.units = units[i];
    if ((keyed >> i) & 1) {
      TORCH_CHECK(scheme != NONE, "keyed noise needs a scheme");
      const int64_t* v = r.data_ptr<int64_t>() + 4 * i;
      st.keyed = true;
      st.seed = (uint64_t)v[0]; st.offset = (uint64_t)v[1]; st.start[0] = (uint64_t)v[2]; st.start[1] = (uint64_t)v[3];
      // the state's planes in the order of Diffusion.planes (zero widths left out): (additive, multiplicative),
      // Milstein: (driving); start[k] is the stream index of plane k, here stored per part
      const int64_t H = units[i];
      const int64_t wa = scheme == MILSTEIN ? H : (sa > 0.0 ? H : 0);
      const int64_t wm = scheme == MILSTEIN ? 0 : (sm > 0.0 ? (shared ? 1 : H) : 0);
      st.width[0] = wa;
      st.width[1] = wm;
      if (wa == 0) st.start[1] = st.start[0];
      continue;
    }
    for (int k = 0; k < 3; ++k) {
      const c10::optional<Tensor>& c = coefs[3 * i + k];
      if (!given(c)) continue;
      TORCH_CHECK(c->dim() == 2 && c->is_contiguous() && c->scalar_type() == scalar_type_of<T>(),
                  "noise coefficients must be contiguous 2-D tensors of the input's dtype");
      TORCH_CHECK((c->size(0) == N || c->size(0) == 1) && (c->size(1) == units[i] || c->size(1) == 1),
                  "noise coefficients must have shape [N, units], [N, 1] or [1, 1]");
      st.coef[k] = c->data_ptr<T>();
      st.rows_of[k] = c->size(0);
      st.cols_of[k] = c->size(1);
    }
  }
  return nz;
}

// Coefficients of one row of a keyed state from its Gaussians (za: additive / driving plane, zm: multiplicative).
template <typename T>
inline void row_coefs(const Scheme_& s, int64_t H, int64_t Wa, int64_t Wm, const float* __restrict za,
                      const float* __restrict zm, T* __restrict gate, T* __restrict mult, T* __restrict add) {
  const double rdt = std::sqrt(s.dt);
  switch (s.scheme) {
    case EULER: {
      const T ka = (T)(rdt * s.sa), km = (T)(rdt * s.sm);
      for (int64_t j = 0; j < H; ++j) gate[j] = T(1);
      if (Wa) for (int64_t j = 0; j < H; ++j) add[j] = (T)za[j] * ka;
      else for (int64_t j = 0; j < H; ++j) add[j] = T(0);
      if (Wm == 1) { const T m = (T)zm[0] * km; for (int64_t j = 0; j < H; ++j) mult[j] = m; }
      else if (Wm) for (int64_t j = 0; j < H; ++j) mult[j] = (T)zm[j] * km;
      else for (int64_t j = 0; j < H; ++j) mult[j] = T(0);
      break;
    }
    case MILSTEIN: {
      const T half_dt = (T)(0.5 * s.dt), ka = (T)(rdt * s.sa), km = (T)(rdt * s.sm);
      const T kas = (T)(s.sa * s.sm), kmm = (T)(s.sm * s.sm);
      const bool has_a = s.sa > 0.0, has_m = s.sm > 0.0;
      for (int64_t j = 0; j < H; ++j) {
        const T xi = (T)za[j];
        const T corr = (xi * xi - T(1)) * half_dt;
        gate[j] = T(1);
        add[j] = has_a ? (has_m ? xi * ka + corr * kas : xi * ka) : T(0);
        mult[j] = has_m ? xi * km + corr * kmm : T(0);
      }
      break;
    }
    case REFERENCE: {
      const T sa = (T)s.sa, sm = (T)s.sm, dt = (T)s.dt;
      if (Wa) for (int64_t j = 0; j < H; ++j) add[j] = (T)za[j] * sa;
      else for (int64_t j = 0; j < H; ++j) add[j] = T(0);
      if (Wm) {
        for (int64_t j = 0; j < H; ++j) {
          const T step = (T(1) - sm * ndtr((T)zm[Wm == 1 ? 0 : j])) * dt;
          gate[j] = step;
          mult[j] = T(1) - step;
        }
      } else if (s.dt != 1.0) {
        for (int64_t j = 0; j < H; ++j) { gate[j] = dt; mult[j] = T(1) - dt; }
      } else {
        for (int64_t j = 0; j < H; ++j) { gate[j] = T(1); mult[j] = T(0); }
      }
      break;
    }
    default:
      for (int64_t j = 0; j < H; ++j) { gate[j] = T(1); mult[j] = T(0); add[j] = T(0); }
  }
  if (s.scale != 1.0) {
    const T f = (T)s.scale;
    for (int64_t j = 0; j < H; ++j) {
      gate[j] = T(1) + f * (gate[j] - T(1));
      mult[j] = f * mult[j];
      add[j] = f * add[j];
    }
  }
}

// Per-thread scratch of one state: the Gaussians of a block of rows and the (gate, mult, add) of the current row.
template <typename T>
struct RowNoise {
  const NoiseSpec<T>& nz;
  const StateNoise<T>& st;
  std::vector<float> z[2], zeros;
  std::vector<T> buf;  // [3, H]
  T *gate, *mult, *add;
  int which;
  int64_t first = 0;
  bool drawn_additive = true, constant = false;

  RowNoise(const NoiseSpec<T>& spec, int i)
      : nz(spec), st(spec.state[i]), zeros(std::max<int64_t>(spec.state[i].units, 1), 0.f),
        buf(3 * std::max<int64_t>(spec.state[i].units, 1)), which(i) {
    gate = buf.data(); mult = gate + st.units; add = mult + st.units;
    for (int64_t j = 0; j < st.units; ++j) { gate[j] = T(1); mult[j] = T(0); add[j] = T(0); }
  }
  // Gaussians of rows row0 .. row0 + rows - 1 (backward: only the planes gate and mult depend on), or, for a keyed
  // state whose backward needs no draws (additive noise), its constant gate and mult.
  void prepare(int64_t row0, int64_t rows, bool backward) {
    first = row0;
    if (!st.keyed) return;
    constant = backward && !nz.backward_needs_draws(which);
    if (constant) {
      row_coefs<T>(nz.s, st.units, st.width[0], st.width[1], zeros.data(), zeros.data(), gate, mult, add);
      return;
    }
    drawn_additive = !backward || nz.s.scheme == MILSTEIN;
    for (int part = 0; part < 2; ++part) {
      const int64_t w = st.width[part];
      if (w == 0 || (part == 0 && !drawn_additive)) continue;
      z[part].resize(rows * w);
      nrnn_noise::gaussians<10>(st.seed, st.offset, st.start[part] + (uint64_t)row0 * (uint64_t)w, rows * w,
                                z[part].data());
    }
  }
  // gate / mult / add of row `row` (keyed: from the draws; tensors: broadcast rows)
  void fill(int64_t row) {
    if (st.keyed) {
      if (constant) return;
      const float* za = (st.width[0] && drawn_additive) ? z[0].data() + (row - first) * st.width[0] : zeros.data();
      const float* zm = st.width[1] ? z[1].data() + (row - first) * st.width[1] : zeros.data();
      row_coefs<T>(nz.s, st.units, st.width[0], st.width[1], za, zm, gate, mult, add);
      return;
    }
    T* out[3] = {gate, mult, add};
    for (int k = 0; k < 3; ++k) {
      if (!st.coef[k]) continue;
      const T* src = st.coef[k] + (st.rows_of[k] == 1 ? 0 : row * st.cols_of[k]);
      if (st.cols_of[k] == 1) std::fill(out[k], out[k] + st.units, src[0]);
      else std::copy(src, src + st.units, out[k]);
    }
  }
};

}  // namespace nrnn
