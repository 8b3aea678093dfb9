#!/usr/bin/python3
"""System test: espresso-dp's neighbor cache (ARP) on tests/system/topology.py's two-gateway network.

    host-hq (192.168.1.10) -- gw-hq -- inet (Linux router .254) -- gw-branch -- host-branch (192.168.2.10)

Both gateways carry the demo's static SA pair and `neighbor-reachable-time: 3`. Checked against what
the Linux hosts and router really do on the wire:
  - `show arp` / `--json show arp` list the next hops with the MACs the kernels' interfaces have;
  - RFC 826 merge rule: ARP requests for other hosts on the LAN (from many spoofed senders) create no
    entries; a request for the gateway does;
  - NUD: a neighbor in use is probed by unicast ARP when its reachable time runs out and stays (no
    loss under continuous traffic); when the router's interface changes its MAC without telling anyone
    (no gratuitous ARP, the router's own entry for the gateway pinned so it never ARPs), the probes go
    unanswered, the entry is removed and resolved afresh, and traffic flows again within seconds;
  - entries nobody uses are collected; `clear arp` removes learned entries and traffic re-resolves.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_neighbors.py
"""
import json
import os
import re
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "component"))
from topology import Topology, ROOT  # noqa: E402
import dp_process as dp  # noqa: E402
from dp_process import sh  # noqa: E402

results = []


def case(name, fn):
    try:
        fn()
        results.append((name, True))
        print(f"PASS {name}", flush=True)
    except Exception as e:  # noqa: BLE001 - report and go on
        results.append((name, False))
        print(f"FAIL {name}: {e}", flush=True)
        traceback.print_exc()


def make_config(example, socket_path, route, out_path):
    """The demo config with our own control socket, a 3 s reachable time and one more route."""
    out = []
    for line in open(os.path.join(ROOT, "config/examples", example)).read().splitlines():
        if line.strip().startswith("control-socket:"):
            out.append(f"  control-socket: {socket_path}")
            out.append("  neighbor-reachable-time: 3")
            continue
        out.append(line)
        if line.startswith("  - { destination:"):
            out.append(route)
    with open(out_path, "w") as f:
        f.write("\n".join(out) + "\n")


def mac_of(topo, ns, iface):
    info = json.loads(sh(f"ip -j link show dev {iface}", ns=topo.ns[ns]).stdout)
    return info[0]["address"]


def arp(sock):
    return dp.cli_json(sock, "show arp")


def entry(table, address):
    found = [e for e in table["neighbors"] if e["address"] == address]
    return found[0] if found else None


def ping(topo, count, interval=0.2, dst="192.168.2.10", deadline=None):
    """Received replies of `ping -c count` from host-hq."""
    extra = f"-w {deadline}" if deadline else "-W 1"
    r = sh(f"ping -c {count} -i {interval} {extra} {dst}", ns=topo.ns["host-hq"], check=False,
           timeout=count * interval + 30)
    m = re.search(r"(\d+) received", r.stdout)
    return int(m.group(1)) if m else 0


SPOOF = r'''
# ARP frames straight onto the link with an AF_PACKET socket (starts in milliseconds, unlike scapy:
# the entry learned from the last frame is checked before its reachable time runs out).
import socket, struct, sys

def arp_request(sender_mac, sender_ip, target_ip):
    mac = bytes.fromhex(sender_mac.replace(":", ""))
    ip = lambda a: socket.inet_aton(a)
    return (b"\xff" * 6 + mac + b"\x08\x06" +
            struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip(sender_ip) + b"\x00" * 6 + ip(target_ip))

s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
frames = []
if sys.argv[1] == "all":
    for i in range(100, 140):  # who-has another host, from 40 spoofed senders
        frames.append(arp_request("02:00:00:aa:00:%02x" % i, "192.168.1.%d" % i, "192.168.1.77"))
    # a gratuitous ARP from a sender the gateway does not know
    frames.append(arp_request("02:00:00:aa:00:99", "192.168.1.99", "192.168.1.99"))
# who-has the gateway: this one is learned (RFC 826: the request is for us)
frames.append(arp_request("02:00:00:aa:00:c8", "192.168.1.200", "192.168.1.1"))
for f in frames:
    s.send(f)
'''


def spoof(topo, which):
    path = os.path.join(topo.dir, "spoof.py")
    with open(path, "w") as f:
        f.write(SPOOF)
    sh(f"/usr/bin/python3 {path} {which}", ns=topo.ns["host-hq"], timeout=60)


