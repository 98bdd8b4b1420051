// Huffman-shaped wavelet matrix (after Claude, Navarro & Ordóñez 2015) over symbols [0, sigma).
//
// Each symbol has a prefix code from its frequency (Huffman, at most kMaxCodeLen bits). Level d holds bit d of
// the codes of the symbols whose code is longer than d; each level stably moves the zeros before the ones, as
// in a plain wavelet matrix. A symbol costs one rank line per bit of its code, so the matrix takes about the
// text's zero-order entropy in bits per symbol and frequent symbols are the cheapest to rank and access.
//
// Tree shape: the nodes at depth d are numbered in matrix order (the order of their runs at that level); the
// children of internal node k at depth d are k (bit 0) and I[d] + k (bit 1), so depth d+1 has 2 I[d] nodes.
// The leaves of each depth are its last nodes. A leaf's run therefore sits after every continuing symbol once
// its last bit is processed, and dropping it leaves the next level contiguous. Codes follow from the number of
// codes of each length alone (leaves of one depth are given to symbols in increasing order), so an index file
// stores only the code lengths.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bitvector.hpp"

namespace irforge::fm {

inline constexpr uint32_t kMaxCodeLen = 48;

struct SymCode {
  uint64_t code;   // bit d: the branch at level d
  uint64_t start;  // where the symbol's run starts after its last level
  uint64_t lf;     // C[c] - start (mod 2^64): a position after the last level plus lf is the LF-mapped row
  uint32_t len;    // code length (levels visited)
  uint32_t pad;
};

// Everything about the matrix that follows from code lengths and symbol counts.
struct WaveletShape {
  uint32_t n_levels = 0;
  std::vector<uint64_t> internal;  // I[d] internal nodes at depth d, d = 0..n_levels (I[0] = 1, I[n_levels] = 0)
  std::vector<uint64_t> leaf_off;  // leaves of depth d: leaf_syms[leaf_off[d] .. leaf_off[d + 1])
  std::vector<uint32_t> leaf_syms;
  std::vector<uint64_t> leaf_lf;   // per leaf: its symbol's lf, so that an LF step needs one table read
  std::vector<SymCode> sym;        // per symbol
  std::vector<uint64_t> zeros;     // per level: zeros in its bitvector
  std::vector<uint64_t> level_n;   // per level: bits
};

// Huffman code lengths for counts (all positive), limited to max_len bits by flattening the counts until the
// tree is shallow enough.
inline std::vector<uint8_t> huffman_lengths(const std::vector<uint64_t>& counts, uint32_t max_len = kMaxCodeLen) {
  const size_t s = counts.size();
  std::vector<uint8_t> len(s, 0);
  if (s == 1) {
    len[0] = 1;
    return len;
  }
  std::vector<uint32_t> order(s);
  for (size_t k = 0; k < s; ++k) order[k] = static_cast<uint32_t>(k);
  std::vector<uint64_t> w(2 * s);
  std::vector<uint32_t> parent(2 * s);
  for (uint32_t shift = 0;; ++shift) {
    auto weight = [&](size_t k) { return shift == 0 ? counts[k] : (counts[k] >> shift) | 1; };
    std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
      const uint64_t wa = weight(a), wb = weight(b);
      return wa < wb || (wa == wb && a < b);
    });
    // Nodes 0..s-1: leaves in increasing weight; s..2s-2: internal nodes in creation (= weight) order.
    for (size_t k = 0; k < s; ++k) w[k] = weight(order[k]);
    size_t leaf = 0, node = s;
    for (size_t made = s; made < 2 * s - 1; ++made) {
      uint32_t pick[2];
      for (uint32_t& p : pick) {
        if (leaf < s && (node >= made || w[leaf] <= w[node])) p = static_cast<uint32_t>(leaf++);
        else p = static_cast<uint32_t>(node++);
      }
      w[made] = w[pick[0]] + w[pick[1]];
      parent[pick[0]] = parent[pick[1]] = static_cast<uint32_t>(made);
    }
    // Depths from the root (the last node) down; internal nodes were made in increasing order.
    std::vector<uint32_t> depth(2 * s - 1, 0);
    uint32_t deepest = 0;
    for (size_t k = 2 * s - 1; k-- > 0;) {
      if (k != 2 * s - 2) depth[k] = depth[parent[k]] + 1;
      if (k < s) deepest = std::max(deepest, depth[k]);
    }
    if (deepest <= max_len) {
      for (size_t k = 0; k < s; ++k) len[order[k]] = static_cast<uint8_t>(depth[k]);
      return len;
    }
  }
}

