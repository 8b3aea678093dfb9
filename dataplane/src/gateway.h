// espresso-dp's gateway: ports, worker lcores and the management (main lcore) loop.
//
// Threads and ownership (ARCHITECTURE.md):
//  - Workers own their SAD (inbound SPI -> SA) and the pointer to the compiled SPD they use. Nothing
//    else touches them: changes arrive as messages on the worker's single-producer/single-consumer
//    update ring and are applied between bursts; the worker then publishes the generation it reached.
//  - The main lcore owns everything else: the SA registry, building SPDs, ARP, the TAP exception path,
//    the control socket. A mutating gateway_api call returns after every affected worker published
//    the generation of that change, so "installed" means usable on every core.
//  - Inbound SAs are processed by one owner worker (owner = SPI % workers); a worker that receives a
//    packet for an SA it does not own hands it to the owner through the owner's handoff ring. This
//    keeps each replay window single-writer whatever RSS does (decision recorded in docs/ARCHITECTURE.md).
#pragma once

#include <rte_ether.h>
#include <rte_hash.h>
#include <rte_mbuf.h>
#include <rte_ring.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "espresso/config/types.h"
#include "espresso/dp/crypto_core.h"
#include "espresso/dp/sa.h"
#include "gateway_api.h"
#include "reassembly.h"
#include "routing.h"
#include "spd.h"

