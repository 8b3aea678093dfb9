// espresso: the operator's command line (docs/cli.md). Talks to espresso-dp over its control socket
// and to espresso-ike over its operator socket (same framing).
//
// Exit codes: 0 ok, 1 the data plane refused or failed the request, 2 usage (or unreadable --config),
// 3 cannot connect to the control socket.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "espresso/config/loader.h"
#include <chrono>
#include <thread>

#include "espresso/cp/ike_control.h"
#include "espresso/dp/control_client.h"
#include "format.h"
#include "format_ike.h"
#include "lifecycle.h"

namespace {

using nlohmann::json;
namespace cli = espresso::cp::cli;

constexpr int exit_ok = 0;
constexpr int exit_refused = 1;
constexpr int exit_usage = 2;
constexpr int exit_cannot_connect = 3;

constexpr const char* usage_text =
    "usage: espresso [--socket PATH | --config FILE] [--ike-socket PATH] [--json] COMMAND\n"
    "       espresso up FILE [--log-dir DIR] [--log-stderr] [--no-log-files] [--foreground]\n"
    "       espresso down FILE | status FILE\n"
    "\n"
    "gateway processes:\n"
    "  up FILE                     start espresso-dp (and espresso-ike if FILE has ike peers) in the background;\n"
    "                              logs in DIR (--log-dir, default /var/log/espresso) and/or on stderr\n"
    "                              (--log-stderr, lines prefixed with the daemon; --no-log-files: stderr only);\n"
    "                              --foreground: stay attached (logs on stderr) until SIGINT/SIGTERM, then stop\n"
    "  down FILE                   stop them (IKE first, so it deletes its SAs)\n"
    "  status FILE                 whether both answer, with PIDs and IKE SA count\n"
    "data plane (espresso-dp):\n"
    "  show crypto ipsec sa        IPsec SAs with counters, in the layout of Cisco IOS\n"
    "  show interfaces             data plane ports: MAC, address, MTU, link, packet counters\n"
    "  show dataplane              worker lcores: packets, busy share, drops\n"
    "  show arp                    the ARP cache with NUD state and age (also: show ip arp)\n"
    "  show ipv6 neighbors         the IPv6 neighbor cache (NDP) with NUD state and age\n"
    "  clear arp                   drop learned ARP entries (also: clear arp-cache); static ones stay\n"
    "  clear ipv6 neighbors        drop learned IPv6 neighbor entries\n"
    "  clear counters              zero every SA, interface and worker counter\n"
    "IKE (espresso-ike):\n"
    "  show crypto isakmp sa       IKE SAs: dst src state conn-id status\n"
    "  show crypto ikev2 sa        IKE SAs with proposal, lifetime, SPIs, NAT-T\n"
    "  show crypto session         IKE SAs and the flows their Child SAs protect\n"
    "  show crypto ike failures    why negotiations failed, each with the fix\n"
    "  show crypto ikev2 stats     the IKE daemon's message, cookie, timer and fragment (RFC 7383)\n"
    "                              counters, drops by reason (also: show crypto ike counters)\n"
    "  initiate NAME               bring up a peer or tunnel (\"peer\", \"tunnel\" or \"peer/tunnel\")\n"
    "  clear crypto sa [PEER]      delete IKE SAs (all, or one peer's by name or address)\n"
    "  debug ike                   follow the IKE daemon's negotiation log (Ctrl-C to stop)\n"
    "  reload                      re-read the file: espresso-dp applies routes, neighbors, policies and\n"
    "                              static SAs, espresso-ike its ike: section; unchanged items are not touched;\n"
    "                              prints what changed and what needs a restart\n"
    "  reload --dry-run            the same report (per section, and what needs a restart) without\n"
    "                              applying anything in either daemon\n"
    "\n"
    "options:\n"
    "  --socket PATH      control socket of espresso-dp (default /run/espresso/espresso.sock)\n"
    "  --config FILE      read the socket path from FILE's dataplane.control-socket\n"
    "  --ike-socket PATH  espresso-ike's socket (default: the data plane's, NAME.sock -> NAME-ike.sock)\n"
    "  --json             print the JSON result instead of text\n"
    "  --help             this text\n"
    "\n"
    "exit codes: 0 ok, 1 refused, 2 usage, 3 cannot connect\n";

enum class daemon : uint8_t { dataplane, ike };

struct command {
    std::vector<std::string> words;
    std::string op;
    std::string (*format)(const json&);
    daemon target = daemon::dataplane;
    int args = 0; // trailing words: 0 none, 1 exactly one, -1 at most one
    uint8_t family = 0; // neighbor commands: 4 (ARP) or 6 (NDP)
};

const std::vector<command>& commands()
{
    static const std::vector<command> table{
        {{"show", "crypto", "ipsec", "sa"}, "list-sas", cli::format_crypto_ipsec_sa},
        {{"show", "interfaces"}, "show-interfaces", cli::format_interfaces},
        {{"show", "dataplane"}, "show-dataplane", cli::format_dataplane},
        {{"clear", "counters"}, "clear-counters", nullptr},
        {{"show", "arp"}, "show-neighbors", cli::format_arp},
        {{"show", "ip", "arp"}, "show-neighbors", cli::format_arp},
        {{"show", "ipv6", "neighbors"}, "show-neighbors", cli::format_ipv6_neighbors},
        {{"clear", "arp"}, "clear-neighbors", nullptr, daemon::dataplane, 0, 4},
        {{"clear", "arp-cache"}, "clear-neighbors", nullptr, daemon::dataplane, 0, 4},
        {{"clear", "ipv6", "neighbors"}, "clear-neighbors", nullptr, daemon::dataplane, 0, 6},
        {{"show", "crypto", "isakmp", "sa"}, "list-ike-sas", cli::format_isakmp_sa, daemon::ike},
        {{"show", "crypto", "ikev2", "sa"}, "list-ike-sas", cli::format_ikev2_sa, daemon::ike},
        {{"show", "crypto", "session"}, "list-ike-sas", cli::format_crypto_session, daemon::ike},
        {{"show", "crypto", "ike", "failures"}, "failures", cli::format_ike_failures, daemon::ike},
        {{"show", "crypto", "ikev2", "stats"}, "counters", cli::format_ikev2_stats, daemon::ike},
        {{"show", "crypto", "ike", "counters"}, "counters", cli::format_ikev2_stats, daemon::ike},
        {{"initiate"}, "initiate", nullptr, daemon::ike, 1},
        {{"clear", "crypto", "sa"}, "clear", nullptr, daemon::ike, -1},
        {{"debug", "ike"}, "log", nullptr, daemon::ike},
        {{"reload"}, "reload", nullptr, daemon::dataplane},
    };
    return table;
}

// `espresso reload`, the data plane's part: per section what changed (unchanged items are listed
// when there are few, counted otherwise), then what needs a restart.
std::string format_dataplane_reload(const json& r)
{
    // A stream, not `+` chains: GCC 12 reports those with a false -Wrestrict here.
    std::ostringstream out;
    const bool dry_run = r.value("dry-run", false);
    out << "dataplane (" << r.value("file", std::string()) << ")";
    if (dry_run) {
        out << ": dry run, nothing applied\n";
    } else {
        out << (r.value("applied", false) ? "\n" : ": nothing to apply\n");
    }
    const json sections = r.value("sections", json::object());
    for (const char* name : {"routes", "neighbors", "policies", "security-associations"}) {
        const json sec = sections.value(name, json::object());
        auto list = [&](const char* k) { return sec.value(k, json::array()); };
        out << "  " << name << ": " << list("added").size() << " added, " << list("removed").size() << " removed, "
            << list("changed").size() << " changed, " << list("unchanged").size() << " unchanged\n";
        for (const char* k : {"added", "removed", "changed"}) {
            for (const auto& item : list(k)) {
                out << "    " << k << ": " << item.get<std::string>() << "\n";
            }
        }
        if (list("unchanged").size() <= 8) {
            for (const auto& item : list("unchanged")) {
                out << "    unchanged: " << item.get<std::string>() << "\n";
            }
        }
    }
    const json restart = r.value("restart-needed", json::array());
    if (restart.empty()) {
        out << "  restart needed: none\n";
    } else {
        out << "  restart needed (" << (dry_run ? "" : "not applied; ")
            << "`espresso down FILE` and `espresso up FILE` apply them):\n";
        for (const auto& item : restart) {
            out << "    " << item.get<std::string>() << "\n";
        }
    }
    return out.str();
}

std::string format_ike_reload(const json& result)
{
    std::ostringstream out;
    out << (result.value("dry-run", false) ? "ike: dry run, nothing applied\npeers\n" : "ike\npeers\n");
    for (const char* k : {"added", "changed", "updated", "removed", "unchanged"}) {
        out << "  " << k << ":";
        for (const auto& name : result.value(k, json::array())) {
            out << " " << name.get<std::string>();
        }
        out << "\n";
    }
    out << "tunnels\n";
    for (const auto& t : result.value("tunnels", json::array())) {
        out << "  " << t.value("peer", "") << "/" << t.value("tunnel", "") << ": " << t.value("change", "") << "\n";
    }
    // An older espresso-ike sends no restart-needed.
    if (const json restart = result.value("restart-needed", json::array()); !restart.empty()) {
        out << "restart needed (espresso-ike reads these at start only):\n";
        for (const auto& item : restart) {
            out << "  " << item.get<std::string>() << "\n";
        }
    }
    return out.str();
}

// `espresso reload`: the data plane first (it checks the whole file before it changes anything; a
// refusal stops here, so the IKE daemon does not run on a file its data plane refused), then
// espresso-ike when it runs (a gateway with static SAs only has none). `dry_run`: both only report.
int reload_gateway(const std::string& socket_path, const std::string& ike_socket_path, bool as_json, bool dry_run)
{
    json combined = json::object();
    std::string text;
    const json args = dry_run ? json{{"dry-run", true}} : json(nullptr);
    {
        auto client = espresso::dp::control_client::connect(socket_path);
        const json reply = client.request("reload", args, std::chrono::seconds(60));
        if (const std::string error = espresso::dp::reply_error(reply); !error.empty()) {
            std::cerr << "espresso: data plane: " << error << "\n";
            return exit_refused;
        }
        combined["dataplane"] = reply.value("result", json::object());
        text += format_dataplane_reload(combined["dataplane"]);
    }
    int rc = exit_ok;
    const std::string ike_path = !ike_socket_path.empty() ? ike_socket_path : espresso::cp::ike_socket_path(socket_path);
    try {
        auto client = espresso::dp::control_client::connect(ike_path);
        if (dry_run) {
            // An espresso-ike older than dry runs ignores the argument and would apply the reload.
            const json ping = client.request("ping");
            const json features = ping.value("result", json::object()).value("features", json::array());
            if (std::find(features.begin(), features.end(), "reload-dry-run") == features.end()) {
                std::cout << (as_json ? combined.dump(2) + "\n" : text);
                std::cerr << "espresso: ike: this espresso-ike cannot do a dry run (it is older than "
                             "`reload --dry-run`); it was not asked\n";
                return exit_refused;
            }
        }
        const json reply = client.request("reload", args, std::chrono::seconds(60));
        if (const std::string error = espresso::dp::reply_error(reply); !error.empty()) {
            combined["ike"] = nullptr;
            combined["ike-error"] = error;
            text.append("ike: refused: ").append(error).append("\n");
            rc = exit_refused;
        } else {
            combined["ike"] = reply.value("result", json::object());
            text += format_ike_reload(combined["ike"]);
        }
    } catch (const espresso::dp::control_client_error& e) {
        if (e.what_kind() != espresso::dp::control_client_error::kind::connect) {
            throw;
        }
        combined["ike"] = nullptr;
        combined["ike-error"] = std::string("not running (") + ike_path + ")";
        text.append("ike: espresso-ike is not running (").append(ike_path).append("): nothing to reload\n");
    }
    std::cout << (as_json ? combined.dump(2) + "\n" : text);
    if (rc != exit_ok) {
        std::cerr << "espresso: ike: " << combined["ike-error"].get<std::string>() << "\n";
    }
    return rc;
}

int usage_error(const std::string& message)
{
    std::cerr << "espresso: " << message << "\n\n" << usage_text;
    return exit_usage;
}

} // namespace

