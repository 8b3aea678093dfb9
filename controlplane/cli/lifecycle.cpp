#include "lifecycle.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "espresso/config/loader.h"
#include "espresso/cp/ike_control.h"
#include "espresso/dp/control_client.h"

namespace espresso::cp::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct gateway_paths {
    std::string dp_socket, ike_socket, pid_file, dp_log, ike_log, name;
    std::string ike_log_from_config; // ike.log-file
    bool has_ike = false;
};

std::optional<gateway_paths> paths_for(const lifecycle_options& o)
{
    config::gateway_config cfg;
    try {
        cfg = config::load_file(o.config_path);
    } catch (const std::exception& e) {
        std::cerr << "espresso: " << e.what() << "\n";
        return std::nullopt;
    }
    for (auto& sa : cfg.security_associations) {
        config::wipe_keys(sa);
    }
    gateway_paths p;
    p.dp_socket = cfg.dataplane.control_socket;
    p.ike_socket = ike_socket_path(p.dp_socket);
    fs::path sock(p.dp_socket);
    p.name = sock.stem().string();
    p.pid_file = (sock.parent_path() / (p.name + ".pids")).string();
    p.dp_log = (fs::path(o.log_dir) / (p.name + "-dp.log")).string();
    p.ike_log = !cfg.ike.log_file.empty() ? cfg.ike.log_file : (fs::path(o.log_dir) / (p.name + "-ike.log")).string();
    p.ike_log_from_config = cfg.ike.log_file;
    p.has_ike = !cfg.ike.peers.empty();
    return p;
}

// The sibling binary: next to this one (installed), or in the build tree's layout.
std::string find_binary(const std::string& name, const std::string& build_subdir)
{
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        for (fs::path candidate : {self.parent_path() / name, self.parent_path().parent_path() / build_subdir / name}) {
            if (access(candidate.c_str(), X_OK) == 0) {
                return candidate.string();
            }
        }
    }
    return name; // PATH
}

// Where a daemon's stdout and stderr go: an fd for them (the caller closes it after spawn()), from
// the operator's choice of log destinations.
int open_log(const std::string& path)
{
    return open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

// A log relay: a forked copy of `espresso up` (in its own session, like the daemons, so it outlives us
// and a Ctrl-C on our terminal) that reads what a daemon writes to its stdout/stderr and copies it, as
// written, to `file` (when not empty) and, line by line with `prefix`, to our stderr (when
// `to_stderr`). It ends when the daemon's end of the pipe closes (the daemon exited); it ignores
// SIGTERM, SIGINT, SIGHUP and SIGPIPE so the daemon never loses its output while it runs. If our stderr
// goes away (a closed terminal), the relay keeps writing the file. Returns the write end for the
// daemon, or -1.
int start_relay(const std::string& prefix, const std::string& file, bool to_stderr)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid > 0) {
        close(fds[0]);
        return fds[1];
    }
    setsid();
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE}) {
        signal(sig, SIG_IGN);
    }
    // Only the pipe, stderr and the file: a copy of another relay's write end (or of a daemon's
    // socket) held here would keep that pipe open forever.
    dup2(fds[0], 0);
    if (int null = open("/dev/null", O_WRONLY); null >= 0) {
        dup2(null, 1); // our stdout may be a pipe someone reads to its end (a script running `up`)
    }
    close_range(3, ~0U, 0);
    int out = file.empty() ? -1 : open_log(file);
    bool err_ok = to_stderr;
    auto write_all = [](int fd, const char* p, size_t n) {
        while (n > 0) {
            ssize_t w = write(fd, p, n);
            if (w < 0 && errno == EINTR) {
                continue;
            }
            if (w <= 0) {
                return false;
            }
            p += w;
            n -= static_cast<size_t>(w);
        }
        return true;
    };
    std::string pending; // a line not yet complete, for the prefixed copy
    char buf[4096];
    for (;;) {
        ssize_t n = read(0, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        if (out >= 0) {
            write_all(out, buf, static_cast<size_t>(n));
        }
        if (!err_ok) {
            continue;
        }
        pending.append(buf, static_cast<size_t>(n));
        size_t start = 0;
        for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
            std::string line = prefix + pending.substr(start, nl + 1 - start);
            err_ok = err_ok && write_all(2, line.data(), line.size());
        }
        pending.erase(0, start);
        if (pending.size() > 65536) { // no newline in sight: pass it on anyway
            std::string line = prefix + pending + "\n";
            err_ok = err_ok && write_all(2, line.data(), line.size());
            pending.clear();
        }
    }
    if (err_ok && !pending.empty()) {
        std::string line = prefix + pending + "\n";
        write_all(2, line.data(), line.size());
    }
    _exit(0);
}

pid_t spawn(const std::vector<std::string>& argv, int fd)
{
    pid_t pid = fork();
    if (pid != 0) {
        return pid;
    }
    setsid();
    int null = open("/dev/null", O_RDWR);
    if (fd < 0) {
        fd = null;
    }
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
    }
    if (null >= 0) {
        dup2(null, 0);
    }
    std::vector<char*> args;
    for (const auto& a : argv) {
        args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "espresso: cannot run %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
}

