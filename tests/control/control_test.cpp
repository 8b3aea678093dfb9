// Control socket server + client against a fake gateway_api; SA JSON; telemetry cache; CLI layouts.
#include <gtest/gtest.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "control_server.h"
#include "espresso/config/loader.h"
#include "espresso/config/types.h"
#include "espresso/dp/control_client.h"
#include "espresso/dp/control_protocol.h"
#include "format.h"
#include "format_ike.h"
#include "sa_json.h"
#include "telemetry.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include <rte_telemetry.h>

namespace espresso::dp {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
namespace cli = espresso::cp::cli;

// --- fake gateway -------------------------------------------------------------------------------

class fake_gateway : public gateway_api {
public:
    std::string add_sa(const config::sa_config& sa) override
    {
        const std::lock_guard guard(lock);
        if (!refuse.empty()) {
            return refuse;
        }
        added.push_back(sa);
        return "";
    }
    std::string delete_sa(config::direction dir, uint32_t spi) override
    {
        const std::lock_guard guard(lock);
        deleted.emplace_back(dir, spi);
        return spi == 0xdead ? "no outbound SA with SPI 0x0000dead" : "";
    }
    std::string add_policy(const config::policy_config& policy, uint32_t& id) override
    {
        const std::lock_guard guard(lock);
        added_policies.push_back(policy);
        id = static_cast<uint32_t>(added_policies.size());
        return "";
    }
    std::string delete_policy(uint32_t id) override
    {
        return id == 7 ? "" : "no policy " + std::to_string(id);
    }
    std::string flush() override
    {
        const std::lock_guard guard(lock);
        ++flushes;
        return "";
    }
    std::vector<sa_snapshot> sas() const override
    {
        const std::lock_guard guard(lock);
        return snapshots;
    }
    std::vector<policy_snapshot> policies() const override { return {}; }
    std::vector<interface_snapshot> interfaces() const override
    {
        const std::lock_guard guard(lock);
        return ports;
    }
    std::vector<worker_snapshot> workers() const override
    {
        const std::lock_guard guard(lock);
        return worker_list;
    }
    void clear_counters() override
    {
        const std::lock_guard guard(lock);
        ++clears;
    }

    mutable std::mutex lock;
    std::string refuse;
    std::vector<config::sa_config> added;
    std::vector<std::pair<config::direction, uint32_t>> deleted;
    std::vector<config::policy_config> added_policies;
    std::vector<sa_snapshot> snapshots;
    std::vector<interface_snapshot> ports;
    std::vector<worker_snapshot> worker_list;
    int flushes = 0;
    int clears = 0;
};

config::ip_address addr(const char* text) { return *config::parse_address(text); }
config::ip_prefix prefix(const char* text) { return *config::parse_prefix(text); }

sa_snapshot make_sa(uint32_t spi, config::direction dir, const char* src, const char* dst)
{
    sa_snapshot s;
    s.config.spi = spi;
    s.config.dir = dir;
    s.config.source = addr(src);
    s.config.destination = addr(dst);
    s.config.cipher = config::cipher_alg::aes_gcm16;
    s.config.cipher_key_bytes = 16;
    s.config.cipher_key_length = 20;
    s.config.local = prefix("192.168.1.0/24");
    s.config.remote = prefix("192.168.2.0/24");
    s.interface = "outside";
    return s;
}

// --- a server polled by its own thread, as the main lcore would ----------------------------------

class server_fixture : public ::testing::Test {
protected:
    void SetUp() override
    {
        char dir_template[] = "/tmp/espresso-ctl-XXXXXX";
        ASSERT_NE(mkdtemp(dir_template), nullptr);
        dir = dir_template;
        path = dir + "/run/espresso/test.sock"; // two missing levels: created 0700
        server = std::make_unique<control_server>(gateway, path);
        thread = std::thread([this] {
            while (!stop.load()) {
                std::vector<std::function<void()>> todo;
                {
                    const std::lock_guard guard(tasks_lock);
                    todo.swap(tasks);
                }
                for (auto& task : todo) {
                    task();
                }
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
    // Runs `task` on the polling thread (publish() and client_count() are main-lcore calls).
    template <typename F>
    auto on_server(F task)
    {
        std::packaged_task<decltype(task())()> packaged(std::move(task));
        auto result = packaged.get_future();
        {
            const std::lock_guard guard(tasks_lock);
            tasks.emplace_back([&packaged] { packaged(); });
        }
        return result.get();
    }

    fake_gateway gateway;
    std::string dir;
    std::string path;
    std::unique_ptr<control_server> server;
    std::thread thread;
    std::atomic<bool> stop{false};
    std::mutex tasks_lock;
    std::vector<std::function<void()>> tasks;
};

// A raw connection for sending broken frames and reading replies byte-exactly.
class raw_connection {
public:
    explicit raw_connection(const std::string& path)
    {
        fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
        EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    }
    ~raw_connection() { close(); }
    void close()
    {
        if (fd_ >= 0) {
            ::close(fd_);
            fd_ = -1;
        }
    }
    void send(std::string_view bytes)
    {
        ASSERT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL), ssize_t(bytes.size()));
    }
    void send_frame(std::string_view body)
    {
        std::string frame;
        control::append_frame(frame, body);
        send(frame);
    }
    // Next frame as JSON; nullopt on EOF or timeout (eof() tells which).
    std::optional<json> read(std::chrono::milliseconds timeout = 3000ms)
    {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            if (const auto length = control::decode_length(buffer_);
                length && buffer_.size() >= control::length_prefix_bytes + *length) {
                json message = json::parse(buffer_.substr(control::length_prefix_bytes, *length));
                buffer_.erase(0, control::length_prefix_bytes + *length);
                return message;
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) {
                return std::nullopt;
            }
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
                continue;
            }
            char chunk[4096];
            const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
            if (n <= 0) {
                eof_ = true;
                return std::nullopt;
            }
            buffer_.append(chunk, static_cast<size_t>(n));
        }
    }
    bool eof() const { return eof_; }
    int fd() const { return fd_; }

private:
    int fd_ = -1;
    std::string buffer_;
    bool eof_ = false;
};

json good_sa_json()
{
    return json::parse(R"({
        "spi": "0x1001", "direction": "outbound", "protocol": "esp", "mode": "tunnel",
        "source": "198.51.100.1", "destination": "203.0.113.1",
        "encryption": "aes128gcm16", "key": "0x00112233445566778899aabbccddeeff01020304",
        "integrity": "none", "esn": false, "replay-window": 128,
        "selectors": {"local": "192.168.1.0/24", "remote": "192.168.2.0/24"},
        "lifetime": {"bytes": 0, "packets": 1000000}
    })");
}

// --- server + client ----------------------------------------------------------------------------

