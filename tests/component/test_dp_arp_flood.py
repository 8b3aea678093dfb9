#!/usr/bin/python3
"""espresso-dp with net_pcap ports: a host on the LAN cannot fill the neighbor cache with spoofed ARP
and keep new neighbors out, nor make the gateway learn broadcast or multicast addresses.

The inside pcap carries ARP requests for the gateway (192.168.1.1) from 230 different senders of its
/24 (all from one MAC: what any host on the link can send), with neighbor-table-size 64 (its minimum);
then requests whose sender must never be learned (the MAC ff:ff:ff:ff:ff:ff, a multicast MAC, the
gateway's own MAC, the subnet's broadcast address 192.168.1.255), a request from a host 192.168.1.8
followed by one that claims its address with the broadcast MAC; then one ordinary request from a new
host 192.168.1.99. Every request for the gateway is answered. The new host must be in `show arp`
(the flood's idle entries were evicted to make room; before, it was refused as `table full`), the
static neighbors stay, and none of the unlearnable senders is in the cache.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_arp_flood.py
"""
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging  # noqa: E402
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import Ether, ARP, wrpcap, rdpcap  # noqa: E402

import dp_process as dp  # noqa: E402
from oracle import Report  # noqa: E402

FLOODER_MAC = "02:00:00:00:01:66"
NEW_HOST, NEW_MAC = "192.168.1.99", "02:00:00:00:01:99"
KNOWN_HOST, KNOWN_MAC = "192.168.1.8", "02:00:00:00:01:08"


def request(sender_ip, sender_mac, ether_src=None):
    return (Ether(src=ether_src or sender_mac, dst="ff:ff:ff:ff:ff:ff") /
            ARP(op=1, hwsrc=sender_mac, psrc=sender_ip, hwdst="00:00:00:00:00:00", pdst="192.168.1.1"))


def main():
    report = Report("espresso-dp: an ARP flood on the LAN neither fills the neighbor cache nor poisons it")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dparp-", "espdparp")
    try:
        dp.netns_add(gw.ns)
        flood = [request(f"192.168.1.{k}", FLOODER_MAC) for k in range(20, 250) if k != 99]
        # Outside the flood's range, after it (so that eviction cannot be what removed them).
        unlearnable = {
            "192.168.1.5": request("192.168.1.5", "ff:ff:ff:ff:ff:ff", ether_src=FLOODER_MAC),
            "192.168.1.6": request("192.168.1.6", "01:00:5e:00:00:01", ether_src=FLOODER_MAC),
            "192.168.1.7": request("192.168.1.7", dp.GW_IN_MAC, ether_src=FLOODER_MAC),
            "192.168.1.255": request("192.168.1.255", FLOODER_MAC),
        }
        # A known host whose entry a spoofed request tries to turn into the broadcast address.
        known = [request(KNOWN_HOST, KNOWN_MAC),
                 request(KNOWN_HOST, "ff:ff:ff:ff:ff:ff", ether_src=FLOODER_MAC)]
        frames = flood + list(unlearnable.values()) + known + [request(NEW_HOST, NEW_MAC)]
        wrpcap(gw.path("inside-in.pcap"), frames)
        wrpcap(gw.path("outside-in.pcap"), [])
        config = dp.two_port_config(gw.workdir).replace("  idle: poll\n", "  idle: poll\n  neighbor-table-size: 64\n")
        proc = gw.start(config)
        dp.wait_stable(lambda: dp.cli_json(gw.sock, "show arp")["counters"], timeout=30, quiet=1.5)
        cache = dp.cli_json(gw.sock, "show arp")
        status = proc.stop()
        replies = [f for f in rdpcap(gw.path("inside-out.pcap")) if ARP in f and f[ARP].op == 2]
        learned = {e["address"]: e for e in cache["neighbors"] if e["family"] == 4}

        def new_host_learned():
            problems = []
            e = learned.get(NEW_HOST)
            if e is None:
                problems.append(f"{NEW_HOST} not in the cache; counters {cache['counters']}")
            elif e["mac"] != NEW_MAC:
                problems.append(f"{NEW_HOST} at {e['mac']}, want {NEW_MAC}")
            if cache["counters"].get("table-full", 0) != 0:
                problems.append(f"table-full {cache['counters']['table-full']}, want 0")
            if cache["counters"].get("evicted", 0) == 0:
                problems.append("nothing evicted")
            for static in ("192.168.1.10", "198.51.100.254"):
                if static not in learned:
                    problems.append(f"static neighbor {static} gone")
            if len(cache["neighbors"]) > 56:
                problems.append(f"{len(cache['neighbors'])} entries, more than 7/8 of 64")
            return problems
        report.run("after a flood of 229 senders the new host is learned, idle entries evicted, "
                   "static ones kept", new_host_learned)

        def unlearnable_not_learned():
            bad = [f"{ip} learned as {learned[ip]['mac']}" for ip in unlearnable if ip in learned]
            if KNOWN_HOST not in learned:
                bad.append(f"{KNOWN_HOST} not in the cache")
            elif learned[KNOWN_HOST]["mac"] != KNOWN_MAC:
                bad.append(f"{KNOWN_HOST} now at {learned[KNOWN_HOST]['mac']}, want {KNOWN_MAC}")
            return bad
        report.run("broadcast, multicast and the gateway's own MAC, and the subnet broadcast address, "
                   "are never learned, nor overwrite a known entry", unlearnable_not_learned)

        def all_answered():
            problems = []
            if len(replies) != len(frames):
                problems.append(f"{len(replies)} ARP replies for {len(frames)} requests")
            if status != 0:
                problems.append(f"espresso-dp exit status {status} after SIGTERM")
            return problems
        report.run("every request for the gateway answered, clean exit", all_answered)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
