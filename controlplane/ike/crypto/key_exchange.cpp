// Diffie-Hellman and ECDH for the KE payload (RFC 7296 §1.2, §3.4): MODP groups 14/15/16 (RFC 3526),
// NIST curves 19/20/21 (RFC 5903), Curve25519 31 (RFC 8031), all through EVP_PKEY.
#include "espresso/cp/ike_crypto.h"

#include "openssl_util.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/param_build.h>

#include <algorithm>
#include <array>

namespace espresso::cp {

namespace {

using detail::bn_ctx_ptr;
using detail::bn_ptr;
using detail::evp_pkey_ctx_ptr;
using detail::evp_pkey_ptr;

enum class group_kind { modp, ecp, x25519 };

struct group_info {
    uint16_t id;
    group_kind kind;
    const char* openssl_name; // group name for OSSL_PKEY_PARAM_GROUP_NAME, or the key type for X25519
    const char* ike_name;
    size_t public_size; // KE payload data length
};

// IANA "Transform Type 4 - Key Exchange Method Transform IDs".
constexpr std::array<group_info, 7> groups = {{
    {14, group_kind::modp, "modp_2048", "MODP_2048", 256},
    {15, group_kind::modp, "modp_3072", "MODP_3072", 384},
    {16, group_kind::modp, "modp_4096", "MODP_4096", 512},
    {19, group_kind::ecp, "P-256", "ECP_256", 64},
    {20, group_kind::ecp, "P-384", "ECP_384", 96},
    {21, group_kind::ecp, "P-521", "ECP_521", 132},
    {31, group_kind::x25519, "X25519", "CURVE_25519", 32},
}};

const group_info* find_group(uint16_t id) noexcept
{
    for (const auto& g : groups) {
        if (g.id == id) {
            return &g;
        }
    }
    return nullptr;
}

struct param_bld_free_fn {
    void operator()(OSSL_PARAM_BLD* p) const noexcept { OSSL_PARAM_BLD_free(p); }
};
struct params_free_fn {
    // A private key is pushed as a secure BIGNUM, so the builder keeps it in a block that
    // OSSL_PARAM_free releases with OPENSSL_secure_clear_free (wiped).
    void operator()(OSSL_PARAM* p) const noexcept { OSSL_PARAM_free(p); }
};
struct ec_group_free_fn {
    void operator()(EC_GROUP* p) const noexcept { EC_GROUP_free(p); }
};
struct ec_point_free_fn {
    void operator()(EC_POINT* p) const noexcept { EC_POINT_clear_free(p); }
};
using params_ptr = std::unique_ptr<OSSL_PARAM, params_free_fn>;

// Builds a key of `type` ("DH", "EC") from `group` plus an optional private BIGNUM, public BIGNUM
// (DH) or public octet string (EC). nullptr when OpenSSL refuses the values.
evp_pkey_ptr key_from_data(const char* type, int selection, const char* group, const BIGNUM* priv,
                           const BIGNUM* pub_bn, std::span<const uint8_t> pub_octets)
{
    std::unique_ptr<OSSL_PARAM_BLD, param_bld_free_fn> bld(OSSL_PARAM_BLD_new());
    if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1) {
        return nullptr;
    }
    if (priv != nullptr && OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, priv) != 1) {
        return nullptr;
    }
    if (pub_bn != nullptr && OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, pub_bn) != 1) {
        return nullptr;
    }
    if (!pub_octets.empty() && OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                                                pub_octets.data(), pub_octets.size()) != 1) {
        return nullptr;
    }
    params_ptr params(OSSL_PARAM_BLD_to_param(bld.get()));
    evp_pkey_ctx_ptr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1) {
        return nullptr;
    }
    EVP_PKEY* key = nullptr;
    if (EVP_PKEY_fromdata(ctx.get(), &key, selection, params.get()) != 1) {
        return nullptr;
    }
    return evp_pkey_ptr(key);
}

