"""One-off probe of driver facts the allocator design relies on (run on the device)."""
import ctypes, json, os, time, glob, sys
from cuda.bindings import driver as cu

def ck(r):
    err = r[0] if isinstance(r, tuple) else r
    if err != cu.CUresult.CUDA_SUCCESS:
        raise RuntimeError(str(err))
    return r[1:] if isinstance(r, tuple) and len(r) > 1 else None

out = {}
ck(cu.cuInit(0))
dev = ck(cu.cuDeviceGet(0))[0]
# reservation without a current context
for base, size in [(0x200000000000, 1 << 40), (0x200000000000, 4 << 40), (0x200000000000, 16 << 40)]:
    r = cu.cuMemAddressReserve(size, 0, base, 0)
    key = f"noctx_reserve_{base:#x}_{size >> 40}TiB"
    if r[0] == cu.CUresult.CUDA_SUCCESS:
        out[key] = hex(int(r[1]))
        ck(cu.cuMemAddressFree(r[1], size))
    else:
        out[key] = str(r[0])
ctx = ck(cu.cuDevicePrimaryCtxRetain(dev))[0]
ck(cu.cuCtxSetCurrent(ctx))
prop = cu.CUmemAllocationProp()
prop.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
prop.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
prop.location.id = 0
out["gran_min"] = int(ck(cu.cuMemGetAllocationGranularity(prop, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM))[0])
out["gran_rec"] = int(ck(cu.cuMemGetAllocationGranularity(prop, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))[0])
for base, size in [(0x200000000000, 4 << 40), (0x7f0000000000, 1 << 40)]:
    r = cu.cuMemAddressReserve(size, 0, base, 0)
    out[f"ctx_reserve_{base:#x}_{size >> 40}TiB"] = hex(int(r[1])) if r[0] == 0 else str(r[0])
    if r[0] == 0:
        # map/unmap timing for a 2 MiB and a 64 MiB extent
        for n in (2 << 20, 64 << 20):
            t = time.perf_counter()
            h = ck(cu.cuMemCreate(n, prop, 0))[0]
            ck(cu.cuMemMap(r[1], n, 0, h, 0))
            acc = cu.CUmemAccessDesc(); acc.location = prop.location
            acc.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
            ck(cu.cuMemSetAccess(r[1], n, [acc], 1))
            t1 = time.perf_counter()
            ck(cu.cuMemUnmap(r[1], n)); ck(cu.cuMemRelease(h))
            out[f"map_us_{n >> 20}MiB"] = round((t1 - t) * 1e6, 1)
            out[f"unmap_us_{n >> 20}MiB"] = round((time.perf_counter() - t1) * 1e6, 1)
        ck(cu.cuMemAddressFree(r[1], size))
# driver call costs through ctypes (closest to what C pays, plus ~0.1us ctypes)
libcuda = ctypes.CDLL("libcuda.so.1")
stream = ck(cu.cuStreamCreate(1))[0]
st = ctypes.c_void_p(int(stream)); status = ctypes.c_int()
N = 20000
t = time.perf_counter()
for _ in range(N):
    libcuda.cuStreamIsCapturing(st, ctypes.byref(status))
out["cuStreamIsCapturing_us_ctypes"] = round((time.perf_counter() - t) / N * 1e6, 3)
t = time.perf_counter()
for _ in range(N):
    pass
out["empty_loop_us"] = round((time.perf_counter() - t) / N * 1e6, 3)
ev = ck(cu.cuEventCreate(2))[0]
evp = ctypes.c_void_p(int(ev))
t = time.perf_counter()
for _ in range(N):
    libcuda.cuEventRecord(evp, st); libcuda.cuStreamWaitEvent(None, evp, 0)
out["event_record_wait_us_ctypes"] = round((time.perf_counter() - t) / N * 1e6, 3)
import torch
T = os.path.dirname(torch.__file__)
out["torch"] = torch.__version__
out["c10_syms"] = os.popen(f"nm -D {T}/lib/libc10.so | grep -c OutOfMemoryError").read().strip()
out["c10_oom_ctor"] = os.popen(f"nm -D {T}/lib/libc10.so | grep OutOfMemoryErrorC1").read().strip()
out["cuda_h"] = glob.glob("/usr/local/cuda*/include/cuda.h") + glob.glob("/usr/local/cuda*/targets/*/include/cuda.h")
out["nvtx3"] = glob.glob("/usr/local/cuda/include/nvtx3/nvToolsExt.h")
out["py"] = sys.version
for mod in ["pydantic", "nvtx", "cupti", "hypothesis", "rich", "matplotlib", "setuptools"]:
    try:
        m = __import__(mod); out[f"mod_{mod}"] = getattr(m, "__version__", "present")
    except Exception as e:
        out[f"mod_{mod}"] = f"missing: {e}"
out["setuptools_ver"] = os.popen("python3 -m pip show setuptools 2>/dev/null | grep Version").read().strip()
out["maps_tail"] = open("/proc/self/maps").read().splitlines()[-5:]
print(json.dumps(out, indent=1))
