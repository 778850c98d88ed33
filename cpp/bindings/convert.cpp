// Argument checking and conversion for the bindings (see convert.hpp).
#include "bindings/convert.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#include <sys/sysinfo.h>
#endif

namespace normcpp {
namespace bindings {

namespace {

const py::module_& numpy() {
  static const py::module_* np = new py::module_(py::module_::import("numpy"));  // never freed
  return *np;
}

bool is_sequence_like(py::handle h) {
  return PyList_Check(h.ptr()) || PyTuple_Check(h.ptr());
}

// Arrays we convert from other array-likes: lists, tuples, objects with __array__ (torch).
bool convertible_to_array(py::handle h) {
  return is_sequence_like(h) || py::hasattr(h, "__array__") ||
         py::hasattr(h, "__array_interface__");
}

bool is_c_contiguous(const py::array& a) {
  return (a.flags() & py::array::c_style) != 0;
}

// (N, C, *spatial) memory ordered N, spatial..., C (dims of size 1 may have any stride).
bool is_channels_last(const py::array& a) {
  const auto rank = a.ndim();
  if (rank < 3) return false;
  // Innermost first: C, then the spatial dims from the last, then N.
  py::ssize_t expected = a.itemsize();
  for (py::ssize_t i = 0; i < rank; ++i) {
    const py::ssize_t d = i == 0 ? 1 : i == rank - 1 ? 0 : rank - i;
    if (a.shape(d) != 1 && a.strides(d) != expected) return false;
    expected *= a.shape(d);
  }
  return true;
}

bool same_shape(const py::array& a, const py::array& b) {
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) != b.shape(d)) return false;
  return true;
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

// Bytes of RAM plus swap (0 if unknown): no allocation beyond it can be backed. Where the
// kernel overcommits memory, NumPy's allocation of such a size succeeds and the process is
// killed when it first writes the pages (seen: a zero-stride fake input of 12 TiB, copied).
std::uint64_t memory_bytes() {
  static const std::uint64_t total = [] {
    std::uint64_t t = 0;
#if defined(__linux__)
    struct sysinfo si;
    if (sysinfo(&si) == 0)
      t = (static_cast<std::uint64_t>(si.totalram) + si.totalswap) * si.mem_unit;
#endif
    return t;
  }();
  return total;
}

// MemoryError naming `name` if an array like `a` (its shape and dtype) cannot fit in memory.
void check_fits(const py::array& a, const char* name, const char* what) {
  const std::uint64_t total = memory_bytes();
  const double bytes = static_cast<double>(a.size()) * static_cast<double>(a.itemsize());
  if (total == 0 || bytes <= static_cast<double>(total)) return;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%.1f GiB, more than this machine's memory (%.1f GiB)",
                bytes / 1073741824.0, static_cast<double>(total) / 1073741824.0);
  const std::string msg = std::string(name) + ": " + what + " of shape " + shape_str(a) +
                          " would take " + buf;
  PyErr_SetString(PyExc_MemoryError, msg.c_str());
  throw py::error_already_set();
}

// A C-contiguous copy of `a` (checked to fit in memory first).
py::array contiguous_copy(const py::array& a, const char* name) {
  check_fits(a, name, "a contiguous copy");
  return numpy().attr("ascontiguousarray")(a);
}

// ------------------------------------------------------------------ output buffer cache
// Outputs of at least kCachedOutput bytes take their memory from a small cache of the buffers
// of earlier outputs that have been freed. A fresh large allocation comes from mmap and faults
// in (and zeroes) every page on first touch: batch norm training on (32,3,224,224) float32
// channels-last, one thread, took 5.6 ms into fresh memory and 4.5 ms into reused memory
// (54-58 page faults a call). A loop normalizing same-shaped tensors gets its last freed
// output's buffer back instead (ONNX Runtime's arena does the same). Buffers are matched by
// exact size; the cache keeps at most `limit` bytes of free buffers (evicting the oldest),
// NORMCPP_OUTPUT_CACHE_BYTES or _core.set_output_cache_bytes sets it, 0 turns it off.
// Buffers in use are reported to tracemalloc in NumPy's domain, as NumPy's own are.
constexpr std::size_t kCachedOutput = std::size_t{1} << 20;
constexpr std::size_t kHugeOutput = std::size_t{4} << 20;  // NumPy advises huge pages from here
constexpr unsigned kNumpyTraceDomain = 389047;             // NumPy's tracemalloc domain

class OutputCache {
 public:
  static OutputCache& get() {
    static OutputCache* c = new OutputCache();  // never destroyed: arrays may outlive statics
    return *c;
  }
  // A buffer of `bytes` (a page multiple): a cached one of that size, else a new one (null if
  // out of memory).
  void* take(std::size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
        if (it->second != bytes) continue;
        void* p = it->first;
        held_ -= bytes;
        free_.erase(std::next(it).base());
        return p;
      }
    }
    void* p = nullptr;
    if (posix_memalign(&p, bytes >= kHugeOutput ? (std::size_t{2} << 20) : 4096, bytes) != 0)
      return nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= kHugeOutput) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
  }
  // Returns a buffer from take(): kept for reuse if the limit allows, else freed. Never
  // throws (it runs in a capsule destructor, called from C).
  void give(void* p, std::size_t bytes) noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    if (bytes > limit_) {
      std::free(p);
      return;
    }
    try {
      free_.emplace_back(p, bytes);
    } catch (...) {
      std::free(p);
      return;
    }
    held_ += bytes;
    trim();
  }
  void set_limit(std::int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    limit_ = bytes < 0 ? default_limit() : static_cast<std::size_t>(bytes);
    trim();
  }
  std::int64_t limit() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<std::int64_t>(limit_);
  }
  std::int64_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<std::int64_t>(held_);
  }

 private:
  OutputCache() : limit_(default_limit()) {}
  static std::size_t default_limit() {
    if (const char* e = std::getenv("NORMCPP_OUTPUT_CACHE_BYTES")) {
      char* end = nullptr;
      const long long v = std::strtoll(e, &end, 10);
      if (end != e && *end == '\0' && v >= 0) return static_cast<std::size_t>(v);
    }
    return std::size_t{64} << 20;
  }
  void trim() noexcept {  // frees the oldest buffers until within the limit (mu_ held)
    std::size_t k = 0;
    while (held_ > limit_ && k < free_.size()) {
      held_ -= free_[k].second;
      std::free(free_[k].first);
      ++k;
    }
    free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(k));
  }
  std::mutex mu_;
  std::vector<std::pair<void*, std::size_t>> free_;  // oldest first
  std::size_t held_ = 0;
  std::size_t limit_;
};

