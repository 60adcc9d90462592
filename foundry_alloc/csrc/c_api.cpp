// The C ABI: the alloc/free pair that torch.cuda.memory.CUDAPluggableAllocator calls, and the
// control functions that foundry_alloc/_native.py calls through ctypes. Control functions never
// throw (ctypes cannot carry C++ exceptions): they return a Status and leave a message for
// fa_last_error(). Only foundry_malloc throws, into PyTorch, which turns it into a Python error.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "address_space.hpp"
#include "allocator.hpp"
#include "backend_host.hpp"
#include "torch_oom.hpp"

using foundry::Allocator;
using foundry::BlockRecord;
using foundry::HostBackend;
using foundry::SpaceStats;
using foundry::Status;

struct fa_instance {
  std::unique_ptr<Allocator> allocator;
  HostBackend* host = nullptr;  // set for host-simulation instances
};

struct fa_host_counters_t {
  uint64_t mapped_bytes;
  uint64_t map_calls;
  uint64_t reserved_ranges;
  uint64_t orderings;       // order_after calls so far
  uint64_t orderings_kept;  // of them, the most recent ones fa_host_orderings gives
};

namespace {

thread_local std::string t_last_error;
std::atomic<fa_instance*> g_installed{nullptr};

int fail(Status status, std::string message) {
  t_last_error = std::move(message);
  return status;
}

int report(Status status, std::string& message) {
  if (status != foundry::kOk) t_last_error = std::move(message);
  return status;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) fa_instance* fa_new_cuda(uint64_t base, uint64_t size) {
  auto* instance = new fa_instance;
  instance->allocator = std::make_unique<Allocator>(foundry::make_cuda_backend(), base, size);
  return instance;
}

__attribute__((visibility("default"))) fa_instance* fa_new_host(uint64_t base, uint64_t size,
                                                                uint64_t granularity,
                                                                uint64_t physical_limit) {
  auto* instance = new fa_instance;
  auto host = foundry::make_host_backend(granularity, physical_limit);
  instance->host = host.get();
  instance->allocator = std::make_unique<Allocator>(std::move(host), base, size);
  return instance;
}

// Unmaps and unreserves everything the instance holds. Never call it on the installed instance.
__attribute__((visibility("default"))) int fa_delete(fa_instance* instance) {
  if (instance == g_installed.load()) {
    return fail(foundry::kInvalidArgument, "the installed allocator cannot be deleted");
  }
  delete instance;
  return foundry::kOk;
}

__attribute__((visibility("default"))) int fa_allocate(fa_instance* instance, uint64_t size,
                                                       int device, void* stream, uint64_t* out) {
  std::string error;
  return report(instance->allocator->allocate(size, device, stream, out, &error), error);
}

__attribute__((visibility("default"))) int fa_claim(fa_instance* instance, int device,
                                                    uint64_t address, uint64_t size, int arena) {
  std::string error;
  return report(instance->allocator->claim(device, address, size, arena, &error), error);
}

__attribute__((visibility("default"))) int fa_release(fa_instance* instance, uint64_t address) {
  std::string error;
  return report(instance->allocator->release(address, &error), error);
}

__attribute__((visibility("default"))) int fa_reserve(fa_instance* instance, int device) {
  std::string error;
  return report(instance->allocator->reserve(device, &error), error);
}

__attribute__((visibility("default"))) int fa_trim(fa_instance* instance, int device,
                                                   uint32_t arena_mask, uint64_t* released) {
  std::string error;
  return report(instance->allocator->trim(device, arena_mask, released, &error), error);
}

// Copies up to `capacity` live blocks, sorted by address, and reports how many there are.
// kind 0: live blocks; kind 1: physical mappings.
__attribute__((visibility("default"))) int fa_layout(fa_instance* instance, int device, int kind,
                                                     BlockRecord* out, uint64_t capacity,
                                                     uint64_t* count) {
  std::vector<BlockRecord> records;
  std::string error;
  Status status = instance->allocator->layout(device, kind == 1, &records, &error);
  if (status != foundry::kOk) return fail(status, error);
  *count = records.size();
  for (uint64_t i = 0; i < records.size() && i < capacity; ++i) out[i] = records[i];
  return foundry::kOk;
}

__attribute__((visibility("default"))) int fa_stats(fa_instance* instance, int device,
                                                    SpaceStats* out) {
  std::string error;
  return report(instance->allocator->stats(device, out, &error), error);
}

__attribute__((visibility("default"))) int fa_reset_peaks(fa_instance* instance, int device) {
  std::string error;
  return report(instance->allocator->reset_peaks(device, &error), error);
}

__attribute__((visibility("default"))) const char* fa_last_error() { return t_last_error.c_str(); }

__attribute__((visibility("default"))) int fa_select_arena(int arena) {
  if (arena < 0 || arena >= foundry::kMaxArenas) {
    return fail(foundry::kInvalidArgument, "arena index out of range");
  }
  foundry::select_arena(arena);
  return foundry::kOk;
}

__attribute__((visibility("default"))) int fa_selected_arena() { return foundry::selected_arena(); }

__attribute__((visibility("default"))) void fa_set_arena_name(int arena, const char* name) {
  foundry::set_arena_name(arena, name);
}

__attribute__((visibility("default"))) uint64_t fa_suggest_base(uint64_t size) {
  return foundry::suggest_base(size);
}

__attribute__((visibility("default"))) uint64_t fa_sizeof_stats() { return sizeof(SpaceStats); }
__attribute__((visibility("default"))) uint64_t fa_sizeof_block() { return sizeof(BlockRecord); }

// Host-simulation controls, for the CPU test suite.
__attribute__((visibility("default"))) int fa_host_set_capturing(fa_instance* instance,
                                                                 void* stream, int capturing) {
  if (instance->host == nullptr) return fail(foundry::kInvalidArgument, "not a host instance");
  instance->host->set_capturing(stream, capturing != 0);
  return foundry::kOk;
}

__attribute__((visibility("default"))) int fa_host_occupy(fa_instance* instance, uint64_t base,
                                                          uint64_t size) {
  if (instance->host == nullptr) return fail(foundry::kInvalidArgument, "not a host instance");
  instance->host->occupy(base, size);
  return foundry::kOk;
}

__attribute__((visibility("default"))) int fa_host_counters(fa_instance* instance,
                                                            fa_host_counters_t* out) {
  if (instance->host == nullptr) return fail(foundry::kInvalidArgument, "not a host instance");
  *out = fa_host_counters_t{instance->host->mapped_bytes(), instance->host->map_calls(),
                          instance->host->reserved_ranges(), instance->host->ordering_count(),
                          instance->host->recent_orderings().size()};
  return foundry::kOk;
}

// Copies the (waiter, producer) stream pairs of the orderings the host backend keeps (the most
// recent ones), oldest first.
__attribute__((visibility("default"))) int fa_host_orderings(fa_instance* instance, void** out,
                                                             uint64_t capacity) {
  if (instance->host == nullptr) return fail(foundry::kInvalidArgument, "not a host instance");
  const auto pairs = instance->host->recent_orderings();
  for (uint64_t i = 0; i < pairs.size() && i < capacity; ++i) {
    out[2 * i] = pairs[i].first;
    out[2 * i + 1] = pairs[i].second;
  }
  return foundry::kOk;
}

// Whether an out-of-memory failure will reach Python as torch.OutOfMemoryError.
__attribute__((visibility("default"))) int fa_torch_oom_available() {
  return foundry::torch_out_of_memory_available() ? 1 : 0;
}

// The instance that PyTorch's calls below go to.
__attribute__((visibility("default"))) void fa_install(fa_instance* instance) {
  g_installed.store(instance);
}

// torch.cuda.memory.CUDAPluggableAllocator entry points.
__attribute__((visibility("default"))) void* foundry_malloc(size_t size, int device,
                                                            void* stream) {
  if (size == 0) return nullptr;
  fa_instance* instance = g_installed.load();
  if (instance == nullptr) {
    throw std::runtime_error(
        "foundry_alloc: PyTorch called the allocator before foundry_alloc.install() configured it");
  }
  uint64_t address = 0;
  std::string error;
  Status status = instance->allocator->allocate(size, device, stream, &address, &error);
  if (status == foundry::kOk) return reinterpret_cast<void*>(address);
  if (status == foundry::kOutOfMemory || status == foundry::kOutOfAddressSpace) {
    foundry::throw_out_of_memory(error);
  }
  throw std::runtime_error("foundry_alloc: " + error);
}

__attribute__((visibility("default"))) void foundry_free(void* pointer, size_t, int, void*) {
  fa_instance* instance = g_installed.load();
  if (instance == nullptr || pointer == nullptr) return;
  std::string error;
  // PyTorch frees from destructors, where an exception would terminate the process: report only.
  if (instance->allocator->release(reinterpret_cast<uint64_t>(pointer), &error) != foundry::kOk) {
    std::fprintf(stderr, "foundry_alloc: %s\n", error.c_str());
  }
}

}  // extern "C"
