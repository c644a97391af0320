// libnvrtc stand-in: "compiles" a CUDA program by compiling the same source
// with the system C++ compiler (cuda_cpu.h maps CUDA's built-ins onto the
// emulator) into a shared library, whose path is the "PTX" the driver
// stand-in's cuModuleLoadData loads.
//
// The source is compiled as written, except for one form C++ cannot express:
// `extern __shared__ T name[];` (dynamic shared memory, sized per launch)
// becomes `T* name = <this block's dynamic shared memory>;`. A kernel table
// is appended: for each `extern "C" __global__` function its parameter sizes
// and kinds (from its C++ type) and its static shared memory (the sizes of
// its `__shared__` declarations, plus those outside any kernel).
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifndef FERROLM_EMU_DIR
#error "FERROLM_EMU_DIR: the folder with cuda_cpu.h, set when the emulator is built"
#endif

typedef int nvrtcResult;
enum : nvrtcResult {
    NVRTC_SUCCESS = 0,
    NVRTC_ERROR_OUT_OF_MEMORY = 1,
    NVRTC_ERROR_INVALID_INPUT = 3,
    NVRTC_ERROR_INVALID_PROGRAM = 4,
    NVRTC_ERROR_INVALID_OPTION = 5,
    NVRTC_ERROR_COMPILATION = 6,
    NVRTC_ERROR_INTERNAL_ERROR = 11,
};

struct Program {
    std::string source, name, log, ptx;
};

static const char MODULE_MAGIC[] = "// ferrolm CUDA emulator module: ";

// ---- scanning the source --------------------------------------------------------------------

// The source with comments and string literals blanked (same length, same
// newlines), so a scan finds only code.
static std::string code_only(const std::string& s) {
    std::string out = s;
    size_t i = 0, n = s.size();
    while (i < n) {
        if (s.compare(i, 2, "//") == 0) {
            while (i < n && s[i] != '\n') out[i++] = ' ';
        } else if (s.compare(i, 2, "/*") == 0) {
            size_t end = s.find("*/", i + 2);
            end = end == std::string::npos ? n : end + 2;
            for (; i < end; i++)
                if (out[i] != '\n') out[i] = ' ';
        } else if (s[i] == '"' || s[i] == '\'') {
            char q = s[i++];
            while (i < n && s[i] != q) {
                if (s[i] == '\\') out[i++] = ' ';
                if (i < n && s[i] != '\n') out[i++] = ' ';
                else i++;
            }
            i++;
        } else {
            i++;
        }
    }
    return out;
}

static bool ident_char(char c) { return isalnum((unsigned char)c) || c == '_'; }

// Position of the next whole word `w` at or after `from`.
static size_t find_word(const std::string& s, const char* w, size_t from) {
    size_t len = strlen(w);
    for (size_t p = s.find(w, from); p != std::string::npos; p = s.find(w, p + 1)) {
        bool before = p == 0 || !ident_char(s[p - 1]);
        bool after = p + len >= s.size() || !ident_char(s[p + len]);
        if (before && after) return p;
    }
    return std::string::npos;
}

static size_t matching(const std::string& s, size_t open, char o, char c) {
    int depth = 0;
    for (size_t i = open; i < s.size(); i++) {
        if (s[i] == o) depth++;
        if (s[i] == c && --depth == 0) return i;
    }
    return std::string::npos;
}

