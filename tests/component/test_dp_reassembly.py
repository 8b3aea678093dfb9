#!/usr/bin/python3
"""Component test: espresso-dp reassembles outer-fragmented ESP and ESP-in-UDP addressed to it (IPv4
and IPv6), decrypts what it reassembled, counts fragments that cannot be reassembled, takes ESP behind
IPv6 extension headers on the fast path, and hands reassembled non-ESP datagrams to the kernel.

The fragments are made by scapy (fragment(), fragment6(): nobody here wrote them) from ESP packets
scapy encrypted with the SAs' keys; they are fed out of order, with a fragment missing (timeout), and
overlapping (dropped whole, RFC 5722). The decrypted inner packets must come out on the inside port
byte for byte. Two workers, one RX queue (net_pcap has no RSS): every fragment arrives on worker 0,
which hands about half of the datagrams to worker 1 to reassemble (the reassembling worker is chosen
from source, destination and Identification), and the reassembled ESP is then steered to its SA's
owner worker (SPI % 2) like any ESP packet.

A UDP socket in the namespace (the kernel behind the TAP) must receive 3000-byte datagrams sent to
the gateway in fragments on UDP 4500 with the non-ESP marker (as IKE with certificates is), IPv4 and
IPv6: the workers reassemble them (they might have been ESP-in-UDP), find they are not, and the main
lcore splits them again for the TAP, whose MTU is 1500 (gateway.cpp to_tap, to_tap6).

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_reassembly.py
"""
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging  # noqa: E402
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import (Ether, IP, IPv6, UDP, Raw, wrpcap, rdpcap, raw, fragment, fragment6,  # noqa: E402
                       IPv6ExtHdrFragment, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.inet6 import PadN, HBHOptUnknown  # noqa: E402
from scapy.layers.ipsec import SecurityAssociation, ESP  # noqa: E402

import dp_process as dp  # noqa: E402
from oracle import Report  # noqa: E402

GW_OUT_MAC = "02:00:00:00:00:01"
GW_IN_MAC = "02:00:00:00:01:01"
ROUTER_MAC = "02:00:00:00:00:fe"
HOST_MAC = "02:00:00:00:01:0a"
GW4, GW6 = "198.51.100.1", "2001:db8:100::1"
PEER4, NATT4, PEER6 = "203.0.113.1", "203.0.113.4", "2001:db8:100::2"
KEY_V4 = bytes.fromhex("ffeeddccbbaa99887766554433221100a0b0c0d0")
KEY_NATT = bytes.fromhex("0102030405060708090a0b0c0d0e0f1011121314")
KEY_V6 = bytes.fromhex("a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4")
SPI_V4, SPI_NATT, SPI_V6 = 0x2001, 0x2004, 0x3002

CONFIG = """\
dataplane:
  workers: 2
  hugepages: false
  idle: poll
  control-socket: {dir}/dp.sock
  reassembly-timeout-ms: 500
interfaces:
  - {{ name: outside, device: "net_pcap0,rx_pcap={dir}/outside-in.pcap,tx_pcap={dir}/outside-out0.pcap,tx_pcap={dir}/outside-out1.pcap",
      address: [{gw4}/24, "{gw6}/64"], mac: "{out_mac}" }}
  - {{ name: inside, device: "net_pcap1,rx_pcap={dir}/inside-in.pcap,tx_pcap={dir}/inside-out0.pcap,tx_pcap={dir}/inside-out1.pcap",
      address: 192.168.1.1/24, mac: "{in_mac}" }}
routes:
  - {{ destination: 203.0.113.0/24, via: 198.51.100.254 }}
neighbors:
  - {{ address: 198.51.100.254, mac: "{router_mac}", interface: outside }}
  - {{ address: 192.168.1.10, mac: "{host_mac}", interface: inside }}
security-associations:
  - {{ spi: {spi_v4}, direction: inbound, protocol: esp, mode: tunnel, source: {peer4}, destination: {gw4},
      encryption: aes128gcm16, key: 0x{key_v4}, integrity: none, replay-window: 64,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.2.0/24 }} }}
  - {{ spi: {spi_natt}, direction: inbound, protocol: esp, mode: tunnel, source: {natt4}, destination: {gw4},
      encryption: aes128gcm16, key: 0x{key_natt}, integrity: none, udp-encapsulation: {{}},
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.4.0/24 }} }}
  - {{ spi: {spi_v6}, direction: inbound, protocol: esp, mode: tunnel, source: "{peer6}", destination: "{gw6}",
      encryption: aes128gcm16, key: 0x{key_v6}, integrity: none,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.6.0/24 }} }}
"""

# The kernel side: a UDP socket on port 4500 of both families that logs each datagram's length.
LISTENER = r"""
import select, socket, sys
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s4.bind(("0.0.0.0", 4500))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); s6.bind(("::", 4500))
out = open(sys.argv[1], "a", buffering=1)
print("listening", file=out)
while True:
    for s in select.select([s4, s6], [], [])[0]:
        data, peer = s.recvfrom(65535)
        print(f"{peer[0]} {len(data)} {data[:4].hex()}", file=out)
"""


def sa(spi, src, dst, key, v6=False, natt=False):
    header = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=key, auth_algo="NULL", auth_key=None,
                               tunnel_header=header,
                               nat_t_header=UDP(sport=4500, dport=4500) if natt else None)


