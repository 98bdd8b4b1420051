// pybind11 bindings of the FM-index: numpy in/out, GIL release, threads for batches.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "../common/parallel.hpp"
#include "../fmindex/fm_index.hpp"

namespace py = pybind11;
using namespace irforge;
using namespace irforge::fm;

namespace {

using Pattern = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

struct PyFM {
  std::shared_ptr<FMIndex> ix;
};

// Flat batch of patterns: tokens[offsets[i] .. offsets[i+1]).
struct Batch {
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> tokens;
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> offsets;
  size_t size() const { return offsets.size() - 1; }
  const uint64_t* pattern(size_t i, size_t* m) const {
    const int64_t* o = offsets.data();
    *m = static_cast<size_t>(o[i + 1] - o[i]);
    return reinterpret_cast<const uint64_t*>(tokens.data()) + o[i];
  }
};

Batch make_batch(const Pattern& tokens, const Pattern& offsets) {
  Batch b{tokens, offsets};
  const int64_t* o = offsets.data();
  const size_t n = offsets.size();
  if (n == 0 || o[0] != 0 || o[n - 1] != tokens.size()) throw py::value_error("pattern offsets do not cover the tokens");
  for (size_t i = 1; i < n; ++i)
    if (o[i] < o[i - 1]) throw py::value_error("pattern offsets must be non-decreasing");
  return b;
}

void doc_freqs(const FMIndex& ix, Range r, uint64_t limit, std::vector<uint64_t>& docs,
               std::vector<uint64_t>& counts) {
  std::vector<uint32_t> all;
  ix.documents({r.sp, std::min<uint64_t>(r.ep, r.sp + limit)}, all);
  std::sort(all.begin(), all.end());
  docs.clear();
  counts.clear();
  for (size_t i = 0; i < all.size();) {
    size_t j = i;
    while (j < all.size() && all[j] == all[i]) ++j;
    docs.push_back(all[i]);
    counts.push_back(j - i);
    i = j;
  }
}

// A pattern given as a list of Python ints, validated without converting it to an array: false when an item
// is not an exact int or is beyond the largest id (the caller's general path then reports or handles it).
bool list_ids(const py::list& pattern, std::vector<uint64_t>& ids) {
  const size_t m = pattern.size();
  if (m == 0) throw py::value_error("pattern is empty");
  ids.resize(m);
  long long lo = 0;
  for (size_t i = 0; i < m; ++i) {
    PyObject* o = PyList_GET_ITEM(pattern.ptr(), static_cast<Py_ssize_t>(i));
    if (!PyLong_CheckExact(o)) return false;
    int over = 0;
    const long long v = PyLong_AsLongLongAndOverflow(o, &over);
    if (over != 0) return false;
    if (i == 0 || v < lo) lo = v;
    if (v >= 0 && static_cast<uint64_t>(v) > kMaxTokenId) return false;
    ids[i] = static_cast<uint64_t>(v);
  }
  if (lo < 0) throw py::value_error("pattern holds a negative token id (" + std::to_string(lo) + ")");
  return true;
}

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  py::array_t<T> a(v.size());
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// Hands a buffer to NumPy: large ones without a copy (the array owns the buffer through a capsule), small ones
// copied into a plain array, which costs less than the capsule's allocations.
template <class T>
py::array_t<T> take_numpy(RawVector<T>&& v) {
  if (v.size() <= 2048) {
    py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
    if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
    return a;
  }
  auto* owned = new RawVector<T>(std::move(v));
  py::capsule free_it(owned, [](void* p) { delete static_cast<RawVector<T>*>(p); });
  return py::array_t<T>(static_cast<py::ssize_t>(owned->size()), owned->data(), free_it);
}

// (tokens, counts) of the continuations of range r, as two int64 arrays; the GIL is released meanwhile
// (frequent prefixes take hundreds of microseconds).
py::tuple next_tokens_of(const FMIndex& ix, Range r) {
  RawVector<int64_t> toks, counts;
  {
    py::gil_scoped_release nogil;
    ix.next_tokens(r, toks, counts);
  }
  return py::make_tuple(take_numpy(std::move(toks)), take_numpy(std::move(counts)));
}

}  // namespace

