// espresso-ike's shards (controlplane/ike/ike_shards.cpp): SPI -> shard encoding, the datagram's shard
// from its header, and a responder with two shard threads against in-process initiators (plain
// ike_managers on the test's thread): SAs spread over shards and stay where their SPI says (also after
// an IKE SA rekey), INITIAL_CONTACT drops an older SA in the other shard, the half-open count behind
// cookies is global, operator requests see every shard.
#include <gtest/gtest.h>

#include <mutex>
#include <random>
#include <thread>

#include "espresso/config/loader.h"
#include "ike_shards.h"

namespace espresso::cp {
namespace {

using namespace std::chrono_literals;

config::ip_address addr(const std::string& text) { return *config::parse_address(text); }

TEST(IkeShardsTest, SpiCarriesItsShard)
{
    std::mt19937_64 gen(42);
    for (size_t n = 1; n <= max_ike_threads; ++n) {
        for (size_t s = 0; s < n; ++s) {
            for (int i = 0; i < 200; ++i) {
                uint64_t spi = gen();
                uint64_t moved = spi_in_shard(spi, s, n);
                EXPECT_EQ(spi_shard(moved, n), s) << n << " " << s;
                EXPECT_NE(moved, 0u);
                EXPECT_EQ(moved & 0x00ffffffffffffffull, spi & 0x00ffffffffffffffull); // 56 random bits kept
            }
        }
        // The extremes of the top byte.
        EXPECT_EQ(spi_shard(spi_in_shard(0xff00000000000001ull, n - 1, n), n), n - 1);
        EXPECT_EQ(spi_shard(spi_in_shard(0x0000000000000001ull, n - 1, n), n), n - 1);
    }
    EXPECT_EQ(spi_in_shard(0x123456789abcdef0ull, 0, 1), 0x123456789abcdef0ull); // one shard: untouched
    EXPECT_NE(spi_in_shard(0, 0, 2), 0u);
}

std::vector<uint8_t> header(uint64_t spi_i, uint64_t spi_r, uint8_t flags)
{
    std::vector<uint8_t> h(28, 0);
    for (int i = 0; i < 8; ++i) {
        h[i] = static_cast<uint8_t>(spi_i >> (56 - 8 * i));
        h[8 + i] = static_cast<uint8_t>(spi_r >> (56 - 8 * i));
    }
    h[16] = 33;   // SA
    h[17] = 0x20; // version 2.0
    h[18] = 34;   // IKE_SA_INIT
    h[19] = flags;
    h[27] = 28;
    return h;
}

TEST(IkeShardsTest, DatagramShardComesFromOurSpi)
{
    const auto remote = addr("198.51.100.7");
    for (size_t n : {2u, 3u, 4u}) {
        for (size_t s = 0; s < n; ++s) {
            uint64_t ours = spi_in_shard(0x1122334455667788ull, s, n);
            uint64_t theirs = spi_in_shard(0x99aabbccddeeff00ull, (s + 1) % n, n);
            // From the original initiator (I flag): ours is SPIr. From the original responder: SPIi.
            EXPECT_EQ(datagram_shard(header(theirs, ours, 0x08), remote, n, 1), s);
            EXPECT_EQ(datagram_shard(header(theirs, ours, 0x08 | 0x20), remote, n, 1),
                      s); // response flag too
            EXPECT_EQ(datagram_shard(header(ours, theirs, 0x20), remote, n, 1), s);
            EXPECT_EQ(datagram_shard(header(ours, theirs, 0x00), remote, n, 1), s);
        }
    }
    // IKE_SA_INIT requests (SPIr 0): the same SPIi and address always land together (retransmissions,
    // the COOKIE retry), and many initiators spread over the shards.
    std::vector<size_t> per_shard(4);
    for (uint64_t spi = 1; spi <= 4000; ++spi) {
        size_t s = datagram_shard(header(spi * 0x9e3779b97f4a7c15ull, 0, 0x08), remote, 4, 77);
        EXPECT_EQ(datagram_shard(header(spi * 0x9e3779b97f4a7c15ull, 0, 0x08), remote, 4, 77), s);
        ++per_shard[s];
    }
    for (size_t c : per_shard) {
        EXPECT_GT(c, 800u);
        EXPECT_LT(c, 1200u);
    }
    // Too short for a header: shard 0 (which counts it as malformed).
    EXPECT_EQ(datagram_shard(std::vector<uint8_t>(10, 0xff), remote, 4, 77), 0u);
    EXPECT_EQ(datagram_shard(header(5, 0, 0x08), remote, 1, 77), 0u);
}

TEST(IkeShardsTest, HomeShardIsStable)
{
    EXPECT_EQ(home_shard("branch", 1), 0u);
    EXPECT_EQ(home_shard("branch", 4), home_shard("branch", 4));
    std::vector<size_t> seen(4);
    for (int i = 0; i < 64; ++i) {
        ++seen[home_shard("peer-" + std::to_string(i), 4)];
    }
    for (size_t c : seen) {
        EXPECT_GT(c, 0u);
    }
}

// ---- a sharded responder and in-process initiators --------------------------------------------------

struct datagram {
    endpoint from, to;
    bytes data;
};

struct locked_installer final : sa_installer {
    std::mutex* mutex;
    size_t* installed;
    std::string install(const config::sa_config&) override
    {
        std::lock_guard lock(*mutex);
        ++*installed;
        return "";
    }
    std::string remove(config::direction, uint32_t) override { return ""; }
};

// The responder's process side: its sends are collected for the test thread to deliver.
struct test_host final : shard_host {
    std::mutex mutex;
    std::vector<datagram> out;
    std::vector<std::string> logs;
    size_t installed = 0;
    void send(const endpoint& local, const endpoint& remote, std::span<const uint8_t> message) override
    {
        std::lock_guard lock(mutex);
        out.push_back({local, remote, bytes(message.begin(), message.end())});
    }
    void send_keepalive(const endpoint&, const endpoint&) override {}
    void log(log_level, const std::string& sa, const std::string& text) override
    {
        std::lock_guard lock(mutex);
        logs.push_back(sa + ": " + text);
    }
    bool debug_enabled() const override { return false; }
    std::unique_ptr<sa_installer> make_installer(size_t) override
    {
        auto i = std::make_unique<locked_installer>();
        i->mutex = &mutex;
        i->installed = &installed;
        return i;
    }
};

struct test_rng final : rng {
    std::mt19937_64 gen;
    explicit test_rng(uint64_t seed) : gen(seed) {}
    void fill(std::span<uint8_t> out) override
    {
        for (auto& b : out) {
            b = static_cast<uint8_t>(gen());
        }
    }
};

struct null_inst final : sa_installer {
    std::string install(const config::sa_config&) override { return ""; }
    std::string remove(config::direction, uint32_t) override { return ""; }
};

// One initiator (the test thread's): its sends go to the responder.
struct initiator_io final : ike_io {
    std::vector<datagram>* wire = nullptr;
    test_rng random_gen;
    null_inst inst;
    std::function<uint64_t()> spi; // set: the SPIs it chooses
    explicit initiator_io(uint64_t seed) : random_gen(seed) {}
    void send(const endpoint& local, const endpoint& remote, std::span<const uint8_t> message) override
    {
        wire->push_back({local, remote, bytes(message.begin(), message.end())});
    }
    steady_time now() override { return std::chrono::steady_clock::now(); }
    rng& random() override { return random_gen; }
    sa_installer& installer() override { return inst; }
    void log(log_level, const std::string&, const std::string&) override {}
    void failure(negotiation_failure) override {}
    uint64_t new_ike_spi() override { return spi ? spi() : ike_io::new_ike_spi(); }
};

const std::string responder_addr = "203.0.113.1";

std::string responder_yaml(const std::string& extra = "")
{
    return "ike:\n" + extra +
           "  peers:\n"
           "    - name: any\n"
           "      local-address: " +
           responder_addr +
           "\n"
           "      remote-address: any\n"
           "      auth: { method: psk, secret: \"Sup3rS3cr3tK3y\" }\n"
           "      proposals: [aes256-sha256-ecp256]\n"
           "      rekey-time: 0\n"
           "      dpd: { interval: 0 }\n"
           "      tunnels:\n"
           "        - name: lan\n"
           "          local-ts: [192.168.2.0/24]\n"
           "          remote-ts: [10.0.0.0/8]\n"
           "          esp-proposals: [aes256gcm16]\n";
}

std::string initiator_yaml(const std::string& local, int net)
{
    return "ike:\n"
           "  peers:\n"
           "    - name: hq\n"
           "      local-address: " +
           local +
           "\n"
           "      remote-address: " +
           responder_addr +
           "\n"
           "      auth: { method: psk, secret: \"Sup3rS3cr3tK3y\" }\n"
           "      proposals: [aes256-sha256-ecp256]\n"
           "      rekey-time: 0\n"
           "      dpd: { interval: 0 }\n"
           "      tunnels:\n"
           "        - name: lan\n"
           "          local-ts: [10.0." +
           std::to_string(net) +
           ".0/24]\n"
           "          remote-ts: [192.168.2.0/24]\n"
           "          esp-proposals: [aes256gcm16]\n"
           "          start: immediately\n";
}

struct initiator {
    std::string address;
    initiator_io io;
    std::unique_ptr<ike_manager> manager;
    initiator(const std::string& a, int net, uint64_t seed, std::vector<datagram>* wire)
        : address(a), io(seed)
    {
        io.wire = wire;
        manager =
            std::make_unique<ike_manager>(io, config::load_string(initiator_yaml(a, net), "i.yaml").ike);
    }
    const ike_sa* sa() const
    {
        return manager->sas().size() == 1 ? manager->sas().begin()->second.get() : nullptr;
    }
    bool established() const { return sa() != nullptr && sa()->sa_state() == ike_sa::state::established; }
};

struct sharded_fixture {
    test_host host;
    std::unique_ptr<ike_shards> responder;
    std::vector<datagram> to_responder;
    std::vector<std::unique_ptr<initiator>> initiators;
    bool deliver_replies = true;

