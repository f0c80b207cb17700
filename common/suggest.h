// "Did you mean ...?" for a word that is not one of a known set: config keys (the daemon's and the
// client's loaders) and names a user typed.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <string_view>

namespace p11relay {

// The candidate closest to `word` (case-insensitive edit distance: insert, delete, substitute, swap of two
// neighbours), when it is close enough to be a typo: at most 1 edit for words up to 4 letters, 2 up to 8,
// 3 beyond. Ties go to the first in the set's order.
std::optional<std::string> nearest(std::string_view word, const std::set<std::string>& candidates);

// "" or " (did you mean 'X'?)" for a message.
std::string did_you_mean(std::string_view word, const std::set<std::string>& candidates);

}  // namespace p11relay
