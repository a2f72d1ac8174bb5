// What jaxrnn's native loops (lstm_loop.cc, rnn_loops.cc) share: vectorisable exp, sigmoid
// and tanh, and the split of the batch into one row block per OpenMP thread. Everything is in
// an anonymous namespace: each file compiles its own copy.

#ifndef JAXRNN_NATIVE_LOOP_COMMON_H_
#define JAXRNN_NATIVE_LOOP_COMMON_H_

#include <omp.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

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
