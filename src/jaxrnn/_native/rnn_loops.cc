// XLA FFI handlers that run the GRU's and the simple (Elman) RNN's sequential loops for jaxrnn's
// fused driver on CPU (jaxrnn.drivers._native), as lstm_loop.cc does for the LSTM: the batch
// split into one row block per OpenMP thread, each block's steps on its own thread, the
// matmuls in batch-major form (loop_common.h's StepMatmul: the packed AVX2 kernel or oneDNN's
// sgemm, by CPU), the gates row by row in one vectorisable pass
// that also writes the coefficients of the step's tangent in place.
//
// Layouts (float32, row-major, time-major; a step at `t >= lengths[n]` keeps example n's
// state, outputs zeros and zero coefficients; when `training`, `ys` holds instead the hidden
// state each step is entered with, as in lstm_loop.cc):
//
// jaxrnn_gru_loop (gate order r, z, n; cells/_gru.py):
//   in:  x (T, N, D), or (N, T, D) when `batch_major`   w_x (D, 3H)   w_h (H, 3H)
//        b_x, b_h (3H)   h0 (N, H)   lengths (N,) int32
//   out: ys (T, N, H), or (N, T, H) when `batch_major`   h_T (N, H)
//        k_r, k_z, k_xn, k_hn, u (T, N, H) when `training` (else with zero elements): the
//        fused step's residuals (cells/_gru.py's _fused_step).
// jaxrnn_gru_loop_transpose: see the comment above its registration.
//
// jaxrnn_rnn_loop (`relu` picks the activation, else tanh; cells/_simple.py):
//   in:  x (T, N, D) or (N, T, D)   w_cat = [w_x; w_h] (D + H, H)   b (H)   h0 (N, H)
//        lengths (N,)
//   out: ys (T, N, H) or (N, T, H)   h_T (N, H)   slope (T, N, H) when `training`: the
//        activation's derivative at each step.
// jaxrnn_rnn_loop_transpose: see the comment above its registration.

#include <cstdint>
#include <vector>

#include "loop_common.h"
#include "oneapi/dnnl/dnnl.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ----------------------------------------------------------------------------------------------
// GRU

// The GRU update of one example's `H` hidden units from the input's (`xr, xz, xn`) and the
// state's (`hr, hz, hn`) pre-activations, biases included: updates `h` in place, copies it to
// the output `y` and writes the residuals `kr .. uj`.
__attribute__((always_inline)) inline void GruGates(
    const float* __restrict xr, const float* __restrict xz, const float* __restrict xn,
    const float* __restrict hr, const float* __restrict hz, const float* __restrict hn,
    float* __restrict h, float* __restrict y, float* __restrict kr, float* __restrict kz,
    float* __restrict kxn, float* __restrict khn, float* __restrict uj, int64_t H) {
  for (int64_t i = 0; i < H; ++i) {
    const float r = Sigmoid(xr[i] + hr[i]);
    const float u = Sigmoid(xz[i] + hz[i]);
    const float g_n = hn[i];
    const float n = Tanh(xn[i] + r * g_n);
    const float h_prev = h[i];
    const float h_new = (1.0f - u) * n + u * h_prev;
    const float k_n = (1.0f - u) * (1.0f - n * n);
    kr[i] = k_n * g_n * r * (1.0f - r);
    kz[i] = (h_prev - n) * u * (1.0f - u);
    kxn[i] = k_n;
    khn[i] = k_n * r;
    uj[i] = u;
    h[i] = h_new;
    y[i] = h_new;
  }
}

