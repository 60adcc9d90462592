// A stand-in for libcuda.so.1, for the restore library's fuzz target (fuzz_restore.cpp) and the
// CPU tests: the graph and module entry points that graph_build.cpp resolves through
// cuGetProcAddress_v2, recorded in plain C++ structures. A module "loads" from any image that
// does not start with "BAD", and then holds the kernels and variables fake_cuda_define_kernel()
// and fake_cuda_define_variable() declared; its variables live in host memory, and a copy to the
// device must land inside one of them. Where the real driver reads host memory, this one copies
// every byte it would read (so AddressSanitizer sees an over-read by the build loop), and every
// handle it is given must be one it handed out: anything else aborts with the reason, a bug of
// the caller. It fails the way a driver does where the build loop has to clean up: an injected
// failure of the n-th call (fake_cuda_fail_call), a node limit (CUDA_ERROR_OUT_OF_MEMORY), and
// the refusals the driver makes of zero dimensions and repeated dependencies.
// Single-threaded, like its callers.
#include <cuda.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// Nodes alive at once, past which node creation fails as the driver's out-of-memory does: child
// graphs are copied per use, so a small table may ask for 2^24 nodes (the table check's bound).
constexpr size_t kMaxNodes = 1 << 20;
constexpr uint32_t kLastAttribute = 18;  // the highest CUlaunchAttributeID drivers know today

struct FakeFunction {
  std::vector<std::pair<size_t, size_t>> params;  // (offset, size)
  std::vector<std::pair<CUfunction_attribute, int>> attributes;  // those set; 0 otherwise
  size_t param_bytes() const {
    size_t end = 0;
    for (const auto& [offset, size] : params) end = std::max(end, offset + size);
    return end;
  }
};

// A module: its own copy of each declared kernel and variable.
struct FakeModule {
  std::vector<std::pair<std::string, FakeFunction*>> functions;
  std::vector<std::pair<std::string, std::vector<uint8_t>>> variables;
};

struct FakeGraph;

struct FakeNode {
  FakeGraph* owner = nullptr;
  CUgraphNodeType type = CU_GRAPH_NODE_TYPE_EMPTY;
  std::vector<CUgraphEdgeData> edges;  // one per dependency
  std::vector<uint8_t> arguments;      // kernel: the parameter bytes the driver copied
  std::unique_ptr<FakeGraph> child;    // child graph: the copy the node owns
  std::vector<std::array<uint8_t, 64>> attributes;
};

struct FakeGraph {
  std::vector<std::unique_ptr<FakeNode>> nodes;
};

// Handles are kept as plain addresses: each is looked up before it is used as its type.
struct State {
  std::set<const void*> functions, events, contexts, streams, executables;
  std::set<const void*> graphs;  // created by cuGraphCreate and not destroyed yet
  std::set<const void*> nodes;   // every node of every graph, copies included
  std::set<std::string> hidden;  // entry points cuGetProcAddress_v2 reports missing
  std::set<const void*> modules;
  std::vector<std::pair<std::string, FakeFunction>> kernels;    // what each module loads with
  std::vector<std::pair<std::string, size_t>> variable_sizes;
  uint64_t calls = 0;            // calls that can fail, so far
  uint64_t fail_at = 0;          // the call that fails (0: none)
};

State& state() {
  static State s;  // never destroyed: handles may outlive static destruction in the caller
  return s;
}

[[noreturn]] void misuse(const char* what) {
  std::fprintf(stderr, "fake libcuda: %s\n", what);
  std::abort();
}

void require(bool condition, const char* what) {
  if (!condition) misuse(what);
}

// True when this call is the one fake_cuda_fail_call() chose.
bool injected_failure() { return ++state().calls == state().fail_at; }

// Copies `size` bytes the real driver would read from host memory.
std::vector<uint8_t> read_host(const void* source, size_t size) {
  std::vector<uint8_t> copy(size);
  if (size != 0) std::memcpy(copy.data(), source, size);
  return copy;
}

