// Tests for dataplane/src/routing.cpp (the IPv6 FIB on rte_fib6, the neighbor table of both
// families) and the IPv6 half of dataplane/src/spd.cpp (rte_acl over IPv6 selectors).
#include "routing.h"
#include "spd.h"

#include <gtest/gtest.h>
#include <rte_cycles.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

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

// The workers cache answers while generation() stays the same: every change a cached answer could
// miss must move it (learn, confirmation, which clears the used mark NUD reads, removal, expiry).
TEST(neighbor_table, generation_moves_with_every_change_a_cached_answer_could_miss)
{
    neighbor_table t("test_neigh_gen", 256, 1);
    const neighbor_table::timers timers{1000000, 1000, 3};
    const rte_ether_addr a{{0x02, 0, 0, 0, 0, 0xaa}};
    const rte_ether_addr b{{0x02, 0, 0, 0, 0, 0xbb}};
    const uint32_t ip = rte_cpu_to_be_32(0xc0a80102);
    const uint32_t other = rte_cpu_to_be_32(0xc0a80103);
    uint64_t g = t.generation();
    EXPECT_NE(g, 0U); // 0 marks an empty cache entry
    rte_ether_addr got{};
    EXPECT_FALSE(t.lookup(1, ip, got));
    EXPECT_EQ(t.generation(), g); // look-ups change nothing
    ASSERT_TRUE(t.set(1, ip, a, false));
    EXPECT_NE(t.generation(), g);
    g = t.generation();
    ASSERT_TRUE(t.lookup(1, ip, got));
    EXPECT_EQ(t.generation(), g);
    ASSERT_TRUE(t.set(1, ip, a, false)); // confirmation, same MAC
    EXPECT_NE(t.generation(), g);
    g = t.generation();
    ASSERT_TRUE(t.set(1, ip, b, false)); // moved
    EXPECT_NE(t.generation(), g);
    g = t.generation();
    ASSERT_TRUE(t.remove(1, 4, reinterpret_cast<const uint8_t*>(&ip)));
    EXPECT_NE(t.generation(), g);
    ASSERT_TRUE(t.set(1, other, a, false));
    g = t.generation();
    std::vector<neighbor_table::probe> probes;
    t.maintain(rte_get_tsc_cycles() + timers.reachable + 1, timers, probes); // collects the unused entry
    EXPECT_FALSE(t.known(1, other));
    EXPECT_NE(t.generation(), g);
    g = t.generation();
    ASSERT_TRUE(t.set(1, other, a, false));
    EXPECT_EQ(t.clear_dynamic(), 1U);
    EXPECT_NE(t.generation(), g);
}

// Neighbor unreachability detection (RFC 4861 §7.3) with explicit times: entries were confirmed at
// about rte_get_tsc_cycles() when set, so `base` + offsets are "later".
TEST(neighbor_table, nud_collects_unused_and_probes_used_entries)
{
    neighbor_table t("test_nud", 256, 1);
    const neighbor_table::timers timers{1000000, 1000, 3};
    const rte_ether_addr a{{0x02, 0, 0, 0, 0, 0xaa}};
    const rte_ether_addr b{{0x02, 0, 0, 0, 0, 0xbb}};
    const uint32_t unused_ip = rte_cpu_to_be_32(0xc0a80102);
    const uint32_t used_ip = rte_cpu_to_be_32(0xc0a80103);
    const uint32_t static_ip = rte_cpu_to_be_32(0xc0a80104);
    ASSERT_TRUE(t.set(1, unused_ip, a, false));
    ASSERT_TRUE(t.set(1, used_ip, b, false));
    ASSERT_TRUE(t.set(1, static_ip, a, true));
    rte_ether_addr got{};
    ASSERT_TRUE(t.lookup(1, used_ip, got)); // a worker forwarded through it
    const uint64_t base = rte_get_tsc_cycles();
    std::vector<neighbor_table::probe> probes;
    t.maintain(base, timers, probes); // still reachable: nothing happens
    EXPECT_TRUE(probes.empty());
    EXPECT_TRUE(t.known(1, unused_ip));

    // Reachable time over: the unused entry is collected, the used one probed (unicast, its MAC).
    uint64_t now = base + timers.reachable + 1;
    t.maintain(now, timers, probes);
    EXPECT_FALSE(t.known(1, unused_ip));
    EXPECT_FALSE(t.lookup(1, unused_ip, got));
    ASSERT_EQ(probes.size(), 1U);
    EXPECT_EQ(probes[0].family, 4);
    EXPECT_EQ(probes[0].port, 1);
    EXPECT_EQ(std::memcmp(probes[0].ip.data(), &used_ip, 4), 0);
    EXPECT_TRUE(rte_is_same_ether_addr(&probes[0].mac, &b));
    EXPECT_TRUE(t.lookup(1, used_ip, got)); // still used while probing
    // No second probe before the retransmit interval.
    probes.clear();
    t.maintain(now + timers.retransmit / 2, timers, probes);
    EXPECT_TRUE(probes.empty());
    // Three probes, then removal when the last one goes unanswered.
    for (int i = 2; i <= 3; ++i) {
        now += timers.retransmit;
        t.maintain(now, timers, probes);
        EXPECT_EQ(probes.size(), static_cast<size_t>(i - 1));
    }
    now += timers.retransmit;
    t.maintain(now, timers, probes);
    EXPECT_EQ(probes.size(), 2U);
    EXPECT_FALSE(t.lookup(1, used_ip, got));
    EXPECT_EQ(t.stats().probes_sent, 3U);
    EXPECT_EQ(t.stats().unreachable, 1U);
    EXPECT_EQ(t.stats().collected, 1U);
    // Static entries never age.
    EXPECT_TRUE(t.lookup(1, static_ip, got));
    ASSERT_EQ(t.entries().size(), 1U);
    EXPECT_EQ(t.entries()[0].nud, neighbor_table::state::permanent);
}

