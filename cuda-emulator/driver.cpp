// libcuda stand-in: the part of the CUDA driver API that cudarc and ferrolm
// use, on the CPU. Device memory is host memory between guard pages, every
// stream runs its work at once (in order, so stream semantics hold
// trivially), and a kernel launch runs the module's kernel for every thread
// of every block, a block's threads as fibers on one CPU thread.
//
// What a GPU would corrupt silently is refused or reported here:
//   - an access past the end of an allocation faults on its guard page (before
//     its start, past the page's slack), and after a free the memory stays
//     inaccessible for a while: the launch fails with CUDA_ERROR_ILLEGAL_ADDRESS
//     naming the kernel, block, thread and allocation;
//   - fresh allocations are filled with 0xff bytes (NaN in f32/f16/bf16, and
//     huge indices), shared memory too at each block's start;
//   - a __syncthreads or warp intrinsic that not every thread concerned
//     reaches fails the launch (CUDA_ERROR_LAUNCH_FAILED), as does a deadlock;
//   - launches beyond CUDA's limits, unknown kernel names and pointer
//     arguments that are not device memory are refused (CUDA_ERROR_INVALID_VALUE);
//   - memcpy/memset ranges outside an allocation are refused.
// Errors of a launch are sticky for the context, as on a GPU. The text of the
// last error (cuGetErrorString) says what went wrong in words.
#include <dlfcn.h>
#include <link.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emu_api.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

using namespace ferrolm_emu;

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUstream;
typedef void* CUevent;
typedef void* CUmodule;
typedef void* CUfunction;

enum : CUresult {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_CONTEXT = 201,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    NOT_READY = 600,
    ILLEGAL_ADDRESS = 700,
    LAUNCH_OUT_OF_RESOURCES = 701,
    LAUNCH_FAILED = 719,
    NOT_SUPPORTED = 801,
};

// ---- errors ---------------------------------------------------------------------------------

static thread_local std::string last_message;
static thread_local CUresult last_code = SUCCESS;
static std::mutex sticky_lock;
static CUresult sticky_code = SUCCESS;
static std::string sticky_message;

static std::string format(const char* fmt, va_list ap) {
    char buf[2048];
    vsnprintf(buf, sizeof buf, fmt, ap);
    return buf;
}

// Returns `code`, remembering why for cuGetErrorString on this thread.
static CUresult fail(CUresult code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    last_message = "[ferrolm CUDA emulator] " + format(fmt, ap);
    va_end(ap);
    last_code = code;
    if (getenv("FERROLM_CUDA_EMULATOR_VERBOSE")) fprintf(stderr, "%s\n", last_message.c_str());
    return code;
}

// A launch failed: the context is unusable from now on (as after a GPU fault).
static CUresult fail_sticky(CUresult code, const std::string& message) {
    {
        std::lock_guard<std::mutex> g(sticky_lock);
        if (sticky_code == SUCCESS) {
            sticky_code = code;
            sticky_message = message;
        }
    }
    fprintf(stderr, "[ferrolm CUDA emulator] %s\n", message.c_str());
    return fail(code, "%s", message.c_str());
}

static CUresult check_sticky() {
    std::lock_guard<std::mutex> g(sticky_lock);
    if (sticky_code == SUCCESS) return SUCCESS;
    return fail(sticky_code, "an earlier launch failed, the context is unusable: %s", sticky_message.c_str());
}

#define CHECK_STICKY()                          \
    do {                                        \
        if (CUresult r_ = check_sticky()) return r_; \
    } while (0)

extern "C" int ferrolm_emu_unsupported(const char* name) {
    fail(NOT_SUPPORTED, "%s is not implemented by the CUDA emulator", name);
    fprintf(stderr, "%s\n", last_message.c_str());
    return NOT_SUPPORTED;
}

// ---- device memory --------------------------------------------------------------------------

static const size_t PAGE = (size_t)sysconf(_SC_PAGESIZE);
static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct Allocation {
    uintptr_t start;
    size_t size;
    char* map;  // the whole mapping: guard page, data pages, guard page
    size_t map_len;
};

static std::mutex memory_lock;
static std::map<uintptr_t, Allocation> live;    // by start
static std::deque<Allocation> freed;            // inaccessible until the quarantine is full
static size_t freed_bytes = 0;
static size_t used_bytes = 0;
static const size_t QUARANTINE_BYTES = (size_t)1 << 30;

static size_t memory_limit() {
    static size_t limit = [] {
        const char* v = getenv("FERROLM_CUDA_EMULATOR_MEMORY_MIB");
        return (v ? (size_t)strtoull(v, nullptr, 10) : (size_t)16384) << 20;
    }();
    return limit;
}

static CUresult allocate(CUdeviceptr* out, size_t size) {
    if (!out) return fail(INVALID_VALUE, "cuMemAlloc: null result pointer");
    if (size == 0) return fail(INVALID_VALUE, "cuMemAlloc of 0 bytes (the driver refuses it)");
    {
        std::lock_guard<std::mutex> g(memory_lock);
        if (used_bytes + size > memory_limit())
            return fail(OUT_OF_MEMORY, "cuMemAlloc of %zu bytes: %zu of %zu bytes of emulated device memory in use "
                        "(FERROLM_CUDA_EMULATOR_MEMORY_MIB sets the size)", size, used_bytes, memory_limit());
        used_bytes += size;
    }
    size_t data = round_up(size, PAGE);
    size_t map_len = data + 2 * PAGE;
    void* m = mmap(nullptr, map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED || mprotect((char*)m + PAGE, data, PROT_READ | PROT_WRITE) != 0) {
        if (m != MAP_FAILED) munmap(m, map_len);
        std::lock_guard<std::mutex> g(memory_lock);
        used_bytes -= size;
        return fail(OUT_OF_MEMORY, "cuMemAlloc of %zu bytes: the host has no memory for it", size);
    }
    char* map = (char*)m;
    // The data ends where the trailing guard page begins: one byte past the
    // end faults. The start keeps the alignment the size allows (up to 256).
    uintptr_t start = (uintptr_t)(map + PAGE + data - size);
    memset((void*)start, 0xff, size);
    std::lock_guard<std::mutex> g(memory_lock);
    live[start] = Allocation{start, size, map, map_len};
    *out = start;
    return SUCCESS;
}

static CUresult release(CUdeviceptr ptr) {
    if (ptr == 0) return SUCCESS;
    std::lock_guard<std::mutex> g(memory_lock);
    auto it = live.find((uintptr_t)ptr);
    if (it == live.end()) return fail(INVALID_VALUE, "cuMemFree(0x%llx): not the start of a live allocation", ptr);
    Allocation a = it->second;
    live.erase(it);
    used_bytes -= a.size;
    mprotect(a.map, a.map_len, PROT_NONE);
    freed.push_back(a);
    freed_bytes += a.map_len;
    while (freed_bytes > QUARANTINE_BYTES) {
        munmap(freed.front().map, freed.front().map_len);
        freed_bytes -= freed.front().map_len;
        freed.pop_front();
    }
    return SUCCESS;
}

