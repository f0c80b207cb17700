#include "common/authenticode/pe_digest.h"
#include "common/authenticode/le.h"

#include "test/helpers.h"

#include <doctest/doctest.h>

#include <cstdio>
#include <random>

using namespace p11relay;
using namespace p11relay::authenticode;
using namespace p11relay::authenticode::testing;

namespace {


Result<PeInfo> digest_chunked(const Bytes& file, PeDigestOptions opt, std::mt19937& rng, size_t max_chunk) {
  PeDigester d(opt);
  size_t pos = 0;
  std::uniform_int_distribution<size_t> dist(1, max_chunk);
  while (pos < file.size()) {
    size_t n = std::min(file.size() - pos, dist(rng));
    RETURN_IF_ERROR(d.update(std::span(file).subspan(pos, n)));
    pos += n;
  }
  return d.finish();
}

struct TestPe {
  std::string name, path;
  Bytes data;
};

std::vector<TestPe> test_pes(const TempDir& dir) {
  std::vector<TestPe> out;
  for (int bits : {32, 64}) {
    std::string p = build_mingw_pe(dir, bits);
    if (!p.empty()) out.push_back({"mingw" + std::to_string(bits), p, read_file(p)});
  }
  for (const auto& p : system_pe_files(4)) out.push_back({p, p, read_file(p)});
  return out;
}

}  // namespace

TEST_CASE("image digest equals osslsigncode's, streamed in any chunking") {
  TempDir dir;
  auto pes = test_pes(dir);
  if (pes.empty() || !have_osslsigncode()) {
    P11R_SKIP("no mingw compiler / PE files / osslsigncode on this machine");
  }
  TestKey key = make_test_key(KeyType::rsa, dir, "digest-signer");
  std::mt19937 rng(42);
  for (const auto& pe : pes) {
    CAPTURE(pe.name);
    for (HashAlg alg : {HashAlg::sha256, HashAlg::sha1, HashAlg::sha384}) {
      const char* hname = alg == HashAlg::sha256 ? "sha256" : alg == HashAlg::sha1 ? "sha1" : "sha384";
      CAPTURE(hname);
      std::string signed_path = dir.file("ossl-signed.exe");
      std::remove(signed_path.c_str());  // osslsigncode refuses to overwrite
      auto r = run("osslsigncode sign -h " + std::string(hname) + " -certs " + shell_quote(key.cert_path) + " -key " +
                   shell_quote(key.key_path) + " -in " + shell_quote(pe.path) + " -out " + shell_quote(signed_path));
      REQUIRE_MESSAGE(r.exit_code == 0, r.output);
      auto v = osslsigncode_verify(signed_path, key.cert_path);
      REQUIRE_MESSAGE(v.exit_code == 0, v.output);
      PeDigestOptions opt;
      opt.alg = alg;
      auto ours = pe_digest(pe.data, opt);
      REQUIRE_MESSAGE(ours.ok(), ours.error().message);
      CHECK(to_hex(ours->image_digest) == v.calculated_digest);
      CHECK_FALSE(ours->signed_());
      CHECK(ours->original_size == pe.data.size());
      // The osslsigncode-signed file: its signature is skipped, so the digest is the same.
      Bytes signed_file = read_file(signed_path);
      auto of_signed = pe_digest(signed_file, opt);
      REQUIRE_MESSAGE(of_signed.ok(), of_signed.error().message);
      CHECK(of_signed->image_digest == ours->image_digest);
      CHECK(of_signed->signed_());
      CHECK(of_signed->cert_table_offset == ours->new_table_offset());
      CHECK(of_signed->cert_table.size() == of_signed->cert_table_size);
      // The checksum osslsigncode wrote equals ours.
      CHECK(pe_checksum(signed_file, of_signed->checksum_offset) == of_signed->stored_checksum);
      for (size_t max_chunk : {size_t{1}, size_t{7}, size_t{512}, size_t{70000}}) {
        if (max_chunk == 1 && pe.data.size() > 200000) continue;
        auto chunked = digest_chunked(signed_file, opt, rng, max_chunk);
        REQUIRE(chunked.ok());
        CHECK(chunked->image_digest == ours->image_digest);
        CHECK(chunked->cert_table == of_signed->cert_table);
      }
    }
    auto from_file = pe_digest_file(pe.path);
    REQUIRE(from_file.ok());
    CHECK(from_file->image_digest == pe_digest(pe.data)->image_digest);
    // Page hashes: the same in any chunking, and as osslsigncode computes them (its -ph signature
    // verifies against our page hashes only if equal, checked in pe_write_test; here: streaming).
    PeDigestOptions ph;
    ph.page_hashes = true;
    auto whole = pe_digest(pe.data, ph);
    REQUIRE_MESSAGE(whole.ok(), whole.error().message);
    CHECK(whole->page_hash_alg == HashAlg::sha256);
    CHECK(whole->page_hashes.size() % 36 == 0);
    CHECK(whole->page_hashes.size() >= 3 * 36);
    auto chunked = digest_chunked(pe.data, ph, rng, 3000);
    REQUIRE(chunked.ok());
    CHECK(chunked->page_hashes == whole->page_hashes);
  }
}

