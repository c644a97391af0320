// libcublas stand-in: the GEMMs ferrolm calls (cublasSgemm_v2 and
// cublasGemmEx), computed as cuBLAS computes them with CUBLAS_COMPUTE_32F:
// inputs read as stored (f32, or f16/bf16 widened exactly), products summed
// in f32, the result rounded once to C's type. f32 GEMMs are plain f32 (no
// TF32). Operands are checked against the driver stand-in's allocations: a
// matrix that does not fit its allocation fails like a GPU fault would
// (sticky CUDA_ERROR_ILLEGAL_ADDRESS) instead of reading stray memory.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

extern "C" int ferrolm_emu_check_range(unsigned long long p, size_t n, char* why, size_t why_len);
extern "C" int ferrolm_emu_fail_sticky(int code, const char* message);
extern "C" int ferrolm_emu_check_sticky();

typedef int cublasStatus_t;
enum : cublasStatus_t {
    STATUS_SUCCESS = 0,
    STATUS_NOT_INITIALIZED = 1,
    STATUS_INVALID_VALUE = 7,
    STATUS_EXECUTION_FAILED = 13,
    STATUS_NOT_SUPPORTED = 15,
};
enum { OP_N = 0, OP_T = 1, OP_C = 2 };
enum { R_32F = 0, R_16F = 2, R_16BF = 14 };
enum { COMPUTE_32F = 68, COMPUTE_32F_PEDANTIC = 69 };
static const int ILLEGAL_ADDRESS = 700;

struct Handle {
    void* stream = nullptr;
    int math_mode = 0;
};

static cublasStatus_t refuse(cublasStatus_t status, const std::string& why) {
    fprintf(stderr, "[ferrolm CUDA emulator] cuBLAS: %s\n", why.c_str());
    return status;
}

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  // subnormal: normalise
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000, abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((abs >> 13) & 0x3ff));
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  // rounds to >= 65520: inf
    if (abs < 0x38800000u) {                                   // below f16's smallest normal
        float mag;
        memcpy(&mag, &abs, 4);
        // Adding 0.5 aligns the subnormal grid to the f32 mantissa's last bits (round to even).
        float shifted = mag + 0.5f;
        uint32_t s;
        memcpy(&s, &shifted, 4);
        return (uint16_t)(sign | (s - 0x3f000000u));
    }
    uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1);
    return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
}

static size_t element_size(int type) { return type == R_32F ? 4 : 2; }

static float load(const void* base, int type, size_t i) {
    if (type == R_32F) return ((const float*)base)[i];
    uint16_t h = ((const uint16_t*)base)[i];
    return type == R_16F ? f16_to_f32(h) : bf16_to_f32(h);
}

static bool known_type(int t) { return t == R_32F || t == R_16F || t == R_16BF; }

static cublasStatus_t check_matrix(const char* what, const void* p, int type, int rows, int cols, int ld) {
    if (rows == 0 || cols == 0) return STATUS_SUCCESS;
    size_t bytes = ((size_t)ld * (cols - 1) + rows) * element_size(type);
    char why[700];
    if (ferrolm_emu_check_range((unsigned long long)(uintptr_t)p, bytes, why, sizeof why) == 0) return STATUS_SUCCESS;
    std::string msg = std::string("GEMM operand ") + what + " (" + std::to_string(rows) + " x " + std::to_string(cols) +
                      ", ld " + std::to_string(ld) + "): " + why + " is outside device memory";
    ferrolm_emu_fail_sticky(ILLEGAL_ADDRESS, ("cuBLAS: " + msg).c_str());
    return STATUS_EXECUTION_FAILED;
}

