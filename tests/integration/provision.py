#!/usr/bin/python3
"""Provision everything p11relayd needs in one state directory: a SoftHSMv2 token with keys generated on it,
code-signing certificates signed by those token keys, TLS material (CA, server, clients), a PIN file and the
daemon / client / relic configuration files.

Stdlib only (runs with Debian 12's /usr/bin/python3). Every step is idempotent: a second run reuses the token,
the keys and the certificates it finds and only creates what is missing (no duplicate objects on the token).

As a module (integration tests):

    from provision import provision, KeySpec
    st = provision(tmpdir, listen=f"127.0.0.1:{port}",
                   keys=DEFAULT_KEYS + (KeySpec("ec384", "03", "EC:secp384r1"),))
    subprocess.Popen([daemon, "--config", st.config], env=st.env())
    other = st.make_client("ops", roles=["ops"])          # extra client cert (self-signed, EC P-256)
    st.write_config(clients=[st.client, other])             # re-render p11relayd.yml with both
    bad = st.make_client("old", expired=True)               # or rsa_bits=512, issuer="ca", register=False

    # faster for many tests: provision a template once (locked), copy it per test
    st = provision(tmpdir, listen=..., template_dir=shared_cache_dir)

As a CLI (scripts/demo):

    python3 tests/integration/provision.py STATE_DIR [--listen 127.0.0.1:6300] [--key LABEL:ID:TYPE ...] [--json]

Secrets: the SO PIN and the user PIN are random (secrets.token_hex) and stored only in STATE_DIR/pins.yml
(user PIN, the daemon's pinfile) and STATE_DIR/provision.json (both PINs, for re-runs), both mode 0600.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN_LABEL = "p11relay-demo"
TOKEN_NAME = "demo"          # the name of the token in p11relayd.yml (tokens.<name>) and pins.yml
DEFAULT_LISTEN = "127.0.0.1:6300"
MANIFEST = "provision.json"
MANIFEST_VERSION = 1


# ----------------------------------------------------------------------------------------------------------
# Public data types
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeySpec:
    """A key pair to generate on the token.

    key_type uses pkcs11-tool's --key-type syntax: 'rsa:2048', 'rsa:3072', 'EC:prime256v1', 'EC:secp384r1',
    'EC:secp521r1'. id is CKA_ID in hex. config_cert=True puts `x509certificate: certs/<label>.pem` in the
    daemon config; False lets the daemon take the certificate from the token. cert_on_token=False leaves
    no certificate object on the token; public_on_token=False deletes the public-key object after the
    certificate was made (a token holding only the private key and a certificate, as some dongles do).
    """
    label: str
    id: str
    key_type: str
    roles: tuple = ("signers",)
    config_cert: bool = True
    cert_on_token: bool = True
    public_on_token: bool = True

    @property
    def is_rsa(self) -> bool:
        return self.key_type.lower().startswith("rsa")


DEFAULT_KEYS: tuple = (
    KeySpec("rsa2048", "01", "rsa:2048", config_cert=True),
    KeySpec("ec256", "02", "EC:prime256v1", config_cert=False),   # certificate taken from the token
)


@dataclass
class ClientCert:
    """A TLS client identity. fingerprint = lowercase hex SHA-256 of the DER SubjectPublicKeyInfo (relic)."""
    name: str
    certfile: Path
    keyfile: Path
    fingerprint: str
    roles: list = field(default_factory=lambda: ["signers"])
    issuer: str = "self"          # "self" (like `relic remote register`) or "ca" (signed by tls/ca.pem)

    def config_entry(self) -> dict:
        return {"nickname": self.name, "roles": list(self.roles)}


@dataclass
class KeyInfo:
    spec: KeySpec
    certfile: Path                # STATE_DIR/certs/<label>.pem (always written)
    uri: str                      # RFC 7512 URI of the private key

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass
class State:
    """Everything provision() made. All paths are absolute."""
    state_dir: Path
    listen: str
    module: str
    softhsm2_conf: Path
    token_dir: Path
    token_label: str
    token_name: str
    so_pin: str
    user_pin: str
    pinfile: Path
    keys: dict                    # label -> KeyInfo, in request order
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client: ClientCert            # the demo client (nickname demo, roles [signers])
    clients: dict                 # name -> ClientCert for every client made so far (demo included)
    config: Path                  # p11relayd.yml
    client_config: Path           # client.yml (our client library / shim)
    relic_config: Path            # relic.yml (relic client)
    audit_file: Path
    timings: dict = field(default_factory=dict)
    kept_configs: list = field(default_factory=list)   # configs provision(keep_configs=True) left as they were

    # -- convenience -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://{self.listen}/"

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def fingerprint(self) -> str:
        return self.client.fingerprint

    def env(self, base: Optional[dict] = None) -> dict:
        """Environment for the daemon (and anything else loading SoftHSM): SOFTHSM2_CONF set."""
        env = dict(os.environ if base is None else base)
        env["SOFTHSM2_CONF"] = str(self.softhsm2_conf)
        return env

    def curl_args(self, client: Optional[ClientCert] = None) -> list:
        c = client or self.client
        return ["--cacert", str(self.ca_cert), "--cert", str(c.certfile), "--key", str(c.keyfile)]

    def to_json(self) -> dict:
        def conv(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if dataclasses.is_dataclass(v):
                return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            return v
        d = conv(self)
        d["url"] = self.url
        d["fingerprint"] = self.fingerprint
        return d

    # -- extra clients -----------------------------------------------------------------------------------
    def make_client(self, name: str, *, roles: Sequence[str] = ("signers",), issuer: str = "self",
                    rsa_bits: Optional[int] = None, curve: str = "P-256", expired: bool = False,
                    not_yet_valid: bool = False, days: int = 36500) -> ClientCert:
        """Create (or reuse) STATE_DIR/tls/clients/<name>.pem/.key.

        issuer: "self" (self-signed, no extensions, like `relic remote register`) or "ca" (signed by the local
        CA, EKU clientAuth). rsa_bits: an RSA key of that size instead of EC (e.g. 512 for a weak-key test).
        expired / not_yet_valid: validity entirely in the past / future. The client is NOT added to
        p11relayd.yml; call write_config(clients=[...]) for that (so tests can also make unknown clients).
        Idempotent: existing files with the same name are reused (delete them to change parameters).
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"bad client name {name!r}")
        d = self.state_dir / "tls" / "clients"
        d.mkdir(parents=True, exist_ok=True)
        cert, key = d / f"{name}.pem", d / f"{name}.key"
        if not (cert.exists() and key.exists()):
            _make_client_cert(self, name, cert, key, issuer=issuer, rsa_bits=rsa_bits, curve=curve,
                              expired=expired, not_yet_valid=not_yet_valid, days=days)
        c = ClientCert(name, cert, key, spki_fingerprint(cert), list(roles), issuer)
        self.clients[name] = c
        _save_manifest(self)
        return c

    # -- configuration -----------------------------------------------------------------------------------
    def daemon_config(self, *, listen: Optional[str] = None, clients: Optional[Iterable[ClientCert]] = None,
                      keys: Optional[Iterable[str]] = None) -> dict:
        """The p11relayd.yml content as a dict (modify it, then write_yaml() it) — paths relative to state_dir."""
        key_entries: dict = {}
        for label in (keys if keys is not None else self.keys):
            k = self.keys[label]
            e: dict = {"token": self.token_name, "label": k.spec.label, "id": k.spec.id}
            if k.spec.config_cert:
                e["x509certificate"] = f"certs/{k.spec.label}.pem"
            e["roles"] = list(k.spec.roles)
            key_entries[label] = e
        cl = list(clients) if clients is not None else [self.client]
        return {
            "server": {
                "listen": listen or self.listen,
                "certfile": "tls/server.pem",
                "keyfile": "tls/server.key",
                "tokencheckinterval": 60,
            },
            "tokens": {self.token_name: {"provider": self.module, "label": self.token_label}},
            "keys": key_entries,
            "clients": {c.fingerprint: c.config_entry() for c in cl},
            "pinfile": "pins.yml",
            "auditfile": "audit.log",
        }

    def write_config(self, path: Optional[os.PathLike] = None, *, config: Optional[dict] = None,
                     **kwargs: Any) -> Path:
        """Render daemon_config(**kwargs) (or `config`) to `path` (default STATE_DIR/p11relayd.yml)."""
        p = Path(path) if path else self.config
        cfg = config if config is not None else self.daemon_config(**kwargs)
        header = ("# p11relayd configuration generated by tests/integration/provision.py.\n"
                  "# Relative paths are relative to this file's directory. Run the daemon with\n"
                  f"# SOFTHSM2_CONF={self.softhsm2_conf}\n")
        _write_text(p, header + to_yaml(cfg))
        return p

    def write_client_configs(self, keep: Sequence[Path] = ()) -> None:
        """Write client.yml and relic.yml, except those in `keep`."""
        if self.client_config not in keep:
            _write_text(self.client_config,
                        "# p11relay client / PKCS#11 shim configuration (relative paths: relative to this file)\n"
                        + to_yaml({"remote": {"url": self.url, "certfile": "tls/client.pem",
                                              "keyfile": "tls/client.key", "cacert": "tls/ca.pem"}}))
        if self.relic_config in keep:
            return
        # relic resolves paths against its working directory, so relic.yml gets absolute ones.
        _write_text(self.relic_config,
                    "# relic client configuration: relic -c " + str(self.relic_config) + " remote list-keys\n"
                    + to_yaml({"remote": {"url": self.url, "certfile": str(self.client.certfile),
                                          "keyfile": str(self.client.keyfile), "cacert": str(self.ca_cert)}}))


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------