// One thread's examples [b0, b1) over all steps, batch-major: per step
// `zx (m, 3H) = x_t @ w_x + b_x` and `zh (m, 3H) = h @ w_h + b_h` (the biases as the sgemms'
// initial C), then the gates row by row, writing outputs and residuals in place. `res` holds
// the five residual outputs (or nullptrs).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void GruBlock(const float* x, const StepMatmul& w_x, const StepMatmul& w_h, const float* b_x,
              const float* b_h, const float* h0, const int32_t* lengths, float* ys, float* h_t,
              float* const* res, int64_t T, int64_t N, int64_t D, int64_t H, int64_t b0,
              int64_t b1, bool reverse, bool batch_major) {
  const int64_t G = 3 * H, m = b1 - b0, Hm = H * m;
  const Layout x_at(T, N, D, batch_major), y_at(T, N, H, batch_major);
  const bool training = res[0] != nullptr;
  std::vector<float> h(h0 + b0 * H, h0 + b1 * H), zx(G * m), zh(G * m);
  std::vector<float> scratch(training ? 0 : 5 * Hm), bx_rows(G * m), bh_rows(G * m);
  std::vector<float> y_scratch(training ? H : 0);
  // Batch-major, a step's rows of x lie T * D floats apart: they are gathered first, as the
  // LSTM's and simple RNN's `[x_t, h]` rows are, since rows at such strides can share the few
  // L1 sets that the packed kernel's reads cycle through (benchmarks/DISPATCH.md, "The packed
  // step kernel (AVX2)").
  std::vector<float> xt(batch_major ? m * D : 0);
  for (int64_t r = 0; r < m; ++r) {
    std::copy_n(b_x, G, &bx_rows[r * G]);
    std::copy_n(b_h, G, &bh_rows[r * G]);
  }
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s, at = t * N + b0;
    std::copy(bx_rows.begin(), bx_rows.end(), zx.begin());
    std::copy(bh_rows.begin(), bh_rows.end(), zh.begin());
    if (batch_major) {
      for (int64_t r = 0; r < m; ++r) std::copy_n(x + x_at(t, b0 + r), D, &xt[r * D]);
      w_x(m, xt.data(), D, zx.data(), G, /*accumulate=*/true);
    } else {
      w_x(m, x + x_at(t, b0), D, zx.data(), G, /*accumulate=*/true);
    }
    w_h(m, h.data(), H, zh.data(), G, /*accumulate=*/true);
    if (training)
      for (int64_t r = 0; r < m; ++r) std::copy_n(&h[r * H], H, ys + y_at(t, b0 + r));
    float* k[5];
    for (int i = 0; i < 5; ++i) k[i] = training ? res[i] + at * H : &scratch[i * Hm];
    for (int64_t r = 0; r < m; ++r) {
      const int64_t o = r * H;
      if (t >= lengths[b0 + r]) {  // past the example's length: state kept, zeros out
        for (int i = 0; i < 5; ++i) std::fill_n(k[i] + o, H, 0.0f);
        if (!training) std::fill_n(ys + y_at(t, b0 + r), H, 0.0f);
        continue;
      }
      const float* xr = &zx[r * G];
      const float* hr = &zh[r * G];
      GruGates(xr, xr + H, xr + 2 * H, hr, hr + H, hr + 2 * H, &h[o],
               training ? y_scratch.data() : ys + y_at(t, b0 + r), k[0] + o, k[1] + o, k[2] + o,
               k[3] + o, k[4] + o, H);
    }
  }
  std::copy(h.begin(), h.end(), h_t + b0 * H);
}

// The GRU's transposed tangent loop on one thread's examples [b0, b1): `Y_t = ct_t + A_next^T
// Y_next` from the last step in processing order to the first, with
// `A_t^T y = [k_r y, k_z y, k_hn y] @ w_h^T + u y` (see jaxrnn_gru_loop_transpose below).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void GruTransposeBlock(const float* ct, const float* k_r, const float* k_z, const float* k_hn,
                       const float* u, const StepMatmul& w_h_t, const int32_t* lengths,
                       float* y_out, int64_t T, int64_t N, int64_t H, int64_t b0, int64_t b1,
                       bool reverse) {
  const int64_t G = 3 * H, m = b1 - b0, Hm = H * m;
  std::vector<float> a(Hm, 0.0f), g(G * m);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s, at = (t * N + b0) * H;
    float* y = y_out + at;  // may be `ct` itself (aliased): read before written
    const float* c = ct + at;
    for (int64_t i = 0; i < Hm; ++i) y[i] = c[i] + a[i];
    if (s == 0) break;
    for (int64_t r = 0; r < m; ++r) {
      const int64_t o = r * H;
      const float* __restrict kr = k_r + at + o;
      const float* __restrict kz = k_z + at + o;
      const float* __restrict kn = k_hn + at + o;
      const float* __restrict yr = y + o;
      float* __restrict gr = &g[r * G];
      for (int64_t i = 0; i < H; ++i) {
        gr[i] = kr[i] * yr[i];
        gr[H + i] = kz[i] * yr[i];
        gr[2 * H + i] = kn[i] * yr[i];
      }
    }
    // a (m, H) = g (m, 3H) @ w_h^T (3H, H) + u y.
    w_h_t(m, g.data(), G, a.data(), H, /*accumulate=*/false);
    const float* __restrict uj = u + at;
    for (int64_t i = 0; i < Hm; ++i) a[i] += uj[i] * y[i];
    // A step past an example's length passes its state's cotangent through unchanged.
    for (int64_t r = 0; r < m; ++r)
      if (t >= lengths[b0 + r]) std::copy_n(y + r * H, H, &a[r * H]);
  }
}

