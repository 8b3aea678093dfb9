// ike-load: an IKEv2 initiator load generator for the IKE setup benchmark (perf/bench-ike, issue 4).
//
// Built on Espresso's own IKE library: every IKE SA is a real cp::ike_sa in the initiator role (random
// SPIs, nonces and DH keys from the system rng, real PSK AUTH), so the responder does real crypto.
// What replaces the daemon is a small ike_io over real UDP sockets: many sockets (ephemeral ports) on
// one or more source addresses, each IKE SA bound to one of them. The ike_manager is not used: the
// initiator needs no peer lookup, and its per-datagram scans would make the load generator, not the
// responder, the bottleneck at 10k+ SAs. Demux is one hash lookup on our SPI (RFC 7296 §2.1).
//
// Keeps W exchanges (IKE SAs being set up) in flight; one IKE SA = IKE_SA_INIT + IKE_AUTH with one
// Child SA. Runs for D seconds or N SAs, then prints one JSON line. Optionally holds the established
// SAs (answering the responder, e.g. its Deletes) for --hold seconds or until SIGINT/SIGTERM, so the
// responder's memory can be read with the SAs up.
//
// Threads: --threads T runs T independent workers (own sockets, own SAs, own io); they share only
// atomic counters and the read-only peer configs.
#include <arpa/inet.h>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "espresso/config/loader.h"
#include "ike_sa.h"

namespace {

using namespace espresso;
using clock_type = std::chrono::steady_clock;

const char* usage =
    "usage: ike-load --remote ADDR --local ADDR[,ADDR...] --psk SECRET [options]\n"
    "\n"
    "IKEv2 initiator load: sets up IKE SAs (IKE_SA_INIT + IKE_AUTH with one Child SA, PSK) against a\n"
    "responder, W at a time, and prints one JSON line.\n"
    "\n"
    "  --remote ADDR          the responder's address (UDP 500)\n"
    "  --remote-port N        default 500\n"
    "  --local LIST           source addresses, comma-separated (each is also the IKE identity)\n"
    "  --sockets N            UDP sockets (ephemeral ports) per source address (default 32)\n"
    "  --psk SECRET           the pre-shared key\n"
    "  --proposal P           IKE proposal (default aes256gcm16-prfsha256-ecp256)\n"
    "  --esp P                ESP proposal (default aes256gcm16)\n"
    "  --local-ts P, --remote-ts P   Child SA selectors (default 10.0.0.0/8, 192.168.0.0/16)\n"
    "  --window W             IKE SAs being set up at once (default 64)\n"
    "  --count N              stop after N IKE SAs were started (default: no limit)\n"
    "  --duration D           stop starting new IKE SAs after D seconds (default 10; 0 = no limit)\n"
    "  --after MODE           keep (default) | drop (forget locally, no message) | delete (INFORMATIONAL "
    "Delete)\n"
    "  --hold S               after the run, keep the SAs and answer the responder for S seconds\n"
    "                         (or until SIGINT/SIGTERM); the JSON line is printed before holding\n"
    "  --retransmit-ms N      first retransmission timeout (default 1000, doubled per try)\n"
    "  --retransmit-tries N   retransmissions before an IKE SA fails (default 3)\n"
    "  --threads T            worker threads (default 1)\n";

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

struct options {
    config::ip_address remote;
    uint16_t remote_port = 500;
    std::vector<std::string> locals;
    unsigned sockets_per_address = 32;
    std::string psk;
    std::string proposal = "aes256gcm16-prfsha256-ecp256";
    std::string esp = "aes256gcm16";
    std::string local_ts = "10.0.0.0/8", remote_ts = "192.168.0.0/16";
    unsigned window = 64;
    uint64_t count = 0;
    double duration = 10;
    enum class after_mode { keep, drop, del } after = after_mode::keep;
    double hold = 0;
    unsigned retransmit_ms = 1000, retransmit_tries = 3;
    unsigned threads = 1;
};

// Shared among workers.
struct totals {
    std::atomic<uint64_t> started{0}, completed{0}, failed{0}, no_child{0}, sent{0}, received{0},
        deleted_by_peer{0}, unknown_spi{0}, malformed{0};
    std::atomic<int64_t> last_done_ns{0}; // since t0
    std::atomic<uint64_t> setup_ns_sum{0};
    std::mutex m;
    std::map<std::string, uint64_t> causes;
};

struct discard_installer final : cp::sa_installer {
    std::string install(const config::sa_config&) override { return ""; }
    std::string remove(config::direction, uint32_t) override { return ""; }
};

struct udp_socket {
    int fd = -1;
    cp::endpoint local;
    const config::ike_peer_config* peer = nullptr; // identity and addresses for SAs on this socket
};

class worker;

struct entry {
    std::unique_ptr<cp::ike_sa> sa;
    unsigned socket = 0;
    clock_type::time_point started;
    bool done = false; // counted (completed or failed)
};

class worker final : public cp::ike_io {
public:
    worker(const options& o, totals& t, std::vector<udp_socket> sockets, unsigned window,
           clock_type::time_point t0)
        : o_(o), t_(t), sockets_(std::move(sockets)), window_(window), t0_(t0)
    {
        epoll_ = epoll_create1(EPOLL_CLOEXEC);
        for (size_t i = 0; i < sockets_.size(); ++i) {
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.u64 = i;
            epoll_ctl(epoll_, EPOLL_CTL_ADD, sockets_[i].fd, &ev);
        }
        retransmit_.base = std::chrono::milliseconds(o.retransmit_ms);
        retransmit_.tries = o.retransmit_tries;
    }
    ~worker() override
    {
        sas_.clear();
        for (auto& s : sockets_) {
            close(s.fd);
        }
        close(epoll_);
    }

