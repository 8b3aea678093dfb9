// Tests for dataplane/src/sa_groups.h: the worker's grouping of a pass's packets by SA. Whatever the
// pattern (one SA, SAs interleaved, every packet a different SA, a pass added in pieces), the groups
// must be those of a plain reference grouping: one group per distinct SA in order of first
// appearance, each SA's packets in arrival order; and a full table must say how much it took.
// sa_groups never dereferences its SA or mbuf pointers, so both are fake addresses here (SAs 3072
// bytes apart, as the pool places them).
#include "sa_groups.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <random>
#include <vector>

namespace espresso::dp {
namespace {

sa_runtime* fake_sa(unsigned k)
{
    return reinterpret_cast<sa_runtime*>(uintptr_t{0x10000000} + uintptr_t{k} * 3072);
}
rte_mbuf* fake_mbuf(unsigned i) { return reinterpret_cast<rte_mbuf*>(uintptr_t{0x70000000} + uintptr_t{i} * 64); }

struct pass {
    std::vector<sa_runtime*> sas;
    std::vector<rte_mbuf*> pkts;
};

pass make_pass(const std::vector<unsigned>& sa_of_packet)
{
    pass p;
    for (unsigned i = 0; i < sa_of_packet.size(); ++i) {
        p.sas.push_back(fake_sa(sa_of_packet[i]));
        p.pkts.push_back(fake_mbuf(i));
    }
    return p;
}

// Checks `g` (after finish()) against the reference grouping of packets [from, to) of `p`.
void expect_groups(sa_groups& g, const pass& p, size_t from, size_t to)
{
    std::vector<sa_runtime*> order;
    std::map<sa_runtime*, std::vector<rte_mbuf*>> want;
    for (size_t i = from; i < to; ++i) {
        if (want.find(p.sas[i]) == want.end()) {
            order.push_back(p.sas[i]);
        }
        want[p.sas[i]].push_back(p.pkts[i]);
    }
    rte_mbuf** ordered = g.finish();
    ASSERT_EQ(g.n, order.size());
    ASSERT_EQ(g.total, to - from);
    for (unsigned k = 0; k < g.n; ++k) {
        ASSERT_EQ(g.sa[k], order[k]) << "group " << k;
        const std::vector<rte_mbuf*>& w = want[order[k]];
        ASSERT_EQ(g.count[k], w.size()) << "group " << k;
        for (unsigned j = 0; j < w.size(); ++j) {
            EXPECT_EQ(ordered[g.first[k] + j], w[j]) << "group " << k << " packet " << j;
        }
    }
}

// Adds the whole pass with add_all, processing (checking) and clearing the table whenever it is
// full, as worker.cpp's decapsulate does.
void add_pass(const pass& p)
{
    sa_groups g;
    size_t done = 0;
    size_t from = 0;
    while (done < p.sas.size()) {
        const unsigned added = g.add_all(p.sas.data() + done, p.pkts.data() + done,
                                         static_cast<unsigned>(p.sas.size() - done));
        done += added;
        if (done < p.sas.size()) {
            ASSERT_TRUE(g.n == sa_groups::max_groups || g.total == sa_groups::max_packets)
                << "add_all stopped early with room left: " << g.n << " groups, " << g.total << " packets";
            if (g.total < sa_groups::max_packets) {
                // Stopped for want of a group: the next packet's SA must be a new one.
                for (unsigned k = 0; k < g.n; ++k) {
                    ASSERT_NE(g.sa[k], p.sas[done]) << "stopped before a packet of an SA it already had";
                }
            }
            expect_groups(g, p, from, done);
            g.clear();
            from = done;
        }
    }
    expect_groups(g, p, from, done);
}

TEST(SaGroups, OneSaIsOneGroupInOrder)
{
    add_pass(make_pass(std::vector<unsigned>(64, 7)));
}

TEST(SaGroups, InterleavedSasMergeIntoOneGroupEach)
{
    std::vector<unsigned> sas;
    for (unsigned i = 0; i < 64; ++i) {
        sas.push_back(i % 4); // A B C D A B C D ...
    }
    add_pass(make_pass(sas));
    sas = {1, 1, 2, 1, 1, 1, 3, 2, 2, 1};
    add_pass(make_pass(sas));
}

TEST(SaGroups, EverySaDifferent)
{
    std::vector<unsigned> sas;
    for (unsigned i = 0; i < 128; ++i) {
        sas.push_back(1000 + i);
    }
    add_pass(make_pass(sas));
}

TEST(SaGroups, FullOfGroupsTakesWhatFits)
{
    std::vector<unsigned> sas;
    for (unsigned i = 0; i < sa_groups::max_groups + 10; ++i) {
        sas.push_back(i);
    }
    pass p = make_pass(sas);
    sa_groups g;
    EXPECT_EQ(g.add_all(p.sas.data(), p.pkts.data(), static_cast<unsigned>(sas.size())), sa_groups::max_groups);
    add_pass(p);
}

TEST(SaGroups, FullOfGroupsStillTakesKnownSas)
{
    // max_groups SAs, then packets of SAs the table already has: they fit; the next new SA does not,
    // and neither add_all nor add() changes anything then.
    std::vector<unsigned> sas;
    for (unsigned i = 0; i < sa_groups::max_groups; ++i) {
        sas.push_back(i);
    }
    sas.push_back(0);
    sas.push_back(5);
    sas.push_back(sa_groups::max_groups + 1); // new
    sas.push_back(3);
    pass p = make_pass(sas);
    sa_groups g;
    const unsigned known = sa_groups::max_groups + 2;
    EXPECT_EQ(g.add_all(p.sas.data(), p.pkts.data(), static_cast<unsigned>(sas.size())), known);
    EXPECT_EQ(g.add_all(p.sas.data() + known, p.pkts.data() + known, 2), 0U);
    EXPECT_FALSE(g.add(p.sas[known], p.pkts[known]));
    EXPECT_TRUE(g.add(p.sas[known + 1], p.pkts[known + 1])); // a known SA after the refusals
    pass expected = make_pass({});
    for (unsigned i = 0; i < sas.size(); ++i) {
        if (i != known) {
            expected.sas.push_back(p.sas[i]);
            expected.pkts.push_back(p.pkts[i]);
        }
    }
    expect_groups(g, expected, 0, expected.sas.size());
}

TEST(SaGroups, FullOfPacketsTakesWhatFits)
{
    // A run that crosses the packet limit is split; an SA seen before keeps its group.
    std::vector<unsigned> sas(sa_groups::max_packets - 3, 5);
    sas.push_back(6);
    for (unsigned i = 0; i < 10; ++i) {
        sas.push_back(5);
    }
    pass p = make_pass(sas);
    sa_groups g;
    EXPECT_EQ(g.add_all(p.sas.data(), p.pkts.data(), static_cast<unsigned>(sas.size())), sa_groups::max_packets);
    EXPECT_EQ(g.add_all(p.sas.data(), p.pkts.data(), 1), 0U); // full: nothing taken, nothing changed
    EXPECT_EQ(g.total, sa_groups::max_packets);
    add_pass(p);
}

TEST(SaGroups, AddedInPiecesAndMixedWithAdd)
{
    // add_all continues from what the table holds (the previous run's SA included), and the
    // per-packet add() of the outbound path sees the same groups.
    pass p = make_pass({3, 3, 3, 4, 4, 3, 5, 5, 4, 3});
    sa_groups g;
    EXPECT_EQ(g.add_all(p.sas.data(), p.pkts.data(), 2), 2U);
    EXPECT_EQ(g.add_all(p.sas.data() + 2, p.pkts.data() + 2, 3), 3U);
    EXPECT_TRUE(g.add(p.sas[5], p.pkts[5]));
    EXPECT_EQ(g.add_all(p.sas.data() + 6, p.pkts.data() + 6, 4), 4U);
    expect_groups(g, p, 0, p.sas.size());
}

TEST(SaGroups, RandomPatternsMatchTheReference)
{
    std::mt19937 rng(29);
    for (int round = 0; round < 300; ++round) {
        const unsigned distinct = 1 + rng() % 200;
        const unsigned len = 1 + rng() % 400;
        std::vector<unsigned> sas;
        while (sas.size() < len) {
            const unsigned sa = rng() % distinct;
            const unsigned run = 1 + (rng() % 4 == 0 ? rng() % 20 : 0);
            for (unsigned k = 0; k < run && sas.size() < len; ++k) {
                sas.push_back(sa);
            }
        }
        SCOPED_TRACE("round " + std::to_string(round));
        add_pass(make_pass(sas));
        if (HasFatalFailure()) {
            return;
        }
    }
}

} // namespace
} // namespace espresso::dp
