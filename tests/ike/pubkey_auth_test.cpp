// Tests for controlplane/ike/pubkey_auth.cpp (certificate authentication, RFC 7296 §2.15/§3.6-3.8,
// RFC 7427, RFC 4754).
//
// The PKI is made at test time with OpenSSL's X509 API (RSA 2048 and ECDSA P-256 CAs, end-entity
// certificates with subjectAltName IP 198.51.100.1 / 203.0.113.1, an expired one, one from another CA,
// an intermediate), written to a temporary directory and loaded through pubkey_credentials::load.
// Independent oracles, made with the openssl CLI (tests/ike/vectors/pki/make_pki_vectors.sh, embedded
// below): certificates and `openssl dgst -sha256 -sign` signatures over known octets that verify() must
// accept, the CA's SubjectPublicKeyInfo SHA-1 (CERTREQ), the subject DER encode_dn must reproduce; and
// RFC 7427 Appendix A's AlgorithmIdentifier encodings. When the openssl binary is installed, our own
// signatures are also checked with `openssl dgst -verify`.
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "pubkey_auth.h"

namespace espresso::cp {
namespace {

// ---- oracle: made by tests/ike/vectors/pki/make_pki_vectors.sh (openssl 3.0 CLI) -------------------
constexpr const char* oracle_ca_pem = R"(-----BEGIN CERTIFICATE-----
MIIBozCCAUigAwIBAgIUAW98UszTbn2hcmdTYWTV0dN4BH4wCgYIKoZIzj0EAwIw
LjEYMBYGA1UEChMPRXNwcmVzc28gb3JhY2xlMRIwEAYDVQQDEwlPcmFjbGUgQ0Ew
IBcNMjYxMTI5MDUzNDE5WhgPMjEyNjExMDUwNTM0MTlaMC4xGDAWBgNVBAoTD0Vz
cHJlc3NvIG9yYWNsZTESMBAGA1UEAxMJT3JhY2xlIENBMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAECTUz2OkiURfsc31hUDQqg7NiLo3KKZoZvRZEEyv2ZVNmaC8t
zsQv0fXNJ1e3zy3qGNfkmu3tMxPHZcQqz2a6AqNCMEAwDwYDVR0TAQH/BAUwAwEB
/zAOBgNVHQ8BAf8EBAMCAQYwHQYDVR0OBBYEFFo4K9VvR6bT/ndYOFjNLw6xWoJv
MAoGCCqGSM49BAMCA0kAMEYCIQCoE6S3bn3bQ6/w1AEnCW/rXrRIOezZHq+BmiEA
7VWF8AIhANq2r+7CR/BEkmArSE8Jcp7nP1wLhYu9UXKY7+ArkdmN
-----END CERTIFICATE-----
)";

constexpr const char* oracle_rsa_pem = R"(-----BEGIN CERTIFICATE-----
MIIC1DCCAnugAwIBAgIBCjAKBggqhkjOPQQDAjAuMRgwFgYDVQQKEw9Fc3ByZXNz
byBvcmFjbGUxEjAQBgNVBAMTCU9yYWNsZSBDQTAgFw0yNjExMjkwNTM0MjFaGA8y
MTI2MTEwNTA1MzQyMVowcDELMAkGA1UEBhMCQ0gxETAPBgNVBAoTCEVzcHJlc3Nv
MRUwEwYDVQQLEwxWUE4gZ2F0ZXdheXMxFzAVBgNVBAMTDmhxLmV4YW1wbGUubmV0
MR4wHAYJKoZIhvcNAQkBFg92cG5AZXhhbXBsZS5uZXQwggEiMA0GCSqGSIb3DQEB
AQUAA4IBDwAwggEKAoIBAQDKUI5vSx8MaoWQPVlGhDEHhv8djrA1O2kDIM9p1sIg
7l8YBUwoA1Y5igyROOxrp+IY1xTVomvK1f58WaPlglyYAUvVIREW57+jwBlGVkc7
8Yo91YcOwMKaRX2xvtyYoWAxn1QZ4ni+zkNvCLgwFdZ0jzWP7bZnqTBKWBK3O1Ui
RDoG0GmlBRCsUZO0L0wRkBukVaCYvX9Al+sxv+dVcMqss0ohVk7QHICtrTkUmDQZ
eBwaaz30T2iryPpkQudiLgEDxYGCSXZgbRGUQdsbCdmwR9RbzfnT+Myw9GGJ94b0
gDXHKA8w4kWSNxs2NPsxQ/CySPeP79b7EpwUx3AzC5CZAgMBAAGjezB5MB8GA1Ud
EQQYMBaHBMYzZAGCDmhxLmV4YW1wbGUubmV0MAkGA1UdEwQCMAAwCwYDVR0PBAQD
AgeAMB0GA1UdDgQWBBTl4PugA54ayfWYEiVcKfN5vPDIcjAfBgNVHSMEGDAWgBRa
OCvVb0em0/53WDhYzS8OsVqCbzAKBggqhkjOPQQDAgNHADBEAiANlk27rGaLvEyo
FnckvvBqsJl8s7++V60+HdVttS/ADAIgYX8stgFrKaosrtOMVqrWX8vB+0D4mhNw
PFpGdeTVaRY=
-----END CERTIFICATE-----
)";

