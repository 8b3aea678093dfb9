// Control socket server (control_server.h). Framing and validation here; SA/policy JSON in sa_json.cpp.
#include "control_server.h"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <csignal>
#include <chrono>
#include <string.h> // explicit_bzero
#include <sys/mman.h> // memfd_create
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "espresso/dp/control_protocol.h"
#include "sa_json.h"

namespace espresso::dp {

using nlohmann::json;

namespace {

// A request that fails validation; the message names the field.
class request_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

std::string errno_text(int error) { return std::strerror(error); }

// Creates every missing directory of `dir` with mode 0700 (only root, the data plane's user, needs
// to reach the socket). Existing directories are left as they are.
void make_directories(const std::string& dir)
{
    if (dir.empty()) {
        return;
    }
    struct stat st {};
    if (::stat(dir.c_str(), &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            throw std::runtime_error("control socket directory " + dir + " exists and is not a directory");
        }
        return;
    }
    const size_t slash = dir.find_last_of('/');
    if (slash != std::string::npos && slash > 0) {
        make_directories(dir.substr(0, slash));
    }
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        throw std::runtime_error("cannot create the control socket directory " + dir + ": " +
                                 errno_text(errno));
    }
}

sockaddr_un socket_address(const std::string& path)
{
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(address.sun_path)) {
        throw std::runtime_error("control socket path \"" + path + "\" must be 1 to " +
                                 std::to_string(sizeof(address.sun_path) - 1) +
                                 " characters (dataplane.control-socket)");
    }
    std::memcpy(address.sun_path, path.data(), path.size());
    return address;
}

// A socket file at `path` from an earlier run: refuse if something still answers on it, else remove.
void remove_stale_socket(const std::string& path, const sockaddr_un& address)
{
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        return;
    }
    if (!S_ISSOCK(st.st_mode)) {
        throw std::runtime_error(
            "control socket path " + path +
            " exists and is not a socket; remove it or choose another dataplane.control-socket");
    }
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0) {
        const bool alive =
            ::connect(probe, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0;
        ::close(probe);
        if (alive) {
            throw std::runtime_error("another process (espresso-dp?) is serving the control socket " + path);
        }
    }
    ::unlink(path.c_str());
}

// Replies carry the version of their request (a version 1 client sees version 1 replies), or the
// server's when the request had none it speaks.
json error_reply(const json& id, std::string message, int version = control::protocol_version)
{
    return {{"version", version}, {"id", id}, {"ok", false}, {"error", std::move(message)}};
}

// Reads a reload's file once. The check (check_in_child) and the apply both parse these bytes, so a
// file replaced between the two (an editor's rename, a config management run) can never get applied
// without having been checked. "" or why not; the caller wipes `contents` (it holds keys).
std::string read_config_file(const std::string& path, std::string& contents)
{
    // Far above any real gateway file (100k SAs are ~30 MB of YAML); a bound so a wrong path
    // (/dev/zero, a disk image) cannot exhaust the main lcore's memory.
    constexpr off_t max_size = off_t{256} << 20;
    // O_NONBLOCK: opening a FIFO without a writer (or a device) must not block the main lcore until
    // one appears; the fstat below refuses anything but a regular file, where the flag does nothing.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        return path + ": cannot open the file: " + std::strerror(errno) + "; check the path and its permissions";
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return path + ": not a regular file";
    }
    if (st.st_size > max_size) {
        ::close(fd);
        return path + ": " + std::to_string(st.st_size) + " bytes; a configuration file may have at most " +
               std::to_string(max_size) + " bytes";
    }
    contents.assign(static_cast<size_t>(st.st_size), '\0');
    size_t got = 0;
    // Read to the end, not just st_size bytes: a file still being written may have grown.
    for (;;) {
        if (got == contents.size()) {
            if (contents.size() >= static_cast<size_t>(max_size)) {
                ::close(fd);
                return path + ": the file grew beyond " + std::to_string(max_size) + " bytes while being read";
            }
            // Grown by hand: resize() would free the old buffer, which holds keys, unwiped.
            std::string bigger(std::max<size_t>(contents.size() * 2, 4096), '\0');
            std::memcpy(bigger.data(), contents.data(), got);
            explicit_bzero(contents.data(), contents.size());
            contents.swap(bigger);
        }
        const ssize_t n = ::read(fd, contents.data() + got, contents.size() - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            const int error = errno;
            ::close(fd);
            return path + ": cannot read the file: " + std::strerror(error);
        }
        if (n == 0) {
            break;
        }
        got += static_cast<size_t>(n);
    }
    ::close(fd);
    explicit_bzero(contents.data() + got, contents.size() - got);
    contents.resize(got);
    return {};
}

