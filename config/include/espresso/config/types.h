// Plain, validated configuration structs. No yaml-cpp here: the data plane and the control plane
// include this header without linking the parser.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "espresso/config/algorithms.h"

namespace espresso::config {

struct ip_address {
    uint8_t family = 0;              // 4 or 6; 0 = unset
    std::array<uint8_t, 16> bytes{}; // network order; IPv4 uses the first 4 bytes

    bool is_v4() const noexcept { return family == 4; }
    bool is_v6() const noexcept { return family == 6; }
    bool operator==(const ip_address&) const = default;
};

struct ip_prefix {
    ip_address address;
    uint8_t length = 0;
    bool operator==(const ip_prefix&) const = default;
};

// "192.0.2.1", "2001:db8::1" -> address; nullopt on anything else.
std::optional<ip_address> parse_address(std::string_view text);
// "192.0.2.0/24", "2001:db8::/32", or a bare address (full-length prefix). Host bits must be zero.
std::optional<ip_prefix> parse_prefix(std::string_view text);
std::string to_string(const ip_address& address);
std::string to_string(const ip_prefix& prefix);

enum class direction : uint8_t { outbound, inbound };
enum class ipsec_protocol : uint8_t { esp, ah };
enum class ipsec_mode : uint8_t { tunnel, transport };

// Tunnel-mode outer header construction (RFC 4301 §5.1.2, RFC 6040).
enum class df_mode : uint8_t { copy, set, clear };
enum class dscp_mode : uint8_t { copy, set };

struct udp_encapsulation {
    uint16_t source_port = 4500;
    uint16_t destination_port = 4500;
};

struct lifetime_limits {
    uint64_t bytes = 0;   // hard limit, 0 = unlimited
    uint64_t packets = 0; // hard limit, 0 = unlimited
    // Soft limits raise an event (rekey) before the hard limit stops the SA. 0 = derived from the
    // hard limit (90 %), or unlimited when the hard limit is.
    uint64_t soft_bytes = 0;
    uint64_t soft_packets = 0;
};

inline constexpr uint32_t max_replay_window = 4096;
inline constexpr size_t max_cipher_key_bytes = 32 + 4; // AES-256 + salt
inline constexpr size_t max_integ_key_bytes = 64;      // HMAC-SHA-512

// One security association, as the operator (static SA) or the control plane (IKE) describes it.
struct sa_config {
    uint32_t spi = 0;
    direction dir = direction::outbound;
    ipsec_protocol protocol = ipsec_protocol::esp;
    ipsec_mode mode = ipsec_mode::tunnel;
    ip_address source;      // outer source (tunnel mode); ignored in transport mode
    ip_address destination; // outer destination (tunnel mode)

    cipher_alg cipher = cipher_alg::null;
    uint8_t cipher_key_bytes = 0; // AES key size (16/24/32); 0 for null
    std::array<uint8_t, max_cipher_key_bytes> cipher_key{}; // key || salt
    uint8_t cipher_key_length = 0;                          // bytes used in cipher_key (with salt)
    integ_alg integ = integ_alg::none;
    std::array<uint8_t, max_integ_key_bytes> integ_key{};
    uint8_t integ_key_length = 0;

    bool esn = false;
    uint32_t replay_window = 128; // 0 = anti-replay off
    std::optional<udp_encapsulation> udp;
    ip_prefix local;  // selectors: protected traffic, local side
    ip_prefix remote; // selectors: protected traffic, remote side
    lifetime_limits lifetime;

    // Tunnel outer header options.
    df_mode df = df_mode::copy;
    dscp_mode dscp = dscp_mode::copy;
    uint8_t dscp_value = 0; // when dscp == set
    uint8_t ttl = 64;       // outer TTL / hop limit
    // RFC 4303 §2.7 traffic flow confidentiality: pad inner packets up to this many bytes (0 = off).
    uint16_t tfc_pad_to = 0;
    // First sequence number minus one; lets tests start an SA near 2^32 or 2^64. Not for operators.
    uint64_t initial_sequence = 0;

