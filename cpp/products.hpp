// The matrix products of forward's time loop: the recurrent product of every step, with W_hh
// packed once per call, and the input side x_t W_ih^T of all steps. Backward's products
// outside the recurrence are WindowGrads (window_grads.hpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "buffers.hpp"
#include "helper.hpp"
#include "layer.hpp"
#include "views.hpp"

namespace rnnfast {

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
// copy of W_hh, made once per call. Backward's GEMV reads W_hh in place, one 64-byte packet
// after another: where W_hh does not start on a 64-byte boundary (NumPy aligns to 16), every
// AVX-512 load spans two cache lines, and the online LSTM's backward took 292 µs against 238
// (GRU 180 against 144; bench/alignment.py). There backward reads a copy on a boundary, made
// once per call; the products are the same, bit for bit.
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
        w_copy_(0) {
    if (Forward && n_ == 1 && m_ > 1) {
      w_copy_ = Buffer<T>(static_cast<std::size_t>(k_ * m_));
      transpose_into(w_copy_.data(), w_hh.data(), m_, k_);
    }
    if (!Forward && n_ == 1 &&
        reinterpret_cast<std::uintptr_t>(w_hh.data()) % BlockCache::kAlign != 0) {
      w_copy_ = Buffer<T>(static_cast<std::size_t>(w_hh.size()));
      std::copy_n(w_hh.data(), w_hh.size(), w_copy_.data());
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
        if (w_copy_.size() > 0)
          dst.noalias() += lhs * ConstMatrixMap<T>(w_copy_.data(), k_, m_);
        else
          dst.noalias() += lhs * w_hh_.transpose();
      } else {
        if (w_copy_.size() > 0)
          dst.noalias() += lhs * ConstMatrixMap<T>(w_copy_.data(), w_hh_.rows(), w_hh_.cols());
        else
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
  // At batch 1: forward's W_hh^T (k, m); backward's W_hh on a 64-byte boundary, where the
  // given one is not. Empty otherwise.
  Buffer<T> w_copy_;
};

template <typename T>
using ForwardRecurrent = RecurrentProduct<T, true>;  // h_{t-1} W_hh^T
template <typename T>
using BackwardRecurrent = RecurrentProduct<T, false>;  // dL/da_t W_hh

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
// Chunks are steps [q·kChunk, (q+1)·kChunk) in either direction, so that a call over steps
// a multiple of kChunk into a longer one (a checkpointed segment, layer.hpp Dims::plan) has
// the same chunks there; a reverse layer's loop takes them from the last down.
template <typename T>
class InputSide {
 public:
  using Bias = Eigen::Matrix<T, 1, Eigen::Dynamic>;
  static constexpr Index kChunk = 16;

  InputSide(T* a, const T* x, ConstMatrixMap<T> w_ih, Bias bias, const Dims& d,
            Helper* helper = nullptr, bool reverse = false)
      : a_(a), x_(x), w_ih_(w_ih), bias_(std::move(bias)), d_(d), GH_(w_ih.rows()),
        reverse_(reverse), helper_(helper), chunks_((d.T + kChunk - 1) / kChunk) {
    if (helper_ != nullptr) {
      written_ = std::make_unique<std::atomic<bool>[]>(static_cast<std::size_t>(chunks_));
      for (Index k = 0; k < chunks_; ++k) written_[k].store(false, std::memory_order_relaxed);
      task_.assign([this] {
        while (claim_and_write() < chunks_) {
        }
      });
      helper_->offer(task_);
      return;
    }
    if (chunked(d, GH_, false)) chunk_product_.emplace(w_ih, kChunk);
  }

  // Whether the steps are written chunk by chunk (with the helper, or packed W_ih), as
  // decided for a call of d.plan_steps() steps.
  static bool chunked(const Dims& d, Index GH, bool helper) {
    if (helper) return true;
    const Index step_bytes = d.B * GH * Index(sizeof(T)), T_ = d.plan_steps();
    return T_ > kChunk && step_bytes <= kMaxStepBytes && step_bytes * T_ > kMinArrayBytes;
  }

  ~InputSide() {
    if (helper_ != nullptr) helper_->settle(task_);  // it reads this object's members
  }
  InputSide(const InputSide&) = delete;
  InputSide& operator=(const InputSide&) = delete;

  // Step t and those after it in the walk are written as far as the end of t's chunk. Call
  // with t = 0, 1, 2, ... (T - 1, T - 2, ... when reverse).
  void reach(Index t) {
    const Index B = d_.B, T_ = d_.T, D = d_.D;
    const Index s = reverse_ ? T_ - 1 - t : t;  // the step's place in the walk
    if (s < done_) return;
    const Index q = t / kChunk;  // its chunk
    // the walk's steps up to the end of chunk q
    const Index through = reverse_ ? T_ - q * kChunk : std::min(T_, (q + 1) * kChunk);
    if (helper_ != nullptr) {
      const Index k = reverse_ ? chunks_ - 1 - q : q;  // its place in the walk
      SpinWait wait;
      while (!written_[k].load(std::memory_order_acquire)) {
        if (claim_and_write() < chunks_) continue;
        // The chunk is the helper's, and being written; if the helper failed, rethrow here.
        if (task_.done()) helper_->finish(task_);
        wait();
      }
      done_ = through;
      return;
    }
    if (!chunk_product_) {  // all steps, one product
      write(MatrixMap<T>(a_, B * T_, GH_), ConstMatrixMap<T>(x_, B * T_, D), nullptr);
      done_ = T_;
      return;
    }
    const Index steps = std::min(kChunk, T_ - q * kChunk);
    write_steps(q * kChunk, steps, steps == kChunk ? &*chunk_product_ : nullptr);
    done_ = through;
  }

 private:
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

  // With the helper: takes the next unclaimed chunk in the walk's order, writes it and returns
  // its place in the walk, or returns chunks_ or more when none is left. Run by both threads.
  Index claim_and_write() {
    const Index k = next_.fetch_add(1, std::memory_order_relaxed);
    if (k >= chunks_) return k;
    const Index q = reverse_ ? chunks_ - 1 - k : k;
    write_steps(q * kChunk, std::min(kChunk, d_.T - q * kChunk), nullptr);
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

}  // namespace rnnfast