constexpr const char* oracle_ec_pem = R"(-----BEGIN CERTIFICATE-----
MIICCzCCAbCgAwIBAgIBDjAKBggqhkjOPQQDAjAuMRgwFgYDVQQKEw9Fc3ByZXNz
byBvcmFjbGUxEjAQBgNVBAMTCU9yYWNsZSBDQTAgFw0yNjExMjkwNTM0MjFaGA8y
MTI2MTEwNTA1MzQyMVowcDELMAkGA1UEBhMCQ0gxETAPBgNVBAoTCEVzcHJlc3Nv
MRUwEwYDVQQLEwxWUE4gZ2F0ZXdheXMxFzAVBgNVBAMTDmhxLmV4YW1wbGUubmV0
MR4wHAYJKoZIhvcNAQkBFg92cG5AZXhhbXBsZS5uZXQwWTATBgcqhkjOPQIBBggq
hkjOPQMBBwNCAARBXWrmYgOqwb9sram8ugneBA5n2jZFg7t7ZGCjl/k+6WtmGjtM
rM1Wa8Impc0U1Rr/SVarj5KteN9KtMebpVgTo3sweTAfBgNVHREEGDAWhwTGM2QB
gg5ocS5leGFtcGxlLm5ldDAJBgNVHRMEAjAAMAsGA1UdDwQEAwIHgDAdBgNVHQ4E
FgQU2qYgsfylBgmuGd1sNwVMjC60xoAwHwYDVR0jBBgwFoAUWjgr1W9HptP+d1g4
WM0vDrFagm8wCgYIKoZIzj0EAwIDSQAwRgIhANWNAmT3Dr7GrompdODmJw/IpnBP
QGmZauqBGUhaqhW2AiEAgPMoI009cQkzWSztaMMqNLhIzB+YXnXEISy7jZLvzZA=
-----END CERTIFICATE-----
)";

constexpr const char* oracle_octets =
    "espresso pubkey_auth oracle: RealMessage | Nonce | prf(SK_p, RestOfID)\n";

constexpr const char* oracle_rsa_sha256_sig_hex =
    "252641c1d8aa0fce31c27bb3168451cd411b58b43bf782331f5edd25becea5b9526070e11624e0d8b195f8f8807ca9b6"
    "5d515df8073ea2361f8232ab1f94cb89ff26ac195936834171757b059e636fadd7fdff57d9b43f9f416e452b811afeb4"
    "3dfa7aa7a4a0ec19d549553acbb5152f0a1d6af504666ff68408e4d5f264ecf513a6f01e8fa7f83de88d94e90a58794f"
    "25b3edc5907e37acde55c346cbc3fe7e64f0fb308f7c6af8ebd3991df87ed4fc2fe4188ba0a5f8fd91e7dd97e4c8d037"
    "e8631bb49c3ddf4f905ea66588f598b0ab84371229a3dc49bbe02dca7ea400a4142b43755ef12a8bc194776cffbc2fea"
    "2622bd5df580b64c9b45024602cb78c6";

constexpr const char* oracle_ec_sha256_sig_hex =
    "3045022100c558f3e18f026ed7dfbee65da875ebb86b5e2477bcf343fbe2cd56c56122a13d02206bd2ea28526ad7c3c6"
    "b0317c5b96de3e79ff2b40573b09994cbf1bc24a62a5e3";

constexpr const char* oracle_ca_spki_sha1_hex = "6383d8c1a4d6ae19a9756d85b1a1f11e6376f74b";

// RFC 7427 Appendix A: AlgorithmIdentifier encodings (A.1 PKCS#1 v1.5, A.3 ECDSA); RSASSA-PSS with SHA-256,
// MGF1-SHA-256 and a 32-byte salt as in A.4.3 (same bytes as Chromium's rsa-pss-sha256 test data).
constexpr const char* aid_sha1_rsa = "300d06092a864886f70d0101050500";
constexpr const char* aid_sha256_rsa = "300d06092a864886f70d01010b0500";
constexpr const char* aid_sha512_rsa = "300d06092a864886f70d01010d0500";
constexpr const char* aid_ecdsa_sha256 = "300a06082a8648ce3d040302";
constexpr const char* aid_ecdsa_sha384 = "300a06082a8648ce3d040303";
constexpr const char* aid_pss_sha256 = "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c3"
                                       "01a06092a864886f70d010108300d0609608648"
                                       "0165030402010500a203020120";

bytes hex(std::string_view s)
{
    bytes out;
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') {
            return c - '0';
        }
        if (c >= 'a' && c <= 'f') {
            return c - 'a' + 10;
        }
        ADD_FAILURE() << "bad hex digit " << c;
        return 0;
    };
    for (size_t i = 0; i + 1 < s.size(); i += 2) {
        out.push_back(static_cast<uint8_t>(nibble(s[i]) << 4 | nibble(s[i + 1])));
    }
    return out;
}

bytes to_bytes(std::string_view s) { return bytes(s.begin(), s.end()); }

