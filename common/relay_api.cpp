#include "common/relay_api.h"

#include "common/text.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>

namespace p11relay::relay {
namespace {

using nlohmann::json;

Error bad_json(std::string msg) { return {ErrorCode::bad_json, std::move(msg)}; }

const char* key_type_name(KeyType t) { return t == KeyType::ec ? "EC" : "RSA"; }

Result<Bytes> b64_field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || !it->is_string()) return bad_json(std::string("missing string field '") + name + "'");
  auto b = base64_decode(it->get_ref<const std::string&>());
  if (!b) return bad_json(std::string("field '") + name + "' is not base64");
  return *b;
}

std::string str_field(const json& j, const char* name) {
  auto it = j.find(name);
  return (it != j.end() && it->is_string()) ? it->get<std::string>() : std::string();
}

Result<HashAlg> hash_field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || !it->is_string()) return Error(ErrorCode::mechanism_param, std::string("missing '") + name + "'");
  auto h = hash_by_name(it->get_ref<const std::string&>());
  if (!h) return Error(ErrorCode::mechanism_param, "unknown hash '" + it->get<std::string>() + "'");
  return *h;
}

}  // namespace

std::string encode_key_list(const std::vector<KeyDescription>& keys, const std::vector<TokenProblem>& unavailable) {
  json arr = json::array();
  for (const auto& k : keys) {
    json certs = json::array();
    for (const auto& c : k.certificates) certs.push_back(base64_encode(c));
    json j = {
        {"name", k.name},
        {"token", {{"label", k.token.label}, {"serial", k.token.serial}, {"model", k.token.model},
                   {"manufacturer", k.token.manufacturer}}},
        {"id", to_hex(k.id)},
        {"label", k.label},
        {"key_type", key_type_name(k.key.type)},
        {"bits", k.key.bits},
        {"spki", base64_encode(k.spki)},
        {"certificates", certs},
        {"mechanisms", k.mechanisms},
    };
    if (k.key.type == KeyType::ec) j["curve"] = k.key.curve;
    if (!k.approval.empty()) j["approval"] = k.approval;
    j["version"] = key_version(k);
    arr.push_back(std::move(j));
  }
  json doc = {{"keys", arr}};
  for (const auto& p : unavailable)
    doc["unavailable"].push_back(
        {{"token", {{"label", p.token.label}, {"serial", p.token.serial}}}, {"code", p.code}, {"detail", p.detail}});
  return doc.dump();
}

namespace {

TokenDescription token_from(const json& j) {
  TokenDescription t;
  if (auto f = j.find("token"); f != j.end() && f->is_object()) {
    t.label = str_field(*f, "label");
    t.serial = str_field(*f, "serial");
    t.model = str_field(*f, "model");
    t.manufacturer = str_field(*f, "manufacturer");
  }
  return t;
}

Result<KeyDescription> key_from(const json& j) {
  if (!j.is_object()) return bad_json("key entry is not an object");
  KeyDescription k;
  k.name = str_field(j, "name");
  if (k.name.empty()) return bad_json("key entry without a name");
  k.token = token_from(j);
  auto id = from_hex(str_field(j, "id"));
  if (!id) return bad_json("key '" + k.name + "': id is not hex");
  k.id = *id;
  k.label = str_field(j, "label");
  std::string type = str_field(j, "key_type");
  if (type == "RSA") k.key.type = KeyType::rsa;
  else if (type == "EC") k.key.type = KeyType::ec;
  else return bad_json("key '" + k.name + "': unknown key_type '" + type + "'");
  if (auto b = j.find("bits"); b != j.end() && b->is_number_integer()) k.key.bits = b->get<int>();
  k.key.curve = str_field(j, "curve");
  ASSIGN_OR_RETURN(k.spki, b64_field(j, "spki"));
  if (auto c = j.find("certificates"); c != j.end() && c->is_array()) {
    for (const auto& e : *c) {
      if (!e.is_string()) return bad_json("certificate is not a string");
      auto der = base64_decode(e.get_ref<const std::string&>());
      if (!der) return bad_json("certificate is not base64");
      k.certificates.push_back(std::move(*der));
    }
  }
  if (auto m = j.find("mechanisms"); m != j.end() && m->is_array()) {
    for (const auto& e : *m)
      if (e.is_string()) k.mechanisms.push_back(e.get<std::string>());
  }
  k.approval = str_field(j, "approval");
  k.version = str_field(j, "version");
  return k;
}

}  // namespace

