// Images: fused normalize and per-channel statistics. Checks and converts arguments, releases
// the GIL, calls the C++ API. The Python layer (normcpp/image.py) resolves axes and layouts.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bindings/convert.hpp"
#include "normcpp/normcpp.hpp"

namespace py = pybind11;

namespace normcpp {
namespace bindings {

namespace {

// A C-contiguous image ndarray of uint8, uint16, float16, float32 or float64.
py::array image_array(py::handle h, const char* name) {
  if (!py::isinstance<py::array>(h))
    type_error(std::string(name) + " must be a numpy.ndarray, got " + type_name(h));
  auto a = py::reinterpret_borrow<py::array>(h);
  const py::dtype d = a.dtype();
  const char kind = d.kind();
  const auto item = d.itemsize();
  const bool ok = (kind == 'u' && (item == 1 || item == 2)) ||
                  (kind == 'f' && (item == 2 || item == 4 || item == 8));
  if (!ok)
    type_error(std::string(name) +
               " must have dtype uint8, uint16, float16, float32 or float64, got " +
               py::str(d).cast<std::string>());
  if (item > 1 && d.byteorder() == '>')
    type_error(std::string(name) + " must be in native byte order");
  if ((a.flags() & py::array::c_style) == 0)
    value_error(std::string(name) + " must be C-contiguous");
  return a;
}

PixelType pixel_type(const py::array& a) {
  const py::dtype d = a.dtype();
  if (d.kind() == 'u') return d.itemsize() == 1 ? PixelType::u8 : PixelType::u16;
  return d.itemsize() == 2 ? PixelType::f16 : d.itemsize() == 4 ? PixelType::f32 : PixelType::f64;
}

py::object normalize_images_py(py::object images, py::object mean, py::object std_,
                               py::object scale, py::object channels_last,
                               py::object out_channels_last, py::object out_float16,
                               py::object out) {
  const py::array x = image_array(images, "images");
  if (x.ndim() != 4)
    value_error("images must have 4 dims (N, H, W, C) or (N, C, H, W), got shape " + shape_str(x));
  const bool in_cl = as_bool(channels_last, "channels_last");
  const bool out_cl = as_bool(out_channels_last, "out_channels_last");
  const bool f16 = as_bool(out_float16, "out_float16");
  const double s = as_real(scale, "scale");
  const py::ssize_t N = x.shape(0);
  const py::ssize_t C = in_cl ? x.shape(3) : x.shape(1);
  const py::ssize_t H = in_cl ? x.shape(1) : x.shape(2);
  const py::ssize_t W = in_cl ? x.shape(2) : x.shape(3);
  if (C < 1) value_error("images must have at least one channel, got shape " + shape_str(x));
  const py::array_t<double> m = as_f64(mean, "mean", C);
  const py::array_t<double> sd = as_f64(std_, "std", C);
  const std::vector<py::ssize_t> shape =
      out_cl ? std::vector<py::ssize_t>{N, H, W, C} : std::vector<py::ssize_t>{N, C, H, W};
  const py::dtype odt = f16 ? py::dtype("float16") : py::dtype("float32");
  py::array y = no_array();
  if (out.is_none()) {
    y = py::array(odt, shape);
  } else {
    if (!py::isinstance<py::array>(out))
      type_error("out must be a numpy.ndarray, got " + type_name(out));
    y = py::reinterpret_borrow<py::array>(out);
    if (!y.dtype().is(odt))
      type_error("out must have dtype " + py::str(odt).cast<std::string>() + ", got " +
                 py::str(y.dtype()).cast<std::string>());
    if (std::vector<py::ssize_t>(y.shape(), y.shape() + y.ndim()) != shape) {
      std::string want = "(";
      for (std::size_t i = 0; i < shape.size(); ++i)
        want += std::to_string(shape[i]) + (i + 1 < shape.size() ? ", " : ")");
      value_error("out must have shape " + want + ", got " + shape_str(y));
    }
    if ((y.flags() & py::array::c_style) == 0) value_error("out must be C-contiguous");
    if (!y.writeable()) value_error("out is read-only");
  }
  const ImageRef ref{x.data(), pixel_type(x), N,
                     C,        H * W,         in_cl ? Layout::channels_last : Layout::contiguous};
  void* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    normcpp::normalize_images(ref, yp, f16 ? DType::f16 : DType::f32,
                              out_cl ? Layout::channels_last : Layout::contiguous, m.data(),
                              sd.data(), s);
  }
  return py::object(std::move(y));
}

py::dict channel_stats_py(py::object x_obj, py::object n, py::object c, py::object p,
                          py::object channels_last) {
  const py::array x = image_array(x_obj, "batch");
  const std::int64_t N = as_int(n, "N"), C = as_int(c, "C"), P = as_int(p, "P");
  const bool cl = as_bool(channels_last, "channels_last");
  if (N < 0 || C < 1 || P < 0 || N * C * P != static_cast<std::int64_t>(x.size()))
    value_error("batch of shape " + shape_str(x) + " is not N=" + std::to_string(N) +
                " x C=" + std::to_string(C) + " x P=" + std::to_string(P));
  const ImageRef ref{
      x.data(), pixel_type(x), N, C, P, cl ? Layout::channels_last : Layout::contiguous};
  ChannelStatsResult r;
  {
    py::gil_scoped_release nogil;
    r = normcpp::channel_stats(ref);
  }
  auto f64 = [](const std::vector<double>& v) {
    py::array_t<double> a(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
  };
  auto u64 = [](const std::vector<std::uint64_t>& v) {
    py::array_t<std::uint64_t> a(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
  };
  py::dict d;
  d["count"] = py::int_(r.count);
  d["mean"] = f64(r.mean);
  d["m2"] = f64(r.m2);
  d["min"] = f64(r.min);
  d["max"] = f64(r.max);
  d["exact"] = py::bool_(r.exact);
  if (r.exact) {
    d["sum"] = u64(r.sum);
    d["sum_sq_lo"] = u64(r.sum_sq_lo);
    d["sum_sq_hi"] = u64(r.sum_sq_hi);
  }
  return d;
}

}  // namespace

void register_image(py::module_& m) {
  m.def("normalize_images", &normalize_images_py, py::arg("images"), py::arg("mean"),
        py::arg("std"), py::arg("scale"), py::arg("channels_last"), py::arg("out_channels_last"),
        py::arg("out_float16"), py::arg("out"),
        "y = (x * scale - mean[c]) / std[c] of a C-contiguous 4-D uint8/uint16/float batch, "
        "as float32/float16 in NCHW or NHWC (private; use normcpp.normalize).");
  m.def("channel_stats", &channel_stats_py, py::arg("batch"), py::arg("N"), py::arg("C"),
        py::arg("P"), py::arg("channels_last"),
        "Per-channel count, mean, m2, min, max (and exact integer sums) of a C-contiguous "
        "(N, C, P) or (N, P, C) batch (private; use normcpp.ChannelStats).");
}

}  // namespace bindings
}  // namespace normcpp
