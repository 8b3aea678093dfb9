// What the management side of espresso-dp (control socket, DPDK telemetry) may ask of the gateway.
//
// Threads: every method is called on the main lcore only (the management thread that also runs the
// control socket). Mutating calls return only after every worker applied the change (ARCHITECTURE.md:
// "SA installed" means usable on every core), or with an error. Snapshot calls read counters that
// workers update concurrently (relaxed atomics): values are consistent per counter, not across them.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "espresso/config/types.h"
#include "espresso/dp/counters.h"
#include "espresso/dp/crypto_core.h"

namespace espresso::dp {

// Drops that happen outside an SA (no SA to charge them to), per worker.
#define ESPRESSO_GATEWAY_DROPS(X)                                                                   \
    X(not_ip, "not IPv4/IPv6/ARP")                                                                 \
    X(other_mac, "frame addressed to another host's MAC (promiscuous port)")                       \
    X(malformed, "malformed packet")                                                               \
    X(truncated, "IP length beyond the bytes received (frame larger than the port's buffers)")      \
    X(no_sa, "ESP/AH for an unknown SPI")                                                          \
    X(no_route, "no route")                                                                        \
    X(no_neighbor, "next hop unresolved")                                                          \
    X(spd_discard, "discarded by policy")                                                          \
    X(no_outbound_sa, "protect policy without an SA (acquire raised)")                             \
    X(unprotected, "cleartext matching an inbound protect policy")                                 \
    X(ttl_exceeded, "TTL/hop limit exceeded")                                                      \
    X(too_big, "too big after encapsulation (ICMP sent)")                                          \
    X(ring_full, "internal ring full")                                                             \
    X(tx_full, "transmit queue full")                                                              \
    X(exception_full, "exception path queue full")                                                \
    X(no_buffer, "a packet the gateway builds (ICMP error, ARP/ND) not sent: no mbuf free")      \
    X(nd_invalid, "invalid Neighbor Discovery message (RFC 4861 §7.1)")                            \
    X(nd_not_ours, "Neighbor Solicitation for an address not ours")                                \
    X(router_discovery, "Router Solicitation/Advertisement/Redirect (the gateway uses static routes)") \
    X(multicast, "multicast the gateway does not take part in (IPv6 groups not joined, IPv4 224/4)") \
    X(martian, "transit from/to IPv4 0/8, 127/8, from 224/3, to 240/4, 255.255.255.255; IPv6 ::, ::1, from ff00::/8") \
    X(link_local, "link-local source or destination in transit (RFC 4291 §2.5.6)")                 \
    X(tap_filtered, "router discovery from the kernel's TAP kept off the wire")                    \
    X(icmp_rate_limited, "ICMP error not sent (rate limit)")                                       \
    X(no_source_address, "ICMP error not sent: the gateway has no address of that family")            \
    X(frag_timeout, "fragment of a datagram not complete within dataplane.reassembly-timeout")      \
    X(frag_table_full, "fragment of a new datagram while dataplane.reassembly-datagrams are in use") \
    X(frag_invalid, "bad fragment: overlap, duplicate, hole, too many, bad length (RFC 5722)")       \
    X(frag_too_big, "fragment of a datagram larger than the gateway reassembles")                   \
    X(frag_no_buffer, "fragment dropped: no buffer to reassemble into")                              \
    X(bad_checksum, "IPv4 header checksum wrong (RFC 1812 §5.2.2)")

enum class gateway_drop : uint8_t {
#define X(id, text) id,
    ESPRESSO_GATEWAY_DROPS(X)
#undef X
        count
};

inline constexpr std::array<std::string_view, static_cast<size_t>(gateway_drop::count)> gateway_drop_names = {
#define X(id, text) std::string_view{#id},
    ESPRESSO_GATEWAY_DROPS(X)
#undef X
};

// The gateway's own traffic through the TAP exception path (main lcore), RFC 4301 host-to-host.
#define ESPRESSO_LOCAL_COUNTERS(X)                                                              \
    X(out_protected, "kernel packets encrypted by a protect policy (tunnel or transport SA)")   \
    X(out_bypass, "kernel packets sent in clear by a bypass policy or no policy")               \
    X(out_implicit_bypass,                                                                      \
      "kernel packets sent in clear by the implicit bypass (IKE ports, ND/MLD, ICMP errors)")   \
    X(in_decrypted, "decrypted packets for the gateway handed to the kernel")                   \
    X(in_clear, "cleartext packets for the gateway handed to the kernel (bypass or no policy)") \
    X(in_implicit_bypass, "cleartext for the gateway admitted by the implicit bypass")

enum class local_counter : uint8_t {
#define X(id, text) id,
    ESPRESSO_LOCAL_COUNTERS(X)
#undef X
        count
};

inline constexpr std::array<std::string_view, static_cast<size_t>(local_counter::count)> local_counter_names =
    {
#define X(id, text) std::string_view{#id},
        ESPRESSO_LOCAL_COUNTERS(X)
#undef X
};

struct sa_snapshot {
    config::sa_config config; // keys wiped
    std::array<uint64_t, static_cast<size_t>(sa_counter::count)> counters{};
    std::array<uint64_t, static_cast<size_t>(drop_reason::count)> drops{};
    uint64_t sequence = 0;     // outbound: last sequence number sent; inbound: highest received
    uint64_t life_bytes = 0;   // for the remaining-lifetime display
    uint64_t life_packets = 0;
    uint16_t tfc_pad = 0;      // outbound: the TFC padding applied (tfc-pad, lowered to fit the MTU)
    std::string interface;     // the interface the SA's traffic leaves/arrives on ("" if unknown)
};

struct policy_snapshot {
    uint32_t id = 0;
    config::policy_config config;
    uint64_t matches = 0;
    bool implied = false; // derived from an SA's selectors rather than the `policies:` list
};

struct interface_snapshot {
    std::string name;
    std::string device;
    uint16_t port = 0;
    config::mac_address mac{};
    config::ip_address address;
    uint8_t prefix_length = 0;
    config::ip_address address6; // family 0 when the interface has no IPv6 address
    uint8_t prefix_length6 = 0;
    uint16_t mtu = 0;
    bool link_up = false;
    std::string tap; // kernel-side exception interface
    uint64_t rx_packets = 0, rx_bytes = 0, tx_packets = 0, tx_bytes = 0;
    uint64_t rx_missed = 0, rx_errors = 0, tx_errors = 0;
};

struct worker_snapshot {
    unsigned lcore = 0;
    uint64_t rx_packets = 0;
    uint64_t tx_packets = 0;
    uint64_t to_exception = 0; // handed to the main lcore (ARP, traffic to the gateway)
    uint64_t fragments = 0;    // IP fragments to the gateway taken for reassembly
    uint64_t reassembled = 0;  // datagrams reassembled from them
    uint64_t handed_off = 0;   // inbound ESP/AH passed to the SA's owner worker (SPI % workers)
    uint64_t handed_in = 0;    // packets received from other workers through the handoff ring
    double busy_percent = 0;   // share of recent polls that found packets
    std::array<uint64_t, static_cast<size_t>(gateway_drop::count)> drops{};
    bool main = false; // the main lcore's row: it also carries the gateway's own traffic counters
    std::array<uint64_t, static_cast<size_t>(local_counter::count)> local{};
};

// One neighbor cache entry (ARP or NDP) for `show arp` / `show ipv6 neighbors`.
struct neighbor_snapshot {
    std::string interface;
    config::ip_address address;
    config::mac_address mac{};
    bool is_static = false;
    std::string state;       // "reachable" | "stale" | "probe" | "permanent" (static)
    double age_seconds = 0;  // since the last confirmation (0 for static entries)
};

struct neighbor_summary {
    std::vector<neighbor_snapshot> entries;
    uint32_t capacity = 0;
    uint32_t reachable_time = 0; // seconds
    uint64_t probes_sent = 0, unreachable = 0, collected = 0, cleared = 0, table_full = 0, evicted = 0, waited = 0;
};

struct gateway_event {
    enum class kind : uint8_t { soft_expire, hard_expire, seq_exhausted, acquire } what;
    config::direction dir = config::direction::outbound;
    uint32_t spi = 0;
    // acquire: the packet's addresses and protocol, to start IKE (later issue)
    config::ip_address source, destination;
    uint8_t protocol = 0;
};

// What a reload (control op `reload`) found and did, per runtime section: one line per item
// (config_diff.h's describe(); never key material).
struct reload_section {
    std::vector<std::string> added, removed, changed, unchanged;
};
struct reload_report {
    std::string file;
    reload_section routes, neighbors, policies, sas;
    // Start-only settings that differ ("dataplane.workers: 1 -> 2"): not applied; restart to apply.
    std::vector<std::string> restart_needed;
    bool applied = false; // false: dry run, or nothing needed applying
    // Set once the checks passed and changes began: an error after that may have left part applied.
    bool apply_started = false;
};

class gateway_api {
public:
    virtual ~gateway_api() = default;

