#include "spd.h"

#include <rte_byteorder.h>

#include <rte_errno.h>
#include <rte_prefetch.h>

#include <algorithm>
#include <bit>
#include <functional>
#include <new>
#include <type_traits>
#include <string_view>
#include <cstring>
#include <stdexcept>

#include "packet.h"
#include "sa_pool.h"

namespace espresso::dp {

namespace {

enum { field_proto, field_src, field_dst, field_sport, field_dport, field_count };

RTE_ACL_RULE_DEF(spd_acl_rule, field_count);

constexpr uint32_t categories = RTE_ACL_RESULTS_MULTIPLIER;

const rte_acl_field_def field_defs[field_count] = {
    {RTE_ACL_FIELD_TYPE_BITMASK, sizeof(uint8_t), field_proto, 0, offsetof(spd_key, protocol)},
    {RTE_ACL_FIELD_TYPE_MASK, sizeof(uint32_t), field_src, 1, offsetof(spd_key, source)},
    {RTE_ACL_FIELD_TYPE_MASK, sizeof(uint32_t), field_dst, 2, offsetof(spd_key, destination)},
    {RTE_ACL_FIELD_TYPE_RANGE, sizeof(uint16_t), field_sport, 3, offsetof(spd_key, source_port)},
    {RTE_ACL_FIELD_TYPE_RANGE, sizeof(uint16_t), field_dport, 3, offsetof(spd_key, destination_port)},
};

// IPv6: each address is four 32-bit words, each its own MASK field (rte_acl fields are at most 8
// bytes; DPDK's ipsec-secgw sp6.c lays them out the same way).
enum {
    field6_proto,
    field6_src0, field6_src1, field6_src2, field6_src3,
    field6_dst0, field6_dst1, field6_dst2, field6_dst3,
    field6_sport, field6_dport, field6_count
};

RTE_ACL_RULE_DEF(spd6_acl_rule, field6_count);

rte_acl_field_def field6_def(uint8_t type, uint8_t size, uint8_t field, uint8_t input, uint32_t offset)
{
    rte_acl_field_def d{};
    d.type = type;
    d.size = size;
    d.field_index = field;
    d.input_index = input;
    d.offset = offset;
    return d;
}

void field6_defs(rte_acl_field_def* d)
{
    d[0] = field6_def(RTE_ACL_FIELD_TYPE_BITMASK, 1, field6_proto, 0, offsetof(spd6_key, protocol));
    for (uint8_t w = 0; w < 4; ++w) {
        d[1 + w] = field6_def(RTE_ACL_FIELD_TYPE_MASK, 4, static_cast<uint8_t>(field6_src0 + w),
                              static_cast<uint8_t>(1 + w), static_cast<uint32_t>(offsetof(spd6_key, source) + 4 * w));
        d[5 + w] = field6_def(RTE_ACL_FIELD_TYPE_MASK, 4, static_cast<uint8_t>(field6_dst0 + w),
                              static_cast<uint8_t>(5 + w), static_cast<uint32_t>(offsetof(spd6_key, destination) + 4 * w));
    }
    d[9] = field6_def(RTE_ACL_FIELD_TYPE_RANGE, 2, field6_sport, 9, offsetof(spd6_key, source_port));
    d[10] = field6_def(RTE_ACL_FIELD_TYPE_RANGE, 2, field6_dport, 9, offsetof(spd6_key, destination_port));
}

// Word `w` of an IPv6 prefix as rte_acl wants it: host-order value and the bits of the prefix in it.
void v6_word(const config::ip_prefix& p, unsigned w, uint32_t& value, uint32_t& bits)
{
    const unsigned length = p.address.family == 6 ? p.length : 0;
    bits = length <= 32 * w ? 0 : std::min(32U, length - 32 * w);
    uint32_t v = 0;
    std::memcpy(&v, p.address.bytes.data() + 4 * w, 4);
    value = bits == 0 ? 0 : rte_be_to_cpu_32(v);
}

rte_acl_ctx* build_context(const char* name, const void* rules, uint32_t count, uint32_t rule_size,
                           const rte_acl_field_def* defs, uint32_t fields)
{
    rte_acl_param param{};
    param.name = name;
    param.socket_id = SOCKET_ID_ANY;
    param.rule_size = rule_size;
    param.max_rule_num = count;
    rte_acl_ctx* ctx = rte_acl_create(&param);
    if (ctx == nullptr) {
        throw std::runtime_error("SPD: rte_acl_create failed");
    }
    if (rte_acl_add_rules(ctx, static_cast<const rte_acl_rule*>(rules), count) != 0) {
        rte_acl_free(ctx);
        throw std::runtime_error("SPD: rte_acl_add_rules failed");
    }
    rte_acl_config cfg{};
    cfg.num_categories = RTE_ACL_RESULTS_MULTIPLIER;
    cfg.num_fields = fields;
    std::memcpy(cfg.defs, defs, sizeof(rte_acl_field_def) * fields);
    if (int rc = rte_acl_build(ctx, &cfg); rc != 0) {
        rte_acl_free(ctx);
        throw std::runtime_error("SPD: rte_acl_build failed: " + std::to_string(rc));
    }
    return ctx;
}

uint32_t host_v4(const config::ip_prefix& p)
{
    uint32_t v = 0;
    std::memcpy(&v, p.address.bytes.data(), 4);
    return rte_be_to_cpu_32(v);
}

uint8_t v4_length(const config::ip_prefix& p) { return p.address.family == 4 ? p.length : 0; }

// A prefix as linear_rule holds it: the address in memory order, its mask, the value masked. A
// prefix of another family than the rule set's is "any", as in the rte_acl rules (v4_length, v6_word).
void linear_prefix(const config::ip_prefix& p, uint8_t family, uint64_t* value, uint64_t* mask)
{
    const unsigned length = p.address.family == family ? p.length : 0;
    uint64_t words[2] = {0, 0};
    std::memcpy(words, p.address.bytes.data(), family == 4 ? 4 : 16);
    mask[0] = leading_mask_be(length < 64 ? length : 64);
    mask[1] = leading_mask_be(length > 64 ? length - 64 : 0);
    value[0] = words[0] & mask[0];
    value[1] = words[1] & mask[1];
}

linear_rule make_linear_rule(const spd_entry& e, uint8_t family, uint32_t result)
{
    const auto& p = e.policy;
    linear_rule r{};
    linear_prefix(e.inbound_check ? p.remote : p.local, family, r.source, r.source_mask);
    linear_prefix(e.inbound_check ? p.local : p.remote, family, r.destination, r.destination_mask);
    r.source_port_min = e.inbound_check ? p.remote_port_min : p.local_port_min;
    r.source_port_max = e.inbound_check ? p.remote_port_max : p.local_port_max;
    r.destination_port_min = e.inbound_check ? p.local_port_min : p.remote_port_min;
    r.destination_port_max = e.inbound_check ? p.local_port_max : p.remote_port_max;
    r.protocol = p.protocol;
    r.protocol_mask = p.protocol == 0 ? 0 : 0xff;
    r.category = e.inbound_check ? 1 : 0;
    r.result = result;
    return r;
}

// The IPv4 walk's form of an IPv4 rule.
linear4_rule to_linear4(const linear_rule& r)
{
    static_assert(std::endian::native == std::endian::little, "linear4_rule packs addresses little-endian");
    // IPv4 addresses sit in the first 4 bytes of each word (memory order, little-endian host): the
    // source in the low half, the destination in the high half, as spd_key holds them.
    linear4_rule q{};
    q.addresses = (r.source[0] & 0xffffffffULL) | (r.destination[0] << 32);
    q.address_mask = (r.source_mask[0] & 0xffffffffULL) | (r.destination_mask[0] << 32);
    q.source_port_min = r.source_port_min;
    q.source_port_span = static_cast<uint16_t>(r.source_port_max - r.source_port_min);
    q.destination_port_min = r.destination_port_min;
    q.destination_port_span = static_cast<uint16_t>(r.destination_port_max - r.destination_port_min);
    q.protocol = r.protocol;
    q.protocol_mask = r.protocol_mask;
    q.category = r.category;
    q.result = r.result;
    if (r.source_port_min > r.source_port_max || r.destination_port_min > r.destination_port_max) {
        // An empty range matches nothing (as in rte_acl); as a span it would wrap to nearly all. The
        // loader refuses such ranges; this keeps the walk right whoever builds the entry.
        q.address_mask = 0;
        q.addresses = 1;
    }
    return q;
}

// The rule of an entry with its rank (spd.h): operator policies in list order, implied ones by SPI.
spd_rule rule_of(const spd_entry& e, size_t position)
{
    spd_rule r;
    r.action = e.policy.action;
    r.sa = e.sa;
    r.id = e.id;
    r.priority = e.policy.priority;
    r.order = e.implied ? implied_order(e.policy.spi) : position;
    return r;
}

} // namespace

compiled_spd::compiled_spd(const std::vector<spd_entry>& entries, uint64_t generation, size_t linear_max)
{
    std::vector<spd_acl_rule> acl_rules;
    std::vector<spd6_acl_rule> acl6_rules;
    // rte_acl: the highest priority wins. Operators write "lower priority value wins, then file
    // order", so rank the entries and map rank 0 to the highest ACL priority.
    std::vector<size_t> order(entries.size());
    for (size_t i = 0; i < order.size(); ++i) {
        order[i] = i;
    }
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return entries[a].policy.priority < entries[b].policy.priority; });
    for (size_t rank = 0; rank < order.size(); ++rank) {
        const spd_entry& e = entries[order[rank]];
        const auto& p = e.policy;
        // Outbound: source = local, destination = remote. Inbound check: mirrored.
        const auto& src = e.inbound_check ? p.remote : p.local;
        const auto& dst = e.inbound_check ? p.local : p.remote;
        uint16_t sp_lo = e.inbound_check ? p.remote_port_min : p.local_port_min;
        uint16_t sp_hi = e.inbound_check ? p.remote_port_max : p.local_port_max;
        uint16_t dp_lo = e.inbound_check ? p.local_port_min : p.remote_port_min;
        uint16_t dp_hi = e.inbound_check ? p.local_port_max : p.remote_port_max;
        const auto priority =
            static_cast<int32_t>(RTE_ACL_MAX_PRIORITY - 1 - std::min<size_t>(rank, RTE_ACL_MAX_PRIORITY - 2));
        const bool v6 = p.local.address.family == 6 || p.remote.address.family == 6;
        if (v6) {
            spd6_acl_rule r{};
            r.data.userdata = static_cast<uint32_t>(rules_.size() + 1);
            r.data.priority = priority;
            r.data.category_mask = e.inbound_check ? 2U : 1U;
            r.field[field6_proto].value.u8 = p.protocol;
            r.field[field6_proto].mask_range.u8 = p.protocol == 0 ? 0 : 0xff;
            for (unsigned w = 0; w < 4; ++w) {
                uint32_t value = 0;
                uint32_t bits = 0;
                v6_word(src, w, value, bits);
                r.field[field6_src0 + w].value.u32 = value;
                r.field[field6_src0 + w].mask_range.u32 = bits;
                v6_word(dst, w, value, bits);
                r.field[field6_dst0 + w].value.u32 = value;
                r.field[field6_dst0 + w].mask_range.u32 = bits;
            }
            r.field[field6_sport].value.u16 = sp_lo;
            r.field[field6_sport].mask_range.u16 = sp_hi;
            r.field[field6_dport].value.u16 = dp_lo;
            r.field[field6_dport].mask_range.u16 = dp_hi;
            acl6_rules.push_back(r);
            rules_.push_back(rule_of(e, order[rank]));
            linear6_rules_.push_back(make_linear_rule(e, 6, r.data.userdata));
            continue;
        }
        spd_acl_rule r{};
        r.data.userdata = static_cast<uint32_t>(rules_.size() + 1);
        r.data.priority = priority;
        r.data.category_mask = e.inbound_check ? 2U : 1U;
        r.field[field_proto].value.u8 = p.protocol;
        r.field[field_proto].mask_range.u8 = p.protocol == 0 ? 0 : 0xff;
        r.field[field_src].value.u32 = v4_length(src) == 0 ? 0 : host_v4(src);
        r.field[field_src].mask_range.u32 = v4_length(src);
        r.field[field_dst].value.u32 = v4_length(dst) == 0 ? 0 : host_v4(dst);
        r.field[field_dst].mask_range.u32 = v4_length(dst);
        r.field[field_sport].value.u16 = sp_lo;
        r.field[field_sport].mask_range.u16 = sp_hi;
        r.field[field_dport].value.u16 = dp_lo;
        r.field[field_dport].mask_range.u16 = dp_hi;
        acl_rules.push_back(r);
        rules_.push_back(rule_of(e, order[rank]));
        linear4_rules_.push_back(to_linear4(make_linear_rule(e, 4, r.data.userdata)));
    }
    // Ranks are unique below RTE_ACL_MAX_PRIORITY - 2, so the first match in rank order is the rule
    // rte_acl would answer. rte_acl is still built (empty() and the tests rely on it; a handful of
    // rules builds in microseconds).
    linear4_ = !linear4_rules_.empty() && linear4_rules_.size() <= linear_max;
    linear6_ = !linear6_rules_.empty() && linear6_rules_.size() <= linear_max;
    if (!linear4_) {
        linear4_rules_.clear();
        linear4_rules_.shrink_to_fit();
    }
    if (!linear6_) {
        linear6_rules_.clear();
        linear6_rules_.shrink_to_fit();
    }
    if (!acl6_rules.empty()) {
        rte_acl_field_def defs6[field6_count];
        field6_defs(defs6);
        const std::string name6 = "spd6_" + std::to_string(generation);
        ctx6_ = build_context(name6.c_str(), acl6_rules.data(), static_cast<uint32_t>(acl6_rules.size()),
                              RTE_ACL_RULE_SZ(field6_count), defs6, field6_count);
    }
    if (!acl_rules.empty()) {
        const std::string name = "spd_" + std::to_string(generation);
        try {
            ctx_ = build_context(name.c_str(), acl_rules.data(), static_cast<uint32_t>(acl_rules.size()),
                                 RTE_ACL_RULE_SZ(field_count), field_defs, field_count);
        } catch (...) {
            if (ctx6_ != nullptr) {
                rte_acl_free(ctx6_);
            }
            throw;
        }
    }
    forwards_all_ = std::all_of(rules_.begin(), rules_.end(),
                                [](const spd_rule& r) { return r.action == config::policy_action::bypass; });
}

