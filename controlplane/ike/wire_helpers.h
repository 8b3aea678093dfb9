// Small builders the exchange files share: a Notify payload and big-endian SPI encodings.
// Private to controlplane/ike (the wire library has the parsing side).
#pragma once

#include <cstdint>

#include "espresso/cp/ike_message.h"

namespace espresso::cp {

inline payload make_notify(notify_type type, bytes data = {}, uint8_t protocol = 0, bytes spi = {})
{
    notify_payload n;
    n.protocol = protocol;
    n.spi = std::move(spi);
    n.type = static_cast<uint16_t>(type);
    n.data = std::move(data);
    return payload{payload_type::notify, false, std::move(n)};
}

inline bytes be32(uint32_t v)
{
    return {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)};
}

// 0 unless exactly 4 bytes (an ESP/AH SPI).
inline uint32_t read_be32(const bytes& b)
{
    return b.size() == 4 ? (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3] : 0;
}

inline bytes be64(uint64_t v)
{
    bytes b(8);
    for (int i = 7; i >= 0; --i) {
        b[static_cast<size_t>(i)] = static_cast<uint8_t>(v);
        v >>= 8;
    }
    return b;
}

inline uint64_t read_be64(const bytes& b)
{
    uint64_t v = 0;
    for (uint8_t x : b) {
        v = (v << 8) | x;
    }
    return v;
}

} // namespace espresso::cp
