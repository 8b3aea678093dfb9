// Whole IKEv2 exchanges between two in-process peers (ARCHITECTURE.md: mock installer, rng, clock
// and network), asserting SA states, installed keys and the operator-facing failure causes.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <deque>
#include <memory>
#include <map>
#include <optional>
#include <random>

#include "espresso/config/loader.h"
#include "ike_manager.h"

namespace espresso::cp {
namespace {

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

struct recording_installer final : sa_installer {
    std::map<std::pair<int, uint32_t>, config::sa_config> sas; // (direction, spi)
    std::vector<std::string> events;
    std::string refuse; // non-empty: refuse every install with this
    std::string install(const config::sa_config& sa) override
    {
        if (!refuse.empty()) {
            return refuse;
        }
        events.push_back(std::string(sa.dir == config::direction::inbound ? "+in " : "+out ") + std::to_string(sa.spi));
        sas[{static_cast<int>(sa.dir), sa.spi}] = sa;
        return "";
    }
    std::string remove(config::direction dir, uint32_t spi) override
    {
        events.push_back(std::string(dir == config::direction::inbound ? "-in " : "-out ") + std::to_string(spi));
        sas.erase({static_cast<int>(dir), spi});
        return "";
    }
    std::string update_peer(uint32_t spi, const config::ip_address& address, uint16_t port) override
    {
        events.push_back("~out " + std::to_string(spi));
        auto it = sas.find({static_cast<int>(config::direction::outbound), spi});
        if (it == sas.end()) {
            return "no outbound SA";
        }
        if (address.family != 0) {
            it->second.destination = address;
        }
        if (port != 0 && it->second.udp) {
            it->second.udp->destination_port = port;
        }
        return "";
    }
    // Trap policies by id: "local === remote".
    std::map<uint32_t, std::string> traps;
    uint32_t next_trap = 1;
    bool refuse_traps = false;
    std::optional<uint32_t> add_trap(const config::ip_prefix& local, const config::ip_prefix& remote, std::string& error) override
    {
        if (refuse_traps) {
            error = "data plane not reachable";
            return std::nullopt;
        }
        traps[next_trap] = config::to_string(local) + " === " + config::to_string(remote);
        events.push_back("+trap " + traps[next_trap]);
        return next_trap++;
    }
    std::string remove_trap(uint32_t id) override
    {
        if (traps.erase(id) == 0) {
            return "no trap " + std::to_string(id);
        }
        events.push_back("-trap " + std::to_string(id));
        return "";
    }
    std::vector<std::string> trap_list() const
    {
        std::vector<std::string> out;
        for (const auto& [id, t] : traps) {
            out.push_back(t);
        }
        std::sort(out.begin(), out.end());
        return out;
    }
    size_t count(config::direction dir) const
    {
        size_t n = 0;
        for (const auto& [k, v] : sas) {
            n += k.first == static_cast<int>(dir);
        }
        return n;
    }
};

struct datagram {
    endpoint from, to;
    bytes data;
};

struct network;

struct peer_io final : ike_io {
    network* net = nullptr;
    steady_time* clock = nullptr;
    test_rng random_gen;
    recording_installer inst;
    std::vector<negotiation_failure> failures;
    std::vector<std::string> logs;
    explicit peer_io(uint64_t seed) : random_gen(seed) {}
    void send(const endpoint& local, const endpoint& remote, std::span<const uint8_t> message) override;
    steady_time now() override { return *clock; }
    rng& random() override { return random_gen; }
    sa_installer& installer() override { return inst; }
    void log(log_level, const std::string& sa, const std::string& text) override { logs.push_back(sa + ": " + text); }
    void failure(negotiation_failure f) override { failures.push_back(std::move(f)); }
};

// Two peers and a wire between them, optionally with a NAT in front of peer A.
struct network {
    std::deque<datagram> wire;
    std::function<bool(const datagram&)> drop; // true: lose it
    std::function<void(datagram&)> tamper;     // may change a datagram before it is delivered
    // RFC 7383 tests: hold the SKF datagrams of one message until all are sent, then put them on the
    // wire last first, each `fragment_copies` times.
    bool reverse_fragments = false;
    int fragment_copies = 1;
    std::vector<datagram> held;
    bool nat = false;
    config::ip_address a_private, a_public;
    std::map<uint16_t, uint16_t> nat_ports{{500, 40000}, {4500, 40500}};
    size_t delivered = 0;

    void send(const endpoint& from, const endpoint& to, std::span<const uint8_t> data)
    {
        datagram d{from, to, bytes(data.begin(), data.end())};
        if (nat && from.address == a_private) {
            d.from = endpoint{a_public, nat_ports.at(from.port)};
        }
        if (nat && to.address == a_public) {
            for (const auto& [inside, outside] : nat_ports) {
                if (outside == to.port) {
                    d.to = endpoint{a_private, inside};
                }
            }
        }
        if (reverse_fragments && d.data.size() > 32 && d.data[16] == static_cast<uint8_t>(payload_type::skf)) {
            size_t total = size_t{d.data[34]} << 8 | d.data[35]; // after the header and SKF's generic header
            held.push_back(std::move(d));
            if (held.size() == total) {
                for (auto it = held.rbegin(); it != held.rend(); ++it) {
                    for (int i = 0; i < fragment_copies; ++i) {
                        wire.push_back(*it);
                    }
                }
                held.clear();
            }
            return;
        }
        wire.push_back(std::move(d));
    }
};

void peer_io::send(const endpoint& local, const endpoint& remote, std::span<const uint8_t> message)
{
    net->send(local, remote, message);
}

config::ip_address addr(const char* text)
{
    return *config::parse_address(text);
}

std::string peer_yaml(const std::string& local, const std::string& remote, const std::string& extra_peer,
                      const std::string& tunnel)
{
    return "ike:\n"
           "  peers:\n"
           "    - name: p\n"
           "      local-address: " + local + "\n"
           "      remote-address: " + remote + "\n" + extra_peer + tunnel;
}

const std::string default_tunnel_a = "      tunnels:\n"
                                     "        - name: lan\n"
                                     "          local-ts: [192.168.1.0/24]\n"
                                     "          remote-ts: [192.168.2.0/24]\n"
                                     "          esp-proposals: [aes256gcm16]\n"
                                     "          start: immediately\n";
const std::string default_tunnel_b = "      tunnels:\n"
                                     "        - name: lan\n"
                                     "          local-ts: [192.168.2.0/24]\n"
                                     "          remote-ts: [192.168.1.0/24]\n"
                                     "          esp-proposals: [aes256gcm16]\n";
const std::string psk = "      auth: { method: psk, secret: \"Sup3rS3cr3tK3y\" }\n";

struct pair_fixture {
    steady_time clock = steady_time{} + std::chrono::hours(1);
    network net;
    peer_io io_a{1}, io_b{2};
    std::unique_ptr<ike_manager> a, b;
    config::ip_address addr_a = addr("198.51.100.1"), addr_b = addr("203.0.113.1");

    // `tweak` may change what the loader would refuse (a tiny fragment-size, to fragment PSK messages).
    pair_fixture(const std::string& yaml_a, const std::string& yaml_b,
                 const std::function<void(config::ike_config&, bool is_a)>& tweak = {})
    {
        io_a.net = io_b.net = &net;
        io_a.clock = io_b.clock = &clock;
        auto ca = config::load_string(yaml_a, "a.yaml").ike;
        auto cb = config::load_string(yaml_b, "b.yaml").ike;
        if (tweak) {
            tweak(ca, true);
            tweak(cb, false);
        }
        a = std::make_unique<ike_manager>(io_a, std::move(ca));
        b = std::make_unique<ike_manager>(io_b, std::move(cb));
    }

    // Delivers until the wire is quiet (bounded).
    void pump(size_t limit = 200)
    {
        for (size_t i = 0; i < limit && !net.wire.empty(); ++i) {
            datagram d = std::move(net.wire.front());
            net.wire.pop_front();
            if (net.drop && net.drop(d)) {
                continue;
            }
            ++net.delivered;
            bool to_a = d.to.address == (net.nat ? net.a_private : addr_a);
            if (net.tamper) {
                net.tamper(d);
            }
            (to_a ? *a : *b).receive(d.to, d.from, d.data);
        }
    }

    void advance(std::chrono::milliseconds ms)
    {
        clock += ms;
        a->tick();
        b->tick();
        pump();
    }

    const ike_sa* only_sa(ike_manager& m)
    {
        return m.sas().size() == 1 ? m.sas().begin()->second.get() : nullptr;
    }
};

// A's outbound key must be B's inbound key for the same SPI, and the other way round.
void expect_mirrored(const recording_installer& x, const recording_installer& y)
{
    size_t pairs = 0;
    for (const auto& [key, sa] : x.sas) {
        if (key.first != static_cast<int>(config::direction::outbound)) {
            continue;
        }
        auto it = y.sas.find({static_cast<int>(config::direction::inbound), sa.spi});
        ASSERT_NE(it, y.sas.end()) << "no inbound twin for SPI " << sa.spi;
        const auto& in = it->second;
        EXPECT_EQ(sa.cipher, in.cipher);
        EXPECT_EQ(sa.cipher_key_length, in.cipher_key_length);
        EXPECT_TRUE(std::equal(sa.cipher_key.begin(), sa.cipher_key.begin() + sa.cipher_key_length, in.cipher_key.begin()));
        EXPECT_EQ(sa.integ, in.integ);
        EXPECT_TRUE(std::equal(sa.integ_key.begin(), sa.integ_key.begin() + sa.integ_key_length, in.integ_key.begin()));
        EXPECT_EQ(sa.source, in.source);
        EXPECT_EQ(sa.destination, in.destination);
        EXPECT_EQ(sa.local, in.remote);
        EXPECT_EQ(sa.remote, in.local);
        ++pairs;
    }
    EXPECT_GT(pairs, 0u);
}

TEST(ExchangeTest, PskEstablishesIkeAndChildSa)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      proposals: [aes256-sha256-modp2048]\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      proposals: [aes256-sha256-modp2048]\n", default_tunnel_b));
    f.a->start();
    f.pump();
    const auto* sa_a = f.only_sa(*f.a);
    const auto* sa_b = f.only_sa(*f.b);
    ASSERT_NE(sa_a, nullptr);
    ASSERT_NE(sa_b, nullptr);
    EXPECT_EQ(sa_a->sa_state(), ike_sa::state::established) << (f.io_a.logs.empty() ? "" : f.io_a.logs.back());
    EXPECT_EQ(sa_b->sa_state(), ike_sa::state::established) << (f.io_b.logs.empty() ? "" : f.io_b.logs.back());
    EXPECT_EQ(sa_a->spi_r(), sa_b->spi_r());
    EXPECT_FALSE(sa_a->nat_detected());
    ASSERT_EQ(sa_a->children().size(), 1u);
    ASSERT_EQ(sa_b->children().size(), 1u);
    EXPECT_EQ(sa_a->children()[0].spi_in, sa_b->children()[0].spi_out);
    EXPECT_EQ(f.io_a.inst.count(config::direction::inbound), 1u);
    EXPECT_EQ(f.io_a.inst.count(config::direction::outbound), 1u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
    // Inbound is installed before outbound on both sides (A's trap policy went in at start()).
    ASSERT_GE(f.io_b.inst.events.size(), 2u);
    EXPECT_EQ(f.io_b.inst.events[0].substr(0, 3), "+in");
    ASSERT_GE(f.io_a.inst.events.size(), 3u);
    EXPECT_EQ(f.io_a.inst.events[0], "+trap 192.168.1.0/24 === 192.168.2.0/24");
    EXPECT_EQ(f.io_a.inst.events[1].substr(0, 3), "+in");
    const auto& sa = f.io_a.inst.sas.begin()->second;
    EXPECT_EQ(sa.cipher, config::cipher_alg::aes_gcm16);
    EXPECT_EQ(sa.cipher_key_length, 36); // AES-256 + 4-byte salt
    EXPECT_FALSE(sa.udp.has_value());
    EXPECT_TRUE(f.io_a.failures.empty());
    EXPECT_TRUE(f.io_b.failures.empty());
}

TEST(ExchangeTest, CbcSha256ChildAndEcp256)
{
    std::string t_a = default_tunnel_a, t_b = default_tunnel_b;
    for (auto* t : {&t_a, &t_b}) {
        t->replace(t->find("aes256gcm16"), 11, "aes128-sha256");
    }
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      proposals: [aes128-sha256-ecp256]\n", t_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      proposals: [aes128-sha256-ecp256]\n", t_b));
    f.a->start();
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    const auto& sa = f.io_b.inst.sas.begin()->second;
    EXPECT_EQ(sa.cipher, config::cipher_alg::aes_cbc);
    EXPECT_EQ(sa.integ, config::integ_alg::hmac_sha256_128);
    EXPECT_EQ(sa.integ_key_length, 32);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
}

TEST(ExchangeTest, PskMismatchIsReportedOnBothSides)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", "      auth: { method: psk, secret: \"another-secret\" }\n",
                             default_tunnel_b));
    f.a->start();
    f.pump();
    ASSERT_FALSE(f.io_b.failures.empty());
    EXPECT_NE(f.io_b.failures.back().cause.find("pre-shared key mismatch"), std::string::npos) << f.io_b.failures.back().cause;
    ASSERT_FALSE(f.io_a.failures.empty());
    EXPECT_NE(f.io_a.failures.back().cause.find("AUTHENTICATION_FAILED"), std::string::npos) << f.io_a.failures.back().cause;
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_TRUE(f.b->sas().empty());
    EXPECT_TRUE(f.io_a.inst.sas.empty());
    EXPECT_TRUE(f.io_b.inst.sas.empty());
    for (const auto& l : f.io_a.logs) {
        EXPECT_EQ(l.find("Sup3rS3cr3tK3y"), std::string::npos);
    }
}

TEST(ExchangeTest, DhGroupMismatchNamesTheGroup)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      proposals: [aes256-sha256-modp2048]\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      proposals: [aes256-sha256-ecp256]\n", default_tunnel_b));
    f.a->start();
    f.pump();
    ASSERT_FALSE(f.io_b.failures.empty());
    const auto& cause = f.io_b.failures.back().cause;
    EXPECT_NE(cause.find("no common DH group"), std::string::npos) << cause;
    EXPECT_NE(cause.find("MODP_2048"), std::string::npos) << cause;
    ASSERT_FALSE(f.io_a.failures.empty());
    EXPECT_NE(f.io_a.failures.back().cause.find("NO_PROPOSAL_CHOSEN"), std::string::npos);
}

TEST(ExchangeTest, InvalidKePayloadRetryWithTheResponderGroup)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1",
                             psk + "      proposals: [aes256-sha256-modp2048, aes256-sha256-ecp256]\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      proposals: [aes256-sha256-ecp256]\n", default_tunnel_b));
    f.a->start();
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    EXPECT_EQ(f.only_sa(*f.a)->transforms().dh, 19);
    EXPECT_EQ(f.b->sas().size(), 1u); // the refused first attempt left nothing behind
}

TEST(ExchangeTest, SelectorsNotMirroredKeepTheIkeSa)
{
    std::string t_b = default_tunnel_b;
    t_b.replace(t_b.find("192.168.1.0/24"), 14, "10.1.0.0/16");
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, t_b));
    f.a->start();
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    EXPECT_TRUE(f.only_sa(*f.a)->children().empty());
    ASSERT_FALSE(f.io_b.failures.empty());
    EXPECT_NE(f.io_b.failures.back().cause.find("selectors not mirrored"), std::string::npos) << f.io_b.failures.back().cause;
    // Both sides' selectors, so the operator sees what to mirror.
    EXPECT_NE(f.io_b.failures.back().cause.find("TSi 192.168.1.0/24 TSr 192.168.2.0/24"), std::string::npos)
        << f.io_b.failures.back().cause;
    EXPECT_NE(f.io_b.failures.back().cause.find("local-ts 192.168.2.0/24 remote-ts 10.1.0.0/16"), std::string::npos)
        << f.io_b.failures.back().cause;
    ASSERT_FALSE(f.io_a.failures.empty());
    EXPECT_NE(f.io_a.failures.back().cause.find("TS_UNACCEPTABLE"), std::string::npos) << f.io_a.failures.back().cause;
}

TEST(ExchangeTest, ResponderNarrowsToItsSubnet)
{
    std::string t_a = default_tunnel_a;
    t_a.replace(t_a.find("192.168.2.0/24"), 14, "192.168.0.0/16");
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, t_a), peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    f.a->start();
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    EXPECT_EQ(config::to_string(f.only_sa(*f.a)->children()[0].remote), "192.168.2.0/24");
}

TEST(ExchangeTest, LostMessagesAreRetransmittedAndDuplicatesAnsweredFromCache)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    int dropped = 0;
    // Lose the first IKE_AUTH response once; the initiator resends, the responder answers from cache.
    f.net.drop = [&](const datagram& d) {
        auto h = parse_header(d.data);
        if (h && h->exchange == static_cast<uint8_t>(exchange_type::ike_auth) && h->is_response() && dropped == 0) {
            ++dropped;
            return true;
        }
        return false;
    };
    f.a->start();
    f.pump();
    EXPECT_EQ(dropped, 1);
    EXPECT_NE(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    f.advance(std::chrono::milliseconds(1100));
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u); // installed once, not twice
}

// RFC 7296 §2.2 and §2.3 with a window of one: once B has answered A's requests 2 (CREATE_CHILD_SA,
// a Child SA rekey) and 3 (the Delete of the old Child SA), a copy of request 2 is dropped without an
// answer or any processing (no second new Child SA), and a copy of request 3 gets the cached answer,
// the same bytes, without being processed again.
TEST(ExchangeTest, OldRequestsAreDroppedAndOnlyTheLastIsAnsweredFromCache)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b));
    f.a->start();
    f.pump();
    ASSERT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    std::vector<datagram> to_b, to_a;
    f.net.drop = [&](const datagram& d) {
        (d.to.address == f.addr_b ? to_b : to_a).push_back(d);
        return false;
    };
    f.a->sas().begin()->second->rekey_child(f.only_sa(*f.a)->children()[0].spi_in);
    f.pump();
    auto with_id = [](const std::vector<datagram>& v, uint32_t id) -> const datagram* {
        for (const auto& d : v) {
            if (auto h = parse_header(d.data); h && h->message_id == id) {
                return &d;
            }
        }
        return nullptr;
    };
    const datagram* rekey = with_id(to_b, 2);
    const datagram* del = with_id(to_b, 3);
    const datagram* del_answer = with_id(to_a, 3);
    ASSERT_TRUE(rekey != nullptr && del != nullptr && del_answer != nullptr);
    ASSERT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    const auto events_b = f.io_b.inst.events;
    const auto sas_b = f.io_b.inst.sas.size();
    const datagram old_request = *rekey, last_request = *del, cached = *del_answer;
    const size_t answers = to_a.size();

    f.b->receive(old_request.to, old_request.from, old_request.data);
    f.pump();
    EXPECT_EQ(to_a.size(), answers); // no answer
    EXPECT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    EXPECT_EQ(f.io_b.inst.events, events_b);

    f.b->receive(last_request.to, last_request.from, last_request.data);
    f.pump();
    ASSERT_EQ(to_a.size(), answers + 1);
    EXPECT_EQ(to_a.back().data, cached.data); // the cached answer, byte for byte
    EXPECT_EQ(f.io_b.inst.events, events_b);
    EXPECT_EQ(f.io_b.inst.sas.size(), sas_b);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established); // A ignores the stray answer
    EXPECT_EQ(f.only_sa(*f.a)->children().size(), 1u);
}