    // Where in the file this SA was defined, for messages ("sas.yaml:12:5").
    std::string origin;
    // Who installed it over espresso-dp's control socket ("espresso-ike"), so that a restarted owner can
    // remove what it left behind (flush-owner, docs/control-api.md). Empty: static, or installed without.
    std::string owner;
};

// Key material must not outlive its use: wipes both key arrays (explicit_bzero cannot be elided).
void wipe_keys(sa_config& sa) noexcept;

using mac_address = std::array<uint8_t, 6>;

// `dataplane:` section (espresso-dp process settings).
enum class idle_mode : uint8_t { adaptive, poll };
struct dataplane_config {
    uint32_t workers = 1;         // worker lcores; the main lcore manages
    std::vector<std::string> eal; // extra EAL arguments, passed through verbatim
    bool hugepages = true;        // false = --no-huge with a small pool
    idle_mode idle = idle_mode::adaptive;
    std::string control_socket = "/run/espresso/espresso.sock";
    // Neighbor unreachability detection (ARP and NDP): seconds a learned entry stays reachable
    // after a confirmation (RFC 4861 REACHABLE_TIME), and how many entries the table holds.
    uint32_t neighbor_reachable_time = 30;
    uint32_t neighbor_table_size = 4096;
    // IP reassembly of fragments addressed to the gateway, per worker (dataplane/src/reassembly.h).
    uint32_t reassembly_datagrams = 1024;  // datagrams being reassembled at once
    uint32_t reassembly_timeout_ms = 3000; // a datagram not complete by then is dropped
    // SAs (inbound and outbound together) the data plane holds at once: sizes each worker's SAD and
    // host-policy table (and the main lcore's copy) up front, so a worker never fails to apply an add.
    uint32_t max_sas = 262144;
};

// One address of the gateway on a link, with the link's subnet length.
struct interface_address {
    ip_address address;
    uint8_t prefix_length = 0;
    bool operator==(const interface_address&) const = default;
};

// `interfaces:` one DPDK port each.
struct interface_config {
    std::string name;            // operator's name ("outside")
    std::string device;          // PCI address or a vdev spec ("net_af_packet0,iface=wan0")
    ip_address address;          // the gateway's first address on this link (addresses[0])
    uint8_t prefix_length = 0;   // the link's subnet length for `address`
    // Every address on the link, in file order: at most one IPv4 and one IPv6 (`address:` may be a
    // list). Empty when a program filled in only `address`/`prefix_length`: use addresses_of().
    std::vector<interface_address> addresses;
    std::optional<mac_address> mac; // override the port's MAC address
    uint16_t mtu = 1500;
    std::string origin;
};

// `routes:` static routes; `via` unset = directly connected through `interface`.
struct route_config {
    ip_prefix destination;
    ip_address via;
    std::string interface; // optional when `via` is on a connected subnet
    std::string origin;
};

// `neighbors:` static ARP entries.
struct neighbor_config {
    ip_address address;
    mac_address mac{};
    std::string interface;
    std::string origin;
};

// `policies:` explicit SPD entries (RFC 4301 §4.4.1) besides those the SAs imply.
// trap: protect with an SA that IKE negotiates on demand. Until an SA's implied (higher-priority)
// policy covers the traffic, matching packets raise an acquire event and are dropped (RFC 4301 §5.1).
enum class policy_action : uint8_t { protect, bypass, discard, trap };
const char* to_string(policy_action action) noexcept; // the file's word: "protect", "bypass", ...
struct policy_config {
    ip_prefix local;
    ip_prefix remote;
    uint8_t protocol = 0; // 0 = any
    uint16_t local_port_min = 0, local_port_max = 65535;
    uint16_t remote_port_min = 0, remote_port_max = 65535;
    policy_action action = policy_action::bypass;
    uint32_t priority = 0; // lower wins; equal priority: order in the file
    uint32_t spi = 0;      // protect: the outbound SA to use
    std::string origin;
    std::string owner; // as sa_config::owner
};
// Both select exactly the same packets (prefixes, protocol, port ranges): one of them never applies.
bool same_traffic(const policy_config& a, const policy_config& b) noexcept;

} // namespace espresso::config

// The `ike:` section's structs use the address types above; ike.h explains the include order.
#include "espresso/config/ike.h"

namespace espresso::config {

struct gateway_config {
    std::string file;
    std::vector<sa_config> security_associations;
    dataplane_config dataplane;
    std::vector<interface_config> interfaces;
    std::vector<route_config> routes;
    std::vector<neighbor_config> neighbors;
    std::vector<policy_config> policies;
    ike_config ike; // read by the IKEv2 daemon; the data plane ignores it
};

// --- Helpers for the interface, route and neighbor checks ---------------------------------------

// "02:00:00:00:00:01": six bytes, two hex digits each, separated by ':' (or '-'); nullopt otherwise.
std::optional<mac_address> parse_mac(std::string_view text);
std::string to_string(const mac_address& mac); // "02:00:00:00:00:01", lowercase

// The prefix of `length` bits holding `address` (host bits cleared): network_of(198.51.100.1, 24)
// is 198.51.100.0/24. `length` is clamped to the family's width.
ip_prefix network_of(const ip_address& address, uint8_t length);
// Same family and the first prefix.length bits equal.
bool prefix_contains(const ip_prefix& prefix, const ip_address& address) noexcept;
// Every address of `inner` lies in `outer`.
bool prefix_contains(const ip_prefix& outer, const ip_prefix& inner) noexcept;
// Some address lies in both (same family, and one contains the other).
bool prefixes_overlap(const ip_prefix& a, const ip_prefix& b) noexcept;
// The link's subnet: network_of(interface.address, interface.prefix_length).
ip_prefix subnet_of(const interface_config& interface);
// Every address of the interface (`addresses`, or just `address` when that list is empty).
std::vector<interface_address> addresses_of(const interface_config& interface);
// The interface's address of `family` (4 or 6), if it has one.
std::optional<interface_address> address_of(const interface_config& interface, uint8_t family);
// Every connected subnet of the interface, one per address.
std::vector<ip_prefix> subnets_of(const interface_config& interface);
// Is `address` one of the interface's own addresses?
bool has_address(const interface_config& interface, const ip_address& address);

} // namespace espresso::config
