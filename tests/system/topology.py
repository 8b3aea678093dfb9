"""Two Espresso gateways between two LANs, in network namespaces made here and nowhere else.

    host-hq (192.168.1.10) -- [hq-lan] gw-hq [hq-wan] -- inet (router) -- [branch-wan] gw-branch [branch-lan] -- host-branch (192.168.2.10)
                               192.168.1.1     198.51.100.1   .254 | .254   203.0.113.1   192.168.2.1

Each gateway runs espresso-dp on af_packet ports; an nftables netdev ingress rule keeps the gateway
namespace's kernel off those veths (ORACLES.md caveat), so only the data plane and its TAP exception
interface answer for the gateway's addresses. Everything is torn down by namespace name and by PID.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sh(cmd, check=True, ns=None, capture=False, timeout=60):
    if ns:
        cmd = f"ip netns exec {ns} {cmd}"
    r = subprocess.run(cmd, shell=True, text=True, capture_output=capture, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {cmd}\n{r.stdout if capture else ''}{r.stderr if capture else ''}")
    return r


class Topology:
    def __init__(self, build_dir, prefix="esp", workdir=None, hq_config=None, branch_config=None):
        self.build = build_dir
        self.p = prefix
        self.ns = {k: f"{prefix}-{k}" for k in ("host-hq", "gw-hq", "inet", "gw-branch", "host-branch")}
        self.dir = workdir or tempfile.mkdtemp(prefix="espresso-topo-")
        self.hq_config = hq_config or os.path.join(ROOT, "config/examples/site-to-site-hq.yaml")
        self.branch_config = branch_config or os.path.join(ROOT, "config/examples/site-to-site-branch.yaml")
        self.procs = {}

    # -- network ---------------------------------------------------------------------------------
    def create(self):
        self.destroy_namespaces()
        for n in self.ns.values():
            sh(f"ip netns add {n}")
            sh("ip link set lo up", ns=n)
        ns = self.ns
        pairs = [  # (ns_a, if_a, ns_b, if_b)
            (ns["host-hq"], "eth0", ns["gw-hq"], "hq-lan"),
            (ns["gw-hq"], "hq-wan", ns["inet"], "inet-hq"),
            (ns["inet"], "inet-branch", ns["gw-branch"], "branch-wan"),
            (ns["gw-branch"], "branch-lan", ns["host-branch"], "eth0"),
        ]
        for a, ia, b, ib in pairs:
            sh(f"ip link add tmp-a type veth peer name tmp-b")
            sh(f"ip link set tmp-a netns {a}")
            sh(f"ip link set tmp-b netns {b}")
            sh(f"ip link set tmp-a name {ia}", ns=a)
            sh(f"ip link set tmp-b name {ib}", ns=b)
            sh(f"ip link set {ia} up", ns=a)
            sh(f"ip link set {ib} up", ns=b)
            # veth offloads would hand af_packet partial checksums; the data plane sees real packets.
            for n_, i_ in ((a, ia), (b, ib)):
                sh(f"ethtool -K {i_} tx off rx off gso off tso off gro off", ns=n_, check=False, capture=True)
        sh("ip addr add 192.168.1.10/24 dev eth0", ns=ns["host-hq"])
        sh("ip route add default via 192.168.1.1", ns=ns["host-hq"])
        sh("ip addr add 192.168.2.10/24 dev eth0", ns=ns["host-branch"])
        sh("ip route add default via 192.168.2.1", ns=ns["host-branch"])
        sh("ip addr add 198.51.100.254/24 dev inet-hq", ns=ns["inet"])
        sh("ip addr add 203.0.113.254/24 dev inet-branch", ns=ns["inet"])
        sh("sysctl -qw net.ipv4.ip_forward=1", ns=ns["inet"])
        for gw, ifs in ((ns["gw-hq"], ("hq-lan", "hq-wan")), (ns["gw-branch"], ("branch-lan", "branch-wan"))):
            sh("nft add table netdev dp", ns=gw)
            for i in ifs:
                sh(f"nft add chain netdev dp in-{i} '{{ type filter hook ingress device {i} priority 0; policy drop; }}'", ns=gw)
            # The gateway namespace's kernel must not route between the veths on its own.
            sh("sysctl -qw net.ipv4.ip_forward=0", ns=gw)

    def destroy_namespaces(self):
        for n in self.ns.values():
            sh(f"ip netns pids {n} 2>/dev/null | xargs -r kill -9", check=False)
            sh(f"ip netns del {n}", check=False, capture=True)

    # -- gateways --------------------------------------------------------------------------------
    def start_gateways(self, timeout=60):
        dp = os.path.join(self.build, "dataplane", "espresso-dp")
        for name, cfg in (("gw-hq", self.hq_config), ("gw-branch", self.branch_config)):
            log = open(os.path.join(self.dir, f"{name}.log"), "w")
            self.procs[name] = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[name], dp, "--config", cfg],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        for name in ("gw-hq", "gw-branch"):
            while "running with" not in self.log(name):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited ({self.procs[name].returncode}):\n{self.log(name)}")
                if time.time() > deadline:
                    raise RuntimeError(f"{name} did not start within {timeout}s:\n{self.log(name)}")
                time.sleep(0.2)

    def start_ike(self, timeout=30, extra_args=()):
        """Starts espresso-ike in both gateway namespaces on the gateways' config files (their `ike:`
        sections); waits until each is ready. Logs: <dir>/ike-<gw>.log."""
        ike = os.path.join(self.build, "controlplane", "espresso-ike")
        for name, cfg in (("gw-hq", self.hq_config), ("gw-branch", self.branch_config)):
            log = open(os.path.join(self.dir, f"ike-{name}.log"), "w")
            self.procs[f"ike-{name}"] = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[name], ike, "--config", cfg, *extra_args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        for name in ("gw-hq", "gw-branch"):
            while "espresso-ike ready" not in self.log(f"ike-{name}"):
                p = self.procs[f"ike-{name}"]
                if p.poll() is not None:
                    raise RuntimeError(f"espresso-ike on {name} exited ({p.returncode}):\n{self.log(f'ike-{name}')}")
                if time.time() > deadline:
                    raise RuntimeError(f"espresso-ike on {name} not ready within {timeout}s:\n{self.log(f'ike-{name}')}")
                time.sleep(0.2)

    def log(self, name):
        try:
            with open(os.path.join(self.dir, f"{name}.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop_gateways(self):
        # IKE daemons first: they delete their SAs from the data planes on the way out.
        for phase in (True, False):
            names = [n for n in self.procs if n.startswith("ike-") == phase]
            for name in names:
                p = self.procs[name]
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for name in names:
                p = self.procs[name]
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.procs = {}

    def cli(self, gateway, args, check=True):
        sock = "/run/espresso/hq.sock" if gateway == "gw-hq" else "/run/espresso/branch.sock"
        cli = os.path.join(self.build, "controlplane", "espresso")
        return sh(f"{cli} --socket {sock} {args}", check=check, capture=True).stdout

    def teardown(self):
        self.stop_gateways()
        self.destroy_namespaces()
        shutil.rmtree(self.dir, ignore_errors=True)
