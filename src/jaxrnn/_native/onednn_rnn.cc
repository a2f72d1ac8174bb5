// XLA FFI handlers that run oneDNN's LSTM primitive (forward and backward) for jaxrnn.
//
// Built by setup.py when the oneDNN headers (PyPI wheel `onednn-devel-cpu-gomp`) and the XLA FFI
// headers (`jax.ffi.include_dir()`) are present; loaded with ctypes by jaxrnn.drivers._onednn,
// which first loads `libdnnl.so.3` globally. Layouts (float32, time-major, one layer, one
// direction, gate order i, f, g, o):
//   x (T, N, D)   h0, c0, hT, cT (N, H)   y (T, N, H)
//   w_x (D, 4H)   w_h (H, 4H)   b (4H)    -- jaxrnn's parameter layout is oneDNN's ldigo / ldgo.
//
// Design notes (the pitfalls these avoid were measured while prototyping):
// * Primitives are cached per shape and direction; each cache entry owns its scratchpad
//   (scratchpad_mode::user: oneDNN's default scratchpad is per thread and XLA calls handlers
//   from its own worker threads) and a mutex held while it runs.
// * The backward primitive accumulates into its weight gradients, so they are zeroed first.
// * Each call sets the calling thread's OpenMP thread count (JAXRNN_ONEDNN_THREADS, default 1).

#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

