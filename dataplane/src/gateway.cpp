// Gateway set-up (ports, TAP exception interfaces, tables, workers), the management loop on the main
// lcore (exception path: ARP, TAP, pending resolutions, ICMP; worker events) and the gateway_api.
#include "gateway.h"
#include "config_diff.h"

#include <rte_arp.h>
#include <rte_bus.h>
#include <rte_cycles.h>
#include <rte_dev.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_icmp.h>
#include <rte_ip_frag.h>
#include <rte_ip.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf_dyn.h>
#include <rte_pause.h>
#include <rte_random.h>

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <tuple>

#include "espresso/dp/ipsec.h"
#include "icmpv6.h"
#include "packet.h"
#include "sa_pool.h"
#include "selectors.h"

namespace espresso::dp {

namespace {

constexpr uint16_t ring_size = 4096; // update messages per worker (32 bytes each)
constexpr uint32_t implied_priority = 1000; // explicit policies (default priority 0) win
// The order of inbound-check host entries: one per selector pair (count_inbound_selectors), all with
// the same action, so which inbound SA it came from does not matter.
constexpr uint32_t inbound_check_spi = 0;
constexpr size_t max_pending_per_hop = 16;
// Bounds on everything waiting for ARP/NDP, whoever sends it: without them a stream of packets to
// distinct unresolved addresses of a connected prefix (an IPv6 /64 has no end of them) made a new
// entry, a solicitation and up to 16 held mbufs of the shared pool per address, until the RX queues
// could not be refilled. Linux bounds the same (gc_thresh3, unres_qlen); past these, packets are
// dropped as no_neighbor without a new entry or solicitation.
constexpr size_t max_pending_hops = 256;
constexpr size_t max_pending_packets = 1024;
// Explicit policies (file and control socket together): each add-policy recompiles rte_acl.
constexpr size_t max_explicit_policies = 16384;
// Requests a second for next hops with nothing queued because the queue is full (queue_for_neighbor).
constexpr unsigned max_unqueued_requests = 50;

uint32_t be32_of(const config::ip_address& a)
{
    uint32_t v = 0;
    std::memcpy(&v, a.bytes.data(), 4);
    return v;
}

std::string device_name(const std::string& spec)
{
    return spec.substr(0, spec.find(','));
}

std::string mac_text(const rte_ether_addr& mac)
{
    char buf[RTE_ETHER_ADDR_FMT_SIZE];
    rte_ether_format_addr(buf, sizeof(buf), &mac);
    return buf;
}

std::string ip_text(uint32_t be)
{
    config::ip_address a;
    a.family = 4;
    std::memcpy(a.bytes.data(), &be, 4);
    return config::to_string(a);
}

std::string ip6_text(const uint8_t* bytes)
{
    config::ip_address a;
    a.family = 6;
    std::memcpy(a.bytes.data(), bytes, 16);
    return config::to_string(a);
}

// The selectors of one packet of the gateway's own traffic (either family), for the SPD and the
// implicit bypass. `ip` was checked by parse_ip.
struct local_selectors {
    bool v6 = false;
    spd_key k4{};
    spd6_key k6{};
    uint8_t protocol = 0;
    uint16_t source_port = 0, destination_port = 0; // host order, 0 when not TCP/UDP first fragment
    int icmp_type = -1;                             // ICMP/ICMPv6 type, -1 when none
    uint32_t icmp_offset = 0;                       // where the ICMP/ICMPv6 header starts (icmp_type >= 0)
    bool non_first_fragment = false;                // no upper-layer header: ports are OPAQUE
};

local_selectors selectors_of(const uint8_t* ip, uint32_t avail, const ip_view& v)
{
    local_selectors s;
    s.v6 = v.version == 6;
    if (s.v6) {
        const uint32_t upper = spd6_key_of(ip, avail, s.k6, &s.non_first_fragment);
        s.protocol = s.k6.protocol;
        s.source_port = rte_be_to_cpu_16(s.k6.source_port);
        s.destination_port = rte_be_to_cpu_16(s.k6.destination_port);
        if (s.protocol == proto_icmpv6 && upper != 0) {
            s.icmp_type = ip[upper];
            s.icmp_offset = upper;
        }
    } else {
        spd_key_of(ip, avail, s.k4);
        s.non_first_fragment = (load_be16(ip + 6) & 0x1fff) != 0;
        s.protocol = s.k4.protocol;
        s.source_port = rte_be_to_cpu_16(s.k4.source_port);
        s.destination_port = rte_be_to_cpu_16(s.k4.destination_port);
        if (s.protocol == 1 && !v.fragment && avail > v.header) {
            s.icmp_type = ip[v.header];
            s.icmp_offset = v.header;
        }
    }
    return s;
}

// Both SPD levels (rte_acl and the host-selector table) for one packet of the gateway's own or about
// it, as the workers classify a burst: the outbound winner and the inbound-check match.
void classify_local(const compiled_spd* spd, const host_spd& hosts, const local_selectors& sel, inbound_scope scope,
                    const spd_rule*& out, const spd_rule*& in_match)
{
    if (sel.v6) {
        const spd6_key* k = &sel.k6;
        classify6(spd, hosts, &k, &out, &in_match, 1, scope);
    } else {
        const spd_key* k = &sel.k4;
        classify(spd, hosts, &k, &out, &in_match, 1, scope);
    }
}

// The gateway's own traffic that stays in the clear whatever the SPD says, in both directions (the
// peer gateway applies the same rule, so neither drops what the other sent):
//  - IKE on the gateway's IKE ports (RFC 4301 §4.4.1 / §5.1: the IKE SA protects itself; strongSwan
//    installs per-socket bypass policies for the same reason). `ours` = the gateway's UDP port: the
//    source port of what it sends, the destination port of what it receives. Covers UDP 4500 NAT-T
//    keepalives; ESP the gateway builds never passes through the SPD again.
//  - ICMPv6 Neighbor Discovery and MLD (RFC 4861, RFC 3810): link-local plumbing without which no
//    packet, protected or not, reaches the neighbour.
//  - ICMP errors (ICMPv4 3, 11, 12; ICMPv6 1-4): RFC 4301 §6.1.1 lets an implementation accept them
//    unprotected; Path MTU discovery of the ESP packets themselves depends on them.
bool implicit_bypass(const local_selectors& s, uint16_t ours, const std::vector<uint16_t>& ike_ports)
{
    if (s.protocol == proto_udp && ours != 0) {
        return std::find(ike_ports.begin(), ike_ports.end(), ours) != ike_ports.end();
    }
    if (s.icmp_type < 0) {
        return false;
    }
    if (s.v6) {
        const bool nd_mld = (s.icmp_type >= 130 && s.icmp_type <= 137) || s.icmp_type == 143;
        return s.protocol == proto_icmpv6 && (nd_mld || (s.icmp_type >= 1 && s.icmp_type <= 4));
    }
    return s.icmp_type == 3 || s.icmp_type == 11 || s.icmp_type == 12;
}

// An ICMP error (ICMPv4 3, 11, 12; ICMPv6 1-4), which quotes the packet it is about.
bool icmp_error(const local_selectors& s) noexcept
{
    if (s.icmp_type < 0) {
        return false;
    }
    return s.v6 ? s.protocol == proto_icmpv6 && s.icmp_type >= 1 && s.icmp_type <= 4
                : s.icmp_type == 3 || s.icmp_type == 11 || s.icmp_type == 12;
}

// Writes a per-interface IPv6 sysctl of the kernel side of a TAP (/proc/sys is per network namespace).
void tap_sysctl6(const std::string& tap, const char* key, const char* value)
{
    const std::string path = "/proc/sys/net/ipv6/conf/" + tap + "/" + key;
    FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr || std::fputs(value, f) < 0) {
        std::fprintf(stderr, "espresso-dp: warning: cannot set %s = %s\n", path.c_str(), value);
    }
    if (f != nullptr) {
        std::fclose(f);
    }
}

// Interface names reach a shell command line (`ip`): allow only what Linux allows in a name and
// nothing a shell interprets.
bool safe_ifname(const std::string& name)
{
    if (name.empty() || name.size() > 15) {
        return false;
    }
    return std::all_of(name.begin(), name.end(),
                       [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_'; });
}

int run_ip(const std::string& args)
{
    std::string cmd = "ip " + args + " 2>&1";
    int rc = std::system(cmd.c_str());
    if (rc != 0) {
        std::fprintf(stderr, "espresso-dp: warning: `%s` failed (%d)\n", cmd.c_str(), rc);
    }
    return rc;
}

uint64_t sad_key(const config::sa_config& c)
{
    uint8_t proto = c.protocol == config::ipsec_protocol::ah ? proto_ah : proto_esp;
    return uint64_t{c.spi} | (uint64_t{proto} << 32);
}

} // namespace

namespace {

// The value of `key=` in a DPDK device string ("name,key=value,key=value"), or "" when absent.
std::string device_arg(const std::string& spec, std::string_view key)
{
    size_t pos = spec.find(',');
    while (pos != std::string::npos) {
        const size_t start = pos + 1;
        const size_t end = spec.find(',', start);
        const std::string item = spec.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (item.size() > key.size() && item.compare(0, key.size(), key) == 0 && item[key.size()] == '=') {
            return item.substr(key.size() + 1);
        }
        pos = end;
    }
    return {};
}

bool is_af_packet(const std::string& spec)
{
    return spec.rfind("net_af_packet", 0) == 0 || spec.rfind("eth_af_packet", 0) == 0;
}

} // namespace

std::string af_packet_device_spec(const std::string& spec, unsigned workers)
{
    if (!is_af_packet(spec)) {
        return spec;
    }
    std::string out = spec;
    // One queue pair per worker. (More queues than workers would be worse than useless: the kernel's
    // fanout rolls frames over to busy sockets' neighbours, reordering ESP beyond the replay window.)
    if (device_arg(spec, "qpairs").empty()) {
        out += ",qpairs=" + std::to_string(workers);
    }
    // The operator's geometry wins as a whole: mixing it with ours could make an invalid ring.
    if (device_arg(spec, "framesz").empty() && device_arg(spec, "blocksz").empty() &&
        device_arg(spec, "framecnt").empty()) {
        out += ",framesz=" + std::to_string(af_packet_frame_size) + ",blocksz=" +
               std::to_string(af_packet_frame_size) + ",framecnt=" + std::to_string(af_packet_frame_count);
    }
    return out;
}

unsigned af_packet_frame_bytes(const std::string& spec)
{
    if (!is_af_packet(spec)) {
        return 0;
    }
    const std::string value = device_arg(spec, "framesz");
    if (value.empty()) {
        return af_packet_default_frame_size;
    }
    return static_cast<unsigned>(std::strtoul(value.c_str(), nullptr, 10));
}

std::vector<std::string> eal_arguments(const config::gateway_config& c, const std::string& program)
{
    std::vector<std::string> args{program};
    // lcore i runs on CPU i when the machine has enough of them; otherwise lcores share CPUs
    // round-robin (correct, just slower: useful for tests and small VMs).
    const unsigned cpus = std::max(1U, std::thread::hardware_concurrency());
    if (c.dataplane.workers + 1 <= cpus) {
        args.push_back("-l");
        args.push_back("0-" + std::to_string(c.dataplane.workers));
    } else {
        std::string map;
        for (unsigned l = 0; l <= c.dataplane.workers; ++l) {
            if (l != 0) {
                map += ',';
            }
            map += std::to_string(l);
            map += '@';
            map += std::to_string(l % cpus);
        }
        args.push_back("--lcores=" + map);
    }
    // Two gateways on one host (tests, the demo) need separate runtime directories.
    std::string prefix = c.dataplane.control_socket;
    std::replace(prefix.begin(), prefix.end(), '/', '_');
    args.push_back("--file-prefix=espresso" + prefix);
    if (!c.dataplane.hugepages) {
        args.push_back("--no-huge");
        // 512 MB for the mbuf pools and the rest, plus the SA tables dataplane.max-sas sizes: rte_hash
        // rounds to a power of two, ~100 bytes per SA per worker (SAD + host policies) and ~60 for
        // the main lcore's copy (measured: docs/configuration.md, max-sas).
        uint64_t slots = 1;
        while (slots < c.dataplane.max_sas) {
            slots <<= 1;
        }
        const uint64_t table_mb = (slots * (100 * uint64_t{c.dataplane.workers} + 60) + (1 << 20) - 1) >> 20;
        // Each worker's pool of waiting fragments (setup_workers): 2 mbufs of ~2.5 KB per datagram.
        const uint64_t fragment_mb = (uint64_t{c.dataplane.workers} * c.dataplane.reassembly_datagrams * 2 * 2560 +
                                      (1 << 20) - 1) >> 20;
        args.push_back("-m");
        args.push_back(std::to_string(512 + table_mb + fragment_mb));
        args.push_back("--no-shconf");
    }
    bool any_pci = false;
    for (const auto& i : c.interfaces) {
        if (i.device.rfind("net_", 0) == 0) {
            args.push_back("--vdev=" + af_packet_device_spec(i.device, c.dataplane.workers));
        } else {
            args.push_back("-a");
            args.push_back(i.device);
            any_pci = true;
        }
    }
    if (!any_pci && std::find(c.dataplane.eal.begin(), c.dataplane.eal.end(), "--no-pci") == c.dataplane.eal.end()) {
        args.push_back("--no-pci");
    }
    for (const auto& e : c.dataplane.eal) {
        args.push_back(e);
    }
    return args;
}

gateway::gateway(const config::gateway_config& config) : config_(config), hosts_(config.dataplane.max_sas)
{
    if (rte_lcore_count() < config_.dataplane.workers + 1) {
        throw std::runtime_error("need " + std::to_string(config_.dataplane.workers + 1) +
                                 " lcores (main + workers), EAL gave " + std::to_string(rte_lcore_count()));
    }
    if (config_.dataplane.hugepages) {
        // SA runtimes and host-policy buckets on huge pages too while at least 128 of them (256 MiB)
        // stay free for DPDK (sa_pool.h).
        sa_runtime_pool().use_huge_pages(128);
        host_bucket_pool().use_huge_pages(128);
    }
    shared_.port_index.fill(-1);
    shared_.adaptive_idle = config_.dataplane.idle == config::idle_mode::adaptive;
    static const rte_mbuf_dynfield meta_desc = {"espresso_exception_meta", sizeof(exception_meta),
                                                alignof(exception_meta), 0};
    shared_.meta_offset = rte_mbuf_dynfield_register(&meta_desc);
    if (shared_.meta_offset < 0) {
        throw std::runtime_error(std::string("mbuf dynfield: ") + rte_strerror(rte_errno));
    }
    const unsigned mbufs = 8191 + 4096 * static_cast<unsigned>(config_.interfaces.size()) * (config_.dataplane.workers + 1);
    pool_ = rte_pktmbuf_pool_create("espresso_mbufs", mbufs, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                    static_cast<int>(rte_socket_id()));
    if (pool_ == nullptr) {
        throw std::runtime_error(std::string("mbuf pool: ") + rte_strerror(rte_errno) +
                                 (config_.dataplane.hugepages ? " (reserve hugepages or set dataplane.hugepages: false)" : ""));
    }
    // af_packet copies each ring frame into one mbuf (no scatter) and refuses a pool whose mbufs are
    // smaller than its frames, so its RX queues get a pool of frame-sized mbufs. The PMD allocates an
    // mbuf per received packet (nothing is pre-posted per descriptor) and every path frees or
    // transmits it within a few loop iterations, so the pool only has to cover packets in flight
    // (bursts, the exception and handoff rings, ARP queues); when it runs dry the frames wait in the
    // kernel's ring.
    unsigned frame = 0;
    unsigned af_queues = 0;
    for (const auto& i : config_.interfaces) {
        const std::string spec = af_packet_device_spec(i.device, config_.dataplane.workers);
        if (const unsigned f = af_packet_frame_bytes(spec); f != 0) {
            frame = std::max(frame, f);
            const std::string q = device_arg(spec, "qpairs");
            af_queues += q.empty() ? 1U : static_cast<unsigned>(std::strtoul(q.c_str(), nullptr, 10));
        }
    }
    if (frame > RTE_MBUF_DEFAULT_DATAROOM) {
        const unsigned count = 1023 + 512 * af_queues;
        rx_jumbo_ = rte_pktmbuf_pool_create("espresso_rx_jumbo", count, 64, 0,
                                            static_cast<uint16_t>(RTE_PKTMBUF_HEADROOM + frame),
                                            static_cast<int>(rte_socket_id()));
        if (rx_jumbo_ == nullptr) {
            throw std::runtime_error(std::string("af_packet mbuf pool (") + std::to_string(count) + " x " +
                                     std::to_string(frame) + " bytes): " + rte_strerror(rte_errno));
        }
    }
    // Reassembled datagrams (reassembly.h): one segment each, up to reassembly_max_bytes; only
    // datagrams between reassembly and decryption or the TAP (a burst, the handoff and exception
    // rings, ARP queues) are in this pool at once, not the fragments waiting in the tables.
    const unsigned whole = 511 + 64 * config_.dataplane.workers;
    reassembled_ = rte_pktmbuf_pool_create("espresso_reasm", whole, 32, 0,
                                           static_cast<uint16_t>(RTE_PKTMBUF_HEADROOM + reassembly_max_bytes),
                                           static_cast<int>(rte_socket_id()));
    indirect_ = rte_pktmbuf_pool_create("espresso_indirect", 1023, 32, 0, 0, static_cast<int>(rte_socket_id()));
    if (reassembled_ == nullptr || indirect_ == nullptr) {
        throw std::runtime_error(std::string("reassembly mbuf pools (") + std::to_string(whole) + " x " +
                                 std::to_string(reassembly_max_bytes) + " bytes): " + rte_strerror(rte_errno));
    }
    tap_fragment_id_ = static_cast<uint32_t>(rte_rand());
    main_core_ = std::make_unique<crypto_core>();
    std::printf("espresso-dp: IPsec-MB %s\n", main_core_->description().c_str());
    // espresso-ike's sockets: 500 and 4500 (RFC 7296 §2.23), plus any other local port a peer sets.
    ike_ports_ = {500, 4500};
    for (const auto& peer : config_.ike.peers) {
        if (std::find(ike_ports_.begin(), ike_ports_.end(), peer.local_port) == ike_ports_.end()) {
            ike_ports_.push_back(peer.local_port);
        }
    }
    forget_ike_secrets(config_.ike);
    setup_ports();

    for (const auto& p : shared_.ports) {
        if (p.has_v4) {
            shared_.local_addresses.emplace_back(p.address_be, p.port);
        }
        if (p.has_v6) {
            shared_.local_addresses6.emplace_back(p.address6, p.port);
        }
        shared_.local_addresses6.emplace_back(p.link_local6, p.port);
    }
    std::tie(shared_.routes, shared_.routes6) = build_routes(config_.routes);
    note_route_gateways();
    shared_.neighbors = std::make_unique<neighbor_table>("espresso_neigh", config_.dataplane.neighbor_table_size,
                                                         config_.dataplane.workers);
    for (const auto& n : config_.neighbors) {
        set_static_neighbor(n);
    }
    shared_.exceptions = rte_ring_create("espresso_exc", 4096, static_cast<int>(rte_socket_id()), RING_F_SC_DEQ);
    shared_.events = rte_ring_create_elem("espresso_events", sizeof(gateway_event), 1024,
                                          static_cast<int>(rte_socket_id()), RING_F_SC_DEQ);
    shared_.main_tx = rte_ring_create("espresso_main_tx", 1024, static_cast<int>(rte_socket_id()),
                                      RING_F_SP_ENQ | RING_F_SC_DEQ);
    if (shared_.exceptions == nullptr || shared_.events == nullptr || shared_.main_tx == nullptr) {
        throw std::runtime_error("cannot create exception/event rings");
    }
    setup_workers();
    setup_taps();

    // Static SAs and policies go through the same path as the control socket's, but the SPD is
    // compiled once at the end instead of once per entry (start-up with 100k SAs stays linear).
    defer_spd_ = true;
    for (const auto& sa : config_.security_associations) {
        std::string err = add_sa(sa);
        if (!err.empty()) {
            throw std::runtime_error(err);
        }
    }
    for (const auto& p : config_.policies) {
        uint32_t id = 0;
        std::string err = insert_policy(p, id); // checked by the loader
        if (!err.empty()) {
            throw std::runtime_error(p.origin + ": " + err);
        }
        file_policy_ids_.push_back(id);
    }
    defer_spd_ = false;
    if (std::string err = rebuild_spd(); !err.empty()) {
        throw std::runtime_error(err);
    }
}

gateway::~gateway()
{
    for (auto& [key, p] : pending_) {
        for (auto* m : p.packets) {
            rte_pktmbuf_free(m);
        }
    }
    for (const auto& p : shared_.ports) {
        rte_eth_dev_stop(p.port);
        rte_eth_dev_close(p.port);
        if (p.has_tap) {
            rte_eth_dev_stop(p.tap_port);
            rte_eth_dev_close(p.tap_port);
        }
    }
    for (auto& w : workers_) {
        rte_ring_free(w->updates);
        rte_ring_free(w->handoff);
        rte_hash_free(w->sad);
    }
    sas_.clear(); // sa_deleter wipes every key
    spd_.reset();
    retired_spds_.clear();
    host_tables_.clear();
    main_hosts_.reset();
    rte_ring_free(shared_.exceptions);
    rte_ring_free(shared_.events);
    rte_mbuf* left = nullptr;
    while (shared_.main_tx != nullptr && rte_ring_dequeue(shared_.main_tx, reinterpret_cast<void**>(&left)) == 0) {
        rte_pktmbuf_free(left);
    }
    rte_ring_free(shared_.main_tx);
}

void gateway::setup_ports()
{
    const uint16_t workers = static_cast<uint16_t>(config_.dataplane.workers);
    for (const auto& ic : config_.interfaces) {
        port_state ps;
        ps.name = ic.name;
        ps.device = ic.device;
        if (const auto a = config::address_of(ic, 4)) {
            ps.has_v4 = true;
            ps.address_be = be32_of(a->address);
            ps.prefix_length = a->prefix_length;
        }
        if (const auto a = config::address_of(ic, 6)) {
            ps.has_v6 = true;
            std::memcpy(ps.address6.data(), a->address.bytes.data(), 16);
            ps.prefix_length6 = a->prefix_length;
        }
        ps.mtu = ic.mtu;
        const std::string name = device_name(ic.device);
        if (rte_eth_dev_get_port_by_name(name.c_str(), &ps.port) != 0) {
            throw std::runtime_error(ic.origin + ": interface " + ic.name + ": no DPDK port \"" + name +
                                     "\" (check the device spec, the driver, and that the device exists)");
        }
        rte_eth_dev_info info{};
        if (rte_eth_dev_info_get(ps.port, &info) != 0) {
            throw std::runtime_error("interface " + ic.name + ": cannot read device info");
        }
        // RSS spreads inner flows only on devices that have it; others get one RX queue.
        ps.rx_queues = info.flow_type_rss_offloads != 0 ? std::min<uint16_t>(workers, info.max_rx_queues) : 1;
        if (name.rfind("net_af_packet", 0) == 0) {
            // af_packet spreads frames over its queue pairs (PACKET_FANOUT): every RX queue it has
            // must be polled or the frames hashed to it are lost.
            ps.rx_queues = info.max_rx_queues;
        }
        // One TX queue per worker; the main lcore's few transmissions (ARP, ICMP, kernel replies from
        // the TAP) go through worker 0's queue via the main_tx ring, so devices with as many queues
        // as workers suffice.
        ps.tx_queues = workers;
        if (info.max_tx_queues < ps.tx_queues) {
            throw std::runtime_error("interface " + ic.name + ": device has " + std::to_string(info.max_tx_queues) +
                                     " TX queues, need " + std::to_string(ps.tx_queues) +
                                     " (one per worker)");
        }
        ps.rx_pool = is_af_packet(name) && rx_jumbo_ != nullptr ? rx_jumbo_ : pool_;
        rte_eth_conf conf{};
        if (ps.rx_queues > 1) {
            conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = RTE_ETH_RSS_IP & info.flow_type_rss_offloads;
        }
        if (rte_eth_dev_configure(ps.port, ps.rx_queues, ps.tx_queues, &conf) != 0) {
            throw std::runtime_error("interface " + ic.name + ": rte_eth_dev_configure failed");
        }
        uint16_t rxd = 1024;
        uint16_t txd = 1024;
        rte_eth_dev_adjust_nb_rx_tx_desc(ps.port, &rxd, &txd);
        const int socket = rte_eth_dev_socket_id(ps.port);
        for (uint16_t q = 0; q < ps.rx_queues; ++q) {
            if (rte_eth_rx_queue_setup(ps.port, q, rxd, socket, nullptr, ps.rx_pool) != 0) {
                throw std::runtime_error("interface " + ic.name + ": RX queue setup failed");
            }
        }
        for (uint16_t q = 0; q < ps.tx_queues; ++q) {
            if (rte_eth_tx_queue_setup(ps.port, q, txd, socket, nullptr) != 0) {
                throw std::runtime_error("interface " + ic.name + ": TX queue setup failed");
            }
        }
        if (ic.mac) {
            rte_ether_addr mac;
            std::memcpy(mac.addr_bytes, ic.mac->data(), 6);
            if (rte_eth_dev_default_mac_addr_set(ps.port, &mac) != 0) {
                std::fprintf(stderr, "espresso-dp: %s: device refused MAC override, using promiscuous mode\n",
                             ic.name.c_str());
            }
        }
        if (rte_eth_dev_set_mtu(ps.port, ic.mtu) != 0) {
            std::fprintf(stderr, "espresso-dp: %s: device did not accept MTU %u; enforcing it in software\n",
                         ic.name.c_str(), ic.mtu);
        }
        if (rte_eth_dev_start(ps.port) != 0) {
            throw std::runtime_error("interface " + ic.name + ": cannot start port");
        }
        // Promiscuous whether or not the override took (af_packet keeps the veth's own MAC): the
        // workers drop unicast frames for any other MAC themselves (`other_mac`).
        rte_eth_promiscuous_enable(ps.port);
        rte_eth_macaddr_get(ps.port, &ps.device_mac);
        if (ic.mac) {
            std::memcpy(ps.mac.addr_bytes, ic.mac->data(), 6);
        } else {
            ps.mac = ps.device_mac;
        }
        shared_.port_index[ps.port] = static_cast<int16_t>(shared_.ports.size());
        std::array<uint8_t, 6> mac_bytes;
        std::memcpy(mac_bytes.data(), ps.mac.addr_bytes, 6);
        ps.link_local6 = link_local_of(mac_bytes);
        std::string addresses;
        if (ps.has_v4) {
            addresses = ip_text(ps.address_be) + "/" + std::to_string(ps.prefix_length);
        }
        if (ps.has_v6) {
            addresses += (addresses.empty() ? "" : " ") + ip6_text(ps.address6.data()) + "/" +
                         std::to_string(ps.prefix_length6);
        }
        std::printf("espresso-dp: interface %s = port %u (%s) %s mac %s, %u rx / %u tx queues\n", ic.name.c_str(),
                    ps.port, ic.device.c_str(), addresses.c_str(), mac_text(ps.mac).c_str(), ps.rx_queues,
                    ps.tx_queues);
        shared_.ports.push_back(ps);
    }
}

std::pair<std::unique_ptr<route_table>, std::unique_ptr<route_table6>>
gateway::build_routes(const std::vector<config::route_config>& routes) const
{
    std::vector<route_table::connected> links;
    std::vector<std::string> names;
    std::vector<route_table6::connected> links6;
    std::vector<std::string> names6;
    for (const auto& p : shared_.ports) {
        if (p.has_v4) {
            links.push_back({p.port, p.address_be, p.prefix_length});
            names.push_back(p.name);
        }
        // Every port is in the IPv6 table's list: one without an IPv6 address is still reached
        // through a link-local next hop (prefix length 0: no connected route).
        links6.push_back({p.port, p.address6, p.has_v6 ? p.prefix_length6 : uint8_t{0}});
        names6.push_back(p.name);
    }
    auto v4 = std::make_unique<route_table>(links, routes, names);
    auto v6 = std::make_unique<route_table6>(links6, routes, names6);
    return {std::move(v4), std::move(v6)};
}

void gateway::set_static_neighbor(const config::neighbor_config& n)
{
    const port_state* ps = nullptr;
    for (const auto& p : shared_.ports) {
        if (p.name == n.interface) {
            ps = &p;
        }
    }
    if (ps == nullptr || (!n.address.is_v4() && !n.address.is_v6())) {
        throw std::runtime_error(n.origin + ": neighbor needs an address and a known interface");
    }
    rte_ether_addr mac;
    std::memcpy(mac.addr_bytes, n.mac.data(), 6);
    if (n.address.is_v4()) {
        shared_.neighbors->set(ps->port, be32_of(n.address), mac, true);
    } else {
        shared_.neighbors->set6(ps->port, n.address.bytes.data(), mac, true);
    }
}

void gateway::tap_route(const config::route_config& r, bool add)
{
    const std::string verb = add ? "route replace " : "route del ";
    uint16_t port = 0;
    if (r.via.is_v6()) {
        ipv6_address nh6{};
        int16_t pos = -1;
        if (is_link_local6(r.via.bytes.data())) {
            for (size_t i = 0; i < shared_.ports.size(); ++i) {
                if (shared_.ports[i].name == r.interface) {
                    pos = static_cast<int16_t>(i);
                }
            }
        } else if (shared_.routes6->lookup(r.via.bytes.data(), port, nh6)) {
            pos = shared_.position(port);
        }
        if (pos >= 0 && shared_.ports[static_cast<size_t>(pos)].has_tap) {
            run_ip("-6 " + verb + config::to_string(r.destination) + " via " + config::to_string(r.via) + " dev " +
                   shared_.ports[static_cast<size_t>(pos)].tap_name);
        }
        return;
    }
    uint32_t nh = 0;
    if (!r.via.is_v4() || !shared_.routes->lookup(be32_of(r.via), port, nh)) {
        return;
    }
    int16_t pos = shared_.position(port);
    if (pos >= 0 && shared_.ports[static_cast<size_t>(pos)].has_tap) {
        run_ip(verb + config::to_string(r.destination) + " via " + config::to_string(r.via) + " dev " +
               shared_.ports[static_cast<size_t>(pos)].tap_name);
    }
}

// Static neighbors are the truth for their link (a host that never answers ARP/NDP, or one that
// must not be asked): the kernel behind the TAP gets them too, so its own traffic to or through
// them (the gateway's own traffic, which the SPD may protect) does not wait for an answer that
// never comes.
void gateway::tap_neighbor(const config::neighbor_config& n, bool add)
{
    for (const auto& ps : shared_.ports) {
        if (ps.name == n.interface && ps.has_tap) {
            run_ip(std::string(n.address.is_v6() ? "-6 " : "") + (add ? "neigh replace " : "neigh del ") +
                   config::to_string(n.address) +
                   (add ? " lladdr " + config::to_string(n.mac) + " nud permanent" : std::string()) + " dev " +
                   ps.tap_name);
        }
    }
}

void gateway::setup_taps()
{
    for (size_t i = 0; i < shared_.ports.size(); ++i) {
        port_state& ps = shared_.ports[i];
        std::string tap = "dp-" + ps.name;
        if (tap.size() > 15) {
            tap.resize(15);
        }
        if (!safe_ifname(tap)) {
            throw std::runtime_error("interface name " + ps.name + " cannot name a kernel interface");
        }
        const std::string vdev = "net_tap_espresso" + std::to_string(i);
        const std::string spec = vdev + ",iface=" + tap + ",mac=" + mac_text(ps.mac);
        if (rte_dev_probe(spec.c_str()) != 0) {
            std::fprintf(stderr, "espresso-dp: %s: no TAP exception interface (%s); traffic to the gateway is dropped\n",
                         ps.name.c_str(), spec.c_str());
            continue;
        }
        if (rte_eth_dev_get_port_by_name(vdev.c_str(), &ps.tap_port) != 0) {
            continue;
        }
        // The kernel side must not act as an IPv6 host of its own on the wire: the data plane answers
        // Neighbor Solicitations for the gateway's addresses, so no Duplicate Address Detection (the
        // address would stay tentative, unusable for IKE, and DAD probes would race our answers), no
        // Router Solicitations and no autoconfiguration from Router Advertisements; the link-local
        // address is the EUI-64 one the data plane answers for. Set before the link comes up.
        tap_sysctl6(tap, "accept_dad", "0");
        tap_sysctl6(tap, "dad_transmits", "0");
        tap_sysctl6(tap, "router_solicitations", "0");
        tap_sysctl6(tap, "accept_ra", "0");
        tap_sysctl6(tap, "accept_redirects", "0");
        tap_sysctl6(tap, "addr_gen_mode", "0");
        rte_eth_conf conf{};
        if (rte_eth_dev_configure(ps.tap_port, 1, 1, &conf) != 0 ||
            rte_eth_rx_queue_setup(ps.tap_port, 0, 512, rte_eth_dev_socket_id(ps.tap_port), nullptr, pool_) != 0 ||
            rte_eth_tx_queue_setup(ps.tap_port, 0, 512, rte_eth_dev_socket_id(ps.tap_port), nullptr) != 0 ||
            rte_eth_dev_start(ps.tap_port) != 0) {
            throw std::runtime_error("interface " + ps.name + ": cannot start TAP " + tap);
        }
        // The TAP PMD writes frames up to its own MTU (1500: ethdev caps the TAP at a 1522-byte frame,
        // rte_eth_dev_set_mtu refuses more); larger datagrams to the gateway are fragmented for it
        // (to_tap).
        if (rte_eth_dev_get_mtu(ps.tap_port, &ps.tap_mtu) != 0) {
            ps.tap_mtu = RTE_ETHER_MTU;
        }
        ps.has_tap = true;
        ps.tap_name = tap;
        shared_.port_index[ps.tap_port] = -1;
        // The kernel side carries the gateway's address (and routes) so IKE, ping and every other
        // protocol to the gateway use the ordinary Linux stack (ARCHITECTURE.md, exception path).
        run_ip("link set dev " + tap + " mtu " + std::to_string(ps.mtu) + " up");
        if (ps.has_v4) {
            run_ip("addr replace " + ip_text(ps.address_be) + "/" + std::to_string(ps.prefix_length) + " dev " + tap);
        }
        if (ps.has_v6) {
            run_ip("-6 addr replace " + ip6_text(ps.address6.data()) + "/" + std::to_string(ps.prefix_length6) +
                   " dev " + tap + " nodad");
        }
    }
    for (const auto& r : config_.routes) {
        tap_route(r, true);
    }
    for (const auto& n : config_.neighbors) {
        tap_neighbor(n, true);
    }
}

// The data plane reads the ike: section only for the IKE ports; the pre-shared keys the file loader
// put there are the IKE daemon's, and are not kept in this process (wiped, then dropped).
void gateway::forget_ike_secrets(config::ike_config& ike) noexcept
{
    for (auto& peer : ike.peers) {
        explicit_bzero(peer.auth.psk.data(), peer.auth.psk.size());
        peer.auth.psk.clear();
    }
}

void gateway::setup_workers()
{
    const unsigned n = config_.dataplane.workers;
    unsigned lcore = rte_get_next_lcore(-1, 1, 0);
    for (unsigned i = 0; i < n; ++i) {
        auto w = std::make_unique<worker_state>();
        w->index = i;
        w->lcore = lcore;
        lcore = rte_get_next_lcore(lcore, 1, 0);
        const int socket = static_cast<int>(rte_lcore_to_socket_id(w->lcore));
        std::string name = "esp_upd" + std::to_string(i);
        w->updates = rte_ring_create_elem(name.c_str(), sizeof(update_msg), ring_size, socket,
                                          RING_F_SP_ENQ | RING_F_SC_DEQ);
        name = "esp_hand" + std::to_string(i);
        w->handoff = rte_ring_create(name.c_str(), handoff_ring_size, socket, RING_F_SC_DEQ);
        name = "esp_sad" + std::to_string(i);
        rte_hash_parameters hp{};
        hp.name = name.c_str();
        // Sized by dataplane.max-sas, with the extendable bucket table: every SA the gateway accepts
        // (check_room) fits, so a worker never fails to apply an add (a cuckoo table without it can
        // refuse keys well before `entries`).
        hp.entries = config_.dataplane.max_sas;
        hp.key_len = sizeof(uint64_t);
        hp.socket_id = socket;
        hp.extra_flag = RTE_HASH_EXTRA_FLAGS_EXT_TABLE;
        w->sad = rte_hash_create(&hp);
        if (w->updates == nullptr || w->handoff == nullptr || w->sad == nullptr) {
            throw std::runtime_error("cannot create worker tables: " + std::string(rte_strerror(rte_errno)));
        }
        const uint64_t timeout = rte_get_tsc_hz() * config_.dataplane.reassembly_timeout_ms / 1000;
        // The fragments this worker holds while their datagrams are incomplete live in a pool of their
        // own (reassembly.h): two per datagram it reassembles at once (most ESP datagrams that a path
        // fragments come in two), bounded so that a flood of first fragments cannot pin the RX pool.
        const unsigned waiting = 2 * config_.dataplane.reassembly_datagrams - 1;
        name = "esp_frag" + std::to_string(i);
        // DPDK refuses a per-lcore cache larger than 2/3 of the pool (reassembly-datagrams 16: 31 mbufs).
        const unsigned cache = std::min(32U, waiting / 2);
        rte_mempool* fragments = rte_pktmbuf_pool_create(name.c_str(), waiting, cache, 0, RTE_MBUF_DEFAULT_BUF_SIZE, socket);
        if (fragments == nullptr) {
            throw std::runtime_error("fragment mbuf pool (" + std::to_string(waiting) + " x " +
                                     std::to_string(RTE_MBUF_DEFAULT_BUF_SIZE) + " bytes): " + rte_strerror(rte_errno));
        }
        w->reassembly = std::make_unique<reassembler>(config_.dataplane.reassembly_datagrams, timeout, reassembled_,
                                                      fragments, socket);
        host_tables_.push_back(
            std::make_unique<host_spd>("esp_hspd" + std::to_string(i), config_.dataplane.max_sas, socket));
        w->hosts = host_tables_.back().get();
        w->routes = shared_.routes.get();
        w->routes6 = shared_.routes6.get();
        shared_.workers.push_back(w.get());
        workers_.push_back(std::move(w));
    }
    main_hosts_ =
        std::make_unique<host_spd>("esp_hspd_main", config_.dataplane.max_sas, static_cast<int>(rte_socket_id()));
    // RX queues round-robin over workers.
    unsigned next = 0;
    for (const auto& p : shared_.ports) {
        for (uint16_t q = 0; q < p.rx_queues; ++q) {
            workers_[next % n]->rx.emplace_back(p.port, q);
            ++next;
        }
    }
}

unsigned gateway::owner_of(uint32_t spi) const noexcept
{
    return spi % static_cast<unsigned>(workers_.size());
}

void gateway::wake(unsigned worker) noexcept
{
    worker_state& w = *workers_[worker];
    // Paired with worker_loop::nap: the bump is ordered after the enqueue, the napping check after
    // the bump (seq_cst), so a worker either sees the message before it sleeps, or its FUTEX_WAIT
    // finds wake_seq changed, or it is napping and gets the FUTEX_WAKE.
    w.wake_seq.fetch_add(1, std::memory_order_seq_cst);
    if (w.napping.load(std::memory_order_seq_cst)) {
        ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&w.wake_seq), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    }
}

bool gateway::post(unsigned worker, const update_msg& msg)
{
    // A full ring (a large batch) drains as the worker applies it; wait up to 2 s for room.
    uint64_t deadline = 0;
    while (rte_ring_sp_enqueue_elem(workers_[worker]->updates, const_cast<update_msg*>(&msg), sizeof(msg)) != 0) {
        if (!running_) {
            return false; // nobody drains it before launch
        }
        const uint64_t now = rte_get_tsc_cycles();
        if (deadline == 0) {
            deadline = now + 2 * rte_get_tsc_hz();
        } else if (now > deadline) {
            return false;
        }
        wake(worker);
        rte_pause();
    }
    if (running_) {
        wake(worker);
    }
    return true;
}

size_t gateway::post_bulk(unsigned worker, std::span<const update_msg> msgs)
{
    // One wake-up per run of messages instead of one per message: with a napping worker, every
    // wake() until it runs again was a FUTEX_WAKE system call on the management thread.
    size_t queued = 0;
    uint64_t deadline = 0;
    while (queued < msgs.size()) {
        queued += rte_ring_sp_enqueue_burst_elem(workers_[worker]->updates, const_cast<update_msg*>(&msgs[queued]),
                                                 sizeof(update_msg), static_cast<unsigned>(msgs.size() - queued),
                                                 nullptr);
        if (queued == msgs.size()) {
            break;
        }
        if (!running_) {
            return queued; // nobody drains it before launch
        }
        const uint64_t now = rte_get_tsc_cycles();
        if (deadline == 0) {
            deadline = now + 2 * rte_get_tsc_hz();
        } else if (now > deadline) {
            break;
        }
        wake(worker);
        rte_pause();
    }
    if (running_ && queued > 0) {
        wake(worker);
    }
    return queued;
}

bool gateway::wait_applied(const std::vector<unsigned>& which, uint64_t generation)
{
    if (!running_) {
        return true; // applied by each worker before its first burst
    }
    const uint64_t deadline = rte_get_tsc_cycles() + 2 * rte_get_tsc_hz();
    unsigned spins = 0;
    for (unsigned w : which) {
        while (workers_[w]->applied.load(std::memory_order_acquire) < generation) {
            if (rte_get_tsc_cycles() > deadline) {
                return false;
            }
            // Spin a little (a polling worker answers within microseconds), then give the CPU
            // away: a worker just woken from its nap, or sharing this CPU (more lcores than CPUs,
            // a busy host), needs it to apply the update we wait for. Measured: spinning alone
            // was the largest cost of a single add-sa on a loaded 2-CPU machine.
            if (++spins < 2000) {
                rte_pause();
            } else {
                sched_yield();
            }
        }
    }
    return true;
}

std::string gateway::rebuild_spd()
{
    if (defer_spd_) {
        return {};
    }
    std::vector<spd_entry> entries;
    for (const auto& p : policies_) {
        spd_entry e;
        e.policy = p.policy;
        e.id = p.id;
        if (p.policy.action == config::policy_action::protect) {
            auto it = sas_.find({static_cast<int>(config::direction::outbound), p.policy.spi});
            e.sa = it == sas_.end() ? nullptr : it->second.sa.get();
        }
        entries.push_back(e);
        // RFC 4301 §4.4.1: a policy covers both directions. The mirrored entry decides what to do
        // with cleartext arriving for it: bypass admits it, discard drops it, protect means it
        // should have come encrypted.
        spd_entry in = e;
        in.sa = nullptr;
        in.inbound_check = true;
        entries.push_back(in);
    }
    for (const auto& [key, entry] : sas_) {
        const auto& c = entry.sa->config;
        if (implied_in_hosts(c)) {
            continue; // level 2 (host_spd)
        }
        spd_entry e;
        e.implied = true;
        e.policy.local = c.local;
        e.policy.remote = c.remote;
        e.policy.priority = implied_priority;
        e.policy.action = config::policy_action::protect;
        e.policy.spi = c.spi;
        if (c.dir == config::direction::outbound) {
            e.sa = entry.sa.get();
        } else {
            e.inbound_check = true;
        }
        entries.push_back(e);
    }
    // Inbound SAs that share selectors (rekeys, several SAs per tunnel) leave the SPD as it is:
    // recompiling rte_acl for them would only cost install rate.
    std::vector<std::tuple<std::string, int, uint32_t, const void*, bool, uint32_t>> signature;
    signature.reserve(entries.size());
    for (const auto& e : entries) {
        const auto& p = e.policy;
        signature.emplace_back(config::to_string(p.local) + ">" + config::to_string(p.remote) + ":" +
                                   std::to_string(p.protocol) + ":" + std::to_string(p.local_port_min) + "-" +
                                   std::to_string(p.local_port_max) + ":" + std::to_string(p.remote_port_min) + "-" +
                                   std::to_string(p.remote_port_max),
                               static_cast<int>(p.action), p.priority, e.sa, e.inbound_check, e.id);
    }
    std::sort(signature.begin(), signature.end());
    signature.erase(std::unique(signature.begin(), signature.end()), signature.end());
    if (spd_ && !spd_incomplete_ && signature == spd_signature_) {
        return {};
    }
    std::unique_ptr<compiled_spd> spd;
    try {
        spd = std::make_unique<compiled_spd>(entries, ++generation_);
    } catch (const std::exception& e) {
        return e.what(); // the signature stays the old SPD's: the same entries are tried again
    }
    spd_signature_ = std::move(signature);
    const uint64_t gen = ++generation_;
    std::vector<unsigned> all;
    for (unsigned w = 0; w < workers_.size(); ++w) {
        if (!post(w, {update_msg::set_spd, 0, 0, spd.get(), gen})) {
            // Workers before this one were told to use the new SPD: it must outlive them (freed
            // here, it was a use after free once they switched), and the old one the others keep.
            // Marked incomplete so that the next rebuild posts to every worker again, even with
            // the same entries (an empty signature could not say so: no entries have one too).
            spd_incomplete_ = true;
            if (w > 0) {
                retired_spds_.push_back(std::move(spd_));
                spd_ = std::move(spd);
            }
            return "worker update ring full; policy update incomplete";
        }
        all.push_back(w);
    }
    if (!wait_applied(all, gen)) {
        // Keep the new SPD alive: a slow worker may still switch to it.
        retired_spds_.push_back(std::move(spd_));
        spd_ = std::move(spd);
        return "workers did not acknowledge the policy update within 2 s";
    }
    retired_spds_.clear();
    spd_ = std::move(spd);
    spd_incomplete_ = false;
    return {};
}

std::string gateway::check_new_sa(const config::sa_config& c) const
{
    if (sas_.count({static_cast<int>(c.dir), c.spi}) != 0) {
        char buf[64];
        std::snprintf(buf, sizeof(buf), "SA 0x%08x (%s) already exists", c.spi,
                      c.dir == config::direction::inbound ? "inbound" : "outbound");
        return buf;
    }
    return {};
}

// Counts an inbound SA's selector pair in (+1) or out (-1). Returns true when the pair's implied
// inbound check changes: the first SA with this pair arrived or the last one left.
bool gateway::count_inbound_selectors(const config::sa_config& c, int delta)
{
    std::array<uint8_t, 36> key{};
    key[0] = c.local.address.family;
    std::memcpy(&key[1], c.local.address.bytes.data(), 16);
    key[17] = c.local.length;
    key[18] = c.remote.address.family;
    std::memcpy(&key[19], c.remote.address.bytes.data(), 16);
    key[35] = c.remote.length;
    if (delta > 0) {
        return ++inbound_selectors_[key] == 1;
    }
    auto it = inbound_selectors_.find(key);
    if (it == inbound_selectors_.end() || --it->second == 0) {
        if (it != inbound_selectors_.end()) {
            inbound_selectors_.erase(it);
        }
        return true;
    }
    return false;
}

// Whether the implied policy of `c` lives in level 2 (host_spd) rather than in rte_acl.
bool gateway::implied_in_hosts(const config::sa_config& c) const
{
    if (!host_policies::is_host(c.remote)) {
        return false;
    }
    const bool out = c.dir == config::direction::outbound;
    const host_bucket* b =
        hosts_.find(make_host_key(out ? host_category::outbound : host_category::inbound_check, c.remote));
    if (b == nullptr) {
        return false;
    }
    const uint64_t order = implied_order(out ? c.spi : inbound_check_spi);
    return std::any_of(b->candidates.begin(), b->candidates.end(), [&](const host_candidate& h) {
        return h.rule.order == order && h.length == c.local.length &&
               std::memcmp(h.network, c.local.address.bytes.data(), c.local.address.is_v4() ? 4 : 16) == 0;
    });
}

// Does an explicit `protect` policy name this outbound SA by SPI? Its compiled rte_acl entry holds
// the SA's address (rebuild_spd), so adding, replacing or removing the SA must rebuild that level
// even when the SA's own implied policy lives in the host table (a /32 remote selector): otherwise
// the policy would keep steering packets to a freed SA, or miss a re-added one.
bool gateway::policy_names(const config::sa_config& c) const
{
    return c.dir == config::direction::outbound &&
           std::any_of(policies_.begin(), policies_.end(), [&](const policy_entry& p) {
               return p.policy.action == config::policy_action::protect && p.policy.spi == c.spi;
           });
}

// Adds (+1) or removes (-1) the policy an SA's selectors imply (RFC 4301 §4.4.1): outbound SAs
// protect their selectors' traffic; inbound SAs make cleartext matching them an error (one entry per
// selector pair, count_inbound_selectors). A host remote selector goes to level 2 (hosts_; the
// workers get it in publish_hosts()). Returns true when the rte_acl level must be rebuilt.
bool gateway::imply_policy(const sa_runtime& sa, int delta)
{
    const config::sa_config& c = sa.config;
    const bool out = c.dir == config::direction::outbound;
    if (!out && !count_inbound_selectors(c, delta)) {
        // Another inbound SA has (had) the same selectors: nothing changes (unless no rte_acl
        // level was ever built: a failed build is retried).
        return !spd_;
    }
    const host_category category = out ? host_category::outbound : host_category::inbound_check;
    const uint64_t order = implied_order(out ? c.spi : inbound_check_spi);
    if (!host_policies::is_host(c.remote)) {
        return true;
    }
    if (delta > 0) {
        spd_rule rule;
        rule.action = config::policy_action::protect;
        rule.sa = out ? const_cast<sa_runtime*>(&sa) : nullptr;
        rule.priority = implied_priority;
        rule.order = order;
        return !hosts_.add(category, c.local, c.remote, rule); // full: rte_acl takes it
    }
    return !hosts_.remove(category, c.local, c.remote, order); // not there: it was in rte_acl
}

// Sends level-2 changes to every worker and waits until all applied them; then frees the buckets
// they replaced. Before the workers run, applies them to the tables directly.
std::string gateway::publish_hosts()
{
    if (!hosts_.has_updates()) {
        return {};
    }
    const auto updates = hosts_.take_updates();
    for (const auto& u : updates) {
        if (u.remove) {
            main_hosts_->remove(u.bucket);
        } else {
            main_hosts_->set(u.bucket);
        }
    }
    if (!running_) {
        for (auto& table : host_tables_) {
            for (const auto& u : updates) {
                if (u.remove) {
                    table->remove(u.bucket);
                } else {
                    table->set(u.bucket);
                }
            }
        }
        hosts_.release_retired();
        return {};
    }
    uint64_t gen = 0;
    std::vector<unsigned> all;
    for (unsigned w = 0; w < workers_.size(); ++w) {
        all.push_back(w);
    }
    // Every worker gets the same run of messages, queued in bulk with one wake-up.
    std::vector<update_msg> run;
    run.reserve(updates.size());
    for (const auto& u : updates) {
        gen = ++generation_;
        run.push_back({u.remove ? update_msg::remove_host : update_msg::set_host, 0, 0,
                       const_cast<host_bucket*>(u.bucket), gen});
    }
    for (unsigned w = 0; w < workers_.size(); ++w) {
        if (post_bulk(w, run) != run.size()) {
            // This worker got part of the round and the ones after it none: their tables may
            // point at buckets this round retires for as long as they run.
            hosts_.abandon_retired();
            return "worker update ring full; policy update incomplete (old policy buckets kept)";
        }
    }
    if (!wait_applied(all, gen)) {
        hosts_.abandon_retired(); // a worker may still point at them (or never apply the round)
        return "workers did not acknowledge the policy update within 2 s (old policy buckets kept)";
    }
    hosts_.release_retired();
    return {};
}

std::string gateway::check_room(size_t adding) const
{
    // Every SA takes at most one SAD entry (inbound) or one host-policy key (its implied policy), and
    // both tables are sized for max-sas: below it, a worker's add cannot fail.
    if (sas_.size() + adding > config_.dataplane.max_sas) {
        return "the data plane holds " + std::to_string(sas_.size()) + " SAs and dataplane.max-sas is " +
               std::to_string(config_.dataplane.max_sas) + "; " + std::to_string(adding) +
               " more do not fit (raise dataplane.max-sas and restart espresso-dp)";
    }
    return {};
}

std::string gateway::add_sa(const config::sa_config& c)
{
    const auto key = std::make_pair(static_cast<int>(c.dir), c.spi);
    if (std::string error = check_room(1); !error.empty()) {
        return error;
    }
    if (std::string error = check_new_sa(c); !error.empty()) {
        return error;
    }
    sa_ptr sa;
    try {
        sa = make_sa(c, *main_core_);
    } catch (const std::exception& e) {
        return e.what();
    }
    sa_runtime* raw = sa.get();
    mark_local_delivery(*raw);
    limit_tfc_padding(*raw);
    sas_[key] = {std::move(sa), c.origin};
    if (c.dir == config::direction::inbound && !running_) {
        // Static SAs at start-up: the workers do not run yet, so their update rings (4096 messages)
        // would fill past 4096 inbound SAs; their SADs are written directly instead, as publish_hosts
        // does for the host level.
        const uint64_t sad = sad_key(c);
        if (rte_hash_add_key_data(workers_[owner_of(c.spi)]->sad, &sad, raw) < 0) {
            return "cannot add the SA to the worker's SAD";
        }
    }
    std::string ack_error;
    if (c.dir == config::direction::inbound && running_) {
        const unsigned owner = owner_of(c.spi);
        const uint64_t gen = ++generation_;
        if (!post(owner, {update_msg::add_inbound, 0, sad_key(c), raw, gen})) {
            sas_.erase(key); // never reached the worker: freed (keys wiped) at once
            return "worker's update ring stayed full: SA not installed";
        }
        if (!wait_applied({owner}, gen)) {
            // The worker has it queued and installs it when it gets to it: the SA stays, with its
            // implied policy (a later delete takes both back; without the policy it took another
            // SA's selector count), and the caller hears it was slow.
            ack_error = "worker did not acknowledge the SA install within 2 s (installed when it does)";
        }
    }
    std::string error;
    if (imply_policy(*raw, +1) || policy_names(c)) {
        std::string hosts_error = publish_hosts();
        std::string spd_error = rebuild_spd();
        error = hosts_error.empty() ? spd_error : hosts_error;
    } else {
        error = publish_hosts();
    }
    return ack_error.empty() ? error : ack_error;
}

std::string gateway::add_sas(std::span<const config::sa_config> batch)
{
    // Check and prepare everything first (key expansion included), so that a refusal changes nothing.
    if (std::string error = check_room(batch.size()); !error.empty()) {
        return error;
    }
    std::set<std::pair<int, uint32_t>> keys;
    std::vector<sa_ptr> made;
    made.reserve(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
        const config::sa_config& c = batch[i];
        std::string error = check_new_sa(c);
        if (error.empty() && !keys.insert({static_cast<int>(c.dir), c.spi}).second) {
            error = "the batch has this SA twice";
        }
        if (error.empty()) {
            try {
                made.push_back(make_sa(c, *main_core_));
                mark_local_delivery(*made.back());
                limit_tfc_padding(*made.back());
            } catch (const std::exception& e) {
                error = e.what();
            }
        }
        if (!error.empty()) {
            return "sas[" + std::to_string(i) + "]: " + error; // `made` wipes what it expanded
        }
    }
    // Commit: every worker gets its inbound SAs in one run of messages (queued in bulk, one wake-up)
    // and acknowledges once.
    std::vector<std::vector<update_msg>> runs(workers_.size());
    std::vector<std::vector<size_t>> run_items(workers_.size()); // batch index of each message
    for (size_t i = 0; i < batch.size(); ++i) {
        const config::sa_config& c = batch[i];
        if (c.dir == config::direction::inbound) {
            const unsigned owner = owner_of(c.spi);
            runs[owner].push_back({update_msg::add_inbound, 0, sad_key(c), made[i].get(), ++generation_});
            run_items[owner].push_back(i);
        }
    }
    std::vector<uint64_t> last(workers_.size(), 0);
    std::vector<bool> not_queued(batch.size(), false);
    size_t first_lost = batch.size();
    size_t lost = 0;
    for (unsigned w = 0; w < runs.size(); ++w) {
        const size_t queued = post_bulk(w, runs[w]);
        if (queued > 0) {
            last[w] = runs[w][queued - 1].generation;
        }
        for (size_t k = queued; k < runs[w].size(); ++k) {
            not_queued[run_items[w][k]] = true;
            first_lost = std::min(first_lost, run_items[w][k]);
            ++lost;
        }
    }
    std::string error;
    if (lost > 0) {
        // Those SAs were never queued: they are not installed (`made` wipes them); the rest are.
        error = "worker update ring full; " + std::to_string(lost) + " inbound SAs from sas[" +
                std::to_string(first_lost) + "] on were not installed";
    }
    bool spd_changes = false;
    for (size_t i = 0; i < batch.size(); ++i) {
        if (not_queued[i]) {
            continue;
        }
        const config::sa_config& c = batch[i];
        sa_runtime* raw = made[i].get();
        sas_.emplace_hint(sas_.end(), std::make_pair(static_cast<int>(c.dir), c.spi),
                          sa_entry{std::move(made[i]), c.origin});
        spd_changes = imply_policy(*raw, +1) || policy_names(c) || spd_changes;
    }
    for (unsigned w = 0; w < last.size(); ++w) {
        if (last[w] != 0 && !wait_applied({w}, last[w]) && error.empty()) {
            error = "worker did not acknowledge the SA installs within 2 s";
        }
    }
    // As with add-sa: what was queued stays installed (list-sas shows it) and gets its policies.
    std::string hosts_error = publish_hosts();
    std::string spd_error = spd_changes ? rebuild_spd() : std::string();
    return !error.empty() ? error : !hosts_error.empty() ? hosts_error : spd_error;
}

std::string gateway::delete_sas(std::span<const sa_id> which)
{
    std::set<std::pair<int, uint32_t>> keys;
    for (size_t i = 0; i < which.size(); ++i) {
        const auto key = std::make_pair(static_cast<int>(which[i].first), which[i].second);
        if (sas_.count(key) == 0 || !keys.insert(key).second) {
            char buf[80];
            std::snprintf(buf, sizeof(buf), "sas[%zu]: no %s SA 0x%08x%s", i,
                          which[i].first == config::direction::inbound ? "inbound" : "outbound", which[i].second,
                          sas_.count(key) == 0 ? "" : " (listed twice)");
            return buf;
        }
    }
    // As delete_sa: policy first (nothing new is steered to the SAs), then the SADs, then free.
    std::vector<sa_ptr> victims;
    victims.reserve(which.size());
    bool spd_changes = false;
    for (const auto& [dir, spi] : which) {
        auto it = sas_.find({static_cast<int>(dir), spi});
        spd_changes = imply_policy(*it->second.sa, -1) || policy_names(it->second.sa->config) || spd_changes;
        victims.push_back(std::move(it->second.sa));
        sas_.erase(it);
    }
    std::string error = publish_hosts();
    if (spd_changes) {
        if (std::string spd_error = rebuild_spd(); error.empty()) {
            error = spd_error;
        }
    }
    std::vector<uint64_t> last(workers_.size(), 0);
    std::vector<std::vector<update_msg>> runs(workers_.size());
    for (const auto& v : victims) {
        if (v->config.dir == config::direction::inbound) {
            runs[owner_of(v->config.spi)].push_back(
                {update_msg::remove_inbound, 0, sad_key(v->config), nullptr, ++generation_});
        }
    }
    for (unsigned w = 0; w < runs.size(); ++w) {
        const size_t queued = post_bulk(w, runs[w]);
        if (queued > 0) {
            last[w] = runs[w][queued - 1].generation;
        }
        if (queued < runs[w].size()) {
            error = "worker update ring full"; // the SA memory is kept below: never freed under a worker
        }
    }
    for (unsigned w = 0; w < last.size() && error.empty(); ++w) {
        if (last[w] != 0 && !wait_applied({w}, last[w])) {
            error = "workers did not acknowledge the SA removals within 2 s";
        }
    }
    if (!error.empty()) {
        for (auto& v : victims) {
            (void)v.release(); // never free what a worker may still use
        }
        return error + "; SA memory kept";
    }
    return {}; // the deleters wipe every key now that no worker can reach the SAs
}

// NAT rebinding: the peer's address or port changed under an outbound SA. The keys cannot be expanded
// again (the control record keeps none), so rebind_sa copies the runtime with a new outer header; the
// SPD then points at the copy. Workers that still hold the old SPD for a burst or two keep taking
// sequence numbers from the old SA, so the copy starts `seq_gap` later (a gap is harmless to the
// peer's anti-replay window; a reused number would be dropped as a replay). Counters and lifetime
// accounting continue in the copy once every worker moved over.
std::string gateway::update_sa_peer(uint32_t spi, const config::ip_address& destination,
                                    std::optional<uint16_t> udp_port)
{
    constexpr uint64_t seq_gap = 1U << 16;
    auto it = sas_.find({static_cast<int>(config::direction::outbound), spi});
    if (it == sas_.end()) {
        char buf[64];
        std::snprintf(buf, sizeof(buf), "no outbound SA 0x%08x", spi);
        return buf;
    }
    sa_runtime& old = *it->second.sa;
    config::sa_config updated = old.config;
    if (destination.family != 0) {
        updated.destination = destination;
    }
    if (udp_port) {
        if (!updated.udp) {
            return "SA is not UDP-encapsulated: it has no UDP port to update";
        }
        updated.udp->destination_port = *udp_port;
    }
    sa_ptr fresh;
    try {
        fresh = rebind_sa(old, updated);
    } catch (const std::exception& e) {
        return e.what();
    }
    const uint64_t seq = old.seq.load(std::memory_order_acquire);
    if (seq > old.seq_limit() - seq_gap) {
        return "the SA's sequence numbers are nearly exhausted: rekey it instead";
    }
    fresh->seq.store(seq + seq_gap, std::memory_order_release);
    sa_ptr previous = std::move(it->second.sa);
    it->second.sa = std::move(fresh);
    // The implied policy now points at the copy: added before the old one is removed, so a worker
    // never sees the selectors without a policy (host selectors: two bucket replacements in order;
    // prefix selectors: one rte_acl rebuild from sas_).
    bool rebuild = imply_policy(*it->second.sa, +1);
    rebuild = imply_policy(*previous, -1) || rebuild;
    rebuild = rebuild || policy_names(previous->config); // an explicit policy names it by SPI
    const config::sa_config& c = it->second.sa->config;
    if (host_policies::is_host(c.remote)) {
        const host_bucket* b = hosts_.find(make_host_key(host_category::outbound, c.remote));
        const bool stale = b != nullptr && std::any_of(b->candidates.begin(), b->candidates.end(),
                                                       [&](const host_candidate& h) { return h.rule.sa == previous.get(); });
        if (stale) {
            (void)previous.release(); // never free what the policy still names
            return "internal error: the host policy still names the old SA (memory kept)";
        }
    }
    std::string error = rebuild ? rebuild_spd() : std::string();
    const std::string hosts_error = publish_hosts();
    if (!error.empty() || !hosts_error.empty()) {
        (void)previous.release(); // a worker may still use it
        return !error.empty() ? error : hosts_error;
    }
    // No worker can reach `previous` now: carry its counters and consumed lifetime over.
    sa_runtime& now = *it->second.sa;
    now.stats.carry_over(previous->stats);
    now.life_bytes.fetch_add(previous->consumed_bytes(), std::memory_order_relaxed);
    now.life_packets.fetch_add(previous->consumed_packets(), std::memory_order_relaxed);
    now.expired.fetch_or(previous->expired.load(std::memory_order_relaxed), std::memory_order_relaxed);
    return {}; // previous's deleter wipes its keys
}

std::string gateway::delete_sa(config::direction dir, uint32_t spi)
{
    auto it = sas_.find({static_cast<int>(dir), spi});
    if (it == sas_.end()) {
        char buf[64];
        std::snprintf(buf, sizeof(buf), "no %s SA 0x%08x", dir == config::direction::inbound ? "inbound" : "outbound", spi);
        return buf;
    }
    sa_ptr victim = std::move(it->second.sa);
    sas_.erase(it);
    const bool spd_changes = imply_policy(*victim, -1) || policy_names(victim->config);
    std::string err = publish_hosts();
    if (spd_changes) {
        if (std::string spd_error = rebuild_spd(); err.empty()) {
            err = spd_error;
        }
    }
    if (dir == config::direction::inbound) {
        const unsigned owner = owner_of(spi);
        const uint64_t gen = ++generation_;
        if (!post(owner, {update_msg::remove_inbound, 0, sad_key(victim->config), nullptr, gen}) ||
            !wait_applied({owner}, gen)) {
            // Never free what a worker may still use.
            (void)victim.release();
            return "worker did not acknowledge the SA removal; SA memory kept";
        }
    }
    if (!err.empty()) {
        (void)victim.release();
        return err;
    }
    return {}; // victim's deleter wipes the keys now that no worker can reach it
}

std::string gateway::add_policy(const config::policy_config& policy, uint32_t& id)
{
    if (std::string error = check_new_policy(policy); !error.empty()) {
        return error;
    }
    return insert_policy(policy, id);
}

// What add-policy (the control socket) checks: what the config loader checks on the file's policies
// (config/src/loader.cpp), against what the data plane holds now, and a bound (every add recompiles
// the SPD). The file's own policies (start-up, reload) and reload's guards are inserted without it.
std::string gateway::check_new_policy(const config::policy_config& policy) const
{
    if (policies_.size() >= max_explicit_policies) {
        return "the data plane holds " + std::to_string(policies_.size()) +
               " explicit policies, the most it takes; delete some first";
    }
    if (policy.action == config::policy_action::protect) {
        const auto it = sas_.find({static_cast<int>(config::direction::outbound), policy.spi});
        char spi[16];
        std::snprintf(spi, sizeof(spi), "0x%08x", policy.spi);
        if (it == sas_.end()) {
            return std::string("protect policy names SPI ") + spi + ", but no outbound SA has it";
        }
        // The peer checks decrypted packets against the SA's selectors (RFC 4301 §5.2): a policy wider
        // than its SA would send traffic the peer drops.
        const config::sa_config& sa = it->second.sa->config;
        if (!config::prefix_contains(sa.local, policy.local)) {
            return "protect policy local " + config::to_string(policy.local) + " is not inside local selector " +
                   config::to_string(sa.local) + " of SA " + spi + "; narrow the policy or widen the SA's selectors";
        }
        if (!config::prefix_contains(sa.remote, policy.remote)) {
            return "protect policy remote " + config::to_string(policy.remote) + " is not inside remote selector " +
                   config::to_string(sa.remote) + " of SA " + spi + "; narrow the policy or widen the SA's selectors";
        }
    }
    // Another policy for exactly the same traffic with another decision: one of them never applies.
    // (The same decision twice is only redundant: espresso-ike installs a tunnel's trap policy again
    // before it deletes the one it had.)
    for (const auto& p : policies_) {
        if (config::same_traffic(p.policy, policy) && (p.policy.action != policy.action || p.policy.spi != policy.spi)) {
            return "policy " + std::to_string(p.id) + " (" + p.policy.origin + ", " +
                   config::to_string(p.policy.action) +
                   ") matches exactly the same traffic with another action, so one of them would never apply; "
                   "delete it first, or make the selectors differ";
        }
    }
    return {};
}

std::string gateway::insert_policy(const config::policy_config& policy, uint32_t& id)
{
    id = next_policy_id_++;
    policies_.push_back({policy, id});
    std::string err = rebuild_spd();
    if (!err.empty()) {
        // Refused, so not in policies_; but a post that reached some workers before failing left
        // them with it: rebuild without it now (rebuild_spd reposts to every worker after a
        // part-way post), rather than at whatever change comes next.
        policies_.pop_back();
        (void)rebuild_spd();
    }
    return err;
}

std::string gateway::delete_policy(uint32_t id)
{
    auto it = std::find_if(policies_.begin(), policies_.end(), [&](const policy_entry& p) { return p.id == id; });
    if (it == policies_.end()) {
        return "no policy " + std::to_string(id);
    }
    policies_.erase(it);
    return rebuild_spd();
}

std::string gateway::flush()
{
    // One delete_sas for all of them (one SPD and host-table round), not a delete_sa each: with many
    // outbound SAs that recompiled the SPD once per SA. Errors are the reply's, not dropped.
    policies_.clear();
    // The explicit policies' rules go first: they may name SAs (a protect policy) that delete_sas
    // frees, and it rebuilds the SPD only for what the SAs imply themselves.
    std::string error = rebuild_spd();
    std::vector<sa_id> all;
    all.reserve(sas_.size());
    for (const auto& [k, v] : sas_) {
        all.emplace_back(static_cast<config::direction>(k.first), k.second);
    }
    if (!all.empty()) {
        if (std::string sas_error = delete_sas(all); error.empty()) {
            error = sas_error;
        }
    }
    if (std::string spd_error = rebuild_spd(); error.empty()) {
        error = spd_error;
    }
    return error;
}

std::vector<sa_snapshot> gateway::sas() const
{
    std::vector<sa_snapshot> out;
    out.reserve(sas_.size());
    for (const auto& [key, entry] : sas_) {
        out.push_back(snapshot(*entry.sa));
    }
    return out;
}

std::optional<sa_snapshot> gateway::sa(config::direction dir, uint32_t spi) const
{
    const auto it = sas_.find({static_cast<int>(dir), spi});
    if (it == sas_.end()) {
        return std::nullopt;
    }
    return snapshot(*it->second.sa);
}

sa_snapshot gateway::snapshot(const sa_runtime& sa) const
{
    sa_snapshot s;
    s.config = sa.config;
    for (size_t i = 0; i < s.counters.size(); ++i) {
        s.counters[i] = sa.stats.get(static_cast<sa_counter>(i));
    }
    for (size_t i = 0; i < s.drops.size(); ++i) {
        s.drops[i] = sa.stats.drops[i].load(std::memory_order_relaxed);
    }
    s.sequence = sa.outbound() ? sa.seq.load(std::memory_order_relaxed) : sa.replay.highest();
    s.life_bytes = sa.consumed_bytes();
    s.life_packets = sa.consumed_packets();
    s.tfc_pad = sa.tfc_pad_to;
    // The interface whose address is this SA's local tunnel endpoint (transport mode without
    // endpoints: the local selector's address, the gateway's own).
    config::ip_address local = sa.outbound() ? sa.config.source : sa.config.destination;
    if (!local.is_v4() && !local.is_v6()) {
        local = sa.config.local.address;
    }
    for (const auto& p : shared_.ports) {
        if ((local.is_v4() && p.has_v4 && be32_of(local) == p.address_be) ||
            (local.is_v6() && p.has_v6 && std::memcmp(local.bytes.data(), p.address6.data(), 16) == 0)) {
            s.interface = p.name;
        }
    }
    return s;
}

std::vector<policy_snapshot> gateway::policies() const
{
    std::vector<policy_snapshot> out;
    for (const auto& p : policies_) {
        out.push_back({p.id, p.policy, 0, false});
    }
    for (const auto& [key, entry] : sas_) {
        const auto& c = entry.sa->config;
        policy_snapshot s;
        s.config.local = c.local;
        s.config.remote = c.remote;
        s.config.action = config::policy_action::protect;
        s.config.priority = implied_priority;
        s.config.spi = c.spi;
        s.config.owner = c.owner;
        s.implied = true;
        if (c.dir == config::direction::outbound) {
            out.push_back(s);
        }
    }
    return out;
}

std::vector<interface_snapshot> gateway::interfaces() const
{
    std::vector<interface_snapshot> out;
    for (const auto& p : shared_.ports) {
        interface_snapshot s;
        s.name = p.name;
        s.device = p.device;
        s.port = p.port;
        std::memcpy(s.mac.data(), p.mac.addr_bytes, 6);
        if (p.has_v4) {
            s.address.family = 4;
            std::memcpy(s.address.bytes.data(), &p.address_be, 4);
            s.prefix_length = p.prefix_length;
        }
        if (p.has_v6) {
            s.address6.family = 6;
            std::memcpy(s.address6.bytes.data(), p.address6.data(), 16);
            s.prefix_length6 = p.prefix_length6;
            if (!p.has_v4) {
                s.address = s.address6;
                s.prefix_length = s.prefix_length6;
            }
        }
        s.mtu = p.mtu;
        s.tap = p.tap_name;
        rte_eth_link link{};
        if (rte_eth_link_get_nowait(p.port, &link) == 0) {
            s.link_up = link.link_status == RTE_ETH_LINK_UP;
        }
        rte_eth_stats st{};
        if (rte_eth_stats_get(p.port, &st) == 0) {
            s.rx_packets = st.ipackets;
            s.rx_bytes = st.ibytes;
            s.tx_packets = st.opackets;
            s.tx_bytes = st.obytes;
            s.rx_missed = st.imissed;
            s.rx_errors = st.ierrors;
            s.tx_errors = st.oerrors;
        }
        out.push_back(s);
    }
    return out;
}

std::vector<worker_snapshot> gateway::workers() const
{
    std::vector<worker_snapshot> out;
    for (const auto& w : workers_) {
        worker_snapshot s;
        s.lcore = w->lcore;
        s.rx_packets = w->rx_packets.load(std::memory_order_relaxed);
        s.tx_packets = w->tx_packets.load(std::memory_order_relaxed);
        s.to_exception = w->to_exception.load(std::memory_order_relaxed);
        s.fragments = w->fragments.load(std::memory_order_relaxed);
        s.reassembled = w->reassembled.load(std::memory_order_relaxed);
        s.handed_off = w->handed_off.load(std::memory_order_relaxed);
        s.handed_in = w->handed_in.load(std::memory_order_relaxed);
        const uint64_t polls = w->polls.load(std::memory_order_relaxed);
        const uint64_t busy = w->busy_polls.load(std::memory_order_relaxed);
        s.busy_percent = polls == 0 ? 0.0 : 100.0 * static_cast<double>(busy) / static_cast<double>(polls);
        for (size_t i = 0; i < s.drops.size(); ++i) {
            s.drops[i] = w->drops[i].load(std::memory_order_relaxed);
        }
        out.push_back(s);
    }
    // The main lcore's own drops (exception path) are reported as one more row, with the counters of
    // the gateway's own traffic.
    worker_snapshot m;
    m.lcore = rte_get_main_lcore();
    m.main = true;
    for (size_t i = 0; i < m.local.size(); ++i) {
        m.local[i] = local_[i].load(std::memory_order_relaxed);
    }
    for (size_t i = 0; i < m.drops.size(); ++i) {
        m.drops[i] = main_drops_[i].load(std::memory_order_relaxed);
    }
    out.push_back(m);
    return out;
}

void gateway::clear_counters()
{
    for (auto& [key, entry] : sas_) {
        entry.sa->stats.clear();
    }
    for (auto& w : workers_) {
        w->rx_packets = 0;
        w->tx_packets = 0;
        w->to_exception = 0;
        w->fragments = 0;
        w->reassembled = 0;
        w->handed_off = 0;
        w->handed_in = 0;
        w->polls = 0;
        w->busy_polls = 0;
        for (auto& d : w->drops) {
            d = 0;
        }
    }
    for (auto& d : main_drops_) {
        d = 0;
    }
    for (auto& c : local_) {
        c = 0;
    }
    for (const auto& p : shared_.ports) {
        rte_eth_stats_reset(p.port);
    }
}

// ---- management loop ------------------------------------------------------------------------------

void gateway::run(const volatile std::sig_atomic_t& stop, const std::function<void()>& tick,
                  const std::function<void(const gateway_event&)>& event, const std::function<void(unsigned)>& nap)
{
    std::vector<worker_launch> launches;
    launches.reserve(workers_.size());
    for (auto& w : workers_) {
        launches.push_back({w.get(), &shared_});
    }
    running_ = true;
    for (auto& l : launches) {
        if (rte_eal_remote_launch(worker_main, &l, l.worker->lcore) != 0) {
            shared_.stop = true;
            rte_eal_mp_wait_lcore();
            throw std::runtime_error("cannot launch worker on lcore " + std::to_string(l.worker->lcore));
        }
    }
    std::printf("espresso-dp: running with %zu worker(s)\n", workers_.size());
    std::fflush(stdout);
    // However the loop ends (a stop request, or an exception out of tick() or the main lcore's
    // work), the workers stop and are joined before anything they use can be freed.
    struct join_workers {
        gateway& g;
        ~join_workers()
        {
            g.shared_.stop = true;
            rte_eal_mp_wait_lcore();
            g.running_ = false;
        }
    } joined{*this};
    unsigned quiet = 0;
    while (stop == 0) {
        tick();
        const unsigned work = main_exceptions() + main_taps() + main_events(event);
        main_pending_timeouts();
        main_neighbor_maintenance();
        // The management loop needs no line rate: 100 us naps while there is work, 1 ms once it
        // has been quiet for a while (an idle gateway should cost next to nothing).
        quiet = work != 0 ? 0 : quiet + 1;
        const unsigned usec = quiet > 100 ? 1000 : 100;
        if (nap) {
            nap(usec);
        } else {
            usleep(usec);
        }
    }
}

void gateway::transmit_main(uint16_t port_pos, rte_mbuf* m)
{
    m->port = shared_.ports[port_pos].port;
    if (rte_ring_sp_enqueue(shared_.main_tx, m) != 0) {
        main_drops_[static_cast<size_t>(gateway_drop::tx_full)]++;
        rte_pktmbuf_free(m);
    }
}

unsigned gateway::main_exceptions()
{
    rte_mbuf* pkts[64];
    unsigned n = rte_ring_sc_dequeue_burst(shared_.exceptions, reinterpret_cast<void**>(pkts), 64, nullptr);
    for (unsigned i = 0; i < n; ++i) {
        rte_mbuf* m = pkts[i];
        const exception_meta meta = *RTE_MBUF_DYNFIELD(m, shared_.meta_offset, exception_meta*);
        const int16_t pos = shared_.position(m->port);
        switch (meta.what) {
        case exception_meta::arp:
            handle_arp(m);
            break;
        case exception_meta::nd:
            handle_nd(m);
            break;
        case exception_meta::decrypted_to_us:
            decrypted_to_kernel(m);
            break;
        case exception_meta::to_us:
            if (pos >= 0 && shared_.ports[static_cast<size_t>(pos)].has_tap) {
                if (!to_kernel_allowed(m)) {
                    rte_pktmbuf_free(m); // counted
                    break;
                }
                to_tap(shared_.ports[static_cast<size_t>(pos)], m);
                break;
            }
            main_drops_[static_cast<size_t>(gateway_drop::exception_full)]++;
            rte_pktmbuf_free(m);
            break;
        case exception_meta::resolve:
            queue_for_neighbor(m, meta.port, 4, reinterpret_cast<const uint8_t*>(&meta.value));
            break;
        case exception_meta::resolve6: {
            // The worker had no room for a 16-byte next hop in the mbuf's metadata: look it up again.
            uint16_t port = 0;
            ipv6_address nh{};
            const auto* ip = rte_pktmbuf_mtod_offset(m, const uint8_t*, sizeof(rte_ether_hdr));
            if (rte_pktmbuf_data_len(m) < sizeof(rte_ether_hdr) + 40 || !shared_.routes6->lookup(ip + 24, port, nh)) {
                main_drops_[static_cast<size_t>(gateway_drop::no_route)]++;
                rte_pktmbuf_free(m);
                break;
            }
            queue_for_neighbor(m, port, 6, nh.data());
            break;
        }
        case exception_meta::too_big:
            send_icmp4_error(m, 3, 4, static_cast<uint16_t>(meta.value)); // RFC 1191: fragmentation needed
            rte_pktmbuf_free(m);
            break;
        case exception_meta::too_big6:
            send_icmp6_error(m, icmpv6_packet_too_big, 0, meta.value); // RFC 8201, RFC 4443 §3.2
            rte_pktmbuf_free(m);
            break;
        case exception_meta::time_exceeded: {
            const auto* ip = rte_pktmbuf_mtod_offset(m, const uint8_t*, sizeof(rte_ether_hdr));
            if ((ip[0] >> 4) == 6) {
                send_icmp6_error(m, icmpv6_time_exceeded, 0, 0); // RFC 4443 §3.3: hop limit exceeded
            } else {
                send_icmp4_error(m, 11, 0, 0); // RFC 792: time to live exceeded in transit
            }
            rte_pktmbuf_free(m);
            break;
        }
        }
    }
    return n;
}

// A packet (with its Ethernet header) waiting for its next hop's MAC: sent at once when the neighbor
// is known, else queued (at most max_pending_per_hop per next hop, max_pending_hops next hops and
// max_pending_packets in all; the rest dropped and counted) while ARP or a Neighbor Solicitation asks
// for it, at most every half second.
void gateway::queue_for_neighbor(rte_mbuf* m, uint16_t port, uint8_t family, const uint8_t* next_hop)
{
    const int16_t out = shared_.position(port);
    if (out < 0) {
        main_drops_[static_cast<size_t>(gateway_drop::no_route)]++;
        rte_pktmbuf_free(m);
        return;
    }
    rte_ether_addr mac;
    uint32_t ip_be = 0;
    std::memcpy(&ip_be, next_hop, family == 4 ? 4 : 0);
    const bool known = family == 4 ? shared_.neighbors->lookup(port, ip_be, mac) : shared_.neighbors->lookup6(port, next_hop, mac);
    if (known) {
        auto* eth = rte_pktmbuf_mtod(m, rte_ether_hdr*);
        eth->dst_addr = mac;
        eth->src_addr = shared_.ports[static_cast<size_t>(out)].mac;
        transmit_main(static_cast<uint16_t>(out), m);
        return;
    }
    pending_key key{port, family, {}};
    std::memcpy(std::get<2>(key).data(), next_hop, family == 4 ? 4 : 16);
    auto it = pending_.find(key);
    if (pending_packets_ >= max_pending_packets || (it == pending_.end() && pending_.size() >= max_pending_hops)) {
        main_drops_[static_cast<size_t>(gateway_drop::no_neighbor)]++;
        rte_pktmbuf_free(m);
        // The queue is full (a flood towards unresolvable addresses, say): still ask for a next hop
        // that has nothing queued, so that one that answers is learned and its later packets go
        // straight out instead of waiting for the flood to end: always for the gateway of a
        // configured route (at most every half second each), a few a second for any other.
        if (it == pending_.end() && route_gateways_.count({family, std::get<2>(key)}) != 0) {
            uint64_t& last = route_gateway_asked_[key];
            const uint64_t now = rte_get_tsc_cycles();
            if (now - last > rte_get_tsc_hz() / 2) {
                last = now;
                if (family == 4) {
                    send_arp_request(static_cast<uint16_t>(out), ip_be);
                } else {
                    unqueued_asked_[unqueued_next_++ % unqueued_asked_.size()] = {key, now};
                    send_neighbor_solicitation(static_cast<uint16_t>(out), std::get<2>(key));
                }
            }
        } else if (it == pending_.end()) {
            const uint64_t now = rte_get_tsc_cycles();
            if (now - unqueued_window_tsc_ > rte_get_tsc_hz()) {
                unqueued_window_tsc_ = now;
                unqueued_requests_ = 0;
            }
            if (unqueued_requests_ < max_unqueued_requests) {
                ++unqueued_requests_;
                unqueued_asked_[unqueued_next_++ % unqueued_asked_.size()] = {key, now};
                if (family == 4) {
                    send_arp_request(static_cast<uint16_t>(out), ip_be);
                } else {
                    send_neighbor_solicitation(static_cast<uint16_t>(out), std::get<2>(key));
                }
            }
        }
        return;
    }
    if (it == pending_.end()) {
        it = pending_.emplace(key, pending{}).first; // an entry always holds a packet (timeouts rely on it)
    }
    pending& p = it->second;
    const uint64_t now = rte_get_tsc_cycles();
    if (p.packets.empty()) {
        p.first_tsc = now;
    }
    if (p.packets.size() >= max_pending_per_hop) {
        main_drops_[static_cast<size_t>(gateway_drop::no_neighbor)]++;
        rte_pktmbuf_free(m);
    } else {
        p.packets.push_back(m);
        ++pending_packets_;
    }
    if (now - p.requested_tsc > rte_get_tsc_hz() / 2) {
        p.requested_tsc = now;
        ++p.tries;
        if (family == 4) {
            send_arp_request(static_cast<uint16_t>(out), ip_be);
        } else {
            send_neighbor_solicitation(static_cast<uint16_t>(out), std::get<2>(key));
        }
    }
}

// The next hops of the configured routes, which queue_for_neighbor asks for even while its queue is
// full. Called whenever config_.routes changes.
void gateway::note_route_gateways()
{
    route_gateways_.clear();
    route_gateway_asked_.clear();
    for (const auto& r : config_.routes) {
        if (r.via.family == 4 || r.via.family == 6) {
            ipv6_address a{};
            std::memcpy(a.data(), r.via.bytes.data(), r.via.family == 4 ? 4 : 16);
            route_gateways_.emplace(r.via.family, a);
        }
    }
}

// The TAP PMD writes at most tap_mtu bytes of IP per frame, but af_packet delivers datagrams that the
// kernel reassembled (PACKET_FANOUT_FLAG_DEFRAG) whole, up to the ring's frame size, and the workers
// reassemble UDP fragments to learn whether they are ESP-in-UDP (reassembly.h). Those are split
// again here (RFC 791 §2.3) and the kernel behind the TAP reassembles them as it would from the wire.
// DF is cleared first: it forbids fragmenting on the way, and this is the last hop to the destination.
void gateway::to_tap(const port_state& ps, rte_mbuf* m)
{
    const uint32_t len = rte_pktmbuf_data_len(m);
    if (len <= sizeof(rte_ether_hdr) + ps.tap_mtu) {
        if (rte_eth_tx_burst(ps.tap_port, 0, &m, 1) != 1) {
            main_drops_[static_cast<size_t>(gateway_drop::exception_full)]++;
            rte_pktmbuf_free(m);
        }
        return;
    }
    const rte_ether_hdr eth = *rte_pktmbuf_mtod(m, const rte_ether_hdr*);
    rte_pktmbuf_adj(m, sizeof(rte_ether_hdr));
    auto* ip = rte_pktmbuf_mtod(m, uint8_t*);
    if (eth.ether_type == rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV6) && (ip[0] >> 4) == 6) {
        to_tap6(ps, m, eth);
        return;
    }
    if (eth.ether_type != rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4) || (ip[0] >> 4) != 4) {
        main_drops_[static_cast<size_t>(gateway_drop::too_big)]++;
        rte_pktmbuf_free(m);
        return;
    }
    if (const uint16_t flags = load_be16(ip + 6); (flags & 0x4000) != 0) {
        store_be16(ip + 6, static_cast<uint16_t>(flags & ~0x4000));
        ipv4_set_checksum(ip);
    }
    constexpr uint16_t max_fragments = 64; // 16 KiB frames in 1500-byte fragments need 12
    rte_mbuf* frags[max_fragments];
    const int32_t n = rte_ipv4_fragment_copy_nonseg_packet(m, frags, max_fragments, ps.tap_mtu, pool_);
    rte_pktmbuf_free(m);
    if (n <= 0) {
        main_drops_[static_cast<size_t>(gateway_drop::too_big)]++;
        return;
    }
    for (int32_t f = 0; f < n; ++f) {
        ipv4_set_checksum(rte_pktmbuf_mtod(frags[f], uint8_t*)); // the library leaves it to us
        auto* h = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_prepend(frags[f], sizeof(rte_ether_hdr)));
        *h = eth; // the fragment's headroom always has room for it
    }
    const uint16_t sent = rte_eth_tx_burst(ps.tap_port, 0, frags, static_cast<uint16_t>(n));
    if (sent < n) {
        main_drops_[static_cast<size_t>(gateway_drop::exception_full)] += static_cast<uint64_t>(n - sent);
        rte_pktmbuf_free_bulk(frags + sent, static_cast<unsigned>(n - sent));
    }
}