int main(int argc, char** argv)
{
    std::string socket_path;
    std::string config_path;
    std::string ike_socket_path;
    std::string log_dir = "/var/log/espresso";
    bool as_json = false;
    bool dry_run = false; // reload --dry-run
    bool log_stderr = false, no_log_files = false, foreground = false, up_flags = false;
    std::vector<std::string> words;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::cout << usage_text;
            return exit_ok;
        }
        if (arg == "--json") {
            as_json = true;
        } else if (arg == "--dry-run") {
            dry_run = true;
        } else if (arg == "--log-stderr" || arg == "--no-log-files" || arg == "--foreground") {
            (arg == "--log-stderr" ? log_stderr : arg == "--no-log-files" ? no_log_files : foreground) = true;
            up_flags = true;
        } else if (arg == "--socket" || arg == "--config") {
            if (i + 1 >= argc) {
                return usage_error(arg + " needs a value");
            }
            (arg == "--socket" ? socket_path : config_path) = argv[++i];
        } else if (arg == "--log-dir") {
            if (i + 1 >= argc) {
                return usage_error(arg + " needs a value");
            }
            log_dir = argv[++i];
        } else if (arg == "--ike-socket") {
            if (i + 1 >= argc) {
                return usage_error(arg + " needs a value");
            }
            ike_socket_path = argv[++i];
        } else if (arg.starts_with("--socket=")) {
            socket_path = arg.substr(9);
        } else if (arg.starts_with("--config=")) {
            config_path = arg.substr(9);
        } else if (arg.starts_with("-")) {
            return usage_error("unknown option " + arg);
        } else {
            words.push_back(arg);
        }
    }
    if (!socket_path.empty() && !config_path.empty()) {
        return usage_error("give either --socket or --config, not both");
    }
    if (dry_run && (words.size() != 1 || words[0] != "reload")) {
        return usage_error("--dry-run is an option of `espresso reload`");
    }
    if (up_flags && (words.empty() || words[0] != "up")) {
        return usage_error("--log-stderr, --no-log-files and --foreground are options of `espresso up`");
    }
    if (!words.empty() && (words[0] == "up" || words[0] == "down" || words[0] == "status")) {
        cli::lifecycle_options o;
        o.config_path = words.size() == 2 ? words[1] : config_path;
        o.log_dir = log_dir;
        o.json = as_json;
        o.foreground = foreground;
        o.log_stderr = log_stderr || foreground; // attached: the log belongs on our stderr
        o.log_files = !no_log_files;
        if (o.config_path.empty() || words.size() > 2) {
            return usage_error(words[0] + " needs the gateway's YAML file: espresso " + words[0] + " FILE");
        }
        return words[0] == "up" ? cli::gateway_up(o) : words[0] == "down" ? cli::gateway_down(o) : cli::gateway_status(o);
    }
    const command* chosen = nullptr;
    std::vector<std::string> extra;
    for (const auto& c : commands()) {
        if (words.size() < c.words.size() || !std::equal(c.words.begin(), c.words.end(), words.begin())) {
            continue;
        }
        size_t rest = words.size() - c.words.size();
        if ((c.args == 0 && rest == 0) || (c.args == 1 && rest == 1) || (c.args == -1 && rest <= 1)) {
            chosen = &c;
            extra.assign(words.begin() + static_cast<long>(c.words.size()), words.end());
        }
    }
    if (chosen == nullptr) {
        std::string given;
        for (const auto& w : words) {
            given += (given.empty() ? "" : " ") + w;
        }
        return usage_error(words.empty() ? "no command given" : "unknown command \"" + given + "\"");
    }

    if (!config_path.empty()) {
        try {
            auto config = espresso::config::load_file(config_path);
            socket_path = config.dataplane.control_socket;
            for (auto& sa : config.security_associations) {
                espresso::config::wipe_keys(sa); // we only wanted the socket path
            }
        } catch (const std::exception& e) {
            std::cerr << "espresso: " << e.what() << "\n";
            return exit_usage;
        }
    }
    if (socket_path.empty()) {
        socket_path = espresso::config::dataplane_config{}.control_socket;
    }
    json args = nullptr;
    if (chosen->op == "clear-neighbors") {
        args = {{"family", chosen->family}};
    }
    if (chosen->target == daemon::ike) {
        socket_path = !ike_socket_path.empty() ? ike_socket_path : espresso::cp::ike_socket_path(socket_path);
        if (chosen->op == "initiate") {
            args = {{"name", extra.at(0)}};
        } else if (chosen->op == "clear" && !extra.empty()) {
            args = {{"peer", extra.at(0)}};
        }
    }

    try {
        if (chosen->op == "reload") {
            return reload_gateway(socket_path, ike_socket_path, as_json, dry_run);
        }
        auto client = espresso::dp::control_client::connect(socket_path);
        if (chosen->op == "log") {
            // `debug ike`: print the recent log, then follow it.
            uint64_t since = 0;
            for (;;) {
                const json reply = client.request("log", {{"since", since}});
                if (const std::string error = espresso::dp::reply_error(reply); !error.empty()) {
                    std::cerr << "espresso: " << error << "\n";
                    return exit_refused;
                }
                for (const auto& line : reply["result"]["lines"]) {
                    std::cout << (as_json ? line.dump() + "\n" : cli::format_log_line(line));
                }
                std::cout.flush();
                since = reply["result"].value("next", since);
                std::this_thread::sleep_for(std::chrono::milliseconds(300));
            }
        }
        const json reply = client.request(chosen->op, args);
        if (const std::string error = espresso::dp::reply_error(reply); !error.empty()) {
            std::cerr << "espresso: " << error << "\n";
            return exit_refused;
        }
        json result = reply.contains("result") ? reply["result"] : json::object();
        if (chosen->op == "list-sas") {
            // Time lifetimes of IKE-keyed SAs are espresso-ike's (the data plane counts bytes and
            // packets only): ask it, best effort; without it those SAs show "unknown".
            bool any_ike = false;
            for (const auto& sa : result.value("sas", json::array())) {
                const std::string origin = sa.is_object() ? sa.value("origin", "") : "";
                any_ike = any_ike || origin.starts_with("ike:") || origin == "control socket";
            }
            std::optional<json> ike;
            if (any_ike) {
                try {
                    auto ike_client = espresso::dp::control_client::connect(
                        !ike_socket_path.empty() ? ike_socket_path : espresso::cp::ike_socket_path(socket_path));
                    const json ike_reply = ike_client.request("list-ike-sas", nullptr);
                    if (espresso::dp::reply_error(ike_reply).empty() && ike_reply.contains("result")) {
                        ike = ike_reply["result"];
                    }
                } catch (const std::exception&) {
                    // not running (static SAs only, or it is down): the lifetimes stay unknown
                }
            }
            cli::add_ike_lifetimes(result, ike ? &*ike : nullptr);
        }
        if (as_json) {
            std::cout << result.dump(2) << "\n";
        } else if (chosen->format != nullptr) {
            std::cout << chosen->format(result);
        } else if (chosen->op == "clear-neighbors") {
            std::cout << "cleared " << result.value("cleared", 0) << (chosen->family == 4 ? " ARP" : " IPv6 neighbor")
                      << " entr" << (result.value("cleared", 0) == 1 ? "y" : "ies") << "\n";
        } else if (chosen->op == "initiate") {
            std::cout << "initiating " << extra.at(0) << "\n";
        } else if (chosen->op == "clear") {
            std::cout << "deleting " << result.value("cleared", 0) << " IKE SA(s)\n";
        }
        return exit_ok;
    } catch (const espresso::dp::control_client_error& e) {
        std::cerr << "espresso: " << e.what() << "\n";
        return e.what_kind() == espresso::dp::control_client_error::kind::connect ? exit_cannot_connect
                                                                                  : exit_refused;
    } catch (const std::exception& e) {
        std::cerr << "espresso: " << e.what() << "\n";
        return exit_refused;
    }
}
