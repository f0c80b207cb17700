// relic's msi signer on the server (docs/relic-protocol.md §8): a relic client uploads not the MSI but
// a tar of its streams in digest order (with the metadata for MsiDigitalSignatureEx first); we digest
// it as it arrives, sign (authenticode_upload.cpp) and answer with the PKCS#7 signature, which the
// client writes into the MSI as its \x05DigitalSignature stream (with the pre-hash it computed itself).
#include "common/authenticode/msi.h"
#include "common/authenticode/msi_tar.h"
#include "daemon/signers/authenticode_upload.h"
#include "daemon/signers/signers.h"

namespace p11relay::daemon {

namespace {

namespace ac = p11relay::authenticode;

class MsiSigner : public AuthenticodeUpload {
 public:
  MsiSigner(const SignerContext& c, UploadParams params, bool extended)
      : AuthenticodeUpload(c.service, c.key, c.key_name, std::move(params)), alg_(c.digest), extended_(extended),
        digester_(c.digest, extended) {}

  Status consume(std::string_view chunk) override {
    return refused_chunk(digester_.update({reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size()}), "");
  }

 protected:
  Result<UploadDigest> digested() override {
    UploadDigest d;
    ASSIGN_OR_RETURN(d.image_digest, digester_.finish());
    d.spc = ac::msi_spc_indirect_data_content(alg_, d.image_digest);
    d.size = digester_.bytes_seen();
    return d;
  }

  Result<http::Response> respond(const UploadDigest&, const Bytes& signed_data, nlohmann::json& extra) override {
    extra["msi.extended"] = extended_;
    return answer("application/pkcs7-mime", signed_data, extra);  // relic's pkcs7.MimeType
  }

 private:
  HashAlg alg_;
  bool extended_;
  ac::MsiTarDigester digester_;
};

Result<std::unique_ptr<BodyConsumer>> make_msi(const SignerContext& c) {
  const bool extended = !relic_flag(c, "no-extended-sig");
  ASSIGN_OR_RETURN(UploadParams p, upload_params(c, "msi"));
  p.request_options.assign(1, extended ? 'x' : '-');
  return std::unique_ptr<BodyConsumer>(new MsiSigner(c, std::move(p), extended));
}

}  // namespace

void register_msi(Service& svc) {
  svc.signers["msi"] = make_msi;
  svc.signer_aliases["msi-tar"] = "msi";
}

}  // namespace p11relay::daemon