TEST_F(server_fixture, SocketAndDirectoryArePrivate)
{
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    ASSERT_EQ(::stat((dir + "/run/espresso").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST_F(server_fixture, SecondServerOnALiveSocketIsRefused)
{
    EXPECT_THROW(control_server(gateway, path), std::runtime_error);
}

TEST_F(server_fixture, AddSaReachesTheGatewayWithTheRightConfig)
{
    auto client = control_client::connect(path);
    const json reply = client.request("add-sa", {{"sa", good_sa_json()}});
    ASSERT_TRUE(reply["ok"].get<bool>()) << reply.dump();
    EXPECT_EQ(reply["version"], control::protocol_version); // the request's
    EXPECT_EQ(reply["result"]["spi"], 0x1001);
    EXPECT_EQ(reply["result"]["direction"], "outbound");
    EXPECT_EQ(reply.dump().find("0011223344"), std::string::npos);

    const std::lock_guard guard(gateway.lock);
    ASSERT_EQ(gateway.added.size(), 1u);
    const auto& sa = gateway.added[0];
    EXPECT_EQ(sa.spi, 0x1001u);
    EXPECT_EQ(sa.dir, config::direction::outbound);
    EXPECT_EQ(sa.mode, config::ipsec_mode::tunnel);
    EXPECT_EQ(sa.source, addr("198.51.100.1"));
    EXPECT_EQ(sa.destination, addr("203.0.113.1"));
    EXPECT_EQ(sa.cipher, config::cipher_alg::aes_gcm16);
    EXPECT_EQ(sa.cipher_key_bytes, 16);
    EXPECT_EQ(sa.cipher_key_length, 20);
    EXPECT_EQ(sa.cipher_key[0], 0x00);
    EXPECT_EQ(sa.cipher_key[1], 0x11);
    EXPECT_EQ(sa.cipher_key[19], 0x04);
    EXPECT_EQ(sa.local, prefix("192.168.1.0/24"));
    EXPECT_EQ(sa.remote, prefix("192.168.2.0/24"));
    EXPECT_EQ(sa.lifetime.packets, 1000000u);
    EXPECT_EQ(sa.origin, "control socket");
}

TEST_F(server_fixture, AddSaAcceptsDecimalSpi)
{
    auto client = control_client::connect(path);
    json sa = good_sa_json();
    sa["spi"] = 4097;
    const json reply = client.request("add-sa", {{"sa", sa}});
    ASSERT_TRUE(reply["ok"].get<bool>()) << reply.dump();
    const std::lock_guard guard(gateway.lock);
    ASSERT_EQ(gateway.added.size(), 1u);
    EXPECT_EQ(gateway.added[0].spi, 4097u);
}

TEST_F(server_fixture, AddSaWithAShortKeyNamesTheField)
{
    auto client = control_client::connect(path);
    json sa = good_sa_json();
    sa["key"] = "0x0011223344";
    const json reply = client.request("add-sa", {{"sa", sa}});
    EXPECT_FALSE(reply["ok"].get<bool>());
    EXPECT_EQ(reply["id"], 1);
    const std::string error = reply_error(reply);
    EXPECT_NE(error.find("sa.key"), std::string::npos) << error;
    EXPECT_EQ(error.find("security-associations"), std::string::npos) << error;
    const std::lock_guard guard(gateway.lock);
    EXPECT_TRUE(gateway.added.empty());
}

TEST_F(server_fixture, AddSaErrorsNameTheirFields)
{
    auto client = control_client::connect(path);
    struct bad {
        const char* key;
        json value;
        const char* field;
    };
    const std::vector<bad> cases{
        {"encryption", "aes128gcm", "sa.encryption"},
        {"spi", 5, "sa.spi"},
        {"direction", "sideways", "sa.direction"},
        {"replay-window", "many", "sa.replay-window"},
        {"selectors", json{{"local", "192.168.1.1/24"}, {"remote", "192.168.2.0/24"}}, "sa.selectors.local"},
        {"bogus-key", 1, "bogus-key"},
    };
    for (const auto& c : cases) {
        json sa = good_sa_json();
        sa[c.key] = c.value;
        const json reply = client.request("add-sa", {{"sa", sa}});
        EXPECT_FALSE(reply["ok"].get<bool>()) << c.key;
        EXPECT_NE(reply_error(reply).find(c.field), std::string::npos) << reply_error(reply);
    }
    const json missing = client.request("add-sa", json::object());
    EXPECT_NE(reply_error(missing).find("args.sa"), std::string::npos) << reply_error(missing);
    const json not_object = client.request("add-sa", {{"sa", "spi: 1"}});
    EXPECT_NE(reply_error(not_object).find("sa:"), std::string::npos) << reply_error(not_object);
}

TEST_F(server_fixture, GatewayRefusalIsAnErrorReply)
{
    gateway.refuse = "SA table full";
    auto client = control_client::connect(path);
    const json reply = client.request("add-sa", {{"sa", good_sa_json()}});
    EXPECT_EQ(reply_error(reply), "SA table full");
}

TEST_F(server_fixture, DeleteSaValidatesItsArguments)
{
    auto client = control_client::connect(path);
    EXPECT_EQ(reply_error(client.request("delete-sa", {{"direction", "inbound"}, {"spi", "0x2001"}})), "");
    EXPECT_NE(reply_error(client.request("delete-sa", {{"direction", "outbound"}, {"spi", 0xdead}}))
                  .find("0x0000dead"),
              std::string::npos);
    EXPECT_NE(
        reply_error(client.request("delete-sa", {{"direction", "up"}, {"spi", 1}})).find("args.direction"),
        std::string::npos);
    EXPECT_NE(
        reply_error(client.request("delete-sa", {{"direction", "inbound"}, {"spi", "zz"}})).find("args.spi"),
        std::string::npos);
    EXPECT_NE(reply_error(client.request("delete-sa", {{"direction", "inbound"}})).find("args.spi: missing"),
              std::string::npos);
    EXPECT_NE(reply_error(client.request("delete-sa", {{"direction", "inbound"}, {"spi", 1}, {"x", 1}}))
                  .find("args.x"),
              std::string::npos);
    const std::lock_guard guard(gateway.lock);
    ASSERT_EQ(gateway.deleted.size(), 2u);
    EXPECT_EQ(gateway.deleted[0], std::make_pair(config::direction::inbound, 0x2001u));
}

json good_sa_json(uint32_t spi, const char* direction)
{
    json sa = good_sa_json();
    sa["spi"] = spi;
    sa["direction"] = direction;
    return sa;
}

TEST_F(server_fixture, AddSasInstallsTheWholeBatch)
{
    auto client = control_client::connect(path);
    const json sas = json::array({good_sa_json(0x1001, "outbound"), good_sa_json(0x2001, "inbound"),
                                  good_sa_json(0x1002, "outbound")});
    const json reply = client.add_sas(sas);
    ASSERT_TRUE(reply["ok"].get<bool>()) << reply.dump();
    EXPECT_EQ(reply["result"]["installed"], 3);
    EXPECT_EQ(reply.dump().find("0011223344"), std::string::npos);
    const std::lock_guard guard(gateway.lock);
    ASSERT_EQ(gateway.added.size(), 3u);
    EXPECT_EQ(gateway.added[1].spi, 0x2001u);
    EXPECT_EQ(gateway.added[1].dir, config::direction::inbound);
    EXPECT_EQ(gateway.added[2].spi, 0x1002u);
    EXPECT_EQ(gateway.added[2].cipher_key[19], 0x04);
    EXPECT_EQ(gateway.added[2].origin, "control socket");
}

TEST_F(server_fixture, AddSasRefusesTheWholeBatchNamingTheItem)
{
    auto client = control_client::connect(path);
    json bad = good_sa_json(0x1002, "outbound");
    bad["key"] = "0x0011223344";
    const json reply = client.add_sas(json::array({good_sa_json(0x1001, "outbound"), bad}));
    const std::string error = reply_error(reply);
    EXPECT_NE(error.find("sas[1].key"), std::string::npos) << error;
    EXPECT_EQ(error.find("security-associations"), std::string::npos) << error;
    // The same SPI and direction twice in one batch: refused by the loader, naming the item.
    const json twice = client.add_sas(json::array({good_sa_json(0x1001, "outbound"), good_sa_json(0x1001, "outbound")}));
    EXPECT_NE(reply_error(twice).find("sas[1]"), std::string::npos) << reply_error(twice);
    for (const json& args : {json::object(), json{{"sas", json::array()}}, json{{"sas", good_sa_json()}},
                             json{{"sas", json::array({1})}}, json{{"sas", json::array()}, {"sa", 1}}}) {
        const json r = client.request("add-sas", args);
        EXPECT_FALSE(r["ok"].get<bool>()) << args.dump();
        EXPECT_NE(reply_error(r).find("sas"), std::string::npos) << reply_error(r);
    }
    json many = json::array(); // counted before anything is parsed (full SAs would pass 1 MiB)
    for (uint32_t i = 0; i <= control::max_batch_items; ++i) {
        many.push_back(json::object());
    }
    EXPECT_NE(reply_error(client.add_sas(many)).find("at most"), std::string::npos);
    const std::lock_guard guard(gateway.lock);
    EXPECT_TRUE(gateway.added.empty());
}

TEST_F(server_fixture, AddSasGatewayRefusalNamesTheItem)
{
    gateway.refuse = "SA table full";
    auto client = control_client::connect(path);
    const json reply = client.add_sas(json::array({good_sa_json(0x1001, "outbound")}));
    EXPECT_EQ(reply_error(reply), "sas[0]: SA table full");
}

TEST_F(server_fixture, DeleteSasValidatesEveryItem)
{
    auto client = control_client::connect(path);
    const json ok = client.delete_sas(json::array({{{"direction", "inbound"}, {"spi", "0x2001"}},
                                                   {{"direction", "outbound"}, {"spi", 4097}}}));
    ASSERT_TRUE(ok["ok"].get<bool>()) << ok.dump();
    EXPECT_EQ(ok["result"]["deleted"], 2);
    struct bad {
        json sas;
        const char* expected;
    };
    const std::vector<bad> cases{
        {json::array({{{"direction", "inbound"}, {"spi", 1}}, {{"direction", "up"}, {"spi", 1}}}), "sas[1].direction"},
        {json::array({{{"direction", "inbound"}, {"spi", "zz"}}}), "sas[0].spi"},
        {json::array({{{"direction", "inbound"}}}), "sas[0].spi: missing"},
        {json::array({{{"direction", "inbound"}, {"spi", 1}, {"x", 1}}}), "sas[0].x"},
        {json::array({1}), "sas[0]"},
        {json::array(), "args.sas"},
        {json::object(), "args.sas"},
        {json::array({{{"direction", "outbound"}, {"spi", 0xdead}}}), "sas[0]: no outbound SA with SPI 0x0000dead"},
    };
    for (const auto& c : cases) {
        const std::string error = reply_error(client.delete_sas(c.sas));
        EXPECT_NE(error.find(c.expected), std::string::npos) << c.sas.dump() << " -> " << error;
    }
    const std::lock_guard guard(gateway.lock);
    ASSERT_EQ(gateway.deleted.size(), 3u); // the two good ones, then 0xdead (refused by the gateway)
    EXPECT_EQ(gateway.deleted[1], std::make_pair(config::direction::outbound, 4097u));
}

TEST_F(server_fixture, PoliciesAreValidated)
{
    auto client = control_client::connect(path);
    const json good = {{"local", "192.168.1.0/24"},
                       {"remote", "192.168.2.0/24"},
                       {"protocol", "tcp"},
                       {"local-ports", "1024-65535"},
                       {"remote-ports", 443},
                       {"action", "protect"},
                       {"priority", 10},
                       {"spi", "0x1001"}};
    const json reply = client.request("add-policy", {{"policy", good}});
    ASSERT_TRUE(reply["ok"].get<bool>()) << reply.dump();
    EXPECT_EQ(reply["result"]["id"], 1);
    {
        const std::lock_guard guard(gateway.lock);
        ASSERT_EQ(gateway.added_policies.size(), 1u);
        const auto& p = gateway.added_policies[0];
        EXPECT_EQ(p.protocol, 6);
        EXPECT_EQ(p.local_port_min, 1024);
        EXPECT_EQ(p.local_port_max, 65535);
        EXPECT_EQ(p.remote_port_min, 443);
        EXPECT_EQ(p.remote_port_max, 443);
        EXPECT_EQ(p.action, config::policy_action::protect);
        EXPECT_EQ(p.priority, 10u);
        EXPECT_EQ(p.spi, 0x1001u);
    }
    for (const auto& [key, value, field] :
         std::vector<std::tuple<std::string, json, std::string>>{{"action", "encrypt", "policy.action"},
                                                                 {"local", "10.0.0.1/8", "policy.local"},
                                                                 {"local-ports", "9-1", "policy.local-ports"},
                                                                 {"spi", 5, "policy.spi"},
                                                                 {"colour", "red", "policy.colour"}}) {
        json bad = good;
        bad[key] = value;
        const std::string error = reply_error(client.request("add-policy", {{"policy", bad}}));
        EXPECT_NE(error.find(field), std::string::npos) << key << ": " << error;
    }
    EXPECT_EQ(reply_error(client.request("delete-policy", {{"id", 7}})), "");
    EXPECT_NE(reply_error(client.request("delete-policy", {{"id", "7"}})).find("args.id"), std::string::npos);
}

TEST_F(server_fixture, ListSasNeverContainsKeys)
{
    {
        const std::lock_guard guard(gateway.lock);
        auto sa = make_sa(0x1001, config::direction::outbound, "198.51.100.1", "203.0.113.1");
        // Even if a snapshot still carried key bytes, the reply must not show them.
        for (size_t i = 0; i < 20; ++i) {
            sa.config.cipher_key[i] = 0xab;
        }
        sa.config.integ = config::integ_alg::hmac_sha256_128;
        sa.config.integ_key_length = 32;
        for (size_t i = 0; i < 32; ++i) {
            sa.config.integ_key[i] = 0xcd;
        }
        gateway.snapshots.push_back(sa);
    }
    auto client = control_client::connect(path);
    const json reply = client.request("list-sas");
    ASSERT_TRUE(reply["ok"].get<bool>());
    const std::string text = reply.dump();
    EXPECT_EQ(text.find("abab"), std::string::npos);
    EXPECT_EQ(text.find("ABAB"), std::string::npos);
    EXPECT_EQ(text.find("cdcd"), std::string::npos);
    EXPECT_EQ(text.find("\"key\""), std::string::npos);
    EXPECT_EQ(text.find("integrity-key"), std::string::npos);
    ASSERT_EQ(reply["result"]["sas"].size(), 1u);
    EXPECT_EQ(reply["result"]["sas"][0]["spi"], 0x1001);
    EXPECT_EQ(reply["result"]["sas"][0]["encryption"], "aes128gcm16");
    // Filters.
    EXPECT_EQ(client.request("list-sas", {{"direction", "inbound"}})["result"]["sas"].size(), 0u);
    EXPECT_EQ(client.request("list-sas", {{"spi", 0x1001}})["result"]["sas"].size(), 1u);
}

TEST_F(server_fixture, OtherOperations)
{
    auto client = control_client::connect(path);
    EXPECT_TRUE(client.request("flush")["ok"].get<bool>());
    EXPECT_TRUE(client.request("clear-counters")["ok"].get<bool>());
    EXPECT_TRUE(client.request("show-interfaces")["result"]["interfaces"].is_array());
    EXPECT_TRUE(client.request("show-dataplane")["result"]["workers"].is_array());
    EXPECT_TRUE(client.request("list-policies")["result"]["policies"].is_array());
    EXPECT_EQ(client.request("ping")["result"]["version"], control::protocol_version);
    EXPECT_EQ(client.request("ping")["result"]["min-version"], 1);
    EXPECT_NE(reply_error(client.request("flush", {{"all", true}})).find("args.all"), std::string::npos);
    const std::lock_guard guard(gateway.lock);
    EXPECT_EQ(gateway.flushes, 1);
    EXPECT_EQ(gateway.clears, 1);
}

TEST_F(server_fixture, ReloadArgumentsAreValidated)
{
    // Only the refusals before any file is read: a real reload spawns `espresso-dp --check`
    // (tests/system/test_dp_reload.py runs it end to end).
    auto client = control_client::connect(path);
    EXPECT_NE(reply_error(client.request("reload", {{"path", "relative.yaml"}})).find("args.path: expected"),
              std::string::npos);
    EXPECT_NE(reply_error(client.request("reload", {{"path", 7}})).find("args.path"), std::string::npos);
    EXPECT_NE(reply_error(client.request("reload", {{"dry-run", "yes"}})).find("args.dry-run: expected true or false"),
              std::string::npos);
    EXPECT_NE(reply_error(client.request("reload", {{"file", "/x.yaml"}})).find("args.file: unknown argument"),
              std::string::npos);
    // This gateway knows no file (config_file() is empty): it must be named.
    EXPECT_NE(reply_error(client.request("reload")).find("knows no file"), std::string::npos);
    // The file is read once, here, before the check (the check and the apply use those bytes): what
    // cannot be read is refused before anything is spawned.
    const std::string missing = reply_error(client.request("reload", {{"path", "/nonexistent/espresso.yaml"}}));
    EXPECT_NE(missing.find("/nonexistent/espresso.yaml: cannot open the file"), std::string::npos) << missing;
    EXPECT_NE(missing.find("(nothing was changed)"), std::string::npos) << missing;
    const std::string directory = reply_error(client.request("reload", {{"path", "/tmp"}}));
    EXPECT_NE(directory.find("/tmp: not a regular file"), std::string::npos) << directory;
    const std::string device = reply_error(client.request("reload", {{"path", "/dev/zero"}}));
    EXPECT_NE(device.find("/dev/zero: not a regular file"), std::string::npos) << device;
    // A FIFO without a writer: open() itself blocked the main lcore until one came (review finding).
    const std::string fifo = "/tmp/espresso-control-test-fifo-" + std::to_string(::getpid());
    ::unlink(fifo.c_str());
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    const std::string pipe = reply_error(client.request("reload", {{"path", fifo}}));
    ::unlink(fifo.c_str());
    EXPECT_NE(pipe.find(fifo + ": not a regular file"), std::string::npos) << pipe;
}

// Owners (protocol version 2): add-sa, add-sas and add-policy tag what they install; list-sas and
// list-policies show the tag; flush-owner removes exactly one owner's SAs and policies.
TEST_F(server_fixture, OwnerTagsReachTheGateway)
{
    auto client = control_client::connect(path);
    ASSERT_TRUE(client.request("add-sa", {{"sa", good_sa_json()}, {"owner", "espresso-ike"}})["ok"].get<bool>());
    json second = good_sa_json();
    second["spi"] = "0x1002";
    ASSERT_TRUE(client.request("add-sas", {{"owner", "espresso-ike"}, {"sas", json::array({second})}})["ok"].get<bool>());
    json third = good_sa_json();
    third["spi"] = "0x1003";
    ASSERT_TRUE(client.request("add-sa", {{"sa", third}})["ok"].get<bool>()); // no owner: an operator's
    const json policy = {{"local", "192.168.1.0/24"}, {"remote", "192.168.2.0/24"}, {"action", "trap"}};
    ASSERT_TRUE(client.request("add-policy", {{"policy", policy}, {"owner", "espresso-ike"}})["ok"].get<bool>());
    for (const json& bad : {json(""), json(7), json("two words"), json(std::string(65, 'a'))}) {
        const std::string error = reply_error(client.request("add-sa", {{"sa", good_sa_json()}, {"owner", bad}}));
        EXPECT_NE(error.find("args.owner: expected 1 to 64 characters"), std::string::npos) << bad << " -> " << error;
    }
    EXPECT_NE(reply_error(client.request("flush-owner")).find("args.owner: missing"), std::string::npos);
    {
        const std::lock_guard guard(gateway.lock);
        ASSERT_EQ(gateway.added.size(), 3u);
        EXPECT_EQ(gateway.added[0].owner, "espresso-ike");
        EXPECT_EQ(gateway.added[1].owner, "espresso-ike");
        EXPECT_EQ(gateway.added[2].owner, "");
        ASSERT_EQ(gateway.added_policies.size(), 1u);
        EXPECT_EQ(gateway.added_policies[0].owner, "espresso-ike");
        gateway.snapshots = {make_sa(0x1001, config::direction::outbound, "198.51.100.1", "203.0.113.1"),
                             make_sa(0x2001, config::direction::inbound, "203.0.113.1", "198.51.100.1"),
                             make_sa(0x1003, config::direction::outbound, "198.51.100.1", "203.0.113.1"),
                             make_sa(0x3001, config::direction::inbound, "203.0.113.1", "198.51.100.1")};
        gateway.snapshots[0].config.owner = "espresso-ike";
        gateway.snapshots[1].config.owner = "espresso-ike";
        gateway.snapshots[3].config.owner = "someone-else";
        gateway.snapshots[2].config.origin = "sas.yaml:3:5"; // static: no owner
    }
    const json list = client.request("list-sas")["result"]["sas"];
    ASSERT_EQ(list.size(), 4u);
    EXPECT_EQ(list[0]["owner"], "espresso-ike");
    EXPECT_TRUE(list[2]["owner"].is_null());
    EXPECT_EQ(list[3]["owner"], "someone-else");
    const json one = client.request("list-sas", {{"direction", "inbound"}, {"spi", "0x2001"}})["result"]["sas"];
    ASSERT_EQ(one.size(), 1u);
    EXPECT_EQ(one[0]["spi"], 0x2001);

    const json flushed = client.request("flush-owner", {{"owner", "espresso-ike"}});
    ASSERT_TRUE(flushed["ok"].get<bool>()) << flushed.dump();
    EXPECT_EQ(flushed["result"]["sas"], 2);
    EXPECT_EQ(flushed["result"]["owner"], "espresso-ike");
    const std::lock_guard guard(gateway.lock);
    using id = std::pair<config::direction, uint32_t>;
    EXPECT_EQ(gateway.deleted, (std::vector<id>{{config::direction::outbound, 0x1001}, {config::direction::inbound, 0x2001}}));
}

// Version 1 clients (before owners) work as before: their replies say version 1, and what version 2
// added is refused to them by name.
TEST_F(server_fixture, Version1ClientsKeepWorking)
{
    raw_connection c(path);
    c.send_frame(json({{"version", 1}, {"id", 1}, {"op", "add-sa"}, {"args", {{"sa", good_sa_json()}}}}).dump());
    auto reply = c.read();
    ASSERT_TRUE(reply.has_value());
    EXPECT_TRUE((*reply)["ok"].get<bool>()) << reply->dump();
    EXPECT_EQ((*reply)["version"], 1);
    c.send_frame(R"({"version":1,"id":2,"op":"ping"})");
    reply = c.read();
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ((*reply)["version"], 1);
    EXPECT_EQ((*reply)["result"]["version"], control::protocol_version);
    json owned = good_sa_json();
    owned["spi"] = "0x1005";
    c.send_frame(
        json({{"version", 1}, {"id", 3}, {"op", "add-sa"}, {"args", {{"sa", owned}, {"owner", "espresso-ike"}}}}).dump());
    reply = c.read();
    ASSERT_TRUE(reply.has_value());
    EXPECT_NE((*reply)["error"].get<std::string>().find("args.owner: owners need protocol version 2"), std::string::npos)
        << reply->dump();
    EXPECT_EQ((*reply)["version"], 1);
    c.send_frame(R"({"version":1,"id":4,"op":"flush-owner","args":{"owner":"espresso-ike"}})");
    reply = c.read();
    ASSERT_TRUE(reply.has_value());
    EXPECT_NE((*reply)["error"].get<std::string>().find("flush-owner needs protocol version 2"), std::string::npos)
        << reply->dump();
    const std::lock_guard guard(gateway.lock);
    ASSERT_EQ(gateway.added.size(), 1u);
    EXPECT_EQ(gateway.added[0].owner, "");
    EXPECT_TRUE(gateway.deleted.empty());
}

TEST_F(server_fixture, MalformedRequestsGetErrorsNamingTheField)
{
    raw_connection c(path);
    struct expectation {
        std::string body;
        std::string error_part;
        json id;
    };
    const std::vector<expectation> cases{
        {R"({"version":3,"id":5,"op":"ping"})", "version: unsupported", 5},
        {R"({"version":0,"id":5,"op":"ping"})", "version: unsupported", 5},
        {R"({"id":5,"op":"ping"})", "version: missing", 5},
        {R"({"version":1,"id":6,"op":"reboot"})", "op: unknown operation \"reboot\"", 6},
        {R"({"version":1,"id":6})", "op: missing", 6},
        {R"({"version":1,"id":6,"op":7})", "op: expected a string", 6},
        {R"({"version":1,"op":"ping"})", "id: missing", nullptr},
        {R"({"version":1,"id":"7","op":"ping"})", "id: expected an integer", nullptr},
        {R"({"version":1,"id":8,"op":"ping","extra":1})", "extra: unknown key", 8},
        {R"({"version":1,"id":9,"op":"add-sa","args":[1]})", "args: expected an object", 9},
        {R"([1,2,3])", "expected a JSON object", nullptr},
        {R"(not json at all)", "not valid JSON", nullptr},
        {R"({"version":1,"id":10,"op":"add-sa","args":{"sa":)", "not valid JSON", nullptr},
        {"", "not valid JSON", nullptr},
    };
    for (const auto& e : cases) {
        c.send_frame(e.body);
        const auto reply = c.read();
        ASSERT_TRUE(reply.has_value()) << e.body;
        EXPECT_FALSE((*reply)["ok"].get<bool>()) << e.body;
        EXPECT_EQ((*reply)["id"], e.id) << e.body;
        EXPECT_NE((*reply)["error"].get<std::string>().find(e.error_part), std::string::npos)
            << e.body << " -> " << (*reply)["error"];
    }
    // The connection survives all of that.
    c.send_frame(R"({"version":1,"id":11,"op":"ping"})");
    const auto pong = c.read();
    ASSERT_TRUE(pong.has_value());
    EXPECT_TRUE((*pong)["ok"].get<bool>());
}

// Requests nested far deeper than the protocol ever nests (a review found three that overflowed the
// main lcore's stack: a `version` value dumped into the error message, an add-policy body dumped into
// YAML, an add-sa object walked recursively): each gets an error, and the server keeps serving.
TEST_F(server_fixture, DeeplyNestedRequestsAreRefused)
{
    raw_connection c(path);
    const size_t levels = 100000;
    auto nested = [&](const std::string& open, const std::string& close, const std::string& inner) {
        std::string text;
        text.reserve(levels * (open.size() + close.size()) + inner.size());
        for (size_t i = 0; i < levels; ++i) {
            text += open;
        }
        text += inner;
        for (size_t i = 0; i < levels; ++i) {
            text += close;
        }
        return text;
    };
    const std::vector<std::string> bodies{
        R"({"id":1,"version":)" + nested("[", "]", "1") + R"(,"op":"ping"})",
        R"({"version":1,"id":2,"op":"add-policy","args":{"policy":{"local":)" + nested("[", "]", "1") + "}}}",
        R"({"version":1,"id":3,"op":"add-sa","args":{"sa":)" + nested(R"({"a":)", "}", "1") + "}}",
        R"({"version":1,"id":4,"op":"add-sas","args":{"sas":[)" + nested(R"({"a":)", "}", "1") + "]}}",
        R"({"args":{"sas":[)" + nested(R"({"a":)", "}", "1") + R"(]},"version":1,"id":5,"op":"add-sas"})",
    };
    for (const auto& body : bodies) {
        c.send_frame(body);
        const auto reply = c.read();
        ASSERT_TRUE(reply.has_value()) << body.substr(0, 60);
        EXPECT_FALSE((*reply)["ok"].get<bool>()) << body.substr(0, 60);
        EXPECT_NE((*reply)["error"].get<std::string>().find("nested deeper than 32 levels"), std::string::npos)
            << (*reply)["error"];
    }
    // A request at the limit's side of ordinary use still works, and so does the connection.
    c.send_frame(R"({"version":1,"id":6,"op":"ping"})");
    const auto pong = c.read();
    ASSERT_TRUE(pong.has_value());
    EXPECT_TRUE((*pong)["ok"].get<bool>());
}

// A client that streams requests faster than they are handled (here 8 MiB of 1 KB frames that are not
// JSON, each answered with an error) is not buffered without bound: the server holds at most one
// maximal request and a read chunk at a time (a stream once grew its buffer to 190 MB, every handled
// frame moving all of it: review finding), and the client, which reads its replies, gets every one.
TEST_F(server_fixture, StreamedRequestsAreNotBufferedWithoutBound)
{
    raw_connection c(path);
    const size_t frame_body = 1020;
    const size_t frames = (size_t{8} << 20) / (frame_body + control::length_prefix_bytes);
    std::string batch;
    for (int i = 0; i < 64; ++i) {
        control::append_frame(batch, std::string(frame_body, 'x'));
    }
    std::atomic<bool> done{false};
    std::atomic<size_t> most{0};
    std::thread watcher([&] {
        while (!done.load()) {
            const size_t now = on_server([this] { return server->buffered_input(); });
            if (now > most.load()) {
                most = now;
            }
            std::this_thread::sleep_for(1ms);
        }
    });
    std::thread writer([&] {
        for (size_t sent = 0; sent < frames; sent += 64) {
            if (::send(c.fd(), batch.data(), batch.size(), MSG_NOSIGNAL) != ssize_t(batch.size())) {
                return;
            }
        }
    });
    size_t replies = 0;
    while (replies < frames) {
        const auto reply = c.read(10000ms);
        if (!reply.has_value()) {
            break;
        }
        EXPECT_FALSE((*reply)["ok"].get<bool>());
        ++replies;
    }
    writer.join();
    done = true;
    watcher.join();
    EXPECT_EQ(replies, frames);
    EXPECT_LE(most.load(), control::max_request_bytes + control::length_prefix_bytes + 16384);
    c.send_frame(R"({"version":1,"id":1,"op":"ping"})");
    const auto pong = c.read();
    ASSERT_TRUE(pong.has_value());
    EXPECT_TRUE((*pong)["ok"].get<bool>());
}

TEST_F(server_fixture, OversizedFrameGetsAnErrorAndTheConnectionCloses)
{
    raw_connection c(path);
    const auto prefix = control::encode_length(control::max_request_bytes + 1);
    c.send(std::string_view(reinterpret_cast<const char*>(prefix.data()), prefix.size()));
    const auto reply = c.read();
    ASSERT_TRUE(reply.has_value());
    EXPECT_FALSE((*reply)["ok"].get<bool>());
    EXPECT_NE((*reply)["error"].get<std::string>().find("exceeds the limit"), std::string::npos);
    EXPECT_FALSE(c.read().has_value());
    EXPECT_TRUE(c.eof());
    // Others are unaffected.
    auto client = control_client::connect(path);
    EXPECT_TRUE(client.request("ping")["ok"].get<bool>());
}

TEST_F(server_fixture, TruncatedFramesAndAbruptClosesAreHarmless)
{
    {
        raw_connection c(path);
        c.send(std::string("\x00\x00\x00\x64{\"version\":1", 16)); // announces 100 bytes, sends 12
    }
    {
        raw_connection c(path);
        c.send(std::string("\x00\x00", 2)); // half a length prefix
    }
    {
        raw_connection c(path);
        c.send_frame(R"({"version":1,"id":1,"op":"list-sas"})");
        // closes without reading the reply
    }
    std::this_thread::sleep_for(20ms);
    auto client = control_client::connect(path);
    EXPECT_TRUE(client.request("ping")["ok"].get<bool>());
    EXPECT_EQ(on_server([this] { return server->client_count(); }), 1u);
}

TEST_F(server_fixture, FramesSplitAcrossWritesAndPipelinedRequests)
{
    raw_connection c(path);
    std::string frames;
    control::append_frame(frames, R"({"version":1,"id":1,"op":"ping"})");
    control::append_frame(frames, R"({"version":1,"id":2,"op":"ping"})");
    for (char ch : frames) {
        c.send(std::string_view(&ch, 1));
    }
    EXPECT_EQ((*c.read())["id"], 1);
    EXPECT_EQ((*c.read())["id"], 2);
}

// A client that pipelines more requests than one poll handles and then closes its sending side gets
// every reply before the server closes (beyond the first poll's 16 they were dropped unanswered).
TEST_F(server_fixture, PipelinedRequestsBeforeAHalfCloseAreAllAnswered)
{
    raw_connection c(path);
    std::string frames;
    const int count = 3 * static_cast<int>(control_server::max_requests_per_poll) + 5;
    for (int i = 1; i <= count; ++i) {
        control::append_frame(frames, R"({"version":1,"id":)" + std::to_string(i) + R"(,"op":"ping"})");
    }
    c.send(frames);
    ASSERT_EQ(::shutdown(c.fd(), SHUT_WR), 0);
    for (int i = 1; i <= count; ++i) {
        const auto reply = c.read();
        ASSERT_TRUE(reply.has_value()) << "reply " << i << " of " << count;
        EXPECT_EQ((*reply)["id"], i);
    }
    EXPECT_FALSE(c.read().has_value());
    EXPECT_TRUE(c.eof());
}

TEST_F(server_fixture, SeveralClientsAtOnce)
{
    auto a = control_client::connect(path);
    auto b = control_client::connect(path);
    auto c = control_client::connect(path);
    for (int i = 0; i < 20; ++i) {
        EXPECT_TRUE(a.request("ping")["ok"].get<bool>());
        EXPECT_TRUE(b.request("list-sas")["ok"].get<bool>());
        EXPECT_TRUE(c.request("show-dataplane")["ok"].get<bool>());
    }
}

TEST_F(server_fixture, SubscribersReceivePublishedEvents)
{
    auto subscriber = control_client::connect(path);
    auto other = control_client::connect(path);
    ASSERT_TRUE(subscriber.request("subscribe")["ok"].get<bool>());
    ASSERT_TRUE(other.request("ping")["ok"].get<bool>());

    gateway_event soft{gateway_event::kind::soft_expire};
    soft.dir = config::direction::outbound;
    soft.spi = 0x1001;
    gateway_event acquire{gateway_event::kind::acquire};
    acquire.source = addr("192.168.1.5");
    acquire.destination = addr("192.168.2.9");
    acquire.protocol = 6;
    on_server([&] {
        server->publish(soft);
        server->publish(acquire);
        return 0;
    });
    const auto first = subscriber.next_event(2000ms);
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ((*first)["version"], 1);
    EXPECT_EQ((*first)["event"], "soft-expire");
    EXPECT_EQ((*first)["direction"], "outbound");
    EXPECT_EQ((*first)["spi"], 0x1001);
    EXPECT_FALSE(first->contains("id"));
    const auto second = subscriber.next_event(2000ms);
    ASSERT_TRUE(second.has_value());
    EXPECT_EQ((*second)["event"], "acquire");
    EXPECT_EQ((*second)["source"], "192.168.1.5");
    EXPECT_EQ((*second)["destination"], "192.168.2.9");
    EXPECT_EQ((*second)["protocol"], 6);
    // Not subscribed: nothing.
    EXPECT_FALSE(other.next_event(100ms).has_value());
    // Events interleaved with a request are queued, the reply still found.
    on_server([&] {
        server->publish(soft);
        return 0;
    });
    std::this_thread::sleep_for(20ms);
    EXPECT_TRUE(subscriber.request("ping")["ok"].get<bool>());
    EXPECT_TRUE(subscriber.next_event(0ms).has_value());
    ASSERT_TRUE(subscriber.request("unsubscribe")["ok"].get<bool>());
    on_server([&] {
        server->publish(soft);
        return 0;
    });
    EXPECT_FALSE(subscriber.next_event(100ms).has_value());
}

TEST_F(server_fixture, ASubscriberThatNeverReadsIsDroppedNotBuffered)
{
    raw_connection slow(path);
    slow.send_frame(R"({"version":1,"id":1,"op":"subscribe"})");
    std::this_thread::sleep_for(20ms);
    auto fast = control_client::connect(path);
    EXPECT_TRUE(fast.request("ping")["ok"].get<bool>());
    ASSERT_EQ(on_server([this] { return server->client_count(); }), 2u);
    gateway_event e{gateway_event::kind::soft_expire};
    e.spi = 0x1001;
    on_server([&] {
        // ~70 bytes each: well past the socket buffer and max_pending_output. Had publish() blocked
        // on the full socket, this would never return.
        // Stops as soon as the slow client is gone, so a slow (sanitizer) build does not spend its
        // time publishing to nobody.
        for (size_t i = 0; i < control_server::max_pending_output / 50 && server->client_count() > 1; ++i) {
            server->publish(e);
        }
        return 0;
    });
    EXPECT_EQ(on_server([this] { return server->client_count(); }), 1u);
    EXPECT_TRUE(fast.request("ping")["ok"].get<bool>());
}

// A client that stops reading with a reply (here: events) queued that still fits max_pending_output is
// dropped once nothing of it went out for the write timeout, instead of holding it and a slot for ever.
TEST_F(server_fixture, AClientThatStopsReadingIsDroppedAfterTheWriteTimeout)
{
    on_server([this] {
        server->set_write_timeout(2000ms); // longer than publishing takes on a loaded machine
        return 0;
    });
    raw_connection slow(path);
    slow.send_frame(R"({"version":1,"id":1,"op":"subscribe"})");
    std::this_thread::sleep_for(20ms);
    auto fast = control_client::connect(path);
    EXPECT_TRUE(fast.request("ping")["ok"].get<bool>());
    ASSERT_EQ(on_server([this] { return server->client_count(); }), 2u);
    gateway_event e{gateway_event::kind::soft_expire};
    e.spi = 0x1001;
    on_server([&] {
        // ~1 MB of events: past any socket buffer, well under max_pending_output (not that limit).
        for (int i = 0; i < 15000; ++i) {
            server->publish(e);
        }
        return 0;
    });
    EXPECT_EQ(on_server([this] { return server->client_count(); }), 2u);
    std::this_thread::sleep_for(3000ms);
    EXPECT_EQ(on_server([this] { return server->client_count(); }), 1u);
    EXPECT_TRUE(fast.request("ping")["ok"].get<bool>()); // an idle reader with nothing queued stays
}

TEST(control_client, ConnectErrorSaysWhatToCheck)
{
    try {
        control_client::connect("/nonexistent-espresso/hq.sock");
        FAIL() << "connect succeeded";
    } catch (const control_client_error& e) {
        EXPECT_EQ(e.what_kind(), control_client_error::kind::connect);
        EXPECT_EQ(std::string(e.what()), "cannot connect to /nonexistent-espresso/hq.sock: No such file or "
                                         "directory \u2014 is espresso-dp "
                                         "running?");
    }
}

TEST(control_server, RemovesAStaleSocketAndUnlinksOnExit)
{
    char dir_template[] = "/tmp/espresso-ctl-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    const std::string path = std::string(dir_template) + "/dp.sock";
    // A socket file nobody listens on, as a crashed espresso-dp leaves behind.
    {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
        ::close(fd);
    }
    fake_gateway gateway;
    {
        control_server server(gateway, path);
        EXPECT_TRUE(std::filesystem::exists(path));
    }
    EXPECT_FALSE(std::filesystem::exists(path));
    EXPECT_THROW(control_server(gateway, std::string(dir_template) + "/" + std::string(120, 'x')),
                 std::runtime_error);
    std::filesystem::remove_all(dir_template);
}

// --- telemetry cache ----------------------------------------------------------------------------

TEST(telemetry, QueriesReadTheRefreshedCache)
{
    fake_gateway gateway;
    auto out = make_sa(0x1001, config::direction::outbound, "198.51.100.1", "203.0.113.1");
    out.counters[static_cast<size_t>(sa_counter::encaps)] = 10;
    auto in = make_sa(0x1001, config::direction::inbound, "203.0.113.1", "198.51.100.1");
    in.drops[static_cast<size_t>(drop_reason::replay)] = 2;
    gateway.snapshots = {out, in};
    interface_snapshot port;
    port.name = "outside";
    port.rx_packets = 5;
    gateway.ports = {port};
    worker_snapshot worker;
    worker.lcore = 3;
    worker.rx_packets = 9;
    gateway.worker_list = {worker};
    refresh_telemetry(gateway);

    const auto list = telemetry_query("/espresso/sa", "");
    ASSERT_TRUE(list.has_value());
    EXPECT_EQ((*list)["outbound"], json::array({0x1001}));
    EXPECT_EQ((*list)["inbound"], json::array({0x1001}));
    const auto both = telemetry_query("/espresso/sa", "0x1001");
    ASSERT_TRUE(both.has_value());
    EXPECT_EQ((*both)["outbound"]["encaps"], 10);
    EXPECT_EQ((*both)["inbound"]["drop_replay"], 2);
    const auto one = telemetry_query("/espresso/sa", "in:4097");
    ASSERT_TRUE(one.has_value());
    EXPECT_FALSE(one->contains("outbound"));
    EXPECT_FALSE(telemetry_query("/espresso/sa", "0x9999").has_value());
    EXPECT_FALSE(telemetry_query("/espresso/sa", "junk").has_value());
    EXPECT_EQ((*telemetry_query("/espresso/interfaces", ""))["outside"]["rx_packets"], 5);
    EXPECT_EQ((*telemetry_query("/espresso/workers", ""))["lcore3"]["rx_packets"], 9);
    EXPECT_FALSE(telemetry_query("/espresso/nothing", "").has_value());

    // The conversion to DPDK's telemetry data (what dpdk-telemetry.py sees) accepts every shape.
    for (const auto& [command, params, rc] :
         std::vector<std::tuple<const char*, const char*, int>>{{"/espresso/sa", "", 0},
                                                                {"/espresso/sa", "0x1001", 0},
                                                                {"/espresso/sa", "out:0x1001", 0},
                                                                {"/espresso/sa", "0x9999", -EINVAL},
                                                                {"/espresso/interfaces", nullptr, 0},
                                                                {"/espresso/workers", "", 0}}) {
#if defined(__SANITIZE_ADDRESS__)
        // DPDK frees the containers inside `data` when it writes them to the telemetry socket, not
        // in rte_tel_data_free(); called directly, they would be reported as leaks.
        const __lsan::ScopedDisabler not_ours;
#endif
        rte_tel_data* data = rte_tel_data_alloc();
        ASSERT_NE(data, nullptr);
        EXPECT_EQ(telemetry_callback(command, params, data), rc) << command << " " << (params ? params : "");
        rte_tel_data_free(data);
    }
    register_telemetry(gateway); // registration outside EAL must not crash either
}

TEST(telemetry, OnDemandQueryWaitsForTheMainLoopsCopy)
{
    fake_gateway gateway;
    gateway.snapshots = {make_sa(0x3003, config::direction::outbound, "198.51.100.1", "203.0.113.1")};
    refresh_telemetry_on_demand(true);
    std::this_thread::sleep_for(600ms); // whatever copy an earlier test made is no longer fresh
    std::atomic<int> rc{1};
    std::thread query([&] {
#if defined(__SANITIZE_ADDRESS__)
        const __lsan::ScopedDisabler not_ours; // see QueriesReadTheRefreshedCache
#endif
        rte_tel_data* data = rte_tel_data_alloc();
        rc = telemetry_callback("/espresso/sa", "0x3003", data);
        rte_tel_data_free(data);
    });
    // The main loop's part: it sees the query asking and makes the copy; the query answers from it
    // (0x3003 is in no earlier copy).
    const auto deadline = std::chrono::steady_clock::now() + 2s;
    while (!telemetry_wanted() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(1ms);
    }
    EXPECT_TRUE(telemetry_wanted());
    refresh_telemetry(gateway);
    query.join();
    EXPECT_EQ(rc.load(), 0);
    EXPECT_FALSE(telemetry_wanted());
    // A fresh copy answers at once, without asking.
    rte_tel_data* data = rte_tel_data_alloc();
    {
#if defined(__SANITIZE_ADDRESS__)
        const __lsan::ScopedDisabler not_ours;
#endif
        EXPECT_EQ(telemetry_callback("/espresso/sa", "", data), 0);
        rte_tel_data_free(data);
    }
    EXPECT_FALSE(telemetry_wanted());
    refresh_telemetry_on_demand(false);
}

// --- SA JSON ------------------------------------------------------------------------------------

TEST(sa_json, SnapshotRoundTripsThroughTheLoaderExceptKeys)
{
    auto snapshot = make_sa(0x2001, config::direction::inbound, "203.0.113.1", "198.51.100.1");
    snapshot.config.udp = config::udp_encapsulation{4500, 4500};
    json sa = to_json(snapshot);
    // list-sas output plus a key is a valid add-sa argument once the runtime fields are removed.
    for (const char* runtime :
         {"spi-hex", "origin", "owner", "interface", "sequence", "consumed", "tfc-pad-applied", "counters", "drops"}) {
        sa.erase(runtime);
    }
    sa["key"] = "0x00112233445566778899aabbccddeeff01020304";
    const auto parsed = sa_from_json(sa);
    ASSERT_TRUE(parsed.value.has_value()) << parsed.error;
    EXPECT_EQ(parsed.value->spi, 0x2001u);
    EXPECT_EQ(parsed.value->dir, config::direction::inbound);
    ASSERT_TRUE(parsed.value->udp.has_value());
    EXPECT_EQ(parsed.value->udp->destination_port, 4500);
    wipe_json_secrets(sa);
    EXPECT_EQ(sa["key"].get<std::string>().find("0011"), std::string::npos);
}

// What sa_from_json answered before it validated a built tree (now config::plain_value): the SA as one-line YAML flow
// text through config::load_string, the field path re-rooted from "security-associations[0]" to "sa".
// The direct path must give the same SA and, for every refusal, the same message.
parsed<config::sa_config> sa_from_yaml_text(const json& sa)
{
    try {
        // Generated from a parsed JSON value, as the data plane did: no sandbox child (a fork per input
        // made this test time out under ASan).
        config::load_options generated;
        generated.sandbox = false;
        auto loaded = config::load_string("security-associations: [" + sa.dump() + "]\n", "control", generated);
        if (loaded.security_associations.size() != 1) {
            return {std::nullopt, "not one SA"};
        }
        return {loaded.security_associations.front(), {}};
    } catch (const config::config_error& e) {
        std::string field = e.field();
        const std::string list = "security-associations[0]";
        field = field.starts_with(list) ? "sa" + field.substr(list.size()) : field.empty() ? "sa" : field;
        std::string message = field + ": " + e.problem();
        if (!message.empty() && message.back() != '.') {
            message += '.';
        }
        if (!e.fix().empty()) {
            message += " Fix: " + e.fix();
            if (message.back() != '.' && message.back() != '?') {
                message += '.';
            }
        }
        return {std::nullopt, message};
    }
}

bool same_sa(const config::sa_config& a, const config::sa_config& b)
{
    return a.spi == b.spi && a.dir == b.dir && a.protocol == b.protocol && a.mode == b.mode &&
           a.source == b.source && a.destination == b.destination && a.cipher == b.cipher &&
           a.cipher_key_bytes == b.cipher_key_bytes && a.cipher_key == b.cipher_key &&
           a.cipher_key_length == b.cipher_key_length && a.integ == b.integ && a.integ_key == b.integ_key &&
           a.integ_key_length == b.integ_key_length && a.esn == b.esn && a.replay_window == b.replay_window &&
           a.local == b.local && a.remote == b.remote && a.udp.has_value() == b.udp.has_value() &&
           a.lifetime.bytes == b.lifetime.bytes && a.lifetime.packets == b.lifetime.packets &&
           a.lifetime.soft_bytes == b.lifetime.soft_bytes && a.lifetime.soft_packets == b.lifetime.soft_packets &&
           a.df == b.df && a.dscp == b.dscp && a.dscp_value == b.dscp_value && a.ttl == b.ttl &&
           a.tfc_pad_to == b.tfc_pad_to && a.initial_sequence == b.initial_sequence && a.origin == b.origin;
}

// add-sas read without a DOM for its SA objects (request_reader) must give what the DOM path gives:
// the same SAs, or the same message, for every JSON type in every field; anything but an add-sas with
// "op" before "args" is not captured; the captured text (keys) is overwritten by wipe().
TEST(sa_json, RequestReaderGivesWhatTheDomPathGives)
{
    const std::vector<json> values = {nullptr, true, false, 0, -1, 65536, 4294967296, 1.5, 1e3, "", "0x",
                                      "x", "ESP", "aes128gcm16", "sha256", "none", "copy", "inbound",
                                      "tunnel", "198.51.100.1", "192.168.1.0/24", "0x00112233445566778899aabbccddeeff01020304",
                                      json::array(), json::array({1, "a", json::object()}), json::object(),
                                      json{{"local", "10.0.0.0/8"}, {"remote", "10.1.0.0/16"}},
                                      json{{"bytes", 10}, {"nested", json::array({nullptr})}}};
    std::vector<json> cases;
    const json base = good_sa_json();
    for (const auto& [key, value] : base.items()) {
        for (const json& v : values) {
            json sa = base;
            sa[key] = v;
            cases.push_back(sa);
        }
    }
    for (const json& v : values) {
        json sa = base;
        sa["selectors"]["remote"] = v;
        cases.push_back(sa);
        cases.push_back(v); // not an object at all
    }
    request_reader reader;
    size_t refused = 0;
    json other = base;
    other["spi"] = 0x7001; // a second, valid item before the case
    for (const json& sa : cases) {
        for (const json& copy : {json::array({sa}), json::array({other, sa})}) {
            const std::string body = R"({"version": 1, "id": 3, "op": "add-sas", "args": {"sas": )" + copy.dump() + "}}";
            json request;
            ASSERT_TRUE(reader.parse(body, request)) << body;
            ASSERT_TRUE(reader.captured()) << body;
            EXPECT_EQ(request["args"]["sas"], json::array()) << "the DOM holds no SA object";
            EXPECT_EQ(request["id"], 3);
            const auto plain = sas_from_plain(reader.sas());
            const auto dom = sas_from_json(copy);
            ASSERT_EQ(plain.value.has_value(), dom.value.has_value()) << body << "\n" << plain.error << "\n" << dom.error;
            if (!dom.value) {
                EXPECT_EQ(plain.error, dom.error) << body;
                ++refused;
            } else {
                ASSERT_EQ(plain.value->size(), dom.value->size());
                for (size_t i = 0; i < dom.value->size(); ++i) {
                    EXPECT_TRUE(same_sa((*plain.value)[i], (*dom.value)[i])) << body;
                }
            }
            reader.wipe();
        }
    }
    EXPECT_GT(refused, cases.size() / 2);

    // "op" after "args", another op, or args.sas not where add-sas has it: the DOM as before.
    for (const std::string body :
         {R"({"version": 1, "id": 1, "args": {"sas": [{"spi": 1}]}, "op": "add-sas"})",
          R"({"version": 1, "id": 1, "op": "delete-sas", "args": {"sas": [{"spi": 1, "direction": "inbound"}]}})",
          R"({"version": 1, "id": 1, "op": "add-sas", "args": {"other": {"sas": [{"spi": 1}]}}})",
          R"({"version": 1, "id": 1, "op": "add-sas", "args": {"sas": [{"spi": 1}]}, "args": {"sas": 5}})"}) {
        json request;
        ASSERT_TRUE(reader.parse(body, request));
        EXPECT_FALSE(reader.captured()) << body;
        EXPECT_EQ(request, json::parse(body)) << body;
        reader.wipe();
    }
    json request;
    EXPECT_FALSE(reader.parse(R"({"version": 1, "op": "add-sas", "args": {"sas": [{"key": "0x12"})", request));
    EXPECT_FALSE(reader.parse(R"({"op": "add-sas"} trailing)", request));

    // The key text is in the reader's arena until wipe().
    ASSERT_TRUE(reader.parse(R"({"op": "add-sas", "args": {"sas": [{"key": "0xfeedface"}]}})", request));
    ASSERT_EQ(reader.sas().size(), 1U);
    const std::string_view key = reader.sas()[0].items.at(0).value.text;
    ASSERT_EQ(key, "0xfeedface");
    reader.wipe();
    EXPECT_EQ(std::string(key.data(), key.size()), std::string(key.size(), '\0'));
}

// add-sas bodies larger than one arena chunk, each a little longer than the one before (as outbound
// SAs' addresses grow in digits): the reader reuses its arena (before, every such request made a new
// chunk of exactly its size and wipe() cleared all the older ones again, quadratic in the requests),
// and wipe() still overwrites the key text of every one.
TEST(sa_json, RequestReaderReusesItsArenaForGrowingBodies)
{
    request_reader reader;
    json request;
    ASSERT_TRUE(reader.parse(R"({"op": "add-sas", "args": {"sas": [{"key": "0x01"}]}})", request));
    reader.wipe();
    for (size_t i = 0; i < 40; ++i) {
        const std::string body = R"({"op": "add-sas", "args": {"sas": [{"pad": ")" + std::string(300000 + i * 7, 'p') +
                                 R"(", "key": "0xfeedface"}]}})";
        ASSERT_TRUE(reader.parse(body, request));
        ASSERT_TRUE(reader.scanned()) << "the fast scanner's path (it keeps the body whole)";
        ASSERT_TRUE(reader.captured());
        ASSERT_EQ(reader.sas().size(), 1U);
        const std::string_view key = reader.sas()[0].items.at(1).value.text;
        ASSERT_EQ(key, "0xfeedface");
        reader.wipe();
        EXPECT_EQ(std::string(key.data(), key.size()), std::string(key.size(), '\0')) << "request " << i;
    }
    EXPECT_LE(reader.arena_bytes(), size_t{1} << 20) << "one 512 KiB chunk for the bodies, one for the small request";
}

