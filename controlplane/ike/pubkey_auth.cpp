// Certificate authentication for IKE_AUTH (pubkey_auth.h): RFC 7296 §2.15, §3.6-§3.8, RFC 7427, RFC 4754.
#include "pubkey_auth.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <strings.h>

#include <algorithm>
#include <cctype>
#include <ctime>

namespace espresso::cp {
namespace {

template <auto Free>
struct openssl_deleter {
    template <typename T>
    void operator()(T* p) const noexcept
    {
        Free(p);
    }
};
using x509_ptr = std::unique_ptr<X509, openssl_deleter<X509_free>>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, openssl_deleter<EVP_PKEY_free>>;
using store_ptr = std::unique_ptr<X509_STORE, openssl_deleter<X509_STORE_free>>;
using store_ctx_ptr = std::unique_ptr<X509_STORE_CTX, openssl_deleter<X509_STORE_CTX_free>>;
using bio_ptr = std::unique_ptr<BIO, openssl_deleter<BIO_free>>;
using md_ctx_ptr = std::unique_ptr<EVP_MD_CTX, openssl_deleter<EVP_MD_CTX_free>>;
using algor_ptr = std::unique_ptr<X509_ALGOR, openssl_deleter<X509_ALGOR_free>>;
using name_ptr = std::unique_ptr<X509_NAME, openssl_deleter<X509_NAME_free>>;
using general_names_ptr = std::unique_ptr<GENERAL_NAMES, openssl_deleter<GENERAL_NAMES_free>>;
using pss_params_ptr = std::unique_ptr<RSA_PSS_PARAMS, openssl_deleter<RSA_PSS_PARAMS_free>>;
using ecdsa_sig_ptr = std::unique_ptr<ECDSA_SIG, openssl_deleter<ECDSA_SIG_free>>;
using bignum_ptr = std::unique_ptr<BIGNUM, openssl_deleter<BN_free>>;

void free_x509_stack(STACK_OF(X509) * s) noexcept { sk_X509_pop_free(s, X509_free); }
using x509_stack_ptr = std::unique_ptr<STACK_OF(X509), openssl_deleter<free_x509_stack>>;

constexpr size_t min_rsa_bits = 2048; // RFC 8247 §3.2 / NIST SP 800-131A

// The key types we sign and verify with.
enum class key_kind { rsa, rsa_pss, ec_p256, ec_p384, ec_p521, unsupported };

key_kind kind_of(EVP_PKEY* key)
{
    switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_RSA:
        return key_kind::rsa;
    case EVP_PKEY_RSA_PSS:
        return key_kind::rsa_pss;
    case EVP_PKEY_EC: {
        char group[64] = {};
        size_t len = 0;
        if (EVP_PKEY_get_group_name(key, group, sizeof(group), &len) != 1) {
            return key_kind::unsupported;
        }
        std::string g(group, len);
        if (g == "prime256v1" || g == "P-256") {
            return key_kind::ec_p256;
        }
        if (g == "secp384r1" || g == "P-384") {
            return key_kind::ec_p384;
        }
        if (g == "secp521r1" || g == "P-521") {
            return key_kind::ec_p521;
        }
        return key_kind::unsupported;
    }
    default:
        return key_kind::unsupported;
    }
}

bool is_rsa(key_kind k) { return k == key_kind::rsa || k == key_kind::rsa_pss; }

// "RSA 2048-bit", "ECDSA P-256", or the OpenSSL type name, for error messages.
std::string describe_key(EVP_PKEY* key)
{
    switch (kind_of(key)) {
    case key_kind::rsa:
        return "RSA " + std::to_string(EVP_PKEY_get_bits(key)) + "-bit";
    case key_kind::rsa_pss:
        return "RSA-PSS " + std::to_string(EVP_PKEY_get_bits(key)) + "-bit";
    case key_kind::ec_p256:
        return "ECDSA P-256";
    case key_kind::ec_p384:
        return "ECDSA P-384";
    case key_kind::ec_p521:
        return "ECDSA P-521";
    case key_kind::unsupported:
        break;
    }
    const char* name = EVP_PKEY_get0_type_name(key);
    if (EVP_PKEY_get_base_id(key) == EVP_PKEY_EC) {
        char group[64] = {};
        size_t len = 0;
        EVP_PKEY_get_group_name(key, group, sizeof(group), &len);
        return std::string("EC on curve ") + std::string(group, len);
    }
    return name != nullptr ? name : "unknown";
}

// Empty when the key is one we use; otherwise why not.
std::string key_problem(EVP_PKEY* key)
{
    key_kind k = kind_of(key);
    if (k == key_kind::unsupported) {
        return "a " + describe_key(key) +
               " key is not supported (RSA >= 2048 bits or ECDSA P-256/P-384/P-521)";
    }
    if (is_rsa(k) && static_cast<size_t>(EVP_PKEY_get_bits(key)) < min_rsa_bits) {
        return "a " + describe_key(key) + " key is too short (RSA needs at least 2048 bits, RFC 8247)";
    }
    return {};
}

std::string openssl_error()
{
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (e == 0) {
        return "unknown OpenSSL error";
    }
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    return buf;
}

bytes to_der(X509* cert)
{
    int n = i2d_X509(cert, nullptr);
    if (n <= 0) {
        return {};
    }
    bytes out(static_cast<size_t>(n));
    unsigned char* p = out.data();
    i2d_X509(cert, &p);
    return out;
}

bytes name_der(const X509_NAME* name)
{
    int n = i2d_X509_NAME(name, nullptr);
    if (n <= 0) {
        return {};
    }
    bytes out(static_cast<size_t>(n));
    unsigned char* p = out.data();
    i2d_X509_NAME(name, &p);
    return out;
}

// "C=CH, O=Espresso, CN=hq" (strongSwan's spelling).
std::string name_text(const X509_NAME* name)
{
    bio_ptr bio(BIO_new(BIO_s_mem()));
    if (!bio || name == nullptr) {
        return "?";
    }
    unsigned long flags =
        (XN_FLAG_ONELINE & ~XN_FLAG_SPC_EQ & ~ASN1_STRFLGS_ESC_MSB) | ASN1_STRFLGS_UTF8_CONVERT;
    X509_NAME_print_ex(bio.get(), name, 0, flags);
    char* data = nullptr;
    long len = BIO_get_mem_data(bio.get(), &data);
    return len > 0 ? std::string(data, static_cast<size_t>(len)) : std::string();
}

std::string time_text(const ASN1_TIME* t)
{
    std::tm tm{};
    if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) {
        return "(unreadable date)";
    }
    char buf[40];
    std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
    return buf;
}

