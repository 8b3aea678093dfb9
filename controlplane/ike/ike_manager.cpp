#include "ike_manager.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>

namespace espresso::cp {

size_t home_shard(const std::string& peer, size_t shards) noexcept
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : peer) {
        h = (h ^ c) * 0x100000001b3ull;
    }
    return shards <= 1 ? 0 : static_cast<size_t>(h % shards);
}

std::optional<pubkey_credentials> load_peer_credentials(const config::ike_peer_config& p, std::string& error)
{
    auto creds = pubkey_credentials::load(p.auth, error);
    if (!creds) {
        return std::nullopt;
    }
    std::string why;
    if (!creds->certificate_holds(local_id_payload(p), why)) {
        const std::string id =
            p.local_id.kind == config::ike_id_kind::any ? config::to_string(p.local_address) : p.local_id.text;
        error = "local-id '" + id + "' is not an identity of certificate " + p.auth.certificate + " (" + why +
                "), so the peer would refuse it. Fix: set local-id to the certificate's subject DN or one of its "
                "subjectAltNames, or use a certificate that holds it.";
        return std::nullopt;
    }
    return creds;
}

ike_manager::ike_manager(ike_io& io, config::ike_config config, retransmit_policy retransmit,
                         shard_directory* directory, size_t shard)
    : io_(io), directory_(directory), shard_(shard), config_(std::move(config)), retransmit_(retransmit)
{
    for (const auto& p : config_.peers) {
        peers_.push_back(std::make_shared<const config::ike_peer_config>(p));
        if (p.auth.method == config::ike_auth_method::pubkey) {
            std::string error;
            auto creds = load_peer_credentials(p, error);
            if (!creds) {
                startup_errors_.push_back("peer " + p.name + ": " + error);
                continue;
            }
            creds->allow_sha1(p.allow_legacy);
            credentials_[p.name] = std::make_shared<const pubkey_credentials>(std::move(*creds));
        }
    }
    if (directory_ != nullptr) {
        cookie_secret_ = directory_->cookie_secret();
    } else {
        cookie_secret_.assign(32, 0);
        io_.random().fill(cookie_secret_);
    }
}

bool ike_manager::is_home(const std::string& peer) const noexcept
{
    return directory_ == nullptr || home_shard(peer, directory_->shard_count()) == shard_;
}

void ike_manager::add_sa(uint64_t spi, std::unique_ptr<ike_sa> sa)
{
    if (directory_ != nullptr) {
        directory_->sa_added(sa->peer().name, shard_);
    }
    sas_[spi] = std::move(sa);
}

void ike_manager::erase_sa(std::map<uint64_t, std::unique_ptr<ike_sa>>::iterator it)
{
    if (directory_ != nullptr) {
        directory_->sa_removed(it->second->peer().name, shard_);
    }
    sas_.erase(it);
}

void ike_manager::half_open_add(const half_open_key& key, uint64_t spi)
{
    half_open_[key] = spi;
    half_open_of_[spi] = key;
    if (directory_ != nullptr) {
        directory_->half_open().fetch_add(1, std::memory_order_relaxed);
    }
}

void ike_manager::half_open_remove(uint64_t spi)
{
    if (auto h = half_open_of_.find(spi); h != half_open_of_.end()) {
        half_open_.erase(h->second);
        half_open_of_.erase(h);
        if (directory_ != nullptr) {
            directory_->half_open().fetch_sub(1, std::memory_order_relaxed);
        }
    }
}

size_t ike_manager::half_open_total() const noexcept
{
    // Relaxed: the threshold is a load limit, a count a few datagrams stale is as good.
    return directory_ != nullptr ? directory_->half_open().load(std::memory_order_relaxed)
                                 : half_open_.size();
}

// RFC 7296 §2.6: Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>). Stateless: a
// responder under load keeps nothing for an initiator until it proves it can receive at its address.
bytes ike_manager::cookie_for(const message& msg, const endpoint& remote) const
{
    const auto* nonce = find_payload(msg.payloads, payload_type::nonce);
    if (nonce == nullptr) {
        return {};
    }
    const auto& ni = std::get<nonce_payload>(nonce->body).data;
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
    EVP_DigestUpdate(ctx, ni.data(), ni.size());
    EVP_DigestUpdate(ctx, remote.address.bytes.data(), remote.address.is_v6() ? 16 : 4);
    uint8_t spi[8];
    for (int i = 0; i < 8; ++i) {
        spi[i] = static_cast<uint8_t>(msg.header.spi_i >> (56 - 8 * i));
    }
    EVP_DigestUpdate(ctx, spi, sizeof(spi));
    EVP_DigestUpdate(ctx, cookie_secret_.data(), cookie_secret_.size());
    bytes out(1 + 32);
    out[0] = 1; // version of the secret
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx, out.data() + 1, &len);
    EVP_MD_CTX_free(ctx);
    return out;
}