static std::string trim(const std::string& s) {
    size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// `sizeof(...)` terms for one `__shared__` declaration ("float a[4], b[8]").
static std::string shared_sizes(const std::string& decl) {
    std::vector<std::string> parts;
    int depth = 0;
    size_t start = 0;
    for (size_t i = 0; i <= decl.size(); i++) {
        if (i == decl.size() || (decl[i] == ',' && depth == 0)) {
            parts.push_back(trim(decl.substr(start, i - start)));
            start = i + 1;
        } else if (decl[i] == '[' || decl[i] == '(') {
            depth++;
        } else if (decl[i] == ']' || decl[i] == ')') {
            depth--;
        }
    }
    // The type is what precedes the first declarator's name (the identifier before its '[').
    std::string head = trim(parts[0].substr(0, parts[0].find('[')));
    size_t name_start = head.size();
    while (name_start > 0 && ident_char(head[name_start - 1])) name_start--;
    std::string type = trim(head.substr(0, name_start));
    std::string expr;
    for (const auto& part : parts) {
        size_t b = part.find('[');
        std::string dims = b == std::string::npos ? "" : " " + part.substr(b);
        expr += " + sizeof(" + type + dims + ")";
    }
    return expr;
}

struct Kernel {
    std::string name;
    size_t body_start, body_end;
    std::string shared;
};

// Rewrites the dynamic shared memory declarations and builds the kernel table.
static std::string translate(const std::string& source, const std::string& name, std::string& error) {
    std::string code = code_only(source);
    std::vector<Kernel> kernels;
    for (size_t p = find_word(code, "__global__", 0); p != std::string::npos;
         p = find_word(code, "__global__", p + 1)) {
        size_t paren = code.find('(', p);
        if (paren == std::string::npos) break;
        std::string head = trim(code.substr(p + 10, paren - p - 10));
        size_t n = head.size();
        while (n > 0 && ident_char(head[n - 1])) n--;
        std::string kname = head.substr(n);
        std::string before = code.substr(p >= 12 ? p - 12 : 0, p >= 12 ? 12 : p);
        size_t close = matching(code, paren, '(', ')');
        size_t brace = close == std::string::npos ? close : code.find_first_of("{;", close);
        if (brace == std::string::npos || code[brace] == ';') continue;  // a declaration
        if (before.find("extern") == std::string::npos) {
            error = name + ": kernel " + kname + " is not extern \"C\"; the backend looks kernels up by name";
            return "";
        }
        kernels.push_back(Kernel{kname, brace, matching(code, brace, '{', '}'), ""});
    }
    std::string common;  // shared memory declared outside kernels counts for each
    std::string out = source;
    long shift = 0;
    for (size_t p = find_word(code, "__shared__", 0); p != std::string::npos;
         p = find_word(code, "__shared__", p + 1)) {
        size_t semi = code.find(';', p);
        if (semi == std::string::npos) break;
        std::string decl = trim(code.substr(p + 10, semi - p - 10));
        size_t line_start = code.rfind('\n', p);
        line_start = line_start == std::string::npos ? 0 : line_start + 1;
        std::string lead = trim(code.substr(line_start, p - line_start));
        bool is_extern = lead.size() >= 6 && lead.compare(lead.size() - 6, 6, "extern") == 0;
        if (is_extern) {
            // `extern __shared__ T name[];` -> `T* name = dynamic shared memory;`
            size_t b = decl.find('[');
            std::string head = trim(decl.substr(0, b));
            size_t k = head.size();
            while (k > 0 && ident_char(head[k - 1])) k--;
            std::string var = head.substr(k), type = trim(head.substr(0, k));
            for (const char* attr : {"__align__", "alignas"}) {
                size_t a = type.find(attr);
                if (a != std::string::npos) type.erase(a, matching(type, type.find('(', a), '(', ')') - a + 1);
            }
            size_t ext = code.rfind("extern", p);
            std::string repl = trim(type) + "* " + var + " = (" + trim(type) + "*)ferrolm_emu::api->dynamic_shared();";
            size_t len = semi + 1 - ext;
            // Keep the line count: the replacement has no newline, pad what the declaration spanned.
            size_t newlines = 0;
            for (size_t i = ext; i <= semi; i++) newlines += code[i] == '\n';
            repl += std::string(newlines, '\n');
            out.replace(ext + shift, len, repl);
            shift += (long)repl.size() - (long)len;
            continue;
        }
        std::string sizes = shared_sizes(decl);
        bool inside = false;
        for (auto& k : kernels) {
            if (p > k.body_start && p < k.body_end) {
                k.shared += sizes;
                inside = true;
            }
        }
        if (!inside) common += sizes;
    }
    std::string tu = "#include \"cuda_cpu.h\"\n#line 1 \"" + name + "\"\n" + out + "\n";
    tu += "#line 1 \"<ferrolm CUDA emulator: kernel table of " + name + ">\"\n";
    tu += "static const ferrolm_emu::KernelInfo ferrolm_emu_kernels[] = {\n";
    for (auto& k : kernels) tu += "    FERROLM_EMU_KERNEL(" + k.name + ", 0" + k.shared + common + "),\n";
    if (kernels.empty()) tu += "    ferrolm_emu::KernelInfo{},\n";
    tu += "};\n";
    tu += "extern \"C\" const ferrolm_emu::Module* ferrolm_emu_module_init(const ferrolm_emu::Api* api) {\n"
          "    ferrolm_emu::api = api;\n"
          "    static const ferrolm_emu::Module m{ferrolm_emu::API_VERSION, " +
          std::to_string(kernels.size()) +
          ", ferrolm_emu_kernels, &ferrolm_emu::set_self, &ferrolm_emu::touch_tls};\n"
          "    return &m;\n}\n";
    return tu;
}

// ---- compiling ------------------------------------------------------------------------------

static uint64_t fnv1a(const std::string& s, uint64_t h = 1469598103934665603ull) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

static std::string quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

// Compiler flags for NVRTC's options; false (and `log`) for one it does not know.
static bool translate_options(int n, const char* const* options, std::string& flags, std::string& log) {
    int arch = 900;
    for (int i = 0; i < n; i++) {
        std::string o = options[i];
        auto value = [&](const char* prefix) -> const char* {
            size_t l = strlen(prefix);
            return o.compare(0, l, prefix) == 0 ? o.c_str() + l : nullptr;
        };
        if (const char* v = value("--gpu-architecture=") ? value("--gpu-architecture=") : value("-arch=")) {
            const char* digits = strchr(v, '_');
            if (!digits || atoi(digits + 1) < 30) {
                log += "nvrtc: error: invalid value for --gpu-architecture (-arch): " + std::string(v) + "\n";
                return false;
            }
            arch = atoi(digits + 1) * 10;
        } else if (const char* v = value("--std=") ? value("--std=") : value("-std=")) {
            std::string s = v;
            if (s != "c++03" && s != "c++11" && s != "c++14" && s != "c++17" && s != "c++20") {
                log += "nvrtc: error: invalid value for --std: " + s + "\n";
                return false;
            }
        } else if (value("-D") || value("--define-macro=")) {
            flags += " " + quote("-D" + std::string(value("-D") ? value("-D") : value("--define-macro=")));
        } else if (value("-I") || value("--include-path=")) {
            flags += " " + quote("-I" + std::string(value("-I") ? value("-I") : value("--include-path=")));
        } else if (o == "--use_fast_math" || o == "-use_fast_math" || o == "-default-device" ||
                   o == "--device-as-default-execution-space" || o == "-lineinfo" || o == "--generate-line-info" ||
                   o == "-G" || o == "--device-debug" || value("--fmad=") || value("--ftz=") ||
                   value("--prec-div=") || value("--prec-sqrt=") || value("-maxrregcount=") ||
                   value("--maxrregcount=") || o == "-ewp" || o == "--extensible-whole-program") {
            // Code generation choices of the GPU compiler: nothing to do on the CPU.
        } else {
            log += "nvrtc: error: unrecognized option " + o + "\n";
            return false;
        }
    }
    flags += " -D__CUDA_ARCH__=" + std::to_string(arch) + " -D__CUDACC__ -D__CUDACC_RTC__ -DFERROLM_CUDA_EMULATOR=1";
    return true;
}

static nvrtcResult compile(Program& p, int n, const char* const* options) {
    std::string flags, error;
    if (!translate_options(n, options, flags, p.log)) return NVRTC_ERROR_INVALID_OPTION;
    std::string tu = translate(p.source, p.name, error);
    if (tu.empty()) {
        p.log += error + "\n";
        return NVRTC_ERROR_COMPILATION;
    }
    const char* cxx = getenv("CXX") ? getenv("CXX") : "c++";
    const char* extra = getenv("FERROLM_CUDA_EMULATOR_CXXFLAGS") ? getenv("FERROLM_CUDA_EMULATOR_CXXFLAGS") : "";
    std::string dir = FERROLM_EMU_DIR;
    // -fwrapv: integer overflow wraps, as on the GPU. -fno-ipa-reference*: a
    // `__shared__` array no code writes must still be read (as NaN), not
    // folded to the zeros a never-written C++ static would hold.
    std::string base = std::string(cxx) + " -std=c++17 -O2 -fPIC -shared -pthread -fwrapv -fno-strict-aliasing -w " +
                       "-fno-ipa-reference -fno-ipa-reference-addressable " +
                       "-I" + quote(dir) + flags + " " + extra;
    char hash[32];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)fnv1a(base, fnv1a(tu)));
    std::string modules = dir + "/modules";
    mkdir(modules.c_str(), 0755);
    std::string so = modules + "/" + p.name + "-" + hash + ".so";
    if (access(so.c_str(), R_OK) != 0) {
        std::string tmp = modules + "/tmp-" + std::to_string(getpid()) + "-" + hash;
        FILE* f = fopen((tmp + ".cpp").c_str(), "w");
        if (!f) {
            p.log += "cannot write " + tmp + ".cpp\n";
            return NVRTC_ERROR_INTERNAL_ERROR;
        }
        fwrite(tu.data(), 1, tu.size(), f);
        fclose(f);
        std::string cmd = base + " -o " + quote(tmp + ".so") + " " + quote(tmp + ".cpp") + " 2>&1";
        FILE* proc = popen(cmd.c_str(), "r");
        if (!proc) {
            p.log += "cannot run the C++ compiler: " + cmd + "\n";
            return NVRTC_ERROR_INTERNAL_ERROR;
        }
        char buf[4096];
        size_t got;
        while ((got = fread(buf, 1, sizeof buf, proc)) > 0) p.log.append(buf, got);
        int status = pclose(proc);
        if (!getenv("FERROLM_CUDA_EMULATOR_KEEP_SOURCES")) unlink((tmp + ".cpp").c_str());
        if (status != 0) {
            p.log = "the C++ compiler (" + std::string(cxx) + ") refused " + p.name + ":\n" + p.log;
            unlink((tmp + ".so").c_str());
            return NVRTC_ERROR_COMPILATION;
        }
        rename((tmp + ".so").c_str(), so.c_str());
    }
    p.ptx = MODULE_MAGIC + so + "\n";
    return NVRTC_SUCCESS;
}

