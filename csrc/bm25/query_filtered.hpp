// Top k restricted to a set of allowed documents (for example those holding an exact phrase), with the same
// scores and order as an unrestricted search followed by the filter, without scoring the rest of the corpus.
//
// Two plans, chosen by cost: when the allowed set is smaller than the query's postings, walk the allowed
// documents in order and move each term's cursor there with next_geq (block skipping, so cost follows the
// allowed set); otherwise score the postings term at a time as the exhaustive search does, keeping only
// allowed documents (a bitmap over the documents).
#pragma once
#include <stdexcept>
#include <vector>

#include "query_exhaustive.hpp"

namespace irforge::bm25 {

struct FilterScratch {
  std::vector<uint64_t> allowed_bits;
};
__attribute__((noinline)) inline FilterScratch* filter_scratch() {
  thread_local FilterScratch scratch;
  return &scratch;
}

// `allowed`: strictly increasing document numbers below ix.n_docs() (checked by the caller).
inline std::vector<ScoredDoc> search_filtered(const Index& ix, const std::vector<QueryTerm>& q, size_t k,
                                              const uint32_t* allowed, size_t n_allowed) {
  if (k == 0) throw std::invalid_argument("k must be positive");
  const std::vector<PreparedTerm> terms = prepare(ix, q);
  const size_t m = terms.size();
  if (m == 0 || n_allowed == 0) return {};
  uint64_t postings = 0;
  for (const auto& t : terms) postings += ix.storage().df[t.term];
  if (n_allowed <= postings) {
    const Scorer& sc = ix.scorer();
    TopK top(k);
    std::vector<Cursor> cur;
    cur.reserve(m);
    for (const auto& t : terms) cur.emplace_back(&ix.view(), t.term);
    std::vector<double> contrib(m, 0.0);
    for (size_t a = 0; a < n_allowed; ++a) {
      const uint32_t d = allowed[a];
      bool any = false;
      for (size_t i = 0; i < m; ++i) {
        cur[i].next_geq(d);
        if (cur[i].doc() == d) {
          contrib[terms[i].qidx] = sc.combine(terms[i].w, sc.x(cur[i].tf(), d));
          any = true;
        }
      }
      if (any) top.push(ordered_sum(contrib.data(), m), d);
      std::fill(contrib.begin(), contrib.end(), 0.0);
    }
    return top.take_sorted();
  }
  FilterScratch& f = *filter_scratch();
  f.allowed_bits.assign(ix.n_docs() / 64 + 1, 0);
  for (size_t a = 0; a < n_allowed; ++a) f.allowed_bits[allowed[a] / 64] |= 1ULL << (allowed[a] % 64);
  return exhaustive_topk<true>(ix, terms, k, f.allowed_bits.data());
}

}  // namespace irforge::bm25