// IPv6 datagrams larger than the TAP's MTU (a jumbo-MTU port, or a datagram the workers reassembled
// because it might have been ESP-in-UDP and was IKE): split into fragments for the kernel, which
// reassembles them and so sees the datagram the peer sent. RFC 8200 §4.5 leaves fragmenting to the
// source; this is the last hop inside the host, not a router on the path. Headers that must stay
// unfragmented (Hop-by-Hop, Routing) would end up in the fragmentable part: such packets are dropped.
void gateway::to_tap6(const port_state& ps, rte_mbuf* m, const rte_ether_hdr& eth)
{
    const auto* ip = rte_pktmbuf_mtod(m, const uint8_t*);
    if (ip[6] == 0 || ip[6] == 43 || ip[6] == 44) {
        main_drops_[static_cast<size_t>(gateway_drop::too_big)]++;
        rte_pktmbuf_free(m);
        return;
    }
    constexpr uint16_t max_fragments = 64;
    rte_mbuf* frags[max_fragments];
    const int32_t n = rte_ipv6_fragment_packet(m, frags, max_fragments, ps.tap_mtu, pool_, indirect_);
    rte_pktmbuf_free(m); // the fragments hold references to its data
    if (n <= 0) {
        main_drops_[static_cast<size_t>(gateway_drop::too_big)]++;
        return;
    }
    // DPDK writes Identification 0 into every Fragment header; give each datagram its own (RFC 8200
    // §4.5: unique among recent fragmented packets with the same addresses).
    const uint32_t id_be = rte_cpu_to_be_32(++tap_fragment_id_);
    for (int32_t f = 0; f < n; ++f) {
        auto* h = rte_pktmbuf_mtod(frags[f], uint8_t*);
        std::memcpy(h + sizeof(rte_ipv6_hdr) + 4, &id_be, 4);
        auto* e = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_prepend(frags[f], sizeof(rte_ether_hdr)));
        *e = eth; // the direct head mbuf of each fragment has its full headroom
    }
    const uint16_t sent = rte_eth_tx_burst(ps.tap_port, 0, frags, static_cast<uint16_t>(n));
    if (sent < n) {
        main_drops_[static_cast<size_t>(gateway_drop::exception_full)] += static_cast<uint64_t>(n - sent);
        rte_pktmbuf_free_bulk(frags + sent, static_cast<unsigned>(n - sent));
    }
}

