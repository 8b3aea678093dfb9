// Tests for controlplane/ike/nat_keepalive.cpp: RFC 3948 §4 keepalives only when nothing else went to
// the peer within the interval (IKE messages, ESP seen in the data plane's counters).
#include <gtest/gtest.h>

#include <optional>
#include <vector>

#include "espresso/config/types.h"
#include "nat_keepalive.h"

namespace espresso::cp {
namespace {

using namespace std::chrono_literals;
using time_point = nat_keepalive::time_point;
using verdict = nat_keepalive::verdict;

endpoint ep(const char* address, uint16_t port) { return endpoint{*config::parse_address(address), port}; }

const endpoint local = ep("198.51.100.1", 4500);
const endpoint peer = ep("203.0.113.1", 4500);
constexpr auto interval = std::chrono::seconds(20);
const time_point t0 = time_point{} + 1h;

// One outbound Child SA (SPI 0x1001) whose counter reads `packets`; nullopt: the read fails.
struct esp_reader {
    std::optional<uint64_t> packets;
    int reads = 0;
    nat_keepalive::esp_counts operator()()
    {
        ++reads;
        return packets ? nat_keepalive::esp_counts{{0x1001, *packets}} : nat_keepalive::esp_counts{};
    }
};

// The shard's pass (ike_shards.cpp) every `step` from `from` to `to`; `traffic(t)` adds the ESP sent
// up to t. Returns when keepalives went.
template <typename Traffic>
std::vector<time_point> passes(nat_keepalive& k, esp_reader& esp, time_point from, time_point to,
                               std::chrono::steady_clock::duration step, std::chrono::steady_clock::duration ival,
                               Traffic traffic)
{
    std::vector<time_point> sent;
    for (time_point t = from; t <= to; t += step) {
        traffic(t);
        if (k.due(local, peer, t, ival, std::ref(esp))) {
            sent.push_back(t);
        }
    }
    return sent;
}

TEST(NatKeepalive, IdlePeerGetsOneKeepalivePerInterval)
{
    nat_keepalive k;
    esp_reader esp{100};
    EXPECT_FALSE(k.due(local, peer, t0, interval, std::ref(esp))); // first sight: just established
    EXPECT_EQ(esp.reads, 1);                                       // the baseline
    EXPECT_FALSE(k.due(local, peer, t0 + 9s, interval, std::ref(esp)));
    EXPECT_EQ(esp.reads, 1); // nothing read in the first half interval
    const auto sent = passes(k, esp, t0 + 10s, t0 + 100s, 1s, interval, [](time_point) {});
    EXPECT_EQ(sent, (std::vector<time_point>{t0 + 20s, t0 + 40s, t0 + 60s, t0 + 80s, t0 + 100s}));
    EXPECT_LE(esp.reads, 1 + 2 * 5 + 1); // about two readings per interval
    EXPECT_EQ(k.due(local, peer, t0 + 120s, interval, std::ref(esp)).what, verdict::idle);
}

TEST(NatKeepalive, AnIkeMessageWithinTheIntervalSuppressesIt)
{
    nat_keepalive k;
    esp_reader esp{100};
    EXPECT_FALSE(k.due(local, peer, t0, interval, std::ref(esp)));
    k.sent(local, peer, t0 + 15s); // a DPD request, say
    EXPECT_FALSE(k.due(local, peer, t0 + 20s, interval, std::ref(esp)));
    EXPECT_EQ(esp.reads, 1); // the IKE message is recent: not even a reading
    EXPECT_FALSE(k.due(local, peer, t0 + 34s, interval, std::ref(esp)));
    EXPECT_TRUE(k.due(local, peer, t0 + 35s, interval, std::ref(esp)));
    // Another peer's messages do not count for this one.
    k.sent(local, ep("203.0.113.2", 4500), t0 + 50s);
    k.sent(local, ep("203.0.113.1", 40500), t0 + 50s);
    EXPECT_TRUE(k.due(local, peer, t0 + 55s, interval, std::ref(esp)));
}

TEST(NatKeepalive, SteadyEspSendsNoKeepaliveAndAGapNeverExceedsTheInterval)
{
    nat_keepalive k;
    esp_reader esp{0};
    EXPECT_FALSE(k.due(local, peer, t0, interval, std::ref(esp)));
    // A packet every 3 s for 100 s: not one keepalive.
    time_point last_esp = t0;
    auto every_3s = [&](time_point t) {
        if (t - last_esp >= 3s) {
            ++*esp.packets;
            last_esp = t;
        }
    };
    EXPECT_TRUE(passes(k, esp, t0 + 1s, t0 + 100s, 1s, interval, every_3s).empty());
    EXPECT_LE(esp.reads, 1 + 2 * 5 + 1);
    // Then silence: the first keepalive at most one interval (plus a pass) after the last packet.
    const auto sent = passes(k, esp, t0 + 101s, t0 + 160s, 1s, interval, [](time_point) {});
    ASSERT_FALSE(sent.empty());
    EXPECT_LE(sent.front() - last_esp, interval + 1s);
    EXPECT_GE(sent.front() - last_esp, interval / 2);
}

// The busy scenario of tests/system/test_ike_nat.py (keepalive_busy) in small: pings every 0.2 s,
// nat-keepalive 2 s, a pass every 0.5 s. A pause of the traffic shorter than half an interval (a
// loaded machine) sends no keepalive; a failed counter read sends one only when it was the reading
// that decides (unknown: keep the mapping), and none after it. Before the fix a failed read replaced
// the baseline by "unknown" so the next good reading looked idle, and any quarter interval without a
// counter change sent one.
TEST(NatKeepalive, BusyPeerGetsNoneThroughPausesAndFailedReads)
{
    const auto ival = std::chrono::seconds(2);
    const auto step = std::chrono::milliseconds(500);
    for (const bool failures : {false, true}) {
        nat_keepalive k;
        esp_reader esp{1000};
        EXPECT_FALSE(k.due(local, peer, t0, ival, std::ref(esp)));
        int pass = 0;
        uint64_t packets = 1000;
        int unknown = 0, sent = 0;
        for (time_point t = t0 + step; t <= t0 + 60s; t += step) {
            ++pass;
            if (pass % 5 != 0) {
                packets += 2; // every fifth pass: 0.5 s without ESP (up to 0.9 s between two pings)
            }
            esp.packets = failures && (pass == 7 || pass == 8 || pass == 23) ? std::nullopt
                                                                             : std::optional<uint64_t>(packets);
            const auto d = k.due(local, peer, t, ival, std::ref(esp));
            sent += d.send() ? 1 : 0;
            unknown += d.what == verdict::unknown ? 1 : 0;
        }
        EXPECT_EQ(sent, unknown) << "failures " << failures;
        EXPECT_LE(sent, failures ? 2 : 0) << "failures " << failures;
    }
}

TEST(NatKeepalive, UnreadableCountersSendKeepalivesAsIfIdle)
{
    nat_keepalive k;
    esp_reader esp; // no data plane
    EXPECT_FALSE(k.due(local, peer, t0, interval, std::ref(esp)));
    const auto sent = passes(k, esp, t0 + 1s, t0 + 60s, 1s, interval, [](time_point) {});
    EXPECT_EQ(sent, (std::vector<time_point>{t0 + 20s, t0 + 40s, t0 + 60s}));
    EXPECT_EQ(k.due(local, peer, t0 + 80s, interval, std::ref(esp)).what, verdict::unknown);
    // Readable again and grown since the last good reading (at t0): ESP went out, after t0 only
    // for all we know, so the next keepalive is not put off by it.
    esp.packets = 5;
    EXPECT_EQ(k.due(local, peer, t0 + 90s, interval, std::ref(esp)).what, verdict::esp_seen);
    EXPECT_EQ(k.due(local, peer, t0 + 100s, interval, std::ref(esp)).what, verdict::idle);
}

TEST(NatKeepalive, CountersAreComparedPerSpi)
{
    nat_keepalive k;
    nat_keepalive::esp_counts reading{{0x1001, 500}, {0x1002, 70}};
    auto read = [&] { return reading; };
    EXPECT_FALSE(k.due(local, peer, t0, interval, read));
    // A rekey: 0x1001 replaced by 0x1003, which sent 5 packets since it was installed. The sum
    // shrank (570 -> 75), yet ESP went out.
    reading = {{0x1002, 70}, {0x1003, 5}};
    EXPECT_EQ(k.due(local, peer, t0 + 10s, interval, read).what, verdict::esp_seen);
    // A new SA that sent nothing yet, the others unchanged: nothing new, and the ESP seen went out
    // after t0, for all we know right after: the keepalive goes.
    reading = {{0x1002, 70}, {0x1003, 5}, {0x1004, 0}};
    EXPECT_EQ(k.due(local, peer, t0 + 20s, interval, read).what, verdict::idle);
    // One SA's counter cannot be read this time, the other grew: ESP went out.
    reading = {{0x1003, 9}};
    EXPECT_EQ(k.due(local, peer, t0 + 30s, interval, read).what, verdict::esp_seen);
    // One SA's counter cannot be read, the other did not grow: the missing one is not traffic; the
    // last ESP known went out after t0 + 20 s.
    EXPECT_EQ(k.due(local, peer, t0 + 40s, interval, read).what, verdict::idle);
    // 0x1002 readable again with more packets than at its last reading (70): it sent since.
    reading = {{0x1002, 71}, {0x1003, 9}};
    EXPECT_EQ(k.due(local, peer, t0 + 50s, interval, read).what, verdict::esp_seen);
}

TEST(NatKeepalive, GrewComparesEachSpiWithItsOwnLastReading)
{
    using c = nat_keepalive::esp_counts;
    EXPECT_FALSE(nat_keepalive::grew({}, {}));
    EXPECT_FALSE(nat_keepalive::grew(c{{1, 10}}, c{{1, 10}}));
    EXPECT_TRUE(nat_keepalive::grew(c{{1, 10}}, c{{1, 11}}));
    EXPECT_FALSE(nat_keepalive::grew(c{{1, 10}}, c{{1, 9}})); // never goes back; not traffic if it did
    EXPECT_FALSE(nat_keepalive::grew(c{{1, 10}}, c{{2, 0}}));
    EXPECT_TRUE(nat_keepalive::grew(c{{1, 10}}, c{{2, 1}}));
    EXPECT_FALSE(nat_keepalive::grew(c{{1, 10}, {2, 3}}, c{{2, 3}}));
}

TEST(NatKeepalive, SweepForgetsPeersNoPassAskedAbout)
{
    nat_keepalive k;
    esp_reader esp;
    k.sent(local, peer, t0); // not tracked: recorded nowhere
    EXPECT_EQ(k.size(), 0u);
    EXPECT_FALSE(k.due(local, peer, t0, interval, std::ref(esp)));
    EXPECT_FALSE(k.due(local, ep("203.0.113.2", 4500), t0 + 30s, interval, std::ref(esp)));
    EXPECT_EQ(k.size(), 2u);
    k.sweep(t0 + 10s);
    EXPECT_EQ(k.size(), 1u);
}

} // namespace
} // namespace espresso::cp
