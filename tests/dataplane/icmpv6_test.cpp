// Tests for dataplane/src/icmpv6.cpp: Neighbor Discovery validation (RFC 4861 §7.1) and the messages
// the gateway builds, checked byte for byte against packets scapy built (an implementation nobody here
// wrote: the hex strings below are scapy 2.5's output, see each comment).
#include "icmpv6.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace espresso::dp {
namespace {

std::vector<uint8_t> hex(const std::string& text)
{
    std::vector<uint8_t> out;
    for (size_t i = 0; i + 1 < text.size(); i += 2) {
        out.push_back(static_cast<uint8_t>(std::stoul(text.substr(i, 2), nullptr, 16)));
    }
    return out;
}

std::array<uint8_t, 16> addr(const std::string& h)
{
    std::array<uint8_t, 16> a{};
    auto v = hex(h);
    std::memcpy(a.data(), v.data(), 16);
    return a;
}

const auto ours = addr("20010db8000100000000000000000001"); // 2001:db8:1::1
const auto peer = addr("20010db8000100000000000000000002"); // 2001:db8:1::2
const std::array<uint8_t, 6> our_mac{0x02, 0, 0, 0, 0, 0x01};
const std::array<uint8_t, 6> peer_mac{0x02, 0, 0, 0, 0, 0x02};

// IPv6(src='2001:db8:1::2', dst='ff02::1:ff00:1', hlim=255)/ICMPv6ND_NS(tgt='2001:db8:1::1')
//   /ICMPv6NDOptSrcLLAddr(lladdr='02:00:00:00:00:02')
const std::string scapy_ns =
    "6000000000203aff20010db8000100000000000000000002ff0200000000000000000001ff000001"
    "87001c250000000020010db80001000000000000000000010101020000000002";
// IPv6(src='2001:db8:1::2', dst='2001:db8:1::1', hlim=255)/ICMPv6ND_NA(tgt='2001:db8:1::2', S=1, O=1)
//   /ICMPv6NDOptDstLLAddr(lladdr='02:00:00:00:00:02')
const std::string scapy_na =
    "6000000000203aff20010db800010000000000000000000220010db8000100000000000000000001"
    "88008a6e6000000020010db80001000000000000000000020201020000000002";
// IPv6(src='::', dst='ff02::1:ff00:1', hlim=255)/ICMPv6ND_NS(tgt='2001:db8:1::1')
const std::string scapy_dad =
    "6000000000183aff00000000000000000000000000000000ff0200000000000000000001ff000001"
    "87004cec0000000020010db8000100000000000000000001";

nd_error parse(std::vector<uint8_t> p, nd_message& m)
{
    return parse_nd(p.data(), static_cast<uint32_t>(p.size()), m);
}

TEST(icmpv6, parses_a_neighbor_solicitation)
{
    nd_message m;
    ASSERT_EQ(parse(hex(scapy_ns), m), nd_error::none);
    EXPECT_EQ(m.type, icmpv6_neighbor_solicitation);
    EXPECT_EQ(m.source, peer);
    EXPECT_EQ(m.target, ours);
    EXPECT_TRUE(m.has_link_address);
    EXPECT_EQ(m.link_address, peer_mac);
}

TEST(icmpv6, parses_a_neighbor_advertisement)
{
    nd_message m;
    ASSERT_EQ(parse(hex(scapy_na), m), nd_error::none);
    EXPECT_EQ(m.type, icmpv6_neighbor_advertisement);
    EXPECT_EQ(m.target, peer);
    EXPECT_TRUE(m.solicited);
    EXPECT_TRUE(m.override_flag);
    EXPECT_FALSE(m.router);
    EXPECT_TRUE(m.has_link_address);
    EXPECT_EQ(m.link_address, peer_mac);
}

TEST(icmpv6, parses_a_dad_probe)
{
    nd_message m;
    ASSERT_EQ(parse(hex(scapy_dad), m), nd_error::none);
    EXPECT_FALSE(m.has_link_address);
    EXPECT_EQ(m.target, ours);
}

// RFC 4861 §7.1.1 and §7.1.2: each rule refuses the message.
TEST(icmpv6, refuses_what_rfc4861_says_to_discard)
{
    nd_message m;
    auto p = hex(scapy_ns);
    p[7] = 254; // hop limit: off-link sender (checksum unaffected: not in the pseudo-header)
    EXPECT_EQ(parse(p, m), nd_error::hop_limit);

    p = hex(scapy_ns);
    p[40 + 2] ^= 0x01; // checksum
    EXPECT_EQ(parse(p, m), nd_error::checksum);

    p = hex(scapy_ns);
    p[40 + 1] = 1; // code 1 (checksum fixed below)
    p[42] = 0;
    p[43] = 0;
    {
        const uint16_t c = icmpv6_checksum(p.data(), 32);
        p[42] = static_cast<uint8_t>(c >> 8);
        p[43] = static_cast<uint8_t>(c);
    }
    EXPECT_EQ(parse(p, m), nd_error::code);

    auto fix = [](std::vector<uint8_t>& q) {
        q[42] = 0;
        q[43] = 0;
        const uint16_t c = icmpv6_checksum(q.data(), static_cast<uint32_t>(q.size() - 40));
        q[42] = static_cast<uint8_t>(c >> 8);
        q[43] = static_cast<uint8_t>(c);
    };
    p = hex(scapy_ns);
    p[40 + 8] = 0xff; // target ff01:db8:...: multicast
    fix(p);
    EXPECT_EQ(parse(p, m), nd_error::target_multicast);

    p = hex(scapy_ns);
    p[8] = 0xff; // source ff01:db8:...: multicast (it would be learned as a neighbor)
    fix(p);
    EXPECT_EQ(parse(p, m), nd_error::source_multicast);

    p = hex(scapy_ns);
    p[40 + 25] = 0; // option length 0
    fix(p);
    EXPECT_EQ(parse(p, m), nd_error::bad_option);

    p = hex(scapy_ns);
    p[40 + 25] = 2; // option runs past the message
    fix(p);
    EXPECT_EQ(parse(p, m), nd_error::bad_option);

    // DAD with a source link-layer address option.
    p = hex(scapy_ns);
    std::memset(p.data() + 8, 0, 16);
    fix(p);
    EXPECT_EQ(parse(p, m), nd_error::dad_source);

    // DAD to a unicast destination.
    p = hex(scapy_dad);
    std::memcpy(p.data() + 24, ours.data(), 16);
    fix(p);
    EXPECT_EQ(parse(p, m), nd_error::dad_source);

    // Solicited NA to a multicast destination.
    p = hex(scapy_na);
    p[24] = 0xff;
    p[25] = 0x02;
    fix(p);
    EXPECT_EQ(parse(p, m), nd_error::solicited_multicast);

    // Not ND at all, and truncations at every length.
    p = hex(scapy_ns);
    p[40] = icmpv6_echo_request;
    EXPECT_EQ(parse(p, m), nd_error::not_nd);
    const auto full = hex(scapy_ns);
    for (size_t len = 0; len < full.size(); ++len) {
        std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<long>(len));
        EXPECT_NE(parse(cut, m), nd_error::none) << len;
    }
    // A payload length that claims less than the NS minimum of 24 bytes.
    p = hex(scapy_dad);
    p[5] = 20;
    EXPECT_NE(parse(p, m), nd_error::none);
}

