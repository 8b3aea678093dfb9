#!/usr/bin/python3
"""DPDK telemetry read the way an operator reads it: DPDK's own client, /usr/bin/dpdk-telemetry.py, on
the gateway's runtime directory (file prefix "espresso" + the control socket path with '/' -> '_'),
after traffic through the demo's static SA pair. The SA counters it reports must equal those of
`espresso --json show crypto ipsec sa` and what was sent.

Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_telemetry.py
"""
import json
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from topology import Topology, sh  # noqa: E402

BUILD = os.environ.get("ESPRESSO_BUILD", os.path.join(HERE, "..", "..", "build"))
CLIENT = "/usr/bin/dpdk-telemetry.py"


def telemetry(topo, command, prefix="espresso_run_espresso_hq.sock"):
    r = subprocess.run(["ip", "netns", "exec", topo.ns["gw-hq"], CLIENT, "-f", prefix], input=command + "\n",
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{CLIENT} -f {prefix}: {r.returncode} {r.stderr[-1000:]}")
    return json.loads(r.stdout.strip().splitlines()[0])[command.split(",")[0]]


def main():
    if not os.path.exists(os.path.join(BUILD, "dataplane", "espresso-dp")) or not os.path.exists(CLIENT):
        print("SKIP: espresso-dp not built or dpdk-telemetry.py missing")
        return 77
    topo = Topology(BUILD, prefix=f"estl{os.getpid() % 10000}")
    checks = []
    try:
        topo.create()
        topo.start_gateways()
        sh("ping -c 3 -i 0.2 -W 2 192.168.2.10", ns=topo.ns["host-hq"], check=False, capture=True)  # ARP warm-up
        topo.cli("gw-hq", "clear counters")
        r = sh("ping -c 10 -i 0.1 -W 2 192.168.2.10", ns=topo.ns["host-hq"], check=False, capture=True)
        checks.append(("10 pings through the tunnel", " 0% packet loss" in r.stdout))
        time.sleep(0.6)  # telemetry reads a copy that may be up to 500 ms old
        listing = telemetry(topo, "/espresso/sa")
        checks.append(("/espresso/sa lists both SAs", listing == {"inbound": [0x2001], "outbound": [0x1001]}))
        cli = {(s["direction"], s["spi"]): s["counters"]
               for s in json.loads(topo.cli("gw-hq", "--json show crypto ipsec sa"))["sas"]}
        out = telemetry(topo, "/espresso/sa,0x1001")["outbound"]
        inb = telemetry(topo, "/espresso/sa,in:0x2001")["inbound"]
        for name, tel, key in (("outbound 0x1001", out, ("outbound", 0x1001)), ("inbound 0x2001", inb, ("inbound", 0x2001))):
            fields = ("encaps", "encrypt", "digest", "decaps", "decrypt", "verify", "packets", "bytes")
            same = all(tel[f] == cli[key][f] for f in fields)
            checks.append((f"{name}: telemetry counters equal the CLI's ({ {f: tel[f] for f in fields} })", same))
        checks.append(("10 encapsulated and 10 decapsulated", out["encaps"] == 10 and inb["decaps"] == 10))
        checks.append(("no drops on either SA", not [k for k, v in {**out, **inb}.items() if k.startswith("drop_") and v]))
        workers = telemetry(topo, "/espresso/workers")
        checks.append(("/espresso/workers has the worker's packets", sum(w["rx_packets"] for w in workers.values()) >= 20))
        interfaces = telemetry(topo, "/espresso/interfaces")
        checks.append(("/espresso/interfaces has outside and inside", {"outside", "inside"} <= set(interfaces)))
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
