// int8 GEMM with AVX-512 VNNI (vpdpbusd): the twin of gemm_ref (csrc/gemm_ref.cpp), equal bit for bit.
//
// vpdpbusd multiplies 4 unsigned bytes of one operand by 4 signed bytes of the other and adds the four
// products to an int32 lane, without any intermediate saturation (unlike vpmaddubsw). So the activation
// side must be unsigned:
//   * uint8 A (attention probabilities) is used as it is;
//   * int8 A is made unsigned by flipping its top bit, a ^ 0x80 = a + 128 in [0, 255], and
//       sum_t (a_t + 128) w_t = sum_t a_t w_t + 128 sum_t w_t,
//     so the packed B carries comp[j] = 128 * sum_t W[j][t] per column and the kernel subtracts it once,
//     after the last K chunk. |comp| <= 128 * 128 * K < 2^31 for every K the caller allows
//     (K * 255 * 128 < 2^31), and every partial sum of (a + 128) w is bounded by the same guarantee
//     (|(a + 128) w| <= 255 * 128), so nothing overflows and the result is exact.
//
// Packed layout (pack_b_avx512): K in quads (Kq = ceil(K / 4), zero past K), columns in panels of 64
// (the last panel narrower: its width rounded up to 16, zero columns past N):
//   panel p (columns 64p ..): Kq rows of (panel width) * 4 bytes; row q holds, for each column c of the
//   panel, the 4 bytes W[64p + c][4q .. 4q + 3], so one 64-byte load is one zmm operand of vpdpbusd
//   (16 columns x 4 k). Panel p starts at byte 64p * Kq * 4 (every earlier panel is full).
//   After the panels (at byte Kq * 4 * N16, N16 = N rounded up to 16): int32 comp[N16].
//
// Blocking (one call = a row block of the caller, usually 32-128 rows x all N):
//   N blocks of panels whose packed B fits in half of L2 -> rows in chunks of MC -> K in chunks of KCQ
//   quads (A chunk packed, flipped and zero-padded on the stack; the B chunk of one panel, 32 KiB,
//   is reused from L1/L2 by every row group of the chunk) -> microkernel of 6 rows x 64 columns:
//   24 zmm accumulators, 4 B loads and 6 A broadcasts per quad for 24 vpdpbusd.
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

