// espresso-esp-pcap: runs the packet engine over a pcap file, for the component tests.
//
//   espresso-esp-pcap --config SAS.yaml --direction outbound|inbound --in IN.pcap --out OUT.pcap
//                     [--burst 32] [--json]
//
// Outbound: each packet is matched against the outbound SAs' selectors (source in `local`, destination
// in `remote`, first match) and protected. Inbound: each packet is classified, matched to an inbound SA
// by SPI and protocol, and verified/decrypted. Good packets are written in order; every other packet is
// counted. The summary (per-SA counters and drops from sa_stats, tool-level counts) goes to stdout.
//
// Exit status: 0 when the file was processed (whatever was dropped: tests read the counters),
// 1 on usage or I/O errors, 2 on configuration errors.
#include <pcap/pcap.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "espresso/config/loader.h"
#include "espresso/config/types.h"
#include "espresso/dp/counters.h"
#include "espresso/dp/crypto_core.h"
#include "espresso/dp/ipsec.h"
#include "espresso/dp/sa.h"

namespace {

using espresso::config::direction;
using espresso::config::ip_prefix;
using espresso::config::ipsec_protocol;
using espresso::dp::drop_reason;
using espresso::dp::sa_runtime;

constexpr size_t ether_bytes = 14;
constexpr uint16_t data_room = 4096 + RTE_PKTMBUF_HEADROOM;

struct options {
    std::string config;
    std::string in;
    std::string out;
    direction dir = direction::outbound;
    bool dir_set = false;
    uint16_t burst = 32;
    bool json = false;
};

[[noreturn]] void usage(const char* why)
{
    std::fprintf(stderr,
                 "espresso-esp-pcap: %s\n"
                 "usage: espresso-esp-pcap --config SAS.yaml --direction outbound|inbound --in IN.pcap "
                 "--out OUT.pcap [--burst N] [--json]\n",
                 why);
    std::exit(1);
}

options parse_options(int argc, char** argv)
{
    options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                usage("missing value after an option");
            }
            return argv[++i];
        };
        if (a == "--config") {
            o.config = value();
        } else if (a == "--in") {
            o.in = value();
        } else if (a == "--out") {
            o.out = value();
        } else if (a == "--direction") {
            std::string d = value();
            if (d == "outbound") {
                o.dir = direction::outbound;
            } else if (d == "inbound") {
                o.dir = direction::inbound;
            } else {
                usage("--direction must be outbound or inbound");
            }
            o.dir_set = true;
        } else if (a == "--burst") {
            int b = std::atoi(value().c_str());
            if (b < 1 || b > espresso::dp::max_burst) {
                usage("--burst must be between 1 and 64");
            }
            o.burst = static_cast<uint16_t>(b);
        } else if (a == "--json") {
            o.json = true;
        } else {
            usage("unknown option");
        }
    }
    if (o.config.empty() || o.in.empty() || o.out.empty() || !o.dir_set) {
        usage("--config, --direction, --in and --out are required");
    }
    return o;
}

// Tool-level counts (packets that never reached an SA, and what was written).
struct tool_counts {
    uint64_t read = 0;
    uint64_t written = 0;
    uint64_t no_policy = 0;
    uint64_t no_sa = 0;
    uint64_t to_control_plane = 0;
    uint64_t not_ipsec = 0;
    uint64_t not_ip = 0; // link layer did not carry IPv4/IPv6, or the packet was too big
    std::map<std::string, uint64_t> malformed;
    std::map<std::string, uint64_t> dropped; // by the engine, per reason (also in the SA counters)
};

struct packet_meta {
    rte_mbuf* m;
    timeval ts;
};

// Reads the IP version and addresses of a plaintext packet; nullopt when it is not IP or too short.
struct ip_addresses {
    uint8_t family;
    std::array<uint8_t, 16> src{};
    std::array<uint8_t, 16> dst{};
};

std::optional<ip_addresses> addresses_of(const uint8_t* p, size_t len)
{
    if (len < 1) {
        return std::nullopt;
    }
    ip_addresses a{};
    if ((p[0] >> 4) == 4 && len >= 20) {
        a.family = 4;
        std::memcpy(a.src.data(), p + 12, 4);
        std::memcpy(a.dst.data(), p + 16, 4);
        return a;
    }
    if ((p[0] >> 4) == 6 && len >= 40) {
        a.family = 6;
        std::memcpy(a.src.data(), p + 8, 16);
        std::memcpy(a.dst.data(), p + 24, 16);
        return a;
    }
    return std::nullopt;
}

