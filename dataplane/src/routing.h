// IPv4 forwarding state: the FIB (rte_fib, DIR-24-8) built from connected subnets and static routes,
// and the neighbor (ARP) table.
//
// Threads: the FIB is built once at start-up and then only read (workers, main lcore). The neighbor
// table has one writer, the main lcore (ARP replies, static entries), and many lock-free readers
// (workers): rte_hash with RW_CONCURRENCY_LF finds the slot, and the MAC lives in one 64-bit atomic
// per slot, so a reader never sees half an address.
#pragma once

#include <rte_ether.h>
#include <rte_fib.h>
#include <rte_hash.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "espresso/config/types.h"

namespace espresso::dp {

struct next_hop {
    uint16_t port = 0;
    uint32_t gateway_be = 0; // 0 = directly connected: the destination itself
};

class route_table {
public:
    static constexpr uint64_t no_route = 0x7fffffff; // DIR-24-8 with 4-byte entries keeps 31 bits

    struct connected {
        uint16_t port;
        uint32_t address_be;
        uint8_t prefix_length;
    };
    // Throws std::runtime_error on an unusable route (gateway not on a connected subnet, ...).
    route_table(const std::vector<connected>& links, const std::vector<config::route_config>& routes,
                const std::vector<std::string>& interface_names);
    ~route_table();
    route_table(const route_table&) = delete;
    route_table& operator=(const route_table&) = delete;

    // dst in network order; returns false when there is no route.
    bool lookup(uint32_t dst_be, uint16_t& port, uint32_t& next_hop_be) const noexcept;
    // Bulk form for a burst: hops[i] = index into hop(), or no_route.
    void lookup_bulk(const uint32_t* dst_host_order, uint64_t* hops, unsigned n) const noexcept;
    const next_hop& hop(uint64_t index) const noexcept { return hops_[index]; }

private:
    rte_fib* fib_ = nullptr;
    std::vector<next_hop> hops_;
};

class neighbor_table {
public:
    explicit neighbor_table(const char* name, uint32_t capacity = 4096);
    ~neighbor_table();
    neighbor_table(const neighbor_table&) = delete;
    neighbor_table& operator=(const neighbor_table&) = delete;

    // Any thread. False if unknown or unresolved.
    bool lookup(uint16_t port, uint32_t ip_be, rte_ether_addr& mac) const noexcept;
    // Main lcore only. Static entries are never overwritten by ARP.
    bool set(uint16_t port, uint32_t ip_be, const rte_ether_addr& mac, bool is_static) noexcept;

    struct entry_view {
        uint16_t port;
        uint32_t ip_be;
        rte_ether_addr mac;
        bool is_static;
    };
    std::vector<entry_view> entries() const; // main lcore only

private:
    static uint64_t key(uint16_t port, uint32_t ip_be) noexcept { return uint64_t{port} << 32 | ip_be; }
    struct slot {
        std::atomic<uint64_t> mac{0}; // bit 63 = valid, bit 62 = static, low 48 bits = MAC
        uint64_t key = 0;
    };
    rte_hash* hash_ = nullptr;
    std::unique_ptr<slot[]> slots_;
    uint32_t capacity_;
};

} // namespace espresso::dp
