// IKE_SA_INIT (RFC 7296 §1.2): proposals, Diffie-Hellman, nonces, NAT detection (§2.23), cookies
// (§2.6) and the INVALID_KE_PAYLOAD retry (§1.2).
#include <openssl/evp.h>

#include <algorithm>

#include "ike_sa.h"
#include "wire_helpers.h"

namespace espresso::cp {
namespace {

// §2.23: SHA-1(SPIi | SPIr | IP | Port).
bytes nat_hash(uint64_t spi_i, uint64_t spi_r, const endpoint& e)
{
    bytes in = be64(spi_i);
    bytes r = be64(spi_r);
    in.insert(in.end(), r.begin(), r.end());
    size_t n = e.address.is_v6() ? 16 : 4;
    in.insert(in.end(), e.address.bytes.begin(), e.address.bytes.begin() + static_cast<long>(n));
    in.push_back(static_cast<uint8_t>(e.port >> 8));
    in.push_back(static_cast<uint8_t>(e.port));
    bytes out(20);
    unsigned int len = 0;
    EVP_Digest(in.data(), in.size(), out.data(), &len, EVP_sha1(), nullptr);
    return out;
}


bool is_error_notify(uint16_t type) { return type < 16384; }

} // namespace

std::vector<payload> ike_sa::nat_detection_payloads(uint64_t spi_r_for_hash)
{
    std::vector<payload> p;
    p.push_back(make_notify(notify_type::nat_detection_source_ip, nat_hash(spi_i_, spi_r_for_hash, local_)));
    p.push_back(make_notify(notify_type::nat_detection_destination_ip, nat_hash(spi_i_, spi_r_for_hash, remote_)));
    return p;
}

void ike_sa::check_nat_detection(const std::vector<payload>& payloads)
{
    // The initiator hashed SPIr = 0 in its request (§2.23).
    uint64_t spi_r = role_ == role::responder ? 0 : spi_r_;
    bool have_source = false, source_match = false, dest_seen = false, dest_match = false;
    bytes expect_source = nat_hash(spi_i_, spi_r, remote_);
    bytes expect_dest = nat_hash(spi_i_, spi_r, local_);
    for (const auto* n : find_notifies(payloads)) {
        if (n->type == static_cast<uint16_t>(notify_type::nat_detection_source_ip)) {
            have_source = true;
            source_match = source_match || n->data == expect_source;
        } else if (n->type == static_cast<uint16_t>(notify_type::nat_detection_destination_ip)) {
            dest_seen = true;
            dest_match = dest_match || n->data == expect_dest;
        }
    }
    if (!have_source || !dest_seen) {
        return; // the peer does not do NAT-T
    }
    nat_remote_ = !source_match;
    nat_local_ = !dest_match;
    if (nat_detected()) {
        log(log_level::info, std::string("NAT detected: ") + (nat_local_ ? "we are behind a NAT" : "") +
                                 (nat_local_ && nat_remote_ ? ", " : "") + (nat_remote_ ? "the peer is behind a NAT" : "") +
                                 "; ESP will be UDP-encapsulated (RFC 3948)");
    }
}

bool ike_sa::derive_keys(const secret_bytes& g_ir)
{
    ike_key_sizes sizes;
    sizes.prf = static_cast<prf_id>(ike_transforms_.prf);
    sizes.integ_key = integ_key_size(static_cast<integ_id>(ike_transforms_.integ));
    sizes.encr_key = encr_keymat_size(static_cast<encr_id>(ike_transforms_.encr), ike_transforms_.key_bits);
    if (!is_supported(sizes.prf) || sizes.encr_key == 0) {
        return false;
    }
    return use_keys(derive_ike_sa_keys(sizes, nonce_i_, nonce_r_, g_ir.view(), spi_i_, spi_r_));
}

bool ike_sa::use_keys(const ike_sa_keys& keys)
{
    auto enc = static_cast<encr_id>(ike_transforms_.encr);
    auto integ = static_cast<integ_id>(ike_transforms_.integ);
    bool initiator = role_ == role::initiator;
    out_ = sk_cipher::create(enc, ike_transforms_.key_bits, integ, initiator ? keys.sk_ei.view() : keys.sk_er.view(),
                             initiator ? keys.sk_ai.view() : keys.sk_ar.view());
    in_ = sk_cipher::create(enc, ike_transforms_.key_bits, integ, initiator ? keys.sk_er.view() : keys.sk_ei.view(),
                            initiator ? keys.sk_ar.view() : keys.sk_ai.view());
    sk_d_ = keys.sk_d;
    sk_pi_ = keys.sk_pi;
    sk_pr_ = keys.sk_pr;
    return out_.has_value() && in_.has_value();
}

std::vector<payload> ike_sa::build_init_request()
{
    if (!kex_ || kex_->group() != kex_group_) {
        kex_ = key_exchange::create(kex_group_);
    }
    if (nonce_i_.empty()) {
        // §2.6: a retry after COOKIE (or INVALID_KE_PAYLOAD) keeps the nonce the cookie is bound to.
        nonce_i_.assign(32, 0);
        io_.random().fill(nonce_i_);
    }
    std::vector<payload> p;
    if (!cookie_.empty()) {
        p.push_back(make_notify(notify_type::cookie, cookie_)); // §2.6: COOKIE comes first
    }
    p.push_back(payload{payload_type::sa, false, sa_payload{to_wire(peer_ptr_->proposals, protocol_id::ike, {})}});
    p.push_back(payload{payload_type::ke, false, ke_payload{kex_group_, kex_->public_value()}});
    p.push_back(payload{payload_type::nonce, false, nonce_payload{nonce_i_}});
    for (auto& n : nat_detection_payloads(0)) {
        p.push_back(std::move(n));
    }
    if (uses_certificates()) {
        p.push_back(make_notify(notify_type::signature_hash_algorithms, pubkey_credentials::supported_hash_algorithms()));
    }
    if (peer_ptr_->fragmentation != config::ike_fragmentation::no) {
        p.push_back(make_notify(notify_type::ikev2_fragmentation_supported)); // RFC 7383 §2.3, no data
    }
    return p;
}

void ike_sa::initiate(std::vector<std::string> tunnels)
{
    pending_tunnels_ = std::move(tunnels);
    if (peer_ptr_->proposals.empty() || peer_ptr_->proposals.front().dh.empty()) {
        fail("peer " + peer_ptr_->name + " has no usable IKE proposal.", "configure proposals with a DH group.");
        return;
    }
    if (kex_group_ == 0) {
        kex_group_ = peer_ptr_->proposals.front().dh.front();
    }
    ++init_attempts_;
    ike_header h;
    h.spi_i = spi_i_;
    h.spi_r = 0;
    h.exchange = static_cast<uint8_t>(exchange_type::ike_sa_init);
    h.flags = flag_initiator;
    h.message_id = 0;
    init_request_ = serialize_message(h, build_init_request());
    log(log_level::info, "initiating IKE_SA_INIT to " + to_string(remote_) + " (" + group_name(kex_group_) + ")");
    state_ = state::init_sent;
    send_request_plain(init_request_);
    next_request_id_ = 1;
}

void ike_sa::process_init_response(const message& msg, std::span<const uint8_t> raw)
{
    const auto& payloads = msg.payloads;
    if (const auto* cookie = find_notify(payloads, notify_type::cookie)) {
        if (init_attempts_ >= 3 || cookie->data.empty() || cookie->data.size() > 64) {
            fail("peer " + peer_ptr_->name + " keeps demanding cookies.", "the peer is under load or misconfigured; retry later.");
            return;
        }
        cookie_ = cookie->data;
        log(log_level::info, "peer demands a cookie (RFC 7296 §2.6); retrying");
        outstanding_.reset();
        initiate(std::move(pending_tunnels_));
        return;
    }
    if (const auto* ke = find_notify(payloads, notify_type::invalid_ke_payload)) {
        uint16_t group = ke->data.size() == 2 ? static_cast<uint16_t>((ke->data[0] << 8) | ke->data[1]) : 0;
        bool offered = std::any_of(peer_ptr_->proposals.begin(), peer_ptr_->proposals.end(), [&](const auto& p) {
            return std::find(p.dh.begin(), p.dh.end(), group) != p.dh.end();
        });
        if (!offered || init_attempts_ >= 3 || group == kex_group_) {
            fail("peer " + peer_ptr_->name + " wants DH group " + group_name(group) + ", which we did not offer.",
                 "add " + group_name(group) + " to the peer's proposals, or make the peer accept ours.");
            return;
        }
        log(log_level::info, "peer wants " + group_name(group) + " (INVALID_KE_PAYLOAD); retrying with it");
        kex_group_ = group;
        outstanding_.reset();
        initiate(std::move(pending_tunnels_));
        return;
    }
    for (const auto* n : find_notifies(payloads)) {
        if (!is_error_notify(n->type)) {
            continue;
        }
        if (n->type == static_cast<uint16_t>(notify_type::no_proposal_chosen)) {
            std::string ours;
            for (const auto& p : peer_ptr_->proposals) {
                ours += (ours.empty() ? "" : ", ") + describe_transforms(p);
            }
            fail("peer " + peer_ptr_->name + " rejected all our IKE proposals (" + ours + "): NO_PROPOSAL_CHOSEN.",
                 "make `proposals:` share an encryption, integrity/PRF and DH group with the peer's IKE proposals.");
        } else {
            fail("peer " + peer_ptr_->name + " refused IKE_SA_INIT with " + notify_name(n->type) + ".",
                 "see the peer's log for the reason.");
        }
        return;
    }
    const auto* sa = find_payload(payloads, payload_type::sa);
    const auto* ke = find_payload(payloads, payload_type::ke);
    const auto* nonce = find_payload(payloads, payload_type::nonce);
    if (sa == nullptr || ke == nullptr || nonce == nullptr || msg.header.spi_r == 0) {
        log(log_level::warning, "dropped an IKE_SA_INIT response without SA, KE or Nonce: " + describe(msg));
        return;
    }
    std::string why;
    auto chosen = check_reply(peer_ptr_->proposals, std::get<sa_payload>(sa->body), protocol_id::ike, why);
    if (!chosen) {
        fail("IKE_SA_INIT response from " + peer_ptr_->name + " is invalid: " + why + ".", "check the peer's proposals.");
        return;
    }
    const auto& kep = std::get<ke_payload>(ke->body);
    if (kep.group != chosen->dh || kep.group != kex_group_) {
        fail("peer " + peer_ptr_->name + " chose DH " + group_name(chosen->dh) + " but sent a KE for " + group_name(kep.group) + ".",
             "this is a peer bug; report it to the peer's vendor.");
        return;
    }
    std::string error;
    auto g_ir = kex_->shared_secret(kep.data, error);
    if (!g_ir) {
        fail("peer " + peer_ptr_->name + " sent an invalid KE payload: " + error + ".", "this is a peer bug or an attack.");
        return;
    }
    outstanding_.reset();
    spi_r_ = msg.header.spi_r;
    ike_transforms_ = *chosen;
    nonce_r_ = std::get<nonce_payload>(nonce->body).data;
    init_response_.assign(raw.begin(), raw.end());
    if (!derive_keys(*g_ir)) {
        fail("the chosen IKE transforms " + describe(*chosen, protocol_id::ike) + " are not implemented.",
             "remove them from `proposals:`.");
        return;
    }
    kex_.reset();
    check_nat_detection(payloads);
    if (const auto* sha = find_notify(payloads, notify_type::signature_hash_algorithms)) {
        peer_hash_algorithms_ = pubkey_credentials::parse_hash_algorithms(sha->data);
    }
    // RFC 7383 §2.3: the responder answers IKEV2_FRAGMENTATION_SUPPORTED only to an initiator that sent it.
    fragmentation_ = peer_ptr_->fragmentation != config::ike_fragmentation::no &&
                     find_notify(payloads, notify_type::ikev2_fragmentation_supported) != nullptr;
    state_ = state::init_done;
    if (nat_detected() && remote_.port == 500) {
        // §2.23: after NAT detection the initiator moves to port 4500 (with the non-ESP marker).
        local_.port = 4500;
        remote_.port = 4500;
    }
    send_auth_request();
}

void ike_sa::respond_init(const message& request, std::span<const uint8_t> raw)
{
    const auto& payloads = request.payloads;
    init_request_.assign(raw.begin(), raw.end());
    auto reply_plain = [&](std::vector<payload> p) {
        ike_header h;
        h.spi_i = spi_i_;
        h.spi_r = 0; // §2.6/§1.2: error responses to IKE_SA_INIT carry SPIr = 0
        h.exchange = static_cast<uint8_t>(exchange_type::ike_sa_init);
        h.flags = flag_response;
        h.message_id = 0;
        io_.send(local_, remote_, serialize_message(h, p));
    };
    const auto* sa = find_payload(payloads, payload_type::sa);
    const auto* ke = find_payload(payloads, payload_type::ke);
    const auto* nonce = find_payload(payloads, payload_type::nonce);
    if (sa == nullptr || ke == nullptr || nonce == nullptr) {
        reply_plain({make_notify(notify_type::invalid_syntax)});
        fail("IKE_SA_INIT from " + to_string(remote_) + " lacks SA, KE or Nonce.", "this is a peer bug.");
        return;
    }
    std::string why;
    auto chosen = select_proposal(peer_ptr_->proposals, std::get<sa_payload>(sa->body), protocol_id::ike, why);
    if (!chosen) {
        reply_plain({make_notify(notify_type::no_proposal_chosen)});
        std::string ours;
        for (const auto& p : peer_ptr_->proposals) {
            ours += (ours.empty() ? "" : ", ") + p.text;
        }
        fail("IKE proposal mismatch with " + to_string(remote_) + ": " + why + ".",
             "make the peer's IKE proposals and ours share one encryption, integrity/PRF and DH group "
             "(ours: " + ours + "), or add one of the peer's to `proposals:` of peer " + peer_ptr_->name + ".");
        return;
    }
    const auto& kep = std::get<ke_payload>(ke->body);
    if (kep.group != chosen->transforms.dh) {
        // §1.2: tell the initiator which group we want; it retries with a new IKE_SA_INIT.
        uint16_t g = chosen->transforms.dh;
        reply_plain({make_notify(notify_type::invalid_ke_payload, bytes{static_cast<uint8_t>(g >> 8), static_cast<uint8_t>(g)})});
        log(log_level::info, "peer sent KE for " + group_name(kep.group) + "; asked for " + group_name(g));
        state_ = state::dead;
        return;
    }
    kex_ = key_exchange::create(kep.group);
    std::string error;
    auto g_ir = kex_ ? kex_->shared_secret(kep.data, error) : std::nullopt;
    if (!g_ir) {
        reply_plain({make_notify(notify_type::invalid_syntax)});
        fail("IKE_SA_INIT from " + to_string(remote_) + " has an invalid KE payload: " + error + ".",
             "this is a peer bug or an attack.");
        return;
    }
    ike_transforms_ = chosen->transforms;
    nonce_i_ = std::get<nonce_payload>(nonce->body).data;
    nonce_r_.assign(32, 0);
    io_.random().fill(nonce_r_);
    check_nat_detection(payloads);

    std::vector<payload> reply;
    reply.push_back(payload{payload_type::sa, false,
                            sa_payload{{to_wire(chosen->transforms, protocol_id::ike, chosen->theirs->number, {})}}});
    reply.push_back(payload{payload_type::ke, false, ke_payload{kep.group, kex_->public_value()}});
    reply.push_back(payload{payload_type::nonce, false, nonce_payload{nonce_r_}});
    for (auto& n : nat_detection_payloads(spi_r_)) {
        reply.push_back(std::move(n));
    }
    if (const auto* sha = find_notify(payloads, notify_type::signature_hash_algorithms)) {
        peer_hash_algorithms_ = pubkey_credentials::parse_hash_algorithms(sha->data);
    }
    // RFC 7383 §2.3: announce fragmentation only to an initiator that announced it.
    fragmentation_ = peer_ptr_->fragmentation != config::ike_fragmentation::no &&
                     find_notify(payloads, notify_type::ikev2_fragmentation_supported) != nullptr;
    if (fragmentation_) {
        reply.push_back(make_notify(notify_type::ikev2_fragmentation_supported));
    }
    if (uses_certificates()) {
        reply.push_back(make_notify(notify_type::signature_hash_algorithms, pubkey_credentials::supported_hash_algorithms()));
        if (credentials_) {
            // §3.7: which CAs we trust, so the initiator picks the right certificate.
            bytes hashes;
            for (const auto& h : credentials_->certreq_hashes()) {
                hashes.insert(hashes.end(), h.begin(), h.end());
            }
            reply.push_back(payload{payload_type::certreq, false, cert_payload{cert_encoding_x509_signature, hashes}});
        }
    }
    ike_header h;
    h.spi_i = spi_i_;
    h.spi_r = spi_r_;
    h.exchange = static_cast<uint8_t>(exchange_type::ike_sa_init);
    h.flags = flag_response;
    h.message_id = 0;
    init_response_ = serialize_message(h, reply);
    if (!derive_keys(*g_ir)) {
        fail("the chosen IKE transforms are not implemented.", "remove them from `proposals:`.");
        return;
    }
    kex_.reset();
    io_.send(local_, remote_, init_response_);
    last_response_ = {init_response_};
    last_response_id_ = 0;
    expected_request_id_ = 1;
    state_ = state::init_done;
    log(log_level::info, "IKE_SA_INIT from " + to_string(remote_) + ": chose " +
                             describe(ike_transforms_, protocol_id::ike));
}

} // namespace espresso::cp
