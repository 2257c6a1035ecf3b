// A cache of large freed blocks, for the arrays a layer call allocates: its outputs, the cache
// backward needs, and backward's workspaces.
//
// Why: a training loop asks for arrays of the same sizes at every step, and the big ones
// (the (B, T, G·H) gates and their gradient) are over glibc's mmap threshold, so each call got
// fresh pages from the kernel, which zeroes every one of them on first touch. On this project's
// machines that cost 12–16 % of a step at the large configs (perf: clear_page_erms). A block
// taken from this cache is already mapped.
//
// Blocks under kMinBytes go to malloc, which reuses small blocks by itself. A freed block is
// kept while the cache stays under its limit (rnnfast.set_cache_limit); the oldest go first.
// A taken block holds whatever it held before: callers write every element they later read,
// exactly as with np.empty. The test hook `poison` fills every buffer and output with NaN, large
// or small, to prove it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <vector>
#ifdef _WIN32
#include <malloc.h>
#endif

namespace rnnfast {

// C++17's std::aligned_alloc, except with MSVC, whose C library has its own pair instead.
inline void* aligned_block(std::size_t align, std::size_t size) {
#ifdef _WIN32
  return _aligned_malloc(size, align);
#else
  return std::aligned_alloc(align, size);
#endif
}

inline void free_aligned_block(void* p) {
#ifdef _WIN32
  _aligned_free(p);
#else
  std::free(p);
#endif
}

class BlockCache {
 public:
  static constexpr std::size_t kMinBytes = std::size_t(1) << 18;  // 256 KiB
  static constexpr std::size_t kAlign = 64;                       // a cache line, AVX-512 wide

  struct Info {
    std::size_t cached_bytes, cached_blocks, limit, hits, misses;
  };

  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // never destroyed: arrays may outlive exit
    return *cache;
  }

  // A block of at least `bytes` bytes, 64-byte aligned. Throws std::bad_alloc.
  void* take(std::size_t bytes) {
    fail_if_asked();
    const std::size_t size = rounded(bytes);
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // Newest first: the block freed last is the likeliest to be in cache (the CPU's).
      for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
        if (it->size == size) {
          p = it->ptr;
          cached_bytes_ -= size;
          free_.erase(std::next(it).base());
          ++hits_;
          break;
        }
      }
      if (p == nullptr) ++misses_;
    }
    if (p == nullptr) {
      p = aligned_block(kAlign, size);
      if (p == nullptr) throw std::bad_alloc();
    }
    if (poison()) fill_nan(p, size);
    return p;
  }

  // Gives back a block from take(bytes).
  void give(void* p, std::size_t bytes) {
    const std::size_t size = rounded(bytes);
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (size > limit_) {
        drop.push_back(p);
      } else {
        free_.push_back({p, size});
        cached_bytes_ += size;
        while (cached_bytes_ > limit_) {
          drop.push_back(free_.front().ptr);
          cached_bytes_ -= free_.front().size;
          free_.erase(free_.begin());
        }
      }
    }
    for (void* q : drop) free_aligned_block(q);  // outside the lock: munmap can take a while
  }

  // Frees every cached block, then keeps at most `limit` bytes from now on.
  void set_limit(std::size_t limit) {
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = limit;
      drop.swap(free_);
      cached_bytes_ = 0;
    }
    for (const Block& b : drop) free_aligned_block(b.ptr);
  }

  void empty() { set_limit(info().limit); }

  Info info() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {cached_bytes_, free_.size(), limit_, hits_, misses_};
  }

  void set_poison(bool on) { poison_.store(on); }

  // Test hook: after `count` more allocations, the next one throws std::bad_alloc, as if the
  // memory had run out (then the countdown stops). Negative: never.
  void set_fail_after(long count) { fail_after_.store(count); }
  void fail_if_asked() {
    if (fail_after_.load(std::memory_order_relaxed) < 0) return;
    if (fail_after_.fetch_sub(1) == 0) throw std::bad_alloc();
  }
  bool poison() const { return poison_.load(std::memory_order_relaxed); }

  // 0xFF bytes are a NaN in both float32 and float64.
  static void fill_nan(void* p, std::size_t size) { std::memset(p, 0xFF, size); }

 private:
  struct Block {
    void* ptr;
    std::size_t size;
  };

  BlockCache() = default;

  // Sizes are rounded up to whole 4 KiB pages, so that shapes that differ by a few elements
  // (a last batch one row short) still find each other's blocks.
  static std::size_t rounded(std::size_t bytes) {
    constexpr std::size_t page = 4096;
    if (bytes > std::numeric_limits<std::size_t>::max() - page) throw std::bad_alloc();
    return (bytes + page - 1) / page * page;
  }

  std::mutex mutex_;
  std::vector<Block> free_;  // oldest first
  std::size_t cached_bytes_ = 0;
  std::size_t limit_ = std::size_t(1) << 30;  // 1 GiB; see rnnfast.set_cache_limit
  std::size_t hits_ = 0, misses_ = 0;
  std::atomic<bool> poison_{false};
  std::atomic<long> fail_after_{-1};
};

// A workspace that lives for one call, 64-byte aligned: from the block cache when large, else
// from the heap.
template <typename T>
class Buffer {
 public:
  explicit Buffer(std::size_t n) : bytes_(n * sizeof(T)) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T) - BlockCache::kAlign)
      throw std::bad_alloc();
    if (n == 0) return;  // nothing to hold: no allocation (data() is nullptr)
    if (bytes_ >= BlockCache::kMinBytes) {
      data_ = static_cast<T*>(BlockCache::instance().take(bytes_));
      return;
    }
    BlockCache::instance().fail_if_asked();
    const std::size_t size = (bytes_ / BlockCache::kAlign + 1) * BlockCache::kAlign;
    data_ = static_cast<T*>(aligned_block(BlockCache::kAlign, size));
    if (data_ == nullptr) throw std::bad_alloc();
    if (BlockCache::instance().poison()) BlockCache::fill_nan(data_, bytes_);
  }
  ~Buffer() { release(); }
  Buffer(Buffer&& other) noexcept : bytes_(other.bytes_), data_(other.data_) {
    other.data_ = nullptr;
  }
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      release();
      bytes_ = other.bytes_;
      data_ = other.data_;
      other.data_ = nullptr;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  T* data() { return data_; }
  std::size_t size() const { return bytes_ / sizeof(T); }

 private:
  void release() {
    if (data_ == nullptr) return;
    if (bytes_ >= BlockCache::kMinBytes)
      BlockCache::instance().give(data_, bytes_);
    else
      free_aligned_block(data_);
    data_ = nullptr;
  }

  std::size_t bytes_;
  T* data_ = nullptr;
};

}  // namespace rnnfast
