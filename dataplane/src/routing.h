// Forwarding state: the IPv4 FIB (rte_fib, DIR-24-8) and the IPv6 FIB (rte_fib6, TRIE), each built
// from connected subnets and static routes, and the neighbor table (ARP and NDP, both families).
//
// Threads: a FIB is built on the main lcore (at start-up, and by a reload) and then only read
// (workers, main lcore); a reload publishes a new one to the workers (update_msg::set_routes) and
// frees the old one after every worker acknowledged (gateway::publish_routes). The neighbor
// table has one writer, the main lcore (ARP replies, Neighbor Advertisements, static entries), and
// many lock-free readers (workers): rte_hash with RW_CONCURRENCY_LF finds the slot, and the MAC lives
// in one 64-bit atomic per slot, so a reader never sees half an address.
#pragma once

#include <rte_ether.h>
#include <rte_fib.h>
#include <rte_fib6.h>
#include <rte_hash.h>
#include <rte_rcu_qsbr.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "espresso/config/types.h"

namespace espresso::dp {

struct next_hop {
    uint16_t port = 0;
    uint32_t gateway_be = 0; // 0 = directly connected: the destination itself
};

class route_table {
public:
    static constexpr uint64_t no_route = 0x7fffffff; // DIR-24-8 with 4-byte entries keeps 31 bits

    struct connected {
        uint16_t port;
        uint32_t address_be;
        uint8_t prefix_length;
    };
    // Throws std::runtime_error on an unusable route (gateway not on a connected subnet, ...).
    route_table(const std::vector<connected>& links, const std::vector<config::route_config>& routes,
                const std::vector<std::string>& interface_names);
    ~route_table();
    route_table(const route_table&) = delete;
    route_table& operator=(const route_table&) = delete;

    // dst in network order; returns false when there is no route.
    bool lookup(uint32_t dst_be, uint16_t& port, uint32_t& next_hop_be) const noexcept;
    // Bulk form for a burst: hops[i] = index into hop(), or no_route.
    void lookup_bulk(const uint32_t* dst_host_order, uint64_t* hops, unsigned n) const noexcept;
    const next_hop& hop(uint64_t index) const noexcept { return hops_[index]; }

private:
    rte_fib* fib_ = nullptr;
    std::vector<next_hop> hops_;
};

using ipv6_address = std::array<uint8_t, 16>; // network order

struct next_hop6 {
    uint16_t port = 0;
    bool connected = true; // true: the destination itself is the next hop
    ipv6_address gateway{};
};

// The IPv6 FIB: longest-prefix match over connected subnets and static routes (rte_fib6 TRIE).
class route_table6 {
public:
    static constexpr uint64_t no_route = 0x7fffffff; // TRIE with 4-byte entries keeps 31 bits

    struct connected {
        uint16_t port;
        ipv6_address address;
        uint8_t prefix_length;
    };
    // `links` holds every interface (prefix_length 0: no IPv6 address, reachable only through a
    // link-local next hop); `interface_names[i]` names links[i]'s interface; routes of the other
    // family are ignored. Throws std::runtime_error on an unusable
    // route (next hop on no connected subnet, ...).
    route_table6(const std::vector<connected>& links, const std::vector<config::route_config>& routes,
                 const std::vector<std::string>& interface_names);
    ~route_table6();
    route_table6(const route_table6&) = delete;
    route_table6& operator=(const route_table6&) = delete;

    // Any thread. False when there is no route; next_hop = the gateway, or dst when connected.
    bool lookup(const uint8_t* dst, uint16_t& port, ipv6_address& next_hop) const noexcept;
    // Bulk form for a burst: hops[i] = index into hop(), or no_route.
    void lookup_bulk(const uint8_t (*dst)[16], uint64_t* hops, unsigned n) const noexcept;
    const next_hop6& hop(uint64_t index) const noexcept { return hops_[index]; }

private:
    rte_fib6* fib_ = nullptr;
    std::vector<next_hop6> hops_;
};

// Neighbor cache for both families (ARP for IPv4, NDP for IPv6), keyed by (port, address), with
// neighbor unreachability detection (RFC 4861 §7.3, which Linux applies to ARP as well):
//  - An entry learned or confirmed (ARP, Neighbor Advertisement/Solicitation) is reachable for
//    `reachable` cycles. After that, if the data plane used it since the last confirmation, up to
//    `probes` unicast probes (ARP request / Neighbor Solicitation to the known MAC) go out
//    `retransmit` apart; any answer confirms it again, no answer removes it. An expired entry nobody
//    used is removed without probing (garbage collection). The next packet for a removed neighbor
//    resolves it afresh with a broadcast/multicast request, so a next hop that changed its MAC
//    without announcing it (failover, replaced router) is found again within
//    reachable + probes x retransmit.
//  - Static entries never age and are never overwritten.
// Removed keys are reclaimed through DPDK's RCU QSBR integration of rte_hash (defer queue): a slot is
// reused only after every worker passed a quiescent state, so a lock-free reader never reads a slot
// that was handed to another neighbor. Workers report with reader_quiescent() once per poll loop and
// go offline while they sleep.
class neighbor_table {
public:
    // `readers`: worker threads (ids 0..readers-1) that read concurrently with the main lcore.
    explicit neighbor_table(const char* name, uint32_t capacity = 4096, unsigned readers = 1);
    ~neighbor_table();
    neighbor_table(const neighbor_table&) = delete;
    neighbor_table& operator=(const neighbor_table&) = delete;

