#include "nat_keepalive.h"

#include <iterator>

namespace espresso::cp {

void nat_keepalive::sent(const endpoint& local, const endpoint& remote, time_point now)
{
    if (peers_.empty()) {
        return;
    }
    if (auto it = peers_.find(key(local, remote)); it != peers_.end() && it->second.last_sent < now) {
        it->second.last_sent = now;
    }
}

bool nat_keepalive::grew(const esp_counts& before, const esp_counts& now)
{
    for (const auto& [spi, packets] : now) {
        const auto it = before.find(spi);
        // Not read last time (new since, or unreadable then): what it sent went out since that reading.
        if (it == before.end() ? packets > 0 : packets > it->second) {
            return true;
        }
    }
    return false;
}

void nat_keepalive::sweep(time_point before)
{
    std::erase_if(peers_, [&](const auto& entry) { return entry.second.visited < before; });
}

} // namespace espresso::cp
