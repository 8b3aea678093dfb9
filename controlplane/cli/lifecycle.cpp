#include "lifecycle.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

pid_t spawn(const std::vector<std::string>& argv, const std::string& log)
{
    pid_t pid = fork();
    if (pid != 0) {
        return pid;
    }
    setsid();
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int null = open("/dev/null", O_RDONLY);
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

} // namespace

int gateway_up(const lifecycle_options& o)
{
    auto p = paths_for(o);
    if (!p) {
        return 2;
    }
    std::error_code ec;
    fs::create_directories(o.log_dir, ec);
    fs::create_directories(fs::path(p->dp_socket).parent_path(), ec);
    chmod(fs::path(p->dp_socket).parent_path().c_str(), 0700);
    if (answers(p->dp_socket)) {
        std::cerr << "espresso: a gateway already answers on " << p->dp_socket << "; `espresso down " << o.config_path
                  << "` first\n";
        return 1;
    }
    signal(SIGCHLD, SIG_DFL);
    pid_t dp = spawn({find_binary("espresso-dp", "dataplane"), "--config", o.config_path}, p->dp_log);
    if (!wait_ready(dp, p->dp_socket, std::chrono::seconds(60))) {
        std::cerr << "espresso: espresso-dp did not come up; the end of " << p->dp_log << ":\n" << tail(p->dp_log);
        kill(dp, SIGTERM);
        return 1;
    }
    pid_t ike = 0;
    if (p->has_ike) {
        ike = spawn({find_binary("espresso-ike", "controlplane"), "--config", o.config_path, "--log-file", p->ike_log}, "/dev/null");
        if (!wait_ready(ike, p->ike_socket, std::chrono::seconds(60))) {
            std::cerr << "espresso: espresso-ike did not come up; the end of " << p->ike_log << ":\n" << tail(p->ike_log);
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
    std::cout << "espresso: gateway " << p->name << " up: espresso-dp pid " << dp << " (log " << p->dp_log << ")";
    if (ike != 0) {
        std::cout << ", espresso-ike pid " << ike << " (log " << p->ike_log << ")";
    }
    std::cout << "\n";
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
