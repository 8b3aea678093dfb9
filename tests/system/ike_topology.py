"""The Topology of topology.py with strongSwan gateways, for IKE system tests.

    host-hq (192.168.1.10) -- [hq-lan] gw-hq [hq-wan] -- inet (router) -- [branch-wan] gw-branch [branch-lan] -- host-branch (192.168.2.10)
                               192.168.1.1     198.51.100.1   .254 | .254   203.0.113.1   192.168.2.1

hq="espresso"   (default): gw-hq runs espresso-dp exactly as in Topology (af_packet ports, nftables
                 ingress drop, the gateway address on the TAP dp-outside), with the caller's config;
                 gw-branch is a plain Linux router whose kernel owns branch-wan/branch-lan, and charon
                 (kernel-libipsec, install_routes) is the IKE/ESP peer there.
hq="strongswan": both gateways are kernel + charon (the oracle self-check, check_strongswan_oracle.py).

Extra processes (espresso-ike, probes) run in any namespace with start_process()/stop_process(), tracked
by PID. teardown() stops charons and processes by PID, then removes the namespaces by name.

    topo = IkeTopology(BUILD, prefix="ssw1", hq_config=trimmed_hq_config(workdir))
    topo.create(); topo.start_gateways()
    br = topo.start_charon("gw-branch")
    br.load(swanctl_conf(**BRANCH_PSK))
    topo.start_process("ike", "gw-hq", [ike_binary, "--config", cfg])
    br.initiate("net"); ...
    topo.teardown()
"""
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import ROOT, Topology, sh  # noqa: E402
from strongswan import Charon, swanctl_conf  # noqa: E402

# Addressing of the topology, for swanctl_conf(**...).
HQ = {"wan": "198.51.100.1", "lan": "192.168.1.0/24", "lan_ip": "192.168.1.1", "host": "192.168.1.10",
      "wan_if": "hq-wan", "lan_if": "hq-lan", "wan_prefix": 24, "router": "198.51.100.254"}
BRANCH = {"wan": "203.0.113.1", "lan": "192.168.2.0/24", "lan_ip": "192.168.2.1", "host": "192.168.2.10",
          "wan_if": "branch-wan", "lan_if": "branch-lan", "wan_prefix": 24, "router": "203.0.113.254"}
SIDES = {"gw-hq": HQ, "gw-branch": BRANCH}
PSK = "Sup3rS3cr3tK3y"


def site_conf(side, peer_side=None, **kw):
    """swanctl_conf() for gateway `side` ("gw-hq"/"gw-branch") towards the other one; kw overrides
    (psk defaults to PSK, proposals aes256-sha256-modp2048, esp aes256gcm16, mobike=no: kernel-libipsec's
    ipsec0 coming up is an address change, and with MOBIKE charon then sends INFORMATIONALs with
    ADD_4_ADDR in the first seconds; pass mobike=True to exercise MOBIKE)."""
    me = SIDES[side]
    other = SIDES[peer_side or ("gw-branch" if side == "gw-hq" else "gw-hq")]
    args = dict(local_addrs=me["wan"], remote_addrs=other["wan"], local_ts=me["lan"], remote_ts=other["lan"],
                psk=PSK, mobike=False)
    args.update(kw)
    return swanctl_conf(**args)


def trimmed_hq_config(workdir, source=None, ike_yaml=None, control_socket=None):
    """A copy of config/examples/site-to-site-hq.yaml WITHOUT its static SAs (IKE will install them),
    with the control socket moved into workdir (so concurrent tests never share /run/espresso/hq.sock
    or the EAL file prefix derived from it). ike_yaml: text appended as the `ike:` section (the data
    plane accepts and ignores it). Returns the path of the new file."""
    source = source or os.path.join(ROOT, "config/examples/site-to-site-hq.yaml")
    control_socket = control_socket or os.path.join(os.path.abspath(workdir), "hq.sock")
    out, skipping = [], False
    for line in open(source).read().splitlines():
        if re.match(r"^security-associations\s*:", line):
            skipping = True
            continue
        if skipping and re.match(r"^\S", line):
            skipping = False
        if skipping:
            continue
        line = re.sub(r"^(\s*control-socket:\s*)\S+", lambda m: m.group(1) + control_socket, line)
        out.append(line)
    text = "\n".join(out) + "\n"
    if ike_yaml:
        text += ike_yaml if ike_yaml.startswith("ike:") else "ike:\n" + ike_yaml
        text += "\n"
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "hq-no-sa.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def control_socket_of(config_path):
    m = re.search(r"^\s*control-socket:\s*(\S+)", open(config_path).read(), re.M)
    return m.group(1) if m else None


