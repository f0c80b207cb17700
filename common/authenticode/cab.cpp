#include "common/authenticode/cab.h"
#include "common/authenticode/le.h"

#include "common/authenticode/der.h"
#include "common/authenticode/signed_data.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>

namespace p11relay::authenticode {

namespace {

// CFHEADER field offsets (MS-CAB 2.1).
constexpr size_t kCbCabinet = 8, kCoffFiles = 16, kCFolders = 26, kFlags = 30, kFixedEnd = 36;
constexpr size_t kReserveSizes = 36, kReserveTag = 40, kSigPos = 44, kSigLen = 48, kReserveEnd = 60;
constexpr uint16_t kPrevCabinet = 0x0001, kNextCabinet = 0x0002, kReservePresent = 0x0004;
constexpr size_t kInsert = kReserveEnd - kFixedEnd;  // 24: the reserve sizes (4) and abReserve (20)
constexpr size_t kFolderSize = 8;                    // CFFOLDER without per-folder reserve
constexpr size_t kMaxName = 256;                     // szCabinetNext / szDiskNext, NUL included
const char* const kCabDataOid = "1.3.6.1.4.1.311.2.1.25";  // SPC_CAB_DATA_OBJID


// The planned head's part of the digest: MSCF (not reserved1), cbCabinet .. setID (not iCabinet, the reserve
// sizes, the tag, the signature's offset and size), then from the reserve's last 4 bytes on.
void hash_head(Hasher& h, std::span<const uint8_t> head) {
  h.update(head.first(4));
  h.update(head.subspan(8, 34 - 8));
  h.update(head.subspan(56));
}

Error cab_error(const std::string& what) { return bad_request("not a cabinet p11relay can sign: " + what); }

// The signature reserve of a cabinet that has one: its offset and size (0, 0 when unsigned), checked
// against the header; whether they end the file is cab_check_size's.
Result<std::pair<uint32_t, uint32_t>> signature_reserve(std::span<const uint8_t> f) {
  if (f.size() < kReserveEnd) return cab_error("the file ends inside the CFHEADER");
  if (le::get32(f, kReserveSizes) != 20)
    return cab_error("it has reserved fields of its own (cbCFHeader " + std::to_string(le::get16(f, kReserveSizes)) +
                     ", cbCFFolder " + std::to_string(f[38]) + ", cbCFData " + std::to_string(f[39]) +
                     "), not a signature reserve");
  if (le::get32(f, kReserveTag) != 0x00100000) return cab_error("its 20-byte reserve is not a signature reserve");
  const uint32_t pos = le::get32(f, kSigPos), len = le::get32(f, kSigLen);
  if ((pos == 0) != (len == 0)) return cab_error("the signature offset and size disagree");
  if (pos != 0 && pos != le::get32(f, kCbCabinet))
    return cab_error("the signature does not follow the cabinet (offset " + std::to_string(pos) + ", cbCabinet " +
                     std::to_string(le::get32(f, kCbCabinet)) + ")");
  return std::pair{pos, len};
}

// Offset just past szCabinetNext and szDiskNext (NUL-terminated) starting at `at`, within `end`.
Result<size_t> skip_names(std::span<const uint8_t> f, size_t at, size_t end, uint16_t flags) {
  if (!(flags & kNextCabinet)) return at;
  for (int name = 0; name < 2; ++name) {
    const size_t limit = std::min(end, at + kMaxName);
    size_t i = at;
    while (i < limit && f[i] != 0) ++i;
    if (i >= limit) return cab_error("an unterminated next-cabinet name");
    at = i + 1;
  }
  return at;
}

}  // namespace

bool is_cab(std::span<const uint8_t> head) {
  return head.size() >= 8 && std::memcmp(head.data(), "MSCF", 4) == 0 && le::get32(head, 4) == 0;
}

Result<std::optional<size_t>> cab_head_size(std::span<const uint8_t> prefix) {
  if (prefix.size() < kFixedEnd) return std::optional<size_t>{};
  if (!is_cab(prefix)) return cab_error("no MSCF header");
  const size_t coff_files = le::get32(prefix, kCoffFiles);
  constexpr size_t kMaxHead = kReserveEnd + 2 * kMaxName + kFolderSize * 65535;
  if (coff_files < kFixedEnd || coff_files > kMaxHead) return cab_error("coffFiles does not follow the CFFOLDER entries");
  return std::optional<size_t>{coff_files};
}

Result<CabPlan> cab_plan_head(std::span<const uint8_t> f) {
  ASSIGN_OR_RETURN(auto need, cab_head_size(f));
  if (!need || f.size() < *need) return cab_error("the file ends inside its header");
  const uint16_t flags = le::get16(f, kFlags);
  if (flags & kPrevCabinet) return cab_error("it continues another cabinet (multi-volume sets are not supported)");
  const bool reserve = flags & kReservePresent;
  uint32_t sigpos = 0, siglen = 0;
  if (reserve) {
    ASSIGN_OR_RETURN(auto r, signature_reserve(f));
    std::tie(sigpos, siglen) = r;
  }
  const size_t data_end = le::get32(f, kCbCabinet);  // believed here, checked by cab_check_size
  if (data_end > std::numeric_limits<uint32_t>::max() - kInsert) return cab_error("larger than 4 GiB");
  ASSIGN_OR_RETURN(size_t folders_at, skip_names(f, reserve ? kReserveEnd : kFixedEnd, *need, flags));
  const size_t folders_end = folders_at + kFolderSize * le::get16(f, kCFolders);
  if (folders_end != *need) return cab_error("coffFiles does not follow the CFFOLDER entries");
  if (folders_end > data_end) return cab_error("its CFFOLDER entries run past the end");

  CabPlan plan;
  plan.was_signed = sigpos != 0;
  plan.old_sig_end = static_cast<uint64_t>(sigpos) + siglen;
  plan.tail_from = folders_end;
  plan.tail_to = data_end;
  const size_t shift = reserve ? 0 : kInsert;
  plan.head.assign(f.begin(), f.begin() + static_cast<ptrdiff_t>(kFixedEnd));
  if (!reserve) {
    static const uint8_t kReserve[kInsert] = {0x14, 0, 0, 0, 0, 0, 0x10, 0};  // sizes 20/0/0, tag; rest 0
    plan.head.insert(plan.head.end(), std::begin(kReserve), std::end(kReserve));
    le::put16(plan.head, kFlags, static_cast<uint16_t>(flags | kReservePresent));
    le::put32(plan.head, kCoffFiles, static_cast<uint32_t>(folders_end + shift));
  }
  plan.head.insert(plan.head.end(), f.begin() + kFixedEnd, f.begin() + static_cast<ptrdiff_t>(folders_end));
  for (size_t at = folders_at + shift; at < folders_end + shift; at += kFolderSize) {
    const uint32_t start = le::get32(plan.head, at);
    if (start < folders_end || start > data_end) return cab_error("a CFFOLDER's data offset is outside the file");
    le::put32(plan.head, at, static_cast<uint32_t>(start + shift));
  }
  le::put32(plan.head, kCbCabinet, static_cast<uint32_t>(plan.signed_size()));
  le::put32(plan.head, kSigPos, 0);
  le::put32(plan.head, kSigLen, 0);
  return plan;
}

Status cab_check_size(const CabPlan& plan, uint64_t file_size) {
  const uint64_t end = plan.was_signed ? plan.old_sig_end : plan.tail_to;
  if (file_size != end)
    return cab_error(plan.was_signed ? "the signature area does not end the file"
                                     : "cbCabinet says " + std::to_string(plan.tail_to) + " bytes, the cabinet has " +
                                           std::to_string(file_size));
  return {};
}

Result<CabPlan> cab_plan(std::span<const uint8_t> f) {
  if (f.size() < kFixedEnd || !is_cab(f)) return cab_error("no MSCF header");
  ASSIGN_OR_RETURN(CabPlan plan, cab_plan_head(f));
  RETURN_IF_ERROR(cab_check_size(plan, f.size()));
  return plan;
}

Status CabDigester::update(std::span<const uint8_t> chunk) {
  while (!plan_ && !chunk.empty()) {  // the head: the fixed header, then up to coffFiles
    ASSIGN_OR_RETURN(auto need, cab_head_size(head_));
    const size_t take = std::min(chunk.size(), (need ? *need : kFixedEnd) - head_.size());
    head_.insert(head_.end(), chunk.begin(), chunk.begin() + static_cast<ptrdiff_t>(take));
    chunk = chunk.subspan(take);
    seen_ += take;
    ASSIGN_OR_RETURN(need, cab_head_size(head_));
    if (!need || head_.size() < *need) continue;
    ASSIGN_OR_RETURN(CabPlan plan, cab_plan_head(head_));
    plan_ = std::move(plan);
    hasher_.emplace(alg_);
    hash_head(*hasher_, plan_->head);
  }
  // The tail is file[tail_from, tail_to); what follows it (an old signature) is not hashed.
  const uint64_t at = seen_;
  seen_ += chunk.size();
  if (!chunk.empty() && at < plan_->tail_to)
    hasher_->update(chunk.first(static_cast<size_t>(std::min<uint64_t>(chunk.size(), plan_->tail_to - at))));
  return {};
}

Result<std::pair<CabPlan, Bytes>> CabDigester::finish() {
  if (!plan_) return cab_error(head_.size() < kFixedEnd ? "no MSCF header" : "the file ends inside its header");
  RETURN_IF_ERROR(cab_check_size(*plan_, seen_));
  return std::pair{std::move(*plan_), hasher_->finish()};
}

Bytes cab_digest(const CabPlan& plan, std::span<const uint8_t> file, HashAlg alg, const HashProgress& progress) {
  Hasher h(alg);
  hash_head(h, plan.head);
  uint64_t done = plan.head.size();
  update_reporting(h, file.subspan(plan.tail_from, plan.tail_to - plan.tail_from), done, progress);
  return h.finish();
}

Bytes cab_spc_indirect_data_content(HashAlg alg, std::span<const uint8_t> digest) {
  // SpcLink file [2] EXPLICIT SpcString unicode [0] IMPLICIT BMPString "<<<Obsolete>>>".
  static const std::string kObsolete = "<<<Obsolete>>>";
  Bytes bmp;
  for (char c : kObsolete) {
    bmp.push_back(0);
    bmp.push_back(static_cast<uint8_t>(c));
  }
  Bytes link = der::tlv(der::context(2, true), der::tlv(der::context(0, false), bmp));
  return der::seq({der::seq({der::oid(kCabDataOid), link}),
                   der::seq({der::seq({der::oid(hash_oid(alg)), der::null()}), der::octet_string(digest)})});
}

Bytes cab_signature_area(CabPlan& plan, std::span<const uint8_t> signed_data) {
  Bytes out(signed_data.begin(), signed_data.end());
  out.resize((out.size() + 7) / 8 * 8, 0);
  le::put32(plan.head, kSigPos, static_cast<uint32_t>(plan.signed_size()));
  le::put32(plan.head, kSigLen, static_cast<uint32_t>(out.size()));
  return out;
}

binpatch::Patch cab_patch(CabPlan plan, uint64_t file_size, std::span<const uint8_t> signed_data) {
  Bytes area = cab_signature_area(plan, signed_data);
  binpatch::Patch p;
  p.records.push_back({0, plan.tail_from, std::move(plan.head)});
  p.records.push_back({plan.tail_to, file_size - plan.tail_to, std::move(area)});
  return p;
}

Result<std::span<const uint8_t>> cab_signature(std::span<const uint8_t> f) {
  if (f.size() < kFixedEnd || !is_cab(f)) return cab_error("no MSCF header");
  if (!(le::get16(f, kFlags) & kReservePresent)) return std::span<const uint8_t>{};
  ASSIGN_OR_RETURN(auto r, signature_reserve(f));
  if (uint64_t{r.first} + r.second > f.size()) return cab_error("the signature runs past the end of the file");
  return f.subspan(r.first, r.second);
}

Result<VerifyReport> verify_cab(std::span<const uint8_t> file) {
  ASSIGN_OR_RETURN(auto area, cab_signature(file));
  if (area.empty()) return bad_request("the cabinet is not signed");
  der::Reader r(area);  // the SignedData, then the zero padding to 8 bytes
  ASSIGN_OR_RETURN(der::Tlv sd, r.next("the cabinet's signature"));
  ASSIGN_OR_RETURN(CabPlan plan, cab_plan(file));
  return verify_with_nested(
      sd.whole, [&](HashAlg alg) -> Result<Bytes> { return cab_digest(plan, file, alg); }, "the cabinet's");
}

}  // namespace p11relay::authenticode
