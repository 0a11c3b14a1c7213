// ns per element of every chain on every ISA this CPU runs, at BERT-base sizes.
//
//   g++ -O3 -std=c++17 -Icsrc csrc/tests/bench_chains.cpp csrc/chains_*.cpp -o bench_chains && ./bench_chains
//
// The engine runs a chain as the epilogue of a GEMM row block (16-64 rows, engine.cpp) while the
// block is in cache, so each measurement calls the chain on one 64-row tile (its accumulator
// L2-resident: 64 x 3072 x 4 = 768 KiB), 16 times per pass = 1024 rows. Softmax: rows of 128 scores,
// 1024 per pass (with and without a mask). Time: the best of 7 passes of >= 50 ms each, in thread CPU
// time (CLOCK_THREAD_CPUTIME_ID: time spent descheduled on a busy machine is not counted; a sibling
// hyperthread's load still is); the output is per element of the chain's output.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "kernels.h"

using namespace intbert;

namespace {

struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int64_t range(int64_t lo, int64_t hi) { return lo + int64_t(next() % uint64_t(hi - lo + 1)); }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  double normal() { return sqrt(-2.0 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform()); }
};

void dyadic(double ratio, int64_t* m, int64_t* e) {
  int exp;
  const double mant = frexp(ratio, &exp);
  *m = int64_t(floor(mant * 2147483648.0 + 0.5)), *e = 31 - exp;
  if (*m == (int64_t(1) << 31)) *m >>= 1, *e -= 1;
}

struct Rq {
  std::vector<int64_t> m, e;
  RequantC c;
  Rq(int64_t n, double ratio, int bits, int input_bits, Rng& rng) : m(n), e(n) {
    for (int64_t i = 0; i < n; ++i) dyadic(ratio * (0.5 + rng.uniform()), &m[i], &e[i]);
    c = RequantC{m.data(), e.data(), bits, input_bits};
  }
};

double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

// Best ns per element over 7 passes of at least 50 ms.
double time_ns(const std::function<void()>& pass, double elements) {
  pass();  // warm
  double best = 1e30;
  for (int k = 0; k < 7; ++k) {
    int reps = 0;
    const double t0 = cpu_seconds();
    double dt = 0;
    do {
      pass();
      ++reps;
      dt = cpu_seconds() - t0;
    } while (dt < 0.05);
    best = std::min(best, dt * 1e9 / (reps * elements));
  }
  return best;
}

struct Impl {
  const char* name;
  void (*bias_requant)(INTBERT_BIAS_REQUANT_ARGS);
  void (*bias_gelu_requant2)(INTBERT_BIAS_GELU_REQUANT2_ARGS);
  void (*bias_residual_ln_requant)(INTBERT_BIAS_RESIDUAL_LN_REQUANT_ARGS);
  void (*requant_i32)(INTBERT_REQUANT_I32_ARGS);
  void (*embed)(INTBERT_EMBED_ARGS);
  void (*softmax_row)(INTBERT_SOFTMAX_ROW_ARGS);
};
#define IMPL(sfx) \
  Impl { #sfx, bias_requant_##sfx, bias_gelu_requant2_##sfx, bias_residual_ln_requant_##sfx, requant_i32_##sfx, embed_##sfx, softmax_row_##sfx }

}  // namespace

