// Traffic selectors (RFC 7296 §2.9, §3.13): configured prefixes to TS payload entries and back, and
// the responder's narrowing. The data plane's SAs carry one local and one remote prefix, so a
// negotiated selector pair must come out as a prefix pair; protocol/port-restricted selectors are
// not narrowed into (we answer TS_UNACCEPTABLE rather than widen what the peer asked for).
#pragma once

#include <optional>
#include <vector>

#include "espresso/config/types.h"
#include "espresso/cp/ike_message.h"

namespace espresso::cp {

traffic_selector to_selector(const config::ip_prefix& prefix);
std::vector<traffic_selector> to_selectors(const std::vector<config::ip_prefix>& prefixes);
// The prefix a selector describes exactly (any protocol, all ports, range = one CIDR block), or nullopt.
std::optional<config::ip_prefix> to_prefix(const traffic_selector& ts);

// The first of our prefixes that has a non-empty, prefix-shaped intersection with one of the peer's
// selectors (any protocol, all ports), as that intersection; nullopt when none.
std::optional<config::ip_prefix> narrow(const std::vector<config::ip_prefix>& ours, const std::vector<traffic_selector>& theirs);

// Whether `inner` lies within one of `outer` (initiator: the responder may only narrow).
bool within(const config::ip_prefix& inner, const std::vector<config::ip_prefix>& outer);

std::string describe(const std::vector<traffic_selector>& selectors);
std::string describe(const std::vector<config::ip_prefix>& prefixes);

} // namespace espresso::cp
