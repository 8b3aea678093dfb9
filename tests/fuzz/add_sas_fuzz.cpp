// libFuzzer target for the control socket's add-sas reader (dataplane/src/add_sas_scan.cpp and
// sa_json.cpp): every request comes from a process we do not control, and the hand-written scanner
// must never read outside the body, and must accept only what nlohmann's parser reads the same way.
// For every input: parse() (scanner first, nlohmann when it declines) and parse_with_nlohmann()
// must agree on validity, on the request's DOM, on whether the SA objects were captured and on their
// trees; whatever was captured then goes through the SA validation (sas_from_plain, the config
// loader), which must refuse hostile trees with a message and never crash.
//
// Input: the request body as it is (seeds in corpus/add_sas: add-sas requests of the shapes
// perf/sa-install-rate and espresso-ike send).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "espresso/config/types.h"
#include "sa_json.h"

using namespace espresso;

namespace {

bool same_tree(const config::plain_value& a, const config::plain_value& b)
{
    if (a.what != b.what || a.text != b.text || a.items.size() != b.items.size()) {
        return false;
    }
    for (size_t i = 0; i < a.items.size(); ++i) {
        if (a.items[i].key != b.items[i].key || !same_tree(a.items[i].value, b.items[i].value)) {
            return false;
        }
    }
    return true;
}

[[noreturn]] void disagree(const char* what)
{
    std::fprintf(stderr, "add-sas scanner and nlohmann disagree: %s\n", what);
    std::abort();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    // The scanner reads the reader's copy of it in an arena chunk, whose bytes after the copy are
    // poisoned under AddressSanitizer (request_reader::keep): a read past the end is caught.
    const std::string body(reinterpret_cast<const char*>(data), size);
    static dp::request_reader fast; // reused between inputs, as the server reuses its reader
    static dp::request_reader slow;
    nlohmann::json a;
    nlohmann::json b;
    const bool ok_a = fast.parse(body, a);
    const bool ok_b = slow.parse_with_nlohmann(body, b);
    if (ok_a != ok_b) {
        disagree("validity");
    }
    if (fast.scanned() && !ok_a) {
        disagree("the scanner read a request it then called invalid");
    }
    if (ok_a) {
        if (a != b) {
            disagree("DOM");
        }
        if (fast.captured() != slow.captured() || fast.sas().size() != slow.sas().size()) {
            disagree("capture");
        }
        for (size_t i = 0; i < fast.sas().size(); ++i) {
            if (!same_tree(fast.sas()[i], slow.sas()[i])) {
                disagree("SA tree");
            }
        }
        if (fast.captured()) {
            auto parsed = dp::sas_from_plain(fast.sas());
            if (parsed.value) {
                for (auto& sa : *parsed.value) {
                    config::wipe_keys(sa);
                }
            } else if (parsed.error.empty()) {
                disagree("a refused batch without a message");
            }
        }
    }
    fast.wipe();
    slow.wipe();
    return 0;
}