compiled_spd::~compiled_spd()
{
    if (ctx_ != nullptr) {
        rte_acl_free(ctx_);
    }
    if (ctx6_ != nullptr) {
        rte_acl_free(ctx6_);
    }
}

namespace {

// One rte_acl context for either family's keys: up to 64 packets per call, two categories per packet
// (outbound rule, inbound selector match); no context = no policy (0, 0).
template <typename Key>
void classify_with(const rte_acl_ctx* ctx, const Key* const* keys, uint32_t* outbound, uint32_t* inbound_match,
                   uint32_t n) noexcept
{
    if (ctx == nullptr) {
        std::fill(outbound, outbound + n, 0U);
        std::fill(inbound_match, inbound_match + n, 0U);
        return;
    }
    uint32_t results[64 * categories];
    for (uint32_t off = 0; off < n; off += 64) {
        uint32_t len = std::min<uint32_t>(64, n - off);
        rte_acl_classify(ctx, reinterpret_cast<const uint8_t**>(const_cast<const Key**>(keys + off)), results, len,
                         categories);
        for (uint32_t i = 0; i < len; ++i) {
            outbound[off + i] = results[i * categories];
            inbound_match[off + i] = results[i * categories + 1];
        }
    }
}

// The linear walk: per packet, the first rule in rank order of each category that matches (what
// rte_acl answers, highest priority first). Written by hand because for a few rules it is several
// times cheaper than rte_acl's trie (compiled_spd::default_linear_max).
template <typename Key>
void classify_linear(const std::vector<linear_rule>& rules, const Key* const* keys, uint32_t* outbound,
                     uint32_t* inbound_match, uint32_t n, inbound_scope scope) noexcept
{
    // Categories found (bit 0 outbound, bit 1 inbound check) at which the walk stops.
    const unsigned enough = scope == inbound_scope::every_packet ? 3U : 1U;
    for (uint32_t i = 0; i < n; ++i) {
        const Key& k = *keys[i];
        uint64_t src[2] = {0, 0};
        uint64_t dst[2] = {0, 0};
        std::memcpy(src, &k.source, sizeof(k.source));
        std::memcpy(dst, &k.destination, sizeof(k.destination));
        const uint16_t sport = be16_to_host(k.source_port);
        const uint16_t dport = be16_to_host(k.destination_port);
        uint32_t found[2] = {0, 0};
        unsigned have = 0;
        for (const linear_rule& r : rules) {
            if ((have & (1U << r.category)) != 0) {
                continue;
            }
            const uint64_t diff = ((src[0] & r.source_mask[0]) ^ r.source[0]) |
                                  ((src[1] & r.source_mask[1]) ^ r.source[1]) |
                                  ((dst[0] & r.destination_mask[0]) ^ r.destination[0]) |
                                  ((dst[1] & r.destination_mask[1]) ^ r.destination[1]);
            if (diff == 0 && (k.protocol & r.protocol_mask) == r.protocol && sport >= r.source_port_min &&
                sport <= r.source_port_max && dport >= r.destination_port_min && dport <= r.destination_port_max) {
                found[r.category] = r.result;
                have |= 1U << r.category;
                if ((have & enough) == enough) {
                    break;
                }
            }
        }
        outbound[i] = found[0];
        inbound_match[i] = found[1];
    }
}

// The IPv4 walk over linear4_rule: one 64-bit mask-and-compare for both addresses instead of four
// (perf/RESULTS.md, stop 26: the site-to-site benchmark's two-rule walk was ~10 cycles per packet).
void classify_linear4(const std::vector<linear4_rule>& rules, const spd_key* const* keys, uint32_t* outbound,
                      uint32_t* inbound_match, uint32_t n, inbound_scope scope) noexcept
{
    const unsigned enough = scope == inbound_scope::every_packet ? 3U : 1U;
    const linear4_rule* const first = rules.data();
    const linear4_rule* const last = first + rules.size();
    for (uint32_t i = 0; i < n; ++i) {
        const spd_key& k = *keys[i];
        uint64_t addresses = 0;
        static_assert(offsetof(spd_key, destination) == offsetof(spd_key, source) + 4);
        std::memcpy(&addresses, &k.source, 8);
        const uint16_t sport = be16_to_host(k.source_port);
        const uint16_t dport = be16_to_host(k.destination_port);
        uint32_t found[2] = {0, 0};
        unsigned have = 0;
        for (const linear4_rule* r = first; r != last; ++r) {
            if ((addresses & r->address_mask) != r->addresses || (k.protocol & r->protocol_mask) != r->protocol ||
                static_cast<uint16_t>(sport - r->source_port_min) > r->source_port_span ||
                static_cast<uint16_t>(dport - r->destination_port_min) > r->destination_port_span ||
                (have & (1U << r->category)) != 0) {
                continue;
            }
            found[r->category] = r->result;
            have |= 1U << r->category;
            if ((have & enough) == enough) {
                break;
            }
        }
        outbound[i] = found[0];
        inbound_match[i] = found[1];
    }
}

} // namespace

