"""strongSwan 5.9 (charon + swanctl) as an independent IKEv2/IKEv1 + ESP peer inside a network namespace.

Recipe: /work/shared/ORACLES.md. The kernel here has no ESP, so charon uses kernel-libipsec (userspace
ESP over the TUN device ipsec0, always UDP-encapsulated on port 4500, no ESN). Each instance gets a
private tmpfs /run inside its `ip netns exec` mount namespace (charon's fixed pid file would clash
otherwise), its own strongswan.conf (STRONGSWAN_CONF) and its vici socket in its work directory. Nothing
is mounted outside that namespace; stop() kills by PID only.

Debian 12 ships no python3-vici, so this module speaks the vici protocol itself (a few dozen lines, see
`Vici`) for list-sas; loading and initiating go through swanctl as a user would.

    from strongswan import Charon, swanctl_conf
    c = Charon("ssw-gw-branch", "/tmp/work/branch")
    c.start()
    c.load(swanctl_conf(local_addrs="203.0.113.1", remote_addrs="198.51.100.1", psk="Sup3rS3cr3tK3y",
                        local_ts="192.168.2.0/24", remote_ts="192.168.1.0/24"))
    c.initiate("net")
    child = c.wait_for_child("net")          # {'name': 'net', 'state': 'INSTALLED', 'spi-in': ..., ...}
    print(c.list_sas())                      # [{'name': 's2s', 'state': 'ESTABLISHED', 'child-sas': {...}}]
    c.stop()
"""
import os
import re
import signal
import socket
import struct
import subprocess
import time

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"

# ORACLES.md's list plus pkcs8/x509-friendly loaders for openssl-made keys, and the EAP/XAuth plugins
# later tests will want. kdf/hmac/sha2 are required (else "KDF_PRF with PRF_HMAC_SHA2_256 not supported").
DEFAULT_PLUGINS = ("random nonce aes sha1 sha2 hmac kdf gcm gmp openssl pem pkcs1 pkcs8 x509 revocation "
                   "constraints pubkey curve25519 kernel-libipsec kernel-netlink socket-default vici updown")


# ---------------------------------------------------------------------------------------------------
# vici wire protocol (strongSwan src/libcharon/plugins/vici/README.md)
# ---------------------------------------------------------------------------------------------------
class ViciError(RuntimeError):
    pass


