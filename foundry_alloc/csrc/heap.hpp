// Deterministic best-fit placement over one contiguous virtual range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <utility>

namespace foundry {

// Free ranges are kept maximal (neighbours merge at once), so the set of free ranges is a pure
// function of the set of live blocks, and best-fit with lowest-address tie-breaking makes every
// placement a pure function of (live blocks, request). Traffic that is freed again leaves no trace.
class Heap {
 public:
  struct Placement {
    uint64_t address;
    uint64_t streams;  // bit mask of the streams whose frees made the chosen range (see Space)
  };

  Heap(uint64_t begin, uint64_t end);

  // Takes `size` bytes from the smallest free range that fits (lowest address on ties).
  bool place(uint64_t size, Placement* out);
  // Returns [address, address + size) to the free set, merging with free neighbours.
  void release(uint64_t address, uint64_t size, uint64_t streams);
  // Takes exactly [address, address + size) if it lies inside one free range (restoring a
  // recorded layout); returns false and changes nothing otherwise.
  bool claim(uint64_t address, uint64_t size, uint64_t* streams);
  // True when [address, address + size) lies inside one free range.
  bool is_free(uint64_t address, uint64_t size) const;
  // Address above which nothing is live: the span the heap currently uses is top() - begin().
  uint64_t top() const;

  uint64_t begin() const { return begin_; }
  uint64_t end() const { return end_; }
  size_t free_range_count() const { return by_address_.size(); }

  struct FreeRange {
    uint64_t size;
    uint64_t streams;
  };
  const std::map<uint64_t, FreeRange>& free_ranges() const { return by_address_; }

 private:
  void insert(uint64_t address, FreeRange range);
  void erase(std::map<uint64_t, FreeRange>::iterator it);

  uint64_t begin_;
  uint64_t end_;
  std::set<std::pair<uint64_t, uint64_t>> by_size_;  // (size, address): best fit = lower_bound
  std::map<uint64_t, FreeRange> by_address_;         // address -> range: neighbour merging
};

}  // namespace foundry
