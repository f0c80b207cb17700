// Configuration errors that point at the YAML: "FILE:LINE: what". Shared by the daemon's and the
// client's config loaders (both link yaml-cpp; common/ itself does not, so this stays header-only).
#pragma once

#include "common/error.h"

#include <yaml-cpp/yaml.h>

#include <string>

namespace p11relay {

inline Error yaml_error(const std::string& file, const YAML::Node& n, const std::string& what) {
  std::string where = file;
  if (n.IsDefined() && n.Mark().line >= 0) where += ":" + std::to_string(n.Mark().line + 1);
  return config_error(where + ": " + what);
}

}  // namespace p11relay
