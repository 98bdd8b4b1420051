// Text analysis that reproduces Lucene's English analyzer as Anserini/Pyserini configure it:
//   StandardTokenizer (Unicode UAX #29 word boundaries; ideographs and hiragana one token each;
//   tokens longer than 255 code points split) -> EnglishPossessiveFilter -> LowerCaseFilter ->
//   StopFilter (Lucene's English stopword set) -> PorterStemFilter.
// Stemming and stopwords can be switched off or replaced. Known differences from Lucene: emoji
// sequences are dropped rather than emitted, and the Hebrew-letter and regional-indicator rules
// of UAX #29 are not applied (Hebrew letters follow the ordinary letter rules).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "porter.hpp"
#include "unicode_tables.hpp"

namespace irforge::bm25 {

enum WordClass : uint8_t {
  kOther = 0, kALetter, kNumeric, kKatakana, kIdeo, kExtend, kMidLetter, kMidNum, kMidNumLet, kSQuote, kExtendNumLet
};

inline uint8_t word_class(char32_t c) {
  if (c < 128) return unicode::kAsciiClass[c];
  int lo = 0, hi = unicode::kNumClassRanges - 1;
  while (lo <= hi) {
    int mid = (lo + hi) >> 1;
    const auto& r = unicode::kClassRanges[mid];
    if (c < r.first) hi = mid - 1;
    else if (c > r.last) lo = mid + 1;
    else return r.cls;
  }
  return kOther;
}

inline char32_t to_lower(char32_t c) {
  if (c < 128) return (c >= U'A' && c <= U'Z') ? c + 32 : c;
  int lo = 0, hi = unicode::kNumLowerPairs - 1;
  while (lo <= hi) {
    int mid = (lo + hi) >> 1;
    const auto& p = unicode::kLowerPairs[mid];
    if (c < p.from) hi = mid - 1;
    else if (c > p.from) lo = mid + 1;
    else return p.to;
  }
  return c;
}

struct Utf8Error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Strict UTF-8 decoding (no overlongs, no surrogates, nothing above U+10FFFF).
inline void decode_utf8(std::string_view s, std::vector<char32_t>& out) {
  out.clear();
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) {
      out.push_back(c);
      ++i;
      continue;
    }
    int len;
    char32_t cp, min;
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
    else throw Utf8Error("invalid UTF-8 at byte " + std::to_string(i));
    if (i + len > n) throw Utf8Error("truncated UTF-8 sequence at byte " + std::to_string(i));
    for (int j = 1; j < len; ++j) {
      unsigned char cc = p[i + j];
      if ((cc & 0xC0) != 0x80) throw Utf8Error("invalid UTF-8 at byte " + std::to_string(i + j));
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      throw Utf8Error("invalid UTF-8 at byte " + std::to_string(i));
    out.push_back(cp);
    i += len;
  }
}

inline void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

// Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET.
inline const std::vector<std::string>& lucene_english_stopwords() {
  static const std::vector<std::string> words = {
      "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not",
      "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was",
      "will", "with"};
  return words;
}

struct AnalyzerConfig {
  bool lowercase = true;
  bool possessive = true;
  bool stem = true;  // Porter
  std::vector<std::string> stopwords = lucene_english_stopwords();
  uint32_t max_token_length = 255;
};

class Analyzer {
 public:
  explicit Analyzer(AnalyzerConfig cfg) : cfg_(std::move(cfg)), stop_(cfg_.stopwords.begin(), cfg_.stopwords.end()) {
    if (cfg_.max_token_length == 0) throw std::invalid_argument("max_token_length must be positive");
  }
  const AnalyzerConfig& config() const { return cfg_; }

