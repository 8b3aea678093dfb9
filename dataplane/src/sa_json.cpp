// SA/policy/interface/worker/event <-> control protocol JSON (sa_json.h).
#include "sa_json.h"

#include <string.h> // explicit_bzero

#include <array>
#include <charconv>
#include <cstdio>
#include <string_view>

#include <yaml-cpp/yaml.h>

#include "espresso/config/algorithms.h"
#include "espresso/config/loader.h"

namespace espresso::dp {

using nlohmann::json;

namespace {

// The YAML below is nlohmann's dump of a JSON value (always well-formed flow YAML), and this runs inside
// espresso-dp with its lcores running, where fork() is unsafe: so the loader does not sandbox the parse
// (loader.h, load_options::sandbox). Operator files are still sandboxed in main() before rte_eal_init.
config::load_options generated_yaml()
{
    config::load_options options;
    options.sandbox = false;
    return options;
}

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
    return config::load_string(yaml, "control", generated_yaml());
}

// The JSON value as the YAML tree a YAML parser makes of its compact dump (JSON is YAML flow syntax,
// YAML 1.2 §1.3): objects are mappings (nlohmann keeps keys sorted, as in the dump), arrays sequences,
// strings scalars of their value, numbers and booleans scalars of their JSON text, null a null node.
// The loader reads every scalar from its text, so it sees what it would see in a file, without the
// cost of writing and re-parsing text (the largest share of an SA install before).
YAML::Node to_yaml_tree(const json& value)
{
    switch (value.type()) {
    case json::value_t::object: {
        YAML::Node node(YAML::NodeType::Map);
        for (const auto& [key, item] : value.items()) {
            node.force_insert(key, to_yaml_tree(item)); // keys are unique in a json object: no lookup
        }
        return node;
    }
    case json::value_t::array: {
        YAML::Node node(YAML::NodeType::Sequence);
        for (const auto& item : value) {
            node.push_back(to_yaml_tree(item));
        }
        return node;
    }
    case json::value_t::string:
        return YAML::Node(value.get_ref<const std::string&>());
    case json::value_t::boolean:
        return YAML::Node(value.get<bool>() ? "true" : "false");
    case json::value_t::null:
        return YAML::Node(YAML::NodeType::Null);
    default:
        return YAML::Node(value.dump()); // numbers (and nothing else reaches here from json::parse)
    }
}

// YAML trees for SA objects, kept between requests. yaml-cpp allocates several objects per node and
// merges node pools whenever trees are joined, so building and freeing a tree per SA cost more than
// validating it (measured: about 45 % of add-sas). The SA objects a client sends have the same keys
// every time, only the values change; so one tree is kept per shape (the keys, and whether each value
// is null, a scalar or a mapping) and its scalars are rewritten in place, one string copy per field.
// The loader still reads every value from the tree: the tree is a container, not a cache of results.
//
// Threads: one cache per thread (the control server uses it on the main lcore only).
class sa_tree_cache {
public:
    // The tree of `sa` (an object), valid until the next fill() on this thread.
    const YAML::Node& fill(const json& sa)
    {
        for (auto& kept : kept_) {
            if (kept && kept->matches(sa)) {
                kept->write(sa);
                last_ = &*kept;
                return kept->root;
            }
        }
        // Trees are replaced by destroying them (reset/emplace), never by assigning a YAML::Node:
        // yaml-cpp's assignment rebinds the old node and merges the new tree's node pool into the
        // old one, which would keep every tree ever assigned alive.
        if (contains_array(sa)) {
            // Not kept (the length of a list would be part of the shape); the loader refuses lists
            // in an SA anyway, so this is an error path.
            scratch_.emplace(to_yaml_tree(sa));
            for (auto it = scratch_->root.begin(); it != scratch_->root.end(); ++it) {
                if (it->second.IsScalar() &&
                    (it->first.Scalar() == "key" || it->first.Scalar() == "integrity-key")) {
                    scratch_->leaves.push_back(it->second);
                    scratch_->secrets.push_back(scratch_->leaves.size() - 1);
                }
            }
            last_ = &*scratch_;
            return scratch_->root;
        }
        auto& kept = kept_[next_];
        next_ = (next_ + 1) % kept_.size();
        kept.reset();
        kept.emplace(to_yaml_tree(sa));
        kept->learn(sa, kept->root, true);
        last_ = &*kept;
        return kept->root;
    }

