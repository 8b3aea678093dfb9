// YAML gateway configuration -> validated espresso::config structs.
//
// Start-up code: exceptions are the error channel (config_error, caught in main). Every check reports
// file:line:column (1-based, from yaml-cpp's 0-based Mark), the field path
// ("security-associations[2].key"), what is wrong and how to fix it. Scalars are parsed here from
// their raw text rather than with yaml-cpp's as<T>(), so that "0x1001", "yes" or "1e3" get our own
// messages instead of a generic bad-conversion error.
#include "espresso/config/loader.h"

#include <string.h> // explicit_bzero

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <map>
#include <span>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include <yaml-cpp/yaml.h>

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

// Top-level sections that later modules will read. They are accepted and skipped for now, so one file
// can already carry them; any other top-level key is an error.
constexpr std::array<std::string_view, 7> top_level_keys{
    "security-associations", "dataplane", "interfaces", "routes", "neighbors", "policies", "ike",
};

constexpr std::array<std::string_view, 20> sa_keys{
    "spi",       "direction", "protocol", "mode",          "source", "destination",   "encryption",
    "key",       "integrity", "integrity-key", "esn",      "replay-window", "udp-encapsulation",
    "selectors", "lifetime",  "df",       "dscp",          "ttl",    "tfc-pad",       "initial-sequence",
};

constexpr std::array<std::string_view, 2> udp_keys{"source-port", "destination-port"};
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

// Levenshtein distance, case-insensitive; only used to suggest a spelling.
size_t edit_distance(std::string_view a, std::string_view b) {
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
        }
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

struct field {
    std::string_view name;
    std::string path;
    YAML::Node key;
    YAML::Node value;
};

class mapping {
public:
    mapping(YAML::Node node, std::string path, std::vector<field> fields)
        : node_(std::move(node)), path_(std::move(path)), fields_(std::move(fields)) {}

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
    loader(std::string_view source, const std::string& file) : source_(source), file_(file) {}

    gateway_config run();

private:
    [[noreturn]] void fail(const YAML::Node& at, const std::string& path, std::string problem, std::string fix) const {
        const YAML::Mark mark = at.Mark();
        const bool known = mark.line >= 0 && mark.column >= 0;
        throw config_error(file_, known ? mark.line + 1 : 0, known ? mark.column + 1 : 0, path, std::move(problem),
                           std::move(fix));
    }
    // A null value ("key:" with nothing after it) has its mark on the following line; point at the key.
    [[noreturn]] void fail(const field& f, std::string problem, std::string fix) const {
        fail(f.value.IsNull() ? f.key : f.value, f.path, std::move(problem), std::move(fix));
    }

    std::string origin(const YAML::Node& node) const {
        const YAML::Mark mark = node.Mark();
        return file_ + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
    }

    // Was this null node written as the word null (rather than "~" or nothing)?
    bool is_literal_null(const YAML::Node& node) const {
        const YAML::Mark mark = node.Mark();
        if (!node.IsNull() || mark.pos < 0 || static_cast<size_t>(mark.pos) >= source_.size()) {
            return false;
        }
        const auto rest = source_.substr(static_cast<size_t>(mark.pos));
        return rest.starts_with("null") || rest.starts_with("Null") || rest.starts_with("NULL");
    }

    mapping read_mapping(const YAML::Node& node, const std::string& path, std::span<const std::string_view> allowed,
                         std::string_view what) const;
    std::string text(const field& f, std::string_view expected) const;
    uint64_t number(const field& f, uint64_t min, uint64_t max) const;
    bool boolean(const field& f) const;
    template <typename Enum>
    Enum choice(const field& f, std::initializer_list<std::pair<std::string_view, Enum>> options) const;
    ip_address address(const field& f) const;
    ip_prefix prefix(const field& f) const;
    const field& require(const mapping& m, std::string_view name, std::string fix) const;

    cipher_info cipher(const field& f) const;
    integ_info integrity(const field& f) const;
    void parse_keys(const mapping& m, sa_config& sa, const cipher_info& cipher, const integ_info& integ) const;

    void parse_identity(const mapping& m, sa_config& sa) const;
    void parse_transforms(const mapping& m, sa_config& sa) const;
    void parse_selectors(const mapping& m, sa_config& sa) const;
    void parse_options(const mapping& m, sa_config& sa) const;
    sa_config parse_sa(const YAML::Node& node, const std::string& path) const;
    void check_unique(const std::vector<sa_config>& sas, const std::vector<YAML::Node>& spi_nodes,
                      const std::vector<std::string>& paths) const;

