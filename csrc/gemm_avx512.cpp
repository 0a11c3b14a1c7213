// int8 GEMM with AVX-512 VNNI (vpdpbusd): the twin of gemm_ref (csrc/gemm_ref.cpp), equal bit for bit.
// Also the packer of the layout gemm_amx reads (pack_b_amx calls pack_b_avx512).
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
// Packed layout ("VNNI tiles", shared with gemm_amx, whose tile loads read it as it is):
//   KB = 64 bytes of K per step, or K rounded up to 4 when K <= 64; steps = ceil(K / KB); zero past K.
//   Columns in blocks of 16 (zero columns past N; N16 = 16 * blocks), blocks in pairs. The tile of
//   block j and step s is KB/4 rows of 64 bytes (T = 16 * KB bytes): row i holds, for column c of the
//   block, the four bytes W[16j + c][s*KB + 4i .. s*KB + 4i + 3] at bytes 4c .. 4c + 3. So one row is one
//   zmm operand of vpdpbusd (16 columns x 4 k) and one tile is an AMX B tile. Tile (j, s) lies at
//     (j & ~1) * steps * T + (s * w + (j & 1)) * T,   w = 2 for a full pair, 1 for a lone last block:
//   the two tiles of a pair's step are adjacent, and each block advances by w * T per step.
//   After the tiles (at byte N16 * steps * KB): int32 comp[N16].
//
// Blocking (one call = a row block of the caller, usually 32-128 rows x all N): N blocks of column
// groups whose packed B fits in half of L2 -> rows in chunks of MC -> K in chunks of KCQ quads (A chunk
// packed, flipped and zero-padded on the stack) -> groups of 4 column blocks -> microkernel of
// 6 rows x 64 columns: 24 zmm accumulators, 4 B loads and 6 A broadcasts per quad for 24 vpdpbusd.
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")
// gcc 12's avx512fintrin.h hands _mm512_undefined_epi32() (a self-initialised variable) to the builtins
// behind the unpack and shuffle intrinsics, and -Wall (in Python's build flags) then reports it as
// uninitialised when they are inlined (GCC bug 105593, fixed in gcc 13). The value is never used.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

