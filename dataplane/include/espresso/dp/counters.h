// Every per-SA counter and every drop reason, declared once. The X-macros generate the enum, the
// names shown to the operator (`show crypto ipsec sa`, JSON) and the storage, so a new drop reason
// cannot be added without a name and a counter.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string_view>

namespace espresso::dp {

// Why a packet was not forwarded. `none` = forwarded.
#define ESPRESSO_DROP_REASONS(X)                                                                    \
    X(none, "none")                                                                                \
    X(no_sa, "no SA for SPI")                                                                      \
    X(replay, "replayed")                                                                          \
    X(too_old, "too old (left of replay window)")                                                  \
    X(icv, "ICV check failed")                                                                     \
    X(bad_padding, "bad padding")                                                                  \
    X(truncated, "truncated")                                                                      \
    X(bad_length, "bad length")                                                                    \
    X(bad_next_header, "bad next header")                                                          \
    X(bad_udp, "bad UDP encapsulation header")                                                     \
    X(bad_ip, "malformed IP header")                                                               \
    X(seq_exhausted, "sequence number exhausted")                                                  \
    X(lifetime_expired, "hard lifetime expired")                                                   \
    X(selector_mismatch, "inner packet outside SA selectors")                                      \
    X(no_headroom, "no mbuf headroom/tailroom")                                                    \
    X(crypto_error, "crypto engine error")                                                         \
    X(dummy, "TFC dummy packet (next header 59)")                                                 \
    X(ecn, "outer CE on not-ECT inner packet (RFC 6040)")                                          \
    X(sa_dead, "SA being deleted")

enum class drop_reason : uint8_t {
#define X(id, text) id,
    ESPRESSO_DROP_REASONS(X)
#undef X
        count
};

inline constexpr std::array<std::string_view, static_cast<size_t>(drop_reason::count)> drop_reason_names = {
#define X(id, text) std::string_view{#id},
    ESPRESSO_DROP_REASONS(X)
#undef X
};

inline constexpr std::array<std::string_view, static_cast<size_t>(drop_reason::count)> drop_reason_texts = {
#define X(id, text) std::string_view{text},
    ESPRESSO_DROP_REASONS(X)
#undef X
};

// The Cisco set (`#pkts encaps: … encrypt: … digest: …`) plus bytes. "digest" counts packets whose ICV
// was computed, "verify" packets whose ICV verified.
#define ESPRESSO_SA_COUNTERS(X)                                                                     \
    X(encaps)                                                                                      \
    X(encrypt)                                                                                     \
    X(digest)                                                                                      \
    X(decaps)                                                                                      \
    X(decrypt)                                                                                     \
    X(verify)                                                                                      \
    X(packets)                                                                                     \
    X(bytes)

enum class sa_counter : uint8_t {
#define X(id) id,
    ESPRESSO_SA_COUNTERS(X)
#undef X
        count
};
static_assert(static_cast<unsigned>(sa_counter::count) <= 32, "sa_stats::mirrors is 32 bits");

inline constexpr std::array<std::string_view, static_cast<size_t>(sa_counter::count)> sa_counter_names = {
#define X(id) std::string_view{#id},
    ESPRESSO_SA_COUNTERS(X)
#undef X
};

// Counters of one SA. Several workers may use one outbound SA, so its counters are relaxed atomics
// added with a read-modify-write once per run of packets on the same SA (not once per packet). An
// inbound SA has one writer, the worker that owns its SPI (gateway.h): add_owned() adds with a plain
// load and store, no locked instruction (with traffic of many tunnels each SA gets a packet or two per
// burst, so a locked add per counter is paid per packet; perf/RESULTS.md, issue 3). Readers (CLI,
// telemetry) may read at any time.
//
// `clear counters` must not store zeros into a counter a worker adds to with a load and a store (the
// worker could store back the value it loaded before the clear, undoing it). Instead the management
// thread records the counters' values at the clear in `base`, and get() answers the difference; the
// workers never touch `base`. (Making the clear a message each worker applies between bursts would
// have the worker walk every SA it owns, up to a million, in one go while its packets wait.) Drops
// are rare and always added with a read-modify-write, so the clear sets them to zero.
//
// Counters that always equal `packets` for an SA (outbound ESP: encaps, and encrypt/digest when the SA
// has a cipher/ICV) are not stored: `mirrors` has their bits, get() answers `packets` for them, and
// the engine skips their adds. Read counters with get(), never from `counters` directly.
struct sa_stats {
    std::array<std::atomic<uint64_t>, static_cast<size_t>(sa_counter::count)> counters{};
    std::array<std::atomic<uint64_t>, static_cast<size_t>(drop_reason::count)> drops{};
    uint32_t mirrors = 0; // bit (1 << sa_counter): the counter equals `packets`; set at SA creation
    // counters[] at the last clear (management thread only; atomic because telemetry reads too).
    std::array<std::atomic<uint64_t>, static_cast<size_t>(sa_counter::count)> base{};

