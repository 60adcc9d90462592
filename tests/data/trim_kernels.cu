// Kernels for the cubin trimmer's tests (tests/test_cubin_trim.py):
//   nvcc -cubin -arch=sm_90 -o trim_kernels.cubin trim_kernels.cu
__device__ float scale = 2.0f;
__device__ __noinline__ float twice(float v) { return v * scale; }
__global__ void kept(float* x) { x[threadIdx.x] = twice(x[threadIdx.x]); }
__global__ void unused(float* x) { x[threadIdx.x] = twice(x[threadIdx.x]) + 1.0f; }
__global__ void pointed_to(float* x) { x[0] = 3.0f; }
__device__ void* kernel_table[] = {(void*)pointed_to};  // a reference from data: keeps pointed_to
__global__ void reads_table(void** out) { out[0] = kernel_table[0]; }
namespace { __global__ void hidden_unused(float* x) { x[1] = 4.0f; } }
void launch(float* x) { hidden_unused<<<1, 1>>>(x); }
