// The worker lcore's poll loop: RX burst -> classify -> (inbound: SAD -> ESP/AH decap) or
// (transit: SPD -> ESP/AH encap | bypass | discard) -> FIB -> neighbor -> TX. Slow-path packets (ARP,
// traffic to the gateway that is not fast-path IPsec, unresolved next hops, ICMP to generate) go to
// the main lcore's exception ring. Every drop is counted, either on the SA (engine) or on the worker.
#include <rte_cycles.h>
#include <rte_ip_frag.h>
#include <rte_ethdev.h>
#include <rte_hash_crc.h>
#include <rte_ip.h>
#include <rte_mbuf_dyn.h>
#include <rte_pause.h>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "answer_memo.h"
#include "classify.h"
#include "espresso/dp/ipsec.h"
#include "gateway.h"
#include "icmpv6.h"
#include "packet.h"
#include "sa_groups.h"
#include "selectors.h"
#include "stage_cycles.h"

namespace espresso::dp {

namespace {

constexpr uint16_t max_vector = 128; // rx burst + handoff packets processed in one pass
constexpr unsigned forward_capacity = max_vector * 2; // packets routed at the end of one pass
static_assert(rx_burst_size <= max_vector, "one RX burst (or handoff dequeue) is one pass");

static_assert(sa_groups::max_groups == max_vector, "a group per packet of a pass fits");
static_assert((RTE_MAX_ETHPORTS & (RTE_MAX_ETHPORTS - 1)) == 0, "own_mac_ is indexed by a masked port id");
static_assert(RTE_BYTE_ORDER == RTE_LITTLE_ENDIAN, "the MAC filter compares a masked little-endian 8-byte load");

// :: or ::1 (RFC 4291 §2.5.2, §2.5.3).
inline bool zero_or_loopback6(const uint8_t* a) noexcept
{
    uint64_t hi;
    uint64_t lo;
    std::memcpy(&hi, a, 8);
    std::memcpy(&lo, a + 8, 8);
    return hi == 0 && (lo == 0 || lo == rte_cpu_to_be_64(1));
}

// Martian or multicast IPv4 addresses (RFC 1812 §5.3.7, §5.3.5): from 0/8, 127/8 or 224/3, to 0/8,
// 127/8, 240/4 or 255.255.255.255 (`martian`), or to a multicast group from a proper source
// (`multicast`: the gateway routes no multicast); gateway_drop::count when the packet may be forwarded.
inline gateway_drop never_forwarded4(const uint8_t* ip) noexcept
{
    const uint8_t s0 = ip[12];
    const uint8_t d0 = ip[16];
    const bool bad_source = s0 >= 224 || s0 == 0 || s0 == 127;
    if (!bad_source && d0 != 0 && d0 != 127 && d0 < 224) {
        return gateway_drop::count;
    }
    return d0 >= 224 && d0 < 240 && !bad_source ? gateway_drop::multicast : gateway_drop::martian;
}

// IPv6 (RFC 4291 §2.5.2, §2.5.3, §2.7): from ::, ::1 or a multicast address, or to :: or ::1.
inline bool never_forwarded6(const uint8_t* ip) noexcept
{
    return ip[8] == 0xff || zero_or_loopback6(ip + 8) || zero_or_loopback6(ip + 24);
}

// Either family, for a decrypted inner packet (which may also be to a multicast group: `multicast`,
// or from or to a link-local address, which cleartext transit drops as `link_local` in protect6).
inline gateway_drop never_forwarded(const uint8_t* ip) noexcept
{
    if ((ip[0] >> 4) == 4) {
        return never_forwarded4(ip);
    }
    if (ip[24] == 0xff) {
        return ip[8] == 0xff || zero_or_loopback6(ip + 8) ? gateway_drop::martian : gateway_drop::multicast;
    }
    if (never_forwarded6(ip)) {
        return gateway_drop::martian;
    }
    return is_link_local6(ip + 8) || is_link_local6(ip + 24) ? gateway_drop::link_local : gateway_drop::count;
}

class worker_loop {
public:
    worker_loop(worker_state& w, gateway::shared& s) : w_(w), s_(s)
    {
        // The ports are fixed before the workers start. At most 1500: what egress_mtu assumes for a
        // port it does not know.
        min_mtu_ = s_.min_mtu(1500);
        // So are the workers.
        spi_owner_ = fixed_divisor(std::max<uint32_t>(1, static_cast<uint32_t>(s_.workers.size())));
        // Outbound counters written back in batches (crypto_core.h): flushed before every
        // acknowledgement (apply_updates), when a poll finds nothing, and at least every 1 ms (what
        // `show` reads lags by that much under load). A flush costs two locked adds per SA used
        // since the last one: at 100 us with 240 active SAs that was 1.3 per packet, at 1 ms 0.13.
        core_.defer_outbound_counters();
        flush_interval_ = std::max<uint64_t>(1, rte_get_tsc_hz() / 1000);
        for (const port_state& ps : s_.ports) {
            if (ps.port < own_mac_.size()) {
                std::memcpy(&own_mac_[ps.port], ps.mac.addr_bytes, 6);
                std::memcpy(&device_mac_[ps.port], ps.device_mac.addr_bytes, 6);
            }
        }
    }

    int run() noexcept
    {
        unsigned idle = 0;
        unsigned polls = 0;
        unsigned busy_polls = 0;
        s_.neighbors->reader_online(w_.index);
        while (!s_.stop.load(std::memory_order_relaxed)) {
            apply_updates();
            const uint64_t now = rte_get_tsc_cycles();
            {
                reassembly_counts expired;
                w_.reassembly->expire(now, expired);
                count(expired);
            }
            unsigned got = 0;
            if (w_.index == 0) {
                // Before this iteration's RX: frames released by the main lcore (e.g. packets that
                // waited for ARP) leave ahead of anything newer.
                got += send_main_tx();
            }
            bool backlog = false; // an RX queue had more than this poll took
            unsigned own = 0;
            for (const auto& [port, queue] : w_.rx) {
                rte_mbuf* pkts[rx_burst_size];
                const uint64_t rx_start = stage_clock::now();
                uint16_t n = rte_eth_rx_burst(port, queue, pkts, rx_want_);
                if (n != 0) {
                    clock_.add(stage::rx, rx_start);
                    clock_.packets(n, w_.index);
                    w_.rx_packets.fetch_add(n, std::memory_order_relaxed);
                    process(pkts, n, false);
                    own += n;
                    backlog = backlog || n == rx_want_;
                }
            }
            got += own;
            // Handed-in packets wait while this worker's own RX queues are backlogged, for at most
            // handoff_hold_packets of its own per busy spell: they can be newer than that backlog.
            // af_packet's fanout rolls a flow's frames over to another worker's socket once this
            // worker's ring fills up (the worker was descheduled, say); that worker hands them back,
            // and processed first they would move the SA's replay window past the older frames still
            // queued here, which it would then drop as too old (seen: 35-141 packets of one stream
            // under CPU load). The bound keeps a busy worker from holding them (and the mbufs of
            // reassembled datagrams among them) for as long as the load lasts.
            rte_mbuf* handed[rx_burst_size];
            unsigned h = 0;
            if (backlog && held_for_ < handoff_hold_packets) {
                held_for_ += own;
            } else {
                if (!backlog) {
                    held_for_ = 0;
                }
                h = rte_ring_dequeue_burst(w_.handoff, reinterpret_cast<void**>(handed), rx_burst_size, nullptr);
            }
            if (h != 0) {
                w_.handed_in.fetch_add(h, std::memory_order_relaxed);
                clock_.packets(h, w_.index);
                process(handed, static_cast<uint16_t>(h), true);
                got += h;
            }
            rx_want_ = core_.take_multi_buffer_jobs() >= rx_burst_base ? rx_burst_size : rx_burst_base;
            drain_events();
            if (core_.counters_pending() && (got == 0 || now >= next_flush_)) {
                core_.flush_counters();
                next_flush_ = now + flush_interval_;
            }
            // Holds no neighbor-table slot past this point (lets the main lcore reuse removed ones).
            s_.neighbors->reader_quiescent(w_.index);
            // The poll counters (busy share) are published every 64 polls and before a nap: two
            // atomic read-modify-writes per poll cost more than the rest of an empty poll.
            ++polls;
            if (got != 0) {
                ++busy_polls;
            }
            if (polls == 64) {
                publish_polls(polls, busy_polls);
            }
            if (got != 0) {
                idle = 0;
            } else if (s_.adaptive_idle) {
                // Back off: spin briefly, then pause, then sleep in short steps (an idle gateway
                // should not burn its cores; latency cost is bounded by the sleep step).
                ++idle;
                if (idle > 2000) {
                    publish_polls(polls, busy_polls);
                    nap(idle > 20000 ? 1000 : 100);
                } else if (idle > 100) {
                    rte_pause();
                }
            }
        }
        publish_polls(polls, busy_polls);
        core_.flush_counters(); // before the main lcore, which waits for this worker, wipes the SAs
        s_.neighbors->reader_offline(w_.index);
        return 0;
    }

private:
    void publish_polls(unsigned& polls, unsigned& busy_polls) noexcept
    {
        w_.polls.fetch_add(polls, std::memory_order_relaxed);
        if (busy_polls != 0) {
            w_.busy_polls.fetch_add(busy_polls, std::memory_order_relaxed);
        }
        polls = 0;
        busy_polls = 0;
    }

