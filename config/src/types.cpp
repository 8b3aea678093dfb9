// Address and prefix text conversion, and key wiping, for the plain config structs.
#include "espresso/config/types.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h> // explicit_bzero (glibc, not in <cstring>'s std namespace)

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>

namespace espresso::config {

namespace {

// inet_pton needs a NUL-terminated string; longer than any valid address text means invalid.
constexpr size_t max_address_text = INET6_ADDRSTRLEN;

// Decimal prefix length: digits only (no sign, no spaces), at most three of them.
std::optional<unsigned> parse_prefix_length(std::string_view text) noexcept {
    if (text.empty() || text.size() > 3) {
        return std::nullopt;
    }
    unsigned value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') {
            return std::nullopt;
        }
        value = value * 10 + static_cast<unsigned>(c - '0');
    }
    return value;
}

} // namespace

std::optional<ip_address> parse_address(std::string_view text) {
    if (text.empty() || text.size() >= max_address_text || text.find('\0') != std::string_view::npos) {
        return std::nullopt;
    }
    char buffer[max_address_text] = {};
    std::memcpy(buffer, text.data(), text.size());

    ip_address address;
    if (text.find(':') != std::string_view::npos) {
        in6_addr v6{};
        if (inet_pton(AF_INET6, buffer, &v6) != 1) {
            return std::nullopt;
        }
        address.family = 6;
        std::memcpy(address.bytes.data(), &v6, sizeof(v6));
    } else {
        // glibc's inet_pton accepts only the four-part dotted quad (no "10.1", no octal, no hex).
        in_addr v4{};
        if (inet_pton(AF_INET, buffer, &v4) != 1) {
            return std::nullopt;
        }
        address.family = 4;
        std::memcpy(address.bytes.data(), &v4, sizeof(v4));
    }
    return address;
}

std::optional<ip_prefix> parse_prefix(std::string_view text) {
    const auto slash = text.find('/');
    auto address = parse_address(text.substr(0, slash));
    if (!address) {
        return std::nullopt;
    }
    const unsigned max_length = address->is_v4() ? 32 : 128;
    unsigned length = max_length;
    if (slash != std::string_view::npos) {
        auto parsed = parse_prefix_length(text.substr(slash + 1));
        if (!parsed || *parsed > max_length) {
            return std::nullopt;
        }
        length = *parsed;
    }

    // Host bits must be zero: "192.168.1.1/24" is almost always a typo for either the host or the
    // network, and guessing which would silently protect the wrong traffic.
    for (unsigned bit = length; bit < max_length; ++bit) {
        if ((address->bytes[bit / 8] & (0x80u >> (bit % 8))) != 0) {
            return std::nullopt;
        }
    }
    return ip_prefix{*address, static_cast<uint8_t>(length)};
}

namespace {

// Dotted quad by hand: glibc's inet_ntop formats IPv4 with sprintf, whose machinery was ~45 % of
// espresso-ike's add-sas writer (perf/RESULTS.md, issue 3: SA installs per second).
void append_v4(std::string& out, const ip_address& address) {
    char text[16];
    size_t n = 0;
    for (size_t i = 0; i < 4; ++i) {
        const unsigned octet = address.bytes[i];
        if (octet >= 100) {
            text[n++] = static_cast<char>('0' + octet / 100);
        }
        if (octet >= 10) {
            text[n++] = static_cast<char>('0' + octet / 10 % 10);
        }
        text[n++] = static_cast<char>('0' + octet % 10);
        text[n++] = '.';
    }
    out.append(text, n - 1); // without the last '.'
}

} // namespace

std::string to_string(const ip_address& address) {
    if (address.is_v4()) {
        std::string out;
        append_v4(out, address);
        return out;
    }
    if (address.is_v6()) {
        char buffer[INET6_ADDRSTRLEN] = {};
        in6_addr v6{};
        std::memcpy(&v6, address.bytes.data(), sizeof(v6));
        if (inet_ntop(AF_INET6, &v6, buffer, sizeof(buffer)) != nullptr) {
            return buffer;
        }
    }
    return "<unset>";
}

std::string to_string(const ip_prefix& prefix) {
    std::string out = to_string(prefix.address);
    char length[4];
    out += '/';
    out.append(length, static_cast<size_t>(std::to_chars(length, length + sizeof(length), prefix.length).ptr - length));
    return out;
}

