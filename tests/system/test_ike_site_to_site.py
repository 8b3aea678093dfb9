#!/usr/bin/python3
"""Espresso to Espresso over IKEv2: both gateways started with `espresso up` (espresso-dp +
espresso-ike, config/examples/ike-{hq,branch}.yaml with a short DPD; the branch with --log-stderr: its
logs in the files and on up's stderr), HQ initiates, hosts ping across, `espresso status` reports both
daemons, `show crypto ipsec sa` shows the Child SAs' remaining time lifetime from espresso-ike,
`espresso reload --dry-run` of HQ's file with one tunnel changed reports it and touches no SA, then
`espresso reload` of that file (a second tunnel, `extra`) re-negotiates only that
tunnel while a sequence-numbered UDP stream through the unchanged one (`lan`) loses nothing and keeps its
SPIs and IKE SA, a killed branch IKE daemon is detected by DPD and the tunnel
comes back (dpd action restart) once it runs again (the branch now `up --foreground --no-log-files`:
logs on stderr only, stopped by SIGTERM), and `espresso down` stops everything and leaves no
SA in a data plane. No cleartext while the tunnel is down (docs/ike.md, "Traffic while a tunnel is
down"): HQ has a default route to the internet, and a capture on the internet side of HQ sees no packet
of the LAN flows after `espresso clear crypto sa` (the next packets re-establish the tunnel) nor while
DPD has taken the tunnel down.
Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_ike_site_to_site.py
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import ROOT, Topology, sh  # noqa: E402
from udp_stream import UdpStream  # noqa: E402

BUILD = os.path.abspath(os.environ.get("ESPRESSO_BUILD", os.path.join(ROOT, "build")))
CLI = os.path.join(BUILD, "controlplane", "espresso")


def config_copy(workdir, name):
    text = open(os.path.join(ROOT, f"config/examples/ike-{name}.yaml")).read()
    text = text.replace("dpd: { interval: 30s, action: restart }", "dpd: { interval: 2s, action: restart }")
    # DPD gives up after 0.5 + 1 + 2 s of silence instead of a minute.
    text = re.sub(r"(?m)^ike:\n", "ike:\n  retransmit-timeout-ms: 500\n  retransmit-tries: 2\n", text, count=1)
    if name == "hq":
        # A default route, as a real gateway has: without the trap policies a down tunnel's traffic
        # would follow it to the internet in the clear.
        text = text.replace("  - { destination: 203.0.113.0/24, via: 198.51.100.254 }\n",
                            "  - { destination: 203.0.113.0/24, via: 198.51.100.254 }\n"
                            "  - { destination: 0.0.0.0/0, via: 198.51.100.254 }\n", 1)
        assert "0.0.0.0/0" in text
    # A second tunnel (no hosts behind 192.168.20.0/24): `espresso reload` changes it and must leave
    # `lan` alone (docs/ike.md, "Reload").
    lan = "          start: immediately\n" if name == "hq" else ""
    local, remote = ("192.168.1.0/24", "192.168.20.0/24") if name == "hq" else ("192.168.20.0/24", "192.168.1.0/24")
    marker = "      tunnels:\n"
    assert marker in text
    text = text.replace(marker, marker + "        - name: extra\n"
                        f"          local-ts: [{local}]\n"
                        f"          remote-ts: [{remote}]\n"
                        "          esp-proposals: [aes256gcm16]\n" + lan, 1)
    path = os.path.join(workdir, f"ike-{name}.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def espresso(topo, gw, args, check=True):
    return sh(f"{CLI} {args}", ns=topo.ns[gw], capture=True, check=check, timeout=120)


def ike_sas(topo, gw, cfg):
    r = espresso(topo, gw, f"--config {cfg} --json show crypto ikev2 sa", check=False)
    try:
        return json.loads(r.stdout)["ike-sas"]
    except (ValueError, KeyError):
        return []


def wait_ready(topo, gw, cfg, timeout=30, children=1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(sa["state"] == "READY" and len(sa["children"]) >= children for sa in ike_sas(topo, gw, cfg)):
            return True
        time.sleep(0.3)
    return False


def children_by_tunnel(topo, gw, cfg):
    """{tunnel: (spi-in, spi-out)} of the installed Child SAs, and the IKE SAs' SPIs."""
    sas = ike_sas(topo, gw, cfg)
    kids = {c["tunnel"]: (c["spi-in"], c["spi-out"]) for sa in sas for c in sa["children"] if c["state"] == "INSTALLED"}
    return kids, sorted((sa["spi-i"], sa["spi-r"]) for sa in sas)


