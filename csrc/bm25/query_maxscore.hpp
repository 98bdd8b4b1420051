// MaxScore (Turtle & Flood 1995), document at a time. Terms sorted by upper bound; the longest prefix
// whose bounds sum to at most the threshold is "non-essential": a document is only considered when an
// essential term holds it, and non-essential terms are probed only while the document can still win.
#pragma once
#include <algorithm>
#include <vector>

#include "query_common.hpp"

namespace irforge::bm25 {

inline std::vector<ScoredDoc> search_maxscore(const Index& ix, const std::vector<QueryTerm>& q, size_t k) {
  std::vector<PreparedTerm> terms = prepare(ix, q);
  const size_t m = terms.size();
  TopK top(k);
  if (m == 0) return {};
  std::sort(terms.begin(), terms.end(), [](const PreparedTerm& a, const PreparedTerm& b) { return a.ub < b.ub; });
  std::vector<Cursor> cur;
  cur.reserve(m);
  for (const auto& t : terms) cur.emplace_back(&ix.view(), t.term);
  std::vector<double> prefix(m);  // prefix[i] = sum of ub[0..i]
  double run = 0.0;
  for (size_t i = 0; i < m; ++i) prefix[i] = (run += terms[i].ub);
  std::vector<double> contrib(m, 0.0);
  const Scorer& sc = ix.scorer();
  size_t first_essential = 0;
  float threshold = top.threshold();

  while (first_essential < m) {
    uint32_t doc = kEndDoc;
    for (size_t i = first_essential; i < m; ++i) doc = std::min(doc, cur[i].doc());
    if (doc == kEndDoc) break;
    double partial = 0.0;
    for (size_t i = first_essential; i < m; ++i) {
      if (cur[i].doc() == doc) {
        const double c = sc.combine(terms[i].w, sc.x(cur[i].tf(), doc));
        contrib[terms[i].qidx] = c;
        partial += c;
        cur[i].next();
      }
    }
    bool pruned = false;
    for (size_t i = first_essential; i-- > 0;) {
      if (!may_enter(partial + prefix[i], top)) {
        pruned = true;
        break;
      }
      cur[i].next_geq(doc);
      if (cur[i].doc() == doc) {
        const double c = sc.combine(terms[i].w, sc.x(cur[i].tf(), doc));
        contrib[terms[i].qidx] = c;
        partial += c;
      }
    }
    if (!pruned && top.push(ordered_sum(contrib.data(), m), doc) && top.full() && top.threshold() != threshold) {
      threshold = top.threshold();
      while (first_essential < m && !may_enter(prefix[first_essential], top)) ++first_essential;
    }
    std::fill(contrib.begin(), contrib.end(), 0.0);
  }
  return top.take_sorted();
}

}  // namespace irforge::bm25
