// yaml-cpp in a child process with a deadline, so malformed YAML cannot hang or exhaust the caller.
//
// Why: yaml-cpp 0.7 (Debian 12) has no time or memory bound and, on many malformed inputs, never
// returns: its parser emits the same event forever (LoadAll then grows the node tree until memory runs
// out) or its scanner spins. libFuzzer finds a new such input within a minute however many we refuse up
// front, so refusing inputs cannot be the fix. What was weighed:
//   - a thread with a timeout: a thread stuck inside yaml-cpp cannot be stopped, and keeps eating memory;
//   - our own parser for the YAML subset Espresso uses, or moving to libyaml: the loader (2,400 lines) is
//     written against YAML::Node and its marks, so either means rewriting it; a later step maybe;
//   - a child process: yaml-cpp runs unchanged, the kernel enforces the limits, and SIGKILL always works.
// So the child parses first: once with an event handler of ours (below), then exactly as the loader
// does (YAML::LoadAll), which proves the node tree fits in the memory limit. Rather than ship its tree
// back (yaml-cpp's NodeBuilder is private, so a serialised tree could not be turned back into YAML::Node
// with the marks our errors need), it only answers "finished" and this process then parses the same
// text itself. yaml-cpp's parse depends on nothing but the text, so that parse finishes too, within the
// same memory. A configuration is a few kilobytes: the whole check costs a few milliseconds, mostly
// fork() and exit.
//
// Limits in the child: the wall-clock deadline is enforced here (SIGKILL); RLIMIT_CPU backs it up should
// this process die first (PR_SET_PDEATHSIG kills the child too). Memory is bounded with RLIMIT_DATA set
// to what the child inherited plus the allowance (loader.h), not RLIMIT_AS: DPDK processes and
// sanitizer builds reserve terabytes of address space they never touch, whereas data counts the private
// writable memory malloc actually maps. The child cannot dump core (the text may hold keys).
//
// Besides the deadline, the child counts the parser's node events: while it makes progress yaml-cpp
// emits at most 1.5 per byte of text in the densest forms tried ("[:,:,:]": a map, an empty key and an
// empty value per ":,"; "[,,,]", "{:,:}", "---" runs, "- " runs: 1 or less), so more than 8 N + 1024
// for N bytes means it is looping, and the child stops at once instead of
// burning the whole deadline (every hang the fuzzer found so far is caught this way). The mark of the last event, kept in
// a shared page, tells the operator where the parser got stuck.
//
// fork() in a multi-threaded caller: only this thread exists in the child, and other threads' locks
// stay held there. glibc takes its malloc locks around fork, and the child touches nothing but the
// allocator and yaml-cpp (and libstdc++'s locale, whose lock is only taken once a program changed the
// global locale). Were the child still to block on such a lock, the deadline turns that into an error,
// never a hang. Callers today: espresso-ike and the CLI are single-threaded, espresso-dp loads its file
// before rte_eal_init. Inside a running espresso-dp, text Espresso built itself is parsed with
// load_options::sandbox = false (dataplane/src/sa_json.cpp; loader.h).
#include "yaml_sandbox.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <new>
#include <sstream>
#include <vector>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

namespace espresso::config::detail {

namespace {

// What the child writes to the pipe: one byte.
constexpr char child_finished = 'F';      // yaml-cpp returned (a tree, or a syntax error)
constexpr char child_looping = 'L';       // the event budget ran out: yaml-cpp is looping
constexpr char child_out_of_memory = 'M'; // std::bad_alloc under RLIMIT_DATA
constexpr char child_other_error = 'E';   // any other exception out of yaml-cpp

// Written by the child, read by the parent after the child is reaped (so no tearing between fields).
struct shared_progress {
    std::atomic<int> line{-1}; // 0-based, as YAML::Mark; -1 until the first event
    std::atomic<int> column{-1};
};
static_assert(std::atomic<int>::is_always_lock_free, "the progress page is shared between processes");

struct looping {};

// Records where the parser is and stops it when it emits more events than the text can hold.
class progress_recorder final : public YAML::EventHandler {
public:
    progress_recorder(std::atomic<int>* line, std::atomic<int>* column, uint64_t budget)
        : line_(line), column_(column), budget_(budget) {}

