// FM-index over documents of integer tokens, built over the reversed documents so that backward search
// extends a pattern left to right: a decoder can carry a pattern's suffix range from token to token, and the
// BWT symbols in a pattern's range are exactly the tokens that follow it in the corpus.
//
// Text R = rev(d_0) 1 rev(d_1) 1 ... rev(d_{D-1}) 1 0 over dense symbols: 0 the sentinel, 1 the document
// separator, 2 + rank of the token id among the distinct ids. Suffix array by SA-IS; BWT in a wavelet
// matrix; suffix array sampled at text positions that are multiples of `sample_rate`; document starts for
// positions -> (document, offset).
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../common/file_format.hpp"
#include "sais.hpp"
#include "wavelet_matrix.hpp"

namespace irforge::fm {

inline constexpr char kMagic[9] = "IRFFMIX\x1a";
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr uint64_t kMaxTokenId = 0xFFFFFFFDull;  // ids + 2 must fit in 32 bits

enum SectionId : uint32_t {
  kSecMeta = 1, kSecAlphabet, kSecC, kSecBottom, kSecZeros, kSecLevels, kSecSampledBits, kSecSamples,
  kSecDocStart, kSecSepRow
};

struct Meta {
  uint64_t n;          // length of R
  uint64_t n_docs;
  uint64_t n_tokens;   // tokens in all documents
  uint32_t sigma;      // dense alphabet size (distinct ids + 2)
  uint32_t n_levels;
  uint32_t sample_rate;
  uint32_t byte_mode;  // built from UTF-8 strings
  uint32_t reserved[8];
};

struct Range {
  uint64_t sp = 0, ep = 0;  // suffix array rows [sp, ep)
  uint64_t size() const { return ep - sp; }
};

struct Occurrence {
  uint64_t doc, offset;
};

class FMIndex {
 public:
  // Documents are tokens[offsets[d] .. offsets[d+1]) with ids <= kMaxTokenId.
  static FMIndex build(const uint32_t* tokens, const uint64_t* offsets, uint64_t n_docs, uint32_t sample_rate,
                       bool byte_mode) {
    if (n_docs == 0) throw std::invalid_argument("cannot build an FM-index over an empty corpus");
    if (sample_rate == 0) throw std::invalid_argument("sample_rate must be positive");
    FMIndex ix;
    auto& o = ix.own_;
    const uint64_t L = offsets[n_docs] - offsets[0];
    const uint64_t n = L + n_docs + 1;
    // Dense alphabet: a presence table when ids are small (the common case: a tokenizer's vocabulary),
    // else sort a copy.
    uint32_t max_id = 0;
    for (uint64_t i = offsets[0]; i < offsets[n_docs]; ++i) max_id = std::max(max_id, tokens[i]);
    if (max_id < (1u << 26)) {
      std::vector<uint8_t> seen(static_cast<size_t>(max_id) + 1, 0);
      for (uint64_t i = offsets[0]; i < offsets[n_docs]; ++i) seen[tokens[i]] = 1;
      for (uint32_t t = 0; t <= max_id && L > 0; ++t)
        if (seen[t]) o.alphabet.push_back(t);
    } else {
      o.alphabet.assign(tokens + offsets[0], tokens + offsets[n_docs]);
      std::sort(o.alphabet.begin(), o.alphabet.end());
      o.alphabet.erase(std::unique(o.alphabet.begin(), o.alphabet.end()), o.alphabet.end());
    }
    if (!o.alphabet.empty() && o.alphabet.back() > kMaxTokenId)
      throw std::invalid_argument("token id " + std::to_string(o.alphabet.back()) + " is above the largest supported id " +
                                  std::to_string(kMaxTokenId));
    const uint64_t sigma = o.alphabet.size() + 2;
    Meta& m = ix.meta_;
    m = Meta{};
    m.n = n;
    m.n_docs = n_docs;
    m.n_tokens = L;
    m.sigma = static_cast<uint32_t>(sigma);
    m.sample_rate = sample_rate;
    m.byte_mode = byte_mode;
    if (sigma <= 0x10000) ix.build_with<uint16_t>(tokens, offsets);
    else ix.build_with<uint32_t>(tokens, offsets);
    ix.finish_views();
    return ix;
  }

