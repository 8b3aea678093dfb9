// Security Policy Database (RFC 4301 §4.4.1) for transit traffic, in two levels:
//
//  1. compiled_spd: operator policies (and their mirrored inbound checks) plus the SA-implied
//     policies whose remote selector is a prefix, compiled into two rte_acl contexts (IPv4 and IPv6
//     selectors; one rule list); a family of at most default_linear_max rules is walked in rank
//     order instead (same answers, a fraction of rte_acl's fixed cost per packet). A compiled SPD is immutable: the management thread builds a new one
//     for every change and hands the pointer to each worker through its update ring; the old one is
//     freed only after every worker acknowledged the switch.
//  2. host_spd: the SA-implied policies whose remote selector is one host (/32, /128: remote-access
//     clients, per-host tunnels, the common case at 100k SAs), in an exact-match rte_hash per worker
//     keyed by that address. The main lcore keeps the authoritative copy (host_policies) and sends
//     each changed bucket to every worker's table through its update ring, like SAD entries, so an
//     SA install changes one bucket instead of recompiling rte_acl over every SA (measured: the
//     whole context per batch fell from 8k to 0.9k installs/s past 20k outbound SAs).
//
// The two levels give the same answer as one rte_acl over all entries would. Every rule carries its
// rank: (priority, then operator policies before SA-implied ones, then operator policies in
// configuration order and implied ones by SPI); lower wins (RFC 4301 §4.4.1: the first matching entry
// of an ordered SPD). A packet's verdict is the better-ranked of the rte_acl winner and the first
// matching host candidate (candidates are kept sorted by rank). Implied policies have priority 1000,
// so operator policies at the default 0 still override them, and a `trap` at 2000 is still beaten
// by the SA that IKE installed for it.
//
// One classification answers two questions at once (two ACL categories):
//  - category 0, outbound: what to do with a cleartext packet about to leave (protect with an SA,
//    bypass, discard);
//  - category 1, inbound check: does a cleartext packet that arrived match an inbound protect policy,
//    i.e. should it have arrived encrypted (RFC 4301 §5.2 step 4: drop it).
#pragma once

#include <rte_acl.h>
#include <rte_hash.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "espresso/config/types.h"
#include "answer_memo.h"