uint64_t ike_manager::new_spi()
{
    uint64_t spi = 0;
    do {
        spi = io_.new_ike_spi();
    } while (sas_.count(spi) != 0);
    return spi;
}

void ike_manager::record_failure(negotiation_failure f)
{
    failures_.push_back(std::move(f));
    while (failures_.size() > 100) {
        failures_.pop_front();
    }
}

namespace {

// Every setting of a peer, as one string: equal fingerprints = nothing to do on reload. Holds the
// PSK, so it is wiped after use and never logged.
std::string fingerprint(const config::ike_peer_config& p)
{
    std::string f;
    auto add = [&](const std::string& s) {
        f += std::to_string(s.size());
        f += ':';
        f += s;
    };
    auto add_prefixes = [&](const std::vector<config::ip_prefix>& v) {
        for (const auto& x : v) {
            add(config::to_string(x));
        }
        add("|");
    };
    auto add_proposals = [&](const std::vector<config::ike_proposal_config>& v) {
        for (const auto& x : v) {
            add(x.text);
        }
        add("|");
    };
    add(p.name);
    add(std::to_string(p.version));
    add(config::to_string(p.local_address));
    add(p.remote_address ? config::to_string(*p.remote_address) : "any");
    add(std::to_string(p.local_port) + "/" + std::to_string(p.remote_port));
    add_proposals(p.proposals);
    add(p.allow_legacy ? "legacy" : "");
    add(std::to_string(static_cast<int>(p.local_id.kind)) + p.local_id.text);
    add(std::to_string(static_cast<int>(p.remote_id.kind)) + p.remote_id.text);
    add(std::to_string(static_cast<int>(p.auth.method)));
    add(p.auth.psk);
    add(p.auth.certificate);
    add(p.auth.private_key);
    for (const auto& ca : p.auth.ca) {
        add(ca);
    }
    add(std::to_string(p.rekey_time) + "/" + std::to_string(p.dpd_interval) + "/" +
        std::to_string(static_cast<int>(p.dpd_action)));
    add(std::to_string(static_cast<int>(p.fragmentation)) + "/" + std::to_string(p.fragment_size));
    for (const auto& t : p.tunnels) {
        add(t.name);
        add_prefixes(t.local_ts);
        add_prefixes(t.remote_ts);
        add(std::to_string(static_cast<int>(t.mode)));
        add_proposals(t.esp_proposals);
        add(std::to_string(t.rekey_time) + "/" + std::to_string(t.rekey_bytes) + "/" + std::to_string(t.rekey_packets) +
            "/" + std::to_string(static_cast<int>(t.start)) + "/" + std::to_string(t.replay_window));
    }
    return f;
}

bool same_settings(const config::ike_peer_config& a, const config::ike_peer_config& b)
{
    std::string fa = fingerprint(a), fb = fingerprint(b);
    bool same = fa == fb;
    OPENSSL_cleanse(fa.data(), fa.size());
    OPENSSL_cleanse(fb.data(), fb.size());
    return same;
}

} // namespace

