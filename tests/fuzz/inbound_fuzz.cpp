// libFuzzer target for the inbound packet path: classify_inbound, then inbound_process on the SA whose
// SPI the packet names. Untrusted bytes from the network reach exactly this code, so it must never
// crash, read outside the packet or accept what it should drop.
//
// Input: byte 0 selects how the rest becomes a packet, so the fuzzer gets past the checks a random
// byte string cannot pass:
//   bits 0-1  mode: 0 = the rest is a raw IP packet;
//                   1 = outer IP (+ UDP) header and the SA's SPI are prepended, the rest follows the SPI;
//                   2 = "sealed": bytes 1-4 are the sequence number, the rest is the ESP plaintext
//                       (payload, padding, pad length, next header), encrypted here with an independent
//                       implementation (OpenSSL) and given a valid ICV, so the fuzzer explores what the
//                       engine does after decryption (padding, next header, inner packet, replay);
//                   3 = sealed as 2, but the rest is only the inner packet and a valid trailer is
//                       built here; when the engine accepts such a packet in tunnel mode its output
//                       must be exactly that inner packet.
//   bits 2-3  SA: 0 = ESP aes128gcm16 tunnel IPv4; 1 = ESP aes256-sha256 with ESN and UDP
//             encapsulation, transport IPv4; 2 (and 3) = AH sha1 transport IPv6 (modes 2/3 act as 1).
//   bit 4     with mode 0: the rest is a sequence of raw IP packets (2-byte big-endian length, bytes),
//             fed in order; fragments go through the reassembler (dataplane/src/reassembly.cpp) and
//             what it completes is classified and processed (run_sequence). IPv6 extension header
//             chains are walked by classify_inbound in every mode 0 input.
// EAL: --no-huge implies legacy memory, which DPDK refuses with --in-memory, hence --no-shconf.
// Each input gets freshly installed SAs, so a run does not depend on the inputs before it.
// The mbuf's headroom and tailroom are poisoned for AddressSanitizer: the engine must not read past
// the packet it was given (set ESPRESSO_FUZZ_NO_POISON=1 to disable while investigating).
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <rte_eal.h>
#include <rte_ip.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <sanitizer/asan_interface.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <span>
#include <vector>

#include "espresso/config/types.h"
#include "espresso/dp/crypto_core.h"
#include "espresso/dp/ipsec.h"
#include "espresso/dp/sa.h"
#include "reassembly.h"

namespace {

namespace cfg = espresso::config;
namespace dp = espresso::dp;

constexpr std::array<uint8_t, 20> gcm_key = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99,
                                             0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x01, 0x02, 0x03, 0x04};
constexpr std::array<uint8_t, 32> cbc_key = {0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a,
                                             0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
                                             0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f};
constexpr std::array<uint8_t, 32> sha256_key = {0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a,
                                                0x4b, 0x4c, 0x4d, 0x4e, 0x4f, 0x50, 0x51, 0x52, 0x53, 0x54, 0x55,
                                                0x56, 0x57, 0x58, 0x59, 0x5a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f};
constexpr std::array<uint8_t, 20> sha1_key = {0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
                                              0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0x73};

constexpr uint32_t spi_gcm = 0x1001;
constexpr uint32_t spi_cbc = 0x2002;
constexpr uint32_t spi_ah = 0x3003;
constexpr uint16_t nat_t_port = 4500;
constexpr uint8_t proto_esp = 50;
constexpr uint8_t proto_ah = 51;
constexpr uint8_t proto_udp = 17;
constexpr size_t max_packet = 4000;

struct fuzz_state {
    dp::crypto_core* core = nullptr;
    rte_mempool* pool = nullptr;
    rte_mempool* whole_pool = nullptr; // reassembled datagrams
    std::array<cfg::sa_config, 3> sas{};
    bool poison = true;
};
fuzz_state g;

cfg::ip_address v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    cfg::ip_address x;
    x.family = 4;
    x.bytes[0] = a;
    x.bytes[1] = b;
    x.bytes[2] = c;
    x.bytes[3] = d;
    return x;
}

cfg::ip_address v6(uint8_t last)
{
    cfg::ip_address x;
    x.family = 6;
    x.bytes[0] = 0x20;
    x.bytes[1] = 0x01;
    x.bytes[2] = 0x0d;
    x.bytes[3] = 0xb8;
    x.bytes[15] = last;
    return x;
}

