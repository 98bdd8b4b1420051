// pybind11 bindings: argument conversion, numpy in/out, GIL release, exception mapping. No algorithms.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <string_view>
#include <vector>

#include "../bm25/index.hpp"
#include "../bm25/query_filtered.hpp"
#include "../bm25/search.hpp"

namespace py = pybind11;
using namespace irforge;
using namespace irforge::bm25;

namespace {

// One document or query as the C++ side sees it: UTF-8 text, a token list, or an id list.
struct Item {
  std::string_view text;
  std::vector<std::string_view> tokens;
  std::vector<std::string> id_tokens;
  bool pretokenized = false;  // tokens holds the terms (always so outside text mode)
};

std::string_view utf8_of(const py::handle& h, const char* what, size_t i) {
  if (PyUnicode_Check(h.ptr())) {
    Py_ssize_t len = 0;
    const char* p = PyUnicode_AsUTF8AndSize(h.ptr(), &len);
    if (p == nullptr) {
      PyErr_Clear();
      throw py::value_error(std::string(what) + " " + std::to_string(i) + " is not valid Unicode (lone surrogate?)");
    }
    return {p, static_cast<size_t>(len)};
  }
  if (PyBytes_Check(h.ptr())) return {PyBytes_AS_STRING(h.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(h.ptr()))};
  throw py::type_error(std::string(what) + " " + std::to_string(i) + " must be str or bytes, got " +
                       std::string(py::str(py::type::of(h).attr("__name__"))));
}

// Item i of an id-mode sequence must hold integers: an integer array, or a sequence of ints (numpy's too), never a
// float (the cast to int64 would truncate 1.5 to 1) or a bool.
void check_int_ids(py::handle h, const char* what, size_t i) {
  const std::string where = std::string(what) + " " + std::to_string(i);
  if (py::isinstance<py::array>(h)) {
    auto a = py::reinterpret_borrow<py::array>(h);
    if (a.dtype().kind() != 'i' && a.dtype().kind() != 'u')
      throw py::type_error(where + " has dtype " + std::string(py::str(a.dtype())) + "; integer token ids are required");
  } else if (PySequence_Check(h.ptr()) && !PyUnicode_Check(h.ptr()) && !PyBytes_Check(h.ptr())) {
    py::sequence s = py::reinterpret_borrow<py::sequence>(h);
    for (size_t j = 0; j < py::len(s); ++j) {
      py::object t = s[j];
      if (!PyIndex_Check(t.ptr()) || PyBool_Check(t.ptr()))
        throw py::type_error(where + ": token id " + std::to_string(j) + " must be an int, got " +
                             std::string(py::str(py::type::of(t).attr("__name__"))));
    }
  }
}

// Converts a Python sequence of items for `mode`; the returned views borrow from `seq`, which the
// caller keeps alive while the GIL is released.
// With allow_terms, a text-mode item may also be a list of str: terms already analysed (queries only).
std::vector<Item> convert(const py::sequence& seq, InputMode mode, const char* what, bool allow_terms = false) {
  const size_t n = py::len(seq);
  std::vector<Item> items(n);
  for (size_t i = 0; i < n; ++i) {
    py::handle h = seq[i];
    Item& it = items[i];
    const bool terms_given = allow_terms && mode == InputMode::kText && (PyList_Check(h.ptr()) || PyTuple_Check(h.ptr()));
    if (mode == InputMode::kText && !terms_given) {
      it.text = utf8_of(h, what, i);
    } else if (mode == InputMode::kTokens || terms_given) {
      it.pretokenized = true;
      if (PyUnicode_Check(h.ptr()) || PyBytes_Check(h.ptr()) || !PySequence_Check(h.ptr()))
        throw py::type_error(std::string(what) + " " + std::to_string(i) + " must be a list of str tokens");
      py::sequence toks = py::reinterpret_borrow<py::sequence>(h);
      const size_t m = py::len(toks);
      it.tokens.reserve(m);
      for (size_t j = 0; j < m; ++j) {
        py::handle t = toks[j];
        if (!PyUnicode_Check(t.ptr()))
          throw py::type_error(std::string(what) + " " + std::to_string(i) + ": token " + std::to_string(j) +
                               " must be str, got " + std::string(py::str(py::type::of(t).attr("__name__"))));
        it.tokens.push_back(utf8_of(t, what, i));
      }
    } else {
      check_int_ids(h, what, i);
      py::array_t<int64_t, py::array::c_style | py::array::forcecast> arr;
      try {
        arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(h);
      } catch (...) {
      }
      if (!arr || arr.ndim() != 1)
        throw py::type_error(std::string(what) + " " + std::to_string(i) + " must be a 1-D sequence of integer token ids");
      it.id_tokens.reserve(arr.size());
      for (py::ssize_t j = 0; j < arr.size(); ++j) {
        const int64_t v = arr.at(j);
        if (v < 0) throw py::value_error(std::string(what) + " " + std::to_string(i) + ": token id " + std::to_string(v) + " is negative");
        it.id_tokens.push_back(id_token(v));
      }
      for (const auto& s : it.id_tokens) it.tokens.emplace_back(s);
      it.pretokenized = true;
    }
  }
  return items;
}

// Calls emit for each term of item `it`, through the analyzer in text mode.
template <class Emit>
void terms_of_item(const Analyzer& an, const Item& it, size_t i, const char* what, Emit&& emit) {
  if (!it.pretokenized) {
    try {
      an.analyze(it.text, emit);
    } catch (const Utf8Error& e) {
      throw std::invalid_argument(std::string(what) + " " + std::to_string(i) + ": " + e.what());
    }
  } else {
    for (auto t : it.tokens) emit(t);
  }
}

AnalyzerConfig make_analyzer_config(bool lowercase, bool stem, std::optional<std::vector<std::string>> stopwords,
                                    bool possessive, uint32_t max_token_length) {
  AnalyzerConfig c;
  c.lowercase = lowercase;
  c.stem = stem;
  c.possessive = possessive;
  c.max_token_length = max_token_length;
  c.stopwords = stopwords ? *stopwords : std::vector<std::string>{};
  return c;
}

Method method_of(const std::string& m) {
  if (m == "lucene") return Method::kLucene;
  if (m == "robertson") return Method::kRobertson;
  if (m == "atire") return Method::kAtire;
  if (m == "bm25l") return Method::kBm25L;
  if (m == "bm25+") return Method::kBm25Plus;
  throw py::value_error("unknown BM25 method '" + m + "'; choose from atire, bm25+, bm25l, lucene, robertson");
}
const char* method_name(Method m) {
  switch (m) {
    case Method::kLucene: return "lucene";
    case Method::kRobertson: return "robertson";
    case Method::kAtire: return "atire";
    case Method::kBm25L: return "bm25l";
    case Method::kBm25Plus: return "bm25+";
  }
  return "?";
}
Algorithm algorithm_of(const std::string& a) {
  if (a == "exhaustive") return Algorithm::kExhaustive;
  if (a == "maxscore") return Algorithm::kMaxScore;
  if (a == "bmw" || a == "block_max_wand") return Algorithm::kBlockMaxWand;
  if (a == "auto") return Algorithm::kAuto;
  throw py::value_error("unknown algorithm '" + a + "'; choose from auto, bmw, exhaustive, maxscore");
}
InputMode mode_of(const std::string& m) {
  if (m == "text") return InputMode::kText;
  if (m == "tokens") return InputMode::kTokens;
  if (m == "ids") return InputMode::kIds;
  throw py::value_error("unknown input mode '" + m + "'; choose from ids, text, tokens");
}
const char* mode_name(InputMode m) {
  return m == InputMode::kText ? "text" : m == InputMode::kTokens ? "tokens" : "ids";
}

struct PyIndex {
  std::shared_ptr<Index> ix;
};

py::tuple hits_to_numpy(const std::vector<ScoredDoc>& hits) {
  py::array_t<int64_t> docs(hits.size());
  py::array_t<float> scores(hits.size());
  auto d = docs.mutable_unchecked<1>();
  auto s = scores.mutable_unchecked<1>();
  for (size_t i = 0; i < hits.size(); ++i) {
    d(i) = hits[i].doc;
    s(i) = hits[i].score;
  }
  return py::make_tuple(docs, scores);
}

std::vector<QueryTerm> query_of(const Index& ix, const Item& it, size_t i) {
  return ix.query_terms([&](auto&& emit) { terms_of_item(ix.analyzer(), it, i, "query", emit); });
}

}  // namespace

