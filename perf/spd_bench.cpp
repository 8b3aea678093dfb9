// spd-bench: cycles per packet of the SPD's two ways to classify a burst of IPv4 or IPv6 keys, the
// linear walk of a small rule set and rte_acl, for rule sets of 1 to 32 prefix rules (an operator's
// bypass rules, SA-implied protect rules and their mirrored inbound checks, the last rules the ones
// the traffic matches: the walk's worst case). Both run in the same invocation on the same keys;
// the crossover sets compiled_spd::default_linear_max. Usage: spd-bench [--seconds S] (EAL runs
// --no-huge --no-pci, no port).
#include <rte_byteorder.h>
#include <rte_cycles.h>
#include <rte_eal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "spd.h"

using namespace espresso;
using namespace espresso::dp;

namespace {

config::ip_prefix prefix(const std::string& text)
{
    auto p = config::parse_prefix(text);
    if (!p) {
        std::fprintf(stderr, "spd-bench: bad prefix %s\n", text.c_str());
        std::exit(1);
    }
    return *p;
}

// n rules: n - 2 bypass rules for other networks, then the protect rule of the traffic and its
// mirrored inbound check.
std::vector<spd_entry> rules(unsigned n, bool six)
{
    std::vector<spd_entry> v;
    for (unsigned i = 0; i + 2 < n; ++i) {
        spd_entry e;
        e.policy.local = prefix(six ? "2001:db8:" + std::to_string(100 + i) + "::/48" : "172.16." + std::to_string(i) + ".0/24");
        e.policy.remote = prefix(six ? "fd00:" + std::to_string(100 + i) + "::/48" : "10." + std::to_string(i) + ".0.0/16");
        e.policy.action = config::policy_action::bypass;
        e.id = i + 1;
        v.push_back(e);
    }
    for (bool inbound : {false, true}) {
        if (v.size() == n) {
            break;
        }
        spd_entry e;
        e.policy.local = prefix(six ? "2001:db8:1::/48" : "192.168.1.0/24");
        e.policy.remote = prefix(six ? "2001:db8:2::/48" : "192.168.2.0/24");
        e.policy.action = config::policy_action::protect;
        e.policy.priority = 1000;
        e.implied = true;
        e.inbound_check = inbound;
        e.sa = inbound ? nullptr : reinterpret_cast<sa_runtime*>(64);
        v.push_back(e);
    }
    return v;
}

template <typename Key>
double cycles_per_packet(const compiled_spd& spd, const std::vector<Key>& keys, double seconds)
{
    std::vector<const Key*> ptrs;
    for (const auto& k : keys) {
        ptrs.push_back(&k);
    }
    uint32_t out[32];
    uint32_t in[32];
    uint64_t packets = 0;
    uint64_t sink = 0;
    const uint64_t hz = rte_get_tsc_hz();
    const uint64_t start = rte_rdtsc();
    const uint64_t end = start + static_cast<uint64_t>(seconds * static_cast<double>(hz));
    uint64_t now = start;
    while (now < end) {
        for (size_t off = 0; off + 32 <= ptrs.size(); off += 32) {
            if constexpr (sizeof(Key) == sizeof(spd_key)) {
                spd.classify(ptrs.data() + off, out, in, 32);
            } else {
                spd.classify6(ptrs.data() + off, out, in, 32);
            }
            sink += out[0] + in[31];
            packets += 32;
        }
        now = rte_rdtsc();
    }
    if (sink == 0) {
        std::fprintf(stderr, "spd-bench: no key matched the protect rule\n");
        std::exit(1);
    }
    return static_cast<double>(now - start) / static_cast<double>(packets);
}

} // namespace

int main(int argc, char** argv)
{
    double seconds = 0.3;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            seconds = std::atof(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: spd-bench [--seconds S]\n");
            return 2;
        }
    }
    const char* eal[] = {"spd-bench", "--no-huge", "--no-pci", "-m", "256", "-l", "0", "--file-prefix", "spd-bench",
                         "--log-level", "error", "--no-telemetry"};
    if (rte_eal_init(static_cast<int>(sizeof(eal) / sizeof(eal[0])), const_cast<char**>(eal)) < 0) {
        std::fprintf(stderr, "spd-bench: rte_eal_init failed\n");
        return 1;
    }
    // The gateway benchmark's 240 flows (perf/gateway/gen_pcaps.py), and their IPv6 twins.
    std::vector<spd_key> keys4(240);
    std::vector<spd6_key> keys6(240);
    for (unsigned i = 0; i < 240; ++i) {
        const uint8_t host = static_cast<uint8_t>(10 + i % 100);
        spd_key& k = keys4[i];
        k.protocol = 17;
        const uint8_t s4[4] = {192, 168, 1, host};
        const uint8_t d4[4] = {192, 168, 2, host};
        std::memcpy(&k.source, s4, 4);
        std::memcpy(&k.destination, d4, 4);
        k.source_port = rte_cpu_to_be_16(static_cast<uint16_t>(1024 + i));
        k.destination_port = rte_cpu_to_be_16(5678);
        spd6_key& k6 = keys6[i];
        k6.protocol = 17;
        std::memcpy(k6.source, prefix("2001:db8:1::").address.bytes.data(), 16);
        std::memcpy(k6.destination, prefix("2001:db8:2::").address.bytes.data(), 16);
        k6.source[15] = host;
        k6.destination[15] = host;
        k6.source_port = k.source_port;
        k6.destination_port = k.destination_port;
    }
    std::printf("%-6s %6s %14s %14s %8s\n", "family", "rules", "linear cyc/pkt", "rte_acl cyc/pkt", "acl/lin");
    uint64_t generation = 1;
    for (bool six : {false, true}) {
        for (unsigned n : {1U, 2U, 4U, 8U, 12U, 16U, 32U}) {
            const auto entries = rules(n, six);
            compiled_spd linear(entries, generation++, 1U << 20);
            compiled_spd acl(entries, generation++, 0);
            const double l = six ? cycles_per_packet(linear, keys6, seconds) : cycles_per_packet(linear, keys4, seconds);
            const double a = six ? cycles_per_packet(acl, keys6, seconds) : cycles_per_packet(acl, keys4, seconds);
            std::printf("%-6s %6u %14.1f %14.1f %8.2f\n", six ? "IPv6" : "IPv4", n, l, a, a / l);
        }
    }
    rte_eal_cleanup();
    return 0;
}
