// AH (RFC 4302), tunnel and transport mode, IPv4 and IPv6, HMAC-SHA1/SHA2 (RFC 2404, RFC 4868) and
// AES-GMAC (RFC 4543 §5). One IPsec-MB burst per call, like the ESP paths; these functions only set a
// verdict per packet: outbound_process / inbound_process (esp_*.cpp) count drops and partition.
//
// Packet layout (tunnel mode; transport keeps the packet's own IP header, options included, in front):
//   [outer IP][Next hdr | Payload len | Reserved][SPI][Seq][IV (GMAC only)][ICV][ICV pad][inner packet]
//             ^ah ------------------------------------------------------------------- ah_len --^
//
// The ICV covers the whole IP packet (RFC 4302 §3.3.3.1): the IP header with its mutable fields
// zeroed, AH with the ICV zeroed, the payload and, with ESN, the high 32 bits of the sequence number
// appended implicitly after the packet (§3.3.3.2, Appendix B). The job hashes the packet in place:
// each packet's IP header is saved to a fixed scratch area, its mutable fields zeroed for the job and
// the saved copy written back once the job is done. The ESN bytes go to the mbuf tailroom, behind the
// packet's last byte, so nothing on the wire changes.
//
// Choices the RFC leaves open or this engine narrows, written down here:
//  - IPv4 options (transport mode): kept in front of AH; RFC 4302 Appendix A.1 immutable options are
//    hashed as they are, every other option is zeroed in full for the ICV; malformed options: bad_ip.
//  - IPv6: AH goes right behind the fixed 40-byte header, as ESP does (extension headers are not
//    parsed: whatever follows is payload and hashed as is). A Hop-by-Hop header cannot follow AH
//    (RFC 8200 §4.1), so outbound transport packets that carry one are refused (bad_ip); inbound AH
//    must follow the fixed header directly.
//  - ICV padding: outbound pads AH to 4 bytes for IPv4 and 8 bytes for IPv6 (RFC 4302 §3.3.3.2.1).
//    Inbound accepts either alignment for IPv4 because Linux pads IPv4 AH to 8 bytes unless the SA
//    has `flag align4`; the padding is hashed as received.
//  - Outer DSCP/ECN/DF/ID and tunnel decapsulation: shared with ESP (tunnel_header.h).
//  - AES-GMAC (RFC 4543 §5): the 8-byte IV (the 64-bit sequence number) sits between the sequence
//    number and the 16-byte ICV and is hashed as sent; only the ICV is zeroed. With ESN the high half
//    is appended as for HMAC. No second implementation was available to check this against (scapy
//    has no AH GMAC); the HMAC paths match scapy byte for byte.
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

void ah_outbound(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n, drop_reason* reasons) noexcept;
void ah_inbound(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n, drop_reason* reasons) noexcept;