    std::string_view source_;
    const std::string& file_;
};

mapping loader::read_mapping(const YAML::Node& node, const std::string& path, std::span<const std::string_view> allowed,
                             std::string_view what) const {
    if (!node.IsMap()) {
        fail(node, path, "expected a mapping (" + std::string(what) + "), got " + std::string(node_kind(node)),
             "write it as indented \"key: value\" lines or { key: value, ... }");
    }
    std::vector<field> fields;
    for (auto it = node.begin(); it != node.end(); ++it) {
        const YAML::Node key = it->first;
        if (!key.IsScalar()) {
            fail(key, path, "a key must be a plain name, got " + std::string(node_kind(key)),
                 "use one of: " + join(allowed, ", "));
        }
        const std::string& name = key.Scalar();
        const std::string key_path = path.empty() ? name : path + "." + name;
        const auto known = std::find(allowed.begin(), allowed.end(), name);
        if (known == allowed.end()) {
            const auto suggestion = closest(name, allowed);
            fail(key, key_path, "unknown key " + quoted(name),
                 suggestion.empty() ? "valid keys here are: " + join(allowed, ", ")
                                    : "did you mean " + quoted(suggestion) + "?");
        }
        for (const auto& earlier : fields) {
            if (earlier.name == *known) {
                fail(key, key_path, "key " + quoted(name) + " appears twice; first at " + origin(earlier.key),
                     "keep only one of them");
            }
        }
        fields.push_back(field{*known, key_path, key, it->second});
    }
    return mapping(node, path, std::move(fields));
}

const field& loader::require(const mapping& m, std::string_view name, std::string fix) const {
    const field* f = m.find(name);
    if (f == nullptr) {
        fail(m.node(), m.path(), "required key " + quoted(name) + " is missing", std::move(fix));
    }
    return *f;
}

std::string loader::text(const field& f, std::string_view expected) const {
    if (f.value.IsNull()) {
        fail(f, "has no value; expected " + std::string(expected), "write a value after the colon");
    }
    if (!f.value.IsScalar()) {
        fail(f, "expected " + std::string(expected) + ", got " + std::string(node_kind(f.value)),
             "write a single value");
    }
    return f.value.Scalar();
}

