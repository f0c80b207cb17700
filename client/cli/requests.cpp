// `p11relay requests list|show|approve|deny`: the approval workflow for administrators (docs/policy.md).
// An approver is an ordinary client whose role is in the key's policy.approvers; the daemon decides
// who may see and decide what, so these commands only ask and print.
#include "client/cli/cli.h"

#include <iomanip>
#include <iostream>

namespace p11relay::cli {

namespace {

constexpr size_t kMaxReason = 500;

// Fields come from other clients (a file name, a reason): never let them drive the terminal.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) out += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
  return out.empty() ? "-" : out;
}

std::string file_of(const relay::ApprovalRequest& r) {
  if (r.filename.empty() && !r.filesize) return "-";
  std::string s = r.filename.empty() ? "?" : printable(r.filename);
  if (r.filesize) s += " (" + std::to_string(*r.filesize) + " bytes)";
  return s;
}

// The daemon answers 403 `forbidden` alike for an unknown id and a request this client may not
// decide, so the hint covers both.
Error explain(Error e, const std::string& id) {
  std::string detail = e.message.empty() ? "" : " (" + e.message + ")";
  switch (e.code) {
    case ErrorCode::forbidden:
    case ErrorCode::not_found:
      e.message = "request " + id + " does not exist or this client may not see or decide it: approvers are "
                  "clients with a role listed in the key's policy.approvers (default: admin)" + detail;
      break;
    case ErrorCode::self_approval:
      e.message = "request " + id + " was submitted by this client; another approver must approve it (four eyes)" + detail;
      break;
    case ErrorCode::not_pending:
      e.message = "request " + id + " is no longer pending (already decided or expired)" + detail;
      break;
    default:
      break;
  }
  return e;
}

void print_table(const std::vector<relay::ApprovalRequest>& list) {
  auto row = [](const std::string& id, const std::string& state, const std::string& key, const std::string& client,
                const std::string& digest, const std::string& expires, const std::string& file) {
    std::cout << std::left << std::setw(20) << id << " " << std::setw(8) << state << " " << std::setw(12) << key << " "
              << std::setw(16) << client << " " << std::setw(7) << digest << " " << std::setw(21) << expires << " "
              << file << "\n";
  };
  row("ID", "STATE", "KEY", "CLIENT", "DIGEST", "EXPIRES", "FILE");
  for (const auto& r : list)
    row(printable(r.id), printable(r.state), printable(r.key), printable(r.client), printable(r.digest),
        printable(r.expires), file_of(r));
}

void print_request(const relay::ApprovalRequest& r) {
  auto line = [](const char* label, const std::string& value) {
    std::cout << std::left << std::setw(14) << label << printable(value) << "\n";
  };
  line("id:", r.id);
  line("state:", r.state);
  line("key:", r.key);
  line("client:", r.client + (r.client_fingerprint.empty() ? "" : " (" + r.client_fingerprint + ")"));
  line("mechanism:", r.mechanism);
  line("digest:", r.digest);
  line("input sha256:", r.input_sha256);
  std::cout << std::left << std::setw(14) << "file:" << file_of(r) << "\n";
  line("created:", r.created);
  line("expires:", r.expires);
  if (!r.decided_by.empty()) line("decided by:", r.decided_by + (r.decided_at.empty() ? "" : " at " + r.decided_at));
  if (!r.reason.empty()) line("reason:", r.reason);
}

Status list(const Globals& g, bool all, bool json) {
  ASSIGN_OR_RETURN(auto c, connect(g));
  ASSIGN_OR_RETURN(auto requests, c->list_requests(all));
  if (json) {
    std::cout << relay::encode_approval_list(requests) << "\n";
    return {};
  }
  if (requests.empty()) {
    std::cerr << "p11relay: no " << (all ? "" : "pending ") << "requests that this client may decide\n";
    return {};
  }
  print_table(requests);
  return {};
}

Status show(const Globals& g, const std::string& id, bool json) {
  ASSIGN_OR_RETURN(auto c, connect(g));
  auto r = c->get_request(id);
  if (!r.ok()) return explain(r.take_error(), id);
  if (json) std::cout << relay::encode_approval_request(*r) << "\n";
  else print_request(*r);
  return {};
}

Status decide(const Globals& g, const std::string& id, bool approve, const std::string& text) {
  if (!approve && trim(text).empty()) return bad_request("give the reason for the denial with --reason TEXT");
  if (text.size() > kMaxReason)
    return bad_request(std::string(approve ? "--comment" : "--reason") + " is longer than 500 characters");
  ASSIGN_OR_RETURN(auto c, connect(g));
  auto r = approve ? c->approve_request(id, text) : c->deny_request(id, text);
  if (!r.ok()) return explain(r.take_error(), id);
  std::cout << "request " << printable(r->id) << " (key " << printable(r->key) << ", client " << printable(r->client)
            << ") " << (approve ? "approved" : "denied") << "; state: " << printable(r->state) << "\n";
  return {};
}

}  // namespace

void add_request_commands(CLI::App& app, Globals& g) {
  auto* group = app.add_subcommand("requests", "approve or deny signing requests held by a key's policy (approvers)");
  group->require_subcommand(1);
  group->add_option("--url", g.url,
                    "the daemon that holds the request (https://host:port/), instead of the configured URLs");
  {
    auto all = std::make_shared<bool>(false), json = std::make_shared<bool>(false);
    auto* cmd = group->add_subcommand("list", "list the held requests this client may decide (oldest first)");
    cmd->add_flag("--all", *all, "include decided and expired requests");
    cmd->add_flag("--json", *json, "print {\"requests\": [...]} as the daemon sends it");
    cmd->callback([&g, all, json] { g.run = [&g, all, json] { return list(g, *all, *json); }; });
  }
  {
    auto id = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    auto* cmd = group->add_subcommand("show", "show one request: key, client, digest, file, times, decision");
    cmd->add_option("ID", *id, "request id (r-...)")->required();
    cmd->add_flag("--json", *json, "print the request as JSON");
    cmd->callback([&g, id, json] { g.run = [&g, id, json] { return show(g, *id, *json); }; });
  }
  {
    auto id = std::make_shared<std::string>(), comment = std::make_shared<std::string>();
    auto* cmd = group->add_subcommand("approve", "approve a pending request; the daemon signs it at once");
    cmd->add_option("ID", *id, "request id (r-...)")->required();
    cmd->add_option("--comment", *comment, "a note for the audit log");
    cmd->callback([&g, id, comment] { g.run = [&g, id, comment] { return decide(g, *id, true, *comment); }; });
  }
  {
    auto id = std::make_shared<std::string>(), reason = std::make_shared<std::string>();
    auto* cmd = group->add_subcommand("deny", "deny a pending request; its client gets the reason");
    cmd->add_option("ID", *id, "request id (r-...)")->required();
    cmd->add_option("--reason", *reason, "why (required, at most 500 characters; the submitter sees it)")->required();
    cmd->callback([&g, id, reason] { g.run = [&g, id, reason] { return decide(g, *id, false, *reason); }; });
  }
}

}  // namespace p11relay::cli