// The live allocation holding [p, p + n), if any (n = 0: p may be its end).
static const Allocation* find_live(uintptr_t p, size_t n) {
    auto it = live.upper_bound(p);
    if (it == live.begin()) return nullptr;
    --it;
    const Allocation& a = it->second;
    if (p >= a.start && p + n <= a.start + a.size && (n > 0 || p <= a.start + a.size)) return &a;
    return nullptr;
}

// Where address `p` is, in words: for the messages of faults and refusals.
static std::string describe_address(uintptr_t p) {
    std::lock_guard<std::mutex> g(memory_lock);
    char buf[512];
    for (const auto& [start, a] : live) {
        if (p >= (uintptr_t)a.map && p < (uintptr_t)a.map + a.map_len) {
            if (p >= a.start + a.size)
                snprintf(buf, sizeof buf, "0x%lx, %lu bytes past the end of a %zu-byte allocation at 0x%lx", p,
                         p - (a.start + a.size), a.size, a.start);
            else if (p < a.start)
                snprintf(buf, sizeof buf, "0x%lx, %lu bytes before the start of a %zu-byte allocation at 0x%lx", p,
                         a.start - p, a.size, a.start);
            else
                snprintf(buf, sizeof buf, "0x%lx, byte %lu of a %zu-byte allocation at 0x%lx", p, p - a.start,
                         a.size, a.start);
            return buf;
        }
    }
    for (const auto& a : freed) {
        if (p >= (uintptr_t)a.map && p < (uintptr_t)a.map + a.map_len) {
            snprintf(buf, sizeof buf, "0x%lx, in a %zu-byte allocation at 0x%lx that was freed", p, a.size, a.start);
            return buf;
        }
    }
    snprintf(buf, sizeof buf, "0x%lx, which is not device memory", p);
    return buf;
}

// For the cuBLAS stand-in: SUCCESS when [p, p + n) is inside one live allocation.
extern "C" int ferrolm_emu_check_range(unsigned long long p, size_t n, char* why, size_t why_len) {
    {
        std::lock_guard<std::mutex> g(memory_lock);
        if (find_live((uintptr_t)p, n)) return SUCCESS;
    }
    snprintf(why, why_len, "%zu bytes at %s", n, describe_address((uintptr_t)p).c_str());
    return INVALID_VALUE;
}

extern "C" int ferrolm_emu_fail_sticky(int code, const char* message) { return fail_sticky(code, message); }
extern "C" int ferrolm_emu_check_sticky() { return check_sticky(); }

static CUresult check_copy(const char* what, CUdeviceptr p, size_t n) {
    if (n == 0) return SUCCESS;
    char why[600];
    if (ferrolm_emu_check_range(p, n, why, sizeof why) == SUCCESS) return SUCCESS;
    return fail(INVALID_VALUE, "%s: %s is outside device memory", what, why);
}

// ---- faults in kernel code ------------------------------------------------------------------

struct Fault {
    int signal;
    uintptr_t address;
};

static thread_local sigjmp_buf* fault_jump = nullptr;  // set while kernel code runs on this thread
static thread_local Fault fault;
static struct sigaction previous_segv, previous_bus, previous_fpe;

static void on_fault(int sig, siginfo_t* info, void*) {
    if (fault_jump) {
        fault = Fault{sig, (uintptr_t)info->si_addr};
        siglongjmp(*fault_jump, 1);
    }
    // Not ours: restore the previous handler; the instruction faults again there.
    sigaction(SIGSEGV, &previous_segv, nullptr);
    sigaction(SIGBUS, &previous_bus, nullptr);
    sigaction(SIGFPE, &previous_fpe, nullptr);
}

static void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &previous_segv);
        sigaction(SIGBUS, &sa, &previous_bus);
        sigaction(SIGFPE, &sa, &previous_fpe);
    });
}

// Each CPU thread that runs kernel code gets a signal stack (a fiber's stack
// may be the one that overflowed).
static void ensure_signal_stack() {
    static thread_local bool done = false;
    if (done) return;
    stack_t ss;
    ss.ss_size = 64 * 1024;
    ss.ss_sp = malloc(ss.ss_size);
    ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
    done = true;
}

// ---- fibers ---------------------------------------------------------------------------------

#if defined(__x86_64__)
// Saves the callee-saved registers (and the SSE/x87 control words) on the
// current stack, stores the stack pointer in *save, switches to `to`.
extern "C" void ferrolm_emu_switch(void** save, void* to);
extern "C" void ferrolm_emu_fiber_start();
asm(R"(
    .text
    .globl ferrolm_emu_switch
    .type ferrolm_emu_switch,@function
ferrolm_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ferrolm_emu_switch, .-ferrolm_emu_switch

    .globl ferrolm_emu_fiber_start
    .type ferrolm_emu_fiber_start,@function
ferrolm_emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size ferrolm_emu_fiber_start, .-ferrolm_emu_fiber_start
)");
#endif

struct Fiber;
static void fiber_main(Fiber* f);

enum FiberState { READY, AT_BARRIER, AT_WARP, DONE, TRAPPED };

struct Fiber {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
    char* stack = nullptr;  // lowest usable address; a guard page lies below
    ThreadInfo info;
    unsigned index = 0;  // linear thread index in the block
    FiberState state = READY;
    const char* file = nullptr;
    int line = 0;
    // A warp intrinsic in progress.
    int op = 0, arg = 0, width = 32;
    unsigned mask = 0;
    uint64_t value = 0, result = 0;
};

static const size_t FIBER_STACK = 64 * 1024;

struct KernelRef;
struct Worker;
static thread_local Worker* worker = nullptr;

struct WarpMeeting {
    unsigned arrived = 0;  // lanes that arrived
    int op = 0;
    unsigned mask = 0;
    const char* file = nullptr;
    int line = 0;
};

struct Worker {
#if defined(__x86_64__)
    void* scheduler_sp = nullptr;
#else
    ucontext_t scheduler_uc;
#endif
    std::vector<Fiber> fibers;
    std::vector<WarpMeeting> warps;
    std::vector<unsigned> exited;  // per warp: lanes that finished the kernel
    Fiber* current = nullptr;
    const Module* module = nullptr;
    const KernelInfo* kernel = nullptr;
    void** params = nullptr;
    bool fibers_fresh = false;  // contexts must be rebuilt (first use, or after an abandoned block)
    std::string error;          // why the current block failed
    char* dyn_region = nullptr;  // dynamic shared memory, ending at a guard page
    size_t dyn_capacity = 0;
    void* dyn_shared = nullptr;
    std::map<const Module*, std::pair<char*, size_t>> tls;  // each module's static shared memory here
};

