// `p11relay sign` (Authenticode on the client: the file is hashed here, only the digest of the signed
// attributes goes to the daemon) and `p11relay verify`.
//
// One pass over the file in user space: pe_digest_file reads it in 128 KiB chunks and takes the
// digest and the checksum's word sum together, on a thread of its own while this one talks to the
// daemon. Meanwhile another thread has the kernel copy the input into a temp file beside the
// destination (SignedFileWriter, copy_file_range); once the signature is made, the directory entry,
// the table and the arithmetically derived checksum are written into the copy and it is renamed
// into place. A 2 GB file is never held in memory.
#include "client/cli/authenticode.h"
#include "client/cli/cli.h"

#include "common/authenticode/der.h"
#include "common/authenticode/pe_digest.h"
#include "common/authenticode/pe_write.h"
#include "common/authenticode/signed_data.h"
#include "common/authenticode/timestamp.h"
#include "common/authenticode/verify.h"
#include "common/x509.h"

#include <openssl/x509_vfy.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <atomic>
#include <filesystem>
#include <future>
#include <iostream>

namespace p11relay::cli {
namespace fs = std::filesystem;
namespace ac = p11relay::authenticode;

namespace {

// pe_digest_file on another thread, so that the file is hashed while this one talks to the daemon.
// Destroying it before get() stops the pass: a wrong key name does not cost a pass over 2 GB.
class BackgroundDigest {
 public:
  BackgroundDigest(const std::string& path, const ac::PeDigestOptions& po, uint64_t size)
      : progress_("hashing " + fs::path(path).filename().string(), size),
        result_(std::async(std::launch::async, [this, path, po] {
          return ac::pe_digest_file(path, po, [this](uint64_t done) {
            progress_.update(done);
            return !stop_;
          });
        })) {}
  BackgroundDigest(const BackgroundDigest&) = delete;
  BackgroundDigest& operator=(const BackgroundDigest&) = delete;
  ~BackgroundDigest() {
    stop_ = true;
    if (result_.valid()) result_.wait();
  }
  Result<ac::PeInfo> get() {
    Result<ac::PeInfo> r = result_.get();
    progress_.finish();
    return r;
  }