struct pkey_free {
    void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct x509_free {
    void operator()(X509* p) const { X509_free(p); }
};
struct bio_free {
    void operator()(BIO* p) const { BIO_free(p); }
};
using test_key = std::unique_ptr<EVP_PKEY, pkey_free>;
using test_cert = std::unique_ptr<X509, x509_free>;
using test_bio = std::unique_ptr<BIO, bio_free>;

struct cert_spec {
    std::vector<std::pair<std::string, std::string>> subject; // {"CN", "hq"}, UTF8String as openssl req does
    std::string alt_names;                                    // "IP:198.51.100.1,DNS:hq.example.net"
    bool ca = false;
    long not_before_days = -1, not_after_days = 365;
    std::string key_usage; // end entity: empty = no keyUsage extension
    long serial = 1;
};

test_cert make_cert(const cert_spec& spec, EVP_PKEY* subject_key, X509* issuer, EVP_PKEY* issuer_key)
{
    test_cert c(X509_new());
    X509_set_version(c.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c.get()), spec.serial);
    X509_NAME* name = X509_NAME_new();
    for (const auto& [k, v] : spec.subject) {
        EXPECT_EQ(X509_NAME_add_entry_by_txt(name, k.c_str(), MBSTRING_UTF8,
                                             reinterpret_cast<const unsigned char*>(v.c_str()), -1, -1, 0),
                  1);
    }
    X509_set_subject_name(c.get(), name);
    X509_set_issuer_name(c.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name);
    X509_NAME_free(name);
    X509_gmtime_adj(X509_getm_notBefore(c.get()), spec.not_before_days * 86400);
    X509_gmtime_adj(X509_getm_notAfter(c.get()), spec.not_after_days * 86400);
    X509_set_pubkey(c.get(), subject_key);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer != nullptr ? issuer : c.get(), c.get(), nullptr, nullptr, 0);
    auto add = [&](int nid, const std::string& value) {
        X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
        ASSERT_NE(e, nullptr) << value;
        X509_add_ext(c.get(), e, -1);
        X509_EXTENSION_free(e);
    };
    add(NID_basic_constraints, spec.ca ? "critical,CA:TRUE" : "CA:FALSE");
    if (spec.ca) {
        add(NID_key_usage, "critical,keyCertSign,cRLSign");
    } else if (!spec.key_usage.empty()) {
        add(NID_key_usage, spec.key_usage);
    }
    add(NID_subject_key_identifier, "hash");
    if (issuer != nullptr) {
        add(NID_authority_key_identifier, "keyid:always");
    }
    if (!spec.alt_names.empty()) {
        add(NID_subject_alt_name, spec.alt_names);
    }
    EXPECT_GT(X509_sign(c.get(), issuer_key, EVP_sha256()), 0);
    return c;
}

bytes der(X509* cert)
{
    int n = i2d_X509(cert, nullptr);
    bytes out(static_cast<size_t>(n));
    unsigned char* p = out.data();
    i2d_X509(cert, &p);
    return out;
}