namespace espresso::dp {

struct sa_runtime;

// The 5-tuple as rte_acl reads it: network byte order, fields grouped in 4-byte words.
struct spd_key {
    uint8_t protocol;
    uint8_t pad[3];
    uint32_t source;
    uint32_t destination;
    uint16_t source_port;
    uint16_t destination_port;
};
static_assert(sizeof(spd_key) == 16);

// The IPv6 5-tuple (upper-layer protocol after any extension headers), same conventions.
struct spd6_key {
    uint8_t protocol;
    uint8_t pad[3];
    uint8_t source[16];
    uint8_t destination[16];
    uint16_t source_port;
    uint16_t destination_port;
};
static_assert(sizeof(spd6_key) == 40);

struct spd_rule {
    config::policy_action action = config::policy_action::bypass;
    sa_runtime* sa = nullptr; // protect: the outbound SA
    uint32_t id = 0;          // policy id shown to the operator
    uint32_t priority = 0;    // rank, first part: the policy's priority (lower wins)
    uint64_t order = 0;       // rank, second part: operator policies: position; implied: 1 << 32 | SPI
};

// Is rule `a` ranked before `b` (wins over it)?
inline bool ranked_before(const spd_rule& a, const spd_rule& b) noexcept
{
    return a.priority != b.priority ? a.priority < b.priority : a.order < b.order;
}

// The `order` of an SA-implied rule: after every operator policy of the same priority, then by SPI.
inline uint64_t implied_order(uint32_t spi) noexcept { return (uint64_t{1} << 32) | spi; }

struct spd_entry {
    config::policy_config policy;
    sa_runtime* sa = nullptr;  // protect (outbound) only
    bool inbound_check = false; // category 1: checks cleartext arriving (mirrored selectors)
    bool implied = false;       // from an SA's selectors (ranked after operator policies of equal priority)
    uint32_t id = 0;
};

// One rule of a family's small rule set, walked in rank order instead of through rte_acl (see
// compiled_spd): the IPv6 walk reads it as is, the IPv4 walk as linear4_rule (spd.cpp to_linear4
// packs it). Addresses as the key holds them (network order, 16 bytes; IPv4 in the first 4) with
// their prefix masks, the value already masked; ports in host order, inclusive ranges.
struct linear_rule {
    uint64_t source[2];
    uint64_t source_mask[2];
    uint64_t destination[2];
    uint64_t destination_mask[2];
    uint16_t source_port_min, source_port_max;
    uint16_t destination_port_min, destination_port_max;
    uint8_t protocol;      // 0 with protocol_mask 0: any
    uint8_t protocol_mask;
    uint8_t category;      // 0 outbound, 1 inbound check
    uint32_t result;       // rule index + 1
};

// The IPv4 rules of a small rule set in the form the walk reads (compiled_spd::classify): both
// addresses as one 64-bit word the way spd_key holds them (source then destination, network order;
// value already masked), ports as a minimum and a span (host order; a port p matches when
// p - min <= span, unsigned 16-bit), so a rule is one mask-and-compare, two range checks and the
// protocol's. 32 bytes: two rules per cache line.
struct linear4_rule {
    uint64_t addresses;
    uint64_t address_mask;
    uint16_t source_port_min, source_port_span;
    uint16_t destination_port_min, destination_port_span;
    uint8_t protocol;      // 0 with protocol_mask 0: any
    uint8_t protocol_mask;
    uint8_t category;      // 0 outbound, 1 inbound check
    uint32_t result;       // rule index + 1
};
static_assert(sizeof(linear4_rule) == 32);

// What a classification answers for the inbound check (category 1).
enum class inbound_scope : uint8_t {
    // Every packet's inbound-check winner: cleartext addressed to the gateway itself is checked
    // whatever outbound rule its mirrored selectors match (gateway.cpp).
    every_packet,
    // Only where no outbound rule matched: transit traffic (the worker's apply_policies, and the
    // gateway's own outgoing packets) reads the inbound check only then, so the walk stops at the
    // outbound winner and the host level looks up only the packets without one.
    without_outbound,
};

class compiled_spd {
public:
    // A family with at most this many rules is classified by walking them in rank order instead of
    // through rte_acl. rte_acl's cost per packet is about fixed (one trie transition per key byte:
    // ~75 cycles for an IPv4 key measured in a 64 B outbound packet, perf/RESULTS.md); a walk over a
    // site-to-site gateway's handful of rules costs a few compares each. perf/spd-bench measures the
    // crossover.
    static constexpr size_t default_linear_max = 8;

    // Throws std::runtime_error if rte_acl cannot build the context. `linear_max` = 0: always
    // rte_acl (tests use it as the oracle of the linear walk).
    compiled_spd(const std::vector<spd_entry>& entries, uint64_t generation,
                 size_t linear_max = default_linear_max);
    ~compiled_spd();
    compiled_spd(const compiled_spd&) = delete;
    compiled_spd& operator=(const compiled_spd&) = delete;

    // results[i]: outbound rule index + 1 and inbound-check rule index + 1 (0 = no policy). With
    // inbound_scope::without_outbound, inbound_match[i] is only meaningful where outbound[i] is 0.
    void classify(const spd_key* const* keys, uint32_t* outbound, uint32_t* inbound_match, uint32_t n,
                  inbound_scope scope = inbound_scope::every_packet) const noexcept;
    void classify6(const spd6_key* const* keys, uint32_t* outbound, uint32_t* inbound_match, uint32_t n,
                   inbound_scope scope = inbound_scope::every_packet) const noexcept;
    const spd_rule& rule(uint32_t index_plus_one) const noexcept { return rules_[index_plus_one - 1]; }
    bool empty() const noexcept { return ctx_ == nullptr && ctx6_ == nullptr; }
    // Every rule is a bypass rule (or there is none): a packet is forwarded whatever it matches, so
    // the worker need not classify it (unless level 2 holds host policies).
    bool forwards_all() const noexcept { return forwards_all_; }

