// FM-index over documents of integer tokens, built over the reversed documents so that backward search
// extends a pattern left to right: a decoder can carry a pattern's suffix range from token to token, and the
// BWT symbols in a pattern's range are exactly the tokens that follow it in the corpus.
//
// Text R = rev(d_0) 1 rev(d_1) 1 ... rev(d_{D-1}) 1 0 over dense symbols: 0 the sentinel, 1 the document
// separator, 2 + rank of the token id among the distinct ids. Suffix array by SA-IS; BWT in a wavelet
// Huffman-shaped wavelet matrix; suffix array sampled at text positions that are multiples of `sample_rate`
// (bit-packed, found through a rank bitvector over the rows); document starts for positions -> (document,
// offset), every 64th absolute and the others relative to it; the next-token distributions of the most
// frequent 2-token prefixes (next_cache.hpp).
//
// File format 4 stores no C table (the symbol counts follow from the wavelet levels, derived at load), the
// alphabet as a presence bitmap when that is smaller, and document starts and separator rows relative to a
// base: together 0.035 bytes per token less than format 3 on a 13M-token BPE corpus, which goes to the
// next-token cache. Formats 2 and 3 still load.
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../common/default_init.hpp"
#include "../common/file_format.hpp"
#include "next_cache.hpp"
#include "sais.hpp"
#include "wavelet_matrix.hpp"

namespace irforge::fm {

inline constexpr char kMagic[9] = "IRFFMIX\x1a";
inline constexpr uint32_t kFormatVersion = 4;  // 3: the next-token cache; 4: no C table, relative document map
inline constexpr uint32_t kOldestFormatVersion = 2;
inline constexpr uint64_t kMaxTokenId = 0xFFFFFFFDull;  // ids + 2 must fit in 32 bits
inline constexpr uint64_t kMaxDocs = 0xFFFFFFFFull;     // the position -> document table holds 32-bit numbers
// The default next-token cache, a fraction of the rest of the index: on a 50k-token BPE corpus about 0.05 of
// the rest's 1.94 bytes per token, which keeps the whole under 2.
inline constexpr double kDefaultNextCache = 0.025;

enum SectionId : uint32_t {
  kSecMeta = 1, kSecAlphabet, kSecC, kSecCodeLen, kSecLevels, kSecSampledBits, kSecSamples, kSecDocStart, kSecSepRow,
  kSecNextKeys, kSecNextBits, kSecDocTop
};

struct Meta {
  uint64_t n;          // length of R
  uint64_t n_docs;
  uint64_t n_tokens;   // tokens in all documents
  uint32_t sigma;      // dense alphabet size (distinct ids + 2)
  uint32_t n_levels;   // longest code
  uint32_t sample_rate;
  uint32_t byte_mode;  // built from UTF-8 strings
  uint32_t sample_width;  // bits per stored sample (text position / sample_rate)
  uint32_t pos_width;     // bits per text position: every 64th document start (format 3: each start, separator
                          // row and C entry)
  uint32_t id_width;      // bits per alphabet entry (token id); the largest id has exactly this many
  uint32_t alphabet_bitmap;  // format 4: the alphabet section is a presence bitmap over ids (else packed ids)
  uint32_t doc_width;        // format 4: bits per document start relative to its block's first
  uint32_t sep_width;        // format 4: bits per separator row relative to C[1]
  uint32_t reserved[2];
};

struct Range {
  uint64_t sp = 0, ep = 0;  // suffix array rows [sp, ep)
  uint64_t size() const { return ep - sp; }
};

struct Occurrence {
  uint64_t doc, offset;
};

// What the query kernels read: views into an FMIndex's structures.
struct QueryCore {
  WaveletView wm;
  RankBits sampled;
  PackedView samples;
  const uint64_t* C = nullptr;
  const uint32_t* alphabet = nullptr;  // dense symbol - 2 -> token id
  uint64_t n_alphabet = 0;
  const uint32_t* id2sym = nullptr;    // token id -> dense symbol, when the largest id is small
  uint64_t id2sym_size = 0;
  uint64_t n = 0;
  uint64_t sample_rate = 1;

  // Dense symbol of a token id, or 0 if the id never occurs.
  uint32_t dense(uint64_t id) const {
    if (id < id2sym_size) return id2sym[id];
    if (id2sym_size != 0 || id > kMaxTokenId) return 0;
    const uint32_t* end = alphabet + n_alphabet;
    const uint32_t* p = std::lower_bound(alphabet, end, static_cast<uint32_t>(id));
    return (p != end && *p == id) ? static_cast<uint32_t>(p - alphabet) + 2 : 0;
  }
};

}  // namespace irforge::fm

#define IRF_KNS kscalar
#define IRF_KAVX2 0
#define IRF_KAVX512 0
#include "query_kernels.inc"
#undef IRF_KNS
#undef IRF_KAVX2
#undef IRF_KAVX512

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define IRFORGE_HAVE_X86_KERNELS 1
#include <immintrin.h>
// The same kernels compiled for AVX2 and for AVX-512 VPOPCNTDQ (each region's functions carry the target).
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
#endif
#define IRF_KNS kavx2
#define IRF_KAVX2 1
#define IRF_KAVX512 0
#include "query_kernels.inc"
#undef IRF_KNS
#undef IRF_KAVX2
#undef IRF_KAVX512
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512vpopcntdq,popcnt"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vpopcntdq,popcnt")
#endif
#define IRF_KNS kavx512
#define IRF_KAVX2 0
#define IRF_KAVX512 1
#include "query_kernels.inc"
#undef IRF_KNS
#undef IRF_KAVX2
#undef IRF_KAVX512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
#define IRFORGE_HAVE_X86_KERNELS 0
#endif

