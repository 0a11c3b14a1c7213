#pragma GCC target("avx2,fma,bmi2")
// AVX2 twins of the chains in chains_ref.cpp (the definition): the same integers, bit for bit.
//
// The structure is chains_avx512.cpp's with 4 int64 lanes per vector (8 int32 lanes in softmax).
// AVX2 lacks several 64-bit operations, built here from what it has:
//  * arithmetic right shift (floor(x / 2^e)): for x < 0, floor(x / 2^e) = ~((~x) >> e) with a logical
//    shift, since ~x = -x - 1 >= 0 and floor(x / 2^e) = -ceil(-x / 2^e) = -floor((-x - 1) / 2^e) - 1;
//  * min / max / abs / conditional negation: compares (vpcmpgtq) and blends;
//  * the low 64 bits of q * d for d < 2^32: q_lo d + ((q_hi d) << 32), two vpmuludq.
// Lane masks are vectors (all ones = lane on); tails load through vpmaskmov or a memcpy into a
// zeroed word, and store the valid bytes only.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

namespace intbert {
// Types and helpers have internal linkage (anonymous namespace / static): chains_avx512.cpp reuses the names.
namespace {

typedef __m256i V;  // 4 x int64, or a lane mask (all ones / all zeros per lane)

// ---------------------------------------------------------------------------------------------
// Lanes
// ---------------------------------------------------------------------------------------------

static inline V set1(int64_t x) { return _mm256_set1_epi64x(x); }
static inline V zero() { return _mm256_setzero_si256(); }
static inline V add(V a, V b) { return _mm256_add_epi64(a, b); }
static inline V sub(V a, V b) { return _mm256_sub_epi64(a, b); }
static inline V vand(V a, V b) { return _mm256_and_si256(a, b); }
static inline V vxor(V a, V b) { return _mm256_xor_si256(a, b); }
static inline V gt(V a, V b) { return _mm256_cmpgt_epi64(a, b); }
static inline V min64(V a, V b) { return _mm256_blendv_epi8(a, b, gt(a, b)); }
static inline V max64(V a, V b) { return _mm256_blendv_epi8(b, a, gt(a, b)); }
static inline V clamp(V v, V lo, V hi) { return min64(max64(v, lo), hi); }
static inline V negative(V x) { return gt(zero(), x); }                 // all ones where x < 0
static inline V neg_where(V neg, V v) { return sub(vxor(v, neg), neg); }  // -v on the lanes of neg
static inline V abs64(V x) { return neg_where(negative(x), x); }
// floor(x / 2^e) (see the file comment): variable counts in [0, 63], an immediate, an xmm count.
static inline V srav64(V x, V e) { const V s = negative(x); return vxor(_mm256_srlv_epi64(vxor(x, s), e), s); }
static inline V srai64(V x, int e) { const V s = negative(x); return vxor(_mm256_srli_epi64(vxor(x, s), e), s); }
static inline V sra64(V x, __m128i e) { const V s = negative(x); return vxor(_mm256_srl_epi64(vxor(x, s), e), s); }
static inline bool all_lanes(V mask) { return _mm256_movemask_pd(_mm256_castsi256_pd(mask)) == 0xF; }

static inline int64_t hsum(V v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

static inline V lanes(int64_t left) { return gt(set1(left), _mm256_setr_epi64x(0, 1, 2, 3)); }
static inline __m128i lanes32(int64_t left) {
  return _mm_cmpgt_epi32(_mm_set1_epi32(int(left < 4 ? left : 4)), _mm_setr_epi32(0, 1, 2, 3));
}
static inline V load_i64(const int64_t* p, int64_t left) {
  if (left >= 4) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm256_maskload_epi64(reinterpret_cast<const long long*>(p), lanes(left));
}
static inline V load_i32(const int32_t* p, int64_t left) {
  const __m128i x = left >= 4 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
                              : _mm_maskload_epi32(reinterpret_cast<const int*>(p), lanes32(left));
  return _mm256_cvtepi32_epi64(x);
}
// Partial blocks copy byte by byte; full ones take a fixed-size copy (one load: a variable-size copy
// becomes a byte loop whose stores stall the following 4-byte load).
static inline V load_i8(const int8_t* p, int64_t left) {
  int32_t x = 0;
  if (left >= 4)
    memcpy(&x, p, 4);
  else
    memcpy(&x, p, size_t(left));
  return _mm256_cvtepi8_epi64(_mm_cvtsi32_si128(x));
}
// The low 32 bits of each lane, as 4 int32 (values already clamped to the stored width).
static inline __m128i low32(V v) {
  return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)));
}
static inline void store_i8(int8_t* p, int64_t left, V v) {
  const __m128i b = _mm_shuffle_epi8(low32(v), _mm_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
  const int32_t x = _mm_cvtsi128_si32(b);
  if (left >= 4)
    memcpy(p, &x, 4);
  else
    memcpy(p, &x, size_t(left));
}
static inline void store_i32(int32_t* p, int64_t left, V v) {
  if (left >= 4)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), low32(v));
  else
    _mm_maskstore_epi32(reinterpret_cast<int*>(p), lanes32(left), low32(v));
}

