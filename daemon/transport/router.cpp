#include "daemon/transport/router.h"

#include "common/mechanism.h"
#include "common/relay_api.h"
#include "common/text.h"
#include "daemon/policy/requests_api.h"
#include "daemon/signing/signing_service.h"
#include "daemon/ui/ui.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <random>

namespace p11relay::daemon {
namespace {

constexpr const char* kRelicBase = "https://relic.sas.com/";
constexpr const char* kAcceptEncoding = "x-snappy-framed, gzip";

bool starts_with(const std::string& s, std::string_view p) { return s.rfind(p, 0) == 0; }

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count();
}

}  // namespace

http::Response text_response(int status, std::string body, bool nosniff) {
  http::Response r;
  r.status = status;
  r.set("Content-Type", "text/plain; charset=utf-8");
  if (nosniff) r.set("X-Content-Type-Options", "nosniff");
  r.body = std::move(body);
  return r;
}

http::Response json_response(int status, std::string body, const char* content_type) {
  http::Response r;
  r.status = status;
  r.set("Content-Type", content_type);
  r.body = std::move(body);
  return r;
}

http::Response relic_problem(int status, const std::string& type, const std::string& detail, const std::string& title,
                             const std::string& param) {
  // Member order and two-space indentation as relic's encoder writes them (§3.1).
  nlohmann::ordered_json j;
  j["status"] = status;
  j["type"] = type;
  if (!title.empty()) j["title"] = title;
  if (!detail.empty()) j["detail"] = detail;
  if (!param.empty()) j["param"] = param;
  return json_response(status, j.dump(2), "application/problem+json");
}

http::Response relic_unhandled() {
  return text_response(
      500, "An unhandled exception occurred while processing your request. Please contact your administrator.\n", true);
}

http::Response relic_quota_exceeded(const Error& e) {
  http::Response r = relic_problem(429, std::string(kRelicBase) + "quota-exceeded", e.message, "Quota exceeded");
  r.set("Retry-After", std::to_string(e.retry_after));
  return r;
}

http::Response relay_problem(const Error& e) {
  http::Response r = json_response(e.http_status, relay::encode_problem(e), "application/problem+json");
  if (e.retry_after > 0) r.set("Retry-After", std::to_string(e.retry_after));
  return r;
}

void Router::decorate(http::Response& r) const {
  // Relic advertises the encodings it decodes on every response (§2, §6); we decode both.
  r.set("Accept-Encoding", kAcceptEncoding);
}