struct Shape {
  int64_t T, N, D, H;
  bool reverse;
  bool operator<(const Shape& o) const {
    return std::tie(T, N, D, H, reverse) < std::tie(o.T, o.N, o.D, o.H, o.reverse);
  }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

int Threads() {
  static int n = [] {
    const char* s = std::getenv("JAXRNN_ONEDNN_THREADS");
    int v = s ? std::atoi(s) : 1;
    return v > 0 ? v : 1;
  }();
  return n;
}

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// The user-side memory descriptors of one shape.
struct Descs {
  memory::desc x, h, w_x, w_h, b, y;
  explicit Descs(const Shape& s)
      : x({s.T, s.N, s.D}, dt::f32, tag::tnc),
        h({1, 1, s.N, s.H}, dt::f32, tag::ldnc),
        w_x({1, 1, s.D, 4, s.H}, dt::f32, tag::ldigo),
        w_h({1, 1, s.H, 4, s.H}, dt::f32, tag::ldigo),
        b({1, 1, 4, s.H}, dt::f32, tag::ldgo),
        y({s.T, s.N, s.H}, dt::f32, tag::tnc) {}
};

dnnl::rnn_direction Direction(const Shape& s) {
  return s.reverse ? dnnl::rnn_direction::unidirectional_right2left
                   : dnnl::rnn_direction::unidirectional_left2right;
}

dnnl::lstm_forward::primitive_desc ForwardDesc(const Shape& s, bool training) {
  Descs d(s);
  memory::desc any_w_x({1, 1, s.D, 4, s.H}, dt::f32, tag::any);
  memory::desc any_w_h({1, 1, s.H, 4, s.H}, dt::f32, tag::any);
  return dnnl::lstm_forward::primitive_desc(
      Engine(),
      training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference,
      Direction(s), d.x, d.h, d.h, any_w_x, any_w_h, d.b, d.y, d.h, d.h, UserScratchpad());
}

// A weight in the layout a primitive wants: the user's buffer, or a reordered copy.
struct Weight {
  memory::desc want;
  bool reorder = false;
  std::vector<float> storage;
  dnnl::reorder to_want, from_want;
  void Prepare(const memory::desc& user, const memory::desc& wanted, bool backwards) {
    want = wanted;
    reorder = user != wanted;
    if (!reorder) return;
    storage.resize(wanted.get_size() / sizeof(float));
    memory u(user, Engine(), DNNL_MEMORY_NONE), w(wanted, Engine(), DNNL_MEMORY_NONE);
    if (backwards) {
      from_want = dnnl::reorder(w, u);
    } else {
      to_want = dnnl::reorder(u, w);
    }
  }
  // A memory over the wanted layout, filled from (or, for outputs, later copied to) `user`.
  memory In(dnnl::stream& strm, const memory::desc& user_desc, void* user) {
    memory u(user_desc, Engine(), user);
    if (!reorder) return u;
    memory w(want, Engine(), storage.data());
    to_want.execute(strm, u, w);
    return w;
  }
  memory Out(const memory::desc& user_desc, void* user) {
    if (!reorder) return memory(user_desc, Engine(), user);
    return memory(want, Engine(), storage.data());
  }
  void Finish(dnnl::stream& strm, const memory::desc& user_desc, void* user) {
    if (!reorder) return;
    memory u(user_desc, Engine(), user), w(want, Engine(), storage.data());
    from_want.execute(strm, w, u);
  }
};

struct Forward {
  std::mutex mu;
  dnnl::lstm_forward::primitive_desc pd;
  dnnl::lstm_forward prim;
  std::vector<uint8_t> scratch;
  Weight w_x, w_h;
  Forward(const Shape& s, bool training) : pd(ForwardDesc(s, training)), prim(pd) {
    Descs d(s);
    scratch.resize(pd.scratchpad_desc().get_size());
    w_x.Prepare(d.w_x, pd.weights_layer_desc(), false);
    w_h.Prepare(d.w_h, pd.weights_iter_desc(), false);
  }
};

struct Backward {
  std::mutex mu;
  dnnl::lstm_backward::primitive_desc pd;
  dnnl::lstm_backward prim;
  std::vector<uint8_t> scratch;
  Weight w_x, w_h, dw_x, dw_h;
  Backward(const Shape& s) : pd(Make(s)), prim(pd) {
    Descs d(s);
    scratch.resize(pd.scratchpad_desc().get_size());
    w_x.Prepare(d.w_x, pd.weights_layer_desc(), false);
    w_h.Prepare(d.w_h, pd.weights_iter_desc(), false);
    dw_x.Prepare(d.w_x, pd.diff_weights_layer_desc(), true);
    dw_h.Prepare(d.w_h, pd.diff_weights_iter_desc(), true);
  }
  static dnnl::lstm_backward::primitive_desc Make(const Shape& s) {
    Descs d(s);
    memory::desc any_w_x({1, 1, s.D, 4, s.H}, dt::f32, tag::any);
    memory::desc any_w_h({1, 1, s.H, 4, s.H}, dt::f32, tag::any);
    auto hint = ForwardDesc(s, true);
    return dnnl::lstm_backward::primitive_desc(
        Engine(), dnnl::prop_kind::backward, Direction(s), d.x, d.h, d.h, any_w_x, any_w_h, d.b,
        d.y, d.h, d.h, d.x, d.h, d.h, any_w_x, any_w_h, d.b, d.y, d.h, d.h, hint,
        UserScratchpad());
  }
};

template <typename Entry>
Entry& Cached(const Shape& s, bool flag) {
  static std::mutex mu;
  static std::map<std::pair<Shape, bool>, std::unique_ptr<Entry>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{s, flag}];
  if (!slot) slot = std::make_unique<Entry>(s, flag);
  return *slot;
}

// Backward has no flag; this adapter keeps one cache template.
struct BackwardEntry : Backward {
  BackwardEntry(const Shape& s, bool) : Backward(s) {}
};

template <typename B>
void* Ptr(B& buffer) {
  return const_cast<void*>(static_cast<const void*>(buffer.untyped_data()));
}

ffi::Error Fail(const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kInternal, "jaxrnn oneDNN LSTM: " + what);
}

Shape ShapeOf(const ffi::AnyBuffer& x, const ffi::AnyBuffer& w_h, bool reverse) {
  auto xd = x.dimensions();
  auto hd = w_h.dimensions();
  return Shape{xd[0], xd[1], xd[2], hd[0], reverse};
}

