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

bool address_counts::try_add_half_open(const std::string& address, uint32_t limit)
{
    std::lock_guard lock(mutex_);
    auto& c = counts_[address];
    if (limit != 0 && c.half_open >= limit) {
        forget_if_zero(counts_.find(address));
        return false;
    }
    ++c.half_open;
    return true;
}

void address_counts::remove_half_open(const std::string& address)
{
    std::lock_guard lock(mutex_);
    if (auto it = counts_.find(address); it != counts_.end() && it->second.half_open > 0) {
        --it->second.half_open;
        forget_if_zero(it);
    }
}

void address_counts::add_established(const std::string& address)
{
    std::lock_guard lock(mutex_);
    ++counts_[address].established;
}

void address_counts::remove_established(const std::string& address)
{
    std::lock_guard lock(mutex_);
    if (auto it = counts_.find(address); it != counts_.end() && it->second.established > 0) {
        --it->second.established;
        forget_if_zero(it);
    }
}

size_t address_counts::half_open(const std::string& address) const
{
    std::lock_guard lock(mutex_);
    auto it = counts_.find(address);
    return it == counts_.end() ? 0 : it->second.half_open;
}

size_t address_counts::established(const std::string& address) const
{
    std::lock_guard lock(mutex_);
    auto it = counts_.find(address);
    return it == counts_.end() ? 0 : it->second.established;
}