class Vici:
    CMD_REQUEST, CMD_RESPONSE, CMD_UNKNOWN, EVENT_REGISTER, EVENT_UNREGISTER, EVENT_CONFIRM, \
        EVENT_UNKNOWN, EVENT = range(8)
    SECTION_START, SECTION_END, KEY_VALUE, LIST_START, LIST_ITEM, LIST_END = range(1, 7)

    def __init__(self, path, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- encoding ---------------------------------------------------------------------------------
    @staticmethod
    def _name(n):
        b = n.encode()
        return bytes([len(b)]) + b

    @classmethod
    def encode(cls, msg):
        out = b""
        for k, v in msg.items():
            if isinstance(v, dict):
                out += bytes([cls.SECTION_START]) + cls._name(k) + cls.encode(v) + bytes([cls.SECTION_END])
            elif isinstance(v, (list, tuple)):
                out += bytes([cls.LIST_START]) + cls._name(k)
                for item in v:
                    b = item if isinstance(item, bytes) else str(item).encode()
                    out += bytes([cls.LIST_ITEM]) + struct.pack(">H", len(b)) + b
                out += bytes([cls.LIST_END])
            else:
                b = v if isinstance(v, bytes) else str(v).encode()
                out += bytes([cls.KEY_VALUE]) + cls._name(k) + struct.pack(">H", len(b)) + b
        return out

    @classmethod
    def decode(cls, data):
        root = {}
        stack = [root]
        lst = None
        i = 0

        def name():
            nonlocal i
            n = data[i]
            s = data[i + 1:i + 1 + n].decode(errors="replace")
            i += 1 + n
            return s

        def value():
            nonlocal i
            (n,) = struct.unpack_from(">H", data, i)
            s = data[i + 2:i + 2 + n].decode(errors="replace")
            i += 2 + n
            return s

        while i < len(data):
            t = data[i]
            i += 1
            if t == cls.SECTION_START:
                d = {}
                stack[-1][name()] = d
                stack.append(d)
            elif t == cls.SECTION_END:
                stack.pop()
            elif t == cls.KEY_VALUE:
                k = name()
                stack[-1][k] = value()
            elif t == cls.LIST_START:
                lst = []
                stack[-1][name()] = lst
            elif t == cls.LIST_ITEM:
                lst.append(value())
            elif t == cls.LIST_END:
                lst = None
            else:
                raise ViciError(f"bad vici element type {t}")
        return root

    # -- transport --------------------------------------------------------------------------------
    def _send(self, payload):
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def _recv(self):
        def exact(n):
            b = b""
            while len(b) < n:
                chunk = self.sock.recv(n - len(b))
                if not chunk:
                    raise ViciError("vici connection closed")
                b += chunk
            return b
        (n,) = struct.unpack(">I", exact(4))
        return exact(n)

    def request(self, command, msg=None, stream_event=None):
        """One command. With stream_event, returns (response, [event bodies]) for streamed commands."""
        events = []
        if stream_event:
            self._send(bytes([self.EVENT_REGISTER]) + self._name(stream_event))
            if self._recv()[0] != self.EVENT_CONFIRM:
                raise ViciError(f"cannot register vici event {stream_event}")
        self._send(bytes([self.CMD_REQUEST]) + self._name(command) + self.encode(msg or {}))
        while True:
            p = self._recv()
            if p[0] == self.EVENT:
                n = p[1]
                events.append(self.decode(p[2 + n:]))
                continue
            if p[0] == self.CMD_UNKNOWN:
                raise ViciError(f"vici: unknown command {command}")
            if p[0] != self.CMD_RESPONSE:
                raise ViciError(f"vici: unexpected packet type {p[0]}")
            resp = self.decode(p[1:])
            break
        if stream_event:
            self._send(bytes([self.EVENT_UNREGISTER]) + self._name(stream_event))
            self._recv()
        return (resp, events) if stream_event else resp


# ---------------------------------------------------------------------------------------------------
# swanctl.conf rendering (one setting per line: swanctl's parser wants that)
# ---------------------------------------------------------------------------------------------------
def _block(name, items, indent):
    pad = "  " * indent
    lines = [f"{pad}{name} {{"]
    for k, v in items:
        if v is None:
            continue
        if isinstance(v, list) and v and isinstance(v[0], tuple):
            lines += _block(k, v, indent + 1)
        else:
            if isinstance(v, bool):
                v = "yes" if v else "no"
            elif isinstance(v, (list, tuple)):
                v = ",".join(str(x) for x in v)
            lines.append(f"{pad}  {k} = {v}")
    lines.append(f"{pad}}}")
    return lines


def swanctl_conf(local_addrs, remote_addrs, local_ts, remote_ts, *, name="s2s", child="net", version=2,
                 auth="psk", psk=None, local_id=None, remote_id=None,
                 cert=None, cacert=None,
                 proposals="aes256-sha256-modp2048", esp_proposals="aes256gcm16",
                 start_action=None, close_action=None, dpd_action=None,
                 rekey_time=None, reauth_time=None, over_time=None, child_rekey_time=None, life_time=None,
                 dpd_delay=None, dpd_timeout=None, mode=None, encap=None, mobike=None, aggressive=None,
                 local_port=None, remote_port=None, fragmentation=None,
                 conn_extra=None, child_extra=None):
    """swanctl.conf for one site-to-site connection with one CHILD_SA.

    auth="psk": psk is the shared secret (ids default to the addresses).
    auth="pubkey": cert is the local certificate file (absolute path or relative to x509/), cacert the
    CA that signs the peer (absolute or relative to x509ca/); the private key must sit in private/
    next to the loaded swanctl.conf (Charon.load(..., files=...) or make_pki(...) put it there).
    Lists (proposals, ts) may be given as Python lists. rekey_time etc. are swanctl time strings
    ("30s", "1h") or ints (seconds). conn_extra/child_extra: [(key, value), ...] for anything else.
    """
    local_id = local_id or local_addrs
    remote_id = remote_id or remote_addrs
    local = [("auth", auth), ("id", local_id), ("certs", cert if auth == "pubkey" else None)]
    remote = [("auth", auth), ("id", remote_id), ("cacerts", cacert if auth == "pubkey" else None)]
    child_items = [("local_ts", local_ts), ("remote_ts", remote_ts), ("esp_proposals", esp_proposals),
                   ("mode", mode), ("start_action", start_action), ("close_action", close_action),
                   ("dpd_action", dpd_action), ("rekey_time", child_rekey_time), ("life_time", life_time)]
    child_items += list(child_extra or [])
    conn = [("version", version), ("local_addrs", local_addrs), ("remote_addrs", remote_addrs),
            ("local_port", local_port), ("remote_port", remote_port), ("aggressive", aggressive),
            ("proposals", proposals), ("rekey_time", rekey_time), ("reauth_time", reauth_time),
            ("over_time", over_time), ("dpd_delay", dpd_delay), ("dpd_timeout", dpd_timeout),
            ("encap", encap), ("mobike", mobike), ("fragmentation", fragmentation)]
    conn += list(conn_extra or [])
    conn += [("local", local), ("remote", remote), ("children", [(child, child_items)])]
    lines = _block("connections", [(name, conn)], 0)
    if auth == "psk":
        if psk is None:
            raise ValueError("auth=psk needs psk=")
        lines += _block("secrets", [(f"ike-{name}", [("id-a", local_id), ("id-b", remote_id),
                                                      ("secret", '"' + psk + '"')])], 0)
    return "\n".join(lines) + "\n"


def make_pki(directory, peers, days=30, key="ec", rsa_bits=2048):
    """A test CA and one certificate per peer, made with openssl (Debian 12 has no strongSwan pki tool).

    peers: {"branch": "203.0.113.1", "hq": "198.51.100.1"} -> the IP becomes the certificate's
    subjectAltName (strongSwan matches id = <IP> against it); or a dict {"subject": openssl -subj
    string, "san": openssl subjectAltName value or None} for other identities (DN, FQDN, e-mail). Returns {peer: {"cert":, "key":, "ca":}}
    with absolute paths; pass files=make_pki(...)[peer] to Charon.load to install them.
    key: "ec" (P-256) or "rsa" (RSA, rsa_bits long: 4096 makes IKE_AUTH exceed 1500 bytes) for the CA and
    the peers.
    """
    newkey = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if key == "ec"
              else ["-newkey", f"rsa:{rsa_bits}"])
    os.makedirs(directory, exist_ok=True)
    ca_key = os.path.join(directory, "ca.key")
    ca = os.path.join(directory, "ca.pem")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", *newkey, "-nodes", "-days", str(days),
        "-subj", "/O=Espresso test/CN=Espresso test CA", "-keyout", ca_key, "-out", ca,
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    out = {}
    for peer, ip in peers.items():
        key = os.path.join(directory, f"{peer}.key")
        csr = os.path.join(directory, f"{peer}.csr")
        cert = os.path.join(directory, f"{peer}.pem")
        ext = os.path.join(directory, f"{peer}.ext")
        # A dict instead of an IP: {"subject": "/C=CH/O=Espresso test/CN=gw.example", "san": "DNS:gw.example"}
        # (san None: no subjectAltName, the subject DN is then the only identity the certificate holds).
        if isinstance(ip, dict):
            subject, san = ip["subject"], ip.get("san")
        else:
            subject, san = f"/O=Espresso test/CN={ip}", f"IP:{ip}"
        with open(ext, "w") as f:
            f.write((f"subjectAltName={san}\n" if san else "") + "basicConstraints=CA:FALSE\n")
        run("req", "-new", *newkey, "-nodes",
            "-subj", subject, "-keyout", key, "-out", csr)
        run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", str(days),
            "-extfile", ext, "-out", cert)
        out[peer] = {"cert": cert, "key": key, "ca": ca}
    return out


