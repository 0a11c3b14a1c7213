// One persistent thread pool for the whole forward (every driver in engine.cpp uses it).
//
// parallel_for(n, fn) runs fn(0..n-1) on the calling thread plus (threads - 1) workers, handing out
// task indices from one atomic counter (dynamic: row blocks and attention heads differ in cost).
// Between calls the workers spin for a short while (the next layer's call usually follows within
// microseconds; a condition-variable wake-up costs 10-50 us, which 100 calls per forward would
// feel) and then sleep. With threads == 1 nothing is started and fn runs inline.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace intbert {

class ThreadPool {
 public:
  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }

  int threads() const { return threads_; }

  // Must not be called while a parallel_for is running (the Python side holds the GIL around calls).
  void set_threads(int n) {
    if (n < 1) n = 1;
    if (n == threads_) return;
    stop_workers();
    threads_ = n;
    // A worker must know the generation at its creation: read inside the thread, a parallel_for that
    // starts before the thread runs would look already seen, and the caller would wait for it forever.
    const uint64_t start = generation_.load();
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, start] { work(start); });
  }

  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    if (threads_ == 1 || n == 1) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      pending_.store(threads_ - 1);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    run_tasks(fn, n);
    while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    fn_ = nullptr;
  }

  ~ThreadPool() { stop_workers(); }

 private:
  ThreadPool() = default;

  void run_tasks(const std::function<void(int64_t)>& fn, int64_t n) {
    for (int64_t i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) fn(i);
  }

  void work(uint64_t seen) {
    for (;;) {
      // Spin first (about 200 us), then sleep on the condition variable.
      auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
      while (generation_.load(std::memory_order_acquire) == seen && !stop_.load() &&
             std::chrono::steady_clock::now() < until) {
        __builtin_ia32_pause();
      }
      if (generation_.load(std::memory_order_acquire) == seen && !stop_.load()) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load() != seen || stop_.load(); });
      }
      if (stop_.load()) return;
      seen = generation_.load(std::memory_order_acquire);
      run_tasks(*fn_, n_);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_.store(false);
  }

  int threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(int64_t)>* volatile fn_ = nullptr;
  int64_t n_ = 0;
};

}  // namespace intbert