  static FMIndex load(const std::string& path, bool use_mmap, bool verify) {
    FMIndex ix;
    ix.file_ = std::make_shared<SectionFile>(path, kMagic, kFormatVersion, use_mmap, verify);
    const SectionFile& f = *ix.file_;
    auto bad = [&](const std::string& what) { return FormatError(path + ": " + what); };
    auto [meta, nm] = f.get<Meta>(kSecMeta, "meta");
    if (nm != 1) throw bad("bad meta section");
    ix.meta_ = *meta;
    const Meta& m = ix.meta_;
    if (m.n_docs == 0 || m.n != m.n_tokens + m.n_docs + 1 || m.sigma < 2 || m.sample_rate == 0 || m.n_levels > 32 ||
        (1ULL << m.n_levels) < m.sigma)
      throw bad("inconsistent sizes in the header");
    auto expect = [&](size_t got, uint64_t want, const char* name) {
      if (got != want) throw bad(std::string("section ") + name + " has " + std::to_string(got) + " entries, expected " + std::to_string(want));
    };
    size_t cnt;
    std::tie(ix.alphabet_, cnt) = f.get<uint32_t>(kSecAlphabet, "alphabet");
    expect(cnt, m.sigma - 2, "alphabet");
    std::tie(ix.C_, cnt) = f.get<uint64_t>(kSecC, "C");
    expect(cnt, m.sigma + 1, "C");
    std::tie(ix.bottom_, cnt) = f.get<uint64_t>(kSecBottom, "bottom");
    expect(cnt, m.sigma, "bottom");
    std::tie(ix.zeros_, cnt) = f.get<uint64_t>(kSecZeros, "zeros");
    expect(cnt, m.n_levels, "zeros");
    const RankLine* lv;
    std::tie(lv, cnt) = f.get<RankLine>(kSecLevels, "levels");
    const uint64_t per_level = lines_for(m.n);
    expect(cnt, per_level * m.n_levels, "levels");
    const RankLine* sb;
    std::tie(sb, cnt) = f.get<RankLine>(kSecSampledBits, "sampled");
    expect(cnt, per_level, "sampled");
    const uint64_t n_samples = (m.n - 1) / m.sample_rate + 1;
    std::tie(ix.samples_, cnt) = f.get<uint64_t>(kSecSamples, "samples");
    expect(cnt, n_samples, "samples");
    std::tie(ix.doc_start_, cnt) = f.get<uint64_t>(kSecDocStart, "doc_start");
    expect(cnt, m.n_docs + 1, "doc_start");
    std::tie(ix.sep_row_, cnt) = f.get<uint64_t>(kSecSepRow, "sep_row");
    expect(cnt, m.n_docs, "sep_row");
    // Structural checks, linear in the alphabet, documents and samples.
    if (ix.C_[0] != 0 || ix.C_[m.sigma] != m.n) throw bad("C table does not cover the text");
    for (uint64_t c = 0; c < m.sigma; ++c) {
      if (ix.C_[c + 1] < ix.C_[c]) throw bad("C table is not increasing");
      if (ix.bottom_[c] > m.n) throw bad("bottom table out of range");
    }
    for (uint64_t c = 1; c + 2 < m.sigma; ++c)
      if (ix.alphabet_[c] <= ix.alphabet_[c - 1]) throw bad("alphabet is not strictly increasing");
    for (uint32_t l = 0; l < m.n_levels; ++l)
      if (ix.zeros_[l] > m.n) throw bad("wavelet level out of range");
    if (ix.doc_start_[0] != 0 || ix.doc_start_[m.n_docs] != m.n - 1) throw bad("document starts do not cover the text");
    for (uint64_t d = 0; d < m.n_docs; ++d) {
      if (ix.doc_start_[d + 1] <= ix.doc_start_[d]) throw bad("document starts are not increasing");
      if (ix.sep_row_[d] >= m.n) throw bad("separator row out of range");
    }
    for (uint64_t i = 0; i < n_samples; ++i)
      if (ix.samples_[i] >= m.n || ix.samples_[i] % m.sample_rate != 0) throw bad("suffix array sample out of range");
    ix.level_bits_.resize(m.n_levels);
    for (uint32_t l = 0; l < m.n_levels; ++l) ix.level_bits_[l] = RankBits{lv + l * per_level, m.n};
    ix.sampled_ = RankBits{sb, m.n};
    if (ix.sampled_.rank1(m.n) != n_samples) throw bad("sample bitvector does not match the samples");
    ix.finish_views();
    return ix;
  }

