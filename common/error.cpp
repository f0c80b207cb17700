#include "common/error.h"

#include <array>
#include <string_view>

namespace p11relay {
namespace {

struct Row {
  ErrorCode code;
  const char* name;
  int status;
  CK_RV ckr;
};

constexpr std::array kRows = {
    Row{ErrorCode::internal, "internal", 500, CKR_GENERAL_ERROR},
    Row{ErrorCode::bad_request, "bad-request", 400, CKR_ARGUMENTS_BAD},
    Row{ErrorCode::bad_json, "bad-json", 400, CKR_ARGUMENTS_BAD},
    Row{ErrorCode::mechanism_invalid, "mechanism-invalid", 400, CKR_MECHANISM_INVALID},
    Row{ErrorCode::mechanism_param, "mechanism-param-invalid", 400, CKR_MECHANISM_PARAM_INVALID},
    Row{ErrorCode::data_len_range, "data-len-range", 400, CKR_DATA_LEN_RANGE},
    Row{ErrorCode::key_usage, "key-usage", 400, CKR_KEY_FUNCTION_NOT_PERMITTED},
    Row{ErrorCode::unauthenticated, "unauthenticated", 401, CKR_USER_NOT_LOGGED_IN},
    Row{ErrorCode::forbidden, "forbidden", 403, CKR_KEY_HANDLE_INVALID},
    Row{ErrorCode::not_found, "not-found", 404, CKR_FUNCTION_NOT_SUPPORTED},
    Row{ErrorCode::method_not_allowed, "method-not-allowed", 405, CKR_FUNCTION_NOT_SUPPORTED},
    Row{ErrorCode::payload_too_large, "payload-too-large", 413, CKR_DATA_LEN_RANGE},
    Row{ErrorCode::unsupported_media, "unsupported-media-type", 415, CKR_ARGUMENTS_BAD},
    Row{ErrorCode::unavailable, "unavailable", 503, CKR_DEVICE_ERROR},
    Row{ErrorCode::token_not_present, "token-not-present", 503, CKR_TOKEN_NOT_PRESENT},
    Row{ErrorCode::token_login_failed, "token-login-failed", 503, CKR_TOKEN_NOT_PRESENT},
    Row{ErrorCode::timeout, "timeout", 504, CKR_DEVICE_ERROR},
    Row{ErrorCode::device_error, "device-error", 502, CKR_DEVICE_ERROR},
    Row{ErrorCode::config, "config", 500, CKR_GENERAL_ERROR},
    Row{ErrorCode::network, "network", 503, CKR_DEVICE_ERROR},
    Row{ErrorCode::tls_trust, "tls-trust", 503, CKR_DEVICE_ERROR},
    Row{ErrorCode::timestamp_failed, "timestamp-failed", 502, CKR_DEVICE_ERROR},
    Row{ErrorCode::policy_denied, "policy-denied", 403, CKR_FUNCTION_REJECTED},
    Row{ErrorCode::quota, "quota-exceeded", 429, CKR_FUNCTION_REJECTED},
    Row{ErrorCode::request_denied, "request-denied", 403, CKR_FUNCTION_REJECTED},
    Row{ErrorCode::request_expired, "request-expired", 408, CKR_FUNCTION_CANCELED},
    Row{ErrorCode::self_approval, "self-approval", 403, CKR_FUNCTION_REJECTED},
    Row{ErrorCode::not_pending, "not-pending", 409, CKR_FUNCTION_REJECTED},
    Row{ErrorCode::key_changed, "key-changed", 412, CKR_KEY_CHANGED},
};

const Row& row(ErrorCode code) {
  for (const auto& r : kRows)
    if (r.code == code) return r;
  return kRows[0];
}

}  // namespace

const char* error_code_name(ErrorCode code) { return row(code).name; }
int default_http_status(ErrorCode code) { return row(code).status; }
CK_RV default_ckr(ErrorCode code) { return row(code).ckr; }

std::optional<ErrorCode> error_code_from_name(std::string_view name) {
  for (const auto& r : kRows)
    if (name == r.name) return r.code;
  return std::nullopt;
}

}  // namespace p11relay
