#include "daemon/config/reload.h"

namespace p11relay::daemon {

namespace {

// The fields a Token read when it opened (token.cpp): changing them needs a re-open.
bool same_token_key(const KeyConfig& a, const KeyConfig& b) {
  return a.token == b.token && a.label == b.label && a.has_id == b.has_id && a.id == b.id &&
         a.x509certificate == b.x509certificate;
}

}  // namespace

std::vector<std::string> needs_restart(const Config& running, Config& fresh) {
  std::vector<std::string> out;
  if (!(fresh.server == running.server)) out.push_back("server");
  for (const auto& [name, t] : fresh.tokens) {
    auto it = running.tokens.find(name);
    if (it == running.tokens.end() || !(it->second == t)) out.push_back("tokens." + name);
  }
  for (const auto& [name, t] : running.tokens)
    if (!fresh.tokens.count(name)) out.push_back("tokens." + name + " (removed)");
  if (fresh.auditfile != running.auditfile) out.push_back("auditfile");
  if (fresh.pinfile != running.pinfile) out.push_back("pinfile");
  for (auto it = fresh.keys.begin(); it != fresh.keys.end();) {
    KeyConfig& k = it->second;
    auto old = running.keys.find(it->first);
    bool served_before = old != running.keys.end() && old->second.alias.empty();
    if (!k.alias.empty()) {
      ++it;
      continue;
    }
    if (!served_before) {
      out.push_back("keys." + it->first + " (new key)");
      it = fresh.keys.erase(it);
      continue;
    }
    if (!same_token_key(k, old->second)) {
      out.push_back("keys." + it->first + " (token, label, id or certificate)");
      k.token = old->second.token;
      k.label = old->second.label;
      k.id = old->second.id;
      k.has_id = old->second.has_id;
      k.x509certificate = old->second.x509certificate;
    }
    ++it;
  }
  return out;
}

}  // namespace p11relay::daemon
