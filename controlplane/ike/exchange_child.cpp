// CREATE_CHILD_SA (RFC 7296 §1.3): additional Child SAs and Child SA rekeying, make-before-break
// (new inbound, new outbound, then delete the old pair; ARCHITECTURE.md). As the rekey's responder
// the new outbound SA waits until the initiator deletes the old Child SA (pending_outbound in ike_sa.h,
// §2.8). IKE SA rekeying (§1.3.2) is in exchange_ike_rekey.cpp.
#include <algorithm>
#include <array>
#include <cstdio>
#include <memory>

#include "ike_sa.h"
#include "wire_helpers.h"

namespace espresso::cp {
void ike_sa::start_child(const std::string& tunnel)
{
    const auto* t = find_tunnel(tunnel);
    if (t == nullptr) {
        log(log_level::error, "no tunnel '" + tunnel + "' under peer " + peer_ptr_->name);
        return;
    }
    for (const auto& pair : missing_pairs(*t)) {
        start_child_pair(tunnel, pair);
    }
}

std::string ike_sa::child_not_negotiated(const std::string& tunnel, const ts_pair& pair)
{
    return "new Child SA for tunnel " + tunnel + " (" + config::to_string(pair.local) + " === " +
           config::to_string(pair.remote) + ") not negotiated";
}

void ike_sa::start_child_pair(const std::string& tunnel, const ts_pair& pair)
{
    if (rekeying_ike_) {
        // Not queued behind our IKE SA rekey (its Delete of this SA would drop it): asked for on the
        // IKE SA the Child SAs move to, or here if the rekey fails (run_deferred).
        log(log_level::info, "new Child SA for tunnel " + tunnel + " waits for our IKE SA rekey to finish");
        deferred_starts_.push_back({tunnel, pair, 0});
        return;
    }
    auto offer_opt = make_child_offer(tunnel, true, &pair);
    if (!offer_opt) {
        return;
    }
    offer_opt->pair = pair;
    auto offer = std::make_shared<child_offer>(std::move(*offer_opt));
    starting_.push_back({tunnel, pair, offer->spi_in});
    auto started = [this, spi_in = offer->spi_in] {
        std::erase_if(starting_, [&](const starting_child& s) { return s.spi_in == spi_in; });
    };
    pending_request r;
    r.exchange = exchange_type::create_child_sa;
    r.build = [offer] { return offer->payloads; };
    r.unsent = child_not_negotiated(tunnel, pair);
    r.on_reply = [this, offer, started](const std::vector<payload>& reply) {
        started();
        const auto* np = find_payload(reply, payload_type::nonce);
        bytes nr = np != nullptr ? std::get<nonce_payload>(np->body).data : bytes{};
        if (np == nullptr && find_payload(reply, payload_type::sa) != nullptr) {
            log(log_level::error, "CREATE_CHILD_SA answer without a nonce");
            return;
        }
        bool ok = complete_child(*offer, reply, nullptr, offer->nonce, nr);
        if (!ok && !offer->rekeys && offer->pair) {
            // Refused: not asked again for 30 s, however much traffic raises acquires for it.
            std::erase_if(refused_pairs_, [now = io_.now()](const refused_pair& x) { return now >= x.until; });
            refused_pairs_.push_back({offer->tunnel, *offer->pair, io_.now() + std::chrono::seconds(30)});
        }
        if (offer->rekeys) {
            uint32_t old = *offer->rekeys;
            if (ok) {
                delete_child(old, true);
            } else {
                for (auto& c : children_) {
                    if (c.spi_in == old) {
                        c.st = child_sa::state::installed; // try again at the next deadline
                        c.rekey_at = io_.now() + std::chrono::seconds(30);
                    }
                }
            }
        }
    };
    r.on_timeout = [this, started] {
        started();
        fail("peer " + peer_ptr_->name + " did not answer CREATE_CHILD_SA.", "check the path to the peer and its log.");
    };
    queue_request(std::move(r));
}

void ike_sa::rekey_child(uint32_t spi_in)
{
    auto it = std::find_if(children_.begin(), children_.end(), [&](const child_sa& c) { return c.spi_in == spi_in; });
    if (it == children_.end() || it->st != child_sa::state::installed) {
        return;
    }
    if (it->outbound_pending()) {
        // Not before the rekey that made this Child SA is finished (its outbound SA in use).
        it->rekey_at = it->pending_out->deadline + std::chrono::seconds(1);
        return;
    }
    if (rekeying_ike_) {
        // Not queued behind our IKE SA rekey: the Child SA moves to the new IKE SA when that
        // completes, and this one is deleted with its queue. The new IKE SA rekeys it a second later.
        it->rekey_at = io_.now() + std::chrono::seconds(1);
        return;
    }
    // The rekey asks for the selectors the Child SA has (RFC 7296 §2.9.2), not the tunnel's lists.
    const ts_pair own{it->local, it->remote};
    auto offer_opt = make_child_offer(it->tunnel, true, &own);
    if (!offer_opt) {
        return;
    }
    it->st = child_sa::state::rekeyed;
    rekeying_children_.push_back(spi_in);
    offer_opt->rekeys = spi_in;
    // §1.3.3: REKEY_SA names the SA being rekeyed by the SPI the peer uses to send to us (our inbound).
    offer_opt->payloads.insert(offer_opt->payloads.begin(),
                               make_notify(notify_type::rekey_sa, {}, static_cast<uint8_t>(protocol_id::esp), be32(spi_in)));
    log(log_level::info, "rekeying Child SA " + it->tunnel);
    auto offer = std::make_shared<child_offer>(std::move(*offer_opt));
    pending_request r;
    r.exchange = exchange_type::create_child_sa;
    r.build = [offer] { return offer->payloads; };
    r.on_reply = [this, offer](const std::vector<payload>& reply) {
        const auto* np = find_payload(reply, payload_type::nonce);
        bytes nr = np != nullptr ? std::get<nonce_payload>(np->body).data : bytes{};
        bool ok = np != nullptr && complete_child(*offer, reply, nullptr, offer->nonce, nr);
        uint32_t old = *offer->rekeys;
        std::erase(rekeying_children_, old);
        if (auto retired = std::find(retired_rekeys_.begin(), retired_rekeys_.end(), old); retired != retired_rekeys_.end()) {
            // A reload removed or changed the tunnel during the rekey (reconfigure): neither the old
            // Child SA nor the one with the old settings just created stays.
            retired_rekeys_.erase(retired);
            if (ok) {
                delete_child(offer->spi_in, true);
            } else {
                delete_child(old, true);
                return;
            }
        }
        if (ok) {
            auto col = std::find_if(collisions_.begin(), collisions_.end(),
                                    [&](const rekey_collision& c) { return c.old_spi_in == old; });
            if (col != collisions_.end()) {
                // §2.8.1: both ends rekeyed the same Child SA. The SA created by the exchange with the
                // lowest of the four nonces is redundant; the node that initiated that exchange
                // deletes it. Both ends then delete the old SA.
                std::array<const bytes*, 4> nonces{&offer->nonce, &nr, &col->nonce_i, &col->nonce_r};
                auto lowest = std::min_element(nonces.begin(), nonces.end(), [](const bytes* a, const bytes* b) {
                    return std::lexicographical_compare(a->begin(), a->end(), b->begin(), b->end());
                });
                bool ours_redundant = lowest == nonces.begin() || lowest == nonces.begin() + 1;
                log(log_level::info, std::string("Child SA rekey collision (RFC 7296 §2.8.1): ") +
                                         (ours_redundant ? "our" : "the peer's") + " new Child SA is redundant");
                if (ours_redundant && std::any_of(children_.begin(), children_.end(), [&](const child_sa& c) {
                        return c.spi_in == offer->spi_in && c.st != child_sa::state::deleting;
                    })) {
                    // The peer's survives: its held outbound SA is installed when the old Child SA
                    // goes (install_successors_of), or at its deadline.
                    delete_child(offer->spi_in, true);
                } else {
                    // The peer deletes its redundant Child SA: its outbound SA is never used.
                    for (auto& c : children_) {
                        if (c.spi_in == col->their_new_spi_in && c.pending_out) {
                            c.pending_out->abandon();
                            c.pending_out->deadline = io_.now() + std::chrono::seconds(30);
                        }
                    }
                }
                collisions_.erase(col);
            }
            delete_child(old, true);
            return;
        }
        std::erase_if(collisions_, [&](const rekey_collision& c) { return c.old_spi_in == old; });
        std::string why = "no acceptable answer";
        for (const auto* n : find_notifies(reply)) {
            if (n->type < 16384) { // an error notify (RFC 7296 §3.10.1), e.g. TEMPORARY_FAILURE (§2.25)
                why = notify_name(n->type);
                break;
            }
        }
        bool retry = false;
        for (auto& c : children_) {
            if (c.spi_in == old) {
                c.st = child_sa::state::installed;
                c.rekey_at = io_.now() + std::chrono::seconds(30);
                retry = true;
            }
        }
        log(log_level::warning, "Child SA rekey failed (" + why + ")" +
                                    (retry ? "; retrying in 30 s" : "; the Child SA it rekeyed is gone"));
    };
    r.on_timeout = [this] {
        fail("peer " + peer_ptr_->name + " did not answer a Child SA rekey.", "check the path to the peer and its log.");
    };
    queue_request(std::move(r));
}

void ike_sa::install_pending_outbound(child_sa& child, const std::string& why)
{
    auto pending = std::move(child.pending_out); // wiped when this goes, installed or not
    if (!pending || !pending->sa) {
        return;
    }
    std::string err = io_.installer().install(*pending->sa);
    pending->abandon();
    if (!err.empty()) {
        // The inbound SA stays; the peer's Delete of the old Child SA then leaves our traffic to the
        // trap policy (dropped, counted) until the next rekey or a restart.
        io_.failure({std::chrono::system_clock::now(), peer_ptr_->name, to_string(remote_),
                     "the data plane refused outbound SA " + std::to_string(child.spi_out) + " of a rekeyed Child SA: " +
                         err + ".",
                     "check espresso-dp's log and `espresso show crypto ipsec sa`."});
        log(log_level::error, "installing the held outbound SA failed: " + err);
        return;
    }
    char spi[16];
    std::snprintf(spi, sizeof(spi), "0x%08x", child.spi_out);
    log(log_level::info, "Child SA " + child.tunnel + " outbound SA " + spi + " installed (" + why + ")");
}

void ike_sa::install_successors_of(uint32_t old_spi_in, const std::string& why)
{
    for (auto& c : children_) {
        if (c.pending_out && c.pending_out->sa && c.pending_out->replaces == old_spi_in) {
            install_pending_outbound(c, why);
        }
    }
}

void ike_sa::on_soft_expire(uint32_t spi_in)
{
    rekey_child(spi_in);
}

void ike_sa::process_create_child_request(uint32_t message_id, const std::vector<payload>& payloads)
{
    if (state_ == state::deleting) {
        // Our Delete of this IKE SA (and so of all its Child SAs, §1.4.1) is under way: the request is
        // answered, never left to time out. RFC 7296 §2.25 answers a request that cannot be completed
        // for a temporary reason with TEMPORARY_FAILURE, and §2.25.1/§2.25.2 apply it to rekeys of
        // a Child SA or the IKE SA the responder is closing; a new Child SA is in the same position.
        // The peer retries later, on the IKE SA that replaced this one if a rekey did.
        log(log_level::info, "the peer's CREATE_CHILD_SA request arrived while this IKE SA is being deleted: "
                             "TEMPORARY_FAILURE (RFC 7296 §2.25)");
        send_response(exchange_type::create_child_sa, message_id, {make_notify(notify_type::temporary_failure)});
        return;
    }
    const auto* sap = find_payload(payloads, payload_type::sa);
    if (sap != nullptr) {
        const auto& sa = std::get<sa_payload>(sap->body);
        if (!sa.proposals.empty() && sa.proposals.front().protocol == static_cast<uint8_t>(protocol_id::ike)) {
            process_ike_rekey_request(message_id, payloads);
            return;
        }
    }
    std::optional<uint32_t> rekeys;
    if (const auto* n = find_notify(payloads, notify_type::rekey_sa)) {
        if (n->spi.size() != 4) {
            send_response(exchange_type::create_child_sa, message_id, {make_notify(notify_type::invalid_syntax)});
            return;
        }
        uint32_t spi = (uint32_t{n->spi[0]} << 24) | (uint32_t{n->spi[1]} << 16) | (uint32_t{n->spi[2]} << 8) | n->spi[3];
        auto it = std::find_if(children_.begin(), children_.end(), [&](const child_sa& c) { return c.spi_out == spi; });
        if (it == children_.end()) {
            send_response(exchange_type::create_child_sa, message_id,
                          {make_notify(notify_type::child_sa_not_found, {}, static_cast<uint8_t>(protocol_id::esp), n->spi)});
            return;
        }
        if (it->st == child_sa::state::deleting) {
            // §2.25: a rekey of a Child SA we are deleting (we rekeyed it already).
            send_response(exchange_type::create_child_sa, message_id, {make_notify(notify_type::temporary_failure)});
            return;
        }
        rekeys = spi;
        uint32_t old_in = it->spi_in;
        if (std::find(rekeying_children_.begin(), rekeying_children_.end(), old_in) != rekeying_children_.end()) {
            // Our rekey of the same Child SA is in flight: remember this one's nonces (§2.8.1).
            auto reply = accept_child(payloads, true, rekeys);
            const auto* ni = find_payload(payloads, payload_type::nonce);
            const auto* nr = find_payload(reply, payload_type::nonce);
            const auto* sa = find_payload(reply, payload_type::sa);
            if (ni != nullptr && nr != nullptr && sa != nullptr) {
                const auto& spi_bytes = std::get<sa_payload>(sa->body).proposals.front().spi;
                rekey_collision c;
                c.old_spi_in = old_in;
                c.their_new_spi_in = spi_bytes.size() == 4 ? (uint32_t{spi_bytes[0]} << 24) | (uint32_t{spi_bytes[1]} << 16) |
                                                                 (uint32_t{spi_bytes[2]} << 8) | spi_bytes[3]
                                                           : 0;
                c.nonce_i = std::get<nonce_payload>(ni->body).data;
                c.nonce_r = std::get<nonce_payload>(nr->body).data;
                collisions_.push_back(std::move(c));
            }
            send_response(exchange_type::create_child_sa, message_id, reply);
            return;
        }
    }
    send_response(exchange_type::create_child_sa, message_id, accept_child(payloads, true, rekeys));
}

} // namespace espresso::cp

