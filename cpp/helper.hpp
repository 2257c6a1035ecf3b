// The helper thread: a second core for a layer call whose batch cannot be split over threads
// (threads.hpp split_count = 1: batch 1, the online config). There the time loop is serial, one
// step after the other, but the products outside the recurrence are not: the input side of the
// steps ahead of the loop (InputSide) and backward's window products behind it (WindowGrads)
// can run on the other core while the loop goes on. When the batch is split, the helper runs
// the second chunk (threads.hpp parallel_chunks).
//
// Starting a thread per call cost ~67 µs on this machine, and waking one that sleeps on a
// condition variable ~75 µs (~11 µs of it in the caller), against ~150 µs for a whole online
// RNN step. So there is one helper per process, started at first use, and after each task it
// spins for kSpin before it sleeps, as an OpenMP runtime's threads do between parallel regions.
// It only ever runs while the user allows rnnfast two threads (set_num_threads).
//
// A task is run by whoever takes it first: the helper, or the caller once it needs the result
// and the helper has not started it (asleep, or its core busy with another process). A late
// helper so costs the caller nothing but the handing over, and results never depend on it.
#pragma once

#if !defined(_WIN32)  // Windows has neither fork() nor POSIX signal masks: nothing to do there
#include <pthread.h>
#include <signal.h>
#endif

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace rnnfast {

// The steps of a wait loop: pause first (the other thread is usually well under a
// microsecond away; x86 pause tells the core this is a wait loop), then yield: on two cores
// a waiting thread should not keep one from another runnable thread for long. (Yielding does
// not make up for a third thread that spins without yielding, as numpy's OpenBLAS workers do
// for ~0.1 s after a threaded product: an online GRU step at 2 threads took 0.50 ms right
// after a 512² numpy matmul against 0.42 on one thread. bench.py waits for them to stop.)
class SpinWait {
 public:
  void operator()() {
    if (++count_ <= kPauses) {
#if defined(__x86_64__) || defined(__i386__)
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
  void reset() { count_ = 0; }

 private:
  static constexpr unsigned kPauses = 256;
  unsigned count_ = 0;
};

// A piece of work for the helper. Its owner keeps it alive until finish (or settle) returns.
class Task {
 public:
  Task() = default;
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;

  // The work of the next offer; only while no offer of this task is unfinished.
  void assign(std::function<void()> fn) { fn_ = std::move(fn); }
  bool done() const { return done_.load(std::memory_order_acquire); }

 private:
  friend class Helper;
  void run() noexcept {
    try {
      fn_();
    } catch (...) {
      error_ = std::current_exception();
    }
    done_.store(true, std::memory_order_release);  // the last access: the owner may free it now
  }

  std::function<void()> fn_;
  std::exception_ptr error_;
  std::atomic<bool> done_{true};  // nothing pending
  bool placed_ = false;           // in the helper's slot at the offer; the owner's thread only
};

class Helper {
 public:
  // The process's helper, started at first use; nullptr when no thread can be started (the
  // callers then run everything themselves). A child process after fork() starts its own.
  static Helper* get() {
    static std::mutex starting;
    std::lock_guard<std::mutex> lock(starting);
    // In a child the helper's thread is gone (only the forking thread survives), and its
    // lock may be held for good: forget it, and start another there if the child needs one.
#if !defined(_WIN32)
    static const int registered = pthread_atfork(nullptr, nullptr, [] { instance() = nullptr; });
    (void)registered;
#endif
    if (instance() == nullptr) {
      try {
        instance() = new Helper();  // never deleted: it outlives every caller, even at exit
      } catch (...) {
        return nullptr;
      }
    }
    return instance();
  }

  // Hands t to the helper. If the helper's slot is taken (another Python thread's call), t
  // stays with its owner, to run at finish.
  void offer(Task& t) {
    if (try_offer(t)) return;
    t.done_.store(false, std::memory_order_relaxed);
    t.error_ = nullptr;
    t.placed_ = false;
  }

  // Hands t to the helper and returns true; or, if the helper's slot is taken, returns false
  // and leaves t as it was: the owner runs it some other way, without finish.
  bool try_offer(Task& t) {
    t.done_.store(false, std::memory_order_relaxed);
    t.error_ = nullptr;
    rest_.store(false, std::memory_order_relaxed);
    Task* empty = nullptr;
    t.placed_ = slot_.compare_exchange_strong(empty, &t, std::memory_order_seq_cst);
    if (!t.placed_) {
      t.done_.store(true, std::memory_order_relaxed);
      return false;
    }
    // Paired with the helper's store to sleeping_ and then load of slot_ (both seq_cst): either
    // it sees t, or this sees it asleep and wakes it.
    if (sleeping_.load(std::memory_order_seq_cst)) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_one();
    }
    return true;
  }

  // Returns once t has run: here, if the helper has not taken it. Rethrows what t threw.
  void finish(Task& t) {
    settle(t);
    if (t.error_) std::rethrow_exception(std::exchange(t.error_, nullptr));
  }

  // finish without the rethrow, for destructors.
  void settle(Task& t) noexcept {
    if (t.done()) return;
    Task* mine = &t;
    if (!t.placed_ || slot_.compare_exchange_strong(mine, nullptr, std::memory_order_acq_rel)) {
      t.run();
      return;
    }
    SpinWait wait;
    while (!t.done()) wait();
  }

  // The helper, if started, sleeps now rather than spin out kSpin: the benchmark calls it
  // before another implementation's turn, which would otherwise find one core busy.
  static void rest() {
    if (Helper* h = instance()) h->rest_.store(true, std::memory_order_relaxed);
  }

 private:
  static constexpr std::chrono::microseconds kSpin{500};

  Helper() : thread_([this] { loop(); }) { thread_.detach(); }

  static Helper*& instance() {
    static Helper* h = nullptr;
    return h;
  }

  void loop() {
#if !defined(_WIN32)
    sigset_t all;  // signals go to the interpreter's threads, never here
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
#endif
#if defined(__linux__)
    pthread_setname_np(pthread_self(), "rnnfast-helper");
#endif
    for (;;) {
      Task* t = take_spinning();
      if (t == nullptr) t = take_sleeping();
      t->run();
    }
  }

  Task* take_spinning() {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    SpinWait wait;
    for (unsigned i = 1;; ++i) {
      if (slot_.load(std::memory_order_relaxed) != nullptr) {
        if (Task* t = slot_.exchange(nullptr, std::memory_order_acq_rel)) return t;
      }
      wait();
      if (i % 256 == 0 && (rest_.load(std::memory_order_relaxed) ||
                           std::chrono::steady_clock::now() > until))
        return nullptr;
    }
  }

  Task* take_sleeping() {
    std::unique_lock<std::mutex> lock(mutex_);
    sleeping_.store(true, std::memory_order_seq_cst);
    Task* t = nullptr;
    wake_.wait(lock, [&] {
      t = slot_.exchange(nullptr, std::memory_order_seq_cst);
      return t != nullptr;
    });
    sleeping_.store(false, std::memory_order_relaxed);
    return t;
  }

  std::atomic<Task*> slot_{nullptr};  // the task offered and not yet taken
  std::atomic<bool> sleeping_{false};
  std::atomic<bool> rest_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::thread thread_;
};

}  // namespace rnnfast
