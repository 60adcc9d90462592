#include "backend_host.hpp"

#include <iterator>

namespace foundry {

HostBackend::HostBackend(uint64_t granularity, uint64_t physical_limit)
    : granularity_(granularity), physical_limit_(physical_limit) {}

std::unique_ptr<HostBackend> make_host_backend(uint64_t granularity, uint64_t physical_limit) {
  return std::make_unique<HostBackend>(granularity, physical_limit);
}

Status HostBackend::init_device(int, uint64_t* granularity, std::string*) {
  *granularity = granularity_;
  return kOk;
}

static bool overlaps(const std::map<uint64_t, uint64_t>& ranges, uint64_t base, uint64_t size) {
  auto it = ranges.upper_bound(base);
  if (it != ranges.begin() && std::prev(it)->first + std::prev(it)->second > base) return true;
  return it != ranges.end() && it->first < base + size;
}

Status HostBackend::reserve(uint64_t base, uint64_t size, std::string* error) {
  if (overlaps(reservations_, base, size) || overlaps(occupied_, base, size)) {
    *error = "the range is already in use in this process";
    return kReservationFailed;
  }
  reservations_.emplace(base, size);
  return kOk;
}

void HostBackend::unreserve(uint64_t base, uint64_t) { reservations_.erase(base); }

void HostBackend::occupy(uint64_t base, uint64_t size) { occupied_.emplace(base, size); }

Status HostBackend::map(int, uint64_t address, uint64_t size, uint64_t* handle,
                        std::string* error) {
  if (mapped_bytes_ + size > physical_limit_) {
    *error = "simulated device memory exhausted";
    return kOutOfMemory;
  }
  mapped_bytes_ += size;
  ++map_calls_;
  *handle = next_handle_++;
  mappings_.emplace(address, std::make_pair(size, *handle));
  return kOk;
}

Status HostBackend::unmap(int, uint64_t address, uint64_t size, uint64_t handle,
                          std::string* error) {
  auto it = mappings_.find(address);
  if (it == mappings_.end() || it->second.first != size || it->second.second != handle) {
    *error = "unmap of a range that was not mapped as one extent";
    return kDriverError;
  }
  mappings_.erase(it);
  mapped_bytes_ -= size;
  return kOk;
}

bool HostBackend::is_capturing(StreamHandle stream) { return capturing_.count(stream) != 0; }

void HostBackend::set_capturing(StreamHandle stream, bool capturing) {
  if (capturing) {
    capturing_.insert(stream);
  } else {
    capturing_.erase(stream);
  }
}

Status HostBackend::order_after(int, StreamHandle waiter, StreamHandle producer, std::string*) {
  const std::pair<StreamHandle, StreamHandle> pair{waiter, producer};
  if (orderings_.size() < kOrderingLog) {
    orderings_.push_back(pair);
  } else {
    orderings_[ordering_count_ % kOrderingLog] = pair;
  }
  ++ordering_count_;
  return kOk;
}

std::vector<std::pair<StreamHandle, StreamHandle>> HostBackend::recent_orderings() const {
  if (orderings_.size() < kOrderingLog) return orderings_;
  std::vector<std::pair<StreamHandle, StreamHandle>> recent;
  recent.reserve(kOrderingLog);
  for (uint64_t i = 0; i < kOrderingLog; ++i) {
    recent.push_back(orderings_[(ordering_count_ + i) % kOrderingLog]);
  }
  return recent;
}

void HostBackend::memory_info(int, uint64_t* free_bytes, uint64_t* total_bytes) {
  *total_bytes = physical_limit_;
  *free_bytes = physical_limit_ - mapped_bytes_;
}

}  // namespace foundry
