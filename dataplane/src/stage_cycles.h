// Where a worker's time goes, in TSC cycles per received packet and stage: a developer build in its
// own directory (`meson setup build-stage -Dstage_cycles=true`; perf/stage-cycles does it) for
// performance work. Off by default, and then there is no timing code: every call here is empty.
//
// Why not `perf record` alone: on a VM without a PMU its samples come from a timer and land on the
// instructions that retire after a stall, not on the stall's cause. Stop 24 read 12-42 cycles of
// "AES-GCM slower inside the pass" off them; timed, the excess is 5-10 (62 / 114 cycles at 64 / 512 B
// against 57 / 104 alone, perf/RESULTS.md, stop 25): the rest was the ESP work around the cipher.
// Timing the stages themselves, a few `rdtsc` per burst (~23 cycles each here, ~1-2 % at 64 B),
// gives each its own share.
#pragma once

#include <rte_cycles.h>

#include <cstdint>
#include <cstdio>
#include <string>

#ifndef ESPRESSO_STAGE_CYCLES
#define ESPRESSO_STAGE_CYCLES 0
#endif

namespace espresso::dp {

inline constexpr bool stage_cycles_enabled = ESPRESSO_STAGE_CYCLES != 0;

// The stages of one pass, as timed (the report subtracts nested ones: `policies` excludes `esp_out`,
// `inbound` excludes `esp_in`, `spd` excludes `policies` and `esp_out`, `pass` (classification of
// received packets, what is left of process()) excludes every other stage but `rx`). A TX that
// happens inside another stage, when the pass's forward vector fills up (pre-fragmented packets),
// counts there, not in `route_tx`.
enum class stage : uint8_t {
    rx,       // rte_eth_rx_burst (the port's driver; pcap replay copies the packet here)
    pass,     // the whole pass over a burst, `rx` excluded
    inbound,  // SAD look-up and grouping of IPsec packets to the gateway, and their forwarding
    esp_in,   // inbound_process_groups: ESP/AH decapsulation with its crypto
    spd,      // cleartext transit: TTL, SPD keys, classification, policies, encapsulation
    policies, // apply_policies: actions, MTU check, SA groups, encapsulation
    esp_out,  // outbound_process_groups: ESP/AH encapsulation with its crypto
    route_tx, // route_and_send: FIB, neighbor, Ethernet header, TX burst
    count,
};

// One worker's accumulated cycles. Not shared: each worker owns one.
class stage_clock {
public:
    static uint64_t now() noexcept
    {
        if constexpr (stage_cycles_enabled) {
            return rte_rdtsc();
        } else {
            return 0;
        }
    }

    // Adds the cycles since `start` (a now()) to `s`.
    void add(stage s, uint64_t start) noexcept
    {
        if constexpr (stage_cycles_enabled) {
            add_cycles(s, rte_rdtsc() - start);
        } else {
            (void)s;
            (void)start;
        }
    }
    void add_cycles(stage s, uint64_t cycles) noexcept { cycles_[static_cast<unsigned>(s)] += cycles; }

    // Counts received packets; every `report_every` of them, writes a line to stderr with each
    // stage's exclusive cycles per packet, and starts over.
    void packets(unsigned n, unsigned worker) noexcept
    {
        if constexpr (stage_cycles_enabled) {
            count_packets(n, worker, stderr);
        } else {
            (void)n;
            (void)worker;
        }
    }
    void count_packets(uint64_t n, unsigned worker, FILE* out) noexcept
    {
        packets_ += n;
        if (packets_ >= report_every) {
            report(worker, out);
            *this = stage_clock{};
        }
    }

    // Exclusive cycles per packet of `s` over what was counted so far (0 without packets).
    double per_packet(stage s) const noexcept
    {
        if (packets_ == 0) {
            return 0;
        }
        auto at = [&](stage t) { return static_cast<double>(cycles_[static_cast<unsigned>(t)]); };
        double c = at(s);
        switch (s) {
        case stage::pass:
            c -= at(stage::inbound) + at(stage::spd) + at(stage::route_tx);
            break;
        case stage::inbound:
            c -= at(stage::esp_in);
            break;
        case stage::spd:
            c -= at(stage::policies);
            break;
        case stage::policies:
            c -= at(stage::esp_out);
            break;
        default:
            break;
        }
        return c / static_cast<double>(packets_);
    }

    // One line, written with one call: the log is shared with the main lcore and other workers.
    void report(unsigned worker, FILE* out) const noexcept
    {
        static constexpr const char* names[] = {"rx",  "pass",     "inbound", "esp_in",
                                                "spd", "policies", "esp_out", "route_tx"};
        static_assert(sizeof(names) / sizeof(names[0]) == static_cast<unsigned>(stage::count));
        std::string line = "stage-cycles worker " + std::to_string(worker) + " tsc-hz " +
                           std::to_string(rte_get_tsc_hz()) + " packets " + std::to_string(packets_) + ":";
        double total = 0;
        char field[64];
        for (unsigned s = 0; s < static_cast<unsigned>(stage::count); ++s) {
            const double c = per_packet(static_cast<stage>(s));
            total += c;
            std::snprintf(field, sizeof(field), " %s %.1f", names[s], c);
            line += field;
        }
        std::snprintf(field, sizeof(field), " total %.1f\n", total);
        line += field;
        std::fputs(line.c_str(), out);
        std::fflush(out);
    }

    static constexpr uint64_t report_every = uint64_t{1} << 22; // ~0.2-3 s at 1.5-20 Mpps

private:
    uint64_t cycles_[static_cast<unsigned>(stage::count)] = {};
    uint64_t packets_ = 0;
};

} // namespace espresso::dp
