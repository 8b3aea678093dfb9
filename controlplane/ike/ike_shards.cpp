#include "ike_shards.h"
#include "nat_keepalive.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>

namespace espresso::cp {
namespace {

uint64_t mix(uint64_t x) noexcept
{
    // splitmix64's finalizer: spreads every input bit over the output.
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

uint64_t read64(std::span<const uint8_t> d, size_t at) noexcept
{
    uint64_t v = 0;
    for (size_t i = 0; i < 8; ++i) {
        v = (v << 8) | d[at + i];
    }
    return v;
}

// The debug log's line for a keepalive decision (RFC 3948 §4): what was read and why it went or not.
std::string keepalive_log_line(const nat_keepalive::decision& d, const endpoint& remote)
{
    auto counts = [](const nat_keepalive::esp_counts& c) {
        std::string s;
        char spi[16];
        for (const auto& [k, v] : c) {
            std::snprintf(spi, sizeof(spi), "0x%08x", k);
            s += (s.empty() ? "" : " ") + std::string(spi) + "=" + std::to_string(v);
        }
        return s.empty() ? std::string("none") : s;
    };
    std::string what;
    switch (d.what) {
    case nat_keepalive::verdict::esp_seen:
        what = "NAT-keepalive not needed: ESP went out";
        break;
    case nat_keepalive::verdict::idle:
        what = "NAT-keepalive sent: idle";
        break;
    case nat_keepalive::verdict::unknown:
        what = "NAT-keepalive sent: no outbound SA counter could be read";
        break;
    case nat_keepalive::verdict::not_due:
        what = "NAT-keepalive not due";
        break;
    }
    return what + " (to " + to_string(remote) + "; outbound packets " + counts(d.before) + " -> " + counts(d.now) +
           ")";
}

} // namespace

uint64_t spi_in_shard(uint64_t spi, size_t shard, size_t shards) noexcept
{
    if (shards <= 1) {
        return spi;
    }
    uint64_t top = spi >> 56;
    uint64_t moved = top - top % shards + shard;
    if (moved > 0xff) {
        moved -= shards;
    }
    uint64_t out = (moved << 56) | (spi & 0x00ffffffffffffffull);
    // Never 0 (RFC 7296 §3.1: 0 means "not yet known"); the shard bits are in the top byte, keep them.
    return out != 0 ? out : out | 1;
}

size_t datagram_shard(std::span<const uint8_t> d, const config::ip_address& remote, size_t shards,
                      uint64_t key) noexcept
{
    if (shards <= 1 || d.size() < 28) {
        return 0;
    }
    const uint64_t spi_i = read64(d, 0);
    const uint64_t spi_r = read64(d, 8);
    const bool from_initiator = (d[19] & 0x08) != 0; // RFC 7296 §3.1 flags: I(nitiator)
    const uint64_t ours = from_initiator ? spi_r : spi_i;
    if (ours != 0) {
        return spi_shard(ours, shards);
    }
    // IKE_SA_INIT request: no SPI of ours yet. Keyed so that a sender cannot aim its requests at one
    // shard on purpose (it is load spreading, not a security boundary: the cookie threshold is global).
    uint64_t h = mix(key ^ spi_i);
    const size_t n = remote.is_v6() ? 16 : 4;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t w = (uint32_t{remote.bytes[i]} << 24) | (uint32_t{remote.bytes[i + 1]} << 16) |
                     (uint32_t{remote.bytes[i + 2]} << 8) | remote.bytes[i + 3];
        h = mix(h ^ w);
    }
    return static_cast<size_t>(h % shards);
}

// One shard's side effects: the host's sockets and log, the real clock, OpenSSL's RNG, the shard's own
// installer, and SPIs of this shard.
class ike_shards::shard_io final : public ike_io {
public:
    shard_io(shard_host& host, size_t index, size_t count, std::unique_ptr<sa_installer> installer)
        : host_(host), index_(index), count_(count), installer_(std::move(installer))
    {}
    void send(const endpoint& local, const endpoint& remote, std::span<const uint8_t> message) override
    {
        host_.send(local, remote, message);
        keepalives.sent(local, remote, std::chrono::steady_clock::now()); // RFC 3948 §4: not idle
    }
    std::chrono::steady_clock::time_point now() override { return std::chrono::steady_clock::now(); }
    rng& random() override { return system_rng(); }
    sa_installer& installer() override { return *installer_; }
    void log(log_level level, const std::string& sa_name, const std::string& text) override
    {
        host_.log(level, sa_name, text);
    }
    bool debug_enabled() const override { return host_.debug_enabled(); }
    void failure(negotiation_failure f) override { manager->record_failure(std::move(f)); }
    uint64_t new_ike_spi() override { return spi_in_shard(ike_io::new_ike_spi(), index_, count_); }

