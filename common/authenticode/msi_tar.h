// The MSI digest from relic's upload form (docs/relic-protocol.md §8): a relic client does not upload
// the MSI but a tar of its streams in digest order — first "__exmeta" (the entries' metadata, whose
// hash is the MsiDigitalSignatureEx pre-hash), then every stream, each storage's CLSID as a
// "__storage_uid" member after its children. The digest is taken as the tar arrives, in one forward
// pass over arbitrary chunks, holding at most one header and one 64 KiB PAX/long-name record.
#pragma once

#include "common/bytes.h"
#include "common/digest.h"
#include "common/error.h"

#include <memory>
#include <span>

namespace p11relay::authenticode {

class MsiTarDigester {
 public:
  // `extended`: the pre-hash goes first (relic's default; its flag no-extended-sig turns it off).
  MsiTarDigester(HashAlg alg, bool extended);
  MsiTarDigester(MsiTarDigester&&) noexcept;
  ~MsiTarDigester();

  Status update(std::span<const uint8_t> chunk);
  // The MSI digest; an error if the tar ended inside a member.
  Result<Bytes> finish();
  uint64_t bytes_seen() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace p11relay::authenticode
