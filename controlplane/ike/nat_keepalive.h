// RFC 3948 §4 NAT-keepalives only when idle: "a NAT-keepalive packet is sent only if no other packet
// was sent to the peer within the interval". One schedule per shard thread (ike_shards.cpp), keyed by
// the UDP 5-tuple the NAT maps (our endpoint, the peer's endpoint): every IKE SA to the same peer
// endpoints shares it, and ESP-in-UDP of their Child SAs travels on it too.
//
// What counts as "sent": every IKE message to the peer (the shard's ike_io::send reports it exactly)
// and the keepalives themselves; ESP from the data plane is only known by sampling the outbound SAs'
// packet counters (list-sas of one SA, a map lookup in espresso-dp), so it is read only when a
// keepalive is due: if the count grew since the last reading, ESP went out within that interval and the
// keepalive is skipped; the SA is looked at again a quarter interval later (the ESP may have been
// early in the interval, so a mapping sees at most 1.25 intervals without a packet).
//
// Threads: one shard thread only.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <tuple>

#include "ike_io.h"

namespace espresso::cp {

class nat_keepalive {
public:
    using time_point = std::chrono::steady_clock::time_point;
    using duration = std::chrono::steady_clock::duration;

    // Something went from `local` to `remote` at `now`. Only endpoints the keepalive pass tracks (a
    // NAT'd IKE SA's) are recorded; any other send changes nothing and costs a lookup.
    void sent(const endpoint& local, const endpoint& remote, time_point now);

    // The keepalive pass, for one NAT'd IKE SA's endpoints. `esp_packets`: the sum of its installed
    // outbound Child SAs' packet counters, read only when asked for (called at most once per call, and
    // only when the keepalive would otherwise go out; returns nullopt when unknown). True: send a
    // keepalive now (and it is recorded as sent). An endpoint pair seen for the first time counts as
    // active now (the IKE SA was just established, which sent IKE_AUTH) and its ESP count is read as the
    // baseline. A sum that did not grow (also one that shrank: a rekey replaced a Child SA by a new one
    // counting from 0) means no ESP seen: the keepalive goes, at worst one more than needed.
    template <typename ReadEsp>
    bool due(const endpoint& local, const endpoint& remote, time_point now, duration interval, ReadEsp read_esp)
    {
        auto [it, fresh] = peers_.try_emplace(key(local, remote));
        state& s = it->second;
        s.visited = now;
        if (fresh) {
            s.last_sent = now;
            s.esp_packets = read_esp(); // the baseline the first due check compares with
            return false;
        }
        if (now - s.last_sent < interval) {
            return false;
        }
        const std::optional<uint64_t> esp = read_esp();
        const bool esp_went_out = esp && s.esp_packets && *esp > *s.esp_packets;
        s.esp_packets = esp;
        if (esp_went_out) {
            s.last_sent = now - interval + interval / 4; // look again in a quarter interval
            return false;
        }
        s.last_sent = now;
        return true;
    }

    // Forgets endpoint pairs no pass asked about since `before` (IKE SAs gone, or not NAT'd any more).
    void sweep(time_point before);
    size_t size() const noexcept { return peers_.size(); }

private:
    struct state {
        time_point last_sent{};
        time_point visited{};
        std::optional<uint64_t> esp_packets; // at the last reading
    };
    using key_type = std::tuple<uint8_t, std::array<uint8_t, 16>, uint16_t, uint8_t, std::array<uint8_t, 16>, uint16_t>;
    static key_type key(const endpoint& local, const endpoint& remote)
    {
        return {local.address.family, local.address.bytes, local.port,
                remote.address.family, remote.address.bytes, remote.port};
    }
    std::map<key_type, state> peers_;
};

} // namespace espresso::cp
