#!/usr/bin/python3
"""IKEv2 identities other than IP addresses, against strongSwan 5.9.8 (same topology and peer as
test_ike_strongswan.py: espresso-ike + espresso-dp on gw-hq, charon with kernel-libipsec on gw-branch).

Each identity scenario runs in both roles (strongSwan initiates, then espresso does) and checks:
espresso's `show crypto ikev2 sa` (text and --json) names both identities with their ID types;
strongSwan (vici list-sas) saw espresso's identity as configured, with the right type; pings cross
the tunnel both ways and tshark on the inet router sees every one as ESP-in-UDP with the Child SA's
SPIs (the traffic really went through espresso-dp).

Scenarios:
  fqdn         PSK, ID_FQDN both ways: espresso @gw.example, strongSwan @branch.example
  email        PSK, ID_RFC822_ADDR both ways: espresso hq@example.org, strongSwan user@example.org
  dn           ECDSA certificates, ID_DER_ASN1_DN = each certificate's subject (strongSwan's certificate
               has no subjectAltName at all, so only its subject can match)
  dn_rsa       the same with RSA certificates
  dn_mismatch  espresso expects another DN than the one strongSwan proves: refused, and `show crypto ike
               failures` says identity mismatch with both names; and a local-id our certificate does not
               hold is refused when espresso-ike starts (exit 2, with the fix)
Run as root: ESPRESSO_BUILD=build /usr/bin/python3 tests/system/test_ike_identities.py [scenario ...]
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ike_topology import site_conf, trimmed_hq_config  # noqa: E402
from ike_wire import check_traffic_on_wire  # noqa: E402
from strongswan import make_pki  # noqa: E402
from test_ike_strongswan import IKE_BIN, ike_sas, ike_yaml, ready_sa, run_scenarios, wait  # noqa: E402

HQ_DN = "C=CH, O=Espresso test, CN=gw.example"
BRANCH_DN = "C=CH, O=Espresso test, CN=branch.example"


def check_identities(run, br, local, local_type, remote, remote_type, sw_local, sw_remote):
    """espresso's view (JSON and text) and strongSwan's view of one READY IKE SA."""
    sa = ready_sa(run)
    assert sa, "no READY IKE SA"
    got = {k: sa.get(k) for k in ("local-id", "local-id-type", "remote-id", "remote-id-type")}
    want = {"local-id": local, "local-id-type": local_type, "remote-id": remote, "remote-id-type": remote_type}
    assert got == want, f"espresso list-ike-sas: {got}, expected {want}"
    text = run.cli("show crypto ikev2 sa")
    assert f"Local id: {local} ({local_type})" in text and f"Remote id: {remote} ({remote_type})" in text, text
    isakmp = json.loads(run.cli("show crypto isakmp sa --json"))["ike-sas"]
    assert isakmp and isakmp[0]["remote-id"] == remote and isakmp[0]["local-id"] == local, isakmp
    print(text, flush=True)
    # What strongSwan received from us: its remote-id is our IDi/IDr as it parsed it.
    sas = br.list_sas()
    assert sas and sas[0].get("remote-id") == sw_remote and sas[0].get("local-id") == sw_local, \
        f"strongSwan: local-id {sas[0].get('local-id')!r}, remote-id {sas[0].get('remote-id')!r}; " \
        f"expected {sw_local!r}, {sw_remote!r}"
    return sa


def both_roles(topo, run, br, name, yaml_kw, conf_kw, files, ids):
    """strongSwan initiates (espresso responds), then espresso initiates; identities and traffic each time."""
    br.load(site_conf("gw-branch", start_action="none", **conf_kw), files=files)
    run.start_ike(ike_yaml(**yaml_kw))
    br.initiate("net", timeout=30)
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY (responder)")
    assert sa["role"] == "responder", sa
    sa = check_identities(run, br, **ids)
    check_traffic_on_wire(topo, run.dir, f"{name}-resp", sa["children"][0])
    br.terminate(ike="s2s", check=False)
    wait(lambda: not ike_sas(run), 15, "espresso to drop the IKE SA after strongSwan's delete")
    run.stop_ike()

    run.start_ike(ike_yaml(start="immediately", **yaml_kw))
    br.wait_for_child("net", timeout=30)
    sa = wait(lambda: ready_sa(run), 15, "espresso IKE SA READY (initiator)")
    assert sa["role"] == "initiator", sa
    sa = check_identities(run, br, **ids)
    check_traffic_on_wire(topo, run.dir, f"{name}-init", sa["children"][0])
    run.cli("clear crypto sa")
    wait(lambda: not br.list_sas(), 15, "strongSwan to drop the IKE SA after espresso's delete")
    run.stop_ike()


def scenario_fqdn(topo, run, br):
    both_roles(topo, run, br, "fqdn",
               dict(extra_peer='      local-id: "@gw.example"\n      remote-id: "@branch.example"\n'),
               dict(local_id="@branch.example", remote_id="@gw.example"), None,
               dict(local="gw.example", local_type="fqdn", remote="branch.example", remote_type="fqdn",
                    sw_local="branch.example", sw_remote="gw.example"))


def scenario_email(topo, run, br):
    both_roles(topo, run, br, "email",
               dict(extra_peer="      local-id: hq@example.org\n      remote-id: user@example.org\n"),
               dict(local_id="user@example.org", remote_id="hq@example.org"), None,
               dict(local="hq@example.org", local_type="rfc822", remote="user@example.org", remote_type="rfc822",
                    sw_local="user@example.org", sw_remote="hq@example.org"))


def dn_pki(run, key):
    pki = make_pki(os.path.join(run.dir, f"pki-dn-{key}"), {
        "hq": {"subject": "/C=CH/O=Espresso test/CN=gw.example", "san": "DNS:gw.example"},
        # No subjectAltName: the DN is the only identity this certificate can confirm.
        "branch": {"subject": "/C=CH/O=Espresso test/CN=branch.example", "san": None},
    }, key=key)
    for p in pki.values():
        os.chmod(p["key"], 0o600)
    hq = pki["hq"]
    auth = f"{{ method: pubkey, certificate: {hq['cert']}, private-key: {hq['key']}, ca: [{hq['ca']}] }}"
    conf = dict(auth="pubkey", psk=None, cert=os.path.basename(pki["branch"]["cert"]),
                cacert=os.path.basename(pki["branch"]["ca"]),
                local_id=f'"{BRANCH_DN}"', remote_id=f'"{HQ_DN}"')
    return pki, auth, conf


def dn_scenario(topo, run, br, key):
    pki, auth, conf = dn_pki(run, key)
    both_roles(topo, run, br, f"dn-{key}",
               dict(auth=auth, extra_peer=f'      local-id: "{HQ_DN}"\n      remote-id: "{BRANCH_DN}"\n'),
               conf, pki["branch"],
               dict(local=HQ_DN, local_type="der-asn1-dn", remote=BRANCH_DN, remote_type="der-asn1-dn",
                    sw_local=BRANCH_DN, sw_remote=HQ_DN))


def scenario_dn(topo, run, br):
    dn_scenario(topo, run, br, "ec")


def scenario_dn_rsa(topo, run, br):
    dn_scenario(topo, run, br, "rsa")


def scenario_dn_mismatch(topo, run, br):
    pki, auth, conf = dn_pki(run, "ec")
    other = "C=CH, O=Espresso test, CN=other.example"
    br.load(site_conf("gw-branch", start_action="none", **conf), files=pki["branch"])
    run.start_ike(ike_yaml(auth=auth, extra_peer=f'      local-id: "{HQ_DN}"\n      remote-id: "{other}"\n'))
    r = br.initiate("net", timeout=20, check=False)
    assert r.returncode != 0, "strongSwan's initiate succeeded although espresso expects another identity"
    out = wait(lambda: (lambda t: t if "identity mismatch" in t else None)(run.cli("show crypto ike failures")), 10,
               "the identity mismatch in show crypto ike failures")
    assert f"'{BRANCH_DN}'" in out and f"'{other}'" in out and "Fix:" in out, out
    print(out, flush=True)
    assert not ready_sa(run) and not br.children("net", "INSTALLED"), "an SA came up despite the mismatch"
    assert "AUTHENTICATION_FAILED" in br.log() or "authentication" in br.log().lower(), br.log()[-2000:]
    failures = json.loads(run.cli("show crypto ike failures --json"))
    assert any("identity mismatch" in json.dumps(f) for f in failures.get("failures", failures)), failures
    run.stop_ike()
    br.terminate(ike="s2s", check=False, force=True)

    # Our own certificate does not hold the local-id: espresso-ike refuses to start and says why.
    cfg = trimmed_hq_config(run.dir, ike_yaml=ike_yaml(
        auth=auth, extra_peer=f'      local-id: "C=CH, O=Espresso test, CN=wrong.example"\n      remote-id: "{BRANCH_DN}"\n'))
    p = subprocess.run(["ip", "netns", "exec", topo.ns["gw-hq"], IKE_BIN, "--config", cfg], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2, f"espresso-ike started with a local-id its certificate does not hold ({p.returncode}):\n{p.stderr}"
    assert "local-id 'C=CH, O=Espresso test, CN=wrong.example' is not an identity of certificate" in p.stderr and \
        "CN=gw.example" in p.stderr and "Fix:" in p.stderr, p.stderr
    print(p.stderr, flush=True)
    c = subprocess.run([IKE_BIN, "--config", cfg, "--check"], capture_output=True, text=True, timeout=30)
    assert c.returncode == 2 and "is not an identity of certificate" in c.stderr, (c.returncode, c.stderr)


SCENARIOS = {"fqdn": scenario_fqdn, "email": scenario_email, "dn": scenario_dn, "dn_rsa": scenario_dn_rsa,
             "dn_mismatch": scenario_dn_mismatch}


def main():
    return run_scenarios(SCENARIOS, sys.argv[1:] or list(SCENARIOS), "espresso-ike-id-", "iki")


if __name__ == "__main__":
    sys.exit(main())
