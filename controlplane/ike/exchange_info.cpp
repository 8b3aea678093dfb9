// INFORMATIONAL (RFC 7296 §1.4): Delete of Child SAs and of the IKE SA, and liveness checks (§2.4).
#include <algorithm>

#include "ike_sa.h"
#include "wire_helpers.h"

namespace espresso::cp {
void ike_sa::process_informational_request(uint32_t message_id, const std::vector<payload>& payloads)
{
    std::vector<bytes> our_spis;
    for (const auto& p : payloads) {
        const auto* d = std::get_if<delete_payload>(&p.body);
        if (d == nullptr) {
            continue;
        }
        if (d->protocol == static_cast<uint8_t>(protocol_id::ike)) {
            // §1.4.1: the IKE SA and all its Child SAs go; the answer is empty.
            log(log_level::info, "peer deleted the IKE SA");
            send_response(exchange_type::informational, message_id, {});
            if (ike_candidate_) {
                // The peer finished its rekey of this SA without seeing ours (§2.8.2).
                take_over_candidate("the peer deleted the old IKE SA");
            }
            shutdown_local();
            state_ = state::dead;
            return;
        }
        if (d->protocol != static_cast<uint8_t>(protocol_id::esp)) {
            continue;
        }
        for (const auto& spi : d->spis) {
            if (spi.size() != 4) {
                continue;
            }
            uint32_t theirs = read_be32(spi);
            auto it = std::find_if(children_.begin(), children_.end(), [&](const child_sa& c) { return c.spi_out == theirs; });
            if (it == children_.end()) {
                continue;
            }
            // §1.4.1: answer with the SPIs of our half of each pair; unless our Delete of it is out
            // already (the Deletes crossed), in which case the answer omits it. A Delete of ours not
            // sent yet (queued behind another request, or waiting for our IKE SA rekey in
            // deferred_deletes_) has not crossed the peer's: the peer hears of our half only from
            // this answer. (A queued one still goes out and finds nothing; a deferred one is dropped.)
            std::erase(deferred_deletes_, it->spi_in);
            if (it->st != child_sa::state::deleting || !it->delete_sent) {
                our_spis.push_back(be32(it->spi_in));
            }
            log(log_level::info, "peer deleted Child SA " + it->tunnel);
            if (it->outbound_pending()) {
                // A Child SA it created by rekeying and now deletes (e.g. the loser of a §2.8.1
                // collision): its held outbound SA is never installed.
                log(log_level::info, "its outbound SA had not been used (held after the rekey); discarded");
            }
            // §2.8: the rekey's initiator deletes the old Child SA once its new SAs are in; our new
            // outbound SA goes in before the old one goes out (install_successors_of does not touch
            // children_ itself, so `it` stays valid).
            install_successors_of(it->spi_in, "the peer deleted the Child SA it rekeys");
            remove_child_from_dataplane(*it);
            children_.erase(it);
        }
    }
    std::vector<payload> reply;
    if (!our_spis.empty()) {
        delete_payload d;
        d.protocol = static_cast<uint8_t>(protocol_id::esp);
        d.spis = std::move(our_spis);
        reply.push_back(payload{payload_type::del, false, std::move(d)});
    }
    send_response(exchange_type::informational, message_id, reply);
}

void ike_sa::send_dpd()
{
    pending_request r;
    r.exchange = exchange_type::informational;
    r.build = [] { return std::vector<payload>{}; };
    r.on_reply = [](const std::vector<payload>&) {};
    r.on_timeout = [this] {
        fail("peer " + peer_ptr_->name + " (" + to_string(remote_) + ") stopped answering liveness checks (DPD).",
             "the peer is down or unreachable; the tunnel is " +
                 std::string(peer_ptr_->dpd_action == config::ike_dpd_action::restart
                                 ? "being re-established"
                             : peer_ptr_->dpd_action == config::ike_dpd_action::hold
                                 ? "held: its traffic is dropped and re-establishes it"
                                 : "cleared: its traffic is dropped until it is initiated again") + ".");
        // What follows is the manager's (ike_manager::after): restart initiates now; hold leaves the
        // trap policies to raise an acquire on the next packet; clear ignores those acquires.
        dpd_failed_ = true;
        restart_requested_ = peer_ptr_->dpd_action == config::ike_dpd_action::restart;
    };
    queue_request(std::move(r));
}

void ike_sa::delete_child(uint32_t spi_in, bool send_delete)
{
    auto it = std::find_if(children_.begin(), children_.end(), [&](const child_sa& c) { return c.spi_in == spi_in; });
    if (it == children_.end()) {
        return;
    }
    if (!send_delete) {
        install_successors_of(spi_in, "the Child SA it rekeys is deleted");
        remove_child_from_dataplane(*it);
        children_.erase(it);
        return;
    }
    it->st = child_sa::state::deleting;
    if (rekeying_ike_) {
        // As start_child_pair: the Delete goes out on the IKE SA the Child SA moves to (run_deferred).
        if (std::find(deferred_deletes_.begin(), deferred_deletes_.end(), spi_in) == deferred_deletes_.end()) {
            log(log_level::info, "Delete of Child SA " + it->tunnel + " waits for our IKE SA rekey to finish");
            deferred_deletes_.push_back(spi_in);
        }
        return;
    }
    pending_request r;
    r.exchange = exchange_type::informational;
    r.build = [this, spi_in] {
        for (auto& c : children_) {
            if (c.spi_in == spi_in) {
                c.delete_sent = true;
            }
        }
        delete_payload d;
        d.protocol = static_cast<uint8_t>(protocol_id::esp);
        d.spis.push_back(be32(spi_in));
        return std::vector<payload>{payload{payload_type::del, false, std::move(d)}};
    };
    auto finish = [this, spi_in] {
        auto c = std::find_if(children_.begin(), children_.end(), [&](const child_sa& x) { return x.spi_in == spi_in; });
        if (c != children_.end()) {
            log(log_level::info, "Child SA " + c->tunnel + " deleted");
            install_successors_of(spi_in, "the Child SA it rekeys is deleted");
            remove_child_from_dataplane(*c);
            children_.erase(c);
        }
    };
    r.on_reply = [finish](const std::vector<payload>&) { finish(); };
    r.on_timeout = [this, finish] {
        finish();
        fail("peer " + peer_ptr_->name + " did not answer a Delete.", "the peer may be down.");
    };
    queue_request(std::move(r));
}

void ike_sa::delete_sa()
{
    if (state_ == state::deleting) {
        // Our Delete is out or queued already; its answer or its timeout ends the SA. Ending it here
        // dropped a Delete still queued behind another request: the peer was never told.
        return;
    }
    if (state_ != state::established) {
        shutdown_local();
        state_ = state::dead;
        return;
    }
    state_ = state::deleting;
    drop_queue("the IKE SA is being deleted");
    pending_request r;
    r.exchange = exchange_type::informational;
    r.build = [] {
        delete_payload d;
        d.protocol = static_cast<uint8_t>(protocol_id::ike);
        return std::vector<payload>{payload{payload_type::del, false, std::move(d)}};
    };
    r.on_reply = [this](const std::vector<payload>&) {
        log(log_level::info, "IKE SA deleted");
        shutdown_local();
        state_ = state::dead;
    };
    r.on_timeout = [this] {
        shutdown_local();
        state_ = state::dead;
    };
    queue_request(std::move(r));
}

void ike_sa::forget_silently()
{
    log(log_level::info, "the peer restarted (INITIAL_CONTACT on a new IKE SA): this IKE SA and its Child SAs are gone");
    if (ike_candidate_) {
        ike_candidate_.reset();
    }
    shutdown_local();
    state_ = state::dead;
}

} // namespace espresso::cp
