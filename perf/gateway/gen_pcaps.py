#!/usr/bin/python3
"""Writes the benchmark's pcaps for perf/bench-gateway (run with /usr/bin/python3; needs python3-scapy).

Addressing (the same in espresso's YAML and ipsec-secgw's cfg, see perf/gateway/):
  inside network 192.168.1.0/24 (hosts .10..), gateway inside 192.168.1.1
  outside: gateway 198.51.100.1, peer gateway 203.0.113.1, remote network 192.168.2.0/24
  SA out: SPI 4097 (0x1001) 198.51.100.1 -> 203.0.113.1
  SA in:  SPI 8193 (0x2001) 203.0.113.1 -> 198.51.100.1 (the pcaps here are what the peer would send)

Sizes are inner IPv4 packet sizes (IP header included), as in perf/esp-bench: 64, 512, 1420 and IMIX
(64/576/1500 in the ratio 7:4:1, interleaved in esp-bench's order). Each pcap holds 240 packets
(20 IMIX periods) of UDP flows with distinct source ports.

  plain-<size>.pcap            cleartext 192.168.1.x -> 192.168.2.x (outbound traffic)
  esp-<alg>-<size>.pcap        ESP tunnel packets for the inbound SA, sequence numbers 1..240
  scale-<n>.pcap               cleartext to 10.0.0.0/8 hosts spread over n per-host SAs (SA scale;
                               round robin when n < 240, see spread())
  scale-in-<n>.pcap            ESP (AES-128-GCM, 64 B inner) from n per-host inbound SAs, SPI SCALE_SPI + i,
                               inner source the SA's 10.x.y.z host, spread the same way
  scale-imix-<n>.pcap, scale-in-imix-<n>.pcap   the same with IMIX inner packets (n in SCALE_IMIX)
"""
import os
import sys

from scapy.all import IP, UDP, Ether, Raw, wrpcap
from scapy.layers.ipsec import ESP, SecurityAssociation

KEYS = {
    # key || 4-byte salt (RFC 4106), as espresso's YAML and ipsec-secgw's aead_key expect
    "gcm_out": "00112233445566778899aabbccddeeff01020304",
    "gcm_in": "ffeeddccbbaa99887766554433221100a1a2a3a4",
    "cbc_out": "000102030405060708090a0b0c0d0e0f",
    "cbc_out_auth": "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f",
    "cbc_in": "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
    "cbc_in_auth": "e0e1e2e3e4e5e6e7e8e9eaebecedeeefd0d1d2d3d4d5d6d7d8d9dadbdcdddedf",
}
SPI_OUT = 0x1001
SPI_IN = 0x2001
COUNT = 240
IMIX = [64, 576, 64, 64, 576, 64, 1500, 64, 576, 64, 64, 576]
SIZES = {"64": None, "512": None, "1420": None, "imix": None}
SCALE = (1, 80, 1000, 2000, 100000, 1000000)  # SA-scale pcaps (outbound SAs / policies), 64 B inner
SCALE_IMIX = (1, 100000)  # the same with IMIX inner packets (scale-imix-<n>, scale-in-imix-<n>)
SCALE_SPI = 0x10000  # SPI of scale SA i: SCALE_SPI + i (both directions)
# The gateway's ports (espresso.yaml.in): cleartext arrives on the inside, ESP on the outside.
# espresso-dp drops unicast frames for another MAC (other_mac); ipsec-secgw does not look.
GW_MAC = "02:00:00:00:01:01"
GW_OUT_MAC = "02:00:00:00:02:01"
PEER_MAC = "02:00:00:00:02:fe"


def ip_size(size, i):
    return IMIX[i % len(IMIX)] if size == "imix" else int(size)


def udp_packet(src, dst, sport, total):
    pkt = IP(src=src, dst=dst, ttl=64, flags="DF") / UDP(sport=sport, dport=5678)
    pad = total - 28
    return pkt / Raw(bytes((sport + k) & 0xFF for k in range(pad)))


