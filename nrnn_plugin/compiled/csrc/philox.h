// The noise: Philox4x32-10 and an exactly specified float32 Box-Muller, bit-identical to nrnn_plugin/philox.py
// (the definition; tests/test_compiled_kernels.py checks the identity). Every float operation below is one
// IEEE-754 binary32 operation in the order written: never compile this with -ffast-math.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Everything in this header is compiled without floating-point contraction (no FMA), whatever the flags of the
// including file: the noise must be bit-identical to the pure-PyTorch definition.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off", "no-math-errno")

namespace nrnn_noise {

constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;

// polynomial constants (float32 values; see nrnn_plugin.philox.CONSTANTS)
constexpr float L1 = 0.3333338797092438f, L2 = 0.19988688826560974f, L3 = 0.14937655627727509f;
constexpr float S1 = -0.16666653752326965f, S2 = 0.00833214819431305f, S3 = -0.00019513930601533502f;
constexpr float C1 = -0.5f, C2 = 0.04166661947965622f, C3 = -0.0013886665692552924f, C4 = 2.4382299670833163e-05f;
constexpr float LN2_HI = 0.693359375f;
constexpr float LN2_LO = (float)(0.6931471805599453 - 0.693359375);
constexpr float SQRT2 = 1.4142135623730951f;
constexpr float PIO2 = 1.5707963267948966f;

constexpr int NB = 32;  // Philox blocks per vectorised chunk (4 * NB Gaussians); 16 is 2x slower (loop overheads)

inline float as_float(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
inline uint32_t as_uint(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

// Philox4x32-ROUNDS of NB consecutive blocks b0 .. b0+NB-1: out[w][l] is word w of block b0+l.
template <int ROUNDS>
inline void philox_chunk(uint64_t b0, uint32_t k0, uint32_t k1, uint32_t o0, uint32_t o1, uint32_t out[4][NB]) {
  uint32_t c0[NB], c1[NB], c2[NB], c3[NB];
  for (int l = 0; l < NB; ++l) {
    const uint64_t b = b0 + (uint64_t)l;
    c0[l] = (uint32_t)b;
    c1[l] = (uint32_t)(b >> 32);
    c2[l] = o0;
    c3[l] = o1;
  }
  uint32_t key0 = k0, key1 = k1;
  for (int r = 0; r < ROUNDS; ++r) {
    if (r) { key0 += W0; key1 += W1; }
#pragma GCC ivdep
    for (int l = 0; l < NB; ++l) {
      const uint64_t p0 = (uint64_t)M0 * c0[l];
      const uint64_t p1 = (uint64_t)M1 * c2[l];
      const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[l] ^ key0;
      const uint32_t n1 = (uint32_t)p1;
      const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[l] ^ key1;
      const uint32_t n3 = (uint32_t)p0;
      c0[l] = n0; c1[l] = n1; c2[l] = n2; c3[l] = n3;
    }
  }
  std::memcpy(out[0], c0, sizeof c0);
  std::memcpy(out[1], c1, sizeof c1);
  std::memcpy(out[2], c2, sizeof c2);
  std::memcpy(out[3], c3, sizeof c3);
}

// ln(m * 2^-24), m in [1, 2^24] (spec step 4)
inline float log_u(uint32_t m) {
  const uint32_t bits = as_uint((float)(int32_t)m);
  int32_t e = (int32_t)(bits >> 23) - (127 + 24);
  float f = as_float((bits & 0x007FFFFFu) | 0x3F800000u);
  // f > sqrt(2): f / 2 and e + 1, written without branches (exact: halving a float in [1, 2) is an exponent
  // decrement) so that the loop vectorises without mask registers (AVX2)
  const uint32_t big = (uint32_t)(f > SQRT2);
  f = as_float(as_uint(f) - (big << 23));
  e += (int32_t)big;
  const float s = (f - 1.0f) / (f + 1.0f);
  const float s2 = s * s;
  float p = s2 * L3;
  p = p + L2;
  p = p * s2;
  p = p + L1;
  p = p * s2;
  p = p * s;
  float t = s + p;
  t = t + t;
  const float ef = (float)e;
  float lo = ef * LN2_LO;
  lo = lo + t;
  const float hi = ef * LN2_HI;
  return lo + hi;
}

// Two Gaussians from words (ra, rb) (spec steps 4-6)
inline void box_muller(uint32_t ra, uint32_t rb, float& z_even, float& z_odd) {
  const uint32_t m = (ra >> 8) + 1u;
  const float radius = std::sqrt(log_u(m) * -2.0f);
  const uint32_t v = rb >> 8;
  const uint32_t q = v >> 22;
  const int32_t k = (int32_t)(v & 0x3FFFFFu);
  float y = (float)(k * 2 + 1);
  y = y * 1.1920928955078125e-07f;  // 2^-23
  y = y - 0.5f;
  y = y * PIO2;
  const float y2 = y * y;
  float sp = y2 * S3;
  sp = sp + S2;
  sp = sp * y2;
  sp = sp + S1;
  sp = sp * y2;
  sp = sp * y;
  const float sy = sp + y;
  float cp = y2 * C4;
  cp = cp + C3;
  cp = cp * y2;
  cp = cp + C2;
  cp = cp * y2;
  cp = cp + C1;
  cp = cp * y2;
  const float cy = cp + 1.0f;
  // rotate by q quarter turns with bit operations (exact selects and negations, no branches)
  const uint32_t swap = 0u - (q & 1u);                          // all ones for q = 1, 3
  const uint32_t c_bits = (as_uint(sy) & swap) | (as_uint(cy) & ~swap);
  const uint32_t s_bits = (as_uint(cy) & swap) | (as_uint(sy) & ~swap);
  const uint32_t c_sign = ((q ^ (q >> 1)) & 1u) << 31;          // q = 1, 2: negate
  const uint32_t s_sign = (q >> 1) << 31;                       // q = 2, 3: negate
  const float c = as_float(c_bits ^ c_sign);
  const float s = as_float(s_bits ^ s_sign);
  z_even = c * radius;
  z_odd = s * radius;
}

// Gaussians g = start .. start+count-1 of stream (seed, offset) into out[0 .. count-1].
template <int ROUNDS = 10>
inline void gaussians(uint64_t seed, uint64_t offset, uint64_t start, int64_t count, float* out) {
  if (count <= 0) return;
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  const uint32_t o0 = (uint32_t)offset, o1 = (uint32_t)(offset >> 32);
  const uint64_t end = start + (uint64_t)count;  // exclusive
  uint64_t b = start >> 2;
  alignas(64) uint32_t words[4][NB];
  alignas(64) float z[4 * NB];
  while ((b << 2) < end) {
    philox_chunk<ROUNDS>(b, k0, k1, o0, o1, words);
#pragma GCC ivdep
    for (int l = 0; l < NB; ++l) {
      float a0, a1, a2, a3;
      box_muller(words[0][l], words[1][l], a0, a1);
      box_muller(words[2][l], words[3][l], a2, a3);
      z[4 * l + 0] = a0;
      z[4 * l + 1] = a1;
      z[4 * l + 2] = a2;
      z[4 * l + 3] = a3;
    }
    const uint64_t first = b << 2;
    const uint64_t lo = first > start ? first : start;
    const uint64_t last = first + 4 * NB;
    const uint64_t hi = last < end ? last : end;
    std::memcpy(out + (lo - start), z + (lo - first), (size_t)(hi - lo) * sizeof(float));
    b += NB;
  }
}

}  // namespace nrnn_noise

#pragma GCC pop_options
