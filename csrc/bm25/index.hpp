// The BM25 inverted index: building, the on-disk format, term lookup and rescoring.
// Query processing lives in query_*.hpp; this header owns the data they read.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "../common/file_format.hpp"
#include "../common/parallel.hpp"
#include "../common/term_table.hpp"
#include "analyzer.hpp"
#include "postings.hpp"
#include "scorers.hpp"

namespace irforge::bm25 {

// How documents and queries are turned into terms.
enum class InputMode : uint32_t {
  kText = 0,    // strings through the analyzer
  kTokens = 1,  // lists of strings, used as terms unchanged
  kIds = 2,     // lists of integer token ids
};

inline constexpr char kMagic[9] = "IRFBM25\x1a";
inline constexpr uint32_t kFormatVersion = 1;

// What the file stores. The term hash table, the per-term block ranges and maxima, and the per-block byte
// offsets are not stored: they follow from what is, and are rebuilt (and so checked) on load.
enum SectionId : uint32_t {
  kSecMeta = 1, kSecStopwords, kSecDocLen, kSecTermOffsets, kSecTermBytes, kSecTermDf, kSecBlockLast,
  kSecBlockMax, kSecPostings, kSecIdOffsets, kSecIdBytes
};

struct Meta {
  uint32_t n_docs;
  uint32_t n_terms;
  uint64_t n_blocks;
  uint64_t total_len;
  uint32_t method;
  float k1, b, delta;
  uint32_t mode;
  uint32_t lowercase, possessive, stem, max_token_length;
  uint32_t has_ids;
  uint32_t reserved[7];
};

// Everything but the scoring-dependent maxima; immutable once made and shared between index copies.
struct Storage {
  std::shared_ptr<SectionFile> file;  // set when loaded
  // Owned arrays (built in memory, or derived on load); the views below point either here or into `file`.
  std::vector<uint32_t> own_doc_len, own_df, own_hash, own_block_last;
  std::vector<uint64_t> own_term_offsets, own_term_block_start, own_block_offset, own_id_offsets;
  std::string own_term_bytes, own_id_bytes;
  std::vector<unsigned char> own_postings;

  uint32_t n_docs = 0, n_terms = 0;
  uint64_t n_blocks = 0, total_len = 0, n_hash = 0;
  InputMode mode = InputMode::kText;
  AnalyzerConfig analyzer_config;
  std::unique_ptr<Analyzer> analyzer;
  bool has_ids = false;