test_cert from_pem(const char* pem)
{
    test_bio bio(BIO_new_mem_buf(pem, -1));
    return test_cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

void write_text(const std::filesystem::path& path, std::string_view text)
{
    std::ofstream(path, std::ios::binary).write(text.data(), static_cast<std::streamsize>(text.size()));
}

void write_cert(const std::filesystem::path& path, std::initializer_list<X509*> certs)
{
    test_bio bio(BIO_new_file(path.c_str(), "w"));
    for (X509* c : certs) {
        PEM_write_bio_X509(bio.get(), c);
    }
}

void write_key(const std::filesystem::path& path, EVP_PKEY* key, const char* passphrase = nullptr)
{
    test_bio bio(BIO_new_file(path.c_str(), "w"));
    if (passphrase != nullptr) {
        PEM_write_bio_PrivateKey(bio.get(), key, EVP_aes_256_cbc(),
                                 reinterpret_cast<const unsigned char*>(passphrase),
                                 static_cast<int>(std::strlen(passphrase)), nullptr, nullptr);
    } else {
        PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
    }
    std::filesystem::permissions(path,
                                 std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

id_payload ipv4_id(std::array<uint8_t, 4> a)
{
    return id_payload{static_cast<uint8_t>(id_type::ipv4_addr), bytes(a.begin(), a.end())};
}
id_payload text_id(id_type type, std::string_view text)
{
    return id_payload{static_cast<uint8_t>(type), to_bytes(text)};
}
const id_payload hq_ip = ipv4_id({198, 51, 100, 1});
const id_payload branch_ip = ipv4_id({203, 0, 113, 1});

// The AlgorithmIdentifier of a method 14 AUTH payload (RFC 7427 §3).
bytes aid_of(const auth_payload& auth)
{
    if (auth.data.empty() || auth.data.size() < 1u + auth.data[0]) {
        return {};
    }
    return bytes(auth.data.begin() + 1, auth.data.begin() + 1 + auth.data[0]);
}
bytes signature_of(const auth_payload& auth)
{
    return bytes(auth.data.begin() + 1 + auth.data[0], auth.data.end());
}
auth_payload digital_signature(const bytes& aid, const bytes& signature)
{
    auth_payload a;
    a.method = static_cast<uint8_t>(auth_method::digital_signature);
    // Sized up front: g++ 12 reports a false -Warray-bounds for push_back followed by insert.
    a.data.assign(1 + aid.size() + signature.size(), 0);
    a.data[0] = static_cast<uint8_t>(aid.size());
    std::copy(aid.begin(), aid.end(), a.data.begin() + 1);
    std::copy(signature.begin(), signature.end(),
              a.data.begin() + 1 + static_cast<std::ptrdiff_t>(aid.size()));
    return a;
}

// A signature made directly with EVP (PKCS#1 v1.5 for RSA, DER for ECDSA), for the legacy cases.
bytes evp_sign(EVP_PKEY* key, const EVP_MD* md, std::span<const uint8_t> data)
{
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    EXPECT_EQ(EVP_DigestSignInit(ctx, nullptr, md, nullptr, key), 1);
    size_t n = 0;
    EVP_DigestSign(ctx, nullptr, &n, data.data(), data.size());
    bytes sig(n);
    EXPECT_EQ(EVP_DigestSign(ctx, sig.data(), &n, data.data(), data.size()), 1);
    sig.resize(n);
    EVP_MD_CTX_free(ctx);
    return sig;
}

bool have_openssl_cli() { return std::system("openssl version >/dev/null 2>&1") == 0; }

// The PKI of the tests, made once: see the file comment.
struct test_pki {
    std::filesystem::path dir;
    test_key rsa_ca_key, ec_ca_key, other_ca_key, inter_key, hq_key, branch_key, p384_key, short_rsa_key;
    test_cert rsa_ca, ec_ca, other_ca, inter, hq, branch, expired, stranger, chained, no_signing, p384,
        short_rsa;

    std::string path(const std::string& name) const { return (dir / name).string(); }

    config::ike_auth_config auth(const std::string& cert, const std::string& key,
                                 std::vector<std::string> cas) const
    {
        config::ike_auth_config a;
        a.method = config::ike_auth_method::pubkey;
        a.certificate = path(cert);
        a.private_key = path(key);
        for (auto& c : cas) {
            a.ca.push_back(path(c));
        }
        return a;
    }
};

test_pki* pki = nullptr;

class Pubkey : public ::testing::Test {
protected:
    static void SetUpTestSuite()
    {
        if (pki != nullptr) {
            return;
        }
        pki = new test_pki;
        auto& p = *pki;
        char tmpl[] = "/tmp/espresso-pubkey-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        p.dir = tmpl;
        p.rsa_ca_key.reset(EVP_RSA_gen(2048));
        p.ec_ca_key.reset(EVP_EC_gen("P-256"));
        p.other_ca_key.reset(EVP_EC_gen("P-256"));
        p.inter_key.reset(EVP_EC_gen("P-256"));
        p.hq_key.reset(EVP_RSA_gen(2048));
        p.branch_key.reset(EVP_EC_gen("P-256"));
        p.p384_key.reset(EVP_EC_gen("P-384"));
        p.short_rsa_key.reset(EVP_RSA_gen(1024));

        cert_spec ca{{{"O", "Espresso test"}, {"CN", "RSA CA"}}, "", true, -1, 3650, "", 1};
        p.rsa_ca = make_cert(ca, p.rsa_ca_key.get(), nullptr, p.rsa_ca_key.get());
        ca.subject = {{"O", "Espresso test"}, {"CN", "ECDSA CA"}};
        p.ec_ca = make_cert(ca, p.ec_ca_key.get(), nullptr, p.ec_ca_key.get());
        ca.subject = {{"O", "Elsewhere"}, {"CN", "Other CA"}};
        p.other_ca = make_cert(ca, p.other_ca_key.get(), nullptr, p.other_ca_key.get());
        ca.subject = {{"O", "Espresso test"}, {"CN", "Intermediate CA"}};
        p.inter = make_cert(ca, p.inter_key.get(), p.ec_ca.get(), p.ec_ca_key.get());

        cert_spec hq{{{"C", "CH"}, {"O", "Espresso"}, {"CN", "hq"}},
                     "IP:198.51.100.1,DNS:hq.example.net",
                     false,
                     -1,
                     365,
                     "",
                     10};
        p.hq = make_cert(hq, p.hq_key.get(), p.rsa_ca.get(), p.rsa_ca_key.get());
        cert_spec branch{{{"C", "CH"}, {"O", "Espresso"}, {"CN", "branch"}},
                         "IP:203.0.113.1,DNS:branch.example.net,email:vpn@branch.example.net",
                         false,
                         -1,
                         365,
                         "critical,digitalSignature",
                         11};
        p.branch = make_cert(branch, p.branch_key.get(), p.ec_ca.get(), p.ec_ca_key.get());
        cert_spec expired = branch;
        expired.not_before_days = -400;
        expired.not_after_days = -30;
        expired.serial = 12;
        p.expired = make_cert(expired, p.branch_key.get(), p.ec_ca.get(), p.ec_ca_key.get());
        cert_spec stranger = branch;
        stranger.subject = {{"CN", "stranger"}};
        p.stranger = make_cert(stranger, p.branch_key.get(), p.other_ca.get(), p.other_ca_key.get());
        p.chained = make_cert(branch, p.branch_key.get(), p.inter.get(), p.inter_key.get());
        cert_spec no_signing = branch;
        no_signing.key_usage = "critical,keyEncipherment";
        p.no_signing = make_cert(no_signing, p.branch_key.get(), p.ec_ca.get(), p.ec_ca_key.get());
        cert_spec p384 = branch;
        p384.subject = {{"CN", "p384"}};
        p.p384 = make_cert(p384, p.p384_key.get(), p.ec_ca.get(), p.ec_ca_key.get());
        p.short_rsa = make_cert(branch, p.short_rsa_key.get(), p.ec_ca.get(), p.ec_ca_key.get());

        write_cert(p.dir / "rsa_ca.pem", {p.rsa_ca.get()});
        write_cert(p.dir / "ec_ca.pem", {p.ec_ca.get()});
        write_cert(p.dir / "other_ca.pem", {p.other_ca.get()});
        write_cert(p.dir / "hq.pem", {p.hq.get()});
        write_cert(p.dir / "branch.pem", {p.branch.get()});
        write_cert(p.dir / "chained.pem", {p.chained.get(), p.inter.get()});
        write_cert(p.dir / "p384.pem", {p.p384.get()});
        write_key(p.dir / "hq.key", p.hq_key.get());
        write_key(p.dir / "branch.key", p.branch_key.get());
        write_key(p.dir / "p384.key", p.p384_key.get());
        write_key(p.dir / "encrypted.key", p.branch_key.get(), "passphrase");
        write_text(p.dir / "oracle_ca.pem", oracle_ca_pem);
    }

    static void TearDownTestSuite()
    {
        if (pki != nullptr) {
            std::filesystem::remove_all(pki->dir);
            delete pki;
            pki = nullptr;
        }
    }

    // hq: RSA certificate, trusts the ECDSA CA (branch's). branch: ECDSA certificate, trusts the RSA CA.
    static pubkey_credentials load(const config::ike_auth_config& auth)
    {
        std::string error;
        auto c = pubkey_credentials::load(auth, error);
        EXPECT_TRUE(c.has_value()) << error;
        if (!c) {
            throw std::runtime_error(error);
        }
        return std::move(*c);
    }
    static pubkey_credentials hq() { return load(pki->auth("hq.pem", "hq.key", {"ec_ca.pem"})); }
    static pubkey_credentials branch() { return load(pki->auth("branch.pem", "branch.key", {"rsa_ca.pem"})); }

    const bytes octets = to_bytes("IKE_SA_INIT request | Nr | prf(SK_pi, RestOfIDi)");
};

// ---- round trips --------------------------------------------------------------------------------------

TEST_F(Pubkey, RsaAndEcdsaRoundTrip)
{
    auto h = hq(), b = branch();
    std::string error, why;
    auto hq_auth = h.sign(octets, {}, error);
    ASSERT_TRUE(hq_auth) << error;
    EXPECT_EQ(hq_auth->method, 14);
    EXPECT_EQ(aid_of(*hq_auth), hex(aid_sha256_rsa));
    EXPECT_EQ(signature_of(*hq_auth).size(), 256u);
    EXPECT_TRUE(b.verify({h.certificate_der()}, hq_ip, *hq_auth, octets, why)) << why;

    auto branch_auth = b.sign(octets, {}, error);
    ASSERT_TRUE(branch_auth) << error;
    EXPECT_EQ(aid_of(*branch_auth), hex(aid_ecdsa_sha256));
    EXPECT_TRUE(h.verify({b.certificate_der()}, branch_ip, *branch_auth, octets, why)) << why;
    // Also by FQDN, e-mail (case-insensitive) and subject DN.
    EXPECT_TRUE(h.verify({b.certificate_der()}, text_id(id_type::fqdn, "Branch.Example.NET"), *branch_auth,
                         octets, why))
        << why;
    EXPECT_TRUE(h.verify({b.certificate_der()}, text_id(id_type::rfc822_addr, "vpn@branch.example.net"),
                         *branch_auth, octets, why))
        << why;
    auto dn = encode_dn("C=CH, O=Espresso, CN=branch");
    ASSERT_TRUE(dn);
    EXPECT_TRUE(h.verify({b.certificate_der()}, id_payload{static_cast<uint8_t>(id_type::der_asn1_dn), *dn},
                         *branch_auth, octets, why))
        << why;
}

TEST_F(Pubkey, RsaPss)
{
    auto h = hq(), b = branch();
    h.use_rsa_pss(true);
    std::string error, why;
    auto auth = h.sign(octets, std::vector<uint16_t>{2, 3, 4}, error);
    ASSERT_TRUE(auth) << error;
    EXPECT_EQ(aid_of(*auth), hex(aid_pss_sha256));
    EXPECT_TRUE(b.verify({h.certificate_der()}, hq_ip, *auth, octets, why)) << why;
    auto tampered = octets;
    tampered[0] ^= 1;
    EXPECT_FALSE(b.verify({h.certificate_der()}, hq_ip, *auth, tampered, why));
}

TEST_F(Pubkey, HashFromPeersSignatureHashAlgorithms)
{
    auto h = hq(), b = branch();
    std::string error, why;
    auto sha512 = h.sign(octets, std::vector<uint16_t>{4}, error);
    ASSERT_TRUE(sha512) << error;
    EXPECT_EQ(aid_of(*sha512), hex(aid_sha512_rsa));
    EXPECT_TRUE(b.verify({h.certificate_der()}, hq_ip, *sha512, octets, why)) << why;
    // SHA-256 preferred for RSA when offered; unknown ids (5 Identity) are skipped.
    auto sha256 = h.sign(octets, std::vector<uint16_t>{5, 4, 2}, error);
    ASSERT_TRUE(sha256) << error;
    EXPECT_EQ(aid_of(*sha256), hex(aid_sha256_rsa));
    // A peer that only knows SHA-1: no signature.
    EXPECT_FALSE(h.sign(octets, std::vector<uint16_t>{1}, error));
    EXPECT_NE(error.find("SHA-2"), std::string::npos) << error;
    // P-384 key: SHA-384.
    auto p = load(pki->auth("p384.pem", "p384.key", {"rsa_ca.pem"}));
    auto sha384 = p.sign(octets, std::vector<uint16_t>{2, 3, 4}, error);
    ASSERT_TRUE(sha384) << error;
    EXPECT_EQ(aid_of(*sha384), hex(aid_ecdsa_sha384));
    EXPECT_TRUE(h.verify({p.certificate_der()}, branch_ip, *sha384, octets, why)) << why;

    EXPECT_EQ(pubkey_credentials::supported_hash_algorithms(), (bytes{0, 2, 0, 3, 0, 4}));
    EXPECT_EQ(pubkey_credentials::parse_hash_algorithms(bytes{0, 1, 0, 2, 0, 5, 0}),
              (std::vector<uint16_t>{1, 2, 5}));
}

TEST_F(Pubkey, IntermediateFromCertPayloads)
{
    auto h = hq();
    auto c = load(pki->auth("chained.pem", "branch.key", {"rsa_ca.pem"}));
    ASSERT_EQ(c.intermediate_certificates_der().size(), 1u);
    std::string error, why;
    auto auth = c.sign(octets, {}, error);
    ASSERT_TRUE(auth) << error;
    std::vector<bytes> certs{c.certificate_der(), c.intermediate_certificates_der()[0]};
    EXPECT_TRUE(h.verify(certs, branch_ip, *auth, octets, why)) << why;
    // Without the intermediate, the chain does not reach our CA.
    EXPECT_FALSE(h.verify({c.certificate_der()}, branch_ip, *auth, octets, why));
    EXPECT_NE(why.find("Intermediate CA"), std::string::npos) << why;
}

// ---- refusals -----------------------------------------------------------------------------------------

TEST_F(Pubkey, RefusesExpiredCertificate)
{
    auto h = hq();
    std::string why;
    auth_payload auth =
        digital_signature(hex(aid_ecdsa_sha256), evp_sign(pki->branch_key.get(), EVP_sha256(), octets));
    ASSERT_TRUE(h.verify({der(pki->branch.get())}, branch_ip, auth, octets, why)) << why;
    EXPECT_FALSE(h.verify({der(pki->expired.get())}, branch_ip, auth, octets, why));
    EXPECT_NE(why.find("expired on "), std::string::npos) << why;
    EXPECT_NE(why.find("CN=branch"), std::string::npos) << why;
    EXPECT_NE(why.find(" UTC"), std::string::npos) << why;
}

TEST_F(Pubkey, RefusesUnknownCa)
{
    auto h = hq();
    std::string why;
    auth_payload auth =
        digital_signature(hex(aid_ecdsa_sha256), evp_sign(pki->branch_key.get(), EVP_sha256(), octets));
    EXPECT_FALSE(h.verify({der(pki->stranger.get())}, branch_ip, auth, octets, why));
    EXPECT_NE(why.find("issued by 'O=Elsewhere, CN=Other CA'"), std::string::npos) << why;
    EXPECT_NE(why.find("not one of the trusted CAs ('O=Espresso test, CN=ECDSA CA')"), std::string::npos)
        << why;
    // Our own RSA CA is not trusted by hq either (it trusts branch's CA only).
    EXPECT_FALSE(h.verify({der(pki->hq.get())}, hq_ip, auth, octets, why));
}

TEST_F(Pubkey, RefusesIdentityNotInCertificate)
{
    auto h = hq(), b = branch();
    std::string error, why;
    auto auth = b.sign(octets, {}, error);
    ASSERT_TRUE(auth) << error;
    EXPECT_FALSE(h.verify({b.certificate_der()}, ipv4_id({203, 0, 113, 9}), *auth, octets, why));
    EXPECT_NE(why.find("'203.0.113.9'"), std::string::npos) << why;
    EXPECT_NE(why.find("IP:203.0.113.1"), std::string::npos) << why;
    EXPECT_NE(why.find("C=CH, O=Espresso, CN=branch"), std::string::npos) << why;
    EXPECT_FALSE(
        h.verify({b.certificate_der()}, text_id(id_type::fqdn, "hq.example.net"), *auth, octets, why));
    EXPECT_FALSE(h.verify({b.certificate_der()}, text_id(id_type::key_id, "branch"), *auth, octets, why));
    auto other_dn = encode_dn("C=CH, O=Espresso, CN=hq");
    ASSERT_TRUE(other_dn);
    EXPECT_FALSE(h.verify({b.certificate_der()},
                          id_payload{static_cast<uint8_t>(id_type::der_asn1_dn), *other_dn}, *auth, octets,
                          why));
    EXPECT_NE(why.find("not the certificate's subject"), std::string::npos) << why;
    // The same for our own identity, checked at configuration load.
    EXPECT_TRUE(b.certificate_holds(branch_ip, why)) << why;
    EXPECT_FALSE(b.certificate_holds(hq_ip, why));
}

TEST_F(Pubkey, RefusesTamperedOctetsAndSignature)
{
    auto h = hq(), b = branch();
    std::string error, why;
    for (auto* signer : {&h, &b}) {
        auto* verifier = signer == &h ? &b : &h;
        const id_payload& id = signer == &h ? hq_ip : branch_ip;
        auto auth = signer->sign(octets, {}, error);
        ASSERT_TRUE(auth) << error;
        auto tampered = octets;
        tampered.back() ^= 0x80;
        EXPECT_FALSE(verifier->verify({signer->certificate_der()}, id, *auth, tampered, why));
        EXPECT_NE(why.find("does not verify"), std::string::npos) << why;
        auto bad = *auth;
        bad.data[bad.data.size() - 2] ^= 1;
        EXPECT_FALSE(verifier->verify({signer->certificate_der()}, id, bad, octets, why));
        // Truncated and malformed AUTH payloads.
        auth_payload empty{14, {}};
        EXPECT_FALSE(verifier->verify({signer->certificate_der()}, id, empty, octets, why));
        auth_payload cut{14, bytes(auth->data.begin(), auth->data.begin() + 5)};
        EXPECT_FALSE(verifier->verify({signer->certificate_der()}, id, cut, octets, why));
        auth_payload psk{2, bytes(32, 0)};
        EXPECT_FALSE(verifier->verify({signer->certificate_der()}, id, psk, octets, why));
        EXPECT_NE(why.find("pre-shared key"), std::string::npos) << why;
    }
    // A signature from the right algorithm but announced for the wrong key type.
    auto ecdsa_on_rsa =
        digital_signature(hex(aid_ecdsa_sha256), evp_sign(pki->hq_key.get(), EVP_sha256(), octets));
    EXPECT_FALSE(b.verify({h.certificate_der()}, hq_ip, ecdsa_on_rsa, octets, why));
    EXPECT_NE(why.find("RSA 2048-bit"), std::string::npos) << why;
    // No CERT payload, or garbage in it.
    auto good = h.sign(octets, {}, error);
    ASSERT_TRUE(good);
    EXPECT_FALSE(b.verify({}, hq_ip, *good, octets, why));
    EXPECT_FALSE(b.verify({bytes{0x30, 0x03, 0x02, 0x01, 0x00}}, hq_ip, *good, octets, why));
}

TEST_F(Pubkey, RefusesSha1UnlessAllowed)
{
    auto h = hq(), b = branch();
    std::string why;
    bytes sha1_sig = evp_sign(pki->hq_key.get(), EVP_sha1(), octets);
    auth_payload rfc7427 = digital_signature(hex(aid_sha1_rsa), sha1_sig);
    auth_payload method1{static_cast<uint8_t>(auth_method::rsa_sig), sha1_sig};
    EXPECT_FALSE(b.verify({h.certificate_der()}, hq_ip, rfc7427, octets, why));
    EXPECT_NE(why.find("SHA-1"), std::string::npos) << why;
    EXPECT_FALSE(b.verify({h.certificate_der()}, hq_ip, method1, octets, why));
    EXPECT_NE(why.find("SHA-1"), std::string::npos) << why;
    b.allow_sha1(true);
    EXPECT_TRUE(b.verify({h.certificate_der()}, hq_ip, rfc7427, octets, why)) << why;
    EXPECT_TRUE(b.verify({h.certificate_der()}, hq_ip, method1, octets, why)) << why;
}

TEST_F(Pubkey, Rfc4754EcdsaMethods)
{
    auto h = hq();
    std::string why;
    bytes der_sig = evp_sign(pki->branch_key.get(), EVP_sha256(), octets);
    const unsigned char* p = der_sig.data();
    ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_sig.size()));
    ASSERT_NE(sig, nullptr);
    bytes raw(64);
    BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw.data(), 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw.data() + 32, 32);
    ECDSA_SIG_free(sig);
    auth_payload m9{static_cast<uint8_t>(auth_method::ecdsa_256), raw};
    EXPECT_TRUE(h.verify({der(pki->branch.get())}, branch_ip, m9, octets, why)) << why;
    auth_payload m10{static_cast<uint8_t>(auth_method::ecdsa_384), raw};
    EXPECT_FALSE(h.verify({der(pki->branch.get())}, branch_ip, m10, octets, why));
    EXPECT_NE(why.find("ECDSA P-256"), std::string::npos) << why;
    raw[40] ^= 1;
    auth_payload bad{static_cast<uint8_t>(auth_method::ecdsa_256), raw};
    EXPECT_FALSE(h.verify({der(pki->branch.get())}, branch_ip, bad, octets, why));
}

