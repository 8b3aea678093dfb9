// The SK payload's protection (RFC 7296 §3.14): AES-CBC with a truncated HMAC, or AES-GCM (RFC 5282).
//
//   aad (IKE header | SK generic header) | IV | ciphertext(payloads | padding | pad length) | ICV
//
// CBC: random 16-byte IV; padding makes payloads + padding + 1 a multiple of 16; the ICV is the
// truncated HMAC over aad | IV | ciphertext (encrypt-then-MAC), checked before anything is decrypted.
// GCM: nonce = salt (last 4 bytes of the encryption keymat) | 8-byte IV (RFC 5282 §3.1); no padding;
// the aad is authenticated, not encrypted (RFC 5282 §5.1).
// The GCM IV comes from the rng: 64 random bits per message. A GCM nonce must never repeat under one
// key; IKE SA keys protect a few thousand messages at most before a rekey, far below the 2^32 messages
// at which random 64-bit IVs get a birthday collision risk worth counting (NIST SP 800-38D §8.3 has
// the bound for random IVs at 2^32 invocations with 96-bit IVs; with 64 random bits the risk after n
// messages is about n^2 / 2^65).
#include "espresso/cp/ike_crypto.h"

#include "openssl_util.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <array>
#include <climits>

namespace espresso::cp {

namespace {

using detail::evp_cipher_ctx_ptr;

constexpr size_t cbc_block = 16;
constexpr size_t cbc_iv_size = 16;
constexpr size_t gcm_iv_size = 8;   // RFC 5282 §3.1
constexpr size_t gcm_salt_size = 4; // RFC 5282 §7.1

struct cipher_free_fn {
    void operator()(EVP_CIPHER* p) const noexcept { EVP_CIPHER_free(p); }
};

// Fetched once per process (explicit fetch: the implicit EVP_aes_*() path refetches on every init).
const EVP_CIPHER* aes_cipher(encr_id encr, uint16_t key_bits)
{
    static const std::array<std::unique_ptr<EVP_CIPHER, cipher_free_fn>, 6> fetched = {
        std::unique_ptr<EVP_CIPHER, cipher_free_fn>(EVP_CIPHER_fetch(nullptr, "AES-128-CBC", nullptr)),
        std::unique_ptr<EVP_CIPHER, cipher_free_fn>(EVP_CIPHER_fetch(nullptr, "AES-192-CBC", nullptr)),
        std::unique_ptr<EVP_CIPHER, cipher_free_fn>(EVP_CIPHER_fetch(nullptr, "AES-256-CBC", nullptr)),
        std::unique_ptr<EVP_CIPHER, cipher_free_fn>(EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr)),
        std::unique_ptr<EVP_CIPHER, cipher_free_fn>(EVP_CIPHER_fetch(nullptr, "AES-192-GCM", nullptr)),
        std::unique_ptr<EVP_CIPHER, cipher_free_fn>(EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr)),
    };
    const size_t size_index = key_bits == 128 ? 0 : key_bits == 192 ? 1 : 2;
    const EVP_CIPHER* cipher = fetched[(is_aead(encr) ? 3 : 0) + size_index].get();
    if (cipher == nullptr) {
        detail::crypto_fatal("AES is not available from the OpenSSL providers");
    }
    return cipher;
}

const char* integ_digest(integ_id id) noexcept
{
    switch (id) {
    case integ_id::hmac_sha1_96:
        return "SHA1";
    case integ_id::hmac_sha2_256_128:
        return "SHA256";
    case integ_id::hmac_sha2_384_192:
        return "SHA384";
    case integ_id::hmac_sha2_512_256:
        return "SHA512";
    case integ_id::none:
        break;
    }
    return nullptr;
}

size_t gcm_icv_size(encr_id id) noexcept
{
    switch (id) {
    case encr_id::aes_gcm_8:
        return 8;
    case encr_id::aes_gcm_12:
        return 12;
    case encr_id::aes_gcm_16:
        return 16;
    case encr_id::aes_cbc:
        break;
    }
    return 0;
}

bool fits_int(size_t n) noexcept { return n <= static_cast<size_t>(INT_MAX); }

} // namespace