  const uint32_t* doc_len = nullptr;
  const uint64_t* term_offsets = nullptr;
  const char* term_bytes = nullptr;
  const uint32_t* df = nullptr;
  const uint32_t* hash = nullptr;
  const uint64_t* term_block_start = nullptr;
  const uint32_t* block_last = nullptr;
  const uint64_t* block_offset = nullptr;
  const unsigned char* postings = nullptr;
  uint64_t n_postings_bytes = 0;
  const uint64_t* id_offsets = nullptr;
  const char* id_bytes = nullptr;
};

struct QueryTerm {
  uint32_t term;
  uint32_t qtf;
};

struct BuildOptions {
  InputMode mode = InputMode::kText;
  AnalyzerConfig analyzer;
  ScoringParams scoring;
  size_t threads = 1;
};

inline std::string id_token(int64_t v) { return std::to_string(v); }

class Index {
 public:
  // Builds from n documents. `for_each_term(i, emit)` calls emit(string_view) for each term of document i
  // (it may run on several threads at once for different i). ids, when non-empty, has n entries.
  template <class TermsOf>
  static Index build(size_t n, TermsOf&& for_each_term, const std::vector<std::string_view>& ids,
                     const BuildOptions& opt) {
    if (n == 0) throw std::invalid_argument("cannot build an index over an empty corpus");
    if (n > 0xFFFFFFFEull) throw std::invalid_argument("at most 2^32 - 2 documents per index");
    check_params(opt.scoring);
    auto st = std::make_shared<Storage>();
    st->mode = opt.mode;
    st->analyzer_config = opt.analyzer;
    st->analyzer = std::make_unique<Analyzer>(opt.analyzer);
    st->n_docs = static_cast<uint32_t>(n);

    // Phase 1: per-thread term ids and within-document frequencies.
    struct Chunk {
      TermTable vocab;
      std::vector<uint32_t> term, tf;   // postings grouped by document
      std::vector<uint64_t> doc_end;    // end of each document's postings in term/tf
      std::vector<uint32_t> to_global;
    };
    const size_t threads = std::max<size_t>(1, std::min(opt.threads, n));
    std::vector<Chunk> chunks(threads);
    st->own_doc_len.assign(n, 0);
    parallel_ranges(threads, n, [&](size_t t, size_t lo, size_t hi) {
      Chunk& c = chunks[t];
      std::vector<uint32_t> count, touched;
      c.doc_end.reserve(hi - lo);
      for (size_t i = lo; i < hi; ++i) {
        uint64_t len = 0;
        for_each_term(i, [&](std::string_view term) {
          const uint32_t id = c.vocab.intern(term);
          if (id >= count.size()) count.resize(id + 1 + count.size() / 2, 0);
          if (count[id]++ == 0) touched.push_back(id);
          ++len;
        });
        if (len > 0xFFFFFFFFull) throw std::invalid_argument("document " + std::to_string(i) + " has more than 2^32 - 1 terms");
        st->own_doc_len[i] = static_cast<uint32_t>(len);
        for (uint32_t id : touched) {
          c.term.push_back(id);
          c.tf.push_back(count[id]);
          count[id] = 0;
        }
        touched.clear();
        c.doc_end.push_back(c.term.size());
      }
    });

    // Phase 2: one vocabulary.
    TermTable vocab;
    for (auto& c : chunks) {
      c.to_global.resize(c.vocab.size());
      for (uint32_t id = 0; id < c.vocab.size(); ++id) c.to_global[id] = vocab.intern(c.vocab.term(id));
      c.vocab = TermTable();
    }
    const size_t V = vocab.size();
    if (V >= 0xFFFFFFFFull) throw std::invalid_argument("vocabulary exceeds 2^32 - 1 terms");
    st->n_terms = static_cast<uint32_t>(V);

    // Phase 3: document-ordered postings per term.
    std::vector<uint64_t> start(V + 1, 0);
    for (auto& c : chunks)
      for (uint32_t& t : c.term) {
        t = c.to_global[t];
        ++start[t + 1];
      }
    st->own_df.resize(V);
    for (size_t t = 0; t < V; ++t) {
      st->own_df[t] = static_cast<uint32_t>(start[t + 1]);
      start[t + 1] += start[t];
    }
    const uint64_t P = start[V];
    std::vector<uint32_t> pdoc(P), ptf(P);
    {
      std::vector<uint64_t> fill(start.begin(), start.end() - 1);
      size_t doc = 0;
      for (auto& c : chunks) {
        uint64_t p = 0;
        for (uint64_t end : c.doc_end) {
          for (; p < end; ++p) {
            const uint64_t at = fill[c.term[p]]++;
            pdoc[at] = static_cast<uint32_t>(doc);
            ptf[at] = c.tf[p];
          }
          ++doc;
        }
        c = Chunk();
      }
    }
    for (uint32_t len : st->own_doc_len) st->total_len += len;

    // Phase 4: blocks.
    st->own_term_block_start.assign(V + 1, 0);
    for (size_t t = 0; t < V; ++t)
      st->own_term_block_start[t + 1] = st->own_term_block_start[t] + (st->own_df[t] + kBlockSize - 1) / kBlockSize;
    st->n_blocks = st->own_term_block_start[V];
    st->own_block_last.resize(st->n_blocks);
    st->own_block_offset.assign(st->n_blocks + 1, 0);
    std::vector<std::vector<unsigned char>> parts(threads);
    std::vector<size_t> term_split(threads + 1, V);
    term_split[0] = 0;
    for (size_t t = 1, s = 0; t < threads; ++t) {  // balance by postings
      while (s < V && start[s] < P * t / threads) ++s;
      term_split[t] = s;
    }
    parallel_ranges(threads, threads, [&](size_t w, size_t, size_t) {
      auto& out = parts[w];
      for (size_t t = term_split[w]; t < term_split[w + 1]; ++t) {
        int64_t prev = -1;
        uint64_t blk = st->own_term_block_start[t];
        for (uint64_t p = start[t]; p < start[t + 1]; p += kBlockSize, ++blk) {
          const uint32_t cnt = static_cast<uint32_t>(std::min<uint64_t>(kBlockSize, start[t + 1] - p));
          st->own_block_offset[blk] = out.size();  // relative for now
          encode_block(&pdoc[p], &ptf[p], cnt, prev, out);
          prev = pdoc[p + cnt - 1];
          st->own_block_last[blk] = static_cast<uint32_t>(prev);
        }
      }
    });
    uint64_t base = 0;
    for (size_t w = 0; w < threads; ++w) {
      const uint64_t b0 = st->own_term_block_start[term_split[w]], b1 = st->own_term_block_start[term_split[w + 1]];
      for (uint64_t blk = b0; blk < b1; ++blk) st->own_block_offset[blk] += base;
      st->own_postings.insert(st->own_postings.end(), parts[w].begin(), parts[w].end());
      base += parts[w].size();
      std::vector<unsigned char>().swap(parts[w]);
    }
    st->own_block_offset[st->n_blocks] = base;
    st->n_postings_bytes = base;
    st->own_postings.resize(base + 16, 0);  // unpack() reads up to 8 bytes past a block

    st->own_term_offsets = vocab.offsets();
    st->own_term_bytes = vocab.bytes();
    st->own_hash = vocab.slots();

    if (!ids.empty()) {
      if (ids.size() != n) throw std::invalid_argument("got " + std::to_string(ids.size()) + " ids for " + std::to_string(n) + " documents");
      TermTable seen;
      for (size_t i = 0; i < n; ++i) {
        bool added = false;
        uint32_t first = seen.intern(ids[i], &added);
        if (!added)
          throw std::invalid_argument("duplicate document id '" + std::string(ids[i]) + "' at positions " +
                                      std::to_string(first) + " and " + std::to_string(i));
      }
      st->own_id_offsets = seen.offsets();
      st->own_id_bytes = seen.bytes();
      st->has_ids = true;
    }
    point_views_at_owned(*st);
    return Index(std::move(st), opt.scoring, threads);
  }