// Two plain value trees alike (kinds, text, keys in order).
bool same_tree(const espresso::config::plain_value& a, const espresso::config::plain_value& b)
{
    if (a.what != b.what || a.text != b.text || a.items.size() != b.items.size()) {
        return false;
    }
    for (size_t i = 0; i < a.items.size(); ++i) {
        if (a.items[i].key != b.items[i].key || !same_tree(a.items[i].value, b.items[i].value)) {
            return false;
        }
    }
    return true;
}

// Reads `body` with parse() (the hand-written scanner first) and with the nlohmann path alone, and
// checks they agree on validity, DOM, capture and SA trees. Returns whether the scanner read it.
bool scanner_agrees(const std::string& body)
{
    request_reader fast;
    request_reader slow;
    json a;
    json b;
    const bool ok_a = fast.parse(body, a);
    const bool ok_b = slow.parse_with_nlohmann(body, b);
    EXPECT_EQ(ok_a, ok_b) << body;
    EXPECT_FALSE(slow.scanned());
    if (ok_a && ok_b) {
        EXPECT_EQ(a, b) << body;
        EXPECT_EQ(fast.captured(), slow.captured()) << body;
        EXPECT_EQ(fast.sas().size(), slow.sas().size()) << body;
        for (size_t i = 0; i < std::min(fast.sas().size(), slow.sas().size()); ++i) {
            EXPECT_TRUE(same_tree(fast.sas()[i], slow.sas()[i])) << body << " item " << i;
        }
    }
    EXPECT_TRUE(!fast.scanned() || ok_a) << body;
    return fast.scanned();
}

