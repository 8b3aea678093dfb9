// SA/policy/interface/worker/event <-> control protocol JSON (sa_json.h).
#include "sa_json.h"

#include <string.h> // explicit_bzero

#include <array>
#include <charconv>
#include <cstdio>
#include <string_view>

#include "espresso/config/algorithms.h"
#include "espresso/config/loader.h"

namespace espresso::dp {

using nlohmann::json;

namespace {

// The loader's message for a one-item document, re-rooted at the argument name: the path
// "security-associations[0].key" becomes "sa.key". Line and column are left out: they point into
// the one-line document we built, not into anything the client wrote.
std::string rerooted_message(const config::config_error& e, std::string_view list_path, std::string_view root)
{
    std::string field = e.field();
    if (field.starts_with(list_path)) {
        field = std::string(root) + field.substr(list_path.size());
    } else if (field.empty()) {
        field = std::string(root);
    }
    std::string message = field + ": " + e.problem();
    if (!message.empty() && message.back() != '.') {
        message += '.';
    }
    if (!e.fix().empty()) {
        message += " Fix: " + e.fix();
        if (message.back() != '.' && message.back() != '?') {
            message += '.';
        }
    }
    return message;
}

// Runs `body` (a JSON object) through the config loader as the single item of `section`.
config::gateway_config load_one(std::string_view section, const json& body)
{
    // JSON is YAML flow syntax (YAML 1.2 §1.3); nlohmann's compact dump is accepted by yaml-cpp.
    std::string yaml = std::string(section) + ": [" + body.dump() + "]\n";
    struct wipe_on_exit {
        std::string& text;
        ~wipe_on_exit() { explicit_bzero(text.data(), text.size()); }
    } wipe{yaml};
    return config::load_string(yaml, "control");
}

std::string prefix_text(const config::ip_prefix& prefix)
{
    return prefix.address.family == 0 ? std::string() : config::to_string(prefix);
}

std::string address_text(const config::ip_address& address)
{
    return address.family == 0 ? std::string() : config::to_string(address);
}

// --- policies: validated here until the config loader reads the `policies:` section -------------

constexpr std::array<std::string_view, 8> policy_keys{"local",        "remote", "protocol", "local-ports",
                                                      "remote-ports", "action", "priority", "spi"};

struct protocol_name {
    std::string_view name;
    uint8_t number;
};
constexpr std::array<protocol_name, 9> protocol_names{{{"any", 0},
                                                       {"icmp", 1},
                                                       {"tcp", 6},
                                                       {"udp", 17},
                                                       {"gre", 47},
                                                       {"esp", 50},
                                                       {"ah", 51},
                                                       {"icmpv6", 58},
                                                       {"sctp", 132}}};

std::optional<uint64_t> parse_number_text(std::string_view text)
{
    uint64_t value = 0;
    int base = 10;
    if (text.starts_with("0x") || text.starts_with("0X")) {
        text.remove_prefix(2);
        base = 16;
    }
    if (text.empty()) {
        return std::nullopt;
    }
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value, base);
    if (error != std::errc{} || end != text.data() + text.size()) {
        return std::nullopt;
    }
    return value;
}

// An integer given as a JSON number or a decimal/0x-hex string.
std::optional<uint64_t> json_number(const json& value)
{
    if (value.is_number_unsigned()) {
        return value.get<uint64_t>();
    }
    if (value.is_number_integer()) {
        const int64_t v = value.get<int64_t>();
        return v < 0 ? std::nullopt : std::optional<uint64_t>(static_cast<uint64_t>(v));
    }
    if (value.is_string()) {
        return parse_number_text(value.get_ref<const std::string&>());
    }
    return std::nullopt;
}

struct port_range {
    uint16_t min = 0, max = 65535;
};

std::optional<port_range> parse_ports(const json& value)
{
    if (const auto single = json_number(value)) {
        if (*single > 65535) {
            return std::nullopt;
        }
        return port_range{static_cast<uint16_t>(*single), static_cast<uint16_t>(*single)};
    }
    if (!value.is_string()) {
        return std::nullopt;
    }
    const std::string_view text = value.get_ref<const std::string&>();
    const size_t dash = text.find('-');
    if (dash == std::string_view::npos) {
        return std::nullopt;
    }
    const auto low = parse_number_text(text.substr(0, dash));
    const auto high = parse_number_text(text.substr(dash + 1));
    if (!low || !high || *low > 65535 || *high > 65535 || *low > *high) {
        return std::nullopt;
    }
    return port_range{static_cast<uint16_t>(*low), static_cast<uint16_t>(*high)};
}

parsed<config::policy_config> policy_error(std::string message) { return {std::nullopt, std::move(message)}; }

parsed<config::policy_config> parse_policy_locally(const json& p)
{
    for (const auto& [key, value] : p.items()) {
        bool known = false;
        for (auto k : policy_keys) {
            known = known || k == key;
        }
        if (!known) {
            return policy_error("policy." + key +
                                ": unknown key. Fix: use local, remote, protocol, local-ports, remote-ports, "
                                "action, priority, spi.");
        }
    }
    config::policy_config policy;
    policy.origin = "control socket";
    for (const auto& [name, target] :
         {std::pair<std::string_view, config::ip_prefix*>{"local", &policy.local},
          std::pair<std::string_view, config::ip_prefix*>{"remote", &policy.remote}}) {
        const auto it = p.find(name);
        if (it == p.end()) {
            return policy_error("policy." + std::string(name) + ": missing. Fix: add \"" + std::string(name) +
                                "\": \"<prefix>\" (0.0.0.0/0 for everything).");
        }
        if (!it->is_string()) {
            return policy_error("policy." + std::string(name) +
                                ": expected a prefix string such as \"192.0.2.0/24\".");
        }
        const auto prefix = config::parse_prefix(it->get_ref<const std::string&>());
        if (!prefix) {
            return policy_error(
                "policy." + std::string(name) + ": \"" + it->get<std::string>() +
                "\" is not a prefix. Fix: write an address or a prefix with zero host bits, such "
                "as \"192.0.2.0/24\".");
        }
        *target = *prefix;
    }
    if (policy.local.address.family != policy.remote.address.family) {
        return policy_error("policy.remote: local and remote must both be IPv4 or both IPv6.");
    }
    if (const auto it = p.find("protocol"); it != p.end()) {
        std::optional<uint64_t> number = json_number(*it);
        if (!number && it->is_string()) {
            for (const auto& entry : protocol_names) {
                if (entry.name == it->get_ref<const std::string&>()) {
                    number = entry.number;
                }
            }
        }
        if (!number || *number > 255) {
            return policy_error(
                "policy.protocol: expected an IP protocol number 0..255 or one of any, icmp, tcp, "
                "udp, gre, esp, ah, icmpv6, sctp.");
        }
        policy.protocol = static_cast<uint8_t>(*number);
    }
    const bool has_ports = policy.protocol == 6 || policy.protocol == 17 || policy.protocol == 132;
    for (const auto& [name, low, high] :
         {std::tuple<std::string_view, uint16_t*, uint16_t*>{"local-ports", &policy.local_port_min,
                                                             &policy.local_port_max},
          std::tuple<std::string_view, uint16_t*, uint16_t*>{"remote-ports", &policy.remote_port_min,
                                                             &policy.remote_port_max}}) {
        const auto it = p.find(name);
        if (it == p.end()) {
            continue;
        }
        const auto range = parse_ports(*it);
        if (!range) {
            return policy_error("policy." + std::string(name) +
                                ": expected a port (80) or a range \"low-high\" with low <= high <= 65535.");
        }
        if (!has_ports && (range->min != 0 || range->max != 65535)) {
            return policy_error(
                "policy." + std::string(name) +
                ": ports apply only to protocol tcp, udp or sctp (RFC 4301 §4.4.1.1). Fix: set "
                "protocol, or remove the ports.");
        }
        *low = range->min;
        *high = range->max;
    }
    const auto action = p.find("action");
    if (action == p.end()) {
        return policy_error(
            "policy.action: missing. Fix: add \"action\": \"protect\", \"bypass\" or \"discard\".");
    }
    const std::string action_text = action->is_string() ? action->get<std::string>() : std::string();
    if (action_text == "protect") {
        policy.action = config::policy_action::protect;
    } else if (action_text == "bypass") {
        policy.action = config::policy_action::bypass;
    } else if (action_text == "discard") {
        policy.action = config::policy_action::discard;
    } else {
        return policy_error("policy.action: expected \"protect\", \"bypass\" or \"discard\".");
    }
    if (const auto it = p.find("priority"); it != p.end()) {
        const auto priority = json_number(*it);
        if (!priority || *priority > UINT32_MAX) {
            return policy_error("policy.priority: expected a number 0..4294967295 (lower wins).");
        }
        policy.priority = static_cast<uint32_t>(*priority);
    }
    const auto spi = p.find("spi");
    if (policy.action == config::policy_action::protect) {
        if (spi == p.end()) {
            return policy_error(
                "policy.spi: missing. Fix: a protect policy names its outbound SA: add \"spi\".");
        }
        const auto value = json_number(*spi);
        if (!value || *value < 256 || *value > UINT32_MAX) {
            return policy_error("policy.spi: expected an SPI from 0x100 to 0xffffffff (RFC 4303 §2.1).");
        }
        policy.spi = static_cast<uint32_t>(*value);
    } else if (spi != p.end()) {
        return policy_error("policy.spi: only protect policies name an SA. Fix: remove \"spi\".");
    }
    return {policy, {}};
}

json drops_json(std::span<const uint64_t> counts, std::span<const std::string_view> names, size_t first)
{
    json drops = json::object();
    for (size_t i = first; i < counts.size() && i < names.size(); ++i) {
        drops[std::string(names[i])] = counts[i];
    }
    return drops;
}

} // namespace

