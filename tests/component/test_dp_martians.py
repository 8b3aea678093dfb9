#!/usr/bin/python3
"""espresso-dp with net_pcap ports: IPv4 multicast, the limited broadcast and martian addresses are
never forwarded (RFC 1812 §5.3.7, §5.3.5), nor answered with ICMP errors (§4.3.2.7).

The inside pcap carries, from the LAN, mDNS to 224.0.0.251 (TTL 255), an IGMP-like packet to
224.0.0.22 with TTL 1, a DHCP discovery 0.0.0.0 -> 255.255.255.255, and packets to 127.0.0.1,
0.1.2.3 and 240.0.0.1 and from 127.0.0.1, IPv6 packets from ff02::1, ::1 and :: and to ::1, and an
ordinary packet in a frame for another host's MAC
(the port is promiscuous); then one ordinary packet to 203.0.113.5. Only that one may leave (by the
router); the multicast ones count as `multicast`, the frame for another MAC as `other_mac`, the
others as `martian`, and no ICMP error goes back to the LAN.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_martians.py
"""
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging  # noqa: E402
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import Ether, IP, IPv6, ICMP, UDP, Raw, wrpcap, rdpcap  # noqa: E402

import dp_process as dp  # noqa: E402
from oracle import Report  # noqa: E402


def frame(src, dst, ident, ttl=64, ether_dst=dp.GW_IN_MAC):
    return (Ether(src=dp.HOST_MAC, dst=ether_dst) /
            IP(src=src, dst=dst, id=ident, ttl=ttl) / UDP(sport=5353, dport=5353) / Raw(b"m" * 20))


def frame6(src, dst, flow):
    return (Ether(src=dp.HOST_MAC, dst=dp.GW_IN_MAC) /
            IPv6(src=src, dst=dst, fl=flow, hlim=64) / UDP(sport=5353, dport=5353) / Raw(b"m" * 20))


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
        # A unicast frame for another host's MAC (a switch flooding unknown unicast to the promiscuous
        # port): not the gateway's to route.
        other_mac = [frame("192.168.1.10", "203.0.113.5", 9, ether_dst="02:00:00:00:99:99")]
        martian += [frame6("ff02::1", "2001:db8:2::5", 10), frame6("::1", "2001:db8:2::5", 11),
                    frame6("::", "2001:db8:2::5", 12), frame6("2001:db8:1::10", "::1", 13)]
        good = [frame("192.168.1.10", "203.0.113.5", 8)]
        wrpcap(gw.path("inside-in.pcap"), multicast + martian + other_mac + good)
        wrpcap(gw.path("outside-in.pcap"), [])
        proc = gw.start(dp.two_port_config(gw.workdir))
        drops = dp.wait_stable(lambda: dp.dataplane_drops(gw.sock), timeout=30, quiet=1.5)
        status = proc.stop()
        out = [f for f in rdpcap(gw.path("outside-out.pcap")) if IP in f]
        back = [f for f in rdpcap(gw.path("inside-out.pcap")) if IP in f or IPv6 in f]
        out6 = [f for f in rdpcap(gw.path("outside-out.pcap")) if IPv6 in f]

        def only_the_good_one():
            ids = sorted(f[IP].id for f in out)
            problems = [] if ids == [8] else [f"left by the outside port: ids {ids}, want [8]"]
            if out6:
                problems.append(f"IPv6 left by the outside port: {[f[IPv6].src + ' -> ' + f[IPv6].dst for f in out6]}")
            return problems
        report.run("only the ordinary packet is forwarded", only_the_good_one)

        def counted():
            problems = []
            if drops.get("multicast", 0) != len(multicast):
                problems.append(f"multicast {drops.get('multicast', 0)}, want {len(multicast)}")
            if drops.get("martian", 0) != len(martian):
                problems.append(f"martian {drops.get('martian', 0)}, want {len(martian)}")
            if drops.get("other_mac", 0) != len(other_mac):
                problems.append(f"other_mac {drops.get('other_mac', 0)}, want {len(other_mac)}")
            if status != 0:
                problems.append(f"espresso-dp exit status {status} after SIGTERM")
            return problems
        report.run("multicast, martians and frames for another MAC counted as such, clean exit", counted)

        def no_icmp_back():
            icmp = [f"{f[IP].src} -> {f[IP].dst} type {f[ICMP].type}" for f in back if IP in f and ICMP in f]
            icmp += [f"{f[IPv6].src} -> {f[IPv6].dst} (IPv6)" for f in back if IPv6 in f]
            return [f"ICMP sent to the LAN: {icmp}"] if icmp else []
        report.run("no ICMP error about them (TTL 1 to a multicast group included)", no_icmp_back)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
