// ESP engine round trips and drop paths. Interoperability with independent implementations is in
// tests/component (scapy, tshark) and known_answer_test.cpp (RFC vectors); these tests pin our own
// invariants: every algorithm/mode/family/ESN/UDP combination round-trips, every drop has its counter,
// sequence numbers never repeat across workers, and lifetimes stop an SA.
#include <gtest/gtest.h>
#include <rte_ip.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "espresso/dp/ipsec.h"
#include "imb_burst.h"
#include "packet.h"
#include "test_util.h"

namespace espresso::dp {
namespace {

using config::cipher_alg;
using config::integ_alg;
using test::make_mbuf;
using test::mbuf_bytes;

struct transform {
    const char* name;
    cipher_alg cipher;
    uint8_t key_bytes;
    uint8_t salt;
    integ_alg integ;
    uint8_t integ_key;
};

const transform transforms[] = {
    {"aes128gcm16", cipher_alg::aes_gcm16, 16, 4, integ_alg::none, 0},
    {"aes192gcm16", cipher_alg::aes_gcm16, 24, 4, integ_alg::none, 0},
    {"aes256gcm16", cipher_alg::aes_gcm16, 32, 4, integ_alg::none, 0},
    {"aes128gmac", cipher_alg::aes_gmac, 16, 4, integ_alg::none, 0},
    {"aes256gmac", cipher_alg::aes_gmac, 32, 4, integ_alg::none, 0},
    {"aes128-sha1", cipher_alg::aes_cbc, 16, 0, integ_alg::hmac_sha1_96, 20},
    {"aes128-sha256", cipher_alg::aes_cbc, 16, 0, integ_alg::hmac_sha256_128, 32},
    {"aes192-sha384", cipher_alg::aes_cbc, 24, 0, integ_alg::hmac_sha384_192, 48},
    {"aes256-sha512", cipher_alg::aes_cbc, 32, 0, integ_alg::hmac_sha512_256, 64},
    {"null-sha256", cipher_alg::null, 0, 0, integ_alg::hmac_sha256_128, 32},
};

config::ip_address addr(const char* text)
{
    return *config::parse_address(text);
}

config::sa_config make_config(const transform& t, config::direction dir, bool v6, bool tunnel, bool esn,
                              bool udp)
{
    config::sa_config c;
    c.spi = 0x1001;
    c.dir = dir;
    c.mode = tunnel ? config::ipsec_mode::tunnel : config::ipsec_mode::transport;
    c.source = addr(v6 ? "2001:db8:1::1" : "198.51.100.1");
    c.destination = addr(v6 ? "2001:db8:2::1" : "203.0.113.1");
    c.cipher = t.cipher;
    c.cipher_key_bytes = t.key_bytes;
    c.cipher_key_length = static_cast<uint8_t>(t.key_bytes + t.salt);
    for (size_t i = 0; i < c.cipher_key_length; ++i) {
        c.cipher_key[i] = static_cast<uint8_t>(0x11 * (i + 1));
    }
    c.integ = t.integ;
    c.integ_key_length = t.integ_key;
    for (size_t i = 0; i < c.integ_key_length; ++i) {
        c.integ_key[i] = static_cast<uint8_t>(0xa0 + i);
    }
    c.esn = esn;
    c.replay_window = 64;
    if (udp) {
        c.udp = config::udp_encapsulation{4500, 4500};
    }
    return c;
}

// A UDP packet of `payload` bytes from 192.168.1.10 to 192.168.2.10 (or the IPv6 equivalents).
std::vector<uint8_t> inner_packet(bool v6, size_t payload, uint8_t tos = 0)
{
    std::vector<uint8_t> p;
    const size_t udp_len = 8 + payload;
    if (!v6) {
        p.resize(20 + udp_len);
        p[0] = 0x45;
        p[1] = tos;
        p[2] = static_cast<uint8_t>(p.size() >> 8);
        p[3] = static_cast<uint8_t>(p.size());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 17;
        const uint8_t src[] = {192, 168, 1, 10};
        const uint8_t dst[] = {192, 168, 2, 10};
        std::memcpy(&p[12], src, 4);
        std::memcpy(&p[16], dst, 4);
        auto* h = reinterpret_cast<rte_ipv4_hdr*>(p.data());
        h->hdr_checksum = rte_ipv4_cksum(h);
    } else {
        p.resize(40 + udp_len);
        p[0] = static_cast<uint8_t>(0x60 | (tos >> 4));
        p[1] = static_cast<uint8_t>(tos << 4);
        p[4] = static_cast<uint8_t>(udp_len >> 8);
        p[5] = static_cast<uint8_t>(udp_len);
        p[6] = 17;
        p[7] = 64;
        auto src = config::parse_address("2001:db8:192:168:1::10")->bytes;
        auto dst = config::parse_address("2001:db8:192:168:2::10")->bytes;
        std::memcpy(&p[8], src.data(), 16);
        std::memcpy(&p[24], dst.data(), 16);
    }
    size_t u = v6 ? 40 : 20;
    p[u] = 0x9c;
    p[u + 1] = 0x40; // 40000
    p[u + 2] = 0x9c;
    p[u + 3] = 0x41; // 40001
    p[u + 4] = static_cast<uint8_t>(udp_len >> 8);
    p[u + 5] = static_cast<uint8_t>(udp_len);
    for (size_t i = 0; i < payload; ++i) {
        p[u + 8 + i] = static_cast<uint8_t>(i * 7 + 3);
    }
    return p;
}

class Esp : public ::testing::Test {
protected:
    crypto_core core;

    // Encrypts `plain` with `out`, returning the wire packet, or empty on drop.
    std::vector<uint8_t> encrypt(sa_runtime& out, const std::vector<uint8_t>& plain)
    {
        rte_mbuf* m = make_mbuf(plain);
        drop_reason reason{};
        uint16_t good = outbound_process(core, out, &m, 1, &reason);
        std::vector<uint8_t> wire;
        if (good == 1) {
            wire = mbuf_bytes(m);
        }
        rte_pktmbuf_free(m);
        return wire;
    }

    // `count` packets of the same small inner packet through `out`, in order (sequence numbers follow).
    std::vector<std::vector<uint8_t>> encrypt_many(sa_runtime& out, int count)
    {
        std::vector<std::vector<uint8_t>> wires;
        for (int i = 0; i < count; ++i) {
            wires.push_back(encrypt(out, inner_packet(false, 10)));
        }
        return wires;
    }

    drop_reason decrypt(sa_runtime& in, const std::vector<uint8_t>& wire, std::vector<uint8_t>& plain)
    {
        rte_mbuf* m = make_mbuf(wire);
        drop_reason reason{};
        uint16_t good = inbound_process(core, in, &m, 1, &reason);
        if (good == 1) {
            plain = mbuf_bytes(m);
        }
        rte_pktmbuf_free(m);
        return good == 1 ? drop_reason::none : reason;
    }

    // A tunnel of the many-SA tests: an outbound and inbound SA of one transform, tunnel mode, IPv4.
    struct tunnel {
        sa_ptr out;
        sa_ptr in;
        std::vector<std::vector<uint8_t>> plain;
        std::vector<std::vector<uint8_t>> wire;
    };

    // One tunnel per transform, without and with ESN (in that order), SPIs from `first_spi` up.
    std::vector<tunnel> tunnels_of_every_transform(uint32_t first_spi)
    {
        std::vector<tunnel> tunnels;
        for (const auto& t : transforms) {
            for (bool esn : {false, true}) {
                auto oc = make_config(t, config::direction::outbound, false, true, esn, false);
                auto ic = make_config(t, config::direction::inbound, false, true, esn, false);
                oc.spi = ic.spi = first_spi++;
                tunnels.push_back({make_sa(oc, core), make_sa(ic, core), {}, {}});
            }
        }
        return tunnels;
    }

