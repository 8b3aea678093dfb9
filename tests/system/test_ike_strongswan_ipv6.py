#!/usr/bin/python3
"""IKEv2 over IPv6 against strongSwan 5.9.8: espresso-dp + espresso-ike on gw-hq with an IPv6-only WAN
address, charon (kernel-libipsec) on gw-branch with an IPv6-only WAN address; an IPv6 Child SA and a
4-in-6 Child SA (IPv4 LANs) inside one IKE SA between the IPv6 addresses.

    host-hq 192.168.1.10, 2001:db8:1::10 -- gw-hq (espresso) 2001:db8:ff1::1 -- inet -- 2001:db8:ff2::1 gw-branch (charon) -- host-branch 192.168.2.10, 2001:db8:2::10

kernel-libipsec always pretends to be behind a NAT, so IKE floats to UDP 4500 and both Child SAs are
UDP-encapsulated: the internet segment must carry UDP 500/4500 over IPv6 only (no raw ESP, no IPv4).
The ESP is decrypted by tshark with the keys strongSwan derived (charon logs them at `chd` level 4;
test keys only), so the check does not rest on anything Espresso reports about itself.

Scenarios (one topology, one charon):
  responder  strongSwan initiates both Child SAs; ping -6 and ping both ways; tshark: only ESP-in-UDP
             4500 over IPv6, every ESP packet decrypted with ICV good, inner IPv4 and IPv6 seen; the
             IPv6 peer in `show crypto ikev2 sa`; strongSwan deletes, espresso follows
  initiator  espresso-ike initiates both (start: immediately); ping both ways; the same capture checks;
             espresso deletes (`clear crypto sa`), strongSwan follows
Run as root: ESPRESSO_BUILD=build flock /tmp/espresso-systest.lock /usr/bin/python3 tests/system/test_ike_strongswan_ipv6.py [scenario ...]
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ike_topology import IkeTopology  # noqa: E402
from topology import Topology, sh  # noqa: E402

BUILD = os.path.abspath(os.environ.get("ESPRESSO_BUILD", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../build")))
IKE_BIN = os.path.join(BUILD, "controlplane", "espresso-ike")
CLI = os.path.join(BUILD, "controlplane", "espresso")

HQ_WAN, BR_WAN = "2001:db8:ff1::1", "2001:db8:ff2::1"
PSK = "v6-interop-test-only-K9"


class IkeTopology6(IkeTopology):
    """ike_topology.IkeTopology with an IPv6-only internet segment: gw-hq runs espresso-dp (its veths
    without IPv6 in the namespace's kernel, as in test_site_to_site_ipv6.Topology6), gw-branch is a
    kernel router (IPv6 WAN, dual-stack LAN) for charon, the hosts are dual stack."""

    def create(self):
        Topology.create(self)  # not IkeTopology.create: that gives gw-branch IPv4 WAN addresses
        ns = self.ns
        for i in ("hq-lan", "hq-wan"):
            sh(f"sysctl -qw net.ipv6.conf.{i}.disable_ipv6=1", ns=ns["gw-hq"])
        b = ns["gw-branch"]
        sh("nft delete table netdev dp", ns=b)
        sh(f"ip -6 addr add {BR_WAN}/64 dev branch-wan nodad", ns=b)
        sh("ip addr add 192.168.2.1/24 dev branch-lan", ns=b)
        sh("ip -6 addr add 2001:db8:2::1/64 dev branch-lan nodad", ns=b)
        sh("ip -6 route add default via 2001:db8:ff2::fe", ns=b)
        sh("sysctl -qw net.ipv4.ip_forward=1", ns=b)
        sh("sysctl -qw net.ipv6.conf.all.forwarding=1", ns=b)
        for h, n in (("host-hq", 1), ("host-branch", 2)):
            sh(f"ip -6 addr add 2001:db8:{n}::10/64 dev eth0 nodad", ns=ns[h])
            sh(f"ip -6 route add default via 2001:db8:{n}::1", ns=ns[h])
        i = ns["inet"]
        # IPv6 only on the internet segment: Topology's IPv4 router addresses go (-4: the link-local
        # addresses must stay, the kernel sends no Neighbor Solicitation for forwarded packets without one).
        sh("ip -4 addr flush dev inet-hq", ns=i)
        sh("ip -4 addr flush dev inet-branch", ns=i)
        sh("ip -6 addr add 2001:db8:ff1::fe/64 dev inet-hq nodad", ns=i)
        sh("ip -6 addr add 2001:db8:ff2::fe/64 dev inet-branch nodad", ns=i)
        sh("sysctl -qw net.ipv6.conf.all.forwarding=1", ns=i)

    def start_gateways(self, timeout=60):
        dp = os.path.join(self.build, "dataplane", "espresso-dp")
        log = open(os.path.join(self.dir, "gw-hq.log"), "w")
        self.procs["gw-hq"] = subprocess.Popen(["ip", "netns", "exec", self.ns["gw-hq"], dp, "--config", self.hq_config],
                                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while True:
            if self.procs["gw-hq"].poll() is not None:
                raise RuntimeError(f"gw-hq exited ({self.procs['gw-hq'].returncode}):\n{self.log('gw-hq')}")
            out = sh("ip -6 addr show dev dp-outside", ns=self.ns["gw-hq"], check=False, capture=True).stdout
            if "running with" in self.log("gw-hq") and HQ_WAN in out and "tentative" not in out:
                return
            if time.time() > deadline:
                raise RuntimeError(f"gw-hq did not start (or dp-outside has no {HQ_WAN}):\n{self.log('gw-hq')}\n{out}")
            time.sleep(0.2)


def hq_config(workdir, ike):
    """espresso-dp + espresso-ike configuration of gw-hq; `ike` is the YAML of the `ike:` section."""
    path = os.path.join(workdir, "hq.yaml")
    with open(path, "w") as f:
        f.write(f"""dataplane:
  workers: 1
  hugepages: false
  idle: adaptive
  control-socket: {workdir}/hq.sock
interfaces:
  - name: outside
    device: "net_af_packet0,iface=hq-wan"
    address: "{HQ_WAN}/64"
    mac: "02:00:00:00:01:01"
  - name: inside
    device: "net_af_packet1,iface=hq-lan"
    address: [192.168.1.1/24, "2001:db8:1::1/64"]
routes:
  - {{ destination: "2001:db8:ff2::/64", via: "2001:db8:ff1::fe" }}
{ike}""")
    return path


def ike_yaml(start="none"):
    return f"""ike:
  peers:
    - name: branch
      local-address: "{HQ_WAN}"
      remote-address: "{BR_WAN}"
      proposals: [aes256-sha256-ecp256]
      auth: {{ method: psk, secret: "{PSK}" }}
      dpd: {{ interval: 0 }}
      tunnels:
        - name: lan6
          local-ts: ["2001:db8:1::/64"]
          remote-ts: ["2001:db8:2::/64"]
          esp-proposals: [aes256gcm16]
          start: {start}
        - name: lan4
          local-ts: [192.168.1.0/24]
          remote-ts: [192.168.2.0/24]
          esp-proposals: [aes256gcm16]
          start: {start}
"""


def branch_swanctl(start_action=None):
    """Two children in one connection (swanctl_conf() writes one): net6 (IPv6 LANs) and net4 (IPv4
    LANs), both tunnel mode over the IPv6 IKE SA."""
    start = f"        start_action = {start_action}\n" if start_action else ""
    children = ""
    for name, lts, rts in (("net6", "2001:db8:2::/64", "2001:db8:1::/64"), ("net4", "192.168.2.0/24", "192.168.1.0/24")):
        children += f"""      {name} {{
        local_ts = {lts}
        remote_ts = {rts}
        esp_proposals = aes256gcm16
{start}      }}
"""
    return f"""connections {{
  s2s {{
    version = 2
    local_addrs = {BR_WAN}
    remote_addrs = {HQ_WAN}
    proposals = aes256-sha256-ecp256
    mobike = no
    local {{
      auth = psk
      id = {BR_WAN}
    }}
    remote {{
      auth = psk
      id = {HQ_WAN}
    }}
    children {{
{children}    }}
  }}
}}
secrets {{
  ike-s2s {{
    id-a = {BR_WAN}
    id-b = {HQ_WAN}
    secret = "{PSK}"
  }}
}}
"""


# ---- strongSwan's own Child SA keys, from its log (chd level 4) ---------------------------------------

def strongswan_child_keys(log):
    """[(child name, spi_in, spi_out, initiator key hex, responder key hex)] in log order. charon logs
    "encryption initiator key => N bytes @ ..." then a hex dump per 16 bytes, for each Child SA it
    derives, and "CHILD_SA NAME{n} established with SPIs X_i Y_o" once it is installed."""
    out, keys, current, want = [], {}, None, 0
    for line in log.splitlines():
        m = re.search(r"encryption (initiator|responder) key => (\d+) bytes", line)
        if m:
            current, want = m.group(1), int(m.group(2))
            keys[current] = ""
            continue
        if current:
            m = re.search(r"\]\s.*?\s+\d+: ((?:[0-9A-F]{2} ){1,16})", line) or re.search(r"^\S*\s*\d+\[CHD\].*?\s+\d+: ((?:[0-9A-F]{2} ){1,16})", line)
            if m:
                keys[current] += m.group(1).replace(" ", "").lower()
                if len(keys[current]) >= 2 * want:
                    keys[current] = keys[current][:2 * want]
                    current = None
                continue
            current = None
        m = re.search(r"CHILD_SA (\S+)\{\d+\} established with SPIs ([0-9a-f]{8})_i ([0-9a-f]{8})_o", line)
        if m and "initiator" in keys and "responder" in keys:
            out.append((m.group(1), m.group(2), m.group(3), keys["initiator"], keys["responder"]))
            keys = {}
    return out


def tshark_esp(pcap, keys, strongswan_initiated):
    """tshark over the internet segment capture with strongSwan's keys; returns rows of
    (ipv6 src/dst list, udp ports, esp spi, icv_good, inner ip.dst, inner ipv6.dst)."""
    uat = []
    for _, spi_in, spi_out, k_i, k_r in keys:
        # The Child SA's initiator key protects what its initiator sends (RFC 7296 §2.17).
        out_key, in_key = (k_i, k_r) if strongswan_initiated else (k_r, k_i)
        for spi, key in ((spi_out, out_key), (spi_in, in_key)):
            uat += ["-o", f'uat:esp_sa:"IPv6","*","*","0x{spi}","AES-GCM with 16 octet ICV [RFC4106]","0x{key}","NULL",""']
    r = subprocess.run(["tshark", "-n", "-r", pcap, "-o", "esp.enable_encryption_decode:TRUE",
                        "-o", "esp.enable_authentication_check:TRUE", *uat,
                        "-T", "fields", "-E", "separator=/t", "-e", "ip.version", "-e", "ipv6.src", "-e", "ipv6.dst",
                        "-e", "ipv6.nxt", "-e", "udp.srcport", "-e", "udp.dstport", "-e", "esp.spi", "-e", "esp.icv_good",
                        "-e", "ip.dst", "-e", "icmpv6.type"],
                       capture_output=True, text=True, check=True)
    rows = []
    for line in r.stdout.splitlines():
        f = (line.split("\t") + [""] * 10)[:10]
        rows.append({"version": f[0], "src": f[1].split(","), "dst": f[2].split(","), "nxt": f[3].split(","),
                     "sport": f[4].split(",")[0], "dport": f[5].split(",")[0], "spi": f[6], "icv": f[7],
                     "inner4": f[8], "icmpv6": f[9]})
    return rows


# ---- helpers ------------------------------------------------------------------------------------------

def wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def ping(topo, src, dst, count=5):
    six = "-6 " if ":" in dst else ""
    r = sh(f"ping {six}-c {count} -i 0.2 -W 2 {dst}", ns=topo.ns[src], capture=True, check=False, timeout=60)
    m = re.search(r"(\d+) received", r.stdout)
    return int(m.group(1)) if m else 0


class Hq:
    def __init__(self, topo, workdir):
        self.topo, self.dir, self.n, self.cfg = topo, workdir, 0, None

    def start(self, ike):
        self.n += 1
        self.cfg = hq_config(self.dir, ike)
        self.topo.hq_config = self.cfg
        self.name = f"ike{self.n}"
        self.topo.start_process(self.name, "gw-hq", [IKE_BIN, "--config", self.cfg, "--log-level", "debug"],
                                wait_for="espresso-ike ready", timeout=30)

    def stop(self):
        return self.topo.stop_process(self.name)

    def cli(self, args, check=True):
        return sh(f"{CLI} --config {self.cfg} {args}", capture=True, check=check).stdout

    def ike_sas(self):
        try:
            return json.loads(self.cli("--json show crypto ikev2 sa", check=False))["ike-sas"]
        except (ValueError, KeyError):
            return []

    def ready(self, children=2):
        for sa in self.ike_sas():
            if sa["state"] == "READY" and len(sa["children"]) == children:
                return sa
        return None


def check_sa(hq, role):
    sa = wait(lambda: hq.ready(2), 20, "espresso IKE SA READY with two Child SAs")
    assert sa["role"] == role, sa
    assert BR_WAN in sa["remote"] and HQ_WAN in sa["local"], sa
    assert sa["remote"].endswith("4500") or sa["local"].endswith("4500"), f"no float to 4500: {sa}"
    assert all(c["udp-encapsulation"] for c in sa["children"]), sa["children"]
    text = hq.cli("show crypto ikev2 sa")
    # Listed in the IPv6 section, endpoints as [address]:port (RFC 5952 §6).
    v6 = text.split(" IPv6 Crypto IKEv2  SA", 1)
    assert len(v6) == 2 and f"[{BR_WAN}]:4500" in v6[1] and "READY" in v6[1], text
    isakmp = hq.cli("show crypto isakmp sa")
    v6 = isakmp.split("IPv6 Crypto ISAKMP SA", 1)
    assert len(v6) == 2 and BR_WAN in v6[1] and "QM_IDLE" in v6[1], isakmp
    print(text + isakmp, flush=True)
    return sa


def ping_all(topo):
    for src, dst in (("host-hq", "2001:db8:2::10"), ("host-branch", "2001:db8:1::10"),
                     ("host-hq", "192.168.2.10"), ("host-branch", "192.168.1.10")):
        got = ping(topo, src, dst, count=5)
        assert got >= 4, f"ping {src} -> {dst}: {got}/5"


def start_capture(topo, hq, name):
    pcap = os.path.join(hq.dir, f"{name}.pcap")
    topo.start_process(name, "inet", ["tshark", "-n", "-i", "inet-hq", "-w", pcap], wait_for="Capturing on", timeout=20)
    return pcap


def check_capture(topo, br, name, pcap, log_since, strongswan_initiated):
    """The internet segment carried only IPv6: IKE on UDP 500/4500 and ESP-in-UDP on 4500 (no raw ESP),
    and every ESP packet decrypts, ICV good, with the keys strongSwan derived; the inner packets are the
    hosts' IPv4 and IPv6 pings."""
    time.sleep(0.5)
    topo.stop_process(name)
    keys = strongswan_child_keys(br.log()[log_since:])
    assert len(keys) == 2, f"expected strongSwan's keys for two Child SAs, found {len(keys)}:\n{br.log()[-3000:]}"
    rows = tshark_esp(pcap, keys, strongswan_initiated)
    wan = [r for r in rows if set(r["src"][:1] + r["dst"][:1]) == {HQ_WAN, BR_WAN}]
    assert not [r for r in rows if r["version"].startswith("4")], "IPv4 on the internet segment"
    assert all(r["nxt"][0] == "17" for r in wan), {r["nxt"][0] for r in wan}  # UDP only: no raw ESP (50)
    assert {r["dport"] for r in wan} <= {"500", "4500"}, {r["dport"] for r in wan}
    esp = [r for r in wan if r["spi"]]
    assert len(esp) >= 36, f"only {len(esp)} ESP packets captured"
    assert all(r["sport"] == "4500" and r["dport"] == "4500" for r in esp), "ESP not on UDP 4500"
    bad = [r for r in esp if r["icv"] != "1"]
    assert not bad, f"{len(bad)} of {len(esp)} ESP packets failed tshark's ICV check with strongSwan's keys"
    spis = {r["spi"] for r in esp}
    assert len(spis) == 4, f"expected 4 SPIs (2 Child SAs, both ways): {spis}"
    inner6 = {a for r in esp for a in r["dst"][1:]}
    inner4 = {r["inner4"] for r in esp if r["inner4"]}
    assert {"2001:db8:1::10", "2001:db8:2::10"} <= inner6, f"decrypted inner IPv6: {inner6}"
    assert {"192.168.1.10", "192.168.2.10"} <= inner4, f"decrypted inner IPv4: {inner4}"
    print(f"tshark: {len(esp)} ESP-in-UDP/IPv6 packets, SPIs {sorted(spis)}, all ICV good with strongSwan's keys", flush=True)


def scenario_responder(topo, hq, br):
    hq.start(ike_yaml())
    br.load(branch_swanctl())
    since = len(br.log())
    pcap = start_capture(topo, hq, "tshark6r")
    br.initiate("net6", timeout=30)
    br.initiate("net4", timeout=30)
    check_sa(hq, "responder")
    ping_all(topo)
    check_capture(topo, br, "tshark6r", pcap, since, strongswan_initiated=True)
    br.terminate(ike="s2s", check=False)
    wait(lambda: not hq.ike_sas(), 15, "espresso to drop the IKE SA after strongSwan's delete")
    sas = json.loads(hq.cli("--json show crypto ipsec sa")).get("sas", [])
    assert not sas, f"data plane still holds SAs: {sas}"
    hq.stop()


def scenario_initiator(topo, hq, br):
    br.load(branch_swanctl(start_action="none"))
    since = len(br.log())
    pcap = start_capture(topo, hq, "tshark6i")
    hq.start(ike_yaml(start="immediately"))
    wait(lambda: len(br.children(state="INSTALLED")) == 2, 30, "strongSwan with two Child SAs")
    check_sa(hq, "initiator")
    ping_all(topo)
    check_capture(topo, br, "tshark6i", pcap, since, strongswan_initiated=False)
    hq.cli("clear crypto sa")
    wait(lambda: not br.list_sas(), 15, "strongSwan to drop the IKE SA after espresso's delete")
    hq.stop()


SCENARIOS = {"responder": scenario_responder, "initiator": scenario_initiator}


def main():
    wanted = sys.argv[1:] or list(SCENARIOS)
    workdir = tempfile.mkdtemp(prefix="espresso-ike6-")
    topo = IkeTopology6(BUILD, prefix=f"ik6{os.getpid() % 1000}", workdir=workdir, hq_config=hq_config(workdir, ike_yaml()))
    failed = 0
    hq = None
    try:
        topo.create()
        topo.start_gateways()
        br = topo.start_charon("gw-branch", log_levels={"chd": 4})
        hq = Hq(topo, workdir)
        for name in wanted:
            t0 = time.time()
            try:
                SCENARIOS[name](topo, hq, br)
                print(f"PASS {name} ({time.time() - t0:.1f} s)", flush=True)
            except Exception:  # noqa: BLE001 - report every scenario
                failed += 1
                print(f"FAIL {name}", flush=True)
                traceback.print_exc()
                if hq.n:
                    print(f"--- espresso-ike log ---\n{topo.process_log(hq.name)[-5000:]}")
                print(f"--- gw-hq log ---\n{topo.log('gw-hq')[-2000:]}")
                print(f"--- charon log ---\n{br.log()[-4000:]}")
                br.terminate(ike="s2s", check=False, force=True)
                if hq.n:
                    hq.stop()
    except Exception:  # noqa: BLE001
        failed += 1
        traceback.print_exc()
    finally:
        topo.teardown()
    print(f"{len(wanted) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
