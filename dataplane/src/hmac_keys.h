// HMAC key preparation for IPsec-MB: its HMAC jobs take the hash state after one block of
// (K ^ ipad) and of (K ^ opad) instead of the key (RFC 2104 §2). Done once per SA install.
#pragma once

#include <intel-ipsec-mb.h>

#include <cstddef>
#include <cstdint>

#include "espresso/config/algorithms.h"

namespace espresso::dp {

IMB_HASH_ALG imb_hash_alg(config::integ_alg alg) noexcept;
// Untruncated digest size in bytes (20, 32, 48, 64); 0 for none.
uint8_t hash_output_bytes(config::integ_alg alg) noexcept;

// Writes the inner and outer hash states (up to 64 bytes each) for `key`. Keys longer than the
// block size are hashed first (RFC 2104 §2). Temporary key blocks are wiped before returning.
void hmac_precompute(IMB_MGR* mgr, config::integ_alg alg, const uint8_t* key, size_t key_len,
                     uint8_t* ipad_state, uint8_t* opad_state) noexcept;

} // namespace espresso::dp