// A reload's text is parsed first by a fresh `espresso-dp --check --stdin` process, as the loader's
// sandbox would (loader.h: yaml-cpp 0.7 can loop forever or exhaust memory on malformed YAML). The
// sandbox itself fork()s, which is unsafe here with lcores running; posix_spawn (vfork + exec) is not.
// Only when the check finished does this process parse the same text itself, without the sandbox.
// The child gets `text` (read once by read_config_file) on its standard input from a memfd, never the
// path to open again; `path` only names the file in its messages. Blocks the main lcore for the
// check (a few ms for a real file; at most `deadline`). "" or the check's message.
std::string check_in_child(const std::string& path, std::string_view text_in, std::chrono::milliseconds deadline)
{
    const int input = ::memfd_create("espresso-dp-reload", MFD_CLOEXEC);
    if (input < 0) {
        return std::string("cannot check the file: memfd_create: ") + std::strerror(errno);
    }
    // Empties the memfd (the text holds keys) and closes it, on every way out.
    struct input_guard {
        int fd;
        ~input_guard()
        {
            (void)!::ftruncate(fd, 0);
            ::close(fd);
        }
    } input_closer{input};
    for (size_t done = 0; done < text_in.size();) {
        const ssize_t n = ::write(input, text_in.data() + done, text_in.size() - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return std::string("cannot check the file: memfd write: ") + std::strerror(errno);
        }
        done += static_cast<size_t>(n);
    }
    if (::lseek(input, 0, SEEK_SET) != 0) {
        return std::string("cannot check the file: lseek: ") + std::strerror(errno);
    }
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) {
        return std::string("cannot check the file: pipe: ") + std::strerror(errno);
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, input, STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
    std::string self = "/proc/self/exe";
    std::string flag_check = "--check";
    std::string flag_stdin = "--stdin";
    std::string flag_config = "--config";
    std::string file = path;
    char* argv[] = {self.data(), flag_check.data(), flag_stdin.data(), flag_config.data(), file.data(), nullptr};
    char* envp[] = {nullptr};
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, self.c_str(), &actions, nullptr, argv, envp);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    if (rc != 0) {
        ::close(out[0]);
        return std::string("cannot check the file: posix_spawn: ") + std::strerror(rc);
    }
    std::string text;
    const auto until = std::chrono::steady_clock::now() + deadline;
    bool timed_out = false;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            timed_out = true;
            break;
        }
        pollfd p{out[0], POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) {
            break;
        }
        char buf[4096];
        const ssize_t n = ::read(out[0], buf, sizeof(buf));
        if (n == 0) {
            break; // the child closed its output: it is exiting
        }
        if (n > 0 && text.size() < 65536) {
            text.append(buf, static_cast<size_t>(n));
        }
    }
    ::close(out[0]);
    if (timed_out) {
        ::kill(pid, SIGKILL);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (timed_out) {
        return path + ": checking the file took longer than " + std::to_string(deadline.count()) + " ms";
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        return {};
    }
    // "espresso-dp: <the loader's message>\n"
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
        text.pop_back();
    }
    if (text.starts_with("espresso-dp: ")) {
        text.erase(0, 13);
    }
    return text.empty() ? path + ": the configuration check failed" : text;
}

json ok_reply(const json& id, json result, int version)
{
    return {{"version", version}, {"id", id}, {"ok", true}, {"result", std::move(result)}};
}

// Which keys each operation's "args" may carry. Anything else is refused by name, so a typo never
// silently becomes a default.
struct op_args {
    std::string_view op;
    std::array<std::string_view, 2> keys;
};
constexpr std::array<op_args, control::operations.size()> allowed_args{{
    {"add-sa", {"sa", "owner"}},
    {"delete-sa", {"direction", "spi"}},
    {"list-sas", {"direction", "spi"}},
    {"add-policy", {"policy", "owner"}},
    {"delete-policy", {"id", ""}},
    {"list-policies", {"", ""}},
    {"flush", {"", ""}},
    {"show-interfaces", {"", ""}},
    {"show-dataplane", {"", ""}},
    {"clear-counters", {"", ""}},
    {"subscribe", {"", ""}},
    {"unsubscribe", {"", ""}},
    {"ping", {"", ""}},
    {"add-sas", {"sas", "owner"}},
    {"delete-sas", {"sas", ""}},
    {"show-neighbors", {"", ""}},
    {"clear-neighbors", {"family", ""}},
    {"update-sa", {"spi", "peer"}},
    {"reload", {"path", "dry-run"}},
    {"flush-owner", {"owner", ""}},
}};

void check_arg_names(const std::string& op, const json& args)
{
    for (const auto& entry : allowed_args) {
        if (entry.op != op) {
            continue;
        }
        for (const auto& [key, value] : args.items()) {
            if (key.empty() || std::find(entry.keys.begin(), entry.keys.end(), key) == entry.keys.end()) {
                std::string expected;
                for (auto k : entry.keys) {
                    if (!k.empty()) {
                        expected += (expected.empty() ? "" : ", ") + std::string(k);
                    }
                }
                throw request_error("args." + key + ": unknown argument for " + op +
                                    (expected.empty() ? " (it takes none)" : "; expected " + expected));
            }
        }
        return;
    }
}

