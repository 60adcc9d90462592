// Loading recorded modules: each one's binary, its stored variables (written around the words
// the load itself fills in), and the functions the graphs launch from it, with the attributes
// SAVE recorded and their parameter sizes. A batch of modules in one call rather than a call per
// module or per driver step (about ten a function): from Python, each call hands the GIL over
// and waits up to the 5 ms switch interval to get it back while another thread runs Python (on
// the CPU, a stand-in module thread of 40 calls took 31 ms beside LOAD's queuing of 2,211
// graphs, 11 ms without it).
#pragma once

#include <cuda.h>

#include <cstdint>
#include <string>

#include "blob_read.hpp"
#include "graph_build.hpp"

namespace foundry {

// A stored variable: its contents, which must be the variable's size in the loaded module, of
// which the (start, end) byte ranges in `ranges` are written (the rest are words the load
// filled in with addresses in the module).
struct ModuleVariable {
  const char* name;  // NUL-terminated
  BlobSource contents;
  const uint64_t* ranges;  // range_count (start, end) pairs
  uint32_t range_count;
  uint32_t reserved;
};

// A function the graphs launch: its entry name and the attributes to set on it.
struct ModuleFunction {
  const char* name;  // NUL-terminated
  const int32_t* attributes;  // CUfunction_attribute values
  const int32_t* values;
  uint32_t attribute_count;
  uint32_t reserved;
};

// One module of a batch (fr_modules_load): what load_module takes, and what it gives back.
struct ModuleRequest {
  BlobSource image;
  const ModuleVariable* variables;
  const ModuleFunction* functions;
  uint64_t* function_handles;  // function_count of each, filled in
  uint64_t* param_bytes;
  uint32_t variable_count;
  uint32_t function_count;
  uint64_t module;  // the CUmodule, once loaded
  double times[2];  // the start and end of its work
};

enum class ModuleLoadFailure { kNone, kArchiveMismatch, kDriver };

// Loads `image` in `context`, writes `variables`, and resolves `functions` into
// function_handles[i] (CUfunction) and param_bytes[i] (function_param_bytes); blobs not in
// memory are read from `archive` (a file descriptor). On failure the module is unloaded again,
// so nothing is left behind, and *error says what failed and where: kArchiveMismatch where the
// archive is unreadable or disagrees with the module (a variable's size), kDriver where the
// driver refused a step. times[] receives the start and end of the work (now(), for LOAD's
// timeline).
ModuleLoadFailure load_module(const GraphDriver& d, int archive, const BlobSource& image,
                              CUcontext context, const ModuleVariable* variables,
                              uint32_t variable_count, const ModuleFunction* functions,
                              uint32_t function_count, CUmodule* module, uint64_t* function_handles,
                              uint64_t* param_bytes, double times[2], std::string* error);

}  // namespace foundry
