// IKEv2 cryptography over OpenSSL 3: PRFs and prf+ (RFC 7296 §2.13), key derivation (§2.14, §2.17,
// §2.18), Diffie-Hellman / ECDH (RFC 3526, RFC 5903, RFC 8031), the SK payload's encryption and
// integrity (§3.14, RFC 5282 for AES-GCM) and PSK authentication (§2.15).
//
// Nothing here logs, and every object that holds secret bytes wipes them (OPENSSL_cleanse) when it is
// destroyed. Thread safety: objects are not shared between threads; free functions are reentrant.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace espresso::cp {

using bytes = std::vector<uint8_t>;

// A byte vector that is wiped when destroyed or reassigned. Use for every key, secret and g^ir.
class secret_bytes {
public:
    secret_bytes() = default;
    explicit secret_bytes(std::span<const uint8_t> data);
    explicit secret_bytes(size_t size);
    secret_bytes(const secret_bytes& other);
    secret_bytes& operator=(const secret_bytes& other);
    secret_bytes(secret_bytes&& other) noexcept;
    secret_bytes& operator=(secret_bytes&& other) noexcept;
    ~secret_bytes();

    std::span<const uint8_t> view() const noexcept { return {data_.data(), data_.size()}; }
    std::span<uint8_t> mutable_view() noexcept { return {data_.data(), data_.size()}; }
    size_t size() const noexcept { return data_.size(); }
    bool empty() const noexcept { return data_.empty(); }
    // Sub-range copy [offset, offset+size); precondition: in range.
    secret_bytes slice(size_t offset, size_t size) const;

private:
    bytes data_;
};

// IANA "Transform Type 2 - Pseudorandom Function Transform IDs".
enum class prf_id : uint16_t { hmac_sha1 = 2, hmac_sha2_256 = 5, hmac_sha2_384 = 6, hmac_sha2_512 = 7 };
// IANA "Transform Type 3 - Integrity Algorithm Transform IDs".
enum class integ_id : uint16_t { none = 0, hmac_sha1_96 = 2, hmac_sha2_256_128 = 12, hmac_sha2_384_192 = 13, hmac_sha2_512_256 = 14 };
// IANA "Transform Type 1 - Encryption Algorithm Transform IDs" (those we implement).
enum class encr_id : uint16_t { aes_cbc = 12, aes_gcm_8 = 18, aes_gcm_12 = 19, aes_gcm_16 = 20 };

bool is_supported(prf_id id) noexcept;
size_t prf_output_size(prf_id id) noexcept;   // also its preferred key size (§2.13)
size_t integ_key_size(integ_id id) noexcept;  // 0 for none
size_t integ_icv_size(integ_id id) noexcept;
bool is_aead(encr_id id) noexcept;
// Bytes of keying material for the encryption transform: AES key, plus 4 bytes of salt for GCM
// (RFC 5282 §7.1, RFC 4106 §8.1). 0 for an unsupported id or key length.
size_t encr_keymat_size(encr_id id, uint16_t key_bits) noexcept;

// prf(K, S) (§2.13).
bytes prf(prf_id id, std::span<const uint8_t> key, std::span<const uint8_t> data);
// prf+(K, S) = T1 | T2 | ... truncated to `size` bytes (§2.13). At most 255 iterations.
secret_bytes prf_plus(prf_id id, std::span<const uint8_t> key, std::span<const uint8_t> seed, size_t size);

// The seven IKE SA keys (§2.14).
struct ike_sa_keys {
    secret_bytes sk_d, sk_ai, sk_ar, sk_ei, sk_er, sk_pi, sk_pr;
};

struct ike_key_sizes {
    prf_id prf{};
    size_t integ_key = 0; // 0 for AEAD
    size_t encr_key = 0;  // encr_keymat_size (includes GCM salt)
};

// SKEYSEED = prf(Ni | Nr, g^ir); {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
//   = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)                                  (§2.14)
// For the PRFs with a fixed key size (none of ours) §2.14's half-key rule would apply; HMAC takes
// Ni | Nr whole.
ike_sa_keys derive_ike_sa_keys(const ike_key_sizes& sizes, std::span<const uint8_t> ni, std::span<const uint8_t> nr,
                               std::span<const uint8_t> g_ir, uint64_t spi_i, uint64_t spi_r);

// IKE SA rekey (§2.18): SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), using the OLD SA's PRF for
// SKEYSEED and the new SA's PRF for prf+ (`sizes.prf`).
ike_sa_keys derive_rekeyed_ike_sa_keys(prf_id old_prf, std::span<const uint8_t> old_sk_d, const ike_key_sizes& sizes,
                                       std::span<const uint8_t> g_ir, std::span<const uint8_t> ni,
                                       std::span<const uint8_t> nr, uint64_t spi_i, uint64_t spi_r);

