// Client configuration (relic-style `remote:` block plus the shim's `pkcs11:` block). yaml-cpp is used
// only here, and every YAML exception is caught here: a broken file is a message naming the file, the
// line and the key, never an exception escaping into a PKCS#11 application.
#include "client/client.h"
#include "common/suggest.h"
#include "common/yaml_error.h"

#include <yaml-cpp/yaml.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace p11relay::client {
namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

struct Loader {
  std::string file;
  std::string dir;

  Error err(const YAML::Node& n, const std::string& what) const { return yaml_error(file, n, what); }

  // Keys are matched case-insensitively (relic's Go YAML accepts "serverFingerprint" style too).
  Status only_keys(const YAML::Node& map, const std::string& where, const std::set<std::string>& allowed) const {
    if (!map.IsMap()) return err(map, "'" + where + "' must be a mapping");
    for (const auto& kv : map) {
      auto k = kv.first.as<std::string>();
      if (!allowed.count(lower(k)))
        return err(kv.first, "unknown key '" + k + "' in '" + where + "'" + did_you_mean(k, allowed));
    }
    return {};
  }

  YAML::Node find(const YAML::Node& map, const std::string& key) const {
    for (const auto& kv : map)
      if (lower(kv.first.as<std::string>()) == key) return kv.second;
    return YAML::Node(YAML::NodeType::Undefined);
  }

  Status get_string(const YAML::Node& map, const std::string& key, std::string& out, const std::string& where) const {
    YAML::Node n = find(map, key);
    if (!n.IsDefined() || n.IsNull()) return {};
    if (!n.IsScalar()) return err(n, "key '" + key + "' in '" + where + "' must be a string");
    out = n.as<std::string>();
    return {};
  }

  // Seconds in YAML (may be fractional), milliseconds in Config.
  Status get_seconds(const YAML::Node& map, const std::string& key, int& out_ms, const std::string& where) const {
    YAML::Node n = find(map, key);
    if (!n.IsDefined() || n.IsNull()) return {};
    double v = 0;
    try {
      v = n.as<double>();
    } catch (const YAML::Exception&) {
      return err(n, "key '" + key + "' in '" + where + "' must be a number of seconds");
    }
    if (!(v > 0) || v > 86400) return err(n, "key '" + key + "' in '" + where + "' must be between 0 and 86400 seconds");
    out_ms = static_cast<int>(v * 1000);
    return {};
  }

  Status get_int(const YAML::Node& map, const std::string& key, int& out, int min, int max,
                 const std::string& where) const {
    YAML::Node n = find(map, key);
    if (!n.IsDefined() || n.IsNull()) return {};
    long v = 0;
    try {
      v = n.as<long>();
    } catch (const YAML::Exception&) {
      return err(n, "key '" + key + "' in '" + where + "' must be an integer");
    }
    if (v < min || v > max)
      return err(n, "key '" + key + "' in '" + where + "' must be between " + std::to_string(min) + " and " +
                        std::to_string(max));
    out = static_cast<int>(v);
    return {};
  }

  std::string resolve(const std::string& p) const {
    if (p.empty() || p[0] == '/' || dir.empty()) return p;
    return (fs::path(dir) / p).lexically_normal().string();
  }

  Status path(const YAML::Node& map, const std::string& key, std::string& out, const std::string& where,
              bool must_exist) const {
    RETURN_IF_ERROR(get_string(map, key, out, where));
    if (out.empty()) return {};
    out = resolve(out);
    if (must_exist) {
      std::error_code ec;
      if (!fs::is_regular_file(out, ec) || access(out.c_str(), R_OK) != 0)
        return err(find(map, key), key + " '" + out + "' does not exist or is not readable");
    }
    return {};
  }
};

bool valid_url(const std::string& u) {
  return u.rfind("https://", 0) == 0 && u.size() > 8;
}

Status parse_remote(const Loader& l, const YAML::Node& r, Config& c) {
  const std::string w = "remote";
  RETURN_IF_ERROR(l.only_keys(r, w,
                              {"url", "urls", "certfile", "keyfile", "cacert", "serverfingerprint", "connecttimeout",
                               "timeout", "retries", "approvalwait", "directoryurl", "keylistcache"}));
  std::string url;
  RETURN_IF_ERROR(l.get_string(r, "url", url, w));
  if (!url.empty()) c.urls.push_back(url);
  YAML::Node urls = l.find(r, "urls");
  if (urls.IsDefined() && !urls.IsNull()) {
    if (!urls.IsSequence()) return l.err(urls, "key 'urls' in 'remote' must be a list of URLs");
    for (const auto& e : urls) {
      if (!e.IsScalar()) return l.err(e, "key 'urls' in 'remote' must be a list of URLs");
      std::string u = e.as<std::string>();
      if (std::find(c.urls.begin(), c.urls.end(), u) == c.urls.end()) c.urls.push_back(u);
    }
  }
  RETURN_IF_ERROR(l.get_string(r, "directoryurl", c.directory_url, w));
  if (c.urls.empty() && !c.directory_url.empty()) c.urls.push_back(c.directory_url);
  if (!c.directory_url.empty() && !valid_url(c.directory_url))
    return l.err(r, "directoryurl '" + c.directory_url + "' is not an https:// URL");
  if (c.urls.empty()) return l.err(r, "'remote' needs 'url', 'urls' or 'directoryurl'");
  for (const auto& u : c.urls)
    if (!valid_url(u)) return l.err(r, "URL '" + u + "' is not an https:// URL");
  RETURN_IF_ERROR(l.path(r, "certfile", c.certfile, w, true));
  RETURN_IF_ERROR(l.path(r, "keyfile", c.keyfile, w, true));
  RETURN_IF_ERROR(l.path(r, "cacert", c.cacert, w, true));
  if (c.certfile.empty()) return l.err(r, "'remote' needs 'certfile' (the client certificate for mutual TLS)");
  if (c.keyfile.empty()) c.keyfile = c.certfile;
  RETURN_IF_ERROR(l.get_string(r, "serverfingerprint", c.server_fingerprint, w));
  if (!c.server_fingerprint.empty()) {
    std::string fp;
    for (char ch : c.server_fingerprint)
      if (ch != ':') fp.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
    auto bytes = from_hex(fp);
    if (!bytes || bytes->size() != 32)
      return l.err(l.find(r, "serverfingerprint"), "'serverfingerprint' must be the hex SHA-256 of the server SPKI");
    c.server_fingerprint = fp;
  }
  RETURN_IF_ERROR(l.get_seconds(r, "connecttimeout", c.connect_timeout_ms, w));
  RETURN_IF_ERROR(l.get_seconds(r, "timeout", c.request_timeout_ms, w));
  RETURN_IF_ERROR(l.get_int(r, "retries", c.retries, 0, 100, w));
  RETURN_IF_ERROR(l.get_seconds(r, "approvalwait", c.approval_wait_ms, w));
  RETURN_IF_ERROR(l.get_int(r, "keylistcache", c.key_list_cache_seconds, 0, 30 * 86400, w));
  return {};
}

