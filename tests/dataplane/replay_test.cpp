// Tests for dataplane/src/replay.cpp: RFC 4303 §3.4.3 anti-replay and Appendix A2 ESN inference.
#include <gtest/gtest.h>

#include <cstdint>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "espresso/dp/replay.h"

namespace espresso::dp {
namespace {

constexpr uint64_t two32 = uint64_t{1} << 32;

// One packet: check() its low 32 bits, then (when `accept`) pretend its ICV verified and accept().
struct step {
    uint32_t low;
    drop_reason check_reason;
    uint64_t seq; // expected inferred sequence number (ignored for too_old)
    bool accept = true;
    drop_reason accept_reason = drop_reason::none;
};

void run(replay_window& w, const std::vector<step>& steps)
{
    for (size_t i = 0; i < steps.size(); ++i) {
        const step& s = steps[i];
        SCOPED_TRACE("step " + std::to_string(i) + " low=" + std::to_string(s.low));
        const auto v = w.check(s.low);
        EXPECT_EQ(v.reason, s.check_reason);
        if (s.check_reason != drop_reason::too_old) {
            EXPECT_EQ(v.seq, s.seq);
        }
        if (s.accept && v.reason == drop_reason::none) {
            EXPECT_EQ(w.accept(v.seq), s.accept_reason);
        }
    }
}

TEST(ReplayWindow, SizeIsRoundedUpToWholeWordsAndCapped)
{
    EXPECT_EQ(replay_window(0, false).size(), 0U);
    EXPECT_EQ(replay_window(1, false).size(), 64U);
    EXPECT_EQ(replay_window(32, false).size(), 64U);
    EXPECT_EQ(replay_window(64, false).size(), 64U);
    EXPECT_EQ(replay_window(65, false).size(), 128U);
    EXPECT_EQ(replay_window(1000, true).size(), 1024U);
    EXPECT_EQ(replay_window(4096, false).size(), 4096U);
    EXPECT_EQ(replay_window(5000, false).size(), config::max_replay_window);
    EXPECT_TRUE(replay_window(64, true).esn());
    EXPECT_EQ(replay_window(64, true).highest(), 0U);
}

TEST(ReplayWindow, InWindowReorderIsAcceptedOnce)
{
    replay_window w(64, false);
    run(w, {
               {1, drop_reason::none, 1},
               {5, drop_reason::none, 5},
               {3, drop_reason::none, 3},
               {2, drop_reason::none, 2},
               {4, drop_reason::none, 4},
               {3, drop_reason::replay, 3},
               {5, drop_reason::replay, 5},
               {1, drop_reason::replay, 1},
               {6, drop_reason::none, 6},
           });
    EXPECT_EQ(w.highest(), 6U);
}

TEST(ReplayWindow, DuplicateIsReplay)
{
    replay_window w(128, false);
    run(w, {
               {100, drop_reason::none, 100},
               {100, drop_reason::replay, 100},
               {99, drop_reason::none, 99},
               {99, drop_reason::replay, 99},
           });
    // accept() itself refuses a second copy even when the caller skipped check().
    EXPECT_EQ(w.accept(100), drop_reason::replay);
    EXPECT_EQ(w.accept(99), drop_reason::replay);
}

TEST(ReplayWindow, LeftOfWindowIsTooOld)
{
    replay_window w(64, false);
    run(w, {
               {200, drop_reason::none, 200},
               {137, drop_reason::none, 137}, // 200 - 64 + 1: the window's left edge
               {136, drop_reason::too_old, 0}, // 200 - 64
               {1, drop_reason::too_old, 0},
           });
    EXPECT_EQ(w.accept(136), drop_reason::too_old);
}

TEST(ReplayWindow, SequenceZeroIsNeverValid)
{
    // RFC 4303 §3.3.3: the first packet is 1 and the counter never cycles; 0 is reported as too_old.
    replay_window fresh(64, false);
    EXPECT_EQ(fresh.check(0).reason, drop_reason::too_old);
    EXPECT_EQ(fresh.accept(0), drop_reason::too_old);
    replay_window esn(64, true);
    EXPECT_EQ(esn.check(0).reason, drop_reason::too_old);
    EXPECT_EQ(esn.accept(0), drop_reason::too_old);
    replay_window off(0, false);
    EXPECT_EQ(off.check(0).reason, drop_reason::too_old);
    EXPECT_EQ(off.accept(0), drop_reason::too_old);
}

TEST(ReplayWindow, NonEsnHighestIs2To32Minus1)
{
    replay_window w(64, false);
    run(w, {
               {0xfffffff0U, drop_reason::none, 0xfffffff0U},
               {0xffffffffU, drop_reason::none, 0xffffffffU},
               {0xfffffffeU, drop_reason::none, 0xfffffffeU},
               {0xffffffffU, drop_reason::replay, 0xffffffffU},
               {0, drop_reason::too_old, 0}, // no wrap without ESN
               {1, drop_reason::too_old, 0},
           });
    EXPECT_EQ(w.accept(two32), drop_reason::too_old);
    EXPECT_EQ(w.highest(), 0xffffffffU);
}

TEST(ReplayWindow, JumpAheadByExactlyTheWindow)
{
    replay_window w(64, false);
    for (uint32_t s = 1; s <= 100; ++s) {
        ASSERT_EQ(w.accept(s), drop_reason::none);
    }
    run(w, {
               {164, drop_reason::none, 164},
               {100, drop_reason::too_old, 0}, // 164 - 64
               {101, drop_reason::none, 101},  // never received: must not see a stale bit
               {163, drop_reason::none, 163},
               {101, drop_reason::replay, 101},
           });
}

TEST(ReplayWindow, JumpAheadByWindowPlusOne)
{
    replay_window w(64, false);
    for (uint32_t s = 1; s <= 100; ++s) {
        ASSERT_EQ(w.accept(s), drop_reason::none);
    }
    run(w, {
               {165, drop_reason::none, 165},
               {101, drop_reason::too_old, 0},
               {102, drop_reason::none, 102},
               {100, drop_reason::too_old, 0},
           });
}

TEST(ReplayWindow, HugeJumpsClearTheWholeRing)
{
    // Jumps of exactly the ring size (65 words) and of multiples of it map every bucket onto
    // itself: stale bits would show up as false replays if they were not cleared.
    for (uint64_t jump : {uint64_t{65 * 64}, uint64_t{2 * 65 * 64}, uint64_t{1} << 20, uint64_t{1} << 31}) {
        SCOPED_TRACE("jump " + std::to_string(jump));
        replay_window w(4096, false);
        for (uint32_t s = 1; s <= 5000; ++s) {
            ASSERT_EQ(w.accept(s), drop_reason::none);
        }
        const uint64_t top = 5000 + jump;
        ASSERT_EQ(w.check(static_cast<uint32_t>(top)).reason, drop_reason::none);
        ASSERT_EQ(w.accept(top), drop_reason::none);
        for (uint64_t s = top - 4095; s < top; ++s) {
            ASSERT_EQ(w.check(static_cast<uint32_t>(s)).reason, drop_reason::none) << s;
        }
        EXPECT_EQ(w.check(static_cast<uint32_t>(top - 4096)).reason, drop_reason::too_old);
        EXPECT_EQ(w.check(static_cast<uint32_t>(top)).reason, drop_reason::replay);
    }
}

TEST(ReplayWindow, EsnFirstPacketIsOne)
{
    replay_window w(64, true);
    run(w, {
               {1, drop_reason::none, 1},
               {2, drop_reason::none, 2},
               {1, drop_reason::replay, 1},
           });
}

TEST(ReplayWindow, EsnCrossesThe2To32Boundary)
{
    replay_window w(64, true);
    ASSERT_EQ(w.accept(0xffffff00U), drop_reason::none); // get near the boundary
    run(w, {
               // Window within subspace 0 (RFC 4303 A2.2 case A).
               {0xfffffff0U, drop_reason::none, 0xfffffff0U},
               {0xffffffffU, drop_reason::none, 0xffffffffU},
               // Below the window's bottom: the next subspace.
               {0x00000000U, drop_reason::none, two32},
               {0x00000005U, drop_reason::none, two32 + 5},
               // Window now spans both subspaces (case B): late packets from subspace 0.
               {0xfffffffeU, drop_reason::none, 0xfffffffeU},
               {0xfffffffeU, drop_reason::replay, 0xfffffffeU},
               {0xffffffffU, drop_reason::replay, 0xffffffffU},
               {0xfffffff0U, drop_reason::replay, 0xfffffff0U},
               {0x00000000U, drop_reason::replay, two32},
               {0x00000003U, drop_reason::none, two32 + 3},
               // Tl - W + 1 = 5 - 63 (mod 2^32) = 0xffffffc6: the oldest number still in the window.
               {0xffffffc6U, drop_reason::none, 0xffffffc6U},
               // Below that bottom, A2.2 maps to T's subspace, i.e. far ahead (its ICV will fail).
               {0xffffffc5U, drop_reason::none, two32 + 0xffffffc5U, false},
           });
    EXPECT_EQ(w.highest(), two32 + 5);
}

TEST(ReplayWindow, EsnLatePacketsStayInTheirEpochAfterTheWindowMovesOn)
{
    replay_window w(128, true);
    ASSERT_EQ(w.accept(3 * two32 - 10), drop_reason::none);
    run(w, {
               {20, drop_reason::none, 3 * two32 + 20},
               {0xfffffff8U, drop_reason::none, 3 * two32 - 8},  // previous epoch, in window
               {0xffffff00U, drop_reason::none, 4 * two32 - 256, false}, // too far back: ahead
               {200, drop_reason::none, 3 * two32 + 200},
               // Window is now [3*2^32 + 73, 3*2^32 + 200]: case A again.
               {0xfffffff9U, drop_reason::none, 4 * two32 - 7, false},
               // Below the bottom (73) in case A means the next subspace, not "too old".
               {72, drop_reason::none, 4 * two32 + 72, false},
               {73, drop_reason::none, 3 * two32 + 73},
               {73, drop_reason::replay, 3 * two32 + 73},
           });
}

TEST(ReplayWindow, EsnRefusesNumbersOutside64Bits)
{
    replay_window w(64, true);
    // Fresh window, T = 0: "previous subspace" numbers would be negative.
    EXPECT_EQ(w.check(0xffffffffU).reason, drop_reason::too_old);
    ASSERT_EQ(w.accept(UINT64_MAX - 10), drop_reason::none);
    // Next subspace after 2^64 - 1 does not exist.
    EXPECT_EQ(w.check(0x00000001U).reason, drop_reason::too_old);
    const auto last = w.check(0xffffffffU);
    EXPECT_EQ(last.reason, drop_reason::none);
    EXPECT_EQ(last.seq, UINT64_MAX);
}

class ReplayWindowSize : public ::testing::TestWithParam<uint32_t> {};

TEST_P(ReplayWindowSize, EdgesAndSliding)
{
    const uint32_t requested = GetParam();
    replay_window w(requested, false);
    const uint64_t size = w.size();
    EXPECT_EQ(size, (requested + 63) / 64 * 64);
    // Every other number over three windows, then walk the edges.
    const uint64_t top = 3 * size + 1;
    for (uint64_t s = 1; s <= top; s += 2) {
        ASSERT_EQ(w.accept(s), drop_reason::none);
    }
    ASSERT_EQ(w.highest(), top);
    for (uint64_t s = top - size + 1; s <= top; ++s) {
        const auto v = w.check(static_cast<uint32_t>(s));
        ASSERT_EQ(v.reason, (s % 2 == 1) ? drop_reason::replay : drop_reason::none) << s;
    }
    EXPECT_EQ(w.check(static_cast<uint32_t>(top - size)).reason, drop_reason::too_old);
    // Fill the holes, then slide by one: the old left edge falls out.
    for (uint64_t s = top - size + 1; s <= top; ++s) {
        if (s % 2 == 0) {
            ASSERT_EQ(w.accept(s), drop_reason::none) << s;
        }
    }
    ASSERT_EQ(w.accept(top + 1), drop_reason::none);
    EXPECT_EQ(w.check(static_cast<uint32_t>(top - size + 1)).reason, drop_reason::too_old);
    EXPECT_EQ(w.check(static_cast<uint32_t>(top - size + 2)).reason, drop_reason::replay);
}

INSTANTIATE_TEST_SUITE_P(ReplaySizes, ReplayWindowSize, ::testing::Values(32U, 64U, 128U, 1000U, 4096U));

TEST(ReplayWindow, SizeZeroAcceptsEverythingIncludingDuplicates)
{
    replay_window w(0, false);
    run(w, {
               {10, drop_reason::none, 10},
               {10, drop_reason::none, 10},
               {1, drop_reason::none, 1},
               {0xffffffffU, drop_reason::none, 0xffffffffU},
               {5, drop_reason::none, 5},
           });
    EXPECT_EQ(w.highest(), 0xffffffffU); // still tracked

    // With ESN the right edge still drives inference, with an implicit window of 2^31.
    replay_window e(0, true);
    ASSERT_EQ(e.accept(two32 - 16), drop_reason::none);
    run(e, {
               {0xfffffff0U, drop_reason::none, two32 - 16},
               {3, drop_reason::none, two32 + 3},
               {0xfffffff0U, drop_reason::none, two32 - 16}, // duplicate, not detected
               {0x80000003U, drop_reason::none, two32 + 0x80000003U, false}, // nearest: ahead
               {0x80000004U, drop_reason::none, 0x80000004U, false},         // nearest: behind
           });
}

TEST(ReplayWindow, TwoCopiesInOneBurstOnlyOneIsAccepted)
{
    // Both copies pass check() before either ICV is verified; accept() catches the second.
    replay_window w(64, false);
    ASSERT_EQ(w.accept(10), drop_reason::none);
    const auto a = w.check(12);
    const auto b = w.check(12);
    ASSERT_EQ(a.reason, drop_reason::none);
    ASSERT_EQ(b.reason, drop_reason::none);
    EXPECT_EQ(w.accept(a.seq), drop_reason::none);
    EXPECT_EQ(w.accept(b.seq), drop_reason::replay);

    // Same for a number that moves the window: the second copy is a replay, not "new".
    const auto c = w.check(500);
    const auto d = w.check(500);
    EXPECT_EQ(w.accept(c.seq), drop_reason::none);
    EXPECT_EQ(w.accept(d.seq), drop_reason::replay);

    // And a packet that fell out of the window between check() and accept() is too old.
    const auto old = w.check(440);
    ASSERT_EQ(old.reason, drop_reason::none);
    ASSERT_EQ(w.accept(600), drop_reason::none);
    EXPECT_EQ(w.accept(old.seq), drop_reason::too_old);
}

// Reference model of RFC 4303 §3.4.3 / Appendix A2 with unbounded memory: a std::set of everything
// received. ESN inference is written differently from the implementation: A2.2 picks, for the low
// 32 bits, the unique 64-bit number in [T - W + 1, T - W + 2^32].
class reference_window {
public:
    reference_window(uint64_t size, bool esn) : size_(size), esn_(esn) {}

