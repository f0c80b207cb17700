// Reading [MS-CFB] compound files: header (§2.2), DIFAT/FAT (§2.4, §2.3), mini FAT and mini stream
// (§2.5), directory (§2.6). Bounds: the FAT holds at most one entry per sector of the file, every
// chain is walked at most once per sector (a longer walk is a loop), and no sector may belong to two
// chains.
#include "common/authenticode/ole.h"
#include "common/authenticode/le.h"

#include <algorithm>
#include <cstring>

namespace p11relay::authenticode::ole {

namespace {

constexpr uint8_t kMagic[8] = {0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1};
constexpr uint32_t kMaxRegSect = 0xFFFFFFFA, kEndOfChain = 0xFFFFFFFE, kFreeSect = 0xFFFFFFFF;
constexpr uint32_t kMiniSector = 64;
constexpr size_t kMaxEntries = 1u << 20;


Error bad(const std::string& what) { return Error(ErrorCode::bad_request, "not a valid OLE compound file: " + what); }

}  // namespace

std::span<const uint8_t> File::sector(uint32_t n) const {
  const uint64_t off = (static_cast<uint64_t>(n) + 1) * sector_size_;
  if (off >= data_.size()) return {};
  return data_.subspan(off, std::min<uint64_t>(sector_size_, data_.size() - off));
}

Result<File> File::parse(std::span<const uint8_t> data) {
  File f;
  f.data_ = data;
  if (data.size() < 512 || std::memcmp(data.data(), kMagic, 8) != 0) return bad("no compound-file signature");
  const uint16_t major = le::get16(data, 0x1A), shift = le::get16(data, 0x1E);
  if (le::get16(data, 0x1C) != 0xFFFE) return bad("byte order mark is not 0xFFFE");
  if (!((major == 3 && shift == 9) || (major == 4 && shift == 12)))
    return bad("unsupported version " + std::to_string(major) + " / sector shift " + std::to_string(shift));
  if (le::get16(data, 0x20) != 6) return bad("mini sector shift is not 6");
  f.sector_size_ = 1u << shift;
  f.cutoff_ = le::get32(data, 0x38);
  if (f.cutoff_ != 4096) return bad("mini stream cutoff is not 4096");
  RETURN_IF_ERROR(f.load_fat());
  RETURN_IF_ERROR(f.load_directory());
  RETURN_IF_ERROR(f.load_mini());
  RETURN_IF_ERROR(f.check_streams());
  RETURN_IF_ERROR(f.check_tree());
  return f;
}

// §2.5: the FAT sectors are listed by the header's 109 DIFAT slots, then by the DIFAT chain.
Status File::load_fat() {
  const uint64_t sectors = data_.size() / sector_size_ + 1;
  const uint32_t nfat = le::get32(data_, 0x2C);
  const uint32_t per = sector_size_ / 4;
  if (nfat == 0 || nfat > sectors / per + 1) return bad("FAT sector count " + std::to_string(nfat) + " does not fit the file");
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < 109 && ids.size() < nfat; ++i) ids.push_back(le::get32(data_, 0x4C + 4 * i));
  uint32_t difat = le::get32(data_, 0x44);
  for (uint64_t steps = 0; ids.size() < nfat; ++steps) {
    if (difat >= kMaxRegSect || steps > sectors) return bad("DIFAT chain ends early or loops");
    auto s = sector(difat);
    if (s.size() != sector_size_) return bad("DIFAT sector " + std::to_string(difat) + " is past the end of the file");
    for (uint32_t i = 0; i + 1 < per && ids.size() < nfat; ++i) ids.push_back(le::get32(s, 4 * i));
    difat = le::get32(s, sector_size_ - 4);
  }
  fat_.reserve(static_cast<size_t>(nfat) * per);
  for (uint32_t id : ids) {
    auto s = id < kMaxRegSect ? sector(id) : std::span<const uint8_t>{};
    if (s.size() != sector_size_) return bad("FAT sector " + std::to_string(id) + " is past the end of the file");
    for (uint32_t i = 0; i < per; ++i) fat_.push_back(le::get32(s, 4 * i));
  }
  return {};
}

Result<std::vector<uint32_t>> File::chain(uint32_t start, const std::vector<uint32_t>& table, uint64_t max_len,
                                          const char* what) const {
  std::vector<uint32_t> out;
  for (uint32_t s = start; s != kEndOfChain;) {
    if (s >= table.size()) return bad(std::string(what) + ": sector " + std::to_string(s) + " is outside the FAT");
    if (out.size() >= max_len || out.size() >= table.size())
      return bad(std::string(what) + ": the sector chain loops or is longer than its data");
    out.push_back(s);
    s = table[s];
    if (s == kFreeSect) return bad(std::string(what) + ": the sector chain runs into a free sector");
  }
  return out;
}

