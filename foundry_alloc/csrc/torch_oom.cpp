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

// Same layout as c10::SourceLocation, which the constructors take by value.
struct SourceLocation {
  const char* function;
  const char* file;
  uint32_t line;
};

// c10::OutOfMemoryError(c10::SourceLocation, std::string) or c10::Error(same), complete-object form.
using Constructor = void (*)(void* self, SourceLocation location, std::string message);

// Recent PyTorch exports OutOfMemoryError's own constructor; older releases inherit Error's
// (`using Error::Error`), which is Error's constructor followed by installing OutOfMemoryError's
// vtable: the class adds no members.
constexpr const char* kOomConstructor =
    "_ZN3c1016OutOfMemoryErrorC1ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_"
    "traitsIcESaIcEEE";
constexpr const char* kErrorConstructor =
    "_ZN3c105ErrorC1ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE";
constexpr const char* kOomVtable = "_ZTVN3c1016OutOfMemoryErrorE";
constexpr const char* kOomTypeInfo = "_ZTIN3c1016OutOfMemoryErrorE";
// Room for the exception object; c10::Error is about 200 bytes in every release so far.
constexpr size_t kObjectBytes = 1024;
// Where a vtable's address point lies: after the offset-to-top and the type-info slots.
constexpr size_t kVtableAddressPoint = 2 * sizeof(void*);

struct C10Symbols {
  Constructor oom_constructor = nullptr;
  Constructor error_constructor = nullptr;
  char* oom_vtable = nullptr;
  std::type_info* type = nullptr;
  bool usable() const {
    return type != nullptr && (oom_constructor != nullptr || (error_constructor && oom_vtable));
  }
};

// PyTorch loads its libraries with RTLD_LOCAL, so neither RTLD_DEFAULT nor a bare soname is
// guaranteed to reach them: find libc10 and libc10_cuda by path among the loaded objects.
struct Libraries {
  void* handles[2] = {nullptr, nullptr};
};

int find_libraries(dl_phdr_info* info, size_t, void* out) {
  static constexpr const char* kSuffixes[2] = {"/libc10.so", "/libc10_cuda.so"};
  const char* name = info->dlpi_name;
  const size_t length = name != nullptr ? std::strlen(name) : 0;
  for (int i = 0; i < 2; ++i) {
    const size_t suffix = std::strlen(kSuffixes[i]);
    if (length >= suffix && std::strcmp(name + length - suffix, kSuffixes[i]) == 0) {
      static_cast<Libraries*>(out)->handles[i] = dlopen(name, RTLD_NOLOAD | RTLD_LAZY);
    }
  }
  return 0;
}

void* find_symbol(const Libraries& libraries, const char* name) {
  for (void* handle : libraries.handles) {
    if (handle == nullptr) continue;
    if (void* symbol = dlsym(handle, name)) return symbol;
  }
  return dlsym(RTLD_DEFAULT, name);
}

const C10Symbols& c10_symbols() {
  static const C10Symbols symbols = [] {
    Libraries libraries;
    dl_iterate_phdr(find_libraries, &libraries);
    C10Symbols found;
    found.oom_constructor = reinterpret_cast<Constructor>(find_symbol(libraries, kOomConstructor));
    found.error_constructor = reinterpret_cast<Constructor>(find_symbol(libraries, kErrorConstructor));
    found.oom_vtable = static_cast<char*>(find_symbol(libraries, kOomVtable));
    found.type = static_cast<std::type_info*>(find_symbol(libraries, kOomTypeInfo));
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

bool torch_out_of_memory_available() { return c10_symbols().usable(); }

void throw_out_of_memory(const std::string& message) {
  const C10Symbols& c10 = c10_symbols();
  if (c10.usable()) {
    void* object = abi::__cxa_allocate_exception(kObjectBytes);
    const SourceLocation location{"foundry_malloc", __FILE__, __LINE__};
    if (c10.oom_constructor != nullptr) {
      c10.oom_constructor(object, location, message);
    } else {
      c10.error_constructor(object, location, message);
      *static_cast<void**>(object) = c10.oom_vtable + kVtableAddressPoint;
    }
    abi::__cxa_throw(object, c10.type, destroy);
  }
  throw std::runtime_error(message);
}

}  // namespace foundry
