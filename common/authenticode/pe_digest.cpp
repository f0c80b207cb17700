#include "common/authenticode/pe_digest.h"

#include "common/authenticode/le.h"
#include "common/unique_fd.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <string>

namespace p11relay::authenticode {

namespace {

// Headers (DOS stub, PE headers, section table, and for page hashes the whole header page) are
// buffered before hashing starts; a header region larger than this is not a PE we sign.
constexpr uint64_t kMaxHeaderBytes = 16 * 1024 * 1024;
// Offsets and sizes in the certificate-table directory are 32-bit (§9.5), so no signed PE can be
// larger than this.
constexpr uint64_t kMaxImage = 0xffffffffULL;
// Zero padding of partial section pages we are willing to hash beyond the section data itself.
constexpr uint64_t kMaxPagePadding = 64 * 1024 * 1024;
// Sections may overlap (NSIS installers put .reloc inside .rsrc): page hashing then reads those bytes
// once per section. Refuse section tables whose overlaps would multiply the work beyond this factor
// of the image (plus kMaxPagePadding).
constexpr uint64_t kMaxOverlapFactor = 4;
// Data is digested, summed and page-hashed in slices of this size, so that the second and third
// reader of each byte find it in the L2 cache instead of going to memory again.
constexpr size_t kSlice = 64 * 1024;


struct Section {
  uint32_t index;  // position in the section table (0-based)
  uint64_t start;  // PointerToRawData
  uint64_t size;   // SizeOfRawData
};

// The architecture page of relic's page hashes (8 KiB on IA-64 and Alpha, 4 KiB elsewhere).
uint64_t arch_page_size(uint16_t machine) {
  return machine == 0x200 || machine == 0x184 || machine == 0x284 ? 8192 : 4096;
}

}  // namespace

std::optional<HashAlg> page_hash_alg_for(HashAlg alg) {
  if (alg == HashAlg::sha1) return HashAlg::sha1;
  if (alg == HashAlg::sha256) return HashAlg::sha256;
  return std::nullopt;
}

struct PeDigester::State {
  PeDigestOptions opt;
  Hasher image;
  WordSum image_sum;  // the bytes of `image` (PeInfo::image_sum)
  WordSum rest_sum;   // the certificate directory and the bytes after the image (an existing table)
  std::optional<Error> error;
  uint64_t pos = 0;  // file offset of the next byte update() will see
  bool parsed = false;
  int stage = 0;     // what the header buffer is waiting for (see try_parse)
  Bytes head;
  uint64_t need = 64;
  PeInfo info;

  uint64_t opt_off = 0, opt_size = 0, nsections = 0, section_table_end = 0;
  uint64_t image_end = UINT64_MAX;  // unknown until EOF for unsigned files
  uint64_t cert_end = UINT64_MAX;
  std::vector<Section> sections;  // sections with raw data, table order

  // Page hashes (§9.2, osslsigncode's layout).
  uint64_t page_size = 0, header_size = 0;
  std::optional<Hasher> page_hasher;
  Bytes zeros;
  Bytes header_page_digest;
  // One job per section with data, sorted by file offset; overlapping sections are active together,
  // each with its own page hasher, so one forward pass serves them all.
  struct PageJob {
    Section sec;
    size_t slot;  // index into sections/pages
    uint64_t done = 0;
    std::optional<Hasher> hasher;
  };
  std::vector<PageJob> jobs;
  size_t next_job = 0;                    // first job whose data has not started
  std::vector<size_t> active;             // started, unfinished jobs
  std::vector<std::vector<Bytes>> pages;  // per entry in `sections`

  explicit State(PeDigestOptions o) : opt(o), image(o.alg) { info.alg = o.alg; }

  Error fail(Error e) {
    error = e;
    return e;
  }