ffi::Error GruLoopImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w_x,
                       ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> b_x,
                       ffi::Buffer<ffi::F32> b_h, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> ys,
                       ffi::ResultBuffer<ffi::F32> h_t, ffi::ResultBuffer<ffi::F32> k_r,
                       ffi::ResultBuffer<ffi::F32> k_z, ffi::ResultBuffer<ffi::F32> k_xn,
                       ffi::ResultBuffer<ffi::F32> k_hn, ffi::ResultBuffer<ffi::F32> u,
                       bool reverse, bool training, bool batch_major) {
  auto dims = x.dimensions();
  auto h_dims = h0.dimensions();
  if (dims.size() != 3 || h_dims.size() != 2)
    return ffi::Error::InvalidArgument("jaxrnn_gru_loop: x must be (T, N, D), h0 (N, H)");
  const int64_t T = dims[batch_major ? 1 : 0], N = dims[batch_major ? 0 : 1], D = dims[2];
  const int64_t H = h_dims[1];
  if (Count(w_x) != 3 * H * D || Count(w_h) != 3 * H * H || Count(b_x) != 3 * H ||
      Count(b_h) != 3 * H || Count(h0) != N * H || Count(lengths) != N ||
      Count(*ys) != T * N * H || Count(*h_t) != N * H)
    return ffi::Error::InvalidArgument("jaxrnn_gru_loop: inconsistent shapes");
  const int64_t per = training ? T * N * H : 0;
  float* res[5] = {k_r->typed_data(), k_z->typed_data(), k_xn->typed_data(),
                   k_hn->typed_data(), u->typed_data()};
  const int64_t counts[5] = {Count(*k_r), Count(*k_z), Count(*k_xn), Count(*k_hn), Count(*u)};
  for (int i = 0; i < 5; ++i) {
    if (counts[i] != per)
      return ffi::Error::InvalidArgument("jaxrnn_gru_loop: inconsistent residual shapes");
    if (!training) res[i] = nullptr;
  }
  if (N == 0) return ffi::Error::Success();
  if (training) {
    AdviseHugePages(ys->typed_data(), Count(*ys));
    for (int i = 0; i < 5; ++i) AdviseHugePages(res[i], counts[i]);
  }
  const StepMatmul step_x(w_x.typed_data(), D, 3 * H, N), step_h(w_h.typed_data(), H, 3 * H, N);
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    GruBlock(x.typed_data(), step_x, step_h, b_x.typed_data(),
             b_h.typed_data(), h0.typed_data(), lengths.typed_data(), ys->typed_data(),
             h_t->typed_data(), res, T, N, D, H, b0, b1, reverse, batch_major);
  });
  return ffi::Error::Success();
}

ffi::Error GruLoopTransposeImpl(ffi::Buffer<ffi::F32> ct, ffi::Buffer<ffi::F32> k_r,
                                ffi::Buffer<ffi::F32> k_z, ffi::Buffer<ffi::F32> k_hn,
                                ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> w_h_t,
                                ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> y,
                                bool reverse) {
  auto dims = ct.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("jaxrnn_gru_loop_transpose: rank");
  const int64_t T = dims[0], N = dims[1], H = dims[2], per = T * N * H;
  if (Count(k_r) != per || Count(k_z) != per || Count(k_hn) != per || Count(u) != per ||
      Count(w_h_t) != 3 * H * H || Count(lengths) != N || Count(*y) != per)
    return ffi::Error::InvalidArgument("jaxrnn_gru_loop_transpose: inconsistent shapes");
  if (T == 0 || N == 0) return ffi::Error::Success();
  const StepMatmul step(w_h_t.typed_data(), 3 * H, H, N);
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    GruTransposeBlock(ct.typed_data(), k_r.typed_data(), k_z.typed_data(), k_hn.typed_data(),
                      u.typed_data(), step, lengths.typed_data(), y->typed_data(), T,
                      N, H, b0, b1, reverse);
  });
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------------------------------
// Simple RNN

