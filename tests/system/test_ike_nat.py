#!/usr/bin/python3
"""NAT traversal against strongSwan 5.9.8 through a real NAT (nftables masquerade on the inet router of
tests/system/ike_topology.py), checked on the wire with tshark: RFC 3948 §4 NAT-keepalives and NAT
rebinding (RFC 7296 §2.23). espresso-ike + espresso-dp on gw-hq, charon with kernel-libipsec on
gw-branch, as in test_ike_strongswan.py.

Scenarios:
  keepalive       espresso behind the NAT, ike.nat-keepalive: 2: tshark sees 1-byte 0xFF datagrams from
                  198.51.100.1:4500 to the peer's 4500 every 2 s before the NAT, and with the NAT's
                  address and port after it; keepalives-sent counts them; traffic crosses both ways
  keepalive_busy  the same setup, but never idle (RFC 3948 §4: a keepalive only when nothing else was sent
                  within the interval): while pings make espresso-dp send ESP to the peer every 0.1 s, not
                  one keepalive in 7 s (the ESP counters of the Child SA show the activity); then with
                  dpd: 1s, an IKE INFORMATIONAL to the peer every second and no traffic: not one keepalive
                  either, while the IKE requests are on the wire
  no_nat          no NAT on our side (strongSwan's kernel-libipsec fakes one on its side): espresso sends
                  not one keepalive in 7 s, although nat-keepalive is 2 s
  peer_keepalive  strongSwan behind the NAT with charon.keep_alive = 2s: its keepalives arrive from the
                  NAT's address and espresso counts them (keepalives-received); espresso sends none
  rebind_peer     strongSwan behind the NAT, espresso not: while pings flow both ways the NAT loses its
                  mapping (conntrack flushed) and maps strongSwan to another port range; espresso must
                  follow to the new port on strongSwan's next authenticated IKE message (its DPD, 2 s)
                  and move its outbound ESP there (update-sa in espresso-dp): traffic resumes both ways,
                  seen on the wire with the new port
  rebind_self     espresso behind the NAT, its own mapping changes the same way: espresso's DPD (2 s)
                  reaches strongSwan from the new mapping and strongSwan follows; traffic resumes
Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_ike_nat.py [scenario ...]
"""
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ike_topology import site_conf  # noqa: E402
from ike_wire import WireCapture, check_traffic_on_wire, esp_rows, keepalives, spi_int  # noqa: E402
from test_ike_strongswan import ike_sas, ike_yaml, ready_sa, run_scenarios, wait  # noqa: E402
from topology import sh  # noqa: E402

HQ, BRANCH = "198.51.100.1", "203.0.113.1"
NAT_TOWARDS_BRANCH, NAT_TOWARDS_HQ = "203.0.113.254", "198.51.100.254"  # the router's address on each side


class Nat:
    """nftables masquerade on the inet router for traffic leaving by `oif`, to a source port range.
    move(): another port range and the router's conntrack table flushed, as when a NAT reboots or
    expires a mapping: the next packet of the natted side gets a new mapping."""

    def __init__(self, topo, oif, ports):
        self.ns = topo.ns["inet"]
        self.oif = oif
        self.apply(ports)

    def apply(self, ports):
        sh("nft delete table ip espnat", ns=self.ns, check=False, capture=True)  # absent: fine
        sh("nft add table ip espnat", ns=self.ns)
        sh("nft add chain ip espnat post '{ type nat hook postrouting priority 100; }'", ns=self.ns)
        sh(f"nft add rule ip espnat post oifname {self.oif} meta l4proto udp masquerade to :{ports}", ns=self.ns)
        sh(f"nft add rule ip espnat post oifname {self.oif} masquerade", ns=self.ns)
        self.ports = tuple(int(p) for p in ports.split("-"))

    def move(self, ports):
        self.apply(ports)
        # conntrack(8) (package conntrack): without the flush the old mapping would live on.
        sh("conntrack -D -p udp", ns=self.ns, check=False, capture=True)

    def in_range(self, port):
        return self.ports[0] <= int(port) <= self.ports[1]

    def close(self):
        sh("nft delete table ip espnat", ns=self.ns, check=False)
        sh("conntrack -D -p udp", ns=self.ns, check=False, capture=True)