void gateway::main_pending_timeouts()
{
    const uint64_t now = rte_get_tsc_cycles();
    for (auto it = pending_.begin(); it != pending_.end();) {
        pending& p = it->second;
        if (!p.packets.empty() && now - p.first_tsc > 3 * rte_get_tsc_hz()) {
            main_drops_[static_cast<size_t>(gateway_drop::no_neighbor)] += p.packets.size();
            for (auto* m : p.packets) {
                rte_pktmbuf_free(m);
            }
            pending_packets_ -= p.packets.size();
            it = pending_.erase(it);
            continue;
        }
        if (!p.packets.empty() && now - p.requested_tsc > rte_get_tsc_hz()) {
            p.requested_tsc = now;
            const auto& [port, family, address] = it->first;
            const int16_t out = shared_.position(port);
            if (out >= 0 && family == 4) {
                uint32_t ip_be = 0;
                std::memcpy(&ip_be, address.data(), 4);
                send_arp_request(static_cast<uint16_t>(out), ip_be);
            } else if (out >= 0) {
                send_neighbor_solicitation(static_cast<uint16_t>(out), address);
            }
        }
        ++it;
    }
}

void gateway::resolved(uint16_t port, uint8_t family, const uint8_t* ip, const rte_ether_addr& mac)
{
    pending_key key{port, family, {}};
    std::memcpy(std::get<2>(key).data(), ip, family == 4 ? 4 : 16);
    auto it = pending_.find(key);
    if (it == pending_.end()) {
        return;
    }
    const int16_t pos = shared_.position(port);
    for (auto* m : it->second.packets) {
        auto* eth = rte_pktmbuf_mtod(m, rte_ether_hdr*);
        eth->dst_addr = mac;
        eth->src_addr = shared_.ports[static_cast<size_t>(pos)].mac;
        transmit_main(static_cast<uint16_t>(pos), m);
    }
    pending_packets_ -= it->second.packets.size();
    pending_.erase(it);
}