// The scanner (add_sas_scan.cpp) reads the usual add-sas requests and declines everything outside its
// subset of JSON; either way the result is the nlohmann path's. tests/fuzz/add_sas_fuzz.cpp does the same
// on arbitrary input.
TEST(sa_json, AddSasScannerAgreesWithTheNlohmannPath)
{
    const std::string sa = good_sa_json().dump();
    const std::string head = R"({"version": 1, "id": 42, "op": "add-sas", "args": {"sas": [)";
    const std::string body = head + sa + "," + sa + "]}}";
    EXPECT_TRUE(scanner_agrees(body));
    // Read by the scanner: whitespace, key order, empty list, nested values, repeated keys in an item.
    for (const std::string& ok : {
             std::string(" \t\r\n{ \"op\" : \"add-sas\" ,\"id\":0,\"version\":1,\"args\":{\"sas\":[ {} ]} } \n"),
             head + "]}}",
             head + R"({"spi": 4097, "spi": "0x1001", "x": [1, [2, {"a": null}], true], "y": {"z": {"w": false}}}]}})",
             head + R"({"replay-window": 0, "lifetime": {"bytes": 9999999999999999999}}]}})",
             std::string(R"({"op": "add-sas", "args": {"sas": [{"key": "0xfeedface"}]}})"),
             // espresso-ike's pairs carry their owner, before or after the list (protocol 2).
             std::string(R"({"version": 2, "id": 7, "op": "add-sas", "args": {"owner": "espresso-ike", "sas": [{}]}})"),
             std::string(R"({"version": 2, "id": 7, "op": "add-sas", "args": {"sas": [{}], "owner": "x y"}})"),
             std::string(R"({"version": 2, "op": "add-sas", "args": {"sas": [], "owner": ""}})"), // refused later, alike
         }) {
        EXPECT_TRUE(scanner_agrees(ok)) << ok;
    }
    // Declined, then read by nlohmann (valid JSON or not): the same result either way.
    for (const std::string& declined : {
             head + R"({"key": "0x\u0030"}]}})",                       // escape
             head + "{\"source\": \"caf\xc3\xa9\"}]}}",                // non-ASCII
             head + "{\"source\": \"a\x01\"}]}}",                      // control character (invalid)
             head + R"({"ttl": -1}]}})",                               // negative
             head + R"({"ttl": 1.5}]}})", head + R"({"ttl": 1e3}]}})", // fraction, exponent
             head + R"({"ttl": 01}]}})",                               // leading zero (invalid)
             head + R"({"ttl": 18446744073709551616}]}})",             // 20 digits
             head + R"(1]}})", head + R"([]]}})", head + R"(null]}})", // items that are not objects
             head + R"({"a": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}]}})", // deeper than the scanner goes
             head + R"({}]}, "extra": 1})",                            // unknown root key
             head + R"({}]}, "id": 5})",                               // repeated root key
             head + R"({}], "other": 1}})",                            // a second argument
             head + R"({}], "owner": 1}})", head + R"({}], "owner": null}})", // an owner that is not a string
             head + R"({}], "owner": "a", "owner": "b"}})",            // repeated owner
             std::string(R"({"op": "add-sas", "args": {"owner": "a"}})"), // no list
             std::string(R"({"op": "add-sas", "args": {"owner": "caf\u00e9", "sas": []}})"), // escape in the owner
             std::string(R"({"version": 1, "id": 1, "args": {"sas": [{}]}, "op": "add-sas"})"), // op after args
             std::string(R"({"version": 1, "id": 1, "op": "delete-sas", "args": {"sas": []}})"),
             std::string(R"({"version": -1, "id": 1, "op": "add-sas", "args": {"sas": []}})"),
             std::string(R"({"version": 1, "id": "x", "op": "add-sas", "args": {"sas": []}})"),
             std::string(R"({"version": 1, "op": "add-sas", "args": null})"),
             std::string(R"({"version": 1, "op": "add-sas"})"),
             std::string("\xef\xbb\xbf") + body,                      // byte-order mark
             body + " x", body + "}", body + std::string(1, '\0'), "[" + body + "]", std::string(""), std::string("{}"),
             head + R"({"a": tru}]}})", head + R"({"a": nul}]}})", head + R"({"a": truex}]}})",
             head + R"({"a" 1}]}})", head + R"({"a": 1,}]}})", head + R"({"a": 1 "b": 2}]}})",
             head + R"({"a": [1,]}]}})", head + R"({"a": "x}]}})",
         }) {
        EXPECT_FALSE(scanner_agrees(declined)) << declined;
    }
    // Every truncation of a valid request is invalid JSON for both paths.
    for (size_t n = 0; n < body.size(); ++n) {
        EXPECT_FALSE(scanner_agrees(body.substr(0, n)));
    }
    // One byte changed anywhere: whatever the scanner still reads, nlohmann reads alike.
    for (size_t i = 0; i < body.size(); ++i) {
        for (const char c : {'"', '\\', '{', '}', '[', ']', ',', ':', '0', '-', ' ', 'e', '\x80'}) {
            std::string changed = body;
            changed[i] = c;
            scanner_agrees(changed);
        }
    }
}

