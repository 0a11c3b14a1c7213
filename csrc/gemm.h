// GEMM entry points beyond kernels.h's INTBERT_DECLARE_GEMM: for tests and benchmarks, not the engine.
#pragma once
#include <stdint.h>

namespace intbert {

// gemm_amx without its small-problem shortcut: always the AMX tiles, whatever the shape (gemm_amx hands
// problems too small to repay its tile configuration to gemm_avx512, which reads the same layout).
// csrc/tests/test_gemm.cpp runs both, so the tile code is tested on every awkward size too.
void gemm_amx_tiles(const void* packed, int64_t n, int64_t k, const void* a, int a_unsigned, int64_t lda, int64_t m,
                    int32_t* acc, int64_t ld_acc);

}  // namespace intbert
