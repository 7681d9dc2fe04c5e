// edge-se native ExecuTorch runner: the same options (contract.measure.MeasureSpec.to_argv) and JSON
// (a flat edge-se/bench/2 record, contract/bench.schema.json) as `python -m device_bench.runner`,
// for machines where ExecuTorch's Python runtime cannot run (aarch64 boards, Android: it needs
// libtorch). Built against the runtime libraries and headers the executorch wheel ships; see
// device_bench/native_build.py for the flags. Statistics (latency_stats.h), input generation and
// the output checksum follow device_bench/stats.py and device_bench/manifest.py exactly; the SE-gate anomaly
// score (manifest gate_outputs.stats) follows device_bench/gate_score.py.
#include <sched.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#ifdef EDGE_SE_ETDUMP  // native_build.py defines it where the wheel ships libexecutorch_etdump.so
#include <executorch/devtools/etdump/etdump_flatcc.h>
#endif

#include "latency_stats.h"  // statistics: device_bench/stats.py
#include "mini_json.h"
#include "sha256.h"

// The wheel ships no threadpool.h; these two functions are exported by libexecutorch_threadpool.so.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

#ifndef EDGE_SE_ET_VERSION
#define EDGE_SE_ET_VERSION "unknown"
#endif

using executorch::aten::ScalarType;
using executorch::extension::module::Module;
using executorch::runtime::EValue;
using latency_stats::num;

namespace {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::string artifact, manifest, affinity, dump_outputs, etdump;
  std::string paired_with, paired_manifest;  // --paired-with B --paired-manifest MB: B timed in alternation
  std::vector<std::string> input_files;
  // contract/measure.py's defaults (every caller passes MeasureSpec.to_argv(), so every flag, explicitly).
  long warmup = 10, runs = 50, max_runs = 0, repeats = 3, threads = 1;
  double min_seconds = 1.0, cooldown = 1.0, unstable_pct = 5.0;
  bool count_only = false;
  unsigned long long seed = 0;
  long profile_runs = 20;  // --etdump: the Python runner's default (device_bench/runner.py)
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot read");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Args parse_args(int argc, char** argv) {
  Args a;
  auto need = [&](int& i) -> std::string {
    if (i + 1 >= argc) throw Error(std::string(argv[i]) + " needs a value");
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    try {
      if (k == "--manifest") a.manifest = need(i);
      else if (k == "--warmup") a.warmup = std::stol(need(i));
      else if (k == "--runs") a.runs = std::stol(need(i));
      else if (k == "--min-seconds") a.min_seconds = std::stod(need(i));
      else if (k == "--max-runs") a.max_runs = std::stol(need(i));
      else if (k == "--repeats") a.repeats = std::stol(need(i));
      else if (k == "--cooldown" || k == "--cooldown-s") a.cooldown = std::stod(need(i));
      else if (k == "--unstable-pct") a.unstable_pct = std::stod(need(i));
      else if (k == "--threads") a.threads = std::stol(need(i));
      else if (k == "--affinity") a.affinity = need(i);
      else if (k == "--seed") a.seed = std::stoull(need(i));
      else if (k == "--input-file") a.input_files.push_back(need(i));
      else if (k == "--dump-outputs") a.dump_outputs = need(i);
      else if (k == "--etdump") a.etdump = need(i);
      else if (k == "--profile-runs") a.profile_runs = std::stol(need(i));
      else if (k == "--count-only") a.count_only = true;
      else if (k == "--paired-with") a.paired_with = need(i);
      else if (k == "--paired-manifest") a.paired_manifest = need(i);
      else if (!k.empty() && k[0] == '-') throw Error("unknown option " + k);
      else if (a.artifact.empty()) a.artifact = k;
      else throw Error("unexpected argument " + k);
    } catch (const std::invalid_argument&) {
      throw Error(k + ": not a number");
    }
  }
  if (a.artifact.empty() || a.manifest.empty()) throw Error("usage: et_runner ARTIFACT --manifest FILE [options]");
  if (a.runs < 1 || a.repeats < 1 || a.threads < 1) throw Error("--runs, --repeats and --threads must be >= 1");
  if (a.profile_runs < 1) throw Error("--profile-runs must be >= 1, got " + std::to_string(a.profile_runs));
#ifndef EDGE_SE_ETDUMP
  if (!a.etdump.empty()) throw Error("--etdump: this runner was built without libexecutorch_etdump");
#endif
  if (a.paired_with.empty() != a.paired_manifest.empty())
    throw Error("--paired-with and --paired-manifest go together");
  if (!a.paired_with.empty() && (a.count_only || !a.etdump.empty()))
    throw Error("--paired-with times two artifacts; it takes neither --count-only nor --etdump");
  if (a.warmup < 0 || a.max_runs < 0 || a.min_seconds < 0 || a.cooldown < 0 || a.unstable_pct < 0)
    throw Error("negative option value");
  return a;
}

// --- inputs (device_bench/manifest.py: make_input) ---
struct InputSpec {
  std::vector<int32_t> shape;
  std::string dtype;
  bool quantized = false;
  double scale = 0, lo = -1.0, hi = 1.0;
  long zero_point = 0;
  size_t numel() const {
    size_t n = 1;
    for (auto d : shape) n *= static_cast<size_t>(d);
    return n;
  }
};

