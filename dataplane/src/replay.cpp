// Anti-replay window and ESN inference, RFC 4303 §3.4.3 and Appendix A.
//
// Representation. `top_` is the highest sequence number whose ICV verified (the right edge "T" of
// the RFC's window); the window covers [T - W + 1, T]. Received packets are remembered in a ring of
// `words` 64-bit buckets: sequence number s lives in bucket (s / 64) % words, bit s % 64. A window of
// W <= 4096 bits touches at most W / 64 + 1 buckets when it is not 64-aligned, which is why the ring
// has one spare bucket (the DPDK lib/ipsec and VPP layout). Moving T forward only has to clear the
// buckets that the new right edge enters: O(1) for the usual small step, O(words) at worst, and a
// jump of more than the ring clears everything.
//
// Decisions the RFC leaves to the implementation, written down here:
//  - Sequence number 0 is never valid. Without ESN the sender starts at 1 and must not cycle
//    (RFC 4303 §3.3.3), so 0 can only be a forgery or a peer that wrapped; with ESN the first packet
//    is 1 as well. It is reported as `too_old`: it lies left of every possible window.
//  - Without ESN the highest valid number is 2^32 - 1 (the counter must not cycle); larger values
//    passed to accept() are refused as `too_old` the same way.
//  - Window size 0 = anti-replay off (RFC 4303 §3.4.3: "the receiver ... MAY disable it"): every
//    sequence number is accepted, duplicates included, but `top_` still moves so that ESN can infer
//    the high-order bits. For that inference we use W = 2^31, i.e. the 64-bit number closest to T
//    (within 2^31 either side). RFC 4303 Appendix A2 presumes an anti-replay window; with none, the
//    nearest value is the choice that tolerates the largest loss or reordering in both directions.
//  - ESN inference that would go below 0 (Th = 0 and a "previous subspace" packet) or above 2^64 - 1
//    (Th = 2^32 - 1 and a "next subspace" packet) names a number that cannot exist; it is reported as
//    `too_old` and must never reach the ICV check as a valid number.
#include "espresso/dp/replay.h"

#include <algorithm>

namespace espresso::dp {

namespace {

constexpr uint64_t bits_per_word = 64;
constexpr uint64_t esn_window_when_off = uint64_t{1} << 31;

uint32_t effective_size(uint32_t size) noexcept
{
    if (size == 0) {
        return 0;
    }
    // Rounded up to whole buckets: a larger window only tolerates more reordering (RFC 4303 §3.4.3
    // sets a minimum of 32, and a default of 64, not a maximum).
    uint32_t clamped = std::min(size, config::max_replay_window);
    return static_cast<uint32_t>((clamped + bits_per_word - 1) / bits_per_word * bits_per_word);
}

} // namespace

replay_window::replay_window(uint32_t size, bool esn) noexcept : size_(effective_size(size)), esn_(esn) {}

replay_window::verdict replay_window::check_rest(uint32_t seq_low) const noexcept
{
    uint64_t seq = seq_low;
    if (esn_) {
        // RFC 4303 Appendix A2.2: infer Seqh from the bottom of the window. T = top_, Tl/Th its
        // halves; W the window size (2^31 when anti-replay is off, see the file comment).
        const uint64_t w = size_ != 0 ? size_ : esn_window_when_off;
        const uint32_t tl = static_cast<uint32_t>(top_);
        const uint32_t th = static_cast<uint32_t>(top_ >> 32);
        // Tl - W + 1, modulo 2^32 as the RFC's comparison wants.
        const uint32_t bottom = static_cast<uint32_t>(static_cast<uint64_t>(tl) - w + 1);
        uint64_t seqh = th;
        if (static_cast<uint64_t>(tl) >= w - 1) {
            // Case A: the window lies within one subspace. Below the window = next subspace.
            if (seq_low < bottom) {
                if (th == UINT32_MAX) {
                    return {drop_reason::too_old, seq}; // would be past 2^64 - 1
                }
                seqh = uint64_t{th} + 1;
            }
        } else {
            // Case B: the window spans two subspaces. At or above the (wrapped) bottom = previous
            // subspace; everything else is in T's subspace.
            if (seq_low >= bottom) {
                if (th == 0) {
                    return {drop_reason::too_old, seq}; // would be below 0
                }
                seqh = uint64_t{th} - 1;
            }
        }
        seq = seqh << 32 | seq_low;
    }

    if (seq == 0) {
        return {drop_reason::too_old, seq};
    }
    if (size_ == 0 || seq > top_) {
        return {drop_reason::none, seq};
    }
    if (top_ - seq >= size_) {
        return {drop_reason::too_old, seq};
    }
    const uint64_t word = bits_[(seq / bits_per_word) % words];
    if ((word >> (seq % bits_per_word) & 1U) != 0) {
        return {drop_reason::replay, seq};
    }
    return {drop_reason::none, seq};
}

drop_reason replay_window::accept_rest(uint64_t seq) noexcept
{
    if (seq == 0 || (!esn_ && seq > UINT32_MAX)) {
        return drop_reason::too_old;
    }
    if (size_ == 0) {
        // Anti-replay off: only the right edge is kept, for ESN inference.
        top_ = std::max(top_, seq);
        return drop_reason::none;
    }

    const uint64_t bucket = seq / bits_per_word;
    const uint64_t bit = uint64_t{1} << (seq % bits_per_word);
    if (seq > top_) {
        // RFC 4303 §3.4.3: the window slides right. Clear the buckets the new right edge enters;
        // they still hold bits from `words` buckets ago.
        const uint64_t top_bucket = top_ / bits_per_word;
        const uint64_t steps = bucket - top_bucket;
        if (steps >= words) {
            bits_.fill(0);
        } else {
            for (uint64_t b = top_bucket + 1; b <= bucket; ++b) {
                bits_[b % words] = 0;
            }
        }
        bits_[bucket % words] |= bit;
        top_ = seq;
        return drop_reason::none;
    }
    if (top_ - seq >= size_) {
        return drop_reason::too_old; // the window moved past it since check()
    }
    uint64_t& word = bits_[bucket % words];
    if ((word & bit) != 0) {
        return drop_reason::replay; // a copy in the same burst was accepted first
    }
    word |= bit;
    return drop_reason::none;
}

} // namespace espresso::dp