    void OnDocumentStart(const YAML::Mark& mark) override { note(mark); }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { note(mark); }
    void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { note(mark); }
    void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t, const std::string&) override {
        note(mark);
    }
    void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                         YAML::EmitterStyle::value) override {
        note(mark);
    }
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
        note(mark);
    }
    void OnMapEnd() override {}

private:
    void note(const YAML::Mark& mark) {
        if (line_ != nullptr && column_ != nullptr) {
            line_->store(mark.line, std::memory_order_relaxed);
            column_->store(mark.column, std::memory_order_relaxed);
        }
        if (++events_ > budget_) {
            throw looping{};
        }
    }

    std::atomic<int>* line_;
    std::atomic<int>* column_;
    uint64_t budget_;
    uint64_t events_ = 0;
};

// Private writable memory this process has mapped now (what RLIMIT_DATA counts, plus the stack), or 0
// when /proc cannot tell. /proc/self/statm: size resident shared text lib data dirty, in pages.
// Read before fork, with plain system calls: it runs for every load.
rlim_t current_data_bytes() {
    const int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    char buffer[256];
    const ssize_t n = read(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    buffer[n] = '\0';
    unsigned long long fields[6] = {};
    if (std::sscanf(buffer, "%llu %llu %llu %llu %llu %llu", &fields[0], &fields[1], &fields[2], &fields[3],
                    &fields[4], &fields[5]) != 6) {
        return 0;
    }
    const long page = sysconf(_SC_PAGESIZE);
    return static_cast<rlim_t>(fields[5]) * static_cast<rlim_t>(page > 0 ? page : 4096);
}

void write_status(int fd, char status) {
    while (write(fd, &status, 1) < 0 && errno == EINTR) {
    }
}

// Lowers a limit (never raises it: an unprivileged process cannot, and a lower one set by the operator
// stays).
void lower_limit(int resource, rlim_t soft, rlim_t hard) {
    rlimit now{};
    if (getrlimit(resource, &now) != 0) {
        return;
    }
    const rlimit wanted{std::min(soft, now.rlim_max), std::min(hard, now.rlim_max)};
    setrlimit(resource, &wanted);
}

struct child_setup {
    pid_t parent;
    int status_fd;
    rlim_t cpu_seconds;
    rlim_t data_bytes; // 0: no data limit (VmData unknown)
};

[[noreturn]] void run_child(std::string_view text, const child_setup& setup, shared_progress& progress) {
    // Die with the parent, never leave a core file (the text may hold keys), stay within the limits.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != setup.parent) {
        _exit(111);
    }
    prctl(PR_SET_DUMPABLE, 0);
    lower_limit(RLIMIT_CORE, 0, 0);
    lower_limit(RLIMIT_CPU, setup.cpu_seconds, setup.cpu_seconds + 1);
    if (setup.data_bytes != 0) {
        lower_limit(RLIMIT_DATA, setup.data_bytes, setup.data_bytes);
    }
    // The parent's crash handlers (a fuzzer's, a sanitizer's) must not run here: a crash of yaml-cpp
    // is reported by the parent, from the wait status.
    for (const int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGXCPU}) {
        signal(sig, SIG_DFL);
    }
    const char status = parse_and_classify(text, &progress.line, &progress.column);
    write_status(setup.status_fd, status);
    _exit(0); // no atexit handlers, no sanitizer leak check, no flushing the parent's stdio buffers
}

} // namespace

char parse_and_classify(std::string_view text, std::atomic<int>* line, std::atomic<int>* column) {
    try {
        // First with our own handler, which stops a looping parser and leaves the last mark behind;
        // then exactly what the parent will run, so its memory use is proven within the limit too.
        std::istringstream stream{std::string(text)};
        YAML::Parser parser(stream);
        progress_recorder recorder(line, column, 8 * static_cast<uint64_t>(text.size()) + 1024);
        try {
            while (parser.HandleNextDocument(recorder)) {
            }
        } catch (const YAML::Exception&) {
            return child_finished; // LoadAll stops at the same place with the same error
        }
        const std::vector<YAML::Node> documents = YAML::LoadAll(std::string(text));
        return child_finished;
    } catch (const looping&) {
        return child_looping;
    } catch (const YAML::Exception&) {
        return child_finished;
    } catch (const std::bad_alloc&) {
        return child_out_of_memory;
    } catch (...) {
        return child_other_error;
    }
}