// Certificates in a file: PEM (any number), or one DER certificate (strongSwan's pki writes DER).
std::vector<x509_ptr> read_certificates(const std::string& path, std::string& error)
{
    std::vector<x509_ptr> certs;
    bio_ptr bio(BIO_new_file(path.c_str(), "rb"));
    if (!bio) {
        error = "cannot open " + path + ": " + openssl_error();
        return certs;
    }
    while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
        certs.emplace_back(c);
    }
    ERR_clear_error(); // the loop ends on "no start line"
    if (certs.empty()) {
        BIO_reset(bio.get());
        if (X509* c = d2i_X509_bio(bio.get(), nullptr)) {
            certs.emplace_back(c);
        }
        ERR_clear_error();
    }
    if (certs.empty()) {
        error = path + " holds no certificate (PEM \"BEGIN CERTIFICATE\" or DER expected)";
    }
    return certs;
}

// PEM password callback: never prompt (the daemon has no terminal); remember that it was asked.
int no_passphrase(char*, int, int, void* asked)
{
    *static_cast<bool*>(asked) = true;
    return -1;
}

pkey_ptr read_private_key(const std::string& path, std::string& error)
{
    bio_ptr bio(BIO_new_file(path.c_str(), "rb"));
    if (!bio) {
        error = "cannot open " + path + ": " + openssl_error();
        return nullptr;
    }
    bool asked = false;
    pkey_ptr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, &asked));
    if (!key && !asked) {
        BIO_reset(bio.get());
        key.reset(d2i_PrivateKey_bio(bio.get(), nullptr));
    }
    ERR_clear_error();
    if (!key) {
        error =
            asked
                ? "the private key in " + path +
                      " is encrypted; the daemon cannot ask for a passphrase (store it unencrypted with mode "
                      "0600: openssl pkey -in <encrypted> -out " +
                      path + ")"
                : path + " holds no private key (PEM or DER, PKCS#8 or traditional RSA/EC expected)";
    }
    return key;
}

const EVP_MD* md_of(signature_hash h)
{
    switch (h) {
    case signature_hash::sha1:
        return EVP_sha1();
    case signature_hash::sha2_256:
        return EVP_sha256();
    case signature_hash::sha2_384:
        return EVP_sha384();
    case signature_hash::sha2_512:
        return EVP_sha512();
    }
    return nullptr;
}

std::optional<signature_hash> hash_of_nid(int nid)
{
    switch (nid) {
    case NID_sha1:
        return signature_hash::sha1;
    case NID_sha256:
        return signature_hash::sha2_256;
    case NID_sha384:
        return signature_hash::sha2_384;
    case NID_sha512:
        return signature_hash::sha2_512;
    default:
        return std::nullopt;
    }
}

std::string oid_text(const ASN1_OBJECT* obj)
{
    char buf[128];
    int n = OBJ_obj2txt(buf, sizeof(buf), obj, 0);
    return n > 0 ? std::string(buf, std::min<size_t>(static_cast<size_t>(n), sizeof(buf) - 1)) : "?";
}

// RSASSA-PSS parameters (RFC 4055 §3.1) from an AlgorithmIdentifier.
struct pss_parameters {
    int hash_nid = NID_sha1; // defaults of RFC 4055: SHA-1, MGF1 with SHA-1, salt 20
    int mgf1_hash_nid = NID_sha1;
    int salt_length = 20;
};