FakeNode* new_node(FakeGraph* owner, CUgraphNodeType type) {
  auto node = std::make_unique<FakeNode>();
  node->owner = owner;
  node->type = type;
  FakeNode* raw = node.get();
  state().nodes.insert(raw);
  owner->nodes.push_back(std::move(node));
  return raw;
}

void forget(const FakeGraph& graph) {
  for (const auto& node : graph.nodes) {
    state().nodes.erase(node.get());
    if (node->child) forget(*node->child);
  }
}

// The copy a child graph node owns, as cuGraphAddNode makes it.
std::unique_ptr<FakeGraph> clone(const FakeGraph& source) {
  auto copy = std::make_unique<FakeGraph>();
  for (const auto& node : source.nodes) {
    FakeNode* twin = new_node(copy.get(), node->type);
    twin->edges = node->edges;
    twin->arguments = node->arguments;
    twin->attributes = node->attributes;
    if (node->child) twin->child = clone(*node->child);
  }
  return copy;
}

size_t count_nodes(const FakeGraph& graph) {
  size_t count = graph.nodes.size();
  for (const auto& node : graph.nodes)
    if (node->child) count += count_nodes(*node->child);
  return count;
}

// The argument bytes of a kernel node: all of the `extra` buffer, and as many bytes as the
// function's parameters fill (what the driver copies, whatever size it is told).
CUresult read_kernel(const CUDA_KERNEL_NODE_PARAMS_v3& k, FakeNode* node) {
  const auto* function = reinterpret_cast<const FakeFunction*>(k.func);
  require(state().functions.count(function) != 0, "a kernel node names an unknown function");
  if (k.gridDimX == 0 || k.gridDimY == 0 || k.gridDimZ == 0 || k.blockDimX == 0 ||
      k.blockDimY == 0 || k.blockDimZ == 0)
    return CUDA_ERROR_INVALID_VALUE;
  if (k.kernelParams != nullptr) {
    for (size_t i = 0; i < function->params.size(); ++i) {
      const auto [offset, size] = function->params[i];
      const std::vector<uint8_t> value = read_host(k.kernelParams[i], size);
      node->arguments.resize(std::max(node->arguments.size(), offset + size));
      std::copy(value.begin(), value.end(), node->arguments.begin() + offset);
    }
    return CUDA_SUCCESS;
  }
  const void* buffer = nullptr;
  size_t size = 0;
  for (void* const* entry = k.extra; entry != nullptr && entry[0] != CU_LAUNCH_PARAM_END;
       entry += 2) {
    if (entry[0] == CU_LAUNCH_PARAM_BUFFER_POINTER) buffer = entry[1];
    else if (entry[0] == CU_LAUNCH_PARAM_BUFFER_SIZE) size = *static_cast<const size_t*>(entry[1]);
    else misuse("an unknown key in a kernel node's extra list");
  }
  if (buffer == nullptr)
    return size == 0 && function->param_bytes() == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
  node->arguments = read_host(buffer, std::max(size, function->param_bytes()));
  return CUDA_SUCCESS;
}

CUresult read_params(const CUgraphNodeParams& p, FakeNode* node) {
  switch (p.type) {
    case CU_GRAPH_NODE_TYPE_KERNEL:
      return read_kernel(p.kernel, node);
    case CU_GRAPH_NODE_TYPE_MEMSET:
      require(state().contexts.count(p.memset.ctx) != 0, "a memset node names an unknown context");
      return p.memset.elementSize == 1 || p.memset.elementSize == 2 || p.memset.elementSize == 4
                 ? CUDA_SUCCESS
                 : CUDA_ERROR_INVALID_VALUE;
    case CU_GRAPH_NODE_TYPE_MEMCPY: {
      const CUDA_MEMCPY3D& c = p.memcpy.copyParams;
      require(state().contexts.count(p.memcpy.copyCtx) != 0,
              "a memcpy node names an unknown context");
      // A host pointer in a restored copy would be the saving process's address.
      require(c.srcMemoryType == CU_MEMORYTYPE_DEVICE && c.dstMemoryType == CU_MEMORYTYPE_DEVICE,
              "a memcpy node that is not device to device");
      return CUDA_SUCCESS;
    }
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD:
      require(state().events.count(p.eventRecord.event) != 0,
              "an event node names an unknown event");
      return CUDA_SUCCESS;
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT:
      require(state().events.count(p.eventWait.event) != 0, "an event node names an unknown event");
      return CUDA_SUCCESS;
    case CU_GRAPH_NODE_TYPE_GRAPH:
      require(state().graphs.count(p.graph.graph) != 0,
              "a child graph node names an unknown graph");
      node->child = clone(*reinterpret_cast<const FakeGraph*>(p.graph.graph));
      return CUDA_SUCCESS;
    case CU_GRAPH_NODE_TYPE_EMPTY:
      return CUDA_SUCCESS;
    default:
      misuse("a node type the build loop never adds");
  }
}