namespace {

class fd_closer {
public:
    explicit fd_closer(int fd) : fd_(fd) {}
    fd_closer(const fd_closer&) = delete;
    fd_closer& operator=(const fd_closer&) = delete;
    ~fd_closer() {
        if (fd_ >= 0) {
            close(fd_);
        }
    }

private:
    int fd_;
};

class shared_page {
public:
    shared_page() {
        void* p = mmap(nullptr, sizeof(shared_progress), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            progress_ = new (p) shared_progress;
        }
    }
    shared_page(const shared_page&) = delete;
    shared_page& operator=(const shared_page&) = delete;
    ~shared_page() {
        if (progress_ != nullptr) {
            progress_->~shared_progress();
            munmap(progress_, sizeof(shared_progress));
        }
    }
    shared_progress* get() const noexcept { return progress_; }

private:
    shared_progress* progress_ = nullptr;
};

std::string describe_duration(std::chrono::milliseconds d) {
    if (d.count() % 1000 == 0) {
        return std::to_string(d.count() / 1000) + " s";
    }
    return std::to_string(d.count()) + " ms";
}

std::string describe_bytes(size_t bytes) {
    if (bytes % (size_t{1} << 20) == 0) {
        return std::to_string(bytes >> 20) + " MiB";
    }
    return std::to_string(bytes) + " bytes";
}

constexpr const char* malformed_fix =
    "look at this line and the next few for an unclosed quote, brackets [ ] { } that do not match, or one of "
    ": , [ ] { } # outside quotes where YAML does not expect it; quote values that contain such characters";

// Threads of this process besides the caller, from /proc/self/status (0 if unknown).
int other_threads() {
    std::FILE* f = std::fopen("/proc/self/status", "re");
    if (f == nullptr) {
        return 0;
    }
    char line[256];
    int threads = 0;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        if (std::sscanf(line, "Threads: %d", &threads) == 1) {
            break;
        }
    }
    std::fclose(f);
    return threads > 1 ? threads - 1 : 0;
}

