// PRFs, prf+ and the IKEv2 key derivations (RFC 7296 §2.13-§2.18), PSK authentication (§2.15),
// transform sizes and the system RNG.
#include "espresso/cp/ike_crypto.h"

#include "openssl_util.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string_view>

namespace espresso::cp {

namespace detail {

void crypto_fatal(const char* what) noexcept
{
    std::fprintf(stderr, "espresso ike crypto: fatal: %s\n", what);
    std::abort();
}

namespace {

EVP_MAC* hmac_algorithm()
{
    // Fetched once; EVP_MAC objects are reference counted and safe to share between threads.
    static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, OSSL_MAC_NAME_HMAC, nullptr);
    if (mac == nullptr) {
        crypto_fatal("HMAC is not available from the OpenSSL providers");
    }
    return mac;
}

} // namespace

// One HMAC context per digest and thread, created once with its digest set: a fresh EVP_MAC_CTX and
// a digest fetch by name for every HMAC were ~14 % of an IKE SA's setup CPU (docs/performance.md). Only
// the key changes per call. After each use the context is re-keyed with the empty key so that no
// ipad/opad state derived from a secret stays behind in it.
EVP_MAC_CTX* hmac_context(const char* digest)
{
    struct slot {
        std::string_view digest;
        evp_mac_ctx_ptr ctx;
    };
    thread_local std::array<slot, 8> slots;
    thread_local size_t used = 0;
    for (size_t i = 0; i < used; ++i) {
        if (slots[i].digest == digest) {
            return slots[i].ctx.get();
        }
    }
    evp_mac_ctx_ptr ctx(EVP_MAC_CTX_new(hmac_algorithm()));
    if (!ctx) {
        crypto_fatal("EVP_MAC_CTX_new failed");
    }
    std::array<OSSL_PARAM, 2> params = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>(digest), 0),
        OSSL_PARAM_construct_end()};
    if (EVP_MAC_CTX_set_params(ctx.get(), params.data()) != 1) {
        crypto_fatal("HMAC: digest not available");
    }
    if (used == slots.size()) {
        crypto_fatal("HMAC: more digests than context slots");
    }
    slots[used] = slot{digest, std::move(ctx)};
    return slots[used++].ctx.get();
}

size_t hmac(const char* digest, std::span<const uint8_t> key,
            std::initializer_list<std::span<const uint8_t>> parts, std::span<uint8_t> out)
{
    EVP_MAC_CTX* ctx = hmac_context(digest);
    // HMAC accepts an empty key, but OpenSSL treats a null pointer as "no key given".
    static const uint8_t empty_key = 0;
    const uint8_t* key_ptr = key.empty() ? &empty_key : key.data();
    if (EVP_MAC_init(ctx, key_ptr, key.size(), nullptr) != 1) {
        crypto_fatal("EVP_MAC_init (HMAC) failed");
    }
    for (auto part : parts) {
        if (!part.empty() && EVP_MAC_update(ctx, part.data(), part.size()) != 1) {
            crypto_fatal("EVP_MAC_update failed");
        }
    }
    size_t written = 0;
    if (EVP_MAC_final(ctx, out.data(), &written, out.size()) != 1) {
        crypto_fatal("EVP_MAC_final failed");
    }
    if (EVP_MAC_init(ctx, &empty_key, 0, nullptr) != 1) {
        crypto_fatal("EVP_MAC_init (HMAC wipe) failed");
    }
    return written;
}

} // namespace detail

