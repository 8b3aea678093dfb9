// The IKE SAs of one daemon: demultiplexes datagrams to IKE SAs by SPI (RFC 7296 §2.1), creates
// responder SAs for new IKE_SA_INIT requests (bounded: half-open limit, §2.6), starts configured
// tunnels, and answers the operator (status, failures, initiate, clear). Transport-agnostic: the
// daemon feeds it datagrams and calls tick() at next_deadline(); tests drive two of them in memory.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "espresso/config/ike.h"
#include "ike_io.h"
#include "ike_sa.h"

namespace espresso::cp {

struct manager_counters {
    uint64_t received = 0;
    uint64_t malformed = 0;          // failed parse_message
    uint64_t unknown_spi = 0;        // no IKE SA for the SPI
    uint64_t no_peer = 0;            // IKE_SA_INIT from an address no peer accepts
    uint64_t half_open_refused = 0;  // over the half-open limit
    uint64_t cookies_sent = 0;       // COOKIE demanded (RFC 7296 §2.6)
    uint64_t cookies_invalid = 0;    // a COOKIE that was not ours
    // IKE_SA_INIT requests refused, before any DH work, because their source address already had
    // ike.max-half-open-per-address half-open / ike.max-sas-per-address established IKE SAs.
    uint64_t address_half_open_refused = 0;
    uint64_t address_sas_refused = 0;
    // Timer lateness (how long after its deadline an SA's retransmission/DPD/rekey timer ran): the
    // daemon runs due timers between any two messages, so expensive DH or signature work on one SA
    // delays the others by at most that one message's work. Measured by perf/bench-ike.
    uint64_t initial_contact_drops = 0; // older IKE SAs dropped after a peer's INITIAL_CONTACT (§2.4)
    uint64_t timers_run = 0;
    uint64_t timers_late_10ms = 0;   // ran more than 10 ms late
    uint64_t timers_late_100ms = 0;  // more than 100 ms late
    uint64_t timer_late_max_us = 0;
    fragment_counters fragments;     // RFC 7383, summed over every IKE SA
    // Data plane acquires (traffic hit a tunnel's trap policy while the tunnel had no SA).
    uint64_t acquires = 0;
    uint64_t acquires_initiated = 0; // started (or joined) a negotiation
    uint64_t acquires_ignored = 0;   // the tunnel's start/DPD action says not to (the traffic stays dropped)
    uint64_t acquires_unmatched = 0; // no configured tunnel covers the addresses
};

class ike_manager;

// IKE SAs per remote address (ike.max-half-open-per-address, ike.max-sas-per-address): one table for
// the daemon, so the limits hold whichever shard an IKE_SA_INIT hashes to. Thread-safe (one mutex,
// taken once per new IKE SA, per IKE SA established and per IKE SA gone: IKE rates, not packet rates).
// Addresses in the text form of config::to_string.
class address_counts {
public:
    // Counts one more half-open IKE SA from `address`, unless it has `limit` already (0 = no limit).
    bool try_add_half_open(const std::string& address, uint32_t limit);
    void remove_half_open(const std::string& address);
    void add_established(const std::string& address);
    void remove_established(const std::string& address);
    size_t half_open(const std::string& address) const;
    size_t established(const std::string& address) const;

private:
    struct count {
        size_t half_open = 0, established = 0;
    };
    void forget_if_zero(std::unordered_map<std::string, count>::iterator it);
    mutable std::mutex mutex_;
    std::unordered_map<std::string, count> counts_;
};

// What the IKE SA tables of a sharded daemon (ike_shards.h) share; everything else of a manager belongs
// to its shard and is touched by that shard's thread only. Every member is callable from any shard's
// thread. A manager without one (the in-process exchange tests) is the whole daemon by itself.
class shard_directory {
public:
    virtual ~shard_directory() = default;
    virtual size_t shard_count() const noexcept = 0;
    // RFC 7296 §2.6: the half-open IKE SAs of every shard (the cookie threshold is per daemon).
    virtual std::atomic<size_t>& half_open() noexcept = 0;
    // One secret for every shard, so that a cookie is good whichever shard checks it.
    virtual const bytes& cookie_secret() const noexcept = 0;
    // The per-address IKE SA counts of every shard.
    virtual address_counts& per_address() noexcept = 0;
    // IKE SAs per peer name and shard: whether any other shard holds one (INITIAL_CONTACT, retries).
    virtual void sa_added(const std::string& peer, size_t shard) = 0;
    virtual void sa_removed(const std::string& peer, size_t shard) = 0;
    virtual bool live_elsewhere(const std::string& peer, size_t shard) const = 0;
    // Runs `task` on `shard`'s thread, later (never inline; the caller does not wait).
    virtual void post(size_t shard, std::function<void(ike_manager&)> task) = 0;
};

// The shard that initiates towards a peer (start, retries, DPD restart, operator initiate): keep-up
// state and retries live only there. A stable hash of the name (FNV-1a), not std::hash.
size_t home_shard(const std::string& peer, size_t shards) noexcept;
// A pubkey peer's certificate, key and CAs (pubkey_credentials::load), checked to hold the peer's
// local-id (RFC 7296 §2.15: the other end refuses an identity our certificate does not name). On failure
// nullopt and `error` says what is wrong and how to fix it (no "peer NAME:" prefix). Used at start,
// on reload and by `espresso-ike --check`.
std::optional<pubkey_credentials> load_peer_credentials(const config::ike_peer_config& peer, std::string& error);

// The peer with a tunnel covering a data plane acquire for (local, remote), if any (its home shard
// decides what to do: ike_manager::on_acquire).
std::optional<std::string> acquire_target(const config::ike_config& config, const config::ip_prefix& local,
                                          const config::ip_prefix& remote);

class ike_manager {
public:
    // `directory`/`shard`: this manager is shard `shard` of a sharded daemon (ike_shards.h).
    ike_manager(ike_io& io, config::ike_config config, retransmit_policy retransmit = {},
                shard_directory* directory = nullptr, size_t shard = 0);

