// The int8 GEMM in plain scalar C++: the definition that gemm_avx2 / gemm_avx512 / gemm_amx equal
// bit for bit (csrc/tests/test_gemm.cpp compares them).
//
//   acc[r][j] = sum_{t < k} A[r][t] * W[j][t]        (int32; A int8 or uint8, W int8)
//
// Packed layout (ref): W copied to a dense row-major [n][k] int8 matrix, so the strided views the
// engine passes (K of attention: stride_k = 1; V^T: stride_n = 1, stride_k = ld) all read the same
// afterwards. No padding, no alignment needs.
//
// Bound: |A[r][t] * W[j][t]| <= 255 * 128 (uint8 A) or 128 * 128 (int8 A), and the caller
// guarantees k * 255 * 128 < 2^31 (checked at freeze; kernels.h), so every partial sum fits an
// int32 and the int32 sum below is exact (no overflow, so no undefined behaviour either).
#include <string.h>

#include "kernels.h"

namespace intbert {

size_t packed_b_bytes_ref(int64_t n, int64_t k) { return size_t(n) * size_t(k); }

void pack_b_ref(const int8_t* w, int64_t n, int64_t k, int64_t stride_n, int64_t stride_k, void* dst) {
  int8_t* out = static_cast<int8_t*>(dst);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t t = 0; t < k; ++t) out[j * k + t] = w[j * stride_n + t * stride_k];
}

void gemm_ref(const void* packed, int64_t n, int64_t k, const void* a, int a_unsigned, int64_t lda, int64_t m,
              int32_t* acc, int64_t ld_acc) {
  const int8_t* w = static_cast<const int8_t*>(packed);
  for (int64_t r = 0; r < m; ++r) {
    const int8_t* as = static_cast<const int8_t*>(a) + r * lda;
    const uint8_t* au = static_cast<const uint8_t*>(a) + r * lda;
    for (int64_t j = 0; j < n; ++j) {
      const int8_t* wj = w + j * k;
      int32_t sum = 0;
      if (a_unsigned)
        for (int64_t t = 0; t < k; ++t) sum += int32_t(au[t]) * wj[t];
      else
        for (int64_t t = 0; t < k; ++t) sum += int32_t(as[t]) * wj[t];
      acc[r * ld_acc + j] = sum;
    }
  }
}

}  // namespace intbert