    // Sleeps up to `usec`, or until the main lcore queues an update (gateway::wake): an idle worker
    // applies an SA install within microseconds instead of after its nap.
    void nap(unsigned usec) noexcept
    {
        const uint32_t seen = w_.wake_seq.load(std::memory_order_seq_cst);
        w_.napping.store(true, std::memory_order_seq_cst);
        s_.neighbors->reader_offline(w_.index); // a sleeping worker must not hold up reclamation
        if (rte_ring_count(w_.updates) == 0) {
            const timespec timeout{0, static_cast<long>(usec) * 1000};
            ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&w_.wake_seq), FUTEX_WAIT_PRIVATE, seen, &timeout,
                      nullptr, 0);
        }
        w_.napping.store(false, std::memory_order_relaxed);
        s_.neighbors->reader_online(w_.index);
    }

    exception_meta& meta(rte_mbuf* m) noexcept { return *RTE_MBUF_DYNFIELD(m, s_.meta_offset, exception_meta*); }

    void apply_updates() noexcept
    {
        // In bursts (a batch of SA installs arrives as one run of messages); the acknowledgement is
        // stored once per burst, after every message in it was applied.
        update_msg msgs[32];
        unsigned n;
        while ((n = rte_ring_sc_dequeue_burst_elem(w_.updates, msgs, sizeof(update_msg), 32, nullptr)) > 0) {
            // Every deferred count reaches its SA before the acknowledgement below: the main lcore
            // may carry a replaced SA's counters over, or free a removed one, once it has it.
            core_.flush_counters();
            for (unsigned i = 0; i < n; ++i) {
                const update_msg& msg = msgs[i];
                switch (msg.what) {
                case update_msg::add_inbound:
                    forget_sad(msg.key);
                    rte_hash_add_key_data(w_.sad, &msg.key, msg.ptr);
                    break;
                case update_msg::remove_inbound:
                    forget_sad(msg.key); // before the acknowledgement lets the main lcore free the SA
                    rte_hash_del_key(w_.sad, &msg.key);
                    break;
                case update_msg::set_spd:
                    w_.spd = static_cast<const compiled_spd*>(msg.ptr);
                    break;
                case update_msg::set_host:
                    w_.hosts->set(static_cast<const host_bucket*>(msg.ptr));
                    break;
                case update_msg::remove_host:
                    w_.hosts->remove(static_cast<const host_bucket*>(msg.ptr));
                    break;
                case update_msg::set_routes:
                    w_.routes = static_cast<const route_table*>(msg.ptr);
                    break;
                case update_msg::set_routes6:
                    w_.routes6 = static_cast<const route_table6*>(msg.ptr);
                    break;
                }
            }
            w_.applied.store(msgs[n - 1].generation, std::memory_order_release);
        }
    }

    // Frames from the main lcore (ARP, ICMP, the kernel's replies from the TAP): worker 0 owns
    // queue 0 of every port, so the main lcore never needs a TX queue of its own.
    unsigned send_main_tx() noexcept
    {
        rte_mbuf* pkts[rx_burst_size];
        unsigned n = rte_ring_sc_dequeue_burst(s_.main_tx, reinterpret_cast<void**>(pkts), rx_burst_size, nullptr);
        for (unsigned i = 0; i < n; ++i) {
            const int16_t pos = s_.position(pkts[i]->port);
            const uint16_t queue = pos >= 0 ? static_cast<uint16_t>(w_.index % s_.ports[static_cast<size_t>(pos)].tx_queues) : 0;
            if (pos < 0 || rte_eth_tx_burst(pkts[i]->port, queue, &pkts[i], 1) != 1) {
                drop(pkts[i], gateway_drop::tx_full);
            } else {
                w_.tx_packets.fetch_add(1, std::memory_order_relaxed);
            }
        }
        return n;
    }

    void drain_events() noexcept
    {
        sa_event ev[8];
        size_t n = core_.drain(ev);
        for (size_t i = 0; i < n; ++i) {
            gateway_event g{};
            g.what = ev[i].kind == sa_event_kind::soft_expire   ? gateway_event::kind::soft_expire
                     : ev[i].kind == sa_event_kind::hard_expire ? gateway_event::kind::hard_expire
                                                                : gateway_event::kind::seq_exhausted;
            g.dir = ev[i].dir;
            g.spi = ev[i].spi;
            if (rte_ring_mp_enqueue_elem(s_.events, &g, sizeof(g)) != 0) {
                w_.drop(gateway_drop::ring_full);
            }
        }
    }

    void acquire(const rte_mbuf* m, uint8_t protocol) noexcept
    {
        const uint64_t now = rte_get_tsc_cycles();
        if (now - last_acquire_ < rte_get_tsc_hz()) {
            return;
        }
        last_acquire_ = now;
        const auto* ip = rte_pktmbuf_mtod(m, const uint8_t*);
        gateway_event g{};
        g.what = gateway_event::kind::acquire;
        g.dir = config::direction::outbound;
        const bool v6 = (ip[0] >> 4) == 6;
        const unsigned bytes = v6 ? 16 : 4;
        g.source.family = v6 ? 6 : 4;
        std::memcpy(g.source.bytes.data(), ip_src(ip), bytes);
        g.destination.family = g.source.family;
        std::memcpy(g.destination.bytes.data(), ip_dst(ip), bytes);
        g.protocol = protocol;
        if (rte_ring_mp_enqueue_elem(s_.events, &g, sizeof(g)) != 0) {
            w_.drop(gateway_drop::ring_full);
        }
    }

    void to_exception(rte_mbuf* m, exception_meta::kind k, uint16_t port = 0, uint32_t value = 0) noexcept
    {
        exception_meta& md = meta(m);
        md.what = k;
        md.port = port;
        md.value = value;
        if (rte_ring_mp_enqueue(s_.exceptions, m) != 0) {
            w_.drop(gateway_drop::exception_full);
            rte_pktmbuf_free(m);
            return;
        }
        w_.to_exception.fetch_add(1, std::memory_order_relaxed);
    }

    void drop(rte_mbuf* m, gateway_drop why) noexcept
    {
        w_.drop(why);
        rte_pktmbuf_free(m);
    }

    bool is_local(uint32_t dst_be) const noexcept
    {
        for (const auto& [addr, port] : s_.local_addresses) {
            if (addr == dst_be) {
                return true;
            }
        }
        return false;
    }

    bool is_local6(const uint8_t* dst) const noexcept
    {
        for (const auto& [addr, port] : s_.local_addresses6) {
            if (std::memcmp(addr.data(), dst, 16) == 0) {
                return true;
            }
        }
        return false;
    }

