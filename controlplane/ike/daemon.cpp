#include "daemon.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <iostream>
#include <set>

#include "espresso/config/loader.h"
#include "installer.h"
#include "proposals.h"

namespace espresso::cp {
namespace {

using json = nlohmann::json;

constexpr size_t max_log_lines = 2000;
constexpr size_t max_request = 1 << 20;
constexpr size_t max_pending_reply = 256u << 20; // bytes of unread replies before a client is dropped
constexpr std::chrono::seconds keepalive_interval{20}; // RFC 3948 §4: default 20 s

const char* level_name(log_level l)
{
    switch (l) {
    case log_level::error: return "error";
    case log_level::warning: return "warning";
    case log_level::info: return "info";
    case log_level::debug: return "debug";
    }
    return "info";
}

std::string iso_time(std::chrono::system_clock::time_point t)
{
    std::time_t tt = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    gmtime_r(&tt, &tm);
    char buf[32];
    std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string hex64(uint64_t v)
{
    char buf[20];
    std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
    return buf;
}

std::string hex32(uint32_t v)
{
    char buf[12];
    std::snprintf(buf, sizeof(buf), "0x%08x", v);
    return buf;
}

bool to_sockaddr(const endpoint& e, sockaddr_storage& ss, socklen_t& len)
{
    std::memset(&ss, 0, sizeof(ss));
    if (e.address.is_v6()) {
        auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(e.port);
        std::memcpy(&s6->sin6_addr, e.address.bytes.data(), 16);
        len = sizeof(sockaddr_in6);
    } else {
        auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
        s4->sin_family = AF_INET;
        s4->sin_port = htons(e.port);
        std::memcpy(&s4->sin_addr, e.address.bytes.data(), 4);
        len = sizeof(sockaddr_in);
    }
    return true;
}

std::optional<endpoint> from_sockaddr(const sockaddr_storage& ss)
{
    endpoint e;
    if (ss.ss_family == AF_INET) {
        const auto* s4 = reinterpret_cast<const sockaddr_in*>(&ss);
        e.address.family = 4;
        std::memcpy(e.address.bytes.data(), &s4->sin_addr, 4);
        e.port = ntohs(s4->sin_port);
        return e;
    }
    if (ss.ss_family == AF_INET6) {
        const auto* s6 = reinterpret_cast<const sockaddr_in6*>(&ss);
        e.address.family = 6;
        std::memcpy(e.address.bytes.data(), &s6->sin6_addr, 16);
        e.port = ntohs(s6->sin6_port);
        return e;
    }
    return std::nullopt;
}

void add_fd(int epoll, int fd, uint32_t events = EPOLLIN)
{
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &ev);
}

const char* state_name(ike_sa::state s)
{
    switch (s) {
    case ike_sa::state::init_sent: return "MM_NO_STATE"; // Cisco's name for "first exchange sent"
    case ike_sa::state::init_done: return "MM_KEY_EXCH";
    case ike_sa::state::auth_sent: return "MM_KEY_EXCH";
    case ike_sa::state::established: return "QM_IDLE";
    case ike_sa::state::deleting: return "DELETING";
    case ike_sa::state::dead: return "DEAD";
    }
    return "UNKNOWN";
}

const char* ikev2_state(ike_sa::state s)
{
    switch (s) {
    case ike_sa::state::init_sent: return "CONNECTING";
    case ike_sa::state::init_done: return "CONNECTING";
    case ike_sa::state::auth_sent: return "CONNECTING";
    case ike_sa::state::established: return "READY";
    case ike_sa::state::deleting: return "DELETING";
    case ike_sa::state::dead: return "DEAD";
    }
    return "UNKNOWN";
}

} // namespace

size_t ike_thread_count(uint32_t configured)
{
    if (configured != 0) {
        return std::min<size_t>(configured, max_ike_threads);
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    // More shards than CPUs only adds switching; past a few the data plane's single control socket
    // thread (add-sa) limits the setup rate anyway.
    return static_cast<size_t>(std::clamp<long>(cpus, 1, 4));
}

ike_daemon::ike_daemon(daemon_options options, const config::gateway_config& config)
    : options_(std::move(options)),
      flush_(std::make_shared<startup_flush>(
          [this](log_level level, const std::string& text) { log(level, "-", text); })),
      installer_(make_installer(0))
{
    if (!options_.log_file.empty()) {
        log_file_.open(options_.log_file, std::ios::app);
    }
    size_t threads = options_.threads != 0 ? std::min(options_.threads, max_ike_threads)
                                           : ike_thread_count(config.ike.threads);
    // The shards' threads start now but stay idle: their first work (start(), a datagram) comes after
    // run() has bound every socket, and sockets_ does not change after that.
    shards_ = std::make_unique<ike_shards>(*this, config.ike, options_.retransmit, threads);
    std::set<std::pair<std::string, uint16_t>> seen;
    for (const auto& p : config.ike.peers) {
        for (uint16_t port : {p.local_port, uint16_t{4500}}) {
            if (seen.insert({config::to_string(p.local_address), port}).second) {
                wanted_.push_back(endpoint{p.local_address, port});
            }
        }
    }
}

ike_daemon::~ike_daemon()
{
    shards_.reset(); // joins the shard threads before the sockets they send on close
    for (auto& s : sockets_) {
        close(s.fd);
    }
    for (auto& [fd, c] : clients_) {
        close(fd);
    }
    if (listen_fd_ >= 0) {
        close(listen_fd_);
        unlink(options_.control_socket.c_str());
    }
    if (signal_fd_ >= 0) {
        close(signal_fd_);
    }
    if (epoll_ >= 0) {
        close(epoll_);
    }
}

void ike_daemon::log(log_level level, const std::string& sa_name, const std::string& text)
{
    if (level == log_level::debug && !debug_enabled()) {
        return;
    }
    std::lock_guard lock(log_mutex_);
    log_line line{++log_seq_, std::chrono::system_clock::now(), level, sa_name, text};
    if (level <= options_.level) {
        std::string out = iso_time(line.when) + " " + level_name(level) + " " + (sa_name == "-" ? "" : sa_name + ": ") + text;
        std::cerr << out << '\n';
        if (log_file_.is_open()) {
            log_file_ << out << '\n';
            log_file_.flush();
        }
    }
    log_.push_back(std::move(line));
    while (log_.size() > max_log_lines) {
        log_.pop_front();
    }
}

bool ike_daemon::debug_enabled() const
{
    return options_.level == log_level::debug || std::chrono::steady_clock::now().time_since_epoch().count() <
                                                     debug_until_.load(std::memory_order_relaxed);
}

std::unique_ptr<sa_installer> ike_daemon::make_installer(size_t)
{
    // One connection per caller (the main thread's for trap policies, one per shard for SAs): a shard
    // never waits for another's add-sa round trip, and nothing needs a lock.
    if (options_.dataplane_socket.empty()) {
        return std::make_unique<null_installer>();
    }
    return std::make_unique<dataplane_installer>(options_.dataplane_socket, flush_);
}

void ike_daemon::send_keepalive(const endpoint& local, const endpoint& remote)
{
    static const uint8_t keepalive[1] = {0xff};
    for (auto& s : sockets_) {
        if (s.local == local) {
            sockaddr_storage ss;
            socklen_t len = 0;
            to_sockaddr(remote, ss, len);
            if (sendto(s.fd, keepalive, 1, 0, reinterpret_cast<sockaddr*>(&ss), len) == 1) {
                ++keepalives_sent_;
            } else {
                ++send_errors_;
            }
        }
    }
}

void ike_daemon::send(const endpoint& local, const endpoint& remote, std::span<const uint8_t> message)
{
    for (auto& s : sockets_) {
        if (s.local == local) {
            sockaddr_storage ss;
            socklen_t len = 0;
            to_sockaddr(remote, ss, len);
            std::vector<uint8_t> buf;
            if (local.port != 500) {
                // RFC 3948 §2.2: IKE on the NAT-T port carries a 4-byte zero non-ESP marker.
                buf.assign(4, 0);
            }
            buf.insert(buf.end(), message.begin(), message.end());
            if (sendto(s.fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&ss), len) < 0) {
                ++send_errors_;
                log(log_level::warning, "-", "sendto " + to_string(remote) + ": " + std::strerror(errno));
            } else {
                ++sent_;
            }
            return;
        }
    }
    ++send_errors_;
    log(log_level::warning, "-", "no socket bound to " + to_string(local) + "; message to " + to_string(remote) + " dropped");
}

bool ike_daemon::open_sockets()
{
    bool all = true;
    for (const auto& want : wanted_) {
        bool have = false;
        for (const auto& s : sockets_) {
            have = have || s.local == want;
        }
        if (have) {
            continue;
        }
        int fd = socket(want.address.is_v6() ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            all = false;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        sockaddr_storage ss;
        socklen_t len = 0;
        to_sockaddr(want, ss, len);
        if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
            close(fd);
            all = false;
            continue;
        }
        sockets_.push_back({fd, want});
        add_fd(epoll_, fd);
        log(log_level::info, "-", "listening on " + to_string(want));
    }
    return all;
}

void ike_daemon::read_socket(udp_socket& s)
{
    uint8_t buf[65536];
    for (int i = 0; i < 64; ++i) {
        sockaddr_storage ss{};
        socklen_t len = sizeof(ss);
        ssize_t n = recvfrom(s.fd, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&ss), &len);
        if (n < 0) {
            return;
        }
        auto remote = from_sockaddr(ss);
        if (!remote) {
            continue;
        }
        std::span<const uint8_t> data(buf, static_cast<size_t>(n));
        if (s.local.port != 500) {
            if (data.size() == 1 && data[0] == 0xff) {
                ++keepalives_received_; // RFC 3948 §2.3 NAT-keepalive
                continue;
            }
            if (data.size() < 4 || data[0] != 0 || data[1] != 0 || data[2] != 0 || data[3] != 0) {
                ++non_ike_dropped_;
                log(log_level::debug, "-", "dropped a non-IKE datagram on " + to_string(s.local) + " from " + to_string(*remote));
                continue;
            }
            data = data.subspan(4);
        }
        shards_->dispatch(s.local, *remote, data);
    }
}