TEST_F(Pubkey, RefusesWeakKeysAndWrongKeyUsage)
{
    auto h = hq();
    std::string why;
    auth_payload auth =
        digital_signature(hex(aid_ecdsa_sha256), evp_sign(pki->branch_key.get(), EVP_sha256(), octets));
    EXPECT_FALSE(h.verify({der(pki->no_signing.get())}, branch_ip, auth, octets, why));
    EXPECT_NE(why.find("digitalSignature"), std::string::npos) << why;
    auth_payload rsa1024 =
        digital_signature(hex(aid_sha256_rsa), evp_sign(pki->short_rsa_key.get(), EVP_sha256(), octets));
    EXPECT_FALSE(h.verify({der(pki->short_rsa.get())}, branch_ip, rsa1024, octets, why));
    EXPECT_NE(why.find("1024"), std::string::npos) << why;
}

TEST_F(Pubkey, LoadErrors)
{
    std::string error;
    EXPECT_FALSE(pubkey_credentials::load(pki->auth("hq.pem", "branch.key", {"ec_ca.pem"}), error));
    EXPECT_NE(error.find("does not belong to the certificate"), std::string::npos) << error;
    EXPECT_FALSE(pubkey_credentials::load(pki->auth("branch.pem", "encrypted.key", {"ec_ca.pem"}), error));
    EXPECT_NE(error.find("encrypted"), std::string::npos) << error;
    EXPECT_FALSE(pubkey_credentials::load(pki->auth("missing.pem", "hq.key", {"ec_ca.pem"}), error));
    EXPECT_NE(error.find("missing.pem"), std::string::npos) << error;
    EXPECT_FALSE(pubkey_credentials::load(pki->auth("hq.pem", "hq.key", {"hq.pem"}), error));
    EXPECT_NE(error.find("not a CA certificate"), std::string::npos) << error;
    EXPECT_FALSE(pubkey_credentials::load(pki->auth("hq.pem", "hq.key", {"hq.key"}), error));
    EXPECT_FALSE(pubkey_credentials::load(pki->auth("hq.pem", "hq.key", {}), error));
    EXPECT_NE(error.find("no CA"), std::string::npos) << error;
    // Never the key itself in a message.
    EXPECT_EQ(error.find("PRIVATE KEY"), std::string::npos);
}

