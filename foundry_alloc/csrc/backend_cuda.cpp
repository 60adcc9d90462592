// The driver backend: every driver call goes through entry points resolved at run time
// (libcuda.hpp), so the library has no link-time CUDA dependency.

#include <cstdio>
#include <mutex>
#include <vector>

#include "backend.hpp"
#include "libcuda.hpp"

namespace foundry {
namespace {

// The driver ABI version we ask for: every entry point used here is unchanged since CUDA 12.0.
constexpr int kDriverAbiVersion = 12000;
constexpr int kMaxDevices = 64;

struct Driver {
#define FOUNDRY_DRIVER_FN(name) decltype(&::name) name = nullptr;
  FOUNDRY_DRIVER_FN(cuInit)
  FOUNDRY_DRIVER_FN(cuGetErrorName)
  FOUNDRY_DRIVER_FN(cuDeviceGet)
  FOUNDRY_DRIVER_FN(cuDevicePrimaryCtxRetain)
  FOUNDRY_DRIVER_FN(cuCtxGetCurrent)
  FOUNDRY_DRIVER_FN(cuCtxPushCurrent)
  FOUNDRY_DRIVER_FN(cuCtxPopCurrent)
  FOUNDRY_DRIVER_FN(cuCtxSynchronize)
  FOUNDRY_DRIVER_FN(cuMemGetAllocationGranularity)
  FOUNDRY_DRIVER_FN(cuMemAddressReserve)
  FOUNDRY_DRIVER_FN(cuMemAddressFree)
  FOUNDRY_DRIVER_FN(cuMemCreate)
  FOUNDRY_DRIVER_FN(cuMemRelease)
  FOUNDRY_DRIVER_FN(cuMemMap)
  FOUNDRY_DRIVER_FN(cuMemUnmap)
  FOUNDRY_DRIVER_FN(cuMemSetAccess)
  FOUNDRY_DRIVER_FN(cuMemGetInfo)
  FOUNDRY_DRIVER_FN(cuStreamIsCapturing)
  FOUNDRY_DRIVER_FN(cuEventCreate)
  FOUNDRY_DRIVER_FN(cuEventRecord)
  FOUNDRY_DRIVER_FN(cuStreamWaitEvent)
#undef FOUNDRY_DRIVER_FN
};

// Resolves every entry point; returns an explanation on failure.
std::string load_driver(Driver* d) {
  EntryPoints entry_points;
#define FOUNDRY_RESOLVE(name) entry_points.resolve(#name, &d->name, kDriverAbiVersion);
  FOUNDRY_RESOLVE(cuInit)
  FOUNDRY_RESOLVE(cuGetErrorName)
  FOUNDRY_RESOLVE(cuDeviceGet)
  FOUNDRY_RESOLVE(cuDevicePrimaryCtxRetain)
  FOUNDRY_RESOLVE(cuCtxGetCurrent)
  FOUNDRY_RESOLVE(cuCtxPushCurrent)
  FOUNDRY_RESOLVE(cuCtxPopCurrent)
  FOUNDRY_RESOLVE(cuCtxSynchronize)
  FOUNDRY_RESOLVE(cuMemGetAllocationGranularity)
  FOUNDRY_RESOLVE(cuMemAddressReserve)
  FOUNDRY_RESOLVE(cuMemAddressFree)
  FOUNDRY_RESOLVE(cuMemCreate)
  FOUNDRY_RESOLVE(cuMemRelease)
  FOUNDRY_RESOLVE(cuMemMap)
  FOUNDRY_RESOLVE(cuMemUnmap)
  FOUNDRY_RESOLVE(cuMemSetAccess)
  FOUNDRY_RESOLVE(cuMemGetInfo)
  FOUNDRY_RESOLVE(cuStreamIsCapturing)
  FOUNDRY_RESOLVE(cuEventCreate)
  FOUNDRY_RESOLVE(cuEventRecord)
  FOUNDRY_RESOLVE(cuStreamWaitEvent)
#undef FOUNDRY_RESOLVE
  return entry_points.error();
}

class CudaBackend : public Backend {
 public:
  Status init_device(int device, uint64_t* granularity, std::string* error) override;
  Status reserve(uint64_t base, uint64_t size, std::string* error) override;
  void unreserve(uint64_t base, uint64_t size) override;
  Status map(int device, uint64_t address, uint64_t size, uint64_t* handle,
             std::string* error) override;
  Status unmap(int device, uint64_t address, uint64_t size, uint64_t handle,
               std::string* error) override;
  bool is_capturing(StreamHandle stream) override;
  Status order_after(int device, StreamHandle waiter, StreamHandle producer,
                     std::string* error) override;
  void memory_info(int device, uint64_t* free_bytes, uint64_t* total_bytes) override;

