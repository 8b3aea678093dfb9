// Tests for config/src/types.cpp: address and prefix parsing, printing, key wiping.
#include "espresso/config/types.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace espresso::config {
namespace {

TEST(types, parses_ipv4_and_ipv6_addresses) {
    const auto v4 = parse_address("198.51.100.1");
    ASSERT_TRUE(v4.has_value());
    EXPECT_TRUE(v4->is_v4());
    EXPECT_EQ(v4->bytes[0], 198);
    EXPECT_EQ(v4->bytes[3], 1);
    EXPECT_EQ(v4->bytes[4], 0);
    EXPECT_EQ(to_string(*v4), "198.51.100.1");

    const auto v6 = parse_address("2001:db8::1");
    ASSERT_TRUE(v6.has_value());
    EXPECT_TRUE(v6->is_v6());
    EXPECT_EQ(v6->bytes[0], 0x20);
    EXPECT_EQ(v6->bytes[15], 1);
    EXPECT_EQ(to_string(*v6), "2001:db8::1");
}

TEST(types, rejects_malformed_addresses) {
    for (const char* text : {"", "1.2.3", "1.2.3.4.5", "256.1.1.1", "10.1", "0x0a.0.0.1", " 1.2.3.4", "1.2.3.4 ",
                             "2001:db8:::1", "fe80::1%eth0", "1.2.3.4/32", "host.example"}) {
        EXPECT_FALSE(parse_address(text).has_value()) << text;
    }
    EXPECT_FALSE(parse_address(std::string_view("1.2.3.4\0", 8)).has_value());
    EXPECT_FALSE(parse_address(std::string(100, '1')).has_value());
}

TEST(types, parses_prefixes) {
    const auto p = parse_prefix("192.168.1.0/24");
    ASSERT_TRUE(p.has_value());
    EXPECT_EQ(p->length, 24);
    EXPECT_EQ(to_string(*p), "192.168.1.0/24");

    const auto host = parse_prefix("192.0.2.7");
    ASSERT_TRUE(host.has_value());
    EXPECT_EQ(host->length, 32);

    const auto v6 = parse_prefix("2001:db8::/32");
    ASSERT_TRUE(v6.has_value());
    EXPECT_EQ(v6->length, 32);
    EXPECT_EQ(to_string(*v6), "2001:db8::/32");

    const auto any = parse_prefix("0.0.0.0/0");
    ASSERT_TRUE(any.has_value());
    EXPECT_EQ(any->length, 0);
    EXPECT_EQ(parse_prefix("::/0")->length, 0);
    EXPECT_EQ(parse_prefix("2001:db8::1")->length, 128);
}

TEST(types, rejects_bad_prefixes) {
    for (const char* text : {"192.168.1.1/24", "192.168.1.0/33", "192.168.1.0/", "192.168.1.0/-1", "192.168.1.0/+8",
                             "192.168.1.0/0x18", "192.168.1.0/024x", "2001:db8::1/64", "2001:db8::/129", "/24",
                             "10.0.0.0/8/8", "10.128.0.0/8"}) {
        EXPECT_FALSE(parse_prefix(text).has_value()) << text;
    }
    // Host bits in the last partial byte.
    EXPECT_TRUE(parse_prefix("10.0.0.0/9").has_value());
    EXPECT_TRUE(parse_prefix("10.128.0.0/9").has_value());
    EXPECT_FALSE(parse_prefix("10.64.0.0/9").has_value());
}

// The oracle is libc's inet_ntop (to_string formats IPv4 itself, without sprintf).
TEST(types, ipv4_addresses_and_prefixes_print_as_inet_ntop_does) {
    const uint8_t samples[][4] = {{0, 0, 0, 0}, {255, 255, 255, 255}, {10, 0, 0, 1}, {192, 168, 100, 9},
                                  {1, 22, 133, 200}, {100, 10, 1, 99}, {203, 0, 113, 254}};
    for (const auto& b : samples) {
        ip_address a;
        a.family = 4;
        std::memcpy(a.bytes.data(), b, 4);
        char expected[INET_ADDRSTRLEN];
        ASSERT_NE(inet_ntop(AF_INET, b, expected, sizeof(expected)), nullptr);
        EXPECT_EQ(to_string(a), expected);
        for (uint8_t length : {0, 8, 24, 32}) {
            EXPECT_EQ(to_string(ip_prefix{a, length}), std::string(expected) + "/" + std::to_string(length));
        }
    }
    EXPECT_EQ(to_string(*parse_prefix("2001:db8::/32")), "2001:db8::/32");
    EXPECT_EQ(to_string(*parse_prefix("2001:db8::1/128")), "2001:db8::1/128");
}

TEST(types, unset_address_prints_as_unset) {
    EXPECT_EQ(to_string(ip_address{}), "<unset>");
}

TEST(types, wipe_keys_clears_both_keys) {
    sa_config sa;
    sa.cipher_key.fill(0xaa);
    sa.integ_key.fill(0x55);
    wipe_keys(sa);
    EXPECT_TRUE(std::all_of(sa.cipher_key.begin(), sa.cipher_key.end(), [](uint8_t b) { return b == 0; }));
    EXPECT_TRUE(std::all_of(sa.integ_key.begin(), sa.integ_key.end(), [](uint8_t b) { return b == 0; }));
}

} // namespace
} // namespace espresso::config
