// esp-bench: one core, in-memory mbufs, ESP encrypt/decrypt throughput against raw IPsec-MB.
//
// For every (operation, algorithm, size) point the same run measures
//   - ESP:  outbound_process / inbound_process on bursts of 32 mbufs (tunnel mode, IPv4 outer);
//   - raw:  the crypto an ESP packet of that size needs, submitted straight to the same IMB_MGR with
//           the burst job API on the same mbufs, without any ESP header/trailer work;
// and prints one JSON object per line, then a table. `ratio` = ESP Mpps / raw Mpps.
//
// Fairness rules (see perf/RESULTS.md):
//  - both sides refill every mbuf before every burst (rte_pktmbuf_reset + memcpy of the plaintext or
//    of a pre-encrypted ESP packet), because the engine rewrites packets in place. Neither side
//    subtracts it; the refill alone is measured and reported as `refill_cycles_per_pkt`;
//  - ESP and raw run in interleaved chunks of 2 ms (--chunk-ms) for --seconds per side; every burst
//    is timed and the median burst of each side is reported: on a shared 2-core machine some bursts
//    are hit by preemption or cache pollution from other processes, the median ignores them, and
//    both sides are sampled under the same conditions;
//  - the decrypt benchmark replays a fixed pool of ciphertexts, so the inbound SA has anti-replay
//    off (replay_window = 0). Everything else (ICV check, padding check, selector check) is on.
//
// Not a hot-path file: plain loops, exceptions at start-up, printf output.
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ip.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_udp.h>

#include <intel-ipsec-mb.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "espresso/config/types.h"
#include "espresso/dp/counters.h"
#include "espresso/dp/crypto_core.h"
#include "espresso/dp/ipsec.h"
#include "espresso/dp/sa.h"
#include "imb_burst.h"

namespace {

using espresso::config::cipher_alg;
using espresso::config::integ_alg;
using espresso::config::sa_config;
namespace dp = espresso::dp;

constexpr uint16_t outer_ip_bytes = 20; // tunnel mode, IPv4 outer, no UDP encapsulation
constexpr uint16_t esp_header_bytes = 8;
constexpr uint16_t esp_trailer_bytes = 2; // pad length + next header
constexpr size_t template_slots = 128;    // distinct plaintexts / ciphertexts copied from
constexpr uint16_t template_room = 2048;

// Simple IMIX in IP terms: 64, 576 and 1500-byte IP packets in the ratio 7:4:1, interleaved so
// that every burst sees a mix rather than runs of one size. Mean 354.33 bytes.
constexpr std::array<uint16_t, 12> imix_pattern = {64, 576, 64, 64, 576, 64, 1500, 64, 576, 64, 64, 576};
constexpr int imix_size = 0; // "size" value that means IMIX

// ---------------------------------------------------------------------------------------------
// Algorithms

struct algorithm {
    std::string_view name;
    cipher_alg cipher;
    uint8_t key_bytes;  // AES key
    uint8_t salt_bytes; // RFC 4106 / 4543
    integ_alg integ;
    uint8_t integ_key_bytes;
    // ESP geometry
    uint8_t iv_bytes;
    uint8_t block_bytes;
    uint8_t icv_bytes;
    // IPsec-MB
    IMB_CIPHER_MODE imb_cipher;
    IMB_HASH_ALG imb_hash;
};

constexpr std::array<algorithm, 6> algorithms = {{
    {"aes128gcm16", cipher_alg::aes_gcm16, 16, 4, integ_alg::none, 0, 8, 4, 16, IMB_CIPHER_GCM, IMB_AUTH_AES_GMAC},
    {"aes256gcm16", cipher_alg::aes_gcm16, 32, 4, integ_alg::none, 0, 8, 4, 16, IMB_CIPHER_GCM, IMB_AUTH_AES_GMAC},
    {"aes128+sha256", cipher_alg::aes_cbc, 16, 0, integ_alg::hmac_sha256_128, 32, 16, 16, 16, IMB_CIPHER_CBC,
     IMB_AUTH_HMAC_SHA_256},
    {"aes256+sha512", cipher_alg::aes_cbc, 32, 0, integ_alg::hmac_sha512_256, 64, 16, 16, 32, IMB_CIPHER_CBC,
     IMB_AUTH_HMAC_SHA_512},
    // RFC 4543: no encryption, SPI..next header authenticated. Raw side: a GMAC hash job.
    {"aes128gmac", cipher_alg::aes_gmac, 16, 4, integ_alg::none, 0, 8, 4, 16, IMB_CIPHER_NULL,
     IMB_AUTH_AES_GMAC_128},
    {"null+sha256", cipher_alg::null, 0, 0, integ_alg::hmac_sha256_128, 32, 0, 4, 16, IMB_CIPHER_NULL,
     IMB_AUTH_HMAC_SHA_256},
}};

const algorithm* find_algorithm(std::string_view name) {
    for (const auto& a : algorithms) {
        if (a.name == name) {
            return &a;
        }
    }
    return nullptr;
}

// ESP payload (inner packet + padding + trailer) for an inner packet of `inner` bytes.
uint16_t esp_payload_bytes(const algorithm& a, uint16_t inner) {
    const uint16_t b = a.block_bytes;
    return static_cast<uint16_t>((inner + esp_trailer_bytes + b - 1) / b * b);
}

uint16_t esp_packet_bytes(const algorithm& a, uint16_t inner) {
    return static_cast<uint16_t>(outer_ip_bytes + esp_header_bytes + a.iv_bytes + esp_payload_bytes(a, inner) +
                                 a.icv_bytes);
}

// ---------------------------------------------------------------------------------------------
// Options

struct options {
    std::vector<const algorithm*> algs;
    std::vector<int> sizes{64, 128, 512, 1420, imix_size};
    std::vector<std::string> ops{"encrypt", "decrypt"};
    double seconds = 0.5;  // measuring time per point and side (raw, ESP), in chunks
    double chunk_ms = 2.0; // one timed chunk; the fastest chunk of each side is reported
    uint16_t burst = 32;
    uint32_t working_set = 4096;
    unsigned lcore = 0;
    bool hugepages = false;
    bool raw_only = false;
    bool table = true;
    uint32_t spread = 1; // packets go to this many SAs in turn, one engine call per burst (many tunnels)
    bool per_sa_calls = false; // with --spread: one engine call per packet's SA instead (for comparison)
};

std::vector<std::string> split(std::string_view s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= s.size()) {
        size_t comma = s.find(',', start);
        if (comma == std::string_view::npos) {
            comma = s.size();
        }
        if (comma > start) {
            out.emplace_back(s.substr(start, comma - start));
        }
        start = comma + 1;
    }
    return out;
}

