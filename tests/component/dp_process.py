"""Helpers to run espresso-dp (and other DPDK processes) in network namespaces made by the caller,
read its counters through the `espresso` CLI and stop it cleanly. Everything is by PID and namespace
name; nothing here touches a process or namespace it did not create.
"""
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time

BUILD = os.environ.get("ESPRESSO_BUILD",
                       os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../build"))


def sh(cmd, check=True, ns=None, capture=True, timeout=60):
    if ns:
        cmd = f"ip netns exec {ns} {cmd}"
    r = subprocess.run(cmd, shell=True, text=True, capture_output=capture, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {cmd}\n{r.stdout or ''}{r.stderr or ''}")
    return r


def netns_add(name):
    netns_del(name)
    sh(f"ip netns add {name}")
    sh("ip link set lo up", ns=name)
    # The TAP exception interfaces would otherwise emit IPv6 router solicitations and MLD reports,
    # which the gateway (rightly) sends out of its ports: keep the captured outputs to the test's traffic.
    sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1", ns=name, check=False)
    sh("sysctl -qw net.ipv6.conf.default.disable_ipv6=1", ns=name, check=False)


def netns_del(name):
    r = sh(f"ip netns pids {name}", check=False)
    for pid in (r.stdout or "").split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    sh(f"ip netns del {name}", check=False)


class Process:
    """A background process (own session, so it can be signalled as a group) with a log file."""

    def __init__(self, argv, log_path, ns=None):
        self.log_path = log_path
        full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
        self.log_file = open(log_path, "w")
        self.proc = subprocess.Popen(full, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.PIPE, start_new_session=True)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_for(self, text, timeout):
        deadline = time.time() + timeout
        while text not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited ({self.proc.returncode}) before '{text}':\n{self.log()[-3000:]}")
            if time.time() > deadline:
                raise RuntimeError(f"no '{text}' within {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        """Signals the process group; returns the exit status (SIGKILL after `timeout`)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                try:
                    # A process SIGKILL does not end within a minute is stuck in the kernel (state D):
                    # say so instead of hanging the test until the harness's timeout.
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.log_file.close()
                    raise RuntimeError(f"pid {self.proc.pid} survived SIGKILL for 60 s: "
                                       + open(f"/proc/{self.proc.pid}/stat").read()) from None
        self.log_file.close()
        return self.proc.returncode


def dataplane_binary():
    return os.path.join(BUILD, "dataplane", "espresso-dp")


def dataplane_missing():
    """True when espresso-dp is not built, after printing the lines of a skipped test (which then
    exits 77)."""
    if os.path.exists(dataplane_binary()):
        return False
    print(f"SKIP: {dataplane_binary()} not built")
    print("0 passed, 0 failed")
    return True


def cli(socket_path, args, check=True):
    binary = os.path.join(BUILD, "controlplane", "espresso")
    r = subprocess.run([binary, "--socket", socket_path, *args.split()], capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError(f"espresso {args}: {r.returncode} {r.stdout}{r.stderr}")
    return r.stdout


def cli_json(socket_path, args):
    return json.loads(cli(socket_path, "--json " + args))


def sa_table(socket_path):
    """{(direction, spi): sa-json} from `show crypto ipsec sa`."""
    out = cli_json(socket_path, "show crypto ipsec sa")
    sas = out["sas"] if isinstance(out, dict) and "sas" in out else out
    return {(s["direction"], int(s["spi"], 0) if isinstance(s["spi"], str) else s["spi"]): s for s in sas}


def sa_count(sa, name):
    if name in sa.get("counters", {}):
        return sa["counters"][name]
    return sa.get("drops", {}).get(name, 0)


def dataplane_drops(socket_path):
    """Sum over every worker row (and the main lcore's row) of each gateway drop counter."""
    out = cli_json(socket_path, "show dataplane")
    total = {}
    for w in out["workers"]:
        for k, v in w.get("drops", {}).items():
            total[k] = total.get(k, 0) + v
    return total


def dataplane_rx(socket_path):
    out = cli_json(socket_path, "show dataplane")
    return sum(w.get("rx-packets", 0) for w in out["workers"])


def clean_run_problems(status, rx, fed, drops):
    """What went wrong with a run that should have received every one of `fed` packets, dropped none
    and exited 0 on SIGTERM: a list of problems (empty: all well). `drops`: dataplane_drops()."""
    problems = []
    if status != 0:
        problems.append(f"espresso-dp exit status {status} after SIGTERM")
    if rx != fed:
        problems.append(f"workers received {rx} packets, fed {fed}")
    dropped = {k: v for k, v in drops.items() if v}
    if dropped:
        problems.append(f"drops: {dropped}")
    return problems


def wait_stable(read, timeout=20, quiet=1.0):
    """Polls read() until its value has not changed for `quiet` seconds; returns the last value."""
    deadline = time.time() + timeout
    last = read()
    since = time.time()
    while time.time() < deadline:
        time.sleep(0.2)
        now = read()
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            return now
    return last


def shutil_rmtree(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def remove_runtime_dir(control_socket=None, file_prefix=None):
    """Removes the DPDK runtime directory a process of ours left under /var/run/dpdk (espresso-dp
    names it after its control socket: gateway.cpp eal_arguments)."""
    import shutil
    if control_socket is not None:
        file_prefix = "espresso" + control_socket.replace("/", "_")
    if file_prefix and "/" not in file_prefix and file_prefix not in (".", ".."):
        shutil.rmtree(os.path.join("/var/run/dpdk", file_prefix), ignore_errors=True)


class PcapGateway:
    """espresso-dp on net_pcap ports for one test: a work directory (workdir) for its pcaps, config,
    log and control socket, which the config names {dir}/dp.sock with dir = workdir, and a network
    namespace (ns) for the TAPs it makes, which the test creates with netns_add(gw.ns) so that it can
    set it up first. close() removes all of it, by PID and name."""

    def __init__(self, workdir_prefix, ns_prefix):
        self.workdir = tempfile.mkdtemp(prefix=workdir_prefix)
        self.ns = f"{ns_prefix}{os.getpid() % 100000}"
        self.sock = self.path("dp.sock")
        self.proc = None

    def path(self, name):
        return os.path.join(self.workdir, name)

    def start(self, config):
        """Writes the config and starts espresso-dp in the namespace; returns its Process once it runs."""
        cfg = self.path("gw.yaml")
        with open(cfg, "w") as f:
            f.write(config)
        # Kept before it is up, so that close() stops one that never comes up.
        self.proc = Process([dataplane_binary(), "--config", cfg], self.path("dp.log"), ns=self.ns)
        self.proc.wait_for("running with", 60)
        return self.proc

    def close(self, failed):
        """Stops espresso-dp (SIGKILL after 5 s: a test that got to its checks has stopped it and read
        its exit status), deletes the namespace and the DPDK runtime directory, prints the end of the
        log if the test `failed` and removes the work directory unless ESPRESSO_KEEP_TMP=1."""
        if self.proc is not None:
            self.proc.stop(timeout=5)
        netns_del(self.ns)
        remove_runtime_dir(control_socket=self.sock)
        if failed and self.proc is not None:
            print("--- espresso-dp log ---\n" + self.proc.log()[-3000:])
        if os.environ.get("ESPRESSO_KEEP_TMP") == "1":
            print(f"kept {self.workdir}")
        else:
            shutil_rmtree(self.workdir)


# The two-port gateway of the net_pcap component tests (PcapGateway): outside 198.51.100.1/24 behind
# the router 198.51.100.254 and inside 192.168.1.1/24 with the host 192.168.1.10, both static
# neighbors, each port reading <name>-in.pcap and writing <name>-out.pcap in the work directory.
GW_OUT_MAC = "02:00:00:00:00:01"
GW_IN_MAC = "02:00:00:00:01:01"
ROUTER_MAC = "02:00:00:00:00:fe"  # 198.51.100.254
HOST_MAC = "02:00:00:00:01:0a"    # 192.168.1.10


def two_port_config(workdir, routes=("203.0.113.0/24",), outside_mtu=None, inside_mtu=None):
    """The start of that gateway's config, one worker polling: its interfaces, `routes` (prefixes
    via the router) and neighbors. The test appends its policies and security associations."""
    def mtu(value):
        return "" if value is None else f", mtu: {value}"
    lines = [
        "dataplane:",
        "  workers: 1",
        "  hugepages: false",
        "  idle: poll",
        f"  control-socket: {workdir}/dp.sock",
        "interfaces:",
        f'  - {{ name: outside, device: "net_pcap0,rx_pcap={workdir}/outside-in.pcap,'
        f'tx_pcap={workdir}/outside-out.pcap", address: 198.51.100.1/24, mac: "{GW_OUT_MAC}"{mtu(outside_mtu)} }}',
        f'  - {{ name: inside, device: "net_pcap1,rx_pcap={workdir}/inside-in.pcap,'
        f'tx_pcap={workdir}/inside-out.pcap", address: 192.168.1.1/24, mac: "{GW_IN_MAC}"{mtu(inside_mtu)} }}',
        "routes:",
    ]
    lines += [f"  - {{ destination: {r}, via: 198.51.100.254 }}" for r in routes]
    lines += [
        "neighbors:",
        f'  - {{ address: 198.51.100.254, mac: "{ROUTER_MAC}", interface: outside }}',
        f'  - {{ address: 192.168.1.10, mac: "{HOST_MAC}", interface: inside }}',
    ]
    return "\n".join(lines) + "\n"


# A gateway on two net_null ports (no traffic), for control-socket tests; {sock} is the socket path and
# {dataplane_extra} more lines of the dataplane: section (two spaces of indent).
NULL_PORTS_CONFIG = """dataplane:
  workers: 2
  idle: adaptive
  hugepages: false
  control-socket: {sock}
{dataplane_extra}interfaces:
  - {{ name: inside, device: "net_null0,no-rx=1", address: 192.168.1.1/24, mac: "02:00:00:00:01:01" }}
  - {{ name: outside, device: "net_null1,no-rx=1", address: 198.51.100.1/24, mac: "02:00:00:00:02:01" }}
routes:
  - {{ destination: 203.0.113.0/24, via: 198.51.100.254 }}
"""


def null_ports_config(sock, dataplane_extra=""):
    return NULL_PORTS_CONFIG.format(sock=sock, dataplane_extra=dataplane_extra)


class Control:
    """A raw client of espresso-dp's control socket (docs/control-api.md): call(op, args) sends one
    request (protocol version 1) and returns its reply, skipping events."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.buf = bytearray()
        self.next_id = 1

    def call(self, op, args):
        body = json.dumps({"version": 1, "id": self.next_id, "op": op, "args": args}).encode()
        self.next_id += 1
        self.s.sendall(struct.pack(">I", len(body)) + body)
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    msg = json.loads(bytes(self.buf[4:4 + n]))
                    del self.buf[:4 + n]
                    if "id" in msg:
                        return msg
                    continue
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise RuntimeError("control socket closed")
            self.buf += chunk


def check(cond, what):
    """Raises AssertionError(what) unless cond; prints `ok: what` otherwise."""
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)
