// SHA-256 (FIPS 180-4), so that the native readers check each blob against the digest the
// manifest names without returning to Python (where hashlib would hand the GIL back and forth).
// sha256() is OpenSSL's one-shot SHA256 from libcrypto, loaded at run time where the process
// can (it uses the CPU's SHA instructions: docs/measurements.md), else sha256_portable().
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace foundry {

using Sha256Digest = std::array<uint8_t, 32>;

Sha256Digest sha256(const uint8_t* data, size_t size);
Sha256Digest sha256_portable(const uint8_t* data, size_t size);

}  // namespace foundry