namespace {

// RFC 4302 §2:
//   0                   1                   2                   3
//   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  | Next Header   |  Payload Len  |          RESERVED             |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |                 Security Parameters Index (SPI)               |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |                    Sequence Number Field                      |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |                [IV: AES-GMAC only, RFC 4543 §5]               |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//  |                Integrity Check Value-ICV (variable)           |
//  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
inline constexpr uint32_t ah_fixed = 12;
inline constexpr uint32_t max_ip_header = 60; // IPv4 with 40 bytes of options; IPv6 fixed is 40

// No member with a default initialiser: the calls below keep max_burst of these on the stack, and
// such members would be written for every entry on every call.
struct ah_packet {
    uint8_t* ah;
    uint32_t ah_len;      // bytes of AH including IV, ICV and padding
    uint32_t hash_len;    // bytes hashed from the IP header (with ESN: + 4 in the tailroom)
    uint16_t ip_header;   // bytes of the IP header in front of AH
    uint64_t seq;
    uint32_t inner_bytes; // outbound: for counters
    outer_fields outer;   // inbound: the IP header as received
    alignas(16) uint8_t nonce[16];
    alignas(16) uint8_t tag[64]; // inbound: computed ICV
    uint8_t icv[32];             // inbound: received ICV
    uint8_t saved[max_ip_header]; // IP header as on the wire while the job hashes the zeroed one
};

constexpr uint32_t align_up(uint32_t v, uint32_t a) noexcept { return (v + a - 1) / a * a; }

// RFC 4302 §3.3.3.2.1: AH is a multiple of 32 bits after IPv4 and of 64 bits after IPv6.
uint32_t ah_length(const sa_runtime& sa, bool v6) noexcept
{
    return align_up(ah_fixed + sa.iv_bytes + sa.icv_bytes, v6 ? 8 : 4);
}

// RFC 4302 Appendix A.1: option numbers (the low 5 bits of the type octet) whose value is immutable.
bool ipv4_option_immutable(uint8_t type) noexcept
{
    switch (type & 0x1f) {
    case 0:  // end of option list
    case 1:  // no operation
    case 2:  // security
    case 5:  // extended security
    case 6:  // commercial security
    case 20: // router alert
    case 21: // sender directed multi-destination delivery
        return true;
    default:
        return false;
    }
}

// Walks the IPv4 options; with `zero`, clears every mutable option in full (RFC 4302 §3.3.3.1.1.2).
// Returns false when an option's length is malformed.
bool ipv4_options(uint8_t* ip, uint16_t header, bool zero) noexcept
{
    uint32_t k = 20;
    while (k < header) {
        const uint8_t type = ip[k];
        if (type == 0) {
            break; // end of list: the rest is padding, hashed as is
        }
        if (type == 1) {
            ++k;
            continue;
        }
        if (k + 1 >= header) {
            return false;
        }
        const uint8_t len = ip[k + 1];
        if (len < 2 || k + len > header) {
            return false;
        }
        if (zero && !ipv4_option_immutable(type)) {
            std::memset(ip + k, 0, len);
        }
        k += len;
    }
    return true;
}

// RFC 4302 §3.3.3.1.1.1 (IPv4: TOS, flags + fragment offset, TTL, checksum) and §3.3.3.1.2.1 (IPv6:
// traffic class, flow label, hop limit): zeroed for the ICV computation.
void zero_mutable(uint8_t* ip, uint16_t header) noexcept
{
    if ((ip[0] >> 4) == 4) {
        ip[1] = 0;
        ip[6] = 0;
        ip[7] = 0;
        ip[8] = 0;
        ip[10] = 0;
        ip[11] = 0;
        if (header > 20) {
            ipv4_options(ip, header, true); // validated before
        }
    } else {
        ip[0] = 0x60;
        ip[1] = 0;
        ip[2] = 0;
        ip[3] = 0;
        ip[7] = 0;
    }
}

// Fills in one job: HMAC or GMAC over [ip, ip + hash_len), tag to `tag_out`.
void prepare_job(const sa_runtime& sa, IMB_JOB* job, uint8_t* ip, ah_packet& a, uint8_t* tag_out,
                 uint16_t index) noexcept
{
    job->cipher_direction = IMB_DIR_ENCRYPT;
    job->chain_order = IMB_ORDER_CIPHER_HASH;
    job->cipher_mode = IMB_CIPHER_NULL;
    job->key_len_in_bytes = sa.key_size;
    job->src = ip;
    job->dst = ip;
    job->cipher_start_src_offset_in_bytes = 0;
    job->msg_len_to_cipher_in_bytes = 0;
    job->hash_alg = sa.hash_alg;
    job->hash_start_src_offset_in_bytes = 0;
    job->msg_len_to_hash_in_bytes = a.hash_len;
    job->auth_tag_output = tag_out;
    job->auth_tag_output_len_in_bytes = sa.icv_bytes;
    job->user_data = reinterpret_cast<void*>(static_cast<uintptr_t>(index));
    if ((sa.flags & sa_gmac) != 0) {
        // RFC 4543 §3.2 nonce: salt || IV.
        std::memcpy(a.nonce, &sa.salt, 4);
        std::memcpy(a.nonce + 4, a.ah + ah_fixed, 8);
        job->u.GMAC._key = &sa.gcm_key;
        job->u.GMAC._iv = a.nonce;
        job->u.GMAC.iv_len_in_bytes = 12;
    } else {
        job->u.HMAC._hashed_auth_key_xor_ipad = sa.ipad;
        job->u.HMAC._hashed_auth_key_xor_opad = sa.opad;
    }
}

} // namespace

