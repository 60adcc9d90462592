// One device's slice of the fixed virtual range: arenas, their placement heaps, the physical
// mappings behind them, and the stream bookkeeping that keeps cross-stream reuse safe.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend.hpp"
#include "heap.hpp"

namespace foundry {

constexpr int kMaxArenas = 8;
constexpr int kArenaEngine = 0;     // what the engine owns: weights, KV cache, static inputs
constexpr int kArenaGraph = 1;      // whatever is allocated while the stream is capturing
constexpr int kArenaTransient = 2;  // warm-up and profiling traffic, by explicit selection
constexpr uint64_t kAlignment = 512;          // every block starts and ends on 512 bytes
constexpr uint64_t kSmallBlockLimit = 1 << 20;  // blocks up to 1 MiB share the small zone
constexpr int kSmallZoneFraction = 16;          // the small zone is 1/16 of an arena
constexpr int kMaxStreams = 64;  // streams whose orderings are remembered; the last slot is shared
// A claimed block (LOAD's recorded memory) was allocated on no stream: its free orders nothing.
// Its user, LOAD's release, synchronizes the device before it frees claimed memory.
constexpr int kNoStream = -1;

struct ArenaCounters {
  uint64_t live_bytes = 0;       // rounded sizes of live blocks
  uint64_t requested_bytes = 0;  // sizes as requested
  uint64_t live_blocks = 0;
  uint64_t peak_live_bytes = 0;
  uint64_t mapped_bytes = 0;
  uint64_t allocations = 0;      // also the next sequence number
  uint64_t frees = 0;
};

struct BlockRecord {
  uint64_t address;
  uint64_t size;
  uint64_t requested;
  uint64_t sequence;
  int32_t arena;
  int32_t reserved_;
};

struct SpaceStats {
  uint64_t base;
  uint64_t size;
  uint64_t granularity;
  uint64_t mapped_bytes;
  uint64_t peak_mapped_bytes;
  uint64_t live_bytes;
  uint64_t peak_live_bytes;
  uint64_t live_blocks;
  uint64_t arena_size;
  ArenaCounters arenas[kMaxArenas];
  uint64_t small_span[kMaxArenas];  // bytes from a zone's start to the end of its highest live block
  uint64_t large_span[kMaxArenas];
};

class Space {
 public:
  // The space is not usable until init() succeeded.
  Space(Backend* backend, int device, uint64_t base, uint64_t size);
  ~Space();
  Status init(std::string* error);

  Status allocate(uint64_t size, int arena, StreamHandle stream, uint64_t* address,
                  std::string* error);
  Status release(uint64_t address, std::string* error);
  // Makes [address, address + size) a live, mapped block of `arena`, if that range is free: how
  // LOAD re-creates memory that SAVE recorded at fixed addresses.
  Status claim(uint64_t address, uint64_t size, int arena, std::string* error);
  // Unmaps every extent of the selected arenas that no live block touches.
  Status trim(uint32_t arena_mask, uint64_t* released, std::string* error);

  bool owns(uint64_t address) const { return address >= base_ && address < base_ + size_; }
  std::vector<BlockRecord> layout() const;
  // The physical mappings (extents) of the range, by address: what graphs may touch even where
  // no block is live any more.
  std::vector<BlockRecord> mappings() const;
  SpaceStats stats() const;
  void reset_peaks();
  int device() const { return device_; }
  // Chooses the arena for a request: a capturing stream always lands in the graph arena.
  int route(int selected_arena, StreamHandle stream) const;

 private:
  struct Arena {
    uint64_t begin = 0;
    Heap small{0, 0};
    Heap large{0, 0};
    ArenaCounters counters;
  };
  struct Live {
    uint64_t size;
    uint64_t requested;
    uint64_t sequence;
    int32_t arena;
    int32_t stream_slot;
    StreamHandle stream;
  };
  struct Extent {
    uint64_t size;
    uint64_t handle;
    int arena;
  };
  struct StreamSlot {
    uint64_t free_epoch;                          // bumped by every free on this stream
    std::array<uint64_t, kMaxStreams> seen_epoch;  // others' epochs this stream is ordered after
  };
  // Freed memory whose last user's work may still run: reuse from another stream is ordered
  // after `stream` first. Kept per range, not per free range, so an allocation waits only for
  // the streams that used the very bytes it gets (a free range merges neighbours freed by any
  // number of streams); reuse takes the range out, as its new user's work now follows.
  struct PendingFree {
    uint64_t size;
    StreamHandle stream;
    int32_t slot;
    uint64_t epoch;  // the stream's free_epoch when it freed the range
  };
  struct Taken {
    uint64_t address;
    PendingFree pending;
  };

  // Records a block placed at `address` as live, with its counters and sequence number.
  void add_live(uint64_t address, uint64_t rounded, uint64_t requested, int arena, int slot,
                StreamHandle stream);
  std::string claim_range_problem(uint64_t address, uint64_t size, int arena_index,
                                  uint64_t* rounded) const;
  Heap& heap_for(Arena& arena, uint64_t size);
  Heap& heap_containing(Arena& arena, uint64_t address);
  Status ensure_mapped(int arena, uint64_t address, uint64_t size, bool capturing,
                       std::string* error);
  void add_pending(uint64_t address, PendingFree pending);
  // Takes [address, address + size) out of the pending ranges, returning the parts it held.
  std::vector<Taken> take_pending(uint64_t address, uint64_t size);
  Status order_reuse(int slot, StreamHandle stream, const std::vector<Taken>& taken,
                     std::string* error);
  int stream_slot(StreamHandle stream);
  std::string out_of_memory_report(uint64_t size, int arena, const std::string& cause);
  uint64_t page_of(uint64_t address) const { return (address - base_) / granularity_; }
  bool page_mapped(uint64_t page) const { return (mapped_pages_[page / 64] >> (page % 64)) & 1; }
  void set_pages(uint64_t first, uint64_t count, bool mapped);

  Backend* backend_;
  int device_;
  uint64_t base_;
  uint64_t size_;
  uint64_t granularity_ = 0;
  uint64_t arena_size_ = 0;
  bool reserved_ = false;
  std::array<Arena, kMaxArenas> arenas_;
  std::vector<uint64_t> mapped_pages_;  // one bit per granule of the range
  std::map<uint64_t, Extent> extents_;  // physical mappings by start address
  std::unordered_map<uint64_t, Live> live_;
  std::vector<StreamSlot> streams_;
  std::map<uint64_t, PendingFree> pending_;  // by address, disjoint; no graph-arena memory
  std::unordered_map<StreamHandle, int> stream_index_;
  uint64_t mapped_bytes_ = 0;
  uint64_t peak_mapped_bytes_ = 0;
  uint64_t live_bytes_ = 0;
  uint64_t peak_live_bytes_ = 0;
};

// Names used in messages; the Python layer registers user arenas' names here.
const char* arena_name(int arena);
void set_arena_name(int arena, const char* name);

}  // namespace foundry
