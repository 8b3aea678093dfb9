// The difference between the configuration espresso-dp runs and a file it is asked to reload
// (control op `reload`, docs/control-api.md): per runtime section (routes, neighbors, explicit
// policies, static SAs) what was added, removed, changed and left unchanged, and which settings
// cannot change without a restart (the `dataplane:` section and `interfaces:`).
//
// Pure: no DPDK, no threads. The gateway (gateway::reload) applies the result; tests compare it.
// Items are matched by identity, never by their position in the file or their `origin` (a line added
// above an item moves it; it is still the same item):
//  - routes by destination prefix (changed: another `via` or `interface`);
//  - neighbors by (interface, address) (changed: another MAC);
//  - static SAs by (direction, SPI) (changed: any other field, keys included: it is replaced);
//  - policies have no identity besides their content: a policy whose every field is the same is
//    unchanged, anything else is one removed and one added (a list may hold equal policies: they are
//    matched one to one).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "espresso/config/types.h"

namespace espresso::dp {

struct section_diff {
    // Indexes into the running configuration's list (removed, and the old side of changed and
    // unchanged) and into the new one (added, and the new side of changed and unchanged).
    std::vector<size_t> added;     // new index
    std::vector<size_t> removed;   // running index
    std::vector<std::pair<size_t, size_t>> changed;   // (running, new)
    std::vector<std::pair<size_t, size_t>> unchanged; // (running, new)

    bool touched() const noexcept { return !added.empty() || !removed.empty() || !changed.empty(); }
};

struct config_diff {
    section_diff routes;
    section_diff neighbors;
    section_diff policies;
    section_diff sas;
    // Settings that differ but are read at start only, as "<section>.<key>" with the old and new
    // value ("dataplane.workers: 1 -> 2", "interfaces: inside added"). Not applied by a reload.
    std::vector<std::string> restart_needed;
};

config_diff diff_config(const config::gateway_config& running, const config::gateway_config& next);

// Field-by-field equality that ignores `origin` (where in the file the item was).
bool same_route(const config::route_config& a, const config::route_config& b) noexcept;
bool same_neighbor(const config::neighbor_config& a, const config::neighbor_config& b) noexcept;
bool same_policy(const config::policy_config& a, const config::policy_config& b) noexcept;
// Keys are compared too (in constant time: a reload's timing says nothing about them).
bool same_sa(const config::sa_config& a, const config::sa_config& b) noexcept;

// One line per item for reports (never key material).
std::string describe(const config::route_config& r);
std::string describe(const config::neighbor_config& n);
std::string describe(const config::policy_config& p);
std::string describe(const config::sa_config& sa);
// A changed SA: the new one and which settings differ ("... (key, replay-window)"), never the keys.
std::string describe_change(const config::sa_config& old_sa, const config::sa_config& new_sa);

} // namespace espresso::dp