Status File::load_directory() {
  const uint32_t per = sector_size_ / 128;
  ASSIGN_OR_RETURN(auto sectors, chain(le::get32(data_, 0x30), fat_, kMaxEntries / per, "directory"));
  for (uint32_t sn : sectors) {
    auto s = sector(sn);
    if (s.size() != sector_size_) return bad("directory sector " + std::to_string(sn) + " is past the end of the file");
    for (uint32_t i = 0; i < per; ++i) {
      auto d = s.subspan(128 * i, 128);
      Entry e;
      e.type = d[0x42];
      const uint16_t nlen = le::get16(d, 0x40);
      if (e.type != 0 && (nlen < 2 || nlen > 64 || nlen % 2 != 0))
        return bad("directory entry " + std::to_string(entries_.size()) + " has a name length of " + std::to_string(nlen));
      for (uint16_t k = 0; e.type != 0 && k + 2 < nlen; k += 2) e.name.push_back(static_cast<char16_t>(le::get16(d, k)));
      e.left = le::get32(d, 0x44);
      e.right = le::get32(d, 0x48);
      e.child = le::get32(d, 0x4C);
      std::copy_n(d.begin() + 0x50, 16, e.clsid.begin());
      e.state_bits = le::get32(d, 0x60);
      std::copy_n(d.begin() + 0x64, 16, e.times.begin());
      e.start = le::get32(d, 0x74);
      e.size = sector_size_ == 512 ? le::get32(d, 0x78) : (le::get32(d, 0x78) | (static_cast<uint64_t>(le::get32(d, 0x7C)) << 32));
      entries_.push_back(std::move(e));
    }
  }
  if (entries_.empty() || entries_[0].type != kRoot) return bad("the first directory entry is not the root storage");
  return {};
}

Status File::load_mini() {
  const Entry& r = root();
  const uint32_t nmini = le::get32(data_, 0x40);
  if (nmini > fat_.size()) return bad("mini FAT sector count " + std::to_string(nmini) + " does not fit the file");
  ASSIGN_OR_RETURN(auto mf, chain(le::get32(data_, 0x3C), fat_, nmini, "mini FAT"));
  for (uint32_t sn : mf) {
    auto s = sector(sn);
    if (s.size() != sector_size_) return bad("mini FAT sector is past the end of the file");
    for (uint32_t i = 0; i < sector_size_ / 4; ++i) minifat_.push_back(le::get32(s, 4 * i));
  }
  if (r.size > data_.size()) return bad("the mini stream is larger than the file");
  ASSIGN_OR_RETURN(mini_sectors_, chain(r.size ? r.start : kEndOfChain, fat_,
                                        (r.size + sector_size_ - 1) / sector_size_, "mini stream"));
  if (static_cast<uint64_t>(mini_sectors_.size()) * sector_size_ < r.size) return bad("the mini stream is truncated");
  return {};
}

// Every stream's chain is walked once here: a chain that loops, leaves the file or shares a sector
// with another stream is refused before anything is hashed.
Status File::check_streams() {
  std::vector<bool> used(fat_.size()), mini_used(minifat_.size());
  for (uint32_t s : mini_sectors_) used[s] = true;
  for (size_t i = 1; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    if (e.type != kStream || e.size == 0) continue;
    const std::string what = "stream " + std::to_string(i);
    if (e.size > data_.size()) return bad(what + " is larger than the file");
    const bool mini = e.size < cutoff_;
    const uint32_t unit = mini ? kMiniSector : sector_size_;
    ASSIGN_OR_RETURN(auto c, chain(e.start, mini ? minifat_ : fat_, (e.size + unit - 1) / unit, what.c_str()));
    if (static_cast<uint64_t>(c.size()) * unit < e.size) return bad(what + " is shorter than its size");
    auto& u = mini ? mini_used : used;
    for (uint32_t s : c) {
      if (u[s]) return bad(what + ": sector " + std::to_string(s) + " belongs to two streams");
      u[s] = true;
      const uint64_t end = mini ? (static_cast<uint64_t>(s) + 1) * kMiniSector
                                : (static_cast<uint64_t>(s) + 2) * sector_size_;
      const uint64_t limit = mini ? static_cast<uint64_t>(mini_sectors_.size()) * sector_size_ : data_.size() + sector_size_ - 1;
      if (end > limit) return bad(what + " is past the end of the file");
    }
  }
  return {};
}

