// SA runtime slabs (sa_pool.h).
#include "sa_pool.h"

#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <new>
#include <string>

#include "espresso/dp/sa.h"

// Under AddressSanitizer the pool tells it what it does, so that ASan still catches a use of a freed
// SA (free slots are poisoned) and LeakSanitizer still sees pointers held inside live SAs (the slabs
// are mmap'ed, which LSan does not scan unless registered).
#if defined(__SANITIZE_ADDRESS__)
#define ESPRESSO_POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ESPRESSO_POOL_ASAN 1
#endif
#endif
#ifdef ESPRESSO_POOL_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/lsan_interface.h>
#endif

namespace espresso::dp {

namespace {

// The free-list link lives in the first bytes of a free slot; the rest of it is poisoned.
void poison_free(void* slot, size_t bytes) noexcept
{
#ifdef ESPRESSO_POOL_ASAN
    ASAN_POISON_MEMORY_REGION(static_cast<char*>(slot) + sizeof(void*), bytes - sizeof(void*));
#else
    (void)slot;
    (void)bytes;
#endif
}

void unpoison(void* p, size_t bytes) noexcept
{
#ifdef ESPRESSO_POOL_ASAN
    ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#else
    (void)p;
    (void)bytes;
#endif
}

} // namespace

slot_pool::slot_pool(size_t slot_bytes, size_t align, size_t slab_bytes)
    : slot_((slot_bytes + align - 1) / align * align), slab_bytes_(slab_bytes), per_slab_(slab_bytes / slot_)
{
    if (per_slab_ == 0 || align == 0 || (align & (align - 1)) != 0 || align > 4096) {
        throw std::bad_alloc(); // a programming error: slots larger than a slab, or a bad alignment
    }
}

slot_pool::~slot_pool()
{
    for (void* s : slabs_) {
#ifdef ESPRESSO_POOL_ASAN
        unpoison(s, slab_bytes_);
        __lsan_unregister_root_region(s, slab_bytes_);
#endif
        ::munmap(s, slab_bytes_);
    }
}

void* slot_pool::allocate()
{
    std::lock_guard lock(mutex_);
    if (free_ != nullptr) {
        free_slot* s = free_;
        free_ = s->next;
        ++in_use_;
        unpoison(s, slot_);
        return s;
    }
    if (fresh_ == fresh_end_) {
        slabs_.reserve(slabs_.size() + 1); // before mapping: the push_back below cannot throw
        void* slab = map_huge_slab();
        if (slab != nullptr) {
            ++huge_slabs_;
        } else {
            slab = map_slab();
        }
        slabs_.push_back(slab);
#ifdef ESPRESSO_POOL_ASAN
        __lsan_register_root_region(slab, slab_bytes_);
        ASAN_POISON_MEMORY_REGION(slab, slab_bytes_);
#endif
        fresh_ = static_cast<char*>(slab);
        fresh_end_ = fresh_ + per_slab_ * slot_;
    }
    void* p = fresh_;
    fresh_ += slot_;
    ++in_use_;
    unpoison(p, slot_);
    return p;
}

void slot_pool::use_huge_pages(size_t keep_free) noexcept
{
    std::lock_guard lock(mutex_);
    huge_ = true;
    keep_free_ = keep_free;
}

void* slot_pool::map_huge_slab() noexcept
{
    constexpr size_t huge_page = size_t{2} << 20;
    if (!huge_ || slab_bytes_ % huge_page != 0) {
        return nullptr;
    }
    // Pages of the pool that nobody has yet: free_hugepages counts those promised to mappings not
    // yet faulted in (resv_hugepages) as free. The fault takes pages of this thread's NUMA node first
    // and DPDK wants pages of its own socket, so the node's free pages count too (they have no
    // reserved count of their own: the machine's is taken off them as well). A snapshot: another
    // process may take pages in between, so the reserve is kept on a best-effort basis.
    auto read_count = [](const std::string& path) -> long {
        long v = -1;
        if (FILE* f = std::fopen(path.c_str(), "r")) {
            if (std::fscanf(f, "%ld", &v) != 1) {
                v = -1;
            }
            std::fclose(f);
        }
        return v;
    };
    const std::string pool = "/sys/kernel/mm/hugepages/hugepages-2048kB/";
    long free_pages = read_count(pool + "free_hugepages");
    const long reserved = read_count(pool + "resv_hugepages");
    unsigned cpu = 0;
    unsigned node = 0;
    if (::getcpu(&cpu, &node) == 0) {
        const long node_free = read_count("/sys/devices/system/node/node" + std::to_string(node) +
                                          "/hugepages/hugepages-2048kB/free_hugepages");
        if (node_free >= 0) {
            free_pages = std::min(free_pages, node_free);
        }
    }
    if (free_pages < 0 || reserved < 0 || free_pages <= reserved) {
        return nullptr;
    }
    const auto available = static_cast<size_t>(free_pages - reserved);
    if (available <= keep_free_ || available - keep_free_ < slab_bytes_ / huge_page) {
        return nullptr; // mapping it would leave fewer than keep_free_
    }
    void* m = ::mmap(nullptr, slab_bytes_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (21 << MAP_HUGE_SHIFT), -1, 0);
    if (m == MAP_FAILED) {
        return nullptr; // the pool emptied since the count above
    }
    // Fault the pages in now, where a failure is an error code: the mmap reserved them in the
    // machine's pool, but a hugetlb cgroup limit (containers) is only checked at fault time, and a
    // fault it refuses is a SIGBUS on the first write into a slot. Without MADV_POPULATE_WRITE
    // (Linux < 5.14: EINVAL) that cannot be checked: no huge pages then.
#ifdef MADV_POPULATE_WRITE
    if (::madvise(m, slab_bytes_, MADV_POPULATE_WRITE) == 0) {
        return m;
    }
#endif
    ::munmap(m, slab_bytes_);
    return nullptr;
}

void* slot_pool::map_slab()
{
    // A slab aligned to its size (map twice the size, trim both ends), so that it could be backed by
    // one transparent huge page; see sa_pool.h for why it is not advised as one.
    const size_t span = slab_bytes_ * 2;
    void* m = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        throw std::bad_alloc();
    }
    const auto base = reinterpret_cast<uintptr_t>(m);
    const uintptr_t aligned = (base + slab_bytes_ - 1) / slab_bytes_ * slab_bytes_;
    if (aligned > base) {
        ::munmap(m, aligned - base);
    }
    if (const uintptr_t end = aligned + slab_bytes_; end < base + span) {
        ::munmap(reinterpret_cast<void*>(end), base + span - end);
    }
    void* slab = reinterpret_cast<void*>(aligned);
    // Fault the whole slab in with one call (Linux 5.14; elsewhere EINVAL and the slots fault in
    // one page at a time as they are used): measured 0.4-0.5 us less per SA installed.
#ifdef MADV_POPULATE_WRITE
    ::madvise(slab, slab_bytes_, MADV_POPULATE_WRITE);
#endif
    return slab;
}

void slot_pool::release(void* p) noexcept
{
    if (p == nullptr) {
        return;
    }
    std::lock_guard lock(mutex_);
    auto* s = static_cast<free_slot*>(p);
    s->next = free_;
    free_ = s;
    --in_use_;
    poison_free(p, slot_);
}

size_t slot_pool::slabs() const
{
    std::lock_guard lock(mutex_);
    return slabs_.size();
}

size_t slot_pool::huge_slabs() const
{
    std::lock_guard lock(mutex_);
    return huge_slabs_;
}

size_t slot_pool::in_use() const
{
    std::lock_guard lock(mutex_);
    return in_use_;
}

slot_pool& sa_runtime_pool()
{
    // Never destroyed: SAs held by static objects may be freed during exit.
    static slot_pool* pool = new slot_pool(sizeof(sa_runtime), alignof(sa_runtime));
    return *pool;
}

} // namespace espresso::dp
