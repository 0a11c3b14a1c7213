// Drivers of the native engine (engine.h): the ISA's kernels, called on row blocks across the pool.
#include "engine.h"

#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <new>

#include "threadpool.h"

namespace intbert {
namespace {

// One ISA's kernels. AMX has its own GEMM and uses the AVX-512 chains.
struct Kernels {
  size_t (*packed_b_bytes)(int64_t, int64_t);
  void (*pack_b)(const int8_t*, int64_t, int64_t, int64_t, int64_t, void*);
  void (*gemm)(const void*, int64_t, int64_t, const void*, int, int64_t, int64_t, int32_t*, int64_t);
  void (*bias_requant)(INTBERT_BIAS_REQUANT_ARGS);
  void (*bias_gelu_requant2)(INTBERT_BIAS_GELU_REQUANT2_ARGS);
  void (*bias_residual_ln_requant)(INTBERT_BIAS_RESIDUAL_LN_REQUANT_ARGS);
  void (*requant_i32)(INTBERT_REQUANT_I32_ARGS);
  void (*embed)(INTBERT_EMBED_ARGS);
  void (*softmax_row)(INTBERT_SOFTMAX_ROW_ARGS);
};

#define INTBERT_KERNELS(g, c)                                                                          \
  Kernels {                                                                                            \
    packed_b_bytes_##g, pack_b_##g, gemm_##g, bias_requant_##c, bias_gelu_requant2_##c,                \
        bias_residual_ln_requant_##c, requant_i32_##c, embed_##c, softmax_row_##c                      \
  }

const Kernels& kernels(Isa isa) {
  static const Kernels table[] = {INTBERT_KERNELS(ref, ref), INTBERT_KERNELS(avx2, avx2),
                                  INTBERT_KERNELS(avx512, avx512), INTBERT_KERNELS(amx, avx512)};
  return table[isa];
}

Isa initial_isa() {
  Isa isa = detected_isa();
  // INTBERT_ISA=scalar|avx2|avx512|amx forces a lower level for the whole process (tests, bisecting).
  if (const char* env = getenv("INTBERT_ISA")) {
    const char* names[] = {"scalar", "avx2", "avx512", "amx"};
    for (int i = 0; i < 4; ++i)
      if (strcmp(env, names[i]) == 0 && i < isa) isa = Isa(i);
  }
  return isa;
}

std::atomic<int> g_isa{initial_isa()};

// Per-thread scratch, grown on demand and kept (no allocation per call once warm).
struct Scratch {
  void* p = nullptr;
  size_t size = 0;
  void* get(size_t bytes) {
    if (bytes > size) {
      free(p);
      size = (bytes + 4095) & ~size_t(4095);
      if (posix_memalign(&p, 64, size) != 0) {
        p = nullptr;
        size = 0;
        throw std::bad_alloc();
      }
    }
    return p;
  }
  ~Scratch() { free(p); }
};

thread_local Scratch t_acc, t_packed_k, t_packed_v, t_probs;

// Rows per task: blocks of 64 keep the int32 accumulator of an FFN row block (64 x 3072 x 4 =
// 768 KiB) in L2 while its epilogue runs; fewer rows when that leaves a thread idle.
int64_t rows_per_task(int64_t m) {
  const int64_t threads = ThreadPool::instance().threads();
  int64_t rows = 64;
  while (rows > 16 && (m + rows - 1) / rows < 2 * threads) rows /= 2;
  return rows;
}

// fn(r0, rows) on blocks of rows_per_task(m) rows, across the pool.
template <class Fn>
void for_row_blocks(int64_t m, Fn fn) {
  const int64_t rows = rows_per_task(m);
  ThreadPool::instance().parallel_for((m + rows - 1) / rows, [&](int64_t t) {
    const int64_t r0 = t * rows;
    fn(r0, std::min(rows, m - r0));
  });
}

// Runs epilogue(r0, rows, acc, ld_acc) on GEMM row blocks of x @ W^T with whole rows (all parts of
// the weight), each block still in cache: for row-wise chains (LayerNorm).
template <class Epilogue>
void gemm_rows(const PackedWeight& w, const int8_t* x, int64_t m, int64_t lda, Epilogue epilogue) {
  const Kernels& kn = kernels(w.isa);
  for_row_blocks(m, [&](int64_t r0, int64_t r) {
    int32_t* acc = static_cast<int32_t*>(t_acc.get(size_t(r) * w.n * sizeof(int32_t)));
    for (int64_t p = 0; p < w.parts; ++p) {
      const int64_t c0 = p * w.chunk;
      kn.gemm(w.data[p], std::min(w.chunk, w.n - c0), w.k, x + r0 * lda, 0, lda, r, acc + c0, w.n);
    }
    epilogue(r0, r, acc, w.n);
  });
}

// Runs epilogue(r0, rows, c0, cols, acc, ld_acc) on (row block, column part) tiles, part-major, so a
// thread's consecutive tasks reuse the part of W in its L2: for elementwise chains.
template <class Epilogue>
void gemm_tiles(const PackedWeight& w, const int8_t* x, int64_t m, int64_t lda, Epilogue epilogue) {
  const Kernels& kn = kernels(w.isa);
  const int64_t rows = rows_per_task(m), blocks = (m + rows - 1) / rows;
  ThreadPool::instance().parallel_for(blocks * w.parts, [&](int64_t t) {
    const int64_t p = t / blocks, r0 = (t % blocks) * rows, r = std::min(rows, m - r0);
    const int64_t c0 = p * w.chunk, cols = std::min(w.chunk, w.n - c0);
    int32_t* acc = static_cast<int32_t*>(t_acc.get(size_t(r) * cols * sizeof(int32_t)));
    kn.gemm(w.data[p], cols, w.k, x + r0 * lda, 0, lda, r, acc, cols);
    epilogue(r0, r, c0, cols, acc, cols);
  });
}

// Per-channel constants from column c0 on.
RequantC from(const RequantC& rq, int64_t c0) { return {rq.m + c0, rq.e + c0, rq.bits, rq.input_bits}; }
GeluC from(const GeluC& g, int64_t c0) { return {g.b + c0, g.c + c0, g.one + c0}; }
const int32_t* from(const int32_t* bias, int64_t c0) { return bias ? bias + c0 : nullptr; }

const Kernels& chains() { return kernels(current_isa()); }

}  // namespace

Isa current_isa() { return Isa(g_isa.load()); }

bool set_isa(Isa isa) {
  if (isa < ISA_SCALAR || isa > detected_isa()) return false;
  g_isa.store(isa);
  return true;
}

// Columns per part of a chunked weight: about 512 KiB of int8 (half of a 2 MiB L2), a multiple of 64.
static int64_t chunk_columns(int64_t n, int64_t k) {
  const int64_t cols = std::max<int64_t>(64, (int64_t(512) * 1024 / std::max<int64_t>(k, 1)) / 64 * 64);
  return n > cols + cols / 2 ? cols : n;  // a weight little larger than one chunk stays whole
}

PackedWeight* pack_weight(const int8_t* w, int64_t n, int64_t k, int64_t stride_n, int64_t stride_k, Isa isa,
                          bool chunked) {
  const Kernels& kn = kernels(isa);
  const int64_t chunk = chunked ? chunk_columns(n, k) : std::max<int64_t>(n, 1);
  const int64_t parts = std::max<int64_t>(1, (n + chunk - 1) / chunk);
  PackedWeight* packed = new PackedWeight{isa, n, k, chunk, parts, new void*[parts]()};
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t c0 = p * chunk, cols = std::min(chunk, n - c0);
    if (posix_memalign(&packed->data[p], 64, std::max<size_t>(64, kn.packed_b_bytes(cols, k))) != 0) {
      packed->data[p] = nullptr;
      free_weight(packed);
      throw std::bad_alloc();
    }
    kn.pack_b(w + c0 * stride_n, cols, k, stride_n, stride_k, packed->data[p]);
  }
  return packed;
}