 private:
  Status ensure_driver(std::string* error);
  std::string describe(const char* call, CUresult result) const;
  // Makes the device's primary context current for the duration of a driver call sequence.
  class ContextScope;

  std::once_flag driver_once_;
  std::string driver_error_;
  Driver d_;
  struct DeviceHandles {
    CUdevice device = 0;
    CUcontext context = nullptr;
    CUevent ordering_event = nullptr;
    bool ready = false;
  };
  DeviceHandles devices_[kMaxDevices];
};

class CudaBackend::ContextScope {
 public:
  ContextScope(const Driver& d, CUcontext wanted) : d_(d) {
    CUcontext current = nullptr;
    d_.cuCtxGetCurrent(&current);
    if (current != wanted && d_.cuCtxPushCurrent(wanted) == CUDA_SUCCESS) pushed_ = true;
  }
  ~ContextScope() {
    CUcontext popped;
    if (pushed_) d_.cuCtxPopCurrent(&popped);
  }

 private:
  const Driver& d_;
  bool pushed_ = false;
};

std::string CudaBackend::describe(const char* call, CUresult result) const {
  const char* name = nullptr;
  if (d_.cuGetErrorName == nullptr || d_.cuGetErrorName(result, &name) != CUDA_SUCCESS) name = "?";
  char buffer[160];
  std::snprintf(buffer, sizeof buffer, "%s failed with %s (%d)", call, name, static_cast<int>(result));
  return buffer;
}

Status CudaBackend::ensure_driver(std::string* error) {
  std::call_once(driver_once_, [this] {
    driver_error_ = load_driver(&d_);
    if (driver_error_.empty()) {
      CUresult r = d_.cuInit(0);
      if (r != CUDA_SUCCESS) driver_error_ = describe("cuInit", r);
    }
  });
  if (driver_error_.empty()) return kOk;
  *error = driver_error_;
  return kDriverError;
}

Status CudaBackend::init_device(int device, uint64_t* granularity, std::string* error) {
  if (ensure_driver(error) != kOk) return kDriverError;
  if (device < 0 || device >= kMaxDevices) {
    *error = "device index out of range";
    return kInvalidArgument;
  }
  DeviceHandles& h = devices_[device];
  CUresult r = d_.cuDeviceGet(&h.device, device);
  if (r != CUDA_SUCCESS) return *error = describe("cuDeviceGet", r), kDriverError;
  r = d_.cuDevicePrimaryCtxRetain(&h.context, h.device);
  if (r != CUDA_SUCCESS) return *error = describe("cuDevicePrimaryCtxRetain", r), kDriverError;
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = h.device;
  size_t g = 0;
  r = d_.cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  if (r != CUDA_SUCCESS) return *error = describe("cuMemGetAllocationGranularity", r), kDriverError;
  *granularity = g;
  h.ready = true;
  return kOk;
}

Status CudaBackend::reserve(uint64_t base, uint64_t size, std::string* error) {
  if (ensure_driver(error) != kOk) return kDriverError;
  CUdeviceptr got = 0;
  CUresult r = d_.cuMemAddressReserve(&got, size, 0, static_cast<CUdeviceptr>(base), 0);
  if (r != CUDA_SUCCESS) {
    *error = describe("cuMemAddressReserve", r);
    return kReservationFailed;
  }
  if (got != base) {
    d_.cuMemAddressFree(got, size);
    char buffer[200];
    std::snprintf(buffer, sizeof buffer,
                  "the driver placed the reservation at 0x%llx instead: the requested range is "
                  "already in use in this process",
                  static_cast<unsigned long long>(got));
    *error = buffer;
    return kReservationFailed;
  }
  return kOk;
}

void CudaBackend::unreserve(uint64_t base, uint64_t size) {
  d_.cuMemAddressFree(static_cast<CUdeviceptr>(base), size);
}

Status CudaBackend::map(int device, uint64_t address, uint64_t size, uint64_t* handle,
                        std::string* error) {
  const DeviceHandles& h = devices_[device];
  ContextScope scope(d_, h.context);
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = h.device;
  CUmemGenericAllocationHandle physical = 0;
  CUresult r = d_.cuMemCreate(&physical, size, &prop, 0);
  if (r == CUDA_ERROR_OUT_OF_MEMORY) return *error = describe("cuMemCreate", r), kOutOfMemory;
  if (r != CUDA_SUCCESS) return *error = describe("cuMemCreate", r), kDriverError;
  const CUdeviceptr va = static_cast<CUdeviceptr>(address);
  r = d_.cuMemMap(va, size, 0, physical, 0);
  if (r != CUDA_SUCCESS) {
    d_.cuMemRelease(physical);
    *error = describe("cuMemMap", r);
    return r == CUDA_ERROR_OUT_OF_MEMORY ? kOutOfMemory : kDriverError;
  }
  CUmemAccessDesc access = {};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  r = d_.cuMemSetAccess(va, size, &access, 1);
  if (r != CUDA_SUCCESS) {
    d_.cuMemUnmap(va, size);
    d_.cuMemRelease(physical);
    *error = describe("cuMemSetAccess", r);
    return r == CUDA_ERROR_OUT_OF_MEMORY ? kOutOfMemory : kDriverError;
  }
  *handle = physical;
  return kOk;
}

Status CudaBackend::unmap(int device, uint64_t address, uint64_t size, uint64_t handle,
                          std::string* error) {
  ContextScope scope(d_, devices_[device].context);
  CUresult r = d_.cuMemUnmap(static_cast<CUdeviceptr>(address), size);
  if (r != CUDA_SUCCESS) return *error = describe("cuMemUnmap", r), kDriverError;
  r = d_.cuMemRelease(static_cast<CUmemGenericAllocationHandle>(handle));
  if (r != CUDA_SUCCESS) return *error = describe("cuMemRelease", r), kDriverError;
  return kOk;
}

bool CudaBackend::is_capturing(StreamHandle stream) {
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  // An error (e.g. the legacy stream queried during another stream's global capture) means this
  // stream itself is not capturing.
  if (d_.cuStreamIsCapturing(static_cast<CUstream>(stream), &status) != CUDA_SUCCESS) return false;
  return status != CU_STREAM_CAPTURE_STATUS_NONE;
}

Status CudaBackend::order_after(int device, StreamHandle waiter, StreamHandle producer,
                                std::string* error) {
  DeviceHandles& h = devices_[device];
  ContextScope scope(d_, h.context);
  CUresult r = CUDA_SUCCESS;
  if (h.ordering_event == nullptr) {
    r = d_.cuEventCreate(&h.ordering_event, CU_EVENT_DISABLE_TIMING);
    if (r != CUDA_SUCCESS) return *error = describe("cuEventCreate", r), kDriverError;
  }
  // One event serves every ordering: the wait captures the event's state when it is enqueued.
  r = d_.cuEventRecord(h.ordering_event, static_cast<CUstream>(producer));
  if (r != CUDA_SUCCESS) return *error = describe("cuEventRecord", r), kDriverError;
  r = d_.cuStreamWaitEvent(static_cast<CUstream>(waiter), h.ordering_event, 0);
  if (r != CUDA_SUCCESS) return *error = describe("cuStreamWaitEvent", r), kDriverError;
  return kOk;
}

void CudaBackend::memory_info(int device, uint64_t* free_bytes, uint64_t* total_bytes) {
  *free_bytes = *total_bytes = 0;
  if (!devices_[device].ready) return;
  ContextScope scope(d_, devices_[device].context);
  size_t f = 0, t = 0;
  if (d_.cuMemGetInfo(&f, &t) == CUDA_SUCCESS) *free_bytes = f, *total_bytes = t;
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend() { return std::make_unique<CudaBackend>(); }

}  // namespace foundry