// --- the entry points, each checked against cuda.h's declaration ---

CUresult get_error_name(CUresult error, const char** name) {
  switch (error) {
    case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; return CUDA_SUCCESS;
    case CUDA_ERROR_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_IMAGE: *name = "CUDA_ERROR_INVALID_IMAGE"; return CUDA_SUCCESS;
    case CUDA_ERROR_NOT_FOUND: *name = "CUDA_ERROR_NOT_FOUND"; return CUDA_SUCCESS;
    default: *name = nullptr; return CUDA_ERROR_INVALID_VALUE;
  }
}

CUresult ctx_set_current(CUcontext context) {
  require(context == nullptr || state().contexts.count(context) != 0, "an unknown context");
  return CUDA_SUCCESS;
}

// Nothing runs on the stand-in's device: there is never work to wait for.
CUresult ctx_synchronize() { return CUDA_SUCCESS; }

CUgraph make_graph() {
  auto* created = new FakeGraph;
  state().graphs.insert(created);
  return reinterpret_cast<CUgraph>(created);
}

CUresult graph_create(CUgraph* graph, unsigned int flags) {
  require(flags == 0, "graph flags");
  if (injected_failure()) return CUDA_ERROR_OUT_OF_MEMORY;
  *graph = make_graph();
  return CUDA_SUCCESS;
}

CUresult graph_destroy(CUgraph graph) {
  auto* fake = reinterpret_cast<FakeGraph*>(graph);
  require(state().graphs.erase(fake) == 1, "cuGraphDestroy of an unknown graph");
  forget(*fake);
  delete fake;
  return CUDA_SUCCESS;
}

CUresult graph_add_node(CUgraphNode* created, CUgraph graph, const CUgraphNode* dependencies,
                        const CUgraphEdgeData* edge_data, size_t count, CUgraphNodeParams* p) {
  auto* owner = reinterpret_cast<FakeGraph*>(graph);
  require(state().graphs.count(owner) != 0, "cuGraphAddNode to an unknown graph");
  std::set<const FakeNode*> seen;
  for (size_t i = 0; i < count; ++i) {
    const auto* dependency = reinterpret_cast<const FakeNode*>(dependencies[i]);
    require(state().nodes.count(dependency) != 0 && dependency->owner == owner,
            "a dependency that is not a node of the graph");
    if (!seen.insert(dependency).second) return CUDA_ERROR_INVALID_VALUE;  // a repeated edge
  }
  require(p->reserved0[0] == 0 && p->reserved0[1] == 0 && p->reserved0[2] == 0 &&
              p->reserved2 == 0,
          "reserved fields of CUgraphNodeParams are set");
  if (injected_failure()) return CUDA_ERROR_OUT_OF_MEMORY;
  FakeNode* node = new_node(owner, p->type);
  CUresult r = read_params(*p, node);
  if (r == CUDA_SUCCESS && state().nodes.size() > kMaxNodes) r = CUDA_ERROR_OUT_OF_MEMORY;
  if (r != CUDA_SUCCESS) {
    if (node->child) forget(*node->child);
    state().nodes.erase(node);
    owner->nodes.pop_back();
    return r;
  }
  if (edge_data != nullptr) node->edges.assign(edge_data, edge_data + count);
  else node->edges.assign(count, CUgraphEdgeData{});
  *created = reinterpret_cast<CUgraphNode>(node);
  return CUDA_SUCCESS;
}

