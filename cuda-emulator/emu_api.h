// The interface between the driver stand-in (driver.cpp) and the kernel
// modules the NVRTC stand-in builds (a kernels/*.cu file compiled by the
// system C++ compiler with cuda_cpu.h). Plain C types only: both sides are
// built separately.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ferrolm_emu {

struct uint3 {
    unsigned int x, y, z;
};

// CUDA's built-in variables for the GPU thread a fiber is running.
struct ThreadInfo {
    uint3 threadIdx, blockIdx, blockDim, gridDim;
};

enum WarpOp { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, BALLOT, ANY, ALL, SYNCWARP };

// What the driver provides to kernel code (through cuda_cpu.h).
struct Api {
    int version;
    // __syncthreads(): a barrier for every thread of the block, reached at `file:line`.
    void (*syncthreads)(const char* file, int line);
    // Every warp-wide intrinsic: the lanes named in `mask` meet, each brings `value`.
    uint64_t (*warp)(int op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line);
    // The block's dynamic shared memory (`extern __shared__`), sized by the launch.
    void* (*dynamic_shared)();
    // __trap() or a failed assert: the launch fails with `what`.
    [[noreturn]] void (*trap)(const char* what, const char* file, int line);
};

// One `extern "C" __global__` function of a module.
struct KernelInfo {
    const char* name;
    int num_params;
    const size_t* param_sizes;
    const unsigned char* param_is_pointer;
    size_t static_shared;  // bytes of its `__shared__` declarations
    void (*invoke)(void** params);  // runs the kernel body for the current thread
};

struct Module {
    int version;
    int num_kernels;
    const KernelInfo* kernels;
    // Sets the built-ins the module's kernel code reads, before a fiber resumes.
    void (*set_self)(const ThreadInfo*);
    // The address of a thread-local variable of the module (its TLS block exists after this).
    void* (*touch_tls)();
};

constexpr int API_VERSION = 1;

}  // namespace ferrolm_emu

extern "C" typedef const ferrolm_emu::Module* (*ferrolm_emu_module_init_fn)(const ferrolm_emu::Api*);
