// Reads one gateway YAML file into validated plain structs (espresso/config/types.h).
//
// Called once at start-up (and on reload) from an ordinary thread; never from a packet path.
// Every problem is reported as a config_error naming file:line:column, the field, what was expected
// and how to fix it. Unknown keys are errors.
#pragma once

#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "espresso/config/types.h"

namespace YAML {
class Node;
}

namespace espresso::config {

class config_error : public std::runtime_error {
public:
    config_error(std::string file, int line, int column, std::string field, std::string problem,
                 std::string fix);

    const std::string& file() const noexcept { return file_; }
    int line() const noexcept { return line_; }     // 1-based; 0 when unknown
    int column() const noexcept { return column_; } // 1-based; 0 when unknown
    const std::string& field() const noexcept { return field_; }
    const std::string& problem() const noexcept { return problem_; }
    const std::string& fix() const noexcept { return fix_; }

private:
    std::string file_;
    int line_;
    int column_;
    std::string field_;
    std::string problem_;
    std::string fix_;
};

// yaml-cpp 0.7 (Debian 12) loops forever, or grows memory without bound, on some malformed YAML. So by
// default the text is first parsed by yaml-cpp in a forked child process under the limits below; only
// when that child finished (with a tree or with an ordinary syntax error) does this process parse the
// text itself. yaml-cpp is deterministic, so the second parse finishes too and gives the same result;
// a child that loops, runs out of time or memory, or crashes becomes a config_error that says so and
// points at where the parser got stuck. See config/src/yaml_sandbox.cpp for why a child process.
struct load_options {
    // false skips the child: yaml-cpp then runs in this process with no limit. Only for text that
    // Espresso generated itself from already well-formed input (e.g. a JSON object dumped as flow YAML),
    // and for callers in which fork() is unsafe (a process with running DPDK lcores). Never for files or
    // text an operator or a peer wrote.
    bool sandbox = true;
    // Wall-clock time the child may take, and memory it may allocate beyond what it inherited
    // (RLIMIT_DATA headroom), for text up to 512 KiB; both grow by the same amount again for every
    // further whole 512 KiB. A real configuration (a few KiB) parses in about a millisecond; yaml-cpp
    // 0.7 manages about 1 MB/s on a busy machine and needs about 130 bytes of memory per byte of text.
    std::chrono::milliseconds parse_deadline{2000};
    size_t parse_memory_limit = size_t{256} << 20;
};

// Throws config_error. Both fork() a short-lived child unless options.sandbox is false: call them
// from a single-threaded process, or from a thread of a process whose other threads do not hold locks
// the child needs (glibc's malloc is safe across fork; yaml-cpp uses nothing else).
gateway_config load_file(const std::string& path, const load_options& options = {});
gateway_config load_string(std::string_view yaml, const std::string& file_name = "<string>",
                           const load_options& options = {});

// Security associations held as data rather than text: validated here with the checks and messages
// of a `security-associations` item in a file, without writing and re-parsing YAML text (which cost
// most of an SA install). espresso-dp's control socket uses the plain_value overload below.
//
// `path` names the item in errors ("sa" gives "sa.key", "sas[3]" gives "sas[3].key"). A built tree has
// no positions: errors carry line and column 0 and file = `source`, and the SA's origin is `path`.
// Every null in the tree counts as the word `null` (JSON has no other null), so `encryption: null` is
// the null cipher. Throws config_error; the caller wipes the returned keys (wipe_keys).
sa_config load_security_association(const YAML::Node& item, const std::string& path,
                                    const std::string& source);

// The same for a plain value tree: what a JSON document holds (objects, strings, numbers written as
// their text, booleans as true/false, null), referencing the caller's text instead of copying it. It is
// the cheap input for the control socket's add-sa/add-sas: no YAML nodes (yaml-cpp allocates several
// objects per node), one vector per mapping. Every check and message is the one for a YAML tree: the
// loader reads both through the same field accessors. Scalars are views: the text must outlive the call.
struct plain_item;
struct plain_value {
    enum class kind : uint8_t { null, scalar, mapping, sequence };
    kind what = kind::null;
    std::string_view text;         // scalar: the value as written (a number's digits, true/false)
    std::vector<plain_item> items; // mapping: its keys in order (sequences: not read, the loader refuses them)
};
struct plain_item {
    std::string_view key;
    plain_value value;
};
sa_config load_security_association(const plain_value& item, const std::string& path, const std::string& source);

// The file loader's rule for SPIs within one list (outbound SPIs unique, inbound SPIs unique whatever
// the protocol; RFC 4301 §4.1), for SAs from load_security_association: the first duplicate is reported as
// "<path>[i].spi: duplicate SPI ... first used at <origin of the earlier one>". Throws config_error.
void check_security_association_spis(const std::vector<sa_config>& sas, const std::string& path,
                                     const std::string& source);

} // namespace espresso::config
