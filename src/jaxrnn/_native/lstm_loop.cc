// XLA FFI handlers that run the LSTM's sequential loops for jaxrnn's fused driver on CPU
// (jaxrnn.drivers._native): the forward loop, and the transpose of its tangent loop.
//
// XLA:CPU runs a `lax.scan` step as one thread's small matmul followed by separately scheduled
// elementwise kernels. Here the batch is split into row blocks, one per OpenMP thread, and each
// thread runs every step of its block on its own (no synchronisation between steps).
//
// Each step is one matmul, `z (m, 4H) = [x_t, h] (m, D + H) @ w_cat (D + H, 4H)`, batch-major,
// so that inputs, outputs and residuals are read and written in place (oneDNN's sgemm ran this
// form at 2.5x the speed of the feature-major `w_cat^T @ [x_t; h]^T` for blocks of 8 rows on
// an AVX-512 machine, and within 15% of it for 32 rows; loop_common.h's StepMatmul runs it,
// on the packed AVX2 kernel or oneDNN's sgemm by CPU), then the gates of each row in one
// vectorisable pass that also writes the coefficients of the step's tangent. The tangent
// loop's transpose (the backward pass) is `jaxrnn_lstm_loop_transpose`, below. Layouts
// (float32, row-major, gate order i, f, g, o, time-major):
//   in:  x (T, N, D), or (N, T, D) when `batch_major`   w_cat = [w_x; w_h] (D + H, 4H)
//        bias (4H)   h0, c0 (N, H)   lengths (N,) int32
//   out: ys (T, N, H), or (N, T, H) when `batch_major`   h_T, c_T (N, H)
//        when `training` (else with zero elements): coef (T, N, 4H), f, d_tanh (T, N, H), the
//        fused step's residuals (cells/_lstm.py's tangent_coefficients).
// A step at `t >= lengths[n]` keeps example n's carry, outputs zeros and zero coefficients.
// When `training`, `ys` holds instead the hidden state each step is entered with (what the
// backward pass needs; the outputs are its shift, `h_T` last, see jaxrnn.drivers._native).
// The loops are compiled for AVX-512, AVX2 and baseline x86-64, chosen at load time.

#include <cstdint>
#include <vector>

#include "loop_common.h"
#include "oneapi/dnnl/dnnl.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The LSTM update of one example's `H` hidden units: `zi .. zo` hold the gates' pre-activations
// without the biases `bias` (4H) and are overwritten by the fused step's tangent coefficients
// (cells/_lstm.py's tangent_coefficients) when `kResiduals`; `c` and `h` are updated in
// place, and `fs`, `dts` receive the forget gate and `o * tanh'(c)` (when `kResiduals`).
template <bool kResiduals>
__attribute__((always_inline)) inline void LstmGates(
    float* __restrict zi, float* __restrict zf, float* __restrict zg, float* __restrict zo,
    const float* __restrict bias, float* __restrict c, float* __restrict h,
    float* __restrict fs, float* __restrict dts, int64_t H) {
  const float *bi = bias, *bf = bias + H, *bg = bias + 2 * H, *bo = bias + 3 * H;
  for (int64_t k = 0; k < H; ++k) {
    const float i = Sigmoid(zi[k] + bi[k]), f = Sigmoid(zf[k] + bf[k]);
    const float g = Tanh(zg[k] + bg[k]), o = Sigmoid(zo[k] + bo[k]);
    const float c_prev = c[k];
    const float c_new = f * c_prev + i * g;
    const float tanh_c = Tanh(c_new);
    if (kResiduals) {
      zi[k] = i * (1.0f - i) * g;
      zf[k] = f * (1.0f - f) * c_prev;
      zg[k] = i * (1.0f - g * g);
      zo[k] = o * (1.0f - o) * tanh_c;
      fs[k] = f;
      dts[k] = o * (1.0f - tanh_c * tanh_c);
    }
    c[k] = c_new;
    h[k] = o * tanh_c;
  }
}

