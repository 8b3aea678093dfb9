#!/usr/bin/python3
"""Independent IKEv2 encodings for tests/ike/ike_message_test.cpp (suite IkeWireScapy) and the seeds of
tests/fuzz/corpus/ike_message/.

The hex strings embedded in ike_message_test.cpp were made by running this script with Debian 12's scapy
2.5.0 (python3-scapy, scapy.contrib.ikev2):
    /usr/bin/python3 tests/ike/vectors/make_scapy_vectors.py            # prints the C++ constants
    /usr/bin/python3 tests/ike/vectors/make_scapy_vectors.py --seeds    # also rewrites the fuzz seeds
and pasting its output. scapy lays out the headers, lengths, proposal/transform substructures, Key Length
attributes and traffic selectors itself, so it is an oracle independent of controlplane/ike/wire. Where scapy
2.5 has no layout of its own (the Delete payload body; "last/more" markers and Num Transforms, which it does
not fill in) the fields are given explicitly below, as the RFC 7296 section beside them says.
"""
import os
import struct
import sys

from scapy.contrib.ikev2 import (IKEv2, IKEv2_payload_AUTH, IKEv2_payload_Delete, IKEv2_payload_Encrypted,
                                 IKEv2_payload_Encrypted_Fragment,
                                 IKEv2_payload_IDi, IKEv2_payload_KE, IKEv2_payload_Nonce,
                                 IKEv2_payload_Notify, IKEv2_payload_Proposal, IKEv2_payload_SA,
                                 IKEv2_payload_Transform, IKEv2_payload_TSi, IKEv2_payload_TSr,
                                 IKEv2_payload_VendorID, IPv4TrafficSelector, IPv6TrafficSelector)

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "..", "..", "fuzz", "corpus", "ike_message")

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")

# Payload type numbers (RFC 7296 §3.2), for the Next Payload fields.
SA, KE, IDI, AUTH, NONCE, NOTIFY, DELETE, VENDOR, TSI, TSR, SK, SKF = 33, 34, 35, 39, 40, 41, 42, 43, 44, 45, 46, 53


def transform(last, ttype, tid, key_length=None):
    # §3.3.2: Last Substruc 0 = last, 3 = more. Key Length (§3.3.5) is scapy's TV attribute 0x800E.
    if key_length is None:
        return IKEv2_payload_Transform(next_payload=0 if last else 3, transform_type=ttype, transform_id=tid,
                                       length=8)
    return IKEv2_payload_Transform(next_payload=0 if last else 3, transform_type=ttype, transform_id=tid,
                                   length=12, key_length=key_length)


def ike_sa_init():
    # Proposal 1: AES-CBC-256 (12), PRF_HMAC_SHA2_256 (5), AUTH_HMAC_SHA2_256_128 (12), ECP-256 (19).
    p1 = (transform(False, 1, 12, 256) / transform(False, 2, 5) / transform(False, 3, 12) / transform(True, 4, 19))
    # Proposal 2: AES-GCM-16 with 128-bit key (20), PRF_HMAC_SHA2_384 (6), Curve25519 (31).
    p2 = transform(False, 1, 20, 128) / transform(False, 2, 6) / transform(True, 4, 31)
    props = (IKEv2_payload_Proposal(next_payload=2, proposal=1, proto=1, trans_nb=4, trans=p1) /
             IKEv2_payload_Proposal(next_payload=0, proposal=2, proto=1, trans_nb=3, trans=p2))
    ke_data = bytes(range(64))  # ECP-256 public value: x || y
    nonce = bytes(range(0xA0, 0xC0))
    natd_s = bytes(range(0x30, 0x44))
    natd_d = bytes(range(0x50, 0x64))
    pkt = (IKEv2(init_SPI=SPI_I, resp_SPI=b"\x00" * 8, next_payload=SA, exch_type=34, flags="Initiator", id=0) /
           IKEv2_payload_SA(next_payload=KE, prop=props) /
           IKEv2_payload_KE(next_payload=NONCE, group=19, load=ke_data) /
           IKEv2_payload_Nonce(next_payload=NOTIFY, load=nonce) /
           IKEv2_payload_Notify(next_payload=NOTIFY, proto=0, type=16388, load=natd_s) /
           IKEv2_payload_Notify(next_payload=0, proto=0, type=16389, load=natd_d))
    return bytes(pkt)


