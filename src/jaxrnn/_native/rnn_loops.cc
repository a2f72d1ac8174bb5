// XLA FFI handlers that run the GRU's and the simple (Elman) RNN's sequential loops for jaxrnn's
// fused driver on CPU (jaxrnn.drivers._native), as lstm_loop.cc does for the LSTM: the batch
// split into one column block per OpenMP thread, each block's steps on its own thread, the
// matmuls by oneDNN's sgemm in feature-major form, the gates in one vectorisable pass that also
// writes the coefficients of the step's tangent.
//
// Layouts (float32, row-major, time-major; a step at `t >= lengths[n]` keeps example n's
// state, outputs zeros and zero coefficients):
//
// jaxrnn_gru_loop (gate order r, z, n; cells/_gru.py):
//   in:  x (T, N, D)   wx_t = w_x^T (3H, D)   wh_t = w_h^T (3H, H)   b_x, b_h (3H)   h0 (N, H)
//        lengths (N,) int32
//   out: ys (T, N, H)   h_T (N, H)   k_r, k_z, k_xn, k_hn, u (T, N, H) when `training` (else
//        with zero elements): the fused step's residuals (cells/_gru.py's _fused_step).
// jaxrnn_gru_loop_transpose: see the comment above its registration.
//
// jaxrnn_rnn_loop (`relu` picks the activation, else tanh; cells/_simple.py):
//   in:  x (T, N, D)   w_cat = [w_x; w_h]^T (H, D + H)   b (H)   h0 (N, H)   lengths (N,)
//   out: ys (T, N, H)   h_T (N, H)   slope (T, N, H) when `training`: the activation's
//        derivative at each step.
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

// The GRU update of `count` (hidden unit, column) pairs of a thread's block at once, from the
// input's (`xr, xz, xn`) and the state's (`hr, hz, hn`) pre-activations, biases included, and
// the step mask `valid` of the same layout; writes the residuals `kr .. uj`, zero past an
// example's length. One flat loop: rows of a few columns each cost a loop prologue apiece.
__attribute__((always_inline)) inline void GruGates(
    const float* __restrict xr, const float* __restrict xz, const float* __restrict xn,
    const float* __restrict hr, const float* __restrict hz, const float* __restrict hn,
    float* __restrict h, float* __restrict y, float* __restrict kr, float* __restrict kz,
    float* __restrict kxn, float* __restrict khn, float* __restrict uj,
    const float* __restrict valid, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const float r = Sigmoid(xr[i] + hr[i]);
    const float u = Sigmoid(xz[i] + hz[i]);
    const float g_n = hn[i];
    const float n = Tanh(xn[i] + r * g_n);
    const float h_prev = h[i];
    const float h_new = (1.0f - u) * n + u * h_prev;
    const float k_n = (1.0f - u) * (1.0f - n * n);
    const bool v = valid[i] != 0.0f;
    kr[i] = v ? k_n * g_n * r * (1.0f - r) : 0.0f;
    kz[i] = v ? (h_prev - n) * u * (1.0f - u) : 0.0f;
    kxn[i] = v ? k_n : 0.0f;
    khn[i] = v ? k_n * r : 0.0f;
    uj[i] = v ? u : 0.0f;
    h[i] = v ? h_new : h_prev;
  }
  // Its own loop: with this store in the one above, GCC no longer vectorises that loop for the
  // baseline x86-64 target.
  for (int64_t i = 0; i < count; ++i) y[i] = valid[i] != 0.0f ? h[i] : 0.0f;
}