    // Installs a trap policy for every configured tunnel (whatever its start action) and initiates
    // every tunnel with `start: immediately`. The traps stay until the tunnel leaves the configuration
    // (reload) or remove_traps(): while a tunnel has no SA its traffic is dropped, never sent in the
    // clear, and raises an acquire (on_acquire).
    void start();
    // Installs again the traps of peers where some failed (data plane not reachable yet); the daemon
    // calls it periodically. Make before break, as reload.
    void retry_traps();
    // Daemon shutdown: removes every trap policy (docs/ike.md, "Traffic while a tunnel is down").
    void remove_traps();
    // Trap policy ids in the data plane, by peer name and tunnel name.
    using trap_table = std::map<std::string, std::map<std::string, std::vector<uint32_t>>>;
    const trap_table& traps() const noexcept { return traps_; }
    // One IKE message as received (non-ESP marker already stripped).
    void receive(const endpoint& local, const endpoint& remote, std::span<const uint8_t> datagram);
    void tick();
    steady_time next_deadline() const;

    // Operator: initiate a peer (all its tunnels) or one tunnel ("peer" or "peer/tunnel" or tunnel name).
    // Returns "" or the reason it cannot.
    std::string initiate(const std::string& name);
    // The first half of initiate() for a sharded daemon: starts the missing Child SAs on an IKE SA of
    // the peer in this shard. Returns "" (then `found` says whether this shard had one) or the reason.
    // `peer_name`, when given, receives the peer that `name` resolved to.
    std::string initiate_existing(const std::string& name, bool& found, std::string* peer_name = nullptr);
    // Peers whose IKE SAs clear(peer) would delete here; and stopping their keep-up and retries (the
    // peers' home shards hold those).
    std::set<std::string> peers_matching(const std::string& peer) const;
    void stop_keeping_up(const std::set<std::string>& peers);
    // Deletes the IKE SAs of one peer (by name or address), or all when empty. Returns how many.
    size_t clear(const std::string& peer);
    // `espresso reload`: a changed `ike:` section (docs/ike.md, "Reload"). Unchanged peers keep their SAs
    // untouched; removed peers' SAs are deleted; peers whose IKE SA settings changed (`changed`) have
    // their SAs deleted and, with `start: immediately`, brought up again with the new settings; new peers
    // start like at start-up. Peers where only tunnels differ (`updated`) keep their IKE SA and the
    // Child SAs of unchanged tunnels; removed tunnels' Child SAs are deleted, changed ones negotiated
    // again, added ones started per their start action (ike_sa::reconfigure).
    struct tunnel_change {
        std::string peer, tunnel;
        // "added", "removed", "changed", "unchanged"; for a peer whose IKE settings changed, its new
        // tunnels are "renegotiated" (with the new IKE SA) and the old ones not kept "removed".
        std::string change;
        bool operator==(const tunnel_change&) const = default;
    };
    struct reload_result {
        std::vector<std::string> added, removed, changed, unchanged, updated;
        std::vector<tunnel_change> tunnels;
    };
    // `dry_run`: only compares (`espresso reload --dry-run`): the result says what a reload would do,
    // and nothing changes.
    reload_result reload(config::ike_config next, bool dry_run = false);
    // Deletes every SA locally (data plane) and tells peers, best effort: daemon shutdown.
    void shutdown();
    // Data plane events: acquire for a protect policy without SA; soft/hard expiry of an SA.
    // An acquire initiates the tunnel that covers the addresses unless the tunnel has `start: none`,
    // or has `start: immediately` and was taken down by DPD action `clear` (docs/ike.md).
    void on_acquire(const config::ip_prefix& local, const config::ip_prefix& remote);
    void on_expire(config::direction dir, uint32_t spi, bool hard);

