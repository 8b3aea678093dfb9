// The IKE daemon's operator socket: same framing and envelope as espresso-dp's control socket
// (docs/control-api.md: 4-byte big-endian length, one JSON object), so dp::control_client talks to
// both. Operations are listed in docs/cli.md ("espresso-ike socket").
#pragma once

#include <string>

namespace espresso::cp {

// "/run/espresso/hq.sock" -> "/run/espresso/hq-ike.sock": the IKE daemon's socket sits beside the
// data plane's, so one `--config` finds both.
inline std::string ike_socket_path(const std::string& dataplane_socket)
{
    const std::string suffix = ".sock";
    if (dataplane_socket.size() > suffix.size() &&
        dataplane_socket.compare(dataplane_socket.size() - suffix.size(), suffix.size(), suffix) == 0) {
        return dataplane_socket.substr(0, dataplane_socket.size() - suffix.size()) + "-ike.sock";
    }
    return dataplane_socket + "-ike";
}

} // namespace espresso::cp