TEST_CASE("page hashes only for SHA-1 and SHA-256") {
  TempDir dir;
  std::string p = build_mingw_pe(dir, 64);
  if (p.empty()) {
    P11R_SKIP("no mingw compiler");
  }
  Bytes f = read_file(p);
  PeDigestOptions opt;
  opt.page_hashes = true;
  opt.alg = HashAlg::sha384;
  auto r = pe_digest(f, opt);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::bad_request);
  opt.alg = HashAlg::sha1;
  auto s = pe_digest(f, opt);
  REQUIRE(s.ok());
  CHECK(s->page_hashes.size() % 24 == 0);
}

TEST_CASE("hostile PE headers are bad_request errors, never crashes") {
  TempDir dir;
  std::string p = build_mingw_pe(dir, 32);
  if (p.empty()) p = build_mingw_pe(dir, 64);
  if (p.empty()) {
    P11R_SKIP("no mingw compiler");
  }
  const Bytes good = read_file(p);
  REQUIRE(pe_digest(good).ok());
  const uint32_t pe_off = le::get32(good, 0x3c);
  const uint16_t opt_size = static_cast<uint16_t>(good[pe_off + 20] | (good[pe_off + 21] << 8));
  const bool plus = good[pe_off + 24] == 0x0b && good[pe_off + 25] == 0x02;
  const size_t cert_dir = pe_off + 24 + (plus ? 144 : 128);
  const size_t sect0 = pe_off + 24 + opt_size;

  auto expect_error = [](const Bytes& f, const char* fragment) {
    for (bool page : {false, true}) {
      PeDigestOptions opt;
      opt.page_hashes = page;
      auto r = pe_digest(f, opt);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().code == ErrorCode::bad_request);
      if (fragment) CHECK_MESSAGE(r.error().message.find(fragment) != std::string::npos, r.error().message);
    }
  };

  // Every truncation of the headers, and a sample beyond.
  for (size_t n = 0; n < std::min<size_t>(good.size(), sect0 + 40 * 20); ++n) {
    Bytes t(good.begin(), good.begin() + static_cast<ptrdiff_t>(n));
    expect_error(t, nullptr);
  }
  {  // truncated inside section data
    Bytes t(good.begin(), good.begin() + static_cast<ptrdiff_t>(good.size() - 100));
    expect_error(t, "extends past end of file");
  }
  {
    Bytes f = good;
    f[0] = 'X';
    expect_error(f, "MZ");
  }
  {
    Bytes f = good;
    le::put32(f, 0x3c, 0xfffffff0);
    expect_error(f, "e_lfanew");
  }
  {
    Bytes f = good;
    f[pe_off + 1] = 'X';
    expect_error(f, "PE signature");
  }
  {
    Bytes f = good;
    le::put16(f, pe_off + 24, 0x1234);
    expect_error(f, "magic");
  }
  {
    Bytes f = good;
    le::put16(f, pe_off + 6, 0xffff);  // huge NumberOfSections: table runs off the file
    expect_error(f, "past end of file");
  }
  {
    Bytes f = good;
    le::put32(f, sect0 + 20, 0x7fff0000);  // section 1 PointerToRawData far past EOF
    expect_error(f, "section 1 extends past end of file");
  }
  {
    Bytes f = good;
    le::put32(f, sect0 + 16, 0xfffffff0);  // section 1 SizeOfRawData huge
    expect_error(f, "section");
  }
  {
    Bytes f = good;
    le::put32(f, cert_dir, static_cast<uint32_t>(good.size() + 64));  // certificate table outside the file
    le::put32(f, cert_dir + 4, 64);
    expect_error(f, "past end of file");
  }
  {
    Bytes f = good;
    le::put32(f, cert_dir, 8);  // certificate table inside the headers
    le::put32(f, cert_dir + 4, 64);
    expect_error(f, "overlaps the PE headers");
  }
  {
    Bytes f = good;
    le::put32(f, cert_dir, static_cast<uint32_t>(good.size() - 16));  // table inside the last section's data
    le::put32(f, cert_dir + 4, 16);
    expect_error(f, nullptr);
  }
  {
    Bytes f = good;  // a proper table, then trailing garbage
    f.resize((f.size() + 7) & ~size_t{7}, 0);
    le::put32(f, cert_dir, static_cast<uint32_t>(f.size()));
    le::put32(f, cert_dir + 4, 16);
    f.resize(f.size() + 16, 0);
    PeDigestOptions opt;
    CHECK(pe_digest(f, opt).ok());
    f.push_back(0x42);
    expect_error(f, "trailing garbage");
  }
  {
    Bytes f = good;
    le::put32(f, cert_dir, 0);  // size without offset
    le::put32(f, cert_dir + 4, 64);
    expect_error(f, "no offset");
  }
  {
    Bytes f = good;
    le::put16(f, pe_off + 20, 16);  // optional header too small for the data directories
    expect_error(f, nullptr);
  }
}

