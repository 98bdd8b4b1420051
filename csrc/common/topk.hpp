// Top-k selection with a total order: higher score first, ties broken by lower document number.
//
// Candidates go into a buffer; when it holds 2k, nth_element keeps the best k and the k-th becomes the
// bar that later candidates must beat. Amortised O(1) per candidate (a binary heap costs O(log k) per
// entry, which dominated top-1000 queries), and the comparison inlines.
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
struct RanksBefore {
  bool operator()(const ScoredDoc& a, const ScoredDoc& b) const {
    return a.score > b.score || (a.score == b.score && a.doc < b.doc);
  }
};

class TopK {
 public:
  explicit TopK(size_t k) : k_(k) { buf_.reserve(std::min<size_t>(2 * k, 1 << 16)); }

  // Whether a k-th best document is known; until then every candidate enters.
  bool full() const { return has_bar_; }
  // Score a candidate must beat (or tie with a lower document number) to enter; -inf until full().
  float threshold() const { return has_bar_ ? bar_.score : -std::numeric_limits<float>::infinity(); }

  // Offers a document. Returns whether it was kept for now.
  bool push(float score, uint32_t doc) {
    const ScoredDoc d{score, doc};
    if (has_bar_ && !RanksBefore()(d, bar_)) return false;
    buf_.push_back(d);
    if (buf_.size() >= 2 * k_) shrink();
    return true;
  }

  // The best k in rank order; empties the selection.
  std::vector<ScoredDoc> take_sorted() {
    if (buf_.size() > k_) shrink();
    std::sort(buf_.begin(), buf_.end(), RanksBefore());
    std::vector<ScoredDoc> out;
    out.swap(buf_);
    has_bar_ = false;
    return out;
  }

 private:
  size_t k_;
  std::vector<ScoredDoc> buf_;
  ScoredDoc bar_{0.0f, 0};
  bool has_bar_ = false;

  void shrink() {
    std::nth_element(buf_.begin(), buf_.begin() + static_cast<long>(k_ - 1), buf_.end(), RanksBefore());
    buf_.resize(k_);
    bar_ = buf_[k_ - 1];
    has_bar_ = true;
  }
};

}  // namespace irforge