void ike_daemon::accept_client()
{
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        return;
    }
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || (cred.uid != 0 && cred.uid != getuid())) {
        close(fd);
        return;
    }
    if (clients_.size() >= 64) {
        close(fd);
        return;
    }
    clients_[fd] = client{fd, {}, {}};
    add_fd(epoll_, fd);
}

void ike_daemon::flush_client(client& c)
{
    while (c.out_sent < c.out.size()) {
        ssize_t n = ::send(c.fd, c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL);
        if (n <= 0) {
            break; // full (EAGAIN): EPOLLOUT resumes; an error shows up as EPOLLHUP/EPOLLERR on read
        }
        c.out_sent += static_cast<size_t>(n);
    }
    if (c.out_sent == c.out.size()) {
        c.out.clear();
        c.out_sent = 0;
    }
    // A reply bigger than the socket buffer (list-ike-sas with thousands of SAs) continues when the
    // client has read some: wait for EPOLLOUT only while something is pending.
    bool want = !c.out.empty();
    if (want != c.want_out) {
        epoll_event ev{};
        ev.events = EPOLLIN | (want ? EPOLLOUT : 0u);
        ev.data.fd = c.fd;
        epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
        c.want_out = want;
    }
}

void ike_daemon::read_client(int fd)
{
    auto it = clients_.find(fd);
    if (it == clients_.end()) {
        return;
    }
    auto& c = it->second;
    char buf[65536];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
        epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
        close(fd);
        clients_.erase(it);
        return;
    }
    c.in.append(buf, static_cast<size_t>(n));
    while (c.in.size() >= 4) {
        uint32_t len = (uint32_t(uint8_t(c.in[0])) << 24) | (uint32_t(uint8_t(c.in[1])) << 16) |
                       (uint32_t(uint8_t(c.in[2])) << 8) | uint8_t(c.in[3]);
        if (len > max_request) {
            epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
            close(fd);
            clients_.erase(it);
            return;
        }
        if (c.in.size() < 4 + len) {
            break;
        }
        std::string body = c.in.substr(4, len);
        c.in.erase(0, 4 + len);
        json reply;
        json request = json::parse(body, nullptr, false);
        if (request.is_discarded() || !request.is_object()) {
            reply = {{"version", 1}, {"id", nullptr}, {"ok", false}, {"error", "request is not a JSON object"}};
        } else {
            reply = handle_request(request);
        }
        if (c.out.size() - c.out_sent > max_pending_reply) {
            log(log_level::warning, "-", "operator client does not read its replies; disconnected");
            epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
            close(fd);
            clients_.erase(it);
            return;
        }
        std::string out = reply.dump();
        uint32_t olen = static_cast<uint32_t>(out.size());
        char hdr[4] = {char(olen >> 24), char(olen >> 16), char(olen >> 8), char(olen)};
        c.out.append(hdr, 4);
        c.out += out;
    }
    flush_client(c);
}