void compiled_spd::classify(const spd_key* const* keys, uint32_t* outbound, uint32_t* inbound_match, uint32_t n,
                            inbound_scope scope) const noexcept
{
    if (linear4_) {
        classify_linear4(linear4_rules_, keys, outbound, inbound_match, n, scope);
        return;
    }
    // Two categories are used, but rte_acl wants 1 or a multiple of RTE_ACL_RESULTS_MULTIPLIER.
    classify_with(ctx_, keys, outbound, inbound_match, n);
}

void compiled_spd::classify6(const spd6_key* const* keys, uint32_t* outbound, uint32_t* inbound_match,
                             uint32_t n, inbound_scope scope) const noexcept
{
    if (linear6_) {
        classify_linear(linear6_rules_, keys, outbound, inbound_match, n, scope);
        return;
    }
    classify_with(ctx6_, keys, outbound, inbound_match, n);
}

// --- Level 2 ---------------------------------------------------------------------------------

host_key make_host_key(host_category category, const config::ip_prefix& remote) noexcept
{
    host_key k{};
    k.category = static_cast<uint8_t>(category);
    k.family = remote.address.family;
    std::memcpy(k.address, remote.address.bytes.data(), remote.address.family == 4 ? 4 : 16);
    return k;
}

host_spd::host_spd(const std::string& name, uint32_t capacity, int socket)
{
    rte_hash_parameters hp{};
    hp.name = name.c_str();
    hp.entries = capacity;
    hp.key_len = sizeof(host_key);
    hp.socket_id = socket;
    // Extendable buckets: `capacity` keys always fit, so a worker never fails to apply an add.
    hp.extra_flag = RTE_HASH_EXTRA_FLAGS_EXT_TABLE;
    hash_ = rte_hash_create(&hp);
    if (hash_ == nullptr) {
        throw std::runtime_error("cannot create the host policy table " + name + ": " + rte_strerror(rte_errno));
    }
}