// One thread's columns [b0, b1) over all steps: per step `zx (3H, m) = wx_t @ x_t^T + b_x` and
// `zh (3H, m) = wh_t @ h + b_h` (the biases as the sgemms' initial C), then the gates. `res`
// holds the five residual outputs (or nullptrs).
__attribute__((target_clones("arch=x86-64-v3", "default")))
void GruBlock(const float* x, const float* wx_t, const float* wh_t, const float* b_x,
              const float* b_h, const float* h0, const int32_t* lengths, float* ys, float* h_t,
              float* const* res, int64_t T, int64_t N, int64_t D, int64_t H, int64_t b0,
              int64_t b1, bool reverse) {
  const int64_t G = 3 * H, m = b1 - b0, Hm = H * m;
  std::vector<float> xt(D * m), h(Hm), zx(G * m), zh(G * m), y(Hm), k(5 * Hm);
  MaskPlane mask(lengths, b0, m, H);
  const std::vector<float> bx_plane = RowPlane(b_x, G, m), bh_plane = RowPlane(b_h, G, m);
  Transpose(h0 + b0 * H, m, H, H, h.data(), m);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    const float* valid = mask.At(t);
    Transpose(x + (t * N + b0) * D, m, D, D, xt.data(), m);
    std::copy(bx_plane.begin(), bx_plane.end(), zx.begin());
    std::copy(bh_plane.begin(), bh_plane.end(), zh.begin());
    dnnl_sgemm('N', 'N', G, m, D, 1.0f, wx_t, D, xt.data(), m, 1.0f, zx.data(), m);
    dnnl_sgemm('N', 'N', G, m, H, 1.0f, wh_t, H, h.data(), m, 1.0f, zh.data(), m);
    GruGates(&zx[0], &zx[Hm], &zx[2 * Hm], &zh[0], &zh[Hm], &zh[2 * Hm], h.data(), y.data(),
             &k[0], &k[Hm], &k[2 * Hm], &k[3 * Hm], &k[4 * Hm], valid, Hm);
    const int64_t at = (t * N + b0) * H;
    Transpose(y.data(), H, m, m, ys + at, H);
    if (res[0] != nullptr)
      for (int i = 0; i < 5; ++i) Transpose(&k[i * Hm], H, m, m, res[i] + at, H);
  }
  Transpose(h.data(), H, m, m, h_t + b0 * H, H);
}

// The GRU's transposed tangent loop on one thread's columns [b0, b1): `Y_t = ct_t + A_next^T
// Y_next` from the last step in processing order to the first, with
// `A_t^T y = w_h @ [k_r y; k_z y; k_hn y] + u y` (see jaxrnn_gru_loop_transpose below).
__attribute__((target_clones("arch=x86-64-v3", "default")))
void GruTransposeBlock(const float* ct, const float* k_r, const float* k_z, const float* k_hn,
                       const float* u, const float* w_h, const int32_t* lengths, float* y_out,
                       int64_t T, int64_t N, int64_t H, int64_t b0, int64_t b1, bool reverse) {
  const int64_t G = 3 * H, m = b1 - b0;
  std::vector<float> y(H * m), a(H * m, 0.0f), g(G * m), coef(4 * H * m), valid(m);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s, at = (t * N + b0) * H;
    Transpose(ct + at, m, H, H, y.data(), m);
    for (int64_t i = 0; i < H * m; ++i) y[i] += a[i];
    Transpose(y.data(), H, m, m, y_out + at, H);
    if (s == 0) break;
    ValidMask(lengths, b0, m, t, valid.data());
    const float* step_coef[4] = {k_r + at, k_z + at, k_hn + at, u + at};
    for (int i = 0; i < 4; ++i) Transpose(step_coef[i], m, H, H, &coef[i * H * m], m);
    const int64_t Hm = H * m;
    for (int64_t i = 0; i < Hm; ++i) {
      g[i] = coef[i] * y[i];
      g[Hm + i] = coef[Hm + i] * y[i];
      g[2 * Hm + i] = coef[2 * Hm + i] * y[i];
    }
    // a (H, m) = w_h (H, 3H) @ g (3H, m) + u y.
    dnnl_sgemm('N', 'N', H, m, G, 1.0f, w_h, G, g.data(), m, 0.0f, a.data(), m);
    for (int64_t i = 0; i < Hm; ++i) a[i] += coef[3 * Hm + i] * y[i];
    HoldPastLength(a.data(), y.data(), valid.data(), H, m);
  }
}

ffi::Error GruLoopImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wx_t,
                       ffi::Buffer<ffi::F32> wh_t, ffi::Buffer<ffi::F32> b_x,
                       ffi::Buffer<ffi::F32> b_h, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> ys,
                       ffi::ResultBuffer<ffi::F32> h_t, ffi::ResultBuffer<ffi::F32> k_r,
                       ffi::ResultBuffer<ffi::F32> k_z, ffi::ResultBuffer<ffi::F32> k_xn,
                       ffi::ResultBuffer<ffi::F32> k_hn, ffi::ResultBuffer<ffi::F32> u,
                       bool reverse, bool training) {
  auto dims = x.dimensions();
  auto h_dims = h0.dimensions();
  if (dims.size() != 3 || h_dims.size() != 2)
    return ffi::Error::InvalidArgument("jaxrnn_gru_loop: x must be (T, N, D), h0 (N, H)");
  const int64_t T = dims[0], N = dims[1], D = dims[2], H = h_dims[1];
  if (Count(wx_t) != 3 * H * D || Count(wh_t) != 3 * H * H || Count(b_x) != 3 * H ||
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
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    GruBlock(x.typed_data(), wx_t.typed_data(), wh_t.typed_data(), b_x.typed_data(),
             b_h.typed_data(), h0.typed_data(), lengths.typed_data(), ys->typed_data(),
             h_t->typed_data(), res, T, N, D, H, b0, b1, reverse);
  });
  return ffi::Error::Success();
}

