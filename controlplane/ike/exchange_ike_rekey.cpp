// IKE SA rekeying with CREATE_CHILD_SA (RFC 7296 §1.3.2, §2.18): a new IKE SA with fresh SPIs, nonces
// and Diffie-Hellman, keyed from the old SK_d; the Child SAs move to it untouched (no data plane work),
// then the rekey initiator deletes the old IKE SA. Whoever initiated the rekey is the new SA's
// original initiator (§2.18).
//
// Simultaneous rekeys (§2.8.2): each end answers the other's request, so two new IKE SAs exist. The
// one created by the exchange holding the lowest of the four nonces is redundant; its initiator
// deletes it, and the initiator of the survivor deletes the old IKE SA. The survivor gets the Child
// SAs. If our own request fails instead, or the peer deletes the old IKE SA first (it did not see a
// collision), the SA we created for the peer's request takes over. A rekey request for an IKE SA
// that is being deleted or was already replaced is answered TEMPORARY_FAILURE (§2.25.2).
#include <algorithm>
#include <array>
#include <memory>
#include <utility>

#include "ike_sa.h"
#include "wire_helpers.h"

namespace espresso::cp {
void ike_sa::schedule_ike_rekey()
{
    if (peer_ptr_->rekey_time == 0) {
        ike_rekey_at_ = steady_time{};
        return;
    }
    const uint64_t base_ms = uint64_t{peer_ptr_->rekey_time} * 1000u; // 64-bit: see schedule_rekey
    const uint64_t jitter = base_ms / 10 ? random_u32() % (base_ms / 10) : 0;
    // The original responder waits a little longer so both ends rarely rekey at once (§2.8.2).
    const uint64_t at = role_ == role::initiator ? base_ms - jitter : base_ms - jitter / 2;
    ike_rekey_at_ = io_.now() + std::chrono::milliseconds(at);
}

void ike_sa::adopt(const chosen_transforms& transforms, ike_sa_keys keys, bool nat_local, bool nat_remote,
                   std::string remote_id)
{
    ike_transforms_ = transforms;
    use_keys(keys);
    nat_local_ = nat_local;
    nat_remote_ = nat_remote;
    remote_id_text_ = std::move(remote_id);
    next_request_id_ = 0;
    expected_request_id_ = 0;
    set_established();
    schedule_ike_rekey();
}

std::unique_ptr<ike_sa> ike_sa::new_ike_sa(role r, uint64_t spi_i, uint64_t spi_r, const chosen_transforms& chosen,
                                           const secret_bytes& g_ir, std::span<const uint8_t> ni, std::span<const uint8_t> nr)
{
    ike_key_sizes sizes;
    sizes.prf = static_cast<prf_id>(chosen.prf);
    sizes.integ_key = integ_key_size(static_cast<integ_id>(chosen.integ));
    sizes.encr_key = encr_keymat_size(static_cast<encr_id>(chosen.encr), chosen.key_bits);
    auto keys = derive_rekeyed_ike_sa_keys(static_cast<prf_id>(ike_transforms_.prf), sk_d_.view(), sizes, g_ir.view(), ni, nr,
                                           spi_i, spi_r);
    auto next = std::make_unique<ike_sa>(io_, peer_ptr_, r, spi_i, spi_r, local_, remote_, retransmit_);
    next->credentials_ = credentials_;
    next->fragmentation_ = fragmentation_; // RFC 7383: negotiated once, in IKE_SA_INIT; the new IKE SA keeps it
    next->fragment_counters_ = fragment_counters_;
    next->fragment_size_ = fragment_size_; // RFC 7383 §2.5.2: what path MTU discovery found still holds
    next->adopt(chosen, std::move(keys), nat_local_, nat_remote_, remote_id_text_);
    next->remote_id_type_ = remote_id_type_; // RFC 7296 §2.18: the new IKE SA inherits the authentication
    return next;
}

void ike_sa::hand_over(std::unique_ptr<ike_sa> next)
{
    next->children_ = std::move(children_);
    for (auto& c : next->children_) {
        if (c.pending_out) {
            c.pending_out->response_id.reset(); // message IDs start again in the new IKE SA
        }
    }
    next->peer_hash_algorithms_ = peer_hash_algorithms_;
    children_.clear();
    ike_rekeyed_ = true;
    log(log_level::info, "IKE SA rekeyed: the new IKE SA is " + next->name() + " (" +
                             describe(next->ike_transforms_, protocol_id::ike) + ")");
    run_deferred(*next);
    successors_.push_back(std::move(next));
}

void ike_sa::run_deferred(ike_sa& on)
{
    if (on.state_ != state::established) {
        drop_deferred("the IKE SA is being deleted");
        return;
    }
    auto starts = std::exchange(deferred_starts_, {});
    auto deletes = std::exchange(deferred_deletes_, {});
    // Deletes first: a reload's changed tunnel is deleted, then negotiated with its new settings.
    for (uint32_t spi : deletes) {
        on.delete_child(spi, true); // gone meanwhile (the peer deleted it): nothing to do
    }
    for (const auto& s : starts) {
        // Only what is still missing there: the peer may have made the pair meanwhile, a reload may
        // have removed the tunnel.
        const auto* t = on.find_tunnel(s.tunnel);
        if (t == nullptr) {
            continue;
        }
        const auto missing = on.missing_pairs(*t);
        if (std::any_of(missing.begin(), missing.end(), [&](const ts_pair& p) {
                return p.local == s.pair.local && p.remote == s.pair.remote;
            })) {
            on.start_child_pair(s.tunnel, s.pair);
        }
    }
}

void ike_sa::drop_deferred(const std::string& why)
{
    // The deferred deletes need nothing: their Child SAs go with this IKE SA.
    deferred_deletes_.clear();
    for (const auto& s : std::exchange(deferred_starts_, {})) {
        log(log_level::warning, child_not_negotiated(s.tunnel, s.pair) + ": " + why);
    }
}

void ike_sa::retire_after(std::chrono::seconds wait)
{
    retire_at_rekey_time_ = true;
    ike_rekey_at_ = io_.now() + wait;
}

// The peer rekeyed this IKE SA (we answered) and ours will not complete: its new SA is the one.
void ike_sa::take_over_candidate(const std::string& why)
{
    auto candidate = std::move(ike_candidate_->sa);
    ike_candidate_.reset();
    if (state_ == state::deleting) {
        // We are deleting this IKE SA (operator, shutdown): its replacement goes too. The Child SAs
        // stay here and go with this SA.
        log(log_level::info, "the peer's new IKE SA is deleted with this one (" + why + ")");
        candidate->delete_sa();
        successors_.push_back(std::move(candidate));
        return;
    }
    log(log_level::info, "the peer's IKE SA rekey takes over (" + why + ")");
    hand_over(std::move(candidate));
    // The peer initiated the survivor, so it deletes this SA (§2.8.2).
    retire_after(std::chrono::seconds(60));
}

bool ike_sa::child_exchange_pending() const noexcept
{
    return !rekeying_children_.empty() || !starting_.empty() ||
           std::any_of(children_.begin(), children_.end(), [](const child_sa& c) { return c.st == child_sa::state::deleting; });
}

void ike_sa::rekey_ike()
{
    if (state_ != state::established || rekeying_ike_ || ike_rekeyed_ || retire_at_rekey_time_) {
        return;
    }
    if (outstanding_ || !queue_.empty() || child_exchange_pending()) {
        // Only with nothing else in flight or queued: what was queued behind the rekey would be
        // dropped with this SA's queue when it is deleted (§1.3.2), and a Child SA exchange must not
        // run across the move of the Child SAs (§2.25.2). Tried again in a second.
        ike_rekey_at_ = io_.now() + std::chrono::seconds(1);
        return;
    }
    rekeying_ike_ = true;
    ike_rekey_at_ = steady_time{};
    struct offer_state {
        uint64_t spi_i = 0;
        bytes nonce;
        std::unique_ptr<key_exchange> kex;
    };
    auto offer = std::make_shared<offer_state>();
    offer->spi_i = io_.new_ike_spi(); // in this SA's shard: the successor stays reachable (ike_shards.h)
    offer->nonce.assign(32, 0);
    io_.random().fill(offer->nonce);
    offer->kex = key_exchange::create(ike_transforms_.dh);
    if (!offer->kex) {
        rekeying_ike_ = false;
        return;
    }
    log(log_level::info, "rekeying the IKE SA");
    pending_request r;
    r.exchange = exchange_type::create_child_sa;
    r.build = [this, offer] {
        std::vector<payload> p;
        p.push_back(payload{payload_type::sa, false, sa_payload{to_wire(peer_ptr_->proposals, protocol_id::ike, be64(offer->spi_i))}});
        p.push_back(payload{payload_type::nonce, false, nonce_payload{offer->nonce}});
        p.push_back(payload{payload_type::ke, false, ke_payload{offer->kex->group(), offer->kex->public_value()}});
        return p;
    };
    r.on_reply = [this, offer](const std::vector<payload>& reply) {
        rekeying_ike_ = false;
        auto retry_later = [this](const std::string& why) {
            if (ike_candidate_) {
                take_over_candidate("ours failed: " + why);
                return;
            }
            log(log_level::warning, "IKE SA rekey failed (" + why + "); retrying in 30 s");
            ike_rekey_at_ = io_.now() + std::chrono::seconds(30);
            run_deferred(*this); // what waited for the rekey goes out on this IKE SA after all
        };
        for (const auto* n : find_notifies(reply)) {
            if (n->type < 16384) {
                retry_later(notify_name(n->type));
                return;
            }
        }
        const auto* sap = find_payload(reply, payload_type::sa);
        const auto* np = find_payload(reply, payload_type::nonce);
        const auto* kp = find_payload(reply, payload_type::ke);
        if (sap == nullptr || np == nullptr || kp == nullptr) {
            retry_later("answer without SA, Nonce or KE");
            return;
        }
        std::string why;
        auto chosen = check_reply(peer_ptr_->proposals, std::get<sa_payload>(sap->body), protocol_id::ike, why);
        const auto& spi = std::get<sa_payload>(sap->body).proposals.front().spi;
        const auto& ke = std::get<ke_payload>(kp->body);
        if (!chosen || spi.size() != 8 || ke.group != offer->kex->group() || chosen->dh != ke.group) {
            retry_later(chosen ? "inconsistent SA/KE" : why);
            return;
        }
        std::string error;
        auto g_ir = offer->kex->shared_secret(ke.data, error);
        if (!g_ir) {
            retry_later(error);
            return;
        }
        const auto& nr = std::get<nonce_payload>(np->body).data;
        auto ours = new_ike_sa(role::initiator, offer->spi_i, read_be64(spi), *chosen, *g_ir, offer->nonce, nr);
        if (state_ == state::deleting) {
            // Deleted (operator, shutdown) while the rekey was in flight: the IKE SA it made, and the
            // peer's from a simultaneous rekey, are deleted too. The Child SAs stay here and go with
            // this SA's Delete, queued behind the rekey.
            log(log_level::info, "IKE SA rekeyed while being deleted: the new IKE SA " + ours->name() + " is deleted too");
            if (ike_candidate_) {
                take_over_candidate("this IKE SA is being deleted");
            }
            ours->delete_sa();
            successors_.push_back(std::move(ours));
            return;
        }
        if (ike_candidate_) {
            // §2.8.2: the exchange with the lowest of the four nonces created the redundant SA.
            std::array<const bytes*, 4> nonces{&offer->nonce, &nr, &ike_candidate_->nonce_i, &ike_candidate_->nonce_r};
            auto lowest = std::min_element(nonces.begin(), nonces.end(), [](const bytes* a, const bytes* b) {
                return std::lexicographical_compare(a->begin(), a->end(), b->begin(), b->end());
            });
            bool ours_redundant = lowest - nonces.begin() < 2;
            log(log_level::info, std::string("IKE SA rekey collision (RFC 7296 §2.8.2): ") +
                                     (ours_redundant ? "our" : "the peer's") + " new IKE SA is redundant");
            auto theirs = std::move(ike_candidate_->sa);
            ike_candidate_.reset();
            if (ours_redundant) {
                // We initiated the redundant SA, so we delete it; the peer deletes this one.
                hand_over(std::move(theirs));
                retire_after(std::chrono::seconds(60));
                ours->delete_sa();
                successors_.push_back(std::move(ours));
                return;
            }
            // The peer deletes its redundant SA; we initiated the survivor, so we delete this one.
            theirs->retire_after(std::chrono::seconds(60));
            successors_.push_back(std::move(theirs));
        }
        hand_over(std::move(ours));
        // §1.3.2: the rekey initiator deletes the old IKE SA (its Child SAs already moved).
        delete_sa();
    };
    r.on_timeout = [this] {
        if (ike_candidate_) {
            take_over_candidate("ours was not answered");
            return;
        }
        fail("peer " + peer_ptr_->name + " did not answer an IKE SA rekey.", "check the path to the peer and its log.");
    };
    queue_request(std::move(r));
}

// Responder side, from process_create_child_request when the SA payload proposes protocol IKE.
void ike_sa::process_ike_rekey_request(uint32_t message_id, const std::vector<payload>& payloads)
{
    if (state_ != state::established || ike_rekeyed_ || ike_candidate_) {
        // §2.25.2: this IKE SA is going away (deleted, or replaced by a rekey already).
        send_response(exchange_type::create_child_sa, message_id, {make_notify(notify_type::temporary_failure)});
        return;
    }
    if (!rekeying_ike_ && child_exchange_pending()) {
        // §2.25: a peer asked to rekey the IKE SA while it is creating, rekeying or closing a Child
        // SA of it answers TEMPORARY_FAILURE; the answer to our Child SA request must find its Child
        // SAs on this IKE SA. The peer tries again later.
        log(log_level::info, "the peer's IKE SA rekey must wait: a Child SA exchange of ours is under way "
                             "(TEMPORARY_FAILURE, RFC 7296 §2.25)");
        send_response(exchange_type::create_child_sa, message_id, {make_notify(notify_type::temporary_failure)});
        return;
    }
    const auto* sap = find_payload(payloads, payload_type::sa);
    const auto* np = find_payload(payloads, payload_type::nonce);
    const auto* kp = find_payload(payloads, payload_type::ke);
    if (np == nullptr || kp == nullptr) {
        send_response(exchange_type::create_child_sa, message_id, {make_notify(notify_type::invalid_syntax)});
        return;
    }
    std::string why;
    auto chosen = select_proposal(peer_ptr_->proposals, std::get<sa_payload>(sap->body), protocol_id::ike, why);
    if (!chosen || chosen->theirs->spi.size() != 8) {
        log(log_level::warning, "IKE SA rekey refused: " + why);
        send_response(exchange_type::create_child_sa, message_id, {make_notify(notify_type::no_proposal_chosen)});
        return;
    }
    const auto& ke = std::get<ke_payload>(kp->body);
    if (ke.group != chosen->transforms.dh) {
        uint16_t g = chosen->transforms.dh;
        send_response(exchange_type::create_child_sa, message_id,
                      {make_notify(notify_type::invalid_ke_payload, bytes{static_cast<uint8_t>(g >> 8), static_cast<uint8_t>(g)})});
        return;
    }
    auto kex = key_exchange::create(ke.group);
    std::string error;
    auto g_ir = kex ? kex->shared_secret(ke.data, error) : std::nullopt;
    if (!g_ir) {
        send_response(exchange_type::create_child_sa, message_id, {make_notify(notify_type::invalid_syntax)});
        return;
    }
    uint64_t spi_r = io_.new_ike_spi(); // in this SA's shard: the successor stays reachable (ike_shards.h)
    bytes nr(32);
    io_.random().fill(nr);
    const auto& ni = std::get<nonce_payload>(np->body).data;
    std::vector<payload> reply;
    reply.push_back(payload{payload_type::sa, false,
                            sa_payload{{to_wire(chosen->transforms, protocol_id::ike, chosen->theirs->number, be64(spi_r))}}});
    reply.push_back(payload{payload_type::nonce, false, nonce_payload{nr}});
    reply.push_back(payload{payload_type::ke, false, ke_payload{ke.group, kex->public_value()}});
    uint64_t spi_i = read_be64(chosen->theirs->spi);
    send_response(exchange_type::create_child_sa, message_id, reply);
    auto next = new_ike_sa(role::responder, spi_i, spi_r, chosen->transforms, *g_ir, ni, nr);
    if (rekeying_ike_) {
        log(log_level::info, "simultaneous IKE SA rekey (RFC 7296 §2.8.2): answered the peer's, resolving when ours completes");
        ike_candidate_ = ike_rekey_candidate{std::move(next), ni, nr};
        return;
    }
    hand_over(std::move(next));
    retire_after(std::chrono::seconds(60)); // the old SA only waits for the peer's Delete now
}

} // namespace espresso::cp