// Neighbor unreachability detection (routing.h), four times a second: unicast probes for entries in
// use whose reachable time ran out, removal of unanswered and unused ones.
void gateway::main_neighbor_maintenance()
{
    const uint64_t now = rte_get_tsc_cycles();
    const uint64_t hz = rte_get_tsc_hz();
    if (now - neighbor_check_tsc_ < hz / 4) {
        return;
    }
    neighbor_check_tsc_ = now;
    // RFC 4861 §10: REACHABLE_TIME (configurable), RETRANS_TIMER 1 s, MAX_UNICAST_SOLICIT 3.
    const neighbor_table::timers t{config_.dataplane.neighbor_reachable_time * hz, hz, 3};
    std::vector<neighbor_table::probe> probes;
    shared_.neighbors->maintain(now, t, probes);
    for (const auto& p : probes) {
        const int16_t pos = shared_.position(p.port);
        if (pos < 0) {
            continue;
        }
        if (p.family == 4) {
            uint32_t ip_be = 0;
            std::memcpy(&ip_be, p.ip.data(), 4);
            send_arp_request(static_cast<uint16_t>(pos), ip_be, &p.mac);
        } else {
            send_neighbor_solicitation(static_cast<uint16_t>(pos), p.ip, &p.mac);
        }
    }
}

