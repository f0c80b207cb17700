// MSI digests and signatures against osslsigncode, on installers built with wixl; hostile compound
// files (truncated, looping FAT chain, directory loop, huge counts) refused with a reason.
#include "common/authenticode/msi.h"
#include "common/authenticode/le.h"

#include "common/authenticode/signed_data.h"
#include "test/helpers.h"

#include <doctest/doctest.h>

#include <fstream>

using namespace p11relay;
using namespace p11relay::authenticode;
using namespace p11relay::authenticode::testing;

namespace {

// An installer with a small file (mini stream) and a 20 KB one (regular sectors), built by wixl.
std::string build_msi(const TempDir& dir) {
  if (run("command -v wixl").exit_code != 0) return "";
  std::ofstream(dir.file("small.txt")) << "hello\n";
  std::ofstream big(dir.file("big.bin"));
  for (int i = 0; i < 20000; ++i) big << static_cast<char>('a' + i % 26);
  big.close();
  std::ofstream(dir.file("p.wxs"))
      << "<?xml version='1.0'?><Wix xmlns='http://schemas.microsoft.com/wix/2006/wi'>"
         "<Product Id='*' Name='p11relay test' Language='1033' Version='1.0.0' Manufacturer='p11relay'"
         " UpgradeCode='12345678-1234-1234-1234-123456789012'>"
         "<Package InstallerVersion='200' Compressed='yes'/><Media Id='1' Cabinet='p.cab' EmbedCab='yes'/>"
         "<Directory Id='TARGETDIR' Name='SourceDir'><Directory Id='ProgramFilesFolder'>"
         "<Directory Id='INSTALLDIR' Name='p11relaytest'><Component Id='C' Guid='12345678-1234-1234-1234-123456789013'>"
         "<File Id='F1' Source='small.txt'/><File Id='F2' Source='big.bin'/>"
         "</Component></Directory></Directory></Directory><Feature Id='Main' Level='1'><ComponentRef Id='C'/>"
         "</Feature></Product></Wix>";
  auto r = run("cd " + shell_quote(dir.path()) + " && wixl -o p.msi p.wxs");
  if (r.exit_code != 0) return "";
  return dir.file("p.msi");
}

Result<Bytes> sign_msi_bytes(const Bytes& in, const TestKey& key, HashAlg alg, bool extended, bool append) {
  ASSIGN_OR_RETURN(ole::File f, ole::File::parse(in));
  ASSIGN_OR_RETURN(MsiSignatures old, msi_signatures(f));
  ASSIGN_OR_RETURN(MsiDigest d, msi_digest(f, alg, extended));
  X509* chain[] = {key.cert.get()};
  ASSIGN_OR_RETURN(Bytes sd, build_signed_data(alg, msi_spc_indirect_data_content(alg, d.digest), chain, {},
                                               software_signer(key.key.get())));
  if (append) {
    ASSIGN_OR_RETURN(sd, add_unsigned_attribute(old.signature, oid::kNestedSignature, sd));
  }
  Bytes out;
  RETURN_IF_ERROR(msi_write_signed(f, sd, append ? Bytes(old.extended) : d.prehash, [&out](std::span<const uint8_t> p) {
    out.insert(out.end(), p.begin(), p.end());
    return Status{};
  }));
  return out;
}


}  // namespace

TEST_CASE("msi: osslsigncode's signatures verify here (same digest, with and without MsiDigitalSignatureEx)") {
  TempDir dir;
  const std::string msi = build_msi(dir);
  if (msi.empty() || !have_osslsigncode()) {
    P11R_SKIP("wixl or osslsigncode missing");
  }
  TestKey key = make_test_key(KeyType::rsa, dir, "msi signer");
  for (const char* extra : {"", " -add-msi-dse"}) {
    CAPTURE(extra);
    const std::string out = dir.file("ossl.msi");
    std::remove(out.c_str());
    auto r = run("osslsigncode sign -h sha256" + std::string(extra) + " -certs " + shell_quote(key.cert_path) + " -key " +
                 shell_quote(key.key_path) + " -in " + shell_quote(msi) + " -out " + shell_quote(out));
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    Bytes signed_file = read_file(out);
    auto f = ole::File::parse(signed_file);
    REQUIRE_MESSAGE(f.ok(), f.error().message);
    auto rep = verify_msi(*f);
    REQUIRE_MESSAGE(rep.ok(), rep.error().message);
    // The digest of the unsigned file equals the one osslsigncode signed.
    Bytes unsigned_file = read_file(msi);
    auto uf = ole::File::parse(unsigned_file);
    REQUIRE(uf.ok());
    auto d = msi_digest(*uf, HashAlg::sha256, std::string(extra).size() > 0);
    REQUIRE(d.ok());
    CHECK(to_hex(d->digest) == to_hex(rep->signatures[0].image_digest));
  }
}

