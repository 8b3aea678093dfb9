#include "format_ike.h"

#include <cstdio>

namespace espresso::cp::cli {
namespace {

using nlohmann::json;

std::string str(const json& j, const char* key, const std::string& fallback = "")
{
    if (j.is_object() && j.contains(key) && j[key].is_string()) {
        return j[key].get<std::string>();
    }
    return fallback;
}

std::string host(const std::string& endpoint)
{
    auto colon = endpoint.rfind(':');
    return colon == std::string::npos ? endpoint : endpoint.substr(0, colon);
}

// The daemon writes endpoints as "address:port"; an IPv6 address is shown as "[address]:port" (RFC 5952
// §6), so the port cannot be read as part of the address.
bool is_ipv6_endpoint(const std::string& endpoint)
{
    return host(endpoint).find(':') != std::string::npos;
}

std::string show_endpoint(const std::string& endpoint)
{
    if (!is_ipv6_endpoint(endpoint)) {
        return endpoint;
    }
    // Appended piecewise: GCC 12 warns (-Wrestrict, a known false positive) on "[" + std::string.
    const auto colon = endpoint.rfind(':');
    std::string out(1, '[');
    out.append(endpoint, 0, colon);
    out.push_back(']');
    out.append(endpoint, colon, std::string::npos);
    return out;
}

std::string pad(std::string s, size_t width)
{
    if (s.size() < width) {
        s.append(width - s.size(), ' ');
    }
    return s;
}

const json& sas_of(const json& result)
{
    static const json empty = json::array();
    return result.is_object() && result.contains("ike-sas") && result["ike-sas"].is_array() ? result["ike-sas"] : empty;
}

} // namespace

std::string format_isakmp_sa(const json& result)
{
    // Cisco IOS lists IPv4 and IPv6 IKE SAs in sections of their own; IPv6 addresses need wider columns.
    std::string out;
    for (bool v6 : {false, true}) {
        const size_t width = v6 ? 39 : 15;
        out += std::string(v6 ? "\nIPv6" : "IPv4") + " Crypto ISAKMP SA\n";
        out += pad("dst", width) + " " + pad("src", width) + " state          conn-id status\n";
        for (const auto& sa : sas_of(result)) {
            if (is_ipv6_endpoint(str(sa, "remote")) != v6) {
                continue;
            }
            char line[64];
            std::string status = str(sa, "state") == "READY" ? "ACTIVE" : str(sa, "state");
            std::snprintf(line, sizeof(line), " %7lld ", static_cast<long long>(sa.value("conn-id", 0)));
            out += pad(host(str(sa, "remote")), width) + " " + pad(host(str(sa, "local")), width) + " " +
                   pad(str(sa, "isakmp-state"), 14) + line + status + "\n";
            // Below each SA what IOS shows with `detail`: version, proposal and lifetime.
            out += "    IKEv2, " + str(sa, "proposal", "-") + ", life " +
                   std::to_string(sa.value("lifetime-seconds", 0LL)) + " s, peer " + str(sa, "peer") + "\n";
        }
    }
    return out;
}

std::string format_ikev2_sa(const json& result)
{
    std::string out;
    int id = 0;
    for (bool v6 : {false, true}) {
        const size_t width = v6 ? 47 : 21; // "[" IPv6 "]:" port
        out += std::string(v6 ? " IPv6" : " IPv4") + " Crypto IKEv2  SA\n\n";
        for (const auto& sa : sas_of(result)) {
            if (is_ipv6_endpoint(str(sa, "remote")) != v6) {
                continue;
            }
            ++id;
            out += "Tunnel-id " + pad("Local", width) + " " + pad("Remote", width) + " fvrf/ivrf            Status\n";
            out += pad(std::to_string(id), 9) + " " + pad(show_endpoint(str(sa, "local")), width) + " " +
                   pad(show_endpoint(str(sa, "remote")), width) + " none/none            " + str(sa, "state") + "\n";
            out += "      Peer: " + str(sa, "peer") + " (" + str(sa, "remote-id", "-") + "), role " + str(sa, "role") +
                   ", version IKEv2\n";
            const std::string method = str(sa, "auth") == "pubkey" ? "Certificate" : "PSK";
            out += "      Proposal: " + str(sa, "proposal", "-") + ", Auth sign: " + method + ", Auth verify: " + method + "\n";
            long long life = sa.value("lifetime-seconds", 0LL);
            out += "      Life: " + std::to_string(life) + " sec, established " + str(sa, "established", "-") + "\n";
            out += "      Local spi: " + str(sa, str(sa, "role") == "initiator" ? "spi-i" : "spi-r") +
                   "       Remote spi: " + str(sa, str(sa, "role") == "initiator" ? "spi-r" : "spi-i") + "\n";
            // Identities as Cisco's `detailed` output shows them, with the RFC 7296 §3.5 ID type.
            auto identity = [&](const char* key) {
                const std::string id = str(sa, key), type = str(sa, (std::string(key) + "-type").c_str());
                return id.empty() ? std::string("-") : id + (type.empty() ? std::string() : " (" + type + ")");
            };
            out += "      Local id: " + identity("local-id") + "\n";
            out += "      Remote id: " + identity("remote-id") + "\n";
            const auto& nat = sa.contains("nat") ? sa["nat"] : json::object();
            bool nat_local = nat.value("local-behind-nat", false), nat_remote = nat.value("remote-behind-nat", false);
            out += std::string("      NAT-T is ") +
                   (nat_local || nat_remote ? std::string("detected ") + (nat_local ? "inside" : "outside") : "not detected") + "\n";
            out += "      Child SAs: " + std::to_string(sa.contains("children") ? sa["children"].size() : 0) + "\n\n";
        }
    }
    return out;
}

std::string format_crypto_session(const json& result)
{
    std::string out = "Crypto session current status\n\n";
    for (const auto& sa : sas_of(result)) {
        out += "Interface: outside\n";
        out += "Profile: " + str(sa, "peer") + "\n";
        out += "Session status: " + std::string(str(sa, "state") == "READY" ? "UP-ACTIVE" : "UP-NO-IKE") + "\n";
        out += "Peer: " + host(str(sa, "remote")) + " port " + str(sa, "remote").substr(str(sa, "remote").rfind(':') + 1) + "\n";
        out += "  IKEv2 SA: local " + show_endpoint(str(sa, "local")) + " remote " + show_endpoint(str(sa, "remote")) + " " +
               (str(sa, "state") == "READY" ? "Active" : str(sa, "state")) + "\n";
        if (sa.contains("children")) {
            for (const auto& c : sa["children"]) {
                out += "  IPSEC FLOW: permit ip " + str(c, "local") + " " + str(c, "remote") + "\n";
                // A rekey's held outbound SA (docs/ike.md) is not active: only the inbound one counts.
                const std::string outbound = str(c, "outbound", "installed");
                out += "        Active SAs: " + std::string(outbound == "installed" ? "2" : "1") + ", origin: " +
                       std::string(str(sa, "role") == "initiator" ? "crypto map" : "dynamic") + ", tunnel " + str(c, "tunnel") +
                       ", spi in " + str(c, "spi-in") + " out " + str(c, "spi-out") +
                       (outbound == "installed" ? "" : " (" + outbound + ")") + "\n";
            }
        }
        out += "\n";
    }
    return out;
}

std::string format_ike_failures(const json& result)
{
    std::string out;
    if (!result.is_object() || !result.contains("failures") || result["failures"].empty()) {
        return "No IKE negotiation failures recorded.\n";
    }
    for (const auto& f : result["failures"]) {
        out += str(f, "time") + "  peer " + str(f, "peer") + " (" + str(f, "remote") + ")\n";
        out += "  Cause: " + str(f, "cause") + "\n";
        out += "  Fix:   " + str(f, "fix") + "\n\n";
    }
    return out;
}

std::string format_ikev2_stats(const json& result)
{
    if (!result.is_object()) {
        return "No IKE counters.\n";
    }
    std::string out = "IKEv2 daemon counters\n";
    std::string groups;
    for (const auto& [name, value] : result.items()) {
        if (value.is_object()) { // e.g. "fragments" (RFC 7383): a block of its own after the flat counters
            groups += name + "\n";
            for (const auto& [sub, v] : value.items()) {
                groups += "  " + pad(sub, 24) + " " + (v.is_number() ? std::to_string(v.get<uint64_t>()) : v.dump()) + "\n";
            }
            continue;
        }
        out += "  " + pad(name, 24) + " " + (value.is_number() ? std::to_string(value.get<uint64_t>()) : value.dump()) + "\n";
    }
    out += groups;
    return out;
}

std::string format_log_line(const json& line)
{
    std::string sa = str(line, "sa");
    return str(line, "time") + " " + pad(str(line, "level"), 7) + " " + (sa.empty() || sa == "-" ? "" : sa + ": ") + str(line, "text") + "\n";
}

} // namespace espresso::cp::cli
