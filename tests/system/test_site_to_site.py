#!/usr/bin/python3
"""System test: two espresso-dp gateways with mirrored static SAs between two LANs (network namespaces).

Checks, against tools nobody here wrote (ping, the Linux stack, tshark's ESP decryption, scapy):
ICMP/UDP/TCP cross both ways; the internet segment carries only ESP that tshark decrypts with the
configured keys (ICV good); SA counters equal what was sent; replayed and tampered packets injected on
the internet segment are dropped and counted; ARP and ping to both gateways work; PMTU (ICMP
fragmentation-needed with the MTU that fits).

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_site_to_site.py
"""
import json
import os
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Topology, sh  # noqa: E402

BUILD = os.environ.get("ESPRESSO_BUILD", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../build"))
HQ_KEY = None  # read from the example config below

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


def sa_counters(topo, gw):
    out = json.loads(topo.cli(gw, "--json show crypto ipsec sa"))
    sas = out["sas"] if isinstance(out, dict) and "sas" in out else out
    return {(s["direction"], int(s["spi"], 0) if isinstance(s["spi"], str) else s["spi"]): s for s in sas}


def counter(s, name):
    if "counters" in s and name in s["counters"]:
        return s["counters"][name]
    return s.get("drops", {}).get(name, 0)


PY_UDP_SINK = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(5)
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
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(bytes([i % 256]) * int(sys.argv[4]), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.002)
'''

PY_TCP_SINK = r'''
import socket, sys, hashlib
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(20)
c, _ = s.accept(); c.settimeout(20)
h = hashlib.sha256(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest())
'''

PY_TCP_SEND = r'''
import socket, sys, hashlib, time
data = bytes((i * 7) % 251 for i in range(int(sys.argv[3])))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
t = time.time(); c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
print(len(data), hashlib.sha256(data).hexdigest(), time.time() - t)
'''


PY_DGRAM_SINK = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[4]))
print("bound", flush=True)
sizes = []
try:
    while len(sizes) < int(sys.argv[3]):
        sizes.append(len(s.recv(65535)))
except socket.timeout:
    pass
print(" ".join(map(str, sizes)))
'''

PY_DGRAM_SEND = r'''
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for size in sys.argv[4:]:
    s.sendto(bytes(i % 251 for i in range(int(size))), (sys.argv[2], int(sys.argv[3])))
    time.sleep(0.05)
'''


def datagrams(topo, src_ns, src_ip, dst_ns, dst_ip, port, sizes, expect):
    """Sends one UDP datagram of each size from src_ns to dst_ip:port; returns the sizes received
    (waits for `expect` datagrams or 3 s of silence)."""
    sink = subprocess.Popen(["ip", "netns", "exec", topo.ns[dst_ns], "/usr/bin/python3", "-u",
                             write_script(topo, "dgram_sink.py", PY_DGRAM_SINK), dst_ip, str(port), str(expect), "3"],
                            stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "bound", "sink did not start"
    sh(f"/usr/bin/python3 {write_script(topo, 'dgram_send.py', PY_DGRAM_SEND)} {src_ip} {dst_ip} {port} "
       + " ".join(map(str, sizes)), ns=topo.ns[src_ns])
    out, _ = sink.communicate(timeout=30)
    return [int(x) for x in out.split()]


def worker_drops(topo, gw):
    """Sum over the gateway's lcores of each drop counter that is not charged to an SA."""
    out = json.loads(topo.cli(gw, "--json show dataplane"))
    rows = out["workers"] if isinstance(out, dict) else out
    total = {}
    for row in rows:
        for k, v in row.get("drops", {}).items():
            total[k] = total.get(k, 0) + v
    return total


def esp_uat(topo):
    """tshark options that decrypt both static SAs with the keys of the HQ config."""
    cfg = open(topo.hq_config).read()
    keys = [l.split(":", 1)[1].split("#")[0].strip() for l in cfg.splitlines() if l.strip().startswith("key:")]
    uat = []
    for (src, dst, spi), k in zip((("198.51.100.1", "203.0.113.1", "0x00001001"),
                                   ("203.0.113.1", "198.51.100.1", "0x00002001")), keys):
        uat += ["-o", f'uat:esp_sa:"IPv4","{src}","{dst}","{spi}","AES-GCM with 16 octet ICV [RFC4106]","{k}","NULL",""']
    return uat


def start_capture(topo, ns, iface, path):
    """tshark writing iface's packets to path; returns once the capture runs (the file has its header:
    on this loaded machine tshark can take several seconds to start)."""
    p = subprocess.Popen(["ip", "netns", "exec", topo.ns[ns], "tshark", "-q", "-i", iface, "-w", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline and not (os.path.exists(path) and os.path.getsize(path) > 0):
        time.sleep(0.2)
    time.sleep(0.5)
    return p


def write_script(topo, name, text):
    path = os.path.join(topo.dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def udp_transfer(topo, src_ns, dst_ns, dst_ip, port, count, size=200):
    sink = subprocess.Popen(["ip", "netns", "exec", topo.ns[dst_ns], "/usr/bin/python3",
                             write_script(topo, "udp_sink.py", PY_UDP_SINK), str(port), str(count)],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    sh(f"/usr/bin/python3 {write_script(topo, 'udp_send.py', PY_UDP_SEND)} {dst_ip} {port} {count} {size}",
       ns=topo.ns[src_ns])
    out, _ = sink.communicate(timeout=30)
    return int(out.strip() or 0)


def tcp_transfer(topo, src_ns, dst_ns, dst_ip, port, nbytes):
    sink = subprocess.Popen(["ip", "netns", "exec", topo.ns[dst_ns], "/usr/bin/python3",
                             write_script(topo, "tcp_sink.py", PY_TCP_SINK), str(port)],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    sent = sh(f"/usr/bin/python3 {write_script(topo, 'tcp_send.py', PY_TCP_SEND)} {dst_ip} {port} {nbytes}",
              ns=topo.ns[src_ns], capture=True).stdout.split()
    got, _ = sink.communicate(timeout=60)
    return sent, got.split()


def main():
    # ESPRESSO_WORKERS=N runs both gateways with N worker lcores (more lcores than CPUs share them):
    # inbound SAs are then owned by one worker and packets are handed over between workers.
    workers = int(os.environ.get("ESPRESSO_WORKERS", "1"))
    configs = {}
    if workers != 1:
        import tempfile
        tmp = tempfile.mkdtemp(prefix="espresso-cfg-")
        for side in ("hq", "branch"):
            src = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"../../config/examples/site-to-site-{side}.yaml")
            text = open(src).read().replace("workers: 1 ", f"workers: {workers} ", 1)
            path = os.path.join(tmp, f"{side}.yaml")
            open(path, "w").write(text)
            configs[f"{side}_config"] = path
    topo = Topology(BUILD, prefix=f"espt{os.getpid() % 10000}", **configs)
    try:
        topo.create()
        topo.start_gateways()

        @case("ping across the tunnel, both ways")
        def _():
            # The first packets wait in the gateways' ARP queues; none may be lost.
            r = sh("ping -c 5 -i 0.2 -W 2 192.168.2.10", ns=topo.ns["host-hq"], capture=True, check=False)
            assert " 0% packet loss" in r.stdout, r.stdout
            r = sh("ping -c 5 -i 0.2 -W 2 192.168.1.10", ns=topo.ns["host-branch"], capture=True, check=False)
            assert " 0% packet loss" in r.stdout, r.stdout
        _()

        @case("ARP and ping to both gateways (exception path through the TAP)")
        def _():
            for ns, ip in (("inet", "198.51.100.1"), ("inet", "203.0.113.1"),
                           ("host-hq", "192.168.1.1"), ("host-branch", "192.168.2.1")):
                r = sh(f"ping -c 3 -i 0.2 -W 2 {ip}", ns=topo.ns[ns], capture=True, check=False)
                assert " 0% packet loss" in r.stdout, f"{ns} -> {ip}: {r.stdout}"
            neigh = sh("ip neigh show 198.51.100.1", ns=topo.ns["inet"], capture=True).stdout
            assert "02:00:00:00:00:01" in neigh.lower() or "lladdr" in neigh, neigh
        _()

        @case("IP-fragmented UDP to and from a gateway address crosses the exception path whole")
        def _():
            # af_packet's fanout reassembles fragments (PACKET_FANOUT_FLAG_DEFRAG): the datagram reaches
            # the data plane whole and must still fit its buffers and the TAP (IKE_AUTH with
            # certificates is this size). The reply leaves the kernel fragmented, through the TAP.
            before = worker_drops(topo, "gw-hq")
            got = datagrams(topo, "inet", "198.51.100.254", "gw-hq", "198.51.100.1", 40500, [3000, 8000], 2)
            assert got == [3000, 8000], f"gw-hq socket received {got}, expected [3000, 8000]"
            got = datagrams(topo, "gw-hq", "198.51.100.1", "inet", "198.51.100.254", 40501, [3000, 8000], 2)
            assert got == [3000, 8000], f"inet socket received {got}, expected [3000, 8000]"
            # Larger than an af_packet frame: counted as truncated, not as malformed.
            got = datagrams(topo, "inet", "198.51.100.254", "gw-hq", "198.51.100.1", 40502, [20000], 0)
            time.sleep(0.3)
            after = worker_drops(topo, "gw-hq")
            assert after.get("truncated", 0) - before.get("truncated", 0) == 1, f"{before} -> {after}"
            assert after.get("malformed", 0) == before.get("malformed", 0), f"{before} -> {after}"
        _()

        capture = os.path.join(topo.dir, "inet.pcap")
        tshark = start_capture(topo, "inet", "inet-hq", capture)
        topo.cli("gw-hq", "clear counters")
        topo.cli("gw-branch", "clear counters")

        @case("UDP both ways; counters equal what was sent")
        def _():
            n = 200
            got = udp_transfer(topo, "host-hq", "host-branch", "192.168.2.10", 40001, n)
            assert got == n, f"branch host received {got}/{n}"
            got = udp_transfer(topo, "host-branch", "host-hq", "192.168.1.10", 40002, n)
            assert got == n, f"hq host received {got}/{n}"
            hq = sa_counters(topo, "gw-hq")
            br = sa_counters(topo, "gw-branch")
            assert counter(hq[("outbound", 0x1001)], "encaps") == n, hq
            assert counter(br[("inbound", 0x1001)], "decaps") == n, br
            assert counter(br[("outbound", 0x2001)], "encaps") == n, br
            assert counter(hq[("inbound", 0x2001)], "decaps") == n, hq
        _()

        @case("TCP across the tunnel, data intact")
        def _():
            sent, got = tcp_transfer(topo, "host-hq", "host-branch", "192.168.2.10", 40003, 2_000_000)
            assert sent[:2] == got[:2], f"sent {sent} received {got}"
            sent, got = tcp_transfer(topo, "host-branch", "host-hq", "192.168.1.10", 40004, 500_000)
            assert sent[:2] == got[:2], f"sent {sent} received {got}"
        _()

        time.sleep(1)
        tshark.terminate()
        tshark.wait(timeout=10)

        @case("internet segment carries only ESP, which tshark decrypts with the configured keys")
        def _():
            key = "0x" + "00112233445566778899aabbccddeeff" + "01020304"
            r = sh(f"tshark -r {capture} -Y ip -T fields -e ip.src -e ip.dst -e ip.proto", capture=True)
            lines = [l.split("\t") for l in r.stdout.splitlines() if l.strip()]
            tunnel = [l for l in lines if {l[0], l[1]} == {"198.51.100.1", "203.0.113.1"}]
            assert len(tunnel) > 400, f"only {len(tunnel)} tunnel packets captured"
            cleartext = [l for l in lines if l[0].startswith("192.168.") or l[1].startswith("192.168.")]
            assert not cleartext, f"cleartext LAN packets on the internet: {cleartext[:3]}"
            assert all(l[2] == "50" for l in tunnel), {l[2] for l in tunnel}
            r = subprocess.run(["tshark", "-r", capture, "-o", "esp.enable_encryption_decode:TRUE",
                                "-o", "esp.enable_authentication_check:TRUE", *esp_uat(topo), "-Y", "esp",
                                "-T", "fields", "-e", "esp.spi", "-e", "esp.icv_good", "-e", "udp.dstport"],
                               capture_output=True, text=True, check=True)
            rows = [l.split("\t") for l in r.stdout.splitlines() if l.strip()]
            assert rows and all(x[1] == "1" for x in rows), f"ICV not good on {sum(x[1] != '1' for x in rows)} of {len(rows)}"
            assert any(x[2] in ("40001", "40002") for x in rows), "decrypted payload not visible"
        _()

        @case("replayed and tampered ESP injected on the internet segment is dropped and counted")
        def _():
            inject = write_script(topo, "inject.py", f"""
import sys
from scapy.all import rdpcap, sendp, Ether, IP
dst_mac = sys.argv[1]
pkts = [p for p in rdpcap("{capture}") if IP in p and p[IP].proto == 50 and p[IP].dst == "203.0.113.1"]
recent = pkts[-3]
recent[Ether].dst = dst_mac
sendp(recent, iface="inet-branch", count=3, verbose=False)     # three replays of a received packet
old = pkts[len(pkts) // 2]
old[Ether].dst = dst_mac
sendp(old, iface="inet-branch", verbose=False)                 # left of the replay window
raw = bytearray(bytes(pkts[-1]))
seq = int.from_bytes(raw[38:42], "big") + 1000                 # an unused sequence number ...
raw[38:42] = seq.to_bytes(4, "big")                            # ... which the ICV does not cover
bad = Ether(bytes(raw)); bad.dst = dst_mac
sendp(bad, iface="inet-branch", verbose=False)
""")
            before = sa_counters(topo, "gw-branch")[("inbound", 0x1001)]
            neigh = sh("ip neigh show 203.0.113.1", ns=topo.ns["inet"], capture=True).stdout.split()
            assert "lladdr" in neigh, f"inet has no ARP entry for the branch gateway: {neigh}"
            sh(f"/usr/bin/python3 {inject} {neigh[neigh.index('lladdr') + 1]}", ns=topo.ns["inet"])
            time.sleep(1)
            after = sa_counters(topo, "gw-branch")[("inbound", 0x1001)]
            replays = counter(after, "replay") - counter(before, "replay")
            icv = counter(after, "icv") - counter(before, "icv")
            too_old = counter(after, "too_old") - counter(before, "too_old")
            assert replays == 3, f"replay counter +{replays}, expected +3: {after}"
            assert too_old == 1, f"too_old counter +{too_old}, expected +1: {after}"
            assert icv == 1, f"ICV counter +{icv}, expected +1: {after}"
        _()

        if workers > 1:
            @case(f"{workers} workers: each worker receives traffic; inbound ESP for another worker's SPI is handed over, exactly")
            def _():
                # af_packet's fanout hashes a flow to one queue; ESP between the same two addresses is one
                # flow whatever its SPI, so scapy sends 10 ESP packets for each SPI 0x7000.. (one per owner
                # worker, SPI % workers): whichever worker polls them, exactly 10 * (workers - 1) go through
                # the handoff rings, and every one ends as no_sa at its owner.
                # The traffic so far is a handful of flows with random ephemeral ports, which the fanout hash
                # may have put all on one queue. 64 more UDP flows (distinct source ports) to the gateway's
                # outside address make every queue see traffic unless the hash ignores ports.
                neigh = sh("ip neigh show 203.0.113.1", ns=topo.ns["inet"], capture=True).stdout.split()
                assert "lladdr" in neigh, f"inet has no ARP entry for the branch gateway: {neigh}"
                flows = write_script(topo, "spread_flows.py", """
import sys
from scapy.all import sendp, Ether, IP, UDP, Raw
sendp([Ether(dst=sys.argv[1]) / IP(src="198.51.100.1", dst="203.0.113.1") / UDP(sport=20000 + i, dport=9) / Raw(b"x" * 16)
       for i in range(64)], iface="inet-branch", verbose=False)
""")
                sh(f"/usr/bin/python3 {flows} {neigh[neigh.index('lladdr') + 1]}", ns=topo.ns["inet"])
                time.sleep(0.5)
                rows = [r for r in json.loads(topo.cli("gw-branch", "--json show dataplane"))["workers"] if "local-traffic" not in r]
                assert len(rows) == workers, rows
                assert all(r["rx-packets"] > 0 for r in rows), f"a worker received nothing: {rows}"
                assert sum(r["handed-off"] for r in rows) == sum(r["handed-in"] for r in rows), rows
                before = worker_drops(topo, "gw-branch")
                topo.cli("gw-branch", "clear counters")
                inject = write_script(topo, "inject_spis.py", f"""
import sys
from scapy.all import sendp, Ether, IP, ESP, Raw
pkts = [Ether(dst=sys.argv[1]) / IP(src="198.51.100.1", dst="203.0.113.1") / ESP(spi=0x7000 + s, seq=i + 1) / Raw(b"x" * 64)
        for s in range({workers}) for i in range(10)]
sendp(pkts, iface="inet-branch", verbose=False)
""")
                neigh = sh("ip neigh show 203.0.113.1", ns=topo.ns["inet"], capture=True).stdout.split()
                sh(f"/usr/bin/python3 {inject} {neigh[neigh.index('lladdr') + 1]}", ns=topo.ns["inet"])
                time.sleep(1)
                rows = [r for r in json.loads(topo.cli("gw-branch", "--json show dataplane"))["workers"] if "local-traffic" not in r]
                off = sum(r["handed-off"] for r in rows)
                got = sum(r["handed-in"] for r in rows)
                assert off == 10 * (workers - 1) and got == off, f"handed off {off}, handed in {got}: {rows}"
                # The handoff went to the workers that own the SPIs: each worker took in at most 10.
                assert all(r["handed-in"] in (0, 10) for r in rows), rows
                after = worker_drops(topo, "gw-branch")
                assert after.get("no_sa", 0) == 10 * workers, f"no_sa {after.get('no_sa')} after clear, expected {10 * workers}"
                print(f"handoff: {[(r['lcore'], r['rx-packets'], r['handed-off'], r['handed-in']) for r in rows]} (drops before: {before})")
            _()

        @case("PMTU: DF too big gets ICMP fragmentation-needed with the exact MTU; no DF is fragmented before encryption")
        def _():
            # scapy sends DF echo requests of a given IP length from host-hq (a raw socket: the host's
            # PMTU cache does not interfere) and reads the ICMP error's next-hop MTU field itself.
            probe = write_script(topo, "pmtu_probe.py", """
import sys
from scapy.all import sr1, IP, ICMP, Raw, conf
conf.verb = 0
n = int(sys.argv[1])
r = sr1(IP(dst="192.168.2.10", flags="DF", id=4242) / ICMP(id=77, seq=n) / Raw(b"p" * (n - 28)), timeout=3)
if r is None:
    print("none")
elif r.haslayer(ICMP) and r[ICMP].type == 3:
    print("unreach", r[IP].src, r[ICMP].code, r[ICMP].nexthopmtu)
else:
    print("reply", r[IP].src, r[ICMP].type, len(r[IP]))
""")
            out = sh(f"/usr/bin/python3 {probe} 1500", ns=topo.ns["host-hq"], capture=True).stdout.split()
            assert out[:3] == ["unreach", "192.168.1.1", "4"] and len(out) == 4, f"1500-byte DF probe: {out}"
            mtu = int(out[3])
            # AES-GCM-16 tunnel on a 1500-byte link: the data plane budgets 20 (outer IP) + 8 (SPI, seq)
            # + 8 (IV) + 16 (ICV) + 2 (pad length, next header) + 3 (worst-case padding to 4 bytes) = 57,
            # so inner packets up to 1443 bytes are encrypted whole; it reports that rounded down to a
            # multiple of 8 (the size its own fragments use): 1440.
            assert mtu == 1440, f"ICMP fragmentation-needed says MTU {mtu}, expected 1440"
            for n in (mtu, 1443):
                out = sh(f"/usr/bin/python3 {probe} {n}", ns=topo.ns["host-hq"], capture=True).stdout.split()
                assert out == ["reply", "192.168.2.10", "0", str(n)], f"a {n}-byte DF probe must cross: {out}"
            out = sh(f"/usr/bin/python3 {probe} 1444", ns=topo.ns["host-hq"], capture=True).stdout.split()
            assert out == ["unreach", "192.168.1.1", "4", str(mtu)], f"a 1444-byte DF probe: {out}"
            r = sh(f"ping -c 2 -W 2 -M do -s {mtu - 28} 192.168.2.10", ns=topo.ns["host-hq"], capture=True, check=False)
            assert " 0% packet loss" in r.stdout, r.stdout
            # Without DF the gateway fragments before encryption (RFC 4301 §8.1): the host never sees
            # an error and the reply comes back (reassembled by the receiving host). 1500-byte packets:
            # larger ones would leave the host already fragmented, and the af_packet vdev's kernel
            # fanout (PACKET_FANOUT_FLAG_DEFRAG) reassembles those before the data plane sees them.
            # The internet segment must then carry whole ESP packets within the link MTU, whose
            # decrypted contents (tshark, configured keys) are the inner fragments.
            cap = os.path.join(topo.dir, "pmtu.pcap")
            ts = start_capture(topo, "inet", "inet-hq", cap)
            r = sh("ping -c 3 -i 0.3 -W 2 -M dont -s 1472 192.168.2.10", ns=topo.ns["host-hq"], capture=True, check=False)
            time.sleep(1)
            ts.terminate()
            ts.wait(timeout=10)
            assert " 0% packet loss" in r.stdout, r.stdout
            r = subprocess.run(["tshark", "-r", cap, "-o", "esp.enable_encryption_decode:TRUE", *esp_uat(topo),
                                "-Y", "ip.src == 198.51.100.1 || ip.src == 203.0.113.1", "-T", "fields",
                                "-e", "ip.proto", "-e", "ip.len", "-e", "ip.flags.mf", "-e", "ip.frag_offset",
                                "-e", "ip.src", "-e", "icmp.type"], capture_output=True, text=True, check=True)
            rows = [l.split("\t") for l in r.stdout.splitlines() if l.strip()]
            # With decryption, ip.* fields list the outer header first, then the inner one.
            outer = [(x[0].split(",")[0], int(x[1].split(",")[0]), x[2].split(",")[0], int(x[3].split(",")[0])) for x in rows]
            assert all(p == "50" for p, _, _, _ in outer), f"non-ESP between the gateways: {rows[:5]}"
            assert all(n <= 1500 for _, n, _, _ in outer), f"ESP packets above the 1500-byte link MTU: {[n for _, n, _, _ in outer]}"
            assert all(mf in ("0", "False") and off == 0 for _, _, mf, off in outer), f"outer IP fragments: {rows[:6]}"
            inner_frags = [x for x in rows if len(x[2].split(",")) == 2 and
                           (x[2].split(",")[1] in ("1", "True") or int(x[3].split(",")[1]) > 0)]
            # 3 echo requests and 3 replies, each split in two before encryption.
            print(f"no-DF pings: {len(outer)} ESP packets between the gateways, largest {max(n for _, n, _, _ in outer)} "
                  f"bytes, none fragmented; {len(inner_frags)} carry inner fragments", flush=True)
            assert len(inner_frags) >= 12, f"expected >= 12 ESP packets carrying inner fragments, got {len(inner_frags)}: {rows}"
        _()

        print(topo.cli("gw-hq", "show crypto ipsec sa"))
    except Exception as e:  # noqa: BLE001
        results.append(("topology", False, str(e)))
        traceback.print_exc()
        for g in ("gw-hq", "gw-branch"):
            print(f"--- {g} log ---\n{topo.log(g)}")
    finally:
        topo.teardown()
    passed = sum(1 for r in results if r[1])
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