TEST(neighbor_table, an_answer_to_a_probe_makes_the_entry_reachable_again)
{
    neighbor_table t("test_nud_confirm", 256, 1);
    const neighbor_table::timers timers{1000000, 1000, 3};
    const rte_ether_addr a{{0x02, 0, 0, 0, 0, 0xaa}};
    const rte_ether_addr moved{{0x02, 0, 0, 0, 0, 0xcc}};
    const auto ip6 = v6("2001:db8:1::fe");
    ASSERT_TRUE(t.set6(2, ip6.data(), a, false));
    rte_ether_addr got{};
    ASSERT_TRUE(t.lookup6(2, ip6.data(), got));
    std::vector<neighbor_table::probe> probes;
    t.maintain(rte_get_tsc_cycles() + timers.reachable + 1, timers, probes);
    ASSERT_EQ(probes.size(), 1U);
    EXPECT_EQ(probes[0].family, 6);
    EXPECT_EQ(probes[0].ip, ip6);
    ASSERT_EQ(t.entries().size(), 1U);
    EXPECT_EQ(t.entries()[0].nud, neighbor_table::state::probe);
    // The Neighbor Advertisement answering it (here with a new MAC, Override set) confirms it.
    ASSERT_TRUE(t.set6(2, ip6.data(), moved, false));
    ASSERT_EQ(t.entries().size(), 1U);
    EXPECT_EQ(t.entries()[0].nud, neighbor_table::state::reachable);
    EXPECT_EQ(t.entries()[0].probes_sent, 0U);
    ASSERT_TRUE(t.lookup6(2, ip6.data(), got));
    EXPECT_TRUE(rte_is_same_ether_addr(&got, &moved));
    // Within the new reachable time: no probe.
    probes.clear();
    t.maintain(rte_get_tsc_cycles(), timers, probes);
    EXPECT_TRUE(probes.empty());
}

TEST(neighbor_table, clear_removes_learned_entries_of_one_family)
{
    neighbor_table t("test_nud_clear", 256, 1);
    const rte_ether_addr a{{0x02, 0, 0, 0, 0, 0xaa}};
    const auto ip6 = v6("2001:db8:1::fe");
    const uint32_t ip4 = rte_cpu_to_be_32(0xc0a80102);
    const uint32_t static4 = rte_cpu_to_be_32(0xc0a80103);
    ASSERT_TRUE(t.set(1, ip4, a, false));
    ASSERT_TRUE(t.set(1, static4, a, true));
    ASSERT_TRUE(t.set6(1, ip6.data(), a, false));
    EXPECT_EQ(t.clear_dynamic(4), 1U);
    rte_ether_addr got{};
    EXPECT_FALSE(t.lookup(1, ip4, got));
    EXPECT_TRUE(t.lookup(1, static4, got));
    EXPECT_TRUE(t.lookup6(1, ip6.data(), got));
    EXPECT_EQ(t.clear_dynamic(0), 1U);
    EXPECT_FALSE(t.lookup6(1, ip6.data(), got));
    EXPECT_EQ(t.stats().cleared, 2U);
}