// §2.1: retransmissions back off exponentially: the gaps between A's copies of its unanswered
// IKE_SA_INIT double (measured on the fake clock in 50 ms steps).
TEST(ExchangeTest, RetransmissionsBackOffExponentially)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    std::vector<steady_time> sent;
    f.net.drop = [&](const datagram& d) {
        if (d.from.address == f.addr_a) {
            sent.push_back(f.clock);
        }
        return true;
    };
    f.a->start();
    f.pump();
    for (int i = 0; i < 400; ++i) {
        f.advance(std::chrono::milliseconds(50));
    }
    ASSERT_GE(sent.size(), 4u);
    std::vector<long long> gaps;
    for (size_t i = 1; i < sent.size() && i < 5; ++i) {
        gaps.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(sent[i] - sent[i - 1]).count());
    }
    for (size_t i = 1; i < gaps.size(); ++i) {
        EXPECT_NEAR(static_cast<double>(gaps[i]), 2.0 * static_cast<double>(gaps[i - 1]), 100.0)
            << "gap " << i << " of " << ::testing::PrintToString(gaps);
    }
    EXPECT_GE(gaps.front(), 400); // not a busy loop
}

TEST(ExchangeTest, UnreachablePeerIsReported)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    f.net.drop = [](const datagram&) { return true; };
    f.a->start();
    for (int i = 0; i < 70; ++i) {
        f.advance(std::chrono::seconds(1));
    }
    ASSERT_FALSE(f.io_a.failures.empty());
    EXPECT_NE(f.io_a.failures.front().cause.find("peer unreachable"), std::string::npos) << f.io_a.failures.front().cause;
    // start: immediately keeps trying (with backoff); once the peer answers, the tunnel comes up.
    EXPECT_EQ(f.a->sas().size() + 0, f.a->sas().size());
    f.net.drop = nullptr;
    for (int i = 0; i < 130 && (f.a->sas().empty() || f.only_sa(*f.a)->sa_state() != ike_sa::state::established); ++i) {
        f.advance(std::chrono::seconds(1));
    }
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
}

// `show crypto ike failures`: an identity mismatch is about remote-id only; its Fix must not send the
// operator to a pre-shared key (or to certificates) that was never looked at, and any Fix names only the
// settings of the peer's own auth method.
TEST(ExchangeTest, IdentityMismatchFixFitsTheAuthMethod)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      remote-id: branch.example\n", default_tunnel_b));
    f.a->start();
    f.pump();
    ASSERT_FALSE(f.io_b.failures.empty());
    const auto& failure = f.io_b.failures.back();
    EXPECT_NE(failure.cause.find("identity mismatch"), std::string::npos) << failure.cause;
    EXPECT_NE(failure.fix.find("set remote-id of peer p to '198.51.100.1'"), std::string::npos) << failure.fix;
    EXPECT_NE(failure.fix.find("'branch.example'"), std::string::npos) << failure.fix;
    EXPECT_EQ(failure.fix.find("secret"), std::string::npos) << failure.fix;
    EXPECT_EQ(failure.fix.find("certificate"), std::string::npos) << failure.fix;

    config::ike_peer_config cert_peer;
    cert_peer.name = "hq";
    cert_peer.auth.method = config::ike_auth_method::pubkey;
    cert_peer.remote_id = config::parse_identity("CN=hq.example");
    const std::string cert_fix = peer_auth_fix(cert_peer, peer_auth_failure::identity, "CN=other.example");
    EXPECT_NE(cert_fix.find("set remote-id of peer hq to 'CN=other.example'"), std::string::npos) << cert_fix;
    EXPECT_NE(cert_fix.find("certificate"), std::string::npos) << cert_fix;
    EXPECT_EQ(cert_fix.find("secret"), std::string::npos) << cert_fix;
    EXPECT_EQ(cert_fix.find("pre-shared"), std::string::npos) << cert_fix;

    // Other failures: each method's own settings.
    const std::string cert_bad = peer_auth_fix(cert_peer, peer_auth_failure::credentials, "CN=hq.example");
    EXPECT_NE(cert_bad.find("auth.ca of peer hq"), std::string::npos) << cert_bad;
    EXPECT_EQ(cert_bad.find("secret"), std::string::npos) << cert_bad;
    config::ike_peer_config psk_peer = cert_peer;
    psk_peer.auth.method = config::ike_auth_method::psk;
    const std::string psk_bad = peer_auth_fix(psk_peer, peer_auth_failure::credentials, "CN=hq.example");
    EXPECT_NE(psk_bad.find("auth.secret of peer hq"), std::string::npos) << psk_bad;
    EXPECT_EQ(psk_bad.find("certificate"), std::string::npos) << psk_bad;
    EXPECT_EQ(peer_auth_fix(psk_peer, peer_auth_failure::identity, "x").find("secret"), std::string::npos);
}

TEST(ExchangeTest, NatIsDetectedAndEspIsUdpEncapsulated)
{
    pair_fixture f(peer_yaml("10.0.0.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      remote-id: 10.0.0.1\n", default_tunnel_b));
    f.net.nat = true;
    f.net.a_private = addr("10.0.0.1");
    f.net.a_public = addr("198.51.100.1");
    f.a->start();
    f.pump();
    const auto* sa_a = f.only_sa(*f.a);
    const auto* sa_b = f.only_sa(*f.b);
    ASSERT_NE(sa_a, nullptr);
    ASSERT_NE(sa_b, nullptr);
    EXPECT_EQ(sa_a->sa_state(), ike_sa::state::established);
    EXPECT_TRUE(sa_a->nat_local());
    EXPECT_TRUE(sa_b->nat_remote());
    EXPECT_EQ(sa_a->local().port, 4500);
    EXPECT_EQ(sa_b->remote().port, 40500); // floated, NAT-translated
    for (const auto& [key, sa] : f.io_b.inst.sas) {
        ASSERT_TRUE(sa.udp.has_value());
        if (sa.dir == config::direction::outbound) {
            EXPECT_EQ(sa.udp->source_port, 4500);
            EXPECT_EQ(sa.udp->destination_port, 40500);
        }
    }
}

// RFC 7296 §2.23: the NAT in front of A changes its public address and port mapping. A's next
// authenticated request (DPD) arrives from the new endpoint; B's IKE replies and its outbound ESP
// follow it (the data plane's outbound SA is updated, not rekeyed).
TEST(ExchangeTest, OutboundEspFollowsAPeerWhoseNatMappingChanged)
{
    pair_fixture f(peer_yaml("10.0.0.1", "203.0.113.1", psk + "      dpd: { interval: 10s, action: clear }\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      remote-id: 10.0.0.1\n", default_tunnel_b));
    f.net.nat = true;
    f.net.a_private = addr("10.0.0.1");
    f.net.a_public = addr("198.51.100.1");
    f.a->start();
    f.pump();
    const auto* sa_b = f.only_sa(*f.b);
    ASSERT_NE(sa_b, nullptr);
    ASSERT_EQ(sa_b->children().size(), 1u);
    const uint32_t out_spi = sa_b->children()[0].spi_out;
    f.io_b.inst.events.clear();
    f.net.a_public = addr("198.51.100.9");
    f.net.nat_ports = {{500, 41000}, {4500, 41500}};
    f.advance(std::chrono::seconds(12)); // A's DPD, from the new mapping
    ASSERT_EQ(f.only_sa(*f.b), sa_b);
    EXPECT_EQ(sa_b->sa_state(), ike_sa::state::established);
    EXPECT_EQ(sa_b->remote().address, addr("198.51.100.9"));
    EXPECT_EQ(sa_b->remote().port, 41500);
    EXPECT_EQ(f.io_b.inst.events, std::vector<std::string>{"~out " + std::to_string(out_spi)});
    const auto& out = f.io_b.inst.sas.at({static_cast<int>(config::direction::outbound), out_spi});
    EXPECT_EQ(out.destination, addr("198.51.100.9"));
    ASSERT_TRUE(out.udp.has_value());
    EXPECT_EQ(out.udp->destination_port, 41500);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established); // DPD answered at the new mapping
}

TEST(ExchangeTest, ChildRekeyIsMakeBeforeBreak)
{
    std::string t_a = default_tunnel_a + "          rekey-time: 60s\n";
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 0 }\n", t_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b));
    f.a->start();
    f.pump();
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    uint32_t old_in = f.only_sa(*f.a)->children()[0].spi_in;
    f.io_a.inst.events.clear();
    f.io_b.inst.events.clear();
    f.advance(std::chrono::seconds(61));
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    ASSERT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    EXPECT_NE(f.only_sa(*f.a)->children()[0].spi_in, old_in);
    // New inbound, new outbound, then the old pair goes.
    ASSERT_EQ(f.io_a.inst.events.size(), 4u);
    EXPECT_EQ(f.io_a.inst.events[0].substr(0, 3), "+in");
    EXPECT_EQ(f.io_a.inst.events[1].substr(0, 4), "+out");
    EXPECT_EQ(f.io_a.inst.events[2].substr(0, 4), "-out");
    EXPECT_EQ(f.io_a.inst.events[3], "-in " + std::to_string(old_in));
    // B answered: new inbound at once, new outbound when A's Delete of the old pair came, then that pair.
    ASSERT_EQ(f.io_b.inst.events.size(), 4u);
    EXPECT_EQ(f.io_b.inst.events[0].substr(0, 3), "+in");
    EXPECT_EQ(f.io_b.inst.events[1].substr(0, 4), "+out");
    EXPECT_EQ(f.io_b.inst.events[2], "-out " + std::to_string(old_in));
    EXPECT_EQ(f.io_b.inst.events[3].substr(0, 3), "-in");
    EXPECT_FALSE(f.only_sa(*f.b)->children()[0].outbound_pending());
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
}

TEST(ExchangeTest, ChildRekeyWithPfs)
{
    std::string t_a = default_tunnel_a + "          rekey-time: 60s\n", t_b = default_tunnel_b;
    t_a.replace(t_a.find("aes256gcm16"), 11, "aes256gcm16-ecp256");
    t_b.replace(t_b.find("aes256gcm16"), 11, "aes256gcm16-ecp256");
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, t_a), peer_yaml("203.0.113.1", "198.51.100.1", psk, t_b));
    f.a->start();
    f.pump();
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    f.advance(std::chrono::seconds(61));
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    EXPECT_EQ(f.only_sa(*f.a)->children()[0].transforms.dh, 19);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
}

// Plain header fields (RFC 7296 §3.1): the exchange type and the flags are never encrypted.
bool is_request(const datagram& d, exchange_type x)
{
    return d.data.size() > 19 && d.data[18] == static_cast<uint8_t>(x) && (d.data[19] & flag_response) == 0;
}
bool is_response(const datagram& d, exchange_type x)
{
    return d.data.size() > 19 && d.data[18] == static_cast<uint8_t>(x) && (d.data[19] & flag_response) != 0;
}
bool has_sa(const recording_installer& inst, config::direction dir, uint32_t spi)
{
    return inst.sas.count({static_cast<int>(dir), spi}) != 0;
}
const config::direction in_dir = config::direction::inbound, out_dir = config::direction::outbound;

// A (rekey-time 60 s) initiates the Child SA rekey, B only answers. Returns B's old child; `hold`
// keeps every INFORMATIONAL request A sends (its Delete of the old Child SA) off the wire.
struct responder_rekey : pair_fixture {
    std::vector<datagram> held;
    bool hold_deletes = true;
    child_sa old_b;
    responder_rekey()
        : pair_fixture(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 0 }\n",
                                 default_tunnel_a + "          rekey-time: 60s\n"),
                       peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b))
    {
        a->start();
        pump();
        old_b = only_sa(*b)->children().at(0);
        io_b.inst.events.clear();
        net.drop = [this](const datagram& d) {
            if (hold_deletes && d.from.address == addr_a && is_request(d, exchange_type::informational)) {
                held.push_back(d);
                return true;
            }
            return false;
        };
    }
    // B's Child SA made by the rekey (the one that is not old_b).
    const child_sa* fresh_b()
    {
        for (const auto& c : only_sa(*b)->children()) {
            if (c.spi_in != old_b.spi_in) {
                return &c;
            }
        }
        return nullptr;
    }
    void release_deletes()
    {
        hold_deletes = false;
        if (!held.empty()) {
            net.wire.push_back(held.front());
            held.clear();
        }
        pump();
    }
};

// RFC 7296 §2.8: as the responder of a Child SA rekey, B installs the new inbound SA before it answers
// but keeps sending on the old outbound SA until A (which installs its new inbound SA only when it has
// B's answer) deletes the old Child SA; then new outbound in, old pair out.
TEST(ExchangeTest, ChildRekeyResponderHoldsItsOutboundSaUntilTheOldOneIsDeleted)
{
    responder_rekey f;
    f.advance(std::chrono::seconds(61)); // A rekeys; B answers; A installs its pair and sends the Delete (held)
    ASSERT_EQ(f.held.size(), 1u);
    const child_sa* fresh = f.fresh_b();
    ASSERT_NE(fresh, nullptr);
    const uint32_t new_in = fresh->spi_in, new_out = fresh->spi_out;
    EXPECT_TRUE(fresh->outbound_pending());
    EXPECT_EQ(f.io_b.inst.events, std::vector<std::string>{"+in " + std::to_string(new_in)});
    EXPECT_TRUE(has_sa(f.io_b.inst, out_dir, f.old_b.spi_out)); // B's traffic still leaves on the old SA
    EXPECT_FALSE(has_sa(f.io_b.inst, out_dir, new_out));
    EXPECT_TRUE(has_sa(f.io_b.inst, in_dir, f.old_b.spi_in)); // and both inbound SAs are there
    EXPECT_TRUE(has_sa(f.io_a.inst, out_dir, new_in));         // A sends on the new one already
    EXPECT_TRUE(has_sa(f.io_a.inst, in_dir, f.old_b.spi_out)); // and still receives on the old one

    // Within the wait (A retransmits its Delete meanwhile, held too), nothing changes.
    f.advance(std::chrono::milliseconds(1500));
    EXPECT_EQ(f.io_b.inst.events.size(), 1u);
    ASSERT_NE(f.fresh_b(), nullptr);
    EXPECT_TRUE(f.fresh_b()->outbound_pending());

    // A's Delete arrives: B's new outbound SA goes in before the old pair goes out.
    f.release_deletes();
    const std::vector<std::string> expected{"+in " + std::to_string(new_in), "+out " + std::to_string(new_out),
                                            "-out " + std::to_string(f.old_b.spi_out), "-in " + std::to_string(f.old_b.spi_in)};
    EXPECT_EQ(f.io_b.inst.events, expected);
    ASSERT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    EXPECT_FALSE(f.only_sa(*f.b)->children()[0].outbound_pending());
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
}

// A peer that never deletes the old Child SA: the held outbound SA goes in after pending_outbound_wait
// (the old pair stays until the peer deletes it), not earlier.
TEST(ExchangeTest, ChildRekeyResponderInstallsItsOutboundSaAfterTheWait)
{
    responder_rekey f;
    f.advance(std::chrono::seconds(61));
    const child_sa* fresh = f.fresh_b();
    ASSERT_NE(fresh, nullptr);
    const uint32_t new_out = fresh->spi_out;
    f.advance(std::chrono::milliseconds(1900));
    EXPECT_FALSE(has_sa(f.io_b.inst, out_dir, new_out));
    EXPECT_TRUE(f.fresh_b()->outbound_pending());
    f.advance(std::chrono::milliseconds(200)); // 2.1 s after B answered
    EXPECT_TRUE(has_sa(f.io_b.inst, out_dir, new_out));
    EXPECT_TRUE(has_sa(f.io_b.inst, out_dir, f.old_b.spi_out)); // the old pair waits for the peer's Delete
    ASSERT_NE(f.fresh_b(), nullptr);
    EXPECT_FALSE(f.fresh_b()->outbound_pending());
    EXPECT_TRUE(std::any_of(f.io_b.logs.begin(), f.io_b.logs.end(),
                            [](const std::string& l) { return l.find("did not delete the Child SA it rekeys") != std::string::npos; }));
    // The Delete comes late after all: the old pair goes, nothing is installed twice.
    f.release_deletes();
    f.advance(std::chrono::seconds(5));
    ASSERT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    EXPECT_EQ(std::count(f.io_b.inst.events.begin(), f.io_b.inst.events.end(), "+out " + std::to_string(new_out)), 1);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
}

// B's answer is lost: A retransmits the request, B answers from its cache, and the wait starts again
// (A installs its inbound SA only now).
TEST(ExchangeTest, ChildRekeyResponderWaitsAgainAfterARetransmittedRequest)
{
    responder_rekey f;
    bool dropped_answer = false;
    auto hold = f.net.drop;
    f.net.drop = [&](const datagram& d) {
        if (!dropped_answer && d.from.address == f.addr_b && is_response(d, exchange_type::create_child_sa)) {
            dropped_answer = true;
            return true;
        }
        return hold(d);
    };
    f.advance(std::chrono::seconds(61)); // t0: B answers, the answer is lost
    ASSERT_TRUE(dropped_answer);
    ASSERT_NE(f.fresh_b(), nullptr);
    const uint32_t new_out = f.fresh_b()->spi_out;
    EXPECT_EQ(f.only_sa(*f.a)->children().size(), 1u); // A has nothing new yet
    f.advance(std::chrono::milliseconds(1000));         // t0+1 s: A retransmits, B answers again
    EXPECT_EQ(f.only_sa(*f.a)->children().size(), 2u);
    f.advance(std::chrono::milliseconds(1500)); // t0+2.5 s: past the first deadline, within the new one
    EXPECT_FALSE(has_sa(f.io_b.inst, out_dir, new_out));
    f.advance(std::chrono::milliseconds(1000)); // t0+3.5 s
    EXPECT_TRUE(has_sa(f.io_b.inst, out_dir, new_out));
}

// The IKE SA goes while the outbound SA is held: it was never installed, so it is not removed either.
TEST(ExchangeTest, ChildRekeyResponderDropsAHeldOutboundSaWithTheIkeSa)
{
    responder_rekey f;
    f.advance(std::chrono::seconds(61));
    ASSERT_NE(f.fresh_b(), nullptr);
    const uint32_t new_out = f.fresh_b()->spi_out;
    EXPECT_EQ(f.b->clear(""), 1u);
    f.pump();
    EXPECT_TRUE(f.b->sas().empty());
    EXPECT_TRUE(f.io_b.inst.sas.empty());
    for (const auto& e : f.io_b.inst.events) {
        EXPECT_EQ(e.find("out " + std::to_string(new_out)), std::string::npos) << e;
    }
}