static inline int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// ---------------------------------------------------------------------------------------------
// Requantization (intops.rescale / requantize) of one column block
// ---------------------------------------------------------------------------------------------

struct Rq {
  V m, e, half;  // m in [0, 2^31), e in [0, 63], half = 2^(e-1) (0 for e = 0)
  V lo, hi;      // output range of `bits`
  V e16;         // max(e - 16, 0): the split form's final shift
  V split;       // lanes with e >= 16 (and lanes past the tail): the split form applies
  bool all_split;
  bool wide;  // input_bits > 31
};

static inline Rq rq_load(const RequantC& rq, int64_t c, int64_t left) {
  Rq r;
  r.m = load_i64(rq.m + c, left);
  r.e = load_i64(rq.e + c, left);
  // vpsllvq by e - 1 = -1 (e = 0) is a count >= 64: every bit is shifted out, giving 0.
  r.half = _mm256_sllv_epi64(set1(1), sub(r.e, set1(1)));
  r.lo = set1(-(int64_t(1) << (rq.bits - 1)));
  r.hi = set1((int64_t(1) << (rq.bits - 1)) - 1);
  r.e16 = max64(sub(r.e, set1(16)), zero());
  r.split = _mm256_or_si256(gt(r.e, set1(15)), _mm256_andnot_si256(lanes(left), set1(-1)));
  r.all_split = all_lanes(r.split);
  r.wide = rq.input_bits > 31;
  return r;
}

// (q m + 2^(e-1)) >> e for lanes whose value fits int32: |q m| <= 2^31 (2^31 - 1) < 2^62.
static inline V rescale_narrow(const Rq& r, V q) { return srav64(add(_mm256_mul_epi32(q, r.m), r.half), r.e); }

// intops.rescale for input_bits > 31, |q| < 2^47. e >= 16: q = qh 2^16 + ql (0 <= ql < 2^16),
// low = (ql m + 2^(e-1)) >> 16 (< 2^47 + 2^62, non-negative: a logical shift), result
// (qh m + low) >> (e - 16) with qh in [-2^31, 2^31) (vpmuldq exact, |qh m| < 2^62). e < 16: q clamped
// to [INT32_MIN + 1, INT32_MAX], then the direct form.
static inline V rescale_wide(const Rq& r, V q) {
  const V ql = vand(q, set1(0xFFFF));
  const V low = _mm256_srli_epi64(add(_mm256_mul_epu32(ql, r.m), r.half), 16);  // >= 0
  const V split = srav64(add(_mm256_mul_epi32(srai64(q, 16), r.m), low), r.e16);  // |q >> 16| <= 2^31
  if (r.all_split) return split;
  const V direct = rescale_narrow(r, clamp(q, set1(INT32_MIN + 1), set1(INT32_MAX)));
  return _mm256_blendv_epi8(direct, split, r.split);
}

static inline V rescale(const Rq& r, V q) { return r.wide ? rescale_wide(r, q) : rescale_narrow(r, q); }

// rescale(acc + bias) for int32 acc and bias. Narrow: acc m + (bias m + 2^(e-1)) with the bias term
// `bm` computed once per block: the same int64 value as (acc + bias) m + 2^(e-1) (|acc + bias| <= 2^32,
// m < 2^31: every partial product < 2^62). Wide: the int64 sum |acc + bias| <= 2^32 < 2^47.
static inline V bias_term(const Rq& r, V bias) { return add(_mm256_mul_epi32(bias, r.m), r.half); }
static inline V rescale_acc(const Rq& r, V acc, V bias, V bm) {
  if (r.wide) return rescale_wide(r, add(acc, bias));
  return srav64(add(_mm256_mul_epi32(acc, r.m), bm), r.e);
}