ike_manager::reload_result ike_manager::reload(config::ike_config next)
{
    reload_result r;
    std::vector<peer_ptr> fresh;
    std::vector<peer_ptr> to_start;
    for (const auto& p : next.peers) {
        auto old = find_peer(p.name);
        if (old && same_settings(*old, p)) {
            fresh.push_back(old); // the running SAs keep pointing at it
            r.unchanged.push_back(p.name);
            continue;
        }
        auto made = std::make_shared<const config::ike_peer_config>(p);
        fresh.push_back(made);
        (old ? r.changed : r.added).push_back(p.name);
        to_start.push_back(made);
    }
    for (const auto& old : peers_) {
        bool kept = std::any_of(next.peers.begin(), next.peers.end(), [&](const auto& p) { return p.name == old->name; });
        if (!kept) {
            r.removed.push_back(old->name);
        }
    }
    // Tear down what is removed or changed (with the old settings), then switch.
    for (const auto* list : {&r.removed, &r.changed}) {
        for (const auto& name : *list) {
            clear(name);
        }
    }
    peers_ = std::move(fresh);
    config_ = std::move(next);
    for (const auto* list : {&r.removed, &r.changed, &r.added}) {
        for (const auto& name : *list) {
            dpd_cleared_.erase(name);
        }
    }
    if (traps_wanted_) {
        // Make before break: the new selectors' traps go in before the old ones come out, so a
        // changed tunnel's traffic is never without a trap.
        for (const auto& p : peers_) {
            if (std::find(r.unchanged.begin(), r.unchanged.end(), p->name) != r.unchanged.end()) {
                continue;
            }
            install_peer_traps(*p);
        }
        for (const auto& name : r.removed) {
            traps_incomplete_.erase(name);
            if (auto it = traps_.find(name); it != traps_.end()) {
                remove_trap_ids(name, it->second);
                traps_.erase(it);
            }
        }
    }
    for (const auto& p : peers_) {
        if (p->auth.method == config::ike_auth_method::pubkey &&
            std::find(r.unchanged.begin(), r.unchanged.end(), p->name) == r.unchanged.end()) {
            std::string error;
            auto creds = load_peer_credentials(*p, error);
            if (!creds) {
                io_.log(log_level::error, p->name, "reload: " + error);
                credentials_.erase(p->name);
                continue;
            }
            creds->allow_sha1(p->allow_legacy);
            credentials_[p->name] = std::make_shared<const pubkey_credentials>(std::move(*creds));
        }
    }
    for (const auto& p : to_start) {
        std::vector<std::string> tunnels;
        for (const auto& t : p->tunnels) {
            if (t.start == config::ike_start_action::immediately) {
                tunnels.push_back(t.name);
            }
        }
        if (!tunnels.empty() && p->remote_address && is_home(p->name)) {
            keep_up_.insert(p->name);
            create_initiator(p, std::move(tunnels));
        }
    }
    return r;
}

ike_manager::peer_ptr ike_manager::find_peer(const std::string& name) const
{
    for (const auto& p : peers_) {
        if (p->name == name) {
            return p;
        }
    }
    return nullptr;
}

bool ike_manager::has_live_sa(const std::string& peer) const
{
    // Linear, but only on the rare paths (retry, initiate), never per datagram.
    return std::any_of(
               sas_.begin(), sas_.end(),
               [&](const auto& kv) { return !kv.second->dead() && kv.second->peer().name == peer; }) ||
           (directory_ != nullptr && directory_->live_elsewhere(peer, shard_));
}

void ike_manager::give_credentials(ike_sa& sa) const
{
    if (auto it = credentials_.find(sa.peer().name); it != credentials_.end()) {
        sa.set_credentials(it->second);
    }
}

ike_sa& ike_manager::create_initiator(const peer_ptr& peer, std::vector<std::string> tunnels)
{
    uint64_t spi = new_spi();
    endpoint local{peer->local_address, peer->local_port};
    endpoint remote{*peer->remote_address, peer->remote_port};
    auto sa = std::make_unique<ike_sa>(io_, peer, ike_sa::role::initiator, spi, 0, local, remote, retransmit_);
    give_credentials(*sa);
    // §2.4: INITIAL_CONTACT asserts this is the only IKE SA between us; not true with one already up.
    sa->set_send_initial_contact(!has_live_sa(peer->name));
    sa->set_fragment_counters(&counters_.fragments);
    auto& ref = *sa;
    add_sa(spi, std::move(sa));
    ref.initiate(std::move(tunnels));
    after(spi);
    return ref;
}

bool ike_manager::install_traps(const config::ike_peer_config& peer, std::vector<uint32_t>& ids)
{
    bool complete = true;
    for (const auto& t : peer.tunnels) {
        for (const auto& local : t.local_ts) {
            for (const auto& remote : t.remote_ts) {
                std::string error;
                auto id = io_.installer().add_trap(local, remote, error);
                std::string pair = config::to_string(local) + " === " + config::to_string(remote);
                if (id) {
                    ids.push_back(*id);
                    io_.log(log_level::info, peer.name, "tunnel " + t.name + ": trap policy " + pair + " installed");
                } else {
                    complete = false;
                    // Without any data plane (null installer) there is nothing to protect: a warning.
                    io_.log(error.starts_with("no data plane") ? log_level::warning : log_level::error, peer.name,
                            "tunnel " + t.name + ": cannot install the trap policy " + pair + ": " + error +
                                "; while the tunnel is down its traffic is not held back by it");
                }
            }
        }
    }
    return complete;
}

