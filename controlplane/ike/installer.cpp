#include "installer.h"

#include <openssl/crypto.h>

#include <charconv>
#include <cstdio>
#include <utility>

namespace espresso::cp {
namespace {

std::string hex(const uint8_t* data, size_t size)
{
    static const char digits[] = "0123456789abcdef";
    std::string s = "0x";
    for (size_t i = 0; i < size; ++i) {
        s += digits[data[i] >> 4];
        s += digits[data[i] & 15];
    }
    return s;
}

void wipe_string(std::string& s)
{
    OPENSSL_cleanse(s.data(), s.size());
}

void append_hex(std::string& out, const uint8_t* data, size_t size)
{
    static const char digits[] = "0123456789abcdef";
    out += "\"0x";
    for (size_t i = 0; i < size; ++i) {
        out += digits[data[i] >> 4];
        out += digits[data[i] & 15];
    }
    out += '"';
}

// Every string written here is an algorithm name, a direction/mode word, or an address from
// inet_ntop: printable ASCII without '"' or '\\', so it needs no escaping.
void append_string(std::string& out, std::string_view key, std::string_view value)
{
    out += '"';
    out += key;
    out += "\":\"";
    out += value;
    out += '"';
}

void append_number(std::string& out, std::string_view key, uint64_t value)
{
    out += '"';
    out += key;
    out += "\":";
    // std::to_chars, not snprintf: printf's format parsing was a third of this writer's time.
    char digits[24];
    const auto end = std::to_chars(digits, digits + sizeof(digits), value).ptr;
    out.append(digits, static_cast<size_t>(end - digits));
}

// An upper bound of one SA object's text, so that the caller reserves once and no reallocation leaves
// a copy of a key behind: ~260 bytes of names and punctuation, 2 IPv6 addresses (39 each), 2 IPv6
// prefixes (43 each), the keys in hex (2 + 72 and 2 + 128), 4 lifetimes and 2 ports of up to 20 digits.
constexpr size_t max_sa_text = 1024;

} // namespace

void append_sa_json(std::string& out, const config::sa_config& sa)
{
    // Keys in sorted order: byte for byte what sa_to_json(sa).dump() gives (a json object is a
    // std::map); tests/control/installer_test.cpp compares the two.
    char spi[11] = {'0', 'x'}; // "0x%08x", as sa_to_json writes it
    for (int i = 0; i < 8; ++i) {
        spi[2 + i] = "0123456789abcdef"[(sa.spi >> (28 - 4 * i)) & 15];
    }
    spi[10] = '\0';
    out += '{';
    append_string(out, "destination", config::to_string(sa.destination));
    out += ',';
    append_string(out, "direction", sa.dir == config::direction::inbound ? "inbound" : "outbound");
    out += ',';
    append_string(out, "encryption", config::info(sa.cipher, sa.cipher_key_bytes).name);
    if (sa.esn) {
        out += R"(,"esn":true)";
    }
    if (sa.integ != config::integ_alg::none) {
        out += ',';
        append_string(out, "integrity", config::info(sa.integ).name);
        out += R"(,"integrity-key":)";
        append_hex(out, sa.integ_key.data(), sa.integ_key_length);
    }
    out += R"(,"key":)";
    append_hex(out, sa.cipher_key.data(), sa.cipher_key_length);
    // The lifetime limits that are set (0 = none, the default), as sa_to_json leaves the others out.
    const std::pair<std::string_view, uint64_t> limits[] = {{"bytes", sa.lifetime.bytes},
                                                           {"packets", sa.lifetime.packets},
                                                           {"soft-bytes", sa.lifetime.soft_bytes},
                                                           {"soft-packets", sa.lifetime.soft_packets}};
    bool first_limit = true;
    for (const auto& [name, value] : limits) {
        if (value != 0) {
            out += first_limit ? R"(,"lifetime":{)" : ",";
            append_number(out, name, value);
            first_limit = false;
        }
    }
    if (!first_limit) {
        out += '}';
    }
    out += ',';
    append_string(out, "mode", sa.mode == config::ipsec_mode::transport ? "transport" : "tunnel");
    out += ',';
    append_string(out, "protocol", sa.protocol == config::ipsec_protocol::ah ? "ah" : "esp");
    if (sa.dir == config::direction::inbound) {
        out += ',';
        append_number(out, "replay-window", sa.replay_window);
    }
    out += R"(,"selectors":{)";
    append_string(out, "local", config::to_string(sa.local));
    out += ',';
    append_string(out, "remote", config::to_string(sa.remote));
    out += "},";
    append_string(out, "source", config::to_string(sa.source));
    out += ',';
    append_string(out, "spi", spi);
    if (sa.udp) {
        out += R"(,"udp-encapsulation":{)";
        append_number(out, "destination-port", sa.udp->destination_port);
        out += ',';
        append_number(out, "source-port", sa.udp->source_port);
        out += '}';
    }
    out += '}';
}

void append_add_sas_args(std::string& out, std::span<const config::sa_config* const> sas, std::string_view owner)
{
    out.reserve(out.size() + 64 + owner.size() + sas.size() * max_sa_text);
    out += R"({"owner":")";
    out += owner;
    out += R"(","sas":[)";
    for (size_t i = 0; i < sas.size(); ++i) {
        if (i != 0) {
            out += ',';
        }
        append_sa_json(out, *sas[i]);
    }
    out += "]}";
}

