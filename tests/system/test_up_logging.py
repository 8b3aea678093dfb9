#!/usr/bin/python3
"""`espresso up` log destinations and --foreground (controlplane/cli/lifecycle.cpp, docs/cli.md), with
stand-in daemons: a copy of the real CLI binary sits next to two small python programs named
espresso-dp and espresso-ike (the CLI starts the binaries next to itself), which answer `ping` on the
control sockets with the real framing (4-byte length + JSON), print log lines on stdout/stderr (the
IKE one also into its --log-file, as espresso-ike does) and note the order they are stopped in. No
network namespace, no DPDK, no /run/espresso: the sockets live in a temporary directory, so this test
needs no lock. The real daemons go through the same code in tests/system/test_ike_site_to_site.py.

Checked: the default (files only), --log-stderr (files and up's stderr, prefixed, after up returned),
--no-log-files alone refused, --foreground --no-log-files (stderr only, no file written; SIGTERM stops
IKE first, exit 0, pid file removed), and --foreground when a daemon dies (the other is stopped, exit 1).
Run: ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_up_logging.py
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.."))
BUILD = os.path.abspath(os.environ.get("ESPRESSO_BUILD", os.path.join(ROOT, "build")))

FAKE = r'''#!/usr/bin/python3
import json, os, signal, socket, sys, threading, time
role = os.path.basename(sys.argv[0])
args = sys.argv[1:]
log_file = args[args.index("--log-file") + 1] if "--log-file" in args else None
path = os.environ["FAKE_DP_SOCK"]
if role == "espresso-ike":
    path = path[:-len(".sock")] + "-ike.sock"

def log(text):
    line = f"{role} fake log: {text}"
    if role == "espresso-dp":
        print(line, flush=True)                      # stdout
    sys.stderr.write(line + "\n"); sys.stderr.flush()  # stderr
    if log_file:
        with open(log_file, "a") as f:
            f.write(line + "\n")

def stop(sig, frame):
    with open(os.environ["FAKE_ORDER"], "a") as f:
        f.write(role + "\n")
    log("stopping")
    os._exit(0)

signal.signal(signal.SIGTERM, stop)
try:
    os.unlink(path)
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(8)

def serve(c):
    try:
        while True:
            hdr = c.recv(4, socket.MSG_WAITALL)
            if len(hdr) < 4:
                return
            n = int.from_bytes(hdr, "big")
            req = json.loads(c.recv(n, socket.MSG_WAITALL))
            body = json.dumps({"id": req.get("id"), "ok": True, "result": {"ike-sas": []}}).encode()
            c.sendall(len(body).to_bytes(4, "big") + body)
    except OSError:
        pass

def accept():
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()

threading.Thread(target=accept, daemon=True).start()
log("started")
i = 0
while True:
    time.sleep(0.2)
    i += 1
    log(f"tick {i}")
'''


def main():
    cli_real = os.path.join(BUILD, "controlplane", "espresso")
    if not os.path.exists(cli_real):
        print(f"skipped: no {cli_real}")
        return 77
    work = tempfile.mkdtemp(prefix="espresso-up-logging-")
    bindir = os.path.join(work, "bin")
    os.makedirs(bindir)
    cli = os.path.join(bindir, "espresso")
    shutil.copy(cli_real, cli)
    for name in ("espresso-dp", "espresso-ike"):
        p = os.path.join(bindir, name)
        with open(p, "w") as f:
            f.write(FAKE)
        os.chmod(p, 0o755)
    sock = os.path.join(work, "run", "gw.sock")
    os.makedirs(os.path.dirname(sock), mode=0o700)
    text = open(os.path.join(ROOT, "config/examples/ike-branch.yaml")).read()
    assert "control-socket: /run/espresso/branch.sock" in text
    cfg = os.path.join(work, "gw.yaml")
    with open(cfg, "w") as f:
        f.write(text.replace("control-socket: /run/espresso/branch.sock", f"control-socket: {sock}"))
    order = os.path.join(work, "order")
    env = dict(os.environ, FAKE_DP_SOCK=sock, FAKE_ORDER=order)
    pids = os.path.join(work, "run", "gw.pids")
    failures = []

    def check(cond, what):
        print(("PASS " if cond else "FAIL ") + what, flush=True)
        if not cond:
            failures.append(what)

    def read(path):
        return open(path, errors="replace").read() if os.path.exists(path) else ""

    def run(args, stderr_path):
        with open(stderr_path, "w") as err:
            return subprocess.run([cli] + args, env=env, stdout=subprocess.PIPE, stderr=err, text=True, timeout=60)

    def down():
        return subprocess.run([cli, "down", cfg], env=env, capture_output=True, text=True, timeout=60)

    try:
        # 1. Default: files only; the ike file is written by the daemon itself (--log-file).
        logs1 = os.path.join(work, "logs1")
        r = run(["up", cfg, "--log-dir", logs1], os.path.join(work, "up1.err"))
        check(r.returncode == 0 and "(log " + logs1 + "/gw-dp.log)" in r.stdout, f"up (files only): {r.stdout.strip()}")
        time.sleep(1)
        check("espresso-dp fake log: tick" in read(os.path.join(logs1, "gw-dp.log")), "dp log file written")
        check("espresso-ike fake log: tick" in read(os.path.join(logs1, "gw-ike.log")), "ike log file written")
        check(read(os.path.join(work, "up1.err")) == "", "nothing on up's stderr without --log-stderr")
        check(down().returncode == 0 and read(order).split() == ["espresso-ike", "espresso-dp"], "down: IKE first")

        # 2. --log-stderr: the files and up's stderr, prefixed, going on after up returned.
        os.unlink(order)
        logs2 = os.path.join(work, "logs2")
        err2 = os.path.join(work, "up2.err")
        r = run(["up", cfg, "--log-dir", logs2, "--log-stderr"], err2)
        check(r.returncode == 0 and "gw-dp.log and stderr" in r.stdout, f"up --log-stderr: {r.stdout.strip()}")
        time.sleep(1.5)
        e = read(err2)
        check("espresso-dp: espresso-dp fake log: tick 5" in e, "dp lines on stderr after up returned, prefixed")
        check("espresso-ike: espresso-ike fake log: tick 5" in e, "ike lines on stderr after up returned, prefixed")
        dp_file = read(os.path.join(logs2, "gw-dp.log"))
        check("espresso-dp fake log: tick 5" in dp_file and "espresso-dp: " not in dp_file,
              "the dp file too, as written (relay tee)")
        check("espresso-ike fake log: tick" in read(os.path.join(logs2, "gw-ike.log")), "ike file too")
        check(down().returncode == 0, "down after --log-stderr")
        time.sleep(0.5)
        check("espresso-ike: espresso-ike fake log: stopping" in read(err2), "the last lines reach stderr")

        # 3. --no-log-files alone: refused.
        r = run(["up", cfg, "--no-log-files"], os.path.join(work, "up3.err"))
        check(r.returncode == 2 and "--log-stderr" in read(os.path.join(work, "up3.err")), "--no-log-files alone refused")
        r = run(["--log-stderr", "show", "interfaces"], os.path.join(work, "up3b.err"))
        check(r.returncode == 2, "--log-stderr is an option of up only")

        # 4. --foreground --no-log-files: stderr only; SIGTERM stops IKE, then the data plane; exit 0.
        os.unlink(order)
        logs4 = os.path.join(work, "logs4")
        err4 = os.path.join(work, "up4.err")
        with open(err4, "w") as err:
            fg = subprocess.Popen([cli, "up", cfg, "--log-dir", logs4, "--foreground", "--no-log-files"], env=env,
                                  stdout=subprocess.PIPE, stderr=err, text=True)
        deadline = time.time() + 20
        while not os.path.exists(pids) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        check(fg.poll() is None and os.path.exists(pids), "up --foreground stays, pid file written")
        st = subprocess.run([cli, "status", cfg], env=env, capture_output=True, text=True, timeout=30)
        check(st.returncode == 0, "status sees the foreground gateway")
        fg.send_signal(signal.SIGTERM)
        rc = fg.wait(timeout=40)
        out = fg.stdout.read()
        e = read(err4)
        print(out.strip())
        check(rc == 0, f"exit 0 after SIGTERM (got {rc})")
        check("in the foreground" in out, "up says it stays in the foreground")
        check("espresso-dp: espresso-dp fake log: tick" in e and "espresso-ike: espresso-ike fake log: tick" in e,
              "foreground: both daemons on stderr")
        check("stopping gateway gw" in e and "espresso-ike: espresso-ike fake log: stopping" in e,
              "foreground: the stop announced, the daemons' last lines relayed")
        check(read(order).split() == ["espresso-ike", "espresso-dp"], "foreground: IKE stopped first")
        check(not os.path.exists(logs4) or not os.listdir(logs4), "--no-log-files: no log file")
        check(not os.path.exists(pids), "foreground: pid file removed")

        # 5. --foreground and a daemon dies: the other is stopped, exit 1.
        os.unlink(order)
        err5 = os.path.join(work, "up5.err")
        with open(err5, "w") as err:
            fg = subprocess.Popen([cli, "up", cfg, "--log-dir", os.path.join(work, "logs5"), "--foreground"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.time() + 20
        while not os.path.exists(pids) and time.time() < deadline:
            time.sleep(0.1)
        dp_pid = int(dict(l.split() for l in read(pids).splitlines())["espresso-dp"])
        os.kill(dp_pid, signal.SIGKILL)
        rc = fg.wait(timeout=40)
        e = read(err5)
        check(rc == 1 and "espresso-dp (pid %d) was killed" % dp_pid in e, f"dp killed: up exits 1 (got {rc})")
        check(read(order).split() == ["espresso-ike"], "dp killed: IKE stopped")
        check("fake log: tick" in read(os.path.join(work, "logs5", "gw-dp.log")), "--foreground keeps the files by default")
    finally:
        down()
        if failures:
            for f in sorted(os.listdir(work)):
                if f.endswith(".err"):
                    print(f"--- {f} ---\n{read(os.path.join(work, f))[-2000:]}")
    print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
