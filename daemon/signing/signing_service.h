// The one path of a signature through the daemon (docs/architecture.md, "The path of one signature"):
// quota → token → the route's answer → audit record, durable → metrics. Every route that signs goes
// through here: the relay API's sign (transport/router.cpp), an approved held request
// (policy/requests_api.cpp) and the relic uploads (signers/authenticode_upload.cpp). What comes
// before is the route's: parsing and validating its request, the policy's rules, holding for an
// approval. The audit invariant (docs/architecture.md, invariant 2: no signature leaves the daemon
// without its audit record durably written) is kept here and only here.
#pragma once

#include "daemon/service.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <string>

namespace p11relay::daemon {

// How the key's quota counts this signature (docs/policy.md).
enum class QuotaUse {
  none,         // not counted (the key has no quota)
  take,         // taken before the token is asked (refused when used up); given back if nothing is signed
  count_after,  // counted once signed, never refused: a held request an approver let through
};

// The route's answer, built from the signature before the audit record is written so that its own
// audit fields (a relic patch's size) are in the record. A failure here returns nothing and records
// nothing.
class SignAnswer {
 public:
  virtual ~SignAnswer() = default;
  virtual Status build(const Bytes& signature, nlohmann::json& extra) = 0;
};

// One signature's facts, for the quota, the audit record and the metrics.
struct SignOrder {
  const RequestContext& ctx;   // who asked, from where, until when
  const Service::KeyRef& key;  // key config, token and served key (served not null)
  std::string requested_name;  // the key as the client named it (an alias is audited as such)
  std::string operation;       // relay mechanism or relic sigtype
  std::string digest_name{};   // relic digest name; empty when not known
  std::string filename{};      // as the client gave it (escaped before it reaches a log)
  QuotaUse quota = QuotaUse::none;
  nlohmann::json extra = nlohmann::json::object();  // the route's audit fields (request id, approver, sizes)
  SignAnswer* answer = nullptr;                    // optional
};

// One raw signature on the token (`job.mechanism` over `job.input`). `here`: the network thread of a
// solo connection may sign on a fast idle token itself (token_wait.h).
asio::awaitable<Result<Bytes>> sign_digest(Service& svc, SignOrder& order, const SignJob& job,
                                           IoStandby* here = nullptr);

// A token signature as a library callback asks for it: on the blocking pool, waiting.
using TokenSigner = std::function<Result<Bytes>(CK_MECHANISM_TYPE mechanism, Bytes input)>;
// Builds a structure around token signatures (a SignedData and its timestamp) on the blocking pool.
using SignBuild = std::function<Result<Bytes>(const TokenSigner& sign)>;
asio::awaitable<Result<Bytes>> sign_built(Service& svc, SignOrder& order, const SignBuild& build);

// When a token call for this request gives up: the request's deadline or the token's timeout, whichever
// comes first.
Clock::time_point token_deadline(const Service& svc, const RequestContext& ctx, const KeyConfig& key);

}  // namespace p11relay::daemon