Result<KeyList> decode_key_list_full(std::string_view body) {
  json doc = json::parse(body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("keys") || !doc["keys"].is_array())
    return bad_json("key list is not a JSON object with a 'keys' array");
  KeyList out;
  for (const auto& j : doc["keys"]) {
    ASSIGN_OR_RETURN(KeyDescription k, key_from(j));
    out.keys.push_back(std::move(k));
  }
  if (auto u = doc.find("unavailable"); u != doc.end() && u->is_array()) {
    for (const auto& j : *u) {
      if (!j.is_object()) return bad_json("unavailable entry is not an object");
      out.unavailable.push_back(TokenProblem{token_from(j), str_field(j, "code"), str_field(j, "detail")});
    }
  }
  return out;
}

Result<std::vector<KeyDescription>> decode_key_list(std::string_view body) {
  ASSIGN_OR_RETURN(KeyList list, decode_key_list_full(body));
  return std::move(list.keys);
}

namespace {
bool plain_name(std::string_view s) {  // needs no JSON escaping
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; });
}

bool is_version(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) { return hex_value(c) >= 0 && !std::isupper(static_cast<unsigned char>(c)); });
}

// The part's length as 4 bytes big-endian, then the part.
void hash_sized(Hasher& h, std::span<const std::uint8_t> part) {
  auto n = static_cast<std::uint32_t>(part.size());
  const std::uint8_t len[4] = {static_cast<std::uint8_t>(n >> 24), static_cast<std::uint8_t>(n >> 16),
                               static_cast<std::uint8_t>(n >> 8), static_cast<std::uint8_t>(n)};
  h.update(len);
  h.update(part);
}
}  // namespace

std::string key_version(const KeyDescription& key) {
  Hasher h(HashAlg::sha256);
  hash_sized(h, key.spki);
  for (const auto& c : key.certificates) hash_sized(h, c);
  return to_hex(h.finish());
}

std::string encode_sign_request(const SignRequest& req) {
  // The common request (every signature through the shim) written directly, byte for byte what the
  // json below gives for it (keys sorted) without building a tree.
  if (!req.pss && req.filename.empty() && !req.filesize && plain_name(req.mechanism) &&
      (req.key_version.empty() || plain_name(req.key_version))) {
    std::string out = "{";
    if (req.digest_alg) out += std::string("\"digest\":\"") + hash_info(*req.digest_alg).name + "\",";
    out += "\"input\":\"" + base64_encode(req.input) + "\",";
    if (!req.key_version.empty()) out += "\"key_version\":\"" + req.key_version + "\",";
    out += "\"mechanism\":\"" + req.mechanism + "\"}";
    return out;
  }
  json j = {{"mechanism", req.mechanism}, {"input", base64_encode(req.input)}};
  if (req.pss)
    j["params"] = {{"hash", hash_info(req.pss->hash).name},
                   {"mgf", hash_info(req.pss->mgf_hash).name},
                   {"salt_length", req.pss->salt_length}};
  if (!req.filename.empty()) j["filename"] = req.filename;
  if (req.filesize) j["filesize"] = *req.filesize;
  if (req.digest_alg) j["digest"] = hash_info(*req.digest_alg).name;
  if (!req.key_version.empty()) j["key_version"] = req.key_version;
  return j.dump();
}

