// Causal attention of each query row over its sequence's keys in the paged
// pool, read in place through the block table (no gather). One block per
// (row, head) serves decode rows and prefill rows alike: each row attends to
// positions first..pos of its own sequence (first > 0 under a sliding window).
//
// The block's warps take keys in turn; lanes split the head dimension. Each
// warp keeps an online softmax (running max m, sum l, weighted values acc),
// so no score vector is materialised; the warps' partial results are merged
// at the end. Scores and softmax are f32, as HF's eager attention.
//
// Long contexts with few rows (decode) are also split along the sequence:
// with gridDim.z = S > 1, block z takes keys [first + z*split_len, ...) and
// writes its unnormalised partial (m, l, acc) to scratch; attention_merge_f32
// then combines the S partials of each (row, head).

#define ATTN_WARPS 4
#define MAX_HEAD_DIM 256
#define PER_LANE (MAX_HEAD_DIM / 32)

template <typename T>
__device__ __forceinline__ void paged_attention(
    float* s_m, float* s_l, float (*s_acc)[MAX_HEAD_DIM],  // the block's shared memory
    const float* q,                 // [rows, num_heads * head_dim]
    const T* pool,                  // the KV pool (see kv_cache.cu)
    float* out,                     // [rows, num_heads * head_dim]
    const unsigned int* tables,     // block tables of all sequences, concatenated
    const unsigned int* table_start,// per row: where its sequence's table starts
    const unsigned int* positions,  // per row: its position in its sequence
    int num_heads, int num_kv_heads, int head_dim,
    int layer, int layers, int page_size,
    int window,                     // 0: no sliding window
    float scale,
    int split_len,                  // keys per split (gridDim.z splits)
    float* part_ml,                 // with splits: [rows, heads, splits, 2] (m, l)
    float* part_acc) {              // with splits: [rows, heads, splits, head_dim]

    const int row = blockIdx.x, head = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kv_head = head / (num_heads / num_kv_heads);
    const int kv_dim = num_kv_heads * head_dim;
    const unsigned int pos = positions[row];
    const unsigned int first = (window > 0 && pos + 1 > (unsigned int)window) ? pos + 1 - window : 0;
    const unsigned int* table = tables + table_start[row];

    float qv[PER_LANE], acc[PER_LANE];
    const float* qh = q + (size_t)row * num_heads * head_dim + (size_t)head * head_dim;
    for (int c = 0; c < PER_LANE; c++) {
        int i = c * 32 + lane;
        qv[c] = i < head_dim ? qh[i] * scale : 0.0f;
        acc[c] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;

    const unsigned int begin = first + blockIdx.z * (unsigned int)split_len;
    const unsigned int end = gridDim.z == 1 ? pos + 1 : min(pos + 1, begin + (unsigned int)split_len);
    for (unsigned int j = begin + warp; j < end; j += ATTN_WARPS) {
        size_t page = table[j / page_size];
        size_t base = ((page * layers + layer) * 2) * (size_t)page_size * kv_dim;
        const T* key = pool + base + (size_t)(j % page_size) * kv_dim + (size_t)kv_head * head_dim;
        const T* val = key + (size_t)page_size * kv_dim;  // the value block follows the key block
        float partial = 0.0f;
        for (int c = 0; c < PER_LANE; c++) {
            int i = c * 32 + lane;
            if (i < head_dim) partial += qv[c] * kv_load(key[i]);
        }
        float s = warp_sum(partial);
        float m_new = fmaxf(m, s);
        float correction = expf(m - m_new);
        float p = expf(s - m_new);
        l = l * correction + p;
        for (int c = 0; c < PER_LANE; c++) {
            int i = c * 32 + lane;
            if (i < head_dim) acc[c] = acc[c] * correction + p * kv_load(val[i]);
        }
        m = m_new;
    }

    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
    for (int c = 0; c < PER_LANE; c++) {
        int i = c * 32 + lane;
        if (i < head_dim) s_acc[warp][i] = acc[c];
    }
    __syncthreads();

    float m_all = NEG_INF;
    for (int w = 0; w < ATTN_WARPS; w++) m_all = fmaxf(m_all, s_m[w]);
    // A split past the end of a short sequence saw no key: it contributes nothing.
    const bool empty = m_all == NEG_INF;
    float denom = 0.0f;
    for (int w = 0; w < ATTN_WARPS; w++) denom += empty ? 0.0f : s_l[w] * expf(s_m[w] - m_all);
    if (gridDim.z == 1) {
        float* oh = out + (size_t)row * num_heads * head_dim + (size_t)head * head_dim;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            float num = 0.0f;
            for (int w = 0; w < ATTN_WARPS; w++) num += s_acc[w][i] * expf(s_m[w] - m_all);
            oh[i] = num / denom;
        }
        return;
    }
    const size_t part = ((size_t)row * num_heads + head) * gridDim.z + blockIdx.z;
    if (threadIdx.x == 0) {
        part_ml[2 * part] = m_all;
        part_ml[2 * part + 1] = denom;
    }
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float num = 0.0f;
        if (!empty)
            for (int w = 0; w < ATTN_WARPS; w++) num += s_acc[w][i] * expf(s_m[w] - m_all);
        part_acc[part * head_dim + i] = num;
    }
}