void ike_manager::install_peer_traps(const config::ike_peer_config& peer)
{
    std::vector<uint32_t> old = std::move(traps_[peer.name]);
    traps_[peer.name].clear();
    if (install_traps(peer, traps_[peer.name])) {
        traps_incomplete_.erase(peer.name);
    } else {
        traps_incomplete_.insert(peer.name);
    }
    remove_trap_ids(peer.name, old);
}

void ike_manager::retry_traps()
{
    if (!traps_wanted_ || traps_incomplete_.empty()) {
        return;
    }
    for (const auto& p : peers_) {
        if (traps_incomplete_.count(p->name) != 0) {
            install_peer_traps(*p);
        }
    }
}

void ike_manager::remove_trap_ids(const std::string& peer, const std::vector<uint32_t>& ids)
{
    for (uint32_t id : ids) {
        if (auto err = io_.installer().remove_trap(id); !err.empty()) {
            io_.log(log_level::warning, peer, "cannot remove trap policy " + std::to_string(id) + ": " + err);
        }
    }
}

void ike_manager::remove_traps()
{
    for (const auto& [peer, ids] : traps_) {
        remove_trap_ids(peer, ids);
    }
    traps_.clear();
    traps_incomplete_.clear();
    traps_wanted_ = false;
}

void ike_manager::start()
{
    // One set of trap policies per daemon: shard 0 owns them (every shard sees the same peers).
    traps_wanted_ = shard_ == 0;
    for (const auto& peer : peers_) {
        if (traps_wanted_) {
            install_peer_traps(*peer);
        }
    }
    for (const auto& peer : peers_) {
        std::vector<std::string> tunnels;
        for (const auto& t : peer->tunnels) {
            if (t.start == config::ike_start_action::immediately) {
                tunnels.push_back(t.name);
            }
        }
        if (!tunnels.empty() && peer->remote_address && is_home(peer->name)) {
            keep_up_.insert(peer->name);
            create_initiator(peer, std::move(tunnels));
        }
    }
}

std::string ike_manager::resolve(const std::string& name, peer_ptr& target,
                                 std::vector<std::string>& tunnels) const
{
    for (const auto& peer : peers_) {
        tunnels.clear();
        if (name == peer->name) {
            for (const auto& t : peer->tunnels) {
                tunnels.push_back(t.name);
            }
        } else {
            for (const auto& t : peer->tunnels) {
                if (name == t.name || name == peer->name + "/" + t.name) {
                    tunnels.push_back(t.name);
                }
            }
        }
        if (tunnels.empty()) {
            continue;
        }
        if (!peer->remote_address) {
            return "peer " + peer->name + " has remote-address any; it can only respond";
        }
        target = peer;
        return "";
    }
    return "no peer or tunnel named '" + name + "'";
}

std::string ike_manager::initiate_existing(const std::string& name, bool& found, std::string* peer_name)
{
    found = false;
    peer_ptr peer;
    std::vector<std::string> tunnels;
    if (auto error = resolve(name, peer, tunnels); !error.empty()) {
        return error;
    }
    if (peer_name != nullptr) {
        *peer_name = peer->name;
    }
    dpd_cleared_.erase(peer->name); // the operator (or traffic, see on_acquire) wants it back
    // An established IKE SA to this peer carries new Child SAs with CREATE_CHILD_SA.
    for (auto& [spi, sa] : sas_) {
        if (sa->peer().name != peer->name || sa->dead()) {
            continue;
        }
        if (sa->sa_state() == ike_sa::state::established) {
            for (const auto& t : tunnels) {
                bool up = std::any_of(sa->children().begin(), sa->children().end(),
                                      [&](const child_sa& c) { return c.tunnel == t; });
                if (!up) {
                    sa->start_child(t);
                }
            }
            after(spi);
        }
        found = true; // established or being negotiated
        return "";
    }
    return "";
}

std::string ike_manager::initiate(const std::string& name)
{
    bool found = false;
    if (auto error = initiate_existing(name, found); !error.empty() || found) {
        return error;
    }
    peer_ptr peer;
    std::vector<std::string> tunnels;
    resolve(name, peer, tunnels);
    create_initiator(peer, std::move(tunnels));
    return "";
}