    replay_window::verdict check(uint32_t low) const
    {
        uint64_t seq = low;
        if (esn_) {
            const __int128 w = size_ != 0 ? size_ : (__int128{1} << 31);
            const __int128 bottom = static_cast<__int128>(top_) - w + 1;
            const __int128 modulus = static_cast<__int128>(two32);
            __int128 offset = (static_cast<__int128>(low) - bottom) % modulus;
            if (offset < 0) {
                offset += modulus;
            }
            const __int128 full = bottom + offset;
            if (full < 1 || full > static_cast<__int128>(UINT64_MAX)) {
                return {drop_reason::too_old, 0};
            }
            seq = static_cast<uint64_t>(full);
        }
        if (seq == 0) {
            return {drop_reason::too_old, 0};
        }
        if (size_ == 0 || seq > top_) {
            return {drop_reason::none, seq};
        }
        if (top_ - seq >= size_) {
            return {drop_reason::too_old, seq};
        }
        return {seen_.count(seq) != 0 ? drop_reason::replay : drop_reason::none, seq};
    }

    drop_reason accept(uint64_t seq)
    {
        if (seq == 0 || (!esn_ && seq > UINT32_MAX)) {
            return drop_reason::too_old;
        }
        if (size_ != 0) {
            if (seq <= top_ && top_ - seq >= size_) {
                return drop_reason::too_old;
            }
            if (!seen_.insert(seq).second) {
                return drop_reason::replay;
            }
        }
        top_ = std::max(top_, seq);
        return drop_reason::none;
    }

