// The paged KV pool on the GPU, laid out as on the CPU: page-major,
// [page][layer][key | value][offset][kv_dim], of f32, bf16 or f16 values
// (entry points `_f32`, `_bf16`, `_f16`). `slots[r]` is the position of row r
// in the pool: page * page_size + offset.

__device__ __forceinline__ size_t kv_offset(unsigned int slot, int layer, int kind, int layers, int page_size,
                                            int kv_dim) {
    size_t page = slot / page_size, off = slot % page_size;
    return (((page * layers + layer) * 2 + kind) * page_size + off) * (size_t)kv_dim;
}

// Grid: one block per row; stores the row's key and value (rounded to the pool's type).
template <typename T>
__device__ __forceinline__ void kv_write(T* pool, const float* k, const float* v, const unsigned int* slots,
                                         int layer, int layers, int page_size, int kv_dim) {
    unsigned int slot = slots[blockIdx.x];
    T* kd = pool + kv_offset(slot, layer, 0, layers, page_size, kv_dim);
    T* vd = pool + kv_offset(slot, layer, 1, layers, page_size, kv_dim);
    const float* ks = k + (size_t)blockIdx.x * kv_dim;
    const float* vs = v + (size_t)blockIdx.x * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kv_store(&kd[i], ks[i]);
        kv_store(&vd[i], vs[i]);
    }
}

// Copy-on-write: page `dst` becomes a copy of page `src` (all layers).
template <typename T>
__device__ __forceinline__ void copy_page(T* pool, unsigned int src, unsigned int dst, long long page_len) {
    const T* s = pool + (size_t)src * page_len;
    T* d = pool + (size_t)dst * page_len;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)page_len;
         i += (size_t)blockDim.x * gridDim.x)
        d[i] = s[i];
}

// Entry points, one per pool type (written out: the kernel tables are read from the source).
extern "C" __global__ void kv_write_f32(float* pool, const float* k, const float* v, const unsigned int* slots,
                                         int layer, int layers, int page_size, int kv_dim) {
    kv_write(pool, k, v, slots, layer, layers, page_size, kv_dim);
}
extern "C" __global__ void copy_page_f32(float* pool, unsigned int src, unsigned int dst, long long page_len) {
    copy_page(pool, src, dst, page_len);
}

extern "C" __global__ void kv_write_bf16(kv_bf16* pool, const float* k, const float* v, const unsigned int* slots,
                                         int layer, int layers, int page_size, int kv_dim) {
    kv_write(pool, k, v, slots, layer, layers, page_size, kv_dim);
}
extern "C" __global__ void copy_page_bf16(kv_bf16* pool, unsigned int src, unsigned int dst, long long page_len) {
    copy_page(pool, src, dst, page_len);
}

extern "C" __global__ void kv_write_f16(kv_f16* pool, const float* k, const float* v, const unsigned int* slots,
                                         int layer, int layers, int page_size, int kv_dim) {
    kv_write(pool, k, v, slots, layer, layers, page_size, kv_dim);
}
extern "C" __global__ void copy_page_f16(kv_f16* pool, unsigned int src, unsigned int dst, long long page_len) {
    copy_page(pool, src, dst, page_len);
}
