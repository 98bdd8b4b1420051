// Bit packing of up to 128 unsigned values at a fixed width (0..32 bits), least significant bit first.
// Unpacking reads 64-bit little-endian words at arbitrary byte offsets, so every buffer handed to
// unpack() must have at least 8 readable bytes past the packed data (index sections are padded).
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

namespace irforge {

inline uint32_t bit_width(uint32_t v) { return v == 0 ? 0u : 32u - static_cast<uint32_t>(__builtin_clz(v)); }

inline size_t packed_bytes(size_t n, uint32_t width) { return (n * width + 7) / 8; }

inline void pack(const uint32_t* values, size_t n, uint32_t width, std::vector<unsigned char>& out) {
  const size_t start = out.size();
  out.resize(start + packed_bytes(n, width), 0);
  if (width == 0) return;
  unsigned char* base = out.data() + start;
  uint64_t bitpos = 0;
  for (size_t i = 0; i < n; ++i, bitpos += width) {
    uint64_t v = values[i];
    size_t byte = bitpos >> 3;
    unsigned shift = bitpos & 7;
    v <<= shift;
    for (unsigned b = 0; b < (width + shift + 7) / 8; ++b) base[byte + b] |= static_cast<unsigned char>(v >> (8 * b));
  }
}

inline void unpack(const unsigned char* in, size_t n, uint32_t width, uint32_t* out) {
  if (width == 0) {
    std::memset(out, 0, n * sizeof(uint32_t));
    return;
  }
  const uint64_t mask = (width == 32) ? 0xFFFFFFFFULL : ((1ULL << width) - 1);
  uint64_t bitpos = 0;
  for (size_t i = 0; i < n; ++i, bitpos += width) {
    uint64_t word;
    std::memcpy(&word, in + (bitpos >> 3), 8);
    out[i] = static_cast<uint32_t>((word >> (bitpos & 7)) & mask);
  }
}

}  // namespace irforge
