#include "common/suggest.h"

#include <doctest/doctest.h>

using p11relay::did_you_mean;
using p11relay::nearest;

TEST_CASE("nearest: typos of config keys find the key") {
  const std::set<std::string> server = {"listen", "listenmetrics", "certfile", "keyfile", "cacert", "auditfile",
                                        "statedir", "maxconnections"};
  CHECK(nearest("listne", server) == "listen");          // two neighbours swapped
  CHECK(nearest("lisen", server) == "listen");           // one letter missing
  CHECK(nearest("Listen", server) == "listen");          // case
  CHECK(nearest("certfiel", server) == "certfile");
  CHECK(nearest("audit_file", server) == "auditfile");   // one letter too many
  CHECK(nearest("maxconnection", server) == "maxconnections");
  CHECK(nearest("listenmetric", server) == "listenmetrics");
}

TEST_CASE("nearest: unrelated words and empty sets find nothing") {
  const std::set<std::string> keys = {"url", "urls", "certfile", "keyfile"};
  CHECK_FALSE(nearest("password", keys));
  CHECK_FALSE(nearest("pin", keys));     // 3 letters: at most one edit, "url" is three away
  CHECK_FALSE(nearest("x", {}));
  CHECK_FALSE(nearest(std::string(1000, 'a'), keys));
  CHECK(did_you_mean("password", keys).empty());
  CHECK(did_you_mean("keyfil", keys) == " (did you mean 'keyfile'?)");
}