Result<SignRequest> decode_sign_request(std::string_view body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) return bad_json("request body is not valid JSON");
  if (!j.is_object()) return bad_json("request body must be a JSON object");
  SignRequest req;
  auto m = j.find("mechanism");
  if (m == j.end() || !m->is_string()) return bad_json("missing string field 'mechanism'");
  req.mechanism = m->get<std::string>();
  ASSIGN_OR_RETURN(req.input, b64_field(j, "input"));
  if (auto p = j.find("params"); p != j.end() && !p->is_null()) {
    if (!p->is_object()) return bad_json("'params' must be an object");
    PssParams pss;
    ASSIGN_OR_RETURN(pss.hash, hash_field(*p, "hash"));
    ASSIGN_OR_RETURN(pss.mgf_hash, hash_field(*p, "mgf"));
    auto s = p->find("salt_length");
    if (s == p->end() || !s->is_number_unsigned())
      return Error(ErrorCode::mechanism_param, "missing or negative 'salt_length'");
    pss.salt_length = s->get<unsigned long>();
    req.pss = pss;
  }
  req.filename = str_field(j, "filename");
  // The filename goes into the audit record and log lines: bounded, one line (docs/reliability.md).
  if (req.filename.size() > kMaxFilenameBytes)
    return bad_json("'filename' is longer than " + std::to_string(kMaxFilenameBytes) + " bytes");
  if (has_control(req.filename)) return bad_json("'filename' contains a control character");
  if (auto f = j.find("filesize"); f != j.end() && !f->is_null()) {
    if (!f->is_number_unsigned()) return bad_json("'filesize' must be a non-negative integer");
    req.filesize = f->get<uint64_t>();
  }
  if (auto d = j.find("digest"); d != j.end() && d->is_string()) {
    auto h = hash_by_name(d->get<std::string>());
    if (!h) return bad_json("unknown digest '" + d->get<std::string>() + "'");
    req.digest_alg = h;
  }
  req.key_version = str_field(j, "key_version");
  if (!req.key_version.empty() && !is_version(req.key_version))
    return bad_json("'key_version' must be 64 lowercase hex digits");
  return req;
}

std::string encode_sign_response(std::span<const std::uint8_t> signature) {
  return json{{"signature", base64_encode(signature)}}.dump();
}

Result<Bytes> decode_sign_response(std::string_view body) {
  // The daemon's answer is exactly {"signature":"BASE64"}: read it without building a tree.
  constexpr std::string_view head = "{\"signature\":\"", tail = "\"}";
  if (body.size() > head.size() + tail.size() && body.substr(0, head.size()) == head &&
      body.substr(body.size() - tail.size()) == tail) {
    std::string_view b64 = body.substr(head.size(), body.size() - head.size() - tail.size());
    if (b64.find_first_of("\"\\") == std::string_view::npos) {
      auto b = base64_decode(b64);
      if (!b) return bad_json("field 'signature' is not base64");
      return *b;
    }
  }
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return bad_json("sign response is not a JSON object");
  return b64_field(j, "signature");
}

namespace {

json approval_json(const ApprovalRequest& r) {
  json j = {{"id", r.id},           {"key", r.key},         {"client", r.client},
            {"client_fingerprint", r.client_fingerprint}, {"mechanism", r.mechanism},
            {"digest", r.digest},   {"input_sha256", r.input_sha256},
            {"state", r.state},     {"created", r.created}, {"expires", r.expires}};
  if (!r.filename.empty()) j["filename"] = r.filename;
  if (r.filesize) j["filesize"] = *r.filesize;
  if (!r.decided_by.empty()) j["decided_by"] = r.decided_by;
  if (!r.decided_at.empty()) j["decided_at"] = r.decided_at;
  if (!r.reason.empty()) j["reason"] = r.reason;
  if (!r.signature.empty()) j["signature"] = base64_encode(r.signature);
  return j;
}

Result<ApprovalRequest> approval_from(const json& j) {
  if (!j.is_object()) return bad_json("request is not a JSON object");
  ApprovalRequest r;
  r.id = str_field(j, "id");
  r.state = str_field(j, "state");
  if (r.id.empty() || r.state.empty()) return bad_json("request without 'id' or 'state'");
  r.key = str_field(j, "key");
  r.client = str_field(j, "client");
  r.client_fingerprint = str_field(j, "client_fingerprint");
  r.mechanism = str_field(j, "mechanism");
  r.digest = str_field(j, "digest");
  r.input_sha256 = str_field(j, "input_sha256");
  r.filename = str_field(j, "filename");
  if (auto f = j.find("filesize"); f != j.end() && f->is_number_unsigned()) r.filesize = f->get<uint64_t>();
  r.created = str_field(j, "created");
  r.expires = str_field(j, "expires");
  r.decided_by = str_field(j, "decided_by");
  r.decided_at = str_field(j, "decided_at");
  r.reason = str_field(j, "reason");
  if (j.contains("signature") && !j["signature"].is_null()) {
    ASSIGN_OR_RETURN(r.signature, b64_field(j, "signature"));
  }
  return r;
}

}  // namespace

