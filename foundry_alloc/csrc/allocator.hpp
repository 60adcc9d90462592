// The allocator: one Space per device, created on the device's first use, behind one lock.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.hpp"
#include "space.hpp"

namespace foundry {

constexpr int kMaxDevices = 64;

// The arena that the calling thread selected (foundry_alloc.arena(...)); engine by default.
int selected_arena();
void select_arena(int arena);

class Allocator {
 public:
  // Device spaces are laid out in first-use order: the first device used gets [base, base + size),
  // the second [base + size, base + 2 size), ... so a one-GPU-per-process deployment puts every
  // rank's memory at the same addresses whatever its device index.
  Allocator(std::unique_ptr<Backend> backend, uint64_t base, uint64_t size_per_device);

  Status allocate(uint64_t size, int device, StreamHandle stream, uint64_t* address,
                  std::string* error);
  Status release(uint64_t address, std::string* error);
  Status claim(int device, uint64_t address, uint64_t size, int arena, std::string* error);
  // Creates the device's space (reservation included) now rather than at its first allocation.
  Status reserve(int device, std::string* error);
  Status trim(int device, uint32_t arena_mask, uint64_t* released, std::string* error);
  // Live blocks, or (mapped = true) physical mappings, by address.
  Status layout(int device, bool mapped, std::vector<BlockRecord>* out, std::string* error);
  Status stats(int device, SpaceStats* out, std::string* error);
  Status reset_peaks(int device, std::string* error);
  Backend* backend() { return backend_.get(); }

 private:
  Space* space_for(int device, bool create, Status* status, std::string* error);

  std::mutex mutex_;
  std::unique_ptr<Backend> backend_;
  uint64_t base_;
  uint64_t size_;
  std::vector<std::unique_ptr<Space>> spaces_;  // in first-use order
  std::array<Space*, kMaxDevices> by_device_{};
};

}  // namespace foundry
