// Every SIMD chain equals its scalar twin (chains_ref.cpp) bit for bit, on random and edge data.
//
// Build (tests/test_native_chains_cpp.py does this in a temporary directory):
//   g++ -O2 -std=c++17 -Icsrc csrc/tests/test_chains.cpp csrc/chains_*.cpp -o test_chains && ./test_chains
// Only the ISAs this CPU runs are tested (__builtin_cpu_supports). A failure prints the chain, the
// ISA, the shape and the first differing element (ref, got); the exit status is the failure count
// (capped at 100). Outputs are written into buffers pre-filled with a sentinel, and the whole buffer
// is compared, so a write past n (or into the ld padding) fails too.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kernels.h"

using namespace intbert;

namespace {

// ---------------------------------------------------------------------------------------------
// Plumbing
// ---------------------------------------------------------------------------------------------

struct Rng {  // splitmix64: deterministic across platforms
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int64_t range(int64_t lo, int64_t hi) { return lo + int64_t(next() % uint64_t(hi - lo + 1)); }  // [lo, hi]
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  bool chance(double p) { return uniform() < p; }
  double normal() {  // Box-Muller
    const double u = uniform() + 1e-300, v = uniform();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
  }
};

struct Impl {
  const char* name;
  void (*bias_requant)(INTBERT_BIAS_REQUANT_ARGS);
  void (*bias_gelu_requant2)(INTBERT_BIAS_GELU_REQUANT2_ARGS);
  void (*bias_residual_ln_requant)(INTBERT_BIAS_RESIDUAL_LN_REQUANT_ARGS);
  void (*requant_i32)(INTBERT_REQUANT_I32_ARGS);
  void (*embed)(INTBERT_EMBED_ARGS);
  void (*softmax_row)(INTBERT_SOFTMAX_ROW_ARGS);
};

#define ISA(sfx)                                                                                          \
  Impl {                                                                                                   \
    #sfx, bias_requant_##sfx, bias_gelu_requant2_##sfx, bias_residual_ln_requant_##sfx, requant_i32_##sfx, \
        embed_##sfx, softmax_row_##sfx                                                                    \
  }

std::vector<Impl> simd_isas() {
  std::vector<Impl> isas;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    isas.push_back(ISA(avx2));
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni"))
    isas.push_back(ISA(avx512));
  return isas;
}

int g_failures = 0;
int g_cases = 0;
std::vector<std::string> g_summary;

// Compares whole buffers (sentinel-filled padding included); prints the first difference.
template <class T>
bool same(const std::vector<T>& ref, const std::vector<T>& got, const char* chain, const Impl& isa,
          const std::string& what, int64_t ld) {
  ++g_cases;
  for (size_t i = 0; i < ref.size(); ++i)
    if (ref[i] != got[i]) {
      ++g_failures;
      if (g_failures <= 20)
        fprintf(stderr, "FAIL %s_%s %s: row %lld col %lld: ref %d got %d\n", chain, isa.name, what.c_str(),
                (long long)(i / ld), (long long)(i % ld), int(ref[i]), int(got[i]));
      return false;
    }
  return true;
}

const int64_t kLengths[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 127, 129, 384, 768, 769, 3072};
const int64_t kEdgeE[] = {0, 1, 15, 16, 17, 31, 40, 62, 63};
const int8_t kSentinel = 0x5A;

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

// intops.dyadic (m in [2^30, 2^31), e = 31 - exponent; e > 63 keeps e = 63 and drops mantissa bits).
void dyadic(double ratio, int64_t* m, int64_t* e) {
  if (ratio <= 0) {
    *m = 0, *e = 0;
    return;
  }
  int exp;
  const double mant = frexp(ratio, &exp);
  int64_t ee = 31 - exp;
  double mm = mant * 2147483648.0;
  if (ee > 63) mm = ldexp(mm, -int(ee - 63)), ee = 63;
  int64_t mi = int64_t(floor(mm + 0.5));
  if (mi == (int64_t(1) << 31)) mi >>= 1, ee -= 1;
  *m = mi, *e = ee;
}

struct RequantBuf {  // owns the arrays of a RequantC
  std::vector<int64_t> m, e;
  RequantC c;
};

// Per-channel dyadics: realistic ones from log2(ratio) uniform in [lo, hi], mixed with edges:
// m = 0, small m, m near 2^31, and e from kEdgeE.
void make_requant(RequantBuf& r, int64_t n, Rng& rng, int bits, int input_bits, double lo, double hi,
                  double edge_share = 0.3) {
  r.m.resize(n), r.e.resize(n);
  for (int64_t c = 0; c < n; ++c) {
    dyadic(exp2(lo + (hi - lo) * rng.uniform()), &r.m[c], &r.e[c]);
    if (rng.chance(edge_share)) {
      r.e[c] = kEdgeE[rng.range(0, 8)];
      const int pick = int(rng.range(0, 5));
      r.m[c] = pick == 0 ? 0 : pick == 1 ? rng.range(1, 100) : pick == 2 ? (int64_t(1) << 31) - 1
               : pick == 3 ? (int64_t(1) << 31) - rng.range(2, 1000) : rng.range(0, (int64_t(1) << 31) - 1);
    }
  }
  r.c = RequantC{r.m.data(), r.e.data(), bits, input_bits};
}

void identity_requant(RequantBuf& r, int64_t n, int bits) {  // rescale(q) = q
  r.m.assign(n, int64_t(1) << 30), r.e.assign(n, 30);
  r.c = RequantC{r.m.data(), r.e.data(), bits, 31};
}

// int32 accumulators: moderate values, some anywhere in +-bound, and +-bound / INT32_MIN + 1 placed
// at the start of every row.
std::vector<int32_t> make_acc(int64_t rows, int64_t ld, Rng& rng, int64_t bound = INT32_MAX) {
  std::vector<int32_t> a(rows * ld);
  for (auto& v : a) v = int32_t(rng.chance(0.15) ? rng.range(-bound, bound) : rng.range(-(1 << 20), 1 << 20));
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t edge[] = {int32_t(bound), int32_t(-bound), INT32_MIN + 1};
    for (int64_t i = 0; i < 3 && i < ld; ++i) a[r * ld + i] = edge[(i + r) % 3];
  }
  return a;
}

