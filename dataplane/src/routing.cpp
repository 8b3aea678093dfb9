#include "routing.h"

#include <rte_byteorder.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_malloc.h>
#include <rte_cycles.h>
#include <sched.h>

#include <algorithm>
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

// rte_fib names are global in the process: a reload builds the next table while the running one
// still serves, so every table gets its own name. Main lcore only (tables are built there).
std::string fib_name(const char* base)
{
    static unsigned built = 0;
    return std::string(base) + "_" + std::to_string(built++);
}

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
    fib_ = rte_fib_create(fib_name("espresso_fib4").c_str(), static_cast<int>(rte_socket_id()), &conf);
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
            continue; // route_table6
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

route_table6::route_table6(const std::vector<connected>& links,
                           const std::vector<config::route_config>& routes,
                           const std::vector<std::string>& interface_names)
{
    rte_fib6_conf conf{};
    conf.type = RTE_FIB6_TRIE;
    conf.default_nh = no_route;
    conf.max_routes = static_cast<int>(links.size() + routes.size() + 16);
    conf.trie.nh_sz = RTE_FIB6_TRIE_4B;
    conf.trie.num_tbl8 = 1 << 12;
    fib_ = rte_fib6_create(fib_name("espresso_fib6").c_str(), static_cast<int>(rte_socket_id()), &conf);
    if (fib_ == nullptr) {
        throw std::runtime_error(std::string("rte_fib6_create: ") + rte_strerror(rte_errno));
    }
    auto on_link = [](const connected& l, const uint8_t* a) {
        config::ip_prefix p;
        p.address.family = 6;
        std::memcpy(p.address.bytes.data(), l.address.data(), 16);
        p.length = l.prefix_length;
        config::ip_address x;
        x.family = 6;
        std::memcpy(x.bytes.data(), a, 16);
        return config::prefix_contains(config::network_of(p.address, p.length), x);
    };
    for (const auto& l : links) {
        hops_.push_back({l.port, true, {}});
        if (l.prefix_length == 0) {
            continue; // a port without an IPv6 address: only link-local next hops reach it
        }
        const config::ip_prefix net = config::network_of(
            [&] {
                config::ip_address a;
                a.family = 6;
                std::memcpy(a.bytes.data(), l.address.data(), 16);
                return a;
            }(),
            l.prefix_length);
        if (rte_fib6_add(fib_, net.address.bytes.data(), l.prefix_length, hops_.size() - 1) != 0) {
            throw std::runtime_error("rte_fib6_add failed for a connected subnet");
        }
    }
    for (const auto& r : routes) {
        if (!r.destination.address.is_v6()) {
            continue;
        }
        next_hop6 nh{};
        bool found = false;
        const bool link_local_via = r.via.is_v6() && r.via.bytes[0] == 0xfe && (r.via.bytes[1] & 0xc0) == 0x80;
        if (link_local_via) {
            // fe80::/10 is on every link: the route names the interface (the loader insists).
            for (size_t i = 0; i < links.size() && !found; ++i) {
                if (interface_names[i] == r.interface) {
                    nh.port = links[i].port;
                    nh.connected = false;
                    std::memcpy(nh.gateway.data(), r.via.bytes.data(), 16);
                    found = true;
                }
            }
            if (!found) {
                throw std::runtime_error(r.origin + ": link-local next hop " + config::to_string(r.via) +
                                         " needs `interface`");
            }
        } else if (r.via.is_v6()) {
            for (size_t i = 0; i < links.size() && !found; ++i) {
                if ((!r.interface.empty() && interface_names[i] != r.interface) || links[i].prefix_length == 0) {
                    continue;
                }
                if (on_link(links[i], r.via.bytes.data())) {
                    nh.port = links[i].port;
                    nh.connected = false;
                    std::memcpy(nh.gateway.data(), r.via.bytes.data(), 16);
                    found = true;
                }
            }
            if (!found) {
                throw std::runtime_error(r.origin + ": next hop " + config::to_string(r.via) +
                                         " is not on any interface's IPv6 subnet");
            }
        } else {
            for (size_t i = 0; i < interface_names.size() && !found; ++i) {
                if (interface_names[i] == r.interface) {
                    nh = {links[i].port, true, {}};
                    found = true;
                }
            }
            if (!found) {
                throw std::runtime_error(r.origin +
                                         ": route needs `via` or an interface with an IPv6 address");
            }
        }
        hops_.push_back(nh);
        if (rte_fib6_add(fib_, r.destination.address.bytes.data(), r.destination.length, hops_.size() - 1) !=
            0) {
            throw std::runtime_error(r.origin + ": rte_fib6_add failed");
        }
    }
}

