// libFuzzer target: the YAML config loader (daemon/config/config.h load_config) on a temp file, secrets not
// read (the pinfile check is covered by unit tests). Errors are fine; crashes, hangs and leaks are not.
// The file lives in a private temp dir so relative paths in the input resolve there.
#include "daemon/config/config.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

using namespace p11relay;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::string path = [] {
    spdlog::set_level(spdlog::level::off);
    char dir[] = "/tmp/fuzz-config-XXXXXX";
    if (!mkdtemp(dir)) std::abort();
    return std::string(dir) + "/p11relayd.yml";
  }();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
  auto c = daemon::load_config(path, false);
  if (c.ok()) (void)daemon::dump_redacted(*c);
  return 0;
}
