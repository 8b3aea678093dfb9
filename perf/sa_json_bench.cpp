// Main-lcore CPU per SA of the add-sas request path without sockets or workers: the JSON parse
// (nlohmann) and the validation into sa_config (sas_from_json: the config loader's SA checks), on the
// same SA objects perf/sa-install-rate sends, timed with the thread's CPU clock so that other load on
// the machine shows up as little as possible.
//
// A second line times what the server does for add-sas (control_server + gateway::add_sas, without
// the sockets, workers and SA tables): the SAX request reader (request_reader), the same validation
// from its plain trees (sas_from_plain), and the SA runtime set-up (make_sa: key expansion, outer
// header), the runtimes kept until all are made (as installed SAs are), then freed (keys wiped).
//
// Usage: build/perf/sa-json-bench [batches (100)] [SAs per batch (1000)] [--outbound] [--server] [--ike | --ike-full]
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <nlohmann/json.hpp>

#include "espresso/config/loader.h"
#include "espresso/dp/crypto_core.h"
#include "espresso/dp/sa.h"
#include "sa_json.h"

namespace {

double thread_cpu()
{
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// --ike: inbound SA objects as espresso-ike writes them (cp::append_sa_json: keys sorted, owner,
// protocol version 2), for comparing the server's cost per shape.
// --ike-full: the same with the default-valued fields espresso-ike wrote before it left them out
// (esn false, integrity "none", a lifetime of zeros).
std::string ike_batch(unsigned first_spi, unsigned n, bool full)
{
    std::string body = R"({"version":2,"id":7,"op":"add-sas","args":{"owner":"espresso-ike","sas":[)";
    char item[640];
    for (unsigned i = 0; i < n; ++i) {
        std::snprintf(item, sizeof(item),
                      R"(%s{"destination":"198.51.100.1","direction":"inbound","encryption":"aes128gcm16",)"
                      R"(%s"key":"0x00112233445566778899aabbccddeeff01020304",)"
                      R"(%s"mode":"tunnel",)"
                      R"("protocol":"esp","replay-window":128,"selectors":{"local":"192.168.1.0/24",)"
                      R"("remote":"192.168.2.0/24"},"source":"203.0.113.1","spi":"0x%08x"})",
                      i == 0 ? "" : ",", full ? R"("esn":false,"integrity":"none",)" : "",
                      full ? R"("lifetime":{"bytes":0,"packets":0,"soft-bytes":0,"soft-packets":0},)" : "",
                      first_spi + i);
        body += item;
    }
    body += "]}}";
    return body;
}

std::string batch(unsigned first_spi, unsigned n, bool outbound)
{
    std::string body = R"({"version": 1, "id": 7, "op": "add-sas", "args": {"sas": [)";
    char item[512];
    for (unsigned i = 0; i < n; ++i) {
        const unsigned spi = first_spi + i;
        const unsigned host = spi & 0xffff;
        if (outbound) {
            std::snprintf(item, sizeof(item),
                          R"(%s{"spi": "0x%x", "direction": "outbound", "protocol": "esp", "mode": "tunnel", )"
                          R"("source": "198.51.100.1", "destination": "203.0.113.1", "encryption": "aes128gcm16", )"
                          R"("key": "0x00112233445566778899aabbccddeeff01020304", "selectors": {"local": )"
                          R"("192.168.1.0/24", "remote": "10.%u.%u.%u/32"}})",
                          i == 0 ? "" : ", ", spi, host >> 16, (host >> 8) & 255, host & 255);
        } else {
            std::snprintf(item, sizeof(item),
                          R"(%s{"spi": "0x%x", "direction": "inbound", "protocol": "esp", "mode": "tunnel", )"
                          R"("source": "203.0.113.1", "destination": "198.51.100.1", "encryption": "aes128gcm16", )"
                          R"("key": "0x00112233445566778899aabbccddeeff01020304", "replay-window": 64, )"
                          R"("selectors": {"local": "192.168.1.0/24", "remote": "192.168.2.0/24"}})",
                          i == 0 ? "" : ", ", spi);
        }
        body += item;
    }
    body += "]}}";
    return body;
}

} // namespace

int main(int argc, char** argv)
{
    unsigned batches = 100;
    unsigned per_batch = 1000;
    bool outbound = false;
    bool server_only = false; // --server: only the server's path (for perf record)
    bool ike = false;         // --ike: espresso-ike's shape of inbound SA object
    bool ike_full = false;    // --ike-full: as espresso-ike wrote it before (every default written)
    int positional = 0;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--outbound") == 0) {
            outbound = true;
        } else if (std::strcmp(argv[i], "--ike") == 0) {
            ike = true;
        } else if (std::strcmp(argv[i], "--ike-full") == 0) {
            ike = ike_full = true;
        } else if (std::strcmp(argv[i], "--server") == 0) {
            server_only = true;
        } else if (positional++ == 0) {
            batches = static_cast<unsigned>(std::strtoul(argv[i], nullptr, 0));
        } else {
            per_batch = static_cast<unsigned>(std::strtoul(argv[i], nullptr, 0));
        }
    }
    std::vector<std::string> bodies;
    for (unsigned b = 0; b < batches; ++b) {
        bodies.push_back(ike ? ike_batch(0x100000 + b * per_batch, per_batch, ike_full)
                             : batch(0x100000 + b * per_batch, per_batch, outbound));
    }
    double parse = 0;
    double validate = 0;
    double release = 0;
    size_t checked = 0;
    for (const auto& body : server_only ? std::vector<std::string>{} : bodies) {
        double t0 = thread_cpu();
        nlohmann::json request = nlohmann::json::parse(body);
        double t1 = thread_cpu();
        auto parsed = espresso::dp::sas_from_json(request["args"]["sas"]);
        double t2 = thread_cpu();
        if (!parsed.value) {
            std::fprintf(stderr, "refused: %s\n", parsed.error.c_str());
            return 1;
        }
        checked += parsed.value->size();
        for (auto& sa : *parsed.value) {
            espresso::config::wipe_keys(sa);
        }
        parsed.value.reset();
        request = nullptr;
        double t3 = thread_cpu();
        parse += t1 - t0;
        validate += t2 - t1;
        release += t3 - t2;
    }
    const double n = static_cast<double>(checked);
    if (!server_only) {
        std::printf("%zu %s SAs in batches of %u: JSON parse %.2f us/SA, validation %.2f us/SA, freeing %.2f us/SA, "
                    "total %.2f us/SA (thread CPU time)\n",
                    checked, outbound ? "outbound" : "inbound", per_batch, parse * 1e6 / n, validate * 1e6 / n,
                    release * 1e6 / n, (parse + validate + release) * 1e6 / n);
    }

    // The server's path: SAX reader, validation from plain trees, runtime set-up.
    espresso::dp::crypto_core core;
    espresso::dp::request_reader reader;
    double sax = 0;
    double plain = 0;
    double setup = 0;
    double freeing = 0;
    checked = 0;
    std::vector<espresso::dp::sa_ptr> made;
    for (const auto& body : bodies) {
        nlohmann::json request;
        double t0 = thread_cpu();
        if (!reader.parse(body, request) || !reader.captured()) {
            std::fprintf(stderr, "request_reader did not capture the SAs\n");
            return 1;
        }
        double t1 = thread_cpu();
        auto parsed = espresso::dp::sas_from_plain(reader.sas());
        double t2 = thread_cpu();
        if (!parsed.value) {
            std::fprintf(stderr, "refused: %s\n", parsed.error.c_str());
            return 1;
        }
        made.reserve(parsed.value->size());
        for (const auto& sa : *parsed.value) {
            made.push_back(espresso::dp::make_sa(sa, core));
        }
        double t3 = thread_cpu();
        checked += parsed.value->size();
        for (auto& sa : *parsed.value) {
            espresso::config::wipe_keys(sa);
        }
        parsed.value.reset();
        reader.wipe();
        double t4 = thread_cpu();
        sax += t1 - t0;
        plain += t2 - t1;
        setup += t3 - t2;
        freeing += t4 - t3;
    }
    // The runtimes are kept to the end, as the gateway keeps installed SAs (fresh memory per SA).
    const double d0 = thread_cpu();
    made.clear();
    const double deleting = thread_cpu() - d0;
    const double m = static_cast<double>(checked);
    std::printf("server path: SAX read %.2f us/SA, validation %.2f us/SA, SA set-up (make_sa) %.2f us/SA, "
                "freeing the request %.2f us/SA, total %.2f us/SA; then deleting the SAs %.2f us/SA "
                "(thread CPU time)\n",
                sax * 1e6 / m, plain * 1e6 / m, setup * 1e6 / m, freeing * 1e6 / m,
                (sax + plain + setup + freeing) * 1e6 / m, deleting * 1e6 / m);
    return 0;
}
