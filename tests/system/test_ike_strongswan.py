#!/usr/bin/python3
"""IKEv2 interop: espresso-ike + espresso-dp on gw-hq against strongSwan 5.9.8 (kernel-libipsec) on
gw-branch, with traffic between host-hq and host-branch through both (tests/system/ike_topology.py).

strongSwan's kernel-libipsec fakes NAT detection, so every run here also exercises NAT-T: the float
to UDP 4500 with the non-ESP marker and UDP-encapsulated ESP in espresso-dp (ORACLES.md).

Scenarios (each a fresh IKE SA on one topology):
  responder   strongSwan initiates; PSK; aes256-sha256-modp2048 / esp aes256gcm16
  initiator   espresso-ike initiates (start: immediately); ecp256 / esp aes256-sha256
  x25519      strongSwan initiates with curve25519 and aes256gcm16-prfsha256 IKE
  modp1536    strongSwan initiates with aes128-sha1-modp1536 (DH group 5; allow-legacy on our side)
  modp1024    espresso initiates with aes128-sha1-modp1024 (DH group 2, RFC 2409; allow-legacy), then a
              Child SA rekey with PFS in group 2 (esp aes128gcm16-modp1024)
  rekey       Child SA rekey (espresso initiates it, short rekey-time) under two sequence-checked UDP
              streams (udp_stream.py, after a control run without rekey): no datagram lost or duplicated
  ike_rekey   IKE SA rekeys from both ends plus Child rekeys and DPD under the streams and ping: no loss
  rekey_responder  strongSwan initiates the Child SA rekeys (espresso only responds), same streams: no loss
  rekey_packets  rekey-packets: a soft packet lifetime in espresso-dp triggers the rekeys; no loss, no
              packet reaches the hard limit, SPIs change
  (deletes both ways: strongSwan deletes in `responder`, espresso in `initiator`)
  operator    `espresso initiate`, `espresso debug ike` (text and --json), `espresso clear crypto sa PEER`
  certs       ECDSA certificates (RFC 7427 signatures, CERT/CERTREQ), both roles; an untrusted CA refused
  certs_rsa   RSA certificates, espresso initiates
  real_nat    an nftables masquerading NAT in front of HQ: NAT-D, float, encapsulation, keepalives
  on_traffic  start: on-traffic: a trap policy in espresso-dp, acquire, the tunnel comes up on demand
  mismatch    PSK and DH group mismatch: `failures` names the cause
  fragmentation  RFC 7383 with RSA 4096 certificates (IKE_AUTH > 2 KB) through a router that drops IP
               fragments, strongSwan initiates: both IKE_AUTH messages cross only as SKF fragments
  fragmentation_initiator  the same with espresso initiating; first with `fragmentation: no` on espresso,
               which must fail there (the IP fragments are dropped), proving the path
  fragmentation_pmtud  RFC 7383 §2.5.2: espresso initiates (fragment-size at its default 1280) through that
               router, which also drops every UDP datagram above 1000 bytes towards the branch without
               ICMP: espresso must lower its fragment size to 1000 and keep it
  dpd_killed_peer  strongSwan killed with SIGKILL: DPD clears the SAs (charon restarted afterwards)
  ike_killed  espresso-ike killed with SIGKILL with the tunnel up (its Child SAs and trap policy stay in
              espresso-dp, tagged owner espresso-ike), then restarted: it flushes what it owned before
              installing (flush-owner, logged with the counts), so espresso-dp ends with exactly one
              Child SA pair (the new IKE SA's) and one trap policy; an SA an operator added over the
              control socket (a version 1 client, no owner) stays; pings cross both ways
Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_ike_strongswan.py [scenario ...]
"""
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ike_topology import IkeTopology, control_socket_of, site_conf, trimmed_hq_config  # noqa: E402
from strongswan import make_pki  # noqa: E402
from topology import sh  # noqa: E402
from udp_stream import UdpStream, assert_lossless  # noqa: E402