// An IKE SA rekey while the outbound SA is held: the held SA moves with the Child SAs to the new IKE
// SA and still goes in (here at the deadline: A's Delete travels on the old IKE SA, already replaced).
// B holds the outbound SA of the Child SA it made for A's rekey until A's Delete of the old one
// comes; B's IKE SA rekey meanwhile is answered TEMPORARY_FAILURE by A, whose Delete is under way
// (RFC 7296 §2.25): no Child SA moves while an exchange about it runs, and B's held SA goes in at
// its deadline on the same IKE SA.
TEST(ExchangeTest, IkeSaRekeyWaitsWhileThePeerDeletesAChildSa)
{
    responder_rekey f;
    f.advance(std::chrono::seconds(61));
    ASSERT_NE(f.fresh_b(), nullptr);
    const uint32_t new_out = f.fresh_b()->spi_out;
    const uint64_t old_ike = f.only_sa(*f.b)->spi_i();
    f.b->sas().begin()->second->rekey_ike();
    f.pump();
    ASSERT_EQ(f.b->sas().size(), 1u);
    EXPECT_EQ(f.only_sa(*f.b)->spi_i(), old_ike);
    EXPECT_FALSE(has_sa(f.io_b.inst, out_dir, new_out));
    f.advance(std::chrono::milliseconds(2100));
    EXPECT_TRUE(has_sa(f.io_b.inst, out_dir, new_out));
    EXPECT_EQ(f.only_sa(*f.b)->spi_i(), old_ike);
}

TEST(ExchangeTest, IkeSaRekeyMovesChildSasToTheNewIkeSa)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      rekey-time: 100s\n      dpd: { interval: 0 }\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      rekey-time: 0\n      dpd: { interval: 0 }\n", default_tunnel_b));
    f.a->start();
    f.pump();
    uint64_t old_spi = f.only_sa(*f.a)->spi_i();
    auto children_before = f.only_sa(*f.a)->children();
    auto installs_before = f.io_a.inst.events.size();
    f.advance(std::chrono::seconds(101));
    ASSERT_EQ(f.a->sas().size(), 1u);
    ASSERT_EQ(f.b->sas().size(), 1u);
    const auto* sa_a = f.only_sa(*f.a);
    const auto* sa_b = f.only_sa(*f.b);
    EXPECT_NE(sa_a->spi_i(), old_spi);
    EXPECT_EQ(sa_a->spi_i(), sa_b->spi_i());
    EXPECT_EQ(sa_a->spi_r(), sa_b->spi_r());
    EXPECT_EQ(sa_a->sa_state(), ike_sa::state::established);
    EXPECT_EQ(sa_b->sa_state(), ike_sa::state::established);
    ASSERT_EQ(sa_a->children().size(), 1u);
    EXPECT_EQ(sa_a->children()[0].spi_in, children_before[0].spi_in);
    EXPECT_EQ(f.io_a.inst.events.size(), installs_before); // the data plane was not touched
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
    // The new IKE SA works: a Child SA rekey over it, then a delete.
    f.a->sas().begin()->second->rekey_child(children_before[0].spi_in);
    f.pump();
    ASSERT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    EXPECT_NE(f.only_sa(*f.b)->children()[0].spi_out, children_before[0].spi_in);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    EXPECT_EQ(f.a->clear(""), 1u);
    f.pump();
    EXPECT_TRUE(f.b->sas().empty());
    EXPECT_TRUE(f.io_b.inst.sas.empty());
}

// After an IKE SA rekey and a rekey of A's only Child SA (whatever their order): one IKE SA at each
// end, not the old one; one Child SA, not the old one, installed, with mirrored keys.
void expect_one_rekeyed_child_on_a_new_ike_sa(pair_fixture& f, uint64_t old_ike, uint32_t old_in)
{
    ASSERT_EQ(f.a->sas().size(), 1u);
    ASSERT_EQ(f.b->sas().size(), 1u);
    const auto* a = f.only_sa(*f.a);
    EXPECT_NE(a->spi_i(), old_ike);
    ASSERT_EQ(a->children().size(), 1u);
    EXPECT_NE(a->children()[0].spi_in, old_in);
    EXPECT_EQ(a->children()[0].st, child_sa::state::installed);
    ASSERT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
}

// The end state of the tests where two Child SAs end up on an IKE SA that replaced `old_ike`: one IKE
// SA at each end, two Child SAs each, four SAs in each data plane, mirrored.
// One IKE SA at each end with `children` Child SAs each, their SAs (two per Child SA) in both data
// planes with mirrored keys.
void expect_children_each(pair_fixture& f, size_t children)
{
    ASSERT_EQ(f.a->sas().size(), 1u);
    ASSERT_EQ(f.b->sas().size(), 1u);
    EXPECT_EQ(f.only_sa(*f.a)->children().size(), children);
    EXPECT_EQ(f.only_sa(*f.b)->children().size(), children);
    EXPECT_EQ(f.io_a.inst.sas.size(), 2 * children);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2 * children);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
}

void expect_two_children_on_a_new_ike_sa(pair_fixture& f, uint64_t old_ike)
{
    expect_children_each(f, 2);
    ASSERT_EQ(f.a->sas().size(), 1u);
    EXPECT_NE(f.only_sa(*f.a)->spi_i(), old_ike);
}

// A Child SA rekey that comes due while our IKE SA rekey is in flight waits for the new IKE SA: it
// used to be queued on the old one, whose Delete dropped the queue and left the Child SA "being
// rekeyed" until its hard lifetime deleted it (seen in tests/system/test_ike_strongswan.py ike_rekey).
TEST(ExchangeTest, ChildRekeyDueDuringOurIkeSaRekeyRunsOnTheNewIkeSa)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b));
    f.a->start();
    f.pump();
    const uint64_t old_ike = f.only_sa(*f.a)->spi_i();
    const uint32_t old_in = f.only_sa(*f.a)->children()[0].spi_in;
    ike_sa& sa = *f.a->sas().begin()->second;
    sa.rekey_ike();
    sa.rekey_child(old_in); // before the IKE SA rekey's answer
    f.pump();
    f.advance(std::chrono::milliseconds(1100));
    expect_one_rekeyed_child_on_a_new_ike_sa(f, old_ike, old_in);
}

// The same when the peer rekeys the IKE SA while our Child SA rekey waits in the queue (behind a DPD
// check): the peer's IKE SA rekey waits (TEMPORARY_FAILURE, §2.25) until ours is done.
TEST(ExchangeTest, ChildRekeyQueuedWhenThePeerRekeysTheIkeSaRunsOnTheNewIkeSa)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 2s }\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b));
    f.a->start();
    f.pump();
    const uint64_t old_ike = f.only_sa(*f.a)->spi_i();
    const uint32_t old_in = f.only_sa(*f.a)->children()[0].spi_in;
    f.clock += std::chrono::seconds(3);
    f.a->tick(); // A's DPD INFORMATIONAL goes out (answered in the pump below, after B's request left)
    ASSERT_FALSE(f.net.wire.empty());
    f.a->sas().begin()->second->rekey_child(old_in); // queued behind it
    f.b->sas().begin()->second->rekey_ike();             // answered TEMPORARY_FAILURE (§2.25)
    f.pump();
    f.advance(std::chrono::milliseconds(100));
    EXPECT_EQ(f.only_sa(*f.a)->spi_i(), old_ike);
    f.advance(std::chrono::seconds(31)); // the peer's retry
    expect_one_rekeyed_child_on_a_new_ike_sa(f, old_ike, old_in);
}

// Our Child SA rekey is on the wire when the peer's IKE SA rekey request crosses it: we answer the
// IKE SA rekey TEMPORARY_FAILURE (RFC 7296 §2.25), our rekey completes, and the peer's retry 30 s
// later moves the new Child SA to the new IKE SA. (Answered, the Child SAs moved away and the answer
// to our rekey found none: the old one stayed "being rekeyed", the peer had two.)
TEST(ExchangeTest, ChildRekeyInFlightWhenThePeerRekeysTheIkeSaCompletes)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b));
    f.a->start();
    f.pump();
    const uint64_t old_ike = f.only_sa(*f.a)->spi_i();
    const uint32_t old_in = f.only_sa(*f.a)->children()[0].spi_in;
    f.a->sas().begin()->second->rekey_child(old_in);
    f.b->sas().begin()->second->rekey_ike();
    f.pump();
    f.advance(std::chrono::milliseconds(2100));
    EXPECT_EQ(f.only_sa(*f.a)->spi_i(), old_ike); // refused for now
    f.advance(std::chrono::seconds(31));
    expect_one_rekeyed_child_on_a_new_ike_sa(f, old_ike, old_in);
}

// A new Child SA's CREATE_CHILD_SA on the wire when the peer's IKE SA rekey crosses it: the IKE SA
// rekey waits (TEMPORARY_FAILURE) and the new Child SA ends up with the others on the new IKE SA.
// (Answered, the new Child SA was made in the old IKE SA and went with it.)
TEST(ExchangeTest, NewChildSaInFlightWhenThePeerRekeysTheIkeSaJoinsTheNewIkeSa)
{
    const std::string second_a = "        - name: dmz\n"
                                 "          local-ts: [10.1.0.0/24]\n"
                                 "          remote-ts: [10.2.0.0/24]\n"
                                 "          esp-proposals: [aes256gcm16]\n";
    const std::string second_b = "        - name: dmz\n"
                                 "          local-ts: [10.2.0.0/24]\n"
                                 "          remote-ts: [10.1.0.0/24]\n"
                                 "          esp-proposals: [aes256gcm16]\n";
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_a + second_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b + second_b));
    f.a->start();
    f.pump();
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    const uint64_t old_ike = f.only_sa(*f.a)->spi_i();
    f.a->sas().begin()->second->start_child("dmz");
    f.b->sas().begin()->second->rekey_ike();
    f.pump();
    f.advance(std::chrono::milliseconds(2100));
    EXPECT_EQ(f.only_sa(*f.a)->spi_i(), old_ike); // refused for now
    f.advance(std::chrono::seconds(31));
    expect_two_children_on_a_new_ike_sa(f, old_ike);
}

// After the peer rekeyed the IKE SA, the replaced one waits (retiring) for the peer's Delete with no
// Child SAs: asking for the tunnel meanwhile must use the new IKE SA, not start every selector pair
// again on the retiring one (those Child SAs would go with it).
TEST(ExchangeTest, InitiateIgnoresARetiringIkeSa)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b));
    f.a->start();
    f.pump();
    // B's Deletes of replaced IKE SAs are lost: A keeps them, retiring, beside the new one. B rekeys
    // until a retiring SA comes first in A's table (by SPI), where the manager looks first.
    f.net.drop = [&](const datagram& d) {
        return d.from.address == addr("203.0.113.1") && is_request(d, exchange_type::informational);
    };
    auto current = [](ike_manager& m) -> ike_sa* {
        for (const auto& [spi, sa] : m.sas()) {
            if (sa->sa_state() == ike_sa::state::established && !sa->retiring()) {
                return sa.get();
            }
        }
        return nullptr;
    };
    for (int i = 0; i < 6 && !(f.a->sas().size() > 1 && f.a->sas().begin()->second->retiring()); ++i) {
        ASSERT_NE(current(*f.b), nullptr);
        current(*f.b)->rekey_ike();
        f.pump();
    }
    ASSERT_TRUE(f.a->sas().begin()->second->retiring()) << "no ordering that puts a retiring IKE SA first";
    f.net.wire.clear();
    f.a->initiate("p/lan");
    // Every pair has its Child SA on the current IKE SA: nothing to ask for.
    EXPECT_EQ(std::count_if(f.net.wire.begin(), f.net.wire.end(),
                            [](const datagram& d) { return is_request(d, exchange_type::create_child_sa); }),
              0);
    f.pump();
    size_t children = 0;
    for (const auto& [spi, sa] : f.a->sas()) {
        children += sa->children().size();
    }
    EXPECT_EQ(children, 1u);
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
}

TEST(ExchangeTest, CookiesAboveTheHalfOpenThreshold)
{
    std::string b_yaml = peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b);
    b_yaml.replace(b_yaml.find("ike:\n"), 5, "ike:\n  cookie-threshold: 0\n");
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a), b_yaml);
    f.a->start();
    f.pump();
    EXPECT_EQ(f.b->counters().cookies_sent, 1u);
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    // A forged cookie gets no state.
    ike_header h;
    h.spi_i = 0x1122334455667788ULL;
    h.exchange = static_cast<uint8_t>(exchange_type::ike_sa_init);
    h.flags = flag_initiator;
    notify_payload n;
    n.type = static_cast<uint16_t>(notify_type::cookie);
    n.data = bytes(33, 7);
    std::vector<payload> p{payload{payload_type::notify, false, n},
                           payload{payload_type::nonce, false, nonce_payload{bytes(32, 1)}}};
    size_t before = f.b->sas().size();
    f.b->receive(endpoint{f.addr_b, 500}, endpoint{f.addr_a, 500}, serialize_message(h, p));
    EXPECT_EQ(f.b->sas().size(), before);
    EXPECT_EQ(f.b->counters().cookies_invalid, 1u);
}

// A copy of `request` (an IKE_SA_INIT) from another initiator SPI: a new half-open SA for the responder.
bytes with_spi_i(bytes request, uint64_t spi_i)
{
    for (int i = 0; i < 8; ++i) {
        request[i] = static_cast<uint8_t>(spi_i >> (56 - 8 * i));
    }
    return request;
}

size_t count_lines(const std::vector<std::string>& logs, const std::string& text)
{
    return static_cast<size_t>(
        std::count_if(logs.begin(), logs.end(), [&](const std::string& l) { return l.find(text) != std::string::npos; }));
}

TEST(ExchangeTest, HalfOpenLimitPerAddressRefusesBeforeDh)
{
    std::string b_yaml = peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b);
    b_yaml.replace(b_yaml.find("ike:\n"), 5, "ike:\n  max-half-open-per-address: 2\n");
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a), b_yaml);
    f.a->start();
    ASSERT_EQ(f.net.wire.size(), 1u);
    const bytes request = f.net.wire.front().data; // A's IKE_SA_INIT
    f.net.wire.clear();
    const endpoint to_b{f.addr_b, 500}, from_a{f.addr_a, 500};
    for (uint64_t i = 1; i <= 5; ++i) {
        f.b->receive(to_b, from_a, with_spi_i(request, 0x1000 + i));
    }
    // Two half-open SAs (each answered); the other three refused before any SA or DH existed.
    EXPECT_EQ(f.b->sas().size(), 2u);
    EXPECT_EQ(f.net.wire.size(), 2u);
    EXPECT_EQ(f.b->counters().address_half_open_refused, 3u);
    EXPECT_EQ(f.b->counters().half_open_refused, 0u);
    // One log line for the burst, rate-limited; after 10 s the next refusal says how many were hidden.
    EXPECT_EQ(count_lines(f.io_b.logs, "max-half-open-per-address"), 1u);
    f.net.wire.clear();
    f.clock += std::chrono::seconds(11);
    f.b->receive(to_b, from_a, with_spi_i(request, 0x2000));
    EXPECT_EQ(f.b->counters().address_half_open_refused, 4u);
    EXPECT_EQ(count_lines(f.io_b.logs, "max-half-open-per-address"), 2u);
    EXPECT_EQ(count_lines(f.io_b.logs, "2 more refused"), 1u);
    // A retransmission of an admitted request is answered from the cache, not refused.
    f.b->receive(to_b, from_a, with_spi_i(request, 0x1001));
    EXPECT_EQ(f.b->counters().address_half_open_refused, 4u);
    // An address no peer accepts is refused for that reason, before the limits.
    const endpoint other{addr("198.51.100.9"), 500};
    size_t before = f.b->sas().size();
    f.b->receive(to_b, other, with_spi_i(request, 0x3000));
    EXPECT_EQ(f.b->counters().no_peer, 1u);
    EXPECT_EQ(f.b->counters().address_half_open_refused, 4u);
    EXPECT_EQ(f.b->sas().size(), before);
    // Malformed requests are dropped before any limit or DH work, and counted.
    bytes cut(request.begin(), request.begin() + 40);
    f.b->receive(to_b, from_a, cut);
    EXPECT_EQ(f.b->counters().malformed, 1u);
    EXPECT_EQ(f.b->counters().address_half_open_refused, 4u);
    // The half-open SAs time out (30 s): the address may start again.
    f.net.wire.clear();
    f.clock += std::chrono::seconds(31);
    f.b->tick();
    EXPECT_TRUE(f.b->sas().empty());
    f.b->receive(to_b, from_a, with_spi_i(request, 0x4000));
    EXPECT_EQ(f.b->sas().size(), 1u);
    EXPECT_EQ(f.b->counters().address_half_open_refused, 4u);
}

TEST(ExchangeTest, EstablishedLimitPerAddress)
{
    std::string b_yaml = peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b);
    b_yaml.replace(b_yaml.find("ike:\n"), 5, "ike:\n  max-sas-per-address: 1\n");
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a), b_yaml);
    f.a->start();
    ASSERT_EQ(f.net.wire.size(), 1u);
    const bytes request = f.net.wire.front().data;
    f.pump();
    ASSERT_NE(f.only_sa(*f.b), nullptr);
    ASSERT_EQ(f.only_sa(*f.b)->sa_state(), ike_sa::state::established);
    const endpoint to_b{f.addr_b, 500}, from_a{f.addr_a, 500};
    f.b->receive(to_b, from_a, with_spi_i(request, 0x5000));
    EXPECT_EQ(f.b->sas().size(), 1u);
    EXPECT_TRUE(f.net.wire.empty()); // not answered
    EXPECT_EQ(f.b->counters().address_sas_refused, 1u);
    EXPECT_EQ(count_lines(f.io_b.logs, "max-sas-per-address"), 1u);
    // Once the IKE SA is gone, the address may set up another.
    EXPECT_EQ(f.a->clear(""), 1u);
    f.pump();
    ASSERT_TRUE(f.b->sas().empty());
    f.b->receive(to_b, from_a, with_spi_i(request, 0x6000));
    EXPECT_EQ(f.b->sas().size(), 1u);
    EXPECT_EQ(f.b->counters().address_sas_refused, 1u);
}