    bool linear4() const noexcept { return linear4_; }
    bool linear6() const noexcept { return linear6_; }

private:
    rte_acl_ctx* ctx_ = nullptr;
    rte_acl_ctx* ctx6_ = nullptr;
    std::vector<linear4_rule> linear4_rules_; // IPv4 rules in rank order (empty unless linear4_)
    std::vector<linear_rule> linear6_rules_;  // IPv6 rules in rank order (empty unless linear6_)
    bool linear4_ = false;
    bool linear6_ = false;
    std::vector<spd_rule> rules_;
    bool forwards_all_ = true;
};

// --- Level 2: SA-implied policies with a host remote selector -----------------------------------

// Category of a host entry: what an SA's selectors imply, as in compiled_spd's two categories.
enum class host_category : uint8_t {
    outbound = 0,      // outbound SA: cleartext to `remote` from inside `local` is protected by it
    inbound_check = 1, // inbound SA: cleartext from `remote` to inside `local` should have come encrypted
};

// Key of the exact-match table: category, address family and the remote host (network order; IPv4 in
// the first 4 bytes, the rest zero). Padded (zeros) to 32 bytes: rte_hash compares keys whose length
// is a multiple of 16 with inline vector compares, any other length with a call to memcmp (issue 3:
// 3 % of a packet's time with every packet of a burst for a different host).
struct host_key {
    uint8_t category;
    uint8_t family;
    uint8_t pad[2];
    uint8_t address[16];
    uint8_t pad2[12];
    bool operator==(const host_key&) const = default;
};
static_assert(sizeof(host_key) == 32);

// One implied policy under a host key: its local selector and its rule.
struct host_candidate {
    uint8_t length = 0;      // local prefix length
    uint8_t network[16]{};   // local prefix, host bits zero (IPv4 in the first 4 bytes)
    spd_rule rule;
};

// Every implied policy of one host key, sorted by rank (first match wins). Immutable once made: the
// main lcore replaces a bucket by a new one and frees the old one after every worker acknowledged.
//
// `first` is a copy of candidates[0] in the bucket's first cache line: with many per-host SAs a
// bucket almost always has one candidate, and reading it there saves the lookup a dependent cache
// miss on the vector's heap array per packet (bucket, then array). `seal()` sets it; host_policies
// calls it on every bucket it makes.
struct alignas(64) host_bucket {
    host_candidate first;
    host_key key{};
    std::vector<host_candidate> candidates;
    void seal() noexcept { first = candidates.front(); }
};
static_assert(sizeof(host_candidate) <= 64, "the first candidate fits the bucket's first cache line");
static_assert(sizeof(host_bucket) == 128, "two cache lines per bucket (docs/configuration.md counts on it)");

// Buckets come from a slot pool (sa_pool.h) rather than the heap: one per outbound /32 SA, made and
// freed on every install, rekey and delete, and glibc's aligned allocation of a 64-byte-aligned
// object (memalign: split chunks, later consolidation) was ~5 % of an outbound SA's install
// (perf/RESULTS.md, issue 3). The pool also keeps them together (and on huge pages with
// `dataplane.hugepages`), where the workers read them per packet; a bucket's further candidates
// (its vector's array) stay in the heap. Under ASan a freed slot is poisoned but reused soon (no
// quarantine): a stale read is caught only until then.
struct host_bucket_deleter {
    void operator()(host_bucket* b) const noexcept;
};
using host_bucket_ptr = std::unique_ptr<host_bucket, host_bucket_deleter>;
host_bucket_ptr make_host_bucket();
class slot_pool;
slot_pool& host_bucket_pool();

// A worker's exact-match table (one per worker: only its worker reads it, and only its worker writes
// it, applying the main lcore's messages between bursts). rte_hash with the extendable bucket table,
// so `capacity` keys always fit: an add never fails on the worker.
class host_spd {
public:
    host_spd(const std::string& name, uint32_t capacity, int socket);
    ~host_spd();
    host_spd(const host_spd&) = delete;
    host_spd& operator=(const host_spd&) = delete;

    // Worker (or main lcore before the workers run): install/replace or remove a bucket.
    void set(const host_bucket* bucket) noexcept;
    void remove(const host_bucket* bucket) noexcept;

    // The best outbound (category 0) or inbound-check (category 1) host rule per packet, nullptr if
    // none. `address[i]` is the packet's destination (outbound) or source (inbound check).
    void lookup(host_category category, uint8_t family, const uint8_t* const* address,
                const uint8_t* const* local, const spd_rule** result, uint32_t n) const noexcept;
    bool empty(host_category category) const noexcept { return count_[static_cast<int>(category)] == 0; }

private:
    // A host_key as the memo holds it: the address as two words and (category, family), built
    // from registers (answer_memo.h).
    struct memo_key {
        uint64_t lo = 0;
        uint64_t hi = 0;
        uint32_t tag = 0; // category | family << 8
        bool operator==(const memo_key&) const = default;
    };
    struct memo_mix {
        uint64_t operator()(const memo_key& k) const noexcept
        {
            return fibonacci_mix(k.lo ^ ((k.hi << 21) | (k.hi >> 43)) ^ (uint64_t{k.tag} << 48));
        }
    };
    static memo_key memo_key_of(const host_key& k) noexcept;

