// The C interface of the restore library, loaded with ctypes by foundry_trace/native.py (ctypes
// releases the GIL for the call, so several Python threads build and instantiate in parallel).
// Every function returns 0 on success, or a status below with a message in `error`.
#include <cstdint>
#include <cstring>
#include <new>
#include <string>

#include "chunk_restore.hpp"
#include "graph_build.hpp"
#include "graph_table.hpp"
#include "module_load.hpp"
#include "sha256.hpp"

#define FOUNDRY_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr int kOk = 0;
constexpr int kInvalidTable = 1;
constexpr int kDriverFailure = 2;
constexpr int kNoDriver = 3;

int report(int status, const std::string& message, char* error, uint64_t error_size) {
  if (error != nullptr && error_size > 0) {
    const size_t n = message.size() < error_size - 1 ? message.size() : error_size - 1;
    std::memcpy(error, message.data(), n);
    error[n] = '\0';
  }
  return status;
}

}  // namespace

// Validates a node table against its payload and the numbers of functions, events and
// collectives. Needs no driver (CI and the fuzz targets call it).
FOUNDRY_EXPORT int fr_table_check(const void* table, uint64_t table_size, const void* payload,
                                  uint64_t payload_size, uint32_t function_count,
                                  uint32_t event_count, uint32_t collective_count, char* error,
                                  uint64_t error_size) {
  const std::string problem =
      foundry::check_table(static_cast<const uint8_t*>(table), table_size,
                           static_cast<const uint8_t*>(payload), payload_size, function_count,
                           event_count, collective_count);
  return problem.empty() ? kOk : report(kInvalidTable, problem, error, error_size);
}

// The size of a kernel's parameter buffer (*bytes; 0 where the driver cannot tell), which
// fr_graph_build checks each kernel node's arguments against.
FOUNDRY_EXPORT int fr_function_param_bytes(uint64_t function, uint64_t* bytes, char* error,
                                           uint64_t error_size) {
  std::string message;
  const foundry::GraphDriver* d = foundry::graph_driver(&message);
  if (d == nullptr) return report(kNoDriver, message, error, error_size);
  if (foundry::function_param_bytes(*d, reinterpret_cast<CUfunction>(function), bytes,
                                    &message) != CUDA_SUCCESS)
    return report(kDriverFailure, message, error, error_size);
  return kOk;
}

// Loads the modules of `requests` in order in `context` (module_load.hpp: each image loaded,
// its stored variables written, its functions resolved), reading the blobs not in memory from
// `archive` (a file descriptor); *loaded: how many were loaded, each request's `module`,
// function_handles, param_bytes and times filled in. At the first failure it stops: that
// module is left unloaded, the ones before it stay loaded (the caller owns them), and `error`
// says why.
FOUNDRY_EXPORT int fr_modules_load(int archive, uint64_t context, foundry::ModuleRequest* requests,
                                   uint32_t count, uint32_t* loaded, char* error,
                                   uint64_t error_size) {
  *loaded = 0;
  std::string message;
  const foundry::GraphDriver* d = foundry::graph_driver(&message);
  if (d == nullptr) return report(kNoDriver, message, error, error_size);
  for (uint32_t i = 0; i < count; ++i) {
    foundry::ModuleRequest& r = requests[i];
    CUmodule module = nullptr;
    switch (foundry::load_module(*d, archive, r.image, reinterpret_cast<CUcontext>(context),
                                 r.variables, r.variable_count, r.functions, r.function_count,
                                 &module, r.function_handles, r.param_bytes, r.times,
                                 &message)) {
      case foundry::ModuleLoadFailure::kNone:
        r.module = reinterpret_cast<uint64_t>(module);
        *loaded = i + 1;
        continue;
      case foundry::ModuleLoadFailure::kArchiveMismatch:
        return report(kInvalidTable, message, error, error_size);
      case foundry::ModuleLoadFailure::kDriver:
        return report(kDriverFailure, message, error, error_size);
    }
  }
  return kOk;
}

// Unloads a module fr_modules_load loaded.
FOUNDRY_EXPORT void fr_module_unload(uint64_t module) {
  std::string message;
  const foundry::GraphDriver* d = foundry::graph_driver(&message);
  if (d != nullptr && module != 0) d->cuModuleUnload(reinterpret_cast<CUmodule>(module));
}

// Validates the table, then builds its graph in `context`; *graph receives the CUgraph.
// param_bytes: each function's parameter buffer size (fr_function_param_bytes), 0 where unknown.
FOUNDRY_EXPORT int fr_graph_build(const void* table, uint64_t table_size, const void* payload,
                                  uint64_t payload_size, const uint64_t* functions,
                                  const uint64_t* param_bytes, uint32_t function_count,
                                  const uint64_t* events, uint32_t event_count,
                                  const uint64_t* collectives, uint32_t collective_count,
                                  uint64_t context, uint64_t* graph, char* error,
                                  uint64_t error_size) {
  const std::string problem =
      foundry::check_table(static_cast<const uint8_t*>(table), table_size,
                           static_cast<const uint8_t*>(payload), payload_size, function_count,
                           event_count, collective_count);
  if (!problem.empty()) return report(kInvalidTable, problem, error, error_size);
  std::string message;
  const foundry::GraphDriver* d = foundry::graph_driver(&message);
  if (d == nullptr) return report(kNoDriver, message, error, error_size);
  const foundry::BuildInputs inputs{
      foundry::TableView(static_cast<const uint8_t*>(table), static_cast<const uint8_t*>(payload)),
      payload_size, functions, param_bytes, events, collectives,
      reinterpret_cast<CUcontext>(context)};
  CUgraph built = nullptr;
  if (foundry::build_graph(*d, inputs, &built, &message) != CUDA_SUCCESS)
    return report(kDriverFailure, message, error, error_size);
  *graph = reinterpret_cast<uint64_t>(built);
  return kOk;
}

