// IKEv2 messages on the wire (RFC 7296 §3): header, generic payload chain and the payload bodies the
// daemon speaks. Parsing is bounds-checked everywhere (byte_reader.h); every length field is checked
// before use and every payload body is verified (RFC 7296 §3.2: a payload whose length disagrees with
// its content makes the whole message invalid).
//
// Thread safety: plain functions over values; call from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace espresso::cp {

using bytes = std::vector<uint8_t>;

// RFC 7296 §3.1, IANA "IKEv2 Exchange Types".
enum class exchange_type : uint8_t {
    ike_sa_init = 34,
    ike_auth = 35,
    create_child_sa = 36,
    informational = 37,
};

// RFC 7296 §3.2, IANA "IKEv2 Payload Types".
enum class payload_type : uint8_t {
    none = 0,
    sa = 33,
    ke = 34,
    idi = 35,
    idr = 36,
    cert = 37,
    certreq = 38,
    auth = 39,
    nonce = 40,
    notify = 41,
    del = 42,
    vendor = 43,
    tsi = 44,
    tsr = 45,
    sk = 46,
    cp = 47,
    eap = 48,
    skf = 53, // RFC 7383 encrypted fragment
};

// RFC 7296 §3.1 flags.
inline constexpr uint8_t flag_initiator = 0x08;
inline constexpr uint8_t flag_version = 0x10;
inline constexpr uint8_t flag_response = 0x20;

inline constexpr size_t header_size = 28;
inline constexpr size_t generic_payload_header_size = 4;

//                      1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                       IKE SA Initiator's SPI                  |
// |                                                               |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                       IKE SA Responder's SPI                  |
// |                                                               |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |  Next Payload | MjVer | MnVer | Exchange Type |     Flags     |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                          Message ID                           |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                            Length                             |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
struct ike_header {
    uint64_t spi_i = 0;
    uint64_t spi_r = 0;
    payload_type next = payload_type::none;
    uint8_t version = 0x20; // major 2, minor 0
    uint8_t exchange = 0;   // exchange_type, kept raw: unknown types must be answered/ignored, not crash
    uint8_t flags = 0;
    uint32_t message_id = 0;
    uint32_t length = 0;

    bool is_response() const noexcept { return (flags & flag_response) != 0; }
    bool from_initiator() const noexcept { return (flags & flag_initiator) != 0; }
};

// ---- SA payload (RFC 7296 §3.3) --------------------------------------------------------------------
enum class transform_type : uint8_t { encr = 1, prf = 2, integ = 3, dh = 4, esn = 5 };
enum class protocol_id : uint8_t { ike = 1, ah = 2, esp = 3 };

struct transform {
    transform_type type{};
    uint16_t id = 0;
    std::optional<uint16_t> key_length; // Key Length attribute (type 14, TV), bits
    bool operator==(const transform&) const = default;
};

struct proposal {
    uint8_t number = 1;
    uint8_t protocol = 1; // protocol_id, raw
    bytes spi;            // empty for IKE in IKE_SA_INIT, 8 bytes for IKE rekey, 4 for ESP/AH
    std::vector<transform> transforms;
    bool operator==(const proposal&) const = default;
};

struct sa_payload {
    std::vector<proposal> proposals;
};

// ---- other payloads -------------------------------------------------------------------------------
struct ke_payload { // §3.4
    uint16_t group = 0;
    bytes data;
};

enum class id_type : uint8_t { ipv4_addr = 1, fqdn = 2, rfc822_addr = 3, ipv6_addr = 5, der_asn1_dn = 9, key_id = 11 };
struct id_payload { // §3.5 (IDi and IDr)
    uint8_t type = 0;
    bytes data;
};

enum class auth_method : uint8_t { rsa_sig = 1, shared_key_mic = 2, dss_sig = 3, ecdsa_256 = 9, ecdsa_384 = 10, ecdsa_521 = 11, digital_signature = 14 };
struct auth_payload { // §3.8
    uint8_t method = 0;
    bytes data;
};

struct cert_payload { // §3.6 (CERT) and §3.7 (CERTREQ)
    uint8_t encoding = 0; // 4 = X.509 certificate - signature
    bytes data;
};

struct nonce_payload { // §3.9: 16..256 bytes
    bytes data;
};

