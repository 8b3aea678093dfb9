// espresso-ike's data plane installer (controlplane/ike/installer.cpp) against the real control
// server (dataplane/src/control_server.cpp) with a fake gateway: here rather than in tests/ike because
// the point is the request the server receives and what the installer makes of its replies.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>
#include <vector>

#include "control_server.h"
#include "espresso/dp/control_client.h"
#include "espresso/dp/control_protocol.h"
#include "installer.h"
#include "sa_json.h"

namespace espresso::cp {
namespace {

using namespace std::chrono_literals;

class recording_gateway : public dp::gateway_api {
public:
    std::string add_sa(const config::sa_config& sa) override
    {
        const std::lock_guard guard(lock);
        singles.push_back(sa);
        return "";
    }
    std::string add_sas(std::span<const config::sa_config> batch) override
    {
        const std::lock_guard guard(lock);
        batches.emplace_back(batch.begin(), batch.end());
        return refuse_batch;
    }
    std::string delete_sa(config::direction dir, uint32_t spi) override
    {
        const std::lock_guard guard(lock);
        deleted.emplace_back(dir, spi);
        return "no such SA";
    }
    std::string add_policy(const config::policy_config&, uint32_t& id) override
    {
        id = 1;
        return "";
    }
    std::string delete_policy(uint32_t) override { return ""; }
    std::string flush() override { return ""; }
    std::vector<dp::sa_snapshot> sas() const override { return {}; }
    std::vector<dp::policy_snapshot> policies() const override { return {}; }
    std::vector<dp::interface_snapshot> interfaces() const override { return {}; }
    std::vector<dp::worker_snapshot> workers() const override { return {}; }
    void clear_counters() override {}

    std::mutex lock;
    std::string refuse_batch;
    std::vector<config::sa_config> singles;
    std::vector<std::vector<config::sa_config>> batches;
    std::vector<std::pair<config::direction, uint32_t>> deleted;
};

class installer_fixture : public ::testing::Test {
protected:
    void SetUp() override
    {
        char dir_template[] = "/tmp/espresso-inst-XXXXXX";
        ASSERT_NE(mkdtemp(dir_template), nullptr);
        dir = dir_template;
        path = dir + "/dp.sock";
        server = std::make_unique<dp::control_server>(gateway, path);
        thread = std::thread([this] {
            while (!stop.load()) {
                server->poll();
                std::this_thread::sleep_for(200us);
            }
        });
    }
    void TearDown() override
    {
        stop = true;
        thread.join();
        server.reset();
        std::filesystem::remove_all(dir);
    }

