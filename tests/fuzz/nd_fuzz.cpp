// libFuzzer target for dataplane/src/icmpv6.cpp: Neighbor Discovery messages arrive from anyone on the
// link, so parse_nd must never read outside the bytes it was given, and what it accepts must satisfy
// RFC 4861 §7.1 (checked again here, independently of the parser's own code path). The ICMPv6 error
// builder quotes attacker-chosen packets, so it runs on every input too.
//
// Input: byte 0 bit 0 = 1: the rest is used as it is (a raw IPv6 packet); 0: the IPv6 payload length,
// hop limit 255 and the ICMPv6 checksum are fixed up first, so the fuzzer gets past those checks and
// explores the options and the DAD rules.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "icmpv6.h"

using namespace espresso::dp;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    const bool raw = (data[0] & 1) != 0;
    // An exact-size heap copy: AddressSanitizer catches any read past the end.
    std::vector<uint8_t> p(data + 1, data + size);
    if (!raw && p.size() >= 44 && p.size() - 40 <= 0xffff) {
        p[0] = static_cast<uint8_t>(0x60 | (p[0] & 0x0f));
        const size_t payload = p.size() - 40;
        p[4] = static_cast<uint8_t>(payload >> 8);
        p[5] = static_cast<uint8_t>(payload);
        p[6] = proto_icmpv6;
        p[7] = 255;
        p[42] = 0;
        p[43] = 0;
        const uint16_t c = icmpv6_checksum(p.data(), static_cast<uint32_t>(payload));
        p[42] = static_cast<uint8_t>(c >> 8);
        p[43] = static_cast<uint8_t>(c);
    }
    auto* copy = new uint8_t[p.size() == 0 ? 1 : p.size()];
    if (!p.empty()) { // an empty vector's data() may be null, which memcpy must not get
        std::memcpy(copy, p.data(), p.size());
    }
    nd_message m;
    const nd_error e = parse_nd(copy, static_cast<uint32_t>(p.size()), m);
    if (e == nd_error::none) {
        // What was accepted: an IPv6 packet with ICMPv6 NS/NA, hop limit 255, a payload that fits,
        // at least 24 bytes, code 0, a non-multicast target, a verifying checksum.
        const uint32_t payload = static_cast<uint32_t>(copy[4]) << 8 | copy[5];
        if (p.size() < 64 || (copy[0] >> 4) != 6 || copy[6] != proto_icmpv6 || copy[7] != 255 ||
            40 + payload > p.size() || payload < 24 || copy[41] != 0 || copy[48] == 0xff ||
            (copy[40] != icmpv6_neighbor_solicitation && copy[40] != icmpv6_neighbor_advertisement) ||
            icmpv6_checksum(copy, payload) != 0 || std::memcmp(m.target.data(), copy + 48, 16) != 0) {
            std::abort();
        }
        if (m.type == icmpv6_neighbor_solicitation && is_unspecified6(m.source.data()) &&
            m.has_link_address) {
            std::abort(); // RFC 4861 §7.1.1: DAD probes carry no source link-layer address
        }
        if (m.type == icmpv6_neighbor_advertisement && m.solicited && is_multicast6(m.destination.data())) {
            std::abort(); // §7.1.2
        }
        // An answer built from what was parsed parses again.
        uint8_t na[nd_message_bytes];
        build_neighbor_advertisement(na, m.target.data(), m.source.data(), m.target.data(), m.link_address,
                                     true, true);
        nd_message again;
        if (!is_multicast6(m.source.data()) && parse_nd(na, nd_message_bytes, again) != nd_error::none) {
            std::abort();
        }
    }
    if (p.size() >= 40 &&
        may_send_icmpv6_error(copy, static_cast<uint32_t>(p.size()), icmpv6_packet_too_big)) {
        std::vector<uint8_t> out(icmpv6_error_max_bytes);
        const uint32_t n = build_icmpv6_error(out.data(), copy + 24, icmpv6_packet_too_big, 0, 1280, copy,
                                              static_cast<uint32_t>(p.size()));
        if (n > icmpv6_error_max_bytes || n < 48) {
            std::abort();
        }
    }
    delete[] copy;
    return 0;
}
