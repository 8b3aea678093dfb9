#!/usr/bin/python3
"""Malformed and hostile ESP to the engine's inbound path: every truncation of a valid packet, flipped
bytes, replays, packets left of the window, unknown SPIs, wrong next headers, bad padding, and the
RFC 3948 UDP port 4500 cases that belong to the control plane. Packets are made with scapy (and the
`cryptography` package where scapy lacks GMAC), never with the engine.

Each run ends with a valid packet that must still be accepted: a bad packet must not move the replay
window or leave other state behind.

Run: ESPRESSO_BUILD=<build dir> /usr/bin/python3 tests/component/test_esp_negative.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import oracle  # noqa: E402
from oracle import Sa, Report, IP, IPv6, UDP, Raw, raw  # noqa: E402

SAS = [  # (encryption, integrity, mode, family, udp)
    ('aes128gcm16', 'none', 'tunnel', 4, False),
    ('aes128', 'sha256', 'tunnel', 4, False),
    ('aes256gmac', 'none', 'tunnel', 6, False),
    ('null', 'sha1', 'tunnel', 4, False),
    ('aes256', 'sha512', 'transport', 6, True),
    ('aes128gcm16', 'none', 'transport', 4, True),
]

TRUNCATION_REASONS = {'truncated', 'bad_length', 'bad_ip', 'bad_udp', 'icv', 'bad_padding',
                      'malformed:truncated', 'malformed:bad_length', 'malformed:bad_ip',
                      'malformed:bad_udp', 'not_ipsec'}


def plain(sa, i=0):
    return oracle.plaintexts(sa, lengths=[40 + i])[0]


def protect(sa, seq, i=None):
    return sa.protect(oracle.parse_ip(plain(sa, seq if i is None else i)), seq)


def run(wd, sa, packets, name):
    return oracle.run_tool(wd, [sa], 'inbound', packets, name=name)


def expect(res, written, drops, last_plain=None):
    """drops: {name: count} that must match exactly (SA drops + tool counts)."""
    problems = []
    got = res.drops()
    if got != drops:
        problems.append('drops %s, expected %s' % (got, drops))
    if len(res.packets) != written:
        problems.append('%d packets written, expected %d' % (len(res.packets), written))
    if last_plain is not None and res.packets:
        d = oracle.diff_bytes(res.packets[-1], last_plain)
        if d:
            problems.append('last (valid) packet: %s' % d)
    return problems


def set_ip_length(data, n):
    """Truncates to n bytes and makes the IP length field (and checksum) say so."""
    b = bytearray(data[:n])
    if b[0] >> 4 == 4:
        b[2:4] = n.to_bytes(2, 'big')
        b[10:12] = b'\x00\x00'
        ihl = (b[0] & 0xf) * 4
        s = sum(int.from_bytes(b[i:i + 2], 'big') for i in range(0, ihl, 2))
        while s > 0xffff:
            s = (s & 0xffff) + (s >> 16)
        b[10:12] = (~s & 0xffff).to_bytes(2, 'big')
    else:
        b[4:6] = (n - 40).to_bytes(2, 'big')
    return bytes(b)


def ip_header_bytes(data):
    return (data[0] & 0xf) * 4 if data[0] >> 4 == 4 else 40


def fix_udp_length(data):
    """After set_ip_length cut an ESP-in-UDP packet, make the UDP length agree too."""
    hl = ip_header_bytes(data)
    if len(data) >= hl + 8:
        b = bytearray(data)
        b[hl + 4:hl + 6] = (len(data) - hl).to_bytes(2, 'big')
        b[hl + 6:hl + 8] = b'\x00\x00'
        return bytes(b)
    return data


def cases_for(report, wd, n, cipher, integ, mode, fam, udp):
    sa = Sa(spi=0x40000 + n, direction='inbound', cipher=cipher, integ=integ, mode=mode,
            inner_family=fam, outer_family=fam, udp=udp, replay_window=128, net_id=0x400 + n)
    label = sa.name()

    def truncations_raw():
        good = protect(sa, 1)
        pkts = [good[:t] for t in range(len(good))] + [good]
        res = run(wd, sa, pkts, 'trunc-raw')
        problems = []
        if len(res.packets) != 1 or oracle.diff_bytes(res.packets[0], plain(sa, 1)):
            problems.append('valid packet after %d truncations: %d written' % (len(good), len(res.packets)))
        d = res.drops()
        total = sum(d.values())
        if total != len(good):
            problems.append('%d truncated packets, %d counted: %s' % (len(good), total, d))
        extra = set(d) - TRUNCATION_REASONS
        if extra:
            problems.append('unexpected reasons %s in %s' % (extra, d))
        if not problems:
            report.note('reasons: %s' % d)
        return problems

    def truncations_consistent():
        good = protect(sa, 1)
        hl = ip_header_bytes(good)
        pkts = []
        for t in range(hl, len(good)):
            p = set_ip_length(good, t)
            if udp:
                p = fix_udp_length(p)
            pkts.append(p)
        res = run(wd, sa, pkts + [good], 'trunc-len')
        problems = []
        if len(res.packets) != 1 or oracle.diff_bytes(res.packets[0], plain(sa, 1)):
            problems.append('valid packet after %d truncations: %d written' % (len(pkts), len(res.packets)))
        d = res.drops()
        if sum(d.values()) != len(pkts):
            problems.append('%d truncated packets, %d counted: %s' % (len(pkts), sum(d.values()), d))
        extra = set(d) - TRUNCATION_REASONS
        if extra:
            problems.append('unexpected reasons %s in %s' % (extra, d))
        if not problems:
            report.note('reasons: %s' % d)
        return problems

    def flipped():
        pkts = []
        # byte in the encrypted payload (or, for NULL/GMAC, the authenticated payload)
        b = bytearray(protect(sa, 1))
        b[len(b) - sa.icv_bytes - 6] ^= 0x40
        pkts.append(bytes(b))
        # last ICV byte
        b = bytearray(protect(sa, 2))
        b[-1] ^= 0x01
        pkts.append(bytes(b))
        # sequence number (authenticated): seq 3 becomes 3 | 1 << 24
        b = bytearray(protect(sa, 3))
        off = ip_header_bytes(b) + (8 if udp else 0) + 4
        b[off] ^= 0x01
        pkts.append(bytes(b))
        pkts.append(protect(sa, 4))
        return expect(run(wd, sa, pkts, 'flip'), 1, {'icv': 3}, plain(sa, 4))

    def replay():
        pkts = [protect(sa, 1), protect(sa, 2), protect(sa, 1), protect(sa, 2), protect(sa, 3)]
        return expect(run(wd, sa, pkts, 'replay'), 3, {'replay': 2}, plain(sa, 3))

    def replay_in_one_burst():
        p = protect(sa, 5)
        return expect(run(wd, sa, [p, p, p], 'replay-burst'), 1, {'replay': 2}, plain(sa, 5))

    def too_old():
        pkts = [protect(sa, 300), protect(sa, 100), protect(sa, 172), protect(sa, 250)]
        # window 128 with top 300: 172 is the lowest acceptable (300 - 128 + 1 = 173 if the window
        # holds exactly 128 numbers), so accept either outcome for 172 but require 100 too_old.
        res = run(wd, sa, pkts, 'old')
        d = res.drops()
        problems = []
        if d.get('too_old', 0) not in (1, 2) or set(d) - {'too_old'}:
            problems.append('drops %s, expected too_old for seq 100 (and maybe 172)' % d)
        if len(res.packets) != 4 - d.get('too_old', 0):
            problems.append('%d written' % len(res.packets))
        if res.packets and oracle.diff_bytes(res.packets[-1], plain(sa, 250)):
            problems.append('seq 250 not accepted after seq 300')
        return problems

    def unknown_spi():
        other = Sa(spi=0x4ffff, direction='inbound', cipher=cipher, integ=integ, mode=mode,
                   inner_family=fam, outer_family=fam, udp=udp, net_id=0x400 + n)
        pkts = [other.protect(oracle.parse_ip(plain(sa)), 1), protect(sa, 1)]
        return expect(run(wd, sa, pkts, 'spi'), 1, {'no_sa': 1}, plain(sa, 1))

    report.run('%s truncated (IP length kept)' % label, truncations_raw)
    report.run('%s truncated (IP length adjusted)' % label, truncations_consistent)
    report.run('%s flipped payload/ICV/sequence -> icv' % label, flipped)
    report.run('%s replayed -> replay' % label, replay)
    report.run('%s same packet 3x in one burst -> replay' % label, replay_in_one_burst)
    report.run('%s left of window -> too_old' % label, too_old)
    report.run('%s unknown SPI -> no_sa' % label, unknown_spi)

    if mode != 'tunnel' or udp:
        return

    inner4 = plain(sa)

    def next_header(nh, inner, allowed):
        def f():
            pkts = [oracle.build_esp(sa, 1, inner, nh), oracle.build_esp(sa, 2, plain(sa, 2), 4 if fam == 4 else 41)]
            res = run(wd, sa, pkts, 'nh%d' % nh)
            d = res.drops()
            problems = []
            if len(d) != 1 or list(d.values()) != [1] or list(d)[0] not in allowed:
                problems.append('drops %s, expected one of %s' % (d, sorted(allowed)))
            if len(res.packets) != 1 or oracle.diff_bytes(res.packets[0], plain(sa, 2)):
                problems.append('valid packet after it: %d written' % len(res.packets))
            return problems
        return f

    if fam == 4:
        v6 = raw(IPv6(src='fd00::1', dst='fd00::2') / UDP(sport=40000, dport=40001) / Raw(b'x' * 20))
        report.run('%s next header 6 in tunnel mode -> bad_next_header' % label,
                   next_header(6, inner4, {'bad_next_header'}))
        report.run('%s next header 4 carrying IPv6 -> bad_ip/bad_next_header' % label,
                   next_header(4, v6, {'bad_ip', 'bad_next_header'}))
    report.run('%s next header 59 (dummy, RFC 4303 2.6) -> dropped' % label,
               next_header(59, inner4, {'dummy', 'bad_next_header'}))

    def bad_padding(kind):
        def f():
            from scapy.layers.ipsec import _ESPPlain
            probe = sa.scapy_sa().crypt_algo.pad(_ESPPlain(spi=sa.spi, seq=1, iv=b'', data=inner4, nh=4))
            n_pad = len(probe.padding)
            align = 16 if sa.kind == 'cbc' else 4
            if n_pad == 0:
                n_pad = align
            if kind == 'bytes':
                p = oracle.build_esp(sa, 1, inner4, 4, padding=b'\x00' * n_pad)
                allowed = {'bad_padding'}
            else:
                # pad length byte larger than the whole payload
                p = oracle.build_esp(sa, 1, inner4, 4, padding=bytes(range(1, n_pad + 1)), padlen=250)
                allowed = {'bad_padding', 'bad_length'}
            res = run(wd, sa, [p, protect(sa, 2)], 'pad-' + kind)
            d = res.drops()
            problems = []
            if len(d) != 1 or list(d.values()) != [1] or list(d)[0] not in allowed:
                problems.append('drops %s, expected one of %s' % (d, sorted(allowed)))
            if len(res.packets) != 1 or oracle.diff_bytes(res.packets[0], plain(sa, 2)):
                problems.append('valid packet after it: %d written' % len(res.packets))
            return problems
        return f

    report.run('%s padding bytes not 1,2,3.. -> bad_padding' % label, bad_padding('bytes'))
    report.run('%s pad length beyond payload -> bad_padding/bad_length' % label, bad_padding('length'))


def udp_control_cases(report, wd):
    sa = Sa(spi=0x41000, direction='inbound', cipher='aes128gcm16', integ='none', mode='tunnel',
            udp=True, net_id=0x4f0)
    outer = IP(src=sa.outer_src, dst=sa.outer_dst)
    ike = b'\x00\x00\x00\x00' + bytes(range(28))  # non-ESP marker + IKE header-sized junk

    def one(name, pkt, want):
        def f():
            res = run(wd, sa, [pkt, protect(sa, 1)], 'udp-' + name)
            return expect(res, 1, want, plain(sa, 1))
        return f

    report.run('UDP 4500 non-ESP marker (IKE) -> to_control_plane',
               one('ike', raw(outer / UDP(sport=4500, dport=4500) / Raw(ike)), {'to_control_plane': 1}))
    report.run('UDP 4500 NAT keepalive 0xFF -> to_control_plane',
               one('keepalive', raw(outer / UDP(sport=4500, dport=4500, chksum=0) / Raw(b'\xff')),
                   {'to_control_plane': 1}))
    v6 = IPv6(src=oracle.V6_OUTER[1], dst=oracle.V6_OUTER[0])
    report.run('UDP 4500 NAT keepalive 0xFF over IPv6 -> to_control_plane',
               one('keepalive6', raw(v6 / UDP(sport=4500, dport=4500) / Raw(b'\xff')),
                   {'to_control_plane': 1}))

    def malformed(name, pkt):
        def f():
            res = run(wd, sa, [pkt, protect(sa, 1)], 'udp-' + name)
            d = res.drops()
            problems = []
            if sum(d.values()) != 1 or not all(k.startswith('malformed:') or k in
                                               ('bad_udp', 'truncated', 'bad_length', 'to_control_plane')
                                               for k in d):
                problems.append('drops %s, expected one malformed (bad_udp/truncated/bad_length)' % d)
            if len(res.packets) != 1:
                problems.append('valid packet after it: %d written' % len(res.packets))
            if not problems:
                report.note(str(d))
            return problems
        return f

    report.run('UDP 4500 with 3-byte payload (no SPI) -> malformed',
               malformed('short', raw(outer / UDP(sport=4500, dport=4500, chksum=0) / Raw(b'\x01\x02\x03'))))
    b = bytearray(raw(outer / UDP(sport=4500, dport=4500, chksum=0) / Raw(b'\x00\x01')))
    b = set_ip_length(bytes(b), 20 + 6)  # UDP header cut short
    report.run('UDP header cut to 6 bytes -> malformed', malformed('cut', b))
    b = bytearray(protect(sa, 7))
    b[24:26] = (int.from_bytes(b[24:26], 'big') + 40).to_bytes(2, 'big')  # UDP length > IP payload
    report.run('UDP length larger than the IP payload -> malformed', malformed('udplen', bytes(b)))


def main():
    report = Report('esp negative')
    wd = oracle.workdir()
    try:
        for n, spec in enumerate(SAS):
            cases_for(report, wd, n, *spec)
        udp_control_cases(report, wd)
    finally:
        oracle.cleanup(wd)
    return report.finish()


if __name__ == '__main__':
    sys.exit(main())
