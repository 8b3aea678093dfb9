#include "traffic_selectors.h"

#include <algorithm>

namespace espresso::cp {
namespace {

size_t family_bytes(uint8_t family) { return family == 6 ? 16 : 4; }

// First and last address of a prefix, network order.
void prefix_range(const config::ip_prefix& p, bytes& first, bytes& last)
{
    size_t n = family_bytes(p.address.family);
    first.assign(p.address.bytes.begin(), p.address.bytes.begin() + static_cast<long>(n));
    last = first;
    for (size_t bit = p.length; bit < n * 8; ++bit) {
        first[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
        last[bit / 8] |= static_cast<uint8_t>(0x80u >> (bit % 8));
    }
}

// The CIDR block [first, last] exactly, if it is one.
std::optional<config::ip_prefix> range_to_prefix(const bytes& first, const bytes& last)
{
    size_t n = first.size();
    if ((n != 4 && n != 16) || last.size() != n) {
        return std::nullopt;
    }
    // Prefix length = number of leading bits where first and last agree; the rest must be 0..0 / 1..1.
    size_t len = 0;
    while (len < n * 8) {
        uint8_t mask = static_cast<uint8_t>(0x80u >> (len % 8));
        if ((first[len / 8] & mask) != (last[len / 8] & mask)) {
            break;
        }
        ++len;
    }
    for (size_t bit = len; bit < n * 8; ++bit) {
        uint8_t mask = static_cast<uint8_t>(0x80u >> (bit % 8));
        if ((first[bit / 8] & mask) != 0 || (last[bit / 8] & mask) == 0) {
            return std::nullopt;
        }
    }
    config::ip_prefix p;
    p.address.family = n == 4 ? 4 : 6;
    std::copy(first.begin(), first.end(), p.address.bytes.begin());
    p.length = static_cast<uint8_t>(len);
    return p;
}

bool full_ports_any_protocol(const traffic_selector& ts)
{
    return ts.ip_protocol == 0 && ts.start_port == 0 && ts.end_port == 65535;
}

} // namespace

traffic_selector to_selector(const config::ip_prefix& prefix)
{
    traffic_selector ts;
    ts.type = prefix.address.is_v6() ? static_cast<uint8_t>(ts_type::ipv6_addr_range)
                                     : static_cast<uint8_t>(ts_type::ipv4_addr_range);
    prefix_range(prefix, ts.start, ts.end);
    return ts;
}

std::vector<traffic_selector> to_selectors(const std::vector<config::ip_prefix>& prefixes)
{
    std::vector<traffic_selector> out;
    for (const auto& p : prefixes) {
        out.push_back(to_selector(p));
    }
    return out;
}

std::optional<config::ip_prefix> to_prefix(const traffic_selector& ts)
{
    if (!full_ports_any_protocol(ts)) {
        return std::nullopt;
    }
    return range_to_prefix(ts.start, ts.end);
}

std::optional<config::ip_prefix> narrow(const std::vector<config::ip_prefix>& ours, const std::vector<traffic_selector>& theirs)
{
    for (const auto& p : ours) {
        bytes first, last;
        prefix_range(p, first, last);
        for (const auto& ts : theirs) {
            if (!full_ports_any_protocol(ts) || ts.start.size() != first.size() || ts.end.size() != first.size()) {
                continue;
            }
            const bytes& lo = std::max(first, ts.start);
            const bytes& hi = std::min(last, ts.end);
            if (lo > hi) {
                continue;
            }
            if (auto r = range_to_prefix(lo, hi)) {
                return r;
            }
        }
    }
    return std::nullopt;
}

bool within(const config::ip_prefix& inner, const std::vector<config::ip_prefix>& outer)
{
    bytes ifirst, ilast;
    prefix_range(inner, ifirst, ilast);
    return std::any_of(outer.begin(), outer.end(), [&](const config::ip_prefix& o) {
        if (o.address.family != inner.address.family) {
            return false;
        }
        bytes ofirst, olast;
        prefix_range(o, ofirst, olast);
        return ofirst <= ifirst && ilast <= olast;
    });
}

std::string describe(const std::vector<traffic_selector>& selectors)
{
    std::string s;
    for (const auto& ts : selectors) {
        if (!s.empty()) {
            s += " ";
        }
        auto p = range_to_prefix(ts.start, ts.end);
        if (p) {
            s += config::to_string(*p);
        } else {
            config::ip_prefix a, b;
            a.address.family = b.address.family = ts.start.size() == 16 ? 6 : 4;
            std::copy(ts.start.begin(), ts.start.end(), a.address.bytes.begin());
            std::copy(ts.end.begin(), ts.end.end(), b.address.bytes.begin());
            s += config::to_string(a.address) + ".." + config::to_string(b.address);
        }
        if (!full_ports_any_protocol(ts)) {
            s += "[" + std::to_string(ts.ip_protocol) + "/" + std::to_string(ts.start_port) + "-" +
                 std::to_string(ts.end_port) + "]";
        }
    }
    return s.empty() ? "(none)" : s;
}

std::string describe(const std::vector<config::ip_prefix>& prefixes)
{
    std::string s;
    for (const auto& p : prefixes) {
        if (!s.empty()) {
            s += " ";
        }
        s += config::to_string(p);
    }
    return s.empty() ? "(none)" : s;
}

} // namespace espresso::cp
