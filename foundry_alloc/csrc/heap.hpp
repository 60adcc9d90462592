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
  };

  Heap(uint64_t begin, uint64_t end);

  // Takes `size` bytes from the smallest free range that fits (lowest address on ties).
  bool place(uint64_t size, Placement* out);
  // Returns [address, address + size) to the free set, merging with free neighbours.
  void release(uint64_t address, uint64_t size);
  // Takes exactly [address, address + size) if it lies inside one free range (restoring a
  // recorded layout); returns false and changes nothing otherwise.
  bool claim(uint64_t address, uint64_t size);
  // True when [address, address + size) lies inside one free range.
  bool is_free(uint64_t address, uint64_t size) const;
  // Address above which nothing is live: the span the heap currently uses is top() - begin().
  uint64_t top() const;

  uint64_t begin() const { return begin_; }
  uint64_t end() const { return end_; }
  size_t free_range_count() const { return by_address_.size(); }

 private:
  void insert(uint64_t address, uint64_t size);
  void erase(std::map<uint64_t, uint64_t>::iterator it);

  uint64_t begin_;
  uint64_t end_;
  std::set<std::pair<uint64_t, uint64_t>> by_size_;  // (size, address): best fit = lower_bound
  std::map<uint64_t, uint64_t> by_address_;          // address -> size: neighbour merging
};

}  // namespace foundry
