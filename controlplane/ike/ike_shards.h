// espresso-ike's IKE SAs sharded over threads (ARCHITECTURE.md, control plane): each shard is one
// thread with its own ike_manager (its IKE SAs, timer queue, retries, half-open table, failures and
// counters), its own crypto state (OpenSSL's per-thread HMAC contexts in crypto/prf.cpp, the SA keys
// of its IKE SAs; RAND_bytes is thread-safe) and its own data plane installer (one control socket
// connection per shard, so one shard's add-sa round trip never waits behind another's). A DH or a
// signature in one shard delays only that shard's timers; within a shard due timers still run between
// any two messages (ike_manager.h).
//
// Routing. Every SPI we choose carries its shard: the top byte of our 64-bit IKE SPI modulo the shard
// count (spi_in_shard; the other 56 bits stay random, and with one shard the SPI is untouched). A
// datagram's shard follows from its header alone (datagram_shard): our SPI is SPIr when the sender is
// the original initiator (I flag, RFC 7296 §3.1) and SPIi otherwise. The one message without our SPI,
// an IKE_SA_INIT request (SPIr 0), goes by a keyed hash of SPIi and the initiator's address, so its
// retransmissions and its COOKIE retry (§2.6: same SPIi) reach the shard that answered; the SA made
// there then gets an SPI of that shard. An IKE SA rekey (§2.18) chooses the new SPI in the old SA's
// shard (ike_io::new_ike_spi), so the successor stays in the same table.
//
// One receiving thread (the daemon's main thread: sockets, operator, data plane events) reads the UDP
// sockets and hands each datagram to its shard's inbox; shards send on the same sockets themselves
// (sendto on one UDP socket from several threads is safe). An inbox is a mutex-guarded vector that the
// shard swaps out whole, with an eventfd to wake it: at IKE rates (thousands of datagrams per second,
// each worth up to a millisecond of DH) an uncontended lock per datagram is small next to the crypto,
// and the same inbox carries cross-shard work and operator requests from any thread, which an SPSC ring
// could not. The hand-off as a whole (copy, lock, eventfd wake-up, a second thread touching the
// datagram) did cost 3-18 % more CPU per IKE SA with two threads than with one (perf/RESULTS.md).
// An inbox holds at most max_queued_datagrams datagrams; more are dropped and counted (dispatch-dropped).
//
// What is shared (shard_directory in ike_manager.h): the half-open count (one atomic: the cookie
// threshold is per daemon), the cookie secret (read-only), the half-open and established IKE SAs per
// remote address (a mutex-guarded map behind ike.max-half-open-per-address / max-sas-per-address), and the number of IKE SAs per peer name and
// shard (a mutex-guarded map, touched when an IKE SA is created or removed: INITIAL_CONTACT and retry
// decisions look at every shard). Initiating towards a peer belongs to its home shard (home_shard()):
// start-up, retries, DPD restart (posted there from the shard where the SA died) and operator initiate
// (after every shard was asked whether it already holds an IKE SA with the peer). INITIAL_CONTACT
// received in one shard drops the older SAs in the others by a posted task. Operator requests run on
// every shard's thread at once (on_each) and their answers are merged; reload applies to every shard.
//
// Threads: construct, start(), call, stop() and destroy from one thread (the daemon's main thread);
// dispatch() and the operator calls from that thread too. on_each() must not be called from a shard.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "ike_manager.h"

namespace espresso::cp {

inline constexpr size_t max_ike_threads = 16;
inline constexpr size_t max_queued_datagrams = 4096; // per shard

// The shard of one of our IKE SPIs.
constexpr size_t spi_shard(uint64_t spi, size_t shards) noexcept
{
    return shards <= 1 ? 0 : static_cast<size_t>((spi >> 56) % shards);
}
// `spi` (random) moved into `shard`: only the top byte changes, to the nearest value with that residue.
uint64_t spi_in_shard(uint64_t spi, size_t shard, size_t shards) noexcept;
// The shard a datagram (without the non-ESP marker) belongs to; `key` keys the IKE_SA_INIT hash.
// Anything too short for an IKE header goes to shard 0, which counts it as malformed.
size_t datagram_shard(std::span<const uint8_t> datagram, const config::ip_address& remote, size_t shards,
                      uint64_t key) noexcept;

// The process around the shards. Every member is called from shard threads, concurrently.
class shard_host {
public:
    virtual ~shard_host() = default;
    virtual void send(const endpoint& local, const endpoint& remote, std::span<const uint8_t> message) = 0;
    virtual void send_keepalive(const endpoint& local, const endpoint& remote) = 0; // RFC 3948 §2.3
    virtual void log(log_level level, const std::string& sa_name, const std::string& text) = 0;
    virtual bool debug_enabled() const = 0;
    // Called once per shard, before its thread starts; the installer is used by that shard only.
    virtual std::unique_ptr<sa_installer> make_installer(size_t shard) = 0;
};

class ike_shards final : private shard_directory {
public:
    // Starts `threads` shard threads, idle until start() or a datagram.
    ike_shards(shard_host& host, const config::ike_config& config, retransmit_policy retransmit,
               size_t threads);
    ~ike_shards() override; // joins the threads without deleting any SA (stop() does that first)
    ike_shards(const ike_shards&) = delete;
    ike_shards& operator=(const ike_shards&) = delete;