// args.owner of add-sa, add-sas and add-policy (optional; "" when absent) and flush-owner (required).
std::string parse_owner(const json& args, int version, bool required)
{
    const auto it = args.find("owner");
    if (it == args.end()) {
        if (required) {
            throw request_error("args.owner: missing; expected the owner whose SAs and policies to remove");
        }
        return {};
    }
    if (version < control::owner_protocol_version) {
        throw request_error("args.owner: owners need protocol version " +
                            std::to_string(control::owner_protocol_version) + "; the request says version " +
                            std::to_string(version));
    }
    if (!it->is_string() || !control::valid_owner(it->get_ref<const std::string&>())) {
        throw request_error("args.owner: expected 1 to " + std::to_string(control::max_owner_bytes) +
                            " characters of A-Z, a-z, 0-9, '.', '_' or '-' (a program's name, e.g. \"espresso-ike\")");
    }
    return it->get<std::string>();
}

const json& require(const json& args, std::string_view name, std::string_view expected)
{
    const auto it = args.find(name);
    if (it == args.end()) {
        throw request_error("args." + std::string(name) + ": missing; expected " + std::string(expected));
    }
    return *it;
}

config::direction parse_direction(const json& value)
{
    if (value.is_string()) {
        if (value.get_ref<const std::string&>() == "outbound") {
            return config::direction::outbound;
        }
        if (value.get_ref<const std::string&>() == "inbound") {
            return config::direction::inbound;
        }
    }
    throw request_error("args.direction: expected \"outbound\" or \"inbound\"");
}

uint32_t parse_spi(const json& value)
{
    uint64_t spi = 0;
    bool ok = false;
    if (value.is_number_unsigned()) {
        spi = value.get<uint64_t>();
        ok = true;
    } else if (value.is_number_integer()) {
        ok = value.get<int64_t>() >= 0;
        spi = static_cast<uint64_t>(value.get<int64_t>());
    } else if (value.is_string()) {
        std::string_view text = value.get_ref<const std::string&>();
        int base = 10;
        if (text.starts_with("0x") || text.starts_with("0X")) {
            text.remove_prefix(2);
            base = 16;
        }
        const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), spi, base);
        ok = !text.empty() && error == std::errc{} && end == text.data() + text.size();
    }
    if (!ok || spi > UINT32_MAX) {
        throw request_error("args.spi: expected a 32-bit SPI as a number or a \"0x\"-prefixed hex string");
    }
    return static_cast<uint32_t>(spi);
}

// Overwrites frame bytes that may have carried keys before they are released.
// Drops the first `bytes` of `buffer` (requests hold keys): they are wiped, and so are the bytes the
// move of the rest leaves behind past its new end (erase() left a copy of them in the capacity).
void wipe_prefix(std::string& buffer, size_t bytes) noexcept
{
    bytes = std::min(bytes, buffer.size());
    const size_t rest = buffer.size() - bytes;
    explicit_bzero(buffer.data(), bytes);
    std::memmove(buffer.data(), buffer.data() + bytes, rest);
    explicit_bzero(buffer.data() + rest, bytes);
    buffer.resize(rest);
}

// buffer += bytes, without leaving a copy of what the buffer held (keys) in freed memory when it
// has to grow.
void append_wiped(std::string& buffer, const char* bytes, size_t n)
{
    if (buffer.size() + n > buffer.capacity()) {
        std::string bigger;
        bigger.reserve(std::max(buffer.capacity() * 2, buffer.size() + n));
        bigger.append(buffer);
        explicit_bzero(buffer.data(), buffer.size());
        buffer.swap(bigger);
    }
    buffer.append(bytes, n);
}

} // namespace

control_server::control_server(gateway_api& gateway, std::string path)
    : gateway_(gateway), path_(std::move(path))
{
    const sockaddr_un address = socket_address(path_);
    const size_t slash = path_.find_last_of('/');
    if (slash != std::string::npos && slash > 0) {
        make_directories(path_.substr(0, slash));
    }
    remove_stale_socket(path_, address);

    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) {
        throw std::runtime_error("cannot create the control socket: " + errno_text(errno));
    }
    // The socket file is created by bind(): the umask keeps it 0600 from the first instant, so there
    // is no window in which another user could connect before the chmod.
    const mode_t old_mask = ::umask(0177);
    const int bound = ::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&address), sizeof(address));
    const int bind_error = errno;
    ::umask(old_mask);
    if (bound != 0) {
        ::close(listen_fd_);
        listen_fd_ = -1;
        throw std::runtime_error("cannot bind the control socket " + path_ + ": " + errno_text(bind_error));
    }
    ::chmod(path_.c_str(), 0600);
    struct stat st {};
    if (::stat(path_.c_str(), &st) == 0) {
        socket_dev_ = st.st_dev;
        socket_ino_ = st.st_ino;
    }
    if (::listen(listen_fd_, 16) != 0) {
        const int error = errno;
        ::close(listen_fd_);
        ::unlink(path_.c_str());
        listen_fd_ = -1;
        throw std::runtime_error("cannot listen on the control socket " + path_ + ": " + errno_text(error));
    }
    clients_.reserve(max_clients);
}

