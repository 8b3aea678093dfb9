// strongSwan-style IKE/ESP proposal strings -> IANA transform ids, and IKE identities.
//
// The token spellings are strongSwan's (proposal_keywords.txt), so a proposal copied from a
// swanctl.conf means the same here. The checks after tokenising follow strongSwan 5.9's
// check_proposal() (src/libstrongswan/crypto/proposal/proposal.c), with two deliberate differences
// written beside the code: legacy transforms are refused unless allowed, and ESP with classic
// encryption must name an integrity algorithm.
//
// Transform numbers: IANA "Internet Key Exchange Version 2 (IKEv2) Parameters", Transform Types 1-5
// (RFC 7296 §3.3.2). Requirement levels quoted in the legacy reasons: RFC 8247 (IKEv2) and RFC 8221
// (ESP).
#include "espresso/config/ike.h"

#include <algorithm>
#include <array>

namespace espresso::config {

namespace {

enum class transform_type : uint8_t { encr, integ, prf, dh, esn };

struct token_entry {
    std::string_view token;
    transform_type type;
    uint16_t id;
    uint16_t key_bits; // encryption only
};

// Accepted spellings. Aliases are strongSwan's ("aes" is aes128; "gcm128" is the ICV in bits).
// AES-GCM with 8- or 12-octet ICVs is not offered: the data plane implements the 16-octet ICV only,
// and RFC 8221 §5 / RFC 8247 §2.1 recommend that one.
constexpr std::array token_table{
    token_entry{"aes128", transform_type::encr, ike_encr_aes_cbc, 128},
    token_entry{"aes192", transform_type::encr, ike_encr_aes_cbc, 192},
    token_entry{"aes256", transform_type::encr, ike_encr_aes_cbc, 256},
    token_entry{"aes", transform_type::encr, ike_encr_aes_cbc, 128},
    token_entry{"aes128gcm16", transform_type::encr, ike_encr_aes_gcm16, 128},
    token_entry{"aes192gcm16", transform_type::encr, ike_encr_aes_gcm16, 192},
    token_entry{"aes256gcm16", transform_type::encr, ike_encr_aes_gcm16, 256},
    token_entry{"aes128gcm128", transform_type::encr, ike_encr_aes_gcm16, 128},
    token_entry{"aes192gcm128", transform_type::encr, ike_encr_aes_gcm16, 192},
    token_entry{"aes256gcm128", transform_type::encr, ike_encr_aes_gcm16, 256},
    token_entry{"3des", transform_type::encr, ike_encr_3des, 0},
    token_entry{"des", transform_type::encr, ike_encr_des, 0},
    token_entry{"sha1", transform_type::integ, 2, 0},
    token_entry{"sha", transform_type::integ, 2, 0},
    token_entry{"sha256", transform_type::integ, 12, 0},
    token_entry{"sha2_256", transform_type::integ, 12, 0},
    token_entry{"sha384", transform_type::integ, 13, 0},
    token_entry{"sha2_384", transform_type::integ, 13, 0},
    token_entry{"sha512", transform_type::integ, 14, 0},
    token_entry{"sha2_512", transform_type::integ, 14, 0},
    token_entry{"md5", transform_type::integ, 1, 0},
    token_entry{"prfsha1", transform_type::prf, 2, 0},
    token_entry{"prfsha256", transform_type::prf, 5, 0},
    token_entry{"prfsha384", transform_type::prf, 6, 0},
    token_entry{"prfsha512", transform_type::prf, 7, 0},
    token_entry{"prfmd5", transform_type::prf, 1, 0},
    token_entry{"modp2048", transform_type::dh, 14, 0},
    token_entry{"modp3072", transform_type::dh, 15, 0},
    token_entry{"modp4096", transform_type::dh, 16, 0},
    token_entry{"ecp256", transform_type::dh, 19, 0},
    token_entry{"ecp384", transform_type::dh, 20, 0},
    token_entry{"ecp521", transform_type::dh, 21, 0},
    token_entry{"curve25519", transform_type::dh, 31, 0},
    token_entry{"x25519", transform_type::dh, 31, 0},
    token_entry{"modp768", transform_type::dh, 1, 0},
    token_entry{"modp1024", transform_type::dh, 2, 0},
    token_entry{"modp1536", transform_type::dh, 5, 0},
    token_entry{"modp1024s160", transform_type::dh, 22, 0},
    token_entry{"modp2048s224", transform_type::dh, 23, 0},
    token_entry{"modp2048s256", transform_type::dh, 24, 0},
    token_entry{"esn", transform_type::esn, 1, 0},
    token_entry{"noesn", transform_type::esn, 0, 0},
};

// The lists in error messages: what a proposal may contain, legacy names left out on purpose.
constexpr std::string_view ike_token_list =
    "aes128, aes192, aes256, aes128gcm16, aes192gcm16, aes256gcm16, sha1, sha256, sha384, sha512, "
    "prfsha1, prfsha256, prfsha384, prfsha512, modp2048, modp3072, modp4096, ecp256, ecp384, ecp521, "
    "curve25519";
constexpr std::string_view esp_token_list =
    "aes128, aes192, aes256, aes128gcm16, aes192gcm16, aes256gcm16, sha1, sha256, sha384, sha512, "
    "modp2048, modp3072, modp4096, ecp256, ecp384, ecp521, curve25519, esn, noesn";

struct legacy_entry {
    transform_type type;
    uint16_t id;
    std::string_view reason;  // problem
    std::string_view instead; // the modern replacement, for the fix
};

constexpr std::array legacy_table{
    legacy_entry{
        transform_type::encr, ike_encr_des,
        "DES has a 56-bit key that can be searched exhaustively (RFC 8247 §2.1 and RFC 8221 §5: MUST NOT)",
        "aes256gcm16 or aes256"},
    legacy_entry{
        transform_type::encr, ike_encr_3des,
        "3DES has a 64-bit block open to Sweet32 collisions (CVE-2016-2183); RFC 8221 §5 says SHOULD NOT "
        "and RFC 8247 §2.1 keeps it only as MAY for old peers",
        "aes256gcm16 or aes256"},
    legacy_entry{transform_type::integ, 1, "HMAC-MD5-96 is broken (RFC 8247 §2.3 and RFC 8221 §6: MUST NOT)",
                 "sha256"},
    legacy_entry{transform_type::prf, 1, "PRF-HMAC-MD5 is broken (RFC 8247 §2.2: MUST NOT)", "prfsha256"},
    legacy_entry{transform_type::dh, 1,
                 "the 768-bit MODP group (1) is far too small (RFC 8247 §2.4: MUST NOT)",
                 "modp2048 or ecp256"},
    legacy_entry{transform_type::dh, 2,
                 "the 1024-bit MODP group (2) is too small (RFC 8247 §2.4: SHOULD NOT)",
                 "modp2048 or ecp256"},
    legacy_entry{transform_type::dh, 5,
                 "the 1536-bit MODP group (5) is too small (RFC 8247 §2.4: SHOULD NOT)",
                 "modp2048 or ecp256"},
    legacy_entry{transform_type::dh, 22,
                 "the RFC 5114 group 22 (1024-bit MODP, 160-bit subgroup) is too small and its primes are of "
                 "unexplained origin (RFC 8247 §2.4: SHOULD NOT)",
                 "modp2048 or ecp256"},
    legacy_entry{transform_type::dh, 23,
                 "the RFC 5114 group 23 (2048-bit MODP, 224-bit subgroup) has primes of unexplained origin "
                 "(RFC 8247 §2.4: SHOULD NOT)",
                 "modp2048 or ecp256"},
    legacy_entry{transform_type::dh, 24,
                 "the RFC 5114 group 24 (2048-bit MODP, 256-bit subgroup) has primes of unexplained origin "
                 "(RFC 8247 §2.4: SHOULD NOT)",
                 "modp2048 or ecp256"},
};

// Legacy transforms that allow-legacy accepts in principle but Espresso does not implement: the IKE
// daemon has AES only (crypto/sk_cipher.cpp), HMAC-SHA1/SHA2 only, and no RFC 5114 groups; the data
// plane refuses DES, 3DES and MD5. Refused at load, so a proposal never promises what a negotiation
// cannot deliver. The legacy transforms implemented are the MODP groups 1 and 2 (RFC 2409) and 5
// (RFC 3526), for old peers that offer nothing better.
struct unimplemented_entry {
    transform_type type;
    uint16_t id;
};
constexpr std::array unimplemented_table{
    unimplemented_entry{transform_type::encr, ike_encr_des},  unimplemented_entry{transform_type::encr, ike_encr_3des},
    unimplemented_entry{transform_type::integ, 1},            unimplemented_entry{transform_type::prf, 1},
    unimplemented_entry{transform_type::dh, 22},              unimplemented_entry{transform_type::dh, 23},
    unimplemented_entry{transform_type::dh, 24},
};
constexpr std::string_view implemented_legacy =
    "with allow-legacy: true the only legacy transforms Espresso implements are modp768, modp1024 and "
    "modp1536 (DH groups 1, 2 and 5); "
    "otherwise it supports aes128/192/256 (CBC and GCM), sha1/256/384/512, prfsha1/256/384/512, "
    "modp2048/3072/4096, ecp256/384/521 and curve25519";

bool unimplemented(transform_type type, uint16_t id)
{
    return std::any_of(unimplemented_table.begin(), unimplemented_table.end(),
                       [&](const unimplemented_entry& e) { return e.type == type && e.id == id; });
}

// strongSwan's log names (transform_get_enum_names), so our diagnostics read like its.
struct name_entry {
    transform_type type;
    uint16_t id;
    std::string_view name;
};

constexpr std::array name_table{
    name_entry{transform_type::encr, ike_encr_des, "DES_CBC"},
    name_entry{transform_type::encr, ike_encr_3des, "3DES_CBC"},
    name_entry{transform_type::encr, ike_encr_aes_cbc, "AES_CBC"},
    name_entry{transform_type::encr, ike_encr_aes_gcm8, "AES_GCM_8"},
    name_entry{transform_type::encr, ike_encr_aes_gcm12, "AES_GCM_12"},
    name_entry{transform_type::encr, ike_encr_aes_gcm16, "AES_GCM_16"},
    name_entry{transform_type::integ, 1, "HMAC_MD5_96"},
    name_entry{transform_type::integ, 2, "HMAC_SHA1_96"},
    name_entry{transform_type::integ, 12, "HMAC_SHA2_256_128"},
    name_entry{transform_type::integ, 13, "HMAC_SHA2_384_192"},
    name_entry{transform_type::integ, 14, "HMAC_SHA2_512_256"},
    name_entry{transform_type::prf, 1, "PRF_HMAC_MD5"},
    name_entry{transform_type::prf, 2, "PRF_HMAC_SHA1"},
    name_entry{transform_type::prf, 5, "PRF_HMAC_SHA2_256"},
    name_entry{transform_type::prf, 6, "PRF_HMAC_SHA2_384"},
    name_entry{transform_type::prf, 7, "PRF_HMAC_SHA2_512"},
    name_entry{transform_type::dh, 1, "MODP_768"},
    name_entry{transform_type::dh, 2, "MODP_1024"},
    name_entry{transform_type::dh, 5, "MODP_1536"},
    name_entry{transform_type::dh, 14, "MODP_2048"},
    name_entry{transform_type::dh, 15, "MODP_3072"},
    name_entry{transform_type::dh, 16, "MODP_4096"},
    name_entry{transform_type::dh, 19, "ECP_256"},
    name_entry{transform_type::dh, 20, "ECP_384"},
    name_entry{transform_type::dh, 21, "ECP_521"},
    name_entry{transform_type::dh, 22, "MODP_1024_160"},
    name_entry{transform_type::dh, 23, "MODP_2048_224"},
    name_entry{transform_type::dh, 24, "MODP_2048_256"},
    name_entry{transform_type::dh, 31, "CURVE_25519"},
    name_entry{transform_type::esn, 0, "NO_EXT_SEQ"},
    name_entry{transform_type::esn, 1, "EXT_SEQ"},
};

// RFC 7296 §3.3.2 integrity -> PRF of the same hash (strongSwan's integ_prf_map).
struct integ_prf {
    uint16_t integ;
    uint16_t prf;
};
constexpr std::array integ_prf_map{integ_prf{1, 1}, integ_prf{2, 2}, integ_prf{12, 5}, integ_prf{13, 6},
                                   integ_prf{14, 7}};

std::string_view type_name(transform_type type)
{
    switch (type) {
    case transform_type::encr:
        return "encryption algorithm";
    case transform_type::integ:
        return "integrity algorithm";
    case transform_type::prf:
        return "PRF";
    case transform_type::dh:
        return "DH group";
    case transform_type::esn:
        return "ESN setting";
    }
    return "transform";
}

std::string quoted(std::string_view text)
{
    // Built by appending: GCC 12 reports a false -Wrestrict for "\"" + std::string(...).
    std::string out;
    out.reserve(text.size() + 2);
    out.append(1, '"').append(text).append(1, '"');
    return out;
}

char ascii_lower(char c) noexcept { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

size_t edit_distance(std::string_view a, std::string_view b)
{
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) {
        row[j] = j;
    }
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diagonal = above;
        }
    }
    return row[b.size()];
}