// The simple RNN's update of one example's `H` units: `z` holds the pre-activations, bias
// included, and is overwritten by the activation's slope; `h` is updated in place and copied
// to the output `y`.
template <bool kRelu>
__attribute__((always_inline)) inline void RnnGates(float* __restrict z, float* __restrict h,
                                                    float* __restrict y, int64_t H) {
  for (int64_t i = 0; i < H; ++i) {
    const float a = z[i];
    // relu as XLA's max(a, 0): NaN stays NaN; its slope is 1 only where the output is > 0.
    const float h_new = kRelu ? (a < 0.0f ? 0.0f : a) : Tanh(a);
    z[i] = kRelu ? (h_new > 0.0f ? 1.0f : 0.0f) : 1.0f - h_new * h_new;
    h[i] = h_new;
    y[i] = h_new;
  }
}

// One thread's examples [b0, b1) over all steps, batch-major: per step
// `z (m, H) = [x_t, h] (m, D + H) @ w_cat (D + H, H) + b` (the bias as the sgemm's initial C,
// `z` the residual `slope` itself when training), then `h = act(z)` and its slope.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void RnnBlock(const float* x, const StepMatmul& w_cat, const float* bias, const float* h0,
              const int32_t* lengths, float* ys, float* h_t, float* slope, int64_t T, int64_t N,
              int64_t D, int64_t H, int64_t b0, int64_t b1, bool reverse, bool relu,
              bool batch_major) {
  const int64_t K = D + H, m = b1 - b0;
  const Layout x_at(T, N, D, batch_major), y_at(T, N, H, batch_major);
  const bool training = slope != nullptr;
  std::vector<float> xh(m * K), z(training ? 0 : m * H), bias_rows(m * H);
  std::vector<float> y_scratch(training ? H : 0);
  for (int64_t r = 0; r < m; ++r) {
    std::copy_n(h0 + (b0 + r) * H, H, &xh[r * K + D]);
    std::copy_n(bias, H, &bias_rows[r * H]);
  }
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s, at = t * N + b0;
    for (int64_t r = 0; r < m; ++r) std::copy_n(x + x_at(t, b0 + r), D, &xh[r * K]);
    if (training)
      for (int64_t r = 0; r < m; ++r) std::copy_n(&xh[r * K + D], H, ys + y_at(t, b0 + r));
    float* zt = slope != nullptr ? slope + at * H : z.data();
    std::copy(bias_rows.begin(), bias_rows.end(), zt);
    w_cat(m, xh.data(), K, zt, H, /*accumulate=*/true);
    for (int64_t r = 0; r < m; ++r) {
      float* y = training ? y_scratch.data() : ys + y_at(t, b0 + r);
      if (t >= lengths[b0 + r]) {  // past the example's length: state kept, zeros out
        std::fill_n(zt + r * H, H, 0.0f);
        std::fill_n(y, H, 0.0f);
      } else if (relu) {
        RnnGates<true>(zt + r * H, &xh[r * K + D], y, H);
      } else {
        RnnGates<false>(zt + r * H, &xh[r * K + D], y, H);
      }
    }
  }
  for (int64_t r = 0; r < m; ++r) std::copy_n(&xh[r * K + D], H, h_t + (b0 + r) * H);
}

// The simple RNN's transposed tangent loop on one thread's examples [b0, b1):
// `A_t^T y = (slope_t y) @ w_h^T` (see jaxrnn_rnn_loop_transpose below).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void RnnTransposeBlock(const float* ct, const float* slope, const StepMatmul& w_h_t,
                       const int32_t* lengths, float* y_out, int64_t T, int64_t N, int64_t H,
                       int64_t b0, int64_t b1, bool reverse) {
  const int64_t m = b1 - b0, Hm = H * m;
  std::vector<float> a(Hm, 0.0f), g(Hm);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s, at = (t * N + b0) * H;
    float* y = y_out + at;  // may be `ct` itself (aliased): read before written
    const float* c = ct + at;
    const float* __restrict d = slope + at;
    for (int64_t i = 0; i < Hm; ++i) y[i] = c[i] + a[i];
    if (s == 0) break;
    for (int64_t i = 0; i < Hm; ++i) g[i] = d[i] * y[i];
    w_h_t(m, g.data(), H, a.data(), H, /*accumulate=*/false);
    for (int64_t r = 0; r < m; ++r)
      if (t >= lengths[b0 + r]) std::copy_n(y + r * H, H, &a[r * H]);
  }
}