json ike_daemon::status_json() const
{
    // Each shard describes its own IKE SAs on its own thread (all at once); merged in SPI order.
    auto parts = shards_->on_each([](ike_manager& m) {
        std::vector<std::pair<uint64_t, json>> out;
        out.reserve(m.sas().size());
        auto now = std::chrono::steady_clock::now();
        for (const auto& [spi, sa] : m.sas()) {
            json children = json::array();
            for (const auto& c : sa->children()) {
                json child = {
                    {"tunnel", c.tunnel},
                    {"spi-in", hex32(c.spi_in)},
                    {"spi-out", hex32(c.spi_out)},
                    // "pending": negotiated by a rekey we answered, not in the data plane until the peer
                    // deletes the old Child SA (pending_outbound); "abandoned": never will be (§2.8.1).
                    {"outbound", !c.pending_out ? "installed" : c.pending_out->sa ? "pending" : "abandoned"},
                    {"local", config::to_string(c.local)},
                    {"remote", config::to_string(c.remote)},
                    {"mode", c.mode == config::ipsec_mode::transport ? "transport" : "tunnel"},
                    {"transforms", describe(c.transforms, protocol_id::esp)},
                    {"udp-encapsulation", c.udp},
                    {"state", c.st == child_sa::state::installed ? "INSTALLED"
                              : c.st == child_sa::state::rekeyed ? "REKEYED"
                                                                 : "DELETING"},
                    {"established", iso_time(c.established_wall)},
                    {"age-seconds",
                     std::chrono::duration_cast<std::chrono::seconds>(now - c.established).count()},
                };
                child["rekey-in-seconds"] =
                    c.rekey_at == steady_time{}
                        ? json(nullptr)
                        : json(std::max<int64_t>(
                              0, std::chrono::duration_cast<std::chrono::seconds>(c.rekey_at - now).count()));
                // The tunnel's configured rekey-time (0 = no time limit): `show crypto ipsec sa` shows
                // the time left of a Child SA's key from these two.
                child["rekey-time-seconds"] = nullptr;
                for (const auto& t : sa->peer().tunnels) {
                    if (t.name == c.tunnel) {
                        child["rekey-time-seconds"] = t.rekey_time;
                    }
                }
                children.push_back(std::move(child));
            }
            json j = {
                {"peer", sa->peer().name},
                {"version", 2},
                {"role", sa->sa_role() == ike_sa::role::initiator ? "initiator" : "responder"},
                {"state", ikev2_state(sa->sa_state())},
                {"isakmp-state", state_name(sa->sa_state())},
                {"local", to_string(sa->local())},
                {"remote", to_string(sa->remote())},
                {"spi-i", hex64(sa->spi_i())},
                {"spi-r", hex64(sa->spi_r())},
                {"conn-id", sa->local_spi() & 0xffff},
                {"local-id", sa->local_identity()},
                {"local-id-type", sa->local_identity_type()},
                {"remote-id", sa->remote_identity()},
                {"remote-id-type", sa->remote_identity_type()},
                {"auth", sa->auth_method_name()},
                {"proposal", sa->sa_state() == ike_sa::state::init_sent
                                 ? ""
                                 : describe(sa->transforms(), protocol_id::ike)},
                {"nat", {{"local-behind-nat", sa->nat_local()}, {"remote-behind-nat", sa->nat_remote()}}},
                {"fragmentation", sa->fragmentation()},
                {"fragment-size", sa->fragment_size()},
                {"created", iso_time(sa->created())},
                {"children", std::move(children)},
            };
            j["established"] = sa->established_at() ? json(iso_time(*sa->established_at())) : json(nullptr);
            j["lifetime-seconds"] = sa->peer().rekey_time;
            out.emplace_back(spi, std::move(j));
        }
        return out;
    });
    std::vector<std::pair<uint64_t, json>> all;
    for (auto& p : parts) {
        all.insert(all.end(), std::make_move_iterator(p.begin()), std::make_move_iterator(p.end()));
    }
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    json sas = json::array();
    for (auto& [spi, j] : all) {
        sas.push_back(std::move(j));
    }
    return sas;
}

