// Query algorithm dispatch and batched search.
#pragma once
#include <stdexcept>
#include <string>
#include <vector>

#include "query_block_max_wand.hpp"
#include "query_exhaustive.hpp"
#include "query_maxscore.hpp"

namespace irforge::bm25 {

enum class Algorithm : uint32_t { kExhaustive = 0, kMaxScore = 1, kBlockMaxWand = 2, kAuto = 3 };

// All algorithms return the same top k; kAuto picks the one expected to be fastest for this query, from
// measurements on 0.1M-2M documents (bench/bench_bm25_algorithms.py; table in bench/RESULTS.md):
// - exhaustive term-at-a-time scoring costs 3-8 ns per posting while its accumulators (9 bytes per document)
//   stay in cache, and then beats MaxScore and block-max WAND on every multi-term query measured;
// - above ~0.5M documents a scattered posting costs ~14 ns (a cache miss), and MaxScore wins when the query
//   touches a mid share of the documents (5-50%): fewer, and its pruning skips most of them; below that the
//   lists are short and exhaustive is still cheapest, above it the accumulators are swept nearly in order;
// - one term with a long list is best served by block-max WAND, which skips whole blocks.
inline constexpr uint32_t kLargeCollection = 512 * 1024;  // documents
inline Algorithm choose_algorithm(const Index& ix, const std::vector<QueryTerm>& q) {
  uint64_t postings = 0;
  for (const auto& t : q) postings += ix.storage().df[t.term];
  const uint64_t n = ix.n_docs();
  const bool large = n > kLargeCollection;
  if (q.size() == 1) return postings > (large ? 4096u : 16384u) ? Algorithm::kBlockMaxWand : Algorithm::kExhaustive;
  if (large && 20 * postings >= n && 2 * postings < n) return Algorithm::kMaxScore;
  return Algorithm::kExhaustive;
}

inline std::vector<ScoredDoc> search(const Index& ix, const std::vector<QueryTerm>& q, size_t k, Algorithm a) {
  if (k == 0) throw std::invalid_argument("k must be positive");
  if (a == Algorithm::kAuto) a = choose_algorithm(ix, q);
  switch (a) {
    case Algorithm::kAuto: break;
    case Algorithm::kExhaustive: return search_exhaustive(ix, q, k);
    case Algorithm::kMaxScore: return search_maxscore(ix, q, k);
    case Algorithm::kBlockMaxWand: return search_block_max_wand(ix, q, k);
  }
  throw std::invalid_argument("unknown algorithm");
}

// Runs n queries on `threads` threads. Row i of docs/scores (each n x k, row-major) receives query i's
// hits, padded with doc -1 and score -inf; counts[i] is the number of hits.
template <class TermsOfQuery>
void search_batch(const Index& ix, size_t n, TermsOfQuery&& terms_of, size_t k, Algorithm a, size_t threads,
                  int64_t* docs, float* scores, int64_t* counts) {
  parallel_items(threads, n, [&](size_t, size_t i) {
    const std::vector<ScoredDoc> hits = search(ix, terms_of(i), k, a);
    int64_t* drow = docs + i * k;
    float* srow = scores + i * k;
    for (size_t j = 0; j < k; ++j) {
      drow[j] = j < hits.size() ? static_cast<int64_t>(hits[j].doc) : -1;
      srow[j] = j < hits.size() ? hits[j].score : -std::numeric_limits<float>::infinity();
    }
    counts[i] = static_cast<int64_t>(hits.size());
  });
}

}  // namespace irforge::bm25
