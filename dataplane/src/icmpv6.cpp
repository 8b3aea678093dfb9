#include "icmpv6.h"

#include <algorithm>
#include <cstring>

namespace espresso::dp {

namespace {

uint16_t be16(const uint8_t* p) noexcept { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

void put16(uint8_t* p, uint16_t v) noexcept
{
    p[0] = static_cast<uint8_t>(v >> 8);
    p[1] = static_cast<uint8_t>(v);
}

void put32(uint8_t* p, uint32_t v) noexcept
{
    p[0] = static_cast<uint8_t>(v >> 24);
    p[1] = static_cast<uint8_t>(v >> 16);
    p[2] = static_cast<uint8_t>(v >> 8);
    p[3] = static_cast<uint8_t>(v);
}

// IPv6 header: version 6, traffic class 0, flow label 0.
void ipv6_header(uint8_t* p, uint16_t payload, uint8_t next_header, uint8_t hop_limit, const uint8_t* src,
                 const uint8_t* dst) noexcept
{
    std::memset(p, 0, 8);
    p[0] = 0x60;
    put16(p + 4, payload);
    p[6] = next_header;
    p[7] = hop_limit;
    std::memcpy(p + 8, src, 16);
    std::memcpy(p + 24, dst, 16);
}

void finish_checksum(uint8_t* ip6, uint32_t icmp_len) noexcept
{
    uint8_t* icmp = ip6 + 40;
    icmp[2] = 0;
    icmp[3] = 0;
    put16(icmp + 2, icmpv6_checksum(ip6, icmp_len));
}

} // namespace

uint16_t icmpv6_checksum(const uint8_t* ip6, uint32_t icmp_len) noexcept
{
    // Pseudo-header: source, destination, upper-layer length (32 bits), zeros, next header 58.
    uint64_t sum = 0;
    for (unsigned i = 8; i < 40; i += 2) {
        sum += be16(ip6 + i);
    }
    sum += icmp_len >> 16;
    sum += icmp_len & 0xffff;
    sum += proto_icmpv6;
    const uint8_t* p = ip6 + 40;
    uint32_t i = 0;
    for (; i + 1 < icmp_len; i += 2) {
        sum += be16(p + i);
    }
    if (i < icmp_len) {
        sum += static_cast<uint32_t>(p[i]) << 8;
    }
    while ((sum >> 16) != 0) {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    return static_cast<uint16_t>(~sum);
}

bool is_multicast6(const uint8_t* a) noexcept { return a[0] == 0xff; }

bool is_unspecified6(const uint8_t* a) noexcept
{
    static constexpr uint8_t zero[16] = {};
    return std::memcmp(a, zero, 16) == 0;
}

bool is_link_local6(const uint8_t* a) noexcept { return a[0] == 0xfe && (a[1] & 0xc0) == 0x80; }

std::array<uint8_t, 16> solicited_node(const uint8_t* a) noexcept
{
    std::array<uint8_t, 16> s{0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, a[13], a[14], a[15]};
    return s;
}

std::array<uint8_t, 6> multicast_mac(const uint8_t* a) noexcept
{
    return {0x33, 0x33, a[12], a[13], a[14], a[15]};
}

std::array<uint8_t, 16> link_local_of(const std::array<uint8_t, 6>& mac) noexcept
{
    return {0xfe,   0x80,   0,    0,    0,      0,      0,     0, static_cast<uint8_t>(mac[0] ^ 0x02),
            mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]};
}

nd_error parse_nd(const uint8_t* ip6, uint32_t len, nd_message& out) noexcept
{
    if (len < 40 || (ip6[0] >> 4) != 6) {
        return nd_error::truncated;
    }
    const uint32_t payload = be16(ip6 + 4);
    if (40 + payload > len) {
        return nd_error::truncated;
    }
    if (ip6[6] != proto_icmpv6 || payload < 4) {
        return nd_error::not_nd;
    }
    const uint8_t* icmp = ip6 + 40;
    if (icmp[0] != icmpv6_neighbor_solicitation && icmp[0] != icmpv6_neighbor_advertisement) {
        return nd_error::not_nd;
    }
    out = nd_message{};
    out.type = icmp[0];
    std::memcpy(out.source.data(), ip6 + 8, 16);
    std::memcpy(out.destination.data(), ip6 + 24, 16);
    // RFC 4861 §7.1.1 / §7.1.2, in the order listed there.
    if (ip6[7] != 255) {
        return nd_error::hop_limit;
    }
    if (payload < 24) {
        return nd_error::truncated;
    }
    if (icmpv6_checksum(ip6, payload) != 0) {
        return nd_error::checksum;
    }
    if (icmp[1] != 0) {
        return nd_error::code;
    }
    if (is_multicast6(out.source.data())) { // RFC 4291 §2.7: never a source address
        return nd_error::source_multicast;
    }
    std::memcpy(out.target.data(), icmp + 8, 16);
    if (is_multicast6(out.target.data())) {
        return nd_error::target_multicast;
    }
    if (out.type == icmpv6_neighbor_advertisement) {
        out.router = (icmp[4] & 0x80) != 0;
        out.solicited = (icmp[4] & 0x40) != 0;
        out.override_flag = (icmp[4] & 0x20) != 0;
        if (out.solicited && is_multicast6(out.destination.data())) {
            return nd_error::solicited_multicast;
        }
    }
    // Options (RFC 4861 §4.6): type, length in units of 8 bytes (0 is invalid), value.
    const uint8_t wanted = out.type == icmpv6_neighbor_solicitation ? 1 : 2; // source / target link-layer
    for (uint32_t off = 24; off < payload;) {
        if (payload - off < 2 || icmp[off + 1] == 0 || off + icmp[off + 1] * 8U > payload) {
            return nd_error::bad_option;
        }
        const uint32_t opt_len = icmp[off + 1] * 8U;
        // An Ethernet link-layer address option is exactly 8 bytes (RFC 2464 §6); others are skipped.
        if (icmp[off] == wanted && opt_len == 8) {
            out.has_link_address = true;
            std::memcpy(out.link_address.data(), icmp + off + 2, 6);
        }
        off += opt_len;
    }
    if (out.type == icmpv6_neighbor_solicitation && is_unspecified6(out.source.data())) {
        const auto sn = solicited_node(out.target.data());
        if (std::memcmp(out.destination.data(), sn.data(), 16) != 0 || out.has_link_address) {
            return nd_error::dad_source;
        }
    }
    return nd_error::none;
}

uint32_t build_neighbor_advertisement(uint8_t* out, const uint8_t* source, const uint8_t* destination,
                                      const uint8_t* target, const std::array<uint8_t, 6>& mac,
                                      bool solicited, bool router) noexcept
{
    ipv6_header(out, 32, proto_icmpv6, 255, source, destination);
    uint8_t* icmp = out + 40;
    std::memset(icmp, 0, 32);
    icmp[0] = icmpv6_neighbor_advertisement;
    icmp[4] = static_cast<uint8_t>((router ? 0x80 : 0) | (solicited ? 0x40 : 0) | 0x20);
    std::memcpy(icmp + 8, target, 16);
    icmp[24] = 2; // Target Link-Layer Address
    icmp[25] = 1;
    std::memcpy(icmp + 26, mac.data(), 6);
    finish_checksum(out, 32);
    return nd_message_bytes;
}

uint32_t build_neighbor_solicitation(uint8_t* out, const uint8_t* source, const uint8_t* target,
                                     const std::array<uint8_t, 6>& mac, bool unicast) noexcept
{
    const auto dst = solicited_node(target);
    ipv6_header(out, 32, proto_icmpv6, 255, source, unicast ? target : dst.data());
    uint8_t* icmp = out + 40;
    std::memset(icmp, 0, 32);
    icmp[0] = icmpv6_neighbor_solicitation;
    std::memcpy(icmp + 8, target, 16);
    icmp[24] = 1; // Source Link-Layer Address
    icmp[25] = 1;
    std::memcpy(icmp + 26, mac.data(), 6);
    finish_checksum(out, 32);
    return nd_message_bytes;
}

bool may_send_icmpv6_error(const uint8_t* ip6, uint32_t len, uint8_t type) noexcept
{
    if (len < 40) {
        return false;
    }
    const uint8_t* src = ip6 + 8;
    if (is_unspecified6(src) || is_multicast6(src)) {
        return false;
    }
    if (is_multicast6(ip6 + 24) && type != icmpv6_packet_too_big) {
        return false;
    }
    // Only the first header is looked at: an ICMPv6 error behind extension headers is not recognised
    // (rare on the wire; the ICMP rate limit bounds what that could cost).
    if (ip6[6] == proto_icmpv6 && len >= 41) {
        const uint8_t t = ip6[40];
        if (t < 128 || t == icmpv6_redirect) {
            return false;
        }
    }
    return true;
}

uint32_t build_icmpv6_error(uint8_t* out, const uint8_t* source, uint8_t type, uint8_t code,
                            uint32_t parameter, const uint8_t* offending, uint32_t offending_len) noexcept
{
    const uint32_t quote = std::min<uint32_t>(offending_len, icmpv6_error_max_bytes - 40 - 8);
    ipv6_header(out, static_cast<uint16_t>(8 + quote), proto_icmpv6, 64, source, offending + 8);
    uint8_t* icmp = out + 40;
    icmp[0] = type;
    icmp[1] = code;
    icmp[2] = 0;
    icmp[3] = 0;
    put32(icmp + 4, parameter);
    std::memcpy(icmp + 8, offending, quote);
    finish_checksum(out, 8 + quote);
    return 40 + 8 + quote;
}

} // namespace espresso::dp