    explicit sharded_fixture(size_t threads, const std::string& extra = "")
    {
        // Long retransmission timeouts: a slow (sanitized) run must not retransmit in the middle.
        responder =
            std::make_unique<ike_shards>(host, config::load_string(responder_yaml(extra), "r.yaml").ike,
                                         retransmit_policy{std::chrono::milliseconds(30000), 2}, threads);
    }
    ~sharded_fixture() { responder.reset(); } // joins before the host goes

    initiator& add(int i)
    {
        initiators.push_back(
            std::make_unique<initiator>("198.51.100." + std::to_string(i), i, 1000 + i, &to_responder));
        return *initiators.back();
    }
    // An SPI whose IKE_SA_INIT the responder hashes to `shard`.
    uint64_t spi_for_shard(size_t shard, const std::string& from, test_rng& gen)
    {
        for (;;) {
            uint8_t b[8];
            gen.fill(b);
            uint64_t spi = 0;
            for (uint8_t x : b) {
                spi = (spi << 8) | x;
            }
            if (spi != 0 && responder->shard_for(header(spi, 0, 0x08), endpoint{addr(from), 500}) == shard) {
                return spi;
            }
        }
    }

    // Moves datagrams both ways until `done` or 20 s.
    bool pump(const std::function<bool()>& done)
    {
        auto until = std::chrono::steady_clock::now() + 20s;
        while (std::chrono::steady_clock::now() < until) {
            auto requests = std::move(to_responder);
            to_responder.clear();
            for (auto& d : requests) {
                responder->dispatch(d.to, d.from, d.data);
            }
            std::vector<datagram> replies;
            {
                std::lock_guard lock(host.mutex);
                replies.swap(host.out);
            }
            for (auto& d : replies) {
                for (auto& i : initiators) {
                    if (deliver_replies && config::to_string(d.to.address) == i->address) {
                        i->manager->receive(d.to, d.from, d.data);
                    }
                }
            }
            if (done()) {
                return true;
            }
            if (requests.empty() && replies.empty()) {
                std::this_thread::sleep_for(1ms);
            }
        }
        return false;
    }
    bool all_established()
    {
        return std::all_of(initiators.begin(), initiators.end(),
                           [](const auto& i) { return i->established(); });
    }
    // (shard, local SPI, remote address, established) of every responder IKE SA.
    struct row {
        size_t shard;
        uint64_t spi;
        std::string remote;
        bool established;
    };
    std::vector<row> list()
    {
        std::vector<row> all;
        for (auto& part : responder->on_each([](ike_manager& m) {
                 std::vector<row> rows;
                 for (const auto& [spi, sa] : m.sas()) {
                     rows.push_back({m.shard(), spi, config::to_string(sa->remote().address),
                                     sa->sa_state() == ike_sa::state::established});
                 }
                 return rows;
             })) {
            all.insert(all.end(), part.begin(), part.end());
        }
        return all;
    }
};

TEST(IkeShardsTest, SasSpreadOverShardsAndListingSeesThemAll)
{
    sharded_fixture f(2);
    for (int i = 1; i <= 12; ++i) {
        auto& in = f.add(i);
        // Alternate the shards so that both get some, whatever the responder's hash key.
        in.io.spi = [&f, &in, i] {
            return f.spi_for_shard(static_cast<size_t>(i % 2), in.address, in.io.random_gen);
        };
        in.manager->start();
    }
    ASSERT_TRUE(f.pump([&] { return f.all_established(); }));
    auto rows = f.list();
    ASSERT_EQ(rows.size(), 12u);
    size_t in_shard[2] = {0, 0};
    for (const auto& r : rows) {
        EXPECT_TRUE(r.established);
        EXPECT_EQ(spi_shard(r.spi, 2), r.shard) << std::hex << r.spi; // the SPI names the shard holding it
        ++in_shard[r.shard];
    }
    EXPECT_EQ(in_shard[0], 6u);
    EXPECT_EQ(in_shard[1], 6u);
    for (const auto& i : f.initiators) {
        EXPECT_EQ(spi_shard(i->sa()->spi_r(), 2), static_cast<size_t>(std::stoi(i->address.substr(11)) % 2));
    }
    // Counters are summed over the shards: 12 x (IKE_SA_INIT + IKE_AUTH) requests.
    auto c = f.responder->counters();
    EXPECT_EQ(c.received, 24u);
    EXPECT_EQ(c.unknown_spi, 0u);
    {
        std::lock_guard lock(f.host.mutex);
        EXPECT_EQ(f.host.installed, 24u); // a Child SA pair per IKE SA, through each shard's installer
    }
    // Operator: initiate cannot (responder-only peer), clear deletes in every shard.
    EXPECT_NE(f.responder->initiate("any"), "");
    EXPECT_EQ(f.responder->clear(""), 12u);
    f.pump([&] { return f.list().empty(); });
    EXPECT_TRUE(f.list().empty());
}

TEST(IkeShardsTest, IkeRekeyKeepsTheSaInItsShard)
{
    sharded_fixture f(2);
    auto& in = f.add(1);
    in.manager->start();
    ASSERT_TRUE(f.pump([&] { return f.all_established(); }));
    const uint64_t old_spi = in.sa()->spi_r();
    const size_t shard = spi_shard(old_spi, 2);
    in.manager->sas().begin()->second->rekey_ike(); // §2.18: the responder chooses the new SPIr
    ASSERT_TRUE(f.pump([&] {
        auto rows = f.list();
        return rows.size() == 1 && rows[0].spi != old_spi && in.sa() != nullptr &&
               in.sa()->spi_r() == rows[0].spi;
    }));
    auto rows = f.list();
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].shard, shard);
    EXPECT_EQ(spi_shard(rows[0].spi, 2), shard);
    EXPECT_EQ(f.responder->counters().unknown_spi, 0u);
}

