// Tests for dataplane/src/spd.cpp's two levels: rte_acl (operator policies, prefix selectors) plus the
// exact-match host table (SA-implied policies whose remote selector is one host). The two levels must
// give the answer one rte_acl over every entry gives: checked on fixed cases (priorities between
// operator and implied policies, trap, deletes, both families, the inbound check) and on random sets
// against a single compiled_spd as the oracle. Small rule sets are walked linearly instead of through
// rte_acl: that walk is checked against rte_acl on random rule sets and keys of both families.
#include "spd.h"
#include "sa_pool.h"

#include <gtest/gtest.h>
#include <rte_byteorder.h>

#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <stdexcept>
#include <string>

namespace espresso::dp {
namespace {

using config::policy_action;

// rte_acl contexts are named by generation: every context alive at once needs its own.
uint64_t next_generation()
{
    static uint64_t generation = 1000;
    return ++generation;
}

config::ip_prefix pfx(const std::string& text)
{
    const auto p = config::parse_prefix(text);
    if (!p) {
        throw std::logic_error("test bug: " + text);
    }
    return *p;
}

sa_runtime* fake_sa(uintptr_t n) { return reinterpret_cast<sa_runtime*>(n * 64); } // never dereferenced

spd_entry operator_policy(const std::string& local, const std::string& remote, policy_action action,
                          uint32_t priority, uint32_t id)
{
    spd_entry e;
    e.policy.local = pfx(local);
    e.policy.remote = pfx(remote);
    e.policy.action = action;
    e.policy.priority = priority;
    e.id = id;
    return e;
}

spd_entry implied(const std::string& local, const std::string& remote, uint32_t spi, bool inbound)
{
    spd_entry e;
    e.policy.local = pfx(local);
    e.policy.remote = pfx(remote);
    e.policy.action = policy_action::protect;
    e.policy.priority = 1000;
    e.policy.spi = spi;
    e.implied = true;
    e.inbound_check = inbound;
    e.sa = inbound ? nullptr : fake_sa(spi);
    return e;
}

spd_rule implied_rule(uint32_t spi, bool inbound)
{
    spd_rule r;
    r.action = policy_action::protect;
    r.sa = inbound ? nullptr : fake_sa(spi);
    r.priority = 1000;
    r.order = implied_order(spi);
    return r;
}

// A worker's view: an rte_acl level, the main lcore's host set and one worker table fed from it.
struct two_levels {
    std::unique_ptr<compiled_spd> acl;
    host_policies main{1 << 10};
    host_spd table{"t_hspd" + std::to_string(++instances), 1 << 10, SOCKET_ID_ANY};
    static inline int instances = 0;