// Keep |acc + bias| <= 2^31 - 1 (the contract of a 31-bit input) by moving acc.
void fit_int32(std::vector<int32_t>& acc, int64_t rows, int64_t ld, int64_t n, const std::vector<int32_t>& bias) {
  if (bias.empty()) return;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) {
      const int64_t s = std::min<int64_t>(std::max<int64_t>(int64_t(acc[r * ld + c]) + bias[c], -INT32_MAX), INT32_MAX);
      acc[r * ld + c] = int32_t(s - bias[c]);
    }
}

// ---------------------------------------------------------------------------------------------
// bias_requant, requant_i32
// ---------------------------------------------------------------------------------------------

void test_bias_requant(const std::vector<Impl>& isas) {
  Rng rng(1);
  int cases = 0;
  for (int64_t n : kLengths)
    for (int input_bits : {31, 32})
      for (int with_bias : {0, 1}) {
        const int64_t rows = 1 + (n + input_bits + with_bias) % 5, ld = n + 1 + n % 3, ld_out = n + 2;
        std::vector<int32_t> acc = make_acc(rows, ld, rng), bias;
        if (with_bias)
          for (int64_t c = 0; c < n; ++c) bias.push_back(int32_t(rng.chance(0.2) ? rng.range(INT32_MIN + 1, INT32_MAX)
                                                                                   : rng.range(-(1 << 24), 1 << 24)));
        if (input_bits == 31) fit_int32(acc, rows, ld, n, bias);
        for (int bits : {8, 4}) {
          RequantBuf rq;
          make_requant(rq, n, rng, bits, input_bits, -34.0, 3.0);
          std::vector<int8_t> ref(rows * ld_out, kSentinel);
          bias_requant_ref(acc.data(), ld, rows, n, with_bias ? bias.data() : nullptr, rq.c, ref.data(), ld_out);
          std::vector<int8_t> ref2(rows * ld_out, kSentinel);
          requant_i32_ref(acc.data(), ld, rows, n, rq.c, ref2.data(), ld_out);
          for (const Impl& isa : isas) {
            const std::string what = "n=" + std::to_string(n) + " rows=" + std::to_string(rows) +
                                     " input_bits=" + std::to_string(input_bits) + " bias=" +
                                     std::to_string(with_bias) + " bits=" + std::to_string(bits);
            std::vector<int8_t> got(rows * ld_out, kSentinel);
            isa.bias_requant(acc.data(), ld, rows, n, with_bias ? bias.data() : nullptr, rq.c, got.data(), ld_out);
            same(ref, got, "bias_requant", isa, what, ld_out);
            std::vector<int8_t> got2(rows * ld_out, kSentinel);
            isa.requant_i32(acc.data(), ld, rows, n, rq.c, got2.data(), ld_out);
            same(ref2, got2, "requant_i32", isa, what, ld_out);
            ++cases;
          }
        }
      }
  g_summary.push_back("bias_requant + requant_i32: " + std::to_string(cases) + " cases");
}

// ---------------------------------------------------------------------------------------------
// bias_gelu_requant2
// ---------------------------------------------------------------------------------------------

struct GeluBuf {
  std::vector<int64_t> b, c, one;
  GeluC g;
};

// intops.gelu_constants for input scale S.
void gelu_constants(double S, int64_t* b, int64_t* c, int64_t* one) {
  const double s = S / 1.4142;
  *b = int64_t(floor(-1.769 / s));
  *c = int64_t(floor((1.0 / -0.2888) / (s * s)));
  *one = int64_t(floor(1.0 / (-0.2888 * s * s * 16384.0)));
}

int64_t gelu_scalar(int64_t q, int64_t b, int64_t c, int64_t one) {  // the test's own int_gelu, for the bound
  const int64_t t = std::min(q < 0 ? -q : q, -b);
  const int64_t sign = (q > 0) - (q < 0);
  return -q * (((sign * ((t + b) * (t + b) + c)) >> 14) + one);
}

