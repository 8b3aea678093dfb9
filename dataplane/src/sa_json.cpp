// SA/policy/interface/worker/event <-> control protocol JSON (sa_json.h).
#include "sa_json.h"

#include <string.h> // explicit_bzero

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstring>
#include <cstdio>
#include <deque>
#include <string_view>

// Under AddressSanitizer (gcc defines the first, clang answers the second) the arena poisons the
// bytes that hold no kept text (request_reader::keep).
#if defined(__SANITIZE_ADDRESS__)
#define ESPRESSO_ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ESPRESSO_ARENA_ASAN 1
#endif
#endif
#ifdef ESPRESSO_ARENA_ASAN
#include <sanitizer/asan_interface.h>
#endif

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

// The JSON value as the loader's plain value tree (config::plain_value), viewing the JSON's own
// strings: objects are mappings (nlohmann keeps keys sorted), strings scalars of their value, numbers
// and booleans scalars of their JSON text, null the null value, arrays lists (the loader refuses them
// in an SA). The loader reads it with the checks and messages of a YAML tree (loader.h), so an SA from
// the control socket and one from a file are validated alike; building it costs one vector per object
// instead of yaml-cpp's several allocations per node (measured: the YAML tree was the largest share of
// an add-sas after the JSON parse).
//
// Threads: one builder per thread (the control server uses it on the main lcore only).
class plain_builder {
public:
    const config::plain_value& build(const json& value)
    {
        texts_.clear();
        fill(value, root_);
        return root_;
    }

private:
    void fill(const json& value, config::plain_value& out)
    {
        using kind = config::plain_value::kind;
        out.text = {};
        if (!value.is_object()) {
            out.items.clear();
        }
        switch (value.type()) {
        case json::value_t::object:
            out.what = kind::mapping;
            out.items.resize(value.size()); // same shape as the SA before: nothing allocated
            {
                size_t i = 0;
                for (const auto& [key, item] : value.items()) {
                    out.items[i].key = key; // a view of the object's key (items() keeps a reference)
                    fill(item, out.items[i].value);
                    ++i;
                }
            }
            return;
        case json::value_t::array:
            out.what = kind::sequence;
            return;
        case json::value_t::null:
        case json::value_t::discarded:
            out.what = kind::null;
            return;
        case json::value_t::string:
            out.what = kind::scalar;
            out.text = value.get_ref<const std::string&>();
            return;
        case json::value_t::boolean:
            out.what = kind::scalar;
            out.text = value.get<bool>() ? "true" : "false";
            return;
        case json::value_t::number_integer:
        case json::value_t::number_unsigned: {
            char text[24];
            const auto [end, error] = value.is_number_unsigned()
                                          ? std::to_chars(text, text + sizeof(text), value.get<uint64_t>())
                                          : std::to_chars(text, text + sizeof(text), value.get<int64_t>());
            out.what = kind::scalar;
            out.text = texts_.emplace_back(text, end); // the same digits as json::dump()
            return;
        }
        default:
            out.what = kind::scalar;
            out.text = texts_.emplace_back(value.dump()); // floating point: nlohmann's own text
            return;
        }
    }

    config::plain_value root_;     // kept: its vectors keep their capacity between SAs
    std::deque<std::string> texts_; // numbers' text (a deque: views into it stay valid as it grows)
};

plain_builder& builder()
{
    thread_local plain_builder b;
    return b;
}

