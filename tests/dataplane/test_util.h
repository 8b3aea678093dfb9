#pragma once

#include <rte_mbuf.h>

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace espresso::test {

// Mempool created once by test_main.cpp after rte_eal_init (--no-huge --no-pci --in-memory).
rte_mempool* mbuf_pool();

// Single-segment mbuf holding `bytes` (data starts at the first byte), with RTE_PKTMBUF_HEADROOM.
rte_mbuf* make_mbuf(std::span<const uint8_t> bytes);
std::vector<uint8_t> mbuf_bytes(const rte_mbuf* m);
std::vector<uint8_t> from_hex(std::string_view hex); // ignores spaces and newlines

} // namespace espresso::test