size_t ike_manager::clear(const std::string& peer)
{
    std::vector<uint64_t> spis;
    for (auto& [spi, sa] : sas_) {
        if (peer.empty() || sa->peer().name == peer || config::to_string(sa->remote().address) == peer) {
            spis.push_back(spi);
            // The operator wants it down: no automatic retry or restart.
            keep_up_.erase(sa->peer().name);
            retries_.erase(sa->peer().name);
        }
    }
    for (uint64_t spi : spis) {
        if (auto it = sas_.find(spi); it != sas_.end()) {
            it->second->delete_sa();
            after(spi);
        }
    }
    return spis.size();
}

std::set<std::string> ike_manager::peers_matching(const std::string& peer) const
{
    std::set<std::string> names;
    for (const auto& [spi, sa] : sas_) {
        if (peer.empty() || sa->peer().name == peer || config::to_string(sa->remote().address) == peer) {
            names.insert(sa->peer().name);
        }
    }
    return names;
}

void ike_manager::stop_keeping_up(const std::set<std::string>& peers)
{
    for (const auto& name : peers) {
        keep_up_.erase(name);
        retries_.erase(name);
    }
}

void ike_manager::shutdown()
{
    for (auto& [spi, sa] : sas_) {
        sa->delete_sa();      // sends the Delete once (best effort)
        sa->shutdown_local(); // and removes the Child SAs now
    }
    while (!sas_.empty()) {
        half_open_remove(sas_.begin()->first);
        erase_sa(sas_.begin());
    }
    deadlines_.clear();
    deadline_of_.clear();
    retries_.clear();
}

ike_manager::peer_ptr ike_manager::find_peer_for(const endpoint& local, const endpoint& remote) const
{
    // Exact remote address first, then `any`.
    for (int pass = 0; pass < 2; ++pass) {
        for (const auto& p : peers_) {
            if (!(p->local_address == local.address)) {
                continue;
            }
            if (pass == 0 ? (p->remote_address && *p->remote_address == remote.address) : !p->remote_address) {
                return p;
            }
        }
    }
    return nullptr;
}

void ike_manager::receive(const endpoint& local, const endpoint& remote, std::span<const uint8_t> datagram)
{
    ++counters_.received;
    auto parsed = parse_message(datagram);
    if (auto* err = std::get_if<parse_error>(&parsed)) {
        ++counters_.malformed;
        io_.log(log_level::debug, "-", "dropped a malformed message from " + to_string(remote) + ": " + err->what);
        return;
    }
    auto& msg = std::get<message>(parsed);
    const auto& h = msg.header;
    bool init = h.exchange == static_cast<uint8_t>(exchange_type::ike_sa_init);
    if (io_.debug_enabled()) {
        io_.log(log_level::debug, "-", "received " + describe(msg) + " from " + to_string(remote));
    }

    if (init && !h.is_response() && h.spi_r == 0 && h.message_id == 0) {
        half_open_key key{h.spi_i, to_string(remote)};
        if (auto it = half_open_.find(key); it != half_open_.end()) {
            if (auto sa = sas_.find(it->second); sa != sas_.end()) {
                sa->second->handle(msg, datagram, local, remote); // retransmission: cached response
                return;
            }
        }
        auto peer = find_peer_for(local, remote);
        if (!peer) {
            ++counters_.no_peer;
            record_failure({std::chrono::system_clock::now(), config::to_string(remote.address), to_string(remote),
                            "IKE_SA_INIT from " + to_string(remote) + " to " + to_string(local) +
                                ": no peer is configured for this address.",
                            "add a peer with local-address " + config::to_string(local.address) + " and remote-address " +
                                config::to_string(remote.address) + " (or any)."});
            io_.log(log_level::warning, "-", failures_.back().cause);
            return;
        }
        size_t half_open = half_open_total();
        if (half_open >= config_.cookie_threshold) {
            // §2.6: above the threshold, only initiators that echo our cookie get state.
            bytes expected = cookie_for(msg, remote);
            const auto* given = find_notify(msg.payloads, notify_type::cookie);
            if (given == nullptr || expected.empty() || given->data != expected) {
                if (given != nullptr) {
                    ++counters_.cookies_invalid;
                }
                // Past ten times the threshold (at least 1000) even cookie-less requests are dropped.
                size_t hard_limit = std::max<size_t>(static_cast<size_t>(config_.cookie_threshold) * 10u, 1000);
                if (half_open >= hard_limit || expected.empty()) {
                    ++counters_.half_open_refused;
                    return;
                }
                notify_payload n;
                n.type = static_cast<uint16_t>(notify_type::cookie);
                n.data = expected;
                ike_header reply;
                reply.spi_i = h.spi_i;
                reply.exchange = static_cast<uint8_t>(exchange_type::ike_sa_init);
                reply.flags = flag_response;
                std::vector<payload> p{payload{payload_type::notify, false, std::move(n)}};
                io_.send(local, remote, serialize_message(reply, p));
                ++counters_.cookies_sent;
                return;
            }
        }
        uint64_t spi = new_spi();
        auto sa = std::make_unique<ike_sa>(io_, peer, ike_sa::role::responder, h.spi_i, spi, local, remote, retransmit_);
        give_credentials(*sa);
        sa->set_fragment_counters(&counters_.fragments);
        auto& ref = *sa;
        add_sa(spi, std::move(sa));
        half_open_add(key, spi);
        ref.respond_init(msg, datagram);
        after(spi);
        return;
    }

    // §2.1: the responder's SPI names the SA for the responder, the initiator's for the initiator.
    uint64_t ours = h.from_initiator() ? h.spi_r : h.spi_i;
    auto it = sas_.find(ours);
    if (it == sas_.end() || (h.from_initiator() && it->second->spi_i() != h.spi_i)) {
        ++counters_.unknown_spi;
        io_.log(log_level::debug, "-", "dropped a message for an unknown IKE SA from " + to_string(remote));
        return;
    }
    it->second->handle(msg, datagram, local, remote);
    after(ours);
}