  // Calls emit(std::string_view term) for each term of `text`, in order. Throws Utf8Error on bad UTF-8.
  template <class Emit>
  void analyze(std::string_view text, Emit&& emit) const {
    Scratch& s = *scratch();
    std::vector<char32_t>& cps = s.cps;
    std::vector<char32_t>& tok = s.tok;
    std::string& term = s.term;
    porter::Stemmer& stemmer = s.stemmer;
    decode_utf8(text, cps);
    const size_t n = cps.size();
    size_t i = 0;
    auto cls_at = [&](size_t pos) { return word_class(cps[pos]); };
    // The next position at or after `pos` whose class is not Extend (format and combining marks are
    // transparent to the boundary rules, UAX #29 WB4).
    auto skip_extend = [&](size_t pos) {
      while (pos < n && cls_at(pos) == kExtend) ++pos;
      return pos;
    };
    auto finish = [&](size_t start, size_t end) {
      tok.assign(cps.begin() + static_cast<long>(start), cps.begin() + static_cast<long>(end));
      // Split tokens longer than the maximum, as Lucene's StandardTokenizer does.
      for (size_t off = 0; off < tok.size(); off += cfg_.max_token_length) {
        size_t len = std::min<size_t>(cfg_.max_token_length, tok.size() - off);
        process(tok.data() + off, len, stemmer, term, emit);
      }
    };
    while (i < n) {
      uint8_t c = cls_at(i);
      if (c == kIdeo) {
        size_t end = skip_extend(i + 1);
        finish(i, end);
        i = end;
        continue;
      }
      if (c != kALetter && c != kNumeric && c != kKatakana && c != kExtendNumLet) {
        ++i;
        continue;
      }
      const size_t start = i;
      uint8_t last = c;
      bool has_word_char = (c != kExtendNumLet);
      size_t end = skip_extend(i + 1);
      while (end < n) {
        uint8_t nc = cls_at(end);
        bool join = false;
        if ((last == kALetter || last == kNumeric) && (nc == kALetter || nc == kNumeric)) join = true;
        else if (last == kKatakana && nc == kKatakana) join = true;
        else if (nc == kExtendNumLet && last != kOther) join = true;
        else if (last == kExtendNumLet && (nc == kALetter || nc == kNumeric || nc == kKatakana)) join = true;
        if (join) {
          last = nc;
          has_word_char |= (nc != kExtendNumLet);
          end = skip_extend(end + 1);
          continue;
        }
        // Mid punctuation joins only when the same kind of character follows it (WB6/7, WB11/12).
        size_t after = skip_extend(end + 1);
        if (after < n) {
          uint8_t ac = cls_at(after);
          bool letter_mid = last == kALetter && ac == kALetter &&
                            (nc == kMidLetter || nc == kMidNumLet || nc == kSQuote);
          bool number_mid = last == kNumeric && ac == kNumeric &&
                            (nc == kMidNum || nc == kMidNumLet || nc == kSQuote);
          if (letter_mid || number_mid) {
            last = ac;
            end = skip_extend(after + 1);
            continue;
          }
        }
        break;
      }
      if (has_word_char) finish(start, end);
      i = end;
    }
  }

  std::vector<std::string> analyze_to_vector(std::string_view text) const {
    std::vector<std::string> out;
    analyze(text, [&](std::string_view t) { out.emplace_back(t); });
    return out;
  }

 private:
  struct Scratch {
    std::vector<char32_t> cps, tok;
    std::string term;
    porter::Stemmer stemmer;
  };
  // Per-thread buffers, reached through a call the compiler cannot inline: in a shared library each use
  // of a thread_local costs a __tls_get_addr call, and GCC repeats it inside loops even via references.
  __attribute__((noinline)) static Scratch* scratch() {
    thread_local Scratch s;
    return &s;
  }
  AnalyzerConfig cfg_;
  std::unordered_set<std::string> stop_;

  template <class Emit>
  void process(char32_t* t, size_t len, porter::Stemmer& stemmer, std::string& term, Emit& emit) const {
    if (cfg_.possessive && len >= 2 && (t[len - 2] == U'\'' || t[len - 2] == 0x2019 || t[len - 2] == 0xFF07) &&
        (t[len - 1] == U's' || t[len - 1] == U'S'))
      len -= 2;
    if (len == 0) return;
    if (cfg_.lowercase)
      for (size_t j = 0; j < len; ++j) t[j] = to_lower(t[j]);
    term.clear();
    for (size_t j = 0; j < len; ++j) append_utf8(t[j], term);
    if (!stop_.empty() && stop_.count(term)) return;
    if (cfg_.stem) {
      // The stemmer may rewrite characters without changing the length ("happy" -> "happi").
      size_t new_len = stemmer.stem(t, len);
      term.clear();
      for (size_t j = 0; j < new_len; ++j) append_utf8(t[j], term);
    }
    emit(std::string_view(term));
  }
};

}  // namespace irforge::bm25
