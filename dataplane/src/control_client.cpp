// Blocking control socket client (espresso/dp/control_client.h).
#include "espresso/dp/control_client.h"

#include <poll.h>
#include <string.h> // explicit_bzero
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace espresso::dp {

namespace {

std::string errno_text(int error) { return std::strerror(error); }

// Request texts may hold SA keys (add-sa, add-sas): overwritten when they go out of scope.
struct wiped_text {
    std::string text;
    ~wiped_text() { explicit_bzero(text.data(), text.size()); }
};

} // namespace

control_client control_client::connect(const std::string& path)
{
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(address.sun_path)) {
        throw control_client_error(control_client_error::kind::connect,
                                   "cannot connect to " + path + ": the socket path must be 1 to " +
                                       std::to_string(sizeof(address.sun_path) - 1) + " characters");
    }
    std::memcpy(address.sun_path, path.data(), path.size());
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        throw control_client_error(control_client_error::kind::connect,
                                   "cannot create a unix socket: " + errno_text(errno));
    }
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
        const int error = errno;
        ::close(fd);
        std::string hint;
        if (error == ENOENT || error == ECONNREFUSED) {
            hint = " \u2014 is espresso-dp running?";
        } else if (error == EACCES || error == EPERM) {
            hint = " \u2014 the control socket is for root only; try sudo";
        }
        throw control_client_error(control_client_error::kind::connect,
                                   "cannot connect to " + path + ": " + errno_text(error) + hint);
    }
    return control_client(fd, path);
}

control_client::control_client(control_client&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)), next_id_(other.next_id_),
      buffer_(std::move(other.buffer_)), events_(std::move(other.events_))
{}

control_client& control_client::operator=(control_client&& other) noexcept
{
    if (this != &other) {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        fd_ = std::exchange(other.fd_, -1);
        path_ = std::move(other.path_);
        next_id_ = other.next_id_;
        buffer_ = std::move(other.buffer_);
        events_ = std::move(other.events_);
    }
    return *this;
}

control_client::~control_client()
{
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

void control_client::send_raw(std::string_view bytes)
{
    while (!bytes.empty()) {
        const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            throw control_client_error(control_client_error::kind::io,
                                       "cannot write to " + path_ + ": " + errno_text(errno));
        }
        bytes.remove_prefix(static_cast<size_t>(n));
    }
}

std::optional<nlohmann::json> control_client::read_message(std::chrono::steady_clock::time_point deadline)
{
    for (;;) {
        if (const auto length = control::decode_length(buffer_)) {
            if (*length > control::max_reply_bytes) {
                throw control_client_error(control_client_error::kind::protocol,
                                           "reply from " + path_ + " announces " + std::to_string(*length) +
                                               " bytes, more than the limit of " +
                                               std::to_string(control::max_reply_bytes));
            }
            if (buffer_.size() >= control::length_prefix_bytes + *length) {
                const std::string_view body(buffer_.data() + control::length_prefix_bytes, *length);
                json message = json::parse(body, nullptr, false);
                buffer_.erase(0, control::length_prefix_bytes + *length);
                if (message.is_discarded() || !message.is_object()) {
                    throw control_client_error(control_client_error::kind::protocol,
                                               "malformed message from " + path_ + ": not a JSON object");
                }
                return message;
            }
        }
        const auto now = std::chrono::steady_clock::now();
        // Past the deadline (or a zero timeout, as an epoll caller uses) still takes what has
        // already arrived: one poll without waiting.
        const bool expired = now >= deadline;
        const auto wait = expired ? 0 : std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1;
        pollfd p{fd_, POLLIN, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(wait, 1 << 30)));
        if (ready < 0) {
            if (errno == EINTR) {
                continue;
            }
            throw control_client_error(control_client_error::kind::io, "poll: " + errno_text(errno));
        }
        if (ready == 0) {
            if (expired) {
                return std::nullopt;
            }
            continue; // re-check the deadline
        }
        char chunk[65536];
        const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            throw control_client_error(control_client_error::kind::io,
                                       "cannot read from " + path_ + ": " + errno_text(errno));
        }
        if (n == 0) {
            throw control_client_error(control_client_error::kind::io,
                                       "espresso-dp closed the control connection " + path_);
        }
        buffer_.append(chunk, static_cast<size_t>(n));
    }
}

nlohmann::json control_client::request(std::string_view op, const json& args,
                                       std::chrono::milliseconds timeout)
{
    wiped_text args_text;
    if (!args.is_null()) {
        args_text.text = args.dump();
    }
    return request_encoded(op, args_text.text, timeout);
}

nlohmann::json control_client::request_encoded(std::string_view op, std::string_view args_json,
                                               std::chrono::milliseconds timeout)
{
    const int64_t id = next_id_++;
    // The envelope is written by hand, keys in the protocol's order: a JSON object (std::map) would
    // put "args" before "op", and espresso-dp reads an add-sas fastest when "op" comes first
    // (docs/control-api.md). The texts may hold SA keys (add-sa, add-sas): each is built in one
    // buffer reserved up front (no reallocation leaves a copy behind) and overwritten once sent.
    const std::string op_text = json(op).dump();
    wiped_text body;
    body.text.reserve(64 + op_text.size() + args_json.size());
    body.text.append(R"({"version":)").append(std::to_string(control::protocol_version));
    body.text.append(R"(,"id":)").append(std::to_string(id));
    body.text.append(R"(,"op":)").append(op_text);
    if (!args_json.empty()) {
        body.text.append(R"(,"args":)").append(args_json);
    }
    body.text.push_back('}');
    if (body.text.size() > control::max_request_bytes) {
        throw control_client_error(control_client_error::kind::protocol,
                                   "request too large (" + std::to_string(body.text.size()) + " bytes)");
    }
    wiped_text frame;
    frame.text.reserve(control::length_prefix_bytes + body.text.size());
    control::append_frame(frame.text, body.text);
    send_raw(frame.text);

    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        auto reply = read_message(deadline);
        if (!reply) {
            throw control_client_error(control_client_error::kind::timeout,
                                       "no reply from espresso-dp within " + std::to_string(timeout.count()) +
                                           " ms to " + std::string(op));
        }
        if (reply->contains("event")) {
            events_.push_back(std::move(*reply));
            continue;
        }
        const auto it = reply->find("id");
        if (it != reply->end() && it->is_number_integer() && it->get<int64_t>() == id) {
            return std::move(*reply);
        }
        if (it != reply->end() && it->is_null()) {
            // The server could not read our id: report its error as the reply.
            return std::move(*reply);
        }
        // A reply to an earlier request that timed out: skip it.
    }
}

std::optional<nlohmann::json> control_client::next_event(std::chrono::milliseconds timeout)
{
    if (!events_.empty()) {
        json event = std::move(events_.front());
        events_.pop_front();
        return event;
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        auto message = read_message(deadline);
        if (!message) {
            return std::nullopt;
        }
        if (message->contains("event")) {
            return message;
        }
        // A stray reply (to a request that timed out): ignore.
    }
}

std::string reply_error(const nlohmann::json& reply)
{
    if (reply.is_object() && reply.value("ok", false)) {
        return "";
    }
    if (reply.is_object()) {
        const auto it = reply.find("error");
        if (it != reply.end() && it->is_string()) {
            return it->get<std::string>();
        }
    }
    return "malformed reply";
}

} // namespace espresso::dp
