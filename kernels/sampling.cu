// Greedy picking on the GPU, so a decode step copies back token ids rather
// than whole logits rows: per row, the index of the largest logit (the
// first on ties, as torch.argmax) and its log-softmax, -log(sum(exp(x - max))).
// Grid: one block per row; blockDim.x a multiple of 32, at most 1024.

__device__ __forceinline__ void better(float& v, unsigned int& i, float ov, unsigned int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

extern "C" __global__ void argmax_logprob_f32(const float* logits, unsigned int* ids, float* logprobs, int vocab) {
    __shared__ float s_v[32];
    __shared__ unsigned int s_i[32];
    __shared__ float scratch[32];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

    float v = NEG_INF;
    unsigned int i = 0xffffffffu;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) better(v, i, row[j], (unsigned int)j);
    for (int o = 16; o > 0; o >>= 1)
        better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    if (lane == 0) {
        s_v[warp] = v;
        s_i[warp] = i;
    }
    __syncthreads();
    v = lane < warps ? s_v[lane] : NEG_INF;
    i = lane < warps ? s_i[lane] : 0xffffffffu;
    for (int o = 16; o > 0; o >>= 1)
        better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    const float best = v;

    float sum = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) sum += expf(row[j] - best);
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) {
        ids[blockIdx.x] = i;
        logprobs[blockIdx.x] = -logf(sum);
    }
}
