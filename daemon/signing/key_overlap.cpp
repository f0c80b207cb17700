#include "daemon/signing/key_overlap.h"

#include "daemon/policy/policy.h"  // shares_role

namespace p11relay::daemon {
namespace {

// Clients (names, at most three and "…") that may use both keys.
std::string clients_of_both(const Config& config, const KeyConfig& a, const KeyConfig& b) {
  std::string names;
  int n = 0;
  for (const auto& [fingerprint, client] : config.clients) {
    if (!shares_role(a.roles, client.roles) || !shares_role(b.roles, client.roles)) continue;
    if (++n > 3) return names + ", …";
    names += (names.empty() ? "" : ", ") + (client.nickname.empty() ? fingerprint.substr(0, 16) : client.nickname);
  }
  return names;
}

std::string what_is_shared(const relay::KeyDescription& a, const relay::KeyDescription& b) {
  std::string what;
  if (!a.id.empty() && a.id == b.id) what = "CKA_ID " + to_hex(a.id);
  if (!a.label.empty() && a.label == b.label) what += (what.empty() ? "" : " and ") + ("label '" + a.label + "'");
  return what;
}

}  // namespace

std::vector<std::string> ambiguous_keys(const Config& config,
                                        const std::vector<std::shared_ptr<const ServedKey>>& keys) {
  std::vector<std::string> out;
  for (size_t i = 0; i < keys.size(); ++i) {
    for (size_t j = i + 1; j < keys.size(); ++j) {
      const ServedKey& a = *keys[i];
      const ServedKey& b = *keys[j];
      std::string shared = what_is_shared(a.description, b.description);
      auto ka = config.keys.find(a.name);
      auto kb = config.keys.find(b.name);
      if (shared.empty() || ka == config.keys.end() || kb == config.keys.end()) continue;
      std::string clients = clients_of_both(config, ka->second, kb->second);
      if (clients.empty()) continue;
      out.push_back("keys '" + a.name + "' and '" + b.name + "' on token '" + a.token_name + "' share " + shared +
                    " and client(s) " + clients + " may use both: a PKCS#11 program that picks its key by id or "
                    "label gets either one; give them distinct CKA_IDs and labels on the token, or disjoint roles");
    }
  }
  return out;
}

}  // namespace p11relay::daemon
