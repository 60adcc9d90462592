// SHA-256 (FIPS 180-4), so that the native readers check each blob against the digest the
// manifest names without returning to Python (where hashlib would hand the GIL back and forth).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace foundry {

using Sha256Digest = std::array<uint8_t, 32>;

Sha256Digest sha256(const uint8_t* data, size_t size);

}  // namespace foundry
