// What jaxrnn's native loops (lstm_loop.cc, rnn_loops.cc) share: vectorisable exp, sigmoid
// and tanh, and the split of the batch into one row block per OpenMP thread. Everything is in
// an anonymous namespace: each file compiles its own copy.

#ifndef JAXRNN_NATIVE_LOOP_COMMON_H_
#define JAXRNN_NATIVE_LOOP_COMMON_H_

#include <immintrin.h>
#include <omp.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "oneapi/dnnl/dnnl.h"

namespace {

// The shared part of Exp and Expm1 for x in [-88, 88]: Cody-Waite reduction x = n ln 2 + r,
// then e^r - 1 by a degree-6 polynomial (Cephes' expf coefficients); `scale` receives 2^n.
// Written so that compilers vectorise the loops calling it: no library calls, no branches.
inline float ExpReduced(float x, float* scale) {
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
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  __builtin_memcpy(scale, &bits, sizeof(*scale));
  return p * r * r + r;
}

// exp(x) for x in [-88, 88], about 1 ulp.
inline float Exp(float x) {
  float scale;
  const float em1 = ExpReduced(x, &scale);
  return (em1 + 1.0f) * scale;
}

inline float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }

// exp(x) - 1 for x in [-88, 88], accurate near 0 as well (where exp(x) - 1 cancels):
// 2^n (e^r - 1) + (2^n - 1), both terms exact or nearly so.
inline float Expm1(float x) {
  float scale;
  const float em1 = ExpReduced(x, &scale);
  return em1 * scale + (scale - 1.0f);
}

// tanh(x) = e / (e + 2) with e = exp(2x) - 1: one exponential and one division, no branch
// (within 2.5 ulp of the exact value over [-30, 30]; +-1 beyond 44, where 2x is clamped).
inline float Tanh(float x) {
  const float e = Expm1(2.0f * x);
  return e / (e + 2.0f);
}

// The offset of step t's row of example n in a (T, N, width) array, or an (N, T, width) one
// when `batch_major`.
struct Layout {
  Layout(int64_t T, int64_t N, int64_t width, bool batch_major)
      : step(batch_major ? width : N * width), example(batch_major ? T * width : width) {}
  int64_t operator()(int64_t t, int64_t n) const { return t * step + n * example; }
  const int64_t step, example;
};

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

// Asks Linux to back the 2 MiB-aligned pages inside an output buffer that the kernel is about
// to write for the first time with transparent huge pages (`madvise(MADV_HUGEPAGE)`), where the
// system allows it on request. XLA:CPU takes a program's working memory in one allocation per
// call; above glibc's 32 MiB mmap threshold that memory is mapped afresh each call and every
// 4 KiB page faults on its first write, which costs more than the write itself. The advice
// changes no value; it does nothing where huge pages are off, and pages already in memory keep
// their size. The loops ask only when training (the forward that keeps residuals): for the
// forward alone it made some processes 2-5x slower (the LSTM at (16, 2000, 64, 128), torch's
// initial weights: calls of 20 ms in one process, of 70-110 ms for stretches of calls in
// another, the time spent in the gates pass, whose stores go to the advised output), and
// without it no process was.
// JAXRNN_NATIVE_HUGEPAGES=0 turns it off.
void AdviseHugePages(float* data, int64_t count) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* s = std::getenv("JAXRNN_NATIVE_HUGEPAGES");
    return !(s && s[0] == '0' && s[1] == '\0');
  }();
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (!enabled || data == nullptr || count <= 0) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = begin + static_cast<uintptr_t>(count) * sizeof(float);
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)data;
  (void)count;
#endif
}

