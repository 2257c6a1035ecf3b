// How a layer call uses threads: how many it may use, whether its batch is split over them or the
// helper thread (helper.hpp) takes a share of its products, and running the chunks.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "buffers.hpp"
#include "helper.hpp"
#include "layer.hpp"
#include "views.hpp"

namespace rnnfast {

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
  const double macs =
      double(d.B) * double(d.plan_steps()) * double(G * d.H) * double(d.D + d.state());
  if (macs < double(1 << 22)) return 1;
  return int(std::min<Index>(n, d.B));
}

// The helper thread's share of a layer call whose batch is not split (helper.hpp): the input
// side ahead of forward's loop and the window products behind backward's. Only with at least
// 2 threads allowed, and with enough of that work to pay for handing it over (input side
// ≥ 2^18 MACs, ~10 µs) in pieces of a few steps (T ≥ 32). Decided for d.plan_steps() steps.
inline bool uses_helper(const Dims& d, Index G) {
  if (allowed_threads() < 2 || split_count(d, G) != 1) return false;
  const Index T_ = d.plan_steps();
  const double input_macs = double(d.B) * double(T_) * double(G * d.H) * double(d.D);
  return T_ >= 32 && input_macs >= double(1 << 18);
}

// The helper when the call uses it (uses_helper); nullptr: the call runs serially.
inline Helper* helper_for(const Dims& d, Index G) {
  return uses_helper(d, G) ? Helper::get() : nullptr;
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

// Adds the chunk sums `partial` (chunks 1 .. n-1, split_backward's layout) to g, in chunk
// order.
template <typename T>
void add_partials(const Dims& d, Index G, LayerGrads<T>& g, const T* partial, int n) {
  const Index GH = G * d.H, S = d.state(), PH = g.dw_hr != nullptr ? d.P * d.H : 0,
              per = GH * (d.D + S) + 2 * GH + PH;
  for (int k = 1; k < n; ++k) {
    const T* p = partial + (k - 1) * per;
    g.dw_ih += ConstMatrixMap<T>(p, GH, d.D);
    g.dw_hh += ConstMatrixMap<T>(p + GH * d.D, GH, S);
    p += GH * (d.D + S);
    if (g.db_ih != nullptr) RowVectorMap<T>(g.db_ih, GH) += ConstRowVectorMap<T>(p, GH);
    if (g.db_hh != nullptr) RowVectorMap<T>(g.db_hh, GH) += ConstRowVectorMap<T>(p + GH, GH);
    if (PH > 0) RowVectorMap<T>(g.dw_hr, PH) += ConstRowVectorMap<T>(p + 2 * GH, PH);
  }
}

// The values per chunk in split_backward's layout of chunk sums.
inline Index partial_size(const Dims& d, Index G, bool projected) {
  const Index GH = G * d.H;
  return GH * (d.D + d.state()) + 2 * GH + (projected ? d.P * d.H : 0);
}

// A layer's backward on its batch split over threads (split_count), like forward: run(b0, b1,
// g_k, helper) does sequences [b0, b1) and writes their weight gradients to g_k; helper is the
// helper thread when the batch is not split (helper_for), else nullptr. Chunk 0 writes to g;
// the others to buffers of their own, added to g in chunk order afterwards, so the result
// depends only on the thread count. With one chunk it is exactly the serial code.
// With g.accumulate, every chunk adds to its sums, and the others' buffers are
// *g.partials, kept for the caller to add (add_partials) after the last call.
template <typename T, typename Run>
void split_backward(const Dims& d, Index G, LayerGrads<T>& g, Run&& run) {
  const int n = split_count(d, G);
  if (n == 1) {
    run(Index(0), d.B, g, helper_for(d, G));
    return;
  }
  const Index GH = G * d.H, S = d.state(), PH = g.dw_hr != nullptr ? d.P * d.H : 0,
              per = partial_size(d, G, PH > 0);
  const auto size = static_cast<std::size_t>((n - 1) * per);
  Buffer<T> own(g.accumulate ? 0 : size);
  T* partial = own.data();
  if (g.accumulate) {
    if (g.partials->empty()) g.partials->assign(size, T(0));
    if (g.partials->size() != size)
      throw std::runtime_error("the number of threads changed between the segments of a "
                               "checkpointed backward");
    partial = g.partials->data();
  }
  std::vector<LayerGrads<T>> parts;
  for (int k = 1; k < n; ++k) {
    T* p = partial + (k - 1) * per;
    parts.push_back({MatrixMap<T>(p, GH, d.D), MatrixMap<T>(p + GH * d.D, GH, S),
                     g.db_ih != nullptr ? p + GH * (d.D + S) : nullptr,
                     g.db_hh != nullptr ? p + GH * (d.D + S) + GH : nullptr,
                     PH > 0 ? p + GH * (d.D + S) + 2 * GH : nullptr, g.accumulate});
  }
  parallel_chunks(d.B, n, [&](Index b0, Index b1) {
    int k = 0;
    while (d.B * k / n != b0) ++k;  // this chunk's number (parallel_chunks' split)
    run(b0, b1, k == 0 ? g : parts[k - 1], nullptr);
  });
  if (!g.accumulate) add_partials(d, G, g, partial, n);
}

}  // namespace rnnfast
