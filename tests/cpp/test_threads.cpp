// Thread-count invariance: every op on inputs large enough to be split across threads and into
// chunks gives bitwise identical outputs (tensors, saved and running statistics, gradients)
// with set_num_threads(1), (2) and (3), and with streaming stores for every output.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "harness.hpp"
#include "normcpp/normcpp.hpp"
#include "ops/parallel.hpp"
#include "suites.hpp"

#if defined(__linux__)
#include <sched.h>

#include <thread>
#endif

namespace nt {
namespace {

struct Blob {
  std::string name;
  std::vector<unsigned char> bytes;
};
using Outputs = std::vector<Blob>;

void add(Outputs& o, const std::string& name, const Buf& b) { o.push_back({name, b.bytes()}); }

void add(Outputs& o, const std::string& name, const std::vector<double>& v) {
  std::vector<unsigned char> bytes(v.size() * sizeof(double));
  if (!v.empty()) std::memcpy(bytes.data(), v.data(), bytes.size());
  o.push_back({name, bytes});
}

Buf random_buf(DType dt, i64 n, std::uint64_t seed, double off) {
  Rng rng(seed);
  Buf b(dt, n);
  for (i64 i = 0; i < n; ++i) b.set(i, off + rng.normal());
  return b;
}

Param random_param(i64 n, std::uint64_t seed, double lo, double hi) {
  Rng rng(seed);
  Param p(DType::f32, n, 1);
  for (i64 i = 0; i < n; ++i) p.set(i, lo + (hi - lo) * rng.uniform());
  return p;
}

std::vector<double> vec(i64 n) { return std::vector<double>(static_cast<std::size_t>(n), 0.0); }

// All NCS ops on one (dtype, layout, shape); every output collected.
Outputs run_ncs(DType dt, Layout lay, i64 N, i64 C, i64 S, i64 G) {
  Outputs o;
  const i64 total = N * C * S;
  const Buf x = random_buf(dt, total, 11, 2.0), dy = random_buf(dt, total, 12, 0.1);
  const Param W = random_param(C, 13, -1.5, 1.5), B = random_param(C, 14, -1.0, 1.0);
  Buf y(dt, total);
  const normcpp::NCSRef t{x.data(), y.data(), dt, N, C, S, lay};
  Buf dx(dt, total);
  const normcpp::NCSGradRef g{x.data(), dy.data(), dx.data(), dt, N, C, S, lay};
  {  // batch norm, training, running stats, saved stats; then its backward
    Param RM = random_param(C, 15, 0.0, 1.0), RV = random_param(C, 16, 0.5, 1.5);
    std::vector<double> m = vec(C), r = vec(C), gw = vec(C), gb = vec(C);
    normcpp::batch_norm(t, {RM.mref(), RV.mref(), 0.1}, W.ref(), B.ref(), true, 1e-5,
                        {m.data(), r.data()});
    add(o, "batch_norm train y", y);
    add(o, "batch_norm running_mean", RM.buf());
    add(o, "batch_norm running_var", RV.buf());
    add(o, "batch_norm saved mean", m);
    add(o, "batch_norm saved invstd", r);
    normcpp::batch_norm_backward(g, W.ref(), m.data(), r.data(), true, gw.data(), gb.data());
    add(o, "batch_norm_backward dx", dx);
    add(o, "batch_norm_backward grad_weight", gw);
    add(o, "batch_norm_backward grad_bias", gb);
    std::vector<double> sdy = vec(C), sdx = vec(C);
    normcpp::batch_norm_backward_reduce(g, m.data(), r.data(), sdy.data(), sdx.data());
    add(o, "batch_norm_backward_reduce sum_dy", sdy);
    add(o, "batch_norm_backward_reduce sum_dy_xhat", sdx);
    normcpp::batch_norm_backward_elemt(g, W.ref(), m.data(), r.data(), sdy.data(), sdx.data(),
                                       static_cast<double>(N * S));
    add(o, "batch_norm_backward_elemt dx", dx);
    normcpp::batch_norm(t, {RM.mref(), RV.mref(), 0.1}, W.ref(), B.ref(), false, 1e-5);
    add(o, "batch_norm eval y", y);
    normcpp::batch_norm_backward(g, W.ref(), m.data(), r.data(), false, gw.data(), gb.data());
    add(o, "batch_norm_backward(eval) dx", dx);
    add(o, "batch_norm_backward(eval) grad_weight", gw);
  }
  {
    std::vector<double> cnt = vec(C), mean = vec(C), m2 = vec(C);
    normcpp::batch_norm_stats(t, cnt.data(), mean.data(), m2.data());
    add(o, "batch_norm_stats mean", mean);
    add(o, "batch_norm_stats m2", m2);
  }
  {  // instance norm with running stats, and its backward
    Param RM = random_param(C, 17, 0.0, 1.0), RV = random_param(C, 18, 0.5, 1.5);
    std::vector<double> m = vec(N * C), r = vec(N * C), gw = vec(C), gb = vec(C);
    normcpp::instance_norm(t, {RM.mref(), RV.mref(), 0.1}, W.ref(), B.ref(), true, 1e-5,
                           {m.data(), r.data()});
    add(o, "instance_norm y", y);
    add(o, "instance_norm running_mean", RM.buf());
    add(o, "instance_norm running_var", RV.buf());
    add(o, "instance_norm saved mean", m);
    add(o, "instance_norm saved invstd", r);
    normcpp::instance_norm_backward(g, W.ref(), m.data(), r.data(), gw.data(), gb.data());
    add(o, "instance_norm_backward dx", dx);
    add(o, "instance_norm_backward grad_weight", gw);
    add(o, "instance_norm_backward grad_bias", gb);
  }
  for (i64 groups : {i64{1}, G}) {
    const std::string gs = "(G=" + std::to_string(groups) + ")";
    std::vector<double> m = vec(N * groups), r = vec(N * groups), gw = vec(C), gb = vec(C);
    normcpp::group_norm(t, groups, W.ref(), B.ref(), 1e-5, {m.data(), r.data()});
    add(o, "group_norm" + gs + " y", y);
    add(o, "group_norm" + gs + " saved mean", m);
    add(o, "group_norm" + gs + " saved invstd", r);
    normcpp::group_norm_backward(g, groups, W.ref(), m.data(), r.data(), gw.data(), gb.data());
    add(o, "group_norm_backward" + gs + " dx", dx);
    add(o, "group_norm_backward" + gs + " grad_weight", gw);
    add(o, "group_norm_backward" + gs + " grad_bias", gb);
  }
  return o;
}

Outputs run_rows(DType dt, i64 R, i64 L) {
  Outputs o;
  const Buf x = random_buf(dt, R * L, 21, -0.5), dy = random_buf(dt, R * L, 22, 0.0);
  const Param W = random_param(L, 23, -1.5, 1.5), B = random_param(L, 24, -1.0, 1.0);
  Buf y(dt, R * L), dx(dt, R * L);
  std::vector<double> m = vec(R), r = vec(R), gw = vec(L), gb = vec(L);
  normcpp::layer_norm(x.data(), y.data(), dt, R, L, W.ref(), B.ref(), 1e-5, {m.data(), r.data()});
  add(o, "layer_norm y", y);
  add(o, "layer_norm saved mean", m);
  add(o, "layer_norm saved invstd", r);
  normcpp::layer_norm_backward(x.data(), dy.data(), dx.data(), dt, R, L, W.ref(), m.data(),
                               r.data(), gw.data(), gb.data());
  add(o, "layer_norm_backward dx", dx);
  add(o, "layer_norm_backward grad_weight", gw);
  add(o, "layer_norm_backward grad_bias", gb);
  normcpp::rms_norm(x.data(), y.data(), dt, R, L, W.ref(), 1e-5, {m.data(), r.data()});
  add(o, "rms_norm y", y);
  add(o, "rms_norm saved invrms", r);
  normcpp::rms_norm_backward(x.data(), dy.data(), dx.data(), dt, R, L, W.ref(), r.data(),
                             gw.data());
  add(o, "rms_norm_backward dx", dx);
  add(o, "rms_norm_backward grad_weight", gw);
  return o;
}

void compare(const std::string& tag, int nt, const Outputs& ref, const Outputs& got) {
  if (!check(ref.size() == got.size(), tag + ": same outputs")) return;
  for (std::size_t i = 0; i < ref.size(); ++i)
    check(ref[i].bytes == got[i].bytes, tag + " " + ref[i].name + ": " + std::to_string(nt) +
                                            " threads differ from 1 thread (bitwise)");
}

struct NcsCfg {
  i64 N, C, S, G;
};
struct RowCfg {
  i64 R, L;
};

}  // namespace

// ops::leave_cpu (a worker moving off the CPU of the thread that opened a parallel region),
// in a thread of its own so that this one keeps its CPUs: it takes exactly the CPU the thread
// is on out of the thread's mask, and the thread then runs elsewhere; moved again, the CPU it
// left first is allowed again (the mask is the original one less the CPU just left). (The
// thread may migrate between reading its CPU and the call, which then changes nothing: a few
// tries.)
void check_leave_cpu() {
#if defined(__linux__)
  cpu_set_t before;
  if (sched_getaffinity(0, sizeof before, &before) != 0 || CPU_COUNT(&before) < 2) return;
  if (normcpp::ops::current_cpu() < 0) return;
  ++counts().cases;
  std::string err;
  std::thread t([&] {
    cpu_set_t prev = before;
    int left = -1;
    for (int step = 0; step < 2 && err.empty(); ++step) {
      err = "leave_cpu never took a CPU out of the mask (step " + std::to_string(step) + ")";
      for (int attempt = 0; attempt < 20; ++attempt) {
        const int now = sched_getcpu();
        normcpp::ops::leave_cpu(now);
        cpu_set_t m;
        sched_getaffinity(0, sizeof m, &m);
        if (CPU_EQUAL(&m, &prev)) continue;  // migrated before the call: nothing done
        const auto u = static_cast<std::size_t>(now);
        if (CPU_ISSET(u, &m) || CPU_COUNT(&m) != CPU_COUNT(&before) - 1)
          err = "leave_cpu(" + std::to_string(now) + ") did not take exactly that CPU out";
        else if (left >= 0 && !CPU_ISSET(static_cast<std::size_t>(left), &m))
          err = "CPU " + std::to_string(left) + " left earlier is still excluded";
        else if (sched_getcpu() == now)
          err = "still on CPU " + std::to_string(now) + " after leave_cpu";
        else
          err.clear();
        prev = m;
        left = now;
        break;
      }
    }
  });
  t.join();
  if (!err.empty()) report_failure("[threads leave_cpu] " + err);
#endif
}

void suite_threads(const std::string& isa) {
  // Slots of > 65536 elements (chunked) and many slots (split across threads), both layouts.
  std::vector<NcsCfg> ncs = {{2, 6, 70001, 3}, {1, 4, 120001, 2}, {40001, 3, 3, 3}};
  std::vector<RowCfg> rows = {{3, 120001}, {400, 1500}, {30000, 7}};
  if (quick()) {  // one chunked shape of each kind, smaller
    ncs = {{2, 3, 70001, 3}};
    rows = {{2, 120001}, {200, 1500}};
  }
  const int saved = normcpp::get_num_threads();
  for (DType dt : {DType::f32, DType::f64, DType::f16}) {
    for (const auto& c : ncs)
      for (Layout lay : {Layout::contiguous, Layout::channels_last}) {
        char tag[160];
        std::snprintf(tag, sizeof tag, "[%s %s %s N=%lld C=%lld S=%lld threads]", isa.c_str(),
                      dtype_name(dt), layout_name(lay), static_cast<long long>(c.N),
                      static_cast<long long>(c.C), static_cast<long long>(c.S));
        normcpp::set_num_threads(1);
        const Outputs one = run_ncs(dt, lay, c.N, c.C, c.S, c.G);
        for (int nt : {2, 3}) {
          ++counts().cases;
          normcpp::set_num_threads(nt);
          compare(tag, nt, one, run_ncs(dt, lay, c.N, c.C, c.S, c.G));
        }
        // Streaming stores for every output (threshold 0): bitwise the same values.
        ++counts().cases;
        normcpp::set_stream_threshold(0);
        compare(std::string(tag) + " streamed", 2, one, run_ncs(dt, lay, c.N, c.C, c.S, c.G));
        normcpp::set_stream_threshold(-1);
      }
    for (const auto& c : rows) {
      char tag[160];
      std::snprintf(tag, sizeof tag, "[%s %s rows=%lld L=%lld threads]", isa.c_str(),
                    dtype_name(dt), static_cast<long long>(c.R), static_cast<long long>(c.L));
      normcpp::set_num_threads(1);
      const Outputs one = run_rows(dt, c.R, c.L);
      for (int nt : {2, 3}) {
        ++counts().cases;
        normcpp::set_num_threads(nt);
        compare(tag, nt, one, run_rows(dt, c.R, c.L));
      }
      ++counts().cases;
      normcpp::set_stream_threshold(0);
      compare(std::string(tag) + " streamed", 2, one, run_rows(dt, c.R, c.L));
      normcpp::set_stream_threshold(-1);
    }
  }
  normcpp::set_num_threads(saved);
  check_leave_cpu();
}

}  // namespace nt
