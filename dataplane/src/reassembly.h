// Reassembly of IP fragments addressed to the gateway (RFC 791 §3.2, RFC 8200 §4.5, RFC 5722), with
// DPDK's librte_ip_frag: one rte_ip_frag table and death row per worker.
//
// Why the data plane reassembles at all: a peer whose path MTU is smaller than its ESP packets
// fragments the outer packet after encryption (RFC 4303 §3.4.1: the receiver reassembles before ESP
// processing), common with IPv4 and NAT-T; without reassembly such a tunnel loses every large packet.
//
// Threads: a reassembler belongs to one worker and is used only by it (no locks). Fragments of one
// datagram must therefore reach the same worker; the worker loop sends each fragment to the worker
// chosen by a hash of (source, destination, identification), whatever queue RSS put it on.
#pragma once

#include <rte_ip_frag.h>
#include <rte_mbuf.h>

#include <cstdint>

namespace espresso::dp {

// What add()/expire() did, in fragments (every fragment is a received packet and is counted once).
struct reassembly_counts {
    uint32_t timed_out = 0;  // its datagram did not complete within the timeout
    uint32_t table_full = 0; // no free entry for a new datagram
    uint32_t invalid = 0;    // overlapping or duplicate fragments, a hole, more than the fragments allowed
    uint32_t too_big = 0;    // the datagram would exceed the largest reassembled size
    uint32_t no_buffer = 0;  // no mbuf to copy into
};

class reassembler {
public:
    // `datagrams`: entries (datagrams being reassembled at once); `timeout_tsc`: cycles a datagram may
    // take to complete; `whole`: pool of single-segment mbufs the complete datagram is copied into (its
    // data room, less headroom, bounds the reassembled size); `waiting`: the reassembler's own pool,
    // which every fragment is copied into while it waits (chained when it is bigger than one mbuf),
    // so incomplete datagrams hold at most that pool, never mbufs of the RX pools; a fragment that
    // finds it empty is dropped (`no_buffer`).
    // Throws std::runtime_error when the table cannot be created.
    reassembler(uint32_t datagrams, uint64_t timeout_tsc, rte_mempool* whole, rte_mempool* waiting, int socket);
    ~reassembler();
    reassembler(const reassembler&) = delete;
    reassembler& operator=(const reassembler&) = delete;

    // `m`: one fragment, single segment, data starting at its IP header (IPv4, or IPv6 with the
    // Fragment header right after the fixed header). Takes ownership. Returns the complete datagram
    // (one segment, from the `whole` pool, IPv4 checksum set, IPv6 Fragment header removed, `port`
    // of the fragment) or nullptr when the datagram is not complete yet or was dropped (`c` says
    // which fragments were dropped and why).
    rte_mbuf* add(rte_mbuf* m, uint64_t now_tsc, reassembly_counts& c) noexcept;

    // Drops datagrams older than the timeout. Call regularly (every poll: it is cheap when nothing
    // expired, the table keeps its entries in age order).
    void expire(uint64_t now_tsc, reassembly_counts& c) noexcept;

    // Largest reassembled datagram (IP header included) this reassembler returns.
    uint32_t max_bytes() const noexcept { return max_bytes_; }

private:
    rte_mbuf* linearize(rte_mbuf* chain, reassembly_counts& c) noexcept;

    rte_ip_frag_tbl* table_ = nullptr;
    rte_ip_frag_death_row death_row_{};
    rte_mempool* whole_;
    rte_mempool* waiting_;
    uint32_t max_bytes_;
};

} // namespace espresso::dp
