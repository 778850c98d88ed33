// The functional ops: check and convert arguments, release the GIL, call the C++ API.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#ifdef __GLIBCXX__
#include <cxxabi.h>
#endif
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

#include "bindings/convert.hpp"
#include "normcpp/normcpp.hpp"

namespace py = pybind11;

namespace normcpp {
namespace bindings {

namespace {

// nonfinite="raise" (default) or "propagate": whether NaN/inf batch statistics may reach the
// running statistics.
bool as_nonfinite(py::handle h) {
  if (!PyUnicode_Check(h.ptr()))
    type_error("nonfinite must be 'raise' or 'propagate', got " + type_name(h));
  if (PyUnicode_CompareWithASCIIString(h.ptr(), "raise") == 0) return false;
  if (PyUnicode_CompareWithASCIIString(h.ptr(), "propagate") == 0) return true;
  value_error("nonfinite must be 'raise' or 'propagate', got '" + h.cast<std::string>() + "'");
}

// What training writes (out, running statistics) must not share memory with what the call
// reads or with each other; a kernel would otherwise read values it already overwrote.
void check_running_disjoint(py::handle running_mean, py::handle running_var, py::handle weight,
                            py::handle bias, py::handle out, bool writes_running) {
  check_disjoint(out, "out", weight, "weight");
  check_disjoint(out, "out", bias, "bias");
  check_disjoint(out, "out", running_mean, "running_mean");
  check_disjoint(out, "out", running_var, "running_var");
  if (writes_running) check_disjoint(running_mean, "running_mean", running_var, "running_var");
}

// activation=None | "relu" | "relu6" | "silu" | "gelu" (inference only; not with *_forward).
Activation as_activation(py::handle h, StatsOut stats) {
  if (h.is_none()) return Activation::none;
  if (!PyUnicode_Check(h.ptr()))
    type_error("activation must be None or one of 'relu', 'relu6', 'silu', 'gelu', got " +
               type_name(h));
  const auto v = h.cast<std::string>();
  Activation a;
  if (v == "relu")
    a = Activation::relu;
  else if (v == "relu6")
    a = Activation::relu6;
  else if (v == "silu")
    a = Activation::silu;
  else if (v == "gelu")
    a = Activation::gelu;
  else
    value_error("activation must be None or one of 'relu', 'relu6', 'silu', 'gelu', got '" + v +
                "'");
  if (stats != StatsOut::none)
    value_error("activation is for inference; the *_forward variants (for backward) do not "
                "take it");
  return a;
}

py::object batch_norm_py(StatsOut stats, py::object input, py::object running_mean, py::object running_var,
                         py::object weight, py::object bias, py::object training,
                         py::object momentum, py::object eps, py::object out,
                         py::object nonfinite, py::object activation) {
  const bool train = as_bool(training, "training");
  const Activation act = as_activation(activation, stats);
  const bool propagate = as_nonfinite(nonfinite);
  const double mom = as_real(momentum, "momentum");
  const double e = as_real(eps, "eps");
  NCSCall call = prepare_ncs(input, out, 2);
  std::vector<py::array> keep;
  const ParamRef w = as_param(weight, "weight", keep), b = as_param(bias, "bias", keep);
  check_running_disjoint(running_mean, running_var, weight, bias, out, train);
  const RunningUpdate run{as_running(running_mean, "running_mean", train),
                          as_running(running_var, "running_var", train), mom, propagate};
  Saved saved(stats, {call.ref.C});
  {
    NoGil nogil(call.x.size());
    normcpp::batch_norm(call.ref, run, w, b, train, e, saved.view(), act);
  }
  return saved.result(call.result());
}

py::object instance_norm_py(StatsOut stats, py::object input, py::object running_mean, py::object running_var,
                            py::object weight, py::object bias, py::object use_input_stats,
                            py::object momentum, py::object eps, py::object out,
                            py::object nonfinite) {
  const bool use_stats = as_bool(use_input_stats, "use_input_stats");
  const bool propagate = as_nonfinite(nonfinite);
  const double mom = as_real(momentum, "momentum");
  const double e = as_real(eps, "eps");
  NCSCall call = prepare_ncs(input, out, 3);
  std::vector<py::array> keep;
  const ParamRef w = as_param(weight, "weight", keep), b = as_param(bias, "bias", keep);
  check_running_disjoint(running_mean, running_var, weight, bias, out, use_stats);
  const RunningUpdate run{as_running(running_mean, "running_mean", use_stats),
                          as_running(running_var, "running_var", use_stats), mom, propagate};
  Saved saved(use_stats ? stats : StatsOut::none, {call.ref.N, call.ref.C});
  {
    NoGil nogil(call.x.size());
    normcpp::instance_norm(call.ref, run, w, b, use_stats, e, saved.view());
  }
  if (stats != StatsOut::none && !use_stats) {
    // The running statistics normalized every sample: broadcast them as the saved stats.
    Saved bn(stats, {call.ref.C});
    for (std::int64_t c = 0; c < call.ref.C; ++c) {
      bn.mean_ptr()[c] = run.mean.get(c);
      bn.invstd_ptr()[c] = 1.0 / std::sqrt(run.var.get(c) + e);
    }
    return bn.broadcast_result(call.result(), call.ref.N);
  }
  return saved.result(call.result());
}

py::object group_norm_py(StatsOut stats, py::object input, py::object num_groups, py::object weight,
                         py::object bias, py::object eps, py::object out,
                         py::object activation) {
  const std::int64_t groups = as_int(num_groups, "num_groups");
  const Activation act = as_activation(activation, stats);
  const double e = as_real(eps, "eps");
  NCSCall call = prepare_ncs(input, out, 2);
  if (groups <= 0 || call.ref.C % groups != 0)
    value_error("num_groups (" + std::to_string(groups) +
                ") must be > 0 and divide the number of channels (" +
                std::to_string(call.ref.C) + ")");
  check_disjoint(out, "out", weight, "weight");
  check_disjoint(out, "out", bias, "bias");
  std::vector<py::array> keep;
  const ParamRef w = as_param(weight, "weight", keep), b = as_param(bias, "bias", keep);
  Saved saved(stats, {call.ref.N, groups > 0 ? groups : 1});
  {
    NoGil nogil(call.x.size());
    normcpp::group_norm(call.ref, groups, w, b, e, saved.view(), act);
  }
  return saved.result(call.result());
}

py::object layer_norm_py(StatsOut stats, py::object input, py::object normalized_shape, py::object weight,
                         py::object bias, py::object eps, py::object out,
                         py::object activation) {
  const double e = as_real(eps, "eps");
  const Activation act = as_activation(activation, stats);
  RowsCall call = prepare_rows(input, normalized_shape, out);
  check_disjoint(out, "out", weight, "weight");
  check_disjoint(out, "out", bias, "bias");
  std::vector<py::array> keep;
  const ParamRef w = as_shaped_param(weight, "weight", call.norm_shape, keep);
  const ParamRef b = as_shaped_param(bias, "bias", call.norm_shape, keep);
  Saved saved(stats, call.lead_shape());
  {
    NoGil nogil(call.x.size());
    normcpp::layer_norm(call.x.data(), call.y.mutable_data(), call.dtype, call.rows,
                        call.row_len, w, b, e, saved.view(), act);
  }
  return saved.result(call.result());
}

// eps=None: the input dtype's machine epsilon (PyTorch's rule).
double default_rms_eps(DType dt) {
  switch (dt) {
    case DType::f16:
      return 0.0009765625;
    case DType::f32:
      return 1.1920928955078125e-07;
    case DType::f64:
      break;
  }
  return 2.220446049250313e-16;
}

py::object rms_norm_py(StatsOut stats, py::object input, py::object normalized_shape, py::object weight,
                       py::object eps, py::object out) {
  const bool eps_given = !eps.is_none();
  const double e_given = eps_given ? as_real(eps, "eps") : 0.0;
  RowsCall call = prepare_rows(input, normalized_shape, out);
  check_disjoint(out, "out", weight, "weight");
  const double e = eps_given ? e_given : default_rms_eps(call.dtype);
  std::vector<py::array> keep;
  const ParamRef w = as_shaped_param(weight, "weight", call.norm_shape, keep);
  Saved saved(stats, call.lead_shape(), /*with_mean=*/false);
  {
    NoGil nogil(call.x.size());
    normcpp::rms_norm(call.x.data(), call.y.mutable_data(), call.dtype, call.rows, call.row_len,
                      w, e, saved.view());
  }
  return saved.result(call.result());
}

// Binds fn(stats, args...) as a Python function of args with stats fixed: a plain
// CPython vectorcall function (METH_FASTCALL | METH_KEYWORDS) rather than a pybind11 one.
// pybind11's dispatcher (overload records, argument loaders, a function_call per call) costs
// ~1.9k instructions; these functions sit on the path of every tiny call (F.batch_norm on
// (1,16,8,8) is ~13k in all). Every argument is required, by position or by name; errors
// raised inside are translated as pybind11 does.
template <auto Fn, StatsOut Stats, class Sig>
struct Bind;
template <auto Fn, StatsOut Stats, class... Args>
struct Bind<Fn, Stats, py::object (*)(StatsOut, Args...)> {
  static constexpr std::size_t kN = sizeof...(Args);
  static inline const char* names[kN] = {};
  static inline const char* qualname = nullptr;  // the function's name (lives for the process)

