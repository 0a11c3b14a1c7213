// Exactness of the int8 GEMMs (kernels.h: INTBERT_DECLARE_GEMM): gemm_ref equals a naive triple loop on
// the unpacked (strided) W, and every ISA path this CPU runs equals gemm_ref, all with integer equality.
//
// Build and run (tests/test_native_gemm.py does this in a temporary directory):
//   g++ -O2 -std=c++17 -pthread -Icsrc csrc/tests/test_gemm.cpp csrc/gemm_*.cpp csrc/cpu_features.cpp -o test_gemm
//   ./test_gemm            (exit status 0: all equal; 1: the first difference is printed)
//
// What it covers, and why:
//   * sizes M, N, K from {1, 2, 3, 5, 7, 15, 16, 17, 31, 33, 63, 64, 65}, every combination (each tail
//     of every blocking: 4-byte K quads, 64-byte AMX K steps, 16-column vectors, 6-row and 32-row blocks),
//     then random triples that add 127, 129, 200, 768, 769 and K = 3072;
//   * int8 A and uint8 A, lda > K, ld_acc > N (columns and rows outside the output must stay untouched);
//   * three W views: row-major [N][K] with a row stride (the weights, K of attention), V^T (stride_n = 1,
//     stride_k = ld) and a generic stride (the scalar fallback of each packer);
//   * the last row of A and of W end at a page followed by an unreadable page, so a kernel that reads a
//     byte past K (a tile load, a 4-byte broadcast) crashes here instead of passing by luck;
//   * extreme values: A = -128 / 127 everywhere, A = 255 (probabilities), W = -128 / 127 / -127..127, and
//     the largest K the caller allows (K * 255 * 128 < 2^31: K = 65793) at the worst sign;
//   * the AVX2 saturation trap: A = 255 with W = 127 / -128 makes u8 x s8 vpmaddubsw pair sums saturate
//     (2 * 255 * 127 = 64770 > 32767); the test first shows that a saturating model gives a different
//     answer on that input, then that gemm_avx2 gives the exact one;
//   * two threads running the same kernels at once (AMX tile state is per thread);
//   * gemm_amx both as the engine calls it (small problems go to gemm_avx512 on the same layout) and
//     as gemm_amx_tiles (csrc/gemm.h: always the tiles), so the tile code meets every size as well.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "gemm.h"
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
    // gemm_amx hands small problems to gemm_avx512; this entry always runs the tiles.
    {"amx_tiles", ISA_AMX, packed_b_bytes_amx, pack_b_amx, gemm_amx_tiles},
};

