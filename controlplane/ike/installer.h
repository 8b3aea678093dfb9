// sa_installer implementations: the data plane over its control socket (docs/control-api.md), and a
// null installer that only logs, so espresso-ike runs (and is testable) without espresso-dp.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "espresso/dp/control_client.h"
#include "ike_io.h"

namespace espresso::cp {

// The add-sa arguments for an SA (keys as "0x..." strings; the caller wipes the JSON afterwards).
nlohmann::json sa_to_json(const config::sa_config& sa);

class dataplane_installer final : public sa_installer {
public:
    explicit dataplane_installer(std::string socket_path);
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

private:
    std::string path_;
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