// tracemalloc's C API, looked up at run time: Python 3.11's tracemalloc.h declares it without
// extern "C", so a C++ call would name a mangled symbol no libpython exports.
struct TraceMalloc {
  int (*track)(unsigned int, std::uintptr_t, std::size_t) = nullptr;
  int (*untrack)(unsigned int, std::uintptr_t) = nullptr;
  static const TraceMalloc& get() {
    static const TraceMalloc t = [] {
      TraceMalloc r;
#if defined(__unix__) || defined(__APPLE__)
      r.track = reinterpret_cast<decltype(r.track)>(dlsym(RTLD_DEFAULT, "PyTraceMalloc_Track"));
      r.untrack =
          reinterpret_cast<decltype(r.untrack)>(dlsym(RTLD_DEFAULT, "PyTraceMalloc_Untrack"));
#endif
      if (!r.track || !r.untrack) r.track = nullptr, r.untrack = nullptr;
      return r;
    }();
    return t;
  }
};

struct CachedBuffer {
  void* p;
  std::size_t bytes;
};
constexpr const char* kCachedBufferName = "normcpp.output_buffer";

void release_cached_buffer(PyObject* capsule) {
  auto* b = static_cast<CachedBuffer*>(PyCapsule_GetPointer(capsule, kCachedBufferName));
  if (!b) {
    PyErr_Clear();
    return;
  }
  if (const auto& tm = TraceMalloc::get(); tm.untrack)
    tm.untrack(kNumpyTraceDomain, reinterpret_cast<std::uintptr_t>(b->p));
  OutputCache::get().give(b->p, b->bytes);
  delete b;
}

