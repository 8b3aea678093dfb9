#!/usr/bin/python3
"""Manual check (not run by CI): the path espresso-ike will use, before espresso-ike exists.

gw-hq runs espresso-dp (config/examples/site-to-site-hq.yaml without its static SAs, plus an `ike:`
section); gw-branch is Linux + strongSwan. In place of espresso-ike, plain Python UDP sockets bound to
198.51.100.1 inside gw-hq (the address lives on the TAP dp-outside) prove:
  1. strongSwan's IKE_SA_INIT on UDP 500 reaches a socket on 198.51.100.1:500 (through af_packet ->
     worker -> exception ring -> TAP -> kernel), and a reply from that socket (an IKE header answering
     strongSwan's SPI) reaches strongSwan, which logs it;
  2. UDP 4500 with the 4-byte non-ESP marker (00 00 00 00) from 203.0.113.1:4500 reaches a socket on
     198.51.100.1:4500, and the reply comes back;
  3. an RFC 3948 NAT-keepalive (one 0xFF byte) on 4500 reaches the socket too;
  4. large (IP-fragmented) IKE messages, as IKE_AUTH with certificates makes, on 500 and 4500, both ways.
After each step the data plane's worker counters (espresso show dataplane) are printed.

Run as root: ESPRESSO_BUILD=build-harness /usr/bin/python3 tests/system/check_ike_path.py
"""
import json
import os
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ike_topology import IkeTopology, probe_events, site_conf, trimmed_hq_config, udp_probe, wait_probe  # noqa: E402

