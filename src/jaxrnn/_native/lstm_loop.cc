// XLA FFI handlers that run the LSTM's sequential loops for jaxrnn's fused driver on CPU
// (jaxrnn.drivers._native): the forward loop, and the transpose of its tangent loop.
//
// XLA:CPU runs a `lax.scan` step as one thread's small matmul followed by separately scheduled
// elementwise kernels. Here the batch is split into column blocks, one per OpenMP thread, and
// each thread runs every step of its block on its own (no synchronisation between steps).
//
// Each step is one matmul, `z (4H, m) = w_cat (4H, D + H) @ [x_t; h] (D + H, m)`, in
// feature-major form (both operands row-major: oneDNN's sgemm ran this shape near the machine's
// matmul peak, and at half that speed batch-major or with a transposed operand), then the gates
// in one vectorisable pass that also writes the coefficients of the step's tangent. The tangent
// loop's transpose (the backward pass) is `jaxrnn_lstm_loop_transpose`, below. Layouts
// (float32, row-major, gate order i, f, g, o, time-major):
//   in:  x (T, N, D)   w_cat = [w_x; w_h]^T (4H, D + H)   bias (4H)   h0, c0 (N, H)
//        lengths (N,) int32
//   out: ys (T, N, H)   h_T, c_T (N, H)
//        when `training` (else with zero elements): coef (T, N, 4H), f, d_tanh (T, N, H), the
//        fused step's residuals (cells/_lstm.py's tangent_coefficients).
// A step at `t >= lengths[n]` keeps example n's carry, outputs zeros and zero coefficients.

#include <cstdint>
#include <vector>

#include "loop_common.h"
#include "oneapi/dnnl/dnnl.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The LSTM update of `count` (hidden unit, column) pairs of a thread's block at once: `zi .. zo`
// hold the gates' pre-activations (biases included) and are overwritten by the fused step's
// tangent coefficients (cells/_lstm.py's tangent_coefficients); `valid` is the step mask of the
// same layout. Zero coefficients past an example's length, where the backward pass ignores
// them. One flat loop: rows of a few columns each cost a loop prologue apiece.
__attribute__((always_inline)) inline void LstmGates(
    float* __restrict zi, float* __restrict zf, float* __restrict zg, float* __restrict zo,
    float* __restrict c, float* __restrict h, float* __restrict fs, float* __restrict dts,
    const float* __restrict valid, int64_t count) {
  for (int64_t k = 0; k < count; ++k) {
    const float i = Sigmoid(zi[k]), f = Sigmoid(zf[k]), g = Tanh(zg[k]), o = Sigmoid(zo[k]);
    const float c_prev = c[k];
    const float c_new = f * c_prev + i * g;
    const float tanh_c = Tanh(c_new);
    const bool v = valid[k] != 0.0f;
    zi[k] = v ? i * (1.0f - i) * g : 0.0f;
    zf[k] = v ? f * (1.0f - f) * c_prev : 0.0f;
    zg[k] = v ? i * (1.0f - g * g) : 0.0f;
    zo[k] = v ? o * (1.0f - o) * tanh_c : 0.0f;
    fs[k] = v ? f : 0.0f;
    dts[k] = v ? o * (1.0f - tanh_c * tanh_c) : 0.0f;
    c[k] = v ? c_new : c_prev;
    h[k] = v ? o * tanh_c : h[k];
  }
}