void ike_manager::schedule(uint64_t spi, steady_time when)
{
    unschedule(spi);
    if (when == steady_time::max()) {
        return;
    }
    deadlines_.insert({when, spi});
    deadline_of_[spi] = when;
}

void ike_manager::unschedule(uint64_t spi)
{
    if (auto it = deadline_of_.find(spi); it != deadline_of_.end()) {
        deadlines_.erase({it->second, spi});
        deadline_of_.erase(it);
    }
}

void ike_manager::retry_later(const peer_ptr& peer)
{
    auto& r = retries_[peer->name];
    // 2 s, doubling to 2 minutes between attempts.
    r.second = r.second.count() == 0 ? std::chrono::seconds(2) : std::min(r.second * 2, std::chrono::seconds(120));
    r.first = io_.now() + r.second;
    io_.log(log_level::info, peer->name, "retrying in " + std::to_string(r.second.count()) + " s");
}

void ike_manager::after(uint64_t spi)
{
    auto it = sas_.find(spi);
    if (it == sas_.end()) {
        return;
    }
    ike_sa& sa = *it->second;
    // IKE SA rekeys (§2.18) leave a new IKE SA behind; it joins the table under its own SPI.
    while (auto next = sa.take_successor()) {
        give_credentials(*next);
        uint64_t next_spi = next->local_spi();
        add_sa(next_spi, std::move(next));
        after(next_spi);
        it = sas_.find(spi);
    }
    if (sa.dead()) {
        auto peer = sa.shared_peer();
        bool restart = sa.restart_requested();
        bool dpd_failed = sa.dpd_failed();
        if (dpd_failed && peer->dpd_action == config::ike_dpd_action::clear) {
            // DPD action clear: the tunnel stays down (its traps keep dropping its traffic) until the
            // operator initiates it; `start: on-traffic` tunnels still start on traffic, as
            // strongSwan's start_action=trap does whatever dpd_action says.
            dpd_cleared_.insert(peer->name);
            keep_up_.erase(peer->name);
            retries_.erase(peer->name);
        } else if (dpd_failed && peer->dpd_action == config::ike_dpd_action::hold) {
            io_.log(log_level::info, peer->name, "DPD action hold: the next packet of its tunnels re-establishes it");
        }
        bool failed_attempt = sa.sa_role() == ike_sa::role::initiator && !sa.established_at();
        unschedule(spi);
        half_open_remove(spi);
        erase_sa(it);
        if (restart && peer->remote_address && !is_home(peer->name)) {
            // Initiating belongs to the peer's home shard (keep-up and retries live there).
            directory_->post(home_shard(peer->name, directory_->shard_count()),
                             [name = peer->name](ike_manager& home) { home.restart_peer(name); });
        } else if (restart && peer->remote_address) {
            // DPD action restart: initiate again now, and keep trying until it is back.
            keep_up_.insert(peer->name);
            std::vector<std::string> tunnels;
            for (const auto& t : peer->tunnels) {
                tunnels.push_back(t.name);
            }
            create_initiator(peer, std::move(tunnels));
        } else if (failed_attempt && keep_up_.count(peer->name) != 0 && !has_live_sa(peer->name)) {
            retry_later(peer);
        }
        return;
    }
    if (sa.take_initial_contact()) {
        drop_older_sas(sa);
    }
    if (sa.sa_state() == ike_sa::state::established) {
        half_open_remove(spi);
        retries_.erase(sa.peer().name);
        dpd_cleared_.erase(sa.peer().name);
    }
    schedule(spi, sa.next_deadline());
}