// IANA "IKEv2 Notify Message Types" we use.
enum class notify_type : uint16_t {
    unsupported_critical_payload = 1,
    invalid_ike_spi = 4,
    invalid_major_version = 5,
    invalid_syntax = 7,
    invalid_message_id = 9,
    invalid_spi = 11,
    no_proposal_chosen = 14,
    invalid_ke_payload = 17,
    authentication_failed = 24,
    single_pair_required = 34,
    no_additional_sas = 35,
    internal_address_failure = 36,
    failed_cp_required = 37,
    ts_unacceptable = 38,
    invalid_selectors = 39,
    temporary_failure = 43,
    child_sa_not_found = 44,
    initial_contact = 16384,
    set_window_size = 16385,
    additional_ts_possible = 16386,
    ipcomp_supported = 16387,
    nat_detection_source_ip = 16388,
    nat_detection_destination_ip = 16389,
    cookie = 16390,
    use_transport_mode = 16391,
    rekey_sa = 16393,
    esp_tfc_padding_not_supported = 16394,
    non_first_fragments_also = 16395,
    multiple_auth_supported = 16404,
    ikev2_fragmentation_supported = 16430,
    signature_hash_algorithms = 16431,
};
struct notify_payload { // §3.10
    uint8_t protocol = 0; // protocol_id or 0
    bytes spi;
    uint16_t type = 0;
    bytes data;
};

struct delete_payload { // §3.11
    uint8_t protocol = 0;
    std::vector<bytes> spis; // each of spi size (0 for IKE, 4 for ESP/AH)
};

struct vendor_payload { // §3.12
    bytes id;
};

enum class ts_type : uint8_t { ipv4_addr_range = 7, ipv6_addr_range = 8 };
struct traffic_selector { // §3.13.1
    uint8_t type = 7;       // ts_type, raw
    uint8_t ip_protocol = 0; // 0 = any
    uint16_t start_port = 0;
    uint16_t end_port = 65535;
    bytes start; // 4 or 16 bytes, network order
    bytes end;
    bool operator==(const traffic_selector&) const = default;
};
struct ts_payload { // §3.13 (TSi and TSr)
    std::vector<traffic_selector> selectors;
};

// Encrypted and Authenticated payload (§3.14), kept sealed: the caller opens it with its keys.
// `first_inner` is the SK payload's Next Payload field (type of the first inner payload).
// `body` is IV | ciphertext | ICV. `aad_size` is the number of message bytes before the IV
// (IKE header + SK generic payload header, plus any unencrypted payloads before SK): for AEAD
// (RFC 5282 §5.1) those bytes are the associated data; for CBC+HMAC the ICV covers them too.
struct sk_payload {
    payload_type first_inner = payload_type::none;
    bytes body;
    size_t aad_size = 0;
};

// Encrypted Fragment payload, SKF (RFC 7383 §2.5): one piece of an SK payload's plaintext, sealed on its
// own (own IV, own ICV) with the same keys as SK. Kept sealed like sk_payload.
//                      1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// | Next Payload  |C|  RESERVED   |         Payload Length        |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |        Fragment Number        |        Total Fragments        |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                     Initialization Vector                     |
// ~                      Encrypted content                        ~
// |                   Integrity Checksum Data                     |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// `first_inner` is the Next Payload field: the type of the first inner payload in fragment 1, none in
// every other fragment (§2.5: MUST be 0; parse_message refuses anything else). `aad_size` counts the
// message bytes before the IV, Fragment Number and Total Fragments included: for AEAD they are the
// associated data (§2.5), for CBC+HMAC the ICV covers them too.
struct skf_payload {
    payload_type first_inner = payload_type::none;
    uint16_t number = 0; // Fragment Number, 1..total
    uint16_t total = 0;  // Total Fragments, 1..max_fragments
    bytes body;          // IV | ciphertext | ICV
    size_t aad_size = 0;
};
inline constexpr size_t skf_header_size = generic_payload_header_size + 4;
// Our bounds on what a peer may make us collect (RFC 7383 sets none). An unfragmented IKE message is one
// UDP datagram, so its SK plaintext is under 64 KiB; a reassembled one may not be bigger. A 576-byte IPv4
// datagram (RFC 7383 §2.5.1's smallest fragment size) carries at least ~440 plaintext bytes after the
// IP/UDP/IKE/SKF headers, the IV, the largest ICV and padding, so 64 KiB never needs more than 150
// fragments; a Total Fragments above 256 is refused at parse time.
inline constexpr uint16_t max_fragments = 256;
inline constexpr size_t max_reassembled_size = 65535;

