"""What a relic client uploads for `relic remote sign -T msi` (docs/relic-protocol.md §8): the MSI's streams as a
tar in digest order, after "__exmeta" (the metadata whose hash is MsiDigitalSignatureEx), each storage's CLSID as
"__storage_uid" after its children. A small independent [MS-CFB] reader (test inputs only: no hostile-input
checks) so that the test does not use the daemon's own parser."""
from __future__ import annotations

import functools
import io
import struct
import tarfile

END = 0xFFFFFFFA  # values from here up end a chain


class Entry:
    def __init__(self, raw: bytes, index: int):
        nlen = struct.unpack_from("<H", raw, 0x40)[0]
        self.units = list(struct.unpack_from(f"<{max(nlen // 2 - 1, 0)}H", raw, 0))
        self.name = "".join(chr(u) for u in self.units)
        self.raw = raw
        self.index = index
        self.type = raw[0x42]
        self.left, self.right, self.child = struct.unpack_from("<III", raw, 0x44)
        self.clsid = raw[0x50:0x60]
        self.start, self.size = struct.unpack_from("<II", raw, 0x74)


class Ole:
    def __init__(self, data: bytes):
        self.data = data
        self.ssz = 1 << struct.unpack_from("<H", data, 0x1E)[0]
        nfat, dir_start = struct.unpack_from("<II", data, 0x2C)
        minifat_start, _, difat, _ = struct.unpack_from("<IIII", data, 0x3C)
        ids = list(struct.unpack_from("<109I", data, 0x4C))[:nfat]
        while len(ids) < nfat:
            sec = struct.unpack(f"<{self.ssz // 4}I", self.sector(difat))
            ids += list(sec[:-1])[:nfat - len(ids)]
            difat = sec[-1]
        self.fat = [v for s in ids for v in struct.unpack(f"<{self.ssz // 4}I", self.sector(s))]
        d = b"".join(self.sector(s) for s in self.chain(dir_start, self.fat))
        self.entries = [Entry(d[i:i + 128], i // 128) for i in range(0, len(d), 128)]
        root = self.entries[0]
        self.mini = b"".join(self.sector(s) for s in self.chain(root.start, self.fat))[:root.size]
        mf = b"".join(self.sector(s) for s in self.chain(minifat_start, self.fat))
        self.minifat = list(struct.unpack(f"<{len(mf) // 4}I", mf))

    def sector(self, n: int) -> bytes:
        return self.data[(n + 1) * self.ssz:(n + 2) * self.ssz]

    @staticmethod
    def chain(start: int, table: list) -> list:
        out = []
        while start < END:
            out.append(start)
            start = table[start]
        return out

    def read(self, e: Entry) -> bytes:
        if e.size < 4096:
            return b"".join(self.mini[s * 64:(s + 1) * 64] for s in self.chain(e.start, self.minifat))[:e.size]
        return b"".join(self.sector(s) for s in self.chain(e.start, self.fat))[:e.size]

    def children(self, e: Entry) -> list:
        out, todo = [], [e.child]
        while todo:
            i = todo.pop()
            if i == 0xFFFFFFFF:
                continue
            c = self.entries[i]
            out.append(c)
            todo += [c.left, c.right]
        return out


def msi_order(a: Entry, b: Entry) -> int:
    """UTF-16 names with their NUL compared as little-endian bytes; equal prefixes: the longer first."""
    x, y = a.units + [0], b.units + [0]
    for u, v in zip(x, y):
        for p, q in ((u & 0xFF, v & 0xFF), (u >> 8, v >> 8)):
            if p != q:
                return -1 if p < q else 1
    return -1 if len(x) > len(y) else 1


def decode_name(name: str) -> str:
    """MSI packs two table-name characters into one code point in 0x3800-0x4840."""
    def rune(x):
        return "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._"[min(x, 63)]
    out = ""
    for ch in name:
        c = ord(ch)
        if 0x3800 <= c < 0x4800:
            out += rune((c - 0x3800) & 0x3F) + rune((c - 0x3800) >> 6)
        elif 0x4800 <= c < 0x4840:
            out += rune(c - 0x4800)
        elif c == 0x4840:
            out += "Table."
        else:
            out += ch
    return out


def sorted_children(ole: Ole, e: Entry) -> list:
    return sorted(ole.children(e), key=functools.cmp_to_key(msi_order))


def prehash_meta(ole: Ole, e: Entry, out: bytearray):
    def meta(x: Entry):
        if x.type != 5:
            out.extend(x.raw[:len(x.units) * 2])
        out.extend(x.clsid if x.type != 2 else x.raw[0x78:0x7C])
        out.extend(x.raw[0x60:0x64])
        if x.type != 5:
            out.extend(x.raw[0x64:0x74])
    meta(e)
    for c in sorted_children(ole, e):
        if e.type == 5 and c.name in ("\x05DigitalSignature", "\x05MsiDigitalSignatureEx"):
            continue
        if c.type == 2:
            meta(c)
        elif c.type == 1:
            prehash_meta(ole, c, out)


def msi_to_tar(msi: bytes) -> bytes:
    ole = Ole(msi)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tw:
        def add(name: str, data: bytes):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tw.addfile(info, io.BytesIO(data))

        meta = bytearray()
        prehash_meta(ole, ole.entries[0], meta)
        add("__exmeta", bytes(meta))

        def walk(e: Entry, path: str):
            for c in sorted_children(ole, e):
                if c.type == 2:
                    add(path + decode_name(c.name), ole.read(c))
                elif c.type == 1:
                    walk(c, path + decode_name(c.name) + "/")
            add(path + "__storage_uid", e.clsid)
        walk(ole.entries[0], "")
    return buf.getvalue()
