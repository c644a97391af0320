// RMSNorm as HF's LlamaRMSNorm: y = w * (x / sqrt(mean(x^2) + eps)), in f32.
// Grid: one block per group of `dim` values (a row, or one head of a row).

extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float* out, int dim, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* yr = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    float inv = rsqrtf(block_sum(ss, scratch) / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = w[i] * (xr[i] * inv);
}

// The residual add fused with the next norm: x += y, then out = rms_norm(x).
extern "C" __global__ void add_rms_norm_f32(float* x, const float* y, const float* w, float* out, int dim,
                                            float eps) {
    __shared__ float scratch[32];
    float* xr = x + (size_t)blockIdx.x * dim;
    const float* yr = y + (size_t)blockIdx.x * dim;
    float* orow = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = xr[i] + yr[i];
        xr[i] = v;
        ss += v * v;
    }
    float inv = rsqrtf(block_sum(ss, scratch) / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = w[i] * (xr[i] * inv);
}
