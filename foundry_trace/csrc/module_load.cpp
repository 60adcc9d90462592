#include "module_load.hpp"

#include "nvtx_range.hpp"

namespace foundry {
namespace {

class ModuleLoader {
 public:
  ModuleLoader(const GraphDriver& d, int archive, CUmodule module, std::string* error)
      : d_(d), archive_(archive), module_(module), error_(error) {}

  ModuleLoadFailure write(const ModuleVariable& v) {
    Blob contents;
    if (!read_blob(archive_, v.contents, &contents, error_)) {
      *error_ = "module variable " + std::string(v.name) + ": " + *error_;
      return ModuleLoadFailure::kArchiveMismatch;
    }
    CUdeviceptr address = 0;
    size_t size = 0;
    CUresult r = d_.cuModuleGetGlobal(&address, &size, module_, v.name);
    if (r != CUDA_SUCCESS) return driver(r, "cuModuleGetGlobal", "module variable ", v.name);
    if (size != contents.size()) {
      *error_ = "module variable " + std::string(v.name) + " is " + std::to_string(size) +
                " bytes, but the archive stores " + std::to_string(contents.size()) +
                " bytes for it (the archive is from another build of the module)";
      return ModuleLoadFailure::kArchiveMismatch;
    }
    for (uint32_t i = 0; i < v.range_count; ++i) {
      const uint64_t start = v.ranges[2 * i], end = v.ranges[2 * i + 1];
      if (start >= end || end > contents.size()) {
        *error_ = "module variable " + std::string(v.name) + ": the byte range " +
                  std::to_string(start) + "-" + std::to_string(end) + " to write lies outside its " +
                  std::to_string(contents.size()) + " bytes";
        return ModuleLoadFailure::kArchiveMismatch;
      }
      r = d_.cuMemcpyHtoD(address + start, contents.data() + start, end - start);
      if (r != CUDA_SUCCESS) return driver(r, "cuMemcpyHtoD", "module variable ", v.name);
    }
    return ModuleLoadFailure::kNone;
  }

  // SAVE records every settable attribute, most at the value a fresh load has: only those that
  // differ are set.
  ModuleLoadFailure resolve(const ModuleFunction& f, uint64_t* handle, uint64_t* param_bytes) {
    CUfunction function = nullptr;
    CUresult r = d_.cuModuleGetFunction(&function, module_, f.name);
    if (r != CUDA_SUCCESS) return driver(r, "cuModuleGetFunction", "kernel ", f.name);
    for (uint32_t a = 0; a < f.attribute_count; ++a) {
      const auto attribute = static_cast<CUfunction_attribute>(f.attributes[a]);
      int current = 0;
      r = d_.cuFuncGetAttribute(&current, attribute, function);
      if (r != CUDA_SUCCESS) return driver(r, "cuFuncGetAttribute", "kernel ", f.name);
      if (current == f.values[a]) continue;
      r = d_.cuFuncSetAttribute(function, attribute, f.values[a]);
      if (r != CUDA_SUCCESS) return driver(r, "cuFuncSetAttribute", "kernel ", f.name);
    }
    std::string message;
    r = function_param_bytes(d_, function, param_bytes, &message);
    if (r != CUDA_SUCCESS) {
      *error_ = message + " for kernel " + f.name;
      return ModuleLoadFailure::kDriver;
    }
    *handle = reinterpret_cast<uint64_t>(function);
    return ModuleLoadFailure::kNone;
  }

 private:
  ModuleLoadFailure driver(CUresult r, const char* call, const char* what, const char* name) {
    *error_ = describe_failure(d_, call, r) + " for " + what + name;
    return ModuleLoadFailure::kDriver;
  }

  const GraphDriver& d_;
  const int archive_;
  CUmodule module_;
  std::string* error_;
};

ModuleLoadFailure load_and_resolve(const GraphDriver& d, int archive, const BlobSource& image,
                                   CUcontext context, const ModuleVariable* variables,
                                   uint32_t variable_count, const ModuleFunction* functions,
                                   uint32_t function_count, CUmodule* module,
                                   uint64_t* function_handles, uint64_t* param_bytes,
                                   std::string* error) {
  CUmodule loaded = nullptr;
  {
    Blob binary;  // the driver keeps what it needs of it
    if (!read_blob(archive, image, &binary, error)) return ModuleLoadFailure::kArchiveMismatch;
    if (binary.size() == 0) {
      *error = "the module binary is empty";
      return ModuleLoadFailure::kArchiveMismatch;
    }
    CUresult r = d.cuCtxSetCurrent(context);
    if (r != CUDA_SUCCESS) {
      *error = describe_failure(d, "cuCtxSetCurrent", r);
      return ModuleLoadFailure::kDriver;
    }
    r = d.cuModuleLoadData(&loaded, binary.data());
    if (r != CUDA_SUCCESS) {
      *error = describe_failure(d, "cuModuleLoadData", r);
      return ModuleLoadFailure::kDriver;
    }
  }
  ModuleLoader loader(d, archive, loaded, error);
  ModuleLoadFailure failure = ModuleLoadFailure::kNone;
  for (uint32_t i = 0; i < variable_count && failure == ModuleLoadFailure::kNone; ++i)
    failure = loader.write(variables[i]);
  for (uint32_t i = 0; i < function_count && failure == ModuleLoadFailure::kNone; ++i)
    failure = loader.resolve(functions[i], &function_handles[i], &param_bytes[i]);
  if (failure != ModuleLoadFailure::kNone) {
    d.cuModuleUnload(loaded);
    return failure;
  }
  *module = loaded;
  return ModuleLoadFailure::kNone;
}

}  // namespace

ModuleLoadFailure load_module(const GraphDriver& d, int archive, const BlobSource& image,
                              CUcontext context, const ModuleVariable* variables,
                              uint32_t variable_count, const ModuleFunction* functions,
                              uint32_t function_count, CUmodule* module, uint64_t* function_handles,
                              uint64_t* param_bytes, double times[2], std::string* error) {
  NvtxRange range("load.module_load");
  times[0] = now();
  const ModuleLoadFailure failure =
      load_and_resolve(d, archive, image, context, variables, variable_count, functions,
                       function_count, module, function_handles, param_bytes, error);
  times[1] = now();
  return failure;
}

}  // namespace foundry