// Combines the `splits` partial results of each (row, head): grid (rows, heads).
extern "C" __global__ void attention_merge_f32(const float* part_ml, const float* part_acc, float* out,
                                               int num_heads, int head_dim, int splits) {
    const int row = blockIdx.x, head = blockIdx.y;
    const size_t first = ((size_t)row * num_heads + head) * splits;
    float m_all = NEG_INF;
    for (int z = 0; z < splits; z++) m_all = fmaxf(m_all, part_ml[2 * (first + z)]);
    float denom = 0.0f;
    for (int z = 0; z < splits; z++) {
        float m = part_ml[2 * (first + z)];
        if (m != NEG_INF) denom += part_ml[2 * (first + z) + 1] * expf(m - m_all);
    }
    float* oh = out + (size_t)row * num_heads * head_dim + (size_t)head * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float num = 0.0f;
        for (int z = 0; z < splits; z++) {
            float m = part_ml[2 * (first + z)];
            if (m != NEG_INF) num += part_acc[(first + z) * head_dim + i] * expf(m - m_all);
        }
        oh[i] = num / denom;
    }
}

// Prefill: a block takes a tile of up to PREFILL_ROWS consecutive rows of
// one sequence (one head) and walks the keys in tiles of PREFILL_KEYS,
// loading each key/value tile into shared memory once for all its rows
// (rows of one sequence share their keys, so global reads drop by the tile
// height). Online softmax per row, as above; the score matrix never exists.
// Grid: (tiles, heads); block: 128 threads; dynamic shared memory:
// (PREFILL_ROWS + 2 * PREFILL_KEYS) * head_dim floats.
#define PREFILL_ROWS 16
#define PREFILL_KEYS 16
#define ROWS_PER_WARP (PREFILL_ROWS / ATTN_WARPS)

template <typename T>
__device__ __forceinline__ void paged_prefill_attention(
    float* smem, const float* q, const T* pool, float* out,
    const unsigned int* tables, const unsigned int* table_start, const unsigned int* positions,
    const unsigned int* tile_first,  // per tile: its first row
    const unsigned int* tile_rows,   // per tile: how many rows (<= PREFILL_ROWS)
    int num_heads, int num_kv_heads, int head_dim, int layer, int layers, int page_size, int window,
    float scale) {
    float* s_q = smem;                                   // [PREFILL_ROWS][head_dim]
    float* s_k = s_q + PREFILL_ROWS * head_dim;          // [PREFILL_KEYS][head_dim]
    float* s_v = s_k + PREFILL_KEYS * head_dim;          // [PREFILL_KEYS][head_dim]

    const int head = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned int row0 = tile_first[blockIdx.x], n = tile_rows[blockIdx.x];
    const int kv_head = head / (num_heads / num_kv_heads);
    const int kv_dim = num_kv_heads * head_dim;
    const unsigned int* table = tables + table_start[row0];
    const unsigned int pos0 = positions[row0], pos_last = positions[row0 + n - 1];
    const unsigned int key_begin = (window > 0 && pos0 + 1 > (unsigned int)window) ? pos0 + 1 - window : 0;

    for (int e = threadIdx.x; e < PREFILL_ROWS * head_dim; e += blockDim.x) {
        unsigned int r = e / head_dim;
        int d = e % head_dim;
        s_q[e] = r < n ? q[((size_t)(row0 + r) * num_heads + head) * head_dim + d] * scale : 0.0f;
    }

    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][PER_LANE];
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        m[r] = NEG_INF;
        l[r] = 0.0f;
        for (int c = 0; c < PER_LANE; c++) acc[r][c] = 0.0f;
    }

    for (unsigned int k0 = key_begin; k0 <= pos_last; k0 += PREFILL_KEYS) {
        __syncthreads();  // the previous tile is no longer read
        for (int e = threadIdx.x; e < PREFILL_KEYS * head_dim; e += blockDim.x) {
            unsigned int j = k0 + e / head_dim;
            int d = e % head_dim;
            float kv = 0.0f, vv = 0.0f;
            if (j <= pos_last) {
                size_t page = table[j / page_size];
                size_t base = ((page * layers + layer) * 2) * (size_t)page_size * kv_dim;
                const T* key = pool + base + (size_t)(j % page_size) * kv_dim + (size_t)kv_head * head_dim;
                kv = kv_load(key[d]);
                vv = kv_load(key[(size_t)page_size * kv_dim + d]);
            }
            s_k[e] = kv;
            s_v[e] = vv;
        }
        __syncthreads();
        for (int r = 0; r < ROWS_PER_WARP; r++) {
            unsigned int rr = warp + r * ATTN_WARPS;
            if (rr >= n) break;
            unsigned int pos = pos0 + rr;
            unsigned int first = (window > 0 && pos + 1 > (unsigned int)window) ? pos + 1 - window : 0;
            for (int t = 0; t < PREFILL_KEYS; t++) {
                unsigned int j = k0 + t;
                if (j > pos) break;
                if (j < first) continue;
                float partial = 0.0f;
                for (int c = 0; c < PER_LANE; c++) {
                    int d = c * 32 + lane;
                    if (d < head_dim) partial += s_q[rr * head_dim + d] * s_k[t * head_dim + d];
                }
                float s = warp_sum(partial);
                float m_new = fmaxf(m[r], s);
                float correction = expf(m[r] - m_new);
                float p = expf(s - m_new);
                l[r] = l[r] * correction + p;
                for (int c = 0; c < PER_LANE; c++) {
                    int d = c * 32 + lane;
                    if (d < head_dim) acc[r][c] = acc[r][c] * correction + p * s_v[t * head_dim + d];
                }
                m[r] = m_new;
            }
        }
    }

    for (int r = 0; r < ROWS_PER_WARP; r++) {
        unsigned int rr = warp + r * ATTN_WARPS;
        if (rr >= n) break;
        float* oh = out + ((size_t)(row0 + rr) * num_heads + head) * head_dim;
        for (int c = 0; c < PER_LANE; c++) {
            int d = c * 32 + lane;
            if (d < head_dim) oh[d] = acc[r][c] / l[r];
        }
    }
}