// ---- oracles ------------------------------------------------------------------------------------------

TEST_F(Pubkey, VerifiesSignaturesMadeByOpensslCli)
{
    // oracle_ca.pem as our CA; `openssl dgst -sha256 -sign` signatures over oracle_octets.
    auto v = load(pki->auth("hq.pem", "hq.key", {"oracle_ca.pem"}));
    auto rsa = from_pem(oracle_rsa_pem), ec = from_pem(oracle_ec_pem);
    ASSERT_TRUE(rsa && ec);
    bytes data = to_bytes(oracle_octets);
    std::string why;
    auth_payload rsa_auth = digital_signature(hex(aid_sha256_rsa), hex(oracle_rsa_sha256_sig_hex));
    auth_payload ec_auth = digital_signature(hex(aid_ecdsa_sha256), hex(oracle_ec_sha256_sig_hex));
    EXPECT_TRUE(v.verify({der(rsa.get())}, hq_ip, rsa_auth, data, why)) << why;
    EXPECT_TRUE(v.verify({der(ec.get())}, hq_ip, ec_auth, data, why)) << why;
    EXPECT_TRUE(v.verify({der(rsa.get())}, text_id(id_type::fqdn, "hq.example.net"), rsa_auth, data, why))
        << why;
    // The signatures are bound to their keys and octets.
    EXPECT_FALSE(v.verify({der(ec.get())}, hq_ip, rsa_auth, data, why));
    EXPECT_FALSE(v.verify({der(rsa.get())}, hq_ip, rsa_auth, to_bytes("other octets"), why));
    // CERTREQ: SHA-1 of the CA's SubjectPublicKeyInfo, as `openssl pkey -pubin -outform DER | openssl dgst
    // -sha1`.
    ASSERT_EQ(v.certreq_hashes().size(), 1u);
    EXPECT_EQ(v.certreq_hashes()[0], hex(oracle_ca_spki_sha1_hex));
}