ScalarType scalar_type(const std::string& dtype) {
  if (dtype == "float32") return ScalarType::Float;
  if (dtype == "int8") return ScalarType::Char;
  if (dtype == "uint8") return ScalarType::Byte;
  if (dtype == "int32") return ScalarType::Int;
  if (dtype == "int64") return ScalarType::Long;
  throw Error("dtype " + dtype + " not supported; valid: float32, int8, uint8, int32, int64");
}

size_t itemsize(ScalarType t) {
  switch (t) {
    case ScalarType::Char: case ScalarType::Byte: case ScalarType::Bool: return 1;
    case ScalarType::Half: case ScalarType::BFloat16: return 2;
    case ScalarType::Long: case ScalarType::Double: return 8;
    default: return 4;
  }
}

std::string numpy_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "float32";
    case ScalarType::Char: return "int8";
    case ScalarType::Byte: return "uint8";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    case ScalarType::Half: return "float16";
    case ScalarType::Double: return "float64";
    case ScalarType::Bool: return "bool";
    default: return "other";
  }
}

std::vector<uint8_t> make_input(const InputSpec& s, uint64_t seed) {
  ScalarType t = scalar_type(s.dtype);
  size_t n = s.numel();
  std::vector<uint8_t> out(n * itemsize(t));
  double lo = s.lo, hi = s.hi;
  long qmin = t == ScalarType::Char ? -128 : 0, qmax = t == ScalarType::Char ? 127 : 255;
  if (s.quantized) {
    lo = (qmin - s.zero_point) * s.scale;
    hi = (qmax - s.zero_point) * s.scale;
  } else if (t != ScalarType::Float) {
    throw Error("input of dtype " + s.dtype + " needs scale/zero_point or --input-file");
  }
  for (size_t i = 0; i < n; ++i) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (i + 1);  // SplitMix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    double u = static_cast<double>(z >> 40) / 16777216.0;
    float x = static_cast<float>(lo + (hi - lo) * u);
    if (!s.quantized) {
      reinterpret_cast<float*>(out.data())[i] = x;
    } else {
      double q = std::nearbyint(static_cast<double>(x) / s.scale) + s.zero_point;
      q = std::min<double>(std::max<double>(q, qmin), qmax);
      if (t == ScalarType::Char) reinterpret_cast<int8_t*>(out.data())[i] = static_cast<int8_t>(q);
      else out[i] = static_cast<uint8_t>(q);
    }
  }
  return out;
}

// --- SE-gate anomaly score (device_bench/gate_score.py; device_bench/runner.py: gate_score_record) ---
// Where a block's gate lies: values offset..offset+channels of output output_index, flattened per image.
struct GateSlot {
  std::string name;
  size_t channels = 0, output_index = 0, offset = 0;
};

// One block's fit (method ppca-mahalanobis): components is [channels, k] row-major.
struct GateStats {
  std::string name;
  size_t channels = 0, k = 0;
  std::vector<double> mean, components, eigenvalues;
  double residual_variance = 0, norm_mean = 0, norm_std = 1;
};

struct Gate {
  std::vector<GateSlot> slots;
  std::vector<GateStats> blocks;  // stats order: the score's summation order
  std::string method;
  std::string combine;  // max-z: the largest block z-score; sum-z: their sum
  double threshold = 0;
};

// An output's quantisation (manifest outputs[i].scale / zero_point): integer outputs with a scale are dequantised.
struct OutputQuant {
  bool has_scale = false;
  double scale = 0;
  double zero_point = 0;
};

double json_number(const mini_json::Value& v, const std::string& where) {
  if (v.kind != mini_json::Value::Kind::Number) throw Error(where + ": expected a number");
  return v.num;
}

size_t json_count(const mini_json::Value& v, const std::string& where, size_t min) {
  double x = json_number(v, where);
  if (x != std::floor(x) || x < static_cast<double>(min))
    throw Error(where + ": expected an integer >= " + std::to_string(min));
  return static_cast<size_t>(x);
}

// Numbers of a list, nested lists flattened in order (numpy's reshape of the stats' lists).
void json_numbers(const mini_json::Value& v, const std::string& where, std::vector<double>* out) {
  if (v.kind == mini_json::Value::Kind::Array) {
    for (size_t i = 0; i < v.arr.size(); ++i) json_numbers(v.arr[i], where, out);
    return;
  }
  out->push_back(json_number(v, where));
}

std::string py_quote(const std::string& s) { return "'" + s + "'"; }