void ah_outbound(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n, drop_reason* reasons) noexcept
{
    ah_packet info[max_burst];
    uint16_t index[max_burst];
    uint16_t n_jobs = 0;

    const uint16_t allowed = lifetime_allowance(sa, n);
    uint64_t first_seq = 0;
    const uint16_t reserved = allowed == 0 ? 0 : reserve_sequence(core, sa, allowed, first_seq);

    const bool tunnel = (sa.flags & sa_tunnel) != 0;
    const bool esn = (sa.flags & sa_esn) != 0;
    const bool gmac = (sa.flags & sa_gmac) != 0;
    const uint32_t iv = sa.iv_bytes;

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
        if (r == drop_reason::none && !tunnel) {
            if (ip.fragment) {
                r = drop_reason::bad_ip; // RFC 4301 §7: transport mode cannot carry fragments
            } else if (ip.version == 6 && ip.protocol == 0) {
                r = drop_reason::bad_ip; // Hop-by-Hop must stay right behind the IPv6 header
            } else if (ip.version == 4 && ip.header > 20 && !ipv4_options(data, ip.header, false)) {
                r = drop_reason::bad_ip;
            }
        }
        if (r != drop_reason::none) [[unlikely]] {
            reasons[i] = r;
            continue;
        }
        rte_pktmbuf_trim(m, static_cast<uint16_t>(rte_pktmbuf_data_len(m) - ip.total));

        const bool v6 = tunnel ? (sa.flags & sa_outer_v6) != 0 : ip.version == 6;
        const uint32_t ah_len = ah_length(sa, v6);
        const uint32_t head = (tunnel ? sa.outer_bytes : 0) + ah_len;
        const uint32_t tail = esn ? 4 : 0; // seq hi, hashed behind the packet, never sent
        if (rte_pktmbuf_headroom(m) < head || rte_pktmbuf_tailroom(m) < tail ||
            rte_pktmbuf_data_len(m) + head > UINT16_MAX) [[unlikely]] {
            reasons[i] = drop_reason::no_headroom;
            continue;
        }
        const uint8_t next_header = tunnel ? (ip.version == 4 ? proto_ipv4 : proto_ipv6) : ip.protocol;
        uint8_t* start = reinterpret_cast<uint8_t*>(rte_pktmbuf_prepend(m, static_cast<uint16_t>(head)));
        const uint32_t total = rte_pktmbuf_data_len(m);
        ah_packet& a = info[i];
        if (tunnel) {
            a.ip_header = static_cast<uint16_t>(sa.outer_bytes);
            fill_outer_header(sa, start, total, ip.tos, ip.dont_fragment, first_seq + i);
        } else {
            // RFC 4302 §3.1.1: AH goes after the IP header (IPv4 options stay in front of it).
            a.ip_header = ip.header;
            std::memmove(start, start + head, ip.header);
            if (v6) {
                start[6] = proto_ah;
                store_be16(start + 4, static_cast<uint16_t>(total - 40));
            } else {
                start[9] = proto_ah;
                store_be16(start + 2, static_cast<uint16_t>(total));
                ipv4_set_checksum(start);
            }
        }
        uint8_t* ah = start + a.ip_header;
        const uint64_t seq = first_seq + i;
        ah[0] = next_header;
        ah[1] = static_cast<uint8_t>(ah_len / 4 - 2); // RFC 4302 §2.2
        ah[2] = 0;
        ah[3] = 0;
        std::memcpy(ah + 4, &sa.spi_be, 4);
        store_be32(ah + 8, static_cast<uint32_t>(seq));
        if (gmac) {
            // RFC 4543 §3.1: the IV must not repeat under one key; the 64-bit sequence number does not.
            store_be64(ah + ah_fixed, seq);
        }
        std::memset(ah + ah_fixed + iv, 0, ah_len - ah_fixed - iv); // ICV and its padding
        if (esn) {
            store_be32(start + total, static_cast<uint32_t>(seq >> 32));
        }
        std::memcpy(a.saved, start, a.ip_header);
        zero_mutable(start, a.ip_header);
        a.ah = ah;
        a.ah_len = ah_len;
        a.hash_len = total + tail;
        a.seq = seq;
        a.inner_bytes = ip.total;
        index[n_jobs++] = i;
    }
    if (n_jobs == 0) {
        return;
    }

    IMB_JOB* jobs[max_burst];
    int done = run_burst(hash_manager(core, sa.hash_alg), jobs, n_jobs, [&](uint16_t j, IMB_JOB* job) {
        ah_packet& a = info[index[j]];
        // The tag is written over the (zeroed) ICV field once the whole packet has been hashed.
        prepare_job(sa, job, rte_pktmbuf_mtod(pkts[index[j]], uint8_t*), a, a.ah + ah_fixed + iv, index[j]);
    });
    if (done < 0) [[unlikely]] {
        for (uint16_t j = 0; j < n_jobs; ++j) {
            reasons[index[j]] = drop_reason::crypto_error;
        }
        return;
    }
    // Packets whose job never completed (cannot happen after a flush) are not left looking good.
    bool completed[max_burst] = {};
    uint64_t good = 0;
    uint64_t bytes = 0;
    for (int j = 0; j < done; ++j) {
        auto i = static_cast<uint16_t>(reinterpret_cast<uintptr_t>(jobs[j]->user_data));
        ah_packet& a = info[i];
        completed[i] = true;
        std::memcpy(rte_pktmbuf_mtod(pkts[i], uint8_t*), a.saved, a.ip_header);
        if (jobs[j]->status != IMB_STATUS_COMPLETED) [[unlikely]] {
            reasons[i] = drop_reason::crypto_error;
            continue;
        }
        ++good;
        bytes += a.inner_bytes;
    }
    for (uint16_t j = 0; j < n_jobs; ++j) {
        if (!completed[index[j]]) [[unlikely]] {
            reasons[index[j]] = drop_reason::crypto_error;
        }
    }
    sa.stats.add(sa_counter::encaps, good);
    sa.stats.add(sa_counter::digest, good);
    lifetime_account(core, sa, good, bytes); // and `packets`, `bytes`
}