// ---------------------------------------------------------------------------------------------
// i-GELU (intops.int_gelu): |q| < 2^31, |b| < 2^22, |erf + one| < 2^31 (input scales >= 2^-20)
// ---------------------------------------------------------------------------------------------

struct Gelu {
  V b, nb, c, one;  // nb = -b > 0
};

static inline Gelu gelu_load(const GeluC& g, int64_t c, int64_t left) {
  Gelu r;
  r.b = load_i64(g.b + c, left);
  r.nb = sub(zero(), r.b);
  r.c = load_i64(g.c + c, left);
  r.one = load_i64(g.one + c, left);
  return r;
}

static inline V int_gelu(const Gelu& g, V q) {
  const V t = min64(abs64(q), g.nb);
  const V u = add(t, g.b);                           // in [b, 0]: fits int32
  const V p = add(_mm256_mul_epi32(u, u), g.c);      // (t + b)^2 + c, |.| < 2^44
  const V erf = srai64(neg_where(negative(q), p), 14);  // sign(q) p >> 14 (q = 0: multiplied by 0 below)
  const V nv = sub(zero(), add(erf, g.one));         // -(erf + one), fits int32
  return _mm256_mul_epi32(q, nv);                    // -q (erf + one)
}

// ---------------------------------------------------------------------------------------------
// Integer LayerNorm (intops.int_layernorm) on rows of h (int32, |h| < 2^22) kept in a stack buffer
// ---------------------------------------------------------------------------------------------

static const int64_t kLnScratch = 16384;  // int32 values of h on the stack (64 KiB); wider rows: scalar
static const int64_t kLnGroup = 16;       // rows normalised together

// floor(sqrt(n)) for 0 <= n < 2^62, exactly. With k = floor(sqrt n) < 2^31, x = trunc(fl(sqrt(fl(n))))
// is k or k + 1 (fl: round to nearest double, relative error <= 2^-53; fl and sqrt are monotone):
//  x >= k: fl(n) >= fl(k^2). If k is a power of two, k^2 is a double and its root is k. Otherwise, for
//    2^j < k < 2^(j+1), sqrt(fl(k^2)) >= k sqrt(1 - 2^-53) > k - k 2^-54 - 2^-70 > k - 2^(j-53), the
//    midpoint between k and the double below it (k - 2^(j-52)), so the root rounds to k or above.
//  x <= k + 1: the same argument from above with n < (k + 1)^2.
// One step down fixes x = k + 1 (it happens: n = k^2 - 1 for k = 2^26 + 1); x^2 <= 2^62 cannot overflow.
static int64_t isqrt(int64_t n) {
  const __m128d d = _mm_set_sd(double(n));
  int64_t x = int64_t(_mm_cvtsd_f64(_mm_sqrt_sd(d, d)));
  if (x * x > n) --x;
  return x;
}

// Per-row constants: the rounded mean, std = max(isqrt(var) << shift, 1) and
// R = floor((2^62 - 1) / std) = rh 2^31 + rl (rh, rl < 2^31: both fit vpmuldq, also for std = 1).
struct LnRow {
  int64_t mean, std_, rh, rl;
};

static LnRow ln_row(const int32_t* h, int64_t n, int64_t shift) {
  V s = zero();
  for (int64_t c = 0; c < n; c += 4) s = add(s, load_i32(h + c, n - c));
  LnRow row;
  row.mean = floor_div(2 * hsum(s) + n, 2 * n);  // |sum| < 2^21 n
  const V mean = set1(row.mean);
  const __m128i cnt = _mm_cvtsi64_si128(shift);
  V var = zero();  // < n 2^46 < 2^62
  for (int64_t c = 0; c < n; c += 4) {
    const V y = vand(sub(load_i32(h + c, n - c), mean), lanes(n - c));
    const V ys = sra64(y, cnt);
    var = add(var, _mm256_mul_epi32(ys, ys));
  }
  row.std_ = isqrt(hsum(var)) << shift;
  if (row.std_ < 1) row.std_ = 1;
  const int64_t R = ((int64_t(1) << 62) - 1) / row.std_;
  row.rh = R >> 31;
  row.rl = R & ((int64_t(1) << 31) - 1);
  return row;
}

