// Kernels for the cubin trimmer's tests (tests/test_cubin_trim.py, tests/test_cubin_compact.py):
//   nvcc -cubin -arch=sm_90 -o trim_kernels.cubin trim_kernels.cu
__device__ float scale = 2.0f;
__device__ __noinline__ float twice(float v) { return v * scale; }
__global__ void kept(float* x) { x[threadIdx.x] = twice(x[threadIdx.x]); }
__global__ void unused(float* x) { x[threadIdx.x] = twice(x[threadIdx.x]) + 1.0f; }
__global__ void pointed_to(float* x) { x[0] = 3.0f; }
__device__ void* kernel_table[] = {(void*)pointed_to};  // a reference from data: keeps pointed_to
// A word the driver fills in at each load (another variable's address) next to plain data.
__device__ int target[4];
struct Tagged { int* pointer; int tag; };
__device__ Tagged tagged = {target + 1, 7};
__global__ void reads_table(void** out) { out[0] = kernel_table[0]; }
namespace { __global__ void hidden_unused(float* x) { x[1] = 4.0f; } }
void launch(float* x) { hidden_unused<<<1, 1>>>(x); }
// A jump table: .nv.constant2.<kernel> and its relocations, which name the kernel's own code.
__global__ void switched(int* x) {
  int& v = x[threadIdx.x];
  switch (v) {
    case 0: v = 11; break; case 1: v = 23; break; case 2: v = 37; break; case 3: v = 41; break;
    case 4: v = 53; break; case 5: v = 67; break; case 6: v = 71; break; case 7: v = 89; break;
  }
}
