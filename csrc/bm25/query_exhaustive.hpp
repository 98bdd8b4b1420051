// Exhaustive term-at-a-time scoring: every posting of every query term is scored. The reference
// that the pruned algorithms must match exactly.
#pragma once
#include <vector>

#include "query_common.hpp"

namespace irforge::bm25 {

inline std::vector<ScoredDoc> search_exhaustive(const Index& ix, const std::vector<QueryTerm>& q, size_t k) {
  thread_local std::vector<double> acc;
  thread_local std::vector<uint8_t> seen;
  thread_local std::vector<uint32_t> touched;
  const uint32_t N = ix.n_docs();
  if (acc.size() < N) {
    acc.assign(N, 0.0);
    seen.assign(N, 0);
  }
  touched.clear();
  const Scorer& sc = ix.scorer();
  for (const PreparedTerm& t : prepare(ix, q)) {  // query order: the same summation order as ordered_sum
    Cursor c(&ix.view(), t.term);
    for (uint32_t d = c.doc(); d != kEndDoc; c.next(), d = c.doc()) {
      if (!seen[d]) {
        seen[d] = 1;
        touched.push_back(d);
      }
      acc[d] += sc.combine(t.w, sc.x(c.tf(), d));
    }
  }
  TopK top(k);
  for (uint32_t d : touched) {
    top.push(static_cast<float>(acc[d]), d);
    acc[d] = 0.0;
    seen[d] = 0;
  }
  return top.take_sorted();
}

}  // namespace irforge::bm25