def reload_one_tunnel(topo, hq, check):
    """`espresso reload` with the tunnel `extra` changed (a second ESP proposal the branch does not
    have; it still picks aes256gcm16) while a UDP stream crosses the unchanged tunnel `lan`."""
    check(wait_ready(topo, "gw-hq", hq, children=2), "both tunnels up (lan and extra)")
    before, ike_before = children_by_tunnel(topo, "gw-hq", hq)
    print("before reload:", before, ike_before)
    stream = UdpStream(topo, "host-hq", "host-branch", "192.168.2.10", port=41000, rate=500, seconds=8).start()
    try:
        reload_during(topo, hq, stream, check)
    finally:
        stream.stop()
    check(wait_ready(topo, "gw-hq", hq, children=2), "both tunnels up after the reload")
    after, ike_after = children_by_tunnel(topo, "gw-hq", hq)
    print("after reload:", after, ike_after)
    check(ike_after == ike_before, "the IKE SA kept its SPIs")
    check(after.get("lan") == before.get("lan"), "lan kept its Child SA (same SPIs)")
    check("extra" in after and after.get("extra") != before.get("extra"), "extra was negotiated again (new SPIs)")


def reload_during(topo, hq, stream, check):
    time.sleep(2)
    text = open(hq).read()
    changed = text.replace("          esp-proposals: [aes256gcm16]\n          start: immediately\n        - name: lan",
                           "          esp-proposals: [aes128gcm16, aes256gcm16]\n          start: immediately\n"
                           "        - name: lan", 1)
    assert changed != text
    with open(hq, "w") as f:
        f.write(changed)
    # A dry run first: both daemons report what the reload below does, and nothing changes.
    ike_sas_before = children_by_tunnel(topo, "gw-hq", hq)
    dry = espresso(topo, "gw-hq", f"--config {hq} --json reload --dry-run")
    print(dry.stdout.strip())
    dry_both = json.loads(dry.stdout) if dry.returncode == 0 else {}
    dry_ike = dry_both.get("ike") or {}
    check(dry_both.get("dataplane", {}).get("dry-run") is True and dry_ike.get("dry-run") is True
          and dry_ike.get("updated") == ["branch"]
          and {t["tunnel"]: t["change"] for t in dry_ike.get("tunnels", [])} == {"extra": "changed", "lan": "unchanged"},
          "reload --dry-run: espresso-ike reports tunnel extra changed, lan unchanged")
    time.sleep(1)
    check(children_by_tunnel(topo, "gw-hq", hq) == ike_sas_before, "reload --dry-run: no SA was touched")
    out = espresso(topo, "gw-hq", f"--config {hq} --json reload")
    print(out.stdout.strip())
    both = json.loads(out.stdout)
    check(both.get("dataplane", {}).get("applied") is False and not both["dataplane"].get("restart-needed"),
          "reload: the data plane's sections are unchanged (nothing applied, no restart needed)")
    r = both.get("ike") or {}
    check(r.get("updated") == ["branch"] and not r.get("changed"), "reload: peer branch has changed tunnels only")
    tunnels = {t["tunnel"]: t["change"] for t in r.get("tunnels", [])}
    check(tunnels == {"extra": "changed", "lan": "unchanged"}, f"reload: per tunnel {tunnels}")
    text_out = espresso(topo, "gw-hq", f"--config {hq} reload").stdout  # the same again: all unchanged
    print(text_out.strip())
    check("branch/lan: unchanged" in text_out and "branch/extra: unchanged" in text_out,
          "a second reload of the same file changes nothing")
    result = stream.result()
    print("stream through lan:", {k: result[k] for k in ("sent", "received", "missing", "duplicates", "gaps")})
    check(result["sent"] > 0 and result["missing"] == 0 and result["duplicates"] == 0,
          "no datagram lost or duplicated on the unchanged tunnel during the reload")


def ping(topo, src, dst, count=5):
    r = sh(f"ping -c {count} -i 0.2 -W 2 {dst}", ns=topo.ns[src], capture=True, check=False, timeout=60)
    m = re.search(r"(\d+) received", r.stdout)
    return int(m.group(1)) if m else 0