    // Is `dst` a multicast group this port's gateway address joined: all-nodes (ff02::1) or the
    // solicited-node group of one of its addresses (RFC 4861 §7.2.1)?
    bool joined_group(uint16_t port, const uint8_t* dst) const noexcept
    {
        static constexpr uint8_t all_nodes[16] = {0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        if (std::memcmp(dst, all_nodes, 16) == 0) {
            return true;
        }
        for (const auto& [addr, p] : s_.local_addresses6) {
            if (p == port && std::memcmp(solicited_node(addr.data()).data(), dst, 16) == 0) {
                return true;
            }
        }
        return false;
    }

    // Where an IPv6 packet addressed to the gateway (or a group it joined) goes. Returns true when
    // the packet was consumed (ND to the main lcore, counted drop); false: continue with the ESP/
    // to-us classification.
    bool local_icmpv6(rte_mbuf* m, const uint8_t* ip, uint32_t avail) noexcept
    {
        if (ip[6] != proto_icmpv6 || avail < 41) {
            return false;
        }
        const uint8_t type = ip[40];
        if (type == icmpv6_neighbor_solicitation || type == icmpv6_neighbor_advertisement) {
            rte_pktmbuf_prepend(m, sizeof(rte_ether_hdr));
            to_exception(m, exception_meta::nd);
            return true;
        }
        if (type == icmpv6_router_solicitation || type == icmpv6_router_advertisement || type == icmpv6_redirect) {
            drop(m, gateway_drop::router_discovery);
            return true;
        }
        return false;
    }

    // RFC 1812 §5.2.2: a router verifies the IPv4 header checksum of every packet it receives. The
    // port's verdict when it has one (NICs with RX checksum offload), else computed (af_packet, pcap,
    // virtio without offload).
    static bool ipv4_header_checksum_ok(const rte_mbuf* m, const uint8_t* ip, uint32_t header) noexcept
    {
        const uint64_t verdict = m->ol_flags & RTE_MBUF_F_RX_IP_CKSUM_MASK;
        if (verdict == RTE_MBUF_F_RX_IP_CKSUM_GOOD) {
            return true;
        }
        if (verdict == RTE_MBUF_F_RX_IP_CKSUM_BAD) {
            return false;
        }
        return ipv4_checksum_ok(ip, header);
    }

    // One pass over a burst. `handed` = packets another worker passed to us (already L3, owned SAs).
    void process(rte_mbuf** pkts, uint16_t n, bool handed) noexcept
    {
        const uint64_t start = stage_clock::now();
        process_pass(pkts, n, handed);
        clock_.add(stage::pass, start);
    }

    void process_pass(rte_mbuf** pkts, uint16_t n, bool handed) noexcept
    {
        rte_mbuf* transit[max_vector];
        uint16_t n_transit = 0;
        rte_mbuf* transit6[max_vector];
        uint16_t n_transit6 = 0;
        rte_mbuf* inbound[max_vector];
        uint64_t inbound_keys[max_vector];
        uint16_t n_inbound = 0;
        // An RX burst comes from one port: its MACs once per pass (the filter below).
        constexpr uint64_t mac_mask = 0x0000ffffffffffffULL; // the low 6 bytes (little-endian load)
        const uint16_t rx_port = n != 0 ? pkts[0]->port & (RTE_MAX_ETHPORTS - 1) : 0;
        const uint64_t own_mac = own_mac_[rx_port];
        const uint64_t device_mac = device_mac_[rx_port];
        for (uint16_t i = 0; i < n; ++i) {
            rte_mbuf* m = pkts[i];
            if (i + 3 < n) {
                rte_prefetch0(rte_pktmbuf_mtod(pkts[i + 3], void*));
            }
            if (!handed) {
                if (rte_pktmbuf_data_len(m) < sizeof(rte_ether_hdr) || m->nb_segs > 1) {
                    drop(m, gateway_drop::malformed);
                    continue;
                }
                const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
                // Ports run promiscuous (a MAC override some devices refuse, af_packet on a veth
                // with its own address): a frame for another host's MAC (a switch flooding unknown
                // unicast, a bridged capture) is not ours to route. Group addresses pass, and so
                // does the device's own MAC where it refused the configured one.
                // One 8-byte load (destination and the source's first two bytes; every frame here has
                // its 14-byte header) masked to the destination, against the burst's port (hoisted).
                uint64_t dst_mac;
                std::memcpy(&dst_mac, eth, 8);
                dst_mac &= mac_mask;
                if (dst_mac != own_mac && (dst_mac & 1) == 0 && dst_mac != device_mac) [[unlikely]] {
                    drop(m, gateway_drop::other_mac);
                    continue;
                }
                const uint16_t type = be16_to_host(eth->ether_type);
                if (type == RTE_ETHER_TYPE_ARP) {
                    to_exception(m, exception_meta::arp);
                    continue;
                }
                if (type != RTE_ETHER_TYPE_IPV4 && type != RTE_ETHER_TYPE_IPV6) {
                    drop(m, gateway_drop::not_ip);
                    continue;
                }
                rte_pktmbuf_adj(m, sizeof(rte_ether_hdr));
                const uint8_t version = rte_pktmbuf_mtod(m, const uint8_t*)[0] >> 4;
                if (version != (type == RTE_ETHER_TYPE_IPV4 ? 4 : 6)) [[unlikely]] {
                    drop(m, gateway_drop::malformed);
                    continue;
                }
            }
            const auto* ip = rte_pktmbuf_mtod(m, const uint8_t*);
            ip_view v;
            uint32_t avail = rte_pktmbuf_data_len(m);
            if (const drop_reason r = parse_ip(ip, avail, v); r != drop_reason::none) [[unlikely]] {
                // A whole IP header whose total length runs past the frame: the packet was cut
                // (af_packet: a reassembled datagram larger than the ring's frames), not built wrong.
                const bool cut = r == drop_reason::truncated &&
                                 avail >= (v.version == 4 ? sizeof(rte_ipv4_hdr) : sizeof(rte_ipv6_hdr));
                drop(m, cut ? gateway_drop::truncated : gateway_drop::malformed);
                continue;
            }
            if (avail > v.total) [[unlikely]] {
                // Ethernet padding (a frame of 60 bytes for a shorter packet) or trailing junk: not
                // part of the packet. Cut here, so that no selector is read from it (the SPD key's
                // ports of a packet too short to have them), and it is neither forwarded,
                // encrypted nor quoted in an ICMP error (RFC 1812 §5.2.2 / Linux's ip_rcv trim).
                rte_pktmbuf_trim(m, static_cast<uint16_t>(avail - v.total));
                avail = v.total;
            }
            if (v.version == 4 && !handed && !ipv4_header_checksum_ok(m, ip, v.header)) [[unlikely]] {
                drop(m, gateway_drop::bad_checksum); // RFC 1812 §5.2.2 (handed packets were checked)
                continue;
            }
            if (v.version == 6) {
                const uint8_t* dst6 = ip + 24;
                if (is_multicast6(dst6)) {
                    // Link-local groups we joined: Neighbor Discovery here, the rest (MLD queries,
                    // echo to all-nodes) to the kernel. Other groups: not routed by this gateway.
                    if (handed) {
                        drop(m, gateway_drop::malformed);
                        continue;
                    }
                    if (!joined_group(m->port, dst6)) {
                        // Router Solicitations go to all-routers (ff02::2): count them as router
                        // discovery, which this gateway does not take part in, not as stray multicast.
                        const bool rd = ip[6] == proto_icmpv6 && avail > 40 &&
                                        (ip[40] == icmpv6_router_solicitation || ip[40] == icmpv6_router_advertisement);
                        drop(m, rd ? gateway_drop::router_discovery : gateway_drop::multicast);
                        continue;
                    }
                    if (local_icmpv6(m, ip, avail)) {
                        continue;
                    }
                    rte_pktmbuf_prepend(m, sizeof(rte_ether_hdr));
                    to_exception(m, exception_meta::to_us);
                    continue;
                }
                if (!is_local6(dst6)) {
                    if (handed) {
                        drop(m, gateway_drop::malformed);
                        continue;
                    }
                    // RFC 4291 §2.5.2-2.5.3, §2.7: no forwarding from the unspecified, loopback or a
                    // multicast address, nor to the unspecified or loopback address.
                    if (never_forwarded6(ip)) [[unlikely]] {
                        drop(m, gateway_drop::martian);
                        continue;
                    }
                    transit6[n_transit6++] = m;
                    continue;
                }
                if (!handed && local_icmpv6(m, ip, avail)) {
                    continue;
                }
            } else {
                uint32_t dst4 = 0;
                std::memcpy(&dst4, ip + 16, 4);
                if (!is_local(dst4)) {
                    if (handed) {
                        drop(m, gateway_drop::malformed);
                        continue;
                    }
                    // RFC 1812 §5.3.7 / §5.3.5: no forwarding from or to martian addresses (this
                    // network, loopback; multicast, class E or broadcast as a source), nor of IPv4
                    // multicast (the gateway routes none) or the limited broadcast (DHCP discovery,
                    // mDNS and the like stay on their link instead of going down a default route or
                    // into a tunnel that protects 0.0.0.0/0).
                    if (const gateway_drop d = never_forwarded4(ip); d != gateway_drop::count) [[unlikely]] {
                        drop(m, d);
                        continue;
                    }
                    transit[n_transit++] = m;
                    continue;
                }
            }
            inbound_class c = classify_inbound(m, v); // parsed above: not again
            if (c.kind == inbound_kind::fragment) {
                m = reassemble(m);
                if (m == nullptr) {
                    continue; // waiting for the rest, handed to the reassembling worker, or dropped (counted)
                }
                c = classify_inbound(m);
                if (c.kind == inbound_kind::fragment) [[unlikely]] {
                    drop(m, gateway_drop::frag_invalid); // a fragment inside a fragment
                    continue;
                }
            }
            if (c.kind == inbound_kind::esp && c.offset > sizeof(rte_ipv6_hdr)) {
                strip_ipv6_extensions(m, c); // ESP behind IPv6 extension headers
            }
            if (c.kind == inbound_kind::esp || c.kind == inbound_kind::ah) {
                const unsigned owner = spi_owner_.is_one() ? 0U : spi_owner_.mod(c.spi); // SPI % workers
                if (owner != w_.index) {
                    if (rte_ring_mp_enqueue(s_.workers[owner]->handoff, m) != 0) {
                        drop(m, gateway_drop::ring_full);
                    } else {
                        w_.handed_off.fetch_add(1, std::memory_order_relaxed);
                    }
                    continue;
                }
                inbound_keys[n_inbound] = uint64_t{c.spi} | (uint64_t{c.kind == inbound_kind::ah ? proto_ah : proto_esp} << 32);
                inbound[n_inbound++] = m;
                continue;
            }
            if (c.kind == inbound_kind::malformed) {
                drop(m, gateway_drop::malformed);
                continue;
            }
            // IKE, ICMP echo, anything else for the gateway: to the kernel through the TAP.
            rte_pktmbuf_prepend(m, sizeof(rte_ether_hdr));
            to_exception(m, exception_meta::to_us);
        }

        rte_mbuf* forward[forward_capacity];
        uint16_t n_forward = 0;
        if (n_inbound != 0) {
            const uint64_t start = stage_clock::now();
            decapsulate(inbound, inbound_keys, n_inbound, forward, n_forward);
            clock_.add(stage::inbound, start);
        }
        if (n_transit != 0 || n_transit6 != 0) {
            const uint64_t start = stage_clock::now();
            if (n_transit != 0) {
                protect(transit, n_transit, forward, n_forward);
            }
            if (n_transit6 != 0) {
                protect6(transit6, n_transit6, forward, n_forward);
            }
            clock_.add(stage::spd, start);
        }
        if (n_forward != 0) {
            const uint64_t start = stage_clock::now();
            route_and_send(forward, n_forward);
            clock_.add(stage::route_tx, start);
        }
    }

    // The worker that reassembles a datagram: from its source, destination and Identification, so
    // all its fragments meet on one worker's table whatever RX queue each arrived on (RSS hashes
    // fragments on addresses only, but af_packet fanout or a NIC's RSS settings need not).
    static unsigned reassembly_worker(const uint8_t* ip, unsigned workers) noexcept
    {
        uint32_t h = 0;
        if ((ip[0] >> 4) == 4) {
            h = rte_hash_crc_4byte(load_be32(ip + 12), h);
            h = rte_hash_crc_4byte(load_be32(ip + 16), h);
            h = rte_hash_crc_4byte(load_be16(ip + 4), h);
        } else {
            for (unsigned i = 8; i < 40; i += 4) {
                h = rte_hash_crc_4byte(load_be32(ip + i), h);
            }
            h = rte_hash_crc_4byte(load_be32(ip + 44), h); // Fragment header Identification
        }
        return h % workers;
    }

    // A fragment addressed to the gateway (classify_inbound: of ESP, AH or UDP). Returns the
    // reassembled datagram when this fragment completed it, else nullptr.
    rte_mbuf* reassemble(rte_mbuf* m) noexcept
    {
        const unsigned workers = static_cast<unsigned>(s_.workers.size());
        const unsigned target = reassembly_worker(rte_pktmbuf_mtod(m, const uint8_t*), workers);
        if (target != w_.index) {
            if (rte_ring_mp_enqueue(s_.workers[target]->handoff, m) != 0) {
                drop(m, gateway_drop::ring_full);
            }
            return nullptr;
        }
        w_.fragments.fetch_add(1, std::memory_order_relaxed);
        // The Ethernet header this fragment came with (still in front of it): the datagram gets it
        // back for the exception path, which hands frames to the kernel with their header.
        rte_ether_hdr eth;
        std::memcpy(&eth, rte_pktmbuf_mtod(m, const uint8_t*) - sizeof(eth), sizeof(eth));
        reassembly_counts counts;
        rte_mbuf* whole = w_.reassembly->add(m, rte_get_tsc_cycles(), counts);
        count(counts);
        if (whole != nullptr) {
            w_.reassembled.fetch_add(1, std::memory_order_relaxed);
            std::memcpy(rte_pktmbuf_mtod(whole, uint8_t*) - sizeof(eth), &eth, sizeof(eth)); // headroom
        }
        return whole;
    }

    void count(const reassembly_counts& c) noexcept
    {
        if (c.timed_out != 0) {
            w_.drop(gateway_drop::frag_timeout, c.timed_out);
        }
        if (c.table_full != 0) {
            w_.drop(gateway_drop::frag_table_full, c.table_full);
        }
        if (c.invalid != 0) {
            w_.drop(gateway_drop::frag_invalid, c.invalid);
        }
        if (c.too_big != 0) {
            w_.drop(gateway_drop::frag_too_big, c.too_big);
        }
        if (c.no_buffer != 0) {
            w_.drop(gateway_drop::frag_no_buffer, c.no_buffer);
        }
    }

    // The SAD memo (answer_memo.h): recent SAD answers (key -> SA) in front of the rte_hash, which
    // costs a hash of the key and a bucket search per packet even when a burst carries one SA. Only
    // this worker writes its SAD (apply_updates), and it forgets a key whenever it adds or removes
    // it. Only SAs found are memoised (unknown SPIs, e.g. a flood of forged ones, are not).
    struct sad_mix {
        uint64_t operator()(uint64_t key) const noexcept { return fibonacci_mix(key); }
    };
    using sad_memo = answer_memo<uint64_t, sa_runtime*, 10, sad_mix>;

    void forget_sad(uint64_t key) noexcept { sad_memo_.forget(key); }

    void decapsulate(rte_mbuf** pkts, const uint64_t* keys, uint16_t n, rte_mbuf** forward, uint16_t& n_forward) noexcept
    {
        const void* key_ptrs[max_vector];
        sa_runtime* data[max_vector]; // the packet's SA, nullptr when its SPI is unknown
        uint16_t missed[max_vector];
        uint16_t n_missed = 0;
        uint16_t n_found = 0; // of the missed ones, by rte_hash
        for (uint16_t i = 0; i < n; ++i) {
            if (sa_runtime* const* known = sad_memo_.find(keys[i])) {
                data[i] = *known;
                continue;
            }
            data[i] = nullptr;
            key_ptrs[n_missed] = &keys[i];
            missed[n_missed++] = i;
        }
        // rte_hash takes at most RTE_HASH_LOOKUP_BULK_MAX keys per call (its hit mask is 64 bits).
        for (uint16_t off = 0; off < n_missed; off += RTE_HASH_LOOKUP_BULK_MAX) {
            const auto len = static_cast<uint16_t>(std::min<unsigned>(RTE_HASH_LOOKUP_BULK_MAX, n_missed - off));
            void* found[RTE_HASH_LOOKUP_BULK_MAX];
            uint64_t found_hits = 0;
            rte_hash_lookup_bulk_data(w_.sad, key_ptrs + off, len, &found_hits, found);
            n_found = static_cast<uint16_t>(n_found + __builtin_popcountll(found_hits));
            for (uint16_t j = 0; j < len; ++j) {
                if ((found_hits & (uint64_t{1} << j)) != 0) {
                    const uint16_t i = missed[off + j];
                    data[i] = static_cast<sa_runtime*>(found[j]);
                    sad_memo_.store(keys[i], data[i]);
                }
            }
        }
        // No prefetch of the SAs here: with more than one SA in the pass, inbound_process_groups
        // starts every SA's head, state and keys at its start, after the grouping below (one SA
        // takes its few misses once per pass). Starting the head and state here as well (five lines
        // per SA) cost ~3 cycles per packet of this stage with 64 SAs per burst and ~1 with one,
        // and the engine was no faster for it (perf/RESULTS.md, stop 29).
        uint16_t kept = n;
        if (n_found != n_missed) { // unknown SPIs: dropped, the rest closed up
            kept = 0;
            for (uint16_t i = 0; i < n; ++i) {
                if (data[i] == nullptr) {
                    drop(pkts[i], gateway_drop::no_sa);
                    continue;
                }
                data[kept] = data[i];
                pkts[kept++] = pkts[i];
            }
        }
        sa_groups groups;
        for (unsigned i = 0; i < kept;) {
            i += groups.add_all(data + i, pkts + i, kept - i);
            if (i < kept) {
                run_inbound(groups, forward, n_forward);
                groups.clear();
            }
        }
        run_inbound(groups, forward, n_forward);
    }

    // Is a decrypted packet addressed to the gateway itself (transport mode always is; a tunnel's inner
    // packet can be when the SA's local selector covers a gateway address)?
    bool for_us(const rte_mbuf* m) const noexcept
    {
        const auto* ip = rte_pktmbuf_mtod(m, const uint8_t*);
        if ((ip[0] >> 4) == 6) {
            return is_local6(ip + 24);
        }
        uint32_t dst4 = 0;
        std::memcpy(&dst4, ip + 16, 4);
        return is_local(dst4);
    }

    void run_inbound(sa_groups& groups, rte_mbuf** forward, uint16_t& n_forward) noexcept
    {
        rte_mbuf** const ordered = groups.finish();
        // Every SA of the pass in one engine call (it prefetches their state first): with traffic of
        // many tunnels, one call per SA would cost its fixed overhead per packet.
        drop_reason reasons[sa_groups::max_packets];
        inbound_group ig[sa_groups::max_groups];
        for (unsigned g = 0; g < groups.n; ++g) {
            ig[g].sa = groups.sa[g];
            ig[g].pkts = ordered + groups.first[g];
            ig[g].reasons = reasons + groups.first[g];
            ig[g].n = groups.count[g];
        }
        const uint64_t start = stage_clock::now();
        inbound_process_groups(core_, ig, groups.n);
        clock_.add(stage::esp_in, start);
        // A local count: through the reference, every packet's forward_packet was a load and a
        // store of n_forward (the calls on its rare paths keep the compiler from holding it).
        uint16_t nf = n_forward;
        for (unsigned g = 0; g < groups.n; ++g) {
            // Decided once per SA (flag set at install), so decrypted transit traffic of a tunnel whose
            // selectors do not cover the gateway costs no address comparison here.
            const bool maybe_ours = (ig[g].sa->flags & (sa_tunnel | sa_local_inner)) != sa_tunnel;
            const bool wide = (ig[g].sa->flags & sa_wide_inner) != 0;
            if (!maybe_ours && !wide) [[likely]] {
                // A tunnel to other hosts with selectors that exclude martians: every good packet
                // is forwarded as it is (the common case, kept free of per-packet flag tests).
                for (uint16_t k = 0; k < ig[g].good; ++k) {
                    forward_packet(forward, nf, ig[g].pkts[k]);
                }
                for (uint16_t k = ig[g].good; k < ig[g].n; ++k) {
                    rte_pktmbuf_free(ig[g].pkts[k]); // counted on the SA by the engine
                }
                continue;
            }
            for (uint16_t k = 0; k < ig[g].n; ++k) {
                rte_mbuf* m = ig[g].pkts[k];
                if (k >= ig[g].good) {
                    rte_pktmbuf_free(m); // counted on the SA by the engine
                    continue;
                }
                if (wide) [[unlikely]] {
                    if (const gateway_drop d = never_forwarded(rte_pktmbuf_mtod(m, const uint8_t*)); d != gateway_drop::count) {
                        drop(m, d);
                        continue;
                    }
                }
                if (maybe_ours && for_us(m)) [[unlikely]] {
                    // RFC 4301 §5.2: the engine checked the selectors; the gateway's own traffic
                    // (transport mode between gateways) goes to the kernel through the TAP.
                    rte_pktmbuf_prepend(m, sizeof(rte_ether_hdr));
                    to_exception(m, exception_meta::decrypted_to_us);
                    continue;
                }
                forward_packet(forward, nf, m);
            }
        }
        n_forward = nf;
    }

    // Appends `m` to the pass's `forward` vector, first sending what it holds when it is full: the
    // packets of one RX poll fit it, but apply_policies' pre-fragmented packets can fill it before
    // the pass's last packets (IPv6 after IPv4, say) are added.
    void forward_packet(rte_mbuf** forward, uint16_t& n_forward, rte_mbuf* m) noexcept
    {
        if (n_forward == forward_capacity) [[unlikely]] {
            route_and_send(forward, n_forward);
            n_forward = 0;
        }
        forward[n_forward++] = m;
    }

    // Does the SPD decide anything for transit traffic? Not when it holds only bypass rules (or none)
    // and no SA-implied host policies: every packet is forwarded whatever it matches, so the worker
    // skips building keys and classifying.
    bool spd_decides() const noexcept
    {
        return (w_.spd != nullptr && !w_.spd->forwards_all()) || !w_.hosts->empty(host_category::outbound) ||
               !w_.hosts->empty(host_category::inbound_check);
    }

    // Cleartext transit: TTL, SPD, then encapsulation for protected traffic.
    void protect(rte_mbuf** pkts, uint16_t n, rte_mbuf** forward, uint16_t& n_forward) noexcept
    {
        spd_key keys[max_vector];
        const spd_key* key_ptrs[max_vector];
        uint8_t protocol[max_vector];
        uint16_t kept = 0;
        const bool classify_needed = spd_decides();
        for (uint16_t i = 0; i < n; ++i) {
            rte_mbuf* m = pkts[i];
            auto* ip = rte_pktmbuf_mtod(m, uint8_t*);
            if (ip[8] <= 1) {
                // RFC 1812 §5.3.1: ICMP Time Exceeded to the source (main lcore, rate-limited).
                rte_pktmbuf_prepend(m, sizeof(rte_ether_hdr));
                to_exception(m, exception_meta::time_exceeded);
                w_.drop(gateway_drop::ttl_exceeded);
                continue;
            }
            // RFC 1624 incremental checksum update for TTL - 1.
            --ip[8];
            uint32_t sum = static_cast<uint32_t>(load_be16(ip + 10)) + 0x0100;
            sum = (sum & 0xffff) + (sum >> 16);
            store_be16(ip + 10, static_cast<uint16_t>(sum));
            if (!classify_needed) {
                forward_packet(forward, n_forward, m); // as apply_policies does with bypass, no policy
                continue;
            }
            spd_key& k = keys[kept];
            spd_key_of(ip, rte_pktmbuf_data_len(m), k);
            key_ptrs[kept] = &keys[kept];
            protocol[kept] = k.protocol;
            pkts[kept++] = m;
        }
        if (kept == 0) {
            return;
        }
        const spd_rule* out_rule[max_vector];
        const spd_rule* in_match[max_vector];
        classify(w_.spd, *w_.hosts, key_ptrs, out_rule, in_match, kept, inbound_scope::without_outbound);
        const uint64_t start = stage_clock::now();
        apply_policies(pkts, kept, out_rule, in_match, protocol, forward, n_forward);
        clock_.add(stage::policies, start);
    }

    // Cleartext IPv6 transit: hop limit, link-local scope, SPD, then encapsulation.
    void protect6(rte_mbuf** pkts, uint16_t n, rte_mbuf** forward, uint16_t& n_forward) noexcept
    {
        spd6_key keys[max_vector];
        const spd6_key* key_ptrs[max_vector];
        uint8_t protocol[max_vector];
        uint16_t kept = 0;
        const bool classify_needed = spd_decides();
        for (uint16_t i = 0; i < n; ++i) {
            rte_mbuf* m = pkts[i];
            auto* ip = rte_pktmbuf_mtod(m, uint8_t*);
            // RFC 4291 §2.5.6: a router must not forward packets with link-local source or
            // destination addresses off their link.
            if (is_link_local6(ip + 8) || is_link_local6(ip + 24) || is_unspecified6(ip + 8)) {
                drop(m, gateway_drop::link_local);
                continue;
            }
            if (ip[7] <= 1) {
                // RFC 8200 §3 / RFC 4443 §3.3: Time Exceeded, code 0 (main lcore, rate-limited).
                rte_pktmbuf_prepend(m, sizeof(rte_ether_hdr));
                to_exception(m, exception_meta::time_exceeded);
                w_.drop(gateway_drop::ttl_exceeded);
                continue;
            }
            --ip[7]; // no header checksum in IPv6
            if (!classify_needed) {
                forward_packet(forward, n_forward, m); // as apply_policies does with bypass, no policy
                continue;
            }
            spd6_key& k = keys[kept];
            spd6_key_of(ip, rte_pktmbuf_data_len(m), k);
            key_ptrs[kept] = &keys[kept];
            protocol[kept] = k.protocol;
            pkts[kept++] = m;
        }
        if (kept == 0) {
            return;
        }
        const spd_rule* out_rule[max_vector];
        const spd_rule* in_match[max_vector];
        classify6(w_.spd, *w_.hosts, key_ptrs, out_rule, in_match, kept, inbound_scope::without_outbound);
        const uint64_t start = stage_clock::now();
        apply_policies(pkts, kept, out_rule, in_match, protocol, forward, n_forward);
        clock_.add(stage::policies, start);
    }

    // The SPD verdicts of a burst (either family): bypass and no-policy packets are forwarded,
    // protected ones grouped by SA and encapsulated.
    void apply_policies(rte_mbuf** pkts, uint16_t kept, const spd_rule* const* out_rule,
                        const spd_rule* const* in_match, const uint8_t* protocol, rte_mbuf** forward,
                        uint16_t& n_forward) noexcept
    {
        // The SAs' first lines (flags, sizes, outer header: fit_for_encapsulation reads them) start
        // loading for the whole burst before the first packet needs one.
        for (uint16_t i = 0; i < kept; ++i) {
            if (out_rule[i] != nullptr && out_rule[i]->sa != nullptr) {
                prefetch_sa_head(out_rule[i]->sa);
            }
        }
        sa_groups groups;
        // Room in `forward` for `more` packets besides those grouped for encapsulation, which
        // run_outbound adds to it: pre-fragmented packets (up to max_fragments each) can make a pass
        // outgrow it, so what is ready is sent first. Every write to `forward` below goes through
        // this, bypassed packets too (they once did not: a burst of 3-part fragments and then a few
        // bypassed packets wrote past the array).
        auto make_room = [&](unsigned more) {
            if (n_forward + groups.total + more > forward_capacity) [[unlikely]] {
                run_outbound(groups, forward, n_forward);
                groups.clear();
                route_and_send(forward, n_forward);
                n_forward = 0;
            }
        };
        for (uint16_t i = 0; i < kept; ++i) {
            rte_mbuf* m = pkts[i];
            if (out_rule[i] == nullptr) {
                if (in_match[i] != nullptr) {
                    const spd_rule& in = *in_match[i];
                    if (in.action == config::policy_action::discard) {
                        drop(m, gateway_drop::spd_discard);
                        continue;
                    }
                    if (in.action == config::policy_action::protect || in.action == config::policy_action::trap) {
                        // RFC 4301 §5.2: cleartext that an inbound SA should have carried.
                        drop(m, gateway_drop::unprotected);
                        continue;
                    }
                }
                make_room(1);
                forward[n_forward++] = m; // bypass, or no policy: forwarded like a router
                continue;
            }
            const spd_rule& rule = *out_rule[i];
            if (rule.action == config::policy_action::bypass) {
                make_room(1);
                forward[n_forward++] = m;
                continue;
            }
            if (rule.action == config::policy_action::discard) {
                drop(m, gateway_drop::spd_discard);
                continue;
            }
            if (rule.sa == nullptr) {
                // RFC 4301 §5.1: no SA for a protect policy: ask the control plane (acquire), at most
                // once a second per worker, and drop the packet meanwhile.
                acquire(m, protocol[i]);
                drop(m, gateway_drop::no_outbound_sa);
                continue;
            }
            rte_mbuf* frags[max_fragments];
            const int parts = fit_for_encapsulation(m, *rule.sa, frags);
            make_room(static_cast<unsigned>(parts));
            for (int f = 0; f < parts; ++f) {
                if (!groups.add(rule.sa, frags[f])) {
                    run_outbound(groups, forward, n_forward);
                    groups.clear();
                    groups.add(rule.sa, frags[f]);
                }
            }
        }
        run_outbound(groups, forward, n_forward);
    }

    static constexpr int max_fragments = 16;

    // The MTU of the port a packet leaves by after encapsulation with `sa` (the outer destination's
    // route; transport mode: the packet's own), or 0 when there is no route (dropped later, counted).
    uint32_t egress_mtu(const sa_runtime& sa, const uint8_t* ip) const noexcept
    {
        const bool tunnel = (sa.flags & sa_tunnel) != 0;
        const bool v6 = tunnel ? (sa.flags & sa_outer_v6) != 0 : (ip[0] >> 4) == 6;
        const uint8_t* dst = tunnel ? (v6 ? sa.outer_header + 24 : sa.outer_header + 16) : ip_dst(ip);
        uint16_t port = 0;
        if (v6) {
            ipv6_address nh{};
            if (!w_.routes6->lookup(dst, port, nh)) {
                return 0;
            }
        } else {
            uint32_t dst_be = 0;
            uint32_t nh = 0;
            std::memcpy(&dst_be, dst, 4);
            if (!w_.routes->lookup(dst_be, port, nh)) {
                return 0;
            }
        }
        const int16_t pos = s_.position(port);
        return pos >= 0 ? s_.ports[static_cast<size_t>(pos)].mtu : 1500;
    }

    // RFC 4301 §8 / RFC 1191: a DF packet that will not fit the egress MTU once encapsulated gets an
    // ICMP "fragmentation needed" with the MTU that does fit (built by the main lcore); a packet
    // without DF is fragmented before encryption (RFC 4301 §8.1, "pre-fragmentation"), so every
    // fragment travels in its own ESP packet and the receiver need not reassemble ESP.
    // IPv6 (RFC 8200 §5, RFC 8201): routers never fragment; an IPv6 packet that does not fit gets
    // ICMPv6 Packet Too Big with the MTU that fits (at least 1280, the IPv6 minimum).
    // Returns how many packets to encapsulate (written to out; 0 = consumed/dropped, counted).
    int fit_for_encapsulation(rte_mbuf* m, const sa_runtime& sa, rte_mbuf** out) noexcept
    {
        const auto* ip = rte_pktmbuf_mtod(m, const uint8_t*);
        out[0] = m;
        const bool v6 = (ip[0] >> 4) == 6;
        const uint32_t total = v6 ? 40U + load_be16(ip + 4) : load_be16(ip + 2);
        if (total + max_esp_overhead <= min_mtu_) {
            // Fits whichever port it leaves by with any SA: neither the route's MTU nor the SA's
            // figures are read (with a burst over many SAs, the SA's first line is then first
            // needed in the engine, a whole grouping pass after apply_policies prefetched it).
            return 1;
        }
        // The family the ESP/AH header follows: the outer header's in tunnel mode, else the packet's.
        const bool after_v6 = (sa.flags & sa_tunnel) != 0 ? (sa.flags & sa_outer_v6) != 0 : v6;
        const uint32_t esp_overhead = espresso::dp::esp_overhead(sa, after_v6);
        if (total + esp_overhead <= min_mtu_) {
            return 1; // fits whichever port it leaves by: no route lookup for the egress MTU
        }
        const uint32_t mtu = egress_mtu(sa, ip);
        if (mtu == 0) {
            return 1; // dropped later as no_route, counted there
        }
        if (total + esp_overhead <= mtu) {
            return 1;
        }
        if (v6) {
            const uint32_t fits = mtu > esp_overhead ? mtu - esp_overhead : 0;
            if (fits < 1280) {
                // Even a minimum-size IPv6 packet would not fit: a smaller MTU cannot be reported
                // (RFC 8201 §4 ignores values below 1280), and this gateway does not fragment the
                // outer packet.
                drop(m, gateway_drop::too_big);
                return 0;
            }
            rte_pktmbuf_prepend(m, sizeof(rte_ether_hdr));
            to_exception(m, exception_meta::too_big6, m->port, fits);
            w_.drop(gateway_drop::too_big);
            return 0;
        }
        const uint32_t fits = mtu > esp_overhead + 68 ? (mtu - esp_overhead) & ~7U : 68;
        if ((load_be16(ip + 6) & 0x4000) != 0 || (sa.flags & sa_tunnel) == 0) {
            // DF set (or transport mode, which cannot carry fragments): tell the source.
            rte_pktmbuf_prepend(m, sizeof(rte_ether_hdr));
            to_exception(m, exception_meta::too_big, m->port, fits);
            w_.drop(gateway_drop::too_big);
            return 0;
        }
        const int32_t n = rte_ipv4_fragment_copy_nonseg_packet(m, out, max_fragments, static_cast<uint16_t>(fits),
                                                                m->pool);
        const uint16_t in_port = m->port;
        rte_pktmbuf_free(m);
        if (n <= 0) {
            w_.drop(gateway_drop::too_big);
            return 0;
        }
        for (int32_t f = 0; f < n; ++f) {
            out[f]->port = in_port;
            ipv4_set_checksum(rte_pktmbuf_mtod(out[f], uint8_t*)); // the library leaves it to us
        }
        w_.fragmented.fetch_add(1, std::memory_order_relaxed);
        return n;
    }

    void run_outbound(sa_groups& groups, rte_mbuf** forward, uint16_t& n_forward) noexcept
    {
        rte_mbuf** const ordered = groups.finish();
        // Every SA of the pass in one engine call (it prefetches their state first): the ESP packets share IPsec-MB bursts.
        drop_reason reasons[sa_groups::max_packets];
        outbound_group og[sa_groups::max_groups];
        for (unsigned g = 0; g < groups.n; ++g) {
            og[g].sa = groups.sa[g];
            og[g].pkts = ordered + groups.first[g];
            og[g].reasons = reasons + groups.first[g];
            og[g].n = groups.count[g];
        }
        const uint64_t start = stage_clock::now();
        outbound_process_groups(core_, og, groups.n);
        clock_.add(stage::esp_out, start);
        // Locals: with `n_forward` a reference and og[] in memory, every store to forward[] would
        // make the compiler reload both per packet.
        uint16_t nf = n_forward;
        for (unsigned g = 0; g < groups.n; ++g) {
            rte_mbuf** const pk = og[g].pkts;
            const uint16_t n = og[g].n;
            const uint16_t good = og[g].good;
            for (uint16_t k = 0; k < good; ++k) {
                forward[nf++] = pk[k];
            }
            for (uint16_t k = good; k < n; ++k) {
                rte_pktmbuf_free(pk[k]);
            }
        }
        n_forward = nf;
    }

    // FIB -> neighbor -> Ethernet header -> per-port TX burst. Packets of both families (inner
    // packets after decapsulation, outer ones after encapsulation, bypassed cleartext).
    void route_and_send(rte_mbuf** pkts, uint16_t n) noexcept
    {
        static constexpr unsigned max_ports = 8;
        rte_mbuf* tx[max_ports][max_vector * 2];
        uint16_t tx_n[max_ports] = {};
        rte_mbuf* v4[max_vector * 2];
        uint32_t dst[max_vector * 2];
        uint64_t hops[max_vector * 2];
        rte_mbuf* v6[max_vector * 2];
        uint8_t dst6[max_vector * 2][16];
        uint64_t hops6[max_vector * 2];
        uint16_t n4 = 0;
        uint16_t n6 = 0;
        // The last IPv6 next hop looked up, with its port and the neighbor table's answer. Valid for
        // this call only: the worker holds its neighbor-table reader slot throughout (nothing it read
        // is reclaimed before reader_quiescent), and an answer that changes meanwhile (ARP, NUD) takes
        // effect from the next call, microseconds later. (IPv4 goes to its cache directly, whose
        // look-up costs no more than this comparison.)
        struct neighbor_memo {
            bool valid = false;
            bool known = false;
            uint16_t port = 0;
            uint8_t address[16] = {};
            rte_ether_addr mac{};
        } last6;
        // Before any look-up: answers cached from now on are copies under this generation.
        if (const uint64_t generation = s_.neighbors->generation(); generation != cache_generation_) {
            cache_generation_ = generation;
            if (++cache_epoch_ == 0) { // wrapped: entries of the former epoch 1, 2, ... must not match
                for (auto& c : neighbor_cache4_) {
                    c.key = 0;
                }
                for (auto& c : neighbor_cache6_) {
                    c.epoch = 0;
                }
                cache_epoch_ = 1;
            }
        }
        for (uint16_t i = 0; i < n; ++i) {
            const auto* ip = rte_pktmbuf_mtod(pkts[i], const uint8_t*);
            if ((ip[0] >> 4) == 6) {
                std::memcpy(dst6[n6], ip + 24, 16);
                v6[n6++] = pkts[i];
            } else {
                dst[n4] = load_be32(ip + 16);
                v4[n4++] = pkts[i];
            }
        }
        if (n4 != 0) {
            w_.routes->lookup_bulk(dst, hops, n4);
        }
        if (n6 != 0) {
            w_.routes6->lookup_bulk(dst6, hops6, n6);
        }
        for (uint16_t i = 0; i < n4 + n6; ++i) {
            const bool is6 = i >= n4;
            rte_mbuf* m = is6 ? v6[i - n4] : v4[i];
            const uint64_t hop_index = is6 ? hops6[i - n4] : hops[i];
            if (hop_index == (is6 ? route_table6::no_route : route_table::no_route)) {
                drop(m, gateway_drop::no_route);
                continue;
            }
            uint16_t port = 0;
            uint32_t nh_be = 0;
            const uint8_t* nh6 = nullptr;
            if (is6) {
                const next_hop6& h = w_.routes6->hop(hop_index);
                port = h.port;
                nh6 = h.connected ? dst6[i - n4] : h.gateway.data();
            } else {
                const next_hop& h = w_.routes->hop(hop_index);
                port = h.port;
                nh_be = h.gateway_be != 0 ? h.gateway_be : host_to_be32(dst[i]);
            }
            const int16_t pos = s_.position(port);
            if (pos < 0 || static_cast<unsigned>(pos) >= max_ports) {
                drop(m, gateway_drop::no_route);
                continue;
            }
            const port_state& ps = s_.ports[static_cast<size_t>(pos)];
            if (rte_pktmbuf_data_len(m) > ps.mtu) {
                // Larger than the egress MTU after routing (bypass traffic, a decrypted inner packet,
                // a datagram af_packet reassembled): never send an oversized frame. IPv6, and IPv4
                // with DF, tell the source (RFC 8201 / RFC 1191) unless the gateway itself is the
                // source (an encapsulated packet: fit_for_encapsulation decided about those).
                const auto* ip = rte_pktmbuf_mtod(m, const uint8_t*);
                uint32_t src4 = 0;
                if (!is6) {
                    std::memcpy(&src4, ip + 12, 4);
                }
                const bool ours = is6 ? is_local6(ip + 8) : is_local(src4);
                const bool tell = !ours && (is6 ? ps.mtu >= 1280 : (load_be16(ip + 6) & 0x4000) != 0);
                if (tell) {
                    rte_pktmbuf_prepend(m, sizeof(rte_ether_hdr));
                    to_exception(m, is6 ? exception_meta::too_big6 : exception_meta::too_big, m->port, ps.mtu);
                    w_.drop(gateway_drop::too_big);
                } else {
                    drop(m, gateway_drop::too_big);
                }
                continue;
            }
            const uint16_t ether_type = is6 ? RTE_ETHER_TYPE_IPV6 : RTE_ETHER_TYPE_IPV4;
            bool known = false;
            rte_ether_addr mac;
            if (!is6) {
                known = neighbor_lookup4(port, nh_be, mac);
            } else {
                // The packets of a burst mostly share a next hop (the peer gateway, the LAN router):
                // look each one up once per run of packets to it.
                if (!last6.valid || last6.port != port || std::memcmp(last6.address, nh6, 16) != 0) {
                    last6.valid = true;
                    last6.port = port;
                    std::memcpy(last6.address, nh6, 16);
                    last6.known = neighbor_lookup6(port, nh6, last6.mac);
                }
                known = last6.known;
                mac = last6.mac;
            }
            auto* eth = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_prepend(m, sizeof(rte_ether_hdr)));
            if (eth == nullptr) {
                drop(m, gateway_drop::malformed);
                continue;
            }
            eth->ether_type = host_to_be16(ether_type);
            if (!known) {
                // Main lcore queues it, sends ARP or a Neighbor Solicitation, and transmits once
                // resolved (IPv6: it looks the next hop up again, the metadata holds 32 bits).
                if (is6) {
                    to_exception(m, exception_meta::resolve6, port);
                } else {
                    to_exception(m, exception_meta::resolve, port, nh_be);
                }
                continue;
            }
            eth->dst_addr = mac;
            eth->src_addr = ps.mac;
            tx[pos][tx_n[pos]++] = m;
        }
        for (unsigned p = 0; p < max_ports && p < s_.ports.size(); ++p) {
            if (tx_n[p] == 0) {
                continue;
            }
            const port_state& ps = s_.ports[p];
            const uint16_t queue = static_cast<uint16_t>(w_.index % ps.tx_queues);
            uint16_t sent = rte_eth_tx_burst(ps.port, queue, tx[p], tx_n[p]);
            w_.tx_packets.fetch_add(sent, std::memory_order_relaxed);
            for (uint16_t k = sent; k < tx_n[p]; ++k) {
                drop(tx[p][k], gateway_drop::tx_full);
            }
        }
    }