TEST_F(Pubkey, EncodeDnMatchesOpensslCliSubject)
{
    // The oracle certificates' subject, made by `openssl req -subj` with string_mask = default
    // (PrintableString, IA5String for emailAddress), which is how strongSwan encodes the same text.
    auto rsa = from_pem(oracle_rsa_pem);
    ASSERT_TRUE(rsa);
    const X509_NAME* subject = X509_get_subject_name(rsa.get());
    int n = i2d_X509_NAME(subject, nullptr);
    bytes expected(static_cast<size_t>(n));
    unsigned char* p = expected.data();
    i2d_X509_NAME(subject, &p);
    EXPECT_EQ(encode_dn("C=CH, O=Espresso, OU=VPN gateways, CN=hq.example.net, E=vpn@example.net"), expected);
    EXPECT_EQ(encode_dn("/C=CH/O=Espresso/OU=VPN gateways/CN=hq.example.net/emailAddress=vpn@example.net"),
              expected);
    EXPECT_EQ(encode_dn("  c = CH ,o=Espresso,  OU=VPN gateways  , cn=hq.example.net,email=vpn@example.net"),
              expected);
    // An ID_DER_ASN1_DN made from the text is bound to the oracle certificate.
    auto v = load(pki->auth("hq.pem", "hq.key", {"oracle_ca.pem"}));
    std::string why;
    auth_payload rsa_auth = digital_signature(hex(aid_sha256_rsa), hex(oracle_rsa_sha256_sig_hex));
    EXPECT_TRUE(v.verify({der(rsa.get())}, id_payload{static_cast<uint8_t>(id_type::der_asn1_dn), expected},
                         rsa_auth, to_bytes(oracle_octets), why))
        << why;
}