json ike_daemon::reload(std::string& error, bool dry_run)
{
    config::gateway_config cfg;
    try {
        cfg = config::load_file(options_.config_path);
    } catch (const std::exception& e) {
        error = std::string("reload refused, the running configuration stays: ") + e.what();
        log(log_level::error, "-", error);
        return nullptr;
    }
    for (auto& sa : cfg.security_associations) {
        config::wipe_keys(sa);
    }
    json restart = json::array();
    if (options_.threads == 0 && ike_thread_count(cfg.ike.threads) != shards_->size()) {
        restart.push_back("ike.threads: " + std::to_string(shards_->size()) + " -> " +
                          std::to_string(ike_thread_count(cfg.ike.threads)));
        if (!dry_run) {
            log(log_level::warning, "-",
                "ike.threads: " + std::to_string(ike_thread_count(cfg.ike.threads)) +
                    " takes effect when espresso-ike restarts; running with " + std::to_string(shards_->size()));
        }
    }
    auto r = shards_->reload(cfg.ike, dry_run);
    log(log_level::info, "-", std::string(dry_run ? "dry run of a reload of " : "reloaded ") + options_.config_path + ": " + std::to_string(r.added.size()) + " added, " +
                                  std::to_string(r.changed.size()) + " changed, " + std::to_string(r.updated.size()) +
                                  " with changed tunnels only, " + std::to_string(r.removed.size()) + " removed, " +
                                  std::to_string(r.unchanged.size()) + " unchanged peer(s)");
    json tunnels = json::array();
    for (const auto& t : r.tunnels) {
        tunnels.push_back({{"peer", t.peer}, {"tunnel", t.tunnel}, {"change", t.change}});
    }
    return {{"file", options_.config_path}, {"dry-run", dry_run},        {"added", r.added},
            {"changed", r.changed},          {"removed", r.removed},        {"unchanged", r.unchanged},
            {"updated", r.updated},          {"tunnels", std::move(tunnels)}, {"restart-needed", std::move(restart)}};
}

