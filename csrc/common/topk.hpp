// Top-k selection with a total order: higher score first, ties broken by lower document number.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace irforge {

struct ScoredDoc {
  float score;
  uint32_t doc;
};

// a ranks before b
inline bool ranks_before(const ScoredDoc& a, const ScoredDoc& b) {
  return a.score > b.score || (a.score == b.score && a.doc < b.doc);
}

class TopK {
 public:
  explicit TopK(size_t k) : k_(k) { heap_.reserve(std::min<size_t>(k, 1 << 16)); }

  bool full() const { return heap_.size() >= k_; }
  // Score a new document must beat (strictly, when it has a larger doc number than all held) to enter.
  float threshold() const { return full() ? heap_.front().score : -std::numeric_limits<float>::infinity(); }

  // Offers a document; the heap keeps the k that rank first. Returns whether it entered.
  bool push(float score, uint32_t doc) {
    ScoredDoc d{score, doc};
    if (!full()) {
      heap_.push_back(d);
      std::push_heap(heap_.begin(), heap_.end(), ranks_before);
      return true;
    }
    if (!ranks_before(d, heap_.front())) return false;
    std::pop_heap(heap_.begin(), heap_.end(), ranks_before);
    heap_.back() = d;
    std::push_heap(heap_.begin(), heap_.end(), ranks_before);
    return true;
  }

  // The held documents in rank order; empties the heap.
  std::vector<ScoredDoc> take_sorted() {
    std::sort_heap(heap_.begin(), heap_.end(), ranks_before);
    std::vector<ScoredDoc> out;
    out.swap(heap_);
    return out;
  }
  void clear() { heap_.clear(); }

 private:
  size_t k_;
  std::vector<ScoredDoc> heap_;  // heap_.front() is the document that ranks last
};

}  // namespace irforge
