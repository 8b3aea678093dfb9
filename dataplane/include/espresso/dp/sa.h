// The runtime form of a security association: everything a worker needs per packet, precomputed
// once at install time (expanded keys, HMAC inner/outer states, outer header template, flag bits).
// The control record (config::sa_config, with its keys wiped) rides along for display only.
//
// Lifetime and threads: created and destroyed by the management thread (`make_sa`, `sa_ptr` deleter
// wipes every key byte, then gives the slot back to the slab pool it came from, src/sa_pool.h). Workers only use an SA between the moment it is published to them and the
// moment they acknowledge its removal. Outbound SAs may be used by several workers at once (sequence
// numbers are reserved per burst with one atomic operation); an inbound SA is processed by one worker
// at a time (its replay window has one writer).
#pragma once

#include <intel-ipsec-mb.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "espresso/config/types.h"
#include "espresso/dp/counters.h"
#include "espresso/dp/replay.h"

namespace espresso::dp {

class crypto_core;

enum sa_flag : uint16_t {
    sa_outbound = 1U << 0,
    sa_tunnel = 1U << 1,
    sa_outer_v6 = 1U << 2, // tunnel outer header is IPv6
    sa_esn = 1U << 3,
    sa_udp = 1U << 4, // RFC 3948 UDP encapsulation
    sa_ah = 1U << 5,
    sa_aead = 1U << 6, // GCM: ICV from the cipher
    sa_gmac = 1U << 7, // RFC 4543: no encryption, whole payload authenticated as AAD
    sa_cbc = 1U << 8,  // block cipher with an explicit 16-byte IV
    // Inbound tunnel SA whose local selector covers one of the gateway's addresses: a decrypted inner
    // packet may be for the gateway itself (set by the gateway at install, before workers see the SA).
    sa_local_inner = 1U << 9,
    // A soft or hard byte/packet limit is set (RFC 4301 §4.4.2.1; set by make_sa): without one, the
    // engine's lifetime accounting is the two counters only, no read of the state line's limits.
    sa_volume_limits = 1U << 10,
    // Inbound tunnel SA whose selectors admit inner addresses no packet may be forwarded from or to
    // (IPv4 0/8, 127/8, 224/3; IPv6 ::, ::1, ff00::/8, fe80::/10; set by the gateway at install): the worker
    // then checks each decrypted packet's addresses (a 0.0.0.0/0 tunnel must not deliver a peer's
    // packets to 127.0.0.1 or a multicast group on the LAN).
    sa_wide_inner = 1U << 11,
};

struct alignas(64) sa_runtime {
    // --- read-only after install, read on every packet -------------------------------------------
    uint32_t spi = 0;    // host order
    uint32_t spi_be = 0; // network order, as written on the wire
    uint16_t flags = 0;
    uint8_t iv_bytes = 0;    // explicit IV in the packet
    uint8_t block_bytes = 4; // padding alignment: a power of two (4, or 16 for CBC), used as a mask
    uint8_t icv_bytes = 0;
    uint8_t outer_bytes = 0; // bytes of outer_header (IP [+ UDP])
    uint8_t ttl = 64;
    uint8_t dscp_value = 0;
    config::df_mode df = config::df_mode::copy;
    config::dscp_mode dscp = config::dscp_mode::copy;
    uint16_t tfc_pad_to = 0;
    IMB_CIPHER_MODE cipher_mode = IMB_CIPHER_NULL;
    IMB_HASH_ALG hash_alg = IMB_AUTH_NULL;
    IMB_KEY_SIZE_BYTES key_size = IMB_KEY_128_BYTES;
    uint8_t hash_full_bytes = 0; // untruncated HMAC output (for the job's output buffer)
    // The lines of key material a packet of this SA reads, two runs: the cipher's round keys, then the
    // hash state (GHASH key powers, or HMAC ipad/opad). key_line[i] is the run's first line counted
    // from the SA's start, key_runs holds their lengths (run 0 in the low nibble; 3 bytes so that they
    // fit in the padding before `salt`). Set by make_sa, which knows where the manager's GCM code
    // keeps the key powers.
    uint8_t key_line[2]{};
    uint8_t key_runs = 0;
    uint32_t salt = 0;           // RFC 4106 §4 nonce salt (network byte order as bytes)
    uint32_t outer_sum = 0;      // IPv4 outer template's one's-complement sum without per-packet fields
    // Inbound: the selectors every decrypted packet is checked against (RFC 4301 §5.2), copies of
    // config.local/remote kept here because the control record is two cache lines nobody prefetches,
    // far from everything else a packet reads (issue 3: a miss per packet with many SAs active).
    config::ip_prefix local_selector;
    config::ip_prefix remote_selector;
    // Outer IPv4/IPv6 header (+ UDP header) with addresses, protocol and TTL filled in; lengths,
    // checksum, DSCP/ECN/DF are set per packet.
    alignas(16) uint8_t outer_header[48]{};

