#!/usr/bin/python3
"""System test: bypass/discard policies end to end and the `workers: 1` gateway under load in both
directions at once, on tests/system/topology.py's two-gateway network with configs made here.

    host-hq (192.168.1.10) -- gw-hq -- inet (router) -- gw-branch -- host-branch (192.168.2.10, .66, .99)

Policies (both gateways also carry the demo's SA pair 0x1001/0x2001 for 192.168.1.0/24 <-> 192.168.2.0/24):
  HQ:     bypass  192.168.1.0/24 <-> 192.168.2.99/32  (priority 10, beats the SAs' implied 1000)
          discard 192.168.1.0/24 <-> 192.168.2.66/32  (priority 10)
  Branch: bypass  192.168.2.99/32 <-> 192.168.1.0/24  (the mirror of HQ's)
The inet router routes both LANs to the gateways, so bypassed cleartext can cross it.

Why not `workers: 2`: espresso-dp takes lcores 0..workers, and this machine has two cores (0-1).
Instead the demo's `workers: 1` is loaded with UDP in both directions at the same time and every
counter must be exact.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_policies.py
"""
import os
import subprocess
import sys
import threading
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


HQ_EXTRA = """
  - { destination: 192.168.2.0/24, via: 198.51.100.254 }
policies:
  - { local: 192.168.1.0/24, remote: 192.168.2.99/32, action: bypass, priority: 10 }
  - { local: 192.168.1.0/24, remote: 192.168.2.66/32, action: discard, priority: 10 }
"""
BRANCH_EXTRA = """
  - { destination: 192.168.1.0/24, via: 203.0.113.254 }
policies:
  - { local: 192.168.2.99/32, remote: 192.168.1.0/24, action: bypass, priority: 10 }
"""


def make_config(example, socket_path, extra, out_path):
    """The demo config with our own control socket, one more route and the policies above."""
    route, policies = extra.strip("\n").split("\npolicies:\n")
    out = []
    for line in open(os.path.join(ROOT, "config/examples", example)).read().splitlines():
        if line.strip().startswith("control-socket:"):
            line = f"  control-socket: {socket_path}"
        out.append(line)
        if line.startswith("  - { destination:"):
            out.append(route)
    text = "\n".join(out) + "\npolicies:\n" + policies + "\n"
    with open(out_path, "w") as f:
        f.write(text)


UDP_SINK = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0", int(sys.argv[1])))
s.settimeout(4)
n = 0
print("ready", flush=True)
try:
    while n < int(sys.argv[2]):
        d = s.recv(4096)
        if len(d) >= 4 and d[4:] == bytes([d[0]]) * (len(d) - 4):
            n += 1
except socket.timeout:
    pass
print(n, flush=True)
'''

UDP_SEND = r'''
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n, size, gap = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
t = time.time()
for i in range(n):
    body = i.to_bytes(4, "big")
    s.sendto(body + bytes([body[0]]) * (size - 4), (sys.argv[1], int(sys.argv[2])))
    if gap:
        time.sleep(gap)