    void set_acl(const std::vector<spd_entry>& entries) { acl = std::make_unique<compiled_spd>(entries, next_generation()); }
    bool add(const spd_entry& e)
    {
        const bool ok = main.add(e.inbound_check ? host_category::inbound_check : host_category::outbound,
                                 e.policy.local, e.policy.remote, implied_rule(e.policy.spi, e.inbound_check));
        publish();
        return ok;
    }
    bool remove(const spd_entry& e)
    {
        const bool ok = main.remove(e.inbound_check ? host_category::inbound_check : host_category::outbound,
                                    e.policy.local, e.policy.remote, implied_order(e.policy.spi));
        publish();
        return ok;
    }
    void publish()
    {
        for (const auto& u : main.take_updates()) {
            if (u.remove) {
                table.remove(u.bucket);
            } else {
                table.set(u.bucket);
            }
        }
        main.release_retired();
    }
};

spd_key key4(const std::string& src, const std::string& dst, uint8_t protocol = 6, uint16_t dport = 443)
{
    spd_key k{};
    k.protocol = protocol;
    std::memcpy(&k.source, pfx(src).address.bytes.data(), 4);
    std::memcpy(&k.destination, pfx(dst).address.bytes.data(), 4);
    k.source_port = rte_cpu_to_be_16(1000);
    k.destination_port = rte_cpu_to_be_16(dport);
    return k;
}

spd6_key key6(const std::string& src, const std::string& dst)
{
    spd6_key k{};
    k.protocol = 17;
    std::memcpy(k.source, pfx(src).address.bytes.data(), 16);
    std::memcpy(k.destination, pfx(dst).address.bytes.data(), 16);
    k.source_port = rte_cpu_to_be_16(1000);
    k.destination_port = rte_cpu_to_be_16(2000);
    return k;
}

struct verdict {
    const spd_rule* out = nullptr;
    const spd_rule* in = nullptr;
};

verdict classify_one(const two_levels& t, const spd_key& k, inbound_scope scope = inbound_scope::without_outbound)
{
    const spd_key* p = &k;
    verdict v;
    classify(t.acl.get(), t.table, &p, &v.out, &v.in, 1, scope);
    return v;
}

verdict classify_one6(const two_levels& t, const spd6_key& k, inbound_scope scope = inbound_scope::without_outbound)
{
    const spd6_key* p = &k;
    verdict v;
    classify6(t.acl.get(), t.table, &p, &v.out, &v.in, 1, scope);
    return v;
}

// The two levels' verdict for every (source, destination) pair against `oracle`, one rte_acl over
// every entry: the same outbound rule (action, SA, id) and, where no outbound rule decides, the same
// inbound check; with inbound_scope::every_packet the same inbound check for every pair. Call with
// ASSERT_NO_FATAL_FAILURE.
void expect_oracle_verdicts(const compiled_spd& oracle, const two_levels& t, std::span<const char* const> sources,
                            std::span<const char* const> destinations, const std::string& label)
{
    for (const char* src : sources) {
        for (const char* dst : destinations) {
            const spd_key k = key4(src, dst);
            const spd_key* p = &k;
            uint32_t out = 0;
            uint32_t in = 0;
            oracle.classify(&p, &out, &in, 1);
            const verdict v = classify_one(t, k);
            const std::string where = label + " " + src + " -> " + dst;
            ASSERT_EQ(out == 0, v.out == nullptr) << where;
            if (out != 0) {
                const spd_rule& want = oracle.rule(out);
                EXPECT_EQ(want.action, v.out->action) << where;
                EXPECT_EQ(want.sa, v.out->sa) << where;
                EXPECT_EQ(want.id, v.out->id) << where;
            } else {
                ASSERT_EQ(in == 0, v.in == nullptr) << where;
                if (in != 0) {
                    EXPECT_EQ(oracle.rule(in).action, v.in->action) << where;
                }
            }
            const verdict every = classify_one(t, k, inbound_scope::every_packet);
            EXPECT_EQ(every.out, v.out) << where << " (every_packet)";
            ASSERT_EQ(in == 0, every.in == nullptr) << where << " (every_packet)";
            if (in != 0) {
                EXPECT_EQ(oracle.rule(in).action, every.in->action) << where << " (every_packet)";
                EXPECT_EQ(oracle.rule(in).id, every.in->id) << where << " (every_packet)";
            }
        }
    }
}

TEST(spd_levels, host_policy_protects_without_rte_acl)
{
    two_levels t;
    ASSERT_TRUE(t.add(implied("192.168.1.0/24", "10.0.0.7/32", 0x1001, false)));
    EXPECT_TRUE(t.table.empty(host_category::inbound_check));
    EXPECT_FALSE(t.table.empty(host_category::outbound));
    verdict v = classify_one(t, key4("192.168.1.5", "10.0.0.7"));
    ASSERT_NE(v.out, nullptr);
    EXPECT_EQ(v.out->sa, fake_sa(0x1001));
    // Source outside the local selector, other destination: no policy.
    EXPECT_EQ(classify_one(t, key4("192.168.9.5", "10.0.0.7")).out, nullptr);
    EXPECT_EQ(classify_one(t, key4("192.168.1.5", "10.0.0.8")).out, nullptr);
}

TEST(spd_levels, operator_policies_outrank_implied_host_policies_by_priority)
{
    two_levels t;
    // bypass at priority 0 (the default) wins over the implied protect at 1000; a trap at 2000 loses.
    t.set_acl({operator_policy("192.168.1.0/24", "10.0.0.7/32", policy_action::bypass, 0, 1),
               operator_policy("192.168.2.0/24", "10.0.0.0/8", policy_action::trap, 2000, 2),
               operator_policy("192.168.3.0/24", "10.0.0.0/8", policy_action::discard, 1000, 3)});
    t.add(implied("192.168.0.0/16", "10.0.0.7/32", 0x2001, false));
    verdict v = classify_one(t, key4("192.168.1.5", "10.0.0.7"));
    ASSERT_NE(v.out, nullptr);
    EXPECT_EQ(v.out->action, policy_action::bypass);
    EXPECT_EQ(v.out->id, 1U);
    v = classify_one(t, key4("192.168.2.5", "10.0.0.7"));
    ASSERT_NE(v.out, nullptr);
    EXPECT_EQ(v.out->action, policy_action::protect) << "the SA IKE installed beats its trap";
    EXPECT_EQ(v.out->sa, fake_sa(0x2001));
    v = classify_one(t, key4("192.168.2.5", "10.0.0.9"));
    ASSERT_NE(v.out, nullptr);
    EXPECT_EQ(v.out->action, policy_action::trap) << "no SA for this host yet: the trap";
    // Equal priority: operator policies come before implied ones (RFC 4301 ordered SPD, file first).
    v = classify_one(t, key4("192.168.3.5", "10.0.0.7"));
    ASSERT_NE(v.out, nullptr);
    EXPECT_EQ(v.out->action, policy_action::discard);
}

TEST(spd_levels, equal_implied_policies_pick_the_lowest_spi_across_levels)
{
    two_levels t;
    // An implied prefix policy (rte_acl) and implied host policies (rekey overlap) for the same traffic.
    t.set_acl({implied("192.168.1.0/24", "10.0.0.0/24", 0x3000, false)});
    t.add(implied("192.168.1.0/24", "10.0.0.7/32", 0x3005, false));
    t.add(implied("192.168.1.0/24", "10.0.0.7/32", 0x3002, false));
    EXPECT_EQ(classify_one(t, key4("192.168.1.5", "10.0.0.7")).out->sa, fake_sa(0x3000));
    t.set_acl({implied("192.168.1.0/24", "10.0.0.0/24", 0x3009, false)});
    EXPECT_EQ(classify_one(t, key4("192.168.1.5", "10.0.0.7")).out->sa, fake_sa(0x3002));
    // Deletes: the next candidate, then the rte_acl rule, then nothing.
    ASSERT_TRUE(t.remove(implied("192.168.1.0/24", "10.0.0.7/32", 0x3002, false)));
    EXPECT_EQ(classify_one(t, key4("192.168.1.5", "10.0.0.7")).out->sa, fake_sa(0x3005));
    EXPECT_FALSE(t.remove(implied("192.168.1.0/24", "10.0.0.7/32", 0x3002, false))) << "already gone";
    ASSERT_TRUE(t.remove(implied("192.168.1.0/24", "10.0.0.7/32", 0x3005, false)));
    EXPECT_TRUE(t.table.empty(host_category::outbound));
    EXPECT_EQ(t.main.keys(), 0U);
    EXPECT_EQ(classify_one(t, key4("192.168.1.5", "10.0.0.7")).out->sa, fake_sa(0x3009));
    t.set_acl({});
    EXPECT_EQ(classify_one(t, key4("192.168.1.5", "10.0.0.7")).out, nullptr);
}

TEST(spd_levels, candidates_of_one_host_are_told_apart_by_local_selector)
{
    two_levels t;
    t.add(implied("192.168.1.0/24", "10.0.0.7/32", 0x4001, false));
    t.add(implied("192.168.2.128/25", "10.0.0.7/32", 0x4002, false));
    t.add(implied("0.0.0.0/0", "10.0.0.7/32", 0x4003, false));
    EXPECT_EQ(classify_one(t, key4("192.168.1.5", "10.0.0.7")).out->sa, fake_sa(0x4001));
    EXPECT_EQ(classify_one(t, key4("192.168.2.200", "10.0.0.7")).out->sa, fake_sa(0x4002));
    EXPECT_EQ(classify_one(t, key4("192.168.2.100", "10.0.0.7")).out->sa, fake_sa(0x4003));
}

TEST(spd_levels, inbound_check_from_a_host_only_where_no_outbound_rule_decides)
{
    two_levels t;
    t.set_acl({operator_policy("192.168.1.0/24", "10.0.0.0/24", policy_action::bypass, 0, 7)});
    t.add(implied("192.168.0.0/16", "10.0.0.7/32", 0, true));
    EXPECT_TRUE(t.table.empty(host_category::outbound));
    // Cleartext from the remote host to the local side: an inbound SA should have carried it.
    verdict v = classify_one(t, key4("10.0.0.7", "192.168.5.5"));
    EXPECT_EQ(v.out, nullptr);
    ASSERT_NE(v.in, nullptr);
    EXPECT_EQ(v.in->action, policy_action::protect);
    // The other way round, or another host: not an inbound match.
    EXPECT_EQ(classify_one(t, key4("192.168.5.5", "10.0.0.7")).in, nullptr);
    EXPECT_EQ(classify_one(t, key4("10.0.0.8", "192.168.5.5")).in, nullptr);
    ASSERT_TRUE(t.remove(implied("192.168.0.0/16", "10.0.0.7/32", 0, true)));
    EXPECT_EQ(classify_one(t, key4("10.0.0.7", "192.168.5.5")).in, nullptr);
}

// Cleartext addressed to the gateway itself gets its inbound check whatever outbound rule its
// mirrored selectors match (inbound_scope::every_packet); transit traffic only where none does.
TEST(spd_levels, every_packet_scope_answers_the_host_inbound_check_behind_an_outbound_match)
{
    two_levels t;
    t.set_acl({operator_policy("0.0.0.0/0", "0.0.0.0/0", policy_action::bypass, 0, 3),
               operator_policy("::/0", "::/0", policy_action::bypass, 0, 4)});
    t.add(implied("192.168.0.0/16", "10.0.0.7/32", 0, true));
    t.add(implied("2001:db8:1::/48", "2001:db8:ff::8/128", 0, true));
    const verdict transit = classify_one(t, key4("10.0.0.7", "192.168.5.5"), inbound_scope::without_outbound);
    ASSERT_NE(transit.out, nullptr);
    EXPECT_EQ(transit.out->action, policy_action::bypass);
    const verdict to_us = classify_one(t, key4("10.0.0.7", "192.168.5.5"), inbound_scope::every_packet);
    ASSERT_NE(to_us.out, nullptr);
    EXPECT_EQ(to_us.out->id, 3U);
    ASSERT_NE(to_us.in, nullptr);
    EXPECT_EQ(to_us.in->action, policy_action::protect);
    const verdict to_us6 =
        classify_one6(t, key6("2001:db8:ff::8", "2001:db8:1:9::1"), inbound_scope::every_packet);
    ASSERT_NE(to_us6.out, nullptr);
    EXPECT_EQ(to_us6.out->id, 4U);
    ASSERT_NE(to_us6.in, nullptr);
    EXPECT_EQ(to_us6.in->action, policy_action::protect);
    EXPECT_EQ(classify_one(t, key4("10.0.0.8", "192.168.5.5"), inbound_scope::every_packet).in, nullptr);
}

// A rule whose port range is empty (minimum above maximum; the loader refuses them, an entry built
// otherwise might not) matches nothing in the IPv4 walk, as in rte_acl.
TEST(spd_linear, an_empty_port_range_matches_nothing)
{
    spd_entry e = operator_policy("192.168.1.0/24", "10.0.0.0/8", policy_action::discard, 0, 1);
    e.policy.remote_port_min = 500;
    e.policy.remote_port_max = 400;
    compiled_spd spd({e}, next_generation());
    ASSERT_TRUE(spd.linear4());
    for (uint16_t port : {0, 399, 400, 450, 500, 501, 65535}) {
        spd_key k = key4("192.168.1.5", "10.1.2.3", 6, port);
        const spd_key* kp = &k;
        uint32_t out = 0;
        uint32_t in = 0;
        spd.classify(&kp, &out, &in, 1);
        EXPECT_EQ(out, 0U) << port;
    }
}

TEST(spd_levels, ipv6_host_policies)
{
    two_levels t;
    t.set_acl({operator_policy("2001:db8:1:5::/64", "::/0", policy_action::discard, 0, 9)});
    t.add(implied("2001:db8:1::/48", "2001:db8:ff::7/128", 0x5001, false));
    t.add(implied("2001:db8:1::/48", "2001:db8:ff::8/128", 0, true));
    verdict v = classify_one6(t, key6("2001:db8:1:9::1", "2001:db8:ff::7"));
    ASSERT_NE(v.out, nullptr);
    EXPECT_EQ(v.out->sa, fake_sa(0x5001));
    EXPECT_EQ(classify_one6(t, key6("2001:db8:1:5::1", "2001:db8:ff::7")).out->action, policy_action::discard);
    EXPECT_EQ(classify_one6(t, key6("2001:db8:2::1", "2001:db8:ff::7")).out, nullptr) << "outside the /48";
    EXPECT_NE(classify_one6(t, key6("2001:db8:ff::8", "2001:db8:1:9::1")).in, nullptr);
    // An IPv4 packet whose destination bytes equal the start of the IPv6 host is another key.
    EXPECT_EQ(classify_one(t, key4("32.1.13.184", "32.1.13.184")).out, nullptr);
    // After lookups warmed the table's memo: a remove, then another SA for the host.
    const auto victim = implied("2001:db8:1::/48", "2001:db8:ff::7/128", 0x5001, false);
    ASSERT_TRUE(t.remove(victim));
    EXPECT_EQ(classify_one6(t, key6("2001:db8:1:9::1", "2001:db8:ff::7")).out, nullptr);
    ASSERT_TRUE(t.add(implied("2001:db8:1::/48", "2001:db8:ff::7/128", 0x5002, false)));
    v = classify_one6(t, key6("2001:db8:1:9::1", "2001:db8:ff::7"));
    ASSERT_NE(v.out, nullptr);
    EXPECT_EQ(v.out->sa, fake_sa(0x5002));
    // An IPv6 host whose bytes start as an IPv4 address's, the rest zero: keys of other families.
    ASSERT_TRUE(t.add(implied("2001:db8:1::/48", "2001:db8::/128", 0x5003, false)));
    ASSERT_TRUE(t.add(implied("32.1.0.0/16", "32.1.13.185/32", 0x5004, false)));
    EXPECT_EQ(classify_one(t, key4("32.1.13.184", "32.1.13.184")).out, nullptr);
    EXPECT_EQ(classify_one6(t, key6("2001:db8:1:9::1", "2001:db8:0:0:0:0:0:0")).out->sa, fake_sa(0x5003));
    EXPECT_EQ(classify_one(t, key4("32.1.13.184", "32.1.13.185")).out->sa, fake_sa(0x5004));
    // Hosts that differ only in the last byte, or only in the first half, are other keys.
    EXPECT_EQ(classify_one6(t, key6("2001:db8:1:9::1", "2001:db8:ff::6")).out, nullptr);
    EXPECT_EQ(classify_one6(t, key6("2001:db8:1:9::1", "2001:db9:ff::7")).out, nullptr);
}

TEST(spd_levels, full_table_refuses_new_hosts_but_extends_known_ones)
{
    host_policies main(2);
    const auto rule = implied_rule(0x100, false);
    EXPECT_TRUE(main.add(host_category::outbound, pfx("0.0.0.0/0"), pfx("10.0.0.1/32"), rule));
    EXPECT_TRUE(main.add(host_category::outbound, pfx("0.0.0.0/0"), pfx("10.0.0.2/32"), rule));
    EXPECT_FALSE(main.add(host_category::outbound, pfx("0.0.0.0/0"), pfx("10.0.0.3/32"), rule));
    EXPECT_TRUE(main.add(host_category::outbound, pfx("192.168.0.0/16"), pfx("10.0.0.2/32"), rule));
    EXPECT_EQ(main.keys(), 2U);
    EXPECT_TRUE(host_policies::is_host(pfx("10.0.0.1/32")));
    EXPECT_TRUE(host_policies::is_host(pfx("2001:db8::1/128")));
    EXPECT_FALSE(host_policies::is_host(pfx("10.0.0.0/31")));
}

// Buckets come from their slot pool, aligned for their first cache line, and go back to it when the
// last reference (table or retired list) lets go.
TEST(spd_levels, buckets_come_from_their_pool_and_go_back)
{
    slot_pool& pool = host_bucket_pool();
    const size_t before = pool.in_use();
    {
        host_policies main(8);
        const auto rule = implied_rule(0x100, false);
        ASSERT_TRUE(main.add(host_category::outbound, pfx("0.0.0.0/0"), pfx("10.0.0.1/32"), rule));
        EXPECT_EQ(pool.in_use(), before + 1);
        const host_bucket* b = main.find(make_host_key(host_category::outbound, pfx("10.0.0.1/32")));
        ASSERT_NE(b, nullptr);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 64, 0U);
        // A second candidate replaces the bucket: the old one is retired until released.
        ASSERT_TRUE(main.add(host_category::outbound, pfx("192.168.0.0/16"), pfx("10.0.0.1/32"),
                             implied_rule(0x101, false)));
        EXPECT_EQ(pool.in_use(), before + 2);
        main.release_retired();
        EXPECT_EQ(pool.in_use(), before + 1);
        ASSERT_TRUE(
            main.remove(host_category::outbound, pfx("0.0.0.0/0"), pfx("10.0.0.1/32"), implied_order(0x100)));
        main.release_retired();
        EXPECT_EQ(pool.in_use(), before + 1); // the bucket with the other candidate
    }
    EXPECT_EQ(pool.in_use(), before);
}

// After a round some worker may not have applied (gateway::publish_hosts' failures), the retired
// buckets are never freed: a worker may point at them for as long as it runs.
TEST(spd_levels, abandoned_buckets_are_never_freed)
{
    slot_pool& pool = host_bucket_pool();
    const size_t before = pool.in_use();
    const host_key key = make_host_key(host_category::outbound, pfx("10.0.0.1/32"));
    const host_bucket* old = nullptr;
    {
        host_policies main(8);
        ASSERT_TRUE(main.add(host_category::outbound, pfx("0.0.0.0/0"), pfx("10.0.0.1/32"), implied_rule(0x100, false)));
        old = main.find(key);
        ASSERT_TRUE(main.add(host_category::outbound, pfx("192.168.0.0/16"), pfx("10.0.0.1/32"),
                             implied_rule(0x101, false)));
        EXPECT_NE(main.find(key), old);
        main.abandon_retired();
        main.release_retired();
        EXPECT_EQ(pool.in_use(), before + 2);
    }
    EXPECT_EQ(pool.in_use(), before + 1); // the abandoned bucket's slot is never given back
    EXPECT_EQ(old->key, key);
    EXPECT_EQ(old->first.rule.sa, fake_sa(0x100));
}

// Random sets of operator and implied policies: the two levels agree with one rte_acl over all of them.
TEST(spd_levels, two_levels_agree_with_one_rte_acl_on_random_sets)
{
    std::mt19937 rng(4301);
    auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
    const char* locals[] = {"192.168.0.0/16", "192.168.1.0/24", "192.168.1.128/25", "192.168.1.5/32", "0.0.0.0/0"};
    const char* remotes[] = {"10.0.0.0/8", "10.0.0.0/24", "10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "0.0.0.0/0"};
    const char* hosts[] = {"10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "10.0.1.1/32"};
    const policy_action actions[] = {policy_action::bypass, policy_action::discard, policy_action::trap};
    const uint32_t priorities[] = {0, 500, 1000, 2000};
    for (int round = 0; round < 40; ++round) {
        std::vector<spd_entry> all;
        std::vector<spd_entry> acl_part;
        two_levels t;
        const int operators = pick(6);
        for (int i = 0; i < operators; ++i) {
            spd_entry e = operator_policy(locals[pick(5)], remotes[pick(6)], actions[pick(3)], priorities[pick(4)],
                                          static_cast<uint32_t>(i + 1));
            spd_entry mirror = e;
            mirror.inbound_check = true;
            for (const auto& x : {e, mirror}) {
                all.push_back(x);
                acl_part.push_back(x);
            }
        }
        std::vector<spd_entry> host_part;
        const int sas = 1 + pick(12);
        for (int i = 0; i < sas; ++i) {
            const bool inbound = pick(3) == 0;
            const bool host = pick(4) != 0;
            const std::string remote = host ? hosts[pick(4)] : remotes[pick(2)];
            // Inbound checks: one per selector pair, the order of SPI 0 (as the gateway keeps them).
            spd_entry e = implied(locals[pick(5)], remote, inbound ? 0 : 0x1000U + static_cast<uint32_t>(i), inbound);
            bool duplicate = false;
            for (const auto& x : all) {
                duplicate = duplicate || (inbound && x.implied && x.inbound_check &&
                                          x.policy.local == e.policy.local && x.policy.remote == e.policy.remote);
            }
            if (duplicate) {
                continue;
            }
            all.push_back(e);
            if (host) {
                host_part.push_back(e);
            } else {
                acl_part.push_back(e);
            }
        }
                t.set_acl(acl_part);
        for (const auto& e : host_part) {
            ASSERT_TRUE(t.add(e));
        }
        // Remove a host policy now and then (deletes must leave the same answers too).
        if (!host_part.empty() && pick(2) == 0) {
            const spd_entry victim = host_part[static_cast<size_t>(pick(static_cast<int>(host_part.size())))];
            ASSERT_TRUE(t.remove(victim));
            std::vector<spd_entry> rest;
            for (const auto& e : all) {
                if (!(e.implied && e.inbound_check == victim.inbound_check && e.policy.spi == victim.policy.spi &&
                      e.policy.local == victim.policy.local && e.policy.remote == victim.policy.remote)) {
                    rest.push_back(e);
                }
            }
            all = rest;
        }
        compiled_spd oracle2(all, next_generation(), 0); // rte_acl only
        const char* sources[] = {"192.168.1.5", "192.168.1.200", "192.168.7.1", "10.0.0.1", "10.0.0.2", "10.0.1.1",
                                 "172.16.0.1"};
        const char* destinations[] = {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1", "10.0.0.9", "192.168.1.5",
                                      "192.168.1.200", "172.16.0.1"};
        ASSERT_NO_FATAL_FAILURE(
            expect_oracle_verdicts(oracle2, t, sources, destinations, "round " + std::to_string(round)));
    }
}

// The worker table memoises its answers (answer_memo.h), including "no such host": after every
// add, replace (a second candidate for a known host) and remove, made while lookups have warmed the
// memo, the two levels must still answer what one rte_acl over the live entries answers.
TEST(spd_levels, answers_follow_every_change_between_lookups)
{
    std::mt19937 rng(4303);
    auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
    const char* locals[] = {"192.168.0.0/16", "192.168.1.0/24", "192.168.1.5/32", "0.0.0.0/0"};
    const char* hosts[] = {"10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "10.0.1.1/32", "192.168.1.5/32"};
    const char* sources[] = {"192.168.1.5", "192.168.1.200", "172.16.0.1", "10.0.0.1", "10.0.0.2", "10.0.1.1"};
    const char* destinations[] = {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1", "10.0.0.9", "192.168.1.5",
                                  "192.168.1.200"};
    std::vector<spd_entry> acl_part;
    acl_part.push_back(operator_policy("192.168.1.200/32", "10.0.0.0/24", policy_action::discard, 0, 1));
    spd_entry mirror = acl_part.back();
    mirror.inbound_check = true;
    acl_part.push_back(mirror);
    two_levels t;
    t.set_acl(acl_part);
    std::vector<spd_entry> live;
    uint32_t spi = 0x2000;
    unsigned adds = 0;
    unsigned removes = 0;
    for (int step = 0; step < 300; ++step) {
        if (live.empty() || pick(5) < 3) {
            const bool inbound = pick(3) == 0;
            spd_entry e = implied(locals[pick(4)], hosts[pick(5)], inbound ? 0 : ++spi, inbound);
            bool duplicate = false;
            for (const auto& x : live) {
                duplicate = duplicate || (inbound && x.inbound_check && x.policy.local == e.policy.local &&
                                          x.policy.remote == e.policy.remote);
            }
            if (duplicate) {
                continue;
            }
            ASSERT_TRUE(t.add(e));
            live.push_back(e);
            ++adds;
        } else {
            const auto victim = static_cast<size_t>(pick(static_cast<int>(live.size())));
            ASSERT_TRUE(t.remove(live[victim]));
            live.erase(live.begin() + static_cast<std::ptrdiff_t>(victim));
            ++removes;
        }
        std::vector<spd_entry> all = acl_part;
        all.insert(all.end(), live.begin(), live.end());
        compiled_spd oracle(all, next_generation(), 0); // rte_acl only
        ASSERT_NO_FATAL_FAILURE(expect_oracle_verdicts(oracle, t, sources, destinations, "step " + std::to_string(step)));
    }
    EXPECT_GT(adds, 100U);
    EXPECT_GT(removes, 50U);
}

// The linear walk of small rule sets must answer exactly what rte_acl answers (the same rule index
// for each category): random SPDs holding up to default_linear_max rules of each family, with
// protocols, port ranges, priorities, mirrored inbound checks, unset sides and IPv6 rules with an
// IPv4 side (rte_acl treats a side of the other family as any), against random keys of both
// families near the rules' boundaries.
TEST(spd_linear, small_rule_sets_answer_what_rte_acl_answers)
{
    std::mt19937 rng(4303);
    auto pick = [&](unsigned n) { return static_cast<unsigned>(rng() % n); };
    const char* v4[] = {"192.168.0.0/16", "192.168.1.0/24", "192.168.1.128/25", "192.168.1.5/32", "10.0.0.0/8",
                        "10.1.0.0/16", "10.1.2.3/32", "0.0.0.0/0"};
    const char* v6[] = {"2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::5/128", "2001:db8:1:0:8000::/65",
                        "fd00::/8", "fd00:1::/64", "::/0", "2001:db8:1::/127"};
    const uint8_t protocols[] = {0, 6, 17, 50};
    const uint32_t priorities[] = {0, 10, 500, 1000};
    const policy_action actions[] = {policy_action::bypass, policy_action::discard, policy_action::protect};
    for (int round = 0; round < 300; ++round) {
        std::vector<spd_entry> entries;
        uint32_t id = 0;
        for (const bool six : {false, true}) {
            const unsigned count = 1 + pick(compiled_spd::default_linear_max);
            for (unsigned i = 0; i < count; ++i) {
                // A side: the family's own prefix mostly, sometimes unset, an IPv6 rule's sometimes IPv4
                // (the rule stays IPv6 through its other side).
                auto side = [&](bool must_be_own) {
                    const unsigned kind = must_be_own ? 0 : pick(6);
                    if (kind == 4) {
                        return config::ip_prefix{};
                    }
                    if (kind == 5 && six) {
                        return pfx(v4[pick(8)]);
                    }
                    return pfx(six ? v6[pick(8)] : v4[pick(8)]);
                };
                spd_entry e = operator_policy("0.0.0.0/0", "0.0.0.0/0", actions[pick(3)], priorities[pick(4)], ++id);
                const bool own_local = pick(2) == 0;
                e.policy.local = side(own_local);
                e.policy.remote = side(!own_local);
                e.policy.protocol = protocols[pick(4)];
                e.policy.local_port_min = static_cast<uint16_t>(pick(2) == 0 ? 0 : 1000 + pick(100));
                e.policy.local_port_max =
                    static_cast<uint16_t>(pick(2) == 0 ? 65535 : e.policy.local_port_min + pick(50));
                e.policy.remote_port_min = static_cast<uint16_t>(pick(2) == 0 ? 0 : 400 + pick(100));
                e.policy.remote_port_max =
                    static_cast<uint16_t>(pick(2) == 0 ? 65535 : e.policy.remote_port_min + pick(50));
                e.inbound_check = pick(2) == 0;
                if (e.policy.action == policy_action::protect && !e.inbound_check) {
                    e.sa = fake_sa(id);
                }
                entries.push_back(e);
            }
        }
        compiled_spd linear(entries, next_generation());
        compiled_spd acl(entries, next_generation(), 0);
        ASSERT_TRUE(linear.linear4() && linear.linear6()) << "round " << round;
        ASSERT_FALSE(acl.linear4() || acl.linear6());
        for (int probe = 0; probe < 400; ++probe) {
            const bool six = (probe & 1) != 0;
            // Addresses from the rules' prefixes with a few bits flipped.
            auto address = [&](uint8_t* out) {
                const auto p = pfx(six ? v6[pick(8)] : v4[pick(8)]);
                const unsigned bytes = six ? 16 : 4;
                std::memcpy(out, p.address.bytes.data(), bytes);
                const unsigned flips = pick(3);
                for (unsigned f = 0; f < flips; ++f) {
                    const unsigned bit = pick(bytes * 8);
                    out[bit / 8] = static_cast<uint8_t>(out[bit / 8] ^ (0x80U >> (bit % 8)));
                }
            };
            const uint8_t protocol = protocols[pick(4)] == 0 ? 1 : protocols[pick(4)];
            const auto sport = static_cast<uint16_t>(pick(4) == 0 ? pick(65536) : 990 + pick(170));
            const auto dport = static_cast<uint16_t>(pick(4) == 0 ? pick(65536) : 390 + pick(170));
            uint32_t want[2] = {};
            uint32_t got[2] = {};
            uint32_t transit[2] = {};
            if (six) {
                spd6_key k{};
                k.protocol = protocol;
                address(k.source);
                address(k.destination);
                k.source_port = rte_cpu_to_be_16(sport);
                k.destination_port = rte_cpu_to_be_16(dport);
                const spd6_key* kp = &k;
                acl.classify6(&kp, &want[0], &want[1], 1);
                linear.classify6(&kp, &got[0], &got[1], 1);
                linear.classify6(&kp, &transit[0], &transit[1], 1, inbound_scope::without_outbound);
            } else {
                spd_key k{};
                k.protocol = protocol;
                address(reinterpret_cast<uint8_t*>(&k.source));
                address(reinterpret_cast<uint8_t*>(&k.destination));
                k.source_port = rte_cpu_to_be_16(sport);
                k.destination_port = rte_cpu_to_be_16(dport);
                const spd_key* kp = &k;
                acl.classify(&kp, &want[0], &want[1], 1);
                linear.classify(&kp, &got[0], &got[1], 1);
                linear.classify(&kp, &transit[0], &transit[1], 1, inbound_scope::without_outbound);
            }
            ASSERT_EQ(got[0], want[0]) << "round " << round << " probe " << probe << " (outbound)";
            ASSERT_EQ(got[1], want[1]) << "round " << round << " probe " << probe << " (inbound check)";
            // The transit walk stops at the outbound winner: the same outbound answer, and the inbound
            // check wherever no outbound rule matched.
            ASSERT_EQ(transit[0], want[0]) << "round " << round << " probe " << probe << " (transit outbound)";
            if (want[0] == 0) {
                ASSERT_EQ(transit[1], want[1]) << "round " << round << " probe " << probe << " (transit inbound)";
            }
        }
    }
}

// Past default_linear_max rules a family goes to rte_acl; each family is decided on its own.
TEST(spd_linear, large_rule_sets_use_rte_acl)
{
    std::vector<spd_entry> entries;
    for (uint32_t i = 0; i <= compiled_spd::default_linear_max; ++i) {
        entries.push_back(operator_policy("192.168." + std::to_string(i) + ".0/24", "10.0.0.0/8",
                                          policy_action::bypass, 0, i + 1));
    }
    entries.push_back(operator_policy("2001:db8::/32", "fd00::/8", policy_action::discard, 0, 100));
    compiled_spd spd(entries, next_generation());
    EXPECT_FALSE(spd.linear4());
    EXPECT_TRUE(spd.linear6());
    const spd_key k = key4("192.168.3.7", "10.9.9.9");
    const spd_key* kp = &k;
    uint32_t out = 0;
    uint32_t in = 0;
    spd.classify(&kp, &out, &in, 1);
    ASSERT_NE(out, 0U);
    EXPECT_EQ(spd.rule(out).id, 4U);
    EXPECT_EQ(in, 0U);
}

} // namespace
} // namespace espresso::dp
