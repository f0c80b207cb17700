// relic's binary patch format (docs/relic-protocol.md §7): what the Relic API's pe-coff signer returns and
// what relic clients apply. All integers big-endian.
#pragma once

#include "common/bytes.h"
#include "common/error.h"

#include <cstdint>
#include <span>
#include <vector>

namespace p11relay::authenticode::binpatch {

inline constexpr const char* kMimeType = "application/x-binary-patch";

struct Record {
  uint64_t offset = 0;    // in the original file
  uint64_t old_size = 0;  // bytes of the original removed at offset
  Bytes data;             // bytes inserted there
};

struct Patch {
  std::vector<Record> records;
};

// Serialises: records sorted by offset, adjacent records coalesced, old sizes above 4 GiB - 1 split
// into several records (as relic's builder does). Overlapping records are an error.
Result<Bytes> serialize(const Patch& patch);
// Parses and validates a patch: version 1, record table and blobs within the buffer, records sorted
// and non-overlapping.
Result<Patch> parse(std::span<const uint8_t> data);
// Applies a patch to a whole file in memory; records that reach past the end of the original are an
// error.
Result<Bytes> apply(std::span<const uint8_t> original, const Patch& patch);

}  // namespace p11relay::authenticode::binpatch