ffi::Error LstmForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0,
                           ffi::AnyBuffer w_x, ffi::AnyBuffer w_h, ffi::AnyBuffer b,
                           ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> h_t,
                           ffi::Result<ffi::AnyBuffer> c_t, ffi::Result<ffi::AnyBuffer> ws,
                           bool reverse, bool training) {
  try {
    Shape s = ShapeOf(x, w_h, reverse);
    Descs d(s);
    Forward& f = Cached<Forward>(s, training);
    std::lock_guard<std::mutex> lock(f.mu);
    omp_set_num_threads(Threads());
    dnnl::stream strm(Engine());
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC_LAYER, memory(d.x, Engine(), Ptr(x))},
        {DNNL_ARG_SRC_ITER, memory(d.h, Engine(), Ptr(h0))},
        {DNNL_ARG_SRC_ITER_C, memory(d.h, Engine(), Ptr(c0))},
        {DNNL_ARG_WEIGHTS_LAYER, f.w_x.In(strm, d.w_x, Ptr(w_x))},
        {DNNL_ARG_WEIGHTS_ITER, f.w_h.In(strm, d.w_h, Ptr(w_h))},
        {DNNL_ARG_BIAS, memory(d.b, Engine(), Ptr(b))},
        {DNNL_ARG_DST_LAYER, memory(d.y, Engine(), Ptr(*y))},
        {DNNL_ARG_DST_ITER, memory(d.h, Engine(), Ptr(*h_t))},
        {DNNL_ARG_DST_ITER_C, memory(d.h, Engine(), Ptr(*c_t))},
        {DNNL_ARG_SCRATCHPAD, memory(f.pd.scratchpad_desc(), Engine(), f.scratch.data())},
    };
    if (training) {
      if (ws->size_bytes() != f.pd.workspace_desc().get_size()) {
        return Fail("workspace buffer has the wrong size");
      }
      args[DNNL_ARG_WORKSPACE] = memory(f.pd.workspace_desc(), Engine(), Ptr(*ws));
    }
    f.prim.execute(strm, args);
    strm.wait();
  } catch (const dnnl::error& e) {
    return Fail(e.what());
  } catch (const std::exception& e) {
    return Fail(e.what());
  }
  return ffi::Error::Success();
}