    // The groups of an outbound/inbound_process_groups call: group g is SA sas[g] with mbufs
    // [g * per, (g + 1) * per) and their reasons.
    template <typename Group>
    static std::vector<Group> groups_of(const std::vector<sa_runtime*>& sas, std::vector<rte_mbuf*>& mbufs,
                                        std::vector<drop_reason>& reasons, size_t per)
    {
        std::vector<Group> groups(sas.size());
        for (size_t g = 0; g < sas.size(); ++g) {
            groups[g].sa = sas[g];
            groups[g].pkts = &mbufs[g * per];
            groups[g].reasons = &reasons[g * per];
            groups[g].n = static_cast<uint16_t>(per);
        }
        return groups;
    }
};

TEST_F(Esp, RoundTripEveryCombination)
{
    for (const auto& t : transforms) {
        for (bool v6 : {false, true}) {
            for (bool tunnel : {true, false}) {
                for (bool esn : {false, true}) {
                    for (bool udp : {false, true}) {
                        SCOPED_TRACE(std::string(t.name) + (v6 ? " v6" : " v4") + (tunnel ? " tunnel" : " transport") +
                                     (esn ? " esn" : "") + (udp ? " udp" : ""));
                        auto oc = make_config(t, config::direction::outbound, v6, tunnel, esn, udp);
                        auto ic = make_config(t, config::direction::inbound, v6, tunnel, esn, udp);
                        auto out = make_sa(oc, core);
                        auto in = make_sa(ic, core);
                        for (size_t len : {0, 1, 13, 14, 15, 16, 17, 100, 1400}) {
                            auto plain = inner_packet(v6, len);
                            auto wire = encrypt(*out, plain);
                            ASSERT_FALSE(wire.empty());
                            // What the worker's MTU check counts on (sa.h): at most esp_overhead,
                            // itself within the bound.
                            ASSERT_LE(wire.size() - plain.size(), esp_overhead(*out, v6));
                            ASSERT_LE(esp_overhead(*out, v6), max_esp_overhead);
                            // Outer protocol and ESP header.
                            ASSERT_EQ(wire[0] >> 4, v6 ? 6 : 4);
                            ASSERT_EQ(wire[v6 ? 6 : 9], udp ? 17 : 50);
                            std::vector<uint8_t> back;
                            ASSERT_EQ(decrypt(*in, wire, back), drop_reason::none);
                            ASSERT_EQ(back, plain);
                        }
                        EXPECT_EQ(out->stats.get(sa_counter::encaps), 9U);
                        EXPECT_EQ(in->stats.get(sa_counter::decaps), 9U);
                        EXPECT_EQ(in->stats.get(sa_counter::verify), t.integ != integ_alg::none || t.salt ? 9U : 0U);
                    }
                }
            }
        }
    }
}

TEST_F(Esp, MixedFamilyTunnels)
{
    for (bool outer_v6 : {false, true}) {
        auto oc = make_config(transforms[0], config::direction::outbound, outer_v6, true, false, false);
        auto ic = make_config(transforms[0], config::direction::inbound, outer_v6, true, false, false);
        auto out = make_sa(oc, core);
        auto in = make_sa(ic, core);
        auto plain = inner_packet(!outer_v6, 50);
        auto wire = encrypt(*out, plain);
        ASSERT_FALSE(wire.empty());
        std::vector<uint8_t> back;
        ASSERT_EQ(decrypt(*in, wire, back), drop_reason::none);
        EXPECT_EQ(back, plain);
    }
}

TEST_F(Esp, PaddingAndLengthsFollowRfc4303)
{
    auto oc = make_config(transforms[6], config::direction::outbound, false, true, false, false); // CBC
    auto out = make_sa(oc, core);
    for (size_t len = 0; len < 40; ++len) {
        auto plain = inner_packet(false, len);
        auto wire = encrypt(*out, plain);
        ASSERT_FALSE(wire.empty());
        size_t esp_payload = wire.size() - 20 - 8 - 16 - 16; // outer, header, IV, ICV
        EXPECT_EQ(esp_payload % 16, 0U);
        EXPECT_GE(esp_payload, plain.size() + 2);
        EXPECT_LT(esp_payload, plain.size() + 2 + 16);
        // Outer IPv4 header: checksum valid, DF copied, TTL 64.
        rte_ipv4_hdr h;
        std::memcpy(&h, wire.data(), sizeof(h));
        const uint16_t sent = h.hdr_checksum;
        h.hdr_checksum = 0;
        EXPECT_EQ(rte_ipv4_cksum(&h), sent);
        EXPECT_EQ(wire[6] & 0x40, 0x40);
        EXPECT_EQ(wire[8], 64);
    }
}

// The receiver's padding check (RFC 4303 §2.4), on both of its paths: 16 bytes at once when they lie
// inside the buffer, byte by byte otherwise (and for padding longer than 16, up to 255). Whatever
// follows the padding does not matter; a wrong byte anywhere inside it does.
TEST(EspPadding, MonotonicPaddingIsCheckedWholeAndByteByByte)
{
    for (uint32_t len = 0; len <= 255; ++len) {
        SCOPED_TRACE(len);
        std::vector<uint8_t> buf(len + 32, 0xaa);
        for (uint32_t k = 0; k < len; ++k) {
            buf[k] = static_cast<uint8_t>(k + 1);
        }
        const uint8_t* roomy = buf.data() + buf.size(); // the 16-byte path when len <= 16
        const uint8_t* tight = buf.data() + len;        // byte by byte (unless len == 16)
        EXPECT_TRUE(monotonic_padding(buf.data(), len, roomy));
        EXPECT_TRUE(monotonic_padding(buf.data(), len, tight));
        for (uint32_t k = 0; k < len; ++k) {
            auto bad = buf;
            bad[k] ^= 0x80;
            EXPECT_FALSE(monotonic_padding(bad.data(), len, bad.data() + bad.size())) << "byte " << k;
            EXPECT_FALSE(monotonic_padding(bad.data(), len, bad.data() + len)) << "byte " << k;
        }
    }
}

// The ICV comparison (packet.h) for every ICV length an SA can have (HMAC-SHA-1-96 12, AES-GCM and
// HMAC-SHA-256-128 16, SHA-384-192 24, SHA-512-256 32; 16 has a path of its own): equal buffers
// match, any one flipped bit anywhere in the ICV does not, and bytes past the ICV are not read into it.
TEST(EspIcv, EveryLengthAndEveryBit)
{
    for (unsigned n : {12U, 16U, 24U, 32U}) {
        SCOPED_TRACE(n);
        std::vector<uint8_t> a(n + 8);
        for (size_t k = 0; k < a.size(); ++k) {
            a[k] = static_cast<uint8_t>(k * 37 + 11);
        }
        std::vector<uint8_t> b = a;
        b[n] ^= 0xff; // past the ICV: ignored
        EXPECT_TRUE(icv_equal(a.data(), b.data(), n));
        for (unsigned bit = 0; bit < n * 8; ++bit) {
            auto c = a;
            c[bit / 8] ^= static_cast<uint8_t>(1U << (bit % 8));
            EXPECT_FALSE(icv_equal(a.data(), c.data(), n)) << "bit " << bit;
            EXPECT_FALSE(icv_equal(c.data(), a.data(), n)) << "bit " << bit;
        }
    }
}

// The writer's two paths (one 16-byte copy with room, byte by byte without) write exactly what the
// checker accepts, and nothing past the padding (the byte path) or past 16 bytes (the copy).
TEST(EspPadding, MonotonicPaddingIsWrittenAsChecked)
{
    for (uint32_t len = 0; len <= 255; ++len) {
        SCOPED_TRACE(len);
        for (const uint32_t room : {len, len + 1, 15U, 16U, len + 32}) {
            if (room < len) {
                continue;
            }
            std::vector<uint8_t> buf(room, 0xaa);
            write_monotonic_padding(buf.data(), len, room);
            EXPECT_TRUE(monotonic_padding(buf.data(), len, buf.data() + buf.size())) << "room " << room;
            // The byte path writes nothing past `len`, the 16-byte copy nothing past 16 bytes.
            const uint32_t written = room < 16 || len > 16 ? len : 16;
            for (uint32_t k = written; k < room; ++k) {
                EXPECT_EQ(buf[k], 0xaa) << "room " << room << " byte " << k;
            }
        }
    }
}

// RFC 1812 §5.2.2 receive check: a header with its checksum right passes, any single bit flipped
// fails. Checksums set by DPDK's rte_ipv4_cksum (the oracle), with 0-40 bytes of options, plus the
// classic example header 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7.
TEST(Ipv4Checksum, ReceiveCheckAgreesWithDpdk)
{
    const uint8_t example[20] = {0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
                                 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7};
    EXPECT_TRUE(ipv4_checksum_ok(example, 20));
    uint32_t seed = 12345;
    for (uint32_t header = 20; header <= 60; header += 4) {
        SCOPED_TRACE(header);
        for (int round = 0; round < 50; ++round) {
            alignas(4) uint8_t h[60];
            for (auto& b : h) {
                seed = seed * 1103515245U + 12345U;
                b = static_cast<uint8_t>(seed >> 16);
            }
            h[0] = static_cast<uint8_t>(0x40 | header / 4);
            ipv4_set_checksum(h);
            ASSERT_TRUE(ipv4_checksum_ok(h, header));
            for (uint32_t bit = 0; bit < header * 8; bit += 7) {
                h[bit / 8] ^= static_cast<uint8_t>(1U << (bit % 8));
                EXPECT_FALSE(ipv4_checksum_ok(h, header)) << "bit " << bit;
                h[bit / 8] ^= static_cast<uint8_t>(1U << (bit % 8));
            }
        }
    }
}

// The unfolded check against DPDK's folded sum (rte_raw_cksum, the oracle) on headers whose
// checksum field is right or off by a small amount, headers whose checksum is zero in both of its
// forms (0x0000 and 0xffff, RFC 1624), and the all-zero header (a one's-complement sum of zeros is
// 0, not all ones).
TEST(Ipv4Checksum, UnfoldedCheckAgreesWithFoldedSum)
{
    const uint8_t zeros[60] = {};
    EXPECT_FALSE(ipv4_checksum_ok(zeros, 20));
    EXPECT_FALSE(ipv4_checksum_ok(zeros, 60));
    uint32_t seed = 777;
    auto next = [&seed] {
        seed = seed * 1103515245U + 12345U;
        return seed >> 16;
    };
    unsigned valid = 0;
    for (int round = 0; round < 20000; ++round) {
        alignas(4) uint8_t h[60];
        const uint32_t header = 20 + 4 * (next() % 11);
        for (auto& b : h) {
            b = static_cast<uint8_t>(next());
        }
        if (round % 5 == 0) {
            std::fill(h, h + 20, 0xff); // sums that carry on every word
        }
        h[0] = static_cast<uint8_t>(0x40 | header / 4);
        ipv4_set_checksum(h);
        const uint16_t delta = static_cast<uint16_t>(next() % 4);
        store_be16(h + 10, static_cast<uint16_t>(load_be16(h + 10) + delta));
        if (round % 7 == 0) {
            // A header whose other fields sum to 0xffff: its checksum is zero, written as 0x0000
            // or as 0xffff (RFC 1624 §3), and both are right. The identification field makes it so.
            store_be16(h + 4, 0);
            store_be16(h + 10, 0);
            const auto id = static_cast<uint16_t>(~rte_raw_cksum(h, header)); // a sum of host-order words
            std::memcpy(h + 4, &id, 2);
            ASSERT_EQ(rte_raw_cksum(h, header), 0xffff);
            EXPECT_TRUE(ipv4_checksum_ok(h, header));
            store_be16(h + 10, 0xffff);
            EXPECT_TRUE(ipv4_checksum_ok(h, header));
            store_be16(h + 10, static_cast<uint16_t>(delta == 0 ? 0xffff : delta)); // off by delta
        }
        const bool oracle = rte_raw_cksum(h, header) == 0xffff;
        valid += oracle ? 1 : 0;
        ASSERT_EQ(ipv4_checksum_ok(h, header), oracle) << "round " << round << " header " << header;
    }
    EXPECT_GT(valid, 2000U); // both verdicts were exercised
    EXPECT_LT(valid, 18000U);
}

// The worker takes bigger polls while IPsec-MB's multi-buffer code gets full vectors (gateway.h
// rx_burst_size): the engine counts the jobs it gives that code (AES-CBC+HMAC both ways), not AES-GCM.
TEST_F(Esp, MultiBufferJobsAreCountedForThePollSize)
{
    core.take_multi_buffer_jobs();
    auto cbc_out = make_sa(make_config(transforms[6], config::direction::outbound, false, true, false, false), core);
    auto cbc_in = make_sa(make_config(transforms[6], config::direction::inbound, false, true, false, false), core);
    auto wire = encrypt(*cbc_out, inner_packet(false, 64));
    ASSERT_FALSE(wire.empty());
    EXPECT_EQ(core.take_multi_buffer_jobs(), 1U);
    EXPECT_EQ(core.take_multi_buffer_jobs(), 0U);
    std::vector<uint8_t> back;
    ASSERT_EQ(decrypt(*cbc_in, wire, back), drop_reason::none);
    EXPECT_EQ(core.take_multi_buffer_jobs(), 1U);
    auto gcm = make_sa(make_config(transforms[0], config::direction::outbound, false, true, false, false), core);
    ASSERT_FALSE(encrypt(*gcm, inner_packet(false, 64)).empty());
    EXPECT_EQ(core.take_multi_buffer_jobs(), 0U);
}

TEST_F(Esp, CbcIvsDifferPerPacket)
{
    auto oc = make_config(transforms[6], config::direction::outbound, false, true, false, false);
    auto out = make_sa(oc, core);
    std::set<std::vector<uint8_t>> ivs;
    for (int i = 0; i < 100; ++i) {
        auto wire = encrypt(*out, inner_packet(false, 10));
        ivs.emplace(wire.begin() + 28, wire.begin() + 44);
    }
    EXPECT_EQ(ivs.size(), 100U);
}

// prefetch_sa_keys starts the key lines a packet reads (sa.h key_line/key_runs): they must cover the
// round keys of the SA's direction, the HMAC states, and the GHASH key powers where the manager's own
// GCM_PRE wrote them (its non-zero 16-byte entries; the VAES AVX-512 code writes 48 powers and a
// short packet reads the last 8), in at most the 8 distinct lines prefetched before, no line twice.
// Runs on this machine's manager only (here AVX2: its layout; the others are in sa.cpp's comment).
TEST_F(Esp, KeyPrefetchCoversTheKeyMaterialAPacketReads)
{
    for (const auto& t : transforms) {
        for (auto dir : {config::direction::outbound, config::direction::inbound}) {
            SCOPED_TRACE(std::string(t.name) + (dir == config::direction::outbound ? " outbound" : " inbound"));
            auto sa = make_sa(make_config(t, dir, false, true, false, false), core);
            const auto* base = reinterpret_cast<const uint8_t*>(sa.get());
            std::vector<bool> covered(sizeof(sa_runtime) + 64, false);
            unsigned lines = 0;
            for (unsigned run = 0; run < 2; ++run) {
                const unsigned n = (sa->key_runs >> (run * 4)) & 0xfU;
                for (unsigned l = sa->key_line[run]; l < sa->key_line[run] + n; ++l) {
                    EXPECT_FALSE(covered[l * 64U]) << "line " << l << " prefetched twice";
                    ++lines;
                    std::fill(covered.begin() + l * 64, covered.begin() + (l + 1) * 64, true);
                }
            }
            EXPECT_LE(lines, 8U);
            auto all_covered = [&](const void* p, size_t bytes) {
                const size_t at = static_cast<const uint8_t*>(p) - base;
                for (size_t b = at; b < at + bytes; ++b) {
                    if (!covered[b]) {
                        return false;
                    }
                }
                return true;
            };
            const size_t round_keys = (t.key_bytes == 16 ? 11U : t.key_bytes == 24 ? 13U : 15U) * 16U;
            if (t.cipher == cipher_alg::aes_gcm16 || t.cipher == cipher_alg::aes_gmac) {
                EXPECT_TRUE(all_covered(&sa->gcm_key, round_keys));
                const uint8_t* powers = reinterpret_cast<const uint8_t*>(&sa->gcm_key.ghash_keys);
                std::vector<size_t> written;
                for (size_t e = 0; e < sizeof(sa->gcm_key.ghash_keys) / 16; ++e) {
                    if (std::any_of(powers + e * 16, powers + e * 16 + 16, [](uint8_t x) { return x != 0; })) {
                        written.push_back(e);
                    }
                }
                ASSERT_TRUE(written.size() == 8 || written.size() == 16 || written.size() == 48) << written.size();
                if (written.size() == 48) {
                    written.erase(written.begin(), written.end() - 8);
                }
                for (size_t e : written) {
                    EXPECT_TRUE(all_covered(powers + e * 16, 16)) << "GHASH key entry " << e;
                }
            } else if (t.cipher == cipher_alg::aes_cbc) {
                EXPECT_TRUE(all_covered(dir == config::direction::outbound ? sa->enc_keys : sa->dec_keys, round_keys));
            }
            if (t.integ != integ_alg::none) {
                EXPECT_TRUE(all_covered(sa->ipad, sizeof(sa->ipad)));
                EXPECT_TRUE(all_covered(sa->opad, sizeof(sa->opad)));
            }
        }
    }
}

TEST_F(Esp, EcnAndDscpCopiedToOuterHeader)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    auto ic = make_config(transforms[0], config::direction::inbound, false, true, false, false);
    auto out = make_sa(oc, core);
    auto in = make_sa(ic, core);
    auto plain = inner_packet(false, 10, 0xb8 | 0x01); // EF, ECT(1)
    auto wire = encrypt(*out, plain);
    EXPECT_EQ(wire[1], 0xb9);
    // RFC 6040: CE on the outer header propagates to an ECT inner packet.
    wire[1] = 0xbb;
    auto* h = reinterpret_cast<rte_ipv4_hdr*>(wire.data());
    h->hdr_checksum = 0;
    h->hdr_checksum = rte_ipv4_cksum(h);
    std::vector<uint8_t> back;
    ASSERT_EQ(decrypt(*in, wire, back), drop_reason::none);
    EXPECT_EQ(back[1], 0xbb);
}

TEST_F(Esp, EveryTruncationIsDroppedWithACounter)
{
    for (const auto& t : transforms) {
        SCOPED_TRACE(t.name);
        auto oc = make_config(t, config::direction::outbound, false, true, false, true);
        auto ic = make_config(t, config::direction::inbound, false, true, false, true);
        ic.replay_window = 0;
        auto out = make_sa(oc, core);
        auto in = make_sa(ic, core);
        auto wire = encrypt(*out, inner_packet(false, 33));
        for (size_t cut = 1; cut < wire.size(); ++cut) {
            auto shortened = std::vector<uint8_t>(wire.begin(), wire.begin() + static_cast<long>(cut));
            std::vector<uint8_t> back;
            drop_reason r = decrypt(*in, shortened, back);
            EXPECT_NE(r, drop_reason::none) << "cut " << cut;
            // IP total length now exceeds the data: the header says truncated.
            EXPECT_EQ(r, drop_reason::truncated) << "cut " << cut;
        }
        // Consistent lengths but shortened ESP: fix IP and UDP lengths, drop tail bytes.
        for (size_t cut = 1; cut + 28 < wire.size(); ++cut) {
            auto shortened = std::vector<uint8_t>(wire.begin(), wire.end() - static_cast<long>(cut));
            uint16_t total = static_cast<uint16_t>(shortened.size());
            shortened[2] = static_cast<uint8_t>(total >> 8);
            shortened[3] = static_cast<uint8_t>(total);
            shortened[24] = static_cast<uint8_t>((total - 20) >> 8);
            shortened[25] = static_cast<uint8_t>(total - 20);
            std::vector<uint8_t> back;
            drop_reason r = decrypt(*in, shortened, back);
            EXPECT_TRUE(r == drop_reason::truncated || r == drop_reason::bad_length || r == drop_reason::icv ||
                        r == drop_reason::bad_udp)
                << "cut " << cut << " got " << drop_reason_names[static_cast<size_t>(r)];
        }
    }
}

TEST_F(Esp, TamperedPacketsFailTheIcv)
{
    for (const auto& t : transforms) {
        SCOPED_TRACE(t.name);
        auto oc = make_config(t, config::direction::outbound, false, true, true, false);
        auto ic = make_config(t, config::direction::inbound, false, true, true, false);
        ic.replay_window = 0;
        auto out = make_sa(oc, core);
        auto in = make_sa(ic, core);
        auto wire = encrypt(*out, inner_packet(false, 64));
        // Every byte after the SPI: sequence number, IV, ciphertext, ICV.
        for (size_t at = 24; at < wire.size(); ++at) {
            auto bad = wire;
            bad[at] ^= 0x01;
            std::vector<uint8_t> back;
            drop_reason r = decrypt(*in, bad, back);
            if (at == 27) {
                EXPECT_EQ(r, drop_reason::too_old); // sequence 1 became 0, never valid
            } else {
                EXPECT_EQ(r, drop_reason::icv) << "byte " << at;
            }
        }
        EXPECT_EQ(in->stats.get(drop_reason::icv), wire.size() - 25);
        std::vector<uint8_t> back;
        EXPECT_EQ(decrypt(*in, wire, back), drop_reason::none);
    }
}

TEST_F(Esp, ReplayedAndOldPacketsAreDropped)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    auto ic = make_config(transforms[0], config::direction::inbound, false, true, false, false);
    ic.replay_window = 64;
    auto out = make_sa(oc, core);
    auto in = make_sa(ic, core);
    const auto wires = encrypt_many(*out, 100);
    std::vector<uint8_t> back;
    EXPECT_EQ(decrypt(*in, wires[90], back), drop_reason::none);
    EXPECT_EQ(decrypt(*in, wires[90], back), drop_reason::replay);
    EXPECT_EQ(decrypt(*in, wires[40], back), drop_reason::none); // inside the window (91 - 64 < 41)
    EXPECT_EQ(decrypt(*in, wires[10], back), drop_reason::too_old);
    EXPECT_EQ(in->stats.get(drop_reason::replay), 1U);
    EXPECT_EQ(in->stats.get(drop_reason::too_old), 1U);
}

