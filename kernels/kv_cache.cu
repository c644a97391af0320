// The paged KV pool on the GPU, laid out as on the CPU: page-major,
// [page][layer][key | value][offset][kv_dim], f32. `slots[r]` is the
// position of row r in the pool: page * page_size + offset.

__device__ __forceinline__ size_t kv_offset(unsigned int slot, int layer, int kind, int layers, int page_size,
                                            int kv_dim) {
    size_t page = slot / page_size, off = slot % page_size;
    return (((page * layers + layer) * 2 + kind) * page_size + off) * (size_t)kv_dim;
}

// Grid: one block per row; stores the row's key and value.
extern "C" __global__ void kv_write_f32(float* pool, const float* k, const float* v, const unsigned int* slots,
                                        int layer, int layers, int page_size, int kv_dim) {
    unsigned int slot = slots[blockIdx.x];
    float* kd = pool + kv_offset(slot, layer, 0, layers, page_size, kv_dim);
    float* vd = pool + kv_offset(slot, layer, 1, layers, page_size, kv_dim);
    const float* ks = k + (size_t)blockIdx.x * kv_dim;
    const float* vs = v + (size_t)blockIdx.x * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kd[i] = ks[i];
        vd[i] = vs[i];
    }
}

// Copy-on-write: page `dst` becomes a copy of page `src` (all layers).
extern "C" __global__ void copy_page_f32(float* pool, unsigned int src, unsigned int dst, long long page_len) {
    const float* s = pool + (size_t)src * page_len;
    float* d = pool + (size_t)dst * page_len;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)page_len;
         i += (size_t)blockDim.x * gridDim.x)
        d[i] = s[i];
}
