// SA, policy, interface, worker and event records <-> the JSON of the control protocol
// (docs/control-api.md).
//
// Parsing SAs goes through the config loader (espresso/config/loader.h) so that a static SA in the
// YAML file and an SA added over the control socket pass the same validation and get the same
// messages: each SA object becomes the loader's plain value tree (views of the JSON's strings, no
// YAML nodes, no text) for config::load_security_association. Rendering never includes key material.
//
// Threads: plain functions without shared state; called on the main lcore by the control server and
// by the telemetry refresh.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "espresso/config/types.h"
#include "gateway_api.h"

namespace espresso::dp {

template <typename T>
struct parsed {
    std::optional<T> value;
    std::string error; // names the field ("sa.key: ..."); empty when value is set
};

// The "sa" argument of add-sa (keys as in the YAML schema of `security-associations` items). The
// returned sa_config holds keys: the caller wipes it (config::wipe_keys) after use. The key strings in
// `sa` are left untouched; see wipe_json_secrets().
parsed<config::sa_config> sa_from_json(const nlohmann::json& sa);

// The "sas" argument of add-sas: an array of such objects, each validated as above, then the file
// loader's SPI uniqueness rule over the batch. Errors name the item ("sas[3].key: ..."). The caller
// wipes every returned sa_config after use.
parsed<std::vector<config::sa_config>> sas_from_json(const nlohmann::json& sas);

// The "policy" argument of add-policy: the keys of a `policies:` item ({local, remote, protocol,
// local-ports, remote-ports, action, priority, spi}), validated by the config loader too.
parsed<config::policy_config> policy_from_json(const nlohmann::json& policy);

// Overwrites the "key" and "integrity-key" strings of an SA object (best effort: the JSON library
// may have copied them while parsing; the server also wipes its receive buffer).
void wipe_json_secrets(nlohmann::json& sa) noexcept;

std::string spi_hex(uint32_t spi); // "0x00001001"
std::string direction_name(config::direction dir);
std::string cipher_name(const config::sa_config& sa); // "aes128gcm16"
std::string integ_name(const config::sa_config& sa);  // "sha256", "none"
std::string mac_text(const config::mac_address& mac); // "02:00:00:00:00:01"
std::string action_name(config::policy_action action);

nlohmann::json to_json(const sa_snapshot& sa); // never any key
nlohmann::json to_json(const policy_snapshot& policy);
nlohmann::json to_json(const interface_snapshot& interface);
nlohmann::json to_json(const worker_snapshot& worker);
nlohmann::json to_json(const gateway_event& event); // the whole event message, with "version"

} // namespace espresso::dp