nlohmann::json sa_to_json(const config::sa_config& sa)
{
    char spi[16];
    std::snprintf(spi, sizeof(spi), "0x%08x", sa.spi);
    nlohmann::json j = {
        {"spi", spi},
        {"direction", sa.dir == config::direction::inbound ? "inbound" : "outbound"},
        {"protocol", sa.protocol == config::ipsec_protocol::ah ? "ah" : "esp"},
        {"mode", sa.mode == config::ipsec_mode::transport ? "transport" : "tunnel"},
        {"source", config::to_string(sa.source)},
        {"destination", config::to_string(sa.destination)},
        {"encryption", std::string(config::info(sa.cipher, sa.cipher_key_bytes).name)},
        {"key", hex(sa.cipher_key.data(), sa.cipher_key_length)},
        {"selectors", {{"local", config::to_string(sa.local)}, {"remote", config::to_string(sa.remote)}}},
    };
    // What equals the data plane's default is left out (docs/control-api.md: no integrity, esn false,
    // a lifetime limit of 0 = none): the data plane's validation costs per field present, and for an
    // AES-GCM Child SA without lifetime limits these were 7 of 19 fields (perf/RESULTS.md, session 6).
    if (sa.integ != config::integ_alg::none) {
        j["integrity"] = std::string(config::info(sa.integ).name);
        j["integrity-key"] = hex(sa.integ_key.data(), sa.integ_key_length);
    }
    if (sa.esn) {
        j["esn"] = true;
    }
    nlohmann::json lifetime = nlohmann::json::object();
    for (const auto& [name, value] : {std::pair<const char*, uint64_t>{"bytes", sa.lifetime.bytes},
                                      {"packets", sa.lifetime.packets},
                                      {"soft-bytes", sa.lifetime.soft_bytes},
                                      {"soft-packets", sa.lifetime.soft_packets}}) {
        if (value != 0) {
            lifetime[name] = value;
        }
    }
    if (!lifetime.empty()) {
        j["lifetime"] = std::move(lifetime);
    }
    if (sa.dir == config::direction::inbound) {
        j["replay-window"] = sa.replay_window;
    }
    if (sa.udp) {
        j["udp-encapsulation"] = {{"source-port", sa.udp->source_port}, {"destination-port", sa.udp->destination_port}};
    }
    return j;
}

bool startup_flush::done() const
{
    std::lock_guard lock(mutex_);
    return done_;
}

