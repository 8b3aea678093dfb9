#include "proposals.h"

#include <algorithm>
#include <array>

namespace espresso::cp {
namespace {

bool is_aead_encr(uint16_t id) { return id == 18 || id == 19 || id == 20; }

template <typename T>
bool contains(const std::vector<T>& v, const T& x) { return std::find(v.begin(), v.end(), x) != v.end(); }

std::vector<uint16_t> ids_of(const proposal& p, transform_type type)
{
    std::vector<uint16_t> out;
    for (const auto& t : p.transforms) {
        if (t.type == type) {
            out.push_back(t.id);
        }
    }
    return out;
}

bool has_encr(const proposal& p, const config::ike_encr& e)
{
    return std::any_of(p.transforms.begin(), p.transforms.end(), [&](const transform& t) {
        return t.type == transform_type::encr && t.id == e.id && t.key_length.value_or(0) == e.key_bits;
    });
}

// Transform types RFC 7296 §3.3.2 defines; a proposal with any other type is skipped (§3.3.6).
bool known_types_only(const proposal& p)
{
    return std::all_of(p.transforms.begin(), p.transforms.end(), [](const transform& t) {
        auto v = static_cast<uint8_t>(t.type);
        return v >= 1 && v <= 5;
    });
}

enum class mismatch : uint8_t { none, protocol, encr, integ, prf, dh, esn };

const char* mismatch_text(mismatch m, protocol_id protocol)
{
    if (m == mismatch::dh && protocol != protocol_id::ike) {
        return "PFS mismatch: no common DH group for the Child SA (or PFS on one side only)";
    }
    switch (m) {
    case mismatch::protocol: return "the peer proposed another protocol";
    case mismatch::encr: return "no common encryption algorithm";
    case mismatch::integ: return "no common integrity algorithm";
    case mismatch::prf: return "no common PRF";
    case mismatch::dh: return "no common DH group";
    case mismatch::esn: return "ESN setting differs";
    case mismatch::none: break;
    }
    return "no match";
}

// Tries one of our proposals against one of theirs; on failure returns the first type that failed.
mismatch try_match(const config::ike_proposal_config& ours, const proposal& theirs, protocol_id protocol,
                   chosen_transforms& out)
{
    if (theirs.protocol != static_cast<uint8_t>(protocol) || !known_types_only(theirs)) {
        return mismatch::protocol;
    }
    chosen_transforms c;
    auto encr = std::find_if(ours.encryption.begin(), ours.encryption.end(),
                             [&](const config::ike_encr& e) { return has_encr(theirs, e); });
    if (encr == ours.encryption.end()) {
        return mismatch::encr;
    }
    c.encr = encr->id;
    c.key_bits = encr->key_bits;

    auto their_integ = ids_of(theirs, transform_type::integ);
    if (is_aead_encr(c.encr)) {
        // RFC 5282 §8: an AEAD proposal carries no integrity transform, or only NONE.
        if (std::any_of(their_integ.begin(), their_integ.end(), [](uint16_t i) { return i != 0; })) {
            return mismatch::integ;
        }
    } else {
        auto it = std::find_if(ours.integrity.begin(), ours.integrity.end(),
                               [&](uint16_t i) { return contains(their_integ, i); });
        if (it == ours.integrity.end()) {
            return mismatch::integ;
        }
        c.integ = *it;
    }

    if (protocol == protocol_id::ike) {
        auto their_prf = ids_of(theirs, transform_type::prf);
        auto it = std::find_if(ours.prf.begin(), ours.prf.end(), [&](uint16_t p) { return contains(their_prf, p); });
        if (it == ours.prf.end()) {
            return mismatch::prf;
        }
        c.prf = *it;
    }

    auto their_dh = ids_of(theirs, transform_type::dh);
    if (ours.dh.empty()) {
        // No PFS on our side: the peer must not require a group (absent, or NONE offered).
        if (!their_dh.empty() && !contains(their_dh, uint16_t{0})) {
            return mismatch::dh;
        }
        if (protocol == protocol_id::ike) {
            return mismatch::dh; // IKE always needs a group
        }
    } else {
        auto it = std::find_if(ours.dh.begin(), ours.dh.end(), [&](uint16_t g) { return contains(their_dh, g); });
        if (it == ours.dh.end()) {
            return mismatch::dh;
        }
        c.dh = *it;
    }

    if (protocol != protocol_id::ike) {
        auto their_esn = ids_of(theirs, transform_type::esn);
        if (their_esn.empty()) {
            their_esn.push_back(0);
        }
        std::vector<uint16_t> our_esn = ours.esn.empty() ? std::vector<uint16_t>{0} : ours.esn;
        auto it = std::find_if(our_esn.begin(), our_esn.end(), [&](uint16_t e) { return contains(their_esn, e); });
        if (it == our_esn.end()) {
            return mismatch::esn;
        }
        c.esn = *it;
    }
    out = c;
    return mismatch::none;
}

std::string join_ours(const std::vector<config::ike_proposal_config>& ours)
{
    std::string s;
    for (const auto& p : ours) {
        if (!s.empty()) {
            s += ", ";
        }
        s += p.text;
    }
    return s;
}

bool accepts(const config::ike_proposal_config& ours, const chosen_transforms& c, protocol_id protocol)
{
    if (!contains(ours.encryption, config::ike_encr{c.encr, c.key_bits})) {
        return false;
    }
    if (is_aead_encr(c.encr) ? c.integ != 0 : !contains(ours.integrity, c.integ)) {
        return false;
    }
    if (protocol == protocol_id::ike && !contains(ours.prf, c.prf)) {
        return false;
    }
    if (ours.dh.empty() ? c.dh != 0 : !contains(ours.dh, c.dh)) {
        return false;
    }
    if (protocol != protocol_id::ike) {
        std::vector<uint16_t> our_esn = ours.esn.empty() ? std::vector<uint16_t>{0} : ours.esn;
        if (!contains(our_esn, c.esn)) {
            return false;
        }
    }
    return true;
}

} // namespace

proposal to_wire(const config::ike_proposal_config& ours, protocol_id protocol, uint8_t number, const bytes& spi)
{
    proposal p;
    p.number = number;
    p.protocol = static_cast<uint8_t>(protocol);
    p.spi = spi;
    for (const auto& e : ours.encryption) {
        p.transforms.push_back({transform_type::encr, e.id, e.key_bits ? std::optional<uint16_t>(e.key_bits) : std::nullopt});
    }
    if (protocol == protocol_id::ike) {
        for (auto id : ours.prf) {
            p.transforms.push_back({transform_type::prf, id, std::nullopt});
        }
    }
    for (auto id : ours.integrity) {
        p.transforms.push_back({transform_type::integ, id, std::nullopt});
    }
    for (auto id : ours.dh) {
        p.transforms.push_back({transform_type::dh, id, std::nullopt});
    }
    if (protocol != protocol_id::ike) {
        if (ours.esn.empty()) {
            p.transforms.push_back({transform_type::esn, 0, std::nullopt});
        }
        for (auto id : ours.esn) {
            p.transforms.push_back({transform_type::esn, id, std::nullopt});
        }
    }
    return p;
}

std::vector<proposal> to_wire(const std::vector<config::ike_proposal_config>& ours, protocol_id protocol, const bytes& spi)
{
    std::vector<proposal> out;
    uint8_t number = 1;
    for (const auto& p : ours) {
        out.push_back(to_wire(p, protocol, number++, spi));
    }
    return out;
}

proposal to_wire(const chosen_transforms& c, protocol_id protocol, uint8_t number, const bytes& spi)
{
    proposal p;
    p.number = number;
    p.protocol = static_cast<uint8_t>(protocol);
    p.spi = spi;
    p.transforms.push_back({transform_type::encr, c.encr, c.key_bits ? std::optional<uint16_t>(c.key_bits) : std::nullopt});
    if (protocol == protocol_id::ike) {
        p.transforms.push_back({transform_type::prf, c.prf, std::nullopt});
    }
    if (c.integ != 0) {
        p.transforms.push_back({transform_type::integ, c.integ, std::nullopt});
    }
    if (c.dh != 0) {
        p.transforms.push_back({transform_type::dh, c.dh, std::nullopt});
    }
    if (protocol != protocol_id::ike) {
        p.transforms.push_back({transform_type::esn, c.esn, std::nullopt});
    }
    return p;
}

std::optional<selection> select_proposal(const std::vector<config::ike_proposal_config>& ours, const sa_payload& theirs,
                                         protocol_id protocol, std::string& why)
{
    mismatch furthest = mismatch::none;
    for (const auto& mine : ours) {
        for (const auto& offer : theirs.proposals) {
            chosen_transforms c;
            auto m = try_match(mine, offer, protocol, c);
            if (m == mismatch::none) {
                return selection{c, &offer};
            }
            if (static_cast<int>(m) > static_cast<int>(furthest)) {
                furthest = m;
            }
        }
    }
    std::string offered;
    for (const auto& offer : theirs.proposals) {
        if (!offered.empty()) {
            offered += ", ";
        }
        offered += describe(offer);
    }
    why = "peer offered " + (offered.empty() ? std::string("nothing") : offered) + "; we accept " + join_ours(ours) +
          ": " + mismatch_text(furthest == mismatch::none ? mismatch::protocol : furthest, protocol);
    return std::nullopt;
}

std::optional<chosen_transforms> check_reply(const std::vector<config::ike_proposal_config>& ours, const sa_payload& reply,
                                             protocol_id protocol, std::string& why)
{
    if (reply.proposals.size() != 1) {
        why = "the responder answered with " + std::to_string(reply.proposals.size()) + " proposals instead of one";
        return std::nullopt;
    }
    const auto& p = reply.proposals.front();
    if (p.protocol != static_cast<uint8_t>(protocol)) {
        why = "the responder chose another protocol";
        return std::nullopt;
    }
    chosen_transforms c;
    std::array<int, 6> seen{};
    for (const auto& t : p.transforms) {
        auto type = static_cast<uint8_t>(t.type);
        if (type < 1 || type > 5 || ++seen[type] > 1) {
            why = "the responder's choice holds two transforms of one type or an unknown type: " + describe(p);
            return std::nullopt;
        }
        switch (t.type) {
        case transform_type::encr:
            c.encr = t.id;
            c.key_bits = t.key_length.value_or(0);
            break;
        case transform_type::integ: c.integ = t.id; break;
        case transform_type::prf: c.prf = t.id; break;
        case transform_type::dh: c.dh = t.id; break;
        case transform_type::esn: c.esn = t.id; break;
        }
    }
    for (const auto& mine : ours) {
        if (accepts(mine, c, protocol)) {
            return c;
        }
    }
    why = "the responder chose " + describe(p) + ", which we did not offer (" + join_ours(ours) + ")";
    return std::nullopt;
}

std::string transform_name(transform_type type, uint16_t id, std::optional<uint16_t> key_bits)
{
    auto with_bits = [&](std::string base) { return key_bits ? base + "_" + std::to_string(*key_bits) : base; };
    switch (type) {
    case transform_type::encr:
        switch (id) {
        case 3: return "3DES";
        case 12: return with_bits("AES_CBC");
        case 18: return with_bits("AES_GCM_8");
        case 19: return with_bits("AES_GCM_12");
        case 20: return with_bits("AES_GCM_16");
        case 2: return "DES";
        }
        return "ENCR_" + std::to_string(id);
    case transform_type::prf:
        switch (id) {
        case 1: return "PRF_HMAC_MD5";
        case 2: return "PRF_HMAC_SHA1";
        case 5: return "PRF_HMAC_SHA2_256";
        case 6: return "PRF_HMAC_SHA2_384";
        case 7: return "PRF_HMAC_SHA2_512";
        }
        return "PRF_" + std::to_string(id);
    case transform_type::integ:
        switch (id) {
        case 0: return "NONE";
        case 1: return "HMAC_MD5_96";
        case 2: return "HMAC_SHA1_96";
        case 12: return "HMAC_SHA2_256_128";
        case 13: return "HMAC_SHA2_384_192";
        case 14: return "HMAC_SHA2_512_256";
        }
        return "INTEG_" + std::to_string(id);
    case transform_type::dh:
        switch (id) {
        case 0: return "NONE";
        case 1: return "MODP_768";
        case 2: return "MODP_1024";
        case 5: return "MODP_1536";
        case 14: return "MODP_2048";
        case 15: return "MODP_3072";
        case 16: return "MODP_4096";
        case 19: return "ECP_256";
        case 20: return "ECP_384";
        case 21: return "ECP_521";
        case 31: return "CURVE_25519";
        }
        return "DH_" + std::to_string(id);
    case transform_type::esn:
        return id == 1 ? "ESN" : "NO_ESN";
    }
    return std::to_string(id);
}

std::string describe(const proposal& p)
{
    std::string s;
    for (const auto& t : p.transforms) {
        if (!s.empty()) {
            s += "/";
        }
        s += transform_name(t.type, t.id, t.key_length);
    }
    return s;
}

std::string describe(const chosen_transforms& t, protocol_id protocol)
{
    std::string s = transform_name(transform_type::encr, t.encr, t.key_bits ? std::optional<uint16_t>(t.key_bits) : std::nullopt);
    if (t.integ != 0) {
        s += "/" + transform_name(transform_type::integ, t.integ);
    }
    if (protocol == protocol_id::ike) {
        s += "/" + transform_name(transform_type::prf, t.prf);
    }
    if (t.dh != 0) {
        s += "/" + transform_name(transform_type::dh, t.dh);
    }
    if (protocol != protocol_id::ike && t.esn == 1) {
        s += "/ESN";
    }
    return s;
}

std::string dataplane_cipher_name(const chosen_transforms& t)
{
    std::string bits = std::to_string(t.key_bits);
    if (t.encr == 20) {
        return "aes" + bits + "gcm16";
    }
    if (t.encr == 12) {
        return "aes" + bits;
    }
    return "unsupported";
}

std::string dataplane_integ_name(const chosen_transforms& t)
{
    switch (t.integ) {
    case 0: return "none";
    case 2: return "sha1";
    case 12: return "sha256";
    case 13: return "sha384";
    case 14: return "sha512";
    }
    return "unsupported";
}

} // namespace espresso::cp
