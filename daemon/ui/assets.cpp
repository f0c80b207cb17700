// The web UI's only static asset, compiled into the daemon: no file to install, nothing from elsewhere.
#include "daemon/ui/pages.h"

namespace p11relay::daemon::ui {

const char* const kStylesheet = R"css(
:root { --fg: #1d2330; --muted: #5b6475; --line: #d8dde6; --accent: #1f5fbf; --ok: #1d7a3a; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: #f5f7fa; }
header { display: flex; align-items: center; gap: 24px; padding: 10px 24px; background: #1d2330; color: #fff; }
header .brand { font-weight: 700; letter-spacing: .04em; }
header nav a { color: #cfd6e4; text-decoration: none; margin-right: 18px; }
header nav a[aria-current=page] { color: #fff; border-bottom: 2px solid #7fb0ff; }
header .who { margin-left: auto; color: #cfd6e4; font-size: 13px; }
main { padding: 16px 24px 40px; max-width: 1400px; }
h1 { font-size: 20px; margin: 6px 0 14px; }
h2 { font-size: 16px; margin: 22px 0 8px; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f6; font-weight: 600; font-size: 13px; }
td.mono, span.mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; word-break: break-all; }
form.inline { display: inline-flex; gap: 6px; margin: 0 0 4px; }
input[type=text], input[type=search] { padding: 4px 6px; border: 1px solid #b9c1cf; border-radius: 3px; }
button { padding: 4px 10px; border-radius: 3px; border: 1px solid transparent; cursor: pointer; font-weight: 600; }
button.approve { background: var(--ok); color: #fff; }
button.deny { background: var(--bad); color: #fff; }
button.search { background: var(--accent); color: #fff; }
p.ok { color: var(--ok); font-weight: 600; }
p.error, span.bad { color: var(--bad); font-weight: 600; }
span.good { color: var(--ok); font-weight: 600; }
p.note { color: var(--muted); }
.pager { margin: 10px 0; display: flex; gap: 14px; }
svg.plot { background: #fff; border: 1px solid var(--line); }
svg.plot rect.bar { fill: var(--accent); }
svg.plot text { font-size: 10px; fill: var(--muted); }
)css";

}  // namespace p11relay::daemon::ui
