// The espresso-dp control socket: a unix stream socket carrying versioned, length-prefixed JSON
// messages (espresso/dp/control_protocol.h, docs/control-api.md).
//
// Threads: everything runs on the main lcore. poll() never blocks: it accepts, reads, dispatches and
// writes whatever the sockets allow right now, and is meant to be called every few milliseconds from
// the main loop. The only waits are inside gateway_api's mutating calls (they return once every
// worker applied the change).
//
// Untrusted input: any local root process may connect. Every message is validated; a bad message
// gets an error reply naming the field, a broken frame (oversized, or the peer not reading its
// replies) closes that connection only. A slow client never stalls the loop: its output is bounded
// and it is dropped when the bound is exceeded.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "sa_json.h"

#include "gateway_api.h"

namespace espresso::dp {

class control_server {
public:
    static constexpr size_t max_clients = 64;
    // Unsent output a client may have queued before it is dropped. One reply is always queued when
    // nothing is pending, whatever its size, so a large list-sas still goes out.
    static constexpr size_t max_pending_output = 4u << 20;
    // Requests handled per client per poll(), so that one busy client cannot starve the loop.
    static constexpr size_t max_requests_per_poll = 16;
    // A client with output queued that takes none of it for this long is dropped: one that stopped
    // reading (a CLI stuck in a pager, a hung control plane) would otherwise hold its reply, and a
    // connection slot, for ever.
    static constexpr std::chrono::milliseconds default_write_timeout{30000};
    void set_write_timeout(std::chrono::milliseconds t) noexcept { write_timeout_ = t; } // tests

    // Creates the socket's directory (mode 0700) when missing, removes a stale socket left by a dead
    // process, binds with mode 0600 and listens. Throws std::runtime_error (start-up only): path too
    // long, another espresso-dp serving the path, permissions.
    control_server(gateway_api& gateway, std::string path);
    ~control_server(); // closes every connection and unlinks the socket

    control_server(const control_server&) = delete;
    control_server& operator=(const control_server&) = delete;

    void poll() noexcept;
    // Sleeps up to `usec` microseconds, less if a connection becomes readable (a request arrives) or
    // a new client connects: the main loop naps here so that a request is served at once, not after
    // the nap.
    void wait(unsigned usec) noexcept;
    // Queues an event for every subscribed client (sent by the next poll(), or now if the socket
    // takes it).
    void publish(const gateway_event& event) noexcept;

    const std::string& path() const noexcept { return path_; }
    size_t client_count() const noexcept { return clients_.size(); }
    // Request bytes read and not yet handled, over every client (bounded: read_client).
    size_t buffered_input() const noexcept
    {
        size_t total = 0;
        for (const auto& c : clients_) {
            total += c.in.size();
        }
        return total;
    }

    // What a request asks of its connection besides the reply.
    struct effects {
        bool subscribe = false;
        bool unsubscribe = false;
    };
    // One request body (the JSON text of a frame) -> its reply; public for tests and in-process users.
    nlohmann::json handle(std::string_view body, effects& effect) noexcept;

private:
    struct client {
        int fd = -1;
        std::string in;        // bytes read, not yet a whole frame
        std::string out;       // frames not yet written
        size_t out_offset = 0; // bytes of `out` already written
        bool subscribed = false;
        // Since when queued output has made no progress (default: none pending or progressing).
        std::chrono::steady_clock::time_point stalled_since{};
        bool closing = false; // write what is queued, then close
        bool dead = false;    // close at the end of this poll
    };

    void accept_clients() noexcept;
    void read_client(client& c) noexcept;
    void process_frames(client& c) noexcept;
    void flush_client(client& c) noexcept;
    void queue(client& c, const nlohmann::json& message) noexcept;
    void queue_body(client& c, std::string_view body) noexcept; // one frame, or drop the client
    void close_client(client& c) noexcept;

    nlohmann::json dispatch(const std::string& op, nlohmann::json& args, int version, effects& effect);

    gateway_api& gateway_;
    std::string path_;
    int listen_fd_ = -1;
    dev_t socket_dev_ = 0;
    ino_t socket_ino_ = 0;
    std::vector<client> clients_;
    std::chrono::milliseconds write_timeout_ = default_write_timeout;
    request_reader reader_; // SA objects of add-sas without a JSON DOM (sa_json.h)
};

} // namespace espresso::dp