    // The neighbor table's answer for a next hop, through the worker's caches of recent answers.
    // Decrypted traffic of a tunnel goes to many hosts on a connected LAN, a different next hop on
    // nearly every packet: the table is an rte_hash keyed by 20 bytes, whose lookup costs several
    // times a direct-mapped cache's. A cached answer is used only while the table's generation is the
    // one it was copied under (route_and_send starts a new epoch whenever the generation moved: any
    // learn, confirmation or removal), so the cache never answers what the table would not; unknown
    // next hops are not cached (they go to the main lcore). The IPv4 entry is 16 bytes, so that its
    // check is one 8-byte and one 2-byte comparison (~20 cycles per decrypted packet before, a tenth
    // of an AES-GCM 64 B packet's total).
    bool neighbor_lookup4(uint16_t port, uint32_t ip_be, rte_ether_addr& mac) noexcept
    {
        const uint64_t key = uint64_t{ip_be} | uint64_t{cache_epoch_} << 32;
        // Fibonacci hashing of the address in host order: the hosts of a LAN are consecutive
        // numbers, which it spreads evenly (a /24's 254 hosts into 512 slots: at most two of them
        // share one). In network order the varying byte is the top one, and on some ports 30 of
        // 100 consecutive hosts shared slots, evicting each other on every pass.
        const uint64_t h = ((uint64_t{be32_to_host(ip_be)} ^ uint64_t{port} << 32) * 0x9E3779B97F4A7C15ULL) >>
                           (64 - neighbor_cache4_bits);
        neighbor_cache4_entry& c = neighbor_cache4_[h];
        if (c.key == key && c.port == port) {
            mac = c.mac;
            return true;
        }
        if (!s_.neighbors->lookup(port, ip_be, mac)) {
            return false;
        }
        c.key = key;
        c.port = port;
        c.mac = mac;
        return true;
    }

