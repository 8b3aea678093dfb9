#!/usr/bin/python3
"""espresso-dp with net_pcap ports: TFC padding (RFC 4303 §2.7) never makes an ESP packet larger than
the link MTU.

Two tunnel SAs ask for `tfc-pad: 1500` on a 1500-byte link, AES-128-GCM (57 bytes of encapsulation
at most) and AES-128-CBC + HMAC-SHA-256-128 (77). Padding every inner packet to 1500 bytes would
make ESP packets of 1557 and 1577 bytes; the gateway lowers the padding to what fits (1443 and 1423,
as Linux clamps its xfrm tfcpad to the path MTU) and says so at start. Here DF packets of 100 to the
limit's bytes must all leave as ESP no longer than the MTU and padded close to it (the padding is
there: within one cipher block of 1500), decrypt with scapy to the original, and none be dropped.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_tfc_mtu.py
"""
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging  # noqa: E402
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import Ether, IP, UDP, Raw, wrpcap, rdpcap, raw  # noqa: E402
from scapy.layers.ipsec import SecurityAssociation, ESP  # noqa: E402

import dp_process as dp  # noqa: E402
from oracle import Report  # noqa: E402

GW_OUT_MAC, GW_IN_MAC, ROUTER_MAC, HOST_MAC = dp.GW_OUT_MAC, dp.GW_IN_MAC, dp.ROUTER_MAC, dp.HOST_MAC
GCM_KEY = bytes.fromhex("00112233445566778899aabbccddeeff01020304")
CBC_KEY = bytes.fromhex("0f0e0d0c0b0a09080706050403020100")
AUTH_KEY = bytes(range(32))
MTU = 1500
# SPI: (inner destination, scapy SA arguments, cipher block, padding limit = MTU - overhead)
SAS = {
    0x2001: ("192.168.2.10", dict(crypt_algo="AES-GCM", crypt_key=GCM_KEY, auth_algo="NULL", auth_key=None),
             4, MTU - (20 + 8 + 8 + 16 + 2 + 3)),
    0x2002: ("192.168.3.10", dict(crypt_algo="AES-CBC", crypt_key=CBC_KEY, auth_algo="SHA2-256-128",
                                  auth_key=AUTH_KEY), 16, MTU - (20 + 8 + 16 + 16 + 2 + 15)),
}

# What this test adds to dp.two_port_config(): its policies and security associations.
CONFIG = """\
security-associations:
  - {{ spi: 0x2001, direction: outbound, protocol: esp, mode: tunnel, source: 198.51.100.1, destination: 203.0.113.1,
      encryption: aes128gcm16, key: 0x{gcm_key}, integrity: none, tfc-pad: 1500,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.2.0/24 }} }}
  - {{ spi: 0x2002, direction: outbound, protocol: esp, mode: tunnel, source: 198.51.100.1, destination: 203.0.113.1,
      encryption: aes128, key: 0x{cbc_key}, integrity: sha256, integrity-key: 0x{auth_key}, tfc-pad: 1500,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.3.0/24 }} }}
"""


def frame(dst, ident, total):
    """An IPv4 UDP packet of `total` bytes with DF set."""
    payload = bytes((ident * 7 + i) % 251 for i in range(total - 28))
    return (Ether(src=HOST_MAC, dst=GW_IN_MAC) /
            IP(src="192.168.1.10", dst=dst, id=ident, ttl=64, flags="DF") / UDP(sport=4000, dport=5000) /
            Raw(payload))


