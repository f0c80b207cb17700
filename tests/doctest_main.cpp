// main() of every unit-test program: doctest's runner, plus meson's SKIP (exit 77) when a case was
// skipped with P11R_SKIP (a tool it needs is missing) and nothing failed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "test_util.h"

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  int rc = context.run();
  if (context.shouldExit() || rc != 0) return rc;
  int skipped = p11relay::testing::skipped_cases();
  if (skipped > 0) {
    std::fprintf(stderr, "%d test case(s) skipped (see the SKIP: lines above); reporting SKIP (77)\n", skipped);
    return 77;
  }
  return 0;
}