bool answers(const std::string& socket)
{
    try {
        auto c = dp::control_client::connect(socket);
        return c.request("ping", nullptr, std::chrono::milliseconds(2000)).value("ok", false);
    } catch (const dp::control_client_error&) {
        return false;
    }
}

bool alive(pid_t pid)
{
    return pid > 0 && kill(pid, 0) == 0;
}

std::string tail(const std::string& path, size_t bytes = 2000)
{
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    std::string s = ss.str();
    return s.size() > bytes ? s.substr(s.size() - bytes) : s;
}

// Waits until `socket` answers; false when the process died or time ran out.
bool wait_ready(pid_t pid, const std::string& socket, std::chrono::seconds timeout)
{
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            return false;
        }
        if (answers(socket)) {
            return true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
}

std::pair<pid_t, pid_t> read_pids(const std::string& file)
{
    std::ifstream f(file);
    pid_t dp = 0, ike = 0;
    std::string key;
    pid_t value = 0;
    while (f >> key >> value) {
        (key == "espresso-dp" ? dp : ike) = value;
    }
    return {dp, ike};
}

// Stops both daemons, IKE first (it deletes its SAs while the data plane still runs).
bool stop_both(pid_t dp, pid_t ike);

bool stop(pid_t pid, const char* what)
{
    if (!alive(pid)) {
        return true;
    }
    kill(pid, SIGTERM);
    for (int i = 0; i < 150 && alive(pid); ++i) {
        waitpid(pid, nullptr, WNOHANG);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (alive(pid)) {
        std::cerr << "espresso: " << what << " (pid " << pid << ") did not stop in 15 s; killing it\n";
        kill(pid, SIGKILL);
        return false;
    }
    return true;
}

bool stop_both(pid_t dp, pid_t ike)
{
    bool ok = stop(ike, "espresso-ike");
    return stop(dp, "espresso-dp") && ok;
}

// --foreground: waits for SIGINT/SIGTERM/SIGHUP or the end of a daemon, then stops the gateway (IKE
// first). Exit status 0 after a signal, or when the daemon ended with status 0 (e.g. `espresso down`
// from another shell); 1 when a daemon failed or would not stop.
int stay_in_foreground(const gateway_paths& p, pid_t dp, pid_t ike)
{
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) {
        sigaddset(&set, sig);
    }
    sigprocmask(SIG_BLOCK, &set, nullptr);
    int rc = -1;
    while (rc < 0) {
        timespec second{1, 0};
        const int sig = sigtimedwait(&set, nullptr, &second);
        if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
            std::cerr << "espresso: " << strsignal(sig) << ": stopping gateway " << p.name << "\n";
            rc = stop_both(dp, ike) ? 0 : 1;
            break;
        }
        // A child ended, or a second passed (SIGCHLDs merge): a relay ends with its daemon; a daemon
        // ending takes the gateway down.
        int status = 0;
        for (pid_t pid; rc < 0 && (pid = waitpid(-1, &status, WNOHANG)) > 0;) {
            if (pid != dp && pid != ike) {
                continue;
            }
            const char* what = pid == dp ? "espresso-dp" : "espresso-ike";
            std::cerr << "espresso: " << what << " (pid " << pid << ") "
                      << (WIFSIGNALED(status) ? std::string("was killed by ") + strsignal(WTERMSIG(status))
                                              : "exited with status " + std::to_string(WEXITSTATUS(status)))
                      << "; stopping gateway " << p.name << "\n";
            const bool stopped = stop_both(pid == dp ? 0 : dp, pid == ike ? 0 : ike);
            rc = stopped && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
        }
    }
    // The relays end with their daemons: give them a moment to copy the last lines.
    for (int i = 0; i < 40 && waitpid(-1, nullptr, WNOHANG) >= 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    unlink(p.pid_file.c_str());
    return rc;
}

} // namespace