namespace espresso::dp {

// Packets a worker takes from one RX queue (and from its handoff ring) per poll: the vector a pass
// processes. 64 by default, not DPDK's customary 32: IPsec-MB's multi-buffer AES-CBC and HMAC-SHA
// code (16 lanes on an AVX-512 manager) finishes each engine call with a flush in which the longest
// jobs run with the other lanes empty; with 32 mixed-size packets that tail was a third of the call
// (AES-CBC + HMAC-SHA-256 IMIX through espresso-dp 2.1 -> 2.9-3.6 Mpps outbound, 2.5 -> 3.1-4.1
// inbound, and 3-8 % more at 64 B; perf/RESULTS.md).
inline constexpr uint16_t rx_burst_base = 64;
// Up to 128 (IPsec-MB's largest burst) while the previous pass gave the multi-buffer code at least
// rx_burst_base jobs (crypto_core::take_multi_buffer_jobs), i.e. while AES-CBC+HMAC traffic is
// backlogged: each engine call costs less per job with more of them (perf/esp-bench, AES-128-CBC +
// HMAC-SHA-256 64 B encrypt: +3-10 % raw at 128 against 64), while AES-GCM (one packet per call)
// and plain forwarding measured 1-4 % slower with 128-packet polls (a larger footprint per pass).
// Fits max_vector (worker.cpp) and max_burst (ipsec.h).
inline constexpr uint16_t rx_burst_size = 128;
// Slots of each worker's handoff ring (inbound IPsec for SAs it owns, fragments it reassembles).
inline constexpr unsigned handoff_ring_size = 4096;
// Packets of its own a worker takes while handed-in ones wait, at most, per spell of backlogged RX
// polls (worker.cpp: they may be newer than that backlog): an af_packet ring's worth
// (af_packet_frame_count below), the backlog that can predate frames the kernel rolled over.
inline constexpr unsigned handoff_hold_packets = 256;
// Largest datagram reassembled from fragments addressed to the gateway (IP header included): as
// af_packet frames (below), it covers 9000-byte jumbo MTUs and IKE messages with certificates.
inline constexpr uint32_t reassembly_max_bytes = 16384;

struct port_state {
    std::string name;   // interface name from the config
    std::string device; // device spec
    uint16_t port = 0;
    uint16_t rx_queues = 1;
    uint16_t tx_queues = 1;
    rte_ether_addr mac{};
    rte_ether_addr device_mac{}; // what the device reports: `mac`, unless it refused the override
    bool has_v4 = false;
    uint32_t address_be = 0; // IPv4 address (has_v4)
    uint8_t prefix_length = 0;
    bool has_v6 = false;
    ipv6_address address6{};    // global IPv6 address (has_v6)
    uint8_t prefix_length6 = 0;
    ipv6_address link_local6{}; // fe80::EUI-64 of `mac`, as the kernel derives it on the TAP
    uint16_t mtu = 1500;
    bool has_tap = false;
    uint16_t tap_port = 0;
    uint16_t tap_mtu = 1500; // the TAP PMD's MTU: largest IP packet it writes to the kernel
    std::string tap_name;
    rte_mempool* rx_pool = nullptr; // af_packet ports: mbufs that hold a whole ring frame
};

// Metadata a worker attaches to a packet it hands to the main lcore (an mbuf dynamic field).
struct exception_meta {
    enum kind : uint8_t {
        arp,
        to_us,
        resolve,
        too_big,
        time_exceeded,   // IPv4 TTL or IPv6 hop limit ran out (the packet's version tells which)
        nd,              // ICMPv6 Neighbor Solicitation / Advertisement for the gateway (no Ethernet header)
        resolve6,        // IPv6 next hop unresolved: the main lcore looks the next hop up again
        too_big6,        // IPv6 packet too big after encapsulation: send Packet Too Big (RFC 8201)
        decrypted_to_us, // decrypted (tunnel or transport) packet for a gateway address: to the TAP
    } what;
    uint8_t pad;
    uint16_t port;   // resolve, resolve6: egress port
    uint32_t value;  // resolve: next hop (network order); too_big, too_big6: MTU to report
};

struct update_msg {
    // set_routes, set_routes6: a reload's new FIB (gateway::publish_routes); the worker uses it from
    // its next burst on, and the old one is freed once every worker acknowledged.
    enum op : uint32_t { add_inbound, remove_inbound, set_spd, set_host, remove_host, set_routes, set_routes6 } what;
    uint32_t pad;
    uint64_t key;        // add/remove_inbound: SAD key
    void* ptr;           // sa_runtime*, const compiled_spd*, const host_bucket*, const route_table(6)*
    uint64_t generation;
};

struct alignas(64) worker_state {
    unsigned index = 0;
    unsigned lcore = 0;
    std::vector<std::pair<uint16_t, uint16_t>> rx; // (port, queue)
    rte_ring* updates = nullptr; // SP/SC, update_msg elements
    rte_ring* handoff = nullptr; // MP/SC, rte_mbuf* of inbound IPsec this worker owns, fragments it reassembles
    rte_hash* sad = nullptr;     // key: spi | protocol << 32 -> sa_runtime*
    const compiled_spd* spd = nullptr;
    host_spd* hosts = nullptr;   // level 2 of the SPD (spd.h): SA-implied policies of host selectors
    // The FIBs this worker routes with: read only between applying updates, so a reload's new
    // tables (update_msg::set_routes) replace them between bursts, never within one.
    const route_table* routes = nullptr;
    const route_table6* routes6 = nullptr;
    alignas(64) std::atomic<uint64_t> applied{0};
    // Idle wake-up (gateway::post, worker_loop::nap): the main lcore bumps wake_seq after queuing an
    // update and, if the worker is napping, wakes it with FUTEX_WAKE on wake_seq.
    std::atomic<uint32_t> wake_seq{0};
    std::atomic<bool> napping{false};
    alignas(64) std::atomic<uint64_t> rx_packets{0};
    std::atomic<uint64_t> tx_packets{0};
    std::atomic<uint64_t> to_exception{0};
    std::atomic<uint64_t> handed_off{0}; // inbound ESP/AH enqueued to the owning worker's handoff ring
    std::atomic<uint64_t> handed_in{0};  // packets dequeued from this worker's handoff ring
    std::atomic<uint64_t> fragmented{0}; // packets split before encryption (RFC 4301 §8.1)
    std::atomic<uint64_t> fragments{0};   // fragments to the gateway taken for reassembly
    std::atomic<uint64_t> reassembled{0}; // datagrams completed from them
    std::unique_ptr<reassembler> reassembly; // used by this worker only
    std::atomic<uint64_t> polls{0};
    std::atomic<uint64_t> busy_polls{0};
    std::array<std::atomic<uint64_t>, static_cast<size_t>(gateway_drop::count)> drops{};

