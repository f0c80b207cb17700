// relic's ps signer on the server (PowerShell and the other PowerShell-SIP formats): the relic client uploads
// the whole script with its style (flag `ps-style`, the file's extension, else the upload's file name); we
// keep it (scripts are text: at most 64 MiB), digest it as common/authenticode/script.h does for the CLI,
// sign (authenticode_upload.cpp) and answer with relic's binary patch: the script's old signature block, if
// any, replaced by the new one.
#include "common/authenticode/binpatch.h"
#include "common/authenticode/script.h"
#include "daemon/signers/authenticode_upload.h"
#include "daemon/signers/signers.h"

namespace p11relay::daemon {
namespace {

namespace ac = p11relay::authenticode;

constexpr size_t kMaxUpload = 64u << 20;

class PsSigner : public AuthenticodeUpload {
 public:
  PsSigner(const SignerContext& c, UploadParams params, ac::ScriptStyle style)
      : AuthenticodeUpload(c.service, c.key, c.key_name, std::move(params)), alg_(c.digest), style_(style) {}

  Status consume(std::string_view chunk) override {
    if (script_.size() + chunk.size() > kMaxUpload)
      return Error(ErrorCode::bad_request, "a script over 64 MiB is not signed here (sign it with the p11relay CLI)");
    script_.insert(script_.end(), chunk.begin(), chunk.end());
    return {};
  }

 protected:
  Result<UploadDigest> digested() override {
    auto layout = ac::script_layout(script_, style_);
    if (!layout.ok()) return bad_request("not a script we can sign: " + layout.error().message);
    layout_ = *layout;
    auto digest = ac::script_digest(script_, layout_, alg_);
    if (!digest.ok()) return bad_request("not a script we can sign: " + digest.error().message);
    UploadDigest d;
    d.image_digest = std::move(digest).value();
    d.spc = ac::script_spc_indirect_data_content(alg_, d.image_digest);
    d.size = script_.size();
    return d;
  }

  Result<http::Response> respond(const UploadDigest&, const Bytes& signed_data, nlohmann::json& extra) override {
    ac::binpatch::Patch patch;
    patch.records.push_back({layout_.content_end, script_.size() - layout_.content_end,
                             ac::script_signature_block(style_, layout_.utf16, signed_data)});
    auto blob = ac::binpatch::serialize(patch);
    if (!blob.ok()) return internal_error("binpatch: " + blob.error().message);
    extra["ps.utf16"] = layout_.utf16;
    extra["perf.size.patch"] = blob->size();
    return answer(ac::binpatch::kMimeType, *blob, extra);
  }

 private:
  HashAlg alg_;
  ac::ScriptStyle style_;
  Bytes script_;
  ac::ScriptLayout layout_;
};

// relic sends the style as the file's extension (".ps1"); a bare "ps1" or the file name do as well.
Result<ac::ScriptStyle> style_of(const SignerContext& c) {
  std::string probe;
  if (const std::string* s = c.param("ps-style"); s && !s->empty())
    probe = "script" + (s->front() == '.' ? *s : "." + *s);
  else if (const std::string* f = c.param("filename"))
    probe = *f;
  if (auto style = ac::script_style(probe)) return *style;
  return bad_request("unknown PowerShell signature style '" + probe +
                     "' (ps-style: .ps1, .psm1, .psd1, .ps1xml, .psc1, .cdxml or .mof)");
}

Result<std::unique_ptr<BodyConsumer>> make_ps(const SignerContext& c) {
  ASSIGN_OR_RETURN(ac::ScriptStyle style, style_of(c));
  ASSIGN_OR_RETURN(UploadParams p, upload_params(c, "ps"));
  p.request_options = std::string(style.open);  // the style changes the signature block (a held request's identity)
  return std::unique_ptr<BodyConsumer>(new PsSigner(c, std::move(p), style));
}

}  // namespace

void register_ps(Service& svc) { svc.signers["ps"] = make_ps; }

}  // namespace p11relay::daemon