static void switch_to_scheduler(Fiber* f) {
#if defined(__x86_64__)
    ferrolm_emu_switch(&f->sp, worker->scheduler_sp);
#else
    swapcontext(&f->uc, &worker->scheduler_uc);
#endif
}

static void resume(Fiber* f) {
    worker->current = f;
    worker->module->set_self(&f->info);
#if defined(__x86_64__)
    ferrolm_emu_switch(&worker->scheduler_sp, f->sp);
#else
    swapcontext(&worker->scheduler_uc, &f->uc);
#endif
}

static void start_fiber(Fiber* f) {
#if defined(__x86_64__)
    uintptr_t top = ((uintptr_t)f->stack + FIBER_STACK) & ~(uintptr_t)15;
    void** frame = (void**)(top - 80);  // 16-aligned, see ferrolm_emu_switch's pops
    uint32_t control[2] = {0x1f80u, 0x037fu};  // default MXCSR and x87 control word
    memcpy(&frame[0], control, 8);
    frame[1] = nullptr;                           // r15
    frame[2] = nullptr;                           // r14
    frame[3] = (void*)&fiber_main;                // r13: called by ferrolm_emu_fiber_start
    frame[4] = f;                                 // r12: its argument
    frame[5] = nullptr;                           // rbx
    frame[6] = nullptr;                           // rbp
    frame[7] = (void*)&ferrolm_emu_fiber_start;   // return address
    f->sp = frame;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = FIBER_STACK;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, (void (*)())fiber_main, 1, f);
#endif
}

// A fiber runs the kernel for its thread, once per block, forever.
static void fiber_main(Fiber* f) {
    for (;;) {
        worker->kernel->invoke(worker->params);
        f->state = DONE;
        switch_to_scheduler(f);
    }
}

static void ensure_fibers(unsigned n) {
    auto& fibers = worker->fibers;
    if (fibers.size() < n) {
        size_t old = fibers.size();
        fibers.resize(n);
        for (size_t i = old; i < n; i++) {
            char* m = (char*)mmap(nullptr, FIBER_STACK + PAGE, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            mprotect(m, PAGE, PROT_NONE);  // overflow faults
            fibers[i].stack = m + PAGE;
        }
        worker->fibers_fresh = false;
    }
    if (!worker->fibers_fresh) {
        for (auto& f : fibers) start_fiber(&f);
        worker->fibers_fresh = true;
    }
}

// ---- barriers and warps (called from kernel code, on a fiber) -------------------------------

static std::string thread_name(const Fiber& f) {
    char buf[96];
    snprintf(buf, sizeof buf, "thread (%u,%u,%u) of block (%u,%u,%u)", f.info.threadIdx.x, f.info.threadIdx.y,
             f.info.threadIdx.z, f.info.blockIdx.x, f.info.blockIdx.y, f.info.blockIdx.z);
    return buf;
}

static void api_syncthreads(const char* file, int line) {
    Fiber* f = worker->current;
    f->state = AT_BARRIER;
    f->file = file;
    f->line = line;
    switch_to_scheduler(f);
}

static uint64_t api_warp(int op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
    Fiber* f = worker->current;
    f->state = AT_WARP;
    f->op = op;
    f->mask = mask;
    f->value = value;
    f->arg = arg;
    f->width = width;
    f->file = file;
    f->line = line;
    switch_to_scheduler(f);
    return f->result;
}

static void* api_dynamic_shared() { return worker->dyn_shared; }

[[noreturn]] static void api_trap(const char* what, const char* file, int line) {
    Fiber* f = worker->current;
    char buf[512];
    snprintf(buf, sizeof buf, "%s at %s:%d in %s", what, file, line, thread_name(*f).c_str());
    worker->error = buf;
    f->state = TRAPPED;
    switch_to_scheduler(f);
    abort();  // never resumed
}

static const Api API = {API_VERSION, api_syncthreads, api_warp, api_dynamic_shared, api_trap};

static const char* warp_op_name(int op) {
    static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                  "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp"};
    return op >= 0 && op < 8 ? names[op] : "a warp intrinsic";
}

// ---- running one block ----------------------------------------------------------------------

static bool block_error(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    worker->error = format(fmt, ap);
    va_end(ap);
    worker->fibers_fresh = false;  // fibers left mid-kernel
    return false;
}

// Completes a warp meeting: every lane named in the mask has arrived.
static bool finish_warp(unsigned w, unsigned first, std::deque<Fiber*>& ready) {
    WarpMeeting& m = worker->warps[w];
    Fiber* lanes = &worker->fibers[first];
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; l++)
        if ((m.mask >> l & 1) && lanes[l].value) ballot |= 1u << l;
    for (unsigned l = 0; l < 32; l++) {
        if (!(m.mask >> l & 1)) continue;
        Fiber& f = lanes[l];
        int width = f.width;
        if (width <= 0 || width > 32 || (width & (width - 1)))
            return block_error("%s at %s:%d: width %d is not a power of two <= 32", warp_op_name(m.op), f.file, f.line,
                               width);
        unsigned base = l & ~(unsigned)(width - 1), src = l;
        switch (m.op) {
            case SHFL_IDX: src = base + ((unsigned)f.arg & (width - 1)); break;
            case SHFL_UP: src = (l - base) >= (unsigned)f.arg ? l - f.arg : l; break;
            case SHFL_DOWN: src = (l - base) + (unsigned)f.arg < (unsigned)width ? l + f.arg : l; break;
            case SHFL_XOR: src = l ^ (unsigned)f.arg; if (src >= base + width) src = l; break;
            default: break;
        }
        if (m.op <= SHFL_XOR) {
            if (src >= 32 || !(m.mask >> src & 1))
                return block_error("%s at %s:%d: %s reads lane %u, which is not in the mask 0x%08x", warp_op_name(m.op),
                                   f.file, f.line, thread_name(f).c_str(), src, m.mask);
            f.result = lanes[src].value;
        } else if (m.op == BALLOT) {
            f.result = ballot;
        } else if (m.op == ANY) {
            f.result = ballot != 0;
        } else if (m.op == ALL) {
            f.result = ballot == m.mask;
        }
        f.state = READY;
    }
    // The warp goes on next, lanes in order: it stays in cache.
    for (unsigned l = 32; l-- > 0;)
        if (m.mask >> l & 1) ready.push_front(&lanes[l]);
    m = WarpMeeting{};
    return true;
}