ffi::Error RnnLoopImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w_cat,
                       ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> ys,
                       ffi::ResultBuffer<ffi::F32> h_t, ffi::ResultBuffer<ffi::F32> slope,
                       bool reverse, bool training, bool relu, bool batch_major) {
  auto dims = x.dimensions();
  auto h_dims = h0.dimensions();
  if (dims.size() != 3 || h_dims.size() != 2)
    return ffi::Error::InvalidArgument("jaxrnn_rnn_loop: x must be (T, N, D), h0 (N, H)");
  const int64_t T = dims[batch_major ? 1 : 0], N = dims[batch_major ? 0 : 1], D = dims[2];
  const int64_t H = h_dims[1];
  if (Count(w_cat) != H * (D + H) || Count(bias) != H || Count(h0) != N * H ||
      Count(lengths) != N || Count(*ys) != T * N * H || Count(*h_t) != N * H ||
      Count(*slope) != (training ? T * N * H : 0))
    return ffi::Error::InvalidArgument("jaxrnn_rnn_loop: inconsistent shapes");
  if (N == 0) return ffi::Error::Success();
  if (training) {
    AdviseHugePages(ys->typed_data(), Count(*ys));
    AdviseHugePages(slope->typed_data(), Count(*slope));
  }
  const StepMatmul step(w_cat.typed_data(), D + H, H, N);
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    RnnBlock(x.typed_data(), step, bias.typed_data(), h0.typed_data(),
             lengths.typed_data(), ys->typed_data(), h_t->typed_data(),
             training ? slope->typed_data() : nullptr, T, N, D, H, b0, b1, reverse, relu,
             batch_major);
  });
  return ffi::Error::Success();
}

ffi::Error RnnLoopTransposeImpl(ffi::Buffer<ffi::F32> ct, ffi::Buffer<ffi::F32> slope,
                                ffi::Buffer<ffi::F32> w_h_t, ffi::Buffer<ffi::S32> lengths,
                                ffi::ResultBuffer<ffi::F32> y, bool reverse) {
  auto dims = ct.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("jaxrnn_rnn_loop_transpose: rank");
  const int64_t T = dims[0], N = dims[1], H = dims[2], per = T * N * H;
  if (Count(slope) != per || Count(w_h_t) != H * H || Count(lengths) != N || Count(*y) != per)
    return ffi::Error::InvalidArgument("jaxrnn_rnn_loop_transpose: inconsistent shapes");
  if (T == 0 || N == 0) return ffi::Error::Success();
  const StepMatmul step(w_h_t.typed_data(), H, H, N);
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    RnnTransposeBlock(ct.typed_data(), slope.typed_data(), step,
                      lengths.typed_data(), y->typed_data(), T, N, H, b0, b1, reverse);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_gru_loop, GruLoopImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h_T
                                  .Ret<ffi::Buffer<ffi::F32>>()  // k_r
                                  .Ret<ffi::Buffer<ffi::F32>>()  // k_z
                                  .Ret<ffi::Buffer<ffi::F32>>()  // k_xn
                                  .Ret<ffi::Buffer<ffi::F32>>()  // k_hn
                                  .Ret<ffi::Buffer<ffi::F32>>()  // u
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("training")
                                  .Attr<bool>("batch_major"));

// The transpose of the GRU's tangent loop for the native path's `custom_linear_solve`. The
// tangent state after step t, X_t = dh_t, solves X_t = A_t X_prev + b_t, where within the
// example's length `A_t dh = k_r m_r + k_z m_z + k_hn m_n + u dh` with `[m_r, m_z, m_n] =
// dh @ w_h`, and A_t is the identity past it. Given cotangents ct on every X_t, this returns Y
// solving Y_t = ct_t + A_next^T Y_next, processing order reversed. Layouts (float32):
//   in:  ct, k_r, k_z, k_hn, u (T, N, H)   w_h_t = w_h^T (3H, H)   lengths (N,)
//   out: y (T, N, H)
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_gru_loop_transpose, GruLoopTransposeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k_r
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k_z
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k_hn
                                  .Arg<ffi::Buffer<ffi::F32>>()  // u
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h_t
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Attr<bool>("reverse"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_rnn_loop, RnnLoopImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_cat
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h_T
                                  .Ret<ffi::Buffer<ffi::F32>>()  // slope
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("training")
                                  .Attr<bool>("relu")
                                  .Attr<bool>("batch_major"));

// The transpose of the simple RNN's tangent loop: as jaxrnn_gru_loop_transpose, with
// `A_t dh = slope_t (dh @ w_h)` within the example's length. Layouts (float32):
//   in:  ct, slope (T, N, H)   w_h_t = w_h^T (H, H)   lengths (N,)   out: y (T, N, H)
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_rnn_loop_transpose, RnnLoopTransposeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct
                                  .Arg<ffi::Buffer<ffi::F32>>()  // slope
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h_t
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Attr<bool>("reverse"));
