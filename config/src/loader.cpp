// YAML gateway configuration -> validated espresso::config structs.
//
// Start-up code: exceptions are the error channel (config_error, caught in main). Every check reports
// file:line:column (1-based, from yaml-cpp's 0-based Mark), the field path
// ("security-associations[2].key"), what is wrong and how to fix it. Scalars are parsed here from
// their raw text rather than with yaml-cpp's as<T>(), so that "0x1001", "yes" or "1e3" get our own
// messages instead of a generic bad-conversion error.
#include "espresso/config/loader.h"

#include <string.h> // explicit_bzero
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <map>
#include <span>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "yaml_sandbox.h"

namespace espresso::config {

namespace {

std::string build_message(const std::string& file, int line, int column, const std::string& field,
                          const std::string& problem, const std::string& fix) {
    std::string message = file;
    if (line > 0) {
        message += ":" + std::to_string(line) + ":" + std::to_string(column);
    }
    message += ": ";
    if (!field.empty()) {
        message += field + ": ";
    }
    message += problem;
    if (!problem.empty() && problem.back() != '.') {
        message += '.';
    }
    if (!fix.empty()) {
        message += " Fix: " + fix;
        if (fix.back() != '.' && fix.back() != '?') {
            message += '.';
        }
    }
    return message;
}

} // namespace

config_error::config_error(std::string file, int line, int column, std::string field, std::string problem,
                           std::string fix)
    : std::runtime_error(build_message(file, line, column, field, problem, fix)), file_(std::move(file)),
      line_(line), column_(column), field_(std::move(field)), problem_(std::move(problem)), fix_(std::move(fix)) {}

namespace {

// Top-level sections. `ike` is for the IKEv2 daemon (the data plane ignores it) but is checked here
// like the rest. Any other top-level key is an error.
constexpr std::array<std::string_view, 7> top_level_keys{
    "security-associations", "dataplane", "interfaces", "routes", "neighbors", "policies", "ike",
};

constexpr std::array<std::string_view, 20> sa_keys{
    "spi",       "direction", "protocol", "mode",          "source", "destination",   "encryption",
    "key",       "integrity", "integrity-key", "esn",      "replay-window", "udp-encapsulation",
    "selectors", "lifetime",  "df",       "dscp",          "ttl",    "tfc-pad",       "initial-sequence",
};

constexpr std::array<std::string_view, 2> udp_keys{"source-port", "destination-port"};

constexpr std::array<std::string_view, 10> dataplane_keys{
    "workers", "eal", "hugepages", "idle", "control-socket", "neighbor-reachable-time", "neighbor-table-size",
    "reassembly-datagrams", "reassembly-timeout-ms", "max-sas"};
constexpr std::array<std::string_view, 5> interface_keys{"name", "device", "address", "mac", "mtu"};
constexpr std::array<std::string_view, 3> route_keys{"destination", "via", "interface"};
constexpr std::array<std::string_view, 3> neighbor_keys{"address", "mac", "interface"};
constexpr std::array<std::string_view, 8> policy_keys{"local",        "remote", "protocol", "local-ports",
                                                      "remote-ports", "action", "priority", "spi"};

constexpr std::array<std::string_view, 9> ike_keys{"cookie-threshold",      "max-half-open-per-address",
                                                   "max-sas-per-address",   "log-file",
                                                   "retransmit-timeout-ms", "retransmit-tries",
                                                   "nat-keepalive",         "threads",
                                                   "peers"};
constexpr std::array<std::string_view, 16> ike_peer_keys{
    "name",      "version",      "local-address", "remote-address", "local-port", "remote-port", "proposals",
    "allow-legacy", "local-id", "remote-id",     "auth",           "rekey-time", "dpd",         "fragmentation",
    "fragment-size", "tunnels"};
constexpr std::array<std::string_view, 6> ike_auth_keys{"method",      "secret",      "secret-file",
                                                        "certificate", "private-key", "ca"};
constexpr std::array<std::string_view, 2> ike_dpd_keys{"interval", "action"};
constexpr std::array<std::string_view, 10> ike_tunnel_keys{"name",          "local-ts",    "remote-ts",   "mode",
                                                           "esp-proposals", "rekey-time",  "rekey-bytes", "rekey-packets",
                                                           "start",         "replay-window"};

constexpr uint32_t max_workers = 64;
// "dp-" + name must fit a kernel interface name: IFNAMSIZ is 16 bytes with the NUL, so 15 - 3.
constexpr size_t max_interface_name = 12;
// sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
constexpr size_t max_socket_path = 107;
// RFC 791: every IPv4 host must accept 576-byte datagrams, so no IPv4 link may be smaller; 9000 is
// the common jumbo-frame limit of the NICs and vdevs we drive.
constexpr uint64_t min_mtu_v4 = 576;
constexpr uint64_t min_mtu_v6 = 1280; // RFC 8200 §5
constexpr uint64_t max_mtu = 9000;
constexpr std::array<std::string_view, 2> selector_keys{"local", "remote"};
constexpr std::array<std::string_view, 4> lifetime_keys{"bytes", "packets", "soft-bytes", "soft-packets"};

char ascii_lower(char c) noexcept {
    if (c >= 'A' && c <= 'Z') {
        return static_cast<char>(c - 'A' + 'a');
    }
    return c;
}

std::string lowercase(std::string_view text) {
    std::string out(text);
    for (char& c : out) {
        c = ascii_lower(c);
    }
    return out;
}

// Edit distance, case-insensitive, counting a swap of two neighbouring letters as one edit (optimal
// string alignment), since "mut" for "mtu" is the commonest typo; only used to suggest a spelling.
size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> before(b.size() + 1);
    std::vector<size_t> previous(b.size() + 1);
    std::vector<size_t> current(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) {
        previous[j] = j;
    }
    for (size_t i = 1; i <= a.size(); ++i) {
        current[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const size_t substitution = previous[j - 1] + (ascii_lower(a[i - 1]) == ascii_lower(b[j - 1]) ? 0 : 1);
            current[j] = std::min({previous[j] + 1, current[j - 1] + 1, substitution});
            if (i > 1 && j > 1 && ascii_lower(a[i - 1]) == ascii_lower(b[j - 2]) &&
                ascii_lower(a[i - 2]) == ascii_lower(b[j - 1])) {
                current[j] = std::min(current[j], before[j - 2] + 1);
            }
        }
        std::swap(before, previous);
        std::swap(previous, current);
    }
    return previous[b.size()];
}

// The closest candidate when it is close enough to be a typo, else empty.
std::string_view closest(std::string_view word, std::span<const std::string_view> candidates) {
    std::string_view best;
    size_t best_distance = 0;
    for (auto candidate : candidates) {
        const size_t distance = edit_distance(word, candidate);
        if (best.empty() || distance < best_distance) {
            best = candidate;
            best_distance = distance;
        }
    }
    const size_t limit = word.size() >= 8 ? 3 : 2;
    if (best.empty() || best_distance > limit || best_distance >= word.size()) {
        return {};
    }
    return best;
}

std::vector<std::string_view> split_names(std::string_view list) {
    std::vector<std::string_view> names;
    while (!list.empty()) {
        const auto comma = list.find(',');
        names.push_back(list.substr(0, comma));
        if (comma == std::string_view::npos) {
            break;
        }
        list.remove_prefix(comma + 1);
        while (!list.empty() && list.front() == ' ') {
            list.remove_prefix(1);
        }
    }
    return names;
}

std::string join(std::span<const std::string_view> names, std::string_view separator) {
    std::string out;
    for (auto name : names) {
        if (!out.empty()) {
            out += separator;
        }
        out += name;
    }
    return out;
}

// refused_reason() texts end in "; use <alternative>": the first part is the problem, the rest the fix.
std::pair<std::string, std::string> split_reason(std::string_view reason, std::string_view default_fix) {
    const auto at = reason.rfind("; use ");
    if (at == std::string_view::npos) {
        return {std::string(reason), std::string(default_fix)};
    }
    return {std::string(reason.substr(0, at)), std::string(reason.substr(at + 2))};
}

std::string quoted(std::string_view text) {
    return "\"" + std::string(text) + "\"";
}

std::string hex32(uint32_t value) {
    char buffer[16];
    std::snprintf(buffer, sizeof(buffer), "0x%08x", value);
    return buffer;
}

// "0x1f" / "0X1F" hexadecimal or plain decimal; no sign, no spaces, no YAML 1.1 octal/sexagesimal.
std::optional<uint64_t> parse_uint(std::string_view text) {
    unsigned base = 10;
    if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
        base = 16;
        text.remove_prefix(2);
    }
    if (text.empty()) {
        return std::nullopt;
    }
    uint64_t value = 0;
    for (char c : text) {
        unsigned digit = 0;
        if (c >= '0' && c <= '9') {
            digit = static_cast<unsigned>(c - '0');
        } else if (base == 16 && ascii_lower(c) >= 'a' && ascii_lower(c) <= 'f') {
            digit = static_cast<unsigned>(ascii_lower(c) - 'a' + 10);
        } else {
            return std::nullopt;
        }
        if (value > (UINT64_MAX - digit) / base) {
            return std::nullopt;
        }
        value = value * base + digit;
    }
    return value;
}

int hex_digit(char c) noexcept {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c = ascii_lower(c);
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

std::string_view family_name(uint8_t family) {
    return family == 6 ? "IPv6" : "IPv4";
}

bool is_hex(char c) noexcept {
    return (c >= '0' && c <= '9') || (ascii_lower(c) >= 'a' && ascii_lower(c) <= 'f');
}

// "DDDD:BB:DD.F" or "BB:DD.F" (DPDK's PCI address syntax): domain, bus and device in hex, function
// 0..7; device numbers stop at 0x1f (5 bits). Returns the full form, lowercase, or empty.
std::string pci_address(std::string_view text) {
    std::string full;
    if (text.size() == 7) {
        full = "0000:" + lowercase(text);
    } else if (text.size() == 12 && text[4] == ':') {
        full = lowercase(text);
    } else {
        return {};
    }
    // 0000:03:00.0
    if (full[7] != ':' || full[10] != '.') {
        return {};
    }
    for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9}) {
        if (!is_hex(full[i])) {
            return {};
        }
    }
    const int device = hex_digit(full[8]) * 16 + hex_digit(full[9]);
    if (device > 0x1f || full[11] < '0' || full[11] > '7') {
        return {};
    }
    return full;
}

// Characters allowed in a device spec. The spec ends up in EAL's argument vector (--vdev= or -a),
// and operators copy it into shell scripts, so no spaces, quotes or shell metacharacters.
bool device_char_allowed(char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::string_view("_.,:=/+-@").find(c) != std::string_view::npos;
}

// How a character looks in a message: printable ones quoted, others by name or code.
std::string describe_char(char c) {
    if (c == ' ') {
        return "a space";
    }
    if (c == '\t') {
        return "a tab";
    }
    const auto code = static_cast<unsigned char>(c);
    if (code < 0x20 || code >= 0x7f) {
        char buffer[16];
        std::snprintf(buffer, sizeof(buffer), "byte 0x%02x", code);
        return buffer;
    }
    return "'" + std::string(1, c) + "'";
}

struct hex_problem {
    std::string problem;
    std::string fix;
};

// Key text: optional "0x", then hex digits, optionally grouped into bytes by ':' ("00:11:22").
// Returns the byte count, or a problem description. Decodes into `out` only when the count equals
// out.size(), so a wrong-length key never lands anywhere.
std::variant<size_t, hex_problem> decode_hex(std::string_view text, std::span<uint8_t> out) {
    if (text.size() >= 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
        text.remove_prefix(2);
    }
    size_t digits = 0;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (c == ':') {
            if (digits % 2 != 0) {
                return hex_problem{"':' at position " + std::to_string(i + 1) + " splits a byte",
                                   "write every byte as two hex digits, e.g. 0a:0b"};
            }
            continue;
        }
        if (hex_digit(c) < 0) {
            return hex_problem{"'" + std::string(1, c) + "' is not a hex digit",
                               "write the key as hex digits, optionally prefixed by 0x"};
        }
        ++digits;
    }
    if (digits == 0) {
        return hex_problem{"the key is empty", "write the key as hex digits, optionally prefixed by 0x"};
    }
    if (digits % 2 != 0) {
        return hex_problem{"odd number of hex digits (" + std::to_string(digits) + ")",
                           "write every byte as two hex digits; a missing leading zero is a common cause"};
    }
    const size_t bytes = digits / 2;
    if (bytes == out.size()) {
        size_t index = 0;
        int high = -1;
        for (char c : text) {
            if (c == ':') {
                continue;
            }
            if (high < 0) {
                high = hex_digit(c);
            } else {
                out[index++] = static_cast<uint8_t>((high << 4) | hex_digit(c));
                high = -1;
            }
        }
    }
    return bytes;
}

// Clears a buffer that held the file text (and so the keys) when it goes out of scope.
struct wipe_on_exit {
    std::string& text;
    ~wipe_on_exit() { explicit_bzero(text.data(), text.size()); }
};

// A field's path in messages ("sas[3].selectors.remote"), built only when a message needs it. The
// keys of a mapping hold their mapping's path (which the mapping owns) and their own name rather
// than a string each: an SA from the control socket has about 15 keys, and one heap-allocated path
// per key was the largest cost of its validation after the JSON parse (perf/RESULTS.md, session 5).
// Converts to std::string, so it reads like the string it replaces.
class field_path {
public:
    field_path() = default;
    field_path(std::string text) : text_(std::move(text)) {}
    field_path(const char* text) : text_(text) {}
    // The path of key `name` of the mapping that is being read: mapping's constructor points it at the
    // mapping's own path (pending until then).
    static field_path key_of_mapping(std::string_view name) {
        field_path p;
        p.name_ = name;
        p.pending_ = true;
        return p;
    }
    void set_parent(const std::string* parent) noexcept {
        if (pending_) {
            parent_ = parent;
        }
    }

    std::string str() const {
        if (!pending_) {
            return text_;
        }
        if (parent_ == nullptr || parent_->empty()) {
            return std::string(name_);
        }
        std::string out;
        out.reserve(parent_->size() + 1 + name_.size());
        out.append(*parent_).append(1, '.').append(name_);
        return out;
    }
    operator std::string() const { return str(); }
    friend std::string operator+(const field_path& path, std::string_view more) { return path.str().append(more); }

private:
    std::string text_;
    const std::string* parent_ = nullptr;
    std::string_view name_;
    bool pending_ = false;
};

// One key of a mapping and its value: YAML nodes (files, built trees), or a plain value
// (load_security_association's JSON input; key and value nodes are then empty, without positions).
// Checks read the value through loader::is_null/is_scalar/scalar/read_mapping, never the nodes alone.
struct field {
    // A constructor rather than an aggregate, so that emplace_back builds one in place (clang 14 has
    // no parenthesized aggregate initialization).
    field(std::string_view name_, field_path path_, const YAML::Node& key_, const YAML::Node& value_,
          const plain_value* plain_ = nullptr)
        : name(name_), path(std::move(path_)), key(key_), value(value_), plain(plain_) {}

