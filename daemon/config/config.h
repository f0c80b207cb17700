// p11relayd configuration: relic's server config keys where they mean the same thing
// (docs/relic-protocol.md §11), plus ours. Plain structs; yaml-cpp only in config.cpp; validated at load.
#pragma once

#include "common/bytes.h"
#include "common/error.h"
#include "daemon/transport/networks.h"
#include "daemon/policy/policy.h"

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace p11relay::daemon {

struct ServerConfig {
  std::string listen;      // host:port (TLS); default 127.0.0.1:6300... relic's ":6300"
  std::string listenhttp;     // accepted for relic compatibility; not served (use listenmetrics)
  std::string listenmetrics;  // optional plaintext listener for GET /metrics and GET /health
  std::string certfile, keyfile;
  std::vector<std::string> siblings;
  bool disabled = false;
  int tokencheckinterval = 60, tokencheckfailures = 3, tokenchecktimeout = 60;
  int readheadertimeout = 10, readtimeout = 600, writetimeout = 600, idletimeout = 10;
  int handshaketimeout = 10;
  int maxconnections = 4096;           // connections that finished mutual TLS
  int maxhandshakes = 16384;           // connections still in the TLS handshake (HandshakeGate)
  int maxhandshakespersource = 8192;   // the same, per client address
  std::uint64_t maxbodybytes = 4ull << 30;  // relic pe-coff uploads are streamed, never buffered whole
  std::uint64_t maxjsonbytes = 1 << 20;     // relay API request bodies are small
  std::size_t maxheaderbytes = 16 * 1024;
  std::vector<std::string> moduledirs;      // allow-listed directories for vendor PKCS#11 modules
  std::string loglevel = "info";
  std::string clientca;                     // optional: verify client certs against this CA at TLS
  // Reverse proxies whose Ssl-Client-Cert / X-Forwarded-For headers are believed (with a `proxy: true`
  // client entry; docs/relic-protocol.md §4.2). Empty: none (deny by default).
  std::vector<std::string> trustedproxies;
  std::vector<Network> trusted_networks;  // the same, parsed
  std::string statedir;  // held approval requests and quota counters; required when a policy needs them
  bool operator==(const ServerConfig&) const = default;
};

struct TokenConfig {
  std::string name;
  std::string type = "pkcs11";
  std::string provider;  // module path
  std::string label, serial;
  std::string manufacturer, model;  // narrow the match further (from tokens.T.uri only)
  std::optional<std::string> pin;  // never logged
  unsigned long user = 1;          // CKU_USER
  int numworkers = 1;              // sessions/threads on this token
  int queuesize = 64;              // waiting requests per token; full → 503 + Retry-After
  int timeout = 60;                // seconds per token operation
  int retries = 5;
  bool operator==(const TokenConfig&) const = default;
};

struct KeyConfig {
  std::string name;
  std::string alias;  // this name is an alias of another key
  std::string token;
  std::string label;
  Bytes id;
  bool has_id = false;
  std::string x509certificate;
  std::vector<std::string> roles;
  bool hide = false;
  // keys.K.policy (docs/policy.md). Keys without one still get the default digest rule (no MD5,
  // SHA-1 or raw input); has_policy gates every other check, so they cost nothing more.
  KeyPolicy policy;
  bool has_policy = false;
  // relic's keys.K.timestamp / timestamper (docs/relic-protocol.md §10): signatures get an RFC 3161
  // timestamp from timestamp.urls (or timestamp.namedurls[timestamper]).
  bool timestamp = false;
  std::string timestamper;
};

// relic's top-level timestamp: section (docs/relic-protocol.md §10).
struct TimestampConfig {
  bool defined = false;
  std::vector<std::string> urls;    // RFC 3161 TSAs (http://), tried in order
  std::vector<std::string> msurls;  // legacy Microsoft TSAs: no signer served here asks for them
  std::map<std::string, std::vector<std::string>> namedurls;  // keys.K.timestamper picks one
  int timeout = 30;                 // seconds per TSA
  std::string cacert;               // TSA CA bundle: tokens must chain to it (else: signature check only)
  // The TSA URLs a key uses; empty when it does not timestamp.
  const std::vector<std::string>& urls_for(const KeyConfig& k) const;
  bool operator==(const TimestampConfig&) const = default;
};

struct ClientConfig {
  std::string name;  // map key: fingerprint (lowercased) or a label when certificate is set
  std::string nickname;
  std::vector<std::string> roles;
  std::string certificate;  // CA bundle path (CA mode)
  bool proxy = false;       // a TLS-terminating proxy: forwards clients' certificates, never signs itself
};

struct Config {
  std::string path;  // the file it was loaded from
  std::string dir;   // its directory (relative paths resolve against it)
  ServerConfig server;
  std::map<std::string, TokenConfig> tokens;
  std::map<std::string, KeyConfig> keys;
  std::map<std::string, ClientConfig> clients;
  TimestampConfig timestamp;
  std::string auditfile;
  std::string pinfile;

  // Follows one alias (aliases cannot chain or override anything, as in relic).
  const KeyConfig* resolve_key(const std::string& name) const;
};

std::vector<std::string> default_module_dirs();

// Loads and validates; errors name the file, line and key. Reads the pinfile (and checks its owner
// and mode) unless check_secrets is false.
Result<Config> load_config(const std::string& path, bool check_secrets = true);

// YAML of the effective config with secrets redacted (for --check-config).
std::string dump_redacted(const Config& c);

// Refuses a module outside the allow-listed dirs, or writable by anyone but root, or in a
// directory writable by non-root.
// HOST:PORT with a decimal port from 0 to 65535 (getaddrinfo would take 99999 and listen on 34463).
bool valid_listen_address(const std::string& value);
Status check_module_path(const std::string& path, const std::vector<std::string>& allowed_dirs);

}  // namespace p11relay::daemon