void free_weight(PackedWeight* w) {
  if (w == nullptr) return;
  for (int64_t p = 0; p < w->parts; ++p) free(w->data[p]);
  delete[] w->data;
  delete w;
}

void linear_i32(const PackedWeight& w, const int8_t* x, int64_t m, int64_t lda, int32_t* out, int64_t ld_out) {
  gemm_tiles(w, x, m, lda, [&](int64_t r0, int64_t r, int64_t c0, int64_t cols, const int32_t* acc, int64_t ld) {
    for (int64_t i = 0; i < r; ++i) memcpy(out + (r0 + i) * ld_out + c0, acc + i * ld, cols * sizeof(int32_t));
  });
}

void linear_requant(const PackedWeight& w, const int8_t* x, int64_t m, int64_t lda, const int32_t* bias,
                    const RequantC& rq, int8_t* out, int64_t ld_out) {
  const Kernels& kn = kernels(w.isa);
  gemm_tiles(w, x, m, lda, [&](int64_t r0, int64_t r, int64_t c0, int64_t cols, const int32_t* acc, int64_t ld) {
    kn.bias_requant(acc, ld, r, cols, from(bias, c0), from(rq, c0), out + r0 * ld_out + c0, ld_out);
  });
}

void linear_gelu_requant2(const PackedWeight& w, const int8_t* x, int64_t m, int64_t lda, const int32_t* bias,
                          const GeluC& g, const RequantC& rq1, const RequantC& rq2, int8_t* out, int64_t ld_out) {
  const Kernels& kn = kernels(w.isa);
  gemm_tiles(w, x, m, lda, [&](int64_t r0, int64_t r, int64_t c0, int64_t cols, const int32_t* acc, int64_t ld) {
    kn.bias_gelu_requant2(acc, ld, r, cols, from(bias, c0), from(g, c0), from(rq1, c0), from(rq2, c0),
                          out + r0 * ld_out + c0, ld_out);
  });
}

