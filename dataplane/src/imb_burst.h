// One IPsec-MB burst, the same way for every packet path (ESP in/out, AH in/out).
#pragma once

#include <intel-ipsec-mb.h>

#include <cstdint>

namespace espresso::dp {

// Gets n jobs, lets `fill` prepare them, submits and flushes. Returns the number of completed jobs in
// `jobs` (any order; user_data holds the packet index), or -1 when the engine refused the burst.
template <typename Fill>
inline int run_burst(IMB_MGR* mgr, IMB_JOB** jobs, uint16_t n, Fill&& fill) noexcept
{
    uint32_t got = IMB_GET_NEXT_BURST(mgr, n, jobs);
    if (got < n) [[unlikely]] {
        // Cannot happen: every call flushes the manager completely. Drain and report, never block.
        IMB_FLUSH_BURST(mgr, IMB_MAX_JOBS, jobs);
        return -1;
    }
    for (uint16_t j = 0; j < n; ++j) {
        fill(j, jobs[j]);
    }
    uint32_t done = IMB_SUBMIT_BURST(mgr, n, jobs);
    if (done == 0 && imb_get_errno(mgr) != 0) [[unlikely]] {
        IMB_FLUSH_BURST(mgr, IMB_MAX_JOBS, jobs);
        return -1;
    }
    if (done < n) {
        done += IMB_FLUSH_BURST(mgr, n - done, jobs + done);
    }
    return static_cast<int>(done);
}

} // namespace espresso::dp