    // ike_io
    void send(const cp::endpoint&, const cp::endpoint& remote, std::span<const uint8_t> message) override
    {
        // current_ is the socket of the SA being driven: every call into an SA sets it first.
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_port = htons(remote.port);
        std::memcpy(&to.sin_addr, remote.address.bytes.data(), 4);
        uint8_t buf[4 + 65536];
        size_t n = 0;
        if (remote.port == 4500) { // RFC 3948 §2.2 non-ESP marker after the NAT-T float (§2.23)
            std::memset(buf, 0, 4);
            n = 4;
        }
        size_t len = std::min(message.size(), sizeof(buf) - n);
        std::memcpy(buf + n, message.data(), len);
        n += len;
        (void)sendto(sockets_[current_].fd, buf, n, 0, reinterpret_cast<sockaddr*>(&to), sizeof(to));
        ++sent_;
    }
    clock_type::time_point now() override { return clock_type::now(); }
    cp::rng& random() override { return cp::system_rng(); }
    cp::sa_installer& installer() override { return installer_; }
    void log(cp::log_level, const std::string&, const std::string&) override {}
    void failure(cp::negotiation_failure f) override { last_cause_ = std::move(f.cause); }

    // Runs the load; returns when no more SAs are to be started and none is in flight.
    void run_load(clock_type::time_point stop_starting_at, bool limited_by_time)
    {
        auto next_tick = now();
        for (;;) {
            auto t = now();
            bool may_start = !g_stop && !(limited_by_time && t >= stop_starting_at);
            while (may_start && inflight_ < window_) {
                if (o_.count != 0) {
                    uint64_t n = t_.started.fetch_add(1);
                    if (n >= o_.count) {
                        t_.started.fetch_sub(1);
                        may_start = false;
                        break;
                    }
                } else {
                    t_.started.fetch_add(1);
                }
                start_one();
            }
            if (!may_start && inflight_ == 0) {
                break;
            }
            if (g_stop && !may_start) {
                // Interrupted: give the in-flight SAs no more time.
                break;
            }
            poll(5);
            if (now() >= next_tick) {
                tick_inflight();
                next_tick = now() + std::chrono::milliseconds(20);
            }
        }
        flush_counters();
    }

    // Keeps answering the responder until `until` or a signal.
    void hold(clock_type::time_point until)
    {
        auto next_tick = now();
        while (!g_stop && now() < until) {
            poll(50);
            if (now() >= next_tick) {
                for (auto it = sas_.begin(); it != sas_.end();) {
                    current_ = it->second.socket;
                    if (it->second.sa->next_deadline() <= now()) {
                        it->second.sa->tick();
                    }
                    it = reap(it);
                }
                next_tick = now() + std::chrono::milliseconds(500);
            }
            flush_counters();
        }
    }