// One thread's columns [b0, b1) over all steps. `xh (D + H, m)` holds the step's input and the
// hidden state, feature-major, so that one matmul `z (G, m) = w_cat (G, D + H) @ xh + bias`
// computes both projections (the bias as the sgemm's initial C).
__attribute__((target_clones("arch=x86-64-v3", "default")))
void RunBlock(const float* x, const float* w_cat, const float* bias, const float* h0,
              const float* c0, const int32_t* lengths, float* ys, float* h_t, float* c_t,
              float* coef, float* f_out, float* d_tanh, int64_t T, int64_t N,
              int64_t D, int64_t H, int64_t b0, int64_t b1, bool reverse) {
  const int64_t G = 4 * H, K = D + H, m = b1 - b0, Hm = H * m;
  std::vector<float> xh(K * m), z(G * m), c(Hm), y(Hm), fs(Hm), dts(Hm);
  const std::vector<float> bias_plane = RowPlane(bias, G, m);
  MaskPlane mask(lengths, b0, m, H);
  float* h = xh.data() + D * m;
  Transpose(h0 + b0 * H, m, H, H, h, m);
  Transpose(c0 + b0 * H, m, H, H, c.data(), m);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    const float* valid = mask.At(t);
    Transpose(x + (t * N + b0) * D, m, D, D, xh.data(), m);
    std::copy(bias_plane.begin(), bias_plane.end(), z.begin());
    dnnl_sgemm('N', 'N', G, m, K, 1.0f, w_cat, K, xh.data(), m, 1.0f, z.data(), m);
    LstmGates(&z[0], &z[Hm], &z[2 * Hm], &z[3 * Hm], c.data(), h, fs.data(), dts.data(), valid,
              Hm);
    // Its own loop, as in GruGates: one store more in the loop above stops GCC vectorising it.
    for (int64_t k = 0; k < Hm; ++k) y[k] = valid[k] != 0.0f ? h[k] : 0.0f;
    const int64_t at = t * N + b0;
    Transpose(y.data(), H, m, m, ys + at * H, H);
    if (coef != nullptr) {
      Transpose(z.data(), G, m, m, coef + at * G, G);
      Transpose(fs.data(), H, m, m, f_out + at * H, H);
      Transpose(dts.data(), H, m, m, d_tanh + at * H, H);
    }
  }
  Transpose(h, H, m, m, h_t + b0 * H, H);
  Transpose(c.data(), H, m, m, c_t + b0 * H, H);
}

// The transposed tangent loop of one thread's columns [b0, b1): the backward substitution
// `Y_t = ct_t + A_next^T Y_next` (see `jaxrnn_lstm_loop_transpose` below), running from the
// last step in processing order to the first.
__attribute__((target_clones("arch=x86-64-v3", "default")))
void TransposeBlock(const float* ct_h, const float* ct_c, const float* coef, const float* f,
                    const float* d_tanh, const float* w_h, const int32_t* lengths, float* y_h,
                    float* y_c, int64_t T, int64_t N, int64_t H, int64_t b0, int64_t b1,
                    bool reverse) {
  const int64_t G = 4 * H, m = b1 - b0, Hm = H * m;
  // yh, yc: Y_t; ah, ac: A_next^T Y_next carried into the step; g: the gates' cotangent.
  std::vector<float> yh(Hm), yc(Hm), ah(Hm, 0.0f), ac(Hm, 0.0f), g(G * m), coef_t(G * m);
  std::vector<float> f_t(Hm), dt_t(Hm), valid(m);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s;
    Transpose(ct_h + (t * N + b0) * H, m, H, H, yh.data(), m);
    Transpose(ct_c + (t * N + b0) * H, m, H, H, yc.data(), m);
    for (int64_t k = 0; k < Hm; ++k) {
      yh[k] += ah[k];
      yc[k] += ac[k];
    }
    Transpose(yh.data(), H, m, m, y_h + (t * N + b0) * H, H);
    Transpose(yc.data(), H, m, m, y_c + (t * N + b0) * H, H);
    if (s == 0) break;
    // A_t^T Y_t: what step t passes back to the carry it was entered with.
    ValidMask(lengths, b0, m, t, valid.data());
    Transpose(coef + (t * N + b0) * G, m, G, G, coef_t.data(), m);
    Transpose(f + (t * N + b0) * H, m, H, H, f_t.data(), m);
    Transpose(d_tanh + (t * N + b0) * H, m, H, H, dt_t.data(), m);
    for (int64_t k = 0; k < Hm; ++k) {
      const float total_c = yc[k] + dt_t[k] * yh[k];
      g[k] = coef_t[k] * total_c;
      g[Hm + k] = coef_t[Hm + k] * total_c;
      g[2 * Hm + k] = coef_t[2 * Hm + k] * total_c;
      g[3 * Hm + k] = coef_t[3 * Hm + k] * yh[k];
      ac[k] = f_t[k] * total_c;
    }
    // ah (H, m) = w_h (H, G) @ g (G, m).
    dnnl_sgemm('N', 'N', H, m, G, 1.0f, w_h, G, g.data(), m, 0.0f, ah.data(), m);
    // A step past an example's length passes its carry's cotangent through unchanged.
    HoldPastLength(ah.data(), yh.data(), valid.data(), H, m);
    HoldPastLength(ac.data(), yc.data(), valid.data(), H, m);
  }
}

