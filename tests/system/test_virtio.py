#!/usr/bin/python3
"""System test: espresso-dp on a virtio NIC (net_virtio_user) against a vhost-user backend, the way a
virtio VM sees its NIC.

    host (192.168.1.10) [eth0] -- veth -- [sw-host] dpdk-testpmd (io forwarding) [net_vhost0, server]
                                                        || vhost-user socket
    espresso-dp  inside: net_virtio_user0 (client), 192.168.1.1/24
                 outside: net_af_packet on gw-wan, 198.51.100.1/24 -- veth -- [wan0] peer 198.51.100.254

dpdk-testpmd (package dpdk-dev) is the vhost-user backend and forwards between the vhost port and an
af_packet port on a veth to the host's namespace. espresso-dp's inside port is the virtio-user
frontend; its outside port is af_packet to a "peer" namespace, where scapy plays the far tunnel end
(static SAs with the peer's address as tunnel endpoint) and tshark checks the ESP.

Checks: ARP + ping to the gateway's inside address (exception path through the TAP, over virtio);
UDP from the host over virtio comes out as ESP that tshark decrypts (ICV good), counters exact;
scapy-made ESP from the peer is decrypted and delivered over virtio to a UDP socket on the host.

Memory: both processes run with --no-huge (espresso-dp: `hugepages: false`). virtio-user shares its
memory with the vhost-user backend through file descriptors; with --no-huge, DPDK 22.11 backs the
memory with a memfd, which works (`--in-memory` does not: EAL refuses it with --no-huge's legacy
memory mode). Queues: espresso-dp needs one TX queue per worker (workers: 1) and polls one RX
queue on a device without RSS (vhost-user offers none), so queues=1 on both ends suffices.
Lcores: espresso-dp always takes 0-1 (main + 1 worker); testpmd uses 0-1 too (a 2-core machine),
with its own --file-prefix. Exit status 77 (skipped) when dpdk-testpmd or the vhost/virtio PMDs are missing.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_virtio.py
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "component"))
import dp_process as dp  # noqa: E402
from dp_process import sh  # noqa: E402

GW_OUT_MAC = "02:00:00:00:00:01"
GW_IN_MAC = "02:00:00:00:01:01"
KEY_OUT = "2b7e151628aed2a6abf7158809cf4f3c" + "cafebabe"
KEY_IN = "000102030405060708090a0b0c0d0e0f" + "deadbeef"

results = []


def case(name, fn):
    try:
        fn()
        results.append((name, True))
        print(f"PASS {name}", flush=True)
    except Exception as e:  # noqa: BLE001 - report and go on
        results.append((name, False))
        print(f"FAIL {name}: {e}", flush=True)
        traceback.print_exc()


CONFIG = """\
dataplane:
  workers: 1
  hugepages: false
  idle: adaptive
  control-socket: {dir}/dp.sock
interfaces:
  - {{ name: inside, device: "net_virtio_user0,path={dir}/vhost0.sock,queues=1,server=0", address: 192.168.1.1/24, mac: "{in_mac}" }}
  - {{ name: outside, device: "net_af_packet1,iface=gw-wan", address: 198.51.100.1/24, mac: "{out_mac}" }}
security-associations:
  - {{ spi: 0x3001, direction: outbound, protocol: esp, mode: tunnel, source: 198.51.100.1, destination: 198.51.100.254,
      encryption: aes128gcm16, key: 0x{key_out}, integrity: none,
      selectors: {{ local: 192.168.1.0/24, remote: 10.20.0.0/16 }} }}
  - {{ spi: 0x3002, direction: inbound, protocol: esp, mode: tunnel, source: 198.51.100.254, destination: 198.51.100.1,
      encryption: aes128gcm16, key: 0x{key_in}, integrity: none,
      selectors: {{ local: 192.168.1.0/24, remote: 10.20.0.0/16 }} }}
