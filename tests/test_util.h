// Helpers shared by the unit tests (x_test.cpp beside the code; the source root is on the include path).
#pragma once

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace p11relay::testing {

// A fresh directory /tmp/PREFIX-XXXXXX, removed with everything in it at the end of the scope.
struct TempDir {
  std::filesystem::path path;

  explicit TempDir(const std::string& prefix = "p11relay-test") {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + tmpl + " failed");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // Writes `text` to PATH/name (its directory must exist) with `mode`; returns the file's path.
  std::string write(const std::string& name, const std::string& text, mode_t mode = 0644) const {
    auto p = path / name;
    std::ofstream(p) << text;
    chmod(p.c_str(), mode);
    return p.string();
  }
};

// How many test cases of this run were skipped because a tool they need is missing (P11R_SKIP).
inline int& skipped_cases() {
  static int n = 0;
  return n;
}

}  // namespace p11relay::testing

// Ends the current doctest case as skipped: the reason is printed, and the test program exits 77 (meson's
// SKIP) instead of 0 when nothing failed, so a missing tool shows in meson's totals instead of a pass.
#define P11R_SKIP(why)                                  \
  do {                                                  \
    MESSAGE("SKIP: " << why);                           \
    ++::p11relay::testing::skipped_cases();             \
    return;                                             \
  } while (0)