neighbor_summary gateway::neighbors() const
{
    neighbor_summary out;
    const uint64_t now = rte_get_tsc_cycles();
    const double hz = static_cast<double>(rte_get_tsc_hz());
    const uint64_t reachable = uint64_t{config_.dataplane.neighbor_reachable_time} * rte_get_tsc_hz();
    for (const auto& e : shared_.neighbors->entries()) {
        neighbor_snapshot n;
        const int16_t pos = shared_.position(e.port);
        n.interface = pos >= 0 ? shared_.ports[static_cast<size_t>(pos)].name : std::to_string(e.port);
        n.address.family = e.family;
        if (e.family == 4) {
            std::memcpy(n.address.bytes.data(), &e.ip_be, 4);
        } else {
            std::memcpy(n.address.bytes.data(), e.ip6.data(), 16);
        }
        std::memcpy(n.mac.data(), e.mac.addr_bytes, 6);
        n.is_static = e.is_static;
        switch (e.nud) {
        case neighbor_table::state::permanent:
            n.state = "permanent";
            break;
        case neighbor_table::state::probe:
            n.state = "probe";
            break;
        default:
            n.state = now - e.confirmed_tsc >= reachable ? "stale" : "reachable";
        }
        n.age_seconds = e.is_static ? 0 : static_cast<double>(now - e.confirmed_tsc) / hz;
        out.entries.push_back(std::move(n));
    }
    const auto& st = shared_.neighbors->stats();
    out.capacity = shared_.neighbors->capacity();
    out.reachable_time = config_.dataplane.neighbor_reachable_time;
    out.probes_sent = st.probes_sent;
    out.unreachable = st.unreachable;
    out.collected = st.collected;
    out.cleared = st.cleared;
    out.table_full = st.table_full;
    out.evicted = st.evicted;
    out.waited = st.waited;
    return out;
}

unsigned gateway::clear_neighbors(uint8_t family)
{
    return shared_.neighbors->clear_dynamic(family);
}

namespace {

// A link-layer address a neighbor entry may hold: unicast, not zero, not the port's own.
bool learnable_mac(const rte_ether_addr& mac, const rte_ether_addr& own) noexcept
{
    return rte_is_valid_assigned_ether_addr(&mac) && !rte_is_same_ether_addr(&mac, &own);
}

} // namespace

void gateway::handle_arp(rte_mbuf* m)
{
    const int16_t pos = shared_.position(m->port);
    if (pos < 0 || rte_pktmbuf_data_len(m) < sizeof(rte_ether_hdr) + sizeof(rte_arp_hdr)) {
        main_drops_[static_cast<size_t>(gateway_drop::malformed)]++;
        rte_pktmbuf_free(m);
        return;
    }
    port_state& ps = shared_.ports[static_cast<size_t>(pos)];
    auto* eth = rte_pktmbuf_mtod(m, rte_ether_hdr*);
    auto* arp = reinterpret_cast<rte_arp_hdr*>(eth + 1);
    if (arp->arp_hardware != rte_cpu_to_be_16(RTE_ARP_HRD_ETHER) ||
        arp->arp_protocol != rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4) || arp->arp_hlen != 6 || arp->arp_plen != 4) {
        main_drops_[static_cast<size_t>(gateway_drop::malformed)]++;
        rte_pktmbuf_free(m);
        return;
    }
    const uint32_t sip = arp->arp_data.arp_sip;
    const uint32_t tip = arp->arp_data.arp_tip;
    const uint32_t mask = ps.prefix_length == 0 ? 0 : rte_cpu_to_be_32(~uint32_t{0} << (32 - ps.prefix_length));
    const rte_ether_addr sha = arp->arp_data.arp_sha;
    // RFC 826: learn the sender if it is on our subnet (and not a spoof of our own address).
    if (!ps.has_v4) {
        main_drops_[static_cast<size_t>(gateway_drop::not_ip)]++; // ARP on an IPv6-only link
        rte_pktmbuf_free(m);
        return;
    }
    // RFC 826 "merge": an existing entry is updated by any ARP from that sender; a new one is made
    // only from ARP addressed to us or answering our own request. (Learning every sender on the
    // link would let one host fill the table with spoofed addresses.)
    // Only a unicast host of the subnet is learned: not our own or the subnet's broadcast address
    // (RFC 3021 /31s have none), not a multicast, zero or our own MAC (traffic for the neighbor would
    // flood the link or loop back).
    pending_key waiting{ps.port, 4, {}};
    std::memcpy(std::get<2>(waiting).data(), &sip, 4);
    const bool host_of_subnet = sip != 0 && sip != ps.address_be && (sip & mask) == (ps.address_be & mask) &&
                                (ps.prefix_length >= 31 || (sip | mask) != ~uint32_t{0});
    if (host_of_subnet && learnable_mac(sha, ps.mac) &&
        (tip == ps.address_be || pending_.count(waiting) != 0 || shared_.neighbors->known(ps.port, sip))) {
        // Queue the packets that waited for this neighbor before publishing it, so workers cannot
        // send newer packets ahead of them (ESP sequence numbers were assigned in arrival order).
        resolved(ps.port, 4, reinterpret_cast<const uint8_t*>(&sip), sha);
        shared_.neighbors->set(ps.port, sip, sha, false);
    }
    if (arp->arp_opcode == rte_cpu_to_be_16(RTE_ARP_OP_REQUEST) && tip == ps.address_be) {
        arp->arp_opcode = rte_cpu_to_be_16(RTE_ARP_OP_REPLY);
        arp->arp_data.arp_tha = sha;
        arp->arp_data.arp_tip = sip;
        arp->arp_data.arp_sha = ps.mac;
        arp->arp_data.arp_sip = ps.address_be;
        eth->dst_addr = sha;
        eth->src_addr = ps.mac;
        transmit_main(static_cast<uint16_t>(pos), m);
        return;
    }
    if (arp->arp_opcode == rte_cpu_to_be_16(RTE_ARP_OP_REPLY) && ps.has_tap) {
        // The kernel behind the TAP resolves its own next hops (for IKE, ICMP replies): give it the
        // replies too.
        if (rte_eth_tx_burst(ps.tap_port, 0, &m, 1) == 1) {
            return;
        }
        main_drops_[static_cast<size_t>(gateway_drop::exception_full)]++;
    }
    // Consumed: a reply was learned from above; a request for another host's address is ordinary
    // traffic on a shared link, not a drop.
    rte_pktmbuf_free(m);
}

