// One IPsec-MB burst, the same way for every packet path (ESP in/out, AH in/out).
#pragma once

#include <intel-ipsec-mb.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "espresso/dp/crypto_core.h"
#include "espresso/dp/ipsec.h"

namespace espresso::dp {

// Whether IPsec-MB validates a burst's jobs before running them (its checked submit calls) or not
// (the _NOCHECK ones). Outbound (encrypt) jobs are ours by construction: lengths are the padded
// payload we computed (a whole number of cipher blocks, bounded by the mbuf), pointers and keys come
// from the SA, validated at install; skipping the check measured +2-4 % at AES-CBC 64 B outbound
// (cbc-out-64, four alternated pairs). Inbound jobs carry lengths read from a hostile packet: they are
// checked by us first and validated once more by IPsec-MB.
inline bool imb_validates(IMB_CIPHER_DIRECTION dir) noexcept
{
    return dir != IMB_DIR_ENCRYPT;
}

// Gets n jobs, lets `fill` prepare them, submits and flushes. Returns the number of completed jobs in
// `jobs` (any order; user_data holds the packet index), or -1 when the engine refused the burst.
// `checked`: imb_validates.
template <typename Fill>
inline int run_burst(IMB_MGR* mgr, IMB_JOB** jobs, uint16_t n, Fill&& fill, bool checked = true) noexcept
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
    uint32_t done = checked ? IMB_SUBMIT_BURST(mgr, n, jobs) : IMB_SUBMIT_BURST_NOCHECK(mgr, n, jobs);
    if (done == 0 && imb_get_errno(mgr) != 0) [[unlikely]] {
        IMB_FLUSH_BURST(mgr, IMB_MAX_JOBS, jobs);
        return -1;
    }
    if (done < n) {
        done += IMB_FLUSH_BURST(mgr, n - done, jobs + done);
    }
    return static_cast<int>(done);
}

// The manager for jobs that hash with `hash`: the SHA-NI one for SHA-1/SHA-224/SHA-256 HMACs when the
// core has one (crypto_core::sha_mgr), else the core's best.
inline IMB_MGR* hash_manager(const crypto_core& core, IMB_HASH_ALG hash) noexcept
{
    const bool sha_ni = hash == IMB_AUTH_HMAC_SHA_1 || hash == IMB_AUTH_HMAC_SHA_224 || hash == IMB_AUTH_HMAC_SHA_256;
    return sha_ni && core.sha_mgr() != nullptr ? core.sha_mgr() : core.mgr();
}

// True for the jobs run_split_burst takes: AES-CBC with an HMAC that IPsec-MB's hash-only burst knows.
inline bool split_burst_kind(IMB_CIPHER_MODE cipher, IMB_HASH_ALG hash) noexcept
{
    return cipher == IMB_CIPHER_CBC &&
           (hash == IMB_AUTH_HMAC_SHA_1 || hash == IMB_AUTH_HMAC_SHA_224 || hash == IMB_AUTH_HMAC_SHA_256 ||
            hash == IMB_AUTH_HMAC_SHA_384 || hash == IMB_AUTH_HMAC_SHA_512);
}

// AES-CBC + HMAC jobs of one key size and one hash algorithm (split_burst_kind), as two passes over
// the caller's job array (crypto_core::job_array()): IPsec-MB's cipher-only burst
// (IMB_SUBMIT_CIPHER_BURST) and hash-only burst (IMB_SUBMIT_HASH_BURST); cipher first when
// encrypting, hash first when decrypting. `fill(j, job)` prepares job j (n <= max_burst) once, with
// the fields of both passes. Returns n, or -1 when IPsec-MB refused a pass (then no job is done).
//
// Why not chained jobs through run_burst: there a job's hash starts when its cipher completes, and
// the multi-buffer cipher completes the shortest job first, so in a burst of mixed sizes the long
// packets reach the hash lanes last and are hashed nearly alone at the flush, whatever the submit
// order. Two passes let longest_first order both. Measured with perf/esp-bench on AES-128-CBC +
// HMAC-SHA-256, encrypt, against the raw chained burst in the same run: IMIX 0.91-0.95 -> 1.14-1.18,
// and the one-call-per-pass dispatch helps uniform sizes too (64 B 0.85-0.91 -> 0.93-0.95, 512 B
// 0.93-0.96 -> 0.98-0.99). Inbound uses the checked calls, outbound the _NOCHECK ones (imb_validates).
//
// The passes may run on different managers (`cipher_mgr`, `hash_mgr`): the job array is the caller's,
// and each call dispatches on its own manager's code (crypto_core::sha_mgr).
template <typename Fill>
inline int run_split_burst(IMB_MGR* cipher_mgr, IMB_MGR* hash_mgr, IMB_JOB* jobs, uint16_t n,
                           IMB_CIPHER_DIRECTION dir, IMB_KEY_SIZE_BYTES key_size, IMB_HASH_ALG hash,
                           Fill&& fill) noexcept
{
    for (uint16_t j = 0; j < n; ++j) {
        fill(j, &jobs[j]);
    }
    const bool encrypt = dir == IMB_DIR_ENCRYPT;
    for (int pass = 0; pass < 2; ++pass) {
        const bool cipher = (pass == 0) == encrypt;
        uint32_t done = 0;
        if (imb_validates(dir)) {
            done = cipher ? IMB_SUBMIT_CIPHER_BURST(cipher_mgr, jobs, n, IMB_CIPHER_CBC, dir, key_size)
                          : IMB_SUBMIT_HASH_BURST(hash_mgr, jobs, n, hash);
        } else {
            done = cipher ? IMB_SUBMIT_CIPHER_BURST_NOCHECK(cipher_mgr, jobs, n, IMB_CIPHER_CBC, dir, key_size)
                          : IMB_SUBMIT_HASH_BURST_NOCHECK(hash_mgr, jobs, n, hash);
        }
        if (done != n) [[unlikely]] {
            return -1;
        }
    }
    return n;
}

