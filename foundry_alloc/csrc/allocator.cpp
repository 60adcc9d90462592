#include "allocator.hpp"

namespace foundry {
namespace {
thread_local int t_selected_arena = kArenaEngine;
}

int selected_arena() { return t_selected_arena; }
void select_arena(int arena) { t_selected_arena = arena; }

Allocator::Allocator(std::unique_ptr<Backend> backend, uint64_t base, uint64_t size_per_device)
    : backend_(std::move(backend)), base_(base), size_(size_per_device) {}

Space* Allocator::space_for(int device, bool create, Status* status, std::string* error) {
  if (device < 0 || device >= kMaxDevices) {
    *error = "device index " + std::to_string(device) + " is out of range";
    *status = kInvalidArgument;
    return nullptr;
  }
  if (by_device_[device] != nullptr) return by_device_[device];
  if (!create) {
    *error = "device " + std::to_string(device) + " has not allocated through Foundry yet";
    *status = kInvalidArgument;
    return nullptr;
  }
  const uint64_t slot = spaces_.size();
  uint64_t offset = 0, base = 0;
  if (__builtin_mul_overflow(slot, size_, &offset) ||
      __builtin_add_overflow(base_, offset, &base)) {
    *error = "device " + std::to_string(device) + "'s space would start past the end of the " +
             "64-bit address space: choose a lower base or a smaller size";
    *status = kInvalidArgument;
    return nullptr;
  }
  auto space = std::make_unique<Space>(backend_.get(), device, base, size_);
  *status = space->init(error);
  if (*status != kOk) return nullptr;  // nothing stays reserved: the space is destroyed here
  by_device_[device] = space.get();
  spaces_.push_back(std::move(space));
  return spaces_.back().get();
}

Status Allocator::allocate(uint64_t size, int device, StreamHandle stream, uint64_t* address,
                           std::string* error) {
  std::lock_guard<std::mutex> lock(mutex_);
  Status status = kOk;
  Space* space = space_for(device, true, &status, error);
  if (space == nullptr) return status;
  return space->allocate(size, space->route(selected_arena(), stream), stream, address, error);
}

Status Allocator::release(uint64_t address, std::string* error) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& space : spaces_) {
    if (space->owns(address)) return space->release(address, error);
  }
  *error = "free of " + std::to_string(address) + ", which lies outside every Foundry range";
  return kUnknownPointer;
}

Status Allocator::reserve(int device, std::string* error) {
  std::lock_guard<std::mutex> lock(mutex_);
  Status status = kOk;
  space_for(device, true, &status, error);
  return status;
}

Status Allocator::trim(int device, uint32_t arena_mask, uint64_t* released, std::string* error) {
  std::lock_guard<std::mutex> lock(mutex_);
  Status status = kOk;
  Space* space = space_for(device, false, &status, error);
  return space == nullptr ? status : space->trim(arena_mask, released, error);
}

Status Allocator::claim(int device, uint64_t address, uint64_t size, int arena,
                        std::string* error) {
  std::lock_guard<std::mutex> lock(mutex_);
  Status status = kOk;
  Space* space = space_for(device, true, &status, error);
  if (space == nullptr) return status;
  return space->claim(address, size, arena, error);
}

Status Allocator::layout(int device, bool mapped, std::vector<BlockRecord>* out,
                         std::string* error) {
  std::lock_guard<std::mutex> lock(mutex_);
  Status status = kOk;
  Space* space = space_for(device, false, &status, error);
  if (space == nullptr) return status;
  *out = mapped ? space->mappings() : space->layout();
  return kOk;
}

Status Allocator::stats(int device, SpaceStats* out, std::string* error) {
  std::lock_guard<std::mutex> lock(mutex_);
  Status status = kOk;
  Space* space = space_for(device, false, &status, error);
  if (space == nullptr) return status;
  *out = space->stats();
  return kOk;
}

Status Allocator::reset_peaks(int device, std::string* error) {
  std::lock_guard<std::mutex> lock(mutex_);
  Status status = kOk;
  Space* space = space_for(device, false, &status, error);
  if (space == nullptr) return status;
  space->reset_peaks();
  return kOk;
}

}  // namespace foundry