// The tree of code lengths len[0..sigma): n_levels, internal, leaf_off and leaf_syms (what needs no counts);
// throws std::invalid_argument when the lengths are not a complete prefix code within kMaxCodeLen bits.
inline WaveletShape code_tree(const uint8_t* len, uint64_t sigma) {
  WaveletShape sh;
  uint32_t maxl = 0;
  for (uint64_t c = 0; c < sigma; ++c) {
    if (len[c] == 0 || len[c] > kMaxCodeLen) throw std::invalid_argument("code length out of range");
    maxl = std::max<uint32_t>(maxl, len[c]);
  }
  sh.n_levels = maxl;
  std::vector<uint64_t> per_len(maxl + 1, 0);
  for (uint64_t c = 0; c < sigma; ++c) ++per_len[len[c]];
  sh.internal.assign(maxl + 1, 0);
  sh.internal[0] = 1;
  for (uint32_t d = 1; d <= maxl; ++d) {
    const uint64_t nodes = 2 * sh.internal[d - 1];
    if (per_len[d] > nodes) throw std::invalid_argument("code lengths are not a prefix code");
    sh.internal[d] = nodes - per_len[d];
    if (sh.internal[d] > sigma) throw std::invalid_argument("code lengths are not a complete code");
  }
  if (sh.internal[maxl] != 0) throw std::invalid_argument("code lengths are not a complete code");
  sh.leaf_off.assign(maxl + 2, 0);
  for (uint32_t d = 1; d <= maxl; ++d) sh.leaf_off[d + 1] = sh.leaf_off[d] + per_len[d];
  sh.leaf_syms.assign(sigma, 0);
  {
    std::vector<uint64_t> fill(sh.leaf_off.begin(), sh.leaf_off.end());
    for (uint64_t c = 0; c < sigma; ++c) sh.leaf_syms[fill[len[c]]++] = static_cast<uint32_t>(c);
  }
  return sh;
}

// The shape for code lengths len[0..sigma) and symbol counts (C[c] is the sum of the counts before c); throws
// std::invalid_argument when the lengths are not a complete prefix code within kMaxCodeLen bits.
inline WaveletShape make_shape(const uint8_t* len, const uint64_t* counts, uint64_t sigma) {
  WaveletShape sh = code_tree(len, sigma);
  const uint32_t maxl = sh.n_levels;
  // Node counts per depth, bottom-up; run starts are their prefix sums.
  std::vector<std::vector<uint64_t>> cnt(maxl + 1);
  for (uint32_t d = maxl; d >= 1; --d) {
    const uint64_t nodes = 2 * sh.internal[d - 1];
    cnt[d].assign(nodes, 0);
    if (d < maxl)
      for (uint64_t k = 0; k < sh.internal[d]; ++k) cnt[d][k] = cnt[d + 1][k] + cnt[d + 1][k + sh.internal[d]];
    for (uint64_t k = sh.internal[d]; k < nodes; ++k) cnt[d][k] = counts[sh.leaf_syms[sh.leaf_off[d] + k - sh.internal[d]]];
  }
  sh.sym.assign(sigma, SymCode{});
  sh.zeros.assign(maxl, 0);
  sh.level_n.assign(maxl, 0);
  for (uint32_t d = 0; d < maxl; ++d) {
    for (uint64_t k = 0; k < sh.internal[d]; ++k) {
      sh.level_n[d] += d == 0 ? cnt[1][0] + cnt[1][1] : cnt[d][k];
      sh.zeros[d] += cnt[d + 1][k];
    }
  }
  for (uint32_t d = 1; d <= maxl; ++d) {
    uint64_t before = 0;
    for (uint64_t k = 0; k < sh.internal[d]; ++k) before += cnt[d][k];
    for (uint64_t k = sh.internal[d]; k < 2 * sh.internal[d - 1]; ++k) {
      const uint32_t c = sh.leaf_syms[sh.leaf_off[d] + k - sh.internal[d]];
      uint64_t code = 0, idx = k;
      for (uint32_t e = d; e >= 1; --e) {
        const bool b = idx >= sh.internal[e - 1];
        if (b) {
          code |= 1ULL << (e - 1);
          idx -= sh.internal[e - 1];
        }
      }
      sh.sym[c] = SymCode{code, before, 0, d, 0};
      before += cnt[d][k];
    }
  }
  uint64_t C = 0;
  for (uint64_t c = 0; c < sigma; ++c) {
    sh.sym[c].lf = C - sh.sym[c].start;
    C += counts[c];
  }
  sh.leaf_lf.assign(sigma, 0);
  for (uint64_t k = 0; k < sigma; ++k) sh.leaf_lf[k] = sh.sym[sh.leaf_syms[k]].lf;
  return sh;
}

