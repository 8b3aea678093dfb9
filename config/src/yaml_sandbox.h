// Runs yaml-cpp on untrusted text in a child process first (see yaml_sandbox.cpp for why).
// Internal to the config library.
#pragma once

#include <string>
#include <string_view>

#include "espresso/config/loader.h"

namespace espresso::config::detail {

// Returns when yaml-cpp, run on `text` in a forked child under `options`' deadline and memory limit,
// finished: with a node tree or with an ordinary YAML::Exception (syntax error). The caller may then
// parse the same text in this process and get the same result. Throws config_error (naming `file`
// and, when known, the line and column where the parser got stuck) when the child looped, ran out
// of time or memory, crashed, or could not be started. Returns at once when options.sandbox is false.
void check_yaml_parse_finishes(std::string_view text, const std::string& file, const load_options& options);

} // namespace espresso::config::detail