void make_configs()
{
    // 0: ESP aes128gcm16, tunnel, IPv4 outer, 198.51.100.1 -> 203.0.113.1, 192.168.1.0/24 -> 192.168.2.0/24.
    cfg::sa_config& gcm = g.sas[0];
    gcm.spi = spi_gcm;
    gcm.dir = cfg::direction::inbound;
    gcm.protocol = cfg::ipsec_protocol::esp;
    gcm.mode = cfg::ipsec_mode::tunnel;
    gcm.source = v4(198, 51, 100, 1);
    gcm.destination = v4(203, 0, 113, 1);
    gcm.cipher = cfg::cipher_alg::aes_gcm16;
    gcm.cipher_key_bytes = 16;
    gcm.cipher_key_length = gcm_key.size();
    std::memcpy(gcm.cipher_key.data(), gcm_key.data(), gcm_key.size());
    gcm.remote = {v4(192, 168, 1, 0), 24};
    gcm.local = {v4(192, 168, 2, 0), 24};
    gcm.origin = "fuzz:gcm";

    // 1: ESP aes256 + hmac-sha256-128, ESN, UDP encapsulation 4500/4500, transport, IPv4.
    cfg::sa_config& cbc = g.sas[1];
    cbc.spi = spi_cbc;
    cbc.dir = cfg::direction::inbound;
    cbc.protocol = cfg::ipsec_protocol::esp;
    cbc.mode = cfg::ipsec_mode::transport;
    cbc.source = v4(198, 51, 100, 2);
    cbc.destination = v4(203, 0, 113, 1);
    cbc.cipher = cfg::cipher_alg::aes_cbc;
    cbc.cipher_key_bytes = 32;
    cbc.cipher_key_length = cbc_key.size();
    std::memcpy(cbc.cipher_key.data(), cbc_key.data(), cbc_key.size());
    cbc.integ = cfg::integ_alg::hmac_sha256_128;
    cbc.integ_key_length = sha256_key.size();
    std::memcpy(cbc.integ_key.data(), sha256_key.data(), sha256_key.size());
    cbc.esn = true;
    cbc.replay_window = 1024;
    cbc.udp = cfg::udp_encapsulation{nat_t_port, nat_t_port};
    cbc.remote = {v4(198, 51, 100, 2), 32};
    cbc.local = {v4(203, 0, 113, 1), 32};
    cbc.origin = "fuzz:cbc";

    // 2: AH hmac-sha1-96, transport, IPv6, 2001:db8::1 -> 2001:db8::2.
    cfg::sa_config& ah = g.sas[2];
    ah.spi = spi_ah;
    ah.dir = cfg::direction::inbound;
    ah.protocol = cfg::ipsec_protocol::ah;
    ah.mode = cfg::ipsec_mode::transport;
    ah.source = v6(1);
    ah.destination = v6(2);
    ah.integ = cfg::integ_alg::hmac_sha1_96;
    ah.integ_key_length = sha1_key.size();
    std::memcpy(ah.integ_key.data(), sha1_key.data(), sha1_key.size());
    ah.remote = {v6(1), 128};
    ah.local = {v6(2), 128};
    ah.origin = "fuzz:ah";
}

void put16(std::vector<uint8_t>& v, size_t at, uint16_t x)
{
    v[at] = static_cast<uint8_t>(x >> 8);
    v[at + 1] = static_cast<uint8_t>(x);
}

void put32(std::vector<uint8_t>& v, size_t at, uint32_t x)
{
    put16(v, at, static_cast<uint16_t>(x >> 16));
    put16(v, at + 2, static_cast<uint16_t>(x));
}

void append(std::vector<uint8_t>& v, std::span<const uint8_t> bytes)
{
    v.insert(v.end(), bytes.begin(), bytes.end());
}

// The outer header(s) the SA's peer would send, with lengths and checksum left for `finish_outer`.
std::vector<uint8_t> outer_header(const cfg::sa_config& sa)
{
    std::vector<uint8_t> p;
    if (sa.source.is_v6()) {
        p.assign(40, 0);
        p[0] = 0x60;
        p[6] = sa.protocol == cfg::ipsec_protocol::ah ? proto_ah : proto_esp;
        p[7] = 64;
        std::memcpy(&p[8], sa.source.bytes.data(), 16);
        std::memcpy(&p[24], sa.destination.bytes.data(), 16);
        return p;
    }
    p.assign(20, 0);
    p[0] = 0x45;
    p[8] = 64;
    p[9] = sa.udp ? proto_udp : (sa.protocol == cfg::ipsec_protocol::ah ? proto_ah : proto_esp);
    std::memcpy(&p[12], sa.source.bytes.data(), 4);
    std::memcpy(&p[16], sa.destination.bytes.data(), 4);
    if (sa.udp) {
        p.resize(28, 0);
        put16(p, 20, sa.udp->source_port);
        put16(p, 22, sa.udp->destination_port);
    }
    return p;
}

