// Private helpers shared by the IKE crypto sources: owning wrappers for OpenSSL 3 objects, HMAC over
// several buffers, and the one way this library reports an impossible state.
#pragma once

#include <openssl/bn.h>
#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>

namespace espresso::cp::detail {

struct evp_pkey_free_fn {
    void operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
};
struct evp_pkey_ctx_free_fn {
    void operator()(EVP_PKEY_CTX* p) const noexcept { EVP_PKEY_CTX_free(p); }
};
struct evp_cipher_ctx_free_fn {
    void operator()(EVP_CIPHER_CTX* p) const noexcept { EVP_CIPHER_CTX_free(p); }
};
struct evp_mac_ctx_free_fn {
    void operator()(EVP_MAC_CTX* p) const noexcept { EVP_MAC_CTX_free(p); }
};
struct bn_free_fn {
    void operator()(BIGNUM* p) const noexcept { BN_clear_free(p); }
};
struct bn_ctx_free_fn {
    void operator()(BN_CTX* p) const noexcept { BN_CTX_free(p); }
};
using evp_pkey_ptr = std::unique_ptr<EVP_PKEY, evp_pkey_free_fn>;
using evp_pkey_ctx_ptr = std::unique_ptr<EVP_PKEY_CTX, evp_pkey_ctx_free_fn>;
using evp_cipher_ctx_ptr = std::unique_ptr<EVP_CIPHER_CTX, evp_cipher_ctx_free_fn>;
using evp_mac_ctx_ptr = std::unique_ptr<EVP_MAC_CTX, evp_mac_ctx_free_fn>;
using bn_ptr = std::unique_ptr<BIGNUM, bn_free_fn>;
using bn_ctx_ptr = std::unique_ptr<BN_CTX, bn_ctx_free_fn>;

// A broken precondition or an OpenSSL failure that no peer can cause (out of memory, a missing
// default provider). Prints `what` (never key material) to stderr and aborts: the daemon must not
// continue with half-derived keys.
[[noreturn]] void crypto_fatal(const char* what) noexcept;

// HMAC(key, part1 | part2 | ...) with the named digest ("SHA256", ...). `out` must hold the full
// digest; returns the digest size.
size_t hmac(const char* digest, std::span<const uint8_t> key,
            std::initializer_list<std::span<const uint8_t>> parts, std::span<uint8_t> out);

// The largest digest we use (SHA-512).
inline constexpr size_t max_digest_size = 64;

} // namespace espresso::cp::detail
