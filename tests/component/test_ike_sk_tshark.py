#!/usr/bin/python3
"""The IKEv2 SK payload (RFC 7296 §3.14, RFC 5282) against tshark's independent IKEv2 decryption.

tests/tools/ike-seal seals an inner payload chain (IDi + Notify INITIAL_CONTACT) into an IKE_AUTH-like
message with sk_cipher (controlplane/ike/crypto); scapy wraps it in IPv4/UDP 500 into a pcap; tshark,
given the SPIs and keys in its ikev2_decryption_table, must verify the ICV and show the inner payloads.
tshark checks the CBC HMAC and the GCM tag (over the aad too) itself. Negative cases show that it
really does: a wrong integrity key or a flipped GCM ICV must make it report a bad ICV, and a wrong GCM
key must leave the payloads hidden.

Run: ESPRESSO_BUILD=<build dir> /usr/bin/python3 tests/component/test_ike_sk_tshark.py
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import oracle  # noqa: E402
from oracle import Report, IP, UDP, Raw  # noqa: E402
from scapy.all import wrpcap  # noqa: E402

SPI_I = '0102030405060708'
SPI_R = 'a1a2a3a4a5a6a7a8'
ID_ADDR = '198.51.100.7'
# IDi (RFC 7296 §3.5): next Notify(41), length 12, ID_IPV4_ADDR, 198.51.100.7;
# Notify (§3.10): next none, length 8, protocol 0, SPI size 0, INITIAL_CONTACT (16384).
INNER = '2900000c01000000' + 'c6336407' + '0000000800004000'
FIRST_PAYLOAD = 35  # IDi

CASES = [  # (name, ike-seal encr, key bits, integ, tshark encryption, tshark integrity, ICV/key bytes)
    ('AES-CBC-256 + HMAC-SHA2-256-128', 'aes-cbc', 256, 'sha256', 'AES-CBC-256 [RFC3602]',
     'HMAC_SHA2_256_128 [RFC4868]', 32),
    ('AES-GCM-16-256', 'aes-gcm-16', 256, 'none', 'AES-GCM-256 with 16 octet ICV [RFC5282]',
     'NONE [RFC4306]', 0),
    ('AES-CBC-128 + HMAC-SHA1-96', 'aes-cbc', 128, 'sha1', 'AES-CBC-128 [RFC3602]',
     'HMAC_SHA1_96 [RFC2404]', 20),
    ('AES-CBC-256 + HMAC-SHA2-512-256', 'aes-cbc', 256, 'sha512', 'AES-CBC-256 [RFC3602]',
     'HMAC_SHA2_512_256 [RFC4868]', 64),
    ('AES-GCM-16-128', 'aes-gcm-16', 128, 'none', 'AES-GCM-128 with 16 octet ICV [RFC5282]',
     'NONE [RFC4306]', 0),
]

BAD_ICV = 'IKEv2 Integrity Checksum Data is incorrect'


def tool():
    return os.path.join(os.environ.get('ESPRESSO_BUILD', ''), 'tests', 'tools', 'ike-seal')


def key(byte, n):
    return ('%02x' % byte) * n


def keys_for(bits, encr, integ_bytes):
    """Distinct test keys per direction (SK_ei, SK_er, SK_ai, SK_ar); GCM keymat includes the salt."""
    enc_len = bits // 8 + (4 if encr.startswith('aes-gcm') else 0)
    return key(0x11, enc_len), key(0x33, enc_len), key(0x22, integ_bytes), key(0x44, integ_bytes)


def seal(encr, bits, integ, sk_e, sk_a, response):
    cmd = [tool(), '--encr', encr, '--key-bits', str(bits), '--integ', integ, '--sk-e', sk_e,
           '--spi-i', SPI_I, '--spi-r', SPI_R, '--first-payload', str(FIRST_PAYLOAD), '--payloads', INNER]
    if sk_a:
        cmd += ['--sk-a', sk_a]
    if response:
        cmd += ['--response']
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
    return bytes.fromhex(out)


def tshark(pcap, sk_ei, sk_er, tshark_encr, sk_ai, sk_ar, tshark_integ):
    # Hex fields unquoted, names quoted (ORACLES.md). Keys here are test keys only.
    uat = 'uat:ikev2_decryption_table:%s,%s,%s,%s,"%s",%s,%s,"%s"' % (
        SPI_I, SPI_R, sk_ei, sk_er, tshark_encr, sk_ai, sk_ar, tshark_integ)
    r = subprocess.run(['tshark', '-r', pcap, '-o', uat, '-T', 'fields', '-E', 'separator=|',
                        '-e', 'isakmp.id.data.ipv4_addr', '-e', 'isakmp.notify.msgtype',
                        '-e', 'isakmp.enc.pad_length', '-e', '_ws.expert.message'],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError('tshark failed: %s' % r.stderr.strip()[-300:])
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise RuntimeError('tshark printed %d lines, expected 1' % len(lines))
    return lines[0].split('|')


def write_pcap(wd, name, udp_payload, response):
    src, dst = ('203.0.113.1', '198.51.100.1') if response else ('198.51.100.1', '203.0.113.1')
    path = os.path.join(wd, name + '.pcap')
    wrpcap(path, [IP(src=src, dst=dst) / UDP(sport=500, dport=500) / Raw(udp_payload)])
    return path


def case_decrypts(wd, name, encr, bits, integ, t_encr, t_integ, integ_bytes, response):
    sk_ei, sk_er, sk_ai, sk_ar = keys_for(bits, encr, integ_bytes)
    # The initiator's requests use SK_ei/SK_ai, the responder's responses SK_er/SK_ar (§2.14).
    sk_e, sk_a = (sk_er, sk_ar) if response else (sk_ei, sk_ai)
    pcap = write_pcap(wd, name.replace(' ', '_').replace('+', ''), seal(encr, bits, integ, sk_e, sk_a, response),
                      response)
    addr, notify, pad_length, expert = tshark(pcap, sk_ei, sk_er, t_encr, sk_ai, sk_ar, t_integ)
    problems = []
    if addr != ID_ADDR:
        problems.append('IDi address %r, expected %s (not decrypted?)' % (addr, ID_ADDR))
    if notify != '16384':
        problems.append('Notify type %r, expected 16384 (INITIAL_CONTACT)' % notify)
    if BAD_ICV in expert:
        problems.append('tshark: %s' % BAD_ICV)
    if encr == 'aes-cbc' and pad_length != '11':
        problems.append('pad length %r, expected 11 (20 bytes of payloads + 11 + 1 = 32)' % pad_length)
    if encr.startswith('aes-gcm') and pad_length != '0':
        problems.append('pad length %r, expected 0 for GCM' % pad_length)
    return problems


def case_wrong_integ_key(wd):
    sk_ei, sk_er, sk_ai, sk_ar = keys_for(256, 'aes-cbc', 32)
    pcap = write_pcap(wd, 'wrong_integ', seal('aes-cbc', 256, 'sha256', sk_ei, sk_ai, False), False)
    _, _, _, expert = tshark(pcap, sk_ei, sk_er, 'AES-CBC-256 [RFC3602]', key(0x55, 32), sk_ar,
                             'HMAC_SHA2_256_128 [RFC4868]')
    return [] if BAD_ICV in expert else ['tshark did not flag the ICV under a wrong SK_ai: %r' % expert]


def case_flipped_gcm_icv(wd):
    sk_ei, sk_er, _, _ = keys_for(256, 'aes-gcm-16', 0)
    sealed = bytearray(seal('aes-gcm-16', 256, 'none', sk_ei, '', False))
    sealed[-1] ^= 0x01
    pcap = write_pcap(wd, 'flipped_gcm_icv', bytes(sealed), False)
    _, _, _, expert = tshark(pcap, sk_ei, sk_er, 'AES-GCM-256 with 16 octet ICV [RFC5282]', '', '',
                             'NONE [RFC4306]')
    return [] if BAD_ICV in expert else ['tshark did not flag a flipped GCM ICV: %r' % expert]


def case_wrong_gcm_key(wd):
    sk_ei, sk_er, _, _ = keys_for(256, 'aes-gcm-16', 0)
    pcap = write_pcap(wd, 'wrong_gcm', seal('aes-gcm-16', 256, 'none', sk_ei, '', False), False)
    addr, _, _, _ = tshark(pcap, key(0x66, 36), sk_er, 'AES-GCM-256 with 16 octet ICV [RFC5282]', '', '',
                           'NONE [RFC4306]')
    return [] if addr != ID_ADDR else ['tshark showed the payloads under a wrong GCM key']


def main():
    report = Report('IKEv2 SK payload vs tshark')
    if shutil.which('tshark') is None:
        print('tshark not installed: skipped')
        return 77
    if not os.access(tool(), os.X_OK):
        print('%s not built (set ESPRESSO_BUILD)' % tool())
        return 1
    wd = oracle.workdir()
    try:
        for name, encr, bits, integ, t_encr, t_integ, integ_bytes in CASES:
            for response in (False, True):
                label = '%s %s' % (name, 'response (SK_er)' if response else 'request (SK_ei)')
                report.run(label, lambda: case_decrypts(wd, label, encr, bits, integ, t_encr, t_integ,
                                                        integ_bytes, response))
        report.run('tshark flags the ICV under a wrong SK_ai', lambda: case_wrong_integ_key(wd))
        report.run('tshark flags a flipped GCM ICV', lambda: case_flipped_gcm_icv(wd))
        report.run('tshark cannot read GCM under a wrong SK_ei', lambda: case_wrong_gcm_key(wd))
    finally:
        oracle.cleanup(wd)
    return report.finish()


if __name__ == '__main__':
    sys.exit(main())