// The accepted token nearest to a typo ("aes257" -> "aes256"), or empty when nothing is close.
std::string_view closest_token(std::string_view word, bool esp)
{
    std::string_view best;
    size_t best_distance = 3; // more than two edits is not a typo
    for (const auto& entry : token_table) {
        const bool legacy = std::any_of(legacy_table.begin(), legacy_table.end(), [&](const legacy_entry& l) {
            return l.type == entry.type && l.id == entry.id;
        });
        if (legacy || (esp && entry.type == transform_type::prf) ||
            (!esp && entry.type == transform_type::esn)) {
            continue;
        }
        const size_t d = edit_distance(word, entry.token);
        if (d < best_distance) {
            best_distance = d;
            best = entry.token;
        }
    }
    return best;
}

const token_entry* find_token(std::string_view token)
{
    for (const auto& entry : token_table) {
        if (entry.token == token) {
            return &entry;
        }
    }
    return nullptr;
}

const legacy_entry* find_legacy(transform_type type, uint16_t id)
{
    for (const auto& entry : legacy_table) {
        if (entry.type == type && entry.id == id) {
            return &entry;
        }
    }
    return nullptr;
}

std::string transform_name(transform_type type, uint16_t id)
{
    for (const auto& entry : name_table) {
        if (entry.type == type && entry.id == id) {
            return std::string(entry.name);
        }
    }
    return "UNKNOWN_" + std::to_string(static_cast<unsigned>(type) + 1) + "_" + std::to_string(id);
}

