// The transform table: names in strongSwan's proposal spelling, sizes from the defining RFCs.
//
// Algorithm choices follow RFC 8221 (ESP/AH algorithm implementation requirements): AES-GCM with a
// 16-octet ICV is the recommended AEAD, AES-CBC with HMAC-SHA2 is the recommended non-AEAD pair,
// HMAC-SHA1-96 is still MUST- and therefore accepted. Legacy transforms are refused with a reason
// rather than reported as unknown, so the operator learns why and what to use instead.
#include "espresso/config/algorithms.h"

#include <array>
#include <cstdio>
#include <cstdlib>

namespace espresso::config {

namespace {

// RFC 4106 §3 (GCM: 8-octet explicit IV, 4-octet salt §8.1, 4-octet payload alignment), RFC 4543 §3
// (GMAC: same layout, no confidentiality), RFC 3602 §2 (CBC: 16-octet IV, 16-octet blocks),
// RFC 2410 (NULL: no IV, RFC 4303 §2.4 4-octet alignment).
constexpr std::array cipher_table{
    cipher_info{"aes128gcm16", cipher_alg::aes_gcm16, 16, 4, 8, 4, 16},
    cipher_info{"aes192gcm16", cipher_alg::aes_gcm16, 24, 4, 8, 4, 16},
    cipher_info{"aes256gcm16", cipher_alg::aes_gcm16, 32, 4, 8, 4, 16},
    cipher_info{"aes128gmac", cipher_alg::aes_gmac, 16, 4, 8, 4, 16},
    cipher_info{"aes192gmac", cipher_alg::aes_gmac, 24, 4, 8, 4, 16},
    cipher_info{"aes256gmac", cipher_alg::aes_gmac, 32, 4, 8, 4, 16},
    cipher_info{"aes128", cipher_alg::aes_cbc, 16, 0, 16, 16, 0},
    cipher_info{"aes192", cipher_alg::aes_cbc, 24, 0, 16, 16, 0},
    cipher_info{"aes256", cipher_alg::aes_cbc, 32, 0, 16, 16, 0},
    cipher_info{"null", cipher_alg::null, 0, 0, 0, 4, 0},
};

// RFC 2404 (HMAC-SHA1-96), RFC 4868 §2.1.1 / §2.6 (HMAC-SHA-256/384/512: key = hash output length,
// ICV = half of it).
constexpr std::array integ_table{
    integ_info{"none", integ_alg::none, 0, 0, 0},
    integ_info{"sha1", integ_alg::hmac_sha1_96, 20, 12, 64},
    integ_info{"sha256", integ_alg::hmac_sha256_128, 32, 16, 64},
    integ_info{"sha384", integ_alg::hmac_sha384_192, 48, 24, 128},
    integ_info{"sha512", integ_alg::hmac_sha512_256, 64, 32, 128},
};

// Kept in the same order as the tables; algorithms_test checks that both lists match.
constexpr std::string_view cipher_name_list =
    "aes128gcm16, aes192gcm16, aes256gcm16, aes128gmac, aes192gmac, aes256gmac, aes128, aes192, "
    "aes256, null";
constexpr std::string_view integ_name_list = "sha1, sha256, sha384, sha512, none";

struct refused_entry {
    std::string_view name;
    bool prefix; // matches every name starting with `name` (blowfish128, cast128, ...)
    std::string_view reason;
};

constexpr std::string_view des_reason =
    "DES has a 56-bit key that can be searched exhaustively and a 64-bit block; RFC 8221 §5 says "
    "MUST NOT; use aes128gcm16 or aes256gcm16";
constexpr std::string_view des3_reason =
    "3DES has a 64-bit block (Sweet32, CVE-2016-2183) and is deprecated by RFC 8221; use "
    "aes128gcm16 or aes256gcm16";
constexpr std::string_view blowfish_reason =
    "Blowfish has a 64-bit block (Sweet32, CVE-2016-2183) and is not listed by RFC 8221; use "
    "aes128gcm16 or aes256gcm16";
constexpr std::string_view cast_reason =
    "CAST-128 has a 64-bit block (Sweet32, CVE-2016-2183) and is not listed by RFC 8221; use "
    "aes128gcm16 or aes256gcm16";
constexpr std::string_view md5_reason =
    "HMAC-MD5 is MUST NOT for IPsec per RFC 8221 §6 (MD5 is broken, RFC 6151); use sha256, or an "
    "AEAD cipher such as aes128gcm16 with integrity none";

constexpr std::array refused_table{
    refused_entry{"des", false, des_reason},
    refused_entry{"desiv32", false, des_reason},
    refused_entry{"desiv64", false, des_reason},
    refused_entry{"3des", false, des3_reason},
    refused_entry{"des3", false, des3_reason},
    refused_entry{"tripledes", false, des3_reason},
    refused_entry{"blowfish", true, blowfish_reason},
    refused_entry{"cast", true, cast_reason},
    refused_entry{"md5", false, md5_reason},
    refused_entry{"md5_128", false, md5_reason},
    refused_entry{"hmac_md5", false, md5_reason},
};

char ascii_lower(char c) noexcept {
    if (c >= 'A' && c <= 'Z') {
        return static_cast<char>(c - 'A' + 'a');
    }
    return c;
}

bool equal_ignoring_case(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) {
        return false;
    }
    for (size_t i = 0; i < a.size(); ++i) {
        if (ascii_lower(a[i]) != ascii_lower(b[i])) {
            return false;
        }
    }
    return true;
}

[[noreturn]] void no_such_transform(const char* what) noexcept {
    // A cipher_alg/integ_alg value that is not in the table is a programming error, never input.
    std::fprintf(stderr, "espresso: internal error: %s not in the transform table\n", what);
    std::abort();
}

} // namespace

std::optional<cipher_info> find_cipher(std::string_view name) noexcept {
    for (const auto& entry : cipher_table) {
        if (entry.name == name) {
            return entry;
        }
    }
    return std::nullopt;
}

std::optional<integ_info> find_integ(std::string_view name) noexcept {
    for (const auto& entry : integ_table) {
        if (entry.name == name) {
            return entry;
        }
    }
    return std::nullopt;
}

std::string_view refused_reason(std::string_view name) noexcept {
    // Case-insensitive: "3DES" deserves the same explanation as "3des".
    for (const auto& entry : refused_table) {
        if (entry.prefix && name.size() >= entry.name.size()) {
            if (equal_ignoring_case(name.substr(0, entry.name.size()), entry.name)) {
                return entry.reason;
            }
        } else if (equal_ignoring_case(name, entry.name)) {
            return entry.reason;
        }
    }
    return {};
}

std::string_view cipher_names() noexcept {
    return cipher_name_list;
}

std::string_view integ_names() noexcept {
    return integ_name_list;
}

const cipher_info& info(cipher_alg alg, uint8_t key_bytes) noexcept {
    for (const auto& entry : cipher_table) {
        // NULL has no key: any key_bytes selects it.
        if (entry.alg == alg && (alg == cipher_alg::null || entry.key_bytes == key_bytes)) {
            return entry;
        }
    }
    no_such_transform("cipher");
}

const integ_info& info(integ_alg alg) noexcept {
    for (const auto& entry : integ_table) {
        if (entry.alg == alg) {
            return entry;
        }
    }
    no_such_transform("integrity algorithm");
}

} // namespace espresso::config
