// Blocking client for the espresso-dp control socket (docs/control-api.md), for the CLI and the IKE
// daemon's SA installer.
//
// Threads: one control_client is used by one thread at a time; it is movable, not copyable.
// Errors: transport problems (cannot connect, connection lost, timeout, malformed reply) throw
// control_client_error; an operation the data plane refused is NOT an exception: request() returns
// the reply and its "ok" is false (see reply_error()).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "espresso/dp/control_protocol.h"

namespace espresso::dp {

class control_client_error : public std::runtime_error {
public:
    enum class kind : uint8_t { connect, io, timeout, protocol };
    control_client_error(kind what, const std::string& message) : std::runtime_error(message), kind_(what) {}
    kind what_kind() const noexcept { return kind_; }

private:
    kind kind_;
};

class control_client {
public:
    using json = nlohmann::json;
    static constexpr std::chrono::milliseconds default_timeout{5000};

    // Throws control_client_error(kind::connect) with a message such as
    // "cannot connect to /run/espresso/hq.sock: No such file or directory — is espresso-dp running?".
    static control_client connect(const std::string& path);

    control_client(control_client&& other) noexcept;
    control_client& operator=(control_client&& other) noexcept;
    control_client(const control_client&) = delete;
    control_client& operator=(const control_client&) = delete;
    ~control_client();

    // Sends {"version":2,"id":<next>,"op":op,"args":args} (args omitted when null) and waits for the
    // reply with the same id. Events that arrive meanwhile are queued for next_event(). Returns the
    // whole reply object; check reply["ok"].
    json request(std::string_view op, const json& args = nullptr,
                 std::chrono::milliseconds timeout = default_timeout);

    // request() with the arguments already encoded: `args_json` is one JSON object's text, or empty
    // for none. For callers that write a large request faster than a json DOM builds and dumps it
    // (espresso-ike's add-sas, controlplane/ike/installer.h); the text is not checked here (the data
    // plane refuses malformed JSON). The envelope this builds is wiped after sending; `args_json`
    // is the caller's to wipe.
    json request_encoded(std::string_view op, std::string_view args_json,
                         std::chrono::milliseconds timeout = default_timeout);

    // add-sas / delete-sas (docs/control-api.md): many SAs in one request, all or nothing, one
    // acknowledgement round in the data plane. `sas` is an array of SA objects (add-sas) or of
    // {"direction", "spi"} objects (delete-sas). Returns the reply as request() does.
    json add_sas(const json& sas, std::chrono::milliseconds timeout = default_timeout)
    {
        return request("add-sas", json{{"sas", sas}}, timeout);
    }
    json delete_sas(const json& sas, std::chrono::milliseconds timeout = default_timeout)
    {
        return request("delete-sas", json{{"sas", sas}}, timeout);
    }

    // The next event (after a `subscribe` request): a queued one, else waits up to `timeout`.
    // nullopt on timeout.
    std::optional<json> next_event(std::chrono::milliseconds timeout);

    // For callers that poll the socket themselves (epoll in the IKE daemon): readable means
    // next_event(0ms) may return something.
    int fd() const noexcept { return fd_; }
    const std::string& path() const noexcept { return path_; }

    // Sends raw bytes; for tests of the server's handling of broken clients.
    void send_raw(std::string_view bytes);

private:
    control_client(int fd, std::string path) noexcept : fd_(fd), path_(std::move(path)) {}
    // Reads one frame, waiting until `deadline`; nullopt on timeout.
    std::optional<json> read_message(std::chrono::steady_clock::time_point deadline);

    int fd_ = -1;
    std::string path_;
    int64_t next_id_ = 1;
    std::string buffer_; // bytes received, not yet a whole frame
    std::deque<json> events_;
};

// The "error" string of a failed reply, or "" when the reply is ok.
std::string reply_error(const nlohmann::json& reply);

} // namespace espresso::dp