namespace irforge::fm {

// Which query kernels run: chosen from the CPU once (AVX-512 VPOPCNTDQ, else AVX2, else portable), or forced;
// the tests run every kernel set the CPU has and compare them.
enum Isa : int { kIsaAuto = -1, kIsaScalar = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };
inline int cpu_best_isa() {
#if IRFORGE_HAVE_X86_KERNELS
  static const int best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")) return int(kIsaAvx512);
    if (__builtin_cpu_supports("avx2")) return int(kIsaAvx2);
    return int(kIsaScalar);
  }();
  return best;
#else
  return kIsaScalar;
#endif
}
inline std::atomic<int>& isa_override() {
  static std::atomic<int> v{kIsaAuto};
  return v;
}
inline int active_isa() {
  const int o = isa_override().load(std::memory_order_relaxed);
  return o == kIsaAuto ? cpu_best_isa() : o;
}
// Sets the kernels ("auto", "scalar", "avx2" or "avx512"; a set the CPU lacks is refused); returns the one in use.
inline std::string set_isa(const std::string& name) {
  static const char* names[] = {"scalar", "avx2", "avx512"};
  int want = kIsaAuto;
  for (int k = 0; k < 3; ++k)
    if (name == names[k]) want = k;
  if (name != "auto" && want == kIsaAuto)
    throw std::invalid_argument("unknown instruction set '" + name + "'; choose auto, scalar, avx2 or avx512");
  if (want > cpu_best_isa()) throw std::invalid_argument("this CPU cannot run the " + name + " kernels");
  isa_override() = want;
  return names[active_isa()];
}

#if IRFORGE_HAVE_X86_KERNELS
#define IRF_DISPATCH(call) \
  (active_isa() == kIsaAvx512 ? kavx512::call : active_isa() == kIsaAvx2 ? kavx2::call : kscalar::call)
#else
#define IRF_DISPATCH(call) (kscalar::call)
#endif

class FMIndex {
 public:
  // Document d is docs[d][0 .. lens[d]), ids <= kMaxTokenId. The documents are read where they lie (no
  // concatenated copy of the corpus).
  // next_cache_bytes: the budget of the next-token cache (0: none; negative: kDefaultNextCache of the rest).
  // wide_sa: build with the 64-bit suffix array even below 2^31 positions (for tests: it must give the same index).
  template <class Tok>
  static FMIndex build(const Tok* const* docs, const uint64_t* lens, uint64_t n_docs, uint32_t sample_rate,
                       bool byte_mode, int64_t next_cache_bytes = -1, bool wide_sa = false) {
    if (n_docs == 0) throw std::invalid_argument("cannot build an FM-index over an empty corpus");
    if (n_docs > kMaxDocs) throw std::invalid_argument("an FM-index holds at most 2^32 - 1 documents");
    if (sample_rate == 0) throw std::invalid_argument("sample_rate must be positive");
    FMIndex ix;
    auto& o = ix.own_;
    uint64_t L = 0;
    for (uint64_t d = 0; d < n_docs; ++d) L += lens[d];
    auto each_token = [&](auto&& f) {
      for (uint64_t d = 0; d < n_docs; ++d)
        for (uint64_t i = 0; i < lens[d]; ++i) f(docs[d][i]);
    };
    const uint64_t n = L + n_docs + 1;
    // Dense alphabet: a presence table when ids are small (the common case: a tokenizer's vocabulary),
    // else sort a copy.
    uint64_t max_id = 0;
    each_token([&](Tok t) { max_id = std::max<uint64_t>(max_id, t); });
    if (max_id > kMaxTokenId)
      throw std::invalid_argument("token id " + std::to_string(max_id) + " is above the largest supported id " +
                                  std::to_string(kMaxTokenId));
    if (max_id < (1u << 26)) {
      std::vector<uint8_t> seen(static_cast<size_t>(max_id) + 1, 0);
      each_token([&](Tok t) { seen[t] = 1; });
      for (uint32_t t = 0; t <= max_id && L > 0; ++t)
        if (seen[t]) o.alphabet.push_back(t);
    } else {
      o.alphabet.reserve(L);
      each_token([&](Tok t) { o.alphabet.push_back(static_cast<uint32_t>(t)); });
      std::sort(o.alphabet.begin(), o.alphabet.end());
      o.alphabet.erase(std::unique(o.alphabet.begin(), o.alphabet.end()), o.alphabet.end());
    }
    const uint64_t sigma = o.alphabet.size() + 2;
    Meta& m = ix.meta_;
    m = Meta{};
    m.n = n;
    m.n_docs = n_docs;
    m.n_tokens = L;
    m.sigma = static_cast<uint32_t>(sigma);
    m.sample_rate = sample_rate;
    m.byte_mode = byte_mode;
    m.sample_width = bits_for((n - 1) / sample_rate);
    m.pos_width = bits_for(n);
    m.id_width = bits_for(o.alphabet.empty() ? 0 : o.alphabet.back());
    if (sigma <= 0x10000) ix.build_with<uint16_t>(docs, lens, wide_sa);
    else ix.build_with<uint32_t>(docs, lens, wide_sa);
    ix.finish_views();
    ix.build_next_cache(next_cache_bytes < 0 ? static_cast<uint64_t>(kDefaultNextCache * static_cast<double>(ix.size_bytes()))
                                             : static_cast<uint64_t>(next_cache_bytes));
    return ix;
  }