std::string startup_flush::run(dp::control_client& client)
{
    std::lock_guard lock(mutex_);
    if (done_) {
        return "";
    }
    nlohmann::json reply;
    try {
        // Generous: removing many SAs waits for every worker's acknowledgement.
        reply = client.request("flush-owner", {{"owner", std::string(ike_owner)}}, std::chrono::seconds(30));
    } catch (const dp::control_client_error& e) {
        return std::string("flush-owner ") + std::string(ike_owner) + ": " + e.what();
    }
    done_ = true;
    if (const std::string error = dp::reply_error(reply); !error.empty()) {
        log_(log_level::error, "could not remove the SAs and policies an earlier espresso-ike left in the data plane "
                               "(flush-owner): " + error + "; they stay (list-sas shows them with owner " +
                                   std::string(ike_owner) + ")");
        return "";
    }
    const auto& result = reply["result"];
    const auto sas = result.value("sas", uint64_t{0});
    const auto policies = result.value("policies", uint64_t{0});
    log_(sas + policies > 0 ? log_level::warning : log_level::info,
         "removed " + std::to_string(sas) + " SA(s) and " + std::to_string(policies) +
             " policy(ies) an earlier espresso-ike left in the data plane (flush-owner " + std::string(ike_owner) + ")");
    return "";
}

dataplane_installer::dataplane_installer(std::string socket_path, std::shared_ptr<startup_flush> flush)
    : path_(std::move(socket_path)), flush_(std::move(flush))
{
}

std::string dataplane_installer::connect()
{
    if (client_) {
        return "";
    }
    try {
        client_.emplace(dp::control_client::connect(path_));
    } catch (const dp::control_client_error& e) {
        return e.what();
    }
    if (flush_) {
        // Before anything of ours goes in: what a killed predecessor left (startup_flush).
        if (std::string error = flush_->run(*client_); !error.empty()) {
            client_.reset();
            return error;
        }
    }
    return "";
}

std::optional<uint64_t> dataplane_installer::outbound_packets(uint32_t spi)
{
    if (!connect().empty()) {
        return std::nullopt;
    }
    try {
        auto reply = client_->request("list-sas", {{"direction", "outbound"}, {"spi", spi}});
        if (!reply.value("ok", false)) {
            return std::nullopt;
        }
        const auto& sas = reply["result"]["sas"];
        if (!sas.is_array() || sas.size() != 1 || !sas[0].contains("counters")) {
            return std::nullopt;
        }
        const auto& packets = sas[0]["counters"]["packets"];
        return packets.is_number_unsigned() ? std::optional<uint64_t>(packets.get<uint64_t>()) : std::nullopt;
    } catch (const dp::control_client_error&) {
        client_.reset();
    } catch (const nlohmann::json::exception&) {
    }
    return std::nullopt;
}

std::string dataplane_installer::install(const config::sa_config& sa)
{
    if (auto err = connect(); !err.empty()) {
        return err;
    }
    nlohmann::json args = {{"sa", sa_to_json(sa)}, {"owner", std::string(ike_owner)}};
    std::string error;
    try {
        auto reply = client_->request("add-sa", args);
        if (!reply.value("ok", false)) {
            error = reply.value("error", std::string("refused"));
        }
    } catch (const dp::control_client_error& e) {
        client_.reset();
        error = e.what();
    }
    // Best effort: the JSON library holds the key strings; overwrite them before they are freed.
    for (const char* k : {"key", "integrity-key"}) {
        if (args["sa"].contains(k)) {
            wipe_string(args["sa"][k].get_ref<std::string&>());
        }
    }
    return error;
}

sa_installer::pair_result dataplane_installer::install_pair(const config::sa_config& in,
                                                            const config::sa_config& out)
{
    if (auto err = connect(); !err.empty()) {
        return {err, config::direction::inbound};
    }
    // Written as text (append_add_sas_args), not built as a json DOM and dumped: the DOM cost ~20 us
    // of CPU per SA (perf/RESULTS.md, "Session 6"), more than the data plane spends installing it.
    struct wiped_text {
        std::string text;
        ~wiped_text() { wipe_string(text); }
    } args;
    const config::sa_config* pair[] = {&in, &out};
    append_add_sas_args(args.text, pair, ike_owner);
    pair_result result;
    bool unknown_op = false;
    bool maybe_installed = false; // failed after the data plane may have applied part of the batch
    try {
        auto reply = client_->request_encoded("add-sas", args.text);
        if (!reply.value("ok", false)) {
            std::string error = reply.value("error", std::string("refused"));
            // "sas[i]: why" or "sas[i].field: why": item i was refused and nothing was installed
            // (docs/control-api.md, add-sas is all or nothing). The "sas[i]: " prefix is dropped:
            // the caller names the SA.
            if (error.starts_with("sas[0]") || error.starts_with("sas[1]")) {
                result.refused = error[4] == '0' ? config::direction::inbound : config::direction::outbound;
                result.error =
                    error.starts_with("sas[0]: ") || error.starts_with("sas[1]: ") ? error.substr(8) : error;
            } else if (error.starts_with("op: unknown operation")) {
                unknown_op = true; // an espresso-dp older than add-sas
            } else {
                // Not a refusal of an item (e.g. no acknowledgement from a worker): what was queued
                // may be installed. Take the inbound SA out again, as after a failed outbound add-sa.
                result = {std::move(error), config::direction::outbound};
                maybe_installed = true;
            }
        }
    } catch (const dp::control_client_error& e) {
        client_.reset();
        result = {e.what(), config::direction::outbound}; // the request may or may not have been applied
        maybe_installed = true;
    }
    if (unknown_op) {
        return sa_installer::install_pair(in, out);
    }
    if (maybe_installed) {
        remove(config::direction::inbound, in.spi); // reconnects and retries once; "no such SA" is fine
    }
    return result;
}

