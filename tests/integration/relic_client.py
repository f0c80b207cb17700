"""A test driver that speaks relic's client protocol (docs/relic-protocol.md §5.2, §7, §9.5, §9.6): GET /directory,
POST /sign with the PE as a chunked (optionally compressed) body, apply the binpatch, fix the PE checksum."""
from __future__ import annotations

import gzip
import struct
import urllib.parse
import zlib

import harness


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def snappy_framed_uncompressed(data: bytes) -> bytes:
    """x-snappy-framed with uncompressed chunks (type 0x01): what a snappy writer emits for incompressible data."""
    out = b"\xff\x06\x00\x00sNaPpY"
    for off in range(0, len(data), 65536):
        chunk = data[off:off + 65536]
        c = crc32c(chunk)
        masked = (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
        body = struct.pack("<I", masked) + chunk
        out += b"\x01" + struct.pack("<I", len(body))[:3] + body
    return out


def apply_binpatch(original: bytes, patch: bytes) -> bytes:
    version, count = struct.unpack(">II", patch[:8])
    assert version == 1, version
    records = [struct.unpack(">qII", patch[8 + 16 * i: 24 + 16 * i]) for i in range(count)]
    blobs = patch[8 + 16 * count:]
    out, pos, boff = bytearray(), 0, 0
    for offset, old, new in records:
        assert offset >= pos, "overlapping records"
        out += original[pos:offset]
        out += blobs[boff:boff + new]
        boff += new
        pos = offset + old
    out += original[pos:]
    return bytes(out)


def fix_checksum(data: bytes) -> bytes:
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    off = pe + 88
    buf = bytearray(data)
    buf[off:off + 4] = b"\0\0\0\0"
    total = 0
    padded = bytes(buf) + (b"\0" if len(buf) % 2 else b"")
    for (word,) in struct.iter_unpack("<H", padded):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total + len(data)) & 0xFFFFFFFF
    struct.pack_into("<I", buf, off, total)
    return bytes(buf)


def post_sign(daemon: "harness.Daemon", q: dict, body: bytes, *, encoding=None, client=None):
    """POST /sign as a relic client does: chunked, optionally compressed. Returns (status, headers, body)."""
    query = urllib.parse.urlencode(sorted(q.items()))
    headers = {"User-Agent": "relic/8.2.0", "Accept-Encoding": "x-snappy-framed, gzip"}
    if encoding == "gzip":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    elif encoding == "x-snappy-framed":
        body = snappy_framed_uncompressed(body)
        headers["Content-Encoding"] = "x-snappy-framed"
    conn = daemon.connect(client)
    try:
        # relic streams the upload with unknown length: chunked on HTTP/1.1
        def chunks():
            for i in range(0, len(body), 32768):
                yield body[i:i + 32768]
        conn.request("POST", "/sign?" + query, body=chunks(), headers=headers, encode_chunked=True)
        r = conn.getresponse()
        data = r.read()
        h = {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()
    return r.status, h, data


def sign_pe(daemon: "harness.Daemon", key: str, pe: bytes, *, filename="app.exe", digest="SHA-256",
            page_hashes=False, description=None, url=None, encoding=None, client=None, params=None):
    """Returns (status, headers, body, signed_file_or_None)."""
    q = {"digest": digest, "filename": filename, "key": key, "sigtype": "pe-coff"}
    if page_hashes:
        q["page-hashes"] = "true"
    if description:
        q["description"] = description
    if url:
        q["desc-url"] = url
    q.update(params or {})
    status, h, data = post_sign(daemon, q, pe, encoding=encoding, client=client)
    signed = None
    if status == 200 and h.get("content-type") == "application/x-binary-patch":
        signed = fix_checksum(apply_binpatch(pe, data))
    return status, h, data, signed


def sign_msi(daemon: "harness.Daemon", key: str, upload: bytes, *, filename="setup.msi", digest="SHA-256",
             extended=True, encoding=None, params=None):
    """`relic remote sign -T msi`: uploads the tar (msi_tar.msi_to_tar); the answer is the PKCS#7 signature.
    Returns (status, headers, body)."""
    q = {"digest": digest, "filename": filename, "key": key, "sigtype": "msi"}
    if not extended:
        q["no-extended-sig"] = "true"
    q.update(params or {})
    return post_sign(daemon, q, upload, encoding=encoding)


def sign_cab(daemon: "harness.Daemon", key: str, cab: bytes, *, filename="driver.cab", digest="SHA-256",
             encoding=None, params=None):
    """`relic remote sign -T cab`: uploads the whole cabinet; the answer is a binary patch.
    Returns (status, headers, body, signed_cabinet_or_None)."""
    q = {"digest": digest, "filename": filename, "key": key, "sigtype": "cab"}
    q.update(params or {})
    status, h, data = post_sign(daemon, q, cab, encoding=encoding)
    signed = None
    if status == 200 and h.get("content-type") == "application/x-binary-patch":
        signed = apply_binpatch(cab, data)
    return status, h, data, signed


def sign_cat(daemon: "harness.Daemon", key: str, cat: bytes, *, filename="driver.cat", digest="SHA-256",
             encoding=None):
    """`relic remote sign -T cat`: uploads the whole catalog; the answer is the signed catalog (PKCS#7).
    Returns (status, headers, body)."""
    q = {"digest": digest, "filename": filename, "key": key, "sigtype": "cat"}
    return post_sign(daemon, q, cat, encoding=encoding)


def sign_ps(daemon: "harness.Daemon", key: str, script: bytes, *, filename="deploy.ps1", style=None,
            digest="SHA-256", params=None):
    """`relic remote sign -T ps`: uploads the whole script with its style (ps-style, the file's extension as
    relic's client sets it); the answer is a binary patch. Returns (status, headers, body, signed_or_None)."""
    q = {"digest": digest, "filename": filename, "key": key, "sigtype": "ps",
         "ps-style": style if style is not None else "." + filename.rsplit(".", 1)[-1]}
    q.update(params or {})
    status, h, data = post_sign(daemon, q, script)
    signed = None
    if status == 200 and h.get("content-type") == "application/x-binary-patch":
        signed = apply_binpatch(script, data)
    return status, h, data, signed