  static FMIndex load(const std::string& path, bool use_mmap, bool verify) {
    FMIndex ix;
    ix.file_ = std::make_shared<SectionFile>(path, kMagic, kFormatVersion, use_mmap, verify, kOldestFormatVersion);
    const SectionFile& f = *ix.file_;
    const uint32_t version = f.version();
    auto bad = [&](const std::string& what) { return FormatError(path + ": " + what); };
    auto [meta, nm] = f.get<Meta>(kSecMeta, "meta");
    if (nm != 1) throw bad("bad meta section");
    ix.meta_ = *meta;
    Meta& m = ix.meta_;
    const bool v4 = version >= 4;
    if (m.n_docs == 0 || m.n_docs > kMaxDocs || m.n != m.n_tokens + m.n_docs + 1 || m.sigma < 2 || m.sample_rate == 0 ||
        m.n_levels == 0 || m.n_levels > kMaxCodeLen || m.sample_width != bits_for((m.n - 1) / m.sample_rate) ||
        m.pos_width != bits_for(m.n) || m.id_width == 0 || m.id_width > 32 || m.alphabet_bitmap > 1 ||
        (v4 ? (m.doc_width == 0 || m.doc_width > m.pos_width || m.sep_width != bits_for(m.n_docs - 1))
            : (m.alphabet_bitmap | m.doc_width | m.sep_width) != 0))
      throw bad("inconsistent sizes in the header");
    auto expect = [&](size_t got, uint64_t want, const char* name) {
      if (got != want) throw bad(std::string("section ") + name + " has " + std::to_string(got) + " entries, expected " + std::to_string(want));
    };
    size_t cnt;
    const uint64_t* words;
    std::vector<uint32_t>& alphabet = ix.own_.alphabet;
    std::tie(words, cnt) = f.get<uint64_t>(kSecAlphabet, "alphabet");
    if (m.alphabet_bitmap) {  // the ids whose bits are set, increasing; the last word holds the largest id
      if (m.sigma == 2 || cnt == 0 || words[cnt - 1] == 0) throw bad("bad alphabet bitmap");
      alphabet.reserve(m.sigma - 2);
      for (uint64_t w = 0; w < cnt; ++w)
        for (uint64_t bits = words[w]; bits != 0 && alphabet.size() < m.sigma - 2; bits &= bits - 1)
          alphabet.push_back(static_cast<uint32_t>(64 * w + static_cast<uint64_t>(__builtin_ctzll(bits))));
      if (alphabet.size() != m.sigma - 2 || alphabet.back() / 64 != cnt - 1) throw bad("alphabet bitmap does not match the alphabet size");
    } else {
      expect(cnt, packed_words(m.sigma - 2, m.id_width), "alphabet");
      alphabet.resize(m.sigma - 2);
      for (uint64_t c = 0; c + 2 < m.sigma; ++c) alphabet[c] = static_cast<uint32_t>(PackedView{words, m.id_width}.get(c));
    }
    for (uint64_t c = 1; c + 2 < m.sigma; ++c)
      if (alphabet[c] <= alphabet[c - 1]) throw bad("alphabet is not strictly increasing");
    if (m.sigma > 2 && (alphabet.back() > kMaxTokenId || bits_for(alphabet.back()) != m.id_width))
      throw bad("token ids do not match the header");
    const uint8_t* lens;
    std::tie(lens, cnt) = f.get<uint8_t>(kSecCodeLen, "code lengths");
    expect(cnt, m.sigma, "code lengths");
    const RankLine* lv;
    size_t n_lines;
    std::tie(lv, n_lines) = f.get<RankLine>(kSecLevels, "levels");
    std::vector<uint64_t> counts(m.sigma);
    std::vector<uint64_t>& C = ix.own_.C;
    C.assign(m.sigma + 1ull, 0);
    try {
      if (v4) {
        counts = counts_from_levels(lens, m.sigma, m.n, lv, n_lines);
        for (uint64_t c = 0; c < m.sigma; ++c) C[c + 1] = C[c] + counts[c];
      } else {
        std::tie(words, cnt) = f.get<uint64_t>(kSecC, "C");
        expect(cnt, packed_words(m.sigma + 1, m.pos_width), "C");
        for (uint64_t c = 0; c <= m.sigma; ++c) C[c] = PackedView{words, m.pos_width}.get(c);
        if (C[0] != 0 || C[m.sigma] != m.n) throw bad("C table does not cover the text");
        for (uint64_t c = 0; c < m.sigma; ++c) {
          if (C[c + 1] <= C[c]) throw bad("C table is not strictly increasing");
          counts[c] = C[c + 1] - C[c];
        }
      }
      ix.shape_ = make_shape(lens, counts.data(), m.sigma);
    } catch (const std::invalid_argument& e) {
      throw bad(e.what());
    }
    if (counts[0] != 1 || counts[1] != m.n_docs) throw bad("symbol counts do not match the documents");
    if (ix.shape_.n_levels != m.n_levels) throw bad("code lengths do not match the header");
    uint64_t want_lines = 0;
    for (uint64_t x : ix.shape_.level_n) want_lines += lines_for(x);
    expect(n_lines, want_lines, "levels");
    const RankLine* sb;
    std::tie(sb, cnt) = f.get<RankLine>(kSecSampledBits, "sampled");
    expect(cnt, lines_for(m.n), "sampled");
    const uint64_t n_samples = (m.n - 1) / m.sample_rate + 1;
    std::tie(words, cnt) = f.get<uint64_t>(kSecSamples, "samples");
    expect(cnt, packed_words(n_samples, m.sample_width), "samples");
    ix.samples_ = PackedView{words, m.sample_width};
    // The document map: starts relative to every 64th (format 4 stores it so; older files are converted).
    const uint64_t n_top = m.n_docs / kDocBlock + 1;
    std::vector<uint64_t>& top = ix.doc_top_;
    if (v4) {
      std::tie(words, cnt) = f.get<uint64_t>(kSecDocTop, "doc_top");
      expect(cnt, packed_words(n_top, m.pos_width), "doc_top");
      top.resize(n_top);
      for (uint64_t b = 0; b < n_top; ++b) top[b] = PackedView{words, m.pos_width}.get(b);
      std::tie(words, cnt) = f.get<uint64_t>(kSecDocStart, "doc_start");
      expect(cnt, packed_words(m.n_docs + 1, m.doc_width), "doc_start");
      ix.doc_rel_ = PackedView{words, m.doc_width};
      std::tie(words, cnt) = f.get<uint64_t>(kSecSepRow, "sep_row");
      expect(cnt, packed_words(m.n_docs, m.sep_width), "sep_row");
      ix.sep_rel_ = PackedView{words, m.sep_width};
    } else {
      std::tie(words, cnt) = f.get<uint64_t>(kSecDocStart, "doc_start");
      expect(cnt, packed_words(m.n_docs + 1, m.pos_width), "doc_start");
      const PackedView starts{words, m.pos_width};
      std::vector<uint64_t> abs(m.n_docs + 1);
      for (uint64_t d = 0; d <= m.n_docs; ++d) abs[d] = starts.get(d);
      for (uint64_t d = 0; d < m.n_docs; ++d)
        if (abs[d + 1] <= abs[d]) throw bad("document starts are not increasing");
      ix.set_doc_starts(abs);
      std::tie(words, cnt) = f.get<uint64_t>(kSecSepRow, "sep_row");
      expect(cnt, packed_words(m.n_docs, m.pos_width), "sep_row");
      std::vector<uint64_t> rows(m.n_docs);
      for (uint64_t d = 0; d < m.n_docs; ++d) {
        rows[d] = PackedView{words, m.pos_width}.get(d);
        if (rows[d] < C[1] || rows[d] >= C[2]) throw bad("separator row out of range");
        rows[d] -= C[1];
      }
      ix.set_sep_rows(rows);
    }
    // Structural checks, linear in the alphabet, documents and samples.
    for (uint64_t b = 0; b < n_top; ++b)
      if (ix.doc_rel_.get(b * kDocBlock) != 0) throw bad("document block does not start at its base");
    if (ix.doc_start(0) != 0 || ix.doc_start(m.n_docs) != m.n - 1) throw bad("document starts do not cover the text");
    for (uint64_t d = 0; d < m.n_docs; ++d) {
      if (ix.doc_start(d + 1) <= ix.doc_start(d)) throw bad("document starts are not increasing");
      if (ix.sep_rel_.get(d) >= m.n_docs) throw bad("separator row out of range");
    }
    for (uint64_t i = 0; i < n_samples; ++i)
      if (ix.samples_.get(i) >= n_samples) throw bad("suffix array sample out of range");
    ix.supers_.clear();
    uint64_t at = 0;
    for (uint32_t d = 0; d < m.n_levels; ++d) {
      ix.supers_.push_back(supers_of(lv + at, ix.shape_.level_n[d]));
      at += lines_for(ix.shape_.level_n[d]);
    }
    ix.supers_.push_back(supers_of(sb, m.n));
    ix.level_bits_.resize(m.n_levels);
    at = 0;
    for (uint32_t d = 0; d < m.n_levels; ++d) {
      ix.level_bits_[d] = RankBits{lv + at, ix.supers_[d].data(), ix.shape_.level_n[d]};
      at += lines_for(ix.shape_.level_n[d]);
    }
    ix.sampled_ = RankBits{sb, ix.supers_.back().data(), m.n};
    if (kscalar::rank1(ix.sampled_, m.n) != n_samples) throw bad("sample bitvector does not match the samples");
    if (version >= 3) {
      const uint64_t* keys;
      std::tie(keys, cnt) = f.get<uint64_t>(kSecNextKeys, "next_keys");
      if (cnt == 0 || cnt % 3 != 1) throw bad("bad next-token cache keys");
      std::tie(words, ix.next_words_) = f.get<uint64_t>(kSecNextBits, "next_bits");
      ix.next_ = NextCacheView{keys + 1, cnt / 3, words, keys[0]};
      try {
        ix.check_next_cache();
      } catch (const FormatError& e) {
        throw bad(e.what());
      }
    }
    for (uint32_t d = 0; d < m.n_levels; ++d)
      if (kscalar::rank1(ix.level_bits_[d], ix.shape_.level_n[d]) != ix.shape_.level_n[d] - ix.shape_.zeros[d])
        throw bad("wavelet level " + std::to_string(d) + " does not match the symbol counts");
    ix.finish_views();
    return ix;
  }

