// All-reduce over peer memory at fixed addresses (peer.py compiles this with NVRTC at run time).
//
// Contract: a kernel's arguments are the same on every rank: the data's address (the allocator
// makes it equal on every rank), its size in 16-byte packs, and the window's base. Everything
// that differs between ranks is read from memory: the rank's own buffer is mapped a second time
// at the window's base (slot 0), rank r's buffer at base + (r + 1) * stride (window.py), and
// each buffer starts with a Header that the communicator writes (rank, world size, stride,
// staging capacity, time limit) and the kernels update (sequence, completed blocks, error).
//
// Invariants:
// - Every rank sums element i as ((x_0 + x_1) + x_2) + ... in float32, in rank order, and
//   rounds once: every rank's result equals every other rank's, and one-shot equals two-shot.
// - A barrier is per block: block b of a collective moves the same packs on every rank (same
//   grid, same loop), so it only waits for block b of each peer. Flags carry the collective's
//   sequence number (the same on every rank, since ranks run the same collectives in order).
// - Staging alternates between two areas by the sequence's parity: a rank cannot enter
//   collective s + 2 (and overwrite area s % 2) before every peer has finished collective s,
//   because collective s + 1's barriers need every peer to have started it, on a stream.
// - Waits are bounded: past the header's time limit the first waiting thread records the
//   error (in the header, and in host memory the host polls), and every later barrier skips
//   its wait: a missing peer never hangs the stream, the host raises StallError instead.

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

#define MAX_RANKS 8
#define MAX_BLOCKS 64
#define THREADS 512
#define FLAGS_OFFSET 4096
#define DATA_OFFSET 65536
#define MAGIC 0x3152454550444e46ull  // "FNDPEER1"

struct Header {
    u64 magic;
    u32 rank, world;
    u64 stride;          // bytes between two ranks' slots in the window
    u64 capacity;        // bytes of one staging area
    u64 timeout_ns;      // a barrier's longest wait
    u64 host_error;      // device address of the host-mapped ErrorRecord (0: none)
    u64 sequence;        // collectives this rank has completed
    u32 done_blocks;     // blocks of the running collective that have finished
    u32 solo;            // 1: a SAVE process with no peer: barriers do not wait
    u32 error;           // 0, or ERROR_STALL once a peer did not arrive in time
    u32 error_peer;
    u64 error_sequence;
    u32 error_kind;      // which kernel: KIND_* | dtype << 8
    u32 error_phase;
    u64 error_packs;
};

struct ErrorRecord {     // host-mapped: the host reads it without a CUDA call
    u32 error, peer, kind, phase;
    u64 sequence, packs;
};

#define ERROR_STALL 1u
#define KIND_ONE_SHOT 1u
#define KIND_TWO_SHOT 2u