control_server::~control_server()
{
    for (auto& c : clients_) {
        close_client(c);
    }
    if (listen_fd_ >= 0) {
        ::close(listen_fd_);
        // Unlink only our own socket: a second instance may have replaced it since.
        struct stat st {};
        if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == socket_dev_ && st.st_ino == socket_ino_) {
            ::unlink(path_.c_str());
        }
    }
}

void control_server::close_client(client& c) noexcept
{
    if (c.fd >= 0) {
        ::close(c.fd);
        c.fd = -1;
    }
    explicit_bzero(c.in.data(), c.in.size());
    c.dead = true;
}

void control_server::poll() noexcept
{
    // One poll(2) for the listener and every client: an idle control socket costs one system call.
    std::array<pollfd, max_clients + 1> fds{};
    fds[0] = {listen_fd_, POLLIN, 0};
    for (size_t i = 0; i < clients_.size(); ++i) {
        const auto& c = clients_[i];
        short events = c.closing ? 0 : POLLIN;
        if (c.out.size() > c.out_offset) {
            events |= POLLOUT;
        }
        fds[i + 1] = {c.fd, events, 0};
    }
    const size_t count = clients_.size() + 1;
    if (::poll(fds.data(), count, 0) < 0) {
        for (auto& p : fds) {
            p.revents = 0; // EINTR: nothing new to read, but queued frames are still handled
        }
    }
    for (size_t i = 0; i < clients_.size(); ++i) {
        auto& c = clients_[i];
        const short revents = fds[i + 1].revents;
        if ((revents & (POLLIN | POLLHUP | POLLERR)) != 0 && !c.closing) {
            read_client(c);
        }
        if (!c.dead && (revents & POLLERR) != 0) {
            close_client(c);
        }
        if (!c.dead) {
            process_frames(c);
        }
        if (!c.dead) {
            flush_client(c);
        }
    }
    std::erase_if(clients_, [](const client& c) { return c.dead; });
    if ((fds[0].revents & POLLIN) != 0) {
        accept_clients();
    }
}

void control_server::wait(unsigned usec) noexcept
{
    std::array<pollfd, max_clients + 1> fds{};
    fds[0] = {listen_fd_, POLLIN, 0};
    size_t count = 1;
    for (const auto& c : clients_) {
        // Whole frames already read (more than one poll() handles): no nap.
        if (const auto length = control::decode_length(c.in);
            !c.dead && length && c.in.size() >= control::length_prefix_bytes + *length) {
            return;
        }
        if (!c.closing && !c.dead) {
            fds[count++] = {c.fd, POLLIN, 0};
        }
    }
    const timespec timeout{static_cast<time_t>(usec / 1000000), static_cast<long>(usec % 1000000) * 1000};
    ::ppoll(fds.data(), count, &timeout, nullptr);
}

void control_server::accept_clients() noexcept
{
    for (;;) {
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return; // EAGAIN, or a transient error: try again at the next poll
        }
        // The socket file is 0600, but check the peer too: only root or our own user may drive the
        // data plane (a file mode can be loosened by accident; SO_PEERCRED cannot lie).
        ucred peer{};
        socklen_t length = sizeof(peer);
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &length) != 0 ||
            (peer.uid != 0 && peer.uid != ::geteuid())) {
            ::close(fd);
            continue;
        }
        try {
            if (clients_.size() >= max_clients) {
                client refused{fd};
                queue(refused, error_reply(nullptr, "too many control connections (limit " +
                                                        std::to_string(max_clients) + "); try again later"));
                flush_client(refused);
                if (!refused.dead) {
                    ::close(fd);
                }
                continue;
            }
            clients_.push_back(client{fd});
        } catch (...) {
            ::close(fd);
        }
    }
}

void control_server::read_client(client& c) noexcept
{
    // Hold at most one maximal request (and a chunk) unprocessed: enough for any request to arrive
    // whole, bounded so that a client cannot keep the loop here nor make the server buffer what it
    // sends faster than the requests are handled (a stream of empty frames once grew the buffer to
    // 190 MB, each handled frame moving all of it). The socket stays readable; reading resumes once
    // process_frames has caught up.
    const size_t budget = control::max_request_bytes + control::length_prefix_bytes;
    try {
        char chunk[16384];
        while (c.in.size() < budget) {
            const ssize_t n = ::recv(c.fd, chunk, sizeof(chunk), 0);
            if (n > 0) {
                append_wiped(c.in, chunk, static_cast<size_t>(n));
                explicit_bzero(chunk, static_cast<size_t>(n));
                continue;
            }
            if (n == 0) {
                // Peer closed. A partial frame is simply dropped (nothing to answer); whole frames
                // already read are still answered as far as the socket takes it.
                c.closing = true;
                return;
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                close_client(c);
            }
            return;
        }
    } catch (...) {
        close_client(c); // out of memory: lose this client, not the gateway
    }
}