def ike_auth_chain():
    # The plaintext inside an IKE_AUTH request's SK payload (§1.2): IDi, AUTH, SA, TSi, TSr; first = IDi.
    esp = (transform(False, 1, 20, 256) / transform(True, 5, 0))  # AES-GCM-16-256, no ESN
    # SPIsize is given: scapy 2.5 computes the proposal length before it fills SPIsize in, and so leaves the
    # SPI out of the length (the first version of these vectors had that bug; our parser refused it).
    prop = IKEv2_payload_Proposal(next_payload=0, proposal=1, proto=3, SPIsize=4, SPI=bytes.fromhex("c0ffee01"),
                                  trans_nb=2, trans=esp)
    # scapy 2.5's IDi computes its length from a field it does not have ("load"), so it is given here.
    chain = (IKEv2_payload_IDi(next_payload=AUTH, IDtype=2, ID=b"left.example.org", length=8 + 16) /
             IKEv2_payload_AUTH(next_payload=SA, auth_type=2, load=bytes(range(0x80, 0xA0))) /
             IKEv2_payload_SA(next_payload=TSI, prop=prop) /
             IKEv2_payload_TSi(next_payload=TSR, number_of_TSs=2, traffic_selector=[
                 IPv4TrafficSelector(IP_protocol_ID=0, start_port=0, end_port=65535,
                                     starting_address_v4="10.1.0.0", ending_address_v4="10.1.255.255"),
                 IPv4TrafficSelector(IP_protocol_ID=17, start_port=500, end_port=500,
                                     starting_address_v4="192.0.2.1", ending_address_v4="192.0.2.1")]) /
             # scapy 2.5's IPv6 selector defaults to length 20; RFC 7296 §3.13.1 makes it 40.
             IKEv2_payload_TSr(next_payload=0, number_of_TSs=1, traffic_selector=[
                 IPv6TrafficSelector(IP_protocol_ID=6, length=40, start_port=1024, end_port=2048,
                                     starting_address_v6="2001:db8::", ending_address_v6="2001:db8::ffff")]))
    return bytes(chain)


def informational_delete():
    # §3.11: scapy 2.5 keeps the Delete body raw: Protocol ID 3 (ESP), SPI Size 4, Num of SPIs 2, SPIs.
    body = struct.pack("!BBH", 3, 4, 2) + bytes.fromhex("c0ffee01") + bytes.fromhex("c0ffee02")
    pkt = (IKEv2(init_SPI=SPI_I, resp_SPI=SPI_R, next_payload=DELETE, exch_type=37, flags="Initiator", id=7) /
           IKEv2_payload_Delete(next_payload=VENDOR, vendorID=body) /
           IKEv2_payload_VendorID(next_payload=0, vendorID=b"espresso-test"))
    return bytes(pkt)


def ike_auth_sealed():
    # An IKE_AUTH request as sent: SK payload (§3.14) whose Next Payload names the first inner payload
    # (IDi); the body (IV | ciphertext | ICV) is arbitrary here, the wire layer keeps it sealed.
    pkt = (IKEv2(init_SPI=SPI_I, resp_SPI=SPI_R, next_payload=SK, exch_type=35, flags="Initiator", id=1) /
           IKEv2_payload_Encrypted(next_payload=IDI, load=bytes(range(8)) + b"\x5a" * 48 + bytes(range(16))))
    return bytes(pkt)


def ike_auth_fragments():
    # RFC 7383 §2.5: an IKE_AUTH request in SKF payloads. Fragment 1 of 3 names the first inner payload
    # (IDi), fragment 3 of 3 has Next Payload 0; bodies (IV | ciphertext | ICV) arbitrary, kept sealed.
    def frag(number, next_payload, load):
        return bytes(IKEv2(init_SPI=SPI_I, resp_SPI=SPI_R, next_payload=SKF, exch_type=35, flags="Initiator", id=1) /
                     IKEv2_payload_Encrypted_Fragment(next_payload=next_payload, frag_number=number, frag_total=3,
                                                      load=load))
    return frag(1, IDI, bytes(range(8)) + b"\x5a" * 32 + bytes(range(16))) + frag(3, 0, bytes(range(8)) + b"\xa5" * 16 + bytes(range(16)))


VECTORS = [
    ("scapy_ike_sa_init", ike_sa_init),
    ("scapy_ike_auth_chain", ike_auth_chain),
    ("scapy_informational_delete", informational_delete),
    ("scapy_ike_auth_sealed", ike_auth_sealed),
    ("scapy_ike_auth_fragments", ike_auth_fragments),  # two datagrams back to back: fragments 1/3 and 3/3
]


def cxx_hex(name, data):
    h = data.hex()
    lines = [h[i:i + 96] for i in range(0, len(h), 96)]
    body = "\n".join('    "%s"' % line for line in lines)
    return "constexpr const char* %s =\n%s;\n" % (name, body)


def main():
    for name, make in VECTORS:
        data = make()
        print(cxx_hex(name, data))
        if "--seeds" in sys.argv:
            os.makedirs(SEEDS, exist_ok=True)
            # The IKE_AUTH chain is a plaintext chain, not a message: one seed as the fuzz target's chain
            # input (byte 0 = first payload type, IDi), one with an IKE header in front.
            if name == "scapy_ike_auth_chain":
                with open(os.path.join(SEEDS, "chain-ike-auth"), "wb") as f:
                    f.write(bytes([IDI]) + data)
                data = bytes(IKEv2(init_SPI=SPI_I, resp_SPI=SPI_R, next_payload=IDI, exch_type=35, id=1)) + data
                data = data[:24] + struct.pack("!I", len(data)) + data[28:]
            if name == "scapy_ike_auth_fragments":
                # Two messages: one seed each (the fuzz target takes one datagram).
                first_len = struct.unpack("!I", data[24:28])[0]
                for suffix, part in (("1-of-3", data[:first_len]), ("3-of-3", data[first_len:])):
                    with open(os.path.join(SEEDS, "ike-auth-fragment-" + suffix), "wb") as f:
                        f.write(part)
                continue
            with open(os.path.join(SEEDS, name.replace("scapy_", "").replace("_", "-")), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
