// CUDA's device-side programming model on the CPU: the header a kernels/*.cu
// file is compiled with (by the NVRTC stand-in, with the system C++ compiler).
//
// Every GPU thread of a block runs as a fiber on one CPU thread (driver.cpp
// schedules them), so:
//   - threadIdx/blockIdx/blockDim/gridDim are the running fiber's;
//   - `__shared__` variables are thread_local: one copy per CPU thread, and a
//     CPU thread runs one block at a time, so each block has its own (filled
//     with NaN bytes before the block starts, as unwritten shared memory is
//     garbage on a GPU);
//   - __syncthreads() and the warp intrinsics are meeting points of fibers
//     (the driver checks that every thread concerned arrives);
//   - atomics are real atomics (blocks run on several CPU threads at once).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <utility>

#include "emu_api.h"

using ferrolm_emu::uint3;
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

namespace ferrolm_emu {
inline const Api* api = nullptr;
static thread_local const ThreadInfo* self = nullptr;
static thread_local char tls_anchor = 0;

inline void set_self(const ThreadInfo* t) { self = t; }
inline void* touch_tls() { return &tls_anchor; }

template <class T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp intrinsics take values of 8 bytes or fewer");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

// Where an intrinsic is called: barriers and shuffles are matched by it.
struct Site {
    const char* file;
    int line;
    void syncthreads() const { api->syncthreads(file, line); }
    void syncwarp(unsigned mask = 0xffffffffu) const { api->warp(SYNCWARP, mask, 0, 0, 32, file, line); }
    template <class T>
    T shfl(unsigned mask, T v, int src, int width = 32) const {
        return from_bits<T>(api->warp(SHFL_IDX, mask, to_bits(v), src, width, file, line));
    }
    template <class T>
    T shfl_up(unsigned mask, T v, unsigned delta, int width = 32) const {
        return from_bits<T>(api->warp(SHFL_UP, mask, to_bits(v), (int)delta, width, file, line));
    }
    template <class T>
    T shfl_down(unsigned mask, T v, unsigned delta, int width = 32) const {
        return from_bits<T>(api->warp(SHFL_DOWN, mask, to_bits(v), (int)delta, width, file, line));
    }
    template <class T>
    T shfl_xor(unsigned mask, T v, int lane_mask, int width = 32) const {
        return from_bits<T>(api->warp(SHFL_XOR, mask, to_bits(v), lane_mask, width, file, line));
    }
    unsigned ballot(unsigned mask, int pred) const {
        return (unsigned)api->warp(BALLOT, mask, pred != 0, 0, 32, file, line);
    }
    int any(unsigned mask, int pred) const { return (int)api->warp(ANY, mask, pred != 0, 0, 32, file, line); }
    int all(unsigned mask, int pred) const { return (int)api->warp(ALL, mask, pred != 0, 0, 32, file, line); }
    [[noreturn]] void trap(const char* what) const { api->trap(what, file, line); }
};

template <class F>
struct Describe;
template <class... A>
struct Describe<void (*)(A...)> {
    static constexpr size_t sizes[sizeof...(A) + 1] = {sizeof(A)..., 0};
    static constexpr unsigned char pointers[sizeof...(A) + 1] = {std::is_pointer<A>::value..., 0};
    template <void (*F)(A...), size_t... I>
    static void call(void** p, std::index_sequence<I...>) {
        F(*static_cast<A*>(p[I])...);
    }
    template <void (*F)(A...)>
    static void invoke(void** p) {
        call<F>(p, std::index_sequence_for<A...>{});
    }
    template <void (*F)(A...)>
    static KernelInfo info(const char* name, size_t shared) {
        return KernelInfo{name, (int)sizeof...(A), sizes, pointers, shared, &invoke<F>};
    }
};
}  // namespace ferrolm_emu

// Registers kernel `f` (the NVRTC stand-in appends one per `extern "C" __global__`).
#define FERROLM_EMU_KERNEL(f, shared) ferrolm_emu::Describe<decltype(&f)>::info<&f>(#f, shared)

// ---- keywords --------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ thread_local
#define __constant__ static const

// ---- built-in variables ----------------------------------------------------------------------
#define threadIdx (ferrolm_emu::self->threadIdx)
#define blockIdx (ferrolm_emu::self->blockIdx)
#define blockDim (ferrolm_emu::self->blockDim)
#define gridDim (ferrolm_emu::self->gridDim)
#define warpSize 32

// ---- synchronisation and warp intrinsics -----------------------------------------------------
#define FERROLM_EMU_SITE (ferrolm_emu::Site{__FILE__, __LINE__})
#define __syncthreads() FERROLM_EMU_SITE.syncthreads()
#define __syncwarp FERROLM_EMU_SITE.syncwarp
#define __shfl_sync FERROLM_EMU_SITE.shfl
#define __shfl_up_sync FERROLM_EMU_SITE.shfl_up
#define __shfl_down_sync FERROLM_EMU_SITE.shfl_down
#define __shfl_xor_sync FERROLM_EMU_SITE.shfl_xor
#define __ballot_sync FERROLM_EMU_SITE.ballot
#define __any_sync FERROLM_EMU_SITE.any
#define __all_sync FERROLM_EMU_SITE.all
#define __trap() FERROLM_EMU_SITE.trap("__trap()")
#undef assert
#define assert(c) ((c) ? (void)0 : FERROLM_EMU_SITE.trap("assert(" #c ") failed"))