def ipv6_part():
    """The same NUD checks for IPv6 (unicast Neighbor Solicitations) on test_site_to_site_ipv6.py's
    IPv6 network (6-in-6 static SAs, the router at 2001:db8:ff1::fe)."""
    import test_site_to_site_ipv6 as v6  # noqa: E402
    tag = f"esn6{os.getpid() % 10000}"
    topo = v6.Topology6(dp.BUILD, prefix=tag)
    for side in ("hq", "branch"):
        text = v6.gateway_config(side, outer=6).replace(
            f"  control-socket: /run/espresso/{side}.sock\n",
            f"  control-socket: /run/espresso/{side}.sock\n  neighbor-reachable-time: 3\n")
        path = os.path.join(topo.dir, f"{side}.yaml")
        with open(path, "w") as f:
            f.write(text)
        setattr(topo, f"{side}_config", path)
    hq = "/run/espresso/hq.sock"
    router = "2001:db8:ff1::fe"
    try:
        topo.create()
        inet = topo.ns["inet"]
        topo.start_gateways()
        gw_mac = [i for i in dp.cli_json(hq, "show interfaces")["interfaces"] if i["name"] == "outside"][0]["mac"]
        sh(f"ip -6 neigh replace 2001:db8:ff1::1 lladdr {gw_mac} nud permanent dev inet-hq", ns=inet)
        sh("sysctl -qw net.ipv6.conf.inet-hq.ndisc_notify=0", ns=inet)
        assert ping(topo, 3, dst="2001:db8:2::10", deadline=10) >= 1, "no ping -6 through the tunnel"

        def v6_neighbors_and_probes():
            table = arp(hq)
            e = entry(table, router)
            assert e and e["family"] == 6 and e["mac"] == mac_of(topo, "inet", "inet-hq"), table
            text = dp.cli(hq, "show ipv6 neighbors")
            assert re.search(r"^2001:db8:ff1::fe\s+\d+\s+" + re.escape(e["mac"]) + r"\s+(REACH|STALE|PROBE)\s+outside$",
                             text, re.M), text
            before = table["counters"]
            got = ping(topo, 40, 0.2, dst="2001:db8:2::10")
            after = arp(hq)["counters"]
            assert got == 40, f"{got}/40 replies while the router answered its Neighbor Solicitations"
            assert after["probes-sent"] > before["probes-sent"] and after["unreachable"] == before["unreachable"], (before, after)
        case("[IPv6] show ipv6 neighbors; unicast Neighbor Solicitation probes keep the router, no loss",
             v6_neighbors_and_probes)

        def v6_mac_change():
            before = arp(hq)["counters"]
            new_mac = "02:00:00:00:99:02"
            sh(f"ip link set dev inet-hq address {new_mac}", ns=inet)
            t0 = time.time()
            recovered = None
            while time.time() - t0 < 20:
                if ping(topo, 1, dst="2001:db8:2::10", deadline=1) == 1:
                    recovered = time.time() - t0
                    break
            table = arp(hq)
            assert recovered is not None, f"no ping -6 20 s after the router's MAC changed: {table}"
            e = entry(table, router)
            assert e and e["mac"] == new_mac, e
            assert table["counters"]["unreachable"] >= before["unreachable"] + 1, (before, table["counters"])
            print(f"     (traffic flowed again {recovered:.1f} s after the change)")
        case("[IPv6] the router's MAC changes silently: probes fail, re-resolved by multicast NS, traffic recovers",
             v6_mac_change)

        def clear_v6_only():
            ping(topo, 2, deadline=5)  # an IPv4 entry too
            out = dp.cli(hq, "clear ipv6 neighbors")
            assert re.fullmatch(r"cleared [1-9]\d* IPv6 neighbor entr(y|ies)\n", out), out
            table = arp(hq)
            assert not [e for e in table["neighbors"] if e["family"] == 6 and not e["static"]], table
        case("[IPv6] clear ipv6 neighbors removes learned IPv6 entries", clear_v6_only)
    finally:
        topo.teardown()