evp_pkey_ptr generate_key(const char* type, const char* group)
{
    evp_pkey_ctx_ptr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
    if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1) {
        return nullptr;
    }
    if (group != nullptr) {
        std::array<OSSL_PARAM, 2> params = {
            OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, const_cast<char*>(group), 0),
            OSSL_PARAM_construct_end()};
        if (EVP_PKEY_CTX_set_params(ctx.get(), params.data()) != 1) {
            return nullptr;
        }
    }
    EVP_PKEY* key = nullptr;
    if (EVP_PKEY_generate(ctx.get(), &key) != 1) {
        return nullptr;
    }
    return evp_pkey_ptr(key);
}

// g^ir from our key and the peer's; `pad` asks DH for a result as long as the prime (§2.14: g^ir is
// "padded with zeros if necessary to make it the length of the modulus").
std::optional<secret_bytes> derive(EVP_PKEY* own, EVP_PKEY* peer, bool pad, std::string& error)
{
    evp_pkey_ctx_ptr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, own, nullptr));
    if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1) {
        error = "key exchange: cannot set up the derivation";
        return std::nullopt;
    }
    unsigned int pad_on = 1;
    std::array<OSSL_PARAM, 2> pad_params = {OSSL_PARAM_construct_uint(OSSL_EXCHANGE_PARAM_PAD, &pad_on),
                                            OSSL_PARAM_construct_end()};
    if (pad && EVP_PKEY_CTX_set_params(ctx.get(), pad_params.data()) != 1) {
        error = "key exchange: cannot request a padded DH secret";
        return std::nullopt;
    }
    if (EVP_PKEY_derive_set_peer_ex(ctx.get(), peer, 1) != 1) {
        error = "key exchange: peer public value refused";
        return std::nullopt;
    }
    size_t size = 0;
    if (EVP_PKEY_derive(ctx.get(), nullptr, &size) != 1) {
        error = "key exchange: derivation failed";
        return std::nullopt;
    }
    secret_bytes secret(size);
    if (EVP_PKEY_derive(ctx.get(), secret.mutable_view().data(), &size) != 1) {
        error = "key exchange: derivation failed";
        return std::nullopt;
    }
    if (size != secret.size()) {
        secret = secret.slice(0, size);
    }
    return secret;
}

std::string length_error(const group_info& g, size_t got)
{
    return "key exchange: " + std::string(g.ike_name) + " public value has " + std::to_string(got) +
           " bytes, expected " + std::to_string(g.public_size);
}

// ---------------------------------------------------------------------------------------------
// MODP (RFC 3526): public value y = g^x mod p, big-endian, left-padded to the prime's length.

class modp_exchange final : public key_exchange {
public:
    modp_exchange(const group_info& g, evp_pkey_ptr key, bn_ptr prime)
        : group_(g), key_(std::move(key)), prime_(std::move(prime))
    {}

    static std::unique_ptr<key_exchange> make(const group_info& g, evp_pkey_ptr key)
    {
        BIGNUM* p = nullptr;
        if (!key || EVP_PKEY_get_bn_param(key.get(), OSSL_PKEY_PARAM_FFC_P, &p) != 1) {
            return nullptr;
        }
        return std::make_unique<modp_exchange>(g, std::move(key), bn_ptr(p));
    }

