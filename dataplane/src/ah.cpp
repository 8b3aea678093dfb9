// AH (RFC 4302): being written; until then every AH packet is dropped and counted as crypto_error.
#include "espresso/dp/ipsec.h"

namespace espresso::dp {

void ah_outbound(crypto_core&, sa_runtime&, rte_mbuf**, uint16_t n, drop_reason* reasons) noexcept
{
    for (uint16_t i = 0; i < n; ++i) {
        reasons[i] = drop_reason::crypto_error;
    }
}

void ah_inbound(crypto_core&, sa_runtime&, rte_mbuf**, uint16_t n, drop_reason* reasons) noexcept
{
    for (uint16_t i = 0; i < n; ++i) {
        reasons[i] = drop_reason::crypto_error;
    }
}

} // namespace espresso::dp