TEST_CASE("msi: our signatures verify with osslsigncode (sha256, sha1 nested, MsiDigitalSignatureEx)") {
  TempDir dir;
  const std::string msi = build_msi(dir);
  if (msi.empty() || !have_osslsigncode()) {
    P11R_SKIP("wixl or osslsigncode missing");
  }
  TestKey key = make_test_key(KeyType::ec, dir, "msi signer");
  for (bool extended : {false, true}) {
    CAPTURE(extended);
    auto s = sign_msi_bytes(read_file(msi), key, HashAlg::sha256, extended, false);
    REQUIRE_MESSAGE(s.ok(), s.error().message);
    write_file(dir.file("ours.msi"), *s);
    auto v = osslsigncode_verify(dir.file("ours.msi"), key.cert_path);
    CHECK_MESSAGE(v.exit_code == 0, v.output);
    // osslsigncode prints the digest stored in the signature and the one it computed from the file.
    const Bytes unsigned_file = read_file(msi);  // the File views these bytes
    auto uf = ole::File::parse(unsigned_file);
    REQUIRE(uf.ok());
    std::string hex = to_hex(msi_digest(*uf, HashAlg::sha256, extended)->digest);
    for (auto& c : hex) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    CHECK_MESSAGE(v.output.find("Current DigitalSignature         : " + hex) != std::string::npos, v.output);
    CHECK_MESSAGE(v.output.find("Calculated DigitalSignature      : " + hex) != std::string::npos, v.output);
    auto n = sign_msi_bytes(*s, key, HashAlg::sha256, extended, true);
    REQUIRE_MESSAGE(n.ok(), n.error().message);
    write_file(dir.file("nested.msi"), *n);
    v = osslsigncode_verify(dir.file("nested.msi"), key.cert_path);
    CHECK_MESSAGE(v.exit_code == 0, v.output);
    CHECK(v.output.find("Number of verified signatures: 2") != std::string::npos);
    auto f = ole::File::parse(*n);
    REQUIRE(f.ok());
    auto rep = verify_msi(*f);
    REQUIRE_MESSAGE(rep.ok(), rep.error().message);
    CHECK(rep->signatures.size() == 2);
    // msiinfo (libmsi) still reads the rewritten database.
    if (run("command -v msiinfo").exit_code == 0) {
      auto t = run("msiinfo tables " + shell_quote(dir.file("nested.msi")));
      CHECK_MESSAGE(t.exit_code == 0, t.output);
      CHECK(t.output.find("File") != std::string::npos);
    }
  }
  // A changed stream no longer verifies.
  auto s = sign_msi_bytes(read_file(msi), key, HashAlg::sha256, false, false);
  REQUIRE(s.ok());
  Bytes bad = *s;
  const std::string needle = "abcdefghijklmnopqrstuvwxyzabcdefghij";
  auto it = std::search(bad.begin(), bad.end(), needle.begin(), needle.end());
  if (it != bad.end()) {
    *it = 'X';
    auto f = ole::File::parse(bad);
    REQUIRE(f.ok());
    CHECK_FALSE(verify_msi(*f).ok());
  }
}

TEST_CASE("msi: hostile compound files are refused with the reason") {
  TempDir dir;
  const std::string msi = build_msi(dir);
  if (msi.empty()) {
    P11R_SKIP("wixl missing");
  }
  const Bytes good = read_file(msi);
  REQUIRE(ole::File::parse(good).ok());
  auto fails_with = [](const Bytes& b, const std::string& what) {
    auto f = ole::File::parse(b);
    bool refused = !f.ok();
    if (f.ok()) refused = !msi_digest(*f, HashAlg::sha256, true).ok();
    CHECK_MESSAGE(refused, what);
    if (!f.ok()) CHECK_MESSAGE(f.error().message.find("not a valid OLE compound file") != std::string::npos, f.error().message);
  };
  fails_with(Bytes(good.begin(), good.begin() + 300), "shorter than a header");
  fails_with(Bytes(good.begin(), good.begin() + static_cast<long>(good.size() / 2)), "truncated to half");
  Bytes b = good;
  le::put32(b, 0x2C, 0x7fffffff);
  fails_with(b, "FAT sector count");
  b = good;
  // The directory chain's first sector points at itself in the FAT: a loop.
  const uint32_t dir_start = b[0x30] | (b[0x31] << 8) | (b[0x32] << 16) | (static_cast<uint32_t>(b[0x33]) << 24);
  const uint32_t fat0 = b[0x4C] | (b[0x4D] << 8) | (b[0x4E] << 16) | (static_cast<uint32_t>(b[0x4F]) << 24);
  le::put32(b, (fat0 + 1) * 512 + 4 * dir_start, dir_start);
  fails_with(b, "looping directory chain");
  b = good;
  le::put32(b, (dir_start + 1) * 512 + 0x4C, 0);  // root's child is the root: a cycle
  fails_with(b, "directory cycle");
  b = good;
  le::put32(b, 0x40, 0x7fffffff);
  fails_with(b, "mini FAT count");
}