std::optional<pss_parameters> parse_pss(const X509_ALGOR* alg, std::string& why)
{
    pss_parameters out;
    const ASN1_TYPE* param = alg->parameter;
    if (param == nullptr || param->type == V_ASN1_NULL) {
        return out; // all defaults (RFC 7427 Appendix A.4.1)
    }
    if (param->type != V_ASN1_SEQUENCE) {
        why = "the peer's RSASSA-PSS AlgorithmIdentifier has malformed parameters";
        return std::nullopt;
    }
    pss_params_ptr pss(
        static_cast<RSA_PSS_PARAMS*>(ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(RSA_PSS_PARAMS), param)));
    if (!pss) {
        ERR_clear_error();
        why = "the peer's RSASSA-PSS AlgorithmIdentifier has malformed parameters";
        return std::nullopt;
    }
    if (pss->hashAlgorithm != nullptr) {
        out.hash_nid = OBJ_obj2nid(pss->hashAlgorithm->algorithm);
    }
    if (pss->maskGenAlgorithm != nullptr) {
        if (OBJ_obj2nid(pss->maskGenAlgorithm->algorithm) != NID_mgf1) {
            why = "the peer's RSASSA-PSS signature uses mask generation " +
                  oid_text(pss->maskGenAlgorithm->algorithm) + " (only MGF1 is supported)";
            return std::nullopt;
        }
        algor_ptr mgf_hash(static_cast<X509_ALGOR*>(
            ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(X509_ALGOR), pss->maskGenAlgorithm->parameter)));
        if (!mgf_hash) {
            ERR_clear_error();
            why = "the peer's RSASSA-PSS MGF1 parameters are malformed";
            return std::nullopt;
        }
        out.mgf1_hash_nid = OBJ_obj2nid(mgf_hash->algorithm);
    }
    if (pss->saltLength != nullptr) {
        long salt = ASN1_INTEGER_get(pss->saltLength);
        if (salt < 0 || salt > 1024) {
            why = "the peer's RSASSA-PSS salt length is invalid";
            return std::nullopt;
        }
        out.salt_length = static_cast<int>(salt);
    }
    if (pss->trailerField != nullptr && ASN1_INTEGER_get(pss->trailerField) != 1) {
        why = "the peer's RSASSA-PSS trailer field is not 1";
        return std::nullopt;
    }
    return out;
}

// One verification with EVP; `pss` set for RSASSA-PSS.
bool verify_signature(EVP_PKEY* key, const EVP_MD* md, const pss_parameters* pss,
                      std::span<const uint8_t> data, std::span<const uint8_t> signature)
{
    md_ctx_ptr ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;
    if (!ctx || EVP_DigestVerifyInit(ctx.get(), &pctx, md, nullptr, key) != 1) {
        ERR_clear_error();
        return false;
    }
    if (pss != nullptr) {
        const EVP_MD* mgf = EVP_get_digestbynid(pss->mgf1_hash_nid);
        if (mgf == nullptr || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, pss->salt_length) != 1 ||
            EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, mgf) != 1) {
            ERR_clear_error();
            return false;
        }
    } else if (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA) {
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING);
    }
    int ok = EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), data.data(), data.size());
    ERR_clear_error();
    return ok == 1;
}

// RFC 4754 §7: r | s, each the curve's field size, to the DER Ecdsa-Sig-Value OpenSSL verifies.
std::optional<bytes> ecdsa_raw_to_der(std::span<const uint8_t> raw)
{
    size_t half = raw.size() / 2;
    bignum_ptr r(BN_bin2bn(raw.data(), static_cast<int>(half), nullptr));
    bignum_ptr s(BN_bin2bn(raw.data() + half, static_cast<int>(half), nullptr));
    ecdsa_sig_ptr sig(ECDSA_SIG_new());
    if (!r || !s || !sig || ECDSA_SIG_set0(sig.get(), r.get(), s.get()) != 1) {
        return std::nullopt;
    }
    r.release();
    s.release();
    int n = i2d_ECDSA_SIG(sig.get(), nullptr);
    if (n <= 0) {
        return std::nullopt;
    }
    bytes der(static_cast<size_t>(n));
    unsigned char* p = der.data();
    i2d_ECDSA_SIG(sig.get(), &p);
    return der;
}

std::string lower(std::string s)
{
    for (auto& c : s) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return s;
}

std::string ia5_text(const ASN1_IA5STRING* s)
{
    return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                       static_cast<size_t>(ASN1_STRING_length(s)));
}

std::string ip_text(std::span<const uint8_t> ip)
{
    char buf[INET6_ADDRSTRLEN] = {};
    if (ip.size() == 4) {
        inet_ntop(AF_INET, ip.data(), buf, sizeof(buf));
    } else if (ip.size() == 16) {
        inet_ntop(AF_INET6, ip.data(), buf, sizeof(buf));
    } else {
        return "(IP of " + std::to_string(ip.size()) + " bytes)";
    }
    return buf;
}

// The identity as the operator would write it.
std::string id_text(const id_payload& id)
{
    switch (static_cast<id_type>(id.type)) {
    case id_type::ipv4_addr:
    case id_type::ipv6_addr:
        return ip_text(id.data);
    case id_type::fqdn:
    case id_type::rfc822_addr:
    case id_type::key_id: {
        std::string s;
        for (uint8_t c : id.data) {
            s += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
        }
        return s;
    }
    case id_type::der_asn1_dn: {
        const unsigned char* p = id.data.data();
        name_ptr name(d2i_X509_NAME(nullptr, &p, static_cast<long>(id.data.size())));
        ERR_clear_error();
        return name ? name_text(name.get()) : "(malformed DN)";
    }
    }
    return "(ID type " + std::to_string(id.type) + ")";
}

// "IP:198.51.100.1, DNS:hq.example.net" for messages.
std::string describe_alt_names(const GENERAL_NAMES* names)
{
    std::string out;
    for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names); ++i) {
        const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names, i);
        std::string one;
        switch (gn->type) {
        case GEN_IPADD:
            one = "IP:" + ip_text({ASN1_STRING_get0_data(gn->d.iPAddress),
                                   static_cast<size_t>(ASN1_STRING_length(gn->d.iPAddress))});
            break;
        case GEN_DNS:
            one = "DNS:" + ia5_text(gn->d.dNSName);
            break;
        case GEN_EMAIL:
            one = "email:" + ia5_text(gn->d.rfc822Name);
            break;
        case GEN_URI:
            one = "URI:" + ia5_text(gn->d.uniformResourceIdentifier);
            break;
        case GEN_DIRNAME:
            one = "DirName:" + name_text(gn->d.directoryName);
            break;
        default:
            one = "other";
            break;
        }
        out += (out.empty() ? "" : ", ") + one;
    }
    return out;
}

