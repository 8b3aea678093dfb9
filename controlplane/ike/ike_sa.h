// One IKE SA (RFC 7296) and its Child SAs, in either role.
//
// Exchanges are split by file: exchange_init.cpp (IKE_SA_INIT), exchange_auth.cpp (IKE_AUTH and the
// first Child SA), exchange_child.cpp (CREATE_CHILD_SA: more Child SAs and Child rekey),
// exchange_info.cpp (INFORMATIONAL: delete and liveness). This file's .cpp holds what they share:
// message IDs, the window of one (§2.3), retransmission (§2.1), the cached response for duplicate
// requests, and sealing/opening the SK payload.
//
// Threads: an ike_sa belongs to the thread of its ike_manager; nothing here is shared.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "espresso/config/ike.h"
#include "espresso/cp/ike_crypto.h"
#include "espresso/cp/ike_message.h"
#include "ike_fragments.h"
#include "ike_io.h"
#include "proposals.h"
#include "pubkey_auth.h"

namespace espresso::cp {

using steady_time = std::chrono::steady_clock::time_point;

// Retransmission schedule (RFC 7296 §2.1 leaves it to the implementation): `base` doubled each try.
struct retransmit_policy {
    std::chrono::milliseconds base{1000};
    unsigned tries = 5; // retransmissions after the first send; then the peer is unreachable
};

// RFC 7296 §2.8: as the responder of a Child SA rekey we install the new inbound SA before answering,
// but hold the new outbound SA back: the initiator installs its new inbound SA only once it has our
// answer, so anything we sent on the new SA before that would be dropped there. We keep sending on the
// old outbound SA until the initiator deletes the old Child SA (it does so once its new SAs are in), or
// until pending_outbound_wait passes (a peer that never deletes it); strongSwan does the same as
// responder. The keys live here until then and are wiped when this goes (installed or abandoned).
struct pending_outbound {
    // The outbound SA, keys included. nullopt: abandoned, never to be installed (the peer's Child SA
    // lost a simultaneous rekey, §2.8.1, and the peer deletes it; if it has not by `deadline`, we do).
    std::optional<config::sa_config> sa;
    uint32_t replaces = 0;               // spi_in of the Child SA this one rekeys
    std::optional<uint32_t> response_id; // our CREATE_CHILD_SA response: a retransmitted request extends the wait
    steady_time deadline{};              // install it then even without the peer's Delete
    pending_outbound() = default;
    pending_outbound(const pending_outbound&) = delete;
    pending_outbound& operator=(const pending_outbound&) = delete;
    ~pending_outbound() { abandon(); }
    void abandon() noexcept
    {
        if (sa) {
            config::wipe_keys(*sa);
            sa.reset();
        }
    }
};
// How long a Child-rekey responder waits for the initiator's Delete of the old Child SA before it
// sends on the new SA anyway (and again from a retransmitted request: our answer was lost).
inline constexpr std::chrono::seconds pending_outbound_wait{2};

// The ID payload a peer configuration sends as ours (RFC 7296 §3.5): local-id, or local-address when
// it is not set. Used for IDi/IDr and, at configuration load, to check that our certificate holds it.
id_payload local_id_payload(const config::ike_peer_config& peer);

struct child_sa {
    enum class state : uint8_t { installed, rekeyed, deleting };
    std::string tunnel;      // configured tunnel name
    uint32_t spi_in = 0;     // ours: the peer sends with it
    uint32_t spi_out = 0;    // theirs
    chosen_transforms transforms;
    config::ip_prefix local, remote;
    config::ipsec_mode mode = config::ipsec_mode::tunnel;
    bool udp = false;
    state st = state::installed;
    bool delete_sent = false; // deleting: our Delete went out (not just queued or deferred)
    steady_time established{};
    steady_time rekey_at{};  // steady_time{} = never
    std::chrono::system_clock::time_point established_wall{};
    // Set: our outbound SA is not in the data plane (yet); see pending_outbound. Shared so that copies
    // of a child_sa (status snapshots) stay cheap; the keys are wiped when the last copy goes.
    std::shared_ptr<pending_outbound> pending_out;
    bool outbound_pending() const noexcept { return pending_out != nullptr; }
};

// Why the peer's IKE_AUTH did not verify (ike_sa::verify_peer_auth), for the Fix of `show crypto ike
// failures`: the fix names what to compare for the peer's auth method (a PSK's secret, a certificate's
// CA and identity), never the other method's settings.
enum class peer_auth_failure : uint8_t {
    missing_payloads, // no ID or AUTH payload
    identity,         // the ID the peer sent is not remote-id
    wrong_method,     // the peer signs with another method than ours expects
    credentials,      // PSK: the AUTH did not verify; pubkey: chain, identity in the certificate, signature
};
std::string peer_auth_fix(const config::ike_peer_config& peer, peer_auth_failure failure,
                          const std::string& peer_identity);

class ike_sa {
public:
    enum class role : uint8_t { initiator, responder };
    enum class state : uint8_t { init_sent, init_done, auth_sent, established, deleting, dead };

