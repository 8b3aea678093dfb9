// CLI text layouts (format.h). Input is the JSON the data plane sent, so every field is read
// defensively: a missing field prints as 0 or empty, never throws.
#include "format.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "espresso/dp/counters.h"

namespace espresso::cp::cli {

using nlohmann::json;

namespace {

uint64_t number(const json& object, std::string_view key)
{
    if (!object.is_object()) {
        return 0;
    }
    const auto it = object.find(key);
    if (it == object.end() || !it->is_number()) {
        return 0;
    }
    if (it->is_number_unsigned()) {
        return it->get<uint64_t>();
    }
    if (it->is_number_integer()) {
        return it->get<int64_t>() < 0 ? 0 : static_cast<uint64_t>(it->get<int64_t>());
    }
    return static_cast<uint64_t>(it->get<double>());
}

std::string text(const json& object, std::string_view key)
{
    if (!object.is_object()) {
        return "";
    }
    const auto it = object.find(key);
    return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

const json& member(const json& object, std::string_view key)
{
    static const json empty = json::object();
    if (!object.is_object()) {
        return empty;
    }
    const auto it = object.find(key);
    return it == object.end() ? empty : *it;
}

std::string spi_text(uint64_t spi)
{
    char buffer[40];
    std::snprintf(buffer, sizeof(buffer), "0x%llX(%llu)", static_cast<unsigned long long>(spi),
                  static_cast<unsigned long long>(spi));
    return buffer;
}

std::string without_length(const std::string& prefix) { return prefix.substr(0, prefix.find('/')); }

struct session {
    const json* outbound = nullptr;
    const json* inbound = nullptr;

    const json& any() const { return outbound != nullptr ? *outbound : *inbound; }
    std::string interface() const
    {
        std::string name = outbound != nullptr ? text(*outbound, "interface") : "";
        if (name.empty() && inbound != nullptr) {
            name = text(*inbound, "interface");
        }
        return name.empty() ? "(unknown)" : name;
    }
    bool tunnel() const { return text(any(), "mode") != "transport"; }
    // This gateway's end of the tunnel: the outbound SA's source, or the inbound SA's destination.
    std::string local_endpoint() const
    {
        if (!tunnel()) {
            return without_length(text(member(any(), "selectors"), "local"));
        }
        return outbound != nullptr ? text(*outbound, "source") : text(*inbound, "destination");
    }
    std::string remote_endpoint() const
    {
        if (!tunnel()) {
            return without_length(text(member(any(), "selectors"), "remote"));
        }
        return outbound != nullptr ? text(*outbound, "destination") : text(*inbound, "source");
    }
    uint64_t peer_port() const
    {
        if (outbound != nullptr && member(*outbound, "udp-encapsulation").is_object()) {
            return number(member(*outbound, "udp-encapsulation"), "destination-port");
        }
        if (inbound != nullptr && member(*inbound, "udp-encapsulation").is_object()) {
            return number(member(*inbound, "udp-encapsulation"), "source-port");
        }
        return 500; // IKE's port: where a Cisco peer is reached when nothing is NAT-traversed
    }
};

// RFC 4301 §4.4.1: the inbound SA of a pair carries the same selectors (local stays local), and its
// outer addresses are the outbound SA's reversed.
bool mirrors(const json& out, const json& in)
{
    const json& so = member(out, "selectors");
    const json& si = member(in, "selectors");
    if (text(so, "local") != text(si, "local") || text(so, "remote") != text(si, "remote")) {
        return false;
    }
    if (text(out, "mode") != text(in, "mode")) {
        return false;
    }
    if (text(out, "mode") == "transport") {
        return true;
    }
    return text(out, "source") == text(in, "destination") && text(out, "destination") == text(in, "source");
}

std::string transform(const json& sa)
{
    const std::string protocol = text(sa, "protocol") == "ah" ? "ah" : "esp";
    const std::string cipher = text(sa, "encryption");
    const std::string integ = text(sa, "integrity");
    std::string out;
    if (protocol == "esp") {
        auto bits = [&](size_t skip) { return cipher.substr(skip, 3); }; // "aes128..." -> "128"
        if (cipher.starts_with("aes") && cipher.ends_with("gcm16")) {
            out = "esp-aes-gcm " + bits(3);
        } else if (cipher.starts_with("aes") && cipher.ends_with("gmac")) {
            out = "esp-gmac " + bits(3);
        } else if (cipher.starts_with("aes")) {
            out = "esp-" + bits(3) + "-aes";
        } else if (cipher == "null") {
            out = "esp-null";
        } else {
            out = "esp-" + cipher;
        }
    }
    if (!integ.empty() && integ != "none") {
        const std::string hash = integ == "sha1" ? "sha" : integ;
        out += (out.empty() ? "" : " ") + protocol + "-" + hash + "-hmac";
    }
    return out;
}

std::string remaining(uint64_t limit, uint64_t used, uint64_t divisor)
{
    if (limit == 0) {
        return "unlimited";
    }
    return std::to_string((limit > used ? limit - used : 0) / divisor);
}

bool ike_keyed(const json& sa)
{
    return text(sa, "origin").starts_with("ike:");
}

// The seconds field of "(k/sec)" and the "keying:" line of one SA (add_ike_lifetimes() put "ike" there).
std::pair<std::string, std::string> time_lifetime(const json& sa)
{
    if (!ike_keyed(sa) && text(sa, "keying") != "ike") {
        const std::string origin = text(sa, "origin");
        return {"static", "static" + (origin.empty() ? std::string() : " (" + origin + ")") + ", no time lifetime"};
    }
    const json& ike = member(sa, "ike");
    const std::string name = ike_keyed(sa) ? text(sa, "origin").substr(4) // PEER/TUNNEL
                                           : text(ike, "peer") + "/" + text(ike, "tunnel");
    if (!ike.is_object()) {
        return {"unknown", "IKE " + name + ", time lifetime unknown (espresso-ike did not list it)"};
    }
    const json& rekey_in = member(ike, "rekey-in-seconds");
    const json& rekey_time = member(ike, "rekey-time-seconds");
    const std::string every =
        rekey_time.is_number_integer() && rekey_time.get<int64_t>() >= 0
            ? " (rekey-time " + std::to_string(rekey_time.get<int64_t>()) + " s)"
            : "";
    const std::string state = text(ike, "state");
    if (state == "REKEYED" || state == "DELETING") {
        return {"0", "IKE " + name + ", " + (state == "REKEYED" ? "rekeyed" : "being deleted") + every};
    }
    if (rekey_in.is_number()) {
        const std::string left = std::to_string(std::max<int64_t>(0, rekey_in.get<int64_t>()));
        return {left, "IKE " + name + ", rekey in " + left + " s" + every};
    }
    return {"unlimited", "IKE " + name + ", no rekey by time" + every};
}

void append_sa(std::string& out, const json& sa)
{
    const json& lifetime = member(sa, "lifetime");
    const json& consumed = member(sa, "consumed");
    const bool inbound = text(sa, "direction") == "inbound";
    std::string settings = text(sa, "mode") == "transport" ? "Transport" : "Tunnel";
    if (member(sa, "udp-encapsulation").is_object()) {
        settings += " UDP-Encaps";
    }
    settings += ", ";
    if (sa.is_object() && sa.value("esn", false)) {
        settings += "ESN, ";
    }
    const uint64_t bytes_limit = number(lifetime, "bytes");
    const uint64_t packets_limit = number(lifetime, "packets");
    const bool expired = (bytes_limit != 0 && number(consumed, "bytes") >= bytes_limit) ||
                         (packets_limit != 0 && number(consumed, "packets") >= packets_limit);
    const uint64_t window = number(sa, "replay-window");

    out += "      spi: " + spi_text(number(sa, "spi")) + "\n";
    out += "        transform: " + transform(sa) + " ,\n";
    out += "        in use settings ={" + settings + "}\n";
    // IOS's (k/sec): the KiB left of the hard byte limit (data plane) and the seconds until espresso-ike
    // replaces the key (a Child SA's time lifetime ends at its rekey; the data plane has no clock
    // limit). Packets, which IOS does not have, on a line of their own.
    const auto [seconds, keying] = time_lifetime(sa);
    out += "        sa timing: remaining key lifetime (k/sec): (" +
           remaining(bytes_limit, number(consumed, "bytes"), 1024) + "/" + seconds + ")\n";
    out += "        sa timing: remaining key lifetime (packets): (" +
           remaining(packets_limit, number(consumed, "packets"), 1) + ")\n";
    out += "        keying: " + keying + "\n";
    if (inbound && window > 0) {
        out += "        replay detection support: Y, window " + std::to_string(window) + "\n";
    } else {
        out += "        replay detection support: N\n";
    }
    out += std::string("        Status: ") + (expired ? "EXPIRED" : "ACTIVE") + "\n";
}

// Cisco's names where it has one, else ours ("#pkts bad padding: 3").
std::string drop_label(std::string_view id)
{
    if (id == "replay") {
        return "#pkts replay failed";
    }
    if (id == "too_old") {
        return "#pkts replay failed (too old)";
    }
    if (id == "icv") {
        return "#pkts ICV failed";
    }
    for (size_t i = 0; i < dp::drop_reason_names.size(); ++i) {
        if (dp::drop_reason_names[i] == id) {
            return "#pkts " + std::string(dp::drop_reason_texts[i]);
        }
    }
    return "#pkts " + std::string(id);
}

void append_session(std::string& out, const session& s)
{
    const json& any = s.any();
    const json& selectors = member(any, "selectors");
    const json empty = json::object();
    const json& out_counters = s.outbound != nullptr ? member(*s.outbound, "counters") : empty;
    const json& in_counters = s.inbound != nullptr ? member(*s.inbound, "counters") : empty;

    out += "   protected vrf: (none)\n";
    out +=
        "   local  ident (addr/mask/prot/port): (" + address_and_mask(text(selectors, "local")) + "/0/0)\n";
    out +=
        "   remote ident (addr/mask/prot/port): (" + address_and_mask(text(selectors, "remote")) + "/0/0)\n";
    out += "   current_peer " + s.remote_endpoint() + " port " + std::to_string(s.peer_port()) + "\n";
    out += "     PERMIT, flags={origin_is_acl,}\n";
    out += "    #pkts encaps: " + std::to_string(number(out_counters, "encaps")) +
           ", #pkts encrypt: " + std::to_string(number(out_counters, "encrypt")) +
           ", #pkts digest: " + std::to_string(number(out_counters, "digest")) + "\n";
    out += "    #pkts decaps: " + std::to_string(number(in_counters, "decaps")) +
           ", #pkts decrypt: " + std::to_string(number(in_counters, "decrypt")) +
           ", #pkts verify: " + std::to_string(number(in_counters, "verify")) + "\n";
    out += "    #pkts compressed: 0, #pkts decompressed: 0\n";
    out += "    #pkts not compressed: 0, #pkts compr. failed: 0\n";
    out += "    #pkts not decompressed: 0, #pkts decompress failed: 0\n";

    // Errors per direction; TFC dummy packets (RFC 4303 §2.6) are dropped by design, not errors.
    auto errors = [](const json* sa) {
        uint64_t sum = 0;
        if (sa != nullptr) {
            for (const auto& [name, value] : member(*sa, "drops").items()) {
                if (name != "dummy" && value.is_number_unsigned()) {
                    sum += value.get<uint64_t>();
                }
            }
        }
        return sum;
    };
    out += "    #send errors " + std::to_string(errors(s.outbound)) + ", #recv errors " +
           std::to_string(errors(s.inbound)) + "\n";
    for (const json* sa : {s.outbound, s.inbound}) {
        if (sa == nullptr) {
            continue;
        }
        // In the order counters.h declares them (the JSON object is sorted by name), then any name
        // this CLI does not know yet (a newer data plane).
        const json& drops = member(*sa, "drops");
        auto show = [&](const std::string& name) {
            const uint64_t count = number(drops, name);
            if (count != 0) {
                out += "    " + drop_label(name) + ": " + std::to_string(count) + "\n";
            }
        };
        for (const auto name : dp::drop_reason_names) {
            show(std::string(name));
        }
        for (const auto& [name, value] : drops.items()) {
            if (std::find(dp::drop_reason_names.begin(), dp::drop_reason_names.end(), name) ==
                dp::drop_reason_names.end()) {
                show(name);
            }
        }
    }
    out += "\n";
    out += "     local crypto endpt.: " + s.local_endpoint() +
           ", remote crypto endpt.: " + s.remote_endpoint() + "\n";
    out += "     current outbound spi: " + spi_text(s.outbound != nullptr ? number(*s.outbound, "spi") : 0) +
           "\n";
    out += "\n";
    for (const auto& [heading, sa, is_ah] :
         {std::tuple<std::string_view, const json*, bool>{"inbound esp sas:", s.inbound, false},
          std::tuple<std::string_view, const json*, bool>{"inbound ah sas:", s.inbound, true},
          std::tuple<std::string_view, const json*, bool>{"outbound esp sas:", s.outbound, false},
          std::tuple<std::string_view, const json*, bool>{"outbound ah sas:", s.outbound, true}}) {
        out += "     " + std::string(heading) + "\n";
        if (sa != nullptr && (text(*sa, "protocol") == "ah") == is_ah) {
            append_sa(out, *sa);
        }
    }
    out += "\n";
}

std::string pad(std::string s, size_t width)
{
    if (s.size() < width) {
        s.append(width - s.size(), ' ');
    }
    return s;
}

} // namespace

std::string address_and_mask(const std::string& prefix)
{
    const size_t slash = prefix.find('/');
    if (prefix.empty()) {
        return "0.0.0.0/0.0.0.0";
    }
    const std::string address = prefix.substr(0, slash);
    if (address.find(':') != std::string::npos) {
        return slash == std::string::npos ? address + "/128" : prefix;
    }
    unsigned length = 32;
    if (slash != std::string::npos) {
        length = static_cast<unsigned>(std::strtoul(prefix.c_str() + slash + 1, nullptr, 10));
    }
    const uint32_t mask = length == 0 ? 0 : length >= 32 ? 0xffffffffu : ~((1u << (32 - length)) - 1);
    char buffer[20];
    std::snprintf(buffer, sizeof(buffer), "%u.%u.%u.%u", mask >> 24, (mask >> 16) & 0xff, (mask >> 8) & 0xff,
                  mask & 0xff);
    return address + "/" + buffer;
}

void add_ike_lifetimes(json& result, const json* ike_result)
{
    if (!result.is_object() || !result.contains("sas") || !result["sas"].is_array()) {
        return;
    }
    // (direction, SPI) -> the Child SA as espresso-ike lists it.
    std::map<std::pair<bool, uint64_t>, json> children;
    if (ike_result != nullptr) {
        for (const auto& ike_sa : member(*ike_result, "ike-sas")) {
            for (const auto& c : member(ike_sa, "children")) {
                auto seconds = [&](const char* key) {
                    const json& v = member(c, key);
                    return v.is_number() ? v : json(nullptr);
                };
                json info = {{"peer", text(ike_sa, "peer")},
                             {"tunnel", text(c, "tunnel")},
                             {"state", text(c, "state")},
                             {"rekey-in-seconds", seconds("rekey-in-seconds")},
                             {"rekey-time-seconds", seconds("rekey-time-seconds")}};
                for (const auto& [key, inbound] : {std::pair<const char*, bool>{"spi-in", true}, {"spi-out", false}}) {
                    const std::string hex = text(c, key);
                    if (!hex.empty()) {
                        children[{inbound, std::strtoull(hex.c_str(), nullptr, 16)}] = info;
                    }
                }
            }
        }
    }
    for (auto& sa : result["sas"]) {
        if (!sa.is_object()) {
            continue;
        }
        // espresso-dp records SAs added through its control socket as "control socket" whoever sent
        // them: an SA is IKE-keyed when espresso-ike lists its SPI (or its origin says so).
        auto it = children.find({text(sa, "direction") == "inbound", number(sa, "spi")});
        const bool ike = ike_keyed(sa) || it != children.end();
        sa["keying"] = ike ? "ike" : "static";
        if (!ike) {
            continue;
        }
        sa["ike"] = it != children.end() ? it->second : json(nullptr);
    }
}

std::string format_crypto_ipsec_sa(const json& result)
{
    const json& sas = member(result, "sas");
    if (!sas.is_array() || sas.empty()) {
        return "No IPsec SAs installed.\n";
    }
    // Pair each outbound SA with the first unpaired inbound SA that mirrors it.
    std::vector<session> sessions;
    std::vector<bool> used(sas.size(), false);
    for (size_t i = 0; i < sas.size(); ++i) {
        if (used[i] || text(sas[i], "direction") != "outbound") {
            continue;
        }
        session s{&sas[i], nullptr};
        used[i] = true;
        for (size_t j = 0; j < sas.size(); ++j) {
            if (!used[j] && text(sas[j], "direction") == "inbound" && mirrors(sas[i], sas[j])) {
                s.inbound = &sas[j];
                used[j] = true;
                break;
            }
        }
        sessions.push_back(s);
    }
    for (size_t j = 0; j < sas.size(); ++j) {
        if (!used[j]) {
            sessions.push_back(session{nullptr, &sas[j]});
        }
    }
    // Cisco prints each interface once, then its sessions.
    std::vector<std::string> interfaces;
    for (const auto& s : sessions) {
        if (std::find(interfaces.begin(), interfaces.end(), s.interface()) == interfaces.end()) {
            interfaces.push_back(s.interface());
        }
    }
    std::string out;
    for (const auto& name : interfaces) {
        bool header = false;
        for (const auto& s : sessions) {
            if (s.interface() != name) {
                continue;
            }
            if (!header) {
                out += "interface: " + name + "\n";
                out += "    Crypto map tag: espresso, local addr " + s.local_endpoint() + "\n\n";
                header = true;
            }
            append_session(out, s);
        }
    }
    return out;
}

std::string format_interfaces(const json& result)
{
    const json& interfaces = member(result, "interfaces");
    if (!interfaces.is_array() || interfaces.empty()) {
        return "No interfaces.\n";
    }
    std::string out;
    for (const auto& i : interfaces) {
        const bool up = i.is_object() && i.value("link-up", false);
        const json& rx = member(i, "rx");
        const json& tx = member(i, "tx");
        out += text(i, "name") + " is " + (up ? "up" : "down") + "\n";
        out += "  Device " + text(i, "device") + " (port " + std::to_string(number(i, "port")) +
               "), address is " + text(i, "mac") + "\n";
        // "address" is the IPv4 address, or the IPv6 one on an IPv6-only interface; "address6" the IPv6 one.
        const std::string address = text(i, "address");
        if (!address.empty()) {
            out += std::string(address.find(':') == std::string::npos ? "  Internet address is " : "  IPv6 address is ") +
                   address + "/" + std::to_string(number(i, "prefix-length")) + "\n";
        }
        if (!text(i, "address6").empty() && text(i, "address6") != address) {
            out += "  IPv6 address is " + text(i, "address6") + "/" + std::to_string(number(i, "prefix-length6")) + "\n";
        }
        out += "  MTU " + std::to_string(number(i, "mtu")) + " bytes\n";
        out +=
            "  Exception path: " + (text(i, "tap").empty() ? std::string("(none)") : text(i, "tap")) + "\n";
        out += "  " + std::to_string(number(rx, "packets")) + " packets input, " +
               std::to_string(number(rx, "bytes")) + " bytes, " + std::to_string(number(rx, "missed")) +
               " missed, " + std::to_string(number(rx, "errors")) + " input errors\n";
        out += "  " + std::to_string(number(tx, "packets")) + " packets output, " +
               std::to_string(number(tx, "bytes")) + " bytes, " + std::to_string(number(tx, "errors")) +
               " output errors\n";
    }
    return out;
}

namespace {

std::string neighbor_footer(const json& result)
{
    const json& c = member(result, "counters");
    return "Neighbor cache: " + std::to_string(member(result, "neighbors").size()) + " of " +
           std::to_string(number(result, "capacity")) + " entries, reachable time " +
           std::to_string(number(result, "reachable-time")) + " s; " + std::to_string(number(c, "probes-sent")) +
           " probes sent, " + std::to_string(number(c, "unreachable")) + " unreachable, " +
           std::to_string(number(c, "collected")) + " expired unused, " + std::to_string(number(c, "cleared")) +
           " cleared, " + std::to_string(number(c, "evicted")) + " evicted idle, " +
           std::to_string(number(c, "table-full")) + " not learned (table full)\n";
}

double age_of(const json& e)
{
    return e.is_object() && e.contains("age-seconds") && e["age-seconds"].is_number() ? e["age-seconds"].get<double>() : 0;
}

} // namespace

std::string format_arp(const json& result)
{
    std::string out = pad("Protocol", 10) + pad("Address", 17) + pad("Age (min)", 11) + pad("Hardware Addr", 19) +
                      pad("Type", 7) + pad("State", 11) + "Interface\n";
    const json& entries = member(result, "neighbors");
    for (const auto& e : entries.is_array() ? entries : json::array()) {
        if (number(e, "family") != 4) {
            continue;
        }
        const bool is_static = e.is_object() && e.value("static", false);
        const std::string age = is_static ? "-" : std::to_string(static_cast<uint64_t>(age_of(e) / 60));
        out += pad("Internet", 10) + pad(text(e, "address"), 17) + pad(age, 11) + pad(text(e, "mac"), 19) +
               pad("ARPA", 7) + pad(is_static ? "static" : text(e, "state"), 11) + text(e, "interface") + "\n";
    }
    return out + neighbor_footer(result);
}

std::string format_ipv6_neighbors(const json& result)
{
    std::string out = pad("IPv6 Address", 42) + pad("Age", 6) + pad("Link-layer Addr", 19) + pad("State", 7) +
                      "Interface\n";
    const json& entries = member(result, "neighbors");
    for (const auto& e : entries.is_array() ? entries : json::array()) {
        if (number(e, "family") != 6) {
            continue;
        }
        const bool is_static = e.is_object() && e.value("static", false);
        // IOS abbreviations: REACH, STALE, PROBE, and "-" age for static entries.
        const std::string state = text(e, "state");
        const std::string ios = is_static ? "REACH" : state == "reachable" ? "REACH" : state == "probe" ? "PROBE" : "STALE";
        const std::string age = is_static ? "-" : std::to_string(static_cast<uint64_t>(age_of(e)));
        out += pad(text(e, "address"), 42) + pad(age, 6) + pad(text(e, "mac"), 19) + pad(ios, 7) +
               text(e, "interface") + "\n";
    }
    return out + neighbor_footer(result);
}

std::string format_dataplane(const json& result)
{
    const json& workers = member(result, "workers");
    if (!workers.is_array() || workers.empty()) {
        return "No workers.\n";
    }
    std::string out = pad("Worker", 8) + pad("Lcore", 7) + pad("RX packets", 16) + pad("TX packets", 16) +
                      pad("To kernel", 14) + "Busy\n";
    uint64_t rx = 0, tx = 0, exception = 0;
    for (size_t w = 0; w < workers.size(); ++w) {
        const json& worker = workers[w];
        double busy = 0;
        if (worker.is_object() && worker.contains("busy-percent") && worker["busy-percent"].is_number()) {
            busy = worker["busy-percent"].get<double>();
        }
        char busy_text[16];
        std::snprintf(busy_text, sizeof(busy_text), "%.1f%%", busy);
        out += pad(std::to_string(w), 8) + pad(std::to_string(number(worker, "lcore")), 7) +
               pad(std::to_string(number(worker, "rx-packets")), 16) +
               pad(std::to_string(number(worker, "tx-packets")), 16) +
               pad(std::to_string(number(worker, "to-exception")), 14) + busy_text + "\n";
        rx += number(worker, "rx-packets");
        tx += number(worker, "tx-packets");
        exception += number(worker, "to-exception");
        std::string drops;
        for (const auto& [name, value] : member(worker, "drops").items()) {
            if (value.is_number_unsigned() && value.get<uint64_t>() != 0) {
                drops += (drops.empty() ? "" : ", ") + name + " " + std::to_string(value.get<uint64_t>());
            }
        }
        if (number(worker, "fragments") != 0 || number(worker, "reassembled") != 0) {
            out += "        fragments to the gateway: " + std::to_string(number(worker, "fragments")) +
                   " received, " + std::to_string(number(worker, "reassembled")) + " datagrams reassembled\n";
        }
        if (!drops.empty()) {
            out += "        drops: " + drops + "\n";
        }
        // The main lcore's row: the gateway's own traffic through the TAPs (RFC 4301 host-to-host).
        if (worker.is_object() && worker.contains("local-traffic")) {
            const json& local = worker["local-traffic"];
            out += "        gateway's own traffic: out protected " +
                   std::to_string(number(local, "out_protected")) + ", bypass " +
                   std::to_string(number(local, "out_bypass")) + ", implicit bypass " +
                   std::to_string(number(local, "out_implicit_bypass")) + "; in decrypted " +
                   std::to_string(number(local, "in_decrypted")) + ", clear " +
                   std::to_string(number(local, "in_clear")) + ", implicit bypass " +
                   std::to_string(number(local, "in_implicit_bypass")) + "\n";
        }
    }
    out += pad("Total", 15) + pad(std::to_string(rx), 16) + pad(std::to_string(tx), 16) +
           std::to_string(exception) + "\n";
    return out;
}

} // namespace espresso::cp::cli