// One SA object through the loader, named `path` in errors. The tree holds views only: the key text
// stays in the JSON value (the server wipes every string of the request, control_server::handle)
// and the loader wipes its own copy.
config::sa_config load_sa(const json& sa, const std::string& path)
{
    return config::load_security_association(builder().build(sa), path, "control");
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

namespace {

// The batch rules of add-sas for either input: a non-empty list of objects, each through the loader
// (`load(i, path)`), then the file loader's SPI uniqueness rule over the batch.
template <typename IsObject, typename Load>
parsed<std::vector<config::sa_config>> load_batch(size_t n, IsObject is_object, Load load)
{
    if (n == 0) {
        return {std::nullopt, "sas: expected a non-empty array of objects with the keys of a security-associations item"};
    }
    for (size_t i = 0; i < n; ++i) {
        if (!is_object(i)) {
            return {std::nullopt, "sas[" + std::to_string(i) + "]: expected an object with the keys of a security-associations item"};
        }
    }
    parsed<std::vector<config::sa_config>> result;
    result.value.emplace();
    auto& list = *result.value;
    list.reserve(n); // no reallocation: it would leave copies of keys in freed memory
    try {
        // Item by item, then the file loader's SPI uniqueness rule over the batch (it names the item).
        for (size_t i = 0; i < n; ++i) {
            list.push_back(load(i, "sas[" + std::to_string(i) + "]"));
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

} // namespace

parsed<std::vector<config::sa_config>> sas_from_json(const json& sas)
{
    if (!sas.is_array()) {
        return load_batch(0, [](size_t) { return false; }, [](size_t, const std::string&) { return config::sa_config{}; });
    }
    return load_batch(
        sas.size(), [&](size_t i) { return sas[i].is_object(); },
        [&](size_t i, const std::string& path) { return load_sa(sas[i], path); });
}

parsed<std::vector<config::sa_config>> sas_from_plain(std::span<const config::plain_value> sas)
{
    return load_batch(
        sas.size(), [&](size_t i) { return sas[i].what == config::plain_value::kind::mapping; },
        [&](size_t i, const std::string& path) {
            return config::load_security_association(sas[i], path, "control");
        });
}

// --- request_reader ------------------------------------------------------------------------------

namespace {
constexpr size_t chunk_size = 256 * 1024;

// Under AddressSanitizer the arena's bytes that hold no kept text are poisoned, so that a read past
// the end of a kept body (the scanner's, tests/fuzz/add_sas_fuzz.cpp) is caught although the chunk
// goes on behind it.
#ifdef ESPRESSO_ARENA_ASAN
void arena_poison(const char* p, size_t n) noexcept { ASAN_POISON_MEMORY_REGION(p, n); }
void arena_unpoison(const char* p, size_t n) noexcept { ASAN_UNPOISON_MEMORY_REGION(p, n); }
#else
void arena_poison(const char*, size_t) noexcept {}
void arena_unpoison(const char*, size_t) noexcept {}
#endif
} // namespace

request_reader::request_reader() = default;

request_reader::~request_reader()
{
    wipe();
    for (const auto& c : chunks_) {
        arena_unpoison(c.bytes.get(), c.size);
    }
}

void request_reader::reset() noexcept
{
    wipe();
    for (const auto& c : chunks_) {
        arena_poison(c.bytes.get(), c.size); // wipe() leaves them readable: tests look at wiped text
    }
}

std::string_view request_reader::keep(std::string_view text)
{
    if (chunks_.empty() || chunks_[chunk_].used + text.size() > chunks_[chunk_].size) {
        // Next chunk (kept from earlier requests when it is large enough; chunks are filled in order,
        // so the ones after chunk_ hold nothing of this request), or a new one.
        size_t next = chunks_.empty() ? 0 : chunk_ + 1;
        while (next < chunks_.size() && chunks_[next].size < text.size()) {
            ++next;
        }
        if (next >= chunks_.size()) {
            // A power of two: add-sas bodies larger than chunk_size are copied whole and grow a few
            // bytes from one request to the next (longer addresses, more digits); chunks of exactly
            // their size made a new one (fresh pages, zeroed) for nearly every request and left the
            // old ones to be wiped whole each time: 10 % of the main lcore per installed SA
            // (perf/RESULTS.md, issue 3: SA installs per second). Not zeroed: only written bytes
            // are ever read, and wipe() overwrites them.
            const size_t size = std::bit_ceil(std::max(chunk_size, text.size()));
            chunks_.push_back({std::make_unique_for_overwrite<char[]>(size), size, 0});
            next = chunks_.size() - 1;
            arena_poison(chunks_[next].bytes.get(), size);
        }
        chunk_ = next;
    }
    chunk& c = chunks_[chunk_];
    char* at = c.bytes.get() + c.used;
    arena_unpoison(at, text.size());
    std::memcpy(at, text.data(), text.size());
    c.used += text.size();
    return {at, text.size()};
}

config::plain_value& request_reader::next_item()
{
    if (count_ == items_.size()) {
        items_.emplace_back();
    }
    config::plain_value& v = items_[count_++];
    v.what = config::plain_value::kind::null;
    v.text = {};
    v.items.clear(); // keeps its capacity for this SA's keys
    return v;
}

void request_reader::wipe() noexcept
{
    // Exactly the bytes written since the last wipe (they may hold key text).
    for (auto& c : chunks_) {
        if (c.used != 0) {
            explicit_bzero(c.bytes.get(), c.used);
            c.used = 0;
        }
    }
    chunk_ = 0;
    count_ = 0;
    captured_ = false;
    scanned_ = false;
}

// SAX events: forwarded to nlohmann's own DOM builder, except inside args.sas of an add-sas request.
class request_reader::handler {
public:
    using number_integer_t = json::number_integer_t;
    using number_unsigned_t = json::number_unsigned_t;
    using number_float_t = json::number_float_t;
    using string_t = json::string_t;
    using binary_t = json::binary_t;

    handler(request_reader& reader, json& request) : r_(reader), dom_(request, false) {}

    bool null()
    {
        if (capturing()) {
            return place(config::plain_value::kind::null, {});
        }
        return dom_.null();
    }
    bool boolean(bool value)
    {
        if (capturing()) {
            return place(config::plain_value::kind::scalar, value ? "true" : "false");
        }
        return dom_.boolean(value);
    }
    bool number_integer(number_integer_t value)
    {
        if (capturing()) {
            return place_number(value);
        }
        return dom_.number_integer(value);
    }
    bool number_unsigned(number_unsigned_t value)
    {
        if (capturing()) {
            return place_number(value);
        }
        return dom_.number_unsigned(value);
    }
    bool number_float(number_float_t value, const string_t& text)
    {
        if (capturing()) {
            // nlohmann's dump of the value, as the DOM path's text (sa_json's plain_builder) has it.
            return place(config::plain_value::kind::scalar, r_.keep(json(value).dump()));
        }
        return dom_.number_float(value, text);
    }
    bool string(string_t& value)
    {
        if (capturing()) {
            return place(config::plain_value::kind::scalar, r_.keep(value));
        }
        if (stack_.size() == 1 && stack_.back().key == "op") {
            add_sas_ = value == "add-sas";
        }
        return dom_.string(value);
    }
    bool binary(binary_t& value) { return dom_.binary(value); }
    // Every later step recurses over the value (nlohmann's dump(), the loader's tree): a request
    // nested 100k levels deep (200 KB) overflowed the main lcore's stack there. No request of the
    // protocol nests beyond 5 levels; the parse stops at max_request_depth.
    bool too_deep()
    {
        if (stack_.size() + open_.size() < max_request_depth) {
            return false;
        }
        r_.too_deep_ = true;
        return true;
    }
    bool start_object(size_t n)
    {
        if (too_deep()) {
            return false;
        }
        if (capturing()) {
            open(config::plain_value::kind::mapping);
            return true;
        }
        stack_.push_back({true, {}});
        return dom_.start_object(n);
    }
    bool key(string_t& name)
    {
        if (capturing() && !open_.empty()) {
            if (config::plain_value* map = open_.back(); map != nullptr) {
                map->items.push_back({r_.keep(name), {}});
            }
            return true;
        }
        // A repeated "args" or "sas" replaces the earlier value in the DOM: forget what was captured.
        if ((stack_.size() == 1 && name == "args") ||
            (stack_.size() == 2 && stack_[0].key == "args" && name == "sas")) {
            r_.count_ = 0;
            r_.captured_ = false;
        }
        stack_.back().key = name;
        return dom_.key(name);
    }
    bool end_object()
    {
        if (capturing()) {
            open_.pop_back();
            return true;
        }
        stack_.pop_back();
        return dom_.end_object();
    }
    bool start_array(size_t n)
    {
        if (too_deep()) {
            return false;
        }
        if (capturing()) {
            open(config::plain_value::kind::sequence);
            return true;
        }
        // args.sas of an add-sas request whose op came first: capture its items.
        const bool sas = add_sas_ && stack_.size() == 2 && stack_[0].object && stack_[0].key == "args" &&
                         stack_[1].object && stack_[1].key == "sas";
        stack_.push_back({false, {}});
        if (sas) {
            in_sas_ = true;
            sas_depth_ = stack_.size();
            r_.count_ = 0;
            r_.captured_ = true;
        }
        return dom_.start_array(n);
    }
    bool end_array()
    {
        if (capturing() && !open_.empty()) {
            open_.pop_back();
            return true;
        }
        if (in_sas_ && stack_.size() == sas_depth_) {
            in_sas_ = false;
        }
        stack_.pop_back();
        return dom_.end_array();
    }
    template <class Exception>
    bool parse_error(size_t position, const std::string& token, const Exception& ex)
    {
        return dom_.parse_error(position, token, ex);
    }

private:
    // Inside args.sas (an item, or anything in one)?
    bool capturing() const noexcept { return in_sas_; }

    // Where the next value goes: a new item, the value of the last key of the open mapping, or nowhere
    // (inside a list: the loader only says "got a list").
    config::plain_value* slot()
    {
        if (open_.empty()) {
            return &r_.next_item();
        }
        config::plain_value* parent = open_.back();
        if (parent == nullptr || parent->what != config::plain_value::kind::mapping || parent->items.empty()) {
            return nullptr;
        }
        return &parent->items.back().value;
    }
    bool place(config::plain_value::kind what, std::string_view text)
    {
        if (config::plain_value* v = slot(); v != nullptr) {
            v->what = what;
            v->text = text;
            v->items.clear();
        }
        return true;
    }
    template <typename Number>
    bool place_number(Number value)
    {
        char text[24];
        const auto [end, error] = std::to_chars(text, text + sizeof(text), value); // json::dump's digits
        return place(config::plain_value::kind::scalar, r_.keep(std::string_view(text, end)));
    }
    void open(config::plain_value::kind what)
    {
        config::plain_value* v = slot();
        if (v != nullptr) {
            v->what = what;
            v->text = {};
            v->items.clear();
        }
        // A list's contents are not kept: push "nowhere" for it.
        open_.push_back(what == config::plain_value::kind::mapping ? v : nullptr);
    }

    struct frame {
        bool object;
        std::string key; // the last key read in this object
    };
    request_reader& r_;
    nlohmann::detail::json_sax_dom_parser<json> dom_;
    std::vector<frame> stack_;                // DOM containers open
    std::vector<config::plain_value*> open_;  // captured containers open (nullptr: not kept)
    bool add_sas_ = false;
    bool in_sas_ = false;
    size_t sas_depth_ = 0;
};

bool request_reader::parse(std::string_view body, json& request)
{
    reset();
    request = json();
    if (scan_add_sas(body, request)) {
        scanned_ = true;
        return true;
    }
    return parse_with_nlohmann(body, request);
}

bool request_reader::parse_with_nlohmann(std::string_view body, json& request)
{
    reset(); // what a declined scan captured, and its copy of the body
    too_deep_ = false;
    request = json();
    handler h(*this, request);
    const bool ok = json::sax_parse(body, &h);
    if (!ok) {
        wipe_json_strings(request); // what was built before the error may hold keys
        request = json(json::value_t::discarded);
    }
    return ok;
}

void wipe_json_strings(json& value) noexcept
{
    if (value.is_string()) {
        auto& text = value.get_ref<std::string&>();
        explicit_bzero(text.data(), text.size());
    } else if (value.is_structured()) {
        for (auto& item : value) {
            wipe_json_strings(item);
        }
    }
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
        // Who installed it over the control socket (add-sa/add-sas "owner"); null: static or untagged.
        {"owner", c.owner.empty() ? json(nullptr) : json(c.owner)},
        {"interface", s.interface},
        {"sequence", s.sequence},
        {"consumed", {{"bytes", s.life_bytes}, {"packets", s.life_packets}}},
        {"tfc-pad-applied", s.tfc_pad},
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
        {"action", config::to_string(c.action)},
        {"priority", c.priority},
        {"matches", p.matches},
        {"implied", p.implied},
        {"origin", c.origin},
        {"owner", c.owner.empty() ? json(nullptr) : json(c.owner)}, // implied: its SA's owner
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
              {"table-full", n.table_full},
              {"evicted", n.evicted},
              {"waited-for-workers", n.waited}}}};
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
        {"fragments", w.fragments},
        {"reassembled", w.reassembled},
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
