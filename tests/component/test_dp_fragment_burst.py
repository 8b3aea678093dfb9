#!/usr/bin/python3
"""espresso-dp with net_pcap ports: one RX poll whose protected packets are fragmented before
encryption (RFC 4301 §8.1) and that also carries bypassed packets.

A pass's `forward` vector holds 128 packets; 40 packets that each become 3 fragments (120 ESP
packets) followed by 24 bypassed ones once wrote past it (the room check covered only protected
packets). Here every fragment must leave as ESP that scapy decrypts, every bypassed packet in clear,
nothing dropped, and the process must exit cleanly.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_fragment_burst.py
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
KEY = bytes.fromhex("00112233445566778899aabbccddeeff01020304")
PROTECTED = 40   # 1400-byte packets without DF: 3 fragments each at the outside MTU of 576
BYPASSED = 24    # after them in the same RX poll (64 packets)

# What this test adds to dp.two_port_config(): its policies and security associations.
CONFIG = """\
policies:
  - {{ local: 192.168.1.0/24, remote: 192.168.2.99/32, action: bypass, priority: 10 }}
security-associations:
  - {{ spi: 0x1001, direction: outbound, protocol: esp, mode: tunnel, source: 198.51.100.1, destination: 203.0.113.1,
      encryption: aes128gcm16, key: 0x{key}, integrity: none,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.2.0/24 }} }}
"""


def frame(dst, ident, size):
    payload = bytes((ident * 7 + i) % 251 for i in range(size))
    return (Ether(src=HOST_MAC, dst=GW_IN_MAC) /
            IP(src="192.168.1.10", dst=dst, id=ident, ttl=64) / UDP(sport=4000, dport=5000) / Raw(payload))


def main():
    report = Report("espresso-dp: a pass of pre-fragmented and bypassed packets")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dpfrag-", "espdpf")
    try:
        dp.netns_add(gw.ns)
        inside = [frame("192.168.2.10", k, 1372) for k in range(PROTECTED)]
        inside += [frame("192.168.2.99", 1000 + k, 100) for k in range(BYPASSED)]
        wrpcap(gw.path("inside-in.pcap"), inside)
        wrpcap(gw.path("outside-in.pcap"), [])
        proc = gw.start(dp.two_port_config(gw.workdir, routes=("203.0.113.0/24", "192.168.2.0/24"), outside_mtu=576) +
                        CONFIG.format(key=KEY.hex()))
        dp.wait_stable(lambda: (dp.dataplane_rx(gw.sock), dp.dataplane_drops(gw.sock)), timeout=30, quiet=1.5)
        rx = dp.dataplane_rx(gw.sock)
        drops = dp.dataplane_drops(gw.sock)
        status = proc.stop()
        out = [f for f in rdpcap(gw.path("outside-out.pcap")) if IP in f]

        def received_and_clean():
            return dp.clean_run_problems(status, rx, len(inside), drops)
        report.run("one RX poll of 64 packets received, nothing dropped, clean exit", received_and_clean)

        def fragments_as_esp():
            problems = []
            esp = [f for f in out if f[IP].proto == 50]
            if len(esp) != 3 * PROTECTED:
                problems.append(f"{len(esp)} ESP packets out, want {3 * PROTECTED} (3 fragments per packet)")
            sa = SecurityAssociation(ESP, spi=0x1001, crypt_algo="AES-GCM", crypt_key=KEY, auth_algo="NULL",
                                     auth_key=None, tunnel_header=IP(src="198.51.100.1", dst="203.0.113.1"))
            got = {}
            for f in esp:
                if len(raw(f[IP])) > 576:
                    problems.append(f"ESP packet of {len(raw(f[IP]))} bytes on a 576-byte link")
                try:
                    inner = sa.decrypt(IP(raw(f[IP])))
                except Exception as e:  # noqa: BLE001 - scapy's integrity error
                    problems.append(f"seq {f[ESP].seq}: scapy cannot decrypt: {e}")
                    continue
                got.setdefault(inner.id, []).append(inner)
            for k in range(PROTECTED):
                parts = sorted(got.get(k, []), key=lambda p: p.frag)
                data = b"".join(raw(p.payload) for p in parts)
                want = raw(inside[k][IP].payload)
                if data != want:
                    problems.append(f"packet {k}: fragments carry {len(data)} bytes that differ from the "
                                    f"original's {len(want)}")
            return problems[:10]
        report.run("every protected packet leaves as 3 ESP-protected fragments that scapy decrypts and "
                   "that reassemble to the original", fragments_as_esp)

        def bypassed_in_clear():
            clear = [f for f in out if f[IP].proto == 17]
            ids = sorted(f[IP].id for f in clear if f[IP].dst == "192.168.2.99")
            want = list(range(1000, 1000 + BYPASSED))
            return [] if ids == want else [f"bypassed packets out: ids {ids}, want {want}"]
        report.run("every bypassed packet of the same poll leaves in clear", bypassed_in_clear)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