// An unset prefix (family 0) matches everything.
bool prefix_contains(const ip_prefix& prefix, uint8_t family, const std::array<uint8_t, 16>& addr)
{
    if (prefix.address.family == 0) {
        return true;
    }
    if (prefix.address.family != family) {
        return false;
    }
    unsigned bits = prefix.length;
    for (size_t i = 0; bits > 0; ++i, bits = bits >= 8 ? bits - 8 : 0) {
        uint8_t mask = bits >= 8 ? 0xff : static_cast<uint8_t>(0xff << (8 - bits));
        if ((prefix.address.bytes[i] & mask) != (addr[i] & mask)) {
            return false;
        }
    }
    return true;
}

std::string json_escape(std::string_view s)
{
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else {
            out += c;
        }
    }
    return out;
}

class pcap_tool {
public:
    pcap_tool(options o, rte_mempool* pool, espresso::dp::crypto_core& core,
              std::vector<espresso::dp::sa_ptr> sas)
        : opt_(std::move(o)), pool_(pool), core_(core), sas_(std::move(sas))
    {
        for (auto& sa : sas_) {
            if (!sa->config.udp) {
                continue;
            }
            // Inbound ESP-in-UDP arrives on our side's port: the SA's destination port.
            udp_port_ = sa->config.udp->destination_port;
        }
    }

    int run()
    {
        char err[PCAP_ERRBUF_SIZE] = {};
        in_ = pcap_open_offline(opt_.in.c_str(), err);
        if (in_ == nullptr) {
            std::fprintf(stderr, "espresso-esp-pcap: %s: %s\n", opt_.in.c_str(), err);
            return 1;
        }
        linktype_ = pcap_datalink(in_);
        if (linktype_ != DLT_EN10MB && linktype_ != DLT_RAW && linktype_ != DLT_IPV4 &&
            linktype_ != DLT_IPV6 && linktype_ != 101) {
            std::fprintf(stderr, "espresso-esp-pcap: %s: unsupported link type %d\n", opt_.in.c_str(),
                         linktype_);
            return 1;
        }
        dead_ = pcap_open_dead(linktype_, 65535);
        out_ = dead_ != nullptr ? pcap_dump_open(dead_, opt_.out.c_str()) : nullptr;
        if (out_ == nullptr) {
            std::fprintf(stderr, "espresso-esp-pcap: %s: %s\n", opt_.out.c_str(),
                         dead_ != nullptr ? pcap_geterr(dead_) : "pcap_open_dead failed");
            return 1;
        }

        pcap_pkthdr* hdr = nullptr;
        const u_char* data = nullptr;
        int rc = 0;
        while ((rc = pcap_next_ex(in_, &hdr, &data)) == 1) {
            ++counts_.read;
            handle(hdr, data);
        }
        if (rc == PCAP_ERROR) {
            std::fprintf(stderr, "espresso-esp-pcap: %s: %s\n", opt_.in.c_str(), pcap_geterr(in_));
            return 1;
        }
        flush();
        pcap_dump_close(out_);
        out_ = nullptr;
        report();
        return 0;
    }