route_table6::~route_table6()
{
    if (fib_ != nullptr) {
        rte_fib6_free(fib_);
    }
}

bool route_table6::lookup(const uint8_t* dst, uint16_t& port, ipv6_address& next_hop) const noexcept
{
    uint8_t ip[1][16];
    std::memcpy(ip[0], dst, 16);
    uint64_t nh = no_route;
    rte_fib6_lookup_bulk(fib_, ip, &nh, 1);
    if (nh == no_route) {
        return false;
    }
    port = hops_[nh].port;
    if (hops_[nh].connected) {
        std::memcpy(next_hop.data(), dst, 16);
    } else {
        next_hop = hops_[nh].gateway;
    }
    return true;
}

void route_table6::lookup_bulk(const uint8_t (*dst)[16], uint64_t* hops, unsigned n) const noexcept
{
    rte_fib6_lookup_bulk(fib_, const_cast<uint8_t(*)[16]>(dst), hops, n);
}

neighbor_table::key_type neighbor_table::key(uint16_t port, uint32_t ip_be) noexcept
{
    key_type k{};
    k.port = port;
    k.family = 4;
    std::memcpy(k.address, &ip_be, 4);
    return k;
}

neighbor_table::key_type neighbor_table::key6(uint16_t port, const uint8_t* ip) noexcept
{
    key_type k{};
    k.port = port;
    k.family = 6;
    std::memcpy(k.address, ip, 16);
    return k;
}

neighbor_table::neighbor_table(const char* name, uint32_t capacity, unsigned readers)
    : capacity_(capacity), slot_count_(capacity + capacity / 2)
{
    readers = std::max(readers, 1U);
    const size_t rcu_bytes = rte_rcu_qsbr_get_memsize(readers);
    rcu_ = static_cast<rte_rcu_qsbr*>(rte_zmalloc_socket("espresso_neigh_rcu", rcu_bytes, RTE_CACHE_LINE_SIZE,
                                                         static_cast<int>(rte_socket_id())));
    if (rcu_ == nullptr || rte_rcu_qsbr_init(rcu_, readers) != 0) {
        rte_free(rcu_);
        throw std::runtime_error("neighbor table: cannot allocate its RCU state");
    }
    for (unsigned id = 0; id < readers; ++id) {
        rte_rcu_qsbr_thread_register(rcu_, id); // offline until the reader goes online
    }
    rte_hash_parameters p{};
    p.name = name;
    p.entries = slot_count_;
    p.key_len = sizeof(key_type);
    p.socket_id = static_cast<int>(rte_socket_id());
    // One writer (main lcore), lock-free readers (workers).
    p.extra_flag = RTE_HASH_EXTRA_FLAGS_RW_CONCURRENCY_LF;
    hash_ = rte_hash_create(&p);
    if (hash_ == nullptr) {
        rte_free(rcu_);
        throw std::runtime_error(std::string("neighbor table: rte_hash_create: ") + rte_strerror(rte_errno));
    }
    // Deleted keys go to a defer queue and their slots are reused only after every reader reported
    // a quiescent state (reclaimed by later adds and deletes).
    rte_hash_rcu_config rc{};
    rc.v = rcu_;
    rc.mode = RTE_HASH_QSBR_MODE_DQ;
    if (rte_hash_rcu_qsbr_add(hash_, &rc) != 0) {
        rte_hash_free(hash_);
        rte_free(rcu_);
        throw std::runtime_error(std::string("neighbor table: rte_hash_rcu_qsbr_add: ") + rte_strerror(rte_errno));
    }
    slots_ = std::make_unique<slot[]>(slot_count_);
}

