// Shared by every kernel file: the loader compiles "prelude.cuh + <file>.cu"
// as one NVRTC program, so kernels need no system headers (NVRTC ships none
// of cuda_bf16.h's dependencies by default). bf16 values travel as their raw
// 16 bits (unsigned short).

typedef unsigned short bf16_t;

// NVRTC compiles without the math headers, so no INFINITY macro.
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_to_f32(bf16_t v) {
    return __uint_as_float(((unsigned int)v) << 16);
}

// Round to nearest, ties to even (as torch's .to(torch.bfloat16)); NaN stays NaN.
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16_t)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// IEEE half <-> f32 by bit arithmetic (no cuda_fp16.h: the CUDA emulator
// compiles these sources as C++ too). Exact widening; narrowing rounds to
// nearest even as torch's .half() (subnormals kept, overflow to inf, NaN quiet).
typedef unsigned short f16_t;

__device__ __forceinline__ float f16_to_f32(f16_t h) {
    unsigned int sign = ((unsigned int)h & 0x8000u) << 16, exp = ((unsigned int)h >> 10) & 0x1fu,
                 man = (unsigned int)h & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (man << 13));
    if (exp != 0) return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
    // Zero or subnormal: man * 2^-24, exact in f32.
    float mag = (float)man * 5.9604644775390625e-8f;
    return __uint_as_float(sign | __float_as_uint(mag));
}

__device__ __forceinline__ f16_t f32_to_f16(float f) {
    unsigned int u = __float_as_uint(f);
    unsigned int sign = (u >> 16) & 0x8000u, mag = u & 0x7fffffffu;
    if (mag > 0x7f800000u) return (f16_t)(sign | 0x7e00u | ((mag >> 13) & 0x3ffu));
    if (mag >= 0x477ff000u) return (f16_t)(sign | 0x7c00u);  // rounds to 65520 or more: inf
    if (mag < 0x38800000u) {
        // Below the smallest normal: adding 0.5 puts the f16 subnormal grid in
        // the f32 mantissa's last bits, and the FPU rounds to nearest even.
        unsigned int s = __float_as_uint(__uint_as_float(mag) + 0.5f);
        return (f16_t)(sign | (s - 0x3f000000u));
    }
    unsigned int rounded = mag + 0xfffu + ((mag >> 13) & 1u);
    return (f16_t)(sign | ((rounded - 0x38000000u) >> 13));
}

// The KV pool's element types: distinct types, so one kernel template
// serves f32, bf16 and f16 pools (values are f32 once loaded).
struct kv_bf16 {
    bf16_t bits;
};
struct kv_f16 {
    f16_t bits;
};
__device__ __forceinline__ float kv_load(float v) { return v; }
__device__ __forceinline__ float kv_load(kv_bf16 v) { return bf16_to_f32(v.bits); }
__device__ __forceinline__ float kv_load(kv_f16 v) { return f16_to_f32(v.bits); }
__device__ __forceinline__ void kv_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void kv_store(kv_bf16* p, float v) { p->bits = f32_to_bf16(v); }
__device__ __forceinline__ void kv_store(kv_f16* p, float v) { p->bits = f32_to_f16(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of up to 1024 threads (blockDim.x a multiple of 32);
// every thread gets the total. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}
