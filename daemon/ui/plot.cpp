// The status page's plot: signatures per hour over the last 24 hours as a server-rendered SVG bar
// chart (no script, no inline style: the colours come from the stylesheet).
#include "daemon/ui/pages.h"

#include <algorithm>
#include <ctime>

namespace p11relay::daemon::ui {

std::string signatures_plot(const std::array<int, 24>& per_hour, int64_t now) {
  constexpr int kW = 720, kH = 200, kLeft = 40, kBottom = 24, kTop = 12, kBar = (kW - kLeft) / 24;
  int max = std::max(1, *std::max_element(per_hour.begin(), per_hour.end()));
  int total = 0;
  std::string s = "<svg class=\"plot\" id=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(kW) +
                  "\" height=\"" + std::to_string(kH) + "\" role=\"img\" aria-label=\"Signatures per hour\">";
  int plot_h = kH - kBottom - kTop;
  s += "<text x=\"4\" y=\"" + std::to_string(kTop + 8) + "\">" + std::to_string(max) + "</text>";
  s += "<text x=\"4\" y=\"" + std::to_string(kH - kBottom) + "\">0</text>";
  for (size_t i = 0; i < per_hour.size(); ++i) {
    total += per_hour[i];
    int h = per_hour[i] * plot_h / max;
    int x = kLeft + static_cast<int>(i) * kBar;
    s += "<rect class=\"bar\" x=\"" + std::to_string(x + 2) + "\" y=\"" + std::to_string(kH - kBottom - h) +
         "\" width=\"" + std::to_string(kBar - 4) + "\" height=\"" + std::to_string(h) + "\"><title>" +
         std::to_string(per_hour[i]) + " signature(s)</title></rect>";
    if (i % 3 == 2 || i == 23) {
      std::time_t t = static_cast<std::time_t>(now - static_cast<int64_t>(23 - i) * 3600);
      std::tm tm{};
      gmtime_r(&t, &tm);
      char label[8];
      std::strftime(label, sizeof label, "%H:00", &tm);
      s += "<text x=\"" + std::to_string(x) + "\" y=\"" + std::to_string(kH - 8) + "\">" + label + "</text>";
    }
  }
  s += "</svg>";
  return s + "<p class=\"note\" id=\"plot-total\">" + std::to_string(total) +
         " signature(s) in the last 24 hours; one bar per hour (UTC), the rightmost is the current hour.</p>";
}

}  // namespace p11relay::daemon::ui