void bind_fmindex(py::module_& m);  // fmindex.cpp

PYBIND11_MODULE(_core, m) {
  m.doc() = "irforge native core (C++ engines); use the irforge package, not this module.";
  bind_fmindex(m);

  py::register_exception<FormatError>(m, "IndexFormatError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const IoError& e) {
      PyErr_SetString(PyExc_OSError, e.what());
    }
  });

  py::class_<Analyzer>(m, "Analyzer")
      .def(py::init([](bool lowercase, bool stem, std::optional<std::vector<std::string>> stopwords, bool possessive,
                       uint32_t max_token_length) {
             return Analyzer(make_analyzer_config(lowercase, stem, std::move(stopwords), possessive, max_token_length));
           }),
           py::arg("lowercase"), py::arg("stem"), py::arg("stopwords"), py::arg("possessive"), py::arg("max_token_length"))
      .def("analyze", [](const Analyzer& a, py::handle text) {
             std::string_view s = utf8_of(text, "text", 0);
             py::gil_scoped_release nogil;
             try {
               return a.analyze_to_vector(s);
             } catch (const Utf8Error& e) {
               throw std::invalid_argument(e.what());
             }
           }, py::arg("text"))
      .def("analyze_many", [](const Analyzer& a, const py::sequence& texts) {
             auto items = convert(texts, InputMode::kText, "text");
             std::vector<std::vector<std::string>> out(items.size());
             {
               py::gil_scoped_release nogil;
               for (size_t i = 0; i < items.size(); ++i)
                 terms_of_item(a, items[i], i, "text", [&](std::string_view t) { out[i].emplace_back(t); });
             }
             return out;
           }, py::arg("texts"));

  m.def("checksum64", [](const py::bytes& data, uint64_t seed) {
          const std::string s = data;
          return irforge::checksum64(s.data(), s.size(), seed);
        }, py::arg("data"), py::arg("seed") = 0,
        "xxHash64 of data, as index files use it (for tests that write damaged or older files).");
  m.def("lucene_english_stopwords", &lucene_english_stopwords);
  m.def("lucene_encode_length", &lucene_norm::encode, py::arg("length"));
  m.def("lucene_decode_length", &lucene_norm::decode, py::arg("byte"));

  py::class_<PyIndex>(m, "Index")
      .def_static("build", [](const py::sequence& docs, std::optional<std::vector<std::string>> ids, const std::string& mode,
                              bool lowercase, bool stem, std::optional<std::vector<std::string>> stopwords, bool possessive,
                              uint32_t max_token_length, const std::string& method, float k1, float b, float delta,
                              long threads) {
             const InputMode md = mode_of(mode);
             auto items = convert(docs, md, "document");
             BuildOptions opt;
             opt.mode = md;
             opt.analyzer = make_analyzer_config(lowercase, stem, std::move(stopwords), possessive, max_token_length);
             opt.scoring = {method_of(method), k1, b, delta};
             opt.threads = resolve_threads(threads);
             std::vector<std::string_view> idv;
             if (ids) idv.assign(ids->begin(), ids->end());
             py::gil_scoped_release nogil;
             const Analyzer an(opt.analyzer);
             auto ix = Index::build(items.size(), [&](size_t i, auto&& emit) {
               terms_of_item(an, items[i], i, "document", emit);
             }, idv, opt);
             return PyIndex{std::make_shared<Index>(std::move(ix))};
           },
           py::arg("docs"), py::arg("ids"), py::arg("mode"), py::arg("lowercase"), py::arg("stem"), py::arg("stopwords"),
           py::arg("possessive"), py::arg("max_token_length"), py::arg("method"), py::arg("k1"), py::arg("b"),
           py::arg("delta"), py::arg("threads"))
      .def_static("load", [](const std::string& path, bool mmap, bool verify) {
             py::gil_scoped_release nogil;
             return PyIndex{std::make_shared<Index>(Index::load(path, mmap, verify))};
           }, py::arg("path"), py::arg("mmap"), py::arg("verify"))
      .def("save", [](const PyIndex& self, const std::string& path) {
             py::gil_scoped_release nogil;
             self.ix->save(path);
           }, py::arg("path"))
      .def("rescored", [](const PyIndex& self, const std::string& method, float k1, float b, float delta, long threads) {
             ScoringParams p{method_of(method), k1, b, delta};
             py::gil_scoped_release nogil;
             return PyIndex{std::make_shared<Index>(self.ix->rescored(p, resolve_threads(threads)))};
           }, py::arg("method"), py::arg("k1"), py::arg("b"), py::arg("delta"), py::arg("threads"))
      .def("search", [](const PyIndex& self, py::object query, long k, const std::string& algorithm) {
             if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
             const Algorithm a = algorithm_of(algorithm);
             py::list one;
             one.append(query);
             auto items = convert(one, self.ix->mode(), "query", true);
             std::vector<ScoredDoc> hits;
             {
               py::gil_scoped_release nogil;
               hits = search(*self.ix, query_of(*self.ix, items[0], 0), static_cast<size_t>(k), a);
             }
             return hits_to_numpy(hits);
           }, py::arg("query"), py::arg("k"), py::arg("algorithm"))
      .def("search_filtered", [](const PyIndex& self, py::object query, long k,
                                 py::array_t<int64_t, py::array::c_style | py::array::forcecast> allowed) {
             if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
             if (allowed.ndim() != 1) throw py::value_error("allowed must be a 1-D array of document numbers");
             const int64_t* a = allowed.data();
             const size_t na = static_cast<size_t>(allowed.size());
             std::vector<uint32_t> docs(na);
             for (size_t i = 0; i < na; ++i) {
               if (a[i] < 0 || static_cast<uint64_t>(a[i]) >= self.ix->n_docs())
                 throw py::index_error("allowed document number " + std::to_string(a[i]) + " is out of range [0, " +
                                       std::to_string(self.ix->n_docs()) + ")");
               if (i > 0 && a[i] <= a[i - 1]) throw py::value_error("allowed document numbers must be strictly increasing");
               docs[i] = static_cast<uint32_t>(a[i]);
             }
             py::list one;
             one.append(query);
             auto items = convert(one, self.ix->mode(), "query", true);
             std::vector<ScoredDoc> hits;
             {
               py::gil_scoped_release nogil;
               hits = search_filtered(*self.ix, query_of(*self.ix, items[0], 0), static_cast<size_t>(k), docs.data(), na);
             }
             return hits_to_numpy(hits);
           }, py::arg("query"), py::arg("k"), py::arg("allowed"))
      .def("search_batch", [](const PyIndex& self, const py::sequence& queries, long k, const std::string& algorithm, long threads) {
             if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
             const Algorithm a = algorithm_of(algorithm);
             auto items = convert(queries, self.ix->mode(), "query", true);
             // No row holds more hits than there are documents: a k past that would only allocate padding.
             const size_t n = items.size(), kk = std::min<size_t>(static_cast<size_t>(k), self.ix->n_docs());
             py::array_t<int64_t> docs({n, kk});
             py::array_t<float> scores({n, kk});
             py::array_t<int64_t> counts(n);
             int64_t* dp = docs.mutable_data();
             float* sp = scores.mutable_data();
             int64_t* cp = counts.mutable_data();
             {
               py::gil_scoped_release nogil;
               search_batch(*self.ix, n, [&](size_t i) { return query_of(*self.ix, items[i], i); }, kk, a,
                            resolve_threads(threads), dp, sp, cp);
             }
             return py::make_tuple(docs, scores, counts);
           }, py::arg("queries"), py::arg("k"), py::arg("algorithm"), py::arg("threads"))
      .def("query_terms", [](const PyIndex& self, py::object query) {
             py::list one;
             one.append(query);
             auto items = convert(one, self.ix->mode(), "query", true);
             std::vector<std::pair<std::string, uint32_t>> out;
             for (const auto& qt : query_of(*self.ix, items[0], 0)) out.emplace_back(std::string(self.ix->term(qt.term)), qt.qtf);
             return out;
           }, py::arg("query"))
      .def("postings", [](const PyIndex& self, const std::string& term) -> py::tuple {
             const int64_t t = self.ix->find_term(term);
             if (t < 0) return py::make_tuple(py::array_t<int64_t>(0), py::array_t<int64_t>(0));
             const uint32_t df = self.ix->storage().df[t];
             py::array_t<int64_t> docs(df), tfs(df);
             auto d = docs.mutable_unchecked<1>();
             auto f = tfs.mutable_unchecked<1>();
             Cursor c(&self.ix->view(), static_cast<uint32_t>(t));
             for (uint32_t i = 0; c.doc() != kEndDoc; c.next(), ++i) {
               d(i) = c.doc();
               f(i) = c.tf();
             }
             return py::make_tuple(docs, tfs);
           }, py::arg("term"))
      .def("terms", [](const PyIndex& self) {
             py::list out;
             for (uint32_t t = 0; t < self.ix->n_terms(); ++t) {
               auto s = self.ix->term(t);
               out.append(py::str(s.data(), s.size()));
             }
             return out;
           })
      .def("doc_ids", [](const PyIndex& self) -> py::object {
             const Storage& s = self.ix->storage();
             if (!s.has_ids) return py::none();
             py::list out;
             for (uint32_t d = 0; d < s.n_docs; ++d) {
               auto v = self.ix->doc_id(d);
               out.append(py::str(v.data(), v.size()));
             }
             return out;
           })
      .def("doc_lengths", [](const PyIndex& self) {
             const Storage& s = self.ix->storage();
             py::array_t<uint32_t> out(s.n_docs);
             std::copy(s.doc_len, s.doc_len + s.n_docs, out.mutable_data());
             return out;
           })
      .def("document_frequency", [](const PyIndex& self, const std::string& term) -> uint32_t {
             const int64_t t = self.ix->find_term(term);
             return t < 0 ? 0u : self.ix->storage().df[t];
           }, py::arg("term"))
      .def_property_readonly("n_docs", [](const PyIndex& self) { return self.ix->n_docs(); })
      .def_property_readonly("n_terms", [](const PyIndex& self) { return self.ix->n_terms(); })
      .def_property_readonly("n_postings_bytes", [](const PyIndex& self) { return self.ix->postings_bytes(); })
      .def_property_readonly("mode", [](const PyIndex& self) { return mode_name(self.ix->mode()); })
      .def_property_readonly("avgdl", [](const PyIndex& self) { return self.ix->scorer().avgdl(); })
      .def_property_readonly("doc_count", [](const PyIndex& self) { return self.ix->scorer().doc_count(); })
      .def_property_readonly("params", [](const PyIndex& self) {
             const auto& p = self.ix->scorer().params();
             return py::dict(py::arg("method") = method_name(p.method), py::arg("k1") = p.k1, py::arg("b") = p.b,
                             py::arg("delta") = p.delta);
           })
      .def_property_readonly("analyzer_config", [](const PyIndex& self) {
             const auto& c = self.ix->storage().analyzer_config;
             return py::dict(py::arg("lowercase") = c.lowercase, py::arg("stem") = c.stem,
                             py::arg("stopwords") = c.stopwords, py::arg("possessive") = c.possessive,
                             py::arg("max_token_length") = c.max_token_length);
           });
}