    // Overwrites the key text in the tree filled last (its only copy: yaml-cpp stores a scalar once).
    void wipe_secrets() noexcept
    {
        if (last_ != nullptr) {
            for (const size_t i : last_->secrets) {
                const std::string& text = last_->leaves[i].Scalar();
                explicit_bzero(const_cast<char*>(text.data()), text.size());
            }
        }
        last_ = nullptr;
        scratch_.reset();
    }

private:
    struct kept_tree {
        enum class kind : uint8_t { map, key, scalar, null };
        struct token {
            kind what;
            size_t size = 0;  // map: number of keys
            std::string name; // key
        };
        explicit kept_tree(const YAML::Node& tree) : root(tree) {}

        YAML::Node root;
        std::vector<token> shape;       // pre-order, in nlohmann's (sorted) key order, as the tree
        std::vector<YAML::Node> leaves; // the scalar nodes, in the same order
        std::vector<size_t> secrets;    // leaves holding key or integrity-key

        // Records the shape of `value` and the leaves of `node`, its tree.
        void learn(const json& value, const YAML::Node& node, bool top)
        {
            if (value.is_object()) {
                shape.push_back({kind::map, value.size(), {}});
                auto it = node.begin();
                for (const auto& [key, item] : value.items()) {
                    shape.push_back({kind::key, 0, key});
                    if (top && (key == "key" || key == "integrity-key") && !item.is_null() &&
                        !item.is_object()) {
                        secrets.push_back(leaves.size());
                    }
                    learn(item, it->second, false);
                    ++it;
                }
            } else if (value.is_null()) {
                shape.push_back({kind::null, 0, {}});
            } else {
                shape.push_back({kind::scalar, 0, {}});
                leaves.push_back(node);
            }
        }

        bool matches(const json& value) const
        {
            size_t at = 0;
            return matches(value, at) && at == shape.size();
        }
        bool matches(const json& value, size_t& at) const
        {
            if (at >= shape.size()) {
                return false;
            }
            const token& t = shape[at++];
            switch (value.type()) {
            case json::value_t::object:
                if (t.what != kind::map || t.size != value.size()) {
                    return false;
                }
                for (const auto& [key, item] : value.items()) {
                    if (at >= shape.size() || shape[at].what != kind::key || shape[at].name != key) {
                        return false;
                    }
                    ++at;
                    if (!matches(item, at)) {
                        return false;
                    }
                }
                return true;
            case json::value_t::null:
                return t.what == kind::null;
            case json::value_t::array:
                return false;
            default:
                return t.what == kind::scalar;
            }
        }

        // Rewrites the leaves from `value`, whose shape matches().
        void write(const json& value)
        {
            size_t leaf = 0;
            write(value, leaf);
        }
        void write(const json& value, size_t& leaf)
        {
            switch (value.type()) {
            case json::value_t::object:
                for (const auto& item : value) {
                    write(item, leaf);
                }
                return;
            case json::value_t::null:
            case json::value_t::array: // never: matches() refuses lists
                return;
            case json::value_t::string:
                leaves[leaf++] = value.get_ref<const std::string&>(); // set_scalar: reuses the buffer
                return;
            case json::value_t::boolean:
                leaves[leaf++] = value.get<bool>() ? "true" : "false";
                return;
            case json::value_t::number_integer:
            case json::value_t::number_unsigned: {
                char text[24];
                const auto [end, error] =
                    value.is_number_unsigned()
                        ? std::to_chars(text, text + sizeof(text), value.get<uint64_t>())
                        : std::to_chars(text, text + sizeof(text), value.get<int64_t>());
                leaves[leaf++] = std::string(text, end); // the same digits as json::dump()
                return;
            }
            default:
                leaves[leaf++] = value.dump(); // floating point: nlohmann's own text, as in the dump
                return;
            }
        }
    };

    static bool contains_array(const json& value)
    {
        if (value.is_array()) {
            return true;
        }
        if (value.is_object()) {
            for (const auto& item : value) {
                if (contains_array(item)) {
                    return true;
                }
            }
        }
        return false;
    }

