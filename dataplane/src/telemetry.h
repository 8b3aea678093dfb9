// espresso-dp's commands on the DPDK telemetry socket (usertools/dpdk-telemetry.py):
//
//   /espresso/sa                 {"outbound": [spi, ...], "inbound": [spi, ...]}
//   /espresso/sa,<spi>           counters and drops of the SA(s) with that SPI, per direction;
//                                <spi> is decimal or 0x-hex, optionally "in:" / "out:" prefixed
//   /espresso/interfaces         per interface: rx/tx packets, bytes, errors, link
//   /espresso/workers            per worker lcore: rx, tx, busy, drops
//
// Threads: DPDK runs telemetry callbacks on its own telemetry thread, never on the main lcore, and
// gateway_api may only be used on the main lcore. So the main loop copies what telemetry shows into
// a cache (refresh_telemetry), and the callbacks read only that cache, under a mutex (neither side is
// a packet path). The copy is O(SAs); espresso-dp makes it only when a query asks for it
// (refresh_telemetry_on_demand): the callback raises telemetry_wanted() and waits up to 2 s for the
// main loop to refresh, unless the copy is less than 500 ms old. Values may be that old. The copy holds
// SA snapshots; only the SA a query names is rendered.
#pragma once

#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "gateway_api.h"

struct rte_tel_data;

namespace espresso::dp {

// Registers the /espresso/* commands (after rte_eal_init). Main lcore. The cache is empty until the
// first refresh_telemetry(); the second form refreshes it once right away.
void register_telemetry();
void register_telemetry(gateway_api& gateway);

// Copies the current SA, interface and worker snapshots (never keys) into the cache and wakes the
// queries waiting for it. Main lcore.
void refresh_telemetry(const gateway_api& gateway);

// From now on the callbacks ask for a fresh copy and wait for it (see above); without this (or with
// `false`) they read whatever the cache holds (unit tests). Main lcore, after register_telemetry().
void refresh_telemetry_on_demand(bool on = true) noexcept;

// A query waits for a new copy: the main loop should call refresh_telemetry() soon. Any thread; one
// relaxed atomic load, cheap enough for every loop turn.
bool telemetry_wanted() noexcept;

// What a command returns, as JSON, from the cache; nullopt for an unknown command or SPI. Any
// thread. The telemetry callbacks convert this to rte_tel_data; tests call it directly.
std::optional<nlohmann::json> telemetry_query(std::string_view command, std::string_view params);

// The callback registered for every /espresso/* command: telemetry_query() converted to rte_tel_data
// (dicts of u64/strings, one level of containers). Returns 0, or -EINVAL for an unknown command/SPI.
int telemetry_callback(const char* command, const char* params, rte_tel_data* data);

} // namespace espresso::dp
