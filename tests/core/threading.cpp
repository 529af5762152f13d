// Tests for include/tokmix/core/threading.hpp: every item runs exactly once
// under each policy, worker ids stay in range, nested regions run serially.
#include "tokmix/core/threading.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

namespace {

// Runs parallel_for over n items and checks each ran once with a valid worker id.
void check_cover(const tokmix::exec_policy& policy, tokmix::index_t n) {
  std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
  for (auto& h : hits) h = 0;
  std::atomic<int> bad_worker{0};
  const int slots = tokmix::worker_slots(policy);
  tokmix::parallel_for(policy, n, [&](tokmix::index_t i, int worker) {
    if (worker < 0 || worker >= slots) ++bad_worker;
    ++hits[static_cast<std::size_t>(i)];
  });
  CHECK(bad_worker == 0);
  int wrong = 0;
  for (auto& h : hits) wrong += (h.load() != 1);
  CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("exec_policy reports its kind and workers", "[core][threading]") {
  CHECK(tokmix::exec_policy().mode() == tokmix::exec_policy::kind::serial);
  CHECK(tokmix::exec_policy::serial().workers() == 1);
  CHECK(tokmix::exec_policy::threads(3).mode() == tokmix::exec_policy::kind::threads);
  CHECK(tokmix::exec_policy::threads(3).workers() == 3);
  CHECK(tokmix::exec_policy::threads(0).workers() >= 1);  // one per hardware thread
  CHECK(tokmix::worker_slots(tokmix::exec_policy::threads(4)) == 4);
  CHECK(tokmix::worker_slots(tokmix::exec_policy::serial()) == 1);
}

TEST_CASE("parallel_for covers every item exactly once", "[core][threading]") {
  const tokmix::index_t sizes[] = {0, 1, 2, 3, 7, 64, 1001};
  for (tokmix::index_t n : sizes) {
    INFO("n = " << n);
    check_cover(tokmix::exec_policy::serial(), n);
    check_cover(tokmix::exec_policy::threads(2), n);
    check_cover(tokmix::exec_policy::threads(4), n);
  }
}

TEST_CASE("serial policy runs in order on the calling thread", "[core][threading]") {
  std::vector<tokmix::index_t> order;
  const auto caller = std::this_thread::get_id();
  bool other_thread = false;
  tokmix::parallel_for(tokmix::exec_policy::serial(), 10, [&](tokmix::index_t i, int worker) {
    order.push_back(i);
    other_thread |= std::this_thread::get_id() != caller || worker != 0;
  });
  CHECK_FALSE(other_thread);
  REQUIRE(order.size() == 10);
  for (tokmix::index_t i = 0; i < 10; ++i) CHECK(order[static_cast<std::size_t>(i)] == i);
}

TEST_CASE("threads(n) uses more than one thread when there is work", "[core][threading]") {
  std::mutex m;
  std::set<std::thread::id> ids;
  // ~100 ms of sleeping items: even on a loaded machine the second worker wakes in time.
  tokmix::parallel_for(tokmix::exec_policy::threads(2), 100, [&](tokmix::index_t, int) {
    {
      std::lock_guard<std::mutex> lk(m);
      ids.insert(std::this_thread::get_id());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  CHECK(ids.size() == 2);
}

TEST_CASE("repeated regions reuse the pool without losing items", "[core][threading]") {
  std::atomic<long> total{0};
  for (int rep = 0; rep < 300; ++rep) {
    const tokmix::index_t n = 1 + rep % 9;
    tokmix::parallel_for(tokmix::exec_policy::threads(1 + rep % 4), n,
                         [&](tokmix::index_t i, int) { total += static_cast<long>(i) + 1; });
  }
  long expected = 0;
  for (int rep = 0; rep < 300; ++rep) {
    const long n = 1 + rep % 9;
    expected += n * (n + 1) / 2;
  }
  CHECK(total == expected);
}

TEST_CASE("nested parallel_for runs serially inside the outer worker", "[core][threading]") {
  std::atomic<int> nested_bad{0}, nested_items{0};
  tokmix::parallel_for(tokmix::exec_policy::threads(2), 8, [&](tokmix::index_t, int) {
    const auto outer_thread = std::this_thread::get_id();
    tokmix::index_t expected_next = 0;
    tokmix::parallel_for(tokmix::exec_policy::threads(4), 16, [&](tokmix::index_t j, int inner_worker) {
      // serial: same thread, worker 0, items in order
      if (std::this_thread::get_id() != outer_thread || inner_worker != 0 || j != expected_next) ++nested_bad;
      ++expected_next;
      ++nested_items;
    });
  });
  CHECK(nested_bad == 0);
  CHECK(nested_items == 8 * 16);
  // After the region, a new top-level region is parallel again.
  check_cover(tokmix::exec_policy::threads(2), 33);
}

#if TOKMIX_HAS_EIGEN_THREADPOOL
TEST_CASE("an Eigen ThreadPoolDevice policy covers every item exactly once", "[core][threading]") {
  Eigen::ThreadPool pool(3);
  Eigen::ThreadPoolDevice device(&pool, 3);
  const auto policy = tokmix::exec_policy::device(device);
  CHECK(policy.mode() == tokmix::exec_policy::kind::eigen_device);
  CHECK(policy.workers() == 3);
  CHECK(policy.eigen_device() == &device);
  for (tokmix::index_t n : {0, 1, 2, 5, 100, 1000}) {
    INFO("n = " << n);
    check_cover(policy, n);
  }
  // Nested under the device, regions run serially too.
  std::atomic<int> nested_bad{0};
  tokmix::parallel_for(policy, 6, [&](tokmix::index_t, int) {
    const auto outer = std::this_thread::get_id();
    tokmix::parallel_for(policy, 5, [&](tokmix::index_t, int w) {
      if (w != 0 || std::this_thread::get_id() != outer) ++nested_bad;
    });
  });
  CHECK(nested_bad == 0);
}
#endif

TEST_CASE("results combined per item are identical for every thread count", "[core][threading]") {
  // Each item writes its own slot; the reduction over slots is then fixed-order.
  auto run = [](const tokmix::exec_policy& p) {
    std::vector<float> partial(257);
    tokmix::parallel_for(p, 257, [&](tokmix::index_t i, int) {
      float s = 0;
      for (int k = 0; k < 100; ++k) s += 1.0f / static_cast<float>(i * 100 + k + 1);
      partial[static_cast<std::size_t>(i)] = s;
    });
    float total = 0;
    for (float v : partial) total += v;
    return total;
  };
  const float serial = run(tokmix::exec_policy::serial());
  CHECK(run(tokmix::exec_policy::threads(2)) == serial);
  CHECK(run(tokmix::exec_policy::threads(4)) == serial);
}
