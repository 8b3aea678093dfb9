#!/usr/bin/python3
"""Writes the seed corpora for tests/fuzz (inbound/ and config/ beside this file).

The seeds are committed; run this again only to change them. Inbound seeds follow the input format
described at the top of tests/fuzz/inbound_fuzz.cpp (byte 0 = mode | SA << 2) and use its keys.
"""
import hashlib
import hmac
import os
import struct
import sys

from scapy.all import IP, IPv6, UDP, Raw
from scapy.layers.ipsec import AH, ESP, SecurityAssociation

HERE = os.path.dirname(os.path.abspath(__file__))

GCM_KEY = bytes.fromhex("00112233445566778899aabbccddeeff01020304")  # key || salt, SPI 0x1001
CBC_KEY = bytes(range(0x10, 0x30))
SHA256_KEY = bytes(range(0x40, 0x60))
SHA1_KEY = bytes(range(0x60, 0x74))


def write(sub, name, data):
    d = os.path.join(HERE, sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def inbound():
    inner4 = IP(src="192.168.1.10", dst="192.168.2.10") / UDP(sport=40000, dport=40001) / Raw(b"x" * 24)
    inner6 = IPv6(src="2001:db8:1::10", dst="2001:db8:2::10") / UDP(sport=40000, dport=40001) / Raw(b"y" * 8)

    # Mode 0: raw packets, including really protected ones for the three SAs.
    gcm = SecurityAssociation(ESP, spi=0x1001, crypt_algo="AES-GCM", crypt_key=GCM_KEY, auth_algo="NULL",
                              tunnel_header=IP(src="198.51.100.1", dst="203.0.113.1"))
    write("inbound", "raw-esp-gcm-tunnel", b"\x00" + bytes(gcm.encrypt(inner4, seq_num=1)))
    cbc = SecurityAssociation(ESP, spi=0x2002, crypt_algo="AES-CBC", crypt_key=CBC_KEY,
                              auth_algo="SHA2-256-128", auth_key=SHA256_KEY, esn_en=True,
                              nat_t_header=UDP(sport=4500, dport=4500))
    transport = IP(src="198.51.100.2", dst="203.0.113.1") / UDP(sport=40000, dport=40001) / Raw(b"z" * 16)
    enc = cbc.encrypt(transport, seq_num=1)
    enc[UDP].len = len(enc) - 20  # scapy 2.5 leaves the NAT-T UDP length at 8 (ORACLES.md)
    enc = bytes(IP(bytes(enc)))
    # scapy 2.5 leaves the ESN high bits out of the HMAC ICV (it passes them only to AEAD ciphers), so the
    # ICV is recomputed here as RFC 4303 §3.3.2.1 says: HMAC(SPI .. ciphertext || seq_hi), seq_hi = 0.
    esp = enc[28:-16]
    enc = enc[:-16] + hmac.new(SHA256_KEY, esp + b"\x00" * 4, hashlib.sha256).digest()[:16]
    write("inbound", "raw-esp-cbc-sha256-esn-udp", b"\x00" + enc)
    ah = SecurityAssociation(AH, spi=0x3003, auth_algo="HMAC-SHA1-96", auth_key=SHA1_KEY)
    ah_pkt = ah.encrypt(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=40000, dport=40001) / Raw(b"a" * 12),
                        seq_num=1)
    write("inbound", "raw-ah-sha1-v6", b"\x00" + bytes(ah_pkt))
    write("inbound", "raw-esp-v6", b"\x00" + bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", nh=50)
                                                  / Raw(struct.pack("!II", 0x1001, 1) + b"\x00" * 40)))
    write("inbound", "raw-nat-keepalive", b"\x00" + bytes(IP(src="198.51.100.2", dst="203.0.113.1")
                                                         / UDP(sport=4500, dport=4500) / Raw(b"\xff")))
    write("inbound", "raw-ike-non-esp-marker", b"\x00" + bytes(IP(src="198.51.100.2", dst="203.0.113.1")
                                                              / UDP(sport=4500, dport=4500) / Raw(b"\x00" * 4 + b"i" * 28)))
    write("inbound", "raw-truncated-ipv4", b"\x00" + bytes(gcm.encrypt(inner4, seq_num=2))[:23])

    # Mode 1: outer headers and SPI prepended by the harness.
    write("inbound", "prefix-gcm", b"\x01" + struct.pack("!I", 7) + b"\x00" * 8 + b"c" * 48)
    write("inbound", "prefix-cbc", b"\x05" + struct.pack("!I", 7) + b"\x00" * 16 + b"c" * 48)
    write("inbound", "prefix-ah", b"\x09" + bytes([17, 4, 0, 0]) + struct.pack("!I", 7) + b"\x00" * 12 + b"d" * 20)

    # Mode 2: the harness encrypts this plaintext (payload, padding, pad length, next header).
    write("inbound", "sealed-gcm-plain", b"\x02" + struct.pack("!I", 1) + bytes(inner4) + b"\x01\x02\x02\x04")
    write("inbound", "sealed-cbc-plain", b"\x06" + struct.pack("!I", 1) + bytes(UDP(sport=1, dport=2) / Raw(b"q" * 4))
          + bytes([1, 2]) + b"\x02\x11")
    # Mode 3: the harness also builds the trailer.
    write("inbound", "sealed-gcm-inner4", b"\x03" + struct.pack("!I", 1) + bytes(inner4))
    write("inbound", "sealed-gcm-inner6", b"\x03" + struct.pack("!I", 5) + bytes(inner6))
    write("inbound", "sealed-cbc-transport", b"\x07" + struct.pack("!I", 1) + bytes(UDP(sport=1, dport=2) / Raw(b"w" * 9)))


