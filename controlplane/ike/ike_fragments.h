// IKE message fragmentation (RFC 7383), the parts that need no IKE SA: how much plaintext one
// fragment may carry, and collecting the fragments of one message until it is whole. ike_sa.cpp seals,
// opens, sends and counts; exchange_init.cpp negotiates (IKEV2_FRAGMENTATION_SUPPORTED).
//
// Threads: plain values, owned by one ike_sa (the thread of its ike_manager).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "espresso/cp/ike_crypto.h"
#include "espresso/cp/ike_message.h"
#include "ike_io.h"

namespace espresso::cp {

// What the operator sees for fragmentation (`counters` on the operator socket, `show crypto ike
// counters`): every fragment that is not used is counted under one of the drop reasons.
struct fragment_counters {
    uint64_t sent = 0;             // SKF datagrams sent, retransmissions included
    uint64_t messages_sent = 0;    // messages we sent as fragments (once per message, not per retransmission)
    uint64_t received = 0;         // SKF datagrams authenticated and kept for reassembly
    uint64_t reassembled = 0;      // messages put together from fragments and processed
    uint64_t duplicate = 0;        // a fragment we already had (retransmission): ignored
    uint64_t invalid = 0;          // failed ICV or decryption, or unencrypted payloads in front of SKF
    uint64_t unexpected = 0;       // for no message we wait for: late copies of a finished one, old IDs
    uint64_t not_negotiated = 0;   // SKF although we did not announce IKEV2_FRAGMENTATION_SUPPORTED
    uint64_t stale = 0;            // Total Fragments below that of the fragments collected (RFC 7383 §2.6)
    uint64_t discarded = 0;        // collected fragments thrown away: timeout, a larger Total Fragments,
                                   // another message ID, over max_reassembled_size, or unusable when whole
    uint64_t pmtu_lowered = 0;     // path MTU discovery (RFC 7383 §2.5.2): an IKE SA lowered its fragment
                                   // size after unanswered sends and sent the message again, smaller
};

// Path MTU discovery for IKE fragments (RFC 7383 §2.5.2). Nothing tells an IKE sender that its
// datagrams are too big for the path when ICMP is filtered (a PMTU black hole), so the sender infers
// it: a message that got no answer after `pmtud_sends_per_size` sends at one fragment size is sent
// again fragmented to the next smaller size, down to the smallest datagram every path must carry (576
// bytes for IPv4, RFC 791; 1280 for IPv6, RFC 8200 §5). Two sends per size: one lost datagram on a good
// path must not shrink the size. The ladder is ours (the RFC leaves the values to the implementation);
// it reaches 576 from the default 1280 within the default retransmission budget (6 sends).
inline constexpr unsigned pmtud_sends_per_size = 2;
inline constexpr uint32_t pmtud_floor_ipv4 = 576;
inline constexpr uint32_t pmtud_floor_ipv6 = 1280;
// The next fragment size below `current` (IP datagram bytes, headers included) for the family, or 0
// when `current` is at or below the family's floor.
uint32_t next_fragment_size(uint32_t current, bool ipv6) noexcept;
// The largest ladder size not above `limit`, never below the family's floor.
uint32_t fragment_size_at_most(uint32_t limit, bool ipv6) noexcept;

// IKE bytes one datagram may hold when the whole IP datagram may be `fragment_size` bytes: minus the IP
// header (20 or 40), UDP (8) and, off port 500, the RFC 3948 non-ESP marker (4). As strongSwan computes it.
size_t ike_bytes_per_datagram(uint32_t fragment_size, const endpoint& local);

// The largest plaintext one fragment can carry so that header + SKF header + sealed plaintext fit in
// `ike_bytes`; 0 when not even one byte fits.
size_t fragment_plaintext_size(const sk_cipher& cipher, size_t ike_bytes);

// The fragments of one message (one message ID, one direction) as they arrive, already authenticated
// and decrypted. RFC 7383 §2.6 order: check() before the ICV is verified (cheap, drops duplicates and
// stale fragments without crypto work), add() after.
class fragment_reassembly {
public:
    enum class check_result : uint8_t {
        fresh,      // not seen: open it and add() it
        duplicate,  // this Fragment Number (with this Total Fragments) is already here
        stale,      // Total Fragments below the one being collected: discard (§2.6)
    };
    enum class add_result : uint8_t {
        stored,   // kept; more to come
        complete, // every fragment is here: take()
        too_big,  // over max_reassembled_size: everything collected was discarded
    };

    // Whether fragments of `message_id` are being collected.
    bool collecting(uint32_t message_id) const noexcept { return active_ && message_id_ == message_id; }
    bool active() const noexcept { return active_; }
    check_result check(uint32_t message_id, uint16_t number, uint16_t total) const noexcept;
    // `discarded` is set to the number of fragments thrown away to make room (another message ID, or a
    // larger Total Fragments restarting the collection, §2.6).
    add_result add(uint32_t message_id, uint8_t exchange, const skf_payload& fragment, bytes plaintext,
                   std::chrono::steady_clock::time_point now, size_t& discarded);
    // The whole message: the type of its first payload (fragment 1's Next Payload) and the plaintext
    // chain, fragments in order. Ends the collection. Precondition: add() returned complete.
    struct whole_message {
        uint32_t message_id = 0;
        uint8_t exchange = 0;
        payload_type first = payload_type::none;
        bytes chain;
    };
    whole_message take();
    // Throws away what was collected; returns how many fragments that was.
    size_t clear() noexcept;
    // When an unfinished collection is given up (§2.6: within a timeout, then discard).
    std::chrono::steady_clock::time_point deadline() const noexcept { return deadline_; }
    static constexpr std::chrono::seconds timeout{30};

private:
    bool active_ = false;
    uint32_t message_id_ = 0;
    uint8_t exchange_ = 0;
    uint16_t total_ = 0;
    payload_type first_ = payload_type::none;
    std::vector<std::optional<bytes>> parts_;
    size_t have_ = 0;
    size_t size_ = 0;
    std::chrono::steady_clock::time_point deadline_{};
};

} // namespace espresso::cp