// Each entry is reached from the root once at most: a storage listed under two parents (or under
// itself) would make every walk of the tree repeat, up to exponentially.
Status File::check_tree() const {
  std::vector<bool> reached(entries_.size());
  std::vector<std::pair<uint32_t, int>> todo{{0, 0}};
  while (!todo.empty()) {
    auto [id, depth] = todo.back();
    todo.pop_back();
    if (depth > 32) return bad("storages nested more than 32 deep");
    ASSIGN_OR_RETURN(auto kids, children(id));
    for (uint32_t k : kids) {
      if (reached[k]) return bad("directory entry " + std::to_string(k) + " belongs to two storages");
      reached[k] = true;
      if (entries_[k].type == kStorage) todo.push_back({k, depth + 1});
    }
  }
  return {};
}

Result<std::vector<uint32_t>> File::children(uint32_t storage) const {
  if (storage >= entries_.size()) return bad("no directory entry " + std::to_string(storage));
  std::vector<uint32_t> out, stack;
  std::vector<bool> seen(entries_.size());
  if (entries_[storage].child != kNoStream) stack.push_back(entries_[storage].child);
  while (!stack.empty()) {
    const uint32_t id = stack.back();
    stack.pop_back();
    if (id >= entries_.size() || id == 0) return bad("directory tree points at entry " + std::to_string(id));
    if (seen[id]) return bad("directory tree has a cycle at entry " + std::to_string(id));
    seen[id] = true;
    const Entry& e = entries_[id];
    if (e.type != kStream && e.type != kStorage) return bad("directory tree reaches unused entry " + std::to_string(id));
    out.push_back(id);
    if (e.left != kNoStream) stack.push_back(e.left);
    if (e.right != kNoStream) stack.push_back(e.right);
  }
  return out;
}

Status File::read(const Entry& e, const std::function<Status(std::span<const uint8_t>)>& sink) const {
  if (e.type != kStream || e.size == 0) return {};
  const bool mini = e.size < cutoff_;
  const uint32_t unit = mini ? kMiniSector : sector_size_;
  ASSIGN_OR_RETURN(auto c, chain(e.start, mini ? minifat_ : fat_, (e.size + unit - 1) / unit, "stream"));
  uint64_t left = e.size;
  for (uint32_t s : c) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left, unit));
    std::span<const uint8_t> piece;
    if (mini) {
      const uint64_t off = static_cast<uint64_t>(s) * kMiniSector;
      if (off / sector_size_ >= mini_sectors_.size()) return bad("a mini sector is past the mini stream");
      piece = sector(mini_sectors_[off / sector_size_]);
      if (piece.size() < off % sector_size_ + n) return bad("a mini sector is past the end of the file");
      piece = piece.subspan(off % sector_size_, n);
    } else {
      piece = sector(s);
      if (piece.size() < n) return bad("a stream sector is past the end of the file");
      piece = piece.first(n);
    }
    RETURN_IF_ERROR(sink(piece));
    left -= n;
  }
  return {};
}

Result<Bytes> File::read_all(const Entry& e, size_t max) const {
  if (e.size > max) return bad("stream is larger than " + std::to_string(max) + " bytes");
  Bytes out;
  out.reserve(static_cast<size_t>(e.size));
  RETURN_IF_ERROR(read(e, [&out](std::span<const uint8_t> p) -> Status {
    out.insert(out.end(), p.begin(), p.end());
    return {};
  }));
  return out;
}

bool tree_less(const std::u16string& a, const std::u16string& b) {
  if (a.size() != b.size()) return a.size() < b.size();
  auto up = [](char16_t c) { return (c >= u'a' && c <= u'z') ? static_cast<char16_t>(c - 32) : c; };
  for (size_t i = 0; i < a.size(); ++i)
    if (up(a[i]) != up(b[i])) return up(a[i]) < up(b[i]);
  return false;
}

Result<Node> copy_tree(const File& file, uint32_t storage, int depth) {
  if (depth > 32) return bad("storages nested more than 32 deep");
  const Entry& e = file.entries()[storage];
  Node n;
  n.name = e.name;
  n.type = e.type;
  n.clsid = e.clsid;
  n.state_bits = e.state_bits;
  n.times = e.times;
  ASSIGN_OR_RETURN(auto kids, file.children(storage));
  for (uint32_t id : kids) {
    const Entry& c = file.entries()[id];
    if (c.type == kStorage) {
      ASSIGN_OR_RETURN(Node sub, copy_tree(file, id, depth + 1));
      n.children.push_back(std::move(sub));
      continue;
    }
    Node s;
    s.name = c.name;
    s.type = kStream;
    s.clsid = c.clsid;
    s.state_bits = c.state_bits;
    s.times = c.times;
    s.size = c.size;
    s.source_entry = &c;
    n.children.push_back(std::move(s));
  }
  return n;
}

}  // namespace p11relay::authenticode::ole
