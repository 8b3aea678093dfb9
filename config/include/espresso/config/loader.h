// Reads one gateway YAML file into validated plain structs (espresso/config/types.h).
//
// Called once at start-up (and on reload) from an ordinary thread; never from a packet path.
// Every problem is reported as a config_error naming file:line:column, the field, what was expected
// and how to fix it. Unknown keys are errors.
#pragma once

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

// Throws config_error.
gateway_config load_file(const std::string& path);
gateway_config load_string(std::string_view yaml, const std::string& file_name = "<string>");

// Security associations held as data rather than text: espresso-dp's control socket turns the JSON of
// add-sa/add-sas into a YAML::Node tree (dataplane/src/sa_json.cpp) and validates it here with the
// checks and messages of a `security-associations` item in a file, without writing and re-parsing YAML
// text (which cost most of an SA install).
//
// `path` names the item in errors ("sa" gives "sa.key", "sas[3]" gives "sas[3].key"). A built tree has
// no positions: errors carry line and column 0 and file = `source`, and the SA's origin is `path`.
// Every null in the tree counts as the word `null` (JSON has no other null), so `encryption: null` is
// the null cipher. Throws config_error; the caller wipes the returned keys (wipe_keys).
sa_config load_security_association(const YAML::Node& item, const std::string& path,
                                    const std::string& source);

// The file loader's rule for SPIs within one list (outbound SPIs unique, inbound (SPI, protocol)
// unique; RFC 4301 §4.1), for SAs from load_security_association: the first duplicate is reported as
// "<path>[i].spi: duplicate SPI ... first used at <origin of the earlier one>". Throws config_error.
void check_security_association_spis(const std::vector<sa_config>& sas, const std::string& path,
                                     const std::string& source);

} // namespace espresso::config
