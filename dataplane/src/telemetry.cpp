// DPDK telemetry commands over a cache the main loop refreshes (telemetry.h).
#include "telemetry.h"

#include <rte_telemetry.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>

#include "sa_json.h"

namespace espresso::dp {

using nlohmann::json;

namespace {

using clock_type = std::chrono::steady_clock;

// A copy younger than this answers a query at once (several commands in a row share one copy).
constexpr auto fresh_enough = std::chrono::milliseconds(500);
// How long a query waits for the main loop to make a copy; after that it answers from the old one.
constexpr auto refresh_wait = std::chrono::seconds(2);

struct telemetry_cache {
    std::mutex lock;
    std::condition_variable refreshed;
    uint64_t generation = 0;         // copies made so far
    clock_type::time_point made;     // when the current copy was made
    std::atomic<bool> wanted{false}; // a query waits for a new copy
    std::atomic<bool> on_demand{false};
    // Snapshots, not JSON: copying 100k snapshots is cheap next to rendering every SA as JSON; a
    // query renders only the SA it asks for.
    std::vector<sa_snapshot> sas;
    json interfaces = json::array();
    json workers = json::array();
};

telemetry_cache& cache()
{
    static telemetry_cache instance;
    return instance;
}

std::optional<uint32_t> parse_spi_text(std::string_view text)
{
    int base = 10;
    if (text.starts_with("0x") || text.starts_with("0X")) {
        text.remove_prefix(2);
        base = 16;
    }
    uint64_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value, base);
    if (text.empty() || error != std::errc{} || end != text.data() + text.size() || value > UINT32_MAX) {
        return std::nullopt;
    }
    return static_cast<uint32_t>(value);
}

// One SA's telemetry: counters, non-zero drops, and what identifies it.
json sa_counters(const json& sa)
{
    json out = {{"spi", sa["spi"]},
                {"encryption", sa["encryption"]},
                {"integrity", sa["integrity"]},
                {"sequence", sa["sequence"]},
                {"interface", sa["interface"]}};
    for (const auto& [name, value] : sa["counters"].items()) {
        out[name] = value;
    }
    for (const auto& [name, value] : sa["drops"].items()) {
        out["drop_" + name] = value;
    }
    return out;
}

std::string scalar_text(const json& value)
{
    if (value.is_string()) {
        return value.get<std::string>();
    }
    if (value.is_number_float()) {
        char text[32];
        std::snprintf(text, sizeof(text), "%.1f", value.get<double>());
        return text;
    }
    return value.dump();
}

// Fills a container (one level: rte_telemetry containers may not nest further).
rte_tel_data* make_container(const json& value)
{
    rte_tel_data* c = rte_tel_data_alloc();
    if (c == nullptr) {
        return nullptr;
    }
    if (value.is_array()) {
        bool all_unsigned = true;
        for (const auto& v : value) {
            all_unsigned = all_unsigned && v.is_number_unsigned();
        }
        if (all_unsigned) {
            rte_tel_data_start_array(c, RTE_TEL_U64_VAL);
            for (const auto& v : value) {
                rte_tel_data_add_array_u64(c, v.get<uint64_t>());
            }
        } else {
            for (const auto& v : value) {
                rte_tel_data_add_array_string(c, scalar_text(v).c_str());
            }
        }
        return c;
    }
    rte_tel_data_start_dict(c);
    for (const auto& [name, v] : value.items()) {
        if (v.is_number_unsigned()) {
            rte_tel_data_add_dict_u64(c, name.c_str(), v.get<uint64_t>());
        } else if (v.is_boolean()) {
            rte_tel_data_add_dict_u64(c, name.c_str(), v.get<bool>() ? 1 : 0);
        } else {
            rte_tel_data_add_dict_string(c, name.c_str(), scalar_text(v).c_str());
        }
    }
    return c;
}

// json object -> rte_tel_data dict; nested objects/arrays become containers.
void fill(rte_tel_data* d, const json& value)
{
    if (value.is_array()) {
        rte_tel_data_start_array(d, RTE_TEL_U64_VAL);
        for (const auto& v : value) {
            if (v.is_number_unsigned()) {
                rte_tel_data_add_array_u64(d, v.get<uint64_t>());
            }
        }
        return;
    }
    rte_tel_data_start_dict(d);
    for (const auto& [name, v] : value.items()) {
        if (v.is_object() || v.is_array()) {
            if (rte_tel_data* c = make_container(v)) {
                if (rte_tel_data_add_dict_container(d, name.c_str(), c, 0) != 0) {
                    rte_tel_data_free(c);
                }
            }
        } else if (v.is_number_unsigned()) {
            rte_tel_data_add_dict_u64(d, name.c_str(), v.get<uint64_t>());
        } else if (v.is_boolean()) {
            rte_tel_data_add_dict_u64(d, name.c_str(), v.get<bool>() ? 1 : 0);
        } else {
            rte_tel_data_add_dict_string(d, name.c_str(), scalar_text(v).c_str());
        }
    }
}

} // namespace