    static std::unique_ptr<key_exchange> with_private_key(const group_info& g,
                                                          std::span<const uint8_t> x_bytes)
    {
        // The group parameters first, to compute y = 2^x mod p ourselves: EVP_PKEY_fromdata does not
        // derive the public half from a private DH key.
        evp_pkey_ptr params =
            key_from_data("DH", EVP_PKEY_KEY_PARAMETERS, g.openssl_name, nullptr, nullptr, {});
        BIGNUM* p_raw = nullptr;
        BIGNUM* g_raw = nullptr;
        if (!params || EVP_PKEY_get_bn_param(params.get(), OSSL_PKEY_PARAM_FFC_P, &p_raw) != 1) {
            return nullptr;
        }
        bn_ptr p(p_raw);
        if (EVP_PKEY_get_bn_param(params.get(), OSSL_PKEY_PARAM_FFC_G, &g_raw) != 1) {
            return nullptr;
        }
        bn_ptr gen(g_raw);
        bn_ptr x(BN_secure_new());
        bn_ptr y(BN_new());
        bn_ctx_ptr bn_ctx(BN_CTX_secure_new());
        if (!x || !y || !bn_ctx || x_bytes.empty() ||
            x_bytes.size() > static_cast<size_t>(BN_num_bytes(p.get())) ||
            BN_bin2bn(x_bytes.data(), static_cast<int>(x_bytes.size()), x.get()) == nullptr) {
            return nullptr;
        }
        // 1 < x < p-1
        bn_ptr p_minus_1(BN_dup(p.get()));
        if (!p_minus_1 || BN_sub_word(p_minus_1.get(), 1) != 1 || BN_cmp(x.get(), BN_value_one()) <= 0 ||
            BN_cmp(x.get(), p_minus_1.get()) >= 0) {
            return nullptr;
        }
        BN_set_flags(x.get(), BN_FLG_CONSTTIME);
        if (BN_mod_exp(y.get(), gen.get(), x.get(), p.get(), bn_ctx.get()) != 1) {
            return nullptr;
        }
        return make(g, key_from_data("DH", EVP_PKEY_KEYPAIR, g.openssl_name, x.get(), y.get(), {}));
    }

    uint16_t group() const noexcept override { return group_.id; }
    size_t public_size() const noexcept override { return group_.public_size; }

    bytes public_value() const override
    {
        BIGNUM* y_raw = nullptr;
        if (EVP_PKEY_get_bn_param(key_.get(), OSSL_PKEY_PARAM_PUB_KEY, &y_raw) != 1) {
            detail::crypto_fatal("DH key without a public value");
        }
        bn_ptr y(y_raw);
        bytes out(group_.public_size);
        if (BN_bn2binpad(y.get(), out.data(), static_cast<int>(out.size())) < 0) {
            detail::crypto_fatal("DH public value longer than the prime");
        }
        return out;
    }

    std::optional<secret_bytes> shared_secret(std::span<const uint8_t> peer_public,
                                              std::string& error) override
    {
        if (peer_public.size() != group_.public_size) {
            error = length_error(group_, peer_public.size());
            return std::nullopt;
        }
        bn_ptr y(BN_bin2bn(peer_public.data(), static_cast<int>(peer_public.size()), nullptr));
        bn_ptr p_minus_1(BN_dup(prime_.get()));
        if (!y || !p_minus_1 || BN_sub_word(p_minus_1.get(), 1) != 1) {
            error = "key exchange: out of memory";
            return std::nullopt;
        }
        // RFC 7296 §5.12 / NIST SP 800-56A: 1 < y < p-1 (0, 1 and p-1 give a known shared secret).
        if (BN_cmp(y.get(), BN_value_one()) <= 0 || BN_cmp(y.get(), p_minus_1.get()) >= 0) {
            error = "key exchange: " + std::string(group_.ike_name) + " public value out of range";
            return std::nullopt;
        }
        evp_pkey_ptr peer =
            key_from_data("DH", EVP_PKEY_PUBLIC_KEY, group_.openssl_name, nullptr, y.get(), {});
        if (!peer) {
            error = "key exchange: " + std::string(group_.ike_name) + " public value refused";
            return std::nullopt;
        }
        auto secret = derive(key_.get(), peer.get(), true, error);
        if (secret && secret->size() != group_.public_size) {
            error = "key exchange: DH secret has the wrong length";
            return std::nullopt;
        }
        return secret;
    }

private:
    const group_info& group_;
    evp_pkey_ptr key_;
    bn_ptr prime_;
};

// ---------------------------------------------------------------------------------------------
// ECP (RFC 5903 §7): public value x | y, each the field size, without the point-format octet;
// g^ir is the x coordinate of the shared point.

class ecp_exchange final : public key_exchange {
public:
    ecp_exchange(const group_info& g, evp_pkey_ptr key) : group_(g), key_(std::move(key)) {}

