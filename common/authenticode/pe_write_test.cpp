#include "common/authenticode/pe_write.h"
#include "common/authenticode/le.h"

#include "common/authenticode/binpatch.h"
#include "common/authenticode/signed_data.h"
#include "common/authenticode/verify.h"
#include "test/helpers.h"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>

using namespace p11relay;
using namespace p11relay::authenticode;
using namespace p11relay::authenticode::testing;

namespace {

struct Signed {
  Bytes file;
  PeInfo info;
};

Signed sign_file(const Bytes& file, TestKey& key, bool page_hashes, EmbedMode mode = EmbedMode::replace,
                 HashAlg alg = HashAlg::sha256) {
  PeDigestOptions opt;
  opt.alg = alg;
  opt.page_hashes = page_hashes;
  auto info = pe_digest(file, opt);
  REQUIRE_MESSAGE(info.ok(), info.error().message);
  X509* chain[] = {key.cert.get()};
  SignOptions so;
  so.description = "p11relay test";
  so.url = "https://example.com/p11relay";
  auto sd = build_signed_data(*info, chain, so, software_signer(key.key.get()));
  REQUIRE_MESSAGE(sd.ok(), sd.error().message);
  auto out = embed_signature(file, *info, *sd, mode);
  REQUIRE_MESSAGE(out.ok(), out.error().message);
  return {std::move(*out), std::move(*info)};
}


// A minimal PE32 or PE32+ of random bytes: e_lfanew of either parity, one section of `data` bytes,
// `trailing` bytes after it, a random stored CheckSum. Enough for the digester, not for Windows.
Bytes random_pe(std::mt19937& rng, bool pe32plus, uint32_t lfanew, size_t data, size_t trailing) {
  const size_t dirs = pe32plus ? 112 : 96, opt = lfanew + 24, opt_size = dirs + 16 * 8;
  const size_t sections = opt + opt_size, raw = (sections + 40 + 511) & ~size_t{511};
  Bytes f(raw + data + trailing);
  for (auto& b : f) b = static_cast<uint8_t>(rng());
  f[0] = 'M';
  f[1] = 'Z';
  le::put32(f, 0x3c, lfanew);
  std::memcpy(&f[lfanew], "PE\0\0", 4);
  f[lfanew + 6] = 1;  // NumberOfSections
  f[lfanew + 7] = 0;
  f[lfanew + 20] = static_cast<uint8_t>(opt_size);
  f[lfanew + 21] = 0;
  f[opt] = 0x0b;
  f[opt + 1] = pe32plus ? 0x02 : 0x01;
  le::put32(f, opt + dirs - 4, 16);       // NumberOfRvaAndSizes
  le::put32(f, opt + dirs + 32, 0);       // no certificate table
  le::put32(f, opt + dirs + 36, 0);
  le::put32(f, sections + 16, static_cast<uint32_t>(data));
  le::put32(f, sections + 20, static_cast<uint32_t>(raw));
  return f;
}

}  // namespace

TEST_CASE("signed_checksum and the written file equal a full recomputation for random PEs") {
  TempDir dir;
  std::mt19937 rng(20261125);
  for (int round = 0; round < 40; ++round) {
    const bool plus = round % 2 == 0;
    const uint32_t lfanew = 0x40 + static_cast<uint32_t>(rng() % 64);  // odd and even
    const size_t data = rng() % 5000, trailing = round % 3 == 0 ? 0 : rng() % 77;
    CAPTURE(round);
    Bytes file = random_pe(rng, plus, lfanew, data, trailing);
    // Twice: unsigned, then re-signed over its own (replaced, shorter or longer) table.
    for (int pass = 0; pass < 2; ++pass) {
      CAPTURE(pass);
      auto info = pe_digest(file);
      REQUIRE_MESSAGE(info.ok(), info.error().message);
      CHECK(info->file_checksum == pe_checksum(file, info->checksum_offset));
      CHECK(info->signed_() == (pass == 1));
      Bytes sd(1 + rng() % 3000);
      for (auto& b : sd) b = static_cast<uint8_t>(rng());
      auto expect = embed_signature(file, *info, sd);  // checksum recomputed over the whole output
      REQUIRE(expect.ok());
      auto patch = make_pe_patch(*info, sd);
      REQUIRE(patch.ok());
      CHECK(signed_checksum(*info, *patch) == le::get32(*expect, info->checksum_offset));
      write_file(dir.file("in.exe"), file);
      REQUIRE(write_signed_file(dir.file("in.exe"), dir.file("out.exe"), *info, sd).ok());
      CHECK(read_file(dir.file("out.exe")) == *expect);
      file = std::move(*expect);
    }
  }
}