// One thread's examples [b0, b1) over all steps, batch-major: each step is one matmul
// `z (m, G) = [x_t, h] (m, D + H) @ w_cat (D + H, G)`, written straight into the residual
// `coef` when training, then the gates row by row (adding the bias). Inputs, outputs and
// residuals are read and written where they lie, with no transposes.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void RunBlock(const float* x, const StepMatmul& w_cat, const float* bias, const float* h0,
              const float* c0, const int32_t* lengths, float* ys, float* h_t, float* c_t,
              float* coef, float* f_out, float* d_tanh, int64_t T, int64_t N,
              int64_t D, int64_t H, int64_t b0, int64_t b1, bool reverse, bool batch_major) {
  const int64_t G = 4 * H, K = D + H, m = b1 - b0;
  const Layout x_at(T, N, D, batch_major), y_at(T, N, H, batch_major);
  const bool training = coef != nullptr;
  // xh: the rows [x_t, h] of the block's examples; z: the step's gates when not training.
  std::vector<float> xh(m * K), c(c0 + b0 * H, c0 + b1 * H), z(training ? 0 : m * G);
  for (int64_t r = 0; r < m; ++r) std::copy_n(h0 + (b0 + r) * H, H, &xh[r * K + D]);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s, at = t * N + b0;
    for (int64_t r = 0; r < m; ++r) std::copy_n(x + x_at(t, b0 + r), D, &xh[r * K]);
    if (training)
      for (int64_t r = 0; r < m; ++r) std::copy_n(&xh[r * K + D], H, ys + y_at(t, b0 + r));
    float* zt = training ? coef + at * G : z.data();
    float* ft = training ? f_out + at * H : nullptr;
    float* dt = training ? d_tanh + at * H : nullptr;
    w_cat(m, xh.data(), K, zt, G, /*accumulate=*/false);
    for (int64_t r = 0; r < m; ++r) {
      float* zr = zt + r * G;
      float* y = ys + y_at(t, b0 + r);
      float* h = &xh[r * K + D];
      if (t >= lengths[b0 + r]) {  // past the example's length: carry kept, zeros out
        if (training) {
          std::fill_n(zr, G, 0.0f);
          std::fill_n(ft + r * H, H, 0.0f);
          std::fill_n(dt + r * H, H, 0.0f);
        } else {
          std::fill_n(y, H, 0.0f);
        }
      } else if (training) {
        LstmGates<true>(zr, zr + H, zr + 2 * H, zr + 3 * H, bias, &c[r * H], h, ft + r * H,
                        dt + r * H, H);
      } else {
        LstmGates<false>(zr, zr + H, zr + 2 * H, zr + 3 * H, bias, &c[r * H], h, nullptr,
                         nullptr, H);
        std::copy_n(h, H, y);
      }
    }
  }
  for (int64_t r = 0; r < m; ++r) std::copy_n(&xh[r * K + D], H, h_t + (b0 + r) * H);
  std::copy(c.begin(), c.end(), c_t + b0 * H);
}

// The transposed tangent loop of one thread's examples [b0, b1): the backward substitution
// `Y_t = ct_t + A_next^T Y_next` (see `jaxrnn_lstm_loop_transpose` below), running from the
// last step in processing order to the first, batch-major like RunBlock.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void TransposeBlock(const float* ct_h, const float* ct_c, const float* coef, const float* f,
                    const float* d_tanh, const StepMatmul& w_h_t, const int32_t* lengths, float* y_h,
                    float* y_c, int64_t T, int64_t N, int64_t H, int64_t b0, int64_t b1,
                    bool reverse) {
  const int64_t G = 4 * H, m = b1 - b0, Hm = H * m;
  // ah, ac: A_next^T Y_next carried into the step; g: the gates' cotangent.
  std::vector<float> ah(Hm, 0.0f), ac(Hm, 0.0f), g(G * m);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s, at = t * N + b0;
    // y_h and y_c may be ct_h and ct_c themselves (aliased): each is read before written.
    float* yh = y_h + at * H;
    float* yc = y_c + at * H;
    const float* cth = ct_h + at * H;
    const float* ctc = ct_c + at * H;
    for (int64_t k = 0; k < Hm; ++k) {
      yh[k] = cth[k] + ah[k];
      yc[k] = ctc[k] + ac[k];
    }
    if (s == 0) break;
    // A_t^T Y_t: what step t passes back to the carry it was entered with.
    for (int64_t r = 0; r < m; ++r) {
      const float* __restrict cf = coef + (at + r) * G;
      const float* __restrict fr = f + (at + r) * H;
      const float* __restrict dr = d_tanh + (at + r) * H;
      const float* __restrict yhr = yh + r * H;
      const float* __restrict ycr = yc + r * H;
      float* __restrict gr = &g[r * G];
      float* __restrict acr = &ac[r * H];
      for (int64_t k = 0; k < H; ++k) {
        const float total_c = ycr[k] + dr[k] * yhr[k];
        gr[k] = cf[k] * total_c;
        gr[H + k] = cf[H + k] * total_c;
        gr[2 * H + k] = cf[2 * H + k] * total_c;
        gr[3 * H + k] = cf[3 * H + k] * yhr[k];
        acr[k] = fr[k] * total_c;
      }
    }
    // ah (m, H) = g (m, G) @ w_h^T (G, H).
    w_h_t(m, g.data(), G, ah.data(), H, /*accumulate=*/false);
    // A step past an example's length passes its carry's cotangent through unchanged.
    for (int64_t r = 0; r < m; ++r)
      if (t >= lengths[b0 + r]) {
        std::copy_n(yh + r * H, H, &ah[r * H]);
        std::copy_n(yc + r * H, H, &ac[r * H]);
      }
  }
}