 private:
  Progress progress_;
  std::atomic<bool> stop_{false};
  std::future<Result<ac::PeInfo>> result_;
};

}  // namespace

Result<Bytes> nest_signature(const std::string& file, const Result<ByteSpan>& existing, const Bytes& sd) {
  if (!existing.ok()) return bad_request(file + ": --append: " + existing.error().message);
  return ac::add_unsigned_attribute(*existing, ac::oid::kNestedSignature, sd);
}

void print_signed(const std::string& output, const std::string& key, std::initializer_list<std::string_view> parts) {
  std::string list;
  for (std::string_view p : parts) {
    if (p.empty()) continue;
    if (!list.empty()) list += ", ";
    list += p;
  }
  std::cerr << "signed " << output << " with key '" << key << "' (" << list << ")\n";
}

Result<HashAlg> check_sign_options(const SignOptions& o) {
  auto alg = hash_by_name(o.digest);
  if (!alg || *alg == HashAlg::md5 || *alg == HashAlg::sha224)
    return bad_request("--digest must be sha1, sha256, sha384 or sha512");
  if (o.page_hashes && !ac::page_hash_alg_for(*alg))
    return bad_request("page hashes exist only with sha1 and sha256 signatures");
  if (!o.timestamp_url.empty() && o.timestamp_url.rfind("http://", 0) != 0)
    return bad_request("--timestamp-url must be an http:// URL (RFC 3161 TSAs speak plain HTTP)");
  return *alg;
}

namespace {
Status use_key(Signing& s, relay::KeyDescription key) {
  s.key = std::move(key);
  ASSIGN_OR_RETURN(s.chain, key_chain(s.key));
  s.chain_ptrs.clear();
  for (auto& x : s.chain) s.chain_ptrs.push_back(x.get());
  return {};
}
}  // namespace

Result<Signing> open_signing(const Globals& g, const SignOptions& o) {
  Signing s;
  ASSIGN_OR_RETURN(s.c, connect(g));
  bool from_disk = false;
  ASSIGN_OR_RETURN(s.key, find_key(*s.c, o.key, KeyLookup::kept_first, &from_disk));
  RETURN_IF_ERROR(use_key(s, std::move(s.key)));
  if (from_disk) s.c->connect_ahead();  // TCP and TLS now, while the file hashes
  return s;
}


// The SignedData over `spc`: only the digest of the signed attributes goes to the daemon; then the
// timestamp, if asked for.
Result<Bytes> make_signature(const Globals& g, Signing& s, const SignOptions& o, HashAlg alg,
                             std::span<const uint8_t> spc, uint64_t size, const char* content_type) {
  const std::string filename = fs::path(o.file).filename().string();
  ac::RawSigner signer = [&](HashAlg a, std::span<const uint8_t> digest) -> Result<Bytes> {
    ASSIGN_OR_RETURN(DigestSignature sig, sign_digest(*s.c, s.key, a, digest, "", filename, size));
    if (g.verbose)
      std::cerr << "signed-attributes digest " << to_hex(digest) << " signed by '" << s.key.name << "' with "
                << sig.mechanism << "\n";
    if (sig.mechanism == "CKM_ECDSA") return ac::ecdsa_raw_to_der(sig.signature);
    return std::move(sig.signature);
  };
  ac::SignOptions so;
  so.description = o.description;
  so.url = o.url;
  so.signing_time = o.signing_time;
  auto built = ac::build_signed_data(alg, spc, s.chain_ptrs, so, signer, content_type);
  if (!built.ok() && built.error().code == ErrorCode::key_changed) {
    // The key list kept on disk was stale (a renewed certificate): once more with the key as it is now.
    ASSIGN_OR_RETURN(relay::KeyDescription now, find_key(*s.c, s.key.name));
    RETURN_IF_ERROR(use_key(s, std::move(now)));
    built = ac::build_signed_data(alg, spc, s.chain_ptrs, so, signer, content_type);
  }
  if (!built.ok()) return built.take_error();
  Bytes sd = std::move(built).value();
  if (o.timestamp_url.empty()) return sd;
  ac::TimestampOptions to;
  to.urls = {o.timestamp_url};
  to.timeout_seconds = o.timestamp_timeout;
  to.ca_file = o.tsa_cafile;
  auto ts = ac::add_timestamp(sd, to);
  if (!ts.ok()) return Error(ErrorCode::timestamp_failed, "timestamping failed: " + ts.error().message);
  return std::move(ts).value();
}

namespace {

Status run_sign_pe(const Globals& g, const SignOptions& o) {
  ASSIGN_OR_RETURN(HashAlg alg, check_sign_options(o));
  const std::string output = o.output.empty() ? o.file : o.output;

  struct stat before {};
  if (stat(o.file.c_str(), &before) != 0) return bad_request(o.file + ": " + std::strerror(errno));

  // Three things at once: the file is hashed on one thread while this one talks to the daemon (its
  // errors come first), and once the key is known the output is copied on another (SignedFileWriter).
  ac::PeDigestOptions po;
  po.alg = alg;
  po.page_hashes = o.page_hashes;
  po.keep_cert_table = false;  // SignedFileWriter reads an existing table from the file to nest
  BackgroundDigest digest(o.file, po, static_cast<uint64_t>(before.st_size));
  ASSIGN_OR_RETURN(Signing s, open_signing(g, o));
  ASSIGN_OR_RETURN(auto writer, ac::SignedFileWriter::open(o.file, output));
  writer->start_copy();
  Result<ac::PeInfo> pe_r = digest.get();
  if (!pe_r.ok()) return bad_request(o.file + ": " + pe_r.error().message);
  ac::PeInfo pe = std::move(pe_r).value();
  if (g.verbose)
    std::cerr << "image digest: " << hash_info(alg).name << " " << to_hex(pe.image_digest)
              << (pe.pe32plus ? " (PE32+)" : " (PE32)") << "\n";
  Bytes spc = ac::spc_indirect_data_content(pe.alg, pe.image_digest, pe.page_hash_alg, pe.page_hashes);
  ASSIGN_OR_RETURN(Bytes sd, make_signature(g, s, o, alg, spc, static_cast<uint64_t>(before.st_size)));
  RETURN_IF_ERROR(check_unchanged(o.file, before));
  RETURN_IF_ERROR(writer->commit(pe, sd, o.append ? ac::EmbedMode::nest : ac::EmbedMode::replace));
  print_signed(output, s.key.name, {hash_info(alg).name, o.page_hashes ? "page hashes" : "",
                                    o.timestamp_url.empty() ? "" : "timestamped", o.append && pe.signed_() ? "nested" : ""});
  return {};
}

Status run_sign(const Globals& g, const SignOptions& o) {
  ASSIGN_OR_RETURN(FileType t, detect_file_type(o.file));
  if (t == FileType::msi) return run_sign_msi(g, o);
  if (t == FileType::script) return run_sign_script(g, o);
  if (t == FileType::cab) return run_sign_cab(g, o);
  if (t == FileType::cat) return run_sign_cat(g, o);
  if (o.msi_extended) return bad_request("--msi-extended applies to MSI files only");
  return run_sign_pe(g, o);
}

// --- verify -------------------------------------------------------------------------------------

struct VerifyOptions {
  std::string file, cafile;
};

// Every ContentInfo(SignedData) in the file: the primary ones from the table, then nested ones.
Status collect_signed_data(std::span<const uint8_t> sd, std::vector<Bytes>& out, int depth) {
  if (depth > 8) return bad_request("signatures nested too deeply");
  out.emplace_back(sd.begin(), sd.end());
  ASSIGN_OR_RETURN(ac::SignedDataView v, ac::parse_signed_data(sd));
  if (v.signers.empty() || v.signers[0].unauth_attrs.empty()) return {};
  ASSIGN_OR_RETURN(auto attrs, ac::parse_attributes(v.signers[0].unauth_attrs));
  const Bytes nested = ac::der::oid_content(ac::oid::kNestedSignature);
  for (const auto& a : attrs)
    if (ac::der::equal(a.oid, nested))
      for (auto val : a.values) RETURN_IF_ERROR(collect_signed_data(val, out, depth + 1));
  return {};
}

Status check_chain(const std::vector<Bytes>& table, const std::string& cafile) {
  std::vector<Bytes> all;
  for (const auto& t : table) RETURN_IF_ERROR(collect_signed_data(t, all, 0));
  X509_STORE_ptr store(X509_STORE_new());
  if (!store || X509_STORE_load_file(store.get(), cafile.c_str()) != 1)
    return bad_request(cafile + ": cannot load CA certificates: " + openssl_error_string());
  X509_STORE_set_flags(store.get(), X509_V_FLAG_PARTIAL_CHAIN);
  int n = 0;
  for (const auto& sd : all) {
    ASSIGN_OR_RETURN(ac::SignedDataView v, ac::parse_signed_data(sd));
    if (v.signers.empty()) return bad_request("signature " + std::to_string(n) + " has no signer");
    auto signer = ac::find_signer_cert(v, v.signers[0]);
    if (!signer.ok()) return bad_request("signature " + std::to_string(n) + ": " + signer.error().message);
    X509* leaf = signer->get();
    X509_stack_ptr untrusted(sk_X509_new_null());
    for (auto der : v.certificates) {
      ASSIGN_OR_RETURN(X509_ptr cert, parse_certificate_der(der));
      sk_X509_push(untrusted.get(), cert.release());
    }
    X509_STORE_CTX_ptr ctx(X509_STORE_CTX_new());
    if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), leaf, untrusted.get()) != 1)
      return internal_error("X509_STORE_CTX_init: " + openssl_error_string());
    if (X509_verify_cert(ctx.get()) != 1) {
      int err = X509_STORE_CTX_get_error(ctx.get());
      openssl_error_string();
      return Error(ErrorCode::internal, "signature " + std::to_string(n) + ": signer " +
                                            name_rfc2253(X509_get_subject_name(leaf)) + " is not trusted by " + cafile +
                                            ": " + X509_verify_cert_error_string(err));
    }
    ++n;
  }
  return {};
}

