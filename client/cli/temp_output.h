// The signed file is written to a temp file beside the output and renamed into place, so a failure
// leaves the output as it was.
#pragma once

#include "common/error.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <utility>

namespace p11relay::cli {

// A temp file beside `out`, renamed onto it by commit(); removed otherwise.
class TempOutput {
 public:
  static Result<TempOutput> create(const std::string& out, unsigned mode) {
    TempOutput t;
    t.out_ = out;
    t.tmp_ = out + ".p11relay-XXXXXX";
    t.fd_ = ::mkostemp(t.tmp_.data(), O_CLOEXEC);
    if (t.fd_ < 0) return bad_request("cannot create a temp file beside " + out + ": " + std::strerror(errno));
    ::fchmod(t.fd_, mode);
    return t;
  }
  TempOutput(TempOutput&& o) noexcept : out_(std::move(o.out_)), tmp_(std::move(o.tmp_)), fd_(std::exchange(o.fd_, -1)) {}
  TempOutput& operator=(TempOutput&&) = delete;
  ~TempOutput() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  Status write(std::span<const uint8_t> p) {
    while (!p.empty()) {
      ssize_t n = ::write(fd_, p.data(), p.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return bad_request("cannot write " + tmp_ + ": " + std::strerror(errno));
      p = p.subspan(static_cast<size_t>(n));
    }
    return {};
  }
  Status commit() {
    const int fd = std::exchange(fd_, -1);
    Status s = ::close(fd) == 0 ? Status{} : bad_request("cannot write " + tmp_ + ": " + std::strerror(errno));
    if (s.ok() && std::rename(tmp_.c_str(), out_.c_str()) != 0)
      s = bad_request("cannot rename " + tmp_ + " to " + out_ + ": " + std::strerror(errno));
    if (!s.ok()) ::unlink(tmp_.c_str());
    return s;
  }

 private:
  TempOutput() = default;
  std::string out_, tmp_;
  int fd_ = -1;
};

}  // namespace p11relay::cli