namespace intbert {

static const int64_t kPanel = 64;             // columns per panel: 4 zmm of 16 int32 lanes
static const int kMR = 6;                     // rows per microkernel: 6 x 4 = 24 of 32 zmm accumulate
static const int64_t kKCQ = 128;              // K quads per chunk (512 k): a panel's B chunk is 32 KiB
static const int64_t kMC = 96;                // rows per A chunk: 96 x 512 B = 48 KiB on the stack
static const int64_t kBBlockBytes = 1 << 20;  // packed B per N block: half of a 2 MiB L2
// (KCQ and MC measured on BERT-base shapes: 64 / 96, 128 / 48 and 192 / 96 were 3-8% slower.)

static inline int64_t ceil_div_avx512(int64_t a, int64_t b) { return (a + b - 1) / b; }

static inline int32_t load_i32_avx512(const void* p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

// One 64-byte unit of the layout: byte 4c + i = W[j0 + c][t0 + i] for c < 16, i < 4 (zero outside
// N x K). Fast paths for the two views the engine packs per call: rows of K (stride_k = 1) and V^T
// (stride_n = 1: four source rows of 16 columns, interleaved bytewise).
static void pack_unit_avx512(int8_t* dst, const int8_t* w, int64_t n, int64_t k, int64_t sn, int64_t sk,
                             int64_t j0, int64_t t0) {
  if (j0 + 16 <= n && t0 + 4 <= k) {
    if (sk == 1) {
      for (int c = 0; c < 16; ++c) memcpy(dst + 4 * c, w + (j0 + c) * sn + t0, 4);
      return;
    }
    if (sn == 1) {
      const int8_t* s = w + j0 + t0 * sk;
      const __m128i x0 = _mm_loadu_si128((const __m128i*)s), x1 = _mm_loadu_si128((const __m128i*)(s + sk));
      const __m128i x2 = _mm_loadu_si128((const __m128i*)(s + 2 * sk)),
                    x3 = _mm_loadu_si128((const __m128i*)(s + 3 * sk));
      // 16-bit lane c of lo01 = (x0[c], x1[c]); then 32-bit lane c = (x0[c], x1[c], x2[c], x3[c]).
      const __m128i lo01 = _mm_unpacklo_epi8(x0, x1), hi01 = _mm_unpackhi_epi8(x0, x1);
      const __m128i lo23 = _mm_unpacklo_epi8(x2, x3), hi23 = _mm_unpackhi_epi8(x2, x3);
      _mm_storeu_si128((__m128i*)dst, _mm_unpacklo_epi16(lo01, lo23));
      _mm_storeu_si128((__m128i*)(dst + 16), _mm_unpackhi_epi16(lo01, lo23));
      _mm_storeu_si128((__m128i*)(dst + 32), _mm_unpacklo_epi16(hi01, hi23));
      _mm_storeu_si128((__m128i*)(dst + 48), _mm_unpackhi_epi16(hi01, hi23));
      return;
    }
  }
  for (int c = 0; c < 16; ++c)
    for (int i = 0; i < 4; ++i)
      dst[4 * c + i] = (j0 + c < n && t0 + i < k) ? w[(j0 + c) * sn + (t0 + i) * sk] : 0;
}

size_t packed_b_bytes_avx512(int64_t n, int64_t k) {
  const int64_t kq = ceil_div_avx512(k, 4), n16 = ceil_div_avx512(n, 16) * 16;
  return size_t(kq * 4 * n16 + 4 * n16);
}

void pack_b_avx512(const int8_t* w, int64_t n, int64_t k, int64_t stride_n, int64_t stride_k, void* dst) {
  const int64_t kq = ceil_div_avx512(k, 4), n16 = ceil_div_avx512(n, 16) * 16;
  int8_t* out = static_cast<int8_t*>(dst);
  int32_t* comp = reinterpret_cast<int32_t*>(out + kq * 4 * n16);
  // 128 as the unsigned operand: vpdpbusd(s, 128, unit) adds 128 * (sum of the unit's 4 bytes) per column.
  const __m512i c128 = _mm512_set1_epi8(char(0x80));
  for (int64_t j0 = 0; j0 < n16; j0 += kPanel) {
    const int64_t nv = (n16 - j0 < kPanel ? n16 - j0 : kPanel) / 16;
    int8_t* panel = out + j0 * kq * 4;
    for (int64_t v = 0; v < nv; ++v) {
      __m512i sum = _mm512_setzero_si512();
      for (int64_t q = 0; q < kq; ++q) {
        int8_t* unit = panel + q * nv * 64 + v * 64;
        pack_unit_avx512(unit, w, n, k, stride_n, stride_k, j0 + 16 * v, 4 * q);
        sum = _mm512_dpbusd_epi32(sum, c128, _mm512_load_si512(unit));
      }
      _mm512_storeu_si512(comp + j0 + 16 * v, sum);
    }
  }
}

// A rows [0, mc) x k range [t0, t0 + len) -> dst (row stride len, len a multiple of 4), as unsigned
// bytes: int8 flipped to a + 128; bytes past K are 0 (their B bytes are 0 as well).
static void pack_a_avx512(uint8_t* dst, const uint8_t* a, int64_t lda, int64_t mc, int64_t k, int64_t t0,
                          int64_t len, int flip) {
  const __m512i top = _mm512_set1_epi8(char(0x80));
  for (int64_t r = 0; r < mc; ++r) {
    const uint8_t* src = a + r * lda + t0;
    uint8_t* d = dst + r * len;
    for (int64_t t = 0; t < len; t += 64) {
      const int64_t valid = k - (t0 + t);  // bytes of this 64-byte piece inside the row
      const int64_t keep = len - t < 64 ? len - t : 64;  // bytes of this piece inside the chunk
      const __mmask64 mv = valid >= 64 ? ~__mmask64(0) : valid <= 0 ? 0 : (__mmask64(1) << valid) - 1;
      const __mmask64 mk = keep >= 64 ? ~__mmask64(0) : (__mmask64(1) << keep) - 1;
      __m512i x = _mm512_maskz_loadu_epi8(mv & mk, src + t);  // masked lanes are not read
      if (flip) x = _mm512_maskz_mov_epi8(mv & mk, _mm512_xor_si512(x, top));
      _mm512_mask_storeu_epi8(d + t, mk, x);
    }
  }
}

// C[MR x 16 NV] (+)= A[MR x 4 kcq] . B chunk. a: packed rows (stride lda_p bytes); b: the panel's chunk,
// kcq rows of NV * 64 bytes. first: start from 0 (else from C); comp: subtracted when non-null (last chunk
// of a flipped int8 A); mask: valid columns of the last zmm.
template <int MR, int NV>
static void kernel_avx512(const uint8_t* a, int64_t lda_p, const int8_t* b, int64_t kcq, int32_t* c,
                          int64_t ldc, int first, const int32_t* comp, __mmask16 mask) {
  // The accumulators start at 0 and C is added after the loop: one path into the loop keeps all 24 in
  // registers (a conditional start made gcc copy and spill them).
  __m512i acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_si512();
  for (int64_t q = 0; q < kcq; ++q) {
    __m512i bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_si512(b + q * NV * 64 + v * 64);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi32(load_i32_avx512(a + r * lda_p + 4 * q));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], av, bv[v]);
    }
  }
  if (!first) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const int32_t* cp = c + r * ldc + 16 * v;
        acc[r][v] = _mm512_add_epi32(
            acc[r][v], v == NV - 1 ? _mm512_maskz_loadu_epi32(mask, cp) : _mm512_loadu_si512(cp));
      }
  }
  if (comp) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m512i cv = _mm512_loadu_si512(comp + 16 * v);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc[r][v] = _mm512_sub_epi32(acc[r][v], cv);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      int32_t* cp = c + r * ldc + 16 * v;
      if (v == NV - 1)
        _mm512_mask_storeu_epi32(cp, mask, acc[r][v]);
      else
        _mm512_storeu_si512(cp, acc[r][v]);
    }
}

