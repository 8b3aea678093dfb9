// HMAC key preparation for IPsec-MB (RFC 2104 §2).
//
// HMAC(K, m) = H((K' ^ opad) || H((K' ^ ipad) || m)), where K' is K padded with zeros to the hash
// block size B, or H(K) padded the same way when K is longer than B. The first block of each inner
// and outer hash depends only on the key, so IPsec-MB takes the hash state after that block
// (`_hashed_auth_key_xor_ipad` / `_opad`) instead of the key; its one-block functions
// (IMB_SHAx_ONE_BLOCK) return exactly that state, in the library's internal word layout.
#include "hmac_keys.h"

#include <string.h> // explicit_bzero

#include <algorithm>
#include <cstring>

namespace espresso::dp {

namespace {

constexpr uint8_t ipad_byte = 0x36; // RFC 2104 §2
constexpr uint8_t opad_byte = 0x5c;
constexpr size_t max_block_bytes = 128;
constexpr size_t max_state_bytes = 64; // SHA-384 keeps SHA-512's 8 x 64-bit state

// Hash block size B: 64 bytes for SHA-1 and SHA-256, 128 for SHA-384 and SHA-512 (FIPS 180-4 §1).
size_t block_bytes(config::integ_alg alg) noexcept
{
    switch (alg) {
    case config::integ_alg::hmac_sha1_96:
    case config::integ_alg::hmac_sha256_128:
        return 64;
    case config::integ_alg::hmac_sha384_192:
    case config::integ_alg::hmac_sha512_256:
        return 128;
    case config::integ_alg::none:
        break;
    }
    return 0;
}

// Bytes of intermediate state the HMAC job reads: the internal state, not the digest (SHA-384's
// state is 64 bytes although its digest is 48).
size_t state_bytes(config::integ_alg alg) noexcept
{
    switch (alg) {
    case config::integ_alg::hmac_sha1_96:
        return 20;
    case config::integ_alg::hmac_sha256_128:
        return 32;
    case config::integ_alg::hmac_sha384_192:
    case config::integ_alg::hmac_sha512_256:
        return 64;
    case config::integ_alg::none:
        break;
    }
    return 0;
}

// Full digest of `len` bytes into `out` (RFC 2104 §2: keys longer than B are hashed first).
void hash_key(IMB_MGR* mgr, config::integ_alg alg, const uint8_t* key, size_t len, uint8_t* out) noexcept
{
    switch (alg) {
    case config::integ_alg::hmac_sha1_96:
        IMB_SHA1(mgr, key, len, out);
        break;
    case config::integ_alg::hmac_sha256_128:
        IMB_SHA256(mgr, key, len, out);
        break;
    case config::integ_alg::hmac_sha384_192:
        IMB_SHA384(mgr, key, len, out);
        break;
    case config::integ_alg::hmac_sha512_256:
        IMB_SHA512(mgr, key, len, out);
        break;
    case config::integ_alg::none:
        break;
    }
}

void hash_one_block(IMB_MGR* mgr, config::integ_alg alg, const uint8_t* block, uint8_t* state) noexcept
{
    switch (alg) {
    case config::integ_alg::hmac_sha1_96:
        IMB_SHA1_ONE_BLOCK(mgr, block, state);
        break;
    case config::integ_alg::hmac_sha256_128:
        IMB_SHA256_ONE_BLOCK(mgr, block, state);
        break;
    case config::integ_alg::hmac_sha384_192:
        IMB_SHA384_ONE_BLOCK(mgr, block, state);
        break;
    case config::integ_alg::hmac_sha512_256:
        IMB_SHA512_ONE_BLOCK(mgr, block, state);
        break;
    case config::integ_alg::none:
        break;
    }
}

} // namespace

IMB_HASH_ALG imb_hash_alg(config::integ_alg alg) noexcept
{
    switch (alg) {
    case config::integ_alg::hmac_sha1_96:
        return IMB_AUTH_HMAC_SHA_1;
    case config::integ_alg::hmac_sha256_128:
        return IMB_AUTH_HMAC_SHA_256;
    case config::integ_alg::hmac_sha384_192:
        return IMB_AUTH_HMAC_SHA_384;
    case config::integ_alg::hmac_sha512_256:
        return IMB_AUTH_HMAC_SHA_512;
    case config::integ_alg::none:
        break;
    }
    return IMB_AUTH_NULL;
}

uint8_t hash_output_bytes(config::integ_alg alg) noexcept
{
    switch (alg) {
    case config::integ_alg::hmac_sha1_96:
        return 20;
    case config::integ_alg::hmac_sha256_128:
        return 32;
    case config::integ_alg::hmac_sha384_192:
        return 48;
    case config::integ_alg::hmac_sha512_256:
        return 64;
    case config::integ_alg::none:
        break;
    }
    return 0;
}

void hmac_precompute(IMB_MGR* mgr, config::integ_alg alg, const uint8_t* key, size_t key_len,
                     uint8_t* ipad_state, uint8_t* opad_state) noexcept
{
    const size_t block = block_bytes(alg);
    const size_t state = state_bytes(alg);
    if (block == 0) {
        return; // no integrity: nothing to prepare
    }

    // K' (RFC 2104 §2 step 1), zero-padded to B.
    alignas(64) uint8_t padded_key[max_block_bytes] = {};
    if (key_len > block) {
        hash_key(mgr, alg, key, key_len, padded_key);
    } else if (key_len != 0) {
        std::memcpy(padded_key, key, key_len);
    }

    // The one-block functions write the whole internal state; go through a local buffer so a caller
    // buffer sized for the state is never overrun, whatever the library's store width.
    alignas(64) uint8_t block_buf[max_block_bytes];
    alignas(64) uint8_t state_buf[max_state_bytes * 2];

    for (size_t i = 0; i < block; ++i) {
        block_buf[i] = padded_key[i] ^ ipad_byte;
    }
    hash_one_block(mgr, alg, block_buf, state_buf);
    std::memcpy(ipad_state, state_buf, state);

    for (size_t i = 0; i < block; ++i) {
        block_buf[i] = padded_key[i] ^ opad_byte;
    }
    hash_one_block(mgr, alg, block_buf, state_buf);
    std::memcpy(opad_state, state_buf, state);

    // Key-derived temporaries must not linger on the stack (explicit_bzero is not elided).
    explicit_bzero(padded_key, sizeof(padded_key));
    explicit_bzero(block_buf, sizeof(block_buf));
    explicit_bzero(state_buf, sizeof(state_buf));
}

} // namespace espresso::dp
