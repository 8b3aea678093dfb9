// Tests for dataplane/src/config_diff.cpp: what a reload (control op `reload`) would add, remove,
// change and keep, and which start-only settings it reports as needing a restart. The inputs are
// whole files through the real loader, as espresso-dp reads them.
#include "config_diff.h"

#include <gtest/gtest.h>

#include <string>

#include "espresso/config/loader.h"

namespace espresso::dp {
namespace {

const std::string interfaces = R"(
dataplane:
  workers: 1
  hugepages: false
  control-socket: /run/espresso/test.sock
interfaces:
  - { name: outside, device: "net_af_packet0,iface=wan0", address: 198.51.100.1/24 }
  - { name: inside, device: "net_af_packet1,iface=lan0", address: 192.168.1.1/24 }
)";

const std::string sa_outbound = R"(
  - spi: 0x1001
    direction: outbound
    protocol: esp
    mode: tunnel
    source: 198.51.100.1
    destination: 203.0.113.1
    encryption: aes128gcm16
    key: 0x00112233445566778899aabbccddeeff01020304
    integrity: none
    selectors: { local: 192.168.1.0/24, remote: 192.168.2.0/24 }
)";

const std::string sa_inbound = R"(
  - spi: 0x2001
    direction: inbound
    protocol: esp
    mode: tunnel
    source: 203.0.113.1
    destination: 198.51.100.1
    encryption: aes128gcm16
    key: 0xffeeddccbbaa99887766554433221100a0b0c0d0
    integrity: none
    selectors: { local: 192.168.1.0/24, remote: 192.168.2.0/24 }
)";

const std::string base_rest = R"(
routes:
  - { destination: 203.0.113.0/24, via: 198.51.100.254 }
  - { destination: 10.0.0.0/8, via: 192.168.1.254 }
neighbors:
  - { address: 198.51.100.254, mac: "02:00:00:00:00:fe", interface: outside }
policies:
  - { local: 192.168.1.0/24, remote: 192.168.2.1/32, protocol: tcp, remote-ports: 22, action: bypass, priority: 10 }
  - { local: 192.168.1.0/24, remote: 192.168.3.0/24, action: discard, priority: 20 }
security-associations:
)";

config::gateway_config load(const std::string& text)
{
    return config::load_string(text, "test.yaml");
}

std::string replaced(std::string text, const std::string& from, const std::string& to)
{
    const auto at = text.find(from);
    if (at == std::string::npos) {
        throw std::logic_error("test bug: " + from + " not in the text");
    }
    return text.replace(at, from.size(), to);
}

const std::string base = interfaces + base_rest + sa_outbound + sa_inbound;

TEST(ConfigDiff, SameFileChangesNothing)
{
    const auto a = load(base);
    const auto b = load(base);
    const auto d = diff_config(a, b);
    EXPECT_FALSE(d.routes.touched());
    EXPECT_FALSE(d.neighbors.touched());
    EXPECT_FALSE(d.policies.touched());
    EXPECT_FALSE(d.sas.touched());
    EXPECT_EQ(d.routes.unchanged.size(), 2u);
    EXPECT_EQ(d.neighbors.unchanged.size(), 1u);
    EXPECT_EQ(d.policies.unchanged.size(), 2u);
    EXPECT_EQ(d.sas.unchanged.size(), 2u);
    EXPECT_TRUE(d.restart_needed.empty());
}

TEST(ConfigDiff, MovedLinesAreStillTheSameItems)
{
    // Comments above every section shift every origin (line numbers): nothing changes.
    std::string moved = "# a comment\n# another\n" + base;
    moved = replaced(moved, "routes:\n", "# routes moved down\nroutes:\n");
    const auto d = diff_config(load(base), load(moved));
    EXPECT_FALSE(d.routes.touched());
    EXPECT_FALSE(d.sas.touched());
    EXPECT_FALSE(d.policies.touched());
    EXPECT_FALSE(d.neighbors.touched());
}

