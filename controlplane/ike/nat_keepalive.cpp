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

void nat_keepalive::sweep(time_point before)
{
    std::erase_if(peers_, [&](const auto& entry) { return entry.second.visited < before; });
}

} // namespace espresso::cp
