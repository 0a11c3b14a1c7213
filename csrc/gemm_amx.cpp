// int8 GEMM with AMX-INT8 tiles: the twin of gemm_ref (csrc/gemm_ref.cpp), equal bit for bit.
//
// tdpbssd (int8 A x int8 B) and tdpbusd (uint8 A x int8 B) add, for each C element, 4-byte dot products
// into int32 without intermediate saturation; so both activation types are used as they are and no
// compensation is needed. Sums are exact by the caller's guarantee K * 255 * 128 < 2^31 (kernels.h).
//
// Tiles (palette 1, configured per call: tile state belongs to the thread, and LDTILECFG zeroes it):
//   tmm0..3  C, 16 rows x 16 int32 (64 bytes): the 2 x 2 block of a 32 x 32 output tile
//   tmm4, 5  A, 16 rows x KB bytes: rows r0 .. r0+15 and r0+16 .. r0+31, k = s*KB .. s*KB+KB-1
//   tmm6, 7  B, KB/4 rows x 64 bytes: two column blocks of 16, in the VNNI layout below
// with KB = 64 (the K step), or K rounded up to 4 when K <= 64 (head sizes 32, 15: no wasted steps).
//   C[i][j] += sum_{q < KB/4} sum_{b < 4} A[i][4q + b] * B[q][4j + b]
// so B row q holds, for column j, the four bytes W[j][4q .. 4q + 3]: the "VNNI" 4-byte interleave.
//
// Packed layout (pack_b_amx): Kp = K rounded up to KB (zero past K), steps = Kp / KB; columns in blocks
// of 16 (zero columns past N), blocks in pairs. The tile of column block c and step s (T = 16 * KB bytes:
// KB/4 rows of 64 bytes, row q = W[16c + j][s*KB + 4q + b] at byte 4j + b) lies at
//   (c & ~1) * steps * T + (s * w + (c & 1)) * T,   w = 2 for a full pair, 1 for a lone last block,
// so the two B tiles a step needs are adjacent and a pair's panel is one contiguous stream.
//
// Tails, without copies in the inner loop:
//   * M: the last row block's A and C tiles are configured with its rows (a second LDTILECFG), so
//     tile loads and stores touch exactly the rows that exist;
//   * K: the last, partial step of a row block is copied once per row block into a zero-padded
//     32 x 64 scratch on the stack (the B bytes past K are zero, so the padding adds nothing);
//   * N: a C tile whose 16 columns pass N is stored to a stack scratch and its valid columns copied.
//
// Blocking: N blocks of column pairs whose packed B fits in half of L2 -> row blocks of 32 -> column
// pairs -> K steps: 2 A + 2 B tile loads feed 4 tdp (the classic 2 x 2 AMX microkernel). The A rows of
// a block (32 x K) stay in L1/L2 while every column pair of the N block reads them.
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,amx-tile,amx-int8")
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