    size_t held() const { return sas_.size(); }

private:
    void start_one()
    {
        unsigned s = next_socket_++ % sockets_.size();
        uint64_t spi = 0;
        do {
            uint8_t b[8];
            cp::system_rng().fill(b);
            std::memcpy(&spi, b, 8);
        } while (spi == 0 || sas_.count(spi) != 0);
        const auto& sock = sockets_[s];
        auto sa =
            std::make_unique<cp::ike_sa>(*this, *sock.peer, cp::ike_sa::role::initiator, spi, 0, sock.local,
                                         cp::endpoint{o_.remote, o_.remote_port}, retransmit_);
        // Many of our IKE SAs share one identity (the source address): INITIAL_CONTACT would tell the
        // responder to drop all the others (RFC 7296 §2.4), so it is never sent.
        sa->set_send_initial_contact(false);
        auto& e = sas_[spi];
        e.sa = std::move(sa);
        e.socket = s;
        e.started = now();
        ++inflight_;
        current_ = s;
        e.sa->initiate({"t"});
        auto it = sas_.find(spi);
        check(it);
    }

    // Counts a finished setup; applies --after. Returns the next iterator (erases dropped/dead SAs).
    std::unordered_map<uint64_t, entry>::iterator check(std::unordered_map<uint64_t, entry>::iterator it)
    {
        auto& e = it->second;
        auto st = e.sa->sa_state();
        if (!e.done && st == cp::ike_sa::state::established) {
            e.done = true;
            --inflight_;
            auto t = now();
            if (e.sa->children().size() == 1) {
                ++completed_;
                setup_ns_ += static_cast<uint64_t>(
                    std::chrono::duration_cast<std::chrono::nanoseconds>(t - e.started).count());
            } else {
                ++no_child_;
                ++failed_;
                cause("IKE SA established without its Child SA");
            }
            last_done_ = t;
            if (o_.after == options::after_mode::drop) {
                return sas_.erase(it);
            }
            if (o_.after == options::after_mode::del) {
                current_ = e.socket;
                e.sa->delete_sa();
            }
            return reap(it);
        }
        if (!e.done && e.sa->dead()) {
            e.done = true;
            --inflight_;
            ++failed_;
            last_done_ = now();
            cause(last_cause_.empty() ? "failed (no cause given)" : last_cause_);
        }
        return reap(it);
    }

    std::unordered_map<uint64_t, entry>::iterator reap(std::unordered_map<uint64_t, entry>::iterator it)
    {
        if (it->second.sa->dead()) {
            if (it->second.done && it->second.sa->sa_state() == cp::ike_sa::state::dead &&
                o_.after == options::after_mode::keep && it->second.sa->established_at()) {
                ++deleted_by_peer_;
            }
            return sas_.erase(it);
        }
        return std::next(it);
    }

    void cause(const std::string& c)
    {
        std::lock_guard lock(t_.m);
        // Strip SPIs/ports so causes aggregate.
        std::string k = c.substr(0, 160);
        ++t_.causes[k];
    }

    void poll(int timeout_ms)
    {
        epoll_event events[64];
        int n = epoll_wait(epoll_, events, 64, timeout_ms);
        for (int i = 0; i < n; ++i) {
            read_socket(static_cast<unsigned>(events[i].data.u64));
        }
    }

    void read_socket(unsigned s)
    {
        constexpr unsigned batch = 32;
        static thread_local uint8_t bufs[batch][4096];
        mmsghdr msgs[batch];
        iovec iov[batch];
        sockaddr_in from[batch];
        for (;;) {
            for (unsigned i = 0; i < batch; ++i) {
                iov[i] = {bufs[i], sizeof(bufs[i])};
                msgs[i] = {};
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
                msgs[i].msg_hdr.msg_name = &from[i];
                msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
            }
            int n = recvmmsg(sockets_[s].fd, msgs, batch, MSG_DONTWAIT, nullptr);
            if (n <= 0) {
                return;
            }
            for (int i = 0; i < n; ++i) {
                ++received_;
                std::span<const uint8_t> data(bufs[i], msgs[i].msg_len);
                cp::endpoint remote;
                remote.address.family = 4;
                std::memcpy(remote.address.bytes.data(), &from[i].sin_addr, 4);
                remote.port = ntohs(from[i].sin_port);
                if (remote.port == 4500) {
                    if (data.size() < 4 || data[0] != 0 || data[1] != 0 || data[2] != 0 || data[3] != 0) {
                        continue; // keepalive or ESP: not for us
                    }
                    data = data.subspan(4);
                }
                dispatch(s, remote, data);
            }
            if (static_cast<unsigned>(n) < batch) {
                return;
            }
        }
    }

