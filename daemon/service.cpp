#include "daemon/service.h"


namespace p11relay::daemon {

std::optional<Service::KeyRef> Service::lookup_key(const std::string& name, const ClientIdentity& id) const {
  if (!id.snapshot) return std::nullopt;
  const KeyConfig* kc = id.snapshot->config.resolve_key(name);
  if (!kc || kc->token.empty() || !allowed(id, *kc)) return std::nullopt;
  auto t = tokens.find(kc->token);
  if (t == tokens.end()) return std::nullopt;
  KeyRef ref;
  ref.config = kc;
  ref.token = t->second;
  ref.served = t->second->key(kc->name);
  return ref;
}

const std::string* SignerContext::param(const std::string& name) const {
  for (const auto& [k, v] : query)
    if (k == name) return &v;
  return nullptr;
}

}  // namespace p11relay::daemon