// `clear counters` (gateway::clear_counters -> sa_stats::clear): the counters read zero, then count
// exactly what came after; drops too. The lifetime is not reset (RFC 4301 §4.4.2.1).
TEST_F(Esp, ClearedCountersCountWhatComesAfter)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    auto ic = make_config(transforms[0], config::direction::inbound, false, true, false, false);
    auto out = make_sa(oc, core);
    auto in = make_sa(ic, core);
    const auto wires = encrypt_many(*out, 5);
    std::vector<uint8_t> back;
    for (int i = 0; i < 3; ++i) {
        ASSERT_EQ(decrypt(*in, wires[i], back), drop_reason::none);
    }
    EXPECT_EQ(decrypt(*in, wires[0], back), drop_reason::replay);
    EXPECT_EQ(in->stats.get(sa_counter::packets), 3U);
    in->stats.clear();
    out->stats.clear();
    for (size_t c = 0; c < size_t{sa_counter_names.size()}; ++c) {
        EXPECT_EQ(in->stats.get(static_cast<sa_counter>(c)), 0U) << sa_counter_names[c];
        EXPECT_EQ(out->stats.get(static_cast<sa_counter>(c)), 0U) << sa_counter_names[c];
    }
    EXPECT_EQ(in->stats.get(drop_reason::replay), 0U);
    for (int i = 3; i < 5; ++i) {
        ASSERT_EQ(decrypt(*in, wires[i], back), drop_reason::none);
    }
    EXPECT_EQ(decrypt(*in, wires[1], back), drop_reason::replay);
    EXPECT_EQ(in->stats.get(sa_counter::packets), 2U);
    EXPECT_EQ(in->stats.get(sa_counter::decaps), 2U);
    EXPECT_EQ(in->stats.get(sa_counter::verify), 2U); // the replay fails the window before the ICV
    EXPECT_EQ(in->stats.get(sa_counter::bytes), 2 * inner_packet(false, 10).size());
    EXPECT_EQ(in->stats.get(drop_reason::replay), 1U);
    EXPECT_EQ(in->consumed_packets(), 5U);
    EXPECT_EQ(out->stats.get(sa_counter::encaps), 0U);
}

