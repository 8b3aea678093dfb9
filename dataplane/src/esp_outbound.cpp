// Outbound ESP (RFC 4303 §3.1, §3.3), tunnel and transport mode, optional UDP encapsulation
// (RFC 3948). One IPsec-MB burst per call.
//
// Packet layout built here (tunnel mode; transport keeps the packet's own IP header in front):
//   [outer IP][UDP]? [SPI][Seq][IV][ inner packet | TFC pad | pad 1,2,3.. | pad len | next hdr ][ICV]
//                    ^esp          ^-------------- encrypted ("payload") ---------------------^
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_udp.h>

#include <cstring>

#include "espresso/dp/ipsec.h"
#include "packet.h"
#include "imb_burst.h"
#include "sa_accounting.h"
#include "tunnel_header.h"

namespace espresso::dp {

// ah.cpp: sets reasons[i] for each packet, does not partition.
void ah_outbound(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n, drop_reason* reasons) noexcept;

namespace {

// CBC IVs must be unpredictable (RFC 3602 §2.3). Instead of drawing random bytes per packet we
// encrypt a unique counter block under the SA key (NIST SP 800-38A appendix C, method 1): the packet
// carries the counter block as the first "plaintext" block and is CBC-encrypted with a zero IV, so the
// first ciphertext block E_K(counter) becomes the IV the receiver uses for the rest. No extra job.
alignas(16) constexpr uint8_t zero_iv[16] = {};

struct out_packet {
    sa_runtime* sa;
    uint16_t group;       // which outbound_group of the call
    uint16_t index;       // packet index within the group
    uint8_t* esp;         // start of the ESP header
    uint32_t payload;     // bytes from the end of the IV to the ICV (block-aligned)
    uint64_t seq;
    uint32_t inner_bytes; // for counters
    alignas(16) uint8_t nonce[16]; // GCM/GMAC: salt || IV
    uint8_t aad[12];      // GCM with ESN: SPI || seq hi || seq lo (RFC 4106 §5)
    uint8_t saved[4];     // GMAC with ESN: bytes borrowed in front of the ESP header
};

// Packets of one or more SAs on their way to one IPsec-MB burst.
struct out_batch {
    out_packet info[max_burst];
    uint16_t n_jobs = 0;
};

void fill_outer(const sa_runtime& sa, rte_mbuf* m, uint8_t inner_tos, bool inner_df, uint64_t seq) noexcept
{
    uint8_t* p = rte_pktmbuf_mtod(m, uint8_t*);
    const uint32_t total = rte_pktmbuf_data_len(m);
    fill_outer_header(sa, p, total, inner_tos, inner_df, seq);
    if ((sa.flags & sa_udp) != 0) {
        const uint32_t ip_len = (sa.flags & sa_outer_v6) != 0 ? 40 : 20;
        store_be16(p + ip_len + 4, static_cast<uint16_t>(total - ip_len));
        store_be16(p + ip_len + 6, 0); // RFC 3948 §2.1: zero checksum over IPv4; IPv6 fixed below
    }
}

// Transport mode: the packet keeps its IP header; fix protocol, lengths and checksum.
void fill_transport(const sa_runtime& sa, rte_mbuf* m, uint16_t ip_header) noexcept
{
    uint8_t* p = rte_pktmbuf_mtod(m, uint8_t*);
    const uint32_t total = rte_pktmbuf_data_len(m);
    uint8_t proto = (sa.flags & sa_udp) != 0 ? proto_udp : proto_esp;
    if ((p[0] >> 4) == 4) {
        p[9] = proto;
        store_be16(p + 2, static_cast<uint16_t>(total));
        ipv4_set_checksum(p);
    } else {
        p[6] = proto;
        store_be16(p + 4, static_cast<uint16_t>(total - 40));
    }
    if ((sa.flags & sa_udp) != 0) {
        std::memcpy(p + ip_header, sa.outer_header, 4); // ports
        store_be16(p + ip_header + 4, static_cast<uint16_t>(total - ip_header));
        store_be16(p + ip_header + 6, 0);
    }
}

// IPv6 forbids a zero UDP checksum in general (RFC 8200 §8.1); compute it over the finished packet.
void fix_udp6_checksum(rte_mbuf* m, uint32_t udp_offset) noexcept
{
    uint8_t* p = rte_pktmbuf_mtod(m, uint8_t*);
    auto* udp = reinterpret_cast<rte_udp_hdr*>(p + udp_offset);
    udp->dgram_cksum = 0;
    udp->dgram_cksum = rte_ipv6_udptcp_cksum(reinterpret_cast<const rte_ipv6_hdr*>(p), udp);
}

// Headers, padding, sequence numbers and lifetime checks of packets pkts[0..n) of one SA (at most
// max_burst - batch.n_jobs of them); the packets that reach the engine are appended to `batch`.
// Verdicts of the others are set in `reasons`.
void outbound_prepare(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n, drop_reason* reasons,
                      uint16_t group, uint16_t off, out_batch& batch) noexcept
{
    uint16_t allowed = lifetime_allowance(sa, n);
    uint64_t first_seq = 0;
    uint16_t reserved = allowed == 0 ? 0 : reserve_sequence(core, sa, allowed, first_seq);

    const bool tunnel = (sa.flags & sa_tunnel) != 0;
    const uint32_t iv = sa.iv_bytes;
    const uint32_t icv = sa.icv_bytes;
    const uint32_t block = sa.block_bytes;

    for (uint16_t i = 0; i < n; ++i) {
        reasons[i] = drop_reason::none;
        if (i >= allowed) {
            reasons[i] = drop_reason::lifetime_expired;
            continue;
        }
        if (i >= reserved) {
            reasons[i] = drop_reason::seq_exhausted;
            continue;
        }
        rte_mbuf* m = pkts[i];
        if (m->nb_segs > 1 && rte_pktmbuf_linearize(m) != 0) {
            reasons[i] = drop_reason::no_headroom;
            continue;
        }
        uint8_t* data = rte_pktmbuf_mtod(m, uint8_t*);
        ip_view ip;
        drop_reason r = parse_ip(data, rte_pktmbuf_data_len(m), ip);
        if (r == drop_reason::none && !tunnel && ip.fragment) {
            r = drop_reason::bad_ip; // RFC 4301 §7: transport mode cannot carry fragments
        }
        if (r != drop_reason::none) [[unlikely]] {
            reasons[i] = r;
            continue;
        }
        const uint32_t payload_in = tunnel ? ip.total : ip.total - ip.header;
        const uint32_t tfc = sa.tfc_pad_to > ip.total ? sa.tfc_pad_to - ip.total : 0;
        const uint32_t padded = RTE_ALIGN_CEIL(payload_in + tfc + 2, block);
        const uint32_t pad = padded - payload_in - tfc - 2;
        const uint32_t head = sa.outer_bytes + 8 + iv; // transport: outer_bytes = UDP or 0
        const uint32_t tail = tfc + pad + 2 + icv;
        // Room behind the IP packet (link-layer padding after it is dropped).
        const uint32_t room = static_cast<uint32_t>(m->buf_len) - m->data_off - ip.total;
        if (m->data_off < head || room < tail || ip.total + head + tail > UINT16_MAX) [[unlikely]] {
            reasons[i] = drop_reason::no_headroom;
            continue;
        }
        const uint8_t inner_tos = ip.tos;
        const bool inner_df = ip.dont_fragment;
        const uint8_t next_header = tunnel ? (ip.version == 4 ? proto_ipv4 : proto_ipv6) : ip.protocol;

        // One segment (linearised above) with the room checked: the new layout is set directly
        // (rte_pktmbuf_trim, _prepend and _append would each check again and walk to the last segment).
        grow_span(m, ip.total, head, tail);
        uint8_t* start = rte_pktmbuf_mtod(m, uint8_t*);
        uint8_t* trailer = start + head + ip.total;
        uint8_t* esp = nullptr;
        if (tunnel) {
            esp = start + sa.outer_bytes;
        } else {
            std::memmove(start, start + head, ip.header);
            esp = start + ip.header + sa.outer_bytes;
        }
        // RFC 4303 §2.4: TFC padding (zeros), then monotonic padding 1, 2, 3, ..., pad length, next header.
        if (tfc != 0) [[unlikely]] {
            std::memset(trailer, 0, tfc);
        }
        uint8_t* pad_start = trailer + tfc;
        // pad < block <= 16; bytes a 16-byte copy writes past it are overwritten below (pad length,
        // next header, ICV) or lie in the tailroom.
        write_monotonic_padding(pad_start, pad, room - tfc);
        pad_start[pad] = static_cast<uint8_t>(pad);
        pad_start[pad + 1] = next_header;

        const uint64_t seq = first_seq + i;
        std::memcpy(esp, &sa.spi_be, 4);
        store_be32(esp + 4, static_cast<uint32_t>(seq));

        out_packet& o = batch.info[batch.n_jobs++];
        o.sa = &sa;
        o.group = group;
        o.index = static_cast<uint16_t>(off + i);
        o.esp = esp;
        o.payload = padded;
        o.seq = seq;
        o.inner_bytes = ip.total;
        if ((sa.flags & (sa_aead | sa_gmac)) != 0) {
            // RFC 4106 §3.1: the 8-byte IV must never repeat under one key; the sequence number
            // (64-bit with or without ESN) is unique per SA.
            store_be64(esp + 8, seq);
            std::memcpy(o.nonce, &sa.salt, 4);
            std::memcpy(o.nonce + 4, esp + 8, 8);
        } else if ((sa.flags & sa_cbc) != 0) {
            store_be64(esp + 8, seq);
            std::memcpy(esp + 16, &sa.spi_be, 4);
            std::memset(esp + 20, 0, 4);
        }
        if (tunnel) {
            fill_outer(sa, m, inner_tos, inner_df, seq);
        } else {
            fill_transport(sa, m, ip.header);
        }
    }

}

// The crypto of every packet in `batch`: AES-GCM one packet at a time through the direct API
// (gcm_one), the rest as one IPsec-MB burst whatever SA each belongs to (a job carries its own keys);
// then the per-SA counters and lifetimes. Empties the batch.
void outbound_submit(crypto_core& core, outbound_group* groups, out_batch& batch) noexcept
{
    if (batch.n_jobs == 0) {
        return;
    }
    // A packet whose crypto completed: UDP checksum (IPv6), counted on its SA group below.
    auto completed = [&](out_packet& o) {
        outbound_group& g = groups[o.group];
        rte_mbuf* m = g.pkts[o.index];
        if ((o.sa->flags & sa_udp) != 0) {
            uint8_t* p = rte_pktmbuf_mtod(m, uint8_t*);
            if ((p[0] >> 4) == 6) {
                fix_udp6_checksum(m, static_cast<uint32_t>(o.esp - p) - 8);
            }
        }
        ++g.pending_good;
        g.pending_bytes += o.inner_bytes;
    };
    // AES-GCM directly (gcm_one), everything else as one IPsec-MB burst.
    uint16_t burst[max_burst];
    uint16_t n_burst = 0;
    for (uint16_t j = 0; j < batch.n_jobs; ++j) {
        out_packet& o = batch.info[j];
        const sa_runtime& sa = *o.sa;
        if ((sa.flags & sa_aead) == 0) {
            burst[n_burst++] = j;
            continue;
        }
        uint8_t* esp = o.esp;
        const uint8_t* aad = esp;
        uint64_t aad_len = 8;
        if ((sa.flags & sa_esn) != 0) {
            std::memcpy(o.aad, esp, 4);
            store_be32(o.aad + 4, static_cast<uint32_t>(o.seq >> 32));
            std::memcpy(o.aad + 8, esp + 4, 4);
            aad = o.aad;
            aad_len = 12;
        }
        gcm_one(core.mgr(), true, &sa.gcm_key, sa.key_size, esp + 16, esp + 16, o.payload, o.nonce, aad,
                aad_len, esp + 16 + o.payload, 16);
        completed(o);
    }
    // The job of batch.info[j], every field of the chained job (the split passes read their own).
    auto fill = [&](uint16_t j, IMB_JOB* job) {
        out_packet& o = batch.info[j];
        const sa_runtime& sa = *o.sa;
        const bool esn = (sa.flags & sa_esn) != 0;
        const uint32_t iv = sa.iv_bytes;
        const uint32_t icv = sa.icv_bytes;
        uint8_t* esp = o.esp;
        const uint32_t seq_hi = static_cast<uint32_t>(o.seq >> 32);
        job->cipher_direction = IMB_DIR_ENCRYPT;
        job->chain_order = IMB_ORDER_CIPHER_HASH;
        job->key_len_in_bytes = sa.key_size;
        job->src = esp;
        job->dst = esp;
        job->user_data = reinterpret_cast<void*>(static_cast<uintptr_t>(j));
        job->cipher_mode = sa.cipher_mode;
        job->hash_alg = sa.hash_alg;
        if ((sa.flags & sa_gmac) != 0) {
            // RFC 4543 §3.3: AAD = SPI || [seq hi] || seq || IV || payload. With ESN the high half
            // goes between SPI and seq: borrow the 4 bytes in front of the ESP header (outer header,
            // restored after the job) so the AAD is contiguous.
            const uint8_t* aad = esp;
            uint32_t aad_len = 16 + o.payload;
            if (esn) {
                std::memcpy(o.saved, esp - 4, 4);
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
            job->u.GMAC._iv = o.nonce;
            job->u.GMAC.iv_len_in_bytes = 12;
            job->auth_tag_output = esp + 16 + o.payload;
            job->auth_tag_output_len_in_bytes = 16;
            return;
        }
        // AES-CBC or NULL, with or without HMAC.
        job->enc_keys = sa.enc_keys;
        job->dec_keys = sa.dec_keys;
        job->cipher_start_src_offset_in_bytes = 8;
        job->dst = esp + 8; // IPsec-MB applies the offset to src only
        job->msg_len_to_cipher_in_bytes = iv + o.payload; // CBC: counter block + payload
        job->iv = zero_iv;
        job->iv_len_in_bytes = iv;
        if (sa.hash_alg != IMB_AUTH_NULL) {
            uint32_t hash_len = 8 + iv + o.payload;
            if (esn) {
                // RFC 4303 §3.3.2.1: seq hi is authenticated as if appended to the payload; it sits
                // in the ICV slot until the ICV overwrites it.
                store_be32(esp + hash_len, seq_hi);
                hash_len += 4;
            }
            job->hash_start_src_offset_in_bytes = 0;
            job->msg_len_to_hash_in_bytes = hash_len;
            job->u.HMAC._hashed_auth_key_xor_ipad = sa.ipad;
            job->u.HMAC._hashed_auth_key_xor_opad = sa.opad;
            job->auth_tag_output = esp + 8 + iv + o.payload;
            job->auth_tag_output_len_in_bytes = icv;
        } else {
            job->hash_start_src_offset_in_bytes = 0;
            job->msg_len_to_hash_in_bytes = 0;
            job->auth_tag_output = nullptr;
            job->auth_tag_output_len_in_bytes = 0;
        }
    };
    // A job back from IPsec-MB.
    auto finish = [&](const IMB_JOB* job) {
        const auto k = static_cast<uint16_t>(reinterpret_cast<uintptr_t>(job->user_data));
        out_packet& o = batch.info[k];
        const sa_runtime& sa = *o.sa;
        if ((sa.flags & sa_gmac) != 0 && (sa.flags & sa_esn) != 0) {
            std::memcpy(o.esp, o.esp - 4, 4);
            std::memcpy(o.esp - 4, o.saved, 4);
        }
        if (job->status != IMB_STATUS_COMPLETED) [[unlikely]] {
            groups[o.group].reasons[o.index] = drop_reason::crypto_error;
            return;
        }
        completed(o);
    };
    // IPsec-MB refused a whole burst: none of its packets goes out. (The AES-GCM packets of the batch
    // completed: they are still counted below.)
    auto refused = [&](uint16_t j) {
        groups[batch.info[j].group].reasons[batch.info[j].index] = drop_reason::crypto_error;
    };
    run_jobs(core, burst, n_burst, IMB_DIR_ENCRYPT, [&](uint16_t j) -> const sa_runtime& { return *batch.info[j].sa; },
             [&](uint16_t j) { return batch.info[j].payload; }, fill, finish, refused);
    // Counters and lifetimes once per SA of the batch: its jobs cover a run of consecutive groups (a
    // group in the run without jobs, AH or every packet dropped before the crypto, has nothing to
    // count). Not a pass over the jobs looking for group changes: ~10 instructions per packet.
    const uint16_t last = batch.info[batch.n_jobs - 1].group;
    for (uint16_t gi = batch.info[0].group; gi <= last; ++gi) {
        outbound_group& g = groups[gi];
        sa_runtime& sa = *g.sa;
        const uint64_t good = g.pending_good;
        const uint64_t bytes = g.pending_bytes;
        g.pending_good = 0;
        g.pending_bytes = 0;
        // `packets` and `bytes` (encaps, encrypt and digest mirror `packets`: sa_stats::mirrors,
        // set by make_sa), and the lifetime they are.
        lifetime_account(core, sa, good, bytes);
    }
    batch.n_jobs = 0;
}

} // namespace

void outbound_process_groups(crypto_core& core, outbound_group* groups, unsigned count) noexcept
{
    if (count > 1) {
        // Many SAs: start the lines the preparation of every SA writes (sequence and lifetime,
        // counters) before the first one is used; their heads the worker started with the SPD.
        // With deferred counters ESP packets add to the core's slot, which is started instead of
        // the SA's counters line; the SAs that still write that line (volume limits, AH, drops) take
        // its miss when they do. The key schedules are not prefetched: started as each SA was
        // prepared (8 lines each) they helped on the earlier AVX2 machine (perf/RESULTS.md,
        // 2026-11-30), but on this AVX-512 one the AES-GCM code's own loads of them overlap as well
        // and the prefetches cost the preparation pass more (perf/stage-cycles, scale-1000 / 100000 /
        // 1000000: `esp_out` 2-5 % fewer cycles without them in nine alternated pairs of nine).
        const bool deferred = core.defers_outbound_counters();
        for (unsigned gi = 0; gi < count; ++gi) {
            if (deferred) {
                prefetch_sa_sequence(groups[gi].sa);
                core.prefetch_deferred(groups[gi].sa);
            } else {
                prefetch_sa_outbound_state(groups[gi].sa);
            }
        }
    }
    out_batch batch;
    for (unsigned gi = 0; gi < count; ++gi) {
        outbound_group& g = groups[gi];
        g.pending_good = 0;
        g.pending_bytes = 0;
        if ((g.sa->flags & sa_ah) != 0) {
            for (uint16_t off = 0; off < g.n; off += max_burst) {
                auto len = static_cast<uint16_t>(std::min<uint32_t>(max_burst, g.n - off));
                ah_outbound(core, *g.sa, g.pkts + off, len, g.reasons + off);
            }
            continue;
        }
        for (uint16_t off = 0; off < g.n;) {
            if (batch.n_jobs == max_burst) {
                outbound_submit(core, groups, batch);
            }
            auto len = static_cast<uint16_t>(std::min<uint32_t>(max_burst - batch.n_jobs, g.n - off));
            outbound_prepare(core, *g.sa, g.pkts + off, len, g.reasons + off, static_cast<uint16_t>(gi), off, batch);
            off = static_cast<uint16_t>(off + len);
        }
    }
    outbound_submit(core, groups, batch);
    for (unsigned gi = 0; gi < count; ++gi) {
        outbound_group& g = groups[gi];
        g.good = settle_verdicts(*g.sa, g.pkts, g.reasons, g.n);
    }
}

uint16_t outbound_process(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n,
                          drop_reason* reasons) noexcept
{
    outbound_group g{&sa, pkts, reasons, n};
    outbound_process_groups(core, &g, 1);
    return g.good;
}

} // namespace espresso::dp