namespace {

const char* prf_digest(prf_id id) noexcept
{
    switch (id) {
    case prf_id::hmac_sha1:
        return "SHA1";
    case prf_id::hmac_sha2_256:
        return "SHA256";
    case prf_id::hmac_sha2_384:
        return "SHA384";
    case prf_id::hmac_sha2_512:
        return "SHA512";
    }
    return nullptr;
}

const char* checked_prf_digest(prf_id id) noexcept
{
    const char* digest = prf_digest(id);
    if (digest == nullptr) {
        detail::crypto_fatal("unsupported PRF transform (callers must check is_supported)");
    }
    return digest;
}

// prf(key, parts...) into a fixed buffer; returns the output size.
size_t prf_into(prf_id id, std::span<const uint8_t> key,
                std::initializer_list<std::span<const uint8_t>> parts,
                std::span<uint8_t, detail::max_digest_size> out)
{
    return detail::hmac(checked_prf_digest(id), key, parts, out);
}

std::array<uint8_t, 8> spi_bytes(uint64_t spi) noexcept
{
    std::array<uint8_t, 8> out{};
    for (size_t i = 0; i < 8; ++i) {
        out[i] = static_cast<uint8_t>(spi >> (56 - 8 * i));
    }
    return out;
}

// Ni | Nr | SPIi | SPIr: public values, no need to wipe.
bytes ike_sa_seed(std::span<const uint8_t> ni, std::span<const uint8_t> nr, uint64_t spi_i, uint64_t spi_r)
{
    bytes seed;
    seed.reserve(ni.size() + nr.size() + 16);
    seed.insert(seed.end(), ni.begin(), ni.end());
    seed.insert(seed.end(), nr.begin(), nr.end());
    auto si = spi_bytes(spi_i);
    auto sr = spi_bytes(spi_r);
    seed.insert(seed.end(), si.begin(), si.end());
    seed.insert(seed.end(), sr.begin(), sr.end());
    return seed;
}

// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, seed)   (§2.14)
ike_sa_keys split_ike_sa_keys(const ike_key_sizes& sizes, std::span<const uint8_t> skeyseed,
                              std::span<const uint8_t> seed)
{
    const size_t prf_size = prf_output_size(sizes.prf);
    const size_t total = 3 * prf_size + 2 * sizes.integ_key + 2 * sizes.encr_key;
    secret_bytes keymat = prf_plus(sizes.prf, skeyseed, seed, total);
    ike_sa_keys keys;
    size_t offset = 0;
    auto take = [&](size_t n) {
        secret_bytes part = keymat.slice(offset, n);
        offset += n;
        return part;
    };
    keys.sk_d = take(prf_size);
    keys.sk_ai = take(sizes.integ_key);
    keys.sk_ar = take(sizes.integ_key);
    keys.sk_ei = take(sizes.encr_key);
    keys.sk_er = take(sizes.encr_key);
    keys.sk_pi = take(prf_size);
    keys.sk_pr = take(prf_size);
    return keys;
}

class openssl_rng final : public rng {
public:
    void fill(std::span<uint8_t> out) override
    {
        // RAND_bytes takes an int; IVs and nonces are far below that, but loop to be exact.
        while (!out.empty()) {
            const size_t n = std::min<size_t>(out.size(), std::numeric_limits<int>::max());
            if (RAND_bytes(out.data(), static_cast<int>(n)) != 1) {
                detail::crypto_fatal("RAND_bytes failed: no entropy");
            }
            out = out.subspan(n);
        }
    }
};

} // namespace

bool is_supported(prf_id id) noexcept { return prf_digest(id) != nullptr; }

size_t prf_output_size(prf_id id) noexcept
{
    switch (id) {
    case prf_id::hmac_sha1:
        return 20;
    case prf_id::hmac_sha2_256:
        return 32;
    case prf_id::hmac_sha2_384:
        return 48;
    case prf_id::hmac_sha2_512:
        return 64;
    }
    return 0;
}

// RFC 4868 §2.1 (SHA-2: key = full digest size), RFC 2404 (SHA-1: 160-bit key).
size_t integ_key_size(integ_id id) noexcept
{
    switch (id) {
    case integ_id::none:
        return 0;
    case integ_id::hmac_sha1_96:
        return 20;
    case integ_id::hmac_sha2_256_128:
        return 32;
    case integ_id::hmac_sha2_384_192:
        return 48;
    case integ_id::hmac_sha2_512_256:
        return 64;
    }
    return 0;
}

size_t integ_icv_size(integ_id id) noexcept
{
    switch (id) {
    case integ_id::none:
        return 0;
    case integ_id::hmac_sha1_96:
        return 12;
    case integ_id::hmac_sha2_256_128:
        return 16;
    case integ_id::hmac_sha2_384_192:
        return 24;
    case integ_id::hmac_sha2_512_256:
        return 32;
    }
    return 0;
}

bool is_aead(encr_id id) noexcept
{
    return id == encr_id::aes_gcm_8 || id == encr_id::aes_gcm_12 || id == encr_id::aes_gcm_16;
}

size_t encr_keymat_size(encr_id id, uint16_t key_bits) noexcept
{
    if (key_bits != 128 && key_bits != 192 && key_bits != 256) {
        return 0;
    }
    switch (id) {
    case encr_id::aes_cbc:
        return key_bits / 8u;
    case encr_id::aes_gcm_8:
    case encr_id::aes_gcm_12:
    case encr_id::aes_gcm_16:
        return key_bits / 8u + 4; // RFC 5282 §7.1: 4 bytes of salt after the key
    }
    return 0;
}

bytes prf(prf_id id, std::span<const uint8_t> key, std::span<const uint8_t> data)
{
    std::array<uint8_t, detail::max_digest_size> out{};
    const size_t n = prf_into(id, key, {data}, out);
    bytes result(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n));
    OPENSSL_cleanse(out.data(), out.size());
    return result;
}

// prf+ (K,S) = T1 | T2 | T3 | ...  with T1 = prf (K, S | 0x01), Tn = prf (K, Tn-1 | S | n)   (§2.13)
secret_bytes prf_plus(prf_id id, std::span<const uint8_t> key, std::span<const uint8_t> seed, size_t size)
{
    const size_t block = prf_output_size(id);
    if (block == 0) {
        detail::crypto_fatal("unsupported PRF transform (callers must check is_supported)");
    }
    if (size > 255 * block) {
        // §2.13: the counter is one octet; asking for more is a programming error.
        detail::crypto_fatal("prf+ asked for more than 255 iterations");
    }
    secret_bytes out(size);
    std::array<uint8_t, detail::max_digest_size> t{};
    size_t t_size = 0;
    size_t written = 0;
    for (unsigned counter = 1; written < size; ++counter) {
        const uint8_t n = static_cast<uint8_t>(counter);
        t_size = prf_into(
            id, key, {std::span<const uint8_t>(t.data(), t_size), seed, std::span<const uint8_t>(&n, 1)}, t);
        const size_t chunk = std::min(t_size, size - written);
        std::copy_n(t.begin(), chunk, out.mutable_view().begin() + static_cast<std::ptrdiff_t>(written));
        written += chunk;
    }
    OPENSSL_cleanse(t.data(), t.size());
    return out;
}

