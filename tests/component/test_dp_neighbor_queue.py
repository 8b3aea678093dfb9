#!/usr/bin/python3
"""espresso-dp with net_pcap ports: packets to many unresolved next hops are bounded.

A packet whose next hop has no ARP/NDP answer yet waits on the main lcore (at most 16 per next hop)
while ARP asks. Without a bound on the next hops and packets waiting in all, a stream to distinct
addresses of a connected prefix made one entry, one ARP request and up to 16 held mbufs of the shared
pool per address, until the ports' RX queues could not be refilled (a remote denial of service; an
IPv6 /64 has no end of addresses). Now at most 256 next hops and 1024 packets wait; the rest are
dropped as no_neighbor at once, and asked for only a few a second (50), except the gateways of
configured routes, which are always asked for (at most twice a second each).

Here the outside port is 198.51.100.1/16 and nothing answers ARP. The inside pcap carries 5 packets
to each of 600 addresses of that /16 (one address after the other: 3000 packets), then 5 packets to
203.0.113.5 behind the static router, then 5 packets to 10.9.0.5 behind a route whose gateway
198.51.100.253 is not resolved. Checked: at most 1024 / 5 + 1 + 2 x 50 distinct flood addresses are
asked for (the packet bound is reached after ~205 next hops; 600 without bounds, 256 with the
next-hop bound only), the route's gateway is asked for although the queue is full, every flood
packet is counted as no_neighbor (or exception_full if the main lcore's ring was full) once the 3 s
wait ran out, the 5 routed packets still leave, and the process exits cleanly.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_neighbor_queue.py
"""
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging  # noqa: E402
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import ARP, Ether, IP, UDP, Raw, wrpcap, rdpcap  # noqa: E402

import dp_process as dp  # noqa: E402
from oracle import Report  # noqa: E402

ADDRESSES = 600
PER_ADDRESS = 5
MAX_PACKETS = 1024  # gateway.cpp max_pending_packets
ROUTED = 5
UNQUEUED_PER_SECOND = 50  # gateway.cpp max_unqueued_requests: asked for while the queue is full
FLOOD_SECONDS = 2         # the flood reaches the main lcore within this (two rate windows at most)
LIMIT = MAX_PACKETS // PER_ADDRESS + 1 + UNQUEUED_PER_SECOND * FLOOD_SECONDS


def flood_target(k):
    return f"198.51.{1 + k // 250}.{1 + k % 250}"


def frame(dst, ident):
    return (Ether(src=dp.HOST_MAC, dst=dp.GW_IN_MAC) /
            IP(src="192.168.1.10", dst=dst, id=ident & 0xffff, ttl=64) / UDP(sport=4000, dport=5000) /
            Raw(b"x" * 32))


def main():
    report = Report("espresso-dp: packets waiting for ARP are bounded")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dpnq-", "espdpnq")
    try:
        dp.netns_add(gw.ns)
        flood = [frame(flood_target(k), k * PER_ADDRESS + i) for k in range(ADDRESSES) for i in range(PER_ADDRESS)]
        routed = [frame("203.0.113.5", 60000 + i) for i in range(ROUTED)]
        # Behind a route whose gateway 198.51.100.253 is not resolved yet: asked for although the
        # queue is full (nothing answers here, so these are dropped too).
        behind_unresolved = [frame("10.9.0.5", 61000 + i) for i in range(ROUTED)]
        wrpcap(gw.path("inside-in.pcap"), flood + routed + behind_unresolved)
        wrpcap(gw.path("outside-in.pcap"), [])
        config = dp.two_port_config(gw.workdir).replace("198.51.100.1/24", "198.51.100.1/16").replace(
            "routes:\n", "routes:\n  - { destination: 10.9.0.0/16, via: 198.51.100.253 }\n")
        proc = gw.start(config)
        # Past the 3 s wait of the queued ones: every flood packet is counted by then.
        time.sleep(4)
        drops = dp.wait_stable(lambda: dp.dataplane_drops(gw.sock), timeout=30, quiet=1.5)
        rx = dp.dataplane_rx(gw.sock)
        status = proc.stop()
        out = rdpcap(gw.path("outside-out.pcap"))

        asked = {f[ARP].pdst for f in out if ARP in f and f[ARP].op == 1}

        def bounded_requests():
            flood_asked = asked - {"198.51.100.253"}
            if not flood_asked:
                return ["no ARP request at all"]
            if len(flood_asked) > LIMIT:
                return [f"ARP asked for {len(flood_asked)} addresses, want at most {LIMIT} "
                        f"(max_pending_packets {MAX_PACKETS} / {PER_ADDRESS} packets each, and "
                        f"{UNQUEUED_PER_SECOND} a second for the others, for at most {FLOOD_SECONDS} s)"]
            return []
        report.run(f"ARP asks for at most {LIMIT} of the {ADDRESSES} addresses", bounded_requests)

        def route_gateway_asked():
            return [] if "198.51.100.253" in asked else ["no ARP request for the route's gateway 198.51.100.253"]
        report.run("the gateway of a route is asked for although the queue is full", route_gateway_asked)

        def every_packet_counted():
            problems = []
            fed = len(flood) + len(routed) + len(behind_unresolved)
            if rx != fed:
                problems.append(f"workers received {rx} packets, fed {fed}")
            counted = drops.get("no_neighbor", 0) + drops.get("exception_full", 0)
            if counted != len(flood) + len(behind_unresolved):
                problems.append(f"no_neighbor + exception_full = {counted}, want {len(flood) + len(behind_unresolved)}")
            other = {k: v for k, v in drops.items() if v and k not in ("no_neighbor", "exception_full")}
            if other:
                problems.append(f"other drops: {other}")
            if status != 0:
                problems.append(f"espresso-dp exit status {status} after SIGTERM")
            return problems
        report.run("every flood packet is dropped and counted (no_neighbor), nothing else, clean exit",
                   every_packet_counted)

        def routed_still_leave():
            ids = sorted(f[IP].id for f in out if IP in f and f[IP].dst == "203.0.113.5")
            want = list(range(60000, 60000 + ROUTED))
            return [] if ids == want else [f"routed packets out: ids {ids}, want {want}"]
        report.run("packets to a resolved next hop after the flood still leave", routed_still_leave)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