// ---- the API ---------------------------------------------------------------------------------

extern "C" nvrtcResult nvrtcVersion(int* major, int* minor) {
    if (!major || !minor) return NVRTC_ERROR_INVALID_INPUT;
    *major = 12;
    *minor = 4;
    return NVRTC_SUCCESS;
}

extern "C" nvrtcResult nvrtcCreateProgram(Program** prog, const char* src, const char* name, int num_headers,
                                          const char* const*, const char* const*) {
    if (!prog || !src) return NVRTC_ERROR_INVALID_INPUT;
    if (num_headers != 0) return NVRTC_ERROR_INVALID_INPUT;  // not used by ferrolm; not emulated
    *prog = new Program{src, name ? name : "default_program", "", ""};
    return NVRTC_SUCCESS;
}

extern "C" nvrtcResult nvrtcDestroyProgram(Program** prog) {
    if (!prog || !*prog) return NVRTC_ERROR_INVALID_PROGRAM;
    delete *prog;
    *prog = nullptr;
    return NVRTC_SUCCESS;
}

extern "C" nvrtcResult nvrtcCompileProgram(Program* prog, int n, const char* const* options) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    prog->log.clear();
    prog->ptx.clear();
    return compile(*prog, n, options);
}

extern "C" nvrtcResult nvrtcGetPTXSize(Program* prog, size_t* size) {
    if (!prog || !size) return NVRTC_ERROR_INVALID_INPUT;
    *size = prog->ptx.size() + 1;
    return NVRTC_SUCCESS;
}