CUresult kernel_node_set_attribute(CUgraphNode node, CUkernelNodeAttrID id,
                                   const CUkernelNodeAttrValue* value) {
  auto* fake = reinterpret_cast<FakeNode*>(node);
  require(state().nodes.count(fake) != 0 && fake->type == CU_GRAPH_NODE_TYPE_KERNEL,
          "cuGraphKernelNodeSetAttribute on something other than a kernel node");
  if (injected_failure()) return CUDA_ERROR_OUT_OF_MEMORY;
  uint32_t raw = 0;  // the id as the driver sees it: any number, not only the enum's values
  std::memcpy(&raw, &id, sizeof raw);
  if (raw > kLastAttribute) return CUDA_ERROR_INVALID_VALUE;
  std::array<uint8_t, 64> bytes;
  std::memcpy(bytes.data(), value, sizeof bytes);
  // The event attributes hold a CUevent, which the driver dereferences on the host.
  if (raw == CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT)
    require(state().events.count(value->programmaticEvent.event) != 0,
            "an attribute's unknown event");
  if (raw == CU_LAUNCH_ATTRIBUTE_LAUNCH_COMPLETION_EVENT)
    require(state().events.count(value->launchCompletionEvent.event) != 0,
            "an attribute's unknown event");
  fake->attributes.push_back(bytes);
  return CUDA_SUCCESS;
}

CUresult graph_instantiate(CUgraphExec* executable, CUgraph graph, unsigned long long flags) {
  require(state().graphs.count(reinterpret_cast<FakeGraph*>(graph)) != 0 && flags == 0,
          "cuGraphInstantiateWithFlags of an unknown graph");
  auto* created = new int(0);
  state().executables.insert(created);
  *executable = reinterpret_cast<CUgraphExec>(created);
  return CUDA_SUCCESS;
}

CUresult graph_upload(CUgraphExec executable, CUstream stream) {
  require(state().executables.count(executable) != 0 && state().streams.count(stream) != 0,
          "cuGraphUpload of an unknown executable or on an unknown stream");
  return CUDA_SUCCESS;
}

CUresult graph_exec_destroy(CUgraphExec executable) {
  require(state().executables.erase(executable) == 1,
          "cuGraphExecDestroy of an unknown executable");
  delete reinterpret_cast<int*>(executable);
  return CUDA_SUCCESS;
}

CUresult stream_create(CUstream* stream, unsigned int) {
  auto* created = new int(0);
  state().streams.insert(created);
  *stream = reinterpret_cast<CUstream>(created);
  return CUDA_SUCCESS;
}

CUresult stream_synchronize(CUstream stream) {
  require(state().streams.count(stream) != 0, "cuStreamSynchronize of an unknown stream");
  return CUDA_SUCCESS;
}

CUresult stream_destroy(CUstream stream) {
  require(state().streams.erase(stream) == 1, "cuStreamDestroy of an unknown stream");
  delete reinterpret_cast<int*>(stream);
  return CUDA_SUCCESS;
}

CUresult func_get_param_info(CUfunction function, size_t index, size_t* offset, size_t* size) {
  const auto* fake = reinterpret_cast<const FakeFunction*>(function);
  require(state().functions.count(fake) != 0, "cuFuncGetParamInfo of an unknown function");
  if (index >= fake->params.size()) return CUDA_ERROR_INVALID_VALUE;
  *offset = fake->params[index].first;
  if (size != nullptr) *size = fake->params[index].second;
  return CUDA_SUCCESS;
}

CUresult module_load_data(CUmodule* module, const void* image) {
  require(image != nullptr, "cuModuleLoadData of no image");
  if (injected_failure()) return CUDA_ERROR_OUT_OF_MEMORY;
  if (std::memcmp(image, "BAD", 3) == 0) return CUDA_ERROR_INVALID_IMAGE;
  auto* loaded = new FakeModule;
  for (const auto& [name, kernel] : state().kernels) {
    auto* function = new FakeFunction(kernel);
    state().functions.insert(function);
    loaded->functions.emplace_back(name, function);
  }
  for (const auto& [name, size] : state().variable_sizes)
    loaded->variables.emplace_back(name, std::vector<uint8_t>(size, 0xEE));
  state().modules.insert(loaded);
  *module = reinterpret_cast<CUmodule>(loaded);
  return CUDA_SUCCESS;
}