def counters(run):
    return json.loads(run.cli("show crypto ikev2 stats --json"))


def port_of(endpoint):
    return int(endpoint.rsplit(":", 1)[1])


def check_keepalive_intervals(rows, interval, what):
    times = [r["time"] for r in rows]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps and all(interval * 0.75 <= g <= interval * 1.5 for g in gaps), \
        f"{what}: keepalives {len(rows)} at {times}, gaps {gaps}; expected one every {interval} s"


def scenario_keepalive(topo, run, br):
    nat = Nat(topo, "inet-branch", "20000-20999")
    try:
        br.load(site_conf("gw-branch", remote_addrs="%any", start_action="none"))
        run.start_ike(ike_yaml(start="immediately", extra_ike="  nat-keepalive: 2\n"))
        br.wait_for_child("net", timeout=30)
        sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY behind the NAT")
        assert sa["nat"]["local-behind-nat"] and sa["local"].endswith(":4500"), sa
        sw = br.list_sas()[0]
        assert sw["remote-host"] == NAT_TOWARDS_BRANCH and nat.in_range(sw["remote-port"]), sw
        # Idle for 7 s, one tshark on both sides of the NAT (one process, so both sides share a window;
        # two captures started one after the other saw 6 and 4). The counter is read once the capture
        # runs and again before it stops, so every keepalive it counts is inside the capture (read around
        # the capture's start-up and stop, it counted keepalives tshark could not see: 7 against 5).
        cap = WireCapture(topo, run.dir, "ka-nat", iface=["inet-hq", "inet-branch"]).start()
        before = counters(run)["keepalives-sent"]
        time.sleep(7)
        sent = counters(run)["keepalives-sent"] - before
        rows = cap.stop()
        # The addresses tell the sides apart: HQ's own before the NAT, the NAT's after it.
        rin = [r for r in rows if r["src"] != NAT_TOWARDS_BRANCH]
        ka_in = keepalives(rows, src=HQ, dst=BRANCH)
        ka_out = keepalives(rows, src=NAT_TOWARDS_BRANCH, dst=BRANCH)
        print(f"keepalives before the NAT: {[(round(r['time'], 2), r['sport'], r['dport']) for r in ka_in]}; "
              f"after: {[(round(r['time'], 2), r['sport'], r['dport']) for r in ka_out]}", flush=True)
        assert len(ka_in) >= 3, f"expected 3 or 4 keepalives in 7 s from {HQ}: {rin}"
        assert all(r["sport"] == 4500 and r["dport"] == 4500 and r["len"] == 1 for r in ka_in), ka_in
        check_keepalive_intervals(ka_in, 2, "before the NAT")
        # A keepalive on its way through the NAT as the capture stops is seen on one side only.
        assert abs(len(ka_out) - len(ka_in)) <= 1 and all(r["sport"] == int(sw["remote-port"]) and r["dport"] == 4500
                                                 for r in ka_out), f"after the NAT: {ka_out}"
        # The capture spans the counted window and may hold one more keepalive at each end.
        assert len(ka_in) - 2 <= sent <= len(ka_in), f"keepalives-sent grew by {sent}, tshark saw {len(ka_in)}"
        check_traffic_on_wire(topo, run.dir, "ka-traffic", ready_sa(run)["children"][0])
        print(run.cli("show crypto ikev2 sa") + run.cli("show crypto ikev2 stats"), flush=True)
        run.cli("clear crypto sa")
        wait(lambda: not br.list_sas(), 15, "strongSwan drops the IKE SA")
        run.stop_ike()
    finally:
        nat.close()


