__device__ int counter;
__constant__ float table[4];
__global__ void add_one(float* x){x[threadIdx.x]+=table[0]+counter;}