  Status try_parse();
  Status parse_dos_header(std::span<const uint8_t> h);
  Status parse_coff_header(std::span<const uint8_t> h);
  Status parse_optional_header(std::span<const uint8_t> h);
  Status parse_section_table(std::span<const uint8_t> h);
  Status after_parse();
  Status process(uint64_t offset, std::span<const uint8_t> data);
  void hash_image(uint64_t offset, std::span<const uint8_t> data);
  void add_image(uint64_t offset, std::span<const uint8_t> data) {
    image.update(data);
    image_sum.add(offset, data);
  }
  Status choose_page_size(uint32_t file_align, uint32_t section_align);
  void feed_pages(uint64_t offset, std::span<const uint8_t> data);
  void feed_job(PageJob& job, uint64_t offset, std::span<const uint8_t> data);
};

// Page hashes (§9.2): osslsigncode's layout, pages of SectionAlignment, when the headers fit in one;
// otherwise relic's, pages of the architecture's page size (EFI binaries with 512-byte SectionAlignment
// and 1 KiB of headers). The header page is SizeOfHeaders bytes without CheckSum and the certificate
// directory, zero-padded to a page; each section's pages follow in section-table order, whatever their
// file order or overlaps. Refused only where no layout can hash the file.
Status PeDigester::State::choose_page_size(uint32_t file_align, uint32_t section_align) {
  auto pha = page_hash_alg_for(opt.alg);
  if (!pha) return bad_request("page hashes are only supported with SHA-1 and SHA-256");
  if (nsections == 0) return bad_request("page hashes need at least one section");
  if (header_size < info.cert_dir_offset + 8)
    return bad_request("SizeOfHeaders (" + std::to_string(header_size) +
                       ") ends inside the optional header; cannot compute page hashes");
  const bool osslsigncode_layout = file_align >= 512 && file_align <= 0xffff && section_align >= file_align &&
                                   section_align <= 4 * 1024 * 1024 && header_size <= section_align;
  page_size = osslsigncode_layout ? section_align : arch_page_size(info.machine);
  if (header_size > page_size)
    return bad_request("SizeOfHeaders (" + std::to_string(header_size) + ") is larger than a page (SectionAlignment " +
                       std::to_string(section_align) + ", architecture page " +
                       std::to_string(arch_page_size(info.machine)) + "); cannot compute page hashes");
  // Section pages hash raw bytes; a section over the CheckSum or certificate directory would get page
  // hashes that signing itself invalidates (found by fuzz_pe).
  for (const auto& sec : sections)
    if (sec.start < info.cert_dir_offset + 8)
      return bad_request("section " + std::to_string(sec.index + 1) +
                         " overlaps the PE headers; cannot compute page hashes");
  info.page_hash_alg = pha;
  // Every section's last page is zero-padded to a full page, and overlapping sections are read once
  // each. With up to 65535 one-byte (or identical) sections and 4 MiB pages a small hostile file would
  // cost hundreds of GB of hashing; real files pad a few pages and overlap a little. Cap the work.
  uint64_t data = 0, padded = 0, extent = 0;
  for (const auto& sec : sections) {
    data += sec.size;
    padded += (sec.size + page_size - 1) / page_size * page_size;
    extent = std::max(extent, sec.start + sec.size);
  }
  if (padded - data > kMaxPagePadding + data)
    return bad_request("too many small sections for page hashes (" + std::to_string(sections.size()) +
                       " sections, " + std::to_string(page_size) + "-byte pages)");
  if (data > kMaxOverlapFactor * extent + kMaxPagePadding)
    return bad_request("sections overlap too much for page hashes (" + std::to_string(data) +
                       " bytes of section data in a " + std::to_string(extent) + "-byte image)");
  need = std::max(need, header_size);
  return {};
}

// Walks the header in stages as bytes arrive; each stage raises `need` to what the next needs. A stage runs only
// once `need` bytes are buffered, so it can read everything up to `need` without checking; until then try_parse
// returns success and is called again with more bytes.
Status PeDigester::State::try_parse() {
  while (!parsed && head.size() >= need) {
    std::span<const uint8_t> h(head);
    switch (stage) {
      case 0:
        RETURN_IF_ERROR(parse_dos_header(h));
        stage = 1;
        break;
      case 1:
        RETURN_IF_ERROR(parse_coff_header(h));
        stage = 2;
        break;
      case 2:
        RETURN_IF_ERROR(parse_optional_header(h));
        RETURN_IF_ERROR(parse_section_table(h));
        // FileAlignment and SectionAlignment decide the page-hash layout.
        if (opt.page_hashes) RETURN_IF_ERROR(choose_page_size(le::get32(h, opt_off + 36), le::get32(h, opt_off + 32)));
        stage = 3;
        break;
      case 3:  // the header page for page hashes (choose_page_size raised `need` to SizeOfHeaders)
        parsed = true;
        break;
    }
  }
  return {};
}

// Stage 0, the DOS header (§9.2 step 1): needs 64 bytes, asks for the PE signature and COFF header.
Status PeDigester::State::parse_dos_header(std::span<const uint8_t> h) {
  if (h[0] != 'M' || h[1] != 'Z') return bad_request("not a PE file: missing MZ signature");
  uint64_t lfanew = le::get32(h, 0x3c);
  if (lfanew < 4 || lfanew + 24 > kMaxHeaderBytes)
    return bad_request("PE header offset e_lfanew (" + std::to_string(lfanew) + ") is out of range");
  info.pe_offset = lfanew;
  need = lfanew + 24;
  return {};
}

// Stage 1, the PE signature and COFF header (§9.2 step 2): asks for the optional header and section table.
Status PeDigester::State::parse_coff_header(std::span<const uint8_t> h) {
  uint64_t pe = info.pe_offset;
  if (std::memcmp(&h[pe], "PE\0\0", 4) != 0) return bad_request("not a PE file: missing PE signature");
  info.machine = le::get16(h, pe + 4);
  nsections = le::get16(h, pe + 6);
  opt_size = le::get16(h, pe + 20);
  opt_off = pe + 24;
  section_table_end = opt_off + opt_size + 40 * nsections;
  // Magic first: PE32 needs 96 bytes before the data directories, PE32+ 112.
  if (opt_size < 2) return bad_request("optional header too small");
  need = std::max<uint64_t>(section_table_end, opt_off + 2);
  if (need > kMaxHeaderBytes) return bad_request("PE headers are too large");
  return {};
}

// Stage 2, first half: the optional header (§9.2 step 3), where CheckSum, SizeOfHeaders and the certificate table
// directory are. An existing certificate table ends the hashed image.
Status PeDigester::State::parse_optional_header(std::span<const uint8_t> h) {
  uint16_t magic = le::get16(h, opt_off);
  if (magic == 0x10b) {
    info.pe32plus = false;
  } else if (magic == 0x20b) {
    info.pe32plus = true;
  } else {
    return bad_request("unknown optional header magic 0x" + to_hex(std::span(&h[opt_off], 2)));
  }
  const uint64_t dirs = info.pe32plus ? 112 : 96;
  if (opt_size < dirs + 5 * 8) return bad_request("optional header too small to hold the certificate table directory");
  uint32_t nrva = le::get32(h, opt_off + dirs - 4);
  if (nrva < 5) return bad_request("NumberOfRvaAndSizes is " + std::to_string(nrva) + ", need at least 5");
  info.checksum_offset = opt_off + 64;
  info.cert_dir_offset = opt_off + dirs + 4 * 8;
  info.stored_checksum = le::get32(h, info.checksum_offset);
  header_size = le::get32(h, opt_off + 60);
  uint32_t cert_va = le::get32(h, info.cert_dir_offset);
  uint32_t cert_size = le::get32(h, info.cert_dir_offset + 4);
  if (cert_size == 0) return {};
  if (cert_va == 0) return bad_request("certificate table directory has a size but no offset");
  if (cert_size < 8) return bad_request("certificate table is smaller than a WIN_CERTIFICATE header");
  if (cert_va < section_table_end) return bad_request("certificate table overlaps the PE headers");
  info.cert_table_offset = cert_va;
  info.cert_table_size = cert_size;
  image_end = cert_va;
  cert_end = uint64_t{cert_va} + cert_size;
  if (opt.keep_cert_table && cert_size > opt.max_cert_table)
    return bad_request("existing certificate table is too large");
  return {};
}

// Stage 2, second half: the section table (§9.2 step 4), keeping the sections that have raw data, which must
// end before an existing certificate table.
Status PeDigester::State::parse_section_table(std::span<const uint8_t> h) {
  for (uint64_t i = 0; i < nsections; ++i) {
    uint64_t s = section_table_end - 40 * (nsections - i);
    uint64_t raw_size = le::get32(h, s + 16);
    uint64_t raw_ptr = le::get32(h, s + 20);
    if (raw_size == 0) continue;
    if (raw_ptr + raw_size > image_end)
      return bad_request("section " + std::to_string(i + 1) + " extends into the certificate table");
    sections.push_back({static_cast<uint32_t>(i), raw_ptr, raw_size});
  }
  return {};
}

Status PeDigester::State::after_parse() {
  if (opt.page_hashes) {
    page_hasher.emplace(*info.page_hash_alg);
    zeros.assign(page_size, 0);
    // Header page: the header bytes without CheckSum and the certificate directory, zero-padded to
    // one page (so the digest covers page_size - 12 bytes of file + padding).
    std::span<const uint8_t> h(head);
    const uint64_t ck = info.checksum_offset, cd = info.cert_dir_offset;
    page_hasher->update(h.subspan(0, ck));
    page_hasher->update(h.subspan(ck + 4, cd - (ck + 4)));
    page_hasher->update(h.subspan(cd + 8, header_size - (cd + 8)));
    page_hasher->update(std::span(zeros).subspan(0, page_size - header_size));
    header_page_digest = page_hasher->finish();
    pages.resize(sections.size());
    for (size_t i = 0; i < sections.size(); ++i) jobs.push_back(PageJob{sections[i], i, 0, std::nullopt});
    std::stable_sort(jobs.begin(), jobs.end(),
                     [](const PageJob& a, const PageJob& b) { return a.sec.start < b.sec.start; });
  }
  Bytes buffered = std::move(head);
  head.clear();
  return process(0, buffered);
}

// Image digest: every byte before the image end except CheckSum and the certificate directory.
// This is the linear form osslsigncode uses; for every file that §9.2's section walk accepts it
// hashes exactly the same bytes (headers, gap, contiguous sections, trailing data), and it also
// accepts the valid files whose section padding relic's walk rejects (docs/architecture.md, failure mode 12).
// The same bytes go into image_sum; the directory and what follows the image into rest_sum.
void PeDigester::State::hash_image(uint64_t offset, std::span<const uint8_t> data) {
  const uint64_t end = offset + data.size();
  auto part = [&](uint64_t from, uint64_t to) { return data.subspan(from - offset, to - from); };
  if (end > image_end) {
    const uint64_t from = std::max(offset, image_end);
    rest_sum.add(from, part(from, end));
  }
  const uint64_t img_end = std::min(end, image_end);
  const struct {
    uint64_t begin, end;
    WordSum* sum;
  } holes[2] = {{info.checksum_offset, info.checksum_offset + 4, nullptr},  // in no sum (§9.6)
                {info.cert_dir_offset, info.cert_dir_offset + 8, &rest_sum}};
  uint64_t cur = offset;
  for (const auto& hole : holes) {
    const uint64_t from = std::max(cur, hole.begin), to = std::min(img_end, hole.end);
    if (from >= to) continue;
    if (from > cur) add_image(cur, part(cur, from));
    if (hole.sum) hole.sum->add(from, part(from, to));
    cur = to;
  }
  if (cur < img_end) add_image(cur, part(cur, img_end));
}

void PeDigester::State::feed_pages(uint64_t offset, std::span<const uint8_t> data) {
  const uint64_t end = offset + data.size();
  while (next_job < jobs.size() && jobs[next_job].sec.start < end) active.push_back(next_job++);
  for (size_t k = 0; k < active.size();) {
    PageJob& job = jobs[active[k]];
    feed_job(job, offset, data);
    if (job.done == job.sec.size) {
      job.hasher.reset();
      active[k] = active.back();
      active.pop_back();
    } else {
      ++k;
    }
  }
}

// The part of [offset, offset + data.size()) inside the job's section, page by page.
void PeDigester::State::feed_job(PageJob& job, uint64_t offset, std::span<const uint8_t> data) {
  uint64_t s = std::max(offset, job.sec.start + job.done);
  const uint64_t e = std::min(offset + data.size(), job.sec.start + job.sec.size);
  if (s >= e) return;
  if (!job.hasher) job.hasher.emplace(*info.page_hash_alg);
  while (s < e) {
    const uint64_t in_page = job.done % page_size;
    const uint64_t take = std::min(e - s, page_size - in_page);
    job.hasher->update(data.subspan(s - offset, take));
    s += take;
    job.done += take;
    const bool last = job.done == job.sec.size;
    if (job.done % page_size == 0 || last) {
      if (job.done % page_size != 0) job.hasher->update(std::span(zeros).subspan(0, page_size - job.done % page_size));
      pages[job.slot].push_back(job.hasher->finish());
    }
  }
}

Status PeDigester::State::process(uint64_t offset, std::span<const uint8_t> data) {
  const uint64_t end = offset + data.size();
  if (end > cert_end)
    return bad_request("trailing garbage after the existing certificate table (offset " +
                       std::to_string(cert_end) + ")");
  for (size_t at = 0; at < data.size(); at += kSlice) {
    const auto slice = data.subspan(at, std::min(kSlice, data.size() - at));
    hash_image(offset + at, slice);
    if (page_hasher) feed_pages(offset + at, slice);
  }
  if (info.cert_table_size && opt.keep_cert_table && end > info.cert_table_offset) {
    uint64_t s = std::max(offset, info.cert_table_offset);
    info.cert_table.insert(info.cert_table.end(), data.begin() + static_cast<ptrdiff_t>(s - offset), data.end());
  }
  return {};
}

PeDigester::PeDigester(PeDigestOptions options) : s_(std::make_unique<State>(options)) {}
PeDigester::PeDigester(PeDigester&&) noexcept = default;
PeDigester& PeDigester::operator=(PeDigester&&) noexcept = default;
PeDigester::~PeDigester() = default;

uint64_t PeDigester::bytes_seen() const { return s_->pos; }

Status PeDigester::update(std::span<const uint8_t> chunk) {
  // Until the headers parse, input is collected in `head`: feed a large chunk (a whole mapped file)
  // in pieces so that only the first few are copied, not the whole file.
  constexpr size_t kHeadPiece = 64 * 1024;
  while (chunk.size() > kHeadPiece && !s_->parsed && !s_->error) {
    RETURN_IF_ERROR(update_piece(chunk.first(kHeadPiece)));
    chunk = chunk.subspan(kHeadPiece);
  }
  return update_piece(chunk);
}

Status PeDigester::update_piece(std::span<const uint8_t> chunk) {
  State& s = *s_;
  if (s.error) return *s.error;
  if (chunk.empty()) return {};
  const uint64_t offset = s.pos;
  s.pos += chunk.size();
  if (s.pos > kMaxImage + 1 + s.opt.max_cert_table)
    return s.fail(bad_request("file is too large for Authenticode (4 GiB limit)"));
  if (s.parsed) {
    Status st = s.process(offset, chunk);
    if (!st.ok()) return s.fail(st.error());
    return {};
  }
  s.head.insert(s.head.end(), chunk.begin(), chunk.end());
  Status st = s.try_parse();
  if (!st.ok()) return s.fail(st.error());
  if (s.parsed) {
    st = s.after_parse();
    if (!st.ok()) return s.fail(st.error());
  }
  return {};
}

Result<PeInfo> PeDigester::finish() {
  State& s = *s_;
  if (s.error) return *s.error;
  if (!s.parsed) {
    if (s.stage == 0 && s.pos < 64) return s.fail(bad_request("file too short for a PE (" + std::to_string(s.pos) + " bytes)"));
    const char* what = s.stage <= 1 ? "PE header" : s.stage == 2 ? "section table" : "header page";
    return s.fail(bad_request(std::string("truncated PE: ") + what + " extends past end of file (needs " +
                              std::to_string(s.need) + " bytes, file has " + std::to_string(s.pos) + ")"));
  }
  PeInfo& info = s.info;
  info.file_size = s.pos;
  if (info.cert_table_size) {
    if (s.pos < s.cert_end)
      return s.fail(bad_request("certificate table extends past end of file"));
    info.original_size = info.cert_table_offset;
  } else {
    info.original_size = s.pos;
    for (const auto& sec : s.sections)
      if (sec.start + sec.size > s.pos)
        return s.fail(bad_request("section " + std::to_string(sec.index + 1) + " extends past end of file"));
  }
  // §9.2 step 8: the old table must come after all section data.
  for (const auto& sec : s.sections)
    if (info.cert_table_size && sec.start + sec.size > info.cert_table_offset)
      return s.fail(bad_request("certificate table starts inside section " + std::to_string(sec.index + 1)));
  if (info.new_table_offset() > kMaxImage) return s.fail(bad_request("file is too large for Authenticode (4 GiB limit)"));
  // §9.2 step 9: pad the hashed image to a multiple of 8, where the new table will start.
  static const uint8_t kZero8[8] = {};
  uint64_t pad = info.new_table_offset() - info.original_size;
  s.image.update(std::span(kZero8, pad));
  info.image_digest = s.image.finish();
  info.image_sum = s.image_sum;
  WordSum whole = s.image_sum;
  whole.add(s.rest_sum);
  info.file_checksum = pe_checksum(whole, info.file_size);

  if (s.page_hasher) {
    const size_t dlen = hash_info(*info.page_hash_alg).size;
    Bytes& out = info.page_hashes;
    le::append(out, 0, 4);
    out.insert(out.end(), s.header_page_digest.begin(), s.header_page_digest.end());
    uint64_t lastpos = 0;
    for (size_t i = 0; i < s.sections.size(); ++i) {
      const auto& sec = s.sections[i];
      if (s.pages[i].size() != (sec.size + s.page_size - 1) / s.page_size)
        return s.fail(internal_error("page hash bookkeeping mismatch"));
      for (size_t k = 0; k < s.pages[i].size(); ++k) {
        le::append(out, static_cast<uint32_t>(sec.start + k * s.page_size), 4);
        out.insert(out.end(), s.pages[i][k].begin(), s.pages[i][k].end());
      }
      lastpos = sec.start + sec.size;
    }
    le::append(out, static_cast<uint32_t>(lastpos), 4);
    out.insert(out.end(), dlen, 0);
  }
  return info;
}

Result<PeInfo> pe_digest(std::span<const uint8_t> file, PeDigestOptions options) {
  PeDigester d(options);
  RETURN_IF_ERROR(d.update(file));
  return d.finish();
}

Result<PeInfo> pe_digest_file(const std::string& path, PeDigestOptions options,
                              const std::function<bool(uint64_t)>& progress) {
  // read() into one small buffer, not mmap: the kernel copies through its huge-page direct map and
  // the digest then reads the buffer from the L2 cache, while hashing a mapping of the page cache
  // takes a TLB miss per 4 KiB page; on this paravirtualised VM, under load, that made hashing a
  // 100 MB mapping twice as costly as reading it (measured: 0.14 vs 0.075 s of CPU), and a plain
  // mapping also faults page by page. A truncated file is a short read, never a SIGBUS.
  const UniqueFd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  const int fd = f.get();
  if (fd < 0) return bad_request("cannot open " + path + ": " + std::strerror(errno));
  PeDigester d(options);
  Bytes buf(128 * 1024);
  uint64_t total = 0, reported = 0;
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return bad_request("error reading " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    RETURN_IF_ERROR(d.update(std::span(buf.data(), static_cast<size_t>(n))));
    total += static_cast<uint64_t>(n);
    if (progress && total - reported >= (4u << 20) && !progress(reported = total))
      return Error(ErrorCode::internal, "hashing " + path + " was stopped");
  }
  if (progress) progress(total);
  return d.finish();
}

// §9.6: 16-bit little-endian words, carry folded after every addition, the CheckSum field itself
// as zero, an odd trailing byte zero-padded; then one more fold and the file length added.
namespace {
// Ones' complement sum of n/2 little-endian 16-bit words (n even), folded to 16 bits. Carries are
// deferred (RFC 1071 §2): 32-bit halves of 64-bit loads are summed and folded once at the end, which
// gives the same value as folding after every word (2^16 ≡ 1 mod 0xffff). Four 64-bit lanes at a
// time (GCC/Clang vector extension), with an AVX2 clone on x86-64: ~35 GB/s instead of ~10 with one
// lane, so the checksum costs ~2 % of a hashing pass instead of ~7 %.
#if defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))
#endif
uint32_t sum_words(const uint8_t* p, size_t n) {
  using Lanes = uint64_t __attribute__((vector_size(32)));
  uint64_t acc = 0;
  size_t k = 0;
  if constexpr (std::endian::native == std::endian::little) {
    // Each lane adds < 2^33 a step: the lanes' total stays below 2^64 up to 16 GiB, far above any PE.
    Lanes lanes = {0, 0, 0, 0};
    for (; k + 32 <= n; k += 32) {
      Lanes v;
      std::memcpy(&v, p + k, 32);
      lanes += (v & 0xffffffffu) + (v >> 32);
    }
    acc = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  }
  for (; k + 2 <= n; k += 2) acc += p[k] | (static_cast<uint32_t>(p[k + 1]) << 8);
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint32_t>(acc);
}
}  // namespace

void WordSum::add(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  size_t i = 0;
  if (offset & 1) {  // the high byte of a word whose low byte belongs to another piece
    acc_ += static_cast<uint32_t>(data[0]) << 8;
    i = 1;
  }
  const size_t even = (data.size() - i) & ~size_t{1};
  acc_ += sum_words(data.data() + i, even);
  if (i + even < data.size()) acc_ += data[i + even];  // a low byte; its high byte is in the next piece
}

uint32_t WordSum::folded() const {
  uint64_t s = acc_;
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return static_cast<uint32_t>(s);
}

uint32_t pe_checksum(std::span<const uint8_t> file, uint64_t checksum_offset) {
  WordSum sum;
  const uint64_t field = std::min<uint64_t>(checksum_offset, file.size());
  sum.add(0, file.first(static_cast<size_t>(field)));
  if (field + 4 < file.size()) sum.add(field + 4, file.subspan(static_cast<size_t>(field + 4)));
  return pe_checksum(sum, file.size());
}

Result<uint64_t> pe_checksum_offset(std::span<const uint8_t> file) {
  if (file.size() < 64 || file[0] != 'M' || file[1] != 'Z') return bad_request("not a PE file: missing MZ signature");
  uint64_t pe = le::get32(file, 0x3c);
  if (pe + 24 + 68 > file.size()) return bad_request("truncated PE: optional header extends past end of file");
  if (std::memcmp(&file[pe], "PE\0\0", 4) != 0) return bad_request("not a PE file: missing PE signature");
  if (le::get16(file, pe + 20) < 68) return bad_request("optional header too small");
  return pe + 24 + 64;
}

Status fix_pe_checksum(std::span<uint8_t> file) {
  ASSIGN_OR_RETURN(uint64_t off, pe_checksum_offset(file));
  uint32_t sum = pe_checksum(file, off);
  for (int i = 0; i < 4; ++i) file[off + i] = static_cast<uint8_t>(sum >> (8 * i));
  return {};
}

}  // namespace p11relay::authenticode