neighbor_table::~neighbor_table()
{
    if (hash_ != nullptr) {
        rte_hash_free(hash_);
    }
    rte_free(rcu_);
}

void neighbor_table::reader_online(unsigned id) noexcept
{
    rte_rcu_qsbr_thread_online(rcu_, id);
}

void neighbor_table::reader_quiescent(unsigned id) noexcept
{
    rte_rcu_qsbr_quiescent(rcu_, id);
}

void neighbor_table::reader_offline(unsigned id) noexcept
{
    rte_rcu_qsbr_thread_offline(rcu_, id);
}

bool neighbor_table::find(const key_type& k, rte_ether_addr& mac, bool mark_used) const noexcept
{
    int32_t pos = rte_hash_lookup(hash_, &k);
    if (pos < 0 || static_cast<uint32_t>(pos) >= slot_count_) {
        return false;
    }
    const slot& s = slots_[pos];
    uint64_t v = s.mac.load(std::memory_order_acquire);
    if ((v >> 63) == 0) {
        return false;
    }
    if (mark_used && s.used.load(std::memory_order_relaxed) == 0) {
        s.used.store(1, std::memory_order_relaxed);
    }
    for (int i = 0; i < 6; ++i) {
        mac.addr_bytes[i] = static_cast<uint8_t>(v >> (8 * (5 - i)));
    }
    return true;
}

bool neighbor_table::lookup(uint16_t port, uint32_t ip_be, rte_ether_addr& mac) const noexcept
{
    return find(key(port, ip_be), mac, true);
}

bool neighbor_table::lookup6(uint16_t port, const uint8_t* ip, rte_ether_addr& mac) const noexcept
{
    return find(key6(port, ip), mac, true);
}

bool neighbor_table::known(uint16_t port, uint32_t ip_be) const noexcept
{
    rte_ether_addr unused;
    return find(key(port, ip_be), unused, false);
}

bool neighbor_table::known6(uint16_t port, const uint8_t* ip, rte_ether_addr& mac) const noexcept
{
    return find(key6(port, ip), mac, false);
}

bool neighbor_table::is_static6(uint16_t port, const uint8_t* ip) const noexcept
{
    const key_type k = key6(port, ip);
    int32_t pos = rte_hash_lookup(hash_, &k);
    if (pos < 0 || static_cast<uint32_t>(pos) >= slot_count_) {
        return false;
    }
    return ((slots_[pos].mac.load(std::memory_order_relaxed) >> 62) & 1) != 0;
}

void neighbor_table::make_room() noexcept
{
    // Learned entries no worker used since their last confirmation and not being probed: the
    // oldest go first. Entries learned from a flood of ARP requests or Neighbor Solicitations
    // (every on-link host may send them, from any address of the subnet) are of this kind; the next
    // hops traffic goes through are not, nor are static entries. (Linux's forced neighbour garbage
    // collection above gc_thresh3 likewise drops only unreferenced entries.)
    // A scan that could not get down to the low-water mark (every learned entry in use) is not
    // repeated for 100 ms: each new entry would otherwise cost a walk of the whole table.
    const uint64_t now = rte_get_tsc_cycles();
    if (now < next_scan_tsc_) {
        return;
    }
    std::vector<std::pair<uint64_t, int32_t>> idle; // confirmed_tsc, position
    const void* key_ptr = nullptr;
    void* data = nullptr;
    uint32_t iter = 0;
    int32_t pos;
    while ((pos = rte_hash_iterate(hash_, &key_ptr, &data, &iter)) >= 0) {
        const slot& s = slots_[pos];
        const uint64_t v = s.mac.load(std::memory_order_relaxed);
        if ((v >> 63) != 0 && ((v >> 62) & 1) == 0 && s.probes_sent == 0 &&
            s.used.load(std::memory_order_relaxed) == 0) {
            idle.emplace_back(s.confirmed_tsc, pos);
        }
    }
    const uint32_t low_water = capacity_ - capacity_ / 4;
    const size_t want = size_ > low_water ? size_ - low_water : 0;
    const size_t n = std::min(want, idle.size());
    std::partial_sort(idle.begin(), idle.begin() + static_cast<std::ptrdiff_t>(n), idle.end());
    for (size_t i = 0; i < n; ++i) {
        const int32_t p = idle[i].second;
        erase(slots_[p].key, p);
    }
    stats_.evicted += n;
    next_scan_tsc_ = n < want ? now + rte_get_tsc_hz() / 10 : 0;
}