void finish_outer(std::vector<uint8_t>& p, const cfg::sa_config& sa)
{
    if (sa.source.is_v6()) {
        put16(p, 4, static_cast<uint16_t>(p.size() - 40));
        return;
    }
    put16(p, 2, static_cast<uint16_t>(p.size()));
    if (sa.udp) {
        put16(p, 24, static_cast<uint16_t>(p.size() - 20));
    }
    rte_ipv4_hdr hdr;
    std::memcpy(&hdr, p.data(), sizeof(hdr));
    hdr.hdr_checksum = 0;
    const uint16_t sum = rte_ipv4_cksum(&hdr);
    std::memcpy(&p[10], &sum, sizeof(sum)); // rte_ipv4_cksum returns it ready to store
}

[[noreturn]] void fail(const char* what)
{
    std::fprintf(stderr, "fuzz-inbound: %s\n", what);
    std::abort();
}

// AES-128-GCM with a 16-byte tag, RFC 4106: nonce = salt || explicit IV; AAD = SPI || sequence.
void gcm_seal(std::span<const uint8_t> aad, std::span<const uint8_t, 8> iv, std::span<const uint8_t> plain,
              std::vector<uint8_t>& out)
{
    std::array<uint8_t, 12> nonce{};
    std::memcpy(nonce.data(), gcm_key.data() + 16, 4);
    std::memcpy(nonce.data() + 4, iv.data(), 8);
    EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
    const size_t at = out.size();
    out.resize(at + plain.size() + 16);
    int n = 0;
    bool ok = c != nullptr && EVP_EncryptInit_ex(c, EVP_aes_128_gcm(), nullptr, nullptr, nullptr) == 1 &&
              EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, nullptr) == 1 &&
              EVP_EncryptInit_ex(c, nullptr, nullptr, gcm_key.data(), nonce.data()) == 1 &&
              EVP_EncryptUpdate(c, nullptr, &n, aad.data(), static_cast<int>(aad.size())) == 1;
    if (ok && !plain.empty()) {
        ok = EVP_EncryptUpdate(c, out.data() + at, &n, plain.data(), static_cast<int>(plain.size())) == 1;
    }
    ok = ok && EVP_EncryptFinal_ex(c, out.data() + at, &n) == 1 &&
         EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, out.data() + at + plain.size()) == 1;
    EVP_CIPHER_CTX_free(c);
    if (!ok) {
        fail("OpenSSL AES-GCM failed");
    }
}

// AES-256-CBC over block-aligned plaintext (the ESP trailer is the padding).
void cbc_encrypt(std::span<const uint8_t, 16> iv, std::span<const uint8_t> plain, std::vector<uint8_t>& out)
{
    EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
    const size_t at = out.size();
    out.resize(at + plain.size());
    int n = 0;
    const bool ok = c != nullptr && EVP_EncryptInit_ex(c, EVP_aes_256_cbc(), nullptr, cbc_key.data(), iv.data()) == 1 &&
                    EVP_CIPHER_CTX_set_padding(c, 0) == 1 &&
                    EVP_EncryptUpdate(c, out.data() + at, &n, plain.data(), static_cast<int>(plain.size())) == 1 &&
                    EVP_EncryptFinal_ex(c, out.data() + at + n, &n) == 1;
    EVP_CIPHER_CTX_free(c);
    if (!ok) {
        fail("OpenSSL AES-CBC failed");
    }
}

// ESP trailer, RFC 4303 §2.4-2.6: padding 1, 2, 3, ... up to `block`, pad length, next header.
std::vector<uint8_t> with_trailer(std::span<const uint8_t> inner, size_t block, uint8_t next_header)
{
    std::vector<uint8_t> p(inner.begin(), inner.end());
    const size_t pad = (block - (inner.size() + 2) % block) % block;
    for (size_t i = 1; i <= pad; ++i) {
        p.push_back(static_cast<uint8_t>(i));
    }
    p.push_back(static_cast<uint8_t>(pad));
    p.push_back(next_header);
    return p;
}

