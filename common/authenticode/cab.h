// Authenticode for cabinet files (.cab, MS-CAB). The signature lives after the last data block, and the
// CFHEADER's reserved area (cbCFHeader = 20, abReserve = 00 00 10 00, offset, size, 8 zero bytes) says
// where. An unsigned cabinet gets that area inserted after the fixed header, which moves everything
// behind it by 24 bytes (cbCabinet, coffFiles and each CFFOLDER's coffCabStart grow by 24; CFFILE and
// CFDATA hold no file offsets). The digest covers the cabinet as written, except bytes 4-7 (reserved1)
// and 34-55 (iCabinet, the reserve sizes and the signature's offset and size): the layout osslsigncode
// and Windows' cabinet SIP use. The SpcIndirectDataContent is SPC_CAB_DATA_OBJID with an obsolete
// SpcLink. The whole file is never copied: the new head plus a span of the original.
#pragma once

#include "common/authenticode/binpatch.h"
#include "common/authenticode/verify.h"
#include "common/bytes.h"
#include "common/digest.h"
#include "common/error.h"

#include <optional>
#include <span>
#include <utility>

namespace p11relay::authenticode {

// "MSCF" and a zero reserved1: a cabinet, whatever the file is called.
bool is_cab(std::span<const std::uint8_t> head);

// How a cabinet is written signed: `head` (CFHEADER with the signature reserve, the optional next-
// cabinet names, the CFFOLDERs; offsets already moved), then file[tail_from, tail_to) unchanged (CFFILEs
// and CFDATA), then the signature padded to 8 bytes.
struct CabPlan {
  Bytes head;
  size_t tail_from = 0, tail_to = 0;
  bool was_signed = false;        // the input had a signature; it is replaced
  std::uint64_t old_sig_end = 0;  // where the input's signature area ends (0: unsigned)
  std::uint64_t signed_size() const { return head.size() + (tail_to - tail_from); }
};

// Checks the cabinet and plans it. Refused: not a cabinet, a continuation of another cabinet (multi-volume
// with a previous one), reserved fields of other sizes than a signature's, offsets or sizes outside the
// file, a signature area that does not end the file, a cabinet over 4 GiB.
Result<CabPlan> cab_plan(std::span<const std::uint8_t> file);
// The same in two steps, for a cabinet that arrives as a stream: the plan from its first bytes (at least
// cab_head_size of them; the sizes the header declares are believed), then the check of the whole file's size
// against them.
Result<CabPlan> cab_plan_head(std::span<const std::uint8_t> head);
Status cab_check_size(const CabPlan& plan, std::uint64_t file_size);
// How many leading bytes cab_plan_head needs (the CFHEADER's coffFiles), once `prefix` holds 36 bytes;
// nullopt before. Refused when it is not a cabinet or the head is implausibly large (over 1 MiB).
Result<std::optional<size_t>> cab_head_size(std::span<const std::uint8_t> prefix);

// Digests a cabinet as it arrives (relic's cab signer): buffers the head, then hashes the rest forward.
class CabDigester {
 public:
  explicit CabDigester(HashAlg alg) : alg_(alg) {}
  Status update(std::span<const std::uint8_t> chunk);
  // The plan and the digest; errors when the cabinet ended early or its size is not what it declares.
  Result<std::pair<CabPlan, Bytes>> finish();
  std::uint64_t bytes_seen() const { return seen_; }

 private:

  HashAlg alg_;
  Bytes head_;
  std::optional<CabPlan> plan_;
  std::optional<Hasher> hasher_;
  std::uint64_t seen_ = 0;
};

// The Authenticode digest of the planned cabinet; `progress` is told the bytes hashed so far.
Bytes cab_digest(const CabPlan& plan, std::span<const std::uint8_t> file, HashAlg alg,
                 const HashProgress& progress = {});
Bytes cab_spc_indirect_data_content(HashAlg alg, std::span<const std::uint8_t> digest);
// Writes the signature's offset and padded size into plan.head (not covered by the digest) and returns the
// bytes that follow the tail: `signed_data` and its zero padding to a multiple of 8.
Bytes cab_signature_area(CabPlan& plan, std::span<const std::uint8_t> signed_data);
// relic's answer for a cabinet it was sent whole (`file_size` bytes): the relic binary patch that turns it into
// the signed cabinet (the head replaced, the old signature area, if any, replaced by the new one).
binpatch::Patch cab_patch(CabPlan plan, std::uint64_t file_size, std::span<const std::uint8_t> signed_data);
// The signature area of a signed cabinet (the DER SignedData and its padding), empty when there is none.
Result<std::span<const std::uint8_t>> cab_signature(std::span<const std::uint8_t> file);
// Checks a signed cabinet: its signature (verify_signer) and that the digest it carries is the cabinet's.
// cert_table of the report holds the SignedData (for a chain check).
Result<VerifyReport> verify_cab(std::span<const std::uint8_t> file);

}  // namespace p11relay::authenticode
