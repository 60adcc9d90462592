// NVTX ranges in the "foundry_alloc" domain, so reservation, mapping and trimming show in Nsight.
// NVTX v3 is header-only and costs a branch when no tool is attached.
#pragma once

#include <nvtx3/nvToolsExt.h>

namespace foundry {

inline nvtxDomainHandle_t nvtx_domain() {
  static nvtxDomainHandle_t domain = nvtxDomainCreateA("foundry_alloc");
  return domain;
}

class NvtxRange {
 public:
  explicit NvtxRange(const char* message) {
    nvtxEventAttributes_t attributes = {};
    attributes.version = NVTX_VERSION;
    attributes.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    attributes.messageType = NVTX_MESSAGE_TYPE_ASCII;
    attributes.message.ascii = message;
    nvtxDomainRangePushEx(nvtx_domain(), &attributes);
  }
  ~NvtxRange() { nvtxDomainRangePop(nvtx_domain()); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace foundry
