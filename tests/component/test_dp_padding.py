#!/usr/bin/python3
"""espresso-dp with net_pcap ports: bytes after an IP packet's total length (Ethernet padding of a
short frame, trailing junk) are not part of the packet.

Policies: UDP to port 53 of 203.0.113.0/24 bypasses, everything else from the LAN to it is discarded.
The inside pcap carries
  - a UDP packet to port 53 (36 bytes) padded with 24 junk bytes to a 74-byte frame: it is forwarded
    as the 36-byte packet (the frame leaving is 50 bytes, no junk);
  - an IPv4 packet of protocol UDP whose total length (22) ends inside the UDP header, in a 60-byte
    frame whose padding holds the ports 1234 -> 53: it has no ports, so it matches no port-53 policy
    and is discarded (before, the SPD read the ports from the padding and bypassed it).
Scapy builds every frame; tshark is not needed: the checks are on lengths and counters.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_padding.py
"""
import os
import struct
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging  # noqa: E402
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import Ether, IP, UDP, Raw, wrpcap, rdpcap, raw  # noqa: E402

import dp_process as dp  # noqa: E402
from oracle import Report  # noqa: E402

CONFIG = """\
policies:
  - { local: 192.168.1.0/24, remote: 203.0.113.0/24, protocol: udp, remote-ports: 53, action: bypass, priority: 10 }
  - { local: 192.168.1.0/24, remote: 203.0.113.0/24, action: discard, priority: 20 }
"""


def ether():
    return Ether(src=dp.HOST_MAC, dst=dp.GW_IN_MAC, type=0x0800)


def main():
    report = Report("espresso-dp: Ethernet padding is not part of the packet")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dppad-", "espdppad")
    try:
        dp.netns_add(gw.ns)
        dns = IP(src="192.168.1.10", dst="203.0.113.5", id=1) / UDP(sport=1234, dport=53) / Raw(b"q" * 8)
        padded_dns = ether() / Raw(raw(dns) + b"\xee" * 24)
        # Total length 22: the IP header and two bytes of UDP; the padding continues the UDP header.
        short = bytearray(raw(IP(src="192.168.1.10", dst="203.0.113.5", id=2, proto=17, len=22) / Raw(b"\x04\xd2")))
        short += struct.pack("!HHH", 53, 8, 0) + b"\x00" * 18
        short_frame = ether() / Raw(bytes(short))
        wrpcap(gw.path("inside-in.pcap"), [padded_dns, short_frame])
        wrpcap(gw.path("outside-in.pcap"), [])
        proc = gw.start(dp.two_port_config(gw.workdir) + CONFIG)
        drops = dp.wait_stable(lambda: dp.dataplane_drops(gw.sock), timeout=30, quiet=1.5)
        status = proc.stop()
        out = rdpcap(gw.path("outside-out.pcap"))

        def dns_without_padding():
            frames = [bytes(f) for f in out if IP in f and f[IP].id == 1]
            if len(frames) != 1:
                return [f"{len(frames)} copies of the port-53 packet left, want 1"]
            want = 14 + len(raw(dns))
            return [] if len(frames[0]) == want else [f"frame of {len(frames[0])} bytes left, want {want} (no padding)"]
        report.run("the padded port-53 packet is forwarded without its padding", dns_without_padding)

        def short_discarded():
            problems = []
            ids = sorted(f[IP].id for f in out if IP in f and f[IP].id != 1)
            if ids:
                problems.append(f"packets {ids} left, want none (no ports: the discard policy)")
            discarded = drops.get("spd_discard", 0)
            if discarded != 1:
                problems.append(f"spd_discard {discarded}, want 1; drops {drops}")
            if status != 0:
                problems.append(f"espresso-dp exit status {status} after SIGTERM")
            return problems
        report.run("the packet whose ports are in the padding is discarded", short_discarded)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
