// The Porter stemmer (M.F. Porter, 1980) as in Porter's reference C implementation, which Lucene's
// PorterStemFilter follows: its two departures ("bli" -> "ble", "logi" -> "log") included, words of
// one or two characters left alone. It works on code points; anything but a-z counts as a consonant.
#pragma once
#include <cstddef>
#include <vector>

namespace irforge::porter {

class Stemmer {
 public:
  // Stems b[0..len) in place and returns the new length.
  size_t stem(char32_t* buf, size_t len) {
    if (len <= 2) return len;
    b_ = buf;
    k_ = static_cast<long>(len) - 1;
    step1ab();
    if (k_ > 0) {
      step1c();
      step2();
      step3();
      step4();
      step5();
    }
    return static_cast<size_t>(k_ + 1);
  }

 private:
  char32_t* b_ = nullptr;
  long k_ = 0;  // end of the current word
  long j_ = 0;  // end of the stem when a suffix matched

  bool cons(long i) const {
    switch (b_[i]) {
      case U'a': case U'e': case U'i': case U'o': case U'u': return false;
      case U'y': return i == 0 ? true : !cons(i - 1);
      default: return true;
    }
  }
  // Number of VC sequences in b[0..j].
  int m() const {
    int n = 0;
    long i = 0;
    while (true) {
      if (i > j_) return n;
      if (!cons(i)) break;
      ++i;
    }
    ++i;
    while (true) {
      while (true) {
        if (i > j_) return n;
        if (cons(i)) break;
        ++i;
      }
      ++i;
      ++n;
      while (true) {
        if (i > j_) return n;
        if (!cons(i)) break;
        ++i;
      }
      ++i;
    }
  }
  bool vowel_in_stem() const {
    for (long i = 0; i <= j_; ++i)
      if (!cons(i)) return true;
    return false;
  }
  bool doublec(long j) const { return j >= 1 && b_[j] == b_[j - 1] && cons(j); }
  bool cvc(long i) const {
    if (i < 2 || !cons(i) || cons(i - 1) || !cons(i - 2)) return false;
    char32_t ch = b_[i];
    return !(ch == U'w' || ch == U'x' || ch == U'y');
  }
  bool ends(const char* s) {
    long len = 0;
    while (s[len]) ++len;
    if (len > k_ + 1) return false;
    for (long i = 0; i < len; ++i)
      if (b_[k_ - len + 1 + i] != static_cast<char32_t>(s[i])) return false;
    j_ = k_ - len;
    return true;
  }
  void setto(const char* s) {
    long len = 0;
    while (s[len]) ++len;
    for (long i = 0; i < len; ++i) b_[j_ + 1 + i] = static_cast<char32_t>(s[i]);
    k_ = j_ + len;
  }
  void r(const char* s) {
    if (m() > 0) setto(s);
  }

  void step1ab() {
    if (b_[k_] == U's') {
      if (ends("sses")) k_ -= 2;
      else if (ends("ies")) setto("i");
      else if (b_[k_ - 1] != U's') --k_;
    }
    if (ends("eed")) {
      if (m() > 0) --k_;
    } else if ((ends("ed") || ends("ing")) && vowel_in_stem()) {
      k_ = j_;
      if (ends("at")) setto("ate");
      else if (ends("bl")) setto("ble");
      else if (ends("iz")) setto("ize");
      else if (doublec(k_)) {
        char32_t ch = b_[k_--];
        if (ch == U'l' || ch == U's' || ch == U'z') ++k_;
      } else if (m() == 1 && cvc(k_)) {
        setto("e");
      }
    }
  }
  void step1c() {
    if (ends("y") && vowel_in_stem()) b_[k_] = U'i';
  }
  void step2() {
    if (k_ < 1) return;
    switch (b_[k_ - 1]) {
      case U'a':
        if (ends("ational")) { r("ate"); break; }
        if (ends("tional")) { r("tion"); break; }
        break;
      case U'c':
        if (ends("enci")) { r("ence"); break; }
        if (ends("anci")) { r("ance"); break; }
        break;
      case U'e':
        if (ends("izer")) { r("ize"); break; }
        break;
      case U'l':
        if (ends("bli")) { r("ble"); break; }
        if (ends("alli")) { r("al"); break; }
        if (ends("entli")) { r("ent"); break; }
        if (ends("eli")) { r("e"); break; }
        if (ends("ousli")) { r("ous"); break; }
        break;
      case U'o':
        if (ends("ization")) { r("ize"); break; }
        if (ends("ation")) { r("ate"); break; }
        if (ends("ator")) { r("ate"); break; }
        break;
      case U's':
        if (ends("alism")) { r("al"); break; }
        if (ends("iveness")) { r("ive"); break; }
        if (ends("fulness")) { r("ful"); break; }
        if (ends("ousness")) { r("ous"); break; }
        break;
      case U't':
        if (ends("aliti")) { r("al"); break; }
        if (ends("iviti")) { r("ive"); break; }
        if (ends("biliti")) { r("ble"); break; }
        break;
      case U'g':
        if (ends("logi")) { r("log"); break; }
        break;
      default: break;
    }
  }
  void step3() {
    switch (b_[k_]) {
      case U'e':
        if (ends("icate")) { r("ic"); break; }
        if (ends("ative")) { r(""); break; }
        if (ends("alize")) { r("al"); break; }
        break;
      case U'i':
        if (ends("iciti")) { r("ic"); break; }
        break;
      case U'l':
        if (ends("ical")) { r("ic"); break; }
        if (ends("ful")) { r(""); break; }
        break;
      case U's':
        if (ends("ness")) { r(""); break; }
        break;
      default: break;
    }
  }
  void step4() {
    if (k_ < 1) return;
    switch (b_[k_ - 1]) {
      case U'a': if (ends("al")) break; return;
      case U'c': if (ends("ance")) break; if (ends("ence")) break; return;
      case U'e': if (ends("er")) break; return;
      case U'i': if (ends("ic")) break; return;
      case U'l': if (ends("able")) break; if (ends("ible")) break; return;
      case U'n': if (ends("ant")) break; if (ends("ement")) break; if (ends("ment")) break; if (ends("ent")) break; return;
      case U'o':
        if (ends("ion") && j_ >= 0 && (b_[j_] == U's' || b_[j_] == U't')) break;
        if (ends("ou")) break;
        return;
      case U's': if (ends("ism")) break; return;
      case U't': if (ends("ate")) break; if (ends("iti")) break; return;
      case U'u': if (ends("ous")) break; return;
      case U'v': if (ends("ive")) break; return;
      case U'z': if (ends("ize")) break; return;
      default: return;
    }
    if (m() > 1) k_ = j_;
  }
  void step5() {
    j_ = k_;
    if (b_[k_] == U'e') {
      int a = m();
      if (a > 1 || (a == 1 && !cvc(k_ - 1))) --k_;
    }
    if (b_[k_] == U'l' && doublec(k_) && m() > 1) --k_;
  }
};

}  // namespace irforge::porter
