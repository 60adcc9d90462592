// Host simulation of the driver: lets the placement, arena, mapping and stream-ordering logic be
// property-tested on machines without a GPU, through exactly the code the CUDA backend uses.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "backend.hpp"

namespace foundry {

class HostBackend : public Backend {
 public:
  static constexpr uint64_t kOrderingLog = 4096;

  HostBackend(uint64_t granularity, uint64_t physical_limit);

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

  // Test controls.
  void set_capturing(StreamHandle stream, bool capturing);
  // Marks [base, base + size) as taken by someone else, so that reserve() over it fails.
  void occupy(uint64_t base, uint64_t size);
  uint64_t mapped_bytes() const { return mapped_bytes_; }
  uint64_t map_calls() const { return map_calls_; }
  uint64_t reserved_ranges() const { return reservations_.size(); }
  // order_after(waiter, producer) calls: how many so far, and the last kOrderingLog of them,
  // oldest first (a simulation that runs for hours keeps a bounded log).
  uint64_t ordering_count() const { return ordering_count_; }
  std::vector<std::pair<StreamHandle, StreamHandle>> recent_orderings() const;

 private:
  uint64_t granularity_;
  uint64_t physical_limit_;
  uint64_t mapped_bytes_ = 0;
  uint64_t map_calls_ = 0;
  uint64_t next_handle_ = 1;
  uint64_t ordering_count_ = 0;
  std::map<uint64_t, uint64_t> reservations_;  // base -> size, ours
  std::map<uint64_t, uint64_t> occupied_;      // base -> size, someone else's
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> mappings_;  // address -> (size, handle)
  std::set<StreamHandle> capturing_;
  std::vector<std::pair<StreamHandle, StreamHandle>> orderings_;  // a ring of kOrderingLog
};

}  // namespace foundry