def main():
    if dp.dataplane_missing():
        return 77
    tag = f"espn{os.getpid() % 10000}"
    topo = Topology(dp.BUILD, prefix=tag)
    hq = os.path.join(topo.dir, "hq.sock")
    br = os.path.join(topo.dir, "branch.sock")
    topo.hq_config = os.path.join(topo.dir, "hq.yaml")
    topo.branch_config = os.path.join(topo.dir, "branch.yaml")
    make_config("site-to-site-hq.yaml", hq, "", topo.hq_config)
    make_config("site-to-site-branch.yaml", br, "", topo.branch_config)
    try:
        topo.create()
        inet = topo.ns["inet"]
        topo.start_gateways()
        gw_hq_mac = [i for i in dp.cli_json(hq, "show interfaces")["interfaces"] if i["name"] == "outside"][0]["mac"]
        # The router never asks for the gateway itself (its entry is pinned) and announces nothing
        # when its MAC changes: what the gateway knows about the router comes only from its own
        # resolution and NUD probes.
        sh(f"ip neigh replace 198.51.100.1 lladdr {gw_hq_mac} nud permanent dev inet-hq", ns=inet)
        sh("sysctl -qw net.ipv4.conf.inet-hq.arp_notify=0", ns=inet)
        sh("sysctl -qw net.ipv4.conf.all.arp_notify=0", ns=inet)
        assert ping(topo, 3, deadline=10) >= 1, "no ping through the tunnel at all"

        def show_arp_lists_next_hops():
            table = arp(hq)
            router = entry(table, "198.51.100.254")
            host = entry(table, "192.168.1.10")
            assert router, f"no ARP entry for the router: {table}"
            assert host, f"no ARP entry for host-hq: {table}"
            assert router["mac"] == mac_of(topo, "inet", "inet-hq"), (router, mac_of(topo, "inet", "inet-hq"))
            assert host["mac"] == mac_of(topo, "host-hq", "eth0"), host
            assert router["interface"] == "outside" and host["interface"] == "inside", table
            assert not router["static"] and router["family"] == 4
            assert table["reachable-time"] == 3 and table["capacity"] == 4096, table
            text = dp.cli(hq, "show arp")
            assert re.search(r"^Internet\s+198\.51\.100\.254\s+\d+\s+" + re.escape(router["mac"]) + r"\s+ARPA\s+\w+\s+outside$",
                             text, re.M), text
            assert "Neighbor cache:" in text, text
            print("     " + text.replace("\n", "\n     ").rstrip())
        case("show arp lists the next hops with the MACs of the kernels' interfaces", show_arp_lists_next_hops)

        def rfc826_learning():
            spoof(topo, "all")
            time.sleep(0.2)
            table = arp(hq)
            spoofed = [e for e in table["neighbors"] if re.fullmatch(r"192\.168\.1\.(1[0-3]\d|99)", e["address"])]
            assert not spoofed, f"learned from ARP not addressed to the gateway: {spoofed}"
            asked = entry(table, "192.168.1.200")
            assert asked and asked["mac"] == "02:00:00:aa:00:c8", f"a request for the gateway was not learned: {table}"
        case("ARP not addressed to the gateway creates no entries (RFC 826); a request for it does", rfc826_learning)

        def probes_keep_a_live_neighbor():
            before = arp(hq)["counters"]
            got = ping(topo, 40, 0.2)  # 8 s: over two reachable times
            after = arp(hq)["counters"]
            assert got == 40, f"{got}/40 replies while the router answered its probes"
            assert after["probes-sent"] > before["probes-sent"], (before, after)
            assert after["unreachable"] == before["unreachable"], (before, after)
            print(f"     (probes sent {after['probes-sent'] - before['probes-sent']} in 8 s, none unanswered)")
        case("a neighbor in use is probed by unicast ARP and stays: no loss under continuous ping",
             probes_keep_a_live_neighbor)

        def mac_change_is_detected():
            before = arp(hq)["counters"]
            new_mac = "02:00:00:00:99:01"
            sh(f"ip link set dev inet-hq address {new_mac}", ns=inet)
            t0 = time.time()
            # Keep traffic going so the entry is in use; it must recover within reachable (3 s) +
            # 3 probes 1 s apart + a resolution.
            recovered = None
            while time.time() - t0 < 20:
                if ping(topo, 1, deadline=1) == 1:
                    recovered = time.time() - t0
                    break
            table = arp(hq)
            assert recovered is not None, f"no ping 20 s after the router's MAC changed: {table}"
            router = entry(table, "198.51.100.254")
            assert router and router["mac"] == new_mac, router
            assert table["counters"]["unreachable"] >= before["unreachable"] + 1, (before, table["counters"])
            assert ping(topo, 10, 0.1) == 10
            print(f"     (traffic flowed again {recovered:.1f} s after the change)")
        case("the router's MAC changes silently: NUD probes fail, the entry is re-resolved, traffic recovers",
             mac_change_is_detected)

        def unused_entries_are_collected_and_clear_arp():
            spoof(topo, "gateway-only")  # a request for the gateway from 192.168.1.200, never used after
            assert entry(arp(hq), "192.168.1.200"), "the request for the gateway was not learned"
            time.sleep(4.5)  # reachable time 3 s, checked four times a second; nobody used it
            table = arp(hq)
            assert entry(table, "192.168.1.200") is None, table
            assert table["counters"]["collected"] >= 1, table["counters"]
            ping(topo, 2, deadline=5)
            out = dp.cli(hq, "clear arp")
            assert re.fullmatch(r"cleared [1-9]\d* ARP entr(y|ies)\n", out), out
            assert [e for e in arp(hq)["neighbors"] if not e["static"]] == [], arp(hq)
            assert ping(topo, 3, deadline=10) >= 2, "no traffic after clear arp"
            assert entry(arp(hq), "198.51.100.254"), "the router was not resolved again after clear arp"
        case("unused entries are collected; clear arp empties the cache and traffic resolves again",
             unused_entries_are_collected_and_clear_arp)
    except Exception as e:  # noqa: BLE001
        results.append(("setup", False))
        print(f"FAIL setup: {e}", flush=True)
        traceback.print_exc()
        for name in ("gw-hq", "gw-branch"):
            print(f"--- {name} log:\n{topo.log(name)[-3000:]}")
    finally:
        topo.teardown()
    try:
        ipv6_part()
    except Exception as e:  # noqa: BLE001
        results.append(("IPv6 setup", False))
        print(f"FAIL IPv6 setup: {e}", flush=True)
        traceback.print_exc()
    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