CONFIGS = {
    "gcm-tunnel.yaml": """security-associations:
  - spi: 0x00001001
    direction: outbound
    protocol: esp
    mode: tunnel
    source: 198.51.100.1
    destination: 203.0.113.1
    encryption: aes128gcm16
    key: 0x00112233445566778899aabbccddeeff01020304
    integrity: none
    esn: false
    replay-window: 128
    selectors:
      local: 192.168.1.0/24
      remote: 192.168.2.0/24
    lifetime: { bytes: 0, packets: 0 }
""",
    "cbc-esn-udp.yaml": """security-associations:
  - spi: 0x2002
    direction: inbound
    protocol: esp
    mode: transport
    source: 198.51.100.2
    destination: 203.0.113.1
    encryption: aes256
    key: 0x101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f
    integrity: sha256
    integrity-key: 0x404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f
    esn: true
    replay-window: 1024
    udp-encapsulation: { source-port: 4500, destination-port: 4500 }
    selectors: { local: 203.0.113.1, remote: 198.51.100.2 }
    lifetime: { bytes: 1000000000, packets: 0, soft-bytes: 900000000 }
    df: set
    dscp: copy
    ttl: 32
    tfc-pad: 0
""",
    "ah-v6.yaml": """security-associations:
  - spi: 12291
    direction: inbound
    protocol: ah
    mode: transport
    source: 2001:db8::1
    destination: 2001:db8::2
    encryption: null
    integrity: sha1
    integrity-key: 0x606162636465666768696a6b6c6d6e6f70717273
    selectors:
      local: 2001:db8::2/128
      remote: 2001:db8::1/128
""",
    "refused-3des.yaml": """security-associations:
  - spi: 0x1
    direction: outbound
    protocol: esp
    mode: tunnel
    source: 192.0.2.1
    destination: 192.0.2.2
    encryption: 3des
    key: 0x0011
    integrity: md5
""",
    "unknown-key.yaml": "security-associations:\n  - spi: 1\n    colour: blue\n",
    "bad-types.yaml": "security-associations: {spi: [1, 2], direction: 7}\n",
    "empty.yaml": "",
    "anchors.yaml": "a: &x {spi: 1}\nsecurity-associations: [*x, *x]\n",
    # Found by fuzz-config: yaml-cpp 0.7's YAML::LoadAll never returns on this (allocates nodes forever).
    "yaml-cpp-hang-tag-flow.yaml": " !x\n, !",
    # Found by fuzz-config, not refused by the pre-screen: stopped by the YAML sandbox (endless loop).
    "yaml-cpp-hang-quoted-flow.yaml": "\"'\"\"+{\",",
}


def inbound_fragments():
    """Sequences of fragments (byte 0 bit 4: 2-byte length + packet records) and ESP behind IPv6
    extension headers, for the reassembler and the extension header walk."""
    from scapy.all import fragment, fragment6, IPv6ExtHdrFragment, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
    from scapy.layers.inet6 import PadN

    def records(pkts):
        return b"".join(struct.pack("!H", len(bytes(p))) + bytes(p) for p in pkts)

    inner4 = IP(src="192.168.1.10", dst="192.168.2.10") / UDP(sport=40000, dport=40001) / Raw(b"x" * 200)
    gcm = SecurityAssociation(ESP, spi=0x1001, crypt_algo="AES-GCM", crypt_key=GCM_KEY, auth_algo="NULL",
                              tunnel_header=IP(src="198.51.100.1", dst="203.0.113.1", id=77))
    frags = fragment(IP(bytes(gcm.encrypt(inner4, seq_num=1))), fragsize=96)
    write("inbound", "seq-esp-gcm-fragments-reversed", b"\x10" + records(reversed(frags)))
    write("inbound", "seq-esp-gcm-fragments-missing", b"\x10" + records(frags[:1] + frags[2:]))
    write("inbound", "seq-esp-gcm-fragments-duplicate", b"\x10" + records([frags[0], frags[0]] + frags[1:]))
    esp6 = bytes(gcm.encrypt(inner4, seq_num=2))[20:]
    whole6 = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(nh=50, id=9) / Raw(esp6)
    write("inbound", "seq-esp-v6-fragments", b"\x10" + records(reversed(fragment6(whole6, 160))))
    write("inbound", "raw-esp-v6-destopt", b"\x00" + bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt(nh=50, options=[PadN(optdata=b"\x00" * 4)])
        / Raw(esp6)))
    write("inbound", "raw-esp-v6-hbh-destopt-atomic", b"\x00" + bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop(nh=60) / IPv6ExtHdrDestOpt(nh=44)
        / IPv6ExtHdrFragment(nh=50, offset=0, m=0, id=3) / Raw(esp6)))


def config():
    for name, text in CONFIGS.items():
        write("config", name, text.encode())


if __name__ == "__main__":
    inbound()
    inbound_fragments()
    config()
    sys.exit(0)