    void drop(gateway_drop d, uint64_t n = 1) noexcept
    {
        drops[static_cast<size_t>(d)].fetch_add(n, std::memory_order_relaxed);
    }
};

class gateway final : public gateway_api {
public:
    // EAL must be initialised. Sets up ports, TAPs, tables, static SAs and policies; throws
    // std::runtime_error with an operator-readable message on failure.
    explicit gateway(const config::gateway_config& config);
    ~gateway() override;
    // Wipes and drops the IKE pre-shared keys of a loaded file's ike: section (the data plane reads
    // only the IKE ports from it; the secrets are the IKE daemon's).
    static void forget_ike_secrets(config::ike_config& ike) noexcept;

    // Launches the workers and runs the management loop on the calling (main) lcore until `stop`.
    // `tick` is called every loop iteration (control socket, telemetry); `event` for each SA event;
    // `nap(usec)` between iterations (default usleep; espresso-dp wakes early on control requests).
    void run(const volatile std::sig_atomic_t& stop, const std::function<void()>& tick,
             const std::function<void(const gateway_event&)>& event,
             const std::function<void(unsigned usec)>& nap = {});

    // gateway_api
    std::string add_sa(const config::sa_config& sa) override;
    std::string delete_sa(config::direction dir, uint32_t spi) override;
    std::string add_policy(const config::policy_config& policy, uint32_t& id) override;
    std::string delete_policy(uint32_t id) override;
    std::string flush() override;
    std::string add_sas(std::span<const config::sa_config> batch) override;
    std::string delete_sas(std::span<const sa_id> which) override;
    std::vector<sa_snapshot> sas() const override;
    std::optional<sa_snapshot> sa(config::direction dir, uint32_t spi) const override;
    std::vector<policy_snapshot> policies() const override;
    std::vector<interface_snapshot> interfaces() const override;
    std::vector<worker_snapshot> workers() const override;
    void clear_counters() override;
    neighbor_summary neighbors() const override;
    std::string update_sa_peer(uint32_t spi, const config::ip_address& destination,
                               std::optional<uint16_t> udp_port) override;
    unsigned clear_neighbors(uint8_t family) override;
    std::string config_file() const override { return config_.file; }
    std::string reload(config::gateway_config& next, bool dry_run, reload_report& report) override;

    // Used by the worker loop (worker.cpp).
    struct shared {
        std::vector<port_state> ports; // indexed by position; port_index maps DPDK port -> position
        std::array<int16_t, RTE_MAX_ETHPORTS> port_index{};
        // Position in `ports` of a DPDK port id, -1 for unknown ids (mbufs that came from no port
        // carry RTE_MBUF_PORT_INVALID).
        int16_t position(uint16_t port) const noexcept { return port < port_index.size() ? port_index[port] : -1; }
        // The smallest MTU of any port, at most `cap` (1500 without ports).
        uint32_t min_mtu(uint32_t cap) const noexcept
        {
            uint32_t m = ports.empty() ? 1500 : cap;
            for (const port_state& p : ports) {
                m = std::min<uint32_t>(m, p.mtu);
            }
            return m;
        }
        std::unique_ptr<route_table> routes;
        std::unique_ptr<route_table6> routes6;
        std::unique_ptr<neighbor_table> neighbors;
        rte_ring* exceptions = nullptr; // MP/SC rte_mbuf* to the main lcore
        rte_ring* events = nullptr;     // MP/SC gateway_event elements to the main lcore
        rte_ring* main_tx = nullptr;    // SP/SC: frames the main lcore sends (m->port = DPDK port), sent by worker 0
        std::vector<worker_state*> workers;
        int meta_offset = -1; // mbuf dynfield offset of exception_meta
        bool adaptive_idle = true;
        std::atomic<bool> stop{false};
        std::vector<std::pair<uint32_t, uint16_t>> local_addresses; // (address, port)
        std::vector<std::pair<ipv6_address, uint16_t>> local_addresses6; // global and link-local, (address, port)
    };

private:
    struct sa_entry {
        sa_ptr sa;
        std::string origin;
    };
    struct policy_entry {
        config::policy_config policy;
        uint32_t id;
    };

