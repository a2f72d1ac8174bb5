// XLA FFI handler `jaxrnn_transpose`: a float32 matrix `a (R, K)` transposed into `out (K, R)`,
// for the native path's weight gradients (jaxrnn.drivers._native.rows_matmul). XLA:CPU folds
// its own transposes into a matmul's operand, and then runs the product with a transposed
// operand on a slower library; a custom call cannot be folded. It also ran faster than XLA's
// transpose there (a span's hidden states, 640 x 512, in the LSTM's training step at
// (64, 100, 256, 512): 0.28 against 1.2-1.6 ms; benchmarks/DISPATCH.md): 8 x 8 blocks through
// AVX2 registers where the CPU has them, the output rows split over the cores.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "loop_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 8;

// The 8 x 8 block at `a` (row stride `lda`) transposed to `out` (row stride `ldo`).
__attribute__((target("avx2"))) inline void Block8(const float* a, int64_t lda, float* out,
                                                    int64_t ldo) {
  __m256 r[8], t[8], s[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(a + i * lda);
  // Pairs of rows interleaved, then quadruples, then the 128-bit halves exchanged.
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + i * ldo, _mm256_permute2f128_ps(s[i], s[i + 4], 0x20));
    _mm256_storeu_ps(out + (i + 4) * ldo, _mm256_permute2f128_ps(s[i], s[i + 4], 0x31));
  }
}

// Output rows [k0, k1) of the transpose of `a (R, K)`: strips of 8 output rows, each walked
// along R in 8 x 8 blocks (AVX2) or element by element (the edges, and CPUs without AVX2).
void TransposeRows(const float* a, float* out, int64_t R, int64_t K, int64_t k0, int64_t k1,
                   bool avx2) {
  for (int64_t k = k0; k < k1; k += kBlock) {
    const int64_t kn = std::min(kBlock, k1 - k);
    int64_t r = 0;
    if (avx2 && kn == kBlock)
      for (; r + kBlock <= R; r += kBlock) Block8(a + r * K + k, K, out + k * R + r, R);
    for (; r < R; ++r)
      for (int64_t j = 0; j < kn; ++j) out[(k + j) * R + r] = a[r * K + k + j];
  }
}

ffi::Error TransposeImpl(ffi::Buffer<ffi::F32> a, ffi::ResultBuffer<ffi::F32> out) {
  auto dims = a.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("jaxrnn_transpose: a must be 2-D");
  const int64_t R = dims[0], K = dims[1];
  auto out_dims = out->dimensions();
  if (out_dims.size() != 2 || out_dims[0] != K || out_dims[1] != R)
    return ffi::Error::InvalidArgument("jaxrnn_transpose: out must be (K, R)");
  if (R == 0 || K == 0) return ffi::Error::Success();
  static const bool avx2 = __builtin_cpu_supports("avx2");
  const float* src = a.typed_data();
  float* dst = out->typed_data();
  // Threads split the output rows in strips of 8 (ForEachBlock gives each thread at least 4
  // units: here strips).
  const int64_t strips = (K + kBlock - 1) / kBlock;
  ForEachBlock(strips, [&](int64_t s0, int64_t s1) {
    TransposeRows(src, dst, R, K, s0 * kBlock, std::min(K, s1 * kBlock), avx2);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_transpose, TransposeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a (R, K)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out (K, R)
