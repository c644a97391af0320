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

extern "C" __global__ void paged_attention_f32(
    const float* q,                 // [rows, num_heads * head_dim]
    const float* pool,              // the KV pool (see kv_cache.cu)
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
    __shared__ float s_m[ATTN_WARPS], s_l[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][MAX_HEAD_DIM];

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
        const float* key = pool + base + (size_t)(j % page_size) * kv_dim + (size_t)kv_head * head_dim;
        const float* val = key + (size_t)page_size * kv_dim;  // the value block follows the key block
        float partial = 0.0f;
        for (int c = 0; c < PER_LANE; c++) {
            int i = c * 32 + lane;
            if (i < head_dim) partial += qv[c] * key[i];
        }
        float s = warp_sum(partial);
        float m_new = fmaxf(m, s);
        float correction = expf(m - m_new);
        float p = expf(s - m_new);
        l = l * correction + p;
        for (int c = 0; c < PER_LANE; c++) {
            int i = c * 32 + lane;
            if (i < head_dim) acc[c] = acc[c] * correction + p * val[i];
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
