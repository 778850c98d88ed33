// Argument checking and conversion shared by the binding files: Python objects -> C++ API
// views. Errors are TypeError (wrong type or dtype) or ValueError (wrong shape or value), each
// naming the argument. No arithmetic on data here.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "normcpp/normcpp.hpp"

namespace normcpp {
namespace bindings {

namespace py = pybind11;

// An empty py::array handle (holds nothing). pybind11's default py::array() creates a NumPy
// array of size 0: a few hundred instructions per call, for nothing, on the hot path.
inline py::array no_array() { return py::reinterpret_steal<py::array>(py::handle()); }

// Releases the GIL around a call's work (like py::gil_scoped_release) unless the call touches
// fewer than kMinElems elements: a tiny call would spend more on the GIL handoff than on its
// data, and other Python threads gain nothing from a release that short.
class NoGil {
 public:
  static constexpr std::int64_t kMinElems = 16384;
  explicit NoGil(std::int64_t elems) {
    if (elems >= kMinElems) state_ = PyEval_SaveThread();
  }
  ~NoGil() {
    if (state_) PyEval_RestoreThread(state_);
  }
  NoGil(const NoGil&) = delete;
  NoGil& operator=(const NoGil&) = delete;

 private:
  PyThreadState* state_ = nullptr;
};

[[noreturn]] void type_error(const std::string& msg);
[[noreturn]] void value_error(const std::string& msg);

// ValueError naming both if arrays a and b (None or non-arrays are skipped) share memory.
void check_disjoint(py::handle a, const char* a_name, py::handle b, const char* b_name);

// Bytes of freed output buffers kept for reuse by later outputs of >= 1 MiB (convert.cpp):
// set (< 0: the default, NORMCPP_OUTPUT_CACHE_BYTES or 64 MiB; 0: off), get, and held now.
void set_output_cache_bytes(std::int64_t bytes);
std::int64_t get_output_cache_bytes();
std::int64_t output_cache_held_bytes();

std::string type_name(py::handle h);
std::string shape_str(const py::array& a);

// The input array (ndarray, or a list/tuple converted with numpy.asarray) of float16/32/64.
py::array as_input(py::handle h, const char* name);
DType dtype_of(const py::array& a, const char* name);

// Python bool / numpy.bool_ / int 0 or 1.
bool as_bool(py::handle h, const char* name);
// A real number (int, float, numpy real scalar); not bool, str, None, complex.
double as_real(py::handle h, const char* name);
// An integer (int or numpy integer); not bool.
std::int64_t as_int(py::handle h, const char* name);

// Optional read-only 1-D parameter of `expected` elements (float32/float64). Keeps the
// converted array alive in `keep`.
ParamRef as_param(py::handle h, const char* name, std::vector<py::array>& keep);
// Optional parameter whose shape must equal `shape` (layer_norm weight/bias); made contiguous.
ParamRef as_shaped_param(py::handle h, const char* name, const std::vector<py::ssize_t>& shape,
                         std::vector<py::array>& keep);
// Optional running statistic: a float32/float64 1-D ndarray, writeable if `write`.
MutParamRef as_running(py::handle h, const char* name, bool write);

// An (N, C, *spatial) input as an NCSRef (reading in place when contiguous or channels-last,
// else through one contiguous copy), with the output allocated in the same layout or taken
// from `out`. finish() copies into `out` when it could not be written directly.
struct NCSCall {
  py::array x = no_array();  // the array the kernel reads
  py::array y = no_array();  // the array the kernel writes
  py::object out;    // user's out (None if not given)
  NCSRef ref;
  py::object result() const;
};
NCSCall prepare_ncs(py::handle input, py::handle out, int min_rank);

// Backward over (N, C, *spatial): the forward input, grad_output in the same layout (copied
// when it differs) and grad_input allocated in that layout.
struct GradCall {
  NCSCall fwd;      // fwd.x: the input; fwd.y: grad_input
  py::array dy = no_array();
  NCSGradRef ref;
};
GradCall prepare_grad(py::handle grad_output, py::handle input, int min_rank);
// grad_output for a rows call: same shape and dtype as the input, made C-contiguous.
py::array rows_grad(py::handle grad_output, const py::array& x);

// Rows x row_len view for layer_norm / rms_norm (trailing dims of size row_len).
struct RowsCall {
  py::array x = no_array(), y = no_array();
  py::object out;
  DType dtype;
  std::int64_t rows = 0, row_len = 0;
  std::vector<py::ssize_t> norm_shape;
  py::object result() const;
  std::vector<py::ssize_t> lead_shape() const;  // input.shape[:-len(normalized_shape)]
};

// What a forward returns besides its output: nothing (the plain op), the float64 per-slot
// statistics its backward needs as separate arrays (the public *_forward: (y, mean, invstd)),
// or packed in one array (the modules' _*_forward_packed: (y, stats), stats[0] the mean and
// stats[-1] the invstd; one allocation instead of two on every training step).
enum class StatsOut { none, separate, packed };

// Optional float64 per-slot statistics a forward saves for its backward pass.
class Saved {
 public:
  Saved(StatsOut mode, const std::vector<py::ssize_t>& shape, bool with_mean = true);
  SavedStats view() { return {mean_ptr(), invstd_ptr()}; }
  double* mean_ptr() { return with_mean_ ? mean_ : nullptr; }
  double* invstd_ptr() { return invstd_; }
  // y alone, or (y, mean, invstd) / (y, invstd) without a mean, or (y, stats) packed.
  py::object result(py::object y) const;
  // As result(), with per-channel stats repeated over n samples: shape (n, C).
  py::object broadcast_result(py::object y, std::int64_t n) const;

 private:
  StatsOut mode_;
  bool with_mean_;
  std::vector<py::ssize_t> shape_;
  // Created only when mode_ != none (see no_array): two arrays, or one of shape (k, *shape_)
  // with k = 2 (mean, invstd) or 1 (invstd).
  py::array_t<double> first_{py::reinterpret_steal<py::array_t<double>>(py::handle())};
  py::array_t<double> second_{py::reinterpret_steal<py::array_t<double>>(py::handle())};
  double* mean_ = nullptr;
  double* invstd_ = nullptr;
};

// A float64 C-contiguous copy-or-view of an array-like of `size` elements (ValueError naming
// `name` otherwise).
py::array_t<double> as_f64(py::handle h, const char* name, std::int64_t size);
RowsCall prepare_rows(py::handle input, py::handle normalized_shape, py::handle out);

}  // namespace bindings
}  // namespace normcpp