TEST(sa_json, DirectValidationGivesTheSameSasAndMessagesAsTheYamlTextPath)
{
    std::vector<json> bases = {good_sa_json(), json::parse(R"({
        "spi": 4097, "direction": "inbound", "protocol": "esp", "mode": "tunnel",
        "source": "203.0.113.1", "destination": "198.51.100.1", "encryption": "aes256",
        "key": "0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "integrity": "sha256",
        "integrity-key": "0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "esn": true,
        "replay-window": 1024, "udp-encapsulation": {"source-port": 4500, "destination-port": 4500},
        "selectors": {"local": "192.168.1.0/24", "remote": "0.0.0.0/0"}, "df": "set", "dscp": 10, "ttl": 64,
        "tfc-pad": 0, "lifetime": {"bytes": 1000, "soft-bytes": 900, "packets": 0}, "initial-sequence": 5
    })"),
                               json::parse(R"({
        "spi": "0x3001", "direction": "outbound", "protocol": "ah", "mode": "transport",
        "integrity": "sha512", "integrity-key": "0x)" +
                                           std::string(128, 'a') + R"(",
        "selectors": {"local": "2001:db8:1::/48", "remote": "2001:db8:2::/48"}
    })"),
                               json::parse(R"({
        "spi": "0x3002", "direction": "outbound", "protocol": "esp", "mode": "tunnel", "encryption": null,
        "integrity": "sha384", "integrity-key": "0x)" +
                                           std::string(96, 'b') + R"(",
        "source": "198.51.100.1", "destination": "203.0.113.1",
        "selectors": {"local": "10.0.0.0/8", "remote": "10.1.0.0/16"}
    })")};
    // Values a client may send for any key: every JSON type, empty and odd strings, wrong shapes.
    const std::vector<json> values = {nullptr,
                                      true,
                                      false,
                                      0,
                                      -1,
                                      255,
                                      256,
                                      65536,
                                      4294967296,
                                      1.5,
                                      1e3,
                                      "",
                                      "null",
                                      "~",
                                      "true",
                                      "0x",
                                      "0x100",
                                      "0xzz",
                                      "x",
                                      "Tunnel",
                                      "ESP",
                                      "AES128GCM16",
                                      "aes128gcm",
                                      "sha1",
                                      "md5",
                                      "3des",
                                      "des",
                                      "aes128",
                                      "none",
                                      "sha256",
                                      "aes128gmac",
                                      "copy",
                                      "set",
                                      "inbound",
                                      "outbound",
                                      "tunnel",
                                      "transport",
                                      "esp",
                                      "ah",
                                      "198.51.100.1",
                                      "2001:db8::1",
                                      "192.168.1.1/24",
                                      "192.168.1.0/24",
                                      "10.0.0.0/33",
                                      "1.2.3",
                                      "0x00112233445566778899aabbccddeeff01020304",
                                      "0x0011",
                                      "00112233",
                                      "0x00112233445566778899aabbccddeeff0102030g",
                                      " 1",
                                      "1 ",
                                      "\x1b",
                                      "a\tb",
                                      "\x7f",
                                      "ü",
                                      json::array(),
                                      json::array({1}),
                                      json::object(),
                                      json{{"local", "10.0.0.0/8"}},
                                      json{{"source-port", 0}},
                                      json{{"destination-port", "x"}, {"source-port", 70000}},
                                      json{{"bytes", 10}, {"soft-bytes", 10}},
                                      json{{"packets", 10}, {"soft-packets", 11}, {"junk", 1}},
                                      json{{"local", "10.0.0.0/8"}, {"remote", "2001:db8::/32"}},
                                      json{{"local", 1}, {"remote", nullptr}}};
    std::vector<json> cases;
    for (const json& base : bases) {
        cases.push_back(base);
        std::vector<std::string> keys;
        for (const auto& [key, value] : base.items()) {
            keys.push_back(key);
        }
        for (const std::string key : {"spi",
                                      "direction",
                                      "protocol",
                                      "mode",
                                      "source",
                                      "destination",
                                      "encryption",
                                      "key",
                                      "integrity",
                                      "integrity-key",
                                      "esn",
                                      "replay-window",
                                      "udp-encapsulation",
                                      "selectors",
                                      "lifetime",
                                      "df",
                                      "dscp",
                                      "ttl",
                                      "tfc-pad",
                                      "initial-sequence",
                                      "spy",
                                      "Key",
                                      ""}) {
            for (const json& v : values) {
                json sa = base;
                sa[key] = v;
                cases.push_back(sa);
            }
            json without = base;
            without.erase(key);
            cases.push_back(without);
        }
        for (const std::string& key : keys) {
            if (base[key].is_object()) {
                for (const auto& [inner, value] : base[key].items()) {
                    for (const json& v : values) {
                        json sa = base;
                        sa[key][inner] = v;
                        cases.push_back(sa);
                    }
                }
            }
        }
    }
    size_t refused = 0;
    for (const json& sa : cases) {
        const auto direct = sa_from_json(sa);
        const auto text = sa_from_yaml_text(sa);
        ASSERT_EQ(direct.value.has_value(), text.value.has_value())
            << sa.dump() << "\n direct: " << direct.error << "\n text:   " << text.error;
        if (!direct.value) {
            if (text.error.find("control character 0x7f") != std::string::npos) {
                // The text path refused DEL anywhere in the line (it is not YAML) without naming a field;
                // DEL can be in a JSON string, and now the field it is in is refused for what it is.
                EXPECT_TRUE(direct.error.starts_with("sa.")) << direct.error;
            } else {
                EXPECT_EQ(direct.error, text.error) << sa.dump();
            }
            ++refused;
            continue;
        }
        const auto& a = *direct.value;
        const auto& b = *text.value;
        EXPECT_EQ(a.origin, "control socket");
        EXPECT_TRUE(a.spi == b.spi && a.dir == b.dir && a.protocol == b.protocol && a.mode == b.mode &&
                    a.source == b.source && a.destination == b.destination && a.cipher == b.cipher &&
                    a.cipher_key_bytes == b.cipher_key_bytes && a.cipher_key == b.cipher_key &&
                    a.cipher_key_length == b.cipher_key_length && a.integ == b.integ &&
                    a.integ_key == b.integ_key && a.integ_key_length == b.integ_key_length &&
                    a.esn == b.esn && a.replay_window == b.replay_window && a.local == b.local &&
                    a.remote == b.remote && a.udp.has_value() == b.udp.has_value() &&
                    a.lifetime.bytes == b.lifetime.bytes && a.lifetime.packets == b.lifetime.packets &&
                    a.lifetime.soft_bytes == b.lifetime.soft_bytes &&
                    a.lifetime.soft_packets == b.lifetime.soft_packets && a.df == b.df && a.dscp == b.dscp &&
                    a.dscp_value == b.dscp_value && a.ttl == b.ttl && a.tfc_pad_to == b.tfc_pad_to &&
                    a.initial_sequence == b.initial_sequence)
            << sa.dump();
    }
    EXPECT_GT(refused, cases.size() / 2) << "the table should mostly hold refusals";

    // Batches: the same per-item messages, now named sas[i].
    json batch = json::array({bases[0], bases[1]});
    batch[1]["ttl"] = 0;
    const auto refused_batch = sas_from_json(batch);
    ASSERT_FALSE(refused_batch.value.has_value());
    json single = bases[1];
    single["ttl"] = 0;
    EXPECT_EQ(refused_batch.error, "sas[1]" + sa_from_yaml_text(single).error.substr(2));
    // A duplicate SPI names both items (the text path named a column of a line nobody wrote).
    const auto twice = sas_from_json(json::array({bases[0], bases[1], bases[0]}));
    ASSERT_FALSE(twice.value.has_value());
    EXPECT_EQ(twice.error, "sas[2].spi: duplicate SPI 0x00001001 among outbound SAs; first used at sas[0]. "
                           "Fix: give each outbound SA its own SPI.");
    const auto ok = sas_from_json(json::array({bases[0], bases[1], bases[2], bases[3]}));
    ASSERT_TRUE(ok.value.has_value()) << ok.error;
    ASSERT_EQ(ok.value->size(), 4u);
    EXPECT_EQ((*ok.value)[2].integ_key[0], 0xaa);
    EXPECT_EQ((*ok.value)[3].origin, "control socket");
}

