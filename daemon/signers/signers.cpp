#include "daemon/signers/signers.h"

namespace p11relay::daemon {

void register_signers(Service& svc) {
  // pe-coff (server-side Authenticode) registers here once common/authenticode lands.
  (void)svc;
}

}  // namespace p11relay::daemon
