// Little-endian fields of the Windows containers (PE, OLE compound files, cabinets): read at an offset the
// caller has already checked against the size, written in place, or appended.
#pragma once

#include "common/bytes.h"

#include <cstddef>
#include <cstdint>
#include <span>

namespace p11relay::authenticode::le {

inline uint16_t get16(std::span<const uint8_t> b, size_t at) {
  return static_cast<uint16_t>(b[at] | (b[at + 1] << 8));
}
inline uint32_t get32(std::span<const uint8_t> b, size_t at) {
  return static_cast<uint32_t>(b[at]) | (static_cast<uint32_t>(b[at + 1]) << 8) |
         (static_cast<uint32_t>(b[at + 2]) << 16) | (static_cast<uint32_t>(b[at + 3]) << 24);
}
inline void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void put16(Bytes& b, size_t at, uint16_t v) { put16(b.data() + at, v); }
inline void put32(Bytes& b, size_t at, uint32_t v) { put32(b.data() + at, v); }
// Appends the low `n` bytes of `v`.
inline void append(Bytes& out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

}  // namespace p11relay::authenticode::le
