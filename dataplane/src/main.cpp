// espresso-dp: the data plane process. Loads the gateway YAML, initialises DPDK's EAL from it, sets up
// ports, TAPs and workers, serves the control socket and runs until SIGINT/SIGTERM.
//
// Exit codes: 0 clean shutdown, 1 runtime failure (EAL, ports, ...), 2 usage or configuration error.
#include <rte_eal.h>

#include <malloc.h>
#include <string.h> // explicit_bzero

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "control_server.h"
#include "espresso/config/loader.h"
#include "gateway.h"
#include "telemetry.h"

namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_signal(int /*sig*/) { g_stop = 1; }

void usage(FILE* out)
{
    std::fprintf(out,
                 "usage: espresso-dp --config FILE.yaml [--check [--stdin]]\n"
                 "\n"
                 "Runs the Espresso IPsec data plane described by FILE.yaml (docs/configuration.md).\n"
                 "  --config FILE  gateway configuration (dataplane, interfaces, routes, SAs, policies)\n"
                 "  --check        validate the configuration and print the EAL command line, then exit\n"
                 "  --stdin        with --check: read the configuration text from standard input; FILE only\n"
                 "                 names it in messages (control op reload checks the bytes it read this way)\n"
                 "  --help         this text\n"
                 "Exit codes: 0 clean shutdown, 1 runtime failure, 2 usage or configuration error.\n");
}

} // namespace

int main(int argc, char** argv)
{
    // A batch on the control socket (up to 1 MiB of JSON, thousands of SAs) allocates and frees the
    // same few megabytes per request. glibc would return them to the kernel after each request (mmap
    // above 128 KiB, heap trim) and fault them in again: ~10 % of an add-sas in perf. Keep them.
    // Buffers that held keys are wiped before they are freed, so nothing secret stays in the heap.
    mallopt(M_MMAP_THRESHOLD, 8 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    std::string config_path;
    bool check_only = false;
    bool from_stdin = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            usage(stdout);
            return 0;
        }
        if (a == "--check") {
            check_only = true;
        } else if (a == "--stdin") {
            from_stdin = true;
        } else if (a == "--config" && i + 1 < argc) {
            config_path = argv[++i];
        } else if (a.rfind("--config=", 0) == 0) {
            config_path = a.substr(9);
        } else {
            std::fprintf(stderr, "espresso-dp: unknown argument \"%s\"\n", a.c_str());
            usage(stderr);
            return 2;
        }
    }
    if (config_path.empty() || (from_stdin && !check_only)) {
        usage(stderr);
        return 2;
    }
    // Absolute: `espresso reload` makes the running process re-read this path (control op reload).
    if (std::error_code ec; !config_path.empty() && config_path[0] != '/') {
        if (auto absolute = std::filesystem::absolute(config_path, ec); !ec) {
            config_path = absolute.lexically_normal().string();
        }
    }
    espresso::config::gateway_config config;
    try {
        if (from_stdin) {
            // The text a reload read (control_server.cpp, check_in_child): checked exactly as given.
            std::string text{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
            struct wipe {
                std::string& t;
                ~wipe() { explicit_bzero(t.data(), t.size()); }
            } wiper{text};
            config = espresso::config::load_string(text, config_path);
        } else {
            config = espresso::config::load_file(config_path);
        }
    } catch (const espresso::config::config_error& e) {
        std::fprintf(stderr, "espresso-dp: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "espresso-dp: %s\n", e.what());
        return 2;
    }
    if (config.interfaces.empty()) {
        std::fprintf(stderr, "espresso-dp: %s: no interfaces: a data plane needs at least one `interfaces:` entry\n",
                     config_path.c_str());
        return 2;
    }
    std::vector<std::string> eal = espresso::dp::eal_arguments(config, argv[0]);
    if (check_only) {
        std::printf("configuration OK; EAL:");
        for (const auto& a : eal) {
            std::printf(" %s", a.c_str());
        }
        std::printf("\n");
        return 0;
    }
    std::vector<char*> eal_argv;
    for (auto& a : eal) {
        eal_argv.push_back(a.data());
    }
    if (rte_eal_init(static_cast<int>(eal_argv.size()), eal_argv.data()) < 0) {
        std::fprintf(stderr, "espresso-dp: EAL initialisation failed (%s)\n", rte_strerror(rte_errno));
        return 1;
    }
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    int rc = 0;
    try {
        espresso::dp::gateway gw(config);
        // The gateway keeps its own copy of the file (for reloads): this one's keys go now, and the
        // memory yaml-cpp's node tree and both copies left in malloc's free lists goes back to the
        // kernel (about 12 KB per static SA otherwise: perf/RESULTS.md, "Static SAs from the file: memory").
        for (auto& c : config.security_associations) {
            espresso::config::wipe_keys(c);
        }
        config.security_associations = {};
        espresso::dp::gateway::forget_ike_secrets(config.ike); // the IKE daemon's, not ours
        malloc_trim(0);
        espresso::dp::control_server control(gw, config.dataplane.control_socket);
        espresso::dp::register_telemetry();
        espresso::dp::refresh_telemetry_on_demand();
        // The telemetry copy is rebuilt when a telemetry query asks for it, and then at most every
        // 500 ms or every 20x the time the last rebuild took (it is O(SAs)): nobody reading
        // telemetry costs nothing, and a client polling it takes at most ~5 % of the main loop.
        using clock = std::chrono::steady_clock;
        auto next_refresh = clock::now();
        gw.run(
            g_stop,
            [&] {
                control.poll(); // every 0.1-1 ms, and at once when a request wakes the nap below
                if (!espresso::dp::telemetry_wanted()) {
                    return;
                }
                if (const auto now = clock::now(); now >= next_refresh) {
                    espresso::dp::refresh_telemetry(gw);
                    const auto took = clock::now() - now;
                    next_refresh = clock::now() + std::max<clock::duration>(std::chrono::milliseconds(500), took * 20);
                }
            },
            [&](const espresso::dp::gateway_event& e) { control.publish(e); },
            [&](unsigned usec) { control.wait(usec); });
        std::printf("espresso-dp: shutting down\n");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "espresso-dp: %s\n", e.what());
        rc = 1;
    }
    for (auto& c : config.security_associations) {
        espresso::config::wipe_keys(c); // when the gateway threw before taking its copy
    }
    espresso::dp::gateway::forget_ike_secrets(config.ike);
    rte_eal_cleanup();
    return rc;
}