// An inbound SA's counters are added by their one writer with a plain load and store
// (sa_stats::add_owned); a clear from another thread must not be undone by a store of a value loaded
// before it (what zeroing the counter would allow).
// An SA replaced by another (update-sa) hands its counters to the live one; the live SA's worker may
// have loaded a counter just before and store it back just after (add_owned): the carried packets must
// survive that store, and a later clear must drop them like any others.
TEST(SaStats, CarriedOverCountersSurviveAWriterInTheMiddleOfAnAdd)
{
    sa_stats previous, live;
    previous.add_owned(sa_counter::packets, 10);
    previous.clear(); // counted before a clear: not carried
    previous.add_owned(sa_counter::packets, 7);
    live.add_owned(sa_counter::packets, 5);
    const uint64_t loaded = live.counters[static_cast<size_t>(sa_counter::packets)].load(); // the worker's load
    live.carry_over(previous);
    live.counters[static_cast<size_t>(sa_counter::packets)].store(loaded + 1); // ... and its store
    EXPECT_EQ(live.get(sa_counter::packets), 5u + 1u + 7u);
    live.clear();
    EXPECT_EQ(live.get(sa_counter::packets), 0u);
    live.add_owned(sa_counter::packets, 2);
    EXPECT_EQ(live.get(sa_counter::packets), 2u);
}