def scenario_keepalive_busy(topo, run, br):
    nat = Nat(topo, "inet-branch", "20000-20999")
    try:
        br.load(site_conf("gw-branch", remote_addrs="%any", start_action="none"))
        run.start_ike(ike_yaml(start="immediately", extra_ike="  nat-keepalive: 2\n"))
        br.wait_for_child("net", timeout=30)
        sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY behind the NAT")
        assert sa["nat"]["local-behind-nat"], sa
        # ESP to the peer every 0.1 s (echo requests out, replies in): no keepalive is due. 150 pings
        # last 15 s, well past the capture's end at 8 s (75, as before, ran out at 7.5 s, and the
        # keepalive that then rightly went out 2 s later was the "unexplained" one).
        pings = Pinger(topo, "host-hq", "192.168.2.10", 150)
        time.sleep(1)
        cap = WireCapture(topo, run.dir, "ka-busy", iface="inet-hq").start()
        before = counters(run)["keepalives-sent"]
        time.sleep(7)
        rows = cap.stop()
        sent, received = pings.result()
        ours = keepalives(rows, src=HQ)
        esp_out = esp_rows(rows, spi_int(sa["children"][0]["spi-out"]), src=HQ)
        print(f"busy: {len(esp_out)} ESP packets from {HQ}, keepalives {ours}, pings {received}/{sent}", flush=True)
        print("\n".join(l for l in topo.process_log(run.ike).splitlines() if "NAT-keepalive" in l)[-3000:], flush=True)
        assert received >= sent - 2 and len(esp_out) >= 20, (sent, received, len(esp_out))
        assert not ours, f"keepalives although ESP went to the peer every 0.1 s: {ours}"
        assert counters(run)["keepalives-sent"] == before, counters(run)
        run.cli("clear crypto sa")
        wait(lambda: not br.list_sas(), 15, "strongSwan drops the IKE SA")
        run.stop_ike()
        # IKE to the peer every second (DPD), no traffic: no keepalive is due either.
        run.start_ike(ike_yaml(start="immediately", dpd="1s", extra_ike="  nat-keepalive: 2\n"))
        br.wait_for_child("net", timeout=30)
        sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY behind the NAT (DPD 1 s)")
        cap = WireCapture(topo, run.dir, "ka-dpd", iface="inet-hq").start()
        before = counters(run)["keepalives-sent"]
        time.sleep(7)
        rows = cap.stop()
        ours = keepalives(rows, src=HQ)
        ike_out = [r for r in rows if r["src"] == HQ and r["sport"] == 4500 and r["spi"] is None and r["len"] > 1]
        print(f"DPD: {len(ike_out)} IKE messages from {HQ}, keepalives {ours}", flush=True)
        assert len(ike_out) >= 4, f"expected an IKE INFORMATIONAL about every second: {ike_out}"
        assert not ours, f"keepalives although IKE went to the peer every second: {ours}"
        assert counters(run)["keepalives-sent"] == before, counters(run)
        run.cli("clear crypto sa")
        wait(lambda: not br.list_sas(), 15, "strongSwan drops the IKE SA")
        run.stop_ike()
    finally:
        nat.close()


def scenario_no_nat(topo, run, br):
    br.load(site_conf("gw-branch", start_action="none"))
    run.start_ike(ike_yaml(start="immediately", extra_ike="  nat-keepalive: 2\n"))
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    # kernel-libipsec may fake NAT-D for strongSwan's own address; ours is true, so we are not behind one.
    assert not sa["nat"]["local-behind-nat"], sa
    cap = WireCapture(topo, run.dir, "nonat", iface="inet-hq").start()
    time.sleep(7)
    rows = cap.stop()
    ours = keepalives(rows, src=HQ)
    assert not ours, f"espresso sent NAT-keepalives without being behind a NAT: {ours}"
    assert counters(run)["keepalives-sent"] == 0, counters(run)
    check_traffic_on_wire(topo, run.dir, "nonat-traffic", sa["children"][0])
    run.cli("clear crypto sa")
    wait(lambda: not br.list_sas(), 15, "strongSwan drops the IKE SA")
    run.stop_ike()


