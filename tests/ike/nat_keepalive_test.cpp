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

struct esp_reader {
    std::optional<uint64_t> packets;
    int reads = 0;
    std::optional<uint64_t> operator()() { ++reads; return packets; }
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
    EXPECT_TRUE(k.due(local, peer, t0 + 70s, interval, std::ref(esp)));
    EXPECT_TRUE(k.due(local, peer, t0 + 90s, interval, std::ref(esp)));
    // A rekey: the new Child SA counts from 0, the sum shrinks: no ESP seen, the keepalive goes.
    esp.packets = 200;
    EXPECT_TRUE(k.due(local, peer, t0 + 110s, interval, std::ref(esp)));
    esp.packets = 3;
    EXPECT_TRUE(k.due(local, peer, t0 + 130s, interval, std::ref(esp)));
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
