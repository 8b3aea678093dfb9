// A direct-mapped memo of recent answers of an exact-match table (an rte_hash), in front of it.
//
// rte_hash costs a hash of the key, a bucket search and a key compare per look-up (with 32-byte keys,
// 70-100 cycles per packet measured in perf/profile-gateway, issue 3), even when a burst carries a
// handful of keys. A memo hit costs one multiply, one line and one compare. Hand-written because
// DPDK has no such cache: rte_hash itself is the table it fronts.
//
// Correctness rests on the owner: the memo belongs to the one thread that both reads and writes the
// table it fronts, and that thread calls forget(key) whenever it adds, replaces or removes `key` in
// the table. Then an entry never answers what the table would not. Absent answers can be memoised
// too (`value` is whatever the table said, e.g. nullptr), which the same forget() keeps true.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace espresso::dp {

// `Key` is a small value with operator== (build it from registers: a key stored bytewise and read
// back wider stalls on store-to-load forwarding, measured 30+ cycles per look-up);
// `Hash(key)` returns 64 well-mixed bits; `Bits` sets the size (2^Bits entries).
template <typename Key, typename Value, unsigned Bits, typename Hash>
class answer_memo {
public:
    answer_memo() : table_(new entry[size_t{1} << Bits]()) {}

    // The memoised answer for `key`, or nullptr when the memo does not know (ask the table).
    const Value* find(const Key& key) const noexcept
    {
        const entry& e = table_[index(key)];
        if (e.valid && e.key == key) {
            return &e.value;
        }
        return nullptr;
    }

    void store(const Key& key, const Value& value) noexcept
    {
        entry& e = table_[index(key)];
        e.key = key;
        e.value = value;
        e.valid = true;
    }

    // The table's answer for `key` is about to change (add, replace, remove).
    void forget(const Key& key) noexcept
    {
        entry& e = table_[index(key)];
        if (e.valid && e.key == key) {
            e.valid = false;
        }
    }

private:
    struct entry {
        Key key{};
        Value value{};
        bool valid = false;
    };

    static size_t index(const Key& key) noexcept
    {
        return static_cast<size_t>(Hash{}(key) >> (64 - Bits));
    }

    std::unique_ptr<entry[]> table_;
};

// Fibonacci hashing of a 64-bit value: the top bits of the product are well mixed.
inline uint64_t fibonacci_mix(uint64_t v) noexcept { return v * 0x9E3779B97F4A7C15ULL; }

} // namespace espresso::dp