// floor(y 2^30 / d) for |y| < 2^23, 1 <= d < 2^32 (intops.floor_div_by_reciprocal, one step each way).
// With R = floor((2^62 - 1) / d) = 2^62 / d - eps, 0 < eps < 2, the nested floors give exactly
// q0 = floor(y R / 2^32) = floor(X - y eps / 2^32) for X = y 2^30 / d, and |y eps / 2^32| < 2^-8, so q0
// is floor(X) - 1, floor(X) or floor(X) + 1 (|y rh|, |y rl| < 2^54). r = y 2^30 - q0 d (|r| < 2d < 2^33)
// from the low 64 bits of q0 d (exact: the true value is small) picks floor(X): r < 0 steps down,
// r >= d steps up.
static inline V floor_div_recip(V y, const LnRow& row) {
  const V d = set1(row.std_);
  const V a = add(_mm256_mul_epi32(y, set1(row.rh)), srai64(_mm256_mul_epi32(y, set1(row.rl)), 31));
  V q = srai64(a, 1);
  const V qd = add(_mm256_mul_epu32(q, d), _mm256_slli_epi64(_mm256_mul_epu32(_mm256_srli_epi64(q, 32), d), 32));
  V r = sub(_mm256_slli_epi64(y, 30), qd);
  const V low = negative(r);  // r < 0: one step down
  q = add(q, low);
  r = add(r, vand(low, d));
  return sub(q, gt(r, sub(d, set1(1))));  // r >= d: one step up
}

static void ln_requant_rows(const int32_t* h, int64_t G, int64_t n, const LayerNormC& ln, const RequantC& rq,
                            int8_t* out, int64_t ld_out) {
  LnRow rows[kLnGroup];
  for (int64_t g = 0; g < G; ++g) rows[g] = ln_row(h + g * n, n, ln.shift);
  for (int64_t c = 0; c < n; c += 4) {
    const int64_t left = n - c;
    const V neg = negative(load_i64(ln.sign + c, left));  // sign = -1
    const V bias = load_i64(ln.bias + c, left);
    const Rq r = rq_load(rq, c, left);
    for (int64_t g = 0; g < G; ++g) {
      const V y = sub(load_i32(h + g * n + c, left), set1(rows[g].mean));
      const V v = neg_where(neg, add(floor_div_recip(y, rows[g]), bias));
      const V x = clamp(v, set1(INT32_MIN), set1(INT32_MAX));
      store_i8(out + g * ld_out + c, left, clamp(rescale(r, x), r.lo, r.hi));
    }
  }
}

static void residual_rows(const int32_t* acc, int64_t ld_acc, int64_t G, int64_t n, const int32_t* bias,
                          const int8_t* res, int64_t ld_res, const ResidualC& add_, int32_t* h) {
  const V lo = set1(-(int64_t(1) << (add_.bits - 1))), hi = set1((int64_t(1) << (add_.bits - 1)) - 1);
  for (int64_t c = 0; c < n; c += 4) {
    const int64_t left = n - c;
    const Rq ra = rq_load(add_.a, c, left), rb = rq_load(add_.b, c, left);
    const V b = bias ? load_i32(bias + c, left) : zero();
    const V bm = bias_term(ra, b);
    for (int64_t g = 0; g < G; ++g) {
      const V a = rescale_acc(ra, load_i32(acc + g * ld_acc + c, left), b, bm);
      const V s = add(a, rescale(rb, load_i8(res + g * ld_res + c, left)));
      store_i32(h + g * n + c, left, clamp(s, lo, hi));
    }
  }
}

