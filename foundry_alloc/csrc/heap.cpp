#include "heap.hpp"

#include <iterator>

namespace foundry {
namespace {

// Whether [address, address + size) lies inside [start, start + length), by subtraction only, so
// that a size near 2^64 cannot wrap around a comparison.
bool contains(uint64_t start, uint64_t length, uint64_t address, uint64_t size) {
  return address >= start && address - start <= length && size <= length - (address - start);
}

}  // namespace

Heap::Heap(uint64_t begin, uint64_t end) : begin_(begin), end_(end) {
  if (end > begin) insert(begin, FreeRange{end - begin, 0});
}

void Heap::insert(uint64_t address, FreeRange range) {
  by_address_.emplace(address, range);
  by_size_.emplace(range.size, address);
}

void Heap::erase(std::map<uint64_t, FreeRange>::iterator it) {
  by_size_.erase({it->second.size, it->first});
  by_address_.erase(it);
}

bool Heap::place(uint64_t size, Placement* out) {
  auto fit = by_size_.lower_bound({size, 0});
  if (fit == by_size_.end()) return false;
  const uint64_t address = fit->second;
  auto it = by_address_.find(address);
  const FreeRange range = it->second;
  erase(it);
  if (range.size > size) insert(address + size, FreeRange{range.size - size, range.streams});
  *out = Placement{address, range.streams};
  return true;
}

void Heap::release(uint64_t address, uint64_t size, uint64_t streams) {
  FreeRange merged{size, streams};
  auto next = by_address_.lower_bound(address);
  if (next != by_address_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.size == address) {
      address = prev->first;
      merged.size += prev->second.size;
      merged.streams |= prev->second.streams;
      erase(prev);
    }
  }
  if (next != by_address_.end() && address + merged.size == next->first) {
    merged.size += next->second.size;
    merged.streams |= next->second.streams;
    erase(next);
  }
  insert(address, merged);
}

bool Heap::claim(uint64_t address, uint64_t size, uint64_t* streams) {
  auto it = by_address_.upper_bound(address);
  if (it == by_address_.begin()) return false;
  --it;
  const uint64_t start = it->first;
  const FreeRange range = it->second;
  if (!contains(start, range.size, address, size)) return false;
  erase(it);
  if (address > start) insert(start, FreeRange{address - start, range.streams});
  const uint64_t end = address + size;
  if (end < start + range.size) insert(end, FreeRange{start + range.size - end, range.streams});
  *streams = range.streams;
  return true;
}

bool Heap::is_free(uint64_t address, uint64_t size) const {
  auto it = by_address_.upper_bound(address);
  if (it == by_address_.begin()) return false;
  --it;
  return contains(it->first, it->second.size, address, size);
}

uint64_t Heap::top() const {
  if (by_address_.empty()) return end_;
  auto last = std::prev(by_address_.end());
  return last->first + last->second.size == end_ ? last->first : end_;
}

}  // namespace foundry
