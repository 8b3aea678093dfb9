// `espresso up FILE`, `espresso down [FILE]`, `espresso status [FILE]`: start the gateway's two
// processes (espresso-dp, then espresso-ike when the file has IKE peers) in the background (or with
// --foreground, attached) with their logs in files and/or on stderr, stop them (IKE first, so it deletes its SAs while the data plane still runs), and
// report whether they answer. PIDs live beside the control socket in NAME.pids.
#pragma once

#include <string>

namespace espresso::cp::cli {

struct lifecycle_options {
    std::string config_path;
    std::string log_dir = "/var/log/espresso";
    bool json = false;
    // `up` only. Where the daemons' logs go: files in log_dir (and ike.log-file), our stderr (each line
    // prefixed with the daemon's name), or both; at least one.
    bool log_files = true;
    bool log_stderr = false;
    // Stay in the foreground until SIGINT/SIGTERM (then stop IKE, then the data plane, as `down`) or
    // until a daemon exits (then stop the other): for systemd Type=simple units and containers.
    bool foreground = false;
};

int gateway_up(const lifecycle_options& options);
int gateway_down(const lifecycle_options& options);
int gateway_status(const lifecycle_options& options);

} // namespace espresso::cp::cli
