// The SPD selectors of a packet (RFC 4301 §4.4.1.1): the 5-tuple in rte_acl's key layout, read from
// an IP packet whose header parse_ip() already checked. Shared by the forwarding path (worker.cpp)
// and the gateway's own traffic (gateway.cpp, the TAP exception path), so both match policies alike.
#pragma once

#include <cstdint>
#include <cstring>

#include "packet.h"
#include "spd.h"

namespace espresso::dp {

// IPv4: protocol, addresses, and the ports of a TCP/UDP first fragment (a non-first fragment has no
// ports: OPAQUE, here 0). `avail` = bytes of the packet in the frame.
inline void spd_key_of(const uint8_t* ip, uint32_t avail, spd_key& k) noexcept
{
    k = {};
    k.protocol = ip[9];
    std::memcpy(&k.source, ip + 12, 4);
    std::memcpy(&k.destination, ip + 16, 4);
    const uint32_t ihl = (ip[0] & 0x0fU) * 4;
    const bool first_fragment = (load_be16(ip + 6) & 0x1fff) == 0;
    if ((k.protocol == proto_tcp || k.protocol == proto_udp) && first_fragment && avail >= ihl + 4) {
        std::memcpy(&k.source_port, ip + ihl, 2);
        std::memcpy(&k.destination_port, ip + ihl + 2, 2);
    }
}

// IPv6: the upper-layer protocol and ports after the extension headers a selector must look through
// (RFC 4301 §4.4.1.1: the "next layer protocol" is after them). A non-first fragment has no ports
// (OPAQUE, here 0). At most 8 headers are walked; what does not fit the frame leaves the protocol at
// the last header seen. Returns the offset of the upper-layer header (the ICMPv6 type for ICMPv6), or
// 0 when it is not inside the first `avail` bytes, the walk stopped at an extension header, or the
// packet is a non-first fragment (`non_first_fragment`, when given, tells which).
inline uint32_t spd6_key_of(const uint8_t* ip, uint32_t avail, spd6_key& k,
                            bool* non_first_fragment = nullptr) noexcept
{
    k = {};
    std::memcpy(k.source, ip + 8, 16);
    std::memcpy(k.destination, ip + 24, 16);
    uint8_t next = ip[6];
    uint32_t off = 40;
    bool first_fragment = true;
    for (int hops = 0; hops < 8; ++hops) {
        if (next != 0 && next != 43 && next != 60 && next != 44) {
            break; // hop-by-hop, routing, destination options, fragment
        }
        if (off + 8 > avail) {
            break;
        }
        const uint8_t* h = ip + off;
        if (next == 44) {
            first_fragment = first_fragment && (load_be16(h + 2) & 0xfff8) == 0;
            off += 8;
        } else {
            off += (h[1] + 1U) * 8;
        }
        next = h[0];
    }
    k.protocol = next;
    if ((next == proto_tcp || next == proto_udp) && first_fragment && off + 4 <= avail) {
        std::memcpy(&k.source_port, ip + off, 2);
        std::memcpy(&k.destination_port, ip + off + 2, 2);
    }
    if (non_first_fragment != nullptr) {
        *non_first_fragment = !first_fragment;
    }
    const bool extension = next == 0 || next == 43 || next == 60 || next == 44; // the walk gave up
    return first_fragment && !extension && off < avail ? off : 0;
}

} // namespace espresso::dp