// The manifest's gate_outputs: nullopt without stats (no gate_score), else slots and stats checked
// against each other (device_bench/gate_score.py: check_stats, block_distance's shapes).
std::optional<Gate> read_gate(const mini_json::Value& doc, const std::string& manifest) {
  if (!doc.has("gate_outputs") || doc.obj.at("gate_outputs").is_null()) return std::nullopt;
  const auto& go = doc.obj.at("gate_outputs");
  const std::string where = manifest + ": gate_outputs";
  if (go.kind != mini_json::Value::Kind::Object) throw Error(where + ": must be an object");
  const auto& st = go.at("stats", where);
  if (st.is_null()) return std::nullopt;
  Gate gate;
  const auto& slots = go.at("blocks", where);
  if (slots.kind != mini_json::Value::Kind::Array || slots.arr.empty())
    throw Error(where + ": blocks must be a non-empty list");
  for (size_t i = 0; i < slots.arr.size(); ++i) {
    const std::string w = where + ".blocks[" + std::to_string(i) + "]";
    const auto& s = slots.arr[i];
    GateSlot slot;
    slot.name = s.at("name", w).str;
    slot.channels = json_count(s.at("channels", w), w + ".channels", 1);
    slot.output_index = json_count(s.at("output_index", w), w + ".output_index", 1);
    if (s.has("offset") && !s.obj.at("offset").is_null())
      slot.offset = json_count(s.obj.at("offset"), w + ".offset", 0);  // absent in older manifests: 0
    gate.slots.push_back(slot);
  }
  const std::string ws = where + ".stats";
  if (st.kind != mini_json::Value::Kind::Object) throw Error(ws + ": must be a JSON object");
  std::string schema = st.has("schema") ? st.obj.at("schema").str : "";
  if (schema != "edge-se/gate-stats/1")
    throw Error(ws + ": schema is '" + schema + "'; expected 'edge-se/gate-stats/1'");
  for (const char* key : {"method", "blocks", "combine", "threshold"}) st.at(key, ws);
  gate.method = st.obj.at("method").str;
  if (gate.method != "ppca-mahalanobis")
    throw Error(ws + ": unknown gate-stats method '" + gate.method + "'; valid: ppca-mahalanobis");
  gate.combine = st.obj.at("combine").str;
  if (gate.combine != "max-z" && gate.combine != "sum-z")
    throw Error(ws + ": unknown gate-stats combine '" + gate.combine + "'; valid: max-z, sum-z");
  gate.threshold = json_number(st.obj.at("threshold"), ws + ".threshold");
  const auto& blocks = st.obj.at("blocks");
  if (blocks.kind != mini_json::Value::Kind::Array || blocks.arr.empty())
    throw Error(ws + ": gate stats have no blocks");
  for (size_t i = 0; i < blocks.arr.size(); ++i) {
    const auto& b = blocks.arr[i];
    const std::string w = ws + ".blocks[" + std::to_string(i) + "]";
    if (b.kind != mini_json::Value::Kind::Object) throw Error(w + ": not an object");
    GateStats g;
    g.name = b.at("name", w).str;
    g.channels = json_count(b.at("channels", w), w + ".channels", 1);
    json_numbers(b.at("mean", w), w + ".mean", &g.mean);
    json_numbers(b.at("components", w), w + ".components", &g.components);
    json_numbers(b.at("eigenvalues", w), w + ".eigenvalues", &g.eigenvalues);
    g.residual_variance = json_number(b.at("residual_variance", w), w + ".residual_variance");
    g.norm_mean = json_number(b.at("norm_mean", w), w + ".norm_mean");
    g.norm_std = json_number(b.at("norm_std", w), w + ".norm_std");
    g.k = g.eigenvalues.size();
    if (g.mean.size() != g.channels || g.components.size() != g.channels * g.k)
      throw Error(w + " (" + py_quote(g.name) + "): mean has " + std::to_string(g.mean.size()) +
                  " values and components " + std::to_string(g.components.size()) + "; " +
                  std::to_string(g.channels) + " channels and " + std::to_string(g.k) + " eigenvalues need " +
                  std::to_string(g.channels) + " and " + std::to_string(g.channels * g.k));
    const GateSlot* slot = nullptr;  // the last slot of that name, as a dict of slots keeps it
    for (const auto& s : gate.slots)
      if (s.name == g.name) slot = &s;
    if (!slot) throw Error(where + ": no output for SE block " + py_quote(g.name));
    if (slot->channels != g.channels)
      throw Error(where + ": block " + py_quote(g.name) + ": gates have " + std::to_string(slot->channels) +
                  " channels, the stats were fitted for " + std::to_string(g.channels));
    gate.blocks.push_back(std::move(g));
  }
  return gate;
}

std::vector<InputSpec> read_manifest(const std::string& manifest, std::string* sha, std::optional<Gate>* gate,
                                     std::vector<OutputQuant>* quant) {
  const std::string where = manifest;
  mini_json::Value doc;
  try {
    doc = mini_json::parse(read_file(manifest));
  } catch (const std::runtime_error& e) {
    throw Error(where + ": " + e.what());
  }
  if (doc.at("schema", where).str != "edge-se/manifest/1") throw Error(where + ": schema not edge-se/manifest/1");
  if (doc.at("format", where).str != "pte") throw Error(where + ": format " + doc.at("format", where).str + " needs the Python runner");
  *sha = doc.at("sha256", where).str;
  std::vector<InputSpec> specs;
  const auto& ins = doc.at("inputs", where);
  for (size_t i = 0; i < ins.arr.size(); ++i) {
    const std::string w = where + ": inputs[" + std::to_string(i) + "]";
    InputSpec s;
    for (const auto& d : ins.arr[i].at("shape", w).arr) s.shape.push_back(static_cast<int32_t>(d.num));
    s.dtype = ins.arr[i].at("dtype", w).str;
    scalar_type(s.dtype);
    if (ins.arr[i].has("scale") && !ins.arr[i].obj.at("scale").is_null()) {
      s.quantized = true;
      s.scale = ins.arr[i].obj.at("scale").num;
      if (ins.arr[i].has("zero_point") && !ins.arr[i].obj.at("zero_point").is_null())
        s.zero_point = static_cast<long>(ins.arr[i].obj.at("zero_point").num);
    }
    if (ins.arr[i].has("range") && ins.arr[i].obj.at("range").arr.size() == 2) {
      s.lo = ins.arr[i].obj.at("range").arr[0].num;
      s.hi = ins.arr[i].obj.at("range").arr[1].num;
    }
    specs.push_back(s);
  }
  if (specs.empty()) throw Error(where + ": inputs must be a non-empty list");
  if (doc.has("outputs")) {
    for (const auto& o : doc.obj.at("outputs").arr) {
      OutputQuant q;
      if (o.has("scale") && !o.obj.at("scale").is_null()) {
        q.has_scale = true;
        q.scale = o.obj.at("scale").num;
        if (o.has("zero_point") && !o.obj.at("zero_point").is_null()) q.zero_point = o.obj.at("zero_point").num;
      }
      quant->push_back(q);
    }
  }
  *gate = read_gate(doc, where);
  return specs;
}