def inner(src, size, ident):
    payload = bytes((ident * 7 + i) % 251 for i in range(size))
    return IP(src=src, dst="192.168.1.10", id=ident, ttl=64) / UDP(sport=41000, dport=41001) / Raw(payload)


def esp4(s, pkt, seq, ident, natt=False):
    """The ESP (or ESP-in-UDP) packet scapy builds, with its own Identification and valid lengths."""
    p = IP(raw(s.encrypt(pkt, seq_num=seq)))
    p.id = ident
    p.flags = 0
    if natt:
        p[UDP].len = p.len - 20     # scapy 2.5 leaves it at 8 (ORACLES.md)
        p[UDP].chksum = 0
    del p.chksum
    return IP(raw(p))


def esp6_payload(s, pkt, seq):
    """The bytes after the fixed IPv6 header of scapy's ESP-in-IPv6 packet (ESP header onwards)."""
    return raw(s.encrypt(pkt, seq_num=seq))[40:]


class Scenario:
    def __init__(self):
        self.wan = []          # frames into the outside port
        self.to_lan = []       # inner packets that must come out on the inside
        self.fragments = 0     # fragments to the gateway the workers must take
        self.reassembled = 0   # datagrams they must complete
        self.timeout = 0       # fragments that must time out
        self.invalid = 0       # fragments that must be dropped as overlapping
        self.kernel = []       # (source, length) the UDP socket must receive
        wan = Ether(src=ROUTER_MAC, dst=GW_OUT_MAC)
        wan6 = Ether(src=ROUTER_MAC, dst=GW_OUT_MAC, type=0x86DD)
        s4 = sa(SPI_V4, PEER4, GW4, KEY_V4)
        snat = sa(SPI_NATT, NATT4, GW4, KEY_NATT, natt=True)
        s6 = sa(SPI_V6, PEER6, GW6, KEY_V6, v6=True)
        ident = 1000

        def feed(frags, reverse=True):
            for f in (list(reversed(frags)) if reverse else frags):
                self.wan.append(wan / f if IP in f else wan6 / f)
            self.fragments += len(frags)

        # 1. IPv4 ESP, 3-4 fragments each, fed last first; several datagrams so both workers
        #    reassemble some (the reassembling worker is a hash of addresses and Identification).
        for seq in range(1, 7):
            ident += 1
            p = inner("192.168.2.10", 1100 + 50 * seq, ident)  # inner fits the inside MTU
            frags = fragment(esp4(s4, p, seq, ident), fragsize=512)
            feed(frags)
            self.reassembled += 1
            self.to_lan.append(p)
        # 2. ESP-in-UDP (NAT-T, RFC 3948) fragmented, in order and reversed.
        for seq in range(1, 4):
            ident += 1
            p = inner("192.168.4.10", 1300 + 10 * seq, ident)
            feed(fragment(esp4(snat, p, seq, ident, natt=True), fragsize=400), reverse=(seq % 2 == 0))
            self.reassembled += 1
            self.to_lan.append(p)
        # 3. IPv6 ESP in fragments (Fragment header, RFC 8200 §4.5), fed last first.
        for seq in range(1, 5):
            ident += 1
            p = inner("192.168.6.10", 1300 + 20 * seq, ident)
            whole = IPv6(src=PEER6, dst=GW6) / IPv6ExtHdrFragment(nh=50, id=0x10000 + ident) / \
                Raw(esp6_payload(s6, p, seq))
            feed(fragment6(whole, 600))
            self.reassembled += 1
            self.to_lan.append(p)
        # 4. IPv6 ESP behind extension headers, not fragmented: Destination Options (PadN); Hop-by-Hop +
        #    Routing (Segments Left 0) + Destination Options; an atomic fragment (RFC 6946).
        seq = 10
        chains = [
            IPv6ExtHdrDestOpt(nh=50, options=[PadN(optdata=b"\x00\x00\x00\x00")]),
            IPv6ExtHdrHopByHop(nh=43, options=[PadN(optdata=b"\x00\x00\x00\x00")]) /
            IPv6ExtHdrRouting(nh=60, type=0, segleft=0, addresses=[]) /
            IPv6ExtHdrDestOpt(nh=50, options=[HBHOptUnknown(otype=0x1e, optdata=b"ab")]),  # unknown, "skip" (00)
            IPv6ExtHdrFragment(nh=50, offset=0, m=0, id=77),
        ]
        for chain in chains:
            ident += 1
            p = inner("192.168.6.10", 300, ident)
            self.wan.append(wan6 / IPv6(src=PEER6, dst=GW6) / chain / Raw(esp6_payload(s6, p, seq)))
            self.to_lan.append(p)
            seq += 1
        # An option the node must not skip (action bits 10: discard and send Parameter Problem) is
        # the kernel's business, not the fast path's: not decrypted.
        ident += 1
        self.wan.append(wan6 / IPv6(src=PEER6, dst=GW6) /
                        IPv6ExtHdrDestOpt(nh=50, options=[HBHOptUnknown(otype=0x9e, optdata=b"ab")]) /
                        Raw(esp6_payload(s6, inner("192.168.6.10", 300, ident), seq)))
        seq += 1
        # 5. A fragment missing: the other two time out (reassembly-timeout-ms: 500).
        ident += 1
        frags = fragment(esp4(s4, inner("192.168.2.10", 1300, ident), 20, ident), fragsize=512)
        feed([frags[0], frags[2]], reverse=False)
        self.timeout += 2
        # 6. Overlapping fragments (bytes 296..599 twice): the datagram is dropped whole.
        ident += 1
        body = raw(esp4(s4, inner("192.168.2.10", 1150, ident), 21, ident))[20:]
        parts = [(0, body[0:600], True), (296, body[296:896], True), (896, body[896:], False)]
        feed([IP(src=PEER4, dst=GW4, id=ident, proto=50, frag=o // 8, flags="MF" if mf else 0) / Raw(b)
              for o, b, mf in parts], reverse=False)
        self.invalid += 3
        # 7. 3000-byte UDP datagrams to the gateway's port 4500 with the non-ESP marker (IKE), in
        #    fragments: reassembled, not ESP, so to the kernel's socket.
        ike = b"\x00\x00\x00\x00" + bytes(range(256)) * 11 + b"ike!"
        ident += 1
        feed(fragment(IP(src=NATT4, dst=GW4, id=ident) / UDP(sport=4500, dport=4500) / Raw(ike), fragsize=1400))
        self.reassembled += 1
        self.kernel.append((NATT4, len(ike)))
        whole = IPv6(src=PEER6, dst=GW6) / IPv6ExtHdrFragment(id=0x20000 + ident) / UDP(sport=4500, dport=4500) / \
            Raw(ike)
        feed(fragment6(whole, 1280))
        self.reassembled += 1
        self.kernel.append((PEER6, len(ike)))
        # 8. Transit fragments (not addressed to the gateway, no policy): forwarded as they are, TTL - 1.
        ident += 1
        self.transit = fragment(IP(src="203.0.113.9", dst="192.168.1.10", id=ident, ttl=30) /
                                UDP(sport=5, dport=6) / Raw(bytes(900)), fragsize=512)
        for f in self.transit:
            self.wan.append(wan / f)


def frames(paths):
    out = []
    for p in paths:
        if os.path.exists(p):
            out += list(rdpcap(p))
    return out


def main():
    report = Report("espresso-dp: reassembly of fragments to the gateway, ESP behind IPv6 extension headers")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dpreasm-", "espdpr")
    listener = None
    sc = Scenario()
    counters = {}
    try:
        dp.netns_add(gw.ns)
        # The kernel must take IPv6 on the TAP for the IPv6 datagram to its socket (the data plane
        # keeps the TAP from router solicitations and DAD; outputs are filtered to what is checked).
        dp.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=0", ns=gw.ns)
        dp.sh("sysctl -qw net.ipv6.conf.default.disable_ipv6=0", ns=gw.ns)
        received = gw.path("kernel.txt")
        script = gw.path("listener.py")
        with open(script, "w") as f:
            f.write(LISTENER)
        listener = dp.Process(["/usr/bin/python3", script, received], gw.path("listener.log"), ns=gw.ns)
        deadline = time.time() + 10
        while not (os.path.exists(received) and "listening" in open(received).read()):
            if time.time() > deadline:
                raise RuntimeError("UDP listener did not start: " + listener.log())
            time.sleep(0.1)
        wrpcap(gw.path("outside-in.pcap"), sc.wan)
        wrpcap(gw.path("inside-in.pcap"), [Ether(src=HOST_MAC, dst=GW_IN_MAC) / IP(src="192.168.1.10", dst="192.168.1.1") / UDP(sport=9, dport=9)])
        proc = gw.start(CONFIG.format(dir=gw.workdir, out_mac=GW_OUT_MAC, in_mac=GW_IN_MAC, router_mac=ROUTER_MAC,
                                      host_mac=HOST_MAC, gw4=GW4, gw6=GW6, peer4=PEER4, natt4=NATT4, peer6=PEER6,
                                      spi_v4=SPI_V4, spi_natt=SPI_NATT, spi_v6=SPI_V6, key_v4=KEY_V4.hex(),
                                      key_natt=KEY_NATT.hex(), key_v6=KEY_V6.hex()))

        def snapshot():
            out = dp.cli_json(gw.sock, "show dataplane")
            return (sum(w.get("fragments", 0) for w in out["workers"]),
                    sum(w.get("reassembled", 0) for w in out["workers"]),
                    dp.dataplane_drops(gw.sock))
        # The timeout must pass (0.5 s) before the counters settle: wait for 2 s of quiet.
        dp.wait_stable(snapshot, timeout=40, quiet=2.0)
        counters["fragments"], counters["reassembled"], counters["drops"] = snapshot()
        counters["text"] = dp.cli(gw.sock, "show dataplane")
        counters["sas"] = dp.sa_table(gw.sock)
        counters["workers"] = dp.cli_json(gw.sock, "show dataplane")["workers"]
        time.sleep(0.5)
        kernel_lines = open(received).read().split("\n")[1:]
        exit_status = proc.stop()
        lan = [f for f in frames([gw.path(f"inside-out{i}.pcap") for i in (0, 1)]) if IP in f]

        def clean_exit():
            return [] if exit_status == 0 else [f"espresso-dp exit status {exit_status}"]
        report.run("espresso-dp exits cleanly on SIGTERM", clean_exit)

        def plaintext_out():
            # Not counted: the gateway's own kernel answering the LAN host (since the TAP has the static
            # neighbors, its ICMP port unreachable for the test's UDP probe to 192.168.1.1 goes out).
            got = sorted(raw(f[IP]) for f in lan if f[IP].dst == "192.168.1.10" and f[IP].src not in ("203.0.113.9", "192.168.1.1"))
            want = sorted(raw(p) for p in sc.to_lan)
            problems = []
            if len(got) != len(want):
                problems.append(f"{len(got)} packets out on the inside, want {len(want)}")
            missing = [IP(w).id for w in want if w not in got]
            if missing:
                problems.append(f"inner packets (by IP id) not out byte for byte: {missing}")
            extra = [IP(g).id for g in got if g not in want]
            if extra:
                problems.append(f"unexpected packets on the inside (IP id): {extra}: " + "; ".join(IP(g).summary() for g in got if g not in want))
            return problems
        report.run("fragmented ESP (IPv4, out of order), fragmented ESP-in-UDP, fragmented ESP over IPv6 and "
                   "ESP behind IPv6 extension headers: the original inner packets come out", plaintext_out)

        def counts():
            problems = []
            d = counters["drops"]
            if counters["fragments"] != sc.fragments:
                problems.append(f"fragments received {counters['fragments']}, want {sc.fragments}")
            if counters["reassembled"] != sc.reassembled:
                problems.append(f"datagrams reassembled {counters['reassembled']}, want {sc.reassembled}")
            for k, v in (("frag_timeout", sc.timeout), ("frag_invalid", sc.invalid)):
                if d.get(k, 0) != v:
                    problems.append(f"drops.{k} = {d.get(k, 0)}, want {v}")
            others = {k: v for k, v in d.items() if v and k not in ("frag_timeout", "frag_invalid")}
            if others:
                problems.append(f"unexpected drops: {others}")
            busy = [w for w in counters["workers"][:2] if w.get("fragments", 0) > 0]
            if len(busy) != 2:
                problems.append(f"fragments reassembled on {len(busy)} worker(s), want both (hash hand-off)")
            if "fragments to the gateway:" not in counters["text"] or "frag_timeout 2" not in counters["text"]:
                problems.append("`espresso show dataplane` shows no fragment line or frag_timeout:\n" + counters["text"])
            decaps = {spi: dp.sa_count(counters["sas"][("inbound", spi)], "decaps")
                      for spi in (SPI_V4, SPI_NATT, SPI_V6)}
            if decaps != {SPI_V4: 6, SPI_NATT: 3, SPI_V6: 7}:
                problems.append(f"SA decaps {decaps}, want 6, 3 and 7")
            return problems
        report.run("fragments, reassembled datagrams, timed-out and overlapping fragments counted "
                   "(show dataplane, per worker)", counts)

        def transit_fragments():
            got = [f[IP] for f in lan if f[IP].src == "203.0.113.9"]
            want = []
            for f in sc.transit:
                p = IP(raw(f))
                p.ttl -= 1
                del p.chksum
                want.append(raw(IP(raw(p))))
            if sorted(raw(g) for g in got) != sorted(want):
                return [f"transit fragments out on the inside: {[(g.frag, g.flags, g.ttl, len(g)) for g in got]}, "
                        f"want the {len(want)} fragments as they came with TTL-1"]
            return []
        report.run("fragments not addressed to the gateway are forwarded as they are (TTL-1), not reassembled",
                   transit_fragments)

        def kernel_received():
            got = sorted((l.split()[0], int(l.split()[1])) for l in kernel_lines if l.strip())
            want = sorted(sc.kernel)
            return [] if got == want else [f"the kernel's UDP 4500 socket got {got}, want {want}"]
        report.run("fragmented non-ESP UDP 4500 (IKE-sized, IPv4 and IPv6) to the gateway reaches the kernel's "
                   "socket whole", kernel_received)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        if listener is not None:
            listener.stop(timeout=5)
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