class ProvisionError(RuntimeError):
    pass


def _run(args: Sequence[str], *, env: Optional[dict] = None, input: Optional[bytes] = None,
         secret: Sequence[str] = ()) -> bytes:
    """Run a command; on failure raise with its stderr (secrets redacted from the shown command line)."""
    p = subprocess.run(list(args), env=env, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        shown = " ".join("***" if a in secret else a for a in args)
        err = p.stderr.decode(errors="replace")
        for s in secret:
            err = err.replace(s, "***")
        raise ProvisionError(f"command failed ({p.returncode}): {shown}\n{err.strip()}")
    return p.stdout


def _write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Atomic write; skips the write when the content is already identical (keeps mtimes stable)."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text and (path.stat().st_mode & 0o777) == mode:
            return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_PLAIN_VALUE = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_YAML_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    if _PLAIN_VALUE.fullmatch(s) and s.lower() not in _YAML_RESERVED:
        return s
    return json.dumps(s)           # a JSON string is a valid YAML double-quoted scalar


def _yaml_key(k: Any) -> str:
    k = str(k)
    return k if _PLAIN_KEY.fullmatch(k) and k.lower() not in _YAML_RESERVED else json.dumps(k)


def to_yaml(obj: Any, indent: int = 0) -> str:
    """Minimal YAML emitter for dict / list / scalar trees (block maps; lists of scalars in flow style)."""
    pad = "  " * indent
    out = []
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                out.append(f"{pad}{_yaml_key(k)}:\n{to_yaml(v, indent + 1)}")
            elif isinstance(v, (list, tuple)) and any(isinstance(x, (dict, list, tuple)) for x in v):
                out.append(f"{pad}{_yaml_key(k)}:\n{to_yaml(list(v), indent + 1)}")
            elif isinstance(v, (list, tuple)):
                out.append(f"{pad}{_yaml_key(k)}: [{', '.join(_yaml_scalar(x) for x in v)}]\n")
            elif isinstance(v, dict):
                out.append(f"{pad}{_yaml_key(k)}: {{}}\n")
            else:
                out.append(f"{pad}{_yaml_key(k)}: {_yaml_scalar(v)}\n")
        return "".join(out)
    if isinstance(obj, (list, tuple)):
        for v in obj:
            if isinstance(v, (dict, list, tuple)) and v:
                body = to_yaml(v, indent + 1)
                out.append(f"{pad}- {body.lstrip()}")
            else:
                out.append(f"{pad}- {_yaml_scalar(v)}\n")
        return "".join(out)
    return pad + _yaml_scalar(obj) + "\n"


def write_yaml(path: os.PathLike, obj: Any, mode: int = 0o644) -> Path:
    _write_text(Path(path), to_yaml(obj), mode)
    return Path(path)


def spki_fingerprint(certfile: os.PathLike) -> str:
    """Lowercase hex SHA-256 of the certificate's DER SubjectPublicKeyInfo — relic's client fingerprint.

    Same as `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum`: the PEM public key
    that `openssl x509 -pubkey` prints is exactly the DER SPKI, base64-encoded.
    """
    pem = _run(["openssl", "x509", "-in", str(certfile), "-noout", "-pubkey"]).decode()
    m = re.search(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", pem, re.S)
    if not m:
        raise ProvisionError(f"no public key in {certfile}")
    return hashlib.sha256(base64.b64decode("".join(m.group(1).split()))).hexdigest()


@contextlib.contextmanager
def _locked(state_dir: Path):
    """Serialise provisioning of one directory (parallel tests may share a template)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".provision.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# OpenSSL config for everything we issue; -config keeps the system openssl.cnf's defaults out.
_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ca_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
[codesign_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
[no_ext]
[ca]
default_ca = ca_sect
[ca_sect]
dir = .
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied
"""


def _openssl_cnf(state_dir: Path, write: bool = False) -> Path:
    p = state_dir / "tls" / "openssl.cnf"
    if write:
        p.parent.mkdir(parents=True, exist_ok=True)
        _write_text(p, _OPENSSL_CNF)
    return p


def _ec_keygen_args(curve: str) -> list:
    return ["-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{curve}"]


# ----------------------------------------------------------------------------------------------------------
# TLS material (openssl CLI, EC P-256)
# ----------------------------------------------------------------------------------------------------------

def _make_tls(state_dir: Path) -> dict:
    tls = state_dir / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    cnf = str(_openssl_cnf(state_dir))
    ca, ca_key = tls / "ca.pem", tls / "ca.key"
    srv, srv_key = tls / "server.pem", tls / "server.key"
    cli, cli_key = tls / "client.pem", tls / "client.key"
    t0 = time.monotonic()
    if not (ca.exists() and ca_key.exists()):
        for p in (srv, srv_key):          # a new CA invalidates the old server certificate
            p.unlink(missing_ok=True)
        _run(["openssl", "req", "-x509", *_ec_keygen_args("P-256"), "-nodes", "-keyout", str(ca_key),
              "-out", str(ca), "-days", "3650", "-sha256", "-subj", "/CN=p11relay demo CA",
              "-config", cnf, "-extensions", "ca_ext"])
    if not (srv.exists() and srv_key.exists()):
        _run(["openssl", "req", "-x509", "-CA", str(ca), "-CAkey", str(ca_key), *_ec_keygen_args("P-256"),
              "-nodes", "-keyout", str(srv_key), "-out", str(srv), "-days", "825", "-sha256",
              "-subj", "/CN=localhost", "-config", cnf, "-extensions", "server_ext"])
    if not (cli.exists() and cli_key.exists()):
        # Like `relic remote register`: ECDSA P-256, self-signed, ~100 years, no extensions.
        _run(["openssl", "req", "-x509", *_ec_keygen_args("P-256"), "-nodes", "-keyout", str(cli_key),
              "-out", str(cli), "-days", "36500", "-sha256", "-subj", "/CN=demo", "-config", cnf,
              "-extensions", "no_ext"])
    for p in (ca_key, srv_key, cli_key):
        os.chmod(p, 0o600)
    return {"tls": time.monotonic() - t0}


def _make_client_cert(st: State, name: str, cert: Path, key: Path, *, issuer: str, rsa_bits: Optional[int],
                      curve: str, expired: bool, not_yet_valid: bool, days: int) -> None:
    cnf = str(_openssl_cnf(st.state_dir, write=True))
    if rsa_bits:
        # genpkey, not req -newkey: OpenSSL's req refuses RSA keys below 512 bits only, genpkey takes any size
        _run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{rsa_bits}",
              "-out", str(key)])
    else:
        _run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}",
              "-out", str(key)])
    os.chmod(key, 0o600)
    ext = "client_ca_ext" if issuer == "ca" else "no_ext"
    if issuer not in ("self", "ca"):
        raise ValueError("issuer must be 'self' or 'ca'")
    if not (expired or not_yet_valid):
        args = ["openssl", "req", "-x509", "-key", str(key), "-out", str(cert), "-days", str(days),
                "-sha256", "-subj", f"/CN={name}", "-config", cnf, "-extensions", ext]
        if issuer == "ca":
            args += ["-CA", str(st.ca_cert), "-CAkey", str(st.ca_key)]
        _run(args)
        return
    # Validity in the past or future needs `openssl ca` (-startdate/-enddate); 3.0's req/x509 cannot do it.
    now = time.time()
    if expired:
        start, end = now - 3 * 86400 * 365, now - 86400
    else:
        start, end = now + 86400 * 365, now + 2 * 86400 * 365
    fmt = lambda t: time.strftime("%Y%m%d%H%M%SZ", time.gmtime(t))  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "index.txt").write_text("")
        (t / "serial").write_text(secrets.token_hex(8) + "\n")
        csr = t / "req.csr"
        _run(["openssl", "req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}",
              "-config", cnf])
        args = ["openssl", "ca", "-batch", "-notext", "-config", cnf, "-name", "ca_sect", "-in", str(csr),
                "-out", str(cert), "-startdate", fmt(start), "-enddate", fmt(end), "-extensions", ext,
                "-outdir", tmp]
        if issuer == "ca":
            args += ["-cert", str(st.ca_cert), "-keyfile", str(st.ca_key)]
        else:
            args += ["-selfsign", "-keyfile", str(key)]
        # `dir = .` in the config: run inside the temp dir so index/serial land there.
        p = subprocess.run(args, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise ProvisionError(f"openssl ca failed: {p.stderr.decode(errors='replace')}")


# ----------------------------------------------------------------------------------------------------------
# Token (softhsm2-util, pkcs11-tool, OpenSSL's pkcs11 engine)
# ----------------------------------------------------------------------------------------------------------

def _token_present(st: State) -> bool:
    if not st.token_dir.is_dir():
        return False
    return any((d / "token.object").exists() for d in st.token_dir.iterdir() if d.is_dir())


def _p11tool(st: State, *args: str, env: dict) -> bytes:
    # pkcs11-tool 0.23 takes the PIN only from argv or from a terminal prompt (its util_getpass needs a tty
    # on stdout), so the PIN is briefly visible in /proc/<pid>/cmdline to other local users. Acceptable for
    # this throw-away test/demo token with a random PIN; a real token is set up by hand (operator guide).
    return _run(["pkcs11-tool", "--module", st.module, "--token-label", st.token_label, "--login",
                 "--pin", st.user_pin, *args], env=env, secret=[st.user_pin])


def _list_objects(st: State, env: dict) -> list:
    """[(kind, label, id)] with kind in {'privkey', 'pubkey', 'cert', 'data', 'secret'}."""
    out = _p11tool(st, "--list-objects", env=env).decode(errors="replace")
    objs: list = []
    kinds = {"Private Key Object": "privkey", "Public Key Object": "pubkey", "Certificate Object": "cert",
             "Data object": "data", "Secret Key Object": "secret"}
    cur: Optional[dict] = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            kind = next((v for k, v in kinds.items() if line.startswith(k)), None)
            cur = {"kind": kind, "label": None, "id": None} if kind else None
            if cur:
                objs.append(cur)
        elif cur is not None:
            m = re.match(r"\s+(label|ID):\s*(.*)$", line)
            if m:
                cur["label" if m.group(1) == "label" else "id"] = m.group(2).strip()
    return [(o["kind"], o["label"], (o["id"] or "").lower()) for o in objs]


def _init_token(st: State, env: dict) -> None:
    if st.token_dir.exists():
        shutil.rmtree(st.token_dir)
    st.token_dir.mkdir(parents=True)
    # softhsm2-util reads PINs only from argv or a terminal; see the note in _p11tool.
    _run(["softhsm2-util", "--init-token", "--free", "--label", st.token_label,
          "--so-pin", st.so_pin, "--pin", st.user_pin], env=env, secret=[st.so_pin, st.user_pin])


def _make_code_signing_cert(st: State, k: KeyInfo, env: dict) -> None:
    """Self-signed code-signing certificate, signed BY THE TOKEN KEY through OpenSSL's pkcs11 engine."""
    cnf = str(_openssl_cnf(st.state_dir))
    e = dict(env)
    e["PKCS11_MODULE_PATH"] = st.module          # libp11's engine default module otherwise is p11-kit-proxy
    e["P11RELAY_PROVISION_PIN"] = st.user_pin    # -passin env: keeps the PIN out of argv
    tmp = k.certfile.with_name(f".{k.certfile.name}.tmp")
    _run(["openssl", "req", "-new", "-x509", "-config", cnf, "-extensions", "codesign_ext",
          "-engine", "pkcs11", "-keyform", "engine", "-key", k.uri, "-passin", "env:P11RELAY_PROVISION_PIN",
          "-sha256", "-days", "3650", "-subj", f"/CN={k.spec.label}/O=p11relay demo", "-out", str(tmp)],
         env=e)
    os.replace(tmp, k.certfile)


def _provision_token(st: State, keys: Sequence[KeySpec], fresh: bool) -> dict:
    env = st.env()
    t: dict = {}
    t0 = time.monotonic()
    if fresh:
        _init_token(st, env)
        t["token_init"] = time.monotonic() - t0
        objs: list = []
    else:
        objs = _list_objects(st, env)
        t["token_list"] = time.monotonic() - t0
    have = {(kind, i) for kind, _, i in objs}
    (st.state_dir / "certs").mkdir(exist_ok=True)
    for spec in keys:
        k = st.keys[spec.label]
        kid = spec.id.lower()
        labels = {lbl for kind, lbl, i in objs if i == kid and kind == "privkey"}
        if ("privkey", kid) in have and spec.label not in labels:
            raise ProvisionError(f"id {spec.id} is already used on the token by key {sorted(labels)}")
        t1 = time.monotonic()
        new_key = ("privkey", kid) not in have
        if new_key:
            # leftovers of an interrupted run (public key / certificate without private key) go first
            for kind in ("pubkey", "cert"):
                if (kind, kid) in have:
                    _p11tool(st, "--delete-object", "--type", kind, "--id", kid, env=env)
            _p11tool(st, "--keypairgen", "--key-type", spec.key_type, "--id", kid, "--label", spec.label,
                     "--usage-sign", env=env)
            have.add(("pubkey", kid))
        cert_obj = ("cert", kid) in have and not new_key
        if new_key or not k.certfile.exists() and not cert_obj:
            _make_code_signing_cert(st, k, env)
        elif not k.certfile.exists() and cert_obj:
            der = k.certfile.with_suffix(".der.tmp")
            _p11tool(st, "--read-object", "--type", "cert", "--id", kid, "--output-file", str(der), env=env)
            pem = _run(["openssl", "x509", "-inform", "DER", "-in", str(der)])
            der.unlink()
            _write_text(k.certfile, pem.decode())
        if spec.cert_on_token and not cert_obj:
            der = k.certfile.with_suffix(".der")
            _run(["openssl", "x509", "-in", str(k.certfile), "-outform", "DER", "-out", str(der)])
            _p11tool(st, "--write-object", str(der), "--type", "cert", "--id", kid, "--label", spec.label,
                     env=env)
            der.unlink()
        if not spec.public_on_token and ("pubkey", kid) in have:
            _p11tool(st, "--delete-object", "--type", "pubkey", "--id", kid, env=env)
        t[f"key_{spec.label}"] = time.monotonic() - t1
    return t


# ----------------------------------------------------------------------------------------------------------
# provision()
# ----------------------------------------------------------------------------------------------------------

def _load_manifest(state_dir: Path) -> dict:
    with contextlib.suppress(FileNotFoundError, ValueError):
        m = json.loads((state_dir / MANIFEST).read_text())
        if m.get("version") == MANIFEST_VERSION:
            return m
    return {}


def _new_state(state_dir: Path, listen: str, manifest: dict, token_label: str, module: str,
               keys: Sequence[KeySpec]) -> State:
    tls = state_dir / "tls"
    st = State(
        state_dir=state_dir, listen=listen, module=module,
        softhsm2_conf=state_dir / "softhsm2.conf", token_dir=state_dir / "tokens",
        token_label=token_label, token_name=TOKEN_NAME,
        so_pin=manifest.get("so_pin") or secrets.token_hex(8),
        user_pin=manifest.get("user_pin") or secrets.token_hex(8),
        pinfile=state_dir / "pins.yml", keys={},
        ca_cert=tls / "ca.pem", ca_key=tls / "ca.key", server_cert=tls / "server.pem",
        server_key=tls / "server.key",
        client=ClientCert("demo", tls / "client.pem", tls / "client.key", ""), clients={},
        config=state_dir / "p11relayd.yml", client_config=state_dir / "client.yml",
        relic_config=state_dir / "relic.yml", audit_file=state_dir / "audit.log")
    for spec in keys:
        uri = f"pkcs11:token={token_label};object={spec.label};id=%{'%'.join(re.findall('..', spec.id))};" \
              "type=private"
        st.keys[spec.label] = KeyInfo(spec, state_dir / "certs" / f"{spec.label}.pem", uri)
    return st


def provision(state_dir: os.PathLike, listen: str = DEFAULT_LISTEN, keys: Sequence[KeySpec] = DEFAULT_KEYS,
              *, token_label: str = TOKEN_LABEL, module: str = SOFTHSM_MODULE,
              template_dir: Optional[os.PathLike] = None, keep_configs: bool = False) -> State:
    """Create (or reuse) everything p11relayd needs in state_dir; returns the State.

    template_dir: provision that directory instead (once, under a lock) and copy it into state_dir —
    a copy takes milliseconds where a fresh token with an RSA key takes about a second.
    keep_configs: leave an existing p11relayd.yml, client.yml and relic.yml as they are (an operator may have
    edited them); only missing ones are written. st.kept_configs lists the kept ones.
    """
    state_dir = Path(state_dir).resolve()
    if len({k.label for k in keys}) != len(keys) or len({k.id.lower() for k in keys}) != len(keys):
        raise ValueError("key labels and ids must be unique")
    if template_dir is not None:
        tpl = provision(template_dir, listen, keys, token_label=token_label, module=module)
        if not (state_dir / MANIFEST).exists():
            return clone(tpl.state_dir, state_dir, listen=listen, keys=keys)
    t_start = time.monotonic()
    with _locked(state_dir):
        os.chmod(state_dir, 0o700)
        manifest = _load_manifest(state_dir)
        st = _new_state(state_dir, listen, manifest, token_label, module, keys)
        _write_text(st.softhsm2_conf, f"directories.tokendir = {st.token_dir}\n"
                                      "objectstore.backend = file\nlog.level = ERROR\n")
        _openssl_cnf(state_dir, write=True)
        fresh = not (manifest.get("user_pin") and manifest.get("token_label") == token_label
                     and _token_present(st))
        if fresh:     # new PINs for a new token (an old token dir without its PINs is unusable anyway)
            st.so_pin, st.user_pin = secrets.token_hex(8), secrets.token_hex(8)
        # The TLS material does not touch the token: make it in parallel with the token work.
        tls_times: dict = {}
        tls_err: list = []

        def tls_job() -> None:
            try:
                tls_times.update(_make_tls(state_dir))
            except BaseException as e:  # re-raised below
                tls_err.append(e)
        th = threading.Thread(target=tls_job)
        th.start()
        try:
            # Manifest + PIN file first: a run interrupted after the token init can still log in next time.
            _save_manifest(st)
            tok_times = _provision_token(st, keys, fresh)
        finally:
            th.join()
        if tls_err:
            raise tls_err[0]
        st.client.fingerprint = spki_fingerprint(st.client.certfile)
        st.clients["demo"] = st.client
        for name in manifest.get("clients", []):
            cert = state_dir / "tls" / "clients" / f"{name}.pem"
            if cert.exists():
                st.clients[name] = ClientCert(name, cert, cert.with_suffix(".key"), spki_fingerprint(cert))
        st.kept_configs = [p for p in (st.config, st.client_config, st.relic_config)
                           if keep_configs and p.exists()]
        if st.config not in st.kept_configs:
            st.write_config()
        st.write_client_configs(keep=st.kept_configs)
        _save_manifest(st)
    st.timings = {**tok_times, **tls_times, "total": time.monotonic() - t_start}
    return st


def _save_manifest(st: State) -> None:
    old = _load_manifest(st.state_dir)
    keys = [dataclasses.asdict(k.spec) for k in st.keys.values()]
    # keep keys an earlier run made (they are on the token) so that load() knows them
    keys += [k for k in old.get("keys", []) if k["label"] not in st.keys]
    _write_text(st.pinfile, f"# token name -> user PIN (p11relayd pinfile)\n{st.token_name}: "
                            f"{json.dumps(st.user_pin)}\n", 0o600)
    m = {"version": MANIFEST_VERSION, "token_label": st.token_label, "so_pin": st.so_pin,
         "user_pin": st.user_pin, "listen": st.listen,
         "keys": keys,
         "clients": sorted(set(old.get("clients", [])) | {n for n in st.clients if n != "demo"})}
    _write_text(st.state_dir / MANIFEST, json.dumps(m, indent=2) + "\n", 0o600)


def load(state_dir: os.PathLike, listen: Optional[str] = None) -> State:
    """Re-provision an existing state directory with the keys recorded in its manifest (no new objects)."""
    state_dir = Path(state_dir).resolve()
    m = _load_manifest(state_dir)
    if not m:
        raise ProvisionError(f"{state_dir} has not been provisioned")
    keys = tuple(KeySpec(**{**k, "roles": tuple(k["roles"])}) for k in m["keys"])
    return provision(state_dir, listen or m.get("listen", DEFAULT_LISTEN), keys, token_label=m["token_label"])


def clone(src: os.PathLike, dst: os.PathLike, *, listen: Optional[str] = None,
          keys: Optional[Sequence[KeySpec]] = None) -> State:
    """Copy a provisioned state directory (token included) to dst and re-point its configs at dst.

    The copy is an independent token (own SOFTHSM2_CONF) with the same keys, PINs and certificates.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    with _locked(src):
        if not (src / MANIFEST).exists():
            raise ProvisionError(f"{src} has not been provisioned")
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True,
                        ignore=shutil.ignore_patterns(".provision.lock", "audit.log*", "*.tmp"))
    m = _load_manifest(dst)
    if keys is None:
        keys = tuple(KeySpec(**{**k, "roles": tuple(k["roles"])}) for k in m["keys"])
    # Every file exists, so this only rewrites softhsm2.conf and the configs (listen, absolute paths).
    return provision(dst, listen or m.get("listen", DEFAULT_LISTEN), keys, token_label=m["token_label"])


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------

def _parse_key(s: str) -> KeySpec:
    try:
        label, kid, ktype = s.split(":", 2)
    except ValueError:
        raise argparse.ArgumentTypeError("expected LABEL:ID:TYPE, e.g. ec384:03:EC:secp384r1") from None
    if not re.fullmatch(r"(?:[0-9a-fA-F]{2})+", kid):
        raise argparse.ArgumentTypeError(f"id {kid!r} is not hex")
    return KeySpec(label, kid, ktype)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Provision a SoftHSMv2 token, keys, certificates, TLS material "
                                             "and configuration for p11relayd.")
    ap.add_argument("state_dir", type=Path)
    ap.add_argument("--listen", default=DEFAULT_LISTEN, help="host:port (default %(default)s)")
    ap.add_argument("--key", action="append", type=_parse_key, default=[], metavar="LABEL:ID:TYPE",
                    help="an extra key, e.g. ec384:03:EC:secp384r1 or rsa3072:04:rsa:3072 (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON (includes the PINs)")
    ap.add_argument("--keep-configs", action="store_true",
                    help="keep an existing p11relayd.yml, client.yml and relic.yml (write only missing ones)")
    a = ap.parse_args(argv)
    try:
        st = provision(a.state_dir, a.listen, DEFAULT_KEYS + tuple(a.key), keep_configs=a.keep_configs)
    except (ProvisionError, ValueError) as e:
        print(f"provision: {e}", file=sys.stderr)
        return 1
    if a.json:
        json.dump(st.to_json(), sys.stdout, indent=2)
        print()
        return 0
    print(f"state directory   {st.state_dir}")
    print(f"daemon config     {st.config}   (run with SOFTHSM2_CONF={st.softhsm2_conf})")
    print(f"client config     {st.client_config}")
    print(f"relic config      {st.relic_config}")
    print(f"token             {st.token_label} ({st.module}); PIN in {st.pinfile}")
    print(f"keys              {', '.join(st.keys)}")
    print(f"client            {st.client.certfile} fingerprint {st.client.fingerprint}")
    for p in st.kept_configs:
        print(f"kept              {p} (exists; delete it to have it generated again)")
    print(f"took              {st.timings['total']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
