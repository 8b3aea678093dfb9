// IKE_AUTH (RFC 7296 §1.2, §2.15) with pre-shared keys, and the Child SA it carries; also the Child SA
// machinery CREATE_CHILD_SA shares (offers, selection, keying material §2.17, installation).
#include <algorithm>
#include <memory>

#include "ike_sa.h"
#include "wire_helpers.h"
#include "traffic_selectors.h"

namespace espresso::cp {
namespace {

bytes id_body(const id_payload& id)
{
    bytes b(4 + id.data.size(), 0);
    b[0] = id.type;
    std::copy(id.data.begin(), id.data.end(), b.begin() + 4);
    return b;
}

id_payload to_id(const config::ike_identity& identity, const config::ip_address& fallback)
{
    id_payload id;
    auto address_id = [&](const config::ip_address& a) {
        id.type = static_cast<uint8_t>(a.is_v6() ? id_type::ipv6_addr : id_type::ipv4_addr);
        id.data.assign(a.bytes.begin(), a.bytes.begin() + (a.is_v6() ? 16 : 4));
    };
    switch (identity.kind) {
    case config::ike_id_kind::ipv4:
    case config::ike_id_kind::ipv6:
        if (auto a = config::parse_address(identity.text)) {
            address_id(*a);
            return id;
        }
        break;
    case config::ike_id_kind::fqdn:
        id.type = static_cast<uint8_t>(id_type::fqdn);
        id.data.assign(identity.text.begin(), identity.text.end());
        return id;
    case config::ike_id_kind::email:
        id.type = static_cast<uint8_t>(id_type::rfc822_addr);
        id.data.assign(identity.text.begin(), identity.text.end());
        return id;
    case config::ike_id_kind::dn:
        if (auto der = encode_dn(identity.text)) {
            id.type = static_cast<uint8_t>(id_type::der_asn1_dn);
            id.data = std::move(*der);
            return id;
        }
        break;
    case config::ike_id_kind::any:
        break;
    }
    address_id(fallback);
    return id;
}

std::string id_text(const id_payload& id)
{
    switch (static_cast<id_type>(id.type)) {
    case id_type::ipv4_addr:
    case id_type::ipv6_addr:
        if (id.data.size() == 4 || id.data.size() == 16) {
            config::ip_address a;
            a.family = id.data.size() == 4 ? 4 : 6;
            std::copy(id.data.begin(), id.data.end(), a.bytes.begin());
            return config::to_string(a);
        }
        break;
    case id_type::der_asn1_dn:
        return dn_to_string(id.data);
    case id_type::fqdn:
    case id_type::rfc822_addr:
    case id_type::key_id: {
        std::string s;
        for (uint8_t c : id.data) {
            s += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
        }
        return s;
    }
    default:
        break;
    }
    return "(ID type " + std::to_string(id.type) + ", " + std::to_string(id.data.size()) + " bytes)";
}

// RFC 7296 §3.5 ID types, named for the operator (show crypto ikev2 sa, --json).
std::string id_type_name(uint8_t type)
{
    switch (static_cast<id_type>(type)) {
    case id_type::ipv4_addr:
        return "ipv4";
    case id_type::ipv6_addr:
        return "ipv6";
    case id_type::fqdn:
        return "fqdn";
    case id_type::rfc822_addr:
        return "rfc822";
    case id_type::der_asn1_dn:
        return "der-asn1-dn";
    case id_type::key_id:
        return "key-id";
    }
    return "type-" + std::to_string(type);
}

// Proposals without their DH groups: IKE_AUTH's Child SA gets its keys from the IKE SA's exchange.
std::vector<config::ike_proposal_config> without_dh(std::vector<config::ike_proposal_config> proposals)
{
    for (auto& p : proposals) {
        p.dh.clear();
    }
    return proposals;
}

const ts_payload* ts_of(const std::vector<payload>& payloads, payload_type type)
{
    const auto* p = find_payload(payloads, type);
    return p != nullptr ? std::get_if<ts_payload>(&p->body) : nullptr;
}

} // namespace

const config::ike_tunnel_config* ike_sa::find_tunnel(const std::string& name) const
{
    for (const auto& t : peer_ptr_->tunnels) {
        if (t.name == name) {
            return &t;
        }
    }
    return nullptr;
}

id_payload local_id_payload(const config::ike_peer_config& peer)
{
    return to_id(peer.local_id, peer.local_address);
}

id_payload ike_sa::own_id() const
{
    return local_id_payload(*peer_ptr_);
}

std::string ike_sa::local_identity() const
{
    return id_text(own_id());
}

std::string ike_sa::local_identity_type() const
{
    return id_type_name(own_id().type);
}

std::string ike_sa::remote_identity_type() const
{
    return remote_id_type_ == 0 ? std::string() : id_type_name(remote_id_type_);
}

bytes ike_sa::own_auth(const id_payload& id) const
{
    bool initiator = role_ == role::initiator;
    auto prf = static_cast<prf_id>(ike_transforms_.prf);
    bytes octets = signed_octets(prf, initiator ? init_request_ : init_response_, initiator ? nonce_r_ : nonce_i_,
                                 (initiator ? sk_pi_ : sk_pr_).view(), id_body(id));
    std::span<const uint8_t> psk(reinterpret_cast<const uint8_t*>(peer_ptr_->auth.psk.data()), peer_ptr_->auth.psk.size());
    return psk_auth(prf, psk, octets);
}

std::optional<auth_payload> ike_sa::own_auth_payload(const id_payload& id, std::string& error) const
{
    if (!uses_certificates()) {
        return auth_payload{static_cast<uint8_t>(auth_method::shared_key_mic), own_auth(id)};
    }
    if (!credentials_) {
        error = "no certificate credentials loaded for peer " + peer_ptr_->name;
        return std::nullopt;
    }
    bool initiator = role_ == role::initiator;
    bytes octets = signed_octets(static_cast<prf_id>(ike_transforms_.prf), initiator ? init_request_ : init_response_,
                                 initiator ? nonce_r_ : nonce_i_, (initiator ? sk_pi_ : sk_pr_).view(), id_body(id));
    return credentials_->sign(octets, peer_hash_algorithms_, error);
}

std::vector<payload> ike_sa::own_certificates() const
{
    std::vector<payload> p;
    if (!uses_certificates() || !credentials_) {
        return p;
    }
    p.push_back(payload{payload_type::cert, false, cert_payload{cert_encoding_x509_signature, credentials_->certificate_der()}});
    for (const auto& der : credentials_->intermediate_certificates_der()) {
        p.push_back(payload{payload_type::cert, false, cert_payload{cert_encoding_x509_signature, der}});
    }
    return p;
}

std::string peer_auth_fix(const config::ike_peer_config& peer, peer_auth_failure failure, const std::string& peer_identity)
{
    const bool pubkey = peer.auth.method == config::ike_auth_method::pubkey;
    const std::string name = "peer " + peer.name;
    switch (failure) {
    case peer_auth_failure::identity:
        // The secret or the certificate was not even looked at: only the identities matter here.
        return "set remote-id of " + name + " to '" + peer_identity + "' (the identity the peer sends), or make the peer send '" +
               peer.remote_id.text + "'" +
               (pubkey ? " (its local id, which its certificate must contain as subject or subjectAltName)."
                       : " (its local id).");
    case peer_auth_failure::wrong_method:
        return pubkey ? "use certificates on both sides, or set auth.method: psk with a secret for " + name + "."
                      : "use a pre-shared key on both sides, or set auth.method: pubkey with a certificate for " + name + ".";
    case peer_auth_failure::missing_payloads:
        return "check the peer's log: its IKE_AUTH lacks the identity or AUTH payload (is it an IKEv2 peer with " +
               std::string(pubkey ? "a certificate" : "a pre-shared key") + " configured?).";
    case peer_auth_failure::credentials:
        break;
    }
    return pubkey ? "check that auth.ca of " + name +
                        " holds the CA that issued the peer's certificate, that the certificate is valid now and "
                        "contains remote-id, and that the peer signs with its own private key."
                  : "compare auth.secret of " + name + " with the peer's pre-shared key.";
}

bool ike_sa::verify_peer_auth(const std::vector<payload>& payloads, std::string& why, peer_auth_failure& failure)
{
    failure = peer_auth_failure::credentials;
    bool initiator = role_ == role::initiator;
    const auto* idp = find_payload(payloads, initiator ? payload_type::idr : payload_type::idi);
    const auto* authp = find_payload(payloads, payload_type::auth);
    if (idp == nullptr || authp == nullptr) {
        why = "the peer's IKE_AUTH has no identity or AUTH payload";
        failure = peer_auth_failure::missing_payloads;
        return false;
    }
    const auto& id = std::get<id_payload>(idp->body);
    const auto& auth = std::get<auth_payload>(authp->body);
    remote_id_text_ = id_text(id);
    remote_id_type_ = id.type;
    if (peer_ptr_->remote_id.kind != config::ike_id_kind::any) {
        id_payload expected = to_id(peer_ptr_->remote_id, peer_ptr_->remote_address.value_or(remote_.address));
        bool same = expected.type == id.type &&
                    (id.type == static_cast<uint8_t>(id_type::der_asn1_dn) ? dn_equal(expected.data, id.data)
                                                                             : expected.data == id.data);
        if (!same) {
            why = "the peer identifies as '" + remote_id_text_ + "' but peer " + peer_ptr_->name + " expects remote-id '" +
                  peer_ptr_->remote_id.text + "' (identity mismatch)";
            failure = peer_auth_failure::identity;
            return false;
        }
    }
    if (uses_certificates()) {
        if (!credentials_) {
            why = "no certificate credentials are loaded for peer " + peer_ptr_->name;
            return false;
        }
        std::vector<bytes> certs;
        for (const auto& p : payloads) {
            const auto* c = std::get_if<cert_payload>(&p.body);
            if (p.type == payload_type::cert && c != nullptr && c->encoding == cert_encoding_x509_signature) {
                certs.push_back(c->data);
            }
        }
        if (certs.empty()) {
            why = "the peer sent no X.509 certificate (CERT payload) but peer " + peer_ptr_->name +
                  " is configured for certificate authentication";
            failure = auth.method == static_cast<uint8_t>(auth_method::shared_key_mic) ? peer_auth_failure::wrong_method
                                                                                        : peer_auth_failure::credentials;
            return false;
        }
        bytes octets = signed_octets(static_cast<prf_id>(ike_transforms_.prf), initiator ? init_response_ : init_request_,
                                     initiator ? nonce_i_ : nonce_r_, (initiator ? sk_pr_ : sk_pi_).view(), id_body(id));
        return credentials_->verify(certs, id, auth, octets, why);
    }
    if (auth.method != static_cast<uint8_t>(auth_method::shared_key_mic)) {
        why = "the peer authenticates with method " + std::to_string(auth.method) + " but peer " + peer_ptr_->name +
              " is configured for a pre-shared key";
        failure = peer_auth_failure::wrong_method;
        return false;
    }
    auto prf = static_cast<prf_id>(ike_transforms_.prf);
    bytes octets = signed_octets(prf, initiator ? init_response_ : init_request_, initiator ? nonce_i_ : nonce_r_,
                                 (initiator ? sk_pr_ : sk_pi_).view(), id_body(id));
    std::span<const uint8_t> psk(reinterpret_cast<const uint8_t*>(peer_ptr_->auth.psk.data()), peer_ptr_->auth.psk.size());
    bytes expected = psk_auth(prf, psk, octets);
    if (!equal_constant_time(expected, auth.data)) {
        why = "the peer's AUTH payload did not verify: pre-shared key mismatch";
        return false;
    }
    return true;
}

std::vector<ike_sa::ts_pair> ike_sa::pairs_of(const config::ike_tunnel_config& t)
{
    std::vector<ts_pair> pairs;
    for (const auto& local : t.local_ts) {
        for (const auto& remote : t.remote_ts) {
            if (local.address.is_v4() == remote.address.is_v4()) {
                pairs.push_back({local, remote});
            }
        }
    }
    return pairs;
}

std::vector<ike_sa::ts_pair> ike_sa::missing_pairs(const config::ike_tunnel_config& t) const
{
    std::vector<ts_pair> missing;
    for (const auto& p : pairs_of(t)) {
        const bool covered = std::any_of(children_.begin(), children_.end(), [&](const child_sa& c) {
            // Being deleted, or being replaced by a rekey whose answer deletes both (reconfigure): gone soon.
            const bool going = c.st == child_sa::state::deleting ||
                               std::find(retired_rekeys_.begin(), retired_rekeys_.end(), c.spi_in) != retired_rekeys_.end();
            return c.tunnel == t.name && !going && config::prefix_contains(p.local, c.local) &&
                   config::prefix_contains(p.remote, c.remote);
        });
        auto same_pair = [&](const starting_child& s) {
            return s.tunnel == t.name && s.pair.local == p.local && s.pair.remote == p.remote;
        };
        const bool starting = std::any_of(starting_.begin(), starting_.end(), same_pair) ||
                              std::any_of(deferred_starts_.begin(), deferred_starts_.end(), same_pair);
        const auto now = io_.now();
        const bool refused = std::any_of(refused_pairs_.begin(), refused_pairs_.end(), [&](const refused_pair& r) {
            return r.tunnel == t.name && r.pair.local == p.local && r.pair.remote == p.remote && now < r.until;
        });
        if (!covered && !starting && !refused) {
            missing.push_back(p);
        }
    }
    return missing;
}

std::optional<ike_sa::child_offer> ike_sa::make_child_offer(const std::string& tunnel_name, bool with_nonce_and_pfs,
                                                            const ts_pair* only)
{
    const auto* t = find_tunnel(tunnel_name);
    if (t == nullptr) {
        log(log_level::error, "no tunnel '" + tunnel_name + "' under peer " + peer_ptr_->name);
        return std::nullopt;
    }
    child_offer offer;
    offer.tunnel = tunnel_name;
    offer.made_with = peer_ptr_;
    do {
        offer.spi_in = random_u32();
    } while (offer.spi_in < 0x100);
    auto proposals = with_nonce_and_pfs ? t->esp_proposals : without_dh(t->esp_proposals);
    if (t->mode == config::ipsec_mode::transport) {
        offer.payloads.push_back(make_notify(notify_type::use_transport_mode));
    }
    offer.payloads.push_back(payload{payload_type::sa, false, sa_payload{to_wire(proposals, protocol_id::esp, be32(offer.spi_in))}});
    if (with_nonce_and_pfs) {
        offer.nonce.assign(32, 0);
        io_.random().fill(offer.nonce);
        offer.payloads.push_back(payload{payload_type::nonce, false, nonce_payload{offer.nonce}});
        if (!proposals.empty() && !proposals.front().dh.empty()) {
            offer.kex = key_exchange::create(proposals.front().dh.front());
            if (offer.kex) {
                offer.payloads.push_back(payload{payload_type::ke, false, ke_payload{offer.kex->group(), offer.kex->public_value()}});
            }
        }
    }
    offer.payloads.push_back(
        payload{payload_type::tsi, false, ts_payload{only ? std::vector{to_selector(only->local)} : to_selectors(t->local_ts)}});
    offer.payloads.push_back(
        payload{payload_type::tsr, false, ts_payload{only ? std::vector{to_selector(only->remote)} : to_selectors(t->remote_ts)}});
    return offer;
}

void ike_sa::send_auth_request()
{
    std::string tunnel;
    if (!pending_tunnels_.empty()) {
        tunnel = pending_tunnels_.front();
        pending_tunnels_.erase(pending_tunnels_.begin());
    } else if (!peer_ptr_->tunnels.empty()) {
        tunnel = peer_ptr_->tunnels.front().name;
    }
    auth_tunnel_ = tunnel;
    auto offer = std::make_shared<child_offer>();
    // IKE_AUTH carries the tunnel's first selector pair; its other pairs follow with CREATE_CHILD_SA.
    std::optional<ts_pair> first;
    if (const auto* t = find_tunnel(tunnel); t != nullptr && !pairs_of(*t).empty()) {
        first = pairs_of(*t).front();
    }
    if (auto o = make_child_offer(tunnel, false, first ? &*first : nullptr)) {
        *offer = std::move(*o);
    } else {
        fail("peer " + peer_ptr_->name + " has no tunnel to negotiate.", "add a tunnel under the peer.");
        return;
    }
    pending_request r;
    r.exchange = exchange_type::ike_auth;
    r.build = [this, offer] {
        id_payload id = own_id();
        std::vector<payload> p;
        p.push_back(payload{payload_type::idi, false, id});
        for (auto& c : own_certificates()) {
            p.push_back(std::move(c));
        }
        if (send_initial_contact_) {
            p.push_back(make_notify(notify_type::initial_contact));
        }
        if (uses_certificates() && credentials_) {
            bytes hashes;
            for (const auto& h : credentials_->certreq_hashes()) {
                hashes.insert(hashes.end(), h.begin(), h.end());
            }
            p.push_back(payload{payload_type::certreq, false, cert_payload{cert_encoding_x509_signature, hashes}});
        }
        if (peer_ptr_->remote_id.kind != config::ike_id_kind::any) {
            p.push_back(payload{payload_type::idr, false, to_id(peer_ptr_->remote_id, remote_.address)});
        }
        std::string error;
        auto auth = own_auth_payload(id, error);
        if (!auth) {
            log(log_level::error, "cannot sign our AUTH payload: " + error);
            auth = auth_payload{static_cast<uint8_t>(auth_method::digital_signature), {}};
        }
        p.push_back(payload{payload_type::auth, false, std::move(*auth)});
        for (const auto& c : offer->payloads) {
            p.push_back(c);
        }
        return p;
    };
    r.on_reply = [this, offer](const std::vector<payload>& reply) {
        for (const auto* n : find_notifies(reply)) {
            if (n->type == static_cast<uint16_t>(notify_type::authentication_failed)) {
                fail("peer " + peer_ptr_->name + " rejected our authentication (AUTHENTICATION_FAILED).",
                     uses_certificates()
                         ? "the peer does not trust our certificate or identity: check that it has our CA, and that local-id is in our certificate."
                         : "the pre-shared keys or the identities differ: compare auth.secret and local-id/remote-id with the peer's.");
                return;
            }
        }
        std::string why;
        peer_auth_failure failure{};
        if (!verify_peer_auth(reply, why, failure)) {
            fail("IKE_AUTH with " + peer_ptr_->name + " failed: " + why + ".",
                 peer_auth_fix(*peer_ptr_, failure, remote_id_text_));
            return;
        }
        set_established();
        bool installed = complete_child(*offer, reply, nullptr, nonce_i_, nonce_r_);
        if (auth_redo_ != auth_redo::none) {
            // A reload removed or changed this tunnel while IKE_AUTH was outstanding (reconfigure).
            if (installed) {
                for (const auto& c : children_) {
                    if (c.tunnel == auth_tunnel_ && c.spi_in == offer->spi_in) {
                        delete_child(c.spi_in, true);
                        break;
                    }
                }
            }
            if (auth_redo_ == auth_redo::renegotiate) {
                start_child(auth_tunnel_);
            }
            auth_redo_ = auth_redo::none;
        } else if (installed) {
            start_child(auth_tunnel_); // its other selector pairs, if it has more than one
        }
        for (const auto& t : pending_tunnels_) {
            start_child(t);
        }
        pending_tunnels_.clear();
    };
    r.on_timeout = [this] {
        fail("peer " + peer_ptr_->name + " did not answer IKE_AUTH.",
             "check that UDP " + std::to_string(remote_.port) + " reaches the peer (NAT-T uses 4500) and the peer's log.");
    };
    queue_request(std::move(r));
}

void ike_sa::process_auth_request(const message&, uint32_t message_id, const std::vector<payload>& payloads)
{
    std::string why;
    peer_auth_failure failure{};
    if (!verify_peer_auth(payloads, why, failure)) {
        send_response(exchange_type::ike_auth, message_id, {make_notify(notify_type::authentication_failed)});
        fail("IKE_AUTH from " + to_string(remote_) + " failed: " + why + ".",
             peer_auth_fix(*peer_ptr_, failure, remote_id_text_));
        return;
    }
    id_payload id = own_id();
    std::vector<payload> reply;
    reply.push_back(payload{payload_type::idr, false, id});
    for (auto& c : own_certificates()) {
        reply.push_back(std::move(c));
    }
    std::string error;
    auto auth = own_auth_payload(id, error);
    if (!auth) {
        send_response(exchange_type::ike_auth, message_id, {make_notify(notify_type::authentication_failed)});
        fail("cannot sign our AUTH payload for " + to_string(remote_) + ": " + error + ".",
             "check auth.certificate and auth.private-key of peer " + peer_ptr_->name + ".");
        return;
    }
    reply.push_back(payload{payload_type::auth, false, std::move(*auth)});
    initial_contact_received_ = find_notify(payloads, notify_type::initial_contact) != nullptr;
    set_established();
    for (auto& p : accept_child(payloads, false, std::nullopt)) {
        reply.push_back(std::move(p));
    }
    send_response(exchange_type::ike_auth, message_id, reply);
}

std::vector<payload> ike_sa::accept_child(const std::vector<payload>& request, bool create_child_sa,
                                          std::optional<uint32_t> rekeys)
{
    const auto* sap = find_payload(request, payload_type::sa);
    const auto* tsi = ts_of(request, payload_type::tsi);
    const auto* tsr = ts_of(request, payload_type::tsr);
    if (sap == nullptr || tsi == nullptr || tsr == nullptr) {
        return {make_notify(notify_type::invalid_syntax)};
    }
    const auto& offered = std::get<sa_payload>(sap->body);
    bool transport = find_notify(request, notify_type::use_transport_mode) != nullptr;

    // With rekeying, the tunnel is the rekeyed SA's; otherwise the first tunnel whose proposals and
    // selectors fit (§2.9: the responder may narrow, never widen).
    std::string last_why;
    bool proposal_matched = false;
    for (const auto& t : peer_ptr_->tunnels) {
        if (rekeys) {
            auto old = std::find_if(children_.begin(), children_.end(), [&](const child_sa& c) { return c.spi_out == *rekeys; });
            if (old == children_.end() || old->tunnel != t.name) {
                continue;
            }
        }
        std::string why;
        auto proposals = create_child_sa ? t.esp_proposals : without_dh(t.esp_proposals);
        auto chosen = select_proposal(proposals, offered, protocol_id::esp, why);
        if (!chosen) {
            last_why = why;
            continue;
        }
        proposal_matched = true;
        auto local = narrow(t.local_ts, tsr->selectors);
        auto remote = narrow(t.remote_ts, tsi->selectors);
        if (!local || !remote) {
            last_why = "peer proposed TSi " + describe(tsi->selectors) + " TSr " + describe(tsr->selectors) +
                       "; tunnel " + t.name + " has local-ts " + describe(t.local_ts) + " remote-ts " + describe(t.remote_ts) +
                       ": selectors not mirrored";
            continue;
        }
        if (transport != (t.mode == config::ipsec_mode::transport)) {
            last_why = std::string("peer asked for ") + (transport ? "transport" : "tunnel") + " mode; tunnel " + t.name +
                       " is configured for the other";
            continue;
        }
        if (chosen->theirs->spi.size() != 4) {
            return {make_notify(notify_type::invalid_syntax)};
        }

        // Nonces and PFS for CREATE_CHILD_SA (§1.3.1).
        std::vector<payload> reply;
        bytes ni = nonce_i_, nr = nonce_r_;
        std::optional<secret_bytes> g_ir;
        bytes own_nonce;
        std::unique_ptr<key_exchange> kex;
        if (create_child_sa) {
            const auto* np = find_payload(request, payload_type::nonce);
            if (np == nullptr) {
                return {make_notify(notify_type::invalid_syntax)};
            }
            ni = std::get<nonce_payload>(np->body).data;
            own_nonce.assign(32, 0);
            io_.random().fill(own_nonce);
            nr = own_nonce;
            if (chosen->transforms.dh != 0) {
                const auto* kp = find_payload(request, payload_type::ke);
                const ke_payload* ke = kp != nullptr ? std::get_if<ke_payload>(&kp->body) : nullptr;
                if (ke == nullptr || ke->group != chosen->transforms.dh) {
                    uint16_t g = chosen->transforms.dh;
                    return {make_notify(notify_type::invalid_ke_payload, bytes{static_cast<uint8_t>(g >> 8), static_cast<uint8_t>(g)})};
                }
                kex = key_exchange::create(ke->group);
                std::string error;
                if (kex) {
                    g_ir = kex->shared_secret(ke->data, error);
                }
                if (!g_ir) {
                    return {make_notify(notify_type::no_proposal_chosen)};
                }
            }
        }

        child_sa child;
        child.tunnel = t.name;
        do {
            child.spi_in = random_u32();
        } while (child.spi_in < 0x100);
        child.spi_out = read_be32(chosen->theirs->spi);
        child.transforms = chosen->transforms;
        child.local = *local;
        child.remote = *remote;
        child.mode = t.mode;
        size_t each = encr_keymat_size(static_cast<encr_id>(child.transforms.encr), child.transforms.key_bits) +
                      integ_key_size(static_cast<integ_id>(child.transforms.integ));
        auto keymat = derive_child_keymat(static_cast<prf_id>(ike_transforms_.prf), sk_d_.view(),
                                          g_ir ? g_ir->view() : std::span<const uint8_t>{}, ni, nr, 2 * each);
        // A rekey's new outbound SA waits for the initiator (pending_outbound, RFC 7296 §2.8).
        if (!install_child(child, keymat, false, rekeys.has_value())) {
            return {make_notify(notify_type::no_additional_sas)};
        }
        if (child.pending_out) {
            auto old = std::find_if(children_.begin(), children_.end(), [&](const child_sa& c) { return c.spi_out == *rekeys; });
            child.pending_out->replaces = old != children_.end() ? old->spi_in : 0;
            child.pending_out->response_id = expected_request_id_; // the request being answered (handle())
            child.pending_out->deadline = io_.now() + pending_outbound_wait;
        }
        schedule_rekey(child, t);
        if (rekeys) {
            for (auto& c : children_) {
                if (c.spi_out == *rekeys) {
                    c.st = child_sa::state::rekeyed;
                }
            }
        }
        children_.push_back(child);
        if (transport) {
            reply.push_back(make_notify(notify_type::use_transport_mode));
        }
        reply.push_back(payload{payload_type::sa, false,
                                sa_payload{{to_wire(chosen->transforms, protocol_id::esp, chosen->theirs->number, be32(child.spi_in))}}});
        if (create_child_sa) {
            reply.push_back(payload{payload_type::nonce, false, nonce_payload{own_nonce}});
            if (kex) {
                reply.push_back(payload{payload_type::ke, false, ke_payload{kex->group(), kex->public_value()}});
            }
        }
        reply.push_back(payload{payload_type::tsi, false, ts_payload{{to_selector(*remote)}}});
        reply.push_back(payload{payload_type::tsr, false, ts_payload{{to_selector(*local)}}});
        return reply;
    }
    std::string cause = peer_ptr_->tunnels.empty() ? std::string("peer ") + peer_ptr_->name + " has no tunnels" : last_why;
    io_.failure({std::chrono::system_clock::now(), peer_ptr_->name, to_string(remote_), "Child SA refused: " + cause + ".",
                 proposal_matched ? "make local-ts/remote-ts the mirror image of the peer's remote/local selectors."
                                  : "make the tunnel's esp-proposals share a transform set with the peer's ESP proposals "
                                    "(and the same PFS group, or none on both sides)."});
    log(log_level::error, "Child SA refused: " + cause);
    return {make_notify(proposal_matched ? notify_type::ts_unacceptable : notify_type::no_proposal_chosen)};
}

bool ike_sa::complete_child(child_offer& offer, const std::vector<payload>& reply, const secret_bytes* g_ir,
                            std::span<const uint8_t> nonce_i, std::span<const uint8_t> nonce_r)
{
    const config::ike_tunnel_config* t = nullptr;
    for (const auto& x : (offer.made_with ? *offer.made_with : *peer_ptr_).tunnels) {
        if (x.name == offer.tunnel) {
            t = &x;
        }
    }
    auto child_fail = [&](const std::string& cause, const std::string& fix) {
        io_.failure({std::chrono::system_clock::now(), peer_ptr_->name, to_string(remote_), cause, fix});
        log(log_level::error, cause + " Fix: " + fix);
        return false;
    };
    if (t == nullptr) {
        return child_fail("no tunnel '" + offer.tunnel + "' under peer " + peer_ptr_->name + ".", "check the configuration.");
    }
    for (const auto* n : find_notifies(reply)) {
        if (n->type >= 16384) {
            continue;
        }
        if (n->type == static_cast<uint16_t>(notify_type::no_proposal_chosen)) {
            std::string ours;
            for (const auto& p : t->esp_proposals) {
                ours += (ours.empty() ? "" : ", ") + p.text;
            }
            return child_fail("peer " + peer_ptr_->name + " rejected our ESP proposals for tunnel " + offer.tunnel + " (" + ours +
                                  "): NO_PROPOSAL_CHOSEN (ESP transform or PFS group mismatch).",
                              "make esp-proposals share a transform set with the peer's, with the same PFS group or none on both.");
        }
        if (n->type == static_cast<uint16_t>(notify_type::ts_unacceptable)) {
            return child_fail("peer " + peer_ptr_->name + " refused our traffic selectors for tunnel " + offer.tunnel + " (local-ts " +
                                  describe(t->local_ts) + ", remote-ts " + describe(t->remote_ts) +
                                  "): TS_UNACCEPTABLE, selectors not mirrored.",
                              "make local-ts/remote-ts the mirror image of the peer's remote/local selectors.");
        }
        return child_fail("peer " + peer_ptr_->name + " refused the Child SA for tunnel " + offer.tunnel + " with " +
                              notify_name(n->type) + ".",
                          "see the peer's log.");
    }
    const auto* sap = find_payload(reply, payload_type::sa);
    const auto* tsi = ts_of(reply, payload_type::tsi);
    const auto* tsr = ts_of(reply, payload_type::tsr);
    if (sap == nullptr || tsi == nullptr || tsr == nullptr || tsi->selectors.empty() || tsr->selectors.empty()) {
        return child_fail("peer " + peer_ptr_->name + " answered without SA or traffic selectors.", "this is a peer bug.");
    }
    std::string why;
    auto proposals = g_ir != nullptr || offer.kex ? t->esp_proposals : without_dh(t->esp_proposals);
    if (offer.nonce.empty()) {
        proposals = without_dh(t->esp_proposals);
    }
    auto chosen = check_reply(proposals, std::get<sa_payload>(sap->body), protocol_id::esp, why);
    if (!chosen) {
        return child_fail("Child SA answer from " + peer_ptr_->name + " is invalid: " + why + ".", "check the peer's esp proposals.");
    }
    const auto& spi = std::get<sa_payload>(sap->body).proposals.front().spi;
    auto local = to_prefix(tsi->selectors.front());
    auto remote = to_prefix(tsr->selectors.front());
    if (!local || !remote || !within(*local, t->local_ts) || !within(*remote, t->remote_ts)) {
        return child_fail("peer " + peer_ptr_->name + " answered with selectors TSi " + describe(tsi->selectors) + " TSr " +
                              describe(tsr->selectors) + " outside what we proposed (local-ts " + describe(t->local_ts) +
                              ", remote-ts " + describe(t->remote_ts) + ").",
                          "make the selectors mirror images of each other.");
    }
    bool transport = find_notify(reply, notify_type::use_transport_mode) != nullptr;
    if (transport != (t->mode == config::ipsec_mode::transport)) {
        return child_fail("peer " + peer_ptr_->name + " did not accept " +
                              (t->mode == config::ipsec_mode::transport ? "transport" : "tunnel") + " mode.",
                          "configure the same mode on both sides.");
    }
    std::optional<secret_bytes> pfs;
    if (chosen->dh != 0) {
        const auto* kp = find_payload(reply, payload_type::ke);
        const ke_payload* ke = kp != nullptr ? std::get_if<ke_payload>(&kp->body) : nullptr;
        std::string error;
        if (ke == nullptr || !offer.kex || ke->group != offer.kex->group() ||
            !(pfs = offer.kex->shared_secret(ke->data, error))) {
            return child_fail("PFS key exchange with " + peer_ptr_->name + " failed.", "configure the same PFS group on both sides.");
        }
    }
    child_sa child;
    child.tunnel = offer.tunnel;
    child.spi_in = offer.spi_in;
    child.spi_out = read_be32(spi);
    child.transforms = *chosen;
    child.local = *local;
    child.remote = *remote;
    child.mode = t->mode;
    size_t each = encr_keymat_size(static_cast<encr_id>(chosen->encr), chosen->key_bits) +
                  integ_key_size(static_cast<integ_id>(chosen->integ));
    auto keymat = derive_child_keymat(static_cast<prf_id>(ike_transforms_.prf), sk_d_.view(),
                                      pfs ? pfs->view() : (g_ir ? g_ir->view() : std::span<const uint8_t>{}), nonce_i,
                                      nonce_r, 2 * each);
    if (!install_child(child, keymat, true)) {
        return false;
    }
    schedule_rekey(child, *t);
    children_.push_back(child);
    return true;
}

bool ike_sa::install_child(child_sa& child, const secret_bytes& keymat, bool we_initiated, bool hold_outbound)
{
    const auto& tr = child.transforms;
    size_t ek = encr_keymat_size(static_cast<encr_id>(tr.encr), tr.key_bits);
    size_t ik = integ_key_size(static_cast<integ_id>(tr.integ));
    // §2.17: initiator->responder keys first, then responder->initiator.
    secret_bytes i_to_r_e = keymat.slice(0, ek), i_to_r_i = keymat.slice(ek, ik);
    secret_bytes r_to_i_e = keymat.slice(ek + ik, ek), r_to_i_i = keymat.slice(2 * ek + ik, ik);
    child.udp = nat_detected();
    child.established = io_.now();
    child.established_wall = std::chrono::system_clock::now();

    auto make = [&](config::direction dir, const secret_bytes& e, const secret_bytes& i) {
        config::sa_config sa;
        sa.dir = dir;
        sa.spi = dir == config::direction::inbound ? child.spi_in : child.spi_out;
        sa.protocol = config::ipsec_protocol::esp;
        sa.mode = child.mode;
        sa.source = dir == config::direction::outbound ? local_.address : remote_.address;
        sa.destination = dir == config::direction::outbound ? remote_.address : local_.address;
        sa.cipher = tr.encr == 20 ? config::cipher_alg::aes_gcm16 : config::cipher_alg::aes_cbc;
        sa.cipher_key_bytes = static_cast<uint8_t>(tr.key_bits / 8);
        std::copy(e.view().begin(), e.view().end(), sa.cipher_key.begin());
        sa.cipher_key_length = static_cast<uint8_t>(e.size());
        switch (tr.integ) {
        case 2: sa.integ = config::integ_alg::hmac_sha1_96; break;
        case 12: sa.integ = config::integ_alg::hmac_sha256_128; break;
        case 13: sa.integ = config::integ_alg::hmac_sha384_192; break;
        case 14: sa.integ = config::integ_alg::hmac_sha512_256; break;
        default: sa.integ = config::integ_alg::none; break;
        }
        std::copy(i.view().begin(), i.view().end(), sa.integ_key.begin());
        sa.integ_key_length = static_cast<uint8_t>(i.size());
        sa.esn = tr.esn == 1;
        const auto* t = find_tunnel(child.tunnel);
        sa.replay_window = dir == config::direction::inbound && t != nullptr ? t->replay_window : 0;
        if (child.udp) {
            // RFC 3948: ESP-in-UDP between the IKE ports in use (the peer's may be NAT-translated).
            sa.udp = config::udp_encapsulation{dir == config::direction::outbound ? local_.port : remote_.port,
                                               dir == config::direction::outbound ? remote_.port : local_.port};
        }
        sa.local = child.local;
        sa.remote = child.remote;
        if (t != nullptr && t->rekey_bytes != 0) {
            sa.lifetime.soft_bytes = t->rekey_bytes;
            sa.lifetime.bytes = t->rekey_bytes + t->rekey_bytes / 10;
        }
        if (t != nullptr && t->rekey_packets != 0) {
            sa.lifetime.soft_packets = t->rekey_packets;
            sa.lifetime.packets = t->rekey_packets + t->rekey_packets / 10;
        }
        sa.origin = "ike:" + peer_ptr_->name + "/" + child.tunnel;
        return sa;
    };
    auto refused = [&](config::direction dir, const std::string& err) {
        const bool inbound = dir == config::direction::inbound;
        io_.failure({std::chrono::system_clock::now(), peer_ptr_->name, to_string(remote_),
                     std::string("the data plane refused ") + (inbound ? "inbound SA " : "outbound SA ") +
                         std::to_string(inbound ? child.spi_in : child.spi_out) + ": " + err + ".",
                     "check espresso-dp's log and `espresso show crypto ipsec sa`."});
        log(log_level::error, std::string("installing ") + (inbound ? "inbound" : "outbound") + " SA failed: " + err);
        return false;
    };
    // Inbound first: the peer may send as soon as it has our answer (ARCHITECTURE.md). Both halves go
    // in one request (install_pair: inbound first, both or neither) unless the outbound one is held.
    auto in = make(config::direction::inbound, we_initiated ? r_to_i_e : i_to_r_e, we_initiated ? r_to_i_i : i_to_r_i);
    auto out = make(config::direction::outbound, we_initiated ? i_to_r_e : r_to_i_e, we_initiated ? i_to_r_i : r_to_i_i);
    char spis[64];
    std::snprintf(spis, sizeof(spis), "SPIs in 0x%08x out 0x%08x", child.spi_in, child.spi_out);
    if (hold_outbound) {
        std::string err = io_.installer().install(in);
        config::wipe_keys(in);
        if (!err.empty()) {
            config::wipe_keys(out);
            return refused(config::direction::inbound, err);
        }
        child.pending_out = std::make_shared<pending_outbound>();
        child.pending_out->sa = out; // wiped by pending_outbound when installed or abandoned
        config::wipe_keys(out);
        log(log_level::info, "Child SA " + child.tunnel + " installed inbound: " + config::to_string(child.local) +
                                 " === " + config::to_string(child.remote) + ", " + spis + " (outbound held until the peer " +
                                 "deletes the Child SA it rekeys), " + describe(tr, protocol_id::esp) +
                                 (child.udp ? ", UDP-encapsulated" : ""));
        return true;
    }
    const auto result = io_.installer().install_pair(in, out);
    config::wipe_keys(in);
    config::wipe_keys(out);
    if (!result.error.empty()) {
        return refused(result.refused, result.error); // install_pair took a lone inbound SA out again
    }
    log(log_level::info, "Child SA " + child.tunnel + " installed: " + config::to_string(child.local) + " === " +
                             config::to_string(child.remote) + ", " + spis + ", " + describe(tr, protocol_id::esp) +
                             (child.udp ? ", UDP-encapsulated" : ""));
    return true;
}

void ike_sa::remove_child_from_dataplane(const child_sa& child)
{
    // Outbound first so nothing new is sent with an SA whose inbound twin is gone. A held outbound SA
    // (pending_outbound) was never installed: its keys go with the child_sa.
    auto remove = [&](config::direction dir, uint32_t spi) {
        if (auto err = io_.installer().remove(dir, spi); !err.empty()) {
            char spi_text[16];
            std::snprintf(spi_text, sizeof(spi_text), "0x%08x", spi);
            log(log_level::error, "removing " + std::string(dir == config::direction::inbound ? "inbound" : "outbound") +
                                      " SA " + spi_text + " of Child SA " + child.tunnel +
                                      " from the data plane failed: " + err);
        }
    };
    if (!child.outbound_pending()) {
        remove(config::direction::outbound, child.spi_out);
    }
    remove(config::direction::inbound, child.spi_in);
}

void ike_sa::schedule_rekey(child_sa& child, const config::ike_tunnel_config& tunnel)
{
    if (tunnel.rekey_time == 0) {
        child.rekey_at = steady_time{};
        return;
    }
    // Jitter (up to 10 %) so both ends rarely rekey at once; the responder waits a little longer
    // than the initiator for the same reason (§2.8.1 collisions stay rare).
    // 64-bit: rekey-time may be up to ~4.3e9 s, whose milliseconds do not fit 32 bits.
    const uint64_t base_ms = uint64_t{tunnel.rekey_time} * 1000u;
    const uint64_t jitter = base_ms / 10 ? random_u32() % (base_ms / 10) : 0;
    const uint64_t at = role_ == role::initiator ? base_ms - jitter : base_ms - jitter / 2;
    child.rekey_at = io_.now() + std::chrono::milliseconds(at);
}

} // namespace espresso::cp