BUILD = os.environ.get("ESPRESSO_BUILD", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../build"))

IKE_YAML = """ike:
  # Read by espresso-ike, ignored by espresso-dp (this check uses plain sockets instead of the daemon).
  peers:
    - name: branch
      local-address: 198.51.100.1
      remote-address: 203.0.113.1
      auth: { method: psk, secret: "Sup3rS3cr3tK3y" }
"""

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


def dataplane(topo, title):
    try:
        out = topo.cli("gw-hq", "show dataplane", check=False)
    except Exception as e:  # noqa: BLE001
        out = str(e)
    print(f"--- espresso show dataplane ({title}) ---\n{out}", flush=True)
    return out


def ike_response_to(request_hex):
    """An IKE header answering the request: same SPIi, some SPIr, IKE_SA_INIT, response flag, no payloads."""
    req = bytes.fromhex(request_hex)
    return req[:8] + bytes.fromhex("1122334455667788") + bytes([0, 0x20, 34, 0x20]) + (0).to_bytes(4, "big") + \
        (28).to_bytes(4, "big")


def main():
    workdir = tempfile.mkdtemp(prefix="ssw-ikepath-")
    cfg = trimmed_hq_config(workdir, ike_yaml=IKE_YAML)
    topo = IkeTopology(BUILD, prefix=f"ssw{os.getpid() % 10000}", workdir=workdir, hq_config=cfg)
    try:
        topo.create()
        topo.start_gateways()
        print(topo.cli("gw-hq", "show crypto ipsec sa"), flush=True)
        br = topo.start_charon("gw-branch")

        def ping_gateway():
            from topology import sh
            r = sh("ping -c 3 -i 0.2 -W 2 198.51.100.1", ns=topo.ns["gw-branch"], capture=True, check=False)
            assert " 0% packet loss" in r.stdout, r.stdout
        check("gw-branch (kernel) pings 198.51.100.1 (espresso-dp TAP) through inet", ping_gateway)

        # 1. IKE_SA_INIT on 500 --------------------------------------------------------------------
        def ike_500():
            udp_probe(topo, "p500", "gw-hq", "198.51.100.1", 500, timeout=20)
            since = br.log_size()
            br.load(site_conf("gw-branch", start_action="start"))  # charon initiates on load
            got = wait_probe(topo, "p500", timeout=10)
            assert got, f"no datagram on 198.51.100.1:500; probe log: {probe_events(topo, 'p500')}\n" \
                        f"charon: {br.log()[since:][-3000:]}"
            first = got[0]
            assert first["from"] == ["203.0.113.1", 500], first
            assert bytes.fromhex(first["hex"])[18] == 34, f"not IKE_SA_INIT: {first}"  # exchange type
            print(f"    probe got {first['len']} bytes from {first['from']}", flush=True)
            # Answer from the very same socket, as espresso-ike will: run a second probe bound to
            # the same address? No: answer from this socket by restarting it with a reply armed.
            topo.stop_process("p500")
            reply = ike_response_to(first["hex"])
            udp_probe(topo, "p500r", "gw-hq", "198.51.100.1", 500, timeout=20, reply=reply)
            got = wait_probe(topo, "p500r", key="replied", timeout=15)  # charon retransmits within ~4 s
            assert got, f"no retransmission reached the reply probe: {probe_events(topo, 'p500r')}"
            m = br.wait_for_log(r"received packet: from 198\.51\.100\.1\[500\] to 203\.0\.113\.1\[500\] \(28 bytes\)",
                                timeout=10, since=since)
            print(f"    strongSwan: {m.group(0)}", flush=True)
            tail = br.log()[since:]
            for line in tail.splitlines():
                if "198.51.100.1[500]" in line or "IKE_SA_INIT response" in line:
                    print("    " + line, flush=True)
            br.terminate(ike="s2s", timeout=5, check=False, force=True)
            topo.stop_process("p500r")
        check("1. strongSwan IKE_SA_INIT on UDP 500 reaches a socket on 198.51.100.1:500 in gw-hq; its reply reaches strongSwan", ike_500)
        dataplane(topo, "after UDP 500")
        br.stop()  # frees 4500 in gw-branch for the Python sender

        # 2. non-ESP marker on 4500 --------------------------------------------------------------
        def malformed():
            out = topo.cli("gw-hq", "--json show dataplane", check=False)
            try:
                return sum(w.get("drops", {}).get("malformed", 0) for w in json.loads(out)["workers"])
            except (ValueError, KeyError, TypeError, AttributeError):
                return None

        def send_recv(port, payload, reply, name, from_hq=False):
            """payload from one gateway's socket to the other's, optional reply back. Default: gw-branch
            (203.0.113.1) sends to gw-hq (198.51.100.1, behind espresso-dp); from_hq swaps the roles."""
            rx, tx = ("gw-branch", "gw-hq") if from_hq else ("gw-hq", "gw-branch")
            ip = {"gw-hq": "198.51.100.1", "gw-branch": "203.0.113.1"}
            before = malformed()
            udp_probe(topo, f"rx{name}", rx, ip[rx], port, timeout=8, reply=reply)
            udp_probe(topo, f"tx{name}", tx, ip[tx], port, timeout=8, send_to=(ip[rx], port), payload=payload)
            got = wait_probe(topo, f"rx{name}", timeout=6)
            after = malformed()
            assert got, f"nothing reached {ip[rx]}:{port} ({len(payload)} bytes sent from {ip[tx]}); " \
                        f"espresso-dp worker 'malformed' drops {before} -> {after}"
            assert got[0]["len"] == len(payload) and got[0]["from"] == [ip[tx], port], got
            assert bytes.fromhex(got[0]["hex"]) == payload[:64], got
            if reply is not None:
                back = wait_probe(topo, f"tx{name}", timeout=6)
                assert back, f"reply ({len(reply)} bytes) never reached {ip[tx]}:{port}; " \
                             f"malformed drops {before} -> {malformed()}"
                assert back[0]["len"] == len(reply) and back[0]["from"] == [ip[rx], port], back
            topo.stop_process(f"rx{name}")
            topo.stop_process(f"tx{name}")

        marker_ike = bytes(4) + bytes.fromhex("0102030405060708" + "0000000000000000") + bytes([0, 0x20, 34, 0x08]) + \
            (0).to_bytes(4, "big") + (28).to_bytes(4, "big")
        check("2. UDP 4500 with the non-ESP marker reaches 198.51.100.1:4500 in gw-hq, the reply comes back",
              lambda: send_recv(4500, marker_ike, bytes(4) + b"reply-from-hq", "m"))
        dataplane(topo, "after UDP 4500 marker")
        check("3. NAT-keepalive (one 0xFF byte) on UDP 4500 reaches the socket",
              lambda: send_recv(4500, b"\xff", None, "k"))
        check("4a. 3000-byte (fragmented) IKE message on UDP 500 reaches the socket; 3000-byte reply comes back",
              lambda: send_recv(500, marker_ike[4:] + bytes(2972), marker_ike[4:] + bytes(2972), "f5"))
        check("4b. 3000-byte (fragmented) non-ESP-marker message on UDP 4500 reaches the socket; reply comes back",
              lambda: send_recv(4500, marker_ike + bytes(2968), marker_ike + bytes(2968), "f45"))
        check("4c. 3000-byte IKE message from gw-hq's socket (kernel fragments on dp-outside) reaches gw-branch; 3000-byte reply comes back",
              lambda: send_recv(500, marker_ike[4:] + bytes(2972), marker_ike[4:] + bytes(2972), "o5", from_hq=True))
        check("4d. 3000-byte message from gw-hq's socket reaches gw-branch (no reply)",
              lambda: send_recv(500, marker_ike[4:] + bytes(2972), None, "o5n", from_hq=True))
        check("4e. 1400-byte (unfragmented) IKE message on UDP 500 both ways",
              lambda: send_recv(500, marker_ike[4:] + bytes(1372), marker_ike[4:] + bytes(1372), "b5"))
        dataplane(topo, "at the end")
        print(topo.cli("gw-hq", "show interfaces"), flush=True)
        print(topo.cli("gw-hq", "--json show dataplane"), flush=True)
    except Exception:  # noqa: BLE001
        results.append(("topology", False))
        traceback.print_exc()
        print(f"--- gw-hq espresso-dp log ---\n{topo.log('gw-hq')}")
        for gw, c in topo.charons.items():
            print(f"--- {gw} charon log ---\n{c.log()[-6000:]}")
    finally:
        if not all(ok for _, ok in results):
            print(f"--- gw-hq espresso-dp log ---\n{topo.log('gw-hq')[-3000:]}")
        topo.teardown()
    passed = sum(1 for _, ok in results if ok)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) and passed else 1


if __name__ == "__main__":
    sys.exit(main())