    // Any thread. False if unknown or unresolved. Marks the entry used (for NUD).
    bool lookup(uint16_t port, uint32_t ip_be, rte_ether_addr& mac) const noexcept;
    bool lookup6(uint16_t port, const uint8_t* ip, rte_ether_addr& mac) const noexcept;
    // Main lcore only: is there an entry (without marking it used)? RFC 826's merge rule updates
    // entries that exist and creates entries only for ARP addressed to us.
    bool known(uint16_t port, uint32_t ip_be) const noexcept;
    bool known6(uint16_t port, const uint8_t* ip, rte_ether_addr& mac) const noexcept; // with its MAC
    // Main lcore only. Learns or confirms an entry (reachable again). Static entries are never
    // overwritten by ARP or NDP. A new learned entry in a table 7/8 full first evicts the oldest
    // idle learned entries (no worker used them since their confirmation) down to 3/4
    // (stats().evicted). False when the table is full all the same (stats().table_full).
    bool set(uint16_t port, uint32_t ip_be, const rte_ether_addr& mac, bool is_static) noexcept;
    bool set6(uint16_t port, const uint8_t* ip, const rte_ether_addr& mac, bool is_static) noexcept;
    // Main lcore only: removes the entry for `ip` (4 or 16 bytes by `family`), static or learned (a
    // reload dropped a static neighbor: the next packet resolves it by ARP/NDP). False if absent.
    bool remove(uint16_t port, uint8_t family, const uint8_t* ip) noexcept;
    // Main lcore only: is there a static entry (which NDP must not override)?
    bool is_static6(uint16_t port, const uint8_t* ip) const noexcept;

    // Changes whenever any entry's answer may have changed (learned, confirmed, removed): a reader
    // that keeps copies of answers (the workers' neighbor caches) may use a copy taken under
    // generation G while generation() is still G. Also changes at each confirmation, which clears
    // the entry's used mark, so a cached entry gets looked up (and marked used) again.
    uint64_t generation() const noexcept { return generation_.load(std::memory_order_acquire); }

    // Worker threads, with their reader id (the worker index).
    void reader_online(unsigned id) noexcept;
    void reader_quiescent(unsigned id) noexcept;
    void reader_offline(unsigned id) noexcept;

    struct timers {
        uint64_t reachable;  // cycles an entry stays reachable after a confirmation
        uint64_t retransmit; // cycles between probes
        unsigned probes;     // unicast probes before an entry is removed
    };
    struct probe {
        uint16_t port;
        uint8_t family;
        ipv6_address ip; // IPv4: first 4 bytes
        rte_ether_addr mac;
    };
    // Main lcore: runs NUD at time `now` (TSC); appends the probes to send; removes what expired.
    void maintain(uint64_t now, const timers& t, std::vector<probe>& out);
    // Main lcore: removes every learned entry of `family` (4, 6, or 0 for both; static ones stay);
    // returns how many.
    unsigned clear_dynamic(uint8_t family = 0);

    enum class state : uint8_t { reachable, stale, probe, permanent };
    struct entry_view {
        uint16_t port;
        uint8_t family;   // 4 or 6
        uint32_t ip_be;   // IPv4
        ipv6_address ip6; // IPv6
        rte_ether_addr mac;
        bool is_static;
        state nud;
        uint64_t confirmed_tsc; // last confirmation (learned entries)
        unsigned probes_sent;   // since then
    };
    std::vector<entry_view> entries() const; // main lcore only

    struct statistics {
        uint64_t probes_sent = 0;   // unicast NUD probes
        uint64_t unreachable = 0;   // removed: probes unanswered
        uint64_t collected = 0;     // removed: expired and unused
        uint64_t cleared = 0;       // removed by clear_dynamic
        uint64_t table_full = 0;    // could not learn: no free slot
        uint64_t evicted = 0;       // removed to make room: learned, idle (make_room)
        uint64_t waited = 0;        // adds that waited for the workers to release removed slots
    };
    const statistics& stats() const noexcept { return stats_; }
    uint32_t capacity() const noexcept { return capacity_; }

private:
    struct key_type {
        uint16_t port;
        uint16_t family;
        uint8_t address[16]; // IPv4: first 4 bytes, rest zero
    };
    static_assert(sizeof(key_type) == 20);
    static key_type key(uint16_t port, uint32_t ip_be) noexcept;
    static key_type key6(uint16_t port, const uint8_t* ip) noexcept;
    bool find(const key_type& k, rte_ether_addr& mac, bool mark_used) const noexcept;
    bool store(const key_type& k, const rte_ether_addr& mac, bool is_static) noexcept;
    void erase(const key_type& k, int32_t pos) noexcept;
    void make_room() noexcept;
    struct slot {
        std::atomic<uint64_t> mac{0}; // bit 63 = valid, bit 62 = static, low 48 bits = MAC
        // Set by readers (only when clear, so a busy entry costs no stores), cleared by the main
        // lcore at each confirmation.
        mutable std::atomic<uint8_t> used{0};
        // Main lcore only.
        uint8_t probes_sent = 0;
        key_type key{};
        uint64_t confirmed_tsc = 0;
        uint64_t probe_tsc = 0;
    };
    rte_hash* hash_ = nullptr;
    rte_rcu_qsbr* rcu_ = nullptr;
    alignas(64) std::atomic<uint64_t> generation_{1}; // main lcore writes, workers read; 0 = never
    std::unique_ptr<slot[]> slots_;
    uint32_t capacity_;   // entries at most (dataplane.neighbor-table-size)
    uint32_t slot_count_; // hash slots: capacity_ and room for removed slots waiting for readers
    uint32_t size_ = 0;   // entries in the table (main lcore)
    uint64_t next_scan_tsc_ = 0; // make_room: no scan before this (the last one found too little idle)
    statistics stats_;
};

} // namespace espresso::dp