__forceinline__ void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
__forceinline__ void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- atomics (blocks run concurrently on several CPU threads) -------------------------------
template <class T>
inline T atomicAdd(T* p, T v) {
    if constexpr (std::is_floating_point<T>::value) {
        T old, desired;
        __atomic_load(p, &old, __ATOMIC_RELAXED);
        do {
            desired = old + v;
        } while (!__atomic_compare_exchange(p, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
        return old;
    } else {
        return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    }
}
template <class T>
inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicExch(T* p, T v) {
    T old;
    __atomic_exchange(p, &v, &old, __ATOMIC_SEQ_CST);
    return old;
}
template <class T>
inline T atomicCAS(T* p, T compare, T v) {
    __atomic_compare_exchange(p, &compare, &v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}
template <class T>
inline T atomicMax(T* p, T v) {
    T old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange(p, &old, &v, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
    T old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    while (old > v && !__atomic_compare_exchange(p, &old, &v, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    return old;
}

// ---- bit casts and integer intrinsics --------------------------------------------------------
__forceinline__ float __int_as_float(int v) { return ferrolm_emu::from_bits<float>((uint32_t)v); }
__forceinline__ float __uint_as_float(unsigned int v) { return ferrolm_emu::from_bits<float>(v); }
__forceinline__ int __float_as_int(float v) { return (int)(uint32_t)ferrolm_emu::to_bits(v); }
__forceinline__ unsigned int __float_as_uint(float v) { return (uint32_t)ferrolm_emu::to_bits(v); }
__forceinline__ double __longlong_as_double(long long v) { return ferrolm_emu::from_bits<double>((uint64_t)v); }
__forceinline__ long long __double_as_longlong(double v) { return (long long)ferrolm_emu::to_bits(v); }
__forceinline__ int __popc(unsigned int v) { return __builtin_popcount(v); }
__forceinline__ int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
__forceinline__ int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
__forceinline__ int __ffs(int v) { return __builtin_ffs(v); }
__forceinline__ unsigned int __brev(unsigned int v) {
    v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
    v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
    v = ((v >> 4) & 0x0f0f0f0fu) | ((v & 0x0f0f0f0fu) << 4);
    v = ((v >> 8) & 0x00ff00ffu) | ((v & 0x00ff00ffu) << 8);
    return (v >> 16) | (v << 16);
}
template <class T>
__forceinline__ T __ldg(const T* p) { return *p; }

// CUDA's min/max overloads: same-type, and int mixed with unsigned as unsigned.
#define FERROLM_EMU_MINMAX(T)                               \
    __forceinline__ T min(T a, T b) { return b < a ? b : a; } \
    __forceinline__ T max(T a, T b) { return a < b ? b : a; }
FERROLM_EMU_MINMAX(int)
FERROLM_EMU_MINMAX(unsigned int)
FERROLM_EMU_MINMAX(long)
FERROLM_EMU_MINMAX(unsigned long)
FERROLM_EMU_MINMAX(long long)
FERROLM_EMU_MINMAX(unsigned long long)
#undef FERROLM_EMU_MINMAX
__forceinline__ unsigned int min(int a, unsigned int b) { return min((unsigned int)a, b); }
__forceinline__ unsigned int min(unsigned int a, int b) { return min(a, (unsigned int)b); }
__forceinline__ unsigned int max(int a, unsigned int b) { return max((unsigned int)a, b); }
__forceinline__ unsigned int max(unsigned int a, int b) { return max(a, (unsigned int)b); }
__forceinline__ float min(float a, float b) { return fminf(a, b); }
__forceinline__ float max(float a, float b) { return fmaxf(a, b); }
__forceinline__ double min(double a, double b) { return fmin(a, b); }
__forceinline__ double max(double a, double b) { return fmax(a, b); }

// ---- math beyond <cmath> ---------------------------------------------------------------------
// The GPU's fast versions are approximations; here they are the exact functions.
__forceinline__ float rsqrtf(float x) { return 1.0f / sqrtf(x); }
__forceinline__ double rsqrt(double x) { return 1.0 / sqrt(x); }
__forceinline__ float __expf(float x) { return expf(x); }
__forceinline__ float __logf(float x) { return logf(x); }
__forceinline__ float __sinf(float x) { return sinf(x); }
__forceinline__ float __cosf(float x) { return cosf(x); }
__forceinline__ float __powf(float x, float y) { return powf(x, y); }
__forceinline__ float __fdividef(float x, float y) { return x / y; }
__forceinline__ float __frcp_rn(float x) { return 1.0f / x; }
__forceinline__ float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
__forceinline__ float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
__forceinline__ void sincosf(float x, float* s, float* c) {
    *s = sinf(x);
    *c = cosf(x);
}