TEST(IkeShardsTest, InitialContactDropsTheOlderSaInAnotherShard)
{
    sharded_fixture f(2);
    auto& first = f.add(1);
    first.manager->start();
    ASSERT_TRUE(f.pump([&] { return f.all_established(); }));
    const uint64_t old_spi = first.sa()->spi_r();
    const size_t old_shard = spi_shard(old_spi, 2);
    // The initiator restarts (no state, no Delete): its new IKE SA carries INITIAL_CONTACT (RFC 7296
    // §2.4) and, by its SPIi, lands in the other shard.
    f.initiators.clear();
    auto& again = f.add(1);
    again.io.spi = [&] { return f.spi_for_shard(1 - old_shard, again.address, again.io.random_gen); };
    again.manager->start();
    ASSERT_TRUE(f.pump([&] {
        auto rows = f.list();
        return f.all_established() && rows.size() == 1 && rows[0].spi != old_spi;
    }));
    auto rows = f.list();
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].shard, 1 - old_shard);
    EXPECT_EQ(rows[0].spi, again.sa()->spi_r());
    EXPECT_EQ(f.responder->counters().initial_contact_drops, 1u);
    EXPECT_FALSE(f.responder->live_elsewhere("any", 1 - old_shard)); // the registry forgot the old one
}

