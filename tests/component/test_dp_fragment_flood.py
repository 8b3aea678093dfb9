#!/usr/bin/python3
"""espresso-dp with net_pcap ports: a flood of IP fragments that never complete cannot starve the
receive pool.

Fragments addressed to the gateway wait for the rest of their datagram for up to
reassembly-timeout-ms. The outside pcap carries 4096 datagrams' worth of ESP fragments to the
gateway (7 non-last fragments each, the last never sent; reassembly-datagrams 4096, a 60 s timeout),
28672 mbufs if each waiting fragment kept the one it was received in: more than the whole mbuf pool
of a two-port, one-worker gateway (24575). Then ordinary packets from the outside to the LAN
follow. The waiting fragments must hold only the reassembler's own pool (two per datagram), the
fragments beyond it are counted `frag_no_buffer`, every packet is received (none left in the pcap
for want of an mbuf) and every ordinary packet is forwarded.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_fragment_flood.py
"""
import os
import struct
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging  # noqa: E402
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import Ether, IP, UDP, Raw, wrpcap, rdpcap, raw  # noqa: E402

import dp_process as dp  # noqa: E402
from oracle import Report  # noqa: E402

DATAGRAMS = 4096
PER_DATAGRAM = 7   # non-last fragments of 64 bytes each; the last one never comes
GOOD = 50
WAITING = 2 * DATAGRAMS - 1  # the worker's pool of waiting fragments (gateway.cpp setup_workers)


def ip_checksum(header):
    s = sum(struct.unpack("!10H", header))
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff


def fragment_frame(ident, index):
    """A non-last fragment (64 bytes of ESP) from 203.0.113.7 to the gateway, built by hand: scapy
    would take minutes for 28672 of them, and nothing here is parsed by our own code first."""
    data = bytes((ident + index + k) & 0xff for k in range(64))
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), ident, 0x2000 | (index * 8), 64, 50, 0,
                         bytes([203, 0, 113, 7]), bytes([198, 51, 100, 1]))
    header = header[:10] + struct.pack("!H", ip_checksum(header)) + header[12:]
    ether = bytes.fromhex(dp.GW_OUT_MAC.replace(":", "")) + bytes.fromhex(dp.ROUTER_MAC.replace(":", "")) + b"\x08\x00"
    return ether + header + data


def write_pcap(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1))
        for fr in frames:
            f.write(struct.pack("<IIII", 0, 0, len(fr), len(fr)))
            f.write(fr)


def main():
    report = Report("espresso-dp: a flood of incomplete fragments does not starve the receive pool")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dpflood-", "espdpflood")
    try:
        dp.netns_add(gw.ns)
        flood = [fragment_frame(d, k) for d in range(DATAGRAMS) for k in range(PER_DATAGRAM)]
        good = [raw(Ether(src=dp.ROUTER_MAC, dst=dp.GW_OUT_MAC) /
                    IP(src="203.0.113.5", dst="192.168.1.10", id=60000 + k) / UDP(sport=7, dport=7) / Raw(b"g" * 40))
                for k in range(GOOD)]
        write_pcap(gw.path("outside-in.pcap"), flood + good)
        wrpcap(gw.path("inside-in.pcap"), [])
        config = dp.two_port_config(gw.workdir).replace(
            "  idle: poll\n", "  idle: poll\n  reassembly-datagrams: 4096\n  reassembly-timeout-ms: 60000\n")
        proc = gw.start(config)
        rx, drops = dp.wait_stable(lambda: (dp.dataplane_rx(gw.sock), dp.dataplane_drops(gw.sock)),
                                   timeout=60, quiet=1.5)
        status = proc.stop()
        out = [f for f in rdpcap(gw.path("inside-out.pcap")) if IP in f]

        def all_received():
            problems = []
            if rx != len(flood) + len(good):
                problems.append(f"workers received {rx} packets, fed {len(flood) + len(good)} "
                                f"(the rest waited for an mbuf)")
            if status != 0:
                problems.append(f"espresso-dp exit status {status} after SIGTERM")
            return problems
        report.run(f"all {len(flood) + len(good)} packets received, clean exit", all_received)

        def waiting_bounded():
            problems = []
            no_buffer = drops.get("frag_no_buffer", 0)
            if no_buffer < len(flood) - WAITING:
                problems.append(f"frag_no_buffer {no_buffer}: want at least {len(flood) - WAITING} "
                                f"({len(flood)} fragments, {WAITING} may wait)")
            other = {k: v for k, v in drops.items() if v and k != "frag_no_buffer"}
            if other:
                problems.append(f"other drops: {other}")
            return problems
        report.run(f"at most {WAITING} fragments wait, the others are counted frag_no_buffer", waiting_bounded)

        def good_forwarded():
            ids = sorted(f[IP].id for f in out if f[IP].src == "203.0.113.5")
            want = list(range(60000, 60000 + GOOD))
            return [] if ids == want else [f"{len(ids)} of the {GOOD} ordinary packets forwarded to the LAN"]
        report.run("the ordinary packets after the flood reach the LAN", good_forwarded)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