    std::string_view name;
    field_path path;
    YAML::Node key;
    YAML::Node value;
    const plain_value* plain = nullptr;
};

// Not copyable or movable: its fields point at its path_ (field_path). read_mapping returns it as a
// prvalue (constructed in place, C++17).
class mapping {
public:
    mapping(YAML::Node node, std::string path, std::vector<field> fields)
        : node_(std::move(node)), path_(std::move(path)), fields_(std::move(fields)) {
        for (auto& f : fields_) {
            f.path.set_parent(&path_);
        }
    }
    mapping(const mapping&) = delete;
    mapping& operator=(const mapping&) = delete;

    const field* find(std::string_view name) const {
        for (const auto& f : fields_) {
            if (f.name == name) {
                return &f;
            }
        }
        return nullptr;
    }

    const YAML::Node& node() const noexcept { return node_; }
    const std::string& path() const noexcept { return path_; }
    std::string child_path(std::string_view name) const {
        return path_.empty() ? std::string(name) : path_ + "." + std::string(name);
    }

private:
    YAML::Node node_;
    std::string path_;
    std::vector<field> fields_;
};

std::string_view node_kind(const YAML::Node& node) {
    switch (node.Type()) {
    case YAML::NodeType::Null:
        return "nothing";
    case YAML::NodeType::Scalar:
        return "a scalar";
    case YAML::NodeType::Sequence:
        return "a list";
    case YAML::NodeType::Map:
        return "a mapping";
    case YAML::NodeType::Undefined:
        break;
    }
    return "nothing";
}

class loader {
public:
    loader(std::string_view source, const std::string& file, const load_options& options)
        : source_(source), file_(file), options_(options) {}
    // For a tree built in memory (load_security_association): no text, no positions, nothing to parse.
    struct built_tree {};
    loader(built_tree, const std::string& file) : file_(file), options_(built_tree_options()), tree_(true) {}
    static const load_options& built_tree_options() {
        static const load_options options{};
        return options;
    }

    gateway_config run();
    sa_config parse_sa(const YAML::Node& node, const std::string& path) const;
    sa_config parse_sa(const plain_value& value, const std::string& path) const;
    void check_unique(const std::vector<sa_config>& sas, const std::vector<YAML::Node>& spi_nodes,
                      const std::function<std::string(size_t)>& path_of) const;

private:
    [[noreturn]] void fail(const YAML::Node& at, const std::string& path, std::string problem, std::string fix) const {
        const YAML::Mark mark = at.Mark();
        const bool known = mark.line >= 0 && mark.column >= 0;
        throw config_error(file_, known ? mark.line + 1 : 0, known ? mark.column + 1 : 0, path, std::move(problem),
                           std::move(fix));
    }
    // A null value ("key:" with nothing after it) has its mark on the following line; point at the key.
    [[noreturn]] void fail(const field& f, std::string problem, std::string fix) const {
        fail(is_null(f) ? f.key : f.value, f.path, std::move(problem), std::move(fix));
    }

    std::string origin(const YAML::Node& node) const {
        const YAML::Mark mark = node.Mark();
        return file_ + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
    }

    // Was this null node written as the word null (rather than "~" or nothing)? In a built tree
    // (from JSON) every null is the word.
    bool is_literal_null(const YAML::Node& node) const {
        if (tree_) {
            return node.IsNull();
        }
        const YAML::Mark mark = node.Mark();
        if (!node.IsNull() || mark.pos < 0 || static_cast<size_t>(mark.pos) >= source_.size()) {
            return false;
        }
        const auto rest = source_.substr(static_cast<size_t>(mark.pos));
        return rest.starts_with("null") || rest.starts_with("Null") || rest.starts_with("NULL");
    }

    mapping read_mapping(const YAML::Node& node, const std::string& path, std::span<const std::string_view> allowed,
                         std::string_view what) const;
    mapping read_mapping(const plain_value& value, const std::string& path, std::span<const std::string_view> allowed,
                         std::string_view what) const;
    // A field's value as a mapping, whichever input it came from.
    mapping read_mapping(const field& f, std::span<const std::string_view> allowed, std::string_view what) const {
        return f.plain != nullptr ? read_mapping(*f.plain, f.path, allowed, what)
                                  : read_mapping(f.value, f.path, allowed, what);
    }
    void add_field(std::vector<field>& fields, const std::string& path, std::span<const std::string_view> allowed,
                   std::string_view name, const YAML::Node& key, const YAML::Node& value,
                   const plain_value* plain) const;
    sa_config parse_sa_fields(const mapping& m, std::string origin) const;
    // A field's value, whichever input it came from.
    static bool is_null(const field& f) {
        return f.plain != nullptr ? f.plain->what == plain_value::kind::null : f.value.IsNull();
    }
    static bool is_scalar(const field& f) {
        return f.plain != nullptr ? f.plain->what == plain_value::kind::scalar : f.value.IsScalar();
    }
    static std::string_view scalar(const field& f) {
        return f.plain != nullptr ? f.plain->text : std::string_view(f.value.Scalar());
    }
    static std::string_view kind_of(const field& f);
    bool is_literal_null(const field& f) const {
        return f.plain != nullptr ? f.plain->what == plain_value::kind::null : is_literal_null(f.value);
    }
    std::string text(const field& f, std::string_view expected) const;
    uint64_t number(const field& f, uint64_t min, uint64_t max) const;
    bool boolean(const field& f) const;
    template <typename Enum>
    Enum choice(const field& f, std::initializer_list<std::pair<std::string_view, Enum>> options) const;
    ip_address address(const field& f) const;
    ip_prefix prefix(const field& f) const;
    const field& require(const mapping& m, std::string_view name, std::string_view fix) const;

    cipher_info cipher(const field& f) const;
    integ_info integrity(const field& f) const;
    void parse_keys(const mapping& m, sa_config& sa, const cipher_info& cipher, const integ_info& integ) const;

    void parse_identity(const mapping& m, sa_config& sa) const;
    void parse_transforms(const mapping& m, sa_config& sa) const;
    void parse_selectors(const mapping& m, sa_config& sa) const;
    void parse_options(const mapping& m, sa_config& sa) const;
    void parse_security_associations(const field& f, gateway_config& config) const;

    const YAML::Node& sequence(const field& f, std::string_view what, std::string_view fix) const;
    uint32_t spi(const field& f) const;
    mac_address mac(const field& f) const;
    std::pair<ip_address, uint8_t> interface_address(const field& f) const;
    std::pair<uint16_t, uint16_t> port_range(const field& f) const;
    const interface_config& interface_named(const field& f, const std::vector<interface_config>& interfaces) const;

    dataplane_config parse_dataplane(const field& f) const;
    interface_config parse_interface(const YAML::Node& node, const std::string& path, const gateway_config& config) const;
    route_config parse_route(const YAML::Node& node, const std::string& path, const gateway_config& config) const;
    neighbor_config parse_neighbor(const YAML::Node& node, const std::string& path, const gateway_config& config) const;
    policy_config parse_policy(const YAML::Node& node, const std::string& path, const gateway_config& config,
                               bool check_spi) const;
    void check_sa_endpoints(const field& sas, const gateway_config& config) const;

    uint64_t duration(const field& f, uint64_t max) const;
    std::string ike_name(const field& f, std::string_view what) const;
    std::vector<ike_proposal_config> ike_proposals(const field& f, bool esp, bool allow_legacy) const;
    ike_identity ike_id(const field& f) const;
    std::string ike_path(const field& f, std::string_view expected) const;
    void check_secret_file(const field& f, const std::string& path, std::string_view what) const;
    void check_readable_file(const field& f, const std::string& path, std::string_view what) const;
    void parse_ike_auth(const field& f, ike_auth_config& auth) const;
    void parse_ike_tunnel(const YAML::Node& node, const std::string& path, const ike_peer_config& peer,
                          ike_tunnel_config& tunnel) const;
    void parse_ike_peer(const YAML::Node& node, const std::string& path, const gateway_config& config,
                        ike_peer_config& peer) const;
    void parse_ike(const field& f, gateway_config& config) const;

    std::string_view source_;
    const std::string& file_;
    const load_options& options_;
    bool tree_ = false;
};

std::string_view plain_kind(const plain_value& value) {
    switch (value.what) {
    case plain_value::kind::null:
        return "nothing";
    case plain_value::kind::scalar:
        return "a scalar";
    case plain_value::kind::sequence:
        return "a list";
    case plain_value::kind::mapping:
        return "a mapping";
    }
    return "nothing";
}

std::string_view loader::kind_of(const field& f) {
    return f.plain != nullptr ? plain_kind(*f.plain) : node_kind(f.value);
}

std::string not_a_mapping(std::string_view what, std::string_view kind) {
    return "expected a mapping (" + std::string(what) + "), got " + std::string(kind);
}
constexpr std::string_view mapping_fix = "write it as indented \"key: value\" lines or { key: value, ... }";

// The checks every key of a mapping gets (known, not repeated), for either input.
void loader::add_field(std::vector<field>& fields, const std::string& path, std::span<const std::string_view> allowed,
                       std::string_view name, const YAML::Node& key, const YAML::Node& value,
                       const plain_value* plain) const {
    // The key's path is built only for a message (field_path): this runs for every key of every SA.
    auto key_path = [&] { return path.empty() ? std::string(name) : path + "." + std::string(name); };
    const auto known = std::find(allowed.begin(), allowed.end(), name);
    if (known == allowed.end()) {
        const auto suggestion = closest(name, allowed);
        fail(key, key_path(), "unknown key " + quoted(name),
             suggestion.empty() ? "valid keys here are: " + join(allowed, ", ")
                                : "did you mean " + quoted(suggestion) + "?");
    }
    for (const auto& earlier : fields) {
        if (earlier.name.data() == known->data()) { // both name an entry of `allowed`
            fail(key, key_path(), "key " + quoted(name) + " appears twice; first at " + origin(earlier.key),
                 "keep only one of them");
        }
    }
    fields.emplace_back(*known, field_path::key_of_mapping(*known), key, value, plain);
}

mapping loader::read_mapping(const YAML::Node& node, const std::string& path, std::span<const std::string_view> allowed,
                             std::string_view what) const {
    if (!node.IsMap()) {
        fail(node, path, not_a_mapping(what, node_kind(node)), std::string(mapping_fix));
    }
    std::vector<field> fields;
    for (auto it = node.begin(); it != node.end(); ++it) {
        const YAML::Node key = it->first;
        if (!key.IsScalar()) {
            fail(key, path, "a key must be a plain name, got " + std::string(node_kind(key)),
                 "use one of: " + join(allowed, ", "));
        }
        add_field(fields, path, allowed, key.Scalar(), key, it->second, nullptr);
    }
    return mapping(node, path, std::move(fields));
}

mapping loader::read_mapping(const plain_value& value, const std::string& path,
                             std::span<const std::string_view> allowed, std::string_view what) const {
    if (value.what != plain_value::kind::mapping) {
        fail(YAML::Node(), path, not_a_mapping(what, plain_kind(value)), std::string(mapping_fix));
    }
    std::vector<field> fields;
    fields.reserve(value.items.size());
    for (const auto& item : value.items) {
        add_field(fields, path, allowed, item.key, YAML::Node(), YAML::Node(), &item.value);
    }
    return mapping(YAML::Node(), path, std::move(fields));
}

const field& loader::require(const mapping& m, std::string_view name, std::string_view fix) const {
    const field* f = m.find(name);
    if (f == nullptr) {
        fail(m.node(), m.path(), "required key " + quoted(name) + " is missing", std::string(fix));
    }
    return *f;
}

std::string loader::text(const field& f, std::string_view expected) const {
    if (is_null(f)) {
        fail(f, "has no value; expected " + std::string(expected), "write a value after the colon");
    }
    if (!is_scalar(f)) {
        fail(f, "expected " + std::string(expected) + ", got " + std::string(kind_of(f)), "write a single value");
    }
    return std::string(scalar(f));
}

uint64_t loader::number(const field& f, uint64_t min, uint64_t max) const {
    // The messages are built only on error: this runs for every numeric field of every SA installed.
    auto range = [&] { return std::to_string(min) + ".." + std::to_string(max); };
    if (!is_scalar(f)) {
        text(f, "a number in " + range()); // fails with the message for a missing or non-scalar value
    }
    const std::string_view value = scalar(f);
    const auto parsed = parse_uint(value);
    if (!parsed) {
        fail(f, quoted(value) + " is not a number", "write a decimal or 0x-prefixed hex number in " + range());
    }
    if (*parsed < min || *parsed > max) {
        fail(f, quoted(value) + " is out of range", "use a value in " + range());
    }
    return *parsed;
}

bool loader::boolean(const field& f) const {
    const std::string value = text(f, "true or false");
    const std::string lower = lowercase(value);
    if (lower == "true") {
        return true;
    }
    if (lower == "false") {
        return false;
    }
    fail(f, quoted(value) + " is not a boolean", "write true or false");
}

template <typename Enum>
Enum loader::choice(const field& f, std::initializer_list<std::pair<std::string_view, Enum>> options) const {
    std::vector<std::string_view> names;
    auto expected_text = [&] {
        for (const auto& option : options) {
            names.push_back(option.first);
        }
        return join(names, " | ");
    };
    if (is_scalar(f)) {
        // The common case without building any message (this runs for every SA installed).
        for (const auto& option : options) {
            if (option.first == scalar(f)) {
                return option.second;
            }
        }
    }
    const std::string expected = expected_text();
    const std::string value = text(f, expected);
    const std::string lower = lowercase(value);
    for (const auto& option : options) {
        if (option.first == lower) {
            fail(f, quoted(value) + " is not recognised; values are lowercase", "write " + quoted(lower));
        }
    }
    const auto suggestion = closest(value, names);
    fail(f, "unknown value " + quoted(value) + "; expected one of: " + expected,
         suggestion.empty() ? "use one of: " + expected : "did you mean " + quoted(suggestion) + "?");
}

ip_address loader::address(const field& f) const {
    const std::string value = text(f, "an IPv4 or IPv6 address");
    const auto parsed = parse_address(value);
    if (!parsed) {
        if (value.find('/') != std::string::npos) {
            fail(f, quoted(value) + " is a prefix, not an address", "write a single address without /length");
        }
        fail(f, quoted(value) + " is not an IPv4 or IPv6 address", "write e.g. 198.51.100.1 or 2001:db8::1");
    }
    return *parsed;
}

