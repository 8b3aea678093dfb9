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
    sa_runtime* sa;
    uint16_t group;   // which inbound_group of the call
    uint16_t index;   // packet index within the group
    uint8_t* esp;
    uint32_t payload; // ciphertext bytes between IV and ICV
    uint64_t seq;     // full sequence number (ESN inferred)
    outer_fields outer;   // the outer IP header as received (transport mode keeps the header)
    alignas(16) uint8_t nonce[16];
    alignas(16) uint8_t tag[64]; // computed ICV (untruncated space)
    uint8_t icv[32];             // received ICV when its slot is borrowed (ESN)
    uint8_t aad[12];
    uint8_t saved[4];
};

// Packets of one or more SAs on their way to the crypto (one IPsec-MB burst, or AES-GCM one by one).
// No member with a default initializer in in_packet: the batch is a local of every call, and such
// members would be written for all max_burst entries each time.
struct in_batch {
    in_packet info[max_burst];
    uint16_t n_jobs = 0;
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
    keep_span(m, 0, ip.total); // link-layer padding behind the IP packet goes
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

// After the ICV verified: window update, trailer checks, decapsulation. Inlined into its one
// caller: out of line it was a call with six saved registers per packet (gcm-in-64 +0.2-1.3 %,
// cbc-in-64 +1.5 %, gcm-in-imix +2 % with the single-worker owner shortcut in worker.cpp).
__attribute__((always_inline)) inline drop_reason finish_packet(sa_runtime& sa, rte_mbuf* m, in_packet& in, uint32_t& inner_bytes) noexcept
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
    if (!monotonic_padding(pad, pad_len, static_cast<const uint8_t*>(m->buf_addr) + m->buf_len)) {
        return drop_reason::bad_padding;
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
    if (!prefix_contains(sa.remote_selector, in.outer.version, ip_src(data)) ||
        !prefix_contains(sa.local_selector, in.outer.version, ip_dst(data))) {
        return drop_reason::selector_mismatch;
    }
    uint8_t* start = payload - ip_header;
    std::memmove(start, data, ip_header);
    keep_span(m, head - ip_header, ip_header + inner_len);
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

// Length, SPI and anti-replay pre-checks of packets pkts[0..n) of one SA (at most
// max_burst - batch.n_jobs of them); the packets that go on to the crypto are appended to `batch`,
// the verdicts of the others are set in `reasons`.
void inbound_prepare(sa_runtime& sa, rte_mbuf** pkts, uint16_t n, drop_reason* reasons, uint16_t group,
                     uint16_t off, in_batch& batch) noexcept
{
    const uint16_t allowed = lifetime_allowance(sa, n);
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
        in_packet& in = batch.info[batch.n_jobs];
        uint32_t offset = 0;
        ip_view outer;
        drop_reason r = parse_outer(sa, m, outer, offset);
        if (r != drop_reason::none) [[unlikely]] {
            reasons[i] = r;
            continue;
        }
        in.outer = outer_of(outer);
        uint8_t* data = rte_pktmbuf_mtod(m, uint8_t*);
        const uint32_t esp_len = outer.total - offset;
        if (esp_len < 8 + iv + icv + min_payload) {
            reasons[i] = drop_reason::truncated;
            continue;
        }
        in.esp = data + offset;
        in.payload = esp_len - 8 - iv - icv;
        // RFC 4303 §2.4: the ciphertext ends on a 4-byte boundary (16 for CBC, RFC 3602 §3).
        if ((in.payload & (sa.block_bytes - 1U)) != 0) { // block_bytes: 4 or 16 (sa.h)
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
        in.sa = &sa;
        in.group = group;
        in.index = static_cast<uint16_t>(off + i);
        ++batch.n_jobs;
    }
}

// The crypto of every packet in `batch` (AES-GCM one packet at a time through the direct API,
// gcm_one; the rest as one IPsec-MB burst whatever SA each belongs to, a job carries its own keys),
// then the ICV comparison, the window update and decapsulation, and the per-SA counters and
// lifetimes. Empties the batch.
void inbound_submit(crypto_core& core, inbound_group* groups, in_batch& batch) noexcept
{
    if (batch.n_jobs == 0) {
        return;
    }
    // A packet whose crypto completed: ICV, then finish_packet; counted on its group. Inlined into
    // both callers: out of line (GCC made it one clone) it was a call saving six registers per
    // packet (perf/stage-cycles gcm-in-64: esp_in ~2.7 cycles lower, three pairs of three).
    auto completed = [&](in_packet& in) __attribute__((always_inline)) {
        const sa_runtime& sa = *in.sa;
        inbound_group& g = groups[in.group];
        const uint32_t icv = sa.icv_bytes;
        const bool esn = (sa.flags & sa_esn) != 0;
        const uint8_t* received = in.esp + 8 + sa.iv_bytes + in.payload;
        if ((sa.flags & sa_gmac) != 0 && esn) {
            std::memcpy(in.esp, in.esp - 4, 4);
            std::memcpy(in.esp - 4, in.saved, 4);
        } else if (esn && (sa.flags & sa_aead) == 0 && sa.hash_alg != IMB_AUTH_NULL) {
            received = in.icv;
        }
        if (icv != 0 && !icv_equal(in.tag, received, icv)) {
            g.reasons[in.index] = drop_reason::icv;
            return;
        }
        if (icv != 0) {
            ++g.pending_verified;
        }
        uint32_t inner_bytes = 0;
        drop_reason r = finish_packet(*in.sa, g.pkts[in.index], in, inner_bytes);
        if (r != drop_reason::none) {
            g.reasons[in.index] = r;
            return;
        }
        ++g.pending_good;
        g.pending_bytes += inner_bytes;
    };
    // AES-GCM directly; the computed ICV goes to in.tag and is compared in completed(). Packets of
    // one SA stay in arrival order (the window update in finish_packet depends on it only for
    // duplicates, which the second accept() rejects whatever the order).
    uint16_t burst[max_burst];
    uint16_t n_burst = 0;
    uint16_t gcm[max_burst];
    uint16_t n_gcm = 0;
    for (uint16_t j = 0; j < batch.n_jobs; ++j) {
        in_packet& in = batch.info[j];
        const sa_runtime& sa = *in.sa;
        if ((sa.flags & sa_aead) == 0) {
            burst[n_burst++] = j;
            continue;
        }
        gcm[n_gcm++] = j;
        uint8_t* esp = in.esp;
        std::memcpy(in.nonce, &sa.salt, 4);
        std::memcpy(in.nonce + 4, esp + 8, 8);
        const uint8_t* aad = esp;
        uint64_t aad_len = 8;
        if ((sa.flags & sa_esn) != 0) {
            std::memcpy(in.aad, esp, 4);
            store_be32(in.aad + 4, static_cast<uint32_t>(in.seq >> 32));
            std::memcpy(in.aad + 8, esp + 4, 4);
            aad = in.aad;
            aad_len = 12;
        }
        gcm_one(core.mgr(), false, &sa.gcm_key, sa.key_size, esp + 16, esp + 16, in.payload, in.nonce, aad,
                aad_len, in.tag, sa.icv_bytes);
    }
    // Checked once every AES-GCM call of the batch is done: the trailer and inner header they read
    // were just written by the cipher (its last block with a masked store), which a read right after
    // the call may have to wait for (~2 cycles per packet less at 64 B this way, perf/RESULTS.md,
    // stop 26; larger packets unchanged).
    for (uint16_t k = 0; k < n_gcm; ++k) {
        completed(batch.info[gcm[k]]);
    }
    // The job of batch.info[j], every field of the chained job (the split passes read their own).
    auto fill = [&](uint16_t j, IMB_JOB* job) {
        in_packet& in = batch.info[j];
        const sa_runtime& sa = *in.sa;
        const bool esn = (sa.flags & sa_esn) != 0;
        const uint32_t iv = sa.iv_bytes;
        const uint32_t icv = sa.icv_bytes;
        uint8_t* esp = in.esp;
        const uint32_t seq_hi = static_cast<uint32_t>(in.seq >> 32);
        job->cipher_direction = IMB_DIR_DECRYPT;
        job->chain_order = IMB_ORDER_HASH_CIPHER;
        job->key_len_in_bytes = sa.key_size;
        job->src = esp;
        job->dst = esp;
        job->user_data = reinterpret_cast<void*>(static_cast<uintptr_t>(j));
        job->cipher_mode = sa.cipher_mode;
        job->hash_alg = sa.hash_alg;
        job->auth_tag_output = in.tag;
        job->auth_tag_output_len_in_bytes = icv;
        if ((sa.flags & sa_gmac) != 0) {
            std::memcpy(in.nonce, &sa.salt, 4);
            std::memcpy(in.nonce + 4, esp + 8, 8);
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
    };
    // A job back from IPsec-MB.
    auto finish = [&](const IMB_JOB* job) {
        const auto k = static_cast<uint16_t>(reinterpret_cast<uintptr_t>(job->user_data));
        in_packet& in = batch.info[k];
        if (job->status != IMB_STATUS_COMPLETED) [[unlikely]] {
            if ((in.sa->flags & sa_gmac) != 0 && (in.sa->flags & sa_esn) != 0) {
                std::memcpy(in.esp, in.esp - 4, 4);
                std::memcpy(in.esp - 4, in.saved, 4);
            }
            groups[in.group].reasons[in.index] = drop_reason::crypto_error;
            return;
        }
        completed(in);
    };
    // IPsec-MB refused a whole burst: none of its packets is delivered. (The AES-GCM packets of the
    // batch completed: they are still counted below.)
    auto refused = [&](uint16_t j) {
        groups[batch.info[j].group].reasons[batch.info[j].index] = drop_reason::crypto_error;
    };
    run_jobs(core, burst, n_burst, IMB_DIR_DECRYPT, [&](uint16_t j) -> const sa_runtime& { return *batch.info[j].sa; },
             [&](uint16_t j) { return batch.info[j].payload; }, fill, finish, refused);
    // Counters and lifetimes once per SA of the batch: its jobs cover a run of consecutive groups (a
    // group in the run without jobs, AH or every packet dropped before the crypto, adds zeros). Not
    // a pass over the jobs looking for group changes: that was ~10 instructions per packet.
    const uint16_t last = batch.info[batch.n_jobs - 1].group;
    for (uint16_t gi = batch.info[0].group; gi <= last; ++gi) {
        inbound_group& g = groups[gi];
        sa_runtime& sa = *g.sa;
        const uint64_t good = g.pending_good;
        const uint64_t bytes = g.pending_bytes;
        // One writer, this worker (the SPI's owner): plain adds (sa_stats::add_owned).
        sa.stats.add_owned(sa_counter::verify, g.pending_verified);
        g.pending_good = 0;
        g.pending_bytes = 0;
        g.pending_verified = 0;
        // decaps and decrypt mirror `packets` (sa_stats::mirrors, set by make_sa).
        lifetime_account(core, sa, good, bytes); // adds `packets` and `bytes`
    }
    batch.n_jobs = 0;
}

} // namespace

void inbound_process_groups(crypto_core& core, inbound_group* groups, unsigned count) noexcept
{
    if (count > 1) {
        // Many SAs: start every SA's lines loading before the first one is used.
        for (unsigned gi = 0; gi < count; ++gi) {
            prefetch_sa_head(groups[gi].sa);
        }
        for (unsigned gi = 0; gi < count; ++gi) {
            prefetch_sa_state(groups[gi].sa);
        }
    }
    in_batch batch;
    for (unsigned gi = 0; gi < count; ++gi) {
        inbound_group& g = groups[gi];
        g.pending_good = 0;
        g.pending_bytes = 0;
        g.pending_verified = 0;
        if ((g.sa->flags & sa_ah) != 0) {
            for (uint16_t off = 0; off < g.n; off += max_burst) {
                auto len = static_cast<uint16_t>(std::min<uint32_t>(max_burst, g.n - off));
                ah_inbound(core, *g.sa, g.pkts + off, len, g.reasons + off);
            }
            continue;
        }
        for (uint16_t off = 0; off < g.n;) {
            if (batch.n_jobs == max_burst) {
                inbound_submit(core, groups, batch);
            }
            auto len = static_cast<uint16_t>(std::min<uint32_t>(max_burst - batch.n_jobs, g.n - off));
            inbound_prepare(*g.sa, g.pkts + off, len, g.reasons + off, static_cast<uint16_t>(gi), off, batch);
            off = static_cast<uint16_t>(off + len);
        }
    }
    inbound_submit(core, groups, batch);
    for (unsigned gi = 0; gi < count; ++gi) {
        inbound_group& g = groups[gi];
        g.good = settle_verdicts(*g.sa, g.pkts, g.reasons, g.n);
    }
}

uint16_t inbound_process(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n,
                         drop_reason* reasons) noexcept
{
    inbound_group g{&sa, pkts, reasons, n};
    inbound_process_groups(core, &g, 1);
    return g.good;
}

} // namespace espresso::dp