  // args[0..nargs) by position, then kwnames' values; slots left empty are reported missing.
  static bool parse(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                    PyObject** slot) {
    if (nargs > static_cast<Py_ssize_t>(kN)) {
      PyErr_Format(PyExc_TypeError, "%s() takes %zu positional arguments but %zd were given",
                   qualname, kN, nargs);
      return false;
    }
    for (std::size_t i = 0; i < kN; ++i)
      slot[i] = i < static_cast<std::size_t>(nargs) ? args[i] : nullptr;
    const Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nk; ++k) {
      PyObject* key = PyTuple_GET_ITEM(kwnames, k);
      std::size_t i = 0;
      while (i < kN && PyUnicode_CompareWithASCIIString(key, names[i]) != 0) ++i;
      if (i == kN) {
        PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                     qualname, key);
        return false;
      }
      if (slot[i]) {
        PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                     qualname, names[i]);
        return false;
      }
      slot[i] = args[nargs + k];
    }
    for (std::size_t i = 0; i < kN; ++i)
      if (!slot[i]) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s' (pos %zu)",
                     qualname, names[i], i + 1);
        return false;
      }
    return true;
  }

  template <std::size_t... I>
  static py::object invoke(PyObject** slot, std::index_sequence<I...>) {
    return Fn(Stats, py::reinterpret_borrow<py::object>(slot[I])...);
  }

  static PyObject* call(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    PyObject* slot[kN];
    if (!parse(args, PyVectorcall_NARGS(nargs), kwnames, slot)) return nullptr;
    try {
      return invoke(slot, std::make_index_sequence<kN>{}).release().ptr();
#ifdef __GLIBCXX__
    } catch (abi::__forced_unwind&) {  // thread cancellation unwinds on (as in pybind11)
      throw;
#endif
    } catch (...) {
      py::detail::try_translate_exceptions();
      return nullptr;
    }
  }

  static void def(py::module_& m, const char* name, std::initializer_list<const char*> arg_names,
                  const char* doc) {
    if (arg_names.size() != kN) throw std::logic_error("argument names do not match");
    std::size_t i = 0;
    for (const char* a : arg_names) names[i++] = a;
    qualname = name;
    static PyMethodDef def_{nullptr, nullptr, 0, nullptr};  // one per instantiation, kept alive
    def_ = {qualname, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&call)),
            METH_FASTCALL | METH_KEYWORDS, doc};
    PyObject* f = PyCFunction_NewEx(&def_, nullptr, m.attr("__name__").ptr());
    if (!f) throw py::error_already_set();
    m.attr(name) = py::reinterpret_steal<py::object>(f);
  }
};