void wipe_keys(sa_config& sa) noexcept {
    // explicit_bzero, unlike memset, may not be removed as a dead store by the optimiser.
    explicit_bzero(sa.cipher_key.data(), sa.cipher_key.size());
    explicit_bzero(sa.integ_key.data(), sa.integ_key.size());
}

std::optional<mac_address> parse_mac(std::string_view text) {
    // Exactly "xx:xx:xx:xx:xx:xx": 17 characters, one separator kind throughout.
    if (text.size() != 17) {
        return std::nullopt;
    }
    const char separator = text[2];
    if (separator != ':' && separator != '-') {
        return std::nullopt;
    }
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') {
            return c - '0';
        }
        if (c >= 'a' && c <= 'f') {
            return c - 'a' + 10;
        }
        if (c >= 'A' && c <= 'F') {
            return c - 'A' + 10;
        }
        return -1;
    };
    mac_address mac{};
    for (size_t i = 0; i < mac.size(); ++i) {
        const size_t at = i * 3;
        if (i > 0 && text[at - 1] != separator) {
            return std::nullopt;
        }
        const int high = nibble(text[at]);
        const int low = nibble(text[at + 1]);
        if (high < 0 || low < 0) {
            return std::nullopt;
        }
        mac[i] = static_cast<uint8_t>((high << 4) | low);
    }
    return mac;
}

const char* to_string(policy_action action) noexcept {
    switch (action) {
    case policy_action::protect:
        return "protect";
    case policy_action::bypass:
        return "bypass";
    case policy_action::discard:
        return "discard";
    case policy_action::trap:
        return "trap";
    }
    return "?";
}

std::string to_string(const mac_address& mac) {
    char buffer[18];
    std::snprintf(buffer, sizeof(buffer), "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4],
                  mac[5]);
    return buffer;
}

ip_prefix network_of(const ip_address& address, uint8_t length) {
    const unsigned width = address.is_v4() ? 32 : address.is_v6() ? 128 : 0;
    const unsigned bits = std::min<unsigned>(length, width);
    ip_prefix prefix{address, static_cast<uint8_t>(bits)};
    for (unsigned bit = bits; bit < width; ++bit) {
        prefix.address.bytes[bit / 8] = static_cast<uint8_t>(prefix.address.bytes[bit / 8] & ~(0x80u >> (bit % 8)));
    }
    return prefix;
}

bool prefix_contains(const ip_prefix& prefix, const ip_address& address) noexcept {
    if (prefix.address.family == 0 || prefix.address.family != address.family) {
        return false;
    }
    for (unsigned bit = 0; bit < prefix.length; ++bit) {
        const uint8_t mask = static_cast<uint8_t>(0x80u >> (bit % 8));
        if ((prefix.address.bytes[bit / 8] & mask) != (address.bytes[bit / 8] & mask)) {
            return false;
        }
    }
    return true;
}

bool prefix_contains(const ip_prefix& outer, const ip_prefix& inner) noexcept {
    return outer.length <= inner.length && prefix_contains(outer, inner.address);
}

bool same_traffic(const policy_config& a, const policy_config& b) noexcept {
    return a.local == b.local && a.remote == b.remote && a.protocol == b.protocol &&
           a.local_port_min == b.local_port_min && a.local_port_max == b.local_port_max &&
           a.remote_port_min == b.remote_port_min && a.remote_port_max == b.remote_port_max;
}

bool prefixes_overlap(const ip_prefix& a, const ip_prefix& b) noexcept {
    return prefix_contains(a, b) || prefix_contains(b, a);
}

ip_prefix subnet_of(const interface_config& interface) {
    return network_of(interface.address, interface.prefix_length);
}

std::vector<interface_address> addresses_of(const interface_config& interface) {
    if (!interface.addresses.empty()) {
        return interface.addresses;
    }
    if (interface.address.family == 0) {
        return {};
    }
    return {interface_address{interface.address, interface.prefix_length}};
}

std::optional<interface_address> address_of(const interface_config& interface, uint8_t family) {
    for (const auto& a : addresses_of(interface)) {
        if (a.address.family == family) {
            return a;
        }
    }
    return std::nullopt;
}

std::vector<ip_prefix> subnets_of(const interface_config& interface) {
    std::vector<ip_prefix> out;
    for (const auto& a : addresses_of(interface)) {
        out.push_back(network_of(a.address, a.prefix_length));
    }
    return out;
}

bool has_address(const interface_config& interface, const ip_address& address) {
    for (const auto& a : addresses_of(interface)) {
        if (a.address == address) {
            return true;
        }
    }
    return false;
}

} // namespace espresso::config
