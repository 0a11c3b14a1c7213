// The integer chains in plain scalar C++: the readable definition of every `_ref` kernel in kernels.h.
//
// Each helper mirrors one function of src/intbert/quantization/intops.py line by line (same
// rounding rules, same int64 bounds), and each chain composes them exactly as
// engine/backends/fused_ops.py and engine/model.py do. The AVX2 / AVX-512 files compute the same
// numbers with other instruction sequences; csrc/tests/test_chains.cpp compares them with these,
// and tests/test_native_chains_cpp.py compares these with intops (torch.equal).
//
// Rounding: `>>` on a negative int64 is an arithmetic shift (floor) with gcc/clang (and by the
// standard since C++20); every other division is a floor division (floor_div below).
#include <string.h>

#include <algorithm>
#include <vector>

#include "kernels.h"

namespace intbert {
namespace {

constexpr int64_t kInt32Min = INT32_MIN;
constexpr int64_t kInt32Max = INT32_MAX;

int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// intops.qrange(bits): [-2^(bits-1), 2^(bits-1) - 1].
int64_t qmin(int bits) { return -(int64_t(1) << (bits - 1)); }
int64_t qmax(int bits) { return (int64_t(1) << (bits - 1)) - 1; }

// torch.div(a, b, rounding_mode="floor") for b > 0.
int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;  // truncates toward zero
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// ---------------------------------------------------------------------------------------------
// Dyadic requantization (intops._half, _round_shift, rescale, requantize)
// ---------------------------------------------------------------------------------------------

// 2^(e-1) for e >= 1, 0 for e = 0.
int64_t half(int64_t e) { return e > 0 ? int64_t(1) << (e - 1) : 0; }

// round_half_up(v / 2^e) = (v + 2^(e-1)) >> e for |v| < 2^62, 0 <= e <= 63 (v + 2^62 < 2^63).
int64_t round_shift(int64_t v, int64_t e) { return (v + half(e)) >> e; }

// round_half_up(q * m / 2^e), unclamped; m in [0, 2^31), |q| < 2^input_bits (<= 2^47).
int64_t rescale(int64_t q, int64_t m, int64_t e, int input_bits) {
  if (input_bits <= 31) return round_shift(q * m, e);  // |q| <= 2^31, m < 2^31: |q m| < 2^62
  if (e >= 16) {
    // q = qh 2^16 + ql, 0 <= ql < 2^16: floor((qh m 2^16 + X) / 2^e) = floor((qh m + floor(X / 2^16)) / 2^(e-16))
    // with X = ql m + 2^(e-1) < 2^47 + 2^62 < 2^63 and |qh m| < 2^31 * 2^31 = 2^62 (|q| < 2^47).
    const int64_t low = ((q & 0xFFFF) * m + half(e)) >> 16;
    return ((q >> 16) * m + low) >> (e - 16);
  }
  // e < 16: m / 2^e > 2^14 (for m >= 2^30), so any |q| >= 2^31 saturates; clamp q to int32 first.
  return round_shift(clamp(q, kInt32Min + 1, kInt32Max) * m, e);
}

// clamp(rescale(q), -2^(bits-1), 2^(bits-1) - 1) with channel c's multiplier.
int64_t requantize(int64_t q, const RequantC& rq, int64_t c) {
  return clamp(rescale(q, rq.m[c], rq.e[c], rq.input_bits), qmin(rq.bits), qmax(rq.bits));
}

// The residual add of backends/reference.py: clamp(rescale(a; ra) + rescale(b; rb), bits).
int64_t residual(int64_t a, int64_t b, const ResidualC& add, int64_t c) {
  const int64_t total = rescale(a, add.a.m[c], add.a.e[c], add.a.input_bits) +
                        rescale(b, add.b.m[c], add.b.e[c], add.b.input_bits);
  return clamp(total, qmin(add.bits), qmax(add.bits));
}

// ---------------------------------------------------------------------------------------------
// i-GELU (intops.int_gelu)
// ---------------------------------------------------------------------------------------------

// |q| < 2^31; b < 0 with |b| < 2^22, |c| < 2^43 (input scale >= 2^-20): |(t + b)^2 + c| < 2^44,
// |erf + one| < 2^30 and |q (erf + one)| < 2^61.
int64_t int_gelu(int64_t q, int64_t b, int64_t c, int64_t one) {
  const int64_t t = std::min(q < 0 ? -q : q, -b);
  const int64_t sign = (q > 0) - (q < 0);
  const int64_t erf = (sign * ((t + b) * (t + b) + c)) >> 14;  // GELU_SHIFT; floor
  return -q * (erf + one);
}

// ---------------------------------------------------------------------------------------------
// Integer LayerNorm (intops._row_mean, _bit_length, isqrt, floor_div_by_reciprocal, int_layernorm)
// ---------------------------------------------------------------------------------------------

int64_t bit_length(int64_t n) {
  int64_t bits = 0;
  for (; n > 0; n >>= 1) ++bits;
  return bits;
}

// floor(sqrt(n)) for 0 <= n < 2^62: integer Newton from x0 = 2^ceil(bits(n) / 2) >= sqrt(n), seven
// steps, keeping the running minimum (intops.isqrt proves the bound).
int64_t isqrt(int64_t n) {
  int64_t x = int64_t(1) << ((bit_length(n) + 1) >> 1);
  for (int i = 0; i < 7; ++i) {
    const int64_t next = (x + floor_div(n, std::max<int64_t>(x, 1))) >> 1;
    x = std::min(x, next);
  }
  return x;
}

// floor(y 2^30 / d) for |y| < 2^23, 1 <= d < 2^32, with one division per row: R = floor(2^62 / d) =
// Rh 2^31 + Rl (|y Rh|, |y Rl| < 2^54). The nested floors are exact, so q0 = (y Rh + ((y Rl) >> 31)) >> 1
// = floor(y R / 2^32) = floor(X - y eps / 2^32) with X = y 2^30 / d, R = 2^62 / d - eps, 0 <= eps < 1:
// |y eps / 2^32| < 2^-9, so q0 is in [floor(X) - 1, floor(X) + 1] (intops allows -2: its second up
// step, mirrored here, is never taken). The remainder r = y 2^30 - q0 d (|r| < 2^33) selects floor(X).
int64_t floor_div_by_reciprocal(int64_t y, int64_t d) {
  const int64_t R = (int64_t(1) << 62) / d;
  int64_t q = (y * (R >> 31) + ((y * (R & ((int64_t(1) << 31) - 1))) >> 31)) >> 1;
  int64_t r = y * (int64_t(1) << 30) - q * d;
  if (r < 0) q -= 1, r += d;
  for (int i = 0; i < 2; ++i)
    if (r >= d) q += 1, r -= d;
  return q;
}

// out[c] = clamp(sign[c] * (floor(y[c] 2^30 / std) + bias[c]), int32) over a row of C values |q| < 2^22.
void int_layernorm(const int64_t* q, int64_t C, const LayerNormC& ln, int64_t* out) {
  int64_t sum = 0;  // |sum| < 2^22 C
  for (int64_t c = 0; c < C; ++c) sum += q[c];
  const int64_t mean = floor_div(2 * sum + C, 2 * C);  // round_half_up(sum / C)
  int64_t var = 0;  // sum((y >> shift)^2) < C 2^46 < 2^62 (|y| < 2^23, C < 2^16)
  for (int64_t c = 0; c < C; ++c) {
    const int64_t ys = (q[c] - mean) >> ln.shift;
    var += ys * ys;
  }
  const int64_t std_ = std::max<int64_t>(isqrt(var) << ln.shift, 1);  // < 2^32
  for (int64_t c = 0; c < C; ++c) {
    const int64_t n = floor_div_by_reciprocal(q[c] - mean, std_);
    out[c] = clamp(ln.sign[c] * (n + ln.bias[c]), kInt32Min, kInt32Max);
  }
}

// ---------------------------------------------------------------------------------------------
// i-exp softmax (intops.int_softmax) on one row
// ---------------------------------------------------------------------------------------------

void int_softmax_row(const int32_t* scores, int64_t L, const uint8_t* keep, const SoftmaxC& sm, uint8_t* probs) {
  constexpr int64_t kNegBig = INT64_MIN / 4;  // torch.iinfo(int64).min // 4 = -2^61 (exact)
  std::vector<int64_t> x(L), e(L);
  int64_t xmax = INT64_MIN;
  for (int64_t i = 0; i < L; ++i) {
    x[i] = int64_t(scores[i]) >> sm.pre_shift;
    if (keep && !keep[i]) x[i] = kNegBig;
    xmax = std::max(xmax, x[i]);
  }
  xmax = std::max(xmax, kNegBig + 1);
  int64_t total = 0;  // < L 2^15
  for (int64_t i = 0; i < L; ++i) {
    const int64_t xi = std::max(x[i] - xmax, 30 * sm.x0);  // EXP_MAX_HALVINGS; in [30 x0, 0]
    const int64_t z = ((-xi) * sm.zm) >> 33;               // = floor(xi / x0), exactly (intops); < 2^38 before the shift
    const int64_t r = xi - sm.x0 * z;                      // in (x0, 0]
    const int64_t poly = (r + sm.b) * r + sm.c;            // in (0, 2^30)
    const int64_t shift = std::min<int64_t>(z + sm.e, 63);
    e[i] = clamp(round_shift(poly * sm.m, shift), 0, int64_t(1) << 15);  // poly m < 2^61
    if (keep && !keep[i]) e[i] = 0;
    total += e[i];
  }
  total = std::max<int64_t>(total, 1);
  const int64_t factor = floor_div(int64_t(1) << 32, total);  // SOFTMAX_SUM_BITS
  const int64_t top = (int64_t(1) << sm.output_bit) - 1;
  for (int64_t i = 0; i < L; ++i)
    probs[i] = uint8_t(std::min((e[i] * factor) >> (32 - sm.output_bit), top));  // e factor <= 2^47
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The chains
// ---------------------------------------------------------------------------------------------

void bias_requant_ref(INTBERT_BIAS_REQUANT_ARGS) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) {
      const int64_t q = int64_t(acc[r * ld_acc + c]) + (bias ? bias[c] : 0);
      out[r * ld_out + c] = int8_t(requantize(q, rq, c));
    }
}

void requant_i32_ref(INTBERT_REQUANT_I32_ARGS) { bias_requant_ref(q, ld_q, rows, n, nullptr, rq, out, ld_out); }

void bias_gelu_requant2_ref(INTBERT_BIAS_GELU_REQUANT2_ARGS) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) {
      const int64_t q = int64_t(acc[r * ld_acc + c]) + (bias ? bias[c] : 0);
      const int64_t y = int_gelu(q, g.b[c], g.c[c], g.one[c]);  // |y| < 2^47 = rq1.input_bits
      out[r * ld_out + c] = int8_t(requantize(requantize(y, rq1, c), rq2, c));
    }
}