  // Writes the current format (4), whatever format the index was loaded from.
  void save(const std::string& path) const {
    SectionWriter w;
    Meta m = meta_;
    m.alphabet_bitmap = alphabet_as_bitmap();
    w.add(kSecMeta, &m, sizeof(m));
    w.add_vector(kSecAlphabet, alphabet_words(m.alphabet_bitmap));
    std::vector<uint8_t> lens(meta_.sigma);
    for (uint64_t c = 0; c < meta_.sigma; ++c) lens[c] = static_cast<uint8_t>(shape_.sym[c].len);
    w.add_vector(kSecCodeLen, lens);
    std::vector<RankLine> lv;
    for (const auto& b : level_bits_) lv.insert(lv.end(), b.lines, b.lines + lines_for(b.n));
    w.add_vector(kSecLevels, lv);
    std::vector<RankLine>().swap(lv);
    w.add(kSecSampledBits, sampled_.lines, lines_for(meta_.n) * sizeof(RankLine));
    w.add(kSecSamples, samples_.words, packed_words((meta_.n - 1) / meta_.sample_rate + 1, meta_.sample_width) * 8);
    w.add_vector(kSecDocTop, pack(doc_top_, meta_.pos_width));
    w.add(kSecDocStart, doc_rel_.words, packed_words(meta_.n_docs + 1, meta_.doc_width) * 8);
    w.add(kSecSepRow, sep_rel_.words, packed_words(meta_.n_docs, meta_.sep_width) * 8);
    std::vector<uint64_t> keys{next_.n_bits};
    keys.insert(keys.end(), next_.keys, next_.keys + 3 * next_.n);
    w.add_vector(kSecNextKeys, keys);
    w.add(kSecNextBits, next_.bits, next_words_ * 8);
    w.write(path, kMagic, kFormatVersion);
  }

  // ---- queries ----
  const Meta& meta() const { return meta_; }
  Range full() const { return {0, meta_.n}; }

  // Dense symbol of a token id, or 0 if the id never occurs.
  uint32_t dense(uint64_t id) const { return core_.dense(id); }
  uint32_t token_of(uint32_t dense_sym) const { return own_.alphabet[dense_sym - 2]; }

  // The range of pattern+token given the range of pattern (empty if the token never follows).
  Range extend(Range r, uint64_t token) const { return IRF_DISPATCH(extend(core_, r, token)); }
  Range find(const uint64_t* pattern, size_t m) const {
    Range r = full();
    for (size_t i = 0; i < m && r.sp < r.ep; ++i) r = extend(r, pattern[i]);
    return r;
  }