void control_server::process_frames(client& c) noexcept
{
    size_t handled = 0;
    size_t consumed = 0; // the frames handled are dropped from c.in once, at the end
    while (!c.dead && handled < max_requests_per_poll) {
        const std::string_view in = std::string_view(c.in).substr(consumed);
        const auto length = control::decode_length(in);
        if (!length) {
            break;
        }
        if (*length > control::max_request_bytes) {
            queue(c, error_reply(nullptr, "frame: message of " + std::to_string(*length) +
                                              " bytes exceeds the limit of " +
                                              std::to_string(control::max_request_bytes) +
                                              " bytes; closing the connection"));
            consumed = c.in.size();
            c.closing = true;
            break;
        }
        if (in.size() < control::length_prefix_bytes + *length) {
            break; // wait for the rest of the frame
        }
        effects effect;
        json reply = handle(in.substr(control::length_prefix_bytes, *length), effect);
        consumed += control::length_prefix_bytes + *length;
        if (effect.subscribe) {
            c.subscribed = true;
        }
        if (effect.unsubscribe) {
            c.subscribed = false;
        }
        queue(c, reply);
        ++handled;
    }
    if (!c.dead) {
        wipe_prefix(c.in, consumed);
    }
}

void control_server::queue(client& c, const json& message) noexcept
{
    if (c.dead) {
        return;
    }
    try {
        queue_body(c, message.dump(-1, ' ', false, json::error_handler_t::replace));
    } catch (...) {
        close_client(c);
    }
}

void control_server::queue_body(client& c, std::string_view body) noexcept
{
    if (c.dead) {
        return;
    }
    try {
        const size_t pending = c.out.size() - c.out_offset;
        if (pending > 0 && pending + body.size() > max_pending_output) {
            // The client does not read what it asked for (or its events): drop it rather than grow.
            close_client(c);
            return;
        }
        if (c.out_offset > 0 && c.out_offset == c.out.size()) {
            c.out.clear();
            c.out_offset = 0;
        }
        control::append_frame(c.out, body);
    } catch (...) {
        close_client(c);
    }
}

void control_server::flush_client(client& c) noexcept
{
    bool progressed = false;
    while (c.out_offset < c.out.size()) {
        const ssize_t n = ::send(c.fd, c.out.data() + c.out_offset, c.out.size() - c.out_offset,
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c.out_offset += static_cast<size_t>(n);
            progressed = true;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            const auto now = std::chrono::steady_clock::now();
            if (progressed || c.stalled_since == std::chrono::steady_clock::time_point{}) {
                c.stalled_since = now;
            } else if (now - c.stalled_since > write_timeout_) {
                close_client(c); // reads nothing: default_write_timeout
                return;
            }
            // The rest goes at a later poll. Drop what was sent so that a client that keeps up, but
            // only just, does not make the buffer grow without bound; but only once it is at least
            // half the buffer, so that a large reply (list-sas of 100k SAs: tens of MB, sent in
            // socket-buffer steps) is not moved down once per step (quadratic; seen in perf).
            if (c.out_offset >= 65536 && c.out_offset * 2 >= c.out.size()) {
                c.out.erase(0, c.out_offset);
                c.out_offset = 0;
            }
            return;
        }
        close_client(c);
        return;
    }
    c.out.clear();
    c.out_offset = 0;
    c.stalled_since = {};
    if (c.closing) {
        // The peer closed its side: whole requests it sent before are still answered (more than one
        // poll handles when it pipelined many; they were dropped unanswered), a partial one is not.
        const auto length = control::decode_length(c.in);
        if (!length || c.in.size() < control::length_prefix_bytes + *length) {
            close_client(c);
        }
    }
}

void control_server::publish(const gateway_event& event) noexcept
{
    try {
        const std::string body = to_json(event).dump();
        for (auto& c : clients_) {
            if (c.subscribed && !c.dead && !c.closing) {
                queue_body(c, body);
                if (!c.dead) {
                    flush_client(c);
                }
            }
        }
        std::erase_if(clients_, [](const client& c) { return c.dead; });
    } catch (...) {
        // Out of memory while formatting: the event is lost; the IKE daemon also polls list-sas.
    }
}

