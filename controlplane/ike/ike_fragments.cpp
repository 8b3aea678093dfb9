// RFC 7383 sizes and reassembly (ike_fragments.h). Written here rather than taken from a library: no
// IKE library we could link (OpenSSL has none) does RFC 7383, and the logic is small.
#include "ike_fragments.h"

#include <utility>

namespace espresso::cp {

size_t ike_bytes_per_datagram(uint32_t fragment_size, const endpoint& local)
{
    size_t overhead = (local.address.is_v6() ? 40 : 20) + 8 + (local.port != 500 ? 4 : 0);
    return fragment_size > overhead ? fragment_size - overhead : 0;
}

namespace {
// Common link MTUs, largest first: 1500 (Ethernet), 1400 (tunnels, PPPoE and VPN paths), 1280 (the IPv6
// minimum), 1000, then the IPv4 minimum.
constexpr uint32_t ladder[] = {1500, 1400, 1280, 1000, pmtud_floor_ipv4};
} // namespace

uint32_t fragment_size_at_most(uint32_t limit, bool ipv6) noexcept
{
    const uint32_t floor = ipv6 ? pmtud_floor_ipv6 : pmtud_floor_ipv4;
    for (uint32_t size : ladder) {
        if (size <= limit && size >= floor) {
            return size;
        }
    }
    return floor;
}

uint32_t next_fragment_size(uint32_t current, bool ipv6) noexcept
{
    const uint32_t floor = ipv6 ? pmtud_floor_ipv6 : pmtud_floor_ipv4;
    for (uint32_t size : ladder) {
        if (size < current && size >= floor) {
            return size;
        }
    }
    return 0;
}

size_t fragment_plaintext_size(const sk_cipher& cipher, size_t ike_bytes)
{
    const size_t fixed = header_size + skf_header_size;
    if (ike_bytes <= fixed + cipher.iv_size() + cipher.icv_size()) {
        return 0;
    }
    // sealed_size() grows by one byte per plaintext byte plus padding to the block, so start from the
    // room left after IV and ICV and step down at most a block until it fits.
    size_t n = ike_bytes - fixed - cipher.iv_size() - cipher.icv_size();
    while (n > 0 && fixed + cipher.sealed_size(n) > ike_bytes) {
        --n;
    }
    return n;
}

fragment_reassembly::check_result fragment_reassembly::check(uint32_t message_id, uint16_t number,
                                                             uint16_t total) const noexcept
{
    if (!collecting(message_id)) {
        return check_result::fresh;
    }
    if (total < total_) {
        return check_result::stale;
    }
    if (total == total_ && number >= 1 && number <= parts_.size() && parts_[number - 1u]) {
        return check_result::duplicate;
    }
    return check_result::fresh;
}

fragment_reassembly::add_result fragment_reassembly::add(uint32_t message_id, uint8_t exchange,
                                                         const skf_payload& fragment, bytes plaintext,
                                                         std::chrono::steady_clock::time_point now,
                                                         size_t& discarded)
{
    discarded = 0;
    // §2.6: a larger Total Fragments (the sender lowered its fragment size, §2.5.2) restarts the
    // collection; so does another message ID (the old one can no longer be answered).
    if (active_ && (message_id_ != message_id || fragment.total > total_ || exchange_ != exchange)) {
        discarded = clear();
    }
    if (!active_) {
        active_ = true;
        message_id_ = message_id;
        exchange_ = exchange;
        total_ = fragment.total;
        parts_.assign(fragment.total, std::nullopt);
        have_ = 0;
        size_ = 0;
        first_ = payload_type::none;
        deadline_ = now + timeout;
    }
    if (fragment.number == 0 || fragment.number > total_ || fragment.total != total_) {
        return add_result::stored; // cannot happen after check() and parse_message; nothing kept
    }
    auto& slot = parts_[fragment.number - 1u];
    if (slot) {
        return add_result::stored; // a duplicate that passed check(): keep the first copy
    }
    if (size_ + plaintext.size() > max_reassembled_size) {
        discarded += clear() + 1;
        return add_result::too_big;
    }
    if (fragment.number == 1) {
        first_ = fragment.first_inner;
    }
    size_ += plaintext.size();
    slot = std::move(plaintext);
    ++have_;
    return have_ == total_ ? add_result::complete : add_result::stored;
}

fragment_reassembly::whole_message fragment_reassembly::take()
{
    whole_message m;
    m.message_id = message_id_;
    m.exchange = exchange_;
    m.first = first_;
    m.chain.reserve(size_);
    for (auto& part : parts_) {
        if (part) {
            m.chain.insert(m.chain.end(), part->begin(), part->end());
        }
    }
    clear();
    return m;
}

size_t fragment_reassembly::clear() noexcept
{
    size_t n = active_ ? have_ : 0;
    active_ = false;
    parts_.clear();
    parts_.shrink_to_fit();
    have_ = 0;
    size_ = 0;
    total_ = 0;
    deadline_ = {};
    return n;
}

} // namespace espresso::cp