namespace intbert {

static const int kMR = 6;                     // rows per microkernel: 6 x 4 = 24 of 32 zmm accumulate
static const int64_t kKCQ = 128;              // K quads per chunk (512 k; a multiple of 16 = one step)
static const int64_t kMC = 96;                // rows per A chunk: 96 x 512 B = 48 KiB on the stack
static const int64_t kBBlockBytes = 1 << 20;  // packed B per N block: half of a 2 MiB L2
// (KCQ and MC measured on BERT-base shapes: 64 / 96, 128 / 48 and 192 / 96 were 3-8% slower.)

static inline int64_t ceil_div_avx512(int64_t a, int64_t b) { return (a + b - 1) / b; }

static inline int32_t load_i32_avx512(const void* p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

// The layout's sizes for an N x K weight.
struct VnniTiles {
  int64_t kb, steps, tile, blocks;
  VnniTiles(int64_t n, int64_t k) {
    kb = k < 64 ? ceil_div_avx512(k, 4) * 4 : 64;
    steps = ceil_div_avx512(k, kb);
    tile = 16 * kb;
    blocks = ceil_div_avx512(n, 16);
  }
  int64_t width(int64_t j) const { return (j | 1) < blocks ? 2 : 1; }  // blocks in j's pair
  int64_t offset(int64_t j, int64_t s) const { return (j & ~int64_t(1)) * steps * tile + (s * width(j) + (j & 1)) * tile; }
  int64_t comp_offset() const { return blocks * steps * tile; }
};

// [o0, o1, o2, o3] = the 4 x 4 transpose of the 128-bit lanes of [x0, x1, x2, x3]: lane L of o_i is lane i of x_L.
static inline void transpose_lanes_avx512(__m512i x0, __m512i x1, __m512i x2, __m512i x3, __m512i* o) {
  const __m512i c0 = _mm512_shuffle_i32x4(x0, x1, 0x44);  // x0.0 x0.1 x1.0 x1.1
  const __m512i c1 = _mm512_shuffle_i32x4(x0, x1, 0xEE);  // x0.2 x0.3 x1.2 x1.3
  const __m512i c2 = _mm512_shuffle_i32x4(x2, x3, 0x44);  // x2.0 x2.1 x3.0 x3.1
  const __m512i c3 = _mm512_shuffle_i32x4(x2, x3, 0xEE);  // x2.2 x2.3 x3.2 x3.3
  o[0] = _mm512_shuffle_i32x4(c0, c2, 0x88);              // x0.0 x1.0 x2.0 x3.0
  o[1] = _mm512_shuffle_i32x4(c0, c2, 0xDD);              // x0.1 x1.1 x2.1 x3.1
  o[2] = _mm512_shuffle_i32x4(c1, c3, 0x88);
  o[3] = _mm512_shuffle_i32x4(c1, c3, 0xDD);
}

// W viewed with stride_k = 1 (weights, the K of attention): a tile is the transpose of 16 rows of
// KB bytes read as 16 x (KB/4) dwords. Masked loads supply the zeros past N and K.
static void pack_tile_rows_avx512(int8_t* dst, const int8_t* w, int64_t n, int64_t k, int64_t sn, int64_t j0,
                                  int64_t t0, int64_t kb) {
  const int64_t valid = k - t0 < kb ? k - t0 : kb;
  const __mmask64 mk = valid >= 64 ? ~__mmask64(0) : (__mmask64(1) << valid) - 1;
  __m512i r[16];
  for (int c = 0; c < 16; ++c)
    r[c] = j0 + c < n ? _mm512_maskz_loadu_epi8(mk, w + (j0 + c) * sn + t0) : _mm512_setzero_si512();
  // Dwords: r[c][i] = W[j0 + c][t0 + 4i ..]; the tile wants out[i][c].
  __m512i a[16], b[16];
  for (int p = 0; p < 8; ++p) {
    a[2 * p] = _mm512_unpacklo_epi32(r[2 * p], r[2 * p + 1]);
    a[2 * p + 1] = _mm512_unpackhi_epi32(r[2 * p], r[2 * p + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // b[4g + m], lane L = (r[4g..4g+3])[4L + m]
    b[4 * g + 0] = _mm512_unpacklo_epi64(a[4 * g], a[4 * g + 2]);
    b[4 * g + 1] = _mm512_unpackhi_epi64(a[4 * g], a[4 * g + 2]);
    b[4 * g + 2] = _mm512_unpacklo_epi64(a[4 * g + 1], a[4 * g + 3]);
    b[4 * g + 3] = _mm512_unpackhi_epi64(a[4 * g + 1], a[4 * g + 3]);
  }
  const int64_t rows = kb / 4;
  for (int m = 0; m < 4; ++m) {
    __m512i o[4];  // o[L] = out row 4L + m
    transpose_lanes_avx512(b[m], b[4 + m], b[8 + m], b[12 + m], o);
    for (int L = 0; L < 4; ++L)
      if (4 * L + m < rows) _mm512_store_si512(dst + 64 * (4 * L + m), o[L]);
  }
}

// W viewed with stride_n = 1 (V^T): one tile row (k = t0 .. t0+3) for up to 4 blocks at once, from four
// source rows of 64 columns interleaved bytewise. dst[v]: row i of block j0/16 + v's tile, v < nblk.
static void pack_row4_cols_avx512(int8_t* const* dst, int nblk, const int8_t* w, int64_t n, int64_t k, int64_t sk,
                                  int64_t j0, int64_t t0) {
  const int64_t cols = n - j0 < 64 ? n - j0 : 64;
  const __mmask64 mc = cols >= 64 ? ~__mmask64(0) : (__mmask64(1) << cols) - 1;
  __m512i x[4];
  for (int i = 0; i < 4; ++i)
    x[i] = t0 + i < k ? _mm512_maskz_loadu_epi8(mc, w + j0 + (t0 + i) * sk) : _mm512_setzero_si512();
  // Per 128-bit lane L (columns j0 + 16L ..): 16-bit lane c of lo01 = (x0[c], x1[c]); then 32-bit
  // lane c of u0 = (x0[c], x1[c], x2[c], x3[c]) for c = 0..3, u1 c = 4..7, u2 8..11, u3 12..15.
  const __m512i lo01 = _mm512_unpacklo_epi8(x[0], x[1]), hi01 = _mm512_unpackhi_epi8(x[0], x[1]);
  const __m512i lo23 = _mm512_unpacklo_epi8(x[2], x[3]), hi23 = _mm512_unpackhi_epi8(x[2], x[3]);
  const __m512i u0 = _mm512_unpacklo_epi16(lo01, lo23), u1 = _mm512_unpackhi_epi16(lo01, lo23);
  const __m512i u2 = _mm512_unpacklo_epi16(hi01, hi23), u3 = _mm512_unpackhi_epi16(hi01, hi23);
  __m512i o[4];  // o[L] = the row of block L: lanes L of u0, u1, u2, u3
  transpose_lanes_avx512(u0, u1, u2, u3, o);
  for (int v = 0; v < nblk; ++v) _mm512_store_si512(dst[v], o[v]);
}

// Any other strides: element by element (zero outside N x K).
static void pack_row_any_avx512(int8_t* dst, const int8_t* w, int64_t n, int64_t k, int64_t sn, int64_t sk,
                                int64_t j0, int64_t t0) {
  for (int c = 0; c < 16; ++c)
    for (int i = 0; i < 4; ++i)
      dst[4 * c + i] = (j0 + c < n && t0 + i < k) ? w[(j0 + c) * sn + (t0 + i) * sk] : 0;
}

size_t packed_b_bytes_avx512(int64_t n, int64_t k) {
  const VnniTiles g(n, k);
  return size_t(g.comp_offset() + 4 * 16 * g.blocks);
}

void pack_b_avx512(const int8_t* w, int64_t n, int64_t k, int64_t stride_n, int64_t stride_k, void* dst) {
  const VnniTiles g(n, k);
  int8_t* out = static_cast<int8_t*>(dst);
  const int64_t rows = g.kb / 4;
  if (stride_k == 1) {
    for (int64_t j = 0; j < g.blocks; ++j)
      for (int64_t s = 0; s < g.steps; ++s)
        pack_tile_rows_avx512(out + g.offset(j, s), w, n, k, stride_n, 16 * j, s * g.kb, g.kb);
  } else if (stride_n == 1) {
    for (int64_t j = 0; j < g.blocks; j += 4) {
      const int nblk = int(g.blocks - j < 4 ? g.blocks - j : 4);
      for (int64_t s = 0; s < g.steps; ++s)
        for (int64_t i = 0; i < rows; ++i) {
          int8_t* d[4];
          for (int v = 0; v < nblk; ++v) d[v] = out + g.offset(j + v, s) + 64 * i;
          pack_row4_cols_avx512(d, nblk, w, n, k, stride_k, 16 * j, s * g.kb + 4 * i);
        }
    }
  } else {
    for (int64_t j = 0; j < g.blocks; ++j)
      for (int64_t s = 0; s < g.steps; ++s)
        for (int64_t i = 0; i < rows; ++i)
          pack_row_any_avx512(out + g.offset(j, s) + 64 * i, w, n, k, stride_n, stride_k, 16 * j, s * g.kb + 4 * i);
  }
  // comp[16j + c] = 128 * sum_t W[16j + c][t]: vpdpbusd with 128 as the unsigned operand adds 128 times
  // the four bytes of column c of a tile row to lane c.
  int32_t* comp = reinterpret_cast<int32_t*>(out + g.comp_offset());
  const __m512i c128 = _mm512_set1_epi8(char(0x80));
  for (int64_t j = 0; j < g.blocks; ++j) {
    __m512i sum = _mm512_setzero_si512();
    for (int64_t s = 0; s < g.steps; ++s) {
      const int8_t* t = out + g.offset(j, s);
      for (int64_t i = 0; i < rows; ++i) sum = _mm512_dpbusd_epi32(sum, c128, _mm512_load_si512(t + 64 * i));
    }
    _mm512_store_si512(comp + 16 * j, sum);
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
      const int64_t valid = k - (t0 + t);               // bytes of this 64-byte piece inside the row
      const int64_t keep = len - t < 64 ? len - t : 64;  // bytes of this piece inside the chunk
      const __mmask64 mv = valid >= 64 ? ~__mmask64(0) : valid <= 0 ? 0 : (__mmask64(1) << valid) - 1;
      const __mmask64 mk = keep >= 64 ? ~__mmask64(0) : (__mmask64(1) << keep) - 1;
      __m512i x = _mm512_maskz_loadu_epi8(mv & mk, src + t);  // masked lanes are not read
      if (flip) x = _mm512_maskz_mov_epi8(mv & mk, _mm512_xor_si512(x, top));
      _mm512_mask_storeu_epi8(d + t, mk, x);
    }
  }
}

// C[MR x 16 NV] (+)= A[MR x 4 kcq] . B. a: packed rows (stride lda_p bytes). bp[v]: block v's tile at
// the chunk's first step, advancing by bstep[v] bytes per step of `rows` quads. first: C starts at 0
// (else C is added); comp: subtracted when non-null (last chunk of a flipped int8 A); mask: valid
// columns of the last zmm.
template <int MR, int NV>
static void kernel_avx512(const uint8_t* a, int64_t lda_p, const int8_t* const* bp, const int64_t* bstep,
                          int64_t kcq, int64_t rows, int32_t* c, int64_t ldc, int first, const int32_t* comp,
                          __mmask16 mask) {
  // The accumulators start at 0 and C is added after the loop: one path into the loop keeps all 24 in
  // registers (a conditional start made gcc copy and spill them).
  __m512i acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_si512();
  const int8_t* b[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) b[v] = bp[v];
  for (int64_t q0 = 0; q0 < kcq; q0 += rows) {
    const int64_t qn = kcq - q0 < rows ? kcq - q0 : rows;
    const uint8_t* aq = a + 4 * q0;
    for (int64_t i = 0; i < qn; ++i) {
      __m512i bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_si512(b[v] + 64 * i);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512i av = _mm512_set1_epi32(load_i32_avx512(aq + r * lda_p + 4 * i));
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], av, bv[v]);
      }
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] += bstep[v];
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
      const __m512i cv = _mm512_load_si512(comp + 16 * v);
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

typedef void (*KernelAvx512)(const uint8_t*, int64_t, const int8_t* const*, const int64_t*, int64_t, int64_t,
                             int32_t*, int64_t, int, const int32_t*, __mmask16);

#define INTBERT_K512_ROW(mr) \
  { kernel_avx512<mr, 1>, kernel_avx512<mr, 2>, kernel_avx512<mr, 3>, kernel_avx512<mr, 4> }
static const KernelAvx512 kKernelsAvx512[kMR][4] = {INTBERT_K512_ROW(1), INTBERT_K512_ROW(2), INTBERT_K512_ROW(3),
                                                    INTBERT_K512_ROW(4), INTBERT_K512_ROW(5), INTBERT_K512_ROW(6)};
#undef INTBERT_K512_ROW

void gemm_avx512(const void* packed, int64_t n, int64_t k, const void* a, int a_unsigned, int64_t lda, int64_t m,
                 int32_t* acc, int64_t ld_acc) {
  if (m <= 0) return;
  const VnniTiles g(n, k);
  const int64_t kq = ceil_div_avx512(k, 4), rows = g.kb / 4;  // quads to multiply; quads per tile
  const int64_t groups = ceil_div_avx512(g.blocks, 4);       // 64-column groups of 4 blocks
  const int8_t* bpk = static_cast<const int8_t*>(packed);
  const int32_t* comp = reinterpret_cast<const int32_t*>(bpk + g.comp_offset());
  const uint8_t* au = static_cast<const uint8_t*>(a);
  int64_t groups_per_block = kBBlockBytes / (4 * g.steps * g.tile);
  if (groups_per_block < 1) groups_per_block = 1;
  alignas(64) uint8_t abuf[kMC * kKCQ * 4];
  for (int64_t gb = 0; gb < groups; gb += groups_per_block) {
    const int64_t ge = gb + groups_per_block < groups ? gb + groups_per_block : groups;
    for (int64_t m0 = 0; m0 < m; m0 += kMC) {
      const int64_t mc = m - m0 < kMC ? m - m0 : kMC;
      for (int64_t q0 = 0; q0 < kq; q0 += kKCQ) {  // q0 is a multiple of `rows`: chunks start at a step
        const int64_t kcq = kq - q0 < kKCQ ? kq - q0 : kKCQ;
        pack_a_avx512(abuf, au + m0 * lda, lda, mc, k, 4 * q0, 4 * kcq, !a_unsigned);
        const int first = q0 == 0;
        const bool last = q0 + kcq == kq;
        const int64_t s0 = q0 / rows;
        for (int64_t gi = gb; gi < ge; ++gi) {
          const int64_t j0 = 4 * gi;
          const int nv = int(g.blocks - j0 < 4 ? g.blocks - j0 : 4);
          const int8_t* bp[4];
          int64_t bstep[4];
          for (int v = 0; v < nv; ++v) {
            bp[v] = bpk + g.offset(j0 + v, s0);
            bstep[v] = g.width(j0 + v) * g.tile;
          }
          const int64_t rem = n - 16 * (j0 + nv - 1);  // valid columns of the last zmm, 1..16
          const __mmask16 mask = rem >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rem) - 1);
          const int32_t* cp = (last && !a_unsigned) ? comp + 16 * j0 : nullptr;
          for (int64_t r0 = 0; r0 < mc; r0 += kMR) {
            const int64_t mr = mc - r0 < kMR ? mc - r0 : kMR;
            kKernelsAvx512[mr - 1][nv - 1](abuf + r0 * 4 * kcq, 4 * kcq, bp, bstep, kcq, rows,
                                           acc + (m0 + r0) * ld_acc + 16 * j0, ld_acc, first, cp, mask);
          }
        }
      }
    }
  }
}

}  // namespace intbert