host_spd::~host_spd() { rte_hash_free(hash_); }

void host_spd::set(const host_bucket* bucket) noexcept
{
    void* old = nullptr;
    if (rte_hash_lookup_data(hash_, &bucket->key, &old) < 0) {
        ++count_[bucket->key.category & 1];
    }
    // Cannot fail: host_policies never holds more keys than the table's capacity.
    rte_hash_add_key_data(hash_, &bucket->key, const_cast<host_bucket*>(bucket));
    memo_.forget(memo_key_of(bucket->key)); // before the acknowledgement lets the main lcore free the old bucket
}

void host_spd::remove(const host_bucket* bucket) noexcept
{
    memo_.forget(memo_key_of(bucket->key));
    if (rte_hash_del_key(hash_, &bucket->key) >= 0) {
        --count_[bucket->key.category & 1];
    }
}

namespace {

// Is `address` (network order, 4 or 16 bytes) inside the candidate's local prefix?
bool local_contains(const host_candidate& c, const uint8_t* address, unsigned bytes) noexcept
{
    return leading_bits_equal(c.network, address, c.length, bytes == 4);
}

} // namespace

host_spd::memo_key host_spd::memo_key_of(const host_key& k) noexcept
{
    memo_key m;
    std::memcpy(&m.lo, k.address, 8);
    std::memcpy(&m.hi, k.address + 8, 8);
    m.tag = k.category | uint32_t{k.family} << 8;
    return m;
}

