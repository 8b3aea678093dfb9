// Tests for dataplane/src/hmac_keys.cpp: the precomputed HMAC states, checked end to end by running
// real IPsec-MB HMAC jobs against RFC 2202, RFC 4231 and RFC 4868 known answers.
#include <gtest/gtest.h>
#include <intel-ipsec-mb.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "espresso/dp/crypto_core.h"
#include "hmac_keys.h"
#include "imb_burst.h"
#include "test_util.h"
#include "vectors/hmac_vectors.h"

namespace espresso::dp {
namespace {

using test::from_hex;

// ICV lengths used by ESP: RFC 2404 §2 (SHA-1: 96 bits) and RFC 4868 §2.3 (SHA-2: half the output).
size_t truncated_bytes(config::integ_alg alg)
{
    switch (alg) {
    case config::integ_alg::hmac_sha1_96:
        return 12;
    case config::integ_alg::hmac_sha256_128:
        return 16;
    case config::integ_alg::hmac_sha384_192:
        return 24;
    case config::integ_alg::hmac_sha512_256:
        return 32;
    case config::integ_alg::none:
        break;
    }
    return 0;
}

// One HMAC job with a NULL cipher, the way the ESP code drives IPsec-MB.
std::vector<uint8_t> run_hmac_job(IMB_MGR* mgr, config::integ_alg alg, const uint8_t* ipad,
                                  const uint8_t* opad, const std::vector<uint8_t>& data, size_t tag_bytes)
{
    std::vector<uint8_t> buffer = data;
    buffer.resize(std::max<size_t>(buffer.size(), 1)); // a valid pointer even for empty data
    std::vector<uint8_t> tag(tag_bytes, 0);

    IMB_JOB* job = IMB_GET_NEXT_JOB(mgr);
    job->cipher_mode = IMB_CIPHER_NULL;
    job->cipher_direction = IMB_DIR_ENCRYPT;
    job->chain_order = IMB_ORDER_HASH_CIPHER;
    job->hash_alg = imb_hash_alg(alg);
    job->src = buffer.data();
    job->dst = buffer.data();
    job->cipher_start_src_offset_in_bytes = 0;
    job->msg_len_to_cipher_in_bytes = 0;
    job->iv = nullptr;
    job->iv_len_in_bytes = 0;
    job->hash_start_src_offset_in_bytes = 0;
    job->msg_len_to_hash_in_bytes = data.size();
    job->auth_tag_output = tag.data();
    job->auth_tag_output_len_in_bytes = tag_bytes;
    job->u.HMAC._hashed_auth_key_xor_ipad = ipad;
    job->u.HMAC._hashed_auth_key_xor_opad = opad;
    job->user_data = tag.data();

    IMB_JOB* done = IMB_SUBMIT_JOB(mgr);
    while (done == nullptr) {
        done = IMB_FLUSH_JOB(mgr);
    }
    EXPECT_EQ(done->user_data, tag.data()) << "a job we did not submit came back";
    EXPECT_EQ(done->status, IMB_STATUS_COMPLETED) << imb_get_strerror(imb_get_errno(mgr));
    return tag;
}

std::string hex(const std::vector<uint8_t>& bytes)
{
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    for (uint8_t b : bytes) {
        out += digits[b >> 4];
        out += digits[b & 15];
    }
    return out;
}

TEST(HmacKeys, MapsAlgorithmsToIpsecMb)
{
    EXPECT_EQ(imb_hash_alg(config::integ_alg::hmac_sha1_96), IMB_AUTH_HMAC_SHA_1);
    EXPECT_EQ(imb_hash_alg(config::integ_alg::hmac_sha256_128), IMB_AUTH_HMAC_SHA_256);
    EXPECT_EQ(imb_hash_alg(config::integ_alg::hmac_sha384_192), IMB_AUTH_HMAC_SHA_384);
    EXPECT_EQ(imb_hash_alg(config::integ_alg::hmac_sha512_256), IMB_AUTH_HMAC_SHA_512);
    EXPECT_EQ(imb_hash_alg(config::integ_alg::none), IMB_AUTH_NULL);
    EXPECT_EQ(hash_output_bytes(config::integ_alg::hmac_sha1_96), 20);
    EXPECT_EQ(hash_output_bytes(config::integ_alg::hmac_sha256_128), 32);
    EXPECT_EQ(hash_output_bytes(config::integ_alg::hmac_sha384_192), 48);
    EXPECT_EQ(hash_output_bytes(config::integ_alg::hmac_sha512_256), 64);
    EXPECT_EQ(hash_output_bytes(config::integ_alg::none), 0);
}

class HmacKnownAnswer : public ::testing::TestWithParam<test::vectors::hmac_vector> {
protected:
    crypto_core core_;
};

TEST_P(HmacKnownAnswer, FullAndTruncatedOutput)
{
    const auto& v = GetParam();
    SCOPED_TRACE(v.source);
    const auto key = from_hex(v.key);
    const auto data = from_hex(v.data);
    const auto mac = from_hex(v.mac);
    ASSERT_EQ(mac.size(), hash_output_bytes(v.alg));

    // Canaries after the 64-byte states: precompute must not write past them.
    alignas(16) std::array<uint8_t, 80> ipad{};
    alignas(16) std::array<uint8_t, 80> opad{};
    ipad.fill(0xa5);
    opad.fill(0xa5);
    hmac_precompute(core_.mgr(), v.alg, key.data(), key.size(), ipad.data(), opad.data());
    for (size_t i = 64; i < ipad.size(); ++i) {
        ASSERT_EQ(ipad[i], 0xa5) << i;
        ASSERT_EQ(opad[i], 0xa5) << i;
    }

    EXPECT_EQ(hex(run_hmac_job(core_.mgr(), v.alg, ipad.data(), opad.data(), data, mac.size())), hex(mac));
    const size_t icv = truncated_bytes(v.alg);
    const std::vector<uint8_t> truncated(mac.begin(), mac.begin() + static_cast<std::ptrdiff_t>(icv));
    EXPECT_EQ(hex(run_hmac_job(core_.mgr(), v.alg, ipad.data(), opad.data(), data, icv)), hex(truncated));
    // And on the manager the engine hashes with (crypto_core::sha_mgr: SHA-NI for SHA-1/256 where
    // the CPU has it and the best manager is AVX2), from the same precomputed states.
    IMB_MGR* engine = hash_manager(core_, imb_hash_alg(v.alg));
    EXPECT_EQ(hex(run_hmac_job(engine, v.alg, ipad.data(), opad.data(), data, mac.size())), hex(mac));
}

// The SHA-NI manager takes exactly the hashes it speeds up; everything else stays on the best one.
TEST(HmacKeys, HashManagerTakesOnlyShaNiHashes)
{
    crypto_core core;
    EXPECT_EQ(hash_manager(core, IMB_AUTH_HMAC_SHA_384), core.mgr());
    EXPECT_EQ(hash_manager(core, IMB_AUTH_HMAC_SHA_512), core.mgr());
    EXPECT_EQ(hash_manager(core, IMB_AUTH_AES_GMAC), core.mgr());
    EXPECT_EQ(hash_manager(core, IMB_AUTH_NULL), core.mgr());
    IMB_MGR* sha = core.sha_mgr() != nullptr ? core.sha_mgr() : core.mgr();
    EXPECT_EQ(hash_manager(core, IMB_AUTH_HMAC_SHA_1), sha);
    EXPECT_EQ(hash_manager(core, IMB_AUTH_HMAC_SHA_256), sha);
    if ((core.mgr()->features & IMB_FEATURE_SHANI) == 0) {
        EXPECT_EQ(core.sha_mgr(), nullptr) << core.description();
    }
}

std::string vector_name(const ::testing::TestParamInfo<test::vectors::hmac_vector>& info)
{
    static constexpr const char* names[] = {"none", "sha1", "sha256", "sha384", "sha512"};
    return std::string(names[static_cast<size_t>(info.param.alg)]) + "_" + std::to_string(info.index);
}

INSTANTIATE_TEST_SUITE_P(HmacRfc, HmacKnownAnswer, ::testing::ValuesIn(test::vectors::hmac_vectors),
                         vector_name);

// RFC 2104 §2: a key longer than the block is replaced by its hash, so both must give the same
// states; a key exactly one block long is used as is (no hashing), one byte more is hashed.
TEST(HmacKeys, LongKeyIsHashedFirst)
{
    crypto_core core;
    struct alg_case {
        config::integ_alg alg;
        size_t block;
    };
    for (const auto& c : {alg_case{config::integ_alg::hmac_sha1_96, 64},
                          alg_case{config::integ_alg::hmac_sha256_128, 64},
                          alg_case{config::integ_alg::hmac_sha384_192, 128},
                          alg_case{config::integ_alg::hmac_sha512_256, 128}}) {
        SCOPED_TRACE(static_cast<int>(c.alg));
        std::vector<uint8_t> long_key(c.block + 1);
        for (size_t i = 0; i < long_key.size(); ++i) {
            long_key[i] = static_cast<uint8_t>(i * 7 + 1);
        }
        std::array<uint8_t, 64> digest{};
        IMB_MGR* mgr = core.mgr();
        switch (c.alg) {
        case config::integ_alg::hmac_sha1_96:
            IMB_SHA1(mgr, long_key.data(), long_key.size(), digest.data());
            break;
        case config::integ_alg::hmac_sha256_128:
            IMB_SHA256(mgr, long_key.data(), long_key.size(), digest.data());
            break;
        case config::integ_alg::hmac_sha384_192:
            IMB_SHA384(mgr, long_key.data(), long_key.size(), digest.data());
            break;
        default:
            IMB_SHA512(mgr, long_key.data(), long_key.size(), digest.data());
            break;
        }
        std::array<uint8_t, 64> ipad_long{}, opad_long{}, ipad_hashed{}, opad_hashed{};
        std::array<uint8_t, 64> ipad_block{}, opad_block{};
        hmac_precompute(mgr, c.alg, long_key.data(), long_key.size(), ipad_long.data(), opad_long.data());
        hmac_precompute(mgr, c.alg, digest.data(), hash_output_bytes(c.alg), ipad_hashed.data(),
                        opad_hashed.data());
        EXPECT_EQ(ipad_long, ipad_hashed);
        EXPECT_EQ(opad_long, opad_hashed);
        // Exactly one block: not hashed, so different from the hashed variant of the same bytes.
        hmac_precompute(mgr, c.alg, long_key.data(), c.block, ipad_block.data(), opad_block.data());
        EXPECT_NE(ipad_block, ipad_long);
    }
}

TEST(HmacKeys, NoIntegrityWritesNothing)
{
    crypto_core core;
    std::array<uint8_t, 64> ipad{}, opad{};
    ipad.fill(0x11);
    opad.fill(0x22);
    const uint8_t key[4] = {1, 2, 3, 4};
    hmac_precompute(core.mgr(), config::integ_alg::none, key, sizeof(key), ipad.data(), opad.data());
    for (size_t i = 0; i < ipad.size(); ++i) {
        EXPECT_EQ(ipad[i], 0x11);
        EXPECT_EQ(opad[i], 0x22);
    }
}

} // namespace
} // namespace espresso::dp