    ~pcap_tool()
    {
        if (out_ != nullptr) {
            pcap_dump_close(out_);
        }
        if (dead_ != nullptr) {
            pcap_close(dead_);
        }
        if (in_ != nullptr) {
            pcap_close(in_);
        }
    }

private:
    void handle(const pcap_pkthdr* hdr, const u_char* data)
    {
        const u_char* ip = data;
        size_t len = hdr->caplen;
        if (linktype_ == DLT_EN10MB) {
            if (len < ether_bytes) {
                ++counts_.not_ip;
                return;
            }
            uint16_t type = static_cast<uint16_t>(data[12] << 8 | data[13]);
            if (type != 0x0800 && type != 0x86dd) {
                ++counts_.not_ip;
                return;
            }
            ip += ether_bytes;
            len -= ether_bytes;
        }
        if (len > 4096) {
            ++counts_.not_ip;
            return;
        }
        rte_mbuf* m = rte_pktmbuf_alloc(pool_);
        if (m == nullptr) {
            throw std::runtime_error("mbuf pool exhausted");
        }
        char* p = rte_pktmbuf_append(m, static_cast<uint16_t>(len));
        if (p == nullptr && len > 0) {
            rte_pktmbuf_free(m);
            ++counts_.not_ip;
            return;
        }
        if (len > 0) {
            std::memcpy(p, ip, len);
        }
        packet_meta pm{m, hdr->ts};

        if (opt_.dir == direction::outbound) {
            sa_runtime* sa = select_outbound(ip, len);
            if (sa == nullptr) {
                ++counts_.no_policy;
                rte_pktmbuf_free(m);
                return;
            }
            enqueue(sa, pm);
            return;
        }

        auto cls = espresso::dp::classify_inbound(m, udp_port_);
        switch (cls.kind) {
        case espresso::dp::inbound_kind::esp:
        case espresso::dp::inbound_kind::ah: {
            espresso::dp::strip_ipv6_extensions(m, cls);
            auto proto = cls.kind == espresso::dp::inbound_kind::esp ? ipsec_protocol::esp
                                                                      : ipsec_protocol::ah;
            sa_runtime* sa = find_inbound(cls.spi, proto);
            if (sa == nullptr) {
                ++counts_.no_sa;
                rte_pktmbuf_free(m);
                return;
            }
            enqueue(sa, pm);
            return;
        }
        case espresso::dp::inbound_kind::control:
            ++counts_.to_control_plane;
            break;
        case espresso::dp::inbound_kind::other:
        case espresso::dp::inbound_kind::fragment: // this tool does not reassemble (espresso-dp does)
            ++counts_.not_ipsec;
            break;
        case espresso::dp::inbound_kind::malformed:
            ++counts_.malformed[std::string(reason_name(cls.reason))];
            break;
        }
        rte_pktmbuf_free(m);
    }

    static std::string_view reason_name(drop_reason r)
    {
        auto i = static_cast<size_t>(r);
        return i < espresso::dp::drop_reason_names.size() ? espresso::dp::drop_reason_names[i]
                                                           : std::string_view{"unknown"};
    }

    sa_runtime* select_outbound(const u_char* ip, size_t len)
    {
        auto a = addresses_of(ip, len);
        if (!a) {
            return nullptr;
        }
        for (auto& sa : sas_) {
            const auto& c = sa->config;
            // Without selectors, a transport-mode SA only takes packets of its own address family.
            bool family_ok = c.local.address.family != 0 || c.remote.address.family != 0 ||
                             c.mode == espresso::config::ipsec_mode::tunnel || c.source.family == 0 ||
                             c.source.family == a->family;
            if (family_ok && prefix_contains(c.local, a->family, a->src) &&
                prefix_contains(c.remote, a->family, a->dst)) {
                return sa.get();
            }
        }
        return nullptr;
    }

    sa_runtime* find_inbound(uint32_t spi, ipsec_protocol proto)
    {
        for (auto& sa : sas_) {
            if (sa->spi == spi && sa->config.protocol == proto) {
                return sa.get();
            }
        }
        return nullptr;
    }

    void enqueue(sa_runtime* sa, const packet_meta& pm)
    {
        if (sa != pending_sa_ || pending_.size() >= opt_.burst) {
            flush();
        }
        pending_sa_ = sa;
        pending_.push_back(pm);
    }

    void flush()
    {
        if (pending_.empty()) {
            return;
        }
        std::array<rte_mbuf*, espresso::dp::max_burst> pkts{};
        std::array<drop_reason, espresso::dp::max_burst> reasons{};
        auto n = static_cast<uint16_t>(pending_.size());
        for (uint16_t i = 0; i < n; ++i) {
            pkts[i] = pending_[i].m;
            reasons[i] = drop_reason::none;
        }
        uint16_t k = opt_.dir == direction::outbound
                         ? espresso::dp::outbound_process(core_, *pending_sa_, pkts.data(), n, reasons.data())
                         : espresso::dp::inbound_process(core_, *pending_sa_, pkts.data(), n, reasons.data());
        if (k > n) {
            std::fprintf(stderr, "espresso-esp-pcap: engine returned %u good of %u\n", k, n);
            std::abort();
        }
        for (uint16_t i = 0; i < k; ++i) {
            write(pkts[i], timestamp_of(pkts[i]));
            rte_pktmbuf_free(pkts[i]);
        }
        for (uint16_t i = k; i < n; ++i) {
            ++counts_.dropped[std::string(reason_name(reasons[i]))];
            rte_pktmbuf_free(pkts[i]);
        }
        pending_.clear();
        pending_sa_ = nullptr;
    }