TEST_CASE("page hashes refuse a header that asks for hours of padding work") {
  // Regression (found reviewing the fuzz target's cost model): 2000 one-byte sections with 4 MiB
  // SectionAlignment made the digester hash 8 GB of zero padding.
  TempDir dir;
  std::string p = build_mingw_pe(dir, 32);
  if (p.empty()) {
    P11R_SKIP("no mingw compiler");
  }
  Bytes f = read_file(p);
  const uint32_t pe_off = le::get32(f, 0x3c);
  const uint16_t opt_size = static_cast<uint16_t>(f[pe_off + 20] | (f[pe_off + 21] << 8));
  const size_t sect0 = pe_off + 24 + opt_size;
  const uint32_t n = 2000;
  // Move the section table to the end of the file's header area we control: rebuild a header that
  // is big enough for 2000 entries, then point each section at its own byte.
  const size_t table_end = sect0 + 40 * n;
  Bytes g(table_end + n, 0);
  std::copy(f.begin(), f.begin() + static_cast<ptrdiff_t>(sect0), g.begin());
  le::put16(g, pe_off + 6, static_cast<uint16_t>(n));
  le::put32(g, pe_off + 24 + 32, 4 * 1024 * 1024);                          // SectionAlignment
  le::put32(g, pe_off + 24 + 36, 512);                                      // FileAlignment
  le::put32(g, pe_off + 24 + 60, static_cast<uint32_t>(table_end));         // SizeOfHeaders
  for (uint32_t i = 0; i < n; ++i) {
    le::put32(g, sect0 + 40 * i + 16, 1);
    le::put32(g, sect0 + 40 * i + 20, static_cast<uint32_t>(table_end + i));
  }
  REQUIRE(pe_digest(g).ok());  // the image digest itself is cheap
  PeDigestOptions opt;
  opt.page_hashes = true;
  auto r = pe_digest(g, opt);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("too many small sections") != std::string::npos);
}

TEST_CASE("page hashes refuse a section over the headers (fuzz_pe regression)") {
  // fuzz_pe found a file whose section 3 started inside the optional header: its section page hash
  // covered the CheckSum/certificate directory, so embedding the signature changed it and the
  // signed file could never verify. The image digest is unaffected (those bytes are excluded).
  TempDir dir;
  std::string p = build_mingw_pe(dir, 64);
  if (p.empty()) {
    P11R_SKIP("no mingw compiler");
  }
  Bytes f = read_file(p);
  const uint32_t pe_off = le::get32(f, 0x3c);
  const uint16_t opt_size = static_cast<uint16_t>(f[pe_off + 20] | (f[pe_off + 21] << 8));
  const size_t sect0 = pe_off + 24 + opt_size;
  le::put32(f, sect0 + 20, 0);  // section 1 PointerToRawData = 0: its data covers all headers
  le::put32(f, sect0 + 16, 512);
  REQUIRE(pe_digest(f).ok());
  PeDigestOptions opt;
  opt.page_hashes = true;
  auto r = pe_digest(f, opt);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("section 1 overlaps the PE headers") != std::string::npos);
}

