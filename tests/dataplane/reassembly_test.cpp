// Tests for dataplane/src/reassembly.cpp (IP reassembly with librte_ip_frag) and the parts of
// dataplane/src/classify.cpp that decide what is reassembled: the IPv6 extension header walk
// (hostile chains: truncated, overlong, options that need acting on) and strip_ipv6_extensions.
#include <gtest/gtest.h>
#include <rte_cycles.h>
#include <rte_ip.h>
#include <rte_mbuf.h>

#include <cstring>
#include <memory>
#include <vector>

#include "espresso/dp/ipsec.h"
#include "packet.h"
#include "reassembly.h"
#include "test_util.h"

namespace espresso::dp {
namespace {

using test::make_mbuf;
using test::mbuf_bytes;

// An IPv4 packet 192.0.2.1 -> 192.0.2.2 with `payload` bytes after the header (protocol `proto`),
// id/flags/offset as given, valid checksum.
std::vector<uint8_t> ipv4(uint8_t proto, const std::vector<uint8_t>& payload, uint16_t id, uint16_t frag_field)
{
    std::vector<uint8_t> p(20 + payload.size());
    p[0] = 0x45;
    store_be16(p.data() + 2, static_cast<uint16_t>(p.size()));
    store_be16(p.data() + 4, id);
    store_be16(p.data() + 6, frag_field);
    p[8] = 64;
    p[9] = proto;
    const uint8_t src[4] = {192, 0, 2, 1};
    const uint8_t dst[4] = {192, 0, 2, 2};
    std::memcpy(p.data() + 12, src, 4);
    std::memcpy(p.data() + 16, dst, 4);
    if (!payload.empty()) { // an empty vector's data() may be null: memcpy must not see it (UBSan)
        std::memcpy(p.data() + 20, payload.data(), payload.size());
    }
    ipv4_set_checksum(p.data());
    return p;
}

std::vector<uint8_t> ipv6(uint8_t next, const std::vector<uint8_t>& rest)
{
    std::vector<uint8_t> p(40 + rest.size());
    p[0] = 0x60;
    store_be16(p.data() + 4, static_cast<uint16_t>(rest.size()));
    p[6] = next;
    p[7] = 64;
    p[8] = 0x20;
    p[9] = 0x01;
    p[23] = 1;
    p[24] = 0x20;
    p[25] = 0x01;
    p[39] = 2;
    if (!rest.empty()) {
        std::memcpy(p.data() + 40, rest.data(), rest.size());
    }
    return p;
}

std::vector<uint8_t> esp_body(size_t n, uint32_t spi = 0x1234)
{
    std::vector<uint8_t> b(n);
    for (size_t i = 0; i < n; ++i) {
        b[i] = static_cast<uint8_t>(i * 7 + 3);
    }
    store_be32(b.data(), spi);
    return b;
}

std::vector<uint8_t> concat(std::vector<uint8_t> a, const std::vector<uint8_t>& b)
{
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

inbound_class classify(const std::vector<uint8_t>& bytes)
{
    rte_mbuf* m = make_mbuf(bytes);
    const inbound_class c = classify_inbound(m);
    rte_pktmbuf_free(m);
    return c;
}

// --- IPv6 extension headers ---------------------------------------------------------------------

const std::vector<uint8_t> pad_destopt = {50, 0, 1, 4, 0, 0, 0, 0};    // next ESP, PadN(4)
const std::vector<uint8_t> hbh_to_routing = {43, 0, 1, 4, 0, 0, 0, 0}; // next Routing
const std::vector<uint8_t> routing_done = {60, 0, 0, 0, 0, 0, 0, 0};   // next DestOpt, type 0, segleft 0

TEST(Ipv6Chain, EspBehindSkippableHeadersIsFastPath)
{
    const auto pkt = ipv6(0, concat(concat(concat(hbh_to_routing, routing_done), pad_destopt), esp_body(40)));
    const inbound_class c = classify(pkt);
    ASSERT_EQ(c.kind, inbound_kind::esp);
    EXPECT_EQ(c.spi, 0x1234U);
    EXPECT_EQ(c.offset, 64);
    EXPECT_EQ(c.protocol, proto_esp);

    rte_mbuf* m = make_mbuf(pkt);
    strip_ipv6_extensions(m, c);
    const auto out = mbuf_bytes(m);
    rte_pktmbuf_free(m);
    EXPECT_EQ(out, ipv6(50, esp_body(40))); // fixed header moved up, next header ESP, length fixed
}

TEST(Ipv6Chain, AtomicFragmentIsAWholePacket)
{
    const std::vector<uint8_t> atomic = {50, 0, 0, 0, 0, 0, 0, 7}; // offset 0, M 0 (RFC 6946)
    const inbound_class c = classify(ipv6(44, concat(atomic, esp_body(40))));
    EXPECT_EQ(c.kind, inbound_kind::esp);
    EXPECT_EQ(c.offset, 48);
}

TEST(Ipv6Chain, WhatTheKernelMustActOnIsNotFastPath)
{
    // Option type 0x80: "discard and send Parameter Problem" when unknown: the kernel's job.
    EXPECT_EQ(classify(ipv6(60, concat({50, 0, 0x80, 4, 0, 0, 0, 0}, esp_body(40)))).kind, inbound_kind::other);
    // Routing header with Segments Left 1: not at its destination yet.
    EXPECT_EQ(classify(ipv6(43, concat({50, 0, 0, 1, 0, 0, 0, 0}, esp_body(40)))).kind, inbound_kind::other);
    // Hop-by-Hop anywhere but first (RFC 8200 §4.1).
    EXPECT_EQ(classify(ipv6(60, concat(concat({0, 0, 1, 4, 0, 0, 0, 0}, pad_destopt), esp_body(40)))).kind,
              inbound_kind::other);
    // AH behind extension headers: its ICV covers them, not stripped, kernel.
    EXPECT_EQ(classify(ipv6(60, concat({51, 0, 1, 4, 0, 0, 0, 0}, esp_body(40)))).kind, inbound_kind::other);
    // More than max_headers extension headers.
    std::vector<uint8_t> chain;
    for (unsigned i = 0; i < ipv6_chain::max_headers + 1; ++i) {
        chain = concat(chain, {60, 0, 1, 4, 0, 0, 0, 0});
    }
    chain[chain.size() - 8] = 50;
    EXPECT_EQ(classify(ipv6(60, concat(chain, esp_body(40)))).kind, inbound_kind::other);
}

TEST(Ipv6Chain, TruncatedAndOverlongHeadersAreMalformed)
{
    // Header length runs past the packet.
    EXPECT_EQ(classify(ipv6(60, {50, 4, 1, 4, 0, 0, 0, 0})).kind, inbound_kind::malformed);
    // Fewer than 8 bytes left for an extension header.
    EXPECT_EQ(classify(ipv6(60, {50, 0, 1, 4})).kind, inbound_kind::malformed);
    // An option whose length runs past its header.
    EXPECT_EQ(classify(ipv6(60, concat({50, 0, 1, 9, 0, 0, 0, 0}, esp_body(40)))).kind, inbound_kind::malformed);
    // Every length from 0 to 40 of a valid chain: never reads past the packet (ASan), never ESP
    // unless the ESP header is there.
    const auto good = ipv6(0, concat(concat(hbh_to_routing, routing_done), pad_destopt));
    for (size_t n = 40; n <= good.size(); ++n) {
        auto cut = std::vector<uint8_t>(good.begin(), good.begin() + static_cast<long>(n));
        store_be16(cut.data() + 4, static_cast<uint16_t>(n - 40));
        EXPECT_NE(classify(cut).kind, inbound_kind::esp) << n;
    }
}

TEST(Ipv6Chain, FragmentsOfIpsecAreReassembled)
{
    const std::vector<uint8_t> first = {50, 0, 0, 1, 0, 0, 0, 9}; // offset 0, M 1
    EXPECT_EQ(classify(ipv6(44, concat(first, esp_body(48)))).kind, inbound_kind::fragment);
    const std::vector<uint8_t> udp_later = {17, 0, 0, 48, 0, 0, 0, 9}; // offset 48, M 0
    EXPECT_EQ(classify(ipv6(44, concat(udp_later, esp_body(16)))).kind, inbound_kind::fragment);
    const std::vector<uint8_t> icmp = {58, 0, 0, 1, 0, 0, 0, 9};
    EXPECT_EQ(classify(ipv6(44, concat(icmp, esp_body(48)))).kind, inbound_kind::other); // kernel reassembles
    // A Fragment header behind another header: the kernel's (the reassembler takes it first only).
    EXPECT_EQ(classify(ipv6(60, concat(concat({44, 0, 1, 4, 0, 0, 0, 0}, first), esp_body(48)))).kind,
              inbound_kind::other);
    EXPECT_EQ(classify(ipv4(50, esp_body(48), 7, 0x2000)).kind, inbound_kind::fragment);
    EXPECT_EQ(classify(ipv4(1, esp_body(48), 7, 0x2000)).kind, inbound_kind::other);
}

// --- reassembler ----------------------------------------------------------------------------------

class Reassembly : public ::testing::Test {
protected:
    void SetUp() override
    {
        if (whole_pool == nullptr) {
            whole_pool = rte_pktmbuf_pool_create("test_reasm", 63, 0, 0, RTE_PKTMBUF_HEADROOM + 16384, SOCKET_ID_ANY);
            // The waiting fragments' pool: 7 mbufs of the gateway's size (2 KiB of data), no cache,
            // so that the tests can empty it and see chained copies of bigger fragments.
            waiting_pool = rte_pktmbuf_pool_create("test_reasm_wait", 7, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, SOCKET_ID_ANY);
        }
        ASSERT_NE(whole_pool, nullptr);
        ASSERT_NE(waiting_pool, nullptr);
        r = std::make_unique<reassembler>(4, rte_get_tsc_hz(), whole_pool, waiting_pool, SOCKET_ID_ANY);
    }
    void TearDown() override
    {
        r.reset(); // frees what still waits
        EXPECT_EQ(rte_mempool_avail_count(waiting_pool), 7U) << "a waiting fragment leaked";
    }
    rte_mbuf* add(const std::vector<uint8_t>& bytes) { return r->add(make_mbuf(bytes), now, counts); }

    static rte_mempool* whole_pool;
    static rte_mempool* waiting_pool;
    std::unique_ptr<reassembler> r;
    reassembly_counts counts;
    uint64_t now = 1000;
};
rte_mempool* Reassembly::whole_pool = nullptr;
rte_mempool* Reassembly::waiting_pool = nullptr;

// Fragments of `whole` (an IPv4 packet with a 20-byte header) at the given 8-byte-aligned cuts.
std::vector<std::vector<uint8_t>> split4(const std::vector<uint8_t>& whole, std::vector<size_t> cuts)
{
    std::vector<std::vector<uint8_t>> out;
    const std::vector<uint8_t> body(whole.begin() + 20, whole.end());
    cuts.push_back(body.size());
    size_t start = 0;
    for (size_t k = 0; k < cuts.size(); ++k) {
        const bool more = k + 1 < cuts.size();
        const std::vector<uint8_t> part(body.begin() + static_cast<long>(start), body.begin() + static_cast<long>(cuts[k]));
        out.push_back(ipv4(whole[9], part, load_be16(whole.data() + 4),
                           static_cast<uint16_t>((more ? 0x2000 : 0) | (start / 8))));
        start = cuts[k];
    }
    return out;
}

TEST_F(Reassembly, Ipv4OutOfOrderGivesTheOriginal)
{
    const auto whole = ipv4(50, esp_body(1500), 42, 0);
    const auto f = split4(whole, {512, 1024});
    EXPECT_EQ(add(f[2]), nullptr);
    EXPECT_EQ(add(f[0]), nullptr);
    rte_mbuf* m = add(f[1]);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->nb_segs, 1);
    EXPECT_EQ(mbuf_bytes(m), whole); // checksum recomputed, MF/offset cleared
    rte_pktmbuf_free(m);
    EXPECT_EQ(counts.invalid + counts.table_full + counts.timed_out + counts.too_big, 0U);
}

TEST_F(Reassembly, Ipv6RemovesTheFragmentHeader)
{
    const auto body = esp_body(1000);
    const auto whole = ipv6(50, body);
    std::vector<uint8_t> h1 = {50, 0, 0, 1, 0, 0, 0x12, 0x34};                      // offset 0, M
    std::vector<uint8_t> h2 = {50, 0, static_cast<uint8_t>(600 >> 8), 600 & 0xf8, 0, 0, 0x12, 0x34}; // offset 600
    const auto f1 = ipv6(44, concat(h1, std::vector<uint8_t>(body.begin(), body.begin() + 600)));
    const auto f2 = ipv6(44, concat(h2, std::vector<uint8_t>(body.begin() + 600, body.end())));
    EXPECT_EQ(add(f2), nullptr);
    rte_mbuf* m = add(f1);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(mbuf_bytes(m), whole);
    rte_pktmbuf_free(m);
}

TEST_F(Reassembly, OverlapDropsTheWholeDatagram)
{
    const auto whole = ipv4(50, esp_body(1200), 43, 0);
    const std::vector<uint8_t> body(whole.begin() + 20, whole.end());
    auto part = [&](size_t a, size_t b) { return std::vector<uint8_t>(body.begin() + static_cast<long>(a), body.begin() + static_cast<long>(b)); };
    EXPECT_EQ(add(ipv4(50, part(0, 600), 43, 0x2000)), nullptr);
    EXPECT_EQ(add(ipv4(50, part(296, 896), 43, 0x2000 | 37)), nullptr);
    EXPECT_EQ(add(ipv4(50, part(896, 1200), 43, 112)), nullptr);
    EXPECT_EQ(counts.invalid, 3U);
    // Duplicate first fragment: the datagram is given up.
    reassembly_counts before = counts;
    EXPECT_EQ(add(ipv4(50, part(0, 600), 44, 0x2000)), nullptr);
    EXPECT_EQ(add(ipv4(50, part(0, 600), 44, 0x2000)), nullptr);
    EXPECT_EQ(counts.invalid - before.invalid, 2U);
}

TEST_F(Reassembly, HostileLengthsNeverReachTheLibrary)
{
    EXPECT_EQ(add(ipv4(50, {}, 45, 0x2000)), nullptr);                 // no data
    EXPECT_EQ(add(ipv4(50, esp_body(13), 45, 0x2000)), nullptr);       // non-last, not a multiple of 8
    EXPECT_EQ(add(ipv4(50, esp_body(64), 45, 0x1fff)), nullptr);       // ends past 65535
    EXPECT_EQ(counts.invalid, 3U);
    EXPECT_EQ(add(ipv4(50, esp_body(64), 45, 2100)), nullptr);         // ends past 16 KiB: too big
    EXPECT_EQ(counts.too_big, 1U);
}

TEST_F(Reassembly, TableFullAndTimeout)
{
    for (uint16_t id = 1; id <= 4; ++id) {
        EXPECT_EQ(add(ipv4(50, esp_body(64), id, 0x2000)), nullptr);
    }
    EXPECT_EQ(counts.table_full, 0U);
    EXPECT_EQ(add(ipv4(50, esp_body(64), 5, 0x2000)), nullptr); // a fifth datagram: no room (4 entries)
    EXPECT_EQ(counts.table_full, 1U);
    r->expire(now + rte_get_tsc_hz() / 2, counts);
    EXPECT_EQ(counts.timed_out, 0U);
    r->expire(now + 2 * rte_get_tsc_hz(), counts);
    EXPECT_EQ(counts.timed_out, 4U);
}

// Fragments wait in the reassembler's own pool, never in the pool they were received in: when it is
// empty a new fragment is dropped (no_buffer) and the RX pool gets its mbuf back at once.
TEST_F(Reassembly, WaitingFragmentsHoldOnlyTheirOwnPool)
{
    rte_mempool* rx = test::mbuf_pool();
    const unsigned rx_free = rte_mempool_avail_count(rx);
    for (uint16_t id = 1; id <= 4; ++id) { // 4 datagrams (the table's size), 7 waiting fragments
        for (uint16_t k = 0; k < (id == 4 ? 1 : 2); ++k) {
            EXPECT_EQ(add(ipv4(50, esp_body(64), id, static_cast<uint16_t>(0x2000 | (k * 8)))), nullptr);
        }
    }
    EXPECT_EQ(counts.no_buffer, 0U);
    EXPECT_EQ(rte_mempool_avail_count(waiting_pool), 0U);
    EXPECT_EQ(rte_mempool_avail_count(rx), rx_free) << "a waiting fragment kept its RX mbuf";
    EXPECT_EQ(add(ipv4(50, esp_body(64), 4, 0x2000 | 8)), nullptr); // the pool is empty
    EXPECT_EQ(counts.no_buffer, 1U);
    EXPECT_EQ(rte_mempool_avail_count(rx), rx_free);
    r->expire(now + 2 * rte_get_tsc_hz(), counts);
    EXPECT_EQ(counts.timed_out, 7U);
    EXPECT_EQ(rte_mempool_avail_count(waiting_pool), 7U);
}

// A fragment bigger than one mbuf of the waiting pool (jumbo links) is copied into a chain and the
// datagram still comes out whole, in one segment.
TEST_F(Reassembly, FragmentsBiggerThanAWaitingMbufAreChained)
{
    const auto whole = ipv4(50, esp_body(6000), 46, 0);
    const auto f = split4(whole, {3000});
    EXPECT_EQ(add(f[1]), nullptr);
    EXPECT_EQ(rte_mempool_avail_count(waiting_pool), 5U); // 3020 bytes in two 2 KiB mbufs
    rte_mbuf* m = add(f[0]);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->nb_segs, 1);
    EXPECT_EQ(mbuf_bytes(m), whole);
    rte_pktmbuf_free(m);
    EXPECT_EQ(counts.no_buffer + counts.invalid + counts.table_full + counts.too_big, 0U);
}

} // namespace
} // namespace espresso::dp