// The step matmuls `c (m, N) = a (m, K) @ w (K, N)` (or `c += ...`) of the native loops, whose
// weights stay the same for every step of a call. On x86-64 CPUs with AVX2 and FMA but without
// AVX-512, oneDNN's sgemm ran these small-row products far below a core's rate once the weights
// outgrew L2 (26 GFLOP/s for `(16 x 384) @ (384 x 1024)` on a Zen 2 core that reaches 83 on
// large products), so there the weights are packed once per call into panels of 16 columns and
// each step runs the register-tiled kernel below (89-98 GFLOP/s on the same core, for 8 to 32
// rows). On AVX-512 CPUs, where the sgemm was measured at the core's rate, and for calls of
// fewer than 4 rows (where the kernel's narrow tiles lose), each step calls the sgemm.
// JAXRNN_NATIVE_GEMM=sgemm or =packed overrides the choice (packed needs AVX2 and FMA).
//
// Each element of the packed kernel's product is one chain of fused multiply-adds over k in
// order, starting from zero or from c: a row's values do not depend on how many rows the call
// has or where the row sits among them.
inline bool PackedKernelByDefault() {
  static const bool use = [] {
    const char* s = std::getenv("JAXRNN_NATIVE_GEMM");
    if (s && std::strcmp(s, "sgemm") == 0) return false;
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return false;
    if (s && std::strcmp(s, "packed") == 0) return true;
    return !__builtin_cpu_supports("avx512f");
  }();
  return use;
}

constexpr int64_t kPanel = 16;  // columns of a packed panel: two AVX2 registers
constexpr int64_t kTileRows = 6;  // rows of a register tile: 12 accumulators

// c[0:R, 0:16] (+)= a[0:R, 0:K] @ panel (K, 16), one FMA chain per element.
template <int R>
__attribute__((target("avx2,fma"), always_inline)) inline void PackedTile(
    const float* __restrict a, int64_t lda, const float* __restrict panel, int64_t K,
    float* __restrict c, int64_t ldc, bool accumulate) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda, *a4 = a + 4 * lda,
              *a5 = a + 5 * lda;
#define JAXRNN_LOAD(r)                              \
  if constexpr (R > r) {                            \
    c##r##0 = _mm256_loadu_ps(c + r * ldc);         \
    c##r##1 = _mm256_loadu_ps(c + r * ldc + 8);     \
  }
  if (accumulate) {
    JAXRNN_LOAD(0) JAXRNN_LOAD(1) JAXRNN_LOAD(2) JAXRNN_LOAD(3) JAXRNN_LOAD(4) JAXRNN_LOAD(5)
  }
