#include "space.hpp"

#include <algorithm>
#include <mutex>

#include "address_space.hpp"
#include "format.hpp"
#include "nvtx_range.hpp"

namespace foundry {
namespace {

uint64_t round_up(uint64_t value, uint64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// round_up() that reports overflow instead of wrapping: claim() takes sizes from archives.
bool round_up_checked(uint64_t value, uint64_t multiple, uint64_t* out) {
  const uint64_t remainder = value % multiple;
  if (remainder == 0) return *out = value, true;
  return !__builtin_add_overflow(value, multiple - remainder, out);
}

std::string hex_range(uint64_t address, uint64_t size) {
  return "[" + format_address(address) + ", +" + format_address(size) + ")";
}

constexpr int kOverflowStream = kMaxStreams - 1;

std::mutex g_names_mutex;
char g_arena_names[kMaxArenas][32] = {"engine", "graph", "transient", "arena3",
                                      "arena4", "arena5", "arena6", "arena7"};

}  // namespace

const char* arena_name(int arena) {
  return arena >= 0 && arena < kMaxArenas ? g_arena_names[arena] : "?";
}

void set_arena_name(int arena, const char* name) {
  if (arena < 0 || arena >= kMaxArenas || name == nullptr) return;
  std::lock_guard<std::mutex> lock(g_names_mutex);
  std::snprintf(g_arena_names[arena], sizeof g_arena_names[arena], "%s", name);
}

Space::Space(Backend* backend, int device, uint64_t base, uint64_t size)
    : backend_(backend), device_(device), base_(base), size_(size) {}

Space::~Space() {
  std::string ignored;
  for (const auto& [address, extent] : extents_) {
    backend_->unmap(device_, address, extent.size, extent.handle, &ignored);
  }
  if (reserved_) backend_->unreserve(base_, size_);
}

Status Space::init(std::string* error) {
  Status status = backend_->init_device(device_, &granularity_, error);
  if (status != kOk) return status;
  if (size_ > UINT64_MAX - base_) {  // every end address below must be representable
    *error = "the range " + hex_range(base_, size_) +
             " runs past the end of the 64-bit address space: choose a lower base or a smaller "
             "size";
    return kInvalidArgument;
  }
  const uint64_t unit = granularity_ * kMaxArenas * kSmallZoneFraction;
  if (base_ % granularity_ != 0 || size_ == 0 || size_ % unit != 0) {
    *error = "the range [" + format_address(base_) + ", +" + format_bytes(size_) +
             ") does not fit the device: the base must be a multiple of the mapping granularity (" +
             format_bytes(granularity_) + ") and the size a non-zero multiple of " +
             format_bytes(unit) + " (" + std::to_string(kMaxArenas) + " arenas of " +
             std::to_string(kSmallZoneFraction) + " granules at least)";
    return kInvalidArgument;
  }
  {
    NvtxRange range("alloc.reserve");
    std::string cause;
    status = backend_->reserve(base_, size_, &cause);
    if (status != kOk) {
      const uint64_t suggestion = suggest_base(size_);
      *error = "cannot reserve the fixed range [" + format_address(base_) + ", " +
               format_address(base_ + size_) + ") (" + format_bytes(size_) + ") for device " +
               std::to_string(device_) + ": " + cause + ". Choose another base with " +
               "FOUNDRY_ALLOC_BASE or foundry_alloc.install(base=...)" +
               (suggestion ? ", e.g. " + format_address(suggestion) + " (free in this process)"
                           : std::string(", or a smaller FOUNDRY_ALLOC_SIZE")) +
               "; the SAVE and LOAD runs must use the same base";
      return kReservationFailed;
    }
  }
  reserved_ = true;
  arena_size_ = size_ / kMaxArenas;
  const uint64_t small_size = arena_size_ / kSmallZoneFraction;
  for (int i = 0; i < kMaxArenas; ++i) {
    Arena& arena = arenas_[i];
    arena.begin = base_ + i * arena_size_;
    arena.small = Heap(arena.begin, arena.begin + small_size);
    arena.large = Heap(arena.begin + small_size, arena.begin + arena_size_);
  }
  mapped_pages_.assign((size_ / granularity_ + 63) / 64, 0);
  return kOk;
}

int Space::route(int selected_arena, StreamHandle stream) const {
  return backend_->is_capturing(stream) ? kArenaGraph : selected_arena;
}

Heap& Space::heap_for(Arena& arena, uint64_t size) {
  return size <= kSmallBlockLimit ? arena.small : arena.large;
}

Heap& Space::heap_containing(Arena& arena, uint64_t address) {
  return address < arena.small.end() ? arena.small : arena.large;
}

int Space::stream_slot(StreamHandle stream) {
  auto it = stream_index_.find(stream);
  if (it != stream_index_.end()) return it->second;
  int slot = kOverflowStream;
  if (streams_.size() < kOverflowStream) {
    slot = static_cast<int>(streams_.size());
    streams_.push_back(StreamSlot{0, {}});
  } else if (streams_.size() == kOverflowStream) {
    streams_.push_back(StreamSlot{0, {}});  // shared by every stream past the 63rd
  }
  stream_index_.emplace(stream, slot);
  return slot;
}

void Space::set_pages(uint64_t first, uint64_t count, bool mapped) {
  for (uint64_t page = first; page < first + count; ++page) {
    if (mapped) {
      mapped_pages_[page / 64] |= 1ull << (page % 64);
    } else {
      mapped_pages_[page / 64] &= ~(1ull << (page % 64));
    }
  }
}

Status Space::ensure_mapped(int arena, uint64_t address, uint64_t size, bool capturing,
                            std::string* error) {
  const uint64_t first = page_of(address);
  const uint64_t last = page_of(address + size - 1);
  uint64_t page = first;
  while (page <= last && page_mapped(page)) ++page;
  if (page > last) return kOk;  // the common case: reuse inside mapped memory

  NvtxRange range("alloc.map");
  std::vector<uint64_t> mapped_now;  // extents created by this call, undone on failure
  while (page <= last) {
    if (page_mapped(page)) {
      ++page;
      continue;
    }
    uint64_t end = page;
    while (end <= last && !page_mapped(end)) ++end;
    const uint64_t run_address = base_ + page * granularity_;
    const uint64_t run_size = (end - page) * granularity_;
    uint64_t handle = 0;
    std::string cause;
    Status status = backend_->map(device_, run_address, run_size, &handle, &cause);
    if (status == kOutOfMemory && !capturing) {
      // Give idle cached memory back to the driver and try once more. Graph memory is never
      // released here: captured graphs may still read it. Nothing is unmapped during a capture.
      uint64_t released = 0;
      std::string ignored;
      trim(0xffu & ~(1u << kArenaGraph), &released, &ignored);
      if (released > 0) status = backend_->map(device_, run_address, run_size, &handle, &cause);
    }
    if (status != kOk) {
      for (uint64_t undo : mapped_now) {
        const Extent extent = extents_[undo];
        std::string ignored;
        if (backend_->unmap(device_, undo, extent.size, extent.handle, &ignored) == kOk) {
          set_pages(page_of(undo), extent.size / granularity_, false);
          mapped_bytes_ -= extent.size;
          arenas_[arena].counters.mapped_bytes -= extent.size;
          extents_.erase(undo);
        }
      }
      *error = status == kOutOfMemory ? out_of_memory_report(size, arena, cause) : cause;
      return status;
    }
    extents_.emplace(run_address, Extent{run_size, handle, arena});
    mapped_now.push_back(run_address);
    set_pages(page, end - page, true);
    mapped_bytes_ += run_size;
    arenas_[arena].counters.mapped_bytes += run_size;
    peak_mapped_bytes_ = std::max(peak_mapped_bytes_, mapped_bytes_);
    page = end;
  }
  return kOk;
}

void Space::add_pending(uint64_t address, PendingFree pending) {
  // Merged with a neighbour freed by the same stream, so that a stream's own traffic keeps one
  // entry per run of memory, however often it frees.
  auto next = pending_.lower_bound(address);
  if (next != pending_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.size == address && prev->second.stream == pending.stream) {
      address = prev->first;
      pending.size += prev->second.size;
      pending.epoch = std::max(pending.epoch, prev->second.epoch);
      pending_.erase(prev);
    }
  }
  if (next != pending_.end() && address + pending.size == next->first &&
      next->second.stream == pending.stream) {
    pending.size += next->second.size;
    pending.epoch = std::max(pending.epoch, next->second.epoch);
    pending_.erase(next);
  }
  pending_.emplace(address, pending);
}

std::vector<Space::Taken> Space::take_pending(uint64_t address, uint64_t size) {
  std::vector<Taken> taken;
  const uint64_t end = address + size;
  auto it = pending_.upper_bound(address);
  if (it != pending_.begin() && std::prev(it)->first + std::prev(it)->second.size > address) --it;
  while (it != pending_.end() && it->first < end) {
    const uint64_t start = it->first;
    const PendingFree range = it->second;
    it = pending_.erase(it);
    const uint64_t stop = start + range.size;
    const uint64_t from = std::max(start, address), to = std::min(stop, end);
    taken.push_back(Taken{from, PendingFree{to - from, range.stream, range.slot, range.epoch}});
    if (start < from) pending_.emplace(start, PendingFree{from - start, range.stream, range.slot, range.epoch});
    if (to < stop) pending_.emplace(to, PendingFree{stop - to, range.stream, range.slot, range.epoch});
  }
  return taken;
}

Status Space::order_reuse(int slot, StreamHandle stream, const std::vector<Taken>& taken,
                          std::string* error) {
  // Past the 63rd stream, slots are shared, so what one remembers would not be its own: those
  // streams are ordered by handle each time, which costs one event record and wait, never a
  // device synchronization.
  StreamSlot& waiter = streams_[slot];
  std::vector<StreamHandle> ordered;
  for (const Taken& part : taken) {
    const PendingFree& freed = part.pending;
    if (freed.stream == stream) continue;  // the same stream runs in order
    const bool remembered = slot != kOverflowStream && freed.slot != kOverflowStream;
    if (remembered && waiter.seen_epoch[freed.slot] >= freed.epoch) continue;
    if (std::find(ordered.begin(), ordered.end(), freed.stream) != ordered.end()) continue;
    // Work cannot be ordered after a stream that is being captured; what it enqueued before the
    // capture began was enqueued before the free, and the capture itself replays later.
    if (backend_->is_capturing(freed.stream)) continue;
    Status status = backend_->order_after(device_, stream, freed.stream, error);
    if (status != kOk) return status;
    ordered.push_back(freed.stream);
    if (remembered) waiter.seen_epoch[freed.slot] = streams_[freed.slot].free_epoch;
  }
  return kOk;
}

Status Space::allocate(uint64_t size, int arena_index, StreamHandle stream, uint64_t* address,
                       std::string* error) {
  if (arena_index < 0 || arena_index >= kMaxArenas) {
    *error = "arena index " + std::to_string(arena_index) + " is out of range";
    return kInvalidArgument;
  }
  Arena& arena = arenas_[arena_index];
  const uint64_t rounded = round_up(std::max<uint64_t>(size, 1), kAlignment);
  Heap& heap = heap_for(arena, rounded);
  Heap::Placement placement;
  if (rounded < size || !heap.place(rounded, &placement)) {
    *error = "CUDA out of memory: arena '" + std::string(arena_name(arena_index)) + "' of device " +
             std::to_string(device_) + " has no free range of " + format_bytes(rounded) +
             " left in its " + format_bytes(heap.end() - heap.begin()) +
             " slice of the fixed range (" + format_bytes(arena.counters.live_bytes) +
             " live). Raise FOUNDRY_ALLOC_SIZE (each of the " + std::to_string(kMaxArenas) +
             " arenas gets an eighth of it)";
    return kOutOfAddressSpace;
  }
  const bool capturing = arena_index == kArenaGraph;
  Status status = ensure_mapped(arena_index, placement.address, rounded, capturing, error);
  const int slot = stream_slot(stream);
  std::vector<Taken> taken;
  if (status == kOk && !capturing) {
    taken = take_pending(placement.address, rounded);
    status = order_reuse(slot, stream, taken, error);
  }
  if (status != kOk) {
    for (const Taken& part : taken) add_pending(part.address, part.pending);
    heap.release(placement.address, rounded);
    return status;
  }
  add_live(placement.address, rounded, size, arena_index, slot, stream);
  *address = placement.address;
  return kOk;
}

void Space::add_live(uint64_t address, uint64_t rounded, uint64_t requested, int arena, int slot,
                     StreamHandle stream) {
  ArenaCounters& c = arenas_[arena].counters;
  live_.emplace(address,
                Live{rounded, requested, c.allocations, arena, static_cast<int32_t>(slot), stream});
  c.allocations += 1;
  c.live_blocks += 1;
  c.live_bytes += rounded;
  c.requested_bytes += requested;
  c.peak_live_bytes = std::max(c.peak_live_bytes, c.live_bytes);
  live_bytes_ += rounded;
  peak_live_bytes_ = std::max(peak_live_bytes_, live_bytes_);
}

// Why [address, address + size) cannot be claimed in `arena_index` on range grounds (empty when
// it can be tried); *rounded receives the size rounded to kAlignment. Every comparison subtracts
// from an end that init() proved representable, so a size near 2^64 cannot wrap past a check.
std::string Space::claim_range_problem(uint64_t address, uint64_t size, int arena_index,
                                       uint64_t* rounded) const {
  if (arena_index < 0 || arena_index >= kMaxArenas)
    return "arena index " + std::to_string(arena_index) + " is out of range";
  const std::string space = "not an aligned range of device " + std::to_string(device_) +
                            "'s space " + hex_range(base_, size_);
  if (size == 0) return space + " (it is empty)";
  if (address % kAlignment != 0)
    return space + " (its start is not a multiple of " + std::to_string(kAlignment) + " bytes)";
  const uint64_t end = base_ + size_;
  if (!owns(address) || size > end - address || !round_up_checked(size, kAlignment, rounded))
    return space + " (it reaches outside the space)";
  const Arena& arena = arenas_[arena_index];
  const uint64_t arena_end = arena.begin + arena_size_;
  if (address < arena.begin || address >= arena_end || *rounded > arena_end - address)
    return std::string("it does not lie inside arena '") + arena_name(arena_index) + "' " +
           hex_range(arena.begin, arena_size_);
  return "";
}

Status Space::claim(uint64_t address, uint64_t size, int arena_index, std::string* error) {
  uint64_t rounded = 0;
  const std::string problem = claim_range_problem(address, size, arena_index, &rounded);
  if (!problem.empty()) {
    *error = "cannot claim " + hex_range(address, size) + ": " + problem +
             ". No recorded layout holds such a block: the layout is corrupted or was recorded "
             "for another base; save it again";
    return kInvalidArgument;
  }
  Arena& arena = arenas_[arena_index];
  Heap& heap = heap_containing(arena, address);
  if (!heap.claim(address, rounded)) {
    *error = "cannot claim " + hex_range(address, rounded) + " in arena '" +
             arena_name(arena_index) +
             "': it is not free there (the layout differs from the one recorded)";
    return kInvalidArgument;
  }
  Status status = ensure_mapped(arena_index, address, rounded, false, error);
  if (status != kOk) {
    heap.release(address, rounded);
    return status;
  }
  take_pending(address, rounded);  // claimed memory orders nothing (kNoStream), as before
  add_live(address, rounded, size, arena_index, kNoStream, nullptr);
  return kOk;
}

Status Space::release(uint64_t address, std::string* error) {
  auto it = live_.find(address);
  if (it == live_.end()) {
    *error = "free of " + format_address(address) + ", which is not a live block of device " +
             std::to_string(device_);
    return kUnknownPointer;
  }
  const Live block = it->second;
  live_.erase(it);
  Arena& arena = arenas_[block.arena];
  if (block.arena != kArenaGraph && block.stream_slot != kNoStream) {
    // Remember which stream freed the range, so that reuse from another stream waits for it.
    const uint64_t epoch = ++streams_[block.stream_slot].free_epoch;
    add_pending(address, PendingFree{block.size, block.stream, block.stream_slot, epoch});
  }
  heap_containing(arena, address).release(address, block.size);
  ArenaCounters& c = arena.counters;
  c.frees += 1;
  c.live_blocks -= 1;
  c.live_bytes -= block.size;
  c.requested_bytes -= block.requested;
  live_bytes_ -= block.size;
  return kOk;
}

Status Space::trim(uint32_t arena_mask, uint64_t* released, std::string* error) {
  NvtxRange range("alloc.trim");
  *released = 0;
  Status result = kOk;
  for (auto it = extents_.begin(); it != extents_.end();) {
    const uint64_t address = it->first;
    const Extent extent = it->second;
    Arena& arena = arenas_[extent.arena];
    if (!((arena_mask >> extent.arena) & 1) ||
        !heap_containing(arena, address).is_free(address, extent.size)) {
      ++it;
      continue;
    }
    Status status = backend_->unmap(device_, address, extent.size, extent.handle, error);
    if (status != kOk) {
      result = status;
      ++it;
      continue;
    }
    set_pages(page_of(address), extent.size / granularity_, false);
    mapped_bytes_ -= extent.size;
    arena.counters.mapped_bytes -= extent.size;
    *released += extent.size;
    it = extents_.erase(it);
  }
  return result;
}

std::vector<BlockRecord> Space::layout() const {
  std::vector<BlockRecord> records;
  records.reserve(live_.size());
  for (const auto& [address, block] : live_) {
    records.push_back(
        BlockRecord{address, block.size, block.requested, block.sequence, block.arena, 0});
  }
  std::sort(records.begin(), records.end(),
            [](const BlockRecord& a, const BlockRecord& b) { return a.address < b.address; });
  return records;
}

std::vector<BlockRecord> Space::mappings() const {
  std::vector<BlockRecord> records;
  records.reserve(extents_.size());
  for (const auto& [address, extent] : extents_) {
    records.push_back(BlockRecord{address, extent.size, extent.size, 0, extent.arena, 0});
  }
  return records;
}

SpaceStats Space::stats() const {
  SpaceStats s{};
  s.base = base_;
  s.size = size_;
  s.granularity = granularity_;
  s.mapped_bytes = mapped_bytes_;
  s.peak_mapped_bytes = peak_mapped_bytes_;
  s.live_bytes = live_bytes_;
  s.peak_live_bytes = peak_live_bytes_;
  s.live_blocks = live_.size();
  s.arena_size = arena_size_;
  for (int i = 0; i < kMaxArenas; ++i) {
    s.arenas[i] = arenas_[i].counters;
    s.small_span[i] = arenas_[i].small.top() - arenas_[i].small.begin();
    s.large_span[i] = arenas_[i].large.top() - arenas_[i].large.begin();
  }
  return s;
}

void Space::reset_peaks() {
  peak_mapped_bytes_ = mapped_bytes_;
  peak_live_bytes_ = live_bytes_;
  for (Arena& arena : arenas_) arena.counters.peak_live_bytes = arena.counters.live_bytes;
}

std::string Space::out_of_memory_report(uint64_t size, int arena, const std::string& cause) {
  uint64_t free_bytes = 0, total_bytes = 0;
  backend_->memory_info(device_, &free_bytes, &total_bytes);
  std::string report = "CUDA out of memory: Foundry could not map " + format_bytes(size) +
                       " for arena '" + arena_name(arena) + "' on device " +
                       std::to_string(device_) + " (" + cause + "). The device has " +
                       format_bytes(free_bytes) + " free of " + format_bytes(total_bytes) +
                       ". Foundry holds " + format_bytes(mapped_bytes_) + " mapped (peak " +
                       format_bytes(peak_mapped_bytes_) + "): " + format_bytes(live_bytes_) +
                       " live in " + std::to_string(live_.size()) + " blocks, " +
                       format_bytes(mapped_bytes_ - std::min(mapped_bytes_, live_bytes_)) +
                       " idle or in partly used pages. By arena (live / mapped):";
  for (int i = 0; i < kMaxArenas; ++i) {
    const ArenaCounters& c = arenas_[i].counters;
    if (c.mapped_bytes == 0 && c.live_bytes == 0) continue;
    report += std::string(" ") + arena_name(i) + " " + format_bytes(c.live_bytes) + " / " +
              format_bytes(c.mapped_bytes) + ";";
  }
  report +=
      " Free tensors you no longer need or allocate less (e.g. a smaller KV cache). Memory of "
      "arena 'graph' is kept for captured graphs and is released only by "
      "foundry_alloc.empty_cache(graphs=True) once those graphs are gone.";
  return report;
}

}  // namespace foundry