    sa_snapshot snapshot(const sa_runtime& sa) const;
    void setup_ports();
    void setup_taps();
    void setup_workers();
    // The FIBs of `routes` over the running ports (throws std::runtime_error on an unusable route).
    std::pair<std::unique_ptr<route_table>, std::unique_ptr<route_table6>>
    build_routes(const std::vector<config::route_config>& routes) const;
    // Hands new FIBs to every worker and waits until all use them; then frees the old ones.
    std::string publish_routes(std::unique_ptr<route_table> v4, std::unique_ptr<route_table6> v6);
    // The kernel behind the TAPs gets the static routes and neighbors too (its own traffic).
    void tap_route(const config::route_config& r, bool add);
    void tap_neighbor(const config::neighbor_config& n, bool add);
    void set_static_neighbor(const config::neighbor_config& n);
    // The SAs and explicit policies of config_ (the file) that are still installed as the file had
    // them (the control socket may have deleted or flushed some since): what a reload diffs against.
    // policy_ids: the id of each of the returned policies.
    config::gateway_config running_file_state(std::vector<uint32_t>& policy_ids) const;
    std::string rebuild_spd();
    bool wait_applied(const std::vector<unsigned>& workers, uint64_t generation);
    bool post(unsigned worker, const update_msg& msg);
    // Queues msgs in order with bulk enqueues and one wake-up (a batch's SAs for one worker); waits up
    // to 2 s for room as post() does. Returns how many were queued (all, unless the worker is stuck).
    size_t post_bulk(unsigned worker, std::span<const update_msg> msgs);
    void wake(unsigned worker) noexcept;
    std::string check_new_sa(const config::sa_config& c) const;
    // Refuses `adding` more SAs when they would exceed dataplane.max-sas (the tables' size).
    std::string check_room(size_t adding) const;
    bool count_inbound_selectors(const config::sa_config& c, int delta);
    bool imply_policy(const sa_runtime& sa, int delta);
    bool policy_names(const config::sa_config& c) const;
    bool implied_in_hosts(const config::sa_config& c) const;
    std::string publish_hosts();
    unsigned main_exceptions();
    unsigned main_taps();
    unsigned main_events(const std::function<void(const gateway_event&)>& event);
    void main_pending_timeouts();
    void handle_arp(rte_mbuf* m);
    void handle_nd(rte_mbuf* m);
    void main_neighbor_maintenance();
    // Broadcast/multicast resolution, or a unicast NUD probe to `unicast` when given.
    void send_arp_request(uint16_t port_pos, uint32_t target_be, const rte_ether_addr* unicast = nullptr);
    void send_neighbor_solicitation(uint16_t port_pos, const ipv6_address& target,
                                    const rte_ether_addr* unicast = nullptr);
    void send_icmp4_error(rte_mbuf* m, uint8_t type, uint8_t code, uint16_t mtu);
    void send_icmp6_error(rte_mbuf* m, uint8_t type, uint8_t code, uint32_t parameter);
    // `to_us`: `ip` was addressed to the gateway (a quote in the kernel's own ICMP error), so what
    // the implicit bypass admits in clear (IKE, ICMP errors, ND) did not come through a tunnel.
    bool came_through_tunnel(const uint8_t* ip, uint32_t avail, bool to_us = false);
    template <typename SetSource>
    void send_error_protected(rte_mbuf* m, uint16_t in_pos, uint8_t family, SetSource set_source);
    bool icmp_allowed(bool too_big);
    void transmit_main(uint16_t port_pos, rte_mbuf* m);
    void to_tap(const port_state& ps, rte_mbuf* m);
    void to_tap6(const port_state& ps, rte_mbuf* m, const rte_ether_hdr& eth);
    void note_route_gateways();
    std::string check_new_policy(const config::policy_config& policy) const;
    std::string insert_policy(const config::policy_config& policy, uint32_t& id);
    void queue_for_neighbor(rte_mbuf* m, uint16_t port, uint8_t family, const uint8_t* next_hop);
    void resolved(uint16_t port, uint8_t family, const uint8_t* ip, const rte_ether_addr& mac);
    bool from_tap_allowed(const rte_mbuf* m) const;
    // The gateway's own traffic (RFC 4301 host-to-host, transport mode between gateways): what the
    // kernel sends through a TAP goes through the outbound SPD; cleartext for a gateway address
    // through the inbound check; decrypted packets for a gateway address to the owning TAP.
    void from_kernel(size_t port_pos, rte_mbuf* m);
    void protect_from_kernel(uint16_t port_pos, sa_runtime& sa, rte_mbuf* m);
    void too_big_to_kernel(uint16_t port_pos, const uint8_t* ip, uint32_t len, uint32_t fits);
    bool to_kernel_allowed(rte_mbuf* m);
    void decrypted_to_kernel(rte_mbuf* m);
    void mark_local_delivery(sa_runtime& sa) const;
    void limit_tfc_padding(sa_runtime& sa) const;
    void drain_main_core();
    unsigned owner_of(uint32_t spi) const noexcept;