def sa_for(alg):
    if alg == "gcm":
        return SecurityAssociation(ESP, spi=SPI_IN, crypt_algo="AES-GCM",
                                   crypt_key=bytes.fromhex(KEYS["gcm_in"]), auth_algo="NULL", auth_key=None,
                                   tunnel_header=IP(src="203.0.113.1", dst="198.51.100.1"))
    return SecurityAssociation(ESP, spi=SPI_IN, crypt_algo="AES-CBC", crypt_key=bytes.fromhex(KEYS["cbc_in"]),
                               auth_algo="SHA2-256-128", auth_key=bytes.fromhex(KEYS["cbc_in_auth"]),
                               tunnel_header=IP(src="203.0.113.1", dst="198.51.100.1"))


def spread(i, n):
    """The scale SA of packet i: round robin over fewer SAs than packets, else spread evenly over the
    whole table (each packet its own SA); n=1: all on SA 0. The pcap is replayed in a loop and an RX
    poll takes 64 packets, so with 80 SAs (a divisor of COUNT) any 64 packets in a row have different
    SAs, as at 100k, with the SAs' lines all in L2."""
    return i % n if n < COUNT else (i * n) // COUNT


def main(out):
    os.makedirs(out, exist_ok=True)
    for size in SIZES:
        plain = []
        for i in range(COUNT):
            p = udp_packet("192.168.1.%d" % (10 + i % 100), "192.168.2.%d" % (10 + i % 100), 1024 + i,
                           ip_size(size, i))
            plain.append(Ether(src=PEER_MAC, dst=GW_MAC) / p)
        wrpcap(os.path.join(out, "plain-%s.pcap" % size), plain)
        for alg in ("gcm", "cbc"):
            sa = sa_for(alg)
            esp = []
            for i in range(COUNT):
                inner = udp_packet("192.168.2.%d" % (10 + i % 100), "192.168.1.%d" % (10 + i % 100), 1024 + i,
                                   ip_size(size, i))
                sa.seq_num = i + 1
                e = sa.encrypt(IP(bytes(inner)))
                esp.append(Ether(src=PEER_MAC, dst=GW_OUT_MAC) / e)
            # Self-check: the first packet decrypts back (scapy checks the ICV).
            back = sa_for(alg).decrypt(IP(bytes(esp[0][IP])))
            assert bytes(back[UDP].payload) == bytes(
                udp_packet("192.168.2.10", "192.168.1.10", 1024, ip_size(size, 0))[UDP].payload)
            wrpcap(os.path.join(out, "esp-%s-%s.pcap" % (alg, size)), esp)
    for n in SCALE:
        scale_pcaps(out, n, "64")
    for n in SCALE_IMIX:
        scale_pcaps(out, n, "imix")


def scale_host(i):
    """The 10.x.y.z host of scale SA i (its /32 remote selector in perf/bench-gateway's SAs)."""
    return "10.%d.%d.%d" % ((i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF)


def scale_pcap(n, size="64", inbound=False):
    """File name of the scale pcap of n SAs: scale-[in-][imix-]<n>.pcap (size "64" or "imix")."""
    return "scale-%s%s%d.pcap" % ("in-" if inbound else "", "" if size == "64" else size + "-", n)


def scale_pcaps(out, n, size):
    """scale_pcap(n, size) and scale_pcap(n, size, inbound=True): inner packets of `size` (64 or imix)."""
    pkts = []
    for i in range(COUNT):
        dst = scale_host(spread(i, n))
        pkts.append(Ether(src=PEER_MAC, dst=GW_MAC) / udp_packet("192.168.1.10", dst, 1024 + i, ip_size(size, i)))
    wrpcap(os.path.join(out, scale_pcap(n, size)), pkts)
    esp = []
    for i in range(COUNT):
        sa_index = spread(i, n)
        src = scale_host(sa_index)
        sa = SecurityAssociation(ESP, spi=SCALE_SPI + sa_index, crypt_algo="AES-GCM",
                                 crypt_key=bytes.fromhex(KEYS["gcm_in"]), auth_algo="NULL", auth_key=None,
                                 tunnel_header=IP(src="203.0.113.1", dst="198.51.100.1"))
        sa.seq_num = 1  # the inbound SAs have replay-window 0: the pcap repeats
        inner = udp_packet(src, "192.168.1.%d" % (10 + i % 100), 1024 + i, ip_size(size, i))
        esp.append(Ether(src=PEER_MAC, dst=GW_OUT_MAC) / sa.encrypt(IP(bytes(inner))))
    wrpcap(os.path.join(out, scale_pcap(n, size, inbound=True)), esp)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "perf/out/gateway/pcap")
