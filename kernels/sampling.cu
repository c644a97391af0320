// Token picking on the GPU, so a decode step copies back one id (and its
// log-probability) per row instead of a whole row of logits. The algorithm
// is the host reference in crates/ferrolm-core/src/sampling/device.rs, with
// no vocabulary sort: top-k and top-p thresholds by bisection, min-p as a
// floor, then a walk over the kept weights in index order to the row's
// random number. Temperature 0 picks the argmax (the first on ties, as
// torch.argmax). The log-probability is the log-softmax of the raw logits.
// Grid: one block per row; blockDim.x a multiple of 32, at most 1024.

#define BISECTION_STEPS 40

__device__ __forceinline__ void better(float& v, unsigned int& i, float ov, unsigned int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

// Block-wide argmax: every thread gets (value, first index).
__device__ __forceinline__ void block_argmax(float& v, unsigned int& i, float* s_v, unsigned int* s_i) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    __syncthreads();
    if (lane == 0) {
        s_v[warp] = v;
        s_i[warp] = i;
    }
    __syncthreads();
    v = lane < warps ? s_v[lane] : NEG_INF;
    i = lane < warps ? s_i[lane] : 0xffffffffu;
    for (int o = 16; o > 0; o >>= 1)
        better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
}

extern "C" __global__ void sample_f32(const float* logits, const float* params, unsigned int* ids,
                                      float* logprobs, int vocab) {
    __shared__ float s_v[32];
    __shared__ unsigned int s_i[32];
    __shared__ float scratch[32];
    __shared__ float chunk_mass[1024];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    const float* p = params + (size_t)blockIdx.x * 5;
    const float temperature = p[0], top_p = p[2], min_p = p[3], uniform = p[4];
    const int top_k = (int)p[1];

    float best = NEG_INF;
    unsigned int best_i = 0xffffffffu;
    float lowest = -NEG_INF;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        better(best, best_i, row[j], (unsigned int)j);
        lowest = fminf(lowest, row[j]);
    }
    block_argmax(best, best_i, s_v, s_i);
    float z = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) z += expf(row[j] - best);
    const float log_z = best + logf(block_sum(z, scratch));

    unsigned int token = best_i;
    if (temperature != 0.0f) {
        // Top-k: the largest t with at least k logits >= t.
        float tk = NEG_INF;
        if (top_k > 0 && top_k < vocab) {
            // The smallest logit (block-wide), the bisection's lower end.
            float lo = lowest;
            for (int o = 16; o > 0; o >>= 1) lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
            __syncthreads();
            if ((threadIdx.x & 31) == 0) s_v[threadIdx.x >> 5] = lo;
            __syncthreads();
            lo = s_v[0];
            for (int w = 1; w < (int)(blockDim.x >> 5); w++) lo = fminf(lo, s_v[w]);
            float hi = best;
            for (int step = 0; step < BISECTION_STEPS; step++) {
                float mid = 0.5f * (lo + hi);
                float count = 0.0f;
                for (int j = threadIdx.x; j < vocab; j += blockDim.x) count += row[j] >= mid ? 1.0f : 0.0f;
                if (block_sum(count, scratch) >= (float)top_k) lo = mid; else hi = mid;
            }
            tk = lo;
        }
        float total = 0.0f;
        for (int j = threadIdx.x; j < vocab; j += blockDim.x)
            if (row[j] >= tk) total += expf((row[j] - best) / temperature);
        total = block_sum(total, scratch);
        // Top-p: the largest u whose kept mass is still >= top_p of the total.
        float u = 0.0f;
        if (top_p < 1.0f) {
            float lo = 0.0f, hi = 1.0f;
            for (int step = 0; step < BISECTION_STEPS; step++) {
                float mid = 0.5f * (lo + hi);
                float mass = 0.0f;
                for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
                    float w = expf((row[j] - best) / temperature);
                    if (row[j] >= tk && w >= mid) mass += w;
                }
                if (block_sum(mass, scratch) >= top_p * total) lo = mid; else hi = mid;
            }
            u = lo;
        }
        const float floor = fmaxf(u, min_p);
        // Contiguous chunks per thread, so the walk in index order is a prefix sum.
        const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
        const int begin = threadIdx.x * chunk, end = min(vocab, begin + chunk);
        float mine = 0.0f;
        for (int j = begin; j < end; j++) {
            float w = expf((row[j] - best) / temperature);
            if (row[j] >= tk && w >= floor) mine += w;
        }
        chunk_mass[threadIdx.x] = mine;
        __syncthreads();
        if (threadIdx.x == 0) {
            float kept = 0.0f;
            for (int t = 0; t < (int)blockDim.x; t++) kept += chunk_mass[t];
            const float target = uniform * kept;
            float acc = 0.0f;
            unsigned int last = best_i, picked = 0xffffffffu;
            for (int t = 0; t < (int)blockDim.x && picked == 0xffffffffu; t++) {
                if (acc + chunk_mass[t] <= target && t + 1 < (int)blockDim.x) {
                    acc += chunk_mass[t];
                    continue;
                }
                for (int j = t * chunk; j < min(vocab, (t + 1) * chunk); j++) {
                    float w = expf((row[j] - best) / temperature);
                    if (row[j] >= tk && w >= floor) {
                        acc += w;
                        last = (unsigned int)j;
                        if (acc > target) {
                            picked = (unsigned int)j;
                            break;
                        }
                    }
                }
            }
            s_i[0] = picked != 0xffffffffu ? picked : last;
        }
        __syncthreads();
        token = s_i[0];
    }
    if (threadIdx.x == 0) {
        ids[blockIdx.x] = token;
        logprobs[blockIdx.x] = row[token] - log_z;
    }
}
