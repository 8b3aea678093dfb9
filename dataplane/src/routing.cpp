#include "routing.h"

#include <rte_byteorder.h>
#include <rte_errno.h>
#include <rte_lcore.h>

#include <cstring>
#include <stdexcept>
#include <string>

namespace espresso::dp {

namespace {

uint32_t be32_of(const config::ip_address& a)
{
    uint32_t v = 0;
    std::memcpy(&v, a.bytes.data(), 4);
    return v;
}

uint32_t mask_of(uint8_t len) { return len == 0 ? 0 : rte_cpu_to_be_32(~uint32_t{0} << (32 - len)); }

} // namespace

route_table::route_table(const std::vector<connected>& links, const std::vector<config::route_config>& routes,
                         const std::vector<std::string>& interface_names)
{
    rte_fib_conf conf{};
    conf.type = RTE_FIB_DIR24_8;
    conf.default_nh = no_route;
    conf.max_routes = static_cast<int>(links.size() + routes.size() + 16);
    conf.dir24_8.nh_sz = RTE_FIB_DIR24_8_4B;
    conf.dir24_8.num_tbl8 = 256;
    fib_ = rte_fib_create("espresso_fib4", static_cast<int>(rte_socket_id()), &conf);
    if (fib_ == nullptr) {
        throw std::runtime_error(std::string("rte_fib_create: ") + rte_strerror(rte_errno));
    }
    for (const auto& l : links) {
        hops_.push_back({l.port, 0});
        uint32_t net = rte_be_to_cpu_32(l.address_be & mask_of(l.prefix_length));
        if (rte_fib_add(fib_, net, l.prefix_length, hops_.size() - 1) != 0) {
            throw std::runtime_error("rte_fib_add failed for a connected subnet");
        }
    }
    for (const auto& r : routes) {
        if (!r.destination.address.is_v4()) {
            throw std::runtime_error(r.origin + ": IPv6 routes are not supported by this data plane yet");
        }
        next_hop nh{};
        bool found = false;
        if (r.via.is_v4()) {
            uint32_t via = be32_of(r.via);
            for (const auto& l : links) {
                if ((via & mask_of(l.prefix_length)) == (l.address_be & mask_of(l.prefix_length))) {
                    nh = {l.port, via};
                    found = true;
                    break;
                }
            }
            if (!found) {
                throw std::runtime_error(r.origin + ": next hop " + config::to_string(r.via) +
                                         " is not on any interface's subnet");
            }
        } else {
            for (size_t i = 0; i < interface_names.size(); ++i) {
                if (interface_names[i] == r.interface) {
                    nh = {links[i].port, 0};
                    found = true;
                }
            }
            if (!found) {
                throw std::runtime_error(r.origin + ": route needs `via` or a known `interface`");
            }
        }
        hops_.push_back(nh);
        uint32_t dst = rte_be_to_cpu_32(be32_of(r.destination.address));
        if (rte_fib_add(fib_, dst, r.destination.length, hops_.size() - 1) != 0) {
            throw std::runtime_error(r.origin + ": rte_fib_add failed");
        }
    }
}

route_table::~route_table()
{
    if (fib_ != nullptr) {
        rte_fib_free(fib_);
    }
}

bool route_table::lookup(uint32_t dst_be, uint16_t& port, uint32_t& next_hop_be) const noexcept
{
    uint32_t ip = rte_be_to_cpu_32(dst_be);
    uint64_t nh = no_route;
    rte_fib_lookup_bulk(fib_, &ip, &nh, 1);
    if (nh == no_route) {
        return false;
    }
    port = hops_[nh].port;
    next_hop_be = hops_[nh].gateway_be != 0 ? hops_[nh].gateway_be : dst_be;
    return true;
}

void route_table::lookup_bulk(const uint32_t* dst_host_order, uint64_t* hops, unsigned n) const noexcept
{
    rte_fib_lookup_bulk(fib_, const_cast<uint32_t*>(dst_host_order), hops, n);
}

neighbor_table::neighbor_table(const char* name, uint32_t capacity) : capacity_(capacity)
{
    rte_hash_parameters p{};
    p.name = name;
    p.entries = capacity;
    p.key_len = sizeof(uint64_t);
    p.socket_id = static_cast<int>(rte_socket_id());
    // One writer (main lcore), lock-free readers (workers).
    p.extra_flag = RTE_HASH_EXTRA_FLAGS_RW_CONCURRENCY_LF;
    hash_ = rte_hash_create(&p);
    if (hash_ == nullptr) {
        throw std::runtime_error(std::string("neighbor table: rte_hash_create: ") + rte_strerror(rte_errno));
    }
    slots_ = std::make_unique<slot[]>(capacity);
}

neighbor_table::~neighbor_table()
{
    if (hash_ != nullptr) {
        rte_hash_free(hash_);
    }
}

bool neighbor_table::lookup(uint16_t port, uint32_t ip_be, rte_ether_addr& mac) const noexcept
{
    uint64_t k = key(port, ip_be);
    int32_t pos = rte_hash_lookup(hash_, &k);
    if (pos < 0 || static_cast<uint32_t>(pos) >= capacity_) {
        return false;
    }
    uint64_t v = slots_[pos].mac.load(std::memory_order_acquire);
    if ((v >> 63) == 0) {
        return false;
    }
    for (int i = 0; i < 6; ++i) {
        mac.addr_bytes[i] = static_cast<uint8_t>(v >> (8 * (5 - i)));
    }
    return true;
}

bool neighbor_table::set(uint16_t port, uint32_t ip_be, const rte_ether_addr& mac, bool is_static) noexcept
{
    uint64_t k = key(port, ip_be);
    int32_t pos = rte_hash_add_key(hash_, &k);
    if (pos < 0 || static_cast<uint32_t>(pos) >= capacity_) {
        return false;
    }
    uint64_t old = slots_[pos].mac.load(std::memory_order_relaxed);
    if (((old >> 62) & 1) != 0 && !is_static) {
        return true; // static entries win over ARP
    }
    uint64_t v = 0;
    for (int i = 0; i < 6; ++i) {
        v = v << 8 | mac.addr_bytes[i];
    }
    v |= uint64_t{1} << 63;
    if (is_static) {
        v |= uint64_t{1} << 62;
    }
    slots_[pos].key = k;
    slots_[pos].mac.store(v, std::memory_order_release);
    return true;
}

std::vector<neighbor_table::entry_view> neighbor_table::entries() const
{
    std::vector<entry_view> out;
    const void* k = nullptr;
    void* data = nullptr;
    uint32_t iter = 0;
    int32_t pos;
    while ((pos = rte_hash_iterate(hash_, &k, &data, &iter)) >= 0) {
        uint64_t v = slots_[pos].mac.load(std::memory_order_acquire);
        if ((v >> 63) == 0) {
            continue;
        }
        uint64_t key_value = 0;
        std::memcpy(&key_value, k, sizeof(key_value));
        entry_view e{};
        e.port = static_cast<uint16_t>(key_value >> 32);
        e.ip_be = static_cast<uint32_t>(key_value);
        for (int i = 0; i < 6; ++i) {
            e.mac.addr_bytes[i] = static_cast<uint8_t>(v >> (8 * (5 - i)));
        }
        e.is_static = ((v >> 62) & 1) != 0;
        out.push_back(e);
    }
    return out;
}

} // namespace espresso::dp