    // --- key material (wiped by the deleter) -----------------------------------------------------
    alignas(16) uint32_t enc_keys[60]{}; // AES expanded encryption keys (CBC)
    alignas(16) uint32_t dec_keys[60]{}; // AES expanded decryption keys (CBC)
    alignas(64) gcm_key_data gcm_key{};
    alignas(64) uint8_t ipad[64]{}; // HMAC H(K ^ ipad) state, as IPsec-MB wants it (with opad: 2 lines)
    alignas(16) uint8_t opad[64]{}; // HMAC H(K ^ opad) state

    // --- mutable state ---------------------------------------------------------------------------
    // One cache line with everything an engine call reads and writes for sequence numbers and
    // lifetimes (both directions): with many SAs active, each one's state is a cache miss per burst,
    // so this line is one miss instead of three (see static_asserts below the struct).
    alignas(64) std::atomic<uint64_t> seq{0}; // outbound: last sequence number used
    // Lifetime accounting (RFC 4301 §4.4.2.1): an SA consumes its display counters `packets` and
    // `bytes` (stats.raw; `clear counters` moves stats.base and never resets a counter, so it cannot
    // extend an SA's life), and these two hold only what a replaced SA carried over (gateway.cpp), so
    // a packet costs no store besides its counters. Read through consumed_bytes()/consumed_packets().
    std::atomic<uint64_t> life_bytes{0};
    std::atomic<uint64_t> life_packets{0};
    // 0 = none. Whoever sets one must set sa_volume_limits too (make_sa does; the engine reads the
    // limits only when that flag is set).
    uint64_t soft_bytes = 0, hard_bytes = 0, soft_packets = 0, hard_packets = 0;
    std::atomic<uint8_t> expired{0};          // bit 0 soft event sent, bit 1 hard, bit 2 exhausted
    alignas(64) replay_window replay;         // inbound: owned by one worker
    alignas(64) sa_stats stats;

    // --- control record, for display only (keys wiped) -------------------------------------------
    config::sa_config config;

    explicit sa_runtime(const config::sa_config& c) noexcept;