// RFC 7296 §3.5 / RFC 4945 §3.1: is `id` one of the certificate's names?
bool holds_identity(X509* cert, const id_payload& id, std::string& why)
{
    std::string subject = name_text(X509_get_subject_name(cert));
    general_names_ptr alt(
        static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
    ERR_clear_error();
    int want = -1;
    auto type = static_cast<id_type>(id.type);
    switch (type) {
    case id_type::ipv4_addr:
    case id_type::ipv6_addr:
        if (id.data.size() != (type == id_type::ipv4_addr ? 4u : 16u)) {
            why = "the peer's IP address identity has " + std::to_string(id.data.size()) + " bytes";
            return false;
        }
        want = GEN_IPADD;
        break;
    case id_type::fqdn:
        want = GEN_DNS;
        break;
    case id_type::rfc822_addr:
        want = GEN_EMAIL;
        break;
    case id_type::der_asn1_dn: {
        const unsigned char* p = id.data.data();
        name_ptr name(d2i_X509_NAME(nullptr, &p, static_cast<long>(id.data.size())));
        ERR_clear_error();
        if (!name || p != id.data.data() + id.data.size()) {
            why = "the identity (ID_DER_ASN1_DN) is not a valid DER distinguished name";
            return false;
        }
        // X509_NAME_cmp compares the canonical forms: string types, case and spaces do not matter.
        if (X509_NAME_cmp(name.get(), X509_get_subject_name(cert)) == 0) {
            return true;
        }
        why =
            "the identity '" + name_text(name.get()) + "' is not the certificate's subject '" + subject + "'";
        return false;
    }
    case id_type::key_id:
        why =
            "the identity '" + id_text(id) + "' is a key id (ID_KEY_ID), which a certificate cannot confirm";
        return false;
    }
    if (want < 0) {
        why = "the identity type " + std::to_string(id.type) + " is not supported with certificates";
        return false;
    }
    std::string wanted_text = lower(std::string(id.data.begin(), id.data.end()));
    for (int i = 0; alt && i < sk_GENERAL_NAME_num(alt.get()); ++i) {
        const GENERAL_NAME* gn = sk_GENERAL_NAME_value(alt.get(), i);
        if (gn->type != want) {
            continue;
        }
        if (want == GEN_IPADD) {
            const ASN1_OCTET_STRING* ip = gn->d.iPAddress;
            if (static_cast<size_t>(ASN1_STRING_length(ip)) == id.data.size() &&
                std::equal(id.data.begin(), id.data.end(), ASN1_STRING_get0_data(ip))) {
                return true;
            }
        } else if (lower(ia5_text(want == GEN_DNS ? gn->d.dNSName : gn->d.rfc822Name)) == wanted_text) {
            return true;
        }
    }
    std::string names = describe_alt_names(alt.get());
    why = "the identity '" + id_text(id) + "' is not in the certificate '" + subject + "' (" +
          (names.empty() ? std::string("it has no subjectAltName") : "subjectAltName " + names) + ")";
    return false;
}

// Why X509_verify_cert refused the chain, for the operator.
std::string chain_problem(X509_STORE_CTX* ctx, const std::vector<std::string>& ca_names)
{
    int err = X509_STORE_CTX_get_error(ctx);
    int depth = X509_STORE_CTX_get_error_depth(ctx);
    X509* at = X509_STORE_CTX_get_current_cert(ctx);
    std::string which = depth == 0 ? "the peer's certificate" : "the CA certificate";
    std::string subject = at != nullptr ? " '" + name_text(X509_get_subject_name(at)) + "'" : std::string();
    switch (err) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return which + subject + " expired on " + time_text(at != nullptr ? X509_get0_notAfter(at) : nullptr);
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return which + subject + " is not valid before " +
               time_text(at != nullptr ? X509_get0_notBefore(at) : nullptr) + " (check both clocks)";
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN: {
        std::string cas;
        for (const auto& n : ca_names) {
            cas += (cas.empty() ? "'" : ", '") + n + "'";
        }
        std::string issuer = at != nullptr ? name_text(X509_get_issuer_name(at)) : std::string("?");
        return which + subject + " is issued by '" + issuer + "', which is not one of the trusted CAs (" +
               cas + ")";
    }
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        return "the signature on " + which + subject + " does not verify with its issuer's key";
    default:
        break;
    }
    return which + subject + " was refused: " + X509_verify_cert_error_string(err);
}

} // namespace

struct pubkey_credentials::openssl_state {
    pkey_ptr key;
    x509_ptr certificate;
    store_ptr trusted;
};

pubkey_credentials::pubkey_credentials() : ssl_(std::make_unique<openssl_state>()) {}
pubkey_credentials::pubkey_credentials(pubkey_credentials&&) noexcept = default;
pubkey_credentials& pubkey_credentials::operator=(pubkey_credentials&&) noexcept = default;
pubkey_credentials::~pubkey_credentials() = default; // EVP_PKEY_free clears the key's components

