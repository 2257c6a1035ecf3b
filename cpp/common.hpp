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
#include <algorithm>
#include <atomic>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "buffers.hpp"

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
};

// lengths == nullptr means every sequence runs all T steps.
inline bool is_valid(const std::int64_t* lengths, Index b, Index t) {
  return lengths == nullptr || t < lengths[b];
}

// One layer's parameters, with PyTorch's names and shapes; they travel together.
template <typename T>
struct LayerWeights {
  ConstMatrixMap<T> w_ih;  // (G*H, D)
  ConstMatrixMap<T> w_hh;  // (G*H, H)
  const T* b_ih;           // (G*H,), nullptr when the layer has no bias
  const T* b_hh;           // (G*H,), nullptr when the layer has no bias
};

// Where the gradients of one layer's parameters go (same shapes as LayerWeights).
template <typename T>
struct LayerGrads {
  MatrixMap<T> dw_ih;  // (G*H, D)
  MatrixMap<T> dw_hh;  // (G*H, H)
  T* db_ih;            // (G*H,), nullptr when the layer has no bias
  T* db_hh;            // (G*H,), nullptr when the layer has no bias
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
// Σ v_j², element after element: a fixed order, for the reason given at sum_rows.
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

// The sequences of a batch are independent in both time loops, so a layer call splits its
// batch into contiguous chunks, one thread each, and every thread runs the whole loop on its
// rows: no synchronisation per step (a per-step split of the recurrent product would need two
// barriers per step, 2·T per call). Worth it when a call has enough work to pay for starting a
// thread (~50 µs): MACs of the layer's products ≥ 2^22 (~0.1 ms). Returns the number of chunks;
// 1 means the exact serial code path, bit for bit as without threads. For a given count, the
// chunks and so the results are always the same.
inline int split_count(const Dims& d, Index G) {
  const int n = num_threads().load(std::memory_order_relaxed);
  if (n <= 1 || d.B < 2) return 1;
  const double macs = double(d.B) * double(d.T) * double(G * d.H) * double(d.D + d.H);
  if (macs < double(1 << 22)) return 1;
  return int(std::min<Index>(n, d.B));
}

// fn(begin, end) for `chunks` contiguous chunks of [0, n): chunk k is [n·k/chunks,
// n·(k+1)/chunks). Chunk 0 runs on the calling thread; if a thread cannot be started its chunk
// runs on the calling thread too (same result). fn must not throw.
template <typename F>
void parallel_chunks(Index n, int chunks, F&& fn) {
  if (chunks <= 1 || n < 2) {
    fn(Index(0), n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(chunks - 1);
  for (int k = 1; k < chunks; ++k) {
    const Index b = n * k / chunks, e = n * (k + 1) / chunks;
    try {
      pool.emplace_back([&fn, b, e] { fn(b, e); });
    } catch (...) {
      fn(b, e);
    }
  }
  fn(Index(0), n / chunks);
  for (auto& t : pool) t.join();
}

// The recurrent product of one timestep: dst (+)= lhs · W_hh^T in forward (lhs = h_{t-1}) and
// dst = lhs · W_hh in backward (lhs = dL/da_t), with W_hh the same at every step.
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
// 1, e.g. batch 1) keep the ordinary expression.
template <typename T, bool Forward>
class RecurrentProduct {
 public:
  RecurrentProduct(ConstMatrixMap<T> w_hh, Index n)
      : w_hh_(w_hh),
        m_(Forward ? w_hh.rows() : w_hh.cols()),
        k_(Forward ? w_hh.cols() : w_hh.rows()),
        n_(n),
        packed_a_(0),
        packed_b_(0) {
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
      if constexpr (Forward)
        dst.noalias() += lhs * w_hh_.transpose();
      else
        dst.noalias() += lhs * w_hh_;
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
};

template <typename T>
using ForwardRecurrent = RecurrentProduct<T, true>;  // h_{t-1} W_hh^T
template <typename T>
using BackwardRecurrent = RecurrentProduct<T, false>;  // dL/da_t W_hh

// σ(a) = (1 + tanh(a/2)) / 2, in place. Equal to 1 / (1 + exp(-a)), but no intermediate can
// overflow, so a saturated gate is exactly 0 or 1 and never inf or NaN, in float32 too.
template <typename Block>
void sigmoid_in_place(Block&& a) {
  using T = typename std::decay_t<Block>::Scalar;
  a = (T(0.5) * (T(0.5) * a.array()).tanh() + T(0.5)).matrix();
}

// a = x W_ih^T + b_ih + b_hh for every (b, t) at once: one product before the loop.
// a: (B*T, G*H), x: (B*T, D).
template <typename T>
void input_projection(MatrixMap<T> a, ConstMatrixMap<T> x, const LayerWeights<T>& w) {
  a.noalias() = x * w.w_ih.transpose();
  if (w.b_ih != nullptr) {
    const Index GH = a.cols();
    a.rowwise() += ConstRowVectorMap<T>(w.b_ih, GH) + ConstRowVectorMap<T>(w.b_hh, GH);
  }
}

// Σ over the rows of m, added one row after another. Eigen's colwise().sum() picks its order
// by where the data lie in memory, so the same numbers could round differently from one call to
// the next; this order is fixed, and training runs repeat bit for bit.
template <typename T, typename M>
void sum_rows(T* out, const M& m) {
  RowVectorMap<T> s(out, m.cols());
  s.setZero();
  for (Index r = 0; r < m.rows(); ++r) s += m.row(r);
}

// Backward of input_projection, one product each after the loop:
// a = x W_ih^T + b  =>  dx = da W_ih,  dW_ih = da^T x,  db_ih = Σ_rows da.
// db_hh is left to the caller: it equals db_ih only where b_hh enters like b_ih.
template <typename T>
void input_projection_backward(MatrixMap<T> dx, LayerGrads<T>& g, ConstMatrixMap<T> da,
                               ConstMatrixMap<T> x, const LayerWeights<T>& w) {
  dx.noalias() = da * w.w_ih;
  g.dw_ih.noalias() = da.transpose() * x;
  if (g.db_ih != nullptr) sum_rows(g.db_ih, da);
}

// dW_hh = Σ_{b,t} dah[b,t]^T h[b,t-1], with h[b,t-1] = y[b,t-1] for t ≥ 1 and h0[b] at t = 0.
// dah: (B*T, G*H), the gradient of the recurrent pre-activation h_{t-1} W_hh^T;
// y: (B*T, H), the layer's outputs; h0: (B, H).
// In the flattened rows r = b*T + t, y[r-1] is the previous step of the same sequence except
// at t = 0, where it is the last step of sequence b-1. So one product pairs every r with r-1,
// then two small (B-row) products replace those B wrong pairs at t = 0 by the h0 pairs.
// Rows past a sequence's length have dah = 0, so they add nothing.
template <typename T>
void recurrent_weight_grad(MatrixMap<T> dw_hh, const T* dah, const T* y, const T* h0, const Dims& d,
                           Index GH) {
  const Index BT = d.B * d.T;
  if (BT == 0) {
    dw_hh.setZero();
    return;
  }
  ConstMatrixMap<T> dah_all(dah, BT, GH);
  ConstMatrixMap<T> y_all(y, BT, d.H);
  dw_hh.noalias() = dah_all.bottomRows(BT - 1).transpose() * y_all.topRows(BT - 1);
  const auto dah_first = at_step(dah, d.B, d.T, GH, 0);   // (B, G*H) at t = 0
  const auto y_last = at_step(y, d.B, d.T, d.H, d.T - 1);  // (B, H) at t = T-1
  dw_hh.noalias() += dah_first.transpose() * ConstMatrixMap<T>(h0, d.B, d.H);
  if (d.B > 1) {
    dw_hh.noalias() -= dah_first.bottomRows(d.B - 1).transpose() * y_last.topRows(d.B - 1);
  }
}

// Rows [r0, r0 + nr) of dW_hh only (columns r0.. of dah): recurrent_weight_grad split over
// threads. Each block is its own product, so the result depends on the split (the same split
// gives the same bits).
template <typename T>
void recurrent_weight_grad_rows(MatrixMap<T> dw_hh, const T* dah, const T* y, const T* h0,
                                const Dims& d, Index GH, Index r0, Index nr) {
  const Index BT = d.B * d.T;
  auto dw = dw_hh.middleRows(r0, nr);
  if (BT == 0) {
    dw.setZero();
    return;
  }
  ConstMatrixMap<T> dah_all(dah, BT, GH);
  ConstMatrixMap<T> y_all(y, BT, d.H);
  dw.noalias() = dah_all.bottomRows(BT - 1).middleCols(r0, nr).transpose() * y_all.topRows(BT - 1);
  const auto dah_first = at_step(dah, d.B, d.T, GH, 0).middleCols(r0, nr);
  const auto y_last = at_step(y, d.B, d.T, d.H, d.T - 1);
  dw.noalias() += dah_first.transpose() * ConstMatrixMap<T>(h0, d.B, d.H);
  if (d.B > 1) {
    dw.noalias() -= dah_first.bottomRows(d.B - 1).transpose() * y_last.topRows(d.B - 1);
  }
}

}  // namespace rnnfast