// `espresso reload` on a sharded daemon (docs/ike.md, "Reload"): every shard applies the per-tunnel
// diff to its own IKE SAs. Here the responder's only tunnel goes and another comes: the Child SAs in
// both shards are deleted (the initiators are told) and the IKE SAs stay, with the same SPIs.
TEST(IkeShardsTest, ReloadOfATunnelReachesTheIkeSasOfEveryShard)
{
    sharded_fixture f(2);
    for (int i = 1; i <= 2; ++i) {
        auto& in = f.add(i);
        in.io.spi = [&f, &in, i] { return f.spi_for_shard(static_cast<size_t>(i - 1), in.address, in.io.random_gen); };
        in.manager->start();
    }
    ASSERT_TRUE(f.pump([&] { return f.all_established(); }));
    auto before = f.list();
    ASSERT_EQ(before.size(), 2u);
    EXPECT_NE(before[0].shard, before[1].shard);
    std::string next = responder_yaml();
    next.replace(next.find("        - name: lan\n"), 20, "        - name: other\n");
    auto r = f.responder->reload(config::load_string(next, "r.yaml").ike);
    EXPECT_EQ(r.updated, std::vector<std::string>{"any"});
    EXPECT_EQ(r.tunnels, (std::vector<ike_manager::tunnel_change>{{"any", "lan", "removed"}, {"any", "other", "added"}}));
    ASSERT_TRUE(f.pump([&] {
        return std::all_of(f.initiators.begin(), f.initiators.end(),
                           [](const auto& i) { return i->sa() != nullptr && i->sa()->children().empty(); });
    }));
    auto after = f.list();
    ASSERT_EQ(after.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
        EXPECT_EQ(after[i].spi, before[i].spi);
        EXPECT_TRUE(after[i].established);
    }
    for (const auto& in : f.initiators) {
        EXPECT_TRUE(in->established());
    }
}