// A payload we do not know (or do not use): kept raw so the critical bit can be honoured
// (§2.5: unknown critical payload -> UNSUPPORTED_CRITICAL_PAYLOAD).
struct unknown_payload {
    uint8_t type = 0;
    bytes body;
};

using payload_body = std::variant<sa_payload, ke_payload, id_payload, auth_payload, cert_payload, nonce_payload,
                                  notify_payload, delete_payload, vendor_payload, ts_payload, sk_payload,
                                  skf_payload, unknown_payload>;

struct payload {
    payload_type type = payload_type::none; // for idi/idr, tsi/tsr, cert/certreq the body type is shared
    bool critical = false;
    payload_body body;
};

struct message {
    ike_header header;
    std::vector<payload> payloads;
};

// Why a message or payload chain was refused: the field and the reason, for logs and for choosing
// the notify to send (INVALID_SYNTAX, UNSUPPORTED_CRITICAL_PAYLOAD, ...).
struct parse_error {
    std::string what;
    notify_type notify = notify_type::invalid_syntax;
    uint8_t unsupported_type = 0; // set for unsupported_critical_payload
};

template <typename T>
using parse_result = std::variant<T, parse_error>;

// Parses an IKE header only (28 bytes): for quick demux/dropping before any other work.
std::optional<ike_header> parse_header(std::span<const uint8_t> datagram);

// Parses a whole IKEv2 message (the UDP payload, without the 4-byte non-ESP marker). The header's
// Length must equal datagram.size(); payloads after an SK payload are an error (§3.14: SK is last).
// An SK payload is returned sealed (sk_payload) with its aad_size set; so is an SKF payload (RFC 7383
// §2.5, also last), after its Fragment Number and Total Fragments were checked: both non-zero, number
// <= total <= max_fragments, Next Payload 0 after the first fragment, IV/ciphertext/ICV not empty.
parse_result<message> parse_message(std::span<const uint8_t> datagram);

// Parses a chain of payloads starting with `first` (the decrypted contents of an SK payload).
// Runs the same checks as parse_message. Nested SK or SKF is an error.
parse_result<std::vector<payload>> parse_payloads(payload_type first, std::span<const uint8_t> chain);

// Serializes payloads as a chain; each Next Payload field names the following payload, the last is
// none. Returns the type of the first payload through `first` (none when empty).
bytes serialize_payloads(std::span<const payload> payloads, payload_type& first);

// Writes the 28-byte header (header.length written as given).
void write_header(const ike_header& header, std::span<uint8_t, header_size> out);

// Serializes an unencrypted message (IKE_SA_INIT): header.next and header.length are computed.
bytes serialize_message(ike_header header, std::span<const payload> payloads);

// Convenience lookups over a payload list.
const payload* find_payload(std::span<const payload> payloads, payload_type type);
std::vector<const notify_payload*> find_notifies(std::span<const payload> payloads);
const notify_payload* find_notify(std::span<const payload> payloads, notify_type type);

// Names for logs ("IKE_SA_INIT", "SA", "N(NAT_DETECTION_SOURCE_IP)"); unknown values as numbers.
std::string to_string(exchange_type type);
std::string payload_name(payload_type type);
std::string notify_name(uint16_t type);
// "HDR, SA, KE, No, N(NAT_DETECTION_SOURCE_IP)" for debug logs (`espresso debug ike`).
std::string describe(const message& msg);

// Structural equality (added for round-trip tests and the fuzz target; the daemon may use it too).
// Compares every field, including sk_payload::aad_size and ike_header::length.
bool operator==(const ike_header& a, const ike_header& b);
bool operator==(const sa_payload& a, const sa_payload& b);
bool operator==(const ke_payload& a, const ke_payload& b);
bool operator==(const id_payload& a, const id_payload& b);
bool operator==(const auth_payload& a, const auth_payload& b);
bool operator==(const cert_payload& a, const cert_payload& b);
bool operator==(const nonce_payload& a, const nonce_payload& b);
bool operator==(const notify_payload& a, const notify_payload& b);
bool operator==(const delete_payload& a, const delete_payload& b);
bool operator==(const vendor_payload& a, const vendor_payload& b);
bool operator==(const ts_payload& a, const ts_payload& b);
bool operator==(const sk_payload& a, const sk_payload& b);
bool operator==(const skf_payload& a, const skf_payload& b);
bool operator==(const unknown_payload& a, const unknown_payload& b);
bool operator==(const payload& a, const payload& b);
bool operator==(const message& a, const message& b);

} // namespace espresso::cp
