// libFuzzer target for the IKEv2 wire format (controlplane/ike/wire/ike_message.cpp). Every byte a peer
// sends over UDP 500/4500 reaches parse_message, and every decrypted SK payload reaches parse_payloads,
// so both must refuse anything malformed without crashing, reading out of bounds or allocating without
// bound, and what they accept must survive a round trip:
//   parse_message(input) = m1  =>  serialize_message(m1) = b1 parses to m2, m2 equals m1 (up to the
//   header length and SK/SKF aad_size, which shrink when unknown transform attributes are dropped), and
//   serialize_message(m2) == b1 byte for byte.
// The same input is also fed to parse_payloads with byte 0 as the first payload type and the rest as
// the chain (a decrypted SK body), with the same round-trip checks.
// Seeds: tests/fuzz/corpus/ike_message/, written by tests/ike/vectors/make_scapy_vectors.py --seeds.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <variant>
#include <vector>

#include "espresso/cp/ike_message.h"

namespace {

namespace cp = espresso::cp;

[[noreturn]] void fail(const char* what)
{
    std::fprintf(stderr, "ike_message_fuzz: %s\n", what);
    std::abort();
}

// Fields a re-serialization may legitimately change: the total length and where SK's body starts.
void normalize(std::vector<cp::payload>& payloads)
{
    for (auto& p : payloads) {
        if (auto* sk = std::get_if<cp::sk_payload>(&p.body)) {
            sk->aad_size = 0;
        } else if (auto* skf = std::get_if<cp::skf_payload>(&p.body)) {
            skf->aad_size = 0;
        }
    }
}

void check_message(std::span<const uint8_t> data)
{
    auto r1 = cp::parse_message(data);
    auto* m1 = std::get_if<cp::message>(&r1);
    if (m1 == nullptr) {
        return;
    }
    cp::bytes b1 = cp::serialize_message(m1->header, m1->payloads);
    if (b1.size() > data.size()) {
        fail("serialize_message grew the message");
    }
    auto r2 = cp::parse_message(b1);
    auto* m2 = std::get_if<cp::message>(&r2);
    if (m2 == nullptr) {
        fail(("re-parse of serialize_message failed: " + std::get<cp::parse_error>(r2).what).c_str());
    }
    if (cp::serialize_message(m2->header, m2->payloads) != b1) {
        fail("serialize(parse(serialize(m))) != serialize(m)");
    }
    for (const auto& p : m2->payloads) {
        if (const auto* sk = std::get_if<cp::sk_payload>(&p.body);
            sk && sk->aad_size + sk->body.size() != b1.size()) {
            fail("SK aad_size + body size != message size");
        }
        // RFC 7383 §2.5: what parse_message lets through must be a possible fragment.
        if (const auto* skf = std::get_if<cp::skf_payload>(&p.body)) {
            if (skf->aad_size + skf->body.size() != b1.size()) {
                fail("SKF aad_size + body size != message size");
            }
            if (skf->number == 0 || skf->number > skf->total || skf->total > cp::max_fragments || skf->body.empty() ||
                (skf->number != 1 && skf->first_inner != cp::payload_type::none)) {
                fail("parse_message accepted an impossible SKF payload");
            }
        }
    }
    m1->header.length = 0;
    m2->header.length = 0;
    normalize(m1->payloads);
    normalize(m2->payloads);
    if (!(*m1 == *m2)) {
        fail("parse(serialize(m)) != m");
    }
    (void)cp::describe(*m2);
}

void check_chain(std::span<const uint8_t> data)
{
    if (data.empty()) {
        return;
    }
    auto first = static_cast<cp::payload_type>(data[0]);
    auto r1 = cp::parse_payloads(first, data.subspan(1));
    auto* p1 = std::get_if<std::vector<cp::payload>>(&r1);
    if (p1 == nullptr) {
        return;
    }
    cp::payload_type first1{};
    cp::bytes b1 = cp::serialize_payloads(*p1, first1);
    if (first1 != (p1->empty() ? cp::payload_type::none : first)) {
        fail("serialize_payloads returned another first payload type");
    }
    auto r2 = cp::parse_payloads(first1, b1);
    auto* p2 = std::get_if<std::vector<cp::payload>>(&r2);
    if (p2 == nullptr) {
        fail(("re-parse of serialize_payloads failed: " + std::get<cp::parse_error>(r2).what).c_str());
    }
    if (!(*p1 == *p2)) {
        fail("parse_payloads(serialize_payloads(p)) != p");
    }
    cp::payload_type first2{};
    if (cp::serialize_payloads(*p2, first2) != b1) {
        fail("serialize_payloads not a fixed point");
    }
    (void)cp::find_notifies(*p2);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    std::span<const uint8_t> input(data, size);
    check_message(input);
    check_chain(input);
    return 0;
}
