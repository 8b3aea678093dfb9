#!/usr/bin/python3
"""AH against scapy's AH (RFC 4302): scapy protects -> engine inbound -> plaintext bytes; engine
outbound -> scapy verifies the ICV (mutable fields zeroed, ESN high bits appended) and strips AH.
scapy 2.5 has no AES-GMAC for AH, so AH GMAC is not covered here.

Run: ESPRESSO_BUILD=<build dir> /usr/bin/python3 tests/component/test_ah_oracles.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import oracle  # noqa: E402
from oracle import Sa, Report  # noqa: E402
from test_esp_oracles import inbound_batch, outbound_batch  # noqa: E402

TOPOLOGIES = [('tunnel', 4, 4), ('tunnel', 6, 6), ('tunnel', 4, 6), ('tunnel', 6, 4),
              ('transport', 4, 4), ('transport', 6, 6)]
INTEGS = ['sha1', 'sha256', 'sha384', 'sha512']


def make_cases(integ, base_spi, direction):
    sas = []
    i = 0
    for (mode, inner, outer) in TOPOLOGIES:
        for esn in (False, True):
            sas.append(Sa(spi=base_spi + i, direction=direction, proto='ah', mode=mode, integ=integ,
                          inner_family=inner, outer_family=outer, esn=esn, net_id=(base_spi >> 8) + i))
            i += 1
    return sas


def main():
    report = Report('ah oracles')
    wd = oracle.workdir()
    try:
        for n, integ in enumerate(INTEGS):
            base = 0x30000 + n * 0x100
            inbound_batch(report, wd, 'ah+' + integ, make_cases(integ, base, 'inbound'))
            outbound_batch(report, wd, 'ah+' + integ, make_cases(integ, base + 0x80, 'outbound'))
    finally:
        oracle.cleanup(wd)
    return report.finish()


if __name__ == '__main__':
    sys.exit(main())
