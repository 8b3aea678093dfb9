#!/usr/bin/python3
"""The README's main job, run by scripts/test: scripts/demo.py (what `scripts/demo` runs after setup and
build) on the tree under test. Passes when the demo reports OK (IKEv2 tunnel up, ping through it with no
loss, the TCP transfer complete) and printed what it promises: `show crypto isakmp sa` with the IKE SA
in READY, `show crypto ipsec sa` with packets encapsulated and decapsulated on both gateways, and the
throughput line."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("ESPRESSO_BUILD", os.path.join(ROOT, "build"))


def main():
    if not os.path.exists(os.path.join(BUILD, "controlplane", "espresso-ike")):
        print("SKIP: espresso-ike not built")
        return 77
    env = dict(os.environ, ESPRESSO_BUILD=BUILD)
    r = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "scripts", "demo.py")], env=env,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    print(out)
    checks = {
        "exit 0 and demo: OK": r.returncode == 0 and "demo: OK" in out,
        "tunnel up": re.search(r"tunnel up in [\d.]+ s", out) is not None,
        "IKE SA READY in show crypto isakmp sa": out.count("QM_IDLE") >= 2 or out.count("READY") >= 2,
        "ping through the tunnel, no loss": re.search(r"4 packets transmitted, 4 received, 0% packet loss", out) is not None,
        "encaps counted on both gateways": len(re.findall(r"#pkts encaps: [1-9]\d*", out)) >= 2,
        "decaps counted on both gateways": len(re.findall(r"#pkts decaps: [1-9]\d*", out)) >= 2,
        "throughput printed": re.search(r"\d+ Mbit/s of TCP payload through ESP", out) is not None,
    }
    failed = [k for k, ok in checks.items() if not ok]
    for k, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'} {k}")
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