// `name` returns the output; `forward` (name + "_forward") also returns the statistics
// backward needs; `packed` (the modules' "_" + name + "_forward_packed") returns them in one
// array. All names are string literals: the function objects point at them for the life of
// the process.
template <auto Fn>
void def_forward(py::module_& m, const char* name, const char* forward, const char* packed,
                 std::initializer_list<const char*> args) {
  const char* doc = "See normcpp.functional (all arguments required).";
  Bind<Fn, StatsOut::none, decltype(Fn)>::def(m, name, args, doc);
  Bind<Fn, StatsOut::separate, decltype(Fn)>::def(m, forward, args, doc);
  Bind<Fn, StatsOut::packed, decltype(Fn)>::def(
      m, packed, args,
      "As the *_forward function, returning (y, stats): stats[0] the mean (absent for "
      "rms_norm), stats[-1] the invstd (internal: the modules' training step).");
}

}  // namespace

void register_functional(py::module_& m) {
  def_forward<&batch_norm_py>(m, "batch_norm", "batch_norm_forward", "_batch_norm_forward_packed",
                              {"input", "running_mean", "running_var", "weight", "bias",
                               "training", "momentum", "eps", "out", "nonfinite", "activation"});
  def_forward<&instance_norm_py>(m, "instance_norm", "instance_norm_forward",
                                 "_instance_norm_forward_packed",
                                 {"input", "running_mean", "running_var", "weight", "bias",
                                  "use_input_stats", "momentum", "eps", "out", "nonfinite"});
  def_forward<&group_norm_py>(m, "group_norm", "group_norm_forward", "_group_norm_forward_packed",
                              {"input", "num_groups", "weight", "bias", "eps", "out",
                               "activation"});
  def_forward<&layer_norm_py>(m, "layer_norm", "layer_norm_forward", "_layer_norm_forward_packed",
                              {"input", "normalized_shape", "weight", "bias", "eps", "out",
                               "activation"});
  def_forward<&rms_norm_py>(m, "rms_norm", "rms_norm_forward", "_rms_norm_forward_packed",
                            {"input", "normalized_shape", "weight", "eps", "out"});
}

}  // namespace bindings
}  // namespace normcpp