    ike_manager* manager = nullptr;
    nat_keepalive keepalives; // this shard's NAT'd peers (nat_keepalive.h)

private:
    shard_host& host_;
    size_t index_, count_;
    std::unique_ptr<sa_installer> installer_;
};

ike_shards::ike_shards(shard_host& host, const config::ike_config& config, retransmit_policy retransmit,
                       size_t threads)
    : host_(host), config_(config), nat_keepalive_(config.nat_keepalive)
{
    threads = std::clamp<size_t>(threads, 1, max_ike_threads);
    cookie_secret_.assign(32, 0);
    system_rng().fill(cookie_secret_);
    uint8_t k[8];
    system_rng().fill(k);
    hash_key_ = read64(k, 0);
    for (size_t i = 0; i < threads; ++i) {
        auto s = std::make_unique<shard>();
        s->index = i;
        s->io = std::make_unique<shard_io>(host_, i, threads, host_.make_installer(i));
        // Each shard loads the peers' credentials itself: pubkey_credentials are used by one thread.
        shard_directory* directory = this;
        s->manager = std::make_unique<ike_manager>(*s->io, config_, retransmit, directory, i);
        s->io->manager = s->manager.get();
        s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->wake_fd < 0) {
            throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
        }
        shards_.push_back(std::move(s));
    }
    startup_errors_ = shards_.front()->manager->startup_errors(); // the same files in every shard
    // The shard threads start with every signal blocked (they inherit this thread's mask): SIGTERM,
    // SIGINT and SIGHUP are the daemon's, read from its signalfd in the main thread. A shard thread
    // with them unblocked would take a SIGTERM now and then and die of it, leaving the Child SAs in
    // the data plane.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (auto& s : shards_) {
        shard* p = s.get();
        s->thread = std::thread([this, p] { run(*p); });
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

ike_shards::~ike_shards()
{
    join();
    for (auto& s : shards_) {
        if (s->wake_fd >= 0) {
            close(s->wake_fd);
        }
    }
}

void ike_shards::join()
{
    for (auto& s : shards_) {
        s->stopping.store(true);
        uint64_t one = 1;
        (void)!write(s->wake_fd, &one, sizeof(one));
    }
    for (auto& s : shards_) {
        if (s->thread.joinable()) {
            s->thread.join();
        }
    }
}

void ike_shards::start()
{
    on_each([](ike_manager& m) { m.start(); });
}

void ike_shards::stop()
{
    // As strongSwan's charon on stop: the trap policies go with the daemon (docs/ike.md, "Traffic while
    // a tunnel is down"); a crash leaves them in place (fail closed).
    on_each([](ike_manager& m) {
        m.shutdown();
        m.remove_traps();
    });
    join();
}

void ike_shards::push(shard& s, item it)
{
    bool wake = false;
    {
        std::lock_guard lock(s.mutex);
        if (!it.task) {
            if (s.queued_datagrams >= max_queued_datagrams) {
                s.dropped.fetch_add(1, std::memory_order_relaxed);
                return;
            }
            ++s.queued_datagrams;
        }
        wake = s.inbox.empty(); // else a wake-up is pending already: the shard takes the whole inbox
        s.inbox.push_back(std::move(it));
    }
    if (wake) {
        uint64_t one = 1;
        (void)!write(s.wake_fd, &one, sizeof(one));
    }
}

void ike_shards::dispatch(const endpoint& local, const endpoint& remote, std::span<const uint8_t> datagram)
{
    push(*shards_[shard_for(datagram, remote)],
         item{local, remote, std::vector<uint8_t>(datagram.begin(), datagram.end()), {}});
}

void ike_shards::post(size_t shard, std::function<void(ike_manager&)> task)
{
    push(*shards_.at(shard), item{{}, {}, {}, std::move(task)});
}

void ike_shards::run(shard& s)
{
    ike_manager& m = *s.manager;
    // RFC 3948 §4 NAT-keepalives for every established IKE SA of this shard whose local end is behind a
    // NAT, each only when nothing else went to that peer for ike.nat-keepalive (nat_keepalive.h). A pass
    // looks at them every quarter interval (at most every second), so a keepalive goes out at most that
    // much after it is due. The interval is read on every pass, so a reload that shortens it (or turns
    // it on) takes effect at once.
    auto last_pass = std::chrono::steady_clock::now();
    auto last_sweep = last_pass;
    auto pass_step = [&]() -> std::chrono::steady_clock::duration {
        const uint32_t seconds = nat_keepalive_.load(std::memory_order_relaxed);
        // Off: look again in a second, for a reload that turns it on.
        return seconds == 0 ? std::chrono::seconds(1)
                            : std::min<std::chrono::steady_clock::duration>(std::chrono::seconds(seconds) / 4,
                                                                           std::chrono::seconds(1));
    };
    auto next_keepalive_at = [&] { return last_pass + pass_step(); };
    std::vector<item> batch;
    while (!s.stopping.load()) {
        auto now = std::chrono::steady_clock::now();
        auto deadline = std::min(m.next_deadline(), next_keepalive_at());
        auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
        pollfd p{s.wake_fd, POLLIN, 0};
        // Round up: waking a millisecond early only to sleep again would spin until the deadline.
        if (poll(&p, 1, static_cast<int>(std::clamp<long long>(deadline > now ? wait + 1 : 0, 0, 1000))) >
            0) {
            uint64_t count = 0;
            (void)!read(s.wake_fd, &count, sizeof(count));
        }
        {
            std::lock_guard lock(s.mutex);
            batch.swap(s.inbox);
            s.queued_datagrams = 0;
        }
        for (auto& it : batch) {
            if (it.task) {
                it.task(m);
                continue;
            }
            m.receive(it.local, it.remote, it.data);
            // Due timers run between any two messages, as in a single-threaded daemon (ike_manager.h).
            if (m.next_deadline() <= std::chrono::steady_clock::now()) {
                m.tick();
            }
        }
        batch.clear();
        if (m.next_deadline() <= std::chrono::steady_clock::now()) {
            m.tick();
        }
        if (const auto now_ = std::chrono::steady_clock::now(); now_ >= next_keepalive_at()) {
            last_pass = now_;
            const uint32_t seconds = nat_keepalive_.load(std::memory_order_relaxed);
            if (seconds != 0) {
                const std::chrono::steady_clock::duration interval = std::chrono::seconds(seconds);
                nat_keepalive& schedule = s.io->keepalives;
                for (const auto& [spi, sa] : m.sas()) {
                    if (sa->sa_state() != ike_sa::state::established || !sa->nat_local()) {
                        continue;
                    }
                    // ESP on the same UDP 5-tuple refreshes the NAT's mapping as well: the data plane's
                    // packet counters of the installed outbound Child SAs, read only when a keepalive is due.
                    auto esp_packets = [&] {
                        nat_keepalive::esp_counts counts;
                        for (const auto& c : sa->children()) {
                            if (c.pending_out) {
                                continue; // not in the data plane (yet)
                            }
                            if (auto n = s.io->installer().outbound_packets(c.spi_out)) {
                                counts[c.spi_out] = *n;
                            }
                        }
                        return counts;
                    };
                    const auto d = schedule.due(sa->local(), sa->remote(), now_, interval, esp_packets);
                    if (d.send()) {
                        host_.send_keepalive(sa->local(), sa->remote());
                    }
                    if (d.what != nat_keepalive::verdict::not_due && host_.debug_enabled()) {
                        host_.log(log_level::debug, sa->name(), keepalive_log_line(d, sa->remote()));
                    }
                }
                if (now_ - last_sweep >= 2 * interval) {
                    schedule.sweep(now_ - 2 * interval); // peers no pass asked about for two intervals
                    last_sweep = now_;
                }
            }
        }
    }
    // Tasks still queued hold latches others wait on; stop() and ~ike_shards are only called from the
    // thread that posts operator tasks, after they returned, so there are none.
}

void ike_shards::sa_added(const std::string& peer, size_t shard)
{
    std::lock_guard lock(registry_mutex_);
    auto& counts = registry_[peer];
    counts.resize(shards_.size());
    ++counts[shard];
}

void ike_shards::sa_removed(const std::string& peer, size_t shard)
{
    std::lock_guard lock(registry_mutex_);
    auto it = registry_.find(peer);
    if (it == registry_.end() || it->second[shard] == 0) {
        return;
    }
    --it->second[shard];
    if (std::all_of(it->second.begin(), it->second.end(), [](uint32_t n) { return n == 0; })) {
        registry_.erase(it);
    }
}

bool ike_shards::live_elsewhere(const std::string& peer, size_t shard) const
{
    std::lock_guard lock(registry_mutex_);
    auto it = registry_.find(peer);
    if (it == registry_.end()) {
        return false;
    }
    for (size_t i = 0; i < it->second.size(); ++i) {
        if (i != shard && it->second[i] != 0) {
            return true;
        }
    }
    return false;
}

std::string ike_shards::initiate(const std::string& name)
{
    struct answer {
        std::string error, peer;
        bool found = false;
    };
    auto answers = on_each([&](ike_manager& m) {
        answer a;
        a.error = m.initiate_existing(name, a.found, &a.peer);
        return a;
    });
    if (!answers.front().error.empty()) {
        return answers.front().error; // the same configuration in every shard
    }
    if (std::any_of(answers.begin(), answers.end(), [](const answer& a) { return a.found; })) {
        return "";
    }
    // None has one: the peer's home shard creates it (and checks its own table once more).
    return on_shard(home_shard(answers.front().peer, shards_.size()),
                    [&](ike_manager& m) { return m.initiate(name); });
}

size_t ike_shards::clear(const std::string& peer)
{
    std::set<std::string> names;
    for (auto& part : on_each([&](ike_manager& m) { return m.peers_matching(peer); })) {
        names.insert(part.begin(), part.end());
    }
    size_t total = 0;
    for (size_t n : on_each([&](ike_manager& m) {
             m.stop_keeping_up(names); // the home shard holds them, whichever shard has the SAs
             return m.clear(peer);
         })) {
        total += n;
    }
    return total;
}

ike_manager::reload_result ike_shards::reload(const config::ike_config& next, bool dry_run)
{
    auto results = on_each([&](ike_manager& m) { return m.reload(next, dry_run); });
    if (dry_run) {
        return results.front();
    }
    config_ = next;
    nat_keepalive_.store(next.nat_keepalive, std::memory_order_relaxed);
    return results.front(); // every shard compared the same two configurations
}

void ike_shards::on_acquire(const config::ip_prefix& local, const config::ip_prefix& remote)
{
    const auto peer = acquire_target(config_, local, remote);
    const size_t shard = peer ? home_shard(*peer, shards_.size()) : 0;
    post(shard, [local, remote](ike_manager& m) { m.on_acquire(local, remote); });
}

void ike_shards::retry_traps()
{
    post(0, [](ike_manager& m) { m.retry_traps(); });
}

void ike_shards::on_expire(config::direction dir, uint32_t spi, bool hard)
{
    for (size_t i = 0; i < shards_.size(); ++i) {
        post(i, [dir, spi, hard](ike_manager& m) { m.on_expire(dir, spi, hard); });
    }
}

manager_counters ike_shards::counters()
{
    manager_counters t;
    for (const auto& c : on_each([](ike_manager& m) { return m.counters(); })) {
        t.received += c.received;
        t.malformed += c.malformed;
        t.unknown_spi += c.unknown_spi;
        t.no_peer += c.no_peer;
        t.half_open_refused += c.half_open_refused;
        t.cookies_sent += c.cookies_sent;
        t.cookies_invalid += c.cookies_invalid;
        t.address_half_open_refused += c.address_half_open_refused;
        t.address_sas_refused += c.address_sas_refused;
        t.initial_contact_drops += c.initial_contact_drops;
        t.acquires += c.acquires;
        t.acquires_initiated += c.acquires_initiated;
        t.acquires_ignored += c.acquires_ignored;
        t.acquires_unmatched += c.acquires_unmatched;
        t.timers_run += c.timers_run;
        t.timers_late_10ms += c.timers_late_10ms;
        t.timers_late_100ms += c.timers_late_100ms;
        t.timer_late_max_us = std::max(t.timer_late_max_us, c.timer_late_max_us);
        t.fragments.sent += c.fragments.sent;
        t.fragments.messages_sent += c.fragments.messages_sent;
        t.fragments.received += c.fragments.received;
        t.fragments.reassembled += c.fragments.reassembled;
        t.fragments.duplicate += c.fragments.duplicate;
        t.fragments.invalid += c.fragments.invalid;
        t.fragments.unexpected += c.fragments.unexpected;
        t.fragments.not_negotiated += c.fragments.not_negotiated;
        t.fragments.stale += c.fragments.stale;
        t.fragments.discarded += c.fragments.discarded;
        t.fragments.pmtu_lowered += c.fragments.pmtu_lowered;
    }
    return t;
}

std::deque<negotiation_failure> ike_shards::failures()
{
    std::vector<negotiation_failure> all;
    for (auto& part : on_each([](ike_manager& m) { return m.failures(); })) {
        all.insert(all.end(), std::make_move_iterator(part.begin()), std::make_move_iterator(part.end()));
    }
    std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.when < b.when; });
    if (all.size() > 100) {
        all.erase(all.begin(), all.end() - 100);
    }
    return {std::make_move_iterator(all.begin()), std::make_move_iterator(all.end())};
}

uint64_t ike_shards::dispatch_dropped() const noexcept
{
    uint64_t n = 0;
    for (const auto& s : shards_) {
        n += s->dropped.load(std::memory_order_relaxed);
    }
    return n;
}

} // namespace espresso::cp
