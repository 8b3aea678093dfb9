#!/usr/bin/python3
"""add-sas / delete-sas against a running espresso-dp with two workers (docs/control-api.md): batches
of inbound SAs (spread over both workers' SADs, queued to each worker in one run) and outbound SAs with
/32 selectors (the SPD's host level), checked with list-sas; a batch with one bad SA, or with an SA that
already exists, is refused whole with a message naming the item and changes nothing; deleted SAs'
runtime slots are reused by the next batch; flush removes 1500 SAs at once and says so. Run as root (network namespace for the TAPs), under the
shared lock: flock /tmp/espresso-systest.lock /usr/bin/python3 tests/component/test_dp_add_sas.py
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dp_process as dp  # noqa: E402

NETNS = "esp-addsas"
KEY = "0x00112233445566778899aabbccddeeff01020304"




def inbound(spi):
    return {"spi": "0x%x" % spi, "direction": "inbound", "protocol": "esp", "mode": "tunnel",
            "source": "203.0.113.1", "destination": "198.51.100.1", "encryption": "aes128gcm16",
            "key": KEY, "replay-window": 64,
            "selectors": {"local": "192.168.1.0/24", "remote": "192.168.2.0/24"}}


def outbound(spi):
    host = spi & 0xffff
    return {"spi": "0x%x" % spi, "direction": "outbound", "protocol": "esp", "mode": "tunnel",
            "source": "198.51.100.1", "destination": "203.0.113.1", "encryption": "aes128gcm16",
            "key": KEY, "selectors": {"local": "192.168.1.0/24",
                                      "remote": "10.%d.%d.%d/32" % (host >> 16, (host >> 8) & 255, host & 255)}}


def listed(c):
    r = c.call("list-sas", {})
    assert r.get("ok"), r
    return {(s["direction"], int(s["spi"], 0) if isinstance(s["spi"], str) else s["spi"])
            for s in r["result"]["sas"]}



def main():
    if os.geteuid() != 0:
        print("skipped: needs root")
        return 77
    work = tempfile.mkdtemp(prefix="espresso-addsas-")
    sock = os.path.join(work, "dp.sock")
    cfg = os.path.join(work, "gw.yaml")
    with open(cfg, "w") as f:
        f.write(dp.null_ports_config(sock))
    dp.netns_add(NETNS)
    proc = dp.Process([dp.dataplane_binary(), "--config", cfg], os.path.join(work, "espresso-dp.log"), ns=NETNS)
    try:
        proc.wait_for("running with", 60)
        c = dp.Control(sock)
        want = set()
        # Three batches of 1000 inbound SAs (odd and even SPIs: both workers) and one of outbound /32s.
        for b in range(3):
            spis = range(0x10000 + b * 1000, 0x10000 + (b + 1) * 1000)
            r = c.call("add-sas", {"sas": [inbound(s) for s in spis]})
            dp.check(r.get("ok") and r["result"]["installed"] == 1000, f"inbound batch {b} installed: {r.get('error')}")
            want |= {("inbound", s) for s in spis}
        spis = range(0x20000, 0x20000 + 1000)
        r = c.call("add-sas", {"sas": [outbound(s) for s in spis]})
        dp.check(r.get("ok") and r["result"]["installed"] == 1000, f"outbound batch installed: {r.get('error')}")
        want |= {("outbound", s) for s in spis}
        dp.check(listed(c) == want, "list-sas shows exactly the 4000 SAs added")

        # One bad SA in the middle of a batch: refused whole, named, nothing installed.
        bad = [inbound(s) for s in range(0x30000, 0x30000 + 100)]
        bad[57]["key"] = "0x0011"
        r = c.call("add-sas", {"sas": bad})
        dp.check(not r.get("ok") and "sas[57]" in r.get("error", ""), f"bad key refused, named: {r.get('error')}")
        dp.check(listed(c) == want, "nothing of the refused batch installed")

        # An SA that already exists, late in a batch: refused whole.
        dup = [inbound(s) for s in range(0x30000, 0x30000 + 10)] + [inbound(0x10005)]
        r = c.call("add-sas", {"sas": dup})
        dp.check(not r.get("ok") and "sas[10]" in r.get("error", "") and "already exists" in r.get("error", ""),
              f"existing SA refused, named: {r.get('error')}")
        dp.check(listed(c) == want, "nothing of the batch with an existing SA installed")

        # Delete a batch, add it again (the freed runtime slots are reused), delete everything.
        gone = [{"direction": "inbound", "spi": s} for s in range(0x10000, 0x10000 + 1000)]
        r = c.call("delete-sas", {"sas": gone})
        dp.check(r.get("ok") and r["result"]["deleted"] == 1000, f"delete-sas of 1000: {r.get('error')}")
        want -= {("inbound", s) for s in range(0x10000, 0x10000 + 1000)}
        dp.check(listed(c) == want, "list-sas after delete-sas")
        r = c.call("add-sas", {"sas": [inbound(s) for s in range(0x10000, 0x10000 + 1000)]})
        dp.check(r.get("ok"), f"the deleted SAs added again: {r.get('error')}")
        want |= {("inbound", s) for s in range(0x10000, 0x10000 + 1000)}
        dp.check(listed(c) == want, "list-sas after adding them again")
        for direction in ("inbound", "outbound"):
            items = sorted(s for d, s in want if d == direction)
            for i in range(0, len(items), 1000):
                r = c.call("delete-sas", {"sas": [{"direction": direction, "spi": s} for s in items[i:i + 1000]]})
                dp.check(r.get("ok"), f"delete-sas {direction} {i}: {r.get('error')}")
        dp.check(listed(c) == set(), "every SA deleted")
        # flush: every SA at once (one delete_sas, one SPD round; it was a delete_sa and an SPD
        # compile per SA), and its answer says whether it worked. Outbound SAs with /24 remotes are
        # rte_acl rules, inbound ones spread over both workers.
        prefix_out = [dict(outbound(s), selectors={"local": "192.168.1.0/24",
                                                   "remote": "10.%d.%d.0/24" % (i >> 8, i & 255)})
                      for i, s in enumerate(range(0x30000, 0x30000 + 500))]
        r = c.call("add-sas", {"sas": prefix_out + [inbound(s) for s in range(0x40000, 0x40000 + 1000)]})
        dp.check(r.get("ok"), f"add-sas before flush: {r.get('error')}")
        r = c.call("flush", {})
        dp.check(r.get("ok"), f"flush: {r.get('error')}")
        dp.check(listed(c) == set(), "every SA gone after flush")
        r = c.call("add-sas", {"sas": [inbound(s) for s in range(0x40000, 0x40000 + 10)]})
        dp.check(r.get("ok"), f"add-sas after flush (the same SPIs): {r.get('error')}")
        # add-policy makes the file's checks: a protect policy inside its SA's selectors, no two
        # policies for exactly the same traffic.
        r = c.call("add-sa", {"sa": outbound(0x50001)})  # remote 10.0.0.1/32
        dp.check(r.get("ok"), f"add-sa for the policies: {r.get('error')}")
        wide = {"local": "192.168.1.0/24", "remote": "10.0.0.0/29", "action": "protect", "spi": "0x50001"}
        r = c.call("add-policy", {"policy": wide})
        dp.check(not r.get("ok") and "not inside remote selector 10.0.0.1/32" in r.get("error", ""),
                 f"protect policy wider than its SA's selectors refused: {r}")
        bypass = {"local": "192.168.1.0/24", "remote": "10.9.0.0/16", "action": "bypass"}
        r = c.call("add-policy", {"policy": bypass})
        dp.check(r.get("ok"), f"add-policy bypass: {r.get('error')}")
        r = c.call("add-policy", {"policy": dict(bypass, action="discard", priority=5)})
        dp.check(not r.get("ok") and "matches exactly the same traffic" in r.get("error", ""),
                 f"a second policy for exactly the same traffic with another action refused: {r}")
        r = c.call("add-policy", {"policy": bypass})
        dp.check(r.get("ok"), f"the same decision twice (espresso-ike reinstalls a trap) accepted: {r.get('error')}")
        dp.check(proc.proc.poll() is None, "espresso-dp still running")
    finally:
        rc = proc.stop()
        dp.netns_del(NETNS)
        dp.remove_runtime_dir(control_socket=sock)
    print("espresso-dp exit status", rc)
    print("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