[[noreturn]] void usage(int code) {
    std::fprintf(code == 0 ? stdout : stderr,
                 "usage: esp-bench [--quick] [--alg a,b,...|all] [--size 64,128,512,1420,imix]\n"
                 "                 [--op encrypt,decrypt] [--seconds S] [--chunk-ms MS] [--burst N]\n"
                 "                 [--working-set N] [--lcore N] [--hugepages] [--raw-only] [--no-table]\n"
                 "                 [--spread N]  (the packets of a burst go to N SAs in turn,\n"
                 "                               one outbound/inbound_process_groups call per burst, as a\n"
                 "                               worker does with traffic of many tunnels)\n"
                 "                 [--per-sa-calls]  (with --spread: one outbound_process or\n"
                 "                               inbound_process call per packet's SA instead)\n"
                 "algorithms:");
    for (const auto& a : algorithms) {
        std::fprintf(code == 0 ? stdout : stderr, " %.*s", static_cast<int>(a.name.size()), a.name.data());
    }
    std::fprintf(code == 0 ? stdout : stderr, "\n");
    std::exit(code);
}

options parse_options(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        auto value = [&]() -> std::string_view {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "esp-bench: %s needs a value\n", argv[i]);
                usage(2);
            }
            return argv[++i];
        };
        if (arg == "--quick") {
            o.seconds = 0.05;
        } else if (arg == "--alg") {
            o.algs.clear();
            for (const auto& name : split(value())) {
                if (name == "all") {
                    for (const auto& a : algorithms) {
                        o.algs.push_back(&a);
                    }
                } else if (const auto* a = find_algorithm(name)) {
                    o.algs.push_back(a);
                } else {
                    std::fprintf(stderr, "esp-bench: unknown algorithm '%s'\n", name.c_str());
                    usage(2);
                }
            }
        } else if (arg == "--size") {
            o.sizes.clear();
            for (const auto& s : split(value())) {
                if (s == "imix") {
                    o.sizes.push_back(imix_size);
                } else {
                    int v = std::atoi(s.c_str());
                    if (v < 28 || v > 1500) {
                        std::fprintf(stderr, "esp-bench: size %s outside 28..1500\n", s.c_str());
                        usage(2);
                    }
                    o.sizes.push_back(v);
                }
            }
        } else if (arg == "--op") {
            o.ops = split(value());
            for (const auto& op : o.ops) {
                if (op != "encrypt" && op != "decrypt") {
                    usage(2);
                }
            }
        } else if (arg == "--seconds") {
            o.seconds = std::atof(std::string(value()).c_str());
        } else if (arg == "--chunk-ms") {
            o.chunk_ms = std::max(0.1, std::atof(std::string(value()).c_str()));
        } else if (arg == "--burst") {
            o.burst = static_cast<uint16_t>(std::clamp(std::atoi(std::string(value()).c_str()), 1,
                                                       static_cast<int>(dp::max_burst)));
        } else if (arg == "--working-set") {
            o.working_set = static_cast<uint32_t>(std::max(64, std::atoi(std::string(value()).c_str())));
        } else if (arg == "--lcore") {
            o.lcore = static_cast<unsigned>(std::atoi(std::string(value()).c_str()));
        } else if (arg == "--hugepages") {
            o.hugepages = true;
        } else if (arg == "--raw-only") {
            o.raw_only = true;
        } else if (arg == "--no-table") {
            o.table = false;
        } else if (arg == "--spread") {
            o.spread = static_cast<uint32_t>(std::clamp(std::atoi(std::string(value()).c_str()), 1, 1 << 20));
        } else if (arg == "--per-sa-calls") {
            o.per_sa_calls = true;
        } else if (arg == "-h" || arg == "--help") {
            usage(0);
        } else {
            std::fprintf(stderr, "esp-bench: unknown option %s\n", argv[i]);
            usage(2);
        }
    }
    if (o.algs.empty()) {
        for (const auto& a : algorithms) {
            o.algs.push_back(&a);
        }
    }
    o.working_set = (o.working_set + o.burst - 1) / o.burst * o.burst;
    return o;
}

// ---------------------------------------------------------------------------------------------
// Packets

