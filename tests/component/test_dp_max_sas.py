#!/usr/bin/python3
"""dataplane.max-sas against a running espresso-dp (docs/configuration.md): with max-sas 1024 the
gateway takes exactly 1024 SAs, inbound and outbound together, through add-sas and add-sa; one more is
refused with a message naming the limit (a batch that would cross it is refused whole and changes
nothing); after a delete there is room for one again. Then a gateway with 5000 static inbound SAs
starts (more than a worker's update ring holds: they are written to the SADs directly before launch). Run as root (network namespace for the TAPs),
under the shared lock: flock /tmp/espresso-systest.lock /usr/bin/python3 tests/component/test_dp_max_sas.py
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dp_process as dp  # noqa: E402

NETNS = "esp-maxsas"
KEY = "0x00112233445566778899aabbccddeeff01020304"




def inbound(spi):
    return {"spi": "0x%x" % spi, "direction": "inbound", "protocol": "esp", "mode": "tunnel",
            "source": "203.0.113.1", "destination": "198.51.100.1", "encryption": "aes128gcm16",
            "key": KEY, "replay-window": 64,
            "selectors": {"local": "192.168.1.0/24", "remote": "10.1.%d.%d/32" % ((spi >> 8) & 255, spi & 255)}}


def outbound(spi):
    return {"spi": "0x%x" % spi, "direction": "outbound", "protocol": "esp", "mode": "tunnel",
            "source": "198.51.100.1", "destination": "203.0.113.1", "encryption": "aes128gcm16",
            "key": KEY, "selectors": {"local": "192.168.1.0/24",
                                      "remote": "10.2.%d.%d/32" % ((spi >> 8) & 255, spi & 255)}}


def count(c):
    r = c.call("list-sas", {})
    assert r.get("ok"), r
    return len(r["result"]["sas"])



def main():
    if os.geteuid() != 0:
        print("skipped: needs root")
        return 77
    work = tempfile.mkdtemp(prefix="espresso-maxsas-")
    sock = os.path.join(work, "dp.sock")
    cfg = os.path.join(work, "gw.yaml")
    with open(cfg, "w") as f:
        f.write(dp.null_ports_config(sock, "  max-sas: 1024\n"))
    dp.netns_add(NETNS)
    proc = dp.Process([dp.dataplane_binary(), "--config", cfg], os.path.join(work, "espresso-dp.log"), ns=NETNS)
    try:
        proc.wait_for("running with", 60)
        c = dp.Control(sock)
        r = c.call("add-sas", {"sas": [inbound(s) for s in range(0x10000, 0x10000 + 600)]})
        dp.check(r.get("ok") and r["result"]["installed"] == 600, f"600 inbound SAs installed: {r.get('error')}")
        r = c.call("add-sas", {"sas": [outbound(s) for s in range(0x20000, 0x20000 + 425)]})
        dp.check(not r.get("ok") and "max-sas is 1024" in r.get("error", "") and "425 more" in r.get("error", ""),
              f"a batch crossing max-sas refused whole, naming the limit: {r.get('error')}")
        dp.check(count(c) == 600, "nothing of the refused batch installed")
        r = c.call("add-sas", {"sas": [outbound(s) for s in range(0x20000, 0x20000 + 423)]})
        dp.check(r.get("ok") and r["result"]["installed"] == 423, f"423 outbound SAs installed: {r.get('error')}")
        r = c.call("add-sa", {"sa": inbound(0x30000)})
        dp.check(r.get("ok"), f"add-sa of SA 1024 (the limit): {r.get('error')}")
        r = c.call("add-sa", {"sa": outbound(0x30001)})
        dp.check(not r.get("ok") and "max-sas" in r.get("error", ""), f"add-sa of SA 1025 refused: {r.get('error')}")
        dp.check(count(c) == 1024, "1024 SAs installed")
        r = c.call("delete-sas", {"sas": [{"direction": "inbound", "spi": 0x10000}]})
        dp.check(r.get("ok"), f"one SA deleted: {r.get('error')}")
        r = c.call("add-sa", {"sa": outbound(0x30001)})
        dp.check(r.get("ok"), f"room for one again after the delete: {r.get('error')}")
        dp.check(count(c) == 1024, "1024 SAs installed again")
        dp.check(proc.proc.poll() is None, "espresso-dp still running")
    finally:
        rc = proc.stop()
        dp.netns_del(NETNS)
        dp.remove_runtime_dir(control_socket=sock)
    print("espresso-dp exit status", rc)

    # 5000 static inbound SAs (one more than a worker's 4096-message update ring).
    static = dp.null_ports_config(sock, "  max-sas: 8192\n") + "security-associations:\n" + "".join(
        "  - " + json.dumps(inbound(s)) + "\n" for s in range(0x40000, 0x40000 + 5000))
    with open(cfg, "w") as f:
        f.write(static)
    dp.netns_add(NETNS)
    proc = dp.Process([dp.dataplane_binary(), "--config", cfg], os.path.join(work, "espresso-dp-static.log"), ns=NETNS)
    try:
        proc.wait_for("running with", 120)
        dp.check(count(dp.Control(sock)) == 5000, "5000 static inbound SAs installed at start-up")
    finally:
        rc = proc.stop()
        dp.netns_del(NETNS)
        dp.remove_runtime_dir(control_socket=sock)
    print("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
