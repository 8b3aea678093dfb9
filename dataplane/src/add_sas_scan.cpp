// The fast path of request_reader (sa_json.h): a hand-written reader for the one request that must be
// fast, add-sas.
//
// Why by hand: nlohmann's lexer copies every character of every token through std::string::push_back
// and was ~30 % of the main lcore's CPU per installed SA (perf/RESULTS.md, session 4); neither simdjson
// nor RapidJSON is packaged here. This reader handles only a strict subset of JSON, and declines
// (returns false) on anything outside it, so that the nlohmann path reads the request instead and the
// result, or the error, is exactly what it was without this file. Accepted:
//   - the root object with the keys version, id, op and args, each at most once, op = "add-sas"
//     before args, args = {"sas": [ objects ]} and optionally "owner": a string (each key once, in
//     either order); version and id unsigned integers;
//   - inside the SA objects: strings of printable ASCII (0x20-0x7e) without escapes, unsigned integers
//     of at most 19 digits without a leading zero (they fit uint64_t, so their text is what nlohmann
//     would print for them), true, false, null, objects, arrays, nested at most max_depth deep;
//   - JSON whitespace between tokens, nothing after the root object.
// Everything else (escapes, other bytes, negative or fractional numbers, a byte-order mark, repeated or
// unknown root keys, another op, invalid JSON of any kind) is declined. A declined request costs the
// scan up to the point of refusal, and for a request other than add-sas that is the first few keys.
//
// The whole body is first copied into the reader's arena: the SA objects' strings (keys included)
// are views into that copy, which wipe() overwrites, as it overwrites the nlohmann path's copies.
// tests/fuzz/add_sas_fuzz.cpp checks, for arbitrary input, that whatever this reader accepts the
// nlohmann path accepts too, with the same DOM and the same SA trees.
#include <cstdint>
#include <string_view>

#include "sa_json.h"

namespace espresso::dp {

namespace {

constexpr int max_depth = 16;     // containers inside one SA object; deeper: declined (nlohmann reads it)
constexpr size_t max_digits = 19; // 10^19 - 1 < 2^64

using kind = config::plain_value::kind;

class scanner {
public:
    explicit scanner(std::string_view text) : p_(text.data()), end_(text.data() + text.size()) {}

    void skip_space() noexcept
    {
        // RFC 8259 §2: the four whitespace characters.
        while (p_ != end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) {
            ++p_;
        }
    }
    bool at_end() noexcept
    {
        skip_space();
        return p_ == end_;
    }
    // The next non-space character, without taking it; 0 at the end (0 is never valid here).
    char peek() noexcept
    {
        skip_space();
        return p_ == end_ ? '\0' : *p_;
    }
    bool take(char c) noexcept
    {
        if (peek() != c) {
            return false;
        }
        ++p_;
        return true;
    }

    // A string without escapes, all printable ASCII; `out` views the text between the quotes.
    bool string(std::string_view& out) noexcept
    {
        if (!take('"')) {
            return false;
        }
        const char* begin = p_;
        while (p_ != end_) {
            const auto c = static_cast<unsigned char>(*p_);
            if (c == '"') {
                out = std::string_view(begin, static_cast<size_t>(p_ - begin));
                ++p_;
                return true;
            }
            if (c < 0x20 || c > 0x7e || c == '\\') {
                return false; // control character (invalid JSON), escape or non-ASCII: nlohmann's job
            }
            ++p_;
        }
        return false; // unterminated
    }

    // An unsigned integer in canonical form (no leading zero, no sign, fraction or exponent).
    bool digits(std::string_view& out) noexcept
    {
        skip_space();
        const char* begin = p_;
        if (p_ != end_ && *p_ == '0') {
            ++p_;
        } else {
            while (p_ != end_ && *p_ >= '0' && *p_ <= '9') {
                ++p_;
            }
        }
        const auto n = static_cast<size_t>(p_ - begin);
        if (n == 0 || n > max_digits) {
            return false;
        }
        if (p_ != end_ && ((*p_ >= '0' && *p_ <= '9') || *p_ == '.' || *p_ == 'e' || *p_ == 'E')) {
            return false; // "01" (invalid), a fraction or an exponent
        }
        out = std::string_view(begin, n);
        return true;
    }

    bool number(uint64_t& value) noexcept
    {
        std::string_view text;
        if (!digits(text)) {
            return false;
        }
        value = 0;
        for (const char c : text) {
            value = value * 10 + static_cast<uint64_t>(c - '0'); // at most 19 digits: no overflow
        }
        return true;
    }

    bool literal(std::string_view word) noexcept
    {
        if (static_cast<size_t>(end_ - p_) < word.size() || std::string_view(p_, word.size()) != word) {
            return false;
        }
        p_ += word.size();
        return true;
    }

