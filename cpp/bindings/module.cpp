// The private extension module normcpp._core: one register_* call per area.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace normcpp {
namespace bindings {
void register_config(py::module_& m);
void register_functional(py::module_& m);
void register_backward(py::module_& m);
void register_image(py::module_& m);
}  // namespace bindings
}  // namespace normcpp

PYBIND11_MODULE(_core, m) {
  m.doc() = "normcpp kernels (private; use the normcpp package)";
  normcpp::bindings::register_config(m);
  normcpp::bindings::register_functional(m);
  normcpp::bindings::register_backward(m);
  normcpp::bindings::register_image(m);
}
