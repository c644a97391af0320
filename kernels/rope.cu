// Rotary position embedding, HF's rotate_half convention: for each head,
// (a, b) = (x[i], x[i + half]) -> (a cos - b sin, b cos + a sin), with the
// angle pos * inv_freq[i] rounded to f32 before cos/sin, as HF computes it.
// `inv_freq` already carries any rope scaling (linear, llama3).
// Grid: (rows, heads); block: half the head dimension (or fewer threads, looping).

__device__ __forceinline__ void rotate(float* head, unsigned int pos, const float* inv_freq, int half) {
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float angle = (float)pos * inv_freq[i];
        float c = cosf(angle), s = sinf(angle);
        float a = head[i], b = head[i + half];
        head[i] = a * c - b * s;
        head[i + half] = b * c + a * s;
    }
}

extern "C" __global__ void rope_f32(float* x, const unsigned int* positions, const float* inv_freq, int width,
                                    int head_dim) {
    float* head = x + (size_t)blockIdx.x * width + (size_t)blockIdx.y * head_dim;
    rotate(head, positions[blockIdx.x], inv_freq, head_dim / 2);
}

// Qwen3: per-head RMSNorm (weight `w` of head_dim) and then RoPE, in one pass.
extern "C" __global__ void rms_norm_rope_f32(float* x, const float* w, const unsigned int* positions,
                                             const float* inv_freq, int width, int head_dim, float eps) {
    __shared__ float scratch[32];
    float* head = x + (size_t)blockIdx.x * width + (size_t)blockIdx.y * head_dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) ss += head[i] * head[i];
    float inv = rsqrtf(block_sum(ss, scratch) / head_dim + eps);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) head[i] = w[i] * (head[i] * inv);
    __syncthreads();
    rotate(head, positions[blockIdx.x], inv_freq, head_dim / 2);
}
