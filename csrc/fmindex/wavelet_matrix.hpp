// Wavelet matrix (Claude, Navarro & Ordóñez 2015) over symbols [0, sigma): one rank bitvector per bit of the
// symbol, most significant first; each level stably moves the zeros before the ones. rank(c, i) and
// access(i) cost one cache line per level.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "bitvector.hpp"

namespace irforge::fm {

struct WaveletView {
  const RankBits* levels = nullptr;  // [n_levels]
  const uint64_t* zeros = nullptr;   // [n_levels]: zeros at each level
  const uint64_t* bottom = nullptr;  // [sigma]: where symbol c's run starts at the bottom
  uint32_t n_levels = 0;
  uint64_t n = 0;

  // Symbol at i, and the number of its occurrences in [0, i).
  uint32_t access_rank(uint64_t i, uint64_t* rank) const {
    uint32_t c = 0;
    for (uint32_t l = 0; l < n_levels; ++l) {
      uint64_t r1;
      const bool b = levels[l].bit_rank1(i, &r1);
      c = (c << 1) | static_cast<uint32_t>(b);
      i = b ? zeros[l] + r1 : i - r1;
    }
    *rank = i - bottom[c];
    return c;
  }
  // Occurrences of c in [0, i) and in [0, j), in one walk.
  void rank2(uint32_t c, uint64_t i, uint64_t j, uint64_t* ri, uint64_t* rj) const {
    for (uint32_t l = 0; l < n_levels; ++l) {
      const bool b = (c >> (n_levels - 1 - l)) & 1;
      const uint64_t ri1 = levels[l].rank1(i), rj1 = (j == i) ? ri1 : levels[l].rank1(j);
      if (b) {
        i = zeros[l] + ri1;
        j = zeros[l] + rj1;
      } else {
        i -= ri1;
        j -= rj1;
      }
    }
    *ri = i - bottom[c];
    *rj = j - bottom[c];
  }
  // Prefetch the cache line holding bit i of level l.
  void prefetch(uint32_t l, uint64_t i) const {
    __builtin_prefetch(&levels[l].lines[i / kBitsPerLine]);
  }
  // One level of rank2 for symbol bit b: maps (i, j) to the next level.
  void step2(uint32_t l, bool b, uint64_t* i, uint64_t* j) const {
    const uint64_t ri1 = levels[l].rank1(*i), rj1 = (*j == *i) ? ri1 : levels[l].rank1(*j);
    if (b) {
      *i = zeros[l] + ri1;
      *j = zeros[l] + rj1;
    } else {
      *i -= ri1;
      *j -= rj1;
    }
  }
  // One level of access_rank: reads bit i, appends it to c, maps i to the next level.
  void step1(uint32_t l, uint64_t* i, uint32_t* c) const {
    uint64_t r1;
    const bool b = levels[l].bit_rank1(*i, &r1);
    *c = (*c << 1) | static_cast<uint32_t>(b);
    *i = b ? zeros[l] + r1 : *i - r1;
  }

  // Calls f(c, count) for every distinct symbol of [i, j), in increasing symbol order.
  template <class F>
  void distinct(uint64_t i, uint64_t j, F&& f) const {
    walk(0, 0, i, j, f);
  }

 private:
  template <class F>
  void walk(uint32_t l, uint32_t prefix, uint64_t i, uint64_t j, F& f) const {
    if (i >= j) return;
    if (l == n_levels) {
      f(prefix, j - i);
      return;
    }
    const uint64_t ri = levels[l].rank1(i), rj = levels[l].rank1(j);
    walk(l + 1, prefix << 1, i - ri, j - rj, f);
    walk(l + 1, (prefix << 1) | 1, zeros[l] + ri, zeros[l] + rj, f);
  }
};

struct WaveletBuild {
  std::vector<std::vector<RankLine>> lines;
  std::vector<uint64_t> zeros;
  std::vector<uint64_t> bottom;
  uint32_t n_levels = 0;
};

// Builds the matrix for seq[0..n) with symbols < sigma. One pass per level: each 64-bit word of the level's
// bitvector is assembled in a register while the symbols are partitioned (branch-free) for the next level;
// the number of zeros comes from the symbol histogram, so the ones' region is known before the pass.
template <class Sym>
WaveletBuild build_wavelet(std::vector<Sym> seq, uint32_t sigma) {
  WaveletBuild w;
  uint32_t levels = 1;
  while ((1ULL << levels) < sigma) ++levels;
  w.n_levels = levels;
  const uint64_t n = seq.size();
  std::vector<uint64_t> hist(sigma, 0);
  for (Sym s : seq) ++hist[s];
  std::vector<Sym> next(n);
  for (uint32_t l = 0; l < levels; ++l) {
    const uint32_t shift = levels - 1 - l;
    uint64_t ones = 0;
    for (uint64_t c = 0; c < sigma; ++c)
      if ((c >> shift) & 1) ones += hist[c];
    const uint64_t z = n - ones;
    std::vector<RankLine> lines(lines_for(n));  // value-initialised: all zero
    uint64_t a = 0, b = z;
    const Sym* src = seq.data();
    Sym* dst = next.data();
    for (uint64_t k = 0; k * 64 < n; ++k) {
      const uint64_t i0 = k * 64, i1 = std::min<uint64_t>(n, i0 + 64);
      uint64_t word = 0;
      for (uint64_t i = i0; i < i1; ++i) {
        const Sym s = src[i];
        const uint64_t bit = (s >> shift) & 1;
        word |= bit << (i - i0);
        dst[bit ? b : a] = s;
        a += bit ^ 1;
        b += bit;
      }
      lines[k / 7].words[k % 7] = word;  // 448 = 7 x 64: words never straddle a line
    }
    uint64_t before = 0;
    for (auto& line : lines) {
      line.before = before;
      for (uint64_t x : line.words) before += popcount64(x);
    }
    w.lines.push_back(std::move(lines));
    w.zeros.push_back(z);
    seq.swap(next);
  }
  // At the bottom equal symbols are contiguous: record where each run starts.
  w.bottom.assign(sigma, 0);
  for (uint64_t i = n; i-- > 0;) w.bottom[seq[i]] = i;
  return w;
}

}  // namespace irforge::fm