    bool neighbor_lookup6(uint16_t port, const uint8_t* address, rte_ether_addr& mac) noexcept
    {
        uint64_t a = 0;
        uint64_t b = 0;
        std::memcpy(&a, address, 8);
        std::memcpy(&b, address + 8, 8);
        const uint64_t h = ((a ^ b ^ port) * 0x9E3779B97F4A7C15ULL) >> (64 - neighbor_cache_bits);
        neighbor_cache6_entry& c = neighbor_cache6_[h];
        if (c.epoch == cache_epoch_ && c.port == port && std::memcmp(c.address, address, 16) == 0) {
            mac = c.mac;
            return true;
        }
        if (!s_.neighbors->lookup6(port, address, mac)) {
            return false;
        }
        c.epoch = cache_epoch_;
        c.port = port;
        std::memcpy(c.address, address, 16);
        c.mac = mac;
        return true;
    }

    static constexpr unsigned neighbor_cache4_bits = 9; // 8 KiB
    static constexpr unsigned neighbor_cache_bits = 8;  // IPv6: 7 KiB
    struct neighbor_cache4_entry {
        // The IPv4 address (network order) in the low half, the epoch it was copied in the high half
        // (0 = empty: epochs start at 1).
        uint64_t key = 0;
        uint16_t port = 0;
        rte_ether_addr mac{};
    };
    static_assert(sizeof(neighbor_cache4_entry) == 16, "four IPv4 entries per cache line");
    struct neighbor_cache6_entry {
        uint32_t epoch = 0; // 0 = empty
        uint16_t port = 0;
        uint8_t address[16] = {};
        rte_ether_addr mac{};
    };