Status verify_pe_report(const VerifyOptions& o, std::vector<Bytes>& primaries) {
  auto report = ac::verify_pe_file(o.file);
  if (!report.ok()) return Error(ErrorCode::internal, o.file + ": signature check FAILED: " + report.error().message);
  for (const auto& s : report->signatures) {
    std::cout << (s.nesting == 0 ? "signature (primary)" : "signature (nested " + std::to_string(s.nesting) + ")")
              << ": OK\n"
              << "  signer:      " << s.signer_subject << "\n"
              << "  issuer:      " << s.signer_issuer << "\n"
              << "  digest:      " << hash_info(s.alg).name << " " << to_hex(s.image_digest) << "\n"
              << "  page hashes: " << (s.page_hashes ? "yes (checked)" : "no") << "\n"
              << "  timestamp:   " << (s.timestamped ? "yes (RFC 3161)" : "no") << "\n";
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "0x%08x", report->stored_checksum);
  std::cout << "checksum:      " << buf;
  if (report->stored_checksum == report->computed_checksum)
    std::cout << " (correct)\n";
  else {
    std::snprintf(buf, sizeof buf, "0x%08x", report->computed_checksum);
    std::cout << " (WARNING: the file's checksum should be " << buf << ")\n";
  }
  ASSIGN_OR_RETURN(primaries, ac::parse_cert_table(report->cert_table));
  return {};
}