  // Counts of many patterns: patterns[i] = tokens[off[i] .. off[i+1]) (query_kernels.inc).
  void count_many(const uint64_t* tokens, const int64_t* off, size_t n, int64_t* out) const {
    IRF_DISPATCH(count_many(core_, tokens, off, n, out));
  }
  // Text positions (in R) of many suffix-array rows (query_kernels.inc).
  void text_positions(const uint64_t* rows, size_t n, uint64_t* out) const {
    IRF_DISPATCH(text_positions(core_, rows, n, out));
  }
  // Text positions of the suffix-array rows [sp, ep), in row order.
  std::vector<uint64_t> range_positions(Range r) const {
    std::vector<uint64_t> rows(r.size()), pos(r.size());
    for (uint64_t k = 0; k < rows.size(); ++k) rows[k] = r.sp + k;
    text_positions(rows.data(), rows.size(), pos.data());
    return pos;
  }
  // (document, offset) of the occurrences of a length-m pattern at rows [sp, ep).
  void occurrences(Range r, uint64_t m, std::vector<Occurrence>& out) const {
    const std::vector<uint64_t> pos = range_positions(r);
    out.resize(pos.size());
    for (uint64_t k = 0; k < pos.size(); ++k) out[k] = position_to_occurrence(pos[k], m);
  }
  // The documents of the occurrences at rows [sp, ep), in row order (no offsets: what document frequencies need).
  void documents(Range r, std::vector<uint32_t>& out) const {
    const std::vector<uint64_t> pos = range_positions(r);
    out.resize(pos.size());
    for (uint64_t k = 0; k < pos.size(); ++k) out[k] = static_cast<uint32_t>(doc_of(pos[k]));
  }
  Occurrence position_to_occurrence(uint64_t p, uint64_t m) const {
    const uint64_t d = doc_of(p), s = doc_start(d), len = doc_start(d + 1) - s - 1;
    return {d, len - (p - s) - m};
  }
  // The document holding text position p: the last d with doc_start(d) <= p, among the documents that the
  // bucket of p and the next one start in (usually one or two), by binary search.
  uint64_t doc_of(uint64_t p) const {
    const uint64_t b = std::min<uint64_t>(p >> kDocBucketShift, doc_at_.size() - 2);
    uint64_t lo = doc_at_[b], hi = std::min<uint64_t>(meta_.n_docs, doc_at_[b + 1] + 1ull);
    while (hi - lo > 1) {
      const uint64_t mid = (lo + hi) / 2;
      if (doc_start(mid) <= p) lo = mid;
      else hi = mid;
    }
    return lo;
  }
  // Where document d starts in R (d = n_docs: the sentinel's position).
  uint64_t doc_start(uint64_t d) const { return doc_top_[d / kDocBlock] + doc_rel_.get(d); }

  // Distinct tokens following the pattern whose range is r, with counts, increasing token id: from the cache
  // when r is one of its ranges, else enumerated from the wavelet matrix.
  void next_tokens(Range r, RawVector<int64_t>& tokens, RawVector<int64_t>& counts) const {
    if (r.sp == 0 && r.ep == meta_.n) {  // the empty pattern: every token with its count, from C (no walk)
      tokens.resize(meta_.sigma - 2);
      counts.resize(tokens.size());
      for (uint64_t c = 2; c < meta_.sigma; ++c) {
        tokens[c - 2] = own_.alphabet[c - 2];
        counts[c - 2] = static_cast<int64_t>(own_.C[c + 1] - own_.C[c]);
      }
      return;
    }
    const int64_t cached = r.sp < r.ep ? next_.find(r.sp, r.ep) : -1;
    if (cached >= 0) {
      tokens.resize(next_.size(cached));
      counts.resize(tokens.size());
      next_.decode_fast(cached, own_.alphabet.data(), tokens.data(), counts.data());
      return;
    }
    NextScratch& scratch = *next_scratch();
    std::vector<std::pair<uint32_t, uint64_t>>& found = scratch.found;
    enumerate_next(r, found, scratch.tmp);
    tokens.resize(found.size());
    counts.resize(found.size());
    for (size_t k = 0; k < found.size(); ++k) {
      tokens[k] = token_of(found[k].first);
      counts[k] = static_cast<int64_t>(found[k].second);
    }
  }

  // (symbol, count) of the symbols following range r (separators left out), increasing symbol.
  void enumerate_next(Range r, std::vector<std::pair<uint32_t, uint64_t>>& found,
                      std::vector<std::pair<uint32_t, uint64_t>>& tmp) const {
    found.clear();
    auto add = [&](uint32_t c, uint64_t k) {
      if (c >= 2) found.emplace_back(c, k);
    };
    IRF_DISPATCH(distinct(core_.wm, r.sp, r.ep, add));
    sort_by_symbol(found, tmp);
  }
  // Ranges in the next-token cache and its bytes.
  uint64_t next_cache_ranges() const { return next_.n; }
  uint64_t next_cache_bytes() const { return 8 * (1 + 3 * next_.n + next_words_); }

  // Sorts (symbol, count) pairs by symbol (symbols are distinct): LSD radix sort on bytes of the symbol for
  // long lists (a comparison sort was a quarter of next_tokens on frequent prefixes), std::sort for short ones.
  void sort_by_symbol(std::vector<std::pair<uint32_t, uint64_t>>& v,
                      std::vector<std::pair<uint32_t, uint64_t>>& tmp) const {
    if (v.size() < 64) {
      std::sort(v.begin(), v.end());
      return;
    }
    tmp.resize(v.size());
    const uint32_t bits = bits_for(meta_.sigma - 1);
    for (uint32_t shift = 0; shift < bits; shift += 8) {
      size_t at[257] = {};
      for (const auto& e : v) ++at[((e.first >> shift) & 0xFF) + 1];
      for (int b = 0; b < 256; ++b) at[b + 1] += at[b];
      for (const auto& e : v) tmp[at[(e.first >> shift) & 0xFF]++] = e;
      v.swap(tmp);
    }
  }