namespace intbert {

static const int64_t kAmxBBlockBytes = 1 << 20;  // packed B per N block: half of a 2 MiB L2

static inline int64_t ceil_div_amx(int64_t a, int64_t b) { return (a + b - 1) / b; }

// K step of the tiles: 64, or K rounded up to 4 when K <= 64.
static inline int64_t step_bytes_amx(int64_t k) { return k < 64 ? ceil_div_amx(k, 4) * 4 : 64; }

// The 64-byte LDTILECFG operand (Intel SDM, "TILECFG"): palette, start row, 14 reserved bytes,
// bytes per row of tmm0..15, rows of tmm0..15.
struct alignas(64) AmxTileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// rows: valid A/C rows of the row block (1 .. 32); kb: K step in bytes.
static void configure_amx(int rows, int64_t kb) {
  AmxTileConfig cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  const int top = rows < 16 ? rows : 16, bottom = rows > 16 ? rows - 16 : 0;
  for (int t = 0; t < 4; ++t) {  // C: tmm0, 1 rows 0-15; tmm2, 3 rows 16-31
    cfg.rows[t] = uint8_t(t < 2 ? top : bottom);
    cfg.colsb[t] = cfg.rows[t] ? 64 : 0;
  }
  cfg.rows[4] = uint8_t(top);
  cfg.colsb[4] = uint16_t(kb);
  cfg.rows[5] = uint8_t(bottom);
  cfg.colsb[5] = bottom ? uint16_t(kb) : 0;
  for (int t = 6; t < 8; ++t) {
    cfg.rows[t] = uint8_t(kb / 4);
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// One 64-byte tile row: byte 4c + i = W[j0 + c][t0 + i] for c < 16, i < 4 (zero outside N x K).
// Fast paths for the two views the engine packs per call: rows of K (stride_k = 1) and V^T
// (stride_n = 1: four source rows of 16 columns, interleaved bytewise).
static void pack_unit_amx(int8_t* dst, const int8_t* w, int64_t n, int64_t k, int64_t sn, int64_t sk, int64_t j0,
                          int64_t t0) {
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

size_t packed_b_bytes_amx(int64_t n, int64_t k) {
  const int64_t kb = step_bytes_amx(k);
  return size_t(ceil_div_amx(n, 16) * 16 * ceil_div_amx(k, kb) * kb);
}

void pack_b_amx(const int8_t* w, int64_t n, int64_t k, int64_t stride_n, int64_t stride_k, void* dst) {
  const int64_t kb = step_bytes_amx(k), steps = ceil_div_amx(k, kb), tile = 16 * kb;
  const int64_t blocks = ceil_div_amx(n, 16);
  int8_t* out = static_cast<int8_t*>(dst);
  for (int64_t c = 0; c < blocks; ++c) {
    const int64_t width = (c | 1) < blocks ? 2 : 1;
    for (int64_t s = 0; s < steps; ++s) {
      int8_t* t = out + (c & ~int64_t(1)) * steps * tile + (s * width + (c & 1)) * tile;
      for (int64_t q = 0; q < kb / 4; ++q) pack_unit_amx(t + 64 * q, w, n, k, stride_n, stride_k, 16 * c, s * kb + 4 * q);
    }
  }
}

// One 32 x 32 (ROWS2: 32 rows, else 16; COLS2: 32 columns, else 16) output block over all K steps.
// a0/a1: A tiles of full steps (stride lda); tail: the zero-padded last step (stride 64) or null.
template <bool UNSIGNED, bool ROWS2, bool COLS2>
static void block_amx(const int8_t* a0, int64_t lda, const int8_t* tail, int64_t full_steps, int64_t kb,
                      const int8_t* b, int64_t tile, int32_t* c0, int32_t* c1, int32_t* c2, int32_t* c3, int64_t ldc_b) {
  _tile_zero(0);
  if (COLS2) _tile_zero(1);
  if (ROWS2) _tile_zero(2);
  if (ROWS2 && COLS2) _tile_zero(3);
  const int64_t bstep = (COLS2 ? 2 : 1) * tile;
  const int64_t steps = full_steps + (tail ? 1 : 0);
  for (int64_t s = 0; s < steps; ++s) {
    if (s < full_steps) {
      _tile_loadd(4, a0 + s * kb, lda);
      if (ROWS2) _tile_loadd(5, a0 + 16 * lda + s * kb, lda);
    } else {
      _tile_loadd(4, tail, 64);
      if (ROWS2) _tile_loadd(5, tail + 16 * 64, 64);
    }
    _tile_loadd(6, b + s * bstep, 64);
    if (COLS2) _tile_loadd(7, b + s * bstep + tile, 64);
    if (UNSIGNED) {
      _tile_dpbusd(0, 4, 6);
      if (COLS2) _tile_dpbusd(1, 4, 7);
      if (ROWS2) _tile_dpbusd(2, 5, 6);
      if (ROWS2 && COLS2) _tile_dpbusd(3, 5, 7);
    } else {
      _tile_dpbssd(0, 4, 6);
      if (COLS2) _tile_dpbssd(1, 4, 7);
      if (ROWS2) _tile_dpbssd(2, 5, 6);
      if (ROWS2 && COLS2) _tile_dpbssd(3, 5, 7);
    }
  }
  _tile_stored(0, c0, ldc_b);
  if (COLS2) _tile_stored(1, c1, ldc_b);
  if (ROWS2) _tile_stored(2, c2, ldc_b);
  if (ROWS2 && COLS2) _tile_stored(3, c3, ldc_b);
}

typedef void (*BlockAmx)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, const int8_t*, int64_t, int32_t*,
                         int32_t*, int32_t*, int32_t*, int64_t);
// [unsigned][rows2][cols2]
static const BlockAmx kBlocksAmx[2][2][2] = {
    {{block_amx<false, false, false>, block_amx<false, false, true>},
     {block_amx<false, true, false>, block_amx<false, true, true>}},
    {{block_amx<true, false, false>, block_amx<true, false, true>},
     {block_amx<true, true, false>, block_amx<true, true, true>}}};

void gemm_amx(const void* packed, int64_t n, int64_t k, const void* a, int a_unsigned, int64_t lda, int64_t m,
              int32_t* acc, int64_t ld_acc) {
  if (m <= 0) return;
  const int64_t kb = step_bytes_amx(k), steps = ceil_div_amx(k, kb), tile = 16 * kb;
  const int64_t full_steps = k / kb, tail_bytes = k - full_steps * kb;  // tail: 0 .. kb-1 bytes of a last step
  const int64_t blocks = ceil_div_amx(n, 16);
  const int8_t* bpk = static_cast<const int8_t*>(packed);
  const int8_t* as = static_cast<const int8_t*>(a);
  int64_t pairs_per_nblock = kAmxBBlockBytes / (2 * steps * tile);
  if (pairs_per_nblock < 1) pairs_per_nblock = 1;
  alignas(64) int8_t tail[32 * 64];
  alignas(64) int32_t ctmp[4][16 * 16];
  int configured_rows = 0;
  for (int64_t cb = 0; cb < blocks; cb += 2 * pairs_per_nblock) {
    const int64_t ce = cb + 2 * pairs_per_nblock < blocks ? cb + 2 * pairs_per_nblock : blocks;
    for (int64_t r0 = 0; r0 < m; r0 += 32) {
      const int rows = int(m - r0 < 32 ? m - r0 : 32);
      if (rows != configured_rows) {
        configure_amx(rows, kb);
        configured_rows = rows;
      }
      const int8_t* a0 = as + r0 * lda;
      if (tail_bytes) {
        memset(tail, 0, sizeof tail);
        for (int r = 0; r < rows; ++r) memcpy(tail + 64 * r, a0 + r * lda + full_steps * kb, size_t(tail_bytes));
      }
      const BlockAmx* row_kernels = kBlocksAmx[a_unsigned ? 1 : 0][rows > 16 ? 1 : 0];
      for (int64_t c = cb; c < ce; c += 2) {
        const bool cols2 = c + 1 < blocks;
        const int8_t* b = bpk + c * steps * tile;
        const BlockAmx kernel = row_kernels[cols2 ? 1 : 0];
        const int8_t* tl = tail_bytes ? tail : nullptr;
        int32_t* out = acc + r0 * ld_acc + 16 * c;
        if (16 * (c + (cols2 ? 2 : 1)) <= n) {  // every C tile inside N: store straight into acc
          kernel(a0, lda, tl, full_steps, kb, b, tile, out, out + 16, out + 16 * ld_acc, out + 16 * ld_acc + 16,
                 4 * ld_acc);
          continue;
        }
        // A C tile passes N: the tiles go to the scratch (rows of 64 bytes), then the valid columns out.
        kernel(a0, lda, tl, full_steps, kb, b, tile, ctmp[0], ctmp[1], ctmp[2], ctmp[3], 64);
        for (int h = 0; h < 2; ++h)
          for (int cc = 0; cc < (cols2 ? 2 : 1); ++cc) {
            const int64_t j0 = 16 * (c + cc), valid = n - j0 < 16 ? n - j0 : 16;
            const int r_end = rows < 16 * (h + 1) ? rows : 16 * (h + 1);
            for (int r = 16 * h; r < r_end; ++r)
              memcpy(out + r * ld_acc + 16 * cc, ctmp[2 * h + cc] + (r - 16 * h) * 16, size_t(valid) * 4);
          }
      }
    }
  }
  _tile_release();
}

}  // namespace intbert