    config::gateway_config config_;
    shared shared_;
    std::vector<std::unique_ptr<worker_state>> workers_;
    rte_mempool* pool_ = nullptr;      // everything but af_packet RX (TAP RX, ARP/ICMP, fragments of pool_ mbufs)
    rte_mempool* rx_jumbo_ = nullptr;  // af_packet RX: one mbuf holds one whole ring frame
    rte_mempool* reassembled_ = nullptr; // one datagram reassembled from fragments per mbuf
    rte_mempool* indirect_ = nullptr;    // data-less mbufs for rte_ipv6_fragment_packet (to_tap)
    uint32_t tap_fragment_id_ = 0;       // Fragment header Identification of datagrams split for a TAP
    std::unique_ptr<crypto_core> main_core_; // key expansion at install time
    std::map<std::pair<int, uint32_t>, sa_entry> sas_; // (direction, spi)
    std::vector<policy_entry> policies_;
    // Id of config_.policies[i] in policies_ (the file's explicit policies), for reloads.
    std::vector<uint32_t> file_policy_ids_;
    // FIBs a reload replaced whose release a worker never acknowledged: never freed under it.
    std::vector<std::unique_ptr<route_table>> retired_routes_;
    std::vector<std::unique_ptr<route_table6>> retired_routes6_;
    uint32_t next_policy_id_ = 1;
    uint64_t generation_ = 0;
    bool running_ = false; // workers launched: updates must be acknowledged
    std::unique_ptr<compiled_spd> spd_;
    std::vector<std::tuple<std::string, int, uint32_t, const void*, bool, uint32_t>> spd_signature_; // of spd_
    bool spd_incomplete_ = false; // a rebuild reached only some workers: the next one posts to all
    bool defer_spd_ = false; // start-up: compile once after every static SA and policy
    std::vector<std::unique_ptr<compiled_spd>> retired_spds_;
    std::map<uint32_t, uint64_t> policy_matches_;
    // Level 2 of the SPD: implied policies of SAs whose remote selector is one host, kept here and
    // mirrored into every worker's host_spd (workers_[i]->hosts, owned by host_tables_).
    host_policies hosts_;
    std::vector<std::unique_ptr<host_spd>> host_tables_;
    // The main lcore's own copy, for the gateway's own traffic (TAP -> SPD, to-us cleartext check):
    // updated in publish_hosts on the main lcore itself, so it never races a worker's table.
    std::unique_ptr<host_spd> main_hosts_;
    // Inbound SAs per selector pair: the SPD's inbound check has one entry per distinct pair, so an
    // inbound SA whose selectors another inbound SA already has (rekeys, many SAs per tunnel) changes
    // nothing there and is installed without looking at the SPD at all.
    // Inbound SAs per (local, remote) selector pair, keyed by the prefixes' bytes (family, address,
    // length of each): formatting them as text was a measurable share of an install.
    std::map<std::array<uint8_t, 36>, unsigned> inbound_selectors_;