static cublasStatus_t gemm(void* handle, int transa, int transb, int m, int n, int k, const float* alpha,
                           const void* A, int atype, int lda, const void* B, int btype, int ldb, const float* beta,
                           void* C, int ctype, int ldc) {
    if (!handle) return STATUS_NOT_INITIALIZED;
    if (ferrolm_emu_check_sticky() != 0) return STATUS_EXECUTION_FAILED;
    if ((transa != OP_N && transa != OP_T && transa != OP_C) || (transb != OP_N && transb != OP_T && transb != OP_C))
        return refuse(STATUS_INVALID_VALUE, "GEMM: unknown transpose operation");
    bool ta = transa != OP_N, tb = transb != OP_N;
    int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
    if (m < 0 || n < 0 || k < 0 || lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m))
        return refuse(STATUS_INVALID_VALUE, "GEMM: m " + std::to_string(m) + ", n " + std::to_string(n) + ", k " +
                                                std::to_string(k) + ", lda " + std::to_string(lda) + ", ldb " +
                                                std::to_string(ldb) + ", ldc " + std::to_string(ldc) +
                                                " are inconsistent (cuBLAS refuses them)");
    if (!alpha || !beta) return refuse(STATUS_INVALID_VALUE, "GEMM: null alpha or beta");
    if (m == 0 || n == 0) return STATUS_SUCCESS;
    if (cublasStatus_t s = check_matrix("A", A, atype, a_rows, a_cols, lda)) return s;
    if (cublasStatus_t s = check_matrix("B", B, btype, b_rows, b_cols, ldb)) return s;
    if (cublasStatus_t s = check_matrix("C", C, ctype, m, n, ldc)) return s;
    // op(A) as m rows of k, op(B)^T as n rows of k: contiguous dot products.
    std::vector<float> a((size_t)m * k), b((size_t)n * k);
    for (int i = 0; i < m; i++)
        for (int p = 0; p < k; p++) a[(size_t)i * k + p] = load(A, atype, ta ? (size_t)i * lda + p : (size_t)p * lda + i);
    for (int j = 0; j < n; j++)
        for (int p = 0; p < k; p++) b[(size_t)j * k + p] = load(B, btype, tb ? (size_t)p * ldb + j : (size_t)j * ldb + p);
    const float al = *alpha, be = *beta;
    auto columns = [&](int j0, int j1) {
        for (int j = j0; j < j1; j++) {
            const float* bj = &b[(size_t)j * k];
            for (int i = 0; i < m; i++) {
                const float* ai = &a[(size_t)i * k];
                float acc = 0.0f;
                for (int p = 0; p < k; p++) acc += ai[p] * bj[p];
                size_t at = (size_t)j * ldc + i;
                // beta == 0: C is written, never read (it may hold NaN), as cuBLAS does.
                float out = al * acc + (be == 0.0f ? 0.0f : be * load(C, ctype, at));
                if (ctype == R_32F) ((float*)C)[at] = out;
                else ((uint16_t*)C)[at] = ctype == R_16F ? f32_to_f16(out) : f32_to_bf16(out);
            }
        }
    };
    unsigned threads = std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(), 16));
    if ((double)m * n * k < 1 << 20 || threads == 1 || n < 2) {
        columns(0, n);
    } else {
        std::vector<std::thread> pool;
        int per = (n + (int)threads - 1) / (int)threads;
        for (int j0 = 0; j0 < n; j0 += per) pool.emplace_back(columns, j0, std::min(n, j0 + per));
        for (auto& t : pool) t.join();
    }
    return STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSgemm_v2(void* handle, int transa, int transb, int m, int n, int k, const float* alpha,
                                         const float* A, int lda, const float* B, int ldb, const float* beta, float* C,
                                         int ldc) {
    return gemm(handle, transa, transb, m, n, k, alpha, A, R_32F, lda, B, R_32F, ldb, beta, C, R_32F, ldc);
}

extern "C" cublasStatus_t cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha,
                                       const void* A, int atype, int lda, const void* B, int btype, int ldb,
                                       const void* beta, void* C, int ctype, int ldc, int compute, int algo) {
    (void)algo;
    if (compute != COMPUTE_32F && compute != COMPUTE_32F_PEDANTIC)
        return refuse(STATUS_NOT_SUPPORTED, "cublasGemmEx: compute type " + std::to_string(compute) +
                                                " is not emulated (CUBLAS_COMPUTE_32F is)");
    if (!known_type(atype) || !known_type(btype) || !known_type(ctype))
        return refuse(STATUS_NOT_SUPPORTED, "cublasGemmEx: data types other than R_32F, R_16F, R_16BF are not emulated");
    if (atype != btype) return refuse(STATUS_NOT_SUPPORTED, "cublasGemmEx: A and B of different types");
    return gemm(handle, transa, transb, m, n, k, (const float*)alpha, A, atype, lda, B, btype, ldb,
                (const float*)beta, C, ctype, ldc);
}

extern "C" cublasStatus_t cublasCreate_v2(void** handle) {
    if (!handle) return STATUS_INVALID_VALUE;
    *handle = new Handle;
    return STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasDestroy_v2(void* handle) {
    if (!handle) return STATUS_NOT_INITIALIZED;
    delete (Handle*)handle;
    return STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasSetStream_v2(void* handle, void* stream) {
    if (!handle) return STATUS_NOT_INITIALIZED;
    ((Handle*)handle)->stream = stream;
    return STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasGetStream_v2(void* handle, void** stream) {
    if (!handle || !stream) return STATUS_NOT_INITIALIZED;
    *stream = ((Handle*)handle)->stream;
    return STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasSetMathMode(void* handle, int mode) {
    if (!handle) return STATUS_NOT_INITIALIZED;
    ((Handle*)handle)->math_mode = mode;
    return STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasGetMathMode(void* handle, int* mode) {
    if (!handle || !mode) return STATUS_NOT_INITIALIZED;
    *mode = ((Handle*)handle)->math_mode;
    return STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasSetPointerMode_v2(void* handle, int mode) {
    if (!handle) return STATUS_NOT_INITIALIZED;
    return mode == 0 ? STATUS_SUCCESS : refuse(STATUS_NOT_SUPPORTED, "device pointer mode is not emulated");
}
extern "C" cublasStatus_t cublasGetPointerMode_v2(void* handle, int* mode) {
    if (!handle || !mode) return STATUS_NOT_INITIALIZED;
    *mode = 0;
    return STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasSetWorkspace_v2(void* handle, void*, size_t) {
    return handle ? STATUS_SUCCESS : STATUS_NOT_INITIALIZED;
}
extern "C" cublasStatus_t cublasGetVersion_v2(void*, int* version) {
    if (!version) return STATUS_INVALID_VALUE;
    *version = 120400;
    return STATUS_SUCCESS;
}
extern "C" const char* cublasGetStatusName(cublasStatus_t s) {
    switch (s) {
        case STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        default: return "CUBLAS_STATUS (unknown)";
    }
}
extern "C" const char* cublasGetStatusString(cublasStatus_t s) { return cublasGetStatusName(s); }

extern "C" int ferrolm_emu_unsupported(const char* name) {
    fprintf(stderr, "[ferrolm CUDA emulator] %s is not implemented by the cuBLAS stand-in\n", name);
    return STATUS_NOT_SUPPORTED;
}