    // Returns "" on success or an operator-readable error.
    virtual std::string add_sa(const config::sa_config& sa) = 0;
    virtual std::string delete_sa(config::direction dir, uint32_t spi) = 0;
    virtual std::string add_policy(const config::policy_config& policy, uint32_t& id) = 0;
    virtual std::string delete_policy(uint32_t id) = 0;
    virtual std::string flush() = 0; // all SAs and explicit policies; "" or what went wrong

    // flush-owner: removes every SA and explicit policy whose owner is `owner` (what a crashed
    // espresso-ike left behind), nothing else. Policies first, then the SAs in one delete_sas batch.
    // "" or the error; `sas` and `policies` count what was removed (also on a partial failure).
    struct flushed {
        size_t sas = 0;
        size_t policies = 0;
    };
    virtual std::string flush_owner(const std::string& owner, flushed& removed)
    {
        for (const auto& p : policies()) {
            if (!p.implied && p.config.owner == owner) {
                if (std::string error = delete_policy(p.id); !error.empty()) {
                    return error;
                }
                ++removed.policies;
            }
        }
        std::vector<sa_id> which;
        for (const auto& sa : sas()) {
            if (sa.config.owner == owner) {
                which.emplace_back(sa.config.dir, sa.config.spi);
            }
        }
        if (which.empty()) {
            return {};
        }
        if (std::string error = delete_sas(which); !error.empty()) {
            return error;
        }
        removed.sas = which.size();
        return {};
    }

