#!/usr/bin/env bash
# Builds the restore library's libFuzzer targets under AddressSanitizer and UndefinedBehaviorSanitizer:
# fuzz_restore (fuzz_restore.cpp with foundry_trace/csrc compiled in) and, beside it, the stand-in
# driver libcuda.so.1 (fake_cuda.cpp), which the library dlopens as it would the real one; and
# fuzz_blob_read (fuzz_blob_read.cpp: the native blob reader, with zlib and SHA-256).
#   fuzz/native/build.sh [OUTPUT_DIRECTORY]      (default: $TMPDIR/foundry-fuzz-native)
# Needs clang with libFuzzer (Debian: apt-get install clang) and CUDA's headers (CUDA_HOME).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-${TMPDIR:-/tmp}/foundry-fuzz-native}"
cxx="${CXX:-clang++}"

cuda_include() {  # as setup.py looks for it
  local nvcc candidate
  nvcc="$(command -v nvcc || true)"
  for candidate in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /opt/cuda \
      ${nvcc:+"$(dirname "$(dirname "$(readlink -f "$nvcc")")")"}; do
    if [[ -n "$candidate" && -f "$candidate/include/cuda.h" ]]; then
      echo "$candidate/include"
      return
    fi
  done
  echo "CUDA headers not found (cuda.h): set CUDA_HOME to a CUDA toolkit" >&2
  exit 1
}

if ! command -v "$cxx" >/dev/null; then
  echo "$cxx not found: install clang (Debian: apt-get install -y clang), or set CXX" >&2
  exit 1
fi
include="$(cuda_include)"
mkdir -p "$out"
flags=(-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined
       -fno-sanitize-recover=undefined -I"$include")

"$cxx" "${flags[@]}" -fPIC -shared -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so.1" \
  "$here/fake_cuda.cpp"
"$cxx" "${flags[@]}" -fsanitize=fuzzer -I"$root/foundry_alloc/csrc" -I"$root/foundry_trace/csrc" \
  -o "$out/fuzz_restore" "$here/fuzz_restore.cpp" "$root"/foundry_trace/csrc/*.cpp \
  "$out/libcuda.so.1" -Wl,-rpath,'$ORIGIN' -ldl
"$cxx" "${flags[@]}" -fsanitize=fuzzer -I"$root/foundry_trace/csrc" -o "$out/fuzz_blob_read" \
  "$here/fuzz_blob_read.cpp" "$root/foundry_trace/csrc/blob_read.cpp" "$root/foundry_trace/csrc/sha256.cpp" -ldl -lz

cat <<EOF
built $out/fuzz_restore (and the stand-in driver $out/libcuda.so.1 beside it) and $out/fuzz_blob_read
run it on a copy of the seed corpus (libFuzzer adds what it finds to the first directory):
  mkdir -p $out/corpus && cp $here/corpus/* $out/corpus/
  $out/fuzz_restore $out/corpus $here/regressions -max_total_time=600 -rss_limit_mb=4096
replay the regressions (or one crashing input):
  $out/fuzz_restore $here/regressions/*
a crash leaves crash-<sha1> in the working directory: keep it in $here/regressions/
the same for fuzz_blob_read with its seeds in $here/corpus_blobs
EOF