TEST(ConfigDiff, RouteAddedRemovedChanged)
{
    std::string next = replaced(base, "  - { destination: 10.0.0.0/8, via: 192.168.1.254 }\n",
                                "  - { destination: 172.16.0.0/12, via: 192.168.1.254 }\n");
    next = replaced(next, "{ destination: 203.0.113.0/24, via: 198.51.100.254 }",
                    "{ destination: 203.0.113.0/24, via: 198.51.100.253 }");
    const auto a = load(base);
    const auto b = load(next);
    const auto d = diff_config(a, b);
    ASSERT_EQ(d.routes.added.size(), 1u);
    EXPECT_EQ(config::to_string(b.routes[d.routes.added[0]].destination), "172.16.0.0/12");
    ASSERT_EQ(d.routes.removed.size(), 1u);
    EXPECT_EQ(config::to_string(a.routes[d.routes.removed[0]].destination), "10.0.0.0/8");
    ASSERT_EQ(d.routes.changed.size(), 1u);
    EXPECT_EQ(describe(a.routes[d.routes.changed[0].first]), "203.0.113.0/24 via 198.51.100.254");
    EXPECT_EQ(describe(b.routes[d.routes.changed[0].second]), "203.0.113.0/24 via 198.51.100.253");
    EXPECT_TRUE(d.routes.unchanged.empty());
    EXPECT_FALSE(d.sas.touched());
}

TEST(ConfigDiff, NeighborMacChangeIsAChange)
{
    const auto next = replaced(base, "02:00:00:00:00:fe", "02:00:00:00:00:fd");
    const auto d = diff_config(load(base), load(next));
    EXPECT_EQ(d.neighbors.changed.size(), 1u);
    EXPECT_TRUE(d.neighbors.added.empty());
    EXPECT_TRUE(d.neighbors.removed.empty());
}

TEST(ConfigDiff, NewKeyReplacesTheSaAndKeepsTheOther)
{
    const auto next = replaced(base, "0x00112233445566778899aabbccddeeff01020304",
                               "0x00112233445566778899aabbccddeeff01020305");
    const auto a = load(base);
    const auto b = load(next);
    const auto d = diff_config(a, b);
    ASSERT_EQ(d.sas.changed.size(), 1u);
    EXPECT_EQ(a.security_associations[d.sas.changed[0].first].spi, 0x1001u);
    ASSERT_EQ(d.sas.unchanged.size(), 1u);
    EXPECT_EQ(b.security_associations[d.sas.unchanged[0].second].spi, 0x2001u);
    // The report never shows keys.
    const std::string line = describe(b.security_associations[d.sas.changed[0].second]);
    EXPECT_EQ(line.find("0011"), std::string::npos);
    EXPECT_NE(line.find("0x00001001"), std::string::npos);
    const auto& old_sa = a.security_associations[d.sas.changed[0].first];
    const auto& new_sa = b.security_associations[d.sas.changed[0].second];
    EXPECT_EQ(describe_change(old_sa, new_sa), "outbound 0x00001001 192.168.1.0/24 <-> 192.168.2.0/24 (key)");
}

TEST(ConfigDiff, SaSettingsOtherThanKeysAreChanges)
{
    for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
             {"remote: 192.168.2.0/24 }\n\n  - spi: 0x2001", "remote: 192.168.4.0/24 }\n\n  - spi: 0x2001"},
             {"    encryption: aes128gcm16\n    key: 0xffeedd", "    replay-window: 64\n    encryption: aes128gcm16\n    key: 0xffeedd"},
             {"destination: 203.0.113.1\n", "destination: 203.0.113.2\n"}}) {
        const auto d = diff_config(load(base), load(replaced(base, from, to)));
        EXPECT_EQ(d.sas.changed.size(), 1u) << to;
        EXPECT_EQ(d.sas.unchanged.size(), 1u) << to;
    }
}

TEST(ConfigDiff, SaAddedAndRemovedBySpi)
{
    const std::string next = replaced(interfaces + base_rest + sa_outbound + sa_inbound, "spi: 0x2001", "spi: 0x2002");
    const auto a = load(base);
    const auto b = load(next);
    const auto d = diff_config(a, b);
    ASSERT_EQ(d.sas.added.size(), 1u);
    EXPECT_EQ(b.security_associations[d.sas.added[0]].spi, 0x2002u);
    ASSERT_EQ(d.sas.removed.size(), 1u);
    EXPECT_EQ(a.security_associations[d.sas.removed[0]].spi, 0x2001u);
    EXPECT_EQ(d.sas.unchanged.size(), 1u);
    // Same SPI, other direction: another SA.
    const auto swapped = diff_config(a, load(replaced(base, "spi: 0x2001", "spi: 0x1002")));
    EXPECT_EQ(swapped.sas.added.size(), 1u);
    EXPECT_EQ(swapped.sas.removed.size(), 1u);
}

