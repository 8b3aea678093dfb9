// secret_bytes: a byte vector that wipes itself (ike_crypto.h).
#include "espresso/cp/ike_crypto.h"

#include <openssl/crypto.h>

#include <utility>

namespace espresso::cp {

namespace {

void wipe(bytes& data) noexcept
{
    if (!data.empty()) {
        OPENSSL_cleanse(data.data(), data.size());
    }
    data.clear();
}

} // namespace

secret_bytes::secret_bytes(std::span<const uint8_t> data) : data_(data.begin(), data.end()) {}

secret_bytes::secret_bytes(size_t size) : data_(size, 0) {}

secret_bytes::secret_bytes(const secret_bytes& other) : data_(other.data_) {}

secret_bytes& secret_bytes::operator=(const secret_bytes& other)
{
    if (this != &other) {
        // Wipe first: assigning into the old buffer could reallocate and leave the old bytes behind.
        wipe(data_);
        data_ = other.data_;
    }
    return *this;
}

secret_bytes::secret_bytes(secret_bytes&& other) noexcept : data_(std::move(other.data_))
{
    other.data_.clear();
}

secret_bytes& secret_bytes::operator=(secret_bytes&& other) noexcept
{
    if (this != &other) {
        wipe(data_);
        data_ = std::move(other.data_);
        other.data_.clear();
    }
    return *this;
}

secret_bytes::~secret_bytes() { wipe(data_); }

secret_bytes secret_bytes::slice(size_t offset, size_t size) const
{
    return secret_bytes(view().subspan(offset, size));
}

} // namespace espresso::cp
