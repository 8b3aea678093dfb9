// dataplane/src/sa_pool.cpp: slots are aligned, distinct, reused after release, and SAs made from the
// pool are wiped when freed.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "espresso/dp/crypto_core.h"
#include "espresso/dp/sa.h"
#include "sa_pool.h"

#if defined(__SANITIZE_ADDRESS__)
#define POOL_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_TEST_ASAN 1
#endif
#endif
#ifdef POOL_TEST_ASAN
#include <sanitizer/asan_interface.h>
#endif

using namespace espresso;
using namespace espresso::dp;

TEST(slot_pool, SlotsAreAlignedDistinctAndSpanSeveralSlabs)
{
    slot_pool pool(1000, 64, 64 * 1024); // 1024-byte slots, 64 per slab
    EXPECT_EQ(pool.slot_bytes(), 1024U);
    EXPECT_EQ(pool.slots_per_slab(), 64U);
    std::vector<void*> slots;
    std::set<uintptr_t> seen;
    for (int i = 0; i < 200; ++i) {
        void* p = pool.allocate();
        ASSERT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0U);
        std::memset(p, 0xa5, 1000); // writable, the whole slot
        slots.push_back(p);
        seen.insert(reinterpret_cast<uintptr_t>(p));
    }
    EXPECT_EQ(seen.size(), 200U);
    // No two slots overlap.
    uintptr_t last_end = 0;
    for (uintptr_t a : seen) {
        EXPECT_GE(a, last_end);
        last_end = a + pool.slot_bytes();
    }
    EXPECT_EQ(pool.slabs(), 4U);
    EXPECT_EQ(pool.in_use(), 200U);
    for (void* p : slots) {
        pool.release(p);
    }
    EXPECT_EQ(pool.in_use(), 0U);
}

TEST(slot_pool, ReleasedSlotsAreReusedBeforeNewSlabs)
{
    slot_pool pool(256, 64, 4096); // 16 slots per slab
    std::vector<void*> first;
    for (int i = 0; i < 16; ++i) {
        first.push_back(pool.allocate());
    }
    EXPECT_EQ(pool.slabs(), 1U);
    pool.release(first[3]);
    pool.release(first[7]);
    void* a = pool.allocate(); // most recently freed first
    void* b = pool.allocate();
    EXPECT_EQ(a, first[7]);
    EXPECT_EQ(b, first[3]);
    EXPECT_EQ(pool.slabs(), 1U);
    void* c = pool.allocate(); // nothing free: a second slab
    EXPECT_EQ(pool.slabs(), 2U);
    EXPECT_EQ(std::set<void*>(first.begin(), first.end()).count(c), 0U);
}

TEST(slot_pool, RefusesSlotsLargerThanASlabOrABadAlignment)
{
    EXPECT_THROW(slot_pool(8192, 64, 4096), std::bad_alloc);
    EXPECT_THROW(slot_pool(64, 48, 4096), std::bad_alloc);
}

namespace {

long huge_pages_available()
{
    auto read_count = [](const char* path) {
        long v = -1;
        if (FILE* f = std::fopen(path, "r")) {
            if (std::fscanf(f, "%ld", &v) != 1) {
                v = -1;
            }
            std::fclose(f);
        }
        return v;
    };
    return read_count("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") -
           std::max(0L, read_count("/sys/kernel/mm/hugepages/hugepages-2048kB/resv_hugepages"));
}

// The kernel's page size of the mapping that holds p, from /proc/self/smaps (an oracle independent of
// the pool's own count).
size_t kernel_page_size(const void* p)
{
    std::ifstream smaps("/proc/self/smaps");
    std::string line;
    bool inside = false;
    const auto at = reinterpret_cast<uintptr_t>(p);
    while (std::getline(smaps, line)) {
        unsigned long lo = 0;
        unsigned long hi = 0;
        if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find('-') < line.find(' ')) {
            inside = at >= lo && at < hi;
            continue;
        }
        size_t kb = 0;
        if (inside && std::sscanf(line.c_str(), "KernelPageSize: %zu kB", &kb) == 1) {
            return kb * 1024;
        }
    }
    return 0;
}

} // namespace