TEST(ConfigDiff, PoliciesMatchByContent)
{
    // Reordered: unchanged. A changed priority: one removed, one added.
    std::string reordered = replaced(
        base,
        "  - { local: 192.168.1.0/24, remote: 192.168.2.1/32, protocol: tcp, remote-ports: 22, action: bypass, priority: 10 }\n"
        "  - { local: 192.168.1.0/24, remote: 192.168.3.0/24, action: discard, priority: 20 }\n",
        "  - { local: 192.168.1.0/24, remote: 192.168.3.0/24, action: discard, priority: 20 }\n"
        "  - { local: 192.168.1.0/24, remote: 192.168.2.1/32, protocol: tcp, remote-ports: 22, action: bypass, priority: 10 }\n");
    EXPECT_FALSE(diff_config(load(base), load(reordered)).policies.touched());
    const auto b = load(replaced(base, "action: discard, priority: 20", "action: discard, priority: 5"));
    const auto d = diff_config(load(base), b);
    ASSERT_EQ(d.policies.added.size(), 1u);
    EXPECT_EQ(b.policies[d.policies.added[0]].priority, 5u);
    EXPECT_EQ(d.policies.removed.size(), 1u);
    EXPECT_EQ(d.policies.unchanged.size(), 1u);
    EXPECT_TRUE(d.policies.changed.empty());
    // A protect policy names its SA.
    const auto p = load(replaced(base, "remote: 192.168.3.0/24, action: discard, priority: 20",
                                 "remote: 192.168.2.128/25, action: protect, spi: 0x1001, priority: 20"));
    const auto dp = diff_config(load(base), p);
    ASSERT_EQ(dp.policies.added.size(), 1u);
    EXPECT_EQ(describe(p.policies[dp.policies.added[0]]),
              "192.168.1.0/24 -> 192.168.2.128/25 protect spi 0x00001001 priority 20");
}

TEST(ConfigDiff, DuplicatePoliciesAreMatchedOneToOne)
{
    // The loader refuses two policies for the same traffic; a program may still hand such a list over.
    const auto one = load(base);
    auto two = one;
    two.policies.push_back(two.policies.back());
    const auto d = diff_config(one, two);
    EXPECT_EQ(d.policies.added.size(), 1u);
    EXPECT_EQ(d.policies.unchanged.size(), 2u);
    const auto back = diff_config(two, one);
    EXPECT_EQ(back.policies.removed.size(), 1u);
}

TEST(ConfigDiff, StartOnlySettingsNeedARestart)
{
    std::string next = replaced(base, "workers: 1", "workers: 2");
    next = replaced(next, "address: 192.168.1.1/24 }", "address: 192.168.1.1/24, mtu: 1400 }");
    next = replaced(next, "interfaces:\n",
                    "interfaces:\n  - { name: dmz, device: \"net_af_packet2,iface=dmz0\", address: 10.9.0.1/24 }\n");
    const auto d = diff_config(load(base), load(next));
    ASSERT_EQ(d.restart_needed.size(), 3u);
    EXPECT_EQ(d.restart_needed[0], "dataplane.workers: 1 -> 2");
    EXPECT_NE(d.restart_needed[1].find("interfaces.inside: "), std::string::npos);
    EXPECT_NE(d.restart_needed[1].find("mtu 1400"), std::string::npos);
    EXPECT_NE(d.restart_needed[2].find("interfaces: dmz"), std::string::npos);
    EXPECT_NE(d.restart_needed[2].find("added"), std::string::npos);
    // The runtime sections are diffed all the same.
    EXPECT_FALSE(d.routes.touched());
    EXPECT_EQ(d.sas.unchanged.size(), 2u);
}

TEST(ConfigDiff, SameSaComparesWholeKeys)
{
    auto a = load(base).security_associations[0];
    auto b = a;
    EXPECT_TRUE(same_sa(a, b));
    b.cipher_key[a.cipher_key_length - 1] ^= 1; // last salt byte
    EXPECT_FALSE(same_sa(a, b));
    b = a;
    b.origin = "elsewhere.yaml:1:1";
    EXPECT_TRUE(same_sa(a, b));
    config::wipe_keys(a);
    config::wipe_keys(b);
}

} // namespace
} // namespace espresso::dp
