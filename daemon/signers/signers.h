// Relic signer modules served by p11relayd (docs/relic-protocol.md §8). Each registers a factory for its
// sigtype in Service::signers; an unregistered sigtype answers relic's unknown-signature-type.
#pragma once

#include "daemon/service.h"

namespace p11relay::daemon {

void register_signers(Service& svc);

// A signer flag from the query, parsed like Go's strconv.ParseBool as relic does
// (docs/relic-protocol.md §2.6): 1, t, T, TRUE, true, True are true; absent or unparsable is false.
bool relic_flag(const SignerContext& c, const std::string& name);

}  // namespace p11relay::daemon
