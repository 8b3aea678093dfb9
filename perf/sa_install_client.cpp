// sa-install-client: the SA install rate end to end with the product's own client, for
// perf/sa-install-rate --client cpp (issue 3: 100k SA installs per second into all workers).
//
// What espresso-ike does for a Child SA, in batches: each SA is a config::sa_config filled as
// exchange_auth.cpp fills it (AES-128-GCM, key || salt, replay window 128 inbound, no lifetime limits),
// written as JSON by the daemon's own cp::append_add_sas_args (controlplane/ike/installer.cpp,
// compiled in here) as {"owner":"espresso-ike","sas":[...]}, sent with dp::control_client's
// request_encoded(), and the text wiped afterwards, as dataplane_installer::install_pair does. The
// clock runs over all of it: building the objects, encoding, the round trip, reading the reply.
// Inbound SAs share their selectors (no SPD change); --outbound gives each SA its own /32 remote
// selector (every batch recompiles the SPD).
//
// Reports SAs/s (wall clock), the client's own CPU per SA (the phases: building the JSON objects,
// the request - encoding, sending, waiting, reading the reply - and the wipe), and, with --dp-pid,
// the data plane's main-lcore CPU per SA read from /proc/<pid>/task/<pid>/stat (the main lcore is
// the thread whose id is the process id), as perf/sa-install-rate does for its Python client.
//
// Usage: sa-install-client --socket PATH [--count 100000] [--batch 1000] [--first-spi 0x100000]
//                          [--outbound] [--dp-pid PID] [--json] [--encoder text|dom]
//        sa-install-client --encode-only [--count N] [--batch N] [--outbound] [--encoder text|dom]
// --encoder: text (default) writes the request as espresso-ike does (cp::append_add_sas_args and
// control_client::request_encoded); dom builds it as espresso-ike did before session 6, a json DOM of
// cp::sa_to_json objects dumped by control_client::request (the same bytes, for before/after runs).
// --encode-only makes the same requests without a data plane (no socket): building the objects and
// the one dump() that control_client::request does, timed with the process CPU clock, to profile the
// client's share alone (perf record -g build/perf/sa-install-client --encode-only).
// Exit status: 0 when every batch was installed; 1 on a refusal or a transport error (message on
// stderr); 2 on a usage error.
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/crypto.h>

#include <nlohmann/json.hpp>

#include "espresso/config/types.h"
#include "espresso/dp/control_client.h"
#include "installer.h"

namespace {

using namespace espresso;

struct options {
    std::string socket;
    uint64_t count = 100000;
    uint64_t batch = 1000;
    uint32_t first_spi = 0x100000;
    bool outbound = false;
    long dp_pid = 0;
    bool json = false;
    bool encode_only = false;
    bool dom = false; // --encoder dom: a json DOM dumped by request(), as espresso-ike did before
};

[[noreturn]] void usage(const char* why)
{
    std::fprintf(
        stderr,
        "sa-install-client: %s\nusage: sa-install-client --socket PATH [--count N] [--batch N] "
        "[--first-spi SPI] [--outbound] [--dp-pid PID] [--json] [--encoder text|dom] [--encode-only]\n",
        why);
    std::exit(2);
}

uint64_t number(const char* text, const char* what)
{
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(text, &end, 0);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-') {
        usage((std::string("not a number for ") + what + ": " + text).c_str());
    }
    return v;
}

options parse(int argc, char** argv)
{
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) {
                usage((std::string(a) + " needs a value").c_str());
            }
            return argv[++i];
        };
        if (a == "--socket") {
            o.socket = value();
        } else if (a == "--count") {
            o.count = number(value(), "--count");
        } else if (a == "--batch") {
            o.batch = number(value(), "--batch");
        } else if (a == "--first-spi") {
            const uint64_t spi = number(value(), "--first-spi");
            if (spi == 0 || spi > 0xffffffffu) {
                usage("--first-spi must be 1..0xffffffff");
            }
            o.first_spi = static_cast<uint32_t>(spi);
        } else if (a == "--outbound") {
            o.outbound = true;
        } else if (a == "--dp-pid") {
            o.dp_pid = static_cast<long>(number(value(), "--dp-pid"));
        } else if (a == "--json") {
            o.json = true;
        } else if (a == "--encoder") {
            const std::string_view e = value();
            if (e != "text" && e != "dom") {
                usage("--encoder is text or dom");
            }
            o.dom = e == "dom";
        } else if (a == "--encode-only") {
            o.encode_only = true;
        } else {
            usage((std::string("unknown option ") + std::string(a)).c_str());
        }
    }
    if (o.socket.empty() && !o.encode_only) {
        usage("--socket is required");
    }
    if (o.count == 0 || o.batch == 0) {
        usage("--count and --batch must be at least 1");
    }
    if (uint64_t{o.first_spi} + o.count - 1 > 0xffffffffu) {
        usage("--first-spi + --count passes the largest SPI");
    }
    return o;
}