ip_prefix loader::prefix(const field& f) const {
    const std::string value = text(f, "an IPv4 or IPv6 prefix");
    if (const auto parsed = parse_prefix(value)) {
        return *parsed;
    }
    // Tell apart a bad address, a bad length and host bits set: they need different fixes.
    const auto slash = value.find('/');
    const auto address = parse_address(std::string_view(value).substr(0, slash));
    if (!address) {
        fail(f, quoted(value) + " is not an IPv4 or IPv6 prefix", "write e.g. 192.168.1.0/24 or 2001:db8:1::/48");
    }
    const unsigned max_length = address->is_v4() ? 32 : 128;
    // A valid address without '/' always parses, so there is a slash here.
    const std::string_view length_text = std::string_view(value).substr(slash + 1);
    const auto length = parse_uint(length_text);
    if (!length || *length > max_length || length_text.starts_with("0x") || length_text.starts_with("0X")) {
        fail(f, quoted(value) + " has an invalid prefix length",
             "the length after '/' must be 0.." + std::to_string(max_length));
    }
    ip_address network = *address;
    for (unsigned bit = static_cast<unsigned>(*length); bit < max_length; ++bit) {
        network.bytes[bit / 8] = static_cast<uint8_t>(network.bytes[bit / 8] & ~(0x80u >> (bit % 8)));
    }
    const std::string suggestion = to_string(ip_prefix{network, static_cast<uint8_t>(*length)});
    fail(f, quoted(value) + " has host bits set after the /" + std::to_string(*length),
         "did you mean " + quoted(suggestion) + "? (or /" + std::to_string(max_length) + " for the single host)");
}

cipher_info loader::cipher(const field& f) const {
    // `encryption: null` is YAML's null value; accept the word, refuse "~" or an empty value.
    const std::string name = is_literal_null(f) ? std::string("null") : text(f, "an encryption algorithm");
    if (const auto found = find_cipher(name)) {
        return *found;
    }
    const std::string lower = lowercase(name);
    if (find_cipher(lower)) {
        fail(f, "unknown algorithm " + quoted(name) + "; algorithm names are lowercase", "write " + quoted(lower));
    }
    if (const auto reason = refused_reason(name); !reason.empty()) {
        auto [why, fix] = split_reason(reason, "use aes128gcm16 or aes256gcm16 (AES-GCM, RFC 4106)");
        fail(f, "encryption algorithm " + quoted(name) + " is refused: " + why, fix);
    }
    if (find_integ(lower)) {
        fail(f, quoted(name) + " is an integrity algorithm, not an encryption algorithm",
             "move it to integrity: and choose an encryption algorithm (aes128 for CBC, or null for "
             "integrity-only ESP)");
    }
    const auto names = split_names(cipher_names());
    const auto suggestion = closest(name, names);
    fail(f, "unknown algorithm " + quoted(name) + "; expected one of: " + std::string(cipher_names()),
         suggestion.empty() ? std::string("use a strongSwan proposal name such as aes128gcm16")
                            : "did you mean " + quoted(suggestion) + "?");
}

integ_info loader::integrity(const field& f) const {
    if (is_literal_null(f)) {
        fail(f, "\"null\" is not an integrity algorithm", "write none (allowed only with an AEAD cipher)");
    }
    const std::string name = text(f, "an integrity algorithm");
    if (const auto found = find_integ(name)) {
        return *found;
    }
    const std::string lower = lowercase(name);
    if (find_integ(lower)) {
        fail(f, "unknown algorithm " + quoted(name) + "; algorithm names are lowercase", "write " + quoted(lower));
    }
    if (const auto reason = refused_reason(name); !reason.empty()) {
        auto [why, fix] = split_reason(reason, "use sha256, sha384 or sha512 (HMAC-SHA-2, RFC 4868)");
        fail(f, "integrity algorithm " + quoted(name) + " is refused: " + why, fix);
    }
    if (find_cipher(lower)) {
        fail(f, quoted(name) + " is an encryption algorithm, not an integrity algorithm",
             "move it to encryption: and set integrity to sha256 (or none for AEAD ciphers)");
    }
    const auto names = split_names(integ_names());
    const auto suggestion = closest(name, names);
    fail(f, "unknown algorithm " + quoted(name) + "; expected one of: " + std::string(integ_names()),
         suggestion.empty() ? std::string("use sha256, or none with an AEAD cipher such as aes128gcm16")
                            : "did you mean " + quoted(suggestion) + "?");
}

void loader::parse_keys(const mapping& m, sa_config& sa, const cipher_info& cipher, const integ_info& integ) const {
    const field* key = m.find("key");
    const size_t cipher_bytes = size_t{cipher.key_bytes} + cipher.salt_bytes;
    if (cipher_bytes == 0) {
        if (key != nullptr) {
            fail(*key, std::string(cipher.name) + " encryption takes no key", "remove key");
        }
    } else {
        auto need = [&] { // built only on error
            std::string text = std::string(cipher.name) + " needs " + std::to_string(cipher_bytes) + " bytes";
            if (cipher.salt_bytes != 0) {
                text += ": " + std::to_string(cipher.key_bytes) + " key + " + std::to_string(cipher.salt_bytes) +
                        " salt";
            }
            return text;
        };
        if (key == nullptr) {
            fail(m.node(), m.path(), "required key \"key\" is missing; " + need(),
                 "add key: 0x followed by " + std::to_string(cipher_bytes * 2) + " hex digits");
        }
        if (!is_scalar(*key)) {
            text(*key, "a hex key"); // fails: no value, or not a single value
        }
        const std::string_view value = scalar(*key); // decoded in place: no copy of the key text to wipe
        const auto decoded = decode_hex(value, std::span(sa.cipher_key.data(), cipher_bytes));
        if (const auto* problem = std::get_if<hex_problem>(&decoded)) {
            fail(*key, problem->problem, problem->fix);
        }
        const size_t got = std::get<size_t>(decoded);
        if (got != cipher_bytes) {
            std::string fix = "write exactly " + std::to_string(cipher_bytes * 2) + " hex digits";
        if (cipher.salt_bytes != 0) {
            fix += " (the last " + std::to_string(cipher.salt_bytes) + " bytes are the salt)";
        }
        fail(*key, "key has " + std::to_string(got) + " bytes; " + need(), fix);
        }
        sa.cipher_key_length = static_cast<uint8_t>(cipher_bytes);
    }

    const field* integ_key = m.find("integrity-key");
    if (integ.key_bytes == 0) {
        if (integ_key != nullptr) {
            fail(*integ_key, "integrity is none, so there is no integrity key", "remove integrity-key");
        }
        return;
    }
    auto need = [&] {
        return std::string(integ.name) + " needs a " + std::to_string(integ.key_bytes) + "-byte key";
    };
    if (integ_key == nullptr) {
        fail(m.node(), m.path(), "required key \"integrity-key\" is missing; " + need(),
             "add integrity-key: 0x followed by " + std::to_string(integ.key_bytes * 2) + " hex digits");
    }
    if (!is_scalar(*integ_key)) {
        text(*integ_key, "a hex key");
    }
    const std::string_view value = scalar(*integ_key);
    const auto decoded = decode_hex(value, std::span(sa.integ_key.data(), integ.key_bytes));
    if (const auto* problem = std::get_if<hex_problem>(&decoded)) {
        fail(*integ_key, problem->problem, problem->fix);
    }
    const size_t got = std::get<size_t>(decoded);
    if (got != integ.key_bytes) {
        // RFC 4868 §2.1.1: the key length equals the hash output length.
        fail(*integ_key, "integrity-key has " + std::to_string(got) + " bytes; " + need(),
             "write exactly " + std::to_string(integ.key_bytes * 2) + " hex digits");
    }
    sa.integ_key_length = integ.key_bytes;
}

uint32_t loader::spi(const field& f) const {
    // RFC 4303 §2.1: SPI 0 is reserved for local use, 1..255 are reserved by IANA.
    const std::string spi_text = text(f, "a 32-bit SPI");
    const auto spi_value = parse_uint(spi_text);
    if (!spi_value) {
        fail(f, quoted(spi_text) + " is not a number", "write the SPI in decimal or as 0x-prefixed hex");
    }
    if (*spi_value == 0) {
        fail(f, "SPI 0 is reserved for local use and never sent on the wire (RFC 4303 §2.1)",
             "use a value from 0x100 to 0xffffffff");
    }
    if (*spi_value < 256) {
        fail(f, "SPI " + std::to_string(*spi_value) + " is in the range 1..255 reserved by IANA (RFC 4303 §2.1)",
             "use a value from 0x100 to 0xffffffff");
    }
    if (*spi_value > UINT32_MAX) {
        fail(f, "SPI " + quoted(spi_text) + " does not fit in 32 bits", "use a value from 0x100 to 0xffffffff");
    }
    return static_cast<uint32_t>(*spi_value);
}

// Who and where: SPI, direction, protocol, mode and the outer addresses.
void loader::parse_identity(const mapping& m, sa_config& sa) const {
    sa.spi = spi(require(m, "spi", "add spi: a number from 0x100 to 0xffffffff"));

    sa.dir = choice<direction>(require(m, "direction", "add direction: outbound or direction: inbound"),
                               {{"outbound", direction::outbound}, {"inbound", direction::inbound}});
    sa.protocol = choice<ipsec_protocol>(require(m, "protocol", "add protocol: esp (or ah)"),
                                         {{"esp", ipsec_protocol::esp}, {"ah", ipsec_protocol::ah}});
    sa.mode = choice<ipsec_mode>(require(m, "mode", "add mode: tunnel (or transport)"),
                                 {{"tunnel", ipsec_mode::tunnel}, {"transport", ipsec_mode::transport}});
    const bool tunnel = sa.mode == ipsec_mode::tunnel;

    // Outer addresses: required in tunnel mode. Transport mode uses the packet's own addresses;
    // they may still be given (and must then agree with the selectors' family).
    const field* source = m.find("source");
    const field* destination = m.find("destination");
    if (tunnel) {
        source = &require(m, "source", "add source: the local tunnel endpoint address");
        destination = &require(m, "destination", "add destination: the remote tunnel endpoint address");
    }
    if (source != nullptr) {
        sa.source = address(*source);
    }
    if (destination != nullptr) {
        sa.destination = address(*destination);
        if (source != nullptr && sa.destination.family != sa.source.family) {
            fail(*destination,
                 "source is IPv" + std::to_string(sa.source.family) + " but destination is IPv" +
                     std::to_string(sa.destination.family),
                 "use two addresses of the same family (IPv4 and IPv6 inner traffic may both use either)");
        }
    }
}

// Which transforms and keys; the ESP/AH combination rules.
void loader::parse_transforms(const mapping& m, sa_config& sa) const {
    const bool esp = sa.protocol == ipsec_protocol::esp;
    // Transforms. RFC 4303 §3.2: ESP must provide confidentiality or integrity (or both).
    const field* encryption = m.find("encryption");
    const field* integrity_field = m.find("integrity");
    std::optional<cipher_info> chosen_cipher;
    if (encryption != nullptr) {
        chosen_cipher = cipher(*encryption);
    }
    integ_info chosen_integ = info(integ_alg::none);
    if (integrity_field != nullptr) {
        chosen_integ = integrity(*integrity_field);
    }
    const bool has_integrity = chosen_integ.alg != integ_alg::none;
    const auto* integ_at = integrity_field;

    if (esp) {
        if (!chosen_cipher) {
            fail(m.node(), m.path(), "required key \"encryption\" is missing (ESP needs it)",
                 "add encryption: aes128gcm16, or encryption: null with integrity for integrity-only ESP");
        }
    } else {
        // AH authenticates only. RFC 4543 also defines AES-GMAC for AH, written here as encryption.
        if (chosen_cipher && chosen_cipher->alg != cipher_alg::null && chosen_cipher->alg != cipher_alg::aes_gmac) {
            fail(*encryption, "AH provides integrity only and cannot use " + quoted(chosen_cipher->name),
                 "use protocol: esp for encryption, or for AH remove encryption and set integrity: sha256 "
                 "(aes128gmac/aes256gmac are also allowed with AH, RFC 4543)");
        }
        if (!chosen_cipher) {
            chosen_cipher = *find_cipher("null");
        }
    }
    const bool aead = chosen_cipher->alg == cipher_alg::aes_gcm16 || chosen_cipher->alg == cipher_alg::aes_gmac;
    if (aead && has_integrity) {
        fail(*integ_at,
             quoted(chosen_cipher->name) + " carries its own " + std::to_string(chosen_cipher->icv_bytes) +
                 "-byte ICV; a separate integrity algorithm is not allowed",
             "remove integrity or set integrity: none");
    }
    if (!aead && !has_integrity) {
        std::string problem;
        std::string fix = "add integrity: sha256 and an integrity-key of 32 bytes";
        if (!esp) {
            problem = "AH needs an integrity algorithm";
            fix += " (or use encryption: aes128gmac, RFC 4543)";
        } else if (chosen_cipher->alg == cipher_alg::null) {
            problem = "ESP with null encryption and no integrity protects nothing; RFC 4303 §3.2 forbids it";
        } else {
            problem = "CBC encryption without integrity is refused: unauthenticated CBC is open to "
                      "bit-flipping and padding-oracle attacks, and RFC 8221 allows integrity none only "
                      "with AEAD ciphers";
            fix += ", or switch to an AEAD cipher such as aes128gcm16";
        }
        if (integ_at != nullptr) {
            fail(*integ_at, problem, fix);
        }
        fail(m.node(), m.path(), problem, fix);
    }
    sa.cipher = chosen_cipher->alg;
    sa.cipher_key_bytes = chosen_cipher->key_bytes;
    sa.integ = chosen_integ.alg;
    parse_keys(m, sa, *chosen_cipher, chosen_integ);
}

// What traffic the SA protects.
void loader::parse_selectors(const mapping& m, sa_config& sa) const {
    const bool tunnel = sa.mode == ipsec_mode::tunnel;
    const field* source = m.find("source");
    const field* destination = m.find("destination");
    const field& selectors_field =
        require(m, "selectors", "add selectors: { local: <prefix>, remote: <prefix> } (0.0.0.0/0 for everything)");
    const mapping selectors = read_mapping(selectors_field, selector_keys,
                                           "local and remote prefixes");
    const field& local = require(selectors, "local", "add local: the protected prefix on this side");
    const field& remote = require(selectors, "remote", "add remote: the protected prefix on the peer's side");
    sa.local = prefix(local);
    sa.remote = prefix(remote);
    if (sa.local.address.family != sa.remote.address.family) {
        fail(remote,
             "local is IPv" + std::to_string(sa.local.address.family) + " but remote is IPv" +
                 std::to_string(sa.remote.address.family),
             "use two prefixes of the same family; protect IPv4 and IPv6 with separate SAs");
    }
    const uint8_t outer_family = source != nullptr ? sa.source.family
                                 : destination != nullptr ? sa.destination.family
                                                          : 0;
    if (!tunnel && outer_family != 0 && outer_family != sa.local.address.family) {
        fail(local, "in transport mode the selectors must have the same family as source and destination",
             "use IPv" + std::to_string(outer_family) + " selectors");
    }
}