    uint64_t highest() const { return top_; }

private:
    uint64_t size_;
    bool esn_;
    uint64_t top_ = 0;
    std::set<uint64_t> seen_;
};

struct differential_case {
    uint32_t size;
    bool esn;
    uint64_t start;
};

void PrintTo(const differential_case& c, std::ostream* os)
{
    *os << "size " << c.size << (c.esn ? " esn" : "") << " start " << c.start;
}

class ReplayDifferential : public ::testing::TestWithParam<differential_case> {};

TEST_P(ReplayDifferential, MatchesSetModel)
{
    const auto p = GetParam();
    replay_window w(p.size, p.esn);
    reference_window ref(w.size(), p.esn);
    std::mt19937_64 rng(0x5eed0000U + p.size * 2U + (p.esn ? 1U : 0U)); // fixed: deterministic
    if (p.start != 0) {
        ASSERT_EQ(w.accept(p.start), ref.accept(p.start));
    }
    uint64_t sender = std::max<uint64_t>(p.start, 1);
    const uint64_t span = std::max<uint64_t>(w.size(), 64);
    for (int i = 0; i < 200000; ++i) {
        // Mostly in-order traffic with losses, reordering, duplicates, the odd old or forged number
        // and the odd big jump.
        const uint32_t kind = static_cast<uint32_t>(rng() % 100);
        uint64_t candidate = 0;
        if (kind < 60) {
            sender += 1 + rng() % 3;
            candidate = sender;
        } else if (kind < 85) {
            candidate = sender - std::min<uint64_t>(sender, rng() % (span + span / 2));
        } else if (kind < 95) {
            candidate = sender - std::min<uint64_t>(sender, rng() % 4);
        } else if (kind < 98) {
            candidate = rng(); // forged low bits
        } else {
            sender += span + rng() % (3 * span);
            if (rng() % 50 == 0) {
                sender += rng() % (uint64_t{1} << 30);
            }
            candidate = sender;
        }
        if (!p.esn && sender > UINT32_MAX) {
            sender = std::max<uint64_t>(p.start, 1); // restart the scenario within 32 bits
            w = replay_window(p.size, p.esn);
            ref = reference_window(w.size(), p.esn);
            continue;
        }
        const auto low = static_cast<uint32_t>(candidate);
        const auto got = w.check(low);
        const auto want = ref.check(low);
        ASSERT_EQ(got.reason, want.reason) << "step " << i << " low " << low << " top " << ref.highest();
        if (want.reason == drop_reason::too_old) {
            continue;
        }
        ASSERT_EQ(got.seq, want.seq) << "step " << i << " low " << low << " top " << ref.highest();
        // Only the true number authenticates; a mis-inferred one would fail its ICV.
        if (got.seq == candidate && rng() % 10 != 0) {
            ASSERT_EQ(w.accept(got.seq), ref.accept(got.seq)) << "step " << i;
            ASSERT_EQ(w.highest(), ref.highest());
        }
    }
}

INSTANTIATE_TEST_SUITE_P(ReplayModels, ReplayDifferential,
                         ::testing::Values(differential_case{0, false, 0}, differential_case{64, false, 0},
                                           differential_case{128, false, 0},
                                           differential_case{1000, false, 0},
                                           differential_case{4096, false, 0},
                                           differential_case{0, true, two32 - 5000},
                                           differential_case{64, true, two32 - 5000},
                                           differential_case{128, true, two32 - 5000},
                                           differential_case{1000, true, two32 - 5000},
                                           differential_case{4096, true, two32 - 5000},
                                           differential_case{64, true, 0}));

} // namespace
} // namespace espresso::dp