json control_server::handle(std::string_view body, effects& effect) noexcept
{
    json id = nullptr;
    int version = control::protocol_version;
    json request;
    json args = json::object();
    // The captured SA text holds keys: overwritten whatever happens to the request. So is every
    // string of the request's DOM (keys of add-sa and add-sas, wherever the request stopped: an
    // unknown key, a bad version or op, an exception; the DOM nests at most max_request_depth levels,
    // so the walk's recursion is bounded).
    struct wipe_reader {
        request_reader& reader;
        json& request;
        json& args;
        ~wipe_reader()
        {
            reader.wipe();
            wipe_json_strings(request);
            wipe_json_strings(args);
        }
    } wipe_captured{reader_, request, args};
    try {
        if (!reader_.parse(body, request) || request.is_discarded()) {
            if (reader_.too_deep()) {
                return error_reply(nullptr, "message: nested deeper than " +
                                                std::to_string(request_reader::max_request_depth) + " levels");
            }
            return error_reply(nullptr, "message: not valid JSON");
        }
        if (!request.is_object()) {
            return error_reply(nullptr, "message: expected a JSON object");
        }
        // The id first, so that every later error can be matched to its request.
        const auto id_it = request.find("id");
        if (id_it == request.end()) {
            return error_reply(nullptr, "id: missing; expected an integer that the reply echoes");
        }
        if (!id_it->is_number_integer()) {
            return error_reply(nullptr, "id: expected an integer, got " + std::string(id_it->type_name()));
        }
        id = *id_it;
        const auto version_it = request.find("version");
        if (version_it == request.end()) {
            return error_reply(id, "version: missing; this server speaks version " +
                                       std::to_string(control::protocol_version));
        }
        if (!version_it->is_number_integer() || version_it->get<int64_t>() < control::min_protocol_version ||
            version_it->get<int64_t>() > control::protocol_version) {
            // Not the value itself: it is the client's (any size), only its type or number is told.
            const std::string got = version_it->is_number_integer() ? std::to_string(version_it->get<int64_t>())
                                                                     : std::string("a ") + version_it->type_name();
            return error_reply(id, "version: unsupported version " + got + "; this server speaks " +
                                       std::to_string(control::min_protocol_version) + " to " +
                                       std::to_string(control::protocol_version));
        }
        version = static_cast<int>(version_it->get<int64_t>());
        const auto op = request.find("op");
        if (op == request.end() || !op->is_string()) {
            return error_reply(id, op == request.end() ? "op: missing" : "op: expected a string", version);
        }
        const std::string& name = op->get_ref<const std::string&>();
        if (!control::is_operation(name)) {
            std::string known;
            for (auto o : control::operations) {
                known += (known.empty() ? "" : ", ") + std::string(o);
            }
            return error_reply(id, "op: unknown operation \"" + name + "\"; expected one of " + known, version);
        }
        for (const auto& [key, value] : request.items()) {
            if (key != "version" && key != "id" && key != "op" && key != "args") {
                return error_reply(id, key + ": unknown key; a request has version, id, op and args", version);
            }
        }
        if (const auto it = request.find("args"); it != request.end()) {
            if (!it->is_object() && !it->is_null()) {
                return error_reply(id, "args: expected an object", version);
            }
            if (it->is_object()) {
                args = std::move(*it);
            }
        }
        json reply;
        try {
            check_arg_names(name, args);
            reply = ok_reply(id, dispatch(name, args, version, effect), version);
        } catch (const request_error& e) {
            reply = error_reply(id, e.what(), version);
        }
        return reply; // the request's strings are wiped on the way out (wipe_captured)
    } catch (const std::exception& e) {
        return error_reply(id, std::string("internal error: ") + e.what(), version);
    } catch (...) {
        return error_reply(id, "internal error", version);
    }
}

