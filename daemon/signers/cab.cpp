// relic's cab signer on the server: the relic client uploads the whole cabinet; we digest it as it arrives
// (common/authenticode/cab.h: only its head is buffered), sign (authenticode_upload.cpp) and answer with
// relic's binary patch: the head with the signature reserve, and the signature after the last data block.
#include "common/authenticode/cab.h"
#include "daemon/signers/authenticode_upload.h"
#include "daemon/signers/signers.h"

namespace p11relay::daemon {
namespace {

namespace ac = p11relay::authenticode;

class CabSigner : public AuthenticodeUpload {
 public:
  CabSigner(const SignerContext& c, UploadParams params)
      : AuthenticodeUpload(c.service, c.key, c.key_name, std::move(params)), alg_(c.digest), digester_(c.digest) {}

  Status consume(std::string_view chunk) override {
    return refused_chunk(digester_.update({reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size()}), "");
  }

 protected:
  Result<UploadDigest> digested() override {
    ASSIGN_OR_RETURN(auto done, digester_.finish());
    plan_ = std::move(done.first);
    UploadDigest d;
    d.image_digest = std::move(done.second);
    d.spc = ac::cab_spc_indirect_data_content(alg_, d.image_digest);
    d.size = digester_.bytes_seen();
    return d;
  }

  Result<http::Response> respond(const UploadDigest& d, const Bytes& signed_data, nlohmann::json& extra) override {
    auto blob = ac::binpatch::serialize(ac::cab_patch(plan_, d.size, signed_data));
    if (!blob.ok()) return internal_error("binpatch: " + blob.error().message);
    extra["perf.size.patch"] = blob->size();
    return answer(ac::binpatch::kMimeType, *blob, extra);
  }

 private:
  HashAlg alg_;
  ac::CabDigester digester_;
  ac::CabPlan plan_;
};

}  // namespace

void register_cab(Service& svc) {
  svc.signers["cab"] = [](const SignerContext& c) { return make_upload<CabSigner>(c, "cab"); };
}

}  // namespace p11relay::daemon
