// AES-CBC ESP known answers: RFC 3602 §4 ("The AES-CBC Cipher Algorithm and Its Use with IPsec"),
// test cases 5-8: complete IPv4 ESP packets, AES-128-CBC, no integrity (cases 5, 6 transport mode,
// 7, 8 tunnel mode).
//
// Transcription: `outer` is the RFC's post-encryption IP header, `esp` its SPI/Seq #, IV and
// encrypted data, `expected` what inbound processing must produce: in transport mode the RFC's
// original packet (its IP header followed by the data), in tunnel mode the original (inner) packet.
// The ESP bytes and plaintexts were taken from a copy of the RFC quoted in a public test suite
// (ruhr-uni-bochum ipsec state machine extractor, ESPMessageTest) and the case 5 and 7 texts in two
// more; each case was checked when this file was written: `openssl enc -d -aes-128-cbc -nopad` with
// the RFC's key and IV turns the encrypted data into exactly the expected payload followed by the
// RFC's padding (1, 2, 3, ...), pad length and next header (1 for transport, 4 for tunnel). The IP
// headers of cases 6 and 8 could not be compared with a copy of the RFC; they are consistent in
// every checkable field (lengths, protocol, header checksums, addresses of cases 5 and 7) and only
// frame the packet: the bytes that matter cryptographically are all verified.
#pragma once

#include <cstdint>

namespace espresso::test::vectors {

struct cbc_esp_vector {
    int test_case; // RFC 3602 §4 case number
    bool tunnel;
    const char* key; // hex, AES-128
    uint32_t spi;
    uint32_t seq;
    const char* outer;    // hex: IPv4 header of the ESP packet
    const char* esp;      // hex: SPI || seq || IV || ciphertext
    const char* expected; // hex: packet after inbound processing
};

inline constexpr cbc_esp_vector cbc_esp_vectors[] = {
    {5, false, "90d382b410eeba7ad938c46cec1a82bf", 0x4321, 1,
     "4500007c08f200004032f9a5c0a87b03c0a87b64",
     "0000432100000001e96e8c08ab465763fd098d45dd3ff893f663c25d325c18c6"
     "a9453e194e120849a4870b66cc6b9965330013b4898dc856a4699e523a55db08"
     "0b59ec3a8e4b7e52775b07d1db34ed9c538ab50c551b874aa269add047ad2d59"
     "13ac19b7cfbad4a6",
     "4500005408f200004001f9fec0a87b03c0a87b6408000ebda70a00008e9c083d"
     "b95b070008090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223"
     "2425262728292a2b2c2d2e2f3031323334353637"},
    {6, false, "90d382b410eeba7ad938c46cec1a82bf", 0x4321, 8,
     "4500004c08fe00004032f9c9c0a87b03c0a87b64",
     "000043210000000869d08df7d203329db093fc4924e5bd80f51995881ec4e0c4"
     "488987ce742e8109689bb379d2d750c0d915dca346a89f75",
     "4500003008fe00004001fa16c0a87b03c0a87b640800b5e8a80a0500a69c083d"
     "0b660e00777777777777777777777777"},
    {7, true, "0123456789abcdef0123456789abcdef", 0x8765, 2,
     "4500008c090500004032f91ec0a87b03c0a87bc8",
     "0000876500000002f4e765244f6407adf13dc1380f673f37773b5241a4c44922"
     "5e4f3ce5ed611b0c237ca96cf74a93013c1b0ea1a0cf70f8e4ecaec78ac53aad"
     "7a0f022b859243c647752e94a859352b8a4d4d2decd136e5c177f132ad3fbfb2"
     "201ac9904c74ee0a109e0ca1e4dfe9d5a100b842f1c22f0d",
     "45000054090400004001f988c0a87b03c0a87bc808009f76a90a0100b49c083d"
     "02a2040008090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223"
     "2425262728292a2b2c2d2e2f3031323334353637"},
    {8, true, "0123456789abcdef0123456789abcdef", 0x8765, 5,
     "4500007c090d00004032f926c0a87b03c0a87bc8",
     "000087650000000585d47224b5f3dd5d2101d4ea8dffab2215b92683819596a8"
     "047232cc00f7048fe45318e11f8a0f62ede3c3fc61203bb50f980a08c9843fd3"
     "a1b06d5c07ff9639b7eb7dfb3512e5de435e7207ed971ef3d2726d9b5ef6affc"
     "6d17a0decbb13892",
     "45000044090c00004001f990c0a87b03c0a87bc80800d63caa0a0200c69c083d"
     "a3de0300ffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
     "ffffffff"},
};

} // namespace espresso::test::vectors
