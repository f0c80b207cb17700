#include "daemon/config/config.h"
#include "common/mechanism.h"
#include "common/pkcs11_uri.h"
#include "common/suggest.h"
#include "common/yaml_error.h"

#include <yaml-cpp/yaml.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <set>

namespace p11relay::daemon {
namespace fs = std::filesystem;

namespace {

// Carries file/line context into every message.
struct Loader {
  std::string file;

  Error err(const YAML::Node& n, const std::string& what) const { return yaml_error(file, n, what); }

  Status only_keys(const YAML::Node& map, const std::string& where, const std::set<std::string>& allowed) const {
    if (!map.IsMap()) return err(map, where + " must be a mapping");
    for (const auto& kv : map) {
      auto k = kv.first.as<std::string>();
      if (!allowed.count(k)) return err(kv.first, "unknown key '" + k + "' in " + where + did_you_mean(k, allowed));
    }
    return {};
  }

  template <typename T>
  Status get(const YAML::Node& map, const char* key, T& out, const std::string& where) const {
    YAML::Node n = map[key];
    if (!n.IsDefined() || n.IsNull()) return {};
    try {
      out = n.as<T>();
    } catch (const YAML::Exception&) {
      return err(n, std::string("key '") + key + "' in " + where + " has the wrong type");
    }
    return {};
  }