namespace {

// After the ICV verified: window update, decapsulation, selector check (RFC 4301 §5.2).
drop_reason finish_inbound(sa_runtime& sa, rte_mbuf* m, ah_packet& a, uint32_t& inner_bytes) noexcept
{
    drop_reason r = sa.replay.accept(a.seq);
    if (r != drop_reason::none) {
        return r;
    }
    uint8_t* data = rte_pktmbuf_mtod(m, uint8_t*);
    const uint8_t next_header = a.ah[0];
    uint8_t* payload = a.ah + a.ah_len;
    const uint32_t head = a.ip_header + a.ah_len;
    const uint32_t payload_len = a.outer.total - head;
    if ((sa.flags & sa_tunnel) != 0) {
        return decapsulate_tunnel(sa, m, a.outer.tos, next_header, payload, payload_len, head, inner_bytes);
    }
    if (!prefix_contains(sa.remote_selector, a.outer.version, ip_src(data)) ||
        !prefix_contains(sa.local_selector, a.outer.version, ip_dst(data))) {
        return drop_reason::selector_mismatch;
    }
    // Transport: slide the IP header (options included) over AH and restore protocol and lengths.
    uint8_t* start = payload - a.ip_header;
    std::memmove(start, data, a.ip_header);
    rte_pktmbuf_adj(m, static_cast<uint16_t>(a.ah_len));
    const uint32_t total = a.ip_header + payload_len;
    if (a.outer.version == 4) {
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

} // namespace

void ah_inbound(crypto_core& core, sa_runtime& sa, rte_mbuf** pkts, uint16_t n, drop_reason* reasons) noexcept
{
    ah_packet info[max_burst];
    uint16_t index[max_burst];
    uint16_t n_jobs = 0;
    const uint16_t allowed = lifetime_allowance(sa, n);
    const bool esn = (sa.flags & sa_esn) != 0;
    const uint32_t iv = sa.iv_bytes;
    const uint32_t icv = sa.icv_bytes;

    for (uint16_t i = 0; i < n; ++i) {
        reasons[i] = drop_reason::none;
        if (i >= allowed) {
            reasons[i] = drop_reason::lifetime_expired;
            continue;
        }
        rte_mbuf* m = pkts[i];
        ah_packet& a = info[i];
        if (m->nb_segs > 1 && rte_pktmbuf_linearize(m) != 0) {
            reasons[i] = drop_reason::no_headroom;
            continue;
        }
        uint8_t* data = rte_pktmbuf_mtod(m, uint8_t*);
        ip_view outer;
        drop_reason r = parse_ip(data, rte_pktmbuf_data_len(m), outer);
        if (r == drop_reason::none) {
            if (outer.fragment || outer.protocol != proto_ah) {
                r = drop_reason::bad_ip; // reassembly happens before the engine
            } else if (outer.version == 4 && outer.header > 20 && !ipv4_options(data, outer.header, false)) {
                r = drop_reason::bad_ip;
            }
        }
        if (r != drop_reason::none) [[unlikely]] {
            reasons[i] = r;
            continue;
        }
        a.outer = outer_of(outer);
        rte_pktmbuf_trim(m, static_cast<uint16_t>(rte_pktmbuf_data_len(m) - outer.total));
        a.ip_header = outer.header;
        const uint32_t avail = outer.total - a.ip_header;
        if (avail < ah_fixed) {
            reasons[i] = drop_reason::truncated;
            continue;
        }
        uint8_t* ah = data + a.ip_header;
        const uint32_t ah_len = (uint32_t{ah[1]} + 2) * 4;
        if (ah_len > avail) {
            reasons[i] = drop_reason::truncated;
            continue;
        }
        // RFC 4302 §3.3.3.2.1: the length our SA implies, with either 4- or 8-byte alignment after
        // IPv4 (see the top of this file) and 8 after IPv6.
        const uint32_t minimum = ah_fixed + iv + icv;
        const bool v6 = a.outer.version == 6;
        if (ah_len != ah_length(sa, v6) && (v6 || ah_len != align_up(minimum, 8))) {
            reasons[i] = drop_reason::bad_length;
            continue;
        }
        if (std::memcmp(ah + 4, &sa.spi_be, 4) != 0) {
            reasons[i] = drop_reason::no_sa; // mis-dispatched by the caller
            continue;
        }
        if (esn && rte_pktmbuf_tailroom(m) < 4) [[unlikely]] {
            reasons[i] = drop_reason::no_headroom;
            continue;
        }
        replay_window::verdict v = sa.replay.check(load_be32(ah + 8));
        if (v.reason != drop_reason::none) {
            reasons[i] = v.reason;
            continue;
        }
        a.seq = v.seq;
        a.ah = ah;
        a.ah_len = ah_len;
        a.hash_len = a.outer.total;
        if (esn) {
            store_be32(data + a.outer.total, static_cast<uint32_t>(v.seq >> 32));
            a.hash_len += 4;
        }
        // RFC 4302 §3.3.3.1: the ICV field is zero for the computation; its padding is hashed as sent.
        std::memcpy(a.icv, ah + ah_fixed + iv, icv);
        std::memset(ah + ah_fixed + iv, 0, icv);
        std::memcpy(a.saved, data, a.ip_header);
        zero_mutable(data, a.ip_header);
        index[n_jobs++] = i;
    }
    if (n_jobs == 0) {
        return;
    }

    IMB_JOB* jobs[max_burst];
    int done = run_burst(hash_manager(core, sa.hash_alg), jobs, n_jobs, [&](uint16_t j, IMB_JOB* job) {
        ah_packet& a = info[index[j]];
        prepare_job(sa, job, rte_pktmbuf_mtod(pkts[index[j]], uint8_t*), a, a.tag, index[j]);
    });
    if (done < 0) [[unlikely]] {
        for (uint16_t j = 0; j < n_jobs; ++j) {
            reasons[index[j]] = drop_reason::crypto_error;
        }
        return;
    }
    bool completed[max_burst] = {};
    uint64_t good = 0;
    uint64_t bytes = 0;
    uint64_t verified = 0;
    for (int j = 0; j < done; ++j) {
        auto i = static_cast<uint16_t>(reinterpret_cast<uintptr_t>(jobs[j]->user_data));
        ah_packet& a = info[i];
        completed[i] = true;
        // Put the packet back as received: IP header (TTL, TOS, ...) and ICV.
        std::memcpy(rte_pktmbuf_mtod(pkts[i], uint8_t*), a.saved, a.ip_header);
        std::memcpy(a.ah + ah_fixed + iv, a.icv, icv);
        if (jobs[j]->status != IMB_STATUS_COMPLETED) [[unlikely]] {
            reasons[i] = drop_reason::crypto_error;
            continue;
        }
        if (!icv_equal(a.tag, a.icv, icv)) {
            reasons[i] = drop_reason::icv;
            continue;
        }
        ++verified;
        uint32_t inner_bytes = 0;
        drop_reason r = finish_inbound(sa, pkts[i], a, inner_bytes);
        if (r != drop_reason::none) {
            reasons[i] = r;
            continue;
        }
        ++good;
        bytes += inner_bytes;
    }
    for (uint16_t j = 0; j < n_jobs; ++j) {
        if (!completed[index[j]]) [[unlikely]] {
            reasons[index[j]] = drop_reason::crypto_error;
        }
    }
    // One writer, the SPI's owner: plain adds (sa_stats::add_owned).
    sa.stats.add_owned(sa_counter::verify, verified);
    sa.stats.add_owned(sa_counter::decaps, good);
    lifetime_account(core, sa, good, bytes); // and `packets`, `bytes`
}

} // namespace espresso::dp
