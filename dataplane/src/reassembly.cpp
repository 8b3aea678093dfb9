// IP reassembly for traffic addressed to the gateway: librte_ip_frag does the bookkeeping (table,
// LRU ageing, chaining); this file checks each fragment before the library sees it (every field is
// hostile, and not every DPDK 22.11 point release checks lengths itself), turns the library's single
// "NULL" answer into counted reasons, and copies the complete datagram into one segment (the ESP
// engine and the exception path work on single-segment mbufs).
#include "reassembly.h"

#include <rte_ip.h>
#include <rte_mbuf.h>

#include <cstring>
#include <stdexcept>
#include <string>

#include "packet.h"

namespace espresso::dp {

namespace {

constexpr uint32_t bucket_entries = 8; // associativity (power of two); two buckets per key

// How many of the fragments the library put on the death row during one call.
uint32_t added(const rte_ip_frag_death_row& dr, uint32_t before) noexcept { return dr.cnt - before; }

} // namespace

reassembler::reassembler(uint32_t datagrams, uint64_t timeout_tsc, rte_mempool* whole, rte_mempool* waiting, int socket)
    : whole_(whole), waiting_(waiting)
{
    // rte_ip_frag_table_create needs bucket_num * bucket_entries * 2 >= max_entries.
    const uint32_t buckets = std::max<uint32_t>(1, (datagrams + bucket_entries - 1) / bucket_entries);
    table_ = rte_ip_frag_table_create(buckets, bucket_entries, datagrams, timeout_tsc, socket);
    if (table_ == nullptr) {
        throw std::runtime_error("cannot create the IP reassembly table (" + std::to_string(datagrams) + " datagrams)");
    }
    max_bytes_ = static_cast<uint32_t>(rte_pktmbuf_data_room_size(whole_)) - RTE_PKTMBUF_HEADROOM;
}

reassembler::~reassembler()
{
    rte_ip_frag_free_death_row(&death_row_, 0);
    rte_ip_frag_table_destroy(table_); // frees the fragments still waiting
}

rte_mbuf* reassembler::add(rte_mbuf* m, uint64_t now_tsc, reassembly_counts& c) noexcept
{
    const auto* ip = rte_pktmbuf_mtod(m, const uint8_t*);
    const uint32_t avail = rte_pktmbuf_data_len(m);
    ip_view v;
    if (m->nb_segs != 1 || parse_ip(ip, avail, v) != drop_reason::none) {
        ++c.invalid;
        rte_pktmbuf_free(m);
        return nullptr;
    }
    // The fragment's place in its datagram, checked here so that the library never sees a fragment
    // without data, one that ends past 65535 bytes (RFC 791 §3.1 / RFC 8200 §4.5: the length fields
    // have 16 bits) or past what we reassemble, or a non-last fragment that is not a multiple of 8
    // bytes long (RFC 8200 §4.5 makes that an error; RFC 791 fragments are 8-byte units).
    uint32_t header = v.header;
    uint32_t offset = 0;
    bool more = false;
    if (v.version == 4) {
        const uint16_t field = load_be16(ip + 6);
        offset = (field & 0x1fffU) * 8U;
        more = (field & 0x2000U) != 0;
    } else {
        if (ip[6] != 44 || v.total < 48) { // the caller passes Fragment headers right after the fixed one
            ++c.invalid;
            rte_pktmbuf_free(m);
            return nullptr;
        }
        const uint16_t field = load_be16(ip + 42);
        offset = field & 0xfff8U;
        more = (field & 1U) != 0;
        header = 48;
    }
    const uint32_t data = v.total - header;
    if (data == 0 || (more && data % 8 != 0) || offset + data + (v.version == 4 ? header : 40U) > 65535U) {
        ++c.invalid;
        rte_pktmbuf_free(m);
        return nullptr;
    }
    if (offset + data + (v.version == 4 ? header : 40U) > max_bytes_) {
        ++c.too_big; // the other fragments of the datagram time out (and are counted there)
        rte_pktmbuf_free(m);
        return nullptr;
    }
    // Waiting fragments hold their mbufs for up to the timeout: every fragment is copied into the
    // reassembler's own pool (in as many segments as it needs), so a flood of first fragments that
    // never complete empties that pool, not the RX pools every port and the exception path share.
    if (m->pool != waiting_) {
        rte_mbuf* copy = rte_pktmbuf_copy(m, waiting_, 0, v.total); // also drops Ethernet padding
        rte_pktmbuf_free(m);
        if (copy == nullptr) {
            ++c.no_buffer;
            return nullptr;
        }
        m = copy;
    } else if (rte_pktmbuf_data_len(m) > v.total) {
        rte_pktmbuf_trim(m, static_cast<uint16_t>(rte_pktmbuf_data_len(m) - v.total)); // Ethernet padding
    }
    m->l2_len = 0;
    m->l3_len = header;
    const uint32_t before = death_row_.cnt;
    rte_mbuf* whole = nullptr;
    if (v.version == 4) {
        auto* h = rte_pktmbuf_mtod(m, rte_ipv4_hdr*);
        whole = rte_ipv4_frag_reassemble_packet(table_, &death_row_, m, now_tsc, h);
    } else {
        auto* h = rte_pktmbuf_mtod(m, rte_ipv6_hdr*);
        auto* frag = reinterpret_cast<rte_ipv6_fragment_ext*>(h + 1);
        whole = rte_ipv6_frag_reassemble_packet(table_, &death_row_, m, now_tsc, h, frag);
    }
    // The library answers NULL both for "not complete yet" and for errors; what it put on the death
    // row tells them apart. expire() ran first with the same clock, so no entry it finds is stale:
    // a lone fragment on the death row is one that found no free entry; two or more are a datagram
    // given up as invalid (duplicate first/last fragment, too many fragments, overlap or hole when
    // the sizes add up).
    const uint32_t dropped = added(death_row_, before);
    if (dropped != 0) {
        if (whole == nullptr && dropped == 1) {
            ++c.table_full;
        } else if (whole == nullptr) {
            c.invalid += dropped;
        } else {
            c.timed_out += dropped; // a stale entry the library reused on its own
        }
        rte_ip_frag_free_death_row(&death_row_, 0);
    }
    if (whole == nullptr) {
        return nullptr;
    }
    return linearize(whole, c);
}

rte_mbuf* reassembler::linearize(rte_mbuf* chain, reassembly_counts& c) noexcept
{
    const uint32_t len = rte_pktmbuf_pkt_len(chain);
    rte_mbuf* out = len <= max_bytes_ ? rte_pktmbuf_alloc(whole_) : nullptr;
    if (out == nullptr) {
        // In fragments, not segments: a fragment copied into several mbufs (add) has its length
        // only in its first one (the library keeps pkt_len = data_len there when it chains it).
        uint32_t fragments = 0;
        for (const rte_mbuf* seg = chain; seg != nullptr; seg = seg->next) {
            fragments += seg->pkt_len != 0 ? 1U : 0U;
        }
        if (len > max_bytes_) {
            c.too_big += fragments;
        } else {
            c.no_buffer += fragments;
        }
        rte_pktmbuf_free(chain);
        return nullptr;
    }
    auto* dst = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(out, static_cast<uint16_t>(len)));
    for (const rte_mbuf* seg = chain; seg != nullptr; seg = seg->next) {
        std::memcpy(dst, rte_pktmbuf_mtod(seg, const uint8_t*), seg->data_len);
        dst += seg->data_len;
    }
    out->port = chain->port;
    rte_pktmbuf_free(chain);
    auto* ip = rte_pktmbuf_mtod(out, uint8_t*);
    if ((ip[0] >> 4) == 4) {
        ipv4_set_checksum(ip); // the library zeroes it
    }
    return out;
}

void reassembler::expire(uint64_t now_tsc, reassembly_counts& c) noexcept
{
    // rte_ip_frag_table_del_expired_entries stops when the death row is full: empty it and go on.
    for (;;) {
        rte_ip_frag_table_del_expired_entries(table_, &death_row_, now_tsc);
        const uint32_t n = death_row_.cnt;
        if (n == 0) {
            return;
        }
        c.timed_out += n;
        rte_ip_frag_free_death_row(&death_row_, 0);
    }
}

} // namespace espresso::dp