    // The peer's configuration is shared (many IKE SAs to one `any` peer must not each copy it).
    ike_sa(ike_io& io, std::shared_ptr<const config::ike_peer_config> peer, role r, uint64_t spi_i, uint64_t spi_r,
           endpoint local, endpoint remote, retransmit_policy retransmit = {});
    ike_sa(ike_io& io, const config::ike_peer_config& peer, role r, uint64_t spi_i, uint64_t spi_r, endpoint local,
           endpoint remote, retransmit_policy retransmit = {})
        : ike_sa(io, std::make_shared<const config::ike_peer_config>(peer), r, spi_i, spi_r, local, remote, retransmit)
    {
    }
    ~ike_sa();
    ike_sa(const ike_sa&) = delete;
    ike_sa& operator=(const ike_sa&) = delete;

    // Initiator: sends IKE_SA_INIT; `tunnels` come up with IKE_AUTH (the first) and CREATE_CHILD_SA.
    void initiate(std::vector<std::string> tunnels);
    // Responder: the first IKE_SA_INIT request (already parsed; `raw` as received).
    void respond_init(const message& request, std::span<const uint8_t> raw);
    // Any later message for this SA. `local`/`remote` as received (ports may float, §2.23).
    void handle(const message& msg, std::span<const uint8_t> raw, const endpoint& local, const endpoint& remote);
    // Retransmissions, liveness, rekeying. Call at next_deadline() or later.
    void tick();
    steady_time next_deadline() const;

    // Operator/daemon requests.
    // CREATE_CHILD_SA for each selector pair of the tunnel that has no Child SA yet (queued behind
    // other requests; during our IKE SA rekey, sent on the new IKE SA once it is done); nothing when
    // every pair has one or is being negotiated.
    void start_child(const std::string& tunnel);
    void rekey_child(uint32_t spi_in);
    void rekey_ike();                            // CREATE_CHILD_SA for the IKE SA (§1.3.2)
    void delete_sa();                           // INFORMATIONAL with Delete(IKE), then dead
    void shutdown_local();                      // remove Child SAs from the data plane, no message
    // `espresso reload` changed tunnels of this SA's peer but none of its IKE SA settings (docs/ike.md,
    // "Reload"): the SA switches to `next` and keeps its SPIs and keys. Child SAs of `removed` and
    // `changed` tunnels are deleted (INFORMATIONAL Delete, then out of the data plane); a changed tunnel
    // that was up here is negotiated again with its new settings (CREATE_CHILD_SA). Child SAs of other
    // tunnels are not touched. On an SA still being set up the same happens once it is established (a
    // tunnel not yet offered is simply offered with its new settings). Returns the tunnels whose Child
    // SAs it deleted (or will delete once established).
    std::vector<std::string> reconfigure(std::shared_ptr<const config::ike_peer_config> next,
                                         const std::vector<std::string>& removed,
                                         const std::vector<std::string>& changed);
    // Starts these tunnels: CREATE_CHILD_SA when established, else offered once it is (initiator).
    void start_tunnels(const std::vector<std::string>& tunnels);
    // The SA only waits to be deleted (its Child SAs moved to a rekeyed successor, or it is redundant).
    bool retiring() const noexcept { return ike_rekeyed_ || retire_at_rekey_time_; }

    // Data plane events.
    void on_soft_expire(uint32_t spi_in);

