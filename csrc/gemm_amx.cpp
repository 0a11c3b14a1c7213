// int8 GEMM with AMX-INT8 tiles: the twin of gemm_ref (csrc/gemm_ref.cpp), equal bit for bit.
//
// tdpbssd (int8 A x int8 B) and tdpbusd (uint8 A x int8 B) add, for each C element, 4-byte dot products
// into int32 without intermediate saturation; so both activation types are used as they are and no
// compensation is needed. Sums are exact by the caller's guarantee K * 255 * 128 < 2^31 (kernels.h).
//
// Tiles (palette 1; the configuration is checked on every call, since tile state belongs to the thread):
//   tmm0..3  C, 16 rows x 16 int32 (64 bytes): the 2 x 2 block of a 32 x 32 output tile
//   tmm4, 5  A, 16 rows x KB bytes: rows r0 .. r0+15 and r0+16 .. r0+31, k = s*KB .. s*KB+KB-1
//   tmm6, 7  B, KB/4 rows x 64 bytes: two column blocks of 16, in the VNNI layout below
// with KB = 64 (the K step), or K rounded up to 4 when K <= 64 (head sizes 32, 15: no wasted steps).
//   C[i][j] += sum_{q < KB/4} sum_{b < 4} A[i][4q + b] * B[q][4j + b]
// so B row q holds, for column j, the four bytes W[j][4q .. 4q + 3]: the "VNNI" 4-byte interleave.
//
// Packed layout: gemm_avx512's "VNNI tiles" (pack_b_amx is pack_b_avx512): Kp = K rounded up to KB
// (zero past K), steps = Kp / KB; columns in blocks of 16 (zero columns past N), blocks in pairs. The tile
// of column block c and step s (T = 16 * KB bytes: KB/4 rows of 64 bytes, row q = W[16c + j][s*KB + 4q + b]
// at byte 4j + b) lies at
//   (c & ~1) * steps * T + (s * w + (c & 1)) * T,   w = 2 for a full pair, 1 for a lone last block,
// so the two B tiles a step needs are adjacent and a pair's panel is one contiguous stream. The VNNI
// compensation array after the tiles is not used here (tdpbssd takes int8 A as it is). Sharing the layout
// lets gemm_amx hand problems too small to repay a tile configuration to gemm_avx512.
//
// Tails, without copies in the inner loop:
//   * M: the last row block's A and C tiles are configured with its rows, so tile loads and stores
//     touch exactly the rows that exist;
//   * N: the last column block's B and C tiles are configured with its columns, likewise;
//   * K: the last, partial step is copied once per 128-row chunk into a zero-padded scratch of 64-byte
//     rows on the stack (the B bytes past K are zero, so the padding adds nothing).
// A tile store is never read back by vector loads: that stalls until the store completes (measured:
// storing every C tile to a scratch and copying it out halved the speed).
//
// Blocking: rows in chunks of 128 -> column pairs -> the chunk's 32-row blocks -> K steps: 2 A + 2 B
// tile loads feed 4 tdp (the classic 2 x 2 AMX microkernel). A pair's B panel comes from L2/L3 once per
// chunk and is reused from L1 by the chunk's other row blocks.
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,amx-tile,amx-int8")
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "gemm.h"
#include "kernels.h"