    const std::map<uint64_t, std::unique_ptr<ike_sa>>& sas() const noexcept { return sas_; }
    const std::deque<negotiation_failure>& failures() const noexcept { return failures_; }
    const manager_counters& counters() const noexcept { return counters_; }
    const config::ike_config& config() const noexcept { return config_; }
    // Problems found at construction (unreadable certificate or key, ...): one sentence each.
    const std::vector<std::string>& startup_errors() const noexcept { return startup_errors_; }
    void record_failure(negotiation_failure f);
    // Cross-shard work (ike_shards.h), on this shard's thread.
    void restart_peer(const std::string& name); // DPD action restart of an SA in another shard
    // INITIAL_CONTACT on an IKE SA in another shard: drops ours with the same peer and identity that
    // were established before it.
    void drop_older_remote(const std::string& peer, const std::string& identity,
                           std::chrono::system_clock::time_point newer_established,
                           const std::string& newer_name);
    size_t shard() const noexcept { return shard_; }

private:
    using peer_ptr = std::shared_ptr<const config::ike_peer_config>;
    using half_open_key = std::pair<uint64_t, std::string>; // (SPIi, remote address:port)

    peer_ptr find_peer_for(const endpoint& local, const endpoint& remote) const;
    peer_ptr find_peer(const std::string& name) const;
    // Which peer and tunnels initiate(name) means; "" or the reason.
    std::string resolve(const std::string& name, peer_ptr& peer, std::vector<std::string>& tunnels) const;
    bool is_home(const std::string& peer) const noexcept;
    // Runs `task` on the peer's home shard: now when this is it, else posted there (keep-up, retries
    // and DPD-clear state of a peer live only in its home shard).
    void on_home(const std::string& peer, std::function<void(ike_manager&)> task);
    void add_sa(uint64_t spi, std::unique_ptr<ike_sa> sa);
    void erase_sa(std::map<uint64_t, std::unique_ptr<ike_sa>>::iterator it);
    void half_open_add(const half_open_key& key, uint64_t spi, std::string address);
    void half_open_remove(uint64_t spi);
    size_t half_open_total() const noexcept;
    ike_sa& create_initiator(const peer_ptr& peer, std::vector<std::string> tunnels);
    uint64_t new_spi();
    // Bookkeeping after anything happened to one IKE SA: adopts a rekey successor, drops a dead SA
    // (scheduling a retry or a restart), leaves the half-open table once established, and files the
    // SA's next deadline. O(log n): nothing here walks all SAs (perf/RESULTS.md, IKE setup).
    void after(uint64_t spi);
    void drop_older_sas(const ike_sa& newer);
    void schedule(uint64_t spi, steady_time when);
    void unschedule(uint64_t spi);
    void retry_later(const peer_ptr& peer);
    bool has_live_sa(const std::string& peer) const;
    bytes cookie_for(const message& msg, const endpoint& remote) const;
    // The per-address limits on a new IKE_SA_INIT request: true = go on (its half-open SA is counted
    // from here on); false = refused, counted and (rate-limited) logged.
    bool admit_from(const std::string& address);
    bool log_refusal(size_t reason, const std::string& text); // false: suppressed (counted only)

