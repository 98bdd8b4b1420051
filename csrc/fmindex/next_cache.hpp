// Precomputed next-token distributions for the suffix ranges of the most frequent 2-token prefixes.
//
// Why: enumerating the distinct continuations of a range costs 50-150 ns each (every continuation walks its
// own path through the lower wavelet levels, bound by cache misses), and the prefixes that are met most often
// have thousands of them. Stored, a continuation costs about 3 ns (decode_fast).
//
// Layout: keys, three words per cached range (sp, ep, first bit), sorted by sp; then one bit stream holding,
// per range, gamma(m + 1) for its m continuations, then per continuation gamma(symbol gap) and gamma(count),
// symbols increasing (the first gap counts from symbol 1). Elias gamma, least significant bit first: L zero bits,
// a one, then the low L bits of x (x >= 1, L = floor(log2 x)). Ranges of different patterns never overlap, so
// a range is found by its sp alone and checked against ep.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/file_format.hpp"

namespace irforge::fm {

class GammaWriter {
 public:
  void put(uint64_t x) {  // x >= 1
    const unsigned L = 63u - static_cast<unsigned>(__builtin_clzll(x));
    put_bits(0, L);
    put_bits(1, 1);
    put_bits(x & ((1ull << L) - 1), L);
  }
  void append(const GammaWriter& o) {
    for (uint64_t b = 0; b < o.bits_; b += 64)
      put_bits(o.words_[b / 64], static_cast<unsigned>(std::min<uint64_t>(64, o.bits_ - b)));
  }
  uint64_t bits() const { return bits_; }
  // The stream's words and one zero guard word after them (the fast decoder reads a word past any code).
  std::vector<uint64_t> words_with_guard() const {
    std::vector<uint64_t> w = words_;
    w.push_back(0);
    return w;
  }

 private:
  std::vector<uint64_t> words_;
  uint64_t bits_ = 0;

  void put_bits(uint64_t v, unsigned n) {  // the low n bits of v (the rest zero), n <= 64
    if (n == 0) return;
    const unsigned off = static_cast<unsigned>(bits_ % 64);
    if (off == 0) words_.push_back(0);
    words_.back() |= v << off;
    if (off + n > 64) words_.push_back(v >> (64 - off));
    bits_ += n;
  }
};

class GammaReader {
 public:
  GammaReader(const uint64_t* words, uint64_t n_bits, uint64_t pos) : w_(words), end_(n_bits), pos_(pos) {}
  uint64_t pos() const { return pos_; }
  uint64_t get() {
    const uint64_t v = peek();
    if (v == 0) throw FormatError("corrupt next-token cache (gamma code runs past 63 bits)");
    const unsigned L = static_cast<unsigned>(__builtin_ctzll(v));
    pos_ += L + 1;
    uint64_t x = 1ull << L;
    if (L > 0) {
      x |= peek() & ((1ull << L) - 1);
      pos_ += L;
    }
    if (pos_ > end_) throw FormatError("corrupt next-token cache (reads past its end)");
    return x;
  }

 private:
  const uint64_t* w_;
  uint64_t end_, pos_;

  uint64_t peek() const {  // the 64 bits from pos_ (zeros past the end)
    if (pos_ >= end_) return 0;
    const uint64_t i = pos_ / 64, o = pos_ % 64;
    uint64_t v = w_[i] >> o;
    if (o != 0 && (i + 1) * 64 < end_) v |= w_[i + 1] << (64 - o);
    return v;
  }
};

// The 64 bits from pos; w must hold a word past pos's word.
inline uint64_t peek64(const uint64_t* w, uint64_t pos) {
  const uint64_t i = pos >> 6, o = pos & 63;
  return (w[i] >> o) | ((w[i + 1] << 1) << (63 - o));
}
// One gamma code at pos, without checks: for streams that checked_block_table() has read (the loader does).
inline uint64_t gamma_fast(const uint64_t* w, uint64_t& pos) {
  const unsigned L = static_cast<unsigned>(__builtin_ctzll(peek64(w, pos)));
  pos += L + 1;
  const uint64_t x = (1ull << L) | (peek64(w, pos) & ((1ull << L) - 1));
  pos += L;
  return x;
}

// One (gap, count) entry at pos, without checks: both codes from a single 64-bit window when they fit in it
// (the common case: small gaps and counts), else code by code. One load and one short dependency chain per
// entry instead of four: decoding is bound by that chain, each code's position depending on the last.
inline void entry_fast(const uint64_t* w, uint64_t& pos, uint64_t& gap, uint64_t& count) {
  const uint64_t v = peek64(w, pos);
  const unsigned L = static_cast<unsigned>(__builtin_ctzll(v));
  if (2 * L + 1 < 64) {
    const unsigned n1 = 2 * L + 1;
    gap = (1ull << L) | ((v >> (L + 1)) & ((1ull << L) - 1));
    const uint64_t rest = v >> n1;
    const unsigned L2 = rest ? static_cast<unsigned>(__builtin_ctzll(rest)) : 64;
    if (n1 + 2 * L2 + 1 <= 64) {
      count = (1ull << L2) | ((rest >> (L2 + 1)) & ((1ull << L2) - 1));
      pos += n1 + 2 * L2 + 1;
      return;
    }
    pos += n1;
    count = gamma_fast(w, pos);
    return;
  }
  gap = gamma_fast(w, pos);
  count = gamma_fast(w, pos);
}

// Where the blocks of every cached range start, so that several blocks decode at once: a gamma stream is one
// serial dependency chain (each code's position follows from the last), and one chain decodes at about 7 ns
// per continuation; four interleaved chains keep the core busy. Not stored in the file: built by the
// loader's checked decode of the stream (12 bytes per kNextBlock continuations: 0.2 MB beside a 0.6 MB cache).
inline constexpr uint64_t kNextBlock = 32;
struct NextBlockTable {
  std::vector<uint64_t> size;   // per range: continuations
  std::vector<uint64_t> first;  // per range, and one past the last: its blocks are [first[k], first[k + 1])
  std::vector<uint64_t> pos;    // per block: bit position of its first entry
  std::vector<uint32_t> prev;   // per block: the symbol before its first entry
};

struct NextCacheView {
  const uint64_t* keys = nullptr;  // 3 per range: sp, ep, first bit
  uint64_t n = 0;                  // cached ranges
  const uint64_t* bits = nullptr;  // n_bits of codes, then at least one zero word
  uint64_t n_bits = 0;
  uint64_t min_size = ~0ull;  // the smallest cached range: narrower ones are never looked up
  const NextBlockTable* blocks = nullptr;  // set once every range is checked

