// NVTX ranges, so reservation, mapping, trimming (domain "foundry_alloc") and graph restore
// (domain "foundry") show in Nsight. NVTX v3 is header-only and costs a branch when no tool is
// attached.
#pragma once

#include <nvtx3/nvToolsExt.h>

namespace foundry {

inline nvtxDomainHandle_t nvtx_domain() {
  static nvtxDomainHandle_t domain = nvtxDomainCreateA("foundry_alloc");
  return domain;
}

inline nvtxDomainHandle_t restore_nvtx_domain() {
  static nvtxDomainHandle_t domain = nvtxDomainCreateA("foundry");
  return domain;
}

class NvtxRange {
 public:
  explicit NvtxRange(const char* message, nvtxDomainHandle_t domain = nvtx_domain())
      : domain_(domain) {
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