void bind_fmindex(py::module_& m) {
  m.def("fm_set_isa", [](const std::string& name) { return set_isa(name); }, py::arg("name"),
        "FM-index query kernels: 'auto' (the best the CPU has), 'scalar', 'avx2' or 'avx512'; returns the kernels "
        "in use. For tests and benchmarks; results are identical.");
  py::class_<PyFM>(m, "FMIndex")
      .def_static("build", [](py::list docs, uint32_t sample_rate, bool byte_mode, int64_t next_cache_bytes,
                              bool wide_sa) {
             // Documents: C-contiguous uint16 arrays (a vocabulary below 65,536) or uint32 arrays, all of one
             // dtype, read where they lie: no concatenated or widened copy of the corpus.
             const size_t n_docs = docs.size();
             std::vector<py::array> keep(n_docs);
             std::vector<const void*> ptrs(n_docs);
             std::vector<uint64_t> lens(n_docs);
             bool wide = false;
             for (size_t d = 0; d < n_docs; ++d) {
               py::array a = py::reinterpret_borrow<py::array>(docs[d]);
               const bool u16 = py::isinstance<py::array_t<uint16_t>>(a), u32 = py::isinstance<py::array_t<uint32_t>>(a);
               if (a.ndim() != 1 || !(a.flags() & py::array::c_style) || !(u16 || u32))
                 throw py::type_error("document " + std::to_string(d) + " must be a contiguous 1-D uint16 or uint32 array");
               if (d == 0) wide = u32;
               else if (wide != u32) throw py::type_error("documents must all have the same dtype");
               keep[d] = a;
               ptrs[d] = a.data();
               lens[d] = static_cast<uint64_t>(a.size());
             }
             py::gil_scoped_release nogil;
             if (wide)
               return PyFM{std::make_shared<FMIndex>(FMIndex::build(reinterpret_cast<const uint32_t* const*>(ptrs.data()),
                                                                    lens.data(), n_docs, sample_rate, byte_mode,
                                                                    next_cache_bytes, wide_sa))};
             return PyFM{std::make_shared<FMIndex>(FMIndex::build(reinterpret_cast<const uint16_t* const*>(ptrs.data()),
                                                                  lens.data(), n_docs, sample_rate, byte_mode,
                                                                  next_cache_bytes, wide_sa))};
           }, py::arg("docs"), py::arg("sample_rate"), py::arg("byte_mode"), py::arg("next_cache_bytes") = -1,
           py::arg("wide_sa") = false)
      .def_static("load", [](const std::string& path, bool mmap, bool verify) {
             py::gil_scoped_release nogil;
             return PyFM{std::make_shared<FMIndex>(FMIndex::load(path, mmap, verify))};
           }, py::arg("path"), py::arg("mmap"), py::arg("verify"))
      .def("save", [](const PyFM& s, const std::string& path) {
             py::gil_scoped_release nogil;
             s.ix->save(path);
           }, py::arg("path"))
      .def("range", [](const PyFM& s, const Pattern& p) {
             Range r;
             {
               py::gil_scoped_release nogil;
               r = s.ix->find(reinterpret_cast<const uint64_t*>(p.data()), p.size());
             }
             return py::make_tuple(r.sp, r.ep);
           }, py::arg("pattern"))
      .def("count_ids", [](const PyFM& s, const py::list& pattern) -> py::object {
             std::vector<uint64_t> ids;
             if (!list_ids(pattern, ids)) return py::none();
             return py::int_(s.ix->find(ids.data(), ids.size()).size());
           }, py::arg("pattern"))
      .def("next_tokens_ids", [](const PyFM& s, const py::list& pattern) -> py::object {
             std::vector<uint64_t> ids;
             if (!list_ids(pattern, ids)) return py::none();
             return next_tokens_of(*s.ix, s.ix->find(ids.data(), ids.size()));
           }, py::arg("pattern"))
      .def("extend", [](const PyFM& s, uint64_t sp, uint64_t ep, uint64_t token) {
             if (sp > ep || ep > s.ix->meta().n) throw py::value_error("invalid suffix range");
             const Range r = s.ix->extend({sp, ep}, token);
             return py::make_tuple(r.sp, r.ep);
           }, py::arg("sp"), py::arg("ep"), py::arg("token"))
      .def("count_batch", [](const PyFM& s, const Pattern& tokens, const Pattern& offsets, long threads) {
             Batch b = make_batch(tokens, offsets);
             py::array_t<int64_t> out(b.size());
             int64_t* o = out.mutable_data();
             {
               py::gil_scoped_release nogil;
               const uint64_t* toks = reinterpret_cast<const uint64_t*>(b.tokens.data());
               const int64_t* offs = b.offsets.data();
               parallel_ranges(resolve_threads(threads), b.size(), [&](size_t, size_t lo, size_t hi) {
                 s.ix->count_many(toks, offs + lo, hi - lo, o + lo);
               });
             }
             return out;
           }, py::arg("tokens"), py::arg("offsets"), py::arg("threads"))
      .def("locate", [](const PyFM& s, const Pattern& p, uint64_t limit) {
             std::vector<uint64_t> docs, offs;
             {
               py::gil_scoped_release nogil;
               const Range r = s.ix->find(reinterpret_cast<const uint64_t*>(p.data()), p.size());
               std::vector<Occurrence> occ;
               s.ix->occurrences({r.sp, std::min<uint64_t>(r.ep, r.sp + limit)}, p.size(), occ);
               std::sort(occ.begin(), occ.end(), [](const Occurrence& a, const Occurrence& b) {
                 return a.doc < b.doc || (a.doc == b.doc && a.offset < b.offset);
               });
               for (const auto& o : occ) {
                 docs.push_back(o.doc);
                 offs.push_back(o.offset);
               }
             }
             return py::make_tuple(to_numpy(docs), to_numpy(offs));
           }, py::arg("pattern"), py::arg("limit"))
      .def("doc_frequencies_batch", [](const PyFM& s, const Pattern& tokens, const Pattern& offsets, uint64_t limit, long threads) {
             Batch b = make_batch(tokens, offsets);
             std::vector<std::vector<uint64_t>> docs(b.size()), counts(b.size());
             {
               py::gil_scoped_release nogil;
               parallel_items(resolve_threads(threads), b.size(), [&](size_t, size_t i) {
                 size_t mlen;
                 const uint64_t* p = b.pattern(i, &mlen);
                 doc_freqs(*s.ix, s.ix->find(p, mlen), limit, docs[i], counts[i]);
               });
             }
             py::list out;
             for (size_t i = 0; i < b.size(); ++i) out.append(py::make_tuple(to_numpy(docs[i]), to_numpy(counts[i])));
             return out;
           }, py::arg("tokens"), py::arg("offsets"), py::arg("limit"), py::arg("threads"))
      .def("next_tokens", [](const PyFM& s, const Pattern& p) {
             return next_tokens_of(*s.ix, s.ix->find(reinterpret_cast<const uint64_t*>(p.data()), p.size()));
           }, py::arg("pattern"))
      .def("next_tokens_range", [](const PyFM& s, uint64_t sp, uint64_t ep) {
             if (sp > ep || ep > s.ix->meta().n) throw py::value_error("invalid suffix range");
             return next_tokens_of(*s.ix, Range{sp, ep});
           }, py::arg("sp"), py::arg("ep"))
      .def("next_tokens_batch", [](const PyFM& s, const Pattern& tokens, const Pattern& offsets, long threads) {
             Batch b = make_batch(tokens, offsets);
             std::vector<RawVector<int64_t>> toks(b.size()), counts(b.size());
             {
               py::gil_scoped_release nogil;
               parallel_items(resolve_threads(threads), b.size(), [&](size_t, size_t i) {
                 size_t mlen;
                 const uint64_t* p = b.pattern(i, &mlen);
                 s.ix->next_tokens(s.ix->find(p, mlen), toks[i], counts[i]);
               });
             }
             py::list out;
             for (size_t i = 0; i < b.size(); ++i)
               out.append(py::make_tuple(take_numpy(std::move(toks[i])), take_numpy(std::move(counts[i]))));
             return out;
           }, py::arg("tokens"), py::arg("offsets"), py::arg("threads"))
      .def("extract", [](const PyFM& s, uint64_t d) {
             if (d >= s.ix->meta().n_docs) throw py::index_error("document " + std::to_string(d) + " out of range");
             std::vector<uint32_t> out;
             {
               py::gil_scoped_release nogil;
               s.ix->extract(d, out);
             }
             return to_numpy(out);
           }, py::arg("doc"))
      .def("doc_lengths", [](const PyFM& s) {
             std::vector<uint64_t> v(s.ix->meta().n_docs);
             for (uint64_t d = 0; d < v.size(); ++d) v[d] = s.ix->doc_length(d);
             return to_numpy(v);
           })
      .def_property_readonly("n_docs", [](const PyFM& s) { return s.ix->meta().n_docs; })
      .def_property_readonly("n_tokens", [](const PyFM& s) { return s.ix->meta().n_tokens; })
      .def_property_readonly("n", [](const PyFM& s) { return s.ix->meta().n; })
      .def_property_readonly("sigma", [](const PyFM& s) { return s.ix->meta().sigma - 2; })
      .def_property_readonly("sample_rate", [](const PyFM& s) { return s.ix->meta().sample_rate; })
      .def_property_readonly("byte_mode", [](const PyFM& s) { return s.ix->meta().byte_mode != 0; })
      .def_property_readonly("size_bytes", [](const PyFM& s) { return s.ix->size_bytes(); })
      .def_property_readonly("next_cache_ranges", [](const PyFM& s) { return s.ix->next_cache_ranges(); })
      .def_property_readonly("next_cache_bytes", [](const PyFM& s) { return s.ix->next_cache_bytes(); });
}