static bool run_block(uint3 block, uint3 bdim, uint3 grid) {
    unsigned n = bdim.x * bdim.y * bdim.z;
    ensure_fibers(n);
    unsigned nwarps = (n + 31) / 32;
    worker->warps.assign(nwarps, WarpMeeting{});
    worker->exited.assign(nwarps, 0);
    std::deque<Fiber*> ready;
    for (unsigned i = 0; i < n; i++) {
        Fiber& f = worker->fibers[i];
        f.index = i;
        f.state = READY;
        f.info = ThreadInfo{{i % bdim.x, (i / bdim.x) % bdim.y, i / (bdim.x * bdim.y)}, block, bdim, grid};
        ready.push_back(&f);
    }
    unsigned at_barrier = 0, done = 0;
    const Fiber* exited = nullptr;
    const Fiber* barrier_first = nullptr;
    while (!ready.empty()) {
        Fiber* f = ready.front();
        ready.pop_front();
        resume(f);
        unsigned w = f->index / 32, lane = f->index % 32, first = w * 32;
        unsigned lanes_in_warp = std::min(32u, n - first);
        unsigned existing = lanes_in_warp == 32 ? 0xffffffffu : (1u << lanes_in_warp) - 1;
        switch (f->state) {
            case TRAPPED:
                worker->fibers_fresh = false;
                return false;
            case DONE:
                done++;
                worker->exited[w] |= 1u << lane;
                if (!exited) exited = f;
                if (at_barrier)
                    return block_error("__syncthreads at %s:%d is not reached by every thread: %s exited while %u "
                                       "threads wait there", barrier_first->file, barrier_first->line,
                                       thread_name(*f).c_str(), at_barrier);
                if (worker->warps[w].arrived && (worker->warps[w].mask >> lane & 1))
                    return block_error("%s at %s:%d: %s, named in the mask 0x%08x, exited without reaching it",
                                       warp_op_name(worker->warps[w].op), worker->warps[w].file,
                                       worker->warps[w].line, thread_name(*f).c_str(), worker->warps[w].mask);
                break;
            case AT_BARRIER:
                if (exited)
                    return block_error("__syncthreads at %s:%d is not reached by every thread: %s exited before it",
                                       f->file, f->line, thread_name(*exited).c_str());
                if (!at_barrier) barrier_first = f;
                if (f->file != barrier_first->file || f->line != barrier_first->line)
                    return block_error("threads of block (%u,%u,%u) wait at different __syncthreads: %s:%d and %s:%d",
                                       block.x, block.y, block.z, barrier_first->file, barrier_first->line, f->file,
                                       f->line);
                if (++at_barrier == n) {
                    for (unsigned i = 0; i < n; i++) {
                        worker->fibers[i].state = READY;
                        ready.push_back(&worker->fibers[i]);
                    }
                    at_barrier = 0;
                }
                break;
            case AT_WARP: {
                WarpMeeting& m = worker->warps[w];
                if (!(f->mask >> lane & 1))
                    return block_error("%s at %s:%d: %s calls it with a mask 0x%08x that does not name its own lane %u",
                                       warp_op_name(f->op), f->file, f->line, thread_name(*f).c_str(), f->mask, lane);
                if (f->mask & ~existing)
                    return block_error("%s at %s:%d: the mask 0x%08x names lanes that do not exist (the block has "
                                       "%u threads, so warp %u has %u)", warp_op_name(f->op), f->file, f->line, f->mask,
                                       n, w, lanes_in_warp);
                if (m.arrived == 0) {
                    m.op = f->op;
                    m.mask = f->mask;
                    m.file = f->file;
                    m.line = f->line;
                } else if (m.op != f->op || m.mask != f->mask) {
                    return block_error("lanes of warp %u of block (%u,%u,%u) meet at different warp intrinsics: %s "
                                       "(mask 0x%08x) at %s:%d and %s (mask 0x%08x) at %s:%d", w, block.x, block.y,
                                       block.z, warp_op_name(m.op), m.mask, m.file, m.line, warp_op_name(f->op),
                                       f->mask, f->file, f->line);
                }
                if (unsigned gone = m.mask & worker->exited[w])
                    return block_error("%s at %s:%d: %s, named in the mask 0x%08x, already exited",
                                       warp_op_name(m.op), m.file, m.line,
                                       thread_name(worker->fibers[first + __builtin_ctz(gone)]).c_str(), m.mask);
                m.arrived |= 1u << lane;
                if (m.arrived == m.mask && !finish_warp(w, first, ready)) return false;
                break;
            }
            case READY:
                break;
        }
    }
    if (done == n) return true;
    // Nobody can run: describe who waits where.
    for (unsigned i = 0; i < n; i++) {
        const Fiber& f = worker->fibers[i];
        if (f.state == AT_WARP)
            return block_error("deadlock in block (%u,%u,%u): %s waits at %s at %s:%d for lanes 0x%08x (arrived 0x%08x)",
                               block.x, block.y, block.z, thread_name(f).c_str(), warp_op_name(f.op), f.file, f.line,
                               f.mask, worker->warps[i / 32].arrived);
    }
    return block_error("deadlock in block (%u,%u,%u): %u of %u threads wait at __syncthreads", block.x, block.y, block.z,
                       at_barrier, n);
}

// ---- the worker pool ------------------------------------------------------------------------

struct Launch {
    const Module* module;
    const KernelInfo* kernel;
    void* handle;  // the module's dlopen handle (its TLS)
    void** params;
    uint3 grid, block;
    size_t dyn_shared;
    uint64_t blocks;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex lock;
    std::string error;
    CUresult code = SUCCESS;
};

static void fail_launch(Launch& l, CUresult code, const std::string& why) {
    std::lock_guard<std::mutex> g(l.lock);
    if (!l.failed.exchange(true)) {
        l.code = code;
        l.error = why;
    }
}

static std::pair<char*, size_t> module_tls(Launch& l) {
    auto it = worker->tls.find(l.module);
    if (it != worker->tls.end()) return it->second;
    l.module->touch_tls();
    void* data = nullptr;
    dlinfo(l.handle, RTLD_DI_TLS_DATA, &data);
    struct link_map* map = nullptr;
    dlinfo(l.handle, RTLD_DI_LINKMAP, &map);
    struct Query {
        uintptr_t base;
        size_t size;
    } q{map ? map->l_addr : 0, 0};
    dl_iterate_phdr(
        [](struct dl_phdr_info* info, size_t, void* p) {
            Query* q = (Query*)p;
            if (info->dlpi_addr != q->base) return 0;
            for (int i = 0; i < info->dlpi_phnum; i++)
                if (info->dlpi_phdr[i].p_type == PT_TLS) q->size = info->dlpi_phdr[i].p_memsz;
            return 1;
        },
        &q);
    auto r = std::make_pair((char*)data, data ? q.size : 0);
    worker->tls[l.module] = r;
    return r;
}

