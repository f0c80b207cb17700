// `p11relayd --check-config` output: the configuration as loaded, defaults filled in, the PIN and
// other secrets replaced by <redacted>.
#include "daemon/config/config.h"

#include "common/bytes.h"
#include "common/mechanism.h"

#include <yaml-cpp/yaml.h>

namespace p11relay::daemon {

namespace {

void dump_policy(YAML::Emitter& out, const KeyPolicy& p) {
  out << YAML::Key << "policy" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "approval" << YAML::Value << (p.approval ? "required" : "auto");
  if (!p.autoapprove.empty()) out << YAML::Key << "autoapprove" << YAML::Value << YAML::Flow << p.autoapprove;
  out << YAML::Key << "approvers" << YAML::Value << YAML::Flow << p.approvers;
  out << YAML::Key << "approvaltimeout" << YAML::Value << p.approvaltimeout;
  std::vector<std::string> list;
  for (uint32_t bit = 1; bit <= kDigestNone; bit <<= 1)
    if (p.digests & bit) list.push_back(digest_class_name(bit));
  out << YAML::Key << "digests" << YAML::Value << YAML::Flow << list;
  list.clear();
  for (auto m : p.mechanisms) list.push_back(mechanism_name(m));
  if (!list.empty()) out << YAML::Key << "mechanisms" << YAML::Value << YAML::Flow << list;
  if (!p.sigtypes.empty()) out << YAML::Key << "sigtypes" << YAML::Value << YAML::Flow << p.sigtypes;
  list.clear();
  for (const auto& w : p.windows) list.push_back(w.text);
  if (!list.empty()) out << YAML::Key << "windows" << YAML::Value << YAML::Flow << list;
  if (p.has_quota())
    out << YAML::Key << "quota" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "perhour" << YAML::Value
        << p.perhour << YAML::Key << "perday" << YAML::Value << p.perday << YAML::EndMap;
  out << YAML::EndMap;
}

void dump_server(YAML::Emitter& out, const ServerConfig& s) {
  out << YAML::Key << "server" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "listen" << YAML::Value << s.listen;
  if (!s.listenhttp.empty()) out << YAML::Key << "listenhttp" << YAML::Value << s.listenhttp;
  if (!s.listenmetrics.empty()) out << YAML::Key << "listenmetrics" << YAML::Value << s.listenmetrics;
  out << YAML::Key << "certfile" << YAML::Value << s.certfile << YAML::Key << "keyfile" << YAML::Value << s.keyfile;
  out << YAML::Key << "siblings" << YAML::Value << YAML::Flow << s.siblings;
  out << YAML::Key << "disabled" << YAML::Value << s.disabled;
  out << YAML::Key << "tokencheckinterval" << YAML::Value << s.tokencheckinterval;
  out << YAML::Key << "tokencheckfailures" << YAML::Value << s.tokencheckfailures;
  out << YAML::Key << "tokenchecktimeout" << YAML::Value << s.tokenchecktimeout;
  out << YAML::Key << "readheadertimeout" << YAML::Value << s.readheadertimeout;
  out << YAML::Key << "readtimeout" << YAML::Value << s.readtimeout;
  out << YAML::Key << "writetimeout" << YAML::Value << s.writetimeout;
  out << YAML::Key << "idletimeout" << YAML::Value << s.idletimeout;
  out << YAML::Key << "maxconnections" << YAML::Value << s.maxconnections;
  out << YAML::Key << "maxhandshakes" << YAML::Value << s.maxhandshakes;
  out << YAML::Key << "maxhandshakespersource" << YAML::Value << s.maxhandshakespersource;
  out << YAML::Key << "maxbodybytes" << YAML::Value << s.maxbodybytes;
  out << YAML::Key << "maxheaderbytes" << YAML::Value << s.maxheaderbytes;
  out << YAML::Key << "moduledirs" << YAML::Value << YAML::Flow << s.moduledirs;
  if (!s.clientca.empty()) out << YAML::Key << "clientca" << YAML::Value << s.clientca;
  if (!s.statedir.empty()) out << YAML::Key << "statedir" << YAML::Value << s.statedir;
  if (!s.trustedproxies.empty()) out << YAML::Key << "trustedproxies" << YAML::Value << YAML::Flow << s.trustedproxies;
  out << YAML::EndMap;
}

void dump_tokens(YAML::Emitter& out, const Config& c) {
  out << YAML::Key << "tokens" << YAML::Value << YAML::BeginMap;
  for (const auto& [n, t] : c.tokens) {
    out << YAML::Key << n << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "provider" << YAML::Value << t.provider;
    if (!t.label.empty()) out << YAML::Key << "label" << YAML::Value << t.label;
    if (!t.serial.empty()) out << YAML::Key << "serial" << YAML::Value << t.serial;
    if (!t.manufacturer.empty()) out << YAML::Key << "manufacturer" << YAML::Value << t.manufacturer;
    if (!t.model.empty()) out << YAML::Key << "model" << YAML::Value << t.model;
    out << YAML::Key << "pin" << YAML::Value << (t.pin ? "<redacted>" : "<none>");
    out << YAML::Key << "numworkers" << YAML::Value << t.numworkers;
    out << YAML::Key << "queuesize" << YAML::Value << t.queuesize;
    out << YAML::Key << "timeout" << YAML::Value << t.timeout;
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
}

void dump_keys(YAML::Emitter& out, const Config& c) {
  out << YAML::Key << "keys" << YAML::Value << YAML::BeginMap;
  for (const auto& [n, k] : c.keys) {
    out << YAML::Key << n << YAML::Value << YAML::BeginMap;
    if (!k.alias.empty()) {
      out << YAML::Key << "alias" << YAML::Value << k.alias;
    } else {
      out << YAML::Key << "token" << YAML::Value << k.token;
      if (!k.label.empty()) out << YAML::Key << "label" << YAML::Value << k.label;
      if (k.has_id) out << YAML::Key << "id" << YAML::Value << to_hex(k.id);
      if (!k.x509certificate.empty()) out << YAML::Key << "x509certificate" << YAML::Value << k.x509certificate;
      out << YAML::Key << "roles" << YAML::Value << YAML::Flow << k.roles;
      if (k.hide) out << YAML::Key << "hide" << YAML::Value << true;
      if (k.has_policy) dump_policy(out, k.policy);
    }
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
}

void dump_clients(YAML::Emitter& out, const Config& c) {
  out << YAML::Key << "clients" << YAML::Value << YAML::BeginMap;
  for (const auto& [n, cl] : c.clients) {
    out << YAML::Key << n << YAML::Value << YAML::BeginMap;
    if (!cl.nickname.empty()) out << YAML::Key << "nickname" << YAML::Value << cl.nickname;
    out << YAML::Key << "roles" << YAML::Value << YAML::Flow << cl.roles;
    if (!cl.certificate.empty()) out << YAML::Key << "certificate" << YAML::Value << cl.certificate;
    if (cl.proxy) out << YAML::Key << "proxy" << YAML::Value << true;
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
}

}  // namespace

std::string dump_redacted(const Config& c) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  dump_server(out, c.server);
  dump_tokens(out, c);
  dump_keys(out, c);
  dump_clients(out, c);
  if (!c.auditfile.empty()) out << YAML::Key << "auditfile" << YAML::Value << c.auditfile;
  if (!c.pinfile.empty()) out << YAML::Key << "pinfile" << YAML::Value << c.pinfile;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace p11relay::daemon
