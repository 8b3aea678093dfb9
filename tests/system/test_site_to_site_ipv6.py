#!/usr/bin/python3
"""System test: IPv6 on espresso-dp's own interfaces, two gateways with static SAs (network namespaces).

    host-hq 2001:db8:1::10 -- [hq-lan 2001:db8:1::1 + 192.168.1.1] gw-hq [hq-wan 2001:db8:ff1::1] -- inet (IPv6 router)
    host-branch 2001:db8:2::10 -- [branch-lan 2001:db8:2::1 + 192.168.2.1] gw-branch [branch-wan 2001:db8:ff2::1] -- inet

The LANs are dual stack. Two runs: first the internet segment is IPv6 only (the WAN interfaces have
no IPv4 address) and each gateway runs two worker lcores (inbound SA owner steering): IPv6 LANs over
IPv6 outer (SPI 0x3001/0x4001) and IPv4 LANs over IPv6 outer, 4-in-6 (SPI 0x1001/0x2001); then it is
IPv4 only (198.51.100.1, 203.0.113.1) with one worker: 6-in-4 and 4-in-4. Checked against tools nobody here wrote (ping, the Linux IPv6 stack and its Neighbor
Discovery, tshark's ESP decryption, scapy): ping -6 / ping / UDP / TCP across both ways (the first
packets wait for NDP), only ESP on the internet segment and tshark decrypts it with the configured keys
(ICV good), ping -6 to every gateway address (global and link-local, answered by the kernel behind
the TAP after the data plane answered Neighbor Discovery), UDP to the IKE ports of the gateway's IPv6
address reaching a socket behind the TAP and its answer coming back, Packet Too Big with the MTU that
fits after encapsulation and that MTU then working, Packet Too Big for cleartext forwarded onto the
smaller-MTU WAN link (mtu 1400 in the IPv6-outer run), Time Exceeded for hop limit 1, and an invalid
Neighbor Solicitation (hop limit 254) refused and counted.

Run as root: ESPRESSO_BUILD=build flock /tmp/espresso-systest.lock /usr/bin/python3 tests/system/test_site_to_site_ipv6.py
"""
import json
import os
import re
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Topology, sh  # noqa: E402