template <typename T>
bool contains(const std::vector<T>& list, const T& value)
{
    return std::find(list.begin(), list.end(), value) != list.end();
}

} // namespace

bool is_aead(uint16_t encr_id) noexcept
{
    return encr_id == ike_encr_aes_gcm8 || encr_id == ike_encr_aes_gcm12 || encr_id == ike_encr_aes_gcm16;
}

std::string_view ike_proposal_tokens(bool esp) noexcept { return esp ? esp_token_list : ike_token_list; }

std::optional<ike_proposal_config> parse_ike_proposal(std::string_view text, bool esp, bool allow_legacy,
                                                      proposal_error& error)
{
    error = {};
    const std::string_view protocol = esp ? "ESP" : "IKE";
    const std::string accepted = "use " + std::string(ike_proposal_tokens(esp)) + ", joined by '-'";
    auto refuse = [&](std::string problem, std::string fix) -> std::optional<ike_proposal_config> {
        error.problem = std::move(problem);
        error.fix = std::move(fix);
        return std::nullopt;
    };

    ike_proposal_config p;
    p.text = std::string(text);
    if (text.empty()) {
        return refuse("the proposal is empty",
                      esp ? "write e.g. aes256gcm16 or aes256-sha256" : "write e.g. aes256-sha256-modp2048");
    }
    bool any_esn = false;
    size_t start = 0;
    while (start <= text.size()) {
        const size_t dash = text.find('-', start);
        const std::string_view token =
            text.substr(start, dash == std::string_view::npos ? text.npos : dash - start);
        start = dash == std::string_view::npos ? text.size() + 1 : dash + 1;
        if (token.empty()) {
            return refuse("empty transform name in " + quoted(text) + " (two '-' in a row, or one at an end)",
                          "separate the transform names by single '-', e.g. aes256-sha256-modp2048");
        }
        const token_entry* entry = find_token(token);
        if (entry == nullptr) {
            std::string lower(token);
            std::transform(lower.begin(), lower.end(), lower.begin(), ascii_lower);
            if (lower != token && find_token(lower) != nullptr) {
                return refuse("unknown transform " + quoted(token) + "; transform names are lowercase",
                              "write " + quoted(lower));
            }
            const std::string_view suggestion = closest_token(lower, esp);
            return refuse("unknown transform " + quoted(token) + " in " + quoted(text) +
                              "; expected one of: " + std::string(ike_proposal_tokens(esp)),
                          suggestion.empty() ? accepted : "did you mean " + quoted(suggestion) + "?");
        }
        if (esp && entry->type == transform_type::prf) {
            // strongSwan drops PRFs from ESP proposals silently; a PRF there is a sign of a pasted
            // IKE proposal, so say so.
            return refuse("PRF " + quoted(token) +
                              " in an ESP proposal; a PRF is negotiated for the IKE SA only",
                          "remove " + quoted(token) + " from the ESP proposal");
        }
        if (!esp && entry->type == transform_type::esn) {
            return refuse(quoted(token) + " in an IKE proposal; extended sequence numbers apply to ESP only",
                          "remove " + quoted(token) + ", or move it to esp-proposals");
        }
        if (const legacy_entry* legacy = find_legacy(entry->type, entry->id);
            legacy != nullptr && !allow_legacy) {
            error.legacy = true;
            if (unimplemented(entry->type, entry->id)) {
                return refuse("legacy " + std::string(type_name(entry->type)) + " " + quoted(token) +
                                  " refused: " + std::string(legacy->reason) +
                                  "; Espresso does not implement it, even with allow-legacy: true",
                              "use " + std::string(legacy->instead) + " (" + std::string(implemented_legacy) + ")");
            }
            return refuse("legacy " + std::string(type_name(entry->type)) + " " + quoted(token) +
                              " refused: " + std::string(legacy->reason),
                          "use " + std::string(legacy->instead) +
                              ", or set allow-legacy: true on this peer if the peer cannot do better");
        }
        if (unimplemented(entry->type, entry->id)) {
            error.legacy = true;
            return refuse("legacy " + std::string(type_name(entry->type)) + " " + quoted(token) +
                              " is not implemented by Espresso (allow-legacy: true cannot enable it)",
                          std::string(implemented_legacy));
        }
        bool duplicate = false;
        switch (entry->type) {
        case transform_type::encr: {
            const ike_encr encr{entry->id, entry->key_bits};
            duplicate = contains(p.encryption, encr);
            p.encryption.push_back(encr);
            break;
        }
        case transform_type::integ:
            duplicate = contains(p.integrity, entry->id);
            p.integrity.push_back(entry->id);
            break;
        case transform_type::prf:
            duplicate = contains(p.prf, entry->id);
            p.prf.push_back(entry->id);
            break;
        case transform_type::dh:
            duplicate = contains(p.dh, entry->id);
            p.dh.push_back(entry->id);
            break;
        case transform_type::esn:
            duplicate = contains(p.esn, entry->id);
            p.esn.push_back(entry->id);
            any_esn = true;
            break;
        }
        if (duplicate) {
            return refuse(std::string(type_name(entry->type)) + " " + quoted(token) + " appears twice in " +
                              quoted(text) + " (or under two names)",
                          "name each transform once");
        }
    }

    if (p.encryption.empty()) {
        return refuse("no encryption algorithm in " + std::string(protocol) + " proposal " + quoted(text),
                      "start the proposal with one, e.g. aes256gcm16 or aes256");
    }
    const bool any_aead = std::any_of(p.encryption.begin(), p.encryption.end(),
                                      [](const ike_encr& e) { return is_aead(e.id); });
    const bool all_aead = std::all_of(p.encryption.begin(), p.encryption.end(),
                                      [](const ike_encr& e) { return is_aead(e.id); });
    // RFC 7296 §3.3: a proposal with an AEAD cipher must not carry integrity transforms, so the two
    // kinds cannot share one proposal. strongSwan refuses this as well.
    if (any_aead && !all_aead) {
        return refuse("AEAD (gcm16) and non-AEAD encryption mixed in " + std::string(protocol) +
                          " proposal " + quoted(text),
                      "write two proposals, e.g. [aes256gcm16" + std::string(esp ? "" : "-prfsha256-ecp256") +
                          ", aes256-sha256" + std::string(esp ? "" : "-modp2048") + "]");
    }
    if (!esp && p.prf.empty()) {
        // strongSwan check_proposal(): without an explicit PRF, one PRF per integrity algorithm, in order.
        for (const uint16_t integ : p.integrity) {
            for (const auto& m : integ_prf_map) {
                if (m.integ == integ && !contains(p.prf, m.prf)) {
                    p.prf.push_back(m.prf);
                }
            }
        }
    }
    if (all_aead) {
        // strongSwan: "if all encryption algorithms are AEADs, we MUST NOT propose any integrity
        // algorithms" - it drops them after deriving the PRFs above, so "aes256gcm16-sha256-ecp256"
        // means AES_GCM_16_256/PRF_HMAC_SHA2_256/ECP_256, as in strongSwan.
        p.integrity.clear();
    } else if (p.integrity.empty()) {
        // strongSwan requires integrity with classic encryption for IKE only; for ESP we refuse too:
        // encryption without integrity is open to active attacks (RFC 8221 §3, RFC 4303 §3.2).
        return refuse(std::string(protocol) + " proposal " + quoted(text) +
                          " has non-AEAD encryption but no integrity algorithm",
                      esp ? "add one, e.g. aes256-sha256, or use aes256gcm16"
                          : "add one, e.g. aes256-sha256-modp2048, or use aes256gcm16-prfsha256-ecp256");
    }
    if (!esp && p.prf.empty()) {
        // strongSwan: "a PRF algorithm is mandatory in IKE proposals" - an AEAD IKE proposal gets no
        // default PRF.
        return refuse("IKE proposal " + quoted(text) +
                          " has no PRF: an AEAD cipher has no integrity algorithm "
                          "to derive one from",
                      "add one, e.g. aes256gcm16-prfsha256-ecp256");
    }
    if (!esp && p.dh.empty()) {
        // RFC 7296 §1.2: IKE_SA_INIT always performs a Diffie-Hellman exchange.
        return refuse("IKE proposal " + quoted(text) +
                          " has no DH group; IKE_SA_INIT needs one (RFC 7296 §1.2)",
                      "add one at the end, e.g. " + std::string(text) + "-ecp256");
    }
    if (esp && !any_esn) {
        p.esn.push_back(0); // strongSwan: ESN not specified -> not supported
    }
    return p;
}

