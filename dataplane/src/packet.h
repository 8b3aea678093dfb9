// Small wire helpers shared by the ESP and AH paths. Everything here works on memory the caller has
// already bounds-checked; the parse functions are the ones that do the checking.
#pragma once

#include <rte_byteorder.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_udp.h>

#include <cstdint>
#include <cstring>

#include "espresso/config/types.h"
#include "espresso/dp/counters.h"

namespace espresso::dp {

inline constexpr uint8_t proto_ipv4 = 4;  // IP-in-IP, ESP next header for tunnel mode IPv4
inline constexpr uint8_t proto_tcp = 6;
inline constexpr uint8_t proto_udp = 17;
inline constexpr uint8_t proto_ipv6 = 41;
inline constexpr uint8_t proto_esp = 50;
inline constexpr uint8_t proto_ah = 51;
inline constexpr uint8_t proto_none = 59; // RFC 4303 §2.6: dummy packet (TFC)

// RFC 4303 §2.4 ESP padding bytes 1, 2, 3, ...: the padding to a cipher block or to 4-byte alignment
// (at most 15 bytes when we send) is a prefix of these.
alignas(16) inline constexpr uint8_t monotonic_pad[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
// 16 bytes of 0xff then 16 zeros: from offset 16 - n, a mask of n leading bytes (memory order).
alignas(16) inline constexpr uint8_t pad_mask[32] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                                     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

// RFC 4303 §2.4: are the `len` bytes at `pad` 1, 2, 3, ...? A block cipher's padding (at most 15
// bytes from us, and from most senders) is checked as 16 bytes at once, masked to `len`, when those 16
// bytes lie inside the buffer (`end`); longer padding (up to 255 is legal) byte by byte.
inline bool monotonic_padding(const uint8_t* pad, uint32_t len, const uint8_t* end) noexcept
{
    if (len <= 16 && end - pad >= 16) {
        uint64_t got[2];
        uint64_t want[2];
        uint64_t mask[2];
        std::memcpy(got, pad, 16);
        std::memcpy(want, monotonic_pad, 16);
        std::memcpy(mask, pad_mask + 16 - len, 16);
        return (((got[0] ^ want[0]) & mask[0]) | ((got[1] ^ want[1]) & mask[1])) == 0;
    }
    for (uint32_t k = 0; k < len; ++k) {
        if (pad[k] != static_cast<uint8_t>(k + 1)) {
            return false;
        }
    }
    return true;
}

// Writes the `len` bytes of padding 1, 2, 3, ... that monotonic_padding checks. With 16 bytes of
// room at `pad` (`room`), as one 16-byte copy of which the bytes past `len` are the caller's to
// overwrite (padding of a block cipher or to 4-byte alignment is at most 15 bytes); else byte by
// byte.
inline void write_monotonic_padding(uint8_t* pad, uint32_t len, uint32_t room) noexcept
{
    if (room >= 16 && len <= 16) {
        std::memcpy(pad, monotonic_pad, 16);
        return;
    }
    for (uint32_t k = 0; k < len; ++k) {
        pad[k] = static_cast<uint8_t>(k + 1);
    }
}

// The packet becomes the `len` bytes found `off` bytes into its data. Single-segment mbufs only, with
// off + len <= data_len: the callers linearised the mbuf and checked the lengths, so this skips
// rte_pktmbuf_adj/_trim, which would check again and walk to the last segment (a per-packet cost).
inline void keep_span(rte_mbuf* m, uint32_t off, uint32_t len) noexcept
{
    RTE_ASSERT(m->nb_segs == 1 && off + len <= m->data_len);
    m->data_off = static_cast<uint16_t>(m->data_off + off);
    m->data_len = static_cast<uint16_t>(len);
    m->pkt_len = len;
}

// The packet becomes its first `len` bytes with `head` bytes in front and `tail` bytes behind: the
// opposite of keep_span, on the same terms (single segment; the caller checked head <= data_off, the
// tailroom behind those `len` bytes, and that the total fits 16 bits).
inline void grow_span(rte_mbuf* m, uint32_t len, uint32_t head, uint32_t tail) noexcept
{
    RTE_ASSERT(m->nb_segs == 1 && head <= m->data_off && len + head + tail <= UINT16_MAX &&
               m->data_off + len + tail <= m->buf_len);
    m->data_off = static_cast<uint16_t>(m->data_off - head);
    m->data_len = static_cast<uint16_t>(len + head + tail);
    m->pkt_len = len + head + tail;
}

// Network byte order through the compiler's byte swap, not rte_bswap16/32/64: for a value not known
// at compile time DPDK 22.11 (x86) swaps with `asm volatile` (`xchgb %b,%h` for 16 bits, a
// partial-register write; `bswap` for 32 and 64), which the compiler may neither fold into the load
// or store (MOVBE) nor move, and a packet's path does a dozen of them.
static_assert(RTE_BYTE_ORDER == RTE_LITTLE_ENDIAN, "the helpers below swap unconditionally");
constexpr uint16_t host_to_be16(uint16_t v) noexcept { return __builtin_bswap16(v); }
constexpr uint32_t host_to_be32(uint32_t v) noexcept { return __builtin_bswap32(v); }
constexpr uint64_t host_to_be64(uint64_t v) noexcept { return __builtin_bswap64(v); }
constexpr uint16_t be16_to_host(uint16_t v) noexcept { return __builtin_bswap16(v); }
constexpr uint32_t be32_to_host(uint32_t v) noexcept { return __builtin_bswap32(v); }

inline uint32_t load_be32(const uint8_t* p) noexcept
{
    uint32_t v;
    std::memcpy(&v, p, 4);
    return be32_to_host(v);
}
inline uint16_t load_be16(const uint8_t* p) noexcept
{
    uint16_t v;
    std::memcpy(&v, p, 2);
    return be16_to_host(v);
}
inline void store_be32(uint8_t* p, uint32_t v) noexcept
{
    v = host_to_be32(v);
    std::memcpy(p, &v, 4);
}
inline void store_be16(uint8_t* p, uint16_t v) noexcept
{
    v = host_to_be16(v);
    std::memcpy(p, &v, 2);
}
inline void store_be64(uint8_t* p, uint64_t v) noexcept
{
    v = host_to_be64(v);
    std::memcpy(p, &v, 8);
}

// The IP header at the start of a packet, validated against the mbuf.
struct ip_view {
    uint8_t version = 0;   // 4 or 6
    uint16_t header = 0;   // IPv4 IHL*4 or 40
    uint32_t total = 0;    // IP total length (IPv6: 40 + payload length)
    uint8_t protocol = 0;  // IPv4 protocol / IPv6 next header
    uint8_t tos = 0;       // IPv4 TOS / IPv6 traffic class (DSCP << 2 | ECN)
    bool fragment = false; // IPv4 MF set or offset != 0
    bool dont_fragment = false;
};

// The fields of a received outer IP header the inbound paths (ESP and AH) still need after the crypto:
// decapsulation (TOS), transport mode's selector check and header rebuild. No default member
// initialisers: it lives in per-call batch entries, max_burst of them, which would otherwise all be
// written on every call.
struct outer_fields {
    uint32_t total;  // IP total length
    uint16_t header; // IP header bytes
    uint8_t tos;
    uint8_t version;
};

inline outer_fields outer_of(const ip_view& ip) noexcept
{
    return {ip.total, ip.header, ip.tos, ip.version};
}

// Parses and checks the IP header at `p` with `avail` bytes available. Fails (bad_ip / truncated /
// bad_length) when the header or its length fields do not fit.
inline drop_reason parse_ip(const uint8_t* p, uint32_t avail, ip_view& ip) noexcept
{
    if (avail < 1) {
        return drop_reason::truncated;
    }
    ip.version = p[0] >> 4;
    if (ip.version == 4) {
        if (avail < sizeof(rte_ipv4_hdr)) {
            return drop_reason::truncated;
        }
        ip.header = static_cast<uint16_t>((p[0] & 0x0f) * 4);
        ip.total = load_be16(p + 2);
        if (ip.header < 20 || ip.total < ip.header) {
            return drop_reason::bad_ip;
        }
        if (ip.total > avail) {
            return drop_reason::truncated;
        }
        uint16_t frag = load_be16(p + 6);
        ip.fragment = (frag & 0x3fff) != 0;
        ip.dont_fragment = (frag & 0x4000) != 0;
        ip.protocol = p[9];
        ip.tos = p[1];
        return drop_reason::none;
    }
    if (ip.version == 6) {
        if (avail < sizeof(rte_ipv6_hdr)) {
            return drop_reason::truncated;
        }
        ip.header = 40;
        ip.total = 40U + load_be16(p + 4);
        if (ip.total > avail) {
            return drop_reason::truncated;
        }
        ip.protocol = p[6];
        ip.tos = static_cast<uint8_t>((load_be16(p) >> 4) & 0xff);
        ip.fragment = false;
        ip.dont_fragment = true; // routers never fragment IPv6
        return drop_reason::none;
    }
    return drop_reason::bad_ip;
}

// The IPv6 extension headers in front of the upper-layer (or IPsec) header, as a destination walks
// them (RFC 8200 §4). Only what a destination may skip without acting on it is walked: Hop-by-Hop
// Options (first only) and Destination Options whose options are padding or "skip if unknown"
// (action bits 00, §4.2), a Routing header with Segments Left 0 (§4.4), and an atomic Fragment header
// (offset 0, M 0; RFC 6946). Anything else that needs acting on is the kernel's (`kernel`).
struct ipv6_chain {
    enum verdict : uint8_t {
        ok,        // `protocol` at `offset`
        fragment,  // a real fragment: `fragment_offset` is its Fragment header, `protocol` its next header
        kernel,    // an option or header the kernel must act on (or more than max_headers)
        malformed, // a header or option runs past the packet
    } result = ok;
    uint8_t protocol = 0;          // next header after the walked headers
    uint16_t offset = 40;          // where that header starts (from the IPv6 header)
    uint16_t fragment_offset = 0;  // fragment: offset of the Fragment header
    static constexpr unsigned max_headers = 8; // bound on hostile chains (Linux has none; 8 is plenty)
};

// Walks the chain of the IPv6 packet at `ip` whose IPv6 total length (40 + payload length) is `total`
// and was checked against the buffer. Every length is checked against `total`.
ipv6_chain walk_ipv6_chain(const uint8_t* ip, uint32_t total) noexcept;

inline bool is_ipv6_extension(uint8_t next) noexcept
{
    return next == 0 || next == 43 || next == 44 || next == 60; // hop-by-hop, routing, fragment, dst options
}

inline void ipv4_set_checksum(uint8_t* p) noexcept
{
    auto* h = reinterpret_cast<rte_ipv4_hdr*>(p);
    h->hdr_checksum = 0;
    h->hdr_checksum = rte_ipv4_cksum(h);
}

inline void set_tos(uint8_t* ip, uint8_t tos) noexcept
{
    if ((ip[0] >> 4) == 4) {
        ip[1] = tos;
    } else {
        ip[0] = static_cast<uint8_t>((ip[0] & 0xf0) | (tos >> 4));
        ip[1] = static_cast<uint8_t>((ip[1] & 0x0f) | (tos << 4));
    }
}

// The mask of the first n (0..64) bits of a big-endian 64-bit word, as a word loaded from memory.
inline uint64_t leading_mask_be(unsigned n) noexcept
{
    return n == 0 ? 0 : host_to_be64(n >= 64 ? ~uint64_t{0} : ~(~uint64_t{0} >> n));
}

// x % d for a divisor fixed at start-up (the worker count), without a division instruction per
// packet (a 32-bit div is one of the slowest instructions; the SPI owner is computed for every ESP
// packet). Lemire, Kaser, Kurz, "Faster Remainder by Direct Computation" (2019): m = ceil(2^64 / d);
// x % d = ((m * x mod 2^64) * d) >> 64, exact for every 32-bit x and d >= 1 (d = 1: m wraps to 0).
struct fixed_divisor {
    uint32_t d = 1;
    uint64_t m = 0;
    fixed_divisor() = default;
    explicit fixed_divisor(uint32_t divisor) noexcept : d(divisor), m(UINT64_MAX / divisor + 1) {}
    uint32_t mod(uint32_t x) const noexcept
    {
        const uint64_t low = m * x;
        return static_cast<uint32_t>((static_cast<unsigned __int128>(low) * d) >> 64);
    }
    // Every x % 1 is 0: callers skip the multiplications (one worker owns every SPI).
    bool is_one() const noexcept { return d == 1; }
};

// Are the first `bits` bits of a and b (network order, 4 bytes when v4, else 16) equal? Word
// compares under a mask, written out because a memcmp of a variable length is a libc call per
// packet (issue 3: 4 % of an inbound packet's time went to memcmp for the selector checks).
// `bits` beyond the address are treated as its length.
inline bool leading_bits_equal(const uint8_t* a, const uint8_t* b, unsigned bits, bool v4) noexcept
{
    if (v4) {
        uint32_t x = 0;
        uint32_t y = 0;
        std::memcpy(&x, a, 4);
        std::memcpy(&y, b, 4);
        // The low half of ~0 << (32 - bits) is `bits` leading ones for 0 <= bits <= 32 (no branch,
        // no shift by 32); in network order.
        const uint32_t mask = host_to_be32(static_cast<uint32_t>(~uint64_t{0} << (32 - (bits < 32 ? bits : 32))));
        return ((x ^ y) & mask) == 0;
    }
    uint64_t x[2];
    uint64_t y[2];
    std::memcpy(x, a, 16);
    std::memcpy(y, b, 16);
    const uint64_t m0 = leading_mask_be(bits < 64 ? bits : 64);
    const uint64_t m1 = leading_mask_be(bits > 64 ? bits - 64 : 0);
    return (((x[0] ^ y[0]) & m0) | ((x[1] ^ y[1]) & m1)) == 0;
}

// Does `addr` (4 or 16 bytes, network order) fall in `prefix`? An unset prefix (family 0) matches all.
inline bool prefix_contains(const config::ip_prefix& prefix, uint8_t version, const uint8_t* addr) noexcept
{
    if (prefix.address.family == 0) {
        return true;
    }
    if (prefix.address.family != version) {
        return false;
    }
    return leading_bits_equal(prefix.address.bytes.data(), addr, prefix.length, version == 4);
}

inline const uint8_t* ip_src(const uint8_t* ip) noexcept { return (ip[0] >> 4) == 4 ? ip + 12 : ip + 8; }
inline const uint8_t* ip_dst(const uint8_t* ip) noexcept { return (ip[0] >> 4) == 4 ? ip + 16 : ip + 24; }

// Constant-time comparison of an ICV (no early exit on the first difference). ICVs are 12, 16, 24
// or 32 bytes: compare 8 bytes at a time, then the 4-byte tail.
inline bool icv_equal(const uint8_t* a, const uint8_t* b, unsigned n) noexcept
{
    if (n == 16) {
        // AES-GCM and HMAC-SHA-256-128, the common ICVs: two words, no loop (the loop below was ~28
        // instructions per packet).
        uint64_t x[2];
        uint64_t y[2];
        std::memcpy(x, a, 16);
        std::memcpy(y, b, 16);
        return ((x[0] ^ y[0]) | (x[1] ^ y[1])) == 0;
    }
    uint64_t diff = 0;
    unsigned i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        uint64_t y;
        std::memcpy(&x, a + i, 8);
        std::memcpy(&y, b + i, 8);
        diff |= x ^ y;
    }
    for (; i < n; ++i) {
        diff |= static_cast<uint64_t>(a[i] ^ b[i]);
    }
    return diff == 0;
}

// One's-complement sum of 16-bit big-endian words, not yet folded (RFC 1071).
inline uint32_t ones_sum(const uint8_t* p, unsigned len) noexcept
{
    uint32_t sum = 0;
    for (unsigned i = 0; i + 1 < len; i += 2) {
        sum += load_be16(p + i);
    }
    return sum;
}

// RFC 1071: is the IPv4 header's checksum right, i.e. its one's-complement sum, checksum field
// included, all ones? `header` bytes, a multiple of 4 (parse_ip: 20-60). Not folded to 16 bits:
// 2^16, 2^32 and 2^64 are all 1 modulo 65535, so a sum of 64- and 32-bit words with end-around
// carries is congruent modulo 65535 to the 16-bit one's-complement sum, and reading the words
// little-endian multiplies that by 256, which is invertible modulo 65535. The one's-complement sum
// of anything but all zeros lies in 1..0xffff, so it is 0xffff exactly when the wide sum is a
// non-zero multiple of 65535: one multiply (the compiler's divisibility test) instead of four folds.
// Measured in a loop over 4096 headers: 2.0 TSC cycles per header against 4.7 for the folds and 7.0
// for DPDK's `rte_raw_cksum(h, len) == 0xffff` (its generic loop; same verdicts), which is why it is
// written here; at gateway level the ~3 cycles per packet are below this VM's noise.
inline bool ipv4_checksum_ok(const uint8_t* p, uint32_t header) noexcept
{
    // The 20 bytes every header has as two 8-byte and one 4-byte load (a loop over a variable
    // count cost twice as much on forwarded 64-byte packets), then the options, if any.
    uint64_t a = 0;
    uint64_t b = 0;
    uint32_t c = 0;
    std::memcpy(&a, p, 8);
    std::memcpy(&b, p + 8, 8);
    std::memcpy(&c, p + 16, 4);
    // x + y with the end-around carry (it cannot carry again: a wrapped sum is <= 2^64 - 2).
    auto add = [](uint64_t x, uint64_t y) {
        const uint64_t s = x + y;
        return s + (s < x ? 1 : 0);
    };
    uint64_t sum = add(add(a, b), c);
    for (uint32_t i = 20; i < header; i += 4) [[unlikely]] {
        uint32_t w = 0;
        std::memcpy(&w, p + i, 4);
        sum = add(sum, w);
    }
    return sum != 0 && sum % 0xffff == 0;
}

inline uint16_t fold_checksum(uint32_t sum) noexcept
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<uint16_t>(~sum);
}

// Moves bad packets behind good ones, keeping both groups in order (DPDK lib/ipsec convention).
// `bad[i]` != none marks packet i bad. Returns the number of good packets.
uint16_t partition_by_verdict(rte_mbuf** pkts, drop_reason* reasons, uint16_t n) noexcept;

} // namespace espresso::dp