void gateway::send_arp_request(uint16_t port_pos, uint32_t target_be, const rte_ether_addr* unicast)
{
    const port_state& ps = shared_.ports[port_pos];
    rte_mbuf* m = rte_pktmbuf_alloc(pool_);
    if (m == nullptr) {
        main_drops_[static_cast<size_t>(gateway_drop::no_buffer)]++;
        return;
    }
    auto* eth = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_append(m, sizeof(rte_ether_hdr) + sizeof(rte_arp_hdr)));
    if (unicast != nullptr) {
        eth->dst_addr = *unicast;
    } else {
        std::memset(&eth->dst_addr, 0xff, sizeof(eth->dst_addr));
    }
    eth->src_addr = ps.mac;
    eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP);
    auto* arp = reinterpret_cast<rte_arp_hdr*>(eth + 1);
    arp->arp_hardware = rte_cpu_to_be_16(RTE_ARP_HRD_ETHER);
    arp->arp_protocol = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    arp->arp_hlen = 6;
    arp->arp_plen = 4;
    arp->arp_opcode = rte_cpu_to_be_16(RTE_ARP_OP_REQUEST);
    arp->arp_data.arp_sha = ps.mac;
    arp->arp_data.arp_sip = ps.address_be;
    std::memset(&arp->arp_data.arp_tha, 0, sizeof(arp->arp_data.arp_tha));
    arp->arp_data.arp_tip = target_be;
    transmit_main(port_pos, m);
}

// RFC 4861 for the gateway's addresses (the global one and the EUI-64 link-local one): Neighbor
// Solicitations for them are answered here, Neighbor Advertisements complete the data plane's own
// resolutions and are handed to the kernel behind the TAP, which resolves the next hops of its own
// replies (IKE, ICMPv6) with its own Neighbor Solicitations. `m` starts with its Ethernet header.
void gateway::handle_nd(rte_mbuf* m)
{
    const int16_t pos = shared_.position(m->port);
    const uint32_t len = rte_pktmbuf_data_len(m);
    if (pos < 0 || len < sizeof(rte_ether_hdr) + 40) {
        main_drops_[static_cast<size_t>(gateway_drop::malformed)]++;
        rte_pktmbuf_free(m);
        return;
    }
    port_state& ps = shared_.ports[static_cast<size_t>(pos)];
    const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
    const auto* ip = reinterpret_cast<const uint8_t*>(eth + 1);
    nd_message nd;
    if (parse_nd(ip, len - static_cast<uint32_t>(sizeof(rte_ether_hdr)), nd) != nd_error::none) {
        main_drops_[static_cast<size_t>(gateway_drop::nd_invalid)]++;
        rte_pktmbuf_free(m);
        return;
    }
    const bool target_ours =
        (ps.has_v6 && nd.target == ps.address6) || nd.target == ps.link_local6;
    rte_ether_addr lladdr;
    std::memcpy(lladdr.addr_bytes, nd.link_address.data(), 6);
    if (nd.type == icmpv6_neighbor_solicitation) {
        if (!target_ours) {
            main_drops_[static_cast<size_t>(gateway_drop::nd_not_ours)]++;
            rte_pktmbuf_free(m);
            return;
        }
        const bool dad = is_unspecified6(nd.source.data());
        // RFC 4861 §7.2.3: a solicitation with the sender's link-layer address creates or updates
        // its entry. Packets that waited for it leave first (their ESP sequence numbers are older).
        const bool source_ours = (ps.has_v6 && nd.source == ps.address6) || nd.source == ps.link_local6;
        if (!dad && nd.has_link_address && !source_ours && learnable_mac(lladdr, ps.mac)) {
            resolved(ps.port, 6, nd.source.data(), lladdr);
            shared_.neighbors->set6(ps.port, nd.source.data(), lladdr, false);
        }
        rte_mbuf* r = rte_pktmbuf_alloc(pool_);
        if (r == nullptr) {
            main_drops_[static_cast<size_t>(gateway_drop::no_buffer)]++;
            rte_pktmbuf_free(m);
            return;
        }
        auto* reth = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_append(r, sizeof(rte_ether_hdr) + nd_message_bytes));
        // §7.2.4: to the solicitation's source; to all-nodes, unsolicited, when it came from :: (DAD).
        static constexpr uint8_t all_nodes[16] = {0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        const uint8_t* dst = dad ? all_nodes : nd.source.data();
        if (dad) {
            const auto mm = multicast_mac(all_nodes);
            std::memcpy(reth->dst_addr.addr_bytes, mm.data(), 6);
        } else {
            reth->dst_addr = nd.has_link_address ? lladdr : eth->src_addr;
        }
        reth->src_addr = ps.mac;
        reth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV6);
        std::array<uint8_t, 6> mac;
        std::memcpy(mac.data(), ps.mac.addr_bytes, 6);
        build_neighbor_advertisement(reinterpret_cast<uint8_t*>(reth + 1), nd.target.data(), dst, nd.target.data(),
                                     mac, !dad, true);
        transmit_main(static_cast<uint16_t>(pos), r);
        rte_pktmbuf_free(m);
        return;
    }
    // Neighbor Advertisement. §7.2.5: it updates an entry that exists (or a resolution in progress);
    // without the Override flag a known, different address is kept. Advertisements for our own
    // addresses (another node claiming them) are never learned.
    if (!target_ours && nd.has_link_address && learnable_mac(lladdr, ps.mac)) {
        pending_key key{ps.port, 6, nd.target};
        rte_ether_addr known;
        // Not lookup6: the main lcore's look-up must not mark the entry used (an NA flood for
        // spoofed entries would keep them from eviction).
        const bool have = shared_.neighbors->known6(ps.port, nd.target.data(), known);
        // Or asked for while the queue was full, within the last 3 s (the answer's time).
        const uint64_t now = rte_get_tsc_cycles();
        const bool waiting = pending_.count(key) != 0 ||
                             std::any_of(unqueued_asked_.begin(), unqueued_asked_.end(), [&](const auto& a) {
                                 return a.first == key && now - a.second < 3 * rte_get_tsc_hz();
                             });
        if (waiting || (have && (nd.override_flag || rte_is_same_ether_addr(&known, &lladdr)))) {
            resolved(ps.port, 6, nd.target.data(), lladdr);
            shared_.neighbors->set6(ps.port, nd.target.data(), lladdr, false);
        }
    } else if (!target_ours && nd.solicited && !nd.has_link_address) {
        // The answer to a unicast NUD probe may omit the Target Link-Layer Address (§7.2.4; Linux
        // does): a solicited advertisement confirms the entry with the address it has (§7.2.5).
        rte_ether_addr known;
        if (shared_.neighbors->known6(ps.port, nd.target.data(), known) &&
            !shared_.neighbors->is_static6(ps.port, nd.target.data())) {
            shared_.neighbors->set6(ps.port, nd.target.data(), known, false);
        }
    }
    if (ps.has_tap && rte_eth_tx_burst(ps.tap_port, 0, &m, 1) == 1) {
        return;
    }
    main_drops_[static_cast<size_t>(gateway_drop::exception_full)]++;
    rte_pktmbuf_free(m);
}

void gateway::send_neighbor_solicitation(uint16_t port_pos, const ipv6_address& target, const rte_ether_addr* unicast)
{
    const port_state& ps = shared_.ports[port_pos];
    rte_mbuf* m = rte_pktmbuf_alloc(pool_);
    if (m == nullptr) {
        main_drops_[static_cast<size_t>(gateway_drop::no_buffer)]++;
        return;
    }
    auto* eth = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_append(m, sizeof(rte_ether_hdr) + nd_message_bytes));
    if (unicast != nullptr) {
        eth->dst_addr = *unicast;
    } else {
        const auto group = solicited_node(target.data());
        const auto mm = multicast_mac(group.data());
        std::memcpy(eth->dst_addr.addr_bytes, mm.data(), 6);
    }
    eth->src_addr = ps.mac;
    eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV6);
    std::array<uint8_t, 6> mac;
    std::memcpy(mac.data(), ps.mac.addr_bytes, 6);
    // RFC 4861 §7.2.2: the source is one of the interface's addresses; a link-local target is asked
    // from the link-local address.
    const uint8_t* source = ps.has_v6 && !is_link_local6(target.data()) ? ps.address6.data() : ps.link_local6.data();
    build_neighbor_solicitation(reinterpret_cast<uint8_t*>(eth + 1), source, target.data(), mac, unicast != nullptr);
    transmit_main(port_pos, m);
}

// RFC 4443 §2.4 (f) and RFC 1812 §4.3.2.8: ICMP errors are rate-limited (100 a second, bursts of 50,
// for both families together, like Linux's default icmp_ratelimit of one per 10 ms per host), in two
// buckets: "fragmentation needed" / Packet Too Big, which Path MTU discovery through the tunnels needs,
// and every other error (a stream of TTL-1 packets used up the one bucket there was, and sources lost
// the MTU signal: black holes).
bool gateway::icmp_allowed(bool too_big)
{
    constexpr double rate = 100;
    constexpr double burst = 50;
    icmp_bucket& b = too_big ? icmp_too_big_ : icmp_other_;
    const uint64_t now = rte_get_tsc_cycles();
    if (b.refill_tsc == 0) {
        b.tokens = burst;
    } else {
        b.tokens = std::min(burst, b.tokens + static_cast<double>(now - b.refill_tsc) * rate /
                                                  static_cast<double>(rte_get_tsc_hz()));
    }
    b.refill_tsc = now;
    if (b.tokens < 1) {
        main_drops_[static_cast<size_t>(gateway_drop::icmp_rate_limited)]++;
        return false;
    }
    b.tokens -= 1;
    return true;
}

// RFC 792 / RFC 1191 / RFC 1812 §4.3: an ICMP error about `orig` (with its Ethernet header) to its
// source, from the address of the interface it came in on. Never about an ICMP error, a non-first
// fragment, or a packet from a multicast/broadcast/unspecified source.
void gateway::send_icmp4_error(rte_mbuf* orig, uint8_t type, uint8_t code, uint16_t mtu)
{
    const int16_t in_pos = shared_.position(orig->port);
    if (in_pos < 0 || rte_pktmbuf_data_len(orig) < sizeof(rte_ether_hdr) + 20) {
        return;
    }
    const auto* oip = rte_pktmbuf_mtod_offset(orig, const uint8_t*, sizeof(rte_ether_hdr));
    const uint32_t ihl = (oip[0] & 0x0fU) * 4;
    const uint32_t avail = rte_pktmbuf_data_len(orig) - static_cast<uint32_t>(sizeof(rte_ether_hdr));
    if (ihl < 20 || ihl > avail || (load_be16(oip + 6) & 0x1fff) != 0) {
        return;
    }
    if (oip[9] == 1 && avail >= ihl + 1) {
        const uint8_t t = oip[ihl];
        if (t != 0 && t != 8 && t != 13 && t != 14) {
            return; // not about an ICMP error (only echo and timestamp are queries here)
        }
    }
    if (oip[12] == 0 || oip[12] >= 224) {
        return; // 0.0.0.0/8, multicast, reserved: no one to tell
    }
    if (oip[16] >= 224) {
        return; // RFC 1812 §4.3.2.7: not about a packet to a multicast or broadcast address
    }
    // RFC 1812 §4.3.2.4: from an address of the interface the packet came in on, or another one of
    // the router's (a decrypted packet that came in over an IPv6-only link).
    const port_state* in = &shared_.ports[static_cast<size_t>(in_pos)];
    for (size_t i = 0; !in->has_v4 && i < shared_.ports.size(); ++i) {
        in = &shared_.ports[i];
    }
    if (!in->has_v4) {
        main_drops_[static_cast<size_t>(gateway_drop::no_source_address)]++;
        return;
    }
    if (!icmp_allowed(type == 3 && code == 4)) {
        return;
    }
    const uint32_t quote = std::min<uint32_t>(ihl + 8, avail);
    uint32_t src_be = 0;
    std::memcpy(&src_be, oip + 12, 4);
    uint16_t out_port = 0;
    uint32_t nh = 0;
    // An error that goes back through a tunnel is routed by its outer header (protect_from_kernel):
    // the protected source's subnet needs no route of its own.
    const bool tunnelled = came_through_tunnel(oip, avail);
    if (!tunnelled && !shared_.routes->lookup(src_be, out_port, nh)) {
        main_drops_[static_cast<size_t>(gateway_drop::no_route)]++;
        return;
    }
    rte_mbuf* m = rte_pktmbuf_alloc(pool_);
    if (m == nullptr) {
        main_drops_[static_cast<size_t>(gateway_drop::no_buffer)]++;
        return;
    }
    const uint32_t len = 20 + 8 + quote;
    auto* eth = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_append(m, static_cast<uint16_t>(sizeof(rte_ether_hdr) + len)));
    eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    auto* ip = reinterpret_cast<uint8_t*>(eth + 1);
    std::memset(ip, 0, 28);
    ip[0] = 0x45;
    store_be16(ip + 2, static_cast<uint16_t>(len));
    ip[8] = 64;
    ip[9] = 1; // ICMP
    std::memcpy(ip + 12, &in->address_be, 4);
    std::memcpy(ip + 16, &src_be, 4);
    ipv4_set_checksum(ip);
    uint8_t* icmp = ip + 20;
    icmp[0] = type;
    icmp[1] = code;
    store_be16(icmp + 6, mtu); // RFC 1191: next-hop MTU (0 for other errors)
    std::memcpy(icmp + 8, oip, quote);
    uint16_t ck = rte_raw_cksum(icmp, 8 + quote);
    ck = static_cast<uint16_t>(~ck);
    std::memcpy(icmp + 2, &ck, 2);
    if (tunnelled) {
        // Try the gateway's addresses as the error's source (no checksum of ICMPv4 covers it).
        send_error_protected(m, static_cast<uint16_t>(in_pos), 4, [&](const uint8_t* source) {
            std::memcpy(ip + 12, source, 4);
            ipv4_set_checksum(ip);
        });
        return;
    }
    queue_for_neighbor(m, out_port, 4, reinterpret_cast<const uint8_t*>(&nh));
}

// Did `ip` (a packet the gateway could not forward, `avail` bytes of it) arrive through a tunnel, so
// that an ICMP error quoting it carries what was protected? Its selectors match an inbound protect
// policy (cleartext that matches one is dropped as `unprotected` before it gets this far).
bool gateway::came_through_tunnel(const uint8_t* ip, uint32_t avail, bool to_us)
{
    ip_view v;
    // A quote in an ICMP error is cut short (576 / 1280 bytes in all): its header and ports suffice.
    const drop_reason r = parse_ip(ip, avail, v);
    const bool cut = r == drop_reason::truncated && v.version != 0 && avail >= (v.version == 4 ? 20U : 40U) &&
                     v.header <= avail;
    if (r != drop_reason::none && !cut) {
        return true; // not parsed, not told in clear
    }
    const local_selectors sel = selectors_of(ip, std::min(v.total, avail), v);
    if (to_us && implicit_bypass(sel, sel.destination_port, ike_ports_)) {
        return false; // IKE to our ports, an ICMP error, ND: let in clear whatever the SPD says
    }
    const spd_rule* out = nullptr;
    const spd_rule* in_match = nullptr;
    classify_local(spd_.get(), *main_hosts_, sel, inbound_scope::every_packet, out, in_match);
    return in_match != nullptr &&
           (in_match->action == config::policy_action::protect || in_match->action == config::policy_action::trap);
}

// An ICMP error (with its Ethernet header) about a packet that came through a tunnel must not leave
// in the clear with its quote of that packet (RFC 4301 §6.2: what was protected stays protected;
// ICMP errors otherwise bypass the SPD, implicit_bypass). With each of the gateway's addresses of
// `family` as its source in turn (set_source rewrites the packet and its checksums), the first that
// an outbound protect policy with an SA covers sends it through that SA, so it goes back the way the
// packet came (a peer checks it against that SA's selectors, RFC 4301 §5.2, which the gateway's own
// address on the protected side matches). None: dropped, counted as `unprotected`.
template <typename SetSource>
void gateway::send_error_protected(rte_mbuf* m, uint16_t in_pos, uint8_t family, SetSource set_source)
{
    auto* ip = rte_pktmbuf_mtod_offset(m, uint8_t*, sizeof(rte_ether_hdr));
    const uint32_t len = rte_pktmbuf_data_len(m) - static_cast<uint32_t>(sizeof(rte_ether_hdr));
    for (const port_state& ps : shared_.ports) {
        if (family == 4 ? !ps.has_v4 : !ps.has_v6) {
            continue;
        }
        set_source(family == 4 ? reinterpret_cast<const uint8_t*>(&ps.address_be) : ps.address6.data());
        ip_view v;
        if (parse_ip(ip, len, v) != drop_reason::none) {
            break;
        }
        const local_selectors sel = selectors_of(ip, v.total, v);
        const spd_rule* rule = nullptr;
        const spd_rule* in_match = nullptr;
        classify_local(spd_.get(), *main_hosts_, sel, inbound_scope::without_outbound, rule, in_match);
        if (rule != nullptr && rule->action == config::policy_action::protect && rule->sa != nullptr) {
            rte_pktmbuf_adj(m, sizeof(rte_ether_hdr));
            protect_from_kernel(in_pos, *rule->sa, m);
            return;
        }
    }
    main_drops_[static_cast<size_t>(gateway_drop::unprotected)]++;
    rte_pktmbuf_free(m);
}

