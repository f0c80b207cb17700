// `p11relay sign` / `verify` for Windows Installer files: the compound file is mapped, its MSI digest
// taken here, only the signed attributes' digest goes to the daemon, and the signed file is written
// anew (with the \x05DigitalSignature stream) to a temp file beside the output, renamed into place.
#include "client/cli/authenticode.h"
#include "client/cli/temp_output.h"

#include "common/authenticode/cab.h"
#include "common/authenticode/cat.h"
#include "common/authenticode/msi.h"
#include "common/authenticode/script.h"
#include "common/authenticode/signed_data.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>

namespace p11relay::cli {
namespace ac = p11relay::authenticode;

namespace {

// With --append onto a file that has MsiDigitalSignatureEx, our digest must include the same
// pre-hash, so the algorithms must agree.
Result<bool> extended_for(const ac::MsiSignatures& old, const SignOptions& o, HashAlg alg) {
  if (!o.append || old.signature.empty()) return o.msi_extended;
  if (old.extended.empty()) return false;
  if (old.extended.size() != hash_info(alg).size)
    return bad_request("the file's MsiDigitalSignatureEx was made with another digest: --append needs the same --digest");
  return true;
}

}  // namespace

Result<FileType> detect_file_type(const std::string& path) {
  uint8_t head[24] = {};
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return bad_request(path + ": " + std::strerror(errno));
  const ssize_t n = ::read(fd, head, sizeof head);
  ::close(fd);
  const std::span<const uint8_t> got(head, n > 0 ? static_cast<size_t>(n) : 0);
  if (got.size() >= 8 && ac::is_ole(got.first(8))) return FileType::msi;
  if (got.size() >= 8 && ac::is_cab(got.first(8))) return FileType::cab;
  if (ac::is_pkcs7(got)) return FileType::cat;
  if (ac::script_style(path)) return FileType::script;  // text: only the name tells the script type
  return FileType::pe;
}

Status only_plain_sign_options(const SignOptions& o) {
  if (o.page_hashes) return bad_request("--page-hashes applies to PE files only");
  if (o.msi_extended) return bad_request("--msi-extended applies to MSI files only");
  return {};
}

void print_signature(const ac::SignatureReport& s, const char* type) {
  std::cout << (s.nesting == 0 ? "signature (primary)" : "signature (nested " + std::to_string(s.nesting) + ")")
            << ": OK\n"
            << "  type:        " << type << "\n"
            << "  signer:      " << s.signer_subject << "\n"
            << "  issuer:      " << s.signer_issuer << "\n"
            << "  digest:      " << hash_info(s.alg).name << " " << to_hex(s.image_digest) << "\n"
            << "  timestamp:   " << (s.timestamped ? "yes (RFC 3161)" : "no") << "\n";
}

Result<SignInput> open_sign_input(const SignOptions& o) {
  SignInput f;
  f.output = o.output.empty() ? o.file : o.output;
  if (stat(o.file.c_str(), &f.before) != 0) return bad_request(o.file + ": " + std::strerror(errno));
  ASSIGN_OR_RETURN(f.in, MappedFile::open(o.file));
  return f;
}

Status check_unchanged(const std::string& path, const struct stat& before) {
  struct stat now {};
  if (stat(path.c_str(), &now) != 0 || now.st_size != before.st_size || now.st_mtim.tv_sec != before.st_mtim.tv_sec ||
      now.st_mtim.tv_nsec != before.st_mtim.tv_nsec)
    return bad_request(path + ": the file changed while it was being signed");
  return {};
}

Status run_sign_msi(const Globals& g, const SignOptions& o) {
  ASSIGN_OR_RETURN(HashAlg alg, check_sign_options(o));
  if (o.page_hashes) return bad_request("--page-hashes applies to PE files only");
  ASSIGN_OR_RETURN(SignInput input, open_sign_input(o));
  const auto& [output, before, in] = input;
  auto file = ac::ole::File::parse(in.data());
  if (!file.ok()) return bad_request(o.file + ": " + file.error().message);
  ASSIGN_OR_RETURN(ac::MsiSignatures old, ac::msi_signatures(*file));
  ASSIGN_OR_RETURN(bool extended, extended_for(old, o, alg));
  ASSIGN_OR_RETURN(Signing s, open_signing(g, o));
  Progress bar("hashing " + std::filesystem::path(o.file).filename().string(), static_cast<uint64_t>(before.st_size));
  ASSIGN_OR_RETURN(ac::MsiDigest d, ac::msi_digest(*file, alg, extended, bar.reporter()));
  bar.complete();
  if (g.verbose) std::cerr << "MSI digest: " << hash_info(alg).name << " " << to_hex(d.digest) << "\n";
  Bytes spc = ac::msi_spc_indirect_data_content(alg, d.digest);
  ASSIGN_OR_RETURN(Bytes sd, make_signature(g, s, o, alg, spc, static_cast<uint64_t>(before.st_size)));
  const bool nested = o.append && !old.signature.empty();
  if (nested) {
    ASSIGN_OR_RETURN(sd, nest_signature(o.file, ByteSpan(old.signature), sd));
  }
  RETURN_IF_ERROR(check_unchanged(o.file, before));
  ASSIGN_OR_RETURN(TempOutput out, TempOutput::create(output, before.st_mode & 07777));
  RETURN_IF_ERROR(ac::msi_write_signed(*file, sd, nested ? std::span<const uint8_t>(old.extended) : d.prehash,
                                       [&out](std::span<const uint8_t> p) { return out.write(p); }));
  RETURN_IF_ERROR(out.commit());
  print_signed(output, s.key.name, {"MSI", hash_info(alg).name, extended ? "MsiDigitalSignatureEx" : "",
                                    o.timestamp_url.empty() ? "" : "timestamped", nested ? "nested" : ""});
  return {};
}

Result<Bytes> run_verify_msi(const std::string& path) {
  ASSIGN_OR_RETURN(MappedFile in, MappedFile::open(path));
  auto file = ac::ole::File::parse(in.data());
  if (!file.ok()) return Error(ErrorCode::internal, path + ": signature check FAILED: " + file.error().message);
  auto report = ac::verify_msi(*file);
  if (!report.ok()) return Error(ErrorCode::internal, path + ": signature check FAILED: " + report.error().message);
  for (const auto& s : report->signatures) print_signature(s, "MSI");
  return std::move(report->cert_table);
}

}  // namespace p11relay::cli
