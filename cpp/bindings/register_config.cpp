// Build facts, ISA selection and threads.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/convert.hpp"
#include "normcpp/normcpp.hpp"
#include "ops/parallel.hpp"

namespace py = pybind11;

namespace normcpp {
namespace bindings {

void register_config(py::module_& m) {
  m.attr("__version__") = normcpp::version();
  m.def("set_num_threads", &normcpp::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &normcpp::get_num_threads);
  m.def("has_openmp", &normcpp::has_openmp);
  // Streaming-store threshold in bytes (tests and tuning; NORMCPP_STREAM_BYTES sets it too).
  m.def("set_stream_threshold", &normcpp::set_stream_threshold, py::arg("bytes"));
  m.def("get_stream_threshold", &normcpp::get_stream_threshold);
  // The store policy's decision for an out-of-place output of `bytes` on `threads` threads
  // from `inputs` inputs of its size, and the cache sizes it uses (tests).
  m.def("_stream_decision", &normcpp::ops::stream_bytes, py::arg("bytes"), py::arg("threads"),
        py::arg("inputs") = 1);
  m.def("_l2_cache_bytes", &normcpp::ops::l2_cache_bytes);
  m.def("_small_llc_bytes", &normcpp::ops::small_llc_bytes);
  // Reuse of freed output buffers (tests and tuning; NORMCPP_OUTPUT_CACHE_BYTES sets it too).
  m.def("set_output_cache_bytes", &set_output_cache_bytes, py::arg("bytes"));
  m.def("get_output_cache_bytes", &get_output_cache_bytes);
  m.def("output_cache_held_bytes", &output_cache_held_bytes);
  m.def("compiled_isas", &normcpp::compiled_isas);
  m.def("supported_isas", &normcpp::supported_isas);
  m.def("selected_isa", &normcpp::selected_isa);
  m.def("select_isa", &normcpp::select_isa, py::arg("name"));
}

}  // namespace bindings
}  // namespace normcpp
