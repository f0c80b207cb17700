#include "daemon/signers/signers.h"

namespace p11relay::daemon {

void register_pecoff(Service& svc);

void register_signers(Service& svc) { register_pecoff(svc); }

}  // namespace p11relay::daemon