# ---------------------------------------------------------------------------------------------------
# charon in a namespace
# ---------------------------------------------------------------------------------------------------
class Charon:
    def __init__(self, netns, workdir, plugins=DEFAULT_PLUGINS, install_routes=True, log_levels=None,
                 extra_conf=""):
        """netns: an existing namespace. workdir: created if needed, must not be under /run (private there).

        log_levels: filelog subsystem levels, default {"default": 1, "ike": 2, "cfg": 2, "net": 1, "enc": 1}.
        extra_conf: text inserted into the charon { } section of strongswan.conf.
        """
        self.ns = netns
        self.dir = os.path.abspath(workdir)
        if self.dir == "/run" or self.dir.startswith("/run/"):
            raise ValueError("workdir must not be under /run (charon gets a private /run)")
        os.makedirs(self.dir, exist_ok=True)
        self.vici_path = os.path.join(self.dir, "charon.vici")
        self.uri = "unix://" + self.vici_path
        self.conf_path = os.path.join(self.dir, "strongswan.conf")
        self.swanctl_dir = os.path.join(self.dir, "swanctl")
        self.log_path = os.path.join(self.dir, "charon.log")
        self.plugins = plugins
        self.install_routes = install_routes
        self.levels = {"default": 1, "ike": 2, "cfg": 2, "net": 1, "enc": 1}
        self.levels.update(log_levels or {})
        self.extra_conf = extra_conf
        self.proc = None

    def _write_conf(self):
        levels = "\n".join(f"      {k} = {v}" for k, v in self.levels.items())
        text = f"""charon {{
  load = {self.plugins}
  install_routes = {"yes" if self.install_routes else "no"}
  plugins {{
    vici {{
      socket = {self.uri}
    }}
  }}
  filelog {{
    stderr {{
      time_format = %H:%M:%S
      ike_name = yes
{levels}
    }}
  }}
{self.extra_conf}
}}
"""
        with open(self.conf_path, "w") as f:
            f.write(text)

    def start(self, timeout=20):
        """Start charon and wait until its vici socket answers (version command)."""
        if self.proc and self.proc.poll() is None:
            raise RuntimeError(f"charon already running in {self.ns}")
        self._write_conf()
        if os.path.exists(self.vici_path):
            os.unlink(self.vici_path)
        log = open(self.log_path, "a")
        # `ip netns exec` execs sh, which execs charon: self.proc.pid is charon's PID.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "sh", "-c",
             f"mount -t tmpfs none /run && STRONGSWAN_CONF={self.conf_path} exec {CHARON}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"charon in {self.ns} exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with Vici(self.vici_path, timeout=2) as v:
                    self.version = v.request("version")
                return self
            except (OSError, ViciError):
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"charon in {self.ns}: vici did not answer within {timeout}s:\n{self.log()}")
            time.sleep(0.2)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def swanctl(self, *args, check=True, timeout=60):
        cmd = ["ip", "netns", "exec", self.ns, SWANCTL, *args, "--uri", self.uri]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r

    def load(self, swanctl_conf_text, files=None):
        """Write swanctl/swanctl.conf in the work dir and `swanctl --load-all` it.

        files: optional {"cert": path, "key": path, "ca": path} (make_pki output) copied into the
        x509/, private/ and x509ca/ folders next to swanctl.conf, where swanctl loads credentials from.
        """
        for sub in ("x509", "x509ca", "private", "rsa", "ecdsa", "pkcs8"):
            os.makedirs(os.path.join(self.swanctl_dir, sub), exist_ok=True)
        for kind, sub in (("cert", "x509"), ("ca", "x509ca"), ("key", "private")):
            if files and files.get(kind):
                dst = os.path.join(self.swanctl_dir, sub, os.path.basename(files[kind]))
                with open(files[kind], "rb") as s, open(dst, "wb") as d:
                    d.write(s.read())
        path = os.path.join(self.swanctl_dir, "swanctl.conf")
        with open(path, "w") as f:
            f.write(swanctl_conf_text)
        return self.swanctl("--load-all", "--noprompt", "--file", path).stdout

    def initiate(self, child, ike=None, timeout=30, check=True):
        """swanctl --initiate --child CHILD [--ike IKE]; returns the CompletedProcess (stdout = charon's log)."""
        args = ["--initiate", "--child", child, "--timeout", str(int(timeout))]
        if ike:
            args += ["--ike", ike]
        return self.swanctl(*args, check=check, timeout=timeout + 10)

    def terminate(self, ike=None, child=None, timeout=30, check=True, force=False):
        args = ["--terminate", "--timeout", str(int(timeout))]
        if ike:
            args += ["--ike", ike]
        if child:
            args += ["--child", child]
        if force:
            args += ["--force"]
        return self.swanctl(*args, check=check, timeout=timeout + 10)

    def vici(self, command, msg=None, stream_event=None, timeout=30):
        """Raw vici request, e.g. vici("stats"), vici("list-conns", stream_event="list-conn")."""
        with Vici(self.vici_path, timeout=timeout) as v:
            return v.request(command, msg, stream_event)

    def list_sas(self, ike=None):
        """All IKE_SAs as dicts, as vici's list-sas returns them, with 'name' added:
        [{'name': 's2s', 'uniqueid': '1', 'state': 'ESTABLISHED', 'local-host': ..., 'remote-port': '4500',
          'initiator-spi': ..., 'encr-alg': 'AES_CBC', 'dh-group': 'MODP_2048', 'nat-remote': 'yes', ...,
          'child-sas': {'net-1': {'name': 'net', 'state': 'INSTALLED', 'protocol': 'ESP', 'encap': 'yes',
                                  'spi-in': 'c1a2b3c4', 'spi-out': ..., 'encr-alg': 'AES_GCM_16',
                                  'bytes-in': '0', 'packets-in': '0', 'local-ts': ['192.168.2.0/24'], ...}}}]
        All values are strings (lists for traffic selectors), exactly as charon reports them.
        """
        msg = {"ike": ike} if ike else {}
        _, events = self.vici("list-sas", msg, stream_event="list-sa")
        out = []
        for ev in events:
            for name, sa in ev.items():
                sa = dict(sa)
                sa["name"] = name
                sa.setdefault("child-sas", {})
                out.append(sa)
        return out

    def children(self, name=None, state=None):
        """CHILD_SAs (dicts from list_sas, with 'ike' = the IKE_SA name added), filtered by name/state."""
        out = []
        for sa in self.list_sas():
            for c in sa["child-sas"].values():
                if (name is None or c.get("name") == name) and (state is None or c.get("state") == state):
                    c = dict(c)
                    c["ike"] = sa["name"]
                    c["ike-state"] = sa.get("state")
                    out.append(c)
        return out

    def wait_for_child(self, name, timeout=30, state="INSTALLED"):
        """Poll until a CHILD_SA called `name` is INSTALLED; returns its dict (see children())."""
        deadline = time.time() + timeout
        while True:
            found = self.children(name, state)
            if found:
                return found[0]
            if self.proc.poll() is not None:
                raise RuntimeError(f"charon in {self.ns} died:\n{self.log()}")
            if time.time() > deadline:
                raise TimeoutError(f"no {state} CHILD_SA {name} in {self.ns} after {timeout}s; "
                                   f"SAs: {self.list_sas()}\n--- charon log (tail) ---\n{self.log()[-4000:]}")
            time.sleep(0.3)

    def wait_for_log(self, pattern, timeout=20, since=0):
        """Wait until the charon log (from byte offset `since`) matches the regex; returns the match."""
        deadline = time.time() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.log()[since:])
            if m:
                return m
            if time.time() > deadline:
                raise TimeoutError(f"charon log in {self.ns} never matched {pattern!r}:\n{self.log()[since:][-4000:]}")
            time.sleep(0.2)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def stop(self, timeout=10):
        """SIGTERM charon by PID (SIGKILL after timeout). Its /run tmpfs dies with its mount namespace."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            except ProcessLookupError:
                pass
        self.proc = None
