namespace { __global__ void hidden(float* x){x[0]=1;} }
__global__ void shown(float* x){x[0]=2;}
void launch(float* x){hidden<<<1,1>>>(x);}