// Everything optional: sequence numbers, replay, NAT traversal, lifetimes, outer header knobs.
void loader::parse_options(const mapping& m, sa_config& sa) const {
    const bool tunnel = sa.mode == ipsec_mode::tunnel;
    const bool esp = sa.protocol == ipsec_protocol::esp;
    if (const field* f = m.find("esn")) {
        sa.esn = boolean(*f);
    }
    if (const field* f = m.find("replay-window")) {
        sa.replay_window = static_cast<uint32_t>(number(*f, 0, max_replay_window));
    }

    if (const field* f = m.find("udp-encapsulation")) {
        if (!esp) {
            fail(*f, "UDP encapsulation (RFC 3948) applies to ESP only",
                 "remove udp-encapsulation or use protocol: esp");
        }
        const mapping udp = read_mapping(*f, udp_keys, "source-port and destination-port");
        udp_encapsulation ports;
        if (const field* p = udp.find("source-port")) {
            ports.source_port = static_cast<uint16_t>(number(*p, 1, 65535));
        }
        if (const field* p = udp.find("destination-port")) {
            ports.destination_port = static_cast<uint16_t>(number(*p, 1, 65535));
        }
        sa.udp = ports;
    }

    if (const field* f = m.find("lifetime")) {
        const mapping lifetime = read_mapping(*f, lifetime_keys, "byte and packet limits");
        auto limit = [&](std::string_view name) -> uint64_t {
            const field* l = lifetime.find(name);
            return l == nullptr ? 0 : number(*l, 0, UINT64_MAX);
        };
        sa.lifetime.bytes = limit("bytes");
        sa.lifetime.packets = limit("packets");
        sa.lifetime.soft_bytes = limit("soft-bytes");
        sa.lifetime.soft_packets = limit("soft-packets");
        if (sa.lifetime.bytes != 0 && sa.lifetime.soft_bytes >= sa.lifetime.bytes) {
            fail(*lifetime.find("soft-bytes"), "soft-bytes must be below bytes (the hard limit)",
                 "lower soft-bytes, or leave it out to use 90 % of bytes");
        }
        if (sa.lifetime.packets != 0 && sa.lifetime.soft_packets >= sa.lifetime.packets) {
            fail(*lifetime.find("soft-packets"), "soft-packets must be below packets (the hard limit)",
                 "lower soft-packets, or leave it out to use 90 % of packets");
        }
    }

    // Outer header knobs exist only when there is an outer header to build (RFC 4301 §5.1.2).
    auto tunnel_only = [&](const field& f) {
        if (!tunnel) {
            fail(f, quoted(f.name) + " only applies in tunnel mode", "remove it or use mode: tunnel");
        }
    };
    if (const field* f = m.find("df")) {
        tunnel_only(*f);
        sa.df = choice<df_mode>(*f, {{"copy", df_mode::copy}, {"set", df_mode::set}, {"clear", df_mode::clear}});
    }
    if (const field* f = m.find("dscp")) {
        tunnel_only(*f);
        if (is_scalar(*f) && scalar(*f) == "copy") {
            sa.dscp = dscp_mode::copy;
        } else {
            const std::string value = text(*f, "copy or a number 0..63");
            const auto parsed = parse_uint(value);
            if (!parsed || *parsed > 63) {
                fail(*f, quoted(value) + " is not a DSCP value", "write copy or a number 0..63");
            }
            sa.dscp = dscp_mode::set;
            sa.dscp_value = static_cast<uint8_t>(*parsed);
        }
    }
    if (const field* f = m.find("ttl")) {
        tunnel_only(*f);
        sa.ttl = static_cast<uint8_t>(number(*f, 1, 255));
    }
    if (const field* f = m.find("tfc-pad")) {
        tunnel_only(*f);
        if (!esp) {
            fail(*f, "traffic flow confidentiality padding (RFC 4303 §2.7) applies to ESP only", "remove tfc-pad");
        }
        sa.tfc_pad_to = static_cast<uint16_t>(number(*f, 0, 1500));
    }
    if (const field* f = m.find("initial-sequence")) {
        // Testing aid. Without ESN the sequence number is 32 bits (RFC 4303 §2.2).
        sa.initial_sequence = number(*f, 0, sa.esn ? UINT64_MAX : UINT32_MAX);
    }
}

sa_config loader::parse_sa(const YAML::Node& node, const std::string& path) const {
    // A built tree has no line:column; its path names the item.
    return parse_sa_fields(read_mapping(node, path, sa_keys, "one security association"),
                           tree_ ? path : origin(node));
}

sa_config loader::parse_sa(const plain_value& value, const std::string& path) const {
    return parse_sa_fields(read_mapping(value, path, sa_keys, "one security association"), path);
}

sa_config loader::parse_sa_fields(const mapping& m, std::string origin) const {
    sa_config sa;
    sa.origin = std::move(origin);
    try {
        parse_identity(m, sa);
        parse_transforms(m, sa);
        parse_selectors(m, sa);
        parse_options(m, sa);
    } catch (...) {
        wipe_keys(sa);
        throw;
    }
    return sa;
}

void loader::check_unique(const std::vector<sa_config>& sas, const std::vector<YAML::Node>& spi_nodes,
                          const std::function<std::string(size_t)>& path_of) const {
    // RFC 4301 §4.1: an outbound SA is chosen by policy, so its SPI must be unique among outbound SAs;
    // an inbound SA is found by SPI. RFC 4301 lets a receiver add the protocol to the look-up, but the
    // data plane names an SA by direction and SPI (its SA table, the control API's delete-sa and
    // update-sa): ESP and AH SAs with one inbound SPI passed this check and then failed start-up and
    // reload half-way, so the SPI is unique among inbound SAs whatever the protocol.
    std::map<std::tuple<direction, uint32_t>, size_t> seen;
    for (size_t i = 0; i < sas.size(); ++i) {
        const auto& sa = sas[i];
        const auto [it, inserted] = seen.emplace(std::make_tuple(sa.dir, sa.spi), i);
        if (!inserted) {
            std::string which = sa.dir == direction::inbound ? "inbound" : "outbound";
            fail(spi_nodes[i], path_of(i) + ".spi",
                 "duplicate SPI " + hex32(sa.spi) + " among " + which + " SAs; first used at " + sas[it->second].origin,
                 "give each " + which + " SA its own SPI");
        }
    }
}

void loader::parse_security_associations(const field& f, gateway_config& config) const {
    if (!f.value.IsSequence()) {
        fail(f, "expected a list of security associations, got " + std::string(node_kind(f.value)),
             "start each SA with \"- spi: ...\", or write [] for none");
    }
    auto& sas = config.security_associations;
    // Reserve up front: a reallocation would leave copies of keys in freed memory.
    sas.reserve(f.value.size());
    std::vector<YAML::Node> spi_nodes;
    std::vector<std::string> paths;
    size_t index = 0;
    for (const auto& item : f.value) {
        std::string path = "security-associations[" + std::to_string(index++) + "]";
        sas.push_back(parse_sa(item, path));
        spi_nodes.push_back(item["spi"]);
        paths.push_back(std::move(path));
    }
    check_unique(sas, spi_nodes, [&](size_t i) { return paths[i]; });
}

// --- Helpers for the dataplane, interfaces, routes, neighbors and policies sections ----------------

const YAML::Node& loader::sequence(const field& f, std::string_view what, std::string_view fix) const {
    if (!f.value.IsSequence()) {
        fail(f, "expected a list of " + std::string(what) + ", got " + std::string(node_kind(f.value)),
             std::string(fix) + ", or write [] for none");
    }
    return f.value;
}

mac_address loader::mac(const field& f) const {
    const std::string value = text(f, "a MAC address such as 02:00:00:00:00:01");
    const auto parsed = parse_mac(value);
    if (!parsed) {
        fail(f, quoted(value) + " is not a MAC address",
             "write six two-digit hex bytes separated by colons, e.g. \"02:00:00:00:00:01\" (quote it)");
    }
    const mac_address& mac = *parsed;
    if (mac == mac_address{}) {
        fail(f, "00:00:00:00:00:00 is not a station address", "use the port's real address or a locally "
                                                             "administered one such as 02:00:00:00:00:01");
    }
    // IEEE 802: the lowest bit of the first octet marks group (multicast and broadcast) addresses.
    if ((mac[0] & 0x01) != 0) {
        mac_address unicast = mac;
        unicast[0] = static_cast<uint8_t>(unicast[0] & ~0x01);
        fail(f, quoted(value) + " is a multicast address (the lowest bit of the first byte is set)",
             "use a unicast address, e.g. " + quoted(to_string(unicast)));
    }
    return mac;
}

std::pair<ip_address, uint8_t> loader::interface_address(const field& f) const {
    const std::string value = text(f, "an address with its subnet length, such as 198.51.100.1/24");
    const auto slash = value.find('/');
    const auto address = parse_address(std::string_view(value).substr(0, slash));
    if (!address) {
        fail(f, quoted(value) + " is not an IPv4 or IPv6 address with a subnet length",
             "write e.g. 198.51.100.1/24 or 2001:db8::1/64");
    }
    const unsigned width = address->is_v4() ? 32 : 128;
    if (slash == std::string::npos) {
        fail(f, quoted(value) + " has no subnet length",
             "write the address with its subnet length, e.g. " + value + (address->is_v4() ? "/24" : "/64"));
    }
    const std::string_view length_text = std::string_view(value).substr(slash + 1);
    const auto length = parse_uint(length_text);
    if (!length || *length < 1 || *length > width || length_text.starts_with("0x") || length_text.starts_with("0X")) {
        fail(f, quoted(value) + " has an invalid subnet length",
             "the length after '/' must be 1.." + std::to_string(width));
    }
    const auto bits = static_cast<uint8_t>(*length);
    const ip_prefix subnet = network_of(*address, bits);
    // The address is this gateway's own, so it must be usable as a host address on the link. /31 and /32
    // (RFC 3021) and IPv6 /127 and /128 (RFC 6164) have no network or broadcast address to avoid.
    if (bits < width - 1) {
        if (*address == subnet.address) {
            ip_address first = subnet.address;
            first.bytes[width / 8 - 1] |= 1;
            fail(f,
                 quoted(value) + " is the " +
                     (address->is_v4() ? std::string("network address") : "subnet-router anycast address (RFC 4291 §2.6.1)") +
                     " of " + to_string(subnet) + ", not a host address",
                 "write this gateway's own address on the link with the subnet length, e.g. " + to_string(first) + "/" +
                     std::to_string(bits));
        }
        if (address->is_v4()) {
            ip_address broadcast = subnet.address;
            for (unsigned bit = bits; bit < width; ++bit) {
                broadcast.bytes[bit / 8] = static_cast<uint8_t>(broadcast.bytes[bit / 8] | (0x80u >> (bit % 8)));
            }
            if (*address == broadcast) {
                ip_address last = broadcast;
                last.bytes[3] = static_cast<uint8_t>(last.bytes[3] & ~1u);
                fail(f, quoted(value) + " is the broadcast address of " + to_string(subnet) + ", not a host address",
                     "write this gateway's own address on the link, e.g. " + to_string(last) + "/" +
                         std::to_string(bits));
            }
        }
    }
    return {*address, bits};
}

std::pair<uint16_t, uint16_t> loader::port_range(const field& f) const {
    const std::string value = text(f, "a port (80) or a range (\"1000-2000\")");
    const auto dash = value.find('-');
    const std::string fix = "write a port 0..65535 such as 80, or a range such as \"1000-2000\"";
    if (dash == std::string::npos) {
        const auto port = parse_uint(value);
        if (!port || *port > 65535) {
            fail(f, quoted(value) + " is not a port", fix);
        }
        return {static_cast<uint16_t>(*port), static_cast<uint16_t>(*port)};
    }
    const auto low = parse_uint(std::string_view(value).substr(0, dash));
    const auto high = parse_uint(std::string_view(value).substr(dash + 1));
    if (!low || !high || *low > 65535 || *high > 65535) {
        fail(f, quoted(value) + " is not a port range", fix);
    }
    if (*low > *high) {
        fail(f, "the range " + quoted(value) + " runs backwards",
             "write the lower port first: \"" + std::to_string(*high) + "-" + std::to_string(*low) + "\"");
    }
    return {static_cast<uint16_t>(*low), static_cast<uint16_t>(*high)};
}

const interface_config& loader::interface_named(const field& f,
                                                const std::vector<interface_config>& interfaces) const {
    const std::string name = text(f, "the name of an interface");
    std::vector<std::string_view> names;
    for (const auto& interface : interfaces) {
        if (interface.name == name) {
            return interface;
        }
        names.push_back(interface.name);
    }
    if (names.empty()) {
        fail(f, "no interface named " + quoted(name) + ": the file defines no interfaces",
             "define it under interfaces: (name, device, address)");
    }
    const auto suggestion = closest(name, names);
    fail(f, "no interface named " + quoted(name),
         suggestion.empty() ? "use one of: " + join(names, ", ") + ", or define it under interfaces:"
                            : "did you mean " + quoted(suggestion) + "?");
}

// "198.51.100.0/24 (outside), 192.168.1.0/24 (inside)" for fixes that point at the connected subnets.
std::string subnet_list(const std::vector<interface_config>& interfaces, uint8_t family) {
    std::string out;
    for (const auto& interface : interfaces) {
        for (const auto& subnet : subnets_of(interface)) {
            if (subnet.address.family != family) {
                continue;
            }
            if (!out.empty()) {
                out += ", ";
            }
            out += to_string(subnet) + " (" + interface.name + ")";
        }
    }
    return out;
}

// "198.51.100.1 (outside), 192.168.1.1 (inside)".
std::string address_list(const std::vector<interface_config>& interfaces, uint8_t family) {
    std::string out;
    for (const auto& interface : interfaces) {
        for (const auto& a : addresses_of(interface)) {
            if (a.address.family != family) {
                continue;
            }
            if (!out.empty()) {
                out += ", ";
            }
            out += to_string(a.address) + " (" + interface.name + ")";
        }
    }
    return out;
}

// --- dataplane ------------------------------------------------------------------------------------

