// Diffie-Hellman and ECDH for the KE payload (RFC 7296 §1.2, §3.4): MODP groups 5/14/15/16 (RFC 3526),
// legacy MODP groups 1/2 (RFC 2409 §6.1, §6.2), NIST curves 19/20/21 (RFC 5903), Curve25519 31 (RFC 8031),
// all through EVP_PKEY.
#include "espresso/cp/ike_crypto.h"

#include "openssl_util.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/param_build.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <mutex>

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
    const char* openssl_name; // group name for OSSL_PKEY_PARAM_GROUP_NAME, or the key type for X25519;
                              // null: a MODP group OpenSSL has no name for (rfc2409_prime)
    const char* ike_name;
    size_t public_size; // KE payload data length
    // MODP groups without an OpenSSL 3 named group: OpenSSL's copy of the RFC 2409 prime (g = 2).
    BIGNUM* (*rfc2409_prime)(BIGNUM*) = nullptr;
};

// IANA "Transform Type 4 - Key Exchange Method Transform IDs".
constexpr std::array<group_info, 10> groups = {{
    // Groups 1, 2 (RFC 2409 §6.1, §6.2) and 5 (RFC 3526 §2) only with allow-legacy (RFC 8247 §2.4:
    // MUST NOT for 1, SHOULD NOT for 2 and 5; config/src/ike.cpp refuses them otherwise): old peers'
    // groups. OpenSSL 3 has no named group for RFC 2409's primes (its modp_* names start at 1536), but
    // it keeps the primes themselves (BN_get_rfc2409_prime_768/1024): the domain parameters are built
    // from those with g = 2, not typed in here. Without q: with one OpenSSL 3 takes the parameters for
    // FIPS 186-4 ones and refuses to generate keys for these (L, N) sizes; our range check is the
    // validation these safe primes need (shared_secret).
    {1, group_kind::modp, nullptr, "MODP_768", 96, BN_get_rfc2409_prime_768},
    {2, group_kind::modp, nullptr, "MODP_1024", 128, BN_get_rfc2409_prime_1024},
    {5, group_kind::modp, "modp_1536", "MODP_1536", 192},
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

// ---------------------------------------------------------------------------------------------
// Per-group parameters, built once per process. Building a group is costly in OpenSSL 3 (a keymgmt
// fetch by name, EC_GROUP_new_by_curve_name with its Montgomery contexts, an OSSL_PARAM round trip)
// and used to happen for every IKE SA, twice (our key and the peer's). A parameters-only EVP_PKEY is
// never modified after it is built, and OpenSSL allows concurrent read-only use of an EVP_PKEY
// (keygen from it and EVP_PKEY_copy_parameters only read it; references are atomic): safe for
// ike-load's worker threads. std::call_once makes the first use thread-safe too.

struct group_params {
    evp_pkey_ptr params; // domain parameters only ("DH" or "EC"); null for X25519 or on failure
    bn_ptr prime;        // MODP: p
    bn_ptr p_minus_1;    // MODP: p - 1, the upper bound of the range check
    bn_ptr generator;    // MODP: g
};

evp_pkey_ptr key_from_data(const char* type, int selection, const char* group, const BIGNUM* priv,
                           const BIGNUM* pub_bn, std::span<const uint8_t> pub_octets);
evp_pkey_ptr dh_key_from_prime(const group_info& g, int selection, const BIGNUM* priv, const BIGNUM* pub);

void build_params(const group_info& g, group_params& out)
{
    if (g.kind == group_kind::x25519) {
        return;
    }
    evp_pkey_ptr params = g.rfc2409_prime != nullptr
                              ? dh_key_from_prime(g, EVP_PKEY_KEY_PARAMETERS, nullptr, nullptr)
                              : key_from_data(g.kind == group_kind::modp ? "DH" : "EC", EVP_PKEY_KEY_PARAMETERS,
                                              g.openssl_name, nullptr, nullptr, {});
    if (!params) {
        return;
    }
    if (g.kind == group_kind::modp) {
        BIGNUM* p_raw = nullptr;
        BIGNUM* g_raw = nullptr;
        if (EVP_PKEY_get_bn_param(params.get(), OSSL_PKEY_PARAM_FFC_P, &p_raw) != 1) {
            return;
        }
        bn_ptr p(p_raw);
        if (EVP_PKEY_get_bn_param(params.get(), OSSL_PKEY_PARAM_FFC_G, &g_raw) != 1) {
            return;
        }
        bn_ptr gen(g_raw);
        bn_ptr p_minus_1(BN_dup(p.get()));
        if (!p_minus_1 || BN_sub_word(p_minus_1.get(), 1) != 1) {
            return;
        }
        out.prime = std::move(p);
        out.p_minus_1 = std::move(p_minus_1);
        out.generator = std::move(gen);
    }
    out.params = std::move(params);
}

// Null `params` when OpenSSL cannot build the group (callers then fail like an unsupported group).
const group_params& params_for(const group_info& g)
{
    static std::array<std::once_flag, groups.size()> once;
    static std::array<group_params, groups.size()> cache;
    const auto i = static_cast<size_t>(&g - groups.data());
    std::call_once(once[i], [&] { build_params(g, cache[i]); });
    return cache[i];
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

// The common part of the two below: adds the optional private BIGNUM, public BIGNUM (DH) or public
// octet string (EC) to `bld`, which holds the group already, and builds a key of `type` from it.
// nullptr when OpenSSL refuses the values.
evp_pkey_ptr key_from_builder(OSSL_PARAM_BLD* bld, const char* type, int selection, const BIGNUM* priv,
                              const BIGNUM* pub_bn, std::span<const uint8_t> pub_octets)
{
    if (priv != nullptr && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, priv) != 1) {
        return nullptr;
    }
    if (pub_bn != nullptr && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PUB_KEY, pub_bn) != 1) {
        return nullptr;
    }
    if (!pub_octets.empty() &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub_octets.data(), pub_octets.size()) != 1) {
        return nullptr;
    }
    params_ptr params(OSSL_PARAM_BLD_to_param(bld));
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

// Builds a key of `type` ("DH", "EC") from the named `group` plus an optional private BIGNUM, public
// BIGNUM (DH) or public octet string (EC). nullptr when OpenSSL refuses the values.
evp_pkey_ptr key_from_data(const char* type, int selection, const char* group, const BIGNUM* priv,
                           const BIGNUM* pub_bn, std::span<const uint8_t> pub_octets)
{
    std::unique_ptr<OSSL_PARAM_BLD, param_bld_free_fn> bld(OSSL_PARAM_BLD_new());
    if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1) {
        return nullptr;
    }
    return key_from_builder(bld.get(), type, selection, priv, pub_bn, pub_octets);
}