ffi::Error LstmLoopImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w_cat,
                        ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0,
                        ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S32> lengths,
                        ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_t,
                        ffi::ResultBuffer<ffi::F32> c_t, ffi::ResultBuffer<ffi::F32> coef,
                        ffi::ResultBuffer<ffi::F32> f, ffi::ResultBuffer<ffi::F32> d_tanh,
                        bool reverse, bool training, bool batch_major) {
  auto dims = x.dimensions();
  auto h_dims = h0.dimensions();
  if (dims.size() != 3 || h_dims.size() != 2)
    return ffi::Error::InvalidArgument("jaxrnn_lstm_loop: x must be (T, N, D), h0 (N, H)");
  const int64_t T = dims[batch_major ? 1 : 0], N = dims[batch_major ? 0 : 1], D = dims[2];
  const int64_t H = h_dims[1];
  if (Count(w_cat) != 4 * H * (D + H) || Count(bias) != 4 * H || Count(h0) != N * H ||
      Count(c0) != N * H || Count(lengths) != N || Count(*ys) != T * N * H ||
      Count(*h_t) != N * H || Count(*c_t) != N * H)
    return ffi::Error::InvalidArgument("jaxrnn_lstm_loop: inconsistent shapes");
  const int64_t res = training ? T * N * H : 0;
  if (Count(*coef) != 4 * res || Count(*f) != res || Count(*d_tanh) != res)
    return ffi::Error::InvalidArgument("jaxrnn_lstm_loop: inconsistent residual shapes");
  if (N == 0) return ffi::Error::Success();
  if (training)
    for (auto* out : {&ys, &coef, &f, &d_tanh}) AdviseHugePages((*out)->typed_data(), Count(**out));
  const StepMatmul step(w_cat.typed_data(), D + H, 4 * H, N);
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    RunBlock(x.typed_data(), step, bias.typed_data(), h0.typed_data(),
             c0.typed_data(), lengths.typed_data(), ys->typed_data(), h_t->typed_data(),
             c_t->typed_data(), training ? coef->typed_data() : nullptr,
             training ? f->typed_data() : nullptr, training ? d_tanh->typed_data() : nullptr, T,
             N, D, H, b0, b1, reverse, batch_major);
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
                                  .Attr<bool>("training")
                                  .Attr<bool>("batch_major"));

namespace {

ffi::Error LstmLoopTransposeImpl(ffi::Buffer<ffi::F32> ct_h, ffi::Buffer<ffi::F32> ct_c,
                                 ffi::Buffer<ffi::F32> coef, ffi::Buffer<ffi::F32> f,
                                 ffi::Buffer<ffi::F32> d_tanh, ffi::Buffer<ffi::F32> w_h_t,
                                 ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> y_h,
                                 ffi::ResultBuffer<ffi::F32> y_c, bool reverse) {
  auto dims = ct_h.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("jaxrnn_lstm_loop_transpose: rank");
  const int64_t T = dims[0], N = dims[1], H = dims[2];
  if (Count(ct_c) != T * N * H || Count(coef) != T * N * 4 * H || Count(f) != T * N * H ||
      Count(d_tanh) != T * N * H || Count(w_h_t) != 4 * H * H || Count(lengths) != N ||
      Count(*y_h) != T * N * H || Count(*y_c) != T * N * H)
    return ffi::Error::InvalidArgument("jaxrnn_lstm_loop_transpose: inconsistent shapes");
  if (T == 0 || N == 0) return ffi::Error::Success();
  const StepMatmul step(w_h_t.typed_data(), 4 * H, H, N);
  ForEachBlock(N, [&](int64_t b0, int64_t b1) {
    TransposeBlock(ct_h.typed_data(), ct_c.typed_data(), coef.typed_data(), f.typed_data(),
                   d_tanh.typed_data(), step, lengths.typed_data(),
                   y_h->typed_data(), y_c->typed_data(), T, N, H, b0, b1, reverse);
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
//   in:  ct_h, ct_c (T, N, H)  coef (T, N, 4H)  f, d_tanh (T, N, H)  w_h_t = w_h^T (4H, H)
//        lengths (N,)
//   out: y_h, y_c (T, N, H)
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_loop_transpose, LstmLoopTransposeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct_c
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coef
                                  .Arg<ffi::Buffer<ffi::F32>>()  // f
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_tanh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h_t
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y_h
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y_c
                                  .Attr<bool>("reverse"));

// Which kernel the native loops' step matmuls use in this process for calls of 4 rows or more
// (loop_common.h, StepMatmul): 1 for the packed AVX2 kernel, 0 for oneDNN's sgemm. The
// dispatch (jaxrnn.drivers._plan) reads it through ctypes.
extern "C" __attribute__((visibility("default"))) int jaxrnn_native_step_matmul_packed() {
  return PackedKernelByDefault() ? 1 : 0;
}
