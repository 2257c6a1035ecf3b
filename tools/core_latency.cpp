// Round trip of a cache line between two threads: each waits for the other's counter and then
// advances its own, a million times. What any per-step handover between the two cores costs,
// the floor under splitting one step across them (bench/README.md, "Tried, measured and dropped").
//
//   g++ -O2 -std=c++17 tools/core_latency.cpp -o /tmp/core_latency -lpthread
//   /tmp/core_latency            # prints the median of 5 runs, and each run
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RELAX() _mm_pause()
#else
#define RELAX() std::this_thread::yield()
#endif

namespace {

struct alignas(64) Counter {  // a cache line of its own
  std::atomic<long> value{0};
};

double round_trip_ns(long trips) {
  Counter ping, pong;
  std::thread other([&] {
    for (long i = 1; i <= trips; ++i) {
      while (ping.value.load(std::memory_order_acquire) < i) RELAX();
      pong.value.store(i, std::memory_order_release);
    }
  });
  const auto start = std::chrono::steady_clock::now();
  for (long i = 1; i <= trips; ++i) {
    ping.value.store(i, std::memory_order_release);
    while (pong.value.load(std::memory_order_acquire) < i) RELAX();
  }
  const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
  other.join();
  return took.count() / double(trips);
}

}  // namespace

int main() {
  std::vector<double> runs;
  for (int k = 0; k < 5; ++k) runs.push_back(round_trip_ns(1000000));
  std::vector<double> sorted = runs;
  std::sort(sorted.begin(), sorted.end());
  std::printf("round trip between two threads: median %.0f ns (runs:", sorted[2]);
  for (double r : runs) std::printf(" %.0f", r);
  std::printf(")\n");
}