    size_t size() const noexcept { return shards_.size(); }
    const std::vector<std::string>& startup_errors() const noexcept { return startup_errors_; }
    const config::ike_config& config() const noexcept { return config_; }

    // Each shard initiates its home peers' `start: immediately` tunnels.
    void start();
    // Deletes every IKE SA (telling the peers, best effort), then ends the threads.
    void stop();

    // A received IKE message (non-ESP marker stripped): queued for its shard.
    void dispatch(const endpoint& local, const endpoint& remote, std::span<const uint8_t> datagram);
    size_t shard_for(std::span<const uint8_t> datagram, const endpoint& remote) const noexcept
    {
        return datagram_shard(datagram, remote.address, shards_.size(), hash_key_);
    }

    // Runs fn(manager) on every shard's thread at the same time and waits; the results in shard order.
    // fn is called concurrently from several threads: it must only read what it captures, or write
    // per-shard slots.
    template <typename F>
    auto on_each(F fn)
    {
        using result = std::invoke_result_t<F&, ike_manager&>;
        std::latch done(static_cast<std::ptrdiff_t>(shards_.size()));
        if constexpr (std::is_void_v<result>) {
            for (size_t i = 0; i < shards_.size(); ++i) {
                post(i, [&](ike_manager& m) {
                    fn(m);
                    done.count_down();
                });
            }
            done.wait();
        } else {
            std::vector<std::optional<result>> slots(shards_.size());
            for (size_t i = 0; i < shards_.size(); ++i) {
                post(i, [&, i](ike_manager& m) {
                    slots[i].emplace(fn(m));
                    done.count_down();
                });
            }
            done.wait();
            std::vector<result> out;
            out.reserve(slots.size());
            for (auto& s : slots) {
                out.push_back(std::move(*s));
            }
            return out;
        }
    }
    // The same on one shard.
    template <typename F>
    auto on_shard(size_t shard, F fn)
    {
        using result = std::invoke_result_t<F&, ike_manager&>;
        std::latch done(1);
        if constexpr (std::is_void_v<result>) {
            post(shard, [&](ike_manager& m) {
                fn(m);
                done.count_down();
            });
            done.wait();
        } else {
            std::optional<result> slot;
            post(shard, [&](ike_manager& m) {
                slot.emplace(fn(m));
                done.count_down();
            });
            done.wait();
            return std::move(*slot);
        }
    }

    // Operator and data plane requests, over every shard (ike_manager has the single-table meaning).
    std::string initiate(const std::string& name);
    size_t clear(const std::string& peer);
    ike_manager::reload_result reload(const config::ike_config& next, bool dry_run = false);
    // To the home shard of the peer whose tunnel covers the addresses (shard 0 when none: it counts
    // the acquire as unmatched); that shard's manager decides (start action, DPD state).
    void on_acquire(const config::ip_prefix& local, const config::ip_prefix& remote);
    // Shard 0 owns the daemon's trap policies (ike_manager::start): retry the ones that failed.
    void retry_traps();
    void on_expire(config::direction dir, uint32_t spi, bool hard); // asynchronous: the owner acts
    manager_counters counters();                                    // summed (largest lateness: max)
    std::deque<negotiation_failure> failures();                     // merged by time, the last 100
    uint64_t dispatch_dropped() const noexcept;                     // inboxes full

    // shard_directory (public for the managers' use through the base; listed for the tests)
    size_t shard_count() const noexcept override { return shards_.size(); }
    bool live_elsewhere(const std::string& peer, size_t shard) const override;

private:
    struct item {
        endpoint local, remote;
        std::vector<uint8_t> data;
        std::function<void(ike_manager&)> task; // set: a task, else a datagram
    };
    class shard_io;
    struct shard {
        size_t index = 0;
        std::unique_ptr<shard_io> io;
        std::unique_ptr<ike_manager> manager;
        std::mutex mutex;
        std::vector<item> inbox;     // guarded by mutex
        size_t queued_datagrams = 0; // guarded by mutex
        std::atomic<uint64_t> dropped{0};
        int wake_fd = -1;
        std::atomic<bool> stopping{false};
        std::thread thread;
    };

    // shard_directory
    std::atomic<size_t>& half_open() noexcept override { return half_open_; }
    const bytes& cookie_secret() const noexcept override { return cookie_secret_; }
    address_counts& per_address() noexcept override { return per_address_; }
    void sa_added(const std::string& peer, size_t shard) override;
    void sa_removed(const std::string& peer, size_t shard) override;
    void post(size_t shard, std::function<void(ike_manager&)> task) override;

    void push(shard& s, item it);
    void run(shard& s);
    void join();

    shard_host& host_;
    config::ike_config config_;
    // ike.nat-keepalive in seconds (0 = off): written by reload() on the main thread, read by the shards.
    std::atomic<uint32_t> nat_keepalive_{20};
    std::vector<std::unique_ptr<shard>> shards_;
    std::vector<std::string> startup_errors_;
    std::atomic<size_t> half_open_{0};
    bytes cookie_secret_;
    address_counts per_address_;
    uint64_t hash_key_ = 0;
    mutable std::mutex registry_mutex_;
    std::unordered_map<std::string, std::vector<uint32_t>> registry_; // peer -> IKE SAs per shard
};

} // namespace espresso::cp