    worker_state& w_;
    gateway::shared& s_;
    crypto_core core_;
    neighbor_cache4_entry neighbor_cache4_[1U << neighbor_cache4_bits];
    neighbor_cache6_entry neighbor_cache6_[1U << neighbor_cache_bits];
    uint64_t cache_generation_ = 0; // the neighbor table's generation cache_epoch_ stands for
    uint32_t cache_epoch_ = 1;      // entries of other epochs are stale
    sad_memo sad_memo_;
    uint16_t rx_want_ = rx_burst_base; // packets the next poll asks each RX queue for (gateway.h)
    uint64_t last_acquire_ = 0;
    uint64_t flush_interval_ = 0; // TSC cycles between flushes of deferred counters while busy
    uint64_t next_flush_ = 0;
    uint32_t min_mtu_ = 1500; // smallest MTU of any port (fit_for_encapsulation's shortcut)
    fixed_divisor spi_owner_; // the worker count: an inbound SPI's owner is SPI % workers (gateway.h)
    std::array<uint64_t, RTE_MAX_ETHPORTS> own_mac_{};    // each port's MAC in the low 6 bytes, by DPDK port id
    std::array<uint64_t, RTE_MAX_ETHPORTS> device_mac_{}; // the device's own (port_state::device_mac)
    stage_clock clock_;       // -Dstage_cycles=true builds only (stage_cycles.h); unused otherwise
    unsigned held_for_ = 0;     // own packets taken while handed-in ones waited (run loop)
};

} // namespace

int worker_main(void* arg)
{
    auto* launch = static_cast<worker_launch*>(arg);
    worker_loop loop(*launch->worker, *launch->shared);
    return loop.run();
}

} // namespace espresso::dp