// A DH key (parameters only, or a key pair) of a MODP group given by its prime (rfc2409_prime): p and
// g = 2 as explicit FFC parameters. nullptr when OpenSSL refuses them.
evp_pkey_ptr dh_key_from_prime(const group_info& g, int selection, const BIGNUM* priv, const BIGNUM* pub)
{
    bn_ptr p(g.rfc2409_prime(nullptr));
    bn_ptr gen(BN_new());
    std::unique_ptr<OSSL_PARAM_BLD, param_bld_free_fn> bld(OSSL_PARAM_BLD_new());
    if (!p || !gen || !bld || BN_set_word(gen.get(), 2) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_FFC_P, p.get()) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_FFC_G, gen.get()) != 1) {
        return nullptr;
    }
    return key_from_builder(bld.get(), "DH", selection, priv, pub, {});
}

// A fresh key pair: from the cached parameters (DH, EC), or of `type` when the group has none (X25519).
evp_pkey_ptr generate_key(const EVP_PKEY* params, const char* type)
{
    evp_pkey_ctx_ptr ctx(params != nullptr
                             ? EVP_PKEY_CTX_new_from_pkey(nullptr, const_cast<EVP_PKEY*>(params), nullptr)
                             : EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
    if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1) {
        return nullptr;
    }
    EVP_PKEY* key = nullptr;
    if (EVP_PKEY_generate(ctx.get(), &key) != 1) {
        return nullptr;
    }
    return evp_pkey_ptr(key);
}

