#!/usr/bin/python3
"""espresso-dp with net_pcap ports: IPv4 multicast, the limited broadcast and martian addresses are
never forwarded (RFC 1812 §5.3.7, §5.3.5), nor answered with ICMP errors (§4.3.2.7).

The inside pcap carries, from the LAN, mDNS to 224.0.0.251 (TTL 255), an IGMP-like packet to
224.0.0.22 with TTL 1, a DHCP discovery 0.0.0.0 -> 255.255.255.255, and packets to 127.0.0.1,
0.1.2.3 and 240.0.0.1 and from 127.0.0.1; then one ordinary packet to 203.0.113.5. Only that one may
leave (by the router); the multicast ones count as `multicast`, the others as `martian`, and no ICMP
error goes back to the LAN.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_martians.py
"""
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging  # noqa: E402
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import Ether, IP, ICMP, UDP, Raw, wrpcap, rdpcap  # noqa: E402

import dp_process as dp  # noqa: E402
from oracle import Report  # noqa: E402


def frame(src, dst, ident, ttl=64, ether_dst=dp.GW_IN_MAC):
    return (Ether(src=dp.HOST_MAC, dst=ether_dst) /
            IP(src=src, dst=dst, id=ident, ttl=ttl) / UDP(sport=5353, dport=5353) / Raw(b"m" * 20))


def main():
    report = Report("espresso-dp: no forwarding of IPv4 multicast, broadcast or martians")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dpmart-", "espdpmart")
    try:
        dp.netns_add(gw.ns)
        multicast = [frame("192.168.1.10", "224.0.0.251", 1, ttl=255, ether_dst="01:00:5e:00:00:fb"),
                     frame("192.168.1.10", "224.0.0.22", 2, ttl=1, ether_dst="01:00:5e:00:00:16")]
        martian = [frame("0.0.0.0", "255.255.255.255", 3, ether_dst="ff:ff:ff:ff:ff:ff"),
                   frame("192.168.1.10", "127.0.0.1", 4),
                   frame("192.168.1.10", "0.1.2.3", 5),
                   frame("192.168.1.10", "240.0.0.1", 6),
                   frame("127.0.0.1", "203.0.113.5", 7)]
        good = [frame("192.168.1.10", "203.0.113.5", 8)]
        wrpcap(gw.path("inside-in.pcap"), multicast + martian + good)
        wrpcap(gw.path("outside-in.pcap"), [])
        proc = gw.start(dp.two_port_config(gw.workdir))
        drops = dp.wait_stable(lambda: dp.dataplane_drops(gw.sock), timeout=30, quiet=1.5)
        status = proc.stop()
        out = [f for f in rdpcap(gw.path("outside-out.pcap")) if IP in f]
        back = [f for f in rdpcap(gw.path("inside-out.pcap")) if IP in f]

        def only_the_good_one():
            ids = sorted(f[IP].id for f in out)
            return [] if ids == [8] else [f"left by the outside port: ids {ids}, want [8]"]
        report.run("only the ordinary packet is forwarded", only_the_good_one)

        def counted():
            problems = []
            if drops.get("multicast", 0) != len(multicast):
                problems.append(f"multicast {drops.get('multicast', 0)}, want {len(multicast)}")
            if drops.get("martian", 0) != len(martian):
                problems.append(f"martian {drops.get('martian', 0)}, want {len(martian)}")
            if status != 0:
                problems.append(f"espresso-dp exit status {status} after SIGTERM")
            return problems
        report.run("multicast and martians counted as such, clean exit", counted)

        def no_icmp_back():
            icmp = [f"{f[IP].src} -> {f[IP].dst} type {f[ICMP].type}" for f in back if ICMP in f]
            return [f"ICMP sent to the LAN: {icmp}"] if icmp else []
        report.run("no ICMP error about them (TTL 1 to a multicast group included)", no_icmp_back)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