// A new uninitialized array of a's shape and dtype: C order, or channels-last (N, spatial..., C
// memory order). Straight through NumPy's C API: no shape vectors on the heap (tiny calls).
// Large ones take their memory from the output cache (above).
py::array new_array_like(const py::array& a, bool channels_last) {
  check_fits(a, "input", "the output");
  const auto rank = a.ndim();
  constexpr py::ssize_t kMaxRank = 64;  // NumPy's NPY_MAXDIMS
  if (rank > kMaxRank) value_error("input has more than 64 dims");
  Py_intptr_t st[kMaxRank];
  if (channels_last) {
    py::ssize_t s = a.itemsize();
    st[1] = s;
    s *= a.shape(1);
    for (py::ssize_t d = rank - 1; d >= 2; --d) {
      st[d] = s;
      s *= a.shape(d);
    }
    st[0] = s;
  }
  auto& api = py::detail::npy_api::get();
  py::dtype dt = a.dtype();
  const std::size_t nbytes = static_cast<std::size_t>(a.size()) * static_cast<std::size_t>(a.itemsize());
  auto& cache = OutputCache::get();
  if (nbytes >= kCachedOutput && cache.limit() > 0) {
    const std::size_t bytes = (nbytes + 4095) / 4096 * 4096;
    auto* b = new CachedBuffer{cache.take(bytes), bytes};
    if (!b->p) {
      delete b;
      throw std::bad_alloc();
    }
    PyObject* owner = PyCapsule_New(b, kCachedBufferName, release_cached_buffer);
    if (!owner) {
      cache.give(b->p, b->bytes);
      delete b;
      throw py::error_already_set();
    }
    if (const auto& tm = TraceMalloc::get(); tm.track)
      tm.track(kNumpyTraceDomain, reinterpret_cast<std::uintptr_t>(b->p), b->bytes);
    // PyArray_NewFromDescr steals the reference to the descriptor.
    PyObject* r = api.PyArray_NewFromDescr_(
        api.PyArray_Type_, dt.release().ptr(), static_cast<int>(rank), a.shape(),
        channels_last ? st : nullptr, b->p,
        py::detail::npy_api::NPY_ARRAY_WRITEABLE_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_,
        nullptr);
    if (!r) {
      Py_DECREF(owner);
      throw py::error_already_set();
    }
    // SetBaseObject steals the reference to owner, also when it fails.
    if (api.PyArray_SetBaseObject_(r, owner) != 0) {
      Py_DECREF(r);
      throw py::error_already_set();
    }
    return py::reinterpret_steal<py::array>(r);
  }
  PyObject* r = api.PyArray_NewFromDescr_(api.PyArray_Type_, dt.release().ptr(),
                                          static_cast<int>(rank), a.shape(),
                                          channels_last ? st : nullptr, nullptr, 0, nullptr);
  if (!r) throw py::error_already_set();
  return py::reinterpret_steal<py::array>(r);
}


// [lo, hi) byte extent of an array's elements.
std::pair<std::uintptr_t, std::uintptr_t> extent(const py::array& a) {
  auto lo = reinterpret_cast<std::uintptr_t>(a.data());
  auto hi = lo;
  if (a.size() == 0) return {lo, lo};
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    const py::ssize_t span = (a.shape(d) - 1) * a.strides(d);
    if (span < 0)
      lo -= static_cast<std::uintptr_t>(-span);
    else
      hi += static_cast<std::uintptr_t>(span);
  }
  return {lo, hi + static_cast<std::uintptr_t>(a.itemsize())};
}

bool same_view(const py::array& a, const py::array& b) {
  if (a.data() != b.data() || a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) != 1 && a.strides(d) != b.strides(d)) return false;
  return true;
}

// A dimension of more than one element with stride 0: several elements, one memory location.
bool has_internal_overlap(const py::array& a) {
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) > 1 && a.strides(d) == 0) return true;
  return false;
}