dataplane_config loader::parse_dataplane(const field& f) const {
    const mapping m = read_mapping(f.value, f.path, dataplane_keys, "data plane process settings");
    dataplane_config dp;
    if (const field* workers = m.find("workers")) {
        dp.workers = static_cast<uint32_t>(number(*workers, 1, max_workers));
    }
    if (const field* eal = m.find("eal")) {
        const YAML::Node& list =
            sequence(*eal, "EAL arguments", "write them as a list of strings, e.g. eal: [\"--log-level=7\"]");
        size_t index = 0;
        for (const auto& item : list) {
            const field arg{"eal", eal->path + "[" + std::to_string(index++) + "]", item, item};
            const std::string value = text(arg, "one EAL argument as a string");
            if (value.empty()) {
                fail(arg, "an empty EAL argument", "remove it");
            }
            for (char c : value) {
                if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
                    fail(arg, "the argument contains " + describe_char(c), "write one argument per list item");
                }
            }
            // These duplicate settings espresso derives itself; two sources would disagree.
            if (value == "--no-huge") {
                fail(arg, "--no-huge is set by hugepages: false, which also sizes the memory pool to match",
                     "remove it and write hugepages: false");
            }
            if (value == "--vdev" || value.starts_with("--vdev=")) {
                fail(arg, "virtual devices are created from interfaces[].device",
                     "remove it and add an interface with device: net_...");
            }
            dp.eal.push_back(value);
        }
    }
    if (const field* hugepages = m.find("hugepages")) {
        dp.hugepages = boolean(*hugepages);
    }
    if (const field* idle = m.find("idle")) {
        dp.idle = choice<idle_mode>(*idle, {{"adaptive", idle_mode::adaptive}, {"poll", idle_mode::poll}});
    }
    if (const field* f = m.find("reassembly-datagrams")) {
        // The table is sized for this many per worker (about 400 bytes of DPDK state each).
        dp.reassembly_datagrams = static_cast<uint32_t>(number(*f, 16, 16384));
    }
    if (const field* f = m.find("reassembly-timeout-ms")) {
        // RFC 791 §3.2 leaves the timer to the implementation (Linux: 30 s); fragments of one packet
        // arrive within milliseconds, and a long timer only lets an attacker hold buffers longer.
        dp.reassembly_timeout_ms = static_cast<uint32_t>(number(*f, 100, 60000));
    }
    if (const field* socket = m.find("control-socket")) {
        const std::string value = text(*socket, "an absolute path such as /run/espresso/espresso.sock");
        if (!value.starts_with("/")) {
            fail(*socket, quoted(value) + " is not an absolute path",
                 "write a path starting with '/', e.g. /run/espresso/espresso.sock (abstract sockets are not supported)");
        }
        if (value.back() == '/') {
            fail(*socket, quoted(value) + " names a directory", "add the socket's file name, e.g. " + value + "espresso.sock");
        }
        if (value.size() > max_socket_path) {
            fail(*socket,
                 "the path has " + std::to_string(value.size()) + " bytes; a Unix socket path holds at most " +
                     std::to_string(max_socket_path) + " (sockaddr_un.sun_path is 108 bytes with the NUL)",
                 "use a shorter path, e.g. under /run/espresso/");
        }
        for (char c : value) {
            if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
                fail(*socket, "the path contains " + describe_char(c), "remove it");
            }
        }
        dp.control_socket = value;
    }
    if (const field* reachable = m.find("neighbor-reachable-time")) {
        dp.neighbor_reachable_time = static_cast<uint32_t>(number(*reachable, 1, 3600));
    }
    if (const field* size = m.find("neighbor-table-size")) {
        dp.neighbor_table_size = static_cast<uint32_t>(number(*size, 64, 1 << 20));
    }
    if (const field* f = m.find("max-sas")) {
        // Tables are allocated for this many at start-up: about 150 bytes per SA per worker plus the
        // main lcore's copy (docs/configuration.md). 2^24 keeps a 64-worker gateway's tables addressable.
        dp.max_sas = static_cast<uint32_t>(number(*f, 1024, 1 << 24));
    }
    return dp;
}

// --- interfaces -----------------------------------------------------------------------------------

interface_config loader::parse_interface(const YAML::Node& node, const std::string& path,
                                         const gateway_config& config) const {
    const mapping m = read_mapping(node, path, interface_keys, "one interface");
    interface_config ic;
    ic.origin = origin(node);

    const field& name = require(m, "name", "add name: a short name such as outside");
    ic.name = text(name, "an interface name");
    if (ic.name.empty() || ic.name.size() > max_interface_name) {
        fail(name, "the name " + quoted(ic.name) + " has " + std::to_string(ic.name.size()) +
                       " characters; names have 1.." + std::to_string(max_interface_name) +
                       " because the kernel TAP interface \"dp-<name>\" must fit in 15 characters",
             "use a shorter name such as outside or lan0");
    }
    for (char c : ic.name) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
        if (!ok) {
            fail(name, "the name " + quoted(ic.name) + " contains " + describe_char(c),
                 "use only letters, digits, '_' and '-' (it becomes part of a kernel interface name)");
        }
    }
    for (const auto& earlier : config.interfaces) {
        if (earlier.name == ic.name) {
            fail(name, "interface name " + quoted(ic.name) + " is already used at " + earlier.origin,
                 "give each interface its own name");
        }
    }

    const field& device = require(m, "device", "add device: a PCI address (0000:03:00.0) or a vdev such as "
                                               "net_af_packet0,iface=eth0");
    ic.device = text(device, "a PCI address or a DPDK vdev spec");
    const std::string device_fix = "write a PCI address such as 0000:03:00.0 or a DPDK vdev such as "
                                   "net_af_packet0,iface=eth0";
    if (ic.device.empty()) {
        fail(device, "the device is empty", device_fix);
    }
    for (char c : ic.device) {
        if (!device_char_allowed(c)) {
            fail(device,
                 quoted(ic.device) + " contains " + describe_char(c) +
                     "; device specs are passed to DPDK's EAL as arguments",
                 "use only letters, digits and _ . , : = / + - @ (no spaces, quotes or shell metacharacters)");
        }
    }
    // The device's identity is what comes before the first ',' (the rest are driver arguments).
    const std::string_view device_name = std::string_view(ic.device).substr(0, ic.device.find(','));
    std::string identity;
    bool pci = false;
    if (device_name.starts_with("net_")) {
        if (device_name.size() == 4) {
            fail(device, quoted(ic.device) + " names no driver after net_", device_fix);
        }
        identity = device_name;
    } else {
        identity = pci_address(device_name);
        pci = !identity.empty();
        if (!pci) {
            std::string fix = device_fix;
            if (device_name.starts_with("eth_")) {
                fix = "DPDK names virtual devices net_...: did you mean " + quoted("net_" + ic.device.substr(4)) + "?";
            } else if (device_name.find_first_of(":=.") == std::string_view::npos) {
                fix = "to attach to the kernel interface " + quoted(device_name) +
                      ", write net_af_packet0,iface=" + std::string(device_name) + " (each vdev needs its own number)";
            }
            fail(device, quoted(ic.device) + " is neither a PCI address (DDDD:BB:DD.F or BB:DD.F) nor a DPDK vdev "
                         "(net_...)",
                 fix);
        }
        const auto& eal = config.dataplane.eal;
        if (std::find(eal.begin(), eal.end(), "--no-pci") != eal.end()) {
            fail(device, "PCI device " + identity + " cannot be probed: dataplane.eal contains --no-pci",
                 "remove --no-pci from dataplane.eal; espresso adds it by itself when no interface is a PCI device");
        }
    }
    for (const auto& earlier : config.interfaces) {
        const std::string_view other = std::string_view(earlier.device).substr(0, earlier.device.find(','));
        const std::string other_identity = pci ? pci_address(other) : std::string(other);
        if (other_identity == identity) {
            fail(device, "device " + quoted(identity) + " is already used by interface " + quoted(earlier.name) +
                             " at " + earlier.origin,
                 "give each interface its own device (vdevs need distinct numbers: net_af_packet0, net_af_packet1)");
        }
    }

    const field& address = require(m, "address", "add address: this gateway's address with the subnet length, "
                                                 "e.g. 198.51.100.1/24");
    // One address, or a list of them: at most one IPv4 and one IPv6 (dual stack on one link).
    std::vector<field> address_fields;
    if (address.value.IsSequence()) {
        if (address.value.size() == 0 || address.value.size() > 2) {
            fail(address, "expected one or two addresses, got " + std::to_string(address.value.size()),
                 "write one IPv4 and/or one IPv6 address with its subnet length, e.g. "
                 "[198.51.100.1/24, \"2001:db8:1::1/64\"]");
        }
        size_t index = 0;
        for (const auto& item : address.value) {
            address_fields.push_back(field{"address", address.path + "[" + std::to_string(index++) + "]", item, item});
        }
    } else {
        address_fields.push_back(address);
    }
    for (const field& af : address_fields) {
        config::interface_address a;
        std::tie(a.address, a.prefix_length) = interface_address(af);
        for (const auto& mine : ic.addresses) {
            if (mine.address.family == a.address.family) {
                fail(af, "interface " + quoted(ic.name) + " already has an " +
                             std::string(family_name(a.address.family)) + " address, " + to_string(mine.address),
                     "give an interface at most one IPv4 and one IPv6 address");
            }
        }
        const ip_prefix subnet = network_of(a.address, a.prefix_length);
        for (const auto& earlier : config.interfaces) {
            if (has_address(earlier, a.address)) {
                fail(af, "address " + to_string(a.address) + " is already used by interface " +
                             quoted(earlier.name) + " at " + earlier.origin,
                     "give each interface its own address");
            }
            for (const ip_prefix& other : subnets_of(earlier)) {
                if (prefixes_overlap(subnet, other)) {
                    fail(af,
                         "subnet " + to_string(subnet) + " overlaps subnet " + to_string(other) + " of interface " +
                             quoted(earlier.name) + " (" + earlier.origin + "); a destination on both could not be "
                             "routed",
                         "give each interface its own subnet, and reach networks beyond a link with routes:");
                }
            }
        }
        ic.addresses.push_back(a);
    }
    ic.address = ic.addresses.front().address;
    ic.prefix_length = ic.addresses.front().prefix_length;

    if (const field* f = m.find("mac")) {
        ic.mac = mac(*f);
    }
    if (const field* f = m.find("mtu")) {
        const uint64_t min = address_of(ic, 6) ? min_mtu_v6 : min_mtu_v4;
        const std::string value = text(*f, "a number");
        const auto parsed = parse_uint(value);
        if (parsed && *parsed < min && *parsed >= min_mtu_v4) {
            fail(*f, "an IPv6 link needs an MTU of at least 1280 (RFC 8200 §5)", "use an mtu of 1280..9000");
        }
        if (parsed && *parsed < min) {
            fail(*f, quoted(value) + " is below the IPv4 minimum of 576: every IPv4 host must accept 576-byte "
                                     "datagrams (RFC 791)",
                 "use an mtu of " + std::to_string(min) + ".." + std::to_string(max_mtu));
        }
        ic.mtu = static_cast<uint16_t>(number(*f, min, max_mtu));
    }
    return ic;
}

// --- routes ---------------------------------------------------------------------------------------

route_config loader::parse_route(const YAML::Node& node, const std::string& path, const gateway_config& config) const {
    const mapping m = read_mapping(node, path, route_keys, "one static route");
    route_config route;
    route.origin = origin(node);
    const field& destination =
        require(m, "destination", "add destination: the network this route reaches, e.g. 203.0.113.0/24");
    route.destination = prefix(destination);
    const uint8_t family = route.destination.address.family;
    for (const auto& earlier : config.routes) {
        if (earlier.destination == route.destination) {
            fail(destination, "a route to " + to_string(route.destination) + " is already defined at " + earlier.origin,
                 "keep one route per destination");
        }
    }

    const field* via = m.find("via");
    const field* interface = m.find("interface");
    if (via == nullptr && interface == nullptr) {
        fail(m.node(), m.path(), "a route needs via (the next-hop address) or interface (for a directly connected "
                                 "destination)",
             "add via: the next-hop router's address on one of the interface subnets");
    }
    const interface_config* out = nullptr;
    if (interface != nullptr) {
        out = &interface_named(*interface, config.interfaces);
        route.interface = out->name;
    }
    if (via == nullptr) {
        // Directly connected: hosts in `destination` are resolved by ARP/ND on `out`, which needs a
        // source address of the same family there.
        if (!address_of(*out, family)) {
            fail(*interface,
                 "interface " + quoted(out->name) + " has no " + std::string(family_name(family)) +
                     " address, so it cannot reach " + std::string(family_name(family)) + " destination " +
                     to_string(route.destination) + " directly",
                 "add via: a next hop, or name an interface with an " + std::string(family_name(family)) + " address");
        }
        return route;
    }

    route.via = address(*via);
    if (route.via.family != family) {
        fail(*via, "the next hop is " + std::string(family_name(route.via.family)) + " but the destination " +
                       to_string(route.destination) + " is " + std::string(family_name(family)),
             "use an " + std::string(family_name(family)) + " next-hop address");
    }
    for (const auto& ic : config.interfaces) {
        if (has_address(ic, route.via)) {
            fail(*via, "next hop " + to_string(route.via) + " is this gateway's own address on interface " +
                           quoted(ic.name),
                 "use the address of the next router on that link");
        }
    }
    // An IPv6 link-local next hop (fe80::/10, what routers announce; RFC 4861 §8) is on every link:
    // the interface says which one.
    if (family == 6 && route.via.bytes[0] == 0xfe && (route.via.bytes[1] & 0xc0) == 0x80) {
        if (out == nullptr) {
            fail(*via, "next hop " + to_string(route.via) + " is a link-local address, which exists on every link",
                 "add interface: the name of the link the router " + to_string(route.via) + " is on");
        }
        return route;
    }
    if (out != nullptr) {
        const auto a = address_of(*out, family);
        const ip_prefix subnet = a ? network_of(a->address, a->prefix_length) : subnet_of(*out);
        if (!a || !prefix_contains(subnet, route.via)) {
            fail(*via, "next hop " + to_string(route.via) + " is not on interface " + quoted(out->name) + "'s subnet " +
                           (a ? to_string(subnet) : "(it has no " + std::string(family_name(family)) + " address)"),
                 a ? "use a next hop in " + to_string(subnet) + ", or name the interface whose subnet holds it"
                   : "name the interface whose subnet holds it, or give this interface an " +
                         std::string(family_name(family)) + " address");
        }
        return route;
    }
    for (const auto& ic : config.interfaces) {
        for (const ip_prefix& subnet : subnets_of(ic)) {
            if (prefix_contains(subnet, route.via)) {
                return route;
            }
        }
    }
    const std::string subnets = subnet_list(config.interfaces, family);
    fail(*via, "next hop " + to_string(route.via) + " is not on any interface's subnet, so it cannot be reached",
         subnets.empty() ? "define the interface on the next hop's link under interfaces: (no interface has an " +
                               std::string(family_name(family)) + " address)"
                         : "use a next hop on a connected subnet: " + subnets);
}

// --- neighbors ------------------------------------------------------------------------------------

