#!/usr/bin/python3
"""espresso-dp's update-sa operation (a peer's NAT mapping changed under an outbound SA, RFC 7296
§2.23): on tests/system/topology.py's static site-to-site network, HQ's outbound SA 0x1001 is pointed
at another address and then back. Checked on the wire with tshark on the internet segment: ESP
follows the new address at once, its sequence numbers continue past the old ones (never reused, so
the peer's anti-replay window takes them), and the peer decrypts again after the move back; the
SA's counters are kept across updates. Bad requests are refused with a reason.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_update_sa.py
"""
import json
import os
import socket
import struct
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from topology import Topology, sh  # noqa: E402

BUILD = os.environ.get("ESPRESSO_BUILD", os.path.join(HERE, "..", "..", "build"))


def request(sock_path, op, args, ident=1):
    """One request on the control socket (docs/control-api.md: 4-byte big-endian length + JSON)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock_path)
    body = json.dumps({"version": 1, "id": ident, "op": op, "args": args}).encode()
    s.sendall(struct.pack("!I", len(body)) + body)
    header = b""
    while len(header) < 4:
        header += s.recv(4 - len(header))
    (length,) = struct.unpack("!I", header)
    data = b""
    while len(data) < length:
        data += s.recv(length - len(data))
    s.close()
    return json.loads(data)


def esp_rows(pcap):
    r = subprocess.run(["tshark", "-r", pcap, "-Y", "esp && esp.spi == 0x1001", "-T", "fields", "-e", "ip.dst",
                        "-e", "esp.sequence"], capture_output=True, text=True, timeout=120)
    return [tuple(line.split("\t")) for line in r.stdout.splitlines() if line]


def main():
    if not os.path.exists(os.path.join(BUILD, "dataplane", "espresso-dp")):
        print("SKIP: espresso-dp not built")
        return 77
    topo = Topology(BUILD, prefix=f"esup{os.getpid() % 10000}")
    checks = []
    hq = "/run/espresso/hq.sock"
    try:
        topo.create()
        topo.start_gateways()
        ping = lambda n: sh(f"ping -c {n} -i 0.1 -W 1 192.168.2.10", ns=topo.ns["host-hq"], check=False, capture=True).stdout
        ping(3)  # ARP warm-up
        pcap = os.path.join(topo.dir, "inet.pcap")
        cap = subprocess.Popen(["ip", "netns", "exec", topo.ns["inet"], "tshark", "-q", "-n", "-i", "inet-hq", "-w", pcap],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while (not os.path.exists(pcap) or os.path.getsize(pcap) == 0) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        before = ping(5)
        # `clear counters` zeroes what `show crypto ipsec sa` counts, never the consumed lifetime,
        # which must also survive both updates (an outbound SA's lifetime is its counters' raw value
        # plus what the replaced SA carried over: sa_runtime::consumed_packets).
        topo.cli("gw-hq", "clear counters")
        moved = request(hq, "update-sa", {"spi": "0x1001", "peer": {"address": "203.0.113.7"}})
        checks.append(("update-sa to 203.0.113.7 accepted", moved.get("ok") is True))
        lost = ping(5)
        back = request(hq, "update-sa", {"spi": 4097, "peer": {"address": "203.0.113.1"}})
        checks.append(("update-sa back to 203.0.113.1 accepted", back.get("ok") is True))
        after = ping(5)
        time.sleep(0.5)
        cap.terminate()
        cap.wait(timeout=20)
        checks.append(("5/5 pings before the update", " 5 received" in before))
        checks.append(("no replies while ESP goes to an address nobody has", " 0 received" in lost))
        checks.append(("5/5 pings after moving back (the peer's replay window accepts the later numbers)",
                       " 5 received" in after))
        rows = esp_rows(pcap)
        dsts = [d for d, _ in rows]
        seqs = [int(s) for _, s in rows]
        first_moved = dsts.index("203.0.113.7") if "203.0.113.7" in dsts else -1
        checks.append(("ESP went to 203.0.113.7 between the updates and to 203.0.113.1 before and after",
                       first_moved > 0 and dsts.count("203.0.113.7") == 5 and dsts[-1] == "203.0.113.1"
                       and dsts[:first_moved] == ["203.0.113.1"] * first_moved))
        checks.append(("sequence numbers strictly increase across both updates (none reused)",
                       len(seqs) >= 15 and all(b > a for a, b in zip(seqs, seqs[1:]))))
        print(f"     (ESP seen: {list(zip(dsts, seqs))})")
        sa = [s for s in json.loads(topo.cli("gw-hq", "--json show crypto ipsec sa"))["sas"]
              if s["direction"] == "outbound"][0]
        checks.append((f"counters kept across updates (encaps {sa['counters']['encaps']}: the 10 pings since the clear)",
                       sa["counters"]["encaps"] == 10 and sa["destination"] == "203.0.113.1"))
        consumed = sa.get("consumed", {}).get("packets")
        checks.append((f"consumed lifetime {consumed} packets = every echo request since install (3 + 5 before "
                       "the clear, 10 after): not reset by the clear, carried across both updates",
                       consumed == 18))
        bad = [
            request(hq, "update-sa", {"spi": "0x2001", "peer": {"address": "203.0.113.9"}}),  # inbound SPI
            request(hq, "update-sa", {"spi": "0x1001", "peer": {"port": 4501}}),  # not UDP-encapsulated
            request(hq, "update-sa", {"spi": "0x1001", "peer": {"address": "2001:db8::1"}}),  # other family
            request(hq, "update-sa", {"spi": "0x1001", "peer": {"adress": "203.0.113.9"}}),
        ]
        for b in bad:
            print(f"     refused: {b.get('error')}")
        checks.append(("bad update-sa requests refused with a reason",
                       all(b.get("ok") is False and b.get("error") for b in bad)
                       and "no outbound SA" in bad[0]["error"] and "UDP" in bad[1]["error"]
                       and "family" in bad[2]["error"] and "adress" in bad[3]["error"]))
    except Exception as e:  # noqa: BLE001
        checks.append((f"setup: {e}", False))
        traceback.print_exc()
    finally:
        topo.teardown()
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'} {name}")
    failed = sum(1 for _, ok in checks if not ok)
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