TEST(SaStats, ClearFromAnotherThreadIsNeverUndoneByTheWriter)
{
    for (int round = 0; round < 20; ++round) {
        sa_stats st;
        std::atomic<uint64_t> progress{0};
        std::atomic<bool> cleared{false};
        constexpr uint64_t total = 400000;
        constexpr uint64_t before_clear = 100000;
        uint64_t seen_cleared_at = 0;
        std::thread writer([&] {
            for (uint64_t i = 0; i < total; ++i) {
                if (seen_cleared_at == 0 && cleared.load(std::memory_order_acquire)) {
                    seen_cleared_at = i;
                }
                st.add_owned(sa_counter::packets, 1);
                progress.store(i + 1, std::memory_order_release);
            }
        });
        while (progress.load(std::memory_order_acquire) < before_clear) {
        }
        st.clear();
        cleared.store(true, std::memory_order_release);
        writer.join();
        const uint64_t got = st.get(sa_counter::packets);
        EXPECT_LE(got, total - before_clear); // the clear took
        if (seen_cleared_at != 0) {
            EXPECT_GE(got, total - seen_cleared_at); // and everything after it counted
        }
    }
}

TEST_F(Esp, DuplicateInsideOneBurstIsDroppedOnce)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    auto ic = make_config(transforms[0], config::direction::inbound, false, true, false, false);
    auto out = make_sa(oc, core);
    auto in = make_sa(ic, core);
    auto wire = encrypt(*out, inner_packet(false, 10));
    rte_mbuf* pkts[3] = {make_mbuf(wire), make_mbuf(wire), make_mbuf(wire)};
    drop_reason reasons[3];
    EXPECT_EQ(inbound_process(core, *in, pkts, 3, reasons), 1);
    EXPECT_EQ(reasons[1], drop_reason::replay);
    EXPECT_EQ(reasons[2], drop_reason::replay);
    for (auto* m : pkts) {
        rte_pktmbuf_free(m);
    }
}

// inbound_process_groups (the worker's call for a burst of many tunnels): SAs of every transform
// interleaved, several groups sharing one pass through the crypto and more packets than one batch,
// with a duplicate, a tampered ICV and an ESN SA among them; every verdict and counter as one
// inbound_process call per SA would give.
TEST_F(Esp, GroupsOfManySasShareOneCallWithPerSaVerdictsAndCounters)
{
    std::vector<tunnel> tunnels = tunnels_of_every_transform(0x2000);
    for (tunnel& tn : tunnels) {
        for (size_t k = 0; k < 7; ++k) {
            tn.plain.push_back(inner_packet(false, 10 + 3 * k));
            tn.wire.push_back(encrypt(*tn.out, tn.plain.back()));
            ASSERT_FALSE(tn.wire.back().empty());
        }
    }
    // Per tunnel: its 7 packets, then a copy of packet 2 (replay), and packet 4 again with its last
    // byte (ICV) flipped (a second copy of 4 would be a replay; this one must fail the ICV first).
    const size_t per = 9;
    std::vector<rte_mbuf*> mbufs(tunnels.size() * per);
    std::vector<drop_reason> reasons(mbufs.size());
    std::vector<sa_runtime*> sas;
    for (size_t g = 0; g < tunnels.size(); ++g) {
        tunnel& tn = tunnels[g];
        for (size_t k = 0; k < 7; ++k) {
            mbufs[g * per + k] = make_mbuf(tn.wire[k]);
        }
        mbufs[g * per + 7] = make_mbuf(tn.wire[2]);
        auto bad = tn.wire[4];
        bad.back() ^= 1;
        mbufs[g * per + 8] = make_mbuf(bad);
        sas.push_back(tn.in.get());
    }
    auto groups = groups_of<inbound_group>(sas, mbufs, reasons, per);
    ASSERT_GT(mbufs.size(), size_t{max_burst}); // more than one batch
    inbound_process_groups(core, groups.data(), static_cast<unsigned>(groups.size()));
    for (size_t g = 0; g < tunnels.size(); ++g) {
        SCOPED_TRACE(std::string(transforms[g / 2].name) + (g % 2 != 0 ? " esn" : ""));
        tunnel& tn = tunnels[g];
        ASSERT_EQ(groups[g].good, 7);
        for (size_t k = 0; k < 7; ++k) {
            EXPECT_EQ(mbuf_bytes(groups[g].pkts[k]), tn.plain[k]); // in arrival order
        }
        // The bad ones after the good, in any order.
        std::vector<drop_reason> bad{groups[g].reasons[7], groups[g].reasons[8]};
        std::sort(bad.begin(), bad.end());
        std::vector<drop_reason> want{drop_reason::replay, drop_reason::icv};
        std::sort(want.begin(), want.end());
        EXPECT_EQ(bad, want);
        EXPECT_EQ(tn.in->stats.get(sa_counter::packets), 7U);
        EXPECT_EQ(tn.in->stats.get(sa_counter::decaps), 7U);
        EXPECT_EQ(tn.in->stats.get(sa_counter::decrypt), tn.in->cipher_mode != IMB_CIPHER_NULL ? 7U : 0U);
        // The duplicate passes the ICV and fails the window after it; the tampered one does not.
        EXPECT_EQ(tn.in->stats.get(sa_counter::verify), 8U);
        EXPECT_EQ(tn.in->stats.get(drop_reason::replay), 1U);
        EXPECT_EQ(tn.in->stats.get(drop_reason::icv), 1U);
        EXPECT_EQ(tn.in->replay.highest(), 7U);
        EXPECT_EQ(tn.in->consumed_packets(), 7U);
    }
    for (auto* m : mbufs) {
        rte_pktmbuf_free(m);
    }
}

