// The driver operations the allocator needs, behind an interface so that the same placement and
// mapping code runs against the real driver (backend_cuda.cpp) or a host simulation (backend_host.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "status.hpp"

namespace foundry {

using StreamHandle = void*;  // a CUstream / cudaStream_t; 0 is the legacy default stream

class Backend {
 public:
  virtual ~Backend() = default;

  // Prepares `device` for use and reports its mapping granularity.
  virtual Status init_device(int device, uint64_t* granularity, std::string* error) = 0;
  // Reserves exactly [base, base + size); anything else is a failure (kReservationFailed).
  virtual Status reserve(uint64_t base, uint64_t size, std::string* error) = 0;
  virtual void unreserve(uint64_t base, uint64_t size) = 0;
  // Backs [address, address + size) with new physical memory of `device`, readable and writable.
  virtual Status map(int device, uint64_t address, uint64_t size, uint64_t* handle,
                     std::string* error) = 0;
  virtual Status unmap(int device, uint64_t address, uint64_t size, uint64_t handle,
                       std::string* error) = 0;
  // Whether work enqueued on `stream` is being captured into a graph right now.
  virtual bool is_capturing(StreamHandle stream) = 0;
  // Makes later work on `waiter` wait for everything enqueued on `producer` so far.
  virtual Status order_after(int device, StreamHandle waiter, StreamHandle producer,
                             std::string* error) = 0;
  // Free and total physical memory of the device, for out-of-memory messages.
  virtual void memory_info(int device, uint64_t* free_bytes, uint64_t* total_bytes) = 0;
};

std::unique_ptr<Backend> make_cuda_backend();

// Host simulation: no device, addresses are plain numbers, `physical_limit` bytes can be mapped.
class HostBackend;
std::unique_ptr<HostBackend> make_host_backend(uint64_t granularity, uint64_t physical_limit);

}  // namespace foundry