class Capture:
    """tshark in the inet namespace on HQ's WAN link, for packets of the LAN flows (inner addresses
    are only visible in the clear: ESP carries them encrypted between 198.51.100.1 and 203.0.113.1)."""

    def __init__(self, topo, workdir):
        self.path = os.path.join(workdir, "inet-hq-cleartext.pcap")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", topo.ns["inet"], "tshark", "-i", "inet-hq", "-n", "-q", "-w", self.path,
             "-f", "net 192.168.1.0/24 or net 192.168.2.0/24"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.time() + 10
        while not os.path.exists(self.path) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)

    def count(self):
        r = sh(f"tshark -n -r {self.path}", capture=True, check=False)
        lines = [l for l in r.stdout.splitlines() if l.strip()]
        for l in lines[:5]:
            print("  cleartext:", l)
        return len(lines)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)


def main():
    workdir = tempfile.mkdtemp(prefix="espresso-ike-s2s-")
    hq, br = config_copy(workdir, "hq"), config_copy(workdir, "branch")
    topo = Topology(BUILD, prefix="eik", workdir=workdir, hq_config=hq, branch_config=br)
    failures = []
    foreground = None

    def check(cond, what):
        print(("PASS " if cond else "FAIL ") + what, flush=True)
        if not cond:
            failures.append(what)

    try:
        topo.create()
        # The branch logs to its files and to up's stderr (daemonized: the copies go on after up returned).
        branch_stderr = os.path.join(workdir, "branch-up.stderr")
        out = espresso(topo, "gw-branch", f"up {br} --log-dir {workdir} --log-stderr 2>{branch_stderr}").stdout
        print(out.strip())
        check("and stderr" in out, "up --log-stderr says where the logs go")
        out = espresso(topo, "gw-hq", f"up {hq} --log-dir {workdir}").stdout
        print(out.strip())
        check(wait_ready(topo, "gw-hq", hq, children=2), "IKEv2 tunnels up (HQ initiates)")
        time.sleep(0.5)
        relayed = open(branch_stderr, errors="replace").read()
        dp_file = open(os.path.join(workdir, "branch-dp.log"), errors="replace").read()
        ike_file = open(os.path.join(workdir, "branch-ike.log"), errors="replace").read()
        check("espresso-ike: " in relayed and "espresso-dp: " in relayed and "Child SA" in relayed,
              "--log-stderr: both daemons' lines on up's stderr, prefixed")
        check("Child SA" in ike_file and len(dp_file) > 0, "--log-stderr: the log files are written too")

        # Remaining key lifetime (k/sec) of the IKE-negotiated Child SAs: the tunnel's rekey-time is 1h.
        text = espresso(topo, "gw-hq", f"--config {hq} show crypto ipsec sa").stdout
        secs = [int(x) for x in re.findall(r"remaining key lifetime \(k/sec\): \((?:\d+|unlimited)/(\d+)\)", text)]
        check(len(secs) >= 2 and all(2700 <= x <= 3600 for x in secs) and "keying: IKE branch/" in text
              and "(rekey-time 3600 s)" in text, f"show crypto ipsec sa: time lifetime from espresso-ike {secs}")
        sas = json.loads(espresso(topo, "gw-hq", f"--config {hq} --json show crypto ipsec sa").stdout)["sas"]
        check(sas and all(sa["keying"] == "ike" and sa["ike"] and sa["ike"]["rekey-time-seconds"] == 3600
                          and 0 < sa["ike"]["rekey-in-seconds"] <= 3600 for sa in sas),
              "show crypto ipsec sa --json: keying ike with rekey-in-seconds")
        check(ping(topo, "host-hq", "192.168.2.10") >= 4, "ping host-hq -> host-branch")
        check(ping(topo, "host-branch", "192.168.1.10") >= 4, "ping host-branch -> host-hq")
        status = espresso(topo, "gw-hq", f"status {hq}", check=False)
        print(status.stdout)
        check(status.returncode == 0 and "espresso-ike  running" in status.stdout and "1 IKE SA" in status.stdout,
              "espresso status: both daemons answer, one IKE SA")
        isakmp = espresso(topo, "gw-branch", f"--config {br} show crypto isakmp sa").stdout
        print(isakmp)
        check("QM_IDLE" in isakmp and "198.51.100.1" in isakmp, "branch: show crypto isakmp sa")
        reload_one_tunnel(topo, hq, check)

        # From here on a capture on HQ's internet link must never see the LAN flows in the clear.
        capture = Capture(topo, workdir)
        # `clear crypto sa` (as on a Cisco): the SAs go, the trap stays; the next packets are dropped
        # (acquire) and re-establish the tunnel.
        espresso(topo, "gw-hq", f"--config {hq} clear crypto sa")
        deadline = time.time() + 10
        while ike_sas(topo, "gw-hq", hq) and time.time() < deadline:
            time.sleep(0.2)
        check(not ike_sas(topo, "gw-hq", hq), "clear crypto sa: HQ has no SA")
        ping(topo, "host-hq", "192.168.2.10", count=10)
        check(wait_ready(topo, "gw-hq", hq, timeout=20), "traffic re-established the tunnel (acquire)")
        check(ping(topo, "host-hq", "192.168.2.10") >= 4, "ping after the traffic-triggered re-establishment")

        # Kill the branch's IKE daemon without a word: HQ's DPD notices, clears and keeps retrying.
        pids = dict(l.split() for l in open("/run/espresso/branch.pids").read().splitlines())
        os.kill(int(pids["espresso-ike"]), signal.SIGKILL)
        deadline = time.time() + 40
        while time.time() < deadline:
            r = espresso(topo, "gw-hq", f"--config {hq} show crypto ike failures", check=False).stdout
            if "DPD" in r:
                break
            time.sleep(0.5)
        print(r)
        check("DPD" in r, "HQ's DPD detected the dead peer")
        check(ping(topo, "host-hq", "192.168.2.10", count=10) == 0, "no reply while the peer is down")
        capture.stop()
        check(capture.count() == 0, "no LAN packet left HQ in the clear while the tunnel was down")
        # Restart the branch gateway, now in the foreground with its logs on stderr only; HQ (dpd action
        # restart) keeps initiating until it answers.
        espresso(topo, "gw-branch", f"down {br}", check=False)
        time.sleep(1)  # the stopped data plane's log relay writes its last lines
        files_before = {n: os.path.getsize(os.path.join(workdir, n)) for n in ("branch-dp.log", "branch-ike.log")}
        fg_err = open(os.path.join(workdir, "branch-foreground.stderr"), "w")
        foreground = subprocess.Popen(["ip", "netns", "exec", topo.ns["gw-branch"], CLI, "up", br, "--log-dir", workdir,
                                       "--foreground", "--no-log-files"], stdout=subprocess.PIPE, stderr=fg_err, text=True)
        check(wait_ready(topo, "gw-hq", hq, timeout=60, children=2), "tunnels re-established after the peer came back")
        check(ping(topo, "host-hq", "192.168.2.10") >= 4, "ping after re-establishment")
        check(foreground.poll() is None, "up --foreground stays in the foreground")
        st = espresso(topo, "gw-branch", f"status {br}", check=False)
        check(st.returncode == 0 and "espresso-ike  running" in st.stdout, "status sees the foreground gateway")
        foreground.send_signal(signal.SIGTERM)
        try:
            rc = foreground.wait(timeout=40)
        except subprocess.TimeoutExpired:
            rc = None
        fg_err.close()
        fg_text = open(os.path.join(workdir, "branch-foreground.stderr"), errors="replace").read()
        print(fg_text[-1500:])
        check(rc == 0, f"up --foreground exits 0 after SIGTERM (got {rc})")
        check("espresso-ike: " in fg_text and "espresso-dp: " in fg_text and "stopping gateway branch" in fg_text,
              "up --foreground: both daemons' logs on stderr, the stop announced")
        check(all(os.path.getsize(os.path.join(workdir, n)) == size for n, size in files_before.items()),
              "up --no-log-files: the log files were not written")
        st = espresso(topo, "gw-branch", f"status {br}", check=False)
        check(st.returncode != 0 and not os.path.exists("/run/espresso/branch.pids"),
              "after SIGTERM to up --foreground: the branch gateway is down, its pid file gone")

        out = espresso(topo, "gw-hq", f"down {hq}").stdout
        print(out.strip())
        st = espresso(topo, "gw-hq", f"status {hq}", check=False)
        check(st.returncode != 0, "espresso status after down: not running")
    finally:
        if foreground is not None and foreground.poll() is None:
            foreground.send_signal(signal.SIGTERM)
            try:
                foreground.wait(timeout=40)
            except subprocess.TimeoutExpired:
                foreground.kill()
        for gw, cfg in (("gw-hq", hq), ("gw-branch", br)):
            espresso(topo, gw, f"down {cfg}", check=False)
        for name in ("hq", "branch"):
            for suffix in ("-dp.log", "-ike.log"):
                path = os.path.join(workdir, name + suffix)
                if failures and os.path.exists(path):
                    print(f"--- {path} ---\n{open(path, errors='replace').read()[-4000:]}")
        topo.teardown()
    print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