static void run_blocks(Launch& l) {
    worker->module = l.module;
    worker->kernel = l.kernel;
    worker->params = l.params;
    auto [tls, tls_size] = module_tls(l);
    if (worker->dyn_capacity < l.dyn_shared) {
        size_t cap = round_up(std::max(l.dyn_shared, (size_t)PAGE), PAGE);
        char* m = (char*)mmap(nullptr, cap + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        mprotect(m + cap, PAGE, PROT_NONE);
        worker->dyn_region = m;
        worker->dyn_capacity = cap;
    }
    // Ends at the guard page, 16-byte aligned (CUDA aligns dynamic shared memory at least so).
    worker->dyn_shared = l.dyn_shared
        ? (void*)(((uintptr_t)worker->dyn_region + worker->dyn_capacity - l.dyn_shared) & ~(uintptr_t)15)
        : nullptr;
    sigjmp_buf jump;
    if (sigsetjmp(jump, 1)) {
        fault_jump = nullptr;
        worker->fibers_fresh = false;
        const Fiber* f = worker->current;
        std::string where = describe_address(fault.address);
        uintptr_t a = fault.address;
        if (worker->dyn_region && a >= (uintptr_t)worker->dyn_region + worker->dyn_capacity &&
            a < (uintptr_t)worker->dyn_region + worker->dyn_capacity + PAGE)
            where = "an address past the end of the launch's " + std::to_string(l.dyn_shared) + " bytes of dynamic shared memory";
        for (const auto& fb : worker->fibers)
            if (a >= (uintptr_t)fb.stack - PAGE && a < (uintptr_t)fb.stack) where = "a thread's stack overflowed";
        char buf[1024];
        if (fault.signal == SIGFPE)
            snprintf(buf, sizeof buf, "kernel %s: arithmetic exception (integer division by zero?) in %s", l.kernel->name,
                     f ? thread_name(*f).c_str() : "?");
        else
            snprintf(buf, sizeof buf, "kernel %s: illegal memory access at %s, in %s", l.kernel->name, where.c_str(),
                     f ? thread_name(*f).c_str() : "?");
        fail_launch(l, ILLEGAL_ADDRESS, buf);
        return;
    }
    fault_jump = &jump;
    for (;;) {
        if (l.failed.load()) break;
        uint64_t b = l.next.fetch_add(1);
        if (b >= l.blocks) break;
        uint3 bid{(unsigned)(b % l.grid.x), (unsigned)(b / l.grid.x % l.grid.y),
                  (unsigned)(b / ((uint64_t)l.grid.x * l.grid.y))};
        if (tls_size) memset(tls, 0xff, tls_size);
        if (l.dyn_shared) memset(worker->dyn_shared, 0xff, l.dyn_shared);
        if (!run_block(bid, l.block, l.grid)) {
            fault_jump = nullptr;
            fail_launch(l, LAUNCH_FAILED, "kernel " + std::string(l.kernel->name) + ": " + worker->error);
            return;
        }
    }
    fault_jump = nullptr;
}

struct Pool {
    std::mutex lock;
    std::condition_variable wake, idle;
    Launch* job = nullptr;
    uint64_t generation = 0;
    unsigned busy = 0;
    std::vector<std::thread> threads;

    void start(unsigned n) {
        for (unsigned i = 0; i < n; i++) threads.emplace_back([this] { loop(); });
    }
    void loop() {
        Worker w;
        worker = &w;
        ensure_signal_stack();
        uint64_t seen = 0;
        for (;;) {
            Launch* l;
            {
                std::unique_lock<std::mutex> g(lock);
                wake.wait(g, [&] { return generation != seen; });
                seen = generation;
                l = job;
            }
            run_blocks(*l);
            std::lock_guard<std::mutex> g(lock);
            if (--busy == 0) idle.notify_all();
        }
    }
    // One launch at a time, whichever host thread issues it.
    std::mutex launching;
    void run(Launch& l) {
        std::lock_guard<std::mutex> one(launching);
        std::unique_lock<std::mutex> g(lock);
        job = &l;
        busy = (unsigned)threads.size();
        generation++;
        wake.notify_all();
        idle.wait(g, [&] { return busy == 0; });
        job = nullptr;
    }
};

static Pool& pool() {
    static Pool* p = [] {
        Pool* p = new Pool;  // never destroyed: its threads live as long as the process
        const char* v = getenv("FERROLM_CUDA_EMULATOR_THREADS");
        unsigned n = v ? (unsigned)atoi(v) : std::thread::hardware_concurrency();
        p->start(std::max(1u, std::min(n, 64u)));
        return p;
    }();
    return *p;
}

// ---- modules and functions ------------------------------------------------------------------

struct ModuleRec {
    void* handle;
    const Module* module;
};
struct FunctionRec {
    ModuleRec* module;
    const KernelInfo* kernel;
    int max_dynamic_shared = 48 * 1024;  // raised by cuFuncSetAttribute
};

static std::mutex module_lock;
static std::vector<FunctionRec*> functions;  // never freed: handles stay valid

static const char MODULE_MAGIC[] = "// ferrolm CUDA emulator module: ";
static const int SMS = 132;
static const int MAX_SHARED_OPTIN = 227 * 1024;

extern "C" CUresult cuModuleLoadData(CUmodule* out, const void* image) {
    CHECK_STICKY();
    const char* text = (const char*)image;
    if (!out || !text) return fail(INVALID_VALUE, "cuModuleLoadData: null argument");
    if (strncmp(text, MODULE_MAGIC, sizeof MODULE_MAGIC - 1) != 0)
        return fail(INVALID_IMAGE, "cuModuleLoadData: this image was not made by the emulator's NVRTC (real PTX or "
                    "cubin cannot run on the CPU; a kernel cache shared with a real GPU?)");
    std::string path(text + sizeof MODULE_MAGIC - 1);
    path = path.substr(0, path.find('\n'));
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) return fail(INVALID_IMAGE, "cuModuleLoadData: %s", dlerror());
    auto init = (ferrolm_emu_module_init_fn)dlsym(handle, "ferrolm_emu_module_init");
    if (!init) return fail(INVALID_IMAGE, "cuModuleLoadData: %s has no kernels table", path.c_str());
    const Module* m = init(&API);
    if (!m || m->version != API_VERSION)
        return fail(INVALID_IMAGE, "cuModuleLoadData: %s was built for another emulator version", path.c_str());
    *out = new ModuleRec{handle, m};
    return SUCCESS;
}