    static std::unique_ptr<key_exchange> with_private_key(const group_info& g,
                                                          std::span<const uint8_t> d_bytes)
    {
        // EVP_PKEY_fromdata keeps an EC private key without its public point: compute Q = d*G.
        std::unique_ptr<EC_GROUP, ec_group_free_fn> curve(
            EC_GROUP_new_by_curve_name(EC_curve_nist2nid(g.openssl_name)));
        bn_ptr d(BN_secure_new());
        bn_ctx_ptr bn_ctx(BN_CTX_secure_new());
        if (!curve || !d || !bn_ctx || d_bytes.empty() || d_bytes.size() > g.public_size / 2 ||
            BN_bin2bn(d_bytes.data(), static_cast<int>(d_bytes.size()), d.get()) == nullptr) {
            return nullptr;
        }
        // 0 < d < n
        const BIGNUM* order = EC_GROUP_get0_order(curve.get());
        if (BN_is_zero(d.get()) || BN_cmp(d.get(), order) >= 0) {
            return nullptr;
        }
        std::unique_ptr<EC_POINT, ec_point_free_fn> q(EC_POINT_new(curve.get()));
        if (!q || EC_POINT_mul(curve.get(), q.get(), d.get(), nullptr, nullptr, bn_ctx.get()) != 1) {
            return nullptr;
        }
        bytes encoded(1 + g.public_size);
        if (EC_POINT_point2oct(curve.get(), q.get(), POINT_CONVERSION_UNCOMPRESSED, encoded.data(),
                               encoded.size(), bn_ctx.get()) != encoded.size()) {
            return nullptr;
        }
        evp_pkey_ptr key = key_from_data("EC", EVP_PKEY_KEYPAIR, g.openssl_name, d.get(), nullptr, encoded);
        if (!key) {
            return nullptr;
        }
        return std::make_unique<ecp_exchange>(g, std::move(key));
    }

    uint16_t group() const noexcept override { return group_.id; }
    size_t public_size() const noexcept override { return group_.public_size; }

    bytes public_value() const override
    {
        std::array<uint8_t, 1 + 132> encoded{};
        size_t size = 0;
        if (EVP_PKEY_get_octet_string_param(key_.get(), OSSL_PKEY_PARAM_PUB_KEY, encoded.data(),
                                            encoded.size(), &size) != 1 ||
            size != 1 + group_.public_size || encoded[0] != POINT_CONVERSION_UNCOMPRESSED) {
            detail::crypto_fatal("EC key without an uncompressed public point");
        }
        return bytes(encoded.begin() + 1, encoded.begin() + static_cast<std::ptrdiff_t>(size));
    }

    std::optional<secret_bytes> shared_secret(std::span<const uint8_t> peer_public,
                                              std::string& error) override
    {
        if (peer_public.size() != group_.public_size) {
            error = length_error(group_, peer_public.size());
            return std::nullopt;
        }
        bytes encoded;
        encoded.reserve(1 + peer_public.size());
        encoded.push_back(POINT_CONVERSION_UNCOMPRESSED);
        encoded.insert(encoded.end(), peer_public.begin(), peer_public.end());
        // Loading decodes the point and refuses one that is not on the curve; the public check then
        // also refuses coordinates >= p and the point at infinity (RFC 5903 §7, SP 800-56A 5.6.2.3).
        evp_pkey_ptr peer =
            key_from_data("EC", EVP_PKEY_PUBLIC_KEY, group_.openssl_name, nullptr, nullptr, encoded);
        if (!peer) {
            error =
                "key exchange: " + std::string(group_.ike_name) + " public value is not a point on the curve";
            return std::nullopt;
        }
        evp_pkey_ctx_ptr check(EVP_PKEY_CTX_new_from_pkey(nullptr, peer.get(), nullptr));
        if (!check || EVP_PKEY_public_check(check.get()) != 1) {
            error =
                "key exchange: " + std::string(group_.ike_name) + " public value fails the public key check";
            return std::nullopt;
        }
        auto secret = derive(key_.get(), peer.get(), false, error);
        if (secret && secret->size() != group_.public_size / 2) {
            error = "key exchange: ECDH secret has the wrong length";
            return std::nullopt;
        }
        return secret;
    }

private:
    const group_info& group_;
    evp_pkey_ptr key_;
};

