// Tests for config/src/algorithms.cpp: the transform table, name lists and refused transforms.
#include "espresso/config/algorithms.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace espresso::config {
namespace {

std::vector<std::string> split(std::string_view list) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= list.size()) {
        const auto comma = list.find(", ", start);
        out.emplace_back(list.substr(start, comma - start));
        if (comma == std::string_view::npos) {
            break;
        }
        start = comma + 2;
    }
    return out;
}

struct cipher_case {
    std::string_view name;
    cipher_alg alg;
    uint8_t key, salt, iv, block, icv;
};

TEST(algorithms, cipher_sizes_match_the_rfcs) {
    const cipher_case cases[] = {
        {"aes128gcm16", cipher_alg::aes_gcm16, 16, 4, 8, 4, 16}, // RFC 4106
        {"aes192gcm16", cipher_alg::aes_gcm16, 24, 4, 8, 4, 16},
        {"aes256gcm16", cipher_alg::aes_gcm16, 32, 4, 8, 4, 16},
        {"aes128gmac", cipher_alg::aes_gmac, 16, 4, 8, 4, 16}, // RFC 4543
        {"aes192gmac", cipher_alg::aes_gmac, 24, 4, 8, 4, 16},
        {"aes256gmac", cipher_alg::aes_gmac, 32, 4, 8, 4, 16},
        {"aes128", cipher_alg::aes_cbc, 16, 0, 16, 16, 0}, // RFC 3602
        {"aes192", cipher_alg::aes_cbc, 24, 0, 16, 16, 0},
        {"aes256", cipher_alg::aes_cbc, 32, 0, 16, 16, 0},
        {"null", cipher_alg::null, 0, 0, 0, 4, 0}, // RFC 2410
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(std::string(c.name));
        const auto found = find_cipher(c.name);
        ASSERT_TRUE(found.has_value());
        EXPECT_EQ(found->name, c.name);
        EXPECT_EQ(found->alg, c.alg);
        EXPECT_EQ(found->key_bytes, c.key);
        EXPECT_EQ(found->salt_bytes, c.salt);
        EXPECT_EQ(found->iv_bytes, c.iv);
        EXPECT_EQ(found->block_bytes, c.block);
        EXPECT_EQ(found->icv_bytes, c.icv);
        // info() finds the same entry from the enum and key size.
        EXPECT_EQ(info(c.alg, c.key).name, c.name);
        EXPECT_GE(found->block_bytes, 4); // RFC 4303 §2.4
    }
}

TEST(algorithms, integrity_sizes_match_the_rfcs) {
    struct integ_case {
        std::string_view name;
        integ_alg alg;
        uint8_t key, icv, block;
    };
    const integ_case cases[] = {
        {"sha1", integ_alg::hmac_sha1_96, 20, 12, 64}, // RFC 2404
        {"sha256", integ_alg::hmac_sha256_128, 32, 16, 64}, // RFC 4868
        {"sha384", integ_alg::hmac_sha384_192, 48, 24, 128},
        {"sha512", integ_alg::hmac_sha512_256, 64, 32, 128},
        {"none", integ_alg::none, 0, 0, 0},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(std::string(c.name));
        const auto found = find_integ(c.name);
        ASSERT_TRUE(found.has_value());
        EXPECT_EQ(found->alg, c.alg);
        EXPECT_EQ(found->key_bytes, c.key);
        EXPECT_EQ(found->icv_bytes, c.icv);
        EXPECT_EQ(found->block_bytes, c.block);
        EXPECT_EQ(info(c.alg).name, c.name);
    }
}

TEST(algorithms, name_lists_match_the_table) {
    const auto ciphers = split(cipher_names());
    EXPECT_EQ(ciphers.size(), 10u);
    for (const auto& name : ciphers) {
        EXPECT_TRUE(find_cipher(name).has_value()) << name;
    }
    const auto integs = split(integ_names());
    EXPECT_EQ(integs.size(), 5u);
    for (const auto& name : integs) {
        EXPECT_TRUE(find_integ(name).has_value()) << name;
    }
}

TEST(algorithms, names_are_exact_lowercase) {
    EXPECT_FALSE(find_cipher("AES128GCM16").has_value());
    EXPECT_FALSE(find_cipher("aes128gcm").has_value());
    EXPECT_FALSE(find_cipher("aes128ctr").has_value()); // unsupported, not refused
    EXPECT_TRUE(refused_reason("aes128ctr").empty());
    EXPECT_FALSE(find_integ("SHA256").has_value());
    EXPECT_FALSE(find_integ("").has_value());
    EXPECT_FALSE(find_cipher("").has_value());
}

TEST(algorithms, legacy_transforms_are_refused_with_a_reason) {
    for (const char* name : {"des", "3des", "blowfish", "blowfish128", "blowfish256", "cast128", "md5", "md5_128"}) {
        SCOPED_TRACE(name);
        EXPECT_FALSE(find_cipher(name).has_value());
        EXPECT_FALSE(find_integ(name).has_value());
        EXPECT_FALSE(refused_reason(name).empty());
    }
    const std::string reason(refused_reason("3des"));
    EXPECT_NE(reason.find("Sweet32"), std::string::npos);
    EXPECT_NE(reason.find("CVE-2016-2183"), std::string::npos);
    EXPECT_NE(reason.find("RFC 8221"), std::string::npos);
    EXPECT_NE(reason.find("aes128gcm16"), std::string::npos);
    EXPECT_EQ(refused_reason("3DES"), refused_reason("3des"));
    EXPECT_NE(std::string(refused_reason("md5")).find("sha256"), std::string::npos);
}

TEST(algorithms, supported_names_are_not_refused) {
    for (const auto& name : split(cipher_names())) {
        EXPECT_TRUE(refused_reason(name).empty()) << name;
    }
    for (const auto& name : split(integ_names())) {
        EXPECT_TRUE(refused_reason(name).empty()) << name;
    }
}

TEST(algorithms, info_for_null_ignores_key_size) {
    EXPECT_EQ(info(cipher_alg::null, 0).name, "null");
    EXPECT_EQ(info(cipher_alg::null, 16).name, "null");
    EXPECT_EQ(info(cipher_alg::aes_gcm16, 32).name, "aes256gcm16");
    EXPECT_EQ(info(cipher_alg::aes_gmac, 24).name, "aes192gmac");
}

TEST(algorithms_death, unknown_key_size_is_a_programming_error) {
    EXPECT_DEATH(info(cipher_alg::aes_cbc, 17), "internal error");
}

} // namespace
} // namespace espresso::config
