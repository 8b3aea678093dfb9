// Tests of controlplane/ike/ike_fragments.cpp (RFC 7383): how much plaintext a fragment carries, and
// reassembly: order, duplicates, stale and restarted collections, the size limit, other message IDs.
// Whole fragmented exchanges between two peers are in exchange_test.cpp (ExchangeFragmentation*).
#include "ike_fragments.h"

#include <gtest/gtest.h>

namespace espresso::cp {
namespace {

using clock_time = std::chrono::steady_clock::time_point;

skf_payload fragment(uint16_t number, uint16_t total, payload_type first = payload_type::none)
{
    return skf_payload{number == 1 ? first : payload_type::none, number, total, {}, 0};
}

bytes filled(uint8_t value, size_t n) { return bytes(n, value); }

TEST(IkeFragmentSizes, BytesPerDatagram)
{
    endpoint v4{*config::parse_address("198.51.100.1"), 500};
    endpoint v4_natt{*config::parse_address("198.51.100.1"), 4500};
    endpoint v6{*config::parse_address("2001:db8::1"), 500};
    EXPECT_EQ(ike_bytes_per_datagram(1280, v4), 1280u - 20 - 8);
    EXPECT_EQ(ike_bytes_per_datagram(1280, v4_natt), 1280u - 20 - 8 - 4); // RFC 3948 non-ESP marker
    EXPECT_EQ(ike_bytes_per_datagram(1280, v6), 1280u - 40 - 8);
    EXPECT_EQ(ike_bytes_per_datagram(20, v4), 0u);
}

TEST(IkeFragmentSizes, PlaintextFillsButNeverOverflowsTheDatagram)
{
    auto gcm = sk_cipher::create(encr_id::aes_gcm_16, 256, integ_id::none, bytes(36, 1), {});
    auto cbc = sk_cipher::create(encr_id::aes_cbc, 256, integ_id::hmac_sha2_512_256, bytes(32, 1), bytes(64, 2));
    ASSERT_TRUE(gcm && cbc);
    for (const sk_cipher* c : {&*gcm, &*cbc}) {
        for (size_t room : {544u, 545u, 1000u, 1248u, 1252u, 1452u}) {
            size_t n = fragment_plaintext_size(*c, room);
            ASSERT_GT(n, 400u) << room;
            EXPECT_LE(header_size + skf_header_size + c->sealed_size(n), room) << room;
            EXPECT_GT(header_size + skf_header_size + c->sealed_size(n + 1), room) << room;
        }
        EXPECT_EQ(fragment_plaintext_size(*c, header_size + skf_header_size), 0u);
    }
}

TEST(IkeFragmentSizes, PathMtuDiscoveryLadderStopsAtTheFamilyMinimum)
{
    // RFC 7383 §2.5.2: each step smaller, never below 576 (IPv4) / 1280 (IPv6).
    std::vector<uint32_t> v4, v6;
    for (uint32_t s = 1500; s != 0; s = next_fragment_size(s, false)) {
        v4.push_back(s);
    }
    for (uint32_t s = 1500; s != 0; s = next_fragment_size(s, true)) {
        v6.push_back(s);
    }
    EXPECT_EQ(v4, (std::vector<uint32_t>{1500, 1400, 1280, 1000, 576}));
    EXPECT_EQ(v6, (std::vector<uint32_t>{1500, 1400, 1280}));
    EXPECT_EQ(next_fragment_size(9000, false), 1500u); // a jumbo-frame setting starts the ladder
    EXPECT_EQ(next_fragment_size(1100, false), 1000u); // an odd configured size joins it
    EXPECT_EQ(next_fragment_size(600, false), 576u);
    EXPECT_EQ(next_fragment_size(576, false), 0u);
    EXPECT_EQ(next_fragment_size(1300, true), 1280u);
    EXPECT_EQ(next_fragment_size(1280, true), 0u);
}

TEST(IkeFragmentReassembly, OutOfOrderWithDuplicates)
{
    fragment_reassembly r;
    clock_time now{};
    size_t discarded = 9;
    EXPECT_EQ(r.check(1, 3, 3), fragment_reassembly::check_result::fresh);
    EXPECT_EQ(r.add(1, 35, fragment(3, 3), filled('c', 5), now, discarded), fragment_reassembly::add_result::stored);
    EXPECT_EQ(discarded, 0u);
    EXPECT_TRUE(r.collecting(1));
    EXPECT_FALSE(r.collecting(2));
    EXPECT_EQ(r.check(1, 3, 3), fragment_reassembly::check_result::duplicate);
    EXPECT_EQ(r.add(1, 35, fragment(1, 3, payload_type::idi), filled('a', 10), now, discarded),
              fragment_reassembly::add_result::stored);
    EXPECT_EQ(r.check(1, 1, 3), fragment_reassembly::check_result::duplicate);
    EXPECT_EQ(r.check(1, 2, 3), fragment_reassembly::check_result::fresh);
    EXPECT_EQ(r.add(1, 35, fragment(2, 3), filled('b', 7), now, discarded), fragment_reassembly::add_result::complete);
    auto whole = r.take();
    EXPECT_EQ(whole.message_id, 1u);
    EXPECT_EQ(whole.exchange, 35);
    EXPECT_EQ(whole.first, payload_type::idi);
    bytes expected = filled('a', 10);
    for (auto [v, n] : {std::pair{'b', 7}, std::pair{'c', 5}}) {
        bytes part = filled(static_cast<uint8_t>(v), static_cast<size_t>(n));
        expected.insert(expected.end(), part.begin(), part.end());
    }
    EXPECT_EQ(whole.chain, expected);
    EXPECT_FALSE(r.active()); // take() ends the collection
    EXPECT_EQ(r.check(1, 1, 3), fragment_reassembly::check_result::fresh);
}

TEST(IkeFragmentReassembly, SmallerTotalIsStaleLargerRestarts)
{
    // RFC 7383 §2.6: fewer Total Fragments than collected: discard the new one; more: start over.
    fragment_reassembly r;
    clock_time now{};
    size_t discarded = 0;
    r.add(4, 37, fragment(1, 3), filled(1, 100), now, discarded);
    r.add(4, 37, fragment(2, 3), filled(2, 100), now, discarded);
    EXPECT_EQ(r.check(4, 1, 2), fragment_reassembly::check_result::stale);
    EXPECT_EQ(r.check(4, 1, 4), fragment_reassembly::check_result::fresh);
    EXPECT_EQ(r.add(4, 37, fragment(4, 4), filled(4, 10), now, discarded), fragment_reassembly::add_result::stored);
    EXPECT_EQ(discarded, 2u);
    for (uint16_t n = 1; n <= 2; ++n) {
        EXPECT_EQ(r.add(4, 37, fragment(n, 4), filled(static_cast<uint8_t>(n), 10), now, discarded),
                  fragment_reassembly::add_result::stored);
    }
    EXPECT_EQ(r.add(4, 37, fragment(3, 4), filled(3, 10), now, discarded), fragment_reassembly::add_result::complete);
    EXPECT_EQ(r.take().chain.size(), 40u);
}

TEST(IkeFragmentReassembly, AnotherMessageIdReplacesTheCollection)
{
    fragment_reassembly r;
    clock_time now{};
    size_t discarded = 0;
    r.add(5, 36, fragment(1, 2), filled(1, 10), now, discarded);
    EXPECT_EQ(r.check(6, 1, 2), fragment_reassembly::check_result::fresh);
    r.add(6, 36, fragment(2, 2), filled(2, 10), now, discarded);
    EXPECT_EQ(discarded, 1u);
    EXPECT_TRUE(r.collecting(6));
    EXPECT_FALSE(r.collecting(5));
}

TEST(IkeFragmentReassembly, SizeLimitAndTimeout)
{
    fragment_reassembly r;
    clock_time now{};
    size_t discarded = 0;
    const size_t big = max_reassembled_size / 2;
    EXPECT_EQ(r.add(1, 35, fragment(1, 3), filled(1, big), now, discarded), fragment_reassembly::add_result::stored);
    EXPECT_EQ(r.add(1, 35, fragment(2, 3), filled(2, big), now, discarded), fragment_reassembly::add_result::stored);
    EXPECT_EQ(r.add(1, 35, fragment(3, 3), filled(3, 2), now, discarded), fragment_reassembly::add_result::too_big);
    EXPECT_EQ(discarded, 3u);
    EXPECT_FALSE(r.active());
    // The deadline is set when a collection starts; clear() says how many were thrown away.
    r.add(2, 35, fragment(2, 3), filled(1, 10), now, discarded);
    EXPECT_EQ(r.deadline(), now + fragment_reassembly::timeout);
    EXPECT_EQ(r.clear(), 1u);
    EXPECT_EQ(r.clear(), 0u);
}

} // namespace
} // namespace espresso::cp