std::optional<pubkey_credentials> pubkey_credentials::load(const config::ike_auth_config& auth,
                                                           std::string& error)
{
    pubkey_credentials out;
    auto certs = read_certificates(auth.certificate, error);
    if (certs.empty()) {
        return std::nullopt;
    }
    pkey_ptr key = read_private_key(auth.private_key, error);
    if (!key) {
        return std::nullopt;
    }
    if (std::string p = key_problem(key.get()); !p.empty()) {
        error = "the private key in " + auth.private_key + " cannot be used: " + p;
        return std::nullopt;
    }
    if (EVP_PKEY_eq(X509_get0_pubkey(certs.front().get()), key.get()) != 1) {
        ERR_clear_error();
        error = "the private key in " + auth.private_key + " does not belong to the certificate '" +
                name_text(X509_get_subject_name(certs.front().get())) + "' in " + auth.certificate;
        return std::nullopt;
    }
    out.certificate_der_ = to_der(certs.front().get());
    out.subject_der_ = name_der(X509_get_subject_name(certs.front().get()));
    for (size_t i = 1; i < certs.size(); ++i) {
        out.intermediates_der_.push_back(to_der(certs[i].get()));
    }

    store_ptr store(X509_STORE_new());
    if (!store) {
        error = "out of memory";
        return std::nullopt;
    }
    // A configured intermediate CA is a trust anchor too (as strongSwan's cacerts).
    X509_STORE_set_flags(store.get(), X509_V_FLAG_PARTIAL_CHAIN);
    for (const auto& path : auth.ca) {
        auto cas = read_certificates(path, error);
        if (cas.empty()) {
            return std::nullopt;
        }
        for (auto& ca : cas) {
            std::string ca_name = name_text(X509_get_subject_name(ca.get()));
            if (X509_check_ca(ca.get()) == 0) {
                error =
                    "'" + ca_name + "' in " + path + " is not a CA certificate (no basicConstraints CA:TRUE)";
                return std::nullopt;
            }
            // RFC 7296 §3.7: the CERTREQ carries SHA-1(SubjectPublicKeyInfo) of each trusted CA.
            unsigned char* spki = nullptr;
            int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(ca.get()), &spki);
            bytes hash(20);
            unsigned int hash_len = 0;
            bool hashed = n > 0 && EVP_Digest(spki, static_cast<size_t>(n), hash.data(), &hash_len,
                                              EVP_sha1(), nullptr) == 1;
            OPENSSL_free(spki);
            if (!hashed || X509_STORE_add_cert(store.get(), ca.get()) != 1) {
                error = "cannot use the CA certificate '" + ca_name + "' in " + path + ": " + openssl_error();
                return std::nullopt;
            }
            out.ca_key_hashes_.push_back(std::move(hash));
            out.ca_names_.push_back(std::move(ca_name));
        }
    }
    if (out.ca_key_hashes_.empty()) {
        error = "no CA certificate configured: no peer certificate could be verified";
        return std::nullopt;
    }
    out.ssl_->key = std::move(key);
    out.ssl_->certificate = std::move(certs.front());
    out.ssl_->trusted = std::move(store);
    error.clear();
    return out;
}

bool pubkey_credentials::certificate_holds(const id_payload& own_id, std::string& why) const
{
    return holds_identity(ssl_->certificate.get(), own_id, why);
}

std::optional<auth_payload> pubkey_credentials::sign(std::span<const uint8_t> signed_octets,
                                                     std::span<const uint16_t> peer_hash_algorithms,
                                                     std::string& error) const
{
    EVP_PKEY* key = ssl_->key.get();
    key_kind kind = kind_of(key);
    signature_hash preferred = kind == key_kind::ec_p384   ? signature_hash::sha2_384
                               : kind == key_kind::ec_p521 ? signature_hash::sha2_512
                                                           : signature_hash::sha2_256;
    signature_hash hash = signature_hash::sha2_256;
    if (!peer_hash_algorithms.empty()) {
        auto announced = [&](signature_hash h) {
            return std::find(peer_hash_algorithms.begin(), peer_hash_algorithms.end(),
                             static_cast<uint16_t>(h)) != peer_hash_algorithms.end();
        };
        if (announced(preferred)) {
            hash = preferred;
        } else {
            auto it = std::find_if(peer_hash_algorithms.begin(), peer_hash_algorithms.end(), [](uint16_t h) {
                return h == static_cast<uint16_t>(signature_hash::sha2_256) ||
                       h == static_cast<uint16_t>(signature_hash::sha2_384) ||
                       h == static_cast<uint16_t>(signature_hash::sha2_512);
            });
            if (it == peer_hash_algorithms.end()) {
                error = "the peer announced no SHA-2 hash in SIGNATURE_HASH_ALGORITHMS (RFC 7427); SHA-1 "
                        "signatures are "
                        "not made";
                return std::nullopt;
            }
            hash = static_cast<signature_hash>(*it);
        }
    }
    const EVP_MD* md = md_of(hash);
    md_ctx_ptr ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;
    if (!ctx || EVP_DigestSignInit(ctx.get(), &pctx, md, nullptr, key) != 1) {
        error = "cannot start a signature: " + openssl_error();
        return std::nullopt;
    }
    bool pss = kind == key_kind::rsa_pss || (kind == key_kind::rsa && rsa_pss_);
    if (pss && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
                EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
                EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) != 1)) {
        error = "cannot set up RSASSA-PSS: " + openssl_error();
        return std::nullopt;
    }
    // RFC 7427 §3: the AlgorithmIdentifier of what we sign with; the provider encodes it (ECDSA without
    // parameters, RSA PKCS#1 with NULL, RSASSA-PSS with hash, MGF1 and salt length).
    uint8_t aid[128];
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, aid, sizeof(aid)),
        OSSL_PARAM_construct_end()};
    if (EVP_PKEY_CTX_get_params(pctx, params) != 1 || params[0].return_size == 0 ||
        params[0].return_size > 255) {
        error = "cannot encode the signature's AlgorithmIdentifier: " + openssl_error();
        return std::nullopt;
    }
    size_t aid_size = params[0].return_size;
    size_t sig_size = 0;
    if (EVP_DigestSign(ctx.get(), nullptr, &sig_size, signed_octets.data(), signed_octets.size()) != 1) {
        error = "signing failed: " + openssl_error();
        return std::nullopt;
    }
    auth_payload auth;
    auth.method = static_cast<uint8_t>(auth_method::digital_signature);
    auth.data.resize(1 + aid_size + sig_size);
    auth.data[0] = static_cast<uint8_t>(aid_size);
    std::copy(aid, aid + aid_size, auth.data.begin() + 1);
    if (EVP_DigestSign(ctx.get(), auth.data.data() + 1 + aid_size, &sig_size, signed_octets.data(),
                       signed_octets.size()) != 1) {
        error = "signing failed: " + openssl_error();
        return std::nullopt;
    }
    auth.data.resize(1 + aid_size + sig_size); // ECDSA DER signatures vary in length
    return auth;
}

