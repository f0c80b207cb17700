// `p11relay sign` and `verify` for security catalogs (.cat): the catalog's certificate trust list is signed
// as it is (common/authenticode/cat.h), only the signed attributes' digest goes to the daemon, and the new
// SignedData, which is the whole signed catalog, is written to a temp file beside the output and renamed
// into place. --append nests the new signature in the catalog's existing one.
#include "client/cli/authenticode.h"
#include "client/cli/temp_output.h"

#include "common/authenticode/cat.h"
#include "common/authenticode/signed_data.h"

#include <cerrno>
#include <cstring>
#include <iostream>

namespace p11relay::cli {
namespace ac = p11relay::authenticode;

Status run_sign_cat(const Globals& g, const SignOptions& o) {
  ASSIGN_OR_RETURN(HashAlg alg, check_sign_options(o));
  RETURN_IF_ERROR(only_plain_sign_options(o));
  ASSIGN_OR_RETURN(SignInput input, open_sign_input(o));
  const auto& [output, before, in] = input;
  auto cat = ac::parse_catalog(in.data());
  if (!cat.ok()) return bad_request(o.file + ": " + cat.error().message);
  if (g.verbose) std::cerr << "catalog trust list: " << cat->ctl.size() << " bytes\n";
  ASSIGN_OR_RETURN(Signing s, open_signing(g, o));
  ASSIGN_OR_RETURN(Bytes sd, make_signature(g, s, o, alg, cat->ctl, static_cast<uint64_t>(before.st_size),
                                            ac::oid::kCertTrustList));
  RETURN_IF_ERROR(check_unchanged(o.file, before));
  const bool nest = o.append && cat->was_signed;
  if (nest) {
    auto existing = ac::verify_catalog(in.data());  // the signature to nest into must be one
    // A catalog is its SignedData: nest into the file as mapped.
    ASSIGN_OR_RETURN(sd, nest_signature(o.file, existing.ok() ? Result<ByteSpan>(in.data()) : existing.error(), sd));
  }
  ASSIGN_OR_RETURN(TempOutput out, TempOutput::create(output, before.st_mode & 07777));
  RETURN_IF_ERROR(out.write(sd));
  RETURN_IF_ERROR(out.commit());
  print_signed(output, s.key.name, {"catalog", hash_info(alg).name, o.timestamp_url.empty() ? "" : "timestamped",
                                    nest ? "nested" : cat->was_signed ? "signature replaced" : ""});
  return {};
}

Result<Bytes> run_verify_cat(const std::string& path) {
  ASSIGN_OR_RETURN(MappedFile in, MappedFile::open(path));
  auto report = ac::verify_catalog(in.data());
  if (!report.ok()) return Error(ErrorCode::internal, path + ": signature check FAILED: " + report.error().message);
  for (const auto& s : report->signatures) print_signature(s, "catalog");
  return std::move(report->cert_table);
}

}  // namespace p11relay::cli