// Child SA keying material (§2.17): KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr), `size` bytes.
// Taken in order: encryption key for initiator->responder, its integrity key, then responder->initiator.
secret_bytes derive_child_keymat(prf_id id, std::span<const uint8_t> sk_d, std::span<const uint8_t> g_ir_or_empty,
                                 std::span<const uint8_t> ni, std::span<const uint8_t> nr, size_t size);

// PSK authentication (§2.15):
//   AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets> )
//   SignedOctets = RealMessage | Nonce(peer) | prf(SK_p, RestOfID)
// `real_message` is this side's own IKE_SA_INIT message (as sent, for the signer) or the peer's (for
// the verifier); `peer_nonce` is the other side's nonce; `id_body` is the ID payload body from the ID
// Type byte on (RestOfIDPayload = type | 3 reserved | data).
bytes signed_octets(prf_id id, std::span<const uint8_t> real_message, std::span<const uint8_t> peer_nonce,
                    std::span<const uint8_t> sk_p, std::span<const uint8_t> id_body);
bytes psk_auth(prf_id id, std::span<const uint8_t> psk, std::span<const uint8_t> signed_octets);
// Constant-time comparison for AUTH and ICV checks.
bool equal_constant_time(std::span<const uint8_t> a, std::span<const uint8_t> b) noexcept;

// Random bytes; injected so tests can be deterministic. The default uses RAND_bytes.
class rng {
public:
    virtual ~rng() = default;
    virtual void fill(std::span<uint8_t> out) = 0;
};
rng& system_rng();

// Diffie-Hellman / ECDH for one exchange (§1.2 KE payload, §3.4 encodings):
// MODP 14/15/16 (RFC 3526, public value left-padded to the prime's size), ECP 19/20/21 (RFC 5903 §7:
// x | y, each the field size, no point-format byte), Curve25519 31 (RFC 8031: 32 bytes).
class key_exchange {
public:
    virtual ~key_exchange() = default;
    // nullptr when the group is not supported (is_supported_group()).
    static std::unique_ptr<key_exchange> create(uint16_t group);
    // For tests: a fixed private key (RFC 5903 §8 vectors; big-endian scalar for ECP and MODP,
    // RFC 7748 little-endian scalar for Curve25519). nullptr on an unsupported group or bad key.
    static std::unique_ptr<key_exchange> create_with_private_key(uint16_t group, std::span<const uint8_t> private_key);

    virtual uint16_t group() const noexcept = 0;
    virtual size_t public_size() const noexcept = 0;
    virtual bytes public_value() const = 0;
    // Validates the peer's public value (exact length; MODP: 1 < y < p-1; ECP: point on the curve,
    // not infinity; X25519: not all-zero result) and returns g^ir, or nullopt with `error` set.
    virtual std::optional<secret_bytes> shared_secret(std::span<const uint8_t> peer_public, std::string& error) = 0;
};
bool is_supported_group(uint16_t group) noexcept;
std::string group_name(uint16_t group); // "MODP_2048", "ECP_256", "CURVE_25519", or the number

// One direction of an IKE SA's SK payload protection (§3.14): AES-CBC + HMAC (IV 16 bytes, ICV
// truncated per the integrity transform) or AES-GCM-16 (RFC 5282: 8-byte IV, 16-byte ICV, 4-byte salt
// at the end of the encryption keymat).
class sk_cipher {
public:
    // nullopt when the transform combination or a key length is wrong.
    static std::optional<sk_cipher> create(encr_id encr, uint16_t key_bits, integ_id integ,
                                           std::span<const uint8_t> encr_key, std::span<const uint8_t> integ_key);

    size_t iv_size() const noexcept;
    size_t icv_size() const noexcept;
    // IV | ciphertext (plaintext + padding + Pad Length byte, block aligned for CBC; for GCM padded
    // to a multiple of 4 is not required, RFC 5282 §3 allows no padding) | ICV.
    size_t sealed_size(size_t plaintext_size) const noexcept;
    // `aad` = the message bytes before the IV (header with its final Length, SK generic header);
    // `out` must be sealed_size(plaintext.size()) bytes. Returns false only on an OpenSSL failure.
    bool seal(std::span<const uint8_t> aad, std::span<const uint8_t> plaintext, std::span<uint8_t> out, rng& random) const;
    // Verifies the ICV (constant time) and decrypts; returns the inner payload chain without padding,
    // or nullopt (bad ICV, bad padding, too short). Never says which, to the peer; `error` is for logs.
    std::optional<bytes> open(std::span<const uint8_t> aad, std::span<const uint8_t> sealed, std::string& error) const;

    sk_cipher(const sk_cipher&) = default;
    sk_cipher& operator=(const sk_cipher&) = default;
    sk_cipher(sk_cipher&&) noexcept = default;
    sk_cipher& operator=(sk_cipher&&) noexcept = default;
    ~sk_cipher() = default;

private:
    sk_cipher() = default;
    encr_id encr_{};
    uint16_t key_bits_ = 0;
    integ_id integ_{};
    secret_bytes encr_key_; // AES key (+ salt for GCM)
    secret_bytes integ_key_;
};

} // namespace espresso::cp
