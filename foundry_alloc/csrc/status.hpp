// Status codes shared by the C++ core and the C ABI (mirrored in foundry_alloc/_native.py).
#pragma once

namespace foundry {

enum Status : int {
  kOk = 0,
  kOutOfMemory = 1,         // the device has no physical memory left for the request
  kOutOfAddressSpace = 2,   // the arena's slice of the reserved range is full
  kReservationFailed = 3,   // the fixed virtual range could not be reserved at its base
  kDriverError = 4,         // any other driver failure
  kInvalidArgument = 5,     // a caller passed something the allocator cannot accept
  kUnknownPointer = 6,      // free() of an address this allocator never handed out
};

}  // namespace foundry