void test_gelu(const std::vector<Impl>& isas) {
  Rng rng(2);
  int cases = 0;
  // (rq1.bits, rq1.input_bits, rq2.input_bits)
  const int configs[][3] = {{8, 47, 31}, {16, 47, 32}, {32, 47, 32}, {32, 47, 31}, {8, 31, 31}};
  for (int64_t n : kLengths)
    for (const auto& cfg : configs) {
      const int64_t rows = 1 + (n + cfg[0] + cfg[2]) % 5, ld = n + 3, ld_out = n + 1;
      GeluBuf g;
      std::vector<double> scale(n);
      for (int64_t c = 0; c < n; ++c) {
        // input scales 2^-20 .. 1e-2, log-uniform
        scale[c] = exp2(-20.0 + (log2(1e-2) + 20.0) * rng.uniform());
        int64_t b, cc, one;
        gelu_constants(scale[c], &b, &cc, &one);
        g.b.push_back(b), g.c.push_back(cc), g.one.push_back(one);
      }
      g.g = GeluC{g.b.data(), g.c.data(), g.one.data()};
      std::vector<int32_t> bias(n);
      for (auto& v : bias) v = int32_t(rng.range(-5000, 5000));
      std::vector<int32_t> acc(rows * ld);
      const int64_t limit = int64_t(1) << cfg[1];  // |i-GELU| < 2^rq1.input_bits: the contract of rq1
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < ld; ++c) {
          double x = rng.normal() * 4;
          if (rng.chance(0.05)) x = rng.normal() * 1e4;
          int64_t q = std::min<int64_t>(std::max<int64_t>(int64_t(llround(x / scale[c % n])), -INT32_MAX), INT32_MAX);
          if (c < 3) q = (c == 0 ? INT32_MAX : -INT32_MAX);
          if (c < n) {
            q = std::min<int64_t>(std::max<int64_t>(q + bias[c], -INT32_MAX), INT32_MAX);  // |acc + bias| < 2^31
            int64_t y = gelu_scalar(q, g.b[c], g.c[c], g.one[c]);
            if (y >= limit || y <= -limit) q = 0;
            q -= bias[c];
          }
          acc[r * ld + c] = int32_t(q);
        }
      RequantBuf rq1, rq2;
      if (cfg[0] == 8)
        make_requant(rq1, n, rng, cfg[0], cfg[1], -40.0, -10.0);
      else
        make_requant(rq1, n, rng, cfg[0], cfg[1], -30.0, -5.0);
      make_requant(rq2, n, rng, 8, cfg[2], cfg[0] == 8 ? -2.0 : -25.0, cfg[0] == 8 ? 2.0 : -5.0);
      std::vector<int8_t> ref(rows * ld_out, kSentinel);
      bias_gelu_requant2_ref(acc.data(), ld, rows, n, bias.data(), g.g, rq1.c, rq2.c, ref.data(), ld_out);
      for (const Impl& isa : isas) {
        std::vector<int8_t> got(rows * ld_out, kSentinel);
        isa.bias_gelu_requant2(acc.data(), ld, rows, n, bias.data(), g.g, rq1.c, rq2.c, got.data(), ld_out);
        same(ref, got, "bias_gelu_requant2", isa,
             "n=" + std::to_string(n) + " rows=" + std::to_string(rows) + " bits1=" + std::to_string(cfg[0]) +
                 " in1=" + std::to_string(cfg[1]) + " in2=" + std::to_string(cfg[2]),
             ld_out);
        ++cases;
      }
    }
  g_summary.push_back("bias_gelu_requant2: " + std::to_string(cases) + " cases");
}

// ---------------------------------------------------------------------------------------------
// LayerNorm chains
// ---------------------------------------------------------------------------------------------

// The test's own integer LayerNorm numerator n = floor(y 2^30 / std) (128-bit division, exact isqrt),
// used only to build probes: ln.bias = sign * offset - n makes every output a small offset, so any
// +-1 error in the mean, variance, isqrt or division shows in the int8 result.
std::vector<int64_t> ln_numerators(const std::vector<int64_t>& h, int64_t shift) {
  const int64_t C = int64_t(h.size());
  int64_t sum = 0;
  for (int64_t v : h) sum += v;
  const int64_t a = 2 * sum + C, b = 2 * C;
  const int64_t mean = a / b - ((a % b != 0 && a < 0) ? 1 : 0);
  int64_t var = 0;
  for (int64_t v : h) var += ((v - mean) >> shift) * ((v - mean) >> shift);
  int64_t x = int64_t(sqrtl((long double)var));
  while (x * x > var) --x;
  while ((x + 1) * (x + 1) <= var) ++x;
  const int64_t d = std::max<int64_t>(x << shift, 1);
  std::vector<int64_t> out(C);
  for (int64_t c = 0; c < C; ++c) {
    const __int128 num = (__int128)(h[c] - mean) << 30;
    __int128 q = num / d;
    if (num % d != 0 && num < 0) q -= 1;
    out[c] = int64_t(q);
  }
  return out;
}

