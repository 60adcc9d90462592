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
  if (end > begin) insert(begin, end - begin);
}

void Heap::insert(uint64_t address, uint64_t size) {
  by_address_.emplace(address, size);
  by_size_.emplace(size, address);
}

void Heap::erase(std::map<uint64_t, uint64_t>::iterator it) {
  by_size_.erase({it->second, it->first});
  by_address_.erase(it);
}

bool Heap::place(uint64_t size, Placement* out) {
  auto fit = by_size_.lower_bound({size, 0});
  if (fit == by_size_.end()) return false;
  const uint64_t address = fit->second;
  auto it = by_address_.find(address);
  const uint64_t range = it->second;
  erase(it);
  if (range > size) insert(address + size, range - size);
  *out = Placement{address};
  return true;
}

void Heap::release(uint64_t address, uint64_t size) {
  auto next = by_address_.lower_bound(address);
  if (next != by_address_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == address) {
      address = prev->first;
      size += prev->second;
      erase(prev);
    }
  }
  if (next != by_address_.end() && address + size == next->first) {
    size += next->second;
    erase(next);
  }
  insert(address, size);
}

bool Heap::claim(uint64_t address, uint64_t size) {
  auto it = by_address_.upper_bound(address);
  if (it == by_address_.begin()) return false;
  --it;
  const uint64_t start = it->first;
  const uint64_t range = it->second;
  if (!contains(start, range, address, size)) return false;
  erase(it);
  if (address > start) insert(start, address - start);
  const uint64_t end = address + size;
  if (end < start + range) insert(end, start + range - end);
  return true;
}

bool Heap::is_free(uint64_t address, uint64_t size) const {
  auto it = by_address_.upper_bound(address);
  if (it == by_address_.begin()) return false;
  --it;
  return contains(it->first, it->second, address, size);
}

uint64_t Heap::top() const {
  if (by_address_.empty()) return end_;
  auto last = std::prev(by_address_.end());
  return last->first + last->second == end_ ? last->first : end_;
}

}  // namespace foundry