// Instantiates a graph in `context`; *executable receives the CUgraphExec.
FOUNDRY_EXPORT int fr_graph_instantiate(uint64_t graph, uint64_t context, uint64_t* executable,
                                        char* error, uint64_t error_size) {
  std::string message;
  const foundry::GraphDriver* d = foundry::graph_driver(&message);
  if (d == nullptr) return report(kNoDriver, message, error, error_size);
  CUgraphExec created = nullptr;
  if (foundry::instantiate_graph(*d, reinterpret_cast<CUgraph>(graph),
                                 reinterpret_cast<CUcontext>(context), &created,
                                 &message) != CUDA_SUCCESS)
    return report(kDriverFailure, message, error, error_size);
  *executable = reinterpret_cast<uint64_t>(created);
  return kOk;
}

// A build gate of `builders` (at least 1) for the chunks of one LOAD (chunk_restore.hpp); null
// where memory ran out. Destroyed with fr_build_gate_destroy once no chunk uses it.
FOUNDRY_EXPORT foundry::BuildGate* fr_build_gate_create(uint32_t builders) {
  return new (std::nothrow) foundry::BuildGate(builders);
}

FOUNDRY_EXPORT void fr_build_gate_destroy(foundry::BuildGate* gate) { delete gate; }

// Builds, then instantiates, `count` graphs on `threads` native threads, each build through
// `gate`, reading blobs not in memory from `archive` (chunk_restore.hpp); outcomes[i] says what became of graph i (its own status and
// message). Returns kNoDriver (outcomes unwritten) where the driver is missing.
FOUNDRY_EXPORT int fr_chunk_restore(int archive, const foundry::ChunkGraph* graphs, uint32_t count,
                                    const uint64_t* functions, const uint64_t* param_bytes,
                                    uint32_t function_count, const uint64_t* events,
                                    uint32_t event_count, const uint64_t* collectives,
                                    uint32_t collective_count, uint64_t context, uint32_t threads,
                                    foundry::BuildGate* gate, foundry::ChunkOutcome* outcomes,
                                    char* error, uint64_t error_size) {
  std::string message;
  const foundry::GraphDriver* d = foundry::graph_driver(&message);
  if (d == nullptr) return report(kNoDriver, message, error, error_size);
  const foundry::ChunkHandles handles{functions,   param_bytes, function_count,
                                      events,      event_count, collectives,
                                      collective_count, reinterpret_cast<CUcontext>(context)};
  foundry::restore_chunk(*d, archive, graphs, count, handles, threads, *gate, outcomes, kInvalidTable,
                         kDriverFailure);
  return kOk;
}

// Uploads an executable to the device and waits until it is there.
FOUNDRY_EXPORT int fr_graph_upload(uint64_t executable, uint64_t context, char* error,
                                   uint64_t error_size) {
  std::string message;
  const foundry::GraphDriver* d = foundry::graph_driver(&message);
  if (d == nullptr) return report(kNoDriver, message, error, error_size);
  if (foundry::upload_graph(*d, reinterpret_cast<CUgraphExec>(executable),
                            reinterpret_cast<CUcontext>(context), &message) != CUDA_SUCCESS)
    return report(kDriverFailure, message, error, error_size);
  return kOk;
}

FOUNDRY_EXPORT void fr_graph_destroy(uint64_t graph) {
  std::string message;
  const foundry::GraphDriver* d = foundry::graph_driver(&message);
  if (d != nullptr && graph != 0) d->cuGraphDestroy(reinterpret_cast<CUgraph>(graph));
}

// The SHA-256 of `size` bytes (the native readers' check; `portable`: the fallback used where
// libcrypto does not load), for the tests against hashlib.
FOUNDRY_EXPORT void fr_sha256(const void* data, uint64_t size, uint8_t* digest, int portable) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  const foundry::Sha256Digest d = portable != 0 ? foundry::sha256_portable(bytes, size) : foundry::sha256(bytes, size);
  std::memcpy(digest, d.data(), d.size());
}

// Reads one blob from `archive` into `out` (`size` bytes, the blob's decoded size) as LOAD's
// native readers do, for the tests and the fuzz target of the reader.
FOUNDRY_EXPORT int fr_blob_read(int archive, const foundry::BlobRef* ref, uint8_t* out,
                                uint64_t size, char* error, uint64_t error_size) {
  foundry::Blob blob;
  std::string message;
  if (!foundry::read_blob(archive, foundry::BlobSource{nullptr, 0, *ref}, &blob, &message))
    return report(kInvalidTable, message, error, error_size);
  if (blob.size() != size) return report(kInvalidTable, "the blob's size differs", error, error_size);
  std::memcpy(out, blob.data(), size);
  return kOk;
}

FOUNDRY_EXPORT void fr_executable_destroy(uint64_t executable) {
  std::string message;
  const foundry::GraphDriver* d = foundry::graph_driver(&message);
  if (d != nullptr && executable != 0) d->cuGraphExecDestroy(reinterpret_cast<CUgraphExec>(executable));
}
