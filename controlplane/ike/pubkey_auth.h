// Certificate (public key) authentication for IKE_AUTH: RFC 7296 §2.15 (what is signed), §3.6 CERT,
// §3.7 CERTREQ, §3.8 AUTH, and RFC 7427 Digital Signature authentication (auth method 14).
//
// One pubkey_credentials per peer configured with `auth: method: pubkey`: our certificate, our private
// key and the CAs we trust for that peer, loaded once from the PEM files named in the configuration.
// The IKE_AUTH code (exchange_auth.cpp) asks it for the CERT/CERTREQ payload bodies, for our AUTH
// payload (sign) and to check the peer's CERT + ID + AUTH (verify). Which octets are signed is the
// caller's business: the same signed_octets() as PSK (ike_crypto.h), with SK_pi/SK_pr (§2.15).
//
// Policy (RFC 8247 §3.2): SHA-2 only (SHA-256/384/512); SHA-1 signatures (auth method 1, or method 14
// with sha1WithRSAEncryption / ecdsa-with-SHA1) are refused unless allow_sha1(true). RSA keys shorter
// than 2048 bits are refused, ECDSA on P-256/P-384/P-521 only. No revocation checks (CRL/OCSP).
//
// Nothing here logs; nothing prints key material. The private key lives in an EVP_PKEY that OpenSSL
// wipes when it is freed (RSA/EC key components are cleared with BN_clear_free).
//
// Thread safety: an object is used by one thread (the shard thread that loaded it); nothing is shared
// between objects. encode_dn and the static functions are reentrant.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "espresso/config/ike.h"
#include "espresso/cp/ike_message.h"

namespace espresso::cp {

// RFC 7427 §7 / IANA "IKEv2 Hash Algorithms" (the SIGNATURE_HASH_ALGORITHMS notify's values).
enum class signature_hash : uint16_t { sha1 = 1, sha2_256 = 2, sha2_384 = 3, sha2_512 = 4 };

// CERT / CERTREQ encoding "X.509 Certificate - Signature" (RFC 7296 §3.6).
inline constexpr uint8_t cert_encoding_x509_signature = 4;

class pubkey_credentials {
public:
    // Reads auth.certificate (PEM: our end-entity certificate first; any further certificates in the
    // file are intermediates, sent as extra CERT payloads), auth.private_key (unencrypted PEM, PKCS#8
    // or traditional; an encrypted key is refused rather than prompting) and every auth.ca file (each
    // may hold several CA certificates). Checks that the key belongs to the certificate and is RSA >=
    // 2048 bits or ECDSA P-256/384/521. Called by the daemon when it (re)loads the configuration.
    // On failure returns nullopt and `error` names the file and the problem.
    static std::optional<pubkey_credentials> load(const config::ike_auth_config& auth, std::string& error);

    // Our end-entity certificate, DER: the body of the first CERT payload (encoding 4).
    const bytes& certificate_der() const noexcept { return certificate_der_; }
    // Intermediate CA certificates from the certificate file, DER, in file order: one CERT payload each,
    // after ours (§3.6). Usually empty.
    const std::vector<bytes>& intermediate_certificates_der() const noexcept { return intermediates_der_; }
    // Our certificate's subject, DER (X.501 Name): a DN local-id can be sent as this (ID_DER_ASN1_DN).
    const bytes& subject_der() const noexcept { return subject_der_; }

    // CERTREQ (§3.7): the SHA-1 hash of each trusted CA's SubjectPublicKeyInfo, 20 bytes each, in the
    // order of the configuration. The caller concatenates them into one CERTREQ payload (encoding 4).
    std::vector<bytes> certreq_hashes() const { return ca_key_hashes_; }

    // True when `own_id` (the ID payload we send) is bound to our certificate, by the same rules
    // verify() applies to the peer; otherwise `why` says what the certificate holds. The daemon calls it
    // at configuration load to refuse a local-id the peer would reject.
    bool certificate_holds(const id_payload& own_id, std::string& why) const;

    // Signs `signed_octets` (RFC 7296 §2.15: RealMessage | Nonce(peer) | prf(SK_p, RestOfID)) and returns
    // our AUTH payload: method 14 (RFC 7427 §3), data = AlgorithmIdentifier length (1 byte) |
    // AlgorithmIdentifier (DER) | signature (RSA: PKCS#1 v1.5, or RSASSA-PSS with salt = hash length if
    // use_rsa_pss(true); ECDSA: DER Ecdsa-Sig-Value).
    // `peer_hash_algorithms`: the values of the peer's SIGNATURE_HASH_ALGORITHMS notify
    // (parse_hash_algorithms); empty when it sent none, then SHA-256 is used. Otherwise the hash that
    // suits our key (RSA, P-256: SHA-256; P-384: SHA-384; P-521: SHA-512) if the peer announced it, else
    // the first SHA-2 hash the peer announced. If the peer announced no SHA-2 hash, returns nullopt with
    // `error` set. Called by the IKE_AUTH code for each IKE_AUTH request (initiator) or response
    // (responder).
    std::optional<auth_payload> sign(std::span<const uint8_t> signed_octets,
                                     std::span<const uint16_t> peer_hash_algorithms,
                                     std::string& error) const;

