// Block-max WAND (Ding & Suel 2011). Cursors kept sorted by current document; the pivot is the first
// cursor at which the terms' global upper bounds could beat the threshold; the block maxima of the
// blocks holding the pivot then decide whether to score it or to jump past the end of those blocks.
#pragma once
#include <algorithm>
#include <vector>

#include "query_common.hpp"

namespace irforge::bm25 {

inline std::vector<ScoredDoc> search_block_max_wand(const Index& ix, const std::vector<QueryTerm>& q, size_t k) {
  const std::vector<PreparedTerm> terms = prepare(ix, q);
  const size_t m = terms.size();
  TopK top(k);
  if (m == 0) return {};
  struct Entry {
    Cursor c;
    const PreparedTerm* t;
  };
  std::vector<Entry> store;
  store.reserve(m);
  for (const auto& t : terms) store.push_back({Cursor(&ix.view(), t.term), &t});
  std::vector<Entry*> cur(m);
  for (size_t i = 0; i < m; ++i) cur[i] = &store[i];
  auto by_doc = [](const Entry* a, const Entry* b) { return a->c.doc() < b->c.doc(); };
  std::sort(cur.begin(), cur.end(), by_doc);
  // Restores order after cursor i moved forward.
  auto sift = [&](size_t i) {
    while (i + 1 < m && cur[i + 1]->c.doc() < cur[i]->c.doc()) {
      std::swap(cur[i], cur[i + 1]);
      ++i;
    }
  };
  std::vector<double> contrib(m, 0.0);
  const Scorer& sc = ix.scorer();

  while (true) {
    // Pivot: first position where the global bounds of cursors 0..p could beat the threshold.
    double bound = 0.0;
    size_t p = m;
    for (size_t i = 0; i < m && cur[i]->c.doc() != kEndDoc; ++i) {
      bound += cur[i]->t->ub;
      if (may_enter(bound, top)) {
        p = i;
        break;
      }
    }
    if (p == m) break;
    const uint32_t pivot = cur[p]->c.doc();
    while (p + 1 < m && cur[p + 1]->c.doc() == pivot) ++p;

    double block_bound = 0.0;
    uint32_t next = kEndDoc;
    for (size_t i = 0; i <= p; ++i) {
      uint32_t last;
      const float bx = cur[i]->c.shallow_max(pivot, &last);
      block_bound += std::max(0.0f, sc.combine(cur[i]->t->w, bx));
      next = std::min(next, last == kEndDoc ? kEndDoc : last + 1);
    }
    if (may_enter(block_bound, top)) {
      if (cur[0]->c.doc() == pivot) {
        for (size_t i = 0; i <= p; ++i) {
          Cursor& c = cur[i]->c;
          contrib[cur[i]->t->qidx] = sc.combine(cur[i]->t->w, sc.x(c.tf(), pivot));
        }
        top.push(ordered_sum(contrib.data(), m), pivot);
        for (size_t i = 0; i <= p; ++i) contrib[cur[i]->t->qidx] = 0.0;
        for (size_t i = p + 1; i-- > 0;) {
          cur[i]->c.next();
          sift(i);
        }
      } else {
        // Move the cursor just before the pivot's run up to the pivot.
        size_t i = p;
        while (cur[i]->c.doc() == pivot) --i;
        cur[i]->c.next_geq(pivot);
        sift(i);
      }
    } else {
      // No document up to the end of the current blocks can win: skip them.
      if (p + 1 < m) next = std::min(next, cur[p + 1]->c.doc());
      if (next <= pivot) next = pivot + 1;
      size_t best = 0;
      for (size_t i = 1; i <= p; ++i)
        if (cur[i]->t->ub > cur[best]->t->ub) best = i;
      cur[best]->c.next_geq(next);
      sift(best);
    }
  }
  return top.take_sorted();
}

}  // namespace irforge::bm25