parsed<config::sa_config> sa_from_json(const json& sa)
{
    if (!sa.is_object()) {
        return {std::nullopt, "sa: expected an object with the keys of a security-associations item"};
    }
    config::gateway_config loaded;
    try {
        loaded = load_one("security-associations", sa);
    } catch (const config::config_error& e) {
        return {std::nullopt, rerooted_message(e, "security-associations[0]", "sa")};
    }
    if (loaded.security_associations.size() != 1) {
        for (auto& s : loaded.security_associations) {
            config::wipe_keys(s);
        }
        return {std::nullopt, "sa: expected exactly one SA"};
    }
    parsed<config::sa_config> result{loaded.security_associations.front(), {}};
    config::wipe_keys(loaded.security_associations.front());
    result.value->origin = "control socket";
    return result;
}

parsed<config::policy_config> policy_from_json(const json& policy)
{
    if (!policy.is_object()) {
        return policy_error("policy: expected an object");
    }
    // One validation path when the loader knows `policies:`; until it does it accepts and ignores the
    // section, and the checks above stand in.
    try {
        const auto loaded = load_one("policies", policy);
        if (loaded.policies.size() == 1) {
            parsed<config::policy_config> result{loaded.policies.front(), {}};
            result.value->origin = "control socket";
            return result;
        }
    } catch (const config::config_error& e) {
        return policy_error(rerooted_message(e, "policies[0]", "policy"));
    }
    return parse_policy_locally(policy);
}

