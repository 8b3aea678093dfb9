// Choosing a proposal (RFC 7296 §2.7, §3.3): the configured strongSwan-style proposals become SA
// payload proposals, a responder picks the first of its own proposals (in configured order) that one
// of the peer's proposals can satisfy, an initiator checks that the responder's single choice is one it
// offered, and when nothing matches the operator gets one sentence saying which transform type
// differed.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "espresso/config/ike.h"
#include "espresso/cp/ike_message.h"

namespace espresso::cp {

// The transforms of one negotiated SA (IKE or Child).
struct chosen_transforms {
    uint16_t encr = 0;
    uint16_t key_bits = 0;
    uint16_t integ = 0; // 0 = none (AEAD)
    uint16_t prf = 0;   // IKE only
    uint16_t dh = 0;    // 0 = none (Child SA without PFS)
    uint16_t esn = 0;   // Child only: 0 or 1
    bool operator==(const chosen_transforms&) const = default;
};

// One configured proposal as an SA payload proposal (protocol ike or esp).
proposal to_wire(const config::ike_proposal_config& ours, protocol_id protocol, uint8_t number, const bytes& spi);
std::vector<proposal> to_wire(const std::vector<config::ike_proposal_config>& ours, protocol_id protocol,
                              const bytes& spi);

// The single-transform-per-type proposal that announces `chosen` (the responder's reply).
proposal to_wire(const chosen_transforms& chosen, protocol_id protocol, uint8_t number, const bytes& spi);

struct selection {
    chosen_transforms transforms;
    const proposal* theirs = nullptr; // the peer's proposal that matched (number, SPI)
};

// Responder: our proposals in order, first peer proposal that satisfies one. When nothing matches,
// `why` says which transform type was missing, e.g. "peer offered AES_CBC_128/HMAC_SHA1_96/
// PRF_HMAC_SHA1/MODP_1024; we accept aes256-sha256-modp2048: no common DH group".
std::optional<selection> select_proposal(const std::vector<config::ike_proposal_config>& ours, const sa_payload& theirs,
                                         protocol_id protocol, std::string& why);

// Initiator: the responder's answer must hold exactly one proposal with one transform of each type,
// all from one of the proposals we offered.
std::optional<chosen_transforms> check_reply(const std::vector<config::ike_proposal_config>& ours, const sa_payload& reply,
                                             protocol_id protocol, std::string& why);

// "AES_GCM_16_256/PRF_HMAC_SHA2_256/ECP_256" for logs and `show crypto isakmp sa`.
std::string describe(const chosen_transforms& t, protocol_id protocol);
std::string describe(const proposal& p);
std::string transform_name(transform_type type, uint16_t id, std::optional<uint16_t> key_bits = std::nullopt);

// The data plane's algorithm names for a Child SA ("aes256gcm16" / "aes256", "none" / "sha256").
std::string dataplane_cipher_name(const chosen_transforms& t);
std::string dataplane_integ_name(const chosen_transforms& t);

} // namespace espresso::cp
