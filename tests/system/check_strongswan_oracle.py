#!/usr/bin/python3
"""Manual check (not run by CI): strongSwan <-> strongSwan site-to-site through the inet router.

Proves the strongSwan oracle works on this machine before anyone tests espresso-ike against it:
both gateways are Linux + charon (kernel-libipsec) in namespaces (IkeTopology(hq="strongswan")); the
branch initiates IKEv2 with PSK, aes256-sha256-modp2048, ESP aes256gcm16; host-hq <-> host-branch ping
works both ways; a capture on the inet segment shows only UDP 4500 ESP (SPI != 0) between the gateways
during the traffic, and both sides' SA counters moved. Then the same with certificates (openssl-made CA,
auth = pubkey), to prove swanctl_conf(auth="pubkey") and make_pki().

Run as root: /usr/bin/python3 tests/system/check_strongswan_oracle.py   (last line "N passed, N failed")
"""
import os
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ike_topology import IkeTopology, site_conf  # noqa: E402
from strongswan import make_pki  # noqa: E402
from topology import sh  # noqa: E402

results = []


def check(name, fn):
    try:
        fn()
        results.append((name, True))
        print(f"PASS {name}", flush=True)
    except Exception as e:  # noqa: BLE001
        results.append((name, False))
        print(f"FAIL {name}: {e}", flush=True)
        traceback.print_exc()


def ping_both_ways(topo):
    for src, dst in (("host-hq", "192.168.2.10"), ("host-branch", "192.168.1.10")):
        r = sh(f"ping -c 5 -i 0.2 -W 2 {dst}", ns=topo.ns[src], capture=True, check=False)
        assert " 0% packet loss" in r.stdout, f"{src} -> {dst}:\n{r.stdout}"


def capture_check(topo, fn):
    """Run fn() while tshark captures on inet-hq; return the (src, dst, proto, udp port, esp spi, udp length) rows."""
    pcap = os.path.join(topo.dir, f"inet-{time.time():.0f}.pcap")
    cap = subprocess.Popen(["ip", "netns", "exec", topo.ns["inet"], "tshark", "-q", "-i", "inet-hq", "-w", pcap],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(2)
        fn()
        time.sleep(1)
    finally:
        cap.terminate()
        cap.wait(timeout=10)
    r = sh(f"tshark -r {pcap} -Y ip -T fields -e ip.src -e ip.dst -e ip.proto -e udp.dstport -e esp.spi -e udp.length",
           capture=True)
    return [line.split("\t") for line in r.stdout.splitlines() if line.strip()]


def run(auth):
    topo = IkeTopology(None, prefix=f"ssw{os.getpid() % 10000}", hq="strongswan")
    try:
        topo.create()
        hq = topo.start_charon("gw-hq")
        br = topo.start_charon("gw-branch")
        kw = {}
        files = {"gw-hq": None, "gw-branch": None}
        if auth == "pubkey":
            pki = make_pki(os.path.join(topo.dir, "pki"), {"hq": "198.51.100.1", "branch": "203.0.113.1"})
            files = {"gw-hq": pki["hq"], "gw-branch": pki["branch"]}
            kw = {"auth": "pubkey"}
        for gw, c in (("gw-hq", hq), ("gw-branch", br)):
            extra = dict(kw)
            if auth == "pubkey":
                extra.update(cert=os.path.basename(files[gw]["cert"]), cacert=os.path.basename(files[gw]["ca"]))
            c.load(site_conf(gw, **extra), files=files[gw])

        def establish():
            r = br.initiate("net", timeout=30)
            assert "initiate completed successfully" in r.stdout, r.stdout
            child = br.wait_for_child("net", timeout=10)
            ike = [s for s in br.list_sas() if s["name"] == "s2s"][0]
            assert ike["state"] == "ESTABLISHED", ike
            assert (ike["encr-alg"], ike["encr-keysize"], ike["integ-alg"], ike["dh-group"]) == \
                ("AES_CBC", "256", "HMAC_SHA2_256_128", "MODP_2048"), ike
            assert (child["encr-alg"], child["encr-keysize"], child.get("encap")) == ("AES_GCM_16", "256", "yes"), child
            assert ike["remote-port"] == "4500", ike
            hq.wait_for_child("net", timeout=10)
        check(f"[{auth}] branch initiates, both sides INSTALLED (IKE aes256-sha256-modp2048, ESP aes256gcm16, UDP-encap)", establish)

        rows = []

        def traffic():
            rows.extend(capture_check(topo, lambda: ping_both_ways(topo)))
        check(f"[{auth}] ping host-hq <-> host-branch both ways", traffic)

        def only_esp():
            gw = {"198.51.100.1", "203.0.113.1"}
            tunnel = [r for r in rows if {r[0], r[1]} == gw]
            assert len(tunnel) >= 20, f"only {len(tunnel)} packets between the gateways: {rows}"
            def esp(r):
                return len(r) >= 5 and r[2] == "17" and r[3] == "4500" and r[4] and int(r[4], 16) != 0

            def keepalive(r):  # RFC 3948 NAT-keepalive (one 0xFF byte): libipsec fakes NAT, so charon sends them
                return len(r) >= 6 and r[2] == "17" and r[3] == "4500" and r[5] == "9"
            others = [r for r in rows if not esp(r) and not keepalive(r)]
            assert not others, f"non-ESP packets on the internet segment: {others}"
            assert not [r for r in rows if r[0].startswith("192.168.") or r[1].startswith("192.168.")]
        check(f"[{auth}] inet capture: only UDP 4500 ESP (SPI != 0) between the gateways", only_esp)

        def counters():
            for name, c in (("hq", hq), ("branch", br)):
                ch = c.wait_for_child("net", timeout=5)
                assert int(ch["packets-in"]) >= 10 and int(ch["packets-out"]) >= 10, (name, ch)
        check(f"[{auth}] both sides' CHILD_SA counters moved", counters)

        def teardown_sa():
            br.terminate(ike="s2s", timeout=15)
            deadline = time.time() + 10
            while hq.list_sas() and time.time() < deadline:
                time.sleep(0.2)
            assert not hq.list_sas(), hq.list_sas()
        check(f"[{auth}] terminate removes the SAs on both sides", teardown_sa)
        if not all(ok for _, ok in results):
            print("--- gw-branch charon log (tail) ---\n" + br.log()[-6000:])
            print("--- gw-hq charon log (tail) ---\n" + hq.log()[-6000:])
    except Exception:  # noqa: BLE001
        results.append(("topology", False))
        traceback.print_exc()
        for gw, c in topo.charons.items():
            print(f"--- {gw} charon log ---\n{c.log()[-6000:]}")
    finally:
        topo.teardown()


def main():
    run("psk")
    run("pubkey")
    passed = sum(1 for _, ok in results if ok)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) and passed else 1


if __name__ == "__main__":
    sys.exit(main())