bool pubkey_credentials::verify(const std::vector<bytes>& peer_certs_der, const id_payload& peer_id,
                                const auth_payload& auth, std::span<const uint8_t> signed_octets,
                                std::string& why) const
{
    if (peer_certs_der.empty()) {
        why = "the peer sent no certificate (CERT payload) with its AUTH payload";
        return false;
    }
    // 1. The chain, from the end-entity certificate to one of our CAs.
    std::vector<x509_ptr> certs;
    for (size_t i = 0; i < peer_certs_der.size(); ++i) {
        const auto& der = peer_certs_der[i];
        const unsigned char* p = der.data();
        x509_ptr c(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
        if (!c || p != der.data() + der.size()) {
            ERR_clear_error();
            why = "the peer's CERT payload " + std::to_string(i + 1) + " is not a DER X.509 certificate";
            return false;
        }
        certs.push_back(std::move(c));
    }
    X509* ee = certs.front().get();
    x509_stack_ptr untrusted(sk_X509_new_null());
    store_ctx_ptr ctx(X509_STORE_CTX_new());
    if (!untrusted || !ctx) {
        why = "out of memory while verifying the peer's certificate";
        return false;
    }
    for (size_t i = 1; i < certs.size(); ++i) {
        if (sk_X509_push(untrusted.get(), certs[i].get()) <= 0) {
            why = "out of memory while verifying the peer's certificate";
            return false;
        }
        certs[i].release(); // the stack owns it now
    }
    if (X509_STORE_CTX_init(ctx.get(), ssl_->trusted.get(), ee, untrusted.get()) != 1) {
        ERR_clear_error();
        why = "cannot set up certificate verification";
        return false;
    }
    if (X509_verify_cert(ctx.get()) != 1) {
        why = chain_problem(ctx.get(), ca_names_);
        ERR_clear_error();
        return false;
    }
    std::string subject = name_text(X509_get_subject_name(ee));
    if ((X509_get_extension_flags(ee) & EXFLAG_KUSAGE) != 0 &&
        (X509_get_key_usage(ee) & (KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION)) == 0) {
        why = "the peer's certificate '" + subject + "' has a keyUsage without digitalSignature";
        return false;
    }
    EVP_PKEY* key = X509_get0_pubkey(ee);
    if (key == nullptr) {
        ERR_clear_error();
        why = "the peer's certificate '" + subject + "' has an unreadable public key";
        return false;
    }
    if (std::string p = key_problem(key); !p.empty()) {
        why = "the peer's certificate '" + subject + "' has " + p;
        return false;
    }

    // 2. The identity must be one the certificate names (RFC 7296 §2.15: "the peer's identity" is what
    // the CERT vouches for; RFC 4945 §3.1).
    if (!holds_identity(ee, peer_id, why)) {
        why = "the peer's identity does not match its certificate: " + why;
        return false;
    }

    // 3. The AUTH payload.
    key_kind kind = kind_of(key);
    std::span<const uint8_t> data(auth.data);
    const std::string bad_signature =
        "the peer's AUTH signature does not verify with the key of its certificate '" + subject +
        "' (wrong key, or the IKE_SA_INIT messages were altered)";
    auto sha1_refused = [&] {
        why = "the peer signed its AUTH payload with SHA-1, which is refused (RFC 8247); allow-legacy "
              "accepts it";
        return false;
    };
    switch (static_cast<auth_method>(auth.method)) {
    case auth_method::digital_signature: {
        // RFC 7427 §3: ASN.1 Length (1) | AlgorithmIdentifier | Signature Value.
        if (data.empty() || data[0] == 0 || data.size() <= size_t{1} + data[0]) {
            why = "the peer's AUTH payload (Digital Signature) is truncated";
            return false;
        }
        size_t aid_size = data[0];
        const unsigned char* p = data.data() + 1;
        algor_ptr alg(d2i_X509_ALGOR(nullptr, &p, static_cast<long>(aid_size)));
        if (!alg || p != data.data() + 1 + aid_size) {
            ERR_clear_error();
            why = "the peer's AUTH payload has a malformed AlgorithmIdentifier";
            return false;
        }
        auto signature = data.subspan(1 + aid_size);
        int nid = OBJ_obj2nid(alg->algorithm);
        std::optional<pss_parameters> pss;
        int md_nid = NID_undef, pkey_nid = NID_undef;
        if (nid == NID_rsassaPss) {
            pss = parse_pss(alg.get(), why);
            if (!pss) {
                return false;
            }
            md_nid = pss->hash_nid;
            if (!is_rsa(kind)) {
                why = "the peer signed with RSASSA-PSS but its certificate '" + subject + "' holds a " +
                      describe_key(key) + " key";
                return false;
            }
            auto mgf = hash_of_nid(pss->mgf1_hash_nid);
            if (!mgf || (*mgf == signature_hash::sha1 && !allow_sha1_)) {
                return sha1_refused();
            }
        } else {
            if (OBJ_find_sigid_algs(nid, &md_nid, &pkey_nid) != 1) {
                why = "the peer signed with " + oid_text(alg->algorithm) + ", which is not supported";
                return false;
            }
            bool fits = (pkey_nid == NID_rsaEncryption && kind == key_kind::rsa) ||
                        (pkey_nid == NID_X9_62_id_ecPublicKey && !is_rsa(kind));
            if (!fits) {
                why = "the peer signed with " + oid_text(alg->algorithm) + " but its certificate '" +
                      subject + "' holds a " + describe_key(key) + " key";
                return false;
            }
        }
        auto hash = hash_of_nid(md_nid);
        if (!hash) {
            why = "the peer signed with " + oid_text(alg->algorithm) + " and a hash that is not supported";
            return false;
        }
        if (*hash == signature_hash::sha1 && !allow_sha1_) {
            return sha1_refused();
        }
        if (!verify_signature(key, md_of(*hash), pss ? &*pss : nullptr, signed_octets, signature)) {
            why = bad_signature;
            return false;
        }
        return true;
    }
    case auth_method::ecdsa_256:
    case auth_method::ecdsa_384:
    case auth_method::ecdsa_521: {
        // RFC 4754 §3: the curve and hash are fixed by the method; the signature is r | s.
        auto method = static_cast<auth_method>(auth.method);
        key_kind need = method == auth_method::ecdsa_256   ? key_kind::ec_p256
                        : method == auth_method::ecdsa_384 ? key_kind::ec_p384
                                                           : key_kind::ec_p521;
        size_t field = method == auth_method::ecdsa_256 ? 32 : method == auth_method::ecdsa_384 ? 48 : 66;
        if (kind != need) {
            why = "the peer authenticates with ECDSA method " + std::to_string(auth.method) +
                  " but its certificate '" + subject + "' holds a " + describe_key(key) + " key";
            return false;
        }
        if (data.size() != 2 * field) {
            why = "the peer's ECDSA AUTH payload has " + std::to_string(data.size()) + " bytes, not " +
                  std::to_string(2 * field);
            return false;
        }
        auto der = ecdsa_raw_to_der(data);
        const EVP_MD* md = method == auth_method::ecdsa_256   ? EVP_sha256()
                           : method == auth_method::ecdsa_384 ? EVP_sha384()
                                                              : EVP_sha512();
        if (!der || !verify_signature(key, md, nullptr, signed_octets, *der)) {
            ERR_clear_error();
            why = bad_signature;
            return false;
        }
        return true;
    }
    case auth_method::rsa_sig:
        // RFC 7296 §3.8: RSA PKCS#1 v1.5 with SHA-1.
        if (!allow_sha1_) {
            return sha1_refused();
        }
        if (kind != key_kind::rsa) {
            why = "the peer authenticates with RSA (method 1) but its certificate '" + subject +
                  "' holds a " + describe_key(key) + " key";
            return false;
        }
        if (!verify_signature(key, EVP_sha1(), nullptr, signed_octets, data)) {
            why = bad_signature;
            return false;
        }
        return true;
    case auth_method::shared_key_mic:
        why = "the peer authenticates with a pre-shared key, but certificates are configured for it";
        return false;
    case auth_method::dss_sig:
        break;
    }
    why = "the peer authenticates with method " + std::to_string(auth.method) +
          ", which is not supported (14 Digital Signature, 9/10/11 ECDSA)";
    return false;
}

bytes pubkey_credentials::supported_hash_algorithms()
{
    return {0, static_cast<uint8_t>(signature_hash::sha2_256),
            0, static_cast<uint8_t>(signature_hash::sha2_384),
            0, static_cast<uint8_t>(signature_hash::sha2_512)};
}

std::vector<uint16_t> pubkey_credentials::parse_hash_algorithms(std::span<const uint8_t> notify_data)
{
    std::vector<uint16_t> out;
    for (size_t i = 0; i + 1 < notify_data.size(); i += 2) {
        out.push_back(static_cast<uint16_t>((notify_data[i] << 8) | notify_data[i + 1]));
    }
    return out;
}

// ---- text DN -> DER ---------------------------------------------------------------------------------

namespace {

// strongSwan's x501rdns table (libstrongswan/utils/identification.c): name, OID, string type.
struct rdn_name {
    const char* name;
    const char* oid;
    int type;
};
constexpr rdn_name rdn_names[] = {
    {"ND", "0.2.262.1.10.7.20", V_ASN1_PRINTABLESTRING},
    {"UID", "0.9.2342.19200300.100.1.1", V_ASN1_PRINTABLESTRING},
    {"DC", "0.9.2342.19200300.100.1.25", V_ASN1_PRINTABLESTRING},
    {"CN", "2.5.4.3", V_ASN1_PRINTABLESTRING},
    {"S", "2.5.4.4", V_ASN1_PRINTABLESTRING},
    {"SN", "2.5.4.5", V_ASN1_PRINTABLESTRING},
    {"serialNumber", "2.5.4.5", V_ASN1_PRINTABLESTRING},
    {"C", "2.5.4.6", V_ASN1_PRINTABLESTRING},
    {"L", "2.5.4.7", V_ASN1_PRINTABLESTRING},
    {"ST", "2.5.4.8", V_ASN1_PRINTABLESTRING},
    {"O", "2.5.4.10", V_ASN1_PRINTABLESTRING},
    {"OU", "2.5.4.11", V_ASN1_PRINTABLESTRING},
    {"T", "2.5.4.12", V_ASN1_PRINTABLESTRING},
    {"D", "2.5.4.13", V_ASN1_PRINTABLESTRING},
    {"N", "2.5.4.41", V_ASN1_PRINTABLESTRING},
    {"G", "2.5.4.42", V_ASN1_PRINTABLESTRING},
    {"I", "2.5.4.43", V_ASN1_PRINTABLESTRING},
    {"dnQualifier", "2.5.4.46", V_ASN1_PRINTABLESTRING},
    {"ID", "2.5.4.45", V_ASN1_PRINTABLESTRING},
    {"EN", "2.16.840.1.113730.3.1.3", V_ASN1_PRINTABLESTRING},
    {"employeeNumber", "2.16.840.1.113730.3.1.3", V_ASN1_PRINTABLESTRING},
    {"E", "1.2.840.113549.1.9.1", V_ASN1_IA5STRING},
    {"Email", "1.2.840.113549.1.9.1", V_ASN1_IA5STRING},
    {"emailAddress", "1.2.840.113549.1.9.1", V_ASN1_IA5STRING},
    {"UN", "1.2.840.113549.1.9.2", V_ASN1_IA5STRING},
    {"unstructuredName", "1.2.840.113549.1.9.2", V_ASN1_IA5STRING},
    {"UA", "1.2.840.113549.1.9.8", V_ASN1_PRINTABLESTRING},
    {"unstructuredAddress", "1.2.840.113549.1.9.8", V_ASN1_PRINTABLESTRING},
};

// X.680 PrintableString characters (strongSwan's asn1_is_printablestring).
bool printable(const std::string& s)
{
    return std::all_of(s.begin(), s.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
               std::string_view(" '()+,-./:=?").find(c) != std::string_view::npos;
    });
}

} // namespace

