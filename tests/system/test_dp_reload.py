#!/usr/bin/python3
"""`espresso reload` of espresso-dp's runtime sections (control op `reload`, docs/control-api.md) on
tests/system/topology.py's static site-to-site network, while a sequence-numbered UDP stream runs
HQ LAN -> Branch LAN through the SA 0x1001 that no reload touches.

Each gateway runs on its own copy of the example file; the test edits the copies and reloads:
  A. HQ: a route to 100.64.0.0/24 (a prefix only the internet router has) is added, the inbound static
     SA 0x2001 gets a new key (replaced), and `workers` goes 1 -> 2. The report lists exactly that
     (workers as "restart needed", not applied); ping to 100.64.0.1 works now (it was dropped as
     no_route before); Branch -> HQ pings fail (Branch still encrypts with the old key: HQ counts
     ICV failures on the new SA).
  B. Branch: the same new key for its outbound 0x2001: Branch -> HQ pings work again, on an SA whose
     counters started from zero.
  C. HQ: an explicit discard policy for 100.64.0.0/24: the ping is dropped and counted (spd_discard).
  D. HQ: files that must change nothing: a key of the wrong length (the loader refuses), a protect
     policy naming an SPI no SA has (the data plane refuses), a static SA on an SPI that a control
     socket client installed (refused). Each is refused with the reason and "nothing was changed";
     SAs, policies and the route stay as they were.
Throughout: the stream through 0x1001 loses and duplicates nothing, and 0x1001's counters and
sequence numbers continue (same SA, never reinstalled). Oracles: ping and the Linux stack in the
namespaces, the stream's receiver, the data plane's own counters.

  F. `espresso reload --dry-run` of a file with a route removed and a key changed: the report lists
     both (and the restart-needed difference), nothing is applied (the route still works, the SA keeps
     its counters), and the real reload afterwards reports the same; the check child reads the text
     the reload read (`espresso-dp --check --stdin`), never the path again.
The whole test runs twice: with `workers: 1` (A changes it to 2) and with `workers: 2` (A changes it
to 1), so every reload is also applied on two worker lcores at once.

Run as root (under the system test lock): ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_dp_reload.py
[--workers N] (default: both variants)
"""
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from topology import ROOT, Topology, sh  # noqa: E402
from udp_stream import UdpStream  # noqa: E402

BUILD = os.environ.get("ESPRESSO_BUILD", os.path.join(HERE, "..", "..", "build"))
OLD_KEY = "0xffeeddccbbaa99887766554433221100a0b0c0d0"
NEW_KEY = "0x0102030405060708090a0b0c0d0e0f1011121314"
ROUTE = "  - { destination: 203.0.113.0/24, via: 198.51.100.254 }\n"
EXTRA_ROUTE = "  - { destination: 100.64.0.0/24, via: 198.51.100.254 }\n"


def edit(path, old, new):
    text = open(path).read()
    assert old in text, f"{old!r} not in {path}"
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))


def reload(topo, gw, cfg, as_json=True, dry_run=False):
    """`espresso reload` by socket: with --config the CLI would refuse a broken file itself, before
    the data plane sees it (the data plane's own checks are what this test is about)."""
    cli = os.path.join(topo.build, "controlplane", "espresso")
    sock = "/run/espresso/hq.sock" if gw == "gw-hq" else "/run/espresso/branch.sock"
    r = subprocess.run(f"{cli} --socket {sock} {'--json ' if as_json else ''}reload{' --dry-run' if dry_run else ''}",
                       shell=True, text=True, capture_output=True, timeout=120)
    return r


def sas(topo, gw):
    out = json.loads(topo.cli(gw, "--json show crypto ipsec sa"))
    return {(s["direction"], s["spi"]): s for s in out["sas"]}