    uint64_t spi_i() const noexcept { return spi_i_; }
    uint64_t spi_r() const noexcept { return spi_r_; }
    uint64_t local_spi() const noexcept { return role_ == role::initiator ? spi_i_ : spi_r_; }
    role sa_role() const noexcept { return role_; }
    state sa_state() const noexcept { return state_; }
    const config::ike_peer_config& peer() const noexcept { return *peer_ptr_; }
    const std::shared_ptr<const config::ike_peer_config>& shared_peer() const noexcept { return peer_ptr_; }
    const endpoint& local() const noexcept { return local_; }
    const endpoint& remote() const noexcept { return remote_; }
    const chosen_transforms& transforms() const noexcept { return ike_transforms_; }
    const std::vector<child_sa>& children() const noexcept { return children_; }
    bool nat_detected() const noexcept { return nat_local_ || nat_remote_; }
    bool nat_local() const noexcept { return nat_local_; }   // we are behind a NAT
    bool nat_remote() const noexcept { return nat_remote_; } // the peer is
    std::chrono::system_clock::time_point created() const noexcept { return created_wall_; }
    std::optional<std::chrono::system_clock::time_point> established_at() const noexcept { return established_wall_; }
    std::string name() const; // "branch[3]" for logs
    const std::string& failure_cause() const noexcept { return failure_cause_; }
    std::string remote_identity() const { return remote_id_text_; }
    // The peer's ID type as received (RFC 7296 §3.5) as a short name ("ipv4", "fqdn", "rfc822",
    // "der-asn1-dn", ...; "" before its IKE_AUTH), and our own identity (local-id) as we send it.
    std::string remote_identity_type() const;
    std::string local_identity() const;
    std::string local_identity_type() const;
    // "psk" or "pubkey": how both ends authenticate (one method per peer, both directions).
    const char* auth_method_name() const noexcept { return uses_certificates() ? "pubkey" : "psk"; }
    // Called when the SA was replaced (rekey) or must go: the manager erases dead SAs.
    bool dead() const noexcept { return state_ == state::dead; }
    // DPD found the peer gone and dpd action is restart: the manager initiates a new IKE SA.
    bool restart_requested() const noexcept { return restart_requested_; }
    // The peer stopped answering liveness checks (DPD): the SA died of it.
    bool dpd_failed() const noexcept { return dpd_failed_; }
    // Certificate authentication (auth.method pubkey): our certificate, key and trusted CAs, loaded
    // once per peer by the manager. Without them such a peer cannot authenticate.
    void set_credentials(std::shared_ptr<const pubkey_credentials> credentials) { credentials_ = std::move(credentials); }
    // RFC 7383: where this SA counts fragments (the manager's counters; by default its own).
    void set_fragment_counters(fragment_counters* counters) { fragment_counters_ = counters ? counters : &own_fragment_counters_; }
    // Both ends announced IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT (RFC 7383 §2.3).
    bool fragmentation() const noexcept { return fragmentation_; }
    // The fragment size this SA uses now (IP datagram bytes): the peer's `fragment-size`, or less once
    // path MTU discovery (RFC 7383 §2.5.2) lowered it; kept for the SA's life and its rekeyed successors.
    uint32_t fragment_size() const noexcept { return fragment_size_; }
    // After an IKE SA rekey, the new IKE SA(s) this one created: the one that took over the Child SAs
    // and, after a simultaneous rekey (§2.8.2), the redundant one until it is deleted. The manager
    // adopts them; call until it returns null.
    std::unique_ptr<ike_sa> take_successor()
    {
        if (successors_.empty()) {
            return nullptr;
        }
        auto next = std::move(successors_.front());
        successors_.erase(successors_.begin());
        return next;
    }
    // INITIAL_CONTACT (RFC 7296 §2.4, §3.10.1): whether we send it in our IKE_AUTH (the manager says
    // so when we hold no other IKE SA with this peer), and whether the peer sent it in its (true once:
    // the manager then drops the peer's older IKE SAs with the same identity).
    void set_send_initial_contact(bool send) noexcept { send_initial_contact_ = send; }
    bool take_initial_contact() noexcept { return std::exchange(initial_contact_received_, false); }
    // True once, the first time it is asked after the SA was established (the manager tells the peer's
    // home shard of it once, not after every event).
    bool take_newly_established() noexcept
    {
        return established_wall_.has_value() && !std::exchange(establishment_reported_, true);
    }
    // The peer restarted (INITIAL_CONTACT on a newer IKE SA): remove our Child SAs from the data plane
    // and forget this SA without a message (the peer has no state left to tell).
    void forget_silently();
    // For a successor: take over keys from the SA it replaces (§2.18); Child SAs move in hand_over().
    void adopt(const chosen_transforms& transforms, ike_sa_keys keys, bool nat_local, bool nat_remote, std::string remote_id);

private:
    // ---- shared machinery (ike_sa.cpp) ----
    struct pending_request {
        exchange_type exchange;
        std::function<std::vector<payload>()> build;              // runs when the window opens
        std::function<void(const std::vector<payload>&)> on_reply; // decrypted reply payloads
        std::function<void()> on_timeout;
        std::string unsent; // logged as "<unsent>: <why>" if the request is dropped before it is sent
    };
    // A protected message before sealing, kept only while it may have to be fragmented again at a
    // smaller size (path MTU discovery, RFC 7383 §2.5.2): fragmentation negotiated and the message
    // bigger than the family's smallest fragment size.
    struct plain_message {
        exchange_type exchange = exchange_type::ike_sa_init;
        payload_type first = payload_type::none;
        bytes inner; // the serialized inner payloads; empty: nothing kept
    };
    struct outstanding {
        uint32_t message_id = 0;
        std::vector<bytes> datagrams; // one, or every fragment (RFC 7383: retransmissions resend them all)
        unsigned sent = 0;
        unsigned sent_at_size = 0;    // sends since the fragment size last changed (RFC 7383 §2.5.2)
        plain_message plain_copy;     // to fragment again smaller; empty when that cannot help
        steady_time deadline{};
        std::function<void(const std::vector<payload>&)> on_reply;
        std::function<void()> on_timeout;
        bool plain = false; // IKE_SA_INIT
    };