void host_spd::lookup(host_category category, uint8_t family, const uint8_t* const* address,
                      const uint8_t* const* local, const spd_rule** result, uint32_t n) const noexcept
{
    const unsigned bytes = family == 4 ? 4 : 16;
    for (uint32_t off = 0; off < n; off += RTE_HASH_LOOKUP_BULK_MAX) {
        const uint32_t len = std::min<uint32_t>(RTE_HASH_LOOKUP_BULK_MAX, n - off);
        host_key keys[RTE_HASH_LOOKUP_BULK_MAX];
        const host_bucket* found[RTE_HASH_LOOKUP_BULK_MAX];
        // The memo first; the rte_hash for the keys it does not know, which it then learns.
        const void* key_ptrs[RTE_HASH_LOOKUP_BULK_MAX];
        uint32_t missed[RTE_HASH_LOOKUP_BULK_MAX];
        uint32_t n_missed = 0;
        memo_key mk[RTE_HASH_LOOKUP_BULK_MAX];
        const uint32_t tag = static_cast<uint32_t>(category) | uint32_t{family} << 8;
        for (uint32_t i = 0; i < len; ++i) {
            memo_key& m = mk[i];
            m.tag = tag;
            if (bytes == 4) {
                // As memo_key_of reads a stored key (4 address bytes, then 4 zero bytes), computed in
                // a register: storing 4 bytes into the word and reading it whole would stall.
                uint32_t a = 0;
                std::memcpy(&a, address[off + i], 4);
                m.lo = std::endian::native == std::endian::little ? uint64_t{a} : uint64_t{a} << 32;
                m.hi = 0;
            } else {
                std::memcpy(&m.lo, address[off + i], 8);
                std::memcpy(&m.hi, address[off + i] + 8, 8);
            }
            if (const host_bucket* const* known = memo_.find(m)) {
                found[i] = *known;
                continue;
            }
            host_key& k = keys[n_missed];
            k = {};
            k.category = static_cast<uint8_t>(category);
            k.family = family;
            std::memcpy(k.address, address[off + i], bytes);
            key_ptrs[n_missed] = &k;
            missed[n_missed++] = i;
        }
        if (n_missed != 0) {
            uint64_t hits = 0;
            void* data[RTE_HASH_LOOKUP_BULK_MAX];
            rte_hash_lookup_bulk_data(hash_, key_ptrs, n_missed, &hits, data);
            for (uint32_t j = 0; j < n_missed; ++j) {
                const uint32_t i = missed[j];
                found[i] = (hits & (uint64_t{1} << j)) != 0 ? static_cast<const host_bucket*>(data[j]) : nullptr;
                memo_.store(mk[i], found[i]);
            }
        }
        // With many hosts every bucket is a cache miss: start them for the whole burst before
        // reading any. The best-ranked candidate is in the bucket's first line (host_bucket::first);
        // the vector is read only when it does not match (several SAs for one host).
        for (uint32_t i = 0; i < len; ++i) {
            if (found[i] != nullptr) {
                rte_prefetch0(found[i]);
            }
        }
        for (uint32_t i = 0; i < len; ++i) {
            result[off + i] = nullptr;
            const host_bucket* b = found[i];
            if (b == nullptr) {
                continue;
            }
            if (local_contains(b->first, local[off + i], bytes)) {
                result[off + i] = &b->first.rule;
                continue;
            }
            for (size_t c = 1; c < b->candidates.size(); ++c) {
                if (local_contains(b->candidates[c], local[off + i], bytes)) {
                    result[off + i] = &b->candidates[c].rule;
                    break; // sorted by rank
                }
            }
        }
    }
}

