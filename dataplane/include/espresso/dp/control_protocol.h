// The espresso-dp control socket protocol: framing and names shared by the server (espresso-dp),
// the client library (CLI, IKE daemon) and the tests. docs/control-api.md is the reference.
//
// Framing: every message is a 4-byte big-endian length followed by that many bytes of one JSON
// object (UTF-8). Requests carry {"version":2,"id":<integer>,"op":"<name>","args":{...}} (or version 1);
// replies echo the id and the request's version: {"version":2,"id":N,"ok":true,"result":...} or
// {"version":2,"id":N,"ok":false,"error":"..."}. After `subscribe`, the server also sends unsolicited events
// {"version":1,"event":"soft-expire", ...}, which carry no "id".
//
// Header-only and free of DPDK: the client side links nothing but the standard library.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace espresso::dp::control {

// Version 2 added SA and policy owners (the `owner` argument of add-sa, add-sas and add-policy) and
// the flush-owner operation. The server answers version 1 requests as before (their replies carry
// version 1); a version 1 request may not use what version 2 added.
inline constexpr int protocol_version = 2;
inline constexpr int min_protocol_version = 1;
// The first version with owners and flush-owner.
inline constexpr int owner_protocol_version = 2;
// An owner tag: 1 to max_owner_bytes of [A-Za-z0-9._-] (a program's name, "espresso-ike").
inline constexpr size_t max_owner_bytes = 64;

inline bool valid_owner(std::string_view owner) noexcept
{
    if (owner.empty() || owner.size() > max_owner_bytes) {
        return false;
    }
    for (char c : owner) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                        c == '_' || c == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

// A request larger than this is refused and its connection closed: the server never buffers more
// than one such request per client.
inline constexpr uint32_t max_request_bytes = 1u << 20; // 1 MiB
// Replies may be larger (list-sas on a gateway with many thousand SAs); clients accept up to this.
inline constexpr uint32_t max_reply_bytes = 64u << 20; // 64 MiB

inline constexpr size_t length_prefix_bytes = 4;

// Every operation the server knows, in the order docs/control-api.md lists them (the batch
// operations add-sas and delete-sas were added later, at the end, then reload, then flush-owner with version 2).
inline constexpr std::array<std::string_view, 20> operations{
    "add-sa", "delete-sa",       "list-sas",       "add-policy",     "delete-policy",  "list-policies",
    "flush",  "show-interfaces", "show-dataplane", "clear-counters", "subscribe",      "unsubscribe",
    "ping",   "add-sas",         "delete-sas",     "show-neighbors", "clear-neighbors", "update-sa",
    "reload", "flush-owner",
};

// Items an add-sas or delete-sas request may carry (the 1 MiB request limit allows about 2500
// SA objects anyway; this bound keeps one request's stall of the main loop short).
inline constexpr size_t max_batch_items = 4096;

inline bool is_operation(std::string_view op) noexcept
{
    for (auto known : operations) {
        if (known == op) {
            return true;
        }
    }
    return false;
}

// Event names ("event" key of unsolicited messages).
inline constexpr std::string_view event_soft_expire = "soft-expire";
inline constexpr std::string_view event_hard_expire = "hard-expire";
inline constexpr std::string_view event_seq_exhausted = "seq-exhausted";
inline constexpr std::string_view event_acquire = "acquire";

inline std::array<std::byte, length_prefix_bytes> encode_length(uint32_t length) noexcept
{
    return {std::byte(length >> 24), std::byte(length >> 16), std::byte(length >> 8), std::byte(length)};
}

// The length announced by a frame header; nullopt while fewer than 4 bytes are available.
inline std::optional<uint32_t> decode_length(std::span<const std::byte> bytes) noexcept
{
    if (bytes.size() < length_prefix_bytes) {
        return std::nullopt;
    }
    return (std::to_integer<uint32_t>(bytes[0]) << 24) | (std::to_integer<uint32_t>(bytes[1]) << 16) |
           (std::to_integer<uint32_t>(bytes[2]) << 8) | std::to_integer<uint32_t>(bytes[3]);
}

inline std::optional<uint32_t> decode_length(std::string_view bytes) noexcept
{
    return decode_length(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
}

// Appends one frame (length prefix + body) to `out`.
inline void append_frame(std::string& out, std::string_view body)
{
    const auto prefix = encode_length(static_cast<uint32_t>(body.size()));
    for (auto b : prefix) {
        out.push_back(static_cast<char>(std::to_integer<uint8_t>(b)));
    }
    out.append(body);
}

} // namespace espresso::dp::control