  Status get_list(const YAML::Node& map, const char* key, std::vector<std::string>& out,
                  const std::string& where) const {
    YAML::Node n = map[key];
    if (!n.IsDefined() || n.IsNull()) return {};
    if (n.IsScalar()) {
      out = {n.as<std::string>()};
      return {};
    }
    if (!n.IsSequence()) return err(n, std::string("key '") + key + "' in " + where + " must be a list");
    for (const auto& e : n) {
      if (!e.IsScalar()) return err(e, std::string("key '") + key + "' in " + where + " must be a list of strings");
      out.push_back(e.as<std::string>());
    }
    return {};
  }
};

std::string resolve(const std::string& dir, const std::string& p) {
  if (p.empty() || p[0] == '/') return p;
  return (fs::path(dir) / p).lexically_normal().string();
}

Status require_file(const Loader& l, const YAML::Node& n, const std::string& path, const std::string& what) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return l.err(n, what + " '" + path + "' does not exist or is not a file");
  if (access(path.c_str(), R_OK) != 0) return l.err(n, what + " '" + path + "' is not readable");
  return {};
}

Status load_pinfile(Config& c) {
  struct stat st {};
  if (stat(c.pinfile.c_str(), &st) != 0) return config_error(c.path + ": pinfile '" + c.pinfile + "' does not exist");
  if (st.st_uid != geteuid())
    return config_error("pinfile '" + c.pinfile + "' must be owned by the daemon's user (uid " +
                        std::to_string(geteuid()) + ")");
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
    return config_error("pinfile '" + c.pinfile + "' must not be accessible by group or others: chmod 600 " + c.pinfile);
  YAML::Node pins;
  try {
    pins = YAML::LoadFile(c.pinfile);
  } catch (const YAML::Exception& e) {
    // The message of a parse error may quote the file's content: report only the position.
    return config_error(c.pinfile + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML");
  }
  if (!pins.IsMap()) return config_error(c.pinfile + ": must be a mapping of token name to PIN");
  for (const auto& kv : pins) {
    auto name = kv.first.as<std::string>();
    auto it = c.tokens.find(name);
    if (it == c.tokens.end())
      return config_error(c.pinfile + ":" + std::to_string(kv.first.Mark().line + 1) + ": unknown token '" + name + "'");
    if (!kv.second.IsScalar())
      return config_error(c.pinfile + ":" + std::to_string(kv.first.Mark().line + 1) + ": PIN of token '" + name +
                          "' must be a string");
    it->second.pin = kv.second.as<std::string>();
  }
  return {};
}

// A `uri:` value (RFC 7512), limited to the path attributes in `supported`. PINs in URIs are refused:
// secrets stay in the pinfile, whose owner and mode are checked.
Result<Pkcs11Uri> config_uri(const Loader& l, const YAML::Node& node, const std::string& what,
                             const std::set<std::string>& supported) {
  std::string text;
  RETURN_IF_ERROR(l.get(node, "uri", text, what));
  YAML::Node at = node["uri"];
  auto u = parse_pkcs11_uri(text);
  if (!u.ok()) return l.err(at, what + ".uri: " + u.error().message);
  if (u->query.count("pin-value") || u->query.count("pin-source"))
    return l.err(at, what + ".uri: a PIN cannot be given in the URI (pin-value, pin-source): put it in the pinfile");
  if (!u->query.empty())
    return l.err(at, what + ".uri: query attribute '" + u->query.begin()->first +
                         "' is not supported (the module is tokens.T.provider)");
  std::string list;
  for (const auto& s : supported) list += (list.empty() ? "" : ", ") + s;
  for (const auto& [name, value] : u->path)
    if (!supported.count(name))
      return l.err(at, what + ".uri: attribute '" + name + "' is not supported here (supported: " + list + ")");
  return u;
}

// tokens.T.uri: "pkcs11:token=LABEL;serial=…;manufacturer=…;model=…", instead of label/serial.
Status token_uri(const Loader& l, const YAML::Node& n, const std::string& w, TokenConfig& t) {
  if (!n["uri"].IsDefined()) return {};
  if (!t.label.empty() || !t.serial.empty()) return l.err(n["uri"], w + ": give either uri or label/serial, not both");
  ASSIGN_OR_RETURN(auto u, config_uri(l, n, w, {"token", "serial", "manufacturer", "model"}));
  for (auto [attr, field] : {std::pair{"token", &t.label}, {"serial", &t.serial}, {"manufacturer", &t.manufacturer},
                             {"model", &t.model}})
    if (const std::string* v = u.attr(attr)) *field = *v;
  return {};
}

// Whether a key URI's token attributes could name this token: none contradicts its selection.
bool uri_fits_token(const Pkcs11Uri& u, const TokenConfig& t) {
  for (auto [attr, field] : {std::pair{"token", &t.label}, {"serial", &t.serial}, {"manufacturer", &t.manufacturer},
                             {"model", &t.model}}) {
    const std::string* v = u.attr(attr);
    if (v && !field->empty() && *v != *field) return false;
  }
  return true;
}

// keys.K.uri: "pkcs11:object=LABEL;id=%01;type=private", instead of label/id. A full URI as
// `p11tool --list-privkeys` prints it also names the token: then keys.K.token may be left out when
// exactly one configured token fits, and must fit when given.
Status key_uri(const Loader& l, const YAML::Node& n, const std::string& w, const Config& c, KeyConfig& k) {
  if (!n["uri"].IsDefined()) return {};
  if (!k.label.empty() || k.has_id) return l.err(n["uri"], w + ": give either uri or label/id, not both");
  ASSIGN_OR_RETURN(auto u, config_uri(l, n, w, {"object", "id", "type", "token", "serial", "manufacturer", "model"}));
  if (const std::string* type = u.attr("type"); type && *type != "private")
    return l.err(n["uri"], w + ".uri: type=" + *type + " cannot be served (only type=private keys sign)");
  if (const std::string* v = u.attr("object")) k.label = *v;
  if (const std::string* v = u.attr("id")) {
    k.id = to_bytes(*v);
    k.has_id = true;
  }
  if (!u.attr("token") && !u.attr("serial") && !u.attr("manufacturer") && !u.attr("model")) return {};
  if (!k.token.empty()) {
    auto it = c.tokens.find(k.token);
    if (it != c.tokens.end() && !uri_fits_token(u, it->second))
      return l.err(n["uri"], w + ".uri names a token that does not match tokens." + k.token);
    return {};
  }
  std::vector<std::string> fits;
  for (const auto& [name, t] : c.tokens)
    if (uri_fits_token(u, t)) fits.push_back(name);
  if (fits.size() != 1)
    return l.err(n["uri"], w + ".uri fits " + std::to_string(fits.size()) +
                               " configured tokens: set keys." + k.name + ".token");
  k.token = fits.front();
  return {};
}

Status load_policy(const Loader& l, const YAML::Node& n, const std::string& w, KeyPolicy& p) {
  RETURN_IF_ERROR(l.only_keys(n, w, {"approval", "autoapprove", "approvers", "approvaltimeout", "digests",
                                     "mechanisms", "sigtypes", "windows", "quota"}));
  std::string approval = "auto";
  RETURN_IF_ERROR(l.get(n, "approval", approval, w));
  if (approval != "auto" && approval != "required")
    return l.err(n["approval"], w + ".approval must be 'auto' or 'required'");
  p.approval = approval == "required";
  RETURN_IF_ERROR(l.get_list(n, "autoapprove", p.autoapprove, w));
  if (n["approvers"].IsDefined()) {
    p.approvers.clear();
    RETURN_IF_ERROR(l.get_list(n, "approvers", p.approvers, w));
  }
  RETURN_IF_ERROR(l.get(n, "approvaltimeout", p.approvaltimeout, w));
  if (p.approvaltimeout < 1 || p.approvaltimeout > 7 * 86400)
    return l.err(n["approvaltimeout"], w + ".approvaltimeout must be 1..604800 seconds");
  if (p.approval && p.approvers.empty()) return l.err(n, w + ": approval: required needs at least one approvers role");
  std::vector<std::string> names;
  RETURN_IF_ERROR(l.get_list(n, "digests", names, w));
  if (n["digests"].IsDefined()) p.digests = 0;
  for (const auto& d : names) {
    auto bit = digest_bit_by_name(d);
    if (!bit) return l.err(n["digests"], w + ".digests: unknown digest '" + d + "' (md5, sha1, sha224, sha256, sha384, "
                                             "sha512, none)");
    p.digests |= *bit;
  }
  names.clear();
  RETURN_IF_ERROR(l.get_list(n, "mechanisms", names, w));
  for (const auto& m : names) {
    auto mech = mechanism_by_name(m);
    if (!mech) return l.err(n["mechanisms"], w + ".mechanisms: unknown mechanism '" + m + "'");
    p.mechanisms.push_back(*mech);
  }
  RETURN_IF_ERROR(l.get_list(n, "sigtypes", p.sigtypes, w));
  names.clear();
  RETURN_IF_ERROR(l.get_list(n, "windows", names, w));
  for (const auto& text : names) {
    auto win = parse_window(text);
    if (!win.ok()) return l.err(n["windows"], w + ".windows: " + win.error().message);
    p.windows.push_back(*win);
  }
  if (YAML::Node q = n["quota"]; q.IsDefined() && !q.IsNull()) {
    RETURN_IF_ERROR(l.only_keys(q, w + ".quota", {"perhour", "perday"}));
    RETURN_IF_ERROR(l.get(q, "perhour", p.perhour, w + ".quota"));
    RETURN_IF_ERROR(l.get(q, "perday", p.perday, w + ".quota"));
    if (p.perhour < 0 || p.perday < 0) return l.err(q, w + ".quota: limits must be >= 0 (0 = unlimited)");
  }
  return {};
}

Status check_tsa_urls(const Loader& l, const YAML::Node& n, const std::vector<std::string>& urls, const std::string& w) {
  for (const auto& u : urls)
    if (u.rfind("http://", 0) != 0)
      return l.err(n, w + ": '" + u + "' is not an http:// URL (TSAs are reached over plain HTTP; the token is signed)");
  return {};
}

// timestamp: (relic's TimestampConfig). memcache, ratelimit and rateburst are relic tuning knobs for
// its shared timestamp cache; accepted so relic configs load, not needed here (docs/migrating-from-relic.md).
Status load_timestamp(const Loader& l, const YAML::Node& tn, const std::string& dir, TimestampConfig& t) {
  const std::string w = "timestamp";
  RETURN_IF_ERROR(l.only_keys(tn, w, {"urls", "msurls", "namedurls", "timeout", "cacert", "memcache", "ratelimit",
                                      "rateburst"}));
  t.defined = true;
  RETURN_IF_ERROR(l.get_list(tn, "urls", t.urls, w));
  RETURN_IF_ERROR(l.get_list(tn, "msurls", t.msurls, w));
  RETURN_IF_ERROR(l.get(tn, "timeout", t.timeout, w));
  RETURN_IF_ERROR(l.get(tn, "cacert", t.cacert, w));
  RETURN_IF_ERROR(check_tsa_urls(l, tn["urls"], t.urls, "timestamp.urls"));
  if (YAML::Node nn = tn["namedurls"]; nn.IsDefined() && !nn.IsNull()) {
    if (!nn.IsMap()) return l.err(nn, "timestamp.namedurls must be a mapping of name to URL list");
    for (const auto& kv : nn) {
      std::string name = kv.first.as<std::string>();
      std::vector<std::string> urls;
      RETURN_IF_ERROR(l.get_list(nn, name.c_str(), urls, "timestamp.namedurls"));
      RETURN_IF_ERROR(check_tsa_urls(l, kv.second, urls, "timestamp.namedurls." + name));
      t.namedurls[name] = std::move(urls);
    }
  }
  if (t.timeout <= 0) return l.err(tn["timeout"], "timestamp.timeout must be > 0 (seconds)");
  if (!t.cacert.empty()) {
    t.cacert = resolve(dir, t.cacert);
    RETURN_IF_ERROR(require_file(l, tn["cacert"], t.cacert, "timestamp.cacert"));
  }
  return {};
}

// A key that timestamps needs URLs to timestamp with: never an untimestamped signature instead.
Status check_key_timestamps(const Loader& l, const YAML::Node& root, const Config& c) {
  for (const auto& [name, k] : c.keys) {
    if (!k.timestamp && k.timestamper.empty()) continue;
    const YAML::Node n = root["keys"][name];
    const std::string w = "keys." + name;
    if (!k.alias.empty()) return l.err(n, w + ": an alias cannot set timestamp or timestamper (the target key's apply)");
    if (!c.timestamp.defined)
      return l.err(n, w + " asks for timestamps but there is no top-level timestamp: section with urls");
    if (!k.timestamper.empty() && !c.timestamp.namedurls.count(k.timestamper))
      return l.err(n["timestamper"], w + ".timestamper '" + k.timestamper + "' is not in timestamp.namedurls");
    if (c.timestamp.urls_for(k).empty())
      return l.err(n, w + " asks for timestamps but its URL list (timestamp.urls or namedurls) is empty");
  }
  return {};
}

// server.trustedproxies (relic's key: addresses or CIDR networks) and the `proxy: true` client entries
// that go with it (docs/relic-protocol.md §4.2): a proxy entry never signs itself, and is believed
// only from those addresses.
Status trusted_proxies(const Loader& l, const YAML::Node& root, Config& c) {
  ServerConfig& s = c.server;
  const YAML::Node sn = root["server"];
  if (sn.IsDefined() && sn.IsMap()) RETURN_IF_ERROR(l.get_list(sn, "trustedproxies", s.trustedproxies, "server"));
  for (const auto& text : s.trustedproxies) {
    auto n = parse_network(text);
    if (!n.ok()) return l.err(sn["trustedproxies"], "server.trustedproxies: " + n.error().message);
    s.trusted_networks.push_back(*n);
  }
  for (const auto& [name, cl] : c.clients) {
    if (!cl.proxy) continue;
    const YAML::Node n = root["clients"][name];
    const std::string w = "clients." + name;
    if (!cl.roles.empty())
      return l.err(n, w + " is a proxy: it forwards its clients' certificates and cannot have roles itself");
    if (s.trusted_networks.empty())
      return l.err(n, w + " is a proxy but server.trustedproxies is empty (list the addresses it connects from)");
  }
  return {};
}

// yaml-cpp keeps both entries of a key given twice and every lookup returns the first: a second
// `server:` block would be ignored without a word.
Status no_duplicate_keys(const Loader& l, const YAML::Node& node) {
  if (node.IsSequence())
    for (const auto& e : node) RETURN_IF_ERROR(no_duplicate_keys(l, e));
  if (!node.IsMap()) return {};
  std::set<std::string> seen;
  for (const auto& kv : node) {
    if (kv.first.IsScalar() && !seen.insert(kv.first.Scalar()).second)
      return l.err(kv.first, "key '" + kv.first.Scalar() + "' appears twice in the same mapping (remove one)");
    RETURN_IF_ERROR(no_duplicate_keys(l, kv.second));
  }
  return {};
}

// host:port with port 0..65535 (0 picks a free port); the host may be empty (all addresses).
Status check_listen(const Loader& l, const YAML::Node& at, const std::string& what, const std::string& value) {
  if (!valid_listen_address(value))
    return l.err(at, what + " '" + value + "' must be HOST:PORT with a port from 0 to 65535");
  return {};
}

// server.listen (default :6300) and server.listenmetrics; server.listenhttp is refused.
Status server_addresses(const Loader& l, const YAML::Node& root, ServerConfig& s) {
  if (!s.listenhttp.empty())
    return l.err(root["server"]["listenhttp"],
                 "server.listenhttp is not supported: p11relayd serves only mutual TLS (use server.listenmetrics for "
                 "plaintext /health and /metrics)");
  if (s.listen.empty()) s.listen = ":6300";
  RETURN_IF_ERROR(check_listen(l, root["server"]["listen"], "server.listen", s.listen));
  if (!s.listenmetrics.empty())
    RETURN_IF_ERROR(check_listen(l, root["server"]["listenmetrics"], "server.listenmetrics", s.listenmetrics));
  return {};
}

// The server: section's keys, types and positive limits (file checks come after, in load).
Status server_keys(const Loader& l, const YAML::Node& root, ServerConfig& s) {
  if (YAML::Node sn = root["server"]; sn.IsDefined() && !sn.IsNull()) {
    const std::string w = "server";
    RETURN_IF_ERROR(l.only_keys(sn, w,
                                {"listen", "listenhttp", "certfile", "keyfile", "siblings", "disabled",
                                 "tokencheckinterval", "tokencheckfailures", "tokenchecktimeout",
                                 "readheadertimeout", "readtimeout", "writetimeout", "idletimeout",
                                 "handshaketimeout", "maxconnections", "maxhandshakes", "maxhandshakespersource",
                                 "maxbodybytes", "maxjsonbytes", "maxheaderbytes", "moduledirs", "loglevel", "logfile", "clientca",
                                 "trustedproxies", "numworkers", "tokencacheseconds", "listenmetrics", "statedir"}));
    RETURN_IF_ERROR(l.get(sn, "listen", s.listen, w));
    RETURN_IF_ERROR(l.get(sn, "listenhttp", s.listenhttp, w));
    RETURN_IF_ERROR(l.get(sn, "listenmetrics", s.listenmetrics, w));
    RETURN_IF_ERROR(l.get(sn, "certfile", s.certfile, w));
    RETURN_IF_ERROR(l.get(sn, "keyfile", s.keyfile, w));
    RETURN_IF_ERROR(l.get_list(sn, "siblings", s.siblings, w));
    RETURN_IF_ERROR(l.get(sn, "disabled", s.disabled, w));
    RETURN_IF_ERROR(l.get(sn, "tokencheckinterval", s.tokencheckinterval, w));
    RETURN_IF_ERROR(l.get(sn, "tokencheckfailures", s.tokencheckfailures, w));
    RETURN_IF_ERROR(l.get(sn, "tokenchecktimeout", s.tokenchecktimeout, w));
    RETURN_IF_ERROR(l.get(sn, "readheadertimeout", s.readheadertimeout, w));
    RETURN_IF_ERROR(l.get(sn, "readtimeout", s.readtimeout, w));
    RETURN_IF_ERROR(l.get(sn, "writetimeout", s.writetimeout, w));
    RETURN_IF_ERROR(l.get(sn, "idletimeout", s.idletimeout, w));
    RETURN_IF_ERROR(l.get(sn, "handshaketimeout", s.handshaketimeout, w));
    RETURN_IF_ERROR(l.get(sn, "maxconnections", s.maxconnections, w));
    RETURN_IF_ERROR(l.get(sn, "maxhandshakes", s.maxhandshakes, w));
    RETURN_IF_ERROR(l.get(sn, "maxhandshakespersource", s.maxhandshakespersource, w));
    RETURN_IF_ERROR(l.get(sn, "maxbodybytes", s.maxbodybytes, w));
    RETURN_IF_ERROR(l.get(sn, "maxjsonbytes", s.maxjsonbytes, w));
    RETURN_IF_ERROR(l.get(sn, "maxheaderbytes", s.maxheaderbytes, w));
    RETURN_IF_ERROR(l.get_list(sn, "moduledirs", s.moduledirs, w));
    RETURN_IF_ERROR(l.get(sn, "loglevel", s.loglevel, w));
    RETURN_IF_ERROR(l.get(sn, "clientca", s.clientca, w));
    RETURN_IF_ERROR(l.get(sn, "statedir", s.statedir, w));
    for (const char* k : {"tokencheckinterval", "tokencheckfailures", "tokenchecktimeout", "readheadertimeout",
                          "readtimeout", "writetimeout", "idletimeout", "handshaketimeout", "maxconnections",
                          "maxhandshakes", "maxhandshakespersource"}) {
      if (sn[k].IsDefined() && sn[k].as<long>(0) <= 0) return l.err(sn[k], std::string("server.") + k + " must be > 0");
    }
  }
  return {};
}

// The server section's values and the files it names (resolved against the config's directory).
Status load_server(const Loader& l, const YAML::Node& root, Config& c) {
  ServerConfig& s = c.server;
  RETURN_IF_ERROR(server_keys(l, root, s));
  RETURN_IF_ERROR(server_addresses(l, root, s));
  if (s.moduledirs.empty()) s.moduledirs = default_module_dirs();
  if (!s.listen.empty()) {
    if (s.certfile.empty() || s.keyfile.empty())
      return l.err(root["server"], "server.certfile and server.keyfile are required when server.listen is set");
    s.certfile = resolve(c.dir, s.certfile);
    s.keyfile = resolve(c.dir, s.keyfile);
    RETURN_IF_ERROR(require_file(l, root["server"]["certfile"], s.certfile, "server.certfile"));
    RETURN_IF_ERROR(require_file(l, root["server"]["keyfile"], s.keyfile, "server.keyfile"));
  }
  if (!s.clientca.empty()) {
    s.clientca = resolve(c.dir, s.clientca);
    RETURN_IF_ERROR(require_file(l, root["server"]["clientca"], s.clientca, "server.clientca"));
  }
  return {};
}

Result<TokenConfig> load_token(const Loader& l, const std::string& name, const YAML::Node& n) {
  TokenConfig t;
  t.name = name;
  const std::string w = "tokens." + t.name;
  RETURN_IF_ERROR(l.only_keys(n, w, {"type", "provider", "label", "serial", "uri", "pin", "user", "numworkers",
                                     "queuesize", "timeout", "retries", "ratelimit", "rateburst"}));
  RETURN_IF_ERROR(l.get(n, "type", t.type, w));
  RETURN_IF_ERROR(l.get(n, "provider", t.provider, w));
  RETURN_IF_ERROR(l.get(n, "label", t.label, w));
  RETURN_IF_ERROR(l.get(n, "serial", t.serial, w));
  RETURN_IF_ERROR(token_uri(l, n, w, t));
  if (n["pin"].IsDefined() && !n["pin"].IsNull()) {
    std::string pin;
    RETURN_IF_ERROR(l.get(n, "pin", pin, w));
    t.pin = pin;
  }
  RETURN_IF_ERROR(l.get(n, "user", t.user, w));
  RETURN_IF_ERROR(l.get(n, "numworkers", t.numworkers, w));
  RETURN_IF_ERROR(l.get(n, "queuesize", t.queuesize, w));
  RETURN_IF_ERROR(l.get(n, "timeout", t.timeout, w));
  RETURN_IF_ERROR(l.get(n, "retries", t.retries, w));
  if (t.type != "pkcs11") return l.err(n["type"], w + ".type '" + t.type + "' is not supported (only pkcs11)");
  if (t.provider.empty()) return l.err(n, w + ".provider (the PKCS#11 module path) is required");
  if (t.label.empty() && t.serial.empty())
    return l.err(n, w + " needs a label or a serial (or a uri with token= or serial=) to select the token");
  if (t.numworkers < 1 || t.numworkers > 64) return l.err(n["numworkers"], w + ".numworkers must be 1..64");
  if (t.queuesize < 1) return l.err(n["queuesize"], w + ".queuesize must be > 0");
  if (t.timeout < 1) return l.err(n["timeout"], w + ".timeout must be > 0");
  return t;
}

Result<KeyConfig> load_key(const Loader& l, const std::string& name, const YAML::Node& n, const Config& c) {
  KeyConfig k;
  k.name = name;
  const std::string w = "keys." + k.name;
  RETURN_IF_ERROR(l.only_keys(n, w, {"token", "alias", "label", "id", "uri", "x509certificate", "pgpcertificate",
                                     "roles", "hide", "timestamp", "timestamper", "policy"}));
  RETURN_IF_ERROR(l.get(n, "timestamp", k.timestamp, w));
  RETURN_IF_ERROR(l.get(n, "timestamper", k.timestamper, w));
  RETURN_IF_ERROR(l.get(n, "token", k.token, w));
  RETURN_IF_ERROR(l.get(n, "alias", k.alias, w));
  RETURN_IF_ERROR(l.get(n, "label", k.label, w));
  std::string id;
  RETURN_IF_ERROR(l.get(n, "id", id, w));
  if (!id.empty()) {
    auto b = from_hex(id);
    if (!b) return l.err(n["id"], w + ".id must be hex (CKA_ID)");
    k.id = *b;
    k.has_id = true;
  }
  RETURN_IF_ERROR(key_uri(l, n, w, c, k));
  RETURN_IF_ERROR(l.get(n, "x509certificate", k.x509certificate, w));
  RETURN_IF_ERROR(l.get_list(n, "roles", k.roles, w));
  RETURN_IF_ERROR(l.get(n, "hide", k.hide, w));
  if (YAML::Node pn = n["policy"]; pn.IsDefined() && !pn.IsNull()) {
    if (!k.alias.empty()) return l.err(pn, w + ": an alias cannot have its own policy (the target key's applies)");
    RETURN_IF_ERROR(load_policy(l, pn, w + ".policy", k.policy));
    k.has_policy = true;
  }
  if (k.alias.empty()) {
    if (k.token.empty()) return l.err(n, w + ".token is required");
    if (!c.tokens.count(k.token)) return l.err(n["token"], w + ".token names unknown token '" + k.token + "'");
    if (k.label.empty() && !k.has_id)
      return l.err(n, w + " needs a label or an id (or a uri with object= or id=) to find the key on the token");
  }
  if (!k.x509certificate.empty()) {
    k.x509certificate = resolve(c.dir, k.x509certificate);
    RETURN_IF_ERROR(require_file(l, n["x509certificate"], k.x509certificate, w + ".x509certificate"));
  }
  return k;
}

Result<ClientConfig> load_client(const Loader& l, const YAML::Node& key_node, const YAML::Node& n, const Config& c) {
  ClientConfig cl;
  std::string key = key_node.as<std::string>();
  const std::string w = "clients." + key;
  RETURN_IF_ERROR(l.only_keys(n, w, {"nickname", "roles", "certificate", "proxy"}));
  RETURN_IF_ERROR(l.get(n, "proxy", cl.proxy, w));
  RETURN_IF_ERROR(l.get(n, "nickname", cl.nickname, w));
  RETURN_IF_ERROR(l.get_list(n, "roles", cl.roles, w));
  RETURN_IF_ERROR(l.get(n, "certificate", cl.certificate, w));
  std::transform(key.begin(), key.end(), key.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (cl.certificate.empty()) {
    if (key.size() != 64 || !from_hex(key))
      return l.err(key_node, w + ": a client is named by the 64-hex-digit SHA-256 fingerprint of its public key "
                                 "(or has a 'certificate' CA bundle)");
  } else {
    cl.certificate = resolve(c.dir, cl.certificate);
    RETURN_IF_ERROR(require_file(l, n["certificate"], cl.certificate, w + ".certificate"));
  }
  cl.name = key;
  return cl;
}

// A section that maps names to entries (tokens, keys, clients): absent or empty, or a mapping; `add` takes each.
Status each_entry(const Loader& l, const YAML::Node& root, const char* section,
                  const std::function<Status(const YAML::Node& name, const YAML::Node& entry)>& add) {
  YAML::Node sn = root[section];
  if (!sn.IsDefined() || sn.IsNull()) return {};
  if (!sn.IsMap()) return l.err(sn, std::string(section) + " must be a mapping");
  for (const auto& kv : sn) RETURN_IF_ERROR(add(kv.first, kv.second));
  return {};
}

// Every alias names a key that is not an alias itself.
Status check_aliases(const Loader& l, const YAML::Node& root, const Config& c) {
  const YAML::Node kn = root["keys"];
  for (const auto& [name, k] : c.keys) {
    if (k.alias.empty()) continue;
    auto it = c.keys.find(k.alias);
    if (it == c.keys.end()) return l.err(kn[name]["alias"], "keys." + name + ".alias names unknown key '" + k.alias + "'");
    if (!it->second.alias.empty()) return l.err(kn[name]["alias"], "keys." + name + ": an alias cannot point to another alias");
  }
  return {};
}

// The top-level files (audit log, PIN file) and server.statedir, resolved; a policy that keeps state needs
// server.statedir.
Status load_paths(const Loader& l, const YAML::Node& root, Config& c) {
  ServerConfig& s = c.server;
  RETURN_IF_ERROR(l.get(root, "auditfile", c.auditfile, "the top level"));
  RETURN_IF_ERROR(l.get(root, "pinfile", c.pinfile, "the top level"));
  if (!c.auditfile.empty()) c.auditfile = resolve(c.dir, c.auditfile);
  if (!s.statedir.empty()) s.statedir = resolve(c.dir, s.statedir);
  for (const auto& [name, k] : c.keys) {
    if (s.statedir.empty() && k.has_policy && (k.policy.approval || k.policy.has_quota()))
      return l.err(root["keys"][name]["policy"], "keys." + name +
                                                     ".policy needs server.statedir (e.g. /var/lib/p11relayd) to keep "
                                                     "held requests and quota counters across restarts");
  }
  if (!c.pinfile.empty()) c.pinfile = resolve(c.dir, c.pinfile);
  return {};
}

Result<YAML::Node> read_yaml(const std::string& path) {
  try {
    return YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return config_error(path + ": cannot read file");
  } catch (const YAML::Exception& e) {
    return config_error(path + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

Result<Config> load(const std::string& path, bool check_secrets) {
  Config c;
  c.path = path;
  c.dir = fs::absolute(fs::path(path)).parent_path().string();
  Loader l{path};
  ASSIGN_OR_RETURN(YAML::Node root, read_yaml(path));
  if (!root.IsMap()) return config_error(path + ": top level must be a mapping");
  RETURN_IF_ERROR(no_duplicate_keys(l, root));
  RETURN_IF_ERROR(l.only_keys(root, "the top level",
                              {"server", "tokens", "keys", "clients", "auditfile", "pinfile", "timestamp", "remote"}));
  RETURN_IF_ERROR(load_server(l, root, c));
  RETURN_IF_ERROR(each_entry(l, root, "tokens", [&](const YAML::Node& name, const YAML::Node& n) -> Status {
    ASSIGN_OR_RETURN(TokenConfig t, load_token(l, name.as<std::string>(), n));
    c.tokens[t.name] = std::move(t);
    return {};
  }));
  RETURN_IF_ERROR(each_entry(l, root, "keys", [&](const YAML::Node& name, const YAML::Node& n) -> Status {
    ASSIGN_OR_RETURN(KeyConfig k, load_key(l, name.as<std::string>(), n, c));
    c.keys[k.name] = std::move(k);
    return {};
  }));
  RETURN_IF_ERROR(check_aliases(l, root, c));
  RETURN_IF_ERROR(each_entry(l, root, "clients", [&](const YAML::Node& name, const YAML::Node& n) -> Status {
    ASSIGN_OR_RETURN(ClientConfig cl, load_client(l, name, n, c));
    c.clients[cl.name] = std::move(cl);
    return {};
  }));
  RETURN_IF_ERROR(trusted_proxies(l, root, c));
  if (YAML::Node tn = root["timestamp"]; tn.IsDefined() && !tn.IsNull())
    RETURN_IF_ERROR(load_timestamp(l, tn, c.dir, c.timestamp));
  RETURN_IF_ERROR(check_key_timestamps(l, root, c));
  RETURN_IF_ERROR(load_paths(l, root, c));
  if (c.tokens.empty() && c.clients.empty()) return config_error(path + ": no tokens and no clients: nothing to serve");
  if (check_secrets && !c.pinfile.empty()) RETURN_IF_ERROR(load_pinfile(c));
  for (const auto& [name, t] : c.tokens)
    RETURN_IF_ERROR(check_module_path(t.provider, c.server.moduledirs));
  return c;
}

}  // namespace

const std::vector<std::string>& TimestampConfig::urls_for(const KeyConfig& k) const {
  static const std::vector<std::string> none;
  if (!k.timestamper.empty()) {
    auto it = namedurls.find(k.timestamper);
    return it == namedurls.end() ? none : it->second;
  }
  return k.timestamp ? urls : none;
}

const KeyConfig* Config::resolve_key(const std::string& name) const {
  auto it = keys.find(name);
  if (it == keys.end()) return nullptr;
  if (it->second.alias.empty()) return &it->second;
  auto t = keys.find(it->second.alias);
  return t == keys.end() ? nullptr : &t->second;
}

std::vector<std::string> default_module_dirs() {
  return {"/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
          "/usr/lib/i386-linux-gnu", "/usr/lib/arm-linux-gnueabihf"};
}

bool valid_listen_address(const std::string& value) {
  size_t colon = value.rfind(':');
  std::string port = colon == std::string::npos ? std::string() : value.substr(colon + 1);
  bool digits = !port.empty() && port.size() <= 5 && port.find_first_not_of("0123456789") == std::string::npos;
  return digits && std::stoul(port) <= 65535;
}

Result<Config> load_config(const std::string& path, bool check_secrets) {
  try {
    return load(path, check_secrets);
  } catch (const YAML::Exception& e) {
    return config_error(path + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  } catch (const std::exception& e) {
    return config_error(path + ": " + e.what());
  }
}

Status check_module_path(const std::string& path, const std::vector<std::string>& allowed_dirs) {
  std::error_code ec;
  fs::path real = fs::canonical(path, ec);
  if (ec) return config_error("PKCS#11 module '" + path + "' does not exist");
  bool inside = false;
  for (const auto& d : allowed_dirs) {
    fs::path dir = fs::weakly_canonical(d, ec);
    if (ec) continue;
    auto rel = real.lexically_relative(dir);
    if (!rel.empty() && *rel.begin() != "..") {
      inside = true;
      break;
    }
  }
  if (!inside)
    return config_error("PKCS#11 module '" + path + "' is outside the allowed module directories (server.moduledirs)");
  // The module and every directory above it must be writable only by root: whoever can replace the
  // module can read the PIN.
  for (fs::path p = real; !p.empty(); p = p.parent_path()) {
    struct stat st {};
    if (stat(p.c_str(), &st) != 0) return config_error("cannot stat '" + p.string() + "'");
    if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
      return config_error("PKCS#11 module '" + path + "' refused: '" + p.string() +
                          "' is writable by someone other than root");
    if (p == p.parent_path()) break;
  }
  return {};
}

}  // namespace p11relay::daemon
