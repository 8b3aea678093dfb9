#!/usr/bin/python3
"""Component test of the whole espresso-dp process on net_pcap ports with static SAs.

espresso-dp reads scapy-made frames from one pcap per port and writes what it transmits to another;
the outputs are checked with tools nobody here wrote (tshark's ESP decryption and ICV check, scapy's
ESP decryption), and the drop counters through the `espresso` CLI.

How net_pcap counts queues (DPDK 22.11 drivers/net/pcap): every `rx_pcap=` argument is one RX
queue and every `tx_pcap=` argument one TX queue (max_rx/tx_queues = the number given). espresso-dp
configures one TX queue per worker (`workers: 1` here; the main lcore sends through worker 0) and
one RX queue (net_pcap has no RSS), so `net_pcapN,rx_pcap=IN,tx_pcap=OUT` is enough. With
`workers: N` give N `tx_pcap=` files. An `rx_pcap` is read once at full speed as soon as the worker
starts; the `tx_pcap` dumper is flushed and closed when the port is closed, i.e. on a clean shutdown
(SIGTERM), so the outputs are read only after espresso-dp exited with status 0.

espresso-dp also makes a kernel TAP per port (exception path) and configures it with `ip`: it runs
in a network namespace made here, with IPv6 off so the TAPs send no router solicitations or MLD
reports into the outputs. Static `neighbors:` entries mean no ARP is needed.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/component/test_dp_pcap.py
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

GW_OUT_MAC, GW_IN_MAC, ROUTER_MAC, HOST_MAC = dp.GW_OUT_MAC, dp.GW_IN_MAC, dp.ROUTER_MAC, dp.HOST_MAC
GCM_OUT = bytes.fromhex("00112233445566778899aabbccddeeff01020304")
GCM_IN = bytes.fromhex("ffeeddccbbaa99887766554433221100a0b0c0d0")
CBC_OUT = bytes(range(32))
CBC_OUT_AUTH = bytes(range(100, 132))
CBC_IN = bytes(range(50, 82))
CBC_IN_AUTH = bytes(range(150, 182))

# What this test adds to dp.two_port_config(): its policies and security associations.
CONFIG = """\
policies:
  - {{ local: 192.168.1.0/24, remote: 192.168.2.99/32, action: bypass, priority: 10 }}
  - {{ local: 192.168.1.0/24, remote: 192.168.2.66/32, protocol: udp, action: discard, priority: 10 }}
  - {{ local: 192.168.1.0/24, remote: 192.168.4.7/32, protocol: udp, remote-ports: 40009, action: discard, priority: 10 }}
security-associations:
  - {{ spi: 0x1001, direction: outbound, protocol: esp, mode: tunnel, source: 198.51.100.1, destination: 203.0.113.1,
      encryption: aes128gcm16, key: 0x{gcm_out}, integrity: none,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.2.0/24 }} }}
  - {{ spi: 0x2001, direction: inbound, protocol: esp, mode: tunnel, source: 203.0.113.1, destination: 198.51.100.1,
      encryption: aes128gcm16, key: 0x{gcm_in}, integrity: none, replay-window: 64,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.2.0/24 }} }}
  - {{ spi: 0x1002, direction: outbound, protocol: esp, mode: tunnel, source: 198.51.100.1, destination: 203.0.113.2,
      encryption: aes256, key: 0x{cbc_out}, integrity: sha256, integrity-key: 0x{cbc_out_auth},
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.3.0/24 }} }}
  - {{ spi: 0x2002, direction: inbound, protocol: esp, mode: tunnel, source: 203.0.113.2, destination: 198.51.100.1,
      encryption: aes256, key: 0x{cbc_in}, integrity: sha256, integrity-key: 0x{cbc_in_auth},
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.3.0/24 }} }}
  # A host remote selector (/32): its implied policies live in the SPD's exact-match level (spd.h).
  - {{ spi: 0x1003, direction: outbound, protocol: esp, mode: tunnel, source: 198.51.100.1, destination: 203.0.113.3,
      encryption: aes128gcm16, key: 0x{gcm_out}, integrity: none,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.4.7/32 }} }}
  - {{ spi: 0x2003, direction: inbound, protocol: esp, mode: tunnel, source: 203.0.113.3, destination: 198.51.100.1,
      encryption: aes128gcm16, key: 0x{gcm_in}, integrity: none,
      selectors: {{ local: 192.168.1.0/24, remote: 192.168.4.7/32 }} }}