// Read-only view of the matrix.
struct WaveletView {
  const RankBits* levels = nullptr;  // [n_levels]
  // The shape's arrays (their buffers outlive moves of the owner).
  const uint64_t* I = nullptr;  // internal nodes per depth
  const uint64_t* leaf_off = nullptr;
  const uint32_t* leaf_syms = nullptr;
  const uint64_t* leaf_lf = nullptr;
  const SymCode* sym = nullptr;
  const uint64_t* zeros = nullptr;
  uint32_t n_levels = 0;

  static WaveletView of(const RankBits* levels, const WaveletShape& sh) {
    return WaveletView{levels, sh.internal.data(), sh.leaf_off.data(), sh.leaf_syms.data(), sh.leaf_lf.data(), sh.sym.data(),
                       sh.zeros.data(), sh.n_levels};
  }

  // Walks over the matrix live in query_kernels.inc (compiled per instruction set).
};

// Every level's rank lines, one level after another in one buffer as in the file (each level alone is under a
// huge page at 13M tokens: 1.6 MB), and each level's superblock counts.
struct WaveletLevels {
  HugeVector<RankLine> lines;
  std::vector<std::vector<uint64_t>> supers;
};

// Builds the levels for seq (consumed) under the shape. One pass per level: 16-bit chunks of the level's
// bitvector are assembled in a register while the symbols are partitioned (branch-free) for the next level;
// symbols whose code ends at this level land at the end of the partition and are dropped.
template <class Sym>
WaveletLevels build_wavelet_levels(std::vector<Sym> seq, const WaveletShape& sh) {
  WaveletLevels out;
  uint64_t total = 0;
  for (uint64_t x : sh.level_n) total += lines_for(x);
  out.lines.assign(total, RankLine{});
  std::vector<Sym> next(seq.size());
  const SymCode* code = sh.sym.data();
  RankLine* lines = out.lines.data();
  for (uint32_t d = 0; d < sh.n_levels; ++d) {
    const uint64_t n = sh.level_n[d];
    if (seq.size() != n) throw std::logic_error("wavelet build: level size mismatch");
    uint64_t a = 0, b = sh.zeros[d];
    const Sym* src = seq.data();
    Sym* dst = next.data();
    for (uint64_t k = 0; k * kCountBits < n; ++k) {
      const uint64_t i0 = k * kCountBits, i1 = std::min<uint64_t>(n, i0 + kCountBits);
      uint64_t chunk = 0;
      for (uint64_t i = i0; i < i1; ++i) {
        const Sym s = src[i];
        const uint64_t bit = (code[s].code >> d) & 1;
        chunk |= bit << (i - i0);
        dst[bit ? b : a] = s;
        a += bit ^ 1;
        b += bit;
      }
      // A line is 32 slots of 16 bits: the count, then 31 chunks of data.
      constexpr uint64_t kSlots = kBitsPerLine / kCountBits;
      const uint64_t slot = k % kSlots + 1;
      lines[k / kSlots].words[slot / 4] |= chunk << (kCountBits * (slot % 4));
    }
    if (a != sh.zeros[d] || b != n) throw std::logic_error("wavelet build: zero count mismatch");
    out.supers.push_back(finish_rank(lines, n));
    lines += lines_for(n);
    next.resize(d + 1 < sh.n_levels ? sh.level_n[d + 1] : 0);
    seq.swap(next);
    next.resize(seq.size());
  }
  return out;
}

}  // namespace irforge::fm
