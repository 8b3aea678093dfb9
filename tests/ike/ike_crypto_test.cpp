// Tests for controlplane/ike/crypto (ike_crypto.h) against vectors written by others:
//   RFC 4231 (HMAC-SHA-256/384/512) and RFC 2202 (HMAC-SHA-1) through prf();
//   NIST CAVP SP 800-135 IKEv2 KDF vectors (SKEYSEED, DKM, Child SA DKM, SKEYSEED rekey), as carried
//   by Cisco's fips_kdf_ikev2.c and libreswan (SHA-1) and NSS gtests/common/testvectors
//   ike-sha256/384-vectors.h ("from NIST samples");
//   RFC 5903 §8 (ECP 256/384/521), RFC 7748 §6.1 (X25519);
//   the GCM specification's Test Case 4 (McGrew & Viega) for the SK payload's GCM nonce layout;
//   and, for sk_cipher, an independent EVP code path written here.
// Suite names contain Crypto, Prf, Dh or Sk so that --gtest_filter can select them.
#include "espresso/cp/ike_crypto.h"

#include <gtest/gtest.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <string>
#include <string_view>
#include <tuple>

namespace espresso::cp {
namespace {

bytes hex(std::string_view s)
{
    bytes out;
    auto nibble = [](char c) -> uint8_t {
        if (c >= '0' && c <= '9') {
            return static_cast<uint8_t>(c - '0');
        }
        if (c >= 'a' && c <= 'f') {
            return static_cast<uint8_t>(c - 'a' + 10);
        }
        if (c >= 'A' && c <= 'F') {
            return static_cast<uint8_t>(c - 'A' + 10);
        }
        ADD_FAILURE() << "bad hex digit " << c;
        return 0;
    };
    std::string clean;
    for (char c : s) {
        if (c != ' ' && c != '\n') {
            clean.push_back(c);
        }
    }
    EXPECT_EQ(clean.size() % 2, 0u);
    for (size_t i = 0; i + 1 < clean.size(); i += 2) {
        out.push_back(static_cast<uint8_t>(nibble(clean[i]) << 4 | nibble(clean[i + 1])));
    }
    return out;
}

bytes to_bytes(std::span<const uint8_t> s) { return bytes(s.begin(), s.end()); }
bytes text(std::string_view s) { return bytes(s.begin(), s.end()); }
bytes repeat(uint8_t b, size_t n) { return bytes(n, b); }
bytes cat(std::initializer_list<std::span<const uint8_t>> parts)
{
    bytes out;
    for (auto p : parts) {
        out.insert(out.end(), p.begin(), p.end());
    }
    return out;
}

// Deterministic rng: repeats `pattern`.
class fixed_rng final : public rng {
public:
    explicit fixed_rng(bytes pattern) : pattern_(std::move(pattern)) {}
    void fill(std::span<uint8_t> out) override
    {
        for (size_t i = 0; i < out.size(); ++i) {
            out[i] = pattern_[i % pattern_.size()];
        }
    }

private:
    bytes pattern_;
};

// ------------------------------------------------------------------------------------------------
// secret_bytes

TEST(CryptoSecretBytes, CopiesMovesAndSlices)
{
    const bytes data = {1, 2, 3, 4, 5};
    secret_bytes a(data);
    secret_bytes b = a;
    EXPECT_EQ(to_bytes(b.view()), data);
    secret_bytes c(std::move(a));
    EXPECT_TRUE(a.empty()); // NOLINT(bugprone-use-after-move): moved-from state is specified here
    EXPECT_EQ(to_bytes(c.view()), data);
    b = secret_bytes(3);
    EXPECT_EQ(to_bytes(b.view()), bytes(3, 0));
    b = c;
    EXPECT_EQ(to_bytes(b.slice(1, 3).view()), (bytes{2, 3, 4}));
    c = std::move(b);
    EXPECT_EQ(c.size(), 5u);
}

TEST(CryptoSizes, TransformSizes)
{
    EXPECT_EQ(prf_output_size(prf_id::hmac_sha1), 20u);
    EXPECT_EQ(prf_output_size(prf_id::hmac_sha2_512), 64u);
    EXPECT_FALSE(is_supported(static_cast<prf_id>(4))); // AES128_XCBC: not implemented
    EXPECT_EQ(integ_key_size(integ_id::hmac_sha2_384_192), 48u);
    EXPECT_EQ(integ_icv_size(integ_id::hmac_sha1_96), 12u);
    EXPECT_EQ(integ_icv_size(integ_id::hmac_sha2_512_256), 32u);
    EXPECT_EQ(encr_keymat_size(encr_id::aes_cbc, 256), 32u);
    EXPECT_EQ(encr_keymat_size(encr_id::aes_gcm_16, 128), 20u);
    EXPECT_EQ(encr_keymat_size(encr_id::aes_gcm_16, 100), 0u);
    EXPECT_TRUE(is_aead(encr_id::aes_gcm_16));
    EXPECT_FALSE(is_aead(encr_id::aes_cbc));
}

// ------------------------------------------------------------------------------------------------
// prf(): RFC 4231 §4 test cases (SHA-2) and RFC 2202 §3 (SHA-1).

struct hmac_case {
    bytes key, data;
    std::string_view sha1, sha256, sha384, sha512;
};

TEST(PrfHmac, Rfc4231AndRfc2202Vectors)
{
    const std::array<hmac_case, 6> cases = {{
        {repeat(0x0b, 20), text("Hi There"), "b617318655057264e28bc0b6fb378c8ef146be00",
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
         "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
         "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4"
         "be9d914eeb61f1702e696c203a126854"},
        {text("Jefe"), text("what do ya want for nothing?"), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
         "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
         "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fd"
         "caeab1a34d4a6b4b636e070a38bce737"},
        {repeat(0xaa, 20), repeat(0xdd, 50), "125d7342b9ac11cd91a39af48aa17b4f63f175d3",
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
         "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b2a5ab39dc13814b94e3ab6e101a34f27",
         "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39bf3e848279a722c806b485a47e67c807"
         "b946a337bee8942674278859e13292fb"},
        {hex("0102030405060708090a0b0c0d0e0f10111213141516171819"), repeat(0xcd, 50),
         "4c9007f4026250c6bc8414f9bf50c86c2d7235da",
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
         "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e6801dd23c4a7d679ccf8a386c674cffb",
         "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3dba91ca5c11aa25eb4d679275cc5788063"
         "a5f19741120c4f2de2adebeb10a298dd"},
        // Test case 6: a key longer than the block size (SHA-1: RFC 2202 case 6 uses 80 bytes).
        {repeat(0xaa, 131), text("Test Using Larger Than Block-Size Key - Hash Key First"), "",
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
         "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952",
         "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215d6a1e52"
         "95e64f73f63f0aec8b915a985d786598"},
        {repeat(0xaa, 80), text("Test Using Larger Than Block-Size Key - Hash Key First"),
         "aa4ae5e15272d00e95705637ce8a3b55ed402112", "", "", ""},
    }};
    for (size_t i = 0; i < cases.size(); ++i) {
        const auto& c = cases[i];
        SCOPED_TRACE("case " + std::to_string(i + 1));
        if (!c.sha1.empty()) {
            EXPECT_EQ(prf(prf_id::hmac_sha1, c.key, c.data), hex(c.sha1));
        }
        if (!c.sha256.empty()) {
            EXPECT_EQ(prf(prf_id::hmac_sha2_256, c.key, c.data), hex(c.sha256));
            EXPECT_EQ(prf(prf_id::hmac_sha2_384, c.key, c.data), hex(c.sha384));
            EXPECT_EQ(prf(prf_id::hmac_sha2_512, c.key, c.data), hex(c.sha512));
        }
    }
    // RFC 4231 §4.7 (test case 7): large key and large data.
    const bytes data7 =
        text("This is a test using a larger than block-size key and a larger than block-size data. "
             "The key needs to be hashed before being used by the HMAC algorithm.");
    EXPECT_EQ(prf(prf_id::hmac_sha2_256, repeat(0xaa, 131), data7),
              hex("9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"));
    EXPECT_EQ(
        prf(prf_id::hmac_sha2_512, repeat(0xaa, 131), data7),
        hex("e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944b6022cac3c4982b10d5eeb55c3e4de15"
            "134676fb6de0446065c97440fa8c6a58"));
    // RFC 4231 §4.6 (test case 5) gives only the first 128 bits.
    const bytes mac5 = prf(prf_id::hmac_sha2_256, repeat(0x0c, 20), text("Test With Truncation"));
    EXPECT_EQ(bytes(mac5.begin(), mac5.begin() + 16), hex("a3b6167473100ee06e0c796c2955552b"));
}

TEST(PrfPlus, IteratesWithOneOctetCounter)
{
    // §2.13 by hand for two blocks: T1 = prf(K, S | 0x01), T2 = prf(K, T1 | S | 0x02).
    const bytes key = hex("000102030405060708090a0b0c0d0e0f");
    const bytes seed = text("seed");
    const bytes t1 = prf(prf_id::hmac_sha2_256, key, cat({seed, bytes{1}}));
    const bytes t2 = prf(prf_id::hmac_sha2_256, key, cat({t1, seed, bytes{2}}));
    const secret_bytes out = prf_plus(prf_id::hmac_sha2_256, key, seed, 40);
    EXPECT_EQ(to_bytes(out.view()), cat({t1, std::span<const uint8_t>(t2).first(8)}));
    // 255 iterations is the most prf+ can give.
    EXPECT_EQ(prf_plus(prf_id::hmac_sha1, key, seed, 255 * 20).size(), 255u * 20u);
}

// ------------------------------------------------------------------------------------------------
// NIST CAVP SP 800-135 IKEv2 KDF vectors.

struct kdf_vector {
    prf_id prf;
    std::string_view ni, nr, g_ir, g_ir_new, spi_i, spi_r, skeyseed, dkm, dkm_child, dkm_child_dh,
        skeyseed_rekey;
};

uint64_t spi_from_hex(std::string_view s)
{
    uint64_t v = 0;
    for (uint8_t b : hex(s)) {
        v = v << 8 | b;
    }
    return v;
}

// SHA-1, CAVP: from Cisco's fips_kdf_ikev2.c (test_ikev2_kdf), 1024-bit g^ir, 1056-bit DKMs.
const kdf_vector cavp_sha1_a = {
    prf_id::hmac_sha1,
    "3651fef5c9c35e93",
    "c09a8b90a3f04d59",
    "d084a30166a50fb7325c3960874a839449ef9741c2f4f947d0201dd8c1269273d79509f37e3ca3eb4fa2fe2a28254e28"
    "9cd3f34dad4eb4df1a07685a4b8a94fa61e2491f7598b3ce65547ff133b3f63d1ac4175eaa695033f3cedb026a6873a3"
    "6455172a8540b8a5d23a0143bed0390ee49b168269d75fffee9fb62be965993c",
    "52f00ab174c25d5b7139ae5ff4e8e9eddee5992d2e36adf8a559ffd90dab1442e4fbe429d320c0f33552a17d1557fa41"
    "ea70e8fb916c4fa27ed52b5f8ebd8461afa78f1159159a64055ac5f6319e29c28eae58cbc6847770f32c3fed1d047504"
    "84f854790f95e9ec01bc5bc461f24966462e359511329305038e94deb6dd42c2",
    "8e5c3ae507221684",
    "b1f201bb155c3acd",
    "cd2e8050137832245f1dbacc6e4f0a92f94d45d6",
    "6f1b12cad3cbe097b35430356d869d54cddb0198ec859174d53ceb92dddedbe2436db69f60977c58fa63bbb667f8d369"
    "20b109baae8f6c61a9ac49feda01843225d080ec5539d5881a25521ffb2a0a91874a9c0a27fcc2d717eb8963a9e3a89c"
    "7ab264757284c28cf8c3ca40576f4220b052b1fb8e9ad60ba3c80557323331a8cbb89f20",
    "4727dc0ef94eb326ce131cf282fb652faa638ad0ddae3786a11bcc0309876009f8c485de011ad962c5b1ca8a41ff8145"
    "445749079c5686e26ffebbc342f06981f3da745e11ca0976424d1f8caec623d59dc7186deb20a27b411d1dcb70a36544"
    "0bf7de905088b0692e8addc094e18d1939bdb67e89798ca6b239e2ccb81c2409dac0106c",
    "b109c21ad4c0797768c1cec9e63554681e48f224bca7f23c20c4ea7041983451e9aa1d5408656c8a975ff1b9d9a12c75"
    "ffeb64bdecb30174664cccb4e14f1c377b7f6d1525af77c7092aac3e47f917ebae8297fb5539d2008ce830823a09cc19"
    "7361d4a289c72745f6ce9fefe812be5bf55b3200fbb82e41a4a40877d3fe106db909707b",
    "3b03bce748c96d5e8306918d2ff89b68f0648da3"};

// SHA-1, CAVP: from libreswan (lib/libswan/ike_alg_test_prf.c "CAVP: IKEv2 key derivation with
// HMAC-SHA1", child DKMs from programs/cavp's output for the same inputs), 256-bit g^ir.
const kdf_vector cavp_sha1_b = {
    prf_id::hmac_sha1,
    "32b50d5f4a3763f3",
    "9206a04b26564cb1",
    "4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52",
    "863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330",
    "34c9e7c188868785",
    "3ff77d760d2b2199",
    "a9a7b222b59f8f48645f28a1db5b5f5d7479cba7",
    "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062768b76606f9fa5e9"
    "92204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979fa280870d2ed41efa9c549fd1119"
    "8af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435a7a56cc4",
    "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cdabd9560b2d5e092d1f24e"
    "2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20754a2d883ba0c2cf"
    "285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e664994d234cb4",
    "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c66232eab4b3ab14c400a519"
    "7dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8bbb5ffb7857240f9a"
    "05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054d56fd74c",
    "63e81194946ebd05df7df5ebf5d8750056bf1f1d"};

// SHA-256, NIST samples: NSS gtests/common/testvectors/ike-sha256-vectors.h (cases 6, 7, 8).
const kdf_vector cavp_sha256 = {
    prf_id::hmac_sha2_256,
    "3f302be1abcb28e1",
    "8c332ee006064c9b",
    "0f4d257d7a58fc4545c7d7a88119eee5d5c9690c5b4c989171d3abbfd99d1d29",
    "25f3b12d6f282739256e39bf54eda53b60ffcf379bb7bcc90c27b4c4c578616c",
    "40dac39e1e1a8640",
    "8619a1cf9a6e4c07",
    "5f00d1bd2c58ec224b1e6b71fa0f19a1faa7a193952c444411b47c1a9d8ba6fe",
    "0b137d669b0947d7d026d593f0305ad401ff0c471357d695778a9c7f4b4869ece98aca531188d16041b3bb936d2dbb3b"
    "4993a6e768a809160de45d0283f273a6cdf6854379e31be72b8d3d1fa990cf9c5b015ca9f918a7df6253c958114a09d4"
    "e1c19bdcd4db14b29d98db1a74ad405c588662c14a04d0d36aa4ab55e90f8986d12d4aad",
    "",
    "",
    "2d63f6debc92048b4fef3889c4c99ca67d6496e0fac14a2bca9a2d6566ff2398"};

// SHA-384, NIST samples: NSS gtests/common/testvectors/ike-sha384-vectors.h (cases 6, 7, 8).
const kdf_vector cavp_sha384 = {
    prf_id::hmac_sha2_384,
    "fd1b572a8e735591",
    "6013b0ef88dacd3d",
    "d3288cd87565101e88fe3bad918f31939d8dd26ff1071f8b2d7f447524e58d7c",
    "3358f620539473aee8d07e779764c4c6a9aabddc79a28e136b3bac021dbde44a",
    "2116ad07ce61f749",
    "24880e55f11a65b7",
    "69fe7a1ac94adaeb711295f5fe004b1a8d6a0b65d05692758ce8ad2f7a45f59d7d0b596f51f7dfcf3330061888f6a94f",
    "4f904c2025c90c817ea5ff9b662a6fdb445a73b57cdf09eacd379b95e1f03cacb04cd6deeda4f952191dd9bc1f7a9502"
    "471a648d74dc06d38112de48a42501f6b1a3ad55c2099cd9a648e5f17e5bf3e34bf9b5953decb768a34f875fe2b78dca"
    "0c2fcca81ec1a412006dfaed38fa06882e61f4c148105fb8e231fdb33c4d484c001721d4",
    "",
    "",
    "e0548c1682e13bce454026b3b1bdf42985b24e4e7408095a7c529de38c3d1fcb04c9fe6868042a34c9614c6c99e3fcea"};

bytes join_keys(const ike_sa_keys& k)
{
    return cat({k.sk_d.view(), k.sk_ai.view(), k.sk_ar.view(), k.sk_ei.view(), k.sk_er.view(), k.sk_pi.view(),
                k.sk_pr.view()});
}

void check_kdf_vector(const kdf_vector& v)
{
    const bytes ni = hex(v.ni), nr = hex(v.nr), g_ir = hex(v.g_ir), g_ir_new = hex(v.g_ir_new);
    const uint64_t spi_i = spi_from_hex(v.spi_i), spi_r = spi_from_hex(v.spi_r);
    const bytes dkm = hex(v.dkm);
    const size_t prf_size = prf_output_size(v.prf);

    // SKEYSEED = prf(Ni | Nr, g^ir)
    EXPECT_EQ(prf(v.prf, cat({ni, nr}), g_ir), hex(v.skeyseed));
    // DKM = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr), through prf_plus and through derive_ike_sa_keys.
    const bytes seed = cat({ni, nr, hex(v.spi_i), hex(v.spi_r)});
    EXPECT_EQ(to_bytes(prf_plus(v.prf, hex(v.skeyseed), seed, dkm.size()).view()), dkm);
    const size_t fixed = 3 * prf_size;
    if (fixed <= dkm.size()) {
        // Split the rest of the DKM between integrity and encryption keys (any split checks the order).
        const size_t rest = (dkm.size() - fixed) / 2;
        ike_key_sizes sizes{v.prf, rest / 2, rest - rest / 2};
        const ike_sa_keys keys = derive_ike_sa_keys(sizes, ni, nr, g_ir, spi_i, spi_r);
        EXPECT_EQ(join_keys(keys),
                  bytes(dkm.begin(), dkm.begin() + static_cast<std::ptrdiff_t>(fixed + 2 * rest)));
        EXPECT_EQ(keys.sk_d.size(), prf_size);
        EXPECT_EQ(keys.sk_pr.size(), prf_size);
    } else {
        const ike_sa_keys keys = derive_ike_sa_keys({v.prf, 0, 0}, ni, nr, g_ir, spi_i, spi_r);
        EXPECT_EQ(to_bytes(keys.sk_d.view()),
                  bytes(dkm.begin(), dkm.begin() + static_cast<std::ptrdiff_t>(prf_size)));
    }
    const bytes sk_d(dkm.begin(), dkm.begin() + static_cast<std::ptrdiff_t>(prf_size));

    // Child SA keying material (§2.17), without and with a new DH.
    if (!v.dkm_child.empty()) {
        EXPECT_EQ(to_bytes(derive_child_keymat(v.prf, sk_d, {}, ni, nr, hex(v.dkm_child).size()).view()),
                  hex(v.dkm_child));
        EXPECT_EQ(
            to_bytes(derive_child_keymat(v.prf, sk_d, g_ir_new, ni, nr, hex(v.dkm_child_dh).size()).view()),
            hex(v.dkm_child_dh));
    }

    // SKEYSEED (rekey) = prf(SK_d (old), g^ir (new) | Ni | Nr); the new SA's keys are prf+ of it.
    const bytes skeyseed_rekey = hex(v.skeyseed_rekey);
    EXPECT_EQ(prf(v.prf, sk_d, cat({g_ir_new, ni, nr})), skeyseed_rekey);
    const ike_key_sizes sizes{v.prf, 16, 32};
    const ike_sa_keys rekeyed =
        derive_rekeyed_ike_sa_keys(v.prf, sk_d, sizes, g_ir_new, ni, nr, spi_i, spi_r);
    const size_t total = 3 * prf_size + 2 * 16 + 2 * 32;
    EXPECT_EQ(join_keys(rekeyed), to_bytes(prf_plus(v.prf, skeyseed_rekey, seed, total).view()));
}

TEST(PrfIkev2Kdf, CavpSha1Vectors)
{
    check_kdf_vector(cavp_sha1_a);
    check_kdf_vector(cavp_sha1_b);
}

TEST(PrfIkev2Kdf, CavpSha256Vector) { check_kdf_vector(cavp_sha256); }

TEST(PrfIkev2Kdf, CavpSha384Vector) { check_kdf_vector(cavp_sha384); }

TEST(PrfIkev2Kdf, RekeyUsesOldPrfForSkeyseedAndNewPrfForPrfPlus)
{
    const bytes old_sk_d = repeat(0x11, 20), g_ir = repeat(0x22, 32), ni = repeat(0x33, 16),
                nr = repeat(0x44, 16);
    const ike_key_sizes sizes{prf_id::hmac_sha2_256, 32, 32};
    const auto keys = derive_rekeyed_ike_sa_keys(prf_id::hmac_sha1, old_sk_d, sizes, g_ir, ni, nr, 1, 2);
    const bytes skeyseed = prf(prf_id::hmac_sha1, old_sk_d, cat({g_ir, ni, nr}));
    const bytes seed = cat({ni, nr, hex("0000000000000001"), hex("0000000000000002")});
    EXPECT_EQ(join_keys(keys),
              to_bytes(prf_plus(prf_id::hmac_sha2_256, skeyseed, seed, 3 * 32 + 4 * 32).view()));
}

// ------------------------------------------------------------------------------------------------
// PSK authentication (§2.15), computed here with EVP_Q_mac as an independent path.

bytes q_hmac(const char* digest, std::span<const uint8_t> key, std::span<const uint8_t> data)
{
    std::array<uint8_t, 64> out{};
    size_t n = 0;
    EXPECT_NE(EVP_Q_mac(nullptr, "HMAC", nullptr, digest, nullptr, key.data(), key.size(), data.data(),
                        data.size(), out.data(), out.size(), &n),
              nullptr);
    return bytes(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n));
}

TEST(CryptoPskAuth, MatchesRfc7296Definition)
{
    const bytes message = text("IKE_SA_INIT request bytes");
    const bytes nonce_r = repeat(0x5a, 32);
    const bytes sk_pi = repeat(0x01, 32);
    const bytes id_body = hex("01000000c6336401"); // ID_IPV4_ADDR 198.51.100.1
    const bytes octets = signed_octets(prf_id::hmac_sha2_256, message, nonce_r, sk_pi, id_body);
    EXPECT_EQ(octets, cat({message, nonce_r, q_hmac("SHA256", sk_pi, id_body)}));

    const bytes psk = text("Sup3rS3cr3tK3y");
    const bytes inner = q_hmac("SHA256", psk, text("Key Pad for IKEv2")); // 17 bytes, no NUL
    EXPECT_EQ(psk_auth(prf_id::hmac_sha2_256, psk, octets), q_hmac("SHA256", inner, octets));
    EXPECT_NE(psk_auth(prf_id::hmac_sha2_256, text("Sup3rS3cr3tK3z"), octets),
              psk_auth(prf_id::hmac_sha2_256, psk, octets));
}

TEST(CryptoConstantTime, Compares)
{
    EXPECT_TRUE(equal_constant_time(bytes{1, 2, 3}, bytes{1, 2, 3}));
    EXPECT_FALSE(equal_constant_time(bytes{1, 2, 3}, bytes{1, 2, 4}));
    EXPECT_FALSE(equal_constant_time(bytes{1, 2, 3}, bytes{1, 2}));
    EXPECT_TRUE(equal_constant_time(bytes{}, bytes{}));
}

TEST(CryptoRng, SystemRngFills)
{
    std::array<uint8_t, 32> a{}, b{};
    system_rng().fill(a);
    system_rng().fill(b);
    EXPECT_NE(a, b);
}

// ------------------------------------------------------------------------------------------------
// Key exchange

struct ecp_vector {
    uint16_t group;
    std::string_view i, gix, giy, r, grx, gry, girx;
};

// RFC 5903 §8.1, §8.2, §8.3.
const std::array<ecp_vector, 3> rfc5903 = {{
    {19, "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
     "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180",
     "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
     "C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
     "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63",
     "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
     "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE"},
    {20, "099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655E35B538041E649EE3FAEF896783AB194",
     "667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6DE3AC808ACB4BDB4C88732AEE95F41AA",
     "9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
     "41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942E0308312916B8ED2960E4BD55A7448FC",
     "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D0D1AC43A0336DEF96FDA41D0774A3571",
     "DCFBEC7AACF3196472169E838430367F66EEBE3C6E70C416DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
     "11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4D603135569B9E9D09CF5D4A270F59746"},
    {21,
     "0037ADE9319A89F4DABDB3EF411AACCCA5123C61ACAB57B5393DCE47608172A095AA85A30FE1C2952C6771D937BA9777F5957B2"
     "639"
     "BAB072462F68C27A57382D4A52",
     "0015417E84DBF28C0AD3C278713349DC7DF153C897A1891BD98BAB4357C9ECBEE1E3BF42E00B8E380AEAE57C2D1075649418859"
     "42A"
     "F5A7F4601723C4195D176CED3E",
     "017CAE20B6641D2EEB695786D8C946146239D099E18E1D5A514C739D7CB4A10AD8A788015AC405D7799DC75E7B7D5B6CF2261A6"
     "A7F"
     "1507438BF01BEB6CA3926F9582",
     "0145BA99A847AF43793FDD0E872E7CDFA16BE30FDC780F97BCCC3F078380201E9C677D600B343757A3BDBF2A3163E4C2F869CCA"
     "745"
     "8AA4A4EFFC311F5CB151685EB9",
     "00D0B3975AC4B799F5BEA16D5E13E9AF971D5E9B984C9F39728B5E5739735A219B97C356436ADC6E95BB0352F6BE64A6C2912D4"
     "EF2"
     "D0433CED2B6171640012D9460F",
     "015C68226383956E3BD066E797B623C27CE0EAC2F551A10C2C724D9852077B87220B6536C5C408A1D2AEBB8E86D678AE49CB570"
     "91F"
     "4732296579AB44FCD17F0FC56A",
     "01144C7D79AE6956BC8EDB8E7C787C4521CB086FA64407F97894E5E6B2D79B04D1427E73CA4BAA240A34786859810C06B3C715A"
     "3A8"
     "CC3151F2BEE417996D19F3DDEA"},
}};

TEST(DhEcp, Rfc5903Vectors)
{
    for (const auto& v : rfc5903) {
        SCOPED_TRACE(group_name(v.group));
        auto initiator = key_exchange::create_with_private_key(v.group, hex(v.i));
        auto responder = key_exchange::create_with_private_key(v.group, hex(v.r));
        ASSERT_TRUE(initiator && responder);
        const bytes gi = cat({hex(v.gix), hex(v.giy)});
        const bytes gr = cat({hex(v.grx), hex(v.gry)});
        EXPECT_EQ(initiator->public_value(), gi);
        EXPECT_EQ(responder->public_value(), gr);
        EXPECT_EQ(initiator->public_size(), gi.size());
        std::string error;
        auto s1 = initiator->shared_secret(gr, error);
        auto s2 = responder->shared_secret(gi, error);
        ASSERT_TRUE(s1 && s2) << error;
        EXPECT_EQ(to_bytes(s1->view()), hex(v.girx));
        EXPECT_EQ(to_bytes(s2->view()), hex(v.girx));
    }
}

TEST(DhEcp, RefusesBadPeerValues)
{
    const auto& v = rfc5903[0];
    auto initiator = key_exchange::create_with_private_key(v.group, hex(v.i));
    ASSERT_TRUE(initiator);
    std::string error;
    bytes gr = cat({hex(v.grx), hex(v.gry)});
    // Off the curve.
    bytes off = gr;
    off.back() ^= 1;
    EXPECT_FALSE(initiator->shared_secret(off, error));
    EXPECT_FALSE(error.empty());
    // The point at infinity has no affine encoding; all zeros is not on the curve.
    EXPECT_FALSE(initiator->shared_secret(bytes(64, 0), error));
    // With the 0x04 byte (RFC 5903 §7 says no point-format byte), and truncated.
    EXPECT_FALSE(initiator->shared_secret(cat({bytes{4}, gr}), error));
    EXPECT_FALSE(initiator->shared_secret(std::span<const uint8_t>(gr).first(63), error));
    // x >= p: the field prime of P-256 itself as x, with the real y.
    const bytes p256 = hex("FFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF");
    EXPECT_FALSE(initiator->shared_secret(cat({p256, hex(v.gry)}), error));
    // Still works with the good value afterwards.
    EXPECT_TRUE(initiator->shared_secret(gr, error));
}

TEST(DhEcp, GeneratedKeysAgree)
{
    for (uint16_t group : {19, 20, 21}) {
        auto a = key_exchange::create(group);
        auto b = key_exchange::create(group);
        ASSERT_TRUE(a && b);
        EXPECT_EQ(a->group(), group);
        std::string error;
        auto s1 = a->shared_secret(b->public_value(), error);
        auto s2 = b->shared_secret(a->public_value(), error);
        ASSERT_TRUE(s1 && s2) << error;
        EXPECT_EQ(to_bytes(s1->view()), to_bytes(s2->view()));
        EXPECT_EQ(s1->size(), a->public_size() / 2);
    }
}

TEST(DhCurve25519, Rfc7748Vector)
{
    // RFC 7748 §6.1
    auto alice = key_exchange::create_with_private_key(
        31, hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
    auto bob = key_exchange::create_with_private_key(
        31, hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
    ASSERT_TRUE(alice && bob);
    EXPECT_EQ(alice->public_value(), hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
    EXPECT_EQ(bob->public_value(), hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
    std::string error;
    auto k1 = alice->shared_secret(bob->public_value(), error);
    auto k2 = bob->shared_secret(alice->public_value(), error);
    ASSERT_TRUE(k1 && k2) << error;
    const bytes k = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    EXPECT_EQ(to_bytes(k1->view()), k);
    EXPECT_EQ(to_bytes(k2->view()), k);
}

TEST(DhCurve25519, RefusesSmallOrderAndBadLength)
{
    auto a = key_exchange::create(31);
    ASSERT_TRUE(a);
    std::string error;
    // u = 0 and u = 1 are small-order points: the result would be all zeros (RFC 8031 §2, RFC 7748 §6.1).
    EXPECT_FALSE(a->shared_secret(bytes(32, 0), error));
    EXPECT_FALSE(error.empty());
    bytes one(32, 0);
    one[0] = 1;
    EXPECT_FALSE(a->shared_secret(one, error));
    EXPECT_FALSE(a->shared_secret(bytes(31, 9), error));
    EXPECT_FALSE(a->shared_secret(bytes(33, 9), error));
    auto b = key_exchange::create(31);
    EXPECT_TRUE(a->shared_secret(b->public_value(), error));
}

// RFC 3526 §3, the 2048-bit MODP group's prime.
const bytes modp2048_p =
    hex("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
        "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
        "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
        "15728E5A8AACAA68FFFFFFFFFFFFFFFF");

TEST(DhModp, TwoExchangesAgreeAndValuesArePadded)
{
    for (uint16_t group : {14, 15, 16}) {
        SCOPED_TRACE(group_name(group));
        auto a = key_exchange::create(group);
        auto b = key_exchange::create(group);
        ASSERT_TRUE(a && b);
        EXPECT_EQ(a->public_value().size(), a->public_size());
        std::string error;
        auto s1 = a->shared_secret(b->public_value(), error);
        auto s2 = b->shared_secret(a->public_value(), error);
        ASSERT_TRUE(s1 && s2) << error;
        EXPECT_EQ(to_bytes(s1->view()), to_bytes(s2->view()));
        EXPECT_EQ(s1->size(), a->public_size());
    }
    EXPECT_EQ(key_exchange::create(14)->public_size(), 256u);
    EXPECT_EQ(key_exchange::create(15)->public_size(), 384u);
    EXPECT_EQ(key_exchange::create(16)->public_size(), 512u);
}

TEST(DhModp, SmallPrivateKeysGiveLeftPaddedValues)
{
    // g = 2 (RFC 3526): x = 2 gives y = 4, x = 3 gives y = 8, and g^xy = 2^6 = 64, all left-padded.
    auto a = key_exchange::create_with_private_key(14, bytes{2});
    auto b = key_exchange::create_with_private_key(14, bytes{3});
    ASSERT_TRUE(a && b);
    bytes four(256, 0), eight(256, 0), sixty_four(256, 0);
    four.back() = 4;
    eight.back() = 8;
    sixty_four.back() = 64;
    EXPECT_EQ(a->public_value(), four);
    EXPECT_EQ(b->public_value(), eight);
    std::string error;
    auto s = a->shared_secret(b->public_value(), error);
    ASSERT_TRUE(s) << error;
    EXPECT_EQ(to_bytes(s->view()), sixty_four);
    EXPECT_FALSE(key_exchange::create_with_private_key(14, bytes{1}));
    EXPECT_FALSE(key_exchange::create_with_private_key(14, modp2048_p));
}

TEST(DhModp, RefusesOutOfRangeAndWrongLength)
{
    auto a = key_exchange::create(14);
    ASSERT_TRUE(a);
    bytes zero(256, 0), one(256, 0), p_minus_1 = modp2048_p;
    one.back() = 1;
    p_minus_1.back() -= 1;
    std::string error;
    for (const bytes& bad : {zero, one, p_minus_1, modp2048_p, bytes(256, 0xff)}) {
        error.clear();
        EXPECT_FALSE(a->shared_secret(bad, error));
        EXPECT_FALSE(error.empty());
    }
    bytes two(256, 0);
    two.back() = 2;
    EXPECT_TRUE(a->shared_secret(two, error)) << error;
    EXPECT_FALSE(a->shared_secret(bytes(255, 2), error));
    EXPECT_FALSE(a->shared_secret(bytes(257, 2), error));
    // Errors name lengths, never values.
    EXPECT_NE(error.find("257"), std::string::npos);
}

// RFC 3526 §2, the 1536-bit MODP group (5), typed from the RFC (a safe prime: checked with Fermat
// tests on p and (p-1)/2 when it was written down).
const bytes modp1536_p =
    hex("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
        "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
        "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA237327FFFFFFFFFFFFFFFF");

// b^e mod p with plain BIGNUM arithmetic, left-padded to p's length: the RFC's prime, not OpenSSL's
// named-group table that key_exchange uses.
bytes mod_exp(const bytes& base, const bytes& exponent, const bytes& prime)
{
    BN_CTX* ctx = BN_CTX_new();
    BIGNUM* b = BN_bin2bn(base.data(), static_cast<int>(base.size()), nullptr);
    BIGNUM* e = BN_bin2bn(exponent.data(), static_cast<int>(exponent.size()), nullptr);
    BIGNUM* m = BN_bin2bn(prime.data(), static_cast<int>(prime.size()), nullptr);
    BIGNUM* r = BN_new();
    EXPECT_EQ(BN_mod_exp(r, b, e, m, ctx), 1);
    bytes out(prime.size());
    EXPECT_EQ(BN_bn2binpad(r, out.data(), static_cast<int>(out.size())), static_cast<int>(out.size()));
    BN_free(b);
    BN_free(e);
    BN_free(m);
    BN_free(r);
    BN_CTX_free(ctx);
    return out;
}

TEST(DhModp, Group5MatchesTheRfc3526PrimeAndAgrees)
{
    EXPECT_TRUE(is_supported_group(5));
    EXPECT_EQ(group_name(5), "MODP_1536");
    const bytes x = hex("6b1f4c3a2e9d0871a5c4e3f2019b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b");
    auto a = key_exchange::create_with_private_key(5, x);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->public_size(), 192u);
    EXPECT_EQ(a->public_value(), mod_exp(bytes{2}, x, modp1536_p)); // g = 2, y = g^x mod p
    auto b = key_exchange::create(5);
    ASSERT_TRUE(b);
    std::string error;
    auto s1 = a->shared_secret(b->public_value(), error);
    auto s2 = b->shared_secret(a->public_value(), error);
    ASSERT_TRUE(s1 && s2) << error;
    EXPECT_EQ(to_bytes(s1->view()), to_bytes(s2->view()));
    EXPECT_EQ(to_bytes(s1->view()), mod_exp(b->public_value(), x, modp1536_p)); // g^xy, padded to 192
    // The range check (1 < y < p-1) and the length check hold for group 5 as for 14.
    bytes one(192, 0), p_minus_1 = modp1536_p;
    one.back() = 1;
    p_minus_1.back() -= 1;
    for (const bytes& bad : {bytes(192, 0), one, p_minus_1, modp1536_p}) {
        EXPECT_FALSE(a->shared_secret(bad, error));
    }
    EXPECT_FALSE(a->shared_secret(bytes(256, 2), error));
}

// RFC 2409 §6.1 and §6.2, the 768- and 1024-bit MODP groups (1, 2), typed from the RFC, not from
// OpenSSL's BN_get_rfc2409_prime_* that key_exchange uses. Legacy (allow-legacy only).
const bytes modp768_p =
    hex("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
        "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A3620FFFFFFFFFFFFFFFF");
const bytes modp1024_p =
    hex("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
        "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF");

TEST(DhModp, Groups1And2MatchTheRfc2409PrimesAndAgree)
{
    const bytes x = hex("6b1f4c3a2e9d0871a5c4e3f2019b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b");
    for (const auto& [group, name, prime] : {std::tuple<uint16_t, const char*, const bytes*>{1, "MODP_768", &modp768_p},
                                             std::tuple<uint16_t, const char*, const bytes*>{2, "MODP_1024", &modp1024_p}}) {
        SCOPED_TRACE(name);
        EXPECT_TRUE(is_supported_group(group));
        EXPECT_EQ(group_name(group), name);
        auto a = key_exchange::create_with_private_key(group, x);
        ASSERT_TRUE(a);
        EXPECT_EQ(a->public_size(), prime->size());
        EXPECT_EQ(a->public_value(), mod_exp(bytes{2}, x, *prime)); // g = 2, y = g^x mod p
        // Two OpenSSL key pairs agree, and agree with plain BIGNUM arithmetic over the RFC's prime.
        auto b = key_exchange::create(group);
        auto c = key_exchange::create(group);
        ASSERT_TRUE(b && c);
        EXPECT_EQ(b->public_value().size(), prime->size());
        EXPECT_NE(b->public_value(), c->public_value());
        std::string error;
        auto s1 = a->shared_secret(b->public_value(), error);
        auto s2 = b->shared_secret(a->public_value(), error);
        ASSERT_TRUE(s1 && s2) << error;
        EXPECT_EQ(to_bytes(s1->view()), to_bytes(s2->view()));
        EXPECT_EQ(to_bytes(s1->view()), mod_exp(b->public_value(), x, *prime)); // g^xy, padded to |p|
        auto s3 = b->shared_secret(c->public_value(), error);
        auto s4 = c->shared_secret(b->public_value(), error);
        ASSERT_TRUE(s3 && s4) << error;
        EXPECT_EQ(to_bytes(s3->view()), to_bytes(s4->view()));
        // The range check (1 < y < p-1) and the length check.
        bytes one(prime->size(), 0), p_minus_1 = *prime;
        one.back() = 1;
        p_minus_1.back() -= 1;
        for (const bytes& bad : {bytes(prime->size(), 0), one, p_minus_1, *prime}) {
            EXPECT_FALSE(a->shared_secret(bad, error));
        }
        EXPECT_FALSE(a->shared_secret(bytes(prime->size() + 1, 2), error));
        EXPECT_FALSE(key_exchange::create_with_private_key(group, *prime)); // x >= p-1
    }
}

TEST(DhGroups, NamesAndSupport)
{
    EXPECT_EQ(group_name(14), "MODP_2048");
    EXPECT_EQ(group_name(21), "ECP_521");
    EXPECT_EQ(group_name(31), "CURVE_25519");
    EXPECT_EQ(group_name(22), "22");
    EXPECT_FALSE(is_supported_group(22));
    EXPECT_FALSE(key_exchange::create(22));
    EXPECT_FALSE(key_exchange::create_with_private_key(19, bytes(33, 1)));
    EXPECT_FALSE(key_exchange::create_with_private_key(31, bytes(31, 1)));
}

// ------------------------------------------------------------------------------------------------
// SK payload

struct sk_combo {
    encr_id encr;
    uint16_t bits;
    integ_id integ;
};

std::vector<sk_combo> all_combos()
{
    std::vector<sk_combo> out;
    for (uint16_t bits : {128, 192, 256}) {
        for (integ_id integ : {integ_id::hmac_sha1_96, integ_id::hmac_sha2_256_128,
                               integ_id::hmac_sha2_384_192, integ_id::hmac_sha2_512_256}) {
            out.push_back({encr_id::aes_cbc, bits, integ});
        }
        for (encr_id gcm : {encr_id::aes_gcm_8, encr_id::aes_gcm_12, encr_id::aes_gcm_16}) {
            out.push_back({gcm, bits, integ_id::none});
        }
    }
    return out;
}

std::string combo_name(const sk_combo& c)
{
    return "encr " + std::to_string(static_cast<int>(c.encr)) + "/" + std::to_string(c.bits) + " integ " +
           std::to_string(static_cast<int>(c.integ));
}

bytes key_of(size_t n, uint8_t start)
{
    bytes k(n);
    for (size_t i = 0; i < n; ++i) {
        k[i] = static_cast<uint8_t>(start + i);
    }
    return k;
}

sk_cipher make(const sk_combo& c)
{
    auto cipher = sk_cipher::create(c.encr, c.bits, c.integ, key_of(encr_keymat_size(c.encr, c.bits), 0x10),
                                    key_of(integ_key_size(c.integ), 0x80));
    EXPECT_TRUE(cipher) << combo_name(c);
    return *cipher;
}

// An IKE header + SK generic header stand-in: the aad is opaque to sk_cipher.
const bytes test_aad = hex("0102030405060708a1a2a3a4a5a6a7a82e202308000000010000005c2300004c");

TEST(SkCipher, RoundTripEveryCombinationAndSize)
{
    for (const auto& c : all_combos()) {
        SCOPED_TRACE(combo_name(c));
        const sk_cipher cipher = make(c);
        for (size_t n : {0u, 1u, 15u, 16u, 17u, 31u, 100u}) {
            const bytes plain = key_of(n, 0x40);
            bytes sealed(cipher.sealed_size(n));
            ASSERT_TRUE(cipher.seal(test_aad, plain, sealed, system_rng()));
            if (!is_aead(c.encr)) {
                EXPECT_EQ((sealed.size() - cipher.iv_size() - cipher.icv_size()) % 16, 0u);
            }
            std::string error;
            auto opened = cipher.open(test_aad, sealed, error);
            ASSERT_TRUE(opened) << error;
            EXPECT_EQ(*opened, plain);
        }
    }
}

TEST(SkCipher, RefusesTampering)
{
    for (const auto& c : all_combos()) {
        SCOPED_TRACE(combo_name(c));
        const sk_cipher cipher = make(c);
        const bytes plain = key_of(40, 0x40);
        bytes sealed(cipher.sealed_size(plain.size()));
        ASSERT_TRUE(cipher.seal(test_aad, plain, sealed, system_rng()));
        std::string error;
        for (size_t pos :
             {size_t{0}, cipher.iv_size(), sealed.size() - cipher.icv_size() - 1, sealed.size() - 1}) {
            bytes bad = sealed;
            bad[pos] ^= 0x01;
            EXPECT_FALSE(cipher.open(test_aad, bad, error)) << "flipped byte " << pos;
        }
        bytes bad_aad = test_aad;
        bad_aad[20] ^= 0x80;
        EXPECT_FALSE(cipher.open(bad_aad, sealed, error));
        EXPECT_FALSE(cipher.open(test_aad, std::span<const uint8_t>(sealed).first(sealed.size() - 1), error));
        EXPECT_FALSE(cipher.open(test_aad, std::span<const uint8_t>(sealed).first(cipher.iv_size()), error));
        EXPECT_FALSE(cipher.open(test_aad, bytes{}, error));
        EXPECT_FALSE(error.empty());
    }
}

TEST(SkCipher, RefusesBadTransformsAndKeys)
{
    EXPECT_FALSE(sk_cipher::create(encr_id::aes_cbc, 256, integ_id::none, bytes(32), {}));
    EXPECT_FALSE(sk_cipher::create(encr_id::aes_cbc, 256, integ_id::hmac_sha2_256_128, bytes(31), bytes(32)));
    EXPECT_FALSE(sk_cipher::create(encr_id::aes_cbc, 256, integ_id::hmac_sha2_256_128, bytes(32), bytes(20)));
    EXPECT_FALSE(
        sk_cipher::create(encr_id::aes_gcm_16, 256, integ_id::hmac_sha2_256_128, bytes(36), bytes(32)));
    EXPECT_FALSE(sk_cipher::create(encr_id::aes_gcm_16, 256, integ_id::none, bytes(32), {}));
    EXPECT_FALSE(sk_cipher::create(encr_id::aes_gcm_16, 64, integ_id::none, bytes(12), {}));
    EXPECT_TRUE(sk_cipher::create(encr_id::aes_gcm_16, 256, integ_id::none, bytes(36), {}));
}

// Independent path: the same SK payload built here with EVP directly, from RFC 7296 §3.14 / RFC 5282.
bytes reference_seal(const sk_combo& c, std::span<const uint8_t> encr_key, std::span<const uint8_t> integ_key,
                     std::span<const uint8_t> aad, std::span<const uint8_t> plain,
                     std::span<const uint8_t> iv)
{
    const bool gcm = is_aead(c.encr);
    const std::string name = "AES-" + std::to_string(c.bits) + (gcm ? "-GCM" : "-CBC");
    EVP_CIPHER* cipher = EVP_CIPHER_fetch(nullptr, name.c_str(), nullptr);
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    bytes body(plain.begin(), plain.end());
    if (gcm) {
        body.push_back(0); // Pad Length 0
    } else {
        const size_t pad = 15 - plain.size() % 16;
        body.insert(body.end(), pad, 0);
        body.push_back(static_cast<uint8_t>(pad));
    }
    bytes ct(body.size() + 16);
    int len = 0, total = 0;
    bytes icv;
    if (gcm) {
        const size_t key_size = c.bits / 8u;
        const bytes nonce = cat({encr_key.subspan(key_size, 4), iv});
        EXPECT_EQ(EVP_EncryptInit_ex2(ctx, cipher, encr_key.data(), nonce.data(), nullptr), 1);
        EXPECT_EQ(EVP_EncryptUpdate(ctx, nullptr, &len, aad.data(), static_cast<int>(aad.size())), 1);
        EXPECT_EQ(EVP_EncryptUpdate(ctx, ct.data(), &len, body.data(), static_cast<int>(body.size())), 1);
        total = len;
        EXPECT_EQ(EVP_EncryptFinal_ex(ctx, ct.data() + total, &len), 1);
        total += len;
        const size_t icv_size = c.encr == encr_id::aes_gcm_8 ? 8 : c.encr == encr_id::aes_gcm_12 ? 12 : 16;
        icv.resize(icv_size);
        EXPECT_EQ(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, static_cast<int>(icv_size), icv.data()), 1);
    } else {
        EXPECT_EQ(EVP_EncryptInit_ex2(ctx, cipher, encr_key.data(), iv.data(), nullptr), 1);
        EVP_CIPHER_CTX_set_padding(ctx, 0);
        EXPECT_EQ(EVP_EncryptUpdate(ctx, ct.data(), &len, body.data(), static_cast<int>(body.size())), 1);
        total = len;
        EXPECT_EQ(EVP_EncryptFinal_ex(ctx, ct.data() + total, &len), 1);
        total += len;
        ct.resize(static_cast<size_t>(total));
        const char* digest = c.integ == integ_id::hmac_sha1_96        ? "SHA1"
                             : c.integ == integ_id::hmac_sha2_256_128 ? "SHA256"
                             : c.integ == integ_id::hmac_sha2_384_192 ? "SHA384"
                                                                      : "SHA512";
        icv = q_hmac(digest, integ_key, cat({aad, iv, ct}));
        icv.resize(integ_icv_size(c.integ));
    }
    ct.resize(static_cast<size_t>(total));
    EVP_CIPHER_CTX_free(ctx);
    EVP_CIPHER_free(cipher);
    return cat({iv, ct, icv});
}

TEST(SkCipher, MatchesIndependentEvpConstruction)
{
    for (const auto& c : all_combos()) {
        SCOPED_TRACE(combo_name(c));
        const bytes encr_key = key_of(encr_keymat_size(c.encr, c.bits), 0x10);
        const bytes integ_key = key_of(integ_key_size(c.integ), 0x80);
        const sk_cipher cipher = make(c);
        const bytes iv = key_of(cipher.iv_size(), 0xc0);
        fixed_rng random(iv);
        for (size_t n : {0u, 13u, 32u, 77u}) {
            const bytes plain = key_of(n, 0x33);
            bytes sealed(cipher.sealed_size(n));
            ASSERT_TRUE(cipher.seal(test_aad, plain, sealed, random));
            EXPECT_EQ(sealed, reference_seal(c, encr_key, integ_key, test_aad, plain, iv));
        }
    }
}

TEST(SkCipher, GcmSpecTestCase4ThroughOpen)
{
    // McGrew & Viega, "The Galois/Counter Mode of Operation", Test Case 4: K, IV = cafebabe facedbad
    // decaf888, A, P (60 bytes) -> C, T. As an SK payload (RFC 5282): keymat = K | salt cafebabe,
    // explicit IV facedbaddecaf888, aad = A. P's last byte 0x39 (57) is read as the Pad Length, so
    // open() must return P's first 60 - 1 - 57 = 2 bytes.
    const bytes keymat = hex("feffe9928665731c6d6a8f9467308308cafebabe");
    const bytes aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    const bytes sealed = hex("facedbaddecaf888"
                             "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
                             "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"
                             "5bc94fbc3221a5db94fae95ae7121a47");
    auto cipher = sk_cipher::create(encr_id::aes_gcm_16, 128, integ_id::none, keymat, {});
    ASSERT_TRUE(cipher);
    std::string error;
    auto opened = cipher->open(aad, sealed, error);
    ASSERT_TRUE(opened) << error;
    EXPECT_EQ(*opened, hex("d931"));
}

TEST(SkCipher, RefusesPadLengthBeyondPlaintext)
{
    // A CBC payload whose last byte claims 16 bytes of padding in a 16-byte plaintext: the ICV is
    // valid (built with the independent path), the padding is not.
    const sk_combo c{encr_id::aes_cbc, 128, integ_id::hmac_sha2_256_128};
    const bytes encr_key = key_of(16, 0x10), integ_key = key_of(32, 0x80), iv = key_of(16, 0xc0);
    // reference_seal pads 15 bytes -> one block whose Pad Length is 0; replace it with 16.
    bytes body(16, 0);
    body[15] = 16;
    EVP_CIPHER* aes = EVP_CIPHER_fetch(nullptr, "AES-128-CBC", nullptr);
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    bytes ct(32);
    int len = 0;
    ASSERT_EQ(EVP_EncryptInit_ex2(ctx, aes, encr_key.data(), iv.data(), nullptr), 1);
    EVP_CIPHER_CTX_set_padding(ctx, 0);
    ASSERT_EQ(EVP_EncryptUpdate(ctx, ct.data(), &len, body.data(), 16), 1);
    ct.resize(16);
    EVP_CIPHER_CTX_free(ctx);
    EVP_CIPHER_free(aes);
    bytes icv = q_hmac("SHA256", integ_key, cat({test_aad, iv, ct}));
    icv.resize(16);
    auto cipher = sk_cipher::create(c.encr, c.bits, c.integ, encr_key, integ_key);
    ASSERT_TRUE(cipher);
    std::string error;
    EXPECT_FALSE(cipher->open(test_aad, cat({iv, ct, icv}), error));
    EXPECT_NE(error.find("pad"), std::string::npos);
    // Pad Length 15 in the same block is fine (empty payload chain).
    body[15] = 15;
    EXPECT_EQ(reference_seal(c, encr_key, integ_key, test_aad, {}, iv).size(), 16u + 16u + 16u);
    EXPECT_TRUE(cipher->open(test_aad, reference_seal(c, encr_key, integ_key, test_aad, {}, iv), error));
}

} // namespace
} // namespace espresso::cp
