// Tests for dataplane/src/routing.cpp (the IPv6 FIB on rte_fib6, the neighbor table of both
// families) and the IPv6 half of dataplane/src/spd.cpp (rte_acl over IPv6 selectors).
#include "routing.h"
#include "spd.h"

#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>
#include <string>

namespace espresso::dp {
namespace {

ipv6_address v6(const char* text)
{
    const auto a = config::parse_address(text);
    if (!a || !a->is_v6()) {
        throw std::logic_error(std::string("test bug: ") + text);
    }
    ipv6_address out{};
    std::memcpy(out.data(), a->bytes.data(), 16);
    return out;
}

config::route_config route(const char* destination, const char* via, const char* interface = "")
{
    config::route_config r;
    r.destination = *config::parse_prefix(destination);
    if (via[0] != '\0') {
        r.via = *config::parse_address(via);
    }
    r.interface = interface;
    r.origin = "test";
    return r;
}

TEST(route_table6, longest_prefix_match_over_connected_and_static_routes)
{
    // Port 3: 2001:db8:1::1/64 (LAN), port 5: 2001:db8:ff::1/64 (WAN).
    const std::vector<route_table6::connected> links{{3, v6("2001:db8:1::1"), 64},
                                                     {5, v6("2001:db8:ff::1"), 64}};
    const std::vector<config::route_config> routes{
        route("::/0", "2001:db8:ff::fe"),
        route("2001:db8:100::/40", "2001:db8:1::fe"),
        route("2001:db8:100:5::/64", "2001:db8:ff::fd"),
        route("2001:db8:77::/48", "", "lan"),
        route("10.0.0.0/8", "192.0.2.1"), // IPv4: not this table's
    };
    route_table6 fib(links, routes, {"lan", "wan"});
    uint16_t port = 0;
    ipv6_address nh{};
    // Connected: the destination is its own next hop.
    ASSERT_TRUE(fib.lookup(v6("2001:db8:1::99").data(), port, nh));
    EXPECT_EQ(port, 3);
    EXPECT_EQ(nh, v6("2001:db8:1::99"));
    // Default route.
    ASSERT_TRUE(fib.lookup(v6("2001:db8:9999::1").data(), port, nh));
    EXPECT_EQ(port, 5);
    EXPECT_EQ(nh, v6("2001:db8:ff::fe"));
    // /40 and the more specific /64 inside it.
    ASSERT_TRUE(fib.lookup(v6("2001:db8:1ab::1").data(), port, nh));
    EXPECT_EQ(port, 3);
    EXPECT_EQ(nh, v6("2001:db8:1::fe"));
    ASSERT_TRUE(fib.lookup(v6("2001:db8:100:5::7").data(), port, nh));
    EXPECT_EQ(port, 5);
    EXPECT_EQ(nh, v6("2001:db8:ff::fd"));
    // Directly connected through a named interface.
    ASSERT_TRUE(fib.lookup(v6("2001:db8:77::3").data(), port, nh));
    EXPECT_EQ(port, 3);
    EXPECT_EQ(nh, v6("2001:db8:77::3"));

    // Bulk lookups agree with single ones.
    uint8_t dst[3][16];
    std::memcpy(dst[0], v6("2001:db8:1::5").data(), 16);
    std::memcpy(dst[1], v6("2001:db8:100:5::9").data(), 16);
    std::memcpy(dst[2], v6("2001:db8:1ff::1").data(), 16);
    uint64_t hops[3];
    fib.lookup_bulk(dst, hops, 3);
    EXPECT_EQ(fib.hop(hops[0]).port, 3);
    EXPECT_TRUE(fib.hop(hops[0]).connected);
    EXPECT_EQ(fib.hop(hops[1]).gateway, v6("2001:db8:ff::fd"));
    EXPECT_EQ(fib.hop(hops[2]).gateway, v6("2001:db8:1::fe"));
}

TEST(route_table6, no_route_without_a_default)
{
    route_table6 fib({{1, v6("2001:db8:1::1"), 64}}, {}, {"lan"});
    uint16_t port = 0;
    ipv6_address nh{};
    EXPECT_FALSE(fib.lookup(v6("2001:db8:2::1").data(), port, nh));
    uint8_t dst[1][16];
    std::memcpy(dst[0], v6("2001:db8:2::1").data(), 16);
    uint64_t hop = 0;
    fib.lookup_bulk(dst, &hop, 1);
    EXPECT_EQ(hop, route_table6::no_route);
}

TEST(route_table6, link_local_next_hops_name_their_interface)
{
    // Port 2 has no IPv6 address (prefix length 0): no connected route, but a router's link-local
    // address on it is a usable next hop.
    const std::vector<route_table6::connected> links{{1, v6("2001:db8:1::1"), 64}, {2, {}, 0}};
    route_table6 fib(links, {route("::/0", "fe80::1", "wan"), route("2001:db8:5::/48", "fe80::2", "lan")},
                     {"lan", "wan"});
    uint16_t port = 0;
    ipv6_address nh{};
    ASSERT_TRUE(fib.lookup(v6("2001:db8:99::1").data(), port, nh));
    EXPECT_EQ(port, 2);
    EXPECT_EQ(nh, v6("fe80::1"));
    ASSERT_TRUE(fib.lookup(v6("2001:db8:5::1").data(), port, nh));
    EXPECT_EQ(port, 1);
    EXPECT_EQ(nh, v6("fe80::2"));
    // The port without an address has no connected route for ::/64 or anything else.
    ASSERT_TRUE(fib.lookup(v6("::1").data(), port, nh));
    EXPECT_EQ(port, 2); // only the default route
    EXPECT_THROW(route_table6(links, {route("::/0", "fe80::1", "dmz")}, {"lan", "wan"}), std::runtime_error);
}

TEST(route_table6, refuses_a_next_hop_off_every_subnet)
{
    EXPECT_THROW(route_table6({{1, v6("2001:db8:1::1"), 64}}, {route("::/0", "2001:db8:2::1")}, {"lan"}),
                 std::runtime_error);
}

TEST(neighbor_table, keeps_families_and_static_entries_apart)
{
    neighbor_table t("test_neigh");
    const rte_ether_addr a{{0x02, 0, 0, 0, 0, 0xaa}};
    const rte_ether_addr b{{0x02, 0, 0, 0, 0, 0xbb}};
    const auto ip6 = v6("2001:db8:1::fe");
    uint32_t ip4 = 0;
    std::memcpy(&ip4, ip6.data(), 4); // same first bytes as the IPv6 address: must not collide
    rte_ether_addr got{};
    EXPECT_FALSE(t.lookup6(1, ip6.data(), got));
    ASSERT_TRUE(t.set6(1, ip6.data(), a, false));
    ASSERT_TRUE(t.lookup6(1, ip6.data(), got));
    EXPECT_TRUE(rte_is_same_ether_addr(&got, &a));
    EXPECT_FALSE(t.lookup(1, ip4, got));
    EXPECT_FALSE(t.lookup6(2, ip6.data(), got)); // per port
    // Learned entries are replaced; static ones are not (RFC 4861 traffic cannot override them).
    ASSERT_TRUE(t.set6(1, ip6.data(), b, true));
    EXPECT_TRUE(t.is_static6(1, ip6.data()));
    ASSERT_TRUE(t.set6(1, ip6.data(), a, false));
    ASSERT_TRUE(t.lookup6(1, ip6.data(), got));
    EXPECT_TRUE(rte_is_same_ether_addr(&got, &b));
    ASSERT_TRUE(t.set(1, ip4, a, false));
    const auto all = t.entries();
    ASSERT_EQ(all.size(), 2U);
    for (const auto& e : all) {
        if (e.family == 6) {
            EXPECT_EQ(e.ip6, ip6);
            EXPECT_TRUE(e.is_static);
        } else {
            EXPECT_EQ(e.family, 4);
            EXPECT_EQ(e.ip_be, ip4);
        }
    }
}

spd_entry policy(const char* local, const char* remote, config::policy_action action, uint32_t priority,
                 uint8_t protocol = 0, uint16_t remote_port = 0)
{
    spd_entry e;
    e.policy.local = *config::parse_prefix(local);
    e.policy.remote = *config::parse_prefix(remote);
    e.policy.action = action;
    e.policy.priority = priority;
    e.policy.protocol = protocol;
    if (remote_port != 0) {
        e.policy.remote_port_min = remote_port;
        e.policy.remote_port_max = remote_port;
    }
    return e;
}

spd6_key key6(const char* src, const char* dst, uint8_t protocol, uint16_t sport, uint16_t dport)
{
    spd6_key k{};
    k.protocol = protocol;
    std::memcpy(k.source, v6(src).data(), 16);
    std::memcpy(k.destination, v6(dst).data(), 16);
    k.source_port = rte_cpu_to_be_16(sport);
    k.destination_port = rte_cpu_to_be_16(dport);
    return k;
}

TEST(spd6, classifies_ipv6_selectors)
{
    std::vector<spd_entry> entries{
        policy("2001:db8:1::/48", "2001:db8:2::/48", config::policy_action::protect, 10),
        policy("2001:db8:1:5::/64", "2001:db8:2::/48", config::policy_action::bypass, 5, 17, 5000),
        policy("::/0", "::/0", config::policy_action::discard, 100),
        policy("192.168.1.0/24", "192.168.2.0/24", config::policy_action::protect, 10), // IPv4 context
    };
    entries[0].id = 1;
    entries[1].id = 2;
    entries[2].id = 3;
    entries[3].id = 4;
    spd_entry in = entries[0];
    in.inbound_check = true;
    in.id = 5;
    entries.push_back(in);
    compiled_spd spd(entries, 1);
    const spd6_key keys[] = {
        key6("2001:db8:1:9::1", "2001:db8:2::7", 6, 1000, 443), // protect (/48 pair)
        key6("2001:db8:1:5::1", "2001:db8:2::7", 17, 1000,
             5000), // bypass: more specific, lower priority value
        key6("2001:db8:1:5::1", "2001:db8:2::7", 17, 1000, 5001), // other port: protect
        key6("2001:db8:9::1", "2001:db8:2::7", 6, 1, 2),          // discard (::/0)
        key6("2001:db8:2::7", "2001:db8:1:9::1", 6, 443, 1000),   // arriving: inbound check of the /48 pair
    };
    const spd6_key* ptrs[5];
    for (int i = 0; i < 5; ++i) {
        ptrs[i] = &keys[i];
    }
    uint32_t out[5];
    uint32_t in_match[5];
    spd.classify6(ptrs, out, in_match, 5);
    ASSERT_NE(out[0], 0U);
    EXPECT_EQ(spd.rule(out[0]).id, 1U);
    ASSERT_NE(out[1], 0U);
    EXPECT_EQ(spd.rule(out[1]).id, 2U);
    ASSERT_NE(out[2], 0U);
    EXPECT_EQ(spd.rule(out[2]).id, 1U);
    ASSERT_NE(out[3], 0U);
    EXPECT_EQ(spd.rule(out[3]).id, 3U);
    ASSERT_NE(in_match[4], 0U);
    EXPECT_EQ(spd.rule(in_match[4]).id, 5U);
    EXPECT_EQ(in_match[0], 0U);

    // The IPv4 policy is in the IPv4 context only.
    spd_key k4{};
    k4.protocol = 6;
    const uint8_t s4[4] = {192, 168, 1, 5};
    const uint8_t d4[4] = {192, 168, 2, 5};
    std::memcpy(&k4.source, s4, 4);
    std::memcpy(&k4.destination, d4, 4);
    const spd_key* p4 = &k4;
    spd.classify(&p4, out, in_match, 1);
    ASSERT_NE(out[0], 0U);
    EXPECT_EQ(spd.rule(out[0]).id, 4U);
}

} // namespace
} // namespace espresso::dp