  static Index load(const std::string& path, bool use_mmap, bool verify) {
    auto st = std::make_shared<Storage>();
    st->file = std::make_shared<SectionFile>(path, kMagic, kFormatVersion, use_mmap, verify);
    const SectionFile& f = *st->file;
    auto [meta, nmeta] = f.get<Meta>(kSecMeta, "meta");
    if (nmeta != 1) throw FormatError(path + ": bad meta section");
    const Meta m = *meta;
    auto bad = [&](const std::string& what) { return FormatError(path + ": " + what); };
    if (m.n_docs == 0) throw bad("index holds no documents");
    if (m.mode > 2) throw bad("unknown input mode " + std::to_string(m.mode));
    st->n_docs = m.n_docs;
    st->n_terms = m.n_terms;
    st->n_blocks = m.n_blocks;
    st->total_len = m.total_len;
    st->mode = static_cast<InputMode>(m.mode);
    st->has_ids = m.has_ids != 0;
    auto& ac = st->analyzer_config;
    ac.lowercase = m.lowercase;
    ac.possessive = m.possessive;
    ac.stem = m.stem;
    ac.max_token_length = m.max_token_length;
    auto [sw, nsw] = f.get<char>(kSecStopwords, "stopwords");
    ac.stopwords.clear();
    for (size_t i = 0, s = 0; i < nsw; ++i)
      if (sw[i] == '\0') {
        ac.stopwords.emplace_back(sw + s, i - s);
        s = i + 1;
      }
    st->analyzer = std::make_unique<Analyzer>(ac);

    auto expect = [&](size_t got, uint64_t want, const char* name) {
      if (got != want) throw bad(std::string("section ") + name + " has " + std::to_string(got) + " entries, expected " + std::to_string(want));
    };
    const uint64_t N = m.n_docs, V = m.n_terms, B = m.n_blocks;
    size_t cnt;
    std::tie(st->doc_len, cnt) = f.get<uint32_t>(kSecDocLen, "doc_len");
    expect(cnt, N, "doc_len");
    std::tie(st->term_offsets, cnt) = f.get<uint64_t>(kSecTermOffsets, "term_offsets");
    expect(cnt, V + 1, "term_offsets");
    size_t n_term_bytes;
    std::tie(st->term_bytes, n_term_bytes) = f.get<char>(kSecTermBytes, "term_bytes");
    std::tie(st->df, cnt) = f.get<uint32_t>(kSecTermDf, "df");
    expect(cnt, V, "df");
    std::tie(st->block_last, cnt) = f.get<uint32_t>(kSecBlockLast, "block_last");
    expect(cnt, B, "block_last");
    size_t n_post;
    std::tie(st->postings, n_post) = f.get<unsigned char>(kSecPostings, "postings");
    // Structural checks and derived arrays, linear in the number of terms and blocks (the postings
    // themselves are checked block by block as they are decoded).
    if (st->term_offsets[0] != 0 || st->term_offsets[V] != n_term_bytes) throw bad("term offsets do not cover the term bytes");
    uint64_t total = 0;
    for (uint64_t i = 0; i < N; ++i) total += st->doc_len[i];
    if (total != m.total_len) throw bad("document lengths do not add up");
    st->own_term_block_start.assign(V + 1, 0);
    for (uint64_t t = 0; t < V; ++t) {
      if (st->term_offsets[t + 1] < st->term_offsets[t]) throw bad("term offsets are not increasing");
      const uint32_t df = st->df[t];
      if (df == 0 || df > N) throw bad("document frequency out of range for term " + std::to_string(t));
      st->own_term_block_start[t + 1] = st->own_term_block_start[t] + (df + kBlockSize - 1) / kBlockSize;
    }
    if (st->own_term_block_start[V] != B) throw bad("block count does not match the document frequencies");
    if (!make_slots(st->term_offsets, st->term_bytes, V, st->own_hash)) throw bad("the vocabulary holds a term twice");
    // Block byte offsets from the block headers: 2 + packed gaps + packed frequencies each.
    if (n_post < 16) throw bad("postings section is too small");
    st->own_block_offset.assign(B + 1, 0);
    uint64_t pos = 0;
    for (uint64_t t = 0; t < V; ++t) {
      const uint32_t df = st->df[t];
      for (uint64_t b = st->own_term_block_start[t], i = 0; b < st->own_term_block_start[t + 1]; ++b, ++i) {
        const uint64_t n = std::min<uint64_t>(kBlockSize, df - i * kBlockSize);
        if (pos + 2 + 16 > n_post) throw bad("postings section is too small");
        const uint32_t wd = st->postings[pos], wt = st->postings[pos + 1];
        if (wd > 32 || wt > 32) throw bad("corrupt block header");
        st->own_block_offset[b] = pos;
        pos += 2 + packed_bytes(n, wd) + packed_bytes(n, wt);
        if (st->block_last[b] >= N) throw bad("block refers to a document past the end");
      }
    }
    st->own_block_offset[B] = pos;
    if (pos + 16 != n_post) throw bad("postings section size does not match its blocks");
    st->hash = st->own_hash.data();
    st->n_hash = st->own_hash.size();
    st->term_block_start = st->own_term_block_start.data();
    st->block_offset = st->own_block_offset.data();
    st->n_postings_bytes = st->block_offset[B];
    if (st->has_ids) {
      std::tie(st->id_offsets, cnt) = f.get<uint64_t>(kSecIdOffsets, "id_offsets");
      expect(cnt, N + 1, "id_offsets");
      size_t n_id_bytes;
      std::tie(st->id_bytes, n_id_bytes) = f.get<char>(kSecIdBytes, "id_bytes");
      if (st->id_offsets[0] != 0 || st->id_offsets[N] != n_id_bytes) throw bad("id offsets do not cover the id bytes");
      for (uint64_t i = 0; i < N; ++i)
        if (st->id_offsets[i + 1] < st->id_offsets[i]) throw bad("id offsets are not increasing");
    }
    ScoringParams p{static_cast<Method>(m.method), m.k1, m.b, m.delta};
    try {
      check_params(p);
    } catch (const std::invalid_argument& e) {
      throw bad(std::string("bad scoring parameters: ") + e.what());
    }
    // The stored block maxima are used as they are (covered by the section checksum); term maxima follow.
    Index ix(st, p);
    auto [bm, nbm] = f.get<float>(kSecBlockMax, "block_max");
    expect(nbm, B, "block_max");
    ix.block_max_ = bm;
    ix.own_term_max_.assign(V, 0.0f);
    for (uint64_t t = 0; t < V; ++t)
      for (uint64_t b = st->own_term_block_start[t]; b < st->own_term_block_start[t + 1]; ++b)
        ix.own_term_max_[t] = std::max(ix.own_term_max_[t], bm[b]);
    ix.term_max_ = ix.own_term_max_.data();
    ix.finish_view();
    return ix;
  }

