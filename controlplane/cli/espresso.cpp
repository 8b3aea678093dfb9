// espresso: the operator's command line (docs/cli.md). Talks to espresso-dp over its control socket.
//
// Exit codes: 0 ok, 1 the data plane refused or failed the request, 2 usage (or unreadable --config),
// 3 cannot connect to the control socket.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "espresso/config/loader.h"
#include "espresso/dp/control_client.h"
#include "format.h"

namespace {

using nlohmann::json;
namespace cli = espresso::cp::cli;

constexpr int exit_ok = 0;
constexpr int exit_refused = 1;
constexpr int exit_usage = 2;
constexpr int exit_cannot_connect = 3;

constexpr const char* usage_text =
    "usage: espresso [--socket PATH | --config FILE] [--json] COMMAND\n"
    "\n"
    "commands:\n"
    "  show crypto ipsec sa   IPsec SAs with counters, in the layout of Cisco IOS\n"
    "  show interfaces        data plane ports: MAC, address, MTU, link, packet counters\n"
    "  show dataplane         worker lcores: packets, busy share, drops\n"
    "  clear counters         zero every SA, interface and worker counter\n"
    "\n"
    "options:\n"
    "  --socket PATH   control socket of espresso-dp (default /run/espresso/espresso.sock)\n"
    "  --config FILE   read the socket path from FILE's dataplane.control-socket\n"
    "  --json          print the data plane's JSON result instead of text\n"
    "  --help          this text\n"
    "\n"
    "exit codes: 0 ok, 1 refused by the data plane, 2 usage, 3 cannot connect\n";

struct command {
    std::vector<std::string> words;
    std::string op;
    std::string (*format)(const json&);
};

const std::vector<command>& commands()
{
    static const std::vector<command> table{
        {{"show", "crypto", "ipsec", "sa"}, "list-sas", cli::format_crypto_ipsec_sa},
        {{"show", "interfaces"}, "show-interfaces", cli::format_interfaces},
        {{"show", "dataplane"}, "show-dataplane", cli::format_dataplane},
        {{"clear", "counters"}, "clear-counters", nullptr},
    };
    return table;
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
    bool as_json = false;
    std::vector<std::string> words;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::cout << usage_text;
            return exit_ok;
        }
        if (arg == "--json") {
            as_json = true;
        } else if (arg == "--socket" || arg == "--config") {
            if (i + 1 >= argc) {
                return usage_error(arg + " needs a value");
            }
            (arg == "--socket" ? socket_path : config_path) = argv[++i];
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
    const command* chosen = nullptr;
    for (const auto& c : commands()) {
        if (c.words == words) {
            chosen = &c;
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

    try {
        auto client = espresso::dp::control_client::connect(socket_path);
        const json reply = client.request(chosen->op);
        if (const std::string error = espresso::dp::reply_error(reply); !error.empty()) {
            std::cerr << "espresso: " << error << "\n";
            return exit_refused;
        }
        const json& result = reply.contains("result") ? reply["result"] : json::object();
        if (as_json) {
            std::cout << result.dump(2) << "\n";
        } else if (chosen->format != nullptr) {
            std::cout << chosen->format(result);
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
