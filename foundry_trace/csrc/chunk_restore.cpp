#include "chunk_restore.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "graph_table.hpp"

namespace foundry {
namespace {

void set_error(ChunkOutcome* outcome, int status, const std::string& message) {
  outcome->status = status;
  const size_t n = std::min<size_t>(message.size(), kChunkErrorBytes - 1);
  std::memcpy(outcome->error, message.data(), n);
  outcome->error[n] = '\0';
}

// The state the threads share. Invariant: an instantiation is taken only once every build has
// been taken, so a thread waiting for the builds waits for threads that are running them. An
// instantiation starts only once every build of the chunk has finished: the driver serialises
// much of both kinds of call, and a build beside instantiations runs several times slower than
// alone (docs/measurements.md, "The pipeline's defaults").
class ChunkRun {
 public:
  ChunkRun(const GraphDriver& d, int archive, const ChunkGraph* graphs, uint32_t count,
           const ChunkHandles& shared, BuildGate& gate, ChunkOutcome* outcomes, int invalid_table,
           int driver_failure)
      : d_(d), archive_(archive), graphs_(graphs), count_(count), shared_(shared), gate_(gate),
        outcomes_(outcomes), built_(count, nullptr),
        invalid_table_(invalid_table), driver_failure_(driver_failure) {}

  void work() {
    for (uint32_t i; take(&next_build_, &i);) build(i);
    for (uint32_t i; take(&next_instantiation_, &i);) instantiate(i);
  }

 private:
  bool take(uint32_t* next, uint32_t* index) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (*next == count_) return false;
    *index = (*next)++;
    return true;
  }

  // Reads the graph's blobs (outside the gate: a read is no driver work), then builds it.
  void build(uint32_t i) {
    ChunkOutcome* outcome = &outcomes_[i];
    const ChunkGraph& g = graphs_[i];
    Blob table, payload;
    std::string problem;
    if (!read_blob(archive_, g.table, &table, &problem) ||
        !read_blob(archive_, g.payload, &payload, &problem)) {
      set_error(outcome, invalid_table_, problem);
      return finish(i, nullptr);
    }
    gate_.enter();
    outcome->build_start = now();
    problem = check_table(table.data(), table.size(), payload.data(), payload.size(),
                          shared_.function_count, shared_.event_count, shared_.collective_count);
    CUgraph graph = nullptr;
    if (!problem.empty()) {
      set_error(outcome, invalid_table_, problem);
    } else {
      const BuildInputs in{TableView(table.data(), payload.data()), payload.size(),
                           shared_.functions, shared_.param_bytes, shared_.events,
                           shared_.collectives, shared_.context};
      std::string message;
      if (build_graph(d_, in, &graph, &message) != CUDA_SUCCESS) {
        set_error(outcome, driver_failure_, message);
        graph = nullptr;
      }
    }
    outcome->build_end = now();
    gate_.leave();
    finish(i, graph);
  }

  void finish(uint32_t i, CUgraph graph) {
    std::lock_guard<std::mutex> lock(mutex_);
    built_[i] = graph;
    if (++builds_finished_ == count_) changed_.notify_all();
  }

  void instantiate(uint32_t i) {
    ChunkOutcome* outcome = &outcomes_[i];
    CUgraph graph = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [this] { return builds_finished_ == count_; });
      graph = built_[i];
    }
    if (graph == nullptr) return;  // the build failed: its outcome says why
    outcome->instantiate_start = now();
    CUgraphExec executable = nullptr;
    std::string message;
    if (instantiate_graph(d_, graph, shared_.context, &executable, &message) != CUDA_SUCCESS) {
      set_error(outcome, driver_failure_, message);
    } else {
      outcome->executable = reinterpret_cast<uint64_t>(executable);
    }
    outcome->instantiate_end = now();
    d_.cuGraphDestroy(graph);
  }

  const GraphDriver& d_;
  const int archive_;
  const ChunkGraph* graphs_;
  const uint32_t count_;
  const ChunkHandles& shared_;
  std::mutex mutex_;
  std::condition_variable changed_;
  BuildGate& gate_;
  uint32_t next_build_ = 0;
  uint32_t next_instantiation_ = 0;
  ChunkOutcome* outcomes_;
  std::vector<CUgraph> built_;
  uint32_t builds_finished_ = 0;
  const int invalid_table_;
  const int driver_failure_;
};

}  // namespace

void BuildGate::enter() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return free_ > 0; });
  --free_;
}

void BuildGate::leave() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++free_;
  changed_.notify_one();
}

void restore_chunk(const GraphDriver& d, int archive, const ChunkGraph* graphs, uint32_t count,
                   const ChunkHandles& shared, uint32_t threads, BuildGate& gate,
                   ChunkOutcome* outcomes, int invalid_table_status, int driver_failure_status) {
  std::memset(outcomes, 0, sizeof(ChunkOutcome) * count);
  ChunkRun run(d, archive, graphs, count, shared, gate, outcomes, invalid_table_status,
               driver_failure_status);
  std::vector<std::thread> workers;
  const uint32_t wanted = std::max<uint32_t>(1, std::min(threads, count));
  for (uint32_t t = 1; t < wanted; ++t) {
    try {
      workers.emplace_back([&run] { run.work(); });
    } catch (const std::system_error&) {
      break;  // fewer threads: the calling thread and those started do the work
    }
  }
  run.work();  // the calling thread is one of them
  for (std::thread& worker : workers) worker.join();
}

}  // namespace foundry