TEST(ExchangeTest, ReloadKeepsUnchangedPeersAndRedoesChangedOnes)
{
    std::string yaml_a = peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a);
    pair_fixture f(yaml_a, peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    f.a->start();
    f.pump();
    uint64_t spi = f.only_sa(*f.a)->spi_i();
    auto events = f.io_a.inst.events.size();
    auto same = f.a->reload(config::load_string(yaml_a, "a.yaml").ike);
    f.pump();
    EXPECT_EQ(same.unchanged, std::vector<std::string>{"p"});
    EXPECT_EQ(f.only_sa(*f.a)->spi_i(), spi);
    EXPECT_EQ(f.io_a.inst.events.size(), events); // untouched

    // An IKE SA setting changed: the whole peer is negotiated again.
    std::string changed = peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 20s }\n", default_tunnel_a);
    auto r = f.a->reload(config::load_string(changed, "a.yaml").ike);
    f.pump();
    EXPECT_EQ(r.changed, std::vector<std::string>{"p"});
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_NE(f.only_sa(*f.a)->spi_i(), spi);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);

    auto gone = f.a->reload(config::ike_config{});
    f.pump();
    EXPECT_EQ(gone.removed, std::vector<std::string>{"p"});
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_TRUE(f.b->sas().empty());
    EXPECT_TRUE(f.io_a.inst.sas.empty());
}

// `espresso reload --dry-run`: the same report as the reload would give, and nothing changes.
TEST(ExchangeTest, ReloadDryRunReportsAndChangesNothing)
{
    std::string yaml_a = peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a);
    pair_fixture f(yaml_a, peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    f.a->start();
    f.pump();
    const uint64_t spi = f.only_sa(*f.a)->spi_i();
    const auto events = f.io_a.inst.events.size();
    const auto sent = f.net.delivered;
    std::string changed = peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 20s }\n", default_tunnel_a);
    auto dry = f.a->reload(config::load_string(changed, "a.yaml").ike, true);
    f.pump();
    EXPECT_EQ(dry.changed, std::vector<std::string>{"p"});
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_EQ(f.only_sa(*f.a)->spi_i(), spi);
    EXPECT_EQ(f.io_a.inst.events.size(), events);
    EXPECT_EQ(f.net.delivered, sent); // not one IKE message
    auto gone = f.a->reload(config::ike_config{}, true);
    f.pump();
    EXPECT_EQ(gone.removed, std::vector<std::string>{"p"});
    EXPECT_EQ(f.only_sa(*f.a)->spi_i(), spi);
    // The dry runs left the running configuration: the same file again is all unchanged, and the real
    // reload reports what the dry run did.
    EXPECT_EQ(f.a->reload(config::load_string(yaml_a, "a.yaml").ike, true).unchanged, std::vector<std::string>{"p"});
    auto real = f.a->reload(config::load_string(changed, "a.yaml").ike);
    f.pump();
    EXPECT_EQ(real.changed, dry.changed);
    EXPECT_EQ(real.tunnels, dry.tunnels);
    EXPECT_NE(f.only_sa(*f.a)->spi_i(), spi);
}

// A tunnel of a peer as YAML (the peer_yaml `tunnel` argument takes "      tunnels:\n" + these).
std::string tunnel_yaml(const std::string& name, const std::string& local, const std::string& remote,
                        const std::string& extra = "")
{
    return "        - name: " + name + "\n"
           "          local-ts: [" + local + "]\n"
           "          remote-ts: [" + remote + "]\n"
           "          esp-proposals: [aes256gcm16]\n" + extra;
}

const child_sa* child_of(const ike_sa& sa, const std::string& tunnel)
{
    for (const auto& c : sa.children()) {
        if (c.tunnel == tunnel) {
            return &c;
        }
    }
    return nullptr;
}

bool touched(const recording_installer& inst, size_t from, uint32_t spi)
{
    for (size_t i = from; i < inst.events.size(); ++i) {
        const auto& e = inst.events[i];
        if (e.ends_with(" " + std::to_string(spi)) && !e.starts_with("+trap") && !e.starts_with("-trap")) {
            return true;
        }
    }
    return false;
}

// docs/ike.md, "Reload": only tunnels of the peer differ, so its IKE SA stays (same SPIs); the Child SA
// of the unchanged tunnel is not touched in either data plane; the removed tunnel's Child SA is deleted
// on both ends (INFORMATIONAL Delete); the changed one is negotiated again with its new settings; the
// added one comes up per its start action. The traps follow per tunnel.
TEST(ExchangeTest, ReloadOfOneTunnelLeavesTheOthersAndTheIkeSaAlone)
{
    const std::string now = "          start: immediately\n";
    const std::string dpd_off = psk + "      dpd: { interval: 0 }\n";
    const std::string a_before = "      tunnels:\n" + tunnel_yaml("keep", "192.168.1.0/24", "192.168.2.0/24", now) +
                                 tunnel_yaml("change", "192.168.3.0/24", "192.168.4.0/24", now) +
                                 tunnel_yaml("gone", "192.168.5.0/24", "192.168.6.0/24", now);
    const std::string b_all = "      tunnels:\n" + tunnel_yaml("keep", "192.168.2.0/24", "192.168.1.0/24") +
                              tunnel_yaml("change", "192.168.4.0/24", "192.168.3.0/24") +
                              tunnel_yaml("gone", "192.168.6.0/24", "192.168.5.0/24") +
                              tunnel_yaml("new", "192.168.8.0/24", "192.168.7.0/24");
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off, a_before), peer_yaml("203.0.113.1", "198.51.100.1", dpd_off, b_all));
    f.a->start();
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 3u);
    const uint64_t spi_i = f.only_sa(*f.a)->spi_i(), spi_r = f.only_sa(*f.a)->spi_r();
    const child_sa keep = *child_of(*f.only_sa(*f.a), "keep");
    const child_sa change = *child_of(*f.only_sa(*f.a), "change");
    const child_sa gone = *child_of(*f.only_sa(*f.a), "gone");
    const auto keep_trap = f.a->traps().at("p").at("keep");
    const size_t events_a = f.io_a.inst.events.size(), events_b = f.io_b.inst.events.size();

    // The tunnel `change` gets a second ESP proposal (B still picks aes256gcm16), `gone` goes, `new` comes.
    std::string a_after = "      tunnels:\n" + tunnel_yaml("keep", "192.168.1.0/24", "192.168.2.0/24", now) +
                          tunnel_yaml("change", "192.168.3.0/24", "192.168.4.0/24", now) +
                          tunnel_yaml("new", "192.168.7.0/24", "192.168.8.0/24", now);
    a_after.replace(a_after.find("esp-proposals: [aes256gcm16]\n          start: immediately\n        - name: new"), 28,
                    "esp-proposals: [aes128gcm16, aes256gcm16]");
    auto r = f.a->reload(config::load_string(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off, a_after), "a.yaml").ike);
    EXPECT_TRUE(r.changed.empty());
    EXPECT_EQ(r.updated, std::vector<std::string>{"p"});
    using change_t = ike_manager::tunnel_change;
    EXPECT_EQ(r.tunnels, (std::vector<change_t>{{"p", "gone", "removed"},
                                                 {"p", "keep", "unchanged"},
                                                 {"p", "change", "changed"},
                                                 {"p", "new", "added"}}));
    f.pump();

    // The IKE SA: the same one at both ends.
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    ASSERT_NE(f.only_sa(*f.b), nullptr);
    EXPECT_EQ(f.only_sa(*f.a)->spi_i(), spi_i);
    EXPECT_EQ(f.only_sa(*f.a)->spi_r(), spi_r);
    EXPECT_EQ(f.only_sa(*f.b)->spi_i(), spi_i);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    const auto& sa_a = *f.only_sa(*f.a);
    const auto& sa_b = *f.only_sa(*f.b);
    // keep: same SPIs, and neither data plane saw an install or removal of them.
    ASSERT_NE(child_of(sa_a, "keep"), nullptr);
    EXPECT_EQ(child_of(sa_a, "keep")->spi_in, keep.spi_in);
    EXPECT_EQ(child_of(sa_a, "keep")->spi_out, keep.spi_out);
    EXPECT_FALSE(touched(f.io_a.inst, events_a, keep.spi_in));
    EXPECT_FALSE(touched(f.io_a.inst, events_a, keep.spi_out));
    EXPECT_FALSE(touched(f.io_b.inst, events_b, keep.spi_in));
    EXPECT_FALSE(touched(f.io_b.inst, events_b, keep.spi_out));
    // gone: deleted at both ends, the peer told.
    EXPECT_EQ(child_of(sa_a, "gone"), nullptr);
    EXPECT_EQ(child_of(sa_b, "gone"), nullptr);
    EXPECT_EQ(f.io_a.inst.sas.count({static_cast<int>(config::direction::inbound), gone.spi_in}), 0u);
    EXPECT_EQ(f.io_b.inst.sas.count({static_cast<int>(config::direction::inbound), gone.spi_out}), 0u);
    EXPECT_TRUE(std::any_of(f.io_b.logs.begin(), f.io_b.logs.end(),
                            [](const std::string& l) { return l.find("peer deleted Child SA gone") != std::string::npos; }));
    // change: negotiated again (new SPIs), the old pair gone at both ends.
    ASSERT_NE(child_of(sa_a, "change"), nullptr);
    EXPECT_NE(child_of(sa_a, "change")->spi_in, change.spi_in);
    EXPECT_EQ(f.io_a.inst.sas.count({static_cast<int>(config::direction::inbound), change.spi_in}), 0u);
    EXPECT_EQ(f.io_b.inst.sas.count({static_cast<int>(config::direction::inbound), change.spi_out}), 0u);
    ASSERT_NE(child_of(sa_b, "change"), nullptr);
    // new: up.
    ASSERT_NE(child_of(sa_a, "new"), nullptr);
    ASSERT_NE(child_of(sa_b, "new"), nullptr);
    EXPECT_EQ(sa_a.children().size(), 3u);
    EXPECT_EQ(sa_b.children().size(), 3u);
    EXPECT_EQ(f.io_a.inst.sas.size(), 6u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 6u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
    // Traps per tunnel: keep's untouched, gone's removed, new's in.
    EXPECT_EQ(f.a->traps().at("p").at("keep"), keep_trap);
    EXPECT_EQ(f.a->traps().at("p").count("gone"), 0u);
    EXPECT_EQ(f.io_a.inst.trap_list(), (std::vector<std::string>{"192.168.1.0/24 === 192.168.2.0/24",
                                                                 "192.168.3.0/24 === 192.168.4.0/24",
                                                                 "192.168.7.0/24 === 192.168.8.0/24"}));
    EXPECT_TRUE(f.io_a.failures.empty());
    EXPECT_TRUE(f.io_b.failures.empty());
}

// Only `on-traffic` tunnels, so no IKE SA yet: a reload adding a `start: immediately` tunnel brings
// one up for it, as start() would have; the unchanged tunnel keeps its trap and stays down.
TEST(ExchangeTest, ReloadAddingAnImmediateTunnelToAnIdlePeerInitiates)
{
    const std::string dpd_off = psk + "      dpd: { interval: 0 }\n";
    const std::string lazy = tunnel_yaml("lazy", "192.168.1.0/24", "192.168.2.0/24", "          start: on-traffic\n");
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off, "      tunnels:\n" + lazy),
                   peer_yaml("203.0.113.1", "198.51.100.1", dpd_off,
                             "      tunnels:\n" + tunnel_yaml("lazy", "192.168.2.0/24", "192.168.1.0/24") +
                                 tunnel_yaml("now", "192.168.4.0/24", "192.168.3.0/24")));
    f.a->start();
    f.pump();
    EXPECT_TRUE(f.a->sas().empty());
    const auto lazy_trap = f.a->traps().at("p").at("lazy");
    auto r = f.a->reload(config::load_string(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off,
                                                       "      tunnels:\n" + lazy +
                                                           tunnel_yaml("now", "192.168.3.0/24", "192.168.4.0/24",
                                                                       "          start: immediately\n")),
                                             "a.yaml")
                             .ike);
    EXPECT_EQ(r.tunnels, (std::vector<ike_manager::tunnel_change>{{"p", "lazy", "unchanged"}, {"p", "now", "added"}}));
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    EXPECT_EQ(f.only_sa(*f.a)->children()[0].tunnel, "now");
    EXPECT_EQ(f.a->traps().at("p").at("lazy"), lazy_trap);
    EXPECT_EQ(f.a->traps().at("p").at("now").size(), 1u);
}

// The responder reloads: its changed tunnel's Child SA (which the peer initiated) is deleted and
// negotiated again by the responder itself with CREATE_CHILD_SA; the IKE SA stays.
TEST(ExchangeTest, ReloadOnTheResponderRenegotiatesTheChangedTunnelItself)
{
    const std::string dpd_off = psk + "      dpd: { interval: 0 }\n";
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", dpd_off, default_tunnel_b));
    f.a->start();
    f.pump();
    ASSERT_NE(f.only_sa(*f.b), nullptr);
    const uint64_t spi_r = f.only_sa(*f.b)->spi_r();
    const uint32_t old_in = f.only_sa(*f.b)->children().at(0).spi_in;
    auto r = f.b->reload(config::load_string(peer_yaml("203.0.113.1", "198.51.100.1", dpd_off,
                                                       default_tunnel_b + "          replay-window: 1024\n"),
                                             "b.yaml")
                             .ike);
    EXPECT_EQ(r.tunnels, (std::vector<ike_manager::tunnel_change>{{"p", "lan", "changed"}}));
    f.pump();
    ASSERT_NE(f.only_sa(*f.b), nullptr);
    EXPECT_EQ(f.only_sa(*f.b)->spi_r(), spi_r);
    ASSERT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    const uint32_t in = f.only_sa(*f.b)->children()[0].spi_in;
    EXPECT_NE(in, old_in);
    EXPECT_EQ(f.io_b.inst.sas.at({static_cast<int>(config::direction::inbound), in}).replay_window, 1024u);
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
    EXPECT_TRUE(f.io_a.failures.empty());
}

// A reload while the IKE SA is still being set up: the tunnel offered in IKE_AUTH is removed, another
// added. Once established, the removed one's Child SA is deleted and the added one comes up.
TEST(ExchangeTest, ReloadWhileIkeAuthIsOutstandingAppliesOnceEstablished)
{
    const std::string now = "          start: immediately\n";
    const std::string dpd_off = psk + "      dpd: { interval: 0 }\n";
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off,
                             "      tunnels:\n" + tunnel_yaml("first", "192.168.1.0/24", "192.168.2.0/24", now)),
                   peer_yaml("203.0.113.1", "198.51.100.1", dpd_off,
                             "      tunnels:\n" + tunnel_yaml("first", "192.168.2.0/24", "192.168.1.0/24") +
                                 tunnel_yaml("second", "192.168.4.0/24", "192.168.3.0/24")));
    f.a->start();
    // IKE_SA_INIT there and back, IKE_AUTH sent but not delivered yet.
    for (int i = 0; i < 2; ++i) {
        datagram d = std::move(f.net.wire.front());
        f.net.wire.pop_front();
        (d.to.address == f.addr_a ? *f.a : *f.b).receive(d.to, d.from, d.data);
    }
    ASSERT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::init_done); // IKE_AUTH on the wire
    const uint64_t spi_i = f.only_sa(*f.a)->spi_i();
    auto r = f.a->reload(config::load_string(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off,
                                                       "      tunnels:\n" +
                                                           tunnel_yaml("second", "192.168.3.0/24", "192.168.4.0/24", now)),
                                             "a.yaml")
                             .ike);
    EXPECT_EQ(r.updated, std::vector<std::string>{"p"});
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_EQ(f.only_sa(*f.a)->spi_i(), spi_i);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    EXPECT_EQ(child_of(*f.only_sa(*f.a), "first"), nullptr);
    EXPECT_NE(child_of(*f.only_sa(*f.a), "second"), nullptr);
    ASSERT_NE(f.only_sa(*f.b), nullptr);
    EXPECT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
}

// A reload while a Child SA of the changed tunnel is being rekeyed: neither the old Child SA nor the
// one the rekey made with the old settings stays; one with the new settings does.
TEST(ExchangeTest, ReloadDuringAChildRekeyLeavesOnlyTheNewSettings)
{
    const std::string now = "          start: immediately\n";
    const std::string dpd_off = psk + "      dpd: { interval: 0 }\n";
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off,
                             "      tunnels:\n" + tunnel_yaml("t", "192.168.1.0/24", "192.168.2.0/24", now)),
                   peer_yaml("203.0.113.1", "198.51.100.1", dpd_off,
                             "      tunnels:\n" + tunnel_yaml("t", "192.168.2.0/24", "192.168.1.0/24", "          replay-window: 64\n")));
    f.a->start();
    f.pump();
    const uint32_t old_in = f.only_sa(*f.a)->children()[0].spi_in;
    f.a->sas().begin()->second->rekey_child(old_in);
    auto r = f.a->reload(config::load_string(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off,
                                                       "      tunnels:\n" +
                                                           tunnel_yaml("t", "192.168.1.0/24", "192.168.2.0/24",
                                                                       now + "          replay-window: 256\n")),
                                             "a.yaml")
                             .ike);
    EXPECT_EQ(r.tunnels, (std::vector<ike_manager::tunnel_change>{{"p", "t", "changed"}}));
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    ASSERT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u);
    const uint32_t in = f.only_sa(*f.a)->children()[0].spi_in;
    EXPECT_EQ(f.io_a.inst.sas.at({static_cast<int>(config::direction::inbound), in}).replay_window, 256u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
}

bool logged(const peer_io& io, std::string_view text);

TEST(ExchangeTest, SimultaneousChildRekeyLeavesOnePair)
{
    // Several seeds: the lowest nonce (§2.8.1) falls to either exchange, so either end's new Child SA
    // is the redundant one. Each end also answered the other's rekey, with its new outbound SA held
    // (pending_outbound): the surviving one must be installed, the redundant one never.
    int ours_redundant = 0, theirs_redundant = 0;
    for (uint64_t seed = 1; seed <= 8; ++seed) {
        SCOPED_TRACE("seed " + std::to_string(seed));
        pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_a),
                       peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b));
        f.io_a.random_gen.gen.seed(seed * 2);
        f.io_b.random_gen.gen.seed(seed * 2 + 1);
        f.a->start();
        f.pump();
        uint32_t a_old = f.only_sa(*f.a)->children()[0].spi_in;
        uint32_t b_old = f.only_sa(*f.b)->children()[0].spi_in;
        f.io_a.inst.events.clear();
        f.io_b.inst.events.clear();
        // Both ends start rekeying the same Child SA before either request arrives (§2.8.1).
        f.a->sas().begin()->second->rekey_child(a_old);
        f.b->sas().begin()->second->rekey_child(b_old);
        f.pump();
        ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
        ASSERT_EQ(f.only_sa(*f.b)->children().size(), 1u);
        const child_sa ca = f.only_sa(*f.a)->children()[0], cb = f.only_sa(*f.b)->children()[0];
        EXPECT_NE(ca.spi_in, a_old);
        EXPECT_EQ(ca.spi_in, cb.spi_out);
        EXPECT_FALSE(ca.outbound_pending());
        EXPECT_FALSE(cb.outbound_pending());
        EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
        EXPECT_EQ(f.io_b.inst.sas.size(), 2u);
        expect_mirrored(f.io_a.inst, f.io_b.inst);
        expect_mirrored(f.io_b.inst, f.io_a.inst);
        // Nothing left to do later either (no held SA to install, no redundant one to delete).
        auto events_a = f.io_a.inst.events, events_b = f.io_b.inst.events;
        f.advance(std::chrono::seconds(31));
        EXPECT_EQ(f.io_a.inst.events, events_a);
        EXPECT_EQ(f.io_b.inst.events, events_b);
        // The end whose own new SA is redundant installed two outbound SAs (its own, deleted again, and
        // the peer's survivor when the old pair went); the other end installed only its own: the
        // redundant SA the peer made was never installed as outbound by the end that answered it.
        for (const auto* io : {&f.io_a, &f.io_b}) {
            const bool ours = logged(*io, "(RFC 7296 §2.8.1): our new Child SA is redundant");
            const bool theirs = logged(*io, "(RFC 7296 §2.8.1): the peer's new Child SA is redundant");
            ASSERT_NE(ours, theirs);
            (ours ? ours_redundant : theirs_redundant) += 1;
            const auto& events = io->inst.events;
            EXPECT_EQ(std::count_if(events.begin(), events.end(), [](const std::string& e) { return e.rfind("+out", 0) == 0; }),
                      ours ? 2 : 1)
                << ::testing::PrintToString(events);
        }
    }
    EXPECT_GT(ours_redundant, 0);
    EXPECT_GT(theirs_redundant, 0);
}