double process_cpu()
{
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double now()
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU seconds of the data plane's main lcore so far (utime + stime of the thread whose id is the
// pid); 0 without --dp-pid. proc(5): fields 14 and 15 of stat, counted after the ")" of the name.
double main_lcore_cpu(long pid)
{
    if (pid == 0) {
        return 0;
    }
    const std::string path = "/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/stat";
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    const std::string stat = text.str();
    const auto paren = stat.rfind(')');
    if (!in || paren == std::string::npos) {
        std::fprintf(stderr, "sa-install-client: cannot read %s\n", path.c_str());
        std::exit(1);
    }
    std::istringstream fields(stat.substr(paren + 1));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int n = 0; fields >> field; ++n) {
        if (n == 11) {
            utime = std::strtoull(field.c_str(), nullptr, 10);
        } else if (n == 12) {
            stime = std::strtoull(field.c_str(), nullptr, 10);
            break;
        }
    }
    return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// One SA as espresso-ike's exchange_auth.cpp makes it for an AES-128-GCM Child SA without NAT.
config::sa_config make_sa(uint32_t spi, bool outbound)
{
    config::sa_config sa;
    sa.spi = spi;
    sa.dir = outbound ? config::direction::outbound : config::direction::inbound;
    sa.protocol = config::ipsec_protocol::esp;
    sa.mode = config::ipsec_mode::tunnel;
    // Parsed once: espresso-ike has its addresses in binary (traffic selectors, the IKE SA's
    // endpoints), so parsing text per SA would time the tool, not the product.
    static const auto gateway = *config::parse_address("198.51.100.1");
    static const auto peer = *config::parse_address("203.0.113.1");
    static const auto local = *config::parse_prefix("192.168.1.0/24");
    static const auto remote = *config::parse_prefix("192.168.2.0/24");
    sa.source = outbound ? gateway : peer;
    sa.destination = outbound ? peer : gateway;
    sa.cipher = config::cipher_alg::aes_gcm16;
    sa.cipher_key_bytes = 16;
    sa.cipher_key_length = 20; // key || 4-octet salt (RFC 4106 §8.1)
    for (size_t i = 0; i < sa.cipher_key_length; ++i) {
        sa.cipher_key[i] = static_cast<uint8_t>(spi * 31 + i * 7); // not secret: a benchmark
    }
    sa.integ = config::integ_alg::none;
    sa.replay_window = outbound ? 0 : 128; // the tunnel default (config/ike.h)
    sa.local = local;
    if (outbound) {
        // Distinct /32s in 10.0.0.0/8, as the Python client's --outbound makes them.
        const uint32_t host = spi & 0xffffff;
        sa.remote.address.family = 4;
        sa.remote.address.bytes[0] = 10;
        sa.remote.address.bytes[1] = static_cast<uint8_t>(host >> 16);
        sa.remote.address.bytes[2] = static_cast<uint8_t>(host >> 8);
        sa.remote.address.bytes[3] = static_cast<uint8_t>(host);
        sa.remote.length = 32;
    } else {
        sa.remote = remote;
    }
    sa.origin = "ike:bench/tunnel";
    return sa;
}

// The client's work for o.count SAs without a server: make the SAs, build the JSON (as below), and
// dump it (as control_client::request does); wipe as below.
int encode_only(const options& o)
{
    const double cpu0 = process_cpu();
    size_t bytes = 0;
    std::vector<config::sa_config> sas;
    for (uint64_t done = 0; done < o.count;) {
        const uint64_t n = std::min(o.batch, o.count - done);
        sas.clear();
        for (uint64_t k = 0; k < n; ++k) {
            sas.push_back(make_sa(static_cast<uint32_t>(o.first_spi + done + k), o.outbound));
        }
        if (o.dom) {
            nlohmann::json array = nlohmann::json::array();
            for (const auto& sa : sas) {
                array.push_back(cp::sa_to_json(sa));
            }
            nlohmann::json args = {{"sas", std::move(array)}, {"owner", std::string(cp::ike_owner)}};
            std::string text = args.dump();
            bytes += text.size();
            OPENSSL_cleanse(text.data(), text.size());
            for (auto& sa : args["sas"]) {
                auto& s = sa["key"].get_ref<std::string&>();
                OPENSSL_cleanse(s.data(), s.size());
            }
        } else {
            std::vector<const config::sa_config*> items;
            for (const auto& sa : sas) {
                items.push_back(&sa);
            }
            std::string text;
            cp::append_add_sas_args(text, items, cp::ike_owner);
            bytes += text.size();
            OPENSSL_cleanse(text.data(), text.size());
        }
        for (auto& sa : sas) {
            config::wipe_keys(sa);
        }
        done += n;
    }
    const double cpu = process_cpu() - cpu0;
    std::printf("encode only (%s): %llu SAs, %.1f us of client CPU per SA, %.0f bytes per SA\n",
                o.dom ? "DOM" : "text", static_cast<unsigned long long>(o.count),
                cpu * 1e6 / static_cast<double>(o.count),
                static_cast<double>(bytes) / static_cast<double>(o.count));
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    const options o = parse(argc, argv);
    if (o.encode_only) {
        return encode_only(o);
    }
    try {
        auto client = dp::control_client::connect(o.socket);
        double build_s = 0, request_s = 0, wipe_s = 0;
        const double cpu0 = process_cpu();
        const double lcore0 = main_lcore_cpu(o.dp_pid);
        const double t0 = now();
        std::vector<config::sa_config> sas;
        std::vector<const config::sa_config*> items;
        for (uint64_t done = 0; done < o.count;) {
            const uint64_t n = std::min(o.batch, o.count - done);
            double t = now();
            // What the IKE side holds: config structs (keys in them are wiped after the install).
            sas.clear();
            for (uint64_t k = 0; k < n; ++k) {
                sas.push_back(make_sa(static_cast<uint32_t>(o.first_spi + done + k), o.outbound));
            }
            // dataplane_installer::install_pair's request, with n SAs instead of two: the text writer
            // it uses (append_add_sas_args), or with --encoder dom the json DOM it used before.
            nlohmann::json args;
            std::string text;
            if (o.dom) {
                nlohmann::json array = nlohmann::json::array();
                for (const auto& sa : sas) {
                    array.push_back(cp::sa_to_json(sa));
                }
                args = {{"sas", std::move(array)}, {"owner", std::string(cp::ike_owner)}};
            } else {
                items.clear();
                for (const auto& sa : sas) {
                    items.push_back(&sa);
                }
                cp::append_add_sas_args(text, items, cp::ike_owner);
            }
            double t2 = now();
            build_s += t2 - t;
            t = t2;
            auto reply = o.dom ? client.request("add-sas", args, std::chrono::seconds(60))
                               : client.request_encoded("add-sas", text, std::chrono::seconds(60));
            t2 = now();
            request_s += t2 - t;
            t = t2;
            if (const std::string error = dp::reply_error(reply); !error.empty()) {
                std::fprintf(stderr, "sa-install-client: add-sas refused after %llu SAs: %s\n",
                             static_cast<unsigned long long>(done), error.c_str());
                return 1;
            }
            OPENSSL_cleanse(text.data(), text.size());
            if (o.dom) {
                for (auto& sa : args["sas"]) {
                    for (const char* key : {"key", "integrity-key"}) {
                        if (sa.contains(key)) {
                            auto& s = sa[key].get_ref<std::string&>();
                            OPENSSL_cleanse(s.data(), s.size());
                        }
                    }
                }
            }
            for (auto& sa : sas) {
                config::wipe_keys(sa);
            }
            wipe_s += now() - t;
            done += n;
        }
        const double wall = now() - t0;
        const double cpu = process_cpu() - cpu0;
        const double lcore = main_lcore_cpu(o.dp_pid) - lcore0;
        const double count = static_cast<double>(o.count);
        char label[96];
        std::snprintf(label, sizeof(label), "add-sas, %llu per request, C++ client (%s)",
                      static_cast<unsigned long long>(o.batch), o.dom ? "DOM" : "text");
        std::printf("%-44s %7llu SAs in %7.3f s = %9.0f SAs/s; main lcore CPU %7.1f us/SA\n", label,
                    static_cast<unsigned long long>(o.count), wall, count / wall, lcore * 1e6 / count);
        std::printf("  client: CPU %.1f us/SA; wall per SA: build %.1f us, request %.1f us, wipe %.1f us\n",
                    cpu * 1e6 / count, build_s * 1e6 / count, request_s * 1e6 / count, wipe_s * 1e6 / count);
        if (o.json) {
            const nlohmann::json line = {
                {"measure", label},
                {"sas", o.count},
                {"seconds", std::round(wall * 1e4) / 1e4},
                {"per_second", static_cast<int64_t>(count / wall + 0.5)},
                {"main_cpu_us_per_sa", std::round(lcore * 1e7 / count) / 10},
                {"client_cpu_us_per_sa", std::round(cpu * 1e7 / count) / 10},
                {"client_build_us_per_sa", std::round(build_s * 1e7 / count) / 10},
                {"client_request_us_per_sa", std::round(request_s * 1e7 / count) / 10},
            };
            std::printf("%s\n", line.dump().c_str());
        }
        std::fflush(stdout);
    } catch (const dp::control_client_error& e) {
        std::fprintf(stderr, "sa-install-client: %s\n", e.what());
        return 1;
    }
    return 0;
}