TEST_CASE("pe_digest_file: missing file is an error") {
  auto r = pe_digest_file("/nonexistent/p11relay.exe");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("cannot open") != std::string::npos);
}

TEST_CASE("PE checksum (§9.6)") {
  Bytes f(256, 0);
  f[0] = 'M';
  f[1] = 'Z';
  // Words: 0x5a4d + length 256 with a zero CheckSum field at offset 8.
  CHECK(pe_checksum(f, 8) == 0x5a4d + 256);
  f[8] = 0xff;  // the CheckSum field itself does not count
  CHECK(pe_checksum(f, 8) == 0x5a4d + 256);
  Bytes odd = {0x01, 0x02, 0x03};
  CHECK(pe_checksum(odd, 100) == 0x0201 + 0x03 + 3);
  Bytes carry(4, 0xff);
  CHECK(pe_checksum(carry, 100) == 0xffff + 4);
}

TEST_CASE("WordSum and pe_checksum equal the word-by-word definition for any pieces, order and field position") {
  // Reference: §9.6 literally, folding after every 16-bit word.
  auto reference = [](const Bytes& f, uint64_t field) {
    uint64_t sum = 0;
    for (size_t i = 0; i < f.size(); i += 2) {
      uint32_t lo = (i >= field && i < field + 4) ? 0 : f[i];
      uint32_t hi = (i + 1 < f.size() && !(i + 1 >= field && i + 1 < field + 4)) ? f[i + 1] : 0;
      sum += lo | (hi << 8);
      sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<uint32_t>(sum + f.size());
  };
  std::mt19937 rng(12345);
  for (size_t size : {0u, 1u, 7u, 64u, 4097u, 100001u}) {
    Bytes f(size);
    for (auto& b : f) b = static_cast<uint8_t>(rng());
    if (size > 100) std::fill(f.begin() + 10, f.begin() + 50, 0xff);  // long carries
    for (uint64_t field : {uint64_t{0}, uint64_t{3}, uint64_t{88}, uint64_t{size / 2 | 1}, uint64_t{size + 10}}) {
      CAPTURE(size);
      CAPTURE(field);
      const uint32_t want = reference(f, field);
      CHECK(pe_checksum(f, field) == want);
      // Pieces of random sizes and parities, added in reverse order, the field left out.
      for (size_t max_piece : {1u, 2u, 3u, 13u, 4096u}) {
        std::vector<std::pair<size_t, size_t>> pieces;
        for (size_t off = 0; off < f.size();) {
          size_t n = std::min(f.size() - off, std::uniform_int_distribution<size_t>(1, max_piece)(rng));
          pieces.emplace_back(off, n);
          off += n;
        }
        WordSum parts[2];  // two partial sums, joined at the end
        for (size_t i = pieces.size(); i-- > 0;) {
          for (size_t k = pieces[i].first; k < pieces[i].first + pieces[i].second; ++k)
            if (k < field || k >= field + 4) parts[i % 2].add(k, std::span(&f[k], 1));
          if (i % 7 == 0 && (pieces[i].first + pieces[i].second <= field || pieces[i].first >= field + 4)) {
            WordSum whole_piece;  // the same piece in one add: same value as byte by byte
            whole_piece.add(pieces[i].first, std::span(f).subspan(pieces[i].first, pieces[i].second));
            WordSum bytewise;
            for (size_t k = pieces[i].first; k < pieces[i].first + pieces[i].second; ++k) bytewise.add(k, std::span(&f[k], 1));
            CHECK(whole_piece.folded() == bytewise.folded());
          }
        }
        parts[0].add(parts[1]);
        CHECK(pe_checksum(parts[0], f.size()) == want);
      }
    }
  }
  WordSum zero;
  zero.add(0, Bytes(10, 0));
  CHECK(zero.folded() == 0);  // only an all-zero input folds to 0; 0xffff + 0 words stays 0xffff
  WordSum ones;
  ones.add(0, Bytes(2, 0xff));
  ones.add(2, Bytes(2, 0));
  CHECK(ones.folded() == 0xffff);
}

namespace {

// Page hashes by random access, as osslsigncode computes them (pages of `page`, the header page without
// CheckSum and the certificate directory, every section in table order, each read on its own).
Bytes reference_page_hashes(const Bytes& f, uint32_t page) {
  const uint32_t pe = le::get32(f, 0x3c);
  const uint16_t nsec = static_cast<uint16_t>(f[pe + 6] | (f[pe + 7] << 8));
  const uint16_t opt_size = static_cast<uint16_t>(f[pe + 20] | (f[pe + 21] << 8));
  const size_t opt = pe + 24;
  const bool plus = f[opt] == 0x0b && f[opt + 1] == 0x02;
  const size_t ck = opt + 64, cd = opt + (plus ? 144 : 128);
  const uint32_t hdr = le::get32(f, opt + 60);
  auto le32 = [](Bytes& out, uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  Bytes head(f.begin(), f.begin() + static_cast<ptrdiff_t>(ck));
  head.insert(head.end(), f.begin() + static_cast<ptrdiff_t>(ck + 4), f.begin() + static_cast<ptrdiff_t>(cd));
  head.insert(head.end(), f.begin() + static_cast<ptrdiff_t>(cd + 8), f.begin() + hdr);
  head.resize(head.size() + page - hdr, 0);
  Bytes out;
  le32(out, 0);
  Bytes d = hash(HashAlg::sha256, head);
  out.insert(out.end(), d.begin(), d.end());
  uint32_t last = 0;
  for (uint16_t i = 0; i < nsec; ++i) {
    const size_t s = opt + opt_size + 40 * i;
    const uint32_t size = le::get32(f, s + 16), ptr = le::get32(f, s + 20);
    for (uint32_t off = 0; off < size; off += page) {
      Bytes pg(f.begin() + ptr + off, f.begin() + ptr + std::min(size, off + page));
      pg.resize(page, 0);
      le32(out, ptr + off);
      Bytes h = hash(HashAlg::sha256, pg);
      out.insert(out.end(), h.begin(), h.end());
    }
    if (size) last = ptr + size;
  }
  le32(out, last);
  out.resize(out.size() + 32, 0);
  return out;
}

}  // namespace

TEST_CASE("page hashes: overlapping and unordered sections, headers larger than SectionAlignment") {
  TempDir dir;
  std::string p = build_mingw_pe(dir, 64);
  if (p.empty()) {
    P11R_SKIP("no mingw compiler");
  }
  const Bytes good = read_file(p);
  const uint32_t pe_off = le::get32(good, 0x3c);
  const uint16_t opt_size = static_cast<uint16_t>(good[pe_off + 20] | (good[pe_off + 21] << 8));
  const size_t sect0 = pe_off + 24 + opt_size;
  REQUIRE(good[pe_off + 6] >= 3);
  PeDigestOptions ph;
  ph.page_hashes = true;
  std::mt19937 rng(7);
  auto check = [&](const Bytes& f, uint32_t page) {
    auto whole = pe_digest(f, ph);
    REQUIRE_MESSAGE(whole.ok(), whole.error().message);
    CHECK(to_hex(whole->page_hashes) == to_hex(reference_page_hashes(f, page)));
    for (size_t max_chunk : {size_t{1}, size_t{100}, size_t{5000}}) {
      auto chunked = digest_chunked(f, ph, rng, max_chunk);
      REQUIRE(chunked.ok());
      CHECK(chunked->page_hashes == whole->page_hashes);
    }
  };
  {  // section 3 inside section 1 (NSIS installers put .reloc inside .rsrc), listed after it
    Bytes f = good;
    le::put32(f, sect0 + 80 + 20, le::get32(f, sect0 + 20) + 512);
    le::put32(f, sect0 + 80 + 16, 1024);
    check(f, le::get32(f, pe_off + 24 + 32));
  }
  {  // sections 1 and 2 swapped in the table: pages follow the table, not the file
    Bytes f = good;
    std::swap_ranges(f.begin() + static_cast<ptrdiff_t>(sect0), f.begin() + static_cast<ptrdiff_t>(sect0 + 40),
                     f.begin() + static_cast<ptrdiff_t>(sect0 + 40));
    check(f, le::get32(f, pe_off + 24 + 32));
  }
  {  // SectionAlignment 512 with 1 KiB of headers (systemd-boot's EFI layout): relic's 4 KiB pages
    Bytes f = good;
    le::put32(f, pe_off + 24 + 32, 512);
    le::put32(f, pe_off + 24 + 36, 512);
    REQUIRE(le::get32(f, pe_off + 24 + 60) == 1024);
    check(f, 4096);
    le::put32(f, pe_off + 24 + 60, 8192);  // headers larger than any page: no peer can hash them
    auto r = pe_digest(f, ph);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("SizeOfHeaders (8192) is larger than a page") != std::string::npos);
  }
}
