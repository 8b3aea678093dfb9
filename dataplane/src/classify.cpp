// Classification of packets addressed to the gateway (RFC 3948 §2.2 demultiplexing of UDP 4500) and
// the burst partition helper.
#include <rte_mbuf.h>

#include <utility>

#include "espresso/dp/ipsec.h"
#include "packet.h"

namespace espresso::dp {

inbound_class classify_inbound(const rte_mbuf* m, uint16_t udp_encap_port) noexcept
{
    const auto* p = rte_pktmbuf_mtod(m, const uint8_t*);
    const uint32_t avail = rte_pktmbuf_data_len(m);
    ip_view ip;
    drop_reason r = parse_ip(p, avail, ip);
    if (r != drop_reason::none) {
        return {inbound_kind::malformed, r, 0};
    }
    const uint32_t off = ip.header;
    if (ip.protocol == proto_esp || ip.protocol == proto_ah) {
        if (ip.fragment) {
            return {inbound_kind::other, drop_reason::none, 0}; // reassemble first
        }
        if (ip.total < off + 8) {
            return {inbound_kind::malformed, drop_reason::truncated, 0};
        }
        // AH: next header, length, reserved, then the SPI (RFC 4302 §2).
        uint32_t spi = ip.protocol == proto_esp ? load_be32(p + off) : load_be32(p + off + 4);
        return {ip.protocol == proto_esp ? inbound_kind::esp : inbound_kind::ah, drop_reason::none, spi};
    }
    if (ip.protocol != proto_udp || ip.fragment) {
        return {inbound_kind::other, drop_reason::none, 0};
    }
    if (ip.total < off + 8) {
        return {inbound_kind::malformed, drop_reason::bad_udp, 0};
    }
    if (load_be16(p + off + 2) != udp_encap_port) {
        return {inbound_kind::other, drop_reason::none, 0};
    }
    const uint32_t udp_len = load_be16(p + off + 4);
    if (udp_len < 8 || udp_len != ip.total - off) {
        return {inbound_kind::malformed, drop_reason::bad_udp, 0};
    }
    const uint32_t body = udp_len - 8;
    // RFC 3948 §2.2: a single 0xFF byte is a NAT-keepalive; a zero first word is the non-ESP marker
    // (IKE). Both belong to the control plane. Anything shorter than an SPI cannot be ESP.
    if (body == 1 && p[off + 8] == 0xff) {
        return {inbound_kind::control, drop_reason::none, 0};
    }
    if (body < 4) {
        return {inbound_kind::malformed, drop_reason::bad_udp, 0};
    }
    uint32_t spi = load_be32(p + off + 8);
    if (spi == 0) {
        return {inbound_kind::control, drop_reason::none, 0};
    }
    if (body < 8) {
        return {inbound_kind::malformed, drop_reason::truncated, 0};
    }
    return {inbound_kind::esp, drop_reason::none, spi};
}

uint16_t partition_by_verdict(rte_mbuf** pkts, drop_reason* reasons, uint16_t n) noexcept
{
    // Good packets keep their order (flows must not be reordered); bad ones may be shuffled.
    uint16_t good = 0;
    for (uint16_t i = 0; i < n; ++i) {
        if (reasons[i] == drop_reason::none) {
            if (i != good) {
                std::swap(pkts[good], pkts[i]);
                std::swap(reasons[good], reasons[i]);
            }
            ++good;
        }
    }
    return good;
}

} // namespace espresso::dp
