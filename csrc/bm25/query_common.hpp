// What every query algorithm shares: per-term weights and upper bounds, the score of a document as
// a sum in query-term order (so every algorithm gives bit-identical scores), and a safe comparison of
// an upper bound against the top-k threshold.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "../common/topk.hpp"
#include "index.hpp"

namespace irforge::bm25 {

struct PreparedTerm {
  uint32_t term;
  uint32_t qidx;  // position in the query (first occurrence)
  float w;        // qtf * idf
  float ub;       // largest contribution of this term to any document, never below 0
};

inline std::vector<PreparedTerm> prepare(const Index& ix, const std::vector<QueryTerm>& q) {
  std::vector<PreparedTerm> out;
  out.reserve(q.size());
  const Scorer& sc = ix.scorer();
  const uint32_t* df = ix.storage().df;
  for (uint32_t i = 0; i < q.size(); ++i) {
    const float w = sc.weight(df[q[i].term], q[i].qtf);
    out.push_back({q[i].term, i, w, std::max(0.0f, sc.combine(w, ix.term_max(q[i].term)))});
  }
  return out;
}

// An upper bound on a sum of term contributions, inflated past any rounding difference between
// summation orders (contributions are float32, sums double, scores float32).
inline double safe_bound(double x) { return x + std::fabs(x) * 1e-5 + 1e-7; }

// A candidate can enter the top k only if its score beats the threshold.
inline bool may_enter(double ub, const TopK& top) { return !top.full() || safe_bound(ub) > top.threshold(); }

// Sums contributions in query order; contrib[i] is the contribution of query term i (0 when absent).
inline float ordered_sum(const double* contrib, size_t m) {
  double s = 0.0;
  for (size_t i = 0; i < m; ++i) s += contrib[i];
  return static_cast<float>(s);
}

}  // namespace irforge::bm25
