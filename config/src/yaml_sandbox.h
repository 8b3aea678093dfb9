// Runs yaml-cpp on untrusted text in a child process first (see yaml_sandbox.cpp for why).
// Internal to the config library.
#pragma once

#include <atomic>
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

// What the child runs (no limits of its own: the caller's process must be the disposable one). Returns
// 'F' when yaml-cpp finished (a tree or a syntax error), 'L' when its parser emitted more events than
// the text can hold (looping), 'M' on std::bad_alloc, 'E' on any other exception. `line` and `column`,
// when not null, follow the parser (0-based mark of its last event). Also run by the long-lived parse
// worker of tests/fuzz/config_fuzz.cpp, which avoids a fork per fuzz input.
char parse_and_classify(std::string_view text, std::atomic<int>* line, std::atomic<int>* column);

} // namespace espresso::config::detail
