// Looks at this process's host mappings to propose a base for the fixed range when the configured
// one is taken (the driver keeps device and host virtual addresses disjoint).
#pragma once

#include <cstdint>

namespace foundry {

// Lowest 1 TiB-aligned base at or above 16 TiB whose [base, base + size) overlaps no mapping listed
// in /proc/self/maps and ends below 0x7f0000000000 (where shared libraries and the CUDA driver's own
// reservations live). Returns 0 when none is found.
uint64_t suggest_base(uint64_t size);

}  // namespace foundry