// Modes 2 and 3: a correctly protected ESP packet around fuzzer-chosen plaintext.
std::vector<uint8_t> sealed_packet(const cfg::sa_config& sa, std::span<const uint8_t> rest, bool build_trailer)
{
    std::array<uint8_t, 4> seq{};
    for (size_t i = 0; i < seq.size() && i < rest.size(); ++i) {
        seq[i] = rest[i];
    }
    rest = rest.subspan(std::min<size_t>(4, rest.size()));

    std::vector<uint8_t> p = outer_header(sa);
    const size_t esp_at = p.size();
    p.resize(esp_at + 8);
    put32(p, esp_at, sa.spi);
    std::memcpy(&p[esp_at + 4], seq.data(), 4);

    const bool gcm = sa.cipher == cfg::cipher_alg::aes_gcm16;
    const size_t block = gcm ? 4 : 16;
    std::vector<uint8_t> plain;
    if (build_trailer) {
        const uint8_t version = rest.empty() ? 0 : static_cast<uint8_t>(rest[0] >> 4);
        const uint8_t nh = sa.mode == cfg::ipsec_mode::transport ? proto_udp : (version == 6 ? 41 : 4);
        plain = with_trailer(rest, block, nh);
    } else {
        plain.assign(rest.begin(), rest.end());
        if (!gcm) {
            // CBC can only encrypt whole blocks; the last two bytes of what remains are the trailer.
            plain.resize(plain.size() < block ? block : plain.size() - plain.size() % block, 0);
        }
    }

    if (gcm) {
        const std::array<uint8_t, 8> iv = {0xa0, 0xa1, 0xa2, 0xa3, seq[0], seq[1], seq[2], seq[3]};
        append(p, iv);
        gcm_seal(std::span<const uint8_t>(&p[esp_at], 8), iv, plain, p);
    } else {
        const std::array<uint8_t, 16> iv = {0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7,
                                            0xb8, 0xb9, 0xba, 0xbb, seq[0], seq[1], seq[2], seq[3]};
        append(p, iv);
        cbc_encrypt(iv, plain, p);
        // RFC 4303 §2.2.1 / §3.3.2.1: with ESN the high 32 bits (0 for a fresh SA) are appended to the
        // ICV input without being sent.
        std::vector<uint8_t> icv_input(p.begin() + static_cast<std::ptrdiff_t>(esp_at), p.end());
        if (sa.esn) {
            icv_input.insert(icv_input.end(), 4, 0);
        }
        std::array<uint8_t, EVP_MAX_MD_SIZE> md{};
        unsigned int md_len = 0;
        if (HMAC(EVP_sha256(), sha256_key.data(), sha256_key.size(), icv_input.data(), icv_input.size(), md.data(),
                 &md_len) == nullptr) {
            fail("OpenSSL HMAC failed");
        }
        append(p, std::span<const uint8_t>(md.data(), 16));
    }
    finish_outer(p, sa);
    return p;
}

std::vector<uint8_t> prefixed_packet(const cfg::sa_config& sa, std::span<const uint8_t> rest)
{
    std::vector<uint8_t> p = outer_header(sa);
    if (sa.protocol == cfg::ipsec_protocol::ah) {
        // RFC 4302 §2: next header, payload length, reserved come before the SPI.
        std::array<uint8_t, 4> first{};
        for (size_t i = 0; i < first.size() && i < rest.size(); ++i) {
            first[i] = rest[i];
        }
        rest = rest.subspan(std::min<size_t>(4, rest.size()));
        append(p, first);
    }
    const size_t at = p.size();
    p.resize(at + 4);
    put32(p, at, sa.spi);
    append(p, rest);
    finish_outer(p, sa);
    return p;
}

// Length of the IP packet at the start of `inner` according to its header; 0 if it has none.
size_t inner_ip_length(std::span<const uint8_t> inner)
{
    if (inner.size() >= 20 && inner[0] >> 4 == 4) {
        return static_cast<size_t>(inner[2]) << 8 | inner[3];
    }
    if (inner.size() >= 40 && inner[0] >> 4 == 6) {
        return 40 + (static_cast<size_t>(inner[4]) << 8 | inner[5]);
    }
    return 0;
}

void poison(rte_mbuf* m)
{
    if (!g.poison) {
        return;
    }
    auto* buf = static_cast<char*>(m->buf_addr);
    ASAN_POISON_MEMORY_REGION(buf, m->data_off);
    char* end = rte_pktmbuf_mtod(m, char*) + rte_pktmbuf_data_len(m);
    ASAN_POISON_MEMORY_REGION(end, static_cast<size_t>(buf + m->buf_len - end));
}

