// rnnfast._core: one function per cell and direction, each running a whole layer over the
// whole sequence. Built once per instruction-set level, as the module RNNFAST_MODULE names
// (CMakeLists.txt); the package loads one of them as rnnfast._core. The Python layer validates and converts user input; these checks repeat the
// shape checks so that a direct call with wrong arrays raises instead of reading out of bounds.
// Arguments are taken with noconvert(): a wrong dtype or layout is a TypeError, never a silent copy.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <numeric>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "buffers.hpp"
#include "gru.hpp"
#include "helper.hpp"
#include "layer.hpp"
#include "lstm.hpp"
#include "products.hpp"
#include "rnn.hpp"
#include "step_options.hpp"
#include "threads.hpp"
#include "views.hpp"
#include "window_grads.hpp"

#ifndef RNNFAST_MODULE
#define RNNFAST_MODULE _core
#endif

namespace py = pybind11;
using namespace rnnfast;

template <typename T>
using Array = py::array_t<T, py::array::c_style>;
using Lengths = py::array_t<std::int64_t, py::array::c_style>;

namespace {

#define STEP_OPTIONS_DOC                                                                      \
  "clip_per_step > 0 rescales each sequence's dL/dh_t (from the loss at t and from step t+1) " \
  "to that norm inside the loop whenever it is larger; 0 or negative is off. With "            \
  "grad_norms=True a last item is appended: norms (B, T), each sequence's ||dL/dh_t|| before " \
  "clipping, 0 past its length."

#define REVERSE_DOC                                                                           \
  "reverse=True walks time down, as the reverse direction of a bidirectional layer: each "   \
  "sequence starts at its last valid step from the initial state; y[:, t] stays step t's "   \
  "output. backward takes the same reverse as the forward it follows. defer=True returns a "  \
  "Deferred call instead of computing, for run_concurrently. plan_steps > 0 and offset: the "  \
  "call is steps [offset, offset + T) of a call of plan_steps steps, and uses threads and "  \
  "groups products as that call would (a checkpointed segment); backward's into=GradSum "    \
  "adds the weight gradients to its arrays instead of returning them (None in their place)."

std::string shape_str(const std::vector<py::ssize_t>& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

void expect_shape(const py::array& a, const std::vector<py::ssize_t>& want, const char* name) {
  std::vector<py::ssize_t> got(a.shape(), a.shape() + a.ndim());
  if (got != want)
    throw std::invalid_argument(std::string(name) + " must have shape " + shape_str(want) +
                                ", got " + shape_str(got));
}

// A new C-ordered array of this shape, uninitialised like np.empty, 64-byte aligned. Large ones
// (and all of them while the cache poisons, for the tests) take their memory from the block
// cache (buffers.hpp) and give it back when NumPy frees the array. Small ones are a view into
// a NumPy array 64 bytes longer: NumPy aligns to 16 bytes only, and Eigen's vectorised loops
// over a row start with single elements up to the first 32-byte boundary and end with them, so
// an output such as the online gates (1, 100, 4H), 48 bytes past a boundary in half the calls,
// had its activations partly computed one element at a time.
template <typename T>
Array<T> new_array(const std::vector<py::ssize_t>& shape) {
  std::size_t bytes = sizeof(T);
  for (py::ssize_t s : shape)
    if (__builtin_mul_overflow(bytes, static_cast<std::size_t>(s), &bytes)) throw std::bad_alloc();
  BlockCache& cache = BlockCache::instance();
  if (bytes == 0) return Array<T>(shape);
  if (bytes < BlockCache::kMinBytes && !cache.poison()) {
    constexpr std::size_t align = BlockCache::kAlign;
    Array<T> whole({static_cast<py::ssize_t>((bytes + align) / sizeof(T))});
    const auto address = reinterpret_cast<std::uintptr_t>(whole.data());
    const std::size_t skip = (align - address % align) % align / sizeof(T);
    return Array<T>(shape, whole.data() + skip, whole);
  }
  struct Owned {
    void* ptr;
    std::size_t bytes;
  };
  auto* owned = new Owned{cache.take(bytes), bytes};
  py::capsule base;
  try {
    base = py::capsule(owned, [](void* o) {
      auto* block = static_cast<Owned*>(o);
      BlockCache::instance().give(block->ptr, block->bytes);
      delete block;
    });
  } catch (...) {
    cache.give(owned->ptr, owned->bytes);
    delete owned;
    throw;
  }
  return Array<T>(shape, static_cast<const T*>(owned->ptr), base);
}

const std::int64_t* lengths_ptr(const std::optional<Lengths>& lengths, Index B, Index T_) {
  if (!lengths) return nullptr;
  expect_shape(*lengths, {B}, "lengths");
  const std::int64_t* l = lengths->data();
  for (Index b = 0; b < B; ++b)
    if (l[b] < 0 || l[b] > T_)
      throw std::invalid_argument("lengths must lie in [0, " + std::to_string(T_) + "], got " +
                                  std::to_string(l[b]) + " at index " + std::to_string(b));
  return l;
}

template <typename T>
const T* bias_ptr(const std::optional<Array<T>>& b, Index GH, const char* name) {
  if (!b) return nullptr;
  expect_shape(*b, {GH}, name);
  return b->data();
}

// Checks the weights against x (B, T, D) and builds the layer's views; returns the dims.
template <typename T>
Dims layer_dims(const Array<T>& x, const Array<T>& w_ih, const Array<T>& w_hh, Index G) {
  if (x.ndim() != 3)
    throw std::invalid_argument("x must be 3-D (B, T, D), got " + std::to_string(x.ndim()) + "-D");
  if (w_hh.ndim() != 2)
    throw std::invalid_argument("weight_hh must be 2-D (G*H, H), got " +
                                std::to_string(w_hh.ndim()) + "-D");
  const Index H = w_hh.shape(1);
  const Dims d{x.shape(0), x.shape(1), x.shape(2), H};
  expect_shape(w_hh, {G * H, H}, "weight_hh");
  expect_shape(w_ih, {G * H, d.D}, "weight_ih");
  return d;
}

template <typename T>
LayerWeights<T> weights(const Array<T>& w_ih, const Array<T>& w_hh,
                        const std::optional<Array<T>>& b_ih, const std::optional<Array<T>>& b_hh,
                        const Dims& d, Index G) {
  if (b_ih.has_value() != b_hh.has_value())
    throw std::invalid_argument("bias_ih and bias_hh must both be given or both be None");
  return {ConstMatrixMap<T>(w_ih.data(), G * d.H, d.D),
          ConstMatrixMap<T>(w_hh.data(), G * d.H, d.state()),
          bias_ptr<T>(b_ih, G * d.H, "bias_ih"), bias_ptr<T>(b_hh, G * d.H, "bias_hh")};
}

rnn::Activation activation(const std::string& name) {
  if (name == "tanh") return rnn::Activation::Tanh;
  if (name == "relu") return rnn::Activation::Relu;
  throw std::invalid_argument("nonlinearity must be 'tanh' or 'relu', got '" + name + "'");
}

// backward's per-step options. clip_per_step > 0 clips, 0 or negative is off; NaN or Inf is
// refused. With grad_norms, norms (B, T) is allocated here and the caller returns it last.
template <typename T>
StepOptions<T> step_options(double clip_per_step, bool grad_norms, Array<T>& norms) {
  if (!std::isfinite(clip_per_step))
    throw std::invalid_argument("clip_per_step must be finite (0 or negative for off), got " +
                                std::to_string(clip_per_step));
  StepOptions<T> opt;
  opt.clip = clip_per_step > 0 ? T(clip_per_step) : T(0);
  if (grad_norms) opt.norms = norms.mutable_data();
  return opt;
}

// The backward's tuple, with the norms appended when they were asked for.
template <typename T>
py::tuple with_norms(py::tuple result, bool grad_norms, const Array<T>& norms) {
  if (!grad_norms) return result;
  py::list items(result);
  items.append(norms);
  return py::tuple(items);
}

// plan_steps and offset of a layer call (layer.hpp Dims::plan): 0 and 0 for a call of its own,
// else a segment [offset, offset + T) of a call of plan_steps steps.
void set_plan(Dims& d, Index plan_steps, Index offset) {
  if (plan_steps == 0 && offset == 0) return;
  if (offset < 0 || plan_steps < offset + d.T)
    throw std::invalid_argument(
        "plan_steps and offset must place the call's T = " + std::to_string(d.T) +
        " steps inside the planned call: 0 <= offset <= plan_steps - T, got plan_steps = " +
        std::to_string(plan_steps) + ", offset = " + std::to_string(offset));
  d.plan = plan_steps;
  d.offset = offset;
}

// The weight gradients of a checkpointed backward: every segment's backward adds to these
// arrays (LayerGrads::accumulate), window after window as one call over all T steps would,
// and result() then adds the sums of the batch's other chunks (threads.hpp split_backward).
template <typename T>
class GradSum {
 public:
  GradSum(const Array<T>& w_ih, const Array<T>& w_hh, bool bias,
          const std::optional<Array<T>>& w_hr)
      : dw_ih_(zeros(w_ih)), dw_hh_(zeros(w_hh)) {
    if (bias) {
      db_ih_ = zeros_of({w_hh.shape(0)});
      db_hh_ = zeros_of({w_hh.shape(0)});
    }
    if (w_hr) dw_hr_ = zeros(*w_hr);
  }

  // Where the backward of one segment of dims d adds its gradients; checked against d.
  LayerGrads<T> grads(const Dims& d, Index G, bool bias, bool projected) {
    if (summed_)
      throw std::invalid_argument("into: this GradSum's result() was taken; make a new one");
    if (dw_ih_.shape(0) != G * d.H || dw_ih_.shape(1) != d.D || dw_hh_.shape(1) != d.state() ||
        bias != db_ih_.has_value() || projected != dw_hr_.has_value())
      throw std::invalid_argument("into was made for another layer");
    dims_ = d;
    G_ = G;
    return {MatrixMap<T>(dw_ih_.mutable_data(), G * d.H, d.D),
            MatrixMap<T>(dw_hh_.mutable_data(), G * d.H, d.state()), data(db_ih_),
            data(db_hh_), data(dw_hr_), true, &partials_};
  }

  // (dweight_ih, dweight_hh, dbias_ih, dbias_hh, dweight_hr), None for an absent one.
  py::tuple result() {
    if (!summed_ && !partials_.empty()) {
      LayerGrads<T> g = grads(dims_, G_, db_ih_.has_value(), dw_hr_.has_value());
      const Index per = partial_size(dims_, G_, dw_hr_.has_value());
      add_partials(dims_, G_, g, partials_.data(), int(Index(partials_.size()) / per) + 1);
    }
    summed_ = true;
    return py::make_tuple(dw_ih_, dw_hh_, db_ih_, db_hh_, dw_hr_);
  }

 private:
  static Array<T> zeros_of(const std::vector<py::ssize_t>& shape) {
    Array<T> a(shape);
    std::fill(a.mutable_data(), a.mutable_data() + a.size(), T(0));
    return a;
  }
  static Array<T> zeros(const Array<T>& like) {
    return zeros_of(std::vector<py::ssize_t>(like.shape(), like.shape() + like.ndim()));
  }
  static T* data(std::optional<Array<T>>& a) { return a ? a->mutable_data() : nullptr; }

  Array<T> dw_ih_, dw_hh_;
  std::optional<Array<T>> db_ih_, db_hh_, dw_hr_;
  std::vector<T> partials_;
  Dims dims_{};
  Index G_ = 1;
  bool summed_ = false;
};

// The steps a checkpointed segment must start at a multiple of for its products to be those of
// the whole call of T steps there (python/rnnfast/_checkpointed.py): backward's windows
// (WindowGrads::window_steps) and, where the input side goes by chunks, InputSide::kChunk; per
// chunk of the batch when it is split. Where the input side is one product over all B·T rows,
// B times the unit is a multiple of kPanelRows: Eigen's kernel computes the rows of such a
// product kPanelRows at a time and the last few otherwise, so a segment's rows must make
// whole groups for each to be computed as in the whole product. `threads` as the call will be
// allowed.
constexpr Index kPanelRows = 8;  // Eigen's gebp_traits nr is 4 or 8

template <typename T>
Index segment_unit(Index G, Index B, Index T_, Index D, Index H, Index P, int threads) {
  if (B < 1 || T_ < 1 || D < 1 || H < 1 || P < 0 || G < 1 || threads < 1)
    throw std::invalid_argument("segment_unit: sizes must be positive");
  const ThreadShare share(threads);
  const Dims d{B, T_, D, H, P};
  const int n = split_count(d, G);
  const bool helper = n == 1 && uses_helper(d, G);
  Index unit = 1;
  for (int k = 0; k < n; ++k) {
    const Dims dk = d.with_batch(B * (k + 1) / n - B * k / n);
    unit = std::lcm(unit, WindowGrads<T>::window_steps(dk, G * H, helper));
    if (InputSide<T>::chunked(dk, G * H, helper))
      unit = std::lcm(unit, InputSide<T>::kChunk);
    else
      unit = std::lcm(unit, kPanelRows / std::gcd(kPanelRows, dk.B));
  }
  return unit;
}

// A layer call's computation with the arrays it reads and writes. run_or_defer runs it at once
// with the GIL released, or with defer=True hands it back, for run_concurrently to run several
// at the same time (the two directions of a bidirectional layer). It keeps its inputs alive.
struct Deferred {
  std::function<void()> job;
  py::object result;  // what the call returns, written by job
  py::object inputs;  // what job reads
  bool done = false;
};

py::object run_or_defer(py::object result, py::object inputs, std::function<void()> job,
                        bool defer) {
  if (defer) return py::cast(Deferred{std::move(job), std::move(result), std::move(inputs)});
  {
    py::gil_scoped_release release;
    job();
  }
  return result;
}

// Runs the deferred calls and returns their results, in order. With two calls and two threads
// or more allowed, they run at the same time, on this thread and the helper (parallel_chunks),
// each with half the threads (ThreadShare): the two directions of a layer are independent, and
// running them side by side halves a step where splitting each call's batch cannot (batch 1).
py::list run_concurrently(const std::vector<Deferred*>& calls) {
  for (const Deferred* c : calls)
    if (c == nullptr || c->done)
      throw std::invalid_argument("run_concurrently takes calls made with defer=True, each once");
  for (Deferred* c : calls) c->done = true;
  {
    py::gil_scoped_release release;
    const int n = rnnfast::num_threads().load();
    const int chunks = calls.size() == 2 && n >= 2 ? 2 : 1;
    rnnfast::parallel_chunks(Index(calls.size()), chunks, [&](Index b, Index e) {
      const rnnfast::ThreadShare share(chunks == 2 ? std::max(1, n / 2) : n);
      for (Index k = b; k < e; ++k) calls[k]->job();
    });
  }
  py::list results;
  for (const Deferred* c : calls) results.append(c->result);
  return results;
}

template <typename T>
py::object rnn_forward(const Array<T>& x, const Array<T>& h0, const Array<T>& w_ih,
                      const Array<T>& w_hh, const std::optional<Array<T>>& b_ih,
                      const std::optional<Array<T>>& b_hh, const std::optional<Lengths>& lengths,
                      const std::string& nonlinearity, bool reverse, bool defer,
                      Index plan_steps, Index offset) {
  Dims d = layer_dims<T>(x, w_ih, w_hh, 1);
  set_plan(d, plan_steps, offset);
  expect_shape(h0, {d.B, d.H}, "h0");
  const auto w = weights<T>(w_ih, w_hh, b_ih, b_hh, d, 1);
  const auto* l = lengths_ptr(lengths, d.B, d.T);
  const auto f = activation(nonlinearity);
  Array<T> y = new_array<T>({d.B, d.T, d.H});
  Array<T> h_n = new_array<T>({d.B, d.H});
  T* y_p = y.mutable_data();
  T* h_n_p = h_n.mutable_data();
  const T* x_p = x.data();
  const T* h0_p = h0.data();
  return run_or_defer(py::make_tuple(y, h_n),
                      py::make_tuple(x, h0, w_ih, w_hh, b_ih, b_hh, lengths), [=] {
                        rnn::forward<T>(y_p, h_n_p, x_p, h0_p, w, l, f, reverse, d);
                      }, defer);
}

template <typename T>
py::object rnn_backward(const Array<T>& x, const Array<T>& h0, const Array<T>& y,
                       const Array<T>& w_ih, const Array<T>& w_hh,
                       const std::optional<Array<T>>& b_ih, const std::optional<Array<T>>& b_hh,
                       const std::optional<Lengths>& lengths, const std::string& nonlinearity,
                       const Array<T>& dy, const Array<T>& dh_n, double clip_per_step,
                       bool grad_norms, bool reverse, bool defer, Index plan_steps,
                       Index offset, GradSum<T>* into) {
  Dims d = layer_dims<T>(x, w_ih, w_hh, 1);
  set_plan(d, plan_steps, offset);
  expect_shape(h0, {d.B, d.H}, "h0");
  expect_shape(y, {d.B, d.T, d.H}, "y");
  expect_shape(dy, {d.B, d.T, d.H}, "dy");
  expect_shape(dh_n, {d.B, d.H}, "dh_n");
  const auto w = weights<T>(w_ih, w_hh, b_ih, b_hh, d, 1);
  const auto* l = lengths_ptr(lengths, d.B, d.T);
  const auto f = activation(nonlinearity);
  const bool bias = b_ih.has_value();

  const Index own = into == nullptr ? 1 : 0;  // without into, this call's own gradients
  Array<T> dx = new_array<T>({d.B, d.T, d.D});
  Array<T> dh0 = new_array<T>({d.B, d.H});
  Array<T> dw_ih = new_array<T>({own * d.H, d.D});
  Array<T> dw_hh = new_array<T>({own * d.H, d.H});
  Array<T> db_ih = new_array<T>({bias ? own * d.H : Index(0)});
  Array<T> db_hh = new_array<T>({bias ? own * d.H : Index(0)});
  Array<T> norms = new_array<T>({grad_norms ? d.B : Index(0), grad_norms ? d.T : Index(0)});
  const auto opt = step_options<T>(clip_per_step, grad_norms, norms);
  auto dh_prev = std::make_shared<Buffer<T>>(static_cast<size_t>(d.B * d.H));

  LayerGrads<T> g = into != nullptr
      ? into->grads(d, 1, bias, false)
      : LayerGrads<T>{MatrixMap<T>(dw_ih.mutable_data(), d.H, d.D),
                      MatrixMap<T>(dw_hh.mutable_data(), d.H, d.H),
                      bias ? db_ih.mutable_data() : nullptr,
                      bias ? db_hh.mutable_data() : nullptr};
  const rnn::Workspace<T> ws{dh_prev->data()};
  T* dx_p = dx.mutable_data();
  T* dh0_p = dh0.mutable_data();
  const T *x_p = x.data(), *h0_p = h0.data(), *y_p = y.data(), *dy_p = dy.data(),
          *dh_n_p = dh_n.data();
  py::object none = py::none();
  return run_or_defer(
      with_norms<T>(py::make_tuple(dx, dh0, own ? py::object(dw_ih) : none,
                                   own ? py::object(dw_hh) : none,
                                   bias && own ? py::object(db_ih) : none,
                                   bias && own ? py::object(db_hh) : none),
                    grad_norms, norms),
      py::make_tuple(x, h0, y, w_ih, w_hh, b_ih, b_hh, lengths, dy, dh_n, py::cast(into)),
      [=]() mutable {
        (void)dh_prev;  // the workspace lives as long as the job
        rnn::backward<T>(dx_p, dh0_p, g, x_p, h0_p, y_p, w, l, f, dy_p, dh_n_p, opt, reverse,
                         ws, d);
      }, defer);
}

template <typename T>
void def_rnn(py::module_& m) {
  m.def("rnn_forward", &rnn_forward<T>, py::arg("x").noconvert(), py::arg("h0").noconvert(),
        py::arg("weight_ih").noconvert(), py::arg("weight_hh").noconvert(),
        py::arg("bias_ih").noconvert().none(true), py::arg("bias_hh").noconvert().none(true),
        py::arg("lengths").noconvert().none(true), py::arg("nonlinearity"),
        py::arg("reverse") = false, py::arg("defer") = false, py::arg("plan_steps") = 0, py::arg("offset") = 0,
        "One RNN layer over the whole sequence. Returns (y (B, T, H), h_n (B, H)). " REVERSE_DOC);
  m.def("rnn_backward", &rnn_backward<T>, py::arg("x").noconvert(), py::arg("h0").noconvert(),
        py::arg("y").noconvert(), py::arg("weight_ih").noconvert(),
        py::arg("weight_hh").noconvert(), py::arg("bias_ih").noconvert().none(true),
        py::arg("bias_hh").noconvert().none(true), py::arg("lengths").noconvert().none(true),
        py::arg("nonlinearity"), py::arg("dy").noconvert(), py::arg("dh_n").noconvert(),
        py::arg("clip_per_step") = 0.0, py::arg("grad_norms") = false, py::arg("reverse") = false,
        py::arg("defer") = false, py::arg("plan_steps") = 0, py::arg("offset") = 0,
        py::arg("into").none(true) = nullptr,
        "Backpropagation through time for one RNN layer. "
        "Returns (dx, dh0, dweight_ih, dweight_hh, dbias_ih, dbias_hh); the biases' are None "
        "when the layer has none. " STEP_OPTIONS_DOC);
}

// The LSTM's dims: with weight_hr (P, H), a projection of P units (h, y and W_hh's columns);
// without, H from weight_hh as for every cell.
template <typename T>
Dims lstm_dims(const Array<T>& x, const Array<T>& w_ih, const Array<T>& w_hh,
               const std::optional<Array<T>>& w_hr) {
  if (!w_hr) return layer_dims<T>(x, w_ih, w_hh, 4);
  if (x.ndim() != 3)
    throw std::invalid_argument("x must be 3-D (B, T, D), got " + std::to_string(x.ndim()) + "-D");
  if (w_hr->ndim() != 2 || w_hr->shape(0) < 1 || w_hr->shape(0) >= w_hr->shape(1))
    throw std::invalid_argument("weight_hr must be 2-D (P, H) with 0 < P < H, got " +
                                shape_str(std::vector<py::ssize_t>(
                                    w_hr->shape(), w_hr->shape() + w_hr->ndim())));
  const Dims d{x.shape(0), x.shape(1), x.shape(2), w_hr->shape(1), w_hr->shape(0)};
  expect_shape(w_hh, {4 * d.H, d.P}, "weight_hh");
  expect_shape(w_ih, {4 * d.H, d.D}, "weight_ih");
  return d;
}

template <typename T>
py::object lstm_forward(const Array<T>& x, const Array<T>& h0, const Array<T>& c0,
                        const Array<T>& w_ih, const Array<T>& w_hh,
                        const std::optional<Array<T>>& b_ih, const std::optional<Array<T>>& b_hh,
                        const std::optional<Lengths>& lengths, bool reverse,
                        const std::optional<Array<T>>& w_hr, bool defer, Index plan_steps,
                        Index offset) {
  Dims d = lstm_dims<T>(x, w_ih, w_hh, w_hr);
  set_plan(d, plan_steps, offset);
  const Index S = d.state();
  expect_shape(h0, {d.B, S}, "h0");
  expect_shape(c0, {d.B, d.H}, "c0");
  auto w = weights<T>(w_ih, w_hh, b_ih, b_hh, d, 4);
  if (w_hr) w.w_hr = w_hr->data();
  const auto* l = lengths_ptr(lengths, d.B, d.T);
  Array<T> y = new_array<T>({d.B, d.T, S});
  Array<T> h_n = new_array<T>({d.B, S});
  Array<T> c_n = new_array<T>({d.B, d.H});
  Array<T> gates = new_array<T>({d.B, d.T, 4 * d.H});
  Array<T> c = new_array<T>({d.B, d.T, d.H});
  T *y_p = y.mutable_data(), *h_n_p = h_n.mutable_data(), *c_n_p = c_n.mutable_data(),
    *gates_p = gates.mutable_data(), *c_p = c.mutable_data();
  const T *x_p = x.data(), *h0_p = h0.data(), *c0_p = c0.data();
  return run_or_defer(py::make_tuple(y, h_n, c_n, gates, c),
                      py::make_tuple(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, w_hr), [=] {
                        lstm::forward<T>(y_p, h_n_p, c_n_p, gates_p, c_p, x_p, h0_p, c0_p, w, l,
                                         reverse, d);
                      }, defer);
}

template <typename T>
py::object lstm_backward(const Array<T>& x, const Array<T>& h0, const Array<T>& c0,
                         const Array<T>& y, const Array<T>& gates, const Array<T>& c,
                         const Array<T>& w_ih, const Array<T>& w_hh,
                         const std::optional<Array<T>>& b_ih, const std::optional<Array<T>>& b_hh,
                         const std::optional<Lengths>& lengths, const Array<T>& dy,
                         const Array<T>& dh_n, const Array<T>& dc_n, double clip_per_step,
                         bool grad_norms, bool reverse, const std::optional<Array<T>>& w_hr,
                         bool defer, Index plan_steps, Index offset, GradSum<T>* into) {
  Dims d = lstm_dims<T>(x, w_ih, w_hh, w_hr);
  set_plan(d, plan_steps, offset);
  const Index S = d.state();
  expect_shape(h0, {d.B, S}, "h0");
  expect_shape(c0, {d.B, d.H}, "c0");
  expect_shape(y, {d.B, d.T, S}, "y");
  expect_shape(gates, {d.B, d.T, 4 * d.H}, "gates");
  expect_shape(c, {d.B, d.T, d.H}, "c");
  expect_shape(dy, {d.B, d.T, S}, "dy");
  expect_shape(dh_n, {d.B, S}, "dh_n");
  expect_shape(dc_n, {d.B, d.H}, "dc_n");
  auto w = weights<T>(w_ih, w_hh, b_ih, b_hh, d, 4);
  if (w_hr) w.w_hr = w_hr->data();
  const auto* l = lengths_ptr(lengths, d.B, d.T);
  const bool bias = b_ih.has_value();
  const Index GH = 4 * d.H;

  const Index own = into == nullptr ? 1 : 0;  // without into, this call's own gradients
  Array<T> dx = new_array<T>({d.B, d.T, d.D});
  Array<T> dh0 = new_array<T>({d.B, S});
  Array<T> dc0 = new_array<T>({d.B, d.H});
  Array<T> dw_ih = new_array<T>({own * GH, d.D});
  Array<T> dw_hh = new_array<T>({own * GH, S});
  Array<T> db_ih = new_array<T>({bias ? own * GH : Index(0)});
  Array<T> db_hh = new_array<T>({bias ? own * GH : Index(0)});
  Array<T> dw_hr = new_array<T>({w_hr ? own * d.P : Index(0), w_hr ? d.H : Index(0)});
  Array<T> norms = new_array<T>({grad_norms ? d.B : Index(0), grad_norms ? d.T : Index(0)});
  const auto opt = step_options<T>(clip_per_step, grad_norms, norms);
  // c_prev only where a reverse walk with lengths may need it (lstm::workspace_size)
  const bool mixed_prev = reverse && l != nullptr;
  auto steps = std::make_shared<Buffer<T>>(
      static_cast<size_t>(lstm::workspace_size(d, mixed_prev)));

  LayerGrads<T> g = into != nullptr
      ? into->grads(d, 4, bias, w_hr.has_value())
      : LayerGrads<T>{MatrixMap<T>(dw_ih.mutable_data(), GH, d.D),
                      MatrixMap<T>(dw_hh.mutable_data(), GH, S),
                      bias ? db_ih.mutable_data() : nullptr,
                      bias ? db_hh.mutable_data() : nullptr,
                      w_hr ? dw_hr.mutable_data() : nullptr};
  const lstm::Workspace<T> ws = lstm::workspace_at(steps->data(), d, mixed_prev);
  T *dx_p = dx.mutable_data(), *dh0_p = dh0.mutable_data(), *dc0_p = dc0.mutable_data();
  const T *x_p = x.data(), *h0_p = h0.data(), *c0_p = c0.data(), *y_p = y.data(),
          *gates_p = gates.data(), *c_p = c.data(), *dy_p = dy.data(), *dh_n_p = dh_n.data(),
          *dc_n_p = dc_n.data();
  py::object none = py::none();
  return run_or_defer(
      with_norms<T>(py::make_tuple(dx, dh0, dc0, own ? py::object(dw_ih) : none,
                                   own ? py::object(dw_hh) : none,
                                   bias && own ? py::object(db_ih) : none,
                                   bias && own ? py::object(db_hh) : none,
                                   w_hr && own ? py::object(dw_hr) : none),
                    grad_norms, norms),
      py::make_tuple(x, h0, c0, y, gates, c, w_ih, w_hh, b_ih, b_hh, lengths, dy, dh_n, dc_n,
                     w_hr, py::cast(into)),
      [=]() mutable {
        (void)steps;  // the workspace lives as long as the job
        lstm::backward<T>(dx_p, dh0_p, dc0_p, g, x_p, h0_p, c0_p, y_p, gates_p, c_p, w, l,
                          dy_p, dh_n_p, dc_n_p, opt, reverse, ws, d);
      }, defer);
}

template <typename T>
void def_lstm(py::module_& m) {
  m.def("lstm_forward", &lstm_forward<T>, py::arg("x").noconvert(), py::arg("h0").noconvert(),
        py::arg("c0").noconvert(), py::arg("weight_ih").noconvert(),
        py::arg("weight_hh").noconvert(), py::arg("bias_ih").noconvert().none(true),
        py::arg("bias_hh").noconvert().none(true), py::arg("lengths").noconvert().none(true),
        py::arg("reverse") = false, py::arg("weight_hr").noconvert().none(true) = py::none(),
        py::arg("defer") = false, py::arg("plan_steps") = 0, py::arg("offset") = 0,
        "One LSTM layer over the whole sequence. Returns (y (B, T, S), h_n (B, S), c_n (B, H), "
        "gates (B, T, 4H), c (B, T, H)); gates (activated i, f, g, o) and c are for backward. "
        "S = H, or P with weight_hr (P, H), the projection h_t = W_hr (o ⊙ tanh(c_t)). "
        REVERSE_DOC);
  m.def("lstm_backward", &lstm_backward<T>, py::arg("x").noconvert(), py::arg("h0").noconvert(),
        py::arg("c0").noconvert(), py::arg("y").noconvert(), py::arg("gates").noconvert(),
        py::arg("c").noconvert(), py::arg("weight_ih").noconvert(),
        py::arg("weight_hh").noconvert(), py::arg("bias_ih").noconvert().none(true),
        py::arg("bias_hh").noconvert().none(true), py::arg("lengths").noconvert().none(true),
        py::arg("dy").noconvert(), py::arg("dh_n").noconvert(), py::arg("dc_n").noconvert(),
        py::arg("clip_per_step") = 0.0, py::arg("grad_norms") = false, py::arg("reverse") = false,
        py::arg("weight_hr").noconvert().none(true) = py::none(),
        py::arg("defer") = false, py::arg("plan_steps") = 0, py::arg("offset") = 0,
        py::arg("into").none(true) = nullptr,
        "Backpropagation through time for one LSTM layer. "
        "Returns (dx, dh0, dc0, dweight_ih, dweight_hh, dbias_ih, dbias_hh, dweight_hr); the "
        "biases' are None when the layer has none, dweight_hr without weight_hr. "
        STEP_OPTIONS_DOC " The cell path dc is not clipped.");
}

template <typename T>
py::object gru_forward(const Array<T>& x, const Array<T>& h0, const Array<T>& w_ih,
                      const Array<T>& w_hh, const std::optional<Array<T>>& b_ih,
                      const std::optional<Array<T>>& b_hh, const std::optional<Lengths>& lengths,
                      bool reverse, bool defer, Index plan_steps, Index offset) {
  Dims d = layer_dims<T>(x, w_ih, w_hh, 3);
  set_plan(d, plan_steps, offset);
  expect_shape(h0, {d.B, d.H}, "h0");
  const auto w = weights<T>(w_ih, w_hh, b_ih, b_hh, d, 3);
  const auto* l = lengths_ptr(lengths, d.B, d.T);
  Array<T> y = new_array<T>({d.B, d.T, d.H});
  Array<T> h_n = new_array<T>({d.B, d.H});
  Array<T> gates = new_array<T>({d.B, d.T, 3 * d.H});
  Array<T> a_hn = new_array<T>({d.B, d.T, d.H});
  auto ah = std::make_shared<Buffer<T>>(static_cast<size_t>(d.B * 3 * d.H));
  const gru::ForwardWorkspace<T> ws{ah->data()};
  T *y_p = y.mutable_data(), *h_n_p = h_n.mutable_data(), *gates_p = gates.mutable_data(),
    *a_hn_p = a_hn.mutable_data();
  const T *x_p = x.data(), *h0_p = h0.data();
  return run_or_defer(py::make_tuple(y, h_n, gates, a_hn),
                      py::make_tuple(x, h0, w_ih, w_hh, b_ih, b_hh, lengths), [=] {
                        (void)ah;  // the workspace lives as long as the job
                        gru::forward<T>(y_p, h_n_p, gates_p, a_hn_p, x_p, h0_p, w, l, reverse,
                                        ws, d);
                      }, defer);
}

template <typename T>
py::object gru_backward(const Array<T>& x, const Array<T>& h0, const Array<T>& y,
                       const Array<T>& gates, const Array<T>& a_hn, const Array<T>& w_ih,
                       const Array<T>& w_hh, const std::optional<Array<T>>& b_ih,
                       const std::optional<Array<T>>& b_hh, const std::optional<Lengths>& lengths,
                       const Array<T>& dy, const Array<T>& dh_n, double clip_per_step,
                       bool grad_norms, bool reverse, bool defer, Index plan_steps,
                       Index offset, GradSum<T>* into) {
  Dims d = layer_dims<T>(x, w_ih, w_hh, 3);
  set_plan(d, plan_steps, offset);
  expect_shape(h0, {d.B, d.H}, "h0");
  expect_shape(y, {d.B, d.T, d.H}, "y");
  expect_shape(gates, {d.B, d.T, 3 * d.H}, "gates");
  expect_shape(a_hn, {d.B, d.T, d.H}, "a_hn");
  expect_shape(dy, {d.B, d.T, d.H}, "dy");
  expect_shape(dh_n, {d.B, d.H}, "dh_n");
  const auto w = weights<T>(w_ih, w_hh, b_ih, b_hh, d, 3);
  const auto* l = lengths_ptr(lengths, d.B, d.T);
  const bool bias = b_ih.has_value();
  const Index GH = 3 * d.H;

  const Index own = into == nullptr ? 1 : 0;  // without into, this call's own gradients
  Array<T> dx = new_array<T>({d.B, d.T, d.D});
  Array<T> dh0 = new_array<T>({d.B, d.H});
  Array<T> dw_ih = new_array<T>({own * GH, d.D});
  Array<T> dw_hh = new_array<T>({own * GH, d.H});
  Array<T> db_ih = new_array<T>({bias ? own * GH : Index(0)});
  Array<T> db_hh = new_array<T>({bias ? own * GH : Index(0)});
  Array<T> norms = new_array<T>({grad_norms ? d.B : Index(0), grad_norms ? d.T : Index(0)});
  const auto opt = step_options<T>(clip_per_step, grad_norms, norms);
  auto dah = std::make_shared<Buffer<T>>(static_cast<size_t>(d.B * GH));
  // dh_total, dh_prev, and h_prev only where a reverse walk with lengths may need it
  const bool mixed_prev = reverse && l != nullptr;
  auto steps = std::make_shared<Buffer<T>>(static_cast<size_t>((mixed_prev ? 3 : 2) * d.B * d.H));

  LayerGrads<T> g = into != nullptr
      ? into->grads(d, 3, bias, false)
      : LayerGrads<T>{MatrixMap<T>(dw_ih.mutable_data(), GH, d.D),
                      MatrixMap<T>(dw_hh.mutable_data(), GH, d.H),
                      bias ? db_ih.mutable_data() : nullptr,
                      bias ? db_hh.mutable_data() : nullptr};
  T* s = steps->data();
  const gru::Workspace<T> ws{dah->data(), s, s + d.B * d.H,
                             mixed_prev ? s + 2 * d.B * d.H : nullptr};
  T *dx_p = dx.mutable_data(), *dh0_p = dh0.mutable_data();
  const T *x_p = x.data(), *h0_p = h0.data(), *y_p = y.data(), *gates_p = gates.data(),
          *a_hn_p = a_hn.data(), *dy_p = dy.data(), *dh_n_p = dh_n.data();
  py::object none = py::none();
  return run_or_defer(
      with_norms<T>(py::make_tuple(dx, dh0, own ? py::object(dw_ih) : none,
                                   own ? py::object(dw_hh) : none,
                                   bias && own ? py::object(db_ih) : none,
                                   bias && own ? py::object(db_hh) : none),
                    grad_norms, norms),
      py::make_tuple(x, h0, y, gates, a_hn, w_ih, w_hh, b_ih, b_hh, lengths, dy, dh_n,
                     py::cast(into)),
      [=]() mutable {
        (void)dah;  // the workspaces live as long as the job
        (void)steps;
        gru::backward<T>(dx_p, dh0_p, g, x_p, h0_p, y_p, gates_p, a_hn_p, w, l, dy_p, dh_n_p,
                         opt, reverse, ws, d);
      }, defer);
}

template <typename T>
void def_gru(py::module_& m) {
  m.def("gru_forward", &gru_forward<T>, py::arg("x").noconvert(), py::arg("h0").noconvert(),
        py::arg("weight_ih").noconvert(), py::arg("weight_hh").noconvert(),
        py::arg("bias_ih").noconvert().none(true), py::arg("bias_hh").noconvert().none(true),
        py::arg("lengths").noconvert().none(true), py::arg("reverse") = false,
        py::arg("defer") = false, py::arg("plan_steps") = 0, py::arg("offset") = 0,
        "One GRU layer over the whole sequence. Returns (y (B, T, H), h_n (B, H), "
        "gates (B, T, 3H), a_hn (B, T, H)); gates (activated r, z, n) and a_hn "
        "(W_hn h_{t-1} + b_hn) are for backward. " REVERSE_DOC);
  m.def("gru_backward", &gru_backward<T>, py::arg("x").noconvert(), py::arg("h0").noconvert(),
        py::arg("y").noconvert(), py::arg("gates").noconvert(), py::arg("a_hn").noconvert(),
        py::arg("weight_ih").noconvert(), py::arg("weight_hh").noconvert(),
        py::arg("bias_ih").noconvert().none(true), py::arg("bias_hh").noconvert().none(true),
        py::arg("lengths").noconvert().none(true), py::arg("dy").noconvert(),
        py::arg("dh_n").noconvert(), py::arg("clip_per_step") = 0.0,
        py::arg("grad_norms") = false, py::arg("reverse") = false,
        py::arg("defer") = false, py::arg("plan_steps") = 0, py::arg("offset") = 0,
        py::arg("into").none(true) = nullptr,
        "Backpropagation through time for one GRU layer. "
        "Returns (dx, dh0, dweight_ih, dweight_hh, dbias_ih, dbias_hh); the biases' are None "
        "when the layer has none. " STEP_OPTIONS_DOC);
}

template <typename T>
void def_grad_sum(py::module_& m, const char* name) {
  py::class_<GradSum<T>>(m, name, "The weight gradients of a checkpointed backward, summed "
                                  "over its segments: pass as into= to each segment's backward, "
                                  "then take result().")
      .def(py::init<const Array<T>&, const Array<T>&, bool, const std::optional<Array<T>>&>(),
           py::arg("weight_ih").noconvert(), py::arg("weight_hh").noconvert(), py::arg("bias"),
           py::arg("weight_hr").noconvert().none(true) = py::none())
      .def("result", &GradSum<T>::result,
           "(dweight_ih, dweight_hh, dbias_ih, dbias_hh, dweight_hr), None for an absent one.");
}

// True when no element is NaN or infinite. The models call it on x and dy at every step, so it
// is one vectorised pass with no temporary: v * 0 is 0 for a finite v and NaN for NaN or ±inf,
// so the sum of v * 0 is 0 exactly when every element is finite. The GIL is let go only where
// the pass is long; with two threads allowed, a long pass (the 2-8 MB x and dy of the long and
// large configs) is split in two halves, the second on the helper thread (parallel_chunks).
template <typename T>
bool all_finite(const py::array_t<T, py::array::c_style>& a) {
  if (a.ndim() != 1) throw std::invalid_argument("all_finite takes a 1-D array");
  const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> v(a.data(), a.shape(0));
  if (v.size() < (Index(1) << 16)) return (v * T(0)).sum() == T(0);
  py::gil_scoped_release release;
  const bool split = rnnfast::num_threads().load() >= 2 && v.size() >= (Index(1) << 18);
  std::atomic<bool> finite{true};
  rnnfast::parallel_chunks(v.size(), split ? 2 : 1, [&](Index b, Index e) {
    if ((v.segment(b, e - b) * T(0)).sum() != T(0)) finite.store(false);
  });
  return finite.load();
}

}  // namespace

PYBIND11_MODULE(RNNFAST_MODULE, m) {
  m.doc() = "rnnfast's compiled time loops (private: use the rnnfast package)";
  def_rnn<float>(m);
  def_rnn<double>(m);
  def_lstm<float>(m);
  def_lstm<double>(m);
  def_gru<float>(m);
  def_gru<double>(m);

  def_grad_sum<float>(m, "GradSum32");
  def_grad_sum<double>(m, "GradSum64");
  m.def("segment_unit", &segment_unit<float>, py::arg("gates"), py::arg("batch"),
        py::arg("steps"), py::arg("input_size"), py::arg("hidden_size"), py::arg("proj_size"),
        py::arg("threads"));
  m.def("segment_unit64", &segment_unit<double>, py::arg("gates"), py::arg("batch"),
        py::arg("steps"), py::arg("input_size"), py::arg("hidden_size"), py::arg("proj_size"),
        py::arg("threads"),
        "segment_unit (float32) and segment_unit64 (float64): the steps that the segments of "
        "a checkpointed backward over `steps` steps start at multiples of, for their products "
        "to be the whole call's.");

  py::class_<Deferred>(m, "Deferred", "A layer call made with defer=True: pass it to "
                                      "run_concurrently.");
  m.def("run_concurrently", &run_concurrently, py::arg("calls"),
        "Runs layer calls made with defer=True, at the same time where threads allow (two "
        "calls, two threads or more), and returns their results in order.");

  // Threads of Eigen's products (OpenMP builds; otherwise always 1). Default: OMP_NUM_THREADS.
  m.def("all_finite", &all_finite<float>, py::arg("a").noconvert());
  m.def("all_finite", &all_finite<double>, py::arg("a").noconvert(),
        "True when no element of the 1-D array a is NaN or infinite.");

  // rnnfast's own threads (batch split of a layer call, threads.hpp split_count) and, in OpenMP
  // builds, Eigen's: set together.
  rnnfast::num_threads().store(std::max(1, Eigen::nbThreads()));
  m.def("set_num_threads", [](int n) {
    Eigen::setNbThreads(n);
    rnnfast::num_threads().store(std::max(1, n));
  }, py::arg("n"));
  m.def("get_num_threads", []() { return rnnfast::num_threads().load(); });
  // Private, for the benchmark (rnnfast.bench): the helper thread (helper.hpp) stops spinning.
  m.def("_rest_helper", []() { rnnfast::Helper::rest(); });

  // The block cache of large arrays (buffers.hpp).
  m.def("set_cache_limit", [](std::size_t limit) { BlockCache::instance().set_limit(limit); },
        py::arg("nbytes"));
  m.def("empty_cache", []() { BlockCache::instance().empty(); });
  m.def("cache_info", []() {
    const auto i = BlockCache::instance().info();
    py::dict d;
    d["cached_bytes"] = i.cached_bytes;
    d["cached_blocks"] = i.cached_blocks;
    d["limit"] = i.limit;
    d["hits"] = i.hits;
    d["misses"] = i.misses;
    return d;
  });
  m.def("_set_cache_poison", [](bool on) { BlockCache::instance().set_poison(on); },
        py::arg("on"), "Tests only: fill every new output and workspace with NaN.");
  m.def("_set_cache_fail_after", [](long count) { BlockCache::instance().set_fail_after(count); },
        py::arg("count"),
        "Tests only: the allocation after `count` more of the block cache and the workspaces "
        "fails with MemoryError; negative turns it off.");
}