    timeval timestamp_of(const rte_mbuf* m) const
    {
        for (const auto& pm : pending_) {
            if (pm.m == m) {
                return pm.ts;
            }
        }
        return timeval{};
    }

    void write(const rte_mbuf* m, timeval ts)
    {
        if (m->nb_segs != 1) {
            std::fprintf(stderr, "espresso-esp-pcap: engine returned a multi-segment mbuf\n");
            std::abort();
        }
        const auto* p = rte_pktmbuf_mtod(m, const uint8_t*);
        size_t len = rte_pktmbuf_data_len(m);
        std::vector<uint8_t> frame;
        if (linktype_ == DLT_EN10MB) {
            static constexpr uint8_t eth[12] = {0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02};
            frame.assign(eth, eth + 12);
            bool v6 = len > 0 && (p[0] >> 4) == 6;
            frame.push_back(v6 ? 0x86 : 0x08);
            frame.push_back(v6 ? 0xdd : 0x00);
        }
        frame.insert(frame.end(), p, p + len);
        pcap_pkthdr h{};
        h.ts = ts;
        h.caplen = static_cast<bpf_u_int32>(frame.size());
        h.len = h.caplen;
        pcap_dump(reinterpret_cast<u_char*>(out_), &h, frame.data());
        ++counts_.written;
    }

    void report() const
    {
        using espresso::dp::drop_reason_names;
        using espresso::dp::sa_counter_names;
        if (!opt_.json) {
            std::printf("read %llu, written %llu, no_policy %llu, no_sa %llu, to_control_plane %llu, "
                        "not_ipsec %llu, not_ip %llu\n",
                        static_cast<unsigned long long>(counts_.read),
                        static_cast<unsigned long long>(counts_.written),
                        static_cast<unsigned long long>(counts_.no_policy),
                        static_cast<unsigned long long>(counts_.no_sa),
                        static_cast<unsigned long long>(counts_.to_control_plane),
                        static_cast<unsigned long long>(counts_.not_ipsec),
                        static_cast<unsigned long long>(counts_.not_ip));
            for (const auto& [name, n] : counts_.malformed) {
                std::printf("malformed %s: %llu\n", name.c_str(), static_cast<unsigned long long>(n));
            }
            for (const auto& sa : sas_) {
                std::printf("SA spi 0x%08x %s:", sa->spi, sa->outbound() ? "outbound" : "inbound");
                for (size_t i = 0; i < sa_counter_names.size(); ++i) {
                    std::printf(" %.*s %llu", static_cast<int>(sa_counter_names[i].size()),
                                sa_counter_names[i].data(),
                                static_cast<unsigned long long>(
                                    sa->stats.get(static_cast<espresso::dp::sa_counter>(i))));
                }
                std::printf("\n  drops:");
                for (size_t i = 1; i < drop_reason_names.size(); ++i) {
                    uint64_t n = sa->stats.get(static_cast<drop_reason>(i));
                    if (n != 0) {
                        std::printf(" %.*s %llu", static_cast<int>(drop_reason_names[i].size()),
                                    drop_reason_names[i].data(), static_cast<unsigned long long>(n));
                    }
                }
                std::printf("\n");
            }
            return;
        }
        std::string j = "{";
        auto num = [](uint64_t v) { return std::to_string(v); };
        j += "\"read\": " + num(counts_.read) + ", \"written\": " + num(counts_.written) +
             ", \"no_policy\": " + num(counts_.no_policy) + ", \"no_sa\": " + num(counts_.no_sa) +
             ", \"to_control_plane\": " + num(counts_.to_control_plane) +
             ", \"not_ipsec\": " + num(counts_.not_ipsec) + ", \"not_ip\": " + num(counts_.not_ip);
        auto map_json = [&](const std::map<std::string, uint64_t>& m) {
            std::string s = "{";
            bool first = true;
            for (const auto& [name, n] : m) {
                s += (first ? "\"" : ", \"") + json_escape(name) + "\": " + num(n);
                first = false;
            }
            return s + "}";
        };
        j += ", \"malformed\": " + map_json(counts_.malformed);
        j += ", \"dropped\": " + map_json(counts_.dropped);
        j += ", \"sas\": [";
        bool first_sa = true;
        for (const auto& sa : sas_) {
            j += first_sa ? "" : ", ";
            first_sa = false;
            j += "{\"spi\": " + num(sa->spi) + ", \"direction\": \"" +
                 (sa->outbound() ? "outbound" : "inbound") + "\", \"protocol\": \"" +
                 (sa->config.protocol == ipsec_protocol::ah ? "ah" : "esp") + "\", \"counters\": {";
            for (size_t i = 0; i < sa_counter_names.size(); ++i) {
                j += (i == 0 ? "\"" : ", \"") + std::string(sa_counter_names[i]) + "\": " +
                     num(sa->stats.get(static_cast<espresso::dp::sa_counter>(i)));
            }
            j += "}, \"drops\": {";
            for (size_t i = 1; i < drop_reason_names.size(); ++i) {
                j += (i == 1 ? "\"" : ", \"") + std::string(drop_reason_names[i]) + "\": " +
                     num(sa->stats.get(static_cast<drop_reason>(i)));
            }
            j += "}, \"seq\": " + num(sa->seq.load()) + "}";
        }
        j += "]}";
        std::printf("%s\n", j.c_str());
    }