  uint64_t doc_length(uint64_t d) const { return doc_start(d + 1) - doc_start(d) - 1; }
  void extract(uint64_t d, std::vector<uint32_t>& out) const {
    const uint64_t len = doc_length(d);
    out.resize(len);
    uint64_t row = own_.C[1] + sep_rel_.get(d);
    for (uint64_t i = 0; i < len; ++i) {
      const uint32_t c = IRF_DISPATCH(access_lf(core_.wm, row, &row));
      if (c < 2) throw FormatError("corrupt index: document " + std::to_string(d) + " ends early");
      out[i] = token_of(c);
    }
  }

  // Bytes of the saved index (the file, less its header and alignment).
  uint64_t size_bytes() const {
    uint64_t lines = lines_for(meta_.n);
    for (const auto& b : level_bits_) lines += lines_for(b.n);
    return sizeof(Meta) + meta_.sigma + lines * 64 + next_cache_bytes() +
           8 * (alphabet_word_count() +
                packed_words((meta_.n - 1) / meta_.sample_rate + 1, meta_.sample_width) +
                packed_words(doc_top_.size(), meta_.pos_width) + packed_words(meta_.n_docs + 1, meta_.doc_width) +
                packed_words(meta_.n_docs, meta_.sep_width));
  }

  struct NextScratch {
    std::vector<std::pair<uint32_t, uint64_t>> found, tmp;
  };
  // Per-thread scratch behind a call that is never inlined (one __tls_get_addr per query, not per use).
  __attribute__((noinline)) static NextScratch* next_scratch() {
    thread_local NextScratch s;
    return &s;
  }

  FMIndex(FMIndex&&) = default;
  FMIndex& operator=(FMIndex&&) = default;
  FMIndex(const FMIndex&) = delete;
  FMIndex& operator=(const FMIndex&) = delete;

 private:
  FMIndex() = default;

  struct Owned {
    std::vector<uint32_t> alphabet;              // unpacked (packed in the file)
    std::vector<uint64_t> C, doc_rel, sep_rel;  // C unpacked, the others packed
    HugeVector<uint64_t> samples;               // packed
    std::vector<uint64_t> next_keys, next_bits;  // the next-token cache (next_cache.hpp)
    HugeVector<RankLine> level_lines;           // every level's lines, one after another (wavelet_matrix.hpp)
    RankStore sampled;
  } own_;
  std::shared_ptr<SectionFile> file_;
  Meta meta_{};
  PackedView samples_;
  PackedView doc_rel_;  // document starts relative to their block's first (in doc_top_)
  PackedView sep_rel_;  // per document, the row of the separator after it, less C[1]
  WaveletShape shape_;
  std::vector<std::vector<uint64_t>> supers_;  // superblock counts: per level, and (loaded) the sampled rows
  std::vector<RankBits> level_bits_;
  RankBits sampled_;
  std::vector<uint32_t> id2sym_;  // token id -> dense symbol, when the largest id is small
  QueryCore core_;
  static constexpr uint64_t kDocBlock = 64;
  std::vector<uint64_t> doc_top_;  // the start of every 64th document (of the n_docs + 1 starts)
  // Per 256 text positions, the document holding the first of them (derived at build and load, not stored:
  // 4 bytes per 256 tokens). Replaces a binary search over doc_top_ for each located occurrence.
  static constexpr uint32_t kDocBucketShift = 8;
  std::vector<uint32_t> doc_at_;
  NextCacheView next_;
  size_t next_words_ = 0;
  std::unique_ptr<NextBlockTable> next_blocks_;  // behind a pointer: next_ keeps its address across moves

  // The cache holds the next-token distributions of the most frequent 2-token prefixes, most frequent first,
  // while it stays within budget bytes. Each stored continuation saves a walk of 50-150 ns through the
  // lower wavelet levels and costs about a byte, so the prefixes met most often come first. Candidates: the
  // 2-token patterns occurring at least n / 16384 times (at most 16384 of them), found by walks that drop
  // wavelet nodes below that count.
  void build_next_cache(uint64_t budget) {
    own_.next_keys.clear();
    own_.next_bits.clear();
    struct Cand {
      uint64_t freq, sp, ep;
    };
    std::vector<Cand> cands;
    const uint64_t f0 = std::max<uint64_t>(2, meta_.n >> 14);
    const std::vector<uint64_t>& C = own_.C;
    for (uint32_t a = 2; a < meta_.sigma && budget > 0; ++a) {
      if (C[a + 1] - C[a] < f0) continue;
      const Range ra{C[a], C[a + 1]};
      auto add = [&](uint32_t b, uint64_t k) {
        if (b < 2) return;
        const Range r = extend(ra, token_of(b));
        cands.push_back({k, r.sp, r.ep});
      };
      IRF_DISPATCH(distinct(core_.wm, ra.sp, ra.ep, add, f0));
    }
    std::sort(cands.begin(), cands.end(), [](const Cand& x, const Cand& y) {
      return x.freq != y.freq ? x.freq > y.freq : x.sp < y.sp;
    });
    GammaWriter all;
    std::vector<std::pair<uint32_t, uint64_t>> found, tmp;
    std::vector<std::array<uint64_t, 3>> keys;  // sp, ep, first bit
    for (const Cand& c : cands) {
      enumerate_next({c.sp, c.ep}, found, tmp);
      GammaWriter one;
      one.put(found.size() + 1);
      uint32_t prev = 1;
      for (const auto& [sym, k] : found) {
        one.put(sym - prev);
        one.put(k);
        prev = sym;
      }
      const uint64_t words = (all.bits() + one.bits() + 63) / 64;
      if (8 * (1 + 3 * (keys.size() + 1) + words + 1) > budget) break;  // + the guard word
      keys.push_back({c.sp, c.ep, all.bits()});
      all.append(one);
    }
    std::sort(keys.begin(), keys.end());  // by sp, for lookup; the bit stream keeps the order of selection
    for (const auto& k : keys) own_.next_keys.insert(own_.next_keys.end(), k.begin(), k.end());
    own_.next_bits = all.words_with_guard();
    next_ = NextCacheView{own_.next_keys.data(), keys.size(), own_.next_bits.data(), all.bits()};
    next_words_ = own_.next_bits.size();
    check_next_cache();  // as the loader does: also sets the smallest cached range
  }

