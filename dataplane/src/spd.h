// Security Policy Database (RFC 4301 §4.4.1) for transit traffic, compiled into two rte_acl
// contexts (IPv4 and IPv6 selectors; one rule list). A compiled SPD is immutable: the management thread builds a new one for every change and
// hands the pointer to each worker through its update ring; the old one is freed only after every
// worker acknowledged the switch.
//
// One classification answers two questions at once (two ACL categories):
//  - category 0, outbound: what to do with a cleartext packet about to leave (protect with an SA,
//    bypass, discard);
//  - category 1, inbound check: does a cleartext packet that arrived match an inbound protect policy,
//    i.e. should it have arrived encrypted (RFC 4301 §5.2 step 4: drop it).
#pragma once

#include <rte_acl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "espresso/config/types.h"

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
};

struct spd_entry {
    config::policy_config policy;
    sa_runtime* sa = nullptr;  // protect (outbound) only
    bool inbound_check = false; // category 1: checks cleartext arriving (mirrored selectors)
    uint32_t id = 0;
};

class compiled_spd {
public:
    // Throws std::runtime_error if rte_acl cannot build the context.
    compiled_spd(const std::vector<spd_entry>& entries, uint64_t generation);
    ~compiled_spd();
    compiled_spd(const compiled_spd&) = delete;
    compiled_spd& operator=(const compiled_spd&) = delete;

    // results[i]: outbound rule index + 1 and inbound-check rule index + 1 (0 = no policy).
    void classify(const spd_key* const* keys, uint32_t* outbound, uint32_t* inbound_match, uint32_t n) const noexcept;
    void classify6(const spd6_key* const* keys, uint32_t* outbound, uint32_t* inbound_match, uint32_t n) const noexcept;
    const spd_rule& rule(uint32_t index_plus_one) const noexcept { return rules_[index_plus_one - 1]; }
    bool empty() const noexcept { return ctx_ == nullptr && ctx6_ == nullptr; }

private:
    rte_acl_ctx* ctx_ = nullptr;
    rte_acl_ctx* ctx6_ = nullptr;
    std::vector<spd_rule> rules_;
};

} // namespace espresso::dp