    ike_io& io_;
    shard_directory* directory_ = nullptr;
    size_t shard_ = 0;
    config::ike_config config_;
    retransmit_policy retransmit_;
    std::vector<peer_ptr> peers_;                           // shared with the IKE SAs
    std::map<uint64_t, std::unique_ptr<ike_sa>> sas_;      // by our SPI
    std::map<half_open_key, uint64_t> half_open_;           // -> our SPI, for retransmitted IKE_SA_INIT
    std::unordered_map<uint64_t, half_open_key> half_open_of_;
    address_counts own_addresses_;     // without a directory (one manager is the whole daemon)
    address_counts* addresses_ = nullptr; // the directory's, or own_addresses_
    std::unordered_map<uint64_t, std::string> half_open_address_;   // SPI -> remote address, counted half-open
    std::unordered_map<uint64_t, std::string> established_address_; // SPI -> remote address, counted established
    // Refusal log lines, per reason (0 half-open, 1 established): at most one per 10 s each, with the
    // refusals that were only counted in between.
    struct refusal_log {
        steady_time last{};
        uint64_t suppressed = 0;
    };
    refusal_log refusal_logs_[3]; // per-address half-open limit, established limit, no such peer
    std::set<std::pair<steady_time, uint64_t>> deadlines_;  // (when, SPI): the timer queue
    std::unordered_map<uint64_t, steady_time> deadline_of_;
    // Peers to keep up (start: immediately, or DPD restart): a failed attempt is retried with backoff.
    std::set<std::string> keep_up_;
    std::map<std::string, std::pair<steady_time, std::chrono::seconds>> retries_; // peer -> (when, backoff)
    std::deque<negotiation_failure> failures_;
    manager_counters counters_;
    bytes cookie_secret_; // random per process; cookies survive only as long as we do
    std::map<std::string, std::shared_ptr<const pubkey_credentials>> credentials_; // by peer name
    std::vector<std::string> startup_errors_;
    // Trap policies (see start()), installed once start() ran.
    bool traps_wanted_ = false;
    trap_table traps_;
    std::set<std::string> traps_incomplete_; // peers with a trap that could not be installed
    // Returns false when some trap of the peer could not be installed.
    bool install_traps(const config::ike_peer_config& peer, const config::ike_tunnel_config& tunnel,
                       std::vector<uint32_t>& ids);
    void install_peer_traps(const config::ike_peer_config& peer); // replaces the peer's traps
    // Replaces the traps of the peer's tunnels in `names` (make before break) and removes those of
    // `gone` (tunnels no longer configured): a reload where only tunnels of the peer changed.
    void update_tunnel_traps(const config::ike_peer_config& peer, const std::vector<std::string>& names,
                             const std::vector<std::string>& gone);
    void remove_trap_ids(const std::string& peer, const std::vector<uint32_t>& ids);
    void remove_peer_traps(const std::string& peer);
    // A reload where only tunnels of `next` differ from the running peer (reload()).
    void reload_tunnels(const peer_ptr& next, const std::vector<std::string>& removed,
                        const std::vector<std::string>& changed, const std::vector<std::string>& added);
    // Peers DPD action `clear` took down: acquires for their `start: immediately` tunnels are ignored
    // until the operator initiates, a reload changes the peer, or an IKE SA with it is established.
    std::set<std::string> dpd_cleared_;
    std::map<std::string, steady_time> acquire_logged_; // tunnel -> last log line about its acquires
    void give_credentials(ike_sa& sa) const;
};

} // namespace espresso::cp
