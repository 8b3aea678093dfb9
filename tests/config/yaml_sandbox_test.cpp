// Tests for config/src/yaml_sandbox.cpp: yaml-cpp 0.7 runs on untrusted text in a child process with a
// deadline and a memory limit, so a file on which it never returns becomes a config_error in time.
#include "yaml_sandbox.h"

#include <sys/wait.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "espresso/config/loader.h"

namespace espresso::config {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

#define EXPECT_CONTAINS(text, part) \
    EXPECT_TRUE(contains((text), (part))) << "\"" << (text) << "\" lacks \"" << (part) << "\""

std::string source_root() {
    const char* root = std::getenv("ESPRESSO_SOURCE_ROOT");
    return root == nullptr ? std::string() : std::string(root);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// The config_error load_string throws, or a test failure.
config_error load_error(const std::string& yaml, const load_options& options = {}) {
    try {
        load_string(yaml, "test.yaml", options);
    } catch (const config_error& e) {
        return e;
    }
    throw std::logic_error("expected a config_error");
}

// No child is left behind, running or as a zombie (GoogleTest itself starts none).
void expect_no_children() {
    errno = 0;
    EXPECT_EQ(waitpid(-1, nullptr, WNOHANG), -1);
    EXPECT_EQ(errno, ECHILD);
}

// Found by tests/fuzz/config_fuzz.cpp: yaml-cpp 0.7 never returns on these bytes (it emits the same
// parser event forever while LoadAll grows the node tree), and the loader's pre-screen does not catch
// them. Also replayed by the fuzzer as tests/fuzz/corpus/config/yaml-cpp-hang-quoted-flow.yaml.
const std::string quoted_flow_hang = "\"'\"\"+{\",";

TEST(yaml_sandbox, known_yaml_cpp_hang_is_a_clear_error_within_the_deadline) {
    const auto t0 = steady::now();
    const auto e = load_error(quoted_flow_hang);
    const auto took = steady::now() - t0;
    EXPECT_LT(took, 2s) << "the default deadline is 2 s";
    EXPECT_EQ(e.file(), "test.yaml");
    EXPECT_EQ(e.line(), 1);
    EXPECT_GT(e.column(), 0);
    EXPECT_CONTAINS(e.problem(), "the YAML parser (yaml-cpp 0.7) got into an endless loop here");
    EXPECT_CONTAINS(e.fix(), "unclosed quote");
    EXPECT_CONTAINS(std::string(e.what()), "test.yaml:1:");
    expect_no_children();
}

TEST(yaml_sandbox, known_yaml_cpp_hang_from_a_file_names_the_file) {
    const std::string root = source_root();
    if (root.empty()) {
        GTEST_SKIP() << "ESPRESSO_SOURCE_ROOT not set (run through meson test)";
    }
    const std::string path = root + "/tests/fuzz/corpus/config/yaml-cpp-hang-quoted-flow.yaml";
    ASSERT_EQ(read_file(path), quoted_flow_hang);
    try {
        load_file(path);
        FAIL() << "expected config_error";
    } catch (const config_error& e) {
        EXPECT_EQ(std::string(e.what()).rfind(path + ":1:", 0), 0u) << e.what();
        EXPECT_CONTAINS(e.problem(), "endless loop");
    }
}

// Every hang the fuzzer found, given to the sandbox alone (the loader's pre-screen refuses most of
// them earlier with a more precise message): each ends within the deadline.
TEST(yaml_sandbox, every_hang_found_so_far_is_stopped_without_the_pre_screen) {
    std::vector<std::string> hangs{quoted_flow_hang, " !x\n, !", ",\x1b ", ", ", "\"\","};
    const std::string root = source_root();
    if (!root.empty()) {
        for (const auto& entry : std::filesystem::directory_iterator(root + "/tests/fuzz/corpus/config")) {
            if (entry.path().filename().string().starts_with("yaml-cpp-hang-")) {
                hangs.push_back(read_file(entry.path().string()));
            }
        }
    }
    ASSERT_GE(hangs.size(), root.empty() ? 5u : 12u);
    for (const auto& text : hangs) {
        const auto t0 = steady::now();
        try {
            detail::check_yaml_parse_finishes(text, "test.yaml", {});
            // Finishing is fine too (then the parent's own parse finishes): only hanging is not.
        } catch (const config_error& e) {
            EXPECT_CONTAINS(e.problem(), "the YAML parser");
        }
        EXPECT_LT(steady::now() - t0, 3s) << text;
    }
    expect_no_children();
}

// The loop detector allows 8 node events per byte; the densest YAML yaml-cpp accepts has 1.5.
TEST(yaml_sandbox, dense_flow_yaml_is_not_mistaken_for_a_loop) {
    const auto repeat = [](const std::string& part, int n) {
        std::string out;
        for (int i = 0; i < n; ++i) {
            out += part;
        }
        return out;
    };
    for (const std::string& text : {"[" + repeat(":,", 5000) + "]", "[" + repeat(",", 5000) + "]",
                                    "{" + repeat(":,", 5000) + "}", repeat("---\n", 2000), repeat("-\n", 5000)}) {
        EXPECT_NO_THROW(detail::check_yaml_parse_finishes(text, "test.yaml", {})) << text.substr(0, 10);
    }
}

// Text that takes yaml-cpp far longer than the deadlines below: `items` SAs of 11 bytes each.
std::string big_yaml(int items) {
    std::string text = "security-associations:\n";
    for (int i = 0; i < items; ++i) {
        text += "  - spi: 1\n";
    }
    return text;
}

TEST(yaml_sandbox, a_parse_over_the_deadline_is_stopped_at_the_deadline) {
    const std::string text = big_yaml(200'000); // 2.2 MB: several seconds of yaml-cpp
    load_options options;
    options.parse_deadline = 20ms; // 100 ms for 2.2 MB (four more whole 512 KiB)
    const auto t0 = steady::now();
    const auto e = load_error(text, options);
    const auto took = steady::now() - t0;
    EXPECT_LT(took, 2s); // yaml-cpp needs several seconds for this text; 2 s leaves room for a busy machine
    EXPECT_CONTAINS(e.problem(), "the YAML parser did not finish within 100 ms");
    EXPECT_CONTAINS(e.fix(), "brackets");
    if (e.line() > 0) { // where the parser was when it was stopped
        EXPECT_CONTAINS(e.problem(), "at or just after this point");
    } else {
        EXPECT_CONTAINS(e.problem(), "near the start of the file");
    }
    expect_no_children();
}

TEST(yaml_sandbox, a_parse_over_the_memory_limit_is_an_error) {
    load_options options;
    options.parse_memory_limit = size_t{1} << 20; // 5 MiB for 2.2 MB; yaml-cpp needs about 300 MB
    options.parse_deadline = 60s;
    const auto e = load_error(big_yaml(200'000), options);
#if defined(__SANITIZE_ADDRESS__)
    // AddressSanitizer ends the child itself when an allocation fails, printing a report.
    EXPECT_CONTAINS(e.problem(), "the YAML parser");
#else
    EXPECT_CONTAINS(e.problem(), "the YAML parser needed more than 5 MiB of memory");
#endif
    expect_no_children();
}

TEST(yaml_sandbox, a_big_file_within_its_limits_loads) {
    load_options options;
    options.parse_deadline = 60s; // not a timing test: sanitizer builds on a busy machine are slow
    // 50,000 SAs (550 KB) get through the sandbox and are then refused by the schema (spi 1 is reserved).
    const auto e = load_error(big_yaml(50'000), options);
    EXPECT_EQ(e.field(), "security-associations[0].spi");
}

// Everything loads exactly as without the sandbox: the examples, and the errors of broken files.
std::string fingerprint(const gateway_config& c) {
    std::ostringstream out;
    out << c.file << '|' << c.dataplane.workers << '|' << c.dataplane.control_socket << '|';
    for (const auto& sa : c.security_associations) {
        out << sa.origin << ':' << sa.spi << ':' << to_string(sa.source) << ':' << to_string(sa.destination) << ':'
            << static_cast<int>(sa.cipher) << ':' << static_cast<int>(sa.cipher_key_length) << ':'
            << static_cast<int>(sa.cipher_key[0]) << ':' << static_cast<int>(sa.integ_key_length) << ':'
            << sa.replay_window << ';';
    }
    for (const auto& i : c.interfaces) {
        out << i.origin << ':' << i.name << ':' << i.device << ':' << to_string(i.address) << ':' << i.mtu << ';';
    }
    for (const auto& r : c.routes) {
        out << r.origin << ':' << to_string(r.destination) << ':' << to_string(r.via) << ';';
    }
    for (const auto& p : c.policies) {
        out << p.origin << ':' << to_string(p.local) << ':' << to_string(p.remote) << ':' << p.spi << ';';
    }
    for (const auto& p : c.ike.peers) {
        out << p.name << ':' << to_string(p.local_address) << ':' << p.proposals.size() << ':' << p.tunnels.size()
            << ';';
    }
    return out.str();
}

std::string outcome(const std::string& text, const std::string& name, bool sandbox) {
    load_options options;
    options.sandbox = sandbox;
    try {
        return "loaded " + fingerprint(load_string(text, name, options));
    } catch (const config_error& e) {
        return std::string("error ") + e.what();
    }
}

TEST(yaml_sandbox, examples_load_exactly_as_without_the_sandbox) {
    const std::string root = source_root();
    if (root.empty()) {
        GTEST_SKIP() << "ESPRESSO_SOURCE_ROOT not set (run through meson test)";
    }
    int loaded = 0;
    for (const auto& entry : std::filesystem::directory_iterator(root + "/config/examples")) {
        const std::string path = entry.path().string();
        const std::string text = read_file(path);
        const std::string with = outcome(text, path, true);
        EXPECT_EQ(with, outcome(text, path, false)) << path;
        loaded += with.starts_with("loaded ") ? 1 : 0;
    }
    EXPECT_GE(loaded, 1);
    expect_no_children();
}

TEST(yaml_sandbox, syntax_errors_keep_their_line_and_column) {
    const std::vector<std::string> broken{
        "security-associations:\n  - spi: 0x1001\n    direction: outbound\n   protocol: esp\n",
        "security-associations: [\n  { spi: 1 \n",
        "security-associations: b: c\n",
        "security-associations:\n  - spi: \"0x1001\n",
        "interfaces:\n  - name: a\n    device: 'x\n  - }\n",
    };
    for (const auto& text : broken) {
        EXPECT_EQ(outcome(text, "test.yaml", true), outcome(text, "test.yaml", false)) << text;
    }
    const auto e = load_error("security-associations: b: c\n");
    EXPECT_EQ(e.line(), 1);
    EXPECT_EQ(e.column(), 25); // the second colon, as yaml-cpp reports it
    EXPECT_CONTAINS(e.problem(), "YAML syntax error");
    EXPECT_EQ(std::string(e.what()).rfind("test.yaml:1:25: YAML syntax error:", 0), 0u) << e.what();
}

TEST(yaml_sandbox, trusted_text_skips_the_child) {
    load_options options;
    options.sandbox = false;
    // Nothing observable but the result; the sandbox itself must accept the options and do nothing.
    EXPECT_NO_THROW(detail::check_yaml_parse_finishes(quoted_flow_hang, "test.yaml", options));
    EXPECT_EQ(load_string("security-associations: []\n", "t.yaml", options).security_associations.size(), 0u);
}

} // namespace
} // namespace espresso::config