    // Authenticates the peer (RFC 7296 §2.15, §3.6, RFC 7427):
    //  1. peer_certs_der[0] is the end-entity certificate (the first CERT payload), the others are
    //     untrusted intermediates; the chain must end at one of our CAs (X509_verify_cert: signatures,
    //     validity dates, CA basic constraints, path length). A configured intermediate is accepted as
    //     a trust anchor. If the end-entity certificate has a keyUsage, it must allow digitalSignature.
    //  2. peer_id (IDi or IDr) must be bound to the certificate: ID_IPV4_ADDR/ID_IPV6_ADDR -> a
    //     subjectAltName iPAddress, ID_FQDN -> SAN dNSName, ID_RFC822_ADDR -> SAN rfc822Name (both
    //     case-insensitive), ID_DER_ASN1_DN -> the subject (compared as OpenSSL canonical names: string
    //     type, case and spacing are ignored). ID_KEY_ID is refused.
    //  3. auth must verify over signed_octets with the certificate's key: method 14 with the algorithm
    //     its AlgorithmIdentifier names (RSA PKCS#1 v1.5, RSASSA-PSS, ECDSA; the key type must fit), or
    //     9/10/11 (RFC 4754: ECDSA P-256/SHA-256, P-384/SHA-384, P-521/SHA-512, r | s), or 1 (RSA
    //     PKCS#1 v1.5 SHA-1, only with allow_sha1). Shared key (2) is refused here.
    // Returns false with `why` set to one sentence for the operator (no trailing period), e.g. "the
    // peer's certificate 'O=X, CN=y' expired on 2024-01-31 12:00:00 UTC". Called by the IKE_AUTH code
    // once per IKE_AUTH message from the peer; the CERT payloads are the peer's, in message order.
    bool verify(const std::vector<bytes>& peer_certs_der, const id_payload& peer_id, const auth_payload& auth,
                std::span<const uint8_t> signed_octets, std::string& why) const;

    // Policy switches, set once after load() (defaults: both false).
    // allow_sha1: accept SHA-1 signatures from the peer (the peer config's allow-legacy).
    void allow_sha1(bool allow) noexcept { allow_sha1_ = allow; }
    // use_rsa_pss: sign with RSASSA-PSS instead of PKCS#1 v1.5 (RSA keys only).
    void use_rsa_pss(bool use) noexcept { rsa_pss_ = use; }

    // SIGNATURE_HASH_ALGORITHMS notify data (RFC 7427 §4): the 2-byte hash ids we accept, big-endian:
    // SHA2-256, SHA2-384, SHA2-512. Both sides send it in IKE_SA_INIT.
    static bytes supported_hash_algorithms();
    // The peer's SIGNATURE_HASH_ALGORITHMS notify data as a list; a trailing odd byte is ignored.
    static std::vector<uint16_t> parse_hash_algorithms(std::span<const uint8_t> notify_data);

    pubkey_credentials(pubkey_credentials&&) noexcept;
    pubkey_credentials& operator=(pubkey_credentials&&) noexcept;
    pubkey_credentials(const pubkey_credentials&) = delete;
    pubkey_credentials& operator=(const pubkey_credentials&) = delete;
    ~pubkey_credentials();

private:
    pubkey_credentials();
    struct openssl_state; // EVP_PKEY (ours), X509 (ours), X509_STORE (trusted CAs)

    std::unique_ptr<openssl_state> ssl_;
    bytes certificate_der_;
    std::vector<bytes> intermediates_der_;
    bytes subject_der_;
    std::vector<bytes> ca_key_hashes_;
    std::vector<std::string> ca_names_; // for "not one of our CAs" messages
    bool allow_sha1_ = false;
    bool rsa_pss_ = false;
};

// A text DN as strongSwan writes it ("C=CH, O=Espresso, CN=hq", or "/C=CH/O=Espresso/CN=hq") to the DER
// X.501 Name for ID_DER_ASN1_DN, encoded as strongSwan's identification_create_from_string does: one
// RDN per SET in the order written, PrintableString when the value is printable (UTF8String otherwise),
// IA5String for E/Email/emailAddress; attribute names are case-insensitive (CN, C, O, OU, L, ST, DC,
// E, SN, serialNumber, UID, ...); spaces around names and values are dropped. nullopt if an attribute
// name is unknown or the text is not a DN. Called by the daemon when it builds our ID payload.
std::optional<bytes> encode_dn(const std::string& text);

// True when two DER DNs name the same subject as OpenSSL canonicalizes them (X509_NAME_cmp: string types,
// case and spacing ignored), so "C=CH, O=Espresso, CN=hq" from encode_dn (PrintableString) equals a
// certificate subject written as UTF8String by `openssl req`. False if either is not a DER DN. Called by
// the IKE_AUTH code to compare an ID_DER_ASN1_DN with the configured remote-id: compare DNs with this,
// never byte by byte.
bool dn_equal(std::span<const uint8_t> a, std::span<const uint8_t> b);

// A DER DN as text for logs ("C=CH, O=Espresso, CN=hq"); "(malformed DN)" if it does not parse.
std::string dn_to_string(std::span<const uint8_t> der);

} // namespace espresso::cp