// The peer's public value as a key with our group's parameters, without an OSSL_PARAM_BLD and a
// keymgmt fetch by name: the parameters are copied from the cached key (an EC_GROUP_dup / FFC copy,
// no group rebuild) and the value set as an encoded public key, which OpenSSL decodes with
// EC_KEY_oct2key (the point must be on the curve, its coordinates < p) or ossl_dh_buf2key
// (1 < y < p-1). nullptr when OpenSSL refuses the value.
evp_pkey_ptr peer_key(const EVP_PKEY* params, std::span<const uint8_t> encoded)
{
    evp_pkey_ptr peer(EVP_PKEY_new());
    if (!peer || EVP_PKEY_copy_parameters(peer.get(), params) != 1 ||
        EVP_PKEY_set1_encoded_public_key(peer.get(), encoded.data(), encoded.size()) != 1) {
        return nullptr;
    }
    return peer;
}

// g^ir from our key and the peer's; `pad` asks DH for a result as long as the prime (§2.14: g^ir is
// "padded with zeros if necessary to make it the length of the modulus"). The peer key is NOT validated
// here (EVP_PKEY_derive_set_peer_ex(..., 0)): every caller has already done the check its group needs
// (see shared_secret of each class); OpenSSL's validate=1 would run EVP_PKEY_public_check, i.e. the
// full SP 800-56A validation, once more.
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
    if (EVP_PKEY_derive_set_peer_ex(ctx.get(), peer, 0) != 1) {
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
    modp_exchange(const group_info& g, const group_params& params, evp_pkey_ptr key)
        : group_(g), params_(params), key_(std::move(key))
    {}

    static std::unique_ptr<key_exchange> create(const group_info& g)
    {
        const group_params& params = params_for(g);
        if (!params.params) {
            return nullptr;
        }
        evp_pkey_ptr key = generate_key(params.params.get(), nullptr);
        return key ? std::make_unique<modp_exchange>(g, params, std::move(key)) : nullptr;
    }

    static std::unique_ptr<key_exchange> with_private_key(const group_info& g,
                                                          std::span<const uint8_t> x_bytes)
    {
        // y = 2^x mod p computed here: EVP_PKEY_fromdata does not derive the public half from a
        // private DH key.
        const group_params& params = params_for(g);
        if (!params.params) {
            return nullptr;
        }
        bn_ptr x(BN_secure_new());
        bn_ptr y(BN_new());
        bn_ctx_ptr bn_ctx(BN_CTX_secure_new());
        if (!x || !y || !bn_ctx || x_bytes.empty() ||
            x_bytes.size() > static_cast<size_t>(BN_num_bytes(params.prime.get())) ||
            BN_bin2bn(x_bytes.data(), static_cast<int>(x_bytes.size()), x.get()) == nullptr) {
            return nullptr;
        }
        // 1 < x < p-1
        if (BN_cmp(x.get(), BN_value_one()) <= 0 || BN_cmp(x.get(), params.p_minus_1.get()) >= 0) {
            return nullptr;
        }
        BN_set_flags(x.get(), BN_FLG_CONSTTIME);
        if (BN_mod_exp(y.get(), params.generator.get(), x.get(), params.prime.get(), bn_ctx.get()) != 1) {
            return nullptr;
        }
        evp_pkey_ptr key = g.rfc2409_prime != nullptr
                               ? dh_key_from_prime(g, EVP_PKEY_KEYPAIR, x.get(), y.get())
                               : key_from_data("DH", EVP_PKEY_KEYPAIR, g.openssl_name, x.get(), y.get(), {});
        return key ? std::make_unique<modp_exchange>(g, params, std::move(key)) : nullptr;
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
        if (!y) {
            error = "key exchange: out of memory";
            return std::nullopt;
        }
        // The peer value check, and the only one: 1 < y < p-1 (0, 1 and p-1 give a known shared
        // secret). DO NOT remove it: derive() does not validate again.
        // Why no subgroup test y^q = 1 mod p: RFC 3526's primes (and RFC 2409's) are safe primes p = 2q+1, so once 1
        // and p-1 are excluded y has order q or 2q, and an order-2q value can only reveal the low bit
        // of our exponent, which is ephemeral (one per IKE SA, never reused). RFC 6989 §2, the DH
        // tests that IKEv2 (RFC 7296) requires, asks for nothing more for these groups ("No change is
        // required to IKE implementations that use modular exponential groups, other than a few
        // rarely used so-called DSA groups"; groups 22-24 with small subgroups are not supported
        // here). NIST SP 800-56A Rev. 3 calls this range check the FFC partial public-key validation
        // (§5.6.2.3.2); its full validation (§5.6.2.3.1) adds y^q = 1, a modular exponentiation as
        // long as the derivation itself, which OpenSSL's EVP_PKEY_public_check (validate=1) used to
        // compute here. A FIPS 140 build claiming SP 800-56A would need that test back.
        if (BN_cmp(y.get(), BN_value_one()) <= 0 || BN_cmp(y.get(), params_.p_minus_1.get()) >= 0) {
            error = "key exchange: " + std::string(group_.ike_name) + " public value out of range";
            return std::nullopt;
        }
        // ossl_dh_buf2key does the same range check once more while loading (cheap).
        evp_pkey_ptr peer = peer_key(params_.params.get(), peer_public);
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
    const group_params& params_; // process lifetime (params_for)
    evp_pkey_ptr key_;
};

// ---------------------------------------------------------------------------------------------
// ECP (RFC 5903 §7): public value x | y, each the field size, without the point-format octet;
// g^ir is the x coordinate of the shared point.

class ecp_exchange final : public key_exchange {
public:
    ecp_exchange(const group_info& g, const group_params& params, evp_pkey_ptr key)
        : group_(g), params_(params), key_(std::move(key))
    {}

    static std::unique_ptr<key_exchange> create(const group_info& g)
    {
        const group_params& params = params_for(g);
        if (!params.params) {
            return nullptr;
        }
        evp_pkey_ptr key = generate_key(params.params.get(), nullptr);
        return key ? std::make_unique<ecp_exchange>(g, params, std::move(key)) : nullptr;
    }

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
        const group_params& params = params_for(g);
        if (!key || !params.params) {
            return nullptr;
        }
        return std::make_unique<ecp_exchange>(g, params, std::move(key));
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
        // Loading (EC_KEY_oct2key) decodes the point and refuses coordinates >= p and a point that is
        // not on the curve; the point at infinity has no 65/97/133-byte encoding. The public check
        // then re-checks exactly that (RFC 6989 §2: the recipient MUST check the point is on the
        // curve; SP 800-56A Rev. 3 §5.6.2.3.4, ECC partial public-key validation). It is the quick
        // check on purpose: the full one (§5.6.2.3.3, EVP_PKEY_public_check) adds n*Q = O, a scalar
        // multiplication as costly as the derivation, which proves nothing more on curves of
        // cofactor 1 like P-256/384/521 (every point on the curve other than O has prime order n).
        // derive() does not validate again: the code ran the full check twice per IKE SA before.
        evp_pkey_ptr peer = peer_key(params_.params.get(), encoded);
        if (!peer) {
            error =
                "key exchange: " + std::string(group_.ike_name) + " public value is not a point on the curve";
            return std::nullopt;
        }
        evp_pkey_ctx_ptr check(EVP_PKEY_CTX_new_from_pkey(nullptr, peer.get(), nullptr));
        if (!check || EVP_PKEY_public_check_quick(check.get()) != 1) {
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
    const group_params& params_; // process lifetime (params_for)
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
        // (OpenSSL's public check of an X25519 key only asks that it has a public half: no validate.)
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
        return modp_exchange::create(*g);
    case group_kind::ecp:
        return ecp_exchange::create(*g);
    case group_kind::x25519: {
        evp_pkey_ptr key = generate_key(nullptr, "X25519");
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