  Index(Index&&) = default;
  Index& operator=(Index&&) = default;
  Index(const Index&) = delete;  // views point into owned arrays
  Index& operator=(const Index&) = delete;

  // The same documents scored with other parameters (shares all storage; recomputes the maxima).
  Index rescored(const ScoringParams& p, size_t threads) const { return Index(st_, p, threads); }

  void save(const std::string& path) const {
    const Storage& s = *st_;
    SectionWriter w;
    Meta m{};
    m.n_docs = s.n_docs;
    m.n_terms = s.n_terms;
    m.n_blocks = s.n_blocks;
    m.total_len = s.total_len;
    m.method = static_cast<uint32_t>(scorer_.params().method);
    m.k1 = scorer_.params().k1;
    m.b = scorer_.params().b;
    m.delta = scorer_.params().delta;
    m.mode = static_cast<uint32_t>(s.mode);
    m.lowercase = s.analyzer_config.lowercase;
    m.possessive = s.analyzer_config.possessive;
    m.stem = s.analyzer_config.stem;
    m.max_token_length = s.analyzer_config.max_token_length;
    m.has_ids = s.has_ids;
    w.add(kSecMeta, &m, sizeof(m));
    std::string sw;
    for (const auto& word : s.analyzer_config.stopwords) {
      sw += word;
      sw.push_back('\0');
    }
    w.add(kSecStopwords, sw.data(), sw.size());
    const uint64_t N = s.n_docs, V = s.n_terms, B = s.n_blocks;
    w.add(kSecDocLen, s.doc_len, N * 4);
    w.add(kSecTermOffsets, s.term_offsets, (V + 1) * 8);
    w.add(kSecTermBytes, s.term_bytes, s.term_offsets[V]);
    w.add(kSecTermDf, s.df, V * 4);
    w.add(kSecBlockLast, s.block_last, B * 4);
    w.add(kSecBlockMax, block_max_, B * 4);
    w.add(kSecPostings, s.postings, s.n_postings_bytes + 16);
    if (s.has_ids) {
      w.add(kSecIdOffsets, s.id_offsets, (N + 1) * 8);
      w.add(kSecIdBytes, s.id_bytes, s.id_offsets[N]);
    }
    w.write(path, kMagic, kFormatVersion);
  }

