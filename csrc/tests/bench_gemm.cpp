// Single-thread GOPS of the int8 GEMMs per ISA and shape (a benchmark, not a test: it asserts nothing).
//
//   g++ -O3 -std=c++17 -pthread -Icsrc csrc/tests/bench_gemm.cpp csrc/gemm_*.cpp csrc/cpu_features.cpp -o bench_gemm
//   taskset -c 0 ./bench_gemm [max_isa [fast [block]]]
//   (max_isa: 0 scalar .. 3 amx, default: what this CPU runs; fast: skip the scalar path; block: rows
//   per gemm call, default 64)
//
// Linear shapes are timed the way engine.cpp calls the kernels: M rows split into row blocks of
// `block` rows (64, as rows_per_task), each gemm writing a block-sized int32 buffer reused across blocks.
// Attention shapes time one head: QK^T (M = N = L, K = d, int8 A) and PV (M = L, N = d, K = L,
// uint8 A), both with and without packing the head's K / V^T, which the engine does per call.
// GOPS = 2 * M * N * K / seconds of thread CPU time (best_seconds).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <vector>

#include "kernels.h"

using namespace intbert;

namespace {

struct IsaGemm {
  const char* name;
  Isa level;
  size_t (*bytes)(int64_t, int64_t);
  void (*pack)(const int8_t*, int64_t, int64_t, int64_t, int64_t, void*);
  void (*gemm)(const void*, int64_t, int64_t, const void*, int, int64_t, int64_t, int32_t*, int64_t);
};

const IsaGemm kIsas[] = {
    {"ref", ISA_SCALAR, packed_b_bytes_ref, pack_b_ref, gemm_ref},
    {"avx2", ISA_AVX2, packed_b_bytes_avx2, pack_b_avx2, gemm_avx2},
    {"avx512", ISA_AVX512, packed_b_bytes_avx512, pack_b_avx512, gemm_avx512},
    {"amx", ISA_AMX, packed_b_bytes_amx, pack_b_amx, gemm_amx},
};

// Thread CPU time: the machines this runs on are shared, and time spent descheduled is not the kernel's.
double now() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

void* aligned(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 64, bytes < 64 ? 64 : bytes) != 0) exit(2);
  return p;
}

// Seconds per call of f: the best of 10 batches of >= 20 ms. The batch size is fixed first, so the
// clock (a system call for thread CPU time, about 0.3 us) is read twice per batch, not per call.
template <class F>
double best_seconds(F f, bool slow) {
  f();  // warm-up
  int64_t reps = 1;
  for (;;) {
    const double t0 = now();
    for (int64_t i = 0; i < reps; ++i) f();
    if (now() - t0 >= (slow ? 0.005 : 0.02)) break;
    reps *= 2;
  }
  double best = 1e30;
  for (int r = 0; r < (slow ? 1 : 10); ++r) {
    const double t0 = now();
    for (int64_t i = 0; i < reps; ++i) f();
    const double t = (now() - t0) / double(reps);
    if (t < best) best = t;
  }
  return best;
}

void fill(void* p, size_t n, uint64_t seed) {
  uint8_t* b = static_cast<uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = uint8_t((seed = seed * 6364136223846793005ull + 1442695040888963407ull) >> 56);
}

// A linear: x [m, k] int8 @ W^T, W [n, k], in row blocks of `block`.
void linear(const IsaGemm& isa, const char* label, int64_t m, int64_t k, int64_t n, int64_t block) {
  std::vector<int8_t> w(size_t(n * k)), x(size_t(m * k));
  fill(w.data(), w.size(), 1);
  fill(x.data(), x.size(), 2);
  void* packed = aligned(isa.bytes(n, k));
  isa.pack(w.data(), n, k, k, 1, packed);
  int32_t* acc = static_cast<int32_t*>(aligned(size_t(block * n) * 4));
  const double ops = 2.0 * double(m) * double(n) * double(k);
  const double s = best_seconds(
      [&] {
        for (int64_t r0 = 0; r0 < m; r0 += block)
          isa.gemm(packed, n, k, x.data() + r0 * k, 0, k, m - r0 < block ? m - r0 : block, acc, n);
      },
      isa.level == ISA_SCALAR);
  printf("%-7s %-28s M=%-5lld K=%-5lld N=%-5lld %9.1f GOPS  %9.3f ms\n", isa.name, label, (long long)m, (long long)k,
         (long long)n, ops / s * 1e-9, s * 1e3);
  free(packed);
  free(acc);
}