    void dispatch(unsigned s, const cp::endpoint& remote, std::span<const uint8_t> data)
    {
        auto h = cp::parse_header(data);
        if (!h) {
            ++malformed_;
            return;
        }
        auto it = sas_.find(h->spi_i); // we are always the original initiator: SPIi is ours
        if (it == sas_.end()) {
            ++unknown_spi_;
            return;
        }
        auto parsed = cp::parse_message(data);
        if (std::holds_alternative<cp::parse_error>(parsed)) {
            ++malformed_;
            return;
        }
        current_ = it->second.socket;
        (void)s;
        it->second.sa->handle(std::get<cp::message>(parsed), data, it->second.sa->local(), remote);
        check(it);
    }

    void tick_inflight()
    {
        auto t = now();
        for (auto it = sas_.begin(); it != sas_.end();) {
            auto& e = it->second;
            if (e.done && o_.after != options::after_mode::del) {
                ++it;
                continue;
            }
            if (e.sa->next_deadline() <= t) {
                current_ = e.socket;
                e.sa->tick();
            }
            it = check(it);
        }
    }

    void flush_counters()
    {
        t_.completed += completed_;
        t_.failed += failed_;
        t_.no_child += no_child_;
        t_.sent += sent_;
        t_.received += received_;
        t_.deleted_by_peer += deleted_by_peer_;
        t_.unknown_spi += unknown_spi_;
        t_.malformed += malformed_;
        t_.setup_ns_sum += setup_ns_;
        completed_ = failed_ = no_child_ = sent_ = received_ = deleted_by_peer_ = unknown_spi_ = malformed_ =
            setup_ns_ = 0;
        if (last_done_ != clock_type::time_point{}) {
            int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(last_done_ - t0_).count();
            int64_t prev = t_.last_done_ns.load();
            while (ns > prev && !t_.last_done_ns.compare_exchange_weak(prev, ns)) {
            }
        }
    }

    const options& o_;
    totals& t_;
    std::vector<udp_socket> sockets_;
    unsigned window_;
    clock_type::time_point t0_;
    int epoll_ = -1;
    cp::retransmit_policy retransmit_;
    discard_installer installer_;
    std::unordered_map<uint64_t, entry> sas_;
    unsigned current_ = 0, next_socket_ = 0, inflight_ = 0;
    std::string last_cause_;
    clock_type::time_point last_done_{};
    uint64_t completed_ = 0, failed_ = 0, no_child_ = 0, sent_ = 0, received_ = 0, deleted_by_peer_ = 0,
             unknown_spi_ = 0, malformed_ = 0, setup_ns_ = 0;
};

std::vector<std::string> split(const std::string& s, char sep)
{
    std::vector<std::string> out;
    size_t p = 0;
    while (p <= s.size()) {
        size_t q = s.find(sep, p);
        if (q == std::string::npos) {
            q = s.size();
        }
        if (q > p) {
            out.push_back(s.substr(p, q - p));
        }
        p = q + 1;
    }
    return out;
}

double cpu_seconds()
{
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

std::string json_escape(const std::string& s)
{
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += ' ';
        } else {
            out += c;
        }
    }
    return out;
}

} // namespace