print(n, time.time() - t, flush=True)
'''


def script(topo, name, text):
    path = os.path.join(topo.dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def start_sink(topo, ns, port, count, bind="0.0.0.0"):
    p = subprocess.Popen(["ip", "netns", "exec", topo.ns[ns], "/usr/bin/python3", script(topo, "sink.py", UDP_SINK),
                          str(port), str(count), bind], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def send(topo, ns, dst, port, count, size, gap):
    return sh(f"/usr/bin/python3 {script(topo, 'send.py', UDP_SEND)} {dst} {port} {count} {size} {gap}",
              ns=topo.ns[ns], timeout=120)


class Capture:
    def __init__(self, topo, iface, path):
        self.path = path
        self.p = subprocess.Popen(["ip", "netns", "exec", topo.ns["inet"], "tshark", "-q", "-n", "-i", iface,
                                   "-w", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while not os.path.exists(path) or os.path.getsize(path) == 0:
            if time.time() > deadline:
                raise RuntimeError("tshark did not start")
            time.sleep(0.2)
        time.sleep(1)

    def stop(self):
        time.sleep(0.5)
        self.p.terminate()
        self.p.wait(timeout=10)

    def rows(self, fields, display="ip"):
        r = sh(f"tshark -n -r {self.path} -Y '{display}' -T fields " + " ".join(f"-e {f}" for f in fields))
        return [l.split("\t") for l in r.stdout.splitlines() if l.strip()]


def main():
    if dp.dataplane_missing():
        return 77
    tag = f"espp{os.getpid() % 10000}"
    topo = Topology(dp.BUILD, prefix=tag)
    hq_sock = os.path.join(topo.dir, "hq.sock")
    br_sock = os.path.join(topo.dir, "branch.sock")
    topo.hq_config = os.path.join(topo.dir, "hq.yaml")
    topo.branch_config = os.path.join(topo.dir, "branch.yaml")
    make_config("site-to-site-hq.yaml", hq_sock, HQ_EXTRA, topo.hq_config)
    make_config("site-to-site-branch.yaml", br_sock, BRANCH_EXTRA, topo.branch_config)
    try:
        topo.create()
        sh("ip route add 192.168.1.0/24 via 198.51.100.1", ns=topo.ns["inet"])
        sh("ip route add 192.168.2.0/24 via 203.0.113.1", ns=topo.ns["inet"])
        sh("ip addr add 192.168.2.99/24 dev eth0", ns=topo.ns["host-branch"])
        sh("ip addr add 192.168.2.66/24 dev eth0", ns=topo.ns["host-branch"])
        topo.start_gateways()
        # Warm up ARP on every hop (the first packets wait in the gateways' ARP queues).
        sh("ping -c 3 -i 0.2 -W 2 192.168.2.10", ns=topo.ns["host-hq"], check=False)

        def both_ways_at_once():
            n, size, gap = 3000, 600, 0.0003
            for s in (hq_sock, br_sock):
                dp.cli(s, "clear counters")
            sinks = [start_sink(topo, "host-branch", 41001, n), start_sink(topo, "host-hq", 41002, n)]
            errors = []

            def run(ns, dst, port):
                try:
                    send(topo, ns, dst, port, n, size, gap)
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
            threads = [threading.Thread(target=run, args=("host-hq", "192.168.2.10", 41001)),
                       threading.Thread(target=run, args=("host-branch", "192.168.1.10", 41002))]
            t0 = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            took = time.time() - t0
            got = [int(p.communicate(timeout=30)[0].strip() or 0) for p in sinks]
            assert not errors, errors
            hq, br = dp.sa_table(hq_sock), dp.sa_table(br_sock)
            counts = {"hq encaps 0x1001": dp.sa_count(hq[("outbound", 0x1001)], "encaps"),
                      "branch decaps 0x1001": dp.sa_count(br[("inbound", 0x1001)], "decaps"),
                      "branch encaps 0x2001": dp.sa_count(br[("outbound", 0x2001)], "encaps"),
                      "hq decaps 0x2001": dp.sa_count(hq[("inbound", 0x2001)], "decaps"),
                      "received at branch host": got[0], "received at hq host": got[1]}
            print(f"     ({2 * n} datagrams of {size} bytes in {took:.1f}s: {counts})")
            wrong = {k: v for k, v in counts.items() if v != n}
            assert not wrong, f"want {n} each, got {wrong}"
            for name, s in (("hq", hq_sock), ("branch", br_sock)):
                # The hosts' kernels send IPv6 housekeeping now and then (MLD reports, router
                # solicitations) to groups the gateway did not join: dropped and counted as
                # multicast / router_discovery; not part of the load.
                housekeeping = ("not_ip", "multicast", "router_discovery")
                drops = {k: v for k, v in dp.dataplane_drops(s).items() if v and k not in housekeeping}
                assert not drops, f"{name} gateway drops: {drops}"
                for key, sa in dp.sa_table(s).items():
                    bad = {k: v for k, v in sa.get("drops", {}).items() if v}
                    assert not bad, f"{name} SA {key} drops: {bad}"
        case("workers: 1 under UDP load in both directions at once: every counter exact, no drops",
             both_ways_at_once)

        cap = Capture(topo, "inet-hq", os.path.join(topo.dir, "inet.pcap"))
        stats = {}
        try:
            dp.cli(hq_sock, "clear counters")
            dp.cli(br_sock, "clear counters")
            n = 20
            sink99 = start_sink(topo, "host-branch", 41003, n, bind="192.168.2.99")
            send(topo, "host-hq", "192.168.2.99", 41003, n, 200, 0.01)
            stats["bypass_got"] = int(sink99.communicate(timeout=30)[0].strip() or 0)
            stats["branch_drops_after_bypass"] = dp.dataplane_drops(br_sock)
            sink66 = start_sink(topo, "host-branch", 41004, n, bind="192.168.2.66")
            send(topo, "host-hq", "192.168.2.66", 41004, n, 200, 0.01)
            stats["discard_got"] = int(sink66.communicate(timeout=30)[0].strip() or 0)
            stats["hq_drops"] = dp.dataplane_drops(hq_sock)
            stats["hq_sas"] = dp.sa_table(hq_sock)
            r = sh("ping -c 3 -i 0.2 -W 2 192.168.2.99", ns=topo.ns["host-hq"], check=False)
            stats["ping99"] = r.stdout
        finally:
            cap.stop()
        rows = cap.rows(["ip.src", "ip.dst", "ip.proto", "ip.ttl", "udp.dstport"])

        def bypass_in_clear():
            clear = [r for r in rows if r[1] == "192.168.2.99" and r[2] == "17" and r[4] == "41003"]
            assert len(clear) == 20, f"{len(clear)} cleartext UDP packets to 192.168.2.99 on the internet, want 20"
            assert all(r[0] == "192.168.1.10" and r[3] == "63" for r in clear), clear[:3]
            encaps = dp.sa_count(stats["hq_sas"][("outbound", 0x1001)], "encaps")
            assert encaps == 0, f"HQ encrypted {encaps} packets of the bypass/discard flows"
        case("bypass policy: HQ sends 192.168.1.0/24 -> 192.168.2.99 in clear over the internet (capture)",
             bypass_in_clear)

        def bypass_delivered():
            got = stats["bypass_got"]
            drops = {k: v for k, v in stats["branch_drops_after_bypass"].items() if v}
            assert got == 20, (f"host 192.168.2.99 received {got}/20; branch gateway drops: {drops} "
                               "(its bypass policy 192.168.2.99/32 <-> 192.168.1.0/24 should admit this inbound "
                               "cleartext, RFC 4301 §4.4.1/§5.2: SPD entries apply to both directions)")
        case("bypass policy: the branch gateway's mirrored bypass admits the cleartext, host .99 receives it",
             bypass_delivered)

        def bypass_ping():
            assert " 0% packet loss" in stats["ping99"], stats["ping99"]
        case("bypass policy: ping 192.168.2.99 in clear both ways", bypass_ping)

        def discard():
            d = stats["hq_drops"].get("spd_discard", 0)
            assert d == 20, f"HQ spd_discard = {d}, want 20"
            assert stats["discard_got"] == 0, f"host .66 received {stats['discard_got']} discarded datagrams"
            leaked = [r for r in rows if r[1] == "192.168.2.66"]
            assert not leaked, f"{len(leaked)} packets to 192.168.2.66 on the internet"
        case("discard policy: 192.168.1.0/24 -> 192.168.2.66 dropped at HQ and counted (spd_discard)", discard)

        def still_protected():
            clear = [r for r in rows if r[1] == "192.168.2.10" or r[0] == "192.168.2.10"]
            assert not clear, f"cleartext of the protected flow on the internet: {clear[:3]}"
            r = sh("ping -c 3 -i 0.2 -W 2 192.168.2.10", ns=topo.ns["host-hq"], check=False)
            assert " 0% packet loss" in r.stdout, r.stdout
        case("the rest of 192.168.2.0/24 stays protected by the SA", still_protected)

        def policy_naming_a_host_sa():
            # An explicit protect policy names an outbound SA whose own selectors are one host (its
            # implied policy lives in the host table; the explicit one must lie inside the SA's
            # selectors, as in a file): the compiled SPD holds that SA's address, so
            # deleting the SA must take it out of the policy (no ESP with the deleted SA's SPI,
            # drops counted as no outbound SA) and adding it again must put it back.
            c = dp.Control(hq_sock)
            sa = {"spi": "0x1077", "direction": "outbound", "protocol": "esp", "mode": "tunnel",
                  "source": "198.51.100.1", "destination": "203.0.113.1", "encryption": "aes128gcm16",
                  "key": "0x" + "77" * 20, "selectors": {"local": "192.168.1.0/24", "remote": "192.168.2.77/32"}}
            r = c.call("add-sa", {"sa": sa})
            assert r["ok"], r
            r = c.call("add-policy", {"policy": {"local": "192.168.1.0/24", "remote": "192.168.2.77/32",
                                                 "action": "protect", "spi": "0x1077", "priority": 10}})
            assert r["ok"], r
            cap2 = Capture(topo, "inet-hq", os.path.join(topo.dir, "inet-policy.pcap"))
            try:
                send(topo, "host-hq", "192.168.2.77", 41005, 5, 100, 0.02)
                time.sleep(0.5)
                r = c.call("delete-sa", {"direction": "outbound", "spi": "0x1077"})
                assert r["ok"], r
                before = dp.dataplane_drops(hq_sock).get("no_outbound_sa", 0)
                send(topo, "host-hq", "192.168.2.77", 41005, 5, 200, 0.02)
                time.sleep(0.5)
                after = dp.dataplane_drops(hq_sock).get("no_outbound_sa", 0)
                r = c.call("add-sa", {"sa": sa})
                assert r["ok"], r
                send(topo, "host-hq", "192.168.2.77", 41005, 5, 300, 0.02)
                time.sleep(0.5)
            finally:
                cap2.stop()
            esp = cap2.rows(["esp.spi", "ip.len"], display="esp")
            by_len = {}
            for spi, length in esp:
                if int(spi, 16) == 0x1077:
                    by_len[int(length)] = by_len.get(int(length), 0) + 1
            phases = {"before delete": sum(v for k, v in by_len.items() if k < 200),
                      "after delete": sum(v for k, v in by_len.items() if 200 <= k < 300),
                      "re-added": sum(v for k, v in by_len.items() if k >= 300)}
            clear = cap2.rows(["ip.dst"], display="ip.dst == 192.168.2.77")
            print(f"     ESP 0x1077 per phase {phases}; no_outbound_sa {before} -> {after}; cleartext {len(clear)}")
            assert phases == {"before delete": 5, "after delete": 0, "re-added": 5}, phases
            assert after - before == 5, f"no_outbound_sa grew by {after - before}, want 5"
            assert not clear, f"{len(clear)} cleartext packets to 192.168.2.77 on the internet"
        case("a protect policy naming a /32 SA by SPI follows the SA's delete and re-add", policy_naming_a_host_sa)
    except Exception as e:  # noqa: BLE001
        results.append(("set-up", False))
        print(f"FAIL set-up: {e}", flush=True)
        traceback.print_exc()
        for g in ("gw-hq", "gw-branch"):
            print(f"--- {g} log ---\n{topo.log(g)[-3000:]}")
    finally:
        topo.teardown()
        dp.remove_runtime_dir(control_socket=hq_sock)
        dp.remove_runtime_dir(control_socket=br_sock)
    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