// --- CLI layouts --------------------------------------------------------------------------------

std::vector<std::string> lines(const std::string& text)
{
    std::vector<std::string> out;
    size_t start = 0;
    while (start < text.size()) {
        const size_t end = text.find('\n', start);
        out.push_back(text.substr(start, end - start));
        start = end == std::string::npos ? text.size() : end + 1;
    }
    return out;
}

TEST(cli_format, CryptoIpsecSaGroupsAMirroredPairIntoOneSession)
{
    auto out = make_sa(0x1001, config::direction::outbound, "198.51.100.1", "203.0.113.1");
    auto in = make_sa(0x2001, config::direction::inbound, "203.0.113.1", "198.51.100.1");
    for (auto c : {sa_counter::encaps, sa_counter::encrypt, sa_counter::digest}) {
        out.counters[static_cast<size_t>(c)] = 10;
    }
    for (auto c : {sa_counter::decaps, sa_counter::decrypt, sa_counter::verify}) {
        in.counters[static_cast<size_t>(c)] = 10;
    }
    in.drops[static_cast<size_t>(drop_reason::replay)] = 2;
    in.drops[static_cast<size_t>(drop_reason::icv)] = 1;
    const json result = {{"sas", json::array({to_json(in), to_json(out)})}};
    const std::string expected = R"(interface: outside
    Crypto map tag: espresso, local addr 198.51.100.1

   protected vrf: (none)
   local  ident (addr/mask/prot/port): (192.168.1.0/255.255.255.0/0/0)
   remote ident (addr/mask/prot/port): (192.168.2.0/255.255.255.0/0/0)
   current_peer 203.0.113.1 port 500
     PERMIT, flags={origin_is_acl,}
    #pkts encaps: 10, #pkts encrypt: 10, #pkts digest: 10
    #pkts decaps: 10, #pkts decrypt: 10, #pkts verify: 10
    #pkts compressed: 0, #pkts decompressed: 0
    #pkts not compressed: 0, #pkts compr. failed: 0
    #pkts not decompressed: 0, #pkts decompress failed: 0
    #send errors 0, #recv errors 3
    #pkts replay failed: 2
    #pkts ICV failed: 1

     local crypto endpt.: 198.51.100.1, remote crypto endpt.: 203.0.113.1
     current outbound spi: 0x1001(4097)

     inbound esp sas:
      spi: 0x2001(8193)
        transform: esp-aes-gcm 128 ,
        in use settings ={Tunnel, }
        sa timing: remaining key lifetime (k/sec): (unlimited/static)
        sa timing: remaining key lifetime (packets): (unlimited)
        keying: static, no time lifetime
        replay detection support: Y, window 128
        Status: ACTIVE
     inbound ah sas:
     outbound esp sas:
      spi: 0x1001(4097)
        transform: esp-aes-gcm 128 ,
        in use settings ={Tunnel, }
        sa timing: remaining key lifetime (k/sec): (unlimited/static)
        sa timing: remaining key lifetime (packets): (unlimited)
        keying: static, no time lifetime
        replay detection support: N
        Status: ACTIVE
     outbound ah sas:

)";
    EXPECT_EQ(cli::format_crypto_ipsec_sa(result), expected);
}