ffi::Error LstmBackwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0,
                            ffi::AnyBuffer w_x, ffi::AnyBuffer w_h, ffi::AnyBuffer b,
                            ffi::AnyBuffer y, ffi::AnyBuffer h_t, ffi::AnyBuffer c_t,
                            ffi::AnyBuffer ws, ffi::AnyBuffer dy, ffi::AnyBuffer dh_t,
                            ffi::AnyBuffer dc_t, ffi::Result<ffi::AnyBuffer> dx,
                            ffi::Result<ffi::AnyBuffer> dh0, ffi::Result<ffi::AnyBuffer> dc0,
                            ffi::Result<ffi::AnyBuffer> dw_x, ffi::Result<ffi::AnyBuffer> dw_h,
                            ffi::Result<ffi::AnyBuffer> db, bool reverse) {
  try {
    Shape s = ShapeOf(x, w_h, reverse);
    Descs d(s);
    Backward& g = Cached<BackwardEntry>(s, false);
    std::lock_guard<std::mutex> lock(g.mu);
    omp_set_num_threads(Threads());
    if (ws.size_bytes() != g.pd.workspace_desc().get_size()) {
      return Fail("workspace buffer has the wrong size");
    }
    dnnl::stream strm(Engine());
    memory dwx = g.dw_x.Out(d.w_x, Ptr(*dw_x));
    memory dwh = g.dw_h.Out(d.w_h, Ptr(*dw_h));
    // lstm_backward adds into the weight gradients.
    std::memset(dwx.get_data_handle(), 0, g.pd.diff_weights_layer_desc().get_size());
    std::memset(dwh.get_data_handle(), 0, g.pd.diff_weights_iter_desc().get_size());
    std::memset(Ptr(*db), 0, db->size_bytes());
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC_LAYER, memory(d.x, Engine(), Ptr(x))},
        {DNNL_ARG_SRC_ITER, memory(d.h, Engine(), Ptr(h0))},
        {DNNL_ARG_SRC_ITER_C, memory(d.h, Engine(), Ptr(c0))},
        {DNNL_ARG_WEIGHTS_LAYER, g.w_x.In(strm, d.w_x, Ptr(w_x))},
        {DNNL_ARG_WEIGHTS_ITER, g.w_h.In(strm, d.w_h, Ptr(w_h))},
        {DNNL_ARG_BIAS, memory(d.b, Engine(), Ptr(b))},
        {DNNL_ARG_DST_LAYER, memory(d.y, Engine(), Ptr(y))},
        {DNNL_ARG_DST_ITER, memory(d.h, Engine(), Ptr(h_t))},
        {DNNL_ARG_DST_ITER_C, memory(d.h, Engine(), Ptr(c_t))},
        {DNNL_ARG_WORKSPACE, memory(g.pd.workspace_desc(), Engine(), Ptr(ws))},
        {DNNL_ARG_DIFF_DST_LAYER, memory(d.y, Engine(), Ptr(dy))},
        {DNNL_ARG_DIFF_DST_ITER, memory(d.h, Engine(), Ptr(dh_t))},
        {DNNL_ARG_DIFF_DST_ITER_C, memory(d.h, Engine(), Ptr(dc_t))},
        {DNNL_ARG_DIFF_SRC_LAYER, memory(d.x, Engine(), Ptr(*dx))},
        {DNNL_ARG_DIFF_SRC_ITER, memory(d.h, Engine(), Ptr(*dh0))},
        {DNNL_ARG_DIFF_SRC_ITER_C, memory(d.h, Engine(), Ptr(*dc0))},
        {DNNL_ARG_DIFF_WEIGHTS_LAYER, dwx},
        {DNNL_ARG_DIFF_WEIGHTS_ITER, dwh},
        {DNNL_ARG_DIFF_BIAS, memory(d.b, Engine(), Ptr(*db))},
        {DNNL_ARG_SCRATCHPAD, memory(g.pd.scratchpad_desc(), Engine(), g.scratch.data())},
    };
    g.prim.execute(strm, args);
    g.dw_x.Finish(strm, d.w_x, Ptr(*dw_x));
    g.dw_h.Finish(strm, d.w_h, Ptr(*dw_h));
    strm.wait();
  } catch (const dnnl::error& e) {
    return Fail(e.what());
  } catch (const std::exception& e) {
    return Fail(e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_forward, LstmForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // w_x
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // b
                                  .Ret<ffi::AnyBuffer>()  // y
                                  .Ret<ffi::AnyBuffer>()  // h_T
                                  .Ret<ffi::AnyBuffer>()  // c_T
                                  .Ret<ffi::AnyBuffer>()  // workspace
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("training"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_backward, LstmBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // w_x
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // b
                                  .Arg<ffi::AnyBuffer>()  // y
                                  .Arg<ffi::AnyBuffer>()  // h_T
                                  .Arg<ffi::AnyBuffer>()  // c_T
                                  .Arg<ffi::AnyBuffer>()  // workspace
                                  .Arg<ffi::AnyBuffer>()  // dy
                                  .Arg<ffi::AnyBuffer>()  // dh_T
                                  .Arg<ffi::AnyBuffer>()  // dc_T
                                  .Ret<ffi::AnyBuffer>()  // dx
                                  .Ret<ffi::AnyBuffer>()  // dh0
                                  .Ret<ffi::AnyBuffer>()  // dc0
                                  .Ret<ffi::AnyBuffer>()  // dw_x
                                  .Ret<ffi::AnyBuffer>()  // dw_h
                                  .Ret<ffi::AnyBuffer>()  // db
                                  .Attr<bool>("reverse"));

// The training workspace's size in bytes (declared as an FFI output at trace time), or -1.
extern "C" int64_t jaxrnn_lstm_workspace_bytes(int64_t T, int64_t N, int64_t D, int64_t H,
                                               int reverse) {
  try {
    return static_cast<int64_t>(
        ForwardDesc(Shape{T, N, D, H, reverse != 0}, true).workspace_desc().get_size());
  } catch (...) {
    return -1;
  }
}
