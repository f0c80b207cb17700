#include "daemon/signers/signers.h"

namespace p11relay::daemon {

void register_pecoff(Service& svc);
void register_msi(Service& svc);
void register_cab(Service& svc);
void register_ps(Service& svc);
void register_cat(Service& svc);

void register_signers(Service& svc) {
  register_pecoff(svc);
  register_msi(svc);
  register_cab(svc);
  register_ps(svc);
  register_cat(svc);
}

bool relic_flag(const SignerContext& c, const std::string& name) {
  const std::string* v = c.param(name);
  return v && (*v == "1" || *v == "t" || *v == "T" || *v == "TRUE" || *v == "true" || *v == "True");
}

}  // namespace p11relay::daemon
