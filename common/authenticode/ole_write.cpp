// Writing a version 3 [MS-CFB] compound file from a tree of nodes. Layout, in sector order: the large
// streams (>= 4096 bytes, each contiguous), the mini stream, the mini FAT, the directory, the FAT, the
// DIFAT. Siblings form a balanced binary search tree (§2.6.4 order) coloured as a valid red-black
// tree: the nodes on the deepest level red, all others black.
#include "common/authenticode/ole.h"
#include "common/authenticode/le.h"

#include <algorithm>
#include <cstring>

namespace p11relay::authenticode::ole {

namespace {

constexpr uint32_t kSector = 512, kMini = 64, kCutoff = 4096;
constexpr uint32_t kEnd = 0xFFFFFFFE, kFree = 0xFFFFFFFF, kFatSect = 0xFFFFFFFD, kDifSect = 0xFFFFFFFC;

struct Slot {
  const Node* node = nullptr;
  uint32_t left = kNoStream, right = kNoStream, child = kNoStream;
  uint32_t start = kEnd;
  uint64_t size = 0;
  bool red = false;
};

uint64_t sectors_for(uint64_t bytes, uint32_t unit) { return (bytes + unit - 1) / unit; }


// Directory ids: breadth first; the children of each storage sorted and linked as a balanced tree.
class Directory {
 public:
  std::vector<Slot> slots;

  void build(const Node& root) {
    slots.push_back({&root});
    for (size_t i = 0; i < slots.size(); ++i) {
      const Node* n = slots[i].node;
      if (n->type == kStream || n->children.empty()) continue;
      std::vector<const Node*> kids;
      for (const auto& c : n->children) kids.push_back(&c);
      std::sort(kids.begin(), kids.end(), [](const Node* a, const Node* b) { return tree_less(a->name, b->name); });
      const uint32_t first = static_cast<uint32_t>(slots.size());
      for (const Node* k : kids) slots.push_back({k});
      int max_depth = 0;
      depth_of(0, static_cast<int>(kids.size()), 0, max_depth);
      slots[i].child = link(first, 0, static_cast<int>(kids.size()), 0, max_depth);
    }
  }

 private:
  static void depth_of(int lo, int hi, int depth, int& max_depth) {
    if (lo >= hi) return;
    max_depth = std::max(max_depth, depth);
    const int mid = lo + (hi - lo) / 2;
    depth_of(lo, mid, depth + 1, max_depth);
    depth_of(mid + 1, hi, depth + 1, max_depth);
  }
  uint32_t link(uint32_t first, int lo, int hi, int depth, int max_depth) {
    if (lo >= hi) return kNoStream;
    const int mid = lo + (hi - lo) / 2;
    Slot& s = slots[first + static_cast<uint32_t>(mid)];
    s.red = depth == max_depth && depth > 0;
    const uint32_t l = link(first, lo, mid, depth + 1, max_depth);
    const uint32_t r = link(first, mid + 1, hi, depth + 1, max_depth);
    slots[first + static_cast<uint32_t>(mid)].left = l;
    slots[first + static_cast<uint32_t>(mid)].right = r;
    return first + static_cast<uint32_t>(mid);
  }
};

// Buffers the output in 1 MiB pieces.
class Out {
 public:
  explicit Out(const std::function<Status(std::span<const uint8_t>)>& sink) : sink_(sink) { buf_.reserve(1 << 20); }
  Status put(std::span<const uint8_t> p) {
    if (buf_.size() + p.size() > (1u << 20)) RETURN_IF_ERROR(flush());
    if (p.size() >= (1u << 20)) return sink_(p);
    buf_.insert(buf_.end(), p.begin(), p.end());
    return {};
  }
  Status zeros(uint64_t n) {
    static const uint8_t z[kSector] = {};
    for (; n > 0; n -= std::min<uint64_t>(n, kSector)) RETURN_IF_ERROR(put({z, static_cast<size_t>(std::min<uint64_t>(n, kSector))}));
    return {};
  }
  Status u32s(const std::vector<uint32_t>& v) {
    Bytes b(v.size() * 4);
    for (size_t i = 0; i < v.size(); ++i) le::put32(b.data() + 4 * i, v[i]);
    return put(b);
  }
  Status flush() {
    if (buf_.empty()) return {};
    Status s = sink_(buf_);
    buf_.clear();
    return s;
  }

