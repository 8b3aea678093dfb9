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

// AES-GCM of one packet through IPsec-MB's direct GCM API (init, update and finalize in one call).
// Used instead of a burst job for AES-GCM: the burst API validates and dispatches every job, which at
// 64 B costs about as much as a third of the cipher work (measured on the AVX2 path of IPsec-MB 1.3:
// ~175-240 cycles per packet through IMB_SUBMIT_BURST against ~115-150 through this call). AES-GCM
// is one buffer at a time on that path either way, so nothing is lost by not batching it. The
// context is per-call scratch (counter blocks and the running GHASH of this packet), no key material.
inline void gcm_one(IMB_MGR* mgr, bool encrypt, const gcm_key_data* key, IMB_KEY_SIZE_BYTES key_size,
                    uint8_t* out, const uint8_t* in, uint64_t len, const uint8_t* iv, const uint8_t* aad,
                    uint64_t aad_len, uint8_t* tag, uint64_t tag_len) noexcept
{
    gcm_context_data ctx;
    switch (key_size) {
    case IMB_KEY_128_BYTES:
        if (encrypt) {
            IMB_AES128_GCM_ENC(mgr, key, &ctx, out, in, len, iv, aad, aad_len, tag, tag_len);
        } else {
            IMB_AES128_GCM_DEC(mgr, key, &ctx, out, in, len, iv, aad, aad_len, tag, tag_len);
        }
        break;
    case IMB_KEY_192_BYTES:
        if (encrypt) {
            IMB_AES192_GCM_ENC(mgr, key, &ctx, out, in, len, iv, aad, aad_len, tag, tag_len);
        } else {
            IMB_AES192_GCM_DEC(mgr, key, &ctx, out, in, len, iv, aad, aad_len, tag, tag_len);
        }
        break;
    default:
        if (encrypt) {
            IMB_AES256_GCM_ENC(mgr, key, &ctx, out, in, len, iv, aad, aad_len, tag, tag_len);
        } else {
            IMB_AES256_GCM_DEC(mgr, key, &ctx, out, in, len, iv, aad, aad_len, tag, tag_len);
        }
        break;
    }
}

} // namespace espresso::dp