def peer_behind_nat(topo, run, br, dpd_delay=None):
    """strongSwan behind the NAT (its traffic to HQ masqueraded to 20000-20999), espresso responder for
    any address; returns (nat, espresso's SA)."""
    nat = Nat(topo, "inet-hq", "20000-20999")
    run.start_ike(ike_yaml(remote="any", extra_ike="  nat-keepalive: 2\n",
                           extra_peer=f"      remote-id: {BRANCH}\n"))
    br.load(site_conf("gw-branch", start_action="none", dpd_delay=dpd_delay))
    br.initiate("net", timeout=30)
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY with the peer behind the NAT")
    host, port = sa["remote"].rsplit(":", 1)
    assert host == NAT_TOWARDS_HQ and nat.in_range(port), sa
    assert sa["nat"]["remote-behind-nat"] and not sa["nat"]["local-behind-nat"], sa
    return nat, sa


def scenario_peer_keepalive(topo, run, br):
    br.stop()
    topo.charons.pop("gw-branch", None)
    br = topo.start_charon("gw-branch", extra_conf="  keep_alive = 2s\n")
    nat = None
    try:
        nat, sa = peer_behind_nat(topo, run, br)
        # The counter's window inside the capture's, as in scenario_keepalive.
        cap = WireCapture(topo, run.dir, "peer-ka", iface="inet-hq").start()
        before = counters(run)["keepalives-received"]
        time.sleep(7)
        got = counters(run)["keepalives-received"] - before
        rows = cap.stop()
        theirs = keepalives(rows, src=NAT_TOWARDS_HQ, dst=HQ)
        print(f"strongSwan's keepalives on the wire: {[(round(r['time'], 2), r['sport']) for r in theirs]}", flush=True)
        assert len(theirs) >= 3 and all(r["dport"] == 4500 and r["sport"] == port_of(sa["remote"]) for r in theirs), rows
        assert len(theirs) - 2 <= got <= len(theirs), f"keepalives-received grew by {got}, tshark saw {len(theirs)}"
        assert not keepalives(rows, src=HQ), "espresso is not behind a NAT: it must not send keepalives"
        check_traffic_on_wire(topo, run.dir, "peer-ka-traffic", sa["children"][0], branch_seen_as=NAT_TOWARDS_HQ)
        br.terminate(ike="s2s", check=False)
        wait(lambda: not ike_sas(run), 15, "IKE SA gone")
        run.stop_ike()
    finally:
        if nat:
            nat.close()
        br.stop()
        topo.charons.pop("gw-branch", None)
    return topo.start_charon("gw-branch")


class Pinger:
    """ping -i 0.1 in the background, one per direction; result() = (sent, received)."""

    def __init__(self, topo, src, dst, count):
        self.p = subprocess.Popen(["ip", "netns", "exec", topo.ns[src], "ping", "-n", "-i", "0.1", "-W", "1",
                                   "-c", str(count), dst], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True)

    def result(self, timeout=60):
        out, _ = self.p.communicate(timeout=timeout)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def rebinding(topo, run, br, nat, who, new_ports, sa_remote_port, what):
    """Pings both ways (0.1 s apart, 20 s); after 4 s the NAT moves to new_ports. sa_remote_port():
    the NAT port the gateway that must follow now uses for the other. Returns the seconds until it
    followed and the pings (sent, received) per direction."""
    pings = [Pinger(topo, "host-hq", "192.168.2.10", 200), Pinger(topo, "host-branch", "192.168.1.10", 200)]
    try:
        time.sleep(4)
        moved_at = time.time()
        nat.move(new_ports)
        wait(lambda: (lambda p: p is not None and nat.in_range(p))(sa_remote_port()), 20,
             f"{who} to follow the NAT's new mapping ({what})")
        followed = time.time() - moved_at
    finally:
        results = [p.result() for p in pings]
    print(f"{who} followed the new mapping after {followed:.1f} s; pings hq->branch {results[0][1]}/{results[0][0]}, "
          f"branch->hq {results[1][1]}/{results[1][0]}", flush=True)
    return followed, results