ike_sa_keys derive_ike_sa_keys(const ike_key_sizes& sizes, std::span<const uint8_t> ni,
                               std::span<const uint8_t> nr, std::span<const uint8_t> g_ir, uint64_t spi_i,
                               uint64_t spi_r)
{
    // SKEYSEED = prf(Ni | Nr, g^ir)   (§2.14); the nonces are public, only g^ir and SKEYSEED are secret.
    bytes nonces(ni.begin(), ni.end());
    nonces.insert(nonces.end(), nr.begin(), nr.end());
    std::array<uint8_t, detail::max_digest_size> skeyseed{};
    const size_t n = prf_into(sizes.prf, nonces, {g_ir}, skeyseed);
    ike_sa_keys keys = split_ike_sa_keys(sizes, std::span<const uint8_t>(skeyseed.data(), n),
                                         ike_sa_seed(ni, nr, spi_i, spi_r));
    OPENSSL_cleanse(skeyseed.data(), skeyseed.size());
    return keys;
}

ike_sa_keys derive_rekeyed_ike_sa_keys(prf_id old_prf, std::span<const uint8_t> old_sk_d,
                                       const ike_key_sizes& sizes, std::span<const uint8_t> g_ir,
                                       std::span<const uint8_t> ni, std::span<const uint8_t> nr,
                                       uint64_t spi_i, uint64_t spi_r)
{
    // SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) with the old SA's PRF   (§2.18)
    std::array<uint8_t, detail::max_digest_size> skeyseed{};
    const size_t n = prf_into(old_prf, old_sk_d, {g_ir, ni, nr}, skeyseed);
    ike_sa_keys keys = split_ike_sa_keys(sizes, std::span<const uint8_t>(skeyseed.data(), n),
                                         ike_sa_seed(ni, nr, spi_i, spi_r));
    OPENSSL_cleanse(skeyseed.data(), skeyseed.size());
    return keys;
}

secret_bytes derive_child_keymat(prf_id id, std::span<const uint8_t> sk_d,
                                 std::span<const uint8_t> g_ir_or_empty, std::span<const uint8_t> ni,
                                 std::span<const uint8_t> nr, size_t size)
{
    // KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr)   (§2.17); the seed holds g^ir, so it is wiped.
    secret_bytes seed(g_ir_or_empty.size() + ni.size() + nr.size());
    auto it = seed.mutable_view().begin();
    it = std::copy(g_ir_or_empty.begin(), g_ir_or_empty.end(), it);
    it = std::copy(ni.begin(), ni.end(), it);
    std::copy(nr.begin(), nr.end(), it);
    return prf_plus(id, sk_d, seed.view(), size);
}

bytes signed_octets(prf_id id, std::span<const uint8_t> real_message, std::span<const uint8_t> peer_nonce,
                    std::span<const uint8_t> sk_p, std::span<const uint8_t> id_body)
{
    // SignedOctets = RealMessage | Nonce(peer) | prf(SK_p, RestOfIDPayload)   (§2.15)
    bytes maced_id = prf(id, sk_p, id_body);
    bytes out;
    out.reserve(real_message.size() + peer_nonce.size() + maced_id.size());
    out.insert(out.end(), real_message.begin(), real_message.end());
    out.insert(out.end(), peer_nonce.begin(), peer_nonce.end());
    out.insert(out.end(), maced_id.begin(), maced_id.end());
    return out;
}

bytes psk_auth(prf_id id, std::span<const uint8_t> psk, std::span<const uint8_t> signed_octets)
{
    // AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)   (§2.15), pad without NUL.
    static constexpr std::string_view key_pad = "Key Pad for IKEv2";
    const std::span<const uint8_t> pad(reinterpret_cast<const uint8_t*>(key_pad.data()), key_pad.size());
    std::array<uint8_t, detail::max_digest_size> inner{};
    const size_t n = prf_into(id, psk, {pad}, inner);
    bytes auth = prf(id, std::span<const uint8_t>(inner.data(), n), signed_octets);
    OPENSSL_cleanse(inner.data(), inner.size());
    return auth;
}

bool equal_constant_time(std::span<const uint8_t> a, std::span<const uint8_t> b) noexcept
{
    // The lengths are public (transform sizes); only the contents are compared in constant time.
    if (a.size() != b.size()) {
        return false;
    }
    if (a.empty()) {
        return true;
    }
    return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

rng& system_rng()
{
    static openssl_rng instance;
    return instance;
}

} // namespace espresso::cp
