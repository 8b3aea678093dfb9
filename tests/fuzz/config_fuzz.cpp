// libFuzzer target for the YAML configuration loader: whatever the bytes, load_string either returns a
// validated config or throws config_error with a message. Any other exception, crash or leak is a bug
// (an operator's typo must get a useful error, never a stack trace).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "espresso/config/loader.h"
#include "espresso/config/types.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    const std::string_view yaml(reinterpret_cast<const char*>(data), size);
    try {
        espresso::config::gateway_config config = espresso::config::load_string(yaml, "fuzz.yaml");
        for (auto& sa : config.security_associations) {
            espresso::config::wipe_keys(sa);
        }
    } catch (const espresso::config::config_error& e) {
        if (e.problem().empty()) {
            std::fprintf(stderr, "config_error without a problem: %s\n", e.what());
            std::abort();
        }
    }
    return 0;
}