    bool outbound() const noexcept { return (flags & sa_outbound) != 0; }
    uint64_t consumed_bytes() const noexcept
    {
        return stats.raw(sa_counter::bytes) + life_bytes.load(std::memory_order_relaxed);
    }
    uint64_t consumed_packets() const noexcept
    {
        return stats.raw(sa_counter::packets) + life_packets.load(std::memory_order_relaxed);
    }
    uint64_t seq_limit() const noexcept { return (flags & sa_esn) ? UINT64_MAX : UINT32_MAX; }
};

static_assert(offsetof(sa_runtime, expired) / 64 == offsetof(sa_runtime, seq) / 64,
              "sequence and lifetime state must share one cache line");
static_assert(offsetof(sa_runtime, outer_sum) < 64 && offsetof(sa_runtime, key_runs) < 64,
              "per-packet parameters must be in the first cache line");
static_assert(sizeof(sa_runtime) / 64 < 256, "key_line counts lines in a uint8_t");
static_assert(sizeof(sa_runtime::outer_header) <= 48, "max_esp_overhead counts 48 bytes of outer headers");
static_assert(offsetof(sa_runtime, outer_header) + sizeof(sa_runtime::outer_header) <= 128 &&
                  offsetof(sa_runtime, remote_selector) + sizeof(config::ip_prefix) <= 128,
              "selectors and outer header template must be in the two lines prefetch_sa_head loads");

// What encapsulation with `sa` adds to a packet at most (TFC padding aside), `v6`: the IP header the
// ESP or AH header follows is IPv6 (tunnel mode: the outer header; transport mode: the packet's own).
// ESP: outer headers, SPI and sequence number, IV, ICV, pad length and next header, up to block - 1
// bytes of padding. AH (RFC 4302 §2.2, §3.3.3.2.1): outer header, then 12 bytes, IV and ICV, a
// multiple of 4 bytes after IPv4 and of 8 after IPv6 (as ah.cpp builds it). Transport mode:
// outer_bytes is just the UDP header, or 0.
inline uint32_t esp_overhead(const sa_runtime& sa, bool v6) noexcept
{
    if ((sa.flags & sa_ah) != 0) {
        const uint32_t align = v6 ? 8U : 4U;
        return sa.outer_bytes + (12U + sa.iv_bytes + sa.icv_bytes + align - 1U) / align * align;
    }
    return sa.outer_bytes + 8U + sa.iv_bytes + sa.icv_bytes + 2U + (sa.block_bytes - 1U);
}

// esp_overhead's bound over every SA make_sa builds (it refuses one above it): an IPv6 outer header
// with UDP (48), 8, a 16-byte IV (AES-CBC), a 32-byte ICV (HMAC-SHA-512-256), 2, 15 (AH adds at most
// 40 + 48). The worker's MTU check compares a packet against it first and reads the SA's own figures
// only for packets that long: for most packets the SA's first line is not needed before the
// engine's (perf/RESULTS.md, stop 26).
inline constexpr uint32_t max_esp_overhead = 48 + 8 + 16 + 32 + 2 + 15;

// Prefetches for a burst spread over many SAs, so that it takes the cache misses of all of them at
// once instead of one SA after the other. Outbound: the worker starts every SA's head (parameters,
// outer header template) as soon as the SPD names the SA, the engine the sequence line and the
// counters (the SA's line, or with deferred counters the core's slot) at the start of its call (the
// key schedules are left to the AES code's own loads: esp_outbound.cpp). Inbound: the engine starts
// all of its SAs' head, state and keys at the start of its call when it has more than one SA
// (prefetch_sa_head, prefetch_sa_state); the worker does not start them after the SAD look-up as
// well (perf/RESULTS.md, stop 29).
inline void prefetch_sa_head(const sa_runtime* sa) noexcept
{
    __builtin_prefetch(sa, 0, 3);
    __builtin_prefetch(reinterpret_cast<const char*>(sa) + 64, 0, 3);
}

// The SA's sequence number and lifetime line, which every outbound engine call writes.
inline void prefetch_sa_sequence(const sa_runtime* sa) noexcept { __builtin_prefetch(&sa->seq, 1, 3); }

// The lines an engine call writes for an SA whatever its algorithm and direction: sequence number
// and lifetime, counters (outbound_process_groups starts them for all of its SAs at once).
inline void prefetch_sa_outbound_state(const sa_runtime* sa) noexcept
{
    prefetch_sa_sequence(sa);
    __builtin_prefetch(&sa->stats, 1, 3);
}

// Those and the replay window's head, for an inbound SA.
inline void prefetch_sa_inbound_state(const sa_runtime* sa) noexcept
{
    prefetch_sa_outbound_state(sa);
    __builtin_prefetch(&sa->replay, 1, 3);
}

// The key material of the SA's algorithm (key_line/key_runs: AES-128-GCM on the AVX2 manager reads 6
// lines, round keys and the 8 hash key powers; CBC+HMAC the round keys of its direction and
// ipad/opad). Reads key_line/key_runs from the SA's first line: a wait for that line when it is not
// in cache yet.
inline void prefetch_sa_keys(const sa_runtime* sa) noexcept
{
    const char* base = reinterpret_cast<const char*>(sa);
    for (unsigned run = 0; run < 2; ++run) {
        const unsigned first = sa->key_line[run];
        const unsigned lines = (sa->key_runs >> (run * 4)) & 0xfU;
        for (unsigned line = 0; line < lines; ++line) {
            __builtin_prefetch(base + (first + line) * 64U, 0, 3);
        }
    }
}

// Everything an inbound engine call reads and writes at once (inbound_process_groups with many SAs):
// state lines and key schedule. Measured with perf/esp-bench --spread 240: starting the inbound keys
// per SA as in outbound was no faster (0.727 vs 0.735 of the raw crypto).
inline void prefetch_sa_state(const sa_runtime* sa) noexcept
{
    prefetch_sa_inbound_state(sa);
    prefetch_sa_keys(sa);
}

struct sa_deleter {
    void operator()(sa_runtime* sa) const noexcept; // wipes keys, then frees
};
using sa_ptr = std::unique_ptr<sa_runtime, sa_deleter>;

// Validates the combination (AH with a cipher, ESP without integrity and without AEAD, key lengths,
// ...) and expands the keys with `core`'s manager. Throws std::invalid_argument with a message an
// operator can act on. The caller's copy of the keys is not touched; wipe it yourself.
sa_ptr make_sa(const config::sa_config& config, crypto_core& core);

// An outbound SA like `old` (same SPI, keys, algorithms, lifetime limits) that sends to new peer
// endpoints: `updated` is old.config with a new tunnel destination and/or UDP encapsulation ports (a
// peer behind a NAT whose mapping changed, RFC 7296 §2.23 / RFC 3948). Everything else must be as it
// was (std::invalid_argument otherwise). The caller carries the sequence number and counters over.
// Needed because the keys cannot be expanded again: the control record keeps none.
sa_ptr rebind_sa(const sa_runtime& old, const config::sa_config& updated);

} // namespace espresso::dp
