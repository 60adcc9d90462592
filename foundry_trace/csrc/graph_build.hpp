// Rebuilding a graph from its node table through the driver, and instantiating it. Kernel
// arguments go back in one buffer (the `extra` launch form) exactly as SAVE read them, so no
// pointer inside them is touched: addresses are equal because the memory layout is.
#pragma once

#include <cuda.h>

#include <string>

#include "graph_table.hpp"

namespace foundry {

struct GraphDriver {
#define FOUNDRY_DRIVER_FN(name) decltype(&::name) name = nullptr;
  FOUNDRY_DRIVER_FN(cuGetErrorName)
  FOUNDRY_DRIVER_FN(cuCtxSetCurrent)
  FOUNDRY_DRIVER_FN(cuGraphCreate)
  FOUNDRY_DRIVER_FN(cuGraphDestroy)
  FOUNDRY_DRIVER_FN(cuGraphAddNode)
  FOUNDRY_DRIVER_FN(cuGraphKernelNodeSetAttribute)
  FOUNDRY_DRIVER_FN(cuGraphInstantiate)
  FOUNDRY_DRIVER_FN(cuGraphUpload)
  FOUNDRY_DRIVER_FN(cuGraphExecDestroy)
  FOUNDRY_DRIVER_FN(cuStreamCreate)
  FOUNDRY_DRIVER_FN(cuStreamSynchronize)
  FOUNDRY_DRIVER_FN(cuStreamDestroy)
  FOUNDRY_DRIVER_FN(cuModuleLoadData)
  FOUNDRY_DRIVER_FN(cuModuleUnload)
  FOUNDRY_DRIVER_FN(cuModuleGetGlobal)
  FOUNDRY_DRIVER_FN(cuModuleGetFunction)
  FOUNDRY_DRIVER_FN(cuMemcpyHtoD)
  FOUNDRY_DRIVER_FN(cuFuncGetAttribute)
  FOUNDRY_DRIVER_FN(cuFuncSetAttribute)
  FOUNDRY_DRIVER_FN(cuFuncGetParamInfo)  // CUDA 12.4 on; null where the driver is older
#undef FOUNDRY_DRIVER_FN
};

// The driver's graph and module entry points, resolved once; on failure *error says why.
const GraphDriver* graph_driver(std::string* error);

// Seconds of CLOCK_MONOTONIC (Python's time.perf_counter), for the spans of LOAD's timeline.
double now();

// "cuX failed with CUDA_ERROR_Y (n)", for the messages LOAD raises.
std::string describe_failure(const GraphDriver& d, const char* call, CUresult result);

struct BuildInputs {
  TableView table;
  uint64_t payload_size;
  const uint64_t* functions;  // CUfunction by the table's function index
  const uint64_t* param_bytes;  // each function's parameter buffer size; 0 where unknown
  const uint64_t* events;     // CUevent by the table's event index
  const uint64_t* collectives;  // CUgraph of each collective, captured on the live communicator
  CUcontext context;
};

// The size of a kernel's parameter buffer: the end of its last parameter, by cuFuncGetParamInfo;
// 0 (unknown) where the driver lacks it.
CUresult function_param_bytes(const GraphDriver& d, CUfunction function, uint64_t* bytes,
                              std::string* error);

// Builds body 0 of a table check_table() accepted; on failure nothing is left behind.
CUresult build_graph(const GraphDriver& d, const BuildInputs& in, CUgraph* graph,
                     std::string* error);

// Instantiates `graph` (with `context` current in the calling thread).
CUresult instantiate_graph(const GraphDriver& d, CUgraph graph, CUcontext context,
                           CUgraphExec* executable, std::string* error);

// Uploads an executable to the device and waits for it, so that its first launch costs no more
// than any other. A stream of its own keeps concurrent uploads from waiting on each other.
CUresult upload_graph(const GraphDriver& d, CUgraphExec executable, CUcontext context,
                      std::string* error);

}  // namespace foundry