FakeModule* known_module(CUmodule module, const char* call) {
  require(state().modules.count(module) != 0, call);
  return reinterpret_cast<FakeModule*>(module);
}

CUresult module_unload(CUmodule module) {
  FakeModule* fake = known_module(module, "cuModuleUnload of an unknown module");
  for (const auto& [name, function] : fake->functions) {
    state().functions.erase(function);
    delete function;
  }
  state().modules.erase(fake);
  delete fake;
  return CUDA_SUCCESS;
}

CUresult module_get_function(CUfunction* function, CUmodule module, const char* name) {
  FakeModule* fake = known_module(module, "cuModuleGetFunction in an unknown module");
  if (injected_failure()) return CUDA_ERROR_OUT_OF_MEMORY;
  for (const auto& [known, handle] : fake->functions) {
    if (known == name) {
      *function = reinterpret_cast<CUfunction>(handle);
      return CUDA_SUCCESS;
    }
  }
  return CUDA_ERROR_NOT_FOUND;
}

CUresult module_get_global(CUdeviceptr* address, size_t* bytes, CUmodule module, const char* name) {
  FakeModule* fake = known_module(module, "cuModuleGetGlobal in an unknown module");
  for (auto& [known, contents] : fake->variables) {
    if (known == name) {
      *address = reinterpret_cast<CUdeviceptr>(contents.data());
      *bytes = contents.size();
      return CUDA_SUCCESS;
    }
  }
  return CUDA_ERROR_NOT_FOUND;
}

// Copies to a variable of a live module; anything else is a write to memory nobody owns.
CUresult memcpy_htod(CUdeviceptr destination, const void* source, size_t size) {
  if (injected_failure()) return CUDA_ERROR_OUT_OF_MEMORY;
  for (const void* module : state().modules) {
    for (auto& [name, contents] : static_cast<const FakeModule*>(module)->variables) {
      const auto start = reinterpret_cast<CUdeviceptr>(contents.data());
      if (destination >= start && destination + size <= start + contents.size()) {
        const std::vector<uint8_t> bytes = read_host(source, size);
        std::copy(bytes.begin(), bytes.end(), const_cast<uint8_t*>(contents.data()) + (destination - start));
        return CUDA_SUCCESS;
      }
    }
  }
  misuse("cuMemcpyHtoD outside every module variable");
}

FakeFunction* known_function(CUfunction function, const char* call) {
  require(state().functions.count(function) != 0, call);
  return reinterpret_cast<FakeFunction*>(function);
}

CUresult func_get_attribute(int* value, CUfunction_attribute attribute, CUfunction function) {
  const FakeFunction* fake = known_function(function, "cuFuncGetAttribute of an unknown function");
  *value = 0;
  for (const auto& [known, set] : fake->attributes)
    if (known == attribute) *value = set;
  return CUDA_SUCCESS;
}

CUresult func_set_attribute(CUfunction function, CUfunction_attribute attribute, int value) {
  FakeFunction* fake = known_function(function, "cuFuncSetAttribute of an unknown function");
  if (injected_failure()) return CUDA_ERROR_OUT_OF_MEMORY;
  fake->attributes.emplace_back(attribute, value);
  return CUDA_SUCCESS;
}

// Entry points run one at a time, as if the driver held one lock (the native chunk runner calls
// them from several threads; the state above is not thread-safe).
std::recursive_mutex& fake_mutex() {
  static std::recursive_mutex m;
  return m;
}

template <class F, F f>
struct Serialized;
template <class R, class... A, R (*f)(A...)>
struct Serialized<R (*)(A...), f> {
  static R call(A... a) {
    std::lock_guard<std::recursive_mutex> lock(fake_mutex());
    return f(a...);
  }
};
#define SERIALIZED(fn) (&Serialized<decltype(&fn), &fn>::call)

