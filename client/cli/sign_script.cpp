// `p11relay sign` for scripts (PowerShell .ps1/.psm1/.psd1, .ps1xml/.psc1/.cdxml, .mof): the digest
// of the text is taken here, only the signed attributes' digest goes to the daemon, and the script is
// written with its signature block to a temp file beside the output, renamed into place. `p11relay verify`
// for scripts too.
#include "client/cli/authenticode.h"
#include "client/cli/temp_output.h"

#include "common/authenticode/script.h"
#include "common/authenticode/signed_data.h"

#include <cerrno>
#include <cstring>
#include <iostream>

namespace p11relay::cli {
namespace ac = p11relay::authenticode;

Status run_sign_script(const Globals& g, const SignOptions& o) {
  ASSIGN_OR_RETURN(HashAlg alg, check_sign_options(o));
  RETURN_IF_ERROR(only_plain_sign_options(o));
  const std::optional<ac::ScriptStyle> style = ac::script_style(o.file);
  if (!style) return bad_request(o.file + ": not a script type p11relay signs (.ps1, .psm1, .psd1, .ps1xml, .psc1, .cdxml, .mof)");
  ASSIGN_OR_RETURN(SignInput input, open_sign_input(o));
  const auto& [output, before, in] = input;
  if (before.st_size == 0) return bad_request(o.file + ": the script is empty");
  auto layout = ac::script_layout(in.data(), *style);
  if (!layout.ok()) return bad_request(o.file + ": " + layout.error().message);
  auto digest = ac::script_digest(in.data(), *layout, alg);
  if (!digest.ok()) return bad_request(o.file + ": " + digest.error().message);
  if (g.verbose) std::cerr << "script digest: " << hash_info(alg).name << " " << to_hex(*digest) << "\n";
  ASSIGN_OR_RETURN(Signing s, open_signing(g, o));
  Bytes spc = ac::script_spc_indirect_data_content(alg, *digest);
  ASSIGN_OR_RETURN(Bytes sd, make_signature(g, s, o, alg, spc, static_cast<uint64_t>(before.st_size)));
  RETURN_IF_ERROR(check_unchanged(o.file, before));
  const bool nest = o.append && layout->signed_;
  if (nest) {
    auto existing = ac::script_signature(in.data(), *style);
    ASSIGN_OR_RETURN(sd, nest_signature(o.file, existing.ok() ? Result<ByteSpan>(*existing) : existing.error(), sd));
  }
  ASSIGN_OR_RETURN(TempOutput out, TempOutput::create(output, before.st_mode & 07777));
  RETURN_IF_ERROR(out.write(in.data().first(layout->content_end)));
  RETURN_IF_ERROR(out.write(ac::script_signature_block(*style, layout->utf16, sd)));
  RETURN_IF_ERROR(out.commit());
  print_signed(output, s.key.name, {"script", hash_info(alg).name, layout->utf16 ? "UTF-16" : "UTF-8",
                                    o.timestamp_url.empty() ? "" : "timestamped",
                                    nest ? "nested" : layout->signed_ ? "signature replaced" : ""});
  return {};
}

Result<Bytes> run_verify_script(const std::string& path) {
  const std::optional<ac::ScriptStyle> style = ac::script_style(path);
  if (!style) return bad_request(path + ": not a script type p11relay checks (.ps1, .psm1, .psd1, .ps1xml, .psc1, .cdxml, .mof)");
  ASSIGN_OR_RETURN(MappedFile in, MappedFile::open(path));
  auto report = ac::verify_script(in.data(), *style);
  if (!report.ok()) return Error(ErrorCode::internal, path + ": signature check FAILED: " + report.error().message);
  for (const auto& s : report->signatures) print_signature(s, "script");
  return std::move(report->cert_table);
}

}  // namespace p11relay::cli