typedef void (*KernelAvx512)(const uint8_t*, int64_t, const int8_t*, int64_t, int32_t*, int64_t, int,
                             const int32_t*, __mmask16);

#define INTBERT_K512_ROW(mr) \
  { kernel_avx512<mr, 1>, kernel_avx512<mr, 2>, kernel_avx512<mr, 3>, kernel_avx512<mr, 4> }
static const KernelAvx512 kKernelsAvx512[kMR][4] = {INTBERT_K512_ROW(1), INTBERT_K512_ROW(2), INTBERT_K512_ROW(3),
                                                    INTBERT_K512_ROW(4), INTBERT_K512_ROW(5), INTBERT_K512_ROW(6)};
#undef INTBERT_K512_ROW

void gemm_avx512(const void* packed, int64_t n, int64_t k, const void* a, int a_unsigned, int64_t lda, int64_t m,
                 int32_t* acc, int64_t ld_acc) {
  if (m <= 0) return;
  const int64_t kq = ceil_div_avx512(k, 4), n16 = ceil_div_avx512(n, 16) * 16;
  const int64_t panels = ceil_div_avx512(n16, kPanel);
  const int8_t* bpk = static_cast<const int8_t*>(packed);
  const int32_t* comp = reinterpret_cast<const int32_t*>(bpk + kq * 4 * n16);
  const uint8_t* au = static_cast<const uint8_t*>(a);
  int64_t panels_per_block = kBBlockBytes / (kq * 4 * kPanel);
  if (panels_per_block < 1) panels_per_block = 1;
  alignas(64) uint8_t abuf[kMC * kKCQ * 4];
  for (int64_t pb = 0; pb < panels; pb += panels_per_block) {
    const int64_t pe = pb + panels_per_block < panels ? pb + panels_per_block : panels;
    for (int64_t m0 = 0; m0 < m; m0 += kMC) {
      const int64_t mc = m - m0 < kMC ? m - m0 : kMC;
      for (int64_t q0 = 0; q0 < kq; q0 += kKCQ) {
        const int64_t kcq = kq - q0 < kKCQ ? kq - q0 : kKCQ;
        pack_a_avx512(abuf, au + m0 * lda, lda, mc, k, 4 * q0, 4 * kcq, !a_unsigned);
        const int first = q0 == 0;
        const bool last = q0 + kcq == kq;
        for (int64_t p = pb; p < pe; ++p) {
          const int64_t j0 = p * kPanel;
          const int64_t nv = (n16 - j0 < kPanel ? n16 - j0 : kPanel) / 16;
          const int64_t rem = n - (j0 + 16 * (nv - 1));  // valid columns of the last zmm, 1..16
          const __mmask16 mask = rem >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rem) - 1);
          const int8_t* bp = bpk + j0 * kq * 4 + q0 * nv * 64;
          const int32_t* cp = (last && !a_unsigned) ? comp + j0 : nullptr;
          for (int64_t r0 = 0; r0 < mc; r0 += kMR) {
            const int64_t mr = mc - r0 < kMR ? mc - r0 : kMR;
            kKernelsAvx512[mr - 1][nv - 1](abuf + r0 * 4 * kcq, 4 * kcq, bp, kcq, acc + (m0 + r0) * ld_acc + j0,
                                           ld_acc, first, cp, mask);
          }
        }
      }
    }
  }
}

}  // namespace intbert
