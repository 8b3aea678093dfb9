// The packet engine: burst in, burst out, a verdict per packet.
//
// Conventions for every function here (the DPDK lib/ipsec convention):
//  - mbufs are single-segment and their data starts at an IP header (the caller strips/adds L2);
//  - the return value `k` is the number of good packets, which are moved to pkts[0..k); the bad ones
//    are moved to pkts[k..n) with their reason in reasons[k..n); the caller frees or counts them
//    (they are already counted in the SA's drop counters);
//  - no allocation, no locks, no exceptions; one IPsec-MB burst per call.
// Thread safety: see sa.h (outbound SAs: any workers; inbound SAs: one worker at a time); each
// worker passes its own crypto_core.
#pragma once

#include <rte_mbuf.h>

#include <cstdint>

#include "espresso/dp/counters.h"
#include "espresso/dp/crypto_core.h"
#include "espresso/dp/sa.h"

namespace espresso::dp {

inline constexpr uint16_t max_burst = 128;

// Outbound ESP or AH, tunnel or transport. Input: the plaintext IP packet. Output: the protected
// packet starting at its (outer) IP header, with UDP encapsulation when the SA has it.
uint16_t outbound_process(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n,
                          drop_reason* reasons) noexcept;

// Outbound for packets of several SAs at once (a burst of many tunnels' traffic): packets
// pkts[0..n) of each group are processed with its `sa` as outbound_process would, but the ESP packets
// of all groups share IPsec-MB bursts (up to max_burst jobs each) instead of one burst per SA. On
// return each group's packets are partitioned like outbound_process's (the `good` first), their
// verdicts in `reasons`. The pending_* fields are the engine's scratch space. No default member
// initializers: the worker declares max_vector of these per pass and fills only the groups it has
// (zeroing the whole array cost 2-3 cycles per packet); the engine sets `good` and the pending_*.
struct outbound_group {
    sa_runtime* sa;
    rte_mbuf** pkts;
    drop_reason* reasons;
    uint16_t n;
    uint16_t good;
    uint64_t pending_good;
    uint64_t pending_bytes;
};
void outbound_process_groups(crypto_core& core, outbound_group* groups, unsigned count) noexcept;

// Inbound ESP or AH for packets already matched to `sa` (see classify_inbound). Output, tunnel
// mode: the inner IP packet; transport mode: the IP packet with the IPsec header removed.
uint16_t inbound_process(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n,
                         drop_reason* reasons) noexcept;

// Inbound for packets of several SAs at once (traffic of many tunnels puts a different SA on nearly
// every packet of a burst): packets pkts[0..n) of each group are processed with its `sa` as
// inbound_process would, but the ESP packets of all groups share one pass through the crypto (up to
// max_burst packets each) instead of one engine call per SA. On return each group's packets are
// partitioned like inbound_process's (the `good` first), their verdicts in `reasons`. The pending_*
// fields are the engine's scratch space; as for outbound_group, the engine sets them and `good`.
struct inbound_group {
    sa_runtime* sa;
    rte_mbuf** pkts;
    drop_reason* reasons;
    uint16_t n;
    uint16_t good;
    uint64_t pending_good;
    uint64_t pending_bytes;
    uint64_t pending_verified;
};
void inbound_process_groups(crypto_core& core, inbound_group* groups, unsigned count) noexcept;

// What an IP packet addressed to the gateway is, before any SA lookup.
enum class inbound_kind : uint8_t {
    esp,             // ESP (protocol 50) or ESP-in-UDP with a non-zero SPI: look up `spi`
    ah,              // AH (protocol 51): look up `spi`
    control,         // UDP 4500 with the non-ESP marker (IKE) or a NAT-keepalive: to control plane
    other,           // not IPsec: not for this engine
    malformed,       // `reason` says why; drop
    fragment,        // a fragment of an ESP, AH or UDP datagram: reassemble, then classify again
};

struct inbound_class {
    inbound_kind kind;
    drop_reason reason;   // for malformed
    uint32_t spi;         // host order, for esp/ah
    uint16_t offset = 0;  // esp/ah: offset of the ESP/UDP/AH header from the IP header; IPv6 packets
                          // whose extension headers put it past 40 go through strip_ipv6_extensions
    uint8_t protocol = 0; // esp/ah: the IP protocol at `offset` (50, 51 or 17)
};

// `udp_encap_port`: the local UDP port on which ESP-in-UDP is accepted (RFC 3948: 4500).
// IPv6 extension headers in front of ESP (RFC 8200 §4: hop-by-hop, destination options, routing with
// segments left 0, atomic fragment) are walked, bounded and checked; AH behind extension headers is
// `other` (its ICV covers them, RFC 4302 §3.3.3.1, and the engine does not).
inbound_class classify_inbound(const rte_mbuf* m, uint16_t udp_encap_port = 4500) noexcept;
// (dataplane/src/classify.h has an inline overload for a packet whose IP header is already parsed.)

// Removes the IPv6 extension headers between the fixed header and `c.offset` (a classify_inbound
// result for an IPv6 packet with c.offset > 40): the fixed header moves up over them and names
// `c.protocol` as its next header, so the engine sees ESP (or UDP) right after it. The walked headers
// only matter to this node, which has acted on them (nothing to do for skippable options).
void strip_ipv6_extensions(rte_mbuf* m, const inbound_class& c) noexcept;

} // namespace espresso::dp