TEST(IkeShardsTest, HalfOpenCountIsGlobalForCookies)
{
    // cookie-threshold 2: the third and fourth IKE_SA_INIT get a COOKIE although each shard holds only
    // one half-open SA (a per-shard count would let all four in).
    sharded_fixture f(2, "  cookie-threshold: 2\n");
    f.deliver_replies = false; // the initiators never answer: the responder's SAs stay half-open
    for (int i = 1; i <= 4; ++i) {
        auto& in = f.add(i);
        in.io.spi = [&f, &in, i] {
            return f.spi_for_shard(static_cast<size_t>(i % 2), in.address, in.io.random_gen);
        };
        in.manager->start();
        // One at a time: the count is checked and raised in one shard, then read by the other.
        ASSERT_TRUE(f.pump([&] { return f.responder->counters().received == static_cast<uint64_t>(i); }));
    }
    auto c = f.responder->counters();
    EXPECT_EQ(c.cookies_sent, 2u);
    auto rows = f.list();
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_NE(rows[0].shard, rows[1].shard);
}

TEST(IkeShardsTest, PerAddressLimitsHoldAcrossShards)
{
    // Four initiators behind one address (a NAT), their IKE_SA_INITs alternating between the shards:
    // with max-half-open-per-address 2 only two get half-open SAs, although each shard holds one.
    sharded_fixture f(2, "  max-half-open-per-address: 2\n");
    f.deliver_replies = false;
    const std::string shared = "198.51.100.50";
    for (int i = 1; i <= 4; ++i) {
        f.initiators.push_back(std::make_unique<initiator>(shared, i, 2000 + i, &f.to_responder));
        auto& in = *f.initiators.back();
        in.io.spi = [&f, &in, i] {
            return f.spi_for_shard(static_cast<size_t>(i % 2), in.address, in.io.random_gen);
        };
        in.manager->start();
        ASSERT_TRUE(f.pump([&] { return f.responder->counters().received == static_cast<uint64_t>(i); }));
    }
    auto c = f.responder->counters();
    EXPECT_EQ(c.address_half_open_refused, 2u);
    EXPECT_EQ(c.cookies_sent, 0u);
    auto rows = f.list();
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_NE(rows[0].shard, rows[1].shard);
    // Another address is not affected.
    auto& other = f.add(7);
    other.manager->start();
    ASSERT_TRUE(f.pump([&] { return f.responder->counters().received == 5u; }));
    EXPECT_EQ(f.list().size(), 3u);
    EXPECT_EQ(f.responder->counters().address_half_open_refused, 2u);
}

