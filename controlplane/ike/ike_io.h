// Everything an IKE SA does to the outside world goes through these interfaces (ARCHITECTURE.md:
// injected side effects), so two in-process peers can run whole exchanges in unit tests with a mock
// installer, a deterministic rng and a manual clock, and so the daemon can run without a data plane.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "espresso/config/types.h"
#include "espresso/cp/ike_crypto.h"

namespace espresso::cp {

struct endpoint {
    config::ip_address address;
    uint16_t port = 0;
    bool operator==(const endpoint&) const = default;
};
std::string to_string(const endpoint& e);

// Installs and removes Child SAs in the data plane. install() returns "" on success, else the reason.
// Called in the order the RFC's make-before-break needs: inbound before outbound.
class sa_installer {
public:
    virtual ~sa_installer() = default;
    virtual std::string install(const config::sa_config& sa) = 0;
    virtual std::string remove(config::direction dir, uint32_t spi) = 0;

    // A Child SA's inbound and outbound SAs together. On failure `error` says why and `refused`
    // which half; whatever inbound SA of the pair went in is removed again (as after a refused
    // outbound install). An outbound SA whose install failed for another reason than a refusal
    // (connection lost, no acknowledgement) may stay installed, as with install().
    struct pair_result {
        std::string error; // "" = both installed
        config::direction refused = config::direction::inbound;
    };
    // The default installs inbound, then outbound (removing the inbound SA when the outbound one fails).
    // The data plane's installer sends both in one add-sas request (one round trip, both or neither).
    virtual pair_result install_pair(const config::sa_config& in, const config::sa_config& out)
    {
        if (std::string error = install(in); !error.empty()) {
            return {std::move(error), config::direction::inbound};
        }
        if (std::string error = install(out); !error.empty()) {
            remove(config::direction::inbound, in.spi);
            return {std::move(error), config::direction::outbound};
        }
        return {};
    }
    // The peer's NAT mapping changed (RFC 7296 §2.23): outbound SA `spi` now sends to `address` (tunnel
    // mode; family 0 = unchanged) and, when UDP-encapsulated, to UDP port `port` (0 = unchanged).
    virtual std::string update_peer(uint32_t spi, const config::ip_address& address, uint16_t port)
    {
        (void)spi, (void)address, (void)port;
        return "";
    }
    // Trap policy for a configured tunnel's selector pair (RFC 4301 §5.1): traffic that matches it and
    // no SA's protect policy is dropped (counted as no_outbound_sa) and raises an acquire, so it never
    // leaves in the clear while the tunnel is down. Returns the policy's id, or nullopt with `error`
    // set. The default (no data plane) cannot install one.
    virtual std::optional<uint32_t> add_trap(const config::ip_prefix& /*local*/, const config::ip_prefix& /*remote*/,
                                             std::string& error)
    {
        error = "no data plane";
        return std::nullopt;
    }
    virtual std::string remove_trap(uint32_t /*id*/) { return ""; }
    // Packets the data plane sent on outbound SA `spi` so far (its `packets` counter), for NAT-keepalives
    // only when idle (RFC 3948 §4); nullopt when unknown (no data plane, SA gone, not reachable).
    virtual std::optional<uint64_t> outbound_packets(uint32_t /*spi*/) { return std::nullopt; }
};

enum class log_level : uint8_t { error, warning, info, debug };

// Why a negotiation failed, in one sentence with the fix (`espresso show crypto ike failures`).
struct negotiation_failure {
    std::chrono::system_clock::time_point when;
    std::string peer;   // configured peer name, or the address when none matched
    std::string remote; // address:port
    std::string cause;  // one sentence
    std::string fix;    // what to change
};

class ike_io {
public:
    virtual ~ike_io() = default;
    // Sends one IKE message (without the RFC 3948 non-ESP marker; the transport adds it on 4500).
    virtual void send(const endpoint& local, const endpoint& remote, std::span<const uint8_t> message) = 0;
    virtual std::chrono::steady_clock::time_point now() = 0;
    virtual rng& random() = 0;
    virtual sa_installer& installer() = 0;
    virtual void log(log_level level, const std::string& sa_name, const std::string& text) = 0;
    // Whether debug lines are wanted at all; callers skip formatting them otherwise (hot path).
    virtual bool debug_enabled() const { return true; }
    virtual void failure(negotiation_failure failure) = 0;
    // A fresh SPI for an IKE SA we create, in either role and for an IKE SA rekey (RFC 7296 §2.6: ours
    // to choose, never 0). A sharded daemon (ike_shards.h) puts its shard's index in it, so any later
    // message finds its shard from the header alone.
    virtual uint64_t new_ike_spi()
    {
        uint64_t spi = 0;
        do {
            uint8_t b[8];
            random().fill(b);
            spi = 0;
            for (uint8_t x : b) {
                spi = (spi << 8) | x;
            }
        } while (spi == 0);
        return spi;
    }
};

} // namespace espresso::cp
