#include "spd.h"

#include <rte_byteorder.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

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

uint32_t host_v4(const config::ip_prefix& p)
{
    uint32_t v = 0;
    std::memcpy(&v, p.address.bytes.data(), 4);
    return rte_be_to_cpu_32(v);
}

uint8_t v4_length(const config::ip_prefix& p) { return p.address.family == 4 ? p.length : 0; }

} // namespace

compiled_spd::compiled_spd(const std::vector<spd_entry>& entries, uint64_t generation)
{
    std::vector<spd_acl_rule> acl_rules;
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
        if ((p.local.address.family != 0 && p.local.address.family != 4) ||
            (p.remote.address.family != 0 && p.remote.address.family != 4)) {
            continue; // IPv6 policies: not classified by this IPv4 context
        }
        spd_acl_rule r{};
        r.data.userdata = static_cast<uint32_t>(rules_.size() + 1);
        r.data.priority = static_cast<int32_t>(RTE_ACL_MAX_PRIORITY - 1 - std::min<size_t>(rank, RTE_ACL_MAX_PRIORITY - 2));
        r.data.category_mask = e.inbound_check ? 2U : 1U;
        r.field[field_proto].value.u8 = p.protocol;
        r.field[field_proto].mask_range.u8 = p.protocol == 0 ? 0 : 0xff;
        // Outbound: source = local, destination = remote. Inbound check: mirrored.
        const auto& src = e.inbound_check ? p.remote : p.local;
        const auto& dst = e.inbound_check ? p.local : p.remote;
        r.field[field_src].value.u32 = v4_length(src) == 0 ? 0 : host_v4(src);
        r.field[field_src].mask_range.u32 = v4_length(src);
        r.field[field_dst].value.u32 = v4_length(dst) == 0 ? 0 : host_v4(dst);
        r.field[field_dst].mask_range.u32 = v4_length(dst);
        uint16_t sp_lo = e.inbound_check ? p.remote_port_min : p.local_port_min;
        uint16_t sp_hi = e.inbound_check ? p.remote_port_max : p.local_port_max;
        uint16_t dp_lo = e.inbound_check ? p.local_port_min : p.remote_port_min;
        uint16_t dp_hi = e.inbound_check ? p.local_port_max : p.remote_port_max;
        r.field[field_sport].value.u16 = sp_lo;
        r.field[field_sport].mask_range.u16 = sp_hi;
        r.field[field_dport].value.u16 = dp_lo;
        r.field[field_dport].mask_range.u16 = dp_hi;
        acl_rules.push_back(r);
        rules_.push_back({p.action, e.sa, e.id});
    }
    if (acl_rules.empty()) {
        return;
    }
    std::string name = "spd_" + std::to_string(generation);
    rte_acl_param param{};
    param.name = name.c_str();
    param.socket_id = SOCKET_ID_ANY;
    param.rule_size = RTE_ACL_RULE_SZ(field_count);
    param.max_rule_num = static_cast<uint32_t>(acl_rules.size());
    ctx_ = rte_acl_create(&param);
    if (ctx_ == nullptr) {
        throw std::runtime_error("SPD: rte_acl_create failed");
    }
    if (rte_acl_add_rules(ctx_, reinterpret_cast<const rte_acl_rule*>(acl_rules.data()),
                          static_cast<uint32_t>(acl_rules.size())) != 0) {
        rte_acl_free(ctx_);
        throw std::runtime_error("SPD: rte_acl_add_rules failed");
    }
    rte_acl_config cfg{};
    cfg.num_categories = categories;
    cfg.num_fields = field_count;
    std::memcpy(cfg.defs, field_defs, sizeof(field_defs));
    if (int rc = rte_acl_build(ctx_, &cfg); rc != 0) {
        rte_acl_free(ctx_);
        throw std::runtime_error("SPD: rte_acl_build failed: " + std::to_string(rc));
    }
}

compiled_spd::~compiled_spd()
{
    if (ctx_ != nullptr) {
        rte_acl_free(ctx_);
    }
}

void compiled_spd::classify(const spd_key* const* keys, uint32_t* outbound, uint32_t* inbound_match, uint32_t n) const noexcept
{
    if (ctx_ == nullptr) {
        std::fill(outbound, outbound + n, 0U);
        std::fill(inbound_match, inbound_match + n, 0U);
        return;
    }
    // Two categories are used, but rte_acl wants 1 or a multiple of RTE_ACL_RESULTS_MULTIPLIER.
    uint32_t results[64 * categories];
    for (uint32_t off = 0; off < n; off += 64) {
        uint32_t len = std::min<uint32_t>(64, n - off);
        rte_acl_classify(ctx_, reinterpret_cast<const uint8_t**>(const_cast<const spd_key**>(keys + off)), results,
                         len, categories);
        for (uint32_t i = 0; i < len; ++i) {
            outbound[off + i] = results[i * categories];
            inbound_match[off + i] = results[i * categories + 1];
        }
    }
}

} // namespace espresso::dp