// Both ends of one IKE SA after a rekey: one IKE SA each, the same SPIs, the Child SA moved.
void expect_one_rekeyed_ike_sa(pair_fixture& f, uint64_t old_spi_i, uint32_t child_in_a)
{
    ASSERT_EQ(f.a->sas().size(), 1u);
    ASSERT_EQ(f.b->sas().size(), 1u);
    const auto* sa_a = f.only_sa(*f.a);
    const auto* sa_b = f.only_sa(*f.b);
    EXPECT_NE(sa_a->spi_i(), old_spi_i);
    EXPECT_EQ(sa_a->spi_i(), sa_b->spi_i());
    EXPECT_EQ(sa_a->spi_r(), sa_b->spi_r());
    EXPECT_EQ(sa_a->sa_state(), ike_sa::state::established);
    EXPECT_EQ(sa_b->sa_state(), ike_sa::state::established);
    ASSERT_EQ(sa_a->children().size(), 1u);
    ASSERT_EQ(sa_b->children().size(), 1u);
    EXPECT_EQ(sa_a->children()[0].spi_in, child_in_a);
    EXPECT_EQ(sa_b->children()[0].spi_out, child_in_a);
}

std::string ike_yaml(const char* local, const char* remote, const std::string& tunnel)
{
    return peer_yaml(local, remote, psk + "      rekey-time: 0\n      dpd: { interval: 0 }\n", tunnel);
}

bool logged(const peer_io& io, std::string_view text)
{
    return std::any_of(io.logs.begin(), io.logs.end(), [&](const std::string& l) { return l.find(text) != std::string::npos; });
}

TEST(ExchangeTest, SimultaneousIkeSaRekeyLeavesOneIkeSa)
{
    // §2.8.2: both requests cross; whichever SA has the lowest of the four nonces is deleted by its
    // initiator. Several seeds so both outcomes (ours redundant, theirs redundant) are exercised.
    bool ours_redundant_seen = false, theirs_redundant_seen = false;
    for (uint64_t seed = 1; seed <= 8; ++seed) {
        SCOPED_TRACE("seed " + std::to_string(seed));
        pair_fixture f(ike_yaml("198.51.100.1", "203.0.113.1", default_tunnel_a),
                       ike_yaml("203.0.113.1", "198.51.100.1", default_tunnel_b));
        f.io_a.random_gen = test_rng(seed * 7919);
        f.io_b.random_gen = test_rng(seed * 104729);
        f.a->start();
        f.pump();
        uint64_t old_spi = f.only_sa(*f.a)->spi_i();
        uint32_t child_in = f.only_sa(*f.a)->children()[0].spi_in;
        auto installs_a = f.io_a.inst.events.size();
        auto installs_b = f.io_b.inst.events.size();
        f.a->sas().begin()->second->rekey_ike();
        f.b->sas().begin()->second->rekey_ike();
        f.pump();
        f.advance(std::chrono::seconds(1));
        expect_one_rekeyed_ike_sa(f, old_spi, child_in);
        EXPECT_EQ(f.io_a.inst.events.size(), installs_a); // the data plane was not touched
        EXPECT_EQ(f.io_b.inst.events.size(), installs_b);
        EXPECT_TRUE(f.a->failures().empty());
        EXPECT_TRUE(f.b->failures().empty());
        ours_redundant_seen |= logged(f.io_a, "our new IKE SA is redundant");
        theirs_redundant_seen |= logged(f.io_a, "the peer's new IKE SA is redundant");
        // Exactly one of the two ends saw its own SA as redundant.
        EXPECT_NE(logged(f.io_a, "our new IKE SA is redundant"), logged(f.io_b, "our new IKE SA is redundant"));
        // The survivor carries on: a Child SA rekey over it, then the retire timers change nothing.
        f.a->sas().begin()->second->rekey_child(child_in);
        f.pump();
        f.advance(std::chrono::seconds(120));
        ASSERT_EQ(f.a->sas().size(), 1u);
        ASSERT_EQ(f.b->sas().size(), 1u);
        EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
        expect_mirrored(f.io_a.inst, f.io_b.inst);
    }
    EXPECT_TRUE(ours_redundant_seen);
    EXPECT_TRUE(theirs_redundant_seen);
}

TEST(ExchangeTest, IkeSaRekeyCollisionSeenByOneEndOnly)
{
    // B's request is held back until A's rekey completed: A answers it TEMPORARY_FAILURE (the old SA is
    // being deleted) and B's SA for A's request takes over (§2.8.2, §2.25.2). Then the same with A's
    // Delete of the old IKE SA reaching B before anything else.
    for (bool delete_first : {false, true}) {
        SCOPED_TRACE(delete_first ? "delete first" : "temporary failure first");
        pair_fixture f(ike_yaml("198.51.100.1", "203.0.113.1", default_tunnel_a),
                       ike_yaml("203.0.113.1", "198.51.100.1", default_tunnel_b));
        f.a->start();
        f.pump();
        uint64_t old_spi = f.only_sa(*f.a)->spi_i();
        uint32_t child_in = f.only_sa(*f.a)->children()[0].spi_in;
        f.a->sas().begin()->second->rekey_ike();
        f.b->sas().begin()->second->rekey_ike();
        ASSERT_EQ(f.net.wire.size(), 2u);
        datagram b_request = f.net.wire.back();
        f.net.wire.pop_back();
        auto deliver_front = [&f] {
            datagram d = std::move(f.net.wire.front());
            f.net.wire.pop_front();
            (d.to.address == f.addr_a ? *f.a : *f.b).receive(d.to, d.from, d.data);
        };
        deliver_front(); // A's request → B answers it (B's own is in flight: a candidate)
        deliver_front(); // B's answer → A completes and sends Delete(old IKE SA)
        ASSERT_EQ(f.net.wire.size(), 1u);
        if (!delete_first) {
            datagram a_delete = f.net.wire.front();
            f.net.wire.pop_front();
            f.a->receive(b_request.to, b_request.from, b_request.data); // → TEMPORARY_FAILURE
            f.pump();
            f.net.wire.push_back(a_delete);
        } else {
            deliver_front(); // Delete → B takes over its candidate
            f.a->receive(b_request.to, b_request.from, b_request.data);
        }
        f.pump();
        f.advance(std::chrono::seconds(1));
        expect_one_rekeyed_ike_sa(f, old_spi, child_in);
        EXPECT_TRUE(logged(f.io_b, "the peer's IKE SA rekey takes over"));
        EXPECT_TRUE(f.a->failures().empty());
        EXPECT_TRUE(f.b->failures().empty());
        f.advance(std::chrono::seconds(120));
        ASSERT_EQ(f.b->sas().size(), 1u);
        EXPECT_EQ(f.only_sa(*f.b)->sa_state(), ike_sa::state::established);
    }
}

// The peer's CREATE_CHILD_SA requests reach an IKE SA we are deleting (our Delete is held back): each
// is answered TEMPORARY_FAILURE (RFC 7296 §2.25.1, §2.25.2), not dropped until the peer gives up on it.
const std::string dmz_a = "        - name: dmz\n"
                          "          local-ts: [10.1.0.0/24]\n"
                          "          remote-ts: [10.2.0.0/24]\n"
                          "          esp-proposals: [aes256gcm16]\n";
const std::string dmz_b = "        - name: dmz\n"
                          "          local-ts: [10.2.0.0/24]\n"
                          "          remote-ts: [10.1.0.0/24]\n"
                          "          esp-proposals: [aes256gcm16]\n";

// A and B with tunnels lan (up at start) and dmz (on request), A's IKE SA established.
struct two_tunnel_pair : pair_fixture {
    two_tunnel_pair()
        : pair_fixture(ike_yaml("198.51.100.1", "203.0.113.1", default_tunnel_a + dmz_a),
                       ike_yaml("203.0.113.1", "198.51.100.1", default_tunnel_b + dmz_b))
    {
        a->start();
        pump();
    }

    // Brings dmz up too (A asks for it); returns how many Child SAs A then has.
    size_t up_dmz()
    {
        EXPECT_EQ(a->initiate("p/dmz"), "");
        pump();
        return only_sa(*a)->children().size();
    }
};

TEST(ExchangeTest, RequestsOnAnIkeSaBeingDeletedAreAnsweredTemporaryFailure)
{
    two_tunnel_pair f;
    size_t answers = 0;
    f.net.drop = [&](const datagram& d) {
        answers += d.from.address == f.addr_a && is_response(d, exchange_type::create_child_sa);
        return d.from.address == f.addr_a && is_request(d, exchange_type::informational);
    };
    EXPECT_EQ(f.a->clear(""), 1u); // A's Delete of the IKE SA never arrives
    f.pump();
    ASSERT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::deleting);
    ike_sa& b = *f.b->sas().begin()->second;

    b.rekey_child(b.children()[0].spi_in); // a Child SA rekey
    f.pump();
    EXPECT_EQ(answers, 1u);
    EXPECT_TRUE(logged(f.io_b, "Child SA rekey failed (TEMPORARY_FAILURE); retrying in 30 s"));

    b.start_child("dmz"); // a new Child SA
    f.pump();
    EXPECT_EQ(answers, 2u);
    EXPECT_TRUE(logged(f.io_b, "refused the Child SA for tunnel dmz with TEMPORARY_FAILURE"));

    b.rekey_ike(); // an IKE SA rekey
    f.pump();
    EXPECT_EQ(answers, 3u);
    EXPECT_TRUE(logged(f.io_b, "IKE SA rekey failed (TEMPORARY_FAILURE); retrying in 30 s"));
    EXPECT_EQ(count_lines(f.io_a.logs, "being deleted: TEMPORARY_FAILURE"), 3u);
    EXPECT_EQ(f.only_sa(*f.b)->children().size(), 1u);
}

// Asked for while our IKE SA rekey is in flight, a new Child SA and a Child SA Delete wait for it and
// go out on the new IKE SA. (Queued behind the rekey, they were dropped with the old IKE SA's queue
// when it was deleted: the tunnel stayed down, the Child SA stayed "deleting" on the new IKE SA.)
TEST(ExchangeTest, NewChildSaAskedForDuringOurIkeSaRekeyRunsOnTheNewIkeSa)
{
    two_tunnel_pair f;
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    const uint64_t old_ike = f.only_sa(*f.a)->spi_i();
    ike_sa& sa = *f.a->sas().begin()->second;
    sa.rekey_ike();
    EXPECT_EQ(f.a->initiate("p/dmz"), "");
    sa.start_child("dmz"); // asked again (traffic): still one request
    f.pump();
    f.advance(std::chrono::seconds(1));
    expect_two_children_on_a_new_ike_sa(f, old_ike);
}

// A reload during our IKE SA rekey: the removed tunnel's Child SA is deleted and the changed one is
// deleted and negotiated again with its new settings, all on the new IKE SA.
TEST(ExchangeTest, ReloadDuringOurIkeSaRekeyDeletesAndRenegotiatesOnTheNewIkeSa)
{
    const std::string now = "          start: immediately\n";
    auto yaml_a = [&](const std::string& lan_extra, bool with_dmz) {
        return ike_yaml("198.51.100.1", "203.0.113.1",
                        "      tunnels:\n" + tunnel_yaml("lan", "192.168.1.0/24", "192.168.2.0/24", now + lan_extra) +
                            (with_dmz ? tunnel_yaml("dmz", "10.1.0.0/24", "10.2.0.0/24", now) : ""));
    };
    pair_fixture f(yaml_a("", true), ike_yaml("203.0.113.1", "198.51.100.1", default_tunnel_b + dmz_b));
    f.a->start();
    f.pump();
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 2u);
    const uint64_t old_ike = f.only_sa(*f.a)->spi_i();
    f.a->sas().begin()->second->rekey_ike();
    auto r = f.a->reload(config::load_string(yaml_a("          replay-window: 256\n", false), "a.yaml").ike);
    EXPECT_EQ(r.tunnels, (std::vector<ike_manager::tunnel_change>{{"p", "dmz", "removed"}, {"p", "lan", "changed"}}));
    f.pump();
    f.advance(std::chrono::seconds(1));
    ASSERT_EQ(f.a->sas().size(), 1u);
    ASSERT_EQ(f.b->sas().size(), 1u);
    EXPECT_NE(f.only_sa(*f.a)->spi_i(), old_ike);
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    ASSERT_EQ(f.only_sa(*f.b)->children().size(), 1u);
    EXPECT_EQ(f.only_sa(*f.a)->children()[0].tunnel, "lan");
    EXPECT_EQ(f.only_sa(*f.a)->children()[0].st, child_sa::state::installed);
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u);
    const uint32_t in = f.only_sa(*f.a)->children()[0].spi_in;
    EXPECT_EQ(f.io_a.inst.sas.at({static_cast<int>(config::direction::inbound), in}).replay_window, 256u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
    // The new IKE SA is not stuck behind a Child SA left "deleting": it rekeys again.
    const uint64_t second_ike = f.only_sa(*f.a)->spi_i();
    f.a->sas().begin()->second->rekey_ike();
    f.pump();
    ASSERT_EQ(f.a->sas().size(), 1u);
    EXPECT_NE(f.only_sa(*f.a)->spi_i(), second_ike);
}

// The lengths of the INFORMATIONAL responses `from` put on the wire while `run` ran (the SK payload's
// plaintext length follows the payloads inside: a Delete payload with one SPI adds 12 bytes).
std::vector<size_t> informational_answers_from(pair_fixture& f, const config::ip_address& from,
                                               const std::function<void()>& run)
{
    std::vector<size_t> sizes;
    f.net.tamper = [&](datagram& d) {
        const auto h = parse_header(d.data);
        if (d.from.address == from && h && h->exchange == static_cast<uint8_t>(exchange_type::informational) &&
            h->is_response()) {
            sizes.push_back(d.data.size());
        }
    };
    run();
    f.net.tamper = nullptr;
    return sizes;
}

// B removes tunnel dmz (reload): its Delete goes to A.
void b_drops_dmz(pair_fixture& f)
{
    f.b->reload(config::load_string(ike_yaml("203.0.113.1", "198.51.100.1", default_tunnel_b), "b.yaml").ike);
}

// The length of A's answer to B's Delete of dmz when A is not deleting that Child SA itself: an
// answer with one SPI.
size_t answer_with_our_spi()
{
    two_tunnel_pair f;
    EXPECT_EQ(f.up_dmz(), 2u);
    auto sizes = informational_answers_from(f, f.addr_a, [&] {
        b_drops_dmz(f);
        f.pump();
    });
    EXPECT_EQ(sizes.size(), 1u);
    EXPECT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    return sizes.empty() ? 0 : sizes[0];
}

// The peer deletes a Child SA whose Delete of ours waits for our IKE SA rekey: the Deletes did not
// cross (ours was never sent), so our answer carries our SPI (RFC 7296 §1.4.1) and our Delete is
// dropped. (It was answered as a simultaneous delete, without our SPI.)
TEST(ExchangeTest, PeerDeleteOfAChildSaWhoseDeleteWaitsForOurIkeSaRekeyIsAnsweredWithOurSpi)
{
    const size_t with_spi = answer_with_our_spi();
    two_tunnel_pair f;
    ASSERT_EQ(f.up_dmz(), 2u);
    const uint64_t old_ike = f.only_sa(*f.a)->spi_i();
    f.a->sas().begin()->second->rekey_ike();
    f.a->reload(config::load_string(ike_yaml("198.51.100.1", "203.0.113.1", default_tunnel_a), "a.yaml").ike);
    EXPECT_TRUE(logged(f.io_a, "Delete of Child SA dmz waits for our IKE SA rekey to finish"));
    auto sizes = informational_answers_from(f, f.addr_a, [&] {
        b_drops_dmz(f);
        f.pump();
        f.advance(std::chrono::seconds(1));
    });
    ASSERT_EQ(sizes.size(), 1u);
    EXPECT_EQ(sizes[0], with_spi) << "the answer to the peer's Delete must carry our SPI";
    // The peer's Delete was in flight when our rekey reached it: TEMPORARY_FAILURE (§2.25); the
    // rekey's retry then moves the one Child SA left, and no Delete of ours follows it.
    EXPECT_TRUE(logged(f.io_a, "IKE SA rekey failed (TEMPORARY_FAILURE)"));
    f.advance(std::chrono::seconds(31));
    ASSERT_EQ(f.a->sas().size(), 1u);
    EXPECT_NE(f.only_sa(*f.a)->spi_i(), old_ike);
    EXPECT_FALSE(logged(f.io_a, "Child SA dmz deleted"));
    expect_children_each(f, 1);
}

// The same with our Delete queued behind another request of ours (a Child SA rekey in flight): not
// sent, so not crossed either; the answer carries our SPI, and our Delete, sent afterwards, finds
// nothing at the peer.
TEST(ExchangeTest, PeerDeleteOfAChildSaWhoseDeleteIsQueuedIsAnsweredWithOurSpi)
{
    const size_t with_spi = answer_with_our_spi();
    two_tunnel_pair f;
    ASSERT_EQ(f.up_dmz(), 2u);
    ike_sa& sa = *f.a->sas().begin()->second;
    const auto lan = std::find_if(sa.children().begin(), sa.children().end(), [](const child_sa& c) { return c.tunnel == "lan"; });
    ASSERT_NE(lan, sa.children().end());
    sa.rekey_child(lan->spi_in);
    f.a->reload(config::load_string(ike_yaml("198.51.100.1", "203.0.113.1", default_tunnel_a), "a.yaml").ike);
    auto sizes = informational_answers_from(f, f.addr_a, [&] {
        b_drops_dmz(f);
        f.pump();
    });
    ASSERT_GE(sizes.size(), 1u);
    EXPECT_EQ(sizes[0], with_spi) << "the answer to the peer's Delete must carry our SPI";
    f.advance(std::chrono::seconds(1));
    expect_children_each(f, 1);
}

