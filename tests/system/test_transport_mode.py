#!/usr/bin/python3
"""System test: the gateway's own traffic (RFC 4301 host-to-host, transport mode between two Espresso
gateways) in network namespaces, IPv4 and IPv6.

    host-hq -- [hq-lan] gw-hq [hq-wan 198.51.100.1, 2001:db8:ff1::1] -- inet -- [branch-wan 203.0.113.1, 2001:db8:ff2::1] gw-branch [branch-lan] -- host-branch

The WAN interfaces are dual stack. What the kernel behind a gateway's TAP sends (ping, UDP from a
socket in the gateway's namespace) goes through espresso-dp's outbound SPD; a transport-mode SA between
the two WAN addresses protects it; the peer decrypts it and hands it to its own TAP. IKE (UDP 500/4500
on the gateway's IKE ports) stays in the clear through the implicit bypass.

Run 1, static keys: transport SAs for IPv4 and IPv6 between the WAN addresses (and a tunnel SA for the
LANs alongside, to show forwarded traffic is untouched); gw-branch runs two workers (inbound ESP handed
to the SA's owner worker before it is decrypted and given to the TAP). Checked with tools nobody here wrote: ping /
ping -6 from each gateway's namespace to the other's WAN address, UDP between sockets in the gateway
namespaces, tshark on the internet segment (only ESP and the bypassed UDP 500 between the WAN
addresses; tshark decrypts the ESP in transport mode with the configured keys, ICV good, and sees the
ICMP/ICMPv6 echo inside), SA counters equal the packets sent, the gateway's own traffic counters in
`show dataplane`, and cleartext ICMP spoofed from the peer's address (scapy) dropped as `unprotected`.

Run 2, IKEv2: espresso-ike on both gateways negotiates transport-mode Child SAs (USE_TRANSPORT_MODE)
between the WAN addresses, one peer per address family (IKE over IPv4 and over IPv6); ping / ping -6
from gw-hq's namespace to gw-branch; the internet segment carries only IKE and ESP with the SPIs
`show crypto ipsec sa` lists, and the SA counters match. The negotiated keys never leave the daemons
(nothing logs key material), so tshark decrypts in run 1 only.

strongSwan is no peer here: kernel-libipsec, its only data path on this kernel, is tunnel-mode only.

Run as root: ESPRESSO_BUILD=build flock /tmp/espresso-systest.lock /usr/bin/python3 tests/system/test_transport_mode.py
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import sh  # noqa: E402
from test_site_to_site_ipv6 import Topology6  # noqa: E402

BUILD = os.environ.get("ESPRESSO_BUILD", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../build"))

WAN4 = ("198.51.100.1", "203.0.113.1")
WAN6 = ("2001:db8:ff1::1", "2001:db8:ff2::1")
KEYS = {  # spi -> aes128gcm16 key + 4-byte salt; test keys only
    0x5001: "0x2b7e151628aed2a6abf7158809cf4f3c0a0b0c0d",  # transport IPv4, hq -> branch
    0x6001: "0x000102030405060708090a0b0c0d0e0f10111213",  # transport IPv4, branch -> hq
    0x5002: "0xfeffe9928665731c6d6a8f9467308308cafebabe",  # transport IPv6, hq -> branch
    0x6002: "0x3c819d9a9bed087615030b65decafbad0badf00d",  # transport IPv6, branch -> hq
    0x1001: "0x00112233445566778899aabbccddeeff01020304",  # tunnel, LANs
    0x2001: "0xffeeddccbbaa99887766554433221100a0b0c0d0",
}

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


def side_of(side):
    hq = side == "hq"
    return {
        "n": 1 if hq else 2, "m": 2 if hq else 1,
        "me4": WAN4[0] if hq else WAN4[1], "peer4": WAN4[1] if hq else WAN4[0],
        "me6": WAN6[0] if hq else WAN6[1], "peer6": WAN6[1] if hq else WAN6[0],
    }


def interfaces_yaml(side, workers=1):
    s = side_of(side)
    n = s["n"]
    return f"""dataplane:
  workers: {workers}
  hugepages: false
  idle: adaptive
  control-socket: /run/espresso/{side}.sock