// RFC 7296 §2.4: the peer sent INITIAL_CONTACT, so it has no other IKE SA with us; ours with the same
// peer and authenticated identity are left over from before it restarted. Without this their Child
// SAs (same selectors) would stay in the data plane until DPD noticed.
void ike_manager::drop_older_sas(const ike_sa& newer)
{
    std::vector<uint64_t> stale;
    for (const auto& [spi, other] : sas_) {
        if (other.get() != &newer && !other->dead() && other->established_at() && other->peer().name == newer.peer().name &&
            other->remote_identity() == newer.remote_identity()) {
            stale.push_back(spi);
        }
    }
    for (uint64_t spi : stale) {
        auto it = sas_.find(spi);
        io_.log(log_level::info, it->second->name(), "replaced by " + newer.name() + " (INITIAL_CONTACT)");
        ++counters_.initial_contact_drops;
        it->second->forget_silently();
        after(spi);
    }
    // The peer's older IKE SAs may be in other shards (their SPIs hashed elsewhere).
    if (directory_ != nullptr && newer.established_at()) {
        for (size_t other = 0; other < directory_->shard_count(); ++other) {
            if (other != shard_) {
                directory_->post(other, [peer = newer.peer().name, id = newer.remote_identity(),
                                         when = *newer.established_at(), name = newer.name()](
                                            ike_manager& m) { m.drop_older_remote(peer, id, when, name); });
            }
        }
    }
}

void ike_manager::drop_older_remote(const std::string& peer, const std::string& identity,
                                    std::chrono::system_clock::time_point newer_established,
                                    const std::string& newer_name)
{
    // Only SAs established before the newer one: by the time this runs here, the peer may have set up
    // another IKE SA in this shard (with its own INITIAL_CONTACT, or not), which must stay.
    std::vector<uint64_t> stale;
    for (const auto& [spi, other] : sas_) {
        if (!other->dead() && other->established_at() && *other->established_at() <= newer_established &&
            other->peer().name == peer && other->remote_identity() == identity) {
            stale.push_back(spi);
        }
    }
    for (uint64_t spi : stale) {
        auto it = sas_.find(spi);
        io_.log(log_level::info, it->second->name(),
                "replaced by " + newer_name + " (INITIAL_CONTACT, another shard)");
        ++counters_.initial_contact_drops;
        it->second->forget_silently();
        after(spi);
    }
}

void ike_manager::restart_peer(const std::string& name)
{
    auto peer = find_peer(name);
    if (!peer || !peer->remote_address) {
        return; // removed by a reload meanwhile
    }
    keep_up_.insert(peer->name);
    std::vector<std::string> tunnels;
    for (const auto& t : peer->tunnels) {
        tunnels.push_back(t.name);
    }
    create_initiator(peer, std::move(tunnels));
}