TEST_CASE("sign real PEs (mingw-built and Debian DLLs): osslsigncode verifies, digests agree") {
  TempDir dir;
  if (!have_osslsigncode()) {
    P11R_SKIP("osslsigncode not installed");
  }
  std::vector<std::string> files;
  for (int bits : {32, 64}) {
    std::string p = build_mingw_pe(dir, bits);
    if (p.empty()) MESSAGE("no mingw compiler for " << bits << "-bit");
    else files.push_back(p);
  }
  auto sys = system_pe_files(4);
  if (sys.empty()) MESSAGE("no PE DLLs from Debian packages found");
  files.insert(files.end(), sys.begin(), sys.end());
  if (files.empty()) return;

  TestKey rsa = make_test_key(KeyType::rsa, dir, "Test RSA signer");
  TestKey ec = make_test_key(KeyType::ec, dir, "Test EC signer");
  for (const auto& path : files) {
    CAPTURE(path);
    const Bytes original = read_file(path);
    for (TestKey* key : {&rsa, &ec}) {
      for (bool ph : {false, true}) {
        CAPTURE(ph);
        CAPTURE(key->cert_path);
        Signed s = sign_file(original, *key, ph);
        std::string out = dir.file("signed.exe");
        write_file(out, s.file);
        auto v = osslsigncode_verify(out, key->cert_path);
        CHECK_MESSAGE(v.exit_code == 0, v.output);
        CHECK(v.current_digest == to_hex(s.info.image_digest));
        CHECK(v.calculated_digest == to_hex(s.info.image_digest));
        CHECK(v.page_hash_checked == ph);
        CHECK(v.output.find("Text description: p11relay test") != std::string::npos);
        CHECK(v.output.find("URL description: https://example.com/p11relay") != std::string::npos);
        CHECK(v.output.find("Microsoft Individual Code Signing purpose") != std::string::npos);
        CHECK_FALSE(v.page_hash_mismatch);
        // Checksum correct, and our own verifier agrees.
        auto info2 = pe_digest(s.file);
        REQUIRE(info2.ok());
        CHECK(info2->stored_checksum == pe_checksum(s.file, info2->checksum_offset));
        CHECK(info2->stored_checksum != 0);
        auto rep = verify_pe(s.file);
        REQUIRE_MESSAGE(rep.ok(), rep.error().message);
        REQUIRE(rep->signatures.size() == 1);
        CHECK(rep->signatures[0].signer_subject.find(key == &rsa ? "CN=Test RSA signer" : "CN=Test EC signer") != std::string::npos);
        CHECK(rep->signatures[0].page_hashes == ph);
      }
    }
    // Re-signing a signed file replaces the signature; --append nests a second one.
    Signed first = sign_file(original, rsa, false);
    Signed again = sign_file(first.file, ec, true);
    CHECK(again.info.image_digest == first.info.image_digest);
    std::string out = dir.file("resigned.exe");
    write_file(out, again.file);
    auto v = osslsigncode_verify(out, ec.cert_path);
    CHECK_MESSAGE(v.exit_code == 0, v.output);
    auto rep = verify_pe(again.file);
    REQUIRE(rep.ok());
    CHECK(rep->signatures.size() == 1);
    // Replaced in place: the new table sits where the old one was and ends the file.
    auto first_info = pe_digest(first.file);
    auto again_info = pe_digest(again.file);
    REQUIRE(first_info.ok());
    REQUIRE(again_info.ok());
    CHECK(again_info->cert_table_offset == first_info->cert_table_offset);
    CHECK(again.file.size() == again_info->cert_table_offset + again_info->cert_table_size);

    Signed nested = sign_file(first.file, ec, false, EmbedMode::nest, HashAlg::sha384);
    std::string nout = dir.file("nested.exe");
    write_file(nout, nested.file);
    // Both signers must be trusted for osslsigncode to pass.
    std::string both = dir.file("both.pem");
    Bytes a = read_file(rsa.cert_path), b = read_file(ec.cert_path);
    a.insert(a.end(), b.begin(), b.end());
    write_file(both, a);
    auto nv = osslsigncode_verify(nout, both);
    CHECK_MESSAGE(nv.exit_code == 0, nv.output);
    CHECK(nv.output.find("Number of verified signatures: 2") != std::string::npos);
    auto nrep = verify_pe(nested.file);
    REQUIRE_MESSAGE(nrep.ok(), nrep.error().message);
    REQUIRE(nrep->signatures.size() == 2);
    CHECK(nrep->signatures[1].nesting == 1);
    CHECK(nrep->signatures[1].alg == HashAlg::sha384);
  }
}