// --- system ---
// Bytes of the last-level data or unified cache CPU 0 sees, from sysfs cacheinfo; 0 where it cannot
// be read (device_bench/sysinfo.py: llc_bytes).
long long llc_bytes() {
  long long best_level = 0, best_size = 0;
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream fl(dir + "level"), ft(dir + "type"), fs(dir + "size");
    std::string level, type, size;
    if (!(fl >> level) || !(ft >> type) || !(fs >> size) || size.empty()) continue;
    if (type != "Data" && type != "Unified") continue;
    long long mult = 1;
    const char unit = size.back();
    if (unit == 'K' || unit == 'k') mult = 1024;
    else if (unit == 'M' || unit == 'm') mult = 1024LL * 1024;
    else if (unit == 'G' || unit == 'g') mult = 1024LL * 1024 * 1024;
    if (mult != 1) size.pop_back();
    char* end = nullptr;
    const long long lv = std::strtoll(level.c_str(), &end, 10);
    if (*end != '\0') continue;
    const long long n = std::strtoll(size.c_str(), &end, 10);
    if (*end != '\0') continue;
    if (std::make_pair(lv, n * mult) > std::make_pair(best_level, best_size)) {
      best_level = lv;
      best_size = n * mult;
    }
  }
  return best_size;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, name, imp, part;
  while (std::getline(f, line)) {
    auto c = line.find(':');
    if (c == std::string::npos) continue;
    std::string k = line.substr(0, c), v = line.substr(c + 1);
    k.erase(k.find_last_not_of(" \t") + 1);
    v.erase(0, v.find_first_not_of(" \t"));
    if (k == "model name" && name.empty()) name = v;
    if (k == "CPU implementer" && imp.empty()) imp = v;
    if (k == "CPU part" && part.empty()) part = v;
  }
  if (name.empty() && !part.empty()) {
    static const std::pair<long, const char*> parts[] = {
        {0xd03, "Cortex-A53"}, {0xd04, "Cortex-A35"}, {0xd05, "Cortex-A55"}, {0xd07, "Cortex-A57"},
        {0xd08, "Cortex-A72"}, {0xd09, "Cortex-A73"}, {0xd0a, "Cortex-A75"}, {0xd0b, "Cortex-A76"},
        {0xd0c, "Neoverse-N1"}, {0xd0d, "Cortex-A77"}, {0xd40, "Neoverse-V1"}, {0xd41, "Cortex-A78"},
        {0xd44, "Cortex-X1"}, {0xd46, "Cortex-A510"}, {0xd47, "Cortex-A710"}, {0xd48, "Cortex-X2"},
        {0xd49, "Neoverse-N2"}, {0xd4f, "Neoverse-V2"}};
    long p = std::strtol(part.c_str(), nullptr, 16);
    name = imp == "0x41" ? "part " + part : "implementer " + imp + " part " + part;
    if (imp == "0x41")
      for (const auto& kv : parts)
        if (kv.first == p) name = kv.second;
  }
  if (name.empty()) name = "unknown";
  std::ifstream dt("/proc/device-tree/model");
  std::string model;
  if (dt && std::getline(dt, model, '\0') && !model.empty()) name += " (" + model + ")";
  return name;
}

struct OutputSummary {
  std::string checksum, shapes;
  double abs_sum = 0, nonzero_fraction = 0;
  std::vector<uint8_t> bytes;
};

OutputSummary summarize_outputs(const std::vector<EValue>& outs) {
  OutputSummary r;
  sha256::Hasher h;
  size_t total = 0, nonzero = 0;
  r.shapes = "[";
  for (size_t i = 0; i < outs.size(); ++i) {
    if (!outs[i].isTensor()) throw Error("output " + std::to_string(i) + " is not a tensor");
    const auto& t = outs[i].toTensor();
    const auto* p = static_cast<const uint8_t*>(t.const_data_ptr());
    h.update(p, t.nbytes());
    r.bytes.insert(r.bytes.end(), p, p + t.nbytes());
    std::string shape = "[";
    for (ssize_t d = 0; d < t.dim(); ++d) shape += (d ? ", " : "") + std::to_string(t.size(d));
    r.shapes += std::string(i ? ", " : "") + "{\"shape\": " + shape + "], \"dtype\": \"" +
                numpy_name(t.scalar_type()) + "\"}";
    for (ssize_t k = 0; k < t.numel(); ++k) {
      double v = 0;
      switch (t.scalar_type()) {
        case ScalarType::Float: v = t.const_data_ptr<float>()[k]; break;
        case ScalarType::Char: v = t.const_data_ptr<int8_t>()[k]; break;
        case ScalarType::Byte: v = t.const_data_ptr<uint8_t>()[k]; break;
        case ScalarType::Int: v = t.const_data_ptr<int32_t>()[k]; break;
        case ScalarType::Long: v = static_cast<double>(t.const_data_ptr<int64_t>()[k]); break;
        default: v = 1;  // other dtypes: counted as non-zero, not summed
      }
      r.abs_sum += std::fabs(v);
      nonzero += v != 0;
    }
    total += static_cast<size_t>(t.numel());
  }
  r.shapes += "]";
  r.checksum = "sha256:" + h.hexdigest();
  r.nonzero_fraction = total ? static_cast<double>(nonzero) / static_cast<double>(total) : 0.0;
  return r;
}

