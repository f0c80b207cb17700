#include "daemon/policy/requests_api.h"

#include "common/mechanism.h"
#include "daemon/transport/router.h"
#include "daemon/policy/statefile.h"
#include "daemon/signing/signing_service.h"

#include <asio/experimental/as_tuple.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <ctime>

namespace p11relay::daemon {

int64_t epoch_now() { return static_cast<int64_t>(std::time(nullptr)); }

namespace {

constexpr int kMaxWait = 30;  // seconds a GET /v1/requests/{id}?wait=N holds the connection at most

http::Response forbidden() { return relay_problem(Error(ErrorCode::forbidden, "no such request, or not yours")); }

http::Response request_response(int status, const HeldRequest& r, bool for_submitter) {
  return json_response(status, relay::encode_approval_request(wire_view(r, for_submitter)));
}

bool is_submitter(const RequestContext& ctx, const HeldRequest& r) {
  return ctx.identity.fingerprint == r.info.client_fingerprint;
}

bool is_approver(const RequestContext& ctx, const HeldRequest& r) { return is_approver(ctx.identity, r.info.key); }

// Arms the long-poll's wake-up outside the coroutine (GCC 12: no capturing closures in coroutine frames).
bool arm_wakeup(Approvals& approvals, const std::string& id, const std::string& state,
                const std::shared_ptr<asio::steady_timer>& timer) {
  asio::any_io_executor ex = timer->get_executor();
  return approvals.watch(id, state, [timer, ex] { asio::post(ex, [timer] { timer->cancel(); }); });
}

asio::awaitable<http::Response> get_request(Service& svc, RequestContext& ctx, const std::string& id) {
  Approvals& a = *svc.approvals;
  auto r = a.get(id, epoch_now());
  if (!r || (!is_submitter(ctx, *r) && !is_approver(ctx, *r))) co_return forbidden();
  int wait = 0;
  std::string w = query_param(ctx, "wait");
  if (!w.empty()) {
    char* end = nullptr;
    long v = std::strtol(w.c_str(), &end, 10);
    if (*end != '\0' || v < 0) co_return relay_problem(bad_request("wait must be a number of seconds"));
    wait = static_cast<int>(std::min<long>(v, kMaxWait));
  }
  auto until = std::min(Clock::now() + std::chrono::seconds(wait), ctx.deadline - std::chrono::seconds(1));
  while (r && r->live() && Clock::now() < until) {
    // Wake at the expiry too, so a poller sees "expired" as soon as it happens.
    auto expiry = Clock::now() + std::chrono::seconds(std::max<int64_t>(0, r->expires - epoch_now()) + 1);
    auto stop = r->state() == "signing" ? until : std::min(until, expiry);
    std::string state = r->state();
    co_await wait_for_change(a, id, state, stop);
    r = a.get(id, epoch_now());
  }
  if (!r) co_return forbidden();
  co_return request_response(200, *r, is_submitter(ctx, *r));
}

http::Response list_requests(Service& svc, const RequestContext& ctx) {
  std::string state = query_param(ctx, "state");
  if (!state.empty() && state != "pending" && state != "all")
    return relay_problem(bad_request("state must be 'pending' or 'all'"));
  std::vector<relay::ApprovalRequest> out;
  for (const auto& r : svc.approvals->list(state == "all", epoch_now()))
    if (is_approver(ctx, r)) out.push_back(wire_view(r, false));
  return json_response(200, relay::encode_approval_list(out));
}

// Signs an approved relay request on the submitter's behalf, audits it, and stores the signature.
asio::awaitable<Status> sign_approved(Service& svc, const HeldRequest& r) {
  ClientIdentity submitter = submitter_identity(svc, r);
  auto ref = svc.lookup_key(r.info.key, submitter);
  Result<Bytes> sig = Error(ErrorCode::forbidden, "the submitter may no longer use key '" + r.info.key + "'");
  if (ref && !ref->served)
    sig = Error(ErrorCode::token_not_present, "the token of key '" + r.info.key + "' is not available")
              .with_retry_after(1);
  if (ref && ref->served) {
    http::Request none;
    RequestContext sctx{none, submitter, "", true, Clock::time_point::max()};
    sctx.deadline = token_deadline(svc, sctx, *ref->config);  // no client waits: the token's timeout
    SignOrder order{sctx, *ref, r.info.key, r.info.mechanism, r.digest_name, r.info.filename,
                    ref->config->policy.has_quota() ? QuotaUse::count_after : QuotaUse::none};
    order.extra["request_id"] = r.info.id;
    order.extra["approved_by"] = r.info.decided_by;
    SignJob job;
    job.key = ref->served->name;
    job.mechanism = r.mech;
    job.input = r.input;
    job.pss = r.pss;
    job.deadline = sctx.deadline;
    sig = co_await sign_digest(svc, order, job);
  }
  auto st = svc.approvals->finish(r.info.id, sig, epoch_now());
  if (!sig.ok()) co_return sig.error();
  co_return st;
}

asio::awaitable<http::Response> decide(Service& svc, RequestContext& ctx, const std::string& id, bool approve) {
  auto cur = svc.approvals->get(id, epoch_now());
  if (!cur || !is_approver(ctx, *cur)) co_return forbidden();
  auto text = decode_decision_body(ctx.req.body, approve ? "comment" : "reason", !approve);
  if (!text.ok()) co_return relay_problem(text.error());
  auto r = co_await decide_request(svc, ctx.identity, id, approve, *text);
  if (!r.ok()) co_return relay_problem(r.error());
  co_return request_response(200, *r, false);
}

}  // namespace

Status open_policy_state(Service& svc) {
  const std::string& dir = svc.config.server.statedir;
  if (dir.empty()) return {};
  RETURN_IF_ERROR(ensure_state_dir(dir));
  RETURN_IF_ERROR(ensure_state_dir(dir + "/requests"));
  svc.quotas = std::make_unique<Quotas>(dir + "/quota.json");
  if (auto st = svc.quotas->load(std::time(nullptr)); !st.ok()) spdlog::error("{}", st.error().message);
  svc.approvals = std::make_unique<Approvals>(dir + "/requests", svc.audit.get(), svc.hostname);
  for (const auto& problem : svc.approvals->load(epoch_now())) spdlog::error("held requests: {}", problem);
  spdlog::info("state directory {}: {} held request(s)", dir, svc.approvals->size());
  return {};
}

ClientIdentity submitter_identity(const Service& svc, const HeldRequest& r) {
  ClientIdentity id;
  id.has_certificate = true;
  id.fingerprint = r.info.client_fingerprint;
  id.snapshot = svc.current.load();  // the clients and roles as configured now (SIGHUP reloads them)
  if (!id.snapshot) return id;
  auto it = id.snapshot->config.clients.find(r.client_entry);
  if (it != id.snapshot->config.clients.end()) id.client = &it->second;
  return id;
}

std::string query_param(const RequestContext& ctx, const char* name) {
  auto q = http::parse_query(ctx.req.query);
  if (!q) return {};
  for (const auto& [k, v] : *q)
    if (k == name) return v;
  return {};
}

// Approvers of the key as configured now (a reload that changes them applies to waiting requests).
bool is_approver(const ClientIdentity& who, const std::string& key) {
  if (!who.snapshot || !who.client) return false;
  const KeyConfig* kc = who.snapshot->config.resolve_key(key);
  if (!kc) return false;
  return shares_role(kc->policy.approvers, who.client->roles);
}

asio::awaitable<Result<HeldRequest>> decide_request(Service& svc, const ClientIdentity& who, std::string id,
                                                    bool approve, std::string text) {
  Approvals& a = *svc.approvals;
  auto cur = a.get(id, epoch_now());
  if (!cur || !is_approver(who, cur->info.key)) co_return Error(ErrorCode::forbidden, "no such request, or not yours");
  std::string name = who.name();
  auto r = approve ? a.approve(id, name, who.fingerprint, text, epoch_now())
                   : a.deny(id, name, who.fingerprint, text, epoch_now());
  if (!r.ok() || !approve || r->state() != "signing") co_return r;
  HeldRequest approved = std::move(r).value();
  auto st = co_await sign_approved(svc, approved);
  if (!st.ok()) {
    spdlog::warn("approved request {} not signed: {}", id, st.error().message);
    co_return st.error();
  }
  auto now = a.get(id, epoch_now());
  if (!now) co_return Error(ErrorCode::forbidden, "no such request, or not yours");
  co_return std::move(*now);
}

asio::awaitable<void> wait_for_change(Approvals& approvals, const std::string& id, const std::string& state,
                                      Clock::time_point until) {
  auto ex = co_await asio::this_coro::executor;
  auto timer = std::make_shared<asio::steady_timer>(ex, until);
  if (!arm_wakeup(approvals, id, state, timer)) co_return;
  auto [ec] = co_await timer->async_wait(asio::experimental::as_tuple(asio::use_awaitable));
  (void)ec;
}

bool route_requests(Service& svc, const RequestContext& ctx, RouteDecision& d) {
  const std::string& p = ctx.req.path;
  static const std::string prefix = "/v1/requests";
  if (p.rfind(prefix, 0) != 0 || (p.size() > prefix.size() && p[prefix.size()] != '/')) return false;
  if (!svc.approvals) {
    d.response = relay_problem(Error(ErrorCode::not_found, "no held requests here (server.statedir is not set)"));
    return true;
  }
  if (p == prefix || p == prefix + "/") {
    if (method_is(ctx, "GET", d)) d.response = list_requests(svc, ctx);
    return true;
  }
  std::string rest = p.substr(prefix.size() + 1);
  size_t slash = rest.find('/');
  std::string id = rest.substr(0, slash);
  std::string action = slash == std::string::npos ? "" : rest.substr(slash + 1);
  if (action.empty()) {
    if (method_is(ctx, "GET", d)) d.buffered = [&svc, id](RequestContext& c) { return get_request(svc, c, id); };
    return true;
  }
  if (action != "approve" && action != "deny") {
    d.response = relay_problem(Error(ErrorCode::not_found, "no such endpoint: " + p));
    return true;
  }
  if (!method_is(ctx, "POST", d)) return true;
  bool approve = action == "approve";
  d.max_body = svc.config.server.maxjsonbytes;
  d.buffered = [&svc, id, approve](RequestContext& c) { return decide(svc, c, id, approve); };
  return true;
}

http::Response hold_sign(Service& svc, const RequestContext& ctx, const Service::KeyRef& key,
                         const relay::SignRequest& req, const SignJob& job, uint32_t digest,
                         const std::string& digest_name) {
  if (!svc.approvals) return relay_problem(internal_error("approval needs server.statedir"));
  const KeyPolicy& policy = key.config->policy;
  HeldRequest h;
  h.info.key = key.config->name;
  h.info.client = ctx.identity.name();
  h.info.client_fingerprint = ctx.identity.fingerprint;
  h.info.mechanism = mechanism_name(job.mechanism);
  h.info.digest = digest_class_name(digest);
  h.info.input_sha256 = to_hex(hash(HashAlg::sha256, job.input));
  h.info.filename = req.filename;
  h.info.filesize = req.filesize;
  h.kind = "relay";
  h.mech = job.mechanism;
  h.input = job.input;
  h.pss = job.pss;
  h.digest_name = digest_name;
  h.client_entry = ctx.identity.client ? ctx.identity.client->name : "";
  h.idem = request_identity(ctx.identity.fingerprint, h);
  int64_t now = epoch_now();
  h.expires = now + policy.approvaltimeout;
  if (policy.has_quota()) {
    // A retry of a request already held or signed is answered below whatever the quota says.
    if (!svc.approvals->find_identity(h.idem, now)) {
      auto st = svc.quotas->check(ctx.identity.fingerprint, key.config->name, policy, now);
      if (!st.ok()) return relay_problem(st.error());
    }
  }
  bool created = false;
  auto r = svc.approvals->submit(std::move(h), now, created);
  if (!r.ok()) return relay_problem(r.error());
  if (r->state() == "signed") return json_response(200, relay::encode_sign_response(r->info.signature));
  nlohmann::json body;
  body["request"] = nlohmann::json::parse(relay::encode_approval_request(wire_view(*r, true)));
  http::Response resp = json_response(202, body.dump());
  resp.set("Location", "/v1/requests/" + r->info.id);
  return resp;
}

asio::awaitable<HoldOutcome> hold_upload(Service& svc, RequestContext& ctx, const HeldRequest& proto) {
  static const std::string relic = "https://relic.sas.com/";
  HoldOutcome out;
  if (!svc.approvals) {
    out.response = relic_unhandled();
    co_return out;
  }
  Approvals& a = *svc.approvals;
  int64_t now = epoch_now();
  bool created = false;
  auto r = a.submit(proto, now, created);
  if (!r.ok()) {
    out.response = relic_unhandled();
    co_return out;
  }
  std::string id = r->info.id;
  auto until = ctx.deadline - std::chrono::seconds(2);
  std::optional<HeldRequest> cur = std::move(r).value();
  while (cur && (cur->state() == "pending" || cur->state() == "signing") && Clock::now() < until) {
    auto expiry = Clock::now() + std::chrono::seconds(std::max<int64_t>(0, cur->expires - epoch_now()) + 1);
    auto stop = cur->state() == "signing" ? until : std::min(until, expiry);
    std::string state = cur->state();
    co_await wait_for_change(a, id, state, stop);
    cur = a.get(id, epoch_now());
  }
  if (cur && cur->state() == "approved") {
    auto claimed = a.claim(id, epoch_now());
    if (claimed.ok()) {
      out.request = std::move(claimed).value();
      co_return out;
    }
    cur = a.get(id, epoch_now());  // another upload of the same file claimed it first
  }
  if (cur && cur->state() == "signed") {
    out.request = *cur;
    co_return out;
  }
  if (!cur || cur->state() == "denied") {
    std::string detail = cur ? "request " + id + " denied by " + cur->info.decided_by + ": " + cur->info.reason
                             : "request " + id + " is gone";
    out.response = relic_problem(403, relic + "request-denied", detail, "Signing request denied");
  } else if (cur->state() == "expired") {
    out.response = relic_problem(408, relic + "request-expired",
                                 "request " + id + " expired before an approver decided", "Signing request expired");
  } else {
    out.response = relic_problem(408, relic + "request-pending",
                                 "request " + id + " is still waiting for an approver; send the same file again to "
                                 "keep waiting",
                                 "Signing request pending");
  }
  co_return out;
}

}  // namespace p11relay::daemon
