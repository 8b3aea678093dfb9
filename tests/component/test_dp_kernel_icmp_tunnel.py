#!/usr/bin/python3
"""espresso-dp with net_pcap ports: an ICMP error the kernel (behind the TAP) sends about a packet that
reached it through a tunnel goes back through the tunnel, never in the clear.

Two peers send, through their inbound SAs, a UDP datagram to the gateway's own inside address
192.168.1.1 (the SAs' local selector 192.168.1.0/24 covers it, so the decrypted packet goes to the
kernel) on a port nothing listens on. Linux answers each with ICMP port unreachable quoting the
decrypted datagram. ICMP errors otherwise bypass the SPD (RFC 4301 §6.1.1, PMTU of the ESP packets);
these quote what was protected, so (RFC 4301 §6.2) the one to 192.168.2.10 must leave as ESP of the
outbound SA 0x1001 (scapy decrypts: port unreachable quoting the datagram), and the one to
192.168.3.10, for which no outbound SA exists, must be dropped and counted `unprotected`. Nothing
quoting the datagram may leave in the clear.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_kernel_icmp_tunnel.py
"""
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging  # noqa: E402
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import Ether, IP, ICMP, UDP, Raw, wrpcap, rdpcap, raw  # noqa: E402
from scapy.layers.ipsec import SecurityAssociation, ESP  # noqa: E402

import dp_process as dp  # noqa: E402
from oracle import Report  # noqa: E402

KEY_OUT = bytes.fromhex("00112233445566778899aabbccddeeff01020304")
KEY_IN = bytes.fromhex("ffeeddccbbaa99887766554433221100a1a2a3a4")
SECRET = b"protected payload " * 4

CONFIG = """\
security-associations:
  - {{ spi: 0x1001, direction: outbound, protocol: esp, mode: tunnel, source: 198.51.100.1, destination: 203.0.113.1,
      encryption: aes128gcm16, key: 0x{out}, integrity: none,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.2.0/24 }} }}
  - {{ spi: 0x2001, direction: inbound, protocol: esp, mode: tunnel, source: 203.0.113.1, destination: 198.51.100.1,
      encryption: aes128gcm16, key: 0x{inb}, integrity: none,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.2.0/24 }} }}
  # Only inbound: no outbound SA covers the way back to 192.168.3.0/24.
  - {{ spi: 0x2002, direction: inbound, protocol: esp, mode: tunnel, source: 203.0.113.2, destination: 198.51.100.1,
      encryption: aes128gcm16, key: 0x{inb}, integrity: none,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.3.0/24 }} }}
"""


def esp_in(spi, peer, src, ident):
    sa = SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=KEY_IN, auth_algo="NULL", auth_key=None,
                             tunnel_header=IP(src=peer, dst="198.51.100.1"))
    inner = IP(src=src, dst="192.168.1.1", id=ident, ttl=64) / UDP(sport=7, dport=9) / Raw(SECRET)
    return Ether(src=dp.ROUTER_MAC, dst=dp.GW_OUT_MAC) / sa.encrypt(inner, seq_num=1)


def main():
    report = Report("espresso-dp: the kernel's ICMP errors about tunnelled packets stay in the tunnel")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dpkicmp-", "espdpkicmp")
    try:
        dp.netns_add(gw.ns)
        wrpcap(gw.path("outside-in.pcap"), [esp_in(0x2001, "203.0.113.1", "192.168.2.10", 201),
                                            esp_in(0x2002, "203.0.113.2", "192.168.3.10", 202)])
        wrpcap(gw.path("inside-in.pcap"), [])
        # Routes to the protected subnets, so that the kernel has a way to answer at all.
        config = dp.two_port_config(gw.workdir, routes=("203.0.113.0/24", "192.168.2.0/24", "192.168.3.0/24"))
        proc = gw.start(config + CONFIG.format(out=KEY_OUT.hex(), inb=KEY_IN.hex()))
        drops = dp.wait_stable(lambda: (dp.dataplane_drops(gw.sock), dp.sa_table(gw.sock)), timeout=30, quiet=2.0)[0]
        status = proc.stop()
        out = [f for f in rdpcap(gw.path("outside-out.pcap")) if IP in f]
        inside = [f for f in rdpcap(gw.path("inside-out.pcap")) if IP in f]

        def nothing_in_clear():
            problems = []
            for f in out + inside:
                if f[IP].proto != 50 and SECRET[:18] in raw(f):
                    problems.append(f"cleartext {f[IP].src} -> {f[IP].dst} proto {f[IP].proto} quotes the "
                                    "decrypted datagram")
            return problems
        report.run("no ICMP error quoting a decrypted datagram leaves in the clear", nothing_in_clear)

        def error_through_tunnel():
            esp = [f for f in out if f[IP].proto == 50]
            if len(esp) != 1:
                return [f"{len(esp)} ESP packets out, want 1 (the kernel's error to 192.168.2.10)"]
            f = esp[0]
            if f[ESP].spi != 0x1001 or f[IP].dst != "203.0.113.1":
                return [f"ESP spi {f[ESP].spi:#x} to {f[IP].dst}, want 0x1001 to 203.0.113.1"]
            sa = SecurityAssociation(ESP, spi=0x1001, crypt_algo="AES-GCM", crypt_key=KEY_OUT, auth_algo="NULL",
                                     auth_key=None, tunnel_header=IP(src="198.51.100.1", dst="203.0.113.1"))
            inner = sa.decrypt(IP(raw(f[IP])))
            if ICMP not in inner or inner[ICMP].type != 3 or inner[ICMP].code != 3:
                return [f"decrypted: {inner.summary()}, want ICMP port unreachable"]
            problems = []
            if inner[IP].src != "192.168.1.1" or inner[IP].dst != "192.168.2.10":
                problems.append(f"error {inner[IP].src} -> {inner[IP].dst}, want 192.168.1.1 -> 192.168.2.10")
            quoted = IP(raw(inner[ICMP].payload))
            if quoted.src != "192.168.2.10" or quoted.id != 201:
                problems.append(f"quotes {quoted.src} id {quoted.id}, want 192.168.2.10 id 201")
            return problems
        report.run("the kernel's error about the datagram from 192.168.2.10 leaves as ESP of SA 0x1001 "
                   "(scapy decrypts: port unreachable from 192.168.1.1)", error_through_tunnel)

        def counted():
            problems = []
            if drops.get("unprotected", 0) != 1:
                problems.append(f"unprotected {drops.get('unprotected', 0)}, want 1 (the error with no SA back)")
            if status != 0:
                problems.append(f"espresso-dp exit status {status} after SIGTERM")
            return problems
        report.run("the error with no outbound SA back counted unprotected, clean exit", counted)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
