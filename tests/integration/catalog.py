"""Unsigned Windows security catalogs (.cat) for the tests, made here with the standard library: a PKCS#7
SignedData without a signer whose content is a certificate trust list (1.3.6.1.4.1.311.10.1) listing each
member file by its SHA-1 digest with its name, laid out as makecat writes one (subject usage
szOID_CATALOG_LIST, a list identifier, the time, szOID_CATALOG_LIST_MEMBER, one entry per file with
CAT_NAMEVALUE and SPC_INDIRECT_DATA attributes)."""
import hashlib
import os
import time


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def set_of(*items: bytes) -> bytes:
    return tlv(0x31, b"".join(sorted(items)))


def oid(dotted: str) -> bytes:
    parts = [int(x) for x in dotted.split(".")]
    body = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.insert(0, 0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(chunk)
    return tlv(0x06, body)


def integer(v: int) -> bytes:
    return tlv(0x02, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big"))


NULL = b"\x05\x00"
SIGNED_DATA, CTL = "1.2.840.113549.1.7.2", "1.3.6.1.4.1.311.10.1"
CATALOG_LIST, CATALOG_LIST_MEMBER = "1.3.6.1.4.1.311.12.1.1", "1.3.6.1.4.1.311.12.1.2"
CAT_NAMEVALUE, SPC_INDIRECT_DATA, SPC_CAB_DATA = "1.3.6.1.4.1.311.12.2.1", "1.3.6.1.4.1.311.2.1.4", "1.3.6.1.4.1.311.2.1.25"
SHA1 = "1.3.14.3.2.26"


def member(name: str, data: bytes) -> bytes:
    digest = hashlib.sha1(data).digest()
    tag = digest.hex().upper().encode("utf-16-le")
    name_value = seq(tlv(0x1E, "File".encode("utf-16-be")), integer(0x10010001),
                     tlv(0x04, (name + "\0").encode("utf-16-le")))
    indirect = seq(seq(oid(SPC_CAB_DATA), seq(tlv(0x03, b"\x00"), tlv(0xA0, tlv(0xA2, tlv(0x80, b""))))),
                   seq(seq(oid(SHA1), NULL), tlv(0x04, digest)))
    attrs = set_of(seq(oid(CAT_NAMEVALUE), set_of(name_value)), seq(oid(SPC_INDIRECT_DATA), set_of(indirect)))
    return seq(tlv(0x04, tag), attrs)


def trust_list(members: dict) -> bytes:
    when = time.strftime("%y%m%d%H%M%SZ", time.gmtime()).encode()
    return seq(seq(oid(CATALOG_LIST)), tlv(0x04, os.urandom(16)), tlv(0x17, when),
               seq(oid(CATALOG_LIST_MEMBER), NULL),
               seq(*(member(n, d) for n, d in sorted(members.items()))))


def unsigned_catalog(members: dict) -> bytes:
    """The catalog of `members` (file name -> content), without a signature."""
    content = seq(oid(CTL), tlv(0xA0, trust_list(members)))
    signed_data = seq(integer(1), set_of(), content, set_of())
    return seq(oid(SIGNED_DATA), tlv(0xA0, signed_data))