// The peer deletes the IKE SA while a new Child SA of ours waits in the queue: logged as not
// negotiated, as when we delete it.
TEST(ExchangeTest, NewChildSaQueuedWhenThePeerDeletesTheIkeSaIsLogged)
{
    two_tunnel_pair f;
    ike_sa& sa = *f.a->sas().begin()->second;
    sa.rekey_child(sa.children()[0].spi_in);
    EXPECT_EQ(f.a->initiate("p/dmz"), "");
    EXPECT_EQ(f.b->clear(""), 1u);
    f.pump();
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_TRUE(logged(f.io_a, "new Child SA for tunnel dmz (10.1.0.0/24 === 10.2.0.0/24) not negotiated: the IKE SA "
                               "is gone"));
}

// A new Child SA queued behind another exchange when the operator clears the IKE SA is logged as not
// negotiated, not dropped without a word.
TEST(ExchangeTest, NewChildSaQueuedWhenTheIkeSaIsClearedIsLogged)
{
    two_tunnel_pair f;
    ike_sa& sa = *f.a->sas().begin()->second;
    sa.rekey_child(sa.children()[0].spi_in); // in flight: what follows waits behind it
    EXPECT_EQ(f.a->initiate("p/dmz"), "");
    EXPECT_FALSE(logged(f.io_a, "not negotiated"));
    EXPECT_EQ(f.a->clear(""), 1u);
    EXPECT_TRUE(logged(f.io_a, "new Child SA for tunnel dmz (10.1.0.0/24 === 10.2.0.0/24) not negotiated: the IKE SA "
                               "is being deleted"));
    f.pump();
    f.advance(std::chrono::seconds(1));
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_TRUE(f.b->sas().empty());
}

// Our IKE SA rekey fails (the peer's Child SA rekey crossed it: TEMPORARY_FAILURE, §2.25): the new
// Child SA that waited for it goes out on the old IKE SA, which is still the one.
TEST(ExchangeTest, NewChildSaWaitingForAFailedIkeSaRekeyRunsOnTheOldIkeSa)
{
    two_tunnel_pair f;
    const uint64_t old_ike = f.only_sa(*f.a)->spi_i();
    f.a->sas().begin()->second->rekey_ike();
    f.a->sas().begin()->second->start_child("dmz");
    ike_sa& b = *f.b->sas().begin()->second;
    b.rekey_child(b.children()[0].spi_in);
    f.pump();
    EXPECT_TRUE(logged(f.io_a, "IKE SA rekey failed (TEMPORARY_FAILURE)"));
    ASSERT_EQ(f.a->sas().size(), 1u);
    EXPECT_EQ(f.only_sa(*f.a)->spi_i(), old_ike);
    EXPECT_EQ(f.only_sa(*f.a)->children().size(), 2u);
    EXPECT_EQ(f.io_a.inst.sas.size(), 4u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 4u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
    f.advance(std::chrono::seconds(31)); // the rekey's retry
    ASSERT_EQ(f.a->sas().size(), 1u);
    EXPECT_NE(f.only_sa(*f.a)->spi_i(), old_ike);
    EXPECT_EQ(f.only_sa(*f.a)->children().size(), 2u);
    EXPECT_EQ(f.only_sa(*f.b)->children().size(), 2u);
}

// Our IKE SA rekey is never answered and the IKE SA dies with no successor: the new Child SA that
// waited for it is logged as not negotiated, beside the IKE SA's failure, not silently forgotten.
TEST(ExchangeTest, NewChildSaWaitingForAnIkeSaRekeyThatDiesIsLogged)
{
    two_tunnel_pair f;
    f.net.drop = [&](const datagram& d) { return d.from.address == f.addr_b; };
    f.a->sas().begin()->second->rekey_ike();
    EXPECT_EQ(f.a->initiate("p/dmz"), ""); // the manager then keeps the SA's retransmission times
    for (int i = 0; i < 70; ++i) {
        f.advance(std::chrono::seconds(1));
    }
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_TRUE(logged(f.io_a, "did not answer an IKE SA rekey"));
    EXPECT_TRUE(logged(f.io_a, "new Child SA for tunnel dmz (10.1.0.0/24 === 10.2.0.0/24) not negotiated"));
}

// The operator deletes the IKE SA while our rekey of it is in flight: the new IKE SA the rekey makes
// is deleted too. (It used to take the Child SAs and stay up, and the old IKE SA's Delete, queued
// behind the rekey, was never sent.)
TEST(ExchangeTest, ClearDuringOurIkeSaRekeyDeletesTheNewIkeSaToo)
{
    pair_fixture f(ike_yaml("198.51.100.1", "203.0.113.1", default_tunnel_a),
                   ike_yaml("203.0.113.1", "198.51.100.1", default_tunnel_b));
    f.a->start();
    f.pump();
    f.a->sas().begin()->second->rekey_ike();
    EXPECT_EQ(f.a->clear(""), 1u);
    f.pump();
    f.advance(std::chrono::seconds(1));
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_TRUE(f.b->sas().empty());
    EXPECT_TRUE(f.io_a.inst.sas.empty());
    EXPECT_TRUE(f.io_b.inst.sas.empty());
    EXPECT_TRUE(f.a->failures().empty());
    EXPECT_TRUE(f.b->failures().empty());
}

// Deleting an IKE SA twice (two `espresso clear`) while a request is outstanding: the Delete queued
// behind it still goes out. (The second call ended the SA at once and dropped the queued Delete: the
// peer kept its IKE and Child SAs.)
TEST(ExchangeTest, SecondClearKeepsTheQueuedDelete)
{
    pair_fixture f(ike_yaml("198.51.100.1", "203.0.113.1", default_tunnel_a),
                   ike_yaml("203.0.113.1", "198.51.100.1", default_tunnel_b));
    f.a->start();
    f.pump();
    f.a->sas().begin()->second->rekey_child(f.only_sa(*f.a)->children()[0].spi_in); // outstanding
    EXPECT_EQ(f.a->clear(""), 1u);
    EXPECT_EQ(f.a->clear(""), 1u);
    f.pump();
    f.advance(std::chrono::seconds(1));
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_TRUE(f.b->sas().empty());
    EXPECT_TRUE(f.io_a.inst.sas.empty());
    EXPECT_TRUE(f.io_b.inst.sas.empty());
}

TEST(ExchangeTest, InitialContactReplacesTheSasOfARestartedPeer)
{
    const auto yaml_a = ike_yaml("198.51.100.1", "203.0.113.1", default_tunnel_a);
    pair_fixture f(yaml_a, ike_yaml("203.0.113.1", "198.51.100.1", default_tunnel_b));
    f.a->start();
    f.pump();
    uint64_t old_spi = f.only_sa(*f.b)->spi_r();
    ASSERT_EQ(f.io_b.inst.sas.size(), 2u);
    // A restarts without a word (crash): a new manager, no state. Its IKE_AUTH carries INITIAL_CONTACT.
    f.a.reset();
    f.net.wire.clear();
    f.io_a.inst.sas.clear();
    f.a = std::make_unique<ike_manager>(f.io_a, config::load_string(yaml_a, "a.yaml").ike);
    f.a->start();
    f.pump();
    ASSERT_EQ(f.b->sas().size(), 1u);
    EXPECT_NE(f.only_sa(*f.b)->spi_r(), old_spi);
    EXPECT_EQ(f.only_sa(*f.b)->sa_state(), ike_sa::state::established);
    EXPECT_EQ(f.b->counters().initial_contact_drops, 1u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u); // the old Child SA pair left the data plane
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
    EXPECT_TRUE(f.net.wire.empty()); // nothing was sent for the forgotten SA
}

TEST(ExchangeTest, Ipv6EndpointsAndSelectors)
{
    // IKE over IPv6 (NAT-D hashes 16-byte addresses, §2.23), IPv6 selectors narrowed to the responder's
    // subnet (§2.9), Child SAs with IPv6 tunnel endpoints.
    const std::string tunnel_a = "      tunnels:\n"
                                 "        - name: lan\n"
                                 "          local-ts: [2001:db8:1::/48]\n"
                                 "          remote-ts: [2001:db8::/32]\n"
                                 "          esp-proposals: [aes256gcm16]\n"
                                 "          start: immediately\n";
    const std::string tunnel_b = "      tunnels:\n"
                                 "        - name: lan\n"
                                 "          local-ts: [2001:db8:2::/48]\n"
                                 "          remote-ts: [2001:db8:1::/48]\n"
                                 "          esp-proposals: [aes256gcm16]\n";
    pair_fixture f(peer_yaml("2001:db8:ff1::1", "2001:db8:ff2::1", psk, tunnel_a),
                   peer_yaml("2001:db8:ff2::1", "2001:db8:ff1::1", psk, tunnel_b));
    f.addr_a = addr("2001:db8:ff1::1");
    f.addr_b = addr("2001:db8:ff2::1");
    f.a->start();
    f.pump();
    const auto* sa_a = f.only_sa(*f.a);
    const auto* sa_b = f.only_sa(*f.b);
    ASSERT_NE(sa_a, nullptr);
    ASSERT_NE(sa_b, nullptr);
    EXPECT_EQ(sa_a->sa_state(), ike_sa::state::established);
    EXPECT_EQ(sa_b->sa_state(), ike_sa::state::established);
    EXPECT_FALSE(sa_a->nat_detected());
    EXPECT_FALSE(sa_b->nat_detected());
    ASSERT_EQ(sa_a->children().size(), 1u);
    const auto& child = sa_a->children()[0];
    EXPECT_EQ(config::to_string(child.local), "2001:db8:1::/48");
    EXPECT_EQ(config::to_string(child.remote), "2001:db8:2::/48"); // narrowed by B
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    for (const auto& [key, sa] : f.io_a.inst.sas) {
        EXPECT_EQ(sa.source.family, 6);
        EXPECT_EQ(sa.destination.family, 6);
    }
}

std::vector<std::string> child_selectors(const ike_sa& sa)
{
    std::vector<std::string> out;
    for (const auto& c : sa.children()) {
        out.push_back(config::to_string(c.local) + " === " + config::to_string(c.remote));
    }
    std::sort(out.begin(), out.end());
    return out;
}

// A tunnel with several prefixes per side gets one Child SA per selector pair of the same address
// family (IKE_AUTH carries the first, CREATE_CHILD_SA the others), each rekeyed with its own
// selectors; traffic of every pair has an SA (before, only the first pair was negotiated and the
// others' traffic hit the trap for ever).
TEST(ExchangeTest, EverySelectorPairOfATunnelGetsAChildSa)
{
    const std::string dpd_off = psk + "      dpd: { interval: 0 }\n";
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off,
                             "      tunnels:\n" +
                                 tunnel_yaml("t", "192.168.1.0/24, 192.168.11.0/24, \"2001:db8:1::/48\"",
                                             "192.168.2.0/24, \"2001:db8:2::/48\"",
                                             "          start: immediately\n          rekey-time: 60s\n")),
                   peer_yaml("203.0.113.1", "198.51.100.1", dpd_off,
                             "      tunnels:\n" + tunnel_yaml("t", "192.168.2.0/24, \"2001:db8:2::/48\"",
                                                               "192.168.1.0/24, 192.168.11.0/24, \"2001:db8:1::/48\"")));
    f.a->start();
    f.pump();
    const std::vector<std::string> want_a = {"192.168.1.0/24 === 192.168.2.0/24", "192.168.11.0/24 === 192.168.2.0/24",
                                             "2001:db8:1::/48 === 2001:db8:2::/48"};
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_EQ(child_selectors(*f.only_sa(*f.a)), want_a);
    EXPECT_EQ(child_selectors(*f.only_sa(*f.b)),
              (std::vector<std::string>{"192.168.2.0/24 === 192.168.1.0/24", "192.168.2.0/24 === 192.168.11.0/24",
                                        "2001:db8:2::/48 === 2001:db8:1::/48"}));
    EXPECT_EQ(f.io_a.inst.count(config::direction::outbound), 3u);
    EXPECT_EQ(f.io_b.inst.count(config::direction::inbound), 3u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
    // Asking again (the operator, or an acquire) starts nothing: every pair is up.
    f.a->initiate("p/t");
    f.pump();
    EXPECT_EQ(f.only_sa(*f.a)->children().size(), 3u);
    // Each rekey keeps its pair.
    std::vector<uint32_t> old;
    for (const auto& c : f.only_sa(*f.a)->children()) {
        old.push_back(c.spi_in);
    }
    f.advance(std::chrono::seconds(61));
    EXPECT_EQ(child_selectors(*f.only_sa(*f.a)), want_a);
    for (const auto& c : f.only_sa(*f.a)->children()) {
        EXPECT_EQ(std::count(old.begin(), old.end(), c.spi_in), 0) << "not rekeyed: " << c.spi_in;
    }
    EXPECT_EQ(f.io_a.inst.count(config::direction::outbound), 3u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
}

// A pair the peer refuses (TS_UNACCEPTABLE) is not asked for again within 30 s however often traffic
// raises acquires (initiate), and is asked for again after that; the other pairs stay up throughout.
TEST(ExchangeTest, ARefusedSelectorPairIsRetriedOnlyAfterAPause)
{
    const std::string dpd_off = psk + "      dpd: { interval: 0 }\n";
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off,
                             "      tunnels:\n" + tunnel_yaml("t", "192.168.1.0/24, 192.168.11.0/24", "192.168.2.0/24",
                                                               "          start: immediately\n")),
                   peer_yaml("203.0.113.1", "198.51.100.1", dpd_off,
                             "      tunnels:\n" + tunnel_yaml("t", "192.168.2.0/24", "192.168.1.0/24")));
    f.a->start();
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    EXPECT_EQ(child_selectors(*f.only_sa(*f.a)), std::vector<std::string>{"192.168.1.0/24 === 192.168.2.0/24"});
    const size_t refusals = f.io_a.failures.size();
    ASSERT_GE(refusals, 1u);
    EXPECT_NE(f.io_a.failures.back().cause.find("TS_UNACCEPTABLE"), std::string::npos) << f.io_a.failures.back().cause;
    for (int i = 0; i < 5; ++i) {
        f.a->initiate("p/t");
        f.pump();
    }
    EXPECT_EQ(f.io_a.failures.size(), refusals);
    f.advance(std::chrono::seconds(31));
    f.a->initiate("p/t");
    f.pump();
    EXPECT_EQ(f.io_a.failures.size(), refusals + 1);
    EXPECT_EQ(child_selectors(*f.only_sa(*f.a)), std::vector<std::string>{"192.168.1.0/24 === 192.168.2.0/24"});
}

TEST(ExchangeTest, PfsMismatchIsNamed)
{
    std::string t_a = default_tunnel_a, t_b = default_tunnel_b;
    t_b.replace(t_b.find("aes256gcm16"), 11, "aes256gcm16-ecp256");
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, t_a), peer_yaml("203.0.113.1", "198.51.100.1", psk, t_b));
    f.a->start();
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    // IKE_AUTH carries no PFS (§1.2): the first Child SA comes up; its rekey would need it.
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    f.a->sas().begin()->second->rekey_child(f.only_sa(*f.a)->children()[0].spi_in);
    f.pump();
    ASSERT_FALSE(f.io_b.failures.empty());
    EXPECT_NE(f.io_b.failures.back().cause.find("PFS mismatch"), std::string::npos) << f.io_b.failures.back().cause;
}

// Hard lifetime (docs/configuration.md: 110 % of rekey-time): B wants PFS, so A's rekeys (without)
// are refused with NO_PROPOSAL_CHOSEN and retried every 30 s; at 110 % of rekey-time A deletes the
// Child SA (both ends remove it), records why, and the IKE SA stays.
TEST(ExchangeTest, ChildSaGoesAtItsHardLifetimeWhenRekeysFail)
{
    std::string t_a = default_tunnel_a + "          rekey-time: 300s\n", t_b = default_tunnel_b;
    t_b.replace(t_b.find("aes256gcm16"), 11, "aes256gcm16-ecp256");
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 0 }\n", t_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", t_b));
    f.a->start();
    f.pump();
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    const uint32_t spi_in = f.only_sa(*f.a)->children()[0].spi_in;
    // Up to 100 % of rekey-time plus retries: still there (the refused rekeys changed nothing).
    for (int s = 0; s < 320; s += 10) {
        f.advance(std::chrono::seconds(10));
    }
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    EXPECT_EQ(f.only_sa(*f.a)->children()[0].spi_in, spi_in);
    ASSERT_FALSE(f.io_b.failures.empty());
    EXPECT_NE(f.io_b.failures.back().cause.find("PFS mismatch"), std::string::npos) << f.io_b.failures.back().cause;
    // Past 110 % (330 s): gone on both ends, from both data planes; the IKE SA stays.
    for (int s = 320; s < 340; s += 5) {
        f.advance(std::chrono::seconds(5));
    }
    EXPECT_TRUE(f.only_sa(*f.a)->children().empty());
    EXPECT_TRUE(f.only_sa(*f.b)->children().empty());
    EXPECT_TRUE(f.io_a.inst.sas.empty());
    EXPECT_TRUE(f.io_b.inst.sas.empty());
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    ASSERT_FALSE(f.io_a.failures.empty());
    EXPECT_NE(f.io_a.failures.back().cause.find("hard lifetime"), std::string::npos) << f.io_a.failures.back().cause;
}

// A rekey-time near the loader's limit for tunnels (~3.9e8 s, so that 110 % fits 32 bits): the rekey
// is that far away, not a wrapped 32-bit millisecond count (due within 49.7 days).
TEST(ExchangeTest, LongRekeyTimesDoNotWrap)
{
    std::string t_a = default_tunnel_a + "          rekey-time: 390000000s\n";
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 0 }\n", t_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b));
    f.a->start();
    f.pump();
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 1u);
    const auto& c = f.only_sa(*f.a)->children()[0];
    const auto in = std::chrono::duration_cast<std::chrono::seconds>(c.rekey_at - c.established).count();
    EXPECT_GE(in, 351000000LL); // the initiator's jitter takes up to 10 %
    EXPECT_LE(in, 390000000LL);
}

TEST(ExchangeTest, DeadPeerDetectionClearsTheSa)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 10s, action: clear }\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    f.a->start();
    f.pump();
    ASSERT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    f.net.drop = [](const datagram&) { return true; }; // B dies
    for (int i = 0; i < 90; ++i) {
        f.advance(std::chrono::seconds(1));
    }
    EXPECT_TRUE(f.a->sas().empty());
    ASSERT_FALSE(f.io_a.failures.empty());
    EXPECT_NE(f.io_a.failures.back().cause.find("DPD"), std::string::npos);
    EXPECT_TRUE(f.io_a.inst.sas.empty());
}

