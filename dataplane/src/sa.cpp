// SA installation: validation, key expansion and outer header template, done once so the packet
// path only reads precomputed state (STYLE.md: "the per-SA function is chosen once").
#include "espresso/dp/sa.h"

#include <rte_ip.h>
#include <rte_udp.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "espresso/dp/crypto_core.h"
#include "hmac_keys.h"
#include "packet.h"
#include "sa_pool.h"

namespace espresso::dp {

using config::cipher_alg;
using config::integ_alg;

sa_runtime::sa_runtime(const config::sa_config& c) noexcept
    : local_selector(c.local), remote_selector(c.remote), replay(c.replay_window, c.esn), config(c)
{
}

namespace {

[[noreturn]] void refuse(const config::sa_config& c, const std::string& why)
{
    std::string where = c.origin.empty() ? std::string() : c.origin + ": ";
    char spi[16];
    std::snprintf(spi, sizeof(spi), "0x%08x", c.spi);
    throw std::invalid_argument(where + "SA " + spi + ": " + why);
}

IMB_KEY_SIZE_BYTES imb_key_size(uint8_t bytes)
{
    switch (bytes) {
    case 16:
        return IMB_KEY_128_BYTES;
    case 24:
        return IMB_KEY_192_BYTES;
    default:
        return IMB_KEY_256_BYTES;
    }
}

void validate(const config::sa_config& c)
{
    if (c.spi < 256) {
        refuse(c, "SPI values 0-255 are reserved (RFC 4303 §2.1)");
    }
    bool aead = c.cipher == cipher_alg::aes_gcm16 || c.cipher == cipher_alg::aes_gmac;
    if (aead && c.integ != integ_alg::none) {
        refuse(c, "an AEAD transform carries its own ICV; set integrity to none");
    }
    if (c.protocol == config::ipsec_protocol::ah) {
        if (c.cipher != cipher_alg::null && c.cipher != cipher_alg::aes_gmac) {
            refuse(c, "AH authenticates only; use an integrity algorithm (or aes*gmac), no encryption");
        }
        if (c.cipher == cipher_alg::null && c.integ == integ_alg::none) {
            refuse(c, "AH needs an integrity algorithm");
        }
        if (c.udp) {
            refuse(c, "UDP encapsulation (RFC 3948) is defined for ESP only");
        }
    } else if (c.cipher == cipher_alg::null && c.integ == integ_alg::none) {
        refuse(c, "ESP with neither encryption nor integrity is forbidden (RFC 4303 §3.2)");
    }
    if (c.cipher != cipher_alg::null) {
        if (c.cipher_key_bytes != 16 && c.cipher_key_bytes != 24 && c.cipher_key_bytes != 32) {
            refuse(c, "AES key must be 16, 24 or 32 bytes");
        }
        const auto& ci = config::info(c.cipher, c.cipher_key_bytes);
        if (c.cipher_key_length != ci.key_bytes + ci.salt_bytes) {
            refuse(c, std::string(ci.name) + " needs " + std::to_string(ci.key_bytes + ci.salt_bytes) +
                          " key bytes, got " + std::to_string(c.cipher_key_length));
        }
    }
    if (c.integ != integ_alg::none) {
        const auto& ii = config::info(c.integ);
        if (c.integ_key_length != ii.key_bytes) {
            refuse(c, std::string(ii.name) + " needs a " + std::to_string(ii.key_bytes) + "-byte key, got " +
                          std::to_string(c.integ_key_length));
        }
    }
    if (c.replay_window > config::max_replay_window) {
        refuse(c, "replay window larger than " + std::to_string(config::max_replay_window));
    }
    if (c.mode == config::ipsec_mode::tunnel) {
        if (!(c.source.is_v4() || c.source.is_v6()) || c.source.family != c.destination.family) {
            refuse(c, "tunnel mode needs outer source and destination of one address family");
        }
    }
}

void build_outer_header(sa_runtime& sa, const config::sa_config& c)
{
    uint8_t* p = sa.outer_header;
    uint8_t proto = c.protocol == config::ipsec_protocol::ah ? proto_ah : proto_esp;
    if (c.udp) {
        proto = proto_udp;
    }
    uint8_t ip_len = 0;
    if (c.mode == config::ipsec_mode::tunnel) {
        if (c.source.is_v4()) {
            p[0] = 0x45;
            p[8] = c.ttl;
            p[9] = proto;
            std::memcpy(p + 12, c.source.bytes.data(), 4);
            std::memcpy(p + 16, c.destination.bytes.data(), 4);
            ip_len = 20;
        } else {
            p[0] = 0x60;
            p[6] = proto;
            p[7] = c.ttl;
            std::memcpy(p + 8, c.source.bytes.data(), 16);
            std::memcpy(p + 24, c.destination.bytes.data(), 16);
            ip_len = 40;
            sa.flags |= sa_outer_v6;
        }
    }
    // In transport mode the template holds only the UDP header; the IP header is the packet's own.
    if (c.udp) {
        store_be16(p + ip_len, c.udp->source_port);
        store_be16(p + ip_len + 2, c.udp->destination_port);
        sa.outer_bytes = static_cast<uint8_t>(ip_len + sizeof(rte_udp_hdr));
    } else {
        sa.outer_bytes = ip_len;
    }
}

} // namespace

void sa_deleter::operator()(sa_runtime* sa) const noexcept
{
    if (sa == nullptr) {
        return;
    }
    explicit_bzero(sa->enc_keys, sizeof(sa->enc_keys));
    explicit_bzero(sa->dec_keys, sizeof(sa->dec_keys));
    explicit_bzero(&sa->gcm_key, sizeof(sa->gcm_key));
    explicit_bzero(sa->ipad, sizeof(sa->ipad));
    explicit_bzero(sa->opad, sizeof(sa->opad));
    explicit_bzero(&sa->salt, sizeof(sa->salt));
    config::wipe_keys(sa->config);
    sa->~sa_runtime();
    sa_runtime_pool().release(sa);
}

namespace {

// Records bytes [from, from + bytes) of `sa` as key run `run` for prefetch_sa_keys.
void key_run(sa_runtime& sa, unsigned run, const void* from, size_t bytes) noexcept
{
    const size_t offset = static_cast<size_t>(static_cast<const char*>(from) - reinterpret_cast<const char*>(&sa));
    const size_t lines = (offset % 64 + bytes + 63) / 64;
    sa.key_line[run] = static_cast<uint8_t>(offset / 64);
    sa.key_runs = static_cast<uint8_t>((sa.key_runs & ~(0xfU << (run * 4))) | (std::min<size_t>(lines, 15) << (run * 4)));
}

// Which key lines a packet reads, for prefetch_sa_keys. Where the GHASH key powers sit depends on the
// GCM code the manager picked (IPsec-MB 1.3's gcm_keys_*.asm), so it is read off what GCM_PRE wrote
// (a real key's power is never a zero 16-byte entry but with probability 2^-128): 8 entries, H^8..H^1
// (AVX2 and plain AVX-512 code); 16, H^1..H^8 and their Karatsuba halves (SSE, AVX); 48, H^48..H^1
// with H^1 last (VAES AVX-512), of which a packet of up to 8 blocks (128-byte payloads; larger ones
// stream through the cache anyway) reads the last 8. Runs that touch are merged into one.
void set_key_lines(sa_runtime& sa, const config::sa_config& c) noexcept
{
    const size_t round_key_bytes = (c.cipher_key_bytes == 16 ? 11U : c.cipher_key_bytes == 24 ? 13U : 15U) * 16U;
    if ((sa.flags & (sa_aead | sa_gmac)) != 0) {
        const auto* gcm = reinterpret_cast<const uint8_t*>(&sa.gcm_key);
        key_run(sa, 0, gcm, round_key_bytes);
        const uint8_t* powers = gcm + offsetof(gcm_key_data, ghash_keys);
        size_t written = sizeof(sa.gcm_key.ghash_keys) / 16;
        while (written > 0 && std::all_of(powers + (written - 1) * 16, powers + written * 16, [](uint8_t b) { return b == 0; })) {
            --written;
        }
        if (written > 16) {
            key_run(sa, 1, powers + (written - 8) * 16, 8 * 16);
        } else {
            key_run(sa, 1, powers, written * 16);
        }
    } else if ((sa.flags & sa_cbc) != 0) {
        key_run(sa, 0, (sa.flags & sa_outbound) != 0 ? sa.enc_keys : sa.dec_keys, round_key_bytes);
    }
    if (c.integ != config::integ_alg::none) {
        key_run(sa, 1, sa.ipad, sizeof(sa.ipad) + sizeof(sa.opad));
    }
    // AES-192/256 round keys end in the line the AVX2 code's first powers start in.
    const unsigned lines0 = sa.key_runs & 0xfU;
    const unsigned lines1 = sa.key_runs >> 4;
    const unsigned first0 = sa.key_line[0];
    const unsigned first1 = sa.key_line[1];
    if (lines0 != 0 && lines1 != 0 && first1 >= first0 && first1 <= first0 + lines0) {
        const unsigned end = std::max(first0 + lines0, first1 + lines1);
        if (end - first0 <= 15) {
            sa.key_runs = static_cast<uint8_t>(end - first0);
            sa.key_line[1] = 0;
        }
    }
}

} // namespace

sa_ptr make_sa(const config::sa_config& c, crypto_core& core)
{
    validate(c);
    void* mem = sa_runtime_pool().allocate(); // sa_pool.h: slabs, not one malloc per SA
    sa_ptr sa(new (mem) sa_runtime(c));
    IMB_MGR* mgr = core.mgr();

    sa->spi = c.spi;
    sa->spi_be = rte_cpu_to_be_32(c.spi);
    if (c.dir == config::direction::outbound) {
        sa->flags |= sa_outbound;
    }
    if (c.mode == config::ipsec_mode::tunnel) {
        sa->flags |= sa_tunnel;
    }
    if (c.esn) {
        sa->flags |= sa_esn;
    }
    if (c.udp) {
        sa->flags |= sa_udp;
    }
    if (c.protocol == config::ipsec_protocol::ah) {
        sa->flags |= sa_ah;
    }
    sa->ttl = c.ttl;
    sa->df = c.df;
    sa->dscp = c.dscp;
    sa->dscp_value = c.dscp_value;
    sa->tfc_pad_to = c.mode == config::ipsec_mode::tunnel ? c.tfc_pad_to : 0;
    sa->seq.store(c.initial_sequence, std::memory_order_relaxed);

    const uint8_t* key = c.cipher_key.data();
    switch (c.cipher) {
    case cipher_alg::aes_gcm16:
    case cipher_alg::aes_gmac: {
        sa->key_size = imb_key_size(c.cipher_key_bytes);
        switch (c.cipher_key_bytes) {
        case 16:
            IMB_AES128_GCM_PRE(mgr, key, &sa->gcm_key);
            break;
        case 24:
            IMB_AES192_GCM_PRE(mgr, key, &sa->gcm_key);
            break;
        default:
            IMB_AES256_GCM_PRE(mgr, key, &sa->gcm_key);
            break;
        }
        std::memcpy(&sa->salt, key + c.cipher_key_bytes, 4);
        sa->iv_bytes = 8;
        sa->block_bytes = 4;
        sa->icv_bytes = 16;
        if (c.cipher == cipher_alg::aes_gcm16) {
            sa->flags |= sa_aead;
            sa->cipher_mode = IMB_CIPHER_GCM;
            sa->hash_alg = IMB_AUTH_AES_GMAC;
        } else {
            sa->flags |= sa_gmac;
            sa->cipher_mode = IMB_CIPHER_NULL;
            sa->hash_alg = c.cipher_key_bytes == 16   ? IMB_AUTH_AES_GMAC_128
                           : c.cipher_key_bytes == 24 ? IMB_AUTH_AES_GMAC_192
                                                      : IMB_AUTH_AES_GMAC_256;
        }
        break;
    }
    case cipher_alg::aes_cbc:
        sa->key_size = imb_key_size(c.cipher_key_bytes);
        switch (c.cipher_key_bytes) {
        case 16:
            IMB_AES_KEYEXP_128(mgr, key, sa->enc_keys, sa->dec_keys);
            break;
        case 24:
            IMB_AES_KEYEXP_192(mgr, key, sa->enc_keys, sa->dec_keys);
            break;
        default:
            IMB_AES_KEYEXP_256(mgr, key, sa->enc_keys, sa->dec_keys);
            break;
        }
        sa->flags |= sa_cbc;
        sa->cipher_mode = IMB_CIPHER_CBC;
        sa->iv_bytes = 16;
        sa->block_bytes = 16;
        break;
    case cipher_alg::null:
        sa->cipher_mode = IMB_CIPHER_NULL;
        sa->iv_bytes = 0;
        sa->block_bytes = 4;
        break;
    }
    if (c.integ != integ_alg::none) {
        sa->hash_alg = imb_hash_alg(c.integ);
        sa->icv_bytes = config::info(c.integ).icv_bytes;
        sa->hash_full_bytes = hash_output_bytes(c.integ);
        hmac_precompute(mgr, c.integ, c.integ_key.data(), c.integ_key_length, sa->ipad, sa->opad);
    }
    set_key_lines(*sa, c);
    if ((sa->flags & sa_ah) != 0) {
        // AH carries no cipher; GMAC's IV travels in the AH ICV field per RFC 4543 §3.
        sa->block_bytes = 4;
    }
    if (c.lifetime.bytes != 0) {
        sa->hard_bytes = c.lifetime.bytes;
        sa->soft_bytes = c.lifetime.soft_bytes != 0 ? c.lifetime.soft_bytes : c.lifetime.bytes / 10 * 9;
    } else {
        sa->soft_bytes = c.lifetime.soft_bytes;
    }
    if (c.lifetime.packets != 0) {
        sa->hard_packets = c.lifetime.packets;
        sa->soft_packets =
            c.lifetime.soft_packets != 0 ? c.lifetime.soft_packets : c.lifetime.packets / 10 * 9;
    } else {
        sa->soft_packets = c.lifetime.soft_packets;
    }
    if ((sa->soft_bytes | sa->hard_bytes | sa->soft_packets | sa->hard_packets) != 0) {
        sa->flags |= sa_volume_limits;
    }
    build_outer_header(*sa, c);
    if (esp_overhead(*sa, true) > max_esp_overhead) {
        // Not reachable with the algorithms config/ knows (IPv6 alignment is the larger); the
        // worker's MTU check relies on it.
        refuse(c, "encapsulation overhead of " + std::to_string(esp_overhead(*sa, true)) +
                      " bytes is above the " + std::to_string(max_esp_overhead) + " the data plane allows for");
    }
    if ((sa->flags & sa_tunnel) != 0 && (sa->flags & sa_outer_v6) == 0) {
        // Length, id, TOS and flags are zero in the template: per packet only they are added
        // (RFC 1624 style), instead of summing the whole header again.
        sa->outer_sum = ones_sum(sa->outer_header, 20);
    }
    // The runtime has its own expanded keys; the display copy keeps none.
    config::wipe_keys(sa->config);
    if ((sa->flags & (sa_outbound | sa_ah)) == sa_outbound) {
        // Outbound ESP counts every packet it sends in all three (esp_outbound.cpp).
        sa->stats.mirrors = sa_stats::bit(sa_counter::encaps) |
                            (sa->cipher_mode != IMB_CIPHER_NULL ? sa_stats::bit(sa_counter::encrypt) : 0U) |
                            (sa->icv_bytes != 0 ? sa_stats::bit(sa_counter::digest) : 0U);
    } else if ((sa->flags & sa_ah) == 0) {
        // Inbound ESP counts every packet it accepts in decaps and decrypt too (esp_inbound.cpp).
        sa->stats.mirrors = sa_stats::bit(sa_counter::decaps) |
                            (sa->cipher_mode != IMB_CIPHER_NULL ? sa_stats::bit(sa_counter::decrypt) : 0U);
    }
    return sa;
}

sa_ptr rebind_sa(const sa_runtime& old, const config::sa_config& updated)
{
    const config::sa_config& was = old.config;
    if (!old.outbound()) {
        refuse(was, "only an outbound SA's peer endpoints can be updated (inbound SAs accept any source)");
    }
    if (updated.spi != was.spi || updated.mode != was.mode || updated.protocol != was.protocol ||
        updated.source != was.source || updated.udp.has_value() != was.udp.has_value() ||
        (was.mode == config::ipsec_mode::tunnel && updated.destination.family != was.destination.family) ||
        (updated.udp && updated.udp->source_port != was.udp->source_port)) {
        refuse(was, "a peer update may change only the tunnel destination (same address family) and the UDP "
                    "destination port of a UDP-encapsulated SA");
    }
    if (was.mode != config::ipsec_mode::tunnel && updated.destination != was.destination) {
        refuse(was, "a transport-mode SA has no tunnel destination to update; only its UDP port");
    }
    void* mem = sa_runtime_pool().allocate(); // sa_pool.h: slabs, not one malloc per SA
    sa_ptr sa(new (mem) sa_runtime(updated));
    // Everything make_sa derived, field by field (sa_runtime holds atomics: no plain copy).
    sa->spi = old.spi;
    sa->spi_be = old.spi_be;
    sa->flags = static_cast<uint16_t>(old.flags & ~sa_outer_v6);
    sa->stats.mirrors = old.stats.mirrors;
    sa->iv_bytes = old.iv_bytes;
    sa->block_bytes = old.block_bytes;
    sa->icv_bytes = old.icv_bytes;
    sa->ttl = old.ttl;
    sa->dscp_value = old.dscp_value;
    sa->df = old.df;
    sa->dscp = old.dscp;
    sa->tfc_pad_to = old.tfc_pad_to;
    sa->cipher_mode = old.cipher_mode;
    sa->hash_alg = old.hash_alg;
    sa->key_size = old.key_size;
    sa->hash_full_bytes = old.hash_full_bytes;
    std::memcpy(sa->key_line, old.key_line, sizeof(sa->key_line)); // same offsets: same struct
    sa->key_runs = old.key_runs;
    sa->salt = old.salt;
    std::memcpy(sa->enc_keys, old.enc_keys, sizeof(sa->enc_keys));
    std::memcpy(sa->dec_keys, old.dec_keys, sizeof(sa->dec_keys));
    std::memcpy(&sa->gcm_key, &old.gcm_key, sizeof(sa->gcm_key));
    std::memcpy(sa->ipad, old.ipad, sizeof(sa->ipad));
    std::memcpy(sa->opad, old.opad, sizeof(sa->opad));
    sa->soft_bytes = old.soft_bytes;
    sa->hard_bytes = old.hard_bytes;
    sa->soft_packets = old.soft_packets;
    sa->hard_packets = old.hard_packets;
    build_outer_header(*sa, updated);
    if ((sa->flags & sa_tunnel) != 0 && (sa->flags & sa_outer_v6) == 0) {
        sa->outer_sum = ones_sum(sa->outer_header, 20);
    }
    config::wipe_keys(sa->config);
    return sa;
}

} // namespace espresso::dp
