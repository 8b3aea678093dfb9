// Storage for SA runtimes (sa_runtime, ~3 KB each) and host-policy buckets (spd.h, 128 bytes): slabs
// of 2 MiB carved into fixed slots, with a free list of slots given back. make_sa/rebind_sa take a
// slot, the sa_ptr deleter gives it back after wiping the keys; make_host_bucket and its deleter
// likewise for buckets (one pool each).
//
// Why not malloc (measured with perf/sa-json-bench, perf/RESULTS.md "Session 4"): the runtimes were
// interleaved in the malloc heap with the request's short-lived allocations (validation got slower
// as the heap filled with kept SAs, malloc_consolidate), and each new SA faulted in its pages one at
// a time. A slab is faulted in with one madvise(MADV_POPULATE_WRITE); slots are handed out in order.
// Transparent huge pages (MADV_HUGEPAGE) were tried and were slower on the VM measured here (zeroing
// a fresh 2 MiB page cost 10x more per byte than 4 KiB pages), so they are not advised; pages of
// the kernel's reserved huge page pool (use_huge_pages, what DPDK runs on) are faster than both.
// rte_mempool was considered: it must be sized up front (the SAD holds 2^20 SAs: 3 GB) and with
// `hugepages: false` DPDK's memory is a small fixed pool.
//
// Slabs are kept for the life of the process (a gateway that held N SAs once will hold them again
// on the next rekey wave); freed slots are reused, most recently freed first (warm in cache).
//
// Threads: any thread; one mutex (taken once per SA install or delete, never on the packet path).
#pragma once

#include <cstddef>
#include <mutex>
#include <vector>

namespace espresso::dp {

class slot_pool {
public:
    // slot_bytes is rounded up to `align` (a power of two, at most 4096).
    slot_pool(size_t slot_bytes, size_t align, size_t slab_bytes = size_t{2} << 20);
    ~slot_pool(); // unmaps every slab: only once no slot is in use
    slot_pool(const slot_pool&) = delete;
    slot_pool& operator=(const slot_pool&) = delete;

    // An uninitialised slot of slot_bytes, aligned. Throws std::bad_alloc when no memory is left.
    void* allocate();
    // Gives a slot back (the caller destroyed and wiped what it held). p must come from allocate().
    void release(void* p) noexcept;

    // Back new slabs with 2 MiB huge pages from the kernel's pool (MAP_HUGETLB) while at least
    // `keep_free` of its pages (machine-wide and on this thread's NUMA node) stay free for DPDK's own
    // later allocations (rte_acl rebuilds, ...); ordinary pages otherwise (no 2 MiB pool, the pool
    // short, a cgroup limit that refuses the fault, a slab size that is not a multiple of 2 MiB).
    // Measured (perf/RESULTS.md, "SA runtimes and host-policy buckets on huge pages"): one fault
    // per slab instead of 512 took about 1.5 us of the main lcore off each SA installed (on
    // average, the slab's population shared by its 682 slots), and the SAs' lines are reached
    // through one TLB entry per slab. espresso-dp turns it on with `dataplane.hugepages`.
    void use_huge_pages(size_t keep_free) noexcept;

    size_t slot_bytes() const noexcept { return slot_; }
    size_t slots_per_slab() const noexcept { return per_slab_; }
    size_t slabs() const;
    size_t huge_slabs() const; // of slabs(), those on huge pages
    size_t in_use() const;

private:
    struct free_slot {
        free_slot* next;
    };
    void* map_huge_slab() noexcept;
    void* map_slab();
    size_t slot_;
    size_t slab_bytes_;
    size_t per_slab_;
    mutable std::mutex mutex_;
    std::vector<void*> slabs_;
    bool huge_ = false;
    size_t keep_free_ = 0;
    size_t huge_slabs_ = 0;
    free_slot* free_ = nullptr;
    char* fresh_ = nullptr; // next never-used slot of the newest slab
    char* fresh_end_ = nullptr;
    size_t in_use_ = 0;
};

// The pool make_sa and rebind_sa allocate sa_runtimes from (sa.h).
slot_pool& sa_runtime_pool();

} // namespace espresso::dp