// The user's out, checked against the input it receives the result of.
py::array check_out(py::handle out, const py::array& input, const py::array& original) {
  if (!py::isinstance<py::array>(out))
    type_error("out must be a numpy.ndarray, got " + type_name(out));
  auto o = py::reinterpret_borrow<py::array>(out);
  if (!same_shape(o, input))
    value_error("out must have the input's shape " + shape_str(input) + ", got " + shape_str(o));
  if (!o.dtype().is(input.dtype()))
    value_error("out must have the input's dtype " + py::str(input.dtype()).cast<std::string>() +
                ", got " + py::str(o.dtype()).cast<std::string>());
  if (!o.writeable()) value_error("out is read-only");
  if (has_internal_overlap(o))
    value_error("out has elements that share memory (a zero stride): it cannot hold a result");
  if (!same_view(o, original)) {
    const auto a = extent(o), b = extent(original);
    if (a.first < b.second && b.first < a.second)
      value_error("out overlaps input without being the same view; pass out=input for an "
                  "in-place call, or a separate array");
  }
  return o;
}

}  // namespace
void set_output_cache_bytes(std::int64_t bytes) { OutputCache::get().set_limit(bytes); }
std::int64_t get_output_cache_bytes() { return OutputCache::get().limit(); }
std::int64_t output_cache_held_bytes() { return OutputCache::get().held(); }

void check_disjoint(py::handle a, const char* a_name, py::handle b, const char* b_name) {
  if (a.is_none() || b.is_none() || !py::isinstance<py::array>(a) ||
      !py::isinstance<py::array>(b))
    return;
  const auto ea = extent(py::reinterpret_borrow<py::array>(a));
  const auto eb = extent(py::reinterpret_borrow<py::array>(b));
  if (ea.first < eb.second && eb.first < ea.second)
    value_error(std::string(a_name) + " shares memory with " + b_name +
                "; pass separate arrays");
}

void type_error(const std::string& msg) { throw py::type_error(msg); }
void value_error(const std::string& msg) { throw py::value_error(msg); }

std::string type_name(py::handle h) {
  return py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>();
}

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    s += std::to_string(a.shape(d));
    if (a.ndim() == 1 || d + 1 < a.ndim()) s += a.ndim() == 1 ? "," : ", ";
  }
  return s + ")";
}

DType dtype_of(const py::array& a, const char* name) {
  const py::dtype d = a.dtype();
  const auto item = d.itemsize();
  if (d.kind() != 'f' || (item != 2 && item != 4 && item != 8))
    type_error(std::string(name) + " must have dtype float16, float32 or float64, got " +
               py::str(d).cast<std::string>());
  if (d.byteorder() == '>')
    type_error(std::string(name) + " must be in native byte order");
  return item == 2 ? DType::f16 : item == 4 ? DType::f32 : DType::f64;
}

py::array as_input(py::handle h, const char* name) {
  py::array a = no_array();
  if (py::isinstance<py::array>(h))
    a = py::reinterpret_borrow<py::array>(h);
  else if (!h.is_none() && !PyUnicode_Check(h.ptr()) && !PyBytes_Check(h.ptr()) &&
           convertible_to_array(h))
    a = numpy().attr("asarray")(h);
  else
    type_error(std::string(name) +
               " must be a numpy.ndarray of float16, float32 or float64, got " + type_name(h));
  dtype_of(a, name);
  return a;
}

bool as_bool(py::handle h, const char* name) {
  if (PyBool_Check(h.ptr())) return h.ptr() == Py_True;
  if (py::isinstance(h, numpy().attr("bool_"))) return py::cast<bool>(py::bool_(py::reinterpret_borrow<py::object>(h)));
  if (PyLong_Check(h.ptr())) {
    const long v = PyLong_AsLong(h.ptr());
    if (v == 0 || v == 1) return v == 1;
  }
  type_error(std::string(name) + " must be a bool, got " + type_name(h));
}

double as_real(py::handle h, const char* name) {
  if (PyFloat_CheckExact(h.ptr())) return PyFloat_AS_DOUBLE(h.ptr());  // the common case
  const bool ok = !PyBool_Check(h.ptr()) &&
                  (PyFloat_Check(h.ptr()) || PyLong_Check(h.ptr()) ||
                   py::isinstance(h, numpy().attr("floating")) ||
                   py::isinstance(h, numpy().attr("integer")));
  if (!ok) type_error(std::string(name) + " must be a real number, got " + type_name(h));
  return py::cast<double>(py::float_(py::reinterpret_borrow<py::object>(h)));
}