  // ---- accessors ----
  const Storage& storage() const { return *st_; }
  const Scorer& scorer() const { return scorer_; }
  const PostingsView& view() const { return view_; }
  float term_max(uint32_t t) const { return term_max_[t]; }
  uint32_t n_docs() const { return st_->n_docs; }
  uint32_t n_terms() const { return st_->n_terms; }
  InputMode mode() const { return st_->mode; }
  const Analyzer& analyzer() const { return *st_->analyzer; }
  std::string_view term(uint32_t t) const {
    return std::string_view(st_->term_bytes + st_->term_offsets[t], st_->term_offsets[t + 1] - st_->term_offsets[t]);
  }
  std::string_view doc_id(uint32_t d) const {
    return std::string_view(st_->id_bytes + st_->id_offsets[d], st_->id_offsets[d + 1] - st_->id_offsets[d]);
  }
  int64_t find_term(std::string_view t) const {
    return table_find(t, st_->hash, st_->n_hash, st_->term_offsets, st_->term_bytes);
  }
  uint64_t postings_bytes() const { return st_->n_postings_bytes; }

  // Query terms in order of first occurrence, with their counts; terms not in the vocabulary dropped.
  template <class Each>
  std::vector<QueryTerm> query_terms(Each&& each_term) const {
    std::vector<QueryTerm> q;
    each_term([&](std::string_view t) {
      const int64_t id = find_term(t);
      if (id < 0) return;
      for (auto& e : q)
        if (e.term == id) {
          ++e.qtf;
          return;
        }
      q.push_back({static_cast<uint32_t>(id), 1});
    });
    return q;
  }