std::optional<json> telemetry_query(std::string_view command, std::string_view params)
{
    auto& c = cache();
    const std::lock_guard guard(c.lock);
    if (command == "/espresso/sa") {
        if (params.empty()) {
            json result = {{"outbound", json::array()}, {"inbound", json::array()}};
            for (const auto& sa : c.sas) {
                auto& list = result[direction_name(sa.config.dir)];
                if (list.size() < RTE_TEL_MAX_ARRAY_ENTRIES) {
                    list.push_back(sa.config.spi);
                }
            }
            return result;
        }
        std::string_view direction;
        if (params.starts_with("in:")) {
            direction = "inbound";
            params.remove_prefix(3);
        } else if (params.starts_with("out:")) {
            direction = "outbound";
            params.remove_prefix(4);
        }
        const auto spi = parse_spi_text(params);
        if (!spi) {
            return std::nullopt;
        }
        json result = json::object();
        for (const auto& sa : c.sas) {
            const std::string dir = direction_name(sa.config.dir);
            if (sa.config.spi == *spi && (direction.empty() || dir == direction)) {
                result[dir] = sa_counters(to_json(sa));
            }
        }
        if (result.empty()) {
            return std::nullopt;
        }
        return result;
    }
    if (command == "/espresso/interfaces") {
        json result = json::object();
        for (const auto& i : c.interfaces) {
            result[i["name"].get<std::string>()] = {
                {"port", i["port"]},
                {"link_up", i["link-up"]},
                {"mtu", i["mtu"]},
                {"rx_packets", i["rx"]["packets"]},
                {"rx_bytes", i["rx"]["bytes"]},
                {"rx_missed", i["rx"]["missed"]},
                {"rx_errors", i["rx"]["errors"]},
                {"tx_packets", i["tx"]["packets"]},
                {"tx_bytes", i["tx"]["bytes"]},
                {"tx_errors", i["tx"]["errors"]},
            };
        }
        return result;
    }
    if (command == "/espresso/workers") {
        json result = json::object();
        for (const auto& w : c.workers) {
            json entry = {{"rx_packets", w["rx-packets"]},
                          {"tx_packets", w["tx-packets"]},
                          {"to_exception", w["to-exception"]},
                          {"fragments", w.value("fragments", json(0))},
                          {"reassembled", w.value("reassembled", json(0))},
                          {"busy_percent", w["busy-percent"]}};
            for (const auto& [name, value] : w["drops"].items()) {
                entry["drop_" + name] = value;
            }
            result["lcore" + std::to_string(w["lcore"].get<unsigned>())] = std::move(entry);
        }
        return result;
    }
    return std::nullopt;
}

// On demand (espresso-dp): ask the main loop for a new copy unless the current one is fresh, and wait
// for it a bounded time (2 s; then the old copy answers). Copying every SA costs the main loop O(SAs), so it
// is done only when someone reads telemetry, not on a timer (at 100k SAs a timed copy cost more than the SA
// installs themselves).
void wait_for_fresh_copy()
{
    auto& c = cache();
    if (!c.on_demand.load(std::memory_order_relaxed)) {
        return;
    }
    std::unique_lock guard(c.lock);
    if (c.generation != 0 && clock_type::now() - c.made < fresh_enough) {
        return;
    }
    const uint64_t seen = c.generation;
    c.wanted.store(true, std::memory_order_release);
    c.refreshed.wait_for(guard, refresh_wait, [&] { return c.generation != seen; });
}

int telemetry_callback(const char* command, const char* params, rte_tel_data* d)
{
    try {
        wait_for_fresh_copy();
        const auto result =
            telemetry_query(command != nullptr ? command : "", params != nullptr ? params : "");
        if (!result) {
            return -EINVAL;
        }
        fill(d, *result);
        return 0;
    } catch (...) {
        return -ENOMEM;
    }
}

void refresh_telemetry(const gateway_api& gateway)
{
    // Build outside the lock: the telemetry thread waits only for the swap.
    std::vector<sa_snapshot> sas = gateway.sas();
    json interfaces = json::array();
    for (const auto& i : gateway.interfaces()) {
        interfaces.push_back(to_json(i));
    }
    json workers = json::array();
    for (const auto& w : gateway.workers()) {
        workers.push_back(to_json(w));
    }
    auto& c = cache();
    {
        const std::lock_guard guard(c.lock);
        c.sas.swap(sas);
        c.interfaces.swap(interfaces);
        c.workers.swap(workers);
        ++c.generation;
        c.made = clock_type::now();
        c.wanted.store(false, std::memory_order_relaxed);
    }
    c.refreshed.notify_all();
    // The old copy is freed here, outside the lock.
}

void refresh_telemetry_on_demand(bool on) noexcept { cache().on_demand.store(on, std::memory_order_relaxed); }

bool telemetry_wanted() noexcept { return cache().wanted.load(std::memory_order_acquire); }

void register_telemetry(gateway_api& gateway)
{
    register_telemetry();
    refresh_telemetry(gateway);
}

void register_telemetry()
{
    rte_telemetry_register_cmd("/espresso/sa", telemetry_callback,
                               "SPIs of all SAs; with parameter [in:|out:]SPI: that SA's counters and drops");
    rte_telemetry_register_cmd("/espresso/interfaces", telemetry_callback,
                               "Per interface: link, MTU, rx/tx packets, bytes, errors. No parameters");
    rte_telemetry_register_cmd("/espresso/workers", telemetry_callback,
                               "Per worker lcore: rx, tx, busy percent, drops. No parameters");
}

} // namespace espresso::dp