  void save(const std::string& path) const {
    SectionWriter w;
    w.add(kSecMeta, &meta_, sizeof(meta_));
    w.add(kSecAlphabet, alphabet_, (meta_.sigma - 2) * 4ull);
    w.add(kSecC, C_, (meta_.sigma + 1ull) * 8);
    w.add(kSecBottom, bottom_, meta_.sigma * 8ull);
    w.add(kSecZeros, zeros_, meta_.n_levels * 8ull);
    std::vector<RankLine> lv;
    for (const auto& b : level_bits_) lv.insert(lv.end(), b.lines, b.lines + lines_for(meta_.n));
    w.add_vector(kSecLevels, lv);
    w.add(kSecSampledBits, sampled_.lines, lines_for(meta_.n) * sizeof(RankLine));
    w.add(kSecSamples, samples_, ((meta_.n - 1) / meta_.sample_rate + 1) * 8);
    w.add(kSecDocStart, doc_start_, (meta_.n_docs + 1) * 8);
    w.add(kSecSepRow, sep_row_, meta_.n_docs * 8);
    w.write(path, kMagic, kFormatVersion);
  }

  // ---- queries ----
  const Meta& meta() const { return meta_; }
  Range full() const { return {0, meta_.n}; }

  // Dense symbol of a token id, or 0 if the id never occurs.
  uint32_t dense(uint64_t id) const {
    if (id > kMaxTokenId) return 0;
    const uint32_t* end = alphabet_ + (meta_.sigma - 2);
    const uint32_t* p = std::lower_bound(alphabet_, end, static_cast<uint32_t>(id));
    return (p != end && *p == id) ? static_cast<uint32_t>(p - alphabet_) + 2 : 0;
  }
  uint32_t token_of(uint32_t dense_sym) const { return alphabet_[dense_sym - 2]; }

  // The range of pattern+token given the range of pattern (empty if the token never follows).
  Range extend(Range r, uint64_t token) const {
    const uint32_t c = dense(token);
    if (c == 0 || r.sp >= r.ep) return {0, 0};
    uint64_t a, b;
    wm_.rank2(c, r.sp, r.ep, &a, &b);
    return {C_[c] + a, C_[c] + b};
  }
  Range find(const uint64_t* pattern, size_t m) const {
    Range r = full();
    for (size_t i = 0; i < m && r.sp < r.ep; ++i) r = extend(r, pattern[i]);
    return r;
  }

  // Counts of many patterns: patterns[i] = tokens[off[i] .. off[i+1]). Patterns advance in groups, level by
  // level, prefetching every member's next cache lines before using any: the misses of one backward-search
  // step overlap across patterns instead of running one after another.
  void count_many(const uint64_t* tokens, const int64_t* off, size_t n, int64_t* out) const {
    constexpr size_t G = 16;
    for (size_t g0 = 0; g0 < n; g0 += G) {
      const size_t g = std::min(G, n - g0);
      Range r[G];
      size_t pos[G];
      uint32_t c[G];
      bool live[G];
      for (size_t t = 0; t < g; ++t) {
        r[t] = full();
        pos[t] = static_cast<size_t>(off[g0 + t]);
        live[t] = pos[t] < static_cast<size_t>(off[g0 + t + 1]);
        if (!live[t]) r[t] = {0, 0};  // empty patterns are rejected above; count 0 here
      }
      while (true) {
        size_t active = 0;
        for (size_t t = 0; t < g; ++t) {
          if (!live[t]) continue;
          c[t] = dense(tokens[pos[t]]);
          if (c[t] == 0 || r[t].sp >= r[t].ep) {
            r[t] = {0, 0};
            live[t] = false;
          } else {
            ++active;
          }
        }
        if (active == 0) break;
        for (uint32_t l = 0; l < meta_.n_levels; ++l) {
          for (size_t t = 0; t < g; ++t)
            if (live[t]) {
              wm_.prefetch(l, r[t].sp);
              wm_.prefetch(l, r[t].ep);
            }
          const uint32_t shift = meta_.n_levels - 1 - l;
          for (size_t t = 0; t < g; ++t)
            if (live[t]) wm_.step2(l, (c[t] >> shift) & 1, &r[t].sp, &r[t].ep);
        }
        for (size_t t = 0; t < g; ++t) {
          if (!live[t]) continue;
          r[t] = {C_[c[t]] + (r[t].sp - bottom_[c[t]]), C_[c[t]] + (r[t].ep - bottom_[c[t]])};
          if (++pos[t] == static_cast<size_t>(off[g0 + t + 1])) live[t] = false;
        }
      }
      for (size_t t = 0; t < g; ++t) out[g0 + t] = static_cast<int64_t>(r[t].size());
    }
  }