size_t host_policies::key_hash::operator()(const host_key& k) const noexcept
{
    return std::hash<std::string_view>{}(std::string_view(reinterpret_cast<const char*>(&k), sizeof(k)));
}

slot_pool& host_bucket_pool()
{
    // Never destroyed: buckets held by static objects may be freed during exit.
    static slot_pool* pool = new slot_pool(sizeof(host_bucket), alignof(host_bucket));
    return *pool;
}

host_bucket_ptr make_host_bucket()
{
    slot_pool& pool = host_bucket_pool();
    void* slot = pool.allocate();
    static_assert(std::is_nothrow_default_constructible_v<host_bucket>);
    return host_bucket_ptr(new (slot) host_bucket());
}

void host_bucket_deleter::operator()(host_bucket* b) const noexcept
{
    if (b != nullptr) {
        b->~host_bucket();
        host_bucket_pool().release(b);
    }
}

void host_policies::make_room()
{
    // Grown geometrically: reserving size() + 1 reallocated and copied the whole list on every call,
    // ~1 us per SA over a batch of 1000 outbound /32 SAs (perf/RESULTS.md, "SA runtimes and
    // host-policy buckets on huge pages"). If the second reserve throws, only the first list's
    // capacity changed.
    auto room_for_one = [](auto& v) {
        if (v.size() == v.capacity()) {
            v.reserve(std::max<size_t>(16, v.size() * 2));
        }
    };
    room_for_one(updates_);
    room_for_one(retired_);
}