// Orders a burst's packets longest first: `idx` holds n <= max_burst packet indexes, `len(index)` a
// packet's ESP payload length (what its jobs' lengths grow with). Why: IPsec-MB's multi-buffer code
// (AES-CBC encrypt, HMAC-SHA) advances all lanes by the shortest job in them, and run_burst flushes
// every burst, so the last jobs in run with the other lanes empty. Submitted in arrival order, a
// 1500-byte packet behind a row of 64-byte ones ran mostly alone at the flush: IMIX cost 1.7x the mean
// of its sizes' costs. Longest first keeps the long jobs in full lanes and leaves only short ones for
// the flush (longest-processing-time-first scheduling). For chained cipher+hash jobs that orders only
// the first stage (see run_split_burst, which is why AES-CBC+HMAC runs as two passes).
//
// By steps (longest_first_step), stable within a step: jobs of one step differ by less than 64 bytes
// (256 above 4 KiB), about one SHA-256 block or four AES blocks, which shows only in the last lanes at
// the flush. Linear in n: a burst already in order (one size, the common case) is one pass with no
// moves; a burst of a few steps (IMIX has three) one branch-free pass per step; more steps a counting
// sort (not for few steps: when the same few counters take every increment, each waits for the
// previous store to the same counter, ~12 cycles per packet measured). The insertion sort this
// replaced moved each IMIX packet past ~17 shorter ones in a 128-packet poll, about half of
// outbound_submit's time at cbc-out-imix (perf/RESULTS.md, stop 24). Hand-written: it runs per burst
// on the packet path.
inline constexpr unsigned longest_first_steps = 128;

// A length's step, larger = longer: 64-byte steps up to 4 KiB, then 256-byte steps (jumbo frames up
// to 9000 bytes and beyond keep their order) up to 20 KiB, which longer lengths share.
constexpr unsigned longest_first_step(uint32_t len) noexcept
{
    if (len < 4096) {
        return len / 64;
    }
    const uint32_t coarse = (len - 4096) / 256;
    return 64 + (coarse < 63 ? coarse : 63);
}

template <typename Len>
inline void longest_first(uint16_t* idx, uint16_t n, Len&& len) noexcept
{
    uint8_t step[max_burst];
    bool in_order = true;
    uint64_t present[2] = {};
    for (uint16_t i = 0; i < n; ++i) {
        // Reversed: step 0 holds the longest.
        const unsigned s = longest_first_steps - 1 - longest_first_step(len(idx[i]));
        step[i] = static_cast<uint8_t>(s);
        present[s / 64] |= uint64_t{1} << (s % 64);
        in_order &= i == 0 || step[i] >= step[i - 1];
    }
    if (in_order) {
        return;
    }
    uint16_t sorted[max_burst + 1]; // + 1: the few-step passes write one past the last packet placed
    if (__builtin_popcountll(present[0]) + __builtin_popcountll(present[1]) <= 4) {
        uint16_t k = 0;
        for (unsigned word = 0; word < 2; ++word) {
            for (uint64_t left = present[word]; left != 0; left &= left - 1) {
                const auto s = static_cast<uint8_t>(word * 64 + static_cast<unsigned>(__builtin_ctzll(left)));
                for (uint16_t i = 0; i < n; ++i) {
                    sorted[k] = idx[i];
                    k = static_cast<uint16_t>(k + (step[i] == s));
                }
            }
        }
    } else {
        uint16_t start[longest_first_steps] = {};
        for (uint16_t i = 0; i < n; ++i) {
            ++start[step[i]];
        }
        uint16_t sum = 0;
        for (unsigned s = 0; s < longest_first_steps; ++s) {
            sum = static_cast<uint16_t>(sum + std::exchange(start[s], sum));
        }
        for (uint16_t i = 0; i < n; ++i) {
            sorted[start[step[i]]++] = idx[i];
        }
    }
    std::copy_n(sorted, n, idx);
}

