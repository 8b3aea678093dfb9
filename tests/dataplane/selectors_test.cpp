// Tests for dataplane/src/selectors.h: the SPD selectors (RFC 4301 §4.4.1.1) the forwarding path and the
// gateway's own traffic read from a packet. The packets are scapy 2.5's bytes (an implementation nobody
// here wrote; each comment gives the scapy expression).
#include "selectors.h"

#include "packet.h"

#include <gtest/gtest.h>

#include <random>

#include <rte_byteorder.h>

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

uint16_t port(uint16_t be) { return rte_be_to_cpu_16(be); }

TEST(Selectors, Ipv4UdpHasItsPorts)
{
    // IP(src="198.51.100.1", dst="203.0.113.1")/UDP(sport=500, dport=4500)/Raw(b"ike!")
    const auto p = hex("450000200001000040111496c6336401cb00710101f41194000cb78a696b6521");
    spd_key k;
    spd_key_of(p.data(), static_cast<uint32_t>(p.size()), k);
    EXPECT_EQ(k.protocol, 17);
    EXPECT_EQ(rte_be_to_cpu_32(k.source), 0xc6336401U);
    EXPECT_EQ(rte_be_to_cpu_32(k.destination), 0xcb007101U);
    EXPECT_EQ(port(k.source_port), 500);
    EXPECT_EQ(port(k.destination_port), 4500);
}

TEST(Selectors, Ipv4NonFirstFragmentHasNoPorts)
{
    // IP(src="198.51.100.1", dst="203.0.113.1", frag=185, proto=17)/Raw(b"\x01\xf4\x11\x94tail"): the
    // payload looks like ports but is the middle of a datagram (OPAQUE).
    const auto p = hex("4500001c000100b9401113e1c6336401cb00710101f411947461696c");
    spd_key k;
    spd_key_of(p.data(), static_cast<uint32_t>(p.size()), k);
    EXPECT_EQ(k.protocol, 17);
    EXPECT_EQ(k.source_port, 0);
    EXPECT_EQ(k.destination_port, 0);
}

TEST(Selectors, Ipv6WalksHopByHopAndFirstFragment)
{
    // IPv6(...)/IPv6ExtHdrHopByHop()/IPv6ExtHdrFragment(offset=0, m=1, id=7)/UDP(sport=500, dport=500)/Raw(b"x"*8)
    const auto p = hex("600000000020004020010db80ff10000000000000000000120010db80ff2000000000000000000012c0001040000"
                       "0000110000010000000701f401f400109ead7878787878787878");
    spd6_key k;
    bool non_first = true;
    const uint32_t upper = spd6_key_of(p.data(), static_cast<uint32_t>(p.size()), k, &non_first);
    EXPECT_EQ(upper, 56U);
    EXPECT_FALSE(non_first);
    EXPECT_EQ(k.protocol, 17);
    EXPECT_EQ(port(k.source_port), 500);
    EXPECT_EQ(port(k.destination_port), 500);
    EXPECT_EQ(k.source[15], 1);
    EXPECT_EQ(k.destination[5], 0xf2); // 2001:db8:ff2::1
}

TEST(Selectors, Ipv6NonFirstFragmentHasNoPortsAndNoUpperHeader)
{
    // IPv6(...)/IPv6ExtHdrFragment(offset=100, m=0, id=7, nh=17)/Raw(b"\x01\xf4\x01\xf4tail")
    const auto p = hex("6000000000102c4020010db80ff10000000000000000000120010db80ff200000000000000000001110003200000"
                       "000701f401f47461696c");
    spd6_key k;
    bool non_first = false;
    EXPECT_EQ(spd6_key_of(p.data(), static_cast<uint32_t>(p.size()), k, &non_first), 0U);
    EXPECT_TRUE(non_first);
    EXPECT_EQ(k.protocol, 17);
    EXPECT_EQ(k.source_port, 0);
    EXPECT_EQ(k.destination_port, 0);
}

TEST(Selectors, Ipv6IcmpTypeAtTheReturnedOffset)
{
    // IPv6(...)/ICMPv6EchoRequest(id=1, seq=2)
    const auto p = hex("6000000000083a4020010db80ff10000000000000000000120010db80ff2000000000000000000018000046300010002");
    spd6_key k;
    const uint32_t upper = spd6_key_of(p.data(), static_cast<uint32_t>(p.size()), k);
    ASSERT_EQ(upper, 40U);
    EXPECT_EQ(k.protocol, 58);
    EXPECT_EQ(p[upper], 128); // echo request
}

TEST(Selectors, Ipv6DestinationOptionsThenTcp)
{
    // IPv6(...)/IPv6ExtHdrDestOpt()/TCP(sport=179, dport=40000)
    const auto p = hex("60000000001c3c4020010db80ff10000000000000000000120010db80ff200000000000000000001060001040000"
                       "000000b39c4000000000000000005002200077980000");
    spd6_key k;
    EXPECT_EQ(spd6_key_of(p.data(), static_cast<uint32_t>(p.size()), k), 48U);
    EXPECT_EQ(k.protocol, 6);
    EXPECT_EQ(port(k.source_port), 179);
    EXPECT_EQ(port(k.destination_port), 40000);
}