TEST(IkeShardsTest, EstablishedLimitPerAddressAcrossShards)
{
    // max-sas-per-address 1: the IKE SA established in one shard keeps a second initiator at the same
    // address out of the other shard.
    sharded_fixture f(2, "  max-sas-per-address: 1\n");
    const std::string shared = "198.51.100.60";
    f.initiators.push_back(std::make_unique<initiator>(shared, 1, 3001, &f.to_responder));
    auto& first = *f.initiators.back();
    first.io.spi = [&f, &first] { return f.spi_for_shard(0, first.address, first.io.random_gen); };
    first.manager->start();
    ASSERT_TRUE(f.pump([&] { return first.established(); }));
    f.initiators.push_back(std::make_unique<initiator>(shared, 2, 3002, &f.to_responder));
    auto& second = *f.initiators.back();
    second.io.spi = [&f, &second] { return f.spi_for_shard(1, second.address, second.io.random_gen); };
    second.manager->start();
    ASSERT_TRUE(f.pump([&] { return f.responder->counters().address_sas_refused == 1u; }));
    auto rows = f.list();
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].shard, 0u);
    EXPECT_FALSE(second.established());
    bool logged = false;
    {
        std::lock_guard lock(f.host.mutex);
        for (const auto& l : f.host.logs) {
            logged = logged || l.find("max-sas-per-address") != std::string::npos;
        }
    }
    EXPECT_TRUE(logged);
    // Cleared in its shard, the address may set up a new one (in the other shard).
    EXPECT_EQ(f.responder->clear(""), 1u);
    ASSERT_TRUE(f.pump([&] { return f.list().empty(); }));
    f.initiators.push_back(std::make_unique<initiator>(shared, 3, 3003, &f.to_responder));
    auto& third = *f.initiators.back();
    third.io.spi = [&f, &third] { return f.spi_for_shard(1, third.address, third.io.random_gen); };
    third.manager->start();
    ASSERT_TRUE(f.pump([&] { return third.established(); }));
    EXPECT_EQ(f.responder->counters().address_sas_refused, 1u);
}

TEST(IkeShardsTest, OneThreadBehavesLikeTheManager)
{
    sharded_fixture f(1);
    for (int i = 1; i <= 3; ++i) {
        f.add(i).manager->start();
    }
    ASSERT_TRUE(f.pump([&] { return f.all_established(); }));
    EXPECT_EQ(f.list().size(), 3u);
    EXPECT_EQ(f.responder->counters().received, 6u);
    EXPECT_EQ(f.responder->failures().size(), 0u);
}

} // namespace
} // namespace espresso::cp