 private:
  const std::function<Status(std::span<const uint8_t>)>& sink_;
  Bytes buf_;
};

Status write_stream(const File& source, const Node& n, Out& out) {
  if (!n.source_entry) return out.put(n.data);
  uint64_t got = 0;
  RETURN_IF_ERROR(source.read(*n.source_entry, [&](std::span<const uint8_t> p) {
    got += p.size();
    return out.put(p);
  }));
  if (got != n.size) return internal_error("OLE stream changed size while being copied");
  return {};
}

Bytes dir_entry(const Slot& s) {
  Bytes d(128, 0);
  const Node& n = *s.node;
  for (size_t i = 0; i < n.name.size() && i < 31; ++i) le::put16(d.data() + 2 * i, n.name[i]);
  le::put16(d.data() + 0x40, static_cast<uint16_t>(2 * (std::min<size_t>(n.name.size(), 31) + 1)));
  d[0x42] = n.type;
  d[0x43] = s.red ? 0 : 1;
  le::put32(d.data() + 0x44, s.left);
  le::put32(d.data() + 0x48, s.right);
  le::put32(d.data() + 0x4C, s.child);
  std::copy(n.clsid.begin(), n.clsid.end(), d.begin() + 0x50);
  le::put32(d.data() + 0x60, n.state_bits);
  if (n.type != kRoot) std::copy(n.times.begin(), n.times.end(), d.begin() + 0x64);
  le::put32(d.data() + 0x74, s.start);
  le::put32(d.data() + 0x78, static_cast<uint32_t>(s.size));
  return d;
}

struct Layout {
  std::vector<uint32_t> fat, minifat;
  uint64_t big = 0, mini_bytes = 0;  // sectors of large streams; bytes of the mini stream
  uint32_t mini_start = kEnd, minifat_start = kEnd, dir_start = kEnd, fat_start = 0, difat_start = kEnd;
  uint32_t n_minifat = 0, n_dir = 0, n_fat = 0, n_difat = 0;
};

// Chains of `count` consecutive sectors from `first`.
void chain_run(std::vector<uint32_t>& table, uint32_t first, uint64_t count) {
  for (uint64_t i = 0; i < count; ++i) table[first + i] = i + 1 == count ? kEnd : static_cast<uint32_t>(first + i + 1);
}

Result<Layout> plan(Directory& dir) {
  Layout l;
  std::vector<std::pair<Slot*, uint64_t>> big, mini;
  for (auto& s : dir.slots) {
    if (s.node->type != kStream) continue;
    s.size = s.node->size;
    if (s.size == 0) continue;
    if (s.size > 0xFFFFFFFFull) return bad_request("an OLE stream is larger than 4 GiB");
    if (s.size >= kCutoff) {
      s.start = static_cast<uint32_t>(l.big);
      l.big += sectors_for(s.size, kSector);
    } else {
      s.start = static_cast<uint32_t>(l.mini_bytes / kMini);
      mini.push_back({&s, l.mini_bytes / kMini});
      l.mini_bytes += sectors_for(s.size, kMini) * kMini;
    }
  }
  l.minifat.assign(sectors_for(l.mini_bytes / kMini * 4, kSector) * (kSector / 4), kFree);
  for (auto& [s, first] : mini) chain_run(l.minifat, static_cast<uint32_t>(first), sectors_for(s->size, kMini));
  const uint64_t n_mini = sectors_for(l.mini_bytes, kSector);
  l.n_minifat = static_cast<uint32_t>(l.minifat.size() / (kSector / 4));
  l.n_dir = static_cast<uint32_t>(sectors_for(dir.slots.size() * 128, kSector));
  const uint64_t data = l.big + n_mini + l.n_minifat + l.n_dir;
  uint64_t nfat = 1, ndif = 0;
  for (;;) {  // FAT and DIFAT sectors are counted in the FAT too
    const uint64_t total = data + nfat + ndif;
    const uint64_t need_fat = sectors_for(total, kSector / 4);
    const uint64_t need_dif = need_fat > 109 ? sectors_for(need_fat - 109, kSector / 4 - 1) : 0;
    if (need_fat == nfat && need_dif == ndif) break;
    nfat = need_fat;
    ndif = need_dif;
  }
  if (data + nfat + ndif >= 0xFFFFFFF0ull) return bad_request("the OLE file would be too large");
  l.fat.assign(nfat * (kSector / 4), kFree);
  for (auto& s : dir.slots)
    if (s.node->type == kStream && s.size >= kCutoff) chain_run(l.fat, s.start, sectors_for(s.size, kSector));
  uint32_t next = static_cast<uint32_t>(l.big);
  auto run = [&](uint64_t count, uint32_t& start) {
    if (count == 0) return;
    start = next;
    chain_run(l.fat, next, count);
    next += static_cast<uint32_t>(count);
  };
  run(n_mini, l.mini_start);
  run(l.n_minifat, l.minifat_start);
  run(l.n_dir, l.dir_start);
  l.fat_start = next;
  for (uint64_t i = 0; i < nfat; ++i) l.fat[next++] = kFatSect;
  if (ndif) l.difat_start = next;
  for (uint64_t i = 0; i < ndif; ++i) l.fat[next++] = kDifSect;
  l.n_fat = static_cast<uint32_t>(nfat);
  l.n_difat = static_cast<uint32_t>(ndif);
  dir.slots[0].start = l.mini_bytes ? l.mini_start : kEnd;
  dir.slots[0].size = l.mini_bytes;
  return l;
}

Bytes header(const Layout& l) {
  Bytes h(kSector, 0);
  const uint8_t magic[8] = {0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1};
  std::copy(magic, magic + 8, h.begin());
  le::put16(h.data() + 0x18, 0x3E);
  le::put16(h.data() + 0x1A, 3);
  le::put16(h.data() + 0x1C, 0xFFFE);
  le::put16(h.data() + 0x1E, 9);
  le::put16(h.data() + 0x20, 6);
  le::put32(h.data() + 0x2C, l.n_fat);
  le::put32(h.data() + 0x30, l.dir_start);
  le::put32(h.data() + 0x38, kCutoff);
  le::put32(h.data() + 0x3C, l.minifat_start);
  le::put32(h.data() + 0x40, l.n_minifat);
  le::put32(h.data() + 0x44, l.difat_start);
  le::put32(h.data() + 0x48, l.n_difat);
  for (uint32_t i = 0; i < 109; ++i) le::put32(h.data() + 0x4C + 4 * i, i < l.n_fat ? l.fat_start + i : kFree);
  return h;
}

Status write_difat(const Layout& l, Out& out) {
  const uint32_t per = kSector / 4 - 1;
  uint32_t fat_index = 109;
  for (uint32_t d = 0; d < l.n_difat; ++d) {
    std::vector<uint32_t> v(kSector / 4, kFree);
    for (uint32_t i = 0; i < per && fat_index < l.n_fat; ++i) v[i] = l.fat_start + fat_index++;
    v[per] = d + 1 < l.n_difat ? l.difat_start + d + 1 : kEnd;
    RETURN_IF_ERROR(out.u32s(v));
  }
  return {};
}

}  // namespace

Status write(const File& source, const Node& root, const std::function<Status(std::span<const uint8_t>)>& sink) {
  Directory dir;
  dir.build(root);
  ASSIGN_OR_RETURN(Layout l, plan(dir));
  Out out(sink);
  RETURN_IF_ERROR(out.put(header(l)));
  for (const auto& s : dir.slots)  // large streams, in the order plan() placed them
    if (s.node->type == kStream && s.size >= kCutoff) {
      RETURN_IF_ERROR(write_stream(source, *s.node, out));
      RETURN_IF_ERROR(out.zeros(sectors_for(s.size, kSector) * kSector - s.size));
    }
  for (const auto& s : dir.slots)  // the mini stream
    if (s.node->type == kStream && s.size > 0 && s.size < kCutoff) {
      RETURN_IF_ERROR(write_stream(source, *s.node, out));
      RETURN_IF_ERROR(out.zeros(sectors_for(s.size, kMini) * kMini - s.size));
    }
  RETURN_IF_ERROR(out.zeros(sectors_for(l.mini_bytes, kSector) * kSector - l.mini_bytes));
  RETURN_IF_ERROR(out.u32s(l.minifat));
  for (const auto& s : dir.slots) RETURN_IF_ERROR(out.put(dir_entry(s)));
  for (size_t i = dir.slots.size(); i < static_cast<size_t>(l.n_dir) * 4; ++i) {
    Bytes unused(128, 0);
    le::put32(unused.data() + 0x44, kNoStream);
    le::put32(unused.data() + 0x48, kNoStream);
    le::put32(unused.data() + 0x4C, kNoStream);
    RETURN_IF_ERROR(out.put(unused));
  }
  RETURN_IF_ERROR(out.u32s(l.fat));
  RETURN_IF_ERROR(write_difat(l, out));
  return out.flush();
}

}  // namespace p11relay::authenticode::ole
