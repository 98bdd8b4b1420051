// BM25 variants as named by Kamphuis et al. (ECIR 2020). Every variant scores a posting as
//   contrib = combine(w, x)   with  w = qtf * idf(df)  and  x = saturation(tf, doc),
// where combine is nondecreasing in x. That shape lets the index store, per block and per term,
// the largest x, from which any query's block-max and term-max upper bounds follow exactly.
//
//  lucene     Lucene 9 BM25Similarity, bit for bit: idf = ln(1 + (N - df + .5)/(df + .5)),
//             document length stored in Lucene's lossy one-byte encoding, float32 arithmetic,
//             x = tf / (k1 (1 - b + b dl/avgdl)), contrib = w - w / (1 + x)  (= w tf/(tf + K)).
//  robertson  idf = ln((N - df + .5)/(df + .5))  (negative for df > N/2), x = (k1+1) tf / (tf + K)
//  atire      idf = ln(N / df),                  x = (k1+1) tf / (tf + K)
//  bm25l      idf = ln((N + 1)/(df + .5)),        c = tf / (1 - b + b dl/avgdl), x = (k1+1)(c+d)/(k1+c+d)
//  bm25+      idf = ln((N + 1)/df),               x = (k1+1) tf / (tf + K) + d
// with K = k1 (1 - b + b dl/avgdl), N the number of documents with at least one term (Lucene's
// docCount), avgdl = total terms / N, d = delta (bm25l 0.5, bm25+ 1.0 by default).
#pragma once
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace irforge::bm25 {

enum class Method : uint32_t { kLucene = 0, kRobertson = 1, kAtire = 2, kBm25L = 3, kBm25Plus = 4 };

struct ScoringParams {
  Method method = Method::kLucene;
  float k1 = 0.9f;
  float b = 0.4f;
  float delta = 0.0f;
};

inline void check_params(const ScoringParams& p) {
  if (!(p.k1 >= 0.0f) || !std::isfinite(p.k1)) throw std::invalid_argument("k1 must be a finite number >= 0, got " + std::to_string(p.k1));
  if (!(p.b >= 0.0f && p.b <= 1.0f)) throw std::invalid_argument("b must lie in [0, 1], got " + std::to_string(p.b));
  if (!(p.delta >= 0.0f) || !std::isfinite(p.delta)) throw std::invalid_argument("delta must be a finite number >= 0, got " + std::to_string(p.delta));
  if (static_cast<uint32_t>(p.method) > 4) throw std::invalid_argument("unknown BM25 method");
}

// Lucene's SmallFloat.intToByte4 / byte4ToInt: lengths below 24 exact, then 4 significant bits.
namespace lucene_norm {
inline int long_to_int4(uint64_t i) {
  if (i < 8) return static_cast<int>(i);  // fewer than 4 significant bits: stored as is
  const int num_bits = 64 - __builtin_clzll(i);
  int shift = num_bits - 4;
  int encoded = static_cast<int>(i >> shift) & 0x07;
  return encoded | ((shift + 1) << 3);
}
inline uint64_t int4_to_long(int i) {
  uint64_t bits = static_cast<uint64_t>(i & 0x07);
  int shift = (i >> 3) - 1;
  return shift == -1 ? bits : ((bits | 0x08) << shift);
}
inline constexpr int kNumFreeValues = 24;  // 255 - long_to_int4(INT32_MAX)
inline uint8_t encode(uint32_t len) {
  if (len < static_cast<uint32_t>(kNumFreeValues)) return static_cast<uint8_t>(len);
  return static_cast<uint8_t>(kNumFreeValues + long_to_int4(len - kNumFreeValues));
}
inline uint32_t decode(uint8_t b) {
  if (b < kNumFreeValues) return b;
  uint64_t d = kNumFreeValues + int4_to_long(b - kNumFreeValues);
  return d > 0x7FFFFFFFULL ? 0x7FFFFFFFu : static_cast<uint32_t>(d);
}
}  // namespace lucene_norm

class Scorer {
 public:
  Scorer() = default;
  Scorer(const ScoringParams& p, const uint32_t* doc_len, size_t n_docs) : p_(p) {
    check_params(p);
    uint64_t total = 0;
    uint64_t nonempty = 0;
    for (size_t i = 0; i < n_docs; ++i) {
      total += doc_len[i];
      nonempty += doc_len[i] > 0;
    }
    doc_count_ = nonempty;
    // Lucene: (float)(sumTotalTermFreq / (double) docCount)
    avgdl_ = nonempty ? static_cast<float>(static_cast<double>(total) / static_cast<double>(nonempty)) : 1.0f;
    doc_norm_.resize(n_docs);
    const float k1 = p.k1, b = p.b;
    if (p.method == Method::kLucene) {
      float cache[256];
      for (int i = 0; i < 256; ++i) {
        float len = static_cast<float>(lucene_norm::decode(static_cast<uint8_t>(i)));
        cache[i] = 1.0f / (k1 * ((1.0f - b) + b * len / avgdl_));
      }
      for (size_t i = 0; i < n_docs; ++i) doc_norm_[i] = cache[lucene_norm::encode(doc_len[i])];
    } else if (p.method == Method::kBm25L) {
      for (size_t i = 0; i < n_docs; ++i) doc_norm_[i] = (1.0f - b) + b * static_cast<float>(doc_len[i]) / avgdl_;
    } else {
      for (size_t i = 0; i < n_docs; ++i) doc_norm_[i] = k1 * ((1.0f - b) + b * static_cast<float>(doc_len[i]) / avgdl_);
    }
  }

  const ScoringParams& params() const { return p_; }
  uint64_t doc_count() const { return doc_count_; }
  float avgdl() const { return avgdl_; }

  float idf(uint32_t df) const {
    const double n = static_cast<double>(doc_count_), d = static_cast<double>(df);
    switch (p_.method) {
      case Method::kLucene: return static_cast<float>(std::log(1.0 + (n - d + 0.5) / (d + 0.5)));
      case Method::kRobertson: return static_cast<float>(std::log((n - d + 0.5) / (d + 0.5)));
      case Method::kAtire: return static_cast<float>(std::log(n / d));
      case Method::kBm25L: return static_cast<float>(std::log((n + 1.0) / (d + 0.5)));
      case Method::kBm25Plus: return static_cast<float>(std::log((n + 1.0) / d));
    }
    return 0.0f;
  }
  float weight(uint32_t df, uint32_t qtf) const { return static_cast<float>(qtf) * idf(df); }

  // Saturation of term frequency `tf` in document `doc`; nondecreasing in tf.
  float x(uint32_t tf, uint32_t doc) const {
    const float f = static_cast<float>(tf), k1 = p_.k1;
    const float nd = doc_norm_[doc];
    switch (p_.method) {
      case Method::kLucene: return f * nd;
      case Method::kBm25L: {
        const float c = f / nd;
        return (k1 + 1.0f) * (c + p_.delta) / (k1 + c + p_.delta);
      }
      case Method::kBm25Plus: return (k1 + 1.0f) * f / (nd + f) + p_.delta;
      default: return (k1 + 1.0f) * f / (nd + f);
    }
  }
  // Nondecreasing in x for w >= 0.
  float combine(float w, float x) const {
    return p_.method == Method::kLucene ? w - w / (1.0f + x) : w * x;
  }
  // out[i] = combine(w, x(tfs[i], docs[i])) for a block of postings, with the method chosen once so that the
  // Lucene loop (the default) has no branch and vectorises; the arithmetic is the same expressions as x and
  // combine (and -ffp-contract=off), so every query algorithm gets bit-identical scores.
  void contributions(float w, const uint32_t* tfs, const uint32_t* docs, uint32_t n, float* out) const {
    if (p_.method == Method::kLucene) {
      const float* nd = doc_norm_.data();
      for (uint32_t i = 0; i < n; ++i) {
        const float x = static_cast<float>(tfs[i]) * nd[docs[i]];
        out[i] = w - w / (1.0f + x);
      }
      return;
    }
    for (uint32_t i = 0; i < n; ++i) out[i] = combine(w, x(tfs[i], docs[i]));
  }

 private:
  ScoringParams p_;
  uint64_t doc_count_ = 0;
  float avgdl_ = 1.0f;
  std::vector<float> doc_norm_;
};

}  // namespace irforge::bm25
