// RFC 3948 §4 NAT-keepalives only when idle: "a NAT-keepalive packet is sent only if no other packet
// was sent to the peer within the interval". One schedule per shard thread (ike_shards.cpp), keyed by
// the UDP 5-tuple the NAT maps (our endpoint, the peer's endpoint): every IKE SA to the same peer
// endpoints shares it, and ESP-in-UDP of their Child SAs travels on it too.
//
// What counts as "sent": every IKE message to the peer (the shard's ike_io::send reports it exactly)
// and the keepalives themselves; ESP from the data plane is only known by sampling the outbound SAs'
// packet counters (list-sas of one SA, a map lookup in espresso-dp). A counter that grew between two
// readings says ESP went out after the first of them, no more: so the first reading's time is what
// counts as "ESP sent" (the earliest the packet can have gone). A keepalive goes when the interval has
// passed since the later of that and the last IKE message or keepalive, so a mapping never sees more
// than one interval (plus one pass of the shard, at most 1 s) without a packet, and a peer that gets
// ESP continuously gets no keepalives. The counters are read from `interval / 2` after the last
// packet known, at most every half interval, and always when a keepalive would be due: about two
// readings per interval whether ESP flows or not, none while IKE messages keep the mapping fresh.
// Under steady ESP a keepalive needs at least half an interval without any outbound ESP, so jitter
// of the traffic or of this process's scheduling (a few hundred ms) does not send one.
//
// Counters are compared per outbound SPI, never as a sum: a counter that could not be read this time
// (a control socket hiccup, an SA being replaced) must neither look like traffic nor hide it. A SPI
// read now but not at the last reading (a rekey's new SA, or one whose read failed then) counts as
// traffic when its counter is not 0: it was installed, or last unreadable, after the last reading, so
// what it sent went out since then. A reading where no counter could be read at all keeps the last
// good one as the baseline and lets the keepalive go (unknown is treated as idle: at worst one
// keepalive more than needed).
//
// Threads: one shard thread only.
#pragma once

#include <algorithm>
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
    // Outbound SPI -> its packet counter, for the SAs whose counter could be read.
    using esp_counts = std::map<uint32_t, uint64_t>;

    enum class verdict : uint8_t {
        not_due,  // something went to the peer recently enough (or the pair was seen first now)
        esp_seen, // read, and ESP went out since the last reading: no keepalive (yet)
        idle,     // due, and the counters were read: none grew; send a keepalive
        unknown,  // due, and no counter could be read (no installed outbound SA, no data plane): send one
    };
    struct decision {
        verdict what = verdict::not_due;
        esp_counts before, now; // the readings compared (when the counters were read), for the debug log
        bool send() const noexcept { return what == verdict::idle || what == verdict::unknown; }
        explicit operator bool() const noexcept { return send(); }
    };

    // Something went from `local` to `remote` at `now`. Only endpoints the keepalive pass tracks (a
    // NAT'd IKE SA's) are recorded; any other send changes nothing and costs a lookup.
    void sent(const endpoint& local, const endpoint& remote, time_point now);

    // The keepalive pass, for one NAT'd IKE SA's endpoints. `read_esp`: the packet counters of its
    // installed outbound Child SAs (an esp_counts), read only when asked for (called at most once per
    // call, and only when the keepalive would otherwise go out). A decision that says send(): send a
    // keepalive now (it is recorded as sent). An endpoint pair seen for the first time counts as
    // active now (the IKE SA was just established, which sent IKE_AUTH) and its counters are read as
    // the baseline.
    template <typename ReadEsp>
    decision due(const endpoint& local, const endpoint& remote, time_point now, duration interval, ReadEsp read_esp)
    {
        auto [it, fresh] = peers_.try_emplace(key(local, remote));
        state& s = it->second;
        s.visited = now;
        decision d;
        if (fresh) {
            s.last_sent = now;
            s.esp = read_esp(); // the baseline the first due check compares with
            s.read_at = now;
            return d;
        }
        // Read from half an interval after the last packet known, at most every half interval, and
        // always when the keepalive would be due.
        const duration quiet = now - std::max(s.last_sent, s.esp_after);
        if (quiet < interval && (quiet < interval / 2 || now - s.read_at < interval / 2)) {
            return d;
        }
        d.before = s.esp;
        d.now = read_esp();
        const bool esp = !d.now.empty() && grew(d.before, d.now);
        if (!d.now.empty()) {
            if (esp) {
                s.esp_after = std::max(s.esp_after, s.read_at); // ESP went out after the last reading
            }
            s.esp = d.now;
            s.read_at = now;
        }
        // Nothing readable keeps the last good baseline: an empty one would make the next good
        // reading look like all-new traffic or hide it.
        if (now - std::max(s.last_sent, s.esp_after) < interval) {
            d.what = esp ? verdict::esp_seen : verdict::not_due;
            return d;
        }
        d.what = d.now.empty() ? verdict::unknown : verdict::idle;
        s.last_sent = now;
        return d;
    }

    // True when an SA of `now` sent packets since `before` (per SPI; see the top of this file).
    static bool grew(const esp_counts& before, const esp_counts& now);

    // Forgets endpoint pairs no pass asked about since `before` (IKE SAs gone, or not NAT'd any more).
    void sweep(time_point before);
    size_t size() const noexcept { return peers_.size(); }

private:
    struct state {
        time_point last_sent{}; // the last IKE message or keepalive
        time_point visited{};
        time_point esp_after{}; // ESP went out at or after this (the reading before the one that saw it)
        time_point read_at{};   // the last good reading
        esp_counts esp;         // at the last good reading
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