int gateway_up(const lifecycle_options& o)
{
    auto p = paths_for(o);
    if (!p) {
        return 2;
    }
    if (!o.log_files && !o.log_stderr) {
        std::cerr << "espresso: --no-log-files leaves the daemons without a log; add --log-stderr (or --foreground)\n";
        return 2;
    }
    std::error_code ec;
    if (o.log_files) {
        fs::create_directories(o.log_dir, ec);
    }
    fs::create_directories(fs::path(p->dp_socket).parent_path(), ec);
    chmod(fs::path(p->dp_socket).parent_path().c_str(), 0700);
    if (answers(p->dp_socket)) {
        std::cerr << "espresso: a gateway already answers on " << p->dp_socket << "; `espresso down " << o.config_path
                  << "` first\n";
        return 1;
    }
    signal(SIGCHLD, SIG_DFL);
    // espresso-dp writes its log to stdout/stderr: to the file directly, or through a relay when it
    // goes to our stderr (too). espresso-ike writes its log file itself (--log-file, or ike.log-file of
    // the YAML, which it always honours) and the same lines to its stderr, relayed when wanted.
    int dp_out = o.log_stderr ? start_relay("espresso-dp: ", o.log_files ? p->dp_log : "", true) : open_log(p->dp_log);
    pid_t dp = spawn({find_binary("espresso-dp", "dataplane"), "--config", o.config_path}, dp_out);
    if (dp_out >= 0) {
        close(dp_out);
    }
    if (!wait_ready(dp, p->dp_socket, std::chrono::seconds(60))) {
        std::cerr << "espresso: espresso-dp did not come up"
                  << (o.log_files ? "; the end of " + p->dp_log + ":\n" + tail(p->dp_log) : " (its log is above)\n");
        kill(dp, SIGTERM);
        return 1;
    }
    pid_t ike = 0;
    const bool ike_file = o.log_files || !p->ike_log_from_config.empty();
    if (p->has_ike) {
        std::vector<std::string> argv{find_binary("espresso-ike", "controlplane"), "--config", o.config_path};
        if (o.log_files) {
            argv.insert(argv.end(), {"--log-file", p->ike_log});
        }
        int ike_out = o.log_stderr ? start_relay("espresso-ike: ", "", true) : -1;
        ike = spawn(argv, ike_out);
        if (ike_out >= 0) {
            close(ike_out);
        }
        if (!wait_ready(ike, p->ike_socket, std::chrono::seconds(60))) {
            std::cerr << "espresso: espresso-ike did not come up"
                      << (ike_file ? "; the end of " + p->ike_log + ":\n" + tail(p->ike_log) : " (its log is above)\n");
            kill(ike, SIGTERM);
            stop(dp, "espresso-dp");
            return 1;
        }
    }
    {
        std::ofstream f(p->pid_file, std::ios::trunc);
        f << "espresso-dp " << dp << "\n";
        if (ike != 0) {
            f << "espresso-ike " << ike << "\n";
        }
    }
    chmod(p->pid_file.c_str(), 0600);
    auto where = [&](bool file, const std::string& path) {
        std::string w = file ? path : "";
        if (o.log_stderr) {
            w += (w.empty() ? "" : " and ") + std::string("stderr");
        }
        return " (log " + w + ")";
    };
    std::cout << "espresso: gateway " << p->name << " up: espresso-dp pid " << dp << where(o.log_files, p->dp_log);
    if (ike != 0) {
        std::cout << ", espresso-ike pid " << ike << where(ike_file, p->ike_log);
    }
    std::cout << (o.foreground ? "; in the foreground until SIGINT/SIGTERM" : "") << "\n";
    std::cout.flush();
    if (o.foreground) {
        return stay_in_foreground(*p, dp, ike);
    }
    return 0;
}

int gateway_down(const lifecycle_options& o)
{
    auto p = paths_for(o);
    if (!p) {
        return 2;
    }
    auto [dp, ike] = read_pids(p->pid_file);
    if (dp == 0 && ike == 0) {
        std::cerr << "espresso: no " << p->pid_file << ": was the gateway started with `espresso up`?\n";
        return 1;
    }
    // IKE first: it deletes its SAs (telling the peers) while the data plane still runs.
    bool ok = stop(ike, "espresso-ike");
    ok = stop(dp, "espresso-dp") && ok;
    unlink(p->pid_file.c_str());
    std::cout << "espresso: gateway " << p->name << " down\n";
    return ok ? 0 : 1;
}

int gateway_status(const lifecycle_options& o)
{
    auto p = paths_for(o);
    if (!p) {
        return 2;
    }
    auto [dp, ike] = read_pids(p->pid_file);
    bool dp_ok = answers(p->dp_socket);
    bool ike_ok = !p->has_ike || answers(p->ike_socket);
    size_t ike_sas = 0;
    if (p->has_ike && ike_ok) {
        try {
            auto c = dp::control_client::connect(p->ike_socket);
            auto r = c.request("list-ike-sas");
            ike_sas = r["result"]["ike-sas"].size();
        } catch (const std::exception&) {
        }
    }
    if (o.json) {
        json j = {{"gateway", p->name},
                  {"espresso-dp", {{"pid", dp}, {"answers", dp_ok}, {"socket", p->dp_socket}}},
                  {"espresso-ike", p->has_ike ? json{{"pid", ike}, {"answers", ike_ok}, {"socket", p->ike_socket}, {"ike-sas", ike_sas}}
                                              : json(nullptr)}};
        std::cout << j.dump(2) << "\n";
    } else {
        std::cout << "gateway " << p->name << "\n";
        std::cout << "  espresso-dp   " << (dp_ok ? "running" : "NOT answering") << (dp ? " (pid " + std::to_string(dp) + ")" : "")
                  << "  " << p->dp_socket << "\n";
        if (p->has_ike) {
            std::cout << "  espresso-ike  " << (ike_ok ? "running" : "NOT answering")
                      << (ike ? " (pid " + std::to_string(ike) + ")" : "") << "  " << p->ike_socket << ", " << ike_sas
                      << " IKE SA(s)\n";
        }
    }
    return dp_ok && ike_ok ? 0 : 1;
}

} // namespace espresso::cp::cli