"""

UDP_SINK = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(5)
n = 0
print("ready", flush=True)
try:
    while n < int(sys.argv[2]):
        d = s.recv(2048)
        if d == bytes([n % 256]) * len(d):
            n += 1
except socket.timeout:
    pass
print(n, flush=True)
'''

UDP_SEND = r'''
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(bytes([i % 256]) * int(sys.argv[4]), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.005)
'''

ESP_SEND = r'''
import sys, time
import logging
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.all import Ether, IP, UDP, Raw, sendp
from scapy.layers.ipsec import SecurityAssociation, ESP
sa = SecurityAssociation(ESP, spi=0x3002, crypt_algo="AES-GCM", crypt_key=bytes.fromhex(sys.argv[1]),
                         auth_algo="NULL", auth_key=None, tunnel_header=IP(src="198.51.100.254", dst="198.51.100.1"))
frames = []
for i in range(int(sys.argv[3])):
    inner = IP(src="10.20.0.5", dst="192.168.1.10") / UDP(sport=40011, dport=40010) / Raw(bytes([i % 256]) * 300)
    frames.append(Ether(dst=sys.argv[2]) / sa.encrypt(inner, seq_num=i + 1))
for f in frames:
    sendp(f, iface="wan0", verbose=False)
    time.sleep(0.005)
'''


def main():
    testpmd = shutil.which("dpdk-testpmd")
    pmds = glob.glob("/usr/lib/*/dpdk/pmds-*/librte_net_vhost.so*") and \
        glob.glob("/usr/lib/*/dpdk/pmds-*/librte_net_virtio.so*")
    if not testpmd or not pmds:
        print("SKIP: needs dpdk-testpmd (Debian package dpdk-dev) and the vhost/virtio PMDs "
              "(librte-net-vhost23, librte-net-virtio23): apt-get install dpdk-dev")
        print("0 passed, 0 failed")
        return 77
    if dp.dataplane_missing():
        return 77
    tag = f"espv{os.getpid() % 100000}"
    ns = {k: f"{tag}-{k}" for k in ("host", "sw", "gw", "peer")}
    workdir = tempfile.mkdtemp(prefix="espresso-virtio-")
    sock = os.path.join(workdir, "dp.sock")
    pmd = gw = None
    try:
        for n in ns.values():
            dp.netns_add(n)
        for a, ia, b, ib in ((ns["host"], "eth0", ns["sw"], "sw-host"), (ns["gw"], "gw-wan", ns["peer"], "wan0")):
            sh(f"ip link add {tag}a type veth peer name {tag}b")
            sh(f"ip link set {tag}a netns {a}")
            sh(f"ip link set {tag}b netns {b}")
            sh(f"ip link set {tag}a name {ia}", ns=a)
            sh(f"ip link set {tag}b name {ib}", ns=b)
            for n_, i_ in ((a, ia), (b, ib)):
                sh(f"ip link set {i_} up", ns=n_)
                # af_packet would otherwise see partial checksums from veth offloads.
                sh(f"ethtool -K {i_} tx off rx off gso off tso off gro off", ns=n_, check=False)
        sh("ip addr add 192.168.1.10/24 dev eth0", ns=ns["host"])
        sh("ip route add default via 192.168.1.1", ns=ns["host"])
        sh("ip addr add 198.51.100.254/24 dev wan0", ns=ns["peer"])
        # Keep the gateway namespace's kernel off its af_packet veth (ORACLES.md caveat); the switch
        # namespace's veth carries no address, so its kernel stays out anyway.
        sh("nft add table netdev dp", ns=ns["gw"])
        sh("nft add chain netdev dp in-wan '{ type filter hook ingress device gw-wan priority 0; policy drop; }'",
           ns=ns["gw"])

        vhost_sock = os.path.join(workdir, "vhost0.sock")
        pmd = dp.Process([testpmd, "-l", "0,1", "--no-huge", "-m", "256", f"--file-prefix={tag}-testpmd",
                          "--no-pci", f"--vdev=net_vhost0,iface={vhost_sock},queues=1",
                          "--vdev=net_af_packet0,iface=sw-host", "--",
                          "--forward-mode=io", "--auto-start", "--nb-cores=1", "--rxq=1", "--txq=1",
                          "--total-num-mbufs=8192"], os.path.join(workdir, "testpmd.log"), ns=ns["sw"])
        deadline = time.time() + 30
        while not os.path.exists(vhost_sock):
            if pmd.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"testpmd did not create {vhost_sock}:\n{pmd.log()[-3000:]}")
            time.sleep(0.2)

        cfg = os.path.join(workdir, "gw.yaml")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(dir=workdir, in_mac=GW_IN_MAC, out_mac=GW_OUT_MAC, key_out=KEY_OUT, key_in=KEY_IN))
        gw = dp.Process([dp.dataplane_binary(), "--config", cfg], os.path.join(workdir, "gw.log"), ns=ns["gw"])
        gw.wait_for("running with", 60)
        pmd.wait_for("virtio is now ready", 20)

        def ping_gateway():
            r = sh("ping -c 5 -i 0.2 -W 2 192.168.1.1", ns=ns["host"], check=False)
            assert " 0% packet loss" in r.stdout, r.stdout + r.stderr
            neigh = sh("ip neigh show 192.168.1.1", ns=ns["host"]).stdout.lower()
            assert GW_IN_MAC in neigh, f"host learnt {neigh!r}, want {GW_IN_MAC}"
            ifs = {i["name"]: i for i in dp.cli_json(sock, "show interfaces")["interfaces"]}
            assert ifs["inside"]["rx"]["packets"] >= 6 and ifs["inside"]["tx"]["packets"] >= 6, ifs["inside"]
            assert ifs["inside"]["link-up"], ifs["inside"]
        case("ARP and ping to the gateway over virtio-user/vhost-user (TAP exception path)", ping_gateway)

        def scripts(name, text):
            path = os.path.join(workdir, name)
            with open(path, "w") as f:
                f.write(text)
            return path

        def host_to_tunnel():
            n = 100
            cap = os.path.join(workdir, "wan.pcap")
            tshark = subprocess.Popen(["ip", "netns", "exec", ns["peer"], "tshark", "-q", "-i", "wan0", "-f", "esp",
                                       "-w", cap], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                deadline = time.time() + 20
                while not os.path.exists(cap) or os.path.getsize(cap) == 0:
                    if time.time() > deadline:
                        raise RuntimeError("tshark did not start")
                    time.sleep(0.2)
                time.sleep(1)
                dp.cli(sock, "clear counters")
                sh(f"/usr/bin/python3 {scripts('udp_send.py', UDP_SEND)} 10.20.0.5 40020 {n} 400", ns=ns["host"])
                time.sleep(2)
            finally:
                tshark.terminate()
                tshark.wait(timeout=10)
            sas = dp.sa_table(sock)
            enc = dp.sa_count(sas[("outbound", 0x3001)], "encaps")
            assert enc == n, f"outbound 0x3001 encaps {enc}, want {n}"
            r = subprocess.run(["tshark", "-n", "-r", cap, "-o", "esp.enable_encryption_decode:TRUE",
                                "-o", "esp.enable_authentication_check:TRUE", "-o",
                                'uat:esp_sa:"IPv4","198.51.100.1","198.51.100.254","0x00003001",'
                                f'"AES-GCM with 16 octet ICV [RFC4106]","0x{KEY_OUT}","NULL",""',
                                "-Y", "esp", "-T", "fields", "-e", "esp.sequence", "-e", "esp.icv_good",
                                "-e", "ip.src", "-e", "udp.dstport"], capture_output=True, text=True, timeout=60)
            rows = [l.split("\t") for l in r.stdout.splitlines() if l.strip()]
            assert len(rows) == n, f"{len(rows)} ESP packets captured, want {n}"
            assert all(x[1] == "1" for x in rows), f"ICV not good: {[x for x in rows if x[1] != '1'][:3]}"
            # Every number exactly once. The first packets wait for ARP at the gateway and may leave a
            # little after later ones (the receiver's replay window absorbs that, RFC 4303 §3.4.3).
            assert sorted(int(x[0]) for x in rows) == list(range(1, n + 1)), "sequence numbers not 1..n"
            assert all(x[3] == "40020" and "192.168.1.10" in x[2] for x in rows), rows[:2]
        case("UDP from the host over virtio leaves as ESP that tshark decrypts (ICV good, seq 1..n)", host_to_tunnel)

        def tunnel_to_host():
            n = 100
            dp.cli(sock, "clear counters")
            sink = subprocess.Popen(["ip", "netns", "exec", ns["host"], "/usr/bin/python3",
                                     scripts("udp_sink.py", UDP_SINK), "40010", str(n)],
                                    stdout=subprocess.PIPE, text=True)
            assert sink.stdout.readline().strip() == "ready"
            sh(f"/usr/bin/python3 {scripts('esp_send.py', ESP_SEND)} {KEY_IN} {GW_OUT_MAC} {n}", ns=ns["peer"],
               timeout=120)
            out, _ = sink.communicate(timeout=30)
            got = int(out.strip() or 0)
            dec = dp.sa_count(dp.sa_table(sock)[("inbound", 0x3002)], "decaps")
            assert dec == n, f"inbound 0x3002 decaps {dec}, want {n}"
            assert got == n, f"host received {got} of {n} intact datagrams over virtio"
        case("scapy-made ESP from the peer is decrypted and delivered over virtio to the host", tunnel_to_host)

        def clean_stop():
            drops = {k: v for k, v in dp.dataplane_drops(sock).items() if v}
            rc = gw.stop()
            assert rc == 0, f"espresso-dp exit status {rc} after SIGTERM"
            assert not drops, f"unexpected gateway drops: {drops}"
        case("no gateway drops; espresso-dp exits 0 on SIGTERM with the virtio port attached", clean_stop)
    except Exception as e:  # noqa: BLE001
        results.append(("set-up", False))
        print(f"FAIL set-up: {e}", flush=True)
        traceback.print_exc()
    finally:
        failed = any(not ok for _, ok in results)
        for p, name in ((gw, "espresso-dp"), (pmd, "testpmd")):
            if p is not None:
                p.stop(timeout=10)
                if failed:
                    print(f"--- {name} log ---\n{p.log()[-3000:]}")
        for n in ns.values():
            dp.netns_del(n)
        dp.remove_runtime_dir(control_socket=sock)
        dp.remove_runtime_dir(file_prefix=f"{tag}-testpmd")
        if os.environ.get("ESPRESSO_KEEP_TMP") == "1":
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