// Smallest shift with sum((y >> s)^2) < 2^32 (intops.layernorm_shift), for realistic constants.
int64_t calibrated_shift(const std::vector<int64_t>& h) {
  const int64_t C = int64_t(h.size());
  int64_t sum = 0;
  for (int64_t v : h) sum += v;
  const int64_t a = 2 * sum + C, b = 2 * C;
  const int64_t mean = a / b - ((a % b != 0 && a < 0) ? 1 : 0);
  for (int64_t s = 0;; ++s) {
    int64_t var = 0;
    for (int64_t v : h) var += ((v - mean) >> s) * ((v - mean) >> s);
    if (var < (int64_t(1) << 32)) return s;
  }
}

int64_t t_rescale(int64_t q, int64_t m, int64_t e, int input_bits) {  // the test's own, 128-bit
  if (input_bits > 31 && e < 16) q = std::min<int64_t>(std::max<int64_t>(q, INT32_MIN + 1), INT32_MAX);
  const __int128 v = (__int128)q * m + (e > 0 ? (__int128)1 << (e - 1) : 0);
  return int64_t(v >> e);
}

int64_t t_residual(int64_t a, int64_t b, const ResidualC& add, int64_t c) {
  const int64_t s = t_rescale(a, add.a.m[c], add.a.e[c], add.a.input_bits) +
                    t_rescale(b, add.b.m[c], add.b.e[c], add.b.input_bits);
  const int64_t hi = (int64_t(1) << (add.bits - 1)) - 1;
  return std::min(std::max(s, -hi - 1), hi);
}

struct LnBuf {
  std::vector<int64_t> sign, bias;
  LayerNormC c;
};

void make_ln(LnBuf& ln, int64_t n, Rng& rng, int64_t shift) {
  ln.sign.resize(n), ln.bias.resize(n);
  for (int64_t c = 0; c < n; ++c) {
    ln.sign[c] = rng.chance(0.3) ? -1 : 1;
    ln.bias[c] = rng.range(-(int64_t(1) << 29), int64_t(1) << 29);
  }
  ln.c = LayerNormC{shift, ln.sign.data(), ln.bias.data()};
}

// A probe for row h: identity requant and ln.bias = sign * offset - n(h).
void make_probe(LnBuf& ln, RequantBuf& rq, const std::vector<int64_t>& h, int64_t shift, Rng& rng) {
  const int64_t n = int64_t(h.size());
  const std::vector<int64_t> num = ln_numerators(h, shift);
  ln.sign.resize(n), ln.bias.resize(n);
  for (int64_t c = 0; c < n; ++c) {
    ln.sign[c] = rng.chance(0.3) ? -1 : 1;
    ln.bias[c] = ln.sign[c] * rng.range(-120, 120) - num[c];
  }
  ln.c = LayerNormC{shift, ln.sign.data(), ln.bias.data()};
  identity_requant(rq, n, 8);
}

int g_probes_in_range = 0;

// Pell pairs k^2 - 2 a^2 = 1: [a, -a, 0, ...] has var = k^2 - 1, one below a square.
const int64_t kPell[][2] = {{3, 2}, {17, 12}, {99, 70}, {577, 408}, {3363, 2378}, {19601, 13860},
                            {114243, 80782}, {665857, 470832}};