TEST_F(Pubkey, EncodeDnTypesAndErrors)
{
    // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, UTF8String "Zürich" } } }: not printable -> UTF8String.
    EXPECT_EQ(encode_dn("CN=Z\xc3\xbcrich"), hex("30123110300e0603550403"
                                                 "0c075ac3bc72696368"));
    // PrintableString "hq".
    EXPECT_EQ(encode_dn("CN=hq"), hex("300d310b300906035504031302"
                                      "6871"));
    // '_' is not in PrintableString's alphabet (X.680 §41.4).
    EXPECT_EQ(encode_dn("CN=a_b"), hex("300e310c300a06035504030c03615f62"));
    EXPECT_FALSE(encode_dn(""));
    EXPECT_FALSE(encode_dn("hq.example.net"));
    EXPECT_FALSE(encode_dn("XX=1, CN=hq"));
    EXPECT_FALSE(encode_dn("CN=hq,,O=x"));
}

TEST_F(Pubkey, DnEqualIgnoresStringTypes)
{
    // hq's subject was written as UTF8String (as `openssl req` does); encode_dn writes PrintableString.
    auto h = hq();
    auto text = encode_dn("C=CH, O=Espresso, CN=hq");
    ASSERT_TRUE(text);
    EXPECT_NE(*text, h.subject_der());
    EXPECT_TRUE(dn_equal(*text, h.subject_der()));
    EXPECT_TRUE(dn_equal(*encode_dn("c=ch,o=espresso,cn=HQ"), h.subject_der()));
    EXPECT_FALSE(dn_equal(*encode_dn("C=CH, O=Espresso, CN=branch"), h.subject_der()));
    EXPECT_FALSE(dn_equal(*encode_dn("O=Espresso, C=CH, CN=hq"), h.subject_der())); // order matters
    EXPECT_FALSE(dn_equal(bytes{0x30, 0x01}, h.subject_der()));
    EXPECT_EQ(dn_to_string(h.subject_der()), "C=CH, O=Espresso, CN=hq");
    EXPECT_EQ(dn_to_string(bytes{0x30}), "(malformed DN)");
}

TEST_F(Pubkey, OpensslCliVerifiesOurSignatures)
{
    if (!have_openssl_cli()) {
        GTEST_SKIP() << "no openssl binary";
    }
    auto h = hq(), b = branch();
    std::string error;
    write_text(pki->dir / "octets.bin", std::string(octets.begin(), octets.end()));
    struct signer {
        pubkey_credentials* creds;
        X509* cert;
        bool pss;
        const char* name;
    };
    for (auto s : {signer{&h, pki->hq.get(), false, "rsa"}, signer{&h, pki->hq.get(), true, "pss"},
                   signer{&b, pki->branch.get(), false, "ecdsa"}}) {
        s.creds->use_rsa_pss(s.pss);
        auto auth = s.creds->sign(octets, {}, error);
        ASSERT_TRUE(auth) << error;
        auto sig = signature_of(*auth);
        write_text(pki->dir / "sig.bin", std::string(sig.begin(), sig.end()));
        {
            test_bio bio(BIO_new_file((pki->dir / "pub.pem").c_str(), "w"));
            PEM_write_bio_PUBKEY(bio.get(), X509_get0_pubkey(s.cert));
        }
        std::string cmd = "openssl dgst -sha256 -verify " + pki->path("pub.pem") + " -signature " +
                          pki->path("sig.bin") +
                          (s.pss ? " -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32" : "") + " " +
                          pki->path("octets.bin") + " >/dev/null 2>&1";
        EXPECT_EQ(std::system(cmd.c_str()), 0) << s.name << ": " << cmd;
    }
}

} // namespace
} // namespace espresso::cp
