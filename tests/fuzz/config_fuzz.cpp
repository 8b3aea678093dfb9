// libFuzzer target for the YAML configuration loader: whatever the bytes, load_string either returns a
// validated config or throws config_error with a message, in bounded time. Any other exception, crash,
// leak or hang is a bug (an operator's typo must get a useful error, never a stack trace or a stall).
//
// yaml-cpp 0.7 never returns on some malformed YAML, so the loader parses untrusted text in a forked
// child first (config/src/yaml_sandbox.cpp). A fork per input costs several milliseconds in a
// sanitizer build, so this harness keeps one long-lived worker process that runs the child's code
// (detail::parse_and_classify) on every input, and is killed and restarted when it does not answer
// within the deadline. Then:
//   - the worker finished (the usual case): load_string with the sandbox off, in this process, so the
//     fuzzer sees coverage of yaml-cpp and of the whole loader; yaml-cpp is deterministic, so a hang
//     here would mean the sandbox's premise is wrong and is reported by libFuzzer's -timeout;
//   - it did not (looped, out of time or memory, crashed): load_string as production calls it (fork,
//     deadline), which must give a config_error;
//   - and for one input in 16 (chosen by content, so reproducible) load_string as production calls it
//     as well, and the outcome must be the same as without the sandbox: this keeps the fork, limit and
//     answer path of the sandbox under the fuzzer too.
// libFuzzer's -timeout must exceed the worker's deadline plus the sandbox's (2 s each): scripts/test
// uses 10 s.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "espresso/config/loader.h"
#include "espresso/config/types.h"
#include "yaml_sandbox.h"

namespace {

using espresso::config::config_error;
using espresso::config::gateway_config;
using espresso::config::load_options;
using espresso::config::load_string;

constexpr std::chrono::milliseconds worker_deadline{2000};

bool write_all(int fd, const void* data, size_t size) {
    const auto* p = static_cast<const char*>(data);
    while (size > 0) {
        const ssize_t n = write(fd, p, size);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        p += n;
        size -= static_cast<size_t>(n);
    }
    return true;
}

bool read_all(int fd, void* data, size_t size) {
    auto* p = static_cast<char*>(data);
    while (size > 0) {
        const ssize_t n = read(fd, p, size);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        p += n;
        size -= static_cast<size_t>(n);
    }
    return true;
}

// A child process that answers "parse this" requests: a 4-byte length and the text in, one status byte
// ('F', 'L', 'M', 'E' as parse_and_classify) out.
class parse_worker {
public:
    ~parse_worker() { stop(); }

    // The worker's answer, or 0 when it gave none within the deadline or died (it is restarted).
    char check(std::string_view text) {
        if (pid_ < 0 && !start()) {
            return 0;
        }
        const auto size = static_cast<uint32_t>(text.size());
        if (!write_all(to_worker_, &size, sizeof size) || !write_all(to_worker_, text.data(), text.size())) {
            stop();
            return 0;
        }
        const auto deadline = std::chrono::steady_clock::now() + worker_deadline;
        for (;;) {
            const auto left =
                std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
            if (left <= 0) {
                stop();
                return 0;
            }
            pollfd p{from_worker_, POLLIN, 0};
            const int ready = poll(&p, 1, static_cast<int>(left));
            if (ready < 0 && errno != EINTR) {
                stop();
                return 0;
            }
            if (ready > 0) {
                char status = 0;
                if (!read_all(from_worker_, &status, 1)) {
                    stop();
                    return 0;
                }
                return status;
            }
        }
    }

private:
    bool start() {
        int requests[2];
        int answers[2];
        if (pipe2(requests, O_CLOEXEC) != 0) {
            return false;
        }
        if (pipe2(answers, O_CLOEXEC) != 0) {
            close(requests[0]);
            close(requests[1]);
            return false;
        }
        const pid_t parent = getpid();
        pid_ = fork();
        if (pid_ == 0) {
            close(requests[1]);
            close(answers[0]);
            serve(parent, requests[0], answers[1]);
        }
        close(requests[0]);
        close(answers[1]);
        if (pid_ < 0) {
            close(requests[1]);
            close(answers[0]);
            return false;
        }
        to_worker_ = requests[1];
        from_worker_ = answers[0];
        return true;
    }