// Entry points, one per KV pool type (written out: the kernel tables are read from the source).

extern "C" __global__ void paged_attention_f32(const float* q, const float* pool, float* out,
                                              const unsigned int* tables, const unsigned int* table_start,
                                              const unsigned int* positions, int num_heads, int num_kv_heads,
                                              int head_dim, int layer, int layers, int page_size, int window,
                                              float scale, int split_len, float* part_ml, float* part_acc) {
    __shared__ float s_m[ATTN_WARPS], s_l[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][MAX_HEAD_DIM];
    paged_attention(s_m, s_l, s_acc, q, pool, out, tables, table_start, positions, num_heads, num_kv_heads,
                    head_dim, layer, layers, page_size, window, scale, split_len, part_ml, part_acc);
}

extern "C" __global__ void paged_prefill_attention_f32(
    const float* q, const float* pool, float* out, const unsigned int* tables, const unsigned int* table_start,
    const unsigned int* positions, const unsigned int* tile_first, const unsigned int* tile_rows, int num_heads,
    int num_kv_heads, int head_dim, int layer, int layers, int page_size, int window, float scale) {
    extern __shared__ float smem[];
    paged_prefill_attention(smem, q, pool, out, tables, table_start, positions, tile_first, tile_rows, num_heads,
                            num_kv_heads, head_dim, layer, layers, page_size, window, scale);
}

extern "C" __global__ void paged_attention_bf16(const float* q, const kv_bf16* pool, float* out,
                                              const unsigned int* tables, const unsigned int* table_start,
                                              const unsigned int* positions, int num_heads, int num_kv_heads,
                                              int head_dim, int layer, int layers, int page_size, int window,
                                              float scale, int split_len, float* part_ml, float* part_acc) {
    __shared__ float s_m[ATTN_WARPS], s_l[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][MAX_HEAD_DIM];
    paged_attention(s_m, s_l, s_acc, q, pool, out, tables, table_start, positions, num_heads, num_kv_heads,
                    head_dim, layer, layers, page_size, window, scale, split_len, part_ml, part_acc);
}

extern "C" __global__ void paged_prefill_attention_bf16(
    const float* q, const kv_bf16* pool, float* out, const unsigned int* tables, const unsigned int* table_start,
    const unsigned int* positions, const unsigned int* tile_first, const unsigned int* tile_rows, int num_heads,
    int num_kv_heads, int head_dim, int layer, int layers, int page_size, int window, float scale) {
    extern __shared__ float smem[];
    paged_prefill_attention(smem, q, pool, out, tables, table_start, positions, tile_first, tile_rows, num_heads,
                            num_kv_heads, head_dim, layer, layers, page_size, window, scale);
}

extern "C" __global__ void paged_attention_f16(const float* q, const kv_f16* pool, float* out,
                                              const unsigned int* tables, const unsigned int* table_start,
                                              const unsigned int* positions, int num_heads, int num_kv_heads,
                                              int head_dim, int layer, int layers, int page_size, int window,
                                              float scale, int split_len, float* part_ml, float* part_acc) {
    __shared__ float s_m[ATTN_WARPS], s_l[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][MAX_HEAD_DIM];
    paged_attention(s_m, s_l, s_acc, q, pool, out, tables, table_start, positions, num_heads, num_kv_heads,
                    head_dim, layer, layers, page_size, window, scale, split_len, part_ml, part_acc);
}

extern "C" __global__ void paged_prefill_attention_f16(
    const float* q, const kv_f16* pool, float* out, const unsigned int* tables, const unsigned int* table_start,
    const unsigned int* positions, const unsigned int* tile_first, const unsigned int* tile_rows, int num_heads,
    int num_kv_heads, int head_dim, int layer, int layers, int page_size, int window, float scale) {
    extern __shared__ float smem[];
    paged_prefill_attention(smem, q, pool, out, tables, table_start, positions, tile_first, tile_rows, num_heads,
                            num_kv_heads, head_dim, layer, layers, page_size, window, scale);
}