__device__ __forceinline__ u64 load_acquire(const u64* p) {
    u64 v;
    asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void store_release(u64* p, u64 v) {
    asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ u64 now_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ uint4 load_peer(const uint4* p) {  // L2 only: written by other GPUs or processes
    uint4 v;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ u64* flag(Header* h, u32 phase, u32 block, u32 rank) {
    return (u64*)((char*)h + FLAGS_OFFSET) + (phase * MAX_BLOCKS + block) * MAX_RANKS + rank;
}

__device__ __forceinline__ Header* peer_header(char* window, u64 stride, u32 rank) {
    return (Header*)(window + (u64)(rank + 1) * stride);
}

// Staging area of the collective `sequence` in a buffer (capacity: equal on every rank, so a
// rank's own header says where a peer's area lies without a read of peer memory).
__device__ __forceinline__ uint4* staging(Header* h, u64 capacity, u64 sequence) {
    return (uint4*)((char*)h + DATA_OFFSET + (sequence & 1) * capacity);
}

__device__ void record_stall(Header* self, u32 peer, u64 sequence, u32 kind, u32 phase, u64 packs) {
    if (atomicCAS(&self->error, 0u, ERROR_STALL) != 0u) return;
    self->error_peer = peer;
    self->error_sequence = sequence;
    self->error_kind = kind;
    self->error_phase = phase;
    self->error_packs = packs;
    if (self->host_error) {
        ErrorRecord* record = (ErrorRecord*)self->host_error;
        record->peer = peer;
        record->kind = kind;
        record->phase = phase;
        record->sequence = sequence;
        record->packs = packs;
        __threadfence_system();
        *(volatile u32*)&record->error = ERROR_STALL;
    }
    __threadfence_system();
}

// Block-wide barrier with every rank's block of the same index. Returns false once the
// communicator has failed (now or before): the caller then skips the data movement.
__device__ bool barrier(Header* self, char* window, u32 phase, u64 sequence, u32 kind, u64 packs) {
    const u32 world = self->world, rank = self->rank;
    __syncthreads();
    if (threadIdx.x < world && !self->solo) {
        const u32 peer = threadIdx.x;
        __threadfence_system();
        store_release(flag(peer_header(window, self->stride, peer), phase, blockIdx.x, rank), sequence);
        const u64* mine = flag(self, phase, blockIdx.x, peer);
        if (load_acquire(mine) < sequence && !*(volatile u32*)&self->error) {
            const u64 start = now_ns(), limit = self->timeout_ns;
            while (load_acquire(mine) < sequence) {
                if (*(volatile u32*)&self->error) break;
                if (now_ns() - start > limit) {
                    record_stall(self, peer, sequence, kind, phase, packs);
                    break;
                }
                __nanosleep(64);
            }
        }
    }
    __syncthreads();
    return *(volatile u32*)&self->error == 0u;
}

// The sequence number of the collective this kernel runs (read before any block finishes).
__device__ u64 begin(Header* self) {
    __shared__ u64 sequence;
    if (threadIdx.x == 0) sequence = *(volatile u64*)&self->sequence + 1;
    __syncthreads();
    return sequence;
}

// The last block to finish advances the rank's sequence.
__device__ void finish(Header* self, u64 sequence) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        if (atomicAdd(&self->done_blocks, 1u) == gridDim.x - 1) {
            self->done_blocks = 0;
            *(volatile u64*)&self->sequence = sequence;
            __threadfence();
        }
    }
}

struct Bf16 {
    static constexpr u32 code = 1;
    static __device__ __forceinline__ float lo(u32 w) { return __uint_as_float(w << 16); }
    static __device__ __forceinline__ float hi(u32 w) { return __uint_as_float(w & 0xffff0000u); }
    static __device__ __forceinline__ u32 pack(float a, float b) {
        u16 x, y;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(x) : "f"(a));
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(y) : "f"(b));
        return (u32)x | ((u32)y << 16);
    }
};

struct F16 {
    static constexpr u32 code = 2;
    static __device__ __forceinline__ float half(u16 h) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
    }
    static __device__ __forceinline__ float lo(u32 w) { return half((u16)(w & 0xffffu)); }
    static __device__ __forceinline__ float hi(u32 w) { return half((u16)(w >> 16)); }
    static __device__ __forceinline__ u32 pack(float a, float b) {
        u16 x, y;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(x) : "f"(a));
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(y) : "f"(b));
        return (u32)x | ((u32)y << 16);
    }
};

// A pack's running float32 sums: 8 for 16-bit types, 4 for float32.
template <class T>
struct Sum {
    float v[8];
    __device__ __forceinline__ void set(uint4 p) {
        const u32 w[4] = {p.x, p.y, p.z, p.w};
        for (int i = 0; i < 4; ++i) { v[2 * i] = T::lo(w[i]); v[2 * i + 1] = T::hi(w[i]); }
    }
    __device__ __forceinline__ void add(uint4 p) {
        const u32 w[4] = {p.x, p.y, p.z, p.w};
        for (int i = 0; i < 4; ++i) { v[2 * i] += T::lo(w[i]); v[2 * i + 1] += T::hi(w[i]); }
    }
    __device__ __forceinline__ uint4 get() const {
        return make_uint4(T::pack(v[0], v[1]), T::pack(v[2], v[3]), T::pack(v[4], v[5]), T::pack(v[6], v[7]));
    }
};

struct F32 { static constexpr u32 code = 3; };