// Removed slots are reused only after every reader passed a quiescent state (RCU QSBR): a worker
// that found a slot just before its removal never reads another neighbor's MAC from it. When every
// free slot is such a removed one, an add waits for the readers (a worker thread here).
TEST(neighbor_table, removed_slots_wait_for_readers_before_reuse)
{
    neighbor_table t("test_nud_rcu", 64, 1);
    const rte_ether_addr a{{0x02, 0, 0, 0, 0, 0xaa}};
    std::atomic<int> phase{0};
    std::atomic<bool> reported{false};
    std::thread reader([&] {
        t.reader_online(0);
        phase.store(1);
        while (phase.load() != 2) {
            std::this_thread::yield();
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50)); // a descheduled worker
        reported.store(true);
        t.reader_quiescent(0);
        t.reader_offline(0);
    });
    while (phase.load() != 1) {
        std::this_thread::yield();
    }
    // Fill the table to its capacity (64 of the hash's 96 slots) with static entries (never
    // evicted), with the reader online.
    uint32_t filled = 0;
    while (filled < 200 && t.set(1, rte_cpu_to_be_32(0x0a000000 + filled), a, true)) {
        ++filled;
    }
    EXPECT_EQ(filled, 64U); // the capacity
    EXPECT_EQ(t.clear_dynamic(), 0U);
    for (uint32_t i = 0; i < filled; ++i) {
        const uint32_t ip = rte_cpu_to_be_32(0x0a000000 + i);
        ASSERT_TRUE(t.remove(1, 4, reinterpret_cast<const uint8_t*>(&ip)));
    }
    // 64 removed slots wait for the reader; the hash's 32 spare slots go first, then the next
    // add must wait for the reader's quiescent state before it reuses one.
    for (uint32_t i = 0; i < 32; ++i) {
        ASSERT_TRUE(t.set(1, rte_cpu_to_be_32(0x0b000000 + i), a, false));
    }
    EXPECT_FALSE(reported.load());
    EXPECT_EQ(t.stats().waited, 0U);
    phase.store(2);
    EXPECT_TRUE(t.set(1, rte_cpu_to_be_32(0x0c000001), a, false));
    EXPECT_TRUE(reported.load()) << "a removed slot was reused before the reader let go";
    EXPECT_EQ(t.stats().waited, 1U);
    reader.join();
}

// An on-link host can make the gateway learn an entry per address of its subnet (ARP requests or
// Neighbor Solicitations for the gateway, from spoofed senders). Past 7/8 of the table, new learned
// entries evict the oldest idle learned ones, never a static entry or one a worker uses.
TEST(neighbor_table, a_flood_of_learned_entries_evicts_only_idle_ones)
{
    neighbor_table t("test_nud_evict", 64, 1);
    const rte_ether_addr a{{0x02, 0, 0, 0, 0, 0xaa}};
    const uint32_t router = rte_cpu_to_be_32(0xc0a80101);
    const uint32_t next_hop = rte_cpu_to_be_32(0xc0a80102);
    ASSERT_TRUE(t.set(1, router, a, true));
    ASSERT_TRUE(t.set(1, next_hop, a, false));
    rte_ether_addr got{};
    ASSERT_TRUE(t.lookup(1, next_hop, got)); // in use
    // A worker online that reports a quiescent state only every 16 new entries (busy with a big
    // burst while the main lcore learns): the slots evicted wait for it, and the flood must not
    // fail meanwhile. (This thread is the reader: were the hash's spare slots, 32 here, ever all
    // waiting for it, set() would wait for itself; 16 stays well inside.)
    t.reader_online(0);
    for (uint32_t i = 0; i < 1000; ++i) {
        ASSERT_TRUE(t.set(1, rte_cpu_to_be_32(0x0a000000 + i), a, false)) << "flood entry " << i;
        if (i % 16 == 15) {
            t.reader_quiescent(0);
        }
    }
    EXPECT_EQ(t.stats().table_full, 0U);
    EXPECT_GE(t.stats().evicted, 1000U - 64U);
    EXPECT_TRUE(t.lookup(1, router, got));
    EXPECT_TRUE(t.lookup(1, next_hop, got));
    EXPECT_TRUE(t.known(1, rte_cpu_to_be_32(0x0a000000 + 999))); // the newest stay, the oldest went
    EXPECT_FALSE(t.known(1, rte_cpu_to_be_32(0x0a000000)));
    EXPECT_LE(t.entries().size(), 56U);
    // A legitimate next hop learned after the flood gets in.
    EXPECT_TRUE(t.set(1, rte_cpu_to_be_32(0xc0a80103), a, false));
    t.reader_offline(0);
}

// The configured size bounds the entries, whatever room the hash keeps for slots waiting for readers.
TEST(neighbor_table, never_holds_more_than_its_capacity)
{
    neighbor_table t("test_nud_cap", 64, 1);
    const rte_ether_addr a{{0x02, 0, 0, 0, 0, 0xaa}};
    uint32_t added = 0;
    for (uint32_t i = 0; i < 100; ++i) {
        added += t.set(1, rte_cpu_to_be_32(0x0a000000 + i), a, true) ? 1 : 0; // static: never evicted
    }
    EXPECT_EQ(added, 64U);
    EXPECT_EQ(t.stats().table_full, 36U);
    EXPECT_FALSE(t.set(1, rte_cpu_to_be_32(0x0b000000), a, false)); // nothing idle to evict
    EXPECT_TRUE(t.set(1, rte_cpu_to_be_32(0x0a000000), a, true));    // an existing entry is updated
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
