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

// All algorithms return the same top k; kAuto picks the one expected to be fastest for this query.
// Measured (bench/bench_bm25_algorithms.py, notes in bench/RESULTS.md): exhaustive term-at-a-time scoring
// costs 3-8 ns per posting and beats MaxScore and block-max WAND on every multi-term query measured (up to
// 611k postings, 300k documents, top-10); one term with a long list is best served by block-max WAND, which
// skips whole blocks (115k postings: 251 against 456 us; at 12k they tie).
inline Algorithm choose_algorithm(const Index& ix, const std::vector<QueryTerm>& q) {
  uint64_t postings = 0;
  for (const auto& t : q) postings += ix.storage().df[t.term];
  if (q.size() == 1 && postings > 16384) return Algorithm::kBlockMaxWand;
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