interfaces:
  - name: outside
    device: "net_af_packet0,iface={side}-wan"
    address: [{s['me4']}/24, "{s['me6']}/64"]
    mac: "02:00:00:00:0{n}:01"
  - name: inside
    device: "net_af_packet1,iface={side}-lan"
    address: 192.168.{n}.1/24
routes:
  - {{ destination: {s['peer4'][:-1]}0/24, via: {s['me4'][:-1]}254 }}
  - {{ destination: "{s['peer6'][:-1]}/64", via: "{s['me6'][:-1]}fe" }}
"""


def static_sa(spi, direction, mode, local, remote, src=None, dst=None):
    outer = f'\n    source: "{src}"\n    destination: "{dst}"' if mode == "tunnel" else ""
    return f"""  - spi: {spi:#06x}
    direction: {direction}
    protocol: esp
    mode: {mode}{outer}
    encryption: aes128gcm16
    key: {KEYS[spi]}
    integrity: none
    selectors: {{ local: "{local}", remote: "{remote}" }}
"""


def static_config(side):
    s = side_of(side)
    hq = side == "hq"
    out4, in4 = (0x5001, 0x6001) if hq else (0x6001, 0x5001)
    out6, in6 = (0x5002, 0x6002) if hq else (0x6002, 0x5002)
    outl, inl = (0x1001, 0x2001) if hq else (0x2001, 0x1001)
    lan, peer_lan = f"192.168.{s['n']}.0/24", f"192.168.{s['m']}.0/24"
    # gw-branch runs two workers: ESP for an SA owned by the other worker is handed over before
    # decryption, and its decrypted packets for the gateway still reach the TAP.
    return interfaces_yaml(side, workers=1 if hq else 2) + "security-associations:\n" + "".join([
        static_sa(out4, "outbound", "transport", s["me4"], s["peer4"]),
        static_sa(in4, "inbound", "transport", s["me4"], s["peer4"]),
        static_sa(out6, "outbound", "transport", s["me6"], s["peer6"]),
        static_sa(in6, "inbound", "transport", s["me6"], s["peer6"]),
        static_sa(outl, "outbound", "tunnel", lan, peer_lan, s["me4"], s["peer4"]),
        static_sa(inl, "inbound", "tunnel", lan, peer_lan, s["peer4"], s["me4"]),
    ])


def ike_config(side):
    s = side_of(side)
    start = "\n          start: immediately" if side == "hq" else ""
    peers = ""
    for fam, me, peer in (("4", s["me4"], s["peer4"]), ("6", s["me6"], s["peer6"])):
        peers += f"""    - name: gw{fam}
      local-address: "{me}"
      remote-address: "{peer}"
      proposals: [aes256-sha256-ecp256]
      auth: {{ method: psk, secret: "transport-test-only-Hq7x" }}
      dpd: {{ interval: 0 }}
      tunnels:
        - name: host{fam}
          mode: transport
          local-ts: ["{me}"]
          remote-ts: ["{peer}"]
          esp-proposals: [aes256gcm16]{start}
"""
    return interfaces_yaml(side) + "ike:\n  peers:\n" + peers


def sa_list(topo, gw):
    out = json.loads(topo.cli(gw, "--json show crypto ipsec sa"))
    return out["sas"] if isinstance(out, dict) and "sas" in out else out


def sa_counters(topo, gw):
    return {(s["direction"], int(s["spi"], 0) if isinstance(s["spi"], str) else s["spi"]): s
            for s in sa_list(topo, gw)}


def counter(s, name):
    if "counters" in s and name in s["counters"]:
        return s["counters"][name]
    return s.get("drops", {}).get(name, 0)


def dataplane(topo, gw):
    out = json.loads(topo.cli(gw, "--json show dataplane"))
    rows = out["workers"] if isinstance(out, dict) else out
    drops, local = {}, {}
    for row in rows:
        for k, v in row.get("drops", {}).items():
            drops[k] = drops.get(k, 0) + v
        for k, v in row.get("local-traffic", {}).items():
            local[k] = local.get(k, 0) + v
    return drops, local


def ping(topo, ns, target, args="-c 5 -i 0.2 -W 2"):
    six = "-6 " if ":" in target else ""
    return sh(f"ping {six}{args} {target}", ns=topo.ns[ns], capture=True, check=False)


def write_script(topo, name, text):
    path = os.path.join(topo.dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


PY_UDP_SINK = r'''
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(5)
print("bound", flush=True)
n = 0
try:
    while n < int(sys.argv[3]):
        data, peer = s.recvfrom(4096)
        s.sendto(b"\0\0\0\0ack", peer)
        n += 1
except socket.timeout:
    pass
print(n)
'''

PY_UDP_SEND = r'''
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[4], int(sys.argv[5])))
s.settimeout(2)
acks = 0
for i in range(int(sys.argv[3])):
    # Four zero bytes first: on UDP 4500 that is the non-ESP marker (RFC 3948 §2.2), which makes the
    # datagram IKE for the data plane; anything else there would be ESP-in-UDP.
    s.sendto(b"\0\0\0\0" + bytes([i % 256]) * 300, (sys.argv[1], int(sys.argv[2])))
    try:
        acks += s.recv(64) == b"\0\0\0\0ack"
    except socket.timeout:
        pass
print(acks)
'''


def udp_exchange(topo, src_ns, src_ip, src_port, dst_ns, dst_ip, dst_port, count):
    """count datagrams from src_ip:src_port (a socket in src_ns) to dst_ip:dst_port, each answered by
    the sink. Returns (received by the sink, acks received back)."""
    sink = subprocess.Popen(["ip", "netns", "exec", topo.ns[dst_ns], "/usr/bin/python3", "-u",
                             write_script(topo, "udp_sink.py", PY_UDP_SINK), dst_ip, str(dst_port), str(count)],
                            stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "bound", "UDP sink did not start"
    acks = sh(f"/usr/bin/python3 {write_script(topo, 'udp_send.py', PY_UDP_SEND)} {dst_ip} {dst_port} {count} "
              f"{src_ip} {src_port}", ns=topo.ns[src_ns], capture=True).stdout.strip()
    got, _ = sink.communicate(timeout=30)
    return int(got.strip() or 0), int(acks or 0)


def capture_start(topo, name):
    path = os.path.join(topo.dir, name)
    p = subprocess.Popen(["ip", "netns", "exec", topo.ns["inet"], "tshark", "-q", "-i", "inet-hq", "-w", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # tshark creates the file once it captures; on a loaded machine that takes a few seconds.
    deadline = time.time() + 30
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    return p, path


def capture_stop(p):
    time.sleep(1)
    p.terminate()
    p.wait(timeout=10)


def wan_rows(path):
    """Packets between the two WAN addresses (either family): (proto/next header, udp ports, icmp types)."""
    r = sh(f"tshark -r {path} -T fields -E occurrence=f -e ip.src -e ip.dst -e ip.proto -e ipv6.src -e ipv6.dst "
           f"-e ipv6.nxt -e udp.srcport -e udp.dstport -e icmp.type -e icmpv6.type", capture=True)
    rows = []
    for line in r.stdout.splitlines():
        f = (line.split("\t") + [""] * 10)[:10]
        if {f[0], f[1]} == set(WAN4):
            rows.append({"family": 4, "proto": f[2], "sport": f[6], "dport": f[7], "icmp": f[8]})
        elif {f[3], f[4]} == set(WAN6):
            rows.append({"family": 6, "proto": f[5], "sport": f[6], "dport": f[7], "icmp": f[9]})
    return rows


def allowed_in_clear(x):
    """What may cross the internet segment between the two WAN addresses outside ESP: the implicit
    bypass, i.e. IKE (UDP 500/4500) and ICMP errors (here: port unreachable from a gateway whose IKE
    daemon was not listening yet, quoting IKE)."""
    if x["proto"] == "50":
        return True
    ike = {x["sport"], x["dport"]} <= {"500", "4500"}
    if x["proto"] == "17":
        return ike
    error = (x["family"] == 4 and x["icmp"] in ("3", "11", "12")) or (x["family"] == 6 and x["icmp"] in ("1", "2", "3", "4"))
    return error and ike


def run_static():
    cfgdir = tempfile.mkdtemp(prefix="espresso-tm-")
    paths = {side: os.path.join(cfgdir, f"{side}.yaml") for side in ("hq", "branch")}
    for side in ("hq", "branch"):
        with open(paths[side], "w") as f:
            f.write(static_config(side))
    tag = "[static transport SAs] "
    topo = Topology6(BUILD, prefix=f"etm{os.getpid() % 1000}", hq_config=paths["hq"], branch_config=paths["branch"])
    try:
        topo.create()
        topo.start_gateways()
        for gw, addr in (("gw-hq", WAN6[0]), ("gw-branch", WAN6[1])):
            deadline = time.time() + 20
            while addr not in sh("ip -6 addr show dev dp-outside", ns=topo.ns[gw], capture=True).stdout:
                assert time.time() < deadline, f"{gw}: dp-outside never got {addr}"
                time.sleep(0.2)
        tshark, capture = capture_start(topo, "inet.pcap")
        topo.cli("gw-hq", "clear counters")
        topo.cli("gw-branch", "clear counters")

        @case(tag + "ping and ping -6 from gw-hq's kernel to gw-branch's WAN addresses, and back")
        def _():
            for ns, target in (("gw-hq", WAN4[1]), ("gw-hq", WAN6[1]), ("gw-branch", WAN4[0]),
                               ("gw-branch", WAN6[0])):
                r = ping(topo, ns, target)
                assert " 0% packet loss" in r.stdout, f"{ns} -> {target}: {r.stdout}{r.stderr}"
        _()

        @case(tag + "SA counters: 10 ICMP packets each way and family, all through the transport SAs")
        def _():
            hq, br = sa_counters(topo, "gw-hq"), sa_counters(topo, "gw-branch")
            # 5 requests from each side plus 5 replies to the other side's requests.
            for spi in (0x5001, 0x5002):
                assert counter(hq[("outbound", spi)], "encaps") == 10, hq[("outbound", spi)]
                assert counter(br[("inbound", spi)], "decaps") == 10, br[("inbound", spi)]
            for spi in (0x6001, 0x6002):
                assert counter(br[("outbound", spi)], "encaps") == 10, br[("outbound", spi)]
                assert counter(hq[("inbound", spi)], "decaps") == 10, hq[("inbound", spi)]
            shown = topo.cli("gw-hq", "show crypto ipsec sa")
            assert "Transport" in shown, shown
            for spi in (0x5001, 0x6001, 0x5002, 0x6002):  # transport SAs without endpoints: the WAN port
                assert hq[("outbound" if spi < 0x6000 else "inbound", spi)].get("interface") == "outside", \
                    hq[("outbound" if spi < 0x6000 else "inbound", spi)]
        _()

        @case(tag + "UDP between sockets in the gateways' namespaces, IPv4 and IPv6, answered")
        def _():
            for src, dst in ((WAN4[0], WAN4[1]), (WAN6[0], WAN6[1])):
                got, acks = udp_exchange(topo, "gw-hq", src, 40100, "gw-branch", dst, 40200, 20)
                assert (got, acks) == (20, 20), f"{src} -> {dst}: sink got {got}/20, acks {acks}/20"
        _()

        @case(tag + "IKE ports stay in the clear (implicit bypass), counted")
        def _():
            before = dataplane(topo, "gw-hq")[1]
            got, acks = udp_exchange(topo, "gw-hq", WAN4[0], 500, "gw-branch", WAN4[1], 500, 3)
            assert (got, acks) == (3, 3), f"UDP 500: sink got {got}/3, acks {acks}/3"
            got, acks = udp_exchange(topo, "gw-hq", WAN6[0], 4500, "gw-branch", WAN6[1], 4500, 3)
            assert (got, acks) == (3, 3), f"UDP 4500 over IPv6: sink got {got}/3, acks {acks}/3"
            after = dataplane(topo, "gw-hq")[1]
            assert after["out_implicit_bypass"] >= before["out_implicit_bypass"] + 6, (before, after)
            assert after["in_implicit_bypass"] >= before["in_implicit_bypass"] + 6, (before, after)
        _()

        @case(tag + "forwarded LAN traffic through the tunnel SA is untouched")
        def _():
            r = ping(topo, "host-hq", "192.168.2.10")
            assert " 0% packet loss" in r.stdout, r.stdout + r.stderr
            hq = sa_counters(topo, "gw-hq")
            assert counter(hq[("outbound", 0x1001)], "encaps") == 5, hq[("outbound", 0x1001)]
        _()

        capture_stop(tshark)

        @case(tag + "internet segment: only ESP and the bypassed IKE ports between the WAN addresses")
        def _():
            rows = wan_rows(capture)
            esp = [x for x in rows if x["proto"] == "50"]
            assert len(esp) >= 2 * (20 + 40), f"only {len(esp)} ESP packets between the WAN addresses"
            clear = [x for x in rows if not allowed_in_clear(x)]
            assert not clear, f"cleartext between the WAN addresses: {clear[:5]}"
            assert not [x for x in rows if x["icmp"] in ("0", "8", "128", "129")], "cleartext echo seen"
        _()

        @case(tag + "tshark decrypts the transport-mode ESP with the configured keys, ICV good, ICMP inside")
        def _():
            uat = []
            for spi, src, dst, fam in ((0x5001, WAN4[0], WAN4[1], "IPv4"), (0x6001, WAN4[1], WAN4[0], "IPv4"),
                                       (0x5002, WAN6[0], WAN6[1], "IPv6"), (0x6002, WAN6[1], WAN6[0], "IPv6")):
                uat += ["-o", f'uat:esp_sa:"{fam}","{src}","{dst}","{spi:#010x}",'
                              f'"AES-GCM with 16 octet ICV [RFC4106]","{KEYS[spi]}","NULL",""']
            r = subprocess.run(["tshark", "-r", capture, "-o", "esp.enable_encryption_decode:TRUE",
                                "-o", "esp.enable_authentication_check:TRUE", *uat, "-Y", "esp",
                                "-T", "fields", "-e", "esp.spi", "-e", "esp.icv_good", "-e", "icmp.type",
                                "-e", "icmpv6.type", "-e", "udp.dstport"],
                               capture_output=True, text=True, check=True)
            rows = [(l.split("\t") + [""] * 5)[:5] for l in r.stdout.splitlines() if l.strip()]
            transport = [x for x in rows if int(x[0], 0) in (0x5001, 0x6001, 0x5002, 0x6002)]
            bad = [x for x in transport if x[1] != "1"]
            assert transport and not bad, f"ICV not good on {len(bad)} of {len(transport)}: {bad[:3]}"
            icmp4 = [x for x in transport if x[2] in ("0", "8")]
            icmp6 = [x for x in transport if x[3] in ("128", "129")]
            assert len(icmp4) == 20 and len(icmp6) == 20, f"echo inside ESP: {len(icmp4)} IPv4, {len(icmp6)} IPv6"
            assert any(x[4] == "40200" for x in transport), "decrypted UDP 40200 not seen"
        _()

        @case(tag + "cleartext ICMP spoofed from the peer's address is dropped as unprotected")
        def _():
            inject = write_script(topo, "inject.py", f"""
from scapy.all import Ether, IP, IPv6, ICMP, ICMPv6EchoRequest, sendp
sendp([Ether(dst="02:00:00:00:01:01") / IP(src="{WAN4[1]}", dst="{WAN4[0]}") / ICMP(id=77, seq=s) for s in range(3)]
      + [Ether(dst="02:00:00:00:01:01") / IPv6(src="{WAN6[1]}", dst="{WAN6[0]}") / ICMPv6EchoRequest(id=77, seq=s)
         for s in range(3)], iface="inet-hq", verbose=False)
""")
            before = dataplane(topo, "gw-hq")[0].get("unprotected", 0)
            sh(f"/usr/bin/python3 {inject}", ns=topo.ns["inet"])
            time.sleep(0.5)
            after = dataplane(topo, "gw-hq")[0].get("unprotected", 0)
            assert after == before + 6, f"unprotected {before} -> {after}"
        _()

        @case(tag + "show dataplane: the gateway's own traffic counters")
        def _():
            _, local = dataplane(topo, "gw-hq")
            # 10 pings (5 requests, 5 replies) per family, 20 datagrams per family.
            assert local["out_protected"] == 60, local
            assert local["in_decrypted"] == 60, local
            text = topo.cli("gw-hq", "show dataplane")
            assert "gateway's own traffic: out protected 60" in text, text
        _()
        @case(tag + "PMTU: a kernel packet too big once encrypted is answered with ICMP/ICMPv6 too big; "
                    "the MTU the kernel then caches works")
        def _():
            before = dataplane(topo, "gw-hq")[0].get("too_big", 0)
            for target, header in ((WAN4[1], 28), (WAN6[1], 48)):
                six = "-6 " if ":" in target else ""
                r = ping(topo, "gw-hq", target, f"-c 2 -i 0.5 -W 1 -M do -s {1500 - header}")
                assert " 0% packet loss" not in r.stdout, f"a 1500-byte packet fit after ESP? {r.stdout}"
                cached = sh(f"ip {six}route get {target}", ns=topo.ns["gw-hq"], capture=True).stdout
                m = re.search(r"mtu (\d+)", cached)
                assert m and 1280 <= int(m.group(1)) < 1500, f"no path MTU learned for {target}: {cached}"
                r = ping(topo, "gw-hq", target, f"-c 3 -i 0.2 -W 2 -M do -s {int(m.group(1)) - header}")
                assert " 0% packet loss" in r.stdout, f"{target} at the learned MTU {m.group(1)}: {r.stdout}{r.stderr}"
            after = dataplane(topo, "gw-hq")[0].get("too_big", 0)
            assert after >= before + 2, f"too_big {before} -> {after}"
        _()
        print(topo.cli("gw-hq", "show dataplane"))
    except Exception as e:  # noqa: BLE001
        results.append((tag + "topology", False, str(e)))
        traceback.print_exc()
    finally:
        if any(not ok for _, ok, _ in results):
            for g in ("gw-hq", "gw-branch"):
                print(f"--- {g} log ---\n{topo.log(g)[-4000:]}")
        topo.teardown()


def run_ike():
    cfgdir = tempfile.mkdtemp(prefix="espresso-tmike-")
    paths = {side: os.path.join(cfgdir, f"{side}.yaml") for side in ("hq", "branch")}
    for side in ("hq", "branch"):
        with open(paths[side], "w") as f:
            f.write(ike_config(side))
    tag = "[IKEv2 transport mode] "
    topo = Topology6(BUILD, prefix=f"etmi{os.getpid() % 1000}", hq_config=paths["hq"], branch_config=paths["branch"])
    try:
        topo.create()
        tshark, capture = capture_start(topo, "inet-ike.pcap")
        topo.start_gateways()
        topo.start_ike()

        @case(tag + "two IKE SAs (IPv4, IPv6) each with a transport-mode Child SA between the WAN addresses")
        def _():
            deadline = time.time() + 40
            sas = []
            while time.time() < deadline:
                try:
                    sas = json.loads(topo.cli("gw-hq", "--json show crypto ikev2 sa", check=False))["ike-sas"]
                except (ValueError, KeyError):
                    sas = []
                if len(sas) == 2 and all(s["state"] == "READY" and s["children"] for s in sas):
                    break
                time.sleep(0.3)
            assert len(sas) == 2 and all(s["state"] == "READY" and s["children"] for s in sas), \
                f"{sas}\n{topo.log('ike-gw-hq')[-3000:]}"
            for gw in ("gw-hq", "gw-branch"):
                listed = sa_list(topo, gw)
                assert len(listed) == 4, listed
                assert all(s.get("mode") == "transport" for s in listed), listed
                assert all(s.get("interface") == "outside" for s in listed), [s.get("interface") for s in listed]
        _()

        topo.cli("gw-hq", "clear counters")
        topo.cli("gw-branch", "clear counters")

        @case(tag + "ping and ping -6 from gw-hq's kernel to gw-branch, encrypted both ways")
        def _():
            for target in (WAN4[1], WAN6[1]):
                r = ping(topo, "gw-hq", target)
                assert " 0% packet loss" in r.stdout, f"gw-hq -> {target}: {r.stdout}{r.stderr}"
            hq = sa_list(topo, "gw-hq")
            out = [s for s in hq if s["direction"] == "outbound"]
            inb = [s for s in hq if s["direction"] == "inbound"]
            assert sorted(counter(s, "encaps") for s in out) == [5, 5], out
            assert sorted(counter(s, "decaps") for s in inb) == [5, 5], inb
            br = sa_list(topo, "gw-branch")
            assert sorted(counter(s, "decaps") for s in br if s["direction"] == "inbound") == [5, 5], br
        _()

        capture_stop(tshark)

        @case(tag + "internet segment: IKE and ESP only, with the SPIs the gateways list; no cleartext ICMP")
        def _():
            rows = wan_rows(capture)
            clear = [x for x in rows if not allowed_in_clear(x)]
            assert not clear, f"cleartext between the WAN addresses: {clear[:5]}"
            assert not [x for x in rows if x["icmp"] in ("0", "8", "128", "129")], "cleartext echo seen"
            assert sum(1 for x in rows if x["proto"] == "17") >= 8, "IKE exchanges of both peers expected"
            r = sh(f"tshark -r {capture} -Y esp -T fields -e esp.spi", capture=True)
            seen = {int(v, 0) for v in r.stdout.split()}
            listed = {int(s["spi"], 0) if isinstance(s["spi"], str) else s["spi"]
                      for gw in ("gw-hq", "gw-branch") for s in sa_list(topo, gw)}
            assert seen and seen <= listed, f"ESP SPIs on the wire {sorted(map(hex, seen))}, listed {sorted(map(hex, listed))}"
            assert len(seen) == 4, f"expected the 4 Child SA SPIs on the wire, saw {sorted(map(hex, seen))}"
            assert sum(1 for x in rows if x["proto"] == "50") == 20, "20 ESP packets (10 pings) expected"
        _()
        print(topo.cli("gw-hq", "show crypto ipsec sa"))
    except Exception as e:  # noqa: BLE001
        results.append((tag + "topology", False, str(e)))
        traceback.print_exc()
    finally:
        if any(not ok for _, ok, _ in results):
            for name in ("gw-hq", "gw-branch", "ike-gw-hq", "ike-gw-branch"):
                print(f"--- {name} log ---\n{topo.log(name)[-4000:]}")
        topo.teardown()


def main():
    runs = sys.argv[1:] or ["static", "ike"]  # e.g. `test_transport_mode.py static` for one run
    if "static" in runs:
        run_static()
    if "ike" in runs:
        run_ike()
    passed = sum(1 for r in results if r[1])
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