neighbor_config loader::parse_neighbor(const YAML::Node& node, const std::string& path,
                                       const gateway_config& config) const {
    const mapping m = read_mapping(node, path, neighbor_keys, "one static neighbor entry");
    neighbor_config neighbor;
    neighbor.origin = origin(node);
    const field& address_field = require(m, "address", "add address: the neighbor's IP address");
    const field& mac_field = require(m, "mac", "add mac: the neighbor's MAC address, e.g. \"02:00:00:00:00:fe\"");
    const field& interface = require(m, "interface", "add interface: the name of the link the neighbor is on");
    neighbor.address = address(address_field);
    neighbor.mac = mac(mac_field);
    const interface_config& on = interface_named(interface, config.interfaces);
    neighbor.interface = on.name;
    const auto same_family = address_of(on, neighbor.address.family);
    const ip_prefix subnet =
        same_family ? network_of(same_family->address, same_family->prefix_length) : subnet_of(on);
    if (has_address(on, neighbor.address)) {
        fail(address_field, to_string(neighbor.address) + " is this gateway's own address on " + quoted(on.name),
             "a neighbor entry is for another host on the link");
    }
    if (!prefix_contains(subnet, neighbor.address)) {
        const std::string subnets = subnet_list(config.interfaces, neighbor.address.family);
        fail(address_field,
             to_string(neighbor.address) + " is not on interface " + quoted(on.name) + "'s subnet " + to_string(subnet),
             "use an address in " + to_string(subnet) + ", or name the interface whose subnet holds it (" +
                 (subnets.empty() ? std::string("none has an ") + std::string(family_name(neighbor.address.family)) +
                                        " address"
                                  : subnets) +
                 ")");
    }
    for (const auto& earlier : config.neighbors) {
        if (earlier.address == neighbor.address) {
            fail(address_field, "a neighbor entry for " + to_string(neighbor.address) + " is already defined at " +
                                    earlier.origin,
                 "keep one entry per address");
        }
    }
    return neighbor;
}

// --- policies -------------------------------------------------------------------------------------

struct protocol_name {
    std::string_view name;
    uint8_t number;
};
// Names as in /etc/protocols (IANA protocol numbers); "any" is our 0.
constexpr std::array<protocol_name, 9> protocol_names{{{"any", 0},
                                                       {"icmp", 1},
                                                       {"tcp", 6},
                                                       {"udp", 17},
                                                       {"gre", 47},
                                                       {"esp", 50},
                                                       {"ah", 51},
                                                       {"icmpv6", 58},
                                                       {"sctp", 132}}};

bool has_ports(uint8_t protocol) noexcept {
    return protocol == 6 || protocol == 17 || protocol == 132; // RFC 4301 §4.4.1.1
}

policy_config loader::parse_policy(const YAML::Node& node, const std::string& path, const gateway_config& config,
                                   bool check_spi) const {
    const mapping m = read_mapping(node, path, policy_keys, "one security policy");
    policy_config policy;
    policy.origin = origin(node);
    const field& local = require(m, "local", "add local: the prefix on this gateway's side (0.0.0.0/0 for any)");
    const field& remote = require(m, "remote", "add remote: the prefix on the far side (0.0.0.0/0 for any)");
    policy.local = prefix(local);
    policy.remote = prefix(remote);
    const uint8_t family = policy.local.address.family;
    if (policy.remote.address.family != family) {
        fail(remote,
             "local is " + std::string(family_name(family)) + " but remote is " +
                 std::string(family_name(policy.remote.address.family)),
             "use two prefixes of the same family; write separate policies for IPv4 and IPv6");
    }

    const field* protocol = m.find("protocol");
    if (protocol != nullptr) {
        const std::string value = text(*protocol, "a protocol name or number 0..255");
        std::vector<std::string_view> names;
        bool found = false;
        for (const auto& entry : protocol_names) {
            names.push_back(entry.name);
            if (entry.name == value) {
                policy.protocol = entry.number;
                found = true;
            }
        }
        if (!found) {
            const auto number = parse_uint(value);
            const std::string expected = join(names, ", ") + " or a number 0..255";
            if (number && *number > 255) {
                fail(*protocol, quoted(value) + " is out of range", "use " + expected);
            }
            if (!number) {
                const std::string lower = lowercase(value);
                const auto suggestion = closest(lower, names);
                fail(*protocol, "unknown protocol " + quoted(value) + "; expected " + expected,
                     suggestion.empty() ? "use " + expected : "did you mean " + quoted(suggestion) + "?");
            }
            policy.protocol = static_cast<uint8_t>(*number);
        }
        if (policy.protocol == 1 && family == 6) {
            fail(*protocol, "protocol 1 (icmp) is ICMP for IPv4; these selectors are IPv6",
                 "write icmpv6 (protocol 58)");
        }
        if (policy.protocol == 58 && family == 4) {
            fail(*protocol, "protocol 58 (icmpv6) is ICMP for IPv6; these selectors are IPv4", "write icmp (protocol 1)");
        }
    }
    for (const auto& [name, low, high] :
         {std::tuple<std::string_view, uint16_t*, uint16_t*>{"local-ports", &policy.local_port_min, &policy.local_port_max},
          std::tuple<std::string_view, uint16_t*, uint16_t*>{"remote-ports", &policy.remote_port_min,
                                                             &policy.remote_port_max}}) {
        const field* f = m.find(name);
        if (f == nullptr) {
            continue;
        }
        if (!has_ports(policy.protocol)) {
            fail(*f,
                 "ports apply only to tcp, udp and sctp (RFC 4301 §4.4.1.1)" +
                     std::string(protocol == nullptr ? "; this policy matches any protocol" : ""),
                 "add protocol: tcp (or udp), or remove " + std::string(name));
        }
        std::tie(*low, *high) = port_range(*f);
    }

    policy.action = choice<policy_action>(
        require(m, "action", "add action: protect, bypass, discard or trap"),
        {{"protect", policy_action::protect},
         {"bypass", policy_action::bypass},
         {"discard", policy_action::discard},
         {"trap", policy_action::trap}});
    if (const field* f = m.find("priority")) {
        policy.priority = static_cast<uint32_t>(number(*f, 0, UINT32_MAX));
    }

    const field* spi_field = m.find("spi");
    if (policy.action != policy_action::protect) {
        if (spi_field != nullptr) {
            fail(*spi_field, "only protect policies name an SA", "remove spi, or write action: protect");
        }
        return policy;
    }
    if (spi_field == nullptr) {
        fail(m.node(), m.path(), "required key \"spi\" is missing; a protect policy names the outbound SA to use",
             "add spi: the SPI of an outbound SA in security-associations, e.g. spi: 0x1001");
    }
    policy.spi = spi(*spi_field);
    if (!check_spi) {
        return policy;
    }
    const sa_config* sa = nullptr;
    for (const auto& candidate : config.security_associations) {
        if (candidate.dir == direction::outbound && candidate.spi == policy.spi) {
            sa = &candidate;
        }
    }
    if (sa == nullptr) {
        std::vector<std::string> outbound;
        for (const auto& candidate : config.security_associations) {
            if (candidate.dir == direction::outbound) {
                outbound.push_back(hex32(candidate.spi));
            }
        }
        std::string list;
        for (const auto& s : outbound) {
            list += (list.empty() ? "" : ", ") + s;
        }
        fail(*spi_field, "no outbound SA with SPI " + hex32(policy.spi) + " in security-associations",
             outbound.empty() ? std::string("define the outbound SA under security-associations:")
                              : "use the SPI of an outbound SA (" + list + "), or define one with this SPI");
    }
    // The peer checks decrypted packets against the SA's selectors (RFC 4301 §5.2), so a policy wider
    // than its SA would send traffic the peer drops.
    if (!prefix_contains(sa->local, policy.local)) {
        fail(local,
             "protect policy local " + to_string(policy.local) + " is not inside local selector " +
                 to_string(sa->local) + " of SA " + hex32(sa->spi) + " (" + sa->origin + ")",
             "narrow the policy to " + to_string(sa->local) + ", or widen the SA's selectors on both gateways");
    }
    if (!prefix_contains(sa->remote, policy.remote)) {
        fail(remote,
             "protect policy remote " + to_string(policy.remote) + " is not inside remote selector " +
                 to_string(sa->remote) + " of SA " + hex32(sa->spi) + " (" + sa->origin + ")",
             "narrow the policy to " + to_string(sa->remote) + ", or widen the SA's selectors on both gateways");
    }
    return policy;
}

// Tunnel endpoints must be this gateway's own addresses: the outer source of what we send, the outer
// destination of what we receive.
void loader::check_sa_endpoints(const field& sas, const gateway_config& config) const {
    if (config.interfaces.empty()) {
        return;
    }
    for (size_t i = 0; i < config.security_associations.size(); ++i) {
        const sa_config& sa = config.security_associations[i];
        const bool outbound = sa.dir == direction::outbound;
        const ip_address& ours = outbound ? sa.source : sa.destination;
        if (ours.family == 0) {
            continue; // transport mode without explicit addresses
        }
        bool found = false;
        for (const auto& ic : config.interfaces) {
            found = found || has_address(ic, ours);
        }
        if (found) {
            continue;
        }
        const std::string_view key = outbound ? "source" : "destination";
        const std::string addresses = address_list(config.interfaces, ours.family);
        fail(sas.value[i][std::string(key)],
             "security-associations[" + std::to_string(i) + "]." + std::string(key),
             std::string(outbound ? "outbound SA source " : "inbound SA destination ") + to_string(ours) +
                 " is not an address of any interface",
             addresses.empty() ? "add an interface with this address (no interface has an " +
                                     std::string(family_name(ours.family)) + " address)"
                               : "use one of this gateway's interface addresses: " + addresses +
                                     ", or add an interface with this address");
    }
}

// --- ike ------------------------------------------------------------------------------------------
// The IKEv2 daemon's settings. The data plane ignores them; they are checked here all the same, so a
// file is either valid for every process that reads it or for none.

// "lan", "branch-1": names the operator types in commands and reads in logs.
constexpr size_t max_ike_name = 32;

// "90s", "30m", "4h", "1d" or a plain number of seconds.
uint64_t loader::duration(const field& f, uint64_t max) const {
    const std::string expected = "a duration such as 90s, 30m, 4h or 1d, or a number of seconds";
    const std::string value = text(f, expected);
    std::string_view digits = value;
    uint64_t unit = 1;
    if (!digits.empty()) {
        switch (digits.back()) {
        case 's':
            unit = 1;
            break;
        case 'm':
            unit = 60;
            break;
        case 'h':
            unit = 3600;
            break;
        case 'd':
            unit = 86400;
            break;
        default:
            unit = 0;
            break;
        }
        if (unit != 0) {
            digits.remove_suffix(1);
        } else {
            unit = 1;
        }
    }
    const bool decimal = !digits.empty() && digits.size() <= 19 &&
                         std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!decimal) {
        fail(f, quoted(value) + " is not a duration", "write " + expected);
    }
    const uint64_t count = std::stoull(std::string(digits));
    if (count > max / unit) {
        fail(f, quoted(value) + " is too long", "use at most " + std::to_string(max) + " seconds");
    }
    return count * unit;
}

std::string loader::ike_name(const field& f, std::string_view what) const {
    const std::string value = text(f, "a name such as \"branch\"");
    if (value.empty() || value.size() > max_ike_name) {
        fail(f, std::string(what) + " name must have 1.." + std::to_string(max_ike_name) + " characters",
             "use a short name such as \"branch\"");
    }
    for (char c : value) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                        c == '_' || c == '.';
        if (!ok) {
            fail(f, std::string(what) + " name " + quoted(value) + " contains " + describe_char(c),
                 "use letters, digits, '-', '_' and '.' only");
        }
    }
    return value;
}

std::vector<ike_proposal_config> loader::ike_proposals(const field& f, bool esp, bool allow_legacy) const {
    const YAML::Node& list = sequence(
        f, "proposal strings", esp ? "write e.g. esp-proposals: [aes256gcm16]" : "write e.g. proposals: [aes256-sha256-modp2048]");
    if (list.size() == 0) {
        fail(f, "the list is empty, so nothing could ever be negotiated",
             "list at least one proposal, or remove " + std::string(f.name) + " to use the defaults");
    }
    std::vector<ike_proposal_config> out;
    size_t index = 0;
    for (const auto& item : list) {
        const field entry{f.name, f.path + "[" + std::to_string(index++) + "]", item, item};
        const std::string value = text(entry, "a proposal string such as aes256-sha256-modp2048");
        proposal_error error;
        auto parsed = parse_ike_proposal(value, esp, allow_legacy, error);
        if (!parsed) {
            fail(entry, error.problem, error.fix);
        }
        for (const auto& earlier : out) {
            if (earlier.text == value) {
                fail(entry, "proposal " + quoted(value) + " is listed twice", "keep only one of them");
            }
        }
        out.push_back(std::move(*parsed));
    }
    return out;
}

ike_identity loader::ike_id(const field& f) const {
    const std::string value = text(f, "an identity: an address, a host name, user@host, a DN, or %any");
    const ike_identity id = ::espresso::config::parse_identity(value);
    if ((id.kind == ike_id_kind::fqdn || id.kind == ike_id_kind::email) && (id.text.empty() || id.text.back() == '@')) {
        fail(f, "identity " + quoted(value) + " has no host name", "write e.g. @vpn.example.com or user@example.com");
    }
    for (char c : value) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
            fail(f, "the identity contains " + describe_char(c), "remove it");
        }
    }
    return id;
}

// Relative paths are relative to the configuration file's directory, so a file and its secrets can
// move together; "<string>" (load_string) has none and uses the working directory.
std::string loader::ike_path(const field& f, std::string_view expected) const {
    const std::string value = text(f, expected);
    if (value.empty()) {
        fail(f, "the path is empty", "write the file's path");
    }
    if (value.front() == '/') {
        return value;
    }
    const auto slash = file_.rfind('/');
    return slash == std::string::npos ? value : file_.substr(0, slash + 1) + value;
}

// A file that holds a secret (PSK, private key): must exist, be a regular file, and be closed to
// group and others, or any local user could impersonate this gateway.
void loader::check_secret_file(const field& f, const std::string& path, std::string_view what) const {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        const int error = errno;
        fail(f, std::string(what) + " " + quoted(path) + " cannot be read: " + std::strerror(error),
             "check the path and its permissions");
    }
    if (!S_ISREG(st.st_mode)) {
        fail(f, std::string(what) + " " + quoted(path) + " is not a regular file", "point at the file itself");
    }
    if ((st.st_mode & 077) != 0) {
        char mode[8];
        std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
        fail(f,
             std::string(what) + " " + quoted(path) + " is accessible to group or others (mode " + mode +
                 "), so other local users can read the secret",
             "chmod 600 " + path);
    }
}

void loader::check_readable_file(const field& f, const std::string& path, std::string_view what) const {
    std::ifstream in(path, std::ios::binary);
    struct stat st {};
    if (!in || ::stat(path.c_str(), &st) != 0) {
        const int error = errno;
        fail(f, std::string(what) + " " + quoted(path) + " cannot be read: " + std::strerror(error),
             "check the path and its permissions");
    }
    if (!S_ISREG(st.st_mode)) {
        fail(f, std::string(what) + " " + quoted(path) + " is not a regular file", "point at the PEM file itself");
    }
}

