"""tshark on a segment of tests/system/ike_topology.py, for the IKE interop tests: what really crossed
the wire (ESP by SPI, NAT-keepalives, IKE), independent of what espresso or strongSwan report.

    cap = WireCapture(topo, run.dir, "cap1", iface="inet-hq").start()
    ... traffic ...
    rows = cap.stop()      # [{"time": 1.23, "src": ..., "sport": 4500, "dst": ..., "dport": 4500,
                           #   "spi": 0xc1a2b3c4 or None, "keepalive": bool, "len": udp payload bytes}]
"""
import os
import re
import time

from topology import sh


class WireCapture:
    """tshark on one interface of `ns`, or on several (iface a list): one process, so every interface is
    captured over the same window (two processes started one after the other cover different windows:
    tshark's start-up takes seconds on a slow machine)."""

    def __init__(self, topo, workdir, name, iface="inet-hq", ns="inet", bpf="udp"):
        self.topo, self.name, self.ns, self.bpf = topo, name, ns, bpf
        self.ifaces = [iface] if isinstance(iface, str) else list(iface)
        self.path = os.path.join(workdir, f"{name}.pcap")

    def start(self):
        # -f before the first -i is the filter of every interface.
        cmd = ["tshark", "-n", "-f", self.bpf] + [a for i in self.ifaces for a in ("-i", i)] + ["-w", self.path]
        self.topo.start_process(self.name, self.ns, cmd, wait_for="Capturing on", timeout=20)
        # tshark prints "Capturing on" a moment before packets are really captured: without this pause
        # the first ping of a run was missing from the capture now and then.
        time.sleep(1.0)
        return self

    def stop(self):
        time.sleep(0.5)
        self.topo.stop_process(self.name)
        return self.rows()

    def rows(self):
        out = sh(f"tshark -n -r {self.path} -T fields -E separator=/t -e frame.time_relative -e ip.src -e udp.srcport "
                 "-e ip.dst -e udp.dstport -e esp.spi -e udpencap.nat_keepalive -e udp.length -e udp.payload",
                 capture=True, check=False).stdout
        rows = []
        for line in out.splitlines():
            f = (line.split("\t") + [""] * 9)[:9]
            if not f[1] or not f[2]:
                continue
            rows.append({"time": float(f[0] or 0), "src": f[1], "sport": int(f[2]), "dst": f[3],
                         "dport": int(f[4] or 0), "spi": int(f[5].split(",")[0], 16) if f[5] else None,
                         # tshark's udpencap dissector names a 1-byte 0xFF on 4500 a NAT-keepalive; check
                         # the byte ourselves too.
                         "keepalive": bool(f[6]) and f[8].lower() == "ff",
                         "len": int(f[7]) - 8 if f[7] else 0})
        return rows


def esp_rows(rows, spi, src=None, dst=None):
    return [r for r in rows if r["spi"] == spi and (src is None or r["src"] == src) and (dst is None or r["dst"] == dst)]


def keepalives(rows, src=None, dst=None):
    return [r for r in rows if r["keepalive"] and (src is None or r["src"] == src) and (dst is None or r["dst"] == dst)]


def spi_int(v):
    return int(v, 16) if isinstance(v, str) else int(v)


def ping_count(topo, src, dst, count=5, interval=0.2):
    r = sh(f"ping -c {count} -i {interval} -W 2 {dst}", ns=topo.ns[src], capture=True, check=False, timeout=60)
    m = re.search(r"(\d+) received", r.stdout)
    return int(m.group(1)) if m else 0


def check_traffic_on_wire(topo, workdir, name, child, hq="198.51.100.1", hq_seen_as=None, branch_seen_as=None,
                          iface="inet-hq", count=5):
    """Pings host-hq -> host-branch and back through the tunnel while tshark watches `iface` of the
    inet router; every echo request and reply must have crossed it as ESP-in-UDP with the Child SA's
    SPIs: espresso's outbound SPI (spi-out) leaving HQ, its inbound SPI (spi-in) arriving. Returns the
    ESP rows. hq_seen_as/branch_seen_as: the addresses on that segment (after a NAT) when not the real ones."""
    cap = WireCapture(topo, workdir, name, iface=iface).start()
    try:
        got_a = ping_count(topo, "host-hq", "192.168.2.10", count)
        got_b = ping_count(topo, "host-branch", "192.168.1.10", count)
    finally:
        rows = cap.stop()
    assert got_a >= count - 1 and got_b >= count - 1, f"pings lost: hq->branch {got_a}/{count}, branch->hq {got_b}/{count}"
    out = esp_rows(rows, spi_int(child["spi-out"]), src=hq_seen_as or hq)
    inb = esp_rows(rows, spi_int(child["spi-in"]), dst=hq_seen_as or hq)
    if branch_seen_as:
        out = [r for r in out if r["dst"] == branch_seen_as]
        inb = [r for r in inb if r["src"] == branch_seen_as]
    # Each direction carries one ping's request and the other ping's reply.
    assert len(out) >= got_a + got_b and len(inb) >= got_a + got_b, \
        f"on {iface}: {len(out)} ESP packets with SPI {child['spi-out']} from HQ, {len(inb)} with {child['spi-in']} " \
        f"to HQ; expected {got_a + got_b} each\n{rows[:40]}"
    assert all(r["sport"] == 4500 or r["dport"] == 4500 for r in out + inb), "ESP not UDP-encapsulated on 4500"
    return out + inb