    void queue_request(pending_request request);
    // RFC 7296 §2.23: the peer's address or port changed on an authenticated message (its NAT mapping
    // changed): the installed Child SAs' outbound ESP follows it (sa_installer::update_peer).
    void follow_peer(const endpoint& previous);
    void pump_requests();
    void send_request_plain(bytes datagram);
    // One datagram, or the fragments (RFC 7383) when negotiated and the message would not fit; empty on failure.
    // `keep` receives the plaintext when it may have to be fragmented again smaller (see plain_message).
    std::vector<bytes> seal_message(exchange_type exchange, bool response, uint32_t message_id, const std::vector<payload>& payloads,
                                    plain_message* keep = nullptr);
    // Seals `inner` as one SK datagram or, above fragment_size_, as SKF fragments. `first_time`: count it
    // in messages_sent (a message fragmented again for path MTU discovery is not a new message).
    std::vector<bytes> fragment_message(exchange_type exchange, bool response, uint32_t message_id, payload_type first,
                                        std::span<const uint8_t> inner, bool first_time);
    // RFC 7383 §2.5.2: after pmtud_sends_per_size unanswered sends, lower fragment_size_ one step and
    // fragment `plain` again into `datagrams` (same message ID). False when that cannot make it smaller.
    bool retry_smaller(const plain_message& plain, bool response, uint32_t message_id, std::vector<bytes>& datagrams,
                       unsigned& sent_at_size);
    // A responder's hint: the peer's fragmented requests come in datagrams of `peer_fragment_hint_`
    // bytes (fragment 1 of several is always full). Responses are not fragmented bigger than that, so a
    // peer that lowered its size for path MTU discovery gets the response at its size at once.
    // Returns whether fragment_size_ went down.
    bool follow_peer_fragment_size();
    void note_request_fragment(const skf_payload& fragment, size_t datagram_bytes);
    // SK (total == 0) or SKF `number` of `total` around `plain`.
    bytes seal_datagram(exchange_type exchange, bool response, uint32_t message_id, payload_type first,
                        std::span<const uint8_t> plain, uint16_t number, uint16_t total);
    void send_datagrams(const std::vector<bytes>& datagrams);
    // An SKF message (RFC 7383 §2.6): checked, opened and collected; the inner payloads once all are here.
    std::optional<std::vector<payload>> open_fragment(const message& msg, const skf_payload& fragment,
                                                      std::span<const uint8_t> raw);
    // A retransmitted request we answered already: authentic? (for SKF: fragment 1 only, §2.6.1)
    bool authentic_retransmission(const message& msg, std::span<const uint8_t> raw);
    void expire_fragments();
    void count_unexpected_fragment(const message& msg);
    void send_response(exchange_type exchange, uint32_t message_id, const std::vector<payload>& payloads);
    std::optional<std::vector<payload>> open_message(const message& msg, std::span<const uint8_t> raw);
    void fail(const std::string& cause, const std::string& fix);
    void log(log_level level, const std::string& text);
    void set_established();
    uint32_t random_u32();

