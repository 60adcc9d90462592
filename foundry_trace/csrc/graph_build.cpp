#include "graph_build.hpp"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

#include "libcuda.hpp"
#include "nvtx_range.hpp"

namespace foundry {
namespace {

// cuGraphAddNode with edge data needs CUDA 12.3, cuFuncGetParamInfo 12.4; the others are older.
constexpr int kGraphNodeAbi = 12030;
constexpr int kParamInfoAbi = 12040;
constexpr int kBaseAbi = 12000;
// A kernel's parameters fill at most 32,764 bytes, each at least one: a driver that reports more
// parameters than this is not answering the question.
constexpr size_t kMaxParameters = 1 << 15;

class BodyBuilder {
 public:
  BodyBuilder(const GraphDriver& d, const BuildInputs& in, std::string* error)
      : d_(d), in_(in), error_(error) {}

  // Builds body `index` into a new graph; destroys it again on failure. A child graph node
  // builds its body by recursion, which check_table() bounds (kMaxGraphDepth levels): every
  // build is preceded by that check.
  CUresult build(uint64_t index, CUgraph* out) {
    CUgraph graph = nullptr;
    CUresult r = d_.cuGraphCreate(&graph, 0);
    if (r != CUDA_SUCCESS) return fail("cuGraphCreate", r);
    r = fill(graph, index);
    if (r != CUDA_SUCCESS) {
      d_.cuGraphDestroy(graph);
      return r;
    }
    *out = graph;
    return CUDA_SUCCESS;
  }

 private:
  CUresult fill(CUgraph graph, uint64_t index) {
    const BodyEntry body = in_.table.body(index);
    std::vector<CUgraphNode> nodes(body.node_count);
    std::vector<CUgraphNode> dependencies;
    std::vector<CUgraphEdgeData> edge_data;
    uint64_t edge = 0;
    for (uint32_t i = 0; i < body.node_count; ++i) {
      dependencies.clear();
      edge_data.clear();
      for (; edge < body.edge_count; ++edge) {
        const EdgeEntry e = in_.table.edge(body.first_edge + edge);
        if (e.destination != i) break;
        dependencies.push_back(nodes[e.source]);
        CUgraphEdgeData data = {};
        data.from_port = e.from_port;
        data.to_port = e.to_port;
        data.type = e.type;
        edge_data.push_back(data);
      }
      const NodeEntry n = in_.table.node(body.first_node + i);
      CUresult r = check_arguments(n, index, i);
      if (r == CUDA_SUCCESS) r = add(graph, n, dependencies, edge_data, &nodes[i]);
      if (r != CUDA_SUCCESS) return r;
    }
    return CUDA_SUCCESS;
  }

  // The driver reads a kernel's whole parameter buffer from the argument bytes: a shorter buffer
  // would be read past. A longer one is allowed: the `extra` launch form (cuBLAS) hands over a
  // whole struct, whose tail padding lies past the last parameter.
  CUresult check_arguments(const NodeEntry& n, uint64_t body, uint32_t node) {
    if (n.kind != kKernel) return CUDA_SUCCESS;
    const uint64_t expected = in_.param_bytes[n.index];
    if (expected == 0 || n.payload_size >= expected) return CUDA_SUCCESS;
    char buffer[320];
    std::snprintf(buffer, sizeof buffer,
                  "body %llu, node %u: kernel function %u takes %llu bytes of parameters, but the "
                  "archive holds only %u bytes of arguments for it: the archive is corrupted or was "
                  "saved with another build of the kernel; save it again",
                  static_cast<unsigned long long>(body), node, n.index,
                  static_cast<unsigned long long>(expected), n.payload_size);
    *error_ = buffer;
    return CUDA_ERROR_INVALID_VALUE;
  }

