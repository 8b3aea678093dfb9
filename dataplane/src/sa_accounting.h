// Sequence number reservation and lifetime accounting shared by the ESP and AH paths.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "espresso/dp/crypto_core.h"
#include "espresso/dp/sa.h"
#include "packet.h"

namespace espresso::dp {

enum : uint8_t { expired_soft = 1, expired_hard = 2, expired_seq = 4 };

inline void post_once(crypto_core& core, sa_runtime& sa, uint8_t bit, sa_event_kind kind) noexcept
{
    if ((sa.expired.fetch_or(bit, std::memory_order_relaxed) & bit) == 0) {
        core.post({kind, sa.outbound() ? config::direction::outbound : config::direction::inbound, sa.spi});
    }
}

// How many of `n` packets the SA may still carry under its hard limits (RFC 4301 §4.4.2.1).
inline uint16_t lifetime_allowance(const sa_runtime& sa, uint16_t n) noexcept
{
    if ((sa.expired.load(std::memory_order_relaxed) & expired_hard) != 0) {
        return 0;
    }
    if ((sa.flags & sa_volume_limits) == 0) {
        return n;
    }
    if (sa.hard_bytes != 0 && sa.consumed_bytes() >= sa.hard_bytes) {
        return 0;
    }
    if (sa.hard_packets != 0) {
        uint64_t used = sa.consumed_packets();
        if (used >= sa.hard_packets) {
            return 0;
        }
        return static_cast<uint16_t>(std::min<uint64_t>(n, sa.hard_packets - used));
    }
    return n;
}

// Does the SA stop (or warn) after a number of bytes or packets (RFC 4301 §4.4.2.1)?
inline bool has_volume_limits(const sa_runtime& sa) noexcept { return (sa.flags & sa_volume_limits) != 0; }

// Counts a run of packets as `packets` and `bytes`, which are also the SA's consumed lifetime (see
// sa_runtime::life_bytes), and raises soft/hard events once each.
inline void lifetime_account(crypto_core& core, sa_runtime& sa, uint64_t packets, uint64_t bytes) noexcept
{
    if (packets == 0) {
        return;
    }
    if (sa.outbound()) {
        if (core.defers_outbound_counters() && !has_volume_limits(sa)) {
            core.defer_counts(&sa, packets, bytes); // a worker: written to the SA later (crypto_core.h)
            return;
        }
        // Outbound SAs are used by several workers at once: one locked add per counter.
        sa.stats.add(sa_counter::packets, packets);
        sa.stats.add(sa_counter::bytes, bytes);
    } else {
        // An inbound SA has one writer, the worker that owns its SPI: a plain load and store instead
        // of a locked read-modify-write, which with a different SA on every packet costs per packet.
        sa.stats.add_owned(sa_counter::packets, packets);
        sa.stats.add_owned(sa_counter::bytes, bytes);
    }
    if (!has_volume_limits(sa)) {
        // No limit to compare against: with a different SA on every packet, the loads and compares
        // below were ~20 instructions per packet (perf/count-instructions, decrypt at spread 4).
        return;
    }
    const uint64_t p = sa.consumed_packets();
    const uint64_t b = sa.consumed_bytes();
    if ((sa.soft_packets != 0 && p >= sa.soft_packets) || (sa.soft_bytes != 0 && b >= sa.soft_bytes)) {
        post_once(core, sa, expired_soft, sa_event_kind::soft_expire);
    }
    if ((sa.hard_packets != 0 && p >= sa.hard_packets) || (sa.hard_bytes != 0 && b >= sa.hard_bytes)) {
        post_once(core, sa, expired_hard, sa_event_kind::hard_expire);
    }
}

// Reserves up to `n` consecutive outbound sequence numbers with one atomic operation, so one SA can be
// used from several workers (ARCHITECTURE.md). Returns the count reserved; `first` gets the first
// number. Stops before the counter would pass 2^32-1 (2^64-1 with ESN), RFC 4303 §3.3.3, and then
// raises the exhaustion event once.
inline uint16_t reserve_sequence(crypto_core& core, sa_runtime& sa, uint16_t n, uint64_t& first) noexcept
{
    const uint64_t limit = sa.seq_limit();
    uint64_t old = sa.seq.load(std::memory_order_relaxed);
    uint64_t take = 0;
    do {
        take = std::min<uint64_t>(n, limit - old);
        if (take == 0) {
            break;
        }
    } while (!sa.seq.compare_exchange_weak(old, old + take, std::memory_order_relaxed));
    first = old + 1;
    if (take < n) {
        post_once(core, sa, expired_seq, sa_event_kind::seq_exhausted);
    }
    return static_cast<uint16_t>(take);
}

// The end of an engine call for one SA's packets (both directions): counts each dropped packet on the
// SA and moves the good ones to the front, in order; returns how many are good. No partition pass
// when nothing was dropped (the common case; with a burst spread over many SAs this runs once per
// packet, though perf/stage-cycles scale-100000 showed no measurable difference from the call).
inline uint16_t settle_verdicts(sa_runtime& sa, rte_mbuf** pkts, drop_reason* reasons, uint16_t n) noexcept
{
    bool dropped = false;
    for (uint16_t i = 0; i < n; ++i) {
        if (reasons[i] != drop_reason::none) [[unlikely]] {
            sa.stats.drop(reasons[i]);
            dropped = true;
        }
    }
    return dropped ? partition_by_verdict(pkts, reasons, n) : n;
}

} // namespace espresso::dp
