// SA, policy, interface, worker and event records <-> the JSON of the control protocol
// (docs/control-api.md).
//
// Parsing SAs goes through the config loader (espresso/config/loader.h) so that a static SA in the
// YAML file and an SA added over the control socket pass the same validation and get the same
// messages: each SA object becomes the loader's plain value tree (views of the JSON's strings, no
// YAML nodes, no text) for config::load_security_association. Rendering never includes key material.
//
// Threads: plain functions without shared state; called on the main lcore by the control server and
// by the telemetry refresh.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "espresso/config/loader.h"
#include "espresso/config/types.h"
#include "gateway_api.h"

namespace espresso::dp {

template <typename T>
struct parsed {
    std::optional<T> value;
    std::string error; // names the field ("sa.key: ..."); empty when value is set
};

// The "sa" argument of add-sa (keys as in the YAML schema of `security-associations` items). The
// returned sa_config holds keys: the caller wipes it (config::wipe_keys) after use. The key strings in
// `sa` are left untouched; see wipe_json_secrets().
parsed<config::sa_config> sa_from_json(const nlohmann::json& sa);

// The "sas" argument of add-sas: an array of such objects, each validated as above, then the file
// loader's SPI uniqueness rule over the batch. Errors name the item ("sas[3].key: ..."). The caller
// wipes every returned sa_config after use.
parsed<std::vector<config::sa_config>> sas_from_json(const nlohmann::json& sas);

// The same for SA objects already read into plain value trees (request_reader below): the checks,
// messages and wiping rules of sas_from_json.
parsed<std::vector<config::sa_config>> sas_from_plain(std::span<const config::plain_value> sas);

// Reads a control request without a JSON DOM for the SA objects of add-sas: the request is parsed
// with nlohmann's SAX interface into its usual DOM, except that when the root's "op" is "add-sas" and
// comes before "args", the items of args.sas go into plain value trees (sas()) whose text lives in one
// arena reused between requests, and args.sas stays an empty array in the DOM. A DOM per SA object
// (a map node and a string per field, then freed) was the largest cost of an add-sas after the
// validation was moved off yaml-cpp. Any other request (or "op" after "args") is parsed as before.
//
// An add-sas request in the usual shape is read first by a hand-written scanner (add_sas_scan.cpp,
// which says why and what it accepts) that gives the same DOM and trees; whatever it declines goes
// through the nlohmann path, so results and messages do not depend on which path read a request.
//
// Threads: one reader per control server, main lcore only.
class request_reader {
public:
    request_reader();
    ~request_reader();
    request_reader(const request_reader&) = delete;
    request_reader& operator=(const request_reader&) = delete;

    // False when `body` is not one valid JSON value (the DOM is then unusable).
    bool parse(std::string_view body, nlohmann::json& request);
    // The same through nlohmann only (no fast scanner): for tests that compare the two paths.
    bool parse_with_nlohmann(std::string_view body, nlohmann::json& request);
    // Whether the last parse() was read by the fast scanner.
    bool scanned() const noexcept { return scanned_; }
    bool captured() const noexcept { return captured_; }
    // Whether the last parse() failed because the request nests deeper than max_request_depth.
    bool too_deep() const noexcept { return too_deep_; }
    static constexpr size_t max_request_depth = 32;
    std::span<const config::plain_value> sas() const noexcept { return {items_.data(), count_}; }
    // Overwrites the captured text (it holds the keys) and forgets the items. Call after every request.
    void wipe() noexcept;
    // Bytes of the arena the text is kept in (it is reused from request to request).
    size_t arena_bytes() const noexcept
    {
        size_t total = 0;
        for (const auto& c : chunks_) {
            total += c.size;
        }
        return total;
    }

private:
    class handler;
    friend class handler;
    // add_sas_scan.cpp: true when it read `body` (a copy kept in the arena); false: declined, the
    // reader's state is then to be reset (wipe()) before the nlohmann path.
    bool scan_add_sas(std::string_view body, nlohmann::json& request);
    std::string_view keep(std::string_view text);
    // wipe(), and under AddressSanitizer poisons the whole arena (keep() unpoisons what it hands out).
    void reset() noexcept;
    config::plain_value& next_item();

    struct chunk {
        std::unique_ptr<char[]> bytes;
        size_t size = 0;
        size_t used = 0; // bytes written since the last wipe()
    };
    std::vector<chunk> chunks_; // the arena: chunks of chunk_size (or larger) bytes
    size_t chunk_ = 0;          // chunk being filled
    std::vector<config::plain_value> items_;
    size_t count_ = 0;
    bool captured_ = false;
    bool scanned_ = false;
    bool too_deep_ = false;
};

// The "policy" argument of add-policy: the keys of a `policies:` item ({local, remote, protocol,
// local-ports, remote-ports, action, priority, spi}), validated by the config loader too.
parsed<config::policy_config> policy_from_json(const nlohmann::json& policy);

// Overwrites the "key" and "integrity-key" strings of an SA object (best effort: the JSON library
// may have copied them while parsing; the server also wipes its receive buffer).
void wipe_json_secrets(nlohmann::json& sa) noexcept;
// Overwrites every string in `value` (a request's DOM: at most request_reader::max_request_depth
// levels, so the recursion is bounded).
void wipe_json_strings(nlohmann::json& value) noexcept;

std::string spi_hex(uint32_t spi); // "0x00001001"
std::string direction_name(config::direction dir);
std::string cipher_name(const config::sa_config& sa); // "aes128gcm16"
std::string integ_name(const config::sa_config& sa);  // "sha256", "none"
std::string mac_text(const config::mac_address& mac); // "02:00:00:00:00:01"

nlohmann::json to_json(const sa_snapshot& sa); // never any key
nlohmann::json to_json(const policy_snapshot& policy);
nlohmann::json to_json(const interface_snapshot& interface);
nlohmann::json to_json(const neighbor_summary& n);
nlohmann::json to_json(const worker_snapshot& worker);
nlohmann::json to_json(const gateway_event& event); // the whole event message, with "version"

} // namespace espresso::dp
