// Known-answer tests of the ESP engine against published packets: RFC 3602 §4 cases 5-8 (AES-CBC,
// no integrity) and draft-mcgrew-gcm-test-01 §4 (AES-GCM and AES-GMAC). Each packet goes through
// inbound_process() and must come out as the published plaintext packet; the GCM/GMAC plaintexts
// also go through outbound_process() and back through a second inbound SA.
#include <gtest/gtest.h>
#include <rte_mbuf.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "espresso/dp/crypto_core.h"
#include "espresso/dp/ipsec.h"
#include "espresso/dp/sa.h"
#include "test_util.h"
#include "vectors/gcm_esp_vectors.h"
#include "vectors/rfc3602_vectors.h"

namespace espresso::dp {
namespace {

using test::from_hex;
using test::make_mbuf;
using test::mbuf_bytes;

std::string hex(const std::vector<uint8_t>& bytes)
{
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    for (uint8_t b : bytes) {
        out += digits[b >> 4];
        out += digits[b & 15];
    }
    return out;
}

std::string reason_name(drop_reason r)
{
    return std::string(drop_reason_names[static_cast<size_t>(r)]);
}

config::ip_address v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    config::ip_address addr;
    addr.family = 4;
    addr.bytes[0] = a;
    addr.bytes[1] = b;
    addr.bytes[2] = c;
    addr.bytes[3] = d;
    return addr;
}

void set_ipv4_checksum(std::vector<uint8_t>& packet)
{
    packet[10] = 0;
    packet[11] = 0;
    uint32_t sum = 0;
    for (size_t i = 0; i < 20; i += 2) {
        sum += static_cast<uint32_t>(packet[i] << 8 | packet[i + 1]);
    }
    while ((sum >> 16) != 0) {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    const auto check = static_cast<uint16_t>(~sum);
    packet[10] = static_cast<uint8_t>(check >> 8);
    packet[11] = static_cast<uint8_t>(check);
}

// The draft's GCM packets start at the SPI; the tests frame them in this IPv4 header
// (192.0.2.1 -> 192.0.2.2, RFC 5737 documentation addresses, TTL 64, ID 0x1234).
std::vector<uint8_t> ipv4_packet(uint8_t protocol, const std::vector<uint8_t>& payload)
{
    const size_t total = 20 + payload.size();
    std::vector<uint8_t> p = {0x45, 0x00, static_cast<uint8_t>(total >> 8), static_cast<uint8_t>(total),
                              0x12, 0x34, 0x00, 0x00, 64, protocol, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2};
    set_ipv4_checksum(p);
    p.resize(total);
    std::copy(payload.begin(), payload.end(), p.begin() + 20);
    return p;
}

struct burst_result {
    uint16_t good;
    drop_reason reason;
    std::vector<uint8_t> bytes; // the packet after processing (good or not)
};

template <typename Process>
burst_result run_one(Process process, const std::vector<uint8_t>& input)
{
    rte_mbuf* pkts[1] = {make_mbuf(input)};
    drop_reason reasons[1] = {drop_reason::none};
    burst_result r;
    r.good = process(pkts, reasons);
    r.reason = r.good == 1 ? drop_reason::none : reasons[0];
    r.bytes = mbuf_bytes(pkts[0]);
    rte_pktmbuf_free(pkts[0]);
    return r;
}

burst_result inbound(crypto_core& core, sa_runtime& sa, const std::vector<uint8_t>& input)
{
    return run_one([&](rte_mbuf** p, drop_reason* r) { return inbound_process(core, sa, p, 1, r); }, input);
}

burst_result outbound(crypto_core& core, sa_runtime& sa, const std::vector<uint8_t>& input)
{
    return run_one([&](rte_mbuf** p, drop_reason* r) { return outbound_process(core, sa, p, 1, r); }, input);
}

// Lets a fresh inbound window accept a vector's sequence number: with ESN the receiver can only
// infer the high 32 bits from a window that is already near them (RFC 4303 Appendix A2.2).
void seed_replay_window(sa_runtime& sa, uint64_t seq)
{
    if (seq > 1) {
        ASSERT_EQ(sa.replay.accept(seq - 1), drop_reason::none);
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 3602 §4 cases 5-8.

class KnownAnswerCbc : public ::testing::TestWithParam<test::vectors::cbc_esp_vector> {
protected:
    crypto_core core_;
};

config::sa_config cbc_config(const test::vectors::cbc_esp_vector& v)
{
    config::sa_config c;
    c.spi = v.spi;
    c.dir = config::direction::inbound;
    c.protocol = config::ipsec_protocol::esp;
    c.mode = v.tunnel ? config::ipsec_mode::tunnel : config::ipsec_mode::transport;
    // The RFC's hosts: 192.168.123.3 sends to 192.168.123.100 (transport) or .200 (tunnel peer).
    c.source = v4(192, 168, 123, 3);
    c.destination = v.tunnel ? v4(192, 168, 123, 200) : v4(192, 168, 123, 100);
    c.cipher = config::cipher_alg::aes_cbc;
    c.cipher_key_bytes = 16;
    const auto key = from_hex(v.key);
    std::memcpy(c.cipher_key.data(), key.data(), key.size());
    c.cipher_key_length = static_cast<uint8_t>(key.size());
    c.integ = config::integ_alg::none; // RFC 3602 §4: these packets carry no ICV
    c.replay_window = 64;
    c.origin = "RFC 3602 case " + std::to_string(v.test_case);
    return c;
}

TEST_P(KnownAnswerCbc, InboundGivesTheOriginalPacket)
{
    const auto& v = GetParam();
    SCOPED_TRACE("RFC 3602 §4 case " + std::to_string(v.test_case));
    sa_ptr sa;
    try {
        sa = make_sa(cbc_config(v), core_);
    } catch (const std::invalid_argument& e) {
        // The operator-facing config refuses ESP encryption without integrity; the SA installer
        // may too. These vectors have no ICV, so there is nothing else to run them with.
        GTEST_SKIP() << "make_sa refuses AES-CBC without integrity: " << e.what();
    }
    auto input = from_hex(v.outer);
    const auto esp = from_hex(v.esp);
    input.insert(input.end(), esp.begin(), esp.end());

    const auto r = inbound(core_, *sa, input);
    ASSERT_EQ(r.good, 1) << reason_name(r.reason);
    EXPECT_EQ(hex(r.bytes), hex(from_hex(v.expected)));
    EXPECT_EQ(sa->replay.highest(), v.seq);

    // The same packet again is a replay (RFC 4303 §3.4.3).
    const auto again = inbound(core_, *sa, input);
    EXPECT_EQ(again.good, 0);
    EXPECT_EQ(again.reason, drop_reason::replay) << reason_name(again.reason);
}

std::string cbc_name(const ::testing::TestParamInfo<test::vectors::cbc_esp_vector>& info)
{
    return "case" + std::to_string(info.param.test_case);
}

INSTANTIATE_TEST_SUITE_P(KnownAnswerRfc3602, KnownAnswerCbc,
                         ::testing::ValuesIn(test::vectors::cbc_esp_vectors), cbc_name);

// ---------------------------------------------------------------------------------------------
// draft-mcgrew-gcm-test-01 §4.

class KnownAnswerGcm : public ::testing::TestWithParam<test::vectors::gcm_esp_vector> {
protected:
    void SetUp() override
    {
        // RFC 4303 §2.1: SPIs 1-255 are reserved and 0 means "no SA"; the installer refuses them.
        if (GetParam().spi < 256) {
            GTEST_SKIP() << "SPI " << GetParam().spi << " is reserved (RFC 4303 §2.1); make_sa refuses it";
        }
    }

    crypto_core core_;
};

config::sa_config gcm_config(const test::vectors::gcm_esp_vector& v, config::direction dir)
{
    config::sa_config c;
    c.spi = v.spi;
    c.dir = dir;
    c.protocol = config::ipsec_protocol::esp;
    c.mode = config::ipsec_mode::transport; // see gcm_esp_vectors.h: the payloads are not tunnel packets
    c.cipher = v.gmac ? config::cipher_alg::aes_gmac : config::cipher_alg::aes_gcm16;
    const auto key = from_hex(v.key);
    const auto salt = from_hex(v.salt);
    c.cipher_key_bytes = static_cast<uint8_t>(key.size());
    // RFC 4106 §8.1 / RFC 4543 §3.2: keying material = AES key || 4-byte salt.
    std::memcpy(c.cipher_key.data(), key.data(), key.size());
    std::memcpy(c.cipher_key.data() + key.size(), salt.data(), salt.size());
    c.cipher_key_length = static_cast<uint8_t>(key.size() + salt.size());
    c.integ = config::integ_alg::none;
    c.esn = v.esn;
    c.replay_window = 64;
    // Outbound: the first packet gets exactly the vector's sequence number.
    c.initial_sequence = dir == config::direction::outbound ? v.seq - 1 : 0;
    c.origin = "draft-mcgrew-gcm-test-01 case " + std::to_string(v.test_case);
    return c;
}

// What the vector decrypts to, as a transport-mode packet in our framing header.
std::vector<uint8_t> gcm_expected_packet(const test::vectors::gcm_esp_vector& v)
{
    auto plaintext = from_hex(v.plaintext);
    const uint8_t next_header = plaintext.back();
    const uint8_t pad_len = plaintext[plaintext.size() - 2];
    plaintext.resize(plaintext.size() - 2 - pad_len);
    return ipv4_packet(next_header, plaintext);
}

TEST_P(KnownAnswerGcm, InboundGivesThePlaintext)
{
    const auto& v = GetParam();
    SCOPED_TRACE("draft-mcgrew-gcm-test-01 §4 case " + std::to_string(v.test_case));
    auto sa = make_sa(gcm_config(v, config::direction::inbound), core_);
    seed_replay_window(*sa, v.seq);

    const auto input = ipv4_packet(50, from_hex(v.esp));
    const auto r = inbound(core_, *sa, input);
    ASSERT_EQ(r.good, 1) << reason_name(r.reason);
    EXPECT_EQ(hex(r.bytes), hex(gcm_expected_packet(v)));
    EXPECT_EQ(sa->replay.highest(), v.seq);
}

TEST_P(KnownAnswerGcm, InboundRejectsAFlippedIcvBit)
{
    const auto& v = GetParam();
    auto sa = make_sa(gcm_config(v, config::direction::inbound), core_);
    seed_replay_window(*sa, v.seq);
    auto input = ipv4_packet(50, from_hex(v.esp));
    input.back() ^= 0x01;
    const auto r = inbound(core_, *sa, input);
    EXPECT_EQ(r.good, 0);
    EXPECT_EQ(r.reason, drop_reason::icv) << reason_name(r.reason);
    EXPECT_EQ(sa->replay.highest(), v.seq > 1 ? v.seq - 1 : 0) << "window moved without a valid ICV";
}

TEST_P(KnownAnswerGcm, OutboundThenInboundRoundTrip)
{
    const auto& v = GetParam();
    SCOPED_TRACE("draft-mcgrew-gcm-test-01 §4 case " + std::to_string(v.test_case));
    auto out_sa = make_sa(gcm_config(v, config::direction::outbound), core_);
    auto in_sa = make_sa(gcm_config(v, config::direction::inbound), core_);
    seed_replay_window(*in_sa, v.seq);

    const auto plain = gcm_expected_packet(v);
    const auto protected_packet = outbound(core_, *out_sa, plain);
    ASSERT_EQ(protected_packet.good, 1) << reason_name(protected_packet.reason);

    // Same padding rule as the draft (minimal, RFC 4303 §2.4), so the same length; the header is
    // ours with protocol 50 and the new length.
    const auto esp = from_hex(v.esp);
    const auto& out = protected_packet.bytes;
    ASSERT_EQ(out.size(), 20 + esp.size());
    const auto framed = ipv4_packet(50, esp);
    EXPECT_EQ(hex({out.begin(), out.begin() + 20}), hex({framed.begin(), framed.begin() + 20}));
    // SPI and low sequence bits as in the vector (RFC 4303 §2.1, §2.2).
    EXPECT_EQ(hex({out.begin() + 20, out.begin() + 28}), hex({esp.begin(), esp.begin() + 8}));

    // Our IV is the 64-bit sequence number (RFC 4106 §3.1 allows any non-repeating value). Where the
    // draft's IV happens to be the same, the whole packet must match byte for byte.
    std::vector<uint8_t> seq_iv(8);
    for (int i = 0; i < 8; ++i) {
        seq_iv[static_cast<size_t>(i)] = static_cast<uint8_t>(v.seq >> (56 - 8 * i));
    }
    if (std::equal(seq_iv.begin(), seq_iv.end(), esp.begin() + 8)) {
        EXPECT_EQ(hex({out.begin() + 20, out.end()}), hex(esp));
    } else {
        EXPECT_EQ(hex({out.begin() + 28, out.begin() + 36}), hex(seq_iv));
    }

    const auto back = inbound(core_, *in_sa, out);
    ASSERT_EQ(back.good, 1) << reason_name(back.reason);
    EXPECT_EQ(hex(back.bytes), hex(plain));
}

std::string gcm_name(const ::testing::TestParamInfo<test::vectors::gcm_esp_vector>& info)
{
    return "case" + std::to_string(info.param.test_case) + (info.param.gmac ? "_gmac" : "") +
           (info.param.esn ? "_esn" : "");
}

INSTANTIATE_TEST_SUITE_P(KnownAnswerMcgrew, KnownAnswerGcm,
                         ::testing::ValuesIn(test::vectors::gcm_esp_vectors), gcm_name);

} // namespace
} // namespace espresso::dp