// ---------------------------------------------------------------------------------------------
// Curve25519 (RFC 8031 §2): 32-byte u-coordinates, little-endian as in RFC 7748.

class x25519_exchange final : public key_exchange {
public:
    x25519_exchange(const group_info& g, evp_pkey_ptr key) : group_(g), key_(std::move(key)) {}

    uint16_t group() const noexcept override { return group_.id; }
    size_t public_size() const noexcept override { return group_.public_size; }

    bytes public_value() const override
    {
        bytes out(group_.public_size);
        size_t size = out.size();
        if (EVP_PKEY_get_raw_public_key(key_.get(), out.data(), &size) != 1 || size != out.size()) {
            detail::crypto_fatal("X25519 key without a public value");
        }
        return out;
    }

    std::optional<secret_bytes> shared_secret(std::span<const uint8_t> peer_public,
                                              std::string& error) override
    {
        if (peer_public.size() != group_.public_size) {
            error = length_error(group_, peer_public.size());
            return std::nullopt;
        }
        evp_pkey_ptr peer(EVP_PKEY_new_raw_public_key_ex(nullptr, "X25519", nullptr, peer_public.data(),
                                                         peer_public.size()));
        if (!peer) {
            error = "key exchange: CURVE_25519 public value refused";
            return std::nullopt;
        }
        // OpenSSL already fails on an all-zero result (a small-order point); check again, RFC 8031 §2.
        auto secret = derive(key_.get(), peer.get(), false, error);
        if (!secret) {
            error = "key exchange: CURVE_25519 public value gives no usable shared secret";
            return std::nullopt;
        }
        static constexpr std::array<uint8_t, 32> zero{};
        if (secret->size() != zero.size() ||
            CRYPTO_memcmp(secret->view().data(), zero.data(), zero.size()) == 0) {
            error = "key exchange: CURVE_25519 shared secret is all zero";
            return std::nullopt;
        }
        return secret;
    }

private:
    const group_info& group_;
    evp_pkey_ptr key_;
};

} // namespace

std::unique_ptr<key_exchange> key_exchange::create(uint16_t group)
{
    const group_info* g = find_group(group);
    if (g == nullptr) {
        return nullptr;
    }
    switch (g->kind) {
    case group_kind::modp:
        return modp_exchange::make(*g, generate_key("DH", g->openssl_name));
    case group_kind::ecp: {
        evp_pkey_ptr key = generate_key("EC", g->openssl_name);
        return key ? std::make_unique<ecp_exchange>(*g, std::move(key)) : nullptr;
    }
    case group_kind::x25519: {
        evp_pkey_ptr key = generate_key("X25519", nullptr);
        return key ? std::make_unique<x25519_exchange>(*g, std::move(key)) : nullptr;
    }
    }
    return nullptr;
}

std::unique_ptr<key_exchange> key_exchange::create_with_private_key(uint16_t group,
                                                                    std::span<const uint8_t> private_key)
{
    const group_info* g = find_group(group);
    if (g == nullptr) {
        return nullptr;
    }
    switch (g->kind) {
    case group_kind::modp:
        return modp_exchange::with_private_key(*g, private_key);
    case group_kind::ecp:
        return ecp_exchange::with_private_key(*g, private_key);
    case group_kind::x25519: {
        if (private_key.size() != 32) {
            return nullptr;
        }
        evp_pkey_ptr key(EVP_PKEY_new_raw_private_key_ex(nullptr, "X25519", nullptr, private_key.data(),
                                                         private_key.size()));
        return key ? std::make_unique<x25519_exchange>(*g, std::move(key)) : nullptr;
    }
    }
    return nullptr;
}

bool is_supported_group(uint16_t group) noexcept { return find_group(group) != nullptr; }

std::string group_name(uint16_t group)
{
    const group_info* g = find_group(group);
    return g != nullptr ? std::string(g->ike_name) : std::to_string(group);
}

} // namespace espresso::cp
