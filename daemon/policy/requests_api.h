// The approval workflow on the relay API (docs/policy.md): held sign requests (202), the
// /v1/requests endpoints for submitters and approvers, and the long-poll.
#pragma once

#include "daemon/service.h"

namespace p11relay::daemon {

int64_t epoch_now();

// Opens server.statedir (if set): quota counters from STATEDIR/quota.json, held requests from
// STATEDIR/requests/. Problems with single files are logged, not fatal; an unusable directory is.
Status open_policy_state(Service& svc);

// Routes GET /v1/requests, GET /v1/requests/{id}, POST /v1/requests/{id}/approve|deny into d.
// False if the path is not one of them.
bool route_requests(Service& svc, const RequestContext& ctx, RouteDecision& d);

// A relay sign request to a key that needs approval: the earlier identical request (202 while it waits,
// 200 with the signature once signed) or a new held request (202; 429 when the quota is used up).
http::Response hold_sign(Service& svc, const RequestContext& ctx, const Service::KeyRef& key,
                         const relay::SignRequest& req, const SignJob& job, uint32_t digest,
                         const std::string& digest_name);

// A relic upload to a key that needs approval (the relic client waits in its request): submits or
// finds the held request and waits for the decision, at most until its expiry or the request's
// deadline. Either the answer to send (denied 403, expired or still pending 408, error), or the
// request to sign — claimed ("signing") — or already signed (info.signature holds what was stored).
struct HoldOutcome {
  std::optional<http::Response> response;
  HeldRequest request;
};
asio::awaitable<HoldOutcome> hold_upload(Service& svc, RequestContext& ctx, const HeldRequest& proto);

// A query parameter's value (empty when absent or the query is malformed).
std::string query_param(const RequestContext& ctx, const char* name);

// Whether `who` may approve or deny requests for `key`: a role in the key's policy approvers, as
// configured now. The UI and the relay API both ask this.
bool is_approver(const ClientIdentity& who, const std::string& key);

// An approver's decision on held request `id` (docs/policy.md "Approval workflow"): refuses a caller who
// is not an approver of its key (forbidden), self-approval and decided or expired requests; an approved
// relay request is signed on the submitter's behalf and audited before this returns. The request as it
// is afterwards. Both the relay API and the web UI decide through it.
asio::awaitable<Result<HeldRequest>> decide_request(Service& svc, const ClientIdentity& who, std::string id,
                                                    bool approve, std::string text);

// Waits until request `id` leaves `state`, or until `until`.
asio::awaitable<void> wait_for_change(Approvals& approvals, const std::string& id, const std::string& state,
                                      Clock::time_point until);

// The submitter's identity rebuilt from a held request (for signing on their behalf after approval).
ClientIdentity submitter_identity(const Service& svc, const HeldRequest& r);

}  // namespace p11relay::daemon
