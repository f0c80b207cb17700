// The module's log: a file named in the client config (pkcs11.logfile), never stdout. Lines carry the
// pid so a forked child's messages can be told apart. PINs and key material are never logged.
#pragma once

#include <functional>
#include <mutex>
#include <string>

namespace p11relay::shim {

enum class LogLevel { trace, debug, info, warning, error, off };

LogLevel parse_log_level(const std::string& name);

class Logger {
 public:
  // Empty path: messages at `error` go to stderr (a library must stay quiet otherwise).
  void open(const std::string& path, LogLevel level);
  void close();
  bool enabled(LogLevel level) const { return level >= level_ && level != LogLevel::off; }
  void write(LogLevel level, const std::string& message);
  bool to_file() const { return fd_ >= 0; }

 private:
  std::mutex mu_;
  std::string path_;
  LogLevel level_ = LogLevel::error;
  int fd_ = -1;
};

Logger& logger();

// What the user of a PKCS#11 program must see (the appliance cannot use its token; a signature waits
// for an approver): one line on stderr, "p11relay-pkcs11: <message>", printed once per `key` until
// clear_notice(key), whatever pkcs11.loglevel says (the log file gets it too). Tests redirect the lines.
void notice(const std::string& key, const std::string& message);
void clear_notice(const std::string& key);
void set_notice_sink(std::function<void(const std::string& line)> sink);  // nullptr: stderr

#define SHIM_LOG(level, msg)                                                       \
  do {                                                                             \
    if (::p11relay::shim::logger().enabled(::p11relay::shim::LogLevel::level))     \
      ::p11relay::shim::logger().write(::p11relay::shim::LogLevel::level, (msg));  \
  } while (0)

}  // namespace p11relay::shim