void test_residual_ln(const std::vector<Impl>& isas) {
  Rng rng(3);
  int cases = 0;
  std::vector<int64_t> lengths(std::begin(kLengths), std::end(kLengths));
  lengths.push_back(16385);  // wider than the SIMD scratch: the scalar fallback
  const char* kinds[] = {"random", "wide", "constant", "huge", "pell", "square", "tie", "isqrt"};
  for (int64_t n : lengths)
    for (const char* kind : kinds) {
      const std::string k = kind;
      if (n > 4096 && k != "random") continue;
      if (k == "isqrt" && n < 1100) continue;  // needs ~520 pairs of 2^21 to reach var ~ 2^52
      const int64_t rows = n > 4096 ? 2 : 1 + (n + k.size()) % 5, ld = n + 2, ld_res = n + 5, ld_out = n + 3;
      const bool wide = k == "wide";
      std::vector<int32_t> acc = make_acc(rows, ld, rng, wide ? INT32_MAX : int64_t(1) << 30), bias(n);
      for (auto& v : bias) v = int32_t(rng.range(-(1 << 20), 1 << 20));
      std::vector<int8_t> res(rows * ld_res);
      for (auto& v : res) v = int8_t(rng.range(-128, 127));
      RequantBuf ra, rb;
      make_requant(ra, n, rng, 22, wide ? 32 : 31, -12.0, 0.0);
      make_requant(rb, n, rng, 22, 31, 5.0, 14.0);
      if (wide)  // sums beyond int32 on channels with a small ratio (unsaturated at 22 bits)
        for (int64_t c = 0; c < std::min<int64_t>(n, 3); ++c) {
          acc[c] = c == 1 ? -INT32_MAX : INT32_MAX;
          bias[c] = c == 1 ? -(1 << 20) : (1 << 20);
          ra.m[c] = c == 1 ? 3 : 1, ra.e[c] = c == 1 ? 12 : 15;
        }
      if (k == "constant" || k == "huge" || k == "pell" || k == "square" || k == "tie" || k == "isqrt") {
        identity_requant(ra, n, 22);  // h = acc (+ bias), clamped to 22 bits
        rb.m.assign(n, 0), rb.e.assign(n, 0);
        rb.c = RequantC{rb.m.data(), rb.e.data(), 22, 31};
        std::fill(bias.begin(), bias.end(), 0);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < n; ++c) {
            int64_t v = 0;
            if (k == "constant") v = -77;
            if (k == "huge") v = (rng.chance(0.5) ? 1 : -1) * ((1 << 21) - rng.range(0, 3));
            if (k == "pell" && c < 2) v = (c ? -1 : 1) * (kPell[(r + n) % 8][1] << (r % 3));
            if (k == "square" && c < 4) v = (c % 2 ? -1 : 1) * (kPell[(r + n) % 8][1] << (r % 3));
            if (k == "tie" && c == 0) v = (r % 2 ? -1 : 1) * (1 + 2 * r);  // mean = v / n: a tie for n = 2
            acc[r * ld + c] = int32_t(v);
          }
        if (k == "isqrt")  // var = k^2 - 1 just above 2^52: (double)var's square root rounds up to k
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t kk = (int64_t(1) << 26) + 1 + 2 * r;  // odd: (kk^2 - 1) / 2 is an integer
            int64_t t = (kk * kk - 1) / 2, c = 0;
            while (t > 0) {  // greedy sum of squares: pairs [a, -a] keep the mean 0
              int64_t a = std::min<int64_t>(int64_t(sqrtl((long double)t)), (1 << 21) - 1);
              while (a * a > t) --a;
              acc[r * ld + c] = int32_t(a), acc[r * ld + c + 1] = int32_t(-a), c += 2, t -= a * a;
            }
          }
      }
      ResidualC add{ra.c, rb.c, 22};
      // h of row 0 by the test's own arithmetic: the shift and the probe are built from it
      std::vector<int64_t> h0(n);
      for (int64_t c = 0; c < n; ++c) h0[c] = t_residual(int64_t(acc[c]) + bias[c], res[c], add, c);
      const int64_t shift = calibrated_shift(h0);
      for (int64_t sh : {shift, int64_t(0), shift + 3})
        for (int probe : {0, 1}) {
          if (n > 4096 && (sh != shift || probe)) continue;
          LnBuf ln;
          RequantBuf rq;
          if (probe)
            make_probe(ln, rq, h0, sh, rng);
          else
            make_ln(ln, n, rng, sh), make_requant(rq, n, rng, 8, rng.chance(0.5) ? 31 : 32, -30.0, -18.0);
          std::vector<int8_t> ref(rows * ld_out, kSentinel);
          bias_residual_ln_requant_ref(acc.data(), ld, rows, n, bias.data(), res.data(), ld_res, add, ln.c, rq.c,
                                       ref.data(), ld_out);
          if (probe) {
            bool small = true;
            for (int64_t c = 0; c < n; ++c) small &= ref[c] >= -120 && ref[c] <= 120;
            g_probes_in_range += small;
          }
          for (const Impl& isa : isas) {
            std::vector<int8_t> got(rows * ld_out, kSentinel);
            isa.bias_residual_ln_requant(acc.data(), ld, rows, n, bias.data(), res.data(), ld_res, add, ln.c, rq.c,
                                         got.data(), ld_out);
            same(ref, got, "bias_residual_ln_requant", isa,
                 "n=" + std::to_string(n) + " rows=" + std::to_string(rows) + " kind=" + k +
                     " shift=" + std::to_string(sh) + " probe=" + std::to_string(probe),
                 ld_out);
            ++cases;
          }
        }
    }
  g_summary.push_back("bias_residual_ln_requant: " + std::to_string(cases) + " cases");
}

void test_embed(const std::vector<Impl>& isas) {
  Rng rng(4);
  int cases = 0;
  std::vector<int64_t> lengths(std::begin(kLengths), std::end(kLengths));
  lengths.push_back(16385);
  for (int64_t n : lengths)
    for (int probe : {0, 1}) {
      const int64_t vocab = 40, types = 2, positions = 20, rows = n > 4096 ? 2 : 1 + (n + probe) % 5 + 3 * probe;
      const int64_t ld_out = n + 1;
      std::vector<int8_t> word(vocab * n), tt(types * n), pos(positions * n);
      for (auto* t : {&word, &tt, &pos})
        for (auto& v : *t) v = int8_t(rng.range(-127, 127));
      std::vector<int64_t> ids(rows), tids(rows), pids(rows);
      for (int64_t r = 0; r < rows; ++r)
        ids[r] = rng.range(0, vocab - 1), tids[r] = rng.range(0, types - 1), pids[r] = rng.range(0, positions - 1);
      RequantBuf a1, b1, a2, b2;
      make_requant(a1, n, rng, 16, 31, 0.0, 9.0, 0.1);
      make_requant(b1, n, rng, 16, 31, 0.0, 9.0, 0.1);
      make_requant(a2, n, rng, 16, probe ? 32 : 31, -1.0, 1.0, 0.1);
      make_requant(b2, n, rng, 16, 31, 0.0, 9.0, 0.1);
      ResidualC add1{a1.c, b1.c, 16}, add2{a2.c, b2.c, 16};
      std::vector<int64_t> h0(n);
      for (int64_t c = 0; c < n; ++c)
        h0[c] = t_residual(t_residual(word[ids[0] * n + c], tt[tids[0] * n + c], add1, c), pos[pids[0] * n + c],
                           add2, c);
      const int64_t shift = calibrated_shift(h0);
      LnBuf ln;
      RequantBuf rq;
      if (probe)
        make_probe(ln, rq, h0, shift, rng);
      else
        make_ln(ln, n, rng, shift), make_requant(rq, n, rng, 8, 31, -30.0, -18.0);
      std::vector<int8_t> ref(rows * ld_out, kSentinel);
      embed_ref(word.data(), tt.data(), pos.data(), ids.data(), tids.data(), pids.data(), rows, n, add1, add2, ln.c,
                rq.c, ref.data(), ld_out);
      if (probe) {
        bool small = true;
        for (int64_t c = 0; c < n; ++c) small &= ref[c] >= -120 && ref[c] <= 120;
        g_probes_in_range += small;
      }
      for (const Impl& isa : isas) {
        std::vector<int8_t> got(rows * ld_out, kSentinel);
        isa.embed(word.data(), tt.data(), pos.data(), ids.data(), tids.data(), pids.data(), rows, n, add1, add2, ln.c,
                  rq.c, got.data(), ld_out);
        same(ref, got, "embed", isa, "n=" + std::to_string(n) + " rows=" + std::to_string(rows) +
                                         " probe=" + std::to_string(probe), ld_out);
        ++cases;
      }
    }
  g_summary.push_back("embed: " + std::to_string(cases) + " cases");
}