void unpoison(rte_mbuf* m)
{
    ASAN_UNPOISON_MEMORY_REGION(m->buf_addr, m->buf_len);
}

// classify_inbound, then (for ESP/AH of a known SPI) inbound_process; frees `m`.
void run_inbound(rte_mbuf* m, unsigned mode, const cfg::sa_config& chosen, std::span<const uint8_t> rest)
{
    const bool sealable = chosen.protocol == cfg::ipsec_protocol::esp;
    const dp::inbound_class cls = dp::classify_inbound(m, nat_t_port);
    const cfg::sa_config* match = nullptr;
    if (cls.kind == dp::inbound_kind::esp || cls.kind == dp::inbound_kind::ah) {
        // IPv6 with extension headers before ESP/AH (an IPv4 packet with options, or ESP-in-UDP behind
        // a long IPv4 header, also has its ESP past byte 40: strip leaves those alone).
        if (cls.offset > 40 && (rte_pktmbuf_mtod(m, const uint8_t*)[0] >> 4) == 6) {
            dp::strip_ipv6_extensions(m, cls);
            const auto* ip = rte_pktmbuf_mtod(m, const uint8_t*);
            if ((ip[0] >> 4) != 6 || ip[6] != cls.protocol || rte_pktmbuf_data_len(m) < 40 ||
                40U + (static_cast<unsigned>(ip[4]) << 8 | ip[5]) > rte_pktmbuf_data_len(m)) {
                fail("strip_ipv6_extensions left an inconsistent IPv6 header");
            }
        }
        const auto want = cls.kind == dp::inbound_kind::ah ? cfg::ipsec_protocol::ah : cfg::ipsec_protocol::esp;
        for (const auto& c : g.sas) {
            if (c.spi == cls.spi && c.protocol == want) {
                match = &c;
            }
        }
    } else if (cls.kind == dp::inbound_kind::malformed && cls.reason == dp::drop_reason::none) {
        fail("classify_inbound: malformed without a reason");
    }

    if (match != nullptr) {
        dp::sa_ptr sa;
        try {
            sa = dp::make_sa(*match, *g.core);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "fuzz-inbound: make_sa failed: %s\n", e.what());
            std::abort();
        }
        rte_mbuf* pkts[1] = {m};
        dp::drop_reason reasons[1] = {dp::drop_reason::none};
        const uint16_t good = dp::inbound_process(*g.core, *sa, pkts, 1, reasons);
        if (good > 1) {
            fail("inbound_process returned more good packets than it was given");
        }
        m = pkts[0];
        if (good == 0 && (reasons[0] == dp::drop_reason::none || reasons[0] >= dp::drop_reason::count)) {
            fail("inbound_process dropped a packet without a valid reason");
        }
        if (good == 1) {
            if (m->data_off + rte_pktmbuf_data_len(m) > m->buf_len ||
                rte_pktmbuf_data_len(m) != rte_pktmbuf_pkt_len(m)) {
                fail("inbound_process left an inconsistent mbuf");
            }
            // Mode 3 on a tunnel SA: the output is exactly the inner packet that was sealed, up to the
            // length its IP header gives (RFC 4303 §2.7: what follows is TFC padding).
            if (mode == 3 && sealable && match == &chosen && match->mode == cfg::ipsec_mode::tunnel) {
                const auto inner = rest.subspan(std::min<size_t>(4, rest.size()));
                const size_t expected = inner_ip_length(inner);
                if (expected == 0 || expected > inner.size()) {
                    fail("inbound_process accepted a tunnel packet whose inner IP header is invalid");
                }
                if (rte_pktmbuf_data_len(m) != expected ||
                    std::memcmp(rte_pktmbuf_mtod(m, const uint8_t*), inner.data(), expected) != 0) {
                    fail("inbound_process accepted a sealed packet but did not return its inner packet");
                }
            }
        }
        std::array<dp::sa_event, 8> events{};
        while (g.core->drain(events) != 0) {
        }
    }
    unpoison(m);
    rte_pktmbuf_free(m);
}

rte_mbuf* to_mbuf(std::span<const uint8_t> packet)
{
    rte_mbuf* m = rte_pktmbuf_alloc(g.pool);
    if (m == nullptr) {
        fail("mbuf pool exhausted: the engine, the reassembler or this harness leaks mbufs");
    }
    char* p = rte_pktmbuf_append(m, static_cast<uint16_t>(packet.size()));
    if (p == nullptr) {
        rte_pktmbuf_free(m);
        return nullptr;
    }
    std::memcpy(p, packet.data(), packet.size());
    poison(m);
    return m;
}