std::string dataplane_installer::update_peer(uint32_t spi, const config::ip_address& address, uint16_t port)
{
    if (auto err = connect(); !err.empty()) {
        return err;
    }
    nlohmann::json peer = nlohmann::json::object();
    if (address.family != 0) {
        peer["address"] = config::to_string(address);
    }
    if (port != 0) {
        peer["port"] = port;
    }
    try {
        auto reply = client_->request("update-sa", {{"spi", spi}, {"peer", peer}});
        if (!reply.value("ok", false)) {
            return reply.value("error", std::string("refused"));
        }
    } catch (const dp::control_client_error& e) {
        client_.reset();
        return e.what();
    }
    return "";
}

std::optional<uint32_t> dataplane_installer::add_policy(const nlohmann::json& policy, std::string& error)
{
    if (error = connect(); !error.empty()) {
        return std::nullopt;
    }
    try {
        auto reply = client_->request("add-policy", {{"policy", policy}, {"owner", std::string(ike_owner)}});
        if (!reply.value("ok", false)) {
            error = reply.value("error", std::string("refused"));
            return std::nullopt;
        }
        return reply["result"].value("id", 0u);
    } catch (const dp::control_client_error& e) {
        client_.reset();
        error = e.what();
    }
    return std::nullopt;
}

std::optional<uint32_t> dataplane_installer::add_trap(const config::ip_prefix& local, const config::ip_prefix& remote,
                                                      std::string& error)
{
    // Priority 2000: the protect policies the SAs imply (1000) win while the tunnel is up; the trap
    // catches the traffic again when it is down (RFC 4301 §5.1 acquire).
    return add_policy({{"local", config::to_string(local)}, {"remote", config::to_string(remote)}, {"action", "trap"},
                       {"priority", 2000}},
                      error);
}

std::string dataplane_installer::remove_policy(uint32_t id)
{
    if (auto err = connect(); !err.empty()) {
        return err;
    }
    try {
        auto reply = client_->request("delete-policy", {{"id", id}});
        if (!reply.value("ok", false)) {
            return reply.value("error", std::string("refused"));
        }
    } catch (const dp::control_client_error& e) {
        client_.reset();
        return e.what();
    }
    return "";
}

std::string dataplane_installer::remove(config::direction dir, uint32_t spi)
{
    char text[16];
    std::snprintf(text, sizeof(text), "0x%08x", spi);
    std::string error;
    // A connection the data plane dropped (restarted, or closed while idle) fails the first request
    // after it; an SA left behind would keep its keys in the data plane, so reconnect and try once more.
    for (int attempt = 0; attempt < 2; ++attempt) {
        if (error = connect(); !error.empty()) {
            continue;
        }
        try {
            auto reply = client_->request("delete-sa", {{"direction", dir == config::direction::inbound ? "inbound" : "outbound"},
                                                        {"spi", text}});
            if (!reply.value("ok", false)) {
                return reply.value("error", std::string("refused"));
            }
            return "";
        } catch (const dp::control_client_error& e) {
            client_.reset();
            error = e.what();
        }
    }
    return error;
}

} // namespace espresso::cp