// Addresses without IKE SAs leave the table: spoofed sources must not make it grow.
void address_counts::forget_if_zero(std::unordered_map<std::string, count>::iterator it)
{
    if (it != counts_.end() && it->second.half_open == 0 && it->second.established == 0) {
        counts_.erase(it);
    }
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
    addresses_ = directory_ != nullptr ? &directory_->per_address() : &own_addresses_;
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

void ike_manager::on_home(const std::string& peer, std::function<void(ike_manager&)> task)
{
    if (is_home(peer)) {
        task(*this);
    } else {
        directory_->post(home_shard(peer, directory_->shard_count()), std::move(task));
    }
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
    if (auto e = established_address_.find(it->first); e != established_address_.end()) {
        addresses_->remove_established(e->second);
        established_address_.erase(e);
    }
    if (directory_ != nullptr) {
        directory_->sa_removed(it->second->peer().name, shard_);
    }
    sas_.erase(it);
}

void ike_manager::half_open_add(const half_open_key& key, uint64_t spi, std::string address)
{
    half_open_[key] = spi;
    half_open_of_[spi] = key;
    half_open_address_[spi] = std::move(address); // admit_from() counted it already
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
    if (auto a = half_open_address_.find(spi); a != half_open_address_.end()) {
        addresses_->remove_half_open(a->second);
        half_open_address_.erase(a);
    }
}

bool ike_manager::admit_from(const std::string& address)
{
    // Established first: a peer at its IKE SA limit gets nothing, not even a half-open SA. The count
    // can pass the limit by the SAs that were half-open when it was reached (at most
    // max-half-open-per-address), as the limit is checked here and not again at IKE_AUTH.
    if (config_.max_sas_per_address != 0) {
        size_t established = addresses_->established(address);
        if (established >= config_.max_sas_per_address) {
            ++counters_.address_sas_refused;
            log_refusal(1, "IKE_SA_INIT from " + address + " refused: " + std::to_string(established) +
                               " IKE SAs with this address are up (ike.max-sas-per-address: " +
                               std::to_string(config_.max_sas_per_address) + ")");
            return false;
        }
    }
    if (!addresses_->try_add_half_open(address, config_.max_half_open_per_address)) {
        ++counters_.address_half_open_refused;
        log_refusal(0, "IKE_SA_INIT from " + address + " refused: " +
                           std::to_string(config_.max_half_open_per_address) +
                           " half-open IKE SAs from this address already (ike.max-half-open-per-address)");
        return false;
    }
    return true;
}

bool ike_manager::log_refusal(size_t reason, const std::string& text)
{
    // A flood must not become a flood of log lines: one per reason and 10 s, the rest only counted.
    auto& l = refusal_logs_[reason];
    auto now = io_.now();
    if (l.last != steady_time{} && now - l.last < std::chrono::seconds(10)) {
        ++l.suppressed;
        return false;
    }
    std::string more = l.suppressed == 0 ? ""
                                         : "; " + std::to_string(l.suppressed) +
                                               " more refused for the same reason in the 10 s before (counted only)";
    l.last = now;
    l.suppressed = 0;
    io_.log(log_level::warning, "-", text + more);
    return true;
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

// Settings as one string each: equal fingerprints = nothing to do on reload. The IKE one holds the
// PSK, so both are wiped after use and never logged.
struct fingerprint_builder {
    std::string f;
    void add(const std::string& s)
    {
        f += std::to_string(s.size());
        f += ':';
        f += s;
    }
    void add_prefixes(const std::vector<config::ip_prefix>& v)
    {
        for (const auto& x : v) {
            add(config::to_string(x));
        }
        add("|");
    }
    void add_proposals(const std::vector<config::ike_proposal_config>& v)
    {
        for (const auto& x : v) {
            add(x.text);
        }
        add("|");
    }
};

// Everything of a peer but its tunnels: what its IKE SA was negotiated and authenticated with.
std::string ike_fingerprint(const config::ike_peer_config& p)
{
    fingerprint_builder b;
    b.add(p.name);
    b.add(std::to_string(p.version));
    b.add(config::to_string(p.local_address));
    b.add(p.remote_address ? config::to_string(*p.remote_address) : "any");
    b.add(std::to_string(p.local_port) + "/" + std::to_string(p.remote_port));
    b.add_proposals(p.proposals);
    b.add(p.allow_legacy ? "legacy" : "");
    b.add(std::to_string(static_cast<int>(p.local_id.kind)) + p.local_id.text);
    b.add(std::to_string(static_cast<int>(p.remote_id.kind)) + p.remote_id.text);
    b.add(std::to_string(static_cast<int>(p.auth.method)));
    b.add(p.auth.psk);
    b.add(p.auth.certificate);
    b.add(p.auth.private_key);
    for (const auto& ca : p.auth.ca) {
        b.add(ca);
    }
    b.add(std::to_string(p.rekey_time) + "/" + std::to_string(p.dpd_interval) + "/" +
          std::to_string(static_cast<int>(p.dpd_action)));
    b.add(std::to_string(static_cast<int>(p.fragmentation)) + "/" + std::to_string(p.fragment_size));
    return std::move(b.f);
}

std::string tunnel_fingerprint(const config::ike_tunnel_config& t)
{
    fingerprint_builder b;
    b.add(t.name);
    b.add_prefixes(t.local_ts);
    b.add_prefixes(t.remote_ts);
    b.add(std::to_string(static_cast<int>(t.mode)));
    b.add_proposals(t.esp_proposals);
    b.add(std::to_string(t.rekey_time) + "/" + std::to_string(t.rekey_bytes) + "/" + std::to_string(t.rekey_packets) +
          "/" + std::to_string(static_cast<int>(t.start)) + "/" + std::to_string(t.replay_window));
    return std::move(b.f);
}

bool same_ike_settings(const config::ike_peer_config& a, const config::ike_peer_config& b)
{
    std::string fa = ike_fingerprint(a), fb = ike_fingerprint(b);
    bool same = fa == fb;
    OPENSSL_cleanse(fa.data(), fa.size());
    OPENSSL_cleanse(fb.data(), fb.size());
    return same;
}

const config::ike_tunnel_config* tunnel_named(const config::ike_peer_config& p, const std::string& name)
{
    for (const auto& t : p.tunnels) {
        if (t.name == name) {
            return &t;
        }
    }
    return nullptr;
}

// Per tunnel of a peer whose IKE settings are the same: which tunnels went, changed, came or stayed.
struct tunnel_diff {
    std::vector<std::string> removed, changed, added, unchanged;
    bool empty() const noexcept { return removed.empty() && changed.empty() && added.empty(); }
};

tunnel_diff diff_tunnels(const config::ike_peer_config& old, const config::ike_peer_config& next)
{
    tunnel_diff d;
    for (const auto& t : old.tunnels) {
        if (tunnel_named(next, t.name) == nullptr) {
            d.removed.push_back(t.name);
        }
    }
    for (const auto& t : next.tunnels) {
        const auto* before = tunnel_named(old, t.name);
        if (before == nullptr) {
            d.added.push_back(t.name);
        } else if (tunnel_fingerprint(*before) != tunnel_fingerprint(t)) {
            d.changed.push_back(t.name);
        } else {
            d.unchanged.push_back(t.name);
        }
    }
    return d;
}

bool contains(const std::vector<std::string>& v, const std::string& x)
{
    return std::find(v.begin(), v.end(), x) != v.end();
}

} // namespace

ike_manager::reload_result ike_manager::reload(config::ike_config next, bool dry_run)
{
    reload_result r;
    std::vector<peer_ptr> fresh;
    std::vector<peer_ptr> to_start;
    std::map<std::string, tunnel_diff> diffs; // peers where only tunnels differ
    for (const auto& p : next.peers) {
        auto old = find_peer(p.name);
        if (old && same_ike_settings(*old, p)) {
            auto d = diff_tunnels(*old, p);
            if (d.empty()) {
                fresh.push_back(old); // the running SAs keep pointing at it
                r.unchanged.push_back(p.name);
                for (const auto& t : p.tunnels) {
                    r.tunnels.push_back({p.name, t.name, "unchanged"});
                }
                continue;
            }
            fresh.push_back(std::make_shared<const config::ike_peer_config>(p));
            r.updated.push_back(p.name);
            for (const auto& t : d.removed) {
                r.tunnels.push_back({p.name, t, "removed"});
            }
            for (const auto& t : p.tunnels) {
                r.tunnels.push_back({p.name, t.name,
                                     contains(d.added, t.name)     ? "added"
                                     : contains(d.changed, t.name) ? "changed"
                                                                   : "unchanged"});
            }
            diffs[p.name] = std::move(d);
            continue;
        }
        auto made = std::make_shared<const config::ike_peer_config>(p);
        fresh.push_back(made);
        (old ? r.changed : r.added).push_back(p.name);
        if (old) {
            for (const auto& t : old->tunnels) {
                if (tunnel_named(p, t.name) == nullptr) {
                    r.tunnels.push_back({p.name, t.name, "removed"});
                }
            }
        }
        for (const auto& t : p.tunnels) {
            r.tunnels.push_back({p.name, t.name, old ? "renegotiated" : "added"});
        }
        to_start.push_back(made);
    }
    for (const auto& old : peers_) {
        bool kept = std::any_of(next.peers.begin(), next.peers.end(), [&](const auto& p) { return p.name == old->name; });
        if (!kept) {
            r.removed.push_back(old->name);
            for (const auto& t : old->tunnels) {
                r.tunnels.push_back({old->name, t.name, "removed"});
            }
        }
    }
    if (dry_run) {
        return r;
    }
    // Tear down what is removed or changed (with the old settings), then switch.
    for (const auto* list : {&r.removed, &r.changed}) {
        for (const auto& name : *list) {
            clear(name);
        }
    }
    peers_ = std::move(fresh);
    config_ = std::move(next);
    for (const auto* list : {&r.removed, &r.changed, &r.added, &r.updated}) {
        for (const auto& name : *list) {
            dpd_cleared_.erase(name);
        }
    }
    if (traps_wanted_) {
        // Make before break: the new selectors' traps go in before the old ones come out, so a
        // changed tunnel's traffic is never without a trap.
        for (const auto& p : peers_) {
            if (contains(r.changed, p->name) || contains(r.added, p->name)) {
                install_peer_traps(*p);
            } else if (auto d = diffs.find(p->name); d != diffs.end()) {
                std::vector<std::string> names = d->second.changed;
                names.insert(names.end(), d->second.added.begin(), d->second.added.end());
                update_tunnel_traps(*p, names, {});
            }
        }
        for (const auto& name : r.removed) {
            remove_peer_traps(name);
        }
    }
    for (const auto& p : peers_) {
        if (p->auth.method == config::ike_auth_method::pubkey &&
            (contains(r.changed, p->name) || contains(r.added, p->name))) {
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
    for (const auto& [name, d] : diffs) {
        reload_tunnels(find_peer(name), d.removed, d.changed, d.added);
        if (traps_wanted_ && !d.removed.empty()) {
            // The removed tunnels' Child SAs are being deleted: their traps go now (their traffic is no
            // longer the tunnel's; the peer's other traps stay as they are).
            update_tunnel_traps(*find_peer(name), {}, d.removed);
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

void ike_manager::reload_tunnels(const peer_ptr& next, const std::vector<std::string>& removed,
                                 const std::vector<std::string>& changed, const std::vector<std::string>& added)
{
    std::vector<uint64_t> spis;
    for (const auto& [spi, sa] : sas_) {
        if (sa->peer().name == next->name) {
            spis.push_back(spi);
        }
    }
    // Every IKE SA of the peer switches to the new settings; each renegotiates the changed tunnels
    // that were up on it.
    std::set<std::string> renegotiated;
    for (uint64_t spi : spis) {
        auto it = sas_.find(spi);
        if (it == sas_.end()) {
            continue;
        }
        auto deleted = it->second->reconfigure(next, removed, changed);
        for (const auto& t : deleted) {
            renegotiated.insert(t);
            io_.log(log_level::info, it->second->name(),
                    "reload: tunnel " + t + (contains(removed, t) ? " removed" : " changed") + ", its Child SA is deleted");
        }
    }
    // Added `start: immediately` tunnels, and changed ones that should be up but were not, start on one
    // IKE SA of the peer: an established one, else one we are setting up.
    std::vector<std::string> immediate;
    for (const auto& t : next->tunnels) {
        if (t.start == config::ike_start_action::immediately &&
            (contains(added, t.name) || (contains(changed, t.name) && renegotiated.count(t.name) == 0))) {
            immediate.push_back(t.name);
        }
    }
    if (!immediate.empty() && next->remote_address && is_home(next->name)) {
        keep_up_.insert(next->name); // as at start-up: a peer with a `start: immediately` tunnel is kept up
    }
    uint64_t carrier = 0;
    for (int pass = 0; pass < 2 && carrier == 0; ++pass) {
        for (uint64_t spi : spis) {
            auto it = sas_.find(spi);
            if (it == sas_.end() || it->second->dead() || it->second->retiring() ||
                it->second->sa_state() == ike_sa::state::deleting) {
                continue;
            }
            const auto& sa = *it->second;
            if (pass == 0 ? sa.sa_state() == ike_sa::state::established : sa.sa_role() == ike_sa::role::initiator) {
                carrier = spi;
                break;
            }
        }
    }
    if (carrier != 0) {
        sas_.at(carrier)->start_tunnels(immediate);
    } else if (!immediate.empty() && next->remote_address && is_home(next->name) && !has_live_sa(next->name) &&
               retries_.count(next->name) == 0) {
        // No IKE SA with the peer anywhere (and no retry pending, which would bring every tunnel):
        // the tunnels bring one up, as at start-up.
        create_initiator(next, std::move(immediate));
    }
    for (uint64_t spi : spis) {
        if (sas_.count(spi) != 0) {
            after(spi);
        }
    }
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

bool ike_manager::install_traps(const config::ike_peer_config& peer, const config::ike_tunnel_config& t,
                                std::vector<uint32_t>& ids)
{
    bool complete = true;
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
    return complete;
}

void ike_manager::install_peer_traps(const config::ike_peer_config& peer)
{
    auto old = std::move(traps_[peer.name]);
    auto& now = traps_[peer.name];
    now.clear();
    bool complete = true;
    for (const auto& t : peer.tunnels) {
        complete = install_traps(peer, t, now[t.name]) && complete;
    }
    if (complete) {
        traps_incomplete_.erase(peer.name);
    } else {
        traps_incomplete_.insert(peer.name);
    }
    for (const auto& [tunnel, ids] : old) {
        remove_trap_ids(peer.name, ids);
    }
}

void ike_manager::update_tunnel_traps(const config::ike_peer_config& peer, const std::vector<std::string>& names,
                                      const std::vector<std::string>& gone)
{
    auto& table = traps_[peer.name];
    bool complete = traps_incomplete_.count(peer.name) == 0;
    for (const auto& name : names) {
        const auto* t = tunnel_named(peer, name);
        if (t == nullptr) {
            continue;
        }
        std::vector<uint32_t> old = std::move(table[name]);
        table[name].clear();
        complete = install_traps(peer, *t, table[name]) && complete;
        remove_trap_ids(peer.name, old);
    }
    for (const auto& name : gone) {
        if (auto it = table.find(name); it != table.end()) {
            remove_trap_ids(peer.name, it->second);
            table.erase(it);
        }
    }
    if (complete) {
        traps_incomplete_.erase(peer.name);
    } else {
        traps_incomplete_.insert(peer.name);
    }
}

void ike_manager::remove_peer_traps(const std::string& peer)
{
    traps_incomplete_.erase(peer);
    if (auto it = traps_.find(peer); it != traps_.end()) {
        for (const auto& [tunnel, ids] : it->second) {
            remove_trap_ids(peer, ids);
        }
        traps_.erase(it);
    }
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
    for (const auto& [peer, tunnels] : traps_) {
        for (const auto& [tunnel, ids] : tunnels) {
            remove_trap_ids(peer, ids);
        }
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
    // An established IKE SA to this peer carries new Child SAs with CREATE_CHILD_SA. Not one being
    // replaced (retiring: its Child SAs moved to the new IKE SA, which is in sas_ too): on it every
    // selector pair would look missing, and what it made would go with it.
    for (auto& [spi, sa] : sas_) {
        if (sa->peer().name != peer->name || sa->dead() || sa->retiring()) {
            continue;
        }
        if (sa->sa_state() == ike_sa::state::established) {
            for (const auto& t : tunnels) {
                sa->start_child(t); // the selector pairs that have no Child SA yet, if any
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
            // Anyone can send these (spoofed, too): one log line and failure record per 10 s, so a
            // flood neither floods the log nor pushes the real failures out of `show crypto ike failures`.
            const std::string cause = "IKE_SA_INIT from " + to_string(remote) + " to " + to_string(local) +
                                      ": no peer is configured for this address.";
            if (log_refusal(2, cause)) {
                record_failure({std::chrono::system_clock::now(), config::to_string(remote.address), to_string(remote), cause,
                                "add a peer with local-address " + config::to_string(local.address) +
                                    " and remote-address " + config::to_string(remote.address) + " (or any)."});
            }
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
        // Per-address limits, before the SA and its DH exist.
        std::string address = config::to_string(remote.address);
        if (!admit_from(address)) {
            return;
        }
        uint64_t spi = new_spi();
        auto sa = std::make_unique<ike_sa>(io_, peer, ike_sa::role::responder, h.spi_i, spi, local, remote, retransmit_);
        give_credentials(*sa);
        sa->set_fragment_counters(&counters_.fragments);
        auto& ref = *sa;
        add_sa(spi, std::move(sa));
        half_open_add(key, spi, std::move(address));
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
            // strongSwan's start_action=trap does whatever dpd_action says. The peer's home shard
            // decides on acquires and retries, so it is told there (a responder's SA may live in any
            // shard).
            on_home(peer->name, [name = peer->name](ike_manager& home) {
                home.dpd_cleared_.insert(name);
                home.keep_up_.erase(name);
                home.retries_.erase(name);
            });
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
        if (established_address_.count(spi) == 0) {
            std::string address = config::to_string(sa.remote().address);
            addresses_->add_established(address);
            established_address_.emplace(spi, std::move(address));
        }
        if (is_home(sa.peer().name)) {
            retries_.erase(sa.peer().name);
            dpd_cleared_.erase(sa.peer().name);
        } else if (sa.take_newly_established()) {
            on_home(sa.peer().name, [name = sa.peer().name](ike_manager& home) {
                home.retries_.erase(name);
                home.dpd_cleared_.erase(name);
            });
        }
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
