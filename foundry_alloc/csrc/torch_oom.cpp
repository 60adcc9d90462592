#include "torch_oom.hpp"

#include <cxxabi.h>
#include <dlfcn.h>

#include <cstdint>
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

C10Symbols find_c10() {
  C10Symbols symbols;
  void* library = dlopen("libc10.so", RTLD_NOLOAD | RTLD_LAZY);
  void* scope = library != nullptr ? library : RTLD_DEFAULT;
  symbols.construct = reinterpret_cast<Constructor>(dlsym(scope, kConstructor));
  symbols.type = static_cast<std::type_info*>(dlsym(scope, kTypeInfo));
  return symbols;
}

// Destroys the exception through its virtual destructor (the first slot of its vtable).
void destroy(void* object) {
  using Destructor = void (*)(void*);
  Destructor* vtable = *static_cast<Destructor**>(object);
  vtable[0](object);
}

}  // namespace

void throw_out_of_memory(const std::string& message) {
  static const C10Symbols c10 = find_c10();
  if (c10.construct != nullptr && c10.type != nullptr) {
    void* object = abi::__cxa_allocate_exception(kObjectBytes);
    c10.construct(object, SourceLocation{"foundry_malloc", __FILE__, __LINE__}, message);
    abi::__cxa_throw(object, c10.type, destroy);
  }
  throw std::runtime_error(message);
}

}  // namespace foundry
