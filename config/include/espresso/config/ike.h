// The `ike:` section: IKEv2 peers, their tunnels, and strongSwan-style proposal strings.
//
// Plain structs, no yaml-cpp: the IKEv2 daemon includes this header and links
// espresso_config_types only. The loader (loader.h) fills them in; parse_ike_proposal,
// describe_transforms and parse_identity are pure functions, callable from any thread.
//
// Include order: types.h includes this file after it has defined ip_address, ip_prefix and
// ipsec_mode (gateway_config holds an ike_config by value). This file includes types.h first when
// it is included on its own, so either header may be included first. The guard is therefore set
// only once the definitions below are reached, not at the top, and there is no `#pragma once`.
#ifndef ESPRESSO_CONFIG_IKE_H
#include "espresso/config/types.h" // defines the address types, then includes this file back
#endif

#ifndef ESPRESSO_CONFIG_IKE_H
#define ESPRESSO_CONFIG_IKE_H

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace espresso::config {

// IANA "IKEv2 Transform Type 1 - Encryption Algorithm Transform IDs" (RFC 7296 §3.3.2).
inline constexpr uint16_t ike_encr_des = 2;
inline constexpr uint16_t ike_encr_3des = 3;
inline constexpr uint16_t ike_encr_aes_cbc = 12;
inline constexpr uint16_t ike_encr_aes_gcm8 = 18;
inline constexpr uint16_t ike_encr_aes_gcm12 = 19;
inline constexpr uint16_t ike_encr_aes_gcm16 = 20;

// One encryption transform with its Key Length attribute (RFC 7296 §3.3.5).
struct ike_encr {
    uint16_t id = 0;       // IANA ENCR id: 12 AES-CBC, 18/19/20 AES-GCM with 8/12/16-octet ICV
    uint16_t key_bits = 0; // 128, 192 or 256
    bool operator==(const ike_encr&) const = default;
};

// True for the combined-mode (AEAD) ciphers (RFC 5282): AES-GCM 8/12/16.
bool is_aead(uint16_t encr_id) noexcept;

// One proposal (RFC 7296 §3.3): every list holds alternatives, in the order written.
struct ike_proposal_config {
    std::string text;                 // as written, for diagnostics
    std::vector<ike_encr> encryption; // in the order written
    std::vector<uint16_t>
        integrity; // IANA INTEG ids (2 sha1_96, 12 sha256_128, 13 sha384_192, 14 sha512_256); empty for AEAD
    std::vector<uint16_t> prf; // IANA PRF ids (2 sha1, 5 sha256, 6 sha384, 7 sha512); IKE only, empty for ESP
    std::vector<uint16_t> dh;  // IANA DH groups (14,15,16,19,20,21,31); ESP: PFS groups, empty = no PFS
    std::vector<uint16_t> esn; // ESP only: ESN transform ids (0 = no ESN, 1 = ESN); default {0}
};

// Parses a strongSwan proposal string: tokens separated by '-', each naming one transform.
//   IKE (esp == false): "aes256-sha256-modp2048", "aes256gcm16-prfsha384-ecp384",
//                       "aes128-aes256-sha256-sha1-modp2048-ecp256"
//   ESP (esp == true):  "aes256gcm16", "aes256-sha256", "aes128gcm16-ecp256-esn"
// Rules, as strongSwan 5.9 (proposal.c, check_proposal):
//   - IKE without an explicit prf: one PRF per integrity algorithm, in that order (sha256 ->
//     prfsha256). An AEAD IKE proposal has no integrity algorithm, so it needs an explicit prf
//     ("aes256gcm16-prfsha256-ecp256"); strongSwan refuses it too ("a PRF algorithm is mandatory").
//   - AEAD and non-AEAD encryption must not be mixed. With AEAD, integrity algorithms are dropped
//     after the PRFs were derived from them ("aes256gcm16-sha256-ecp256" = AES_GCM_16_256 /
//     PRF_HMAC_SHA2_256 / ECP_256), as strongSwan does. Non-AEAD needs integrity, for IKE (as
//     strongSwan) and for ESP (stricter than strongSwan: no encryption-only ESP, RFC 8221 §3).
//   - IKE needs a DH group; ESP DH groups are optional (PFS). prf is refused in ESP.
//   - ESP: "esn"/"noesn" set the ESN transforms; neither means {0}.
//   - Legacy transforms (modp768/1024/1536, modp1024s160/2048s224/2048s256, des, 3des, md5)
//     are refused unless allow_legacy, with the reason (RFC 8247 / RFC 8221). sha1 is not legacy.
// On failure returns nullopt and sets `error` to "<problem>; <fix>" naming the bad token, e.g.
// `unknown transform "aes257" in "aes257-sha256-modp2048"; expected one of: ...; did you mean "aes256"?`.
std::optional<ike_proposal_config> parse_ike_proposal(std::string_view text, bool esp, bool allow_legacy,
                                                      std::string& error);

// The same, with the problem and the fix apart (the loader builds "file:line:col: ... Fix: ...").
struct proposal_error {
    std::string problem;
    std::string fix;
    bool legacy = false; // refused only because allow_legacy is false
};
std::optional<ike_proposal_config> parse_ike_proposal(std::string_view text, bool esp, bool allow_legacy,
                                                      proposal_error& error);

// "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048", strongSwan's log spelling; several
// alternatives of one type are joined by '/', in order. For negotiation diagnostics.
std::string describe_transforms(const ike_proposal_config& p);

// Every token parse_ike_proposal accepts for `esp`, for error messages and docs.
std::string_view ike_proposal_tokens(bool esp) noexcept;

// IKEv2 identities (RFC 7296 §3.5).
enum class ike_id_kind : uint8_t { any, ipv4, ipv6, fqdn, email, dn };
struct ike_identity {
    ike_id_kind kind = ike_id_kind::any;
    std::string text; // ipv4/ipv6: the address in canonical form; fqdn without a leading '@'; any: "%any"
    bool operator==(const ike_identity&) const = default;
};
// strongSwan rules: IP literal -> ipv4/ipv6; "@host" -> fqdn "host"; "user@host" -> email;
// contains '=' -> dn; "%any" (or empty) -> any; other text -> fqdn.
ike_identity parse_identity(std::string_view text);
std::string_view to_string(ike_id_kind kind) noexcept;

enum class ike_auth_method : uint8_t { psk, pubkey };
struct ike_auth_config {
    ike_auth_method method = ike_auth_method::psk;
    std::string psk; // the secret (from `secret:` or `secret-file:`); never printed in any error/log
    std::string certificate, private_key; // pubkey: PEM file paths (existence checked at load)
    std::vector<std::string> ca;          // pubkey: PEM CA files to verify the peer's chain
};

enum class ike_start_action : uint8_t { none, immediately, on_traffic };
enum class ike_dpd_action : uint8_t { clear, restart, hold };

// IKE fragmentation (RFC 7383), strongSwan's `fragmentation` values:
//   yes     announce IKEV2_FRAGMENTATION_SUPPORTED, and send oversized messages as fragments when the
//           peer announced it too;
//   accept  announce it (so the peer may send fragments) but never fragment our own messages;
//   force   as yes: strongSwan's force only changes IKEv1 (fragments before support is known), which
//           RFC 7383 §2.3 forbids for IKEv2; kept so strongSwan settings can be copied over;
//   no      do not announce it; fragments from the peer are dropped (and counted).
enum class ike_fragmentation : uint8_t { yes, accept, force, no };

// One CHILD_SA (RFC 7296 §1.3) negotiated under a peer's IKE SA.
struct ike_tunnel_config {
    std::string name;
    std::vector<ip_prefix> local_ts, remote_ts;
    ipsec_mode mode = ipsec_mode::tunnel;
    std::vector<ike_proposal_config> esp_proposals; // default {"aes256gcm16", "aes256-sha256"}
    uint32_t rekey_time = 3600;                     // seconds, 0 = never; the hard lifetime is 110 %
    uint64_t rekey_bytes = 0, rekey_packets = 0;    // soft limits (0 = none)
    ike_start_action start = ike_start_action::none;
    uint32_t replay_window = 128;
    std::string origin; // "file:line:col" of the tunnel's entry
};

struct ike_peer_config {
    std::string name;
    uint8_t version = 2;      // only 2 accepted for now
    ip_address local_address; // required; one of the interface addresses when `interfaces:` is present
    std::optional<ip_address>
        remote_address; // "any" -> nullopt (responder only; start: immediately is refused)
    uint16_t local_port = 500, remote_port = 500;
    std::vector<ike_proposal_config>
        proposals; // default {"aes256gcm16-prfsha256-ecp256", "aes256-sha256-modp2048"}
    bool allow_legacy = false;
    ike_identity local_id, remote_id; // default: local/remote address (remote any -> kind any)
    ike_auth_config auth;
    uint32_t rekey_time = 14400; // IKE SA rekey, seconds, 0 = never
    uint32_t dpd_interval = 30;  // seconds, 0 = off
    ike_dpd_action dpd_action = ike_dpd_action::restart;
    ike_fragmentation fragmentation = ike_fragmentation::yes;
    // Largest IP datagram (IP + UDP headers included) one IKE fragment may fill, as strongSwan's
    // charon.fragment_size (default 1280, the IPv6 minimum MTU, for both families; RFC 7383 §2.5.1
    // suggests 576 for IPv4, which `fragment-size: 576` gives). Only messages above it are fragmented.
    uint32_t fragment_size = 1280;
    std::vector<ike_tunnel_config> tunnels;
    std::string origin; // "file:line:col" of the peer's entry
};

struct ike_config {
    std::vector<ike_peer_config> peers;
    uint32_t cookie_threshold = 1000; // half-open IKE SAs before cookies are demanded (RFC 7296 §2.6)
    // Per remote address (every port, every shard), checked on each new IKE_SA_INIT request before any
    // DH work; 0 = no limit. Half-open: responder IKE SAs not yet authenticated (strongSwan's
    // block_threshold is 5). Established: IKE SAs with the address, either role (road warriors
    // behind one NAT share an address: raise it for them).
    uint32_t max_half_open_per_address = 10;
    uint32_t max_sas_per_address = 100;
    // Retransmission (RFC 7296 §2.1): first timeout, doubled per try; after `tries` retransmissions
    // the peer counts as unreachable (also for DPD). 1000 ms and 5 tries: about a minute.
    uint32_t retransmit_timeout_ms = 1000;
    uint32_t retransmit_tries = 5;
    // NAT-keepalive interval in seconds (RFC 3948 §4, default 20 s as there and in strongSwan's
    // charon.keep_alive): an IKE SA whose local end is behind a NAT sends a 1-byte 0xFF datagram on UDP
    // 4500 this often to hold the NAT mapping open. 0 = never; at most 3600.
    uint32_t nat_keepalive = 20;
    std::string log_file;             // empty = stderr only
    // Shards of espresso-ike (threads running IKE SAs, controlplane/ike/ike_shards.h), 1-16; 0 = not
    // set: the online CPUs, at most 4. Read at start only.
    uint32_t threads = 0;
};

} // namespace espresso::config

#endif // ESPRESSO_CONFIG_IKE_H
