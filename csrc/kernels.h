// intbert native kernels: the integer chains of one I-BERT encoder layer, exact twins of
// src/intbert/quantization/intops.py (the definition) and engine/backends/reference.py (the oracle).
//
// Layout of this folder (one job per file):
//   kernels.h          this interface: constants structs, ISA levels, every kernel's signature
//   cpu_features.cpp   which ISA this CPU and OS can run; INTBERT_ISA forces a lower one
//   chains_ref.cpp     plain scalar C++: the readable definition of every chain (the `_ref` twins)
//   chains_avx2.cpp    AVX2 versions of the chains (same names, suffix _avx2)
//   chains_avx512.cpp  AVX-512 (F/BW/DQ/VL) versions (suffix _avx512)
//   gemm_ref.cpp / gemm_avx2.cpp / gemm_avx512.cpp / gemm_amx.cpp: the int8 GEMM per ISA
//   threadpool.h       one persistent pool for the whole forward
//   engine.cpp         drivers: GEMM row blocks with the chain as epilogue, fused attention, embeddings
//   module.cpp         the Python binding (CPython C API; pointers travel as Python ints)
//
// Rules for the ISA files: they are compiled with #pragma GCC target at the top, so they include only
// <immintrin.h>, <stdint.h>, <string.h> and this header, and every helper is `static` (an inline
// std:: template instantiated under an AVX-512 target could be merged by the linker into code
// that runs on AVX2-only CPUs). Exported names carry their ISA suffix.
#pragma once
#include <stddef.h>
#include <stdint.h>