void wipe_json_secrets(json& sa) noexcept
{
    if (!sa.is_object()) {
        return;
    }
    for (const char* name : {"key", "integrity-key"}) {
        const auto it = sa.find(name);
        if (it != sa.end() && it->is_string()) {
            auto& text = it->get_ref<std::string&>();
            explicit_bzero(text.data(), text.size());
        }
    }
}

std::string spi_hex(uint32_t spi)
{
    char text[16];
    std::snprintf(text, sizeof(text), "0x%08x", spi);
    return text;
}

std::string direction_name(config::direction dir)
{
    return dir == config::direction::inbound ? "inbound" : "outbound";
}

std::string cipher_name(const config::sa_config& sa)
{
    return std::string(config::info(sa.cipher, sa.cipher_key_bytes).name);
}

std::string integ_name(const config::sa_config& sa) { return std::string(config::info(sa.integ).name); }

std::string mac_text(const config::mac_address& mac)
{
    char text[24];
    std::snprintf(text, sizeof(text), "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4],
                  mac[5]);
    return text;
}

std::string action_name(config::policy_action action)
{
    switch (action) {
    case config::policy_action::protect:
        return "protect";
    case config::policy_action::bypass:
        return "bypass";
    case config::policy_action::discard:
        return "discard";
    }
    return "bypass";
}