// Mode 0 with bit 4 of byte 0: the rest is a sequence of raw IP packets, each a 2-byte big-endian
// length and its bytes, fed in order as one port would receive them: fragments go to a reassembler
// (fresh per input: 4 datagrams, 1000 "cycles" timeout, each packet 300 cycles after the one before,
// so timeouts happen), a reassembled datagram is classified and processed like any packet.
void run_sequence(std::span<const uint8_t> rest, const cfg::sa_config& chosen)
{
    dp::reassembler r(4, 1000, g.whole_pool, g.pool, SOCKET_ID_ANY);
    uint64_t now = 1;
    size_t at = 0;
    while (at + 2 <= rest.size()) {
        const size_t len = static_cast<size_t>(rest[at]) << 8 | rest[at + 1];
        at += 2;
        const auto packet = rest.subspan(at, std::min(len, rest.size() - at));
        at += packet.size();
        now += 300;
        if (packet.empty()) {
            continue;
        }
        rte_mbuf* m = to_mbuf(packet);
        if (m == nullptr) {
            continue;
        }
        dp::reassembly_counts counts;
        r.expire(now, counts);
        const dp::inbound_class cls = dp::classify_inbound(m, nat_t_port);
        if (cls.kind != dp::inbound_kind::fragment) {
            run_inbound(m, 0, chosen, {});
            continue;
        }
        unpoison(m); // the reassembler copies and chains it; whole buffers from here on
        rte_mbuf* whole = r.add(m, now, counts);
        if (whole == nullptr) {
            continue;
        }
        if (whole->nb_segs != 1 || rte_pktmbuf_data_len(whole) > r.max_bytes()) {
            fail("the reassembler returned a datagram that is not one segment within its limit");
        }
        poison(whole);
        run_inbound(whole, 0, chosen, {});
    }
    dp::reassembly_counts counts;
    r.expire(now + 100000, counts);
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/)
{
    const char* eal_args[] = {"fuzz-inbound", "--no-huge", "--no-pci", "--no-shconf", "-l", "0", "-m", "128",
                              "--no-telemetry", "--log-level", "lib.eal:error"};
    if (rte_eal_init(static_cast<int>(std::size(eal_args)), const_cast<char**>(eal_args)) < 0) {
        fail("rte_eal_init failed");
    }
    g.pool = rte_pktmbuf_pool_create("fuzz_pool", 255, 0, 0, max_packet + 96 + RTE_PKTMBUF_HEADROOM,
                                     static_cast<int>(rte_socket_id()));
    g.whole_pool = rte_pktmbuf_pool_create("fuzz_whole", 63, 0, 0, 16384 + RTE_PKTMBUF_HEADROOM,
                                           static_cast<int>(rte_socket_id()));
    if (g.pool == nullptr || g.whole_pool == nullptr) {
        fail("mbuf pool creation failed");
    }
    const char* no_poison = std::getenv("ESPRESSO_FUZZ_NO_POISON");
    g.poison = no_poison == nullptr || std::strcmp(no_poison, "1") != 0;
    try {
        g.core = new dp::crypto_core();
        make_configs();
        for (const auto& c : g.sas) {
            dp::sa_ptr sa = dp::make_sa(c, *g.core); // every SA must install: else the harness is wrong
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fuzz-inbound: set-up failed: %s\n", e.what());
        std::abort();
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    if (size == 0 || size > max_packet) {
        return 0;
    }
    const unsigned mode = data[0] & 3U;
    const cfg::sa_config& chosen = g.sas[std::min<size_t>((data[0] >> 2) & 3U, 2)];
    const std::span<const uint8_t> rest(data + 1, size - 1);
    const bool sealable = chosen.protocol == cfg::ipsec_protocol::esp;

    std::vector<uint8_t> packet;
    switch (mode) {
    case 0:
        packet.assign(rest.begin(), rest.end());
        break;
    case 1:
        packet = prefixed_packet(chosen, rest);
        break;
    default:
        packet = sealable ? sealed_packet(chosen, rest, mode == 3) : prefixed_packet(chosen, rest);
        break;
    }
    if (packet.empty() || packet.size() > max_packet + 96) {
        return 0;
    }

    if (mode == 0 && (data[0] & 0x10U) != 0) {
        run_sequence(rest, chosen);
        return 0;
    }
    rte_mbuf* m = to_mbuf(packet);
    if (m != nullptr) {
        run_inbound(m, mode, chosen, rest);
    }
    return 0;
}