std::optional<sk_cipher> sk_cipher::create(encr_id encr, uint16_t key_bits, integ_id integ,
                                           std::span<const uint8_t> encr_key,
                                           std::span<const uint8_t> integ_key)
{
    const size_t keymat = encr_keymat_size(encr, key_bits);
    if (keymat == 0 || encr_key.size() != keymat) {
        return std::nullopt;
    }
    if (is_aead(encr)) {
        // RFC 7296 §3.3.3 / RFC 5282 §8: combined-mode ciphers take no integrity transform.
        if (integ != integ_id::none || !integ_key.empty()) {
            return std::nullopt;
        }
    } else if (integ_digest(integ) == nullptr || integ_key.size() != integ_key_size(integ)) {
        return std::nullopt;
    }
    sk_cipher c;
    c.encr_ = encr;
    c.key_bits_ = key_bits;
    c.integ_ = integ;
    c.encr_key_ = secret_bytes(encr_key);
    c.integ_key_ = secret_bytes(integ_key);
    return c;
}

size_t sk_cipher::iv_size() const noexcept { return is_aead(encr_) ? gcm_iv_size : cbc_iv_size; }

size_t sk_cipher::icv_size() const noexcept
{
    return is_aead(encr_) ? gcm_icv_size(encr_) : integ_icv_size(integ_);
}

size_t sk_cipher::sealed_size(size_t plaintext_size) const noexcept
{
    size_t body = plaintext_size + 1; // + Pad Length
    if (!is_aead(encr_)) {
        body = (body + cbc_block - 1) / cbc_block * cbc_block;
    }
    return iv_size() + body + icv_size();
}

bool sk_cipher::seal(std::span<const uint8_t> aad, std::span<const uint8_t> plaintext, std::span<uint8_t> out,
                     rng& random) const
{
    const size_t total = sealed_size(plaintext.size());
    if (out.size() != total || !fits_int(total) || !fits_int(aad.size())) {
        return false;
    }
    const size_t ivs = iv_size();
    const size_t icvs = icv_size();
    auto iv = out.first(ivs);
    auto body = out.subspan(ivs, total - ivs - icvs);
    auto icv = out.last(icvs);

    // Payloads | Padding (zeros, §3.14 lets the sender choose) | Pad Length, encrypted in place.
    std::copy(plaintext.begin(), plaintext.end(), body.begin());
    const size_t pad = body.size() - plaintext.size() - 1;
    std::fill_n(body.begin() + static_cast<std::ptrdiff_t>(plaintext.size()), pad, uint8_t{0});
    body.back() = static_cast<uint8_t>(pad);
    random.fill(iv);

    evp_cipher_ctx_ptr ctx(EVP_CIPHER_CTX_new());
    if (!ctx) {
        return false;
    }
    const EVP_CIPHER* cipher = aes_cipher(encr_, key_bits_);
    const auto key = encr_key_.view();
    int len = 0;
    if (is_aead(encr_)) {
        std::array<uint8_t, gcm_salt_size + gcm_iv_size> nonce{};
        const size_t aes_key_size = key.size() - gcm_salt_size;
        std::copy_n(key.begin() + static_cast<std::ptrdiff_t>(aes_key_size), gcm_salt_size, nonce.begin());
        std::copy(iv.begin(), iv.end(), nonce.begin() + gcm_salt_size);
        // The default GCM IV length is 12 bytes, our nonce's size.
        if (EVP_EncryptInit_ex2(ctx.get(), cipher, key.data(), nonce.data(), nullptr) != 1 ||
            (!aad.empty() &&
             EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1) ||
            EVP_EncryptUpdate(ctx.get(), body.data(), &len, body.data(), static_cast<int>(body.size())) !=
                1 ||
            EVP_EncryptFinal_ex(ctx.get(), body.data() + len, &len) != 1) {
            return false;
        }
        std::array<OSSL_PARAM, 2> params = {
            OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, icv.data(), icv.size()),
            OSSL_PARAM_construct_end()};
        return EVP_CIPHER_CTX_get_params(ctx.get(), params.data()) == 1;
    }

    if (EVP_EncryptInit_ex2(ctx.get(), cipher, key.data(), iv.data(), nullptr) != 1 ||
        EVP_CIPHER_CTX_set_padding(ctx.get(), 0) != 1 ||
        EVP_EncryptUpdate(ctx.get(), body.data(), &len, body.data(), static_cast<int>(body.size())) != 1 ||
        static_cast<size_t>(len) != body.size() ||
        EVP_EncryptFinal_ex(ctx.get(), body.data() + len, &len) != 1) {
        return false;
    }
    std::array<uint8_t, detail::max_digest_size> mac{};
    detail::hmac(integ_digest(integ_), integ_key_.view(), {aad, iv, body}, mac);
    std::copy_n(mac.begin(), icvs, icv.begin());
    return true;
}