ffi::Error GruLoopTransposeImpl(ffi::Buffer<ffi::F32> ct, ffi::Buffer<ffi::F32> k_r,
                                ffi::Buffer<ffi::F32> k_z, ffi::Buffer<ffi::F32> k_hn,
                                ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> w_h,
                                ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> y,
                                bool reverse) {
  auto dims = ct.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("jaxrnn_gru_loop_transpose: rank");
  const int64_t T = dims[0], N = dims[1], H = dims[2], per = T * N * H;
  if (Count(k_r) != per || Count(k_z) != per || Count(k_hn) != per || Count(u) != per ||
      Count(w_h) != H * 3 * H || Count(lengths) != N || Count(*y) != per)
    return ffi::Error::InvalidArgument("jaxrnn_gru_loop_transpose: inconsistent shapes");
  if (T == 0 || N == 0) return ffi::Error::Success();
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    GruTransposeBlock(ct.typed_data(), k_r.typed_data(), k_z.typed_data(), k_hn.typed_data(),
                      u.typed_data(), w_h.typed_data(), lengths.typed_data(), y->typed_data(), T,
                      N, H, b0, b1, reverse);
  });
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------------------------------
// Simple RNN

// The simple RNN's update of `count` (hidden unit, column) pairs at once: `z` holds the
// pre-activations, bias included, and is overwritten by the activation's slope (zero past an
// example's length, where `valid`, of the same layout, is 0).
template <bool kRelu>
__attribute__((always_inline)) inline void RnnGates(float* __restrict z, float* __restrict h,
                                                    float* __restrict y,
                                                    const float* __restrict valid,
                                                    int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const float a = z[i];
    // relu as XLA's max(a, 0): NaN stays NaN; its slope is 1 only where the output is > 0.
    const float h_new = kRelu ? (a < 0.0f ? 0.0f : a) : Tanh(a);
    const float d = kRelu ? (h_new > 0.0f ? 1.0f : 0.0f) : 1.0f - h_new * h_new;
    const bool v = valid[i] != 0.0f;
    z[i] = v ? d : 0.0f;
    h[i] = v ? h_new : h[i];
    y[i] = v ? h_new : 0.0f;
  }
}

// One thread's columns [b0, b1) over all steps: per step `z (H, m) = w_cat @ [x_t; h] + b` (the
// bias as the sgemm's initial C), then `h = act(z)` and its slope.
__attribute__((target_clones("arch=x86-64-v3", "default")))
void RnnBlock(const float* x, const float* w_cat, const float* bias, const float* h0,
              const int32_t* lengths, float* ys, float* h_t, float* slope, int64_t T, int64_t N,
              int64_t D, int64_t H, int64_t b0, int64_t b1, bool reverse, bool relu) {
  const int64_t K = D + H, m = b1 - b0, Hm = H * m;
  std::vector<float> xh(K * m), z(Hm), y(Hm);
  MaskPlane mask(lengths, b0, m, H);
  const std::vector<float> bias_plane = RowPlane(bias, H, m);
  float* h = xh.data() + D * m;
  Transpose(h0 + b0 * H, m, H, H, h, m);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    const float* valid = mask.At(t);
    Transpose(x + (t * N + b0) * D, m, D, D, xh.data(), m);
    std::copy(bias_plane.begin(), bias_plane.end(), z.begin());
    dnnl_sgemm('N', 'N', H, m, K, 1.0f, w_cat, K, xh.data(), m, 1.0f, z.data(), m);
    if (relu)
      RnnGates<true>(z.data(), h, y.data(), valid, Hm);
    else
      RnnGates<false>(z.data(), h, y.data(), valid, Hm);
    const int64_t at = (t * N + b0) * H;
    Transpose(y.data(), H, m, m, ys + at, H);
    if (slope != nullptr) Transpose(z.data(), H, m, m, slope + at, H);
  }
  Transpose(h, H, m, m, h_t + b0 * H, H);
}

