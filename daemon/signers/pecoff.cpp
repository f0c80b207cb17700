// relic's pe-coff signer on the server (docs/relic-protocol.md §2.6, §9): the relic client uploads the
// PE; we hash it in one forward pass as it arrives (never holding the file), sign the Authenticode
// attributes on the token (authenticode_upload.cpp), and answer with relic's two-record binary patch.
#include "common/authenticode/binpatch.h"
#include "common/authenticode/pe_digest.h"
#include "common/authenticode/pe_write.h"
#include "daemon/signers/authenticode_upload.h"
#include "daemon/signers/signers.h"

namespace p11relay::daemon {
namespace {

namespace ac = p11relay::authenticode;

class PeCoffSigner : public AuthenticodeUpload {
 public:
  PeCoffSigner(const SignerContext& c, UploadParams params, bool page_hashes)
      : AuthenticodeUpload(c.service, c.key, c.key_name, std::move(params)),
        page_hashes_(page_hashes),
        digester_(ac::PeDigestOptions{c.digest, page_hashes, /*keep_cert_table=*/false}) {}

  Status consume(std::string_view chunk) override {
    return refused_chunk(digester_.update({reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size()}),
                         "not a PE file we can sign: ");
  }

 protected:
  Result<UploadDigest> digested() override {
    auto pe = digester_.finish();
    if (!pe.ok()) return bad_request("not a PE file we can sign: " + pe.error().message);
    pe_ = std::move(pe).value();
    UploadDigest d;
    d.spc = ac::spc_indirect_data_content(pe_.alg, pe_.image_digest, pe_.page_hash_alg, pe_.page_hashes);
    d.image_digest = pe_.image_digest;
    d.size = pe_.file_size;
    return d;
  }

  Result<http::Response> respond(const UploadDigest&, const Bytes& signed_data, nlohmann::json& extra) override {
    ASSIGN_OR_RETURN(ac::binpatch::Patch patch, ac::make_pe_patch(pe_, signed_data));
    auto blob = ac::binpatch::serialize(patch);
    if (!blob.ok()) return internal_error("binpatch: " + blob.error().message);
    extra["pe-coff.pagehashes"] = page_hashes_;
    extra["perf.size.patch"] = blob->size();
    return answer("application/x-binary-patch", *blob, extra);
  }

 private:
  bool page_hashes_;
  ac::PeDigester digester_;
  ac::PeInfo pe_;
};

Result<std::unique_ptr<BodyConsumer>> make_pecoff(const SignerContext& c) {
  bool page_hashes = relic_flag(c, "page-hashes");
  if (page_hashes && !ac::page_hash_alg_for(c.digest))
    return Error(ErrorCode::bad_request, "page hashes need SHA-1 or SHA-256");
  ASSIGN_OR_RETURN(UploadParams p, upload_params(c, "pe-coff"));
  p.request_options.assign(1, page_hashes ? '1' : '0');  // one char: GCC 12 -Wrestrict false positive on operator=(const char*)
  return std::unique_ptr<BodyConsumer>(new PeCoffSigner(c, std::move(p), page_hashes));
}

}  // namespace

void register_pecoff(Service& svc) { svc.signers["pe-coff"] = make_pecoff; }

}  // namespace p11relay::daemon