def scenario_rebind_peer(topo, run, br):
    nat = None
    try:
        nat, sa = peer_behind_nat(topo, run, br, dpd_delay="2s")
        old_port = port_of(sa["remote"])

        def espresso_port():
            s = ready_sa(run)
            return port_of(s["remote"]) if s else None
        followed, results = rebinding(topo, run, br, nat, "espresso", "30000-30999", espresso_port,
                                      "strongSwan behind the NAT")
        sa = ready_sa(run)
        new_port = port_of(sa["remote"])
        log = topo.process_log(run.ike)
        assert f"peer moved from {NAT_TOWARDS_HQ}:{old_port} to {NAT_TOWARDS_HQ}:{new_port}" in log, log[-3000:]
        # The outbound SA in espresso-dp follows too (update-sa): ESP to the new port, seen on the wire,
        # and traffic is back both ways.
        rows = check_traffic_on_wire(topo, run.dir, "rebind-peer", sa["children"][0], branch_seen_as=NAT_TOWARDS_HQ)
        out = esp_rows(rows, spi_int(sa["children"][0]["spi-out"]), src=HQ)
        assert out and all(r["dport"] == new_port for r in out), f"ESP from espresso not to port {new_port}: {out}"
        for (sent, got), d in zip(results, ("hq->branch", "branch->hq")):
            # Lost at most: the gap until strongSwan's next IKE message (DPD after 2 s without inbound
            # traffic), with margin.
            assert sent - got <= 80, f"{d}: {got}/{sent} pings across the rebinding"
        br.terminate(ike="s2s", check=False)
        wait(lambda: not ike_sas(run), 15, "IKE SA gone")
        run.stop_ike()
    finally:
        if nat:
            nat.close()


def scenario_rebind_self(topo, run, br):
    nat = Nat(topo, "inet-branch", "20000-20999")
    try:
        br.load(site_conf("gw-branch", remote_addrs="%any", start_action="none"))
        run.start_ike(ike_yaml(start="immediately", dpd="2s", extra_ike="  nat-keepalive: 2\n"))
        br.wait_for_child("net", timeout=30)
        sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY behind the NAT")
        assert sa["nat"]["local-behind-nat"], sa

        def strongswan_port():
            sas = br.list_sas()
            return int(sas[0]["remote-port"]) if sas and sas[0].get("state") == "ESTABLISHED" else None
        followed, results = rebinding(topo, run, br, nat, "strongSwan", "30000-30999", strongswan_port,
                                      "espresso behind the NAT")
        new_port = strongswan_port()
        sa = ready_sa(run)
        # On the NAT's outside: strongSwan's ESP now goes to the new mapping, and traffic is back.
        rows = check_traffic_on_wire(topo, run.dir, "rebind-self", sa["children"][0], iface="inet-branch",
                                     hq_seen_as=NAT_TOWARDS_BRANCH)
        inb = esp_rows(rows, spi_int(sa["children"][0]["spi-in"]), src=BRANCH)
        assert inb and all(r["dport"] == new_port for r in inb), f"strongSwan's ESP not to port {new_port}: {inb}"
        for (sent, got), d in zip(results, ("hq->branch", "branch->hq")):
            assert sent - got <= 80, f"{d}: {got}/{sent} pings across the rebinding"
        run.cli("clear crypto sa")
        wait(lambda: not br.list_sas(), 15, "strongSwan drops the IKE SA")
        run.stop_ike()
    finally:
        nat.close()


SCENARIOS = {"keepalive": scenario_keepalive, "keepalive_busy": scenario_keepalive_busy, "no_nat": scenario_no_nat,
             "peer_keepalive": scenario_peer_keepalive, "rebind_peer": scenario_rebind_peer,
             "rebind_self": scenario_rebind_self}


def main():
    wanted = sys.argv[1:] or list(SCENARIOS)
    return run_scenarios(SCENARIOS, wanted, "espresso-ike-nat-", "ikn")


if __name__ == "__main__":
    sys.exit(main())