static void embed_rows(const int8_t* word, const int8_t* tt, const int8_t* pos, const int64_t* ids,
                       const int64_t* tids, const int64_t* pids, int64_t G, int64_t n, const ResidualC& add1,
                       const ResidualC& add2, int32_t* h) {
  const V lo1 = set1(-(int64_t(1) << (add1.bits - 1))), hi1 = set1((int64_t(1) << (add1.bits - 1)) - 1);
  const V lo2 = set1(-(int64_t(1) << (add2.bits - 1))), hi2 = set1((int64_t(1) << (add2.bits - 1)) - 1);
  for (int64_t c = 0; c < n; c += 4) {
    const int64_t left = n - c;
    const Rq a1 = rq_load(add1.a, c, left), b1 = rq_load(add1.b, c, left);
    const Rq a2 = rq_load(add2.a, c, left), b2 = rq_load(add2.b, c, left);
    for (int64_t g = 0; g < G; ++g) {
      const V w = load_i8(word + ids[g] * n + c, left), t = load_i8(tt + tids[g] * n + c, left);
      const V h1 = clamp(add(rescale(a1, w), rescale(b1, t)), lo1, hi1);
      const V p = load_i8(pos + pids[g] * n + c, left);
      store_i32(h + g * n + c, left, clamp(add(rescale(a2, h1), rescale(b2, p)), lo2, hi2));
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The chains
// ---------------------------------------------------------------------------------------------

void bias_requant_avx2(INTBERT_BIAS_REQUANT_ARGS) {
  for (int64_t c = 0; c < n; c += 4) {
    const int64_t left = n - c;
    const Rq r = rq_load(rq, c, left);
    const V b = bias ? load_i32(bias + c, left) : zero();
    const V bm = bias_term(r, b);
    for (int64_t i = 0; i < rows; ++i) {
      const V y = rescale_acc(r, load_i32(acc + i * ld_acc + c, left), b, bm);
      store_i8(out + i * ld_out + c, left, clamp(y, r.lo, r.hi));
    }
  }
}

void requant_i32_avx2(INTBERT_REQUANT_I32_ARGS) { bias_requant_avx2(q, ld_q, rows, n, nullptr, rq, out, ld_out); }

void bias_gelu_requant2_avx2(INTBERT_BIAS_GELU_REQUANT2_ARGS) {
  for (int64_t c = 0; c < n; c += 4) {
    const int64_t left = n - c;
    const Gelu gl = gelu_load(g, c, left);
    const Rq r1 = rq_load(rq1, c, left), r2 = rq_load(rq2, c, left);
    const V b = bias ? load_i32(bias + c, left) : zero();
    for (int64_t i = 0; i < rows; ++i) {
      const V x = int_gelu(gl, add(load_i32(acc + i * ld_acc + c, left), b));  // |x| < 2^47
      const V y1 = clamp(rescale(r1, x), r1.lo, r1.hi);
      store_i8(out + i * ld_out + c, left, clamp(rescale(r2, y1), r2.lo, r2.hi));
    }
  }
}

void bias_residual_ln_requant_avx2(INTBERT_BIAS_RESIDUAL_LN_REQUANT_ARGS) {
  if (n > kLnScratch) {
    bias_residual_ln_requant_ref(acc, ld_acc, rows, n, bias, res, ld_res, add, ln, rq, out, ld_out);
    return;
  }
  int32_t h[kLnScratch];
  const int64_t group = n * kLnGroup <= kLnScratch ? kLnGroup : kLnScratch / n;
  for (int64_t r0 = 0; r0 < rows; r0 += group) {
    const int64_t G = rows - r0 < group ? rows - r0 : group;
    residual_rows(acc + r0 * ld_acc, ld_acc, G, n, bias, res + r0 * ld_res, ld_res, add, h);
    ln_requant_rows(h, G, n, ln, rq, out + r0 * ld_out, ld_out);
  }
}

void embed_avx2(INTBERT_EMBED_ARGS) {
  if (n > kLnScratch) {
    embed_ref(word, tt, pos, ids, tids, pids, rows, n, add1, add2, ln, rq, out, ld_out);
    return;
  }
  int32_t h[kLnScratch];
  const int64_t group = n * kLnGroup <= kLnScratch ? kLnGroup : kLnScratch / n;
  for (int64_t r0 = 0; r0 < rows; r0 += group) {
    const int64_t G = rows - r0 < group ? rows - r0 : group;
    embed_rows(word, tt, pos, ids + r0, tids + r0, pids + r0, G, n, add1, add2, h);
    ln_requant_rows(h, G, n, ln, rq, out + r0 * ld_out, ld_out);
  }
}

// ---------------------------------------------------------------------------------------------
// i-exp softmax (intops.int_softmax), 8 int32 lanes
// ---------------------------------------------------------------------------------------------

namespace {

typedef __m256i W;  // 8 x int32

static inline W load8_i32(const int32_t* p, int64_t left) {
  if (left >= 8) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const W on = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), on);
}

// Lanes to attend (all ones): inside the row and keep != 0.
static inline W kept8(const uint8_t* keep, int64_t left) {
  const W in = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left < 8 ? left : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  if (!keep) return in;
  int64_t k = 0;
  if (left >= 8)
    memcpy(&k, keep, 8);
  else
    memcpy(&k, keep, size_t(left));
  const W masked = _mm256_cmpeq_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(k)), _mm256_setzero_si256());
  return _mm256_andnot_si256(masked, in);
}

