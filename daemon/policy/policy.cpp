#include "daemon/policy/policy.h"

#include "common/mechanism.h"
#include "daemon/policy/statefile.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstdio>

namespace p11relay::daemon {
namespace {

constexpr std::array<const char*, 7> kDays = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

std::optional<int> day_index(std::string_view s) {
  if (s.size() != 3) return std::nullopt;
  std::string l(s);
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
  for (size_t i = 0; i < kDays.size(); ++i)
    if (l == kDays[i]) return static_cast<int>(i);
  return std::nullopt;
}

std::optional<int> parse_hhmm(std::string_view s) {
  if (s.size() != 5 || s[2] != ':') return std::nullopt;
  for (size_t i : {0, 1, 3, 4})
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
  int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
  if (m > 59 || h > 24 || (h == 24 && m != 0)) return std::nullopt;
  return h * 60 + m;
}

// "Mon-Fri", "Sat,Sun", "Mon-Wed,Fri" → bit set of tm_wday values.
std::optional<uint8_t> parse_days(std::string_view s) {
  uint8_t days = 0;
  while (!s.empty()) {
    size_t comma = s.find(',');
    std::string_view part = s.substr(0, comma);
    s = comma == std::string_view::npos ? std::string_view() : s.substr(comma + 1);
    size_t dash = part.find('-');
    auto from = day_index(part.substr(0, dash));
    auto to = dash == std::string_view::npos ? from : day_index(part.substr(dash + 1));
    if (!from || !to) return std::nullopt;
    for (int d = *from;; d = (d + 1) % 7) {  // "Fri-Mon" wraps over the weekend
      days |= static_cast<uint8_t>(1u << d);
      if (d == *to) break;
    }
  }
  return days ? std::optional<uint8_t>(days) : std::nullopt;
}

std::string fixed_window_name(int64_t seconds) { return seconds == 3600 ? "hour" : "day"; }

}  // namespace

Result<TimeWindow> parse_window(std::string_view text) {
  TimeWindow w;
  w.text = std::string(text);
  auto bad = [&] {
    return Error(ErrorCode::config, "time window '" + w.text +
                                        "' must look like 'Mon-Fri 07:00-19:00' or '22:00-06:00' (days optional)");
  };
  std::string_view times = text;
  if (size_t sp = text.find(' '); sp != std::string_view::npos) {
    auto days = parse_days(text.substr(0, sp));
    if (!days) return bad();
    w.days = *days;
    times = text.substr(sp + 1);
  }
  if (times.size() != 11 || times[5] != '-') return bad();
  auto start = parse_hhmm(times.substr(0, 5)), end = parse_hhmm(times.substr(6));
  if (!start || !end || *start == *end) return bad();
  w.start = *start;
  w.end = *end;
  return w;
}

bool in_window(const TimeWindow& w, const std::tm& local) {
  int minute = local.tm_hour * 60 + local.tm_min;
  auto day_on = [&](int wday) { return (w.days >> ((wday + 7) % 7)) & 1; };
  if (w.start < w.end) return day_on(local.tm_wday) && minute >= w.start && minute < w.end;
  // Past midnight: the evening part belongs to the listed day, the morning part to the day after it.
  return (day_on(local.tm_wday) && minute >= w.start) || (day_on(local.tm_wday - 1) && minute < w.end);
}

std::optional<uint32_t> digest_bit_by_name(std::string_view name) {
  if (name == "none") return kDigestNone;
  for (HashAlg a : {HashAlg::md5, HashAlg::sha1, HashAlg::sha224, HashAlg::sha256, HashAlg::sha384, HashAlg::sha512})
    if (name == hash_info(a).name) return digest_bit(a);
  return std::nullopt;
}

std::optional<HashAlg> digest_alg(uint32_t bit) {
  for (HashAlg a : {HashAlg::md5, HashAlg::sha1, HashAlg::sha224, HashAlg::sha256, HashAlg::sha384, HashAlg::sha512})
    if (bit == digest_bit(a)) return a;
  return std::nullopt;
}

std::string digest_class_name(uint32_t bit) {
  auto a = digest_alg(bit);
  return a ? hash_info(*a).name : "none";
}

uint32_t detect_digest(CK_MECHANISM_TYPE mech, const relay::SignRequest& req) {
  switch (mech) {
    case CKM_RSA_PKCS: {
      auto di = parse_digest_info(req.input);
      return di ? digest_bit(di->first) : kDigestNone;
    }
    case CKM_RSA_PKCS_PSS:
      return req.pss ? digest_bit(req.pss->hash) : kDigestNone;
    case CKM_ECDSA: {
      if (req.digest_alg && hash_info(*req.digest_alg).size == req.input.size()) return digest_bit(*req.digest_alg);
      if (req.input.size() == 16) return digest_bit(HashAlg::md5);
      auto h = hash_by_size(req.input.size());
      return h ? digest_bit(*h) : kDigestNone;
    }
    default:
      return kDigestNone;
  }
}

Status check_policy(const KeyPolicy& p, const PolicyQuery& q) {
  if (q.digest && !(p.digests & q.digest))
    return Error(ErrorCode::policy_denied, "digest " + digest_class_name(q.digest) +
                                               " is not allowed for this key (policy.digests)");
  if (q.mechanism && !p.mechanisms.empty() &&
      std::find(p.mechanisms.begin(), p.mechanisms.end(), q.mechanism) == p.mechanisms.end())
    return Error(ErrorCode::policy_denied,
                 "mechanism " + mechanism_name(q.mechanism) + " is not allowed for this key (policy.mechanisms)");
  if (!q.sigtype.empty() && !p.sigtypes.empty() &&
      std::find(p.sigtypes.begin(), p.sigtypes.end(), q.sigtype) == p.sigtypes.end())
    return Error(ErrorCode::policy_denied,
                 "signature type " + std::string(q.sigtype) + " is not allowed for this key (policy.sigtypes)");
  if (!p.windows.empty()) {
    std::tm local{};
    localtime_r(&q.now, &local);
    bool open = std::any_of(p.windows.begin(), p.windows.end(), [&](const TimeWindow& w) { return in_window(w, local); });
    if (!open) {
      std::string list;
      for (const auto& w : p.windows) list += (list.empty() ? "" : ", ") + w.text;
      return Error(ErrorCode::policy_denied, "outside the signing hours of this key (policy.windows: " + list + ")");
    }
  }
  return {};
}

bool shares_role(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  for (const auto& x : a)
    if (std::find(b.begin(), b.end(), x) != b.end()) return true;
  return false;
}

// ------------------------------------------------------------------------------------------------
// Quotas

Status Quotas::load(std::time_t now) {
  if (file_.empty()) return {};
  std::lock_guard lock(mu_);
  auto text = read_state_file(file_);
  if (!text.ok()) return text.error();
  if (text->empty()) return {};
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return Error(ErrorCode::internal, file_ + ": not a JSON object; quota counters start from zero");
  int64_t hour = now / 3600, day = now / 86400;
  for (const auto& [name, v] : j.items()) {
    if (!v.is_object()) continue;
    Counter c;
    c.hour = json_integer(v, "hour").value_or(0);
    c.day = json_integer(v, "day").value_or(0);
    auto count = [&counter = v](const char* key) {  // (clang 14: a structured binding cannot be captured)
      return static_cast<int>(std::clamp<int64_t>(json_integer(counter, key).value_or(0), 0, INT32_MAX));
    };
    c.in_hour = c.hour == hour ? count("in_hour") : 0;
    c.in_day = c.day == day ? count("in_day") : 0;
    if (c.in_hour > 0 || c.in_day > 0) counters_[name] = c;
  }
  return {};
}

Status Quotas::check_locked(Counter& c, const KeyPolicy& p, std::time_t now) {
  int64_t hour = now / 3600, day = now / 86400;
  if (c.hour != hour) c = Counter{hour, c.day, 0, c.in_day};
  if (c.day != day) c = Counter{c.hour, day, c.in_hour, 0};
  auto full = [&](int limit, int used, int64_t window) -> std::optional<Error> {
    if (limit <= 0 || used < limit) return std::nullopt;
    int retry = static_cast<int>(window - now % window);
    return Error(ErrorCode::quota, "quota of " + std::to_string(limit) + " signatures per " + fixed_window_name(window) +
                                       " for this client and key is used up; next slot in " + std::to_string(retry) +
                                       " s")
        .with_retry_after(retry);
  };
  if (auto e = full(p.perday, c.in_day, 86400)) return *e;
  if (auto e = full(p.perhour, c.in_hour, 3600)) return *e;
  return {};
}

Status Quotas::check(const std::string& client, const std::string& key, const KeyPolicy& p, std::time_t now) {
  std::lock_guard lock(mu_);
  Counter c = counters_[key + "/" + client];
  return check_locked(c, p, now);
}

Status Quotas::take(const std::string& client, const std::string& key, const KeyPolicy& p, std::time_t now,
                    bool force) {
  std::lock_guard lock(mu_);
  Counter& c = counters_[key + "/" + client];
  Status st = check_locked(c, p, now);
  if (!st.ok() && !force) return st;
  ++c.in_hour;
  ++c.in_day;
  save_locked();
  return {};
}

void Quotas::give_back(const std::string& client, const std::string& key, std::time_t now) {
  std::lock_guard lock(mu_);
  Counter& c = counters_[key + "/" + client];
  if (c.hour == now / 3600 && c.in_hour > 0) --c.in_hour;
  if (c.day == now / 86400 && c.in_day > 0) --c.in_day;
  save_locked();
}

void Quotas::save_locked() {
  if (file_.empty()) return;
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [name, c] : counters_)
    j[name] = {{"hour", c.hour}, {"day", c.day}, {"in_hour", c.in_hour}, {"in_day", c.in_day}};
  // Not fsynced: a power cut may lose the last few counts, never the file (rename is atomic).
  auto st = write_state_file(file_, j.dump(), /*durable=*/false);
  if (!st.ok()) spdlog::error("quota counters: {}", st.error().message);
}

}  // namespace p11relay::daemon
