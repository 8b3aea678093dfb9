// Text output of the `espresso` CLI, from the JSON results of the control socket
// (docs/control-api.md). Pure functions, so tests can check the layout line by line.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace espresso::cp::cli {

// `show crypto ipsec sa` in the layout of Cisco IOS, from the result of list-sas ({"sas": [...]}).
// An outbound and an inbound SA whose selectors and tunnel endpoints mirror each other are shown
// as one crypto session; any other SA gets a block of its own.
std::string format_crypto_ipsec_sa(const nlohmann::json& list_sas_result);

// What only espresso-ike knows about an SA, added to each SA of a list-sas result in place: "keying":
// "ike" (origin "ike:PEER/TUNNEL") or "static"; for IKE SAs "ike": {"peer", "tunnel", "state",
// "rekey-in-seconds", "rekey-time-seconds"} from the Child SA of `list_ike_sas_result` with that SPI
// (inbound: its spi-in, outbound: its spi-out), or null when there is none (or no IKE daemon answered:
// nullptr). format_crypto_ipsec_sa shows the time left from it.
void add_ike_lifetimes(nlohmann::json& list_sas_result, const nlohmann::json* list_ike_sas_result);

// `show interfaces`, from the result of show-interfaces ({"interfaces": [...]}).
std::string format_interfaces(const nlohmann::json& show_interfaces_result);

// `show arp` / `show ipv6 neighbors`, from the result of show-neighbors, in the column layout of
// Cisco IOS `show ip arp` / `show ipv6 neighbors` (Age in minutes for ARP, seconds for IPv6 as IOS does).
std::string format_arp(const nlohmann::json& show_neighbors_result);
std::string format_ipv6_neighbors(const nlohmann::json& show_neighbors_result);

// `show dataplane`, from the result of show-dataplane ({"workers": [...]}).
std::string format_dataplane(const nlohmann::json& show_dataplane_result);

// "192.168.1.0/24" -> "192.168.1.0/255.255.255.0"; IPv6 prefixes stay "2001:db8::/32".
std::string address_and_mask(const std::string& prefix);

} // namespace espresso::cp::cli
