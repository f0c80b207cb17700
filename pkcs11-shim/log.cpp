#include "pkcs11-shim/log.h"

#include <fcntl.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <map>

namespace p11relay::shim {

LogLevel parse_log_level(const std::string& name) {
  if (name == "trace") return LogLevel::trace;
  if (name == "debug") return LogLevel::debug;
  if (name == "info") return LogLevel::info;
  if (name == "warning" || name == "warn") return LogLevel::warning;
  if (name == "error") return LogLevel::error;
  if (name == "off") return LogLevel::off;
  return LogLevel::warning;
}

Logger& logger() {
  static Logger* l = new Logger();  // never destroyed: C_* may run during the host's exit
  return *l;
}

void Logger::open(const std::string& path, LogLevel level) {
  std::lock_guard<std::mutex> g(mu_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  path_ = path;
  level_ = level;
  if (!path.empty()) fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

void Logger::close() {
  std::lock_guard<std::mutex> g(mu_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  path_.clear();
  level_ = LogLevel::error;
}

void Logger::write(LogLevel level, const std::string& message) {
  static const char* names[] = {"trace", "debug", "info", "warning", "error", "off"};
  struct timeval tv;
  ::gettimeofday(&tv, nullptr);
  struct tm tm;
  ::gmtime_r(&tv.tv_sec, &tm);
  char head[96];
  std::snprintf(head, sizeof head, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ p11relay-pkcs11[%d] %s: ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<long>(tv.tv_usec / 1000),
                static_cast<int>(::getpid()), names[static_cast<int>(level)]);
  std::string line = head + message + "\n";
  // One write(2) per line with O_APPEND: lines from threads and forked children do not interleave.
  int fd = fd_;
  if (fd < 0 && path_.empty()) fd = 2;
  if (fd >= 0) {
    ssize_t n = ::write(fd, line.data(), line.size());
    (void)n;
  }
}

namespace {

struct Notices {
  std::mutex mu;
  std::map<std::string, std::string> shown;  // key → the message last printed for it
  std::function<void(const std::string&)> sink;
};

Notices& notices() {
  static Notices* n = new Notices();  // never destroyed, like logger()
  return *n;
}

}  // namespace

void notice(const std::string& key, const std::string& message) {
  std::string line = "p11relay-pkcs11: " + message + "\n";
  {
    Notices& n = notices();
    std::lock_guard<std::mutex> g(n.mu);
    auto it = n.shown.find(key);
    if (it != n.shown.end() && it->second == message) return;
    n.shown[key] = message;
    if (n.sink) {
      n.sink(line);
    } else {
      ssize_t w = ::write(2, line.data(), line.size());  // one write(2): lines do not interleave
      (void)w;
    }
  }
  if (logger().to_file()) SHIM_LOG(warning, message);  // without a log file, stderr already has it
}

void clear_notice(const std::string& key) {
  Notices& n = notices();
  std::lock_guard<std::mutex> g(n.mu);
  n.shown.erase(key);
}

void set_notice_sink(std::function<void(const std::string& line)> sink) {
  Notices& n = notices();
  std::lock_guard<std::mutex> g(n.mu);
  n.sink = std::move(sink);
  n.shown.clear();
}

}  // namespace p11relay::shim