extern "C" CUresult cuModuleLoadDataEx(CUmodule* out, const void* image, unsigned, void*, void**) {
    return cuModuleLoadData(out, image);
}

extern "C" CUresult cuModuleUnload(CUmodule m) {
    // The library stays loaded: its code may be referenced by functions still held.
    return m ? SUCCESS : fail(INVALID_HANDLE, "cuModuleUnload: null module");
}

extern "C" CUresult cuModuleGetFunction(CUfunction* out, CUmodule mod, const char* name) {
    CHECK_STICKY();
    ModuleRec* m = (ModuleRec*)mod;
    if (!out || !m || !name) return fail(INVALID_VALUE, "cuModuleGetFunction: null argument");
    std::string names;
    for (int i = 0; i < m->module->num_kernels; i++) {
        const KernelInfo* k = &m->module->kernels[i];
        if (strcmp(k->name, name) == 0) {
            auto* f = new FunctionRec{m, k};
            std::lock_guard<std::mutex> g(module_lock);
            functions.push_back(f);
            *out = f;
            return SUCCESS;
        }
        names += (i ? ", " : "") + std::string(k->name);
    }
    return fail(NOT_FOUND, "cuModuleGetFunction: no kernel named `%s` in this module (it has %s)", name, names.c_str());
}

enum FuncAttr {
    FUNC_MAX_THREADS_PER_BLOCK = 0,
    FUNC_SHARED_SIZE_BYTES = 1,
    FUNC_CONST_SIZE_BYTES = 2,
    FUNC_LOCAL_SIZE_BYTES = 3,
    FUNC_NUM_REGS = 4,
    FUNC_PTX_VERSION = 5,
    FUNC_BINARY_VERSION = 6,
    FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8,
};

extern "C" CUresult cuFuncGetAttribute(int* out, int attr, CUfunction fn) {
    FunctionRec* f = (FunctionRec*)fn;
    if (!out || !f) return fail(INVALID_VALUE, "cuFuncGetAttribute: null argument");
    switch (attr) {
        case FUNC_MAX_THREADS_PER_BLOCK: *out = 1024; return SUCCESS;
        case FUNC_SHARED_SIZE_BYTES: *out = (int)f->kernel->static_shared; return SUCCESS;
        case FUNC_CONST_SIZE_BYTES: case FUNC_LOCAL_SIZE_BYTES: *out = 0; return SUCCESS;
        case FUNC_NUM_REGS: *out = 32; return SUCCESS;
        case FUNC_PTX_VERSION: case FUNC_BINARY_VERSION: *out = 90; return SUCCESS;
        case FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES: *out = f->max_dynamic_shared; return SUCCESS;
        default: return fail(NOT_SUPPORTED, "cuFuncGetAttribute: attribute %d is not emulated", attr);
    }
}

extern "C" CUresult cuFuncSetAttribute(CUfunction fn, int attr, int value) {
    FunctionRec* f = (FunctionRec*)fn;
    if (!f) return fail(INVALID_HANDLE, "cuFuncSetAttribute: null function");
    if (attr != FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES)
        return fail(NOT_SUPPORTED, "cuFuncSetAttribute: attribute %d is not emulated", attr);
    if (value < 0 || (size_t)value + f->kernel->static_shared > (size_t)MAX_SHARED_OPTIN)
        return fail(INVALID_VALUE, "cuFuncSetAttribute: %d bytes of dynamic shared memory for %s: with its %zu static "
                    "bytes that is over the %d a block may opt in to", value, f->kernel->name,
                    f->kernel->static_shared, MAX_SHARED_OPTIN);
    f->max_dynamic_shared = value;
    return SUCCESS;
}

extern "C" CUresult cuFuncSetCacheConfig(CUfunction, int) { return SUCCESS; }

// Reads `n` bytes at `src` into `dst`, or fails if `src` is not readable
// (kernel arguments come as pointers the emulator must not trust).
static bool guarded_copy(void* dst, const void* src, size_t n) {
    install_fault_handler();
    sigjmp_buf jump;
    if (sigsetjmp(jump, 1)) {
        fault_jump = nullptr;
        return false;
    }
    fault_jump = &jump;
    memcpy(dst, src, n);
    fault_jump = nullptr;
    return true;
}

extern "C" CUresult cuLaunchKernel(CUfunction fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                   unsigned bz, unsigned shared, CUstream, void** params, void** extra) {
    CHECK_STICKY();
    FunctionRec* f = (FunctionRec*)fn;
    if (!f) return fail(INVALID_HANDLE, "cuLaunchKernel: null function");
    const KernelInfo* k = f->kernel;
    if (extra) return fail(NOT_SUPPORTED, "cuLaunchKernel(%s): the `extra` argument form is not emulated", k->name);
    if (bx == 0 || by == 0 || bz == 0 || gx == 0 || gy == 0 || gz == 0)
        return fail(INVALID_VALUE, "cuLaunchKernel(%s): grid (%u,%u,%u) block (%u,%u,%u) has a zero dimension", k->name,
                    gx, gy, gz, bx, by, bz);
    if (bx > 1024 || by > 1024 || bz > 64 || (uint64_t)bx * by * bz > 1024)
        return fail(INVALID_VALUE, "cuLaunchKernel(%s): block (%u,%u,%u) is over CUDA's limits (1024 threads, x and y "
                    "<= 1024, z <= 64)", k->name, bx, by, bz);
    if (gx > 2147483647u || gy > 65535 || gz > 65535)
        return fail(INVALID_VALUE, "cuLaunchKernel(%s): grid (%u,%u,%u) is over CUDA's limits (x < 2^31, y and z <= "
                    "65535)", k->name, gx, gy, gz);
    if (shared > (unsigned)f->max_dynamic_shared)
        return fail(INVALID_VALUE, "cuLaunchKernel(%s): %u bytes of dynamic shared memory; a kernel may use %d without "
                    "opting in (cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES)", k->name, shared,
                    f->max_dynamic_shared);
    if (shared + k->static_shared > (size_t)std::max(48 * 1024, f->max_dynamic_shared + (int)k->static_shared))
        return fail(INVALID_VALUE, "cuLaunchKernel(%s): %u dynamic + %zu static bytes of shared memory is over 48 KiB",
                    k->name, shared, k->static_shared);
    if (k->num_params > 0 && !params)
        return fail(INVALID_VALUE, "cuLaunchKernel(%s): the kernel takes %d arguments and none were given", k->name,
                    k->num_params);
    // The driver copies the arguments at launch; so does the emulator, checking pointers.
    std::vector<std::vector<unsigned char>> copies(k->num_params);
    std::vector<void*> args(k->num_params + 1);
    void* slots[256];
    if (k->num_params > 256) return fail(NOT_SUPPORTED, "cuLaunchKernel(%s): over 256 arguments", k->name);
    if (k->num_params && !guarded_copy(slots, params, sizeof(void*) * k->num_params))
        return fail(INVALID_VALUE, "cuLaunchKernel(%s): its argument list is unreadable (the kernel takes %d)", k->name,
                    k->num_params);
    for (int i = 0; i < k->num_params; i++) {
        copies[i].resize(std::max<size_t>(k->param_sizes[i], 8));
        if (!slots[i] || !guarded_copy(copies[i].data(), slots[i], k->param_sizes[i]))
            return fail(INVALID_VALUE, "cuLaunchKernel(%s): argument %d of %d cannot be read: fewer arguments than the "
                        "kernel takes?", k->name, i, k->num_params);
        args[i] = copies[i].data();
    }
    for (int i = 0; i < k->num_params; i++) {
        if (!k->param_is_pointer[i]) continue;
        uintptr_t p;
        memcpy(&p, copies[i].data(), sizeof p);
        bool ok;
        {
            std::lock_guard<std::mutex> g(memory_lock);
            ok = p == 0 || find_live(p, 0);
        }
        if (!ok)
            return fail(INVALID_VALUE, "cuLaunchKernel(%s): argument %d (of %d) is a pointer parameter but holds %s "
                        "(arguments out of order, or a wrong count?)", k->name, i, k->num_params,
                        describe_address(p).c_str());
    }
    install_fault_handler();
    Launch l;
    l.module = f->module->module;
    l.kernel = k;
    l.handle = f->module->handle;
    l.params = args.data();
    l.grid = uint3{gx, gy, gz};
    l.block = uint3{bx, by, bz};
    l.dyn_shared = shared;
    l.blocks = (uint64_t)gx * gy * gz;
    pool().run(l);
    if (l.failed) return fail_sticky(l.code, l.error);
    return SUCCESS;
}