TEST_CASE("relic pe-coff patch (§9.5) applied + checksum fix gives the same file as embed_signature") {
  TempDir dir;
  std::string p = build_mingw_pe(dir, 32);
  if (p.empty()) {
    P11R_SKIP("no mingw compiler");
  }
  TestKey key = make_test_key(KeyType::rsa, dir, "patch signer");
  const Bytes original = read_file(p);
  for (int round = 0; round < 2; ++round) {
    // round 0: unsigned input (record 2 inserts at EOF); round 1: signed input (record 2 replaces).
    Bytes input = round == 0 ? original : sign_file(original, key, false).file;
    if (round == 0) input.resize(input.size() + 3, 0x5a);  // unaligned EOF: patch adds padding
    auto info = pe_digest(input);
    REQUIRE(info.ok());
    X509* chain[] = {key.cert.get()};
    auto sd = build_signed_data(*info, chain, {}, software_signer(key.key.get()));
    REQUIRE(sd.ok());
    auto patch = make_pe_patch(*info, *sd);
    REQUIRE(patch.ok());
    REQUIRE(patch->records.size() == 2);
    CHECK(patch->records[0].offset == info->cert_dir_offset);
    CHECK(patch->records[0].old_size == 8);
    CHECK(patch->records[1].offset == info->original_size);
    CHECK(patch->records[1].old_size == info->cert_table_size);
    auto wire = binpatch::serialize(*patch);
    REQUIRE(wire.ok());
    auto parsed = binpatch::parse(*wire);
    REQUIRE(parsed.ok());
    auto applied = binpatch::apply(input, *parsed);
    REQUIRE(applied.ok());
    REQUIRE(fix_pe_checksum(*applied).ok());
    auto embedded = embed_signature(input, *info, *sd);
    REQUIRE(embedded.ok());
    CHECK(*applied == *embedded);
    CHECK(applied->size() % 8 == 0);
    auto rep = verify_pe(*applied);
    CHECK_MESSAGE(rep.ok(), (rep.ok() ? "" : rep.error().message));
  }
}

TEST_CASE("WIN_CERTIFICATE framing and table parsing") {
  Bytes sd = {0x30, 0x03, 0x02, 0x01, 0x01};
  Bytes wc = win_certificate(sd);
  CHECK(to_hex(wc) == "1000000000020200" "3003020101000000");
  auto parsed = parse_cert_table(wc);
  REQUIRE(parsed.ok());
  CHECK((*parsed)[0] == sd);
  Bytes bad = wc;
  bad[0] = 0xff;  // dwLength past the table
  CHECK_FALSE(parse_cert_table(bad).ok());
  CHECK_FALSE(parse_cert_table(Bytes(16, 0)).ok());
}

TEST_CASE("re-sign and nest onto a signature made by osslsigncode") {
  TempDir dir;
  std::string exe = build_mingw_pe(dir, 64);
  if (exe.empty() || !have_osslsigncode()) {
    P11R_SKIP("no mingw compiler or osslsigncode");
  }
  TestKey theirs = make_test_key(KeyType::rsa, dir, "osslsigncode signer");
  TestKey ours = make_test_key(KeyType::ec, dir, "p11relay signer");
  std::string foreign = dir.file("foreign.exe");
  auto r = run("osslsigncode sign -ph -certs " + shell_quote(theirs.cert_path) + " -key " + shell_quote(theirs.key_path) +
               " -n Foreign -i https://example.org/ -in " + shell_quote(exe) + " -out " + shell_quote(foreign));
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const Bytes file = read_file(foreign);
  std::string both = dir.file("both.pem");
  Bytes a = read_file(theirs.cert_path), b = read_file(ours.cert_path);
  a.insert(a.end(), b.begin(), b.end());
  write_file(both, a);

  Signed replaced = sign_file(file, ours, true);
  write_file(dir.file("replaced.exe"), replaced.file);
  auto v = osslsigncode_verify(dir.file("replaced.exe"), ours.cert_path);
  CHECK_MESSAGE(v.exit_code == 0, v.output);
  CHECK(v.output.find("Number of verified signatures: 1") != std::string::npos);

  // Nesting keeps osslsigncode's (DER-sorted, signingTime-bearing) primary signature byte for byte.
  Signed nested = sign_file(file, ours, false, EmbedMode::nest);
  write_file(dir.file("nested.exe"), nested.file);
  auto nv = osslsigncode_verify(dir.file("nested.exe"), both);
  CHECK_MESSAGE(nv.exit_code == 0, nv.output);
  CHECK(nv.output.find("Number of verified signatures: 2") != std::string::npos);
  auto rep = verify_pe(nested.file);
  REQUIRE_MESSAGE(rep.ok(), rep.error().message);
  REQUIRE(rep->signatures.size() == 2);
  CHECK(rep->signatures[0].signer_subject.find("osslsigncode signer") != std::string::npos);
  CHECK(rep->signatures[0].page_hashes);
  CHECK(rep->signatures[1].signer_subject.find("p11relay signer") != std::string::npos);

  // Appending twice gives three signatures (the nested attribute gets a second value).
  Signed twice = sign_file(nested.file, ours, false, EmbedMode::nest, HashAlg::sha1);
  auto rep2 = verify_pe(twice.file);
  REQUIRE_MESSAGE(rep2.ok(), rep2.error().message);
  CHECK(rep2->signatures.size() == 3);
  write_file(dir.file("twice.exe"), twice.file);
  auto tv = osslsigncode_verify(dir.file("twice.exe"), both);
  CHECK_MESSAGE(tv.exit_code == 0, tv.output);
  CHECK(tv.output.find("Number of verified signatures: 3") != std::string::npos);
}