  CUresult add(CUgraph graph, const NodeEntry& n, const std::vector<CUgraphNode>& dependencies,
               std::vector<CUgraphEdgeData>& edge_data, CUgraphNode* created) {
    CUgraphNodeParams p;
    std::memset(&p, 0, sizeof p);
    void* extra[5] = {CU_LAUNCH_PARAM_BUFFER_POINTER, nullptr, CU_LAUNCH_PARAM_BUFFER_SIZE, nullptr,
                      CU_LAUNCH_PARAM_END};
    size_t argument_bytes = n.payload_size;
    CUgraph child = nullptr;
    switch (n.kind) {
      case kKernel:
        p.type = CU_GRAPH_NODE_TYPE_KERNEL;
        p.kernel.func = reinterpret_cast<CUfunction>(in_.functions[n.index]);
        p.kernel.gridDimX = n.grid[0], p.kernel.gridDimY = n.grid[1], p.kernel.gridDimZ = n.grid[2];
        p.kernel.blockDimX = n.block[0], p.kernel.blockDimY = n.block[1];
        p.kernel.blockDimZ = n.block[2];
        p.kernel.sharedMemBytes = n.shared_bytes;
        if (argument_bytes != 0) {
          extra[1] = const_cast<uint8_t*>(in_.table.payload(n.payload_offset));
          extra[3] = &argument_bytes;
          p.kernel.extra = extra;
        }
        break;
      case kMemset: {
        MemsetPayload m;
        std::memcpy(&m, in_.table.payload(n.payload_offset), sizeof m);
        p.type = CU_GRAPH_NODE_TYPE_MEMSET;
        p.memset.dst = m.destination, p.memset.pitch = m.pitch, p.memset.value = m.value;
        p.memset.elementSize = m.element_size, p.memset.width = m.width;
        p.memset.height = m.height, p.memset.ctx = in_.context;
        break;
      }
      case kMemcpy: {
        MemcpyPayload m;
        std::memcpy(&m, in_.table.payload(n.payload_offset), sizeof m);
        p.type = CU_GRAPH_NODE_TYPE_MEMCPY;
        p.memcpy.copyCtx = in_.context;
        CUDA_MEMCPY3D& c = p.memcpy.copyParams;
        c.srcMemoryType = c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
        c.srcDevice = m.source, c.srcPitch = m.source_pitch, c.srcHeight = m.source_height;
        c.srcXInBytes = m.source_x, c.srcY = m.source_y, c.srcZ = m.source_z;
        c.dstDevice = m.destination, c.dstPitch = m.destination_pitch;
        c.dstHeight = m.destination_height;
        c.dstXInBytes = m.destination_x, c.dstY = m.destination_y, c.dstZ = m.destination_z;
        c.WidthInBytes = m.width, c.Height = m.height, c.Depth = m.depth;
        break;
      }
      case kEventRecord:
        p.type = CU_GRAPH_NODE_TYPE_EVENT_RECORD;
        p.eventRecord.event = reinterpret_cast<CUevent>(in_.events[n.index]);
        break;
      case kEventWait:
        p.type = CU_GRAPH_NODE_TYPE_WAIT_EVENT;
        p.eventWait.event = reinterpret_cast<CUevent>(in_.events[n.index]);
        break;
      case kEmpty:
        p.type = CU_GRAPH_NODE_TYPE_EMPTY;
        break;
      case kChildGraph: {
        const CUresult r = build(n.index, &child);
        if (r != CUDA_SUCCESS) return r;
        p.type = CU_GRAPH_NODE_TYPE_GRAPH;
        p.graph.graph = child;  // cloned into the node
        break;
      }
      case kCollective:
        p.type = CU_GRAPH_NODE_TYPE_GRAPH;
        p.graph.graph = reinterpret_cast<CUgraph>(in_.collectives[n.index]);  // cloned; stays the caller's
        break;
      default:
        *error_ = "unknown node kind";
        return CUDA_ERROR_INVALID_VALUE;
    }
    CUresult r = d_.cuGraphAddNode(created, graph, dependencies.data(),
                                   edge_data.empty() ? nullptr : edge_data.data(),
                                   dependencies.size(), &p);
    if (child != nullptr) d_.cuGraphDestroy(child);
    if (r != CUDA_SUCCESS) return fail_at(n, "cuGraphAddNode", r);
    const uint64_t attributes = attributes_offset(n);
    for (uint16_t a = 0; a < n.attribute_count; ++a) {
      AttributeEntry entry;
      std::memcpy(&entry, in_.table.payload(attributes + a * sizeof entry), sizeof entry);
      CUkernelNodeAttrValue value;
      static_assert(sizeof value == sizeof entry.value, "CUlaunchAttributeValue is 64 bytes");
      std::memcpy(&value, entry.value, sizeof value);
      r = d_.cuGraphKernelNodeSetAttribute(*created, static_cast<CUkernelNodeAttrID>(entry.id),
                                           &value);
      if (r != CUDA_SUCCESS) return fail_at(n, "cuGraphKernelNodeSetAttribute", r);
    }
    return CUDA_SUCCESS;
  }

