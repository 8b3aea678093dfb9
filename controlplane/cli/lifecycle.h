// `espresso up FILE`, `espresso down [FILE]`, `espresso status [FILE]`: start the gateway's two
// processes (espresso-dp, then espresso-ike when the file has IKE peers) in the background with their
// logs in files, stop them (IKE first, so it deletes its SAs while the data plane still runs), and
// report whether they answer. PIDs live beside the control socket in NAME.pids.
#pragma once

#include <string>

namespace espresso::cp::cli {

struct lifecycle_options {
    std::string config_path;
    std::string log_dir = "/var/log/espresso";
    bool json = false;
};

int gateway_up(const lifecycle_options& options);
int gateway_down(const lifecycle_options& options);
int gateway_status(const lifecycle_options& options);

} // namespace espresso::cp::cli
