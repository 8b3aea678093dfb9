// Packets of one worker pass grouped by the SA that processes them (worker.cpp), so that the engine
// is called once per pass with every SA's packets together.
#pragma once

#include <rte_hash_crc.h>
#include <rte_mbuf.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "espresso/dp/sa.h"

namespace espresso::dp {

// Packets grouped by the SA that processes them, within one pass. Traffic of many tunnels puts a
// different SA on nearly every packet of a burst, so a group per packet must be cheap: the SA is
// found through a small open-addressing table (not a scan of the groups), and packets are stored
// once and ordered by group with a counting sort at the end (arrival order kept within an SA).
struct sa_groups {
    static constexpr unsigned max_groups = 128;  // the worker's packets per pass (worker.cpp: max_vector)
    static constexpr unsigned max_packets = max_groups * 2;
    static constexpr unsigned slot_bits = 8;
    static constexpr unsigned slots = 1U << slot_bits; // > max_groups
    sa_runtime* sa[max_groups];
    uint16_t count[max_groups];
    uint16_t first[max_groups]; // offset of each group in what finish() returns
    rte_mbuf* pkts[max_packets];
    uint8_t group_of[max_packets];
    rte_mbuf* sorted[max_packets];
    uint8_t slot[slots]; // group + 1, 0 = empty
    unsigned n = 0;
    unsigned total = 0;
    unsigned last = 0; // the group of the previous add (valid when n != 0)

    sa_groups() noexcept { std::memset(slot, 0, sizeof(slot)); }

    void clear() noexcept
    {
        std::memset(slot, 0, sizeof(slot));
        n = 0;
        total = 0;
    }

    // Returns false when the table is full (caller processes and retries).
    bool add(sa_runtime* s, rte_mbuf* m) noexcept { return add_run(s, &m, 1) == 1; }

    // Adds packets m[0..len) of one SA; returns how many fit (fewer than len when the table filled
    // up: the caller processes it and adds the rest). A run is one group look-up and block copies:
    // added one at a time, each packet's count and index updates formed a chain through memory
    // (group_of is a byte array, whose stores may alias every counter here).
    unsigned add_run(sa_runtime* s, rte_mbuf* const* m, unsigned len) noexcept
    {
        const unsigned room = max_packets - total;
        if (room == 0 || len == 0) {
            return 0; // (no group without packets: finish() relies on it)
        }
        unsigned g = last;
        if (n == 0 || sa[last] != s) { // not the previous run's SA
            g = group_for(s, n);
            if (g == max_groups) {
                return 0;
            }
            last = g;
        }
        len = std::min(len, room);
        place(g, m, len, total);
        total += len;
        return len;
    }

    // Adds packets m[0..len), packet i of SA s[i] (none nullptr); returns how many fit (the caller
    // processes the table and adds the rest). For a pass spread over many SAs: add_run per packet
    // kept n, total and last in the members, which group_of's byte stores may alias, so every packet
    // reloaded what the one before had just stored, a chain through memory per packet
    // (perf/stage-cycles scale-in-80: the grouping loop 12.7-13.2 cycles per packet against 1.5
    // with one SA; perf/RESULTS.md, stop 30). Here they are locals until the end.
    unsigned add_all(sa_runtime* const* s, rte_mbuf* const* m, unsigned len) noexcept
    {
        unsigned groups_n = n;
        unsigned at = total;
        unsigned g = last;
        const sa_runtime* last_sa = groups_n != 0 ? sa[g] : nullptr;
        unsigned i = 0;
        while (i < len && at < max_packets) {
            sa_runtime* const cur = s[i];
            unsigned end = i + 1;
            while (end < len && s[end] == cur) {
                ++end;
            }
            if (cur != last_sa) { // not the previous run's SA
                const unsigned found = group_for(cur, groups_n);
                if (found == max_groups) {
                    break;
                }
                g = found;
                last_sa = cur;
            }
            const unsigned run = std::min(end - i, max_packets - at);
            place(g, m + i, run, at);
            at += run;
            i += run;
        }
        n = groups_n;
        total = at;
        last = g;
        return i;
    }

    // Orders the packets by group: group g is finish()[first[g]] .. + count[g].
    rte_mbuf** finish() noexcept
    {
        if (n == 1) { // one SA: already in order (no counting sort, whose stores chain, and no copy)
            first[0] = 0;
            return pkts;
        }
        if (n == total) {
            // A group per packet (a burst spread over as many SAs): each add made the next group, so
            // group g is packet g; in order too.
            for (unsigned g = 0; g < n; ++g) {
                first[g] = static_cast<uint16_t>(g);
            }
            return pkts;
        }
        uint16_t next[max_groups];
        uint16_t at = 0;
        for (unsigned g = 0; g < n; ++g) {
            first[g] = next[g] = at;
            at = static_cast<uint16_t>(at + count[g]);
        }
        for (unsigned i = 0; i < total; ++i) {
            sorted[next[group_of[i]]++] = pkts[i];
        }
        return sorted;
    }

private:
    // The group of SA `s`, a new one if it has none (`groups_n`: the groups so far, the member n or
    // the caller's copy of it); max_groups when it has none and the table has no room for one.
    // CRC32-C of the address (the crc32 instruction): SAs installed together sit 3072 bytes apart in
    // their pool (sa_pool.h), and Fibonacci hashing of that progression put 64 of them into clusters
    // (126 extra probes for 64 consecutive SAs against 0; perf/RESULTS.md stop 28: scale-80
    // `policies` and scale-in-80 `inbound` 2-3 cycles per packet lower).
    __attribute__((always_inline)) unsigned group_for(sa_runtime* s, unsigned& groups_n) noexcept
    {
        for (unsigned h = rte_hash_crc_8byte(reinterpret_cast<uintptr_t>(s), 0) & (slots - 1);;
             h = (h + 1) & (slots - 1)) {
            const unsigned e = slot[h];
            if (e == 0) {
                if (groups_n == max_groups) {
                    return max_groups;
                }
                const unsigned g = groups_n++;
                sa[g] = s;
                count[g] = 0;
                slot[h] = static_cast<uint8_t>(g + 1);
                return g;
            }
            if (sa[e - 1] == s) {
                return e - 1;
            }
        }
    }

    // Stores packets m[0..run) as group g's, at position `at`.
    __attribute__((always_inline)) void place(unsigned g, rte_mbuf* const* m, unsigned run, unsigned at) noexcept
    {
        count[g] = static_cast<uint16_t>(count[g] + run);
        if (run == 1) {
            // A run of one (every packet of a burst spread over many SAs): two stores, where the
            // variable-length copies below are a memcpy and a memset call each (perf/RESULTS.md,
            // stop 26: ~3.5 cycles per packet of the inbound grouping over 240 SAs).
            pkts[at] = m[0];
            group_of[at] = static_cast<uint8_t>(g);
        } else {
            std::memcpy(pkts + at, m, run * sizeof(rte_mbuf*));
            std::memset(group_of + at, static_cast<int>(g), run);
        }
    }
};
static_assert(sa_groups::slots > sa_groups::max_groups && (sa_groups::slots & (sa_groups::slots - 1)) == 0);
static_assert(sa_groups::max_groups < 256, "group_of is one byte");

} // namespace espresso::dp