// One inference's gate score (device_bench/runner.py: gate_score_record), in double: gates read by the
// slots from image 0 of each output (flattened per image), integer outputs with a scale dequantised as
// (q - zero_point) * scale; per stats block r = g - mean, p = V^T r,
// d = sqrt(sum_j p_j^2 / lam_j + max(|r|^2 - |p|^2, 0) / residual_variance [k < C]);
// z_b = (d_b - norm_mean_b) / norm_std_b; score = max_b z_b (max-z) or sum_b z_b (sum-z). Returns the
// record's gate_score object.
std::string gate_score_json(const std::vector<EValue>& outs, const Gate& gate, const std::vector<OutputQuant>& quant,
                            const std::string& manifest) {
  const std::string where = manifest + ": gate_outputs";
  std::map<std::string, std::vector<double>> by_name;
  for (const auto& s : gate.slots) {
    if (s.output_index >= outs.size())
      throw Error(where + ": no output " + std::to_string(s.output_index) + " for SE block " + py_quote(s.name) +
                  " (the artifact has " + std::to_string(outs.size()) + " outputs)");
    if (!outs[s.output_index].isTensor())
      throw Error(where + ": output " + std::to_string(s.output_index) + " is not a tensor");
    const auto& t = outs[s.output_index].toTensor();
    size_t numel = static_cast<size_t>(t.numel());
    size_t row = t.dim() > 0 && t.size(0) > 0 ? numel / static_cast<size_t>(t.size(0)) : numel;
    if (s.offset + s.channels > row)
      throw Error(where + ": SE block " + py_quote(s.name) + ": channels " + std::to_string(s.offset) + ".." +
                  std::to_string(s.offset + s.channels) + " lie outside output " + std::to_string(s.output_index) +
                  " (" + std::to_string(row) + " values)");
    const OutputQuant q = s.output_index < quant.size() ? quant[s.output_index] : OutputQuant{};
    std::vector<double> g(s.channels);
    for (size_t c = 0; c < s.channels; ++c) {
      size_t k = s.offset + c;
      double v = 0;
      bool integer = true;
      switch (t.scalar_type()) {
        case ScalarType::Float: v = t.const_data_ptr<float>()[k]; integer = false; break;
        case ScalarType::Double: v = t.const_data_ptr<double>()[k]; integer = false; break;
        case ScalarType::Char: v = t.const_data_ptr<int8_t>()[k]; break;
        case ScalarType::Byte: v = t.const_data_ptr<uint8_t>()[k]; break;
        case ScalarType::Int: v = t.const_data_ptr<int32_t>()[k]; break;
        case ScalarType::Long: v = static_cast<double>(t.const_data_ptr<int64_t>()[k]); break;
        default:
          throw Error(where + ": SE block " + py_quote(s.name) + ": output " + std::to_string(s.output_index) +
                      " has dtype " + numpy_name(t.scalar_type()) + "; gates are read from float or integer outputs");
      }
      g[c] = integer && q.has_scale ? (v - q.zero_point) * q.scale : v;
    }
    by_name[s.name] = std::move(g);
  }
  double value = 0;
  bool first_block = true;
  for (const auto& b : gate.blocks) {
    auto it = by_name.find(b.name);
    if (it == by_name.end()) throw Error(where + ": no output for SE block " + py_quote(b.name));
    const std::vector<double>& g = it->second;
    if (g.size() != b.channels)
      throw Error(where + ": block " + py_quote(b.name) + ": gates have " + std::to_string(g.size()) +
                  " channels, the stats were fitted for " + std::to_string(b.channels));
    std::vector<double> r(b.channels);
    double rr = 0;
    for (size_t c = 0; c < b.channels; ++c) {
      r[c] = g[c] - b.mean[c];
      rr += r[c] * r[c];
    }
    double d2 = 0, pp = 0;
    for (size_t j = 0; j < b.k; ++j) {
      double p = 0;
      for (size_t c = 0; c < b.channels; ++c) p += r[c] * b.components[c * b.k + j];
      d2 += p * p / b.eigenvalues[j];
      pp += p * p;
    }
    if (b.k < b.channels) d2 += std::max(rr - pp, 0.0) / b.residual_variance;  // clip rounding below zero
    const double z = (std::sqrt(d2) - b.norm_mean) / b.norm_std;
    value = gate.combine == "max-z" ? (first_block ? z : std::max(value, z)) : value + z;
    first_block = false;
  }
  return "{\"value\": " + num(value) + ", \"threshold\": " + num(gate.threshold) + ", \"flagged\": " +
         (value > gate.threshold ? "true" : "false") + ", \"method\": " + mini_json::quote(gate.method) +
         ", \"blocks\": " + std::to_string(gate.blocks.size()) + "}";
}

