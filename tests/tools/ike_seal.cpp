// ike-seal: seals an inner payload chain into an IKE_AUTH-like message with sk_cipher and prints the
// UDP payload as hex (tests/component/test_ike_sk_tshark.py feeds it to tshark). The IKE header and
// the SK payload's generic header are built here by hand, so the test does not depend on the wire
// library.
//
// Usage: ike-seal --encr aes-cbc|aes-gcm-8|aes-gcm-12|aes-gcm-16 --key-bits 128|192|256
//                 --integ none|sha1|sha256|sha384|sha512 --sk-e HEX [--sk-a HEX]
//                 --spi-i HEX --spi-r HEX --first-payload N --payloads HEX
//                 [--message-id N] [--response]
// Keys are test keys given on the command line; never use this tool with real ones.
#include "espresso/cp/ike_crypto.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>

using namespace espresso::cp;

namespace {

std::optional<bytes> parse_hex(const std::string& s)
{
    if (s.size() % 2 != 0) {
        return std::nullopt;
    }
    bytes out;
    for (size_t i = 0; i < s.size(); i += 2) {
        char* end = nullptr;
        const std::string pair = s.substr(i, 2);
        const unsigned long v = std::strtoul(pair.c_str(), &end, 16);
        if (end != pair.c_str() + 2) {
            return std::nullopt;
        }
        out.push_back(static_cast<uint8_t>(v));
    }
    return out;
}

void put_be(bytes& out, uint64_t v, int size)
{
    for (int i = size - 1; i >= 0; --i) {
        out.push_back(static_cast<uint8_t>(v >> (8 * i)));
    }
}

[[noreturn]] void usage(const char* why)
{
    std::fprintf(stderr, "ike-seal: %s\n", why);
    std::exit(2);
}

} // namespace

int main(int argc, char** argv)
{
    std::map<std::string, std::string> opt;
    bool response = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--response") {
            response = true;
        } else if (a.rfind("--", 0) == 0 && i + 1 < argc) {
            opt[a.substr(2)] = argv[++i];
        } else {
            usage("bad argument");
        }
    }
    for (const char* required :
         {"encr", "key-bits", "integ", "sk-e", "spi-i", "spi-r", "first-payload", "payloads"}) {
        if (opt.count(required) == 0) {
            usage((std::string("missing --") + required).c_str());
        }
    }
    const std::map<std::string, encr_id> encrs = {{"aes-cbc", encr_id::aes_cbc},
                                                  {"aes-gcm-8", encr_id::aes_gcm_8},
                                                  {"aes-gcm-12", encr_id::aes_gcm_12},
                                                  {"aes-gcm-16", encr_id::aes_gcm_16}};
    const std::map<std::string, integ_id> integs = {{"none", integ_id::none},
                                                    {"sha1", integ_id::hmac_sha1_96},
                                                    {"sha256", integ_id::hmac_sha2_256_128},
                                                    {"sha384", integ_id::hmac_sha2_384_192},
                                                    {"sha512", integ_id::hmac_sha2_512_256}};
    if (encrs.count(opt["encr"]) == 0 || integs.count(opt["integ"]) == 0) {
        usage("unknown --encr or --integ");
    }
    const auto sk_e = parse_hex(opt["sk-e"]);
    const auto sk_a = parse_hex(opt.count("sk-a") != 0 ? opt["sk-a"] : "");
    const auto spi_i = parse_hex(opt["spi-i"]);
    const auto spi_r = parse_hex(opt["spi-r"]);
    const auto payloads = parse_hex(opt["payloads"]);
    if (!sk_e || !sk_a || !spi_i || !spi_r || !payloads || spi_i->size() != 8 || spi_r->size() != 8) {
        usage("bad hex (SPIs are 8 bytes)");
    }
    const auto cipher =
        sk_cipher::create(encrs.at(opt["encr"]), static_cast<uint16_t>(std::stoi(opt["key-bits"])),
                          integs.at(opt["integ"]), *sk_e, *sk_a);
    if (!cipher) {
        usage("transform or key length refused by sk_cipher::create");
    }
    const size_t sealed_size = cipher->sealed_size(payloads->size());
    constexpr size_t header_size = 28;   // RFC 7296 §3.1
    constexpr size_t sk_header_size = 4; // §3.2 generic payload header
    const size_t total = header_size + sk_header_size + sealed_size;

    // RFC 7296 §3.1 IKE header:
    //  IKE SA Initiator's SPI (8) | IKE SA Responder's SPI (8) | Next Payload | MjVer|MnVer |
    //  Exchange Type | Flags | Message ID (4) | Length (4)
    bytes msg(spi_i->begin(), spi_i->end());
    msg.insert(msg.end(), spi_r->begin(), spi_r->end());
    msg.push_back(46);                     // Next Payload: Encrypted and Authenticated (SK)
    msg.push_back(0x20);                   // version 2.0
    msg.push_back(35);                     // IKE_AUTH
    msg.push_back(response ? 0x20 : 0x08); // Response, or Initiator
    put_be(msg, opt.count("message-id") != 0 ? std::stoul(opt["message-id"]) : 1, 4);
    put_be(msg, total, 4);
    // §3.14 SK payload: generic header (Next Payload = first inner payload), then IV | ... | ICV.
    msg.push_back(static_cast<uint8_t>(std::stoi(opt["first-payload"])));
    msg.push_back(0);
    put_be(msg, sk_header_size + sealed_size, 2);
    const size_t aad_size = msg.size();
    msg.resize(total);
    if (!cipher->seal(std::span<const uint8_t>(msg.data(), aad_size), *payloads,
                      std::span<uint8_t>(msg.data() + aad_size, sealed_size), system_rng())) {
        usage("seal failed");
    }
    for (uint8_t b : msg) {
        std::printf("%02x", b);
    }
    std::printf("\n");
    return 0;
}
