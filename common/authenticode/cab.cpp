#include "common/authenticode/cab.h"

#include "common/authenticode/der.h"
#include "common/authenticode/signed_data.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

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

uint16_t u16(std::span<const uint8_t> b, size_t at) { return static_cast<uint16_t>(b[at] | b[at + 1] << 8); }
uint32_t u32(std::span<const uint8_t> b, size_t at) {
  return static_cast<uint32_t>(b[at]) | static_cast<uint32_t>(b[at + 1]) << 8 | static_cast<uint32_t>(b[at + 2]) << 16 |
         static_cast<uint32_t>(b[at + 3]) << 24;
}
void put16(Bytes& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v);
  b[at + 1] = static_cast<uint8_t>(v >> 8);
}
void put32(Bytes& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

Error cab_error(const std::string& what) { return bad_request("not a cabinet p11relay can sign: " + what); }

// The signature reserve of a cabinet that has one: its offset and size (0, 0 when unsigned), checked.
Result<std::pair<uint32_t, uint32_t>> signature_reserve(std::span<const uint8_t> f) {
  if (f.size() < kReserveEnd) return cab_error("the file ends inside the CFHEADER");
  if (u32(f, kReserveSizes) != 20)
    return cab_error("it has reserved fields of its own (cbCFHeader " + std::to_string(u16(f, kReserveSizes)) +
                     ", cbCFFolder " + std::to_string(f[38]) + ", cbCFData " + std::to_string(f[39]) +
                     "), not a signature reserve");
  if (u32(f, kReserveTag) != 0x00100000) return cab_error("its 20-byte reserve is not a signature reserve");
  const uint32_t pos = u32(f, kSigPos), len = u32(f, kSigLen);
  if ((pos == 0) != (len == 0)) return cab_error("the signature offset and size disagree");
  if (pos != 0 && (pos > f.size() || f.size() - pos != len))
    return cab_error("the signature area (offset " + std::to_string(pos) + ", " + std::to_string(len) +
                     " bytes) does not end the file");
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
  return head.size() >= 8 && std::memcmp(head.data(), "MSCF", 4) == 0 && u32(head, 4) == 0;
}

Result<CabPlan> cab_plan(std::span<const uint8_t> f) {
  if (f.size() < kFixedEnd || !is_cab(f)) return cab_error("no MSCF header");
  if (f.size() > std::numeric_limits<uint32_t>::max() - kInsert) return cab_error("larger than 4 GiB");
  const uint16_t flags = u16(f, kFlags);
  if (flags & kPrevCabinet) return cab_error("it continues another cabinet (multi-volume sets are not supported)");
  const bool reserve = flags & kReservePresent;
  uint32_t sigpos = 0;
  if (reserve) {
    ASSIGN_OR_RETURN(auto r, signature_reserve(f));
    sigpos = r.first;
  }
  const size_t data_end = sigpos ? sigpos : f.size();
  if (u32(f, kCbCabinet) != data_end)
    return cab_error("cbCabinet says " + std::to_string(u32(f, kCbCabinet)) + " bytes, the cabinet has " +
                     std::to_string(data_end));
  ASSIGN_OR_RETURN(size_t folders_at, skip_names(f, reserve ? kReserveEnd : kFixedEnd, data_end, flags));
  const size_t folders_end = folders_at + kFolderSize * u16(f, kCFolders);
  if (folders_end > data_end) return cab_error("its CFFOLDER entries run past the end");
  if (u32(f, kCoffFiles) != folders_end) return cab_error("coffFiles does not follow the CFFOLDER entries");

  CabPlan plan;
  plan.was_signed = sigpos != 0;
  plan.tail_from = folders_end;
  plan.tail_to = data_end;
  const size_t shift = reserve ? 0 : kInsert;
  plan.head.assign(f.begin(), f.begin() + static_cast<ptrdiff_t>(kFixedEnd));
  if (reserve) {
    plan.head.insert(plan.head.end(), f.begin() + kFixedEnd, f.begin() + static_cast<ptrdiff_t>(folders_end));
  } else {
    static const uint8_t kReserve[kInsert] = {0x14, 0, 0, 0, 0, 0, 0x10, 0};  // sizes 20/0/0, tag; rest 0
    plan.head.insert(plan.head.end(), std::begin(kReserve), std::end(kReserve));
    plan.head.insert(plan.head.end(), f.begin() + kFixedEnd, f.begin() + static_cast<ptrdiff_t>(folders_end));
    put16(plan.head, kFlags, static_cast<uint16_t>(flags | kReservePresent));
    put32(plan.head, kCoffFiles, static_cast<uint32_t>(folders_end + shift));
  }
  for (size_t at = folders_at + shift; at < folders_end + shift; at += kFolderSize) {
    const uint32_t start = u32(plan.head, at);
    if (start < u32(f, kCoffFiles) || start > data_end) return cab_error("a CFFOLDER's data offset is outside the file");
    put32(plan.head, at, static_cast<uint32_t>(start + shift));
  }
  put32(plan.head, kCbCabinet, static_cast<uint32_t>(plan.signed_size()));
  put32(plan.head, kSigPos, 0);
  put32(plan.head, kSigLen, 0);
  return plan;
}

Bytes cab_digest(const CabPlan& plan, std::span<const uint8_t> file, HashAlg alg) {
  Hasher h(alg);
  std::span<const uint8_t> head(plan.head);
  h.update(head.first(4));                      // MSCF; not reserved1
  h.update(head.subspan(8, 34 - 8));            // cbCabinet .. setID; not iCabinet, the reserve sizes,
  h.update(head.subspan(56));                   // the tag, offset and size; the reserve's last 4 bytes on
  h.update(file.subspan(plan.tail_from, plan.tail_to - plan.tail_from));
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
  put32(plan.head, kSigPos, static_cast<uint32_t>(plan.signed_size()));
  put32(plan.head, kSigLen, static_cast<uint32_t>(out.size()));
  return out;
}

Result<std::span<const uint8_t>> cab_signature(std::span<const uint8_t> f) {
  if (f.size() < kFixedEnd || !is_cab(f)) return cab_error("no MSCF header");
  if (!(u16(f, kFlags) & kReservePresent)) return std::span<const uint8_t>{};
  ASSIGN_OR_RETURN(auto r, signature_reserve(f));
  return f.subspan(r.first, r.second);
}

Result<VerifyReport> verify_cab(std::span<const uint8_t> file) {
  ASSIGN_OR_RETURN(auto area, cab_signature(file));
  if (area.empty()) return bad_request("the cabinet is not signed");
  der::Reader r(area);  // the SignedData, then the zero padding to 8 bytes
  ASSIGN_OR_RETURN(der::Tlv sd, r.next("the cabinet's signature"));
  ASSIGN_OR_RETURN(CabPlan plan, cab_plan(file));
  ASSIGN_OR_RETURN(SignatureReport signer, verify_signer(sd.whole));
  if (cab_digest(plan, file, signer.alg) != signer.image_digest)
    return bad_request("the cabinet's digest is not the one its signature carries (changed after signing)");
  VerifyReport report;
  report.signatures.push_back(std::move(signer));
  report.cert_table.assign(sd.whole.begin(), sd.whole.end());
  return report;
}

}  // namespace p11relay::authenticode
