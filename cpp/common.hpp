// Shared pieces of the fast path: array views, one layer's weights, and the two
// products that every cell does outside its time loop.
//
// Letters: B = batch, T = timesteps, D = input features, H = hidden units,
// G = gates per cell (RNN 1, LSTM 4, GRU 3). Arrays are batch-first and C-ordered,
// so a (B, T, W) array flattens to (B*T, W) rows ordered r = b*T + t.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <algorithm>
#include <array>
#include <atomic>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "buffers.hpp"
#include "helper.hpp"

namespace rnnfast {

using Index = Eigen::Index;

template <typename T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using MatrixMap = Eigen::Map<Matrix<T>>;
template <typename T>
using ConstMatrixMap = Eigen::Map<const Matrix<T>>;
template <typename T>
using RowVectorMap = Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>;
template <typename T>
using ConstRowVectorMap = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>;

// The (B, W) slice at one timestep of a (B, T, W) array: its rows are T*W apart.
template <typename T>
using StepMap = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using ConstStepMap = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;

template <typename T>
StepMap<T> at_step(T* base, Index B, Index T_, Index W, Index t) {
  return StepMap<T>(base + t * W, B, W, Eigen::OuterStride<>(T_ * W));
}
template <typename T>
ConstStepMap<T> at_step(const T* base, Index B, Index T_, Index W, Index t) {
  return ConstStepMap<T>(base + t * W, B, W, Eigen::OuterStride<>(T_ * W));
}

struct Dims {
  Index B, T, D, H;
  Index P = 0;  // the LSTM's proj_size: h_t has P units, c_t H; 0 for none
  Index state() const { return P > 0 ? P : H; }  // units of h_t, the state other steps read
};

// lengths == nullptr means every sequence runs all T steps.
inline bool is_valid(const std::int64_t* lengths, Index b, Index t) {
  return lengths == nullptr || t < lengths[b];
}

// p + offset, or nullptr for a buffer that is not there (nullptr + n is undefined behaviour).
template <typename T>
T* rows_from(T* p, Index offset) {
  return p == nullptr ? nullptr : p + offset;
}

// Which way a layer walks time. Forward: t = 0, 1, ..., T - 1, each step starting from the
// state after step t - 1. Reverse (the second direction of a bidirectional layer): t = T - 1
// down to 0, each step starting from the state after step t + 1, and sequence b starting at its
// last valid step, lengths[b] - 1, from h0 (PyTorch's packed sequences). Either way a sequence
// is running at step t exactly when t < lengths[b], so the lengths masks are the same.
struct Walk {
  bool reverse = false;
  const std::int64_t* lengths = nullptr;  // the layer call's (B,) lengths, or nullptr
};

// Backward's view of the (B, W) states that step t started from (h_{t-1} or c_{t-1}, forward):
// those `saved` (B, T, W) by the step walked before it, or `initial` (B, W) where there is
// none: at the walk's first step and, in reverse, at a sequence's last valid step, where step
// t + 1 did not run and saved zeros. Rows of both kinds at one step are copied into `scratch`
// (B, W). Rows of sequences not running at t are whatever comes: their gradients are zero.
template <typename T>
ConstStepMap<T> state_before(const T* saved, const T* initial, T* scratch, Index B, Index T_,
                             Index W, Index t, const Walk& walk) {
  const Index before = walk.reverse ? t + 1 : t - 1;
  if (before < 0 || before >= T_) return ConstStepMap<T>(initial, B, W, Eigen::OuterStride<>(W));
  const ConstStepMap<T> prev = at_step(saved, B, T_, W, before);
  if (!walk.reverse || walk.lengths == nullptr) return prev;
  bool mixed = false;
  for (Index b = 0; b < B; ++b) mixed = mixed || walk.lengths[b] == t + 1;
  if (!mixed) return prev;
  MatrixMap<T> rows(scratch, B, W);
  for (Index b = 0; b < B; ++b) {
    if (walk.lengths[b] == t + 1)
      rows.row(b) = ConstMatrixMap<T>(initial + b * W, 1, W);
    else
      rows.row(b) = prev.row(b);
  }
  return ConstStepMap<T>(scratch, B, W, Eigen::OuterStride<>(W));
}

// One layer's parameters, with PyTorch's names and shapes; they travel together. S is the
// state's units: H, or P for an LSTM with a projection.
template <typename T>
struct LayerWeights {
  ConstMatrixMap<T> w_ih;  // (G*H, D)
  ConstMatrixMap<T> w_hh;  // (G*H, S)
  const T* b_ih;           // (G*H,), nullptr when the layer has no bias
  const T* b_hh;           // (G*H,), nullptr when the layer has no bias
  const T* w_hr = nullptr;  // (P, H): the LSTM's projection, nullptr for none
};

// Where the gradients of one layer's parameters go (same shapes as LayerWeights).
template <typename T>
struct LayerGrads {
  MatrixMap<T> dw_ih;  // (G*H, D)
  MatrixMap<T> dw_hh;  // (G*H, S)
  T* db_ih;            // (G*H,), nullptr when the layer has no bias
  T* db_hh;            // (G*H,), nullptr when the layer has no bias
  T* dw_hr = nullptr;  // (P, H), nullptr for none
};

// The two options of backward that act on dL/dh_t inside the time loop. Off by default.
template <typename T>
struct StepOptions {
  T clip = T(0);          // > 0: rescale each sequence's dL/dh_t to this norm when above it
  T* norms = nullptr;     // (B, T): ‖dL/dh_t‖ per sequence, before clipping; nullptr: not kept
  bool active() const { return clip > T(0) || norms != nullptr; }
};

// The per-step options on dh_total (B, H), the total dL/dh_t at step t (from the loss at t and
// from step t+1), one sequence (row) at a time, so a sequence's gradient does not depend on
// the rest of the batch. For every valid row: write its L2 norm to norms[b, t], then rescale
// it to norm opt.clip if it is larger. Rows past their sequence's length are left alone (their
// dh_total is not used) and get norm 0.
// Σ v_j², element after element: a fixed order, for the reason given at add_rows.
template <typename V>
typename V::Scalar sum_of_squares(const V& v) {
  typename V::Scalar s(0);
  for (Index j = 0; j < v.size(); ++j) s += v(j) * v(j);
  return s;
}

template <typename T, typename Block>
void clip_rows_and_norms(Block&& dh_total, const StepOptions<T>& opt,
                         const std::int64_t* lengths, Index t, Index T_) {
  for (Index b = 0; b < dh_total.rows(); ++b) {
    if (!is_valid(lengths, b, t)) {
      if (opt.norms != nullptr) opt.norms[b * T_ + t] = T(0);
      continue;
    }
    auto row = dh_total.row(b);
    const T norm = std::sqrt(sum_of_squares(row));
    if (opt.norms != nullptr) opt.norms[b * T_ + t] = norm;
    if (opt.clip > T(0) && norm > opt.clip) row *= opt.clip / norm;
  }
}

// -- threads --------------------------------------------------------------------------------
// rnnfast.set_num_threads(n). Default 1 (set at import from Eigen::nbThreads(), which is 1
// unless the build has OpenMP).
inline std::atomic<int>& num_threads() {
  static std::atomic<int> n{1};
  return n;
}

// The threads a layer call on this thread may use: num_threads(), unless the call is one of
// several run at the same time (run_concurrently in bindings.cpp: the two directions of a
// bidirectional layer), which gives each of its threads a share for as long as a ThreadShare
// lives.
inline int& thread_share() {
  thread_local int share = 0;  // 0: no share given, num_threads() holds
  return share;
}
inline int allowed_threads() {
  const int share = thread_share();
  return share > 0 ? share : num_threads().load(std::memory_order_relaxed);
}
struct ThreadShare {
  explicit ThreadShare(int n) : before_(thread_share()) { thread_share() = n; }
  ~ThreadShare() { thread_share() = before_; }
  ThreadShare(const ThreadShare&) = delete;
  ThreadShare& operator=(const ThreadShare&) = delete;