json ike_daemon::handle_request(const json& request)
{
    json reply = {{"version", 1}, {"id", request.contains("id") ? request["id"] : json(nullptr)}};
    auto fail = [&](const std::string& error) {
        reply["ok"] = false;
        reply["error"] = error;
        return reply;
    };
    // The CLI talks to this socket with the data plane's client library, which sends the data plane's
    // protocol version (2 since owners); this socket's requests are the same in every version.
    const int version = request.contains("version") && request["version"].is_number_integer()
                            ? request["version"].get<int>()
                            : 0;
    if (version < dp::control::min_protocol_version || version > dp::control::protocol_version) {
        return fail("version: must be " + std::to_string(dp::control::min_protocol_version) + " to " +
                    std::to_string(dp::control::protocol_version));
    }
    reply["version"] = version;
    if (!request.contains("op") || !request["op"].is_string()) {
        return fail("op: missing");
    }
    std::string op = request["op"];
    json args = request.contains("args") && request["args"].is_object() ? request["args"] : json::object();
    json result;
    if (op == "ping") {
        // "features": what a client may rely on beyond the operations of the first version (this
        // daemon ignores unknown args, so `espresso reload --dry-run` asks before it sends one).
        result = {{"version", 1}, {"daemon", "espresso-ike"}, {"features", {"reload-dry-run"}}};
    } else if (op == "list-ike-sas") {
        result = {{"ike-sas", status_json()}};
    } else if (op == "failures") {
        json list = json::array();
        for (const auto& f : shards_->failures()) {
            list.push_back({{"time", iso_time(f.when)}, {"peer", f.peer}, {"remote", f.remote}, {"cause", f.cause}, {"fix", f.fix}});
        }
        result = {{"failures", list}};
    } else if (op == "initiate") {
        if (!args.contains("name") || !args["name"].is_string()) {
            return fail("args.name: the peer or tunnel to initiate");
        }
        std::string err = shards_->initiate(args["name"]);
        if (!err.empty()) {
            return fail(err);
        }
        result = {{"initiated", args["name"]}};
    } else if (op == "clear") {
        std::string peer = args.contains("peer") && args["peer"].is_string() ? std::string(args["peer"]) : "";
        result = {{"cleared", shards_->clear(peer)}};
    } else if (op == "log") {
        // Someone follows the log: format debug lines.
        debug_until_.store((now() + std::chrono::seconds(30)).time_since_epoch().count(),
                           std::memory_order_relaxed);
        uint64_t since = args.contains("since") && args["since"].is_number_unsigned() ? args["since"].get<uint64_t>() : 0;
        json lines = json::array();
        std::lock_guard lock(log_mutex_);
        for (const auto& l : log_) {
            if (l.seq > since) {
                lines.push_back({{"seq", l.seq}, {"time", iso_time(l.when)}, {"level", level_name(l.level)}, {"sa", l.sa}, {"text", l.text}});
            }
        }
        result = {{"lines", lines}, {"next", log_seq_}};
    } else if (op == "reload") {
        bool dry_run = false;
        if (args.contains("dry-run")) {
            if (!args["dry-run"].is_boolean()) {
                return fail("args.dry-run: expected true or false");
            }
            dry_run = args["dry-run"].get<bool>();
        }
        std::string error;
        result = reload(error, dry_run);
        if (!error.empty()) {
            return fail(error);
        }
    } else if (op == "counters") {
        const auto c = shards_->counters();
        const auto& f = c.fragments;
        result = {{"received", c.received},
                  {"malformed", c.malformed},
                  {"unknown-spi", c.unknown_spi},
                  {"no-peer", c.no_peer},
                  {"half-open-refused", c.half_open_refused},
                  {"cookies-sent", c.cookies_sent},
                  {"cookies-invalid", c.cookies_invalid},
                  {"addr-half-open-refused", c.address_half_open_refused},
                  {"addr-sas-refused", c.address_sas_refused},
                  {"sent", sent_.load()},
                  {"send-errors", send_errors_.load()},
                  {"keepalives-sent", keepalives_sent_.load()},
                  {"keepalives-received", keepalives_received_},
                  {"non-ike-dropped", non_ike_dropped_},
                  {"dispatch-dropped", shards_->dispatch_dropped()},
                  {"threads", shards_->size()},
                  {"initial-contact-drops", c.initial_contact_drops},
                  {"timers-run", c.timers_run},
                  {"timers-late-10ms", c.timers_late_10ms},
                  {"timers-late-100ms", c.timers_late_100ms},
                  {"timer-late-max-us", c.timer_late_max_us},
                  {"fragments",
                   {{"sent", f.sent},
                    {"messages-sent", f.messages_sent},
                    {"received", f.received},
                    {"reassembled", f.reassembled},
                    {"duplicate", f.duplicate},
                    {"invalid", f.invalid},
                    {"unexpected", f.unexpected},
                    {"not-negotiated", f.not_negotiated},
                    {"stale", f.stale},
                    {"discarded", f.discarded},
                    {"pmtu-lowered", f.pmtu_lowered}}},
                  {"acquires",
                   {{"received", c.acquires}, {"initiated", c.acquires_initiated}, {"ignored", c.acquires_ignored},
                    {"unmatched", c.acquires_unmatched}}}};
    } else {
        return fail("op: unknown operation '" + op + "' (ping, list-ike-sas, failures, initiate, clear, log, reload, counters)");
    }
    reply["ok"] = true;
    reply["result"] = result;
    return reply;
}