uint64_t loader::number(const field& f, uint64_t min, uint64_t max) const {
    const std::string range = std::to_string(min) + ".." + std::to_string(max);
    const std::string value = text(f, "a number in " + range);
    const auto parsed = parse_uint(value);
    if (!parsed) {
        fail(f, quoted(value) + " is not a number", "write a decimal or 0x-prefixed hex number in " + range);
    }
    if (*parsed < min || *parsed > max) {
        fail(f, quoted(value) + " is out of range", "use a value in " + range);
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
    for (const auto& option : options) {
        names.push_back(option.first);
    }
    const std::string expected = join(names, " | ");
    const std::string value = text(f, expected);
    for (const auto& option : options) {
        if (option.first == value) {
            return option.second;
        }
    }
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
    const std::string name = is_literal_null(f.value) ? std::string("null") : text(f, "an encryption algorithm");
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
    if (is_literal_null(f.value)) {
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
        std::string need = std::string(cipher.name) + " needs " + std::to_string(cipher_bytes) + " bytes";
        if (cipher.salt_bytes != 0) {
            need += ": " + std::to_string(cipher.key_bytes) + " key + " + std::to_string(cipher.salt_bytes) + " salt";
        }
        if (key == nullptr) {
            fail(m.node(), m.path(), "required key \"key\" is missing; " + need,
                 "add key: 0x followed by " + std::to_string(cipher_bytes * 2) + " hex digits");
        }
        const std::string value = text(*key, "a hex key");
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
        fail(*key, "key has " + std::to_string(got) + " bytes; " + need, fix);
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
    const std::string need = std::string(integ.name) + " needs a " + std::to_string(integ.key_bytes) + "-byte key";
    if (integ_key == nullptr) {
        fail(m.node(), m.path(), "required key \"integrity-key\" is missing; " + need,
             "add integrity-key: 0x followed by " + std::to_string(integ.key_bytes * 2) + " hex digits");
    }
    const std::string value = text(*integ_key, "a hex key");
    const auto decoded = decode_hex(value, std::span(sa.integ_key.data(), integ.key_bytes));
    if (const auto* problem = std::get_if<hex_problem>(&decoded)) {
        fail(*integ_key, problem->problem, problem->fix);
    }
    const size_t got = std::get<size_t>(decoded);
    if (got != integ.key_bytes) {
        // RFC 4868 §2.1.1: the key length equals the hash output length.
        fail(*integ_key, "integrity-key has " + std::to_string(got) + " bytes; " + need,
             "write exactly " + std::to_string(integ.key_bytes * 2) + " hex digits");
    }
    sa.integ_key_length = integ.key_bytes;
}

// Who and where: SPI, direction, protocol, mode and the outer addresses.
void loader::parse_identity(const mapping& m, sa_config& sa) const {
    // RFC 4303 §2.1: SPI 0 is reserved for local use, 1..255 are reserved by IANA.
    const field& spi = require(m, "spi", "add spi: a number from 0x100 to 0xffffffff");
    const std::string spi_text = text(spi, "a 32-bit SPI");
    const auto spi_value = parse_uint(spi_text);
    if (!spi_value) {
        fail(spi, quoted(spi_text) + " is not a number", "write the SPI in decimal or as 0x-prefixed hex");
    }
    if (*spi_value == 0) {
        fail(spi, "SPI 0 is reserved for local use and never sent on the wire (RFC 4303 §2.1)",
             "use a value from 0x100 to 0xffffffff");
    }
    if (*spi_value < 256) {
        fail(spi, "SPI " + std::to_string(*spi_value) + " is in the range 1..255 reserved by IANA (RFC 4303 §2.1)",
             "use a value from 0x100 to 0xffffffff");
    }
    if (*spi_value > UINT32_MAX) {
        fail(spi, "SPI " + quoted(spi_text) + " does not fit in 32 bits", "use a value from 0x100 to 0xffffffff");
    }
    sa.spi = static_cast<uint32_t>(*spi_value);

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
    const mapping selectors = read_mapping(selectors_field.value, selectors_field.path, selector_keys,
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
        const mapping udp = read_mapping(f->value, f->path, udp_keys, "source-port and destination-port");
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
        const mapping lifetime = read_mapping(f->value, f->path, lifetime_keys, "byte and packet limits");
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
        if (f->value.IsScalar() && f->value.Scalar() == "copy") {
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
    const mapping m = read_mapping(node, path, sa_keys, "one security association");
    sa_config sa;
    sa.origin = origin(node);
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
                          const std::vector<std::string>& paths) const {
    // RFC 4301 §4.1: an outbound SA is chosen by policy, so its SPI must be unique among outbound SAs;
    // an inbound SA is found by SPI (and protocol), so (SPI, protocol) must be unique among inbound SAs.
    std::map<std::tuple<direction, uint32_t, int>, size_t> seen;
    for (size_t i = 0; i < sas.size(); ++i) {
        const auto& sa = sas[i];
        const int protocol = sa.dir == direction::inbound ? static_cast<int>(sa.protocol) : -1;
        const auto [it, inserted] = seen.emplace(std::make_tuple(sa.dir, sa.spi, protocol), i);
        if (!inserted) {
            std::string which = sa.dir == direction::inbound
                                    ? std::string("inbound ") + (sa.protocol == ipsec_protocol::esp ? "ESP" : "AH")
                                    : std::string("outbound");
            fail(spi_nodes[i], paths[i] + ".spi",
                 "duplicate SPI " + hex32(sa.spi) + " among " + which + " SAs; first used at " + sas[it->second].origin,
                 "give each " + which + " SA its own SPI");
        }
    }
}

gateway_config loader::run() {
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
    const field* sas_field = top.find("security-associations");
    if (sas_field == nullptr) {
        return config;
    }
    if (!sas_field->value.IsSequence()) {
        fail(*sas_field, "expected a list of security associations, got " + std::string(node_kind(sas_field->value)),
             "start each SA with \"- spi: ...\", or write [] for none");
    }
    auto& sas = config.security_associations;
    // Reserve up front: a reallocation would leave copies of keys in freed memory.
    sas.reserve(sas_field->value.size());
    std::vector<YAML::Node> spi_nodes;
    std::vector<std::string> paths;
    try {
        size_t index = 0;
        for (const auto& item : sas_field->value) {
            std::string path = "security-associations[" + std::to_string(index++) + "]";
            sas.push_back(parse_sa(item, path));
            spi_nodes.push_back(item["spi"]);
            paths.push_back(std::move(path));
        }
        check_unique(sas, spi_nodes, paths);
    } catch (...) {
        for (auto& sa : sas) {
            wipe_keys(sa);
        }
        throw;
    }
    return config;
}

} // namespace

gateway_config load_string(std::string_view yaml, const std::string& file_name) {
    return loader(yaml, file_name).run();
}

gateway_config load_file(const std::string& path) {
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
    return load_string(contents, path);
}

} // namespace espresso::config
