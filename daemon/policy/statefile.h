// Small files in the daemon's state directory (server.statedir): written atomically (temporary file,
// rename), and with durable=true also fsynced along with their directory, so after a crash a file
// holds either its old or its new content, never a torn one.
#pragma once

#include "common/error.h"

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
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
// The member `key` of a state file's JSON object as an int64, or nullopt when it is missing or not an integer
// in range. (nlohmann's get<int64_t>() turns a float such as 1e30 into an integer with undefined behaviour
// and throws for a string: fuzz_approvals.)
std::optional<std::int64_t> json_integer(const nlohmann::json& object, const char* key);

}  // namespace p11relay::daemon
