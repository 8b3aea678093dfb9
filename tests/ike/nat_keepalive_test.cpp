// Tests for controlplane/ike/nat_keepalive.cpp: RFC 3948 §4 keepalives only when nothing else went to
// the peer within the interval (IKE messages, ESP seen in the data plane's counters).
#include <gtest/gtest.h>

#include <optional>

#include "espresso/config/types.h"
#include "nat_keepalive.h"

namespace espresso::cp {
namespace {

using namespace std::chrono_literals;
using time_point = nat_keepalive::time_point;

endpoint ep(const char* address, uint16_t port) { return endpoint{*config::parse_address(address), port}; }

const endpoint local = ep("198.51.100.1", 4500);
const endpoint peer = ep("203.0.113.1", 4500);
constexpr auto interval = std::chrono::seconds(20);

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

TEST(NatKeepalive, IdlePeerGetsOneKeepalivePerInterval)
{
    nat_keepalive k;
    esp_reader esp;
    const time_point t0{};
    EXPECT_FALSE(k.due(local, peer, t0 + 1h, interval, std::ref(esp))); // first sight: just established
    EXPECT_FALSE(k.due(local, peer, t0 + 1h + 19s, interval, std::ref(esp)));
    EXPECT_EQ(esp.reads, 1); // the baseline; then the data plane is asked only when a keepalive is due
    EXPECT_TRUE(k.due(local, peer, t0 + 1h + 20s, interval, std::ref(esp)));
    EXPECT_FALSE(k.due(local, peer, t0 + 1h + 21s, interval, std::ref(esp)));
    EXPECT_TRUE(k.due(local, peer, t0 + 1h + 40s, interval, std::ref(esp)));
}

TEST(NatKeepalive, AnIkeMessageWithinTheIntervalSuppressesIt)
{
    nat_keepalive k;
    esp_reader esp;
    const time_point t0 = time_point{} + 1h;
    EXPECT_FALSE(k.due(local, peer, t0, interval, std::ref(esp)));
    k.sent(local, peer, t0 + 15s); // a DPD request, say
    EXPECT_FALSE(k.due(local, peer, t0 + 20s, interval, std::ref(esp)));
    EXPECT_FALSE(k.due(local, peer, t0 + 34s, interval, std::ref(esp)));
    EXPECT_TRUE(k.due(local, peer, t0 + 35s, interval, std::ref(esp)));
    // Another peer's messages do not count for this one.
    k.sent(local, ep("203.0.113.2", 4500), t0 + 50s);
    k.sent(local, ep("203.0.113.1", 40500), t0 + 50s);
    EXPECT_TRUE(k.due(local, peer, t0 + 55s, interval, std::ref(esp)));
}

TEST(NatKeepalive, OutboundEspWithinTheIntervalSuppressesIt)
{
    nat_keepalive k;
    esp_reader esp;
    const time_point t0 = time_point{} + 1h;
    esp.packets = 100;
    EXPECT_FALSE(k.due(local, peer, t0, interval, std::ref(esp))); // first sight: baseline 100
    esp.packets = 120;                                              // ESP within the first interval
    EXPECT_FALSE(k.due(local, peer, t0 + 20s, interval, std::ref(esp)));
    EXPECT_EQ(esp.reads, 2);
    // Looked at again a quarter interval later; no more ESP since: the keepalive goes.
    EXPECT_FALSE(k.due(local, peer, t0 + 24s, interval, std::ref(esp)));
    EXPECT_EQ(esp.reads, 2);
    EXPECT_TRUE(k.due(local, peer, t0 + 25s, interval, std::ref(esp)));
    esp.packets = 150; // ESP during the next interval
    EXPECT_FALSE(k.due(local, peer, t0 + 45s, interval, std::ref(esp)));
    EXPECT_FALSE(k.due(local, peer, t0 + 49s, interval, std::ref(esp)));
    EXPECT_TRUE(k.due(local, peer, t0 + 50s, interval, std::ref(esp)));
    EXPECT_EQ(esp.reads, 5);
    // Counters unknown (no data plane): keepalives as if idle.
    esp.packets.reset();
    EXPECT_EQ(k.due(local, peer, t0 + 70s, interval, std::ref(esp)).what, nat_keepalive::verdict::unknown);
    EXPECT_TRUE(k.due(local, peer, t0 + 90s, interval, std::ref(esp)));
    // Readable again, and grown since the last good reading (150): ESP went out, looked at again later.
    esp.packets = 200;
    EXPECT_EQ(k.due(local, peer, t0 + 110s, interval, std::ref(esp)).what, nat_keepalive::verdict::esp_seen);
    EXPECT_TRUE(k.due(local, peer, t0 + 115s, interval, std::ref(esp)));
}

// The busy scenario of tests/system/test_ike_nat.py (keepalive_busy) in small: pings every 0.2 s,
// nat-keepalive 2 s, a pass every 0.5 s. One counter read that fails in the middle must not produce a
// keepalive after it: before the fix the failed read replaced the baseline by "unknown", so the next
// good reading could not be compared and looked idle.
TEST(NatKeepalive, AFailedReadAmidTrafficSendsNoSpuriousKeepalive)
{
    nat_keepalive k;
    const auto step = std::chrono::milliseconds(500);
    const auto short_interval = std::chrono::seconds(2);
    const time_point t0 = time_point{} + 1h;
    uint64_t packets = 1000;
    int sent = 0, unknown = 0;
    for (int i = 0; i < 40; ++i) {
        const time_point now = t0 + i * step;
        packets += 2; // 2.5 pings' ESP per pass
        const bool fail = i == 9 || i == 10 || i == 23;
        auto read = [&] { return fail ? nat_keepalive::esp_counts{} : nat_keepalive::esp_counts{{0x1001, packets}}; };
        const auto d = k.due(local, peer, now, short_interval, read);
        sent += d.send() ? 1 : 0;
        unknown += d.what == nat_keepalive::verdict::unknown ? 1 : 0;
    }
    // Only the passes whose read failed (and that were due) may send one; none after them.
    EXPECT_EQ(sent, unknown);
    EXPECT_LE(sent, 2);
}

TEST(NatKeepalive, CountersAreComparedPerSpi)
{
    nat_keepalive k;
    const time_point t0 = time_point{} + 1h;
    nat_keepalive::esp_counts reading{{0x1001, 500}, {0x1002, 70}};
    auto read = [&] { return reading; };
    EXPECT_FALSE(k.due(local, peer, t0, interval, read));
    // A rekey: 0x1001 replaced by 0x1003, which sent 5 packets since it was installed. The sum
    // shrank (575 -> 75), yet ESP went out.
    reading = {{0x1002, 70}, {0x1003, 5}};
    EXPECT_EQ(k.due(local, peer, t0 + 20s, interval, read).what, nat_keepalive::verdict::esp_seen);
    // New SA that sent nothing yet, and the other unchanged: idle.
    reading = {{0x1002, 70}, {0x1003, 5}, {0x1004, 0}};
    EXPECT_EQ(k.due(local, peer, t0 + 25s, interval, read).what, nat_keepalive::verdict::idle);
    // One SA's counter cannot be read this time, the other grew: ESP went out.
    reading = {{0x1003, 9}};
    EXPECT_EQ(k.due(local, peer, t0 + 45s, interval, read).what, nat_keepalive::verdict::esp_seen);
    // One SA's counter cannot be read, the other did not grow: idle (the missing one is not traffic).
    reading = {{0x1003, 9}};
    EXPECT_EQ(k.due(local, peer, t0 + 50s, interval, read).what, nat_keepalive::verdict::idle);
    // 0x1002 readable again with more packets than at its last reading (70): it sent since.
    reading = {{0x1002, 71}, {0x1003, 9}};
    EXPECT_EQ(k.due(local, peer, t0 + 70s, interval, read).what, nat_keepalive::verdict::esp_seen);
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
    const time_point t0 = time_point{} + 1h;
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
