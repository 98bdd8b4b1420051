// A minimal fork-join helper: runs fn(worker, begin, end) over contiguous ranges on n_threads
// threads; the first exception thrown by any worker is rethrown on the calling thread.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace irforge {

inline size_t resolve_threads(long requested) {
  if (requested > 0) return static_cast<size_t>(requested);
  size_t hw = std::thread::hardware_concurrency();
  return hw ? hw : 1;
}

template <class Fn>
void parallel_ranges(size_t n_threads, size_t n_items, Fn&& fn) {
  n_threads = std::max<size_t>(1, std::min(n_threads, n_items));
  if (n_threads == 1) {
    fn(size_t{0}, size_t{0}, n_items);
    return;
  }
  std::exception_ptr error;
  std::mutex mu;
  std::vector<std::thread> pool;
  for (size_t t = 0; t < n_threads; ++t) {
    size_t lo = n_items * t / n_threads, hi = n_items * (t + 1) / n_threads;
    pool.emplace_back([&, t, lo, hi] {
      try {
        fn(t, lo, hi);
      } catch (...) {
        std::lock_guard<std::mutex> g(mu);
        if (!error) error = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

// Dynamic scheduling: items are handed out one at a time (for uneven work such as queries).
template <class Fn>
void parallel_items(size_t n_threads, size_t n_items, Fn&& fn) {
  n_threads = std::max<size_t>(1, std::min(n_threads, n_items));
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  parallel_ranges(n_threads, n_threads, [&](size_t worker, size_t, size_t) {
    while (!failed.load(std::memory_order_relaxed)) {
      size_t i = next.fetch_add(1);
      if (i >= n_items) break;
      try {
        fn(worker, i);
      } catch (...) {
        failed = true;
        throw;
      }
    }
  });
}

}  // namespace irforge