void host_policies::replace(host_bucket_ptr& slot, host_bucket_ptr next) noexcept
{
    updates_.push_back({next.get(), false}); // make_room() made room for both
    if (slot) {
        retired_.push_back(std::move(slot));
    }
    slot = std::move(next);
}

bool host_policies::add(host_category category, const config::ip_prefix& local, const config::ip_prefix& remote,
                        const spd_rule& rule)
{
    make_room(); // first: nothing below changes the table and then throws
    const host_key key = make_host_key(category, remote);
    auto it = buckets_.find(key);
    if (it == buckets_.end() && buckets_.size() >= capacity_) {
        return false;
    }
    host_candidate c;
    c.length = local.length;
    std::memcpy(c.network, local.address.bytes.data(), local.address.family == 4 ? 4 : 16);
    c.rule = rule;
    host_bucket_ptr next = make_host_bucket();
    next->key = key;
    if (it != buckets_.end()) {
        next->candidates = it->second->candidates;
    }
    const auto at = std::upper_bound(next->candidates.begin(), next->candidates.end(), c,
                                     [](const host_candidate& a, const host_candidate& b) {
                                         return ranked_before(a.rule, b.rule);
                                     });
    next->candidates.insert(at, c);
    next->seal();
    if (it == buckets_.end()) {
        it = buckets_.emplace(key, nullptr).first;
    }
    replace(it->second, std::move(next));
    return true;
}

bool host_policies::remove(host_category category, const config::ip_prefix& local, const config::ip_prefix& remote,
                           uint64_t order)
{
    make_room();
    const host_key key = make_host_key(category, remote);
    auto it = buckets_.find(key);
    if (it == buckets_.end()) {
        return false;
    }
    const auto& old = it->second->candidates;
    const auto victim = std::find_if(old.begin(), old.end(), [&](const host_candidate& c) {
        return c.rule.order == order && c.length == local.length &&
               std::memcmp(c.network, local.address.bytes.data(), local.address.family == 4 ? 4 : 16) == 0;
    });
    if (victim == old.end()) {
        return false;
    }
    if (old.size() == 1) {
        // The last one: the workers delete the key (read from the old bucket, kept until released).
        updates_.push_back({it->second.get(), true});
        retired_.push_back(std::move(it->second));
        buckets_.erase(it);
        return true;
    }
    host_bucket_ptr next = make_host_bucket();
    next->key = key;
    next->candidates.reserve(old.size() - 1);
    for (auto c = old.begin(); c != old.end(); ++c) {
        if (c != victim) {
            next->candidates.push_back(*c);
        }
    }
    next->seal();
    replace(it->second, std::move(next));
    return true;
}