BUILD = os.path.abspath(os.environ.get("ESPRESSO_BUILD", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../build")))
IKE_BIN = os.path.join(BUILD, "controlplane", "espresso-ike")
CLI = os.path.join(BUILD, "controlplane", "espresso")


def ike_yaml(proposals="aes256-sha256-modp2048", esp="aes256gcm16", start="none", rekey="0", secret="Sup3rS3cr3tK3y",
             dpd="0", ike_rekey="0", auth=None, fast_retransmit=False, extra_peer="", extra_tunnel="",
             extra_ike="", remote="203.0.113.1"):
    """extra_ike: lines for the ike: section itself (indented two spaces), e.g. "  nat-keepalive: 2\n"."""
    auth = auth or f'{{ method: psk, secret: "{secret}" }}'
    retransmit = "  retransmit-timeout-ms: 300\n  retransmit-tries: 2\n" if fast_retransmit else ""
    return f"""ike:
{retransmit}{extra_ike}  peers:
    - name: branch
      local-address: 198.51.100.1
      remote-address: {remote}
      proposals: [{proposals}]
      auth: {auth}
      rekey-time: {ike_rekey}
      dpd: {{ interval: {dpd}, action: clear }}
{extra_peer}      tunnels:
        - name: lan
          local-ts: [192.168.1.0/24]
          remote-ts: [192.168.2.0/24]
          esp-proposals: [{esp}]
          rekey-time: {rekey}
          start: {start}
{extra_tunnel}"""


class Run:
    def __init__(self, topo, workdir):
        self.topo = topo
        self.dir = workdir
        self.n = 0

    def ike_socket(self):
        return os.path.join(self.dir, "hq-ike.sock")

    def start_ike(self, yaml_text):
        """(Re)writes the gw-hq config's ike: section and starts espresso-ike on it."""
        self.n += 1
        cfg = trimmed_hq_config(self.dir, ike_yaml=yaml_text)
        self.topo.hq_config = cfg
        name = f"ike{self.n}"
        self.topo.start_process(name, "gw-hq", [IKE_BIN, "--config", cfg, "--log-level", "debug", "--retransmit-ms", "500"],
                                wait_for="espresso-ike ready", timeout=30)
        self.ike = name
        return name

    def stop_ike(self):
        """SIGTERM; espresso-ike deletes its IKE SAs and removes its SAs from the data plane and exits 0.
        Anything else (a hang SIGKILLed after 10 s, a crash) fails the scenario here."""
        t0 = time.time()
        rc = self.topo.stop_process(self.ike)
        assert rc == 0, (f"espresso-ike did not shut down cleanly on SIGTERM: exit status {rc} after "
                         f"{time.time() - t0:.1f} s")
        return rc

    def ike_request(self, op, args=None):
        out = sh(f"{CLI} --ike-socket {self.ike_socket()} --json raw-ike {op} '{json.dumps(args or {})}'",
                 capture=True, check=False)
        return out

    def cli(self, args, check=True):
        return sh(f"{CLI} --config {self.topo.hq_config} {args}", capture=True, check=check).stdout


def ping(topo, src, dst, count=5, interval=0.2, timeout=30):
    r = sh(f"ping -c {count} -i {interval} -W 2 {dst}", ns=topo.ns[src], capture=True, check=False, timeout=timeout)
    m = re.search(r"(\d+) received", r.stdout)
    return int(m.group(1)) if m else 0


def wait(predicate, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def ike_sas(run):
    out = run.cli("show crypto ikev2 sa --json", check=False)
    try:
        return json.loads(out)["ike-sas"]
    except (ValueError, KeyError):
        return []


def ready_sa(run):
    for sa in ike_sas(run):
        if sa["state"] == "READY" and sa["children"]:
            return sa
    return None


def ipsec_counters(run):
    sas = json.loads(run.cli("show crypto ipsec sa --json"))
    return sas


def scenario_responder(topo, run, br):
    run.start_ike(ike_yaml())
    br.load(site_conf("gw-branch"))
    br.initiate("net", timeout=30)
    child = br.wait_for_child("net", timeout=30)
    assert child.get("encap") == "yes", f"kernel-libipsec should encapsulate: {child}"
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    assert sa["role"] == "responder", sa
    assert sa["nat"]["remote-behind-nat"], sa
    assert "AES_CBC_256" in sa["proposal"] and "MODP_2048" in sa["proposal"], sa
    c = sa["children"][0]
    assert c["udp-encapsulation"] and "AES_GCM_16_256" in c["transforms"], c
    # strongSwan's SPIs are ours mirrored.
    assert int(c["spi-in"], 16) == int(child["spi-out"], 16), (c, child)
    assert int(c["spi-out"], 16) == int(child["spi-in"], 16), (c, child)
    got = ping(topo, "host-hq", "192.168.2.10", count=10)
    assert got >= 9, f"ping host-hq -> host-branch: {got}/10"
    got = ping(topo, "host-branch", "192.168.1.10", count=10)
    assert got >= 9, f"ping host-branch -> host-hq: {got}/10"
    text = run.cli("show crypto ipsec sa")
    m = re.search(r"#pkts encaps: (\d+)", text)
    assert m and int(m.group(1)) >= 18, text
    m = re.search(r"#pkts decaps: (\d+)", text)
    assert m and int(m.group(1)) >= 18, text
    isakmp = run.cli("show crypto isakmp sa")
    assert "QM_IDLE" in isakmp and "203.0.113.1" in isakmp, isakmp
    print(isakmp + run.cli("show crypto ikev2 sa") + run.cli("show crypto session") + text, flush=True)
    stats = json.loads(run.cli("show crypto ikev2 stats --json"))
    assert stats["received"] >= 2 and stats["sent"] >= 2 and stats["malformed"] == 0, stats
    assert stats["timers-late-100ms"] == 0, stats  # nothing here is expensive enough to delay a timer
    print(run.cli("show crypto ikev2 stats"), flush=True)
    br.terminate(ike="s2s", check=False)
    wait(lambda: not ike_sas(run), 15, "espresso to drop the IKE SA after strongSwan's delete")
    assert "No SAs" in run.cli("show crypto ipsec sa") or not json.loads(run.cli("show crypto ipsec sa --json")).get("sas"), \
        "data plane still holds SAs after delete"
    run.stop_ike()


def scenario_initiator(topo, run, br):
    br.load(site_conf("gw-branch", proposals="aes128-sha256-ecp256", esp_proposals="aes256-sha256", start_action="none"))
    run.start_ike(ike_yaml(proposals="aes128-sha256-ecp256", esp="aes256-sha256", start="immediately"))
    child = br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    assert sa["role"] == "initiator", sa
    assert "ECP_256" in sa["proposal"], sa
    assert "HMAC_SHA2_256_128" in sa["children"][0]["transforms"], sa
    assert ping(topo, "host-hq", "192.168.2.10", count=10) >= 9
    assert ping(topo, "host-branch", "192.168.1.10", count=10) >= 9
    # espresso deletes: strongSwan must drop its SAs.
    out = run.cli("clear crypto sa")
    wait(lambda: not br.list_sas(), 15, "strongSwan to drop the IKE SA after espresso's delete")
    run.stop_ike()


def scenario_operator(topo, run, br):
    """The operator's commands through the CLI: `espresso initiate PEER/TUNNEL` brings up a start: none
    tunnel, `espresso debug ike` (text and --json) follows the negotiation as it happens, and
    `espresso clear crypto sa PEER-ADDRESS` deletes that peer's IKE SA (strongSwan drops it too)."""
    br.load(site_conf("gw-branch", start_action="none"))
    run.start_ike(ike_yaml(start="none"))
    followers = []
    for extra in ([], ["--json"]):
        followers.append(subprocess.Popen(
            ["ip", "netns", "exec", topo.ns["gw-hq"], CLI, "--config", topo.hq_config] + extra + ["debug", "ike"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True))
    try:
        time.sleep(1)  # both followers connected before anything happens
        out = run.cli("initiate branch/lan")
        assert "initiating branch/lan" in out, out
        br.wait_for_child("net", timeout=30)
        sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY after `espresso initiate`")
        assert sa["role"] == "initiator" and len(sa["children"]) == 1, sa
        assert ping(topo, "host-hq", "192.168.2.10", count=5) >= 4
        time.sleep(1)  # the followers poll every 0.3 s
    finally:
        outputs = []
        for p in followers:
            os.killpg(p.pid, signal.SIGTERM)
            outputs.append(p.communicate(timeout=10)[0])
    text, as_json = outputs
    print(f"--- espresso debug ike ---\n{text[-1500:]}", flush=True)
    assert "initiating IKE_SA_INIT to 203.0.113.1:500" in text and "IKE SA established with 203.0.113.1" in text, text
    assert re.search(r"Child SA lan installed: 192\.168\.1\.0/24 === 192\.168\.2\.0/24", text), text
    lines = [json.loads(line) for line in as_json.splitlines() if line.strip()]
    assert lines and all({"time", "level", "text"} <= set(line) for line in lines), as_json[-2000:]
    assert any("IKE SA established" in line["text"] for line in lines), as_json[-2000:]
    # clear crypto sa with a peer: by its address (another address clears nothing).
    assert "deleting 0 IKE SA(s)" in run.cli("clear crypto sa 203.0.113.99")
    assert ready_sa(run), "clear crypto sa of another address took this IKE SA down"
    assert "deleting 1 IKE SA(s)" in run.cli("clear crypto sa 203.0.113.1")
    wait(lambda: not br.list_sas(), 15, "strongSwan to drop the IKE SA after `clear crypto sa 203.0.113.1`")
    wait(lambda: not ike_sas(run), 15, "espresso to drop the IKE SA")
    run.stop_ike()


def scenario_x25519(topo, run, br):
    run.start_ike(ike_yaml(proposals="aes256gcm16-prfsha256-x25519", esp="aes128gcm16"))
    br.load(site_conf("gw-branch", proposals="aes256gcm16-prfsha256-x25519", esp_proposals="aes128gcm16"))
    br.initiate("net", timeout=30)
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    assert "CURVE_25519" in sa["proposal"] and "AES_GCM_16_256" in sa["proposal"], sa
    assert ping(topo, "host-hq", "192.168.2.10", count=5) >= 4
    br.terminate(ike="s2s", check=False)
    wait(lambda: not ike_sas(run), 15, "IKE SA gone")
    run.stop_ike()


# Sequence-numbered UDP streams (tests/system/udp_stream.py) across rekeys, both ways at once. The rate is
# one the af_packet/veth/kernel-libipsec path carries without loss when nothing rekeys: every scenario
# that uses it first runs the same streams as a control, before the first rekey is due.
STREAM_RATE = int(os.environ.get("ESPRESSO_STREAM_RATE", "1000"))


def streams(topo, seconds, rate=STREAM_RATE, port=41000):
    """Starts one stream host-hq -> host-branch and one back; returns them (call .result())."""
    return [UdpStream(topo, "host-hq", "host-branch", "192.168.2.10", port, rate, seconds, idle=1.5).start(),
            UdpStream(topo, "host-branch", "host-hq", "192.168.1.10", port + 1, rate, seconds, idle=1.5).start()]


def finish_streams(ss, what):
    try:
        rs = [s.result() for s in ss]
    finally:
        for s in ss:
            s.stop()
    print(f"{what}: " + "; ".join(f"{d}: {r['received']}/{r['sent']} received, {r['missing']} missing, "
                                  f"{r['duplicates']} duplicated, {r['reordered']} reordered"
                                  for d, r in zip(("hq->branch", "branch->hq"), rs)), flush=True)
    for d, r in zip(("host-hq -> host-branch", "host-branch -> host-hq"), rs):
        assert_lossless(r, f"{what}, {d}")
    return rs


def child_spis_during(run, seconds):
    """Polls espresso's Child SA while traffic flows; returns the distinct inbound SPIs seen in order."""
    spis = []
    end = time.time() + seconds
    while time.time() < end:
        sa = ready_sa(run)
        for c in (sa or {}).get("children", []):
            if c["spi-in"] not in spis:
                spis.append(c["spi-in"])
        time.sleep(0.3)
    return spis


def control_stream(topo, run, what):
    """The streams for 2 s before any rekey is due: the path itself must carry them loss-free."""
    log_before = run.topo.process_log(run.ike)
    finish_streams(streams(topo, 2, port=41010), f"control ({what}, no rekey)")
    log = run.topo.process_log(run.ike)[len(log_before):]
    assert "rekeying Child SA" not in log and "IKE SA rekeyed" not in log, \
        "a rekey ran during the control stream: choose longer lifetimes"


def scenario_modp1536(topo, run, br):
    # The one legacy transform implemented (allow-legacy): DH group 5, as an old ASA offers it.
    run.start_ike(ike_yaml(proposals="aes128-sha1-modp1536", esp="aes128gcm16", extra_peer="      allow-legacy: true\n"))
    br.load(site_conf("gw-branch", proposals="aes128-sha1-modp1536", esp_proposals="aes128gcm16"))
    br.initiate("net", timeout=30)
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    assert "MODP_1536" in sa["proposal"] and "AES_CBC_128" in sa["proposal"], sa
    assert ping(topo, "host-hq", "192.168.2.10", count=5) >= 4
    br.terminate(ike="s2s", check=False)
    wait(lambda: not ike_sas(run), 15, "IKE SA gone")
    run.stop_ike()


def scenario_modp1024(topo, run, br):
    # DH group 2 (RFC 2409 §6.2, legacy: allow-legacy), built from OpenSSL's RFC 2409 prime; espresso
    # sends its group 2 KE first, then rekeys the Child SA with PFS in group 2 (CREATE_CHILD_SA KE).
    br.load(site_conf("gw-branch", proposals="aes128-sha1-modp1024", esp_proposals="aes128gcm16-modp1024",
                      start_action="none"))
    run.start_ike(ike_yaml(proposals="aes128-sha1-modp1024", esp="aes128gcm16-modp1024", start="immediately",
                           rekey="6s", extra_peer="      allow-legacy: true\n"))
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    assert sa["role"] == "initiator", sa
    assert "MODP_1024" in sa["proposal"] and "AES_CBC_128" in sa["proposal"], sa
    first_spi = sa["children"][0]["spi-in"]
    assert ping(topo, "host-hq", "192.168.2.10", count=5) >= 4
    sa = wait(lambda: (lambda s: s if s and s["children"][0]["spi-in"] != first_spi else None)(ready_sa(run)), 20,
              "a Child SA rekey with PFS in group 2")
    assert "MODP_1024" in sa["children"][0]["transforms"], sa
    assert ping(topo, "host-hq", "192.168.2.10", count=5) >= 4
    br.terminate(ike="s2s", check=False)
    wait(lambda: not ike_sas(run), 15, "IKE SA gone")
    run.stop_ike()


def scenario_rekey(topo, run, br):
    """espresso initiates Child SA rekeys (rekey-time 8 s): zero loss in two sequence-checked UDP
    streams (ESPRESSO_STREAM_RATE packets/s each way) across two rekeys, after a control without one."""
    br.load(site_conf("gw-branch", start_action="none"))
    run.start_ike(ike_yaml(start="immediately", rekey="8s"))
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    first_spi = sa["children"][0]["spi-in"]
    control_stream(topo, run, "Child rekey initiator")
    # Continuous traffic across two rekeys: not one datagram lost or duplicated.
    ss = streams(topo, 15)
    spis = child_spis_during(run, 15)
    finish_streams(ss, "across espresso-initiated Child SA rekeys")
    sa = ready_sa(run)
    assert sa and sa["children"][0]["spi-in"] != first_spi, f"no rekey happened: {sa}"
    assert len(sa["children"]) == 1, sa
    log = run.topo.process_log(run.ike)
    assert log.count("rekeying Child SA") >= 2, "expected two rekeys in 20 s"
    assert len(spis) >= 2, f"the streams saw only Child SAs {spis}"
    kids = br.children("net")
    assert len([c for c in kids if c.get("state") == "INSTALLED"]) == 1, kids
    br.terminate(ike="s2s", check=False)
    run.stop_ike()


def scenario_ike_rekey(topo, run, br):
    """IKE SA rekeys from both ends (espresso every ~6 s, strongSwan every ~10 s) and a Child SA rekey
    under continuous traffic, then DPD over the newest IKE SA: no ping lost, one IKE SA at the end."""
    br.load(site_conf("gw-branch", start_action="none", rekey_time="10s", over_time="5s"))
    run.start_ike(ike_yaml(start="immediately", ike_rekey="6s", rekey="9s", dpd="2s"))
    br.wait_for_child("net", timeout=30)
    wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    ss = streams(topo, 18)
    r = sh("ping -c 90 -i 0.2 -W 2 192.168.2.10", ns=topo.ns["host-hq"], capture=True, check=False, timeout=60)
    m = re.search(r"(\d+) received", r.stdout)
    got = int(m.group(1)) if m else 0
    finish_streams(ss, "across IKE and Child SA rekeys")
    log = run.topo.process_log(run.ike)
    rekeys = log.count("IKE SA rekeyed")
    assert rekeys >= 2, f"expected at least two IKE SA rekeys in 20 s, saw {rekeys}"
    sas = [sa for sa in ike_sas(run) if sa["state"] == "READY"]
    assert len(sas) == 1 and len(sas[0]["children"]) == 1, sas
    assert len(br.list_sas()) == 1, br.list_sas()
    assert got == 90, f"lost {90 - got} of 90 pings across IKE and Child SA rekeys"
    assert "stopped answering" not in log, "DPD failed after a rekey"
    br.terminate(ike="s2s", check=False)
    run.stop_ike()


def scenario_rekey_responder(topo, run, br):
    """strongSwan initiates every Child SA rekey (its child rekey_time 5 s; espresso's rekey-time 0 =
    never): espresso is the CREATE_CHILD_SA responder. It installs the new inbound SA before it answers
    and holds the new outbound SA until strongSwan deletes the old Child SA (RFC 7296 §2.8; docs/ike.md),
    so it never sends on an SA strongSwan has not installed yet. Two sequence-checked UDP streams both
    ways lose nothing across two rekeys."""
    # life_time far above rekey_time: strongSwan must rekey (CREATE_CHILD_SA with REKEY_SA), never let
    # the SA hard-expire and recreate it (that is a delete plus a new SA: a gap by design).
    br.load(site_conf("gw-branch", start_action="none", child_rekey_time="5s", life_time="60s",
                      child_extra=[("rand_time", "0s")]))
    charon_log_start = len(br.log())
    run.start_ike(ike_yaml(start="immediately", rekey="0"))
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    first_spi = sa["children"][0]["spi-in"]
    control_stream(topo, run, "Child rekey responder")
    ss = streams(topo, 14)
    spis = child_spis_during(run, 14)
    # This used to lose a few milliseconds of host-hq -> host-branch traffic at some rekeys: espresso, as
    # CREATE_CHILD_SA responder, moved its outbound traffic to the new SA as soon as it answered, before
    # strongSwan (the initiator) had processed the answer and installed its new inbound SA. Now the new
    # outbound SA waits for strongSwan's Delete of the old Child SA (strongSwan does the same as
    # responder); with the lower SPI winning between two outbound SAs in espresso-dp, about half the
    # rekeys would show the old bug.
    finish_streams(ss, "across strongSwan-initiated Child SA rekeys")
    log = run.topo.process_log(run.ike)
    assert "rekeying Child SA" not in log, "espresso initiated a rekey: it must only respond here"
    held = log.count("(outbound held until the peer deletes the Child SA it rekeys)")
    after_delete = log.count("installed (the peer deleted the Child SA it rekeys)")
    assert held >= 2 and after_delete >= 2, \
        f"expected each new outbound SA held and installed on strongSwan's Delete: {held} held, {after_delete} installed so"
    assert len(spis) >= 3 or (len(spis) >= 2 and spis[0] != first_spi), \
        f"expected two strongSwan-initiated rekeys, espresso's inbound SPIs were {spis}"
    sa = ready_sa(run)
    assert sa and len(sa["children"]) == 1 and sa["children"][0]["spi-in"] != first_spi, sa
    kids = br.children("net")
    assert len([c for c in kids if c.get("state") == "INSTALLED"]) == 1, kids
    clog = br.log()[charon_log_start:]
    assert "rekeying CHILD_SA" in clog or "rekeying" in clog.lower(), "charon log shows no Child SA rekey"
    assert "recreate after hard expire" not in clog, "strongSwan let the Child SA hard-expire instead of rekeying"
    br.terminate(ike="s2s", check=False)
    run.stop_ike()


def scenario_stream_control(topo, run, br):
    """Diagnostic, not in the default run: the rekey scenarios' streams for 15 s over one Child SA that
    never rekeys, to tell path loss at a given ESPRESSO_STREAM_RATE from rekey loss."""
    br.load(site_conf("gw-branch", start_action="none"))
    run.start_ike(ike_yaml(start="immediately", rekey="0"))
    br.wait_for_child("net", timeout=30)
    wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    finish_streams(streams(topo, 15), "15 s control, no rekey")
    br.terminate(ike="s2s", check=False)
    run.stop_ike()


def scenario_rekey_packets(topo, run, br):
    """A soft packet lifetime from the data plane triggers the Child SA rekey (no time-based rekey on
    either side): rekey-packets 3000, so espresso-dp raises soft-expire on the outbound SA after 3000
    packets (hard limit 3300), espresso-ike rekeys; a 500 packets/s stream for 13 s crosses two such
    rekeys with no loss, no packet ever hits the hard limit, and the SPIs change."""
    br.load(site_conf("gw-branch", start_action="none"))
    run.start_ike(ike_yaml(start="immediately", rekey="0", extra_tunnel="          rekey-packets: 3000\n"))
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    first_spi = sa["children"][0]["spi-in"]
    sas = json.loads(run.cli("show crypto ipsec sa --json"))["sas"]
    out = [s for s in sas if s["direction"] == "outbound"]
    assert out and out[0]["lifetime"]["soft-packets"] == 3000 and out[0]["lifetime"]["packets"] == 3300, out
    s = UdpStream(topo, "host-hq", "host-branch", "192.168.2.10", 41020, 500, 13, idle=1.5).start()
    spis = child_spis_during(run, 13)
    try:
        r = s.result()
    finally:
        s.stop()
    print(f"packet-lifetime rekeys: {r}", flush=True)
    assert_lossless(r, "across packet-lifetime Child SA rekeys")
    log = run.topo.process_log(run.ike)
    assert log.count("rekeying Child SA") >= 2, f"expected two soft-expire rekeys for 6500 packets\n{log[-3000:]}"
    assert len(spis) >= 3, f"espresso's inbound SPIs during the stream: {spis}"
    sas = json.loads(run.cli("show crypto ipsec sa --json"))["sas"]
    expired = sum(x.get("drops", {}).get("lifetime_expired", 0) + x.get("counters", {}).get("lifetime_expired", 0)
                  for x in sas)
    assert expired == 0, f"packets hit the hard lifetime: {sas}"
    spi = lambda v: int(v, 16) if isinstance(v, str) else v  # noqa: E731
    assert all(spi(x["spi"]) != spi(first_spi) for x in sas if x["direction"] == "inbound"), sas
    text = run.cli("show crypto ipsec sa")
    print(text, flush=True)
    br.terminate(ike="s2s", check=False)
    run.stop_ike()


def scenario_certs_rsa(topo, run, br):
    """RSA 2048 certificates (RFC 7427 sha256WithRSAEncryption); espresso initiates."""
    pki = make_pki(os.path.join(run.dir, "pki-rsa"), {"hq": "198.51.100.1", "branch": "203.0.113.1"}, key="rsa")
    for p in pki.values():
        os.chmod(p["key"], 0o600)
    hq = pki["hq"]
    auth = f"{{ method: pubkey, certificate: {hq['cert']}, private-key: {hq['key']}, ca: [{hq['ca']}] }}"
    conf = site_conf("gw-branch", auth="pubkey", psk=None, cert=os.path.basename(pki["branch"]["cert"]),
                     cacert=os.path.basename(pki["branch"]["ca"]), start_action="none")
    br.load(conf, files=pki["branch"])
    run.start_ike(ike_yaml(auth=auth, start="immediately"))
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY with RSA certificates")
    assert sa["role"] == "initiator", sa
    assert ping(topo, "host-hq", "192.168.2.10", count=5) >= 4
    run.cli("clear crypto sa")
    wait(lambda: not br.list_sas(), 15, "strongSwan drops the IKE SA")
    run.stop_ike()


def scenario_real_nat(topo, run, br):
    """A real NAT: the inet router masquerades HQ's traffic towards the branch (nftables, ports
    translated). espresso-ike (behind it) detects the NAT, floats to 4500, UDP-encapsulates ESP and
    sends keepalives; strongSwan sees 203.0.113.254 with a translated port."""
    ns = topo.ns["inet"]
    sh("nft add table ip espnat", ns=ns)
    sh("nft add chain ip espnat post '{ type nat hook postrouting priority 100; }'", ns=ns)
    # "random": translate source ports too, as carrier-grade NATs do (plain masquerade keeps them).
    sh("nft add rule ip espnat post oifname inet-branch masquerade random", ns=ns)
    try:
        br.load(site_conf("gw-branch", remote_addrs="%any", start_action="none"))
        run.start_ike(ike_yaml(start="immediately"))
        sas = wait(lambda: br.list_sas(), 30, "strongSwan IKE SA through the NAT")
        br.wait_for_child("net", timeout=30)
        ike = sas[0]
        assert ike.get("remote-host") == "203.0.113.254", ike
        assert ike.get("remote-port") not in ("500", "4500"), f"the NAT should translate the port: {ike}"
        sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY behind the NAT")
        assert sa["nat"]["local-behind-nat"], sa
        assert sa["local"].endswith(":4500"), sa
        assert ping(topo, "host-hq", "192.168.2.10", count=10) >= 9
        assert ping(topo, "host-branch", "192.168.1.10", count=10) >= 9
        br.terminate(ike="s2s", check=False)
        run.stop_ike()
    finally:
        sh("nft delete table ip espnat", ns=ns, check=False)


def scenario_certs(topo, run, br):
    """ECDSA certificates from one test CA (openssl CLI), identities = the gateways' addresses in the
    certificates' subjectAltName; strongSwan initiates, then espresso; then a certificate from another
    CA is refused with the reason."""
    pki = make_pki(os.path.join(run.dir, "pki"), {"hq": "198.51.100.1", "branch": "203.0.113.1"})
    for p in pki.values():
        os.chmod(p["key"], 0o600)
    hq = pki["hq"]
    auth = f"{{ method: pubkey, certificate: {hq['cert']}, private-key: {hq['key']}, ca: [{hq['ca']}] }}"
    conf = site_conf("gw-branch", auth="pubkey", psk=None, cert=os.path.basename(pki["branch"]["cert"]),
                     cacert=os.path.basename(pki["branch"]["ca"]), proposals="aes128-sha256-ecp256", start_action="none")
    br.load(conf, files=pki["branch"])
    run.start_ike(ike_yaml(proposals="aes128-sha256-ecp256", auth=auth))
    br.initiate("net", timeout=30)
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY with certificates")
    assert sa["role"] == "responder", sa
    assert ping(topo, "host-hq", "192.168.2.10", count=5) >= 4
    br.terminate(ike="s2s", check=False)
    wait(lambda: not ike_sas(run), 15, "IKE SA gone")
    run.stop_ike()
    # espresso initiates with certificates.
    run.start_ike(ike_yaml(proposals="aes128-sha256-ecp256", auth=auth, start="immediately"))
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY (initiator, certificates)")
    assert sa["role"] == "initiator", sa
    assert ping(topo, "host-branch", "192.168.1.10", count=5) >= 4
    run.cli("clear crypto sa")
    wait(lambda: not br.list_sas(), 15, "strongSwan drops the IKE SA")
    run.stop_ike()
    # A CA we do not trust: strongSwan's certificate is refused, and the failure says why.
    other = make_pki(os.path.join(run.dir, "pki-other"), {"hq": "198.51.100.1"})
    os.chmod(other["hq"]["key"], 0o600)
    bad = f"{{ method: pubkey, certificate: {hq['cert']}, private-key: {hq['key']}, ca: [{other['hq']['ca']}] }}"
    run.start_ike(ike_yaml(proposals="aes128-sha256-ecp256", auth=bad))
    br.initiate("net", timeout=20, check=False)
    out = run.cli("show crypto ike failures")
    assert "not one of the trusted CAs" in out or "issuer" in out, out
    run.stop_ike()


def scenario_on_traffic(topo, run, br):
    """start: on-traffic: espresso-ike installs a trap policy; the first packet from host-hq raises an
    acquire in espresso-dp, espresso-ike initiates, and the pings that follow cross the tunnel. After
    `clear crypto sa` the trap catches the next packet again."""
    br.load(site_conf("gw-branch", start_action="none"))
    run.start_ike(ike_yaml(start="on-traffic"))
    log = run.topo.process_log(run.ike)
    assert "trap policy 192.168.1.0/24 === 192.168.2.0/24 installed" in log, log
    assert not ike_sas(run), "no IKE SA before traffic"
    got = ping(topo, "host-hq", "192.168.2.10", count=15)
    if not ready_sa(run):
        print(run.cli("show dataplane", check=False), run.cli("--json show crypto ipsec sa", check=False), flush=True)
        print(sh(f"{CLI} --config {run.topo.hq_config} --json show dataplane", capture=True, check=False).stdout)
    sa = wait(lambda: ready_sa(run), 15, "IKE SA brought up by traffic")
    assert sa["role"] == "initiator", sa
    assert got >= 10, f"only {got}/15 pings crossed after the on-demand tunnel came up"
    run.cli("clear crypto sa")
    wait(lambda: not ike_sas(run) and not br.list_sas(), 15, "SAs gone after clear")
    got = ping(topo, "host-hq", "192.168.2.10", count=15)
    wait(lambda: ready_sa(run), 15, "IKE SA brought up again by traffic")
    assert got >= 10, f"only {got}/15 pings crossed the second time"
    br.terminate(ike="s2s", check=False)
    run.stop_ike()


def scenario_mismatch(topo, run, br):
    run.start_ike(ike_yaml(secret="not-the-same-key"))
    br.load(site_conf("gw-branch"))
    br.initiate("net", timeout=20, check=False)
    out = run.cli("show crypto ike failures")
    assert "pre-shared key mismatch" in out, out
    assert "Fix:" in out or "fix" in out.lower(), out
    run.stop_ike()
    run.start_ike(ike_yaml(proposals="aes256-sha256-ecp384"))
    br.initiate("net", timeout=20, check=False)
    out = run.cli("show crypto ike failures")
    assert "no common DH group" in out and "MODP_2048" in out, out
    run.stop_ike()


def scenario_dpd_killed_peer(topo, run, br):
    """DPD against strongSwan killed with SIGKILL (no Delete): espresso-ike notices within
    interval + retransmissions, records the cause and removes the Child SAs from espresso-dp.
    Kills charon: run it last (a fresh charon is started for anything after it)."""
    br.load(site_conf("gw-branch", start_action="none"))
    run.start_ike(ike_yaml(start="immediately", dpd="1s", fast_retransmit=True))
    br.wait_for_child("net", timeout=30)
    wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    assert json.loads(run.cli("show crypto ipsec sa --json")).get("sas"), "no SAs in the data plane"
    os.kill(br.pid, signal.SIGKILL)
    wait(lambda: "DPD" in run.cli("show crypto ike failures"), 20, "DPD to declare strongSwan dead")
    try:
        wait(lambda: not json.loads(run.cli("show crypto ipsec sa --json")).get("sas"), 10,
             "the dead peer's SAs to leave the data plane")
    except AssertionError:
        left = json.loads(run.cli("show crypto ipsec sa --json")).get("sas", [])
        raise AssertionError("SAs left in the data plane after DPD: " + ", ".join(
            "%s 0x%08x (%s)" % (sa.get("direction"), sa.get("spi", 0), sa.get("origin")) for sa in left) +
            "\n" + run.cli("show crypto session"))
    run.cli("clear crypto sa")  # stop the keep-up retries before the next scenario
    run.stop_ike()
    topo.charons.pop("gw-branch", None)
    return topo.start_charon("gw-branch")


def dp_request(run, op, args=None, version=2):
    """One request on espresso-dp's control socket (docs/control-api.md: 4-byte big-endian length + JSON)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(control_socket_of(run.topo.hq_config))
        body = json.dumps({"version": version, "id": 1, "op": op, "args": args or {}}).encode()
        s.sendall(struct.pack("!I", len(body)) + body)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
            chunk = s.recv(65536)
            assert chunk, f"espresso-dp closed the control connection during {op}"
            data += chunk
        return json.loads(data[4:])
    finally:
        s.close()


def owned(run):
    """(SAs, explicit policies) espresso-dp holds with owner espresso-ike."""
    sas = dp_request(run, "list-sas")["result"]["sas"]
    policies = dp_request(run, "list-policies")["result"]["policies"]
    return ([sa for sa in sas if sa.get("owner") == "espresso-ike"],
            [p for p in policies if not p["implied"] and p.get("owner") == "espresso-ike"])


OPERATOR_SA = {"spi": "0x7001", "direction": "inbound", "protocol": "esp", "mode": "tunnel",
               "source": "203.0.113.99", "destination": "198.51.100.1", "encryption": "aes128gcm16",
               "key": "0x00112233445566778899aabbccddeeff01020304", "integrity": "none",
               "selectors": {"local": "10.99.1.0/24", "remote": "10.99.2.0/24"}}


def scenario_ike_killed(topo, run, br):
    """espresso-ike SIGKILLed with an established tunnel, then restarted (issue 4): what it had installed
    is flushed by owner before it installs anything, and nothing else is touched."""
    # An SA an operator (or an older tool) added: a version 1 client, so no owner.
    r = dp_request(run, "add-sa", {"sa": OPERATOR_SA}, version=1)
    assert r["ok"] and r["version"] == 1, r
    yaml_text = ike_yaml(start="immediately")
    try:
        br.load(site_conf("gw-branch", start_action="none"))
        run.start_ike(yaml_text)
        br.wait_for_child("net", timeout=30)
        first = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
        sas, traps = wait(lambda: (lambda o: o if len(o[0]) == 2 and len(o[1]) == 1 else None)(owned(run)), 10,
                          "espresso-ike's Child SA pair and trap policy, tagged, in espresso-dp")
        old_spis = {sa["spi"] for sa in sas}
        assert old_spis == {int(first["children"][0]["spi-in"], 16), int(first["children"][0]["spi-out"], 16)}, \
            (old_spis, first["children"])
        topo.stop_process(run.ike, sig=signal.SIGKILL)
        # Nobody deleted them: the stale state the restart must clean up.
        sas, traps = owned(run)
        assert len(sas) == 2 and len(traps) == 1, (sas, traps)
        killed = run.ike
        run.start_ike(yaml_text)
        log = topo.process_log(run.ike)
        assert "removed 2 SA(s) and 1 policy(ies) an earlier espresso-ike left in the data plane" in log, \
            log[-3000:]
        assert killed != run.ike
        br.wait_for_child("net", timeout=30)
        second = wait(lambda: (lambda sa: sa if sa and sa["spi-i"] != first["spi-i"] else None)(ready_sa(run)), 20,
                      "the restarted espresso-ike's IKE SA READY")
        # strongSwan drops its IKE SA with the killed daemon on INITIAL_CONTACT: one IKE SA on each side.
        wait(lambda: len(br.list_sas()) == 1, 15, "strongSwan to keep only the new IKE SA")
        sas, traps = wait(lambda: (lambda o: o if len(o[0]) == 2 and len(o[1]) == 1 else None)(owned(run)), 10,
                          "exactly one Child SA pair and one trap policy owned by espresso-ike")
        child = second["children"][0]
        assert {sa["spi"] for sa in sas} == {int(child["spi-in"], 16), int(child["spi-out"], 16)}, (sas, child)
        assert not old_spis & {sa["spi"] for sa in sas}, "an SA of the killed espresso-ike survived"
        every = dp_request(run, "list-sas")["result"]["sas"]
        operator = [sa for sa in every if sa["spi"] == 0x7001]
        assert operator and operator[0]["owner"] is None, f"the operator's SA was touched: {operator}"
        assert len(every) == 3, f"expected 2 IKE SAs and the operator's in espresso-dp: {every}"
        assert ping(topo, "host-hq", "192.168.2.10", count=5) >= 4, "ping host-hq -> host-branch after the restart"
        assert ping(topo, "host-branch", "192.168.1.10", count=5) >= 4, "ping host-branch -> host-hq after the restart"
        print(run.cli("show crypto ipsec sa"), flush=True)
        run.cli("clear crypto sa")
        wait(lambda: not br.list_sas(), 15, "strongSwan to drop the IKE SA after espresso's delete")
        run.stop_ike()
    finally:
        dp_request(run, "delete-sa", {"direction": "inbound", "spi": "0x7001"})


def scenario_reauth(topo, run, br):
    """strongSwan reauthenticates (reauth_time: a whole new IKE SA by IKE_SA_INIT + IKE_AUTH, then the
    old one deleted; charon.make_before_break = yes) under continuous ping: espresso ends with only the
    new IKE SA and one Child SA pair, and no ping is lost."""
    br.stop()
    topo.charons.pop("gw-branch", None)
    br = topo.start_charon("gw-branch", extra_conf="  make_before_break = yes\n")
    run.start_ike(ike_yaml())
    br.load(site_conf("gw-branch", reauth_time="8s", over_time="5s"))
    br.initiate("net", timeout=30)
    br.wait_for_child("net", timeout=30)
    first = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    r = sh("ping -c 75 -i 0.2 -W 2 192.168.2.10", ns=topo.ns["host-hq"], capture=True, check=False, timeout=60)
    m = re.search(r"(\d+) received", r.stdout)
    got = int(m.group(1)) if m else 0
    log = br.log()
    assert "reauthenticating IKE_SA" in log, "strongSwan did not reauthenticate within 15 s"
    sas = wait(lambda: [sa for sa in ike_sas(run) if sa["state"] == "READY"] if len(ike_sas(run)) == 1 else None, 15,
               "espresso to hold only the reauthenticated IKE SA")
    assert sas[0]["spi-r"] != first["spi-r"] and len(sas[0]["children"]) == 1, sas
    assert len(json.loads(run.cli("show crypto ipsec sa --json")).get("sas", [])) == 2, "stale Child SAs in the data plane"
    assert got == 75, f"lost {75 - got} of 75 pings across a strongSwan reauthentication"
    br.terminate(ike="s2s", check=False)
    # Only established SAs: strongSwan may have begun its next reauthentication just before the
    # terminate (reauth_time is short here); that attempt's half-open IKE SA on our side is abandoned
    # by the peer and expires on espresso's half-open timer, not on a delete.
    wait(lambda: not [sa for sa in ike_sas(run) if sa["state"] == "READY"], 15,
         "espresso to drop the IKE SA after strongSwan's delete")
    run.stop_ike()
    br.stop()
    topo.charons.pop("gw-branch", None)
    return topo.start_charon("gw-branch")


def scenario_peer_restart(topo, run, br):
    """strongSwan crashes and comes back: its new IKE SA carries INITIAL_CONTACT (RFC 7296 §2.4), and
    espresso drops the stale IKE SA and Child SAs at once instead of waiting for DPD (none here)."""
    run.start_ike(ike_yaml())
    br.load(site_conf("gw-branch"))
    br.initiate("net", timeout=30)
    br.wait_for_child("net", timeout=30)
    old = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY")
    os.kill(br.pid, signal.SIGKILL)
    topo.charons.pop("gw-branch", None)
    br = topo.start_charon("gw-branch")
    br.load(site_conf("gw-branch"))
    br.initiate("net", timeout=30)
    br.wait_for_child("net", timeout=30)
    wait(lambda: len(ike_sas(run)) == 1 and ike_sas(run)[0]["spi-r"] != old["spi-r"], 15,
         "espresso to keep only the restarted peer's new IKE SA")
    stats = json.loads(run.cli("show crypto ikev2 stats --json"))
    assert stats["initial-contact-drops"] == 1, stats
    sas = json.loads(run.cli("show crypto ipsec sa --json")).get("sas", [])
    assert len(sas) == 2, f"expected one Child SA pair in the data plane, got {len(sas)}"
    got = ping(topo, "host-hq", "192.168.2.10", count=5)
    assert got >= 4, f"ping host-hq -> host-branch after the peer restart: {got}/5"
    br.terminate(ike="s2s", check=False)
    wait(lambda: not ike_sas(run), 15, "espresso to drop the IKE SA after strongSwan's delete")
    run.stop_ike()
    return br


# ---- RFC 7383 ------------------------------------------------------------------------------------------

class FragmentDropper:
    """nftables on the inet router: drop every IP fragment (MF set or a fragment offset) before conntrack
    could reassemble it (prerouting, priority -500 < defrag's -400), counted. A path like this (a
    firewall that drops fragments) is why RFC 7383 exists: only IKE fragmentation gets IKE_AUTH through."""

    def __init__(self, topo):
        self.ns = topo.ns["inet"]

    def __enter__(self):
        sh("nft add table ip espfrag", ns=self.ns)
        sh("nft add chain ip espfrag pre '{ type filter hook prerouting priority -500; }'", ns=self.ns)
        sh("nft add rule ip espfrag pre 'ip frag-off & 0x3fff != 0' counter drop", ns=self.ns)
        return self

    def dropped(self):
        out = sh("nft list chain ip espfrag pre", ns=self.ns, capture=True).stdout
        m = re.search(r"counter packets (\d+)", out)
        return int(m.group(1)) if m else 0

    def __exit__(self, *exc):
        sh("nft delete table ip espfrag", ns=self.ns, check=False)


def ike_counters(run):
    out = run.cli("show crypto ike counters --json", check=False)
    try:
        return json.loads(out)
    except ValueError:
        return {}


def capture_ike(topo, run, name):
    """tshark on the router's branch side; returns a stop() that yields (src, dst, payload types, frag
    numbers) per IKE datagram."""
    path = os.path.join(run.dir, f"{name}.pcap")
    topo.start_process(name, "inet", ["tshark", "-n", "-i", "inet-branch", "-f", "udp port 500 or udp port 4500",
                                      "-w", path], wait_for="Capturing on", timeout=20)

    def stop():
        time.sleep(0.5)
        topo.stop_process(name)
        out = sh(f"tshark -n -r {path} -Y isakmp -T fields -E separator=/t -e ip.src -e ip.dst "
                 "-e isakmp.exchangetype -e isakmp.typepayload -e isakmp.frag.number -e isakmp.frag.total",
                 capture=True, check=False).stdout
        rows = []
        for line in out.splitlines():
            f = (line.split("\t") + [""] * 6)[:6]
            rows.append({"src": f[0], "dst": f[1], "exchange": f[2], "payloads": f[3].split(","),
                         "number": f[4], "total": f[5]})
        return rows
    return stop


def clear_strongswan(br):
    """Every IKE SA on strongSwan, half-open ones too (those have no connection name yet, so
    terminate --ike s2s misses them), terminated by unique id."""
    for sa in br.list_sas():
        br.swanctl("--terminate", "--ike-id", sa["uniqueid"], "--force", check=False)
    wait(lambda: not br.list_sas(), 15, "strongSwan without IKE SAs")


def rsa4096_auth(run):
    pki = make_pki(os.path.join(run.dir, "pki-rsa4096"), {"hq": "198.51.100.1", "branch": "203.0.113.1"},
                   key="rsa", rsa_bits=4096)
    for p in pki.values():
        os.chmod(p["key"], 0o600)
    hq = pki["hq"]
    auth = f"{{ method: pubkey, certificate: {hq['cert']}, private-key: {hq['key']}, ca: [{hq['ca']}] }}"
    conf = dict(auth="pubkey", psk=None, cert=os.path.basename(pki["branch"]["cert"]),
                cacert=os.path.basename(pki["branch"]["ca"]), fragmentation="yes")
    return pki, auth, conf


def check_fragmented_ike_auth(run, rows, dropper, before):
    """Both IKE_AUTH messages crossed as SKF (payload 53) from both addresses, no IP fragment was
    needed, and espresso's counters say it sent and reassembled fragments."""
    skf = [r for r in rows if "53" in r["payloads"] and r["exchange"] == "35"]
    from_hq = [r for r in skf if r["src"] == "198.51.100.1"]
    from_branch = [r for r in skf if r["src"] == "203.0.113.1"]
    assert len(from_hq) >= 2 and len(from_branch) >= 2, f"expected SKF datagrams both ways: {rows}"
    assert {r["number"] for r in from_hq} >= {"1", "2"}, from_hq
    sk_auth = [r for r in rows if r["exchange"] == "35" and "46" in r["payloads"]]
    assert not sk_auth, f"an unfragmented IKE_AUTH crossed: {sk_auth}"
    assert dropper.dropped() == before, f"{dropper.dropped() - before} IP fragments were needed and dropped"
    c = ike_counters(run).get("fragments", {})
    assert c.get("messages-sent", 0) >= 1 and c.get("sent", 0) >= 2, c
    assert c.get("reassembled", 0) >= 1 and c.get("received", 0) >= 2, c
    assert c.get("invalid", 0) == 0 and c.get("not-negotiated", 0) == 0, c
    print(run.cli("show crypto ike counters"), flush=True)


def scenario_fragmentation(topo, run, br):
    """strongSwan initiates with RSA 4096 certificates through a router that drops IP fragments."""
    pki, auth, conf = rsa4096_auth(run)
    with FragmentDropper(topo) as dropper:
        br.load(site_conf("gw-branch", start_action="none", **conf), files=pki["branch"])
        run.start_ike(ike_yaml(auth=auth))
        stop = capture_ike(topo, run, "tshark-frag")
        before = dropper.dropped()
        br.initiate("net", timeout=30)
        br.wait_for_child("net", timeout=30)
        sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY (fragmented IKE_AUTH, responder)")
        assert sa["role"] == "responder" and sa["fragmentation"], sa
        assert ping(topo, "host-hq", "192.168.2.10", count=5) >= 4
        rows = stop()
        check_fragmented_ike_auth(run, rows, dropper, before)
        log = topo.process_log(run.ike)
        assert "reassembled IKE_AUTH request 1" in log and "as " in log and "fragments" in log, log[-3000:]
        br.terminate(ike="s2s", check=False)
        wait(lambda: not ike_sas(run), 15, "IKE SA gone")
        run.stop_ike()


def scenario_fragmentation_initiator(topo, run, br):
    """espresso initiates with RSA 4096 certificates through a router that drops IP fragments: with
    `fragmentation: no` IKE_AUTH cannot cross (the control), with the default it does, as SKF."""
    pki, auth, conf = rsa4096_auth(run)
    with FragmentDropper(topo) as dropper:
        br.load(site_conf("gw-branch", start_action="none", **conf), files=pki["branch"])
        before = dropper.dropped()
        run.start_ike(ike_yaml(auth=auth, start="immediately", fast_retransmit=True,
                               extra_peer="      fragmentation: no\n"))
        wait(lambda: "did not answer IKE_AUTH" in run.cli("show crypto ike failures"), 30,
             "IKE_AUTH to fail without IKE fragmentation")
        assert dropper.dropped() > before, "the router dropped no IP fragments: the control proves nothing"
        assert ike_counters(run).get("fragments", {}).get("sent", 0) == 0
        run.cli("clear crypto sa")
        run.stop_ike()
        clear_strongswan(br)  # the control's half-open IKE SAs (their IKE_AUTH never arrived)
        stop = capture_ike(topo, run, "tshark-frag-i")
        before = dropper.dropped()
        run.start_ike(ike_yaml(auth=auth, start="immediately"))
        br.wait_for_child("net", timeout=30)
        sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY (fragmented IKE_AUTH, initiator)")
        assert sa["role"] == "initiator" and sa["fragmentation"], sa
        assert ping(topo, "host-branch", "192.168.1.10", count=5) >= 4
        rows = stop()
        check_fragmented_ike_auth(run, rows, dropper, before)
        run.cli("clear crypto sa")
        wait(lambda: not br.list_sas(), 15, "strongSwan drops the IKE SA")
        run.stop_ike()


def scenario_fragmentation_pmtud(topo, run, br):
    """RFC 7383 §2.5.2 path MTU discovery: espresso initiates with RSA 4096 certificates, fragment-size
    left at its default 1280, through a router that drops IP fragments and, towards the branch, every
    UDP datagram above 1000 bytes without an ICMP error (a PMTU black hole). Only lowering the fragment
    size gets IKE_AUTH across: espresso's 1280-byte fragments are dropped (counted), the retransmission
    goes out as 1000-byte fragments, and the IKE SA keeps that size."""
    pki, auth, conf = rsa4096_auth(run)
    ns = topo.ns["inet"]
    with FragmentDropper(topo):
        # In the FragmentDropper's table, so it goes with it.
        sh("nft add chain ip espfrag bigudp '{ type filter hook forward priority 0; }'", ns=ns)
        sh("nft add rule ip espfrag bigudp 'oifname inet-branch meta l4proto udp ip length > 1000 counter drop'", ns=ns)
        br.load(site_conf("gw-branch", start_action="none", **conf), files=pki["branch"])
        run.start_ike(ike_yaml(auth=auth, start="immediately"))
        br.wait_for_child("net", timeout=30)
        sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY after path MTU discovery")
        out = sh("nft list chain ip espfrag bigudp", ns=ns, capture=True).stdout
        m = re.search(r"counter packets (\d+)", out)
        black_holed = int(m.group(1)) if m else 0
        assert black_holed >= 2, f"the black hole dropped {black_holed} datagrams: the path proves nothing\n{out}"
        assert sa["role"] == "initiator" and sa["fragmentation"], sa
        assert sa["fragment-size"] == 1000, f"expected the IKE SA to keep 1000 bytes: {sa}"
        c = ike_counters(run).get("fragments", {})
        assert c.get("pmtu-lowered", 0) >= 1, c
        log = topo.process_log(run.ike)
        assert "path MTU discovery (RFC 7383 §2.5.2) lowers the fragment size to 1000 bytes" in log, log[-3000:]
        assert ping(topo, "host-hq", "192.168.2.10", count=5) >= 4
        print(run.cli("show crypto ike counters"), flush=True)
        run.cli("clear crypto sa")
        wait(lambda: not br.list_sas(), 15, "strongSwan drops the IKE SA")
        run.stop_ike()


SCENARIOS = {"responder": scenario_responder, "initiator": scenario_initiator, "x25519": scenario_x25519,
             "modp1536": scenario_modp1536, "modp1024": scenario_modp1024,
             "rekey": scenario_rekey, "ike_rekey": scenario_ike_rekey,
             "rekey_responder": scenario_rekey_responder, "rekey_packets": scenario_rekey_packets,
             "certs": scenario_certs,
             "certs_rsa": scenario_certs_rsa, "real_nat": scenario_real_nat, "operator": scenario_operator,
             "on_traffic": scenario_on_traffic, "fragmentation": scenario_fragmentation,
             "fragmentation_initiator": scenario_fragmentation_initiator,
             "fragmentation_pmtud": scenario_fragmentation_pmtud,
             "ike_killed": scenario_ike_killed,
             "mismatch": scenario_mismatch, "dpd_killed_peer": scenario_dpd_killed_peer,
             "peer_restart": scenario_peer_restart, "reauth": scenario_reauth}


# Run only when named on the command line: a diagnostic, not a check (docs/testing.md).
EXTRA_SCENARIOS = {"stream_control": scenario_stream_control}


def leftover_sas(topo):
    """The SAs espresso-ike left in the data plane (each scenario ends with espresso-ike stopped, which
    deletes its SAs; a crash would leave them)."""
    out = sh(f"{CLI} --config {topo.hq_config} show crypto ipsec sa --json", capture=True, check=False).stdout
    try:
        sas = json.loads(out).get("sas", [])
    except ValueError:
        return [out]
    return ["%s 0x%08x (%s)" % (sa.get("direction"), sa.get("spi", 0), sa.get("origin")) for sa in sas]


def run_scenarios(scenarios, wanted, workdir_prefix, ns_prefix):
    """Runs the named scenarios, in order, on one topology (HQ espresso-dp + espresso-ike, a charon on
    gw-branch); each scenario may return a fresh charon. A failing scenario prints its traceback and
    both logs, and leaves a clean charon for the next. Returns the exit status."""
    workdir = tempfile.mkdtemp(prefix=workdir_prefix)
    topo = IkeTopology(BUILD, prefix=f"{ns_prefix}{os.getpid() % 1000}", workdir=workdir,
                       hq_config=trimmed_hq_config(workdir, ike_yaml=ike_yaml()))
    failed = []
    try:
        topo.create()
        topo.start_gateways()
        br = topo.start_charon("gw-branch")
        run = Run(topo, workdir)
        for name in wanted:
            t0 = time.time()
            try:
                br = scenarios[name](topo, run, br) or br
                left = leftover_sas(topo)
                assert not left, f"espresso-ike stopped, but the data plane still holds SAs: {left}"
                print(f"PASS {name} ({time.time() - t0:.1f} s)", flush=True)
            except Exception as e:  # noqa: BLE001
                failed.append(f"{name}: {type(e).__name__}: {str(e)[:600]}")
                print(f"FAIL {name}", flush=True)
                traceback.print_exc()
                if getattr(run, "ike", None):
                    print(f"--- espresso-ike log ({run.ike}) ---\n{topo.process_log(run.ike)[-6000:]}")
                print(f"--- charon log ---\n{br.log()[-4000:]}")
                for cleanup in (lambda: br.terminate(ike="s2s", check=False, force=True), run.stop_ike):
                    try:
                        cleanup()
                    except Exception:  # noqa: BLE001
                        pass
                charon = topo.charons.get("gw-branch")
                if charon is None or charon.proc is None or charon.proc.poll() is not None:
                    # The failed scenario had stopped or killed it (dpd_killed_peer's SIGKILL).
                    if charon is not None:
                        charon.stop()
                    topo.charons.pop("gw-branch", None)
                    br = topo.start_charon("gw-branch")
    finally:
        topo.teardown()
    # The failures once more at the very end, where a CI log's tail shows them.
    for line in failed:
        print(f"FAILED {line}")
    print(f"{len(wanted) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def main():
    wanted = sys.argv[1:] or list(SCENARIOS)
    SCENARIOS.update(EXTRA_SCENARIOS)
    return run_scenarios(SCENARIOS, wanted, "espresso-ike-", "iks")


if __name__ == "__main__":
    sys.exit(main())