Status parse_pkcs11(const Loader& l, const YAML::Node& p, Config& c) {
  const std::string w = "pkcs11";
  RETURN_IF_ERROR(l.only_keys(p, w, {"pin", "logfile", "loglevel", "keycacheseconds"}));
  YAML::Node pin = l.find(p, "pin");
  if (pin.IsDefined() && !pin.IsNull()) {
    if (!pin.IsScalar()) return l.err(pin, "key 'pin' in 'pkcs11' must be a string");
    c.pin = pin.as<std::string>();
  }
  RETURN_IF_ERROR(l.path(p, "logfile", c.log_file, w, false));
  RETURN_IF_ERROR(l.get_string(p, "loglevel", c.log_level, w));
  c.log_level = lower(c.log_level);
  static const std::set<std::string> levels = {"trace", "debug", "info", "warning", "warn", "error", "off"};
  if (!levels.count(c.log_level))
    return l.err(l.find(p, "loglevel"), "loglevel '" + c.log_level + "' is not one of trace, debug, info, warning, error, off");
  RETURN_IF_ERROR(l.get_int(p, "keycacheseconds", c.key_cache_seconds, 0, 86400, w));
  return {};
}

Result<Config> parse_node(const YAML::Node& root, const Loader& l) {
  Config c;
  c.source = l.file;
  if (!root.IsDefined() || root.IsNull()) return l.err(root, "the file is empty");
  RETURN_IF_ERROR(l.only_keys(root, "top level", {"remote", "pkcs11"}));
  YAML::Node remote = l.find(root, "remote");
  if (!remote.IsDefined() || remote.IsNull()) return l.err(root, "missing 'remote' block");
  RETURN_IF_ERROR(parse_remote(l, remote, c));
  YAML::Node pkcs11 = l.find(root, "pkcs11");
  if (pkcs11.IsDefined() && !pkcs11.IsNull()) RETURN_IF_ERROR(parse_pkcs11(l, pkcs11, c));
  return c;
}

}  // namespace

Result<Config> parse_config(const std::string& yaml_text, const std::string& source_name) {
  Loader l;
  l.file = source_name.empty() ? "<config>" : source_name;
  if (!source_name.empty() && source_name.find('/') != std::string::npos)
    l.dir = fs::path(source_name).parent_path().string();
  else if (!source_name.empty() && source_name[0] != '<')
    l.dir = ".";
  try {
    YAML::Node root = YAML::Load(yaml_text);
    return parse_node(root, l);
  } catch (const YAML::Exception& e) {
    std::ostringstream o;
    o << l.file;
    if (e.mark.line >= 0) o << ":" << e.mark.line + 1;
    o << ": " << e.msg;
    return config_error(o.str());
  } catch (const std::exception& e) {
    return config_error(l.file + ": " + e.what());
  }
}

namespace {

std::vector<std::string> config_candidates() {
  std::vector<std::string> candidates;
  const char* xdg = std::getenv("XDG_CONFIG_HOME");
  const char* home = std::getenv("HOME");
  if (xdg && *xdg) candidates.push_back(std::string(xdg) + "/p11relay/client.yml");
  else if (home && *home) candidates.push_back(std::string(home) + "/.config/p11relay/client.yml");
  candidates.push_back("/etc/p11relay/client.yml");
  return candidates;
}

// $P11RELAY_CONFIG, else the first candidate that exists.
std::optional<std::string> find_config() {
  const char* env = std::getenv("P11RELAY_CONFIG");
  if (env && *env) return std::string(env);
  std::error_code ec;
  for (const auto& c : config_candidates())
    if (fs::exists(c, ec)) return c;
  return std::nullopt;
}

}  // namespace

bool config_present() { return find_config().has_value(); }

Result<Config> load_config(const std::string& explicit_path) {
  std::string path = explicit_path;
  if (path.empty()) {
    auto found = find_config();
    if (!found) {
      std::string tried;
      for (const auto& c : config_candidates()) tried += (tried.empty() ? "" : ", ") + c;
      return config_error("no client configuration: set P11RELAY_CONFIG or create one of " + tried);
    }
    path = *found;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return config_error(path + ": cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return config_error(path + ": read error");
  return parse_config(text.str(), path);
}

}  // namespace p11relay::client