    // Shapes seen lately, replaced round robin. espresso-ike sends up to 8 (direction x NAT-T x
    // AEAD or not); a shape that does not match fails at its first differing key.
    std::array<std::optional<kept_tree>, 8> kept_;
    size_t next_ = 0;
    std::optional<kept_tree> scratch_; // a tree of a shape not worth keeping (with a list inside)
    kept_tree* last_ = nullptr;        // filled last
};

sa_tree_cache& tree_cache()
{
    thread_local sa_tree_cache cache;
    return cache;
}

// One SA object through the loader, named `path` in errors; the tree's key text is wiped after.
config::sa_config load_sa(const json& sa, const std::string& path)
{
    auto& cache = tree_cache();
    struct wipe_after {
        sa_tree_cache& cache;
        ~wipe_after() { cache.wipe_secrets(); }
    } wipe{cache};
    return config::load_security_association(cache.fill(sa), path, "control");
}

std::string prefix_text(const config::ip_prefix& prefix)
{
    return prefix.address.family == 0 ? std::string() : config::to_string(prefix);
}

std::string address_text(const config::ip_address& address)
{
    return address.family == 0 ? std::string() : config::to_string(address);
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
    parsed<config::sa_config> result;
    try {
        config::sa_config loaded = load_sa(sa, "sa");
        result.value = loaded;
        config::wipe_keys(loaded); // the copy; the caller wipes result.value
        result.value->origin = "control socket";
    } catch (const config::config_error& e) {
        result.error = rerooted_message(e, "sa", "sa");
    }
    return result;
}

parsed<std::vector<config::sa_config>> sas_from_json(const json& sas)
{
    if (!sas.is_array() || sas.empty()) {
        return {std::nullopt, "sas: expected a non-empty array of objects with the keys of a security-associations item"};
    }
    for (size_t i = 0; i < sas.size(); ++i) {
        if (!sas[i].is_object()) {
            return {std::nullopt, "sas[" + std::to_string(i) + "]: expected an object with the keys of a security-associations item"};
        }
    }
    parsed<std::vector<config::sa_config>> result;
    result.value.emplace();
    auto& list = *result.value;
    list.reserve(sas.size()); // no reallocation: it would leave copies of keys in freed memory
    try {
        // Item by item, then the file loader's SPI uniqueness rule over the batch (it names the item).
        for (size_t i = 0; i < sas.size(); ++i) {
            list.push_back(load_sa(sas[i], "sas[" + std::to_string(i) + "]"));
        }
        config::check_security_association_spis(list, "sas", "control");
    } catch (const config::config_error& e) {
        for (auto& s : list) {
            config::wipe_keys(s);
        }
        result.value.reset();
        result.error = rerooted_message(e, "sas", "sas");
        return result;
    } catch (...) {
        for (auto& s : list) {
            config::wipe_keys(s); // out of memory: no keys left behind in what is freed
        }
        throw;
    }
    for (auto& s : list) {
        s.origin = "control socket";
    }
    return result;
}

parsed<config::policy_config> policy_from_json(const json& policy)
{
    if (!policy.is_object()) {
        return {std::nullopt, "policy: expected an object with the keys of a policies item"};
    }
    config::gateway_config loaded;
    try {
        loaded = load_one("policies", policy);
    } catch (const config::config_error& e) {
        return {std::nullopt, rerooted_message(e, "policies[0]", "policy")};
    }
    if (loaded.policies.size() != 1) {
        return {std::nullopt, "policy: expected exactly one policy"};
    }
    parsed<config::policy_config> result{loaded.policies.front(), {}};
    result.value->origin = "control socket";
    return result;
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
    case config::policy_action::trap:
        return "trap";
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

json to_json(const neighbor_summary& n)
{
    json entries = json::array();
    for (const auto& e : n.entries) {
        entries.push_back({{"interface", e.interface},
                           {"address", address_text(e.address)},
                           {"family", e.address.family},
                           {"mac", mac_text(e.mac)},
                           {"static", e.is_static},
                           {"state", e.state},
                           {"age-seconds", e.age_seconds}});
    }
    return {{"neighbors", std::move(entries)},
            {"capacity", n.capacity},
            {"reachable-time", n.reachable_time},
            {"counters",
             {{"probes-sent", n.probes_sent},
              {"unreachable", n.unreachable},
              {"collected", n.collected},
              {"cleared", n.cleared},
              {"table-full", n.table_full}}}};
}

json to_json(const interface_snapshot& i)
{
    json out = {
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
    if (i.address6.family == 6) {
        out["address6"] = address_text(i.address6);
        out["prefix-length6"] = i.prefix_length6;
    }
    return out;
}

json to_json(const worker_snapshot& w)
{
    json out = {
        {"lcore", w.lcore},
        {"rx-packets", w.rx_packets},
        {"tx-packets", w.tx_packets},
        {"to-exception", w.to_exception},
        {"handed-off", w.handed_off},
        {"handed-in", w.handed_in},
        {"busy-percent", w.busy_percent},
        {"drops", drops_json(w.drops, gateway_drop_names, 0)},
    };
    if (w.main) {
        // The gateway's own traffic through the TAPs (main lcore): every counter, zeros included.
        out["local-traffic"] = drops_json(w.local, local_counter_names, 0);
    }
    return out;
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
