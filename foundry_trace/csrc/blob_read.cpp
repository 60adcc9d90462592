#include "blob_read.hpp"

#include <dlfcn.h>
#include <errno.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <mutex>

#include "sha256.hpp"

namespace foundry {
namespace {

constexpr uint64_t kReadChunk = uint64_t{1} << 30;  // pread returns at most 2 GiB - 4 KiB on Linux

// zlib's one-shot inflate, from libz.so.1 (zlib's stable ABI since 1.0).
using Uncompress = int (*)(unsigned char* dest, unsigned long* dest_size, const unsigned char* source,
                           unsigned long source_size);
constexpr int kZlibOk = 0;

Uncompress uncompress_function(std::string* error) {
  static Uncompress function = nullptr;
  static std::string failure;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      failure = std::string("cannot load libz.so.1 to inflate compressed blobs (") + dlerror() + ")";
      return;
    }
    function = reinterpret_cast<Uncompress>(dlsym(lib, "uncompress"));
    if (function == nullptr) failure = "libz.so.1 has no uncompress()";
  });
  if (function == nullptr) *error = failure;
  return function;
}

std::string name_of(const BlobRef& ref) {
  char hex[13];
  for (int i = 0; i < 6; ++i) std::snprintf(hex + 2 * i, 3, "%02x", ref.digest[i]);
  return std::string("blob ") + hex;
}

bool read_file(int archive, uint64_t offset, uint64_t length, uint8_t* out, std::string* error) {
  while (length != 0) {
    const ssize_t got = pread(archive, out, length < kReadChunk ? length : kReadChunk,
                              static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return *error = std::string("cannot read the archive: ") + std::strerror(errno), false;
    if (got == 0) return *error = "the archive was truncated while open: save it again", false;
    out += got, offset += static_cast<uint64_t>(got), length -= static_cast<uint64_t>(got);
  }
  return true;
}

}  // namespace

bool read_blob(int archive, const BlobSource& source, Blob* blob, std::string* error) {
  if (source.data != nullptr) {
    blob->view_ = source.data, blob->view_size_ = source.size;
    return true;
  }
  const BlobRef& ref = source.ref;
  std::vector<uint8_t>& out = blob->owned_;
  if (ref.codec == kRaw) {
    if (ref.stored != ref.size)
      return *error = name_of(ref) + " is stored raw but its stored and decoded sizes differ", false;
    out.resize(ref.size);
    if (!read_file(archive, ref.offset, ref.stored, out.data(), error)) return false;
  } else if (ref.codec == kZlib) {
    Uncompress uncompress = uncompress_function(error);
    if (uncompress == nullptr) return false;
    std::vector<uint8_t> stored(ref.stored);
    if (!read_file(archive, ref.offset, ref.stored, stored.data(), error)) return false;
    out.resize(ref.size == 0 ? 1 : ref.size);  // zlib wants room for at least a byte
    unsigned long size = ref.size;
    if (uncompress(out.data(), &size, stored.data(), ref.stored) != kZlibOk || size != ref.size)
      return *error = name_of(ref) + " does not decompress to its declared size", false;
    out.resize(ref.size);
  } else {
    return *error = name_of(ref) + " has an unknown codec", false;
  }
  if (std::memcmp(sha256(out.data(), out.size()).data(), ref.digest, 32) != 0)
    return *error = name_of(ref) + " is corrupted (checksum mismatch)", false;
  return true;
}

}  // namespace foundry