// ---------------------------------------------------------------------------------------------
// softmax_row
// ---------------------------------------------------------------------------------------------

// intops.softmax_constants for score scale S.
SoftmaxC softmax_constants(double S) {
  SoftmaxC sm;
  int64_t p = std::max<int64_t>(0, int64_t(ceil(log2(0x1p-14 / S))));
  if (S * exp2(double(p)) < 0x1p-14) ++p;
  if (p > 0 && S * exp2(double(p - 1)) >= 0x1p-14) --p;
  const double s = S * exp2(double(p));
  sm.pre_shift = p;
  dyadic(0.35815147 * s * s * 32768.0, &sm.m, &sm.e);
  sm.x0 = int64_t(floor(-0.6931 / s));
  sm.zm = ((int64_t(1) << 33) - sm.x0 - 1) / -sm.x0;
  sm.b = int64_t(floor((0.96963238 / 0.35815147) / s));
  sm.c = int64_t(floor((1.0 / 0.35815147) / (s * s)));
  sm.output_bit = 8;
  return sm;
}

void test_softmax(const std::vector<Impl>& isas) {
  Rng rng(5);
  int cases = 0;
  std::vector<int64_t> lengths;
  for (int64_t L = 1; L <= 70; ++L) lengths.push_back(L);
  for (int64_t L : {127, 128, 129, 255, 256, 257, 384, 511, 512, 8192, 8193, 20000}) lengths.push_back(L);
  // -x0 = 61 and 109: float32 n * (1/dd) falls just below an exact integer quotient (the z correction)
  const double scales[] = {0x1p-24, 0x1p-20, 0x1p-14, 1e-3, 0.05, 0.7, 1.0, 3.0, 0.6931 / 60.5, 0.6931 / 108.5};
  std::vector<SoftmaxC> consts;
  for (double S : scales) consts.push_back(softmax_constants(S));
  // Hand-made: L = (r + 20) r + 1 is negative for r < 0 (e clamps to 0) and e = 1 at the max, so a row
  // with one maximum sums to 1 (factor = 2^32, p = 256 clamped to 255); also output_bit 7.
  const SoftmaxC odd = {0, -8, int64_t(1) << 30, 20, 1, int64_t(1) << 30, 30, 8};
  consts.push_back(odd);
  SoftmaxC odd7 = odd;
  odd7.output_bit = 7;
  consts.push_back(odd7);
  for (const SoftmaxC& sm : consts) {
    const double S = sm.x0 == -8 ? 0.0 : 0.6931 / double(-sm.x0) * exp2(-double(sm.pre_shift));
    for (int64_t L : lengths)
      for (int kind = 0; kind < 8; ++kind) {
        if (L > 512 && kind > 2) continue;
        std::vector<int32_t> scores(L);
        std::vector<uint8_t> keep(L, 1);
        bool use_keep = false;
        for (int64_t i = 0; i < L; ++i) {
          const double x = rng.normal() * 5 / (S > 0 ? S : 0.1);
          scores[i] = int32_t(std::max(std::min(x, 2147483647.0), -2147483648.0));
        }
        if (kind == 1) {  // random mask (values other than 1 attend too)
          use_keep = true;
          for (auto& k : keep) k = rng.chance(0.3) ? 0 : uint8_t(rng.range(1, 3));
        }
        if (kind == 2) use_keep = true, std::fill(keep.begin(), keep.end(), 0);  // fully masked
        if (kind == 3) std::fill(scores.begin(), scores.end(), int32_t(rng.range(-1000000, 1000000)));  // all equal
        if (kind == 4 || kind == 5)  // extremes
          for (int64_t i = 0; i < L; ++i) scores[i] = (i + kind) % 3 == 0 ? INT32_MAX : INT32_MIN;
        if (kind == 5) {  // the maxima masked: the row max is INT32_MIN
          use_keep = true;
          for (int64_t i = 0; i < L; ++i) keep[i] = scores[i] == INT32_MIN;
        }
        if (kind == 6) {  // one key kept
          use_keep = true;
          std::fill(keep.begin(), keep.end(), 0);
          keep[rng.range(0, L - 1)] = 1;
        }
        if (kind == 7) {  // the max minus exact multiples of -x0 (before the pre-shift): z = j exactly
          const int64_t base = rng.range(-100000, 100000);
          for (int64_t i = 0; i < L; ++i)
            scores[i] = int32_t((base + (i % 31) * sm.x0) * (int64_t(1) << sm.pre_shift) +
                                rng.range(0, (int64_t(1) << sm.pre_shift) - 1));
        }
        std::vector<uint8_t> ref(L + 1, 0xA5);
        softmax_row_ref(scores.data(), L, use_keep ? keep.data() : nullptr, sm, ref.data());
        for (const Impl& isa : isas) {
          std::vector<uint8_t> got(L + 1, 0xA5);
          isa.softmax_row(scores.data(), L, use_keep ? keep.data() : nullptr, sm, got.data());
          char what[96];
          snprintf(what, sizeof what, "x0=%lld L=%lld kind=%d", (long long)sm.x0, (long long)L, kind);
          same(ref, got, "softmax_row", isa, what, L + 1);
          ++cases;
        }
      }
  }
  g_summary.push_back("softmax_row: " + std::to_string(cases) + " cases");
}