template <>
struct Sum<F32> {
    float v[4];
    __device__ __forceinline__ void set(uint4 p) {
        v[0] = __uint_as_float(p.x); v[1] = __uint_as_float(p.y); v[2] = __uint_as_float(p.z); v[3] = __uint_as_float(p.w);
    }
    __device__ __forceinline__ void add(uint4 p) {
        v[0] += __uint_as_float(p.x); v[1] += __uint_as_float(p.y); v[2] += __uint_as_float(p.z); v[3] += __uint_as_float(p.w);
    }
    __device__ __forceinline__ uint4 get() const {
        return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
    }
};

// What a collective reads of the window, from the rank's own header, once.
struct View {
    char* window;
    u64 stride, capacity, sequence;
    u32 world, rank;
    __device__ __forceinline__ const uint4* area(u32 r) const { return staging(peer_header(window, stride, r), capacity, sequence); }
};

__device__ __forceinline__ View view(char* window, u64 sequence) {
    const Header* self = (const Header*)window;
    return View{window, self->stride, self->capacity, sequence, self->world, self->rank};
}

template <class T>
__device__ __forceinline__ uint4 reduce_pack(const View& v, u64 index) {
    Sum<T> sum;
    sum.set(load_peer(v.area(0) + index));
    for (u32 r = 1; r < v.world; ++r) sum.add(load_peer(v.area(r) + index));
    return sum.get();
}

// One-shot: every rank stages its whole input, then reads every rank's and sums (decode sizes).
template <class T>
__device__ void one_shot(uint4* data, u64 packs, char* window) {
    Header* self = (Header*)window;
    const u64 sequence = begin(self);
    const View v = view(window, sequence);
    const u32 kind = KIND_ONE_SHOT | (T::code << 8);
    uint4* mine = staging(self, v.capacity, sequence);
    const u64 first = (u64)blockIdx.x * blockDim.x + threadIdx.x, step = (u64)gridDim.x * blockDim.x;
    for (u64 i = first; i < packs; i += step) mine[i] = data[i];
    if (barrier(self, window, 0, sequence, kind, packs))
        for (u64 i = first; i < packs; i += step) data[i] = reduce_pack<T>(v, i);
    finish(self, sequence);
}

// Two-shot: rank r sums slice r of every rank's input into its own staging (reduce-scatter),
// then every rank gathers slice q from rank q (all-gather): large messages. packs % world == 0.
template <class T>
__device__ void two_shot(uint4* data, u64 packs, char* window) {
    Header* self = (Header*)window;
    const u64 sequence = begin(self);
    const View v = view(window, sequence);
    const u32 kind = KIND_TWO_SHOT | (T::code << 8);
    const u64 slice = packs / v.world;
    uint4* mine = staging(self, v.capacity, sequence);
    const u64 first = (u64)blockIdx.x * blockDim.x + threadIdx.x, step = (u64)gridDim.x * blockDim.x;
    for (u64 j = first; j < slice; j += step)
        for (u32 q = 0; q < v.world; ++q) mine[q * slice + j] = data[q * slice + j];
    if (barrier(self, window, 0, sequence, kind, packs)) {
        for (u64 j = first; j < slice; j += step) mine[v.rank * slice + j] = reduce_pack<T>(v, v.rank * slice + j);
        if (barrier(self, window, 1, sequence, kind, packs))
            for (u64 j = first; j < slice; j += step)
                for (u32 q = 0; q < v.world; ++q) data[q * slice + j] = load_peer(v.area(q) + q * slice + j);
    }
    finish(self, sequence);
}

#define KERNELS(NAME, T)                                                                                       \
    extern "C" __global__ void __launch_bounds__(THREADS) foundry_peer_one_shot_##NAME(uint4* data, u64 packs, char* window) { \
        one_shot<T>(data, packs, window);                                                                      \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS) foundry_peer_two_shot_##NAME(uint4* data, u64 packs, char* window) { \
        two_shot<T>(data, packs, window);                                                                      \
    }

KERNELS(bfloat16, Bf16)
KERNELS(float16, F16)
KERNELS(float32, F32)