void ike_daemon::connect_events()
{
    if (events_ || options_.dataplane_socket.empty()) {
        return;
    }
    try {
        auto c = dp::control_client::connect(options_.dataplane_socket);
        auto reply = c.request("subscribe");
        if (!reply.value("ok", false)) {
            return;
        }
        events_.emplace(std::move(c));
        add_fd(epoll_, events_->fd());
    } catch (const dp::control_client_error&) {
    }
}

void ike_daemon::read_events()
{
    try {
        while (auto ev = events_->next_event(std::chrono::milliseconds(0))) {
            std::string kind = ev->value("event", "");
            std::string dir = ev->value("direction", "");
            uint32_t spi = ev->contains("spi") && (*ev)["spi"].is_number_unsigned() ? (*ev)["spi"].get<uint32_t>() : 0;
            auto d = dir == "inbound" ? config::direction::inbound : config::direction::outbound;
            if (kind == "soft-expire" || kind == "seq-exhausted") {
                shards_->on_expire(d, spi, false);
            } else if (kind == "hard-expire") {
                shards_->on_expire(d, spi, true);
            } else if (kind == "acquire") {
                auto src = config::parse_prefix(ev->value("source", ""));
                auto dst = config::parse_prefix(ev->value("destination", ""));
                if (src && dst) {
                    shards_->on_acquire(*src, *dst);
                }
            }
        }
    } catch (const dp::control_client_error& e) {
        log(log_level::warning, "-", std::string("lost the data plane's event stream: ") + e.what());
        epoll_ctl(epoll_, EPOLL_CTL_DEL, events_->fd(), nullptr);
        events_.reset();
    }
}

