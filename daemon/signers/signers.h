// Relic signer modules served by p11relayd (docs/relic-protocol.md §8). Each registers a factory for its
// sigtype in Service::signers; an unregistered sigtype answers relic's unknown-signature-type.
#pragma once

#include "daemon/service.h"

namespace p11relay::daemon {

void register_signers(Service& svc);

}  // namespace p11relay::daemon
