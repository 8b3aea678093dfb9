// Bounds-checked reading of wire data (STYLE.md "Wire parsing"): every read says whether the bytes were
// there, so a length check cannot be forgotten. Private to controlplane/ike/wire.
//
// Thread safety: a reader is a cursor over memory it does not own; one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace espresso::cp::wire {

class byte_reader {
public:
    explicit byte_reader(std::span<const uint8_t> data) noexcept : data_(data) {}

    size_t offset() const noexcept { return offset_; }
    size_t remaining() const noexcept { return data_.size() - offset_; }
    bool empty() const noexcept { return remaining() == 0; }

    std::optional<uint8_t> read_u8() noexcept
    {
        if (remaining() < 1) {
            return std::nullopt;
        }
        return data_[offset_++];
    }

    std::optional<uint16_t> read_be16() noexcept
    {
        auto v = read_be<2>();
        if (!v) {
            return std::nullopt;
        }
        return static_cast<uint16_t>(*v);
    }

    std::optional<uint32_t> read_be32() noexcept
    {
        auto v = read_be<4>();
        if (!v) {
            return std::nullopt;
        }
        return static_cast<uint32_t>(*v);
    }

    std::optional<uint64_t> read_be64() noexcept { return read_be<8>(); }

    // The next n bytes as a sub-span (parse nested structures from a byte_reader over it), or nullopt
    // when fewer than n remain; the cursor moves only on success.
    std::optional<std::span<const uint8_t>> take(size_t n) noexcept
    {
        if (remaining() < n) {
            return std::nullopt;
        }
        auto out = data_.subspan(offset_, n);
        offset_ += n;
        return out;
    }

    // Everything left (possibly empty).
    std::span<const uint8_t> take_rest() noexcept
    {
        auto out = data_.subspan(offset_);
        offset_ = data_.size();
        return out;
    }

    bool skip(size_t n) noexcept { return take(n).has_value(); }

private:
    template <size_t N>
    std::optional<uint64_t> read_be() noexcept
    {
        if (remaining() < N) {
            return std::nullopt;
        }
        uint64_t v = 0;
        for (size_t i = 0; i < N; ++i) {
            v = (v << 8) | data_[offset_ + i];
        }
        offset_ += N;
        return v;
    }

    std::span<const uint8_t> data_;
    size_t offset_ = 0;
};

} // namespace espresso::cp::wire