int main() {
  __builtin_cpu_init();
  std::vector<Impl> impls = {IMPL(ref)};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    impls.push_back(IMPL(avx2));
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
    impls.push_back(IMPL(avx512));

  Rng rng{42};
  const int64_t H = 768, F = 3072, tile = 64, tiles = 16, L = 128, srows = 1024;
  // accumulators of a 64-row tile (GEMM sums of ~768 int8 products), int8 residual, biases
  std::vector<int32_t> acc_h(tile * H), acc_f(tile * F), bias_h(H), bias_f(F);
  for (auto& v : acc_h) v = int32_t(rng.normal() * 20000);
  for (auto& v : acc_f) v = int32_t(rng.normal() * 20000);
  for (auto& v : bias_h) v = int32_t(rng.range(-20000, 20000));
  for (auto& v : bias_f) v = int32_t(rng.range(-20000, 20000));
  std::vector<int8_t> res(tile * H), out(tile * F);
  for (auto& v : res) v = int8_t(rng.range(-127, 127));
  // constants: realistic ratios
  Rq rq_h(H, 1.0 / 4000, 8, 31, rng), rq_f(F, 1.0 / 4000, 8, 31, rng);
  std::vector<int64_t> gb(F), gc(F), gone(F);
  for (int64_t c = 0; c < F; ++c) {
    const double S = 3e-4 * (0.5 + rng.uniform()), s = S / 1.4142;
    gb[c] = int64_t(floor(-1.769 / s)), gc[c] = int64_t(floor((1.0 / -0.2888) / (s * s)));
    gone[c] = int64_t(floor(1.0 / (-0.2888 * s * s * 16384.0)));
  }
  const GeluC g{gb.data(), gc.data(), gone.data()};
  Rq rq1(F, 1.0 / 3e7, 8, 47, rng), rq2(F, 1.0, 8, 31, rng);
  Rq ra(H, 0.5, 22, 31, rng), rb(H, 2000.0, 22, 31, rng);
  const ResidualC add{ra.c, rb.c, 22};
  std::vector<int64_t> sign(H), lnb(H);
  for (int64_t c = 0; c < H; ++c) sign[c] = rng.uniform() < 0.1 ? -1 : 1, lnb[c] = rng.range(-(1 << 28), 1 << 28);
  const LayerNormC ln{8, sign.data(), lnb.data()};
  Rq rq_ln(H, 1.0 / (1 << 24), 8, 31, rng);
  // embeddings: 1024 tokens of BERT-base tables (vocab 30522)
  const int64_t vocab = 30522, positions = 512;
  std::vector<int8_t> word(vocab * H), tt(2 * H), pos(positions * H), eout(srows * H);
  for (auto* t : {&word, &tt, &pos})
    for (auto& v : *t) v = int8_t(rng.range(-127, 127));
  std::vector<int64_t> ids(srows), tids(srows), pids(srows);
  for (int64_t r = 0; r < srows; ++r) ids[r] = rng.range(0, vocab - 1), tids[r] = r % 2, pids[r] = r % L;
  Rq e1(H, 64.0, 16, 31, rng), e2(H, 64.0, 16, 31, rng), e3(H, 1.0, 16, 31, rng), e4(H, 64.0, 16, 31, rng);
  const ResidualC add1{e1.c, e2.c, 16}, add2{e3.c, e4.c, 16};
  const LayerNormC ln_e{0, sign.data(), lnb.data()};
  // softmax: scores at scale ~1e-3 (|x| ~ 5)
  SoftmaxC sm;
  {
    const double s = 1e-3;
    dyadic(0.35815147 * s * s * 32768.0, &sm.m, &sm.e);
    sm.pre_shift = 0, sm.x0 = int64_t(floor(-0.6931 / s)), sm.zm = ((int64_t(1) << 33) - sm.x0 - 1) / -sm.x0;
    sm.b = int64_t(floor((0.96963238 / 0.35815147) / s)), sm.c = int64_t(floor((1.0 / 0.35815147) / (s * s)));
    sm.output_bit = 8;
  }
  std::vector<int32_t> scores(srows * L);
  for (auto& v : scores) v = int32_t(rng.normal() * 3000);
  std::vector<uint8_t> keep(srows * L), probs(srows * L);
  for (int64_t r = 0; r < srows; ++r)
    for (int64_t i = 0; i < L; ++i) keep[r * L + i] = i < L - (r % 40);  // padded keys at the end

  printf("ns per output element (best of 7, thread CPU time), one thread; 64-row tiles x 16 = 1024 rows\n");
  printf("%-38s", "chain");
  for (const Impl& im : impls) printf("%10s", im.name);
  printf("\n");
  struct Row {
    const char* name;
    double elements;
    std::function<void(const Impl&)> run;
  };
  const std::vector<Row> rows = {
      {"bias_requant 1024x768", double(tile * tiles * H),
       [&](const Impl& im) {
         for (int t = 0; t < tiles; ++t) im.bias_requant(acc_h.data(), H, tile, H, bias_h.data(), rq_h.c, out.data(), H);
       }},
      {"bias_requant 1024x3072", double(tile * tiles * F),
       [&](const Impl& im) {
         for (int t = 0; t < tiles; ++t) im.bias_requant(acc_f.data(), F, tile, F, bias_f.data(), rq_f.c, out.data(), F);
       }},
      {"requant_i32 1024x768", double(tile * tiles * H),
       [&](const Impl& im) {
         for (int t = 0; t < tiles; ++t) im.requant_i32(acc_h.data(), H, tile, H, rq_h.c, out.data(), H);
       }},
      {"bias_gelu_requant2 1024x3072", double(tile * tiles * F),
       [&](const Impl& im) {
         for (int t = 0; t < tiles; ++t)
           im.bias_gelu_requant2(acc_f.data(), F, tile, F, bias_f.data(), g, rq1.c, rq2.c, out.data(), F);
       }},
      {"bias_residual_ln_requant 1024x768", double(tile * tiles * H),
       [&](const Impl& im) {
         for (int t = 0; t < tiles; ++t)
           im.bias_residual_ln_requant(acc_h.data(), H, tile, H, bias_h.data(), res.data(), H, add, ln, rq_ln.c,
                                       out.data(), H);
       }},
      {"embed 1024x768", double(srows * H),
       [&](const Impl& im) {
         im.embed(word.data(), tt.data(), pos.data(), ids.data(), tids.data(), pids.data(), srows, H, add1, add2, ln_e,
                  rq_ln.c, eout.data(), H);
       }},
      {"softmax_row 1024 x L=128", double(srows * L),
       [&](const Impl& im) {
         for (int64_t r = 0; r < srows; ++r) im.softmax_row(scores.data() + r * L, L, nullptr, sm, probs.data() + r * L);
       }},
      {"softmax_row 1024 x L=128, masked", double(srows * L),
       [&](const Impl& im) {
         for (int64_t r = 0; r < srows; ++r)
           im.softmax_row(scores.data() + r * L, L, keep.data() + r * L, sm, probs.data() + r * L);
       }},
  };
  for (const Row& row : rows) {
    printf("%-38s", row.name);
    for (const Impl& im : impls) printf("%10.3f", time_ns([&] { row.run(im); }, row.elements));
    printf("\n");
    fflush(stdout);
  }
  return 0;
}
