// Anti-replay window and ESN inference, RFC 4303 §3.4.3 and Appendix A.
//
// Thread safety: one writer. An inbound SA's window is owned by the single worker that processes that
// SA (the data plane steers an inbound SPI to one core); readers on other threads may only read
// `highest()` for display.
//
// Use, per packet: `check()` before the ICV is verified (cheap early rejection and, with ESN, the
// inference of the high 32 bits that the ICV covers); then, only after the ICV verified, `accept()`,
// which checks again (two copies of one packet in one burst both pass `check()`) and moves the window.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>

#include "espresso/config/types.h"
#include "espresso/dp/counters.h"

namespace espresso::dp {

class replay_window {
public:
    // size: 0 = anti-replay off (sequence numbers are still tracked for ESN inference); otherwise
    // rounded up to a multiple of 64, at most config::max_replay_window.
    replay_window(uint32_t size, bool esn) noexcept;

    struct verdict {
        drop_reason reason; // none, replay or too_old
        uint64_t seq;       // full 64-bit sequence number (high bits inferred with ESN)
    };

    // RFC 4303 Appendix A2.2 for ESN; §3.4.3 otherwise. Does not modify the window.
    verdict check(uint32_t seq_low) const noexcept
    {
        // Inline (both run per packet): without ESN, a number right of the window or any number
        // with anti-replay off; the rest in replay.cpp.
        if (!esn_ && seq_low != 0 && (size_ == 0 || seq_low > top_)) {
            return {drop_reason::none, seq_low};
        }
        return check_rest(seq_low);
    }

    // Marks `seq` as received after its ICV verified. Returns replay/too_old if it was received in
    // the meantime (or fell out of the window), none otherwise.
    drop_reason accept(uint64_t seq) noexcept
    {
        // Inline: a number right of the window that stays in the top's bucket (in-order traffic,
        // 63 of 64 packets), and anti-replay off (any non-zero number; only the right edge is kept,
        // for ESN inference); the rest (sliding into new buckets) in replay.cpp.
        if (seq != 0 && (esn_ || seq <= UINT32_MAX)) {
            if (size_ == 0) {
                top_ = std::max(top_, seq);
                return drop_reason::none;
            }
            if (seq > top_ && seq / 64 == top_ / 64) {
                bits_[(seq / 64) % words] |= uint64_t{1} << (seq % 64);
                top_ = seq;
                return drop_reason::none;
            }
        }
        return accept_rest(seq);
    }

    uint64_t highest() const noexcept { return top_; }
    uint32_t size() const noexcept { return size_; }
    bool esn() const noexcept { return esn_; }

private:
    verdict check_rest(uint32_t seq_low) const noexcept;
    drop_reason accept_rest(uint64_t seq) noexcept;

    static constexpr uint32_t words = config::max_replay_window / 64 + 1; // one spare word for sliding

    uint64_t top_ = 0;  // highest authenticated sequence number (0 = none yet)
    uint32_t size_;     // window size in packets (0 = off)
    bool esn_;
    std::array<uint64_t, words> bits_{}; // ring of bits; bit (seq % (words*64)) set when seen
};

} // namespace espresso::dp
