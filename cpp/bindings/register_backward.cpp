// Backward passes and the pieces SyncBatchNorm and recalibration are built from.
#include <cmath>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "bindings/convert.hpp"
#include "normcpp/normcpp.hpp"

namespace py = pybind11;

namespace normcpp {
namespace bindings {

namespace {

// grad_weight / grad_bias outputs: float64 buffers returned in the weight's dtype.
struct ParamGrads {
  py::object weight_dtype;
  py::array_t<double> gw, gb;
  bool want_w, want_b;
  ParamGrads(py::handle weight, const ParamRef& w, py::handle has_bias,
             const std::vector<py::ssize_t>& shape)
      : want_w(w.present()),
        want_b(has_bias.is_none() ? w.present() : as_bool(has_bias, "has_bias")) {
    weight_dtype = w.present() ? py::object(py::module_::import("numpy").attr(
                                     w.dtype == DType::f64 ? "float64" : "float32"))
                               : py::object(py::module_::import("numpy").attr("float64"));
    (void)weight;
    if (want_w) gw = py::array_t<double>(shape);
    if (want_b) gb = py::array_t<double>(shape);
  }
  double* w_ptr() { return want_w ? gw.mutable_data() : nullptr; }
  double* b_ptr() { return want_b ? gb.mutable_data() : nullptr; }
  py::object cast(const py::array_t<double>& a, bool want) const {
    if (!want) return py::none();
    return a.attr("astype")(weight_dtype, py::arg("copy") = false);
  }
  py::tuple result(py::object dx) const {
    return py::make_tuple(dx, cast(gw, want_w), cast(gb, want_b));
  }
};

py::tuple batch_norm_backward_py(py::object grad_output, py::object input, py::object weight,
                                 py::object save_mean, py::object save_invstd,
                                 py::object training, py::object has_bias) {
  const bool train = as_bool(training, "training");
  GradCall g = prepare_grad(grad_output, input, 2);
  const std::int64_t C = g.ref.C;
  std::vector<py::array> keep;
  const ParamRef w = as_param(weight, "weight", keep);
  const auto mean = as_f64(save_mean, "save_mean", C), invstd = as_f64(save_invstd, "save_invstd", C);
  ParamGrads pg(weight, w, has_bias, {C});
  {
    py::gil_scoped_release nogil;
    normcpp::batch_norm_backward(g.ref, w, mean.data(), invstd.data(), train, pg.w_ptr(),
                                 pg.b_ptr());
  }
  return pg.result(g.fwd.y);
}

py::tuple instance_norm_backward_py(py::object grad_output, py::object input, py::object weight,
                                    py::object save_mean, py::object save_invstd,
                                    py::object has_bias) {
  GradCall g = prepare_grad(grad_output, input, 3);
  const std::int64_t slots = g.ref.N * g.ref.C;
  std::vector<py::array> keep;
  const ParamRef w = as_param(weight, "weight", keep);
  const auto mean = as_f64(save_mean, "save_mean", slots);
  const auto invstd = as_f64(save_invstd, "save_invstd", slots);
  ParamGrads pg(weight, w, has_bias, {g.ref.C});
  {
    py::gil_scoped_release nogil;
    normcpp::instance_norm_backward(g.ref, w, mean.data(), invstd.data(), pg.w_ptr(),
                                    pg.b_ptr());
  }
  return pg.result(g.fwd.y);
}

py::tuple group_norm_backward_py(py::object grad_output, py::object input, py::object num_groups,
                                 py::object weight, py::object save_mean,
                                 py::object save_invstd, py::object has_bias) {
  const std::int64_t groups = as_int(num_groups, "num_groups");
  GradCall g = prepare_grad(grad_output, input, 2);
  if (groups <= 0 || g.ref.C % groups != 0)
    value_error("num_groups (" + std::to_string(groups) +
                ") must be > 0 and divide the number of channels (" + std::to_string(g.ref.C) +
                ")");
  std::vector<py::array> keep;
  const ParamRef w = as_param(weight, "weight", keep);
  const auto mean = as_f64(save_mean, "save_mean", g.ref.N * groups);
  const auto invstd = as_f64(save_invstd, "save_invstd", g.ref.N * groups);
  ParamGrads pg(weight, w, has_bias, {g.ref.C});
  {
    py::gil_scoped_release nogil;
    normcpp::group_norm_backward(g.ref, groups, w, mean.data(), invstd.data(), pg.w_ptr(),
                                 pg.b_ptr());
  }
  return pg.result(g.fwd.y);
}

py::tuple layer_norm_backward_py(py::object grad_output, py::object input,
                                 py::object normalized_shape, py::object weight,
                                 py::object save_mean, py::object save_invstd,
                                 py::object has_bias) {
  RowsCall call = prepare_rows(input, normalized_shape, py::none());
  const py::array dy = rows_grad(grad_output, call.x);
  std::vector<py::array> keep;
  const ParamRef w = as_shaped_param(weight, "weight", call.norm_shape, keep);
  const auto mean = as_f64(save_mean, "save_mean", call.rows);
  const auto invstd = as_f64(save_invstd, "save_invstd", call.rows);
  ParamGrads pg(weight, w, has_bias, call.norm_shape);
  {
    py::gil_scoped_release nogil;
    normcpp::layer_norm_backward(call.x.data(), dy.data(), call.y.mutable_data(), call.dtype,
                                 call.rows, call.row_len, w, mean.data(), invstd.data(),
                                 pg.w_ptr(), pg.b_ptr());
  }
  return pg.result(call.y);
}

py::tuple rms_norm_backward_py(py::object grad_output, py::object input,
                               py::object normalized_shape, py::object weight,
                               py::object save_invrms) {
  RowsCall call = prepare_rows(input, normalized_shape, py::none());
  const py::array dy = rows_grad(grad_output, call.x);
  std::vector<py::array> keep;
  const ParamRef w = as_shaped_param(weight, "weight", call.norm_shape, keep);
  const auto invrms = as_f64(save_invrms, "save_invrms", call.rows);
  ParamGrads pg(weight, w, py::bool_(false), call.norm_shape);
  {
    py::gil_scoped_release nogil;
    normcpp::rms_norm_backward(call.x.data(), dy.data(), call.y.mutable_data(), call.dtype,
                               call.rows, call.row_len, w, invrms.data(), pg.w_ptr());
  }
  return py::make_tuple(call.y, pg.cast(pg.gw, pg.want_w));
}

py::tuple batch_norm_stats_py(py::object input) {
  NCSCall call = prepare_ncs(input, py::none(), 2);
  const py::ssize_t C = call.ref.C;
  py::array_t<double> count(C), mean(C), m2(C);
  {
    py::gil_scoped_release nogil;
    normcpp::batch_norm_stats(call.ref, count.mutable_data(), mean.mutable_data(),
                              m2.mutable_data());
  }
  return py::make_tuple(count, mean, m2);
}

py::tuple batch_norm_backward_reduce_py(py::object grad_output, py::object input,
                                        py::object mean, py::object invstd) {
  GradCall g = prepare_grad(grad_output, input, 2);
  const std::int64_t C = g.ref.C;
  const auto mu = as_f64(mean, "mean", C), iv = as_f64(invstd, "invstd", C);
  py::array_t<double> sum_dy(C), sum_dy_xhat(C);
  {
    py::gil_scoped_release nogil;
    normcpp::batch_norm_backward_reduce(g.ref, mu.data(), iv.data(), sum_dy.mutable_data(),
                                        sum_dy_xhat.mutable_data());
  }
  return py::make_tuple(sum_dy, sum_dy_xhat);
}

py::object batch_norm_backward_elemt_py(py::object grad_output, py::object input,
                                        py::object weight, py::object mean, py::object invstd,
                                        py::object sum_dy, py::object sum_dy_xhat,
                                        py::object count) {
  GradCall g = prepare_grad(grad_output, input, 2);
  const std::int64_t C = g.ref.C;
  std::vector<py::array> keep;
  const ParamRef w = as_param(weight, "weight", keep);
  const auto mu = as_f64(mean, "mean", C), iv = as_f64(invstd, "invstd", C);
  const auto sd = as_f64(sum_dy, "sum_dy", C), sx = as_f64(sum_dy_xhat, "sum_dy_xhat", C);
  const double n = as_real(count, "count");
  if (!(n >= 1.0) || std::isinf(n))
    value_error("count must be a finite number >= 1 (the global element count per channel)");
  {
    py::gil_scoped_release nogil;
    normcpp::batch_norm_backward_elemt(g.ref, w, mu.data(), iv.data(), sd.data(), sx.data(), n);
  }
  return g.fwd.y;
}

}  // namespace

void register_backward(py::module_& m) {
  m.def("batch_norm_backward", &batch_norm_backward_py, py::arg("grad_output"), py::arg("input"),
        py::arg("weight"), py::arg("save_mean"), py::arg("save_invstd"), py::arg("training"),
        py::arg("has_bias"));
  m.def("instance_norm_backward", &instance_norm_backward_py, py::arg("grad_output"),
        py::arg("input"), py::arg("weight"), py::arg("save_mean"), py::arg("save_invstd"),
        py::arg("has_bias"));
  m.def("group_norm_backward", &group_norm_backward_py, py::arg("grad_output"), py::arg("input"),
        py::arg("num_groups"), py::arg("weight"), py::arg("save_mean"), py::arg("save_invstd"),
        py::arg("has_bias"));
  m.def("layer_norm_backward", &layer_norm_backward_py, py::arg("grad_output"), py::arg("input"),
        py::arg("normalized_shape"), py::arg("weight"), py::arg("save_mean"),
        py::arg("save_invstd"), py::arg("has_bias"));
  m.def("rms_norm_backward", &rms_norm_backward_py, py::arg("grad_output"), py::arg("input"),
        py::arg("normalized_shape"), py::arg("weight"), py::arg("save_invrms"));
  m.def("batch_norm_stats", &batch_norm_stats_py, py::arg("input"));
  m.def("batch_norm_backward_reduce", &batch_norm_backward_reduce_py, py::arg("grad_output"),
        py::arg("input"), py::arg("mean"), py::arg("invstd"));
  m.def("batch_norm_backward_elemt", &batch_norm_backward_elemt_py, py::arg("grad_output"),
        py::arg("input"), py::arg("weight"), py::arg("mean"), py::arg("invstd"),
        py::arg("sum_dy"), py::arg("sum_dy_xhat"), py::arg("count"));
}

}  // namespace bindings
}  // namespace normcpp
