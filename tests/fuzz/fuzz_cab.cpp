// libFuzzer target: the cabinet check, plan, streaming digester and verification (common/authenticode/cab.cpp). A crash or a sanitizer report is
// a bug; hostile input must be an error. For a cabinet it accepts: the plan stays inside the file, the signed
// cabinet it describes is accepted in turn with the same digest, and its signature is found where it was put.
#include "common/authenticode/cab.h"

#include <cstdint>
#include <algorithm>
#include <cstdlib>

using namespace p11relay;
using namespace p11relay::authenticode;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  (void)cab_signature(in);
  (void)verify_cab(in);  // a signature area that is not a SignedData, or does not match: an error
  auto plan = cab_plan(in);
  // The streaming digester (relic's cab signer), fed in pieces of a size taken from the input, agrees with it.
  CabDigester stream(HashAlg::sha256);
  const size_t step = size ? data[size - 1] % 61 + 1 : 1;
  bool fed = true;
  for (size_t at = 0; at < size && fed; at += step) fed = stream.update(in.subspan(at, std::min(step, size - at))).ok();
  auto streamed = fed ? stream.finish() : Result<std::pair<CabPlan, Bytes>>(bad_request("refused"));
  if (streamed.ok() != plan.ok()) abort();
  if (!plan.ok()) return 0;
  if (plan->tail_from > plan->tail_to || plan->tail_to > in.size()) abort();
  const Bytes d = cab_digest(*plan, in, HashAlg::sha256);
  if (streamed->second != d || streamed->first.head != plan->head) abort();
  const Bytes sig(size % 23 + 1, 0x30);
  Bytes area = cab_signature_area(*plan, sig);
  Bytes out = plan->head;
  out.insert(out.end(), in.begin() + static_cast<std::ptrdiff_t>(plan->tail_from),
             in.begin() + static_cast<std::ptrdiff_t>(plan->tail_to));
  out.insert(out.end(), area.begin(), area.end());
  auto again = cab_plan(out);
  if (!again.ok() || !again->was_signed || cab_digest(*again, out, HashAlg::sha256) != d) abort();
  auto found = cab_signature(out);
  if (!found.ok() || found->size() != area.size()) abort();
  return 0;
}