namespace {

// ------------------------------------------------------------------------------------------------
// Relic API

std::optional<http::Response> relic_auth(const RequestContext& ctx) {
  if (!ctx.identity.has_certificate)
    return relic_problem(401, std::string(kRelicBase) + "certificate-required",
                         "A client certificate must be provided to use this service");
  if (!ctx.identity.client) {
    spdlog::info("unrecognized client certificate fingerprint={} subject={} ip={}", ctx.identity.fingerprint,
                 ctx.identity.subject, ctx.peer_ip);
    return relic_problem(401, std::string(kRelicBase) + "certificate-not-recognized",
                         "The provided client certificate was not recognized or does not grant access to any resources");
  }
  return std::nullopt;
}

http::Response relic_forbidden() { return relic_problem(403, std::string(kRelicBase) + "forbidden"); }

http::Response health(Service& svc) {
  const auto& s = svc.config.server;
  int64_t age = steady_ms() - svc.health.last_check_ms.load();
  bool ok = !s.disabled && svc.health.last_check_ms.load() != 0 &&
            age < 3LL * s.tokencheckinterval * 1000 && svc.health.counter.load() > 0;
  if (ok) return text_response(200, "OK\r\n");
  return text_response(503, "health check failed\n", true);
}

http::Response directory(Service& svc, const RequestContext& ctx) {
  std::vector<std::string> hosts = svc.config.server.siblings;
  static thread_local std::mt19937 rng{std::random_device{}()};
  std::shuffle(hosts.begin(), hosts.end(), rng);
  const std::string* accept = ctx.req.header("Accept");
  if (accept && accept->find("json") != std::string::npos) {
    nlohmann::ordered_json j;
    j["hosts"] = hosts;  // [] when empty, never null
    j["auth"] = nlohmann::json::array({{{"type", "https://relic.sas.com/auth/certificate"}}});
    return json_response(200, j.dump());
  }
  std::string body;
  if (hosts.empty()) {
    const std::string* host = ctx.req.header("Host");
    body = std::string(ctx.tls ? "https" : "http") + "://" + (host ? *host : "localhost") + "\r\n";
  } else {
    for (const auto& h : hosts) body += h + "\r\n";
  }
  return text_response(200, body);
}

http::Response list_keys(const RequestContext& ctx) {
  std::vector<std::string> names;
  const Config& config = ctx.identity.snapshot->config;  // set for every recognised client
  for (const auto& [name, k] : config.keys) {
    const KeyConfig* target = config.resolve_key(name);
    if (!target || target->hide || k.hide) continue;
    if (allowed(ctx.identity, *target)) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return json_response(200, nlohmann::json(names).dump());
}

http::Response get_key(Service& svc, const RequestContext& ctx, const std::string& name) {
  auto ref = svc.lookup_key(name, ctx.identity);
  if (!ref) return relic_forbidden();
  std::string pem;
  if (ref->served) {
    for (const auto& c : ref->served->chain) pem += x509_pem(c.get());
  } else if (!ref->config->x509certificate.empty()) {
    auto certs = load_certificates(ref->config->x509certificate);
    if (!certs.ok()) return relic_unhandled();
    for (const auto& c : *certs) pem += x509_pem(c.get());
  } else {
    // The certificate lives on a token that is not open right now: a temporary failure.
    return text_response(503, "token not available\n", true);
  }
  nlohmann::ordered_json j;
  j["X509Certificate"] = pem;
  j["PGPCertificate"] = "";
  return json_response(200, j.dump());
}

// A relic /sign request's parameters as checked.
struct RelicSign {
  std::vector<std::pair<std::string, std::string>> query;
  std::string key, sigtype;
  HashAlg alg = HashAlg::sha256;
  std::optional<Service::KeyRef> ref;
  const SignerFactory* signer = nullptr;
};

std::string query_param(const std::vector<std::pair<std::string, std::string>>& query, const char* name) {
  for (const auto& [k, v] : query)
    if (k == name) return v;
  return {};
}

// The parameters in relic's order (docs/relic-protocol.md §2.6): key, filename, the key's existence and
// the caller's role, sigtype, digest. A refusal is the answer.
std::optional<http::Response> relic_sign_params(Service& svc, RequestContext& ctx, RelicSign& r) {
  auto query = http::parse_query(ctx.req.query);
  if (!query) return relic_problem(400, std::string(kRelicBase) + "bad-parameter", "Malformed query string");
  r.query = std::move(*query);
  r.key = query_param(r.query, "key");
  r.sigtype = query_param(r.query, "sigtype");
  const std::string filename = query_param(r.query, "filename"), digest = query_param(r.query, "digest");
  if (r.key.empty())
    return relic_problem(400, std::string(kRelicBase) + "missing-parameter", "Parameter key is required", "", "key");
  if (filename.empty())
    return relic_problem(400, std::string(kRelicBase) + "missing-parameter", "Parameter filename is required", "",
                         "filename");
  r.ref = svc.lookup_key(r.key, ctx.identity);
  if (!r.ref) {
    spdlog::info("sign refused: key={} client={} (unknown key or no role)", log_escape(r.key), ctx.identity.name());
    return relic_forbidden();
  }
  if (auto a = svc.signer_aliases.find(r.sigtype); a != svc.signer_aliases.end()) r.sigtype = a->second;
  auto signer = svc.signers.find(r.sigtype);
  if (r.sigtype.empty() || signer == svc.signers.end())
    return relic_problem(400, std::string(kRelicBase) + "unknown-signature-type", "Unknown signature type specified");
  r.signer = &signer->second;
  if (digest.empty()) return std::nullopt;
  auto h = hash_by_name(digest);
  if (!h)
    return relic_problem(400, std::string(kRelicBase) + "unknown-digest-algorithm", "Unknown digest algorithm specified");
  r.alg = *h;
  return std::nullopt;
}

// What is checked before the upload is read: the key's policy rules and quota (approval and quota
// counting come at the end, docs/policy.md), an open token, a certificate. A refusal is the answer.
std::optional<http::Response> relic_sign_allowed(Service& svc, RequestContext& ctx, const RelicSign& r) {
  const KeyConfig& kc = *r.ref->config;
  auto allowed_now = check_policy(kc.policy, PolicyQuery{digest_bit(r.alg), 0, r.sigtype, std::time(nullptr)});
  if (!allowed_now.ok()) {
    spdlog::info("sign refused by policy: key={} client={} sigtype={}: {}", kc.name, ctx.identity.name(),
                 log_escape(r.sigtype), allowed_now.error().message);
    return relic_problem(403, std::string(kRelicBase) + "policy-denied", allowed_now.error().message,
                         "Signing refused by policy");
  }
  if (kc.has_policy && kc.policy.has_quota() && !needs_approval(kc.policy, ctx.identity.client->roles)) {
    auto st = svc.quotas->check(ctx.identity.fingerprint, kc.name, kc.policy, std::time(nullptr));
    if (!st.ok()) return relic_quota_exceeded(st.error());
  }
  if (!r.ref->served) {
    // The token is being re-opened: temporary (relic clients retry 503s, possibly on a sibling).
    http::Response busy = text_response(503, "token not available\n", true);
    busy.set("Retry-After", "1");
    return busy;
  }
  // Every signer served here is an X.509 signer (§2.6 step 9).
  if (r.ref->served->chain.empty())
    return relic_problem(400, std::string(kRelicBase) + "certificate-not-defined",
                         "No certificate of type \"x509\" is defined for this key");
  return std::nullopt;
}

RouteDecision relic_sign(Service& svc, RequestContext& ctx) {
  RouteDecision d;
  RelicSign r;
  d.response = relic_auth(ctx);
  if (!d.response) d.response = relic_sign_params(svc, ctx, r);
  if (!d.response) d.response = relic_sign_allowed(svc, ctx, r);
  if (d.response) return d;
  SignerContext sctx{svc, ctx, *r.ref, r.key, r.alg, std::move(r.query)};
  auto consumer = (*r.signer)(sctx);
  if (!consumer.ok()) {
    const Error& e = consumer.error();
    if (e.http_status >= 500) d.response = e.http_status == 503 ? relay_problem(e) : relic_unhandled();
    else d.response = relic_problem(e.http_status, std::string(kRelicBase) + error_code_name(e.code), e.message);
    return d;
  }
  d.streaming = std::move(consumer).value();
  d.max_body = svc.config.server.maxbodybytes;
  return d;
}

// ------------------------------------------------------------------------------------------------
// Relay API (docs/relay-api.md)

std::optional<http::Response> relay_auth(const RequestContext& ctx) {
  if (!ctx.identity.has_certificate)
    return relay_problem(Error(ErrorCode::unauthenticated, "a client certificate is required"));
  if (!ctx.identity.client) {
    spdlog::info("unrecognized client certificate fingerprint={} subject={} ip={}", ctx.identity.fingerprint,
                 ctx.identity.subject, ctx.peer_ip);
    return relay_problem(Error(ErrorCode::unauthenticated, "client certificate not recognized (fingerprint " +
                                                               ctx.identity.fingerprint + ")"));
  }
  return std::nullopt;
}

// A token out of service (its login was refused; never retried) is named in "unavailable", once, so a
// client can say why its keys are missing (docs/relay-api.md).
void note_unavailable(std::vector<relay::TokenProblem>& out, const TokenConfig& tc, const SigningToken& t) {
  for (const auto& p : out)
    if (p.token.label == tc.label && p.token.serial == tc.serial) return;
  out.push_back({relay::TokenDescription{tc.label, tc.serial, {}, {}}, "token-login-failed", t.state_reason()});
}

http::Response relay_keys(Service& svc, const RequestContext& ctx) {
  std::vector<relay::KeyDescription> out;
  std::vector<relay::TokenProblem> unavailable;
  for (const auto& [name, k] : ctx.identity.snapshot->config.keys) {
    if (!k.alias.empty()) continue;  // aliases are a relic naming convenience; the shim sees real keys
    if (!allowed(ctx.identity, k)) continue;
    auto t = svc.tokens.find(k.token);
    if (t == svc.tokens.end()) continue;
    auto served = t->second->key(name);
    if (!served) {
      TokenState st = t->second->state();
      if (st == TokenState::starting || st == TokenState::recovering) {
        // Do not hand out a shrunken key list while a token is being re-opened.
        return relay_problem(Error(ErrorCode::token_not_present,
                                   "token '" + k.token + "' is being re-opened: " + t->second->state_reason())
                                 .with_retry_after(1));
      }
      if (st == TokenState::failed)
        note_unavailable(unavailable, ctx.identity.snapshot->config.tokens.at(k.token), *t->second);
      continue;
    }
    out.push_back(served->description);
    // Per requesting client: an autoapprove role signs at once (docs/policy.md).
    if (k.has_policy && needs_approval(k.policy, ctx.identity.client->roles)) out.back().approval = "required";
  }
  return json_response(200, relay::encode_key_list(out, unavailable));
}

// A relay sign request as checked: the token job, and the digest being signed, named once per request
// for the policy's digest class (docs/policy.md "How the daemon tells the digest") and the audit record.
struct ValidSign {
  SignJob job;
  uint32_t digest = 0;      // digest class bit (policy.h)
  std::string digest_name{};  // relic's name, for the audit record; empty when not known
};

Result<ValidSign> validate_sign(const ServedKey& key, const relay::SignRequest& req, Clock::time_point deadline) {
  if (!req.key_version.empty() && req.key_version != key.version)
    return Error(ErrorCode::key_changed, "key '" + key.name + "' has another public key or certificate chain than "
                                         "the client's key list (renewed or replaced here since it was listed): "
                                         "list the keys again (GET /v1/keys) and sign with the key as it is now");
  auto mech = mechanism_by_name(req.mechanism);
  if (!mech || std::find(key.mechanisms.begin(), key.mechanisms.end(), *mech) == key.mechanisms.end())
    return Error(ErrorCode::mechanism_invalid, "mechanism '" + req.mechanism + "' is not available for key '" +
                                                   key.name + "' (relay mechanisms are the raw ones: hash locally)");
  SignJob job;
  job.key = key.name;
  job.mechanism = *mech;
  job.input = req.input;
  job.deadline = deadline;
  size_t modulus = static_cast<size_t>((key.description.key.bits + 7) / 8);
  switch (*mech) {
    case CKM_RSA_PKCS: {
      if (req.input.empty() || req.input.size() + 11 > modulus)
        return Error(ErrorCode::data_len_range, "input must be 1.." + std::to_string(modulus - 11) + " bytes");
      break;
    }
    case CKM_RSA_PKCS_PSS: {
      if (!req.pss) return Error(ErrorCode::mechanism_param, "CKM_RSA_PKCS_PSS needs params {hash, mgf, salt_length}");
      if (req.input.size() != hash_info(req.pss->hash).size)
        return Error(ErrorCode::data_len_range, "input must be the " + std::string(hash_info(req.pss->hash).name) +
                                                    " digest (" + std::to_string(hash_info(req.pss->hash).size) +
                                                    " bytes)");
      if (req.pss->hash == HashAlg::md5) return Error(ErrorCode::mechanism_param, "MD5 is not allowed with PSS");
      // Compared without a sum that could wrap (a salt_length near 2^64 must not pass).
      if (modulus < hash_info(req.pss->hash).size + 2 || req.pss->salt_length > modulus - hash_info(req.pss->hash).size - 2)
        return Error(ErrorCode::mechanism_param, "salt_length too large for the key");
      job.pss = req.pss;
      break;
    }
    case CKM_ECDSA: {
      if (req.input.size() < 16 || req.input.size() > 64)
        return Error(ErrorCode::data_len_range, "CKM_ECDSA input must be a digest (16..64 bytes)");
      break;
    }
    default:
      return Error(ErrorCode::mechanism_invalid, "mechanism '" + req.mechanism + "' is not supported");
  }
  ValidSign v{std::move(job), detect_digest(*mech, req)};  // the one parse of an RSA DigestInfo
  if (auto alg = digest_alg(v.digest)) v.digest_name = hash_info(*alg).relic_name;
  if (req.digest_alg) v.digest_name = hash_info(*req.digest_alg).relic_name;
  return v;
}

asio::awaitable<http::Response> relay_sign(Service& svc, RequestContext& ctx, std::string name) {
  auto ref = svc.lookup_key(name, ctx.identity);
  if (!ref) co_return relay_problem(Error(ErrorCode::forbidden, "key '" + name + "' does not exist or is not yours"));
  if (!ref->served) {
    bool failed = ref->token->state() == TokenState::failed;  // login refused: not retried by the daemon
    co_return relay_problem(Error(failed ? ErrorCode::token_login_failed : ErrorCode::token_not_present,
                                  "token of key '" + name + "' is not available: " + ref->token->state_reason())
                                .with_retry_after(1));
  }
  auto req = relay::decode_sign_request(ctx.req.body);
  if (!req.ok()) co_return relay_problem(req.error());
  auto valid = validate_sign(*ref->served, *req, token_deadline(svc, ctx, *ref->config));
  if (!valid.ok()) co_return relay_problem(valid.error());
  // Policy (docs/policy.md). A key without a policy: section pays for one bit test (the default
  // digest rule) and a time() call, no allocation, no lock.
  const KeyConfig& kc = *ref->config;
  auto allowed_now = check_policy(kc.policy, PolicyQuery{valid->digest, valid->job.mechanism, {}, std::time(nullptr)});
  if (!allowed_now.ok()) {
    spdlog::info("sign refused by policy: key={} client={} mech={}: {}", kc.name, ctx.identity.name(), log_escape(req->mechanism),
                 allowed_now.error().message);
    co_return relay_problem(allowed_now.error());
  }
  if (kc.has_policy && needs_approval(kc.policy, ctx.identity.client->roles))
    co_return hold_sign(svc, ctx, *ref, *req, valid->job, valid->digest, valid->digest_name);
  SignOrder order{ctx, *ref, name, req->mechanism, valid->digest_name, req->filename,
                  kc.policy.has_quota() ? QuotaUse::take : QuotaUse::none};
  SignJob sign_job = std::move(valid->job);
  IoStandby* here = ctx.solo ? svc.standby.get() : nullptr;
  auto sig = co_await sign_digest(svc, order, sign_job, here);
  if (!sig.ok()) co_return relay_problem(sig.error());
  co_return json_response(200, relay::encode_sign_response(*sig));
}

// The relay API: /v1/… (docs/relay-api.md).
RouteDecision route_relay(Service& svc, RequestContext& ctx) {
  RouteDecision d;
  const std::string& p = ctx.req.path;
  if (auto a = relay_auth(ctx)) {
    d.response = std::move(*a);
    return d;
  }
  if (route_requests(svc, ctx, d)) return d;
  if (p == "/v1/keys") {
    if (method_is(ctx, "GET", d)) d.response = relay_keys(svc, ctx);
    return d;
  }
  static const std::string prefix = "/v1/keys/", suffix = "/sign";
  if (starts_with(p, prefix) && p.size() > prefix.size() + suffix.size() &&
      p.compare(p.size() - suffix.size(), suffix.size(), suffix) == 0) {
    std::string name = p.substr(prefix.size(), p.size() - prefix.size() - suffix.size());
    if (!method_is(ctx, "POST", d)) return d;
    d.max_body = svc.config.server.maxjsonbytes;
    d.buffered = [&svc, name](RequestContext& c) { return relay_sign(svc, c, name); };
    return d;
  }
  d.response = relay_problem(Error(ErrorCode::not_found, "no such endpoint: " + p));
  return d;
}

// The relic API (docs/relic-protocol.md §2).
RouteDecision route_relic(Service& svc, RequestContext& ctx) {
  RouteDecision d;
  const std::string& p = ctx.req.path;
  if (p == "/health" || p == "/directory") {
    if (method_is(ctx, "GET", d)) d.response = p == "/health" ? health(svc) : directory(svc, ctx);
    return d;
  }
  if (p == "/sign") {
    if (!method_is(ctx, "POST", d)) return d;
    return relic_sign(svc, ctx);
  }
  const bool key_page = starts_with(p, "/keys/") && p.size() > 6;
  if (p != "/" && p != "/list_keys" && !key_page) {
    d.response = text_response(404, "404 page not found\n", true);
    return d;
  }
  if (!method_is(ctx, "GET", d)) return d;
  d.response = relic_auth(ctx);
  if (d.response) return d;
  if (p == "/") d.response = text_response(200, "Welcome to relic!\n");
  else if (p == "/list_keys") d.response = list_keys(ctx);
  else d.response = get_key(svc, ctx, p.substr(6));
  return d;
}

}  // namespace

bool method_is(const RequestContext& ctx, const char* method, RouteDecision& d) {
  if (ctx.req.method == method) return true;
  http::Response r;
  r.status = 405;
  d.response = std::move(r);
  return false;
}


RouteDecision Router::route(RequestContext& ctx) {
  RouteDecision d;
  if (ui::route_ui(svc_, ctx, d)) return d;  // the web UI (docs/operator-guide.md "Web UI")
  if (starts_with(ctx.req.path, "/v1/")) return route_relay(svc_, ctx);
  return route_relic(svc_, ctx);
}

}  // namespace p11relay::daemon
