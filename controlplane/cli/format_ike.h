// Text output of the `espresso` CLI for the IKE daemon (espresso-ike's operator socket, docs/cli.md):
// Cisco IOS layouts for `show crypto isakmp sa`, `show crypto ikev2 sa`, `show crypto session`, plus
// `show crypto ike failures` and `debug ike` lines. Pure functions over the daemon's JSON results.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace espresso::cp::cli {

// From list-ike-sas ({"ike-sas": [...]}).
std::string format_isakmp_sa(const nlohmann::json& list_ike_sas_result);
std::string format_ikev2_sa(const nlohmann::json& list_ike_sas_result);
std::string format_crypto_session(const nlohmann::json& list_ike_sas_result);
// From failures ({"failures": [...]}).
std::string format_ike_failures(const nlohmann::json& failures_result);
// From counters: message and RFC 7383 fragment counters (`show crypto ike counters`).
std::string format_ike_counters(const nlohmann::json& counters_result);
// One `debug ike` line from a log entry.
std::string format_log_line(const nlohmann::json& line);

} // namespace espresso::cp::cli
