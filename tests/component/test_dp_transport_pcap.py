#!/usr/bin/python3
"""Component test: the gateway's own traffic through a transport-mode SA, espresso-dp on a net_pcap port.

The outside port reads scapy-made frames from a pcap; the kernel behind the TAP dp-outside (in a
network namespace made here, IPv6 off as in test_dp_pcap.py) is the gateway's own IP stack:

  - three ICMP echo requests from the peer 203.0.113.1 inside ESP transport mode (scapy, SPI 0x3001,
    AES-GCM): decrypted, handed to the TAP; the kernel's echo replies go through the outbound SPD and
    leave as ESP transport (SPI 0x3002) that scapy decrypts to the replies (same id and sequence);
  - one cleartext echo request from the peer: an inbound protect policy (implied by SA 0x3001) covers
    it, so it is dropped and counted as `unprotected`, and the kernel never answers;
  - one cleartext UDP datagram to port 500 (IKE, the implicit bypass): it reaches the kernel, which
    has no socket there and answers ICMP port unreachable, an ICMP error, which leaves in the clear
    through the implicit bypass although the transport SA covers every protocol.

The static neighbor 198.51.100.254 is installed into the TAP's kernel by the gateway, so the kernel's
replies do not wait for ARP answers that a pcap cannot give.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_transport_pcap.py
"""
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging  # noqa: E402
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import Ether, IP, ICMP, UDP, UDPerror, IPerror, Raw, wrpcap, rdpcap  # noqa: E402
from scapy.layers.ipsec import SecurityAssociation, ESP  # noqa: E402

import dp_process as dp  # noqa: E402
from oracle import Report  # noqa: E402

GW_MAC = "02:00:00:00:00:01"
ROUTER_MAC = "02:00:00:00:00:fe"
GW, PEER = "198.51.100.1", "203.0.113.1"
KEY_IN = bytes.fromhex("0f0e0d0c0b0a09080706050403020100" + "cafebabe")   # SPI 0x3001, peer -> us
KEY_OUT = bytes.fromhex("00112233445566778899aabbccddeeff" + "deadbeef")  # SPI 0x3002, us -> peer

CONFIG = """\
dataplane:
  workers: 1
  hugepages: false
  idle: poll
  control-socket: {dir}/dp.sock
interfaces:
  - {{ name: outside, device: "net_pcap0,rx_pcap={dir}/outside-in.pcap,tx_pcap={dir}/outside-out.pcap", address: {gw}/24, mac: "{gw_mac}" }}
routes:
  - {{ destination: 203.0.113.0/24, via: 198.51.100.254 }}
neighbors:
  - {{ address: 198.51.100.254, mac: "{router_mac}", interface: outside }}
security-associations:
  - {{ spi: 0x3001, direction: inbound, protocol: esp, mode: transport, encryption: aes128gcm16, key: 0x{key_in},
      integrity: none, selectors: {{ local: {gw}, remote: {peer} }} }}
  - {{ spi: 0x3002, direction: outbound, protocol: esp, mode: transport, encryption: aes128gcm16, key: 0x{key_out},
      integrity: none, selectors: {{ local: {gw}, remote: {peer} }} }}
"""


def scapy_sa(spi, key):
    # No tunnel_header: scapy's transport mode (the packet's own IP header stays outside).
    return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=key, auth_algo="NULL", auth_key=None)


def local_traffic(sock):
    out = dp.cli_json(sock, "show dataplane")
    total = {}
    for w in out["workers"]:
        for k, v in w.get("local-traffic", {}).items():
            total[k] = total.get(k, 0) + v
    return total