BUILD = os.environ.get("ESPRESSO_BUILD", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../build"))

KEYS = {  # spi -> key (aes128gcm16: 16-byte key + 4-byte salt); test keys only
    0x1001: "0x00112233445566778899aabbccddeeff01020304",
    0x2001: "0xffeeddccbbaa99887766554433221100a0b0c0d0",
    0x3001: "0x0f1e2d3c4b5a69788796a5b4c3d2e1f001010101",
    0x4001: "0xa1a2a3a4a5a6a7a8a9aaabacadaeafb002020202",
}
WAN6 = ("2001:db8:ff1::1", "2001:db8:ff2::1")
WAN4 = ("198.51.100.1", "203.0.113.1")
HOST_HQ_MAC = "02:00:00:00:00:10"


def sa(spi, direction, src, dst, local, remote):
    return f"""  - spi: {spi:#06x}
    direction: {direction}
    protocol: esp
    mode: tunnel
    source: "{src}"
    destination: "{dst}"
    encryption: aes128gcm16
    key: {KEYS[spi]}
    integrity: none
    selectors: {{ local: "{local}", remote: "{remote}" }}
"""


def gateway_config(side, outer=6, workers=1, link_local_via=None):
    hq = side == "hq"
    wan = WAN6 if outer == 6 else WAN4
    me, peer = (wan[0], wan[1]) if hq else (wan[1], wan[0])
    n, m = (1, 2) if hq else (2, 1)
    out_v6, in_v6 = (0x3001, 0x4001) if hq else (0x4001, 0x3001)
    out_v4, in_v4 = (0x1001, 0x2001) if hq else (0x2001, 0x1001)
    if outer == 6:
        wan_address = f'"{me}/64"'
        route = f'{{ destination: "{peer}/64", via: "{me[:-1]}fe" }}'.replace("::1/64", "::/64")
        if link_local_via:  # the router's link-local address, as routers announce themselves
            route = f'{{ destination: "{peer[:-1]}/64", via: "{link_local_via}", interface: outside }}'
    else:
        wan_address = f"{me}/24"
        route = f'{{ destination: {peer[:-1]}0/24, via: {me[:-1]}254 }}'
    # With an IPv4 internet segment, gw-hq knows its LAN host's MAC statically (and must never
    # solicit it); otherwise every next hop is resolved by Neighbor Discovery.
    neighbors = ""
    if outer == 4 and hq:
        neighbors = f'neighbors:\n  - {{ address: "2001:db8:1::10", mac: "{HOST_HQ_MAC}", interface: inside }}'
    return f"""dataplane:
  workers: {workers}
  hugepages: false
  idle: adaptive
  control-socket: /run/espresso/{side}.sock
interfaces:
  - name: outside
    device: "net_af_packet0,iface={side}-wan"
    address: {wan_address}
    mac: "02:00:00:00:0{n}:01"
    mtu: {1400 if outer == 6 else 1500}
  - name: inside
    device: "net_af_packet1,iface={side}-lan"
    address: [192.168.{n}.1/24, "2001:db8:{n}::1/64"]
routes:
  - {route}
{neighbors}
security-associations:
{sa(out_v6, "outbound", me, peer, f"2001:db8:{n}::/64", f"2001:db8:{m}::/64")}
{sa(in_v6, "inbound", peer, me, f"2001:db8:{n}::/64", f"2001:db8:{m}::/64")}
{sa(out_v4, "outbound", me, peer, f"192.168.{n}.0/24", f"192.168.{m}.0/24")}
{sa(in_v4, "inbound", peer, me, f"192.168.{n}.0/24", f"192.168.{m}.0/24")}
"""


class Topology6(Topology):
    """The site-to-site topology with IPv6 added: hosts and the internet router get IPv6 addresses
    (nodad: no 1-2 s of tentative addresses), the gateways' veths get none (the data plane owns those
    links; the gateway namespace's kernel must not send its own DAD, RS or MLD there)."""

    def create(self):
        super().create()
        ns = self.ns
        for gw, ifs in ((ns["gw-hq"], ("hq-lan", "hq-wan")), (ns["gw-branch"], ("branch-lan", "branch-wan"))):
            for i in ifs:
                sh(f"sysctl -qw net.ipv6.conf.{i}.disable_ipv6=1", ns=gw)
        sh(f"ip link set eth0 address {HOST_HQ_MAC}", ns=ns["host-hq"])
        sh("ip -6 addr add 2001:db8:1::10/64 dev eth0 nodad", ns=ns["host-hq"])
        sh("ip -6 route add default via 2001:db8:1::1", ns=ns["host-hq"])
        sh("ip -6 addr add 2001:db8:2::10/64 dev eth0 nodad", ns=ns["host-branch"])
        sh("ip -6 route add default via 2001:db8:2::1", ns=ns["host-branch"])
        sh("ip -6 addr add 2001:db8:ff1::fe/64 dev inet-hq nodad", ns=ns["inet"])
        sh("ip -6 addr add 2001:db8:ff2::fe/64 dev inet-branch nodad", ns=ns["inet"])
        sh("sysctl -qw net.ipv6.conf.all.forwarding=1", ns=ns["inet"])


results = []


def case(name):
    def wrap(fn):
        def run(*a):
            try:
                fn(*a)
                results.append((name, True, ""))
                print(f"PASS {name}", flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure and go on
                results.append((name, False, str(e)))
                print(f"FAIL {name}: {e}", flush=True)
                traceback.print_exc()
        return run
    return wrap


def write_script(topo, name, text):
    path = os.path.join(topo.dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def sa_counters(topo, gw):
    out = json.loads(topo.cli(gw, "--json show crypto ipsec sa"))
    sas = out["sas"] if isinstance(out, dict) and "sas" in out else out
    return {(s["direction"], int(s["spi"], 0) if isinstance(s["spi"], str) else s["spi"]): s for s in sas}


def counter(s, name):
    if "counters" in s and name in s["counters"]:
        return s["counters"][name]
    return s.get("drops", {}).get(name, 0)


def reassembled(topo, gw):
    """Datagrams the gateway's workers reassembled from fragments addressed to it."""
    return sum(w.get("reassembled", 0) for w in json.loads(topo.cli(gw, "--json show dataplane"))["workers"])


def dataplane_drops(topo, gw):
    out = json.loads(topo.cli(gw, "--json show dataplane"))
    rows = out["workers"] if isinstance(out, dict) else out
    total = {}
    for row in rows:
        for k, v in row.get("drops", {}).items():
            total[k] = total.get(k, 0) + v
    return total


PY_UDP_SINK = r'''
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sys.argv[1])))
s.settimeout(5)
print("bound", flush=True)
n = 0
try:
    while n < int(sys.argv[2]):
        s.recv(2048); n += 1
except socket.timeout:
    pass
print(n)
'''

PY_UDP_SEND = r'''
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(bytes([i % 256]) * int(sys.argv[4]), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.002)
'''

PY_TCP_SINK = r'''
import socket, sys, hashlib
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(1); s.settimeout(20)
print("bound", flush=True)
c, _ = s.accept(); c.settimeout(20)
h = hashlib.sha256(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest())
'''

PY_TCP_SEND = r'''
import socket, sys, hashlib
data = bytes((i * 7) % 251 for i in range(int(sys.argv[3])))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
print(len(data), hashlib.sha256(data).hexdigest())
'''


PY_UDP_ECHO = r'''
import select, socket, sys
socks = []
for port in (500, 4500):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], port))
    socks.append(s)
print("bound", flush=True)
answered = 0
while answered < 3:
    ready, _, _ = select.select(socks, [], [], 5)
    if not ready:
        break
    for s in ready:
        data, peer = s.recvfrom(65535)
        # A large datagram gets a short answer: what is tested is that it arrived whole.
        s.sendto(b"echo:" + data if len(data) < 1000 else b"whole:%d" % len(data), peer)
        answered += 1
print(answered)
'''

PY_UDP_ASK = r'''
import socket, sys
out = []
for port, payload in ((500, b"IKE_SA_INIT?"), (4500, b"\x00\x00\x00\x00" + b"IKE behind the non-ESP marker")):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(payload, (sys.argv[1], port))
    try:
        out.append(s.recv(65535) == b"echo:" + payload)
    except socket.timeout:
        out.append(False)
print(" ".join(map(str, out)))
'''

# An IKE_AUTH-with-certificates sized message (3076 bytes) on 4500 with the non-ESP marker, sent by
# scapy as IPv6 fragments (fragment6) from a socket's port, so the answer reaches that socket. IPv6
# fragments reach espresso-dp as they are (af_packet's defragmentation is IPv4-only); the data plane
# reassembles them to see whether they are ESP-in-UDP and splits the datagram again for the TAP.
PY_UDP_FRAG_ASK = r'''
import logging, socket, sys
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.all import IPv6, IPv6ExtHdrFragment, UDP, Raw, fragment6, send
dst, src = sys.argv[1], sys.argv[2]
payload = b"\x00\x00\x00\x00" + bytes(range(256)) * 12
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((src, 0))
s.settimeout(3)
whole = IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=0x5eed) / UDP(sport=s.getsockname()[1], dport=4500) / Raw(payload)
send(fragment6(whole, 1280), verbose=0)
try:
    print(s.recv(65535) == b"whole:%d" % len(payload))
except socket.timeout:
    print(False)
'''


def udp_transfer(topo, src_ns, dst_ns, dst_ip, port, count, size=200):
    sink = subprocess.Popen(["ip", "netns", "exec", topo.ns[dst_ns], "/usr/bin/python3", "-u",
                             write_script(topo, "udp_sink.py", PY_UDP_SINK), str(port), str(count)],
                            stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "bound", "UDP sink did not start"
    sh(f"/usr/bin/python3 {write_script(topo, 'udp_send.py', PY_UDP_SEND)} {dst_ip} {port} {count} {size}",
       ns=topo.ns[src_ns])
    out, _ = sink.communicate(timeout=30)
    return int(out.strip() or 0)


def tcp_transfer(topo, src_ns, dst_ns, dst_ip, port, nbytes):
    sink = subprocess.Popen(["ip", "netns", "exec", topo.ns[dst_ns], "/usr/bin/python3", "-u",
                             write_script(topo, "tcp_sink.py", PY_TCP_SINK), str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "bound", "TCP sink did not start"
    sent = sh(f"/usr/bin/python3 {write_script(topo, 'tcp_send.py', PY_TCP_SEND)} {dst_ip} {port} {nbytes}",
              ns=topo.ns[src_ns], capture=True).stdout.split()
    got, _ = sink.communicate(timeout=60)
    return sent, got.split()


def ping(topo, ns, target, args="-c 3 -i 0.2 -W 2"):
    six = "-6 " if ":" in target else ""
    return sh(f"ping {six}{args} {target}", ns=topo.ns[ns], capture=True, check=False)


def run(outer, workers):
    """One topology: the internet segment in IPv`outer`, `workers` worker lcores per gateway."""
    import tempfile
    cfgdir = tempfile.mkdtemp(prefix="espresso-v6cfg-")
    paths = {side: os.path.join(cfgdir, f"{side}.yaml") for side in ("hq", "branch")}
    HQ_WAN, BR_WAN = WAN6 if outer == 6 else WAN4
    tag = f"[{'6' if outer == 6 else '4'}-outer, {workers} worker{'s' if workers > 1 else ''}] "

    def case_(name):
        return case(tag + name)

    topo = Topology6(BUILD, prefix=f"es6t{outer}{os.getpid() % 1000}", hq_config=paths["hq"],
                     branch_config=paths["branch"])
    try:
        topo.create()
        # With an IPv6 internet segment, gw-hq reaches the branch through the router's link-local
        # address (routes: via fe80::..., interface: outside); gw-branch through its global one.
        via = None
        if outer == 6:
            out = sh("ip -6 -o addr show dev inet-hq scope link", ns=topo.ns["inet"], capture=True).stdout
            via = re.search(r"inet6 (fe80::[0-9a-f:]+)/", out).group(1)
        for side in ("hq", "branch"):
            with open(paths[side], "w") as f:
                f.write(gateway_config(side, outer, workers, via if side == "hq" else None))
        lan_capture = os.path.join(topo.dir, "hq-lan.pcap")
        lan_tshark = None
        if outer == 4:
            lan_tshark = subprocess.Popen(["ip", "netns", "exec", topo.ns["host-hq"], "tshark", "-q", "-i", "eth0",
                                           "-f", "icmp6", "-w", lan_capture],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)
        topo.start_gateways()

        @case_("ping -6 and ping across the tunnel, both ways, nothing lost while NDP/ARP resolve")
        def _():
            # The branch host first: gw-hq must reach host-hq before host-hq said anything (so it
            # cannot have learned it from host-hq's own Neighbor Solicitation).
            for ns, target in (("host-branch", "2001:db8:1::10"), ("host-hq", "2001:db8:2::10"),
                               ("host-hq", "192.168.2.10"), ("host-branch", "192.168.1.10")):
                r = ping(topo, ns, target, "-c 5 -i 0.2 -W 2")
                assert " 0% packet loss" in r.stdout, f"{ns} -> {target}: {r.stdout}{r.stderr}"
        _()

        if lan_tshark is not None:
            time.sleep(1)
            lan_tshark.terminate()
            lan_tshark.wait(timeout=10)

            @case_("static IPv6 neighbor: gw-hq never solicits its LAN host, traffic to it flows")
            def _():
                r = sh(f"tshark -r {lan_capture} -Y icmpv6.type==135 -T fields -e eth.src -e icmpv6.nd.ns.target_address",
                       capture=True)
                rows = [l.split("\t") for l in r.stdout.splitlines() if l.strip()]
                asked = [x for x in rows if x[1] == "2001:db8:1::10"]
                assert not asked, f"gw-hq sent Neighbor Solicitations for its static neighbor: {asked}"
                assert any(x[1] == "2001:db8:1::1" for x in rows), f"capture saw no NS at all (host -> gateway): {rows}"
            _()

        @case_("Neighbor Discovery and ping -6 to every gateway address (global and link-local)")
        def _():
            # (With an IPv4 internet segment the WAN ports still have their link-local address.)
            targets = [("inet", HQ_WAN), ("inet", BR_WAN), ("host-hq", "2001:db8:1::1"),
                       ("host-branch", "2001:db8:2::1"), ("host-hq", "192.168.1.1"),
                       # link-local: fe80:: + EUI-64 of the configured MAC 02:00:00:00:01:01
                       ("inet", "fe80::ff:fe00:101%inet-hq")]
            for ns, target in targets:
                r = ping(topo, ns, target)
                assert " 0% packet loss" in r.stdout, f"{ns} -> {target}: {r.stdout}{r.stderr}"
            neigh = sh(f"ip neigh show {HQ_WAN}", ns=topo.ns["inet"], capture=True).stdout.lower()
            assert "02:00:00:00:01:01" in neigh, f"inet's neighbor entry for gw-hq: {neigh}"
            shown = json.loads(topo.cli("gw-hq", "--json show interfaces"))
            shown = {i["name"]: i for i in (shown["interfaces"] if isinstance(shown, dict) else shown)}
            assert shown["outside"]["address"] == HQ_WAN, shown["outside"]
            assert shown["inside"]["address"] == "192.168.1.1", shown["inside"]
            assert shown["inside"].get("address6") == "2001:db8:1::1", shown["inside"]
            assert shown["inside"].get("prefix-length6") == 64, shown["inside"]
        _()

        if outer == 6:
            @case_("IKE ports (UDP 500, and 4500 with the non-ESP marker, also 3076 bytes in scapy-made fragments) "
                   "on the IPv6 address reach the kernel and back; the fragments are reassembled by espresso-dp")
            def _():
                before = reassembled(topo, "gw-hq")
                echo = subprocess.Popen(["ip", "netns", "exec", topo.ns["gw-hq"], "/usr/bin/python3", "-u",
                                         write_script(topo, "udp_echo.py", PY_UDP_ECHO), HQ_WAN],
                                        stdout=subprocess.PIPE, text=True)
                assert echo.stdout.readline().strip() == "bound", "echo server did not start"
                out = sh(f"/usr/bin/python3 {write_script(topo, 'udp_ask.py', PY_UDP_ASK)} {HQ_WAN}",
                         ns=topo.ns["inet"], capture=True).stdout.split()
                route = sh(f"ip -6 route get {HQ_WAN}", ns=topo.ns["inet"], capture=True).stdout
                src = re.search(r" src ([0-9a-f:]+)", route).group(1)
                out += sh(f"/usr/bin/python3 {write_script(topo, 'udp_frag_ask.py', PY_UDP_FRAG_ASK)} {HQ_WAN} {src}",
                          ns=topo.ns["inet"], capture=True).stdout.split()
                echo.communicate(timeout=15)
                if out != ["True", "True", "True"]:
                    shown = json.loads(topo.cli("gw-hq", "--json show dataplane"))["workers"]
                    detail = [{k: v for k, v in w.items() if k != "drops"} | {"drops": {k: v for k, v in
                              w.get("drops", {}).items() if v}} for w in shown]
                    raise AssertionError(f"answers on 500, 4500, 4500 (fragmented): {out}; gw-hq: {detail}")
                after = reassembled(topo, "gw-hq")
                assert after - before == 1, f"gw-hq reassembled {after - before} datagrams, want 1"
            _()

        capture = os.path.join(topo.dir, "inet.pcap")
        tshark = subprocess.Popen(["ip", "netns", "exec", topo.ns["inet"], "tshark", "-q", "-i", "inet-hq",
                                   "-w", capture], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)
        topo.cli("gw-hq", "clear counters")
        topo.cli("gw-branch", "clear counters")

        @case_("UDP over IPv6 both ways; SA counters equal what was sent")
        def _():
            n = 200
            got = udp_transfer(topo, "host-hq", "host-branch", "2001:db8:2::10", 40001, n)
            assert got == n, f"branch host received {got}/{n}"
            got = udp_transfer(topo, "host-branch", "host-hq", "2001:db8:1::10", 40002, n)
            assert got == n, f"hq host received {got}/{n}"
            hq = sa_counters(topo, "gw-hq")
            br = sa_counters(topo, "gw-branch")
            assert counter(hq[("outbound", 0x3001)], "encaps") == n, hq[("outbound", 0x3001)]
            assert counter(br[("inbound", 0x3001)], "decaps") == n, br[("inbound", 0x3001)]
            assert counter(br[("outbound", 0x4001)], "encaps") == n, br[("outbound", 0x4001)]
            assert counter(hq[("inbound", 0x4001)], "decaps") == n, hq[("inbound", 0x4001)]
        _()

        @case_("TCP over IPv6 across the tunnel, data intact")
        def _():
            sent, got = tcp_transfer(topo, "host-hq", "host-branch", "2001:db8:2::10", 40003, 2_000_000)
            assert sent[:2] == got[:2], f"sent {sent} received {got}"
            sent, got = tcp_transfer(topo, "host-branch", "host-hq", "2001:db8:1::10", 40004, 500_000)
            assert sent[:2] == got[:2], f"sent {sent} received {got}"
        _()

        r = ping(topo, "host-hq", "192.168.2.10")  # some 4-in-6 traffic in the capture too
        time.sleep(1)
        tshark.terminate()
        tshark.wait(timeout=10)

        @case_("internet segment carries only ESP, which tshark decrypts with the configured keys")
        def _():
            # Every address field (tshark prints a field once, however often it is asked for), then
            # what must not be there: LAN addresses of either family (cleartext); ARP/ND aside.
            r = sh(f"tshark -r {capture} -T fields -e ipv6.src -e ipv6.dst -e ipv6.nxt -e ip.src -e ip.dst "
                   f"-e ip.proto -e icmpv6.type -e arp.opcode", capture=True)
            rows = [(l.split("\t") + [""] * 8)[:8] for l in r.stdout.splitlines() if l.strip()]
            o = 0 if outer == 6 else 3
            tunnel = [x for x in rows if {x[o].split(",")[0], x[o + 1].split(",")[0]} == {HQ_WAN, BR_WAN}]
            assert len(tunnel) > 400, f"only {len(tunnel)} tunnel packets captured"
            assert all(x[o + 2].split(",")[0] == "50" for x in tunnel), {x[o + 2] for x in tunnel}
            lan_prefixes = ("2001:db8:1:", "2001:db8:2:", "192.168.")
            lan = [x for x in rows if any(a.startswith(lan_prefixes) for f in (0, 1, 3, 4) for a in x[f].split(","))]
            assert not lan, f"cleartext LAN packets on the internet segment: {lan[:3]}"
            other = [x for x in rows if x not in tunnel and x[6] not in ("135", "136") and not x[7]]
            assert not other, f"non-ESP, non-ND/ARP packets on the internet segment: {other[:5]}"
            uat = []
            family = "IPv6" if outer == 6 else "IPv4"
            for spi, src, dst in ((0x3001, HQ_WAN, BR_WAN), (0x4001, BR_WAN, HQ_WAN),
                                  (0x1001, HQ_WAN, BR_WAN), (0x2001, BR_WAN, HQ_WAN)):
                uat += ["-o", f'uat:esp_sa:"{family}","{src}","{dst}","{spi:#010x}",'
                              f'"AES-GCM with 16 octet ICV [RFC4106]","{KEYS[spi]}","NULL",""']
            r = subprocess.run(["tshark", "-r", capture, "-o", "esp.enable_encryption_decode:TRUE",
                                "-o", "esp.enable_authentication_check:TRUE", *uat, "-Y", "esp",
                                "-T", "fields", "-e", "esp.spi", "-e", "esp.icv_good", "-e", "udp.dstport",
                                "-e", "ip.dst"],
                               capture_output=True, text=True, check=True)
            rows = [l.split("\t") for l in r.stdout.splitlines() if l.strip()]
            bad = [x for x in rows if x[1] != "1"]
            assert rows and not bad, f"ICV not good on {len(bad)} of {len(rows)}: {bad[:3]}"
            assert any(x[2] in ("40001", "40002") for x in rows), "decrypted IPv6 payload not visible"
            assert any(len(x) > 3 and any(a.startswith("192.168.") for a in x[3].split(",")) for x in rows), \
                "no decrypted IPv4-in-ESP packet"
        _()

        @case_("PMTU: ICMPv6 Packet Too Big with the MTU that fits, and that MTU then works")
        def _():
            sh("ip -6 route flush cache", ns=topo.ns["host-hq"], check=False)
            r = ping(topo, "host-hq", "2001:db8:2::10", "-c 1 -W 2 -M do -s 1452")
            text = r.stdout + r.stderr
            m = re.search(r"[Pp]acket too big[:,]? *mtu[= ]*(\d+)", text)
            assert m, f"no Packet Too Big reported: {text}"
            mtu = int(m.group(1))
            assert 1280 <= mtu < 1500, f"reported MTU {mtu}"
            # The kernel cached the reported MTU: the next full-size ping is sent at that size (the
            # sender fragments, RFC 8201) and gets through; one that exactly fits gets through too.
            r = ping(topo, "host-hq", "2001:db8:2::10", "-c 2 -i 0.3 -W 2 -M do " + f"-s {mtu - 48}")
            assert " 0% packet loss" in r.stdout, f"ping with {mtu}-byte packets: {r.stdout}{r.stderr}"
            r = ping(topo, "host-hq", "2001:db8:2::10", "-c 1 -W 2 -M do " + f"-s {mtu - 47}")
            assert "0 received" in r.stdout or "too big" in (r.stdout + r.stderr).lower() or "too long" in (r.stdout + r.stderr).lower(), \
                f"a packet one byte over the reported MTU went through: {r.stdout}"
            drops = dataplane_drops(topo, "gw-hq")
            assert drops.get("too_big", 0) >= 1, drops
        _()

        if outer == 4:
            return  # what follows does not depend on the outer family

        @case_("cleartext IPv6 forwarded onto a smaller-MTU link gets Packet Too Big with that link's MTU")
        def _():
            # The WAN port has mtu 1400 (the veth 1500): a 1500-byte packet from the HQ LAN to the
            # internet router, which no policy protects, is forwarded like a router would, and a
            # router never fragments IPv6 (RFC 8200 §5).
            before = dataplane_drops(topo, "gw-hq").get("too_big", 0)
            r = ping(topo, "host-hq", "2001:db8:ff1::fe", "-c 1 -W 2 -M do -s 1452")
            text = r.stdout + r.stderr
            m = re.search(r"[Pp]acket too big[:,]? *mtu[= ]*(\d+)", text)
            assert m and int(m.group(1)) == 1400, f"expected Packet Too Big with mtu 1400: {text}"
            after = dataplane_drops(topo, "gw-hq").get("too_big", 0)
            assert after == before + 1, f"too_big {before} -> {after}"
        _()

        @case_("hop limit 1: ICMPv6 Time Exceeded from the gateway, counted")
        def _():
            before = dataplane_drops(topo, "gw-hq").get("ttl_exceeded", 0)
            r = ping(topo, "host-hq", "2001:db8:2::10", "-c 1 -W 2 -t 1")
            text = (r.stdout + r.stderr).lower()
            assert "time exceeded" in text and "2001:db8:1::1" in text, text
            after = dataplane_drops(topo, "gw-hq").get("ttl_exceeded", 0)
            assert after == before + 1, f"ttl_exceeded {before} -> {after}"
        _()

        @case_("invalid Neighbor Solicitation (hop limit 254) refused and counted; a valid one answered")
        def _():
            inject = write_script(topo, "ns.py", f"""
import sys
from scapy.all import Ether, IPv6, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, srp1, sendp, get_if_hwaddr
mac = get_if_hwaddr("inet-hq")
def ns(hlim):
    return (Ether(src=mac, dst="33:33:ff:00:00:01") / IPv6(src="2001:db8:ff1::fe", dst="ff02::1:ff00:1", hlim=hlim)
            / ICMPv6ND_NS(tgt="{HQ_WAN}") / ICMPv6NDOptSrcLLAddr(lladdr=mac))
sendp(ns(254), iface="inet-hq", verbose=False)
a = srp1(ns(255), iface="inet-hq", timeout=3, verbose=False)
print("answered" if a is not None and a.haslayer("ICMPv6ND_NA") and a["ICMPv6ND_NA"].tgt == "{HQ_WAN}" else "silent")
""")
            before = dataplane_drops(topo, "gw-hq").get("nd_invalid", 0)
            out = sh(f"/usr/bin/python3 {inject}", ns=topo.ns["inet"], capture=True).stdout
            assert "answered" in out, out
            time.sleep(0.3)
            after = dataplane_drops(topo, "gw-hq").get("nd_invalid", 0)
            assert after == before + 1, f"nd_invalid {before} -> {after}"
        _()

        print(topo.cli("gw-hq", "show dataplane"))
        print(topo.cli("gw-hq", "show crypto ipsec sa"))
    except Exception as e:  # noqa: BLE001
        results.append((tag + "topology", False, str(e)))
        traceback.print_exc()
    finally:
        for g in ("gw-hq", "gw-branch"):
            if any(not ok for _, ok, _ in results):
                print(f"--- {g} log ---\n{topo.log(g)}")
        topo.teardown()



def ike_gateway_config(side):
    """IKEv2 over the IPv6 internet segment: no static SAs; espresso-ike negotiates an IPv6 Child SA
    and a 4-in-6 one (IPv4 LANs) between the gateways' IPv6 WAN addresses."""
    hq = side == "hq"
    me, peer = (WAN6[0], WAN6[1]) if hq else (WAN6[1], WAN6[0])
    n, m = (1, 2) if hq else (2, 1)
    start = "\n          start: immediately" if hq else ""
    return f"""dataplane:
  workers: 1
  hugepages: false
  idle: adaptive
  control-socket: /run/espresso/{side}.sock
interfaces:
  - name: outside
    device: "net_af_packet0,iface={side}-wan"
    address: "{me}/64"
    mac: "02:00:00:00:0{n}:01"
  - name: inside
    device: "net_af_packet1,iface={side}-lan"
    address: [192.168.{n}.1/24, "2001:db8:{n}::1/64"]
routes:
  - {{ destination: "{peer[:-1]}/64", via: "{me[:-1]}fe" }}
ike:
  peers:
    - name: other
      local-address: "{me}"
      remote-address: "{peer}"
      proposals: [aes256-sha256-ecp256]
      auth: {{ method: psk, secret: "v6-test-only-Zq8pL2" }}
      dpd: {{ interval: 0 }}
      tunnels:
        - name: v6
          local-ts: ["2001:db8:{n}::/64"]
          remote-ts: ["2001:db8:{m}::/64"]
          esp-proposals: [aes256gcm16]{start}
        - name: v4
          local-ts: [192.168.{n}.0/24]
          remote-ts: [192.168.{m}.0/24]
          esp-proposals: [aes256gcm16]{start}
"""


def run_ike():
    """espresso-ike on both gateways negotiates over IPv6 (IKE on UDP 500 of the WAN addresses through
    the TAPs), installs an IPv6 and a 4-in-6 Child SA; traffic crosses both ways."""
    import tempfile
    cfgdir = tempfile.mkdtemp(prefix="espresso-v6ike-")
    paths = {side: os.path.join(cfgdir, f"{side}.yaml") for side in ("hq", "branch")}
    for side in ("hq", "branch"):
        with open(paths[side], "w") as f:
            f.write(ike_gateway_config(side))
    topo = Topology6(BUILD, prefix=f"es6i{os.getpid() % 1000}", hq_config=paths["hq"], branch_config=paths["branch"])
    try:
        topo.create()
        topo.start_gateways()
        topo.start_ike()

        @case("[IKEv2 over IPv6] both Child SAs up, IKE SA between the IPv6 WAN addresses")
        def _():
            deadline = time.time() + 30
            sas = []
            while time.time() < deadline:
                out = topo.cli("gw-hq", "--json show crypto ikev2 sa", check=False)
                try:
                    sas = json.loads(out)["ike-sas"]
                except (ValueError, KeyError):
                    sas = []
                if sas and sas[0]["state"] == "READY" and len(sas[0]["children"]) == 2:
                    break
                time.sleep(0.3)
            assert sas and sas[0]["state"] == "READY" and len(sas[0]["children"]) == 2, \
                f"{sas}\n{topo.log('ike-gw-hq')[-3000:]}"
            assert WAN6[1] in sas[0]["remote"] and WAN6[0] in sas[0]["local"], sas[0]
            isakmp = topo.cli("gw-hq", "show crypto isakmp sa")
            assert "QM_IDLE" in isakmp and WAN6[1] in isakmp, isakmp
            assert len(sa_counters(topo, "gw-branch")) == 4, topo.cli("gw-branch", "show crypto ipsec sa")
        _()

        @case("[IKEv2 over IPv6] ping -6 and 4-in-6 ping across both ways")
        def _():
            for ns, target in (("host-hq", "2001:db8:2::10"), ("host-branch", "2001:db8:1::10"),
                               ("host-hq", "192.168.2.10"), ("host-branch", "192.168.1.10")):
                r = ping(topo, ns, target, "-c 5 -i 0.2 -W 2")
                assert " 0% packet loss" in r.stdout, f"{ns} -> {target}: {r.stdout}{r.stderr}"
            encaps = sum(counter(s, "encaps") for (d, _), s in sa_counters(topo, "gw-hq").items() if d == "outbound")
            assert encaps >= 20, sa_counters(topo, "gw-hq")
        _()
    except Exception as e:  # noqa: BLE001
        results.append(("[IKEv2 over IPv6] topology", False, str(e)))
        traceback.print_exc()
    finally:
        if any(not ok for _, ok, _ in results):
            for name in ("ike-gw-hq", "ike-gw-branch"):
                print(f"--- {name} log ---\n{topo.log(name)[-4000:]}")
        topo.teardown()


def main():
    # Two workers with the IPv6 outer header (inbound ESP over IPv6 handed to its SA's owner worker),
    # one with IPv4 (test_site_to_site_two_workers.py covers two workers there).
    run(6, 2)
    run(4, 1)
    run_ike()
    passed = sum(1 for r in results if r[1])
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
