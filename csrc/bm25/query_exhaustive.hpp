// Exhaustive term-at-a-time scoring: every posting of every query term is scored. The reference
// that the pruned algorithms must match exactly.
#pragma once
#include <vector>

#include "query_common.hpp"

namespace irforge::bm25 {

struct ExhaustiveScratch {
  std::vector<double> acc;
  std::vector<uint8_t> seen;
  std::vector<uint32_t> touched;
};

// Per-thread scratch, reached through a call the compiler cannot inline: in a shared library each use
// of a thread_local costs a __tls_get_addr call, and GCC repeats it inside loops even via references.
__attribute__((noinline)) inline ExhaustiveScratch* exhaustive_scratch() {
  thread_local ExhaustiveScratch scratch;
  return &scratch;
}

// Term-at-a-time accumulation of every posting, then the top k. kFiltered: only documents whose bit is set in
// `allowed` (a bitmap over the documents) are scored; the unfiltered loop carries no test.
template <bool kFiltered>
std::vector<ScoredDoc> exhaustive_topk(const Index& ix, const std::vector<PreparedTerm>& terms, size_t k,
                                       const uint64_t* allowed) {
  ExhaustiveScratch& s = *exhaustive_scratch();
  std::vector<double>& acc = s.acc;
  std::vector<uint8_t>& seen = s.seen;
  std::vector<uint32_t>& touched = s.touched;
  const uint32_t N = ix.n_docs();
  if (acc.size() < N) {
    acc.assign(N, 0.0);
    seen.assign(N, 0);
  }
  // N + 1 slots: the loop below writes a slot before it knows whether to keep it, so once every document has
  // been seen it still writes one past the last kept slot.
  if (touched.size() < N + 1ull) touched.resize(N + 1ull);
  uint32_t n_touched = 0;
  const Scorer& sc = ix.scorer();
  float contrib[kBlockSize];
  // Raw pointers: a store through seen (a byte type) may alias anything, so through the vectors the compiler
  // would reload their data pointers after every posting.
  double* const accp = acc.data();
  uint8_t* const seenp = seen.data();
  uint32_t* const touchedp = touched.data();
  for (const PreparedTerm& t : terms) {  // query order: the same summation order as ordered_sum
    Cursor c(&ix.view(), t.term);
    do {
      const uint32_t n = c.block_count();
      const uint32_t* docs = c.block_docs();
      sc.contributions(t.w, c.block_tfs(), docs, n, contrib);
      for (uint32_t i = 0; i < n; ++i) {
        const uint32_t d = docs[i];
        if constexpr (kFiltered) {
          if (!((allowed[d / 64] >> (d % 64)) & 1)) continue;
        }
        touchedp[n_touched] = d;  // branch-free: the slot is kept only for a document seen the first time
        n_touched += seenp[d] ^ 1u;
        seenp[d] = 1;
        accp[d] += contrib[i];
      }
    } while (c.advance_block());
  }
  TopK top(k);
  for (uint32_t j = 0; j < n_touched; ++j) {
    const uint32_t d = touchedp[j];
    top.push(static_cast<float>(accp[d]), d);
    accp[d] = 0.0;
    seenp[d] = 0;
  }
  return top.take_sorted();
}

inline std::vector<ScoredDoc> search_exhaustive(const Index& ix, const std::vector<QueryTerm>& q, size_t k) {
  return exhaustive_topk<false>(ix, prepare(ix, q), k, nullptr);
}

}  // namespace irforge::bm25