std::optional<bytes> encode_dn(const std::string& text)
{
    size_t pos = text.find_first_not_of(' ');
    if (pos == std::string::npos) {
        return std::nullopt;
    }
    char sep = ',';
    if (text[pos] == '/') { // "/C=CH/O=Espresso/CN=hq", as openssl -subj writes it
        sep = '/';
        ++pos;
    }
    name_ptr name(X509_NAME_new());
    if (!name) {
        return std::nullopt;
    }
    while (pos < text.size()) {
        size_t end = text.find(sep, pos);
        if (end == std::string::npos) {
            end = text.size();
        }
        std::string part = text.substr(pos, end - pos);
        pos = end + 1;
        size_t key_start = part.find_first_not_of(' ');
        if (key_start == std::string::npos) {
            if (end == text.size()) {
                break; // trailing separator
            }
            return std::nullopt;
        }
        size_t key_end = part.find_first_of(" =", key_start);
        if (key_end == std::string::npos) {
            return std::nullopt; // no value
        }
        std::string key = part.substr(key_start, key_end - key_start);
        // strongSwan skips every ' ' and '=' between the name and the value, and drops trailing spaces.
        size_t value_start = part.find_first_not_of(" =", key_end);
        std::string value = value_start == std::string::npos ? std::string() : part.substr(value_start);
        while (!value.empty() && value.back() == ' ') {
            value.pop_back();
        }
        const rdn_name* known = nullptr;
        for (const auto& r : rdn_names) {
            if (key.size() == std::char_traits<char>::length(r.name) &&
                strncasecmp(key.c_str(), r.name, key.size()) == 0) {
                known = &r;
                break;
            }
        }
        std::string between = part.substr(key_end, value_start == std::string::npos ? std::string::npos
                                                                                    : value_start - key_end);
        if (known == nullptr || between.find('=') == std::string::npos) {
            return std::nullopt;
        }
        int type =
            known->type == V_ASN1_PRINTABLESTRING && !printable(value) ? V_ASN1_UTF8STRING : known->type;
        ASN1_OBJECT* oid = OBJ_txt2obj(known->oid, 1);
        int ok = oid != nullptr
                     ? X509_NAME_add_entry_by_OBJ(name.get(), oid, type,
                                                  reinterpret_cast<const unsigned char*>(value.data()),
                                                  static_cast<int>(value.size()), -1, 0)
                     : 0;
        ASN1_OBJECT_free(oid);
        if (ok != 1) {
            ERR_clear_error();
            return std::nullopt;
        }
    }
    if (X509_NAME_entry_count(name.get()) == 0) {
        return std::nullopt;
    }
    bytes der = name_der(name.get());
    if (der.empty()) {
        return std::nullopt;
    }
    return der;
}

namespace {

name_ptr parse_dn(std::span<const uint8_t> der)
{
    const unsigned char* p = der.data();
    name_ptr name(d2i_X509_NAME(nullptr, &p, static_cast<long>(der.size())));
    ERR_clear_error();
    if (!name || p != der.data() + der.size()) {
        return nullptr;
    }
    return name;
}

} // namespace

bool dn_equal(std::span<const uint8_t> a, std::span<const uint8_t> b)
{
    name_ptr na = parse_dn(a), nb = parse_dn(b);
    if (!na || !nb) {
        return false;
    }
    bool equal = X509_NAME_cmp(na.get(), nb.get()) == 0;
    ERR_clear_error();
    return equal;
}

std::string dn_to_string(std::span<const uint8_t> der)
{
    name_ptr name = parse_dn(der);
    return name ? name_text(name.get()) : "(malformed DN)";
}

} // namespace espresso::cp