def main():
    report = Report("espresso-dp: TFC padding stays within the MTU")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dptfc-", "espdpt")
    try:
        dp.netns_add(gw.ns)
        sent = {}  # IP id -> (spi, the inner packet's bytes)
        inside = []
        for spi, (dst, _, _, limit) in SAS.items():
            for total in (100, 1000, 1400, limit - 1, limit):
                ident = len(inside)
                f = frame(dst, ident, total)
                inside.append(f)
                forwarded = f[IP].copy()  # as the gateway forwards it: one hop less
                forwarded.ttl -= 1
                del forwarded.chksum
                sent[ident] = (spi, raw(forwarded))
        wrpcap(gw.path("inside-in.pcap"), inside)
        wrpcap(gw.path("outside-in.pcap"), [])
        proc = gw.start(dp.two_port_config(gw.workdir, outside_mtu=MTU, inside_mtu=MTU) +
                        CONFIG.format(gcm_key=GCM_KEY.hex(), cbc_key=CBC_KEY.hex(), auth_key=AUTH_KEY.hex()))
        dp.wait_stable(lambda: (dp.dataplane_rx(gw.sock), dp.dataplane_drops(gw.sock)), timeout=30, quiet=1.5)
        rx = dp.dataplane_rx(gw.sock)
        drops = dp.dataplane_drops(gw.sock)
        listed = {spi: sa for (_, spi), sa in dp.sa_table(gw.sock).items()}
        status = proc.stop()
        log = proc.log()
        out = [f for f in rdpcap(gw.path("outside-out.pcap")) if IP in f]

        def said_so():
            problems = []
            for spi, (_, _, _, limit) in SAS.items():
                want = f"SA 0x{spi:08x}: tfc-pad 1500 lowered to {limit}"
                if want not in log:
                    problems.append(f"the log does not say '{want}'")
            return problems
        report.run("the gateway says it lowered each SA's tfc-pad, and to what", said_so)

        def shown():
            problems = []
            for spi, (_, _, _, limit) in SAS.items():
                sa = listed.get(spi, {})
                if sa.get("tfc-pad") != 1500 or sa.get("tfc-pad-applied") != limit:
                    problems.append(f"SA 0x{spi:x}: show crypto ipsec sa --json has tfc-pad {sa.get('tfc-pad')} "
                                    f"and tfc-pad-applied {sa.get('tfc-pad-applied')}, want 1500 and {limit}")
            return problems
        report.run("show crypto ipsec sa --json gives the configured and the applied padding", shown)

        def received_and_clean():
            return dp.clean_run_problems(status, rx, len(inside), drops)
        report.run("every packet received, nothing dropped (none too big), clean exit", received_and_clean)

        def padded_within_mtu():
            problems = []
            esp = [f for f in out if f[IP].proto == 50]
            if len(esp) != len(inside):
                problems.append(f"{len(esp)} ESP packets out, want {len(inside)}")
            seen = set()
            for f in esp:
                wire = raw(f[IP])
                spi = f[ESP].spi
                if spi not in SAS:
                    problems.append(f"ESP with unknown SPI 0x{spi:08x}")
                    continue
                _, algo, block, _ = SAS[spi]
                if not MTU - block < len(wire) <= MTU:
                    problems.append(f"SPI 0x{spi:x} seq {f[ESP].seq}: {len(wire)} bytes on the wire, want "
                                    f"more than {MTU - block} (padded) and at most {MTU}")
                sa = SecurityAssociation(ESP, spi=spi, **algo,
                                         tunnel_header=IP(src="198.51.100.1", dst="203.0.113.1"))
                try:
                    inner = sa.decrypt(IP(wire))
                except Exception as e:  # noqa: BLE001 - scapy's integrity error
                    problems.append(f"SPI 0x{spi:x} seq {f[ESP].seq}: scapy cannot decrypt: {e}")
                    continue
                body = raw(inner)
                want_spi, want = sent.get(inner.id, (None, b""))
                # What follows the inner packet's total length is the TFC padding (zeros here).
                if want_spi != spi or body[:len(want)] != want or any(body[len(want):]):
                    problems.append(f"SPI 0x{spi:x} seq {f[ESP].seq}: decrypts to {len(body)} bytes that are not "
                                    f"packet {inner.id} ({len(want)} bytes) followed by zero padding")
                seen.add(inner.id)
            missing = sorted(set(sent) - seen)
            if missing:
                problems.append(f"packets never seen decrypted: {missing}")
            return problems[:10]
        report.run("every packet leaves as ESP padded to within one block of the 1500-byte MTU, never over "
                   "it, and scapy decrypts it to the original", padded_within_mtu)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
