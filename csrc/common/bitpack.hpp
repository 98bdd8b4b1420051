// Bit packing of up to 128 unsigned values at a fixed width (0..32 bits), least significant bit first.
// Unpacking reads 64-bit little-endian words at arbitrary byte offsets, so every buffer handed to
// unpack() must have at least 8 readable bytes past the packed data (index sections are padded).
#pragma once
#include <cstdint>
#include <cstring>
#include <utility>
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

// unpack for a width known at compile time: shifts and masks become constants and the loop unrolls (eight
// values span exactly W bytes), about twice the speed of the generic loop on a postings block.
template <uint32_t W>
inline void unpack_fixed(const unsigned char* in, size_t n, uint32_t* out) {
  constexpr uint64_t mask = (W == 32) ? 0xFFFFFFFFULL : ((1ULL << W) - 1);
  size_t i = 0;
  for (; i + 8 <= n; i += 8, in += W) {
#pragma GCC unroll 8
    for (uint32_t j = 0; j < 8; ++j) {
      uint64_t word;
      std::memcpy(&word, in + (j * W) / 8, 8);
      out[i + j] = static_cast<uint32_t>((word >> ((j * W) % 8)) & mask);
    }
  }
  for (uint64_t bitpos = 0; i < n; ++i, bitpos += W) {
    uint64_t word;
    std::memcpy(&word, in + (bitpos >> 3), 8);
    out[i] = static_cast<uint32_t>((word >> (bitpos & 7)) & mask);
  }
}

template <uint32_t... Ws>
inline void unpack_dispatch(const unsigned char* in, size_t n, uint32_t width, uint32_t* out,
                            std::integer_sequence<uint32_t, Ws...>) {
  using Fn = void (*)(const unsigned char*, size_t, uint32_t*);
  static constexpr Fn table[] = {&unpack_fixed<Ws + 1>...};
  table[width - 1](in, n, out);
}

inline void unpack(const unsigned char* in, size_t n, uint32_t width, uint32_t* out) {
  if (width == 0) {
    std::memset(out, 0, n * sizeof(uint32_t));
    return;
  }
  unpack_dispatch(in, n, width, out, std::make_integer_sequence<uint32_t, 32>{});
}

}  // namespace irforge
