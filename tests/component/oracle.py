"""Shared harness for the component tests: SAs described once, protected/unprotected by independent
implementations (scapy's ESP/AH, the `cryptography` package for what scapy 2.5 lacks, tshark), and
the engine driven through tests/tools/espresso-esp-pcap.

Independent oracles, and where each one is used:
  - scapy SecurityAssociation: ESP AES-CBC/AES-GCM/NULL with HMAC, AH with HMAC (incl. ESN for AH
    and for AES-GCM, whose AAD scapy builds per RFC 4106 section 5).
  - scapy 2.5 does not put the ESN high bits into the ESP HMAC (RFC 4303 section 3.3.2.1 says they
    are part of the ICV input) and has no ENCR_NULL_AUTH_AES_GMAC (RFC 4543): for those, scapy still
    builds the headers, padding and (for CBC) the ciphertext, and this module computes the ICV with
    Python's hmac / cryptography's AESGCM.
  - tshark 4.0: ESP decryption + ICV check for non-ESN, non-GMAC SAs.

Environment:
  ESPRESSO_BUILD            build dir containing tests/tools/espresso-esp-pcap
  ESPRESSO_ORACLE_SELFTEST  =1: replace the engine by this module's own protect/unprotect, to check the
                            oracles against each other (scapy vs tshark) without the engine.
"""
import hashlib
import hmac
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback

import logging
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import (IP, IPv6, UDP, TCP, ICMP, Raw, ICMPv6EchoRequest, bind_layers, raw,  # noqa: E402
                       conf)
from scapy.layers.ipsec import SecurityAssociation, ESP, AH, CRYPT_ALGOS  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.exceptions import InvalidTag  # noqa: E402

bind_layers(UDP, ESP, dport=4500)
bind_layers(UDP, ESP, sport=4500)

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101

# name in our config -> (kind, AES key bytes)
CIPHERS = {
    'aes128gcm16': ('gcm', 16), 'aes192gcm16': ('gcm', 24), 'aes256gcm16': ('gcm', 32),
    'aes128gmac': ('gmac', 16), 'aes192gmac': ('gmac', 24), 'aes256gmac': ('gmac', 32),
    'aes128': ('cbc', 16), 'aes192': ('cbc', 24), 'aes256': ('cbc', 32),
    'null': ('null', 0),
}
SCAPY_CRYPT = {'gcm': 'AES-GCM', 'cbc': 'AES-CBC', 'null': 'NULL', 'gmac': 'NULL'}
TSHARK_CRYPT = {'gcm': 'AES-GCM with 16 octet ICV [RFC4106]', 'cbc': 'AES-CBC [RFC3602]', 'null': 'NULL'}
# name -> (scapy name, key bytes, ICV bytes, hashlib constructor, tshark name)
INTEGS = {
    'none': ('NULL', 0, 0, None, 'NULL'),
    'sha1': ('HMAC-SHA1-96', 20, 12, hashlib.sha1, 'HMAC-SHA-1-96 [RFC2404]'),
    'sha256': ('SHA2-256-128', 32, 16, hashlib.sha256, 'HMAC-SHA-256-128 [RFC4868]'),
    'sha384': ('SHA2-384-192', 48, 24, hashlib.sha384, 'HMAC-SHA-384-192 [RFC4868]'),
    'sha512': ('SHA2-512-256', 64, 32, hashlib.sha512, 'HMAC-SHA-512-256 [RFC4868]'),
}

V4_OUTER = ('198.51.100.1', '203.0.113.1')        # (us, peer)
V6_OUTER = ('2001:db8:100::1', '2001:db8:113::1')