TEST_CASE("write_signed_file streams the same bytes as embed_signature, also in place") {
  TempDir dir;
  std::string exe = build_mingw_pe(dir, 32);
  if (exe.empty()) {
    P11R_SKIP("no mingw compiler");
  }
  TestKey key = make_test_key(KeyType::rsa, dir, "stream signer");
  Bytes unaligned = read_file(exe);
  unaligned.resize(unaligned.size() + 5, 0x33);  // EOF not 8-aligned, odd length for the checksum
  write_file(dir.file("in.exe"), unaligned);
  for (EmbedMode mode : {EmbedMode::replace, EmbedMode::nest}) {
    for (int round = 0; round < 2; ++round) {
      std::string in = dir.file("in.exe");
      auto info = pe_digest_file(in);
      REQUIRE(info.ok());
      X509* chain[] = {key.cert.get()};
      auto sd = build_signed_data(*info, chain, {}, software_signer(key.key.get()));
      REQUIRE(sd.ok());
      Bytes before = read_file(in);
      auto expect = embed_signature(before, *info, *sd, mode);
      REQUIRE(expect.ok());
      REQUIRE(write_signed_file(in, dir.file("out.exe"), *info, *sd, mode).ok());
      CHECK(read_file(dir.file("out.exe")) == *expect);
      REQUIRE(write_signed_file(in, in, *info, *sd, mode).ok());  // in place; next round re-signs it
      CHECK(read_file(in) == *expect);
    }
  }
  auto info = pe_digest_file(dir.file("in.exe"));
  REQUIRE(info.ok());
  CHECK(pe_checksum(read_file(dir.file("in.exe")), info->checksum_offset) == info->stored_checksum);
  auto rep = verify_pe(read_file(dir.file("in.exe")));
  REQUIRE(rep.ok());
  CHECK(rep->signatures.size() == 3);  // replace, replace, then nest twice onto the last one
  // Stale PeInfo (file changed since hashing) is refused.
  Bytes other = read_file(exe);
  write_file(dir.file("other.exe"), other);
  auto sd = build_signed_data(*info, std::array<X509*, 1>{key.cert.get()}, {}, software_signer(key.key.get()));
  REQUIRE(sd.ok());
  CHECK_FALSE(write_signed_file(dir.file("other.exe"), dir.file("x.exe"), *info, *sd).ok());
}

TEST_CASE("SignedFileWriter: the copy has a name only in commit, and none is left without a commit") {
  TempDir dir;
  std::mt19937 rng(7);
  const std::string in = dir.file("in.exe"), out = dir.file("out.exe");
  write_file(in, random_pe(rng, true, 0x80, 300000, 3));
  auto names = [&] {
    std::set<std::string> n;
    for (const auto& e : std::filesystem::directory_iterator(dir.path())) n.insert(e.path().filename().string());
    return n;
  };
  const std::set<std::string> just_in = {"in.exe"};
  const int probe = ::open(dir.path().c_str(), O_TMPFILE | O_RDWR, 0600);
  const bool unnamed = probe >= 0 && ::access("/proc/self/fd", X_OK) == 0;
  if (probe >= 0) ::close(probe);
  auto info = pe_digest_file(in);
  REQUIRE(info.ok());
  const Bytes sd = {0x30, 0x03, 0x02, 0x01, 0x01};
  {
    auto w = SignedFileWriter::open(in, out);
    REQUIRE(w.ok());
    (*w)->start_copy();
    if (unnamed) CHECK(names() == just_in);
  }  // destroyed without commit: stops the copy, removes it
  CHECK(names() == just_in);
  auto w = SignedFileWriter::open(in, out);
  REQUIRE(w.ok());
  (*w)->start_copy();
  REQUIRE((*w)->commit(*info, sd).ok());
  CHECK(names() == std::set<std::string>{"in.exe", "out.exe"});
  auto expect = embed_signature(read_file(in), *info, sd);
  REQUIRE(expect.ok());
  CHECK(read_file(out) == *expect);
  CHECK_FALSE((*w)->commit(*info, sd).ok());  // once only
}