TEST(icmpv6, builds_the_advertisement_scapy_builds)
{
    // IPv6(src='2001:db8:1::1', dst='2001:db8:1::2', hlim=255)/ICMPv6ND_NA(tgt='2001:db8:1::1', R=1, S=1,
    //   O=1)/ICMPv6NDOptDstLLAddr(lladdr='02:00:00:00:00:01')
    const auto want = hex("6000000000203aff20010db800010000000000000000000120010db8000100000000000000000002"
                          "88000a70e000000020010db80001000000000000000000010201020000000001");
    uint8_t out[nd_message_bytes];
    ASSERT_EQ(build_neighbor_advertisement(out, ours.data(), peer.data(), ours.data(), our_mac, true, true),
              nd_message_bytes);
    EXPECT_EQ(std::vector<uint8_t>(out, out + nd_message_bytes), want);
    nd_message m;
    EXPECT_EQ(parse_nd(out, nd_message_bytes, m), nd_error::none);
}

TEST(icmpv6, builds_the_solicitation_scapy_builds)
{
    // IPv6(src='2001:db8:1::1', dst='ff02::1:ff00:fe', hlim=255)/ICMPv6ND_NS(tgt='2001:db8:1::fe')
    //   /ICMPv6NDOptSrcLLAddr(lladdr='02:00:00:00:00:01')
    const auto want = hex("6000000000203aff20010db8000100000000000000000001ff0200000000000000000001ff0000fe"
                          "87001a2d0000000020010db80001000000000000000000fe0101020000000001");
    const auto target = addr("20010db80001000000000000000000fe");
    uint8_t out[nd_message_bytes];
    ASSERT_EQ(build_neighbor_solicitation(out, ours.data(), target.data(), our_mac), nd_message_bytes);
    EXPECT_EQ(std::vector<uint8_t>(out, out + nd_message_bytes), want);
}

