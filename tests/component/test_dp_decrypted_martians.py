#!/usr/bin/python3
"""espresso-dp with net_pcap ports: a tunnel whose selectors are 0.0.0.0/0 (and ::/0) does not let its
peer deliver packets to loopback, broadcast or multicast addresses, or from martian sources.

RFC 4301 §5.2 has the gateway check a decrypted packet against its SA's selectors; with 0.0.0.0/0 on
both sides (a full tunnel, as road-warrior and many site-to-site set-ups negotiate) every address
matches, and the peer could have the gateway forward 127.0.0.1, 255.255.255.255 or 224.0.0.5 onto the
LAN or down the default route, which the gateway refuses for cleartext (RFC 1812 §5.3.7). Scapy
encrypts the inner packets with the SA's key; only the ordinary ones may come out (on the inside),
the others are counted `martian` or `multicast`. A default route makes every destination routable, so
the drops are not `no_route`.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_decrypted_martians.py
"""
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging  # noqa: E402
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import Ether, IP, IPv6, UDP, Raw, wrpcap, rdpcap  # noqa: E402
from scapy.layers.ipsec import SecurityAssociation, ESP  # noqa: E402

import dp_process as dp  # noqa: E402
from oracle import Report  # noqa: E402

KEY = bytes.fromhex("ffeeddccbbaa99887766554433221100a1a2a3a4")

CONFIG = """\
security-associations:
  - {{ spi: 0x3001, direction: inbound, protocol: esp, mode: tunnel, source: 203.0.113.1, destination: 198.51.100.1,
      encryption: aes128gcm16, key: 0x{key}, integrity: none,
      selectors: {{ local: 0.0.0.0/0, remote: 0.0.0.0/0 }} }}
  - {{ spi: 0x3002, direction: inbound, protocol: esp, mode: tunnel, source: 203.0.113.1, destination: 198.51.100.1,
      encryption: aes128gcm16, key: 0x{key}, integrity: none,
      selectors: {{ local: "::/0", remote: "::/0" }} }}
"""

# (inner packet, what must happen: "forward", "martian" or "multicast")
INNER = [
    (IP(src="192.168.2.10", dst="192.168.1.10", id=1), "forward"),
    (IP(src="192.168.2.10", dst="127.0.0.1", id=2), "martian"),
    (IP(src="192.168.2.10", dst="255.255.255.255", id=3), "martian"),
    (IP(src="0.0.0.0", dst="192.168.1.10", id=4), "martian"),
    (IP(src="127.0.0.1", dst="192.168.1.10", id=5), "martian"),
    (IP(src="192.168.2.10", dst="224.0.0.5", id=6), "multicast"),
    (IPv6(src="2001:db8:2::10", dst="ff02::1", fl=7), "multicast"),
    (IPv6(src="::1", dst="2001:db8:1::10", fl=8), "martian"),
    (IPv6(src="2001:db8:2::10", dst="::1", fl=9), "martian"),
]


def main():
    report = Report("espresso-dp: decrypted packets to or from martian addresses are not forwarded")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dpdmart-", "espdpdmart")
    try:
        dp.netns_add(gw.ns)
        frames = []
        for seq, (inner, _) in enumerate(INNER, start=1):
            spi = 0x3002 if IPv6 in inner else 0x3001
            sa = SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=KEY, auth_algo="NULL",
                                     auth_key=None, tunnel_header=IP(src="203.0.113.1", dst="198.51.100.1"))
            packet = inner / UDP(sport=7, dport=9) / Raw(b"x" * 32)
            frames.append(Ether(src=dp.ROUTER_MAC, dst=dp.GW_OUT_MAC) / sa.encrypt(packet, seq_num=seq))
        wrpcap(gw.path("outside-in.pcap"), frames)
        wrpcap(gw.path("inside-in.pcap"), [])
        config = dp.two_port_config(gw.workdir, routes=("0.0.0.0/0",))
        proc = gw.start(config + CONFIG.format(key=KEY.hex()))
        drops = dp.wait_stable(lambda: dp.dataplane_drops(gw.sock), timeout=30, quiet=1.5)
        status = proc.stop()
        left = [f for f in rdpcap(gw.path("outside-out.pcap")) + rdpcap(gw.path("inside-out.pcap"))
                if IP in f or IPv6 in f]

        def only_ordinary_forwarded():
            got = sorted(f"{f[IP].src} -> {f[IP].dst}" if IP in f else f"{f[IPv6].src} -> {f[IPv6].dst}"
                         for f in left)
            want = ["192.168.2.10 -> 192.168.1.10"]
            return [] if got == want else [f"left the gateway: {got}, want {want}"]
        report.run("only the ordinary decrypted packet is forwarded", only_ordinary_forwarded)

        def counted():
            problems = []
            for reason in ("martian", "multicast"):
                want = sum(1 for _, what in INNER if what == reason)
                if drops.get(reason, 0) != want:
                    problems.append(f"{reason} {drops.get(reason, 0)}, want {want}")
            if drops.get("no_route", 0):
                problems.append(f"no_route {drops['no_route']}, want 0")
            if status != 0:
                problems.append(f"espresso-dp exit status {status} after SIGTERM")
            return problems
        report.run("the others counted martian or multicast, clean exit", counted)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