struct Exp {
  __m128i pcnt;     // pre_shift
  W xmax, floor_t;  // row max of kept x; max(xmax + 30 x0, INT32_MIN)
  W dd, dd1;        // -x0 and -x0 - 1
  __m256 inv_dd;    // float32 1 / dd
  W b, c, em;       // i-exp polynomial, the dyadic shift e
  V m;              // dyadic m (< 2^31)
};

// e = round_half_up(L m / 2^(z + e_m)) clamped to [0, 2^15] for 8 scores (intops.int_softmax):
//  x = max(q >> p, xmax + 30 x0) - xmax            (= max(x - xmax, 30 x0), in [30 x0, 0]: int32)
//  z = floor(n / dd), n = -x in [0, 30 dd] < 2^19  (= floor(x / x0), the ((-x) zm) >> 33 of intops):
//      n and 1/dd in float32 (n exact, 1/dd and the product each within 2^-24 relative), so the float
//      quotient is within 30 2^-22.9 < 2^-17 of n / dd <= 30. A non-integer n / dd is at least
//      1/dd > 2^-14 from an integer (dd < 11358: the score scale is raised to >= 2^-14), so truncation
//      gives floor(n / dd) except when n / dd is an integer and the float falls just below: then one
//      too small, which r' = n - z dd >= dd detects.
//  r = x - x0 z = -r' in (x0, 0];  L = (r + b) r + c   (|(r + b) r| < 2^30, L in (0, 2^30): int32)
//  L m < 2^61 (int64, even and odd lanes by vpmuldq); a negative (L m + half) floors below 0 and
//  clamps to 0, so a logical shift serves the non-negative ones.
static inline W exp8(const Exp& x, const int32_t* q, int64_t left) {
  const W s = _mm256_sra_epi32(load8_i32(q, left), x.pcnt);
  const W d = _mm256_sub_epi32(_mm256_max_epi32(s, x.floor_t), x.xmax);  // in [30 x0, 0]
  const W n = _mm256_sub_epi32(_mm256_setzero_si256(), d);
  W z = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_cvtepi32_ps(n), x.inv_dd));  // floor(n / dd) or one less
  W rr = _mm256_sub_epi32(n, _mm256_mullo_epi32(z, x.dd));
  const W up = _mm256_cmpgt_epi32(rr, x.dd1);  // rr >= dd
  z = _mm256_sub_epi32(z, up);
  rr = _mm256_sub_epi32(rr, _mm256_and_si256(up, x.dd));
  const W r = _mm256_sub_epi32(_mm256_setzero_si256(), rr);
  const W L = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_add_epi32(r, x.b), r), x.c);
  const W sh = _mm256_min_epi32(_mm256_add_epi32(z, x.em), _mm256_set1_epi32(63));
  const V sh_e = vand(sh, set1(0xFFFFFFFF)), sh_o = _mm256_srli_epi64(sh, 32);
  const V ve = add(_mm256_mul_epi32(L, x.m), _mm256_sllv_epi64(set1(1), sub(sh_e, set1(1))));
  const V vo = add(_mm256_mul_epi32(_mm256_srli_epi64(L, 32), x.m), _mm256_sllv_epi64(set1(1), sub(sh_o, set1(1))));
  const V top = set1(1 << 15);
  const V ee = _mm256_andnot_si256(negative(ve), min64(_mm256_srlv_epi64(ve, sh_e), top));  // v < 0: 0
  const V eo = _mm256_andnot_si256(negative(vo), min64(_mm256_srlv_epi64(vo, sh_o), top));
  return _mm256_or_si256(ee, _mm256_slli_epi64(eo, 32));
}

static const int64_t kSmScratch = 8192;  // exponentials kept on the stack; longer rows recompute them

}  // namespace

