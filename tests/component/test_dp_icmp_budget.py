#!/usr/bin/python3
"""espresso-dp with net_pcap ports: ICMP errors are rate-limited (100 a second, bursts of 50), but
"fragmentation needed" has a budget of its own, so that a stream of other errors cannot starve Path
MTU discovery (sources that never learn the MTU black-hole their large packets).

The inside pcap carries 120 packets with TTL 1 (Time Exceeded: 50 sent at once, the rest counted as
icmp_rate_limited), then one 1400-byte packet with DF for the outside link of 576 bytes: its
"fragmentation needed" (MTU 576) must still reach the host.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_icmp_budget.py
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

EXPIRING = 120


def frame(ident, ttl, size, df=False):
    return (Ether(src=dp.HOST_MAC, dst=dp.GW_IN_MAC) /
            IP(src="192.168.1.10", dst="203.0.113.5", id=ident, ttl=ttl, flags="DF" if df else 0) /
            UDP(sport=4000, dport=5000) / Raw(b"b" * size))


def main():
    report = Report("espresso-dp: fragmentation-needed has its own ICMP budget")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dpicmpb-", "espdpicb")
    try:
        dp.netns_add(gw.ns)
        wrpcap(gw.path("inside-in.pcap"), [frame(k, 1, 20) for k in range(EXPIRING)] + [frame(999, 64, 1400, df=True)])
        wrpcap(gw.path("outside-in.pcap"), [])
        proc = gw.start(dp.two_port_config(gw.workdir, outside_mtu=576))
        drops = dp.wait_stable(lambda: dp.dataplane_drops(gw.sock), timeout=30, quiet=1.5)
        status = proc.stop()
        back = [f for f in rdpcap(gw.path("inside-out.pcap")) if ICMP in f]

        def frag_needed_sent():
            fn = [f for f in back if f[ICMP].type == 3 and f[ICMP].code == 4]
            if len(fn) != 1:
                return [f"{len(fn)} fragmentation-needed errors to the host, want 1"]
            return [] if fn[0][ICMP].nexthopmtu == 576 else [f"next-hop MTU {fn[0][ICMP].nexthopmtu}, want 576"]
        report.run("after 120 Time Exceeded the fragmentation-needed error still goes out (MTU 576)",
                   frag_needed_sent)

        def others_limited():
            te = len([f for f in back if f[ICMP].type == 11])
            limited = drops.get("icmp_rate_limited", 0)
            problems = []
            if te + limited != EXPIRING or limited == 0:
                problems.append(f"{te} Time Exceeded sent and {limited} rate-limited, want {EXPIRING} in all, "
                                "some limited")
            if status != 0:
                problems.append(f"espresso-dp exit status {status} after SIGTERM")
            return problems
        report.run("the Time Exceeded errors are rate-limited and counted", others_limited)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