TEST(cli_format, CryptoIpsecSaShowsUnpairedSasApart)
{
    auto out = make_sa(0x1001, config::direction::outbound, "198.51.100.1", "203.0.113.1");
    auto in = make_sa(0x3001, config::direction::inbound, "203.0.113.7", "198.51.100.1"); // other peer
    in.config.cipher = config::cipher_alg::aes_cbc;
    in.config.cipher_key_bytes = 32;
    in.config.integ = config::integ_alg::hmac_sha256_128;
    in.config.udp = config::udp_encapsulation{4500, 4500};
    in.config.lifetime.bytes = 1u << 30;
    in.config.lifetime.packets = 1000;
    in.life_bytes = 1u << 20;
    in.life_packets = 10;
    const auto text = cli::format_crypto_ipsec_sa({{"sas", json::array({to_json(out), to_json(in)})}});
    const auto all = lines(text);
    EXPECT_EQ(std::count(all.begin(), all.end(), "   protected vrf: (none)"), 2);
    EXPECT_EQ(std::count(all.begin(), all.end(), "interface: outside"), 1);
    EXPECT_NE(text.find("current_peer 203.0.113.7 port 4500"), std::string::npos) << text;
    EXPECT_NE(text.find("transform: esp-256-aes esp-sha256-hmac ,"), std::string::npos) << text;
    EXPECT_NE(text.find("in use settings ={Tunnel UDP-Encaps, }"), std::string::npos) << text;
    EXPECT_NE(text.find("(k/sec): (1047552/static)"), std::string::npos) << text;
    EXPECT_NE(text.find("(packets): (990)"), std::string::npos) << text;
    EXPECT_NE(text.find("current outbound spi: 0x0(0)"), std::string::npos) << text;
    EXPECT_EQ(cli::format_crypto_ipsec_sa({{"sas", json::array()}}), "No IPsec SAs installed.\n");
    // Garbage in does not throw.
    EXPECT_NO_THROW(cli::format_crypto_ipsec_sa({{"sas", json::array({1, "x", nullptr})}}));
    EXPECT_NO_THROW(cli::format_crypto_ipsec_sa(json("nonsense")));
}

// IKE-keyed SAs (listed by espresso-ike, or origin "ike:PEER/TUNNEL") get their time lifetime from espresso-ike's list-ike-sas,
// matched by SPI and direction; static ones say so.
TEST(cli_format, CryptoIpsecSaShowsTheTimeLifetimeOfIkeChildSas)
{
    auto out = make_sa(0xc0000001, config::direction::outbound, "198.51.100.1", "203.0.113.1");
    auto in = make_sa(0xc0000002, config::direction::inbound, "203.0.113.1", "198.51.100.1");
    out.config.origin = "ike:branch/lan";
    in.config.origin = "control socket"; // what espresso-dp lists for SAs added through its socket
    out.config.lifetime.bytes = 1u << 30;
    out.life_bytes = 1u << 20;
    auto manual = make_sa(0x1001, config::direction::outbound, "198.51.100.1", "203.0.113.9");
    manual.config.origin = "gw.yaml:12:5";
    auto orphan = make_sa(0xc0000003, config::direction::inbound, "203.0.113.8", "198.51.100.1");
    orphan.config.origin = "ike:other/lan";
    json result = {{"sas", json::array({to_json(out), to_json(in), to_json(manual), to_json(orphan)})}};
    const json ike = {{"ike-sas", json::array({{{"peer", "branch"},
                                                 {"children", json::array({{{"tunnel", "lan"},
                                                                            {"spi-in", "0xc0000002"},
                                                                            {"spi-out", "0xc0000001"},
                                                                            {"state", "INSTALLED"},
                                                                            {"rekey-in-seconds", 3451},
                                                                            {"rekey-time-seconds", 3600}}})}}})}};
    cli::add_ike_lifetimes(result, &ike);
    const json& sas = result["sas"];
    EXPECT_EQ(sas[0]["keying"], "ike");
    EXPECT_EQ(sas[0]["ike"]["rekey-in-seconds"], 3451);
    EXPECT_EQ(sas[0]["ike"]["rekey-time-seconds"], 3600);
    EXPECT_EQ(sas[0]["ike"]["peer"], "branch");
    EXPECT_EQ(sas[1]["keying"], "ike"); // found by SPI in espresso-ike's list
    EXPECT_EQ(sas[1]["ike"]["tunnel"], "lan");
    EXPECT_EQ(sas[2]["keying"], "static");
    EXPECT_FALSE(sas[2].contains("ike"));
    EXPECT_EQ(sas[3]["keying"], "ike");
    EXPECT_TRUE(sas[3]["ike"].is_null());
    const std::string text = cli::format_crypto_ipsec_sa(result);
    EXPECT_NE(text.find("sa timing: remaining key lifetime (k/sec): (1047552/3451)"), std::string::npos) << text;
    EXPECT_NE(text.find("sa timing: remaining key lifetime (k/sec): (unlimited/3451)"), std::string::npos) << text;
    EXPECT_NE(text.find("keying: IKE branch/lan, rekey in 3451 s (rekey-time 3600 s)"), std::string::npos) << text;
    EXPECT_NE(text.find("(k/sec): (unlimited/static)"), std::string::npos) << text;
    EXPECT_NE(text.find("keying: static (gw.yaml:12:5), no time lifetime"), std::string::npos) << text;
    EXPECT_NE(text.find("(k/sec): (unlimited/unknown)"), std::string::npos) << text;
    EXPECT_NE(text.find("keying: IKE other/lan, time lifetime unknown"), std::string::npos) << text;

    // rekey-time 0, a rekeyed Child SA, and no IKE daemon at all.
    json ike2 = ike;
    auto& child = ike2["ike-sas"][0]["children"][0];
    child["rekey-in-seconds"] = nullptr;
    child["rekey-time-seconds"] = 0;
    json again = {{"sas", json::array({to_json(out)})}};
    cli::add_ike_lifetimes(again, &ike2);
    EXPECT_NE(cli::format_crypto_ipsec_sa(again).find("(k/sec): (1047552/unlimited)"), std::string::npos);
    EXPECT_NE(cli::format_crypto_ipsec_sa(again).find("keying: IKE branch/lan, no rekey by time (rekey-time 0 s)"),
              std::string::npos);
    child["state"] = "REKEYED";
    again = {{"sas", json::array({to_json(out)})}};
    cli::add_ike_lifetimes(again, &ike2);
    EXPECT_NE(cli::format_crypto_ipsec_sa(again).find("keying: IKE branch/lan, rekeyed"), std::string::npos);
    again = {{"sas", json::array({to_json(out)})}};
    cli::add_ike_lifetimes(again, nullptr);
    EXPECT_TRUE(again["sas"][0]["ike"].is_null());
    EXPECT_NE(cli::format_crypto_ipsec_sa(again).find("(1047552/unknown)"), std::string::npos);
    // Garbage from either daemon does not throw.
    json junk = {{"sas", json::array({1, to_json(in)})}};
    const json bad_ike = {{"ike-sas", json::array({1, {{"children", "x"}}, {{"children", json::array({2})}}})}};
    EXPECT_NO_THROW(cli::add_ike_lifetimes(junk, &bad_ike));
    EXPECT_NO_THROW(cli::format_crypto_ipsec_sa(junk));
    json not_object = "x";
    EXPECT_NO_THROW(cli::add_ike_lifetimes(not_object, &ike));
}

TEST(cli_format, AddressAndMask)
{
    EXPECT_EQ(cli::address_and_mask("192.168.1.0/24"), "192.168.1.0/255.255.255.0");
    EXPECT_EQ(cli::address_and_mask("0.0.0.0/0"), "0.0.0.0/0.0.0.0");
    EXPECT_EQ(cli::address_and_mask("10.1.2.3/32"), "10.1.2.3/255.255.255.255");
    EXPECT_EQ(cli::address_and_mask("2001:db8::/32"), "2001:db8::/32");
}