std::optional<ike_proposal_config> parse_ike_proposal(std::string_view text, bool esp, bool allow_legacy,
                                                      std::string& error)
{
    proposal_error detail;
    auto result = parse_ike_proposal(text, esp, allow_legacy, detail);
    error = result ? std::string() : detail.problem + "; " + detail.fix;
    return result;
}

std::string describe_transforms(const ike_proposal_config& p)
{
    std::string out;
    auto add = [&out](const std::string& name) {
        if (!out.empty()) {
            out += '/';
        }
        out += name;
    };
    for (const auto& e : p.encryption) {
        std::string name = transform_name(transform_type::encr, e.id);
        if (e.key_bits != 0) {
            name.append(1, '_').append(std::to_string(e.key_bits));
        }
        add(name);
    }
    for (const uint16_t id : p.integrity) {
        add(transform_name(transform_type::integ, id));
    }
    for (const uint16_t id : p.prf) {
        add(transform_name(transform_type::prf, id));
    }
    for (const uint16_t id : p.dh) {
        add(transform_name(transform_type::dh, id));
    }
    for (const uint16_t id : p.esn) {
        add(transform_name(transform_type::esn, id));
    }
    return out;
}

ike_identity parse_identity(std::string_view text)
{
    // Same order as strongSwan's identification_create_from_string().
    if (text.empty() || text == "%any") {
        return {ike_id_kind::any, "%any"};
    }
    if (text.find('=') != std::string_view::npos) {
        return {ike_id_kind::dn, std::string(text)};
    }
    if (text.find('@') == std::string_view::npos) {
        if (const auto address = parse_address(text)) {
            return {address->is_v4() ? ike_id_kind::ipv4 : ike_id_kind::ipv6, to_string(*address)};
        }
        return {ike_id_kind::fqdn, std::string(text)};
    }
    if (text.front() == '@') {
        return {ike_id_kind::fqdn, std::string(text.substr(1))};
    }
    return {ike_id_kind::email, std::string(text)};
}

std::string_view to_string(ike_id_kind kind) noexcept
{
    switch (kind) {
    case ike_id_kind::any:
        return "any";
    case ike_id_kind::ipv4:
        return "ipv4";
    case ike_id_kind::ipv6:
        return "ipv6";
    case ike_id_kind::fqdn:
        return "fqdn";
    case ike_id_kind::email:
        return "email";
    case ike_id_kind::dn:
        return "dn";
    }
    return "any";
}

} // namespace espresso::config