class IkeTopology(Topology):
    def __init__(self, build_dir, prefix="ssw", workdir=None, hq_config=None, hq="espresso"):
        if prefix.startswith("esp"):
            raise ValueError("prefix esp* belongs to the espresso-only system tests")
        if hq not in ("espresso", "strongswan"):
            raise ValueError("hq must be 'espresso' or 'strongswan'")
        super().__init__(build_dir, prefix=prefix, workdir=workdir, hq_config=hq_config)
        self.hq_mode = hq
        self.charons = {}
        self.extra = {}  # name -> (Popen, log path)

    def kernel_gateways(self):
        return ("gw-hq", "gw-branch") if self.hq_mode == "strongswan" else ("gw-branch",)

    # -- network ---------------------------------------------------------------------------------
    def create(self):
        super().create()
        for gw in self.kernel_gateways():
            n, s = self.ns[gw], SIDES[gw]
            # Undo Topology's espresso-specific set-up: the kernel owns these ports here.
            sh("nft delete table netdev dp", ns=n)
            sh(f"ip addr add {s['wan']}/{s['wan_prefix']} dev {s['wan_if']}", ns=n)
            sh(f"ip addr add {s['lan_ip']}/24 dev {s['lan_if']}", ns=n)
            sh(f"ip route add default via {s['router']}", ns=n)
            sh("sysctl -qw net.ipv4.ip_forward=1", ns=n)

    # -- gateways --------------------------------------------------------------------------------
    def start_gateways(self, timeout=60):
        """espresso-dp on gw-hq (hq="espresso" only), waiting for "running with" as Topology does."""
        if self.hq_mode != "espresso":
            return
        dp = os.path.join(self.build, "dataplane", "espresso-dp")
        log = open(os.path.join(self.dir, "gw-hq.log"), "w")
        self.procs["gw-hq"] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns["gw-hq"], dp, "--config", self.hq_config],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while "running with" not in self.log("gw-hq"):
            if self.procs["gw-hq"].poll() is not None:
                raise RuntimeError(f"gw-hq exited ({self.procs['gw-hq'].returncode}):\n{self.log('gw-hq')}")
            if time.time() > deadline:
                raise RuntimeError(f"gw-hq did not start within {timeout}s:\n{self.log('gw-hq')}")
            time.sleep(0.2)
        # The TAP (dp-outside) gets its address and routes from espresso-dp; wait for them.
        while "198.51.100.1" not in sh("ip -4 addr show dev dp-outside", ns=self.ns["gw-hq"], check=False,
                                       capture=True).stdout:
            if time.time() > deadline:
                raise RuntimeError("dp-outside never got 198.51.100.1")
            time.sleep(0.2)

    def cli(self, gateway, args, check=True):
        """The espresso CLI against gw-hq's control socket (taken from its config file)."""
        if gateway != "gw-hq" or self.hq_mode != "espresso":
            raise ValueError("only gw-hq runs espresso-dp here")
        sock = control_socket_of(self.hq_config) or "/run/espresso/hq.sock"
        cli = os.path.join(self.build, "controlplane", "espresso")
        return sh(f"{cli} --socket {sock} {args}", check=check, capture=True).stdout

    def start_charon(self, gw, **kw):
        """Start charon in a kernel gateway namespace (work dir <topo dir>/<gw>-charon); returns Charon."""
        if gw not in self.kernel_gateways():
            raise ValueError(f"{gw} is not a strongSwan gateway in this topology")
        c = Charon(self.ns[gw], os.path.join(self.dir, f"{gw}-charon"), **kw)
        self.charons[gw] = c
        return c.start()

    # -- arbitrary processes ---------------------------------------------------------------------
    def start_process(self, name, ns, argv, env=None, cwd=None, wait_for=None, timeout=30):
        """Run argv in namespace `ns` (a key of self.ns, or a full namespace name), output to
        <dir>/<name>.log, tracked by PID under `name`. wait_for: a regex to wait for in the log."""
        if name in self.extra and self.extra[name][0].poll() is None:
            raise RuntimeError(f"process {name} already running")
        netns = self.ns.get(ns, ns)
        path = os.path.join(self.dir, f"{name}.log")
        log = open(path, "w")
        full_env = dict(os.environ, **(env or {}))
        p = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=full_env, cwd=cwd, start_new_session=True)
        log.close()
        self.extra[name] = (p, path)
        if wait_for:
            deadline = time.time() + timeout
            while not re.search(wait_for, self.process_log(name)):
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}):\n{self.process_log(name)}")
                if time.time() > deadline:
                    raise RuntimeError(f"{name}: {wait_for!r} not seen within {timeout}s:\n{self.process_log(name)}")
                time.sleep(0.1)
        return p

    def process_log(self, name):
        try:
            with open(self.extra[name][1], errors="replace") as f:
                return f.read()
        except (OSError, KeyError):
            return ""

    def stop_process(self, name, sig=signal.SIGTERM, timeout=10):
        """Signal the process (its own session/process group, by PID), SIGKILL after timeout; returns
        its exit status."""
        p, _ = self.extra[name]
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            except ProcessLookupError:
                pass
        return p.wait()

    def teardown(self):
        for c in self.charons.values():
            try:
                c.stop()
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
        for name in list(self.extra):
            try:
                self.stop_process(name, timeout=5)
            except Exception:  # noqa: BLE001
                pass
        super().teardown()