const host_bucket* host_policies::find(const host_key& key) const
{
    const auto it = buckets_.find(key);
    return it == buckets_.end() ? nullptr : it->second.get();
}

namespace {

// The better-ranked of the rte_acl winner and the host winner.
const spd_rule* better(const spd_rule* acl, const spd_rule* host) noexcept
{
    if (host == nullptr) {
        return acl;
    }
    return acl == nullptr || ranked_before(*host, *acl) ? host : acl;
}

template <typename Key>
void classify_two_levels(const compiled_spd* spd, const host_spd& hosts, const Key* const* keys,
                         const spd_rule** outbound, const spd_rule** inbound_match, uint32_t n,
                         uint8_t family, inbound_scope scope) noexcept
{
    for (uint32_t off = 0; off < n; off += 64) {
        const uint32_t len = std::min<uint32_t>(64, n - off);
        const Key* const* k = keys + off;
        uint32_t out_index[64];
        uint32_t in_index[64];
        if (spd == nullptr) {
            std::fill(out_index, out_index + len, 0U);
            std::fill(in_index, in_index + len, 0U);
        } else if constexpr (sizeof(Key) == sizeof(spd_key)) {
            spd->classify(k, out_index, in_index, len, scope);
        } else {
            spd->classify6(k, out_index, in_index, len, scope);
        }
        for (uint32_t i = 0; i < len; ++i) {
            outbound[off + i] = out_index[i] == 0 ? nullptr : &spd->rule(out_index[i]);
            inbound_match[off + i] = in_index[i] == 0 ? nullptr : &spd->rule(in_index[i]);
        }
        auto address_of = [](const Key* key, bool destination) -> const uint8_t* {
            if constexpr (sizeof(Key) == sizeof(spd_key)) {
                return reinterpret_cast<const uint8_t*>(destination ? &key->destination : &key->source);
            } else {
                return destination ? key->destination : key->source;
            }
        };
        const spd_rule* host[64];
        const uint8_t* address[64];
        const uint8_t* other[64];
        if (!hosts.empty(host_category::outbound)) {
            // Outbound: the remote host is the packet's destination, the local prefix holds its source.
            for (uint32_t i = 0; i < len; ++i) {
                address[i] = address_of(k[i], true);
                other[i] = address_of(k[i], false);
            }
            hosts.lookup(host_category::outbound, family, address, other, host, len);
            for (uint32_t i = 0; i < len; ++i) {
                outbound[off + i] = better(outbound[off + i], host[i]);
            }
        }
        if (!hosts.empty(host_category::inbound_check)) {
            // By their source; with inbound_scope::without_outbound only the packets no outbound
            // rule decided.
            uint32_t which[64];
            uint32_t m = 0;
            for (uint32_t i = 0; i < len; ++i) {
                if (scope == inbound_scope::every_packet || outbound[off + i] == nullptr) {
                    which[m] = i;
                    address[m] = address_of(k[i], false);
                    other[m] = address_of(k[i], true);
                    ++m;
                }
            }
            if (m != 0) {
                hosts.lookup(host_category::inbound_check, family, address, other, host, m);
                for (uint32_t j = 0; j < m; ++j) {
                    inbound_match[off + which[j]] = better(inbound_match[off + which[j]], host[j]);
                }
            }
        }
    }
}

} // namespace

void classify(const compiled_spd* spd, const host_spd& hosts, const spd_key* const* keys,
              const spd_rule** outbound, const spd_rule** inbound_match, uint32_t n, inbound_scope scope) noexcept
{
    classify_two_levels(spd, hosts, keys, outbound, inbound_match, n, 4, scope);
}

void classify6(const compiled_spd* spd, const host_spd& hosts, const spd6_key* const* keys,
               const spd_rule** outbound, const spd_rule** inbound_match, uint32_t n, inbound_scope scope) noexcept
{
    classify_two_levels(spd, hosts, keys, outbound, inbound_match, n, 6, scope);
}

} // namespace espresso::dp
