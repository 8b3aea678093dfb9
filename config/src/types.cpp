// Address and prefix text conversion, and key wiping, for the plain config structs.
#include "espresso/config/types.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h> // explicit_bzero (glibc, not in <cstring>'s std namespace)

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

std::string to_string(const ip_address& address) {
    char buffer[INET6_ADDRSTRLEN] = {};
    if (address.is_v4()) {
        in_addr v4{};
        std::memcpy(&v4, address.bytes.data(), sizeof(v4));
        if (inet_ntop(AF_INET, &v4, buffer, sizeof(buffer)) != nullptr) {
            return buffer;
        }
    } else if (address.is_v6()) {
        in6_addr v6{};
        std::memcpy(&v6, address.bytes.data(), sizeof(v6));
        if (inet_ntop(AF_INET6, &v6, buffer, sizeof(buffer)) != nullptr) {
            return buffer;
        }
    }
    return "<unset>";
}

std::string to_string(const ip_prefix& prefix) {
    return to_string(prefix.address) + "/" + std::to_string(prefix.length);
}

void wipe_keys(sa_config& sa) noexcept {
    // explicit_bzero, unlike memset, may not be removed as a dead store by the optimiser.
    explicit_bzero(sa.cipher_key.data(), sa.cipher_key.size());
    explicit_bzero(sa.integ_key.data(), sa.integ_key.size());
}

} // namespace espresso::config