TEST(Selectors, TruncatedIpv6ExtensionLeavesTheLastHeaderSeen)
{
    // The hop-by-hop packet above cut inside its fragment header: the walk stops at what it saw.
    auto p = hex("600000000020004020010db80ff10000000000000000000120010db80ff2000000000000000000012c00010400000000");
    spd6_key k;
    EXPECT_EQ(spd6_key_of(p.data(), 52, k), 0U);
    EXPECT_EQ(k.protocol, 44);
    EXPECT_EQ(k.source_port, 0);
}

// leading_bits_equal (packet.h), under prefix_contains and the host SPD's local check: for every
// prefix length and every single flipped bit, equal exactly when the flip is beyond the prefix;
// checked against a bit-by-bit reference, IPv4 and IPv6.
TEST(PrefixCompare, LeadingBitsEqualMatchesABitByBitCompare)
{
    auto bit = [](const uint8_t* p, unsigned i) { return (p[i / 8] >> (7 - i % 8)) & 1; };
    uint8_t a[16];
    for (unsigned i = 0; i < 16; ++i) {
        a[i] = static_cast<uint8_t>(0x9e * (i + 1) + 0x37);
    }
    for (bool v4 : {true, false}) {
        const unsigned width = v4 ? 32 : 128;
        for (unsigned bits = 0; bits <= width; ++bits) {
            for (unsigned flip = 0; flip < width; ++flip) {
                uint8_t b[16];
                std::memcpy(b, a, 16);
                b[flip / 8] ^= static_cast<uint8_t>(0x80 >> (flip % 8));
                bool want = true;
                for (unsigned i = 0; i < bits; ++i) {
                    want = want && bit(a, i) == bit(b, i);
                }
                ASSERT_EQ(leading_bits_equal(a, b, bits, v4), want) << (v4 ? "v4 /" : "v6 /") << bits << " flip " << flip;
            }
            ASSERT_TRUE(leading_bits_equal(a, a, bits, v4));
        }
    }
    // Bytes beyond an IPv4 address never count, and lengths beyond the address are its length.
    uint8_t c[16];
    std::memcpy(c, a, 16);
    c[4] ^= 0xff;
    EXPECT_TRUE(leading_bits_equal(a, c, 32, true));
    for (unsigned bits : {33U, 40U, 64U, 128U, 255U}) {
        EXPECT_TRUE(leading_bits_equal(a, c, bits, true)) << bits;
    }
    c[3] ^= 1;
    EXPECT_FALSE(leading_bits_equal(a, c, 255, true));
    uint8_t d[16];
    std::memcpy(d, a, 16);
    EXPECT_TRUE(leading_bits_equal(a, d, 129, false));
    EXPECT_TRUE(leading_bits_equal(a, d, 255, false));
    d[15] ^= 1;
    EXPECT_FALSE(leading_bits_equal(a, d, 129, false));
    EXPECT_FALSE(leading_bits_equal(a, d, 255, false));

    config::ip_prefix p{};
    p.address.family = 4;
    p.address.bytes = {192, 168, 0, 0};
    p.length = 23;
    const uint8_t in[4] = {192, 168, 1, 77};
    const uint8_t also_in[4] = {192, 168, 0, 1};
    const uint8_t out[4] = {192, 168, 2, 1};
    EXPECT_TRUE(prefix_contains(p, 4, in));
    EXPECT_TRUE(prefix_contains(p, 4, also_in));
    EXPECT_FALSE(prefix_contains(p, 4, out));
    EXPECT_FALSE(prefix_contains(p, 6, in)); // another family never matches
    EXPECT_TRUE(prefix_contains(config::ip_prefix{}, 6, in)); // an unset prefix matches all
}

// fixed_divisor (the SPI owner per packet) must be x % d for every 32-bit x, d from 1 (one worker)
// up to many, including the largest values.
TEST(FixedDivisor, EqualsTheRemainder)
{
    std::mt19937 rng(7);
    for (uint32_t d : {1U, 2U, 3U, 4U, 5U, 6U, 7U, 8U, 12U, 16U, 31U, 63U, 64U, 127U, 1000U, 65537U, 0x7fffffffU, 0xffffffffU}) {
        const fixed_divisor f(d);
        for (uint32_t x : {0U, 1U, d - 1, d, d + 1, 0x7fffffffU, 0x80000000U, 0xfffffffeU, 0xffffffffU}) {
            ASSERT_EQ(f.mod(x), x % d) << x << " % " << d;
        }
        for (int i = 0; i < 20000; ++i) {
            const uint32_t x = rng();
            ASSERT_EQ(f.mod(x), x % d) << x << " % " << d;
        }
    }
}

} // namespace
} // namespace espresso::dp
