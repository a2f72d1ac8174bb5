// What jaxrnn's native loops (lstm_loop.cc, rnn_loops.cc) share: vectorisable exp, sigmoid
// and tanh, a tiled transpose, bias planes and step masks, and the split of the batch into one
// column block per OpenMP thread. Everything is in an anonymous namespace: each file compiles
// its own copy.

#ifndef JAXRNN_NATIVE_LOOP_COMMON_H_
#define JAXRNN_NATIVE_LOOP_COMMON_H_

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

namespace {

// exp(x) for x in [-88, 88], about 1 ulp (Cody-Waite reduction by ln 2 and a degree-6
// polynomial, Cephes' expf coefficients), written so that compilers vectorise the loops
// calling it: no library calls, no branches.
inline float Exp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  const float kLog2e = 1.44269504088896341f;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float n = (x * kLog2e + kRound) - kRound;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }

// tanh: Cephes' odd minimax polynomial for |x| < 0.625 (accurate near 0, where 1 - 2/(e^2x + 1)
// cancels), else 1 - 2 / (e^{2|x|} + 1) with the sign restored.
inline float Tanh(float x) {
  float ax = x < 0.0f ? -x : x;
  float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  float small = x + x * z * p;
  float big = 1.0f - 2.0f / (Exp(2.0f * ax) + 1.0f);
  big = x < 0.0f ? -big : big;
  return ax < 0.625f ? small : big;
}

// An 8 x 8 tile of a transpose: dst[c][r] = src[r][c] for r, c < 8.
void Tile8Scalar(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  for (int64_t r = 0; r < 8; ++r)
    for (int64_t c = 0; c < 8; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

__attribute__((target("avx2"))) void Tile8Avx2(const float* src, int64_t ld_src, float* dst,
                                               int64_t ld_dst) {
  __m256 r[8], t[8], u[8];
  for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(src + k * ld_src);
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
  }
  for (int k = 0; k < 8; k += 4) {
    u[k] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int k = 0; k < 4; ++k) {
    _mm256_storeu_ps(dst + k * ld_dst, _mm256_permute2f128_ps(u[k], u[k + 4], 0x20));
    _mm256_storeu_ps(dst + (k + 4) * ld_dst, _mm256_permute2f128_ps(u[k], u[k + 4], 0x31));
  }
}

using TileFn = void (*)(const float*, int64_t, float*, int64_t);
const TileFn kTile8 = __builtin_cpu_supports("avx2") ? Tile8Avx2 : Tile8Scalar;

// dst (cols, rows) = src (rows, cols)^T, src with row stride `ld_src`, dst with `ld_dst`; in
// 8 x 8 tiles (AVX2 shuffles where the CPU has them), as the strides here are often 4 KiB
// multiples, which a plain row or column order turns into cache-set conflicts.
inline void Transpose(const float* src, int64_t rows, int64_t cols, int64_t ld_src, float* dst,
                      int64_t ld_dst) {
  const int64_t full_r = rows - rows % 8, full_c = cols - cols % 8;
  for (int64_t r0 = 0; r0 < full_r; r0 += 8)
    for (int64_t c0 = 0; c0 < full_c; c0 += 8)
      kTile8(src + r0 * ld_src + c0, ld_src, dst + c0 * ld_dst + r0, ld_dst);
  for (int64_t r = 0; r < rows; ++r)  // the edges
    for (int64_t c = (r < full_r ? full_c : 0); c < cols; ++c)
      dst[c * ld_dst + r] = src[r * ld_src + c];
}

// A (rows, m) plane whose row j is `v[j]` in every column: a bias as a feature-major sgemm's
// initial C.
std::vector<float> RowPlane(const float* v, int64_t rows, int64_t m) {
  std::vector<float> plane(rows * m);
  for (int64_t j = 0; j < rows; ++j) std::fill_n(&plane[j * m], m, v[j]);
  return plane;
}

// The `valid` mask of a thread's columns [b0, b0 + m) at step t: 1 where the step is within
// the example's length.
inline void ValidMask(const int32_t* lengths, int64_t b0, int64_t m, int64_t t, float* valid) {
  for (int64_t b = 0; b < m; ++b) valid[b] = t < lengths[b0 + b] ? 1.0f : 0.0f;
}

// The same mask as a (rows, m) plane, every row alike, for gate loops that run over a whole
// plane at once; rebuilt only at the steps where the mask changes.
class MaskPlane {
 public:
  MaskPlane(const int32_t* lengths, int64_t b0, int64_t m, int64_t rows)
      : lengths_(lengths), b0_(b0), m_(m), row_(m, -1.0f), plane_(rows * m) {}

  const float* At(int64_t t) {
    bool changed = false;
    for (int64_t b = 0; b < m_; ++b) {
      const float v = t < lengths_[b0_ + b] ? 1.0f : 0.0f;
      changed |= v != row_[b];
      row_[b] = v;
    }
    if (changed)
      for (int64_t k = 0; k < static_cast<int64_t>(plane_.size()); k += m_)
        std::copy_n(row_.data(), m_, &plane_[k]);
    return plane_.data();
  }

 private:
  const int32_t* lengths_;
  int64_t b0_, m_;
  std::vector<float> row_, plane_;
};

// The backward substitution's last part: a step past an example's length passes its state's
// cotangent `y` through unchanged instead of `a`.
inline void HoldPastLength(float* __restrict a, const float* __restrict y,
                           const float* __restrict valid, int64_t H, int64_t m) {
  for (int64_t j = 0; j < H; ++j)
    for (int64_t b = 0; b < m; ++b) {
      const float v = valid[b];
      a[j * m + b] = v * a[j * m + b] + (1.0f - v) * y[j * m + b];
    }
}

template <typename B>
int64_t Count(const B& buffer) {
  return static_cast<int64_t>(buffer.element_count());
}

int Threads(int64_t n) {
  static const int configured = [] {
    const char* s = std::getenv("JAXRNN_NATIVE_THREADS");
    int v = s ? std::atoi(s) : 0;
    return v > 0 ? v : omp_get_num_procs();
  }();
  // At least 4 examples a thread: below that the matmul is a matrix-vector product.
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(configured, n / 4)));
}

// Runs `block(b0, b1)` for the columns [b0, b1) of a batch of n, one block per OpenMP thread
// (`Threads(n)` of them); each block runs all its steps alone, with no synchronisation.
template <typename Block>
void ForEachBlock(int64_t n, Block&& block) {
  const int nt = Threads(n);
#pragma omp parallel num_threads(nt)
  {
    // Each thread's sgemm calls run on that thread alone (with one thread here, oneDNN would
    // otherwise start a team of its own for every step's small matmul).
    omp_set_num_threads(1);
    const int id = omp_get_thread_num(), k = omp_get_num_threads();
    const int64_t b0 = n * id / k, b1 = n * (id + 1) / k;
    if (b1 > b0) block(b0, b1);
  }
}

}  // namespace

#endif  // JAXRNN_NATIVE_LOOP_COMMON_H_