#ifdef EDGE_SE_ETDUMP
// ETDump of max(--warmup, 2) + --profile-runs inferences of a second Module carrying an ETDumpGen:
// Method::execute, DELEGATE_CALL and XNNPACK's per-operator times (device_bench/op_profile.py reads
// it on the host; the first runs are dropped there). Returns the record's "op_profile" object.
std::string write_etdump(const Args& a, const std::vector<EValue>& inputs) {
  auto tracer = std::make_unique<executorch::etdump::ETDumpGen>();
  auto* gen = tracer.get();
  Module module(a.artifact, Module::LoadMode::File, std::move(tracer));
  if (module.load_method("forward") != executorch::runtime::Error::Ok)
    throw Error(a.artifact + ": ExecuTorch could not load method 'forward' for profiling");
  long warmup = std::max(a.warmup, 2L);
  for (long i = 0; i < warmup + a.profile_runs; ++i)
    if (!module.forward(inputs).ok()) throw Error(a.artifact + ": profiled forward failed");
  auto data = gen->get_etdump_data();
  if (data.buf == nullptr) throw Error("--etdump: ExecuTorch recorded no ETDump data");
  std::ofstream f(a.etdump, std::ios::binary);
  f.write(static_cast<const char*>(data.buf), static_cast<std::streamsize>(data.size));
  std::free(data.buf);
  if (!f) throw Error(a.etdump + ": cannot write");
  return "{\"source\": \"executorch-etdump\", \"path\": " + mini_json::quote(a.etdump) +
         ", \"runs\": " + std::to_string(a.profile_runs) + ", \"warmup\": " + std::to_string(warmup) + "}";
}
#endif

// One artifact checked against its manifest (sha256) and, once loaded, its forward on bound inputs.
struct Loaded {
  std::string artifact, manifest, digest;
  std::vector<InputSpec> specs;
  std::optional<Gate> gate;
  std::vector<OutputQuant> quant;
  std::unique_ptr<Module> module;
  std::vector<executorch::extension::TensorPtr> tensors;
  std::vector<EValue> inputs;

  std::vector<EValue> forward() {
    auto r = module->forward(inputs);
    if (!r.ok()) throw Error(artifact + ": forward failed with ExecuTorch error " + std::to_string(static_cast<int>(r.error())));
    return std::move(*r);
  }
};

Loaded check_artifact(const std::string& artifact, const std::string& manifest) {
  Loaded m;
  m.artifact = artifact;
  m.manifest = manifest;
  std::string expected_sha;
  m.specs = read_manifest(manifest, &expected_sha, &m.gate, &m.quant);
  m.digest = sha256::file_hexdigest(artifact);
  if (m.digest.empty()) throw Error(artifact + ": cannot read artifact");
  if (m.digest != expected_sha)
    throw Error(artifact + ": sha256 " + m.digest.substr(0, 16) + "... does not match manifest sha256 " +
                expected_sha.substr(0, 16) + "...; the artifact was modified or the manifest belongs to another file");
  return m;
}

// Load the program and bind `buffers` (one per input, outliving the module) as its inputs.
void load_artifact(Loaded& m, std::vector<std::vector<uint8_t>>& buffers) {
  m.module = std::make_unique<Module>(m.artifact, Module::LoadMode::File);
  if (m.module->load() != executorch::runtime::Error::Ok) throw Error(m.artifact + ": ExecuTorch could not load the program");
  if (m.module->load_method("forward") != executorch::runtime::Error::Ok)
    throw Error(m.artifact + ": ExecuTorch could not load method 'forward' (missing kernels or backend?)");
  auto meta = m.module->method_meta("forward");
  if (!meta.ok()) throw Error(m.artifact + ": no method 'forward'");
  if (meta->num_inputs() != m.specs.size())
    throw Error(m.manifest + ": lists " + std::to_string(m.specs.size()) + " inputs, the program takes " +
                std::to_string(meta->num_inputs()));
  for (size_t i = 0; i < m.specs.size(); ++i) {
    auto info = meta->input_tensor_meta(i);
    if (!info.ok()) throw Error("inputs[" + std::to_string(i) + "]: not a tensor input");
    auto sizes = info->sizes();
    std::vector<int32_t> got(sizes.begin(), sizes.end());
    if (got != m.specs[i].shape) throw Error(m.manifest + ": inputs[" + std::to_string(i) + "]: shape differs from the program's");
    m.tensors.push_back(executorch::extension::make_tensor_ptr(
        std::vector<executorch::aten::SizesType>(m.specs[i].shape.begin(), m.specs[i].shape.end()),
        buffers[i].data(), scalar_type(m.specs[i].dtype)));
    m.inputs.emplace_back(*m.tensors.back());
  }
}

