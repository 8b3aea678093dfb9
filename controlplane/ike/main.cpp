// espresso-ike: the IKEv2 daemon. Reads the gateway's YAML file (the `ike:` section), negotiates with
// the configured peers and installs the resulting SAs into espresso-dp through its control socket.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <iostream>
#include <string>

#include "daemon.h"
#include "ike_manager.h"
#include "espresso/config/loader.h"
#include "espresso/cp/ike_control.h"

namespace {

const char* usage =
    "usage: espresso-ike --config FILE [options]\n"
    "\n"
    "Runs the IKEv2 daemon for the gateway described by FILE (its `ike:` section).\n"
    "\n"
    "  --config FILE             the gateway's YAML file (required)\n"
    "  --dataplane-socket PATH   espresso-dp's control socket (default: dataplane.control-socket)\n"
    "  --no-dataplane            do not install SAs anywhere (null installer; for tests)\n"
    "  --socket PATH             the operator socket (default: beside the data plane's, NAME-ike.sock)\n"
    "  --log-level LEVEL         error | warning | info | debug (default info)\n"
    "  --log-file PATH           also append the log to PATH (default: ike.log-file)\n"
    "  --retransmit-ms N         first retransmission timeout (default ike.retransmit-timeout-ms, 1000)\n"
    "  --retransmit-tries N      retransmissions before a peer is unreachable (default ike.retransmit-tries, "
    "5)\n"
    "  --threads N               IKE threads (shards of the IKE SAs), 1-16 (default ike.threads, else the\n"
    "                            online CPUs, at most 4)\n"
    "  --check                   load and validate the configuration, then exit\n"
    "  --help                    this text\n"
    "\n"
    "Exit codes: 0 clean shutdown, 1 runtime error, 2 usage or configuration error.\n";

} // namespace

int main(int argc, char** argv)
{
    using namespace espresso;
    std::string config_path, dp_socket, socket, log_level = "info", log_file;
    bool no_dataplane = false, check = false, dp_socket_given = false, base_given = false, tries_given = false;
    cp::daemon_options options;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&](const char* name) -> std::string {
            if (i + 1 >= argc) {
                std::cerr << "espresso-ike: " << name << " needs a value\n" << usage;
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--config") {
            config_path = value("--config");
        } else if (a == "--dataplane-socket") {
            dp_socket = value("--dataplane-socket");
            dp_socket_given = true;
        } else if (a == "--no-dataplane") {
            no_dataplane = true;
        } else if (a == "--socket") {
            socket = value("--socket");
        } else if (a == "--log-level") {
            log_level = value("--log-level");
        } else if (a == "--log-file") {
            log_file = value("--log-file");
        } else if (a == "--retransmit-ms") {
            options.retransmit.base = std::chrono::milliseconds(std::stoul(value("--retransmit-ms")));
            base_given = true;
        } else if (a == "--retransmit-tries") {
            options.retransmit.tries = static_cast<unsigned>(std::stoul(value("--retransmit-tries")));
            tries_given = true;
        } else if (a == "--threads") {
            std::string v = value("--threads");
            size_t n =
                v.size() <= 2 && !v.empty() && std::all_of(v.begin(), v.end(), ::isdigit) ? std::stoul(v) : 0;
            if (n < 1 || n > 16) {
                std::cerr << "espresso-ike: --threads must be 1 to 16\n";
                return 2;
            }
            options.threads = n;
        } else if (a == "--check") {
            check = true;
        } else if (a == "--help" || a == "-h") {
            std::cout << usage;
            return 0;
        } else {
            std::cerr << "espresso-ike: unknown argument '" << a << "'\n" << usage;
            return 2;
        }
    }
    if (config_path.empty()) {
        std::cerr << "espresso-ike: --config FILE is required\n" << usage;
        return 2;
    }
    config::gateway_config cfg;
    try {
        cfg = config::load_file(config_path);
    } catch (const std::exception& e) {
        std::cerr << e.what() << '\n';
        return 2;
    }
    if (cfg.ike.peers.empty()) {
        std::cerr << config_path << ": ike.peers: no IKE peers configured. Fix: add an `ike:` section with peers "
                                    "(docs/configuration.md).\n";
        return 2;
    }
    if (check) {
        // The files the daemon would load at start, with the same checks (certificate, key, CAs, local-id).
        bool ok = true;
        for (const auto& p : cfg.ike.peers) {
            std::string error;
            if (p.auth.method == config::ike_auth_method::pubkey && !cp::load_peer_credentials(p, error)) {
                std::cerr << config_path << ": peer " << p.name << ": " << error << "\n";
                ok = false;
            }
        }
        if (!ok) {
            return 2;
        }
        std::cout << config_path << ": OK, " << cfg.ike.peers.size() << " IKE peer(s)\n";
        return 0;
    }
    if (log_level == "error") {
        options.level = cp::log_level::error;
    } else if (log_level == "warning") {
        options.level = cp::log_level::warning;
    } else if (log_level == "info") {
        options.level = cp::log_level::info;
    } else if (log_level == "debug") {
        options.level = cp::log_level::debug;
    } else {
        std::cerr << "espresso-ike: --log-level must be error, warning, info or debug\n";
        return 2;
    }
    // The command line wins over the file, setting by setting.
    if (!base_given) {
        options.retransmit.base = std::chrono::milliseconds(cfg.ike.retransmit_timeout_ms);
    }
    if (!tries_given) {
        options.retransmit.tries = cfg.ike.retransmit_tries;
    }
    options.dataplane_socket = no_dataplane ? "" : (dp_socket_given ? dp_socket : cfg.dataplane.control_socket);
    options.control_socket = !socket.empty() ? socket : cp::ike_socket_path(cfg.dataplane.control_socket);
    options.log_file = !log_file.empty() ? log_file : cfg.ike.log_file;
    options.config_path = config_path;
    try {
        cp::ike_daemon daemon(options, cfg);
        if (!daemon.startup_errors().empty()) {
            for (const auto& e : daemon.startup_errors()) {
                std::cerr << config_path << ": " << e << "\n";
            }
            return 2;
        }
        return daemon.run();
    } catch (const std::exception& e) {
        std::cerr << "espresso-ike: " << e.what() << '\n';
        return 1;
    }
}