int main(int argc, char** argv)
{
    options o;
    std::string remote;
    try {
        for (int i = 1; i < argc; ++i) {
            std::string a = argv[i];
            auto value = [&]() -> std::string {
                if (i + 1 >= argc) {
                    throw std::runtime_error(a + " needs a value");
                }
                return argv[++i];
            };
            if (a == "--remote") {
                remote = value();
            } else if (a == "--remote-port") {
                o.remote_port = static_cast<uint16_t>(std::stoul(value()));
            } else if (a == "--local") {
                o.locals = split(value(), ',');
            } else if (a == "--sockets") {
                o.sockets_per_address = static_cast<unsigned>(std::stoul(value()));
            } else if (a == "--psk") {
                o.psk = value();
            } else if (a == "--proposal") {
                o.proposal = value();
            } else if (a == "--esp") {
                o.esp = value();
            } else if (a == "--local-ts") {
                o.local_ts = value();
            } else if (a == "--remote-ts") {
                o.remote_ts = value();
            } else if (a == "--window") {
                o.window = static_cast<unsigned>(std::stoul(value()));
            } else if (a == "--count") {
                o.count = std::stoull(value());
            } else if (a == "--duration") {
                o.duration = std::stod(value());
            } else if (a == "--after") {
                std::string m = value();
                if (m == "keep") {
                    o.after = options::after_mode::keep;
                } else if (m == "drop") {
                    o.after = options::after_mode::drop;
                } else if (m == "delete") {
                    o.after = options::after_mode::del;
                } else {
                    throw std::runtime_error("--after must be keep, drop or delete");
                }
            } else if (a == "--hold") {
                o.hold = std::stod(value());
            } else if (a == "--retransmit-ms") {
                o.retransmit_ms = static_cast<unsigned>(std::stoul(value()));
            } else if (a == "--retransmit-tries") {
                o.retransmit_tries = static_cast<unsigned>(std::stoul(value()));
            } else if (a == "--threads") {
                o.threads = std::max(1u, static_cast<unsigned>(std::stoul(value())));
            } else if (a == "--help" || a == "-h") {
                std::cout << usage;
                return 0;
            } else {
                throw std::runtime_error("unknown argument '" + a + "'");
            }
        }
        if (remote.empty() || o.locals.empty() || o.psk.empty()) {
            throw std::runtime_error("--remote, --local and --psk are required");
        }
        auto r = config::parse_address(remote);
        if (!r || !r->is_v4()) {
            throw std::runtime_error("--remote must be an IPv4 address");
        }
        o.remote = *r;
    } catch (const std::exception& e) {
        std::cerr << "ike-load: " << e.what() << "\n" << usage;
        return 2;
    }

    // One peer per source address, loaded through the ordinary config loader so proposals and
    // selectors get the same parsing as in the daemon. No DPD, no rekeying: only setup is measured.
    std::string yaml = "ike:\n  peers:\n";
    for (size_t i = 0; i < o.locals.size(); ++i) {
        yaml += "    - name: load" + std::to_string(i) +
                "\n"
                "      local-address: " +
                o.locals[i] +
                "\n"
                "      remote-address: " +
                remote +
                "\n"
                "      remote-port: " +
                std::to_string(o.remote_port) +
                "\n"
                "      proposals: [" +
                o.proposal +
                "]\n"
                "      auth: { method: psk, secret: \"" +
                o.psk +
                "\" }\n"
                "      rekey-time: 0\n"
                "      dpd: { interval: 0 }\n"
                "      tunnels:\n"
                "        - name: t\n"
                "          local-ts: [" +
                o.local_ts +
                "]\n"
                "          remote-ts: [" +
                o.remote_ts +
                "]\n"
                "          esp-proposals: [" +
                o.esp +
                "]\n"
                "          rekey-time: 0\n";
    }
    config::gateway_config cfg;
    try {
        cfg = config::load_string(yaml, "ike-load.yaml");
    } catch (const std::exception& e) {
        std::cerr << "ike-load: " << e.what() << '\n';
        return 2;
    }

    // Sockets: N ephemeral ports per source address, dealt round-robin to the workers.
    std::vector<std::vector<udp_socket>> per_worker(o.threads);
    unsigned k = 0;
    for (unsigned n = 0; n < o.sockets_per_address; ++n) {
        for (size_t i = 0; i < cfg.ike.peers.size(); ++i) {
            const auto& peer = cfg.ike.peers[i];
            int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            int size = 1 << 20;
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
            sockaddr_in sin{};
            sin.sin_family = AF_INET;
            std::memcpy(&sin.sin_addr, peer.local_address.bytes.data(), 4);
            if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
                std::cerr << "ike-load: cannot bind a UDP socket on " << o.locals[i] << ": "
                          << std::strerror(errno) << '\n';
                return 1;
            }
            socklen_t len = sizeof(sin);
            getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
            udp_socket s;
            s.fd = fd;
            s.local = cp::endpoint{peer.local_address, ntohs(sin.sin_port)};
            s.peer = &peer;
            per_worker[k++ % o.threads].push_back(s);
        }
    }

    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    totals t;
    auto t0 = clock_type::now();
    double cpu0 = cpu_seconds();
    bool by_time = o.duration > 0;
    auto stop_at =
        t0 + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(o.duration));
    if (!by_time && o.count == 0) {
        std::cerr << "ike-load: give --count or --duration\n";
        return 2;
    }
    std::vector<std::unique_ptr<worker>> workers;
    for (unsigned i = 0; i < o.threads; ++i) {
        unsigned w = o.window / o.threads + (i < o.window % o.threads ? 1 : 0);
        workers.push_back(std::make_unique<worker>(o, t, std::move(per_worker[i]), std::max(1u, w), t0));
    }
    // Phase 1: load. Phase 2 (optional): hold. Workers meet at a barrier-free atomic in between.
    std::atomic<unsigned> loaded{0};
    std::atomic<bool> release{false};
    double load_end_cpu = 0;
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < o.threads; ++i) {
        threads.emplace_back([&, i] {
            workers[i]->run_load(stop_at, by_time);
            ++loaded;
            if (o.hold > 0) {
                while (!release && !g_stop) {
                    workers[i]->hold(clock_type::now() + std::chrono::milliseconds(50));
                }
                workers[i]->hold(clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                                         std::chrono::duration<double>(o.hold)));
            }
        });
    }
    while (loaded < o.threads) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    load_end_cpu = cpu_seconds();
    double cpu = load_end_cpu - cpu0;
    double seconds = static_cast<double>(t.last_done_ns.load()) / 1e9;
    if (seconds <= 0) {
        seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
    }
    uint64_t completed = t.completed, failed = t.failed;
    size_t held = 0;
    for (auto& w : workers) {
        held += w->held();
    }
    std::string causes = "{";
    {
        std::lock_guard lock(t.m);
        bool first = true;
        for (const auto& [c, n] : t.causes) {
            causes += std::string(first ? "" : ", ") + "\"" + json_escape(c) + "\": " + std::to_string(n);
            first = false;
        }
    }
    causes += "}";
    char line[4096];
    std::snprintf(
        line, sizeof(line),
        "{\"completed\": %llu, \"failed\": %llu, \"seconds\": %.3f, \"rate\": %.1f, \"window\": %u, "
        "\"threads\": %u, \"sockets\": %zu, \"proposal\": \"%s\", \"mean_setup_ms\": %.2f, "
        "\"initiator_cpu_s\": %.3f, \"initiator_cpu_us_per_sa\": %.1f, \"initiator_cores_busy\": %.2f, "
        "\"datagrams_sent\": %llu, \"datagrams_received\": %llu, \"unknown_spi\": %llu, \"malformed\": %llu, "
        "\"held\": %zu, \"failure_causes\": ",
        static_cast<unsigned long long>(completed), static_cast<unsigned long long>(failed), seconds,
        seconds > 0 ? static_cast<double>(completed) / seconds : 0.0, o.window, o.threads,
        static_cast<size_t>(o.sockets_per_address * o.locals.size()), o.proposal.c_str(),
        completed ? static_cast<double>(t.setup_ns_sum.load()) / 1e6 / static_cast<double>(completed) : 0.0,
        cpu, completed ? cpu * 1e6 / static_cast<double>(completed) : 0.0, seconds > 0 ? cpu / seconds : 0.0,
        static_cast<unsigned long long>(t.sent.load()), static_cast<unsigned long long>(t.received.load()),
        static_cast<unsigned long long>(t.unknown_spi.load()),
        static_cast<unsigned long long>(t.malformed.load()), held);
    std::cout << line << causes << "}" << std::endl;
    release = true;
    for (auto& th : threads) {
        th.join();
    }
    return failed != 0 && completed == 0 ? 1 : 0;
}
