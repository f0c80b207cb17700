// Umbrella header for Authenticode signing of PE files (docs/relic-protocol.md §7, §9, §10).
//
// Daemon, relic pe-coff (upload streamed, answer is a binpatch):
//   PeDigester d({.alg = alg, .page_hashes = ph, .keep_cert_table = false});
//   for each body chunk: RETURN_IF_ERROR(d.update(chunk));          // errors are bad_request (4xx)
//   ASSIGN_OR_RETURN(PeInfo pe, d.finish());
//   ASSIGN_OR_RETURN(Bytes sd, build_signed_data(pe, chain, {description, url}, token_signer));
//   if (timestamp) ASSIGN_OR_RETURN(sd, add_timestamp(sd, {urls, timeout}, &info));
//   ASSIGN_OR_RETURN(binpatch::Patch p, make_pe_patch(pe, sd));
//   ASSIGN_OR_RETURN(Bytes body, binpatch::serialize(p));          // Content-Type binpatch::kMimeType
//
// CLI, `p11relay sign` (file never leaves the client; only the attribute digest goes to the daemon):
//   ASSIGN_OR_RETURN(PeInfo pe, pe_digest_file(in, {.alg = alg, .page_hashes = ph}, progress));
//   ASSIGN_OR_RETURN(Bytes sd, build_signed_data(pe, chain, opts, relay_signer));
//   RETURN_IF_ERROR(write_signed_file(in, out, pe, sd, append ? EmbedMode::nest : EmbedMode::replace));
//
// `p11relay verify`: verify_pe(file bytes) -> VerifyReport (signer subject, digest algorithm, …).
#pragma once

#include "common/authenticode/binpatch.h"
#include "common/authenticode/pe_digest.h"
#include "common/authenticode/pe_write.h"
#include "common/authenticode/signed_data.h"
#include "common/authenticode/timestamp.h"
#include "common/authenticode/verify.h"