// RFC 4443: an ICMPv6 error about `orig` (with its Ethernet header) to its source, from the global
// address of the interface it came in on, quoting as much of it as fits in 1280 bytes.
void gateway::send_icmp6_error(rte_mbuf* orig, uint8_t type, uint8_t code, uint32_t parameter)
{
    const int16_t in_pos = shared_.position(orig->port);
    if (in_pos < 0 || rte_pktmbuf_data_len(orig) < sizeof(rte_ether_hdr) + 40) {
        return;
    }
    const auto* oip = rte_pktmbuf_mtod_offset(orig, const uint8_t*, sizeof(rte_ether_hdr));
    const uint32_t avail = rte_pktmbuf_data_len(orig) - static_cast<uint32_t>(sizeof(rte_ether_hdr));
    const uint32_t olen = std::min<uint32_t>(avail, 40U + load_be16(oip + 4));
    if (!may_send_icmpv6_error(oip, olen, type)) {
        return;
    }
    // RFC 4443 §2.2: from an address of the node, preferably of the interface the packet came in
    // on (a decrypted packet that came in over an IPv4-only link: another interface's).
    const port_state* in = &shared_.ports[static_cast<size_t>(in_pos)];
    for (size_t i = 0; !in->has_v6 && i < shared_.ports.size(); ++i) {
        in = &shared_.ports[i];
    }
    if (!in->has_v6) {
        main_drops_[static_cast<size_t>(gateway_drop::no_source_address)]++;
        return;
    }
    if (!icmp_allowed(type == 2)) { // ICMPv6 Packet Too Big
        return;
    }
    uint16_t out_port = 0;
    ipv6_address nh{};
    const bool tunnelled = came_through_tunnel(oip, olen); // routed by its outer header then
    if (!tunnelled && !shared_.routes6->lookup(oip + 8, out_port, nh)) {
        main_drops_[static_cast<size_t>(gateway_drop::no_route)]++;
        return;
    }
    rte_mbuf* m = rte_pktmbuf_alloc(pool_);
    if (m == nullptr) {
        main_drops_[static_cast<size_t>(gateway_drop::no_buffer)]++;
        return;
    }
    // Through a tunnel the error must still fit the minimum IPv6 MTU once encapsulated: a shorter
    // quote (RFC 4443 §2.4 (c) asks for as much as fits, not for all 1232 bytes).
    const uint32_t quoted = tunnelled ? std::min<uint32_t>(olen, 1280 - 48 - max_esp_overhead) : olen;
    uint8_t buf[icmpv6_error_max_bytes];
    const uint32_t len = build_icmpv6_error(buf, in->address6.data(), type, code, parameter, oip, quoted);
    auto* eth = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_append(m, static_cast<uint16_t>(sizeof(rte_ether_hdr) + len)));
    if (eth == nullptr) {
        rte_pktmbuf_free(m);
        return;
    }
    eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV6);
    std::memcpy(eth + 1, buf, len);
    if (tunnelled) {
        // The ICMPv6 checksum covers the source address: the error is built again for each one.
        send_error_protected(m, static_cast<uint16_t>(in_pos), 6, [&](const uint8_t* source) {
            build_icmpv6_error(reinterpret_cast<uint8_t*>(eth + 1), source, type, code, parameter, oip, quoted);
        });
        return;
    }
    queue_for_neighbor(m, out_port, 6, nh.data());
}

// What the kernel behind a TAP may send on the wire: everything but router discovery (it is no
// router advertiser and must not solicit routers for the gateway) and redirects. Its Neighbor
// Solicitations (for its own replies), Advertisements and MLD reports (solicited-node groups, which
// snooping switches need for our Neighbor Solicitations to reach us) pass.
bool gateway::from_tap_allowed(const rte_mbuf* m) const
{
    const uint32_t len = rte_pktmbuf_data_len(m);
    if (len < sizeof(rte_ether_hdr) + 41) {
        return true;
    }
    const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
    if (eth->ether_type != rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV6)) {
        return true;
    }
    const auto* ip = reinterpret_cast<const uint8_t*>(eth + 1);
    if (ip[6] != proto_icmpv6) {
        return true;
    }
    const uint8_t type = ip[40];
    return type != icmpv6_router_solicitation && type != icmpv6_router_advertisement && type != icmpv6_redirect;
}

unsigned gateway::main_taps()
{
    unsigned total = 0;
    for (size_t i = 0; i < shared_.ports.size(); ++i) {
        const port_state& ps = shared_.ports[i];
        if (!ps.has_tap) {
            continue;
        }
        rte_mbuf* pkts[32];
        uint16_t n = rte_eth_rx_burst(ps.tap_port, 0, pkts, 32);
        total += n;
        if (n == 0) {
            continue;
        }
        for (uint16_t k = 0; k < n; ++k) {
            if (!from_tap_allowed(pkts[k])) {
                main_drops_[static_cast<size_t>(gateway_drop::tap_filtered)]++;
                rte_pktmbuf_free(pkts[k]);
                continue;
            }
            from_kernel(i, pkts[k]);
        }
    }
    drain_main_core();
    return total;
}

// An inbound tunnel SA whose local selector covers a gateway address may carry traffic for the
// gateway itself (RFC 4301 host-to-host with tunnel mode); the worker then checks each decrypted
// packet's destination. Transport-mode SAs always carry the gateway's own traffic.
void gateway::mark_local_delivery(sa_runtime& sa) const
{
    const config::sa_config& c = sa.config;
    if (c.dir != config::direction::inbound || c.mode != config::ipsec_mode::tunnel) {
        return;
    }
    // Addresses never forwarded (worker.cpp: the cleartext martian check): an SA whose selectors
    // reach any of them has its decrypted packets checked too.
    static const std::array<config::ip_prefix, 7> never_forwarded = [] {
        std::array<config::ip_prefix, 7> p;
        const char* text[] = {"0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/3", "::/128", "::1/128", "ff00::/8", "fe80::/10"};
        for (size_t i = 0; i < p.size(); ++i) {
            p[i] = *config::parse_prefix(text[i]);
        }
        return p;
    }();
    for (const auto& bad : never_forwarded) {
        if (config::prefixes_overlap(c.local, bad) || config::prefixes_overlap(c.remote, bad)) {
            sa.flags |= sa_wide_inner;
            break;
        }
    }
    config::ip_address a;
    for (const auto& [addr, port] : shared_.local_addresses) {
        a.family = 4;
        std::memcpy(a.bytes.data(), &addr, 4);
        if (config::prefix_contains(c.local, a)) {
            sa.flags |= sa_local_inner;
            return;
        }
    }
    for (const auto& [addr, port] : shared_.local_addresses6) {
        a.family = 6;
        std::memcpy(a.bytes.data(), addr.data(), 16);
        if (config::prefix_contains(c.local, a)) {
            sa.flags |= sa_local_inner;
            return;
        }
    }
}

// RFC 4303 §2.7 leaves the amount of TFC padding to the sender. Padding never makes a packet longer
// than the smallest port MTU allows once encapsulated (Linux clamps its xfrm `tfcpad` to the path MTU
// the same way): a packet padded to tfc_pad_to then fits any port, and the MTU checks
// (worker fit_for_encapsulation, protect_from_kernel) need not count TFC padding. A packet longer
// than tfc_pad_to gets none and is checked as usual. (update_sa_peer needs no call: rebind_sa keeps
// the outer family and copies the limited value.)
void gateway::limit_tfc_padding(sa_runtime& sa) const
{
    const config::sa_config& c = sa.config;
    if (c.dir != config::direction::outbound || c.mode != config::ipsec_mode::tunnel || c.tfc_pad_to == 0) {
        return;
    }
    // The ports are fixed before any SA is installed (interface changes need a restart); a packet
    // routed to no port is dropped (no_route) whatever its length.
    const uint32_t min_mtu = shared_.min_mtu(UINT32_MAX);
    const uint32_t overhead = esp_overhead(sa, (sa.flags & sa_outer_v6) != 0);
    const uint32_t limit = min_mtu > overhead ? min_mtu - overhead : 0;
    sa.tfc_pad_to = static_cast<uint16_t>(std::min<uint32_t>(c.tfc_pad_to, limit));
    if (sa.tfc_pad_to != c.tfc_pad_to) {
        std::fprintf(stderr,
                     "espresso-dp: SA 0x%08x: tfc-pad %u lowered to %u (smallest interface MTU %u less %u bytes "
                     "of encapsulation)\n",
                     c.spi, c.tfc_pad_to, sa.tfc_pad_to, min_mtu, overhead);
    }
}

// A frame the kernel sent through the TAP of `port_pos`: the outbound SPD decides, as for forwarded
// traffic (RFC 4301 §5.1), after the implicit bypass. Bypass and no policy: the kernel's own frame
// leaves as it is (the kernel resolved its next hop). Protect: encrypted here on the main lcore (this
// is the slow path; the workers' burst loop is untouched) and routed by the data plane's FIB.
void gateway::from_kernel(size_t port_pos, rte_mbuf* m)
{
    const uint16_t pos = static_cast<uint16_t>(port_pos);
    const uint32_t len = rte_pktmbuf_data_len(m);
    const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
    const uint16_t type = len >= sizeof(rte_ether_hdr) ? rte_be_to_cpu_16(eth->ether_type) : 0;
    if (type != RTE_ETHER_TYPE_IPV4 && type != RTE_ETHER_TYPE_IPV6) {
        transmit_main(pos, m); // ARP and the like: not IP, not subject to the SPD
        return;
    }
    const auto* ip = reinterpret_cast<const uint8_t*>(eth + 1);
    const uint32_t avail = len - static_cast<uint32_t>(sizeof(rte_ether_hdr));
    ip_view v;
    if (m->nb_segs > 1 || parse_ip(ip, avail, v) != drop_reason::none ||
        v.version != (type == RTE_ETHER_TYPE_IPV4 ? 4 : 6)) {
        main_drops_[static_cast<size_t>(gateway_drop::malformed)]++; // never sent unchecked
        rte_pktmbuf_free(m);
        return;
    }
    const local_selectors sel = selectors_of(ip, v.total, v);
    // An ICMP error the kernel sends about a packet that reached it through a tunnel (decrypted_to_us)
    // quotes what was protected: it must go back through a tunnel like any packet (RFC 4301 §6.2),
    // not bypass in the clear; no outbound protect policy with an SA for it: dropped (`unprotected`).
    const bool about_tunnelled = icmp_error(sel) && sel.icmp_offset + 8 < v.total &&
                                 came_through_tunnel(ip + sel.icmp_offset + 8, v.total - sel.icmp_offset - 8, true);
    if (!about_tunnelled && implicit_bypass(sel, sel.source_port, ike_ports_)) {
        local_[static_cast<size_t>(local_counter::out_implicit_bypass)]++;
        transmit_main(pos, m);
        return;
    }
    // Both SPD levels (rte_acl and the host-selector table), as the workers classify.
    const spd_rule* rule = nullptr;
    const spd_rule* in_match = nullptr;
    classify_local(spd_.get(), *main_hosts_, sel, inbound_scope::without_outbound, rule, in_match);
    if (about_tunnelled && (rule == nullptr || rule->action != config::policy_action::protect || rule->sa == nullptr)) {
        main_drops_[static_cast<size_t>(gateway_drop::unprotected)]++;
        rte_pktmbuf_free(m);
        return;
    }
    if (rule == nullptr || rule->action == config::policy_action::bypass) {
        // No outbound policy: as for transit, cleartext the peer's inbound check would refuse (an
        // inbound protect policy covers it) is not sent (apply_policies in worker.cpp).
        if (rule == nullptr && in_match != nullptr) {
            const spd_rule& in = *in_match;
            if (in.action == config::policy_action::discard) {
                main_drops_[static_cast<size_t>(gateway_drop::spd_discard)]++;
                rte_pktmbuf_free(m);
                return;
            }
            if (in.action == config::policy_action::protect || in.action == config::policy_action::trap) {
                main_drops_[static_cast<size_t>(gateway_drop::unprotected)]++;
                rte_pktmbuf_free(m);
                return;
            }
        }
        local_[static_cast<size_t>(local_counter::out_bypass)]++;
        transmit_main(pos, m);
        return;
    }
    if (rule->action == config::policy_action::discard) {
        main_drops_[static_cast<size_t>(gateway_drop::spd_discard)]++;
        rte_pktmbuf_free(m);
        return;
    }
    if (rule->sa == nullptr) {
        // RFC 4301 §5.1: acquire (at most once a second for the gateway's own traffic), drop meanwhile.
        const uint64_t now = rte_get_tsc_cycles();
        if (now - last_acquire_tsc_ >= rte_get_tsc_hz()) {
            last_acquire_tsc_ = now;
            gateway_event g{};
            g.what = gateway_event::kind::acquire;
            g.dir = config::direction::outbound;
            const unsigned bytes = sel.v6 ? 16 : 4;
            g.source.family = g.destination.family = sel.v6 ? 6 : 4;
            std::memcpy(g.source.bytes.data(), ip_src(ip), bytes);
            std::memcpy(g.destination.bytes.data(), ip_dst(ip), bytes);
            g.protocol = sel.protocol;
            if (rte_ring_mp_enqueue_elem(shared_.events, &g, sizeof(g)) != 0) {
                main_drops_[static_cast<size_t>(gateway_drop::ring_full)]++;
            }
        }
        main_drops_[static_cast<size_t>(gateway_drop::no_outbound_sa)]++;
        rte_pktmbuf_free(m);
        return;
    }
    rte_pktmbuf_adj(m, sizeof(rte_ether_hdr));
    rte_pktmbuf_trim(m, static_cast<uint16_t>(avail - v.total)); // Ethernet padding is not payload
    protect_from_kernel(pos, *rule->sa, m);
}

// The kernel behind a TAP sent a packet that will not fit the link once encrypted, and that may not
// be fragmented (DF, IPv6, transport mode): tell it as a router on the path would (RFC 1191 ICMP
// fragmentation needed / RFC 8201 Packet Too Big), so its path MTU cache shrinks and the next
// packets fit. The error claims the packet's destination as its source: an error from one of the
// kernel's own addresses would be dropped as a martian, and Linux takes Path MTU information from
// any source (it checks the quoted packet instead).
void gateway::too_big_to_kernel(uint16_t port_pos, const uint8_t* ip, uint32_t len, uint32_t fits)
{
    const port_state& ps = shared_.ports[port_pos];
    rte_mbuf* m = rte_pktmbuf_alloc(pool_);
    if (m == nullptr) {
        main_drops_[static_cast<size_t>(gateway_drop::no_buffer)]++;
        return;
    }
    const bool v6 = (ip[0] >> 4) == 6;
    uint32_t out_len = 0;
    auto* eth = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_append(m, sizeof(rte_ether_hdr)));
    if (v6) {
        uint8_t buf[icmpv6_error_max_bytes];
        out_len = build_icmpv6_error(buf, ip + 24, icmpv6_packet_too_big, 0, std::max<uint32_t>(fits, 1280),
                                     ip, len);
        auto* body = rte_pktmbuf_append(m, static_cast<uint16_t>(out_len));
        if (eth == nullptr || body == nullptr) {
            rte_pktmbuf_free(m);
            return;
        }
        std::memcpy(body, buf, out_len);
    } else {
        const uint32_t quote = std::min<uint32_t>((ip[0] & 0x0fU) * 4 + 8, len);
        out_len = 28 + quote;
        auto* out = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(m, static_cast<uint16_t>(out_len)));
        if (eth == nullptr || out == nullptr) {
            rte_pktmbuf_free(m);
            return;
        }
        std::memset(out, 0, 28);
        out[0] = 0x45;
        store_be16(out + 2, static_cast<uint16_t>(out_len));
        out[8] = 64;
        out[9] = 1; // ICMP
        std::memcpy(out + 12, ip + 16, 4);
        std::memcpy(out + 16, ip + 12, 4);
        ipv4_set_checksum(out);
        uint8_t* icmp = out + 20;
        icmp[0] = 3;
        icmp[1] = 4;
        store_be16(icmp + 6, static_cast<uint16_t>(fits));
        std::memcpy(icmp + 8, ip, quote);
        const auto ck = static_cast<uint16_t>(~rte_raw_cksum(icmp, 8 + quote));
        std::memcpy(icmp + 2, &ck, 2);
    }
    eth->dst_addr = ps.mac;
    eth->src_addr = ps.mac;
    eth->ether_type = rte_cpu_to_be_16(v6 ? RTE_ETHER_TYPE_IPV6 : RTE_ETHER_TYPE_IPV4);
    to_tap(ps, m);
}

// Encrypts one packet of the gateway's own (starting at its IP header) with `sa` and sends it
// through the data plane's FIB and neighbour table. The kernel does not know the ESP overhead: an
// IPv4 packet without DF is fragmented before encryption (RFC 4301 §8.1, as for transit); a packet
// that may not be fragmented and does not fit is dropped, counted as too_big, and the kernel is told
// the MTU that fits (too_big_to_kernel).
void gateway::protect_from_kernel(uint16_t port_pos, sa_runtime& sa, rte_mbuf* m)
{
    const auto* ip = rte_pktmbuf_mtod(m, const uint8_t*);
    const bool tunnel = (sa.flags & sa_tunnel) != 0;
    const bool outer_v6 = tunnel ? (sa.flags & sa_outer_v6) != 0 : (ip[0] >> 4) == 6;
    const uint8_t* outer_dst = tunnel ? (outer_v6 ? sa.outer_header + 24 : sa.outer_header + 16) : ip_dst(ip);
    uint16_t port = 0;
    uint32_t nh4 = 0;
    ipv6_address nh6{};
    bool routed = false;
    if (outer_v6) {
        routed = shared_.routes6->lookup(outer_dst, port, nh6);
    } else {
        uint32_t dst_be = 0;
        std::memcpy(&dst_be, outer_dst, 4);
        routed = shared_.routes->lookup(dst_be, port, nh4);
    }
    const int16_t out = routed ? shared_.position(port) : -1;
    if (out < 0) {
        main_drops_[static_cast<size_t>(gateway_drop::no_route)]++;
        rte_pktmbuf_free(m);
        return;
    }
    const uint32_t mtu = shared_.ports[static_cast<size_t>(out)].mtu;
    const bool v6 = (ip[0] >> 4) == 6;
    const uint32_t overhead = esp_overhead(sa, outer_v6); // AH too; TFC padding fits (limit_tfc_padding)
    const uint32_t total = v6 ? 40U + load_be16(ip + 4) : load_be16(ip + 2);
    constexpr int max_parts = 16;
    rte_mbuf* parts[max_parts] = {m};
    uint16_t n = 1;
    if (total + overhead > mtu) {
        const uint32_t fits = mtu > overhead + 68 ? (mtu - overhead) & ~7U : 68;
        if (v6 || !tunnel || (load_be16(ip + 6) & 0x4000) != 0) {
            too_big_to_kernel(port_pos, ip, total, v6 ? (mtu > overhead ? mtu - overhead : 0) : fits);
            main_drops_[static_cast<size_t>(gateway_drop::too_big)]++;
            rte_pktmbuf_free(m);
            return;
        }
        const int32_t k =
            rte_ipv4_fragment_copy_nonseg_packet(m, parts, max_parts, static_cast<uint16_t>(fits), pool_);
        rte_pktmbuf_free(m);
        if (k <= 0) {
            main_drops_[static_cast<size_t>(gateway_drop::too_big)]++;
            return;
        }
        for (int32_t f = 0; f < k; ++f) {
            ipv4_set_checksum(rte_pktmbuf_mtod(parts[f], uint8_t*)); // the library leaves it to us
        }
        n = static_cast<uint16_t>(k);
    }
    drop_reason reasons[max_parts];
    const uint16_t good = outbound_process(*main_core_, sa, parts, n, reasons);
    for (uint16_t k = good; k < n; ++k) {
        rte_pktmbuf_free(parts[k]); // counted on the SA by the engine
    }
    for (uint16_t k = 0; k < good; ++k) {
        rte_mbuf* p = parts[k];
        auto* eth = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_prepend(p, sizeof(rte_ether_hdr)));
        if (eth == nullptr) {
            main_drops_[static_cast<size_t>(gateway_drop::malformed)]++;
            rte_pktmbuf_free(p);
            continue;
        }
        eth->ether_type = rte_cpu_to_be_16(outer_v6 ? RTE_ETHER_TYPE_IPV6 : RTE_ETHER_TYPE_IPV4);
        local_[static_cast<size_t>(local_counter::out_protected)]++;
        queue_for_neighbor(p, port, outer_v6 ? 6 : 4,
                           outer_v6 ? nh6.data() : reinterpret_cast<const uint8_t*>(&nh4));
    }
}