TEST(cli_format, InterfacesAndDataplane)
{
    interface_snapshot port;
    port.name = "outside";
    port.device = "net_af_packet0,iface=wan0";
    port.mac = {0x02, 0, 0, 0, 0, 0x01};
    port.address = addr("198.51.100.1");
    port.prefix_length = 24;
    port.mtu = 1500;
    port.link_up = true;
    port.tap = "dtap0";
    port.rx_packets = 10;
    port.rx_bytes = 1000;
    port.tx_packets = 9;
    port.tx_bytes = 900;
    const std::string interfaces = cli::format_interfaces({{"interfaces", json::array({to_json(port)})}});
    EXPECT_EQ(interfaces, "outside is up\n"
                          "  Device net_af_packet0,iface=wan0 (port 0), address is 02:00:00:00:00:01\n"
                          "  Internet address is 198.51.100.1/24\n"
                          "  MTU 1500 bytes\n"
                          "  Exception path: dtap0\n"
                          "  10 packets input, 1000 bytes, 0 missed, 0 input errors\n"
                          "  9 packets output, 900 bytes, 0 output errors\n");

    // Dual stack: both addresses; IPv6 only: the one address, once, as IPv6.
    port.address6 = addr("2001:db8:ff1::1");
    port.prefix_length6 = 64;
    std::string dual = cli::format_interfaces({{"interfaces", json::array({to_json(port)})}});
    EXPECT_NE(dual.find("  Internet address is 198.51.100.1/24\n  IPv6 address is 2001:db8:ff1::1/64\n"), std::string::npos)
        << dual;
    port.address = port.address6;
    port.prefix_length = 64;
    std::string v6 = cli::format_interfaces({{"interfaces", json::array({to_json(port)})}});
    EXPECT_NE(v6.find("  IPv6 address is 2001:db8:ff1::1/64\n  MTU"), std::string::npos) << v6;

    worker_snapshot worker;
    worker.lcore = 1;
    worker.rx_packets = 100;
    worker.tx_packets = 97;
    worker.to_exception = 1;
    worker.busy_percent = 3.25;
    worker.drops[static_cast<size_t>(gateway_drop::no_route)] = 2;
    const std::string dataplane = cli::format_dataplane({{"workers", json::array({to_json(worker)})}});
    EXPECT_EQ(dataplane, "Worker  Lcore  RX packets      TX packets      To kernel     Busy\n"
                         "0       1      100             97              1             3.2%\n"
                         "        drops: no_route 2\n"
                         "Total          100             97              1\n");
    worker.fragments = 5;
    worker.reassembled = 2;
    worker.drops[static_cast<size_t>(gateway_drop::frag_timeout)] = 1;
    const std::string with_fragments = cli::format_dataplane({{"workers", json::array({to_json(worker)})}});
    EXPECT_NE(with_fragments.find("        fragments to the gateway: 5 received, 2 datagrams reassembled\n"
                                  "        drops: frag_timeout 1, no_route 2\n"),
              std::string::npos)
        << with_fragments;
    EXPECT_FALSE(to_json(worker).contains("local-traffic")); // only the main lcore's row has it
    worker.handed_off = 4;
    worker.handed_in = 3;
    EXPECT_EQ(to_json(worker)["handed-off"], 4u);
    EXPECT_EQ(to_json(worker)["handed-in"], 3u);

    // The main lcore's row carries the gateway's own traffic (TAP <-> SPD) counters.
    worker_snapshot main_row;
    main_row.lcore = 0;
    main_row.main = true;
    main_row.local[static_cast<size_t>(local_counter::out_protected)] = 5;
    main_row.local[static_cast<size_t>(local_counter::out_implicit_bypass)] = 2;
    main_row.local[static_cast<size_t>(local_counter::in_decrypted)] = 4;
    main_row.drops[static_cast<size_t>(gateway_drop::unprotected)] = 3;
    const json main_json = to_json(main_row);
    ASSERT_TRUE(main_json.contains("local-traffic")) << main_json.dump();
    EXPECT_EQ(main_json["local-traffic"]["out_protected"], 5);
    EXPECT_EQ(main_json["local-traffic"]["in_clear"], 0);
    EXPECT_EQ(main_json["local-traffic"].size(), static_cast<size_t>(local_counter::count));
    const std::string with_local = cli::format_dataplane({{"workers", json::array({main_json})}});
    EXPECT_EQ(with_local,
              "Worker  Lcore  RX packets      TX packets      To kernel     Busy\n"
              "0       0      0               0               0             0.0%\n"
              "        drops: unprotected 3\n"
              "        gateway's own traffic: out protected 5, bypass 0, implicit bypass 2; in decrypted 4, "
              "clear 0, implicit bypass 0\n"
              "Total          0               0               0\n");
}

// `show arp` / `show ipv6 neighbors` from a neighbor_summary as the server encodes it.
TEST(cli_format, NeighborTablesInTheLayoutOfIos)
{
    neighbor_summary n;
    neighbor_snapshot router;
    router.interface = "outside";
    router.address = addr("198.51.100.254");
    router.mac = {0x02, 0, 0, 0, 0, 0xfe};
    router.state = "reachable";
    router.age_seconds = 125.5;
    neighbor_snapshot fixed = router;
    fixed.address = addr("198.51.100.253");
    fixed.is_static = true;
    fixed.state = "permanent";
    fixed.age_seconds = 0;
    neighbor_snapshot v6 = router;
    v6.interface = "inside";
    v6.address = addr("2001:db8:1::fe");
    v6.state = "probe";
    v6.age_seconds = 31.2;
    n.entries = {router, fixed, v6};
    n.capacity = 4096;
    n.reachable_time = 30;
    n.probes_sent = 3;
    n.unreachable = 1;
    n.evicted = 5;
    const json encoded = to_json(n);
    EXPECT_EQ(encoded["neighbors"][0]["age-seconds"], 125.5);
    EXPECT_EQ(encoded["neighbors"][2]["family"], 6);
    const std::string footer = "Neighbor cache: 3 of 4096 entries, reachable time 30 s; 3 probes sent, 1 unreachable, "
                               "0 expired unused, 0 cleared, 5 evicted idle, 0 not learned (table full)\n";
    EXPECT_EQ(cli::format_arp(encoded),
              "Protocol  Address          Age (min)  Hardware Addr      Type   State      Interface\n"
              "Internet  198.51.100.254   2          02:00:00:00:00:fe  ARPA   reachable  outside\n"
              "Internet  198.51.100.253   -          02:00:00:00:00:fe  ARPA   static     outside\n" +
                  footer);
    EXPECT_EQ(cli::format_ipv6_neighbors(encoded),
              "IPv6 Address                              Age   Link-layer Addr    State  Interface\n"
              "2001:db8:1::fe                            31    02:00:00:00:00:fe  PROBE  inside\n" +
                  footer);
}

TEST(cli_format, IkeSasListedByAddressFamily)
{
    // An IPv4 and an IPv6 IKE SA as espresso-ike's list-ike-sas gives them (endpoints "address:port").
    json v4 = {{"peer", "branch"}, {"role", "initiator"}, {"state", "READY"}, {"isakmp-state", "QM_IDLE"},
               {"local", "198.51.100.1:500"}, {"remote", "203.0.113.1:500"}, {"conn-id", 4660},
               {"spi-i", "0000000000001234"}, {"spi-r", "0000000000005678"}, {"children", json::array()}};
    json v6 = {{"peer", "branch6"}, {"role", "responder"}, {"state", "READY"}, {"isakmp-state", "QM_IDLE"},
               {"local", "2001:db8:ff1::1:4500"}, {"remote", "2001:db8:ff2::1:4500"}, {"conn-id", 22136},
               {"spi-i", "0000000000009abc"}, {"spi-r", "000000000000def0"}, {"children", json::array()}};
    const json result = {{"ike-sas", json::array({v6, v4})}};
    const std::string isakmp = cli::format_isakmp_sa(result);
    const auto six = isakmp.find("IPv6 Crypto ISAKMP SA");
    ASSERT_NE(six, std::string::npos) << isakmp;
    EXPECT_LT(isakmp.find("203.0.113.1     198.51.100.1    QM_IDLE           4660 ACTIVE"), six) << isakmp;
    EXPECT_GT(isakmp.find("2001:db8:ff2::1"), six) << isakmp;
    EXPECT_NE(isakmp.find(std::string("2001:db8:ff2::1") + std::string(24, ' ') + " 2001:db8:ff1::1"), std::string::npos) << isakmp;
    EXPECT_NE(isakmp.find("    IKEv2, -, life 0 s, peer branch\n"), std::string::npos) << isakmp;

    const std::string v2 = cli::format_ikev2_sa(result);
    const auto v2six = v2.find(" IPv6 Crypto IKEv2  SA");
    ASSERT_NE(v2six, std::string::npos) << v2;
    EXPECT_EQ(v2.find(" IPv4 Crypto IKEv2  SA"), 0u) << v2;
    EXPECT_LT(v2.find("1         198.51.100.1:500      203.0.113.1:500       none/none            READY"), v2six) << v2;
    // IPv6 endpoints as [address]:port (RFC 5952 §6), numbered after the IPv4 ones.
    EXPECT_GT(v2.find("2         [2001:db8:ff1::1]:4500"), v2six) << v2;
    EXPECT_NE(v2.find("[2001:db8:ff2::1]:4500"), std::string::npos) << v2;
    EXPECT_NE(v2.find("      Peer: branch (-), role initiator, version IKEv2\n"), std::string::npos) << v2;
    EXPECT_NE(cli::format_crypto_session(result).find("local [2001:db8:ff1::1]:4500 remote [2001:db8:ff2::1]:4500"),
              std::string::npos);
}

// A Child SA whose outbound SA is held after a rekey we answered (docs/ike.md) is never shown as two
// active SAs: only its inbound SA is in the data plane.
TEST(cli_format, HeldOutboundSaIsNotActive)
{
    auto child = [](const char* outbound) {
        json c = {{"tunnel", "lan"}, {"spi-in", "c0000001"}, {"spi-out", "d0000002"}, {"local", "192.168.1.0/24"},
                  {"remote", "192.168.2.0/24"}};
        if (outbound != nullptr) {
            c["outbound"] = outbound;
        }
        return c;
    };
    json sa = {{"peer", "branch"}, {"role", "responder"}, {"state", "READY"}, {"local", "198.51.100.1:4500"},
               {"remote", "203.0.113.1:4500"}, {"children", json::array({child("pending"), child("installed"), child(nullptr)})}};
    const std::string text = cli::format_crypto_session(json{{"ike-sas", json::array({sa})}});
    EXPECT_NE(text.find("Active SAs: 1, origin: dynamic, tunnel lan, spi in c0000001 out d0000002 (pending)\n"),
              std::string::npos)
        << text;
    const auto first = text.find("Active SAs: 2, origin: dynamic, tunnel lan, spi in c0000001 out d0000002\n");
    ASSERT_NE(first, std::string::npos) << text;
    EXPECT_NE(text.find("Active SAs: 2, origin: dynamic, tunnel lan, spi in c0000001 out d0000002\n", first + 1),
              std::string::npos)
        << text;
}

TEST(cli_format, IkeSaShowsBothIdentitiesAndTheAuthMethod)
{
    json sa = {{"peer", "branch"}, {"role", "responder"}, {"state", "READY"}, {"isakmp-state", "QM_IDLE"},
               {"local", "198.51.100.1:4500"}, {"remote", "203.0.113.1:4500"}, {"conn-id", 1},
               {"spi-i", "0000000000001234"}, {"spi-r", "0000000000005678"}, {"children", json::array()},
               {"local-id", "C=CH, O=Espresso test, CN=gw.example"}, {"local-id-type", "der-asn1-dn"},
               {"remote-id", "branch.example"}, {"remote-id-type", "fqdn"}, {"auth", "pubkey"}};
    const std::string v2 = cli::format_ikev2_sa({{"ike-sas", json::array({sa})}});
    EXPECT_NE(v2.find("      Local id: C=CH, O=Espresso test, CN=gw.example (der-asn1-dn)\n"), std::string::npos) << v2;
    EXPECT_NE(v2.find("      Remote id: branch.example (fqdn)\n"), std::string::npos) << v2;
    EXPECT_NE(v2.find("Auth sign: Certificate, Auth verify: Certificate"), std::string::npos) << v2;
    sa["auth"] = "psk";
    sa.erase("local-id");
    sa["remote-id-type"] = "";
    const std::string psk = cli::format_ikev2_sa({{"ike-sas", json::array({sa})}});
    EXPECT_NE(psk.find("Auth sign: PSK, Auth verify: PSK"), std::string::npos) << psk;
    EXPECT_NE(psk.find("      Local id: -\n"), std::string::npos) << psk;
    EXPECT_NE(psk.find("      Remote id: branch.example\n"), std::string::npos) << psk;
}

} // namespace
} // namespace espresso::dp
