// NVTX ranges, so reservation, mapping, trimming and graph restore show in Nsight, in Foundry's
// one domain "foundry" (foundry_alloc/profiling.py pushes the Python ranges there). NVTX v3 is
// header-only and costs a branch when no tool is attached.
#pragma once

#include <nvtx3/nvToolsExt.h>

namespace foundry {

inline nvtxDomainHandle_t nvtx_domain() {
  static nvtxDomainHandle_t domain = nvtxDomainCreateA("foundry");
  return domain;
}

class NvtxRange {
 public:
  explicit NvtxRange(const char* message) : domain_(nvtx_domain()) {
    nvtxEventAttributes_t attributes = {};
    attributes.version = NVTX_VERSION;
    attributes.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    attributes.messageType = NVTX_MESSAGE_TYPE_ASCII;
    attributes.message.ascii = message;
    nvtxDomainRangePushEx(domain_, &attributes);
  }
  ~NvtxRange() { nvtxDomainRangePop(domain_); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;

 private:
  nvtxDomainHandle_t domain_;
};

}  // namespace foundry
