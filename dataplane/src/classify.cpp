// Classification of packets addressed to the gateway (RFC 3948 §2.2 demultiplexing of UDP 4500) and
// the burst partition helper.
#include <rte_mbuf.h>

#include <cstring>
#include <utility>

#include "espresso/dp/ipsec.h"
#include "classify.h"
#include "packet.h"

namespace espresso::dp {

namespace {

// The options of a Hop-by-Hop or Destination Options header `h` of `len` bytes (RFC 8200 §4.2):
// padding and options whose type says "skip if unrecognized" (action bits 00) need nothing from this
// node; any other option is the kernel's to act on (it knows Router Alert, Jumbo Payload, and sends
// the Parameter Problem the action bits ask for).
ipv6_chain::verdict walk_options(const uint8_t* h, uint32_t len) noexcept
{
    uint32_t i = 2;
    while (i < len) {
        const uint8_t type = h[i];
        if (type == 0) { // Pad1
            ++i;
            continue;
        }
        if (i + 2 > len || i + 2 + h[i + 1] > len) {
            return ipv6_chain::malformed;
        }
        if (type != 1 && (type >> 6) != 0) { // not PadN, not "skip"
            return ipv6_chain::kernel;
        }
        i += 2U + h[i + 1];
    }
    return ipv6_chain::ok;
}

} // namespace

// Hand-written rather than rte_ipv6_get_next_ext (DPDK 22.11): that helper only returns a header's
// length, without bounds against the packet, options, Segments Left or fragment offsets, all of which
// decide here whether a packet is ours to process.
ipv6_chain walk_ipv6_chain(const uint8_t* ip, uint32_t total) noexcept
{
    ipv6_chain c;
    uint8_t next = ip[6];
    uint32_t off = 40;
    for (unsigned n = 0;; ++n) {
        if (!is_ipv6_extension(next)) {
            c.protocol = next;
            c.offset = static_cast<uint16_t>(off);
            return c;
        }
        if (n == ipv6_chain::max_headers) {
            c.result = ipv6_chain::kernel;
            return c;
        }
        if (off + 8 > total) { // every extension header is at least 8 bytes
            c.result = ipv6_chain::malformed;
            return c;
        }
        const uint8_t* h = ip + off;
        if (next == 44) {
            const uint16_t field = load_be16(h + 2);
            if ((field & 0xfff9U) != 0) { // offset or M set (the 2 reserved bits are ignored)
                c.result = ipv6_chain::fragment;
                c.protocol = h[0];
                c.fragment_offset = static_cast<uint16_t>(off);
                c.offset = static_cast<uint16_t>(off + 8);
                return c;
            }
            next = h[0]; // RFC 6946: an atomic fragment is processed as a whole packet
            off += 8;
            continue;
        }
        const uint32_t len = (h[1] + 1U) * 8U;
        if (off + len > total) {
            c.result = ipv6_chain::malformed;
            return c;
        }
        if (next == 0 && off != 40) { // RFC 8200 §4.1: Hop-by-Hop only right after the IPv6 header
            c.result = ipv6_chain::kernel;
            return c;
        }
        if (next == 43) {
            if (h[3] != 0) { // Segments Left: the packet is not at its final destination yet
                c.result = ipv6_chain::kernel;
                return c;
            }
        } else if (const auto v = walk_options(h, len); v != ipv6_chain::ok) {
            c.result = v;
            return c;
        }
        next = h[0];
        off += len;
    }
}

void strip_ipv6_extensions(rte_mbuf* m, const inbound_class& c) noexcept
{
    auto* ip = rte_pktmbuf_mtod(m, uint8_t*);
    if ((ip[0] >> 4) != 6 || c.offset <= 40 || c.offset > rte_pktmbuf_data_len(m)) {
        return;
    }
    const uint16_t gap = static_cast<uint16_t>(c.offset - 40);
    const uint16_t payload = load_be16(ip + 4);
    std::memmove(ip + gap, ip, 40);
    ip = reinterpret_cast<uint8_t*>(rte_pktmbuf_adj(m, gap));
    ip[6] = c.protocol;
    store_be16(ip + 4, static_cast<uint16_t>(payload - gap));
}

inbound_class classify_inbound(const rte_mbuf* m, uint16_t udp_encap_port) noexcept
{
    ip_view ip;
    drop_reason r = parse_ip(rte_pktmbuf_mtod(m, const uint8_t*), rte_pktmbuf_data_len(m), ip);
    if (r != drop_reason::none) {
        return {inbound_kind::malformed, r, 0};
    }
    return classify_inbound(m, ip, udp_encap_port);
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
