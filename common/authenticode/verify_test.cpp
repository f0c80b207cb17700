#include "common/authenticode/verify.h"

#include "common/authenticode/pe_write.h"
#include "common/authenticode/signed_data.h"
#include "test/helpers.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::authenticode;
using namespace p11relay::authenticode::testing;

TEST_CASE("verify_pe: accepts osslsigncode's signatures, rejects tampering") {
  TempDir dir;
  std::string exe = build_mingw_pe(dir, 32);
  if (exe.empty()) {
    P11R_SKIP("no mingw compiler");
  }
  TestKey key = make_test_key(KeyType::ec, dir, "verify signer");
  Bytes file = read_file(exe);
  CHECK_FALSE(verify_pe(file).ok());  // unsigned

  if (have_osslsigncode()) {
    std::string out = dir.file("ossl.exe");
    auto r = run("osslsigncode sign -ph -h sha1 -certs " + shell_quote(key.cert_path) + " -key " + shell_quote(key.key_path) +
                 " -in " + shell_quote(exe) + " -out " + shell_quote(out));
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    auto rep = verify_pe(read_file(out));
    REQUIRE_MESSAGE(rep.ok(), rep.error().message);
    CHECK(rep->signatures[0].alg == HashAlg::sha1);
    CHECK(rep->signatures[0].page_hashes);
    CHECK(rep->signatures[0].signer_subject.find("CN=verify signer") != std::string::npos);
  }

  auto info = pe_digest(file);
  REQUIRE(info.ok());
  X509* chain[] = {key.cert.get()};
  auto sd = build_signed_data(*info, chain, {}, software_signer(key.key.get()));
  REQUIRE(sd.ok());
  auto signed_file = embed_signature(file, *info, *sd);
  REQUIRE(signed_file.ok());
  REQUIRE(verify_pe(*signed_file).ok());

  {  // a byte of code changed
    Bytes t = *signed_file;
    t[info->pe_offset + 0x200] ^= 1;
    if (t[info->pe_offset + 0x200] == (*signed_file)[info->pe_offset + 0x200]) t[0x500] ^= 1;
    auto r = verify_pe(t);
    REQUIRE_FALSE(r.ok());
  }
  {  // the signature value changed
    Bytes t = *signed_file;
    auto view = parse_signed_data(*sd);
    REQUIRE(view.ok());
    size_t sig_off = info->new_table_offset() + 8 + static_cast<size_t>(view->signers[0].signature.data() - sd->data());
    t[sig_off + 10] ^= 0x40;
    auto r = verify_pe(t);
    REQUIRE_FALSE(r.ok());
  }
  {  // every truncation of the signature blob: errors, no crash
    for (size_t cut = 1; cut < sd->size(); cut += 13) {
      Bytes t = *signed_file;
      size_t base = info->new_table_offset() + 8;
      std::fill(t.begin() + static_cast<ptrdiff_t>(base + cut), t.end(), 0);
      // An ECDSA signature may end in zero bytes (1 in 256): then nothing was truncated.
      if (t == *signed_file) continue;
      auto r = verify_pe(t);
      CHECK_FALSE(r.ok());
    }
  }
}