// outbound_process_groups with SAs of every transform interleaved and packet sizes from 64 to 1500
// bytes in one burst: the AES-CBC+HMAC packets of one kind go through IPsec-MB's cipher-only and
// hash-only bursts, longest first, the other kinds as chained jobs (imb_burst.h run_jobs). Every packet
// must come out as the one-packet path would make it decryptable, with its own sequence number.
TEST_F(Esp, MixedSizesAndKindsInOneOutboundBurst)
{
    std::vector<tunnel> tunnels = tunnels_of_every_transform(0x3000);
    const size_t sizes[] = {1472, 36, 548, 36, 36, 1200, 36, 548};
    const size_t per = std::size(sizes);
    std::vector<rte_mbuf*> mbufs(tunnels.size() * per);
    std::vector<drop_reason> reasons(mbufs.size());
    std::vector<sa_runtime*> sas;
    for (size_t g = 0; g < tunnels.size(); ++g) {
        for (size_t k = 0; k < per; ++k) {
            tunnels[g].plain.push_back(inner_packet(false, sizes[(k + g) % per]));
            mbufs[g * per + k] = make_mbuf(tunnels[g].plain[k]);
        }
        sas.push_back(tunnels[g].out.get());
    }
    auto groups = groups_of<outbound_group>(sas, mbufs, reasons, per);
    ASSERT_GT(mbufs.size(), size_t{max_burst}); // more than one batch
    outbound_process_groups(core, groups.data(), static_cast<unsigned>(groups.size()));
    for (size_t g = 0; g < tunnels.size(); ++g) {
        SCOPED_TRACE(std::string(transforms[g / 2].name) + (g % 2 != 0 ? " esn" : ""));
        tunnel& tn = tunnels[g];
        ASSERT_EQ(groups[g].good, per);
        for (size_t k = 0; k < per; ++k) {
            const auto wire = mbuf_bytes(groups[g].pkts[k]);
            std::vector<uint8_t> plain;
            ASSERT_EQ(decrypt(*tn.in, wire, plain), drop_reason::none) << "packet " << k;
            EXPECT_EQ(plain, tn.plain[k]) << "packet " << k;
        }
        EXPECT_EQ(tn.in->replay.highest(), per); // sequence numbers 1..per, in order
        EXPECT_EQ(tn.out->stats.get(sa_counter::packets), per);
    }
    for (auto* m : mbufs) {
        rte_pktmbuf_free(m);
    }
}

TEST(ImbBurst, LongestFirstOrdersByStepAndKeepsArrivalOrderWithinAStep)
{
    const uint32_t len[] = {64, 1500, 576, 64, 1500, 576, 64};
    uint16_t idx[] = {0, 1, 2, 3, 4, 5, 6};
    longest_first(idx, 7, [&](uint16_t i) { return len[i]; });
    const uint16_t want[] = {1, 4, 2, 5, 0, 3, 6};
    EXPECT_TRUE(std::equal(std::begin(idx), std::end(idx), std::begin(want)));
    uint16_t same[] = {3, 1, 2};
    longest_first(same, 3, [](uint16_t) { return 100U; });
    EXPECT_EQ(same[0], 3);
    EXPECT_EQ(same[1], 1);
    EXPECT_EQ(same[2], 2);
    // 100 and 120 share a 64-byte step: arrival order, not exact length order.
    const uint32_t near[] = {100, 120, 30};
    uint16_t by_step[] = {0, 1, 2};
    longest_first(by_step, 3, [&](uint16_t i) { return near[i]; });
    EXPECT_EQ(by_step[0], 0);
    EXPECT_EQ(by_step[1], 1);
    EXPECT_EQ(by_step[2], 2);
    // Jumbo lengths keep their order (256-byte steps above 4 KiB).
    const uint32_t jumbo[] = {4200, 9000, 4100, 8000};
    uint16_t big[] = {0, 1, 2, 3};
    longest_first(big, 4, [&](uint16_t i) { return jumbo[i]; });
    const uint16_t want_big[] = {1, 3, 0, 2};
    EXPECT_TRUE(std::equal(std::begin(big), std::end(big), std::begin(want_big)));
    // No packets (run_jobs' call for every batch without AES-CBC+HMAC): nothing touched.
    uint16_t none[] = {7};
    longest_first(none, 0, [](uint16_t) -> uint32_t { ADD_FAILURE() << "len called for n == 0"; return 0; });
    EXPECT_EQ(none[0], 7);
}

TEST(ImbBurst, LongestFirstStepBoundaries)
{
    EXPECT_EQ(longest_first_step(0), 0U);
    EXPECT_EQ(longest_first_step(63), 0U);
    EXPECT_EQ(longest_first_step(64), 1U);
    EXPECT_EQ(longest_first_step(4095), 63U);
    EXPECT_EQ(longest_first_step(4096), 64U);
    EXPECT_EQ(longest_first_step(4351), 64U);
    EXPECT_EQ(longest_first_step(4352), 65U);
    EXPECT_EQ(longest_first_step(9000), 83U);
    EXPECT_EQ(longest_first_step(20479), 127U);
    EXPECT_EQ(longest_first_step(20480), 127U);
    EXPECT_EQ(longest_first_step(UINT32_MAX), 127U);
    EXPECT_EQ(longest_first_steps, 128U);
}

// Against std::stable_sort on the same steps: random bursts of every size up to max_burst, lengths
// up to 9000 and across the whole 32-bit range (past 20 KiB all share the top step), bursts of two to
// four sizes (the per-step passes), and bursts already in order. The copy has one slot past the burst
// that must stay untouched.
TEST(ImbBurst, LongestFirstMatchesAStableSortBySteps)
{
    std::mt19937 rng(7);
    for (int round = 0; round < 3000; ++round) {
        const auto n = static_cast<uint16_t>(round % 7 == 0 ? max_burst : 1 + rng() % max_burst);
        std::vector<uint32_t> len(n);
        const uint32_t few[] = {64, 576, 1500, 9000};
        const unsigned sizes = 2 + round % 3;
        for (auto& l : len) {
            if (round % 2 == 1) { // two to four sizes
                l = few[rng() % sizes];
            } else {
                l = round % 6 == 0 ? static_cast<uint32_t>(rng()) : round % 6 == 2 ? rng() % 9001 : rng() % 1601;
            }
        }
        if (round % 5 == 0) {
            std::sort(len.begin(), len.end(), std::greater<>());
        }
        std::vector<uint16_t> idx(n + 1);
        std::iota(idx.begin(), idx.end(), 0);
        idx[n] = 0xbeef;
        std::vector<uint16_t> want(idx.begin(), idx.begin() + n);
        std::stable_sort(want.begin(), want.end(), [&](uint16_t a, uint16_t b) {
            return longest_first_step(len[a]) > longest_first_step(len[b]);
        });
        longest_first(idx.data(), n, [&](uint16_t i) { return len[i]; });
        ASSERT_EQ(idx[n], 0xbeef) << "round " << round;
        idx.pop_back();
        ASSERT_EQ(idx, want) << "round " << round;
    }
}

TEST_F(Esp, WrongSpiAndWrongProtocolAreDropped)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    auto ic = make_config(transforms[0], config::direction::inbound, false, true, false, false);
    ic.spi = 0x2002;
    auto out = make_sa(oc, core);
    auto in = make_sa(ic, core);
    auto wire = encrypt(*out, inner_packet(false, 10));
    std::vector<uint8_t> back;
    EXPECT_EQ(decrypt(*in, wire, back), drop_reason::no_sa);
}