    static constexpr uint32_t bit(sa_counter c) noexcept { return 1U << static_cast<unsigned>(c); }

    // Several writers (outbound SAs).
    void add(sa_counter c, uint64_t n) noexcept {
        if (n != 0) {
            counters[static_cast<size_t>(c)].fetch_add(n, std::memory_order_relaxed);
        }
    }
    // The counter's value since the SA was created (never reset: clear() moves `base`), which is the
    // SA's consumed lifetime (sa_runtime::consumed_packets).
    uint64_t raw(sa_counter c) const noexcept {
        return counters[static_cast<size_t>(c)].load(std::memory_order_relaxed);
    }
    // The single writer of this SA's counters (inbound SAs: the owning worker).
    void add_owned(sa_counter c, uint64_t n) noexcept {
        auto& v = counters[static_cast<size_t>(c)];
        v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    void drop(drop_reason r, uint64_t n = 1) noexcept {
        drops[static_cast<size_t>(r)].fetch_add(n, std::memory_order_relaxed);
    }
    uint64_t get(sa_counter c) const noexcept {
        if ((mirrors & bit(c)) != 0) {
            c = sa_counter::packets;
        }
        const auto i = static_cast<size_t>(c);
        return counters[i].load(std::memory_order_relaxed) - base[i].load(std::memory_order_relaxed);
    }
    uint64_t get(drop_reason r) const noexcept {
        return drops[static_cast<size_t>(r)].load(std::memory_order_relaxed);
    }
    // Management thread only.
    void clear() noexcept {
        for (size_t i = 0; i < counters.size(); ++i) {
            base[i].store(counters[i].load(std::memory_order_relaxed), std::memory_order_relaxed);
        }
        for (auto& d : drops) {
            d.store(0, std::memory_order_relaxed);
        }
    }
    // Management thread only, once no worker can reach `from` any more (an SA replaced by another):
    // adds its counters and drops to this SA's, as they read now. This SA is live: its owning worker
    // may be in the middle of an add_owned() (load, then store), which would overwrite an add to
    // `counters` made meanwhile; so the counters are carried over through `base`, which only this
    // thread writes (get() = counters - base, modulo 2^64).
    void carry_over(const sa_stats& from) noexcept {
        for (size_t i = 0; i < counters.size(); ++i) {
            const uint64_t carried =
                from.counters[i].load(std::memory_order_relaxed) - from.base[i].load(std::memory_order_relaxed);
            base[i].store(base[i].load(std::memory_order_relaxed) - carried, std::memory_order_relaxed);
        }
        for (size_t i = 0; i < drops.size(); ++i) {
            drops[i].fetch_add(from.drops[i].load(std::memory_order_relaxed), std::memory_order_relaxed);
        }
    }
};

} // namespace espresso::dp
