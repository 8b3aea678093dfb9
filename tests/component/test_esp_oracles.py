#!/usr/bin/python3
"""ESP against independent implementations.

For each algorithm x mode x IP version x ESN x UDP encapsulation:
  inbound:  scapy protects N packets -> engine inbound -> must equal the plaintext bytes exactly;
  outbound: engine outbound -> headers checked, scapy (or, for what scapy lacks, Python's
            hmac/cryptography) unprotects to the original bytes; tshark verifies the ICV and the
            sequence numbers 1..N (non-ESN, non-GMAC SAs: tshark 4.0 has neither).
One engine run per algorithm and direction (every case has its own SPI and selectors).

Run: ESPRESSO_BUILD=<build dir> /usr/bin/python3 tests/component/test_esp_oracles.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import oracle  # noqa: E402
from oracle import Sa, Report  # noqa: E402

TOPOLOGIES = [  # (mode, inner family, outer family)
    ('tunnel', 4, 4), ('tunnel', 6, 6), ('tunnel', 4, 6), ('tunnel', 6, 4),
    ('transport', 4, 4), ('transport', 6, 6),
]
FULL = [(t, esn, udp) for t in TOPOLOGIES for esn in (False, True) for udp in (False, True)]
# Every topology once, every (esn, udp) combination at least once.
REDUCED = [(t, i % 4 >= 2, i % 2 == 1) for i, t in enumerate(TOPOLOGIES)]

ALGORITHMS = [  # (encryption, integrity, matrix)
    ('aes128', 'sha256', FULL),
    ('aes128gcm16', 'none', FULL),
    ('aes128gmac', 'none', FULL),
    ('aes192gcm16', 'none', REDUCED),
    ('aes256gcm16', 'none', REDUCED),
    ('aes256gmac', 'none', REDUCED),
    ('aes192', 'sha1', REDUCED),
    ('aes256', 'sha384', REDUCED),
    ('aes128', 'sha512', REDUCED),
    ('aes256', 'sha512', REDUCED),
    ('null', 'sha256', REDUCED),
    ('null', 'sha1', REDUCED),
]


def make_cases(cipher, integ, matrix, base_spi, direction):
    sas = []
    for i, ((mode, inner, outer), esn, udp) in enumerate(matrix):
        net = (base_spi >> 8) + i
        sas.append(Sa(spi=base_spi + i, direction=direction, proto='esp', mode=mode, cipher=cipher,
                      integ=integ, inner_family=inner, outer_family=outer, esn=esn, udp=udp,
                      net_id=net))
    return sas


def inbound_batch(report, wd, label, sas, linktype=oracle.LINKTYPE_RAW, burst=32):
    expected = {}
    packets = []
    for sa in sas:
        pts = oracle.plaintexts(sa, tag=sa.spi & 0xff)
        expected[sa.spi] = pts
        for seq, pt in enumerate(pts, start=1):
            packets.append(sa.protect(oracle.parse_ip(pt), seq))
    try:
        res = oracle.run_tool(wd, sas, 'inbound', packets, linktype=linktype, burst=burst,
                              name='in-' + label)
    except Exception as e:
        for sa in sas:
            report.case('inbound  %s %s' % (label, sa.name()), ['engine run failed: %s' % e])
        return
    # Attribute outputs to cases by their inner source address (unique per case).
    got = {}
    for p in res.packets:
        try:
            src = oracle.parse_ip(p).src
        except Exception:
            src = None
        got.setdefault(src, []).append(p)
    for sa in sas:
        problems = []
        mine = got.get(sa.remote_host, [])
        want = expected[sa.spi]
        if len(mine) != len(want):
            problems.append('%d packets out, expected %d; drops %s; tool %s' % (
                len(mine), len(want), res.drops(sa.spi), res.drops()))
        for i, (g, w) in enumerate(zip(mine, want)):
            d = oracle.diff_bytes(g, w)
            if d:
                problems.append('packet %d (seq %d): %s' % (i, i + 1, d))
        s = res.sa(sa.spi)
        if s is not None and s['counters'].get('decrypt', len(want)) not in (len(want), 0) \
                and sa.cipher != 'null':
            problems.append('decrypt counter %s, expected %d' % (s['counters'].get('decrypt'), len(want)))
        report.case('inbound  %s %s' % (label, sa.name()), problems)


def outbound_batch(report, wd, label, sas, linktype=oracle.LINKTYPE_RAW, burst=32):
    expected = {}
    packets = []
    for sa in sas:
        pts = oracle.plaintexts(sa, tag=sa.spi & 0xff)
        expected[sa.spi] = pts
        packets.extend(pts)
    try:
        res = oracle.run_tool(wd, sas, 'outbound', packets, linktype=linktype, burst=burst,
                              name='out-' + label)
    except Exception as e:
        for sa in sas:
            report.case('outbound %s %s' % (label, sa.name()), ['engine run failed: %s' % e])
        return
    by_spi = {}
    for p in res.packets:
        try:
            pkt = oracle.parse_ip(p)
            layer = oracle.AH if pkt.haslayer(oracle.AH) else oracle.ESP
            spi = pkt[layer].spi
        except Exception:
            spi = None
        by_spi.setdefault(spi, []).append(p)
    checkable = [sa for sa in sas if sa.tshark_can_check()]
    tshark = {}
    tshark_error = None
    if checkable and res.packets:
        try:
            tshark = oracle.tshark_check(wd, checkable, [p for sa in checkable for p in by_spi.get(sa.spi, [])],
                                         name='tshark-' + label)
        except Exception as e:
            tshark_error = str(e)
    for sa in sas:
        problems = []
        mine = by_spi.get(sa.spi, [])
        want = expected[sa.spi]
        if len(mine) != len(want):
            problems.append('%d packets out, expected %d; drops %s; tool %s' % (
                len(mine), len(want), res.drops(sa.spi), res.drops()))
        for i, (g, w) in enumerate(zip(mine, want)):
            for pr in oracle.check_outer(sa, g, i + 1):
                problems.append('packet %d: %s' % (i, pr))
            try:
                plain = sa.unprotect(g)
            except Exception as e:
                problems.append('packet %d (seq %d): oracle rejects it: %s' % (i, i + 1, e))
                continue
            d = oracle.diff_bytes(plain, w)
            if d:
                problems.append('packet %d: decrypted %s' % (i, d))
        if sa.tshark_can_check() and mine:
            if tshark_error:
                problems.append('tshark: %s' % tshark_error)
            else:
                seen = tshark.get(sa.spi, [])
                seqs = [s for s, _ in seen]
                if seqs != list(range(1, len(mine) + 1)):
                    problems.append('tshark sequence numbers %s, expected 1..%d' % (seqs, len(mine)))
                bad = [s for s, good in seen if not good]
                if bad:
                    problems.append('tshark: ICV not good for seq %s' % bad)
        s = res.sa(sa.spi)
        if s is not None and not oracle.selftest():
            c = s['counters']
            if c.get('encaps') != len(want):
                problems.append('encaps counter %s, expected %d' % (c.get('encaps'), len(want)))
        name = 'outbound %s %s' % (label, sa.name())
        if not sa.tshark_can_check():
            name += ' (no tshark: %s)' % ('AH' if sa.proto == 'ah' else 'ESN' if sa.esn else 'GMAC')
        report.case(name, problems)


def sequence_edges(report, wd):
    """Sequence numbers near 2^32 (config `initial-sequence`, a testing aid): with ESN the high half
    becomes 1 and enters the ICV/AAD (RFC 4303 section 2.2.1); without ESN the SA must stop at
    2^32 - 1 (section 3.3.3) and count seq_exhausted."""
    start = 2 ** 32 - 3
    for n, (cipher, integ, esn) in enumerate([('aes128gcm16', 'none', True), ('aes256', 'sha256', True),
                                               ('aes128gmac', 'none', True), ('aes128', 'sha1', False)]):
        sa = Sa(spi=0x50000 + n, direction='outbound', cipher=cipher, integ=integ, esn=esn,
                net_id=0x500 + n, extra_yaml={'initial-sequence': start})
        pts = oracle.plaintexts(sa, lengths=[10, 20, 30, 40, 50])[:5]

        def check(sa=sa, pts=pts, esn=esn):
            res = oracle.run_tool(wd, [sa], 'outbound', pts, name='seq-%x' % sa.spi)
            problems = []
            want_out = 5 if esn else 2
            if len(res.packets) != want_out:
                problems.append('%d packets out, expected %d; drops %s' % (len(res.packets), want_out,
                                                                           res.drops()))
            if not esn and res.drops() != {'seq_exhausted': 3}:
                problems.append('drops %s, expected seq_exhausted 3' % res.drops())
            for i, (g, w) in enumerate(zip(res.packets, pts)):
                seq = start + 1 + i
                problems += ['seq %d: %s' % (seq, p) for p in oracle.check_outer(sa, g, seq)]
                try:
                    plain = sa.unprotect(g, esn_high=seq >> 32)
                except Exception as e:
                    problems.append('seq %d (high %d): oracle rejects it: %s' % (seq, seq >> 32, e))
                    continue
                d = oracle.diff_bytes(plain, w)
                if d:
                    problems.append('seq %d: %s' % (seq, d))
            return problems
        report.run('outbound %s sequence from 2^32-2 (%s)' % (sa.name(), 'ESN wraps into high half'
                                                              if esn else 'must stop at 2^32-1'), check)


def main():
    report = Report('esp oracles')
    wd = oracle.workdir()
    try:
        for n, (cipher, integ, matrix) in enumerate(ALGORITHMS):
            label = '%s+%s' % (cipher, integ)
            base = 0x10000 + n * 0x100
            inbound_batch(report, wd, label, make_cases(cipher, integ, matrix, base, 'inbound'))
            outbound_batch(report, wd, label, make_cases(cipher, integ, matrix, base + 0x80, 'outbound'))
        # The same traffic in Ethernet pcaps, and one packet per burst.
        base = 0x20000
        sas_in = make_cases('aes256gcm16', 'none', REDUCED, base, 'inbound')
        sas_out = make_cases('aes256', 'sha256', REDUCED, base + 0x80, 'outbound')
        inbound_batch(report, wd, 'ethernet', sas_in, linktype=oracle.LINKTYPE_ETHERNET)
        outbound_batch(report, wd, 'ethernet', sas_out, linktype=oracle.LINKTYPE_ETHERNET)
        sas_in = make_cases('aes128', 'sha1', REDUCED, base + 0x100, 'inbound')
        sas_out = make_cases('aes128gcm16', 'none', REDUCED, base + 0x180, 'outbound')
        inbound_batch(report, wd, 'burst1', sas_in, burst=1)
        outbound_batch(report, wd, 'burst1', sas_out, burst=1)
        sequence_edges(report, wd)
    finally:
        oracle.cleanup(wd)
    return report.finish()


if __name__ == '__main__':
    sys.exit(main())