extern "C" nvrtcResult nvrtcGetPTX(Program* prog, char* out) {
    if (!prog || !out) return NVRTC_ERROR_INVALID_INPUT;
    memcpy(out, prog->ptx.c_str(), prog->ptx.size() + 1);
    return NVRTC_SUCCESS;
}

extern "C" nvrtcResult nvrtcGetProgramLogSize(Program* prog, size_t* size) {
    if (!prog || !size) return NVRTC_ERROR_INVALID_INPUT;
    *size = prog->log.size() + 1;
    return NVRTC_SUCCESS;
}

extern "C" nvrtcResult nvrtcGetProgramLog(Program* prog, char* out) {
    if (!prog || !out) return NVRTC_ERROR_INVALID_INPUT;
    memcpy(out, prog->log.c_str(), prog->log.size() + 1);
    return NVRTC_SUCCESS;
}

extern "C" const char* nvrtcGetErrorString(nvrtcResult r) {
    switch (r) {
        case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
        case NVRTC_ERROR_OUT_OF_MEMORY: return "NVRTC_ERROR_OUT_OF_MEMORY";
        case NVRTC_ERROR_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
        case NVRTC_ERROR_INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM";
        case NVRTC_ERROR_INVALID_OPTION: return "NVRTC_ERROR_INVALID_OPTION";
        case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION";
        case NVRTC_ERROR_INTERNAL_ERROR: return "NVRTC_ERROR_INTERNAL_ERROR";
        default: return "NVRTC_ERROR (unknown)";
    }
}

extern "C" int ferrolm_emu_unsupported(const char* name) {
    fprintf(stderr, "[ferrolm CUDA emulator] %s is not implemented by the NVRTC stand-in\n", name);
    return NVRTC_ERROR_INTERNAL_ERROR;
}