  // Text positions (in R) of many suffix-array rows, walked to their samples in interleaved groups.
  void text_positions(const uint64_t* rows, size_t n, uint64_t* out) const {
    constexpr size_t G = 16;
    for (size_t g0 = 0; g0 < n; g0 += G) {
      const size_t g = std::min(G, n - g0);
      uint64_t row[G], steps[G];
      bool live[G];
      for (size_t t = 0; t < g; ++t) {
        row[t] = rows[g0 + t];
        steps[t] = 0;
        live[t] = true;
      }
      while (true) {
        for (size_t t = 0; t < g; ++t)
          if (live[t]) __builtin_prefetch(&sampled_.lines[row[t] / kBitsPerLine]);
        size_t active = 0;
        for (size_t t = 0; t < g; ++t) {
          if (!live[t]) continue;
          if (sampled_.bit(row[t])) {
            out[g0 + t] = samples_[sampled_.rank1(row[t])] + steps[t];
            live[t] = false;
          } else {
            ++active;
          }
        }
        if (active == 0) break;
        uint32_t c[G] = {};
        uint64_t i[G];
        for (size_t t = 0; t < g; ++t) i[t] = row[t];
        for (uint32_t l = 0; l < meta_.n_levels; ++l) {
          for (size_t t = 0; t < g; ++t)
            if (live[t]) wm_.prefetch(l, i[t]);
          for (size_t t = 0; t < g; ++t)
            if (live[t]) wm_.step1(l, &i[t], &c[t]);
        }
        for (size_t t = 0; t < g; ++t)
          if (live[t]) {
            row[t] = C_[c[t]] + (i[t] - bottom_[c[t]]);
            ++steps[t];
          }
      }
    }
  }
  // (document, offset) of the occurrences of a length-m pattern at rows [sp, ep).
  void occurrences(Range r, uint64_t m, std::vector<Occurrence>& out) const {
    std::vector<uint64_t> rows(r.size()), pos(r.size());
    for (uint64_t k = 0; k < rows.size(); ++k) rows[k] = r.sp + k;
    text_positions(rows.data(), rows.size(), pos.data());
    out.resize(rows.size());
    for (uint64_t k = 0; k < rows.size(); ++k) out[k] = position_to_occurrence(pos[k], m);
  }
  Occurrence position_to_occurrence(uint64_t p, uint64_t m) const {
    const uint64_t* it = std::upper_bound(doc_start_, doc_start_ + meta_.n_docs + 1, p);
    const uint64_t d = static_cast<uint64_t>(it - doc_start_) - 1;
    const uint64_t len = doc_start_[d + 1] - doc_start_[d] - 1;
    return {d, len - (p - doc_start_[d]) - m};
  }

  // Distinct tokens following the pattern whose range is r, with counts, increasing token id.
  void next_tokens(Range r, std::vector<uint32_t>& tokens, std::vector<uint64_t>& counts) const {
    tokens.clear();
    counts.clear();
    wm_.distinct(r.sp, r.ep, [&](uint32_t c, uint64_t k) {
      if (c >= 2) {
        tokens.push_back(token_of(c));
        counts.push_back(k);
      }
    });
  }


  uint64_t doc_length(uint64_t d) const { return doc_start_[d + 1] - doc_start_[d] - 1; }
  void extract(uint64_t d, std::vector<uint32_t>& out) const {
    const uint64_t len = doc_length(d);
    out.resize(len);
    uint64_t row = sep_row_[d];
    for (uint64_t i = 0; i < len; ++i) {
      uint64_t rk;
      const uint32_t c = wm_.access_rank(row, &rk);
      if (c < 2) throw FormatError("corrupt index: document " + std::to_string(d) + " ends early");
      out[i] = token_of(c);
      row = C_[c] + rk;
    }
  }

  uint64_t size_bytes() const {
    const uint64_t lines = lines_for(meta_.n);
    return sizeof(Meta) + (meta_.sigma - 2) * 4ull + (meta_.sigma + 1ull) * 8 + meta_.sigma * 8ull +
           (meta_.n_levels + 1) * lines * 64 + ((meta_.n - 1) / meta_.sample_rate + 1) * 8 +
           (meta_.n_docs * 2 + 1) * 8;
  }

  FMIndex(FMIndex&&) = default;
  FMIndex& operator=(FMIndex&&) = default;
  FMIndex(const FMIndex&) = delete;
  FMIndex& operator=(const FMIndex&) = delete;

 private:
  FMIndex() = default;

  struct Owned {
    std::vector<uint32_t> alphabet;
    std::vector<uint64_t> C, bottom, zeros, samples, doc_start, sep_row;
    std::vector<std::vector<RankLine>> levels;
    std::vector<RankLine> sampled;
  } own_;
  std::shared_ptr<SectionFile> file_;
  Meta meta_{};
  const uint32_t* alphabet_ = nullptr;
  const uint64_t *C_ = nullptr, *bottom_ = nullptr, *zeros_ = nullptr, *samples_ = nullptr, *doc_start_ = nullptr,
                 *sep_row_ = nullptr;
  std::vector<RankBits> level_bits_;
  RankBits sampled_;
  WaveletView wm_;