// ---- device, context, streams, events --------------------------------------------------------

static std::atomic<int> primary_refs{0};
static int primary_context;  // its address is the context handle
static thread_local CUcontext current = nullptr;

extern "C" CUresult cuInit(unsigned flags) {
    return flags ? fail(INVALID_VALUE, "cuInit: flags must be 0") : SUCCESS;
}
extern "C" CUresult cuDriverGetVersion(int* v) {
    if (!v) return fail(INVALID_VALUE, "cuDriverGetVersion: null");
    *v = 12040;
    return SUCCESS;
}
extern "C" CUresult cuDeviceGetCount(int* n) {
    if (!n) return fail(INVALID_VALUE, "cuDeviceGetCount: null");
    *n = 1;
    return SUCCESS;
}
extern "C" CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (!d) return fail(INVALID_VALUE, "cuDeviceGet: null");
    if (ordinal != 0) return fail(INVALID_DEVICE, "cuDeviceGet(%d): the emulator has one device, 0", ordinal);
    *d = 0;
    return SUCCESS;
}
extern "C" CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (!name || len <= 0 || d != 0) return fail(INVALID_VALUE, "cuDeviceGetName: bad arguments");
    snprintf(name, (size_t)len, "ferrolm CUDA emulator (CPU)");
    return SUCCESS;
}
extern "C" CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    if (!bytes) return fail(INVALID_VALUE, "cuDeviceTotalMem: null");
    *bytes = memory_limit();
    return SUCCESS;
}
extern "C" CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice) {
    if (!uuid) return fail(INVALID_VALUE, "cuDeviceGetUuid: null");
    memcpy(uuid, "ferrolm-emulator", 16);
    return SUCCESS;
}
extern "C" CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }

extern "C" CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    if (!v) return fail(INVALID_VALUE, "cuDeviceGetAttribute: null");
    if (d != 0) return fail(INVALID_DEVICE, "cuDeviceGetAttribute: device %d", d);
    // An H100-like device (compute capability 9.0).
    switch (attr) {
        case 1: *v = 1024; break;                    // max threads per block
        case 2: case 3: *v = 1024; break;            // max block dim x, y
        case 4: *v = 64; break;                      // max block dim z
        case 5: *v = 2147483647; break;              // max grid dim x
        case 6: case 7: *v = 65535; break;           // max grid dim y, z
        case 8: *v = 48 * 1024; break;               // shared memory per block
        case 9: *v = 64 * 1024; break;               // constant memory
        case 10: *v = 32; break;                     // warp size
        case 12: *v = 65536; break;                  // registers per block
        case 13: *v = 1980000; break;                // clock rate (kHz)
        case 16: *v = SMS; break;                    // multiprocessors
        case 18: *v = 0; break;                      // integrated
        case 19: *v = 1; break;                      // can map host memory
        case 36: *v = 2619000; break;                // memory clock (kHz)
        case 37: *v = 5120; break;                   // bus width
        case 38: *v = 50 * 1024 * 1024; break;       // L2
        case 39: *v = 2048; break;                   // threads per multiprocessor
        case 41: *v = 1; break;                      // unified addressing
        case 75: *v = 9; break;                      // compute capability major
        case 76: *v = 0; break;                      // minor
        case 81: *v = 228 * 1024; break;             // shared memory per multiprocessor
        case 89: *v = 0; break;                      // concurrent managed access
        case 97: *v = MAX_SHARED_OPTIN; break;       // shared memory per block, opt-in
        case 115: *v = 1; break;                     // memory pools (cuMemAllocAsync)
        default: return fail(NOT_SUPPORTED, "cuDeviceGetAttribute: attribute %d is not emulated", attr);
    }
    return SUCCESS;
}