TEST(icmpv6, addresses)
{
    EXPECT_EQ(solicited_node(ours.data()), addr("ff0200000000000000000001ff000001"));
    const auto mm = multicast_mac(addr("ff0200000000000000000001ff000001").data());
    EXPECT_EQ(mm, (std::array<uint8_t, 6>{0x33, 0x33, 0xff, 0x00, 0x00, 0x01}));
    // RFC 4291 appendix A: 02:00:00:00:00:01 -> fe80::ff:fe00:1 (the universal/local bit flipped).
    EXPECT_EQ(link_local_of(our_mac), addr("fe80000000000000000000fffe000001"));
    EXPECT_TRUE(is_link_local6(addr("febf0000000000000000000000000001").data()));
    EXPECT_FALSE(is_link_local6(addr("fec00000000000000000000000000001").data()));
}

TEST(icmpv6, packet_too_big_matches_scapy)
{
    // orig = IPv6(src='2001:db8:2::10', dst='2001:db8:3::10', hlim=63)/UDP(sport=1234,
    // dport=5678)/Raw(b'x'*1400) IPv6(src='2001:db8:1::1', dst='2001:db8:2::10',
    // hlim=64)/ICMPv6PacketTooBig(mtu=1400)/Raw(bytes(orig)[:1232])
    auto orig = hex("600000000580113f20010db800020000000000000000001020010db80003000000000000000000100"
                    "4d2162e058014ee");
    orig.resize(40 + 8 + 1400, 'x');
    std::vector<uint8_t> out(icmpv6_error_max_bytes);
    ASSERT_TRUE(
        may_send_icmpv6_error(orig.data(), static_cast<uint32_t>(orig.size()), icmpv6_packet_too_big));
    const uint32_t len = build_icmpv6_error(out.data(), ours.data(), icmpv6_packet_too_big, 0, 1400,
                                            orig.data(), static_cast<uint32_t>(orig.size()));
    ASSERT_EQ(len, 1280U); // RFC 4443 §2.4 (c): as much as fits in the minimum MTU
    const auto head = hex("6000000004d83a4020010db800010000000000000000000120010db800020000000000000000001002"
                          "00f99300000578");
    EXPECT_EQ(std::vector<uint8_t>(out.begin(), out.begin() + static_cast<long>(head.size())), head);
    EXPECT_EQ(std::memcmp(out.data() + 48, orig.data(), 1232), 0);
}

TEST(icmpv6, no_error_about_errors_or_to_multicast_sources)
{
    auto orig = hex("600000000580113f20010db800020000000000000000001020010db80003000000000000000000100"
                    "4d2162e058014ee");
    EXPECT_TRUE(may_send_icmpv6_error(orig.data(), 48, icmpv6_time_exceeded));
    auto p = orig;
    p[6] = proto_icmpv6;
    p[40] = icmpv6_packet_too_big; // an error
    EXPECT_FALSE(may_send_icmpv6_error(p.data(), 48, icmpv6_time_exceeded));
    p[40] = icmpv6_echo_request; // a query: fine
    EXPECT_TRUE(may_send_icmpv6_error(p.data(), 48, icmpv6_time_exceeded));
    p = orig;
    p[8] = 0xff; // multicast source
    EXPECT_FALSE(may_send_icmpv6_error(p.data(), 48, icmpv6_packet_too_big));
    p = orig;
    p[24] = 0xff; // multicast destination: only Packet Too Big (RFC 4443 §2.4 (e.3))
    EXPECT_FALSE(may_send_icmpv6_error(p.data(), 48, icmpv6_time_exceeded));
    EXPECT_TRUE(may_send_icmpv6_error(p.data(), 48, icmpv6_packet_too_big));
    p = orig;
    std::memset(p.data() + 8, 0, 16); // unspecified source
    EXPECT_FALSE(may_send_icmpv6_error(p.data(), 48, icmpv6_packet_too_big));
}

} // namespace
} // namespace espresso::dp
