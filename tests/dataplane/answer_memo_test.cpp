// Tests for dataplane/src/answer_memo.h: a memo answers only what it was told for exactly that key,
// forget() drops only the key named, and keys that share a slot evict each other (never answer for
// each other). A hash that sends every key to one slot makes each of these happen on purpose.
#include "answer_memo.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>

namespace espresso::dp {
namespace {

struct one_slot {
    uint64_t operator()(uint64_t) const noexcept { return 0; }
};
struct mixed {
    uint64_t operator()(uint64_t k) const noexcept { return fibonacci_mix(k); }
};

TEST(AnswerMemo, KeysSharingASlotNeverAnswerForEachOther)
{
    answer_memo<uint64_t, int, 4, one_slot> memo;
    EXPECT_EQ(memo.find(1), nullptr);
    memo.store(1, 10);
    ASSERT_NE(memo.find(1), nullptr);
    EXPECT_EQ(*memo.find(1), 10);
    EXPECT_EQ(memo.find(2), nullptr);
    memo.store(2, 20); // evicts key 1
    EXPECT_EQ(memo.find(1), nullptr);
    ASSERT_NE(memo.find(2), nullptr);
    EXPECT_EQ(*memo.find(2), 20);
    memo.forget(1); // not the key in the slot: nothing changes
    ASSERT_NE(memo.find(2), nullptr);
    memo.forget(2);
    EXPECT_EQ(memo.find(2), nullptr);
}

TEST(AnswerMemo, RemembersAbsentAnswersAndForgetsThem)
{
    answer_memo<uint64_t, const int*, 6, mixed> memo;
    memo.store(7, nullptr); // "the table has no such key" is an answer too
    ASSERT_NE(memo.find(7), nullptr);
    EXPECT_EQ(*memo.find(7), nullptr);
    memo.forget(7);
    EXPECT_EQ(memo.find(7), nullptr);
}

TEST(AnswerMemo, AgreesWithAMapUnderRandomStoresAndForgets)
{
    // A tiny memo (16 slots) over 64 keys: many collisions. Whatever it answers must be the last value
    // stored for that very key since it was last forgotten.
    answer_memo<uint64_t, uint32_t, 4, mixed> memo;
    std::array<int64_t, 64> truth{};
    truth.fill(-1);
    uint64_t x = 88172645463325252ULL;
    auto next = [&] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return x;
    };
    unsigned answered = 0;
    for (int i = 0; i < 20000; ++i) {
        const uint64_t key = next() % truth.size();
        switch (next() % 3) {
        case 0: {
            const auto v = static_cast<uint32_t>(next());
            memo.store(key, v);
            truth[key] = v;
            break;
        }
        case 1:
            memo.forget(key);
            truth[key] = -1;
            break;
        default:
            if (const uint32_t* v = memo.find(key)) {
                ASSERT_NE(truth[key], -1) << "answered a forgotten key " << key;
                ASSERT_EQ(*v, static_cast<uint32_t>(truth[key])) << "key " << key;
                ++answered;
            }
        }
    }
    EXPECT_GT(answered, 1000U);
}

} // namespace
} // namespace espresso::dp
