// The approver's web UI under /ui/ on the mTLS port (docs/operator-guide.md "Web UI"): pending
// requests with approve and deny, the audit history, the appliance's status. Identity is the
// browser's client certificate, matched exactly as for the relay API; decisions go through the same
// function as POST /v1/requests/{id}/approve|deny.
#pragma once

#include "daemon/service.h"

namespace p11relay::daemon::ui {

// Routes /ui and /ui/... into d; false for any other path.
bool route_ui(Service& svc, const RequestContext& ctx, RouteDecision& d);

}  // namespace p11relay::daemon::ui
