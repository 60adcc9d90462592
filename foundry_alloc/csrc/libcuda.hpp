// libcuda, opened at run time with every entry point resolved through cuGetProcAddress: the
// allocator and the restore library share this, so neither has a link-time CUDA dependency and
// both load on machines without a driver (CI). Only cuda.h's types are used at build time.
#pragma once

#include <cuda.h>
#include <dlfcn.h>

#include <string>

namespace foundry {

class EntryPoints {
 public:
  // Opens libcuda; error() explains a failure.
  EntryPoints() {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      error_ = std::string("cannot load libcuda.so.1 (") + dlerror() + ")";
      return;
    }
    get_ = reinterpret_cast<GetProcAddress>(dlsym(lib, "cuGetProcAddress_v2"));
    if (get_ == nullptr) error_ = "libcuda.so.1 has no cuGetProcAddress_v2: the driver is older than CUDA 12";
  }

  // Resolves `name` in the form it had at driver ABI `version` (e.g. 12030 picks the
  // cuGraphAddNode that takes edge data); a miss is remembered for error().
  template <class Function>
  void resolve(const char* name, Function** slot, int version) {
    *slot = nullptr;
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (get_ == nullptr ||
        get_(name, reinterpret_cast<void**>(slot), version, CU_GET_PROC_ADDRESS_DEFAULT, &found) !=
            CUDA_SUCCESS ||
        found != CU_GET_PROC_ADDRESS_SUCCESS || *slot == nullptr) {
      *slot = nullptr;
      missing_ += missing_.empty() ? name : std::string(", ") + name;
    }
  }

  // Empty when libcuda was opened and every resolve() succeeded.
  std::string error() const {
    if (!error_.empty()) return error_;
    if (!missing_.empty()) return "the driver lacks " + missing_;
    return "";
  }

 private:
  using GetProcAddress = CUresult (*)(const char*, void**, int, cuuint64_t,
                                      CUdriverProcAddressQueryResult*);
  GetProcAddress get_ = nullptr;
  std::string error_;
  std::string missing_;
};

}  // namespace foundry
