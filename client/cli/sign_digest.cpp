// `p11relay sign-digest`: hash signing. Only the digest goes to the daemon (a DigestInfo for RSA
// PKCS#1 v1.5); the signature is checked locally against the key's public key before it is written.
#include "client/cli/cli.h"

#include "common/authenticode/signed_data.h"
#include "common/digest.h"

#include <unistd.h>

#include <filesystem>
#include <iostream>

namespace p11relay::cli {
namespace fs = std::filesystem;

namespace {

struct SignDigestOptions {
  std::string key, alg = "sha256", hex, in, data, mechanism, out, format = "raw";
  std::string filename;                // context for audit and approvers; --data sets it from the file
  uint64_t filesize = 0;
  bool has_filesize = false;
  bool no_verify = false;
};

Result<Bytes> digest_from(const SignDigestOptions& o, HashAlg alg) {
  const size_t want = hash_info(alg).size;
  if (!o.hex.empty()) {
    auto d = from_hex(trim(o.hex));
    if (!d) return bad_request("--hex is not a hex string");
    return *d;
  }
  if (!o.in.empty()) {
    ASSIGN_OR_RETURN(Bytes raw, read_file(o.in, 4096));
    if (raw.size() == want) return raw;
    // A hex digest in a text file (sha256sum style "HEX  name" too) is accepted as well.
    std::string text = trim(to_string(raw));
    text = text.substr(0, text.find_first_of(" \t\r\n"));
    auto d = from_hex(text);
    if (d && d->size() == want) return *d;
    return bad_request(o.in + ": holds " + std::to_string(raw.size()) + " bytes; expected a " + hash_info(alg).name +
                       " digest (" + std::to_string(want) + " bytes binary, or hex)");
  }
  // --data: hash the file here, in a streaming pass.
  ASSIGN_OR_RETURN(MappedFile m, MappedFile::open(o.data));
  Hasher h(alg);
  auto d = m.data();
  Progress p("hashing", d.size());
  constexpr size_t kChunk = 4u << 20;
  for (size_t off = 0; off < d.size(); off += kChunk) {
    h.update(d.subspan(off, std::min(kChunk, d.size() - off)));
    p.update(off);
  }
  p.finish();
  return h.finish();
}

Status run(const Globals& g, const SignDigestOptions& o) {
  auto alg = hash_by_name(o.alg);
  if (!alg || *alg == HashAlg::md5) return bad_request("unknown or refused digest algorithm '" + o.alg + "' (use sha1, sha224, sha256, sha384, sha512)");
  ASSIGN_OR_RETURN(Bytes digest, digest_from(o, *alg));
  if (digest.size() != hash_info(*alg).size)
    return bad_request("the digest has " + std::to_string(digest.size()) + " bytes; " + hash_info(*alg).name + " has " +
                       std::to_string(hash_info(*alg).size));
  if (o.out.empty() && (o.format == "raw" || o.format == "der") && isatty(1) == 1)
    return bad_request("refusing to write a binary signature to a terminal: use --out FILE or --format base64");

  ASSIGN_OR_RETURN(auto c, connect(g));
  ASSIGN_OR_RETURN(auto key, find_key(*c, o.key, KeyLookup::kept_first));
  std::string filename = o.filename;
  std::optional<uint64_t> filesize;
  if (o.has_filesize) filesize = o.filesize;
  if (!o.data.empty()) {
    if (filename.empty()) filename = fs::path(o.data).filename().string();
    std::error_code ec;
    auto size = fs::file_size(o.data, ec);
    if (!filesize && !ec) filesize = static_cast<uint64_t>(size);
  }
  auto signed_ = sign_digest(*c, key, *alg, digest, o.mechanism, filename, filesize);
  if (!signed_.ok() && signed_.error().code == ErrorCode::key_changed) {
    // The key list kept on disk was stale: once more with the key as the daemon lists it now.
    ASSIGN_OR_RETURN(key, find_key(*c, key.name));
    signed_ = sign_digest(*c, key, *alg, digest, o.mechanism, filename, filesize);
  }
  if (!signed_.ok()) return signed_.take_error();
  DigestSignature sig = std::move(signed_).value();
  if (!o.no_verify) RETURN_IF_ERROR(verify_digest_signature(key, *alg, digest, sig.mechanism, sig.signature));

  Bytes out = sig.signature;
  if (o.format == "der" && sig.mechanism == "CKM_ECDSA") {
    ASSIGN_OR_RETURN(out, authenticode::ecdsa_raw_to_der(sig.signature));
  } else if (o.format == "base64") {
    out = to_bytes(base64_encode(sig.signature) + "\n");
  } else if (o.format == "hex") {
    out = to_bytes(to_hex(sig.signature) + "\n");
  }
  if (o.out.empty() || o.out == "-") return write_stdout(out);
  return write_file_atomic(o.out, out, 0644);
}

}  // namespace

void add_sign_digest(CLI::App& app, Globals& g) {
  auto o = std::make_shared<SignDigestOptions>();
  auto* cmd = app.add_subcommand("sign-digest", "sign a digest computed elsewhere (hash signing); only the digest is sent");
  cmd->add_option("-k,--key", o->key, "key name (see list-keys) or pkcs11: URI")->required();
  cmd->add_option("--digest-alg", o->alg, "sha1, sha224, sha256, sha384 or sha512")->capture_default_str();
  auto* hex = cmd->add_option("--hex", o->hex, "the digest as hex");
  auto* in = cmd->add_option("--in", o->in, "file holding the digest (binary, or hex text)")->check(CLI::ExistingFile);
  auto* data = cmd->add_option("--data", o->data, "hash this file locally and sign its digest")->check(CLI::ExistingFile);
  hex->excludes(in)->excludes(data);
  in->excludes(data);
  cmd->add_option("--filename", o->filename, "name of the file the digest is of (shown to approvers and audited; "
                                             "default with --data: its name)");
  auto* filesize = cmd->add_option("--filesize", o->filesize, "size in bytes of that file (default with --data: its size)");
  cmd->add_option("-m,--mechanism", o->mechanism, "pkcs1 (RSA PKCS#1 v1.5, DigestInfo), pss (RSA-PSS, salt = digest "
                                                  "length, MGF1 with the same hash) or ecdsa; default by key type")
      ->check(CLI::IsMember({"pkcs1", "pss", "ecdsa"}));
  cmd->add_option("-o,--out", o->out, "write the signature here (default: stdout)");
  cmd->add_option("--format", o->format, "raw (binary; ECDSA r||s as PKCS#11 returns it), der (ECDSA as DER "
                                         "Ecdsa-Sig-Value), base64 or hex (of raw)")
      ->check(CLI::IsMember({"raw", "der", "base64", "hex"}))
      ->capture_default_str();
  cmd->add_flag("--no-verify", o->no_verify, "skip the local check of the signature against the public key");
  cmd->callback([&g, o, filesize] {
    g.run = [&g, o, filesize]() -> Status {
      if (o->hex.empty() && o->in.empty() && o->data.empty()) return bad_request("give the digest with --hex, --in or --data");
      o->has_filesize = filesize->count() > 0;
      return run(g, *o);
    };
  });
}

}  // namespace p11relay::cli