# ---------------------------------------------------------------------------------------------------
# UDP probes for the IKE path (check_ike_path.py): a socket in one namespace, bound to an address.
# ---------------------------------------------------------------------------------------------------
PY_UDP_PROBE = r'''
import socket, sys, time, json
# argv: bind_ip bind_port timeout reply_hex|- [dst_ip dst_port payload_hex]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
print(json.dumps({"bound": s.getsockname()}), flush=True)
if len(sys.argv) > 5:
    s.sendto(bytes.fromhex(sys.argv[7]), (sys.argv[5], int(sys.argv[6])))
    print(json.dumps({"sent": len(sys.argv[7]) // 2}), flush=True)
s.settimeout(float(sys.argv[3]))
end = time.time() + float(sys.argv[3])
while time.time() < end:
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        break
    print(json.dumps({"from": peer, "len": len(data), "hex": data[:64].hex()}), flush=True)
    if sys.argv[4] != "-":
        s.sendto(bytes.fromhex(sys.argv[4]), peer)
        print(json.dumps({"replied": len(sys.argv[4]) // 2}), flush=True)
'''


def udp_probe(topo, name, ns, bind_ip, bind_port, timeout=10, reply=None, send_to=None, payload=b""):
    """Start a UDP socket bound to bind_ip:bind_port in namespace ns (tracked as process `name`).
    It logs every datagram as a JSON line {"from": [ip, port], "len": n, "hex": first 64 bytes}, answers
    each with `reply` (bytes) if given, and first sends `payload` to send_to=(ip, port) if given.
    Read the results with probe_events(topo, name)."""
    script = os.path.join(topo.dir, "udp_probe.py")
    with open(script, "w") as f:
        f.write(PY_UDP_PROBE)
    argv = ["/usr/bin/python3", "-u", script, bind_ip, str(bind_port), str(timeout), reply.hex() if reply else "-"]
    if send_to:
        argv += [send_to[0], str(send_to[1]), payload.hex()]
    return topo.start_process(name, ns, argv, wait_for=r'"bound"', timeout=10)


def probe_events(topo, name):
    import json
    out = []
    for line in topo.process_log(name).splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"text": line})
    return out


def wait_probe(topo, name, key="from", count=1, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ev = [e for e in probe_events(topo, name) if key in e]
        if len(ev) >= count:
            return ev
        time.sleep(0.1)
    return [e for e in probe_events(topo, name) if key in e]
