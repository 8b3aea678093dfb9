// Initialises DPDK's EAL once for all data plane unit tests: no hugepages, no PCI, one lcore, so the
// tests run anywhere (CI, sanitizers).
#include <gtest/gtest.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "test_util.h"

namespace espresso::test {

namespace {
rte_mempool* g_pool = nullptr;
}

rte_mempool* mbuf_pool() { return g_pool; }

rte_mbuf* make_mbuf(std::span<const uint8_t> bytes)
{
    rte_mbuf* m = rte_pktmbuf_alloc(g_pool);
    if (m == nullptr) {
        throw std::runtime_error("mbuf pool exhausted");
    }
    char* p = rte_pktmbuf_append(m, static_cast<uint16_t>(bytes.size()));
    if (p == nullptr) {
        rte_pktmbuf_free(m);
        throw std::runtime_error("packet larger than an mbuf");
    }
    std::memcpy(p, bytes.data(), bytes.size());
    return m;
}

std::vector<uint8_t> mbuf_bytes(const rte_mbuf* m)
{
    const auto* p = rte_pktmbuf_mtod(m, const uint8_t*);
    return {p, p + rte_pktmbuf_data_len(m)};
}

std::vector<uint8_t> from_hex(std::string_view hex)
{
    std::vector<uint8_t> out;
    int hi = -1;
    for (char c : hex) {
        if (std::isxdigit(static_cast<unsigned char>(c)) == 0) {
            continue;
        }
        int v = std::isdigit(static_cast<unsigned char>(c)) != 0 ? c - '0' : (std::tolower(c) - 'a' + 10);
        if (hi < 0) {
            hi = v;
        } else {
            out.push_back(static_cast<uint8_t>(hi << 4 | v));
            hi = -1;
        }
    }
    return out;
}

} // namespace espresso::test

int main(int argc, char** argv)
{
    ::testing::InitGoogleTest(&argc, argv);
    const char* eal_args[] = {"espresso-tests", "--no-huge", "--no-pci", "--no-shconf", "-l", "0",
                              "-m", "256", "--log-level=lib.eal:error", "--no-telemetry"};
    int eal_argc = static_cast<int>(sizeof(eal_args) / sizeof(eal_args[0]));
    if (rte_eal_init(eal_argc, const_cast<char**>(eal_args)) < 0) {
        std::fprintf(stderr, "rte_eal_init failed\n");
        return 1;
    }
    espresso::test::g_pool = rte_pktmbuf_pool_create("test_pool", 4095, 0, 0, 4096 + RTE_PKTMBUF_HEADROOM,
                                                     static_cast<int>(rte_socket_id()));
    if (espresso::test::g_pool == nullptr) {
        std::fprintf(stderr, "mbuf pool creation failed\n");
        return 1;
    }
    int rc = RUN_ALL_TESTS();
    rte_eal_cleanup();
    return rc;
}