// One parse in a child. Returns false only when the child ran past its deadline and may_retry is set;
// every other failure throws config_error.
bool parse_in_child(std::string_view text, const std::string& file, const load_options& options, bool may_retry) {
    const auto cannot_start = [&](const char* what, int error) {
        return config_error(file, 0, 0, "",
                            std::string("cannot start the child process that checks the YAML (") + what +
                                "): " + std::strerror(error),
                            "free some memory or raise the process limit (ulimit -u), then try again");
    };
    const shared_page page;
    if (page.get() == nullptr) {
        throw cannot_start("mmap", errno);
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        throw cannot_start("pipe", errno);
    }
    const fd_closer read_end(fds[0]);
    // Big files get proportionally more time and memory (loader.h).
    const size_t scale = 1 + text.size() / (size_t{512} << 10);
    const std::chrono::milliseconds deadline_allowed = options.parse_deadline * static_cast<int64_t>(scale);
    const size_t memory_allowed = options.parse_memory_limit * scale;
    const rlim_t inherited = current_data_bytes();
    const child_setup setup{
        .parent = getpid(),
        .status_fd = fds[1],
        .cpu_seconds = static_cast<rlim_t>(deadline_allowed.count() / 1000 + 2),
        .data_bytes = inherited == 0 ? 0 : inherited + memory_allowed,
    };
    const auto start = std::chrono::steady_clock::now();
    const pid_t pid = fork();
    if (pid < 0) {
        const int error = errno;
        close(fds[1]);
        throw cannot_start("fork", error);
    }
    if (pid == 0) {
        run_child(text, setup, *page.get());
    }
    close(fds[1]);

    const auto deadline = start + deadline_allowed;
    char status = 0;
    bool timed_out = false;
    int wait_error = 0;
    for (;;) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            timed_out = true;
            break;
        }
        pollfd p{fds[0], POLLIN, 0};
        const int ready = poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 60'000)));
        if (ready < 0 && errno != EINTR) {
            wait_error = errno;
            break;
        }
        if (ready <= 0) {
            continue;
        }
        const ssize_t n = read(fds[0], &status, 1);
        if (n == 1 || n == 0 || (errno != EINTR && errno != EAGAIN)) {
            break; // an answer, or the child ended without one
        }
    }
    // The child is finished or must stop now; SIGKILL makes the wait immediate either way. It is not
    // reaped yet, so its pid cannot have been reused.
    kill(pid, SIGKILL);
    int wait_status = 0;
    pid_t reaped;
    do {
        reaped = waitpid(pid, &wait_status, 0);
    } while (reaped < 0 && errno == EINTR);

    if (status == child_finished) {
        return true;
    }
    if (wait_error != 0) {
        throw cannot_start("poll", wait_error);
    }
    const int line = page.get()->line.load(std::memory_order_relaxed);
    const int column = page.get()->column.load(std::memory_order_relaxed);
    const bool known = line >= 0 && column >= 0;
    const std::string where = known ? "; the YAML is malformed at or just after this point"
                                    : "; the YAML is malformed near the start of the file";
    const auto fail = [&](std::string problem, std::string fix) {
        throw config_error(file, known ? line + 1 : 0, known ? column + 1 : 0, "", std::move(problem), std::move(fix));
    };
    if (status == child_looping) {
        fail("the YAML parser (yaml-cpp 0.7) got into an endless loop here" + where, malformed_fix);
    }
    if (status == child_out_of_memory) {
        fail("the YAML parser needed more than " + describe_bytes(memory_allowed) + " of memory" + where +
                 " (or the file is far too large)",
             malformed_fix);
    }
    if (status == child_other_error) {
        fail("the YAML parser failed with an unexpected error" + where, malformed_fix);
    }
    if (timed_out && may_retry) {
        return false;
    }
    if (timed_out) {
        fail("the YAML parser did not finish within " + describe_duration(deadline_allowed) + where,
             malformed_fix);
    }
    if (reaped == pid && WIFSIGNALED(wait_status)) {
        const int sig = WTERMSIG(wait_status);
        if (sig == SIGXCPU) {
            fail("the YAML parser used up its CPU time" + where, malformed_fix);
        }
        if (sig == SIGKILL) {
            fail("the YAML parser was killed (SIGKILL, e.g. by the kernel's out-of-memory killer)" + where,
                 malformed_fix);
        }
        fail("the YAML parser crashed (signal " + std::to_string(sig) + ", " + strsignal(sig) + ")" + where,
             malformed_fix);
    }
    if (reaped == pid && WIFEXITED(wait_status)) {
        // A sanitizer build ends the child this way when it runs out of memory.
        fail("the YAML parser stopped without an answer (exit status " + std::to_string(WEXITSTATUS(wait_status)) +
                 ", e.g. out of memory)" + where,
             malformed_fix);
    }
    fail("the YAML parser stopped without an answer" + where, malformed_fix);
    return false; // not reached: fail() throws
}

} // namespace

void check_yaml_parse_finishes(std::string_view text, const std::string& file, const load_options& options) {
    if (!options.sandbox) {
        return;
    }
    // fork() copies only the calling thread: a lock another thread held at that instant stays locked in
    // the child forever. glibc's malloc guards against that, but not every allocator does (the sanitizer
    // runtimes of GCC 12 do not), so a child forked from a multi-threaded caller (espresso-ike reloading
    // while its shards run) can hang on its first allocation through no fault of the YAML. Such a hang
    // is a matter of timing and does not repeat; malformed YAML does. So with other threads present a
    // timeout is retried once before it becomes the operator's error.
    if (!parse_in_child(text, file, options, other_threads() > 0)) {
        parse_in_child(text, file, options, false);
    }
}

} // namespace espresso::config::detail