    [[noreturn]] static void serve(pid_t parent, int in, int out) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(0);
        }
        // Crashes here are yaml-cpp's, reported by falling back to the real sandbox: keep libFuzzer's
        // and the sanitizers' crash handlers (and their crash files) out of this process.
        for (const int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) {
            signal(sig, SIG_DFL);
        }
        // At most 1 GiB more private memory than inherited (statm's 6th field, in pages).
        if (FILE* statm = std::fopen("/proc/self/statm", "r")) {
            unsigned long long f[6] = {};
            if (std::fscanf(statm, "%llu %llu %llu %llu %llu %llu", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5]) == 6) {
                const rlim_t limit = static_cast<rlim_t>(f[5]) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) +
                                     (rlim_t{1} << 30);
                const rlimit data{limit, limit};
                setrlimit(RLIMIT_DATA, &data);
            }
            std::fclose(statm);
        }
        const rlimit no_core{0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        std::string text;
        for (;;) {
            uint32_t size = 0;
            if (!read_all(in, &size, sizeof size)) {
                _exit(0);
            }
            text.resize(size);
            if (!read_all(in, text.data(), size)) {
                _exit(0);
            }
            const char status = espresso::config::detail::parse_and_classify(text, nullptr, nullptr);
            if (!write_all(out, &status, 1)) {
                _exit(0);
            }
        }
    }

    void stop() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
            }
        }
        if (to_worker_ >= 0) {
            close(to_worker_);
        }
        if (from_worker_ >= 0) {
            close(from_worker_);
        }
        pid_ = -1;
        to_worker_ = -1;
        from_worker_ = -1;
    }

    pid_t pid_ = -1;
    int to_worker_ = -1;
    int from_worker_ = -1;
};

struct result {
    std::string text; // "loaded" or "error: " and the message
    bool stopped = false; // the sandbox's child was stopped by the clock or the OOM killer, or not started
};

// Keys wiped. `stopped` looks at how the problem starts, not at what it contains: messages quote the
// input, and the fuzzer soon learns to write any string this file searches for.
result outcome(std::string_view yaml, const load_options& options) {
    try {
        gateway_config config = load_string(yaml, "fuzz.yaml", options);
        for (auto& sa : config.security_associations) {
            espresso::config::wipe_keys(sa);
        }
        return {"loaded"};
    } catch (const config_error& e) {
        if (e.problem().empty()) {
            std::fprintf(stderr, "config_error without a problem: %s\n", e.what());
            std::abort();
        }
        const std::string& p = e.problem();
        const bool stopped = p.starts_with("the YAML parser did not finish within") ||
                             p.starts_with("the YAML parser was killed (SIGKILL") ||
                             p.starts_with("cannot start the child process");
        return {std::string("error: ") + e.what(), stopped};
    }
}

uint32_t fnv1a(std::string_view text) {
    uint32_t h = 2166136261U;
    for (const char c : text) {
        h = (h ^ static_cast<unsigned char>(c)) * 16777619U;
    }
    return h;
}

// How inputs went, printed when the fuzzer exits (scripts/test shows it from the log).
struct counts {
    unsigned long inputs = 0, finished = 0, looping = 0, out_of_memory = 0, other = 0, no_answer = 0, forks = 0,
                  inconclusive = 0;
};
counts stats;

void print_counts() {
    std::fprintf(stderr,
                 "fuzz-config: %lu inputs; worker: %lu finished, %lu looping, %lu out of memory, %lu other error, "
                 "%lu no answer; %lu also loaded with the sandbox on (%lu of them stopped by the clock)\n",
                 stats.inputs, stats.finished, stats.looping, stats.out_of_memory, stats.other, stats.no_answer,
                 stats.forks, stats.inconclusive);
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    signal(SIGPIPE, SIG_IGN); // a dead worker is noticed from write()'s EPIPE
    std::atexit(print_counts);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static parse_worker worker;
    const std::string_view yaml(reinterpret_cast<const char*>(data), size);
    load_options in_process;
    in_process.sandbox = false;
    const char verdict = worker.check(yaml);
    ++stats.inputs;
    switch (verdict) {
    case 'F': ++stats.finished; break;
    case 'L': ++stats.looping; break;
    case 'M': ++stats.out_of_memory; break;
    case 0: ++stats.no_answer; break;
    default: ++stats.other; break;
    }
    if (verdict == 'F') {
        const result direct = outcome(yaml, in_process);
        if (fnv1a(yaml) % 16 == 0) {
            ++stats.forks;
            // A child stopped by the clock or the kernel's OOM killer, or not started, says nothing about
            // the input when the machine is overloaded; the worker just parsed it, so only compare real answers.
            const result sandboxed = outcome(yaml, load_options{});
            if (sandboxed.stopped) {
                ++stats.inconclusive;
            } else if (sandboxed.text != direct.text) {
                std::fprintf(stderr, "the sandbox changed the outcome:\n  without: %s\n  with:    %s\n",
                             direct.text.c_str(), sandboxed.text.c_str());
                std::abort();
            }
        }
    } else {
        // Whatever the worker saw (possibly its own death, or memory it had used up over many inputs),
        // the real sandbox decides. Only an endless loop is a property of the input alone, so then the
        // sandbox must refuse it too.
        ++stats.forks;
        const result sandboxed = outcome(yaml, load_options{});
        if (verdict == 'L' && sandboxed.text == "loaded") {
            std::fprintf(stderr, "the worker said '%c' but the sandbox loaded the input\n", verdict);
            std::abort();
        }
    }
    return 0;
}
