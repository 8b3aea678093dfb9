#include "ike_sa.h"

#include <algorithm>
#include <cstring>

namespace espresso::cp {

std::string to_string(const endpoint& e)
{
    return config::to_string(e.address) + ":" + std::to_string(e.port);
}

ike_sa::ike_sa(ike_io& io, std::shared_ptr<const config::ike_peer_config> peer, role r, uint64_t spi_i, uint64_t spi_r,
               endpoint local, endpoint remote, retransmit_policy retransmit)
    : io_(io), peer_ptr_(std::move(peer)), role_(r), state_(r == role::initiator ? state::init_sent : state::init_done), spi_i_(spi_i),
      spi_r_(spi_r), local_(local), remote_(remote), retransmit_(retransmit),
      created_wall_(std::chrono::system_clock::now())
{
    last_heard_ = io_.now();
    fragment_size_ = peer_ptr_->fragment_size;
    // A half-open SA that never authenticates is dropped (RFC 7296 §2.6 spirit: bounded state).
    half_open_deadline_ = last_heard_ + std::chrono::seconds(30);
}

ike_sa::~ike_sa() = default;

std::string ike_sa::name() const
{
    char spi[20];
    std::snprintf(spi, sizeof(spi), "%016llx", static_cast<unsigned long long>(local_spi()));
    return peer_ptr_->name + "[" + spi + "]";
}

void ike_sa::log(log_level level, const std::string& text)
{
    io_.log(level, name(), text);
}

uint32_t ike_sa::random_u32()
{
    uint8_t b[4];
    io_.random().fill(b);
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
}

void ike_sa::fail(const std::string& cause, const std::string& fix)
{
    failure_cause_ = cause;
    io_.failure({std::chrono::system_clock::now(), peer_ptr_->name, to_string(remote_), cause, fix});
    log(log_level::error, cause + " Fix: " + fix);
    shutdown_local();
    state_ = state::dead;
}

void ike_sa::set_established()
{
    state_ = state::established;
    // The IKE_SA_INIT messages were only needed for AUTH (§2.15); half the memory of an idle IKE SA.
    init_request_ = bytes{};
    init_response_ = bytes{};
    established_wall_ = std::chrono::system_clock::now();
    auto now = io_.now();
    if (peer_ptr_->dpd_interval != 0) {
        next_dpd_ = now + std::chrono::seconds(peer_ptr_->dpd_interval);
    }
    schedule_ike_rekey();
    log(log_level::info, "IKE SA established with " + to_string(remote_) + " (" + remote_id_text_ + "), " +
                             describe(ike_transforms_, protocol_id::ike) +
                             (nat_detected() ? ", NAT detected, UDP encapsulation" : ""));
}

void ike_sa::shutdown_local()
{
    for (const auto& c : children_) {
        remove_child_from_dataplane(c);
    }
    children_.clear();
    outstanding_.reset();
    drop_queue("the IKE SA is gone");
    drop_deferred("the IKE SA is gone");
}

void ike_sa::drop_queue(const std::string& why)
{
    // Requests not sent yet go with the IKE SA; the new Child SAs among them are logged (the operator,
    // an acquire or a reload asked for them), the rest is about Child SAs going anyway.
    for (const auto& q : queue_) {
        if (!q.unsent.empty()) {
            log(log_level::warning, q.unsent + ": " + why);
        }
    }
    queue_.clear();
}

// ---- sending -----------------------------------------------------------------------------------

bytes ike_sa::seal_datagram(exchange_type exchange, bool response, uint32_t message_id, payload_type first,
                            std::span<const uint8_t> plain, uint16_t number, uint16_t total)
{
    const bool fragment = total != 0;
    const size_t payload_header = fragment ? skf_header_size : generic_payload_header_size;
    const size_t sealed = out_->sealed_size(plain.size());
    const size_t payload_length = payload_header + sealed;
    if (payload_length > 65535) {
        // §3.2: a payload length is 16 bits. Only a message with huge certificates gets here, and only
        // when fragmentation is off or not negotiated.
        log(log_level::error, "cannot send " + to_string(exchange) + " " + std::to_string(message_id) + ": " +
                                  std::to_string(plain.size()) + " bytes do not fit one SK payload");
        return {};
    }
    bytes datagram(header_size + payload_length);
    ike_header h;
    h.spi_i = spi_i_;
    h.spi_r = spi_r_;
    h.next = fragment ? payload_type::skf : payload_type::sk;
    h.exchange = static_cast<uint8_t>(exchange);
    h.flags = static_cast<uint8_t>((role_ == role::initiator ? flag_initiator : 0) | (response ? flag_response : 0));
    h.message_id = message_id;
    h.length = static_cast<uint32_t>(datagram.size());
    write_header(h, std::span<uint8_t, header_size>(datagram.data(), header_size));
    uint8_t* g = datagram.data() + header_size;
    g[0] = static_cast<uint8_t>(first);
    g[1] = 0;
    g[2] = static_cast<uint8_t>(payload_length >> 8);
    g[3] = static_cast<uint8_t>(payload_length);
    if (fragment) {
        // RFC 7383 §2.5: Fragment Number and Total Fragments, authenticated with the header (they sit
        // before the IV, so they are part of the AAD / the ICV's input).
        g[4] = static_cast<uint8_t>(number >> 8);
        g[5] = static_cast<uint8_t>(number);
        g[6] = static_cast<uint8_t>(total >> 8);
        g[7] = static_cast<uint8_t>(total);
    }
    std::span<const uint8_t> aad(datagram.data(), header_size + payload_header);
    std::span<uint8_t> out(datagram.data() + aad.size(), sealed);
    if (!out_->seal(aad, plain, out, io_.random())) {
        log(log_level::error, fragment ? "sealing an SKF payload failed (OpenSSL)" : "sealing the SK payload failed (OpenSSL)");
        return {};
    }
    return datagram;
}

std::vector<bytes> ike_sa::seal_message(exchange_type exchange, bool response, uint32_t message_id,
                                        const std::vector<payload>& payloads, plain_message* keep)
{
    payload_type first = payload_type::none;
    bytes inner = serialize_payloads(payloads, first);
    auto out = fragment_message(exchange, response, message_id, first, inner, true);
    // Keep the plaintext only where fragmenting again can make the datagrams smaller (§2.5.2): both
    // ends fragment, and the message is bigger than the family's smallest fragment size.
    const uint32_t floor = local_.address.is_v6() ? pmtud_floor_ipv6 : pmtud_floor_ipv4;
    if (keep != nullptr && fragmentation_ && peer_ptr_->fragmentation != config::ike_fragmentation::accept &&
        exchange != exchange_type::ike_sa_init && !out.empty() &&
        header_size + generic_payload_header_size + out_->sealed_size(inner.size()) > ike_bytes_per_datagram(floor, local_)) {
        *keep = plain_message{exchange, first, std::move(inner)};
    }
    return out;
}

std::vector<bytes> ike_sa::fragment_message(exchange_type exchange, bool response, uint32_t message_id, payload_type first,
                                            std::span<const uint8_t> inner, bool first_time)
{
    std::vector<bytes> out;
    // RFC 7383 §2.5.1: fragment only what would not fit one datagram of the fragment size, only after
    // IKE_SA_INIT (never fragmented, §2.5), only when both announced support, and not with `accept`.
    const size_t room = ike_bytes_per_datagram(fragment_size_, local_);
    const size_t whole = header_size + generic_payload_header_size + out_->sealed_size(inner.size());
    if (fragmentation_ && peer_ptr_->fragmentation != config::ike_fragmentation::accept &&
        exchange != exchange_type::ike_sa_init && whole > room) {
        const size_t chunk = fragment_plaintext_size(*out_, room);
        const size_t total = chunk == 0 ? 0 : (inner.size() + chunk - 1) / chunk;
        if (total >= 1 && total <= max_fragments) {
            std::span<const uint8_t> rest(inner);
            for (size_t i = 0; i < total; ++i) {
                auto piece = rest.first(std::min(chunk, rest.size()));
                rest = rest.subspan(piece.size());
                // §2.5: only the first fragment names the first inner payload.
                bytes d = seal_datagram(exchange, response, message_id, i == 0 ? first : payload_type::none, piece,
                                        static_cast<uint16_t>(i + 1), static_cast<uint16_t>(total));
                if (d.empty()) {
                    return {};
                }
                out.push_back(std::move(d));
            }
            if (first_time) {
                ++fragment_counters_->messages_sent;
            }
            if (io_.debug_enabled()) {
                log(log_level::debug, "sending " + to_string(exchange) + (response ? " response " : " request ") +
                                          std::to_string(message_id) + " (" + std::to_string(whole) +
                                          " bytes) as " + std::to_string(total) + " fragments of at most " +
                                          std::to_string(room) + " bytes (RFC 7383)");
            }
            return out;
        }
        log(log_level::warning, "cannot fragment a " + std::to_string(whole) + "-byte message into at most " +
                                    std::to_string(max_fragments) + " fragments of " + std::to_string(room) +
                                    " bytes; sending it whole");
    }
    bytes d = seal_datagram(exchange, response, message_id, first, inner, 0, 0);
    if (!d.empty()) {
        out.push_back(std::move(d));
    }
    return out;
}

bool ike_sa::retry_smaller(const plain_message& plain, bool response, uint32_t message_id, std::vector<bytes>& datagrams,
                           unsigned& sent_at_size)
{
    if (plain.inner.empty() || sent_at_size < pmtud_sends_per_size) {
        return false;
    }
    size_t largest = 0;
    for (const auto& d : datagrams) {
        largest = std::max(largest, d.size());
    }
    const uint32_t next = next_fragment_size(fragment_size_, local_.address.is_v6());
    // Lowering helps only when some datagram would not fit the next size.
    if (next == 0 || largest <= ike_bytes_per_datagram(next, local_)) {
        return false;
    }
    const uint32_t before = fragment_size_;
    fragment_size_ = next;
    auto smaller = fragment_message(plain.exchange, response, message_id, plain.first, plain.inner, false);
    if (smaller.empty()) {
        fragment_size_ = before;
        return false;
    }
    ++fragment_counters_->pmtu_lowered;
    log(log_level::info, "no answer to " + to_string(plain.exchange) + (response ? " response " : " request ") +
                             std::to_string(message_id) + " after " + std::to_string(sent_at_size) + " sends of datagrams up to " +
                             std::to_string(before) + " bytes: path MTU discovery (RFC 7383 §2.5.2) lowers the fragment size to " +
                             std::to_string(next) + " bytes (" + std::to_string(smaller.size()) + " fragments)");
    datagrams = std::move(smaller);
    sent_at_size = 0;
    return true;
}

void ike_sa::send_datagrams(const std::vector<bytes>& datagrams)
{
    for (const auto& d : datagrams) {
        io_.send(local_, remote_, d);
    }
    if (datagrams.size() > 1) {
        fragment_counters_->sent += datagrams.size();
    }
}

void ike_sa::note_request_fragment(const skf_payload& fragment, size_t datagram_bytes)
{
    if (fragment.number == 1 && fragment.total > 1) {
        const size_t ip = datagram_bytes + (local_.address.is_v6() ? 40 : 20) + 8 + (local_.port != 500 ? 4 : 0);
        peer_fragment_hint_ = static_cast<uint32_t>(std::min<size_t>(ip, UINT32_MAX));
    }
}

bool ike_sa::follow_peer_fragment_size()
{
    // A full fragment may stay up to a cipher block (plus padding) short of the sender's size: only a
    // clearly smaller datagram is a hint.
    constexpr uint32_t slack = 32;
    if (peer_fragment_hint_ == 0 || peer_fragment_hint_ + slack >= fragment_size_ || !fragmentation_ ||
        peer_ptr_->fragmentation == config::ike_fragmentation::accept) {
        return false;
    }
    const uint32_t next = fragment_size_at_most(peer_fragment_hint_ + slack - 1, local_.address.is_v6());
    if (next >= fragment_size_) {
        return false;
    }
    ++fragment_counters_->pmtu_lowered;
    log(log_level::info, "the peer's request fragments are " + std::to_string(peer_fragment_hint_) +
                             "-byte datagrams: path MTU discovery (RFC 7383 §2.5.2) lowers the fragment size from " +
                             std::to_string(fragment_size_) + " to " + std::to_string(next) + " bytes for responses");
    fragment_size_ = next;
    return true;
}

void ike_sa::send_response(exchange_type exchange, uint32_t message_id, const std::vector<payload>& payloads)
{
    follow_peer_fragment_size();
    plain_message plain;
    auto datagrams = seal_message(exchange, true, message_id, payloads, &plain);
    if (datagrams.empty()) {
        return;
    }
    send_datagrams(datagrams);
    last_response_ = std::move(datagrams);
    last_response_plain_ = std::move(plain);
    last_response_sent_at_size_ = 1;
    last_response_id_ = message_id;
    expected_request_id_ = message_id + 1;
}

void ike_sa::send_request_plain(bytes datagram)
{
    io_.send(local_, remote_, datagram);
    outstanding o;
    o.message_id = 0;
    o.datagrams.push_back(std::move(datagram));
    o.sent = 1;
    o.deadline = io_.now() + retransmit_.base;
    o.plain = true;
    o.on_timeout = [this] {
        fail("peer " + peer_ptr_->name + " (" + to_string(remote_) + ") did not answer IKE_SA_INIT after " +
                 std::to_string(retransmit_.tries + 1) + " tries: peer unreachable.",
             "check that the peer is reachable on UDP " + std::to_string(remote_.port) +
                 ", that its IKE daemon runs and has a connection for " + config::to_string(local_.address) +
                 ", and routes/firewalls between the gateways.");
    };
    outstanding_ = std::move(o);
}

void ike_sa::queue_request(pending_request request)
{
    queue_.push_back(std::move(request));
    pump_requests();
}

void ike_sa::follow_peer(const endpoint& previous)
{
    if (previous == remote_ || previous.port == 0 || state_ != state::established) {
        return;
    }
    unsigned moved = 0;
    for (auto& c : children_) {
        if (c.st == child_sa::state::deleting) {
            continue;
        }
        // Transport mode has no outer address of its own: only its UDP port can follow.
        const bool address_moved = c.mode == config::ipsec_mode::tunnel && previous.address != remote_.address;
        const bool port_moved = c.udp && previous.port != remote_.port;
        if (!address_moved && !port_moved) {
            continue;
        }
        if (c.outbound_pending()) {
            // Not in the data plane yet: the held SA follows before it is installed.
            if (c.pending_out->sa) {
                if (address_moved) {
                    c.pending_out->sa->destination = remote_.address;
                }
                if (port_moved && c.pending_out->sa->udp) {
                    c.pending_out->sa->udp->destination_port = remote_.port;
                }
            }
            ++moved;
            continue;
        }
        const std::string err = io_.installer().update_peer(c.spi_out, address_moved ? remote_.address : config::ip_address{},
                                                            port_moved ? remote_.port : 0);
        if (err.empty()) {
            ++moved;
        } else {
            log(log_level::warning, "outbound SA " + std::to_string(c.spi_out) + " cannot follow the peer: " + err);
        }
    }
    log(log_level::info, "peer moved from " + to_string(previous) + " to " + to_string(remote_) +
                             " (NAT mapping changed, RFC 7296 §2.23): " + std::to_string(moved) +
                             " outbound SA(s) follow");
}

void ike_sa::pump_requests()
{
    if (outstanding_ || queue_.empty() || !out_ || state_ == state::dead) {
        return;
    }
    if (state_ != state::established && state_ != state::deleting && queue_.front().exchange != exchange_type::ike_auth) {
        return;
    }
    pending_request r = std::move(queue_.front());
    queue_.erase(queue_.begin());
    uint32_t id = next_request_id_++;
    plain_message plain;
    auto datagrams = seal_message(r.exchange, false, id, r.build(), &plain);
    if (datagrams.empty()) {
        return;
    }
    send_datagrams(datagrams);
    outstanding o;
    o.message_id = id;
    o.datagrams = std::move(datagrams);
    o.sent = 1;
    o.sent_at_size = 1;
    o.plain_copy = std::move(plain);
    o.deadline = io_.now() + retransmit_.base;
    o.on_reply = std::move(r.on_reply);
    o.on_timeout = std::move(r.on_timeout);
    outstanding_ = std::move(o);
}

// ---- receiving ---------------------------------------------------------------------------------

std::optional<std::vector<payload>> ike_sa::open_message(const message& msg, std::span<const uint8_t> raw)
{
    if (!in_ || msg.payloads.empty()) {
        return std::nullopt;
    }
    if (const auto* skf = std::get_if<skf_payload>(&msg.payloads.back().body)) {
        return open_fragment(msg, *skf, raw);
    }
    const auto* sk = std::get_if<sk_payload>(&msg.payloads.back().body);
    if (sk == nullptr || msg.payloads.back().type != payload_type::sk) {
        log(log_level::debug, "dropped " + describe(msg) + ": not encrypted");
        return std::nullopt;
    }
    std::string error;
    auto plain = in_->open(raw.first(sk->aad_size), sk->body, error);
    if (!plain) {
        // §2.21.2: messages that fail integrity checks are dropped silently (and counted).
        log(log_level::warning, "dropped " + to_string(static_cast<exchange_type>(msg.header.exchange)) +
                                    " message " + std::to_string(msg.header.message_id) + ": " + error);
        return std::nullopt;
    }
    auto parsed = parse_payloads(sk->first_inner, *plain);
    if (auto* err = std::get_if<parse_error>(&parsed)) {
        log(log_level::warning, "dropped a message with malformed encrypted payloads: " + err->what);
        return std::nullopt;
    }
    return std::get<std::vector<payload>>(std::move(parsed));
}

std::optional<std::vector<payload>> ike_sa::open_fragment(const message& msg, const skf_payload& fragment,
                                                          std::span<const uint8_t> raw)
{
    auto& counters = *fragment_counters_;
    const auto& h = msg.header;
    const std::string which = to_string(static_cast<exchange_type>(h.exchange)) +
                              (h.is_response() ? " response " : " request ") + std::to_string(h.message_id) +
                              " fragment " + std::to_string(fragment.number) + "/" + std::to_string(fragment.total);
    if (!fragmentation_) {
        // RFC 7383 §2.3: only after both announced support (with `fragmentation: no`, we did not).
        ++counters.not_negotiated;
        log(log_level::warning, "dropped " + which + ": IKE fragmentation was not negotiated with this peer");
        return std::nullopt;
    }
    if (msg.payloads.size() != 1) {
        // No exchange after IKE_SA_INIT has unencrypted payloads in front of SK, so none in front of SKF.
        ++counters.invalid;
        log(log_level::warning, "dropped " + which + ": unencrypted payloads before the SKF payload");
        return std::nullopt;
    }
    auto& collection = h.is_response() ? response_fragments_ : request_fragments_;
    // §2.6: duplicates and fragments older than the collection are dropped before any crypto work.
    switch (collection.check(h.message_id, fragment.number, fragment.total)) {
    case fragment_reassembly::check_result::duplicate:
        ++counters.duplicate;
        if (io_.debug_enabled()) {
            log(log_level::debug, "ignored " + which + ": already received");
        }
        return std::nullopt;
    case fragment_reassembly::check_result::stale:
        ++counters.stale;
        log(log_level::debug, "dropped " + which + ": fewer Total Fragments than the fragments being collected");
        return std::nullopt;
    case fragment_reassembly::check_result::fresh:
        break;
    }
    std::string error;
    auto plain = in_->open(raw.first(fragment.aad_size), fragment.body, error);
    if (!plain) {
        // §2.6: a fragment whose ICV fails is dropped silently; the others stay (and are counted).
        ++counters.invalid;
        log(log_level::warning, "dropped " + which + ": " + error);
        return std::nullopt;
    }
    ++counters.received;
    if (!h.is_response()) {
        note_request_fragment(fragment, raw.size());
    }
    size_t discarded = 0;
    auto added = collection.add(h.message_id, h.exchange, fragment, std::move(*plain), io_.now(), discarded);
    counters.discarded += discarded;
    if (discarded != 0) {
        log(log_level::debug, "discarded " + std::to_string(discarded) + " fragment(s) collected before " + which);
    }
    if (added == fragment_reassembly::add_result::too_big) {
        log(log_level::warning, "dropped " + which + " and the fragments before it: the message would exceed " +
                                    std::to_string(max_reassembled_size) + " bytes");
        return std::nullopt;
    }
    if (added == fragment_reassembly::add_result::stored) {
        if (io_.debug_enabled()) {
            log(log_level::debug, "received " + which);
        }
        return std::nullopt;
    }
    auto whole = collection.take();
    auto parsed = parse_payloads(whole.first, whole.chain);
    if (auto* err = std::get_if<parse_error>(&parsed)) {
        counters.discarded += fragment.total;
        log(log_level::warning, "dropped a reassembled message with malformed encrypted payloads: " + err->what);
        return std::nullopt;
    }
    ++counters.reassembled;
    if (io_.debug_enabled()) {
        log(log_level::debug, "reassembled " + to_string(static_cast<exchange_type>(h.exchange)) +
                                  (h.is_response() ? " response " : " request ") + std::to_string(h.message_id) +
                                  " from " + std::to_string(fragment.total) + " fragments (" +
                                  std::to_string(whole.chain.size()) + " bytes of payloads, RFC 7383)");
    }
    return std::get<std::vector<payload>>(std::move(parsed));
}

bool ike_sa::authentic_retransmission(const message& msg, std::span<const uint8_t> raw)
{
    if (!in_ || msg.payloads.empty()) {
        return false;
    }
    const auto* fragment = std::get_if<skf_payload>(&msg.payloads.back().body);
    if (fragment == nullptr) {
        return open_message(msg, raw).has_value();
    }
    // RFC 7383 §2.6.1: a retransmitted fragmented request is answered once, on its first fragment
    // (after checking it is really from the peer); the others are ignored, not answered N times.
    if (!fragmentation_) {
        ++fragment_counters_->not_negotiated;
        return false;
    }
    if (fragment->number != 1) {
        ++fragment_counters_->duplicate;
        return false;
    }
    std::string error;
    if (!in_->open(raw.first(fragment->aad_size), fragment->body, error)) {
        ++fragment_counters_->invalid;
        log(log_level::warning, "dropped a retransmitted request fragment: " + error);
        return false;
    }
    ++fragment_counters_->duplicate;
    note_request_fragment(*fragment, raw.size());
    return true;
}

void ike_sa::count_unexpected_fragment(const message& msg)
{
    if (!msg.payloads.empty() && std::holds_alternative<skf_payload>(msg.payloads.back().body)) {
        ++fragment_counters_->unexpected;
    }
}

void ike_sa::expire_fragments()
{
    auto now = io_.now();
    for (auto* r : {&request_fragments_, &response_fragments_}) {
        if (r->active() && now >= r->deadline()) {
            size_t n = r->clear();
            fragment_counters_->discarded += n;
            log(log_level::warning, "gave up an incomplete fragmented message after " +
                                        std::to_string(fragment_reassembly::timeout.count()) + " s (" +
                                        std::to_string(n) + " fragment(s) discarded)");
        }
    }
}

void ike_sa::handle(const message& msg, std::span<const uint8_t> raw, const endpoint& local, const endpoint& remote)
{
    if (state_ == state::dead) {
        return;
    }
    const auto& h = msg.header;
    if (h.is_response()) {
        if (!outstanding_ || outstanding_->message_id != h.message_id) {
            count_unexpected_fragment(msg);
            log(log_level::debug, "dropped an unexpected response " + std::to_string(h.message_id));
            return;
        }
        if (outstanding_->plain) {
            last_heard_ = io_.now();
            process_init_response(msg, raw);
            return;
        }
        auto payloads = open_message(msg, raw);
        if (!payloads) {
            return;
        }
        last_heard_ = io_.now();
        // §2.23: the port may float only on an authenticated message.
        const endpoint previous = remote_;
        remote_ = remote;
        local_ = local;
        follow_peer(previous);
        auto done = std::move(outstanding_);
        outstanding_.reset();
        if (done->on_reply) {
            done->on_reply(*payloads);
        }
        pump_requests();
        return;
    }

    // A request from the peer.
    if (last_response_id_ && h.message_id == *last_response_id_) {
        // §2.1: a retransmitted request gets the same response, without processing it again.
        if (h.exchange == static_cast<uint8_t>(exchange_type::ike_sa_init) || authentic_retransmission(msg, raw)) {
            // RFC 7383 §2.5.2 for responses: the peer asking again means our response did not arrive.
            // A peer that went smaller for its request gets the response at its size at once; otherwise
            // the response goes one step smaller after as many sends as a request gets per size.
            if (follow_peer_fragment_size() && !last_response_plain_.inner.empty()) {
                auto smaller = fragment_message(last_response_plain_.exchange, true, *last_response_id_,
                                                last_response_plain_.first, last_response_plain_.inner, false);
                if (!smaller.empty()) {
                    last_response_ = std::move(smaller);
                    last_response_sent_at_size_ = 0;
                }
            } else {
                retry_smaller(last_response_plain_, true, *last_response_id_, last_response_, last_response_sent_at_size_);
            }
            send_datagrams(last_response_);
            ++last_response_sent_at_size_;
            // Our answer to a Child SA rekey was lost: the peer has not installed the new SAs yet, so
            // a held outbound SA (pending_outbound) waits again from now.
            for (auto& c : children_) {
                if (c.pending_out && c.pending_out->sa && c.pending_out->response_id == *last_response_id_) {
                    c.pending_out->deadline = io_.now() + pending_outbound_wait;
                }
            }
        }
        return;
    }
    if (h.message_id != expected_request_id_) {
        count_unexpected_fragment(msg);
        log(log_level::debug, "dropped request " + std::to_string(h.message_id) + " (expected " +
                                  std::to_string(expected_request_id_) + ")");
        return;
    }
    if (h.exchange == static_cast<uint8_t>(exchange_type::ike_sa_init)) {
        return; // only the first one creates an SA (ike_manager)
    }
    auto payloads = open_message(msg, raw);
    if (!payloads) {
        return;
    }
    last_heard_ = io_.now();
    const endpoint previous = remote_;
    remote_ = remote;
    local_ = local;
    follow_peer(previous);
    switch (static_cast<exchange_type>(h.exchange)) {
    case exchange_type::ike_auth:
        if (role_ == role::responder && state_ == state::init_done) {
            process_auth_request(msg, h.message_id, *payloads);
        }
        break;
    case exchange_type::create_child_sa:
        if (state_ == state::established || state_ == state::deleting) {
            process_create_child_request(h.message_id, *payloads);
        }
        break;
    case exchange_type::informational:
        if (state_ == state::established || state_ == state::deleting) {
            process_informational_request(h.message_id, *payloads);
        }
        break;
    default:
        log(log_level::debug, "ignored exchange type " + std::to_string(h.exchange));
        break;
    }
    pump_requests();
}

// ---- time --------------------------------------------------------------------------------------

steady_time ike_sa::next_deadline() const
{
    steady_time next = steady_time::max();
    if (outstanding_) {
        next = std::min(next, outstanding_->deadline);
    }
    for (const auto* r : {&request_fragments_, &response_fragments_}) {
        if (r->active()) {
            next = std::min(next, r->deadline());
        }
    }
    if (state_ == state::established) {
        if (next_dpd_ != steady_time{}) {
            next = std::min(next, next_dpd_);
        }
        for (const auto& c : children_) {
            if (c.rekey_at != steady_time{} && c.st == child_sa::state::installed) {
                next = std::min(next, c.rekey_at);
            }
            if (c.pending_out && c.st != child_sa::state::deleting) {
                next = std::min(next, c.pending_out->deadline);
            }
            if (const auto* t = find_tunnel(c.tunnel); t != nullptr && t->rekey_time != 0 &&
                                                       c.st != child_sa::state::deleting) {
                next = std::min(next, c.established + std::chrono::milliseconds(uint64_t{t->rekey_time} * 1100u));
            }
        }
        if (ike_rekey_at_ != steady_time{}) {
            next = std::min(next, ike_rekey_at_);
        }
    } else if (state_ != state::dead && state_ != state::deleting && !outstanding_) {
        // While a request is outstanding its retransmissions decide (tick() checks the same).
        next = std::min(next, half_open_deadline_);
    }
    return next;
}

void ike_sa::tick()
{
    if (state_ == state::dead) {
        return;
    }
    auto now = io_.now();
    expire_fragments();
    if (outstanding_ && now >= outstanding_->deadline) {
        if (outstanding_->sent > retransmit_.tries) {
            auto on_timeout = std::move(outstanding_->on_timeout);
            outstanding_.reset();
            if (on_timeout) {
                on_timeout();
            } else {
                fail("peer " + peer_ptr_->name + " stopped answering.", "check the peer and the path to it.");
            }
            if (state_ == state::dead) {
                return;
            }
        } else {
            retry_smaller(outstanding_->plain_copy, false, outstanding_->message_id, outstanding_->datagrams,
                          outstanding_->sent_at_size);
            send_datagrams(outstanding_->datagrams);
            ++outstanding_->sent_at_size;
            // §2.1: retransmissions back off exponentially.
            outstanding_->deadline = now + retransmit_.base * (1u << std::min(outstanding_->sent, 10u));
            ++outstanding_->sent;
            log(log_level::debug, "retransmit " + std::to_string(outstanding_->message_id) + " (" +
                                      std::to_string(outstanding_->sent) + ")");
        }
    }
    if (state_ != state::established && state_ != state::deleting && state_ != state::dead && now >= half_open_deadline_ &&
        !outstanding_) {
        fail("IKE SA with " + to_string(remote_) + " did not complete within 30 s.",
             "check the peer's logs; it may have rejected our messages silently.");
        return;
    }
    if (state_ != state::established) {
        return;
    }
    // Held outbound SAs whose wait is over (pending_outbound): the peer never deleted the old Child
    // SA, or an abandoned one the peer should have deleted and did not.
    std::vector<uint32_t> overdue;
    for (auto& c : children_) {
        if (c.pending_out && c.st != child_sa::state::deleting && now >= c.pending_out->deadline) {
            if (c.pending_out->sa) {
                install_pending_outbound(c, "the peer did not delete the Child SA it rekeys within " +
                                                std::to_string(pending_outbound_wait.count()) + " s");
            } else {
                overdue.push_back(c.spi_in);
            }
        }
    }
    for (uint32_t spi : overdue) {
        log(log_level::info, "the peer did not delete its redundant Child SA (RFC 7296 §2.8.1); deleting it");
        delete_child(spi, true);
    }
    for (auto& c : children_) {
        if (c.rekey_at != steady_time{} && c.st == child_sa::state::installed && now >= c.rekey_at) {
            c.rekey_at = steady_time{};
            rekey_child(c.spi_in);
        }
    }
    // Hard lifetime (docs/configuration.md, tunnel rekey-time): a Child SA whose rekeys kept failing
    // goes at 110 % of rekey-time, so keys are never used longer than the operator allowed; the
    // tunnel's trap policy then drops its traffic and raises acquires, which negotiate it anew.
    std::vector<uint32_t> expired;
    for (const auto& c : children_) {
        const auto* t = find_tunnel(c.tunnel);
        if (t == nullptr || t->rekey_time == 0 || c.st == child_sa::state::deleting ||
            now < c.established + std::chrono::milliseconds(uint64_t{t->rekey_time} * 1100u)) {
            continue;
        }
        expired.push_back(c.spi_in);
    }
    for (uint32_t spi : expired) {
        auto c = std::find_if(children_.begin(), children_.end(), [&](const child_sa& x) { return x.spi_in == spi; });
        io_.failure({std::chrono::system_clock::now(), peer_ptr_->name, to_string(remote_),
                     "Child SA " + c->tunnel + " reached its hard lifetime (110 % of rekey-time) without a successful rekey.",
                     "see the earlier failures of this peer for why the rekey failed; traffic renegotiates it."});
        log(log_level::warning, "Child SA " + c->tunnel + " reached its hard lifetime without a successful rekey: deleting it");
        delete_child(spi, true);
    }
    if (ike_rekey_at_ != steady_time{} && now >= ike_rekey_at_) {
        if (retire_at_rekey_time_) {
            ike_rekey_at_ = steady_time{};
            log(log_level::info, "the peer did not delete this replaced IKE SA; deleting it");
            delete_sa();
            return;
        }
        rekey_ike();
    }
    if (peer_ptr_->dpd_interval != 0 && next_dpd_ != steady_time{} && now >= next_dpd_) {
        auto interval = std::chrono::seconds(peer_ptr_->dpd_interval);
        const bool quiet = now - last_heard_ >= interval;
        if (quiet && !outstanding_ && queue_.empty()) {
            send_dpd();
        }
        // The next look is an interval after the last message heard (as strongSwan schedules it), not
        // an interval after this look: that made a peer answering every DPD get one only every second
        // interval, and the gap let a NAT-keepalive of the same interval slip out (RFC 3948 §4).
        next_dpd_ = quiet ? now + interval : last_heard_ + interval;
    }
    pump_requests();
}

} // namespace espresso::cp