  // Index of the cached range [sp, ep), or -1.
  int64_t find(uint64_t sp, uint64_t ep) const {
    if (ep - sp < min_size || n == 0) return -1;
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
      const uint64_t mid = (lo + hi) / 2;
      if (keys[3 * mid] < sp) lo = mid + 1;
      else hi = mid;
    }
    return lo < n && keys[3 * lo] == sp && keys[3 * lo + 1] == ep ? static_cast<int64_t>(lo) : -1;
  }
  // Continuations of checked range k.
  uint64_t size(int64_t k) const { return blocks->size[k]; }
  // The continuations of checked range k, increasing: token ids (alphabet[symbol - 2]) into tokens[0, size(k))
  // and their counts. Groups of kLanes full blocks decode interleaved, the rest block by block.
  void decode_fast(int64_t k, const uint32_t* alphabet, int64_t* tokens, int64_t* counts) const {
    constexpr uint64_t kLanes = 4;
    const NextBlockTable& t = *blocks;
    const uint64_t m = t.size[k], b0 = t.first[k], nb = t.first[k + 1] - b0, full = m / kNextBlock;
    uint64_t b = 0;
    for (; b + kLanes <= full; b += kLanes) {
      uint64_t pos[kLanes], sym[kLanes];
      for (uint64_t g = 0; g < kLanes; ++g) {
        pos[g] = t.pos[b0 + b + g];
        sym[g] = t.prev[b0 + b + g];
      }
      const uint64_t at = b * kNextBlock;
      for (uint64_t j = 0; j < kNextBlock; ++j) {
#pragma GCC unroll 4
        for (uint64_t g = 0; g < kLanes; ++g) {
          uint64_t gap, count;
          entry_fast(bits, pos[g], gap, count);
          sym[g] += gap;
          tokens[at + g * kNextBlock + j] = alphabet[sym[g] - 2];
          counts[at + g * kNextBlock + j] = static_cast<int64_t>(count);
        }
      }
    }
    for (; b < nb; ++b) {
      uint64_t pos = t.pos[b0 + b], sym = t.prev[b0 + b], gap, count;
      for (uint64_t e = b * kNextBlock, end = std::min(m, e + kNextBlock); e < end; ++e) {
        entry_fast(bits, pos, gap, count);
        sym += gap;
        tokens[e] = alphabet[sym - 2];
        counts[e] = static_cast<int64_t>(count);
      }
    }
  }
  // The block table, from one checked decode of every range: every code inside the stream, symbols below
  // sigma, no more continuations than rows. Queries can then use decode_fast, which checks nothing.
  NextBlockTable checked_block_table(uint32_t sigma) const {
    NextBlockTable t;
    t.size.resize(n);
    t.first.assign(n + 1, 0);
    for (uint64_t k = 0; k < n; ++k) {
      GammaReader r(bits, n_bits, keys[3 * k + 2]);
      const uint64_t m = r.get() - 1, rows = keys[3 * k + 1] - keys[3 * k];
      if (m > rows) throw FormatError("corrupt next-token cache (more continuations than occurrences)");
      t.size[k] = m;
      t.first[k] = t.pos.size();
      uint64_t sym = 1;
      for (uint64_t e = 0; e < m; ++e) {
        if (e % kNextBlock == 0) {
          t.pos.push_back(r.pos());
          t.prev.push_back(static_cast<uint32_t>(sym));
        }
        sym += r.get();
        if (sym >= sigma) throw FormatError("corrupt next-token cache (symbol out of range)");
        r.get();  // the count: any code that fits the stream
      }
    }
    t.first[n] = t.pos.size();
    return t;
  }
};

}  // namespace irforge::fm