 private:
  std::shared_ptr<const Storage> st_;
  Scorer scorer_;
  std::vector<float> own_block_max_, own_term_max_;
  const float* block_max_ = nullptr;
  const float* term_max_ = nullptr;
  PostingsView view_;

  Index(std::shared_ptr<const Storage> st, const ScoringParams& p)
      : st_(std::move(st)), scorer_(p, st_->doc_len, st_->n_docs) {}

  Index(std::shared_ptr<const Storage> st, const ScoringParams& p, size_t threads) : Index(std::move(st), p) {
    compute_maxima(threads);
  }

  static void point_views_at_owned(Storage& s) {
    s.doc_len = s.own_doc_len.data();
    s.term_offsets = s.own_term_offsets.data();
    s.term_bytes = s.own_term_bytes.data();
    s.df = s.own_df.data();
    s.hash = s.own_hash.data();
    s.n_hash = s.own_hash.size();
    s.term_block_start = s.own_term_block_start.data();
    s.block_last = s.own_block_last.data();
    s.block_offset = s.own_block_offset.data();
    s.postings = s.own_postings.data();
    if (s.has_ids) {
      s.id_offsets = s.own_id_offsets.data();
      s.id_bytes = s.own_id_bytes.data();
    }
  }

  void finish_view() {
    const Storage& s = *st_;
    view_.term_block_start = s.term_block_start;
    view_.df = s.df;
    view_.block_last = s.block_last;
    view_.block_offset = s.block_offset;
    view_.block_max = block_max_;
    view_.bytes = s.postings;
    view_.n_bytes = s.n_postings_bytes;
    view_.n_docs = s.n_docs;
  }

  // Largest saturation x per block and per term, for the current scorer.
  void compute_maxima(size_t threads) {
    const Storage& s = *st_;
    own_block_max_.assign(s.n_blocks, 0.0f);
    own_term_max_.assign(s.n_terms, 0.0f);
    block_max_ = own_block_max_.data();
    term_max_ = own_term_max_.data();
    finish_view();
    parallel_ranges(threads, s.n_terms, [&](size_t, size_t lo, size_t hi) {
      for (size_t t = lo; t < hi; ++t) {
        Cursor c(&view_, static_cast<uint32_t>(t));
        uint64_t blk = s.term_block_start[t];
        float tmax = 0.0f, bmax = 0.0f;
        while (c.doc() != kEndDoc) {
          const uint32_t d = c.doc();
          bmax = std::max(bmax, scorer_.x(c.tf(), d));
          if (d == s.block_last[blk]) {
            own_block_max_[blk++] = bmax;
            tmax = std::max(tmax, bmax);
            bmax = 0.0f;
          }
          c.next();
        }
        own_term_max_[t] = tmax;
      }
    });
  }
};

}  // namespace irforge::bm25
