// libFuzzer target for the native blob reader (foundry_trace/csrc/blob_read.cpp), built with
// AddressSanitizer and UndefinedBehaviorSanitizer by build.sh. LOAD's native threads read every
// module image, node table and payload with read_blob(): pread from the archive, zlib's
// uncompress where the blob is stored compressed, and the SHA-256 the manifest names. The
// archive's bytes are untrusted; its blob references are those the manifest check accepted
// (archive/manifest.py check_manifest: inside the file, raw blobs stored at their size, a
// compressed one declaring at most MAX_ZLIB_RATIO times its stored size), and the file may still
// change under an open archive. Beyond the sanitizers' reports it aborts where the reader
// breaks its contract: a blob accepted that is not the declared size or digest, an intact blob
// refused, or a refusal without a reason.
//
// Input: a mode byte (bit 0: stored compressed; bit 1: the harness compresses the content, else
// the content is the stored bytes as they are; bits 2-4: the damage), a 4-byte little-endian
// damage parameter, a prefix length byte (bytes of the file before the blob), then the content.
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "blob_read.hpp"
#include "sha256.hpp"

namespace {

constexpr uint64_t kZlibRatio = 1100;            // archive/manifest.py MAX_ZLIB_RATIO
constexpr uint64_t kMaxDeclared = uint64_t{1} << 24;  // keeps one execution fast; the ratio still binds

enum Damage : uint8_t {
  kNone = 0,        // the blob as written
  kFlipByte = 1,    // one stored byte changed after the digest was taken
  kTruncate = 2,    // the file cut short after the manifest was checked (changed while open)
  kSizeDelta = 3,   // the declared size off by the parameter (within the manifest's bounds)
  kDigestBit = 4,   // one bit of the declared digest flipped
  kStoredDelta = 5, // a compressed blob's stored length shortened by the parameter
  kCodec = 6,       // an unknown codec number
};

[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_blob_read: %s: %s\n", what, detail.c_str());
  std::abort();
}

struct File {
  int fd;
  explicit File(const std::vector<uint8_t>& bytes) : fd(memfd_create("archive", MFD_CLOEXEC)) {
    if (fd < 0) finding("memfd_create failed", std::strerror(errno));
    size_t written = 0;
    while (written < bytes.size()) {
      const ssize_t n = write(fd, bytes.data() + written, bytes.size() - written);
      if (n <= 0) finding("writing the archive failed", std::strerror(errno));
      written += static_cast<size_t>(n);
    }
  }
  ~File() { close(fd); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 6) return 0;
  const uint8_t mode = data[0];
  uint32_t parameter;
  std::memcpy(&parameter, data + 1, 4);
  const size_t prefix = data[5];
  const uint8_t* content = data + 6;
  const size_t content_size = size - 6;
  const bool compressed = (mode & 1) != 0, harness_compresses = (mode & 2) != 0;
  const auto damage = static_cast<Damage>((mode >> 2) & 7);

  std::vector<uint8_t> stored;
  uint64_t declared = content_size;
  if (compressed && harness_compresses) {
    uLongf bound = compressBound(content_size);
    stored.resize(bound);
    if (compress2(stored.data(), &bound, content, content_size, Z_BEST_SPEED) != Z_OK) finding("compress2 failed", "");
    stored.resize(bound);
  } else {
    stored.assign(content, content + content_size);
    if (compressed) declared = parameter % (kMaxDeclared + 1);  // any size a fuzzed stream may claim
  }
  foundry::Sha256Digest digest = foundry::sha256(content, content_size);

  std::vector<uint8_t> file(prefix, 0xA5);
  file.insert(file.end(), stored.begin(), stored.end());
  foundry::BlobSource source{};
  source.ref.offset = prefix;
  source.ref.stored = stored.size();
  source.ref.size = declared;
  source.ref.codec = compressed ? foundry::kZlib : foundry::kRaw;
  switch (damage) {
    case kFlipByte:
      if (!stored.empty()) file[prefix + parameter % stored.size()] ^= static_cast<uint8_t>(1 + (parameter >> 24) % 255);
      break;
    case kSizeDelta:
      source.ref.size = declared + 1 + parameter % 4096;
      break;
    case kDigestBit:
      digest[parameter % 32] ^= static_cast<uint8_t>(1u << (parameter >> 8) % 8);
      break;
    case kStoredDelta:
      if (compressed && !stored.empty()) source.ref.stored -= 1 + parameter % stored.size();
      break;
    case kCodec:
      source.ref.codec = 2 + parameter % 1000;
      break;
    default:
      break;
  }
  // What the manifest check refuses never reaches the reader.
  if (compressed && (source.ref.size > source.ref.stored * kZlibRatio || source.ref.size > kMaxDeclared)) return 0;
  std::memcpy(source.ref.digest, digest.data(), 32);
  if (damage == kTruncate) file.resize(prefix + (stored.empty() ? 0 : parameter % stored.size()));

  const File archive(file);
  foundry::Blob blob;
  std::string error;
  const bool read = foundry::read_blob(archive.fd, source, &blob, &error);
  if (read) {
    if (blob.size() != source.ref.size) finding("a blob accepted at another size than declared", error);
    if (std::memcmp(foundry::sha256(blob.data(), blob.size()).data(), source.ref.digest, 32) != 0)
      finding("a blob accepted that does not match its digest", error);
  } else if (error.empty()) {
    finding("a blob refused without a reason", "");
  }
  const bool intact = damage == kNone && (!compressed || harness_compresses);
  if (intact && !read) finding("an intact blob refused", error);
  if (intact && content_size != 0 && std::memcmp(blob.data(), content, content_size) != 0) finding("an intact blob read back changed", "");
  return 0;
}