namespace espresso::cp {
std::vector<std::string> ike_sa::reconfigure(std::shared_ptr<const config::ike_peer_config> next,
                                             const std::vector<std::string>& removed,
                                             const std::vector<std::string>& changed)
{
    auto in = [](const std::vector<std::string>& v, const std::string& name) {
        return std::find(v.begin(), v.end(), name) != v.end();
    };
    std::vector<std::string> deleted;
    if (state_ == state::deleting || state_ == state::dead) {
        peer_ptr_ = std::move(next);
        return deleted;
    }
    // Deletes go out with the settings they were made with; only then the new settings apply.
    std::vector<uint32_t> to_delete;
    for (auto& c : children_) {
        if (!in(removed, c.tunnel) && !in(changed, c.tunnel)) {
            continue; // an unchanged tunnel: not touched
        }
        if (!in(deleted, c.tunnel)) {
            deleted.push_back(c.tunnel);
        }
        if (c.st == child_sa::state::rekeyed &&
            std::find(rekeying_children_.begin(), rekeying_children_.end(), c.spi_in) != rekeying_children_.end()) {
            // Our rekey of it is outstanding: its answer deletes both (see rekey_child).
            retired_rekeys_.push_back(c.spi_in);
        } else if (c.st != child_sa::state::deleting) {
            to_delete.push_back(c.spi_in);
        }
    }
    for (uint32_t spi : to_delete) {
        delete_child(spi, true);
    }
    peer_ptr_ = std::move(next);
    // A tunnel no longer configured is not offered later either.
    std::erase_if(pending_tunnels_, [&](const std::string& t) { return find_tunnel(t) == nullptr; });
    // Our IKE_AUTH request (with the first Child SA's offer) is out: the initiator after IKE_SA_INIT.
    const bool auth_outstanding = role_ == role::initiator && state_ == state::init_done && !auth_tunnel_.empty();
    if (auth_outstanding && (in(removed, auth_tunnel_) || in(changed, auth_tunnel_))) {
        auth_redo_ = in(removed, auth_tunnel_) ? auth_redo::remove : auth_redo::renegotiate;
        if (!in(deleted, auth_tunnel_)) {
            deleted.push_back(auth_tunnel_);
        }
    }
    // A changed tunnel that was up here comes back with its new settings.
    std::vector<std::string> again;
    for (const auto& name : changed) {
        if (in(deleted, name) && !(auth_outstanding && name == auth_tunnel_)) {
            again.push_back(name);
        }
    }
    start_tunnels(again);
    return deleted;
}

void ike_sa::start_tunnels(const std::vector<std::string>& tunnels)
{
    for (const auto& name : tunnels) {
        if (find_tunnel(name) == nullptr) {
            continue;
        }
        if (state_ == state::established) {
            log(log_level::info, "reload: negotiating Child SA " + name);
            start_child(name);
        } else if (role_ == role::initiator && state_ != state::deleting && state_ != state::dead &&
                   std::find(pending_tunnels_.begin(), pending_tunnels_.end(), name) == pending_tunnels_.end()) {
            pending_tunnels_.push_back(name); // offered once the IKE SA is up
        }
    }
}

} // namespace espresso::cp
