// Tests of controlplane/ike/wire/ike_message.cpp (RFC 7296 §3): round trips of every payload, tables of
// truncated and inconsistent inputs, the critical bit, the SK-last rule, the limits, and messages made by
// an independent encoder (scapy, tests/ike/vectors/make_scapy_vectors.py).
// Suites are named IkeMessage* and IkeWire*: --gtest_filter='*Message*:*Wire*' selects them all.
#include "espresso/cp/ike_message.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>

namespace {

using namespace espresso::cp;

bytes from_hex(std::string_view hex)
{
    bytes out;
    auto nibble = [](char c) -> uint8_t {
        if (c >= '0' && c <= '9') {
            return static_cast<uint8_t>(c - '0');
        }
        return static_cast<uint8_t>((c | 0x20) - 'a' + 10);
    };
    for (size_t i = 0; i + 1 < hex.size(); i += 2) {
        out.push_back(static_cast<uint8_t>(nibble(hex[i]) << 4 | nibble(hex[i + 1])));
    }
    return out;
}

bytes seq(uint8_t first, size_t n)
{
    bytes out(n);
    for (size_t i = 0; i < n; ++i) {
        out[i] = static_cast<uint8_t>(first + i);
    }
    return out;
}

// By value: callers bind the result of a temporary parse (`const auto& m = ok(parse_message(...))`).
template <typename T>
T ok(parse_result<T> r)
{
    if (const auto* e = std::get_if<parse_error>(&r)) {
        ADD_FAILURE() << "parse failed: " << e->what;
        return T{};
    }
    return std::get<T>(std::move(r));
}

template <typename T>
parse_error err(const parse_result<T>& r)
{
    if (const auto* e = std::get_if<parse_error>(&r)) {
        return *e;
    }
    ADD_FAILURE() << "parse succeeded where it should fail";
    return parse_error{"(succeeded)"};
}

ike_header sample_header(exchange_type x = exchange_type::ike_sa_init)
{
    ike_header h;
    h.spi_i = 0x0102030405060708;
    h.spi_r = 0x1112131415161718;
    h.exchange = static_cast<uint8_t>(x);
    h.flags = flag_initiator;
    h.message_id = 3;
    return h;
}

// A message with a header and a raw payload chain (the header length made right).
bytes message_bytes(payload_type first, const bytes& chain, uint8_t version = 0x20)
{
    ike_header h = sample_header();
    h.next = first;
    h.version = version;
    h.length = static_cast<uint32_t>(header_size + chain.size());
    bytes out(header_size);
    write_header(h, std::span<uint8_t, header_size>(out.data(), header_size));
    out.insert(out.end(), chain.begin(), chain.end());
    return out;
}

// A generic payload header (RFC 7296 §3.2) in front of `body`.
bytes raw(uint8_t next, uint8_t flags, const bytes& body)
{
    // Sized once and copied into (g++ 12 -O3 warns falsely, -Warray-bounds, on an insert after a brace-init).
    bytes out(4 + body.size());
    out[0] = next;
    out[1] = flags;
    out[2] = static_cast<uint8_t>((body.size() + 4) >> 8);
    out[3] = static_cast<uint8_t>(body.size() + 4);
    std::copy(body.begin(), body.end(), out.begin() + 4);
    return out;
}

bytes cat(std::initializer_list<bytes> parts)
{
    bytes out;
    for (const auto& p : parts) {
        out.insert(out.end(), p.begin(), p.end());
    }
    return out;
}

sa_payload sample_sa()
{
    proposal p1{1, static_cast<uint8_t>(protocol_id::ike), {}, {}};
    p1.transforms = {
        {transform_type::encr, 20, 256}, {transform_type::prf, 5, {}}, {transform_type::dh, 19, {}}};
    proposal p2{2, static_cast<uint8_t>(protocol_id::ike), {}, {}};
    p2.transforms = {{transform_type::encr, 12, 128},
                     {transform_type::prf, 6, {}},
                     {transform_type::integ, 12, {}},
                     {transform_type::dh, 31, {}}};
    return sa_payload{{p1, p2}};
}

// One of every payload body, in an order a parser accepts (SK last).
std::vector<payload> every_payload()
{
    proposal esp{1, static_cast<uint8_t>(protocol_id::esp), {0xc0, 0xff, 0xee, 0x01}, {}};
    esp.transforms = {{transform_type::encr, 20, 256}, {transform_type::esn, 0, {}}};
    proposal rekey{
        1, static_cast<uint8_t>(protocol_id::ike), seq(0x40, 8), {{transform_type::encr, 20, 128}}};
    traffic_selector v4{7, 0, 0, 65535, {10, 0, 0, 0}, {10, 0, 255, 255}};
    traffic_selector v6{8, 17, 500, 4500, seq(0x20, 16), seq(0x30, 16)};
    return {
        {payload_type::sa, false, sample_sa()},
        {payload_type::sa, false, sa_payload{{esp}}},
        {payload_type::sa, false, sa_payload{{rekey}}},
        {payload_type::ke, false, ke_payload{19, seq(0, 64)}},
        {payload_type::idi, false, id_payload{static_cast<uint8_t>(id_type::fqdn), {'a', '.', 'b'}}},
        {payload_type::idr, false, id_payload{static_cast<uint8_t>(id_type::ipv4_addr), {192, 0, 2, 1}}},
        {payload_type::cert, false, cert_payload{4, seq(0x10, 40)}},
        {payload_type::certreq, false, cert_payload{4, seq(0x60, 20)}},
        {payload_type::auth, false,
         auth_payload{static_cast<uint8_t>(auth_method::shared_key_mic), seq(0x80, 32)}},
        {payload_type::nonce, false, nonce_payload{seq(0xa0, 32)}},
        {payload_type::notify, false, notify_payload{0, {}, 16388, seq(0x30, 20)}},
        {payload_type::notify, false, notify_payload{3, {1, 2, 3, 4}, 16393, {}}},
        {payload_type::del, false, delete_payload{3, {{1, 2, 3, 4}, {5, 6, 7, 8}}}},
        {payload_type::del, false, delete_payload{1, {}}},
        {payload_type::vendor, false, vendor_payload{{'e', 's', 'p'}}},
        {payload_type::tsi, false, ts_payload{{v4, v6}}},
        {payload_type::tsr, false, ts_payload{{v4}}},
        {payload_type::cp, false, unknown_payload{47, {1, 0, 0, 0, 0, 1, 0, 0}}},
        {static_cast<payload_type>(200), false, unknown_payload{200, {9, 9}}},
        {payload_type::nonce, true, nonce_payload{seq(0, 16)}}, // critical on a known payload: kept
        {payload_type::sk, false, sk_payload{payload_type::idi, seq(0, 40), 0}},
    };
}

void expect_every_prefix_fails(const bytes& wire);

// ---- round trips -----------------------------------------------------------------------------------

TEST(IkeMessageRoundTrip, EveryPayloadType)
{
    auto payloads = every_payload();
    bytes wire = serialize_message(sample_header(), payloads);
    auto parsed = parse_message(wire);
    const auto& m = ok(parsed);
    ASSERT_EQ(m.payloads.size(), payloads.size());
    EXPECT_EQ(m.header.length, wire.size());
    EXPECT_EQ(m.header.next, payload_type::sa);
    // aad_size is where the SK body starts: everything before it in the datagram.
    auto& sk = std::get<sk_payload>(payloads.back().body);
    sk.aad_size = wire.size() - sk.body.size();
    for (size_t i = 0; i < payloads.size(); ++i) {
        EXPECT_EQ(m.payloads[i], payloads[i])
            << "payload " << i << " (" << payload_name(payloads[i].type) << ")";
    }
    EXPECT_EQ(serialize_message(m.header, m.payloads), wire);
}

TEST(IkeMessageRoundTrip, DecryptedChain)
{
    auto payloads = every_payload();
    payloads.pop_back(); // no SK inside SK
    payload_type first{};
    bytes chain = serialize_payloads(payloads, first);
    EXPECT_EQ(first, payload_type::sa);
    auto parsed = parse_payloads(first, chain);
    EXPECT_EQ(ok(parsed), payloads);
    payload_type again{};
    EXPECT_EQ(serialize_payloads(ok(parsed), again), chain);

    payload_type none_first = payload_type::sa;
    EXPECT_TRUE(serialize_payloads({}, none_first).empty());
    EXPECT_EQ(none_first, payload_type::none);
    EXPECT_TRUE(ok(parse_payloads(payload_type::none, {})).empty());
}

TEST(IkeMessageRoundTrip, NestedSkRefused)
{
    std::vector<payload> chain = {{payload_type::sk, false, sk_payload{payload_type::none, seq(0, 16), 0}}};
    payload_type first{};
    bytes b = serialize_payloads(chain, first);
    EXPECT_NE(err(parse_payloads(first, b)).what.find("inside an SK"), std::string::npos);
}

TEST(IkeMessageRoundTrip, HeaderFields)
{
    ike_header h = sample_header(exchange_type::create_child_sa);
    h.flags = flag_response;
    h.message_id = 0xdeadbeef;
    h.length = 1234;
    bytes out(header_size);
    write_header(h, std::span<uint8_t, header_size>(out.data(), header_size));
    EXPECT_EQ(out, from_hex("0102030405060708111213141516171800202420deadbeef000004d2"));
    auto back = parse_header(out);
    ASSERT_TRUE(back);
    EXPECT_EQ(*back, h);
    EXPECT_TRUE(back->is_response());
    EXPECT_FALSE(back->from_initiator());
    EXPECT_FALSE(parse_header(std::span(out).first(27)));
}

// ---- the SK payload --------------------------------------------------------------------------------

TEST(IkeMessageSk, AadSizeCoversHeaderAndEarlierPayloads)
{
    std::vector<payload> p = {{payload_type::notify, false, notify_payload{0, {}, 16430, {}}},
                              {payload_type::sk, false, sk_payload{payload_type::idi, seq(0, 32), 0}}};
    bytes wire = serialize_message(sample_header(exchange_type::ike_auth), p);
    const auto& m = ok(parse_message(wire));
    ASSERT_EQ(m.payloads.size(), 2u);
    const auto& sk = std::get<sk_payload>(m.payloads[1].body);
    EXPECT_EQ(sk.aad_size, header_size + 8 + 4);
    EXPECT_EQ(sk.first_inner, payload_type::idi);
    EXPECT_EQ(sk.body, seq(0, 32));
}

TEST(IkeMessageSk, MustBeLast)
{
    // SK (next = IDi, the first inner payload) followed by bytes of another payload.
    bytes chain = from_hex("23000008aabbccdd"
                           "00000008000000000");
    chain.pop_back();
    auto e = err(parse_message(message_bytes(payload_type::sk, chain)));
    EXPECT_EQ(e.notify, notify_type::invalid_syntax);
    EXPECT_NE(e.what.find("must be last"), std::string::npos) << e.what;
    // Empty SK.
    EXPECT_NE(err(parse_message(message_bytes(payload_type::sk, from_hex("23000004")))).what.find("empty SK"),
              std::string::npos);
}

TEST(IkeMessageSkf, ParsedSealedAndLast)
{
    // RFC 7383 §2.5 SKF: Fragment Number 1, Total 2, then IV | ciphertext | ICV; its Next Payload (IDi)
    // names the first inner payload, so nothing may follow it.
    bytes body = seq(0, 24);
    const auto m = ok(parse_message(message_bytes(payload_type::skf, raw(35, 0, cat({{0, 1, 0, 2}, body})))));
    ASSERT_EQ(m.payloads.size(), 1u);
    EXPECT_EQ(m.payloads[0].type, payload_type::skf);
    const auto& f = std::get<skf_payload>(m.payloads[0].body);
    EXPECT_EQ(f.first_inner, payload_type::idi);
    EXPECT_EQ(f.number, 1);
    EXPECT_EQ(f.total, 2);
    EXPECT_EQ(f.body, body);
    EXPECT_EQ(f.aad_size, header_size + skf_header_size); // the numbers are authenticated, not encrypted
    EXPECT_EQ(serialize_message(m.header, m.payloads), message_bytes(payload_type::skf, raw(35, 0, cat({{0, 1, 0, 2}, body}))));
    auto e = err(parse_message(message_bytes(payload_type::skf, cat({raw(35, 0, cat({{0, 1, 0, 2}, body})), raw(0, 0, {})}))));
    EXPECT_NE(e.what.find("must be last"), std::string::npos) << e.what;
    // A later fragment with Next Payload 0; an unencrypted payload in front moves the AAD.
    const auto m2 = ok(parse_message(message_bytes(payload_type::vendor, cat({raw(53, 0, {'v'}), raw(0, 0, cat({{0, 2, 0, 2}, body}))}))));
    ASSERT_EQ(m2.payloads.size(), 2u);
    EXPECT_EQ(std::get<skf_payload>(m2.payloads[1].body).aad_size, header_size + 5 + skf_header_size);
    // The critical bit on SKF is fine: we know the payload.
    EXPECT_FALSE(std::holds_alternative<parse_error>(
        parse_message(message_bytes(payload_type::skf, raw(35, 0x80, cat({{0, 1, 0, 1}, body}))))));
}

TEST(IkeMessageSkf, InvalidNumbersRefused)
{
    struct bad_case {
        const char* name;
        uint8_t next;
        bytes body;
        const char* reason;
    };
    const bad_case cases[] = {
        {"number 0", 35, cat({{0, 0, 0, 2}, seq(0, 24)}), "neither may be 0"},
        {"total 0", 35, cat({{0, 1, 0, 0}, seq(0, 24)}), "neither may be 0"},
        {"number above total", 0, cat({{0, 3, 0, 2}, seq(0, 24)}), "above Total Fragments"},
        {"number 65535 of 1", 0, cat({{0xff, 0xff, 0, 1}, seq(0, 24)}), "above Total Fragments"},
        {"total above the limit", 35, cat({{0, 1, 1, 1}, seq(0, 24)}), "Total Fragments 257"},
        {"total 65535", 0, cat({{0, 2, 0xff, 0xff}, seq(0, 24)}), "at most 256"},
        {"later fragment names a payload", 35, cat({{0, 2, 0, 2}, seq(0, 24)}), "only the first fragment"},
        {"no IV/ciphertext/ICV", 35, {0, 1, 0, 1}, "without IV"},
        {"numbers truncated (3 bytes)", 35, {0, 1, 0}, "shorter than 8"},
        {"numbers missing", 35, {}, "shorter than 8"},
    };
    for (const auto& c : cases) {
        auto e = err(parse_message(message_bytes(payload_type::skf, raw(c.next, 0, c.body))));
        EXPECT_EQ(e.notify, notify_type::invalid_syntax) << c.name;
        EXPECT_NE(e.what.find(c.reason), std::string::npos) << c.name << ": " << e.what;
    }
    // The limit itself is accepted.
    EXPECT_FALSE(std::holds_alternative<parse_error>(
        parse_message(message_bytes(payload_type::skf, raw(0, 0, cat({{1, 0, 1, 0}, seq(0, 24)}))))));
    // SKF inside a decrypted SK payload.
    auto e = err(parse_payloads(payload_type::skf, raw(35, 0, cat({{0, 1, 0, 2}, seq(0, 24)}))));
    EXPECT_NE(e.what.find("inside an SK payload"), std::string::npos) << e.what;
    // Payload length beyond the datagram, and every prefix of a good fragment.
    bytes long_skf = raw(35, 0, cat({{0, 1, 0, 2}, seq(0, 24)}));
    long_skf[3] = 0xff;
    EXPECT_TRUE(std::holds_alternative<parse_error>(parse_message(message_bytes(payload_type::skf, long_skf))));
    expect_every_prefix_fails(message_bytes(payload_type::skf, raw(35, 0, cat({{0, 1, 0, 2}, seq(0, 24)}))));
}

TEST(IkeMessageSk, EmptyInformationalIsAllowed)
{
    // A liveness check (RFC 7296 §1.4) is an SK payload with nothing inside: Next Payload none.
    const auto m = ok(parse_message(message_bytes(payload_type::sk, raw(0, 0, seq(0, 32)))));
    ASSERT_EQ(m.payloads.size(), 1u);
    EXPECT_EQ(std::get<sk_payload>(m.payloads[0].body).first_inner, payload_type::none);
}

TEST(IkeMessageDelete, IkeSaDeleteCountWithoutSpis)
{
    // §3.11: SPI size 0 for IKE; a non-zero count then carries no bytes and makes no SPIs.
    const auto m = ok(parse_message(message_bytes(payload_type::del, raw(0, 0, {1, 0, 0, 3}))));
    ASSERT_EQ(m.payloads.size(), 1u);
    EXPECT_EQ(std::get<delete_payload>(m.payloads[0].body), (delete_payload{1, {}}));
}

TEST(IkeMessageDelete, EspDeleteWithoutSpisRoundTrips)
{
    // An ESP Delete with SPI size 4 and no SPIs parses; serializing it must keep SPI size 4 (it wrote 0,
    // which the parser refuses: found by fuzz-ike-message).
    for (uint8_t protocol : {uint8_t{2}, uint8_t{3}}) {
        const bytes body = raw(0, 0, {protocol, 4, 0, 0});
        const auto p = ok(parse_payloads(payload_type::del, body));
        ASSERT_EQ(p.size(), 1u);
        EXPECT_EQ(std::get<delete_payload>(p[0].body), (delete_payload{protocol, {}}));
        payload_type first{};
        EXPECT_EQ(serialize_payloads(p, first), body);
        EXPECT_EQ(first, payload_type::del);
    }
}

// ---- critical bit (RFC 7296 §2.5) -----------------------------------------------------------------

TEST(IkeMessageCritical, UnknownCriticalPayloadRefused)
{
    bytes chain = cat({raw(99, 0, seq(0, 16)), raw(0, 0x80, {1, 2, 3})});
    auto e = err(parse_message(message_bytes(payload_type::nonce, chain)));
    EXPECT_EQ(e.notify, notify_type::unsupported_critical_payload);
    EXPECT_EQ(e.unsupported_type, 99);
}

TEST(IkeMessageCritical, UnknownNonCriticalPayloadKept)
{
    bytes chain = cat({raw(99, 0, seq(0, 16)), raw(0, 0x7f, {1, 2, 3})}); // other flag bits are ignored
    const auto& m = ok(parse_message(message_bytes(payload_type::nonce, chain)));
    ASSERT_EQ(m.payloads.size(), 2u);
    EXPECT_EQ(m.payloads[1].type, static_cast<payload_type>(99));
    EXPECT_FALSE(m.payloads[1].critical);
    EXPECT_EQ(std::get<unknown_payload>(m.payloads[1].body), (unknown_payload{99, {1, 2, 3}}));
}

TEST(IkeMessageCritical, KnownPayloadWithCriticalBitAccepted)
{
    const auto& m = ok(parse_message(message_bytes(payload_type::nonce, raw(0, 0x80, seq(0, 16)))));
    ASSERT_EQ(m.payloads.size(), 1u);
    EXPECT_TRUE(m.payloads[0].critical);
}

TEST(IkeMessageCritical, UnsupportedButKnownCriticalPayloadRefused)
{
    // EAP (48) is an RFC 7296 payload this gateway does not speak.
    auto e = err(parse_message(message_bytes(payload_type::eap, raw(0, 0x80, {1, 1, 0, 4}))));
    EXPECT_EQ(e.notify, notify_type::unsupported_critical_payload);
    EXPECT_EQ(e.unsupported_type, 48);
}

// ---- header checks ---------------------------------------------------------------------------------

TEST(IkeWireHeader, MajorVersion)
{
    bytes chain = raw(0, 0, seq(0, 16));
    for (uint8_t version : {0x10, 0x30, 0xf0}) {
        auto e = err(parse_message(message_bytes(payload_type::nonce, chain, version)));
        EXPECT_EQ(e.notify, notify_type::invalid_major_version) << int(version);
    }
    // A higher minor version is accepted (§2.5: minor versions are compatible).
    EXPECT_EQ(ok(parse_message(message_bytes(payload_type::nonce, chain, 0x21))).header.version, 0x21);
}

TEST(IkeWireHeader, LengthMustMatchDatagram)
{
    bytes wire = message_bytes(payload_type::nonce, raw(0, 0, seq(0, 16)));
    ASSERT_FALSE(std::holds_alternative<parse_error>(parse_message(wire)));
    for (uint32_t length :
         {0u, 27u, 28u, uint32_t(wire.size() - 1), uint32_t(wire.size() + 1), 0xffffffffu}) {
        bytes w = wire;
        w[24] = uint8_t(length >> 24);
        w[25] = uint8_t(length >> 16);
        w[26] = uint8_t(length >> 8);
        w[27] = uint8_t(length);
        EXPECT_EQ(err(parse_message(w)).notify, notify_type::invalid_syntax) << length;
    }
    // Extra datagram bytes beyond the header length.
    bytes longer = wire;
    longer.push_back(0);
    EXPECT_TRUE(std::holds_alternative<parse_error>(parse_message(longer)));
    // Header only, no payloads.
    const auto& m = ok(parse_message(message_bytes(payload_type::none, {})));
    EXPECT_TRUE(m.payloads.empty());
    // next = none but bytes follow.
    EXPECT_TRUE(
        std::holds_alternative<parse_error>(parse_message(message_bytes(payload_type::none, {0, 0, 0, 4}))));
}

// ---- every prefix of a valid message fails cleanly ------------------------------------------------

void expect_every_prefix_fails(const bytes& wire)
{
    ASSERT_FALSE(std::holds_alternative<parse_error>(parse_message(wire)));
    for (size_t n = 0; n < wire.size(); ++n) {
        // As cut off by the network (length field now wrong) ...
        EXPECT_TRUE(std::holds_alternative<parse_error>(parse_message(std::span(wire).first(n)))) << n;
        // ... and with the header length adjusted so the payload parsers see the truncation.
        if (n >= header_size) {
            bytes w(wire.begin(), wire.begin() + n);
            w[24] = 0;
            w[25] = 0;
            w[26] = uint8_t(n >> 8);
            w[27] = uint8_t(n);
            EXPECT_TRUE(std::holds_alternative<parse_error>(parse_message(w))) << "prefix " << n;
        }
    }
}

TEST(IkeWireTruncation, EveryPrefixOfEveryPayloadTypeFails)
{
    expect_every_prefix_fails(serialize_message(sample_header(), every_payload()));
}

TEST(IkeWireTruncation, EveryPrefixOfADecryptedChainFails)
{
    auto payloads = every_payload();
    payloads.pop_back();
    payload_type first{};
    bytes chain = serialize_payloads(payloads, first);
    for (size_t n = 0; n < chain.size(); ++n) {
        EXPECT_TRUE(std::holds_alternative<parse_error>(parse_payloads(first, std::span(chain).first(n))))
            << n;
    }
}

// ---- inconsistent length and count fields ----------------------------------------------------------

struct bad_input {
    const char* name;
    payload_type first;
    const char* chain_hex; // the payload chain after the IKE header
    const char* expect;    // substring of parse_error::what
};

// Each row breaks one field of an otherwise valid payload.
const bad_input bad_inputs[] = {
    // generic payload header (§3.2)
    {"payload length 0", payload_type::nonce, "00000000", "below 4"},
    {"payload length 3", payload_type::nonce, "00000003", "below 4"},
    {"payload length past the end", payload_type::vendor, "00000009aabbcc", "exceeds"},
    {"payload length 0xffff", payload_type::vendor, "0000ffffaabbcc", "exceeds"},
    {"header truncated", payload_type::vendor, "000000", "truncated"},
    {"next payload but no bytes", payload_type::vendor, "2b000005aa", "truncated"},
    {"bytes after the chain", payload_type::vendor, "00000005aa00", "after the last payload"},
    // SA (§3.3)
    {"SA without proposals", payload_type::sa, "00000004", "without proposals"},
    {"proposal length below 8", payload_type::sa, "0000000c0000000701010000", "below 8"},
    {"proposal length past the SA", payload_type::sa, "0000000c0000000d01010000", "exceeds"},
    {"proposal marker 1", payload_type::sa, "0000000c0100000801010000", "Last Substruc 1"},
    {"proposal without transforms", payload_type::sa, "0000000c0000000801010000", "without transforms"},
    {"last proposal marked more", payload_type::sa,
     "00000014"
     "0200001001010001"
     "0000000801000014",
     "not marked last"},
    {"proposal after the last", payload_type::sa,
     "00000024"
     "0000001001010001"
     "0000000801000014"
     "0000001002010001"
     "0000000801000014",
     "after the proposal marked last"},
    {"proposal number 0", payload_type::sa,
     "00000014"
     "0000001000010001"
     "0000000801000014",
     "number 0"},
    {"proposal numbers 1, 3", payload_type::sa,
     "00000024"
     "0200001001010001"
     "0000000801000014"
     "0000001003010001"
     "0000000801000014",
     "not 1, 2"},
    {"proposal numbers 2, 3", payload_type::sa,
     "00000024"
     "0200001002010001"
     "0000000801000014"
     "0000001003010001"
     "0000000801000014",
     "not 1, 2"},
    {"IKE SPI size 4", payload_type::sa, "000000100000000c01010400aabbccdd", "SPI size 4"},
    {"ESP SPI size 0", payload_type::sa, "0000000c0000000801030000", "SPI size 0"},
    {"ESP SPI size 8", payload_type::sa, "000000140000001001030800aabbccddaabbccdd", "SPI size 8"},
    {"SPI past the proposal", payload_type::sa, "0000000c0000000801090400", "exceeds the proposal"},
    {"Num Transforms 2, one present", payload_type::sa,
     "000000140000001001010002"
     "0000000801000014",
     "Num Transforms 2"},
    {"Num Transforms 1, two present", payload_type::sa,
     "0000001c0000001801010001"
     "0300000801000014"
     "0000000802000005",
     "more transforms"},
    {"transform length 7", payload_type::sa,
     "000000140000001001010001"
     "0000000701000014",
     "below 8"},
    {"transform length past the proposal", payload_type::sa,
     "000000140000001001010001"
     "0000000c01000014",
     "exceeds the proposal"},
    {"transform marker 2", payload_type::sa,
     "000000140000001001010001"
     "0200000801000014",
     "Last Substruc 2"},
    {"last transform marked more", payload_type::sa,
     "000000140000001001010001"
     "0300000801000014",
     "not marked last"},
    {"transform after the last", payload_type::sa,
     "0000001c0000001801010002"
     "0000000801000014"
     "0000000802000005",
     "after the transform marked last"},
    {"attribute truncated", payload_type::sa,
     "000000160000001201010001"
     "0000000a010000148000",
     "TV attribute"},
    {"TLV attribute past the transform", payload_type::sa,
     "000000180000001401010001"
     "0000000c01000014000f0001",
     "TLV attribute length"},
    {"Key Length as TLV", payload_type::sa,
     "0000001a0000001601010001"
     "0000000e01000014000e00020100",
     "must be TV"},
    {"Key Length twice", payload_type::sa,
     "0000001c0000001801010001"
     "0000001001000014800e0080800e0100",
     "twice"},
    {"proposal length without the SPI (scapy 2.5 bug)", payload_type::sa,
     "00000024"
     "0000001c01030402c0ffee01"
     "0300000c01000014800e0100"
     "0000000805000000",
     "transform length 8 exceeds the proposal"},
    {"65 transforms", payload_type::sa, "0000000c0000000801010041", "65 transforms"},
    // KE (§3.4)
    {"KE without data", payload_type::ke, "0000000800130000", "without key exchange data"},
    {"KE truncated", payload_type::ke, "00000007001300", "shorter than 8"},
    // ID, AUTH, CERT (§3.5, §3.8, §3.6)
    {"ID payload length past the datagram", payload_type::idi, "0000000902000000", "exceeds"},
    {"ID too short", payload_type::idr, "000000070200 00", "shorter than 8"},
    {"AUTH too short", payload_type::auth, "0000000602 00", "shorter than 8"},
    {"CERT empty", payload_type::cert, "00000004", "shorter than 5"},
    // Nonce (§3.9)
    {"nonce of 15 bytes", payload_type::nonce, "00000013000102030405060708090a0b0c0d0e", "15 bytes"},
    {"empty nonce", payload_type::nonce, "00000004", "0 bytes"},
    // Notify (§3.10)
    {"notify truncated", payload_type::notify, "00000007000040", "shorter than 8"},
    {"notify SPI past the payload", payload_type::notify, "0000000c03054004aabbccdd", "SPI size 5"},
    // Delete (§3.11)
    {"delete count 2 with one SPI", payload_type::del, "0000000c03040002aabbccdd", "2 SPIs"},
    {"delete count 1 with extra bytes", payload_type::del, "0000000d03040001aabbccddee", "1 SPIs"},
    {"delete IKE with SPI size 8", payload_type::del, "0000001001080001aabbccddaabbccdd", "SPI size 8"},
    {"delete ESP with SPI size 2", payload_type::del, "0000000a03020001aabb", "SPI size 2"},
    {"delete protocol 0", payload_type::del, "0000000800000000", "protocol 0"},
    // TS (§3.13)
    {"TS count 2, one selector", payload_type::tsi,
     "0000001802000000"
     "0700001000000ffff0a0000000a0000ff",
     "truncated"},
    {"TS count 0 with a selector", payload_type::tsi,
     "0000001800000000"
     "070000100000ffff0a0000000a0000ff",
     "after the last traffic selector"},
    {"TS v4 length 20", payload_type::tsi,
     "0000001c01000000"
     "070000140000ffff0a0000000a0000ff00000000",
     "length 20"},
    {"TS v6 length 20 (scapy's default)", payload_type::tsr,
     "0000001c01000000"
     "080000140000ffff0a0000000a0000ff00000000",
     "length 20"},
    {"TS v4 type with v6 length", payload_type::tsr,
     "0000001801000000"
     "070000280000ffff0a0000000a0000ff",
     "length 40"},
    {"TS unknown type 9", payload_type::tsr,
     "0000001801000000"
     "090000100000ffff0a0000000a0000ff",
     "type 9"},
    {"TS v6 truncated", payload_type::tsr,
     "0000001801000000"
     "080000280000ffff0a0000000a0000ff",
     "truncated"},
    {"65 selectors", payload_type::tsi, "0000000841000000", "65 selectors"},
    {"TS header truncated", payload_type::tsi, "00000007010000", "shorter than 8"},
};

TEST(IkeWireLengths, InconsistentFieldsRefused)
{
    for (const auto& row : bad_inputs) {
        std::string hex;
        for (const char* c = row.chain_hex; *c; ++c) {
            if (*c != ' ') {
                hex += *c;
            }
        }
        bytes wire = message_bytes(row.first, from_hex(hex));
        auto r = parse_message(wire);
        ASSERT_TRUE(std::holds_alternative<parse_error>(r)) << row.name;
        const auto& e = std::get<parse_error>(r);
        EXPECT_EQ(e.notify, notify_type::invalid_syntax) << row.name;
        EXPECT_NE(e.what.find(row.expect), std::string::npos) << row.name << ": got \"" << e.what << "\"";
    }
}

TEST(IkeWireLengths, UnknownAttributesSkipped)
{
    // Transform ENCR 20 with an unknown TV attribute (type 99), an unknown TLV (type 100, 3 bytes of
    // value), then Key Length 256 (RFC 7296 §3.3.5).
    bytes chain = from_hex("00000023"
                           "0000001f01010001"
                           "0000001701000014"
                           "80630005"
                           "0064"
                           "0003"
                           "aabbcc"
                           "800e0100");
    const auto& m = ok(parse_message(message_bytes(payload_type::sa, chain)));
    ASSERT_EQ(m.payloads.size(), 1u);
    const auto& sa = std::get<sa_payload>(m.payloads[0].body);
    ASSERT_EQ(sa.proposals.size(), 1u);
    ASSERT_EQ(sa.proposals[0].transforms.size(), 1u);
    EXPECT_EQ(sa.proposals[0].transforms[0], (transform{transform_type::encr, 20, 256}));
}

TEST(IkeWireLengths, ResponseCarriesTheAcceptedProposalNumber)
{
    // §3.3.1: a responder returns the proposal it chose with its original number.
    bytes chain = from_hex("00000014"
                           "0000001003010001"
                           "0000000801000014");
    const auto& m = ok(parse_message(message_bytes(payload_type::sa, chain)));
    ASSERT_EQ(m.payloads.size(), 1u);
    EXPECT_EQ(std::get<sa_payload>(m.payloads[0].body).proposals.at(0).number, 3);
}

// ---- limits ----------------------------------------------------------------------------------------

TEST(IkeWireLimits, Payloads)
{
    std::vector<payload> p(64, payload{payload_type::vendor, false, vendor_payload{{1}}});
    EXPECT_EQ(ok(parse_message(serialize_message(sample_header(), p))).payloads.size(), 64u);
    p.push_back(p.back());
    EXPECT_NE(err(parse_message(serialize_message(sample_header(), p))).what.find("more than 64 payloads"),
              std::string::npos);
}

TEST(IkeWireLimits, Proposals)
{
    sa_payload sa;
    for (uint8_t i = 1; i <= 64; ++i) {
        sa.proposals.push_back(proposal{i, 1, {}, {{transform_type::encr, 20, 128}}});
    }
    std::vector<payload> p = {{payload_type::sa, false, sa}};
    EXPECT_EQ(std::get<sa_payload>(ok(parse_message(serialize_message(sample_header(), p))).payloads[0].body),
              sa);
    std::get<sa_payload>(p[0].body).proposals.push_back(
        proposal{65, 1, {}, {{transform_type::encr, 20, 128}}});
    EXPECT_NE(err(parse_message(serialize_message(sample_header(), p))).what.find("more than 64 proposals"),
              std::string::npos);
}

TEST(IkeWireLimits, Transforms)
{
    proposal prop{1, 1, {}, std::vector<transform>(64, transform{transform_type::dh, 19, {}})};
    std::vector<payload> p = {{payload_type::sa, false, sa_payload{{prop}}}};
    EXPECT_FALSE(std::holds_alternative<parse_error>(parse_message(serialize_message(sample_header(), p))));
    std::get<sa_payload>(p[0].body).proposals[0].transforms.push_back(transform{transform_type::dh, 31, {}});
    EXPECT_NE(err(parse_message(serialize_message(sample_header(), p))).what.find("65 transforms"),
              std::string::npos);
}

TEST(IkeWireLimits, TrafficSelectors)
{
    traffic_selector ts{7, 0, 0, 65535, {10, 0, 0, 1}, {10, 0, 0, 2}};
    std::vector<payload> p = {{payload_type::tsi, false, ts_payload{std::vector<traffic_selector>(64, ts)}}};
    EXPECT_FALSE(std::holds_alternative<parse_error>(parse_message(serialize_message(sample_header(), p))));
    std::get<ts_payload>(p[0].body).selectors.push_back(ts);
    EXPECT_NE(err(parse_message(serialize_message(sample_header(), p))).what.find("65 selectors"),
              std::string::npos);
}

TEST(IkeWireLimits, NonceBounds)
{
    for (size_t n : {16u, 256u}) {
        std::vector<payload> p = {{payload_type::nonce, false, nonce_payload{bytes(n, 7)}}};
        EXPECT_FALSE(
            std::holds_alternative<parse_error>(parse_message(serialize_message(sample_header(), p))))
            << n;
    }
    for (size_t n : {15u, 257u}) {
        std::vector<payload> p = {{payload_type::nonce, false, nonce_payload{bytes(n, 7)}}};
        EXPECT_TRUE(std::holds_alternative<parse_error>(parse_message(serialize_message(sample_header(), p))))
            << n;
    }
}

// ---- lookups and names -----------------------------------------------------------------------------

TEST(IkeMessageLookup, FindPayloadAndNotifies)
{
    auto p = every_payload();
    EXPECT_EQ(find_payload(p, payload_type::ke), &p[3]);
    EXPECT_EQ(find_payload(p, payload_type::eap), nullptr);
    auto notifies = find_notifies(p);
    ASSERT_EQ(notifies.size(), 2u);
    EXPECT_EQ(notifies[1]->type, 16393);
    EXPECT_EQ(find_notify(p, notify_type::nat_detection_source_ip), notifies[0]);
    EXPECT_EQ(find_notify(p, notify_type::cookie), nullptr);
}

TEST(IkeMessageNames, NamesAndDescribe)
{
    EXPECT_EQ(to_string(exchange_type::ike_sa_init), "IKE_SA_INIT");
    EXPECT_EQ(to_string(exchange_type::informational), "INFORMATIONAL");
    EXPECT_EQ(to_string(static_cast<exchange_type>(99)), "99");
    EXPECT_EQ(payload_name(payload_type::nonce), "No");
    EXPECT_EQ(payload_name(payload_type::idr), "IDr");
    EXPECT_EQ(payload_name(static_cast<payload_type>(200)), "200");
    EXPECT_EQ(notify_name(16388), "NAT_DETECTION_SOURCE_IP");
    EXPECT_EQ(notify_name(7), "INVALID_SYNTAX");
    EXPECT_EQ(notify_name(40000), "40000");

    message m{sample_header(), {}};
    m.header.message_id = 0;
    m.payloads = {{payload_type::sa, false, sample_sa()},
                  {payload_type::ke, false, ke_payload{19, {1}}},
                  {payload_type::nonce, false, nonce_payload{seq(0, 16)}},
                  {payload_type::notify, false, notify_payload{0, {}, 16388, {}}},
                  {payload_type::notify, false, notify_payload{0, {}, 16389, {}}}};
    EXPECT_EQ(
        describe(m),
        "IKE_SA_INIT request 0 [ SA KE No N(NAT_DETECTION_SOURCE_IP) N(NAT_DETECTION_DESTINATION_IP) ]");
    m.header.exchange = static_cast<uint8_t>(exchange_type::ike_auth);
    m.header.flags = flag_response;
    m.header.message_id = 1;
    m.payloads = {{payload_type::sk, false, sk_payload{payload_type::idr, {1}, 0}}};
    EXPECT_EQ(describe(m), "IKE_AUTH response 1 [ SK ]");
    m.payloads = {{payload_type::skf, false, skf_payload{payload_type::none, 2, 3, {1}, 0}}};
    EXPECT_EQ(describe(m), "IKE_AUTH response 1 [ SKF(2/3) ]");
    EXPECT_EQ(payload_name(payload_type::skf), "SKF");
    m.payloads = {{static_cast<payload_type>(200), false, unknown_payload{200, {}}},
                  {payload_type::cp, false, unknown_payload{47, {}}}};
    EXPECT_EQ(describe(m), "IKE_AUTH response 1 [ UNKNOWN(200) CP ]");
}

// ---- scapy: an independent encoder -----------------------------------------------------------------
// Made by tests/ike/vectors/make_scapy_vectors.py (scapy 2.5.0, Debian 12); see that file for how.

constexpr const char* scapy_ike_sa_init =
    "01020304050607080000000000000000212022080000000000000114220000540200002c010100040300000c0100000c"
    "800e01000300000802000005030000080300000c000000080400001300000024020100030300000c01000014800e0080"
    "0300000802000006000000080400001f2800004800130000000102030405060708090a0b0c0d0e0f1011121314151617"
    "18191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f29000024a0a1a2a3"
    "a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf2900001c00004004303132333435363738393a3b"
    "3c3d3e3f404142430000001c00004005505152535455565758595a5b5c5d5e5f60616263";

constexpr const char* scapy_ike_auth_chain =
    "27000018020000006c6566742e6578616d706c652e6f72672100002802000000808182838485868788898a8b8c8d8e8f"
    "909192939495969798999a9b9c9d9e9f2c0000240000002001030402c0ffee010300000c01000014800e010000000008"
    "050000002d00002802000000070000100000ffff0a0100000a01ffff0711001001f401f4c0000201c000020100000030"
    "01000000080600280400080020010db800000000000000000000000020010db800000000000000000000ffff";

constexpr const char* scapy_informational_delete =
    "010203040506070811121314151617182a202508000000070000003d2b00001003040002c0ffee01c0ffee0200000011"
    "657370726573736f2d74657374";

constexpr const char* scapy_ike_auth_sealed =
    "010203040506070811121314151617182e20230800000001000000682300004c00010203040506075a5a5a5a5a5a5a5a"
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a0001020304050607"
    "08090a0b0c0d0e0f";

TEST(IkeWireScapy, IkeSaInit)
{
    bytes wire = from_hex(scapy_ike_sa_init);
    const auto& m = ok(parse_message(wire));
    EXPECT_EQ(m.header.spi_i, 0x0102030405060708u);
    EXPECT_EQ(m.header.spi_r, 0u);
    EXPECT_EQ(m.header.next, payload_type::sa);
    EXPECT_EQ(m.header.version, 0x20);
    EXPECT_EQ(m.header.exchange, static_cast<uint8_t>(exchange_type::ike_sa_init));
    EXPECT_EQ(m.header.flags, flag_initiator);
    EXPECT_EQ(m.header.message_id, 0u);
    EXPECT_EQ(m.header.length, wire.size());
    ASSERT_EQ(m.payloads.size(), 5u);

    const auto& sa = std::get<sa_payload>(m.payloads[0].body);
    ASSERT_EQ(sa.proposals.size(), 2u);
    EXPECT_EQ(sa.proposals[0].number, 1);
    EXPECT_EQ(sa.proposals[0].protocol, static_cast<uint8_t>(protocol_id::ike));
    EXPECT_TRUE(sa.proposals[0].spi.empty());
    EXPECT_EQ(sa.proposals[0].transforms, (std::vector<transform>{{transform_type::encr, 12, 256},
                                                                  {transform_type::prf, 5, {}},
                                                                  {transform_type::integ, 12, {}},
                                                                  {transform_type::dh, 19, {}}}));
    EXPECT_EQ(sa.proposals[1].number, 2);
    EXPECT_EQ(sa.proposals[1].transforms, (std::vector<transform>{{transform_type::encr, 20, 128},
                                                                  {transform_type::prf, 6, {}},
                                                                  {transform_type::dh, 31, {}}}));
    const auto& ke = std::get<ke_payload>(m.payloads[1].body);
    EXPECT_EQ(ke.group, 19);
    EXPECT_EQ(ke.data, seq(0, 64));
    EXPECT_EQ(std::get<nonce_payload>(m.payloads[2].body).data, seq(0xa0, 32));
    const auto& natd_s = std::get<notify_payload>(m.payloads[3].body);
    EXPECT_EQ(natd_s.protocol, 0);
    EXPECT_TRUE(natd_s.spi.empty());
    EXPECT_EQ(natd_s.type, static_cast<uint16_t>(notify_type::nat_detection_source_ip));
    EXPECT_EQ(natd_s.data, seq(0x30, 20));
    EXPECT_EQ(find_notify(m.payloads, notify_type::nat_detection_destination_ip)->data, seq(0x50, 20));
    EXPECT_EQ(
        describe(m),
        "IKE_SA_INIT request 0 [ SA KE No N(NAT_DETECTION_SOURCE_IP) N(NAT_DETECTION_DESTINATION_IP) ]");

    EXPECT_EQ(serialize_message(m.header, m.payloads), wire);
}

TEST(IkeWireScapy, IkeAuthPlaintextChain)
{
    bytes chain = from_hex(scapy_ike_auth_chain);
    const auto& p = ok(parse_payloads(payload_type::idi, chain));
    ASSERT_EQ(p.size(), 5u);
    EXPECT_EQ(p[0].type, payload_type::idi);
    const auto& id = std::get<id_payload>(p[0].body);
    EXPECT_EQ(id.type, static_cast<uint8_t>(id_type::fqdn));
    EXPECT_EQ(std::string(id.data.begin(), id.data.end()), "left.example.org");
    const auto& auth = std::get<auth_payload>(p[1].body);
    EXPECT_EQ(auth.method, static_cast<uint8_t>(auth_method::shared_key_mic));
    EXPECT_EQ(auth.data, seq(0x80, 32));
    const auto& sa = std::get<sa_payload>(p[2].body);
    ASSERT_EQ(sa.proposals.size(), 1u);
    EXPECT_EQ(sa.proposals[0].protocol, static_cast<uint8_t>(protocol_id::esp));
    EXPECT_EQ(sa.proposals[0].spi, (bytes{0xc0, 0xff, 0xee, 0x01}));
    EXPECT_EQ(sa.proposals[0].transforms,
              (std::vector<transform>{{transform_type::encr, 20, 256}, {transform_type::esn, 0, {}}}));
    EXPECT_EQ(p[3].type, payload_type::tsi);
    const auto& tsi = std::get<ts_payload>(p[3].body);
    ASSERT_EQ(tsi.selectors.size(), 2u);
    EXPECT_EQ(tsi.selectors[0], (traffic_selector{7, 0, 0, 65535, {10, 1, 0, 0}, {10, 1, 255, 255}}));
    EXPECT_EQ(tsi.selectors[1], (traffic_selector{7, 17, 500, 500, {192, 0, 2, 1}, {192, 0, 2, 1}}));
    EXPECT_EQ(p[4].type, payload_type::tsr);
    const auto& tsr = std::get<ts_payload>(p[4].body);
    ASSERT_EQ(tsr.selectors.size(), 1u);
    bytes v6_start = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    bytes v6_end = v6_start;
    v6_end[14] = v6_end[15] = 0xff;
    EXPECT_EQ(tsr.selectors[0], (traffic_selector{8, 6, 1024, 2048, v6_start, v6_end}));

    payload_type first{};
    EXPECT_EQ(serialize_payloads(p, first), chain);
    EXPECT_EQ(first, payload_type::idi);
}

TEST(IkeWireScapy, InformationalDelete)
{
    bytes wire = from_hex(scapy_informational_delete);
    const auto& m = ok(parse_message(wire));
    EXPECT_EQ(m.header.spi_r, 0x1112131415161718u);
    EXPECT_EQ(m.header.exchange, static_cast<uint8_t>(exchange_type::informational));
    EXPECT_EQ(m.header.message_id, 7u);
    ASSERT_EQ(m.payloads.size(), 2u);
    const auto& d = std::get<delete_payload>(m.payloads[0].body);
    EXPECT_EQ(d.protocol, static_cast<uint8_t>(protocol_id::esp));
    EXPECT_EQ(d.spis, (std::vector<bytes>{{0xc0, 0xff, 0xee, 0x01}, {0xc0, 0xff, 0xee, 0x02}}));
    const auto& v = std::get<vendor_payload>(m.payloads[1].body);
    EXPECT_EQ(std::string(v.id.begin(), v.id.end()), "espresso-test");
    EXPECT_EQ(describe(m), "INFORMATIONAL request 7 [ D V ]");
    EXPECT_EQ(serialize_message(m.header, m.payloads), wire);
}

// Two datagrams back to back: SKF fragment 1/3 (Next Payload IDi) and 3/3 (Next Payload 0).
constexpr const char* scapy_ike_auth_fragments =
    "0102030405060708111213141516171835202308000000010000005c230000400001000300010203040506075a5a5a5a"
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a000102030405060708090a0b0c0d0e0f01020304"
    "05060708111213141516171835202308000000010000004c00000030000300030001020304050607a5a5a5a5a5a5a5a5"
    "a5a5a5a5a5a5a5a5000102030405060708090a0b0c0d0e0f";

TEST(IkeWireScapy, IkeAuthFragments)
{
    bytes both = from_hex(scapy_ike_auth_fragments);
    bytes first(both.begin(), both.begin() + 0x5c), third(both.begin() + 0x5c, both.end());
    const auto m1 = ok(parse_message(first));
    const auto m3 = ok(parse_message(third));
    ASSERT_EQ(m1.payloads.size(), 1u);
    ASSERT_EQ(m3.payloads.size(), 1u);
    const auto& f1 = std::get<skf_payload>(m1.payloads[0].body);
    const auto& f3 = std::get<skf_payload>(m3.payloads[0].body);
    EXPECT_EQ(m1.header.next, payload_type::skf);
    EXPECT_EQ(f1.first_inner, payload_type::idi);
    EXPECT_EQ(f1.number, 1);
    EXPECT_EQ(f1.total, 3);
    EXPECT_EQ(f1.body.size(), 8u + 32 + 16);
    EXPECT_EQ(f1.aad_size, header_size + skf_header_size);
    EXPECT_EQ(f3.first_inner, payload_type::none);
    EXPECT_EQ(f3.number, 3);
    EXPECT_EQ(f3.total, 3);
    EXPECT_EQ(describe(m1), "IKE_AUTH request 1 [ SKF(1/3) ]");
    EXPECT_EQ(serialize_message(m1.header, m1.payloads), first);
    EXPECT_EQ(serialize_message(m3.header, m3.payloads), third);
    expect_every_prefix_fails(first);
    expect_every_prefix_fails(third);
}

TEST(IkeWireScapy, IkeAuthSealed)
{
    bytes wire = from_hex(scapy_ike_auth_sealed);
    const auto& m = ok(parse_message(wire));
    ASSERT_EQ(m.payloads.size(), 1u);
    const auto& sk = std::get<sk_payload>(m.payloads[0].body);
    EXPECT_EQ(sk.first_inner, payload_type::idi);
    EXPECT_EQ(sk.aad_size, header_size + generic_payload_header_size);
    EXPECT_EQ(sk.body.size(), wire.size() - sk.aad_size);
    EXPECT_TRUE(std::equal(sk.body.begin(), sk.body.end(), wire.begin() + sk.aad_size));
    EXPECT_EQ(serialize_message(m.header, m.payloads), wire);
}

TEST(IkeWireTruncation, EveryPrefixOfTheScapyMessagesFails)
{
    for (const char* hex : {scapy_ike_sa_init, scapy_informational_delete, scapy_ike_auth_sealed}) {
        expect_every_prefix_fails(from_hex(hex));
    }
    bytes chain = from_hex(scapy_ike_auth_chain);
    for (size_t n = 0; n < chain.size(); ++n) {
        EXPECT_TRUE(
            std::holds_alternative<parse_error>(parse_payloads(payload_type::idi, std::span(chain).first(n))))
            << n;
    }
}

} // namespace