std::int64_t as_int(py::handle h, const char* name) {
  const bool ok = !PyBool_Check(h.ptr()) &&
                  (PyLong_Check(h.ptr()) || py::isinstance(h, numpy().attr("integer")));
  if (!ok) type_error(std::string(name) + " must be an int, got " + type_name(h));
  const auto v = py::int_(py::reinterpret_borrow<py::object>(h));
  const long long r = PyLong_AsLongLong(v.ptr());
  if (r == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    value_error(std::string(name) + " is out of range");
  }
  return static_cast<std::int64_t>(r);
}

namespace {

py::array param_array(py::handle h, const char* name) {
  py::array a = no_array();
  if (py::isinstance<py::array>(h))
    a = py::reinterpret_borrow<py::array>(h);
  else if (!PyUnicode_Check(h.ptr()) && !PyBytes_Check(h.ptr()) && convertible_to_array(h))
    a = numpy().attr("asarray")(h);
  else
    type_error(std::string(name) + " must be a numpy.ndarray of float32 or float64, got " +
               type_name(h));
  const py::dtype d = a.dtype();
  if (d.kind() != 'f' || (d.itemsize() != 4 && d.itemsize() != 8) || d.byteorder() == '>')
    type_error(std::string(name) + " must have dtype float32 or float64, got " +
               py::str(d).cast<std::string>());
  return a;
}

}  // namespace

ParamRef as_param(py::handle h, const char* name, std::vector<py::array>& keep) {
  if (h.is_none()) return {};
  py::array a = param_array(h, name);
  if (a.ndim() != 1)
    value_error(std::string(name) + " must be 1-D (one value per channel), got shape " +
                shape_str(a));
  if (a.strides(0) % a.itemsize() != 0) a = contiguous_copy(a, name);
  if (!a.is(h)) keep.push_back(a);  // a converted copy must outlive the call
  return {a.data(), a.itemsize() == 8 ? DType::f64 : DType::f32, a.shape(0),
          a.strides(0) / a.itemsize()};
}

ParamRef as_shaped_param(py::handle h, const char* name, const std::vector<py::ssize_t>& shape,
                         std::vector<py::array>& keep) {
  if (h.is_none()) return {};
  py::array a = param_array(h, name);
  if (shape_of(a) != shape) {
    std::string want = "(";
    for (std::size_t i = 0; i < shape.size(); ++i)
      want += std::to_string(shape[i]) + (shape.size() == 1 ? "," : i + 1 < shape.size() ? ", " : "");
    value_error(std::string(name) + " must have shape normalized_shape " + want + "), got " +
                shape_str(a));
  }
  if (!is_c_contiguous(a)) a = contiguous_copy(a, name);
  if (!a.is(h)) keep.push_back(a);  // a converted copy must outlive the call
  return {a.data(), a.itemsize() == 8 ? DType::f64 : DType::f32, a.size(), 1};
}

MutParamRef as_running(py::handle h, const char* name, bool write) {
  if (h.is_none()) return {};
  if (!py::isinstance<py::array>(h))
    type_error(std::string(name) + " must be a numpy.ndarray of float32 or float64, got " +
               type_name(h));
  auto a = py::reinterpret_borrow<py::array>(h);
  const py::dtype d = a.dtype();
  if (d.kind() != 'f' || (d.itemsize() != 4 && d.itemsize() != 8) || d.byteorder() == '>')
    type_error(std::string(name) + " must have dtype float32 or float64, got " +
               py::str(d).cast<std::string>());
  if (a.ndim() != 1)
    value_error(std::string(name) + " must be 1-D (one value per channel), got shape " +
                shape_str(a));
  if (a.strides(0) % a.itemsize() != 0)
    value_error(std::string(name) + " has a stride that is not a multiple of its item size");
  if (write && !a.writeable())
    value_error(std::string(name) + " is read-only, but training updates it in place");
  if (write && has_internal_overlap(a))
    value_error(std::string(name) + " has elements that share memory (a zero stride), but "
                "training updates it in place");
  return {const_cast<void*>(a.data()), a.itemsize() == 8 ? DType::f64 : DType::f32, a.shape(0),
          a.strides(0) / a.itemsize()};
}

py::object NCSCall::result() const {
  if (out.is_none()) return y;
  if (!y.is(out)) numpy().attr("copyto")(out, y);
  return out;
}