json to_json(const sa_snapshot& s)
{
    const auto& c = s.config;
    json sa = {
        {"spi", c.spi},
        {"spi-hex", spi_hex(c.spi)},
        {"direction", direction_name(c.dir)},
        {"protocol", c.protocol == config::ipsec_protocol::ah ? "ah" : "esp"},
        {"mode", c.mode == config::ipsec_mode::transport ? "transport" : "tunnel"},
        {"source", address_text(c.source)},
        {"destination", address_text(c.destination)},
        {"encryption", cipher_name(c)},
        {"integrity", integ_name(c)},
        {"esn", c.esn},
        {"replay-window", c.replay_window},
        {"selectors", {{"local", prefix_text(c.local)}, {"remote", prefix_text(c.remote)}}},
        {"lifetime",
         {{"bytes", c.lifetime.bytes},
          {"packets", c.lifetime.packets},
          {"soft-bytes", c.lifetime.soft_bytes},
          {"soft-packets", c.lifetime.soft_packets}}},
        {"df", c.df == config::df_mode::set     ? "set"
               : c.df == config::df_mode::clear ? "clear"
                                                : "copy"},
        {"ttl", c.ttl},
        {"tfc-pad", c.tfc_pad_to},
        {"origin", c.origin},
        {"interface", s.interface},
        {"sequence", s.sequence},
        {"consumed", {{"bytes", s.life_bytes}, {"packets", s.life_packets}}},
    };
    sa["udp-encapsulation"] =
        c.udp ? json{{"source-port", c.udp->source_port}, {"destination-port", c.udp->destination_port}}
              : json(nullptr);
    sa["dscp"] = c.dscp == config::dscp_mode::set ? json(c.dscp_value) : json("copy");
    json counters = json::object();
    for (size_t i = 0; i < s.counters.size(); ++i) {
        counters[std::string(sa_counter_names[i])] = s.counters[i];
    }
    sa["counters"] = std::move(counters);
    // Index 0 is `none` (forwarded), not a drop.
    sa["drops"] = drops_json(s.drops, drop_reason_names, 1);
    return sa;
}

json to_json(const policy_snapshot& p)
{
    const auto& c = p.config;
    auto ports = [](uint16_t low, uint16_t high) { return std::to_string(low) + "-" + std::to_string(high); };
    json policy = {
        {"id", p.id},
        {"local", prefix_text(c.local)},
        {"remote", prefix_text(c.remote)},
        {"protocol", c.protocol},
        {"local-ports", ports(c.local_port_min, c.local_port_max)},
        {"remote-ports", ports(c.remote_port_min, c.remote_port_max)},
        {"action", action_name(c.action)},
        {"priority", c.priority},
        {"matches", p.matches},
        {"implied", p.implied},
        {"origin", c.origin},
    };
    if (c.action == config::policy_action::protect) {
        policy["spi"] = c.spi;
    }
    return policy;
}

json to_json(const interface_snapshot& i)
{
    return {
        {"name", i.name},
        {"device", i.device},
        {"port", i.port},
        {"mac", mac_text(i.mac)},
        {"address", address_text(i.address)},
        {"prefix-length", i.prefix_length},
        {"mtu", i.mtu},
        {"link-up", i.link_up},
        {"tap", i.tap},
        {"rx",
         {{"packets", i.rx_packets},
          {"bytes", i.rx_bytes},
          {"missed", i.rx_missed},
          {"errors", i.rx_errors}}},
        {"tx", {{"packets", i.tx_packets}, {"bytes", i.tx_bytes}, {"errors", i.tx_errors}}},
    };
}

json to_json(const worker_snapshot& w)
{
    return {
        {"lcore", w.lcore},
        {"rx-packets", w.rx_packets},
        {"tx-packets", w.tx_packets},
        {"to-exception", w.to_exception},
        {"busy-percent", w.busy_percent},
        {"drops", drops_json(w.drops, gateway_drop_names, 0)},
    };
}

json to_json(const gateway_event& e)
{
    std::string_view name;
    switch (e.what) {
    case gateway_event::kind::soft_expire:
        name = "soft-expire";
        break;
    case gateway_event::kind::hard_expire:
        name = "hard-expire";
        break;
    case gateway_event::kind::seq_exhausted:
        name = "seq-exhausted";
        break;
    case gateway_event::kind::acquire:
        name = "acquire";
        break;
    }
    json event = {{"version", 1}, {"event", name}, {"direction", direction_name(e.dir)}, {"spi", e.spi}};
    if (e.what == gateway_event::kind::acquire) {
        // The packet that found a protect policy without an SA; spi is the policy's, 0 if none.
        event["source"] = address_text(e.source);
        event["destination"] = address_text(e.destination);
        event["protocol"] = e.protocol;
    }
    return event;
}

} // namespace espresso::dp