    // ---- IKE_SA_INIT (exchange_init.cpp) ----
    std::vector<payload> build_init_request();
    void process_init_response(const message& msg, std::span<const uint8_t> raw);
    std::vector<payload> nat_detection_payloads(uint64_t spi_r_for_hash);
    void check_nat_detection(const std::vector<payload>& payloads);
    bool derive_keys(const secret_bytes& g_ir);
    // Takes the seven keys (§2.14) for this SA's role: SK payload ciphers both ways, SK_d, SK_p.
    bool use_keys(const ike_sa_keys& keys);

    // ---- IKE_AUTH (exchange_auth.cpp) ----
    void send_auth_request();
    void process_auth_request(const message& msg, uint32_t message_id, const std::vector<payload>& payloads);
    void process_auth_response(const std::vector<payload>& payloads);
    id_payload own_id() const;
    bytes own_auth(const id_payload& id) const;
    bool verify_peer_auth(const std::vector<payload>& payloads, std::string& why, peer_auth_failure& failure);

    // ---- Child SAs (exchange_auth.cpp / exchange_child.cpp) ----
    // One Child SA per selector pair of a tunnel (each local-ts prefix with each remote-ts prefix of
    // its address family), as a Cisco crypto ACL gives one SA pair per line: an espresso-dp SA carries
    // one local and one remote prefix (traffic_selectors.h).
    struct ts_pair {
        config::ip_prefix local, remote;
    };
    static std::vector<ts_pair> pairs_of(const config::ike_tunnel_config& t);
    // The pairs of `t` that no Child SA (other than one being deleted) covers and no CREATE_CHILD_SA
    // of ours is negotiating.
    std::vector<ts_pair> missing_pairs(const config::ike_tunnel_config& t) const;
    void start_child_pair(const std::string& tunnel, const ts_pair& pair);
    struct starting_child {
        std::string tunnel;
        ts_pair pair;
        uint32_t spi_in = 0;
    };
    std::vector<starting_child> starting_; // our CREATE_CHILD_SA requests for new Child SAs, in flight
    // New Child SAs (spi_in unused) and Child SA deletes (our spi_in; the Child SA is marked deleting)
    // asked for while our IKE SA rekey is in flight. Not queued behind it: the old IKE SA's Delete
    // drops its queue. They run where the Child SAs go (hand_over), or here if the rekey fails; an IKE
    // SA that dies with no successor logs the new Child SAs it could not ask for (drop_deferred).
    std::vector<starting_child> deferred_starts_;
    std::vector<uint32_t> deferred_deletes_;
    void run_deferred(ike_sa& on);
    void drop_deferred(const std::string& why);
    // Empties the request queue, logging each request that says what is lost unsent (`unsent`).
    void drop_queue(const std::string& why);
    // "new Child SA for tunnel T (local === remote) not negotiated", for the logs of dropped requests.
    static std::string child_not_negotiated(const std::string& tunnel, const ts_pair& pair);
    struct refused_pair {
        std::string tunnel;
        ts_pair pair;
        steady_time until;
    };
    std::vector<refused_pair> refused_pairs_; // the peer refused them: not asked again before `until`
    struct child_offer {
        std::string tunnel;
        uint32_t spi_in = 0;
        std::vector<payload> payloads; // SA, [Ni, KE,] TSi, TSr, [N(USE_TRANSPORT_MODE)]
        std::unique_ptr<key_exchange> kex;
        bytes nonce;
        std::optional<uint32_t> rekeys; // spi_in of the Child SA this one replaces
        std::optional<ts_pair> pair;    // a new Child SA for this selector pair of the tunnel
        // The settings the offer was made with: a reload may change or remove the tunnel before the
        // answer comes (reconfigure), and the answer is checked against what we offered.
        std::shared_ptr<const config::ike_peer_config> made_with;
    };
    const config::ike_tunnel_config* find_tunnel(const std::string& name) const;
    // Offers `only` (a rekey: the Child SA's own selectors; a new Child SA: one pair of the tunnel), or
    // the tunnel's whole lists when null.
    std::optional<child_offer> make_child_offer(const std::string& tunnel, bool with_nonce_and_pfs,
                                                const ts_pair* only = nullptr);
    // Responder side of a Child SA request (IKE_AUTH or CREATE_CHILD_SA). Returns the reply payloads,
    // or an error notify; installs on success.
    // `create_child_sa`: the request carries Ni (and KE for PFS) and the reply Nr (and KE); in IKE_AUTH
    // the IKE SA's nonces are used and no PFS group is negotiated (§1.2).
    std::vector<payload> accept_child(const std::vector<payload>& request, bool create_child_sa,
                                      std::optional<uint32_t> rekeys);
    bool complete_child(child_offer& offer, const std::vector<payload>& reply, const secret_bytes* g_ir,
                        std::span<const uint8_t> nonce_i, std::span<const uint8_t> nonce_r);
    // `hold_outbound`: responder of a Child SA rekey; the outbound SA waits in child.pending_out.
    bool install_child(child_sa& child, const secret_bytes& keymat, bool we_initiated, bool hold_outbound = false);
    // Installs a held outbound SA (see pending_outbound); `why` for the log.
    void install_pending_outbound(child_sa& child, const std::string& why);
    // The Child SA `old_spi_in` leaves the data plane: the held outbound SAs of the Child SAs that
    // rekeyed it are installed first, so its traffic never finds no outbound SA.
    void install_successors_of(uint32_t old_spi_in, const std::string& why);
    void remove_child_from_dataplane(const child_sa& child);
    void schedule_rekey(child_sa& child, const config::ike_tunnel_config& tunnel);