    options opt_;
    rte_mempool* pool_;
    espresso::dp::crypto_core& core_;
    std::vector<espresso::dp::sa_ptr> sas_;
    uint16_t udp_port_ = 4500;
    pcap_t* in_ = nullptr;
    pcap_t* dead_ = nullptr;
    pcap_dumper_t* out_ = nullptr;
    int linktype_ = 0;
    tool_counts counts_;
    sa_runtime* pending_sa_ = nullptr;
    std::vector<packet_meta> pending_;
};

} // namespace

int main(int argc, char** argv)
{
    options opt = parse_options(argc, argv);

    // DPDK 22.11 turns --no-huge into legacy memory mode, which refuses --in-memory; --no-shconf
    // gives the same "no files, several instances at once" property.
    std::array<const char*, 10> eal_args = {"espresso-esp-pcap", "--no-huge",      "--no-pci",
                                            "--no-shconf",       "-l",             "0",
                                            "-m",                "256",            "--no-telemetry",
                                            "--log-level=lib.eal:error"};
    if (rte_eal_init(static_cast<int>(eal_args.size()), const_cast<char**>(eal_args.data())) < 0) {
        std::fprintf(stderr, "espresso-esp-pcap: rte_eal_init failed: %s\n", rte_strerror(rte_errno));
        return 1;
    }
    int status = 1;
    try {
        rte_mempool* pool = rte_pktmbuf_pool_create("pcap_pool", 4095, 0, 0, data_room, SOCKET_ID_ANY);
        if (pool == nullptr) {
            throw std::runtime_error(std::string("mbuf pool: ") + rte_strerror(rte_errno));
        }
        espresso::dp::crypto_core core;

        espresso::config::gateway_config cfg;
        try {
            cfg = espresso::config::load_file(opt.config);
        } catch (const espresso::config::config_error& e) {
            std::fprintf(stderr, "%s\n", e.what());
            rte_eal_cleanup();
            return 2;
        }
        std::vector<espresso::dp::sa_ptr> sas;
        for (auto& c : cfg.security_associations) {
            if (c.dir != opt.dir) {
                espresso::config::wipe_keys(c);
                continue;
            }
            try {
                sas.push_back(espresso::dp::make_sa(c, core));
            } catch (const std::invalid_argument& e) {
                std::fprintf(stderr, "%s: SA 0x%08x: %s\n", c.origin.c_str(), c.spi, e.what());
                rte_eal_cleanup();
                return 2;
            }
            espresso::config::wipe_keys(c);
        }
        {
            pcap_tool tool(opt, pool, core, std::move(sas));
            status = tool.run();
        }
        rte_mempool_free(pool);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "espresso-esp-pcap: %s\n", e.what());
        status = 1;
    }
    rte_eal_cleanup();
    return status;
}