TEST(slot_pool, SlabsOnHugePagesOnlyWhileThePoolKeepsItsReserve)
{
    const auto small_page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    {
        slot_pool pool(3072, 64); // 2 MiB slabs
        pool.use_huge_pages(size_t{1} << 40); // a reserve no pool has: ordinary pages
        void* p = pool.allocate();
        EXPECT_EQ(pool.slabs(), 1U);
        EXPECT_EQ(pool.huge_slabs(), 0U);
        EXPECT_EQ(kernel_page_size(p), small_page);
    }
    {
        slot_pool pool(1024, 64, 64 * 1024); // slabs smaller than a huge page: ordinary pages
        pool.use_huge_pages(0);
        EXPECT_NE(pool.allocate(), nullptr);
        EXPECT_EQ(pool.huge_slabs(), 0U);
    }
    // The machine's 2 MiB pool is shared: the counts below are read once, and only the pool's own
    // count and the kernel's page size of each slot (/proc/self/smaps) are checked exactly.
    const long before = huge_pages_available();
    if (before < 3) {
        GTEST_SKIP() << "fewer than 3 free 2 MiB huge pages (scripts/setup reserves them)";
    }
    {
        // Can this process fault huge pages in at all (a hugetlb cgroup limit refuses them)? Asked of
        // the kernel directly, so that a pool that never uses them fails below instead of skipping.
        const size_t huge = size_t{2} << 20;
        void* probe = mmap(nullptr, huge, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (21 << MAP_HUGE_SHIFT), -1, 0);
        const bool usable = probe != MAP_FAILED && madvise(probe, huge, MADV_POPULATE_WRITE) == 0;
        if (probe != MAP_FAILED) {
            munmap(probe, huge);
        }
        if (!usable) {
            GTEST_SKIP() << "this process cannot fault 2 MiB huge pages in (a hugetlb cgroup limit?)";
        }
    }
    const void* first = nullptr;
    {
        slot_pool pool(3072, 64);
        pool.use_huge_pages(static_cast<size_t>(before) - 2); // room for two slabs, not three
        std::vector<void*> slots;
        for (size_t i = 0; i < 3 * pool.slots_per_slab(); ++i) {
            slots.push_back(pool.allocate());
        }
        EXPECT_EQ(pool.slabs(), 3U);
        EXPECT_EQ(pool.huge_slabs(), 2U);
        first = slots.front();
        EXPECT_EQ(kernel_page_size(slots.front()), size_t{2} << 20);
        EXPECT_EQ(kernel_page_size(slots[pool.slots_per_slab()]), size_t{2} << 20);
        EXPECT_EQ(kernel_page_size(slots.back()), small_page);
        // Fresh huge pages come zeroed and every slot is writable.
        const auto* untouched = static_cast<const uint8_t*>(slots[1]);
        EXPECT_EQ(std::count(untouched, untouched + 3072, 0), 3072);
        for (void* s : slots) {
            std::memset(s, 0xab, 3072);
        }
        for (void* s : slots) {
            pool.release(s);
        }
    }
    EXPECT_EQ(kernel_page_size(first), 0U) << "the huge-page slab is still mapped after the pool went";
}

namespace {

config::sa_config gcm_sa(uint32_t spi)
{
    config::sa_config c;
    c.spi = spi;
    c.dir = config::direction::inbound;
    c.mode = config::ipsec_mode::tunnel;
    c.source.family = 4;
    c.source.bytes = {203, 0, 113, 1};
    c.destination.family = 4;
    c.destination.bytes = {198, 51, 100, 1};
    c.cipher = config::cipher_alg::aes_gcm16;
    c.cipher_key_bytes = 16;
    c.cipher_key_length = 20;
    for (uint8_t i = 0; i < 20; ++i) {
        c.cipher_key[i] = static_cast<uint8_t>(0x11 + i);
    }
    return c;
}

} // namespace

TEST(sa_runtime_pool, SasComeFromThePoolAndTheirSlotsAreWipedAndReused)
{
    crypto_core core;
    slot_pool& pool = sa_runtime_pool();
    const size_t before = pool.in_use();
    sa_ptr sa = make_sa(gcm_sa(0x1001), core);
    EXPECT_EQ(pool.in_use(), before + 1);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(sa.get()) % alignof(sa_runtime), 0U);
    // The expanded key is in the runtime; after the deleter the slot holds none of it.
    auto* raw = reinterpret_cast<const uint8_t*>(sa.get());
    const auto key_at = static_cast<size_t>(reinterpret_cast<const uint8_t*>(&sa->gcm_key) - raw);
    std::vector<uint8_t> expanded(raw + key_at, raw + key_at + sizeof(gcm_key_data));
    EXPECT_NE(std::count(expanded.begin(), expanded.end(), 0), static_cast<long>(expanded.size()));
    sa_runtime* where = sa.get();
    sa.reset();
    EXPECT_EQ(pool.in_use(), before);
#ifdef POOL_TEST_ASAN
    // The pool poisons free slots (a use after free is an ASan error); this test looks on purpose.
    EXPECT_TRUE(__asan_address_is_poisoned(raw + key_at));
    ASAN_UNPOISON_MEMORY_REGION(raw + key_at, sizeof(gcm_key_data));
#endif
    for (size_t i = 0; i < sizeof(gcm_key_data); ++i) {
        ASSERT_EQ(raw[key_at + i], 0) << "expanded key byte " << i << " left in a freed slot";
    }
    sa_ptr again = make_sa(gcm_sa(0x1002), core);
    EXPECT_EQ(again.get(), where); // the freed slot is the first one reused
}