ffi::Error LstmLoopImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w_cat,
                        ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0,
                        ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S32> lengths,
                        ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_t,
                        ffi::ResultBuffer<ffi::F32> c_t, ffi::ResultBuffer<ffi::F32> coef,
                        ffi::ResultBuffer<ffi::F32> f, ffi::ResultBuffer<ffi::F32> d_tanh,
                        bool reverse, bool training) {
  auto dims = x.dimensions();
  auto h_dims = h0.dimensions();
  if (dims.size() != 3 || h_dims.size() != 2)
    return ffi::Error::InvalidArgument("jaxrnn_lstm_loop: x must be (T, N, D), h0 (N, H)");
  const int64_t T = dims[0], N = dims[1], D = dims[2], H = h_dims[1];
  if (Count(w_cat) != 4 * H * (D + H) || Count(bias) != 4 * H || Count(h0) != N * H ||
      Count(c0) != N * H || Count(lengths) != N || Count(*ys) != T * N * H ||
      Count(*h_t) != N * H || Count(*c_t) != N * H)
    return ffi::Error::InvalidArgument("jaxrnn_lstm_loop: inconsistent shapes");
  const int64_t res = training ? T * N * H : 0;
  if (Count(*coef) != 4 * res || Count(*f) != res || Count(*d_tanh) != res)
    return ffi::Error::InvalidArgument("jaxrnn_lstm_loop: inconsistent residual shapes");
  if (N == 0) return ffi::Error::Success();
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    RunBlock(x.typed_data(), w_cat.typed_data(), bias.typed_data(), h0.typed_data(),
             c0.typed_data(), lengths.typed_data(), ys->typed_data(), h_t->typed_data(),
             c_t->typed_data(), training ? coef->typed_data() : nullptr,
             training ? f->typed_data() : nullptr, training ? d_tanh->typed_data() : nullptr, T,
             N, D, H, b0, b1, reverse);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_loop, LstmLoopImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_cat
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h_T
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c_T
                                  .Ret<ffi::Buffer<ffi::F32>>()  // coef
                                  .Ret<ffi::Buffer<ffi::F32>>()  // f
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_tanh
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("training"));

namespace {

ffi::Error LstmLoopTransposeImpl(ffi::Buffer<ffi::F32> ct_h, ffi::Buffer<ffi::F32> ct_c,
                                 ffi::Buffer<ffi::F32> coef, ffi::Buffer<ffi::F32> f,
                                 ffi::Buffer<ffi::F32> d_tanh, ffi::Buffer<ffi::F32> w_h,
                                 ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> y_h,
                                 ffi::ResultBuffer<ffi::F32> y_c, bool reverse) {
  auto dims = ct_h.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("jaxrnn_lstm_loop_transpose: rank");
  const int64_t T = dims[0], N = dims[1], H = dims[2];
  if (Count(ct_c) != T * N * H || Count(coef) != T * N * 4 * H || Count(f) != T * N * H ||
      Count(d_tanh) != T * N * H || Count(w_h) != H * 4 * H || Count(lengths) != N ||
      Count(*y_h) != T * N * H || Count(*y_c) != T * N * H)
    return ffi::Error::InvalidArgument("jaxrnn_lstm_loop_transpose: inconsistent shapes");
  if (T == 0 || N == 0) return ffi::Error::Success();
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    TransposeBlock(ct_h.typed_data(), ct_c.typed_data(), coef.typed_data(), f.typed_data(),
                   d_tanh.typed_data(), w_h.typed_data(), lengths.typed_data(), y_h->typed_data(),
                   y_c->typed_data(), T, N, H, b0, b1, reverse);
  });
  return ffi::Error::Success();
}

}  // namespace

// The transpose of the LSTM's tangent loop for the native path's `custom_linear_solve`. The
// tangent state after step t, X_t = (dh_t, dc_t), solves X_t = A_t X_prev + b_t, where for a
// step within the example's length
//   A_t (dh, dc) = (p_o + d_tanh_t dc', dc'),  dc' = p_i + p_f + p_g + f_t dc,
//   p = coef_t * (dh @ w_h)  (split into the gates i, f, g, o),
// and A_t is the identity past it. Given cotangents ct on every X_t, this returns Y solving
// Y_t = ct_t + A_next^T Y_next, processing order reversed. Layouts (float32, row-major):
//   in:  ct_h, ct_c (T, N, H)  coef (T, N, 4H)  f, d_tanh (T, N, H)  w_h (H, 4H)  lengths (N,)
//   out: y_h, y_c (T, N, H)
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_loop_transpose, LstmLoopTransposeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct_c
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coef
                                  .Arg<ffi::Buffer<ffi::F32>>()  // f
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_tanh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y_h
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y_c
                                  .Attr<bool>("reverse"));
