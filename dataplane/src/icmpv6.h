// ICMPv6 for the gateway's own IPv6 addresses: Neighbor Discovery (RFC 4861) parsing, validation and
// message construction, and the ICMPv6 errors a router sends (RFC 4443: Packet Too Big, Time
// Exceeded). Written by hand because DPDK has no NDP: these are small fixed-layout messages, and the
// validation rules of RFC 4861 §7.1 are the part that matters.
//
// Every function works on plain memory; the parse function bounds-checks everything it reads against
// `len`. Builders write into a buffer the caller sized with the *_bytes constants. No allocation, no
// exceptions: callable from any thread.
#pragma once

#include <array>
#include <cstdint>

namespace espresso::dp {

inline constexpr uint8_t proto_icmpv6 = 58;

// ICMPv6 message types (RFC 4443 §2.1, RFC 4861 §4).
enum icmpv6_type : uint8_t {
    icmpv6_dest_unreachable = 1,
    icmpv6_packet_too_big = 2,
    icmpv6_time_exceeded = 3,
    icmpv6_parameter_problem = 4,
    icmpv6_echo_request = 128,
    icmpv6_echo_reply = 129,
    icmpv6_router_solicitation = 133,
    icmpv6_router_advertisement = 134,
    icmpv6_neighbor_solicitation = 135,
    icmpv6_neighbor_advertisement = 136,
    icmpv6_redirect = 137,
};

// Why a Neighbor Discovery message was refused (RFC 4861 §7.1.1, §7.1.2).
enum class nd_error : uint8_t {
    none,
    truncated,        // shorter than its IPv6 header, payload length or the NS/NA minimum (24 bytes)
    not_nd,           // not ICMPv6 directly after the IPv6 header, or not NS/NA
    hop_limit,        // IP hop limit is not 255: the message may come from off-link
    checksum,         // ICMPv6 checksum does not verify
    code,             // ICMP code is not 0
    source_multicast, // IPv6 source address is multicast (a learned entry for it would be nonsense)
    target_multicast, // target address is multicast
    bad_option,       // an option has length 0 or runs past the message
    dad_source,       // NS from :: (DAD) not to a solicited-node address, or with a source link-layer option
    solicited_multicast, // NA to a multicast destination with the Solicited flag set
};

struct nd_message {
    uint8_t type = 0; // icmpv6_neighbor_solicitation or icmpv6_neighbor_advertisement
    std::array<uint8_t, 16> source{};
    std::array<uint8_t, 16> destination{};
    std::array<uint8_t, 16> target{};
    bool router = false, solicited = false, override_flag = false; // NA flags
    bool has_link_address = false; // NS: Source Link-Layer Address option; NA: Target Link-Layer Address
    std::array<uint8_t, 6> link_address{};
};

// Parses and validates the NS or NA at `ip6` (an IPv6 packet, `len` bytes available).
nd_error parse_nd(const uint8_t* ip6, uint32_t len, nd_message& out) noexcept;

// ICMPv6 checksum (RFC 4443 §2.3, pseudo-header of RFC 8200 §8.1) of the ICMPv6 message that follows
// the 40-byte IPv6 header at `ip6`; `icmp_len` bytes. The result is what belongs in the checksum
// field when that field holds 0; a received message verifies when this returns 0 with the field as
// received.
uint16_t icmpv6_checksum(const uint8_t* ip6, uint32_t icmp_len) noexcept;

bool is_multicast6(const uint8_t* a) noexcept;
bool is_unspecified6(const uint8_t* a) noexcept;
bool is_link_local6(const uint8_t* a) noexcept; // fe80::/10
// ff02::1:ffXX:XXXX for the low 24 bits of `a` (RFC 4291 §2.7.1).
std::array<uint8_t, 16> solicited_node(const uint8_t* a) noexcept;
// 33:33 + the low 32 bits of a multicast IPv6 address (RFC 2464 §7).
std::array<uint8_t, 6> multicast_mac(const uint8_t* a) noexcept;
// fe80::/64 with the modified EUI-64 interface identifier of `mac` (RFC 4291 §2.5.1, appendix A):
// what Linux derives for the TAP, which carries the port's MAC.
std::array<uint8_t, 16> link_local_of(const std::array<uint8_t, 6>& mac) noexcept;

inline constexpr uint32_t nd_message_bytes = 40 + 24 + 8; // IPv6 + NS/NA + one link-layer option

// A Neighbor Advertisement for `target` (ours) with the Target Link-Layer Address option, from
// `source` to `destination`; Override set (RFC 4861 §7.2.4: not an anycast or proxy address).
// Returns the bytes written (nd_message_bytes).
uint32_t build_neighbor_advertisement(uint8_t* out, const uint8_t* source, const uint8_t* destination,
                                      const uint8_t* target, const std::array<uint8_t, 6>& mac,
                                      bool solicited, bool router) noexcept;
// A multicast Neighbor Solicitation for `target` from `source` to target's solicited-node address,
// with the Source Link-Layer Address option (RFC 4861 §7.2.2). Returns nd_message_bytes.
// `unicast`: a NUD probe (RFC 4861 §7.3.3) sent to the target itself instead of its solicited-node
// multicast group.
uint32_t build_neighbor_solicitation(uint8_t* out, const uint8_t* source, const uint8_t* target,
                                     const std::array<uint8_t, 6>& mac, bool unicast = false) noexcept;

// RFC 4443 §2.4 (e): may an error be sent about this packet? Not about an ICMPv6 error or redirect,
// not to an unspecified or multicast source, and (except Packet Too Big) not about a packet to a
// multicast destination. `len` bytes of the offending IPv6 packet at `ip6`.
bool may_send_icmpv6_error(const uint8_t* ip6, uint32_t len, uint8_t type) noexcept;

inline constexpr uint32_t icmpv6_error_max_bytes = 1280; // RFC 4443 §2.4 (c): minimum IPv6 MTU

// An ICMPv6 error (`type`, `code`, 32-bit `parameter`: the MTU for Packet Too Big) from `source`
// to the offending packet's source, quoting as much of it as fits in 1280 bytes. `out` must hold
// icmpv6_error_max_bytes. Returns the bytes written.
uint32_t build_icmpv6_error(uint8_t* out, const uint8_t* source, uint8_t type, uint8_t code,
                            uint32_t parameter, const uint8_t* offending, uint32_t offending_len) noexcept;

} // namespace espresso::dp