std::optional<bytes> sk_cipher::open(std::span<const uint8_t> aad, std::span<const uint8_t> sealed,
                                     std::string& error) const
{
    const size_t ivs = iv_size();
    const size_t icvs = icv_size();
    // At least the Pad Length byte (one block for CBC).
    const size_t min_body = is_aead(encr_) ? 1 : cbc_block;
    if (sealed.size() < ivs + min_body + icvs) {
        error = "SK payload too short";
        return std::nullopt;
    }
    if (!fits_int(sealed.size()) || !fits_int(aad.size())) {
        error = "SK payload too long";
        return std::nullopt;
    }
    const auto iv = sealed.first(ivs);
    const auto body = sealed.subspan(ivs, sealed.size() - ivs - icvs);
    const auto icv = sealed.last(icvs);
    if (!is_aead(encr_) && body.size() % cbc_block != 0) {
        error = "SK payload not a whole number of cipher blocks";
        return std::nullopt;
    }

    evp_cipher_ctx_ptr ctx(EVP_CIPHER_CTX_new());
    if (!ctx) {
        error = "out of memory";
        return std::nullopt;
    }
    const EVP_CIPHER* cipher = aes_cipher(encr_, key_bits_);
    const auto key = encr_key_.view();
    secret_bytes plain(body.size());
    auto out = plain.mutable_view();
    int len = 0;
    if (is_aead(encr_)) {
        std::array<uint8_t, gcm_salt_size + gcm_iv_size> nonce{};
        const size_t aes_key_size = key.size() - gcm_salt_size;
        std::copy_n(key.begin() + static_cast<std::ptrdiff_t>(aes_key_size), gcm_salt_size, nonce.begin());
        std::copy(iv.begin(), iv.end(), nonce.begin() + gcm_salt_size);
        std::array<uint8_t, 16> tag{};
        std::copy(icv.begin(), icv.end(), tag.begin());
        std::array<OSSL_PARAM, 2> params = {
            OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag.data(), icvs),
            OSSL_PARAM_construct_end()};
        if (EVP_DecryptInit_ex2(ctx.get(), cipher, key.data(), nonce.data(), nullptr) != 1 ||
            (!aad.empty() &&
             EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1) ||
            EVP_DecryptUpdate(ctx.get(), out.data(), &len, body.data(), static_cast<int>(body.size())) != 1 ||
            EVP_CIPHER_CTX_set_params(ctx.get(), params.data()) != 1) {
            error = "SK payload decryption failed";
            return std::nullopt;
        }
        // GCM decrypts before it knows the tag; the plaintext is wiped (secret_bytes) when refused.
        if (EVP_DecryptFinal_ex(ctx.get(), out.data() + len, &len) != 1) {
            error = "SK payload ICV mismatch";
            return std::nullopt;
        }
    } else {
        // Encrypt-then-MAC: check the ICV first, decrypt only what the peer's key authenticated.
        std::array<uint8_t, detail::max_digest_size> mac{};
        detail::hmac(integ_digest(integ_), integ_key_.view(), {aad, iv, body}, mac);
        const bool icv_ok = equal_constant_time(std::span<const uint8_t>(mac.data(), icvs), icv);
        OPENSSL_cleanse(mac.data(), mac.size());
        if (!icv_ok) {
            error = "SK payload ICV mismatch";
            return std::nullopt;
        }
        if (EVP_DecryptInit_ex2(ctx.get(), cipher, key.data(), iv.data(), nullptr) != 1 ||
            EVP_CIPHER_CTX_set_padding(ctx.get(), 0) != 1 ||
            EVP_DecryptUpdate(ctx.get(), out.data(), &len, body.data(), static_cast<int>(body.size())) != 1 ||
            static_cast<size_t>(len) != body.size() ||
            EVP_DecryptFinal_ex(ctx.get(), out.data() + len, &len) != 1) {
            error = "SK payload decryption failed";
            return std::nullopt;
        }
    }
    // §3.14: the Pad Length byte counts the padding before it; it must leave room for itself.
    const size_t pad = out.back();
    if (pad >= out.size()) {
        error = "SK payload pad length too large";
        return std::nullopt;
    }
    const auto payloads = plain.view().first(out.size() - 1 - pad);
    return bytes(payloads.begin(), payloads.end());
}

} // namespace espresso::cp
