#include "address_space.hpp"

#include <cinttypes>
#include <cstdio>
#include <utility>
#include <vector>

namespace foundry {

uint64_t suggest_base(uint64_t size) {
  constexpr uint64_t kAlign = 1ull << 40;
  constexpr uint64_t kLowest = 16ull << 40;
  constexpr uint64_t kCeiling = 0x7f0000000000ull;
  std::vector<std::pair<uint64_t, uint64_t>> taken;
  if (FILE* maps = std::fopen("/proc/self/maps", "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, maps)) {
      uint64_t begin = 0, end = 0;
      if (std::sscanf(line, "%" SCNx64 "-%" SCNx64, &begin, &end) == 2) taken.emplace_back(begin, end);
    }
    std::fclose(maps);
  }
  for (uint64_t base = kLowest; base + size <= kCeiling && base + size > base; base += kAlign) {
    bool clear = true;
    for (const auto& range : taken) {
      if (range.first < base + size && base < range.second) {
        clear = false;
        break;
      }
    }
    if (clear) return base;
  }
  return 0;
}

}  // namespace foundry
