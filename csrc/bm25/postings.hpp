// Postings codec and cursor.
//
// A term's postings are cut into blocks of kBlockSize (128) documents. Per block the index keeps, in
// separate arrays: the last document number (for skipping without decoding), the byte offset of the
// block, and the largest saturation value x (for block-max upper bounds). A block's bytes are
//   u8 doc_width | u8 tf_width | gaps bit-packed at doc_width | (tf - 1) bit-packed at tf_width
// where gap_i = doc_i - doc_{i-1} - 1 and doc_{-1} is the last document of the previous block (or -1).
// All-ones term frequencies (most blocks of rare terms) take no bytes at all.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../common/bitpack.hpp"
#include "../common/file_format.hpp"

namespace irforge::bm25 {

inline constexpr uint32_t kBlockSize = 128;
inline constexpr uint32_t kEndDoc = 0xFFFFFFFFu;

// Appends one block to `out`. docs must be strictly increasing and greater than prev_last.
inline void encode_block(const uint32_t* docs, const uint32_t* tfs, uint32_t n, int64_t prev_last,
                         std::vector<unsigned char>& out) {
  uint32_t gaps[kBlockSize], tfm1[kBlockSize];
  uint32_t gap_or = 0, tf_or = 0;
  int64_t prev = prev_last;
  for (uint32_t i = 0; i < n; ++i) {
    gaps[i] = static_cast<uint32_t>(static_cast<int64_t>(docs[i]) - prev - 1);
    prev = docs[i];
    tfm1[i] = tfs[i] - 1;
    gap_or |= gaps[i];
    tf_or |= tfm1[i];
  }
  const uint32_t wd = bit_width(gap_or), wt = bit_width(tf_or);
  out.push_back(static_cast<unsigned char>(wd));
  out.push_back(static_cast<unsigned char>(wt));
  pack(gaps, n, wd, out);
  pack(tfm1, n, wt, out);
}

// Read-only view of every term's postings, shared by all cursors of an index.
struct PostingsView {
  const uint64_t* term_block_start = nullptr;  // [n_terms + 1]: a term's blocks are [start[t], start[t+1])
  const uint32_t* df = nullptr;                // [n_terms]
  const uint32_t* block_last = nullptr;        // [n_blocks]
  const uint64_t* block_offset = nullptr;      // [n_blocks + 1], into bytes
  const float* block_max = nullptr;            // [n_blocks]: largest x in the block
  const unsigned char* bytes = nullptr;        // postings, padded by at least 8 bytes
  uint64_t n_bytes = 0;
  uint32_t n_docs = 0;
};

class Cursor {
 public:
  Cursor() = default;
  Cursor(const PostingsView* v, uint32_t term) : v_(v) {
    b_begin_ = v->term_block_start[term];
    b_end_ = v->term_block_start[term + 1];
    df_ = v->df[term];
    decode(b_begin_);
  }

  uint32_t doc() const { return doc_; }

  // Block-at-a-time access for exhaustive scoring: the current block's documents and frequencies
  // (from the cursor's position to the block end), then advance() to the next block.
  uint32_t block_count() const { return n_ - pos_; }
  const uint32_t* block_docs() const { return docs_ + pos_; }
  const uint32_t* block_tfs() {
    if (!tf_ready_) decode_tfs();
    return tfs_ + pos_;
  }
  // Moves to the next block; returns false at the end of the list.
  bool advance_block() {
    if (blk_ + 1 < b_end_) {
      decode(blk_ + 1);
      return true;
    }
    doc_ = kEndDoc;
    pos_ = n_;
    return false;
  }
  uint32_t tf() {
    if (!tf_ready_) decode_tfs();
    return tfs_[pos_];
  }
  void next() {
    if (++pos_ < n_) {
      doc_ = docs_[pos_];
    } else if (blk_ + 1 < b_end_) {
      decode(blk_ + 1);
    } else {
      doc_ = kEndDoc;
      pos_ = n_;
    }
  }
  // Moves to the first document >= target (or to the end).
  void next_geq(uint32_t target) {
    if (doc_ >= target) return;
    if (target > v_->block_last[blk_]) {
      uint64_t b = blk_ + 1;
      while (b < b_end_ && v_->block_last[b] < target) ++b;
      if (b == b_end_) {
        doc_ = kEndDoc;
        pos_ = n_;
        return;
      }
      decode(b);
    }
    while (docs_[pos_] < target) ++pos_;
    doc_ = docs_[pos_];
  }
  // Block-max support: the block that would hold `target` (not decoded). Returns its largest x and
  // sets *last to its last document. Requires target <= the term's last document.
  float shallow_max(uint32_t target, uint32_t* last) {
    if (sblk_ < blk_) sblk_ = blk_;
    while (sblk_ + 1 < b_end_ && v_->block_last[sblk_] < target) ++sblk_;
    *last = v_->block_last[sblk_];
    return v_->block_max[sblk_];
  }

 private:
  const PostingsView* v_ = nullptr;
  uint64_t b_begin_ = 0, b_end_ = 0, blk_ = 0, sblk_ = 0;
  uint32_t df_ = 0, n_ = 0, pos_ = 0, doc_ = kEndDoc;
  bool tf_ready_ = false;
  const unsigned char* tf_ptr_ = nullptr;
  uint32_t tf_width_ = 0;
  uint32_t docs_[kBlockSize];
  uint32_t tfs_[kBlockSize];

  [[noreturn]] void corrupt(const char* what) const {
    throw FormatError(std::string("corrupt postings block ") + std::to_string(blk_) + ": " + what);
  }

  void decode(uint64_t b) {
    blk_ = b;
    const uint64_t idx = b - b_begin_;
    n_ = static_cast<uint32_t>(std::min<uint64_t>(kBlockSize, df_ - idx * kBlockSize));
    const uint64_t off = v_->block_offset[b], end = v_->block_offset[b + 1];
    if (end < off + 2 || end > v_->n_bytes) corrupt("offset out of range");
    const unsigned char* p = v_->bytes + off;
    const uint32_t wd = p[0], wt = p[1];
    if (wd > 32 || wt > 32) corrupt("bit width above 32");
    const uint64_t doc_bytes = packed_bytes(n_, wd);
    if (off + 2 + doc_bytes + packed_bytes(n_, wt) != end) corrupt("size mismatch");
    unpack(p + 2, n_, wd, docs_);
    uint64_t prev = (b == b_begin_) ? 0 : static_cast<uint64_t>(v_->block_last[b - 1]) + 1;
    for (uint32_t i = 0; i < n_; ++i) {
      prev += docs_[i];
      docs_[i] = static_cast<uint32_t>(prev);
      ++prev;
    }
    if (prev - 1 != v_->block_last[b] || v_->block_last[b] >= v_->n_docs) corrupt("document numbers do not match the skip data");
    tf_ptr_ = p + 2 + doc_bytes;
    tf_width_ = wt;
    tf_ready_ = false;
    pos_ = 0;
    doc_ = docs_[0];
  }
  void decode_tfs() {
    unpack(tf_ptr_, n_, tf_width_, tfs_);
    for (uint32_t i = 0; i < n_; ++i) tfs_[i] += 1;
    tf_ready_ = true;
  }
};

}  // namespace irforge::bm25