// RFC 7296 §2.4 liveness: a DPD goes when nothing was heard for an interval, so a peer that answers
// after a round trip gets one every interval (plus that round trip), not every second interval (the
// next look used to be an interval after the last look, which the answer had just made "recent").
TEST(ExchangeTest, DeadPeerDetectionRunsEveryIntervalWhenThePeerAnswers)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 10s }\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b));
    f.a->start();
    f.pump();
    ASSERT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    const size_t before = f.net.delivered;
    for (int i = 0; i < 600; ++i) { // 60 s in 100 ms steps; what a tick sends arrives a step later
        f.clock += std::chrono::milliseconds(100);
        f.pump();
        f.a->tick();
        f.b->tick();
    }
    f.pump();
    const size_t exchanges = (f.net.delivered - before) / 2; // a DPD request and its response each
    EXPECT_GE(exchanges, 5u);
    EXPECT_LE(exchanges, 6u);
    EXPECT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
}

// Crypto-map semantics (docs/ike.md, "Traffic while a tunnel is down"): every configured tunnel has a
// trap policy for each selector pair, whatever its start action, from start() until it leaves the
// configuration; a reload swaps them make-before-break and shutdown removes them.
TEST(TrapPolicies, EveryTunnelHasTrapsForItsWholeConfiguredLife)
{
    const std::string tunnels = "      tunnels:\n"
                                "        - name: now\n"
                                "          local-ts: [192.168.1.0/24, 192.168.11.0/24]\n"
                                "          remote-ts: [192.168.2.0/24]\n"
                                "          start: immediately\n"
                                "        - name: lazy\n"
                                "          local-ts: [192.168.3.0/24]\n"
                                "          remote-ts: [192.168.4.0/24]\n"
                                "          start: on-traffic\n"
                                "        - name: passive\n"
                                "          local-ts: [192.168.5.0/24]\n"
                                "          remote-ts: [192.168.6.0/24]\n"
                                "          start: none\n";
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, tunnels),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    EXPECT_TRUE(f.io_a.inst.traps.empty()); // not before start()
    f.a->start();
    const std::vector<std::string> all = {"192.168.1.0/24 === 192.168.2.0/24", "192.168.11.0/24 === 192.168.2.0/24",
                                          "192.168.3.0/24 === 192.168.4.0/24", "192.168.5.0/24 === 192.168.6.0/24"};
    EXPECT_EQ(f.io_a.inst.trap_list(), all);
    // The traps went in before the first IKE_SA_INIT could bring a Child SA up.
    ASSERT_FALSE(f.io_a.inst.events.empty());
    EXPECT_EQ(f.io_a.inst.events.front().rfind("+trap ", 0), 0u);

    // The Child SA comes and goes; the traps stay.
    f.pump();
    EXPECT_EQ(f.io_a.inst.count(config::direction::outbound), 1u);
    EXPECT_EQ(f.io_a.inst.trap_list(), all);
    f.a->clear("");
    f.pump();
    EXPECT_EQ(f.io_a.inst.count(config::direction::outbound), 0u);
    EXPECT_EQ(f.io_a.inst.trap_list(), all);

    // Reload with the peer changed (one tunnel less): the new traps first, then the old ones out.
    auto changed = config::load_string(peer_yaml("198.51.100.1", "203.0.113.1", psk,
                                                 "      tunnels:\n"
                                                 "        - name: lazy\n"
                                                 "          local-ts: [192.168.3.0/24]\n"
                                                 "          remote-ts: [192.168.4.0/24]\n"
                                                 "          start: on-traffic\n"),
                                       "a2.yaml")
                       .ike;
    f.io_a.inst.events.clear();
    const auto lazy_traps = f.a->traps().at("p").at("lazy");
    auto r = f.a->reload(std::move(changed));
    ASSERT_EQ(r.updated, std::vector<std::string>{"p"}); // only tunnels changed: the unchanged one keeps its trap
    EXPECT_EQ(f.io_a.inst.trap_list(), std::vector<std::string>{"192.168.3.0/24 === 192.168.4.0/24"});
    EXPECT_EQ(f.a->traps().at("p").at("lazy"), lazy_traps);
    EXPECT_EQ(f.io_a.inst.events.size(), 3u); // the removed tunnels' three traps, nothing else

    // An IKE setting changed too: every trap of the peer is replaced, the new ones first.
    f.io_a.inst.events.clear();
    r = f.a->reload(config::load_string(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 20s }\n",
                                                  "      tunnels:\n"
                                                  "        - name: lazy\n"
                                                  "          local-ts: [192.168.3.0/24]\n"
                                                  "          remote-ts: [192.168.4.0/24]\n"
                                                  "          start: on-traffic\n"),
                                        "a3.yaml")
                        .ike);
    ASSERT_EQ(r.changed, std::vector<std::string>{"p"});
    EXPECT_EQ(f.io_a.inst.trap_list(), std::vector<std::string>{"192.168.3.0/24 === 192.168.4.0/24"});
    ASSERT_EQ(f.io_a.inst.events.size(), 2u);
    EXPECT_EQ(f.io_a.inst.events.front(), "+trap 192.168.3.0/24 === 192.168.4.0/24");

    // Reload without the peer: its traps go.
    config::ike_config empty;
    r = f.a->reload(std::move(empty));
    ASSERT_EQ(r.removed, std::vector<std::string>{"p"});
    EXPECT_TRUE(f.io_a.inst.traps.empty());
    EXPECT_TRUE(f.a->traps().empty());
}

TEST(TrapPolicies, ShutdownRemovesTheTraps)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    f.a->start();
    f.pump();
    EXPECT_EQ(f.io_a.inst.traps.size(), 1u);
    f.a->shutdown();
    f.a->remove_traps();
    EXPECT_TRUE(f.io_a.inst.traps.empty());
    EXPECT_TRUE(f.io_a.inst.sas.empty());
}

TEST(TrapPolicies, TrapsThatFailedAreInstalledLater)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    f.io_a.inst.refuse_traps = true; // espresso-dp not reachable yet
    f.a->start();
    EXPECT_TRUE(f.io_a.inst.traps.empty());
    EXPECT_TRUE(std::any_of(f.io_a.logs.begin(), f.io_a.logs.end(), [](const std::string& l) {
        return l.find("cannot install the trap policy 192.168.1.0/24 === 192.168.2.0/24") != std::string::npos;
    }));
    f.a->retry_traps();
    EXPECT_TRUE(f.io_a.inst.traps.empty());
    f.io_a.inst.refuse_traps = false;
    f.a->retry_traps();
    EXPECT_EQ(f.io_a.inst.trap_list(), std::vector<std::string>{"192.168.1.0/24 === 192.168.2.0/24"});
    f.a->retry_traps(); // complete now: nothing more
    EXPECT_EQ(f.io_a.inst.traps.size(), 1u);
}

// Runs A (with `dpd` and A's tunnel `start`) up to an established tunnel, then kills B until A's DPD
// gave up on it.
struct dpd_fixture : pair_fixture {
    dpd_fixture(const std::string& action, const std::string& start)
        : pair_fixture(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      dpd: { interval: 10s, action: " + action + " }\n",
                                 "      tunnels:\n"
                                 "        - name: lan\n"
                                 "          local-ts: [192.168.1.0/24]\n"
                                 "          remote-ts: [192.168.2.0/24]\n"
                                 "          esp-proposals: [aes256gcm16]\n"
                                 "          start: " + start + "\n"),
                       // B without DPD: it keeps its SA through the outage and never re-initiates.
                       peer_yaml("203.0.113.1", "198.51.100.1", psk + "      dpd: { interval: 0 }\n", default_tunnel_b))
    {
    }
    void bring_up_then_kill_b()
    {
        a->start();
        if (a->sas().empty()) {
            a->on_acquire(*config::parse_prefix("192.168.1.10/32"), *config::parse_prefix("192.168.2.10/32"));
        }
        pump();
        ASSERT_NE(only_sa(*a), nullptr);
        ASSERT_EQ(only_sa(*a)->sa_state(), ike_sa::state::established);
        net.drop = [](const datagram&) { return true; }; // B dies
        for (int i = 0; i < 90; ++i) {
            advance(std::chrono::seconds(1));
        }
        ASSERT_FALSE(io_a.failures.empty());
        ASSERT_NE(io_a.failures.back().cause.find("DPD"), std::string::npos);
        net.drop = nullptr; // B is back (with its old SA still in place)
    }
    void traffic()
    {
        a->on_acquire(*config::parse_prefix("192.168.1.10/32"), *config::parse_prefix("192.168.2.10/32"));
        pump();
    }
    bool tunnel_up()
    {
        const ike_sa* sa = only_sa(*a);
        return sa != nullptr && sa->sa_state() == ike_sa::state::established && sa->children().size() == 1 &&
               io_a.inst.count(config::direction::outbound) == 1;
    }
};

TEST(TrapPolicies, DpdHoldKeepsTheTrapAndTrafficReestablishes)
{
    dpd_fixture f("hold", "immediately");
    f.bring_up_then_kill_b();
    // Held: no SA, nothing initiated on its own, the trap still in place (the traffic is dropped).
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_TRUE(f.io_a.inst.sas.empty());
    EXPECT_EQ(f.io_a.inst.traps.size(), 1u);
    for (int i = 0; i < 300; ++i) {
        f.advance(std::chrono::seconds(1));
    }
    EXPECT_TRUE(f.a->sas().empty());
    // The next packet (acquire) brings it back; B's stale SA goes on INITIAL_CONTACT.
    f.traffic();
    EXPECT_TRUE(f.tunnel_up());
    EXPECT_EQ(f.a->counters().acquires_initiated, 1u);
    EXPECT_EQ(f.b->sas().size(), 1u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
}

TEST(TrapPolicies, DpdClearKeepsTheTrapAndIgnoresTrafficUntilInitiated)
{
    dpd_fixture f("clear", "immediately");
    f.bring_up_then_kill_b();
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_TRUE(f.io_a.inst.sas.empty());
    EXPECT_EQ(f.io_a.inst.traps.size(), 1u);
    f.traffic();
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_EQ(f.a->counters().acquires_ignored, 1u);
    EXPECT_EQ(f.io_a.inst.traps.size(), 1u);
    EXPECT_TRUE(std::any_of(f.io_a.logs.begin(), f.io_a.logs.end(), [](const std::string& l) {
        return l.find("dropped: tunnel lan is down and DPD action clear") != std::string::npos;
    }));
    EXPECT_EQ(f.a->initiate("p"), "");
    f.pump();
    EXPECT_TRUE(f.tunnel_up());
}

TEST(TrapPolicies, DpdClearOnAnOnTrafficTunnelStillStartsOnTraffic)
{
    // As strongSwan: start_action=trap catches the traffic whatever dpd_action says.
    dpd_fixture f("clear", "on-traffic");
    f.bring_up_then_kill_b();
    EXPECT_TRUE(f.a->sas().empty());
    f.traffic();
    EXPECT_TRUE(f.tunnel_up());
}

TEST(TrapPolicies, DpdRestartReinitiatesAtOnce)
{
    dpd_fixture f("restart", "immediately");
    f.bring_up_then_kill_b();
    // Already initiating again: the attempt under way (retransmitting) or the next retry gets through.
    for (int i = 0; i < 180 && !f.tunnel_up(); ++i) {
        f.advance(std::chrono::seconds(1));
    }
    EXPECT_TRUE(f.tunnel_up());
    EXPECT_EQ(f.a->counters().acquires, 0u);
}

// A sharded daemon (ike_shards.h) on the test's thread: two shards, posted tasks run when drained.
struct two_shard_directory final : shard_directory {
    std::atomic<size_t> half_open_count{0};
    bytes secret = bytes(32, 7);
    std::map<std::string, std::array<size_t, 2>> live;
    std::deque<std::pair<size_t, std::function<void(ike_manager&)>>> posted;
    std::array<ike_manager*, 2> shards{};
    size_t shard_count() const noexcept override { return 2; }
    std::atomic<size_t>& half_open() noexcept override { return half_open_count; }
    const bytes& cookie_secret() const noexcept override { return secret; }
    address_counts addresses;
    address_counts& per_address() noexcept override { return addresses; }
    void sa_added(const std::string& peer, size_t shard) override { ++live[peer][shard]; }
    void sa_removed(const std::string& peer, size_t shard) override { --live[peer][shard]; }
    bool live_elsewhere(const std::string& peer, size_t shard) const override
    {
        auto it = live.find(peer);
        return it != live.end() && it->second[1 - shard] != 0;
    }
    void post(size_t shard, std::function<void(ike_manager&)> task) override
    {
        posted.emplace_back(shard, std::move(task));
    }
    void drain()
    {
        while (!posted.empty()) {
            auto [shard, task] = std::move(posted.front());
            posted.pop_front();
            task(*shards[shard]);
        }
    }
};

TEST(TrapPolicies, DpdClearOfAnSaOutsideThePeersHomeShardReachesTheHomeShard)
{
    // B initiates, so A's IKE SA lives in whichever shard took B's IKE_SA_INIT, here not the peer's home
    // shard (which decides on acquires). After DPD action clear there, traffic must stay dropped: the
    // home shard has to know, though the SA was never its own.
    dpd_fixture f("clear", "immediately");
    two_shard_directory dir;
    const size_t home = home_shard("p", 2), other = 1 - home;
    config::ike_config cfg = f.a->config();
    f.a = std::make_unique<ike_manager>(f.io_a, cfg, retransmit_policy{}, &dir, other);
    peer_io io_home{3};
    io_home.net = &f.net;
    io_home.clock = &f.clock;
    ike_manager home_manager(io_home, cfg, retransmit_policy{}, &dir, home);
    dir.shards[other] = f.a.get();
    dir.shards[home] = &home_manager;

    ASSERT_EQ(f.b->initiate("p"), "");
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    ASSERT_EQ(f.only_sa(*f.a)->sa_state(), ike_sa::state::established);
    dir.drain();
    f.net.drop = [](const datagram&) { return true; }; // B dies
    for (int i = 0; i < 90; ++i) {
        f.advance(std::chrono::seconds(1));
    }
    ASSERT_TRUE(f.a->sas().empty());
    dir.drain();
    f.b->clear("p"); // B gives its SA up too (its Delete is lost), so that it can initiate afresh later
    for (int i = 0; i < 90 && !f.b->sas().empty(); ++i) {
        f.advance(std::chrono::seconds(1));
    }
    ASSERT_TRUE(f.b->sas().empty());
    f.net.drop = nullptr;
    home_manager.on_acquire(*config::parse_prefix("192.168.1.10/32"), *config::parse_prefix("192.168.2.10/32"));
    EXPECT_EQ(home_manager.counters().acquires_ignored, 1u);
    EXPECT_TRUE(home_manager.sas().empty());
    EXPECT_TRUE(f.net.wire.empty());

    // The peer comes back by itself (a new SA, again outside the home shard): the home shard forgets
    // the clear, so traffic once the tunnel is gone again brings it up.
    ASSERT_EQ(f.b->initiate("p"), "");
    f.pump();
    ASSERT_EQ(f.a->sas().size(), 1u);
    dir.drain();
    EXPECT_TRUE(f.net.wire.empty());
    f.a->clear("p");
    f.pump();
    dir.drain();
    home_manager.on_acquire(*config::parse_prefix("192.168.1.10/32"), *config::parse_prefix("192.168.2.10/32"));
    EXPECT_EQ(home_manager.counters().acquires_ignored, 1u);
    EXPECT_EQ(home_manager.counters().acquires_initiated, 1u);
}

TEST(TrapPolicies, ClearedByTheOperatorComesBackOnTraffic)
{
    // Cisco `clear crypto sa`: no automatic retry, but the next packet re-establishes the tunnel.
    dpd_fixture f("restart", "immediately");
    f.a->start();
    f.pump();
    ASSERT_TRUE(f.tunnel_up());
    EXPECT_EQ(f.a->clear(""), 1u);
    f.pump();
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_EQ(f.io_a.inst.traps.size(), 1u);
    f.traffic();
    EXPECT_TRUE(f.tunnel_up());
}

TEST(TrapPolicies, StartNoneDropsButDoesNotInitiate)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_b),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    f.a->start();
    f.pump();
    EXPECT_EQ(f.io_a.inst.trap_list(), std::vector<std::string>{"192.168.2.0/24 === 192.168.1.0/24"});
    f.a->on_acquire(*config::parse_prefix("192.168.2.7/32"), *config::parse_prefix("192.168.1.7/32"));
    f.a->on_acquire(*config::parse_prefix("192.168.2.7/32"), *config::parse_prefix("192.168.1.7/32"));
    f.pump();
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_EQ(f.a->counters().acquires_ignored, 2u);
    // Logged once a minute per tunnel, not per acquire.
    EXPECT_EQ(std::count_if(f.io_a.logs.begin(), f.io_a.logs.end(),
                            [](const std::string& l) { return l.find("start: none") != std::string::npos; }),
              1);
    f.a->on_acquire(*config::parse_prefix("10.0.0.1/32"), *config::parse_prefix("10.0.0.2/32"));
    EXPECT_EQ(f.a->counters().acquires_unmatched, 1u);
}

// RFC 7296 §2.25.1: A's rekey of a Child SA crosses B's Delete of it (B's reload removed the tunnel).
// B answers the rekey TEMPORARY_FAILURE (it is deleting that Child SA), A answers the Delete and drops
// the Child SA and the new SA it had prepared for the rekey; the other tunnel's Child SA and the IKE SA
// stay, and nothing is left in either data plane for the deleted one, then or later.
TEST(ExchangeTest, ChildRekeyCrossingADeleteOfTheSameChildSaLeavesNothingBehind)
{
    const std::string dpd_off = psk + "      dpd: { interval: 0 }\n";
    const std::string now = "          start: immediately\n";
    const std::string a_tunnels = "      tunnels:\n" + tunnel_yaml("lan", "192.168.1.0/24", "192.168.2.0/24") +
                                  tunnel_yaml("keep", "192.168.3.0/24", "192.168.4.0/24");
    const std::string b_before = "      tunnels:\n" + tunnel_yaml("lan", "192.168.2.0/24", "192.168.1.0/24", now) +
                                 tunnel_yaml("keep", "192.168.4.0/24", "192.168.3.0/24", now);
    const std::string b_after = "      tunnels:\n" + tunnel_yaml("keep", "192.168.4.0/24", "192.168.3.0/24", now);
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", dpd_off, a_tunnels),
                   peer_yaml("203.0.113.1", "198.51.100.1", dpd_off, b_before));
    f.a->start();
    f.b->start();
    f.pump();
    ASSERT_NE(f.only_sa(*f.a), nullptr);
    ASSERT_EQ(f.only_sa(*f.a)->children().size(), 2u);
    ASSERT_EQ(f.only_sa(*f.b)->children().size(), 2u);
    const uint64_t spi_i = f.only_sa(*f.a)->spi_i();
    const child_sa keep = *child_of(*f.only_sa(*f.a), "keep");
    const uint32_t lan_in = child_of(*f.only_sa(*f.a), "lan")->spi_in;

    // Both requests are on the wire before either arrives.
    f.a->sas().begin()->second->rekey_child(lan_in);
    auto r = f.b->reload(config::load_string(peer_yaml("203.0.113.1", "198.51.100.1", dpd_off, b_after), "b.yaml").ike);
    EXPECT_EQ(r.tunnels.front().tunnel, "lan");
    EXPECT_EQ(r.tunnels.front().change, "removed");
    f.pump();

    for (auto* m : {f.a.get(), f.b.get()}) {
        const ike_sa* sa = f.only_sa(*m);
        ASSERT_NE(sa, nullptr);
        EXPECT_EQ(sa->spi_i(), spi_i); // the same IKE SA
        EXPECT_EQ(sa->sa_state(), ike_sa::state::established);
        ASSERT_EQ(sa->children().size(), 1u);
        EXPECT_EQ(sa->children()[0].tunnel, "keep");
    }
    EXPECT_EQ(child_of(*f.only_sa(*f.a), "keep")->spi_in, keep.spi_in);
    EXPECT_TRUE(logged(f.io_a, "TEMPORARY_FAILURE")) << ::testing::PrintToString(f.io_a.logs);
    // Only "keep"'s pair in each data plane, mirrored; the same a minute later (no retry of the rekey).
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u) << ::testing::PrintToString(f.io_a.inst.events);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u) << ::testing::PrintToString(f.io_b.inst.events);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
    for (int i = 0; i < 60; ++i) {
        f.advance(std::chrono::seconds(1));
    }
    EXPECT_EQ(f.io_a.inst.sas.size(), 2u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u);
    EXPECT_EQ(f.only_sa(*f.a)->children().size(), 1u);
}