extern "C" CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice d) {
    if (!ctx) return fail(INVALID_VALUE, "cuDevicePrimaryCtxRetain: null");
    if (d != 0) return fail(INVALID_DEVICE, "cuDevicePrimaryCtxRetain: device %d", d);
    primary_refs++;
    *ctx = &primary_context;
    return SUCCESS;
}
extern "C" CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) {
    if (--primary_refs == 0) {
        // A fresh primary context next time: as on a GPU, a failed one is gone with it.
        std::lock_guard<std::mutex> g(sticky_lock);
        sticky_code = SUCCESS;
        sticky_message.clear();
    }
    return SUCCESS;
}
extern "C" CUresult cuDevicePrimaryCtxReset_v2(CUdevice) {
    std::lock_guard<std::mutex> g(sticky_lock);
    sticky_code = SUCCESS;
    sticky_message.clear();
    return SUCCESS;
}
extern "C" CUresult cuDevicePrimaryCtxGetState(CUdevice, unsigned* flags, int* active) {
    if (flags) *flags = 0;
    if (active) *active = primary_refs > 0;
    return SUCCESS;
}
extern "C" CUresult cuCtxSetCurrent(CUcontext ctx) {
    if (ctx && ctx != &primary_context) return fail(INVALID_CONTEXT, "cuCtxSetCurrent: unknown context");
    current = ctx;
    return SUCCESS;
}
extern "C" CUresult cuCtxGetCurrent(CUcontext* ctx) {
    if (!ctx) return fail(INVALID_VALUE, "cuCtxGetCurrent: null");
    *ctx = current;
    return SUCCESS;
}
extern "C" CUresult cuCtxPushCurrent_v2(CUcontext ctx) { return cuCtxSetCurrent(ctx); }
extern "C" CUresult cuCtxPopCurrent_v2(CUcontext* ctx) {
    if (ctx) *ctx = current;
    current = nullptr;
    return SUCCESS;
}
extern "C" CUresult cuCtxGetDevice(CUdevice* d) {
    if (!d) return fail(INVALID_VALUE, "cuCtxGetDevice: null");
    *d = 0;
    return SUCCESS;
}
extern "C" CUresult cuCtxSynchronize() {
    CHECK_STICKY();
    return SUCCESS;
}

// Streams and events: work runs when it is issued, so a stream is always idle.
struct Event {
    std::chrono::steady_clock::time_point at;
};

extern "C" CUresult cuStreamCreate(CUstream* s, unsigned) {
    if (!s) return fail(INVALID_VALUE, "cuStreamCreate: null");
    *s = new int(0);
    return SUCCESS;
}
extern "C" CUresult cuStreamCreateWithPriority(CUstream* s, unsigned flags, int) { return cuStreamCreate(s, flags); }
extern "C" CUresult cuStreamDestroy_v2(CUstream s) {
    delete (int*)s;
    return SUCCESS;
}
extern "C" CUresult cuStreamSynchronize(CUstream) {
    CHECK_STICKY();
    return SUCCESS;
}
extern "C" CUresult cuStreamQuery(CUstream) {
    CHECK_STICKY();
    return SUCCESS;
}
extern "C" CUresult cuStreamWaitEvent(CUstream, CUevent e, unsigned) {
    CHECK_STICKY();
    return e ? SUCCESS : fail(INVALID_HANDLE, "cuStreamWaitEvent: null event");
}
extern "C" CUresult cuEventCreate(CUevent* e, unsigned) {
    if (!e) return fail(INVALID_VALUE, "cuEventCreate: null");
    *e = new Event{std::chrono::steady_clock::now()};
    return SUCCESS;
}
extern "C" CUresult cuEventRecord(CUevent e, CUstream) {
    if (!e) return fail(INVALID_HANDLE, "cuEventRecord: null event");
    ((Event*)e)->at = std::chrono::steady_clock::now();
    return SUCCESS;
}
extern "C" CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned) { return cuEventRecord(e, s); }
extern "C" CUresult cuEventQuery(CUevent) {
    CHECK_STICKY();
    return SUCCESS;
}
extern "C" CUresult cuEventSynchronize(CUevent) {
    CHECK_STICKY();
    return SUCCESS;
}
extern "C" CUresult cuEventDestroy_v2(CUevent e) {
    delete (Event*)e;
    return SUCCESS;
}
extern "C" CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    if (!ms || !a || !b) return fail(INVALID_VALUE, "cuEventElapsedTime: null");
    *ms = std::chrono::duration<float, std::milli>(((Event*)b)->at - ((Event*)a)->at).count();
    return SUCCESS;
}

// ---- memory API ------------------------------------------------------------------------------

extern "C" CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    CHECK_STICKY();
    return allocate(p, n);
}
extern "C" CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream) {
    CHECK_STICKY();
    return allocate(p, n);
}
extern "C" CUresult cuMemFree_v2(CUdeviceptr p) { return release(p); }
extern "C" CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return release(p); }
extern "C" CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(memory_lock);
    if (free_bytes) *free_bytes = memory_limit() - used_bytes;
    if (total) *total = memory_limit();
    return SUCCESS;
}

extern "C" CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    CHECK_STICKY();
    if (CUresult r = check_copy("cuMemcpyHtoD destination", dst, n)) return r;
    if (n) memcpy((void*)dst, src, n);
    return SUCCESS;
}
extern "C" CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream) {
    return cuMemcpyHtoD_v2(dst, src, n);
}
extern "C" CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    CHECK_STICKY();
    if (CUresult r = check_copy("cuMemcpyDtoH source", src, n)) return r;
    if (n) memcpy(dst, (const void*)src, n);
    return SUCCESS;
}
extern "C" CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream) {
    return cuMemcpyDtoH_v2(dst, src, n);
}
extern "C" CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    CHECK_STICKY();
    if (CUresult r = check_copy("cuMemcpyDtoD source", src, n)) return r;
    if (CUresult r = check_copy("cuMemcpyDtoD destination", dst, n)) return r;
    if (n) memmove((void*)dst, (const void*)src, n);
    return SUCCESS;
}
extern "C" CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) {
    return cuMemcpyDtoD_v2(dst, src, n);
}
extern "C" CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    CHECK_STICKY();
    if (CUresult r = check_copy("cuMemsetD8", dst, n)) return r;
    if (n) memset((void*)dst, v, n);
    return SUCCESS;
}
extern "C" CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream) {
    return cuMemsetD8_v2(dst, v, n);
}
extern "C" CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned v, size_t n) {
    CHECK_STICKY();
    if (CUresult r = check_copy("cuMemsetD32", dst, n * 4)) return r;
    std::fill((unsigned*)dst, (unsigned*)dst + n, v);
    return SUCCESS;
}
extern "C" CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, CUstream) {
    return cuMemsetD32_v2(dst, v, n);
}

// ---- error strings ---------------------------------------------------------------------------

static const char* error_name(CUresult code) {
    switch (code) {
        case SUCCESS: return "CUDA_SUCCESS";
        case INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
        case OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
        case NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
        case INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
        case INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
        case INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
        case INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
        case NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
        case NOT_READY: return "CUDA_ERROR_NOT_READY";
        case ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
        case LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
        case LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
        case NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
        default: return nullptr;
    }
}

extern "C" CUresult cuGetErrorName(CUresult code, const char** out) {
    if (!out) return INVALID_VALUE;
    *out = error_name(code);
    return *out ? SUCCESS : INVALID_VALUE;
}

extern "C" CUresult cuGetErrorString(CUresult code, const char** out) {
    if (!out) return INVALID_VALUE;
    if (code == last_code && !last_message.empty()) {
        *out = last_message.c_str();
        return SUCCESS;
    }
    *out = error_name(code);
    return *out ? SUCCESS : INVALID_VALUE;
}