void bias_residual_ln_requant_ref(INTBERT_BIAS_RESIDUAL_LN_REQUANT_ARGS) {
  std::vector<int64_t> h(n), y(n);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      const int64_t a = int64_t(acc[r * ld_acc + c]) + (bias ? bias[c] : 0);
      h[c] = residual(a, res[r * ld_res + c], add, c);  // |h| < 2^(add.bits - 1) <= 2^21
    }
    int_layernorm(h.data(), n, ln, y.data());
    for (int64_t c = 0; c < n; ++c) out[r * ld_out + c] = int8_t(requantize(y[c], rq, c));
  }
}

void embed_ref(INTBERT_EMBED_ARGS) {
  std::vector<int64_t> h(n), y(n);
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* w = word + ids[r] * n;
    const int8_t* t = tt + tids[r] * n;
    const int8_t* p = pos + pids[r] * n;
    for (int64_t c = 0; c < n; ++c) h[c] = residual(residual(w[c], t[c], add1, c), p[c], add2, c);
    int_layernorm(h.data(), n, ln, y.data());
    for (int64_t c = 0; c < n; ++c) out[r * ld_out + c] = int8_t(requantize(y[c], rq, c));
  }
}

void softmax_row_ref(INTBERT_SOFTMAX_ROW_ARGS) { int_softmax_row(scores, L, keep, sm, probs); }

}  // namespace intbert
