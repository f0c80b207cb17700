// libFuzzer target: what the web UI reads from outside — the audit file's lines (daemon/ui/audit_view.h)
// and any text it escapes into a page (daemon/ui/html.h). Escaped text holds no markup character.
#include "daemon/ui/audit_view.h"
#include "daemon/ui/html.h"

#include <cstdint>
#include <cstdlib>
#include <string>

using namespace p11relay::daemon::ui;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  AuditQuery q;
  q.text = text.substr(0, 8);
  q.per_page = 3;
  q.page = size % 4;
  AuditView v = view_audit(text, q, 1'800'000'000);
  if (v.rows.size() > q.per_page || v.rows.size() > v.matches) std::abort();
  std::string e = esc(text);
  if (e.find_first_of("<>\"'") != std::string::npos) std::abort();
  return 0;
}