// The IPsec-MB jobs of one batch (ESP in or out, AES-GCM excluded): `list` holds n packet indexes;
// `sa_of(i)` is packet i's SA, `len_of(i)` its ESP payload length (longest_first), `fill(i, job)`
// prepares its job, `finish(job)` takes a job back (status set; user_data as fill left it),
// `refused(i)` gets each packet whose burst IPsec-MB refused as a whole. AES-CBC+HMAC packets of one
// key size and hash (the first such packet's) go as two passes (run_split_burst), the rest (other
// CBC+HMAC kinds, GMAC, NULL cipher) as chained jobs (run_burst), a burst per manager (hash_manager);
// each set longest first. Reorders `list`.
template <typename SaOf, typename LenOf, typename Fill, typename Finish, typename Refused>
inline void run_jobs(crypto_core& core, uint16_t* list, uint16_t n, IMB_CIPHER_DIRECTION dir, SaOf&& sa_of,
                     LenOf&& len_of, Fill&& fill, Finish&& finish, Refused&& refused) noexcept
{
    uint16_t split[max_burst];
    uint16_t n_split = 0;
    uint16_t n_chained = 0;
    const sa_runtime* kind = nullptr;
    for (uint16_t k = 0; k < n; ++k) {
        const sa_runtime& sa = sa_of(list[k]);
        if ((sa.flags & sa_gmac) == 0 && split_burst_kind(sa.cipher_mode, sa.hash_alg) &&
            (kind == nullptr || (sa.key_size == kind->key_size && sa.hash_alg == kind->hash_alg))) {
            kind = &sa;
            split[n_split++] = list[k];
        } else {
            list[n_chained++] = list[k];
        }
    }
    longest_first(split, n_split, len_of);
    core.note_multi_buffer_jobs(n_split);
    if (n_split != 0) {
        IMB_JOB* jobs = core.job_array();
        // The cipher pass stays on the core's best manager: AES-CBC on its 8 AVX2 lanes measured
        // faster than on the SSE manager's (512 B encrypt 1.72-1.80 against 1.44-1.47 Mpps).
        const int done = run_split_burst(core.mgr(), hash_manager(core, kind->hash_alg), jobs, n_split, dir,
                                         kind->key_size, kind->hash_alg,
                                         [&](uint16_t k, IMB_JOB* job) { fill(split[k], job); });
        for (int k = 0; done < 0 && k < n_split; ++k) {
            refused(split[k]);
        }
        for (int j = 0; j < done; ++j) {
            finish(&jobs[j]);
        }
    }
    // Chained jobs, one burst per manager (hash_manager): those whose HMAC the SHA-NI manager does
    // first, then the rest. (An AES-CBC job here, one of a second key size or hash in the batch, has
    // its cipher on the SSE manager too: rare, and a chained job cannot be split.)
    uint16_t n_sha = 0;
    if (core.sha_mgr() != nullptr) {
        for (uint16_t k = 0; k < n_chained; ++k) {
            if (hash_manager(core, sa_of(list[k]).hash_alg) == core.sha_mgr()) {
                std::swap(list[n_sha++], list[k]);
            }
        }
    }
    for (int part = 0; part < 2; ++part) {
        uint16_t* sub = part == 0 ? list : list + n_sha;
        const auto count = static_cast<uint16_t>(part == 0 ? n_sha : n_chained - n_sha);
        if (count == 0) {
            continue;
        }
        core.note_multi_buffer_jobs(count); // GMAC jobs too (single-buffer code): rare beside CBC
        longest_first(sub, count, len_of);
        IMB_JOB* jobs[max_burst];
        const int done = run_burst(part == 0 ? core.sha_mgr() : core.mgr(), jobs, count,
                                   [&](uint16_t k, IMB_JOB* job) { fill(sub[k], job); }, imb_validates(dir));
        for (int k = 0; done < 0 && k < count; ++k) {
            refused(sub[k]);
        }
        for (int j = 0; j < done; ++j) {
            finish(jobs[j]);
        }
    }
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
