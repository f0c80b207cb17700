// Server-side RFC 3161 timestamps for relic signers (docs/relic-protocol.md §10): which TSAs a request
// uses, and how the outcome is answered and audited. Every signer that builds a SignerInfo calls
// timestamp_for() when the request starts and authenticode::add_timestamp() on the SignedData it built.
#pragma once

#include "common/authenticode/timestamp.h"
#include "daemon/service.h"

#include <nlohmann/json.hpp>

#include <optional>

namespace p11relay::daemon {

// The timestamp options for this request: nullopt when the key does not timestamp or the client sent
// relic's no-timestamp=true. A key that timestamps without usable URLs is an error (500): never an
// untimestamped signature instead.
Result<std::optional<authenticode::TimestampOptions>> timestamp_for(const SignerContext& c);

// The audit attributes of a timestamp, named as relic names them (sig.ts.*), plus the TSA's URL.
void audit_timestamp(const authenticode::TimestampInfo& info, nlohmann::json& extra);

// 502 problem document when no TSA gave a usable token (relic clients treat 502 as temporary).
http::Response timestamp_failed(const Error& e);

}  // namespace p11relay::daemon
