"""Site-to-site demo: two Espresso gateways (espresso-dp + espresso-ike) bring up an IKEv2 tunnel
between two LANs and carry traffic through it (see scripts/demo)."""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "system"))
from topology import Topology, sh  # noqa: E402

BUILD = os.environ.get("ESPRESSO_BUILD", os.path.join(ROOT, "build"))

TCP_SINK = r'''
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001)); s.listen(1); s.settimeout(30)
c, _ = s.accept(); n = 0
while True:
    d = c.recv(1 << 16)
    if not d: break
    n += len(d)
c.sendall(b"k"); print(n)
'''
TCP_SEND = r'''
import socket, sys, time
data = b"\x5a" * (1 << 20)
c = socket.create_connection(("192.168.2.10", 5001), timeout=30)
t = time.time(); end = t + float(sys.argv[1]); n = 0
while time.time() < end:
    c.sendall(data); n += len(data)
c.shutdown(socket.SHUT_WR); c.recv(1); dt = time.time() - t
print(f"{n} {dt:.3f}")
'''


def step(text):
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def wait_for_tunnel(topo, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = topo.cli("gw-hq", "--json show crypto ikev2 sa", check=False)
        try:
            sas = json.loads(out)["ike-sas"]
        except (ValueError, KeyError):
            sas = []
        if any(sa["state"] == "READY" and sa["children"] for sa in sas):
            return True
        time.sleep(0.3)
    return False


def main():
    hq = os.path.join(ROOT, "config/examples/ike-hq.yaml")
    branch = os.path.join(ROOT, "config/examples/ike-branch.yaml")
    topo = Topology(BUILD, prefix="demo", hq_config=hq, branch_config=branch)
    ok = False
    why = ""
    try:
        step("network namespaces: host-hq -- gw-hq -- inet -- gw-branch -- host-branch")
        topo.create()
        step("starting espresso-dp on both gateways (config/examples/ike-{hq,branch}.yaml)")
        topo.start_gateways()
        for g in ("gw-hq", "gw-branch"):
            for line in topo.log(g).splitlines():
                if line.startswith("espresso-dp:"):
                    print(f"  [{g}] {line}")
        step("starting espresso-ike on both gateways: HQ initiates IKEv2 (PSK, aes256-sha256-modp2048, ESP aes256gcm16)")
        topo.start_ike()
        t0 = time.time()
        if not wait_for_tunnel(topo):
            print(topo.log("ike-gw-hq")[-3000:])
            print(topo.cli("gw-hq", "show crypto ike failures", check=False))
            raise RuntimeError("the IKEv2 tunnel did not come up within 30 s")
        print(f"  tunnel up in {time.time() - t0:.2f} s")
        for line in topo.log("ike-gw-hq").splitlines():
            if " info " in line and ("established" in line or "installed" in line):
                print(f"  [gw-hq] {line}")
        for g in ("gw-hq", "gw-branch"):
            step(f"{g}: espresso show crypto isakmp sa")
            print(topo.cli(g, "show crypto isakmp sa"))

        step("ping 192.168.2.10 from host-hq (192.168.1.10), through the tunnel")
        ping_out = sh("ping -c 4 -i 0.3 192.168.2.10", ns=topo.ns["host-hq"], capture=True, check=False).stdout
        print(ping_out)
        ping_ok = " 0% packet loss" in ping_out
        step("ping 198.51.100.1 (the HQ gateway) from the internet router: TAP exception path")
        print(sh("ping -c 2 -i 0.3 198.51.100.1", ns=topo.ns["inet"], capture=True, check=False).stdout)

        step("TCP bulk transfer host-hq -> host-branch for 5 s")
        path_sink = os.path.join(topo.dir, "sink.py")
        path_send = os.path.join(topo.dir, "send.py")
        open(path_sink, "w").write(TCP_SINK)
        open(path_send, "w").write(TCP_SEND)
        sink = subprocess.Popen(["ip", "netns", "exec", topo.ns["host-branch"], "/usr/bin/python3", path_sink],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        out = sh(f"/usr/bin/python3 {path_send} 5", ns=topo.ns["host-hq"], capture=True).stdout.split()
        received = int(sink.communicate(timeout=60)[0].strip() or 0)
        sent, seconds = int(out[0]), float(out[1])
        print(f"  sent {sent / 1e6:.1f} MB, received {received / 1e6:.1f} MB in {seconds:.2f} s: "
              f"{received * 8 / seconds / 1e6:.0f} Mbit/s of TCP payload through ESP "
              f"(veth + af_packet + the kernel's TCP on 2 shared cores; perf/ has the data plane's own numbers)")

        for g in ("gw-hq", "gw-branch"):
            step(f"{g}: espresso show crypto ipsec sa")
            print(topo.cli(g, "show crypto ipsec sa"))
        step("gw-hq: espresso show dataplane")
        print(topo.cli("gw-hq", "show dataplane"))
        ok = ping_ok and received == sent and received > 0
        why = "" if ok else ("ping through the tunnel lost packets" if not ping_ok else "transfer incomplete")
    finally:
        step("tearing down")
        topo.teardown()
    print("demo: OK" if ok else f"demo: FAILED ({why or 'see above'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
