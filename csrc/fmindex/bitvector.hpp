// A bitvector with rank in one cache line, and packed fixed-width integers.
//
// Rank layout: each 64-byte line holds, in the low 16 bits of its first word, the number of ones before it
// within its superblock, and 496 bits of data (the rest of word 0, then words 1..7). Superblocks of 128 lines
// carry the u64 count before them in a separate array (8 bytes per 8 KiB of lines: it stays in cache), so a
// rank or bit reads one line of the bitvector. The overhead is 16 bits per 496 (3.2%).
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/huge_pages.hpp"

namespace irforge::fm {

// A single instruction where the build enables it (x86-64 builds use -mpopcnt; aarch64 has it in NEON).
inline uint32_t popcount64(uint64_t x) { return static_cast<uint32_t>(__builtin_popcountll(x)); }

struct alignas(64) RankLine {
  uint64_t words[8];  // words[0] & kCountMask: ones before this line in its superblock; the rest: data
};
static_assert(sizeof(RankLine) == 64, "one cache line");

inline constexpr uint64_t kCountBits = 16;
inline constexpr uint64_t kCountMask = (1ULL << kCountBits) - 1;
inline constexpr uint64_t kBitsPerLine = 512 - kCountBits;
inline constexpr uint32_t kSuperShift = 7;  // 128 lines per superblock: 128 * 496 < 2^16
static_assert((kBitsPerLine << kSuperShift) <= kCountMask + 1, "in-line counts fit their field");

inline uint64_t lines_for(uint64_t n_bits) { return n_bits / kBitsPerLine + 1; }
inline uint64_t supers_for(uint64_t n_bits) { return (lines_for(n_bits) >> kSuperShift) + 1; }

// Read-only view over lines (owned elsewhere or mapped from a file) and their superblock counts.
struct RankBits {
  const RankLine* lines = nullptr;
  const uint64_t* supers = nullptr;
  uint64_t n = 0;

  // rank and bit live in query_kernels.inc (compiled per instruction set).
  void prefetch(uint64_t i) const { __builtin_prefetch(&lines[i / kBitsPerLine]); }
};

// Owned lines and superblocks, built from data words (bit j of word k is bit 64k + j).
struct RankStore {
  HugeVector<RankLine> lines;  // huge pages: ranks read lines at random
  std::vector<uint64_t> supers;
  uint64_t n = 0;
  RankBits view() const { return RankBits{lines.data(), supers.data(), n}; }
};

// Sets bit i of the data (lines must be zeroed).
inline void set_line_bit(RankLine* lines, uint64_t i) {
  const uint64_t p = i % kBitsPerLine + kCountBits;
  lines[i / kBitsPerLine].words[p / 64] |= 1ULL << (p % 64);
}

// Fills the in-line counts of the lines_for(n) lines of an n-bit vector once its data bits are set; returns its
// superblock counts.
inline std::vector<uint64_t> finish_rank(RankLine* lines, uint64_t n) {
  std::vector<uint64_t> supers(supers_for(n), 0);
  uint64_t total = 0, base = 0;
  for (uint64_t li = 0; li < lines_for(n); ++li) {
    if ((li & ((1ULL << kSuperShift) - 1)) == 0) {
      base = total;
      supers[li >> kSuperShift] = base;
    }
    RankLine& l = lines[li];
    l.words[0] = (l.words[0] & ~kCountMask) | (total - base);
    total += popcount64(l.words[0] & ~kCountMask);
    for (int k = 1; k < 8; ++k) total += popcount64(l.words[k]);
  }
  return supers;
}
inline void finish_rank(RankStore& s) { s.supers = finish_rank(s.lines.data(), s.n); }

// Superblock counts of lines read from a file (derived, not stored).
inline std::vector<uint64_t> supers_of(const RankLine* lines, uint64_t n_bits) {
  std::vector<uint64_t> supers(supers_for(n_bits), 0);
  uint64_t total = 0;
  for (uint64_t s = 1; s < supers.size(); ++s) {
    const RankLine& last = lines[(s << kSuperShift) - 1];
    uint64_t in_last = popcount64(last.words[0] & ~kCountMask);
    for (int k = 1; k < 8; ++k) in_last += popcount64(last.words[k]);
    total += (last.words[0] & kCountMask) + in_last;
    supers[s] = total;
  }
  return supers;
}

// Unsigned integers of `width` bits (1..64) packed into 64-bit words, with one word of padding so that a read
// of any element touches at most two words.
struct PackedView {
  const uint64_t* words = nullptr;
  uint32_t width = 0;
  uint64_t get(uint64_t k) const {
    const uint64_t bit = k * width, w = bit / 64, off = bit % 64;
    uint64_t v = words[w] >> off;
    if (off + width > 64) v |= words[w + 1] << (64 - off);
    return width == 64 ? v : v & ((1ULL << width) - 1);
  }
};

// Bits needed for values up to max_value (at least 1).
inline uint32_t bits_for(uint64_t max_value) {
  return max_value == 0 ? 1u : 64u - static_cast<uint32_t>(__builtin_clzll(max_value));
}
inline uint64_t packed_words(uint64_t count, uint32_t width) { return (count * width + 63) / 64 + 1; }

// Stores v (below 2^width) as element k of zeroed packed words.
inline void put_packed(uint64_t* words, uint64_t k, uint32_t width, uint64_t v) {
  const uint64_t bit = k * width, w = bit / 64, off = bit % 64;
  words[w] |= v << off;
  if (off + width > 64) words[w + 1] |= v >> (64 - off);
}

inline std::vector<uint64_t> pack(const std::vector<uint64_t>& values, uint32_t width) {
  std::vector<uint64_t> words(packed_words(values.size(), width), 0);
  for (uint64_t k = 0; k < values.size(); ++k) put_packed(words.data(), k, width, values[k]);
  return words;
}

}  // namespace irforge::fm
