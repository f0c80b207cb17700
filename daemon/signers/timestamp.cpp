#include "daemon/signers/timestamp.h"

#include "daemon/transport/router.h"
#include "daemon/signers/signers.h"

namespace p11relay::daemon {

Result<std::optional<authenticode::TimestampOptions>> timestamp_for(const SignerContext& c) {
  const KeyConfig& k = *c.key.config;
  if (!k.timestamp && k.timestamper.empty()) return std::optional<authenticode::TimestampOptions>();
  if (relic_flag(c, "no-timestamp")) return std::optional<authenticode::TimestampOptions>();
  // The snapshot the key came from: a reload that changes timestamp: applies to later requests.
  const Config& cfg = c.request.identity.snapshot ? c.request.identity.snapshot->config : c.service.config;
  const TimestampConfig& tc = cfg.timestamp;
  authenticode::TimestampOptions o;
  o.urls = tc.urls_for(k);
  if (o.urls.empty())
    return internal_error("key '" + k.name + "' asks for timestamps but the timestamp: section has no URLs for it");
  o.timeout_seconds = tc.timeout;
  o.ca_file = tc.cacert;
  o.alg = c.digest;
  return std::optional<authenticode::TimestampOptions>(std::move(o));
}

void audit_timestamp(const authenticode::TimestampInfo& info, nlohmann::json& extra) {
  extra["sig.ts.timestamper"] = info.tsa_subject;
  extra["sig.ts.timestamp"] = info.gen_time;
  extra["sig.ts.hash"] = hash_info(info.alg).relic_name;
  extra["sig.ts.url"] = info.url;
}

http::Response timestamp_failed(const Error& e) {
  return relic_problem(502, "https://relic.sas.com/timestamp-failed",
                       "the signature was made but could not be timestamped, so it was discarded: " + e.message +
                           ". Check timestamp.urls in the server configuration and that the TSAs are reachable.",
                       "Timestamping failed");
}

}  // namespace p11relay::daemon