    recording_gateway gateway;
    std::string dir;
    std::string path;
    std::unique_ptr<dp::control_server> server;
    std::thread thread;
    std::atomic<bool> stop{false};
};

config::sa_config child_half(config::direction dir, uint32_t spi, uint8_t key_byte)
{
    config::sa_config sa;
    sa.dir = dir;
    sa.spi = spi;
    sa.source = *config::parse_address(dir == config::direction::inbound ? "203.0.113.1" : "198.51.100.1");
    sa.destination =
        *config::parse_address(dir == config::direction::inbound ? "198.51.100.1" : "203.0.113.1");
    sa.cipher = config::cipher_alg::aes_gcm16;
    sa.cipher_key_bytes = 16;
    sa.cipher_key_length = 20;
    std::fill_n(sa.cipher_key.begin(), sa.cipher_key_length, key_byte);
    sa.replay_window = dir == config::direction::inbound ? 64 : 0;
    sa.local = *config::parse_prefix("192.168.1.0/24");
    sa.remote = *config::parse_prefix("192.168.2.0/24");
    return sa;
}

TEST_F(installer_fixture, PairGoesInOneAddSasInboundFirst)
{
    dataplane_installer installer(path);
    const auto in = child_half(config::direction::inbound, 0xc0000001, 0x11);
    const auto out = child_half(config::direction::outbound, 0x0d000001, 0x22);
    const auto result = installer.install_pair(in, out);
    EXPECT_EQ(result.error, "");
    const std::lock_guard guard(gateway.lock);
    EXPECT_TRUE(gateway.singles.empty()) << "no add-sa";
    ASSERT_EQ(gateway.batches.size(), 1U);
    const auto& batch = gateway.batches[0];
    ASSERT_EQ(batch.size(), 2U);
    EXPECT_EQ(batch[0].dir, config::direction::inbound);
    EXPECT_EQ(batch[0].spi, 0xc0000001U);
    EXPECT_EQ(batch[0].cipher_key, in.cipher_key);
    EXPECT_EQ(batch[0].replay_window, 64U);
    EXPECT_EQ(batch[1].dir, config::direction::outbound);
    EXPECT_EQ(batch[1].spi, 0x0d000001U);
    EXPECT_EQ(batch[1].cipher_key, out.cipher_key);
    EXPECT_TRUE(gateway.deleted.empty());
}

TEST_F(installer_fixture, RefusedItemNamesItsHalfAndNothingIsRemoved)
{
    dataplane_installer installer(path);
    const auto in = child_half(config::direction::inbound, 0xc0000002, 0x11);
    const auto out = child_half(config::direction::outbound, 0x0d000002, 0x22);
    gateway.refuse_batch = "sas[1]: SA 0x0d000002 (outbound) already exists";
    auto result = installer.install_pair(in, out);
    EXPECT_EQ(result.error, "SA 0x0d000002 (outbound) already exists");
    EXPECT_EQ(result.refused, config::direction::outbound);
    gateway.refuse_batch = "sas[0]: SA 0xc0000002 (inbound) already exists";
    result = installer.install_pair(in, out);
    EXPECT_EQ(result.error, "SA 0xc0000002 (inbound) already exists");
    EXPECT_EQ(result.refused, config::direction::inbound);
    const std::lock_guard guard(gateway.lock);
    EXPECT_TRUE(gateway.deleted.empty()) << "add-sas is all or nothing: nothing to take out";
}

TEST_F(installer_fixture, ValidationErrorOfAnItemKeepsItsField)
{
    dataplane_installer installer(path);
    auto in = child_half(config::direction::inbound, 0xc0000003, 0x11);
    in.cipher_key_length = 5; // the loader refuses the key's length
    const auto out = child_half(config::direction::outbound, 0x0d000003, 0x22);
    const auto result = installer.install_pair(in, out);
    EXPECT_TRUE(result.error.starts_with("sas[0].key: ")) << result.error;
    EXPECT_EQ(result.refused, config::direction::inbound);
    const std::lock_guard guard(gateway.lock);
    EXPECT_TRUE(gateway.batches.empty());
    EXPECT_TRUE(gateway.deleted.empty());
}

TEST_F(installer_fixture, UnacknowledgedBatchTakesTheInboundSaOut)
{
    dataplane_installer installer(path);
    const auto in = child_half(config::direction::inbound, 0xc0000004, 0x11);
    const auto out = child_half(config::direction::outbound, 0x0d000004, 0x22);
    gateway.refuse_batch = "worker did not acknowledge the SA installs within 2 s";
    const auto result = installer.install_pair(in, out);
    EXPECT_EQ(result.error, "worker did not acknowledge the SA installs within 2 s");
    EXPECT_EQ(result.refused, config::direction::outbound);
    const std::lock_guard guard(gateway.lock);
    ASSERT_EQ(gateway.deleted.size(), 1U);
    EXPECT_EQ(gateway.deleted[0], std::make_pair(config::direction::inbound, 0xc0000004U));
}

TEST(installer, NoDataPlaneRefusesTheInboundHalf)
{
    dataplane_installer installer("/tmp/espresso-no-such-dir/dp.sock");
    const auto result = installer.install_pair(child_half(config::direction::inbound, 0xc0000005, 1),
                                               child_half(config::direction::outbound, 0x0d000005, 2));
    EXPECT_NE(result.error, "");
    EXPECT_EQ(result.refused, config::direction::inbound);
}

// espresso-ike writes add-sas requests as text (append_sa_json, append_add_sas_args): the bytes must be
// what the json DOM of sa_to_json dumps, for every shape of SA the daemon makes.
TEST(installer, SaTextIsTheDomDump)
{
    std::vector<config::sa_config> sas;
    for (const auto dir : {config::direction::inbound, config::direction::outbound}) {
        for (int shape = 0; shape < 8; ++shape) {
            const bool in = dir == config::direction::inbound;
            auto sa = child_half(dir,
                                 shape == 0 ? (in ? 0x100U : 0x101U)
                                            : 0xffffffffU - static_cast<uint32_t>(2 * shape + in),
                                 static_cast<uint8_t>(0xa0 + shape));
            switch (shape) {
            case 1: // AES-256-CBC + HMAC-SHA-512, ESN, the largest lifetimes, NAT-T
                sa.cipher = config::cipher_alg::aes_cbc;
                sa.cipher_key_bytes = 32;
                sa.cipher_key_length = 32;
                sa.integ = config::integ_alg::hmac_sha512_256;
                sa.integ_key_length = 64;
                std::fill_n(sa.integ_key.begin(), 64, uint8_t{0xfe});
                sa.esn = true;
                sa.lifetime = {UINT64_MAX, UINT64_MAX, UINT64_MAX - 1, 10};
                sa.udp = config::udp_encapsulation{4500, 65535};
                sa.replay_window = config::max_replay_window;
                break;
            case 2: // IPv6 everywhere, transport mode, AES-128-CBC + SHA-1
                sa.source = *config::parse_address("2001:db8::1");
                sa.destination = *config::parse_address("2001:db8:ffff:ffff:ffff:ffff:ffff:fffe");
                sa.local = *config::parse_prefix("2001:db8:1::/48");
                sa.remote = *config::parse_prefix("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff/128");
                sa.mode = config::ipsec_mode::transport;
                sa.cipher = config::cipher_alg::aes_cbc;
                sa.cipher_key_length = 16;
                sa.integ = config::integ_alg::hmac_sha1_96;
                sa.integ_key_length = 20;
                break;
            case 3: // AH, SHA-256, anti-replay off
                sa.protocol = config::ipsec_protocol::ah;
                sa.cipher = config::cipher_alg::null;
                sa.cipher_key_bytes = 0;
                sa.cipher_key_length = 0;
                sa.integ = config::integ_alg::hmac_sha256_128;
                sa.integ_key_length = 32;
                sa.replay_window = 0;
                break;
            case 4: // GMAC, SHA-384 lifetimes of packets only
                sa.cipher = config::cipher_alg::aes_gmac;
                sa.cipher_key_bytes = 24;
                sa.cipher_key_length = 28;
                sa.lifetime.packets = 1100;
                sa.lifetime.soft_packets = 1000;
                break;
            case 5:
                sa.integ = config::integ_alg::hmac_sha384_192;
                sa.cipher = config::cipher_alg::aes_cbc;
                sa.cipher_key_length = 16;
                sa.integ_key_length = 48;
                sa.local = *config::parse_prefix("0.0.0.0/0");
                sa.remote = *config::parse_prefix("10.1.2.3/32");
                break;
            case 6:
                sa.udp = config::udp_encapsulation{1, 4500};
                break;
            default:
                break;
            }
            sas.push_back(sa);
        }
    }
    for (const auto& sa : sas) {
        std::string text;
        append_sa_json(text, sa);
        EXPECT_EQ(text, sa_to_json(sa).dump());
        // Appends: what was in the buffer stays.
        std::string prefixed = "x";
        append_sa_json(prefixed, sa);
        EXPECT_EQ(prefixed, "x" + text);
    }
    // Fields equal to the data plane's defaults are left out (no integrity, esn false, zero lifetime
    // limits): the data plane reads back the same SA either way.
    EXPECT_EQ(sa_to_json(sas[0]).dump().find("lifetime"), std::string::npos);
    EXPECT_EQ(sa_to_json(sas[0]).dump().find("esn"), std::string::npos);
    EXPECT_EQ(sa_to_json(sas[0]).dump().find("integrity"), std::string::npos);
    // AH is left out here: espresso-ike negotiates ESP only, and sa_to_json writes the null cipher's
    // empty key, which the data plane refuses.
    std::vector<config::sa_config> esp;
    nlohmann::json list = nlohmann::json::array();
    for (const auto& sa : sas) {
        if (sa.protocol == config::ipsec_protocol::esp) {
            esp.push_back(sa);
            list.push_back(sa_to_json(sa));
        }
    }
    const auto back = dp::sas_from_json(list);
    ASSERT_TRUE(back.value) << back.error;
    ASSERT_EQ(back.value->size(), esp.size());
    for (size_t i = 0; i < esp.size(); ++i) {
        const auto& a = esp[i];
        const auto& b = (*back.value)[i];
        SCOPED_TRACE(list[i].dump());
        EXPECT_EQ(b.spi, a.spi);
        EXPECT_EQ(b.dir, a.dir);
        EXPECT_EQ(b.protocol, a.protocol);
        EXPECT_EQ(b.mode, a.mode);
        EXPECT_EQ(b.cipher, a.cipher);
        EXPECT_EQ(b.cipher_key_length, a.cipher_key_length);
        EXPECT_TRUE(std::equal(a.cipher_key.begin(), a.cipher_key.begin() + a.cipher_key_length,
                               b.cipher_key.begin()));
        EXPECT_EQ(b.integ, a.integ);
        EXPECT_EQ(b.integ_key_length, a.integ_key_length);
        EXPECT_TRUE(
            std::equal(a.integ_key.begin(), a.integ_key.begin() + a.integ_key_length, b.integ_key.begin()));
        EXPECT_EQ(b.esn, a.esn);
        EXPECT_EQ(b.lifetime.bytes, a.lifetime.bytes);
        EXPECT_EQ(b.lifetime.packets, a.lifetime.packets);
        EXPECT_EQ(b.lifetime.soft_bytes, a.lifetime.soft_bytes);
        EXPECT_EQ(b.lifetime.soft_packets, a.lifetime.soft_packets);
        EXPECT_EQ(b.local, a.local);
        EXPECT_EQ(b.remote, a.remote);
        EXPECT_EQ(b.udp.has_value(), a.udp.has_value());
        if (a.dir == config::direction::inbound) {
            EXPECT_EQ(b.replay_window, a.replay_window);
        }
        if (a.mode == config::ipsec_mode::tunnel) {
            EXPECT_EQ(b.source, a.source);
            EXPECT_EQ(b.destination, a.destination);
        }
    }
    std::vector<const config::sa_config*> items;
    nlohmann::json array = nlohmann::json::array();
    for (const auto& sa : sas) {
        items.push_back(&sa);
        array.push_back(sa_to_json(sa));
    }
    std::string args;
    append_add_sas_args(args, items, ike_owner);
    EXPECT_EQ(args, (nlohmann::json{{"sas", array}, {"owner", std::string(ike_owner)}}.dump()));
    // The whole text fits the room reserved up front (1024 bytes per SA), so no reallocation left a
    // copy of a key behind; the largest shapes above stay far below it.
    const size_t reserved = args.capacity();
    EXPECT_LE(args.size(), reserved);
    for (const auto& sa : sas) {
        std::string text;
        append_sa_json(text, sa);
        EXPECT_LT(text.size(), 700U) << text;
    }
}

// The client writes "op" before "args" (espresso-dp's fast add-sas path wants that order).
TEST(control_client, RequestEnvelopeHasOpBeforeArgs)
{
    char dir_template[] = "/tmp/espresso-env-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    const std::string socket_path = std::string(dir_template) + "/s.sock";
    const int listener = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, socket_path.c_str(), sizeof(address.sun_path) - 1);
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    ASSERT_EQ(::listen(listener, 1), 0);
    std::string received;
    std::thread peer([&] {
        const int fd = ::accept(listener, nullptr, nullptr);
        std::string in;
        char chunk[4096];
        for (;;) {
            const auto length = dp::control::decode_length(in);
            if (length && in.size() >= dp::control::length_prefix_bytes + *length) {
                received = in.substr(dp::control::length_prefix_bytes, *length);
                break;
            }
            const ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
            if (n <= 0) {
                break;
            }
            in.append(chunk, static_cast<size_t>(n));
        }
        std::string frame;
        dp::control::append_frame(frame,
                                  R"({"version": 1, "id": 1, "ok": true, "result": {"installed": 1}})");
        (void)::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL);
        ::close(fd);
    });
    auto client = dp::control_client::connect(socket_path);
    const auto reply = client.request("add-sas", {{"sas", nlohmann::json::array({{{"spi", 4097}}})}}, 2000ms);
    peer.join();
    ::close(listener);
    std::filesystem::remove_all(dir_template);
    EXPECT_TRUE(reply.value("ok", false));
    EXPECT_EQ(received, R"({"version":2,"id":1,"op":"add-sas","args":{"sas":[{"spi":4097}]}})");
}

} // namespace
} // namespace espresso::cp
