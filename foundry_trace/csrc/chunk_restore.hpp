// A chunk of graphs restored by native threads in one call: all builds (at most a gate's cap at
// a time, across the chunks of a LOAD), then, once every build has finished, all
// instantiations, without returning to Python between graphs. The Python runner
// (restore/_chunk.py) pays tens of microseconds of interpreter time per graph and waits for the
// GIL between driver calls; this runner pays neither.
#pragma once

#include <cuda.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "blob_read.hpp"
#include "graph_build.hpp"

namespace foundry {

constexpr uint32_t kChunkErrorBytes = 512;

// One graph of a chunk: its node table and payload, in memory or read from the archive (and
// checked by check_table() before the build).
struct ChunkGraph {
  BlobSource table;
  BlobSource payload;
};

// The handles every graph of the chunk is built with, and their counts (for check_table()).
struct ChunkHandles {
  const uint64_t* functions;
  const uint64_t* param_bytes;
  uint32_t function_count;
  const uint64_t* events;
  uint32_t event_count;
  const uint64_t* collectives;
  uint32_t collective_count;
  CUcontext context;
};

// What became of one graph. Times are seconds of CLOCK_MONOTONIC (Python's time.perf_counter).
struct ChunkOutcome {
  uint64_t executable;  // the CUgraphExec; 0 where status is not 0
  int32_t status;       // 0, or the API's status (invalid table, driver failure)
  uint32_t reserved;
  double build_start, build_end, instantiate_start, instantiate_end;
  char error[kChunkErrorBytes];
};

// The cap on builds running at once, shared by every chunk of one LOAD: chunks restored side by
// side must not together run more builds than the cap, since a build beside instantiations
// slows them down several times (restore/pipeline.py, DEFAULT_BUILDERS).
class BuildGate {
 public:
  explicit BuildGate(uint32_t builders) : free_(builders > 0 ? builders : 1) {}
  void enter();
  void leave();

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  uint32_t free_;
};

// Restores `count` graphs on `threads` threads, each build through `gate`, reading the blobs
// not in memory from `archive` (a file descriptor) first; each graph's built CUgraph is
// destroyed once instantiated (or on failure). Every outcome is written; where fewer threads can
// be started, fewer do the work (the calling thread always does).
void restore_chunk(const GraphDriver& d, int archive, const ChunkGraph* graphs, uint32_t count,
                   const ChunkHandles& handles, uint32_t threads, BuildGate& gate,
                   ChunkOutcome* outcomes, int invalid_table_status, int driver_failure_status);

}  // namespace foundry
