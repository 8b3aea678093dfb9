// Transform names and sizes, in strongSwan's proposal spelling.
//
// This table is the one place that says which algorithms Espresso speaks and how big their keys, IVs,
// blocks and ICVs are. Config validation, the data plane's SA installer and (later) the IKE proposal
// parser all read it; nothing else hard-codes a size.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace espresso::config {

enum class cipher_alg : uint8_t {
    null,      // RFC 2410 ENCR_NULL (integrity only)
    aes_cbc,   // RFC 3602
    aes_gcm16, // RFC 4106, 16-octet ICV, AEAD
    aes_gmac,  // RFC 4543 ENCR_NULL_AUTH_AES_GMAC, integrity only, AEAD-style
};

enum class integ_alg : uint8_t {
    none,            // AEAD transforms carry their own ICV
    hmac_sha1_96,    // RFC 2404
    hmac_sha256_128, // RFC 4868
    hmac_sha384_192, // RFC 4868
    hmac_sha512_256, // RFC 4868
};

struct cipher_info {
    std::string_view name;
    cipher_alg alg;
    uint8_t key_bytes;  // AES key only, without salt
    uint8_t salt_bytes; // RFC 4106 §8.1 / RFC 4543 §3.2: 4 bytes of salt appended to the key
    uint8_t iv_bytes;   // explicit IV carried in each packet
    uint8_t block_bytes;// payload alignment for padding (RFC 4303 §2.4: at least 4)
    uint8_t icv_bytes;  // for AEAD transforms; 0 otherwise
};

struct integ_info {
    std::string_view name;
    integ_alg alg;
    uint8_t key_bytes;   // RFC 4868 §2.1.1: key length equals the hash output length
    uint8_t icv_bytes;   // truncated output
    uint8_t block_bytes; // HMAC block size
};

// Looks up an encryption transform ("aes128gcm16", "aes256", "null", ...). Returns nullopt for names
// we do not know; legacy names (des, 3des, ...) are reported by `refused_reason` instead.
std::optional<cipher_info> find_cipher(std::string_view name) noexcept;
std::optional<integ_info> find_integ(std::string_view name) noexcept;

// Why a well-known but unsafe transform is refused ("des", "3des", "md5", "blowfish", ...), or an
// empty view when the name is not one of those.
std::string_view refused_reason(std::string_view name) noexcept;

// Every accepted name, for error messages ("expected one of: ...").
std::string_view cipher_names() noexcept;
std::string_view integ_names() noexcept;

const cipher_info& info(cipher_alg alg, uint8_t key_bytes) noexcept;
const integ_info& info(integ_alg alg) noexcept;

} // namespace espresso::config