void ike_manager::tick()
{
    auto now = io_.now();
    // Each due SA ticks once per call, even if it files a deadline that is already due again.
    std::vector<uint64_t> due;
    for (auto it = deadlines_.begin(); it != deadlines_.end() && it->first <= now; ++it) {
        due.push_back(it->second);
        auto late = std::chrono::duration_cast<std::chrono::microseconds>(now - it->first).count();
        ++counters_.timers_run;
        counters_.timers_late_10ms += late > 10'000;
        counters_.timers_late_100ms += late > 100'000;
        counters_.timer_late_max_us = std::max<uint64_t>(counters_.timer_late_max_us, static_cast<uint64_t>(late));
    }
    for (uint64_t spi : due) {
        unschedule(spi);
        if (auto it = sas_.find(spi); it != sas_.end()) {
            it->second->tick();
            after(spi);
        }
    }
    for (auto it = retries_.begin(); it != retries_.end();) {
        if (it->second.first > now) {
            ++it;
            continue;
        }
        auto peer = find_peer(it->first);
        it->second.first = steady_time::max(); // waiting for this attempt's outcome
        ++it;
        if (peer && peer->remote_address && !has_live_sa(peer->name)) {
            std::vector<std::string> tunnels;
            for (const auto& t : peer->tunnels) {
                tunnels.push_back(t.name);
            }
            create_initiator(peer, std::move(tunnels));
        }
    }
}

steady_time ike_manager::next_deadline() const
{
    steady_time next = deadlines_.empty() ? steady_time::max() : deadlines_.begin()->first;
    for (const auto& [peer, r] : retries_) {
        next = std::min(next, r.first);
    }
    return next;
}

namespace {

bool covers(const std::vector<config::ip_prefix>& list, const config::ip_prefix& x)
{
    return std::any_of(list.begin(), list.end(), [&](const config::ip_prefix& p) {
        if (p.address.family != x.address.family || p.length > x.length) {
            return false;
        }
        for (unsigned bit = 0; bit < p.length; ++bit) {
            uint8_t m = static_cast<uint8_t>(0x80u >> (bit % 8));
            if ((p.address.bytes[bit / 8] & m) != (x.address.bytes[bit / 8] & m)) {
                return false;
            }
        }
        return true;
    });
}

} // namespace

std::optional<std::string> acquire_target(const config::ike_config& config, const config::ip_prefix& local,
                                          const config::ip_prefix& remote)
{
    for (const auto& p : config.peers) {
        for (const auto& t : p.tunnels) {
            if (covers(t.local_ts, local) && covers(t.remote_ts, remote)) {
                return p.name;
            }
        }
    }
    return std::nullopt;
}

void ike_manager::on_acquire(const config::ip_prefix& local, const config::ip_prefix& remote)
{
    ++counters_.acquires;
    for (const auto& p : peers_) {
        for (const auto& t : p->tunnels) {
            if (!covers(t.local_ts, local) || !covers(t.remote_ts, remote)) {
                continue;
            }
            const std::string name = p->name + "/" + t.name;
            std::string why; // non-empty: the acquire is not acted on, the traffic stays dropped
            if (t.start == config::ike_start_action::none) {
                why = "it has start: none (the peer or `espresso initiate " + name + "` brings it up)";
            } else if (t.start == config::ike_start_action::immediately && dpd_cleared_.count(p->name) != 0) {
                why = "DPD action clear took it down (`espresso initiate " + name + "` brings it back)";
            } else if (!p->remote_address) {
                why = "the peer has remote-address any; it can only respond";
            }
            // One line per tunnel and minute: the data plane raises acquires once a second per worker.
            auto now = io_.now();
            auto& last = acquire_logged_[name];
            bool say = last == steady_time{} || now - last >= std::chrono::seconds(60);
            if (say) {
                last = now;
            }
            std::string flow = config::to_string(local) + " === " + config::to_string(remote);
            if (!why.empty()) {
                ++counters_.acquires_ignored;
                if (say) {
                    io_.log(log_level::info, p->name, "traffic " + flow + " dropped: tunnel " + t.name + " is down and " + why);
                }
                return;
            }
            ++counters_.acquires_initiated;
            if (say) {
                io_.log(log_level::info, p->name, "traffic " + flow + " needs tunnel " + t.name + ": initiating");
            }
            initiate(name);
            return;
        }
    }
    ++counters_.acquires_unmatched;
}

void ike_manager::on_expire(config::direction dir, uint32_t spi, bool hard)
{
    for (auto& [ike_spi, sa] : sas_) {
        for (const auto& c : sa->children()) {
            uint32_t match = dir == config::direction::inbound ? c.spi_in : c.spi_out;
            if (match == spi) {
                if (!hard) {
                    sa->on_soft_expire(c.spi_in);
                } else {
                    sa->rekey_child(c.spi_in);
                }
                after(ike_spi);
                return;
            }
        }
    }
}

} // namespace espresso::cp