// Nothing here may put the secret into a message: errors name the field, the file and the length,
// never the value.
void loader::parse_ike_auth(const field& f, ike_auth_config& auth) const {
    // read_mapping quotes unknown keys; here a misplaced secret could be the "key", so say less.
    if (f.value.IsMap()) {
        for (auto it = f.value.begin(); it != f.value.end(); ++it) {
            const bool known = it->first.IsScalar() &&
                               std::find(ike_auth_keys.begin(), ike_auth_keys.end(), it->first.Scalar()) != ike_auth_keys.end();
            if (!known) {
                fail(it->first, f.path, "unknown key (not repeated here, as it may be the secret)",
                     "valid keys here are: " + join(ike_auth_keys, ", "));
            }
        }
    }
    const mapping m = read_mapping(f.value, f.path, ike_auth_keys, "how this gateway and the peer authenticate");
    if (const field* method = m.find("method")) {
        auth.method = choice<ike_auth_method>(*method, {{"psk", ike_auth_method::psk}, {"pubkey", ike_auth_method::pubkey}});
    }
    const field* secret = m.find("secret");
    const field* secret_file = m.find("secret-file");
    if (auth.method == ike_auth_method::psk) {
        for (std::string_view key : {"certificate", "private-key", "ca"}) {
            if (const field* other = m.find(key)) {
                fail(*other, std::string(key) + " applies to method: pubkey; this peer uses a pre-shared key",
                     "remove " + std::string(key) + ", or write method: pubkey");
            }
        }
        if (secret != nullptr && secret_file != nullptr) {
            fail(*secret_file, "both secret and secret-file are given", "keep one of them (secret-file keeps the "
                                                                        "key out of the configuration file)");
        }
        if (secret == nullptr && secret_file == nullptr) {
            fail(m.node(), m.path(), "a pre-shared key is needed: neither secret nor secret-file is given",
                 "add secret-file: /etc/espresso/<peer>.psk (mode 600), or secret: \"...\"");
        }
        if (secret != nullptr) {
            if (secret->value.IsNull() || !secret->value.IsScalar()) {
                fail(*secret, "expected the pre-shared key as a string, got " + std::string(node_kind(secret->value)),
                     "write secret: \"...\" (quoted)");
            }
            auth.psk = secret->value.Scalar();
            if (auth.psk.empty()) {
                fail(*secret, "the pre-shared key is empty", "write a long random secret, e.g. from openssl rand -base64 24");
            }
            return;
        }
        const std::string path = ike_path(*secret_file, "the path of a file holding the pre-shared key");
        check_secret_file(*secret_file, path, "secret file");
        std::ifstream in(path, std::ios::binary);
        if (!in) {
            const int error = errno;
            fail(*secret_file, "secret file " + quoted(path) + " cannot be read: " + std::strerror(error),
                 "check the path and its permissions");
        }
        constexpr size_t max_secret = 1024;
        std::string contents(max_secret + 1, '\0');
        const wipe_on_exit wipe{contents};
        in.read(contents.data(), static_cast<std::streamsize>(contents.size()));
        size_t size = static_cast<size_t>(in.gcount());
        if (size > max_secret) {
            fail(*secret_file, "secret file " + quoted(path) + " is longer than " + std::to_string(max_secret) + " bytes",
                 "write only the key into the file");
        }
        // One trailing line ending is the editor's, not the key's.
        if (size > 0 && contents[size - 1] == '\n') {
            --size;
            if (size > 0 && contents[size - 1] == '\r') {
                --size;
            }
        }
        if (size == 0) {
            fail(*secret_file, "secret file " + quoted(path) + " is empty", "write the pre-shared key into it");
        }
        auth.psk.assign(contents.data(), size);
        return;
    }
    for (const field* psk_field : {secret, secret_file}) {
        if (psk_field != nullptr) {
            fail(*psk_field, std::string(psk_field->name) + " applies to method: psk; this peer uses certificates",
                 "remove " + std::string(psk_field->name) + ", or write method: psk");
        }
    }
    const field& certificate = require(m, "certificate", "add certificate: the PEM file of this gateway's certificate");
    auth.certificate = ike_path(certificate, "the path of a PEM certificate");
    check_readable_file(certificate, auth.certificate, "certificate");
    const field& key = require(m, "private-key", "add private-key: the PEM file of this gateway's private key (mode 600)");
    auth.private_key = ike_path(key, "the path of a PEM private key");
    check_secret_file(key, auth.private_key, "private key");
    check_readable_file(key, auth.private_key, "private key");
    const field& ca = require(m, "ca", "add ca: [the PEM files of the CAs that sign the peer's certificate]");
    const YAML::Node& list = sequence(ca, "PEM files", "write e.g. ca: [/etc/espresso/ca.pem]");
    if (list.size() == 0) {
        fail(ca, "no CA, so no peer certificate could be verified", "list the CA certificates that sign the peer's certificate");
    }
    size_t index = 0;
    for (const auto& item : list) {
        const field entry{"ca", ca.path + "[" + std::to_string(index++) + "]", item, item};
        auth.ca.push_back(ike_path(entry, "the path of a PEM CA certificate"));
        check_readable_file(entry, auth.ca.back(), "CA certificate");
    }
}

void loader::parse_ike_tunnel(const YAML::Node& node, const std::string& path, const ike_peer_config& peer,
                              ike_tunnel_config& tunnel) const {
    const mapping m = read_mapping(node, path, ike_tunnel_keys, "one tunnel (CHILD_SA)");
    tunnel.origin = origin(node);
    tunnel.name = ike_name(require(m, "name", "add name: a short name for this tunnel, e.g. lan"), "tunnel");
    for (const auto& earlier : peer.tunnels) {
        if (&earlier != &tunnel && earlier.name == tunnel.name) {
            fail(m.find("name")->value, m.child_path("name"),
                 "peer " + quoted(peer.name) + " already has a tunnel named " + quoted(tunnel.name) + " at " +
                     earlier.origin,
                 "give each tunnel of a peer its own name");
        }
    }
    std::array<uint8_t, 2> families[2]{}; // [side][v4, v6] seen
    for (int side = 0; side < 2; ++side) {
        const std::string_view key = side == 0 ? "local-ts" : "remote-ts";
        const field& f = require(m, key,
                                 side == 0 ? "add local-ts: the prefixes behind this gateway, e.g. [192.168.1.0/24]"
                                           : "add remote-ts: the prefixes behind the peer, e.g. [192.168.2.0/24]");
        const YAML::Node& list = sequence(f, "prefixes", "write e.g. " + std::string(key) + ": [192.168.1.0/24]");
        if (list.size() == 0) {
            fail(f, "no traffic selector", "list at least one prefix (0.0.0.0/0 for any IPv4)");
        }
        auto& out = side == 0 ? tunnel.local_ts : tunnel.remote_ts;
        size_t index = 0;
        for (const auto& item : list) {
            const field entry{f.name, f.path + "[" + std::to_string(index++) + "]", item, item};
            const ip_prefix p = prefix(entry);
            for (const auto& earlier : out) {
                if (earlier == p) {
                    fail(entry, to_string(p) + " is listed twice", "keep only one of them");
                }
            }
            families[side][p.address.is_v4() ? 0 : 1] = 1;
            out.push_back(p);
        }
    }
    // RFC 7296 §2.9: each side's selectors are narrowed per family; a family on one side only can
    // never match any packet.
    for (int fam = 0; fam < 2; ++fam) {
        if (families[0][fam] != families[1][fam]) {
            const std::string name = fam == 0 ? "IPv4" : "IPv6";
            const bool local_has = families[0][fam] != 0;
            const field* f = m.find(local_has ? "remote-ts" : "local-ts");
            fail(*f,
                 std::string(local_has ? "local-ts" : "remote-ts") + " has " + name + " prefixes but " +
                     (local_has ? "remote-ts" : "local-ts") + " has none, so that traffic could never match",
                 "add " + name + " prefixes to " + (local_has ? "remote-ts" : "local-ts") + ", or remove the " + name +
                     " ones from " + (local_has ? "local-ts" : "remote-ts"));
        }
    }
    if (const field* f = m.find("mode")) {
        tunnel.mode = choice<ipsec_mode>(*f, {{"tunnel", ipsec_mode::tunnel}, {"transport", ipsec_mode::transport}});
    }
    if (const field* f = m.find("esp-proposals")) {
        tunnel.esp_proposals = ike_proposals(*f, true, peer.allow_legacy);
    } else {
        for (std::string_view text : {"aes256gcm16", "aes256-sha256"}) {
            std::string error;
            tunnel.esp_proposals.push_back(*parse_ike_proposal(text, true, false, error));
        }
    }
    if (const field* f = m.find("rekey-time")) {
        tunnel.rekey_time = static_cast<uint32_t>(duration(*f, UINT32_MAX / 11 * 10)); // hard limit = 110 %
    }
    if (const field* f = m.find("rekey-bytes")) {
        tunnel.rekey_bytes = number(*f, 0, UINT64_MAX);
    }
    if (const field* f = m.find("rekey-packets")) {
        tunnel.rekey_packets = number(*f, 0, UINT64_MAX);
    }
    if (const field* f = m.find("start")) {
        tunnel.start = choice<ike_start_action>(*f, {{"none", ike_start_action::none},
                                                     {"immediately", ike_start_action::immediately},
                                                     {"on-traffic", ike_start_action::on_traffic}});
        if (!peer.remote_address && tunnel.start != ike_start_action::none) {
            fail(*f,
                 "peer " + quoted(peer.name) + " has remote-address: any, so this gateway cannot initiate (start: " +
                     text(*f, "") + ")",
                 "write start: none (the peer initiates), or set the peer's remote-address");
        }
    }
    if (const field* f = m.find("replay-window")) {
        tunnel.replay_window = static_cast<uint32_t>(number(*f, 0, max_replay_window));
    }
}

void loader::parse_ike_peer(const YAML::Node& node, const std::string& path, const gateway_config& config,
                            ike_peer_config& peer) const {
    const mapping m = read_mapping(node, path, ike_peer_keys, "one IKE peer");
    peer.origin = origin(node);
    const field& name = require(m, "name", "add name: a short name for this peer, e.g. branch");
    peer.name = ike_name(name, "peer");
    for (const auto& earlier : config.ike.peers) {
        if (&earlier != &peer && earlier.name == peer.name) {
            fail(name, "a peer named " + quoted(peer.name) + " is already defined at " + earlier.origin,
                 "give each peer its own name");
        }
    }
    if (const field* f = m.find("version")) {
        const std::string value = text(*f, "2");
        if (value == "1") {
            fail(*f, "IKEv1 is not supported yet", "use version: 2 (IKEv2, RFC 7296) on both gateways");
        }
        if (value != "2") {
            fail(*f, "unknown IKE version " + quoted(value), "write version: 2");
        }
    }
    const field& local = require(m, "local-address", "add local-address: this gateway's address for IKE, e.g. 198.51.100.1");
    peer.local_address = address(local);
    if (!config.interfaces.empty()) {
        const bool found = std::any_of(config.interfaces.begin(), config.interfaces.end(),
                                       [&](const interface_config& ic) { return has_address(ic, peer.local_address); });
        if (!found) {
            const std::string addresses = address_list(config.interfaces, peer.local_address.family);
            fail(local, to_string(peer.local_address) + " is not an address of any interface",
                 addresses.empty() ? "add an interface with this address (no interface has an " +
                                         std::string(family_name(peer.local_address.family)) + " address)"
                                   : "use one of this gateway's interface addresses: " + addresses);
        }
    }
    const field& remote = require(m, "remote-address",
                                  "add remote-address: the peer's address, or \"any\" to accept it from anywhere "
                                  "(responder only)");
    if (text(remote, "an address or any") != "any") {
        peer.remote_address = address(remote);
        if (peer.remote_address->family != peer.local_address.family) {
            fail(remote,
                 "remote-address is " + std::string(family_name(peer.remote_address->family)) +
                     " but local-address is " + std::string(family_name(peer.local_address.family)),
                 "use two addresses of the same family");
        }
    }
    if (const field* f = m.find("local-port")) {
        peer.local_port = static_cast<uint16_t>(number(*f, 1, 65535));
    }
    if (const field* f = m.find("remote-port")) {
        peer.remote_port = static_cast<uint16_t>(number(*f, 1, 65535));
    }
    if (const field* f = m.find("allow-legacy")) {
        peer.allow_legacy = boolean(*f); // read before the proposals it applies to
    }
    if (const field* f = m.find("proposals")) {
        peer.proposals = ike_proposals(*f, false, peer.allow_legacy);
    } else {
        for (std::string_view text : {"aes256gcm16-prfsha256-ecp256", "aes256-sha256-modp2048"}) {
            std::string error;
            peer.proposals.push_back(*parse_ike_proposal(text, false, false, error));
        }
    }
    if (const field* f = m.find("local-id")) {
        peer.local_id = ike_id(*f);
        if (peer.local_id.kind == ike_id_kind::any) {
            fail(*f, "this gateway must send a definite identity, not %any", "remove local-id to use local-address");
        }
    } else {
        peer.local_id = ::espresso::config::parse_identity(to_string(peer.local_address));
    }
    if (const field* f = m.find("remote-id")) {
        peer.remote_id = ike_id(*f);
    } else if (peer.remote_address) {
        peer.remote_id = ::espresso::config::parse_identity(to_string(*peer.remote_address));
    } else {
        peer.remote_id = ::espresso::config::parse_identity("%any");
    }
    parse_ike_auth(require(m, "auth", "add auth: { method: psk, secret-file: /etc/espresso/" + peer.name + ".psk }"),
                   peer.auth);
    if (const field* f = m.find("rekey-time")) {
        peer.rekey_time = static_cast<uint32_t>(duration(*f, UINT32_MAX));
    }
    if (const field* f = m.find("dpd")) {
        const mapping dpd = read_mapping(f->value, f->path, ike_dpd_keys, "dead peer detection (RFC 7296 §2.4)");
        if (const field* interval = dpd.find("interval")) {
            peer.dpd_interval = static_cast<uint32_t>(duration(*interval, UINT32_MAX));
        }
        if (const field* action = dpd.find("action")) {
            peer.dpd_action = choice<ike_dpd_action>(*action, {{"clear", ike_dpd_action::clear},
                                                               {"restart", ike_dpd_action::restart},
                                                               {"hold", ike_dpd_action::hold}});
        }
    }
    if (const field* f = m.find("fragmentation")) {
        // RFC 7383. yaml-cpp reads yes/no as booleans too, so true/false are accepted as their synonyms.
        peer.fragmentation = choice<ike_fragmentation>(*f, {{"yes", ike_fragmentation::yes},
                                                            {"true", ike_fragmentation::yes},
                                                            {"accept", ike_fragmentation::accept},
                                                            {"force", ike_fragmentation::force},
                                                            {"no", ike_fragmentation::no},
                                                            {"false", ike_fragmentation::no}});
    }
    if (const field* f = m.find("fragment-size")) {
        // 576: every IPv4 host must accept such a datagram (RFC 791); smaller leaves little room after the
        // headers. 65535: an IP datagram cannot be bigger.
        peer.fragment_size = static_cast<uint32_t>(number(*f, 576, 65535));
    }
    if (const field* f = m.find("tunnels")) {
        const YAML::Node& list = sequence(*f, "tunnels", "start each tunnel with \"- name: ...\"");
        peer.tunnels.reserve(list.size());
        size_t index = 0;
        for (const auto& item : list) {
            parse_ike_tunnel(item, f->path + "[" + std::to_string(index++) + "]", peer, peer.tunnels.emplace_back());
        }
    }
}

