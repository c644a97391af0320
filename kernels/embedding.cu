// Embedding gather: out[r] = table[ids[r]] for rows of `dim` features.
// Grid: one block per row.

extern "C" __global__ void embedding_f32(const float* table, const unsigned int* ids, float* out, int dim) {
    const float* src = table + (size_t)ids[blockIdx.x] * dim;
    float* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = src[i];
}

extern "C" __global__ void embedding_bf16(const bf16_t* table, const unsigned int* ids, float* out, int dim) {
    const bf16_t* src = table + (size_t)ids[blockIdx.x] * dim;
    float* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = bf16_to_f32(src[i]);
}

extern "C" __global__ void embedding_f16(const f16_t* table, const unsigned int* ids, float* out, int dim) {
    const f16_t* src = table + (size_t)ids[blockIdx.x] * dim;
    float* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = f16_to_f32(src[i]);
}