void linear_residual_ln_requant(const PackedWeight& w, const int8_t* x, int64_t m, int64_t lda, const int32_t* bias,
                                const int8_t* res, int64_t ld_res, const ResidualC& add, const LayerNormC& ln,
                                const RequantC& rq, int8_t* out, int64_t ld_out) {
  const Kernels& kn = kernels(w.isa);
  gemm_rows(w, x, m, lda, [&](int64_t r0, int64_t r, const int32_t* acc, int64_t ld) {
    kn.bias_residual_ln_requant(acc, ld, r, w.n, bias, res + r0 * ld_res, ld_res, add, ln, rq, out + r0 * ld_out,
                                ld_out);
  });
}

// Query rows per block: 64 rows x 512 keys of int32 scores = 128 KiB, inside L2 with K and V packed.
static const int64_t ATTENTION_ROWS = 64;

void attention(const int8_t* q, const int8_t* k, const int8_t* v, int64_t ld, const int64_t* starts, int64_t nseq,
               int64_t heads, int64_t d, const SoftmaxC& sm, const RequantC& ctx, int8_t* out, int64_t ld_out) {
  const Isa isa = current_isa();
  const Kernels& kn = kernels(isa);
  ThreadPool::instance().parallel_for(nseq * heads, [&](int64_t task) {
    const int64_t s = task / heads, h = task % heads;
    const int64_t s0 = starts[s], L = starts[s + 1] - s0;
    if (L <= 0) return;
    const int8_t* qh = q + s0 * ld + h * d;
    // K_h as the "weight" of the score GEMM: W[j][t] = k[s0 + j][h*d + t] (N = L keys, K = d).
    void* kp = t_packed_k.get(kn.packed_b_bytes(L, d));
    kn.pack_b(k + s0 * ld + h * d, L, d, ld, 1, kp);
    // V_h^T for the context GEMM: W[t][j] = v[s0 + j][h*d + t] (N = d, K = L).
    void* vp = t_packed_v.get(kn.packed_b_bytes(d, L));
    kn.pack_b(v + s0 * ld + h * d, d, L, 1, ld, vp);
    const int64_t rows_max = std::min(ATTENTION_ROWS, L);
    // Score rows L + 16 int32 apart: at a power-of-two stride (L = 256, 512) the AMX tile stores of the
    // score GEMM collide in the cache and it runs at half speed (410 vs 980 GOPS measured at L = 512).
    const int64_t ld_s = L + 16;
    int32_t* scores = static_cast<int32_t*>(t_acc.get(size_t(rows_max) * (ld_s + d) * sizeof(int32_t)));
    int32_t* context = scores + rows_max * ld_s;
    uint8_t* probs = static_cast<uint8_t*>(t_probs.get(size_t(rows_max) * L));
    const RequantC ctx_h{ctx.m + h * d, ctx.e + h * d, ctx.bits, ctx.input_bits};
    for (int64_t r0 = 0; r0 < L; r0 += rows_max) {
      const int64_t r = std::min(rows_max, L - r0);
      kn.gemm(kp, L, d, qh + r0 * ld, 0, ld, r, scores, ld_s);
      for (int64_t i = 0; i < r; ++i) kn.softmax_row(scores + i * ld_s, L, nullptr, sm, probs + i * L);
      kn.gemm(vp, d, L, probs, 1, L, r, context, d);
      kn.requant_i32(context, d, r, d, ctx_h, out + (s0 + r0) * ld_out + h * d, ld_out);
    }
  });
}

void embed(const int8_t* word, const int8_t* tt, const int8_t* pos, const int64_t* ids, const int64_t* tids,
           const int64_t* pids, int64_t rows, int64_t n, const ResidualC& add1, const ResidualC& add2,
           const LayerNormC& ln, const RequantC& rq, int8_t* out, int64_t ld_out) {
  const Kernels& kn = chains();
  for_row_blocks(rows, [&](int64_t r0, int64_t r) {
    kn.embed(word, tt, pos, ids + r0, tids + r0, pids + r0, r, n, add1, add2, ln, rq, out + r0 * ld_out, ld_out);
  });
}

void requant_i32(const int32_t* q, int64_t ld_q, int64_t rows, int64_t n, const RequantC& rq, int8_t* out,
                 int64_t ld_out) {
  const Kernels& kn = chains();
  for_row_blocks(rows, [&](int64_t r0, int64_t r) {
    kn.requant_i32(q + r0 * ld_q, ld_q, r, n, rq, out + r0 * ld_out, ld_out);
  });
}

}  // namespace intbert
