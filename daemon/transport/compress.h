// Request body decoding for relic's HTTP compression (docs/relic-protocol.md §6): gzip and the Snappy
// framing format ("x-snappy-framed"), streaming, with an output limit (no decompression bombs).
#pragma once

#include "common/error.h"

#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace p11relay::daemon {

class Decoder {
 public:
  using Sink = std::function<bool(std::string_view)>;  // false = stop (the sink recorded why)
  virtual ~Decoder() = default;
  virtual Status write(std::string_view in, const Sink& out) = 0;
  virtual Status finish(const Sink& out) = 0;  // input ended: must be at a clean boundary
};

// nullptr for an unknown encoding (→ 415).
std::unique_ptr<Decoder> make_decoder(std::string_view content_encoding, uint64_t max_output);

// CRC-32C (Castagnoli), as the Snappy framing format masks it.
uint32_t crc32c(const void* data, size_t n);

}  // namespace p11relay::daemon