def main():
    report = Report("espresso-dp: the gateway's own traffic over a transport SA (net_pcap + TAP)")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dptm-", "espdtm")
    try:
        dp.netns_add(gw.ns)
        wan = Ether(src=ROUTER_MAC, dst=GW_MAC)
        sa_in = scapy_sa(0x3001, KEY_IN)
        frames = []
        for seq in (1, 2, 3):
            echo = IP(src=PEER, dst=GW, id=100 + seq) / ICMP(type=8, id=0x4242, seq=seq) / Raw(b"transport" * 6)
            frames.append(wan / sa_in.encrypt(echo, seq_num=seq))
        frames.append(wan / IP(src=PEER, dst=GW, id=200) / ICMP(type=8, id=0x4343, seq=1) / Raw(b"clear"))
        frames.append(wan / IP(src=PEER, dst=GW, id=300) / UDP(sport=500, dport=500) / Raw(b"\0" * 28))
        wrpcap(gw.path("outside-in.pcap"), frames)
        proc = gw.start(CONFIG.format(dir=gw.workdir, gw=GW, peer=PEER, gw_mac=GW_MAC, router_mac=ROUTER_MAC,
                                      key_in=KEY_IN.hex(), key_out=KEY_OUT.hex()))
        # The pcap is consumed at once; the kernel answers within milliseconds. Wait for the replies
        # to be counted, then read every counter before SIGTERM.
        deadline = time.time() + 20
        while time.time() < deadline:
            local = local_traffic(gw.sock)
            if local.get("out_protected", 0) >= 3 and local.get("out_implicit_bypass", 0) >= 1:
                break
            time.sleep(0.2)
        time.sleep(0.5)
        local = local_traffic(gw.sock)
        drops = dp.dataplane_drops(gw.sock)
        sas = dp.sa_table(gw.sock)
        exit_status = proc.stop()
        out = [f for f in rdpcap(gw.path("outside-out.pcap")) if IP in f]

        def clean():
            return [] if exit_status == 0 else [f"espresso-dp exit status {exit_status}"]
        report.run("SIGTERM: clean exit", clean)

        def replies():
            problems = []
            esp = [f for f in out if f[IP].proto == 50]
            if len(esp) != 3:
                problems.append(f"{len(esp)} ESP packets on the outside, want 3")
            sa_out = scapy_sa(0x3002, KEY_OUT)
            seqs = []
            for f in esp:
                if f[IP].src != GW or f[IP].dst != PEER or f[ESP].spi != 0x3002:
                    problems.append(f"ESP {f[IP].src} -> {f[IP].dst} SPI {f[ESP].spi:#x}")
                    continue
                if f[Ether].dst != ROUTER_MAC or f[Ether].src != GW_MAC:
                    problems.append(f"Ethernet {f[Ether].src} -> {f[Ether].dst}, want {GW_MAC} -> {ROUTER_MAC}")
                try:
                    plain = sa_out.decrypt(IP(bytes(f[IP])))
                except Exception as e:  # noqa: BLE001 - scapy raises on a bad ICV
                    problems.append(f"scapy cannot decrypt ESP seq {f[ESP].seq}: {e}")
                    continue
                if ICMP not in plain or plain[ICMP].type != 0 or plain[ICMP].id != 0x4242:
                    problems.append(f"decrypted: {plain.summary()}, want an echo reply id 0x4242")
                    continue
                if bytes(plain[ICMP].payload) != b"transport" * 6:
                    problems.append("echo reply payload differs from the request's")
                seqs.append(plain[ICMP].seq)
            if sorted(seqs) != [1, 2, 3]:
                problems.append(f"echo reply sequence numbers {seqs}, want 1, 2, 3")
            return problems
        report.run("ESP transport echo requests in -> the kernel's echo replies out as ESP transport that "
                   "scapy decrypts", replies)

        def cleartext():
            problems = []
            clear = [f for f in out if f[IP].proto != 50]
            errors = [f for f in clear if ICMP in f and f[ICMP].type == 3 and f[ICMP].code == 3]
            if len(errors) != 1 or IPerror not in errors[0] or UDPerror not in errors[0] \
                    or errors[0][UDPerror].dport != 500:
                problems.append(f"want one ICMP port unreachable quoting UDP 500 in the clear: "
                                f"{[f.summary() for f in clear]}")
            others = [f for f in clear if f not in errors]
            if others:
                problems.append(f"other cleartext left: {[f.summary() for f in others]}")
            if any(ICMP in f and f[ICMP].type == 0 for f in clear):
                problems.append("a cleartext echo reply left: the unprotected request reached the kernel")
            return problems
        report.run("cleartext: the unprotected echo is never answered; UDP 500 reaches the kernel and its "
                   "ICMP error leaves in the clear (implicit bypass)", cleartext)

        def counters():
            problems = []
            if drops.get("unprotected") != 1:
                problems.append(f"drops.unprotected = {drops.get('unprotected')}, want 1")
            others = {k: v for k, v in drops.items() if v and k != "unprotected"}
            if others:
                problems.append(f"unexpected drops: {others}")
            want = {"in_decrypted": 3, "out_protected": 3, "in_implicit_bypass": 1, "out_implicit_bypass": 1,
                    "in_clear": 0, "out_bypass": 0}
            for k, v in want.items():
                if local.get(k) != v:
                    problems.append(f"local-traffic.{k} = {local.get(k)}, want {v}")
            if dp.sa_count(sas[("inbound", 0x3001)], "decaps") != 3:
                problems.append(f"inbound 0x3001 decaps = {dp.sa_count(sas[('inbound', 0x3001)], 'decaps')}")
            if dp.sa_count(sas[("outbound", 0x3002)], "encaps") != 3:
                problems.append(f"outbound 0x3002 encaps = {dp.sa_count(sas[('outbound', 0x3002)], 'encaps')}")
            return problems
        report.run("counters: SA decaps/encaps 3, local-traffic exact, one unprotected drop", counters)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        report.failed += 1
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