std::string encode_approval_request(const ApprovalRequest& r) { return approval_json(r).dump(); }

Result<ApprovalRequest> decode_approval_request(std::string_view body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) return bad_json("request is not valid JSON");
  // 202 answers wrap it as {"request": REQUEST}; GET /v1/requests/{id} sends it bare.
  if (j.is_object() && j.contains("request") && !j.contains("id")) return approval_from(j["request"]);
  return approval_from(j);
}

std::string encode_approval_list(const std::vector<ApprovalRequest>& list) {
  json arr = json::array();
  for (const auto& r : list) arr.push_back(approval_json(r));
  return json{{"requests", arr}}.dump();
}

Result<std::vector<ApprovalRequest>> decode_approval_list(std::string_view body) {
  json doc = json::parse(body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("requests") || !doc["requests"].is_array())
    return bad_json("request list is not a JSON object with a 'requests' array");
  std::vector<ApprovalRequest> out;
  for (const auto& j : doc["requests"]) {
    ASSIGN_OR_RETURN(ApprovalRequest r, approval_from(j));
    out.push_back(std::move(r));
  }
  return out;
}

std::optional<int64_t> parse_utc_time(std::string_view text) {
  std::string t(text);
  struct tm tm {};
  const char* end = strptime(t.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (!end) return std::nullopt;
  if (*end == '.')
    for (++end; *end >= '0' && *end <= '9';) ++end;
  if (std::string_view(end) != "Z") return std::nullopt;
  return static_cast<int64_t>(timegm(&tm));
}

std::string encode_problem(const Error& e) {
  char ckr[24];
  std::snprintf(ckr, sizeof ckr, "0x%08lx", static_cast<unsigned long>(e.ckr));
  json j = {{"status", e.http_status},
            {"type", std::string(kProblemTypePrefix) + error_code_name(e.code)},
            {"code", error_code_name(e.code)},
            {"ckr", ckr}};
  if (!e.message.empty()) j["detail"] = e.message;
  return j.dump();
}

Error decode_problem(int http_status, std::string_view body) {
  json j = json::parse(body, nullptr, false);
  Error e;
  if (!j.is_discarded() && j.is_object()) {
    auto code = error_code_from_name(str_field(j, "code"));
    if (code) e = Error(*code, str_field(j, "detail"));
    else e = Error(ErrorCode::internal, str_field(j, "detail"));
    std::string ckr = str_field(j, "ckr");
    if (!ckr.empty()) e.ckr = static_cast<CK_RV>(std::strtoul(ckr.c_str(), nullptr, 0));
    if (e.message.empty()) e.message = str_field(j, "title");
  } else {
    ErrorCode c = http_status == 401   ? ErrorCode::unauthenticated
                  : http_status == 403 ? ErrorCode::forbidden
                  : http_status == 404 ? ErrorCode::not_found
                  : http_status == 413 ? ErrorCode::payload_too_large
                  : http_status == 429 ? ErrorCode::quota
                  : http_status == 503 ? ErrorCode::unavailable
                  : http_status == 504 ? ErrorCode::timeout
                  : http_status >= 500 ? ErrorCode::internal
                                       : ErrorCode::bad_request;
    e = Error(c, "HTTP " + std::to_string(http_status));
  }
  e.http_status = http_status;
  return e;
}

}  // namespace p11relay::relay
