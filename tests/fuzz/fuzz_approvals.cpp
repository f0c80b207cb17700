// libFuzzer target: the approval workflow's JSON — the approve/deny bodies and the held-request
// state files the daemon decodes (daemon/policy/approvals.h), and the REQUEST object and list the clients decode
// (common/relay_api.h). A decoded state file encodes and decodes again to the same request.
#include "common/relay_api.h"
#include "daemon/policy/approvals.h"

#include <cstdint>
#include <cstdlib>
#include <string_view>

using namespace p11relay;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  (void)daemon::decode_decision_body(body, "reason", true);
  (void)daemon::decode_decision_body(body, "comment", false);
  if (auto r = daemon::decode_held(body); r.ok()) {
    auto again = daemon::decode_held(daemon::encode_held(*r));
    if (!again.ok()) std::abort();
    if (again->info.id != r->info.id || again->info.state != r->info.state || again->input != r->input ||
        again->idem != r->idem || again->expires != r->expires || again->pss.has_value() != r->pss.has_value())
      std::abort();
    (void)daemon::wire_view(*r, true);
  }
  (void)relay::decode_approval_request(body);
  (void)relay::decode_approval_list(body);
  return 0;
}
