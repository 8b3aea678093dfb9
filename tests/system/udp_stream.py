"""A sequence-numbered UDP stream between two namespaces: the receiver reports every missing and
duplicated sequence number, so a make-before-break gap of a few milliseconds during a rekey shows
(a `ping -i 0.2` would step over it).

    s = UdpStream(topo, "host-hq", "host-branch", "192.168.2.10", port=41000, rate=2000, seconds=20)
    s.start(); ...; r = s.result()     # {"sent", "received", "missing", "duplicates", "reordered", "gaps"}

The sender paces itself on the clock (a batch every 5 ms), so the rate holds on a busy machine; each
datagram carries an 8-byte sequence number and is padded to `size` bytes. `gaps` lists runs of missing
numbers as [first, count] (at most 20), which locates a loss in time (seq / rate seconds after start).
"""
import json
import os
import subprocess
import time

SENDER = r'''
import socket, struct, sys, time
dst, port, rate, seconds, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
pad = b"\0" * max(0, size - 8)
total = int(rate * seconds)
start = time.monotonic()
seq = 0
errors = 0
while seq < total:
    due = min(total, int((time.monotonic() - start) * rate) + 1)
    while seq < due:
        try:
            s.sendto(struct.pack("!Q", seq) + pad, (dst, port))
            seq += 1
        except (BlockingIOError, OSError):
            errors += 1          # a full socket buffer: retried, never skipped
            time.sleep(0.0005)
    time.sleep(0.005)
print(seq, errors, flush=True)
'''

RECEIVER = r'''
import json, socket, struct, sys
port, idle = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("0.0.0.0", port))
print("bound", flush=True)
seen = {}
order = []
s.settimeout(30)                  # the first datagram
try:
    while True:
        data = s.recv(65536)
        s.settimeout(idle)
        if len(data) < 8:
            continue
        q = struct.unpack("!Q", data[:8])[0]
        seen[q] = seen.get(q, 0) + 1
        order.append(q)
except socket.timeout:
    pass
top = max(seen) if seen else -1
print(json.dumps({"seen": sorted(seen.items()), "top": top,
                  "reordered": sum(1 for a, b in zip(order, order[1:]) if b < a)}), flush=True)
'''


class UdpStream:
    def __init__(self, topo, src_ns, dst_ns, dst_ip, port, rate, seconds, size=200, idle=3.0):
        self.topo, self.src_ns, self.dst_ns, self.dst_ip = topo, src_ns, dst_ns, dst_ip
        self.port, self.rate, self.seconds, self.size, self.idle = port, rate, seconds, size, idle
        d = topo.dir if hasattr(topo, "dir") else "/tmp"
        self.send_py = os.path.join(d, "udp_stream_send.py")
        self.recv_py = os.path.join(d, "udp_stream_recv.py")
        open(self.send_py, "w").write(SENDER)
        open(self.recv_py, "w").write(RECEIVER)
        self.sink = self.src = None

    def start(self):
        self.sink = subprocess.Popen(["ip", "netns", "exec", self.topo.ns[self.dst_ns], "/usr/bin/python3", "-u",
                                      self.recv_py, str(self.port), str(self.idle)], stdout=subprocess.PIPE, text=True)
        line = self.sink.stdout.readline().strip()
        assert line == "bound", f"stream receiver did not start: {line!r}"
        self.t0 = time.time()
        self.src = subprocess.Popen(["ip", "netns", "exec", self.topo.ns[self.src_ns], "/usr/bin/python3", "-u",
                                     self.send_py, self.dst_ip, str(self.port), str(self.rate), str(self.seconds),
                                     str(self.size)], stdout=subprocess.PIPE, text=True)
        return self

    def result(self):
        out, _ = self.src.communicate(timeout=self.seconds * 3 + 60)
        sent, errors = (int(x) for x in out.split())
        out, _ = self.sink.communicate(timeout=self.idle + 60)
        r = json.loads(out.strip().splitlines()[-1])
        seen = dict(r["seen"])
        missing = [q for q in range(sent) if q not in seen]
        gaps = []
        for q in missing:
            if gaps and gaps[-1][0] + gaps[-1][1] == q:
                gaps[-1][1] += 1
            else:
                gaps.append([q, 1])
        return {"sent": sent, "send-retries": errors, "received": len(seen), "missing": len(missing),
                "duplicates": sum(n - 1 for n in seen.values()), "reordered": r["reordered"],
                "gaps": gaps[:20], "rate": self.rate, "seconds": self.seconds}

    def stop(self):
        for p in (self.src, self.sink):
            if p and p.poll() is None:
                p.kill()
                p.wait()


def run_stream(topo, src_ns, dst_ns, dst_ip, port, rate, seconds, **kw):
    s = UdpStream(topo, src_ns, dst_ns, dst_ip, port, rate, seconds, **kw).start()
    try:
        return s.result()
    finally:
        s.stop()


def assert_lossless(r, what):
    """Zero missing and zero duplicated sequence numbers."""
    assert r["missing"] == 0 and r["duplicates"] == 0, \
        f"{what}: {r['missing']} of {r['sent']} missing, {r['duplicates']} duplicated, gaps [first seq, count] " \
        f"{r['gaps']} at {r['rate']} packets/s"
