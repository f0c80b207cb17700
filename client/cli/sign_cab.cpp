// `p11relay sign` for cabinet files (.cab): the cabinet digest is taken here over the cabinet as it will be
// written (with the signature reserve inserted when it has none), only the signed attributes' digest goes to
// the daemon, and the cabinet is written with its signature to a temp file beside the output, renamed into
// place (common/authenticode/cab.h). `p11relay verify` for cabinets too.
#include "client/cli/authenticode.h"
#include "client/cli/temp_output.h"

#include "common/authenticode/cab.h"
#include "common/authenticode/signed_data.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>

namespace p11relay::cli {
namespace ac = p11relay::authenticode;
namespace fs = std::filesystem;

Status run_sign_cab(const Globals& g, const SignOptions& o) {
  ASSIGN_OR_RETURN(HashAlg alg, check_sign_options(o));
  RETURN_IF_ERROR(only_plain_sign_options(o));
  ASSIGN_OR_RETURN(SignInput input, open_sign_input(o));
  const auto& [output, before, in] = input;
  auto plan = ac::cab_plan(in.data());
  if (!plan.ok()) return bad_request(o.file + ": " + plan.error().message);
  Progress bar("hashing " + fs::path(o.file).filename().string(), static_cast<uint64_t>(before.st_size));
  Bytes digest = ac::cab_digest(*plan, in.data(), alg, bar.reporter());
  bar.complete();
  if (g.verbose) std::cerr << "cabinet digest: " << hash_info(alg).name << " " << to_hex(digest) << "\n";
  ASSIGN_OR_RETURN(Signing s, open_signing(g, o));
  Bytes spc = ac::cab_spc_indirect_data_content(alg, digest);
  ASSIGN_OR_RETURN(Bytes sd, make_signature(g, s, o, alg, spc, static_cast<uint64_t>(before.st_size)));
  RETURN_IF_ERROR(check_unchanged(o.file, before));
  const bool nest = o.append && plan->was_signed;
  if (nest) {
    auto existing = ac::verify_cab(in.data());  // the signature to nest into must be one
    ASSIGN_OR_RETURN(sd, nest_signature(o.file, existing.ok() ? Result<ByteSpan>(existing->cert_table) : existing.error(), sd));
  }
  Bytes area = ac::cab_signature_area(*plan, sd);
  ASSIGN_OR_RETURN(TempOutput out, TempOutput::create(output, before.st_mode & 07777));
  RETURN_IF_ERROR(out.write(plan->head));
  RETURN_IF_ERROR(out.write(in.data().subspan(plan->tail_from, plan->tail_to - plan->tail_from)));
  RETURN_IF_ERROR(out.write(area));
  RETURN_IF_ERROR(out.commit());
  print_signed(output, s.key.name, {"cabinet", hash_info(alg).name, o.timestamp_url.empty() ? "" : "timestamped",
                                    nest ? "nested" : plan->was_signed ? "signature replaced" : ""});
  return {};
}

Result<Bytes> run_verify_cab(const std::string& path) {
  ASSIGN_OR_RETURN(MappedFile in, MappedFile::open(path));
  auto report = ac::verify_cab(in.data());
  if (!report.ok()) return Error(ErrorCode::internal, path + ": signature check FAILED: " + report.error().message);
  for (const auto& s : report->signatures) print_signature(s, "cabinet");
  return std::move(report->cert_table);
}

}  // namespace p11relay::cli
