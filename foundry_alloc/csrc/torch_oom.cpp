#include "torch_oom.hpp"

#include <cxxabi.h>
#include <dlfcn.h>
#include <link.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <typeinfo>

namespace foundry {
namespace {

// Same layout as c10::SourceLocation, which the constructor takes by value.
struct SourceLocation {
  const char* function;
  const char* file;
  uint32_t line;
};

// c10::OutOfMemoryError::OutOfMemoryError(c10::SourceLocation, std::string), complete-object form.
using Constructor = void (*)(void* self, SourceLocation location, std::string message);

constexpr const char* kConstructor =
    "_ZN3c1016OutOfMemoryErrorC1ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_"
    "traitsIcESaIcEEE";
constexpr const char* kTypeInfo = "_ZTIN3c1016OutOfMemoryErrorE";
// Room for the exception object; c10::Error is about 200 bytes in every release so far.
constexpr size_t kObjectBytes = 1024;

struct C10Symbols {
  Constructor construct = nullptr;
  std::type_info* type = nullptr;
};

// The loaded libc10, found by path among the process's objects: PyTorch loads it with
// RTLD_LOCAL, so neither RTLD_DEFAULT nor a bare soname is guaranteed to reach it.
int find_library(dl_phdr_info* info, size_t, void* out) {
  const char* name = info->dlpi_name;
  const size_t length = name != nullptr ? std::strlen(name) : 0;
  constexpr char kSuffix[] = "/libc10.so";
  constexpr size_t kSuffixLength = sizeof kSuffix - 1;
  if (length < kSuffixLength || std::strcmp(name + length - kSuffixLength, kSuffix) != 0) return 0;
  *static_cast<void**>(out) = dlopen(name, RTLD_NOLOAD | RTLD_LAZY);
  return *static_cast<void**>(out) != nullptr;
}

const C10Symbols& c10_symbols() {
  static const C10Symbols symbols = [] {
    C10Symbols found;
    void* library = nullptr;
    dl_iterate_phdr(find_library, &library);
    void* scope = library != nullptr ? library : RTLD_DEFAULT;
    found.construct = reinterpret_cast<Constructor>(dlsym(scope, kConstructor));
    found.type = static_cast<std::type_info*>(dlsym(scope, kTypeInfo));
    return found;
  }();
  return symbols;
}

// Destroys the exception through its virtual destructor (the first slot of its vtable).
void destroy(void* object) {
  using Destructor = void (*)(void*);
  Destructor* vtable = *static_cast<Destructor**>(object);
  vtable[0](object);
}

}  // namespace

bool torch_out_of_memory_available() {
  const C10Symbols& c10 = c10_symbols();
  return c10.construct != nullptr && c10.type != nullptr;
}

void throw_out_of_memory(const std::string& message) {
  if (torch_out_of_memory_available()) {
    const C10Symbols& c10 = c10_symbols();
    void* object = abi::__cxa_allocate_exception(kObjectBytes);
    c10.construct(object, SourceLocation{"foundry_malloc", __FILE__, __LINE__}, message);
    abi::__cxa_throw(object, c10.type, destroy);
  }
  throw std::runtime_error(message);
}

}  // namespace foundry
