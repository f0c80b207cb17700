// One error type for the whole product: it knows its PKCS#11 return value, its HTTP
// status and its problem type, so the daemon can send it as problem+json and the shim can map the same
// document back to the same CKR_ value.
#pragma once

#include <p11-kit/pkcs11.h>

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace p11relay {

// Stable machine-readable codes of the relay API. The wire uses the string form (error_code_name).
enum class ErrorCode {
  internal,              // 500, CKR_GENERAL_ERROR
  bad_request,           // 400, CKR_ARGUMENTS_BAD
  bad_json,              // 400, CKR_ARGUMENTS_BAD
  mechanism_invalid,     // 400, CKR_MECHANISM_INVALID
  mechanism_param,       // 400, CKR_MECHANISM_PARAM_INVALID
  data_len_range,        // 400, CKR_DATA_LEN_RANGE
  key_usage,             // 400, CKR_KEY_FUNCTION_NOT_PERMITTED
  unauthenticated,       // 401, CKR_USER_NOT_LOGGED_IN
  forbidden,             // 403, CKR_KEY_HANDLE_INVALID
  not_found,             // 404, CKR_FUNCTION_NOT_SUPPORTED
  method_not_allowed,    // 405
  payload_too_large,     // 413, CKR_DATA_LEN_RANGE
  unsupported_media,     // 415
  unavailable,           // 503, CKR_DEVICE_ERROR (token down / queue full; Retry-After)
  token_not_present,     // 503, CKR_TOKEN_NOT_PRESENT
  token_login_failed,    // 503, CKR_TOKEN_NOT_PRESENT (the daemon's login to its token was refused)
  timeout,               // 504, CKR_DEVICE_ERROR
  device_error,          // 502, CKR_DEVICE_ERROR (the token answered with an error)
  config,                // not on the wire: configuration errors (exit 2)
  network,               // not on the wire: client side transport errors
  tls_trust,             // not on the wire: the server's certificate is not trusted (CA, name or pinned key)
  timestamp_failed,      // not on the wire: the client's timestamp authority failed
  // Policy and approval (docs/policy.md).
  policy_denied,         // 403, CKR_FUNCTION_REJECTED: digest/mechanism/sigtype/time window not allowed
  quota,                 // 429, CKR_FUNCTION_REJECTED (Retry-After; clients do not retry)
  request_denied,        // 403, CKR_FUNCTION_REJECTED: an approver denied the held request
  request_expired,       // 408, CKR_FUNCTION_CANCELED: no decision before the request expired
  self_approval,         // 403, CKR_FUNCTION_REJECTED: approver == submitter (four eyes)
  not_pending,           // 409, CKR_FUNCTION_REJECTED: approve/deny of a decided request
  // A sign request's key_version names another public key or certificate chain than the key has now
  // (a client's kept key list is stale; docs/relay-api.md).
  key_changed,           // 412, CKR_KEY_CHANGED
};

const char* error_code_name(ErrorCode code);
std::optional<ErrorCode> error_code_from_name(std::string_view name);
int default_http_status(ErrorCode code);
CK_RV default_ckr(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::internal;
  std::string message;
  CK_RV ckr = CKR_GENERAL_ERROR;
  int http_status = 500;
  int retry_after = 0;  // seconds; > 0 adds a Retry-After header / tells the client to back off

  Error() = default;
  Error(ErrorCode c, std::string msg)
      : code(c), message(std::move(msg)), ckr(default_ckr(c)), http_status(default_http_status(c)) {}
  Error(ErrorCode c, std::string msg, CK_RV rv) : Error(c, std::move(msg)) { ckr = rv; }

  Error& with_retry_after(int seconds) {
    retry_after = seconds;
    return *this;
  }
  Error& with_status(int status) {
    http_status = status;
    return *this;
  }
};

// Named constructors for the common cases.
inline Error internal_error(std::string msg) { return {ErrorCode::internal, std::move(msg)}; }
inline Error bad_request(std::string msg) { return {ErrorCode::bad_request, std::move(msg)}; }
inline Error config_error(std::string msg) { return {ErrorCode::config, std::move(msg)}; }
inline Error network_error(std::string msg) { return {ErrorCode::network, std::move(msg)}; }

// Result<T>: a value or an Error (C++20 lacks std::expected).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Error error) : v_(std::move(error)) {}

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const { return std::get<Error>(v_); }
  Error&& take_error() { return std::get<Error>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : e_(std::move(error)) {}
  bool ok() const { return !e_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return *e_; }
  Error&& take_error() { return std::move(*e_); }

 private:
  std::optional<Error> e_;
};

using Status = Result<void>;

}  // namespace p11relay

// Flat happy paths: ASSIGN_OR_RETURN(auto x, f()); RETURN_IF_ERROR(g());
#define P11R_CONCAT_(a, b) a##b
#define P11R_CONCAT(a, b) P11R_CONCAT_(a, b)
#define P11R_ASSIGN_OR_RETURN_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.take_error();      \
  lhs = std::move(tmp).value()
#define ASSIGN_OR_RETURN(lhs, expr) P11R_ASSIGN_OR_RETURN_(P11R_CONCAT(p11r_r_, __LINE__), lhs, expr)
#define RETURN_IF_ERROR(expr)                       \
  do {                                              \
    auto p11r_s_ = (expr);                          \
    if (!p11r_s_.ok()) return p11r_s_.take_error(); \
  } while (0)