// Inner IPv4/UDP packet of `bytes` bytes, 10.1.0.x -> 10.2.0.x, UDP 5000 -> 6000, valid checksum.
void build_inner(uint8_t* out, uint16_t bytes, uint32_t index) {
    std::memset(out, 0, bytes);
    auto* ip = reinterpret_cast<rte_ipv4_hdr*>(out);
    ip->version_ihl = 0x45;
    ip->total_length = rte_cpu_to_be_16(bytes);
    ip->packet_id = rte_cpu_to_be_16(static_cast<uint16_t>(index));
    ip->fragment_offset = rte_cpu_to_be_16(RTE_IPV4_HDR_DF_FLAG);
    ip->time_to_live = 64;
    ip->next_proto_id = IPPROTO_UDP;
    ip->src_addr = rte_cpu_to_be_32(RTE_IPV4(10, 1, 0, 1 + index % 200));
    ip->dst_addr = rte_cpu_to_be_32(RTE_IPV4(10, 2, 0, 1 + index % 200));
    ip->hdr_checksum = rte_ipv4_cksum(ip);
    auto* udp = reinterpret_cast<rte_udp_hdr*>(out + sizeof(rte_ipv4_hdr));
    udp->src_port = rte_cpu_to_be_16(5000);
    udp->dst_port = rte_cpu_to_be_16(6000);
    udp->dgram_len = rte_cpu_to_be_16(static_cast<uint16_t>(bytes - sizeof(rte_ipv4_hdr)));
    for (uint16_t i = sizeof(rte_ipv4_hdr) + sizeof(rte_udp_hdr); i < bytes; ++i) {
        out[i] = static_cast<uint8_t>(i * 7 + index);
    }
}

uint16_t inner_size_of(int size, size_t slot) {
    return size == imix_size ? imix_pattern[slot % imix_pattern.size()] : static_cast<uint16_t>(size);
}

double mean_inner_bytes(int size) {
    if (size != imix_size) {
        return size;
    }
    double sum = 0;
    for (auto s : imix_pattern) {
        sum += s;
    }
    return sum / imix_pattern.size();
}

std::string size_label(int size) { return size == imix_size ? "imix" : std::to_string(size); }

// A copy source: the bytes one mbuf is refilled with before each burst.
struct packet_template {
    alignas(64) std::array<uint8_t, template_room> bytes{};
    uint16_t length = 0;       // bytes copied into the mbuf
    uint16_t inner_length = 0; // the inner IP packet it carries
};

inline void refill(rte_mbuf* m, const packet_template& t) {
    rte_pktmbuf_reset(m);
    std::memcpy(rte_pktmbuf_mtod(m, uint8_t*), t.bytes.data(), t.length);
    m->data_len = t.length;
    m->pkt_len = t.length;
}

// ---------------------------------------------------------------------------------------------
// SAs

sa_config make_config(const algorithm& a, espresso::config::direction dir) {
    sa_config c;
    c.spi = 0x1000;
    c.dir = dir;
    c.protocol = espresso::config::ipsec_protocol::esp;
    c.mode = espresso::config::ipsec_mode::tunnel;
    c.source.family = 4;
    c.source.bytes = {192, 0, 2, 1};
    c.destination.family = 4;
    c.destination.bytes = {192, 0, 2, 2};
    c.cipher = a.cipher;
    c.cipher_key_bytes = a.key_bytes;
    c.cipher_key_length = static_cast<uint8_t>(a.key_bytes + a.salt_bytes);
    for (size_t i = 0; i < c.cipher_key_length; ++i) {
        c.cipher_key[i] = static_cast<uint8_t>(0x11 * (i + 1));
    }
    c.integ = a.integ;
    c.integ_key_length = a.integ_key_bytes;
    for (size_t i = 0; i < c.integ_key_length; ++i) {
        c.integ_key[i] = static_cast<uint8_t>(0xa5 ^ i);
    }
    // The decrypt benchmark replays a fixed pool of ciphertexts: anti-replay must be off.
    c.replay_window = dir == espresso::config::direction::inbound ? 0 : 128;
    c.local.address.family = 4;
    c.local.address.bytes = {10, 0, 0, 0};
    c.local.length = 8;
    c.remote = c.local;
    c.origin = "esp-bench";
    return c;
}

// ---------------------------------------------------------------------------------------------
// Raw IPsec-MB: the same crypto an ESP packet needs, nothing else.

struct raw_keys {
    alignas(64) gcm_key_data gcm{};
    alignas(16) uint32_t enc[60]{};
    alignas(16) uint32_t dec[60]{};
    // HMAC states: the throughput does not depend on their value, so they are not derived from a key.
    alignas(16) uint8_t ipad[64]{};
    alignas(16) uint8_t opad[64]{};
};

void expand_raw_keys(IMB_MGR* mgr, const algorithm& a, raw_keys& k) {
    uint8_t key[32];
    for (size_t i = 0; i < sizeof(key); ++i) {
        key[i] = static_cast<uint8_t>(0x11 * (i + 1));
    }
    for (size_t i = 0; i < sizeof(k.ipad); ++i) {
        k.ipad[i] = static_cast<uint8_t>(0x36 ^ i);
        k.opad[i] = static_cast<uint8_t>(0x5c ^ i);
    }
    if (a.key_bytes == 16) {
        IMB_AES128_GCM_PRE(mgr, key, &k.gcm);
        IMB_AES_KEYEXP_128(mgr, key, k.enc, k.dec);
    } else if (a.key_bytes == 32) {
        IMB_AES256_GCM_PRE(mgr, key, &k.gcm);
        IMB_AES_KEYEXP_256(mgr, key, k.enc, k.dec);
    }
}

struct raw_context {
    IMB_MGR* mgr;
    const algorithm* alg;
    const raw_keys* keys;
    bool encrypt;
    uint64_t counter = 0;
    uint64_t errors = 0;
};

