// int8 GEMM with AVX2: the twin of gemm_ref (csrc/gemm_ref.cpp), equal bit for bit.
//
// Why not vpmaddubsw: it multiplies u8 x s8 and adds adjacent pairs into a SATURATING int16, and a pair
// of uint8 probabilities 255 with weights 127 gives 2 * 255 * 127 = 64770 > 32767 (and an int8 A
// flipped to a + 128 does the same). Instead both operands are widened to int16 and multiplied by
// vpmaddwd, which adds each pair of int16 x int16 products into an int32 lane: a pair is at most
// 2 * 255 * 128 = 65280 in magnitude, far inside int32, and vpmaddwd's one saturating case
// (all four inputs -32768) cannot occur with 8-bit inputs. The int32 sums over K are then exact by the
// caller's guarantee K * 255 * 128 < 2^31 (kernels.h). No compensation is needed: the activations are
// widened with their own signedness (vpmovsxbw for int8, vpmovzxbw for uint8).
//
// Packed layout (pack_b_avx2): K in pairs (Kh = ceil(K / 2), zero past K), columns in panels of 16
// (zero columns past N; N16 = N rounded up to 16). Panel p starts at byte 16p * Kh * 2 and holds Kh rows of
// 32 bytes: row h = W[16p + c][2h], W[16p + c][2h + 1] for c = 0 .. 15. The weights stay int8 (half the
// memory and bandwidth of int16); vpmovsxbw widens 16 of those bytes (8 columns x one k pair) into one
// ymm operand of vpmaddwd on the fly.
//
// Blocking: rows in chunks of MC, K in chunks of KCH pairs (A widened to int16 on the stack), panels,
// then a 6-row x 16-column microkernel: 12 ymm accumulators + 2 B + 1 A broadcast of the 16 registers.
#pragma GCC target("avx2,fma,bmi2")
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

namespace intbert {

static const int kMR2 = 6;          // rows per microkernel
static const int64_t kKCH2 = 128;   // K pairs per chunk (256 k): one panel's B chunk is 4 KiB
static const int64_t kMC2 = 48;     // rows per chunk: 48 x 256 int16 = 24 KiB of widened A on the stack

static inline int64_t ceil_div_avx2(int64_t a, int64_t b) { return (a + b - 1) / b; }

static inline int32_t load_i32_avx2(const void* p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

// One 32-byte row of a panel: byte 2c + i = W[j0 + c][t0 + i] for c < 16, i < 2 (zero outside N x K).
// Fast paths: stride_k = 1 (2 contiguous bytes per column), stride_n = 1 (two source rows interleaved).
static void pack_unit_avx2(int8_t* dst, const int8_t* w, int64_t n, int64_t k, int64_t sn, int64_t sk, int64_t j0,
                           int64_t t0) {
  if (j0 + 16 <= n && t0 + 2 <= k) {
    if (sk == 1) {
      for (int c = 0; c < 16; ++c) memcpy(dst + 2 * c, w + (j0 + c) * sn + t0, 2);
      return;
    }
    if (sn == 1) {
      const int8_t* s = w + j0 + t0 * sk;
      const __m128i x0 = _mm_loadu_si128((const __m128i*)s), x1 = _mm_loadu_si128((const __m128i*)(s + sk));
      _mm_storeu_si128((__m128i*)dst, _mm_unpacklo_epi8(x0, x1));
      _mm_storeu_si128((__m128i*)(dst + 16), _mm_unpackhi_epi8(x0, x1));
      return;
    }
  }
  for (int c = 0; c < 16; ++c)
    for (int i = 0; i < 2; ++i) dst[2 * c + i] = (j0 + c < n && t0 + i < k) ? w[(j0 + c) * sn + (t0 + i) * sk] : 0;
}

size_t packed_b_bytes_avx2(int64_t n, int64_t k) {
  return size_t(ceil_div_avx2(k, 2) * 2 * ceil_div_avx2(n, 16) * 16);
}

void pack_b_avx2(const int8_t* w, int64_t n, int64_t k, int64_t stride_n, int64_t stride_k, void* dst) {
  const int64_t kh = ceil_div_avx2(k, 2), n16 = ceil_div_avx2(n, 16) * 16;
  int8_t* out = static_cast<int8_t*>(dst);
  for (int64_t j0 = 0; j0 < n16; j0 += 16)
    for (int64_t h = 0; h < kh; ++h) pack_unit_avx2(out + j0 * kh * 2 + h * 32, w, n, k, stride_n, stride_k, j0, 2 * h);
}

// A rows [0, mc) x k range [t0, t0 + len) -> int16 dst (row stride len, even), widened with A's
// signedness; entries past K are 0.
static void pack_a_avx2(int16_t* dst, const uint8_t* a, int64_t lda, int64_t mc, int64_t k, int64_t t0, int64_t len,
                        int a_unsigned) {
  const int64_t valid = k - t0 < len ? k - t0 : len;
  for (int64_t r = 0; r < mc; ++r) {
    const uint8_t* src = a + r * lda + t0;
    int16_t* d = dst + r * len;
    int64_t t = 0;
    for (; t + 16 <= valid; t += 16) {
      const __m128i x = _mm_loadu_si128((const __m128i*)(src + t));
      _mm256_storeu_si256((__m256i*)(d + t), a_unsigned ? _mm256_cvtepu8_epi16(x) : _mm256_cvtepi8_epi16(x));
    }
    for (; t < valid; ++t) d[t] = a_unsigned ? int16_t(src[t]) : int16_t(int8_t(src[t]));
    for (; t < len; ++t) d[t] = 0;
  }
}

// C[MR x 16] (+)= A[MR x 2 kch] . B chunk (kch rows of 32 bytes). first: start from 0, else from C.
// mask: valid columns (lanes with the top bit set), for the masked loads and stores of a narrow N tail.
template <int MR>
static void kernel_avx2(const int16_t* a, int64_t lda_p, const int8_t* b, int64_t kch, int32_t* c, int64_t ldc,
                        int first, int full, __m256i mask0, __m256i mask1) {
  __m256i acc[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    int32_t* cp = c + r * ldc;
    if (first) {
      acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    } else if (full) {
      acc[r][0] = _mm256_loadu_si256((const __m256i*)cp);
      acc[r][1] = _mm256_loadu_si256((const __m256i*)(cp + 8));
    } else {
      acc[r][0] = _mm256_maskload_epi32(cp, mask0);
      acc[r][1] = _mm256_maskload_epi32(cp + 8, mask1);
    }
  }
  for (int64_t h = 0; h < kch; ++h) {
    const __m256i b0 = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*)(b + 32 * h)));
    const __m256i b1 = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*)(b + 32 * h + 16)));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256i av = _mm256_set1_epi32(load_i32_avx2(a + r * lda_p + 2 * h));  // (a[2h], a[2h+1]) pairs
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(av, b0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(av, b1));
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    int32_t* cp = c + r * ldc;
    if (full) {
      _mm256_storeu_si256((__m256i*)cp, acc[r][0]);
      _mm256_storeu_si256((__m256i*)(cp + 8), acc[r][1]);
    } else {
      _mm256_maskstore_epi32(cp, mask0, acc[r][0]);
      _mm256_maskstore_epi32(cp + 8, mask1, acc[r][1]);
    }
  }
}