    // ---- CREATE_CHILD_SA (exchange_child.cpp) ----
    void process_create_child_request(uint32_t message_id, const std::vector<payload>& payloads);
    void process_ike_rekey_request(uint32_t message_id, const std::vector<payload>& payloads); // exchange_ike_rekey.cpp
    // Creating, rekeying or deleting a Child SA of ours is under way (requested, not answered yet):
    // the IKE SA is not rekeyed meanwhile (RFC 7296 §2.25), so the Child SAs never move to a new
    // IKE SA while an exchange about them runs on this one.
    bool child_exchange_pending() const noexcept;

    // ---- INFORMATIONAL (exchange_info.cpp) ----
    void process_informational_request(uint32_t message_id, const std::vector<payload>& payloads);
    void send_dpd();
    void delete_child(uint32_t spi_in, bool send_delete);

    ike_io& io_;
    std::shared_ptr<const config::ike_peer_config> peer_ptr_;
    role role_;
    state state_;
    uint64_t spi_i_, spi_r_;
    endpoint local_, remote_;
    retransmit_policy retransmit_;
    std::chrono::system_clock::time_point created_wall_;
    std::optional<std::chrono::system_clock::time_point> established_wall_;

    // IKE_SA_INIT state.
    std::vector<std::string> pending_tunnels_;
    // The tunnel of the Child SA offered in our IKE_AUTH request while it is outstanding, and what a
    // reload decided about it meanwhile (reconfigure): delete it, and for a changed one negotiate it again.
    std::string auth_tunnel_;
    enum class auth_redo : uint8_t { none, remove, renegotiate };
    auth_redo auth_redo_ = auth_redo::none;
    // Child SAs (our old inbound SPI) being rekeyed when a reload removed or changed their tunnel: the
    // SA the rekey creates carries the old settings and is deleted as soon as it is installed.
    std::vector<uint32_t> retired_rekeys_;
    std::unique_ptr<key_exchange> kex_;
    uint16_t kex_group_ = 0;
    bytes nonce_i_, nonce_r_;
    bytes init_request_, init_response_; // exactly as sent/received: signed by AUTH (§2.15)
    bytes cookie_;
    unsigned init_attempts_ = 0;
    bool nat_local_ = false, nat_remote_ = false;

    chosen_transforms ike_transforms_;
    secret_bytes sk_d_, sk_pi_, sk_pr_;
    std::optional<sk_cipher> out_, in_;