  // Loader checks of the cache: ranges inside the text, increasing and disjoint, bit offsets inside the stream,
  // the stream's length within its words (with the guard word). Every distribution is decoded once (symbols,
  // counts and lengths checked while the block table is built), so that queries can use decode_fast.
  void check_next_cache() {
    const NextCacheView& c = next_;
    next_blocks_ = std::make_unique<NextBlockTable>();
    next_.blocks = next_blocks_.get();
    if (c.n == 0) return;  // no cache (an index loaded from a version 2 file saves none)
    if (c.n_bits + 64 > 64 * static_cast<uint64_t>(next_words_)) throw FormatError("next-token cache bits overrun");
    for (uint64_t i = 0; i < c.n; ++i) {
      const uint64_t sp = c.keys[3 * i], ep = c.keys[3 * i + 1];
      if (sp >= ep || ep > meta_.n || (i > 0 && sp < c.keys[3 * i - 2]) || c.keys[3 * i + 2] >= c.n_bits)
        throw FormatError("bad next-token cache range " + std::to_string(i));
      next_.min_size = std::min(next_.min_size, ep - sp);
    }
    *next_blocks_ = c.checked_block_table(meta_.sigma);
  }

  // The document map from absolute starts (n_docs + 1, increasing): every 64th into doc_top_, the others
  // relative to it at the narrowest width that holds them all.
  void set_doc_starts(const std::vector<uint64_t>& starts) {
    doc_top_.clear();
    uint64_t widest = 0;
    std::vector<uint64_t> rel(starts.size());
    for (uint64_t d = 0; d < starts.size(); ++d) {
      if (d % kDocBlock == 0) doc_top_.push_back(starts[d]);
      rel[d] = starts[d] - doc_top_.back();
      widest = std::max(widest, rel[d]);
    }
    meta_.doc_width = bits_for(widest);
    own_.doc_rel = pack(rel, meta_.doc_width);
    doc_rel_ = PackedView{own_.doc_rel.data(), meta_.doc_width};
  }
  // Separator rows less C[1] (each below n_docs).
  void set_sep_rows(const std::vector<uint64_t>& rel) {
    meta_.sep_width = bits_for(meta_.n_docs - 1);
    own_.sep_rel = pack(rel, meta_.sep_width);
    sep_rel_ = PackedView{own_.sep_rel.data(), meta_.sep_width};
  }
  // The alphabet as a presence bitmap over ids 0..largest when that takes fewer words than packed ids (a
  // tokenizer's vocabulary: 1 bit per possible id against 16 per used one).
  bool alphabet_as_bitmap() const {
    const std::vector<uint32_t>& a = own_.alphabet;
    return !a.empty() && a.back() / 64 + 1 < packed_words(a.size(), meta_.id_width);
  }
  // Words of the alphabet section as save() writes it.
  uint64_t alphabet_word_count() const {
    const std::vector<uint32_t>& a = own_.alphabet;
    return alphabet_as_bitmap() ? a.back() / 64 + 1 : packed_words(a.size(), meta_.id_width);
  }
  std::vector<uint64_t> alphabet_words(bool bitmap) const {
    const std::vector<uint32_t>& a = own_.alphabet;
    if (!bitmap) return pack(std::vector<uint64_t>(a.begin(), a.end()), meta_.id_width);
    std::vector<uint64_t> words(a.back() / 64 + 1, 0);
    for (uint32_t id : a) words[id / 64] |= 1ull << (id % 64);
    return words;
  }

  // Symbol counts from the wavelet levels alone (format 4 stores no C table). Walks the code tree top-down:
  // the runs of the internal nodes of depth d lie at level d in node order; internal node k's zeros and ones
  // are the sizes of its children k and I[d] + k at depth d + 1, and a child that is a leaf gives its symbol's
  // count. Level d + 1 holds the runs of the internal nodes of depth d + 1. About one rank per symbol.
  // Throws FormatError when the levels run past n_lines or do not split consistently, or a symbol never
  // occurs; std::invalid_argument when the code lengths are not a complete prefix code.
  static std::vector<uint64_t> counts_from_levels(const uint8_t* lens, uint64_t sigma, uint64_t n,
                                                  const RankLine* lines, size_t n_lines) {
    const WaveletShape tree = code_tree(lens, sigma);
    std::vector<uint64_t> counts(sigma, 0), cur{n}, next;
    uint64_t at = 0;
    for (uint32_t d = 0; d < tree.n_levels; ++d) {
      uint64_t bits = 0;
      for (uint64_t x : cur) bits += x;
      if (bits > n || lines_for(bits) > n_lines - at) throw FormatError("wavelet levels are shorter than their symbols");
      const std::vector<uint64_t> supers = supers_of(lines + at, bits);
      const RankBits level{lines + at, supers.data(), bits};
      const uint64_t I = tree.internal[d], I1 = tree.internal[d + 1];
      next.assign(2 * I, 0);
      uint64_t s = 0, rs = 0;
      for (uint64_t k = 0; k < I; ++k) {
        const uint64_t e = s + cur[k], re = kscalar::rank1(level, e);
        if (re < rs || re - rs > cur[k]) throw FormatError("wavelet level " + std::to_string(d) + " is inconsistent");
        next[I + k] = re - rs;
        next[k] = cur[k] - (re - rs);
        s = e;
        rs = re;
      }
      for (uint64_t j = I1; j < 2 * I; ++j) counts[tree.leaf_syms[tree.leaf_off[d + 1] + j - I1]] = next[j];
      cur.assign(next.begin(), next.begin() + static_cast<std::ptrdiff_t>(I1));
      at += lines_for(bits);
    }
    for (uint64_t c = 0; c < sigma; ++c)
      if (counts[c] == 0) throw FormatError("symbol " + std::to_string(c) + " never occurs in the wavelet levels");
    return counts;
  }