// ---------------------------------------------------------------------------------------------
// Tails at page ends: every input and output array ends exactly where a PROT_NONE page begins, so
// a load or store past the last element (a tail handled as a full vector) faults.
// ---------------------------------------------------------------------------------------------

template <class T>
struct Guarded {  // n elements ending at a guard page
  void* base = nullptr;
  size_t bytes = 0;
  T* p = nullptr;
  Guarded(const std::vector<T>& v) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE)), need = v.size() * sizeof(T);
    bytes = (need + page - 1) / page * page + page;
    base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) perror("mmap"), exit(200);
    char* guard = static_cast<char*>(base) + bytes - page;
    if (mprotect(guard, page, PROT_NONE) != 0) perror("mprotect"), exit(200);
    p = reinterpret_cast<T*>(guard - need);
    if (need) memcpy(p, v.data(), need);
  }
  ~Guarded() { munmap(base, bytes); }
  std::vector<T> get(size_t n) const { return std::vector<T>(p, p + n); }
};

void test_page_ends(const std::vector<Impl>& isas) {
  Rng rng(6);
  int cases = 0;
  for (int64_t n = 1; n <= 40; ++n) {
    const int64_t rows = 1 + n % 3;
    RequantBuf rq, rq1, rq2, ra, rb, a2, b2;
    make_requant(rq, n, rng, 8, n % 2 ? 31 : 32, -34.0, 3.0);
    make_requant(rq1, n, rng, 8, 47, -40.0, -10.0);
    make_requant(rq2, n, rng, 8, 31, -2.0, 2.0);
    make_requant(ra, n, rng, 22, 31, -12.0, 0.0);
    make_requant(rb, n, rng, 22, 31, 5.0, 14.0);
    make_requant(a2, n, rng, 16, 31, -1.0, 1.0, 0.1);
    make_requant(b2, n, rng, 16, 31, 0.0, 9.0, 0.1);
    std::vector<int32_t> acc = make_acc(rows, n, rng, int64_t(1) << 24), bias(n);
    for (auto& v : bias) v = int32_t(rng.range(-1000, 1000));
    fit_int32(acc, rows, n, n, bias);  // |acc + bias| < 2^31: the i-GELU contract
    std::vector<int64_t> gb(n), gc(n), gone(n), sign(n), lnb(n);
    for (int64_t c = 0; c < n; ++c) {
      gelu_constants(exp2(-12.0 - 4.0 * rng.uniform()), &gb[c], &gc[c], &gone[c]);
      sign[c] = rng.chance(0.3) ? -1 : 1, lnb[c] = rng.range(-(1 << 29), 1 << 29);
    }
    std::vector<int8_t> res(rows * n), table(3 * n);
    for (auto& v : res) v = int8_t(rng.range(-128, 127));
    for (auto& v : table) v = int8_t(rng.range(-127, 127));
    const std::vector<int64_t> ids(rows, 2), tids(rows, 2), pids(rows, 2);  // the last table row
    // guarded copies of everything a chain reads
    Guarded<int32_t> g_acc(acc), g_bias(bias);
    Guarded<int64_t> g_m(rq.m), g_e(rq.e), g_m1(rq1.m), g_e1(rq1.e), g_m2(rq2.m), g_e2(rq2.e);
    Guarded<int64_t> g_ma(ra.m), g_ea(ra.e), g_mb(rb.m), g_eb(rb.e), g_ma2(a2.m), g_ea2(a2.e), g_mb2(b2.m),
        g_eb2(b2.e);
    Guarded<int64_t> g_gb(gb), g_gc(gc), g_gone(gone), g_sign(sign), g_lnb(lnb);
    Guarded<int8_t> g_res(res), g_table(table);
    const RequantC c_rq{g_m.p, g_e.p, 8, rq.c.input_bits}, c_rq1{g_m1.p, g_e1.p, 8, 47}, c_rq2{g_m2.p, g_e2.p, 8, 31};
    const GeluC c_g{g_gb.p, g_gc.p, g_gone.p};
    const ResidualC c_add{{g_ma.p, g_ea.p, 22, 31}, {g_mb.p, g_eb.p, 22, 31}, 22};
    const ResidualC c_add1{{g_ma2.p, g_ea2.p, 16, 31}, {g_mb2.p, g_eb2.p, 16, 31}, 16};
    const LayerNormC c_ln{2, g_sign.p, g_lnb.p};
    const int8_t* tab = g_table.p;
    const std::vector<int8_t> blank(rows * n, kSentinel);
    for (const Impl& isa : isas) {
      const std::string what = "n=" + std::to_string(n) + " rows=" + std::to_string(rows) + " (page end)";
      {
        std::vector<int8_t> ref(blank);
        Guarded<int8_t> got(blank);
        bias_requant_ref(g_acc.p, n, rows, n, g_bias.p, c_rq, ref.data(), n);
        isa.bias_requant(g_acc.p, n, rows, n, g_bias.p, c_rq, got.p, n);
        same(ref, got.get(blank.size()), "bias_requant", isa, what, n);
      }
      {
        std::vector<int8_t> ref(blank);
        Guarded<int8_t> got(blank);
        requant_i32_ref(g_acc.p, n, rows, n, c_rq, ref.data(), n);
        isa.requant_i32(g_acc.p, n, rows, n, c_rq, got.p, n);
        same(ref, got.get(blank.size()), "requant_i32", isa, what, n);
      }
      {
        std::vector<int8_t> ref(blank);
        Guarded<int8_t> got(blank);
        bias_gelu_requant2_ref(g_acc.p, n, rows, n, g_bias.p, c_g, c_rq1, c_rq2, ref.data(), n);
        isa.bias_gelu_requant2(g_acc.p, n, rows, n, g_bias.p, c_g, c_rq1, c_rq2, got.p, n);
        same(ref, got.get(blank.size()), "bias_gelu_requant2", isa, what, n);
      }
      {
        std::vector<int8_t> ref(blank);
        Guarded<int8_t> got(blank);
        bias_residual_ln_requant_ref(g_acc.p, n, rows, n, g_bias.p, g_res.p, n, c_add, c_ln, c_rq, ref.data(), n);
        isa.bias_residual_ln_requant(g_acc.p, n, rows, n, g_bias.p, g_res.p, n, c_add, c_ln, c_rq, got.p, n);
        same(ref, got.get(blank.size()), "bias_residual_ln_requant", isa, what, n);
      }
      {
        std::vector<int8_t> ref(blank);
        Guarded<int8_t> got(blank);
        embed_ref(tab, tab, tab, ids.data(), tids.data(), pids.data(), rows, n, c_add1, c_add1, c_ln, c_rq,
                  ref.data(), n);
        isa.embed(tab, tab, tab, ids.data(), tids.data(), pids.data(), rows, n, c_add1, c_add1, c_ln, c_rq, got.p, n);
        same(ref, got.get(blank.size()), "embed", isa, what, n);
      }
      {
        const SoftmaxC sm = softmax_constants(1e-3);
        std::vector<int32_t> scores(n);
        std::vector<uint8_t> keep(n);
        for (auto& v : scores) v = int32_t(rng.range(-20000, 20000));
        for (auto& v : keep) v = uint8_t(rng.chance(0.8));
        Guarded<int32_t> g_scores(scores);
        Guarded<uint8_t> g_keep(keep);
        const std::vector<uint8_t> pblank(n, 0xA5);
        for (int masked : {0, 1}) {
          std::vector<uint8_t> ref(pblank);
          Guarded<uint8_t> got(pblank);
          softmax_row_ref(g_scores.p, n, masked ? g_keep.p : nullptr, sm, ref.data());
          isa.softmax_row(g_scores.p, n, masked ? g_keep.p : nullptr, sm, got.p);
          same(ref, got.get(pblank.size()), "softmax_row", isa, what, n);
        }
      }
      ++cases;
    }
  }
  g_summary.push_back("every chain with its arrays at page ends: " + std::to_string(cases) + " cases");
}

}  // namespace

int main() {
  const std::vector<Impl> isas = simd_isas();
  printf("ISAs tested against _ref:");
  for (const Impl& isa : isas) printf(" %s", isa.name);
  printf("%s\n", isas.empty() ? " none (this CPU has neither AVX2 nor AVX-512)" : "");
  test_bias_requant(isas);
  test_gelu(isas);
  test_residual_ln(isas);
  test_embed(isas);
  test_softmax(isas);
  test_page_ends(isas);
  for (const std::string& s : g_summary) printf("  %s\n", s.c_str());
  printf("LayerNorm probes with every output in [-120, 120]: %d\n", g_probes_in_range);
  printf("%d comparisons, %d failed\n", g_cases, g_failures);
  return g_failures > 100 ? 100 : g_failures;
}