// One burst of raw jobs. Buffer layout per packet, relative to `esp` (the ESP header position):
// [SPI, seq][IV][payload: inner + pad + trailer][ICV]. Encrypt: `esp` sits in the headroom in front
// of the refilled plaintext, exactly where the engine would write the ESP header. Decrypt: `esp`
// follows the 20-byte outer IPv4 header of the refilled ESP packet.
void raw_burst(raw_context& rc, rte_mbuf** pkts, const uint16_t* inner, uint16_t n) {
    const algorithm& a = *rc.alg;
    const raw_keys& k = *rc.keys;
    alignas(16) uint8_t nonce[dp::max_burst][16];
    IMB_JOB* jobs[dp::max_burst];
    uint32_t got = IMB_GET_NEXT_BURST(rc.mgr, n, jobs);
    if (got < n) [[unlikely]] {
        IMB_FLUSH_BURST(rc.mgr, dp::max_burst, jobs);
        got = IMB_GET_NEXT_BURST(rc.mgr, n, jobs);
        if (got < n) {
            rc.errors += n;
            return;
        }
    }
    const uint16_t hdr = static_cast<uint16_t>(esp_header_bytes + a.iv_bytes);
    for (uint16_t i = 0; i < n; ++i) {
        IMB_JOB* j = jobs[i];
        uint8_t* data = rte_pktmbuf_mtod(pkts[i], uint8_t*);
        uint8_t* esp = rc.encrypt ? data - hdr : data + outer_ip_bytes;
        const uint16_t payload = esp_payload_bytes(a, inner[i]);
        j->src = esp;
        j->dst = esp + hdr; // IPsec-MB: dst is where the cipher output starts (src offset not applied)
        j->cipher_direction = rc.encrypt ? IMB_DIR_ENCRYPT : IMB_DIR_DECRYPT;
        j->chain_order = rc.encrypt ? IMB_ORDER_CIPHER_HASH : IMB_ORDER_HASH_CIPHER;
        j->cipher_mode = a.imb_cipher;
        j->hash_alg = a.imb_hash;
        j->key_len_in_bytes = a.key_bytes;
        j->auth_tag_output = esp + hdr + payload;
        j->auth_tag_output_len_in_bytes = a.icv_bytes;
        const uint64_t seq = ++rc.counter;
        switch (a.imb_cipher) {
        case IMB_CIPHER_GCM:
            std::memcpy(nonce[i], &k.gcm, 4); // salt stand-in
            std::memcpy(nonce[i] + 4, &seq, 8);
            j->enc_keys = &k.gcm;
            j->dec_keys = &k.gcm;
            j->iv = nonce[i];
            j->iv_len_in_bytes = 12;
            j->cipher_start_src_offset_in_bytes = hdr;
            j->msg_len_to_cipher_in_bytes = payload;
            j->hash_start_src_offset_in_bytes = hdr;
            j->msg_len_to_hash_in_bytes = payload;
            j->u.GCM.aad = esp; // RFC 4106 §5: SPI || sequence number
            j->u.GCM.aad_len_in_bytes = 8;
            break;
        case IMB_CIPHER_CBC:
            j->enc_keys = k.enc;
            j->dec_keys = k.dec;
            j->iv = esp + esp_header_bytes;
            j->iv_len_in_bytes = 16;
            j->cipher_start_src_offset_in_bytes = hdr;
            j->msg_len_to_cipher_in_bytes = payload;
            j->hash_start_src_offset_in_bytes = 0; // RFC 4303 §2.8: ICV over SPI..trailer
            j->msg_len_to_hash_in_bytes = hdr + payload;
            j->u.HMAC._hashed_auth_key_xor_ipad = k.ipad;
            j->u.HMAC._hashed_auth_key_xor_opad = k.opad;
            break;
        default: // NULL cipher: GMAC (RFC 4543) or HMAC over SPI..trailer
            j->enc_keys = nullptr;
            j->dec_keys = nullptr;
            j->iv = nullptr;
            j->iv_len_in_bytes = 0;
            j->cipher_start_src_offset_in_bytes = 0;
            j->msg_len_to_cipher_in_bytes = 0;
            j->hash_start_src_offset_in_bytes = 0;
            j->msg_len_to_hash_in_bytes = hdr + payload;
            if (a.imb_hash == IMB_AUTH_AES_GMAC_128 || a.imb_hash == IMB_AUTH_AES_GMAC_256) {
                std::memcpy(nonce[i], &k.gcm, 4);
                std::memcpy(nonce[i] + 4, &seq, 8);
                j->u.GMAC._key = &k.gcm;
                j->u.GMAC._iv = nonce[i];
                j->u.GMAC.iv_len_in_bytes = 12;
            } else {
                j->u.HMAC._hashed_auth_key_xor_ipad = k.ipad;
                j->u.HMAC._hashed_auth_key_xor_opad = k.opad;
            }
            break;
        }
    }
    uint32_t done = IMB_SUBMIT_BURST(rc.mgr, n, jobs);
    if (done == 0 && n != 0) [[unlikely]] {
        int err = imb_get_errno(rc.mgr);
        if (err != 0) {
            std::fprintf(stderr, "esp-bench: raw submit failed: %s\n", imb_get_strerror(err));
            std::exit(1);
        }
    }
    for (uint32_t i = 0; i < done; ++i) {
        rc.errors += jobs[i]->status != IMB_STATUS_COMPLETED;
    }
    while (done < n) { // multi-buffer lanes not full: force completion, as the engine must
        uint32_t f = IMB_FLUSH_BURST(rc.mgr, n - done, jobs);
        for (uint32_t i = 0; i < f; ++i) {
            rc.errors += jobs[i]->status != IMB_STATUS_COMPLETED;
        }
        done += f;
        if (f == 0) {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement

struct working_set {
    std::vector<rte_mbuf*> mbufs;
    std::vector<const packet_template*> source; // per mbuf
    std::vector<uint16_t> inner;                // per mbuf: inner packet bytes
    size_t cursor = 0;                          // next burst starts here (kept across chunks)
};

// Cycles of every timed burst of one side (refill + processing of `burst` packets).
struct burst_times {
    std::vector<uint32_t> cycles;
    uint64_t packets = 0;

    // Median burst / packets per burst. Bursts hit by a preemption or a context switch are the
    // slow tail and do not move the median; the fast tail cannot be faster than the work itself.
    double cycles_per_pkt(uint16_t burst) {
        if (cycles.empty()) {
            return 0;
        }
        auto mid = cycles.begin() + static_cast<std::ptrdiff_t>(cycles.size() / 2);
        std::nth_element(cycles.begin(), mid, cycles.end());
        return static_cast<double>(*mid) / burst;
    }
};

// Runs `process(pkts, inner, n)` on consecutive bursts of the working set, refilling each mbuf first,
// until `cycles_budget` TSC cycles have passed; records each burst's cycles into `times`.
template <class Process>
uint64_t run_for(working_set& ws, uint16_t burst, uint64_t cycles_budget, Process&& process,
                 burst_times* times = nullptr) {
    const size_t ws_size = ws.mbufs.size();
    size_t cursor = ws.cursor;
    const uint64_t start = rte_rdtsc();
    uint64_t prev = start;
    uint64_t now = start;
    do {
        rte_mbuf* pkts[dp::max_burst];
        for (uint16_t i = 0; i < burst; ++i) {
            pkts[i] = ws.mbufs[cursor + i];
            refill(pkts[i], *ws.source[cursor + i]);
        }
        process(pkts, &ws.inner[cursor], burst);
        cursor += burst;
        if (cursor >= ws_size) {
            cursor = 0;
        }
        now = rte_rdtsc();
        if (times != nullptr) {
            times->cycles.push_back(static_cast<uint32_t>(std::min<uint64_t>(now - prev, UINT32_MAX)));
            times->packets += burst;
        }
        prev = now;
    } while (now - start < cycles_budget);
    ws.cursor = cursor;
    return now - start;
}

struct point {
    std::string op;
    const algorithm* alg;
    int size;
    double mpps = 0, gbps = 0, cycles_per_pkt = 0, raw_mpps = 0, raw_cycles_per_pkt = 0, ratio = 0;
    double refill_cycles_per_pkt = 0;
    uint64_t packets = 0; // timed, both sides
    uint64_t errors = 0;
    std::string error_text;
};

bool goal_applies(const point& p) { return p.alg->name == "aes128gcm16" && (p.size == 64 || p.size == 1420); }
double goal_of(const point& p) { return p.size == 1420 ? 0.9 : 0.6; }

class bench {
public:
    bench(const options& o, rte_mempool* pool) : opt_(o), pool_(pool) {
        ws_.mbufs.resize(o.working_set);
        if (rte_pktmbuf_alloc_bulk(pool_, ws_.mbufs.data(), static_cast<unsigned>(ws_.mbufs.size())) != 0) {
            throw std::runtime_error("cannot allocate the working set of mbufs");
        }
        ws_.source.resize(o.working_set);
        ws_.inner.resize(o.working_set);
        plain_.resize(template_slots);
        cipher_.resize(template_slots);
        hz_ = rte_get_tsc_hz();
        // As a worker does (worker.cpp): outbound counters in a per-core table, written back on a
        // flush (here after every chunk of ESP bursts, and before the SAs are replaced).
        core_.defer_outbound_counters();
    }
    ~bench() {
        core_.flush_counters(); // while the SAs are still there
        rte_pktmbuf_free_bulk(ws_.mbufs.data(), static_cast<unsigned>(ws_.mbufs.size()));
    }

    const dp::crypto_core& core() const { return core_; }

    point measure(const std::string& op, const algorithm& a, int size) {
        point p{op, &a, size};
        const bool encrypt = op == "encrypt";
        try {
            prepare(a, size, encrypt, p);
        } catch (const std::exception& e) {
            p.error_text = e.what();
            return p;
        }
        if (!p.error_text.empty()) {
            return p;
        }
        raw_keys keys;
        expand_raw_keys(core_.mgr(), a, keys);
        // The raw limit runs its chained jobs on the manager the engine hashes with (SHA-NI for
        // HMAC-SHA-1/256 where the core has it, crypto_core::sha_mgr). The engine runs the AES-CBC
        // pass on the AVX2 manager instead, which measured faster at 512 B and more: there the
        // engine/raw ratio of CBC+HMAC is not only the engine's overhead and may pass 1.
        raw_context rc{dp::hash_manager(core_, a.imb_hash), &a, &keys, encrypt};
        auto raw = [&](rte_mbuf** pkts, const uint16_t* inner, uint16_t n) { raw_burst(rc, pkts, inner, n); };
        dp::sa_runtime* sa = encrypt ? out_sa_.get() : in_sa_.get();
        uint64_t esp_errors = 0;
        dp::drop_reason first_reason = dp::drop_reason::none;
        auto esp = [&](rte_mbuf** pkts, const uint16_t*, uint16_t n) {
            dp::drop_reason reasons[dp::max_burst];
            if (!spread_sas_.empty() && opt_.per_sa_calls) {
                // One engine call per SA (here: per packet), for comparison with the grouped calls.
                for (uint16_t i = 0; i < n; ++i) {
                    dp::sa_runtime& s = *spread_sas_[next_sa_];
                    next_sa_ = next_sa_ + 1 == spread_sas_.size() ? 0 : next_sa_ + 1;
                    if ((encrypt ? dp::outbound_process(core_, s, &pkts[i], 1, &reasons[i])
                                 : dp::inbound_process(core_, s, &pkts[i], 1, &reasons[i])) != 1) [[unlikely]] {
                        ++esp_errors;
                        first_reason = reasons[i];
                    }
                }
                return;
            }
            if (encrypt && !spread_sas_.empty()) {
                // One group per packet, all in one engine call (what the worker does).
                dp::outbound_group groups[dp::max_burst];
                for (uint16_t i = 0; i < n; ++i) {
                    groups[i].sa = spread_sas_[next_sa_].get();
                    next_sa_ = next_sa_ + 1 == spread_sas_.size() ? 0 : next_sa_ + 1;
                    groups[i].pkts = &pkts[i];
                    groups[i].reasons = &reasons[i];
                    groups[i].n = 1;
                }
                dp::outbound_process_groups(core_, groups, n);
                for (uint16_t i = 0; i < n; ++i) {
                    if (groups[i].good != 1) [[unlikely]] {
                        ++esp_errors;
                        first_reason = reasons[i];
                    }
                }
                return;
            }
            if (!spread_sas_.empty()) {
                dp::inbound_group groups[dp::max_burst];
                for (uint16_t i = 0; i < n; ++i) {
                    groups[i].sa = spread_sas_[next_sa_].get();
                    next_sa_ = next_sa_ + 1 == spread_sas_.size() ? 0 : next_sa_ + 1;
                    groups[i].pkts = &pkts[i];
                    groups[i].reasons = &reasons[i];
                    groups[i].n = 1;
                }
                dp::inbound_process_groups(core_, groups, n);
                for (uint16_t i = 0; i < n; ++i) {
                    if (groups[i].good != 1) [[unlikely]] {
                        ++esp_errors;
                        first_reason = reasons[i];
                    }
                }
                return;
            }
            uint16_t k = encrypt ? dp::outbound_process(core_, *sa, pkts, n, reasons)
                                 : dp::inbound_process(core_, *sa, pkts, n, reasons);
            if (k != n) [[unlikely]] {
                esp_errors += n - k;
                first_reason = reasons[k];
            }
        };
        auto copy_only = [](rte_mbuf**, const uint16_t*, uint16_t) {};

        // Interleave short chunks of refill-only, raw and ESP work, time every burst, and report the
        // median burst of each side. Other processes on this 2-core machine preempt us and pollute
        // the caches now and then; interleaving exposes both sides to the same disturbance, and the
        // median ignores the bursts it hits.
        const double hz = static_cast<double>(hz_);
        const auto chunk = static_cast<uint64_t>(opt_.chunk_ms * 1e-3 * hz) + 1;
        const auto budget = static_cast<uint64_t>(opt_.seconds * hz);
        for (int w = 0; w < 5; ++w) { // warm-up: caches, TLB, first touch of every mbuf
            run_for(ws_, opt_.burst, chunk, copy_only);
            run_for(ws_, opt_.burst, chunk, raw);
            if (!opt_.raw_only) {
                run_for(ws_, opt_.burst, chunk, esp);
                core_.flush_counters();
            }
        }
        burst_times t_raw, t_esp, t_copy;
        uint64_t spent_raw = 0;
        for (unsigned round = 0; spent_raw < budget; ++round) {
            if (round % 4 == 0) {
                run_for(ws_, opt_.burst, chunk, copy_only, &t_copy);
            }
            spent_raw += run_for(ws_, opt_.burst, chunk, raw, &t_raw);
            if (!opt_.raw_only) {
                run_for(ws_, opt_.burst, chunk, esp, &t_esp);
                core_.flush_counters();
            }
        }
        p.raw_cycles_per_pkt = t_raw.cycles_per_pkt(opt_.burst);
        p.raw_mpps = hz / p.raw_cycles_per_pkt / 1e6;
        p.refill_cycles_per_pkt = t_copy.cycles_per_pkt(opt_.burst);
        p.packets = t_raw.packets + t_esp.packets;
        if (opt_.raw_only) {
            p.cycles_per_pkt = p.raw_cycles_per_pkt;
            p.mpps = p.raw_mpps;
        } else {
            p.cycles_per_pkt = t_esp.cycles_per_pkt(opt_.burst);
            p.mpps = hz / p.cycles_per_pkt / 1e6;
        }
        p.gbps = mean_inner_bytes(size) * 8 * p.mpps / 1000;
        p.ratio = p.mpps / p.raw_mpps;
        p.errors = esp_errors + rc.errors;
        if (esp_errors != 0) {
            p.error_text = "ESP dropped " + std::to_string(esp_errors) + " packets, e.g. " +
                           std::string(dp::drop_reason_texts[static_cast<size_t>(first_reason)]);
        } else if (rc.errors != 0) {
            p.error_text = "raw IPsec-MB jobs failed: " + std::to_string(rc.errors);
        }
        return p;
    }

private:
    // Builds the SAs, the plaintext templates and (for decrypt) the ciphertext templates, and checks
    // that one pass through the engine gives back the plaintext.
    void prepare(const algorithm& a, int size, bool encrypt, point& p) {
        for (size_t t = 0; t < template_slots; ++t) {
            plain_[t].inner_length = inner_size_of(size, t);
            plain_[t].length = plain_[t].inner_length;
            build_inner(plain_[t].bytes.data(), plain_[t].length, static_cast<uint32_t>(t));
        }
        core_.flush_counters(); // before the SAs it counts for go
        out_sa_.reset();
        in_sa_.reset();
        if (!opt_.raw_only) {
            out_sa_ = dp::make_sa(make_config(a, espresso::config::direction::outbound), core_);
            in_sa_ = dp::make_sa(make_config(a, espresso::config::direction::inbound), core_);
        }
        spread_sas_.clear();
        next_sa_ = 0;
        if (!opt_.raw_only && opt_.spread > 1) {
            for (uint32_t k = 0; k < opt_.spread; ++k) {
                if (encrypt) {
                    sa_config c = make_config(a, espresso::config::direction::outbound);
                    c.spi = 0x10000 + k;
                    spread_sas_.push_back(dp::make_sa(c, core_));
                } else {
                    // Decrypt: N runtimes of the inbound SA (same SPI and keys, so the one pool of
                    // ciphertexts verifies under each; anti-replay is off): the engine switches SA
                    // state between packets as with N tunnels.
                    spread_sas_.push_back(
                        dp::make_sa(make_config(a, espresso::config::direction::inbound), core_));
                }
            }
        }
        if (!encrypt) {
            make_ciphertexts(a, p);
            if (!p.error_text.empty()) {
                return;
            }
        }
        const auto& source = encrypt ? plain_ : cipher_;
        for (size_t i = 0; i < ws_.mbufs.size(); ++i) {
            ws_.source[i] = &source[i % template_slots];
            ws_.inner[i] = source[i % template_slots].inner_length;
        }
        if (!opt_.raw_only) {
            check_one_pass(a, encrypt, p);
        }
    }

    // Decrypt input: the outbound SA encrypts the plaintext templates once (sequence numbers
    // 1..template_slots), and the results become the templates the decrypt benchmark copies from.
    void make_ciphertexts(const algorithm& a, point& p) {
        for (size_t t = 0; t < template_slots; ++t) {
            cipher_[t].inner_length = plain_[t].inner_length;
            cipher_[t].length = esp_packet_bytes(a, plain_[t].inner_length);
        }
        if (opt_.raw_only) { // content does not matter to the raw side
            for (auto& c : cipher_) {
                std::memset(c.bytes.data(), 0x5a, c.length);
            }
            return;
        }
        rte_mbuf* m = rte_pktmbuf_alloc(pool_);
        if (m == nullptr) {
            throw std::runtime_error("mempool empty");
        }
        for (size_t t = 0; t < template_slots; ++t) {
            refill(m, plain_[t]);
            dp::drop_reason reason[1];
            if (dp::outbound_process(core_, *out_sa_, &m, 1, reason) != 1) {
                p.error_text = "outbound_process dropped a packet: " +
                               std::string(dp::drop_reason_texts[static_cast<size_t>(reason[0])]);
                break;
            }
            if (m->pkt_len > template_room || m->nb_segs != 1) {
                p.error_text = "unexpected ESP packet length " + std::to_string(m->pkt_len);
                break;
            }
            cipher_[t].length = static_cast<uint16_t>(m->pkt_len);
            std::memcpy(cipher_[t].bytes.data(), rte_pktmbuf_mtod(m, uint8_t*), m->pkt_len);
        }
        rte_pktmbuf_free(m);
    }

    void check_one_pass(const algorithm& a, bool encrypt, point& p) {
        rte_mbuf* pkts[dp::max_burst];
        const uint16_t n = opt_.burst;
        for (uint16_t i = 0; i < n; ++i) {
            pkts[i] = ws_.mbufs[i];
            refill(pkts[i], *ws_.source[i]);
        }
        dp::drop_reason reasons[dp::max_burst];
        dp::sa_runtime& sa = encrypt ? *out_sa_ : *in_sa_;
        uint16_t k = encrypt ? dp::outbound_process(core_, sa, pkts, n, reasons)
                             : dp::inbound_process(core_, sa, pkts, n, reasons);
        if (k != n) {
            p.error_text = std::string(encrypt ? "outbound" : "inbound") + "_process dropped " +
                           std::to_string(n - k) + " of " + std::to_string(n) + ": " +
                           std::string(dp::drop_reason_texts[static_cast<size_t>(reasons[k])]);
            return;
        }
        for (uint16_t i = 0; i < n; ++i) {
            const packet_template& plain = plain_[i % template_slots];
            if (encrypt) {
                const uint16_t want = esp_packet_bytes(a, plain.inner_length);
                if (ws_.mbufs[i]->pkt_len != want) {
                    p.error_text = "ESP packet of " + std::to_string(ws_.mbufs[i]->pkt_len) + " bytes, expected " +
                                   std::to_string(want);
                    return;
                }
            } else if (ws_.mbufs[i]->pkt_len != plain.length ||
                       std::memcmp(rte_pktmbuf_mtod(ws_.mbufs[i], uint8_t*), plain.bytes.data(), plain.length) != 0) {
                p.error_text = "decrypted packet differs from the plaintext";
                return;
            }
        }
    }

    const options& opt_;
    rte_mempool* pool_;
    dp::crypto_core core_;
    working_set ws_;
    std::vector<packet_template> plain_;
    std::vector<packet_template> cipher_;
    dp::sa_ptr out_sa_;
    dp::sa_ptr in_sa_;
    std::vector<dp::sa_ptr> spread_sas_;
    size_t next_sa_ = 0;
    uint64_t hz_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Output

void print_json(const point& p) {
    std::printf("{\"op\":\"%s\",\"alg\":\"%.*s\",\"size\":", p.op.c_str(), static_cast<int>(p.alg->name.size()),
                p.alg->name.data());
    if (p.size == imix_size) {
        std::printf("\"imix\"");
    } else {
        std::printf("%d", p.size);
    }
    if (!p.error_text.empty() && p.mpps == 0) {
        std::printf(",\"error\":\"%s\"}\n", p.error_text.c_str());
        std::fflush(stdout);
        return;
    }
    std::printf(",\"mpps\":%.3f,\"gbps\":%.3f,\"cycles_per_pkt\":%.1f,\"raw_mpps\":%.3f,\"ratio\":%.3f"
                ",\"raw_cycles_per_pkt\":%.1f,\"refill_cycles_per_pkt\":%.1f",
                p.mpps, p.gbps, p.cycles_per_pkt, p.raw_mpps, p.ratio, p.raw_cycles_per_pkt, p.refill_cycles_per_pkt);
    if (!p.error_text.empty()) {
        std::printf(",\"error\":\"%s\"", p.error_text.c_str());
    }
    std::printf("}\n");
    std::fflush(stdout);
}

void print_table(const std::vector<point>& points) {
    std::printf("\n%-8s %-14s %5s %8s %8s %8s %8s %9s %7s %6s  %s\n", "op", "alg", "size", "Mpps", "Gbps",
                "cyc/pkt", "raw Mpps", "raw cyc", "refill", "ratio", "goal met?");
    for (const auto& p : points) {
        std::string goal = "-";
        if (!p.error_text.empty()) {
            goal = "ERROR: " + p.error_text;
        } else if (goal_applies(p)) {
            char buf[32];
            std::snprintf(buf, sizeof(buf), "%s (>= %.1f)", p.ratio >= goal_of(p) ? "yes" : "NO", goal_of(p));
            goal = buf;
        }
        if (p.mpps == 0) {
            std::printf("%-8s %-14.*s %5s %8s %8s %8s %8s %9s %7s %6s  %s\n", p.op.c_str(),
                        static_cast<int>(p.alg->name.size()), p.alg->name.data(), size_label(p.size).c_str(), "-",
                        "-", "-", "-", "-", "-", "-", goal.c_str());
            continue;
        }
        std::printf("%-8s %-14.*s %5s %8.3f %8.2f %8.0f %8.3f %9.0f %7.0f %6.3f  %s\n", p.op.c_str(),
                    static_cast<int>(p.alg->name.size()), p.alg->name.data(), size_label(p.size).c_str(), p.mpps,
                    p.gbps, p.cycles_per_pkt, p.raw_mpps, p.raw_cycles_per_pkt, p.refill_cycles_per_pkt, p.ratio,
                    goal.c_str());
    }
}

} // namespace

int main(int argc, char** argv) {
    const options opt = parse_options(argc, argv);

    std::string lcore = std::to_string(opt.lcore);
    std::vector<std::string> eal_args = {"esp-bench", "--no-pci", "-l", lcore, "-m", "512", "--no-telemetry",
                                         "--log-level=lib.eal:warning"};
    // DPDK 22.11 refuses --in-memory together with --no-huge (which implies legacy memory);
    // --no-shconf gives the same "no files left behind" without hugepages.
    eal_args.emplace_back(opt.hugepages ? "--in-memory" : "--no-huge");
    if (!opt.hugepages) {
        eal_args.emplace_back("--no-shconf");
    }
    std::vector<char*> eal_argv;
    for (auto& s : eal_args) {
        eal_argv.push_back(s.data());
    }
    if (rte_eal_init(static_cast<int>(eal_argv.size()), eal_argv.data()) < 0) {
        std::fprintf(stderr, "esp-bench: rte_eal_init failed: %s\n", rte_strerror(rte_errno));
        return 1;
    }
    rte_openlog_stream(stderr); // stdout carries JSON and the table only

    int rc = 0;
    try {
        rte_mempool* pool = rte_pktmbuf_pool_create("esp_bench", opt.working_set + 64, 0, 0,
                                                    RTE_MBUF_DEFAULT_BUF_SIZE, static_cast<int>(rte_socket_id()));
        if (pool == nullptr) {
            throw std::runtime_error(std::string("mempool: ") + rte_strerror(rte_errno));
        }
        std::vector<point> points;
        {
            bench b(opt, pool);
            std::fprintf(stderr,
                         "esp-bench: IPsec-MB %s, %s; TSC %.3f GHz; burst %u; working set %u mbufs; %.2f s per "
                         "side in %.1f ms chunks%s\n",
                         IMB_VERSION_STR, b.core().description().c_str(), rte_get_tsc_hz() / 1e9, opt.burst,
                         opt.working_set, opt.seconds, opt.chunk_ms, opt.raw_only ? "; RAW ONLY" : "");
            for (const auto& op : opt.ops) {
                for (const auto* a : opt.algs) {
                    for (int size : opt.sizes) {
                        points.push_back(b.measure(op, *a, size));
                        print_json(points.back());
                        if (!points.back().error_text.empty()) {
                            rc = 1;
                        }
                    }
                }
            }
            if (opt.table) {
                std::printf("\n# IPsec-MB %s, %s, TSC %.3f GHz, burst %u, working set %u, median burst of "
                            "%.1f ms chunks, %.2f s per side\n",
                            IMB_VERSION_STR, b.core().description().c_str(), rte_get_tsc_hz() / 1e9, opt.burst,
                            opt.working_set, opt.chunk_ms, opt.seconds);
                print_table(points);
            }
        }
        rte_mempool_free(pool);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "esp-bench: %s\n", e.what());
        rc = 1;
    }
    rte_eal_cleanup();
    return rc;
}