typedef void (*KernelAvx2)(const int16_t*, int64_t, const int8_t*, int64_t, int32_t*, int64_t, int, int, __m256i,
                           __m256i);
static const KernelAvx2 kKernelsAvx2[kMR2] = {kernel_avx2<1>, kernel_avx2<2>, kernel_avx2<3>,
                                              kernel_avx2<4>, kernel_avx2<5>, kernel_avx2<6>};

void gemm_avx2(const void* packed, int64_t n, int64_t k, const void* a, int a_unsigned, int64_t lda, int64_t m,
               int32_t* acc, int64_t ld_acc) {
  if (m <= 0) return;
  const int64_t kh = ceil_div_avx2(k, 2), n16 = ceil_div_avx2(n, 16) * 16;
  const int8_t* bpk = static_cast<const int8_t*>(packed);
  const uint8_t* au = static_cast<const uint8_t*>(a);
  alignas(32) int16_t abuf[kMC2 * kKCH2 * 2];
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t m0 = 0; m0 < m; m0 += kMC2) {
    const int64_t mc = m - m0 < kMC2 ? m - m0 : kMC2;
    for (int64_t h0 = 0; h0 < kh; h0 += kKCH2) {
      const int64_t kch = kh - h0 < kKCH2 ? kh - h0 : kKCH2;
      pack_a_avx2(abuf, au + m0 * lda, lda, mc, k, 2 * h0, 2 * kch, a_unsigned);
      for (int64_t j0 = 0; j0 < n16; j0 += 16) {
        const int64_t rem = n - j0;  // valid columns of this panel (>= 16: all)
        const int full = rem >= 16;
        const __m256i mask0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(full ? 16 : rem)), lane);
        const __m256i mask1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(full ? 16 : rem) - 8), lane);
        const int8_t* bp = bpk + j0 * kh * 2 + h0 * 32;
        for (int64_t r0 = 0; r0 < mc; r0 += kMR2) {
          const int64_t mr = mc - r0 < kMR2 ? mc - r0 : kMR2;
          kKernelsAvx2[mr - 1](abuf + r0 * 2 * kch, 2 * kch, bp, kch, acc + (m0 + r0) * ld_acc + j0, ld_acc, h0 == 0,
                               full, mask0, mask1);
        }
      }
    }
  }
}

}  // namespace intbert