// --paired-with: whether the second artifact takes the first one's input tensors exactly (then it runs on
// its buffers); otherwise on the seeded inputs its own manifest describes (the same uniform draws in its own
// range, quantised as it says, in its own dimension order: an NHWC .tflite beside an NCHW one). Shapes must
// match up to that order, and with --input-file the tensors exactly. device_bench/runner.py: the same.
bool check_same_inputs(const Loaded& a, const Loaded& b, bool files) {
  auto shape_text = [](const Loaded& l) {
    std::string s = "[";
    for (size_t i = 0; i < l.specs.size(); ++i) {
      s += i ? ", [" : "[";
      for (size_t d = 0; d < l.specs[i].shape.size(); ++d) s += (d ? ", " : "") + std::to_string(l.specs[i].shape[d]);
      s += "]";
    }
    return s + "]";
  };
  bool sizes = a.specs.size() == b.specs.size();
  for (size_t i = 0; sizes && i < a.specs.size(); ++i) {
    auto x = a.specs[i].shape, y = b.specs[i].shape;
    std::sort(x.begin(), x.end());
    std::sort(y.begin(), y.end());
    sizes = x == y;
  }
  if (!sizes)
    throw Error(b.manifest + ": input shapes " + shape_text(b) + " are not " + a.manifest + "'s " + shape_text(a) +
                " (in any dimension order); --paired-with times two artifacts on inputs of the same size");
  bool same = true;
  for (size_t i = 0; same && i < a.specs.size(); ++i)
    same = a.specs[i].shape == b.specs[i].shape && a.specs[i].dtype == b.specs[i].dtype &&
           a.specs[i].quantized == b.specs[i].quantized && a.specs[i].scale == b.specs[i].scale &&
           a.specs[i].zero_point == b.specs[i].zero_point;
  if (files && !same)
    throw Error(b.manifest + ": inputs differ from " + a.manifest + "'s (shape, dtype, scale or zero point); with "
                "--input-file --paired-with needs an artifact taking the same tensors");
  return same;
}

int run(const Args& a) {
  Loaded main_art = check_artifact(a.artifact, a.manifest);
  const auto& specs = main_art.specs;
  const auto& gate = main_art.gate;
  const auto& quant = main_art.quant;
  const std::string& digest = main_art.digest;
  std::optional<Loaded> other;
  bool same_inputs = true;
  if (!a.paired_with.empty()) {
    other = check_artifact(a.paired_with, a.paired_manifest);
    same_inputs = check_same_inputs(main_art, *other, !a.input_files.empty());
  }
  std::string affinity = "null";
  if (!a.affinity.empty()) {
    cpu_set_t set;
    CPU_ZERO(&set);
    std::stringstream ss(a.affinity);
    std::string tok;
    while (std::getline(ss, tok, ',')) CPU_SET(std::stoi(tok), &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) throw Error("--affinity " + a.affinity + ": sched_setaffinity failed");
    affinity = "[";
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) affinity += (affinity.size() > 1 ? ", " : "") + std::to_string(c);
    affinity += "]";
  }
  if (!a.input_files.empty() && a.input_files.size() != specs.size())
    throw Error("--input-file given " + std::to_string(a.input_files.size()) + " times; the model has " +
                std::to_string(specs.size()) + " inputs");
  std::vector<std::vector<uint8_t>> buffers;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (a.input_files.empty()) {
      buffers.push_back(make_input(specs[i], a.seed + i));
    } else {
      std::string raw = read_file(a.input_files[i]);
      size_t want = specs[i].numel() * itemsize(scalar_type(specs[i].dtype));
      if (raw.size() != want) throw Error(a.input_files[i] + ": expected " + std::to_string(want) + " raw bytes");
      buffers.emplace_back(raw.begin(), raw.end());
    }
  }

  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  auto* pool = executorch::extension::threadpool::get_threadpool();
  pool->_unsafe_reset_threadpool(static_cast<uint32_t>(a.threads));
  load_artifact(main_art, buffers);
  double load_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  const auto& inputs = main_art.inputs;
  auto forward = [&]() { return main_art.forward(); };
  t0 = clock::now();
  auto first_out = forward();
  double first_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  OutputSummary first = summarize_outputs(first_out);
  if (!a.dump_outputs.empty()) {
    std::ofstream f(a.dump_outputs, std::ios::binary);
    f.write(reinterpret_cast<const char*>(first.bytes.data()), static_cast<std::streamsize>(first.bytes.size()));
  }
  for (long i = 0; i < a.warmup; ++i) forward();
  if (a.count_only) {  // instruction counting: same instructions every time (no clock, no statistics)
    for (long i = 0; i < a.runs; ++i) forward();
    std::printf("{\"schema\": \"edge-se/bench/2\", \"runner\": \"native\", \"count_only\": true, \"runs\": %ld, "
                "\"output_checksum\": %s}\n", a.runs, mini_json::quote(first.checksum).c_str());
    return 0;
  }
  std::vector<std::vector<uint8_t>> other_buffers;  // its own seeded inputs, where it takes other tensors
  if (other && !same_inputs)
    for (size_t i = 0; i < other->specs.size(); ++i) other_buffers.push_back(make_input(other->specs[i], a.seed + i));
  if (other) {  // loaded after the first artifact's load was timed; warmed up the same way
    load_artifact(*other, same_inputs ? buffers : other_buffers);
    for (long i = 0; i <= a.warmup; ++i) other->forward();
  }

  // The slots against the real outputs before timing (a bad manifest fails at once, not after the runs).
  if (gate) gate_score_json(first_out, *gate, quant, a.manifest);

  // One repeat's timed block of one artifact: at least --runs inferences and --min-seconds (at most --max-runs).
  std::vector<EValue> last_out;
  auto block = [&](Loaded& m, std::vector<std::vector<double>>* reps, std::vector<double>* secs) {
    std::vector<double> samples;
    double spent = 0;
    while (static_cast<long>(samples.size()) < a.runs || spent < a.min_seconds) {
      auto t = clock::now();
      auto out = m.forward();
      double dt = std::chrono::duration<double>(clock::now() - t).count();
      if (&m == &main_art) last_out = std::move(out);
      spent += dt;
      samples.push_back(dt * 1e3);
      if (a.max_runs && static_cast<long>(samples.size()) >= a.max_runs) break;
    }
    reps->push_back(std::move(samples));
    secs->push_back(spent);
  };
  std::vector<std::vector<double>> repeats, other_repeats;
  std::vector<double> seconds, other_seconds;
  for (long r = 0; r < a.repeats; ++r) {
    if (r) std::this_thread::sleep_for(std::chrono::duration<double>(a.cooldown));
    if (other && r % 2 == 1) block(*other, &other_repeats, &other_seconds);  // which goes first alternates
    block(main_art, &repeats, &seconds);
    if (other && r % 2 == 0) block(*other, &other_repeats, &other_seconds);
  }
  OutputSummary last = summarize_outputs(last_out);
  std::string gate_score;  // after timing, outside the timed loop: the latency is the artifact's alone
  if (gate) gate_score = gate_score_json(last_out, *gate, quant, a.manifest);

  std::string op_profile;  // after timing, on a second load: the timed module never carries a tracer
