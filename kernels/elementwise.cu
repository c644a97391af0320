// Element-wise ops over flat f32 buffers. Grid-stride loops: any grid works.

#define GRID_STRIDE(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)(n); \
                               i += (size_t)blockDim.x * gridDim.x)

// SwiGLU: gate = silu(gate) * up.
extern "C" __global__ void silu_mul_f32(float* gate, const float* up, long long n) {
    GRID_STRIDE(i, n) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// x += y.
extern "C" __global__ void add_f32(float* x, const float* y, long long n) {
    GRID_STRIDE(i, n) x[i] += y[i];
}

// Adds `bias` (width `cols`) to every row of `out`.
extern "C" __global__ void add_bias_f32(float* out, const float* bias, long long n, int cols) {
    GRID_STRIDE(i, n) out[i] += bias[i % cols];
}

// Activations to bf16 for the tensor-core GEMMs.
extern "C" __global__ void cast_f32_bf16(const float* x, bf16_t* out, long long n) {
    GRID_STRIDE(i, n) out[i] = f32_to_bf16(x[i]);
}

extern "C" __global__ void cast_f32_f16(const float* x, f16_t* out, long long n) {
    GRID_STRIDE(i, n) out[i] = f32_to_f16(x[i]);
}
