// Suffix array construction by induced sorting (SA-IS; Nong, Zhang & Chan 2009), linear time, for integer
// alphabets. Templated on the symbol type and on the index type: int32_t below 2^31 symbols, int64_t above.
//
// Input: T[0..n) over [0, K) whose last symbol is 0 and occurs nowhere else (the sentinel).
// Output: SA[0..n). Extra memory: n bits for the types, K (or n/2 at the first recursion) bucket entries;
// the reduced problem lives inside SA.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace irforge::fm {

namespace sais_detail {

template <class Sym, class I>
void bucket_bounds(const Sym* T, I n, I K, std::vector<I>& bkt, bool ends) {
  std::fill(bkt.begin(), bkt.begin() + K, I(0));
  for (I i = 0; i < n; ++i) ++bkt[T[i]];
  I sum = 0;
  for (I c = 0; c < K; ++c) {
    sum += bkt[c];
    bkt[c] = ends ? sum : sum - bkt[c];
  }
}

// Suffix types, one bit each: 1 = S, 0 = L.
struct Types {
  std::vector<uint64_t> w;
  explicit Types(uint64_t n) : w(n / 64 + 1, 0) {}
  bool operator[](int64_t i) const { return (w[static_cast<uint64_t>(i) / 64] >> (i % 64)) & 1; }
  void set(int64_t i) { w[static_cast<uint64_t>(i) / 64] |= 1ULL << (i % 64); }
};
inline bool is_lms(const Types& t, int64_t i) { return i > 0 && t[i] && !t[i - 1]; }

template <class Sym, class I>
void induce(const Sym* T, I* SA, I n, I K, const Types& t, std::vector<I>& bkt) {
  bucket_bounds(T, n, K, bkt, false);
  for (I i = 0; i < n; ++i) {
    const I j = SA[i] - 1;
    if (SA[i] > 0 && !t[j]) SA[bkt[T[j]]++] = j;
  }
  bucket_bounds(T, n, K, bkt, true);
  for (I i = n; i-- > 0;) {
    const I j = SA[i] - 1;
    if (SA[i] > 0 && t[j]) SA[--bkt[T[j]]] = j;
  }
}

template <class Sym, class I>
void sais(const Sym* T, I* SA, I n, I K) {
  if (n == 1) {
    SA[0] = 0;
    return;
  }
  Types t(static_cast<uint64_t>(n));
  t.set(n - 1);
  for (I i = n - 1; i-- > 0;)
    if (T[i] < T[i + 1] || (T[i] == T[i + 1] && t[i + 1])) t.set(i);
  std::vector<I> bkt(static_cast<size_t>(K));

  // 1. Sort LMS substrings: LMS positions at their bucket ends, then induce.
  bucket_bounds(T, n, K, bkt, true);
  std::fill(SA, SA + n, I(-1));
  for (I i = 1; i < n; ++i)
    if (is_lms(t, i)) SA[--bkt[T[i]]] = i;
  induce(T, SA, n, K, t, bkt);

  // 2. Compact the sorted LMS positions into SA[0..n1) and name the LMS substrings.
  I n1 = 0;
  for (I i = 0; i < n; ++i)
    if (is_lms(t, SA[i])) SA[n1++] = SA[i];
  std::fill(SA + n1, SA + n, I(-1));
  I name = 0, prev = -1;
  for (I i = 0; i < n1; ++i) {
    if (i + 16 < n1) {  // the substrings sit at random text positions: fetch ahead
      __builtin_prefetch(T + SA[i + 16]);
      __builtin_prefetch(t.w.data() + static_cast<uint64_t>(SA[i + 16]) / 64);
    }
    const I pos = SA[i];
    bool diff = false;
    for (I d = 0;; ++d) {
      if (prev == -1 || T[pos + d] != T[prev + d] || t[pos + d] != t[prev + d]) {
        diff = true;
        break;
      }
      if (d > 0 && (is_lms(t, pos + d) || is_lms(t, prev + d))) break;  // both LMS at d: equal substrings
    }
    if (diff) {
      ++name;
      prev = pos;
    }
    SA[n1 + pos / 2] = name - 1;
  }
  // Gather the names in text order into SA[n - n1 .. n).
  for (I i = n, j = n; i-- > n1;)
    if (SA[i] >= 0) SA[--j] = SA[i];

  // 3. Sort the reduced string (recursively when names repeat).
  I* SA1 = SA;
  I* s1 = SA + n - n1;
  if (name < n1) {
    std::vector<I>().swap(bkt);  // rebuilt below: free it while the recursion runs
    sais<I, I>(s1, SA1, n1, name);
    bkt.resize(static_cast<size_t>(K));
  } else {
    for (I i = 0; i < n1; ++i) SA1[s1[i]] = i;
  }

  // 4. Place the LMS suffixes in sorted order and induce the full suffix array.
  bucket_bounds(T, n, K, bkt, true);
  for (I i = 1, j = 0; i < n; ++i)
    if (is_lms(t, i)) s1[j++] = i;  // s1 now maps reduced positions to text positions
  for (I i = 0; i < n1; ++i) SA1[i] = s1[SA1[i]];
  std::fill(SA + n1, SA + n, I(-1));
  for (I i = n1; i-- > 0;) {
    const I j = SA[i];
    SA[i] = -1;
    SA[--bkt[T[j]]] = j;
  }
  induce(T, SA, n, K, t, bkt);
}

}  // namespace sais_detail

// Suffix array of T[0..n) (last symbol 0, unique). K is one past the largest symbol.
template <class Sym, class I>
void suffix_array(const Sym* T, I* SA, I n, I K) {
  if (n <= 0) throw std::invalid_argument("suffix_array: empty input");
  if (T[n - 1] != 0) throw std::invalid_argument("suffix_array: the last symbol must be the sentinel 0");
  sais_detail::sais<Sym, I>(T, SA, n, K);
}

}  // namespace irforge::fm