json control_server::dispatch(const std::string& op, json& args, int version, effects& effect)
{
    if (op == "add-sa") {
        const json& sa_json = require(args, "sa", "an object with the keys of a security-associations item");
        auto parsed_sa = sa_from_json(sa_json);
        if (!parsed_sa.value) {
            throw request_error(parsed_sa.error);
        }
        config::sa_config& sa = *parsed_sa.value;
        try {
            sa.owner = parse_owner(args, version, false);
        } catch (...) {
            config::wipe_keys(sa);
            throw;
        }
        const std::string error = gateway_.add_sa(sa);
        const json result = {{"spi", sa.spi}, {"direction", direction_name(sa.dir)}};
        config::wipe_keys(sa);
        if (!error.empty()) {
            throw request_error(error);
        }
        return result;
    }
    if (op == "add-sas") {
        const json& list = require(args, "sas", "an array of objects with the keys of a security-associations item");
        // The SA objects were read without a DOM (request_reader) unless "op" came after "args".
        const size_t count = reader_.captured() ? reader_.sas().size() : list.is_array() ? list.size() : 0;
        if (count > control::max_batch_items) {
            throw request_error("args.sas: " + std::to_string(count) + " SAs; at most " +
                                std::to_string(control::max_batch_items) + " per request");
        }
        auto parsed_sas = reader_.captured() ? sas_from_plain(reader_.sas()) : sas_from_json(list);
        if (!parsed_sas.value) {
            throw request_error(parsed_sas.error);
        }
        std::vector<config::sa_config>& sas = *parsed_sas.value;
        std::string owner;
        try {
            owner = parse_owner(args, version, false);
        } catch (...) {
            for (auto& sa : sas) {
                config::wipe_keys(sa);
            }
            throw;
        }
        for (auto& sa : sas) {
            sa.owner = owner;
        }
        const std::string error = gateway_.add_sas(sas);
        for (auto& sa : sas) {
            config::wipe_keys(sa);
        }
        if (!error.empty()) {
            throw request_error(error);
        }
        return {{"installed", sas.size()}};
    }
    if (op == "delete-sas") {
        const json& list = require(args, "sas", "an array of {\"direction\", \"spi\"} objects");
        if (!list.is_array() || list.empty() || list.size() > control::max_batch_items) {
            throw request_error("args.sas: expected an array of 1 to " + std::to_string(control::max_batch_items) +
                                " {\"direction\", \"spi\"} objects");
        }
        std::vector<gateway_api::sa_id> which;
        which.reserve(list.size());
        for (size_t i = 0; i < list.size(); ++i) {
            const json& item = list[i];
            const std::string where = "sas[" + std::to_string(i) + "]";
            if (!item.is_object()) {
                throw request_error(where + ": expected an object {\"direction\", \"spi\"}");
            }
            for (const auto& [key, value] : item.items()) {
                if (key != "direction" && key != "spi") {
                    throw request_error(where + "." + key + ": unknown key; expected direction and spi");
                }
            }
            try {
                which.emplace_back(parse_direction(require(item, "direction", "\"outbound\" or \"inbound\"")),
                                   parse_spi(require(item, "spi", "the SPI")));
            } catch (const request_error& e) {
                // parse_* and require name "args.<field>"; re-root at the item.
                std::string message = e.what();
                if (message.starts_with("args.")) {
                    message = where + "." + message.substr(5);
                }
                throw request_error(message);
            }
        }
        if (const std::string error = gateway_.delete_sas(which); !error.empty()) {
            throw request_error(error);
        }
        return {{"deleted", which.size()}};
    }
    if (op == "delete-sa") {
        const auto dir = parse_direction(require(args, "direction", "\"outbound\" or \"inbound\""));
        const auto spi = parse_spi(require(args, "spi", "the SPI"));
        if (const std::string error = gateway_.delete_sa(dir, spi); !error.empty()) {
            throw request_error(error);
        }
        return {{"spi", spi}, {"direction", direction_name(dir)}};
    }
    if (op == "update-sa") {
        const auto spi = parse_spi(require(args, "spi", "the outbound SA's SPI"));
        const json& peer = require(args, "peer", "an object {\"address\": ..., \"port\": ...} (either or both)");
        if (!peer.is_object() || peer.empty()) {
            throw request_error("args.peer: expected an object with \"address\" and/or \"port\"");
        }
        config::ip_address address;
        std::optional<uint16_t> port;
        for (const auto& [key, value] : peer.items()) {
            if (key == "address") {
                const auto parsed = value.is_string() ? config::parse_address(value.get<std::string>()) : std::nullopt;
                if (!parsed) {
                    throw request_error("args.peer.address: expected an IPv4 or IPv6 address as a string");
                }
                address = *parsed;
            } else if (key == "port") {
                if (!value.is_number_integer() || value.get<int64_t>() < 1 || value.get<int64_t>() > 65535) {
                    throw request_error("args.peer.port: expected a UDP port 1..65535");
                }
                port = static_cast<uint16_t>(value.get<int64_t>());
            } else {
                throw request_error("args.peer." + key + ": unknown; expected address and/or port");
            }
        }
        if (const std::string error = gateway_.update_sa_peer(spi, address, port); !error.empty()) {
            throw request_error(error);
        }
        return {{"spi", spi}, {"direction", "outbound"}};
    }
    if (op == "list-sas") {
        std::optional<config::direction> dir;
        std::optional<uint32_t> spi;
        if (const auto it = args.find("direction"); it != args.end()) {
            dir = parse_direction(*it);
        }
        if (const auto it = args.find("spi"); it != args.end()) {
            spi = parse_spi(*it);
        }
        json list = json::array();
        if (dir && spi) {
            // One SA by its key, without copying every SA (espresso-ike polls an SA's counters this way).
            if (const auto sa = gateway_.sa(*dir, *spi)) {
                list.push_back(to_json(*sa));
            }
            return {{"sas", std::move(list)}};
        }
        for (const auto& sa : gateway_.sas()) {
            if ((!dir || sa.config.dir == *dir) && (!spi || sa.config.spi == *spi)) {
                list.push_back(to_json(sa));
            }
        }
        return {{"sas", std::move(list)}};
    }
    if (op == "add-policy") {
        const json& policy_json = require(args, "policy", "an object {local, remote, action, ...}");
        auto policy = policy_from_json(policy_json);
        if (!policy.value) {
            throw request_error(policy.error);
        }
        policy.value->owner = parse_owner(args, version, false);
        uint32_t id = 0;
        if (const std::string error = gateway_.add_policy(*policy.value, id); !error.empty()) {
            throw request_error(error);
        }
        return {{"id", id}};
    }
    if (op == "delete-policy") {
        const json& id = require(args, "id", "the policy id from add-policy or list-policies");
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > UINT32_MAX) {
            throw request_error("args.id: expected a policy id (a non-negative integer)");
        }
        if (const std::string error = gateway_.delete_policy(static_cast<uint32_t>(id.get<int64_t>()));
            !error.empty()) {
            throw request_error(error);
        }
        return {{"id", id}};
    }
    if (op == "list-policies") {
        json list = json::array();
        for (const auto& p : gateway_.policies()) {
            list.push_back(to_json(p));
        }
        return {{"policies", std::move(list)}};
    }
    if (op == "flush") {
        if (std::string error = gateway_.flush(); !error.empty()) {
            throw request_error(error);
        }
        return json::object();
    }
    if (op == "flush-owner") {
        if (version < control::owner_protocol_version) {
            throw request_error("op: flush-owner needs protocol version " +
                                std::to_string(control::owner_protocol_version) + "; the request says version " +
                                std::to_string(version));
        }
        const std::string owner = parse_owner(args, version, true);
        gateway_api::flushed removed;
        if (const std::string error = gateway_.flush_owner(owner, removed); !error.empty()) {
            throw request_error(error + " (removed so far: " + std::to_string(removed.sas) + " SAs, " +
                                std::to_string(removed.policies) + " policies)");
        }
        return {{"owner", owner}, {"sas", removed.sas}, {"policies", removed.policies}};
    }
    if (op == "show-interfaces") {
        json list = json::array();
        for (const auto& i : gateway_.interfaces()) {
            list.push_back(to_json(i));
        }
        return {{"interfaces", std::move(list)}};
    }
    if (op == "show-neighbors") {
        return to_json(gateway_.neighbors());
    }
    if (op == "clear-neighbors") {
        uint8_t family = 0;
        if (args.contains("family")) {
            const json& f = args["family"];
            if (!f.is_number_integer() || (f.get<int64_t>() != 4 && f.get<int64_t>() != 6)) {
                throw request_error("args.family: expected 4 (ARP) or 6 (IPv6 neighbors); omit it for both");
            }
            family = static_cast<uint8_t>(f.get<int64_t>());
        }
        return {{"cleared", gateway_.clear_neighbors(family)}};
    }
    if (op == "show-dataplane") {
        json list = json::array();
        for (const auto& w : gateway_.workers()) {
            list.push_back(to_json(w));
        }
        return {{"workers", std::move(list)}};
    }
    if (op == "clear-counters") {
        gateway_.clear_counters();
        return json::object();
    }
    if (op == "subscribe") {
        effect.subscribe = true;
        return {{"subscribed", true}};
    }
    if (op == "unsubscribe") {
        effect.unsubscribe = true;
        return {{"subscribed", false}};
    }
    if (op == "ping") {
        // The newest version this server speaks (a client may send any from min-version on).
        return {{"version", control::protocol_version}, {"min-version", control::min_protocol_version}};
    }
    if (op == "reload") {
        std::string path = gateway_.config_file();
        bool dry_run = false;
        if (const auto it = args.find("path"); it != args.end()) {
            if (!it->is_string() || it->get<std::string>().empty() || it->get<std::string>()[0] != '/') {
                throw request_error("args.path: expected the configuration file's absolute path as a string");
            }
            path = it->get<std::string>();
        }
        if (const auto it = args.find("dry-run"); it != args.end()) {
            if (!it->is_boolean()) {
                throw request_error("args.dry-run: expected true or false");
            }
            dry_run = it->get<bool>();
        }
        if (path.empty()) {
            throw request_error("args.path: this data plane knows no file to re-read; give its path");
        }
        // One read: the child checks and this process applies the same bytes (read_config_file).
        std::string text;
        struct text_wiper {
            std::string& t;
            ~text_wiper() { explicit_bzero(t.data(), t.size()); }
        } wipe_text{text};
        if (const std::string error = read_config_file(path, text); !error.empty()) {
            throw request_error(error + " (nothing was changed)");
        }
        if (const std::string error = check_in_child(path, text, std::chrono::seconds(10)); !error.empty()) {
            throw request_error(error + " (nothing was changed)");
        }
        config::gateway_config next;
        try {
            config::load_options options;
            options.sandbox = false; // check_in_child parsed this text in a process of its own first
            next = config::load_string(text, path, options);
        } catch (const std::exception& e) {
            // The loader's message names file, line, field and fix; nothing was changed.
            throw request_error(std::string(e.what()) + " (nothing was changed)");
        }
        reload_report report;
        if (const std::string error = gateway_.reload(next, dry_run, report); !error.empty()) {
            throw request_error(error + (report.apply_started ? " (applied up to this step; list-sas and "
                                                                "list-policies show the state)"
                                                              : " (nothing was changed)"));
        }
        auto section = [](const reload_section& r) {
            return json{{"added", r.added}, {"removed", r.removed}, {"changed", r.changed}, {"unchanged", r.unchanged}};
        };
        return {{"file", path},
                {"dry-run", dry_run},
                {"applied", report.applied},
                {"sections",
                 {{"routes", section(report.routes)},
                  {"neighbors", section(report.neighbors)},
                  {"policies", section(report.policies)},
                  {"security-associations", section(report.sas)}}},
                {"restart-needed", report.restart_needed}};
    }
    // is_operation() and this chain disagree: a programming error, reported rather than crashing.
    throw request_error("op: \"" + op + "\" is known but not implemented");
}

} // namespace espresso::dp