    // Batches (control ops add-sas / delete-sas), all or nothing: every item is checked first (an
    // error names it as "sas[i]: ..."), and only then is anything changed. The gateway installs a
    // batch with one acknowledgement round per worker and at most one SPD compilation. These
    // defaults apply the items one by one and undo the batch's earlier items on a refusal; they are
    // for other implementations of this interface (test fakes).
    using sa_id = std::pair<config::direction, uint32_t>;
    virtual std::string add_sas(std::span<const config::sa_config> batch)
    {
        for (size_t i = 0; i < batch.size(); ++i) {
            if (std::string error = add_sa(batch[i]); !error.empty()) {
                for (size_t k = 0; k < i; ++k) {
                    delete_sa(batch[k].dir, batch[k].spi);
                }
                return "sas[" + std::to_string(i) + "]: " + error;
            }
        }
        return {};
    }
    virtual std::string delete_sas(std::span<const sa_id> which)
    {
        for (size_t i = 0; i < which.size(); ++i) {
            if (std::string error = delete_sa(which[i].first, which[i].second); !error.empty()) {
                return "sas[" + std::to_string(i) + "]: " + error; // (the default cannot undo deletes)
            }
        }
        return {};
    }

    virtual std::vector<sa_snapshot> sas() const = 0;
    // One SA (list-sas with both filters): the gateway looks it up instead of copying every SA, so that
    // espresso-ike can poll one SA's counters cheaply (NAT-keepalives only when idle).
    virtual std::optional<sa_snapshot> sa(config::direction dir, uint32_t spi) const
    {
        for (auto& s : sas()) {
            if (s.config.dir == dir && s.config.spi == spi) {
                return s;
            }
        }
        return std::nullopt;
    }
    virtual std::vector<policy_snapshot> policies() const = 0;
    virtual std::vector<interface_snapshot> interfaces() const = 0;
    virtual std::vector<worker_snapshot> workers() const = 0;
    virtual void clear_counters() = 0;
    // The neighbor caches (ARP and NDP) with their NUD state; clear removes every learned entry.
    virtual neighbor_summary neighbors() const { return {}; }
    // The outbound SA `spi` sends to a new peer address and/or UDP destination port (a NAT mapping
    // changed, RFC 7296 §2.23): sequence numbers continue (with a gap), counters are kept. "" or why not.
    virtual std::string update_sa_peer(uint32_t spi, const config::ip_address& destination,
                                       std::optional<uint16_t> udp_port)
    {
        (void)spi, (void)destination, (void)udp_port;
        return "not supported";
    }
    virtual unsigned clear_neighbors(uint8_t family) { (void)family; return 0; } // 4, 6 or 0: both
    // The file the gateway was started with (absolute), which a reload re-reads by default.
    virtual std::string config_file() const { return {}; }
    // Applies `next` (a whole file, already validated by the loader) to the running gateway: routes,
    // static neighbors, the file's explicit policies and its static SAs; SAs and policies installed
    // through this socket (espresso-ike's) are not touched. Everything is checked before anything
    // changes: "" (report filled in) or why nothing was changed. `dry_run`: check and report only.
    // Consumes `next`'s keys (wiped on return, or kept as the running configuration's).
    virtual std::string reload(config::gateway_config& next, bool dry_run, reload_report& report)
    {
        (void)next, (void)dry_run, (void)report;
        return "not supported";
    }
};

} // namespace espresso::dp
