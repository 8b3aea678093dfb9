// Inbound ESP (RFC 4303 §3.4): length checks, anti-replay pre-check, one IPsec-MB burst that verifies
// the ICV and decrypts, then (only for packets whose ICV verified) the replay window update, padding
// and next-header checks, decapsulation and the selector check of RFC 4301 §5.2.
#include <rte_ip.h>
#include <rte_mbuf.h>

#include <algorithm>
#include <cstring>

#include "espresso/dp/ipsec.h"
#include "packet.h"
#include "imb_burst.h"
#include "sa_accounting.h"
#include "tunnel_header.h"

namespace espresso::dp {

// ah.cpp: sets reasons[i] for each packet, does not partition.
void ah_inbound(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n, drop_reason* reasons) noexcept;

namespace {

struct in_packet {
    uint8_t* esp;
    uint32_t payload; // ciphertext bytes between IV and ICV
    uint64_t seq;     // full sequence number (ESN inferred)
    ip_view outer;
    alignas(16) uint8_t nonce[16];
    alignas(16) uint8_t tag[64]; // computed ICV (untruncated space)
    uint8_t icv[32];             // received ICV when its slot is borrowed (ESN)
    uint8_t aad[12];
    uint8_t saved[4];
};

// Checks the outer headers in front of the ESP header. `offset` gets the ESP header's offset.
drop_reason parse_outer(const sa_runtime& sa, rte_mbuf* m, ip_view& ip, uint32_t& offset) noexcept
{
    if (m->nb_segs > 1 && rte_pktmbuf_linearize(m) != 0) {
        return drop_reason::no_headroom;
    }
    const uint8_t* p = rte_pktmbuf_mtod(m, const uint8_t*);
    drop_reason r = parse_ip(p, rte_pktmbuf_data_len(m), ip);
    if (r != drop_reason::none) {
        return r;
    }
    if (ip.fragment) {
        return drop_reason::bad_ip; // reassembly happens before the engine
    }
    rte_pktmbuf_trim(m, static_cast<uint16_t>(rte_pktmbuf_data_len(m) - ip.total));
    offset = ip.header;
    if ((sa.flags & sa_udp) != 0) {
        if (ip.protocol != proto_udp) {
            return drop_reason::bad_ip;
        }
        // RFC 3948 §2.1/§3: UDP header, then a non-zero SPI.
        if (ip.total < offset + 8) {
            return drop_reason::bad_udp;
        }
        if (load_be16(p + offset + 4) != ip.total - offset) {
            return drop_reason::bad_udp;
        }
        offset += 8;
    } else if (ip.protocol != proto_esp) {
        return drop_reason::bad_ip;
    }
    return drop_reason::none;
}

// After the ICV verified: window update, trailer checks, decapsulation.
drop_reason finish_packet(sa_runtime& sa, rte_mbuf* m, in_packet& in, uint32_t& inner_bytes) noexcept
{
    drop_reason r = sa.replay.accept(in.seq);
    if (r != drop_reason::none) {
        return r;
    }
    uint8_t* data = rte_pktmbuf_mtod(m, uint8_t*);
    uint8_t* payload = in.esp + 8 + sa.iv_bytes;
    const uint8_t pad_len = payload[in.payload - 2];
    const uint8_t next_header = payload[in.payload - 1];
    if (uint32_t{pad_len} + 2 > in.payload) {
        return drop_reason::bad_padding;
    }
    // RFC 4303 §2.4: padding bytes are 1, 2, 3, ...
    const uint8_t* pad = payload + in.payload - 2 - pad_len;
    for (uint32_t k = 0; k < pad_len; ++k) {
        if (pad[k] != static_cast<uint8_t>(k + 1)) {
            return drop_reason::bad_padding;
        }
    }
    const uint32_t inner_len = in.payload - 2 - pad_len;
    if (next_header == proto_none) {
        return drop_reason::dummy;
    }
    const auto head = static_cast<uint32_t>(payload - data);
    if ((sa.flags & sa_tunnel) != 0) {
        return decapsulate_tunnel(sa, m, in.outer.tos, next_header, payload, inner_len, head, inner_bytes);
    }
    // Transport: slide the IP header up to the payload and restore its protocol and length.
    const uint16_t ip_header = in.outer.header;
    if (!prefix_contains(sa.config.remote, in.outer.version, ip_src(data)) ||
        !prefix_contains(sa.config.local, in.outer.version, ip_dst(data))) {
        return drop_reason::selector_mismatch;
    }
    uint8_t* start = payload - ip_header;
    std::memmove(start, data, ip_header);
    rte_pktmbuf_adj(m, static_cast<uint16_t>(head - ip_header));
    rte_pktmbuf_trim(m, static_cast<uint16_t>(rte_pktmbuf_data_len(m) - ip_header - inner_len));
    const uint32_t total = ip_header + inner_len;
    if (in.outer.version == 4) {
        start[9] = next_header;
        store_be16(start + 2, static_cast<uint16_t>(total));
        ipv4_set_checksum(start);
    } else {
        start[6] = next_header;
        store_be16(start + 4, static_cast<uint16_t>(total - 40));
    }
    inner_bytes = total;
    return drop_reason::none;
}

void inbound_chunk(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n, drop_reason* reasons) noexcept
{
    in_packet info[max_burst];
    uint16_t index[max_burst];
    uint16_t n_jobs = 0;
    const uint16_t allowed = lifetime_allowance(sa, n);
    const bool esn = (sa.flags & sa_esn) != 0;
    const uint32_t iv = sa.iv_bytes;
    const uint32_t icv = sa.icv_bytes;
    const uint32_t min_payload = std::max<uint32_t>(sa.block_bytes, 4);

    for (uint16_t i = 0; i < n; ++i) {
        reasons[i] = drop_reason::none;
        if (i >= allowed) {
            reasons[i] = drop_reason::lifetime_expired;
            continue;
        }
        rte_mbuf* m = pkts[i];
        in_packet& in = info[i];
        uint32_t offset = 0;
        drop_reason r = parse_outer(sa, m, in.outer, offset);
        if (r != drop_reason::none) [[unlikely]] {
            reasons[i] = r;
            continue;
        }
        uint8_t* data = rte_pktmbuf_mtod(m, uint8_t*);
        const uint32_t esp_len = in.outer.total - offset;
        if (esp_len < 8 + iv + icv + min_payload) {
            reasons[i] = drop_reason::truncated;
            continue;
        }
        in.esp = data + offset;
        in.payload = esp_len - 8 - iv - icv;
        // RFC 4303 §2.4: the ciphertext ends on a 4-byte boundary (16 for CBC, RFC 3602 §3).
        if (in.payload % sa.block_bytes != 0) {
            reasons[i] = drop_reason::bad_length;
            continue;
        }
        if (std::memcmp(in.esp, &sa.spi_be, 4) != 0) {
            reasons[i] = drop_reason::no_sa; // mis-dispatched by the caller
            continue;
        }
        replay_window::verdict v = sa.replay.check(load_be32(in.esp + 4));
        if (v.reason != drop_reason::none) {
            reasons[i] = v.reason;
            continue;
        }
        in.seq = v.seq;
        index[n_jobs++] = i;
    }
    if (n_jobs == 0) {
        return;
    }

    IMB_JOB* jobs[max_burst];
    const bool aead = (sa.flags & sa_aead) != 0;
    if (aead) {
        // AES-GCM through the direct API, one packet at a time (imb_burst.h, gcm_one: cheaper per
        // packet than a burst job); the computed ICV goes to in.tag and is compared below.
        for (uint16_t j = 0; j < n_jobs; ++j) {
            in_packet& in = info[index[j]];
            uint8_t* esp = in.esp;
            std::memcpy(in.nonce, &sa.salt, 4);
            std::memcpy(in.nonce + 4, esp + 8, 8);
            const uint8_t* aad = esp;
            uint64_t aad_len = 8;
            if (esn) {
                std::memcpy(in.aad, esp, 4);
                store_be32(in.aad + 4, static_cast<uint32_t>(in.seq >> 32));
                std::memcpy(in.aad + 8, esp + 4, 4);
                aad = in.aad;
                aad_len = 12;
            }
            gcm_one(core.mgr(), false, &sa.gcm_key, sa.key_size, esp + 16, esp + 16, in.payload, in.nonce,
                    aad, aad_len, in.tag, icv);
        }
    }
    const int done = aead ? n_jobs : run_burst(core.mgr(), jobs, n_jobs, [&](uint16_t j, IMB_JOB* job) {
        in_packet& in = info[index[j]];
        uint8_t* esp = in.esp;
        const uint32_t seq_hi = static_cast<uint32_t>(in.seq >> 32);
        job->cipher_direction = IMB_DIR_DECRYPT;
        job->chain_order = IMB_ORDER_HASH_CIPHER;
        job->key_len_in_bytes = sa.key_size;
        job->src = esp;
        job->dst = esp;
        job->user_data = reinterpret_cast<void*>(static_cast<uintptr_t>(index[j]));
        job->cipher_mode = sa.cipher_mode;
        job->hash_alg = sa.hash_alg;
        job->auth_tag_output = in.tag;
        job->auth_tag_output_len_in_bytes = icv;
        if ((sa.flags & (sa_aead | sa_gmac)) != 0) {
            std::memcpy(in.nonce, &sa.salt, 4);
            std::memcpy(in.nonce + 4, esp + 8, 8);
        }
        if ((sa.flags & sa_gmac) != 0) {
            const uint8_t* aad = esp;
            uint32_t aad_len = 16 + in.payload;
            if (esn) {
                // See esp_outbound.cpp: borrow 4 bytes in front of the ESP header.
                std::memcpy(in.saved, esp - 4, 4);
                std::memcpy(esp - 4, esp, 4);
                store_be32(esp, seq_hi);
                aad = esp - 4;
                aad_len += 4;
            }
            job->cipher_mode = IMB_CIPHER_NULL;
            job->src = aad;
            job->dst = const_cast<uint8_t*>(aad);
            job->cipher_start_src_offset_in_bytes = 0;
            job->msg_len_to_cipher_in_bytes = 0;
            job->hash_start_src_offset_in_bytes = 0;
            job->msg_len_to_hash_in_bytes = aad_len;
            job->u.GMAC._key = &sa.gcm_key;
            job->u.GMAC._iv = in.nonce;
            job->u.GMAC.iv_len_in_bytes = 12;
            return;
        }
        job->enc_keys = sa.enc_keys;
        job->dec_keys = sa.dec_keys;
        job->cipher_start_src_offset_in_bytes = 8 + iv;
        job->dst = esp + 8 + iv; // IPsec-MB applies the offset to src only
        job->msg_len_to_cipher_in_bytes = in.payload;
        job->iv = esp + 8;
        job->iv_len_in_bytes = iv;
        if (sa.hash_alg != IMB_AUTH_NULL) {
            uint32_t hash_len = 8 + iv + in.payload;
            if (esn) {
                // RFC 4303 §3.3.2.1: authenticate seq hi as if appended; it borrows the ICV's slot.
                std::memcpy(in.icv, esp + hash_len, icv);
                store_be32(esp + hash_len, seq_hi);
                hash_len += 4;
            }
            job->hash_start_src_offset_in_bytes = 0;
            job->msg_len_to_hash_in_bytes = hash_len;
            job->u.HMAC._hashed_auth_key_xor_ipad = sa.ipad;
            job->u.HMAC._hashed_auth_key_xor_opad = sa.opad;
        } else {
            job->hash_start_src_offset_in_bytes = 0;
            job->msg_len_to_hash_in_bytes = 0;
            job->auth_tag_output = nullptr;
        }
    });
    if (done < 0) [[unlikely]] {
        for (uint16_t j = 0; j < n_jobs; ++j) {
            reasons[index[j]] = drop_reason::crypto_error;
        }
        return;
    }

    uint64_t good = 0;
    uint64_t bytes = 0;
    uint64_t verified = 0;
    for (int j = 0; j < done; ++j) {
        auto i = aead ? index[j] : static_cast<uint16_t>(reinterpret_cast<uintptr_t>(jobs[j]->user_data));
        in_packet& in = info[i];
        const uint8_t* received = in.esp + 8 + iv + in.payload;
        if ((sa.flags & sa_gmac) != 0 && esn) {
            std::memcpy(in.esp, in.esp - 4, 4);
            std::memcpy(in.esp - 4, in.saved, 4);
        } else if (esn && (sa.flags & sa_aead) == 0 && sa.hash_alg != IMB_AUTH_NULL) {
            received = in.icv;
        }
        if (!aead && jobs[j]->status != IMB_STATUS_COMPLETED) [[unlikely]] {
            reasons[i] = drop_reason::crypto_error;
            continue;
        }
        if (icv != 0 && !icv_equal(in.tag, received, icv)) {
            reasons[i] = drop_reason::icv;
            continue;
        }
        if (icv != 0) {
            ++verified;
        }
        uint32_t inner_bytes = 0;
        drop_reason r = finish_packet(sa, pkts[i], in, inner_bytes);
        if (r != drop_reason::none) {
            reasons[i] = r;
            continue;
        }
        ++good;
        bytes += inner_bytes;
    }
    sa.stats.add(sa_counter::verify, verified);
    sa.stats.add(sa_counter::decaps, good);
    if (sa.cipher_mode != IMB_CIPHER_NULL) {
        sa.stats.add(sa_counter::decrypt, good);
    }
    sa.stats.add(sa_counter::packets, good);
    sa.stats.add(sa_counter::bytes, bytes);
    lifetime_account(core, sa, good, bytes);
}

} // namespace

uint16_t inbound_process(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n,
                         drop_reason* reasons) noexcept
{
    for (uint16_t off = 0; off < n; off += max_burst) {
        auto len = static_cast<uint16_t>(std::min<uint32_t>(max_burst, n - off));
        if ((sa.flags & sa_ah) != 0) {
            ah_inbound(core, sa, pkts + off, len, reasons + off);
        } else {
            inbound_chunk(core, sa, pkts + off, len, reasons + off);
        }
    }
    for (uint16_t i = 0; i < n; ++i) {
        if (reasons[i] != drop_reason::none) {
            sa.stats.drop(reasons[i]);
        }
    }
    return partition_by_verdict(pkts, reasons, n);
}

} // namespace espresso::dp
