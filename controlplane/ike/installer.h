// sa_installer implementations: the data plane over its control socket (docs/control-api.md), and a
// null installer that only logs, so espresso-ike runs (and is testable) without espresso-dp.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "espresso/dp/control_client.h"
#include "ike_io.h"

namespace espresso::cp {

// The add-sa arguments for an SA (keys as "0x..." strings; the caller wipes the JSON afterwards).
nlohmann::json sa_to_json(const config::sa_config& sa);

// The same SA object written straight as JSON text, byte for byte sa_to_json(sa).dump(), about ten
// times cheaper (no DOM to build, dump and free). Appends to `out`; the caller wipes it (it holds keys).
void append_sa_json(std::string& out, const config::sa_config& sa);
// add-sas arguments, {"owner":<owner>,"sas":[<append_sa_json of each>]}, as the json DOM would dump
// them. Reserves room for the whole text first, so no reallocation leaves a copy of a key behind.
void append_add_sas_args(std::string& out, std::span<const config::sa_config* const> sas, std::string_view owner);

// The owner tag on every SA and policy espresso-ike installs (docs/control-api.md, "Owners").
inline constexpr std::string_view ike_owner = "espresso-ike";

// What a killed espresso-ike left in the data plane (its Child SAs and trap policies: nobody deleted
// them) is removed once per process, before the first thing this process installs: flush-owner
// "espresso-ike". Every installer of the daemon (the main thread's and one per shard) shares one
// startup_flush and runs it on its first connection, under its mutex, so no install can come first
// whichever thread connects first. SAs and policies without that owner (static ones from the file,
// ones an operator added) are not touched.
class startup_flush {
public:
    using logger = std::function<void(log_level, const std::string&)>;
    explicit startup_flush(logger log) : log_(std::move(log)) {}
    // "" once the flush was done (now or before). An error means the request did not get through
    // (connection lost, timeout): the caller must not install anything and retries later. A refusal
    // by the data plane is logged and not retried (the daemon then runs as it did without owners).
    std::string run(dp::control_client& client);
    bool done() const;

private:
    mutable std::mutex mutex_;
    bool done_ = false;
    logger log_;
};

class dataplane_installer final : public sa_installer {
public:
    // `flush`: shared by every installer of the process (null: no start-up flush, e.g. in tools).
    explicit dataplane_installer(std::string socket_path, std::shared_ptr<startup_flush> flush = nullptr);
    std::string install(const config::sa_config& sa) override;
    // One add-sas request with both SAs, inbound first (espresso-dp applies a batch in order on each
    // worker, and answers only when every worker has both). Falls back to two add-sa requests when the
    // data plane does not know add-sas.
    pair_result install_pair(const config::sa_config& in, const config::sa_config& out) override;
    std::string remove(config::direction dir, uint32_t spi) override;
    std::string update_peer(uint32_t spi, const config::ip_address& address, uint16_t port) override; // update-sa
    // Connects if not connected; "" or the reason.
    std::string connect();
    std::optional<uint32_t> add_trap(const config::ip_prefix& local, const config::ip_prefix& remote,
                                     std::string& error) override;
    std::string remove_trap(uint32_t id) override { return remove_policy(id); }
    // add-policy / delete-policy. Returns the policy's id, or nullopt with `error` set.
    std::optional<uint32_t> add_policy(const nlohmann::json& policy, std::string& error);
    std::string remove_policy(uint32_t id);
    // list-sas for one outbound SA (a cheap lookup in the data plane): its packet counter.
    std::optional<uint64_t> outbound_packets(uint32_t spi) override;

private:
    std::string path_;
    std::shared_ptr<startup_flush> flush_;
    std::optional<dp::control_client> client_;
};

class null_installer final : public sa_installer {
public:
    std::string install(const config::sa_config&) override { return ""; }
    std::string remove(config::direction, uint32_t) override { return ""; }
    std::optional<uint32_t> add_trap(const config::ip_prefix&, const config::ip_prefix&, std::string& error) override
    {
        error = "no data plane (espresso-ike runs without espresso-dp)";
        return std::nullopt;
    }
};

} // namespace espresso::cp
