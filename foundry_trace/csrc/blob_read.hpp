// Reading a blob of an archive natively: pread from the archive's file, inflate where stored
// with zlib (libz.so.1, opened at run time like libcuda), and check against the SHA-256 the
// manifest names, all without the GIL. LOAD's background threads read thousands of blobs; in
// Python each read, inflate and hash hands the GIL over and waits up to the 5 ms switch
// interval to get it back whenever another thread runs Python (LOAD's own thread, or the
// serving engine's beside a background or prefetched LOAD).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace foundry {

// Where a blob lies in the archive file and what it must be (archive/manifest.py's BlobRef).
struct BlobRef {
  uint64_t offset;  // in the file
  uint64_t stored;  // bytes in the file
  uint64_t size;    // bytes once decoded
  uint32_t codec;   // kRaw or kZlib
  uint32_t reserved;
  uint8_t digest[32];  // SHA-256 of the decoded bytes
};

constexpr uint32_t kRaw = 0;
constexpr uint32_t kZlib = 1;

// A blob already in memory (data non-null, size bytes), or one to read from the archive.
struct BlobSource {
  const uint8_t* data;
  uint64_t size;
  BlobRef ref;
};

// A blob's bytes: a view of the caller's memory, or a buffer read from the archive.
class Blob {
 public:
  const uint8_t* data() const { return view_ != nullptr ? view_ : owned_.data(); }
  uint64_t size() const { return view_ != nullptr ? view_size_ : owned_.size(); }

 private:
  friend bool read_blob(int, const BlobSource&, Blob*, std::string*);
  const uint8_t* view_ = nullptr;
  uint64_t view_size_ = 0;
  std::vector<uint8_t> owned_;
};

// Fills *blob from `source` (reading `archive`, a file descriptor, where it is not in memory).
// False where the file cannot be read or the blob is not what the manifest says: *error says
// which blob and why (the archive is corrupted, truncated, or changed since it was opened).
bool read_blob(int archive, const BlobSource& source, Blob* blob, std::string* error);

}  // namespace foundry