 private:
  int before_;
};

// The sequences of a batch are independent in both time loops, so a layer call splits its
// batch into contiguous chunks, one thread each, and every thread runs the whole loop on its
// rows: no synchronisation per step (a per-step split of the recurrent product would need two
// barriers per step, 2·T per call). Worth it when a call has enough work to pay for starting a
// thread (~50 µs): MACs of the layer's products ≥ 2^22 (~0.1 ms). Returns the number of chunks;
// 1 means the exact serial code path, bit for bit as without threads. For a given count, the
// chunks and so the results are always the same.
inline int split_count(const Dims& d, Index G) {
  const int n = allowed_threads();
  if (n <= 1 || d.B < 2) return 1;
  const double macs = double(d.B) * double(d.T) * double(G * d.H) * double(d.D + d.state());
  if (macs < double(1 << 22)) return 1;
  return int(std::min<Index>(n, d.B));
}

// The helper thread's share of a layer call whose batch is not split (helper.hpp): the input
// side ahead of forward's loop and the window products behind backward's. Only with at least
// 2 threads allowed, and with enough of that work to pay for handing it over (input side
// ≥ 2^18 MACs, ~10 µs) in pieces of a few steps (T ≥ 32). nullptr: the call runs serially.
inline Helper* helper_for(const Dims& d, Index G) {
  if (allowed_threads() < 2 || split_count(d, G) != 1) return nullptr;
  const double input_macs = double(d.B) * double(d.T) * double(G * d.H) * double(d.D);
  if (d.T < 32 || input_macs < double(1 << 18)) return nullptr;
  return Helper::get();
}

// fn(begin, end) for `chunks` contiguous chunks of [0, n): chunk k is [n·k/chunks,
// n·(k+1)/chunks). Chunk 0 runs on the calling thread, chunk 1 on the helper thread
// (helper.hpp), the others, if any, on threads started here; if a thread cannot be started,
// or the helper is busy with another Python thread's call, that chunk runs on a thread of its
// own or the calling thread (same result). The helper, rather than a thread started per call:
// a step of the long RNN (16, 1000, 32, 64) at 2 threads made 2 threads and ~40 page faults
// (each new thread's stack and malloc arena come back unmapped) in ~8 ms. If fn throws (a
// workspace that cannot be allocated), every chunk still finishes or fails, and then the first
// exception is rethrown here: an exception escaping a std::thread would end the process.
template <typename F>
void parallel_chunks(Index n, int chunks, F&& fn) {
  if (chunks <= 1 || n < 2) {
    fn(Index(0), n);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  auto keep = [&](std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!error) error = std::move(e);
  };
  auto run = [&](Index b, Index e) {
    try {
      fn(b, e);
    } catch (...) {
      keep(std::current_exception());
    }
  };
  auto begin = [&](int k) { return n * k / chunks; };
  Helper* helper = Helper::get();
  Task task;
  task.assign([&] { fn(begin(1), begin(2)); });  // its exception is rethrown by finish
  const bool on_helper = helper != nullptr && helper->try_offer(task);
  std::vector<std::thread> pool;
  pool.reserve(chunks - 1);
  for (int k = on_helper ? 2 : 1; k < chunks; ++k) {
    try {
      pool.emplace_back(run, begin(k), begin(k + 1));
    } catch (...) {
      run(begin(k), begin(k + 1));
    }
  }
  run(Index(0), begin(1));
  if (on_helper) {
    try {
      helper->finish(task);
    } catch (...) {
      keep(std::current_exception());
    }
  }
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

// dst (cols × rows) = src (rows × cols)^T, or dst += src^T with Add, both row-major: tiles of
// P × P elements, P the SIMD width, each loaded as P packets, transposed in registers by
// Eigen's ptranspose and stored as P packets. Eigen's own transposing assignment goes element
// by element, with every store cols apart: 20 µs for a 256 × 64 float matrix here, against
// 4 µs this way, while batch 1's forward gains only ~16 µs from the copy over 100 steps.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // a packet type as template argument
#endif
template <bool Add = false, typename T>
void transpose_into(T* dst, const T* src, Index rows, Index cols) {
  namespace ei = Eigen::internal;
  using Packet = typename ei::packet_traits<T>::type;
  constexpr int P = ei::unpacket_traits<Packet>::size;
  Index r = 0;
  for (; r + P <= rows; r += P) {
    Index c = 0;
    for (; c + P <= cols; c += P) {
      ei::PacketBlock<Packet, P> tile;
      for (int i = 0; i < P; ++i) tile.packet[i] = ei::ploadu<Packet>(src + (r + i) * cols + c);
      ei::ptranspose(tile);
      for (int i = 0; i < P; ++i) {
        T* out = dst + (c + i) * rows + r;
        ei::pstoreu(out, Add ? ei::padd(ei::ploadu<Packet>(out), tile.packet[i]) : tile.packet[i]);
      }
    }
    for (; c < cols; ++c)
      for (Index i = 0; i < P; ++i)
        dst[c * rows + r + i] = (Add ? dst[c * rows + r + i] : T(0)) + src[(r + i) * cols + c];
  }
  for (; r < rows; ++r)
    for (Index c = 0; c < cols; ++c)
      dst[c * rows + r] = (Add ? dst[c * rows + r] : T(0)) + src[r * cols + c];
}
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

// The recurrent product of one timestep: dst (+)= lhs · W_hh^T in forward (lhs = h_{t-1}) and
// dst = lhs · W_hh in backward (lhs = dL/da_t), with W_hh the same at every step.
// InputSide uses the forward form too, for x_t W_ih^T over 16 steps of one sequence: there
// the matrix the members call w_hh is W_ih.
//
// A product in Eigen packs both operands into its kernel's panel layout and then runs the
// kernel on the panels. Repacking W_hh at every step cost 12 % of a step at the large LSTM
// config and 7 % at the long one (perf); here it is packed once per call, and each step packs
// only its (B, ·) lhs. The blocking, the packing routines and the kernel are Eigen's own, called
// in the order Eigen's sequential GEMM calls them, so every element is summed in the same order.
// The buffers are sized once per call: nothing is allocated in the loop.
//
// In Eigen's terms a row-major product is computed as its column-major transpose:
// dst^T (m × n) = A (m × k) · lhs^T (k × n), where n = B and A = W^T is W_hh (row-major) in
// forward and W_hh read column-major in backward. Products Eigen does as GEMV (a dimension of
// 1, e.g. batch 1) keep the ordinary expression, except forward at batch 1: there A is read
// row by row, as dot products, 1.2-1.8x slower here than Eigen's column-at-a-time GEMV
// (64 units, 1-4 gates), which backward's A already gets; so forward reads a transposed
// copy of W_hh, made once per call.
template <typename T, bool Forward>
class RecurrentProduct {
 public:
  RecurrentProduct(ConstMatrixMap<T> w_hh, Index n)
      : w_hh_(w_hh),
        m_(Forward ? w_hh.rows() : w_hh.cols()),
        k_(Forward ? w_hh.cols() : w_hh.rows()),
        n_(n),
        packed_a_(0),
        packed_b_(0),
        w_hh_t_(0) {
    if (Forward && n_ == 1 && m_ > 1) {
      w_hh_t_ = Buffer<T>(static_cast<std::size_t>(k_ * m_));
      transpose_into(w_hh_t_.data(), w_hh.data(), m_, k_);
    }
    if (!use_gemm()) return;
    Eigen::internal::gemm_blocking_space<Eigen::ColMajor, T, T, Eigen::Dynamic, Eigen::Dynamic,
                                         Eigen::Dynamic>
        blocking(m_, n_, k_, 1, true);
    kc_ = blocking.kc();
    mc_ = std::min(m_, blocking.mc());
    nc_ = std::min(n_, blocking.nc());
    // One slot per block, each a whole number of cache lines: the kernel loads aligned packets.
    slot_a_ = round_up(mc_ * kc_);
    slot_b_ = round_up(kc_ * nc_);
    packed_a_ = Buffer<T>(blocks(m_, mc_) * blocks(k_, kc_) * slot_a_);
    packed_b_ = Buffer<T>(blocks(k_, kc_) * blocks(n_, nc_) * slot_b_);
    Eigen::internal::gemm_pack_lhs<T, Index, AMapper, Traits::mr, Traits::LhsProgress,
                                   typename Traits::LhsPacket4Packing, AOrder>
        pack_a;
    const AMapper a(w_hh.data(), w_hh.cols());
    for (Index i2 = 0; i2 < m_; i2 += mc_)
      for (Index k2 = 0; k2 < k_; k2 += kc_)
        pack_a(a_block(i2, k2), a.getSubMapper(i2, k2), std::min(kc_, k_ - k2),
               std::min(mc_, m_ - i2));
  }

  // dst (n × m) += lhs (n × k); both row-major with unit inner stride (maps of whole rows).
  template <typename Dst, typename Lhs>
  void add(Dst&& dst, const Lhs& lhs) {
    using D = std::decay_t<Dst>;
    static_assert((D::Flags & Eigen::RowMajorBit) && (Lhs::Flags & Eigen::RowMajorBit) &&
                      D::InnerStrideAtCompileTime == 1 && Lhs::InnerStrideAtCompileTime == 1,
                  "row-major operands with contiguous rows");
    eigen_assert(dst.rows() == n_ && dst.cols() == m_ && lhs.rows() == n_ && lhs.cols() == k_);
    if (!use_gemm()) {
      if constexpr (Forward) {
        if (w_hh_t_.size() > 0)
          dst.noalias() += lhs * ConstMatrixMap<T>(w_hh_t_.data(), k_, m_);
        else
          dst.noalias() += lhs * w_hh_.transpose();
      } else {
        dst.noalias() += lhs * w_hh_;
      }
      return;
    }
    Eigen::internal::gemm_pack_rhs<T, Index, BMapper, Traits::nr, Eigen::ColMajor> pack_b;
    Eigen::internal::gebp_kernel<T, T, Index, ResMapper, Traits::mr, Traits::nr, false, false>
        gebp;
    const BMapper b(lhs.data(), lhs.outerStride());
    const ResMapper res(dst.data(), dst.outerStride(), 1);
    for (Index k2 = 0; k2 < k_; k2 += kc_)
      for (Index j2 = 0; j2 < n_; j2 += nc_)
        pack_b(b_block(k2, j2), b.getSubMapper(k2, j2), std::min(kc_, k_ - k2),
               std::min(nc_, n_ - j2));
    for (Index i2 = 0; i2 < m_; i2 += mc_)
      for (Index k2 = 0; k2 < k_; k2 += kc_)
        for (Index j2 = 0; j2 < n_; j2 += nc_)
          gebp(res.getSubMapper(i2, j2), a_block(i2, k2), b_block(k2, j2),
               std::min(mc_, m_ - i2), std::min(kc_, k_ - k2), std::min(nc_, n_ - j2), T(1));
  }

  template <typename Dst, typename Lhs>
  void assign(Dst&& dst, const Lhs& lhs) {
    dst.setZero();
    add(dst, lhs);
  }

 private:
  using Traits = Eigen::internal::gebp_traits<T, T>;
  static constexpr int AOrder = Forward ? Eigen::RowMajor : Eigen::ColMajor;
  using AMapper = Eigen::internal::const_blas_data_mapper<T, Index, AOrder>;
  using BMapper = Eigen::internal::const_blas_data_mapper<T, Index, Eigen::ColMajor>;
  using ResMapper = Eigen::internal::blas_data_mapper<T, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;

  // Eigen's own test in generic_product_impl::scaleAndAddTo, with
  // EIGEN_GEMM_TO_COEFFBASED_THRESHOLD = 0 (CMakeLists.txt).
  bool use_gemm() const { return m_ > 1 && n_ > 1 && k_ > 0; }

  static Index blocks(Index size, Index block) { return (size + block - 1) / block; }
  static Index round_up(Index count) {
    constexpr Index line = 64 / sizeof(T);
    return (count + line - 1) / line * line;
  }
  T* a_block(Index i2, Index k2) {
    return packed_a_.data() + ((i2 / mc_) * blocks(k_, kc_) + k2 / kc_) * slot_a_;
  }
  T* b_block(Index k2, Index j2) {
    return packed_b_.data() + ((k2 / kc_) * blocks(n_, nc_) + j2 / nc_) * slot_b_;
  }

  ConstMatrixMap<T> w_hh_;
  Index m_, k_, n_;
  Index kc_ = 0, mc_ = 0, nc_ = 0, slot_a_ = 0, slot_b_ = 0;
  Buffer<T> packed_a_, packed_b_;  // W^T's blocks, packed once; lhs^T's, packed every step
  Buffer<T> w_hh_t_;                // (k, m): W_hh^T, forward at batch 1 only
};

template <typename T>
using ForwardRecurrent = RecurrentProduct<T, true>;  // h_{t-1} W_hh^T
template <typename T>
using BackwardRecurrent = RecurrentProduct<T, false>;  // dL/da_t W_hh

// σ(a) = (1 + tanh(a/2)) / 2, as an expression, or in place. Equal to 1 / (1 + exp(-a)), but no
// intermediate can overflow, so a saturated gate is exactly 0 or 1 and never inf or NaN, in
// float32 too. The one definition for every cell and path.
template <typename Derived>
auto sigmoid(const Eigen::ArrayBase<Derived>& a) {
  using T = typename Derived::Scalar;
  return T(0.5) * (T(0.5) * a).tanh() + T(0.5);
}

template <typename Block>
void sigmoid_in_place(Block&& a) {
  a = sigmoid(a.array()).matrix();
}

// Calls step(j, tag, n) over a row of H elements: packets of P, the SIMD width (tag:
// integral_constant<int, P>, n = P), and then the rest, if any (tag: integral_constant<int,
// Eigen::Dynamic>). A cell's step written for Eigen arrays of tag's size then runs a packet at a
// time with every intermediate in registers: one pass over a row where a chain of Eigen
// expressions over (B, H) blocks makes one pass each.
//
// Used for rows up to kPacketRowsUpTo units. Measured against the chains, LSTM step medians of
// alternated rounds at 2 threads: H = 64 (long, (16, 1000, 32, 64)) forward 0.96, backward
// 0.98; H = 128 (small) 0.99, 0.99; H = 256 (medium) 0.94, 0.98; but H = 512 (large) 1.05,
// 1.01: there the chains, each streaming a few arrays, are faster than one loop reading and
// writing eleven rows at once.
constexpr Index kPacketRowsUpTo = 256;

// For the lambdas given to by_packets: GCC left the LSTM backward's out of line (a call per
// packet, its captures reloaded through the stack each time).
#if defined(__GNUC__)
#define RNNFAST_INLINE_LAMBDA __attribute__((always_inline))
#else
#define RNNFAST_INLINE_LAMBDA
#endif

template <typename T, typename Step>
void by_packets(Index H, Step&& step) {
  constexpr int P = Eigen::internal::packet_traits<T>::size;
  const Index whole = H / P * P;
  for (Index j = 0; j < whole; j += P) step(j, std::integral_constant<int, P>(), Index(P));
  if (whole < H) step(whole, std::integral_constant<int, Eigen::Dynamic>(), H - whole);
}

// The input side of every step's pre-activations, a_t = x_t W_ih^T + bias, in the (B, T, G·H)
// array a (x: (B, T, D), bias: (G·H,), or empty for none). Rows start as the bias and the
// product is added onto them: Eigen's `a = x W^T` would zero a first, a pass of its own.
// The time loop calls reach(t) before it reads step t.
//
// With a helper thread (helper.hpp), chunks of kChunk steps are written by it and by the loop,
// whichever gets to the next one first, so the loop mostly finds its steps written.
// Otherwise, when a step's rows are small (≤ 16 KiB: small batches) and the whole array is not
// (> 1 MiB: long sequences), they are written a chunk at a time, just before the loop reaches
// them, with W_ih packed once per call: the loop then finds them in L2. Written all at once,
// the 16 MB array of (16, 1000, 32, 64) went out to memory and came back (LSTM and GRU steps
// 5-8 % slower). Otherwise one product over all B·T rows, before the loop.
// A reverse layer's loop reaches its steps from T - 1 down; chunks are then taken in that
// order, chunk k being the k-th kChunk steps of the walk.
template <typename T>
class InputSide {
 public:
  using Bias = Eigen::Matrix<T, 1, Eigen::Dynamic>;

  InputSide(T* a, const T* x, ConstMatrixMap<T> w_ih, Bias bias, const Dims& d,
            Helper* helper = nullptr, bool reverse = false)
      : a_(a), x_(x), w_ih_(w_ih), bias_(std::move(bias)), d_(d), GH_(w_ih.rows()),
        reverse_(reverse), helper_(helper) {
    if (helper_ != nullptr) {
      chunks_ = (d.T + kChunk - 1) / kChunk;
      written_ = std::make_unique<std::atomic<bool>[]>(static_cast<std::size_t>(chunks_));
      for (Index k = 0; k < chunks_; ++k) written_[k].store(false, std::memory_order_relaxed);
      task_.assign([this] {
        while (claim_and_write() < chunks_) {
        }
      });
      helper_->offer(task_);
      return;
    }
    const Index step_bytes = d.B * GH_ * Index(sizeof(T));
    if (d.T > kChunk && step_bytes <= kMaxStepBytes && step_bytes * d.T > kMinArrayBytes)
      chunk_product_.emplace(w_ih, kChunk);
  }

  ~InputSide() {
    if (helper_ != nullptr) helper_->settle(task_);  // it reads this object's members
  }
  InputSide(const InputSide&) = delete;
  InputSide& operator=(const InputSide&) = delete;

  // Step t and those after it in the walk are written as far as the next chunk. Call with
  // t = 0, 1, 2, ... (T - 1, T - 2, ... when reverse).
  void reach(Index t) {
    const Index B = d_.B, T_ = d_.T, D = d_.D;
    const Index s = reverse_ ? T_ - 1 - t : t;  // the step's place in the walk
    if (s < done_) return;
    if (helper_ != nullptr) {
      const Index k = s / kChunk;
      SpinWait wait;
      while (!written_[k].load(std::memory_order_acquire)) {
        if (claim_and_write() < chunks_) continue;
        // The chunk is the helper's, and being written; if the helper failed, rethrow here.
        if (task_.done()) helper_->finish(task_);
        wait();
      }
      done_ = std::min(T_, (k + 1) * kChunk);
      return;
    }
    if (!chunk_product_) {  // all steps, one product
      write(MatrixMap<T>(a_, B * T_, GH_), ConstMatrixMap<T>(x_, B * T_, D), nullptr);
      done_ = T_;
      return;
    }
    const Index steps = std::min(kChunk, T_ - s);
    write_steps(reverse_ ? T_ - s - steps : t, steps,
                steps == kChunk ? &*chunk_product_ : nullptr);
    done_ = s + steps;
  }

 private:
  static constexpr Index kChunk = 16;
  static constexpr Index kMaxStepBytes = Index(16) << 10, kMinArrayBytes = Index(1) << 20;

  void write(MatrixMap<T> a, ConstMatrixMap<T> x, RecurrentProduct<T, true>* packed) {
    if (bias_.size() > 0)
      a.rowwise() = bias_;
    else
      a.setZero();
    if (packed != nullptr)
      packed->add(a, x);
    else
      a.noalias() += x * w_ih_.transpose();
  }

  // Steps [t, t + steps) of every sequence.
  void write_steps(Index t, Index steps, RecurrentProduct<T, true>* packed) {
    for (Index b = 0; b < d_.B; ++b)
      write(MatrixMap<T>(a_ + (b * d_.T + t) * GH_, steps, GH_),
            ConstMatrixMap<T>(x_ + (b * d_.T + t) * d_.D, steps, d_.D), packed);
  }

  // With the helper: takes the next unclaimed chunk, writes it and returns its number, or
  // returns chunks_ or more when none is left. Run by both threads.
  Index claim_and_write() {
    const Index k = next_.fetch_add(1, std::memory_order_relaxed);
    if (k >= chunks_) return k;
    const Index s = k * kChunk, steps = std::min(kChunk, d_.T - s);
    write_steps(reverse_ ? d_.T - s - steps : s, steps, nullptr);
    written_[k].store(true, std::memory_order_release);
    return k;
  }

  T* a_;
  const T* x_;
  ConstMatrixMap<T> w_ih_;
  Bias bias_;
  Dims d_;
  Index GH_, done_ = 0;  // done_: steps of the walk written
  bool reverse_;
  std::optional<RecurrentProduct<T, true>> chunk_product_;  // x_t W_ih^T, kChunk rows
  // With the helper:
  Helper* helper_;
  Task task_;                                     // the helper's share: chunks until none left
  Index chunks_ = 0;                              // ⌈T / kChunk⌉
  std::atomic<Index> next_{0};                    // the first chunk nobody has claimed
  std::unique_ptr<std::atomic<bool>[]> written_;  // per chunk: written, visible to the loop
};

// The input side's bias of the RNN and the LSTM: b_ih + b_hh, both enter a as one.
template <typename T>
Eigen::Matrix<T, 1, Eigen::Dynamic> summed_bias(const LayerWeights<T>& w) {
  if (w.b_ih == nullptr) return {};
  const Index GH = w.w_ih.rows();
  return ConstRowVectorMap<T>(w.b_ih, GH) + ConstRowVectorMap<T>(w.b_hh, GH);
}

// m's rows added to out one after another. Eigen's colwise().sum() picks its order by where
// the data lie in memory, so the same numbers could round differently from one call to the
// next; this order is fixed, and training runs repeat bit for bit.
template <typename T, typename M>
void add_rows(T* out, const M& m) {
  RowVectorMap<T> s(out, m.cols());
  for (Index r = 0; r < m.rows(); ++r) s += m.row(r);
}

// What a backward reads at each step of (B, T, W) arrays (outputs, caches, dy), copied a few
// steps at a time into one time-major buffer: each step then reads one contiguous block instead
// of B rows T·W apart. It pays where those arrays have long left the caches and a step's rows
// are short. Paired A/B (bench/paired_steps.py), backward new/old at 1 and 2 threads: long
// RNN (16, 1000, 32, 64) 0.96, whose per-step reads were ~15 % of its backward (measured by
// leaving them out; prefetching the same rows 8-64 steps ahead gained nothing); long LSTM
// 0.91-0.95; (32, 500, 32, 64) RNN 0.99; but (32, 100, 64, 128) RNN 1.01-1.03, (32, 100, 64,
// 64) 1.00-1.03, and the long GRU 0.98-1.07 (not used there). So: arrays of at least
// kStagedFromBytes, a step's rows at most kStagedStepBytes; batch 1's rows are contiguous
// already, so it reads in place. A reverse layer's backward, whose steps go up, reads in place.
template <typename T, int N>
class StagedSteps {
 public:
  StagedSteps(Index B, Index steps_total, const std::array<const T*, N>& source,
              const std::array<Index, N>& width, bool reverse = false)
      : B_(B), T_(steps_total), next_(steps_total), source_(source), width_(width) {
    for (int k = 0; k < N; ++k) {
      offset_[k] = row_;
      row_ += width_[k];
    }
    const Index step_bytes = B_ * row_ * Index(sizeof(T));
    if (!reverse && B_ > 1 && step_bytes <= kStagedStepBytes &&
        step_bytes * T_ >= kStagedFromBytes)
      steps_ = std::min(T_, kStagedBytes / step_bytes);
    buffer_ = Buffer<T>(static_cast<std::size_t>(steps_ * B_ * row_));
  }

  // The (B, width[k]) block of array k at step t. Steps go down from T - 1, one at a time.
  ConstStepMap<T> at(int k, Index t) {
    if (steps_ == 0) return at_step(source_[k], B_, T_, width_[k], t);
    if (t < next_) copy_down_from(t);
    return block(k, t);
  }

  // Array k at a step below the current one (t - 1, for c_{t-1} or h_{t-1}): from the copy when
  // it holds that step, else in place.
  ConstStepMap<T> below(int k, Index t) {
    if (steps_ == 0 || t < next_) return at_step(source_[k], B_, T_, width_[k], t);
    return block(k, t);
  }

 private:
  static constexpr Index kStagedFromBytes = Index(4) << 20;
  static constexpr Index kStagedStepBytes = Index(32) << 10;
  static constexpr Index kStagedBytes = Index(256) << 10;

  ConstStepMap<T> block(int k, Index t) {
    return ConstStepMap<T>(buffer_.data() + (t - next_) * B_ * row_ + offset_[k], B_,
                           width_[k], Eigen::OuterStride<>(row_));
  }

  // Steps [t - steps + 1, t] (from 0 at the start of the sequence), row (s, b) holding every
  // array's row (b, s) side by side. Each array's rows of one sequence are read in order.
  void copy_down_from(Index t) {
    next_ = std::max<Index>(0, t - steps_ + 1);
    const Index n = t + 1 - next_;
    for (Index b = 0; b < B_; ++b)
      for (int k = 0; k < N; ++k) {
        const T* src = source_[k] + (b * T_ + next_) * width_[k];
        T* dst = buffer_.data() + b * row_ + offset_[k];
        for (Index s = 0; s < n; ++s)
          std::copy_n(src + s * width_[k], width_[k], dst + s * B_ * row_);
      }
  }

  Index B_, T_, next_, row_ = 0, steps_ = 0;
  std::array<const T*, N> source_;
  std::array<Index, N> width_, offset_{};
  Buffer<T> buffer_{0};
};

// Backward's products outside the recurrence, for B sequences:
//   dx = da W_ih,  dW_ih = Σ da^T x,  db_ih = Σ da,  dW_hh = Σ dah^T h_{t-1},
// where da is the gradient of a layer's pre-activations and dah that of their recurrent term
// (the same except in the GRU's n part, which to_recurrent turns into it; it then sums db_hh
// too). They run on windows of steps while the time loop goes on: the loop writes the da of
// each step to da(t), and when t leaves a window the window's products are done. So the
// (B, T, G·H) da is never held whole (memory: the window, not T), and with B·W ≥ 1024 rows a
// window's products run as fast as one product over all B·T rows. The window's x and h_{t-1}
// are copied side by side into one buffer in da's row order, a few percent of the products'
// traffic.
// Rows past a sequence's length must have da = 0: they then add nothing.
// A reverse layer (walk.reverse) runs its backward loop from t = 0 up, and step t started from
// the state after step t+1 (h0 at T - 1, and at each sequence's last valid step).
template <typename T>
class WindowGrads {
 public:
  using ToRecurrent = std::function<void(MatrixMap<T> da_w, Index t0, Index steps)>;

  // x (B, T, D), y (B, T, S) and h0 (B, S) as the forward saw them (S = d.state()); dx
  // (B, T, D) is written; g's arrays are overwritten with the sums (dw_hr excepted).
  WindowGrads(const Dims& d, Index GH, const T* x, const T* y, const T* h0, T* dx,
              const LayerWeights<T>& w, LayerGrads<T>& g, Helper* helper,
              ToRecurrent to_recurrent = nullptr, const Walk& walk = Walk{})
      : d_(d), GH_(GH), W_(window_steps(d, GH, helper)), windows_((d.T + W_ - 1) / W_),
        buffers_(helper != nullptr ? kHelperBuffers : 1), x_(x), y_(y), h0_(h0), dx_(dx),
        w_(w), g_(g), to_recurrent_(std::move(to_recurrent)), walk_(walk), helper_(helper),
        separate_dx_(helper != nullptr && d.B == 1),
        in_place_(!walk.reverse && reads_in_place(GH, d, W_)),
        da_(static_cast<std::size_t>(buffers_ * d.B * W_ * GH)),
        xh_(in_place_ ? 0 : static_cast<std::size_t>(d.B * W_ * (d.D + d.state()))),
        dx_w_(d.B > 1 ? static_cast<std::size_t>(d.B * W_ * d.D) : 0),
        dw_(column_major_sums(GH, d, W_) ? static_cast<std::size_t>(GH * (d.D + d.state())) : 0) {
    g_.dw_ih.setZero();
    g_.dw_hh.setZero();
    if (g_.db_ih != nullptr) RowVectorMap<T>(g_.db_ih, GH).setZero();
    if (g_.db_hh != nullptr) RowVectorMap<T>(g_.db_hh, GH).setZero();
    if (helper_ == nullptr) return;
    if (separate_dx_) {
      dx_done_ = std::make_unique<std::atomic<bool>[]>(static_cast<std::size_t>(windows_));
      for (Index j = 0; j < windows_; ++j) dx_done_[j].store(false, std::memory_order_relaxed);
    } else {
      dx_claimed_.store(windows_, std::memory_order_relaxed);  // none to claim
    }
    task_.assign([this] {  // the ordered sums first, dx when they must wait
      SpinWait wait;
      while (claimed_.load(std::memory_order_acquire) < windows_ ||
             dx_claimed_.load(std::memory_order_acquire) < windows_) {
        if (claim_and_flush(claimed_.load(std::memory_order_acquire)) || claim_dx())
          wait.reset();
        else
          wait();
      }
    });
    helper_->offer(task_);
  }

  ~WindowGrads() {
    if (helper_ == nullptr) return;
    // After an exception: stop the helper. It reads this object's members until it stops.
    abandoned_.store(true, std::memory_order_release);
    claimed_.store(windows_, std::memory_order_release);
    dx_claimed_.store(windows_, std::memory_order_release);
    helper_->settle(task_);
  }
  WindowGrads(const WindowGrads&) = delete;
  WindowGrads& operator=(const WindowGrads&) = delete;

  // Where the loop writes da of step t, (B, G·H). t goes down from T-1 to 0 (up from 0 when
  // reverse), one step at a time.
  StepMap<T> da(Index t) {
    const Index j = (walk_.reverse ? t : d_.T - 1 - t) / W_;  // its window
    if (j != current_) {
      if (current_ >= 0) hand_over(current_);
      current_ = j;
      // With the helper, window j's da overwrites that of window j - buffers_.
      if (helper_ != nullptr) flush_until(j - buffers_ + 1);
    }
    const auto [t0, t1] = window(j);
    return at_step(window_da(j), d_.B, t1 - t0, GH_, t - t0);
  }

  // After the loop: the last windows, and db_hh where b_hh enters as b_ih does.
  void finish() {
    if (current_ >= 0) hand_over(current_);
    if (helper_ != nullptr) {
      flush_until(windows_);
      helper_->finish(task_);  // rethrows what the helper's flushes threw
    }
    if (!to_recurrent_ && g_.db_hh != nullptr)
      RowVectorMap<T>(g_.db_hh, GH_) = RowVectorMap<T>(g_.db_ih, GH_);
  }

 private:
  // At least 1024 rows per window (fewer slow the products), or all T steps; but where that
  // one window would be the whole (B, T, G·H) da and over kHalvedFrom bytes, two windows of
  // half the steps: at batch 1 and 1 thread, the online LSTM's da is 100 KiB of a 0.39 MiB
  // step, and products of 50 rows instead of 100 cost nothing measurable. With the helper,
  // kHelperWindow steps: the loop's wait for the last window's products is the part the helper
  // cannot take, and shorter windows shorten it.
  static Index window_steps(const Dims& d, Index GH, const Helper* helper) {
    if (helper != nullptr) return std::max<Index>(1, std::min(d.T, kHelperWindow));
    const Index want = d.B > 0 ? (1024 + d.B - 1) / d.B : d.T;
    if (want >= d.T && d.B * d.T * GH * Index(sizeof(T)) > kHalvedFrom) return (d.T + 1) / 2;
    return std::max<Index>(1, std::min(d.T, want));
  }
  static constexpr Index kHalvedFrom = Index(64) << 10;
  static constexpr Index kHelperWindow = 16;
  // With the helper, the loop writes one window's da while up to two earlier ones wait for or
  // go through their products: the loop only waits when the helper is two windows behind.
  static constexpr Index kHelperBuffers = 3;

  // Windows are numbered in the loop's order: window j is steps [t0, t1), t1 = T - j·W
  // (t0 = j·W when reverse).
  std::pair<Index, Index> window(Index j) const {
    if (walk_.reverse) return {j * W_, std::min(d_.T, (j + 1) * W_)};
    const Index t1 = d_.T - j * W_;
    return {std::max<Index>(0, t1 - W_), t1};
  }
  T* window_da(Index j) { return da_.data() + (j % buffers_) * d_.B * W_ * GH_; }

  // Window j is complete: its products now, or with the helper, by whichever thread claims it
  // first (claim_and_flush).
  void hand_over(Index j) {
    if (helper_ == nullptr) {
      flush(j);
      return;
    }
    ready_.store(j + 1, std::memory_order_release);
  }

  // With the helper: windows are flushed one at a time and in order, whoever does it, so the
  // sums keep the same order and a result never depends on which thread ran what. Window j
  // can be claimed once it is complete (ready_) and window j - 1 is flushed.
  bool claim_and_flush(Index j) {
    if (j >= ready_.load(std::memory_order_acquire) ||
        flushed_.load(std::memory_order_acquire) != j ||
        !claimed_.compare_exchange_strong(j, j + 1, std::memory_order_acq_rel))
      return false;
    flush(j);
    flushed_.store(j + 1, std::memory_order_release);
    return true;
  }

  // With separate_dx_: a complete window's dx = da W_ih, by either thread and in any order
  // (its rows are the window's own), so the thread that would wait for the ordered sums works
  // meanwhile: the loop's thread waited 75-170 k cycles per online LSTM backward without it.
  bool claim_dx() {
    if (!separate_dx_) return false;
    Index j = dx_claimed_.load(std::memory_order_acquire);
    if (j >= ready_.load(std::memory_order_acquire) ||
        !dx_claimed_.compare_exchange_strong(j, j + 1, std::memory_order_acq_rel))
      return false;
    const auto [t0, t1] = window(j);
    MatrixMap<T>(dx_ + t0 * d_.D, t1 - t0, d_.D).noalias() =
        MatrixMap<T>(window_da(j), t1 - t0, GH_) * w_.w_ih;
    dx_done_[j].store(true, std::memory_order_release);
    return true;
  }

  // With the helper: returns once windows 0 .. n-1 are done (their sums and their dx), doing
  // what the helper has not claimed here, dx first.
  void flush_until(Index n) {
    SpinWait wait;
    for (;;) {
      while (separate_dx_ && dx_checked_ < n &&
             dx_done_[dx_checked_].load(std::memory_order_acquire))
        ++dx_checked_;
      if (flushed_.load(std::memory_order_acquire) >= n && (!separate_dx_ || dx_checked_ >= n))
        return;
      if (claim_dx() || claim_and_flush(claimed_.load(std::memory_order_acquire))) continue;
      if (task_.done()) helper_->finish(task_);  // the helper stopped: rethrow its error
      wait();
    }
  }

  // With separate_dx_ and to_recurrent_: window j's dx reads its da, which to_recurrent_ is
  // about to rewrite. Its dx is claimed or claimable (the window is complete), so this ends,
  // unless the object is being destroyed after an exception: the sums no longer matter then.
  void await_dx(Index j) {
    SpinWait wait;
    while (!dx_done_[j].load(std::memory_order_acquire) &&
           !abandoned_.load(std::memory_order_acquire)) {
      if (!claim_dx()) wait();
    }
  }

  void flush(Index j) {
    const auto [t0, t1] = window(j);
    T* const da = window_da(j);
    const Index steps = t1 - t0;
    if (steps == 0) return;
    const Index B = d_.B, T_ = d_.T, D = d_.D, H = d_.state(), rows = B * steps;
    MatrixMap<T> da_w(da, rows, GH_);  // row b·steps + (t − t0) is (b, t)
    const bool in_place = in_place_;
    MatrixMap<T> xh(xh_.data(), in_place ? 0 : rows, D + H);  // [x_t  h_{t-1}]: h0 at t = 0
    for (Index b = 0; b < B && !in_place; ++b) {
      xh.block(b * steps, 0, steps, D) = ConstMatrixMap<T>(x_ + (b * T_ + t0) * D, steps, D);
      auto h_b = xh.block(b * steps, D, steps, H);
      if (walk_.reverse) {
        // [x_t  h_{t+1}]: y at t + 1, but h0 at T - 1 and at the sequence's last valid step
        // (y there is zero: that step did not run). Later steps have da = 0.
        const Index from_y = std::min(t1, T_ - 1) - t0;
        if (from_y > 0)
          h_b.topRows(from_y) = ConstMatrixMap<T>(y_ + (b * T_ + t0 + 1) * H, from_y, H);
        const Index first = walk_.lengths != nullptr ? walk_.lengths[b] - 1 : T_ - 1;
        if (from_y < steps) h_b.row(steps - 1) = ConstMatrixMap<T>(h0_ + b * H, 1, H);
        if (first >= t0 && first < t1)
          h_b.row(first - t0) = ConstMatrixMap<T>(h0_ + b * H, 1, H);
      } else if (t0 == 0) {
        h_b.row(0) = ConstMatrixMap<T>(h0_ + b * H, 1, H);
        h_b.bottomRows(steps - 1) = ConstMatrixMap<T>(y_ + b * T_ * H, steps - 1, H);
      } else {
        h_b = ConstMatrixMap<T>(y_ + (b * T_ + t0 - 1) * H, steps, H);
      }
    }
    if (B == 1) {  // one sequence: the window's rows of dx are contiguous, written in place
      if (!separate_dx_)  // else claim_dx writes them
        MatrixMap<T>(dx_ + t0 * D, rows, D).noalias() = da_w * w_.w_ih;
    } else {
      MatrixMap<T> dx_w(dx_w_.data(), rows, D);
      dx_w.noalias() = da_w * w_.w_ih;
      for (Index b = 0; b < B; ++b)
        MatrixMap<T>(dx_ + (b * T_ + t0) * D, steps, D) = dx_w.middleRows(b * steps, steps);
    }
    if (g_.db_ih != nullptr) add_rows(g_.db_ih, da_w);
    // [dW_ih dW_hh] += da^T [x h]. With full windows and the (G·H, D + H) result in L2
    // (column_major_sums): one product, so Eigen packs da once, into a column-major buffer,
    // so da is its left operand, whose packing reads da's rows whole; as the right operand of
    // a row-major result it is packed 4 columns at a time, twice (7 % of the long LSTM step
    // in perf). Larger (6 MB at the large LSTM), zeroing, writing and adding the buffer is 3
    // passes over it per window, for a packing that is there a small part of the products:
    // each sum is then added in place.
    if (dw_.size() == 0) {  // not column_major_sums
      if (in_place)
        g_.dw_ih.noalias() += da_w.transpose() * ConstMatrixMap<T>(x_ + t0 * D, steps, D);
      else
        g_.dw_ih.noalias() += da_w.transpose() * xh.leftCols(D);
      if (to_recurrent_) {
        if (separate_dx_) await_dx(j);
        to_recurrent_(da_w, t0, steps);
        if (g_.db_hh != nullptr) add_rows(g_.db_hh, da_w);
      }
      if (!in_place) {
        g_.dw_hh.noalias() += da_w.transpose() * xh.rightCols(H);
      } else if (t0 > 0) {
        g_.dw_hh.noalias() += da_w.transpose() * ConstMatrixMap<T>(y_ + (t0 - 1) * H, steps, H);
      } else {  // h_{t-1} is h0 at step 0, then y
        g_.dw_hh.noalias() += da_w.topRows(1).transpose() * ConstMatrixMap<T>(h0_, 1, H);
        g_.dw_hh.noalias() +=
            da_w.bottomRows(steps - 1).transpose() * ConstMatrixMap<T>(y_, steps - 1, H);
      }
      return;
    }
    Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>> dw(dw_.data(), GH_, D + H);
    if (!to_recurrent_) {
      dw.noalias() = da_w.transpose() * xh;
    } else {
      dw.leftCols(D).noalias() = da_w.transpose() * xh.leftCols(D);
      if (separate_dx_) await_dx(j);
      to_recurrent_(da_w, t0, steps);
      if (g_.db_hh != nullptr) add_rows(g_.db_hh, da_w);
      dw.rightCols(H).noalias() = da_w.transpose() * xh.rightCols(H);
    }
    // Eigen adds a column-major block to a row-major matrix one scalar at a time.
    transpose_into<true>(g_.dw_ih.data(), dw_.data(), D, GH_);
    transpose_into<true>(g_.dw_hh.data(), dw_.data() + D * GH_, H, GH_);
  }

  // Whether flush reads x and h_{t-1} where they are rather than copying them side by side
  // into xh_: with one sequence the window's rows of each are already contiguous (h_{t-1}:
  // y's, after h0 at step 0), and without the column-major buffer they go into two products
  // anyway. Saves the copy and xh_ (51 KB of the online LSTM step's 0.5 MB at 1 thread).
  static bool reads_in_place(Index GH, const Dims& d, Index W) {
    return d.B == 1 && !column_major_sums(GH, d, W);
  }

  // Whether the window's weight gradients go through the column-major buffer dw_ (flush):
  // when it fits in L2 and windows are full (≥ 1024 rows; with fewer, as at online, packing
  // da twice is cheap, and the buffer would be a third of the step's memory).
  static bool column_major_sums(Index GH, const Dims& d, Index W) {
    return d.B * W >= 1024 && GH * (d.D + d.state()) * Index(sizeof(T)) <= (Index(256) << 10);
  }

  Dims d_;
  Index GH_, W_, windows_, buffers_;
  const T *x_, *y_, *h0_;
  T* dx_;
  const LayerWeights<T>& w_;
  LayerGrads<T>& g_;
  ToRecurrent to_recurrent_;
  Walk walk_;
  Helper* helper_;
  Index current_ = -1;  // the window the loop is in
  // With the helper:
  Task task_;                      // flushes windows as they are ready, until none is left
  std::atomic<Index> ready_{0};    // windows 0 .. ready_-1 are complete
  std::atomic<Index> claimed_{0};  // ... claimed_-1 are claimed by one thread or the other
  std::atomic<Index> flushed_{0};  // ... flushed_-1 are flushed
  // With the helper, at batch 1: dx of each window is a task of its own (claim_dx); a flush
  // that rewrites da (to_recurrent) waits for it first (await_dx).
  bool separate_dx_;
  bool in_place_;  // reads_in_place, never when reverse
  std::atomic<bool> abandoned_{false};           // set by the destructor: stop waiting
  std::atomic<Index> dx_claimed_{0};             // windows 0 .. dx_claimed_-1 have their dx claimed
  std::unique_ptr<std::atomic<bool>[]> dx_done_;  // per window: its dx is written
  Index dx_checked_ = 0;                         // the loop's thread: dx done below this
  Buffer<T> da_;    // (buffers, B, W, G·H): da of the last windows' steps
  Buffer<T> xh_;    // (B·W, D + H): x_t and h_{t-1} of the window's steps, in da's row
                    // order; none when reads_in_place
  Buffer<T> dx_w_;  // (B·W, D): dx of the window's steps, in da's row order; B > 1 only
  Buffer<T> dw_;    // (G·H, D + H) column-major: the window's [dW_ih dW_hh], when used
};

// A layer's backward on its batch split over threads (split_count), like forward: run(b0, b1,
// g_k, helper) does sequences [b0, b1) and writes their weight gradients to g_k; helper is the
// helper thread when the batch is not split (helper_for), else nullptr. Chunk 0 writes to g;
// the others to buffers of their own, added to g in chunk order afterwards, so the result
// depends only on the thread count. With one chunk it is exactly the serial code.
template <typename T, typename Run>
void split_backward(const Dims& d, Index G, LayerGrads<T>& g, Run&& run) {
  const int n = split_count(d, G);
  if (n == 1) {
    run(Index(0), d.B, g, helper_for(d, G));
    return;
  }
  const Index GH = G * d.H, S = d.state(), PH = g.dw_hr != nullptr ? d.P * d.H : 0,
              per = GH * (d.D + S) + 2 * GH + PH;
  Buffer<T> partial(static_cast<std::size_t>((n - 1) * per));
  std::vector<LayerGrads<T>> parts;
  for (int k = 1; k < n; ++k) {
    T* p = partial.data() + (k - 1) * per;
    parts.push_back({MatrixMap<T>(p, GH, d.D), MatrixMap<T>(p + GH * d.D, GH, S),
                     g.db_ih != nullptr ? p + GH * (d.D + S) : nullptr,
                     g.db_hh != nullptr ? p + GH * (d.D + S) + GH : nullptr,
                     PH > 0 ? p + GH * (d.D + S) + 2 * GH : nullptr});
  }
  parallel_chunks(d.B, n, [&](Index b0, Index b1) {
    int k = 0;
    while (d.B * k / n != b0) ++k;  // this chunk's number (parallel_chunks' split)
    run(b0, b1, k == 0 ? g : parts[k - 1], nullptr);
  });
  for (const LayerGrads<T>& p : parts) {
    g.dw_ih += p.dw_ih;
    g.dw_hh += p.dw_hh;
    if (g.db_ih != nullptr) RowVectorMap<T>(g.db_ih, GH) += RowVectorMap<T>(p.db_ih, GH);
    if (g.db_hh != nullptr) RowVectorMap<T>(g.db_hh, GH) += RowVectorMap<T>(p.db_hh, GH);
    if (PH > 0) RowVectorMap<T>(g.dw_hr, PH) += RowVectorMap<T>(p.dw_hr, PH);
  }
}

}  // namespace rnnfast
