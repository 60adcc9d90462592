// libFuzzer target for the restore library (foundry_trace/csrc), built with AddressSanitizer and
// UndefinedBehaviorSanitizer by build.sh: every (table, payload) goes to fr_table_check, and one
// the check accepts goes through the build loop (fr_graph_build, then instantiate and upload)
// against the stand-in driver fake_cuda.cpp, once as it is and once with a driver call failing.
// Beyond the sanitizers' reports it aborts where the library breaks its contract: an accepted
// table refused by the build's own check, or a graph or node left behind.
//
// Input: a 4-byte little-endian table length, the table, then the payload; the format of
// fuzz/fuzz_node_table.py, so either corpus seeds the other.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
int fr_table_check(const void* table, uint64_t table_size, const void* payload,
                   uint64_t payload_size, uint32_t function_count, uint32_t event_count,
                   uint32_t collective_count, char* error, uint64_t error_size);
int fr_function_param_bytes(uint64_t function, uint64_t* bytes, char* error, uint64_t error_size);
int fr_graph_build(const void* table, uint64_t table_size, const void* payload,
                   uint64_t payload_size, const uint64_t* functions, const uint64_t* param_bytes,
                   uint32_t function_count, const uint64_t* events, uint32_t event_count,
                   const uint64_t* collectives, uint32_t collective_count, uint64_t context,
                   uint64_t* graph, char* error, uint64_t error_size);
int fr_graph_instantiate(uint64_t graph, uint64_t context, uint64_t* executable, char* error,
                         uint64_t error_size);
int fr_graph_upload(uint64_t executable, uint64_t context, char* error, uint64_t error_size);
void fr_graph_destroy(uint64_t graph);
void fr_executable_destroy(uint64_t executable);

uint64_t fake_cuda_function(const uint64_t* offsets, const uint64_t* sizes, uint64_t count);
uint64_t fake_cuda_event();
uint64_t fake_cuda_context();
uint64_t fake_cuda_graph();
void fake_cuda_fail_call(uint64_t n);
uint64_t fake_cuda_calls();
uint64_t fake_cuda_live_graphs();
uint64_t fake_cuda_live_nodes();
}

namespace {

// As fuzz/fuzz_node_table.py.
constexpr uint32_t kFunctions = 4, kEvents = 4, kCollectives = 4;
constexpr int kOk = 0, kDriverFailure = 2;  // restore_api.cpp's statuses

[[noreturn]] void finding(const char* what, const char* detail) {
  std::fprintf(stderr, "fuzz_restore: %s: %s\n", what, detail);
  std::abort();
}

struct Handles {
  uint64_t functions[kFunctions];
  uint64_t param_bytes[kFunctions];
  uint64_t events[kEvents];
  uint64_t collectives[kCollectives];
  uint64_t context;
};

// Functions 0 and 1 take what the two kernels of tests/data/micro.foundry take (32 and 48 bytes
// of pointers), function 2 a pointer, an int and a pointer (24 bytes, 4 of them padding),
// function 3 nothing, so its size is unknown and goes unchecked.
Handles make_handles() {
  Handles h{};
  const uint64_t pointer_offsets[] = {0, 8, 16, 24, 32, 40}, pointer_sizes[] = {8, 8, 8, 8, 8, 8};
  const uint64_t mixed_offsets[] = {0, 8, 16}, mixed_sizes[] = {8, 4, 8};
  h.functions[0] = fake_cuda_function(pointer_offsets, pointer_sizes, 4);
  h.functions[1] = fake_cuda_function(pointer_offsets, pointer_sizes, 6);
  h.functions[2] = fake_cuda_function(mixed_offsets, mixed_sizes, 3);
  h.functions[3] = fake_cuda_function(nullptr, nullptr, 0);
  char error[512];
  for (uint32_t i = 0; i < kFunctions; ++i)
    if (fr_function_param_bytes(h.functions[i], &h.param_bytes[i], error, sizeof error) != kOk)
      finding("fr_function_param_bytes failed", error);
  for (uint64_t& event : h.events) event = fake_cuda_event();
  for (uint64_t& graph : h.collectives) graph = fake_cuda_graph();
  h.context = fake_cuda_context();
  return h;
}

const Handles& handles() {
  static const Handles h = make_handles();
  return h;
}

uint64_t fnv1a(const uint8_t* data, size_t size) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; ++i) hash = (hash ^ data[i]) * 0x100000001b3ull;
  return hash;
}

// Builds, instantiates, uploads and destroys the table's graph; returns fr_graph_build's status
// and leaves the driver holding what it held before, or reports a finding.
int build_once(const std::vector<uint8_t>& table, const std::vector<uint8_t>& payload) {
  const Handles& h = handles();
  const uint64_t graphs = fake_cuda_live_graphs(), nodes = fake_cuda_live_nodes();
  char error[512] = "";
  uint64_t graph = 0;
  const int status = fr_graph_build(table.data(), table.size(), payload.data(), payload.size(),
                                    h.functions, h.param_bytes, kFunctions, h.events, kEvents,
                                    h.collectives, kCollectives, h.context, &graph, error,
                                    sizeof error);
  if (status != kOk && status != kDriverFailure)
    finding("a table fr_table_check accepted was refused by fr_graph_build", error);
  if (status == kOk) {
    uint64_t executable = 0;
    if (fr_graph_instantiate(graph, h.context, &executable, error, sizeof error) != kOk ||
        fr_graph_upload(executable, h.context, error, sizeof error) != kOk)
      finding("instantiating or uploading a built graph failed", error);
    fr_executable_destroy(executable);
    fr_graph_destroy(graph);
  }
  if (fake_cuda_live_graphs() != graphs || fake_cuda_live_nodes() != nodes)
    finding(status == kOk ? "a build left graphs behind" : "a failed build left graphs behind",
            error);
  return status;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  uint32_t length = 0;
  std::memcpy(&length, data, sizeof length);
  const size_t table_size = std::min<size_t>(length, size - 4);
  // Separate buffers of the exact sizes, so that a read past either end is an ASan report.
  const std::vector<uint8_t> table(data + 4, data + 4 + table_size);
  const std::vector<uint8_t> payload(data + 4 + table_size, data + size);
  char error[512];
  if (fr_table_check(table.data(), table.size(), payload.data(), payload.size(), kFunctions,
                     kEvents, kCollectives, error, sizeof error) != kOk)
    return 0;
  fake_cuda_fail_call(0);
  const int status = build_once(table, payload);
  const uint64_t calls = fake_cuda_calls();
  if (status == kOk && calls > 0) {
    // The same build with one of its driver calls failing, chosen by the input: every failure
    // path must undo what the build had created.
    fake_cuda_fail_call(1 + fnv1a(data, size) % calls);
    if (build_once(table, payload) != kDriverFailure)
      finding("a build succeeded although a driver call it made failed", "");
    fake_cuda_fail_call(0);
  }
  return 0;
}