void softmax_row_avx2(INTBERT_SOFTMAX_ROW_ARGS) {
  Exp x;
  x.pcnt = _mm_cvtsi64_si128(sm.pre_shift);
  W vmax = _mm256_set1_epi32(INT32_MIN);
  W any = _mm256_setzero_si256();
  for (int64_t i = 0; i < L; i += 8) {
    const W kk = kept8(keep ? keep + i : nullptr, L - i);
    const W s = _mm256_sra_epi32(load8_i32(scores + i, L - i), x.pcnt);
    vmax = _mm256_max_epi32(vmax, _mm256_blendv_epi8(_mm256_set1_epi32(INT32_MIN), s, kk));
    any = _mm256_or_si256(any, kk);
  }
  if (_mm256_testz_si256(any, any)) {  // every key masked: all zeros
    memset(probs, 0, size_t(L));
    return;
  }
  __m128i m4 = _mm_max_epi32(_mm256_castsi256_si128(vmax), _mm256_extracti128_si256(vmax, 1));
  m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, 0x4E));
  m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, 0xB1));
  const int64_t xmax = _mm_cvtsi128_si32(m4);
  const int64_t t = xmax + 30 * sm.x0;  // EXP_MAX_HALVINGS
  x.xmax = _mm256_set1_epi32(int32_t(xmax));
  x.floor_t = _mm256_set1_epi32(int32_t(t < INT32_MIN ? INT32_MIN : t));
  x.dd = _mm256_set1_epi32(int32_t(-sm.x0));
  x.dd1 = _mm256_set1_epi32(int32_t(-sm.x0 - 1));
  x.inv_dd = _mm256_set1_ps(1.0f / float(-sm.x0));
  x.b = _mm256_set1_epi32(int32_t(sm.b));
  x.c = _mm256_set1_epi32(int32_t(sm.c));
  x.em = _mm256_set1_epi32(int32_t(sm.e));
  x.m = set1(sm.m);

  int32_t buf[kSmScratch + 8];
  const bool keep_e = L <= kSmScratch;
  int64_t total = 0;
  for (int64_t i0 = 0; i0 < L; i0 += int64_t(1) << 20) {  // int32 lane sums stay < 2^17 2^15
    const int64_t i1 = L - i0 < (int64_t(1) << 20) ? L : i0 + (int64_t(1) << 20);
    W sum = _mm256_setzero_si256();
    for (int64_t i = i0; i < i1; i += 8) {
      const W e = _mm256_and_si256(kept8(keep ? keep + i : nullptr, i1 - i), exp8(x, scores + i, i1 - i));
      if (keep_e) _mm256_storeu_si256(reinterpret_cast<__m256i*>(buf + i), e);  // buf has room for a full last block
      sum = _mm256_add_epi32(sum, e);
    }
    total += hsum(add(_mm256_cvtepu32_epi64(_mm256_castsi256_si128(sum)),
                      _mm256_cvtepu32_epi64(_mm256_extracti128_si256(sum, 1))));
  }
  if (total < 1) total = 1;
  const int64_t factor = (int64_t(1) << 32) / total;  // 2^32 only for total = 1: then p = e << output_bit
  const V top = set1((int64_t(1) << sm.output_bit) - 1);
  const __m128i cnt = _mm_cvtsi64_si128(factor == (int64_t(1) << 32) ? 0 : 32 - sm.output_bit);
  const V f = set1(factor == (int64_t(1) << 32) ? (int64_t(1) << sm.output_bit) : factor);
  const W pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                  0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  for (int64_t i = 0; i < L; i += 8) {
    const int64_t left = L - i;
    W e;
    if (keep_e)
      e = load8_i32(buf + i, left);
    else
      e = _mm256_and_si256(kept8(keep ? keep + i : nullptr, left), exp8(x, scores + i, left));
    const V pe = min64(_mm256_srl_epi64(_mm256_mul_epu32(e, f), cnt), top);
    const V po = min64(_mm256_srl_epi64(_mm256_mul_epu32(_mm256_srli_epi64(e, 32), f), cnt), top);
    const W p = _mm256_or_si256(pe, _mm256_slli_epi64(po, 32));  // 8 int32 in [0, 255]
    const W bytes = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(p, pick), _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
    const int64_t out8 = _mm_cvtsi128_si64(_mm256_castsi256_si128(bytes));
    if (left >= 8)
      memcpy(probs + i, &out8, 8);
    else
      memcpy(probs + i, &out8, size_t(left));
  }
}

}  // namespace intbert