namespace intbert {

static const int64_t kAmxMC = 128;  // rows per chunk: its 32-row blocks share each B pair while it is in L1

static inline int64_t ceil_div_amx(int64_t a, int64_t b) { return (a + b - 1) / b; }

// K step of the tiles: 64, or K rounded up to 4 when K <= 64 (VnniTiles::kb in gemm_avx512.cpp: the layout).
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

// rows: valid A/C rows of the row block (1 .. 32); kb: K step in bytes; cols0 / cols1: valid columns
// (1 .. 16) of the pair's first / second column block. A narrow block gets narrow B and C tiles (a
// tdp needs C.colsb == B.colsb), so loads and stores touch only columns that exist.
static void configure_amx(int rows, int64_t kb, int cols0, int cols1) {
  AmxTileConfig cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  const int top = rows < 16 ? rows : 16, bottom = rows > 16 ? rows - 16 : 0;
  const int cols[2] = {cols0, cols1};
  for (int t = 0; t < 4; ++t) {  // C: tmm0, 1 rows 0-15; tmm2, 3 rows 16-31; tmm0, 2 first column block
    cfg.rows[t] = uint8_t(t < 2 ? top : bottom);
    cfg.colsb[t] = cfg.rows[t] ? uint16_t(4 * cols[t & 1]) : 0;
  }
  cfg.rows[4] = uint8_t(top);
  cfg.colsb[4] = uint16_t(kb);
  cfg.rows[5] = uint8_t(bottom);
  cfg.colsb[5] = bottom ? uint16_t(kb) : 0;
  for (int t = 6; t < 8; ++t) {
    cfg.rows[t] = uint8_t(kb / 4);
    cfg.colsb[t] = uint16_t(4 * cols[t - 6]);
  }
  // LDTILECFG costs about 70 ns (it also zeroes every tile); STTILECFG and a compare cost a few. The
  // thread's configuration is read back rather than remembered, since other code on this thread (oneDNN
  // under torch, say) may have loaded its own since our last call.
  AmxTileConfig current;
  _tile_storeconfig(&current);
  if (memcmp(&current, &cfg, sizeof cfg) != 0) _tile_loadconfig(&cfg);
}

// The layout is the one gemm_avx512 reads too (VNNI tiles, see gemm_avx512.cpp): AMX loads its tiles
// as they are and ignores the compensation array at the end.
size_t packed_b_bytes_amx(int64_t n, int64_t k) { return packed_b_bytes_avx512(n, k); }

void pack_b_amx(const int8_t* w, int64_t n, int64_t k, int64_t stride_n, int64_t stride_k, void* dst) {
  pack_b_avx512(w, n, k, stride_n, stride_k, dst);
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
    const int8_t* at = s < full_steps ? a0 + s * kb : tail;
    const int64_t ast = s < full_steps ? lda : 64;
    const int8_t* bt = b + s * bstep;
    // Loads interleaved with the products that free their tile first: tiles are not renamed, so a load
    // into tmm4..7 waits for the last product reading the old contents.
    _tile_loadd(4, at, ast);
    _tile_loadd(6, bt, 64);
    if (UNSIGNED) _tile_dpbusd(0, 4, 6); else _tile_dpbssd(0, 4, 6);
    if (COLS2) {
      _tile_loadd(7, bt + tile, 64);
      if (UNSIGNED) _tile_dpbusd(1, 4, 7); else _tile_dpbssd(1, 4, 7);
    }
    if (ROWS2) {
      _tile_loadd(5, at + 16 * ast, ast);
      if (UNSIGNED) _tile_dpbusd(2, 5, 6); else _tile_dpbssd(2, 5, 6);
      if (COLS2) {
        if (UNSIGNED) _tile_dpbusd(3, 5, 7); else _tile_dpbssd(3, 5, 7);
      }
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

void gemm_amx_tiles(const void* packed, int64_t n, int64_t k, const void* a, int a_unsigned, int64_t lda, int64_t m,
                    int32_t* acc, int64_t ld_acc) {
  if (m <= 0) return;
  // Other AMX users on this thread (onnxruntime's MLAS, oneDNN) load their tile configuration once and
  // assume it stays: leaving ours behind made MLAS's next tile instruction raise SIGILL (seen in `intbert
  // demo`). So the caller's configuration is saved here and put back (or the tiles released) at the end.
  AmxTileConfig saved;
  _tile_storeconfig(&saved);
  const int64_t kb = step_bytes_amx(k), tile = 16 * kb;
  const int64_t full_steps = k / kb, tail_bytes = k - full_steps * kb;  // tail: 0 .. kb-1 bytes of a last step
  const int64_t steps = full_steps + (tail_bytes ? 1 : 0);
  const int64_t blocks = ceil_div_amx(n, 16);
  const int last_cols = int(n - 16 * (blocks - 1));  // valid columns of the last block, 1 .. 16
  const int8_t* bpk = static_cast<const int8_t*>(packed);
  const int8_t* as = static_cast<const int8_t*>(a);
  alignas(64) int8_t tail[kAmxMC * 64];
  int cfg_rows = 0, cfg_cols0 = 0, cfg_cols1 = 0;  // the loaded configuration (none yet)
  for (int64_t m0 = 0; m0 < m; m0 += kAmxMC) {
    const int64_t mc = m - m0 < kAmxMC ? m - m0 : kAmxMC;
    const int8_t* am = as + m0 * lda;
    if (tail_bytes) {
      memset(tail, 0, size_t(mc) * 64);
      for (int64_t r = 0; r < mc; ++r) memcpy(tail + 64 * r, am + r * lda + full_steps * kb, size_t(tail_bytes));
    }
    // Pass 0: the full 32-row blocks; pass 1: the last, shorter block (its own tile rows).
    const int64_t full_end = mc / 32 * 32;
    for (int pass = 0; pass < 2; ++pass) {
      const int64_t rb_begin = pass == 0 ? 0 : full_end, rb_end = pass == 0 ? full_end : mc;
      if (rb_begin == rb_end) continue;
      const int rows = int(pass == 0 ? 32 : rb_end - rb_begin);
      const BlockAmx* row_kernels = kBlocksAmx[a_unsigned ? 1 : 0][rows > 16 ? 1 : 0];
      // Column pair outside, row blocks inside: a pair's B panel comes from L2/L3 once per chunk and is
      // reused from L1 by the chunk's other row blocks.
      for (int64_t c = 0; c < blocks; c += 2) {
        const bool cols2 = c + 1 < blocks;
        const int cols0 = cols2 ? 16 : (c + 1 == blocks ? last_cols : 16);
        const int cols1 = cols2 ? (c + 2 == blocks ? last_cols : 16) : 16;
        if (rows != cfg_rows || cols0 != cfg_cols0 || cols1 != cfg_cols1) {
          configure_amx(rows, kb, cols0, cols1);  // at most a few times per call: M and N tails
          cfg_rows = rows, cfg_cols0 = cols0, cfg_cols1 = cols1;
        }
        const BlockAmx kernel = row_kernels[cols2 ? 1 : 0];
        const int8_t* b = bpk + c * steps * tile;
        for (int64_t r0 = rb_begin; r0 < rb_end; r0 += 32) {
          int32_t* out = acc + (m0 + r0) * ld_acc + 16 * c;
          kernel(am + r0 * lda, lda, tail_bytes ? tail + 64 * r0 : nullptr, full_steps, kb, b, tile, out, out + 16,
                 out + 16 * ld_acc, out + 16 * ld_acc + 16, 4 * ld_acc);
        }
      }
    }
  }
  AmxTileConfig now;
  _tile_storeconfig(&now);
  if (memcmp(&now, &saved, sizeof now) != 0) {
    if (saved.palette != 0)
      _tile_loadconfig(&saved);  // the caller's tiles come back zeroed; MLAS / oneDNN reload their data per call
    else
      _tile_release();
  }
}

// Tile configurations a call of gemm_amx_tiles loads: one per (row block kind) x (column pair kind),
// where the kinds are full (32 rows; two blocks of 16 columns) and the tails (m % 32; n % 32).
static int64_t configurations_amx(int64_t m, int64_t n) {
  const int64_t row_kinds = (m >= 32 ? 1 : 0) + (m % 32 ? 1 : 0), col_kinds = (n >= 32 ? 1 : 0) + (n % 32 ? 1 : 0);
  return row_kinds * col_kinds;
}

// Multiply-adds gemm_avx512 does in the time one LDTILECFG costs, net of the tiles' higher rate, and its
// own fixed cost, from attention heads timed both ways (QK^T and PV alternating, L = 1..128, d = 32, 64):
// LDTILECFG about 70 ns; vpdpbusd at ~300 G multiply-adds/s against ~1500 on small tiles.
static const int64_t kMacsPerConfiguration = 26000, kMacsVnniOverhead = 7500;

void gemm_amx(const void* packed, int64_t n, int64_t k, const void* a, int a_unsigned, int64_t lda, int64_t m,
              int32_t* acc, int64_t ld_acc) {
  // A small problem costs more in tile configuration than in multiply-adds: VNNI on the same layout.
  if (m * n * k < configurations_amx(m, n) * kMacsPerConfiguration - kMacsVnniOverhead) {
    gemm_avx512(packed, n, k, a, a_unsigned, lda, m, acc, ld_acc);
    return;
  }
  gemm_amx_tiles(packed, n, k, a, a_unsigned, lda, m, acc, ld_acc);
}

}  // namespace intbert