    struct pending {
        std::vector<rte_mbuf*> packets;
        uint64_t requested_tsc = 0;
        uint64_t first_tsc = 0;
        unsigned tries = 0;
    };
    // (port, family, next hop; IPv4 in the first 4 bytes) -> packets waiting for ARP or NDP
    using pending_key = std::tuple<uint16_t, uint8_t, ipv6_address>;
    std::map<pending_key, pending> pending_;
    size_t pending_packets_ = 0; // mbufs held in pending_ (bounded: queue_for_neighbor)
    // Next hops asked for while pending_ was full (queue_for_neighbor): at most
    // max_unqueued_requests a second, the last 64 remembered so that their Neighbor Advertisements
    // are learned although no packet waits for them (IPv4: the ARP reply is addressed to us anyway).
    std::array<std::pair<pending_key, uint64_t>, 64> unqueued_asked_{}; // and when (TSC)
    std::set<std::pair<uint8_t, ipv6_address>> route_gateways_; // note_route_gateways
    std::map<pending_key, uint64_t> route_gateway_asked_;        // when each was last asked that way
    size_t unqueued_next_ = 0;
    uint64_t unqueued_window_tsc_ = 0;
    unsigned unqueued_requests_ = 0;
    uint64_t neighbor_check_tsc_ = 0; // last NUD pass (main_neighbor_maintenance)
    // ICMP errors (both families): a token bucket, as Linux's icmp_ratelimit (RFC 4443 §2.4 (f)).
    struct icmp_bucket {
        double tokens = 0;
        uint64_t refill_tsc = 0;
    };
    icmp_bucket icmp_too_big_; // ICMPv4 fragmentation needed, ICMPv6 Packet Too Big
    icmp_bucket icmp_other_;   // every other error
    std::array<std::atomic<uint64_t>, static_cast<size_t>(gateway_drop::count)> main_drops_{};
    std::array<std::atomic<uint64_t>, static_cast<size_t>(local_counter::count)> local_{};
    std::vector<uint16_t> ike_ports_; // UDP ports of the gateway's IKE sockets (implicit bypass)
    uint64_t last_acquire_tsc_ = 0;   // acquires raised for the gateway's own traffic: at most 1/s
};

// af_packet ring geometry (PACKET_MMAP, TPACKET_V2) the gateway asks for when an interface's device
// string does not set framesz/blocksz/framecnt itself. The PMD sets PACKET_FANOUT_FLAG_DEFRAG, so the
// kernel reassembles IP fragments before the data plane sees them; the reassembled datagram must fit
// one frame or it arrives truncated. 16 KiB frames take datagrams up to 16 318 bytes with Ethernet
// header (IKE_AUTH with certificates, 9000-byte jumbo frames). One frame per block: the PMD assumes
// frames are contiguous across blocks, and the kernel allocates blocks in powers of two pages, so
// 16 KiB blocks waste nothing (a 10 KiB frame would need 20 KiB blocks, allocated as 32 KiB).
// 256 frames: 4 MiB per ring, RX and TX ring per queue pair.
inline constexpr unsigned af_packet_frame_size = 16384;
inline constexpr unsigned af_packet_frame_count = 256;
static_assert(handoff_hold_packets >= af_packet_frame_count, "the handoff hold covers an af_packet ring's backlog");
static_assert(handoff_hold_packets + 2 * rx_burst_size < handoff_ring_size, "room to hand packets in while others wait");
// The PMD's own default frame size (when a device string sets blocksz/framecnt but not framesz).
inline constexpr unsigned af_packet_default_frame_size = 2048;

// An af_packet device string as the gateway passes it to the EAL: `qpairs=` (one per worker) and the
// ring geometry above appended unless the string sets them. Other devices are returned unchanged.
std::string af_packet_device_spec(const std::string& spec, unsigned workers);
// The frame size an af_packet device string (after af_packet_device_spec) gives its rings; 0 for
// other devices.
unsigned af_packet_frame_bytes(const std::string& spec);

// The EAL command line for a gateway: lcores, file prefix, hugepages, one --vdev/-a per interface
// (af_packet gets one queue pair per worker plus one for the main lcore), then the config's extras.
std::vector<std::string> eal_arguments(const config::gateway_config& config, const std::string& program);

// worker.cpp: the per-lcore poll loop (rte_eal_remote_launch entry point, arg = worker_state*).
struct worker_launch {
    worker_state* worker;
    gateway::shared* shared;
};
int worker_main(void* arg);

} // namespace espresso::dp
