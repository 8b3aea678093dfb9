#include "config_diff.h"

#include <cstdio>
#include <map>
#include <tuple>

namespace espresso::dp {

namespace {

bool same_bytes(const uint8_t* a, const uint8_t* b, size_t n) noexcept
{
    // Constant time over the whole array: how much of a key matched must not show in the timing.
    uint8_t d = 0;
    for (size_t i = 0; i < n; ++i) {
        d = static_cast<uint8_t>(d | (a[i] ^ b[i]));
    }
    return d == 0;
}

std::string spi_text(uint32_t spi)
{
    char buf[16];
    std::snprintf(buf, sizeof(buf), "0x%08x", spi);
    return buf;
}

std::string ports_text(uint16_t lo, uint16_t hi)
{
    return lo == hi ? std::to_string(lo) : std::to_string(lo) + "-" + std::to_string(hi);
}

// Matches items of two lists by a key; same() tells unchanged from changed.
template <typename T, typename KeyFn, typename SameFn>
section_diff diff_keyed(const std::vector<T>& running, const std::vector<T>& next, KeyFn key, SameFn same)
{
    section_diff d;
    using key_type = decltype(key(running.front()));
    std::map<key_type, size_t> old_index;
    for (size_t i = 0; i < running.size(); ++i) {
        old_index.emplace(key(running[i]), i); // the loader refuses duplicates; the first wins otherwise
    }
    std::vector<bool> matched(running.size(), false);
    for (size_t j = 0; j < next.size(); ++j) {
        auto it = old_index.find(key(next[j]));
        if (it == old_index.end() || matched[it->second]) {
            d.added.push_back(j);
            continue;
        }
        matched[it->second] = true;
        if (same(running[it->second], next[j])) {
            d.unchanged.emplace_back(it->second, j);
        } else {
            d.changed.emplace_back(it->second, j);
        }
    }
    for (size_t i = 0; i < running.size(); ++i) {
        if (!matched[i]) {
            d.removed.push_back(i);
        }
    }
    return d;
}

std::string interface_text(const config::interface_config& i)
{
    // Appended piece by piece (GCC 12 flags `"x" + std::string` chains here with a false -Wrestrict).
    std::string s = i.name;
    s.append(" (").append(i.device);
    for (const auto& a : config::addresses_of(i)) {
        s.append(" ").append(config::to_string(a.address)).append("/").append(std::to_string(a.prefix_length));
    }
    if (i.mac) {
        s.append(" mac ").append(config::to_string(*i.mac));
    }
    s.append(" mtu ").append(std::to_string(i.mtu)).append(")");
    return s;
}

void restart_setting(std::vector<std::string>& out, const std::string& name, const std::string& from,
                     const std::string& to)
{
    if (from != to) {
        out.push_back(name + ": " + from + " -> " + to);
    }
}

std::string eal_text(const std::vector<std::string>& eal)
{
    std::string s = "[";
    for (const auto& e : eal) {
        s += (s.size() > 1 ? " " : "") + e;
    }
    return s + "]";
}

} // namespace

bool same_route(const config::route_config& a, const config::route_config& b) noexcept
{
    return a.destination == b.destination && a.via == b.via && a.interface == b.interface;
}

bool same_neighbor(const config::neighbor_config& a, const config::neighbor_config& b) noexcept
{
    return a.address == b.address && a.mac == b.mac && a.interface == b.interface;
}

bool same_policy(const config::policy_config& a, const config::policy_config& b) noexcept
{
    return a.local == b.local && a.remote == b.remote && a.protocol == b.protocol &&
           a.local_port_min == b.local_port_min && a.local_port_max == b.local_port_max &&
           a.remote_port_min == b.remote_port_min && a.remote_port_max == b.remote_port_max && a.action == b.action &&
           a.priority == b.priority && a.spi == b.spi;
}

bool same_sa(const config::sa_config& a, const config::sa_config& b) noexcept
{
    // Both compared whatever the first gave (no short-circuit: constant time over both keys).
    const bool cipher_same = same_bytes(a.cipher_key.data(), b.cipher_key.data(), a.cipher_key.size());
    const bool integ_same = same_bytes(a.integ_key.data(), b.integ_key.data(), a.integ_key.size());
    const bool keys = cipher_same && integ_same;
    const bool udp = a.udp.has_value() == b.udp.has_value() &&
                     (!a.udp || (a.udp->source_port == b.udp->source_port &&
                                 a.udp->destination_port == b.udp->destination_port));
    return keys && udp && a.spi == b.spi && a.dir == b.dir && a.protocol == b.protocol && a.mode == b.mode &&
           a.source == b.source && a.destination == b.destination && a.cipher == b.cipher &&
           a.cipher_key_bytes == b.cipher_key_bytes && a.cipher_key_length == b.cipher_key_length &&
           a.integ == b.integ && a.integ_key_length == b.integ_key_length && a.esn == b.esn &&
           a.replay_window == b.replay_window && a.local == b.local && a.remote == b.remote &&
           a.lifetime.bytes == b.lifetime.bytes && a.lifetime.packets == b.lifetime.packets &&
           a.lifetime.soft_bytes == b.lifetime.soft_bytes && a.lifetime.soft_packets == b.lifetime.soft_packets &&
           a.df == b.df && a.dscp == b.dscp && a.dscp_value == b.dscp_value && a.ttl == b.ttl &&
           a.tfc_pad_to == b.tfc_pad_to && a.initial_sequence == b.initial_sequence;
}

std::string describe(const config::route_config& r)
{
    std::string s = config::to_string(r.destination);
    if (r.via.family != 0) {
        s += " via " + config::to_string(r.via);
    }
    if (!r.interface.empty()) {
        s += " dev " + r.interface;
    }
    return s;
}

std::string describe(const config::neighbor_config& n)
{
    return config::to_string(n.address) + " lladdr " + config::to_string(n.mac) + " dev " + n.interface;
}

std::string describe(const config::policy_config& p)
{
    std::string s = config::to_string(p.local) + " -> " + config::to_string(p.remote);
    if (p.protocol != 0) {
        s += " proto " + std::to_string(p.protocol);
    }
    if (p.local_port_min != 0 || p.local_port_max != 65535) {
        s += " local-ports " + ports_text(p.local_port_min, p.local_port_max);
    }
    if (p.remote_port_min != 0 || p.remote_port_max != 65535) {
        s += " remote-ports " + ports_text(p.remote_port_min, p.remote_port_max);
    }
    s += std::string(" ") + config::to_string(p.action);
    if (p.action == config::policy_action::protect) {
        s += " spi " + spi_text(p.spi);
    }
    return s + " priority " + std::to_string(p.priority);
}

std::string describe(const config::sa_config& sa)
{
    return std::string(sa.dir == config::direction::inbound ? "inbound " : "outbound ") + spi_text(sa.spi) + " " +
           config::to_string(sa.local) + " <-> " + config::to_string(sa.remote);
}

std::string describe_change(const config::sa_config& a, const config::sa_config& b)
{
    std::string fields;
    auto note = [&](bool differs, const char* name) {
        if (differs) {
            fields += (fields.empty() ? "" : ", ") + std::string(name);
        }
    };
    note(a.protocol != b.protocol, "protocol");
    note(a.mode != b.mode, "mode");
    note(!(a.source == b.source), "source");
    note(!(a.destination == b.destination), "destination");
    note(a.cipher != b.cipher || a.cipher_key_bytes != b.cipher_key_bytes, "encryption");
    note(a.cipher_key_length != b.cipher_key_length ||
             !same_bytes(a.cipher_key.data(), b.cipher_key.data(), a.cipher_key.size()),
         "key");
    note(a.integ != b.integ, "integrity");
    note(a.integ_key_length != b.integ_key_length ||
             !same_bytes(a.integ_key.data(), b.integ_key.data(), a.integ_key.size()),
         "integrity-key");
    note(a.esn != b.esn, "esn");
    note(a.replay_window != b.replay_window, "replay-window");
    note(a.udp.has_value() != b.udp.has_value() ||
             (a.udp && (a.udp->source_port != b.udp->source_port ||
                        a.udp->destination_port != b.udp->destination_port)),
         "udp-encapsulation");
    note(!(a.local == b.local) || !(a.remote == b.remote), "selectors");
    note(a.lifetime.bytes != b.lifetime.bytes || a.lifetime.packets != b.lifetime.packets ||
             a.lifetime.soft_bytes != b.lifetime.soft_bytes || a.lifetime.soft_packets != b.lifetime.soft_packets,
         "lifetime");
    note(a.df != b.df, "df");
    note(a.dscp != b.dscp || a.dscp_value != b.dscp_value, "dscp");
    note(a.ttl != b.ttl, "ttl");
    note(a.tfc_pad_to != b.tfc_pad_to, "tfc-pad");
    note(a.initial_sequence != b.initial_sequence, "initial sequence");
    return describe(b) + " (" + (fields.empty() ? std::string("?") : fields) + ")";
}

config_diff diff_config(const config::gateway_config& running, const config::gateway_config& next)
{
    config_diff d;
    d.routes = diff_keyed(
        running.routes, next.routes,
        [](const config::route_config& r) {
            return std::make_tuple(r.destination.address.family, r.destination.address.bytes, r.destination.length);
        },
        same_route);
    d.neighbors = diff_keyed(
        running.neighbors, next.neighbors,
        [](const config::neighbor_config& n) { return std::make_tuple(n.interface, n.address.family, n.address.bytes); },
        same_neighbor);
    d.sas = diff_keyed(
        running.security_associations, next.security_associations,
        [](const config::sa_config& s) { return std::make_pair(static_cast<int>(s.dir), s.spi); }, same_sa);
    // Policies: equal content is the only identity (one to one, in order).
    std::vector<bool> matched(running.policies.size(), false);
    for (size_t j = 0; j < next.policies.size(); ++j) {
        bool found = false;
        for (size_t i = 0; i < running.policies.size() && !found; ++i) {
            if (!matched[i] && same_policy(running.policies[i], next.policies[j])) {
                matched[i] = true;
                found = true;
                d.policies.unchanged.emplace_back(i, j);
            }
        }
        if (!found) {
            d.policies.added.push_back(j);
        }
    }
    for (size_t i = 0; i < running.policies.size(); ++i) {
        if (!matched[i]) {
            d.policies.removed.push_back(i);
        }
    }

    // Start-only settings.
    const auto& a = running.dataplane;
    const auto& b = next.dataplane;
    auto& r = d.restart_needed;
    restart_setting(r, "dataplane.workers", std::to_string(a.workers), std::to_string(b.workers));
    restart_setting(r, "dataplane.eal", eal_text(a.eal), eal_text(b.eal));
    restart_setting(r, "dataplane.hugepages", a.hugepages ? "true" : "false", b.hugepages ? "true" : "false");
    restart_setting(r, "dataplane.idle", a.idle == config::idle_mode::poll ? "poll" : "adaptive",
                    b.idle == config::idle_mode::poll ? "poll" : "adaptive");
    restart_setting(r, "dataplane.control-socket", a.control_socket, b.control_socket);
    restart_setting(r, "dataplane.neighbor-reachable-time", std::to_string(a.neighbor_reachable_time),
                    std::to_string(b.neighbor_reachable_time));
    restart_setting(r, "dataplane.neighbor-table-size", std::to_string(a.neighbor_table_size),
                    std::to_string(b.neighbor_table_size));
    restart_setting(r, "dataplane.reassembly-datagrams", std::to_string(a.reassembly_datagrams),
                    std::to_string(b.reassembly_datagrams));
    restart_setting(r, "dataplane.reassembly-timeout-ms", std::to_string(a.reassembly_timeout_ms),
                    std::to_string(b.reassembly_timeout_ms));
    for (const auto& old_if : running.interfaces) {
        const config::interface_config* match = nullptr;
        for (const auto& new_if : next.interfaces) {
            if (new_if.name == old_if.name) {
                match = &new_if;
            }
        }
        if (match == nullptr) {
            r.push_back("interfaces: " + old_if.name + " removed");
        } else {
            restart_setting(r, "interfaces." + old_if.name, interface_text(old_if), interface_text(*match));
        }
    }
    for (const auto& new_if : next.interfaces) {
        bool known = false;
        for (const auto& old_if : running.interfaces) {
            known = known || old_if.name == new_if.name;
        }
        if (!known) {
            r.push_back("interfaces: " + interface_text(new_if) + " added");
        }
    }
    return d;
}

} // namespace espresso::dp