NCSCall prepare_ncs(py::handle input, py::handle out, int min_rank) {
  NCSCall call;
  const py::array original = as_input(input, "input");
  const auto rank = original.ndim();
  if (rank < min_rank)
    value_error("input must have at least " + std::to_string(min_rank) + " dims " +
                (min_rank == 2 ? "(N, C, ...)" : "(N, C, L, ...)") + ", got shape " +
                shape_str(original));
  call.x = original;
  Layout layout = Layout::contiguous;
  if (!is_c_contiguous(original)) {
    if (is_channels_last(original))
      layout = Layout::channels_last;
    else
      call.x = contiguous_copy(original, "input");
  }
  const py::array& x = call.x;
  call.out = py::reinterpret_borrow<py::object>(out);
  bool direct = false;
  if (!out.is_none()) {
    py::array o = check_out(out, x, original);
    direct = layout == Layout::contiguous ? is_c_contiguous(o) : is_channels_last(o);
    if (direct) call.y = o;
  }
  if (!direct) call.y = new_array_like(x, layout == Layout::channels_last);
  std::int64_t S = 1;
  for (py::ssize_t d = 2; d < rank; ++d) S *= x.shape(d);
  call.ref = NCSRef{x.data(), call.y.mutable_data(), dtype_of(x, "input"), x.shape(0),
                    x.shape(1), S, layout};
  return call;
}

py::object RowsCall::result() const {
  if (out.is_none()) return y;
  if (!y.is(out)) numpy().attr("copyto")(out, y);
  return out;
}

RowsCall prepare_rows(py::handle input, py::handle normalized_shape, py::handle out) {
  RowsCall call;
  const py::array original = as_input(input, "input");
  std::vector<py::ssize_t> ns;
  if (PyLong_Check(normalized_shape.ptr()) || py::isinstance(normalized_shape, numpy().attr("integer"))) {
    ns.push_back(static_cast<py::ssize_t>(as_int(normalized_shape, "normalized_shape")));
  } else if (is_sequence_like(normalized_shape) ||
             py::isinstance<py::array>(normalized_shape)) {
    for (auto item : py::iter(normalized_shape))
      ns.push_back(static_cast<py::ssize_t>(as_int(item, "normalized_shape")));
  } else {
    type_error("normalized_shape must be an int or a sequence of ints, got " +
               type_name(normalized_shape));
  }
  const auto rank = original.ndim();
  const auto k = static_cast<py::ssize_t>(ns.size());
  bool match = k >= 1 && k <= rank;
  for (py::ssize_t i = 0; match && i < k; ++i)
    match = original.shape(rank - k + i) == ns[static_cast<std::size_t>(i)];
  if (!match) {
    std::string want = "(";
    for (std::size_t i = 0; i < ns.size(); ++i)
      want += std::to_string(ns[i]) + (ns.size() == 1 ? "," : i + 1 < ns.size() ? ", " : "");
    value_error("normalized_shape " + want + ") must be non-empty and equal the last dims of "
                "input, whose shape is " + shape_str(original));
  }
  call.norm_shape = ns;
  call.x = is_c_contiguous(original)
               ? original
               : contiguous_copy(original, "input");
  const py::array& x = call.x;
  call.out = py::reinterpret_borrow<py::object>(out);
  bool direct = false;
  if (!out.is_none()) {
    py::array o = check_out(out, x, original);
    direct = is_c_contiguous(o);
    if (direct) call.y = o;
  }
  if (!direct) call.y = new_array_like(x, false);
  call.dtype = dtype_of(x, "input");
  call.row_len = 1;
  for (py::ssize_t d = rank - k; d < rank; ++d) call.row_len *= x.shape(d);
  call.rows = 1;
  for (py::ssize_t d = 0; d < rank - k; ++d) call.rows *= x.shape(d);
  return call;
}

namespace {

py::array checked_grad(py::handle grad_output, const py::array& x) {
  py::array dy = as_input(grad_output, "grad_output");
  if (!same_shape(dy, x))
    value_error("grad_output must have the input's shape " + shape_str(x) + ", got " +
                shape_str(dy));
  if (!dy.dtype().is(x.dtype()))
    type_error("grad_output must have the input's dtype " +
               py::str(x.dtype()).cast<std::string>() + ", got " +
               py::str(dy.dtype()).cast<std::string>());
  return dy;
}

}  // namespace