bool neighbor_table::store(const key_type& k, const rte_ether_addr& mac, bool is_static) noexcept
{
    // A new learned entry above the high-water mark first evicts idle learned entries down to the
    // low-water mark (make_room): one scan serves capacity/8 new entries. Slots freed wait for every
    // reader's quiescent state (RCU) before reuse, so the hash has half the capacity again in slots:
    // a burst of new entries faster than a busy worker's polls still finds free ones.
    if (size_ >= capacity_ - capacity_ / 8 && rte_hash_lookup(hash_, &k) < 0) {
        if (!is_static) {
            make_room();
        }
        if (size_ >= capacity_) {
            stats_.table_full++;
            return false;
        }
    }
    int32_t pos = rte_hash_add_key(hash_, &k);
    if (pos == -ENOSPC && size_ < capacity_) {
        // Every free slot is one removed a moment ago that a reader may still hold (a worker busy
        // with a long burst, or descheduled, while the main lcore learns a flood of neighbors): wait
        // for every online worker's next quiescent state (napping ones are offline), then the add
        // reclaims them. Rare (the hash has capacity/2 slots of margin) and bounded by one poll.
        // Yielding, not spinning: with more lcores than CPUs the worker may share this one.
        const uint64_t token = rte_rcu_qsbr_start(rcu_);
        while (rte_rcu_qsbr_check(rcu_, token, false) == 0) {
            sched_yield();
        }
        ++stats_.waited;
        pos = rte_hash_add_key(hash_, &k);
    }
    if (pos < 0 || static_cast<uint32_t>(pos) >= slot_count_) {
        stats_.table_full++;
        return false;
    }
    slot& s = slots_[pos];
    uint64_t old = s.mac.load(std::memory_order_relaxed);
    if (((old >> 62) & 1) != 0 && !is_static) {
        return true; // static entries win over ARP/NDP
    }
    if ((old >> 63) == 0) {
        ++size_; // a new entry (erase clears the valid bit of the slots it frees)
    }
    uint64_t v = 0;
    for (int i = 0; i < 6; ++i) {
        v = v << 8 | mac.addr_bytes[i];
    }
    v |= uint64_t{1} << 63;
    if (is_static) {
        v |= uint64_t{1} << 62;
    }
    s.key = k;
    s.confirmed_tsc = rte_get_tsc_cycles();
    s.probes_sent = 0;
    s.used.store(0, std::memory_order_relaxed);
    s.mac.store(v, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    return true;
}

void neighbor_table::erase(const key_type& k, int32_t pos) noexcept
{
    // Readers that already found the slot may still read it until their next quiescent state; the
    // hash keeps the slot out of reuse until then (defer queue).
    slots_[pos].mac.store(0, std::memory_order_release);
    rte_hash_del_key(hash_, &k);
    --size_;
    generation_.fetch_add(1, std::memory_order_acq_rel);
}

bool neighbor_table::remove(uint16_t port, uint8_t family, const uint8_t* ip) noexcept
{
    uint32_t ip_be = 0;
    if (family == 4) {
        std::memcpy(&ip_be, ip, 4);
    }
    const key_type k = family == 4 ? key(port, ip_be) : key6(port, ip);
    const int32_t pos = rte_hash_lookup(hash_, &k);
    if (pos < 0 || static_cast<uint32_t>(pos) >= slot_count_) {
        return false;
    }
    erase(k, pos);
    return true;
}

bool neighbor_table::set(uint16_t port, uint32_t ip_be, const rte_ether_addr& mac, bool is_static) noexcept
{
    return store(key(port, ip_be), mac, is_static);
}

bool neighbor_table::set6(uint16_t port, const uint8_t* ip, const rte_ether_addr& mac,
                          bool is_static) noexcept
{
    return store(key6(port, ip), mac, is_static);
}

void neighbor_table::maintain(uint64_t now, const timers& t, std::vector<probe>& out)
{
    std::vector<std::pair<key_type, int32_t>> expired;
    const void* k = nullptr;
    void* data = nullptr;
    uint32_t iter = 0;
    int32_t pos;
    while ((pos = rte_hash_iterate(hash_, &k, &data, &iter)) >= 0) {
        slot& s = slots_[pos];
        const uint64_t v = s.mac.load(std::memory_order_relaxed);
        if ((v >> 63) == 0 || ((v >> 62) & 1) != 0 || now - s.confirmed_tsc < t.reachable) {
            continue;
        }
        if (s.probes_sent == 0 && s.used.load(std::memory_order_relaxed) == 0) {
            expired.emplace_back(s.key, pos);
            stats_.collected++;
            continue;
        }
        if (s.probes_sent != 0 && now - s.probe_tsc < t.retransmit) {
            continue;
        }
        if (s.probes_sent >= t.probes) {
            expired.emplace_back(s.key, pos);
            stats_.unreachable++;
            continue;
        }
        probe p{};
        p.port = s.key.port;
        p.family = static_cast<uint8_t>(s.key.family);
        std::memcpy(p.ip.data(), s.key.address, 16);
        for (int i = 0; i < 6; ++i) {
            p.mac.addr_bytes[i] = static_cast<uint8_t>(v >> (8 * (5 - i)));
        }
        out.push_back(p);
        s.probes_sent++;
        s.probe_tsc = now;
        stats_.probes_sent++;
    }
    for (const auto& [key_value, slot_pos] : expired) {
        erase(key_value, slot_pos);
    }
}

unsigned neighbor_table::clear_dynamic(uint8_t family)
{
    std::vector<std::pair<key_type, int32_t>> learned;
    const void* k = nullptr;
    void* data = nullptr;
    uint32_t iter = 0;
    int32_t pos;
    while ((pos = rte_hash_iterate(hash_, &k, &data, &iter)) >= 0) {
        const uint64_t v = slots_[pos].mac.load(std::memory_order_relaxed);
        if ((v >> 63) != 0 && ((v >> 62) & 1) == 0 && (family == 0 || slots_[pos].key.family == family)) {
            learned.emplace_back(slots_[pos].key, pos);
        }
    }
    for (const auto& [key_value, slot_pos] : learned) {
        erase(key_value, slot_pos);
    }
    stats_.cleared += learned.size();
    return static_cast<unsigned>(learned.size());
}

std::vector<neighbor_table::entry_view> neighbor_table::entries() const
{
    std::vector<entry_view> out;
    const void* k = nullptr;
    void* data = nullptr;
    uint32_t iter = 0;
    int32_t pos;
    while ((pos = rte_hash_iterate(hash_, &k, &data, &iter)) >= 0) {
        const slot& s = slots_[pos];
        uint64_t v = s.mac.load(std::memory_order_acquire);
        if ((v >> 63) == 0) {
            continue;
        }
        key_type key_value{};
        std::memcpy(&key_value, k, sizeof(key_value));
        entry_view e{};
        e.port = key_value.port;
        e.family = static_cast<uint8_t>(key_value.family);
        std::memcpy(&e.ip_be, key_value.address, 4);
        std::memcpy(e.ip6.data(), key_value.address, 16);
        for (int i = 0; i < 6; ++i) {
            e.mac.addr_bytes[i] = static_cast<uint8_t>(v >> (8 * (5 - i)));
        }
        e.is_static = ((v >> 62) & 1) != 0;
        e.confirmed_tsc = s.confirmed_tsc;
        e.probes_sent = s.probes_sent;
        e.nud = e.is_static ? state::permanent : s.probes_sent != 0 ? state::probe : state::reachable;
        out.push_back(e);
    }
    return out;
}

} // namespace espresso::dp