    // Any value inside an SA object. `out` receives it as the nlohmann path's capture would (sa_json.cpp,
    // request_reader::handler), or is null inside a list (whose contents are not kept).
    bool value(config::plain_value* out, int depth)
    {
        const char c = peek();
        std::string_view text;
        switch (c) {
        case '"':
            if (!string(text)) {
                return false;
            }
            return place(out, kind::scalar, text);
        case '{':
            return object(out, depth + 1);
        case '[':
            return list(out, depth + 1);
        case 't':
            return literal("true") && place(out, kind::scalar, "true");
        case 'f':
            return literal("false") && place(out, kind::scalar, "false");
        case 'n':
            return literal("null") && place(out, kind::null, {});
        default:
            return digits(text) && place(out, kind::scalar, text);
        }
    }

    bool object(config::plain_value* out, int depth)
    {
        if (depth > max_depth || !take('{')) {
            return false;
        }
        if (out != nullptr) {
            out->what = kind::mapping;
            out->text = {};
            out->items.clear();
        }
        if (take('}')) {
            return true;
        }
        for (;;) {
            std::string_view key;
            if (!string(key) || !take(':')) {
                return false;
            }
            config::plain_value* slot = nullptr;
            if (out != nullptr) {
                // Repeated keys are all kept, as in the nlohmann path: the loader names the repeat.
                out->items.push_back({key, {}});
                slot = &out->items.back().value;
            }
            if (!value(slot, depth)) {
                return false;
            }
            if (take('}')) {
                return true;
            }
            if (!take(',')) {
                return false;
            }
        }
    }

    bool list(config::plain_value* out, int depth)
    {
        if (depth > max_depth || !take('[')) {
            return false;
        }
        if (out != nullptr) {
            out->what = kind::sequence;
            out->text = {};
            out->items.clear();
        }
        if (take(']')) {
            return true;
        }
        for (;;) {
            if (!value(nullptr, depth)) {
                return false;
            }
            if (take(']')) {
                return true;
            }
            if (!take(',')) {
                return false;
            }
        }
    }

private:
    static bool place(config::plain_value* out, kind what, std::string_view text) noexcept
    {
        if (out != nullptr) {
            out->what = what;
            out->text = text;
            out->items.clear();
        }
        return true;
    }

    const char* p_;
    const char* end_;
};

} // namespace

bool request_reader::scan_add_sas(std::string_view body, nlohmann::json& request)
{
    scanner s(keep(body));
    if (!s.take('{')) {
        return false;
    }
    bool have_version = false;
    bool have_id = false;
    bool have_op = false;
    bool have_args = false;
    bool have_owner = false;
    std::string_view owner;
    uint64_t version = 0;
    uint64_t id = 0;
    if (s.peek() == '}') {
        return false;
    }
    for (;;) {
        std::string_view key;
        if (!s.string(key) || !s.take(':')) {
            return false;
        }
        if (key == "version") {
            if (have_version || !s.number(version)) {
                return false;
            }
            have_version = true;
        } else if (key == "id") {
            if (have_id || !s.number(id)) {
                return false;
            }
            have_id = true;
        } else if (key == "op") {
            std::string_view op;
            if (have_op || !s.string(op) || op != "add-sas") {
                return false;
            }
            have_op = true;
        } else if (key == "args") {
            // {"sas": [ {...}, ... ]} with an optional "owner": "..." before or after, nothing else.
            if (!have_op || have_args || !s.take('{')) {
                return false;
            }
            have_args = true;
            bool have_sas = false;
            for (;;) {
                std::string_view name;
                if (!s.string(name) || !s.take(':')) {
                    return false;
                }
                if (name == "owner") {
                    if (have_owner || !s.string(owner)) {
                        return false; // not a plain string: nlohmann's path names the error
                    }
                    have_owner = true;
                } else if (name == "sas") {
                    if (have_sas || !s.take('[')) {
                        return false;
                    }
                    have_sas = true;
                    captured_ = true;
                    count_ = 0;
                    if (!s.take(']')) {
                        for (;;) {
                            if (s.peek() != '{' || !s.object(&next_item(), 0)) {
                                return false; // an item that is not an object: nlohmann's path names it
                            }
                            if (s.take(']')) {
                                break;
                            }
                            if (!s.take(',')) {
                                return false;
                            }
                        }
                    }
                } else {
                    return false;
                }
                if (s.take('}')) {
                    break;
                }
                if (!s.take(',')) {
                    return false;
                }
            }
            if (!have_sas) {
                return false;
            }
        } else {
            return false;
        }
        if (s.take('}')) {
            break;
        }
        if (!s.take(',')) {
            return false;
        }
    }
    if (!have_args || !s.at_end()) {
        return false;
    }
    // The DOM the nlohmann path builds for the same text: args.sas stays an empty array.
    request = nlohmann::json::object();
    if (have_version) {
        request["version"] = version;
    }
    if (have_id) {
        request["id"] = id;
    }
    request["op"] = "add-sas";
    request["args"] = {{"sas", nlohmann::json::array()}};
    if (have_owner) {
        request["args"]["owner"] = std::string(owner); // checked by the request's handler, as on the other path
    }
    return true;
}

} // namespace espresso::dp