TEST_F(Esp, SelectorsAreEnforcedAfterDecryption)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    auto ic = make_config(transforms[0], config::direction::inbound, false, true, false, false);
    ic.remote = *config::parse_prefix("10.0.0.0/8"); // inner source 192.168.1.10 is outside
    ic.local = *config::parse_prefix("192.168.2.0/24");
    auto out = make_sa(oc, core);
    auto in = make_sa(ic, core);
    std::vector<uint8_t> back;
    EXPECT_EQ(decrypt(*in, encrypt(*out, inner_packet(false, 10)), back), drop_reason::selector_mismatch);
    EXPECT_EQ(in->stats.get(drop_reason::selector_mismatch), 1U);
}

TEST_F(Esp, TfcPaddingIsAddedAndRemoved)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    oc.tfc_pad_to = 600;
    auto ic = make_config(transforms[0], config::direction::inbound, false, true, false, false);
    auto out = make_sa(oc, core);
    auto in = make_sa(ic, core);
    auto plain = inner_packet(false, 10);
    auto wire = encrypt(*out, plain);
    EXPECT_GE(wire.size(), 600U + 20 + 16 + 16);
    std::vector<uint8_t> back;
    ASSERT_EQ(decrypt(*in, wire, back), drop_reason::none);
    EXPECT_EQ(back, plain);
}

TEST_F(Esp, SequenceExhaustionStopsTheSaBeforeWrap)
{
    for (bool esn : {false, true}) {
        auto oc = make_config(transforms[0], config::direction::outbound, false, true, esn, false);
        oc.initial_sequence = esn ? UINT64_MAX - 2 : UINT32_MAX - 2;
        auto out = make_sa(oc, core);
        std::vector<rte_mbuf*> pkts;
        for (int i = 0; i < 5; ++i) {
            pkts.push_back(make_mbuf(inner_packet(false, 10)));
        }
        drop_reason reasons[5];
        EXPECT_EQ(outbound_process(core, *out, pkts.data(), 5, reasons), 2);
        EXPECT_EQ(reasons[2], drop_reason::seq_exhausted);
        EXPECT_EQ(out->stats.get(drop_reason::seq_exhausted), 3U);
        sa_event events[4];
        ASSERT_EQ(core.drain(events), 1U);
        EXPECT_EQ(events[0].kind, sa_event_kind::seq_exhausted);
        for (auto* m : pkts) {
            rte_pktmbuf_free(m);
        }
    }
}

TEST_F(Esp, EsnCarriesTheHighBitsAcrossTwoToThe32)
{
    for (const auto& t : {transforms[0], transforms[3], transforms[6]}) {
        SCOPED_TRACE(t.name);
        auto oc = make_config(t, config::direction::outbound, false, true, true, false);
        oc.initial_sequence = uint64_t{1} << 31;
        auto ic = make_config(t, config::direction::inbound, false, true, true, false);
        auto out = make_sa(oc, core);
        auto in = make_sa(ic, core);
        std::vector<uint8_t> back;
        // A receiver infers the high half from its window (RFC 4303 A2.2), so it has to have seen the
        // low epoch before the sender crosses 2^32: one packet at 2^31 + 1, then a run across.
        ASSERT_EQ(decrypt(*in, encrypt(*out, inner_packet(false, 10)), back), drop_reason::none);
        out->seq.store(UINT32_MAX - 3);
        const auto wires = encrypt_many(*out, 7);
        ASSERT_EQ(decrypt(*in, wires[0], back), drop_reason::none);
        ASSERT_EQ(decrypt(*in, wires[6], back), drop_reason::none); // 2^32 + 3: next epoch
        for (int i = 1; i < 6; ++i) {
            ASSERT_EQ(decrypt(*in, wires[static_cast<size_t>(i)], back), drop_reason::none) << i;
        }
        EXPECT_EQ(in->replay.highest(), uint64_t{UINT32_MAX} + 4);
        EXPECT_EQ(decrypt(*in, wires[2], back), drop_reason::replay);
        // Authentication covers the inferred high bits: the same packet claimed one epoch later fails.
    }
}

TEST_F(Esp, LifetimesRaiseSoftThenStopAtHard)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    oc.lifetime.packets = 10;
    oc.lifetime.soft_packets = 5;
    auto out = make_sa(oc, core);
    int sent = 0;
    for (int i = 0; i < 12; ++i) {
        if (!encrypt(*out, inner_packet(false, 10)).empty()) {
            ++sent;
        }
    }
    EXPECT_EQ(sent, 10);
    EXPECT_EQ(out->stats.get(drop_reason::lifetime_expired), 2U);
    sa_event events[4];
    ASSERT_EQ(core.drain(events), 2U);
    EXPECT_EQ(events[0].kind, sa_event_kind::soft_expire);
    EXPECT_EQ(events[1].kind, sa_event_kind::hard_expire);
}

// A worker's core defers outbound `packets`/`bytes` (crypto_core::defer_outbound_counters): nothing
// reaches the SA until a flush, then exactly what was sent, whatever evictions happened on the way
// (more SAs than the table has slots); SAs with volume lifetimes are never deferred, so their
// limits stay exact (soft, then hard at exactly the limit).
TEST_F(Esp, DeferredOutboundCountersReachTheSaOnFlush)
{
    core.defer_outbound_counters();
    const size_t inner = inner_packet(false, 10).size();
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    auto out = make_sa(oc, core);
    ASSERT_EQ(encrypt_many(*out, 5).size(), 5U);
    EXPECT_TRUE(core.counters_pending());
    EXPECT_EQ(out->stats.get(sa_counter::packets), 0U);
    core.flush_counters();
    EXPECT_FALSE(core.counters_pending());
    EXPECT_EQ(out->stats.get(sa_counter::packets), 5U);
    EXPECT_EQ(out->stats.get(sa_counter::encaps), 5U);
    EXPECT_EQ(out->stats.get(sa_counter::bytes), 5 * inner);
    core.flush_counters(); // nothing twice
    EXPECT_EQ(out->stats.get(sa_counter::packets), 5U);

    // More SAs than slots, each used twice, interleaved: evictions write back on the way.
    const unsigned many = (1U << crypto_core::deferred_bits) + 300;
    std::vector<sa_ptr> sas;
    for (unsigned i = 0; i < many; ++i) {
        auto c = make_config(transforms[0], config::direction::outbound, false, true, false, false);
        c.spi = 0x10000 + i;
        sas.push_back(make_sa(c, core));
    }
    for (int round = 0; round < 2; ++round) {
        for (auto& sa : sas) {
            ASSERT_FALSE(encrypt(*sa, inner_packet(false, 10)).empty());
        }
    }
    core.flush_counters();
    for (auto& sa : sas) {
        ASSERT_EQ(sa->stats.get(sa_counter::packets), 2U) << sa->spi;
        ASSERT_EQ(sa->stats.get(sa_counter::bytes), 2 * inner) << sa->spi;
    }

    // Volume lifetimes: counted at once, stopped at exactly the hard limit.
    oc.spi += 1;
    oc.lifetime.packets = 10;
    oc.lifetime.soft_packets = 5;
    auto limited = make_sa(oc, core);
    int sent = 0;
    for (int i = 0; i < 12; ++i) {
        sent += encrypt(*limited, inner_packet(false, 10)).empty() ? 0 : 1;
    }
    EXPECT_EQ(sent, 10);
    EXPECT_FALSE(core.counters_pending());
    EXPECT_EQ(limited->stats.get(sa_counter::packets), 10U);
    EXPECT_EQ(limited->stats.get(drop_reason::lifetime_expired), 2U);
    sa_event events[4];
    ASSERT_EQ(core.drain(events), 2U);
    EXPECT_EQ(events[0].kind, sa_event_kind::soft_expire);
    EXPECT_EQ(events[1].kind, sa_event_kind::hard_expire);
}

