#include "common/authenticode/timestamp.h"

#include "common/authenticode/pe_write.h"
#include "common/authenticode/signed_data.h"
#include "common/authenticode/verify.h"
#include "test/helpers.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::authenticode;
using namespace p11relay::authenticode::testing;

TEST_CASE("RFC 3161 timestamp from a local TSA; osslsigncode accepts it") {
  TempDir dir;
  TestTsa tsa(dir);
  if (!tsa.ok()) {
    P11R_SKIP("test TSA did not start: " << tsa.why());
  }
  std::string exe = build_mingw_pe(dir, 64);
  if (exe.empty()) {
    P11R_SKIP("no mingw compiler");
  }
  TestKey key = make_test_key(KeyType::rsa, dir, "ts signer");
  Bytes file = read_file(exe);
  auto info = pe_digest(file);
  REQUIRE(info.ok());
  X509* chain[] = {key.cert.get()};
  auto sd = build_signed_data(*info, chain, {}, software_signer(key.key.get()));
  REQUIRE(sd.ok());

  TimestampOptions opt;
  // The first URL fails: the next one is tried, and the description names the one that answered.
  opt.urls = {tsa.url("/fail"), tsa.url()};
  opt.ca_file = tsa.ca_file();
  TimestampInfo ts_info;
  auto stamped = add_timestamp(*sd, opt, &ts_info);
  REQUIRE_MESSAGE(stamped.ok(), stamped.error().message);
  CHECK(ts_info.url == tsa.url());
  CHECK(ts_info.tsa_subject.find("p11relay test TSA") != std::string::npos);
  CHECK(ts_info.gen_time.size() == 20);
  CHECK(ts_info.gen_time.back() == 'Z');
  opt.ca_file.clear();  // signature-only check path
  auto stamped2 = add_timestamp(*sd, opt);
  REQUIRE_MESSAGE(stamped2.ok(), stamped2.error().message);

  auto signed_file = embed_signature(file, *info, *stamped);
  REQUIRE(signed_file.ok());
  auto rep = verify_pe(*signed_file);
  REQUIRE(rep.ok());
  CHECK(rep->signatures[0].timestamped);
  if (have_osslsigncode()) {
    std::string out = dir.file("ts.exe");
    write_file(out, *signed_file);
    auto v = osslsigncode_verify(out, key.cert_path, tsa.ca_file());
    CHECK_MESSAGE(v.exit_code == 0, v.output);
    CHECK(v.output.find("Timestamp is not available") == std::string::npos);
    CHECK(v.output.find("p11relay test TSA") != std::string::npos);
  }

  // Failures: HTTP error, junk reply, a reply for a different request, wrong CA, nothing listening.
  opt.urls = {tsa.url("/fail")};
  CHECK_FALSE(add_timestamp(*sd, opt).ok());
  opt.urls = {tsa.url("/garbage")};
  CHECK_FALSE(add_timestamp(*sd, opt).ok());
  opt.urls = {tsa.url("/fail"), tsa.url("/garbage")};  // every URL fails: each is named
  auto none_answered = add_timestamp(*sd, opt);
  REQUIRE_FALSE(none_answered.ok());
  CHECK(none_answered.error().code == ErrorCode::device_error);
  CHECK(none_answered.error().message.find("/fail: timestamp server answered HTTP 500") != std::string::npos);
  CHECK(none_answered.error().message.find("/garbage: ") != std::string::npos);
  opt.urls.clear();
  CHECK_FALSE(add_timestamp(*sd, opt).ok());
  {
    Bytes msg = to_bytes("message");
    auto req1 = make_timestamp_request(HashAlg::sha256, msg);
    auto req2 = make_timestamp_request(HashAlg::sha256, msg);
    REQUIRE(req1.ok());
    REQUIRE(req2.ok());
    CHECK(req1->nonce != req2->nonce);
    auto reply = http_post(tsa.url(), "application/timestamp-query", req1->der, 30);
    REQUIRE(reply.ok());
    CHECK(reply->status == 200);
    TimestampOptions none;
    CHECK(check_timestamp_response(reply->body, *req1, none).ok());
    auto mismatch = check_timestamp_response(reply->body, *req2, none);  // nonce differs
    CHECK_FALSE(mismatch.ok());
    TimestampOptions wrong_ca;
    wrong_ca.ca_file = key.cert_path;
    CHECK_FALSE(check_timestamp_response(reply->body, *req1, wrong_ca).ok());
  }
  opt.urls = {"http://127.0.0.1:1/"};
  auto refused = add_timestamp(*sd, opt);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message.find("cannot connect") != std::string::npos);
  opt.urls = {"https://127.0.0.1/"};
  CHECK_FALSE(add_timestamp(*sd, opt).ok());
}
