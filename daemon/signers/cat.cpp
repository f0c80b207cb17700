// relic's cat signer on the server: the relic client uploads the whole security catalog (at most 64 MiB, kept
// in memory: catalogs are small); we sign its certificate trust list as it is (common/authenticode/cat.h,
// authenticode_upload.cpp) and answer, as relic does, with the new PKCS#7 SignedData, which is the whole
// signed catalog (Content-Type application/pkcs7-mime). An old signature is replaced.
#include "common/authenticode/cat.h"
#include "daemon/signers/authenticode_upload.h"
#include "daemon/signers/signers.h"

namespace p11relay::daemon {
namespace {

namespace ac = p11relay::authenticode;

class CatSigner : public AuthenticodeUpload {
 public:
  CatSigner(const SignerContext& c, UploadParams params)
      : AuthenticodeUpload(c.service, c.key, c.key_name, std::move(params)), alg_(c.digest) {}

  Status consume(std::string_view chunk) override {
    if (file_.size() + chunk.size() > ac::kMaxCatalog)
      return Error(ErrorCode::bad_request, "not a security catalog (.cat): larger than 64 MiB");
    file_.insert(file_.end(), chunk.begin(), chunk.end());
    return {};
  }

 protected:
  Result<UploadDigest> digested() override {
    ASSIGN_OR_RETURN(ac::Catalog cat, ac::parse_catalog(file_));
    UploadDigest d;
    d.content_type = ac::oid::kCertTrustList;
    d.image_digest = hash(alg_, cat.ctl);
    d.spc = std::move(cat.ctl);
    d.size = file_.size();
    file_.clear();
    file_.shrink_to_fit();
    return d;
  }

  Result<http::Response> respond(const UploadDigest&, const Bytes& signed_data, nlohmann::json& extra) override {
    return answer("application/pkcs7-mime", signed_data, extra);
  }

 private:
  HashAlg alg_;
  Bytes file_;
};

}  // namespace

void register_cat(Service& svc) {
  svc.signers["cat"] = [](const SignerContext& c) { return make_upload<CatSigner>(c, "cat"); };
}

}  // namespace p11relay::daemon