// The simple RNN's transposed tangent loop on one thread's columns [b0, b1):
// `A_t^T y = w_h @ (slope_t y)` (see jaxrnn_rnn_loop_transpose below).
__attribute__((target_clones("arch=x86-64-v3", "default")))
void RnnTransposeBlock(const float* ct, const float* slope, const float* w_h,
                       const int32_t* lengths, float* y_out, int64_t T, int64_t N, int64_t H,
                       int64_t b0, int64_t b1, bool reverse) {
  const int64_t m = b1 - b0;
  std::vector<float> y(H * m), a(H * m, 0.0f), g(H * m), valid(m);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s, at = (t * N + b0) * H;
    Transpose(ct + at, m, H, H, y.data(), m);
    for (int64_t i = 0; i < H * m; ++i) y[i] += a[i];
    Transpose(y.data(), H, m, m, y_out + at, H);
    if (s == 0) break;
    ValidMask(lengths, b0, m, t, valid.data());
    Transpose(slope + at, m, H, H, g.data(), m);
    for (int64_t i = 0; i < H * m; ++i) g[i] *= y[i];
    dnnl_sgemm('N', 'N', H, m, H, 1.0f, w_h, H, g.data(), m, 0.0f, a.data(), m);
    HoldPastLength(a.data(), y.data(), valid.data(), H, m);
  }
}

ffi::Error RnnLoopImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w_cat,
                       ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> ys,
                       ffi::ResultBuffer<ffi::F32> h_t, ffi::ResultBuffer<ffi::F32> slope,
                       bool reverse, bool training, bool relu) {
  auto dims = x.dimensions();
  auto h_dims = h0.dimensions();
  if (dims.size() != 3 || h_dims.size() != 2)
    return ffi::Error::InvalidArgument("jaxrnn_rnn_loop: x must be (T, N, D), h0 (N, H)");
  const int64_t T = dims[0], N = dims[1], D = dims[2], H = h_dims[1];
  if (Count(w_cat) != H * (D + H) || Count(bias) != H || Count(h0) != N * H ||
      Count(lengths) != N || Count(*ys) != T * N * H || Count(*h_t) != N * H ||
      Count(*slope) != (training ? T * N * H : 0))
    return ffi::Error::InvalidArgument("jaxrnn_rnn_loop: inconsistent shapes");
  if (N == 0) return ffi::Error::Success();
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    RnnBlock(x.typed_data(), w_cat.typed_data(), bias.typed_data(), h0.typed_data(),
             lengths.typed_data(), ys->typed_data(), h_t->typed_data(),
             training ? slope->typed_data() : nullptr, T, N, D, H, b0, b1, reverse, relu);
  });
  return ffi::Error::Success();
}

ffi::Error RnnLoopTransposeImpl(ffi::Buffer<ffi::F32> ct, ffi::Buffer<ffi::F32> slope,
                                ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::S32> lengths,
                                ffi::ResultBuffer<ffi::F32> y, bool reverse) {
  auto dims = ct.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("jaxrnn_rnn_loop_transpose: rank");
  const int64_t T = dims[0], N = dims[1], H = dims[2], per = T * N * H;
  if (Count(slope) != per || Count(w_h) != H * H || Count(lengths) != N || Count(*y) != per)
    return ffi::Error::InvalidArgument("jaxrnn_rnn_loop_transpose: inconsistent shapes");
  if (T == 0 || N == 0) return ffi::Error::Success();
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    RnnTransposeBlock(ct.typed_data(), slope.typed_data(), w_h.typed_data(),
                      lengths.typed_data(), y->typed_data(), T, N, H, b0, b1, reverse);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_gru_loop, GruLoopImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // wx_t
                                  .Arg<ffi::Buffer<ffi::F32>>()  // wh_t
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
                                  .Attr<bool>("training"));

// The transpose of the GRU's tangent loop for the native path's `custom_linear_solve`. The
// tangent state after step t, X_t = dh_t, solves X_t = A_t X_prev + b_t, where within the
// example's length `A_t dh = k_r m_r + k_z m_z + k_hn m_n + u dh` with `[m_r, m_z, m_n] =
// dh @ w_h`, and A_t is the identity past it. Given cotangents ct on every X_t, this returns Y
// solving Y_t = ct_t + A_next^T Y_next, processing order reversed. Layouts (float32):
//   in:  ct, k_r, k_z, k_hn, u (T, N, H)   w_h (H, 3H)   lengths (N,)   out: y (T, N, H)
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_gru_loop_transpose, GruLoopTransposeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k_r
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k_z
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k_hn
                                  .Arg<ffi::Buffer<ffi::F32>>()  // u
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h
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
                                  .Attr<bool>("relu"));

// The transpose of the simple RNN's tangent loop: as jaxrnn_gru_loop_transpose, with
// `A_t dh = slope_t (dh @ w_h)` within the example's length. Layouts (float32):
//   in:  ct, slope (T, N, H)   w_h (H, H)   lengths (N,)   out: y (T, N, H)
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_rnn_loop_transpose, RnnLoopTransposeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct
                                  .Arg<ffi::Buffer<ffi::F32>>()  // slope
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Attr<bool>("reverse"));