class IntegrityError(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# SAs


class Sa:
    """One SA as both our YAML and the oracles see it.

    `direction` is ours: outbound = we protect (engine outbound, oracle unprotects); inbound = the
    oracle protects, the engine unprotects. Addresses: `outer` = (our address, peer address); inner
    traffic goes between `local_net` (ours) and `remote_net` (the peer's).
    """

    def __init__(self, spi, direction, proto='esp', mode='tunnel', cipher='aes128gcm16', integ='none',
                 outer_family=4, inner_family=4, esn=False, udp=False, replay_window=128, net_id=1,
                 rng=None, extra_yaml=None):
        rng = rng or random.Random(spi)
        self.spi = spi
        self.direction = direction
        self.proto = proto
        self.mode = mode
        self.cipher = cipher if proto == 'esp' else 'null'
        self.integ = integ
        self.kind, key_bytes = CIPHERS[self.cipher]
        salt = 4 if self.kind in ('gcm', 'gmac') else 0
        self.ckey = bytes(rng.getrandbits(8) for _ in range(key_bytes + salt))
        self.ikey = bytes(rng.getrandbits(8) for _ in range(INTEGS[integ][1]))
        self.esn = esn
        self.udp = udp
        self.replay_window = replay_window
        self.extra_yaml = extra_yaml or {}
        if mode == 'transport':
            outer_family = inner_family
        self.outer_family = outer_family
        self.inner_family = inner_family
        n = net_id
        if inner_family == 4:
            self.local_host = '10.%d.%d.10' % (n // 250, n % 250 + 1)
            self.remote_host = '172.16.%d.%d' % (n // 250, n % 250 + 1)
            self.local_net = '10.%d.%d.0/24' % (n // 250, n % 250 + 1)
            self.remote_net = '172.16.%d.%d/32' % (n // 250, n % 250 + 1)
        else:
            self.local_host = 'fd00:%x:1::10' % n
            self.remote_host = 'fd00:%x:2::20' % n
            self.local_net = 'fd00:%x:1::/64' % n
            self.remote_net = 'fd00:%x:2::20/128' % n
        if mode == 'transport':
            # The IPsec endpoints are the hosts themselves.
            self.ours, self.peers = self.local_host, self.remote_host
            self.local_net = self.local_host + ('/32' if inner_family == 4 else '/128')
            self.remote_net = self.remote_host + ('/32' if inner_family == 4 else '/128')
        else:
            self.ours, self.peers = V4_OUTER if outer_family == 4 else V6_OUTER

    # The sender's and receiver's outer addresses.
    @property
    def outer_src(self):
        return self.ours if self.direction == 'outbound' else self.peers

    @property
    def outer_dst(self):
        return self.peers if self.direction == 'outbound' else self.ours

    @property
    def icv_bytes(self):
        if self.kind in ('gcm', 'gmac'):
            return 16
        return INTEGS[self.integ][2]

    def name(self):
        parts = [self.proto, self.cipher if self.proto == 'esp' else '', self.integ, self.mode,
                 '%din%d' % (self.inner_family, self.outer_family) if self.mode == 'tunnel'
                 else 'v%d' % self.inner_family,
                 'esn' if self.esn else 'noesn', 'udp' if self.udp else '']
        return '-'.join(p for p in parts if p)

    def yaml(self):
        lines = ['  - spi: 0x%08x' % self.spi,
                 '    direction: %s' % self.direction,
                 '    protocol: %s' % self.proto,
                 '    mode: %s' % self.mode,
                 '    source: %s' % self.outer_src,
                 '    destination: %s' % self.outer_dst]
        if self.proto == 'esp':
            lines.append('    encryption: %s' % self.cipher)
            if self.ckey:
                lines.append('    key: 0x%s' % self.ckey.hex())
        lines.append('    integrity: %s' % self.integ)
        if self.ikey:
            lines.append('    integrity-key: 0x%s' % self.ikey.hex())
        lines.append('    esn: %s' % ('true' if self.esn else 'false'))
        lines.append('    replay-window: %d' % self.replay_window)
        if self.udp:
            lines.append('    udp-encapsulation: { source-port: 4500, destination-port: 4500 }')
        if self.direction == 'outbound':
            lines.append('    selectors: { local: %s, remote: %s }' % (self.local_net, self.remote_net))
        else:
            lines.append('    selectors: { local: %s, remote: %s }' % (self.local_net, self.remote_net))
        for k, v in self.extra_yaml.items():
            lines.append('    %s: %s' % (k, v))
        return '\n'.join(lines) + '\n'

    # Plaintext traffic in the protected direction.
    def inner_src(self):
        return self.local_host if self.direction == 'outbound' else self.remote_host

    def inner_dst(self):
        return self.remote_host if self.direction == 'outbound' else self.local_host

    def _tunnel_header(self):
        if self.mode != 'tunnel':
            return None
        if self.outer_family == 4:
            return IP(src=self.outer_src, dst=self.outer_dst)
        return IPv6(src=self.outer_src, dst=self.outer_dst)

    def _custom_icv(self):
        # ESP + HMAC + ESN: scapy leaves the ESN high bits out of the ICV; we compute it.
        return self.proto == 'esp' and self.esn and self.integ != 'none'

    def scapy_sa(self, seq=1, for_decrypt=False):
        th = self._tunnel_header()
        if self.proto == 'ah':
            return SecurityAssociation(AH, spi=self.spi, seq_num=seq, auth_algo=INTEGS[self.integ][0],
                                       auth_key=self.ikey, tunnel_header=th, esn_en=self.esn, esn=0)
        auth = 'NULL' if (self._custom_icv() or self.integ == 'none') else INTEGS[self.integ][0]
        nat = None
        if self.udp and not for_decrypt:
            nat = UDP(sport=4500, dport=4500)
        return SecurityAssociation(ESP, spi=self.spi, seq_num=seq, crypt_algo=SCAPY_CRYPT[self.kind],
                                   crypt_key=self.ckey if self.kind in ('gcm', 'cbc') else None,
                                   auth_algo=auth, auth_key=self.ikey if auth != 'NULL' else None,
                                   tunnel_header=th, nat_t_header=nat, esn_en=self.esn, esn=0)

    # ---- oracle protect: plaintext IP packet (scapy) -> protected packet bytes ------------------
    def protect(self, pkt, seq, esn_high=0):
        s = self.scapy_sa(seq)
        if self.proto == 'ah':
            return raw(s.encrypt(pkt, seq_num=seq, esn_en=self.esn, esn=esn_high))
        p = s.encrypt(pkt, seq_num=seq, esn_en=self.esn, esn=esn_high)
        esp = p[ESP]
        if self.kind == 'gmac':
            iv = bytes(random.getrandbits(8) for _ in range(8))
            esp.data = iv + esp.data + gmac_tag(self, esp.spi, esp.seq, esn_high, iv, esp.data)
        elif self._custom_icv():
            esp.data = esp.data + hmac_icv(self, raw(esp), esn_high)
        return fix_lengths(p)

    # ---- oracle unprotect: protected packet bytes -> plaintext bytes (raises on bad ICV) ---------
    def unprotect(self, data, esn_high=0):
        pkt = parse_ip(data)
        if self.udp and self.proto == 'esp':
            pkt = strip_udp_encap(pkt)
        s = self.scapy_sa(for_decrypt=True)
        if self.proto == 'ah':
            return raw(s.decrypt(pkt, esn_en=self.esn, esn=esn_high))
        esp = pkt[ESP]
        if esp.spi != self.spi:
            raise IntegrityError('SPI 0x%08x, expected 0x%08x' % (esp.spi, self.spi))
        if self.kind == 'gmac':
            d = esp.data
            if len(d) < 8 + 16:
                raise IntegrityError('too short for GMAC')
            iv, body, tag = d[:8], d[8:-16], d[-16:]
            if gmac_tag(self, esp.spi, esp.seq, esn_high, iv, body) != tag:
                raise IntegrityError('GMAC tag mismatch')
            esp.data = body
        elif self._custom_icv():
            n = self.icv_bytes
            body, icv = esp.data[:-n], esp.data[-n:]
            esp.data = body
            if hmac_icv(self, raw(esp), esn_high) != icv:
                raise IntegrityError('HMAC (ESN) mismatch')
        try:
            return raw(s.decrypt(pkt, esn_en=self.esn, esn=esn_high))
        except Exception as e:  # scapy raises IPSecIntegrityError
            raise IntegrityError('%s: %s' % (type(e).__name__, e))

    def tshark_uat(self):
        fam = 'IPv4' if self.outer_family == 4 else 'IPv6'
        ikey = ('0x' + self.ikey.hex()) if self.ikey else ''
        return 'uat:esp_sa:"%s","*","*","0x%08x","%s","0x%s","%s","%s"' % (
            fam, self.spi, TSHARK_CRYPT[self.kind], self.ckey.hex(), INTEGS[self.integ][4], ikey)

    def tshark_can_check(self):
        return self.proto == 'esp' and not self.esn and self.kind != 'gmac'


def hmac_icv(sa, esp_bytes, esn_high):
    data = esp_bytes + (struct.pack('!I', esn_high) if sa.esn else b'')
    return hmac.new(sa.ikey, data, INTEGS[sa.integ][3]).digest()[:INTEGS[sa.integ][2]]


def gmac_tag(sa, spi, seq, esn_high, iv, payload):
    # RFC 4543 section 3.2 and 5: nonce = salt || IV; AAD = SPI, (ESN high,) seq, IV, payload+trailer.
    key, salt = sa.ckey[:-4], sa.ckey[-4:]
    seq_part = struct.pack('!II', esn_high, seq) if sa.esn else struct.pack('!I', seq)
    aad = struct.pack('!I', spi) + seq_part + iv + payload
    return AESGCM(key).encrypt(salt + iv, b'', aad)


def parse_ip(data):
    if not data:
        raise ValueError('empty packet')
    return IP(data) if data[0] >> 4 == 4 else IPv6(data)


def fix_lengths(p):
    """Rebuilds the outer IP (and NAT-T UDP) lengths/checksum after the ESP data changed, and fixes
    scapy 2.5's UDP length of 8 with nat_t_header."""
    if p.haslayer(UDP) and p[UDP].payload.__class__ is ESP:
        p[UDP].len = 8 + len(raw(p[UDP].payload))
        p[UDP].chksum = 0
    if p.version == 4:
        del p.len
        del p.chksum
    else:
        del p.plen
    return raw(p)


def strip_udp_encap(pkt):
    """RFC 3948: checks the UDP header and returns the packet as plain ESP (scapy's IPv6 transport
    decrypt does not cope with the UDP header)."""
    udp = pkt[UDP]
    payload = raw(udp.payload)
    if udp.dport != 4500 or udp.sport != 4500:
        raise IntegrityError('UDP ports %d->%d, expected 4500->4500' % (udp.sport, udp.dport))
    if udp.len != 8 + len(payload):
        raise IntegrityError('UDP length %d, expected %d' % (udp.len, 8 + len(payload)))
    if pkt.version == 4 and udp.chksum != 0:
        raise IntegrityError('UDP checksum 0x%04x, expected 0 (RFC 3948 section 2.1)' % udp.chksum)
    if pkt.version == 6 and udp.chksum != 0:
        # IPv6 forbids a zero UDP checksum except under RFC 6935/6936: a real one must be right.
        check = pkt.copy()
        del check[UDP].chksum
        want = IPv6(raw(check))[UDP].chksum
        if udp.chksum != want:
            raise IntegrityError('UDP/IPv6 checksum 0x%04x, expected 0x%04x' % (udp.chksum, want))
    if pkt.version == 4:
        hdr = IP(raw(pkt)[:pkt.ihl * 4])
        hdr.proto = 50
        del hdr.len
        del hdr.chksum
        return IP(raw(hdr / ESP(payload)))
    if pkt[UDP].underlayer.__class__ is not IPv6:
        raise IntegrityError('IPv6 extension headers before UDP: not expected here')
    hdr = IPv6(raw(pkt)[:40])
    hdr.nh = 50
    del hdr.plen
    return IPv6(raw(hdr / ESP(payload)))


def check_outer(sa, data, seq):
    """Header checks on a packet we protected: outer addresses, protocol, lengths, checksum, SPI, seq.
    Returns a list of problems."""
    problems = []
    pkt = parse_ip(data)
    if pkt.version != sa.outer_family:
        return ['outer IP version %d, expected %d' % (pkt.version, sa.outer_family)]
    if pkt.src != sa.outer_src or pkt.dst != sa.outer_dst:
        problems.append('outer %s->%s, expected %s->%s' % (pkt.src, pkt.dst, sa.outer_src, sa.outer_dst))
    if pkt.version == 4:
        if pkt.len != len(data):
            problems.append('IPv4 total length %d, packet %d' % (pkt.len, len(data)))
        c = pkt.chksum
        rebuilt = IP(raw(pkt)[:pkt.ihl * 4])
        del rebuilt.chksum
        if IP(raw(rebuilt)).chksum != c:
            problems.append('IPv4 header checksum 0x%04x wrong' % c)
        proto = pkt.proto
    else:
        if pkt.plen != len(data) - 40:
            problems.append('IPv6 payload length %d, packet %d' % (pkt.plen, len(data)))
        proto = pkt.nh
    want = 17 if (sa.udp and sa.proto == 'esp') else (51 if sa.proto == 'ah' else 50)
    if proto != want:
        problems.append('protocol %d, expected %d' % (proto, want))
    layer = AH if sa.proto == 'ah' else ESP
    if pkt.haslayer(layer):
        if pkt[layer].spi != sa.spi:
            problems.append('SPI 0x%08x, expected 0x%08x' % (pkt[layer].spi, sa.spi))
        if pkt[layer].seq != seq & 0xffffffff:
            problems.append('sequence %d, expected %d' % (pkt[layer].seq, seq))
    else:
        problems.append('no %s layer' % layer.__name__)
    return problems


# ------------------------------------------------------------------------------------------------
# Traffic


PAYLOAD_LENGTHS = [0, 1, 2, 3, 4, 5, 15, 16, 17, 31, 63, 100, 255, 256, 1000, 1399, 1400]


def plaintexts(sa, lengths=PAYLOAD_LENGTHS, tag=0):
    """UDP packets of varied lengths on unassigned ports, one TCP, one ICMP echo; unique payloads."""
    src, dst = sa.inner_src(), sa.inner_dst()
    v4 = sa.inner_family == 4
    out = []

    def ip(i):
        if v4:
            return IP(src=src, dst=dst, id=(sa.spi + i) & 0xffff, ttl=63, tos=0x20 if i % 2 else 0,
                      flags='DF' if i % 3 == 0 else 0)
        return IPv6(src=src, dst=dst, hlim=63, tc=0x20 if i % 2 else 0, fl=i)

    for i, n in enumerate(lengths):
        payload = bytes((i * 31 + j + tag) & 0xff for j in range(n))
        out.append(raw(ip(i) / UDP(sport=40000, dport=40001) / Raw(payload)))
    out.append(raw(ip(90) / TCP(sport=40002, dport=40003, flags='PA', seq=1000, ack=2000) / Raw(b'tcp data')))
    if v4:
        out.append(raw(ip(91) / ICMP(type=8, id=7, seq=1) / Raw(b'ping' * 8)))
    else:
        out.append(raw(ip(91) / ICMPv6EchoRequest(id=7, seq=1, data=b'ping' * 8)))
    return out


# ------------------------------------------------------------------------------------------------
# pcap files (written/read here so the link type is exactly what we ask for)


def write_pcap(path, packets, linktype=LINKTYPE_RAW):
    with open(path, 'wb') as f:
        f.write(struct.pack('<IHHiIII', 0xa1b2c3d4, 2, 4, 0, 0, 65535, linktype))
        for i, p in enumerate(packets):
            if linktype == LINKTYPE_ETHERNET:
                et = b'\x86\xdd' if p and p[0] >> 4 == 6 else b'\x08\x00'
                p = bytes.fromhex('020000000001' '020000000002') + et + p
            f.write(struct.pack('<IIII', 1000 + i, 0, len(p), len(p)))
            f.write(p)


def read_pcap(path):
    """Returns (linktype, [frame bytes])."""
    with open(path, 'rb') as f:
        data = f.read()
    magic = struct.unpack('<I', data[:4])[0]
    endian = '<' if magic in (0xa1b2c3d4, 0xa1b23c4d) else '>'
    linktype = struct.unpack(endian + 'I', data[20:24])[0]
    off, out = 24, []
    while off + 16 <= len(data):
        _, _, caplen, _ = struct.unpack(endian + 'IIII', data[off:off + 16])
        off += 16
        out.append(data[off:off + caplen])
        off += caplen
    return linktype, out


# ------------------------------------------------------------------------------------------------
# The engine under test


def tool_path():
    build = os.environ.get('ESPRESSO_BUILD', '')
    return os.path.join(build, 'tests', 'tools', 'espresso-esp-pcap')


def selftest():
    return os.environ.get('ESPRESSO_ORACLE_SELFTEST') == '1'


class ToolResult:
    def __init__(self, packets, summary, rc, stderr):
        self.packets = packets
        self.summary = summary
        self.rc = rc
        self.stderr = stderr

    def sa(self, spi):
        for s in self.summary.get('sas', []):
            if s['spi'] == spi:
                return s
        return None

    def drops(self, spi=None):
        """Non-zero drop counters of one SA, or of all SAs plus the tool-level counts."""
        out = {}
        sas = [self.sa(spi)] if spi is not None else self.summary.get('sas', [])
        for s in sas:
            if s is None:
                continue
            for k, v in s['drops'].items():
                if v:
                    out[k] = out.get(k, 0) + v
        if spi is None:
            for k in ('no_policy', 'no_sa', 'to_control_plane', 'not_ipsec', 'not_ip'):
                if self.summary.get(k):
                    out[k] = self.summary[k]
            for k, v in self.summary.get('malformed', {}).items():
                out['malformed:' + k] = v
        return out


def run_tool(workdir, sas, direction, packets, linktype=LINKTYPE_RAW, burst=32, name='run'):
    """Writes the config and the input pcap, runs the engine (or, in self-test mode, this module's
    oracle), returns a ToolResult with the output IP packets (L2 stripped)."""
    cfg = os.path.join(workdir, name + '.yaml')
    inp = os.path.join(workdir, name + '-in.pcap')
    out = os.path.join(workdir, name + '-out.pcap')
    with open(cfg, 'w') as f:
        f.write('security-associations:\n')
        for sa in sas:
            f.write(sa.yaml())
    write_pcap(inp, packets, linktype)
    if selftest():
        return _fake_tool(sas, direction, packets)
    cmd = [tool_path(), '--config', cfg, '--direction', direction, '--in', inp, '--out', out,
           '--burst', str(burst), '--json']
    p = subprocess.run(cmd, capture_output=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError('%s exited %d: %s' % (' '.join(cmd), p.returncode,
                                                  p.stderr.decode(errors='replace')[-2000:]))
    try:
        summary = json.loads(p.stdout.decode())
    except ValueError:
        raise RuntimeError('bad JSON from the tool: %r' % p.stdout[-2000:])
    lt, frames = read_pcap(out)
    if lt != linktype:
        raise RuntimeError('output link type %d, input %d' % (lt, linktype))
    if linktype == LINKTYPE_ETHERNET:
        stripped = []
        for fr in frames:
            want = b'\x86\xdd' if len(fr) > 14 and fr[14] >> 4 == 6 else b'\x08\x00'
            if fr[:12] != bytes.fromhex('020000000001' '020000000002') or fr[12:14] != want:
                raise RuntimeError('bad Ethernet header %s' % fr[:14].hex())
            stripped.append(fr[14:])
        frames = stripped
    if summary.get('written') != len(frames):
        raise RuntimeError('summary says %s written, pcap has %d' % (summary.get('written'), len(frames)))
    return ToolResult(frames, summary, p.returncode, p.stderr.decode(errors='replace'))


def _fake_tool(sas, direction, packets):
    """Self-test stand-in for the engine: the oracle's own protect/unprotect."""
    out = []
    seqs = {}
    summary = {'read': len(packets), 'sas': [], 'no_policy': 0, 'no_sa': 0}
    mine = [s for s in sas if s.direction == direction]
    for data in packets:
        pkt = parse_ip(data)
        if direction == 'outbound':
            sa = next((s for s in mine if pkt.src == s.inner_src() and pkt.dst == s.inner_dst()), None)
            if sa is None:
                summary['no_policy'] += 1
                continue
            seqs[sa.spi] = seqs.get(sa.spi, 0) + 1
            out.append(sa.protect(pkt, seqs[sa.spi]))
        else:
            spi = pkt[AH].spi if pkt.haslayer(AH) else pkt[ESP].spi
            sa = next((s for s in mine if s.spi == spi), None)
            if sa is None:
                summary['no_sa'] += 1
                continue
            out.append(sa.unprotect(data))
    summary['written'] = len(out)
    summary['sas'] = [{'spi': s.spi, 'direction': s.direction, 'counters': {}, 'drops': {}} for s in mine]
    return ToolResult(out, summary, 0, '')


def tshark_check(workdir, sas, packets, name='tshark'):
    """Runs tshark over `packets` (RAW IP) with every SA's keys; returns {spi: [(seq, icv_good)]}."""
    path = os.path.join(workdir, name + '.pcap')
    write_pcap(path, packets, LINKTYPE_ETHERNET)
    cmd = ['tshark', '-n', '-r', path, '-o', 'esp.enable_encryption_decode:TRUE',
           '-o', 'esp.enable_authentication_check:TRUE']
    for sa in sas:
        cmd += ['-o', sa.tshark_uat()]
    cmd += ['-T', 'fields', '-E', 'separator=/t', '-e', 'esp.spi', '-e', 'esp.sequence',
            '-e', 'esp.icv_good']
    p = subprocess.run(cmd, capture_output=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError('tshark failed: %s' % p.stderr.decode(errors='replace')[-2000:])
    res = {}
    for line in p.stdout.decode().splitlines():
        f = line.split('\t')
        if len(f) < 3 or not f[0]:
            res.setdefault(None, []).append(line)
            continue
        spi = int(f[0], 16) if f[0].startswith('0x') else int(f[0])
        good = f[2].strip().lower() in ('1', 'true')
        res.setdefault(spi, []).append((int(f[1]), good))
    return res


# ------------------------------------------------------------------------------------------------
# Reporting


class Report:
    def __init__(self, title):
        self.title = title
        self.passed = 0
        self.failed = 0
        self.failures = []
        self._notes = []

    def note(self, text):
        """Printed under the next case line (e.g. which drop reasons were seen)."""
        self._notes.append(text)

    def case(self, name, problems):
        notes, self._notes = self._notes, []
        self._print_case(name, problems)
        for n in notes:
            print('     (%s)' % n)
        sys.stdout.flush()

    def _print_case(self, name, problems):
        if problems:
            self.failed += 1
            self.failures.append(name)
            print('FAIL %s' % name)
            for p in problems[:8]:
                print('     %s' % p)
            if len(problems) > 8:
                print('     ... %d more' % (len(problems) - 8))
        else:
            self.passed += 1
            print('ok   %s' % name)

    def run(self, name, fn):
        """fn() returns a list of problems (empty = pass); exceptions count as failures."""
        try:
            problems = fn()
        except Exception as e:
            problems = ['%s: %s' % (type(e).__name__, e)] + traceback.format_exc().splitlines()[-6:]
        self.case(name, problems)

    def finish(self):
        print('%d passed, %d failed' % (self.passed, self.failed))
        return 0 if self.failed == 0 else 1


def workdir():
    d = tempfile.mkdtemp(prefix='espresso-component-')
    return d


def cleanup(d):
    if os.environ.get('ESPRESSO_KEEP_TMP') != '1':
        shutil.rmtree(d, ignore_errors=True)
    else:
        print('kept %s' % d)


def diff_bytes(got, want):
    if got == want:
        return None
    n = min(len(got), len(want))
    first = next((i for i in range(n) if got[i] != want[i]), n)
    return ('got %d bytes, want %d; first difference at byte %d: got %s / want %s'
            % (len(got), len(want), first, got[max(0, first - 4):first + 12].hex(),
               want[max(0, first - 4):first + 12].hex()))


# ------------------------------------------------------------------------------------------------
# Hand-made ESP for negative tests (tunnel mode, no UDP): any next header, any padding.


def build_esp(sa, seq, inner, nh, padding=None, padlen=None, esn_high=0):
    """ESP packet (outer IP from the SA's tunnel addresses) carrying `inner` with next header `nh`.
    `padding` replaces the self-describing padding bytes (same alignment rules are the caller's
    business); `padlen` overrides the pad length byte."""
    from scapy.layers.ipsec import _ESPPlain
    s = sa.scapy_sa(seq)
    algo = s.crypt_algo
    iv = algo.generate_iv()
    esp = _ESPPlain(spi=sa.spi, seq=seq, iv=iv, data=inner, nh=nh)
    esp = algo.pad(esp)
    if padding is not None:
        esp.padding = padding
        esp.padlen = len(padding)
    if padlen is not None:
        esp.padlen = padlen
    if sa.kind == 'gmac':
        body = esp.data_for_encryption()
        iv = bytes(random.getrandbits(8) for _ in range(8))
        enc = ESP(spi=sa.spi, seq=seq, data=iv + body + gmac_tag(sa, sa.spi, seq, esn_high, iv, body))
    else:
        enc = algo.encrypt(s, esp, s.crypt_key, s.crypt_icv_size, esn_en=sa.esn, esn=esn_high)
        if sa.integ != 'none':
            enc.data = enc.data + hmac_icv(sa, raw(enc), esn_high)
    outer = IP(src=sa.outer_src, dst=sa.outer_dst, proto=50) if sa.outer_family == 4 else \
        IPv6(src=sa.outer_src, dst=sa.outer_dst, nh=50)
    return raw(outer / enc)
