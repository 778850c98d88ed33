// normcpp C++ tests. Usage:
//   normcpp_tests [--isa NAME|all] [--suite ops|threads|invalid|all] [--quick]
// --isa all (the default) runs the ISA-dependent suites once per level in supported_isas();
// --isa NAME runs them for that level only and exits 77 (ctest: skipped) when the level is
// compiled in but this CPU lacks it. One summary line per level and suite:
//   [normcpp-tests] isa=avx2 suite=ops: 9876 checks passed, 0 failed (1234 cases)
// --quick runs fewer large shapes (qemu, sanitizers).
// Exit status: 0 when every check passed, 1 otherwise, 2 for a usage error.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "harness.hpp"
#include "normcpp/normcpp.hpp"
#include "suites.hpp"

namespace {

constexpr int kSkip = 77;

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& e : v) s += (s.empty() ? "" : ",") + e;
  return s;
}

bool contains(const std::vector<std::string>& v, const std::string& x) {
  for (const auto& e : v)
    if (e == x) return true;
  return false;
}

// Runs one suite, prints its summary line, returns its number of failures.
template <class F>
long run_suite(const std::string& isa, const char* suite, F&& f) {
  const nt::Counts before = nt::counts();
  for (double& w : nt::counts().worst_ratio) w = 0.0;
  try {
    f();
  } catch (const std::exception& e) {
    nt::report_failure(std::string("suite ") + suite + " (isa " + isa +
                       ") aborted by an exception: " + e.what());
  }
  const nt::Counts& now = nt::counts();
  const long checks = now.checks - before.checks, failed = now.failures - before.failures;
  const long cases = now.cases - before.cases;
  std::printf("[normcpp-tests] isa=%s suite=%s: %ld checks passed, %ld failed (%ld cases)",
              isa.c_str(), suite, checks - failed, failed, cases);
  if (now.worst_ratio[0] + now.worst_ratio[1] + now.worst_ratio[2] > 0.0)
    std::printf("; worst error/tolerance f64 %.2f, f32 %.2f, f16 %.2f", now.worst_ratio[0],
                now.worst_ratio[1], now.worst_ratio[2]);
  std::printf("\n");
  std::fflush(stdout);
  return failed;
}

}  // namespace

int main(int argc, char** argv) {
  std::string isa_arg = "all", suite = "all";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--isa" && i + 1 < argc) {
      isa_arg = argv[++i];
    } else if (a == "--suite" && i + 1 < argc) {
      suite = argv[++i];
    } else if (a == "--quick") {
      nt::quick() = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--isa NAME|all] [--suite ops|threads|invalid|all] [--quick]\n",
                   argv[0]);
      return 2;
    }
  }
  if (suite != "all" && suite != "ops" && suite != "threads" && suite != "invalid") {
    std::fprintf(stderr, "unknown suite '%s'\n", suite.c_str());
    return 2;
  }
  const std::vector<std::string> compiled = normcpp::compiled_isas();
  const std::vector<std::string> supported = normcpp::supported_isas();
  std::printf(
      "normcpp %s: ISA levels compiled: %s; supported here: %s; default: %s; "
      "OpenMP: %s; threads: %d\n",
      normcpp::version(), join(compiled).c_str(), join(supported).c_str(),
      normcpp::selected_isa().c_str(), normcpp::has_openmp() ? "yes" : "no",
      normcpp::get_num_threads());

  std::vector<std::string> isas;
  if (isa_arg == "all") {
    isas = supported;
  } else if (!contains(compiled, isa_arg)) {
    std::printf("ISA level '%s' is not compiled into this binary (compiled: %s)\n", isa_arg.c_str(),
                join(compiled).c_str());
    return 1;
  } else if (!contains(supported, isa_arg)) {
    std::printf("SKIPPED: this CPU cannot run ISA level '%s' (supported: %s)\n", isa_arg.c_str(),
                join(supported).c_str());
    return kSkip;
  } else {
    isas = {isa_arg};
  }

  long failed = 0;
  const std::string default_isa = normcpp::selected_isa();
  for (const auto& isa : isas) {
    normcpp::select_isa(isa);
    if (normcpp::selected_isa() != isa) {
      nt::report_failure("select_isa(" + isa + ") did not select it");
      ++failed;
      continue;
    }
    if (suite == "all" || suite == "ops")
      failed += run_suite(isa, "ops", [&] { nt::suite_ops(isa); });
    if (suite == "all" || suite == "threads")
      failed += run_suite(isa, "threads", [&] { nt::suite_threads(isa); });
  }
  normcpp::select_isa(default_isa);
  if (suite == "all" || suite == "invalid")
    failed += run_suite(default_isa, "invalid", [] { nt::suite_invalid(); });

  const nt::Counts& c = nt::counts();
  const bool per_isa = suite != "invalid";
  std::printf("[normcpp-tests] total: %ld checks passed, %ld failed (%ld cases)%s%s\n",
              c.checks - c.failures, c.failures, c.cases, per_isa ? " over ISA levels " : "",
              per_isa ? join(isas).c_str() : "");
  return failed == 0 && c.failures == 0 ? 0 : 1;
}