// One attention head over L tokens, head size d; q, k, v rows of ld = 768 bytes as the engine has them.
void attention(const IsaGemm& isa, int64_t L, int64_t d) {
  const int64_t ld = 768;
  std::vector<int8_t> q(size_t(L * ld)), kk(size_t(L * ld)), v(size_t(L * ld));
  std::vector<uint8_t> p(size_t(L * L));
  fill(q.data(), q.size(), 3);
  fill(kk.data(), kk.size(), 4);
  fill(v.data(), v.size(), 5);
  fill(p.data(), p.size(), 6);
  void* kp = aligned(isa.bytes(L, d));
  void* vp = aligned(isa.bytes(d, L));
  int32_t* scores = static_cast<int32_t*>(aligned(size_t(L * L) * 4));
  int32_t* ctx = static_cast<int32_t*>(aligned(size_t(L * d) * 4));
  isa.pack(kk.data(), L, d, ld, 1, kp);
  isa.pack(v.data(), d, L, 1, ld, vp);
  const double ops = 2.0 * double(L) * double(L) * double(d);
  const bool slow = isa.level == ISA_SCALAR;
  const double qk = best_seconds([&] { isa.gemm(kp, L, d, q.data(), 0, ld, L, scores, L); }, slow);
  const double pv = best_seconds([&] { isa.gemm(vp, d, L, p.data(), 1, L, L, ctx, d); }, slow);
  const double qk_pack = best_seconds(
      [&] {
        isa.pack(kk.data(), L, d, ld, 1, kp);
        isa.gemm(kp, L, d, q.data(), 0, ld, L, scores, L);
      },
      slow);
  const double pv_pack = best_seconds(
      [&] {
        isa.pack(v.data(), d, L, 1, ld, vp);
        isa.gemm(vp, d, L, p.data(), 1, L, L, ctx, d);
      },
      slow);
  printf("%-7s attention L=%-4lld d=%-3lld  QK^T %8.1f GOPS (%8.1f with pack)  PV %8.1f GOPS (%8.1f with pack)  "
         "%8.2f us/head with packs\n",
         isa.name, (long long)L, (long long)d, ops / qk * 1e-9, ops / qk_pack * 1e-9, ops / pv * 1e-9,
         ops / pv_pack * 1e-9, (qk_pack + pv_pack) * 1e6);
  free(kp);
  free(vp);
  free(scores);
  free(ctx);
}

}  // namespace

int main(int argc, char** argv) {
  Isa top = detected_isa();
  if (argc > 1 && atoi(argv[1]) < top) top = Isa(atoi(argv[1]));
  const bool only_fast = argc > 2 && strcmp(argv[2], "fast") == 0;
  const int64_t block = argc > 3 ? atoll(argv[3]) : 64;  // rows per gemm call (engine.cpp: 64)
  struct Shape {
    const char* label;
    int64_t m, k, n;
  } shapes[] = {
      {"BERT-base QKV/out (B=8)", 1024, 768, 768}, {"BERT-base FFN up (B=8)", 1024, 768, 3072},
      {"BERT-base FFN down (B=8)", 1024, 3072, 768}, {"BERT-base QKV/out (B=1)", 128, 768, 768},
      {"BERT-base FFN up (B=1)", 128, 768, 3072},   {"BERT-base FFN down (B=1)", 128, 3072, 768},
      {"BERT-base QKV/out (16 tok)", 16, 768, 768}, {"BERT-base FFN up (16 tok)", 16, 768, 3072},
      {"BERT-base FFN down (16 tok)", 16, 3072, 768}, {"MiniLM QKV/out", 1024, 384, 384},
      {"MiniLM FFN up", 1024, 384, 1536},           {"MiniLM FFN down", 1024, 1536, 384},
  };
  for (const IsaGemm& isa : kIsas) {
    if (isa.level > top || (only_fast && isa.level == ISA_SCALAR)) continue;
    for (const Shape& s : shapes) {
      if (isa.level == ISA_SCALAR && s.m > 128) continue;  // minutes at scalar speed; the shape is the same
      linear(isa, s.label, s.m, s.k, s.n, block);
    }
    const int64_t lens[] = {1, 8, 32, 128, 512};
    for (int64_t L : lens) attention(isa, L, 64);
    attention(isa, 128, 32);
    attention(isa, 128, 15);
    printf("\n");
  }
  return 0;
}