  void finish_views() {
    if (!file_) {
      samples_ = PackedView{own_.samples.data(), meta_.sample_width};
      doc_rel_ = PackedView{own_.doc_rel.data(), meta_.doc_width};
      sep_rel_ = PackedView{own_.sep_rel.data(), meta_.sep_width};
      level_bits_.clear();
      uint64_t at = 0;
      for (uint32_t d = 0; d < shape_.n_levels; ++d) {
        level_bits_.push_back(RankBits{own_.level_lines.data() + at, supers_[d].data(), shape_.level_n[d]});
        at += lines_for(shape_.level_n[d]);
      }
      sampled_ = own_.sampled.view();
    }
    doc_at_.assign(((meta_.n - 1) >> kDocBucketShift) + 2, 0);
    for (uint64_t b = 0, d = 0; b < doc_at_.size(); ++b) {
      while (d + 1 < meta_.n_docs && doc_start(d + 1) <= (b << kDocBucketShift)) ++d;
      doc_at_[b] = static_cast<uint32_t>(d);
    }
    id2sym_.clear();
    const uint64_t na = meta_.sigma - 2;
    const std::vector<uint32_t>& alphabet = own_.alphabet;
    if (na > 0 && alphabet[na - 1] < (1u << 24)) {
      id2sym_.assign(static_cast<size_t>(alphabet[na - 1]) + 1, 0);
      for (uint64_t j = 0; j < na; ++j) id2sym_[alphabet[j]] = static_cast<uint32_t>(j + 2);
    }
    core_ = QueryCore{WaveletView::of(level_bits_.data(), shape_), sampled_, samples_, own_.C.data(), alphabet.data(),
                      na, id2sym_.data(), id2sym_.size(), meta_.n, meta_.sample_rate};
  }

  template <class Sym, class Tok>
  void build_with(const Tok* const* docs, const uint64_t* lens, bool wide_sa) {
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
    std::vector<uint64_t> doc_start(D + 1);
    uint64_t pos = 0;
    for (uint64_t d = 0; d < D; ++d) {
      doc_start[d] = pos;
      for (uint64_t i = lens[d]; i-- > 0;) R[pos++] = sym(docs[d][i]);
      R[pos++] = 1;
    }
    std::vector<Sym>().swap(table);
    doc_start[D] = pos;  // = n - 1, the sentinel
    R[pos] = 0;
    own_.C.assign(meta_.sigma + 1ull, 0);
    for (uint64_t i = 0; i < n; ++i) ++own_.C[R[i] + 1ull];
    for (uint64_t c = 0; c < meta_.sigma; ++c) own_.C[c + 1] += own_.C[c];
    std::vector<uint64_t> counts(meta_.sigma);
    for (uint64_t c = 0; c < meta_.sigma; ++c) counts[c] = own_.C[c + 1] - own_.C[c];
    const std::vector<uint8_t> code_len = huffman_lengths(counts);
    shape_ = make_shape(code_len.data(), counts.data(), meta_.sigma);
    meta_.n_levels = shape_.n_levels;
    // Samples, packed as they are found; the sampled rows marked straight into the rank lines.
    const uint64_t n_samples = (n - 1) / meta_.sample_rate + 1;
    std::vector<uint64_t> sep_row;
    uint64_t k = 0;  // samples stored so far
    std::vector<Sym> bwt;
    // The BWT is written over the suffix array as it is read (a symbol is never wider than an SA entry, so
    // entry i is read before its bytes are overwritten), then copied out: no separate n-symbol buffer while
    // the suffix array is alive.
    auto after_sa = [&](auto* SA) {
      using I = std::remove_pointer_t<decltype(SA)>;
      static_assert(sizeof(Sym) <= sizeof(I), "a symbol fits in an SA entry");
      unsigned char* raw = reinterpret_cast<unsigned char*>(SA);
      // Allocated only now, after the suffix array construction's peak.
      own_.samples.assign(packed_words(n_samples, meta_.sample_width), 0);
      own_.sampled.n = n;
      own_.sampled.lines.assign(lines_for(n), RankLine{});
      sep_row.assign(D, 0);
      for (uint64_t i = 0; i < n; ++i) {
        I v;
        std::memcpy(&v, raw + i * sizeof(I), sizeof(I));
        const uint64_t p = static_cast<uint64_t>(v);
        const Sym b = p == 0 ? R[n - 1] : R[p - 1];
        std::memcpy(raw + i * sizeof(Sym), &b, sizeof(Sym));
        if (p % meta_.sample_rate == 0) {
          set_line_bit(own_.sampled.lines.data(), i);
          put_packed(own_.samples.data(), k++, meta_.sample_width, p / meta_.sample_rate);
        }
        if (R[p] == 1) {  // separator ending document d
          const uint64_t d = static_cast<uint64_t>(std::upper_bound(doc_start.begin(), doc_start.end(), p) -
                                                   doc_start.begin()) - 1;
          sep_row[d] = i;
        }
      }
      std::vector<Sym>().swap(R);
      bwt.resize(n);
      std::memcpy(bwt.data(), raw, n * sizeof(Sym));
    };
    if (n < (1ULL << 31) && !wide_sa) {
      std::vector<int32_t> SA(n);
      suffix_array<Sym, int32_t>(R.data(), SA.data(), static_cast<int32_t>(n), static_cast<int32_t>(meta_.sigma));
      after_sa(SA.data());
    } else {
      std::vector<int64_t> SA(n);
      suffix_array<Sym, int64_t>(R.data(), SA.data(), static_cast<int64_t>(n), static_cast<int64_t>(meta_.sigma));
      after_sa(SA.data());
    }
    finish_rank(own_.sampled);
    set_doc_starts(doc_start);
    for (uint64_t& r : sep_row) r -= own_.C[1];
    set_sep_rows(sep_row);
    WaveletLevels levels = build_wavelet_levels<Sym>(std::move(bwt), shape_);
    own_.level_lines = std::move(levels.lines);
    supers_ = std::move(levels.supers);
  }
};

}  // namespace irforge::fm