#ifdef EDGE_SE_ETDUMP
  if (!a.etdump.empty()) op_profile = write_etdump(a, inputs);
#endif

  double total = 0;
  for (double s : seconds) total += s;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  struct utsname un;
  uname(&un);

  std::string j = "{";
  auto kv = [&](const std::string& k, const std::string& v) { j += (j.size() > 1 ? ", " : "") + mini_json::quote(k) + ": " + v; };
  kv("schema", "\"edge-se/bench/2\"");
  kv("runner", "\"native\"");
  std::string base = a.artifact.substr(a.artifact.find_last_of('/') + 1);
  kv("artifact", mini_json::quote(base));
  kv("manifest_sha256", mini_json::quote(digest));
  kv("format", "\"pte\"");
  kv("runtime", "{\"name\": \"executorch-native\", \"version\": " + mini_json::quote(EDGE_SE_ET_VERSION) + "}");
  kv("threads", std::to_string(pool->get_thread_count()));
  kv("affinity", affinity);
  // contract.measure.MeasureSpec.to_dict(): what was asked for (threads above: what the pool has).
  kv("measure", "{\"warmup\": " + std::to_string(a.warmup) + ", \"runs\": " + std::to_string(a.runs) +
                    ", \"min_seconds\": " + num(a.min_seconds) + ", \"max_runs\": " + std::to_string(a.max_runs) +
                    ", \"repeats\": " + std::to_string(a.repeats) + ", \"cooldown_s\": " + num(a.cooldown) +
                    ", \"threads\": " + std::to_string(a.threads) + ", \"affinity\": " +
                    (a.affinity.empty() ? std::string("null") : mini_json::quote(a.affinity)) +
                    ", \"seed\": " + std::to_string(a.seed) + ", \"unstable_pct\": " + num(a.unstable_pct) + "}");
  kv("seed", a.input_files.empty() ? std::to_string(a.seed) : "null");
  kv("inputs_from", a.input_files.empty() ? "\"seed\"" : "\"files\"");
  // The flat latency keys of contract.bench, repeats, spread and stability (stats.combine_repeats).
  j += ", " + latency_stats::combine_repeats(repeats, seconds, a.unstable_pct);
  kv("total_seconds", num(total));
  kv("load_ms", num(load_ms));
  kv("first_inference_ms", num(first_ms));
  kv("peak_rss_bytes", std::to_string(static_cast<long long>(ru.ru_maxrss) * 1024));
  kv("output_checksum", mini_json::quote(first.checksum));
  kv("outputs", first.shapes);
  kv("output_abs_sum", num(first.abs_sum));
  kv("output_nonzero_fraction", num(first.nonzero_fraction));
  kv("outputs_repeatable", last.checksum == first.checksum ? "true" : "false");
  kv("cpu_model", mini_json::quote(cpu_model()));
  kv("machine", mini_json::quote(un.machine));
  kv("kernel", mini_json::quote(std::string(un.sysname) + " " + un.release));
  kv("cpu_count", std::to_string(sysconf(_SC_NPROCESSORS_ONLN)));
  kv("llc_bytes", std::to_string(llc_bytes()));
  if (gate) kv("gate_score", gate_score);
  if (!op_profile.empty()) kv("op_profile", op_profile);
  if (other)  // device_bench/runner.py: the same object; device_bench.stats.paired_ratio reads it
    kv("paired", "{\"artifact\": " + mini_json::quote(a.paired_with.substr(a.paired_with.find_last_of('/') + 1)) +
                     ", \"manifest_sha256\": " + mini_json::quote(other->digest) +
                     ", \"order\": \"alternating\", \"inputs\": " + (same_inputs ? "\"shared\"" : "\"own\"") + ", " +
                     latency_stats::combine_repeats(other_repeats, other_seconds, a.unstable_pct) + "}");
  std::printf("%s}\n", j.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "device_bench.native_runner: error: %s\n", e.what());
    return 2;
  }
}