Status run_verify(const VerifyOptions& o) {
  ASSIGN_OR_RETURN(FileType t, detect_file_type(o.file));
  std::vector<Bytes> primaries;
  if (t != FileType::pe) {
    ASSIGN_OR_RETURN(Bytes sd, t == FileType::msi   ? run_verify_msi(o.file)
                               : t == FileType::cab ? run_verify_cab(o.file)
                               : t == FileType::cat ? run_verify_cat(o.file)
                                                    : run_verify_script(o.file));
    primaries.push_back(std::move(sd));
  } else {
    RETURN_IF_ERROR(verify_pe_report(o, primaries));
  }
  if (!o.cafile.empty()) {
    Status s = check_chain(primaries, o.cafile);
    if (!s.ok()) return Error(ErrorCode::internal, s.error().message);
    std::cout << "chain:         trusted by " << o.cafile << "\n";
  }
  return {};
}

}  // namespace

void add_authenticode(CLI::App& app, Globals& g) {
  {
    auto o = std::make_shared<SignOptions>();
    auto* cmd = app.add_subcommand("sign", "Authenticode-sign a PE file (.exe, .dll, .sys, .efi), a Windows Installer file "
                                           "(.msi, .msm, .msp), a cabinet (.cab), a security catalog (.cat) or a script (.ps1, .psm1, .psd1, "
                                           ".ps1xml, .psc1, .cdxml, .mof); the file stays here, only a digest is sent");
    cmd->add_option("-k,--key", o->key, "key name (see list-keys) or pkcs11: URI")->required();
    cmd->add_option("-f,--file", o->file, "file to sign (the type is taken from its content)")->required()->check(CLI::ExistingFile);
    cmd->add_option("-o,--output", o->output, "signed file (default: replace --file, via a temp file + rename)");
    cmd->add_option("--digest", o->digest, "sha256 (default), sha1, sha384 or sha512")->capture_default_str();
    cmd->add_option("--timestamp-url", o->timestamp_url, "RFC 3161 time-stamping authority, e.g. http://timestamp.digicert.com");
    cmd->add_option("--timestamp-cafile", o->tsa_cafile, "verify the TSA's certificate chain against these CA certificates")
        ->check(CLI::ExistingFile);
    cmd->add_option("--timestamp-timeout", o->timestamp_timeout, "seconds to wait for the TSA")->capture_default_str();
    cmd->add_option("--description", o->description, "program name shown by Windows (SpcSpOpusInfo)");
    cmd->add_option("--url", o->url, "program URL (SpcSpOpusInfo moreInfo)");
    cmd->add_flag("--page-hashes", o->page_hashes, "add page hashes (SpcPeImagePageHashes; sha1/sha256 only)");
    cmd->add_flag("--append", o->append, "keep the existing signature and add this one as a nested signature");
    cmd->add_flag("--msi-extended", o->msi_extended, "MSI: also sign the metadata (MsiDigitalSignatureEx stream)");
    cmd->add_flag("--signing-time", o->signing_time, "add the signing-time attribute");
    cmd->callback([&g, o] { g.run = [&g, o] { return run_sign(g, *o); }; });
  }
  {
    auto o = std::make_shared<VerifyOptions>();
    auto* cmd = app.add_subcommand("verify", "check a PE, MSI, cabinet or script file's Authenticode signature(s) against the file");
    cmd->add_option("-f,--file", o->file, "signed PE, MSI, cabinet or script file")->required()->check(CLI::ExistingFile);
    cmd->add_option("--cafile", o->cafile, "also require the signer's chain to lead to one of these certificates")
        ->check(CLI::ExistingFile);
    cmd->callback([o, &g] { g.run = [o] { return run_verify(*o); }; });
  }
}

}  // namespace p11relay::cli