// Soft/hard expiry and sequence exhaustion raised while the main lcore encrypted the gateway's own
// traffic: to the same event ring as the workers' (main_events hands them to the control socket).
void gateway::drain_main_core()
{
    sa_event ev[8];
    const size_t n = main_core_->drain(ev);
    for (size_t i = 0; i < n; ++i) {
        gateway_event g{};
        g.what = ev[i].kind == sa_event_kind::soft_expire   ? gateway_event::kind::soft_expire
                 : ev[i].kind == sa_event_kind::hard_expire ? gateway_event::kind::hard_expire
                                                            : gateway_event::kind::seq_exhausted;
        g.dir = ev[i].dir;
        g.spi = ev[i].spi;
        if (rte_ring_mp_enqueue_elem(shared_.events, &g, sizeof(g)) != 0) {
            main_drops_[static_cast<size_t>(gateway_drop::ring_full)]++;
        }
    }
}

// Cleartext for a gateway address (with its Ethernet header), before it goes to the kernel: the
// inbound check of RFC 4301 §5.2 step 4, as for transit (apply_policies in worker.cpp): cleartext
// that an inbound protect policy covers should have arrived encrypted and is dropped (unprotected),
// a discard policy drops it; the implicit bypass (IKE, ND/MLD, ICMP errors) and everything else pass.
bool gateway::to_kernel_allowed(rte_mbuf* m)
{
    const uint32_t len = rte_pktmbuf_data_len(m);
    if (len < sizeof(rte_ether_hdr) || !spd_) {
        local_[static_cast<size_t>(local_counter::in_clear)]++;
        return true;
    }
    const auto* ip = rte_pktmbuf_mtod_offset(m, const uint8_t*, sizeof(rte_ether_hdr));
    ip_view v;
    if (parse_ip(ip, len - static_cast<uint32_t>(sizeof(rte_ether_hdr)), v) != drop_reason::none) {
        main_drops_[static_cast<size_t>(gateway_drop::malformed)]++;
        return false;
    }
    const local_selectors sel = selectors_of(ip, v.total, v);
    // A non-first fragment carries no ports, so it cannot be told from IKE (the kernel fragments large
    // IKE_AUTH messages when RFC 7383 fragmentation is not negotiated). It is admitted: the kernel
    // delivers nothing until it has the first fragment, which carries the selectors and was checked
    // here, so a datagram this check refused never completes (RFC 4301 §7 leaves non-initial
    // fragments to such stateful handling).
    if (implicit_bypass(sel, sel.destination_port, ike_ports_) || sel.non_first_fragment) {
        local_[static_cast<size_t>(local_counter::in_implicit_bypass)]++;
        return true;
    }
    const spd_rule* out_rule = nullptr;
    const spd_rule* in_match = nullptr;
    classify_local(spd_.get(), *main_hosts_, sel, inbound_scope::every_packet, out_rule, in_match);
    if (in_match != nullptr) {
        const spd_rule& in = *in_match;
        if (in.action == config::policy_action::discard) {
            main_drops_[static_cast<size_t>(gateway_drop::spd_discard)]++;
            return false;
        }
        if (in.action == config::policy_action::protect || in.action == config::policy_action::trap) {
            main_drops_[static_cast<size_t>(gateway_drop::unprotected)]++;
            return false;
        }
    }
    local_[static_cast<size_t>(local_counter::in_clear)]++;
    return true;
}

// A decrypted packet (IP header first, Ethernet header room prepended by the worker) for one of the
// gateway's addresses: to the TAP of the interface that owns the address (weak host model: the
// kernel accepts it on any of its interfaces, but this keeps `show interfaces` per-link honest).
void gateway::decrypted_to_kernel(rte_mbuf* m)
{
    const auto* ip = rte_pktmbuf_mtod_offset(m, const uint8_t*, sizeof(rte_ether_hdr));
    const bool v6 = (ip[0] >> 4) == 6;
    int16_t pos = shared_.position(m->port);
    uint16_t owner = RTE_MAX_ETHPORTS;
    if (v6) {
        for (const auto& [addr, port] : shared_.local_addresses6) {
            if (std::memcmp(addr.data(), ip + 24, 16) == 0) {
                owner = port;
                break;
            }
        }
    } else {
        for (const auto& [addr, port] : shared_.local_addresses) {
            if (std::memcmp(&addr, ip + 16, 4) == 0) {
                owner = port;
                break;
            }
        }
    }
    if (owner != RTE_MAX_ETHPORTS) {
        pos = shared_.position(owner);
    }
    if (pos < 0 || !shared_.ports[static_cast<size_t>(pos)].has_tap) {
        main_drops_[static_cast<size_t>(gateway_drop::exception_full)]++;
        rte_pktmbuf_free(m);
        return;
    }
    const port_state& ps = shared_.ports[static_cast<size_t>(pos)];
    // The bytes in front of the inner packet are what decryption left there: a fresh header
    // addressed to the TAP (it has the port's MAC) from the port itself.
    auto* eth = rte_pktmbuf_mtod(m, rte_ether_hdr*);
    eth->dst_addr = ps.mac;
    eth->src_addr = ps.mac;
    eth->ether_type = rte_cpu_to_be_16(v6 ? RTE_ETHER_TYPE_IPV6 : RTE_ETHER_TYPE_IPV4);
    local_[static_cast<size_t>(local_counter::in_decrypted)]++;
    to_tap(ps, m);
}

unsigned gateway::main_events(const std::function<void(const gateway_event&)>& event)
{
    gateway_event ev[16];
    unsigned n = rte_ring_sc_dequeue_burst_elem(shared_.events, ev, sizeof(gateway_event), 16, nullptr);
    for (unsigned i = 0; i < n; ++i) {
        event(ev[i]);
    }
    return n;
}


// --- Reload (control op `reload`) -----------------------------------------------------------------

std::string gateway::publish_routes(std::unique_ptr<route_table> v4, std::unique_ptr<route_table6> v6)
{
    // RCU style, as set_spd: every worker switches to the new tables between two bursts and says
    // so (its generation); only then is nothing left that reads the old ones, and they are freed.
    // Before the workers run there is nobody to ask.
    if (!running_) {
        for (auto& w : workers_) {
            w->routes = v4.get();
            w->routes6 = v6.get();
        }
        shared_.routes = std::move(v4);
        shared_.routes6 = std::move(v6);
        return {};
    }
    std::vector<unsigned> all;
    // One generation pair for every worker (as set_spd): wait_applied waits for each worker to reach
    // `gen`; per-worker generations made it wait for the last worker's on every worker, which with
    // more than one worker never came (the reload failed after 2 s).
    const uint64_t g4 = ++generation_;
    const uint64_t gen = ++generation_;
    for (unsigned w = 0; w < workers_.size(); ++w) {
        const update_msg run[2] = {{update_msg::set_routes, 0, 0, v4.get(), g4},
                                   {update_msg::set_routes6, 0, 0, v6.get(), gen}};
        if (post_bulk(w, run) != 2) {
            // A worker that got the first may use it: keep both alive, whatever happens.
            retired_routes_.push_back(std::move(v4));
            retired_routes6_.push_back(std::move(v6));
            return "worker update ring full; routes not replaced on every worker (tables kept)";
        }
        all.push_back(w);
    }
    // The main lcore (this thread) uses the new tables from now on.
    std::unique_ptr<route_table> old4 = std::move(shared_.routes);
    std::unique_ptr<route_table6> old6 = std::move(shared_.routes6);
    shared_.routes = std::move(v4);
    shared_.routes6 = std::move(v6);
    if (!wait_applied(all, gen)) {
        retired_routes_.push_back(std::move(old4));
        retired_routes6_.push_back(std::move(old6));
        return "workers did not acknowledge the new routes within 2 s (old tables kept)";
    }
    retired_routes_.clear();
    retired_routes6_.clear();
    return {}; // old4 and old6 freed here: no worker reads them any more
}

config::gateway_config gateway::running_file_state(std::vector<uint32_t>& policy_ids) const
{
    config::gateway_config running;
    running.file = config_.file;
    running.dataplane = config_.dataplane;
    running.interfaces = config_.interfaces;
    running.routes = config_.routes;
    running.neighbors = config_.neighbors;
    // Reserved: growing would leave copies of the keys (inline in sa_config) in freed memory.
    running.security_associations.reserve(config_.security_associations.size());
    for (const auto& sa : config_.security_associations) {
        auto it = sas_.find({static_cast<int>(sa.dir), sa.spi});
        if (it != sas_.end() && it->second.origin == sa.origin) {
            running.security_associations.push_back(sa);
        }
    }
    policy_ids.clear();
    for (size_t i = 0; i < config_.policies.size() && i < file_policy_ids_.size(); ++i) {
        const uint32_t id = file_policy_ids_[i];
        if (std::any_of(policies_.begin(), policies_.end(), [&](const policy_entry& p) { return p.id == id; })) {
            running.policies.push_back(config_.policies[i]);
            policy_ids.push_back(id);
        }
    }
    return running;
}

std::string gateway::reload(config::gateway_config& next, bool dry_run, reload_report& report)
{
    struct wipe_all {
        std::vector<config::sa_config>& sas;
        ~wipe_all()
        {
            for (auto& sa : sas) {
                config::wipe_keys(sa);
            }
        }
    };
    wipe_all wipe_next{next.security_associations};
    forget_ike_secrets(next.ike); // on every path (dry runs and refusals too): only its ports are read
    std::vector<uint32_t> running_policy_ids; // of running.policies[i]
    config::gateway_config running = running_file_state(running_policy_ids);
    wipe_all wipe_running{running.security_associations};
    const config_diff d = diff_config(running, next);
    report = {};
    report.file = next.file;
    report.restart_needed = d.restart_needed;

    // 1. Check everything against the running gateway; nothing changes until all of it passes.
    std::set<std::pair<int, uint32_t>> static_keys; // the file's SAs as they run now
    for (const auto& sa : running.security_associations) {
        static_keys.insert({static_cast<int>(sa.dir), sa.spi});
    }
    for (size_t j : d.sas.added) {
        const auto& c = next.security_associations[j];
        if (sas_.count({static_cast<int>(c.dir), c.spi}) != 0) {
            char buf[200];
            std::snprintf(buf, sizeof(buf),
                          "%s: %s SA 0x%08x is installed through the control socket (espresso-ike or a "
                          "client): a static SA cannot take its SPI. Fix: choose another SPI",
                          c.origin.c_str(), c.dir == config::direction::inbound ? "inbound" : "outbound", c.spi);
            return buf;
        }
    }
    std::vector<const config::sa_config*> to_add;
    for (size_t j : d.sas.added) {
        to_add.push_back(&next.security_associations[j]);
    }
    for (const auto& [i, j] : d.sas.changed) {
        to_add.push_back(&next.security_associations[j]);
    }
    for (const auto* c : to_add) {
        try {
            sa_ptr trial = make_sa(*c, *main_core_); // expands (and on return wipes) the keys
        } catch (const std::exception& e) {
            return c->origin + ": " + e.what();
        }
    }
    // Outbound SAs once the SA changes are made: what protect policies may name.
    std::set<uint32_t> outbound;
    for (const auto& [key, entry] : sas_) {
        if (key.first == static_cast<int>(config::direction::outbound)) {
            outbound.insert(key.second);
        }
    }
    for (size_t i : d.sas.removed) {
        if (running.security_associations[i].dir == config::direction::outbound) {
            outbound.erase(running.security_associations[i].spi);
        }
    }
    for (const auto* c : to_add) {
        if (c->dir == config::direction::outbound) {
            outbound.insert(c->spi);
        }
    }
    for (const auto& p : next.policies) {
        if (p.action == config::policy_action::protect && outbound.count(p.spi) == 0) {
            char buf[160];
            std::snprintf(buf, sizeof(buf), "protect policy names SPI 0x%08x, but no outbound SA has it", p.spi);
            return p.origin + ": " + buf;
        }
    }
    for (const auto& n : next.neighbors) {
        if (std::none_of(shared_.ports.begin(), shared_.ports.end(),
                         [&](const port_state& ps) { return ps.name == n.interface; })) {
            return n.origin + ": interface " + n.interface +
                   " is not one the data plane runs (interfaces change at restart only)";
        }
    }
    std::unique_ptr<route_table> fib4;
    std::unique_ptr<route_table6> fib6;
    if (d.routes.touched()) {
        try {
            std::tie(fib4, fib6) = build_routes(next.routes); // off the packet path: workers keep routing
        } catch (const std::exception& e) {
            return std::string("routes: ") + e.what();
        }
    }

    // The report (the same for a dry run).
    auto fill = [](reload_section& out, const section_diff& sd, const auto& old_list, const auto& new_list) {
        for (size_t j : sd.added) {
            out.added.push_back(describe(new_list[j]));
        }
        for (size_t i : sd.removed) {
            out.removed.push_back(describe(old_list[i]));
        }
        for (const auto& [i, j] : sd.changed) {
            out.changed.push_back(describe(old_list[i]) + " => " + describe(new_list[j]));
        }
        for (const auto& [i, j] : sd.unchanged) {
            out.unchanged.push_back(describe(new_list[j]));
        }
    };
    fill(report.routes, d.routes, running.routes, next.routes);
    fill(report.neighbors, d.neighbors, running.neighbors, next.neighbors);
    fill(report.policies, d.policies, running.policies, next.policies);
    fill(report.sas, d.sas, running.security_associations, next.security_associations);
    report.sas.changed.clear(); // which settings changed (the SA's line alone is the same on both sides)
    for (const auto& [i, j] : d.sas.changed) {
        report.sas.changed.push_back(describe_change(running.security_associations[i], next.security_associations[j]));
    }
    if (dry_run) {
        return {};
    }

    // 2. Apply: routes, neighbors, policies out, SAs out, SAs in, policies in.
    report.apply_started = true;
    std::string error;
    if (d.routes.touched()) {
        for (size_t i : d.routes.removed) {
            tap_route(running.routes[i], false);
        }
        for (const auto& [i, j] : d.routes.changed) {
            tap_route(running.routes[i], false);
        }
        error = publish_routes(std::move(fib4), std::move(fib6));
        if (!error.empty()) {
            return error; // the workers' state is unknown: nothing else is changed
        }
        for (size_t j : d.routes.added) {
            tap_route(next.routes[j], true);
        }
        for (const auto& [i, j] : d.routes.changed) {
            tap_route(next.routes[j], true);
        }
    }
    for (size_t i : d.neighbors.removed) {
        const auto& n = running.neighbors[i];
        for (const auto& ps : shared_.ports) {
            if (ps.name == n.interface) {
                shared_.neighbors->remove(ps.port, n.address.family, n.address.bytes.data());
            }
        }
        tap_neighbor(n, false);
    }
    for (size_t j : d.neighbors.added) {
        set_static_neighbor(next.neighbors[j]);
        tap_neighbor(next.neighbors[j], true);
    }
    for (const auto& [i, j] : d.neighbors.changed) {
        set_static_neighbor(next.neighbors[j]); // static: overwrites the MAC in place
        tap_neighbor(next.neighbors[j], true);
    }
    // Policies out before the SAs they may name.
    for (size_t i : d.policies.removed) {
        (void)delete_policy(running_policy_ids[i]); // present: running_file_state checked
    }
    // A changed SA is deleted before its new version goes in (same direction and SPI). Meanwhile its
    // traffic must neither leave nor be admitted in the clear: a discard policy on its selectors,
    // ranked just after the implied protect policies (so the new SA wins the moment it is in), covers
    // the gap and goes once the new SAs are installed. Adding policies frees nothing a worker may
    // hold, so the SPD is compiled once for all of them.
    std::vector<uint32_t> guards;
    if (!d.sas.changed.empty()) {
        defer_spd_ = true;
        for (const auto& [i, j] : d.sas.changed) {
            const auto& old = running.security_associations[i];
            config::policy_config guard;
            guard.local = old.local;
            guard.remote = old.remote;
            guard.action = config::policy_action::discard;
            guard.priority = implied_priority + 1;
            guard.origin = "reload: replacing " + describe(old);
            uint32_t id = 0;
            if (insert_policy(guard, id).empty()) {
                guards.push_back(id);
            }
        }
        defer_spd_ = false;
        if (std::string e = rebuild_spd(); !e.empty()) {
            return "guarding the SAs being replaced: " + e;
        }
    }
    std::vector<sa_id> out_sas;
    for (size_t i : d.sas.removed) {
        out_sas.emplace_back(running.security_associations[i].dir, running.security_associations[i].spi);
    }
    for (const auto& [i, j] : d.sas.changed) {
        out_sas.emplace_back(running.security_associations[i].dir, running.security_associations[i].spi);
    }
    if (!out_sas.empty()) {
        if (std::string e = delete_sas(out_sas); !e.empty()) {
            error = "removing static SAs: " + e;
        }
    }
    std::vector<config::sa_config> in_sas;
    in_sas.reserve(to_add.size()); // no reallocation: it would leave key copies behind unwiped
    for (const auto* c : to_add) {
        in_sas.push_back(*c);
    }
    wipe_all wipe_in{in_sas};
    if (!in_sas.empty() && error.empty()) {
        if (std::string e = add_sas(in_sas); !e.empty()) {
            error = "installing static SAs: " + e;
        }
    }
    if (!guards.empty() && error.empty()) {
        std::erase_if(policies_, [&](const policy_entry& p) {
            return std::find(guards.begin(), guards.end(), p.id) != guards.end();
        });
        if (std::string e = rebuild_spd(); !e.empty()) {
            error = "removing the guards of the replaced SAs: " + e;
        }
    }
    // The file's policies in their new order, with the ids of those that stay.
    std::vector<uint32_t> ids(next.policies.size(), 0);
    for (const auto& [i, j] : d.policies.unchanged) {
        ids[j] = running_policy_ids[i];
    }
    for (size_t j : d.policies.added) {
        uint32_t id = 0;
        if (!error.empty()) {
            break;
        }
        if (std::string e = insert_policy(next.policies[j], id); !e.empty()) {
            error = next.policies[j].origin + ": " + e;
            break;
        }
        ids[j] = id;
    }
    // The running configuration is now the file's (keys of the old SAs wiped); unchanged SAs keep
    // their counters and sequence numbers, and take the file's new positions for their origin.
    for (const auto& [i, j] : d.sas.unchanged) {
        const auto& c = next.security_associations[j];
        auto it = sas_.find({static_cast<int>(c.dir), c.spi});
        if (it != sas_.end()) {
            it->second.origin = c.origin;
            it->second.sa->config.origin = c.origin; // read by the main lcore only (snapshots)
        }
    }
    for (const auto& [i, j] : d.policies.unchanged) {
        for (auto& p : policies_) {
            if (p.id == running_policy_ids[i]) {
                p.policy.origin = next.policies[j].origin;
            }
        }
    }
    for (auto& sa : config_.security_associations) {
        config::wipe_keys(sa);
    }
    config_.security_associations = std::move(next.security_associations);
    next.security_associations.clear();
    config_.file = next.file; // a reload with another path makes that the file later reloads read
    config_.routes = std::move(next.routes);
    note_route_gateways();
    config_.neighbors = std::move(next.neighbors);
    config_.policies = std::move(next.policies);
    file_policy_ids_ = std::move(ids);
    config_.ike = std::move(next.ike);
    ike_ports_ = {500, 4500};
    for (const auto& peer : config_.ike.peers) {
        if (std::find(ike_ports_.begin(), ike_ports_.end(), peer.local_port) == ike_ports_.end()) {
            ike_ports_.push_back(peer.local_port);
        }
    }
    report.applied = d.routes.touched() || d.neighbors.touched() || d.policies.touched() || d.sas.touched();
    return error;
}

} // namespace espresso::dp
