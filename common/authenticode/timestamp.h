// RFC 3161 counter-signatures for Authenticode (docs/relic-protocol.md §10, §9.4): TimeStampReq over the
// SignerInfo's signature value, POSTed to the TSA over plain HTTP, reply checked (status, imprint,
// nonce, token signature), token stored as unsigned attribute 1.3.6.1.4.1.311.3.3.1.
#pragma once

#include "common/bytes.h"
#include "common/http_post.h"
#include "common/digest.h"
#include "common/error.h"

#include <span>
#include <string>
#include <vector>

namespace p11relay::authenticode {

struct TimestampOptions {
  // http://host[:port]/path (TSA URLs are plain HTTP by convention), tried in order until one answers.
  std::vector<std::string> urls;
  int timeout_seconds = 30;  // per URL
  HashAlg alg = HashAlg::sha256;  // hash of the message imprint
  // PEM file with the TSA's CA certificate(s). When set, the token's certificate chain is verified
  // against it; otherwise only the token signature itself is checked (with the embedded TSA cert).
  std::string ca_file;
};

struct TimestampRequest {
  Bytes der;
  Bytes nonce;  // big-endian INTEGER value
};

// TimeStampReq v1: messageImprint = {alg, hash(message)}, random 96-bit nonce, certReq true.
Result<TimestampRequest> make_timestamp_request(HashAlg alg, std::span<const uint8_t> message);
// Checks a TimeStampResp against the request (PKIStatus granted, version, message imprint, nonce,
// token signature; chain too when options.ca_file is set) and returns the TimeStampToken
// (ContentInfo DER). A TSA that answers wrongly is ErrorCode::device_error (502): the upstream
// service failed, not the caller.
Result<Bytes> check_timestamp_response(std::span<const uint8_t> response, const TimestampRequest& request,
                                       const TimestampOptions& options);

// What a timestamp says, for the audit record.
struct TimestampInfo {
  std::string url;          // the TSA that answered
  std::string tsa_subject;  // RFC 2253 subject of the token's signer
  std::string gen_time;     // TSTInfo genTime, RFC 3339 UTC (2026-01-31T12:00:00Z)
  HashAlg alg = HashAlg::sha256;
};

// Counter-signs the first SignerInfo of `signed_data` with an RFC 3161 token (unsigned attribute
// 1.3.6.1.4.1.311.3.3.1) from the first of options.urls that answers correctly, and returns the
// SignedData with the token added. When none does, the error (ErrorCode::device_error, 502) names each
// URL and why it failed; the caller must not use the untimestamped signature then.
Result<Bytes> add_timestamp(std::span<const uint8_t> signed_data, const TimestampOptions& options,
                            TimestampInfo* info = nullptr);

}  // namespace p11relay::authenticode
