// Drivers of the native engine: what one Python call runs (engine.cpp). Each splits its work over
// the thread pool and calls the kernels of the selected ISA (kernels.h).
#pragma once
#include <stdint.h>

#include "kernels.h"

namespace intbert {

// The ISA the drivers use: detected_isa() unless lowered by INTBERT_ISA or set_isa().
Isa current_isa();
// Lower (or restore) the level; a level above detected_isa() is refused (returns false).
bool set_isa(Isa isa);

// A weight packed once for y = x @ W^T on one ISA (the layout differs per ISA), as column chunks:
// part i holds columns [i*chunk, min(n, (i+1)*chunk)). Weights whose epilogue is elementwise are cut
// into chunks of about 512 KiB, so a chunk stays in L2 while the row blocks stream past it; weights
// that feed a row-wise epilogue (LayerNorm needs whole rows) are one chunk.
struct PackedWeight {
  Isa isa;
  int64_t n, k;
  int64_t chunk;       // columns per part (the last may be narrower)
  int64_t parts;       // number of parts
  void** data;         // parts pointers, each 64-byte aligned, owned
};
PackedWeight* pack_weight(const int8_t* w, int64_t n, int64_t k, int64_t stride_n, int64_t stride_k, Isa isa,
                          bool chunked);
void free_weight(PackedWeight* w);

// x: int8 [m, k] rows at x + r*lda. Outputs row-major with their own leading dimension.
void linear_i32(const PackedWeight& w, const int8_t* x, int64_t m, int64_t lda, int32_t* out, int64_t ld_out);
void linear_requant(const PackedWeight& w, const int8_t* x, int64_t m, int64_t lda, const int32_t* bias,
                    const RequantC& rq, int8_t* out, int64_t ld_out);
void linear_gelu_requant2(const PackedWeight& w, const int8_t* x, int64_t m, int64_t lda, const int32_t* bias,
                          const GeluC& g, const RequantC& rq1, const RequantC& rq2, int8_t* out, int64_t ld_out);
void linear_residual_ln_requant(const PackedWeight& w, const int8_t* x, int64_t m, int64_t lda, const int32_t* bias,
                                const int8_t* res, int64_t ld_res, const ResidualC& add, const LayerNormC& ln,
                                const RequantC& rq, int8_t* out, int64_t ld_out);

// Packed-token attention: sequence s owns rows starts[s] .. starts[s+1]-1 of q, k, v (int8, leading
// dimension ld, head h at columns h*d .. h*d+d-1); every key of a sequence is attended (padding
// was packed away). Per (sequence, head): scores = q k^T (int32) -> i-softmax (uint8) -> p v (int32)
// -> requant (ctx, per channel over the hidden size) -> int8 out[row, h*d + j]. The score matrix
// lives in a per-thread block of at most ATTENTION_ROWS rows.
void attention(const int8_t* q, const int8_t* k, const int8_t* v, int64_t ld, const int64_t* starts, int64_t nseq,
               int64_t heads, int64_t d, const SoftmaxC& sm, const RequantC& ctx, int8_t* out, int64_t ld_out);

void embed(const int8_t* word, const int8_t* tt, const int8_t* pos, const int64_t* ids, const int64_t* tids,
           const int64_t* pids, int64_t rows, int64_t n, const ResidualC& add1, const ResidualC& add2,
           const LayerNormC& ln, const RequantC& rq, int8_t* out, int64_t ld_out);

void requant_i32(const int32_t* q, int64_t ld_q, int64_t rows, int64_t n, const RequantC& rq, int8_t* out,
                 int64_t ld_out);

}  // namespace intbert