  void finish_views() {
    if (!file_) {
      alphabet_ = own_.alphabet.data();
      C_ = own_.C.data();
      bottom_ = own_.bottom.data();
      zeros_ = own_.zeros.data();
      samples_ = own_.samples.data();
      doc_start_ = own_.doc_start.data();
      sep_row_ = own_.sep_row.data();
      level_bits_.clear();
      for (const auto& l : own_.levels) level_bits_.push_back(RankBits{l.data(), meta_.n});
      sampled_ = RankBits{own_.sampled.data(), meta_.n};
    }
    wm_ = WaveletView{level_bits_.data(), zeros_, bottom_, meta_.n_levels, meta_.n};
  }

  template <class Sym>
  void build_with(const uint32_t* tokens, const uint64_t* offsets) {
    const uint64_t n = meta_.n, D = meta_.n_docs;
    const auto& alpha = own_.alphabet;
    // id -> dense symbol: a direct table for small ids, binary search otherwise.
    std::vector<Sym> table;
    if (!alpha.empty() && alpha.back() < (1u << 26)) {
      table.assign(static_cast<size_t>(alpha.back()) + 1, 0);
      for (size_t j = 0; j < alpha.size(); ++j) table[alpha[j]] = static_cast<Sym>(j + 2);
    }
    auto sym = [&](uint32_t id) -> Sym {
      if (!table.empty()) return table[id];
      return static_cast<Sym>(std::lower_bound(alpha.begin(), alpha.end(), id) - alpha.begin() + 2);
    };
    std::vector<Sym> R(n);
    own_.doc_start.resize(D + 1);
    uint64_t pos = 0;
    for (uint64_t d = 0; d < D; ++d) {
      own_.doc_start[d] = pos;
      for (uint64_t i = offsets[d + 1]; i-- > offsets[d];) R[pos++] = sym(tokens[i]);
      R[pos++] = 1;
    }
    std::vector<Sym>().swap(table);
    own_.doc_start[D] = pos;  // = n - 1, the sentinel
    R[pos] = 0;
    own_.C.assign(meta_.sigma + 1ull, 0);
    for (uint64_t i = 0; i < n; ++i) ++own_.C[R[i] + 1ull];
    for (uint64_t c = 0; c < meta_.sigma; ++c) own_.C[c + 1] += own_.C[c];
    std::vector<Sym> bwt(n);
    std::vector<uint8_t> sampled_rows(n, 0);
    own_.samples.assign((n - 1) / meta_.sample_rate + 1, 0);
    own_.sep_row.assign(D, 0);
    auto after_sa = [&](auto* SA) {
      uint64_t k = 0;
      for (uint64_t i = 0; i < n; ++i) {
        const uint64_t p = static_cast<uint64_t>(SA[i]);
        bwt[i] = p == 0 ? R[n - 1] : R[p - 1];
        if (p % meta_.sample_rate == 0) {
          sampled_rows[i] = 1;
          own_.samples[k++] = p;
        }
        if (R[p] == 1) {  // separator ending document d
          const uint64_t d = static_cast<uint64_t>(std::upper_bound(own_.doc_start.begin(), own_.doc_start.end(), p) -
                                                   own_.doc_start.begin()) - 1;
          own_.sep_row[d] = i;
        }
      }
    };
    if (n < (1ULL << 31)) {
      std::vector<int32_t> SA(n);
      suffix_array<Sym, int32_t>(R.data(), SA.data(), static_cast<int32_t>(n), static_cast<int32_t>(meta_.sigma));
      after_sa(SA.data());
    } else {
      std::vector<int64_t> SA(n);
      suffix_array<Sym, int64_t>(R.data(), SA.data(), static_cast<int64_t>(n), static_cast<int64_t>(meta_.sigma));
      after_sa(SA.data());
    }
    std::vector<Sym>().swap(R);
    own_.sampled = make_rank_lines(n, [&](uint64_t i) { return sampled_rows[i] != 0; });
    std::vector<uint8_t>().swap(sampled_rows);
    WaveletBuild wb = build_wavelet<Sym>(std::move(bwt), meta_.sigma);
    meta_.n_levels = wb.n_levels;
    own_.levels = std::move(wb.lines);
    own_.zeros = std::move(wb.zeros);
    own_.bottom = std::move(wb.bottom);
  }
};

}  // namespace irforge::fm