#undef JAXRNN_LOAD
  for (int64_t k = 0; k < K; ++k) {
    const __m256 w0 = _mm256_load_ps(panel + k * kPanel), w1 = _mm256_load_ps(panel + k * kPanel + 8);
    __m256 x;
#define JAXRNN_ROW(r)                                \
  if constexpr (R > r) {                             \
    x = _mm256_broadcast_ss(a##r + k);               \
    c##r##0 = _mm256_fmadd_ps(x, w0, c##r##0);       \
    c##r##1 = _mm256_fmadd_ps(x, w1, c##r##1);       \
  }
    JAXRNN_ROW(0) JAXRNN_ROW(1) JAXRNN_ROW(2) JAXRNN_ROW(3) JAXRNN_ROW(4) JAXRNN_ROW(5)
#undef JAXRNN_ROW
  }
#define JAXRNN_STORE(r)                              \
  if constexpr (R > r) {                             \
    _mm256_storeu_ps(c + r * ldc, c##r##0);          \
    _mm256_storeu_ps(c + r * ldc + 8, c##r##1);      \
  }
  JAXRNN_STORE(0) JAXRNN_STORE(1) JAXRNN_STORE(2) JAXRNN_STORE(3) JAXRNN_STORE(4) JAXRNN_STORE(5)
#undef JAXRNN_STORE
}

// Every row tile of a call against one panel.
__attribute__((target("avx2,fma"))) inline void PackedPanel(int64_t m, const float* a,
                                                            int64_t lda, const float* panel,
                                                            int64_t K, float* c, int64_t ldc,
                                                            bool accumulate) {
  // Tiles of 6 rows, and the rest in tiles of 3 to 5 where there are that many (a tile of 1 or
  // 2 rows has too few independent FMA chains to hide their latency): 8 rows as 4 + 4, 13 as
  // 6 + 4 + 3.
  int64_t r = 0;
  const int64_t rest = m % kTileRows;
  const int64_t sixes = m / kTileRows - (rest > 0 && rest < 3 && m > kTileRows ? 1 : 0);
  for (; r < sixes * kTileRows; r += kTileRows)
    PackedTile<kTileRows>(a + r * lda, lda, panel, K, c + r * ldc, ldc, accumulate);
  while (r < m) {
    const int64_t left = m - r;
    const int64_t rows = left <= 5 ? left : (left + 1) / 2;  // 7 -> 4 + 3, 8 -> 4 + 4
    const float* ar = a + r * lda;
    float* cr = c + r * ldc;
    switch (rows) {
      case 5: PackedTile<5>(ar, lda, panel, K, cr, ldc, accumulate); break;
      case 4: PackedTile<4>(ar, lda, panel, K, cr, ldc, accumulate); break;
      case 3: PackedTile<3>(ar, lda, panel, K, cr, ldc, accumulate); break;
      case 2: PackedTile<2>(ar, lda, panel, K, cr, ldc, accumulate); break;
      default: PackedTile<1>(ar, lda, panel, K, cr, ldc, accumulate); break;
    }
    r += rows;
  }
}

// c (m, N) (+)= a (m, K) @ the packed weights, panel by panel (a panel, K x 16, is read once
// and stays in L1 while every row tile of the call uses it).
inline void PackedMatmul(int64_t m, const float* a, int64_t lda, const float* packed, int64_t K,
                         int64_t N, float* c, int64_t ldc, bool accumulate) {
  const int64_t full = N / kPanel, rest = N - full * kPanel;
  for (int64_t j = 0; j < full; ++j)
    PackedPanel(m, a, lda, packed + j * K * kPanel, K, c + j * kPanel, ldc, accumulate);
  // The last, zero-padded panel, a tile's rows at a time through a full-width buffer on the
  // stack (no allocation in the step).
  for (int64_t r0 = 0; rest > 0 && r0 < m; r0 += kTileRows) {
    const int64_t rows = std::min(kTileRows, m - r0);
    alignas(32) float buffer[kTileRows * kPanel];
    float* cj = c + r0 * ldc + full * kPanel;
    if (accumulate)
      for (int64_t r = 0; r < rows; ++r) std::copy_n(cj + r * ldc, rest, buffer + r * kPanel);
    PackedPanel(rows, a + r0 * lda, lda, packed + full * K * kPanel, K, buffer, kPanel,
                accumulate);
    for (int64_t r = 0; r < rows; ++r) std::copy_n(buffer + r * kPanel, rest, cj + r * ldc);
  }
}

class StepMatmul {
 public:
  // `w` (K, N) row-major, the same for every step; `rows`: the batch the call splits over
  // threads (at least 4 rows a thread when it is 4 or more, see Threads).
  StepMatmul(const float* w, int64_t K, int64_t N, int64_t rows)
      : w_(w), K_(K), N_(N), packed_(rows >= 4 && PackedKernelByDefault()) {
    if (!packed_ || K == 0 || N == 0) return;
    const int64_t panels = (N + kPanel - 1) / kPanel;
    storage_.reset(static_cast<float*>(std::aligned_alloc(64, panels * K * kPanel * 4)));
    if (storage_ == nullptr) {  // no memory for the packed copy: the sgemm reads w in place
      packed_ = false;
      return;
    }
    float* out = storage_.get();
    for (int64_t j = 0; j < panels; ++j) {
      const int64_t width = std::min(kPanel, N - j * kPanel);
      for (int64_t k = 0; k < K; ++k, out += kPanel) {
        std::copy_n(w + k * N + j * kPanel, width, out);
        std::fill(out + width, out + kPanel, 0.0f);
      }
    }
  }

  // c (m, N) = a (m, K) @ w, or c += a @ w when `accumulate`; `lda`, `ldc`: the row strides.
  void operator()(int64_t m, const float* a, int64_t lda, float* c, int64_t ldc,
                  bool accumulate) const {
    if (m == 0 || N_ == 0) return;
    if (!packed_) {
      dnnl_sgemm('N', 'N', m, N_, K_, 1.0f, a, lda, w_, N_, accumulate ? 1.0f : 0.0f, c, ldc);
      return;
    }
    PackedMatmul(m, a, lda, storage_.get(), K_, N_, c, ldc, accumulate);
  }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  const float* w_;
  int64_t K_, N_;
  bool packed_;
  std::unique_ptr<float, Free> storage_;
};

// Runs `block(b0, b1)` for the examples [b0, b1) of a batch of n, one block per OpenMP thread
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