// `mine` as a lookup result, once its type is proven that of cuda.h's declaration (decltype
// only: there is no libcuda to link against).
template <class Theirs, class Mine>
void* entry(Mine mine) {
  static_assert(std::is_same_v<Mine, Theirs>, "the stand-in's signature differs from cuda.h's");
  return reinterpret_cast<void*>(mine);
}

void* lookup(const std::string& name) {
  if (state().hidden.count(name) != 0) return nullptr;
  const std::pair<const char*, void*> table[] = {
      {"cuGetErrorName", entry<decltype(&::cuGetErrorName)>(SERIALIZED(get_error_name))},
      {"cuCtxSetCurrent", entry<decltype(&::cuCtxSetCurrent)>(SERIALIZED(ctx_set_current))},
      {"cuCtxSynchronize", entry<decltype(&::cuCtxSynchronize)>(SERIALIZED(ctx_synchronize))},
      {"cuGraphCreate", entry<decltype(&::cuGraphCreate)>(SERIALIZED(graph_create))},
      {"cuGraphDestroy", entry<decltype(&::cuGraphDestroy)>(SERIALIZED(graph_destroy))},
      {"cuGraphAddNode", entry<decltype(&::cuGraphAddNode)>(SERIALIZED(graph_add_node))},
      {"cuGraphKernelNodeSetAttribute",
       entry<decltype(&::cuGraphKernelNodeSetAttribute)>(SERIALIZED(kernel_node_set_attribute))},
      {"cuGraphInstantiateWithFlags",
       entry<decltype(&::cuGraphInstantiateWithFlags)>(SERIALIZED(graph_instantiate))},
      {"cuGraphUpload", entry<decltype(&::cuGraphUpload)>(SERIALIZED(graph_upload))},
      {"cuGraphExecDestroy", entry<decltype(&::cuGraphExecDestroy)>(SERIALIZED(graph_exec_destroy))},
      {"cuStreamCreate", entry<decltype(&::cuStreamCreate)>(SERIALIZED(stream_create))},
      {"cuStreamSynchronize", entry<decltype(&::cuStreamSynchronize)>(SERIALIZED(stream_synchronize))},
      {"cuStreamDestroy", entry<decltype(&::cuStreamDestroy)>(SERIALIZED(stream_destroy))},
      {"cuFuncGetParamInfo", entry<decltype(&::cuFuncGetParamInfo)>(SERIALIZED(func_get_param_info))},
      {"cuModuleLoadData", entry<decltype(&::cuModuleLoadData)>(SERIALIZED(module_load_data))},
      {"cuModuleUnload", entry<decltype(&::cuModuleUnload)>(SERIALIZED(module_unload))},
      {"cuModuleGetFunction", entry<decltype(&::cuModuleGetFunction)>(SERIALIZED(module_get_function))},
      {"cuModuleGetGlobal", entry<decltype(&::cuModuleGetGlobal)>(SERIALIZED(module_get_global))},
      {"cuMemcpyHtoD", entry<decltype(&::cuMemcpyHtoD)>(SERIALIZED(memcpy_htod))},
      {"cuFuncGetAttribute", entry<decltype(&::cuFuncGetAttribute)>(SERIALIZED(func_get_attribute))},
      {"cuFuncSetAttribute", entry<decltype(&::cuFuncSetAttribute)>(SERIALIZED(func_set_attribute))},
  };
  for (const auto& [known, function] : table)
    if (name == known) return function;
  return nullptr;
}

}  // namespace