  CUresult fail(const char* call, CUresult r) {
    *error_ = describe_failure(d_, call, r);
    return r;
  }

  // Names the node, so that a refusal can be traced to a kernel (the caller maps the function
  // index to its name).
  CUresult fail_at(const NodeEntry& n, const char* call, CUresult r) {
    *error_ = describe_failure(d_, call, r);
    if (n.kind == kKernel) {
      char buffer[200];
      std::snprintf(buffer, sizeof buffer,
                    " for kernel function %u (grid %ux%ux%u, block %ux%ux%u, %u B shared, %u B of "
                    "arguments)",
                    n.index, n.grid[0], n.grid[1], n.grid[2], n.block[0], n.block[1], n.block[2],
                    n.shared_bytes, n.payload_size);
      *error_ += buffer;
    }
    return r;
  }

  const GraphDriver& d_;
  const BuildInputs& in_;
  std::string* error_;
};

}  // namespace

double now() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

std::string describe_failure(const GraphDriver& d, const char* call, CUresult result) {
  const char* name = nullptr;
  if (d.cuGetErrorName == nullptr || d.cuGetErrorName(result, &name) != CUDA_SUCCESS) name = "?";
  char buffer[160];
  std::snprintf(buffer, sizeof buffer, "%s failed with %s (%d)", call, name,
                static_cast<int>(result));
  return buffer;
}

const GraphDriver* graph_driver(std::string* error) {
  static GraphDriver driver;
  static std::string failure;
  static std::once_flag once;
  std::call_once(once, [] {
    EntryPoints entry_points;
    entry_points.resolve("cuGetErrorName", &driver.cuGetErrorName, kBaseAbi);
    entry_points.resolve("cuCtxSetCurrent", &driver.cuCtxSetCurrent, kBaseAbi);
    entry_points.resolve("cuGraphCreate", &driver.cuGraphCreate, kBaseAbi);
    entry_points.resolve("cuGraphDestroy", &driver.cuGraphDestroy, kBaseAbi);
    entry_points.resolve("cuGraphAddNode", &driver.cuGraphAddNode, kGraphNodeAbi);
    entry_points.resolve("cuGraphKernelNodeSetAttribute", &driver.cuGraphKernelNodeSetAttribute,
                         kBaseAbi);
    entry_points.resolve("cuGraphInstantiateWithFlags", &driver.cuGraphInstantiate, kBaseAbi);
    entry_points.resolve("cuGraphUpload", &driver.cuGraphUpload, kBaseAbi);
    entry_points.resolve("cuGraphExecDestroy", &driver.cuGraphExecDestroy, kBaseAbi);
    entry_points.resolve("cuStreamCreate", &driver.cuStreamCreate, kBaseAbi);
    entry_points.resolve("cuStreamSynchronize", &driver.cuStreamSynchronize, kBaseAbi);
    entry_points.resolve("cuStreamDestroy", &driver.cuStreamDestroy, kBaseAbi);
    entry_points.resolve("cuModuleLoadData", &driver.cuModuleLoadData, kBaseAbi);
    entry_points.resolve("cuModuleUnload", &driver.cuModuleUnload, kBaseAbi);
    entry_points.resolve("cuModuleGetGlobal", &driver.cuModuleGetGlobal, kBaseAbi);
    entry_points.resolve("cuModuleGetFunction", &driver.cuModuleGetFunction, kBaseAbi);
    entry_points.resolve("cuMemcpyHtoD", &driver.cuMemcpyHtoD, kBaseAbi);
    entry_points.resolve("cuFuncGetAttribute", &driver.cuFuncGetAttribute, kBaseAbi);
    entry_points.resolve("cuFuncSetAttribute", &driver.cuFuncSetAttribute, kBaseAbi);
    failure = entry_points.error();
    EntryPoints optional;  // a miss leaves the entry point null, which its caller handles
    optional.resolve("cuFuncGetParamInfo", &driver.cuFuncGetParamInfo, kParamInfoAbi);
  });
  if (!failure.empty()) {
    *error = failure + " (Foundry's LOAD needs a CUDA 12.3 or newer driver)";
    return nullptr;
  }
  return &driver;
}

CUresult function_param_bytes(const GraphDriver& d, CUfunction function, uint64_t* bytes,
                              std::string* error) {
  *bytes = 0;
  if (d.cuFuncGetParamInfo == nullptr) return CUDA_SUCCESS;
  for (size_t index = 0; index < kMaxParameters; ++index) {
    size_t offset = 0, size = 0;
    const CUresult r = d.cuFuncGetParamInfo(function, index, &offset, &size);
    if (r == CUDA_ERROR_INVALID_VALUE) return CUDA_SUCCESS;  // past the last parameter
    if (r != CUDA_SUCCESS) return *error = describe_failure(d, "cuFuncGetParamInfo", r), r;
    *bytes = std::max<uint64_t>(*bytes, uint64_t{offset} + size);
  }
  *error = "cuFuncGetParamInfo reports more than " + std::to_string(kMaxParameters) +
           " parameters for one kernel: the driver is not answering the question";
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult build_graph(const GraphDriver& d, const BuildInputs& in, CUgraph* graph,
                     std::string* error) {
  NvtxRange range("load.build_graph");
  CUresult r = d.cuCtxSetCurrent(in.context);  // worker threads start without one
  if (r != CUDA_SUCCESS) return *error = describe_failure(d, "cuCtxSetCurrent", r), r;
  return BodyBuilder(d, in, error).build(0, graph);
}

CUresult instantiate_graph(const GraphDriver& d, CUgraph graph, CUcontext context,
                           CUgraphExec* executable, std::string* error) {
  NvtxRange range("load.instantiate_graph");
  CUresult r = d.cuCtxSetCurrent(context);
  if (r != CUDA_SUCCESS) return *error = describe_failure(d, "cuCtxSetCurrent", r), r;
  r = d.cuGraphInstantiate(executable, graph, 0);
  if (r != CUDA_SUCCESS) return *error = describe_failure(d, "cuGraphInstantiate", r), r;
  return CUDA_SUCCESS;
}

CUresult upload_graph(const GraphDriver& d, CUgraphExec executable, CUcontext context,
                      std::string* error) {
  NvtxRange range("load.upload_graph");
  CUresult r = d.cuCtxSetCurrent(context);
  if (r != CUDA_SUCCESS) return *error = describe_failure(d, "cuCtxSetCurrent", r), r;
  CUstream stream = nullptr;
  r = d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING);
  if (r != CUDA_SUCCESS) return *error = describe_failure(d, "cuStreamCreate", r), r;
  r = d.cuGraphUpload(executable, stream);
  if (r != CUDA_SUCCESS) {
    *error = describe_failure(d, "cuGraphUpload", r);
  } else {
    r = d.cuStreamSynchronize(stream);
    if (r != CUDA_SUCCESS) *error = describe_failure(d, "cuStreamSynchronize", r);
  }
  d.cuStreamDestroy(stream);
  return r;
}

}  // namespace foundry
