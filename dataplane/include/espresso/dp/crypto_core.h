// One Intel IPsec-MB manager per worker core, plus the per-core event queue the packet functions
// report to (soft/hard expiry, sequence exhaustion).
//
// Thread safety: a crypto_core belongs to exactly one thread. Never share one between lcores.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "espresso/config/types.h"

struct IMB_MGR;
struct IMB_JOB;

namespace espresso::dp {

struct sa_runtime;

enum class sa_event_kind : uint8_t { soft_expire, hard_expire, seq_exhausted };

struct sa_event {
    sa_event_kind kind;
    config::direction dir;
    uint32_t spi;
};

class crypto_core {
public:
    // Allocates and initialises the manager for the best instruction set this CPU has
    // (init_mb_mgr_auto). Throws std::runtime_error on failure: start-up only.
    crypto_core();
    ~crypto_core();
    crypto_core(const crypto_core&) = delete;
    crypto_core& operator=(const crypto_core&) = delete;

    IMB_MGR* mgr() const noexcept { return mgr_; }
    // A second manager, IPsec-MB's SSE one, on a CPU with the SHA extensions whose best manager is
    // AVX or AVX2 (nullptr otherwise): in IPsec-MB 1.3 only the SSE manager hashes SHA-1/SHA-224/
    // SHA-256 with them; the AVX2 one runs 8-lane vector code instead. Measured with perf/esp-bench
    // on this project's machine (AMD EPYC, AVX2 + SHA-NI), AES-128-CBC + HMAC-SHA-256 encrypt:
    // 64 B 2.2 -> 3.5-5.4 Mpps, 1420 B 0.42 -> 0.64-0.88 Mpps (perf/RESULTS.md). HMAC jobs of
    // those hashes go to it (hash_manager, imb_burst.h); everything else, AES-GCM first of all,
    // stays on mgr(). Not made for AVX-512 managers: on an AMD EPYC with AVX-512 and SHA-NI the
    // AVX512 manager's 16-lane HMAC-SHA-256 was faster at 1420 B (1.84 against 1.21 Mpps through
    // espresso-dp) and SHA-NI no better at 64 B and IMIX (perf/RESULTS.md, 2026-12-01).
    IMB_MGR* sha_mgr() const noexcept { return sha_mgr_; }
    // max_burst jobs owned by this core, for IPsec-MB's cipher-only and hash-only burst calls, which
    // take the caller's array instead of the manager's queue (run_split_burst, imb_burst.h).
    IMB_JOB* job_array() const noexcept { return jobs_; }
    // Jobs given to IPsec-MB's multi-buffer code (AES-CBC, HMAC: run_jobs, imb_burst.h) since the
    // last take_multi_buffer_jobs(): the worker asks for bigger polls while they come in full vectors
    // (rx_burst_size, gateway.h).
    void note_multi_buffer_jobs(unsigned n) noexcept { multi_buffer_jobs_ += n; }
    unsigned take_multi_buffer_jobs() noexcept { return std::exchange(multi_buffer_jobs_, 0U); }
    // "AVX512 (AESNI VAES VPCLMULQDQ SHANI GFNI)", for the start-up log.
    const std::string& description() const noexcept { return description_; }

    // Events are rare (once per SA and kind); a small fixed queue drained by the owner between
    // bursts. When it is full the event is counted as lost, never blocks.
    void post(const sa_event& e) noexcept;
    // Moves up to out.size() events into out; returns how many.
    size_t drain(std::span<sa_event> out) noexcept;
    uint64_t events_lost() const noexcept { return lost_; }

    // Deferred outbound counters (workers only). An outbound SA may be used by several workers and
    // the main lcore at once, so its `packets` and `bytes` take a locked add each; with traffic of
    // many tunnels that is two locked instructions per packet (each drains the store buffer;
    // perf/RESULTS.md, issue 3: 23 of ~550 cycles per packet at 240 active SAs). With deferral on,
    // the engine adds them to this core's small table instead and writes them to the SA when the
    // entry is evicted or flushed. Only SAs without volume lifetimes are deferred: byte and packet
    // limits need the counters current. The owner must flush_counters() before it acknowledges any
    // update (a removed or replaced SA must have all its counts before the main lcore reads or frees
    // it) and whenever it is idle or a short time has passed (what `show` reads lags by that much).
    void defer_outbound_counters();
    bool defers_outbound_counters() const noexcept { return deferred_ != nullptr; }
    // Adds a run of `sa`'s packets to its slot (defers_outbound_counters() must be true); another
    // SA's counts in that slot are written back first.
    void defer_counts(sa_runtime* sa, uint64_t packets, uint64_t bytes) noexcept
    {
        deferred_count& slot = deferred_slot(sa);
        if (slot.sa != sa) {
            if (slot.sa != nullptr) {
                write_back(slot); // evicted
            } else {
                used_[n_used_++] = static_cast<uint16_t>(&slot - deferred_.get());
            }
            slot.sa = sa;
        }
        slot.packets += packets;
        slot.bytes += bytes;
    }
    // Starts loading the SA's slot (with many SAs per burst it is an L1 miss like the SA's lines).
    void prefetch_deferred(const sa_runtime* sa) noexcept
    {
        if (deferred_ != nullptr) {
            __builtin_prefetch(&deferred_slot(sa), 1, 3);
        }
    }
    // Writes every deferred count to its SA.
    void flush_counters() noexcept;
    bool counters_pending() const noexcept { return n_used_ != 0; }
    static constexpr unsigned deferred_bits = 12; // 4096 slots: ~6 % of 240 active SAs share one
    static_assert(deferred_bits <= 16, "used_ holds slot indexes as uint16_t");

private:
    unsigned multi_buffer_jobs_ = 0;
    struct deferred_count {
        sa_runtime* sa = nullptr; // nullptr = free slot
        uint64_t packets = 0;
        uint64_t bytes = 0;
    };
    deferred_count& deferred_slot(const sa_runtime* sa) noexcept
    {
        const auto h = (reinterpret_cast<uintptr_t>(sa) >> 6) * 0x9E3779B97F4A7C15ULL; // Fibonacci hashing
        return deferred_[h >> (64 - deferred_bits)];
    }
    // Writes one slot's counts to its SA (locked adds) and frees the slot.
    static void write_back(deferred_count& slot) noexcept;

    void init();
    void release() noexcept;

    IMB_MGR* mgr_ = nullptr;
    IMB_MGR* sha_mgr_ = nullptr;
    IMB_JOB* jobs_ = nullptr; // max_burst of them
    std::string description_;
    std::array<sa_event, 64> events_{};
    size_t head_ = 0;
    size_t count_ = 0;
    uint64_t lost_ = 0;
    std::unique_ptr<deferred_count[]> deferred_;  // 1 << deferred_bits slots, or none
    std::unique_ptr<uint16_t[]> used_;            // indexes of the taken slots
    unsigned n_used_ = 0;
};

} // namespace espresso::dp