// The driver's one exported lookup (cuda.h names it cuGetProcAddress).
FAKE_EXPORT CUresult cuGetProcAddress_v2(const char* symbol, void** function, int, cuuint64_t,
                                         CUdriverProcAddressQueryResult* status) {
  *function = lookup(symbol);
  if (status != nullptr)  // optional, as for the driver (cuda.bindings passes none)
    *status = *function != nullptr ? CU_GET_PROC_ADDRESS_SUCCESS
                                   : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  return *function != nullptr ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

// --- controls for the fuzz target and the tests ---

// A kernel whose parameters lie at `offsets` with `sizes`.
FAKE_EXPORT uint64_t fake_cuda_function(const uint64_t* offsets, const uint64_t* sizes,
                                        uint64_t count) {
  auto* function = new FakeFunction;
  for (uint64_t i = 0; i < count; ++i) function->params.emplace_back(offsets[i], sizes[i]);
  state().functions.insert(function);
  return reinterpret_cast<uint64_t>(function);
}

FAKE_EXPORT uint64_t fake_cuda_event() {
  auto* event = new int(0);
  state().events.insert(event);
  return reinterpret_cast<uint64_t>(event);
}

FAKE_EXPORT uint64_t fake_cuda_context() {
  auto* context = new int(0);
  state().contexts.insert(context);
  return reinterpret_cast<uint64_t>(context);
}

// An empty graph, e.g. to stand for a collective's.
FAKE_EXPORT uint64_t fake_cuda_graph() { return reinterpret_cast<uint64_t>(make_graph()); }

// Makes the n-th call from now that can fail (graph creation, node addition, node attribute,
// module load, function lookup, function attribute, copy) fail with CUDA_ERROR_OUT_OF_MEMORY;
// 0: none.
FAKE_EXPORT void fake_cuda_fail_call(uint64_t n) {
  state().calls = 0;
  state().fail_at = n;
}

// The calls that could fail, since the last fake_cuda_fail_call().
FAKE_EXPORT uint64_t fake_cuda_calls() { return state().calls; }

// Graphs created by cuGraphCreate and not destroyed, and every node alive (copies included).
FAKE_EXPORT uint64_t fake_cuda_live_graphs() { return state().graphs.size(); }
FAKE_EXPORT uint64_t fake_cuda_live_nodes() { return state().nodes.size(); }

// Nodes of a graph, those of its child graphs included.
FAKE_EXPORT uint64_t fake_cuda_graph_nodes(uint64_t graph) {
  const auto* fake = reinterpret_cast<const FakeGraph*>(graph);
  require(state().graphs.count(fake) != 0, "fake_cuda_graph_nodes of an unknown graph");
  return count_nodes(*fake);
}

// Makes cuGetProcAddress_v2 report `name` missing (an older driver), before the caller resolves.
FAKE_EXPORT void fake_cuda_hide(const char* name) { state().hidden.insert(name); }

// What each module loaded from now on holds: a kernel of parameters at `offsets` with `sizes`,
// and a variable of `size` bytes (0xEE each, until written).
FAKE_EXPORT void fake_cuda_define_kernel(const char* name, const uint64_t* offsets,
                                         const uint64_t* sizes, uint64_t count) {
  FakeFunction kernel;
  for (uint64_t i = 0; i < count; ++i) kernel.params.emplace_back(offsets[i], sizes[i]);
  state().kernels.emplace_back(name, kernel);
}

FAKE_EXPORT void fake_cuda_define_variable(const char* name, uint64_t size) {
  state().variable_sizes.emplace_back(name, size);
}

FAKE_EXPORT uint64_t fake_cuda_live_modules() { return state().modules.size(); }

// Copies a variable of a live module into `out` (`size` bytes at most); returns its size.
FAKE_EXPORT uint64_t fake_cuda_read_variable(uint64_t module, const char* name, uint8_t* out,
                                             uint64_t size) {
  const FakeModule* fake = known_module(reinterpret_cast<CUmodule>(module), "an unknown module");
  for (const auto& [known, contents] : fake->variables) {
    if (known == name) {
      std::memcpy(out, contents.data(), std::min<uint64_t>(size, contents.size()));
      return contents.size();
    }
  }
  misuse("fake_cuda_read_variable of an unknown variable");
}

// The value of a function attribute as last set (0 where never set).
FAKE_EXPORT int fake_cuda_function_attribute(uint64_t function, int attribute) {
  int value = 0;
  func_get_attribute(&value, static_cast<CUfunction_attribute>(attribute),
                     reinterpret_cast<CUfunction>(function));
  return value;
}