TEST(ExchangeTest, DeleteFromEitherSideRemovesEverything)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    f.a->start();
    f.pump();
    EXPECT_EQ(f.b->clear(""), 1u);
    f.pump();
    EXPECT_TRUE(f.a->sas().empty());
    EXPECT_TRUE(f.b->sas().empty());
    EXPECT_TRUE(f.io_a.inst.sas.empty());
    EXPECT_TRUE(f.io_b.inst.sas.empty());
}

TEST(ExchangeTest, UnknownPeerAddressIsRecorded)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.99", psk, default_tunnel_b));
    f.a->start();
    f.pump();
    EXPECT_TRUE(f.b->sas().empty());
    ASSERT_FALSE(f.b->failures().empty());
    EXPECT_NE(f.b->failures().back().cause.find("no peer is configured"), std::string::npos);
    // A's retransmissions (or a flood) within 10 s: counted, not recorded again.
    const size_t recorded = f.b->failures().size();
    const auto seen = f.b->counters().no_peer;
    f.advance(std::chrono::seconds(7));
    EXPECT_GT(f.b->counters().no_peer, seen);
    EXPECT_EQ(f.b->failures().size(), recorded);
}

TEST(ExchangeTest, GarbageIsCountedNotFatal)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b));
    bytes junk(40, 0xab);
    f.b->receive(endpoint{f.addr_b, 500}, endpoint{f.addr_a, 500}, junk);
    EXPECT_EQ(f.b->counters().malformed, 1u);
    f.a->start();
    f.pump();
    EXPECT_EQ(f.only_sa(*f.b)->sa_state(), ike_sa::state::established);
}


// ---- RFC 7383 fragmentation --------------------------------------------------------------------------

bool is_fragment(const datagram& d) { return d.data.size() > 32 && d.data[16] == static_cast<uint8_t>(payload_type::skf); }

uint16_t fragment_number(const datagram& d) { return static_cast<uint16_t>(d.data[32] << 8 | d.data[33]); }

// PSK messages are a few hundred bytes; a fragment size of 160 (the loader's minimum is 576) splits
// IKE_AUTH into several fragments both ways.
void small_fragments(config::ike_config& c, bool)
{
    c.peers[0].fragment_size = 160;
}

const ike_sa* established_sa(ike_manager& m)
{
    return m.sas().size() == 1 && m.sas().begin()->second->sa_state() == ike_sa::state::established
               ? m.sas().begin()->second.get()
               : nullptr;
}

TEST(ExchangeFragmentation, IkeAuthGoesFragmentedBothWays)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b), small_fragments);
    std::map<std::pair<bool, uint16_t>, int> seen; // (response, fragment number) -> datagrams
    size_t biggest = 0;
    f.net.drop = [&](const datagram& d) {
        if (is_fragment(d)) {
            ++seen[{parse_header(d.data)->is_response(), fragment_number(d)}];
            biggest = std::max(biggest, d.data.size());
        }
        return false;
    };
    f.a->start();
    f.pump();
    const auto* sa_a = established_sa(*f.a);
    const auto* sa_b = established_sa(*f.b);
    ASSERT_NE(sa_a, nullptr) << f.io_a.logs.back();
    ASSERT_NE(sa_b, nullptr) << f.io_b.logs.back();
    EXPECT_TRUE(sa_a->fragmentation());
    EXPECT_TRUE(sa_b->fragmentation());
    ASSERT_EQ(sa_a->children().size(), 1u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    expect_mirrored(f.io_b.inst, f.io_a.inst);
    // Requests and responses went as fragments 1..n, each datagram within the fragment size.
    EXPECT_GE(seen.count({false, 3}), 1u);
    EXPECT_GE(seen.count({true, 2}), 1u);
    EXPECT_LE(biggest, 160u - 20 - 8);
    const auto& ca = f.a->counters().fragments;
    const auto& cb = f.b->counters().fragments;
    EXPECT_EQ(ca.messages_sent, 1u); // the IKE_AUTH request
    EXPECT_EQ(cb.messages_sent, 1u); // the IKE_AUTH response
    EXPECT_EQ(ca.reassembled, 1u);
    EXPECT_EQ(cb.reassembled, 1u);
    EXPECT_EQ(ca.sent, cb.received);
    EXPECT_EQ(cb.sent, ca.received);
    EXPECT_EQ(ca.invalid + cb.invalid + ca.duplicate + cb.duplicate + ca.discarded + cb.discarded, 0u);
    // Later exchanges fragment too: a Child SA rekey over the fragmenting IKE SA.
    f.a->sas().begin()->second->rekey_child(sa_a->children()[0].spi_in);
    f.pump();
    EXPECT_EQ(f.a->counters().fragments.messages_sent, 2u);
    EXPECT_EQ(f.b->counters().fragments.reassembled, 2u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
}

TEST(ExchangeFragmentation, OutOfOrderAndDuplicatedFragments)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b), small_fragments);
    f.net.reverse_fragments = true; // last fragment first
    f.net.fragment_copies = 2;      // and every one twice
    f.a->start();
    f.pump();
    ASSERT_NE(established_sa(*f.a), nullptr) << f.io_a.logs.back();
    ASSERT_NE(established_sa(*f.b), nullptr) << f.io_b.logs.back();
    const auto& ca = f.a->counters().fragments;
    const auto& cb = f.b->counters().fragments;
    EXPECT_EQ(cb.reassembled, 1u);
    EXPECT_EQ(ca.reassembled, 1u);
    // Each second copy is ignored. The second copy of request fragment 1 arrives after B answered, so
    // it looks like a retransmitted request (§2.6.1): B resends its response once, and A, done already,
    // counts those fragments (and the copies) as unexpected.
    EXPECT_EQ(cb.duplicate, ca.sent); // n - 1 second copies, and fragment 1 again as a retransmission
    EXPECT_EQ(cb.messages_sent, 1u);
    EXPECT_EQ(ca.received + ca.duplicate + ca.unexpected, 2 * cb.sent);
    EXPECT_GT(ca.unexpected, 0u);
    EXPECT_EQ(cb.invalid + ca.invalid, 0u);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u); // installed once
    expect_mirrored(f.io_a.inst, f.io_b.inst);
}

TEST(ExchangeFragmentation, TamperedFragmentDroppedRetransmissionRecovers)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b), small_fragments);
    int tampered = 0;
    f.net.tamper = [&](datagram& d) {
        // Fragment 2 of the first IKE_AUTH request: one bit of its ciphertext.
        if (tampered == 0 && is_fragment(d) && fragment_number(d) == 2 && !parse_header(d.data)->is_response()) {
            d.data[d.data.size() - 20] ^= 0x01;
            ++tampered;
        }
    };
    f.a->start();
    f.pump();
    EXPECT_EQ(tampered, 1);
    EXPECT_EQ(established_sa(*f.a), nullptr);
    const auto& cb = f.b->counters().fragments;
    EXPECT_EQ(cb.invalid, 1u);  // dropped and counted ...
    EXPECT_GE(cb.received, 2u); // ... while the others were kept
    EXPECT_EQ(cb.reassembled, 0u);
    // The initiator retransmits every fragment; the ones B has are duplicates, the good copy of
    // fragment 2 completes the message.
    size_t sent_before = f.a->counters().fragments.sent;
    f.advance(std::chrono::milliseconds(1100));
    EXPECT_EQ(f.a->counters().fragments.sent, 2 * sent_before);
    ASSERT_NE(established_sa(*f.a), nullptr) << f.io_a.logs.back();
    ASSERT_NE(established_sa(*f.b), nullptr) << f.io_b.logs.back();
    EXPECT_EQ(cb.reassembled, 1u);
    EXPECT_EQ(cb.duplicate, sent_before - 1);
    EXPECT_EQ(cb.invalid, 1u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
}

TEST(ExchangeFragmentation, LostResponseFragmentsResentOnceForARetransmittedRequest)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk, default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b), small_fragments);
    bool lose = true;
    size_t b_response_fragments = 0;
    f.net.drop = [&](const datagram& d) {
        if (is_fragment(d) && parse_header(d.data)->is_response()) {
            ++b_response_fragments;
            return lose; // the whole first IKE_AUTH response is lost
        }
        return false;
    };
    f.a->start();
    f.pump();
    EXPECT_EQ(established_sa(*f.a), nullptr);
    size_t total = b_response_fragments;
    ASSERT_GE(total, 2u);
    lose = false;
    f.advance(std::chrono::milliseconds(1100));
    ASSERT_NE(established_sa(*f.a), nullptr) << f.io_a.logs.back();
    // RFC 7383 §2.6.1: B answers the retransmitted request once (on its fragment 1), not per fragment.
    EXPECT_EQ(b_response_fragments, 2 * total);
    EXPECT_EQ(f.io_b.inst.sas.size(), 2u);
}

TEST(ExchangeFragmentation, NotNegotiatedOrAcceptOnly)
{
    // `no` on the initiator: no notify, nothing fragmented, even with a tiny fragment size.
    {
        pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      fragmentation: no\n", default_tunnel_a),
                       peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b), small_fragments);
        bool notify_seen = false;
        f.net.drop = [&](const datagram& d) {
            auto m = parse_message(d.data);
            if (auto* msg = std::get_if<message>(&m)) {
                notify_seen = notify_seen || find_notify(msg->payloads, notify_type::ikev2_fragmentation_supported);
            }
            return false;
        };
        f.a->start();
        f.pump();
        ASSERT_NE(established_sa(*f.a), nullptr);
        EXPECT_FALSE(notify_seen);
        EXPECT_FALSE(established_sa(*f.b)->fragmentation());
        EXPECT_EQ(f.a->counters().fragments.sent + f.b->counters().fragments.sent, 0u);
    }
    // `accept` on the initiator: announced, so the responder fragments its response; ours go whole.
    {
        pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      fragmentation: accept\n", default_tunnel_a),
                       peer_yaml("203.0.113.1", "198.51.100.1", psk, default_tunnel_b), small_fragments);
        f.a->start();
        f.pump();
        ASSERT_NE(established_sa(*f.a), nullptr);
        EXPECT_TRUE(established_sa(*f.a)->fragmentation());
        EXPECT_EQ(f.a->counters().fragments.messages_sent, 0u);
        EXPECT_EQ(f.b->counters().fragments.messages_sent, 1u);
        EXPECT_EQ(f.a->counters().fragments.reassembled, 1u);
    }
}

TEST(ExchangeFragmentation, IkeSaRekeyKeepsFragmentation)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      rekey-time: 100s\n      dpd: { interval: 0 }\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      rekey-time: 0\n      dpd: { interval: 0 }\n", default_tunnel_b),
                   small_fragments);
    f.a->start();
    f.pump();
    uint64_t old_spi = f.only_sa(*f.a)->spi_i();
    size_t before = f.a->counters().fragments.messages_sent;
    f.advance(std::chrono::seconds(101));
    const auto* sa_a = established_sa(*f.a);
    ASSERT_NE(sa_a, nullptr);
    EXPECT_NE(sa_a->spi_i(), old_spi);
    EXPECT_TRUE(sa_a->fragmentation());
    EXPECT_GT(f.a->counters().fragments.messages_sent, before); // the rekey request itself was fragmented
    f.a->sas().begin()->second->rekey_child(sa_a->children()[0].spi_in);
    f.pump();
    expect_mirrored(f.io_a.inst, f.io_b.inst);
}

// RFC 7383 §2.5.2 path MTU discovery. Identities of 1800 characters make IKE_AUTH about 2 KB both ways;
// the path silently drops every IP datagram above `path_mtu` bytes (a PMTU black hole: no ICMP).
void long_identities(config::ike_config& c, bool is_a)
{
    const config::ike_identity a{config::ike_id_kind::fqdn, std::string(1800, 'a') + ".example"};
    const config::ike_identity b{config::ike_id_kind::fqdn, std::string(1800, 'b') + ".example"};
    c.peers[0].local_id = is_a ? a : b;
    c.peers[0].remote_id = is_a ? b : a;
}

struct black_hole {
    size_t path_mtu;
    size_t ip_overhead; // IP + UDP header bytes
    size_t dropped = 0, largest_delivered = 0;
    bool operator()(const datagram& d)
    {
        if (d.data.size() + ip_overhead > path_mtu) {
            ++dropped;
            return true;
        }
        largest_delivered = std::max(largest_delivered, d.data.size() + ip_overhead);
        return false;
    }
};

TEST(ExchangeFragmentation, PathMtuDiscoveryFindsWhatThePathCarries)
{
    pair_fixture f(peer_yaml("198.51.100.1", "203.0.113.1", psk + "      rekey-time: 100s\n      dpd: { interval: 0 }\n", default_tunnel_a),
                   peer_yaml("203.0.113.1", "198.51.100.1", psk + "      rekey-time: 0\n      dpd: { interval: 0 }\n", default_tunnel_b),
                   long_identities);
    auto hole = std::make_shared<black_hole>(black_hole{1000, 20 + 8});
    f.net.drop = [hole](const datagram& d) { return (*hole)(d); };
    f.a->start();
    f.pump();
    for (int s = 0; s < 40 && !(established_sa(*f.a) && established_sa(*f.b)); ++s) {
        f.advance(std::chrono::milliseconds(1000));
    }
    const auto* sa_a = established_sa(*f.a);
    const auto* sa_b = established_sa(*f.b);
    ASSERT_NE(sa_a, nullptr) << f.io_a.logs.back();
    ASSERT_NE(sa_b, nullptr) << f.io_b.logs.back();
    EXPECT_GT(hole->dropped, 0u);      // the default 1280 did not cross ...
    EXPECT_LE(hole->largest_delivered, 1000u);
    // ... so the initiator went down the ladder (1280, 1280, then 1000, which crossed), and the
    // responder followed the size of the request's fragments for its response.
    EXPECT_EQ(sa_a->fragment_size(), 1000u);
    EXPECT_EQ(sa_b->fragment_size(), 1000u);
    EXPECT_GE(f.a->counters().fragments.pmtu_lowered, 1u);
    EXPECT_GE(f.b->counters().fragments.pmtu_lowered, 1u);
    EXPECT_EQ(f.a->counters().fragments.messages_sent, 1u); // fragmented again, not a new message
    EXPECT_EQ(f.b->counters().fragments.messages_sent, 1u);
    EXPECT_TRUE(logged(f.io_a, "path MTU discovery (RFC 7383 §2.5.2) lowers the fragment size to 1000 bytes"));
    EXPECT_TRUE(logged(f.io_b, "path MTU discovery (RFC 7383 §2.5.2) lowers the fragment size from 1280 to 1000 bytes"));
    ASSERT_EQ(sa_a->children().size(), 1u);
    expect_mirrored(f.io_a.inst, f.io_b.inst);
    // The discovered size is kept: it survives the IKE SA rekey, with nothing lowered again.
    const uint32_t discovered = sa_a->fragment_size();
    const uint64_t lowered = f.a->counters().fragments.pmtu_lowered;
    const uint64_t old_spi = sa_a->spi_i();
    f.advance(std::chrono::seconds(101));
    for (int s = 0; s < 5; ++s) {
        f.advance(std::chrono::milliseconds(1000));
    }
    sa_a = established_sa(*f.a);
    ASSERT_NE(sa_a, nullptr);
    EXPECT_NE(sa_a->spi_i(), old_spi);
    EXPECT_EQ(sa_a->fragment_size(), discovered);
    EXPECT_EQ(f.a->counters().fragments.pmtu_lowered, lowered);
}

TEST(ExchangeFragmentation, PathMtuDiscoveryOverIpv6StopsAt1280)
{
    // IPv6 endpoints, `fragment-size` 1500, a path that carries 1300: 1500 and 1400 are dropped, 1280
    // (the IPv6 minimum MTU, below which the ladder never goes) crosses.
    const std::string tunnel_a = "      tunnels:\n        - name: lan\n          local-ts: [2001:db8:1::/48]\n"
                                 "          remote-ts: [2001:db8:2::/48]\n          esp-proposals: [aes256gcm16]\n"
                                 "          start: immediately\n";
    const std::string tunnel_b = "      tunnels:\n        - name: lan\n          local-ts: [2001:db8:2::/48]\n"
                                 "          remote-ts: [2001:db8:1::/48]\n          esp-proposals: [aes256gcm16]\n";
    pair_fixture f(peer_yaml("2001:db8:ff1::1", "2001:db8:ff2::1", psk + "      fragment-size: 1500\n", tunnel_a),
                   peer_yaml("2001:db8:ff2::1", "2001:db8:ff1::1", psk + "      fragment-size: 1500\n", tunnel_b),
                   long_identities);
    f.addr_a = addr("2001:db8:ff1::1");
    f.addr_b = addr("2001:db8:ff2::1");
    auto hole = std::make_shared<black_hole>(black_hole{1300, 40 + 8});
    f.net.drop = [hole](const datagram& d) { return (*hole)(d); };
    f.a->start();
    f.pump();
    for (int s = 0; s < 40 && !(established_sa(*f.a) && established_sa(*f.b)); ++s) {
        f.advance(std::chrono::milliseconds(1000));
    }
    const auto* sa_a = established_sa(*f.a);
    const auto* sa_b = established_sa(*f.b);
    ASSERT_NE(sa_a, nullptr) << f.io_a.logs.back();
    ASSERT_NE(sa_b, nullptr) << f.io_b.logs.back();
    EXPECT_EQ(sa_a->fragment_size(), 1280u);
    EXPECT_EQ(sa_b->fragment_size(), 1280u);
    EXPECT_LE(hole->largest_delivered, 1280u);
    EXPECT_EQ(f.a->counters().fragments.pmtu_lowered, 2u); // 1500 -> 1400 -> 1280
}

} // namespace
} // namespace espresso::cp