def dataplane(topo, gw):
    sock = "/run/espresso/hq.sock" if gw == "gw-hq" else "/run/espresso/branch.sock"
    out = subprocess.run([os.path.join(topo.build, "controlplane", "espresso"), "--socket", sock, "--json",
                          "show", "dataplane"], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


def drops(topo, gw, name):
    return sum(w["drops"].get(name, 0) for w in dataplane(topo, gw)["workers"])


def static_neighbor(topo, address):
    """True/False: HQ's ARP entry for `address` is static or learned; None: no entry."""
    out = json.loads(topo.cli("gw-hq", "--json show arp"))
    for n in out.get("neighbors", []):
        if n["address"] == address:
            return n["static"]
    return None


def ping(topo, src, dst, count=3):
    r = sh(f"ping -c {count} -i 0.2 -W 1 {dst}", ns=topo.ns[src], capture=True, check=False, timeout=60)
    for line in r.stdout.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


def section(report, name):
    return report["dataplane"]["sections"][name]


def dry_run_usage(topo):
    cli = os.path.join(topo.build, "controlplane", "espresso")
    r = subprocess.run([cli, "--dry-run", "show", "arp"], capture_output=True, text=True, timeout=30)
    return r.returncode == 2 and "--dry-run is an option of `espresso reload`" in r.stderr


def check_stdin_check(hq):
    """`espresso-dp --check --stdin --config NAME` (what a reload spawns) checks the text on its
    standard input, names it NAME in messages, and never opens NAME."""
    dp = os.path.join(BUILD, "dataplane", "espresso-dp")
    name = "/nonexistent/reload-check.yaml"
    good = open(hq).read()
    ok = subprocess.run([dp, "--check", "--stdin", "--config", name], input=good, text=True,
                        capture_output=True, timeout=60)
    bad = subprocess.run([dp, "--check", "--stdin", "--config", name], text=True, capture_output=True, timeout=60,
                         input=good.replace("key: 0x00112233445566778899aabbccddeeff01020304", "key: 0x0011223344", 1))
    return (ok.returncode == 0 and "configuration OK" in ok.stdout and bad.returncode == 2
            and bad.stderr.startswith(f"espresso-dp: {name}:") and "key" in bad.stderr), (ok, bad)


def main():
    if not os.path.exists(os.path.join(BUILD, "dataplane", "espresso-dp")):
        print("SKIP: espresso-dp not built")
        return 77
    wanted = [1, 2]
    if len(sys.argv) == 3 and sys.argv[1] == "--workers":
        wanted = [int(sys.argv[2])]
    failed = []
    for workers in wanted:
        print(f"===== workers: {workers} =====", flush=True)
        if run(workers):
            failed.append(workers)
    if failed:
        print(f"FAILED with workers: {failed}")
    return 1 if failed else 0


def run(workers):
    """The scenarios A-F with `workers` worker lcores on both gateways; returns the failed check count."""
    other = 2 if workers == 1 else 1
    topo = Topology(BUILD, prefix=f"esrl{workers}{os.getpid() % 1000}")
    hq = os.path.join(topo.dir, "hq.yaml")
    branch = os.path.join(topo.dir, "branch.yaml")
    shutil.copy(os.path.join(ROOT, "config/examples/site-to-site-hq.yaml"), hq)
    shutil.copy(os.path.join(ROOT, "config/examples/site-to-site-branch.yaml"), branch)
    os.chmod(hq, 0o600)
    os.chmod(branch, 0o600)
    if workers != 1:
        edit(hq, "workers: 1 ", f"workers: {workers} ")
        edit(branch, "workers: 1 ", f"workers: {workers} ")
        # Two workers on af_packet: a worker descheduled long enough for its 256-frame ring to fill
        # (a reload's check child on this 2-vCPU machine) has the kernel's fanout roll the stream
        # over to the other worker's socket, which hands it back (the SPI's owner). The owner holds
        # such packets while its own ring is backlogged (worker.cpp), but a stall the sender keeps
        # feeding can still interleave the two beyond 128 packets: without this, 35-141 of the
        # stream's packets were dropped as too old in 5 of 6 runs under CPU load (1 in 4 with the
        # hold). docs/configuration.md advises 512 or more for several workers on af_packet; not a
        # reload question.
        for path in (hq, branch):
            text = open(path).read()
            assert text.count("replay-window: 128 ") == 1, "test bug: window not found"
            with open(path, "w") as f:
                f.write(text.replace("replay-window: 128  ", "replay-window: 1024 ", 1))
    topo.hq_config, topo.branch_config = hq, branch
    checks = []

    def check(ok, what):
        checks.append((what, bool(ok)))
        print(f"{'PASS' if ok else 'FAIL'} {what}", flush=True)

    stream = None
    try:
        topo.create()
        # 100.64.0.1 lives on the internet router only; it routes the HQ LAN back through HQ.
        sh("ip addr add 100.64.0.1/32 dev lo", ns=topo.ns["inet"])
        sh("ip route add 192.168.1.0/24 via 198.51.100.1", ns=topo.ns["inet"])
        topo.start_gateways()
        check(len(dataplane(topo, "gw-hq")["workers"]) == workers + 1, f"HQ runs {workers} worker(s) (+ main)")
        stdin_ok, detail = check_stdin_check(hq)
        check(stdin_ok, f"espresso-dp --check --stdin checks the text it is given, never the path ({detail})"
              if not stdin_ok else "espresso-dp --check --stdin checks the text it is given, never the path")
        check(ping(topo, "host-hq", "192.168.2.10") >= 2, "tunnel up before any reload (HQ -> Branch)")
        check(ping(topo, "host-branch", "192.168.1.10") >= 2, "tunnel up before any reload (Branch -> HQ)")
        no_route_before = drops(topo, "gw-hq", "no_route")
        check(ping(topo, "host-hq", "100.64.0.1", 2) == 0 and drops(topo, "gw-hq", "no_route") > no_route_before,
              "100.64.0.1 unreachable before the reload (dropped as no_route)")

        # Nothing changed yet: a reload changes nothing and says so.
        r = reload(topo, "gw-hq", hq)
        same = json.loads(r.stdout) if r.returncode == 0 else {}
        print(r.stdout, r.stderr)
        check(r.returncode == 0 and same["dataplane"]["applied"] is False
              and same["dataplane"]["restart-needed"] == []
              and len(section(same, "security-associations")["unchanged"]) == 2
              and len(section(same, "routes")["unchanged"]) == 1,
              "reload of the unchanged file: nothing applied, 2 SAs and 1 route unchanged")

        before = sas(topo, "gw-hq")[("outbound", 0x1001)]
        stream = UdpStream(topo, "host-hq", "host-branch", "192.168.2.10", port=41000, rate=400, seconds=24).start()
        time.sleep(2)

        # A. HQ: route added, inbound SA rekeyed by hand, workers changed (restart needed).
        edit(hq, ROUTE, ROUTE + EXTRA_ROUTE)
        edit(hq, OLD_KEY, NEW_KEY)
        edit(hq, f"workers: {workers} ", f"workers: {other} ")
        r = reload(topo, "gw-hq", hq)
        print(r.stdout, r.stderr)
        a = json.loads(r.stdout) if r.returncode == 0 else {}
        check(r.returncode == 0, f"A: HQ reload accepted ({r.stderr.strip()})")
        if a:
            sa_sec = section(a, "security-associations")
            check(section(a, "routes")["added"] == ["100.64.0.0/24 via 198.51.100.254"]
                  and section(a, "routes")["removed"] == [] and len(section(a, "routes")["unchanged"]) == 1,
                  "A: report: route 100.64.0.0/24 added, the other unchanged")
            check(len(sa_sec["changed"]) == 1 and sa_sec["changed"][0] == "inbound 0x00002001 192.168.1.0/24 <-> 192.168.2.0/24 (key)"
                  and len(sa_sec["unchanged"]) == 1 and sa_sec["unchanged"][0].startswith("outbound 0x00001001")
                  and sa_sec["added"] == [] and sa_sec["removed"] == [],
                  "A: report: SA 0x2001 changed, 0x1001 unchanged")
            check(a["dataplane"]["restart-needed"] == [f"dataplane.workers: {workers} -> {other}"]
                  and a["dataplane"]["applied"],
                  f"A: report: workers {workers} -> {other} needs a restart (applied: the rest)")
            check("0102030405" not in r.stdout and "ffeedd" not in r.stdout, "A: the report shows no key")
            check(a.get("ike") is None and "not running" in a.get("ike-error", ""),
                  "A: no espresso-ike here: reported, not an error")
        check(len(dataplane(topo, "gw-hq")["workers"]) == workers + 1,
              f"A: still {workers} worker(s) (+ main): workers not applied live")
        check(ping(topo, "host-hq", "100.64.0.1") >= 2, "A: the added route takes effect (100.64.0.1 answers)")
        icv_before = sas(topo, "gw-hq")[("inbound", 0x2001)]["drops"].get("icv", 0)
        check(ping(topo, "host-branch", "192.168.1.10", 2) == 0, "A: Branch -> HQ fails while only HQ has the new key")
        hq_in = sas(topo, "gw-hq")[("inbound", 0x2001)]
        check(hq_in["drops"].get("icv", 0) > icv_before or hq_in["drops"].get("icv", 0) > 0,
              f"A: HQ's new 0x2001 counts the old key's packets as ICV failures ({hq_in['drops'].get('icv')})")

        # B. Branch gets the same key.
        edit(branch, OLD_KEY, NEW_KEY)
        r = reload(topo, "gw-branch", branch, as_json=False)
        print(r.stdout, r.stderr)
        check(r.returncode == 0 and "security-associations: 0 added, 0 removed, 1 changed, 1 unchanged" in r.stdout
              and "changed: outbound 0x00002001 192.168.2.0/24 <-> 192.168.1.0/24 (key)" in r.stdout and "restart needed: none" in r.stdout,
              "B: Branch reload (text): SA 0x2001 changed, no restart needed")
        check(ping(topo, "host-branch", "192.168.1.10") >= 2, "B: Branch -> HQ works again with the new key")
        hq_in = sas(topo, "gw-hq")[("inbound", 0x2001)]
        check(0 < hq_in["counters"]["decaps"] <= 10, f"B: HQ's 0x2001 is a new SA (decaps {hq_in['counters']['decaps']})")

        # C. HQ: an explicit discard policy for the new prefix, and a static neighbor (host-hq's real MAC).
        host_mac = sh("cat /sys/class/net/eth0/address", ns=topo.ns["host-hq"], capture=True).stdout.strip()
        edit(hq, "# policies:\n", "policies:\n  - { local: 192.168.1.0/24, remote: 100.64.0.0/24, action: discard, priority: 10 }\n")
        edit(hq, "# neighbors:\n", f"neighbors:\n  - {{ address: 192.168.1.10, mac: \"{host_mac}\", interface: inside }}\n")
        r = reload(topo, "gw-hq", hq)
        print(r.stdout, r.stderr)
        c = json.loads(r.stdout) if r.returncode == 0 else {}
        check(c and section(c, "policies")["added"] == ["192.168.1.0/24 -> 100.64.0.0/24 discard priority 10"]
              and not section(c, "security-associations")["changed"] and not section(c, "routes")["added"]
              and section(c, "neighbors")["added"] == [f"192.168.1.10 lladdr {host_mac} dev inside"],
              "C: report: one policy and one neighbor added, nothing else")
        check(static_neighbor(topo, "192.168.1.10") is True, "C: 192.168.1.10 is a static (permanent) ARP entry now")
        discards = drops(topo, "gw-hq", "spd_discard")
        check(ping(topo, "host-hq", "100.64.0.1", 2) == 0 and drops(topo, "gw-hq", "spd_discard") >= discards + 2,
              "C: the policy takes effect (pings dropped, counted as spd_discard)")

        # D. Files that must change nothing.
        good = open(hq).read()
        state = sas(topo, "gw-hq")
        bad_files = [
            ("a 5-byte key (refused by the loader)", good.replace(ROUTE + EXTRA_ROUTE, "  - { destination: 10.0.0.0/8, via: 198.51.100.254 }\n", 1)
             .replace("key: 0x00112233445566778899aabbccddeeff01020304", "key: 0x0011223344", 1), "key"),
            ("a protect policy naming SPI 0x9999 (refused by the loader)", good.replace(
                "action: discard, priority: 10 }", "action: protect, spi: 0x9999, priority: 10 }", 1), "0x00009999"),
            ("a new interface with a static neighbor on it (valid file; refused by the data plane)",
             good.replace("interfaces:\n", "interfaces:\n  - name: dmz\n    device: \"net_af_packet2,iface=dmz0\"\n"
                          "    address: 10.9.0.1/24\n", 1)
             .replace("\nneighbors:\n", "\nneighbors:\n  - { address: 10.9.0.2, mac: \"02:00:00:00:00:99\", interface: dmz }\n", 1)
             .replace(ROUTE + EXTRA_ROUTE, ROUTE, 1), "restart"),
        ]
        # Each edit must have happened (str.replace says nothing when it finds nothing).
        assert "key: 0x0011223344 " in bad_files[0][1] and "spi: 0x9999" in bad_files[1][1], "test bug: edit not made"
        assert "interface: dmz }" in bad_files[2][1] and "name: dmz" in bad_files[2][1], "test bug: edit not made"
        for what, text, needle in bad_files:
            with open(hq, "w") as f:
                f.write(text)
            r = reload(topo, "gw-hq", hq)
            print(what, "->", r.returncode, r.stderr.strip())
            check(r.returncode == 1 and needle in r.stderr and "nothing was changed" in r.stderr,
                  f"D: {what}: refused with the reason")
        # A static SA on an SPI a control socket client (espresso-ike's path) installed.
        from test_update_sa import request  # noqa: E402
        added = request("/run/espresso/hq.sock", "add-sa", {"sa": {
            "spi": "0x3001", "direction": "inbound", "protocol": "esp", "mode": "tunnel",
            "source": "203.0.113.1", "destination": "198.51.100.1", "encryption": "aes128gcm16",
            "key": "0x" + "11" * 20, "integrity": "none",
            "selectors": {"local": "192.168.1.0/24", "remote": "192.168.2.0/24"}}})
        check(added.get("ok") is True, "D: an SA 0x3001 installed through the control socket")
        with open(hq, "w") as f:
            f.write(good.replace("  - spi: 0x00002001", "  - spi: 0x00003001", 1))
        r = reload(topo, "gw-hq", hq)
        print("socket SPI ->", r.returncode, r.stderr.strip())
        check(r.returncode == 1 and "control socket" in r.stderr and "nothing was changed" in r.stderr,
              "D: a static SA on the socket-installed SPI 0x3001: refused")
        with open(hq, "w") as f:
            f.write(good)
        after = sas(topo, "gw-hq")
        kept = all(after[k]["counters"]["decaps"] >= state[k]["counters"]["decaps"]
                   and after[k]["counters"]["encaps"] >= state[k]["counters"]["encaps"] for k in state if k in after)
        check(sorted(k for k in after if k != ("inbound", 0x3001)) == sorted(state) and ("inbound", 0x3001) in after
              and kept,
              "D: the same SAs after the refused reloads, counters never reset (static ones and the socket's 0x3001)")
        check(ping(topo, "host-hq", "100.64.0.1", 2) == 0, "D: the discard policy is still there")
        r = reload(topo, "gw-hq", hq)
        d = json.loads(r.stdout) if r.returncode == 0 else {}
        check(d and d["dataplane"]["applied"] is False
              and d["dataplane"]["restart-needed"] == [f"dataplane.workers: {workers} -> {other}"],
              "D: the good file again: nothing to apply (the refused files left no trace), workers still reported")
        check(("inbound", 0x3001) in sas(topo, "gw-hq"), "D: reload leaves the socket-installed SA alone")

        # E. HQ: the static neighbor goes again (the stream keeps using it through the reload).
        # (back to the comment: a bare `neighbors:` would be null, which the loader refuses)
        edit(hq, f"neighbors:\n  - {{ address: 192.168.1.10, mac: \"{host_mac}\", interface: inside }}\n",
             "# neighbors:\n")
        r = reload(topo, "gw-hq", hq)
        print(r.stdout, r.stderr)
        e = json.loads(r.stdout) if r.returncode == 0 else {}
        check(e and len(section(e, "neighbors")["removed"]) == 1 and not section(e, "policies")["removed"],
              "E: report: the neighbor removed, nothing else")
        ping(topo, "host-branch", "192.168.1.10", 2)  # HQ resolves host-hq again by ARP
        check(static_neighbor(topo, "192.168.1.10") is not True, "E: 192.168.1.10 is no longer a static entry")

        # F. A dry run: a route removed and 0x2001's key changed back, reported and not applied.
        current = open(hq).read()
        edit(hq, EXTRA_ROUTE, "")
        edit(hq, NEW_KEY, OLD_KEY)
        in_before = sas(topo, "gw-hq")[("inbound", 0x2001)]
        r = reload(topo, "gw-hq", hq, dry_run=True)
        print(r.stdout, r.stderr)
        f = json.loads(r.stdout) if r.returncode == 0 else {}
        check(f and f["dataplane"]["dry-run"] is True and f["dataplane"]["applied"] is False
              and section(f, "routes")["removed"] == ["100.64.0.0/24 via 198.51.100.254"]
              and section(f, "security-associations")["changed"] == ["inbound 0x00002001 192.168.1.0/24 <-> 192.168.2.0/24 (key)"]
              and f["dataplane"]["restart-needed"] == [f"dataplane.workers: {workers} -> {other}"],
              "F: dry run reports the route removed, SA 0x2001 changed and the restart-needed difference")
        check("ffeedd" not in r.stdout and "0102030405" not in r.stdout, "F: the dry run's report shows no key")
        t = reload(topo, "gw-hq", hq, as_json=False, dry_run=True)
        check(t.returncode == 0 and "dataplane (" in t.stdout and "dry run, nothing applied" in t.stdout
              and "removed: 100.64.0.0/24 via 198.51.100.254" in t.stdout,
              f"F: dry run as text ({t.stdout.splitlines()[:1]})")
        check(ping(topo, "host-branch", "192.168.1.10") >= 2, "F: Branch -> HQ still works: the key was not changed")
        in_after = sas(topo, "gw-hq")[("inbound", 0x2001)]
        check(in_after["counters"]["decaps"] >= in_before["counters"]["decaps"] + 2,
              "F: 0x2001 is the same SA after the dry run (its counters continued)")
        with open(hq, "w") as fh:
            fh.write(current)
        r = reload(topo, "gw-hq", hq)
        g = json.loads(r.stdout) if r.returncode == 0 else {}
        check(g and g["dataplane"]["applied"] is False and not section(g, "routes")["added"]
              and not section(g, "security-associations")["changed"],
              "F: the file as it was: nothing to apply (the dry run changed nothing)")
        check(dry_run_usage(topo), "F: --dry-run outside reload is a usage error")

        result = stream.result()
        stream = None
        print("stream through 0x1001:", {k: result[k] for k in ("sent", "received", "missing", "duplicates", "gaps")})
        check(result["sent"] > 0 and result["missing"] == 0 and result["duplicates"] == 0,
              "the stream through the unchanged SA 0x1001 lost and duplicated nothing across every reload")
        if result["missing"] != 0:
            # Where they went (a 2-worker run once lost 93 packets in one 0.23 s gap at reload A, not
            # reproduced since): every drop reason and per-worker counter of both gateways.
            for gw in ("gw-hq", "gw-branch"):
                for w in dataplane(topo, gw)["workers"]:
                    print(f"{gw} worker: " + json.dumps({k: v for k, v in w.items() if v}), flush=True)
            # The SA's own drop counters (replay, ICV, ...) are not gateway drops: the branch's
            # inbound 0x1001 too (a CI run on 656dd73 lost 59 in one gap with no gateway drop counted).
            for key, sa in sorted(sas(topo, "gw-branch").items()):
                print(f"gw-branch SA {key}: " + json.dumps({k: v for k, v in sa["counters"].items() if v})
                      + " drops " + json.dumps({k: v for k, v in sa.get("drops", {}).items() if v}), flush=True)
            # Frames the ports never delivered (af_packet: the kernel ring's drops show as rx_missed)
            # and the namespaces' own link counters, to tell a ring overrun from a drop elsewhere.
            for gw in ("gw-hq", "gw-branch"):
                print(f"{gw} interfaces:\n" + topo.cli(gw, "show interfaces", check=False), flush=True)
            for name in topo.ns:
                print(f"{name} links:\n" + sh("ip -s link", ns=topo.ns[name], capture=True).stdout, flush=True)
        after = sas(topo, "gw-hq")[("outbound", 0x1001)]
        check(after["counters"]["encaps"] >= before["counters"]["encaps"] + result["received"]
              and after["sequence"] >= before["sequence"] + result["received"],
              f"0x1001's counters and sequence numbers continued (encaps {before['counters']['encaps']} -> "
              f"{after['counters']['encaps']}, seq {before['sequence']} -> {after['sequence']})")
    except Exception as e:  # noqa: BLE001
        checks.append((f"setup: {e}", False))
        traceback.print_exc()
    finally:
        if stream is not None:
            stream.stop()
        for gw in ("gw-hq", "gw-branch"):
            print(f"--- {gw} log (tail)\n" + "\n".join(topo.log(gw).splitlines()[-15:]))
        topo.teardown()
    failed = sum(1 for _, ok in checks if not ok)
    print(f"workers {workers}: {len(checks) - failed} passed, {failed} failed")
    return failed


if __name__ == "__main__":
    sys.exit(main())
