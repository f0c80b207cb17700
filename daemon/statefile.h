// Small files in the daemon's state directory (server.statedir): written atomically (temporary file,
// rename), and with durable=true also fsynced along with their directory, so after a crash a file
// holds either its old or its new content, never a torn one.
#pragma once

#include "common/error.h"

#include <string>
#include <string_view>
#include <vector>

namespace p11relay::daemon {

Status write_state_file(const std::string& path, std::string_view data, bool durable);
// The file's content; "" for a file that does not exist.
Result<std::string> read_state_file(const std::string& path);
// Creates the directory (mode 0700) if missing and checks that the daemon can write to it.
Status ensure_state_dir(const std::string& dir);
// Names of the regular files in dir ending in suffix.
std::vector<std::string> list_state_files(const std::string& dir, std::string_view suffix);

}  // namespace p11relay::daemon