namespace intbert {

// ISA levels, ordered: a CPU that runs level k runs every level below it.
enum Isa : int {
  ISA_SCALAR = 0,  // plain C++: the definition
  ISA_AVX2 = 1,    // AVX2 (+FMA, BMI2); GEMM by int16 vpmaddwd (exact: no u8 x s8 int16 saturation)
  ISA_AVX512 = 2,  // AVX-512 F/BW/DQ/VL + VNNI (vpdpbusd: u8 x s8 summed into int32, no saturation)
  ISA_AMX = 3,     // AVX512 level + AMX-INT8 tiles for the GEMM (tdpbssd / tdpbusd); chains as AVX512
};

// Dyadic requantization y = clamp(round_half_up(q * m / 2^e), -2^(bits-1), 2^(bits-1)-1)
// (intops.requantize / intops.rescale). Per-channel arrays (the Python side expands a per-tensor
// (1,) constant to the channel count). m in [0, 2^31), e in [0, 63], |q| < 2^input_bits.
// Exact integer meaning for every |q| < 2^47: floor((q * m + 2^(e-1)) / 2^e) with 2^(-1) := 0,
// except that when input_bits > 31 and e < 16, q is first clamped to [INT32_MIN + 1, INT32_MAX]
// (intops.rescale's `direct` path; the result then saturates any width <= 22 anyway).
struct RequantC {
  const int64_t* m;
  const int64_t* e;
  int bits;        // output width: 8 for int8 outputs, 22 for the residual sum, up to 32
  int input_bits;  // caller's bound on |q|
};

// i-GELU per channel (intops.int_gelu): t = min(|q|, -b); erf = (sign(q) * ((t + b)^2 + c)) >> 14
// (arithmetic shift = floor); out = -q * (erf + one)   (|out| < 2^47 for the freeze-checked scales).
struct GeluC {
  const int64_t* b;
  const int64_t* c;
  const int64_t* one;
};

// Residual add onto one grid (ResidualRequant): clamp(rescale(a; ra) + rescale(b; rb), bits).
struct ResidualC {
  RequantC a;  // applied to the first addend (e.g. dense accumulator + bias)
  RequantC b;  // applied to the residual (int8 hidden state or an embedding table row)
  int bits;    // clamp width of the sum (22 = LN_INPUT_BITS in the encoder, 16 in the embeddings)
};

// Integer LayerNorm over a row of C values (intops.int_layernorm):
//   y = q - round_half_up(mean q) = q - floor((2*sum + C) / (2*C));
//   var = sum((y >> shift)^2); std = max(isqrt(var) << shift, 1);
//   n = floor(y * 2^30 / std);  out = clamp(sign * (n + bias), INT32_MIN, INT32_MAX)
struct LayerNormC {
  int64_t shift;
  const int64_t* sign;  // [C], +-1
  const int64_t* bias;  // [C]
};

// i-exp softmax constants (intops.softmax_constants / int_softmax), scalars.
struct SoftmaxC {
  int64_t pre_shift, x0, zm, b, c, m, e;
  int output_bit;  // probabilities are uint8 at scale 2^-output_bit (8)
};

// ---------------------------------------------------------------------------------------------
// Chains on row tiles. `acc` rows are int32 GEMM accumulators WITHOUT the bias (the chain adds it;
// bias may be null = 0). Row r of a tile starts at ptr + r * ld. n = channels per row. Every chain
// exists as <name>_ref, <name>_avx2, <name>_avx512 with identical signatures and results.
// ---------------------------------------------------------------------------------------------

// out = requant(acc + bias) -> int8 (rq.bits <= 8)
#define INTBERT_BIAS_REQUANT_ARGS                                                                   \
  const int32_t *acc, int64_t ld_acc, int64_t rows, int64_t n, const int32_t *bias, const RequantC &rq, \
      int8_t *out, int64_t ld_out
// out = requant2(requant1(int_gelu(acc + bias)))  -> int8 (FFN up; rq1.input_bits = 47)
#define INTBERT_BIAS_GELU_REQUANT2_ARGS                                                            \
  const int32_t *acc, int64_t ld_acc, int64_t rows, int64_t n, const int32_t *bias, const GeluC &g, \
      const RequantC &rq1, const RequantC &rq2, int8_t *out, int64_t ld_out
// h = residual(acc + bias, res); out = requant(int_layernorm(h)) -> int8 (whole rows: n = hidden)
#define INTBERT_BIAS_RESIDUAL_LN_REQUANT_ARGS                                                       \
  const int32_t *acc, int64_t ld_acc, int64_t rows, int64_t n, const int32_t *bias, const int8_t *res, \
      int64_t ld_res, const ResidualC &add, const LayerNormC &ln, const RequantC &rq, int8_t *out,     \
      int64_t ld_out
// out = requant(q) for int32 q -> int8 (the attention context; rq.bits <= 8)
#define INTBERT_REQUANT_I32_ARGS \
  const int32_t *q, int64_t ld_q, int64_t rows, int64_t n, const RequantC &rq, int8_t *out, int64_t ld_out
// Embeddings, per token r: h = residual(word[ids[r]], tt[tids[r]]; add1); h = residual(h, pos[pids[r]]; add2)
// (add1/add2 .bits = 16, h kept in int64 inside); out = requant(int_layernorm(h)) -> int8.
// Tables are int8 [rows_of_table, n] row-major; ids are int64.
#define INTBERT_EMBED_ARGS                                                                           \
  const int8_t *word, const int8_t *tt, const int8_t *pos, const int64_t *ids, const int64_t *tids,   \
      const int64_t *pids, int64_t rows, int64_t n, const ResidualC &add1, const ResidualC &add2,      \
      const LayerNormC &ln, const RequantC &rq, int8_t *out, int64_t ld_out
// One softmax row: int32 scores [L] (keep: null = all attend, else bytes 1 = attend, 0 = masked)
// -> uint8 probabilities [L] (intops.int_softmax, output_bit bits, masked -> 0, all masked -> 0).
#define INTBERT_SOFTMAX_ROW_ARGS \
  const int32_t *scores, int64_t L, const uint8_t *keep, const SoftmaxC &sm, uint8_t *probs

#define INTBERT_DECLARE_CHAINS(sfx)                                   \
  void bias_requant_##sfx(INTBERT_BIAS_REQUANT_ARGS);                 \
  void bias_gelu_requant2_##sfx(INTBERT_BIAS_GELU_REQUANT2_ARGS);     \
  void bias_residual_ln_requant_##sfx(INTBERT_BIAS_RESIDUAL_LN_REQUANT_ARGS); \
  void requant_i32_##sfx(INTBERT_REQUANT_I32_ARGS);                   \
  void embed_##sfx(INTBERT_EMBED_ARGS);                               \
  void softmax_row_##sfx(INTBERT_SOFTMAX_ROW_ARGS);

INTBERT_DECLARE_CHAINS(ref)
INTBERT_DECLARE_CHAINS(avx2)
INTBERT_DECLARE_CHAINS(avx512)

// ---------------------------------------------------------------------------------------------
// int8 GEMM: acc[M, N] (int32, ld_acc) = A[M, K] @ W^T, W logically [N, K] int8.
// A is int8 (a_unsigned = 0) or uint8 (a_unsigned = 1: attention probabilities), rows at a + r*lda,
// any K >= 1, N >= 1, M >= 0 (no alignment required; tails handled inside).
// W is packed once per ISA by pack_b_<isa> into a buffer of packed_b_bytes_<isa>(N, K) bytes
// (64-byte aligned by the caller); element W[i][j] is read from w[i*stride_n + j*stride_k], so
// K^T (attention scores) and V^T (context) pack straight from strided views.
// Exactness: every path returns the exact integer sums (|sum| < 2^31 is guaranteed by the caller:
// K * 255 * 128 < 2^31 checked at freeze). On AVX2 (no VNNI) the products are widened to int16 and
// summed by vpmaddwd: u8 x s8 vpmaddubsw would saturate int16 pair sums (2 * 255 * 127 > 32767).
// gemm_<isa> is single-threaded; the caller splits rows across threads. Scratch the kernel needs
// (e.g. AMX tile config, tail padding) lives on its stack or in thread-local storage.
// ---------------------------------------------------------------------------------------------
#define INTBERT_DECLARE_GEMM(sfx)                                                                 \
  size_t packed_b_bytes_##sfx(int64_t n, int64_t k);                                              \
  void pack_b_##sfx(const int8_t *w, int64_t n, int64_t k, int64_t stride_n, int64_t stride_k,    \
                    void *dst);                                                                   \
  void gemm_##sfx(const void *packed, int64_t n, int64_t k, const void *a, int a_unsigned,        \
                  int64_t lda, int64_t m, int32_t *acc, int64_t ld_acc);

INTBERT_DECLARE_GEMM(ref)
INTBERT_DECLARE_GEMM(avx2)
INTBERT_DECLARE_GEMM(avx512)
INTBERT_DECLARE_GEMM(amx)

// ---------------------------------------------------------------------------------------------
// CPU features (cpu_features.cpp)
// ---------------------------------------------------------------------------------------------
// Highest level this CPU and OS support (AMX: cpuid + XCR0 + the Linux arch_prctl permission for
// tile data, requested once here).
Isa detected_isa();

}  // namespace intbert