GradCall prepare_grad(py::handle grad_output, py::handle input, int min_rank) {
  GradCall g;
  g.fwd = prepare_ncs(input, py::none(), min_rank);
  g.dy = checked_grad(grad_output, g.fwd.x);
  const bool cl = g.fwd.ref.layout == Layout::channels_last;
  if (cl ? !is_channels_last(g.dy) : !is_c_contiguous(g.dy)) {
    check_fits(g.dy, "grad_output", "a copy in the input's layout");
    py::array copy = numpy().attr("empty_like")(g.fwd.y);
    numpy().attr("copyto")(copy, g.dy);
    g.dy = copy;
  }
  const NCSRef& r = g.fwd.ref;
  g.ref = NCSGradRef{r.x, g.dy.data(), r.y, r.dtype, r.N, r.C, r.S, r.layout};
  return g;
}

py::array rows_grad(py::handle grad_output, const py::array& x) {
  py::array dy = checked_grad(grad_output, x);
  if (!is_c_contiguous(dy)) dy = contiguous_copy(dy, "grad_output");
  return dy;
}

std::vector<py::ssize_t> RowsCall::lead_shape() const {
  return std::vector<py::ssize_t>(x.shape(), x.shape() + (x.ndim() - static_cast<py::ssize_t>(norm_shape.size())));
}

Saved::Saved(StatsOut mode, const std::vector<py::ssize_t>& shape, bool with_mean)
    : mode_(mode), with_mean_(with_mean && mode != StatsOut::none), shape_(shape) {
  if (mode_ == StatsOut::none) return;
  if (mode_ == StatsOut::packed) {
    std::vector<py::ssize_t> packed{with_mean_ ? 2 : 1};
    packed.insert(packed.end(), shape.begin(), shape.end());
    first_ = py::array_t<double>(packed);
    double* d = first_.mutable_data();
    py::ssize_t size = 1;
    for (py::ssize_t v : shape) size *= v;
    mean_ = with_mean_ ? d : nullptr;
    invstd_ = with_mean_ ? d + size : d;
    return;
  }
  if (with_mean_) {
    first_ = py::array_t<double>(shape);
    mean_ = first_.mutable_data();
  }
  second_ = py::array_t<double>(shape);
  invstd_ = second_.mutable_data();
}

py::object Saved::result(py::object y) const {
  switch (mode_) {
    case StatsOut::none:
      return y;
    case StatsOut::packed:
      return py::make_tuple(y, first_);
    case StatsOut::separate:
      break;
  }
  if (!with_mean_) return py::make_tuple(y, second_);
  return py::make_tuple(y, first_, second_);
}

py::object Saved::broadcast_result(py::object y, std::int64_t n) const {
  std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(n)};
  shape.insert(shape.end(), shape_.begin(), shape_.end());
  Saved wide(mode_, shape, with_mean_);
  const auto per = static_cast<std::size_t>(shape_.empty() ? 1 : shape_.back());
  for (std::int64_t i = 0; i < n; ++i) {
    const std::size_t at = static_cast<std::size_t>(i) * per;
    if (with_mean_) std::copy(mean_, mean_ + per, wide.mean_ + at);
    std::copy(invstd_, invstd_ + per, wide.invstd_ + at);
  }
  return wide.result(std::move(y));
}

py::array_t<double> as_f64(py::handle h, const char* name, std::int64_t size) {
  if (h.is_none() || PyUnicode_Check(h.ptr()) || PyBool_Check(h.ptr()))
    type_error(std::string(name) + " must be an array of float64 values, got " + type_name(h));
  py::array a = numpy().attr("asarray")(h);
  if (a.dtype().kind() != 'f' && a.dtype().kind() != 'i' && a.dtype().kind() != 'u')
    type_error(std::string(name) + " must be a real array, got dtype " +
               py::str(a.dtype()).cast<std::string>());
  if (a.size() != size)
    value_error(std::string(name) + " must have " + std::to_string(size) + " elements, got " +
                std::to_string(a.size()) + " (shape " + shape_str(a) + ")");
  return py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a);
}

}  // namespace bindings
}  // namespace normcpp