uint64_t g_state = 0x9E3779B97F4A7C15ull;
uint64_t next_u64() {  // splitmix64: fixed seed, same draws on every run
  uint64_t z = (g_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
int64_t uniform(int64_t lo, int64_t hi) { return lo + int64_t(next_u64() % uint64_t(hi - lo + 1)); }

// `size` bytes whose last byte is the last of a page, followed by a PROT_NONE page.
struct Guarded {
  uint8_t* base = nullptr;
  size_t map = 0;
  uint8_t* p = nullptr;
  explicit Guarded(size_t size) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    const size_t data = (size + page - 1) / page * page;
    map = data + page;
    base = static_cast<uint8_t*>(mmap(nullptr, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (base == MAP_FAILED) {
      perror("mmap");
      exit(2);
    }
    mprotect(base + data, page, PROT_NONE);
    p = base + data - size;
  }
  ~Guarded() { munmap(base, map); }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
};

enum Fill { RANDOM, A_MIN, A_MAX, W_MIN, W_MAX, W_ALT };

struct Case {
  int64_t m, n, k;
  int a_unsigned;
  int view;       // 0: W[j][t] at j*ld + t; 1: V^T, W[j][t] at t*ld + j; 2: generic strides
  int64_t lda_extra;
  int fill_a, fill_w;
};

int64_t g_checks = 0;

[[noreturn]] void fail(const char* what, const Case& c, const char* isa, int64_t r, int64_t j, int64_t want,
                       int64_t got) {
  fprintf(stderr,
          "FAIL %s [%s]: m=%lld n=%lld k=%lld a_unsigned=%d view=%d lda_extra=%lld fill_a=%d fill_w=%d at "
          "(%lld, %lld): want %lld got %lld\n",
          what, isa, (long long)c.m, (long long)c.n, (long long)c.k, c.a_unsigned, c.view, (long long)c.lda_extra,
          c.fill_a, c.fill_w, (long long)r, (long long)j, (long long)want, (long long)got);
  exit(1);
}

const int32_t kSentinel = int32_t(0xDEADBEEF);

// Runs one case through the naive loop, gemm_ref and every ISA up to `top`.
void run_case(const Case& c, Isa top) {
  const int64_t m = c.m, n = c.n, k = c.k;
  const int64_t lda = k + c.lda_extra;
  // W view: element (j, t) at w[j * sn + t * sk]; the buffer ends exactly after the last element.
  int64_t sn, sk, wsize;
  if (c.view == 0) {
    sn = k + (c.lda_extra ? 3 : 0), sk = 1;
  } else if (c.view == 1) {
    sn = 1, sk = n + (c.lda_extra ? 5 : 0);
  } else {
    sn = 2 * k + 1, sk = 2;
  }
  wsize = (n - 1) * sn + (k - 1) * sk + 1;
  Guarded wb{size_t(wsize)};
  int8_t* w = reinterpret_cast<int8_t*>(wb.p);
  for (int64_t i = 0; i < wsize; ++i) {
    int8_t v = int8_t(uniform(-128, 127));
    if (c.fill_w == W_MIN) v = -128;
    if (c.fill_w == W_MAX) v = 127;
    if (c.fill_w == W_ALT) v = (i & 1) ? -127 : 127;
    w[i] = v;
  }
  const int64_t asize = m > 0 ? (m - 1) * lda + k : 1;
  Guarded ab{size_t(asize)};
  uint8_t* a = ab.p;
  for (int64_t i = 0; i < asize; ++i) {
    int v = int(uniform(0, 255));
    if (c.fill_a == A_MIN) v = c.a_unsigned ? 0 : 0x80;     // uint8 0 / int8 -128
    if (c.fill_a == A_MAX) v = c.a_unsigned ? 255 : 0x7F;   // uint8 255 / int8 127
    a[i] = uint8_t(v);
  }
  // Naive triple loop on the view (int64: the definition of the definition).
  std::vector<int64_t> want(size_t(m * n));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) {
      int64_t s = 0;
      for (int64_t t = 0; t < k; ++t) {
        const int64_t av = c.a_unsigned ? int64_t(a[r * lda + t]) : int64_t(int8_t(a[r * lda + t]));
        s += av * w[j * sn + t * sk];
      }
      want[size_t(r * n + j)] = s;
    }
  const int64_t ld_acc = n + 7;
  std::vector<int32_t> acc(size_t((m + 1) * ld_acc));
  for (const IsaGemm& isa : kIsas) {
    if (isa.level > top) continue;
    const size_t bytes = isa.bytes(n, k);
    void* packed = nullptr;
    if (posix_memalign(&packed, 64, bytes + 64) != 0) exit(2);
    memset(packed, 0x5A, bytes + 64);  // garbage: the packer must write every byte the kernel reads
    isa.pack(w, n, k, sn, sk, packed);
    for (size_t i = bytes; i < bytes + 64; ++i)
      if (static_cast<uint8_t*>(packed)[i] != 0x5A) fail("pack wrote past packed_b_bytes", c, isa.name, 0, 0, 0, 0);
    for (auto& v : acc) v = kSentinel;
    isa.gemm(packed, n, k, a, c.a_unsigned, lda, m, acc.data(), ld_acc);
    free(packed);
    for (int64_t r = 0; r <= m; ++r)
      for (int64_t j = 0; j < ld_acc; ++j) {
        const int64_t got = acc[size_t(r * ld_acc + j)];
        if (r < m && j < n) {
          if (got != want[size_t(r * n + j)]) fail("value", c, isa.name, r, j, want[size_t(r * n + j)], got);
        } else if (got != kSentinel) {
          fail("wrote outside the output", c, isa.name, r, j, kSentinel, got);
        }
      }
    ++g_checks;
  }
}

const int64_t kSmall[] = {1, 2, 3, 5, 7, 15, 16, 17, 31, 33, 63, 64, 65};
const int64_t kAll[] = {1, 2, 3, 5, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 200, 768, 769};

// A pair of uint8 255s times weights 127 summed into a saturating int16, as vpmaddubsw would, then the
// int16 pair sums added in int32: the wrong answer an unwidened AVX2 kernel would give.
int64_t maddubs_model(const uint8_t* a, const int8_t* w, int64_t k) {
  int64_t s = 0;
  for (int64_t t = 0; t < k; t += 2) {
    int64_t p = int64_t(a[t]) * w[t] + (t + 1 < k ? int64_t(a[t + 1]) * w[t + 1] : 0);
    p = p > 32767 ? 32767 : (p < -32768 ? -32768 : p);
    s += p;
  }
  return s;
}

void test_avx2_saturation_trap(Isa top) {
  if (top < ISA_AVX2) {
    printf("skip: AVX2 saturation trap (no AVX2 here)\n");
    return;
  }
  const int64_t n = 3, k = 64;
  std::vector<uint8_t> a(size_t(k), 255);
  std::vector<int8_t> w(size_t(n * k));
  for (int64_t t = 0; t < k; ++t) {
    w[size_t(0 * k + t)] = 127;
    w[size_t(1 * k + t)] = -128;
    w[size_t(2 * k + t)] = (t & 2) ? 127 : -128;  // pairs of 127 and pairs of -128
  }
  for (int64_t j = 0; j < n; ++j) {
    int64_t exact = 0;
    for (int64_t t = 0; t < k; ++t) exact += 255 * w[size_t(j * k + t)];
    if (maddubs_model(a.data(), w.data() + j * k, k) == exact) {
      fprintf(stderr, "FAIL: the saturation input does not saturate (column %lld)\n", (long long)j);
      exit(1);
    }
  }
  void* packed = nullptr;
  if (posix_memalign(&packed, 64, packed_b_bytes_avx2(n, k)) != 0) exit(2);
  pack_b_avx2(w.data(), n, k, k, 1, packed);
  int32_t out[3];
  gemm_avx2(packed, n, k, a.data(), 1, k, 1, out, n);
  free(packed);
  for (int64_t j = 0; j < n; ++j) {
    int64_t exact = 0;
    for (int64_t t = 0; t < k; ++t) exact += 255 * w[size_t(j * k + t)];
    if (out[j] != exact) {
      fprintf(stderr, "FAIL: gemm_avx2 column %lld: want %lld got %d (saturating model: %lld)\n", (long long)j,
              (long long)exact, out[j], (long long)maddubs_model(a.data(), w.data() + j * k, k));
      exit(1);
    }
  }
  printf("ok: AVX2 exact where u8 x s8 vpmaddubsw saturates (255 x 127 pairs: %d, saturating model %lld)\n", out[0],
         (long long)maddubs_model(a.data(), w.data(), k));
}

// Two threads at once on every ISA: AMX tile configuration is per thread, and the kernels keep no
// state between calls.
void test_threads(Isa top) {
  bool ok[2] = {true, true};
  auto body = [&](int id) {
    const int64_t m = 45 + id, n = 77, k = 130;
    std::vector<int8_t> w(size_t(n * k));
    std::vector<uint8_t> a(size_t(m * k));
    uint64_t s = 1234 + id;
    for (auto& v : w) v = int8_t((s = s * 6364136223846793005ull + 1442695040888963407ull) >> 56);
    for (auto& v : a) v = uint8_t((s = s * 6364136223846793005ull + 1442695040888963407ull) >> 56);
    std::vector<int32_t> want(size_t(m * n)), got(size_t(m * n));
    std::vector<uint8_t> ref_packed(packed_b_bytes_ref(n, k));
    pack_b_ref(w.data(), n, k, k, 1, ref_packed.data());
    for (int rep = 0; rep < 20; ++rep)
      for (const IsaGemm& isa : kIsas) {
        if (isa.level > top || isa.level == ISA_SCALAR) continue;
        const int au = (rep + id) & 1;
        gemm_ref(ref_packed.data(), n, k, a.data(), au, k, m, want.data(), n);
        void* packed = nullptr;
        if (posix_memalign(&packed, 64, isa.bytes(n, k)) != 0) exit(2);
        isa.pack(w.data(), n, k, k, 1, packed);
        isa.gemm(packed, n, k, a.data(), au, k, m, got.data(), n);
        free(packed);
        if (want != got) ok[id] = false;
      }
  };
  std::thread t0(body, 0), t1(body, 1);
  t0.join();
  t1.join();
  if (!ok[0] || !ok[1]) {
    fprintf(stderr, "FAIL: concurrent threads differ from gemm_ref\n");
    exit(1);
  }
  printf("ok: two threads at once\n");
}

}  // namespace

int main(int argc, char** argv) {
  Isa top = detected_isa();
  if (argc > 1) top = Isa(atoi(argv[1]) < top ? atoi(argv[1]) : top);  // optional cap, e.g. 1 = up to AVX2
  printf("ISA paths tested: ");
  for (const IsaGemm& isa : kIsas)
    if (isa.level <= top) printf("%s ", isa.name);
  printf("\n");

  // 1. Every combination of small sizes, both A types, three W views.
  for (int64_t m : kSmall)
    for (int64_t n : kSmall)
      for (int64_t k : kSmall) {
        const int au = int((m + n + k) & 1);
        const int view = int((m * 7 + n * 3 + k) % 3);
        run_case({m, n, k, au, view, (m + k) % 5 == 0 ? 9 : 0, RANDOM, RANDOM}, top);
        run_case({m, n, k, 1 - au, (view + 1) % 3, 0, RANDOM, RANDOM}, top);
      }
  printf("ok: small sizes, every combination (%lld checks)\n", (long long)g_checks);

  // 2. Random triples over every size (and K = 3072), capped so the naive loop stays fast.
  const int64_t nall = int64_t(sizeof kAll / sizeof kAll[0]);
  for (int i = 0; i < 400; ++i) {
    const int64_t m = kAll[uniform(0, nall - 1)], n = kAll[uniform(0, nall - 1)];
    const int64_t k = (i % 10 == 0) ? 3072 : kAll[uniform(0, nall - 1)];
    if (m * n * k > 60000000) continue;
    run_case({m, n, k, int(uniform(0, 1)), int(uniform(0, 2)), uniform(0, 1) ? uniform(1, 70) : 0, RANDOM, RANDOM},
             top);
  }
  // The shapes the engine runs: a BERT row block, QK^T and PV of a head (d = 64, 32, 15).
  const int64_t shapes[][4] = {{64, 768, 768, 0},  {33, 3072, 768, 0}, {17, 768, 3072, 0}, {64, 129, 64, 0},
                               {129, 129, 32, 0},  {31, 200, 15, 0},   {64, 64, 129, 1},   {64, 32, 512, 1},
                               {5, 15, 200, 1},    {128, 384, 384, 0}, {1, 1, 1, 1},       {0, 16, 16, 0}};
  for (const auto& s : shapes) {
    for (int view = 0; view < 3; ++view) run_case({s[0], s[1], s[2], int(s[3]), view, 0, RANDOM, RANDOM}, top);
    run_case({s[0], s[1], s[2], int(s[3]), s[3] ? 1 : 0, 13, RANDOM, RANDOM}, top);
  }
  printf("ok: random and engine shapes incl. 127, 129, 200, 768, 769, K=3072, lda > K (%lld checks)\n",
         (long long)g_checks);

  // 3. Extreme values.
  const int fills_a[] = {A_MIN, A_MAX, RANDOM};
  const int fills_w[] = {W_MIN, W_MAX, W_ALT, RANDOM};
  const int64_t ext[][3] = {{7, 33, 3072}, {33, 17, 769}, {2, 65, 65}, {40, 40, 200}};
  for (const auto& s : ext)
    for (int fa : fills_a)
      for (int fw : fills_w)
        for (int au = 0; au < 2; ++au) run_case({s[0], s[1], s[2], au, (fa + fw) % 3, 0, fa, fw}, top);
  // The largest K the caller allows: 65793 * 255 * 128 = 2147483520 < 2^31. The worst flipped sum
  // ((127 + 128) * -128 per term) reaches it exactly; uint8 255 x -128 likewise.
  for (int au = 0; au < 2; ++au) {
    run_case({3, 17, 65793, au, 0, 0, A_MAX, W_MIN}, top);
    run_case({2, 18, 65793, au, 1, 0, A_MAX, W_MAX}, top);
    run_case({3, 19, 65793, au, 0, 0, A_MIN, W_MIN}, top);
  }
  printf("ok: extreme values (-128/127 activations, 255 probabilities, weights -128/127/+-127, K=65793) "
         "(%lld checks)\n",
         (long long)g_checks);

  test_avx2_saturation_trap(top);
  test_threads(top);
  printf("PASS\n");
  return 0;
}