// Peers are parsed in place (reserved up front, never moved) so that run() can wipe every PSK read so
// far when a later check fails.
void loader::parse_ike(const field& f, gateway_config& config) const {
    const mapping m = read_mapping(f.value, f.path, ike_keys, "the IKEv2 daemon's settings");
    if (const field* threshold = m.find("cookie-threshold")) {
        config.ike.cookie_threshold = static_cast<uint32_t>(number(*threshold, 0, UINT32_MAX));
    }
    // 0 = no limit; above a million the limit protects nothing (ike_manager.cpp, per-address limits).
    if (const field* f = m.find("max-half-open-per-address")) {
        config.ike.max_half_open_per_address = static_cast<uint32_t>(number(*f, 0, 1000000));
    }
    if (const field* f = m.find("max-sas-per-address")) {
        config.ike.max_sas_per_address = static_cast<uint32_t>(number(*f, 0, 1000000));
    }
    if (const field* timeout = m.find("retransmit-timeout-ms")) {
        config.ike.retransmit_timeout_ms = static_cast<uint32_t>(number(*timeout, 50, 60000));
    }
    if (const field* tries = m.find("retransmit-tries")) {
        config.ike.retransmit_tries = static_cast<uint32_t>(number(*tries, 0, 20));
    }
    if (const field* keepalive = m.find("nat-keepalive")) {
        // RFC 3948 §4: the interval must stay below the NAT's mapping timeout, which is often 30-120 s
        // for UDP; an hour would let every mapping expire and is surely a unit mistake.
        config.ike.nat_keepalive = static_cast<uint32_t>(duration(*keepalive, 3600));
    }
    if (const field* threads = m.find("threads")) {
        config.ike.threads = static_cast<uint32_t>(number(*threads, 1, 16));
    }
    if (const field* log = m.find("log-file")) {
        const std::string value = text(*log, "an absolute path such as /var/log/espresso-ike.log");
        if (!value.starts_with("/") || value.back() == '/') {
            fail(*log, quoted(value) + " is not an absolute file path", "write e.g. /var/log/espresso-ike.log");
        }
        config.ike.log_file = value;
    }
    if (const field* peers = m.find("peers")) {
        const YAML::Node& list = sequence(*peers, "IKE peers", "start each peer with \"- name: ...\"");
        config.ike.peers.reserve(list.size());
        size_t index = 0;
        for (const auto& item : list) {
            parse_ike_peer(item, peers->path + "[" + std::to_string(index++) + "]", config,
                           config.ike.peers.emplace_back());
        }
    }
}

// A pre-screen before yaml-cpp sees the text. It is no longer what keeps a malformed file from hanging
// us (yaml_sandbox.cpp does that for every input), but each of these was found by
// tests/fuzz/config_fuzz.cpp to send yaml-cpp 0.7 into an endless loop (" !x\n, !", ",\x1b ", ", "),
// and here the operator gets a precise message about the character at fault instead of "the parser
// got into an endless loop near here". An Espresso config needs none of tags, anchors/aliases (which
// also let a small file expand without bound), explicit keys or control characters. The scan knows
// quotes and comments, so '!', '&' and '*' inside strings and comments are fine.
std::string hex_byte(unsigned char b) {
    static const char digits[] = "0123456789abcdef";
    return {digits[b >> 4], digits[b & 15]};
}

// Length of the UTF-8 sequence starting at text[i], or 0 when it is not valid UTF-8 (RFC 3629:
// no overlongs, no surrogates, nothing above U+10FFFF).
size_t utf8_length(std::string_view text, size_t i) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    if (b0 < 0x80) {
        return 1;
    }
    size_t n = 0;
    uint32_t cp = 0;
    if ((b0 & 0xe0) == 0xc0) {
        n = 2;
        cp = b0 & 0x1fU;
    } else if ((b0 & 0xf0) == 0xe0) {
        n = 3;
        cp = b0 & 0x0fU;
    } else if ((b0 & 0xf8) == 0xf0) {
        n = 4;
        cp = b0 & 0x07U;
    } else {
        return 0;
    }
    if (i + n > text.size()) {
        return 0;
    }
    for (size_t k = 1; k < n; ++k) {
        const auto b = static_cast<unsigned char>(text[i + k]);
        if ((b & 0xc0) != 0x80) {
            return 0;
        }
        cp = cp << 6 | (b & 0x3fU);
    }
    static constexpr uint32_t min_for_length[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_length[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return n;
}

void refuse_yaml_features(std::string_view text, const std::string& file) {
    int line = 1;
    int column = 0;
    char quote = 0;
    bool comment = false;
    int flow_depth = 0;
    char previous = '\n';
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        ++column;
        // YAML 1.2 §5.1: a stream is printable characters only; C0 controls (but tab, LF, CR) and DEL
        // are not YAML, and yaml-cpp 0.7 has been seen to loop on them (fuzzer: ",\x1b ").
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x80) {
            // YAML 1.2 §5.2: the stream is Unicode; yaml-cpp 0.7 has been seen to loop on invalid
            // UTF-8 (fuzzer). Multi-byte characters are skipped whole.
            const size_t len = utf8_length(text, i);
            if (len == 0) {
                throw config_error(file, line, column, "", "the file is not valid UTF-8 here",
                                   "save the file as UTF-8 text");
            }
            i += len - 1;
            previous = 'a';
            continue;
        }
        if ((u < 0x20 && c != '\n' && c != '\t' && c != '\r') || u == 0x7f) {
            throw config_error(file, line, column, "", "control character 0x" + hex_byte(u) + " in the file",
                               "remove it (YAML files hold printable text only)");
        }
        if (c == '\n') {
            ++line;
            column = 0;
            comment = false;
            if (quote == '\'') {
                // single-quoted scalars may span lines; keep the state
            }
            previous = c;
            continue;
        }
        if (comment) {
            continue;
        }
        if (quote != 0) {
            if (quote == '"' && c == '\\' && i + 1 < text.size()) {
                ++i;
                ++column;
            } else if (c == quote) {
                quote = 0;
            }
            previous = c;
            continue;
        }
        const bool token_start = previous == '\n' || previous == ' ' || previous == '\t' || previous == '[' ||
                                 previous == '{' || previous == ',' || previous == ':' || previous == '-';
        if (c == '#' && (previous == ' ' || previous == '\t' || previous == '\n')) {
            comment = true;
        } else if ((c == '"' || c == '\'') && token_start) {
            quote = c;
        } else if ((c == '[' || c == '{') && (token_start || flow_depth > 0)) {
            ++flow_depth;
        } else if ((c == ']' || c == '}') && flow_depth > 0) {
            --flow_depth;
        } else if (flow_depth == 0 && ((token_start && (c == ']' || c == '}')) ||
                                       (c == ',' && (token_start || previous == '"' || previous == '\'' ||
                                                     previous == ']' || previous == '}')))) {
            // A flow indicator outside any flow collection is a syntax error that yaml-cpp 0.7 can
            // loop on (fuzzer: ", ").
            throw config_error(file, line, column, "", std::string("unexpected '") + c + "' outside [ ] or { }",
                               "quote the value, or open the list/map with [ or {");
        } else if (token_start && c == '?' && i + 1 < text.size() &&
                   (text[i + 1] == ' ' || text[i + 1] == '\n' || text[i + 1] == '\t')) {
            // Explicit (complex) keys: never needed here, and yaml-cpp 0.7 loops on some (fuzzer).
            throw config_error(file, line, column, "", "YAML explicit keys ('? ') are not used in Espresso configurations",
                               "write the key as a plain `key: value`");
        } else if (token_start && (c == '!' || c == '&' || c == '*')) {
            throw config_error(file, line, column, "",
                               c == '!' ? "YAML tags ('!') are not used in Espresso configurations"
                                        : "YAML anchors and aliases ('&', '*') are not used in Espresso configurations",
                               "write the value out, or quote it if the character belongs to the value");
        }
        previous = c;
    }
}

gateway_config loader::run() {
    refuse_yaml_features(source_, file_);
    // yaml-cpp only parses here once a child process proved that it finishes on this text.
    detail::check_yaml_parse_finishes(source_, file_, options_);
    std::vector<YAML::Node> documents;
    try {
        std::string text(source_);
        const wipe_on_exit wipe{text};
        documents = YAML::LoadAll(text);
    } catch (const YAML::Exception& e) {
        const bool known = e.mark.line >= 0 && e.mark.column >= 0;
        throw config_error(file_, known ? e.mark.line + 1 : 0, known ? e.mark.column + 1 : 0, "",
                           "YAML syntax error: " + e.msg, "check indentation, colons and quoting at this position");
    }
    if (documents.empty() || documents.front().IsNull()) {
        throw config_error(file_, 0, 0, "", "the file is empty",
                           "start with security-associations: (see docs/configuration.md)");
    }
    if (documents.size() > 1) {
        fail(documents[1], "", "the file holds more than one YAML document", "remove the '---' separator");
    }
    const mapping top = read_mapping(documents.front(), "", top_level_keys, "the gateway configuration");

    gateway_config config;
    config.file = file_;
    try {
        const field* sas = top.find("security-associations");
        if (sas != nullptr) {
            parse_security_associations(*sas, config);
        }
        if (const field* f = top.find("dataplane")) {
            config.dataplane = parse_dataplane(*f);
        }
        if (sas != nullptr && config.security_associations.size() > config.dataplane.max_sas) {
            // The data plane's tables hold max-sas SAs; more static ones could not all be installed.
            const std::string problem = std::to_string(config.security_associations.size()) +
                                        " static SAs are more than dataplane.max-sas (" +
                                        std::to_string(config.dataplane.max_sas) + ") lets the data plane hold";
            const std::string fix = "raise dataplane.max-sas to at least " +
                                    std::to_string(config.security_associations.size());
            if (const field* dp = top.find("dataplane")) {
                const mapping dp_fields = read_mapping(*dp, dataplane_keys, "data plane process settings");
                if (const field* max = dp_fields.find("max-sas")) {
                    fail(*max, problem, fix);
                }
            }
            fail(*sas, problem, fix);
        }
        if (const field* f = top.find("interfaces")) {
            size_t index = 0;
            for (const auto& item : sequence(*f, "interfaces", "start each interface with \"- name: ...\"")) {
                config.interfaces.push_back(
                    parse_interface(item, "interfaces[" + std::to_string(index++) + "]", config));
            }
        }
        if (const field* f = top.find("routes")) {
            size_t index = 0;
            for (const auto& item : sequence(*f, "routes", "write each route as - { destination: ..., via: ... }")) {
                config.routes.push_back(parse_route(item, "routes[" + std::to_string(index++) + "]", config));
            }
        }
        if (const field* f = top.find("neighbors")) {
            size_t index = 0;
            for (const auto& item :
                 sequence(*f, "neighbors", "write each entry as - { address: ..., mac: ..., interface: ... }")) {
                config.neighbors.push_back(parse_neighbor(item, "neighbors[" + std::to_string(index++) + "]", config));
            }
        }
        if (const field* f = top.find("policies")) {
            // A file that holds nothing but policies is a fragment (the control socket's add-policy builds
            // one): its protect SPIs name SAs of the running gateway, which the gateway checks itself.
            const bool fragment = top.node().size() == 1;
            size_t index = 0;
            for (const auto& item :
                 sequence(*f, "policies", "write each policy as - { local: ..., remote: ..., action: ... }")) {
                const std::string path = "policies[" + std::to_string(index++) + "]";
                policy_config policy = parse_policy(item, path, config, !fragment);
                for (const auto& earlier : config.policies) {
                    if (same_traffic(earlier, policy)) {
                        fail(item, path,
                             "this policy matches exactly the same traffic as the one at " + earlier.origin +
                                 ", so one of them never applies",
                             "remove one of them, or make their selectors differ");
                    }
                }
                config.policies.push_back(std::move(policy));
            }
        }
        if (const field* f = top.find("ike")) {
            parse_ike(*f, config); // after interfaces: local-address must be one of theirs
        }
        if (sas != nullptr) {
            check_sa_endpoints(*sas, config);
        }
    } catch (...) {
        for (auto& sa : config.security_associations) {
            wipe_keys(sa);
        }
        for (auto& peer : config.ike.peers) {
            explicit_bzero(peer.auth.psk.data(), peer.auth.psk.size());
        }
        throw;
    }
    return config;
}

} // namespace

gateway_config load_string(std::string_view yaml, const std::string& file_name, const load_options& options) {
    return loader(yaml, file_name, options).run();
}

sa_config load_security_association(const YAML::Node& item, const std::string& path, const std::string& source) {
    return loader(loader::built_tree{}, source).parse_sa(item, path);
}

sa_config load_security_association(const plain_value& item, const std::string& path, const std::string& source) {
    return loader(loader::built_tree{}, source).parse_sa(item, path);
}

void check_security_association_spis(const std::vector<sa_config>& sas, const std::string& path,
                                     const std::string& source) {
    // No nodes: errors carry no position, as everything from a built tree.
    loader(loader::built_tree{}, source)
        .check_unique(sas, std::vector<YAML::Node>(sas.size()),
                      [&](size_t i) { return path + "[" + std::to_string(i) + "]"; });
}

gateway_config load_file(const std::string& path, const load_options& options) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        const int error = errno;
        throw config_error(path, 0, 0, "", std::string("cannot open the file: ") + std::strerror(error),
                           "check the path and its permissions");
    }
    // Read straight into one buffer we can wipe (a stringstream would leave its own copy behind).
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    in.seekg(0, std::ios::beg);
    if (size < 0) {
        throw config_error(path, 0, 0, "", "cannot read the file", "check that it is a regular file");
    }
    std::string contents(static_cast<size_t>(size), '\0');
    in.read(contents.data(), size);
    // The text holds keys; clear our copy whether parsing succeeds or not.
    const wipe_on_exit wipe{contents};
    return load_string(contents, path, options);
}

} // namespace espresso::config