// An inbound SA consumes its counters as lifetime too (one writer, plain adds): soft then hard
// events once each, packets past the hard limit dropped as lifetime_expired, and `clear counters`
// in between gives it no new life.
TEST_F(Esp, InboundLifetimeCountsAcrossAClearAndStopsAtHard)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    auto ic = make_config(transforms[0], config::direction::inbound, false, true, false, false);
    ic.lifetime.packets = 4;
    ic.lifetime.soft_packets = 2;
    auto out = make_sa(oc, core);
    auto in = make_sa(ic, core);
    const auto wires = encrypt_many(*out, 6);
    std::vector<uint8_t> back;
    ASSERT_EQ(decrypt(*in, wires[0], back), drop_reason::none);
    ASSERT_EQ(decrypt(*in, wires[1], back), drop_reason::none);
    in->stats.clear();
    EXPECT_EQ(in->consumed_packets(), 2U);
    EXPECT_EQ(in->consumed_bytes(), 2 * inner_packet(false, 10).size());
    ASSERT_EQ(decrypt(*in, wires[2], back), drop_reason::none);
    ASSERT_EQ(decrypt(*in, wires[3], back), drop_reason::none);
    EXPECT_EQ(decrypt(*in, wires[4], back), drop_reason::lifetime_expired);
    EXPECT_EQ(decrypt(*in, wires[5], back), drop_reason::lifetime_expired);
    EXPECT_EQ(in->stats.get(sa_counter::packets), 2U); // since the clear
    EXPECT_EQ(in->consumed_packets(), 4U);
    EXPECT_EQ(in->stats.get(drop_reason::lifetime_expired), 2U);
    sa_event events[4];
    ASSERT_EQ(core.drain(events), 2U);
    EXPECT_EQ(events[0].kind, sa_event_kind::soft_expire);
    EXPECT_EQ(events[0].dir, config::direction::inbound);
    EXPECT_EQ(events[1].kind, sa_event_kind::hard_expire);
}

// An outbound SA's consumed lifetime is its `packets`/`bytes` counters (one locked add each per
// burst, sa_runtime::life_bytes): `clear counters` must not give it a new life, and what a replaced SA
// carried over (life_packets, gateway.cpp) counts against the limit too.
TEST_F(Esp, OutboundLifetimeSurvivesClearedCountersAndCountsCarriedOver)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    oc.lifetime.packets = 6;
    auto out = make_sa(oc, core);
    const size_t size = inner_packet(false, 10).size();
    for (int i = 0; i < 3; ++i) {
        ASSERT_FALSE(encrypt(*out, inner_packet(false, 10)).empty());
    }
    EXPECT_EQ(out->consumed_packets(), 3U);
    EXPECT_EQ(out->consumed_bytes(), 3 * size);
    out->stats.clear();
    EXPECT_EQ(out->stats.get(sa_counter::packets), 0U);
    EXPECT_EQ(out->consumed_packets(), 3U);
    out->life_packets.fetch_add(2); // carried over from a replaced SA
    int sent = 0;
    for (int i = 0; i < 4; ++i) {
        sent += encrypt(*out, inner_packet(false, 10)).empty() ? 0 : 1;
    }
    EXPECT_EQ(sent, 1);
    EXPECT_EQ(out->consumed_packets(), 6U);
    EXPECT_EQ(out->stats.get(sa_counter::packets), 1U);
    EXPECT_EQ(out->stats.get(sa_counter::encaps), 1U);
    EXPECT_EQ(out->stats.get(drop_reason::lifetime_expired), 3U);
}

TEST_F(Esp, SequenceNumbersAreUniqueAcrossWorkers)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    auto out = make_sa(oc, core);
    constexpr int per_thread = 2000;
    std::vector<uint32_t> seen[2];
    auto worker = [&](int id) {
        crypto_core own;
        for (int i = 0; i < per_thread / 16; ++i) {
            rte_mbuf* pkts[16];
            for (auto*& m : pkts) {
                m = make_mbuf(inner_packet(false, 20));
            }
            drop_reason reasons[16];
            uint16_t good = outbound_process(own, *out, pkts, 16, reasons);
            for (uint16_t k = 0; k < 16; ++k) {
                if (k < good) {
                    const uint8_t* p = rte_pktmbuf_mtod(pkts[k], const uint8_t*);
                    seen[id].push_back(static_cast<uint32_t>(p[24] << 24 | p[25] << 16 | p[26] << 8 | p[27]));
                }
                rte_pktmbuf_free(pkts[k]);
            }
        }
    };
    std::thread a(worker, 0);
    std::thread b(worker, 1);
    a.join();
    b.join();
    std::set<uint32_t> all(seen[0].begin(), seen[0].end());
    all.insert(seen[1].begin(), seen[1].end());
    EXPECT_EQ(all.size(), 2U * per_thread);
    EXPECT_EQ(*all.begin(), 1U);
    EXPECT_EQ(*all.rbegin(), 2U * per_thread);
}

TEST_F(Esp, ClassifySeparatesEspIkeAndKeepalives)
{
    auto oc = make_config(transforms[0], config::direction::outbound, false, true, false, true);
    auto out = make_sa(oc, core);
    auto wire = encrypt(*out, inner_packet(false, 10));
    rte_mbuf* m = make_mbuf(wire);
    auto c = classify_inbound(m);
    EXPECT_EQ(c.kind, inbound_kind::esp);
    EXPECT_EQ(c.spi, 0x1001U);
    rte_pktmbuf_free(m);

    // Non-ESP marker: IKE on 4500.
    auto ike = wire;
    ike.resize(20 + 8 + 8);
    ike[2] = 0;
    ike[3] = 36;
    ike[24] = 0;
    ike[25] = 16;
    std::memset(&ike[28], 0, 8);
    m = make_mbuf(ike);
    EXPECT_EQ(classify_inbound(m).kind, inbound_kind::control);
    rte_pktmbuf_free(m);

    // NAT keepalive: one 0xFF byte.
    auto ka = wire;
    ka.resize(29);
    ka[3] = 29;
    ka[25] = 9;
    ka[28] = 0xff;
    m = make_mbuf(ka);
    EXPECT_EQ(classify_inbound(m).kind, inbound_kind::control);
    rte_pktmbuf_free(m);

    // Short UDP header.
    auto shortudp = wire;
    shortudp.resize(24);
    shortudp[3] = 24;
    m = make_mbuf(shortudp);
    EXPECT_EQ(classify_inbound(m).kind, inbound_kind::malformed);
    rte_pktmbuf_free(m);
}

TEST_F(Esp, KeysAreWipedInTheDisplayCopy)
{
    auto oc = make_config(transforms[6], config::direction::outbound, false, true, false, false);
    auto out = make_sa(oc, core);
    for (uint8_t b : out->config.cipher_key) {
        EXPECT_EQ(b, 0);
    }
    for (uint8_t b : out->config.integ_key) {
        EXPECT_EQ(b, 0);
    }
}

TEST_F(Esp, RefusesUnsafeCombinations)
{
    auto c = make_config(transforms[9], config::direction::outbound, false, true, false, false);
    c.integ = integ_alg::none;
    c.integ_key_length = 0;
    EXPECT_THROW(make_sa(c, core), std::invalid_argument); // null + none
    auto g = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    g.integ = integ_alg::hmac_sha256_128;
    g.integ_key_length = 32;
    EXPECT_THROW(make_sa(g, core), std::invalid_argument); // AEAD + integrity
    auto k = make_config(transforms[0], config::direction::outbound, false, true, false, false);
    k.cipher_key_length = 16; // salt missing
    EXPECT_THROW(make_sa(k, core), std::invalid_argument);
}

} // namespace
} // namespace espresso::dp
