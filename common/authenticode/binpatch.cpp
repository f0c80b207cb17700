#include "common/authenticode/binpatch.h"

#include <algorithm>
#include <limits>
#include <string>

namespace p11relay::authenticode::binpatch {

namespace {

constexpr size_t kHeader = 8, kRecord = 16;
constexpr uint64_t kMaxU32 = 0xffffffffULL;

void put_be(Bytes& out, uint64_t v, int n) {
  for (int i = n - 1; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t get_be(std::span<const uint8_t> b, size_t off, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | b[off + i];
  return v;
}

std::vector<Record> sorted_checked(const Patch& patch, Status& status) {
  std::vector<Record> recs = patch.records;
  std::stable_sort(recs.begin(), recs.end(), [](const Record& a, const Record& b) { return a.offset < b.offset; });
  for (size_t i = 1; i < recs.size(); ++i)
    if (recs[i].offset < recs[i - 1].offset + recs[i - 1].old_size)
      status = bad_request("binpatch records " + std::to_string(i - 1) + " and " + std::to_string(i) + " overlap");
  return recs;
}

}  // namespace

Result<Bytes> serialize(const Patch& patch) {
  Status st;
  std::vector<Record> recs = sorted_checked(patch, st);
  if (!st.ok()) return st.take_error();
  // Coalesce records that touch (relic's builder does the same), then split oversized removals.
  std::vector<Record> merged;
  for (auto& r : recs) {
    if (!merged.empty() && merged.back().offset + merged.back().old_size == r.offset) {
      merged.back().old_size += r.old_size;
      merged.back().data.insert(merged.back().data.end(), r.data.begin(), r.data.end());
    } else {
      merged.push_back(std::move(r));
    }
  }
  std::vector<Record> out;
  for (auto& r : merged) {
    if (r.data.size() > kMaxU32) return bad_request("binpatch blob larger than 4 GiB");
    if (r.offset > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return bad_request("binpatch offset out of range");
    uint64_t off = r.offset, left = r.old_size;
    while (left > kMaxU32) {
      out.push_back({off, kMaxU32, {}});
      off += kMaxU32;
      left -= kMaxU32;
    }
    out.push_back({off, left, std::move(r.data)});
  }
  Bytes buf;
  put_be(buf, 1, 4);
  put_be(buf, out.size(), 4);
  for (const auto& r : out) {
    put_be(buf, r.offset, 8);
    put_be(buf, r.old_size, 4);
    put_be(buf, r.data.size(), 4);
  }
  for (const auto& r : out) buf.insert(buf.end(), r.data.begin(), r.data.end());
  return buf;
}

Result<Patch> parse(std::span<const uint8_t> data) {
  if (data.size() < kHeader) return bad_request("binpatch: truncated header");
  uint64_t version = get_be(data, 0, 4);
  if (version != 1) return bad_request("binpatch: unsupported version " + std::to_string(version));
  uint64_t n = get_be(data, 4, 4);
  if (n > (data.size() - kHeader) / kRecord) return bad_request("binpatch: record table extends past end of patch");
  size_t blob = kHeader + static_cast<size_t>(n) * kRecord;
  Patch p;
  p.records.reserve(static_cast<size_t>(n));
  uint64_t prev_end = 0;
  for (uint64_t i = 0; i < n; ++i) {
    size_t at = kHeader + static_cast<size_t>(i) * kRecord;
    uint64_t off = get_be(data, at, 8);
    uint64_t old_size = get_be(data, at + 8, 4);
    uint64_t new_size = get_be(data, at + 12, 4);
    if (off > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return bad_request("binpatch: record " + std::to_string(i) + " has a negative offset");
    if (i > 0 && off < prev_end)
      return bad_request("binpatch: record " + std::to_string(i) + " overlaps or is out of order");
    prev_end = off + old_size;
    if (new_size > data.size() - blob)
      return bad_request("binpatch: data of record " + std::to_string(i) + " extends past end of patch");
    p.records.push_back({off, old_size, Bytes(data.begin() + static_cast<ptrdiff_t>(blob),
                                              data.begin() + static_cast<ptrdiff_t>(blob + new_size))});
    blob += static_cast<size_t>(new_size);
  }
  if (blob != data.size()) return bad_request("binpatch: trailing bytes after the last record's data");
  return p;
}

Result<Bytes> apply(std::span<const uint8_t> original, const Patch& patch) {
  Status st;
  std::vector<Record> recs = sorted_checked(patch, st);
  if (!st.ok()) return st.take_error();
  Bytes out;
  uint64_t cur = 0;
  for (size_t i = 0; i < recs.size(); ++i) {
    const auto& r = recs[i];
    if (r.offset > original.size() || r.old_size > original.size() - r.offset)
      return bad_request("binpatch: record " + std::to_string(i) + " reaches past end of file");
    out.insert(out.end(), original.begin() + static_cast<ptrdiff_t>(cur),
               original.begin() + static_cast<ptrdiff_t>(r.offset));
    out.insert(out.end(), r.data.begin(), r.data.end());
    cur = r.offset + r.old_size;
  }
  out.insert(out.end(), original.begin() + static_cast<ptrdiff_t>(cur), original.end());
  return out;
}

}  // namespace p11relay::authenticode::binpatch