    // Message IDs (§2.2) and the window of one.
    uint32_t next_request_id_ = 0;      // our next request
    uint32_t expected_request_id_ = 0;  // the peer's next request
    std::optional<uint32_t> last_response_id_;
    std::vector<bytes> last_response_;  // resent on a duplicate request (all fragments, RFC 7383)
    plain_message last_response_plain_; // to fragment it again smaller (RFC 7383 §2.5.2)
    unsigned last_response_sent_at_size_ = 0;
    std::optional<outstanding> outstanding_;
    // A vector, not a deque: an empty std::deque allocates ~600 bytes, and almost every IKE SA's
    // queue is empty almost always (perf/bench-ike: memory per IKE SA).
    std::vector<pending_request> queue_;
    steady_time last_heard_{};
    steady_time next_dpd_{};
    steady_time ike_rekey_at_{};

    std::vector<child_sa> children_;
    std::string failure_cause_;
    std::string remote_id_text_;
    uint8_t remote_id_type_ = 0; // 0 = not received yet
    bool restart_requested_ = false;
    bool dpd_failed_ = false;
    bool send_initial_contact_ = true;
    bool initial_contact_received_ = false;
    bool establishment_reported_ = false;
    std::shared_ptr<const pubkey_credentials> credentials_;
    // §2.8.1 simultaneous Child SA rekeying: Child SAs we are rekeying (old spi_in), and the peer's
    // rekey of the same SA that crossed ours (its nonces and the Child SA it created).
    struct rekey_collision {
        uint32_t old_spi_in = 0;
        uint32_t their_new_spi_in = 0;
        bytes nonce_i, nonce_r;
    };
    std::vector<uint32_t> rekeying_children_;
    std::vector<rekey_collision> collisions_;
    std::vector<uint16_t> peer_hash_algorithms_; // RFC 7427 §4 SIGNATURE_HASH_ALGORITHMS from the peer
    bool uses_certificates() const noexcept { return peer_ptr_->auth.method == config::ike_auth_method::pubkey; }
    std::optional<auth_payload> own_auth_payload(const id_payload& id, std::string& error) const;
    std::vector<payload> own_certificates() const;
    // IKE SA rekeying (exchange_ike_rekey.cpp).
    std::vector<std::unique_ptr<ike_sa>> successors_;
    bool rekeying_ike_ = false;  // our rekey request is in flight
    bool ike_rekeyed_ = false;   // our Child SAs moved to a successor; this SA only waits to be deleted
    // The SA is replaced or redundant: when ike_rekey_at_ comes and the peer has not deleted it, we do.
    bool retire_at_rekey_time_ = false;
    // §2.8.2: the peer's IKE SA rekey that we answered while ours was in flight; resolved (lowest of
    // the four nonces) when ours completes, taken over if ours fails or the peer deletes this SA.
    struct ike_rekey_candidate {
        std::unique_ptr<ike_sa> sa;
        bytes nonce_i, nonce_r;
    };
    std::optional<ike_rekey_candidate> ike_candidate_;
    void schedule_ike_rekey();
    std::unique_ptr<ike_sa> new_ike_sa(role r, uint64_t spi_i, uint64_t spi_r, const chosen_transforms& chosen,
                                       const secret_bytes& g_ir, std::span<const uint8_t> ni, std::span<const uint8_t> nr);
    void hand_over(std::unique_ptr<ike_sa> next); // the Child SAs move to `next`, which joins successors_
    void retire_after(std::chrono::seconds wait); // no more rekeying; deleted by us if the peer has not by then
    void take_over_candidate(const std::string& why);
    steady_time half_open_deadline_{};

    // RFC 7383 fragmentation (ike_sa.cpp; negotiated in exchange_init.cpp).
    bool fragmentation_ = false;
    uint32_t fragment_size_ = 0; // peer_ptr_->fragment_size until path MTU discovery lowers it
    uint32_t peer_fragment_hint_ = 0; // IP datagram bytes of the peer's last fragmented request; 0: none
    fragment_reassembly request_fragments_;  // the peer's request being collected
    fragment_reassembly response_fragments_; // the response to our outstanding request
    fragment_counters own_fragment_counters_;
    fragment_counters* fragment_counters_ = &own_fragment_counters_;
};

} // namespace espresso::cp
