// espresso-ike's process: UDP sockets on 500 and 4500 (RFC 3948 non-ESP marker on 4500) bound to
// the gateway's addresses (which live on espresso-dp's TAP exception interfaces), an epoll loop with
// the IKE manager's timers, the operator socket (espresso CLI) and the data plane's event stream
// (soft/hard expiry). Single-threaded: DH work is short against the retransmission timers at this
// scale; the sharding ARCHITECTURE.md plans for setup rate comes with the IKE benchmark.
#pragma once

#include <chrono>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "espresso/config/types.h"
#include "espresso/dp/control_client.h"
#include "ike_io.h"
#include "ike_manager.h"

namespace espresso::cp {

struct daemon_options {
    std::string config_path;        // re-read by `espresso reload` (and SIGHUP)
    std::string dataplane_socket;   // empty: no data plane (null installer)
    std::string control_socket;     // the operator socket
    log_level level = log_level::info;
    std::string log_file;           // in addition to stderr
    retransmit_policy retransmit;
    std::chrono::seconds bind_wait{60}; // how long to wait for the gateway's addresses to appear
};

struct log_line {
    uint64_t seq = 0;
    std::chrono::system_clock::time_point when;
    log_level level = log_level::info;
    std::string sa;
    std::string text;
};

class ike_daemon final : public ike_io {
public:
    ike_daemon(daemon_options options, const config::gateway_config& config);
    ~ike_daemon() override;
    // Runs until SIGINT/SIGTERM; returns the process exit code.
    int run();
    const std::vector<std::string>& startup_errors() const noexcept { return manager_.startup_errors(); }

    // ike_io
    void send(const endpoint& local, const endpoint& remote, std::span<const uint8_t> message) override;
    std::chrono::steady_clock::time_point now() override { return std::chrono::steady_clock::now(); }
    rng& random() override { return system_rng(); }
    sa_installer& installer() override { return *installer_; }
    void log(log_level level, const std::string& sa_name, const std::string& text) override;
    void failure(negotiation_failure failure) override;
    bool debug_enabled() const override;

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
    nlohmann::json reload(std::string& error);
    void connect_events();
    void read_events();
    void send_keepalives();

    daemon_options options_;
    std::unique_ptr<sa_installer> installer_;
    ike_manager manager_;
    int epoll_ = -1;
    int signal_fd_ = -1;
    int listen_fd_ = -1;
    std::vector<udp_socket> sockets_;
    // Datagram counters the manager cannot see (op `counters`, `show crypto ikev2 stats`).
    uint64_t sent_ = 0;
    uint64_t send_errors_ = 0;        // sendto failed, or no socket bound to the SA's local endpoint
    uint64_t keepalives_received_ = 0; // RFC 3948 §2.3 NAT-keepalives on 4500
    uint64_t non_ike_dropped_ = 0;     // on 4500 without the non-ESP marker (ESP belongs to the data plane)
    std::vector<endpoint> wanted_;
    std::map<int, client> clients_;
    std::optional<dp::control_client> events_;
    std::deque<log_line> log_;
    uint64_t log_seq_ = 0;
    std::ofstream log_file_;
    std::chrono::steady_clock::time_point next_keepalive_{};
    std::chrono::steady_clock::time_point debug_until_{}; // `espresso debug ike` is following the log
};

} // namespace espresso::cp
