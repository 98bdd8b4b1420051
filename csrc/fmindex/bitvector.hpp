// A bitvector with rank in one cache line: each 64-byte line holds the number of ones before it (u64) and
// the next 448 bits, so rank1(i) and bit(i) read a single line.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

namespace irforge::fm {

// A single instruction where the build enables it (x86-64 builds use -mpopcnt; aarch64 has it in NEON).
inline uint32_t popcount64(uint64_t x) { return static_cast<uint32_t>(__builtin_popcountll(x)); }

struct alignas(64) RankLine {
  uint64_t before;    // ones in all earlier lines
  uint64_t words[7];  // 448 bits, least significant first
};
static_assert(sizeof(RankLine) == 64, "one cache line");

inline constexpr uint64_t kBitsPerLine = 448;

inline uint64_t lines_for(uint64_t n_bits) { return n_bits / kBitsPerLine + 1; }

// Read-only view over lines (owned elsewhere or mapped from a file).
struct RankBits {
  const RankLine* lines = nullptr;
  uint64_t n = 0;

  // Ones in [0, i).
  uint64_t rank1(uint64_t i) const {
    uint64_t r;
    bit_rank1(i, &r);
    return r;
  }
  uint64_t rank0(uint64_t i) const { return i - rank1(i); }
  bool bit(uint64_t i) const {
    const RankLine& l = lines[i / kBitsPerLine];
    const uint64_t off = i % kBitsPerLine;
    return (l.words[off / 64] >> (off % 64)) & 1;
  }
  // bit(i) and rank1(i) from the one line.
  bool bit_rank1(uint64_t i, uint64_t* rank) const {
    const RankLine& l = lines[i / kBitsPerLine];
    const uint64_t off = i % kBitsPerLine;
    uint64_t r = l.before;
    const uint64_t w = off / 64;
    for (uint64_t k = 0; k < w; ++k) r += popcount64(l.words[k]);
    const uint64_t rem = off % 64;
    if (rem) r += popcount64(l.words[w] & ((1ULL << rem) - 1));
    *rank = r;
    return (l.words[w] >> rem) & 1;
  }
};

// Builds the lines for n bits given by get(i).
template <class Get>
std::vector<RankLine> make_rank_lines(uint64_t n, Get&& get) {
  std::vector<RankLine> lines(lines_for(n));
  std::memset(lines.data(), 0, lines.size() * sizeof(RankLine));
  for (uint64_t i = 0; i < n; ++i)
    if (get(i)) lines[i / kBitsPerLine].words[(i % kBitsPerLine) / 64] |= 1ULL << (i % 64);
  uint64_t before = 0;
  for (auto& l : lines) {
    l.before = before;
    for (uint64_t w : l.words) before += popcount64(w);
  }
  return lines;
}

}  // namespace irforge::fm