int ike_daemon::run()
{
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    signal_fd_ = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    add_fd(epoll_, signal_fd_);
    signal(SIGPIPE, SIG_IGN);

    if (!options_.control_socket.empty()) {
        listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        if (options_.control_socket.size() >= sizeof(addr.sun_path)) {
            log(log_level::error, "-", "control socket path too long: " + options_.control_socket);
            return 1;
        }
        std::strcpy(addr.sun_path, options_.control_socket.c_str());
        unlink(addr.sun_path);
        mode_t old = umask(0077);
        int rc = bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
        umask(old);
        if (rc != 0 || listen(listen_fd_, 16) != 0) {
            log(log_level::error, "-", "cannot listen on " + options_.control_socket + ": " + std::strerror(errno));
            return 1;
        }
        add_fd(epoll_, listen_fd_);
    }

    // The gateway's addresses appear when espresso-dp has created its TAP interfaces: wait for them.
    auto bind_deadline = now() + options_.bind_wait;
    while (!open_sockets()) {
        if (now() >= bind_deadline) {
            log(log_level::error, "-", "cannot bind the IKE sockets: is the address on an interface (is espresso-dp running)?");
            return 1;
        }
        usleep(200 * 1000);
    }
    if (!options_.dataplane_socket.empty()) {
        if (auto* dpi = dynamic_cast<dataplane_installer*>(installer_.get())) {
            std::string err = dpi->connect();
            if (!err.empty()) {
                log(log_level::warning, "-", "data plane not reachable yet: " + err);
            }
        }
        connect_events();
    }
    log(log_level::info, "-",
        "espresso-ike ready; " + std::to_string(shards_->config().peers.size()) + " peer(s), " +
            std::to_string(shards_->size()) + " IKE thread(s)");
    shards_->start();
    next_keepalive_ = now() + keepalive_interval;

    epoll_event events[64];
    for (;;) {
        auto deadline = next_keepalive_; // the shards run the IKE SAs' timers
        auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now()).count();
        int timeout = static_cast<int>(std::clamp<long long>(wait, 0, 1000));
        int n = epoll_wait(epoll_, events, 64, timeout);
        for (int i = 0; i < n; ++i) {
            int fd = events[i].data.fd;
            if (fd == signal_fd_) {
                signalfd_siginfo si{};
                (void)!read(signal_fd_, &si, sizeof(si));
                if (si.ssi_signo == SIGHUP) {
                    std::string error;
                    reload(error);
                    continue;
                }
                log(log_level::info, "-", "shutting down: deleting IKE SAs");
                shards_->stop();
                return 0;
            }
            if (fd == listen_fd_) {
                accept_client();
                continue;
            }
            if (events_ && fd == events_->fd()) {
                read_events();
                continue;
            }
            bool handled = false;
            for (auto& s : sockets_) {
                if (s.fd == fd) {
                    read_socket(s);
                    handled = true;
                    break;
                }
            }
            if (!handled) {
                if (auto c = clients_.find(fd); c != clients_.end() && (events[i].events & EPOLLOUT) != 0) {
                    flush_client(c->second);
                }
                if ((events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) {
                    read_client(fd);
                }
            }
        }
        if (now() >= next_keepalive_) {
            connect_events();
            shards_->retry_traps(); // the data plane was not reachable when some were due
            next_keepalive_ = now() + keepalive_interval;
        }
    }
}

} // namespace espresso::cp