    rte_hash* hash_ = nullptr;
    uint32_t count_[2]{};
    // Recent answers (a bucket or nullptr) per key: with one or a few hundred hosts active the
    // rte_hash look-up was 80-110 cycles per packet (perf/RESULTS.md, issue 3). Only the owning
    // thread reads and writes this table; set() and remove() forget the key's answer.
    mutable answer_memo<memo_key, const host_bucket*, 11, memo_mix> memo_;
};

// Main lcore: the authoritative set of host-keyed implied policies, and the buckets to send.
class host_policies {
public:
    // The table's buckets are made for up to 2^20 keys at once (8 bytes each): growing it rehashes
    // every key, which with this map's uncached hashes reads every node (2.3 % of an outbound /32
    // SA's install, perf/RESULTS.md, issue 3).
    explicit host_policies(size_t capacity) : capacity_(capacity)
    {
        buckets_.reserve(std::min(capacity, size_t{1} << 20));
    }

    // Is `remote` one host (the level-2 table can hold its policy)?
    static bool is_host(const config::ip_prefix& remote) noexcept
    {
        return (remote.address.family == 4 && remote.length == 32) ||
               (remote.address.family == 6 && remote.length == 128);
    }
    // Adds an implied policy (local, remote host) with `rule`. False, and nothing changes, when the
    // table is full and the remote is a new key: the caller keeps that policy in rte_acl instead.
    bool add(host_category category, const config::ip_prefix& local, const config::ip_prefix& remote,
             const spd_rule& rule);
    // Removes the implied policy of (local, remote) whose rule has `order` (an SA's implied_order).
    // False if there is none.
    bool remove(host_category category, const config::ip_prefix& local, const config::ip_prefix& remote,
                uint64_t order);

    // A bucket change for the workers: the new bucket (set) or the old one (remove: its key).
    struct update {
        const host_bucket* bucket;
        bool remove;
    };
    // The changes since the last call, in order. Buckets stay alive until release_retired().
    std::vector<update> take_updates() { return std::exchange(updates_, {}); }
    bool has_updates() const noexcept { return !updates_.empty(); }
    // Every worker applied the updates taken so far: free the buckets they replaced.
    void release_retired() noexcept { retired_.clear(); }
    // After a round some worker may not have applied: the retired buckets are never freed (a
    // deliberate leak; freed, their slots would be reused for other hosts' buckets while a worker
    // still points at them).
    void abandon_retired() noexcept
    {
        for (auto& b : retired_) {
            (void)b.release();
        }
        retired_.clear();
    }
    size_t keys() const noexcept { return buckets_.size(); }

    // For tests and telemetry: the bucket of a key, nullptr if none.
    const host_bucket* find(const host_key& key) const;

private:
    struct key_hash {
        size_t operator()(const host_key& k) const noexcept;
    };
    // Room for one more entry in each of updates_ and retired_, so that replace() and remove()
    // cannot throw once they change anything: add() and remove() call it first.
    void make_room();
    void replace(host_bucket_ptr& slot, host_bucket_ptr next) noexcept;

    size_t capacity_;
    std::unordered_map<host_key, host_bucket_ptr, key_hash> buckets_;
    std::vector<host_bucket_ptr> retired_;
    std::vector<update> updates_;
};

host_key make_host_key(host_category category, const config::ip_prefix& remote) noexcept;

// The two levels together for a burst of one family's keys: the winning rule per packet for the
// outbound category and the inbound check, nullptr = no policy. `spd` may be null (no rte_acl rules).
// `scope`: see inbound_scope (without_outbound: inbound_match[i] only where outbound[i] is null).
void classify(const compiled_spd* spd, const host_spd& hosts, const spd_key* const* keys,
              const spd_rule** outbound, const spd_rule** inbound_match, uint32_t n,
              inbound_scope scope) noexcept;
void classify6(const compiled_spd* spd, const host_spd& hosts, const spd6_key* const* keys,
               const spd_rule** outbound, const spd_rule** inbound_match, uint32_t n,
               inbound_scope scope) noexcept;

} // namespace espresso::dp
