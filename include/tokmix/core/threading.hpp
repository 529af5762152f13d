#pragma once
// Execution policy: serial, N threads (OpenMP when compiled with it, otherwise a
// persistent std::thread pool), or a caller's Eigen::ThreadPoolDevice.
//
// Determinism: work is cut into items whose results never depend on which
// worker computes them or in which order; reductions across items (split-KV
// merges) use a split count fixed by the policy's worker count. So results are
// bit-identical for a fixed thread count. Items are handed out dynamically for
// balance (causal attention rows differ in cost). A parallel_for inside another
// one runs serially: regions never nest.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "tokmix/core/third_party.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"

// The device overload exists only if Eigen's thread-pool device was compiled in
// (Tensor included with EIGEN_USE_THREADS, which this header arranges when it
// comes first).
#ifdef EIGEN_CXX11_TENSOR_TENSOR_DEVICE_THREAD_POOL_H
#define TOKMIX_HAS_EIGEN_THREADPOOL 1
#else
#define TOKMIX_HAS_EIGEN_THREADPOOL 0
#endif

namespace tokmix {

class exec_policy {
 public:
  enum class kind { serial, threads, eigen_device };

  exec_policy() = default;
  static exec_policy serial() { return exec_policy(); }
  // n <= 0 means one worker per hardware thread.
  static exec_policy threads(int n) {
    exec_policy p;
    p.kind_ = kind::threads;
    p.n_ = n > 0 ? n : std::max(1u, std::thread::hardware_concurrency());
    return p;
  }
#if TOKMIX_HAS_EIGEN_THREADPOOL
  static exec_policy device(const Eigen::ThreadPoolDevice& d) {
    exec_policy p;
    p.kind_ = kind::eigen_device;
    p.n_ = std::max(1, d.numThreads());
    p.device_ = &d;
    return p;
  }
  const Eigen::ThreadPoolDevice* eigen_device() const { return device_; }
#endif

  kind mode() const { return kind_; }
  int workers() const { return n_; }

 private:
  kind kind_ = kind::serial;
  int n_ = 1;
#if TOKMIX_HAS_EIGEN_THREADPOOL
  const Eigen::ThreadPoolDevice* device_ = nullptr;
#endif
};

namespace detail {

inline int& parallel_depth() {
  thread_local int depth = 0;
  return depth;
}

struct depth_guard {
  depth_guard() { ++parallel_depth(); }
  ~depth_guard() { --parallel_depth(); }
};

// Persistent workers so a decode step does not pay thread creation.
class thread_pool {
 public:
  static thread_pool& instance() {
    static thread_pool pool;
    return pool;
  }

  // Runs fn(w) for w in [0, n); the caller is worker 0.
  void run(int n, const std::function<void(int)>& fn) {
    std::lock_guard<std::mutex> serial_calls(run_mutex_);
    {
      std::unique_lock<std::mutex> lk(m_);
      while (static_cast<int>(threads_.size()) < n - 1) {
        const int id = static_cast<int>(threads_.size()) + 1;
        threads_.emplace_back([this, id] { worker_loop(id); });
      }
      job_ = &fn;
      job_workers_ = n;
      pending_ = n - 1;
      ++generation_;
    }
    cv_start_.notify_all();
    fn(0);
    std::unique_lock<std::mutex> lk(m_);
    cv_done_.wait(lk, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

  ~thread_pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      ++generation_;
    }
    cv_start_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void worker_loop(int id) {
    std::uint64_t seen = 0;
    {
      std::lock_guard<std::mutex> lk(m_);
      seen = generation_ - 1;  // a job posted before this thread started still counts
      if (job_ == nullptr) seen = generation_;
    }
    for (;;) {
      const std::function<void(int)>* job = nullptr;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_start_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (id >= job_workers_) continue;
        job = job_;
      }
      (*job)(id);
      {
        std::lock_guard<std::mutex> lk(m_);
        --pending_;
      }
      cv_done_.notify_one();
    }
  }

  std::mutex run_mutex_;
  std::mutex m_;
  std::condition_variable cv_start_, cv_done_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  int job_workers_ = 0;
  int pending_ = 0;
  std::uint64_t generation_ = 1;
  bool stop_ = false;
};

}  // namespace detail

// Calls body(item, worker) once for each item in [0, n_items). `worker` is in
// [0, workers_used) and identifies per-worker scratch; it never affects results.
template <class Body>
void parallel_for(const exec_policy& policy, index_t n_items, Body&& body) {
  if (n_items <= 0) return;
  const int w = static_cast<int>(std::min<index_t>(policy.workers(), n_items));
  if (w <= 1 || policy.mode() == exec_policy::kind::serial || detail::parallel_depth() > 0) {
    for (index_t i = 0; i < n_items; ++i) body(i, 0);
    return;
  }
  std::atomic<index_t> next{0};
  auto worker = [&](int id) {
    detail::depth_guard guard;
    for (index_t i = next.fetch_add(1, std::memory_order_relaxed); i < n_items;
         i = next.fetch_add(1, std::memory_order_relaxed))
      body(i, id);
  };
#if TOKMIX_HAS_EIGEN_THREADPOOL
  if (policy.mode() == exec_policy::kind::eigen_device) {
    Eigen::Barrier barrier(static_cast<unsigned>(w - 1));
    for (int id = 1; id < w; ++id) policy.eigen_device()->enqueue_with_barrier(&barrier, [&worker, id] { worker(id); });
    worker(0);
    barrier.Wait();
    return;
  }
#endif
#ifdef _OPENMP
  if (!omp_in_parallel()) {
#pragma omp parallel num_threads(w)
    worker(omp_get_thread_num());
    return;
  }
#endif
  const std::function<void(int)> fn = worker;
  detail::thread_pool::instance().run(w, fn);
}

// Number of worker slots a parallel_for under `policy` may use (for sizing
// per-worker scratch before the region starts).
inline int worker_slots(const exec_policy& policy) { return std::max(1, policy.workers()); }

}  // namespace tokmix