"""


def scapy_sa(spi, src, dst):
    if spi in (0x1001, 0x2001, 0x1003):
        key = GCM_IN if spi == 0x2001 else GCM_OUT
        return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=key, auth_algo="NULL",
                                   auth_key=None, tunnel_header=IP(src=src, dst=dst))
    key, auth = (CBC_OUT, CBC_OUT_AUTH) if spi == 0x1002 else (CBC_IN, CBC_IN_AUTH)
    return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-CBC", crypt_key=key, auth_algo="SHA2-256-128",
                               auth_key=auth, tunnel_header=IP(src=src, dst=dst))


def udp(src, dst, sport, dport, size, ident, ttl=64):
    payload = bytes((ident * 31 + i) % 251 for i in range(size))
    return IP(src=src, dst=dst, id=ident, ttl=ttl, flags="DF") / UDP(sport=sport, dport=dport) / Raw(payload)


def forwarded(pkt):
    """The IPv4 packet as a router forwards it: TTL - 1, header checksum recomputed."""
    p = IP(raw(pkt))
    p.ttl -= 1
    del p.chksum
    return raw(IP(raw(p)))


class Scenario:
    """The traffic fed to the gateway and what it must do with each packet."""

    def __init__(self):
        self.inside_in = []        # frames the LAN host sends
        self.outside_in = []       # frames from the internet router
        self.to_tunnel = {0x1001: [], 0x1002: [], 0x1003: []}   # plaintext expected inside ESP, in order
        self.bypass = []           # plaintext expected in clear on the outside
        self.to_lan = []           # plaintext expected on the inside
        lan = Ether(src=HOST_MAC, dst=GW_IN_MAC)
        wan = Ether(src=ROUTER_MAC, dst=GW_OUT_MAC)
        ident = 100
        # A backlog of AES-CBC+HMAC first, each way: after a full 64-packet poll of such jobs the worker
        # asks for 128 packets per poll (gateway.h rx_burst_size), so both vector sizes are exercised.
        for i in range(300):
            ident += 1
            p = udp("192.168.1.10", "192.168.3.10", 40000, 40002, (i * 37) % 1300, ident)
            self.inside_in.append(lan / p)
            self.to_tunnel[0x1002].append(p)
        # Protected: HQ LAN -> branch LAN (GCM) and -> 192.168.3.0/24 (CBC + HMAC-SHA-256).
        for i, size in enumerate((0, 1, 17, 64, 200, 512, 1000, 1400) * 2):
            ident += 1
            p = udp("192.168.1.10", "192.168.2.10", 40000, 40001, size, ident)
            self.inside_in.append(lan / p)
            self.to_tunnel[0x1001].append(p)
        for size in (3, 100, 333, 1200):
            ident += 1
            p = udp("192.168.1.10", "192.168.3.10", 40000, 40002, size, ident)
            self.inside_in.append(lan / p)
            self.to_tunnel[0x1002].append(p)
        # To the host of SA 0x1003's /32 selector (the SPD's host level), GCM.
        for size in (5, 300, 900):
            ident += 1
            p = udp("192.168.1.10", "192.168.4.7", 40000, 40008, size, ident)
            self.inside_in.append(lan / p)
            self.to_tunnel[0x1003].append(p)
        # Bypass (explicit policy, priority 10 beats the SA's implied 1000): leaves in clear.
        for size in (10, 700, 20, 30):
            ident += 1
            p = udp("192.168.1.10", "192.168.2.99", 40000, 40003, size, ident)
            self.inside_in.append(lan / p)
            self.bypass.append(p)
        # Discard policy: dropped and counted (spd_discard).
        self.discard = 5
        for size in (10, 20, 30):
            ident += 1
            self.inside_in.append(lan / udp("192.168.1.10", "192.168.2.66", 40000, 40004, size, ident))
        # An operator discard (priority 10) for one port of SA 0x1003's host wins over its implied policy.
        for size in (11, 22):
            ident += 1
            self.inside_in.append(lan / udp("192.168.1.10", "192.168.4.7", 40000, 40009, size, ident))
        # A wrong IPv4 header checksum (RFC 1812 §5.2.2): dropped and counted, never forwarded, also
        # when it would otherwise be bypassed or protected.
        self.bad_checksum = 2
        for dst in ("192.168.2.99", "192.168.2.10"):
            ident += 1
            p = IP(raw(udp("192.168.1.10", dst, 40000, 40010, 10, ident)))
            p.chksum ^= 0x0100
            self.inside_in.append(lan / p)
        # TTL 1 cannot be forwarded: ICMP Time Exceeded back to the host (RFC 1812 §5.3.1).
        ident += 1
        self.ttl_one = udp("192.168.1.10", "192.168.2.10", 40000, 40001, 10, ident, ttl=1)
        self.inside_in.append(lan / self.ttl_one)

        # Inbound CBC + HMAC-SHA-256 (sizes 0..1299), before everything else.
        sa_cbc = scapy_sa(0x2002, "203.0.113.2", "198.51.100.1")
        self.cbc_in = 300
        for seq in range(1, self.cbc_in + 1):
            ident += 1
            inner = udp("192.168.3.10", "192.168.1.10", 40002, 40000, (seq * 53) % 1300, ident)
            self.outside_in.append(wan / sa_cbc.encrypt(inner, seq_num=seq))
            self.to_lan.append(inner)
        # Inbound GCM: seq 1..8 good; replays of 3 and 8; seq 9 tampered (must not move the window),
        # then the genuine seq 9; unknown SPI; cleartext that the inbound SA should have carried.
        sa_in = scapy_sa(0x2001, "203.0.113.1", "198.51.100.1")
        good = {}
        for seq in range(1, 10):
            ident += 1
            inner = udp("192.168.2.10", "192.168.1.10", 40001, 40000, 40 + 37 * seq, ident)
            good[seq] = (inner, raw(sa_in.encrypt(inner, seq_num=seq)))
        for seq in range(1, 9):
            self.outside_in.append(wan / IP(good[seq][1]))
            self.to_lan.append(good[seq][0])
        self.replays = 2
        self.outside_in.append(wan / IP(good[3][1]))
        self.outside_in.append(wan / IP(good[8][1]))
        tampered = bytearray(good[9][1])
        tampered[-20] ^= 0x01       # inside the ciphertext: the GCM tag no longer verifies
        self.outside_in.append(wan / IP(bytes(tampered)))
        self.icv = 1
        self.outside_in.append(wan / IP(good[9][1]))
        self.to_lan.append(good[9][0])
        unknown = scapy_sa(0x7777, "203.0.113.1", "198.51.100.1")
        ident += 1
        self.outside_in.append(wan / unknown.encrypt(udp("192.168.2.10", "192.168.1.10", 1, 2, 10, ident), seq_num=1))
        self.no_sa = 1
        # An inner packet outside the SA's selectors (RFC 4301 §5.2): dropped after decryption.
        ident += 1
        self.outside_in.append(wan / sa_in.encrypt(udp("10.9.9.9", "192.168.1.10", 1, 2, 10, ident), seq_num=10))
        self.selector_mismatch = 1
        ident += 1
        self.outside_in.append(wan / udp("192.168.2.10", "192.168.1.10", 40001, 40000, 50, ident))
        # Cleartext from the host of inbound SA 0x2003's /32 selector: it should have come encrypted.
        ident += 1
        self.outside_in.append(wan / udp("192.168.4.7", "192.168.1.10", 40008, 40000, 50, ident))
        self.unprotected = 2


def ipv4_frames(path):
    if not os.path.exists(path):
        return []
    return [f for f in rdpcap(path) if IP in f]


def main():
    report = Report("espresso-dp on net_pcap ports")
    if dp.dataplane_missing():
        return 77
    gw = dp.PcapGateway("espresso-dppcap-", "espdpp")
    sc = Scenario()
    counters = {}
    exit_status = None
    try:
        dp.netns_add(gw.ns)
        wrpcap(gw.path("inside-in.pcap"), sc.inside_in)
        wrpcap(gw.path("outside-in.pcap"), sc.outside_in)
        proc = gw.start(dp.two_port_config(gw.workdir, routes=("203.0.113.0/24", "192.168.2.0/24")) +
                        CONFIG.format(gcm_out=GCM_OUT.hex(), gcm_in=GCM_IN.hex(),
                                      cbc_out=CBC_OUT.hex(), cbc_out_auth=CBC_OUT_AUTH.hex(), cbc_in=CBC_IN.hex(),
                                      cbc_in_auth=CBC_IN_AUTH.hex()))
        total_in = len(sc.inside_in) + len(sc.outside_in)
        # The pcaps are consumed at once; wait until the counters stop moving, then read them all
        # before SIGTERM (the control socket goes away with the process).
        dp.wait_stable(lambda: (dp.dataplane_rx(gw.sock), dp.dataplane_drops(gw.sock)), timeout=30, quiet=1.5)
        counters["rx"] = dp.dataplane_rx(gw.sock)
        counters["drops"] = dp.dataplane_drops(gw.sock)
        counters["sas"] = dp.sa_table(gw.sock)
        counters["interfaces"] = dp.cli_json(gw.sock, "show interfaces")
        exit_status = proc.stop()
        out = ipv4_frames(gw.path("outside-out.pcap"))
        lan_all = ipv4_frames(gw.path("inside-out.pcap"))
        time_exceeded = [f for f in lan_all if ICMP in f and f[ICMP].type == 11]
        lan = [f for f in lan_all if not (ICMP in f and f[ICMP].type == 11)]

        def clean_shutdown():
            problems = []
            if exit_status != 0:
                problems.append(f"espresso-dp exit status {exit_status} after SIGTERM")
            if "shutting down" not in proc.log():
                problems.append("no 'shutting down' in the log")
            if counters["rx"] != total_in:
                problems.append(f"workers received {counters['rx']} packets, fed {total_in}")
            return problems
        report.run("SIGTERM: clean exit, every input frame received", clean_shutdown)

        esp_out = [f for f in out if f[IP].proto == 50]

        def outbound_scapy():
            problems = []
            for spi, dst in ((0x1001, "203.0.113.1"), (0x1002, "203.0.113.2"), (0x1003, "203.0.113.3")):
                frames = [f for f in esp_out if f[ESP].spi == spi]
                want = sc.to_tunnel[spi]
                if len(frames) != len(want):
                    problems.append(f"SPI {spi:#x}: {len(frames)} ESP packets out, want {len(want)}")
                sa = scapy_sa(spi, "198.51.100.1", dst)
                for k, (f, p) in enumerate(zip(frames, want)):
                    if f[Ether].dst != ROUTER_MAC or f[Ether].src != GW_OUT_MAC:
                        problems.append(f"SPI {spi:#x} #{k}: Ethernet {f[Ether].src} -> {f[Ether].dst}")
                    if (f[IP].src, f[IP].dst) != ("198.51.100.1", dst) or f[ESP].seq != k + 1:
                        problems.append(f"SPI {spi:#x} #{k}: outer {f[IP].src}->{f[IP].dst} seq {f[ESP].seq}")
                    outer = IP(raw(f[IP]))
                    del outer.chksum
                    if raw(IP(raw(outer))) != raw(f[IP]):
                        problems.append(f"SPI {spi:#x} #{k}: bad outer IPv4 checksum")
                    try:
                        inner = raw(sa.decrypt(IP(raw(f[IP]))))
                    except Exception as e:  # noqa: BLE001 - scapy's integrity error
                        problems.append(f"SPI {spi:#x} seq {f[ESP].seq}: scapy cannot decrypt: {e}")
                        continue
                    if inner != forwarded(p):
                        problems.append(f"SPI {spi:#x} seq {f[ESP].seq}: inner packet differs from the original "
                                        f"with TTL-1: {inner.hex()[:80]} vs {forwarded(p).hex()[:80]}")
            return problems
        report.run("plaintext in on the inside -> ESP out (GCM, CBC+SHA256) that scapy decrypts to the "
                   "original with TTL-1 and a fixed checksum", outbound_scapy)

        def outbound_tshark():
            path = gw.path("outside-out.pcap")
            uat = [
                '"IPv4","198.51.100.1","203.0.113.1","0x00001001","AES-GCM with 16 octet ICV [RFC4106]",'
                f'"0x{GCM_OUT.hex()}","NULL",""',
                '"IPv4","198.51.100.1","203.0.113.2","0x00001002","AES-CBC [RFC3602]",'
                f'"0x{CBC_OUT.hex()}","HMAC-SHA-256-128 [RFC4868]","0x{CBC_OUT_AUTH.hex()}"',
                '"IPv4","198.51.100.1","203.0.113.3","0x00001003","AES-GCM with 16 octet ICV [RFC4106]",'
                f'"0x{GCM_OUT.hex()}","NULL",""',
            ]
            args = ["tshark", "-n", "-r", path, "-o", "esp.enable_encryption_decode:TRUE",
                    "-o", "esp.enable_authentication_check:TRUE"]
            for u in uat:
                args += ["-o", "uat:esp_sa:" + u]
            args += ["-Y", "esp", "-T", "fields", "-e", "esp.spi", "-e", "esp.icv_good", "-e", "udp.dstport"]
            r = dp.subprocess.run(args, capture_output=True, text=True, timeout=120)
            rows = [l.split("\t") for l in r.stdout.splitlines() if l.strip()]
            problems = []
            want = sum(len(v) for v in sc.to_tunnel.values())
            if len(rows) != want:
                problems.append(f"tshark saw {len(rows)} ESP packets, want {want}: {r.stderr[-500:]}")
            bad = [x for x in rows if len(x) < 3 or x[1] != "1"]
            if bad:
                problems.append(f"ICV not good on {len(bad)} packets: {bad[:3]}")
            ports = {x[2] for x in rows if len(x) >= 3}
            if ports != {"40001", "40002", "40008"}:
                problems.append(f"decrypted UDP destination ports {ports}, want 40001, 40002 and 40008")
            return problems
        report.run("tshark decrypts every outbound ESP packet with the configured keys (esp.icv_good == 1)",
                   outbound_tshark)

        def inbound():
            problems = []
            got = [raw(f[IP]) for f in lan]
            want = [raw(p) for p in sc.to_lan]
            for f in lan:
                if f[Ether].dst != HOST_MAC or f[Ether].src != GW_IN_MAC:
                    problems.append(f"Ethernet {f[Ether].src} -> {f[Ether].dst} on the inside")
                    break
            if len(got) != len(want):
                problems.append(f"{len(got)} packets out on the inside, want {len(want)}")
            as_is = sum(1 for g, w in zip(got, want) if g == w)
            decremented = sum(1 for g, w in zip(got, want) if g == forwarded(IP(w)))
            if as_is != len(want):
                problems.append(f"{as_is} of {len(want)} decrypted packets equal the original inner packet "
                                f"({decremented} equal it with TTL-1)")
            return problems
        report.run("ESP in on the outside (GCM, CBC+SHA256) -> the original plaintext out on the inside", inbound)

        def clear_outputs():
            problems = []
            clear = [f for f in out if f[IP].proto != 50]
            want = [forwarded(p) for p in sc.bypass]
            got = [raw(f[IP]) for f in clear]
            if got != want:
                problems.append(f"cleartext on the outside: {[(f[IP].src, f[IP].dst, f[IP].ttl) for f in clear]}; "
                                f"want the {len(want)} bypass packets to 192.168.2.99 with TTL-1")
            leaked = [f for f in out if f[IP].dst in ("192.168.2.66", "192.168.4.7") or (f[IP].proto != 50 and f[IP].dst == "192.168.2.10")]
            if leaked:
                problems.append(f"{len(leaked)} discarded or protected-flow packets left in clear")
            return problems
        report.run("bypass policy: its traffic leaves in clear (TTL-1); nothing else leaves unprotected", clear_outputs)

        def drop_counters():
            d = counters["drops"]
            sas = counters["sas"]
            problems = []
            want_gw = {"spd_discard": sc.discard, "no_sa": sc.no_sa, "unprotected": sc.unprotected,
                       "ttl_exceeded": 1, "bad_checksum": sc.bad_checksum}
            for k, v in want_gw.items():
                if d.get(k) != v:
                    problems.append(f"show dataplane drops.{k} = {d.get(k)}, want {v}")
            others = {k: v for k, v in d.items() if v and k not in want_gw}
            if others:
                problems.append(f"unexpected gateway drops: {others}")
            s = sas[("inbound", 0x2001)]
            for k, v in (("replay", sc.replays), ("icv", sc.icv), ("selector_mismatch", sc.selector_mismatch),
                         ("decaps", 9)):
                if dp.sa_count(s, k) != v:
                    problems.append(f"inbound 0x2001 {k} = {dp.sa_count(s, k)}, want {v}")
            for key, n in ((("outbound", 0x1001), 16), (("outbound", 0x1002), len(sc.to_tunnel[0x1002])),
                           (("outbound", 0x1003), 3)):
                if dp.sa_count(sas[key], "encaps") != n:
                    problems.append(f"{key} encaps = {dp.sa_count(sas[key], 'encaps')}, want {n}")
            if dp.sa_count(sas[("inbound", 0x2002)], "decaps") != sc.cbc_in:
                problems.append(f"inbound 0x2002 decaps = {dp.sa_count(sas[('inbound', 0x2002)], 'decaps')}, "
                                f"want {sc.cbc_in}")
            return problems
        report.run("tampered, replayed, unknown-SPI, selector-violating, unprotected, discarded and TTL-1 "
                   "packets are dropped and counted", drop_counters)

        def ttl_exceeded_icmp():
            # Scapy dissects what the gateway built: one Time Exceeded (type 11, code 0) from the
            # inside address to the host, quoting the IP header and 8 bytes of the dropped packet.
            if len(time_exceeded) != 1:
                return [f"{len(time_exceeded)} ICMP Time Exceeded on the inside, want 1"]
            f = time_exceeded[0]
            problems = []
            if (f[IP].src, f[IP].dst, f[ICMP].code) != ("192.168.1.1", "192.168.1.10", 0):
                problems.append(f"Time Exceeded {f[IP].src} -> {f[IP].dst} code {f[ICMP].code}")
            quoted = raw(f[ICMP])[8:]
            if quoted != raw(sc.ttl_one)[:28]:
                problems.append(f"quoted {quoted.hex()} want {raw(sc.ttl_one)[:28].hex()}")
            ip = IP(raw(f[IP]))
            icmp = ip[ICMP].copy()
            want_ip, want_icmp = ip.chksum, icmp.chksum
            del ip.chksum
            del icmp.chksum
            if IP(raw(ip)).chksum != want_ip or ICMP(raw(icmp)).chksum != want_icmp:
                problems.append("bad IP or ICMP checksum (scapy computes another)")
            return problems
        report.run("TTL 1: ICMP Time Exceeded to the source, quoting the packet", ttl_exceeded_icmp)
    except Exception as e:  # noqa: BLE001
        report.case("set-up", [f"{type(e).__name__}: {e}"] + traceback.format_exc().splitlines()[-6:])
    finally:
        gw.close(report.failed)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
