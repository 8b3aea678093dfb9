// espresso-ike's process: UDP sockets on 500 and 4500 (RFC 3948 non-ESP marker on 4500) bound to
// the gateway's addresses (which live on espresso-dp's TAP exception interfaces), an epoll loop with
// the IKE manager's timers, the operator socket (espresso CLI) and the data plane's event stream
// (soft/hard expiry). The IKE SAs run in `ike.threads` shard threads (ike_shards.h); this class's
// thread (main) owns the sockets' receiving side, the operator socket, the data plane's event stream
// and the trap policies, and hands each datagram to its shard. What shard threads call here (send,
// log, debug_enabled, keepalives) is thread-safe; everything else is the main thread's.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "espresso/config/types.h"
#include "espresso/dp/control_client.h"
#include "ike_io.h"
#include "ike_manager.h"
#include "ike_shards.h"

namespace espresso::cp {

struct daemon_options {
    std::string config_path;        // re-read by `espresso reload` (and SIGHUP)
    std::string dataplane_socket;   // empty: no data plane (null installer)
    std::string control_socket;     // the operator socket
    log_level level = log_level::info;
    std::string log_file;           // in addition to stderr
    retransmit_policy retransmit;
    std::chrono::seconds bind_wait{60}; // how long to wait for the gateway's addresses to appear
    size_t threads = 0;                 // IKE shards; 0: ike.threads from the file, else the CPUs (at most 4)
};

class startup_flush; // installer.h

// The shard count for `ike.threads` (0 = not set: the online CPUs, at most 4).
size_t ike_thread_count(uint32_t configured);

struct log_line {
    uint64_t seq = 0;
    std::chrono::system_clock::time_point when;
    log_level level = log_level::info;
    std::string sa;
    std::string text;
};

class ike_daemon final : public shard_host {
public:
    ike_daemon(daemon_options options, const config::gateway_config& config);
    ~ike_daemon() override;
    // Runs until SIGINT/SIGTERM; returns the process exit code.
    int run();
    const std::vector<std::string>& startup_errors() const noexcept { return shards_->startup_errors(); }

    // shard_host (any thread)
    void send(const endpoint& local, const endpoint& remote, std::span<const uint8_t> message) override;
    void send_keepalive(const endpoint& local, const endpoint& remote) override;
    void log(log_level level, const std::string& sa_name, const std::string& text) override;
    bool debug_enabled() const override;
    std::unique_ptr<sa_installer> make_installer(size_t shard) override;

private:
    struct udp_socket {
        int fd = -1;
        endpoint local;
    };
    struct client {
        int fd = -1;
        std::string in;
        std::string out;       // replies not yet sent: out[out_sent..]
        size_t out_sent = 0;
        bool want_out = false; // EPOLLOUT registered: the socket buffer was full
    };

    bool open_sockets(); // true when every socket is bound
    void read_socket(udp_socket& s);
    void accept_client();
    void read_client(int fd);
    void flush_client(client& c);
    nlohmann::json handle_request(const nlohmann::json& request);
    nlohmann::json status_json() const;
    // `espresso reload` (and SIGHUP): re-reads the file's ike: section and applies it; `dry_run`
    // (`espresso reload --dry-run`) only reports what it would change.
    nlohmann::json reload(std::string& error, bool dry_run = false);
    void connect_events();
    void read_events();
    static std::chrono::steady_clock::time_point now() { return std::chrono::steady_clock::now(); }

    daemon_options options_;
    // flush-owner "espresso-ike" before this process installs anything (installer.h); every installer
    // shares it. Declared before installer_, which is made with it.
    std::shared_ptr<startup_flush> flush_;
    // The main thread's own connection to the data plane: trap policies (each shard has its own for SAs).
    std::unique_ptr<sa_installer> installer_;
    std::unique_ptr<ike_shards> shards_;
    int epoll_ = -1;
    int signal_fd_ = -1;
    int listen_fd_ = -1;
    std::vector<udp_socket> sockets_;
    // Datagram counters the managers cannot see (op `counters`, `show crypto ikev2 stats`).
    std::atomic<uint64_t> sent_{0};        // shard threads
    std::atomic<uint64_t> send_errors_{0}; // sendto failed, or no socket bound to the SA's local endpoint
    std::atomic<uint64_t> keepalives_sent_{0}; // shard threads; RFC 3948 §4, when we are behind a NAT
    uint64_t keepalives_received_ = 0; // RFC 3948 §2.3 NAT-keepalives on 4500
    uint64_t non_ike_dropped_ = 0;     // on 4500 without the non-ESP marker (ESP belongs to the data plane)
    std::vector<endpoint> wanted_;
    std::map<int, client> clients_;
    std::optional<dp::control_client> events_;
    mutable std::mutex log_mutex_; // log_, log_seq_, log_file_ and stderr lines: every thread logs
    std::deque<log_line> log_;
    uint64_t log_seq_ = 0;
    std::ofstream log_file_;
    std::chrono::steady_clock::time_point next_keepalive_{};
    std::atomic<std::chrono::steady_clock::rep> debug_until_{0}; // steady_clock ticks; `espresso debug ike` is following the log
};

} // namespace espresso::cp
