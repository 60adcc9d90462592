// Raising PyTorch's own out-of-memory error from an allocator that does not link against PyTorch.
#pragma once

#include <string>

namespace foundry {

// Throws c10::OutOfMemoryError (torch.OutOfMemoryError in Python) with `message`, through the
// constructor and type information that libc10 exports; falls back to std::runtime_error (a
// RuntimeError in Python) when those symbols cannot be found.
[[noreturn]] void throw_out_of_memory(const std::string& message);

// Whether libc10's out-of-memory error can be raised in this process (false before torch loads).
bool torch_out_of_memory_available();

}  // namespace foundry
