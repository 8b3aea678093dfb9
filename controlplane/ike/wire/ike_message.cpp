// IKEv2 messages on the wire (RFC 7296 §3). One generic chain walker checks the generic payload headers
// (§3.2); one function per payload body checks and decodes that body from a byte_reader over exactly the
// payload's bytes, so no body parser can read past its payload. Everything is iterative (no recursion
// on attacker-chosen depth) and every list has a fixed upper bound (limits below).
#include "espresso/cp/ike_message.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <utility>

#include "byte_reader.h"

namespace espresso::cp {
namespace {

using wire::byte_reader;

// Limits against hostile input. Real peers send a handful of each (strongSwan's largest default
// proposal has ~40 transforms); a message with more is refused rather than making us allocate for it.
constexpr size_t max_payloads = 64;
constexpr size_t max_proposals = 64;
constexpr size_t max_transforms = 64;
constexpr size_t max_selectors = 64;

constexpr uint8_t critical_bit = 0x80;        // RFC 7296 §3.2
constexpr uint8_t proposal_last = 0;          // §3.3.1
constexpr uint8_t proposal_more = 2;          // §3.3.1
constexpr uint8_t transform_last = 0;         // §3.3.2
constexpr uint8_t transform_more = 3;         // §3.3.2
constexpr uint16_t attribute_tv = 0x8000;     // §3.3.5 AF bit
constexpr uint16_t attribute_key_length = 14; // §3.3.5
constexpr size_t nonce_min = 16;              // §3.9
constexpr size_t nonce_max = 256;
constexpr size_t ts_v4_length = 16; // §3.13.1
constexpr size_t ts_v6_length = 40;

// ---- parse helpers -------------------------------------------------------------------------------

parse_error syntax(std::string what) { return parse_error{std::move(what), notify_type::invalid_syntax, 0}; }

bytes to_bytes(std::span<const uint8_t> s) { return bytes(s.begin(), s.end()); }

std::string num(size_t v) { return std::to_string(v); }

// ---- payload bodies --------------------------------------------------------------------------------

// RFC 7296 §3.3.2 + §3.3.5: one transform substructure (after its last/more byte, which the caller read).
//                      1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// | Last Substruc |   RESERVED    |        Transform Length       |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |Transform Type |   RESERVED    |          Transform ID         |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// ~                      Transform Attributes                     ~
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
parse_result<transform> parse_transform_body(byte_reader r)
{
    transform t;
    auto type = r.read_u8();
    auto reserved = r.read_u8();
    auto id = r.read_be16();
    if (!type || !reserved || !id) {
        return syntax("transform shorter than 8 bytes");
    }
    t.type = static_cast<transform_type>(*type);
    t.id = *id;
    // Attributes (§3.3.5). Only Key Length (TV) is defined for IKEv2; any other attribute is skipped by
    // its own length so the rest of the proposal still parses. (§3.3.6 would have the proposal refused
    // for an attribute we do not understand; the transform struct has no field to say so yet, see the
    // wire report.)
    while (!r.empty()) {
        auto af_type = r.read_be16();
        if (!af_type) {
            return syntax("transform attribute shorter than 4 bytes");
        }
        bool tv = (*af_type & attribute_tv) != 0;
        uint16_t attr = *af_type & ~attribute_tv;
        if (tv) {
            auto value = r.read_be16();
            if (!value) {
                return syntax("TV attribute shorter than 4 bytes");
            }
            if (attr == attribute_key_length) {
                if (t.key_length) {
                    return syntax("Key Length attribute appears twice");
                }
                t.key_length = *value;
            }
            continue;
        }
        auto length = r.read_be16();
        if (!length) {
            return syntax("TLV attribute shorter than 4 bytes");
        }
        if (attr == attribute_key_length) {
            return syntax("Key Length attribute must be TV (RFC 7296 §3.3.5)");
        }
        if (!r.skip(*length)) {
            return syntax("TLV attribute length " + num(*length) + " exceeds the transform");
        }
    }
    return t;
}

// RFC 7296 §3.3.1: proposal substructure (after its last/more byte and length, read by the caller).
//                      1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// | Last Substruc |   RESERVED    |         Proposal Length       |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// | Proposal Num  |  Protocol ID  |    SPI Size   |Num  Transforms|
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// ~                        SPI (variable)                         ~
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// ~                        <Transforms>                           ~
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
parse_result<proposal> parse_proposal_body(byte_reader r)
{
    proposal p;
    auto number = r.read_u8();
    auto protocol = r.read_u8();
    auto spi_size = r.read_u8();
    auto count = r.read_u8();
    if (!number || !protocol || !spi_size || !count) {
        return syntax("proposal shorter than 8 bytes");
    }
    p.number = *number;
    p.protocol = *protocol;
    // SPI size by protocol (§3.3.1): IKE 0 in IKE_SA_INIT or 8 when rekeying, AH/ESP 4. Other protocols
    // (RFC 4595 Fibre Channel, ...) are kept as they are; choosing a proposal refuses them.
    switch (static_cast<protocol_id>(*protocol)) {
    case protocol_id::ike:
        if (*spi_size != 0 && *spi_size != 8) {
            return syntax("IKE proposal with SPI size " + num(*spi_size) + " (0 or 8)");
        }
        break;
    case protocol_id::ah:
    case protocol_id::esp:
        if (*spi_size != 4) {
            return syntax("AH/ESP proposal with SPI size " + num(*spi_size) + " (4)");
        }
        break;
    }
    auto spi = r.take(*spi_size);
    if (!spi) {
        return syntax("proposal SPI size " + num(*spi_size) + " exceeds the proposal");
    }
    p.spi = to_bytes(*spi);
    if (*count > max_transforms) {
        return syntax("proposal with " + num(*count) + " transforms (at most " + num(max_transforms) + ")");
    }
    p.transforms.reserve(*count);
    uint8_t marker = transform_more;
    while (!r.empty()) {
        if (marker == transform_last) {
            return syntax("bytes after the transform marked last");
        }
        if (p.transforms.size() == *count) {
            return syntax("more transforms than Num Transforms (" + num(*count) + ")");
        }
        auto m = r.read_u8();
        auto reserved = r.read_u8();
        auto length = r.read_be16();
        if (!m || !reserved || !length) {
            return syntax("transform header truncated");
        }
        if (*m != transform_last && *m != transform_more) {
            return syntax("transform Last Substruc " + num(*m) + " (0 or 3)");
        }
        marker = *m;
        if (*length < 8) {
            return syntax("transform length " + num(*length) + " below 8");
        }
        auto body = r.take(*length - 4u);
        if (!body) {
            return syntax("transform length " + num(*length) + " exceeds the proposal");
        }
        auto t = parse_transform_body(byte_reader(*body));
        if (auto* e = std::get_if<parse_error>(&t)) {
            return *e;
        }
        p.transforms.push_back(std::get<transform>(std::move(t)));
    }
    if (p.transforms.empty()) {
        return syntax("proposal without transforms");
    }
    if (marker != transform_last) {
        return syntax("last transform not marked last");
    }
    if (p.transforms.size() != *count) {
        return syntax("Num Transforms " + num(*count) + " but " + num(p.transforms.size()) + " present");
    }
    return p;
}

// §3.3: proposals, each "more" (2) but the last (0). Numbers start at 1 and go up by one (§3.3.1); a
// response carries the single accepted proposal with the number it had in the request.
parse_result<payload_body> parse_sa(byte_reader r)
{
    sa_payload sa;
    uint8_t marker = proposal_more;
    while (!r.empty()) {
        if (marker == proposal_last) {
            return syntax("bytes after the proposal marked last");
        }
        if (sa.proposals.size() == max_proposals) {
            return syntax("more than " + num(max_proposals) + " proposals");
        }
        auto m = r.read_u8();
        auto reserved = r.read_u8();
        auto length = r.read_be16();
        if (!m || !reserved || !length) {
            return syntax("proposal header truncated");
        }
        if (*m != proposal_last && *m != proposal_more) {
            return syntax("proposal Last Substruc " + num(*m) + " (0 or 2)");
        }
        marker = *m;
        if (*length < 8) {
            return syntax("proposal length " + num(*length) + " below 8");
        }
        auto body = r.take(*length - 4u);
        if (!body) {
            return syntax("proposal length " + num(*length) + " exceeds the SA payload");
        }
        auto p = parse_proposal_body(byte_reader(*body));
        if (auto* e = std::get_if<parse_error>(&p)) {
            return syntax("proposal " + num(sa.proposals.size() + 1) + ": " + e->what);
        }
        auto& prop = std::get<proposal>(p);
        if (prop.number == 0) {
            return syntax("proposal number 0");
        }
        if (!sa.proposals.empty()) {
            if (sa.proposals.front().number != 1 || prop.number != sa.proposals.back().number + 1) {
                return syntax("proposal numbers not 1, 2, 3, ... (got " + num(prop.number) + " after " +
                              num(sa.proposals.back().number) + ")");
            }
        }
        sa.proposals.push_back(std::move(prop));
    }
    if (sa.proposals.empty()) {
        return syntax("SA payload without proposals");
    }
    if (marker != proposal_last) {
        return syntax("last proposal not marked last");
    }
    return sa;
}

// §3.4: DH Group Num (2), RESERVED (2), Key Exchange Data.
parse_result<payload_body> parse_ke(byte_reader r)
{
    auto group = r.read_be16();
    auto reserved = r.read_be16();
    if (!group || !reserved) {
        return syntax("KE payload shorter than 8 bytes");
    }
    if (r.empty()) {
        return syntax("KE payload without key exchange data");
    }
    return ke_payload{*group, to_bytes(r.take_rest())};
}

// §3.5 (ID Type, 3 RESERVED), §3.8 (Auth Method, 3 RESERVED), §3.6/§3.7 (Encoding): a type byte, some
// reserved bytes, then data.
template <typename Body>
parse_result<payload_body> parse_typed(byte_reader r, size_t reserved, const char* name)
{
    auto type = r.read_u8();
    if (!type || !r.skip(reserved)) {
        return syntax(std::string(name) + " payload shorter than " + num(5 + reserved) + " bytes");
    }
    return Body{*type, to_bytes(r.take_rest())};
}

// §3.9: 16..256 bytes of nonce.
parse_result<payload_body> parse_nonce(byte_reader r)
{
    if (r.remaining() < nonce_min || r.remaining() > nonce_max) {
        return syntax("nonce of " + num(r.remaining()) + " bytes (16..256)");
    }
    return nonce_payload{to_bytes(r.take_rest())};
}

// §3.10: Protocol ID, SPI Size, Notify Message Type (2), SPI, Notification Data.
parse_result<payload_body> parse_notify(byte_reader r)
{
    auto protocol = r.read_u8();
    auto spi_size = r.read_u8();
    auto type = r.read_be16();
    if (!protocol || !spi_size || !type) {
        return syntax("Notify payload shorter than 8 bytes");
    }
    auto spi = r.take(*spi_size);
    if (!spi) {
        return syntax("Notify SPI size " + num(*spi_size) + " exceeds the payload");
    }
    return notify_payload{*protocol, to_bytes(*spi), *type, to_bytes(r.take_rest())};
}

// §3.11: Protocol ID, SPI Size, Num of SPIs (2), SPIs. SPI size 0 for IKE (the SA is the one the header
// names), 4 for AH/ESP.
parse_result<payload_body> parse_delete(byte_reader r)
{
    auto protocol = r.read_u8();
    auto spi_size = r.read_u8();
    auto count = r.read_be16();
    if (!protocol || !spi_size || !count) {
        return syntax("Delete payload shorter than 8 bytes");
    }
    switch (*protocol) {
    case static_cast<uint8_t>(protocol_id::ike):
        if (*spi_size != 0) {
            return syntax("Delete of IKE SA with SPI size " + num(*spi_size) + " (0)");
        }
        break;
    case static_cast<uint8_t>(protocol_id::ah):
    case static_cast<uint8_t>(protocol_id::esp):
        if (*spi_size != 4) {
            return syntax("Delete of AH/ESP SA with SPI size " + num(*spi_size) + " (4)");
        }
        break;
    default:
        return syntax("Delete with protocol " + num(*protocol));
    }
    if (size_t(*count) * *spi_size != r.remaining()) {
        return syntax("Delete with " + num(*count) + " SPIs of " + num(*spi_size) + " bytes in " +
                      num(r.remaining()) + " bytes");
    }
    delete_payload d{*protocol, {}};
    // With SPI size 0 the count carries nothing (it should be 0); no empty SPIs are made for it.
    if (*spi_size != 0) {
        d.spis.reserve(*count);
        for (size_t i = 0; i < *count; ++i) {
            auto spi = r.take(*spi_size);
            if (!spi) { // cannot happen after the size check above; checked all the same
                return syntax("Delete SPI " + num(i + 1) + " truncated");
            }
            d.spis.push_back(to_bytes(*spi));
        }
    }
    return d;
}

// §3.13: Number of TSs, 3 RESERVED, then selectors (§3.13.1):
// | TS Type | IP Protocol ID | Selector Length (2) | Start Port (2) | End Port (2) | Start Addr | End Addr |
parse_result<payload_body> parse_ts(byte_reader r)
{
    auto count = r.read_u8();
    if (!count || !r.skip(3)) {
        return syntax("TS payload shorter than 8 bytes");
    }
    if (*count > max_selectors) {
        return syntax("TS payload with " + num(*count) + " selectors (at most " + num(max_selectors) + ")");
    }
    ts_payload ts;
    ts.selectors.reserve(*count);
    for (size_t i = 0; i < *count; ++i) {
        auto type = r.read_u8();
        auto ip_protocol = r.read_u8();
        auto length = r.read_be16();
        if (!type || !ip_protocol || !length) {
            return syntax("traffic selector " + num(i + 1) + " truncated");
        }
        size_t addr_size = 0;
        if (*type == static_cast<uint8_t>(ts_type::ipv4_addr_range) && *length == ts_v4_length) {
            addr_size = 4;
        } else if (*type == static_cast<uint8_t>(ts_type::ipv6_addr_range) && *length == ts_v6_length) {
            addr_size = 16;
        } else {
            return syntax("traffic selector " + num(i + 1) + " of type " + num(*type) + " and length " +
                          num(*length));
        }
        auto start_port = r.read_be16();
        auto end_port = r.read_be16();
        auto start = r.take(addr_size);
        auto end = r.take(addr_size);
        if (!start_port || !end_port || !start || !end) {
            return syntax("traffic selector " + num(i + 1) + " truncated");
        }
        ts.selectors.push_back(
            traffic_selector{*type, *ip_protocol, *start_port, *end_port, to_bytes(*start), to_bytes(*end)});
    }
    if (!r.empty()) {
        return syntax(num(r.remaining()) + " bytes after the last traffic selector");
    }
    return ts;
}

// RFC 7383 §2.5: Fragment Number (2), Total Fragments (2), then IV | ciphertext | ICV. `next` is the
// payload's Next Payload field, `at` the payload's offset in the message.
parse_result<payload_body> parse_skf(byte_reader r, payload_type next, size_t at)
{
    auto number = r.read_be16();
    auto total = r.read_be16();
    if (!number || !total) {
        return syntax("SKF payload shorter than 8 bytes");
    }
    if (*number == 0 || *total == 0) {
        return syntax("Fragment Number " + num(*number) + " of Total Fragments " + num(*total) +
                      " (neither may be 0, RFC 7383 §2.5)");
    }
    if (*number > *total) {
        return syntax("Fragment Number " + num(*number) + " above Total Fragments " + num(*total));
    }
    if (*total > max_fragments) {
        return syntax("Total Fragments " + num(*total) + " (at most " + num(max_fragments) + ")");
    }
    if (*number != 1 && next != payload_type::none) {
        return syntax("fragment " + num(*number) + " has Next Payload " + num(static_cast<uint8_t>(next)) +
                      " (only the first fragment names the first inner payload, RFC 7383 §2.5)");
    }
    if (r.empty()) {
        return syntax("SKF payload without IV, encrypted content and ICV");
    }
    return skf_payload{next, *number, *total, to_bytes(r.take_rest()), at + skf_header_size};
}

// ---- the chain -------------------------------------------------------------------------------------

// Walks a payload chain (§3.2 generic payload headers). `base` is the chain's offset in the datagram
// (for sk_payload::aad_size and error messages); `allow_sk` is false inside a decrypted SK payload.
//                      1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// | Next Payload  |C|  RESERVED   |         Payload Length        |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
parse_result<std::vector<payload>> parse_chain(payload_type first, std::span<const uint8_t> chain,
                                               size_t base, bool allow_sk)
{
    std::vector<payload> out;
    byte_reader r(chain);
    auto next = first;
    while (next != payload_type::none) {
        if (out.size() == max_payloads) {
            return syntax("more than " + num(max_payloads) + " payloads");
        }
        const size_t at = base + r.offset();
        const auto type = next;
        auto where = [&] { return payload_name(type) + " payload at offset " + num(at) + ": "; };
        auto np = r.read_u8();
        auto flags = r.read_u8();
        auto length = r.read_be16();
        if (!np || !flags || !length) {
            return syntax(where() + "generic payload header truncated");
        }
        if (*length < generic_payload_header_size) {
            return syntax(where() + "payload length " + num(*length) + " below 4");
        }
        auto body = r.take(*length - generic_payload_header_size);
        if (!body) {
            return syntax(where() + "payload length " + num(*length) + " exceeds the remaining " +
                          num(r.remaining() + generic_payload_header_size) + " bytes");
        }
        // §3.2: the other RESERVED flag bits are ignored on receipt.
        const bool critical = (*flags & critical_bit) != 0;
        next = static_cast<payload_type>(*np);
        byte_reader br(*body);

        parse_result<payload_body> parsed = syntax("");
        bool last = false; // SK and SKF end the chain: their Next Payload names the first inner payload
        switch (type) {
        case payload_type::sa:
            parsed = parse_sa(br);
            break;
        case payload_type::ke:
            parsed = parse_ke(br);
            break;
        case payload_type::idi:
        case payload_type::idr:
            parsed = parse_typed<id_payload>(br, 3, "ID");
            break;
        case payload_type::auth:
            parsed = parse_typed<auth_payload>(br, 3, "AUTH");
            break;
        case payload_type::cert:
        case payload_type::certreq:
            parsed = parse_typed<cert_payload>(br, 0, "CERT");
            break;
        case payload_type::nonce:
            parsed = parse_nonce(br);
            break;
        case payload_type::notify:
            parsed = parse_notify(br);
            break;
        case payload_type::del:
            parsed = parse_delete(br);
            break;
        case payload_type::vendor:
            parsed = payload_body{vendor_payload{to_bytes(*body)}};
            break;
        case payload_type::tsi:
        case payload_type::tsr:
            parsed = parse_ts(br);
            break;
        case payload_type::sk:
            // §3.14: kept sealed; the bytes before the IV are authenticated (RFC 5282 §5.1 for AEAD).
            if (!allow_sk) {
                return syntax(where() + "SK payload inside an SK payload");
            }
            if (body->empty()) {
                return syntax(where() + "empty SK payload");
            }
            parsed = payload_body{sk_payload{next, to_bytes(*body), at + generic_payload_header_size}};
            last = true;
            break;
        case payload_type::skf:
            // RFC 7383 §2.5: like SK, sealed and last; the Fragment Number and Total Fragments in front
            // of the IV are checked here so that nothing past the parser sees impossible values.
            if (!allow_sk) {
                return syntax(where() + "SKF payload inside an SK payload");
            }
            parsed = parse_skf(br, next, at);
            last = true;
            break;
        default:
            // §2.5: an unknown payload is skipped, unless it is critical.
            if (critical) {
                return parse_error{where() + "unsupported critical payload",
                                   notify_type::unsupported_critical_payload, static_cast<uint8_t>(type)};
            }
            parsed = payload_body{unknown_payload{static_cast<uint8_t>(type), to_bytes(*body)}};
            break;
        }
        if (auto* e = std::get_if<parse_error>(&parsed)) {
            e->what = where() + e->what;
            return *e;
        }
        if (auto* u = std::get_if<unknown_payload>(&std::get<payload_body>(parsed)); u && critical) {
            // CP, EAP and the like: known to the RFC but not supported here.
            return parse_error{where() + "unsupported critical payload",
                               notify_type::unsupported_critical_payload, u->type};
        }
        out.push_back(payload{type, critical, std::get<payload_body>(std::move(parsed))});
        if (last) {
            if (!r.empty()) {
                return syntax(where() + num(r.remaining()) + " bytes after the " + payload_name(type) +
                              " payload, which must be last (RFC 7296 §3.14)");
            }
            return out;
        }
    }
    if (!r.empty()) {
        return syntax(num(r.remaining()) + " bytes after the last payload at offset " +
                      num(base + r.offset()));
    }
    return out;
}

// ---- serialization ---------------------------------------------------------------------------------

// A caller asked for something the wire cannot carry (a length over 65535, more than 255 transforms):
// a bug in the caller, not peer input, so it stops loudly (STYLE.md "cannot happen crashes loudly").
[[noreturn]] void unrepresentable(const char* what)
{
    std::fprintf(stderr, "espresso ike wire: cannot serialize: %s\n", what);
    std::abort();
}

class byte_writer {
public:
    explicit byte_writer(bytes& out) : out_(out) {}
    size_t size() const { return out_.size(); }
    void u8(uint8_t v) { out_.push_back(v); }
    void be16(uint16_t v)
    {
        out_.push_back(static_cast<uint8_t>(v >> 8));
        out_.push_back(static_cast<uint8_t>(v));
    }
    void be32(uint32_t v)
    {
        be16(static_cast<uint16_t>(v >> 16));
        be16(static_cast<uint16_t>(v));
    }
    void be64(uint64_t v)
    {
        be32(static_cast<uint32_t>(v >> 32));
        be32(static_cast<uint32_t>(v));
    }
    void append(std::span<const uint8_t> s) { out_.insert(out_.end(), s.begin(), s.end()); }
    void zeros(size_t n) { out_.insert(out_.end(), n, 0); }
    // Writes the 16-bit length of a structure that started at `start` (its length field at start + 2).
    void patch_length16(size_t start, const char* what)
    {
        size_t len = out_.size() - start;
        if (len > std::numeric_limits<uint16_t>::max()) {
            unrepresentable(what);
        }
        out_[start + 2] = static_cast<uint8_t>(len >> 8);
        out_[start + 3] = static_cast<uint8_t>(len);
    }

private:
    bytes& out_;
};

uint8_t count8(size_t n, const char* what)
{
    if (n > std::numeric_limits<uint8_t>::max()) {
        unrepresentable(what);
    }
    return static_cast<uint8_t>(n);
}

void write_body(byte_writer& w, const sa_payload& sa)
{
    for (size_t i = 0; i < sa.proposals.size(); ++i) {
        const auto& p = sa.proposals[i];
        size_t start = w.size();
        w.u8(i + 1 == sa.proposals.size() ? proposal_last : proposal_more);
        w.u8(0);
        w.be16(0); // patched
        w.u8(p.number);
        w.u8(p.protocol);
        w.u8(count8(p.spi.size(), "proposal SPI longer than 255 bytes"));
        w.u8(count8(p.transforms.size(), "more than 255 transforms in a proposal"));
        w.append(p.spi);
        for (size_t j = 0; j < p.transforms.size(); ++j) {
            const auto& t = p.transforms[j];
            w.u8(j + 1 == p.transforms.size() ? transform_last : transform_more);
            w.u8(0);
            w.be16(t.key_length ? 12 : 8);
            w.u8(static_cast<uint8_t>(t.type));
            w.u8(0);
            w.be16(t.id);
            if (t.key_length) {
                w.be16(attribute_tv | attribute_key_length);
                w.be16(*t.key_length);
            }
        }
        w.patch_length16(start, "proposal longer than 65535 bytes");
    }
}

void write_body(byte_writer& w, const ke_payload& ke)
{
    w.be16(ke.group);
    w.be16(0);
    w.append(ke.data);
}

void write_body(byte_writer& w, const id_payload& id)
{
    w.u8(id.type);
    w.zeros(3);
    w.append(id.data);
}

void write_body(byte_writer& w, const auth_payload& auth)
{
    w.u8(auth.method);
    w.zeros(3);
    w.append(auth.data);
}

void write_body(byte_writer& w, const cert_payload& cert)
{
    w.u8(cert.encoding);
    w.append(cert.data);
}

void write_body(byte_writer& w, const nonce_payload& nonce) { w.append(nonce.data); }

void write_body(byte_writer& w, const notify_payload& n)
{
    w.u8(n.protocol);
    w.u8(count8(n.spi.size(), "notify SPI longer than 255 bytes"));
    w.be16(n.type);
    w.append(n.spi);
    w.append(n.data);
}

void write_body(byte_writer& w, const delete_payload& d)
{
    // The SPI Size field follows the protocol (§3.11: 0 for IKE, 4 for AH/ESP) even when the payload
    // lists no SPIs: a Delete of ESP with none parses, so it must serialize to something that parses.
    size_t spi_size = d.spis.empty() ? (d.protocol == static_cast<uint8_t>(protocol_id::ike) ? 0 : 4)
                                     : d.spis.front().size();
    for (const auto& spi : d.spis) {
        if (spi.size() != spi_size) {
            unrepresentable("Delete payload with SPIs of different sizes");
        }
    }
    if (d.spis.size() > std::numeric_limits<uint16_t>::max()) {
        unrepresentable("more than 65535 SPIs in a Delete payload");
    }
    w.u8(d.protocol);
    w.u8(count8(spi_size, "Delete SPI longer than 255 bytes"));
    w.be16(static_cast<uint16_t>(d.spis.size()));
    for (const auto& spi : d.spis) {
        w.append(spi);
    }
}

void write_body(byte_writer& w, const vendor_payload& v) { w.append(v.id); }

void write_body(byte_writer& w, const ts_payload& ts)
{
    w.u8(count8(ts.selectors.size(), "more than 255 traffic selectors"));
    w.zeros(3);
    for (const auto& s : ts.selectors) {
        size_t start = w.size();
        w.u8(s.type);
        w.u8(s.ip_protocol);
        w.be16(0); // patched
        w.be16(s.start_port);
        w.be16(s.end_port);
        w.append(s.start);
        w.append(s.end);
        w.patch_length16(start, "traffic selector longer than 65535 bytes");
    }
}

void write_body(byte_writer& w, const sk_payload& sk) { w.append(sk.body); }

void write_body(byte_writer& w, const skf_payload& skf)
{
    w.be16(skf.number);
    w.be16(skf.total);
    w.append(skf.body);
}

void write_body(byte_writer& w, const unknown_payload& u) { w.append(u.body); }

const char* exchange_name(uint8_t type)
{
    switch (static_cast<exchange_type>(type)) {
    case exchange_type::ike_sa_init:
        return "IKE_SA_INIT";
    case exchange_type::ike_auth:
        return "IKE_AUTH";
    case exchange_type::create_child_sa:
        return "CREATE_CHILD_SA";
    case exchange_type::informational:
        return "INFORMATIONAL";
    }
    return nullptr;
}

} // namespace

// ---- public API ------------------------------------------------------------------------------------

std::optional<ike_header> parse_header(std::span<const uint8_t> datagram)
{
    byte_reader r(datagram);
    auto spi_i = r.read_be64();
    auto spi_r = r.read_be64();
    auto next = r.read_u8();
    auto version = r.read_u8();
    auto exchange = r.read_u8();
    auto flags = r.read_u8();
    auto message_id = r.read_be32();
    auto length = r.read_be32();
    if (!spi_i || !spi_r || !next || !version || !exchange || !flags || !message_id || !length) {
        return std::nullopt;
    }
    return ike_header{*spi_i,      *spi_r, static_cast<payload_type>(*next), *version, *exchange, *flags,
                      *message_id, *length};
}

parse_result<message> parse_message(std::span<const uint8_t> datagram)
{
    auto header = parse_header(datagram);
    if (!header) {
        return syntax("datagram of " + num(datagram.size()) + " bytes is shorter than the IKE header");
    }
    // §2.5: a major version we do not speak is answered with INVALID_MAJOR_VERSION (the caller decides:
    // never in response to a response, and IKEv1 is simply dropped).
    if ((header->version >> 4) != 2) {
        return parse_error{"major version " + num(header->version >> 4), notify_type::invalid_major_version,
                           0};
    }
    if (header->length != datagram.size()) {
        return syntax("header length " + num(header->length) + " but datagram of " + num(datagram.size()) +
                      " bytes");
    }
    auto payloads = parse_chain(header->next, datagram.subspan(header_size), header_size, true);
    if (auto* e = std::get_if<parse_error>(&payloads)) {
        return std::move(*e);
    }
    return message{*header, std::get<std::vector<payload>>(std::move(payloads))};
}

parse_result<std::vector<payload>> parse_payloads(payload_type first, std::span<const uint8_t> chain)
{
    return parse_chain(first, chain, 0, false);
}

bytes serialize_payloads(std::span<const payload> payloads, payload_type& first)
{
    bytes out;
    byte_writer w(out);
    first = payloads.empty() ? payload_type::none : payloads.front().type;
    for (size_t i = 0; i < payloads.size(); ++i) {
        const auto& p = payloads[i];
        size_t start = w.size();
        payload_type next = i + 1 < payloads.size() ? payloads[i + 1].type : payload_type::none;
        if (const auto* sk = std::get_if<sk_payload>(&p.body)) {
            next = sk->first_inner; // §3.14: the SK payload's Next Payload names the first inner payload
        } else if (const auto* skf = std::get_if<skf_payload>(&p.body)) {
            next = skf->first_inner; // RFC 7383 §2.5: the same, in the first fragment
        }
        w.u8(static_cast<uint8_t>(next));
        w.u8(p.critical ? critical_bit : 0);
        w.be16(0); // patched
        std::visit([&w](const auto& body) { write_body(w, body); }, p.body);
        w.patch_length16(start, "payload longer than 65535 bytes");
    }
    return out;
}

void write_header(const ike_header& header, std::span<uint8_t, header_size> out)
{
    bytes b;
    b.reserve(header_size);
    byte_writer w(b);
    w.be64(header.spi_i);
    w.be64(header.spi_r);
    w.u8(static_cast<uint8_t>(header.next));
    w.u8(header.version);
    w.u8(header.exchange);
    w.u8(header.flags);
    w.be32(header.message_id);
    w.be32(header.length);
    std::copy(b.begin(), b.end(), out.begin());
}

bytes serialize_message(ike_header header, std::span<const payload> payloads)
{
    payload_type first{};
    bytes chain = serialize_payloads(payloads, first);
    if (chain.size() > std::numeric_limits<uint32_t>::max() - header_size) {
        unrepresentable("message longer than 2^32 bytes");
    }
    header.next = first;
    header.length = static_cast<uint32_t>(header_size + chain.size());
    bytes out(header_size);
    write_header(header, std::span<uint8_t, header_size>(out.data(), header_size));
    out.insert(out.end(), chain.begin(), chain.end());
    return out;
}

const payload* find_payload(std::span<const payload> payloads, payload_type type)
{
    for (const auto& p : payloads) {
        if (p.type == type) {
            return &p;
        }
    }
    return nullptr;
}

std::vector<const notify_payload*> find_notifies(std::span<const payload> payloads)
{
    std::vector<const notify_payload*> out;
    for (const auto& p : payloads) {
        if (const auto* n = std::get_if<notify_payload>(&p.body)) {
            out.push_back(n);
        }
    }
    return out;
}

const notify_payload* find_notify(std::span<const payload> payloads, notify_type type)
{
    for (const auto& p : payloads) {
        if (const auto* n = std::get_if<notify_payload>(&p.body);
            n && n->type == static_cast<uint16_t>(type)) {
            return n;
        }
    }
    return nullptr;
}

std::string to_string(exchange_type type)
{
    const char* name = exchange_name(static_cast<uint8_t>(type));
    return name ? name : num(static_cast<uint8_t>(type));
}

std::string payload_name(payload_type type)
{
    switch (type) {
    case payload_type::none:
        return "NONE";
    case payload_type::sa:
        return "SA";
    case payload_type::ke:
        return "KE";
    case payload_type::idi:
        return "IDi";
    case payload_type::idr:
        return "IDr";
    case payload_type::cert:
        return "CERT";
    case payload_type::certreq:
        return "CERTREQ";
    case payload_type::auth:
        return "AUTH";
    case payload_type::nonce:
        return "No";
    case payload_type::notify:
        return "N";
    case payload_type::del:
        return "D";
    case payload_type::vendor:
        return "V";
    case payload_type::tsi:
        return "TSi";
    case payload_type::tsr:
        return "TSr";
    case payload_type::sk:
        return "SK";
    case payload_type::cp:
        return "CP";
    case payload_type::eap:
        return "EAP";
    case payload_type::skf:
        return "SKF";
    }
    return num(static_cast<uint8_t>(type));
}

std::string notify_name(uint16_t type)
{
    switch (static_cast<notify_type>(type)) {
    case notify_type::unsupported_critical_payload:
        return "UNSUPPORTED_CRITICAL_PAYLOAD";
    case notify_type::invalid_ike_spi:
        return "INVALID_IKE_SPI";
    case notify_type::invalid_major_version:
        return "INVALID_MAJOR_VERSION";
    case notify_type::invalid_syntax:
        return "INVALID_SYNTAX";
    case notify_type::invalid_message_id:
        return "INVALID_MESSAGE_ID";
    case notify_type::invalid_spi:
        return "INVALID_SPI";
    case notify_type::no_proposal_chosen:
        return "NO_PROPOSAL_CHOSEN";
    case notify_type::invalid_ke_payload:
        return "INVALID_KE_PAYLOAD";
    case notify_type::authentication_failed:
        return "AUTHENTICATION_FAILED";
    case notify_type::single_pair_required:
        return "SINGLE_PAIR_REQUIRED";
    case notify_type::no_additional_sas:
        return "NO_ADDITIONAL_SAS";
    case notify_type::internal_address_failure:
        return "INTERNAL_ADDRESS_FAILURE";
    case notify_type::failed_cp_required:
        return "FAILED_CP_REQUIRED";
    case notify_type::ts_unacceptable:
        return "TS_UNACCEPTABLE";
    case notify_type::invalid_selectors:
        return "INVALID_SELECTORS";
    case notify_type::temporary_failure:
        return "TEMPORARY_FAILURE";
    case notify_type::child_sa_not_found:
        return "CHILD_SA_NOT_FOUND";
    case notify_type::initial_contact:
        return "INITIAL_CONTACT";
    case notify_type::set_window_size:
        return "SET_WINDOW_SIZE";
    case notify_type::additional_ts_possible:
        return "ADDITIONAL_TS_POSSIBLE";
    case notify_type::ipcomp_supported:
        return "IPCOMP_SUPPORTED";
    case notify_type::nat_detection_source_ip:
        return "NAT_DETECTION_SOURCE_IP";
    case notify_type::nat_detection_destination_ip:
        return "NAT_DETECTION_DESTINATION_IP";
    case notify_type::cookie:
        return "COOKIE";
    case notify_type::use_transport_mode:
        return "USE_TRANSPORT_MODE";
    case notify_type::rekey_sa:
        return "REKEY_SA";
    case notify_type::esp_tfc_padding_not_supported:
        return "ESP_TFC_PADDING_NOT_SUPPORTED";
    case notify_type::non_first_fragments_also:
        return "NON_FIRST_FRAGMENTS_ALSO";
    case notify_type::multiple_auth_supported:
        return "MULTIPLE_AUTH_SUPPORTED";
    case notify_type::ikev2_fragmentation_supported:
        return "IKEV2_FRAGMENTATION_SUPPORTED";
    case notify_type::signature_hash_algorithms:
        return "SIGNATURE_HASH_ALGORITHMS";
    }
    return num(type);
}

// strongSwan's layout: "IKE_SA_INIT request 0 [ SA KE No N(NAT_DETECTION_SOURCE_IP) ]"; an SK payload
// shows as "SK" (sealed), a Notify with its type.
std::string describe(const message& msg)
{
    const char* exchange = exchange_name(msg.header.exchange);
    std::string out = exchange ? exchange : "EXCHANGE(" + num(msg.header.exchange) + ")";
    out += msg.header.is_response() ? " response " : " request ";
    out += num(msg.header.message_id);
    out += " [";
    for (const auto& p : msg.payloads) {
        out += ' ';
        if (const auto* n = std::get_if<notify_payload>(&p.body)) {
            out += "N(" + notify_name(n->type) + ")";
        } else if (const auto* f = std::get_if<skf_payload>(&p.body)) {
            out += "SKF(" + num(f->number) + "/" + num(f->total) + ")"; // strongSwan: "EF(1/3)"
        } else if (const auto* u = std::get_if<unknown_payload>(&p.body); u && p.type != payload_type::cp &&
                                                                          p.type != payload_type::eap &&
                                                                          p.type != payload_type::skf) {
            out += "UNKNOWN(" + num(u->type) + ")";
        } else {
            out += payload_name(p.type);
        }
    }
    out += " ]";
    return out;
}

// ---- equality --------------------------------------------------------------------------------------

bool operator==(const ike_header& a, const ike_header& b)
{
    return a.spi_i == b.spi_i && a.spi_r == b.spi_r && a.next == b.next && a.version == b.version &&
           a.exchange == b.exchange && a.flags == b.flags && a.message_id == b.message_id &&
           a.length == b.length;
}
bool operator==(const sa_payload& a, const sa_payload& b) { return a.proposals == b.proposals; }
bool operator==(const ke_payload& a, const ke_payload& b) { return a.group == b.group && a.data == b.data; }
bool operator==(const id_payload& a, const id_payload& b) { return a.type == b.type && a.data == b.data; }
bool operator==(const auth_payload& a, const auth_payload& b)
{
    return a.method == b.method && a.data == b.data;
}
bool operator==(const cert_payload& a, const cert_payload& b)
{
    return a.encoding == b.encoding && a.data == b.data;
}
bool operator==(const nonce_payload& a, const nonce_payload& b) { return a.data == b.data; }
bool operator==(const notify_payload& a, const notify_payload& b)
{
    return a.protocol == b.protocol && a.spi == b.spi && a.type == b.type && a.data == b.data;
}
bool operator==(const delete_payload& a, const delete_payload& b)
{
    return a.protocol == b.protocol && a.spis == b.spis;
}
bool operator==(const vendor_payload& a, const vendor_payload& b) { return a.id == b.id; }
bool operator==(const ts_payload& a, const ts_payload& b) { return a.selectors == b.selectors; }
bool operator==(const sk_payload& a, const sk_payload& b)
{
    return a.first_inner == b.first_inner && a.body == b.body && a.aad_size == b.aad_size;
}
bool operator==(const skf_payload& a, const skf_payload& b)
{
    return a.first_inner == b.first_inner && a.number == b.number && a.total == b.total && a.body == b.body &&
           a.aad_size == b.aad_size;
}
bool operator==(const unknown_payload& a, const unknown_payload& b)
{
    return a.type == b.type && a.body == b.body;
}
bool operator==(const payload& a, const payload& b)
{
    return a.type == b.type && a.critical == b.critical && a.body == b.body;
}
bool operator==(const message& a, const message& b)
{
    return a.header == b.header && a.payloads == b.payloads;
}

} // namespace espresso::cp
